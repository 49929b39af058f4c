// Control: the /dev/ublk-control channel, one method per control command.
//
// Every command is an IORING_OP_URING_CMD (ioctl-encoded UBLK_U_CMD_*, SQE128, a struct
// ublksrv_ctrl_cmd in sqe->cmd) through a small ring owned by the Control, and synchronous:
// one SQE, wait for its CQE. Errors carry the kernel's errno and the command's name.
//
// Thread safety: a Control is used by one thread at a time (the Device's owner).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "blksnap/status.h"
#include "ublk/ublk_ring.h"
#include "ublk/ublk_uapi.h"
#include "util/fd.h"

namespace blksnap::ublk {

inline constexpr char kControlPath[] = "/dev/ublk-control";

// The device nodes of ublk device dev_id: /dev/ublkcN (the server's char device) and
// /dev/ublkbN (the block device).
std::string CharPath(int dev_id);
std::string BlockPath(int dev_id);

class Control {
 public:
  static Result<std::unique_ptr<Control>> Open();

  Control(const Control&) = delete;
  Control& operator=(const Control&) = delete;

  // ADD_DEV: info in (dev_id -1: the kernel picks), info out (the id and limits granted).
  Status AddDevice(ublksrv_ctrl_dev_info& info);
  Status SetParams(uint32_t dev_id, ublk_params& params);
  Status GetInfo(uint32_t dev_id, ublksrv_ctrl_dev_info& info);
  Status GetParams(uint32_t dev_id, ublk_params& params);
  // START_DEV / END_USER_RECOVERY name this process as the device's server.
  Status StartDevice(uint32_t dev_id);
  Status StopDevice(uint32_t dev_id);
  Status DeleteDevice(uint32_t dev_id);
  Status StartUserRecovery(uint32_t dev_id);
  Status EndUserRecovery(uint32_t dev_id);

 private:
  Control() = default;
  // Runs one command for dev_id with buf (may be null) as its payload and data0 as data[0];
  // returns the kernel's non-negative result.
  Result<int> Run(uint32_t cmd_op, uint32_t dev_id, void* buf, uint16_t len, uint64_t data0,
                  const char* what);

  Fd fd_;
  Ring ring_;
};

}  // namespace blksnap::ublk
