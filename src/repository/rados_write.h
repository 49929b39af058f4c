// RadosWriteFull: see rados_write.cc. Only built with the RADOS backend.
#pragma once

#include <rados/librados.h>

#include <cstddef>
#include <cstdint>

namespace blksnap::repo {

// Blobs at least this long go through RadosWriteFull; smaller ones through the C calls.
inline constexpr size_t kRadosHugeCopyMinimum = 1024 * 1024;

// Writes data[0, length) as the whole object `oid` (after an exclusive create when `exclusive`:
// -EEXIST if it exists), through a librados buffer in huge pages. 0 or -errno, as librados's C
// calls; never throws. length < 4 GiB.
int RadosWriteFull(rados_ioctx_t io, const char* oid, const uint8_t* data, size_t length,
                   bool exclusive);

}  // namespace blksnap::repo
