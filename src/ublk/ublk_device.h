// ublk frontend: a BlockDevice presented as a native /dev/ublkbN block device.
//
// The kernel's ublk_drv (Linux >= 6.0) forwards block requests to a user-space server over
// io_uring. A Device adds a ublk device, serves its requests from a BlockDevice with one queue
// thread (and its own io_uring) per hardware queue, and stops and deletes it again. With user
// recovery (on by default) a device whose server dies stays present, I/O waits, and a new
// server re-attaches with Recover() and I/O resumes (in-flight requests are re-issued).
//
// Thread safety: a Device's methods are called from one thread (the owner); requests are
// served on the Device's own threads, which call the backend concurrently (BlockDevice
// methods are thread-safe by contract). The backend must outlive nothing: the Device holds a
// shared_ptr to it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "blksnap/block_device.h"
#include "blksnap/status.h"

namespace blksnap::ublk {

// True when /dev/ublk-control exists and can be opened (ublk_drv loaded, enough privilege).
bool Available();

// Workers per queue when DeviceOptions leave it to us: two per CPU this process may run on,
// at least kMinDefaultWorkersPerQueue, at most kMaxDefaultWorkersPerQueue and the queue depth.
// The backend calls are synchronous; more of them in flight than the CPUs can run only adds
// hand-offs when the storage is fast (memory, NVMe), and a queue of them keeps a slow disk busy
// (docs/ublk.md, "Sizing"; docs/performance-vm.md, "Workers by CPUs").
uint16_t DefaultWorkersPerQueue(uint16_t queue_depth);
// The rule behind it, for `cpus` CPUs (tests).
uint16_t DefaultWorkersForCpus(int cpus, uint16_t queue_depth);

struct DeviceOptions {
  int dev_id = -1;  // -1: the kernel picks a free id
  uint16_t queues = 1;
  uint16_t queue_depth = 64;
  uint32_t max_io_bytes = 512 * 1024;
  bool user_recovery = true;  // UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_REISSUE
  // Worker threads per queue that call the backend; 0 picks DefaultWorkersPerQueue.
  uint16_t workers_per_queue = 0;
  static constexpr uint16_t kMinDefaultWorkersPerQueue = 4;
  static constexpr uint16_t kMaxDefaultWorkersPerQueue = 16;
  // Serve requests on the queue thread itself, one at a time, with no worker pool. Only for
  // backends that never block (memory devices); used to measure the cost of the hand-off.
  bool serve_inline = false;
};

class Device {
 public:
  // Adds a ublk device sized and shaped like backend (size, logical/physical block size,
  // capabilities), starts its queues and returns once /dev/ublkbN exists.
  static Result<std::unique_ptr<Device>> Create(std::shared_ptr<BlockDevice> backend,
                                                const DeviceOptions& options);
  // Re-attaches to device dev_id whose server died (or called Abandon()). Queue count, depth
  // and buffer size are taken from the kernel's record of the device; options supplies the
  // rest. Waits (up to ~30 s) for the kernel to finish quiescing the device after the old
  // server's exit. backend must hold the same data the old server served.
  static Result<std::unique_ptr<Device>> Recover(int dev_id, std::shared_ptr<BlockDevice> backend,
                                                 const DeviceOptions& options);

  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;
  // Stops and deletes the kernel device unless Stop() or Abandon() ran before.
  ~Device();

  int dev_id() const;
  std::string path() const;  // /dev/ublkbN
  uint64_t rdev() const;     // st_rdev of /dev/ublkbN (0 if it could not be stat'ed)

  // STOP_DEV (the disk goes away once open I/O completes) and DEL_DEV. Idempotent.
  Status Stop();
  // Stops serving but leaves the kernel device in place (I/O to it waits) for a later
  // Recover(), e.g. across a daemon restart. Only meaningful with user_recovery.
  void Abandon();

  struct Impl;

 private:
  explicit Device(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace blksnap::ublk
