// CbtStore: where a device's CBT state lives — the header and both maps of one state file
// (docs/cbt-format.md, engine/cbt_format.h) mapped shared, or an anonymous buffer of the same
// layout when tracking is in memory only.
//
// Open() decides whether the generation found in the file continues or a new one starts, and
// why (the recovery rules, in order):
//   no file                      -> new generation: "state-lost" if the caller expected one,
//                                   else "new";
//   unparsable (magic, version, checksum, sizes, torn) -> "state-corrupt";
//   capacity or block size differ                      -> "capacity-changed";
//   no clean-stop seal, another boot id (or none)      -> "restart-unclean-power": marks still
//                                   in the page cache when the machine went down may be lost;
//   original's kind, dev, ino or rdev differ           -> "identity-changed";
//   sealed, but size, mtime or ctime differ            -> "outside-write";
//   otherwise the generation continues: sealed = exactly as stopped; unsealed with the same boot
//   id = a daemon crash, whose every mark is still in the page cache (over-reporting possible).
// Then, before any write is let through, the header is rewritten unsealed with this boot's id
// and the attach-time identity, and synced.
//
// Checkpoint() = sync the maps, then write the header (sequence + 1, checkpoint time) and sync
// it. Close() is the clean stop: a checkpoint with the seal and the identity the caller saw
// after the last write. A store destroyed without Close() is what a kill -9 leaves: the mapping
// is gone, the page cache keeps the bytes, the file stays unsealed.
//
// Not thread-safe: CbtMap serialises every call (its mu_, and writers held for Reset()). The
// maps' bytes are the exception: MarkWrite stores into write_map() lock-free.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "blksnap/cbt.h"
#include "blksnap/mapped_file.h"
#include "blksnap/status.h"
#include "engine/cbt_format.h"

namespace blksnap {

struct CbtGeometry {
  uint64_t capacity = 0;
  uint32_t block_shift = 0;
  uint64_t block_count() const { return CbtBlockCount(capacity, block_shift); }
};

struct CbtStoreOptions {
  std::string path;       // the state file; empty = memory only
  bool expected = false;  // a previous run tracked the device: a missing file is "state-lost"
  CbtIdentity identity;   // the original's identity now
  std::shared_ptr<MappedFiles> files;  // null = PosixMappedFiles()
};

// The recovery rules above as a function: "" if the generation found continues, else the reason
// for a new one.
std::string CbtRecoveryReason(const Result<CbtHeader>& parsed, const CbtGeometry& geometry,
                              const CbtIdentity& identity, const std::string& boot_id);

class CbtStore {
 public:
  // Opens (recovers) or starts the state; on return writes may begin. Fails only if the state
  // file can be neither used nor made (e.g. EACCES, ENOSPC).
  static Result<std::unique_ptr<CbtStore>> Open(const CbtGeometry& geometry,
                                                const CbtStoreOptions& options);
  // Memory only: never durable, "new".
  static std::unique_ptr<CbtStore> Memory(const CbtGeometry& geometry);
  ~CbtStore();
  CbtStore(const CbtStore&) = delete;
  CbtStore& operator=(const CbtStore&) = delete;

  uint8_t* write_map() { return base() + kCbtHeaderSize; }
  uint8_t* read_map() { return base() + CbtReadMapOffset(header_.block_count); }
  // The fields; Publish() puts them into the file.
  CbtHeader& header() { return header_; }
  const CbtHeader& header() const { return header_; }
  bool durable() const { return durable_; }

  // A new generation of this geometry: zero maps, a new id, numbers 1 and 0, the reason. The
  // maps move (writers must be held). If the file cannot be remade, the store falls back to
  // memory (durable() turns false) after removing the old file, which must not be continued.
  void Reset(const CbtGeometry& geometry, const std::string& reason);
  // Writes the header into the mapping (sequence + 1, CRC); no sync: a kill -9 keeps it.
  void Publish();
  // Maps, then header, made durable; no-op in memory.
  Status Checkpoint();
  // The clean stop: the seal and the identity after the last write, checkpointed.
  Status Close(const CbtIdentity& identity);
  // Forget the state: the file is removed (a plain detach).
  Status Remove();

 private:
  CbtStore() = default;
  uint8_t* base() { return file_ ? file_->data() : memory_.get(); }
  Status MakeFile(const CbtGeometry& geometry);
  void MakeMemory(const CbtGeometry& geometry);
  void NewGeneration(const CbtGeometry& geometry, const std::string& reason);

  CbtHeader header_;
  bool durable_ = false;
  std::string path_;
  std::shared_ptr<MappedFiles> files_;
  std::unique_ptr<MappedFile> file_;   // durable
  std::unique_ptr<uint8_t[]> memory_;  // memory only
};

}  // namespace blksnap
