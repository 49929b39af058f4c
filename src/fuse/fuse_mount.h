// Mount: a FUSE file system that exposes BlockDevices as files.
//
//   auto mount = fuse::Mount::Create("/run/blksnap/fuse").value();
//   mount->AddFile("vol0", tracker, /*read_only=*/false);      // /run/blksnap/fuse/vol0
//   auto loop = fuse::LoopDevice::Attach(mount->FilePath("vol0"), 512, false).value();
//
// Each file sits at the mount root, is as large as its device and is served straight from the
// device: every open gets FOPEN_DIRECT_IO, so no page cache in the kernel sits between a reader
// and the device; read/write go to BlockDevice::Read/Write (O_DSYNC/O_SYNC writes carry
// kWriteFua), fsync to Flush, fallocate ZERO_RANGE to WriteZeroes(kZeroNoHole) and PUNCH_HOLE to
// WriteZeroes(0) (a hole must read back as zeroes, and the loop driver turns REQ_OP_WRITE_ZEROES
// into a punch, so Trim's "zeroes or old data" would not do), lseek SEEK_DATA/SEEK_HOLE to
// BlockStatus. The size is fixed: truncate fails.
//
// Threads: a multi-threaded libfuse session loop serves the mount; all methods are thread-safe.
// Never call into a Mount, or freeze a file system that lives on one of its files, from a
// handler running on the Mount's own threads (device callbacks): that would wait on itself.
#pragma once

#include <memory>
#include <string>

#include "blksnap/block_device.h"
#include "blksnap/status.h"

namespace blksnap::fuse {

class Mount {
 public:
  // Mounts a FUSE file system (fstype fuse.blksnap, allow_other, default_permissions) at dir,
  // creating dir if it is missing. A stale FUSE mount at dir (a daemon that died: statfs fails
  // with ENOTCONN) is lazily unmounted first. EBUSY if a live FUSE mount is already there.
  static Result<std::unique_ptr<Mount>> Create(const std::string& dir);

  // Lazily unmounts the file system and stops its threads. Requests already being served
  // finish; a holder that still has a file open (a loop device not yet detached, a reader)
  // sees its later requests fail (ENOTCONN) instead of hanging. Detach loop devices first.
  ~Mount();

  Mount(const Mount&) = delete;
  Mount& operator=(const Mount&) = delete;

  // Adds the file `name` (no '/', not "." or "..", may contain '@'). EEXIST if the name is
  // taken; EINVAL for a bad name or a zero-sized device. A read-only file has mode 0400 and
  // refuses opens for writing (EROFS).
  Status AddFile(const std::string& name, std::shared_ptr<BlockDevice> device, bool read_only);

  // Removes the file (ENOENT if unknown). It does not wait for, nor refuse because of, open
  // handles: the name disappears at once, the device reference is dropped, and I/O through
  // handles that are still open fails with ENODEV. Detach a loop device on it before calling.
  Status RemoveFile(const std::string& name);

  // True while at least one handle of the file is open (a loop device, a reader, ...). The
  // kernel sends FUSE release in the background: right after a close(2) or a loop detach
  // returns, this may still be true for a moment.
  bool IsOpen(const std::string& name) const;

  // dir + "/" + name.
  std::string FilePath(const std::string& name) const;

  const std::string& dir() const;

  class Impl;

 private:
  explicit Mount(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace blksnap::fuse
