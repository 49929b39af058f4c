// SnapImage: the image of one device in one taken snapshot (blksnap's snapimage.c), a
// BlockDevice that frontends export.
//
// Reads give the data at the take: DiffArea::ImageRead picks, per chunk, the preserved copy
// (buffer or difference storage) or the original where the chunk was never touched. Writes go
// to the preserved copy, never to the original, and mark both CBT maps (so a backup of the
// image's changes is exact). Trim is accepted and ignored (reads keep returning the old data, as
// allowed). Once the snapshot is corrupted, I/O fails with EIO; once destroyed, with ENODEV
// (DiffArea's image gate).
//
// Locking: none of its own; it holds only const shared pointers. Thread-safe as DiffArea is.
#pragma once

#include <memory>
#include <span>

#include "blksnap/block_device.h"
#include "engine/diff_area.h"
#include "engine/tracker.h"

namespace blksnap {

class SnapImage final : public BlockDevice {
 public:
  SnapImage(std::shared_ptr<DiffArea> area, std::shared_ptr<TrackerImpl> tracker);

  uint64_t size() const override { return area_->geometry().capacity; }
  uint32_t logical_block_size() const override { return logical_block_size_; }
  uint32_t physical_block_size() const override { return physical_block_size_; }
  DeviceCapabilities capabilities() const override;
  Status Read(uint64_t offset, std::span<uint8_t> buf) override;
  Status Write(uint64_t offset, std::span<const uint8_t> buf, uint32_t flags) override;
  Status Flush() override;
  // Trim is accepted and ignores the range (reads keep returning the old data, as allowed).
  Status Trim(uint64_t offset, uint64_t length) override;
  Status WriteZeroes(uint64_t offset, uint64_t length, uint32_t flags) override;

 private:
  const std::shared_ptr<DiffArea> area_;
  const std::shared_ptr<TrackerImpl> tracker_;
  const uint32_t logical_block_size_;
  const uint32_t physical_block_size_;
};

}  // namespace blksnap
