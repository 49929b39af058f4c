// BufferPool: see buffer_pool.h.
#include "engine/buffer_pool.h"

#include <sys/mman.h>

#include <algorithm>

#include "util/prefault.h"

namespace blksnap {

BufferPool::BufferPool(size_t buffer_size, size_t max_free)
    : buffer_size_(buffer_size),
      slab_bytes_(std::max(buffer_size, kSlabBytes)),
      max_free_(max_free) {}

BufferPool::~BufferPool() {
  MutexLock lock(mu_);
  for (uint8_t* slab : slabs_) ::munmap(slab, slab_bytes_);
}

bool BufferPool::MapSlab() {
  auto* slab = static_cast<uint8_t*>(MapHugeAligned(slab_bytes_));
  if (slab == nullptr) return false;
  slabs_.push_back(slab);
  carve_ = slab;
  carve_left_ = slab_bytes_ / buffer_size_;
  return true;
}

uint8_t* BufferPool::Get() {
  MutexLock lock(mu_);
  for (auto* list : {&free_, &released_}) {
    if (!list->empty()) {
      uint8_t* b = list->back();
      list->pop_back();
      return b;
    }
  }
  if (carve_left_ == 0 && !MapSlab()) return nullptr;
  uint8_t* b = carve_;
  carve_ += buffer_size_;
  --carve_left_;
  return b;
}

void BufferPool::Put(uint8_t* buffer) {
  if (!buffer) return;
  MutexLock lock(mu_);
  if (free_.size() < max_free_) {
    free_.push_back(buffer);
    return;
  }
  ::madvise(buffer, buffer_size_, MADV_DONTNEED);  // its memory back to the kernel
  released_.push_back(buffer);
}

size_t BufferPool::free_count() const {
  MutexLock lock(mu_);
  return free_.size();
}

size_t BufferPool::released_count() const {
  MutexLock lock(mu_);
  return released_.size();
}

}  // namespace blksnap
