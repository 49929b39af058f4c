// Writes of a caller's bytes into RADOS without librados copying them first (issue 17: the
// client's CPU per GB of a backup).
//
// librados's C API (rados_write_full, rados_write_op_write_full) appends the caller's bytes to
// a new bufferlist: a fresh allocation the size of the object, then a copy. For a backup's 4 MiB
// chunks in blksnapd, whose glibc serves every allocation over 128 KiB with its own mmap
// (daemon/main.cc), that was an mmap, 1024 page faults, the zero-filling of their pages, a
// memcpy and an munmap per chunk: ~15% of blksnapd's CPU on a rados:// backup
// (docs/performance.md). These calls hand librados the caller's bytes as a static buffer instead
// (librados C++ API: buffer::create_static), referenced by the bufferlist until the synchronous
// call returns; the messenger sends them from there.
//
// Why a separate translation unit with its own C-style header: librados.hpp (Ceph 16) does not
// compile as C++20 under clang (an ambiguous operator== in buffer.h), so rados_nocopy.cc alone is
// compiled as C++17 (CMakeLists.txt) and exposes only C types here.
// Thread safety: as librados's (operations on one ioctx from many threads are safe); no state.
#pragma once

#include <rados/librados.h>

#include <cstddef>

namespace blksnap::repo::rados_nocopy {

// write_full of `size` bytes at `data` to `oid` (exclusive: one write operation
// {create(exclusive), write_full}, -EEXIST if the object exists). librados's result: 0 or
// -errno. `data` must stay unchanged until the call returns.
int WriteFull(rados_ioctx_t io, const char* oid, const char* data, size_t size, bool exclusive);

}  // namespace blksnap::repo::rados_nocopy
