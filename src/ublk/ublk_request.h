// Serving one ublk request descriptor through a BlockDevice.
//
// Kept apart from the queue machinery so that it can be unit-tested on the host, whose kernel
// has no ublk_drv: the test builds descriptors by hand and checks the calls and results.
#pragma once

#include <cstdint>

#include "blksnap/block_device.h"
#include "ublk/ublk_uapi.h"

namespace blksnap::ublk {

// Serves the request described by desc, with buf (at least nr_sectors * 512 bytes for READ and
// WRITE) as its data buffer. Returns what COMMIT_AND_FETCH_REQ reports to the kernel: the bytes
// transferred for READ/WRITE, 0 for FLUSH/DISCARD/WRITE_ZEROES, or a negative errno.
int ServeRequest(BlockDevice& device, const ublksrv_io_desc& desc, uint8_t* buf);

}  // namespace blksnap::ublk
