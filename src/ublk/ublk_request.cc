// ServeRequest: ublk operation -> BlockDevice call.
//
// Mapping: READ -> Read, WRITE -> Write (UBLK_IO_F_FUA -> kWriteFua), FLUSH -> Flush,
// DISCARD -> Trim, WRITE_ZEROES -> WriteZeroes (UBLK_IO_F_NOUNMAP -> kZeroNoHole). Sectors are
// always 512 bytes in the descriptor, whatever the logical block size. Errors become -errno,
// which the kernel turns into a failed bio (EIO for most values).
#include "ublk/ublk_request.h"

#include <cerrno>
#include <span>

namespace blksnap::ublk {
namespace {

int ToResult(const Status& status, int ok_value) {
  if (status.ok()) return ok_value;
  int errnum = status.errnum();
  return errnum > 0 ? -errnum : -EIO;
}

}  // namespace

int ServeRequest(BlockDevice& device, const ublksrv_io_desc& desc, uint8_t* buf) {
  const uint8_t op = ublksrv_get_op(&desc);
  // The UBLK_IO_F_* values are positions within op_flags (the kernel ORs them in unshifted);
  // ublksrv_get_flags() shifts them down by 8 and must not be combined with them.
  const uint32_t flags = desc.op_flags;
  const uint64_t offset = desc.start_sector << 9;
  const uint64_t length = static_cast<uint64_t>(desc.nr_sectors) << 9;
  switch (op) {
    case UBLK_IO_OP_READ:
      return ToResult(device.Read(offset, std::span<uint8_t>(buf, length)),
                      static_cast<int>(length));
    case UBLK_IO_OP_WRITE:
      return ToResult(device.Write(offset, std::span<const uint8_t>(buf, length),
                                   (flags & UBLK_IO_F_FUA) ? kWriteFua : 0),
                      static_cast<int>(length));
    case UBLK_IO_OP_FLUSH:
      return ToResult(device.Flush(), 0);
    case UBLK_IO_OP_DISCARD:
      return ToResult(device.Trim(offset, length), 0);
    case UBLK_IO_OP_WRITE_ZEROES:
      return ToResult(
          device.WriteZeroes(offset, length, (flags & UBLK_IO_F_NOUNMAP) ? kZeroNoHole : 0), 0);
    default:
      return -EOPNOTSUPP;
  }
}

}  // namespace blksnap::ublk
