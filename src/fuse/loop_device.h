// LoopDevice: a /dev/loopN bound to a file (typically a file of a fuse::Mount).
//
//   auto loop = fuse::LoopDevice::Attach(mount->FilePath("vol0"), 512, false).value();
//   // mkfs, mount, ... on loop.path()
//   loop.Detach();  // or let it go out of scope
//
// Attach asks for direct I/O (LO_FLAGS_DIRECT_IO): the loop driver then sends its requests to
// the file with IOCB_DIRECT and keeps no page cache of its own. If the kernel refuses direct
// I/O on that file, Attach falls back to a buffered loop; direct_io() tells which one you got.
// LO_FLAGS_AUTOCLEAR is set as a safety net for a crashed owner, but it never fires while the
// LoopDevice lives (it holds the device open), so detaching is always explicit.
#pragma once

#include <cstdint>
#include <string>

#include "blksnap/status.h"
#include "util/fd.h"

namespace blksnap::fuse {

class LoopDevice {
 public:
  // Binds a free loop device to file (LOOP_CTL_GET_FREE + LOOP_CONFIGURE; a device grabbed by
  // someone else between the two is skipped and another one tried). logical_block_size: 512,
  // 1024, 2048 or 4096. read_only: the file is opened O_RDONLY and the loop device is read-only.
  static Result<LoopDevice> Attach(const std::string& file, uint32_t logical_block_size,
                                   bool read_only);

  LoopDevice() = default;
  LoopDevice(LoopDevice&& other) noexcept;
  LoopDevice& operator=(LoopDevice&& other) noexcept;
  LoopDevice(const LoopDevice&) = delete;
  LoopDevice& operator=(const LoopDevice&) = delete;
  ~LoopDevice();  // Detach(), errors ignored

  const std::string& path() const { return path_; }  // "/dev/loopN"
  uint64_t rdev() const { return rdev_; }            // st_rdev of path()
  int number() const { return number_; }
  const std::string& backing_file() const { return backing_; }
  bool direct_io() const { return direct_io_; }  // the kernel accepted LO_FLAGS_DIRECT_IO
  bool attached() const { return fd_.valid(); }

  // Unbinds the device (LOOP_CLR_FD). If something still has it open (a mounted file system),
  // the kernel defers the unbind to the last close (autoclear) and Detach returns EBUSY; the
  // LoopDevice lets go of it either way. OK if not attached. The kernel closes the backing file
  // asynchronously: a fuse::Mount may report the file open (IsOpen) for a moment afterwards.
  Status Detach();

 private:
  Fd fd_;  // open /dev/loopN
  int number_ = -1;
  std::string path_;
  std::string backing_;  // canonical path of the file, as sysfs loop/backing_file shows it
  uint64_t rdev_ = 0;
  bool direct_io_ = false;
};

// Detaches every loop device whose backing file lies under dir (e.g. the FUSE dir of a daemon
// that crashed). Returns how many it detached; devices still in use are left for autoclear.
Result<int> DetachLoopDevicesUnder(const std::string& dir);

}  // namespace blksnap::fuse
