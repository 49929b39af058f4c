// Prefault: a fresh buffer's pages made present in one call rather than one page fault per 4 KiB.
//
// A backup or restore worker's buffers (its 4 MiB chunk frame, the seal buffer, a delta's
// gathered segments) are new memory for every run: glibc serves them with their own mmap, and the
// first write to each page faults. On a VM whose page faults exit to the hypervisor (this
// project's machines) those faults were about a third of a small incremental backup's CPU
// (docs/performance.md, "A faster machine; the CLI's poll, decoders per CPU"). MADV_POPULATE_WRITE
// (Linux 5.14) makes the pages present and writable in the kernel's own loop; on older kernels
// the call fails and nothing changes (the pages fault in as before). The whole 2 MiB ranges of a
// buffer are also asked for transparent huge pages (MADV_HUGEPAGE, which a kernel whose THP
// setting is "madvise" needs): that hypervisor charged ~2.5 us for every 4 KiB page mapped,
// prefaulted or not, and next to nothing per huge page (4 MiB mapped and copied: 10.5 ms with
// faults, 5.1 ms prefaulted, 0.23 ms in huge pages).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace blksnap {

// Makes the whole pages inside [p, p + n) present and writable; with `huge`, its whole 2 MiB
// ranges are asked for transparent huge pages first (for memory the caller owns outright, such
// as a ChunkFrame, not for memory inside malloc's arenas). Best effort: never fails.
void PrefaultForWrite(void* p, size_t n, bool huge = false);

// v.resize(n) (new bytes zero), with the pages of a large growth made present first (no huge
// pages: the vector's memory may be malloc's to reuse): the zeroing then runs without faults.
// Below kPrefaultMinimum a plain resize.
void ResizePrefaulted(std::vector<uint8_t>& v, size_t n);

// An anonymous private mapping of `bytes` (rounded up to whole pages) starting on a huge-page
// boundary, its whole huge-page ranges asked for transparent huge pages (MADV_HUGEPAGE), not
// prefaulted: nullptr if the kernel refuses the mapping. Unmapped with munmap(p, bytes). For
// buffers that O_DIRECT reads and writes pin again and again (BufferPool's chunk copies):
// pinning walks one entry per page, 16 for 64 KiB of 4 KiB pages and one in a huge
// page (docs/performance-vm.md, "Huge pages for the copy buffers").
void* MapHugeAligned(size_t bytes);

inline constexpr size_t kPrefaultMinimum = 64 * 1024;
// x86-64's and arm64's (4 KiB pages) transparent huge page; an allocation aligned to it has only
// whole huge-page ranges (ChunkFrame).
inline constexpr size_t kHugePageSize = 2 * 1024 * 1024;

}  // namespace blksnap
