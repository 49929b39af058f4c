// LoopDevice: binding loop devices to files with LOOP_CONFIGURE.
//
// Design notes
// - Attach: open the backing file, then repeat { LOOP_CTL_GET_FREE -> N; open /dev/loopN;
//   LOOP_CONFIGURE } until a device accepts. Another process may configure N between our
//   GET_FREE and CONFIGURE: the kernel answers EBUSY and we try the next free one.
// - Direct I/O: LO_FLAGS_DIRECT_IO is requested; the kernel silently drops it when the file
//   cannot do O_DIRECT at the requested block size (or refuses with EINVAL on some versions,
//   then we configure again without it). LOOP_GET_STATUS64 afterwards tells what we got.
// - The LoopDevice keeps /dev/loopN open. That keeps LO_FLAGS_AUTOCLEAR from firing while we
//   live, and lets the kernel auto-detach the device if our process dies without detaching.
// - Detach: LOOP_CLR_FD, then close. With other openers left the kernel only marks the device
//   autoclear and unbinds at the last close; we report that as EBUSY.
#include "fuse/loop_device.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <thread>
#include <utility>

namespace blksnap::fuse {
namespace {

constexpr int kLoopMajor = 7;
constexpr int kMaxAttempts = 64;

std::string LoopPath(int n) { return "/dev/loop" + std::to_string(n); }

// Opens /dev/loopN, creating the node if devtmpfs has not (yet) made it.
int OpenLoopNode(int n, uint64_t* rdev) {
  std::string path = LoopPath(n);
  for (int i = 0; i < 100; ++i) {
    int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd >= 0) {
      struct stat st;
      if (::fstat(fd, &st) == 0) *rdev = st.st_rdev;
      return fd;
    }
    if (errno != ENOENT) return -1;
    if (i == 10) (void)::mknod(path.c_str(), S_IFBLK | 0660, makedev(kLoopMajor, n));
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  errno = ENOENT;
  return -1;
}

bool ReadSysfs(const std::string& path, std::string* out) {
  std::ifstream in(path);
  if (!in) return false;
  std::getline(in, *out);
  return true;
}

}  // namespace

Result<LoopDevice> LoopDevice::Attach(const std::string& file, uint32_t logical_block_size,
                                      bool read_only) {
  if (logical_block_size < 512 || logical_block_size > 4096 ||
      (logical_block_size & (logical_block_size - 1)) != 0)
    return Status::Error(EINVAL, "bad loop block size " + std::to_string(logical_block_size));
  Fd file_fd(::open(file.c_str(), (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC));
  if (!file_fd.valid()) return Status::FromErrno("open " + file);
  Fd control(::open("/dev/loop-control", O_RDWR | O_CLOEXEC));
  if (!control.valid()) return Status::FromErrno("open /dev/loop-control");

  bool want_dio = true;
  Status last = Status::Error(EBUSY, "no free loop device");
  for (int attempt = 0; attempt < kMaxAttempts; ++attempt) {
    int n = ::ioctl(control.get(), LOOP_CTL_GET_FREE);
    if (n < 0) return Status::FromErrno("LOOP_CTL_GET_FREE");
    uint64_t rdev = 0;
    Fd loop_fd(OpenLoopNode(n, &rdev));
    if (!loop_fd.valid()) return Status::FromErrno("open " + LoopPath(n));

    loop_config config{};
    config.fd = static_cast<uint32_t>(file_fd.get());
    config.block_size = logical_block_size;
    config.info.lo_flags = LO_FLAGS_AUTOCLEAR | (read_only ? LO_FLAGS_READ_ONLY : 0) |
                           (want_dio ? LO_FLAGS_DIRECT_IO : 0);
    std::strncpy(reinterpret_cast<char*>(config.info.lo_file_name), file.c_str(), LO_NAME_SIZE - 1);
    if (::ioctl(loop_fd.get(), LOOP_CONFIGURE, &config) != 0) {
      int err = errno;
      if (err == EBUSY) {  // lost a race for this device
        last = Status::Error(EBUSY, "loop devices keep getting taken");
        continue;
      }
      if (err == EINVAL && want_dio) {  // this kernel refuses instead of falling back
        want_dio = false;
        continue;
      }
      errno = err;
      return Status::FromErrno("LOOP_CONFIGURE " + LoopPath(n) + " on " + file);
    }
    loop_info64 info{};
    if (::ioctl(loop_fd.get(), LOOP_GET_STATUS64, &info) != 0) {
      Status status = Status::FromErrno("LOOP_GET_STATUS64 " + LoopPath(n));
      (void)::ioctl(loop_fd.get(), LOOP_CLR_FD);
      return status;
    }
    LoopDevice device;
    device.fd_ = std::move(loop_fd);
    device.number_ = n;
    device.path_ = LoopPath(n);
    char resolved[PATH_MAX];
    device.backing_ = ::realpath(file.c_str(), resolved) ? resolved : file;
    device.rdev_ = rdev;
    device.direct_io_ = (info.lo_flags & LO_FLAGS_DIRECT_IO) != 0;
    return device;
  }
  return last;
}

LoopDevice::LoopDevice(LoopDevice&& other) noexcept
    : fd_(std::move(other.fd_)),
      number_(std::exchange(other.number_, -1)),
      path_(std::move(other.path_)),
      backing_(std::move(other.backing_)),
      rdev_(std::exchange(other.rdev_, 0)),
      direct_io_(std::exchange(other.direct_io_, false)) {}

LoopDevice& LoopDevice::operator=(LoopDevice&& other) noexcept {
  if (this != &other) {
    Detach().IgnoreError();
    fd_ = std::move(other.fd_);
    number_ = std::exchange(other.number_, -1);
    path_ = std::move(other.path_);
    backing_ = std::move(other.backing_);
    rdev_ = std::exchange(other.rdev_, 0);
    direct_io_ = std::exchange(other.direct_io_, false);
  }
  return *this;
}

LoopDevice::~LoopDevice() { Detach().IgnoreError(); }

Status LoopDevice::Detach() {
  if (!fd_.valid()) return Status::Ok();
  Status status;
  if (::ioctl(fd_.get(), LOOP_CLR_FD) != 0 && errno != ENXIO)
    status = Status::FromErrno("LOOP_CLR_FD " + path_);
  fd_.Close();  // the unbind happens here if we were the last opener
  if (!status.ok()) return status;
  // Still bound to our file: someone else holds it open. (Bound to another file: the device
  // was freed and somebody attached it again at once.)
  std::string backing;
  if (ReadSysfs("/sys/block/loop" + std::to_string(number_) + "/loop/backing_file", &backing) &&
      backing == backing_)
    return Status::Error(EBUSY, path_ + " is still in use; it unbinds at its last close");
  return Status::Ok();
}

Result<int> DetachLoopDevicesUnder(const std::string& dir) {
  std::string prefix = dir;
  while (prefix.size() > 1 && prefix.back() == '/') prefix.pop_back();
  prefix += "/";
  DIR* sys = ::opendir("/sys/block");
  if (sys == nullptr) return Status::FromErrno("opendir /sys/block");
  int detached = 0;
  while (dirent* d = ::readdir(sys)) {
    std::string name = d->d_name;
    if (name.rfind("loop", 0) != 0) continue;
    std::string backing;
    if (!ReadSysfs("/sys/block/" + name + "/loop/backing_file", &backing)) continue;
    if (backing.rfind(prefix, 0) != 0) continue;
    Fd fd(::open(("/dev/" + name).c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) continue;
    if (::ioctl(fd.get(), LOOP_CLR_FD) == 0) ++detached;
  }
  ::closedir(sys);
  return detached;
}

}  // namespace blksnap::fuse
