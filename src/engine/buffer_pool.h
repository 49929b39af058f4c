// BufferPool: chunk-sized copy buffers, carved from huge-page slabs and recycled through a
// bounded free list.
//
// Copy-on-write needs a chunk-sized buffer per chunk in flight (at most chunk_maximum_in_queue
// waiting for the storer, plus chunk_maximum_in_cache kept for image reads). Allocating them
// with malloc let glibc's adaptive mmap threshold move 64-256 KiB blocks onto the heap, where
// fragmentation kept freed buffers resident: the daemon's RSS grew by ~2.3 KiB per preserved
// chunk for good (bench/results). So buffers are mapped by the pool, and at most max_free of
// the returned ones stay resident for reuse; the others are given back to the kernel
// (MADV_DONTNEED) and their addresses kept for later Gets. The memory is the buffers in use
// plus that reserve; the address space is the most buffers ever out at once, unmapped with
// the pool (under vm.overcommit_memory=2 it stays committed until then).
//
// Buffers come from 2 MiB-aligned slabs advised MADV_HUGEPAGE (a buffer of 2 MiB or more is
// a slab of its own): every O_DIRECT read of an original chunk and write of a copy pins the
// buffer's pages, and pinning a 64 KiB buffer of 4 KiB pages costs 16 page walks where a huge
// page costs one (15-20% of a 64 KiB O_DIRECT read or write on a RAM disk in the VM:
// docs/performance-vm.md, "Huge pages for the copy buffers"). A slab that gives a buffer back
// loses its huge page and is advised MADV_NOHUGEPAGE from then on, so that khugepaged cannot
// make the released buffers resident again. Buffers smaller than a page (512-byte chunks) get
// a page each, as their own mappings did, so giving one back never touches another. Where
// transparent huge pages are off, slabs are ordinary memory.
//
// Thread-safe; Get/Put take one mutex briefly (the madvise calls run outside it). A buffer's
// bytes are unspecified.
#pragma once

#include <cstddef>
#include <cstdint>
#include <unordered_set>
#include <vector>

#include "util/mutex.h"
#include "util/prefault.h"

namespace blksnap {

class BufferPool {
 public:
  static constexpr size_t kSlabBytes = kHugePageSize;

  // buffer_size: a power of two (a chunk's size).
  BufferPool(size_t buffer_size, size_t max_free);
  ~BufferPool();
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  // A buffer of buffer_size() bytes, or null if memory is exhausted.
  uint8_t* Get() EXCLUDES(mu_);
  // Returns a buffer from Get(); null is ignored.
  void Put(uint8_t* buffer) EXCLUDES(mu_);

  size_t buffer_size() const { return buffer_size_; }
  size_t free_count() const EXCLUDES(mu_);      // resident, ready for reuse
  size_t released_count() const EXCLUDES(mu_);  // given back to the kernel, address kept

 private:
  bool MapSlab() REQUIRES(mu_);

  const size_t buffer_size_;
  const size_t stride_;  // buffer_size_, at least a page
  const size_t slab_bytes_;
  const size_t max_free_;
  mutable Mutex mu_;
  std::vector<uint8_t*> free_ GUARDED_BY(mu_);
  std::vector<uint8_t*> released_ GUARDED_BY(mu_);
  std::vector<uint8_t*> slabs_ GUARDED_BY(mu_);
  std::unordered_set<uint8_t*> released_slabs_ GUARDED_BY(mu_);  // advised MADV_NOHUGEPAGE
  uint8_t* carve_ GUARDED_BY(mu_) = nullptr;  // the next unused buffer of the newest slab
  size_t carve_left_ GUARDED_BY(mu_) = 0;
};

}  // namespace blksnap
