// CbtJournal: see cbt_journal.h for the rule, the epochs and the ordering.
#include "engine/cbt_journal.h"

#include <algorithm>
#include <cstring>
#include <thread>

#include "engine/cbt_format.h"

namespace blksnap {

CbtJournal::CbtJournal(uint32_t shift, uint64_t capacity, std::array<uint8_t*, 2> areas,
                       SyncArea sync)
    : shift_(shift),
      capacity_(capacity),
      regions_(CbtBlockCount(capacity, shift)),
      areas_(areas),
      sync_(std::move(sync)),
      noted_(new std::atomic<uint32_t>[regions_]) {
  for (uint64_t r = 0; r < regions_; ++r) noted_[r].store(0, std::memory_order_relaxed);
}

Status CbtJournal::Enter(uint64_t offset, uint64_t length, uint32_t* epoch) {
  uint32_t e;
  for (;;) {  // count this writer in the epoch it will note into (see Switch)
    e = epoch_.load();
    inflight_[e & 1].fetch_add(1);
    if (epoch_.load() == e) break;
    inflight_[e & 1].fetch_sub(1);
  }
  *epoch = e;
  if (length == 0 || offset >= capacity_) return Status::Ok();
  const uint64_t first = offset >> shift_;
  const uint64_t last = (std::min(capacity_, offset + length) - 1) >> shift_;
  uint8_t* area = areas_[e & 1];
  bool stored = false;
  for (uint64_t r = first; r <= last; ++r) {
    if (noted_[r].load(std::memory_order_acquire) == e) continue;
    std::atomic_ref<uint8_t>(area[r]).store(1, std::memory_order_relaxed);
    stored = true;
  }
  if (!stored) return Status::Ok();  // the common case: no system call
  BLKSNAP_RETURN_IF_ERROR(Commit(e & 1));
  for (uint64_t r = first; r <= last; ++r) noted_[r].store(e, std::memory_order_release);
  return Status::Ok();
}

void CbtJournal::Leave(uint32_t epoch) { inflight_[epoch & 1].fetch_sub(1); }

// Group commit: the ticket is drawn after this writer's stores; a sync that starts after the
// ticket was drawn covers them.
Status CbtJournal::Commit(int which) {
  commits_.fetch_add(1);
  const uint64_t ticket = requested_[which].fetch_add(1) + 1;
  MutexLock lock(sync_mu_);
  if (synced_[which] >= ticket) return Status::Ok();
  const uint64_t upto = requested_[which].load();
  BLKSNAP_RETURN_IF_ERROR(sync_(which));
  syncs_.fetch_add(1, std::memory_order_relaxed);
  synced_[which] = upto;
  return Status::Ok();
}

// Dekker with Enter: Enter increments, then re-reads the epoch; Switch stores the epoch, then
// reads the count (all sequentially consistent). Either Enter sees the new epoch and retries,
// or Switch sees the writer and waits for its Leave.
int CbtJournal::Switch() {
  const uint32_t old = epoch_.load();
  commits_at_switch_.store(commits_.load());  // before the switch: a later one counts as new
  epoch_.store(old + 1);
  while (inflight_[old & 1].load() != 0) std::this_thread::yield();
  return static_cast<int>(old & 1);
}

Status CbtJournal::Clear(int which) {
  uint8_t* area = areas_[which];
  for (uint64_t r = 0; r < regions_; ++r)
    std::atomic_ref<uint8_t>(area[r]).store(0, std::memory_order_relaxed);
  Status s = sync_(which);
  if (s.ok()) syncs_.fetch_add(1, std::memory_order_relaxed);
  return s;
}

}  // namespace blksnap
