// CbtStore: where a device's CBT state lives — the header, both maps and the write-intent
// journal of one state file (docs/cbt-format.md, engine/cbt_format.h, engine/cbt_journal.h)
// mapped shared, or an anonymous buffer of the same layout (no journal) when tracking is in
// memory only.
//
// Open() decides whether the generation found in the file continues or a new one starts, and
// why (the recovery rules, in order):
//   no file                      -> new generation: "state-lost" if the caller expected one,
//                                   else "new";
//   unparsable (magic, version, checksum, sizes, torn) -> "state-corrupt";
//   capacity differs                                   -> "capacity-changed" (a block size
//                                   other than the configured one is kept: it is chosen when a
//                                   generation starts);
//   no seal, another boot id (or none), a sync had failed -> "restart-unclean-power";
//   original's kind, dev, ino or rdev differ           -> "identity-changed";
//   sealed, but size, mtime or ctime differ            -> "outside-write";
//   otherwise the generation continues (recovered_from()): sealed = "clean-stop", exactly as
//   stopped; unsealed, same boot id = "daemon-crash", every mark still in the page cache;
//   unsealed, another boot = "power-loss": the maps as they reached the disk, plus every region
//   in the journal marked changed in the write map with the active snap number (above any
//   number handed out), and the read map rebuilt from the write map (both over-report, never
//   under).
// Then the journal is emptied (after a sync of the maps, if it held anything) and, before any
// write is let through, the header is rewritten unsealed with this boot's id and the
// attach-time identity, and synced.
//
// Header slots (cbt_format.h): Publish() always writes the slot that does not hold the last
// header made durable; a sync of that slot (or of the whole file) makes it the durable one. A
// continued generation's header is synced where it is before the first Publish (in the page
// cache after a daemon crash, it may not be on the disk yet).
//
// Checkpoint() = switch the journal's epoch, sync the maps, clear the old epoch's journal area,
// then write the header (sequence + 1, checkpoint time) and sync it. SyncHeader() after a take
// makes its snap numbers durable before the take returns (recovery relies on it: a power loss
// cannot undo more than the take in progress). Close() is the clean stop: a checkpoint with the
// seal and the identity the caller saw after the last write. A store destroyed without Close()
// is what a kill -9 leaves: the mapping is gone, the page cache keeps the bytes, the file stays
// unsealed.
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
#include "engine/cbt_journal.h"

namespace blksnap {

struct CbtGeometry {
  uint64_t capacity = 0;
  uint32_t block_shift = 0;
  uint64_t block_count() const { return CbtBlockCount(capacity, block_shift); }
  uint64_t journal_regions() const {
    return CbtBlockCount(capacity, CbtJournalShift(capacity, block_shift));
  }
};

inline uint64_t CbtFileSize(const CbtGeometry& g) {
  return CbtFileSize(g.block_count(), g.journal_regions());
}

struct CbtStoreOptions {
  std::string path;       // the state file; empty = memory only
  bool expected = false;  // a previous run tracked the device: a missing file is "state-lost"
  CbtIdentity identity;   // the original's identity now
  std::shared_ptr<MappedFiles> files;  // null = PosixMappedFiles()
};

// The recovery rules above as a function: "" if the generation found continues, else the reason
// for a new one. An empty boot id (unknown) counts as another boot.
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

  uint8_t* write_map() { return base() + kCbtMapsOffset; }
  uint8_t* read_map() { return base() + CbtReadMapOffset(header_.block_count); }
  // The fields; Publish() puts them into the file.
  CbtHeader& header() { return header_; }
  const CbtHeader& header() const { return header_; }
  bool durable() const { return durable_; }
  // The write-intent journal; null in memory.
  CbtJournal* journal() { return journal_.get(); }
  const std::string& recovered_from() const { return recovered_from_; }

  // A new generation of this geometry: zero maps, a new id, numbers 1 and 0, the reason. The
  // maps move (writers must be held). If the file cannot be remade, the store falls back to
  // memory (durable() turns false) after removing the old file, which must not be continued.
  void Reset(const CbtGeometry& geometry, const std::string& reason);
  // Writes the header into the mapping (sequence + 1, CRC) — into the slot that does not hold
  // the last durable header, so a torn write of it leaves that one; no sync: a kill -9 keeps it.
  void Publish();
  // Maps, then journal cleared, then header, made durable; no-op in memory.
  Status Checkpoint();
  // Publish() and make the header durable (after a take); no-op in memory.
  Status SyncHeader();
  // The clean stop: the seal and the identity after the last write, checkpointed.
  Status Close(const CbtIdentity& identity);
  // Forget the state: the file is removed (a plain detach).
  Status Remove();

 private:
  CbtStore() = default;
  uint8_t* base() { return file_ ? file_->data() : memory_.get(); }
  uint8_t* journal_area(int which);  // 0 or 1, in the mapping
  Status MakeFile(const CbtGeometry& geometry);
  void MakeMemory(const CbtGeometry& geometry);
  void NewGeneration(const CbtGeometry& geometry, const std::string& reason);
  void MakeJournal();
  void RecoverFromJournal();
  bool JournalEmpty();
  // Syncs the whole file; a header published since the last sync becomes the durable one.
  Status SyncFile();

  CbtHeader header_;
  bool durable_ = false;
  std::string path_;
  std::shared_ptr<MappedFiles> files_;
  std::unique_ptr<MappedFile> file_;     // durable
  std::unique_ptr<uint8_t[]> memory_;    // memory only
  std::unique_ptr<CbtJournal> journal_;  // durable
  std::string recovered_from_;
  int durable_slot_ = 1;    // the header slot last made durable; Publish writes the other one
  bool published_ = false;  // the other slot holds a header not yet synced
};

}  // namespace blksnap
