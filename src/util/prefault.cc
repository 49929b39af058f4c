// Prefault: see prefault.h.
#include "util/prefault.h"

#include <sys/mman.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14; older headers lack it
#endif

namespace blksnap {

void PrefaultForWrite(void* p, size_t n, bool huge) {
  if (p == nullptr || n < kPrefaultMinimum) return;
  static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t at = reinterpret_cast<uintptr_t>(p);
  const uintptr_t begin = (at + page - 1) & ~(page - 1);
  const uintptr_t end = (at + n) & ~(page - 1);
  if (end <= begin) return;
  // The whole huge-page ranges inside only (a range reaching past the buffer would take 2 MiB
  // of memory for a few KiB of it). Ignored on failure: EINVAL without THP in the kernel.
  const uintptr_t huge_begin = (begin + kHugePageSize - 1) & ~(kHugePageSize - 1);
  const uintptr_t huge_end = end & ~(kHugePageSize - 1);
  if (huge && huge_end > huge_begin) {
    (void)::madvise(reinterpret_cast<void*>(huge_begin), huge_end - huge_begin, MADV_HUGEPAGE);
  }
  // Ignored on failure: EINVAL before 5.14, ENOMEM/EFAULT leave the pages to fault as usual.
  (void)::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_WRITE);
}

void* MapHugeAligned(size_t bytes) {
  if (bytes == 0) return nullptr;
  static const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  bytes = (bytes + page - 1) & ~(page - 1);  // whole pages, so the tail below unmaps
  // Over-map by one huge page and trim both ends to the aligned range.
  const size_t span = bytes + kHugePageSize;
  void* p = ::mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  const auto start = reinterpret_cast<uintptr_t>(p);
  const uintptr_t aligned = (start + kHugePageSize - 1) & ~(uintptr_t{kHugePageSize} - 1);
  if (aligned > start) ::munmap(p, aligned - start);
  const uintptr_t tail = aligned + bytes;
  if (start + span > tail) ::munmap(reinterpret_cast<void*>(tail), start + span - tail);
  const size_t huge = bytes & ~(kHugePageSize - 1);
  if (huge > 0) (void)::madvise(reinterpret_cast<void*>(aligned), huge, MADV_HUGEPAGE);
  return reinterpret_cast<void*>(aligned);
}

void ResizePrefaulted(std::vector<uint8_t>& v, size_t n) {
  if (n > v.size() && n - v.size() >= kPrefaultMinimum) {
    if (n > v.capacity()) v.reserve(n);
    PrefaultForWrite(v.data() + v.size(), n - v.size());
  }
  v.resize(n);
}

}  // namespace blksnap
