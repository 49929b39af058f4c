// BufferPool: see buffer_pool.h.
#include "engine/buffer_pool.h"

#include <sys/mman.h>

namespace blksnap {

BufferPool::BufferPool(size_t buffer_size, size_t max_free)
    : buffer_size_(buffer_size), max_free_(max_free) {}

BufferPool::~BufferPool() {
  for (uint8_t* b : free_) ::munmap(b, buffer_size_);
}

uint8_t* BufferPool::Get() {
  {
    MutexLock lock(mu_);
    if (!free_.empty()) {
      uint8_t* b = free_.back();
      free_.pop_back();
      return b;
    }
  }
  void* p =
      ::mmap(nullptr, buffer_size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? nullptr : static_cast<uint8_t*>(p);
}

void BufferPool::Put(uint8_t* buffer) {
  if (!buffer) return;
  {
    MutexLock lock(mu_);
    if (free_.size() < max_free_) {
      free_.push_back(buffer);
      return;
    }
  }
  ::munmap(buffer, buffer_size_);
}

size_t BufferPool::free_count() const {
  MutexLock lock(mu_);
  return free_.size();
}

}  // namespace blksnap
