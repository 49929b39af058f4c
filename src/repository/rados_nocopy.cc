// rados_nocopy: see rados_nocopy.h. Compiled as C++17 (CMakeLists.txt): librados.hpp.
//
// The IoCtx is a handle made from the C ioctx for each call (IoCtx::from_rados_ioctx_t takes a
// reference on the same IoCtxImpl, dropped by its destructor), so the store keeps its one C
// handle. The bufferlist holds a static raw buffer over the caller's bytes: librados neither
// copies nor frees them, and the synchronous call returns only once the OSD acknowledged the
// write, after the messenger has sent every byte (nothing of the write is queued any more).
#include "repository/rados_nocopy.h"

#include <rados/librados.hpp>

namespace blksnap::repo::rados_nocopy {

int WriteFull(rados_ioctx_t io, const char* oid, const char* data, size_t size, bool exclusive) {
  librados::IoCtx ctx;
  librados::IoCtx::from_rados_ioctx_t(io, ctx);
  ceph::bufferlist bl;
  if (size > 0) bl.push_back(ceph::buffer::create_static(size, const_cast<char*>(data)));
  if (!exclusive) return ctx.write_full(oid, bl);
  librados::ObjectWriteOperation op;
  op.create(true);
  op.write_full(bl);
  return ctx.operate(oid, &op);
}

}  // namespace blksnap::repo::rados_nocopy
