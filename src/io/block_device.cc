// Defaults shared by every BlockDevice.
#include "blksnap/block_device.h"

#include <cerrno>

namespace blksnap {

Result<std::vector<Extent>> BlockDevice::BlockStatus(uint64_t offset, uint64_t length) {
  BLKSNAP_RETURN_IF_ERROR(CheckRange(*this, offset, length));
  return std::vector<Extent>{Extent{offset, length, 0}};
}

Result<std::unique_ptr<MappedRange>> BlockDevice::MapShared(uint64_t, uint64_t) {
  return Status::Error(ENOTSUP, "this device cannot be mapped");
}

Status CheckRange(const BlockDevice& device, uint64_t offset, uint64_t length) {
  const uint64_t size = device.size();
  if (offset > size || length > size - offset) {
    return Status::Error(EINVAL, "request beyond the end of the device");
  }
  return Status::Ok();
}

}  // namespace blksnap
