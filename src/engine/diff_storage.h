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
// Locking: mu_ guards the allocation state; the grower thread calls grow_ without mu_ held.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "blksnap/block_device.h"
#include "blksnap/engine.h"
#include "blksnap/uuid.h"
#include "engine/diff_storage_format.h"
#include "util/mutex.h"

namespace blksnap {

struct StorageIdentity {
  bool is_block_device = false;
  uint64_t rdev = 0;  // block device: its device number
  uint64_t dev = 0;   // file: the device of the file system holding it
  uint64_t ino = 0;
};

class DiffStorage {
 public:
  // Reserves [offset, offset + length) of the device (fallocate for files; no-op otherwise).
  using GrowFn = std::function<Status(uint64_t offset, uint64_t length)>;
  // Sets the size of the storage file (files only: it is sized to header + limit, sparse).
  using ResizeFn = std::function<Status(uint64_t size)>;
  using EventFn = std::function<void(SnapshotEvent)>;

  // Opens or creates the storage at path for snapshot `id` (see SnapshotOptions), through env
  // (null: Env::Default()).
  static Result<std::shared_ptr<DiffStorage>> Open(const std::string& path, uint64_t limit,
                                                   uint64_t step, const Uuid& id, EventFn events,
                                                   Env* env = nullptr);
  // Storage on any device (tests): usable space is device size minus header, capped by limit.
  static Result<std::shared_ptr<DiffStorage>> Create(std::shared_ptr<BlockDevice> device,
                                                     GrowFn grow, uint64_t limit, uint64_t step,
                                                     const Uuid& id, EventFn events,
                                                     std::string path = "");
  ~DiffStorage();
  DiffStorage(const DiffStorage&) = delete;
  DiffStorage& operator=(const DiffStorage&) = delete;

  // Allocates `bytes` and returns their device offset; ENOSPC when it cannot be served.
  Result<uint64_t> Allocate(uint64_t bytes) EXCLUDES(mu_);

  BlockDevice& device() { return *device_; }
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
              EventFn events, std::string path);
  Status WriteHeader() REQUIRES(mu_);
  void GrowerLoop() EXCLUDES(mu_);
  void RaiseNoSpace(uint64_t requested) REQUIRES(mu_);

  std::shared_ptr<BlockDevice> device_;
  GrowFn grow_;
  ResizeFn resize_;  // null: a fixed-size device
  const uint64_t step_;
  EventFn events_;
  const std::string path_;
  StorageIdentity identity_;

  mutable Mutex mu_;
  CondVar cv_;
  Uuid id_;
  uint64_t created_ = 0;                   // seconds since the epoch, for the header
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
