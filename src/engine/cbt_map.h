// CbtMap: change-block tracking for one device (the counterpart of blksnap's cbt_map.c).
//
// The device is cut into tracking blocks of 2^shift bytes. Two maps hold one byte per block:
//  - the write map, updated by every write, trim and write-zeroes: map[i] = max(map[i], active);
//  - the read map, a copy of the write map frozen at each snapshot take.
// Snap numbers: active starts at 1, previous at 0. A take sets previous = active, active + 1 and
// copies write map to read map. When active would reach 256, or the device capacity changed, or
// the map was marked corrupted, the take starts a new generation first: a new random generation
// id, both maps cleared, numbering restarted, the reason recorded — so a backup tool knows it
// needs a full backup, and why.
//
// Storage (engine/cbt_store.h): the maps and numbers live in a CbtStore — a state file mapped
// shared (durable: survives a daemon restart, a kill -9 and, through its write-intent journal,
// a power loss) or memory. MarkWrite notes the write's regions in the journal (a sync only for
// a region's first write since the last checkpoint) before it stores the fine marks. The take
// copies the read map before it publishes the new numbers (a kill -9 in between leaves a read
// map that over-reports against the old numbers, never one that under-reports) and does not
// sync while writers are held; CommitTake() then makes the numbers durable. Checkpoint() (at a
// clean stop and periodically) makes the maps durable and empties the journal.
//
// Locking: MarkWrite() is lock-free (relaxed byte stores, through std::atomic_ref, of a value
// that only changes at a take, into the write map wherever it lives) and relies on the caller's
// IoGate: SwitchForTake() runs only while writers are held (the journal too is replaced only
// then). Every other method takes mu_, which guards the store, the read map, the numbers and the
// generation. A writer never takes mu_ while it is inside the journal (Checkpoint holds mu_
// while it waits for those writers to leave).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "blksnap/cbt.h"
#include "blksnap/config.h"
#include "blksnap/status.h"
#include "engine/cbt_store.h"
#include "util/mutex.h"

namespace blksnap {

class CbtMap {
 public:
  // In memory only.
  CbtMap(uint64_t capacity, const Config& config);
  // Durable if options.path is set: recovers the state found there (cbt_store.h).
  static Result<std::unique_ptr<CbtMap>> Open(uint64_t capacity, const Config& config,
                                              const CbtStoreOptions& options);

  // Hot path: a write, trim or write-zeroes reached [offset, offset + length). Call before the
  // write is issued to the original.
  void MarkWrite(uint64_t offset, uint64_t length);
  // Mark-dirty (and writes to a snapshot image): write map = active, read map = previous.
  Status MarkBoth(uint64_t offset, uint64_t length);

  // The take: call with writers held. Starts a new generation first if needed; publishes the
  // new numbers into the store (no sync).
  void SwitchForTake(uint64_t capacity);
  // After SwitchForTake, writers released, before the take returns: the new numbers durable
  // (one sync of the header). On failure the journal is marked failed and the take must fail
  // (the tool must not be given a number the recovery could hand out again).
  Status CommitTake();
  // Makes the maps and numbers durable and empties the journal (any thread, writers need not
  // be held); moves CbtInfo::last_checkpoint.
  Status Checkpoint();
  // Checkpoint() if a region was journaled since the last one (the periodic checkpoint).
  Status CheckpointIfWritten();
  // Forces a new generation at the next take.
  void SetCorrupted();

  // The clean stop (call with writers stopped): seals the state file with the original's
  // identity after its last write, so the next Open continues exactly. No-op in memory.
  Status Close(const CbtIdentity& identity);
  // Forgets the state (removes the state file).
  Status Remove();

  CbtInfo info() const;
  Status ReadMap(uint64_t first_block, std::span<uint8_t> out) const;
  Result<std::vector<ByteExtent>> ChangedExtents(uint8_t since_snap,
                                                 const std::optional<Uuid>& generation) const;

  uint8_t active_snap_number() const { return active_.load(std::memory_order_relaxed); }

 private:
  CbtMap(const Config& config, std::unique_ptr<CbtStore> store);
  void Load() REQUIRES(mu_);  // takes geometry, maps and numbers from store_
  void Reset(uint64_t capacity, const char* reason) REQUIRES(mu_);  // new generation
  std::pair<uint64_t, uint64_t> BlockRange(uint64_t offset, uint64_t length) const;
  void StoreWriteMarks(uint64_t first, uint64_t last);
  // A sync of the state file failed (journal, checkpoint or header): flag it in the header for
  // the rest of the run (after a power loss this generation cannot continue).
  void JournalFailed() REQUIRES(mu_);
  Status CheckpointLocked() REQUIRES(mu_);  // a failure is JournalFailed()

  const Config config_;
  mutable Mutex mu_;
  std::unique_ptr<CbtStore> store_ GUARDED_BY(mu_);  // holds previous, generation, flags
  // Written under mu_ and only while writers are held (SwitchForTake), read lock-free by
  // MarkWrite under the caller's IoGate: not GUARDED_BY, which would forbid that read.
  uint64_t capacity_ = 0;
  uint32_t block_shift_ = 0;
  uint64_t block_count_ = 0;
  uint8_t* write_map_ = nullptr;   // in store_; bytes accessed through std::atomic_ref
  CbtJournal* journal_ = nullptr;  // in store_; null in memory
  uint8_t* read_map_ GUARDED_BY(mu_) = nullptr;  // in store_
  std::atomic<uint8_t> active_{1};               // mirrored into the store's header when published
};

// The tracking block shift for a device of this capacity (see Config).
uint32_t TrackingBlockShift(uint64_t capacity, const Config& config);

}  // namespace blksnap
