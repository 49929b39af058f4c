// ublk front: a device as a native /dev/ublkbN (ublk/ublk_device.h) behind the Front interface.
#pragma once

#include <memory>

#include "front/front.h"
#include "ublk/ublk_device.h"

namespace blksnap::ublk {

// A new ublk device for device; with recover_id >= 0, first tries to re-attach to that device
// left by a previous daemon (ublk Recover: I/O waiting on it resumes) and falls back to a new
// device (Describe() says which it got).
// workers: threads serving each queue; -1 the default (DefaultWorkersPerQueue: 2 per CPU, 4-16),
// 0 none (serve_inline: the queue thread serves one request at a time).
Result<std::unique_ptr<Front>> MakeDeviceFront(std::shared_ptr<BlockDevice> device, int recover_id,
                                               const std::string& name, int workers = -1);

// Removes a ublk device a dead daemon left behind whose backend is gone (a snapshot image):
// re-attaches with a backend failing every I/O (EIO) of the recorded geometry, then stops and
// deletes it, so nothing waits on it forever.
Status RemoveOrphan(int dev_id, uint64_t size, uint32_t logical_block_size);

}  // namespace blksnap::ublk
