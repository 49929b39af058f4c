// BlockDevice: the one block interface that every layer of blksnap implements.
//
// Original devices (files, block devices, memory), the tracker (CBT + copy-on-write), snapshot
// images and test layers (fault injection, statistics) are all BlockDevices, stacked on each
// other; frontends (NBD, FUSE, ublk) only ever see this interface.
//
// Contract for every implementation:
//  - All methods are thread-safe: any number of threads may call them concurrently.
//  - Offsets and lengths are in bytes. A request must lie within [0, size()); a request past the
//    end fails with EINVAL and touches nothing (use CheckRange()). Zero-length requests succeed.
//  - Alignment is not required by the interface; layers that need it (O_DIRECT) handle it.
//  - Write with kWriteFua returns only once the data is durable.
//  - Errors are positive errno values in Status (EIO, ENOSPC, EINVAL, EROFS, ENOTSUP, ...).
//  - MapShared is the one way around Write(): only a device whose stores reach the kernel at
//    once implements it (a file or a block device); every other device and every layer refuses
//    it (ENOTSUP), so a layer that must see each write (fault injection) always does.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "blksnap/status.h"

namespace blksnap {

// Flags for Write().
inline constexpr uint32_t kWriteFua = 1u << 0;  // durable before completion

// Flags for WriteZeroes().
inline constexpr uint32_t kZeroNoHole = 1u << 0;  // keep the range allocated (no punch)
inline constexpr uint32_t kZeroFast = 1u << 1;    // fail with ENOTSUP unless it is cheap

struct DeviceCapabilities {
  bool read_only = false;
  bool flush = true;
  bool fua = true;
  bool trim = true;
  bool write_zeroes = true;
  bool fast_zero = false;       // WriteZeroes with kZeroFast may succeed
  bool block_status = false;    // BlockStatus() reports real holes/zeroes
  bool multi_conn_safe = true;  // Flush() covers writes completed through any caller
};

// Allocation status of a byte range, as NBD's base:allocation context describes it.
inline constexpr uint32_t kExtentHole = 1u << 0;  // not allocated
inline constexpr uint32_t kExtentZero = 1u << 1;  // reads as zeroes

struct Extent {
  uint64_t offset = 0;
  uint64_t length = 0;
  uint32_t flags = 0;
  bool operator==(const Extent&) const = default;
};

// A part of a device mapped shared and writable (BlockDevice::MapShared); unmapped when
// destroyed, which keeps what was stored (it is in the kernel already). The kernel writes the
// stores back when it likes, and a write-back that fails is reported to no store: WriteBack
// starts the range's write-back (wait false), or waits until the range is on the device and
// returns the first write-back error of the device's file not reported before (wait true).
class MappedRange {
 public:
  virtual ~MappedRange() = default;
  virtual uint8_t* data() = 0;
  virtual Status WriteBack(bool wait) = 0;
};

class BlockDevice {
 public:
  BlockDevice() = default;
  BlockDevice(const BlockDevice&) = delete;
  BlockDevice& operator=(const BlockDevice&) = delete;
  virtual ~BlockDevice() = default;

  virtual uint64_t size() const = 0;
  virtual uint32_t logical_block_size() const { return 512; }
  virtual uint32_t physical_block_size() const { return 4096; }
  virtual DeviceCapabilities capabilities() const = 0;

  virtual Status Read(uint64_t offset, std::span<uint8_t> buf) = 0;
  virtual Status Write(uint64_t offset, std::span<const uint8_t> buf, uint32_t flags = 0) = 0;
  virtual Status Flush() = 0;
  // Discard: afterwards the range reads as zeroes or as its old content (unspecified).
  virtual Status Trim(uint64_t offset, uint64_t length) = 0;
  // Afterwards the range reads as zeroes.
  virtual Status WriteZeroes(uint64_t offset, uint64_t length, uint32_t flags = 0) = 0;

  // Allocation status of [offset, offset + length): extents in order, starting at offset and
  // covering at least a non-empty prefix of the range. The default reports all data.
  virtual Result<std::vector<Extent>> BlockStatus(uint64_t offset, uint64_t length);

  // [offset, offset + length) mapped shared and writable (both multiples of 4096): a store into
  // it is in the kernel's page cache at once, so it outlives a kill -9 of the process, and
  // reaches the disk when the kernel writes it back or at the next Flush(); reads of the range
  // see it. Stores must stay inside the range, and may raise SIGBUS where the kernel cannot
  // back them (a failing disk or file system): guard them (util/sigbus_guard.h). Fails
  // (ENOTSUP: the default, and every layer) where stores could not be served that way: the
  // caller then uses Write().
  virtual Result<std::unique_ptr<MappedRange>> MapShared(uint64_t offset, uint64_t length);
};

// EINVAL unless [offset, offset + length) lies within the device (overflow-safe).
Status CheckRange(const BlockDevice& device, uint64_t offset, uint64_t length);

// A layer that forwards every call to the device below; layers override what they change
// (like LevelDB's EnvWrapper or an nbdkit filter).
class ForwardingDevice : public BlockDevice {
 public:
  explicit ForwardingDevice(std::shared_ptr<BlockDevice> next) : next_(std::move(next)) {}

  uint64_t size() const override { return next_->size(); }
  uint32_t logical_block_size() const override { return next_->logical_block_size(); }
  uint32_t physical_block_size() const override { return next_->physical_block_size(); }
  DeviceCapabilities capabilities() const override { return next_->capabilities(); }
  Status Read(uint64_t offset, std::span<uint8_t> buf) override { return next_->Read(offset, buf); }
  Status Write(uint64_t offset, std::span<const uint8_t> buf, uint32_t flags) override {
    return next_->Write(offset, buf, flags);
  }
  Status Flush() override { return next_->Flush(); }
  Status Trim(uint64_t offset, uint64_t length) override { return next_->Trim(offset, length); }
  Status WriteZeroes(uint64_t offset, uint64_t length, uint32_t flags) override {
    return next_->WriteZeroes(offset, length, flags);
  }
  Result<std::vector<Extent>> BlockStatus(uint64_t offset, uint64_t length) override {
    return next_->BlockStatus(offset, length);
  }

  const std::shared_ptr<BlockDevice>& next() const { return next_; }

 private:
  std::shared_ptr<BlockDevice> next_;
};

}  // namespace blksnap
