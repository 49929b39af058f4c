// Prefault: a fresh buffer's pages made present in one call rather than one page fault per 4 KiB.
//
// A backup or restore worker's buffers (its 4 MiB chunk frame, the seal buffer, a delta's
// gathered segments) are new memory for every run: glibc serves them with their own mmap, and the
// first write to each page faults. On a VM whose page faults exit to the hypervisor (this
// project's machines) those faults were about a third of a small incremental backup's CPU
// (docs/performance.md, "Incremental backup: the fixed costs"). MADV_POPULATE_WRITE (Linux 5.14)
// makes the pages present and writable in the kernel's own loop; on older kernels the call fails
// and nothing changes (the pages fault in as before).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace blksnap {

// Makes the whole pages inside [p, p + n) present and writable. Best effort: never fails.
void PrefaultForWrite(void* p, size_t n);

// v.resize(n) (new bytes zero), with the pages of a large growth made present first: the zeroing
// then runs without faults. Below kPrefaultMinimum a plain resize.
void ResizePrefaulted(std::vector<uint8_t>& v, size_t n);

inline constexpr size_t kPrefaultMinimum = 64 * 1024;

}  // namespace blksnap
