// ChunkCache: the CLOCK cache of stored chunks whose buffers are kept in memory for image reads
// (chunk_maximum_in_cache of them).
//
// Each chunk is inserted once, by the storer that stored it. When the cache is full, the hand
// skips (and clears) entries read since it last passed (Chunk::referenced, set by Touch) and
// evicts the first one not read since: Insert returns it and the caller frees its buffer under
// the chunk's data stripe. The cache never frees memory itself.
//
// Locking: mu_ guards the ring and every cached chunk's `cached` and `referenced` bits. It is
// taken after a data stripe or a shard mutex (DiffArea's order), never before one.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "engine/chunk.h"
#include "util/mutex.h"

namespace blksnap {

class ChunkCache {
 public:
  using Entry = std::pair<uint64_t, Chunk*>;  // chunk index, entry

  explicit ChunkCache(size_t capacity) : capacity_(capacity) {}

  // Caches a just-stored chunk; returns the evicted one ({0, nullptr} if none). capacity 0:
  // callers do not insert.
  Entry Insert(uint64_t index, Chunk* chunk) EXCLUDES(mu_);
  // An image read used the chunk's buffer: spare it at the next pass of the hand.
  void Touch(Chunk* chunk) EXCLUDES(mu_);
  void Clear() EXCLUDES(mu_);
  size_t size() const EXCLUDES(mu_);
  size_t capacity() const { return capacity_; }

 private:
  const size_t capacity_;
  mutable Mutex mu_;
  std::vector<Entry> ring_ GUARDED_BY(mu_);
  size_t hand_ GUARDED_BY(mu_) = 0;
};

}  // namespace blksnap
