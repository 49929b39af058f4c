// CbtMap: see cbt_map.h for the semantics and locking.
#include "engine/cbt_map.h"

#include <algorithm>
#include <cstring>

namespace blksnap {
namespace {

uint64_t CountByShift(uint64_t capacity, uint32_t shift) {
  const uint64_t size = 1ull << shift;
  return capacity / size + (capacity % size ? 1 : 0);
}

}  // namespace

uint32_t TrackingBlockShift(uint64_t capacity, const Config& config) {
  uint32_t shift =
      std::min(config.tracking_block_minimum_shift, config.tracking_block_maximum_shift);
  while (CountByShift(capacity, shift) > config.tracking_block_maximum_count &&
         shift < config.tracking_block_maximum_shift) {
    ++shift;
  }
  return shift;
}

CbtMap::CbtMap(uint64_t capacity, const Config& config) : config_(config) {
  MutexLock lock(mu_);
  Reset(capacity);
}

void CbtMap::Reset(uint64_t capacity) {
  capacity_ = capacity;
  block_shift_ = TrackingBlockShift(capacity, config_);
  block_count_ = CountByShift(capacity, block_shift_);
  write_map_ = std::make_unique<std::atomic<uint8_t>[]>(block_count_);
  for (uint64_t i = 0; i < block_count_; ++i) write_map_[i].store(0, std::memory_order_relaxed);
  read_map_.assign(block_count_, 0);
  active_.store(1, std::memory_order_relaxed);
  previous_ = 0;
  generation_ = Uuid::Random();
  corrupted_ = false;
}

std::pair<uint64_t, uint64_t> CbtMap::BlockRange(uint64_t offset, uint64_t length) const {
  if (length == 0 || offset >= capacity_) return {0, 0};
  const uint64_t end = std::min(capacity_, offset + length);
  return {offset >> block_shift_, ((end - 1) >> block_shift_) + 1};
}

void CbtMap::MarkWrite(uint64_t offset, uint64_t length) {
  const uint8_t active = active_.load(std::memory_order_relaxed);
  auto [first, last] = BlockRange(offset, length);
  for (uint64_t i = first; i < last; ++i) {
    if (write_map_[i].load(std::memory_order_relaxed) < active)
      write_map_[i].store(active, std::memory_order_relaxed);
  }
}

Status CbtMap::MarkBoth(uint64_t offset, uint64_t length) {
  MutexLock lock(mu_);
  if (offset > capacity_ || length > capacity_ - offset)
    return Status::Error(EINVAL, "range beyond the end of the device");
  const uint8_t active = active_.load(std::memory_order_relaxed);
  auto [first, last] = BlockRange(offset, length);
  for (uint64_t i = first; i < last; ++i) {
    if (write_map_[i].load(std::memory_order_relaxed) < active)
      write_map_[i].store(active, std::memory_order_relaxed);
    read_map_[i] = std::max(read_map_[i], previous_);
  }
  return Status::Ok();
}

void CbtMap::SwitchForTake(uint64_t capacity) {
  MutexLock lock(mu_);
  if (capacity != capacity_ || corrupted_ || active_.load(std::memory_order_relaxed) == 255) {
    Reset(capacity);
  }
  previous_ = active_.load(std::memory_order_relaxed);
  active_.store(static_cast<uint8_t>(previous_ + 1), std::memory_order_relaxed);
  for (uint64_t i = 0; i < block_count_; ++i)
    read_map_[i] = write_map_[i].load(std::memory_order_relaxed);
}

void CbtMap::SetCorrupted() {
  MutexLock lock(mu_);
  corrupted_ = true;
}

CbtInfo CbtMap::info() const {
  MutexLock lock(mu_);
  CbtInfo info;
  info.block_size = 1u << block_shift_;
  info.block_count = block_count_;
  info.device_capacity = capacity_;
  info.generation_id = generation_;
  info.changes_number = previous_;
  return info;
}

Status CbtMap::ReadMap(uint64_t first_block, std::span<uint8_t> out) const {
  MutexLock lock(mu_);
  if (first_block > block_count_ || out.size() > block_count_ - first_block)
    return Status::Error(EINVAL, "CBT map range beyond the last block");
  std::memcpy(out.data(), read_map_.data() + first_block, out.size());
  return Status::Ok();
}

Result<std::vector<ByteExtent>> CbtMap::ChangedExtents(
    uint8_t since_snap, const std::optional<Uuid>& generation) const {
  MutexLock lock(mu_);
  if (generation && *generation != generation_) {
    return Status::Error(ESTALE, "CBT generation changed (now " + generation_.ToString() +
                                     "): a full backup is needed");
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
