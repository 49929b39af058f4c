// Control: synchronous ublk control commands over io_uring on /dev/ublk-control.
//
// Design notes
// - One command in flight at a time: Run() queues one SQE128, submits, waits for its CQE. The
//   ring needs 4 entries at most; the kernel handles each command before completing it.
// - The callers (ublk_device.cc) put the commands in the order the kernel wants; see the
//   life-cycle table in docs/ublk.md. Nothing here keeps state about a device.
#include "ublk/ublk_control.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstring>

namespace blksnap::ublk {

std::string CharPath(int dev_id) { return "/dev/ublkc" + std::to_string(dev_id); }
std::string BlockPath(int dev_id) { return "/dev/ublkb" + std::to_string(dev_id); }

Result<std::unique_ptr<Control>> Control::Open() {
  auto control = std::unique_ptr<Control>(new Control());
  control->fd_ = Fd(::open(kControlPath, O_RDWR | O_CLOEXEC));
  if (!control->fd_.valid()) return Status::FromErrno("open /dev/ublk-control");
  BLKSNAP_RETURN_IF_ERROR(control->ring_.Init(4, IORING_SETUP_SQE128));
  return control;
}

Result<int> Control::Run(uint32_t cmd_op, uint32_t dev_id, void* buf, uint16_t len, uint64_t data0,
                         const char* what) {
  io_uring* ring = ring_.get();
  io_uring_sqe* sqe = GetSqe(ring);
  if (sqe == nullptr) return Status::Error(EBUSY, "ublk control ring full");
  std::memset(sqe, 0, 2 * sizeof(*sqe));  // SQE128
  sqe->opcode = IORING_OP_URING_CMD;
  sqe->fd = fd_.get();
  sqe->cmd_op = cmd_op;
  auto* cmd = reinterpret_cast<ublksrv_ctrl_cmd*>(sqe->cmd);
  cmd->dev_id = dev_id;
  cmd->queue_id = static_cast<uint16_t>(-1);
  cmd->addr = reinterpret_cast<uint64_t>(buf);
  cmd->len = len;
  cmd->data[0] = data0;
  sqe->user_data = cmd_op;
  int ret = SubmitAndWait(ring);
  if (ret < 0) return Status::Error(-ret, std::string("io_uring_submit ") + what);
  io_uring_cqe* cqe = nullptr;
  ret = io_uring_peek_cqe(ring, &cqe);
  if (ret < 0) return Status::Error(-ret, std::string("io_uring_peek_cqe ") + what);
  int res = cqe->res;
  io_uring_cqe_seen(ring, cqe);
  if (res < 0) return Status::Error(-res, std::string("ublk ") + what);
  return res;
}

Status Control::AddDevice(ublksrv_ctrl_dev_info& info) {
  return Run(UBLK_U_CMD_ADD_DEV, info.dev_id, &info, sizeof(info), 0, "ADD_DEV").status();
}

Status Control::SetParams(uint32_t dev_id, ublk_params& params) {
  return Run(UBLK_U_CMD_SET_PARAMS, dev_id, &params, sizeof(params), 0, "SET_PARAMS").status();
}

Status Control::GetInfo(uint32_t dev_id, ublksrv_ctrl_dev_info& info) {
  return Run(UBLK_U_CMD_GET_DEV_INFO, dev_id, &info, sizeof(info), 0, "GET_DEV_INFO").status();
}

Status Control::GetParams(uint32_t dev_id, ublk_params& params) {
  return Run(UBLK_U_CMD_GET_PARAMS, dev_id, &params, sizeof(params), 0, "GET_PARAMS").status();
}

Status Control::StartDevice(uint32_t dev_id) {
  return Run(UBLK_U_CMD_START_DEV, dev_id, nullptr, 0, static_cast<uint64_t>(::getpid()),
             "START_DEV")
      .status();
}

Status Control::StopDevice(uint32_t dev_id) {
  return Run(UBLK_U_CMD_STOP_DEV, dev_id, nullptr, 0, 0, "STOP_DEV").status();
}

Status Control::DeleteDevice(uint32_t dev_id) {
  return Run(UBLK_U_CMD_DEL_DEV, dev_id, nullptr, 0, 0, "DEL_DEV").status();
}

Status Control::StartUserRecovery(uint32_t dev_id) {
  return Run(UBLK_U_CMD_START_USER_RECOVERY, dev_id, nullptr, 0, 0, "START_USER_RECOVERY").status();
}

Status Control::EndUserRecovery(uint32_t dev_id) {
  return Run(UBLK_U_CMD_END_USER_RECOVERY, dev_id, nullptr, 0, static_cast<uint64_t>(::getpid()),
             "END_USER_RECOVERY")
      .status();
}

}  // namespace blksnap::ublk
