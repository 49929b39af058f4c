// SnapImage: see snap_image.h.
#include "engine/snap_image.h"

namespace blksnap {

SnapImage::SnapImage(std::shared_ptr<DiffArea> area, std::shared_ptr<TrackerImpl> tracker)
    : area_(std::move(area)),
      tracker_(std::move(tracker)),
      logical_block_size_(tracker_->logical_block_size()),
      physical_block_size_(tracker_->physical_block_size()) {}

DeviceCapabilities SnapImage::capabilities() const {
  DeviceCapabilities caps;
  caps.fast_zero = false;
  caps.block_status = false;
  caps.multi_conn_safe = true;
  return caps;
}

Status SnapImage::Read(uint64_t offset, std::span<uint8_t> buf) {
  BLKSNAP_RETURN_IF_ERROR(CheckRange(*this, offset, buf.size()));
  return area_->ImageRead(offset, buf);
}

Status SnapImage::Write(uint64_t offset, std::span<const uint8_t> buf, uint32_t flags) {
  BLKSNAP_RETURN_IF_ERROR(CheckRange(*this, offset, buf.size()));
  if (buf.empty()) return Status::Ok();
  tracker_->cbt().MarkBoth(offset, buf.size()).IgnoreError();  // range checked above
  BLKSNAP_RETURN_IF_ERROR(area_->ImageWrite(offset, buf));
  return (flags & kWriteFua) ? area_->ImageFlush() : Status::Ok();
}

Status SnapImage::Flush() { return area_->ImageFlush(); }

Status SnapImage::Trim(uint64_t offset, uint64_t length) {
  BLKSNAP_RETURN_IF_ERROR(CheckRange(*this, offset, length));
  if (area_->corrupted()) return Status::Error(EIO, "snapshot corrupted");
  return Status::Ok();
}

Status SnapImage::WriteZeroes(uint64_t offset, uint64_t length, uint32_t flags) {
  BLKSNAP_RETURN_IF_ERROR(CheckRange(*this, offset, length));
  if (flags & kZeroFast) return Status::Error(ENOTSUP, "zeroing an image is not fast");
  if (length == 0) return Status::Ok();
  tracker_->cbt().MarkBoth(offset, length).IgnoreError();
  return area_->ImageWriteZeroes(offset, length);
}

}  // namespace blksnap
