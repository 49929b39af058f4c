// ublk UAPI: the kernel's <linux/ublk_cmd.h> plus what the installed header (linux-libc-dev 6.1)
// lacks but the kernels we run on (6.12) provide. Values are the kernel's
// include/uapi/linux/ublk_cmd.h; every addition is guarded so a newer libc header wins.
//
// Protocol summary (details in docs/ublk.md):
//  - control commands: IORING_OP_URING_CMD on /dev/ublk-control, SQE128, a struct
//    ublksrv_ctrl_cmd in sqe->cmd, cmd_op one of UBLK_U_CMD_*;
//  - I/O commands: IORING_OP_URING_CMD on /dev/ublkcN, a struct ublksrv_io_cmd in sqe->cmd,
//    cmd_op UBLK_U_IO_FETCH_REQ / UBLK_U_IO_COMMIT_AND_FETCH_REQ; request descriptors in a
//    per-queue read-only mmap of /dev/ublkcN.
#pragma once

#include <linux/ioctl.h>
#include <linux/ublk_cmd.h>

#include <cstddef>
#include <cstdint>

// Control commands, ioctl-encoded (required unless CONFIG_BLKDEV_UBLK_LEGACY_OPCODES).
#ifndef UBLK_CMD_GET_DEV_INFO2
#define UBLK_CMD_GET_DEV_INFO2 0x12
#endif
#ifndef UBLK_U_CMD_GET_DEV_INFO
#define UBLK_U_CMD_GET_DEV_INFO _IOR('u', UBLK_CMD_GET_DEV_INFO, struct ublksrv_ctrl_cmd)
#define UBLK_U_CMD_ADD_DEV _IOWR('u', UBLK_CMD_ADD_DEV, struct ublksrv_ctrl_cmd)
#define UBLK_U_CMD_DEL_DEV _IOWR('u', UBLK_CMD_DEL_DEV, struct ublksrv_ctrl_cmd)
#define UBLK_U_CMD_START_DEV _IOWR('u', UBLK_CMD_START_DEV, struct ublksrv_ctrl_cmd)
#define UBLK_U_CMD_STOP_DEV _IOWR('u', UBLK_CMD_STOP_DEV, struct ublksrv_ctrl_cmd)
#define UBLK_U_CMD_SET_PARAMS _IOWR('u', UBLK_CMD_SET_PARAMS, struct ublksrv_ctrl_cmd)
#define UBLK_U_CMD_GET_PARAMS _IOR('u', UBLK_CMD_GET_PARAMS, struct ublksrv_ctrl_cmd)
#define UBLK_U_CMD_START_USER_RECOVERY \
  _IOWR('u', UBLK_CMD_START_USER_RECOVERY, struct ublksrv_ctrl_cmd)
#define UBLK_U_CMD_END_USER_RECOVERY _IOWR('u', UBLK_CMD_END_USER_RECOVERY, struct ublksrv_ctrl_cmd)
#define UBLK_U_CMD_GET_DEV_INFO2 _IOR('u', UBLK_CMD_GET_DEV_INFO2, struct ublksrv_ctrl_cmd)
#endif
#ifndef UBLK_U_CMD_GET_FEATURES
#define UBLK_U_CMD_GET_FEATURES _IOR('u', 0x13, struct ublksrv_ctrl_cmd)
#endif

// I/O commands, ioctl-encoded.
#ifndef UBLK_U_IO_FETCH_REQ
#define UBLK_U_IO_FETCH_REQ _IOWR('u', UBLK_IO_FETCH_REQ, struct ublksrv_io_cmd)
#define UBLK_U_IO_COMMIT_AND_FETCH_REQ \
  _IOWR('u', UBLK_IO_COMMIT_AND_FETCH_REQ, struct ublksrv_io_cmd)
#define UBLK_U_IO_NEED_GET_DATA _IOWR('u', UBLK_IO_NEED_GET_DATA, struct ublksrv_io_cmd)
#endif

// Feature flags (struct ublksrv_ctrl_dev_info::flags).
#ifndef UBLK_F_UNPRIVILEGED_DEV
#define UBLK_F_UNPRIVILEGED_DEV (1ULL << 5)
#endif
#ifndef UBLK_F_CMD_IOCTL_ENCODE
#define UBLK_F_CMD_IOCTL_ENCODE (1ULL << 6)
#endif
#ifndef UBLK_F_USER_COPY
#define UBLK_F_USER_COPY (1ULL << 7)
#endif
#ifndef UBLK_F_USER_RECOVERY_FAIL_IO
#define UBLK_F_USER_RECOVERY_FAIL_IO (1ULL << 9)
#endif

// Device states (struct ublksrv_ctrl_dev_info::state).
#ifndef UBLK_S_DEV_FAIL_IO
#define UBLK_S_DEV_FAIL_IO 3
#endif

namespace blksnap::ublk {

// The per-queue descriptor mmap: queue q at q * kMaxCmdBufSize, each queue's buffer
// round_up(depth * sizeof(ublksrv_io_desc), page size) long.
inline constexpr size_t kIoDescSize = sizeof(struct ublksrv_io_desc);
static_assert(kIoDescSize == 24, "ublksrv_io_desc layout changed");
static_assert(sizeof(struct ublksrv_ctrl_cmd) == 32, "ublksrv_ctrl_cmd layout changed");
static_assert(sizeof(struct ublksrv_io_cmd) == 16, "ublksrv_io_cmd layout changed");
static_assert(sizeof(struct ublksrv_ctrl_dev_info) == 64, "ublksrv_ctrl_dev_info layout changed");

inline size_t RoundUp(size_t value, size_t align) { return (value + align - 1) / align * align; }

inline uint64_t QueueDescOffset(uint16_t q_id, size_t page_size) {
  return UBLKSRV_CMD_BUF_OFFSET +
         static_cast<uint64_t>(q_id) * RoundUp(UBLK_MAX_QUEUE_DEPTH * kIoDescSize, page_size);
}

inline size_t QueueDescBytes(uint16_t depth, size_t page_size) {
  return RoundUp(static_cast<size_t>(depth) * kIoDescSize, page_size);
}

}  // namespace blksnap::ublk
