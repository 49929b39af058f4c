// CbtMap: see cbt_map.h for the semantics and locking.
#include "engine/cbt_map.h"

#include <algorithm>
#include <cstring>

namespace blksnap {
namespace {

std::atomic_ref<uint8_t> Byte(uint8_t* map, uint64_t i) { return std::atomic_ref<uint8_t>(map[i]); }

}  // namespace

uint32_t TrackingBlockShift(uint64_t capacity, const Config& config) {
  uint32_t shift =
      std::min(config.tracking_block_minimum_shift, config.tracking_block_maximum_shift);
  while (CbtBlockCount(capacity, shift) > config.tracking_block_maximum_count &&
         shift < config.tracking_block_maximum_shift) {
    ++shift;
  }
  return shift;
}

CbtMap::CbtMap(uint64_t capacity, const Config& config)
    : CbtMap(config, CbtStore::Memory({capacity, TrackingBlockShift(capacity, config)})) {}

CbtMap::CbtMap(const Config& config, std::unique_ptr<CbtStore> store) : config_(config) {
  MutexLock lock(mu_);
  store_ = std::move(store);
  Load();
}

Result<std::unique_ptr<CbtMap>> CbtMap::Open(uint64_t capacity, const Config& config,
                                             const CbtStoreOptions& options) {
  BLKSNAP_ASSIGN_OR_RETURN(
      auto store, CbtStore::Open({capacity, TrackingBlockShift(capacity, config)}, options));
  return std::unique_ptr<CbtMap>(new CbtMap(config, std::move(store)));
}

void CbtMap::Load() {
  const CbtHeader& h = store_->header();
  capacity_ = h.capacity;
  block_shift_ = h.block_shift;
  block_count_ = h.block_count;
  write_map_ = store_->write_map();
  journal_ = store_->journal();
  read_map_ = store_->read_map();
  active_.store(h.active, std::memory_order_relaxed);
}

void CbtMap::Reset(uint64_t capacity, const char* reason) {
  store_->Reset({capacity, TrackingBlockShift(capacity, config_)}, reason);
  Load();
}

std::pair<uint64_t, uint64_t> CbtMap::BlockRange(uint64_t offset, uint64_t length) const {
  if (length == 0 || offset >= capacity_) return {0, 0};
  const uint64_t end = std::min(capacity_, offset + length);
  return {offset >> block_shift_, ((end - 1) >> block_shift_) + 1};
}

void CbtMap::StoreWriteMarks(uint64_t first, uint64_t last) {
  const uint8_t active = active_.load(std::memory_order_relaxed);
  for (uint64_t i = first; i < last; ++i) {
    auto b = Byte(write_map_, i);
    if (b.load(std::memory_order_relaxed) < active) b.store(active, std::memory_order_relaxed);
  }
}

void CbtMap::MarkWrite(uint64_t offset, uint64_t length) {
  auto [first, last] = BlockRange(offset, length);
  if (!journal_) return StoreWriteMarks(first, last);
  uint32_t epoch = 0;
  const bool journaled = journal_->Enter(offset, length, &epoch).ok();
  StoreWriteMarks(first, last);
  journal_->Leave(epoch);
  if (!journaled) {  // rare: an I/O error on the state file; out of the journal, so mu_ is safe
    MutexLock lock(mu_);
    JournalFailed();
  }
}

// Sticky for the rest of the run: after a failed write-back Linux marks the page clean and
// reports the error once, so a later sync that succeeds proves nothing about that page. Each
// failure retries making the flag durable.
void CbtMap::JournalFailed() {
  if (!store_->durable()) return;
  store_->header().flags |= kCbtFlagJournalFailed;
  store_->SyncHeader().IgnoreError();  // best effort: the state file is failing
}

Status CbtMap::MarkBoth(uint64_t offset, uint64_t length) {
  MutexLock lock(mu_);
  if (offset > capacity_ || length > capacity_ - offset)
    return Status::Error(EINVAL, "range beyond the end of the device");
  const uint8_t previous = store_->header().previous;
  auto [first, last] = BlockRange(offset, length);
  uint32_t epoch = 0;
  const bool journaled = !journal_ || journal_->Enter(offset, length, &epoch).ok();
  StoreWriteMarks(first, last);
  for (uint64_t i = first; i < last; ++i) read_map_[i] = std::max(read_map_[i], previous);
  if (journal_) journal_->Leave(epoch);
  if (!journaled) JournalFailed();
  return Status::Ok();
}

void CbtMap::SwitchForTake(uint64_t capacity) {
  MutexLock lock(mu_);
  CbtHeader& h = store_->header();
  if (capacity != capacity_) {
    Reset(capacity, kCbtReasonCapacityChanged);
  } else if (h.flags & kCbtFlagCorrupted) {
    Reset(capacity, kCbtReasonCorrupted);
  } else if (active_.load(std::memory_order_relaxed) == 255) {
    Reset(capacity, kCbtReasonSnapNumberWrap);
  }
  // The read map first, the numbers second (see the design note).
  for (uint64_t i = 0; i < block_count_; ++i)
    read_map_[i] = Byte(write_map_, i).load(std::memory_order_relaxed);
  h.previous = active_.load(std::memory_order_relaxed);
  h.active = static_cast<uint8_t>(h.previous + 1);
  active_.store(h.active, std::memory_order_relaxed);
  // Into the mapping, not synced while writers are held: a kill -9 keeps it; CommitTake() makes
  // it durable once they are released.
  store_->Publish();
}

Status CbtMap::CommitTake() {
  MutexLock lock(mu_);
  Status s = store_->SyncHeader();
  if (!s.ok()) JournalFailed();
  return s;
}

Status CbtMap::CheckpointLocked() {
  Status s = store_->Checkpoint();
  if (!s.ok()) JournalFailed();
  return s;
}

Status CbtMap::Checkpoint() {
  MutexLock lock(mu_);
  return CheckpointLocked();
}

Status CbtMap::CheckpointIfWritten() {
  MutexLock lock(mu_);
  if (!journal_ || !journal_->noted_since_switch()) return Status::Ok();
  return CheckpointLocked();
}

void CbtMap::SetCorrupted() {
  MutexLock lock(mu_);
  store_->header().flags |= kCbtFlagCorrupted;
  store_->Publish();
}

Status CbtMap::Close(const CbtIdentity& identity) {
  MutexLock lock(mu_);
  return store_->Close(identity);
}

Status CbtMap::Remove() {
  MutexLock lock(mu_);
  Status s = store_->Remove();
  Load();
  return s;
}

CbtInfo CbtMap::info() const {
  MutexLock lock(mu_);
  const CbtHeader& h = store_->header();
  CbtInfo info;
  info.block_size = 1u << block_shift_;
  info.block_count = block_count_;
  info.device_capacity = capacity_;
  info.generation_id = h.generation;
  info.changes_number = h.previous;
  info.generation_reason = h.reason;
  info.durable = store_->durable();
  info.recovered_from = store_->recovered_from();
  info.state_sync_failed = h.flags & kCbtFlagJournalFailed;
  if (journal_) {
    info.journal_syncs = journal_->syncs();
    info.journal_region_size = 1ull << h.journal_shift;
  }
  info.last_checkpoint = std::chrono::system_clock::time_point(
      std::chrono::duration_cast<std::chrono::system_clock::duration>(
          std::chrono::nanoseconds(h.checkpoint_time_ns)));
  return info;
}

Status CbtMap::ReadMap(uint64_t first_block, std::span<uint8_t> out) const {
  MutexLock lock(mu_);
  if (first_block > block_count_ || out.size() > block_count_ - first_block)
    return Status::Error(EINVAL, "CBT map range beyond the last block");
  std::memcpy(out.data(), read_map_ + first_block, out.size());
  return Status::Ok();
}

Result<std::vector<ByteExtent>> CbtMap::ChangedExtents(
    uint8_t since_snap, const std::optional<Uuid>& generation) const {
  MutexLock lock(mu_);
  const Uuid& current = store_->header().generation;
  if (generation && *generation != current) {
    return Status::Error(
        ESTALE, "CBT generation changed (now " + current.ToString() + "): a full backup is needed");
  }
  std::vector<ByteExtent> extents;
  const uint64_t block_size = 1ull << block_shift_;
  for (uint64_t i = 0; i < block_count_; ++i) {
    if (read_map_[i] <= since_snap) continue;
    const uint64_t offset = i * block_size;
    const uint64_t length = std::min(block_size, capacity_ - offset);
    if (!extents.empty() && extents.back().offset + extents.back().length == offset) {
      extents.back().length += length;
    } else {
      extents.push_back({offset, length});
    }
  }
  return extents;
}

}  // namespace blksnap
