// BufferPool: see buffer_pool.h.
#include "engine/buffer_pool.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>

namespace blksnap {
namespace {

size_t PageSize() {
  static const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  return page;
}

}  // namespace

BufferPool::BufferPool(size_t buffer_size, size_t max_free)
    : buffer_size_(buffer_size),
      stride_(std::max(buffer_size, PageSize())),
      slab_bytes_(std::max(stride_, kSlabBytes)),
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
  carve_left_ = slab_bytes_ / stride_;
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
  carve_ += stride_;
  --carve_left_;
  return b;
}

void BufferPool::Put(uint8_t* buffer) {
  if (!buffer) return;
  // The slab holding the buffer (slabs are slab_bytes_-aligned, a buffer never crosses one).
  auto* slab = reinterpret_cast<uint8_t*>(reinterpret_cast<uintptr_t>(buffer) &
                                          ~(uintptr_t{slab_bytes_} - 1));
  bool first_release;
  {
    MutexLock lock(mu_);
    if (free_.size() < max_free_) {
      free_.push_back(buffer);
      return;
    }
    first_release = released_slabs_.insert(slab).second;
  }
  // Outside the lock (each call flushes TLBs). A slab that gave memory back is no longer a
  // huge-page candidate: khugepaged would otherwise collapse it again, making its released
  // buffers resident. The whole stride goes: with chunks smaller than a page each buffer has
  // its page, so the page holds no other buffer.
  if (first_release) (void)::madvise(slab, slab_bytes_, MADV_NOHUGEPAGE);
  (void)::madvise(buffer, stride_, MADV_DONTNEED);
  MutexLock lock(mu_);
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
