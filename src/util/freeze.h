// FrozenFilesystems: FIFREEZE every file system mounted on a set of block devices.
//
//   auto frozen = FrozenFilesystems::Freeze({loop.rdev(), ublk->rdev()});
//   if (!frozen.ok()) return frozen.status();   // nothing is left frozen
//   ... take the snapshot ...
//   frozen->Thaw();                             // or let it go out of scope
//
// Part of the blksnap library and independent of any frontend: every front that presents a
// block device (a loop device over a FUSE file, a ublk device) freezes through it.
//
// Mounts are found in /proc/self/mountinfo by their major:minor field; each superblock is frozen
// once (bind mounts share it) through one of its mount points, opened O_RDONLY|O_DIRECTORY and
// checked (fstat st_dev) to be that file system and not something mounted over it.
//
// Deadlock warning: FIFREEZE syncs the file system, and when it lives on a device that we serve
// (a loop device over a fuse::Mount file, a ublk device), that sync is served by our own
// threads. Call Freeze from a thread that is not one of those serving threads (or of anything
// they wait for), and keep the front serving until Freeze returns. While frozen, writers to the
// file system block in the kernel; the device itself stays usable.
//
// Thread safety: a FrozenFilesystems is a value owned by one thread at a time.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "blksnap/status.h"
#include "util/fd.h"

namespace blksnap {

class FrozenFilesystems {
 public:
  // rdevs: st_rdev values of block devices (e.g. fuse::LoopDevice::rdev(), ublk::Device::rdev()).
  // Devices without a mounted file system are skipped. On any failure (EOPNOTSUPP: the fs cannot
  // freeze; EBUSY: already frozen by someone else; ...) it thaws what it froze and returns an error
  // naming the mount.
  static Result<FrozenFilesystems> Freeze(const std::vector<uint64_t>& rdevs);

  FrozenFilesystems() = default;
  FrozenFilesystems(FrozenFilesystems&& other) noexcept = default;
  FrozenFilesystems& operator=(FrozenFilesystems&& other) noexcept;
  FrozenFilesystems(const FrozenFilesystems&) = delete;
  FrozenFilesystems& operator=(const FrozenFilesystems&) = delete;
  ~FrozenFilesystems();  // Thaw()

  // FITHAW, in reverse order of freezing. Idempotent. A thaw that fails is reported on stderr
  // (nothing else can be done about it).
  void Thaw();

  // Mount points frozen (one per file system), in freezing order.
  const std::vector<std::string>& mount_points() const { return mount_points_; }

 private:
  std::vector<Fd> fds_;  // open mount-point directories, parallel to mount_points_
  std::vector<std::string> mount_points_;
};

// One line of /proc/self/mountinfo, as far as freezing needs it.
struct MountInfo {
  uint64_t rdev = 0;        // makedev(major, minor) of the mounted device
  std::string mount_point;  // unescaped (\040 -> ' ')
  std::string fs_type;
};
// Parses mountinfo text (exposed for unit tests).
std::vector<MountInfo> ParseMountInfo(const std::string& text);

}  // namespace blksnap
