// DiffStorage: where a snapshot's preserved chunks live (blksnap's diff_storage.c).
//
// The storage is one BlockDevice: an unnamed temporary file in a directory, a regular file, or
// a block device, always opened with O_DIRECT. The first 2 MiB hold a header
// (docs/diff-storage-format.md, constants in diff_storage_format.h); chunks are allocated after it
// by a bump pointer, 4 KiB-aligned. Files are sized to header + limit as a sparse file and their
// space is reserved with fallocate in steps of diff_storage_minimum, by a background thread, when
// free reserved space falls below half a step; allocations only wait for it when the reserved space
// is used up. When the limit is reached (or the file system refuses to grow) a no_space event is
// raised once; an allocation that cannot be served fails with ENOSPC.
//
// Open validates everything before its first write (issue 13: the original is sacred):
//   1. open without truncating or claiming (env.h OpenStorageFile; a missing file is created
//      empty, only if its directory exists);
//   2. the caller's placement check on the storage's identity (the engine refuses a storage on or
//      under a tracked device, or another snapshot's storage);
//   3. the content: a block device or a non-empty file must not hold a file-system or partition
//      signature (DetectForeignSignature) unless forced; a non-empty file must be a blksnap
//      storage unless forced;
//   4. the limit: no overflow, within a block device's size and the file system's maximum file
//      size (EFBIG with the limit named);
//   5. only then: truncate (files), open the data path (block devices O_EXCL: EBUSY if mounted),
//      write the header.
// A file that Open created is removed when the storage is released (or when Open fails); a file
// that existed before is left (docs/diff-storage-format.md).
//
// Locking: mu_ guards the allocation state; the grower thread calls grow_ without mu_ held.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <thread>

#include "blksnap/block_device.h"
#include "blksnap/engine.h"
#include "blksnap/uuid.h"
#include "engine/chunk_log.h"
#include "engine/diff_storage_format.h"
#include "util/mutex.h"

namespace blksnap {

// Bytes at the start of a storage that DetectForeignSignature looks at.
constexpr size_t kDiffStorageProbeSize = 72 * 1024;
// What `head` (the first bytes of a device or file, up to kDiffStorageProbeSize) holds that a
// storage must not overwrite without --force ("an ext4 file system", ...); "" for nothing (or a
// blksnap difference storage).
std::string DetectForeignSignature(std::span<const uint8_t> head);

struct StorageIdentity {
  std::string path;  // as given (for messages)
  bool is_block_device = false;
  uint64_t rdev = 0;  // block device: its device number
  uint64_t dev = 0;   // file: the device of the file system holding it
  uint64_t ino = 0;
};

// What DiffStorage::Open checks before it writes (see the top of this file).
struct DiffStorageChecks {
  bool force = false;  // SnapshotOptions::force
  // A regular file goes through the page cache (Config::diff_storage_page_cache); block devices
  // and a false here: O_DIRECT.
  bool page_cache = true;
  // Refuses a storage placed where it would harm data (non-OK: Open fails with it, unchanged).
  std::function<Status(const StorageIdentity&)> placement;
};

class DiffStorage {
 public:
  using Checks = DiffStorageChecks;
  // Reserves [offset, offset + length) of the device (fallocate for files; no-op otherwise).
  using GrowFn = std::function<Status(uint64_t offset, uint64_t length)>;
  // Sets the size of the storage file (files only: it is sized to header + limit, sparse).
  using ResizeFn = std::function<Status(uint64_t size)>;
  using EventFn = std::function<void(SnapshotEvent)>;

  // Opens or creates the storage at path for snapshot `id` (see SnapshotOptions), through env
  // (null: Env::Default()). A durable snapshot on a directory gets the named file
  // blksnap-<id>.diff in it (removed at release); kMemory an unnamed temporary file.
  static Result<std::shared_ptr<DiffStorage>> Open(
      const std::string& path, uint64_t limit, uint64_t step, const Uuid& id, EventFn events,
      Env* env = nullptr, const Checks& checks = {},
      SnapshotDurability durability = SnapshotDurability::kMemory);
  // Storage on any device (tests): usable space is device size minus header, capped by limit.
  static Result<std::shared_ptr<DiffStorage>> Create(
      std::shared_ptr<BlockDevice> device, GrowFn grow, uint64_t limit, uint64_t step,
      const Uuid& id, EventFn events, std::string path = "",
      SnapshotDurability durability = SnapshotDurability::kMemory);
  // The storage of a durable snapshot found after a restart (RecoverSnapshot): the file (or
  // `device` when given) is opened without any write; its header (the valid slot with the higher
  // seq) must belong to snapshot `id`. The chunk log is read by the caller (ChunkLog::Read), who
  // then calls Resume. A file the header marks as ours is removed at release. The device is
  // flushed first: see lost_writeback().
  static Result<std::shared_ptr<DiffStorage>> OpenExisting(const std::string& path,
                                                           std::shared_ptr<BlockDevice> device,
                                                           const Uuid& id, uint64_t step,
                                                           EventFn events, Env* env = nullptr,
                                                           bool page_cache = true);
  // After OpenExisting and the log scan: allocation continues at `end`; a log continues at
  // `cursor` with the next epoch (recorded in the header before the log writes again).
  // The closed flag is cleared in any case (a crash after this start is not a clean stop).
  Status Resume(uint64_t end, const ChunkLog::Cursor& cursor, uint64_t pages, bool continue_log)
      EXCLUDES(mu_);
  ~DiffStorage();
  DiffStorage(const DiffStorage&) = delete;
  DiffStorage& operator=(const DiffStorage&) = delete;

  // Allocates `bytes` and returns their device offset; ENOSPC when it cannot be served.
  Result<uint64_t> Allocate(uint64_t bytes) EXCLUDES(mu_);

  BlockDevice& device() { return *device_; }
  // The header as last written (OpenExisting: as found).
  DiffStorageHeader header() const EXCLUDES(mu_);
  // Changes the header and writes it to the other slot with the next seq, then flushes it
  // (except for kMemory). On failure the header in memory is unchanged.
  Status UpdateHeader(const std::function<void(DiffStorageHeader&)>& change) EXCLUDES(mu_);
  // Durable snapshots: starts the chunk log (allocates its first segment). Once.
  Status StartLog() EXCLUDES(mu_);
  ChunkLog* log() { return log_.get(); }  // null for kMemory or before StartLog/Resume
  SnapshotDurability durability() const { return durability_; }
  // Chunk writes go through the page cache (a regular file, Checks::page_cache): a write is a
  // copy into the kernel, not a wait for the disk. False for devices given to Create.
  bool buffered() const { return buffered_; }
  // OpenExisting: the error of the first flush (a write-back that failed while nobody looked,
  // so the storage on the disk may say less than the daemon did), or 0.
  int lost_writeback() const { return lost_writeback_; }
  // The clean stop of a durable snapshot: the file stays when the storage is released.
  void KeepFile() { on_release_ = nullptr; }
  // OpenExisting: from now on a file blksnap created is removed when the storage is released
  // (after a recovery, or for a snapshot that was never taken). Until then it stays.
  void ArmRemoval() { on_release_ = std::exchange(remover_, nullptr); }
  StorageInfo info() const EXCLUDES(mu_);
  // Raises the limit of a live storage (blksnap's append-storage, Veeam's stretch_snapshot):
  // a file is resized, a block device allows up to its size. A no_space event already raised
  // is re-armed and a stopped growth resumes, so a snapshot that answered its event in time
  // keeps going. EINVAL for a lower limit, ENOSPC beyond what the device holds.
  Status SetLimit(uint64_t limit) EXCLUDES(mu_);
  void set_resize(ResizeFn resize) { resize_ = std::move(resize); }
  const StorageIdentity& identity() const { return identity_; }
  void set_identity(const StorageIdentity& identity) { identity_ = identity; }

 private:
  DiffStorage(std::shared_ptr<BlockDevice> device, GrowFn grow, uint64_t limit, uint64_t step,
              EventFn events, std::string path, SnapshotDurability durability);
  // Writes header_ (with limit_) to the slot of its seq; flushes unless kMemory.
  Status WriteHeader() REQUIRES(mu_);
  // Starts the grower thread of a file storage.
  void StartGrower();
  void GrowerLoop() EXCLUDES(mu_);
  void RaiseNoSpace(uint64_t requested) REQUIRES(mu_);

  std::shared_ptr<BlockDevice> device_;
  GrowFn grow_;
  ResizeFn resize_;  // null: a fixed-size device
  const uint64_t step_;
  EventFn events_;
  const std::string path_;
  std::string file_;  // StorageInfo::file
  StorageIdentity identity_;
  std::function<void()> on_release_;  // removes a file Open created (destructor)
  std::function<void()> remover_;     // OpenExisting: on_release_ once ArmRemoval() is called
  const SnapshotDurability durability_;
  bool buffered_ = false;          // set by Open / OpenExisting before the storage is shared
  int lost_writeback_ = 0;         // set by OpenExisting before the storage is shared
  std::unique_ptr<ChunkLog> log_;  // set once (StartLog, Resume) before the log is shared

  mutable Mutex mu_;
  CondVar cv_;
  DiffStorageHeader header_ GUARDED_BY(mu_);
  uint64_t limit_ GUARDED_BY(mu_);         // usable bytes after the header
  uint64_t reserved_ GUARDED_BY(mu_) = 0;  // usable bytes reserved so far
  uint64_t used_ GUARDED_BY(mu_) = 0;
  bool growing_ GUARDED_BY(mu_) = false;  // a grow is requested or running
  bool grow_failed_ GUARDED_BY(mu_) = false;
  bool no_space_raised_ GUARDED_BY(mu_) = false;
  bool stop_ GUARDED_BY(mu_) = false;
  std::thread grower_;
};

}  // namespace blksnap
