// RadosWriteFull: a whole-object write of a large blob for RadosStore, with librados's copy of
// the bytes in huge pages (issue 17: the client's CPU per GB).
//
// librados's C calls (rados_write_full, rados_write_op_write_full) copy the bytes into a buffer
// librados allocates for each call: fresh memory (glibc maps anything over 128 KiB anew), so every
// 4 KiB page of a 4 MiB chunk faulted in. On this project's VM, where mapping a page costs the
// hypervisor ~2.5 us and a fault ~28 us, that was 264 k faults and ~7 of blksnapd's 7.4 CPU-s for
// a 1 GiB backup to rados:// (docs/performance.md, "Repository on Ceph on the new machine").
// Here the copy goes into a librados buffer we allocate aligned to 2 MiB and prefault in
// transparent huge pages (util/prefault.h), then hand over by reference count: librados frees it
// when its last reference goes, so a write that times out while still queued in the messenger
// points at librados's own buffer, never at the caller's (the reason a zero-copy write was
// dropped earlier). The object operation is the C calls' own: write_full, after an exclusive
// create for PutIfAbsent.
// Each thread keeps its buffer for the next write when the write returned it (its reference
// count back to ours alone): a fresh one per write cost the zeroing of its huge pages, 11% of
// blksnapd's CPU in a backup to rados://. A buffer librados still holds (a write that timed out
// queued) is left to librados and the next write takes a new one. A reused buffer must be
// written through copy_in (below).
//
// Compiled as C++17 (CMakeLists.txt): Ceph 16's librados.hpp does not compile as C++20 under
// clang (an ambiguous operator== in buffer.h). Never throws: an exception (every one this code
// can meet is an allocation failure) becomes -ENOMEM.
#include "repository/rados_write.h"

#include <cerrno>
#include <cstring>
#include <rados/librados.hpp>

#include "util/prefault.h"

namespace blksnap::repo {
namespace {

// This thread's copy buffer with room for `length` bytes, ours alone: the one kept from the last
// write, or a new one (a multiple of 2 MiB, aligned and prefaulted in huge pages).
ceph::bufferptr& ThreadCopy(size_t length) {
  thread_local ceph::bufferptr kept;
  if (!kept.have_raw() || kept.raw_nref() != 1 || kept.raw_length() < length) {
    const size_t rounded = (length + kHugePageSize - 1) / kHugePageSize * kHugePageSize;
    kept = ceph::bufferptr(ceph::buffer::create_aligned(static_cast<unsigned>(rounded),
                                                        static_cast<unsigned>(kHugePageSize)));
    PrefaultForWrite(kept.c_str(), rounded, /*huge=*/true);
  }
  return kept;
}

}  // namespace

int RadosWriteFull(rados_ioctx_t io, const char* oid, const uint8_t* data, size_t length,
                   bool exclusive) {
  try {
    librados::IoCtx ctx;
    librados::IoCtx::from_rados_ioctx_t(io, ctx);  // takes its own reference on the ioctx
    ceph::bufferptr copy(ThreadCopy(length), 0, static_cast<unsigned>(length));  // a reference
    // copy_in, not memcpy: it also drops the CRCs the buffer caches of its ranges, which the
    // messenger would otherwise send for the last write's bytes (the OSD then refuses the
    // message and the write never ends).
    copy.copy_in(0, static_cast<unsigned>(length), reinterpret_cast<const char*>(data));
    ceph::bufferlist bl;
    bl.push_back(std::move(copy));
    librados::ObjectWriteOperation op;
    if (exclusive) op.create(true);
    op.write_full(bl);
    return ctx.operate(oid, &op);
  } catch (...) {
    // What can throw here allocates: the copy (ceph::buffer::bad_alloc, a type librados's
    // headers only declare, so it cannot be caught by name), the list, the operation.
    return -ENOMEM;
  }
}

}  // namespace blksnap::repo
