// FUSE front: a FUSE file and, optionally, the loop device bound to it, as one Front (the loop
// device keeps the file open, so the two are only meaningful together).
//
// Idle: with a loop device, while nobody holds the loop device exclusively (a mount does: an
// O_EXCL open then fails with EBUSY); without one, while the file is not open. Removal detaches
// the loop device first, then removes the file.
#include "fuse/fuse_front.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <optional>

#include "fuse/loop_device.h"

namespace blksnap::fuse {
namespace {

class FileFront final : public Front {
 public:
  FileFront(Mount& mount, std::string name)
      : mount_(mount), name_(std::move(name)), mount_dev_(MountDev(mount)) {}
  ~FileFront() override { Remove().IgnoreError(); }

  const char* kind() const override { return loop_ ? "loop" : "fuse"; }
  void Describe(FrontAddresses& out) const override {
    if (removed_) return;
    out.fuse = mount_.FilePath(name_);
    if (loop_) out.loop = loop_->path();
  }
  uint64_t rdev() const override { return loop_ && !removed_ ? loop_->rdev() : 0; }
  uint64_t alias_dev() const override { return removed_ ? 0 : mount_dev_; }
  Status CheckIdle() const override {
    if (removed_) return Status::Ok();
    if (loop_) {
      int fd = ::open(loop_->path().c_str(), O_RDONLY | O_EXCL | O_CLOEXEC);
      if (fd >= 0) ::close(fd);
      if (fd < 0 && errno == EBUSY) {
        return Status::Error(EBUSY, "loop device " + loop_->path() + " is in use (mounted?)");
      }
      return Status::Ok();
    }
    if (mount_.IsOpen(name_)) {
      return Status::Error(EBUSY, "FUSE file " + mount_.FilePath(name_) + " is open");
    }
    return Status::Ok();
  }
  Status Remove() override {
    if (removed_) return Status::Ok();
    removed_ = true;
    Status first;
    if (loop_) first = loop_->Detach();
    Status s = mount_.RemoveFile(name_);
    return first.ok() ? s : first;
  }
  void set_loop(LoopDevice loop) { loop_.emplace(std::move(loop)); }

 private:
  static uint64_t MountDev(const Mount& mount) {
    struct stat st {};
    return ::stat(mount.dir().c_str(), &st) == 0 ? st.st_dev : 0;
  }

  Mount& mount_;
  const std::string name_;
  const uint64_t mount_dev_;  // st_dev of the FUSE file system (stat once)
  std::optional<LoopDevice> loop_;
  bool removed_ = false;
};

}  // namespace

Result<std::unique_ptr<Front>> MakeFileFront(Mount& mount, const std::string& name,
                                             std::shared_ptr<BlockDevice> device, bool read_only,
                                             bool loop) {
  const uint32_t lbs = device->logical_block_size();
  BLKSNAP_RETURN_IF_ERROR(mount.AddFile(name, std::move(device), read_only));
  auto front = std::make_unique<FileFront>(mount, name);
  if (loop) {
    const std::string path = mount.FilePath(name);
    auto ld = LoopDevice::Attach(path, lbs, read_only);
    if (!ld.ok()) {
      return Status::Error(ld.status().errnum(),
                           "loop device on " + path + ": " + std::string(ld.status().message()));
    }
    front->set_loop(std::move(ld).value());
  }
  return std::unique_ptr<Front>(std::move(front));
}

}  // namespace blksnap::fuse
