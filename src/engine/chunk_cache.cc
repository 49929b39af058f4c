// ChunkCache: see chunk_cache.h for the CLOCK policy and the locking.
#include "engine/chunk_cache.h"

namespace blksnap {

ChunkCache::Entry ChunkCache::Insert(uint64_t index, Chunk* chunk) {
  MutexLock lock(mu_);
  chunk->cached = true;
  chunk->referenced = false;
  if (ring_.size() < capacity_) {
    ring_.emplace_back(index, chunk);
    return {0, nullptr};
  }
  // CLOCK: skip (and clear) recently read entries, evict the first one not read since.
  while (ring_[hand_].second->referenced) {
    ring_[hand_].second->referenced = false;
    hand_ = (hand_ + 1) % ring_.size();
  }
  const Entry victim = ring_[hand_];
  victim.second->cached = false;
  ring_[hand_] = {index, chunk};
  hand_ = (hand_ + 1) % ring_.size();
  return victim;
}

void ChunkCache::Touch(Chunk* chunk) {
  MutexLock lock(mu_);
  if (chunk->cached) chunk->referenced = true;
}

void ChunkCache::Clear() {
  MutexLock lock(mu_);
  ring_.clear();
  hand_ = 0;
}

size_t ChunkCache::size() const {
  MutexLock lock(mu_);
  return ring_.size();
}

}  // namespace blksnap
