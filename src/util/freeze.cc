// FrozenFilesystems: find file systems by device in mountinfo, FIFREEZE them, FITHAW them.
//
// Design notes
// - Each distinct device is frozen once, through its first mount point that fstat confirms is
//   that device (an over-mounted mount point would freeze the wrong file system).
// - All-or-nothing: a failure thaws, in reverse order, everything frozen so far.
// - The freezing thread blocks in the kernel while the file system syncs; for file systems on
//   a device we serve (loop over our FUSE files, ublk) that sync needs our serving threads
//   (see freeze.h).
// - No state shared between threads; no locks.
#include "util/freeze.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <utility>

namespace blksnap {
namespace {

std::string Unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size() && std::isdigit(static_cast<unsigned char>(s[i + 1]))) {
      out += static_cast<char>(std::stoi(s.substr(i + 1, 3), nullptr, 8));
      i += 3;
    } else {
      out += s[i];
    }
  }
  return out;
}

}  // namespace

std::vector<MountInfo> ParseMountInfo(const std::string& text) {
  std::vector<MountInfo> mounts;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    // id parent major:minor root mount_point options [optional...] - fstype source super_opts
    std::istringstream fields(line);
    std::string id, parent, devno, root, mount_point, options, field;
    if (!(fields >> id >> parent >> devno >> root >> mount_point >> options)) continue;
    while (fields >> field && field != "-") {
    }
    std::string fs_type;
    fields >> fs_type;
    unsigned major_no = 0, minor_no = 0;
    if (std::sscanf(devno.c_str(), "%u:%u", &major_no, &minor_no) != 2) continue;
    mounts.push_back({makedev(major_no, minor_no), Unescape(mount_point), fs_type});
  }
  return mounts;
}

Result<FrozenFilesystems> FrozenFilesystems::Freeze(const std::vector<uint64_t>& rdevs) {
  std::ifstream in("/proc/self/mountinfo");
  if (!in) return Status::FromErrno("open /proc/self/mountinfo");
  std::stringstream text;
  text << in.rdbuf();
  std::vector<MountInfo> mounts = ParseMountInfo(text.str());

  FrozenFilesystems frozen;
  std::set<uint64_t> done;
  for (uint64_t rdev : rdevs) {
    if (!done.insert(rdev).second) continue;
    std::string dev = std::to_string(major(rdev)) + ":" + std::to_string(minor(rdev));
    Status last;
    bool found = false;
    for (const MountInfo& m : mounts) {
      if (m.rdev != rdev) continue;
      Fd fd(::open(m.mount_point.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
      if (!fd.valid()) {
        last = Status::FromErrno("open mount point " + m.mount_point + " of " + dev);
        continue;
      }
      struct stat st;
      if (::fstat(fd.get(), &st) != 0 || st.st_dev != rdev) {
        last = Status::Error(
            EBUSY, "mount point " + m.mount_point + " of " + dev + " is covered by another mount");
        continue;
      }
      found = true;
      if (::ioctl(fd.get(), FIFREEZE, 0) != 0) {
        int err = errno;
        frozen.Thaw();
        std::string why = err == EBUSY ? " (already frozen)"
                          : err == EOPNOTSUPP || err == ENOTTY
                              ? " (" + m.fs_type + " cannot freeze)"
                              : "";
        return Status::Error(err,
                             "freeze " + m.fs_type + " at " + m.mount_point + " on " + dev + why);
      }
      frozen.fds_.push_back(std::move(fd));
      frozen.mount_points_.push_back(m.mount_point);
      break;
    }
    if (!found && !last.ok()) {
      frozen.Thaw();
      return last;
    }
  }
  return frozen;
}

FrozenFilesystems& FrozenFilesystems::operator=(FrozenFilesystems&& other) noexcept {
  if (this != &other) {
    Thaw();
    fds_ = std::move(other.fds_);
    mount_points_ = std::move(other.mount_points_);
    other.fds_.clear();
    other.mount_points_.clear();
  }
  return *this;
}

FrozenFilesystems::~FrozenFilesystems() { Thaw(); }

void FrozenFilesystems::Thaw() {
  for (size_t i = fds_.size(); i-- > 0;) {
    if (::ioctl(fds_[i].get(), FITHAW, 0) != 0)
      std::fprintf(stderr, "blksnap: thaw %s: %s\n", mount_points_[i].c_str(),
                   std::strerror(errno));
  }
  fds_.clear();
  mount_points_.clear();
}

}  // namespace blksnap
