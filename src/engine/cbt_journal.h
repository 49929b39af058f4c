// CbtJournal: the write-intent journal of durable CBT (docs/cbt-format.md, "Write-intent
// journal"). It is what makes a power loss cost a bounded over-report instead of a new
// generation.
//
// The device is cut into coarse journal regions (64 MiB or more, at most 16384 of them). The
// rule (dm-era's, Hyper-V's modified-region tracking): before the first write to a region since
// the last checkpoint is issued, that region's byte is durable in the journal. A checkpoint
// makes the fine maps durable, then clears the journal. After a power loss, recovery marks
// every region found in the journal as changed on top of the maps as they reached the disk.
//
// Epochs and the two areas: the journal has two areas of one byte per region. Writers of epoch
// e note their regions in area e % 2. A checkpoint moves to epoch e + 1 (Switch), waits until
// no writer of epoch e is between Enter and Leave (each has then stored its fine marks), syncs
// the maps (the caller), and only then clears area e % 2 (Clear) — while writers of e + 1 go on
// in the other area. So a region's byte leaves the journal only after the fine marks of every
// write it covered are durable.
//
// Writer side: Enter() counts the writer in its epoch (two atomic operations, no lock), and for
// each region of the range not yet noted in this epoch stores the byte and syncs the area — a
// group commit: writers that stored before a sync started share it. noted_[r] == e says the
// byte of region r is durable in this epoch's area; a 32-bit epoch does not wrap in practice
// (one checkpoint every 30 s: 4000 years).
//
// Locking: Enter/Leave are lock-free except for the group-commit mutex on the slow path.
// Switch/Clear must not run concurrently with each other (CbtMap's mu_ serialises them).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>

#include "blksnap/status.h"
#include "util/mutex.h"

namespace blksnap {

class CbtJournal {
 public:
  // Makes area `which` (0 or 1) durable.
  using SyncArea = std::function<Status(int which)>;
  // areas: the two areas (each `regions` bytes) in the state file's mapping.
  CbtJournal(uint32_t shift, uint64_t capacity, std::array<uint8_t*, 2> areas, SyncArea sync);
  CbtJournal(const CbtJournal&) = delete;
  CbtJournal& operator=(const CbtJournal&) = delete;

  // Before the fine marks of a write to [offset, offset + length): on return, every region it
  // touches is durable in the journal, or an error says the journal could not be synced (the
  // write may still go ahead; the caller records the failure). Always pair with Leave(epoch),
  // after the fine marks are stored.
  Status Enter(uint64_t offset, uint64_t length, uint32_t* epoch);
  void Leave(uint32_t epoch);

  // Checkpoint, step 1: a new epoch; returns once every writer of the old one has left.
  // Returns the old epoch's area.
  int Switch();
  // Checkpoint, step 3 (after the maps are durable): zero the area and sync it.
  Status Clear(int which);

  // Whether a region was noted since the last Switch (if not, a checkpoint has nothing to do:
  // every mark older than the Switch was made durable by the checkpoint that switched).
  bool noted_since_switch() const {
    return commits_.load(std::memory_order_relaxed) !=
           commits_at_switch_.load(std::memory_order_relaxed);
  }
  uint64_t regions() const { return regions_; }
  uint64_t syncs() const { return syncs_.load(std::memory_order_relaxed); }

 private:
  Status Commit(int which);

  const uint32_t shift_;
  const uint64_t capacity_;
  const uint64_t regions_;
  const std::array<uint8_t*, 2> areas_;
  const SyncArea sync_;
  std::atomic<uint32_t> epoch_{1};
  std::array<std::atomic<uint64_t>, 2> inflight_{};
  std::unique_ptr<std::atomic<uint32_t>[]> noted_;  // per region: the epoch it is durable in
  // Group commit, per area: tickets handed to writers after their stores, and the highest
  // ticket a finished sync covers.
  std::array<std::atomic<uint64_t>, 2> requested_{};
  Mutex sync_mu_;
  std::array<uint64_t, 2> synced_ GUARDED_BY(sync_mu_){};
  std::atomic<uint64_t> syncs_{0};
  std::atomic<uint64_t> commits_{0};  // Commit calls that stored (before their sync)
  std::atomic<uint64_t> commits_at_switch_{0};
};

}  // namespace blksnap
