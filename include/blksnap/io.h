// Original devices and test layers: the I/O seam.
//
// Every byte blksnap persists goes through a BlockDevice made here, so tests can swap in a
// memory device or stack a FaultDevice to fail the Nth write, run out of space, add latency or
// drop unflushed writes (power loss).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "blksnap/block_device.h"

namespace blksnap {

enum class IoEngine { kAuto, kIoUring, kPsync };

struct FileOpenOptions {
  bool direct = false;  // O_DIRECT (unaligned requests are bounced through aligned buffers)
  bool read_only = false;
  // Block devices: O_EXCL, so a mounted device (or one another program holds exclusively) is
  // refused with EBUSY, and nobody can mount it or claim it while this device is open. Ignored
  // for regular files.
  bool exclusive = false;
  IoEngine engine = IoEngine::kAuto;  // kAuto: psync (see src/io/sync_io.cc)
};

// A regular file or a block device. Regular files: trim punches holes, write-zeroes uses
// FALLOC_FL_ZERO_RANGE (or punch unless kZeroNoHole), BlockStatus uses SEEK_DATA/SEEK_HOLE.
// Block devices: BLKDISCARD / BLKZEROOUT, sizes from BLKGETSIZE64 / BLKSSZGET / BLKPBSZGET.
Result<std::shared_ptr<BlockDevice>> OpenFileDevice(const std::string& path,
                                                    const FileOpenOptions& options = {});

// Which engine an opened file device uses ("io_uring" or "psync"), for logs and tests.
std::string FileDeviceEngineName(const BlockDevice& device);

// A zero-filled in-memory device (sparse: pages allocated on first write).
std::shared_ptr<BlockDevice> MakeMemoryDevice(uint64_t size, uint32_t logical_block_size = 512);

// Fault injection over any device. All counters count calls made after the setting.
class FaultDevice : public ForwardingDevice {
 public:
  explicit FaultDevice(std::shared_ptr<BlockDevice> next);
  ~FaultDevice() override;

  // The nth (1-based) next call of that kind fails with errnum; 0 disarms.
  void FailNthRead(uint64_t nth, int errnum = EIO);
  void FailNthWrite(uint64_t nth, int errnum = EIO);  // Write, Trim and WriteZeroes count
  void FailNthFlush(uint64_t nth, int errnum = EIO);
  // Every write from now on fails with errnum (0 = stop).
  void FailAllWrites(int errnum);
  // Writes fail with ENOSPC once this many more bytes have been written.
  void NoSpaceAfter(uint64_t bytes);
  // Sleep this long before each call.
  void SetLatency(std::chrono::microseconds latency);
  // Keep writes in an overlay until Flush() or FUA; DropUnflushed() discards the overlay, as
  // a power loss would.
  void SetBufferUnflushed(bool enabled);
  void DropUnflushed();
  // A power cut that the disk's cache survived in part: each unflushed write (overlay segment)
  // reaches the device below or is lost, chosen by `seed`, whatever the order it came in.
  void DropUnflushedKeepingSome(uint64_t seed);
  // Clears every fault.
  void Reset();

  uint64_t reads() const;
  uint64_t writes() const;
  uint64_t flushes() const;

  Status Read(uint64_t offset, std::span<uint8_t> buf) override;
  Status Write(uint64_t offset, std::span<const uint8_t> buf, uint32_t flags) override;
  Status Flush() override;
  Status Trim(uint64_t offset, uint64_t length) override;
  Status WriteZeroes(uint64_t offset, uint64_t length, uint32_t flags) override;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace blksnap
