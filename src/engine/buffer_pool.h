// BufferPool: chunk-sized copy buffers, mapped with mmap and recycled through a bounded free
// list.
//
// Copy-on-write needs a chunk-sized buffer per chunk in flight (at most chunk_maximum_in_queue
// waiting for the storer, plus chunk_maximum_in_cache kept for image reads). Allocating them
// with malloc let glibc's adaptive mmap threshold move 64-256 KiB blocks onto the heap, where
// fragmentation kept freed buffers resident: the daemon's RSS grew by ~2.3 KiB per preserved
// chunk for good (bench/results). Mapping buffers directly and keeping at most max_free of
// them for reuse bounds the memory to the buffers actually in use plus that reserve.
//
// Thread-safe; Get/Put take one mutex briefly. Buffers are zero-filled only when new.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "util/mutex.h"

namespace blksnap {

class BufferPool {
 public:
  BufferPool(size_t buffer_size, size_t max_free);
  ~BufferPool();
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  // A buffer of buffer_size() bytes, or null if memory is exhausted.
  uint8_t* Get() EXCLUDES(mu_);
  // Returns a buffer from Get(); null is ignored.
  void Put(uint8_t* buffer) EXCLUDES(mu_);

  size_t buffer_size() const { return buffer_size_; }
  size_t free_count() const EXCLUDES(mu_);

 private:
  const size_t buffer_size_;
  const size_t max_free_;
  mutable Mutex mu_;
  std::vector<uint8_t*> free_ GUARDED_BY(mu_);
};

}  // namespace blksnap
