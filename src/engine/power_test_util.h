// A test machine's power, on the I/O seam (engine tests of durability): devices stacked as
// PoweredDevice over FaultDevice stop together at the Nth flush or at Cut(), dropping the
// writes not flushed (a power cut) or keeping them (a process killed).
#pragma once

#include <atomic>
#include <memory>
#include <vector>

#include "blksnap/io.h"
#include "util/mutex.h"

namespace blksnap {

// The power of a test machine: at the cut_at-th flush (of any device on it), or when Cut() is
// called, every device stops: later I/O fails with EIO. With drop, writes not flushed are lost
// (a power cut); without, what was written stays (a process killed).
struct Power {
  std::atomic<uint64_t> flushes{0};
  uint64_t cut_at = 0;  // 0: only Cut()
  bool drop = false;
  uint64_t keep_seed = 0;  // with drop: keep a random part of the unflushed writes
  std::atomic<bool> off{false};
  std::vector<std::shared_ptr<FaultDevice>> devices;
  Mutex mu;

  void Cut() {
    MutexLock lock(mu);
    if (off.exchange(true)) return;
    if (drop) {
      for (auto& d : devices) {
        if (keep_seed) {
          d->DropUnflushedKeepingSome(keep_seed++);
        } else {
          d->DropUnflushed();
        }
      }
    }
  }
};

class PoweredDevice : public ForwardingDevice {
 public:
  PoweredDevice(std::shared_ptr<FaultDevice> next, Power* power)
      : ForwardingDevice(next), power_(power) {}
  Status Write(uint64_t offset, std::span<const uint8_t> buf, uint32_t flags) override {
    if (power_->off) return Status::Error(EIO, "power off");
    return ForwardingDevice::Write(offset, buf, flags);
  }
  Status WriteZeroes(uint64_t offset, uint64_t length, uint32_t flags) override {
    if (power_->off) return Status::Error(EIO, "power off");
    return ForwardingDevice::WriteZeroes(offset, length, flags);
  }
  Status Read(uint64_t offset, std::span<uint8_t> buf) override {
    if (power_->off) return Status::Error(EIO, "power off");
    return ForwardingDevice::Read(offset, buf);
  }
  Status Flush() override {
    if (power_->off) return Status::Error(EIO, "power off");
    if (power_->cut_at && power_->flushes.fetch_add(1) + 1 == power_->cut_at) {
      power_->Cut();
      return Status::Error(EIO, "power cut during the flush");
    }
    {
      // A flush completes before the power can go: the cut and a flush do not interleave.
      MutexLock lock(power_->mu);
      if (power_->off) return Status::Error(EIO, "power off");
      return ForwardingDevice::Flush();
    }
  }

 private:
  Power* power_;
};

// `disk` under a FaultDevice (buffering unflushed writes when the power drops them) under a
// PoweredDevice of `power`.
inline std::shared_ptr<BlockDevice> Powered(std::shared_ptr<BlockDevice> disk, Power* power) {
  auto fault = std::make_shared<FaultDevice>(std::move(disk));
  fault->SetBufferUnflushed(power->drop);
  power->devices.push_back(fault);
  return std::make_shared<PoweredDevice>(fault, power);
}

}  // namespace blksnap
