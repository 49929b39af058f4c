// FUSE front: a device as a file of the FUSE mount, optionally with a loop device on that file
// (the block-device front where ublk is not used).
#pragma once

#include <memory>
#include <string>

#include "front/front.h"
#include "fuse/fuse_mount.h"

namespace blksnap::fuse {

// File `name` in mount serving device; with `loop`, also a /dev/loopN (direct I/O) on it. The
// mount must outlive the front. On failure nothing is left behind.
Result<std::unique_ptr<Front>> MakeFileFront(Mount& mount, const std::string& name,
                                             std::shared_ptr<BlockDevice> device, bool read_only,
                                             bool loop);

}  // namespace blksnap::fuse
