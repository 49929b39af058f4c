// ublk front. Idle while nobody holds /dev/ublkbN exclusively (a mount does). Removal stops and
// deletes the kernel device; a daemon killed without removal leaves it to the kernel, where the
// next daemon finds it (MakeDeviceFront with recover_id) or removes it (RemoveOrphan).
#include "ublk/ublk_front.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>

namespace blksnap::ublk {
namespace {

class DeviceFront final : public Front {
 public:
  DeviceFront(std::unique_ptr<Device> device, bool recovered)
      : device_(std::move(device)), recovered_(recovered) {}
  ~DeviceFront() override { Remove().IgnoreError(); }

  const char* kind() const override { return "ublk"; }
  void Describe(FrontAddresses& out) const override {
    if (!device_) return;
    out.ublk = device_->path();
    out.ublk_dev_id = device_->dev_id();
    out.ublk_recovered = recovered_;
  }
  uint64_t rdev() const override { return device_ ? device_->rdev() : 0; }
  Status CheckIdle() const override {
    if (!device_) return Status::Ok();
    const std::string path = device_->path();
    int fd = ::open(path.c_str(), O_RDONLY | O_EXCL | O_CLOEXEC);
    if (fd >= 0) ::close(fd);
    if (fd < 0 && errno == EBUSY) {
      return Status::Error(EBUSY, "ublk device " + path + " is in use (mounted?)");
    }
    return Status::Ok();
  }
  Status Remove() override {
    if (!device_) return Status::Ok();
    Status s = device_->Stop();
    device_.reset();
    return s;
  }

 private:
  std::unique_ptr<Device> device_;
  const bool recovered_;
};

// The backend of a ublk device whose data is gone: same geometry, every I/O fails.
class GoneDevice final : public BlockDevice {
 public:
  GoneDevice(uint64_t size, uint32_t lbs) : size_(size), lbs_(lbs) {}
  uint64_t size() const override { return size_; }
  uint32_t logical_block_size() const override { return lbs_; }
  uint32_t physical_block_size() const override { return std::max<uint32_t>(lbs_, 4096); }
  DeviceCapabilities capabilities() const override { return {}; }
  Status Read(uint64_t, std::span<uint8_t>) override { return Gone(); }
  Status Write(uint64_t, std::span<const uint8_t>, uint32_t) override { return Gone(); }
  Status Flush() override { return Gone(); }
  Status Trim(uint64_t, uint64_t) override { return Gone(); }
  Status WriteZeroes(uint64_t, uint64_t, uint32_t) override { return Gone(); }

 private:
  static Status Gone() { return Status::Error(EIO, "device gone with the daemon restart"); }
  const uint64_t size_;
  const uint32_t lbs_;
};

}  // namespace

Result<std::unique_ptr<Front>> MakeDeviceFront(std::shared_ptr<BlockDevice> device, int recover_id,
                                               const std::string& name, int workers) {
  DeviceOptions options;
  options.queues = 1;
  options.workers_per_queue = static_cast<uint16_t>(workers > 0 ? workers : 0);
  options.serve_inline = workers == 0;
  options.user_recovery = true;
  if (recover_id >= 0) {
    auto recovered = Device::Recover(recover_id, device, options);
    if (recovered.ok()) {
      spdlog::info("ublk: re-attached /dev/ublkb{} to '{}'", recover_id, name);
      return std::unique_ptr<Front>(new DeviceFront(std::move(recovered).value(), true));
    }
    // A leftover device of another geometry blocks nothing; it is left to the administrator.
    spdlog::warn("ublk: cannot re-attach /dev/ublkb{} to '{}' ({}); creating a new device",
                 recover_id, name, recovered.status().ToString());
  }
  auto created = Device::Create(std::move(device), options);
  if (!created.ok()) {
    return Status::Error(created.status().errnum(), "ublk device for '" + name + "': " +
                                                        std::string(created.status().message()));
  }
  return std::unique_ptr<Front>(new DeviceFront(std::move(created).value(), false));
}

Status RemoveOrphan(int dev_id, uint64_t size, uint32_t logical_block_size) {
  auto gone = std::make_shared<GoneDevice>(size, logical_block_size);
  auto device = Device::Recover(dev_id, gone, {});
  if (!device.ok()) return device.status();
  return (*device)->Stop();
}

}  // namespace blksnap::ublk
