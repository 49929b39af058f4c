// ublk Device: the life cycle of one ublk device (create, recover, stop, abandon, remove).
//
// Design notes
// ------------
// A Device ties three things together: the control channel (ublk_control.h, commands on
// /dev/ublk-control), the char device /dev/ublkcN (an Fd) and one Queue per hardware queue
// (ublk_queue.h, the data path). The order of the commands is the kernel's (docs/ublk.md):
// Create: ADD_DEV -> SET_PARAMS -> open /dev/ublkcN -> start every queue (each queues one
// FETCH_REQ per tag) -> START_DEV (the kernel waits until all FETCH_REQs are queued, then adds
// /dev/ublkbN). Recover: GET_DEV_INFO + GET_PARAMS (check the backend fits) ->
// START_USER_RECOVERY (retried while the kernel still reports EBUSY, i.e. the dead server's
// /dev/ublkcN is not released or the device not yet quiesced) -> open /dev/ublkcN -> start
// queues -> END_USER_RECOVERY. Stop: STOP_DEV -> stop queues -> close /dev/ublkcN -> DEL_DEV
// (DEL_DEV waits for the last reference to the char device, hence the order).
//
// States: kServing (queues running; the destructor stops and deletes), kStopped (deleted, or
// never added), kAbandoned (queues gone, kernel device left for a later Recover()).
//
// Locking: none; Device methods run on the owner's thread only (the queues lock their own).
#include "ublk/ublk_device.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <thread>
#include <utility>
#include <vector>

#include "ublk/ublk_control.h"
#include "ublk/ublk_queue.h"
#include "ublk/ublk_uapi.h"
#include "util/fd.h"

namespace blksnap::ublk {
namespace {

constexpr auto kRecoverTimeout = std::chrono::seconds(30);
constexpr auto kNodeTimeout = std::chrono::seconds(10);

// Opens path, retrying while it does not exist yet (devtmpfs/udev) or is still held by a
// dying server (EBUSY).
Result<Fd> OpenRetrying(const std::string& path, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    Fd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
    if (fd.valid()) return fd;
    if ((errno != ENOENT && errno != EBUSY) || std::chrono::steady_clock::now() > deadline) {
      return Status::FromErrno("open " + path);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

uint64_t StatRdev(const std::string& path, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0 && S_ISBLK(st.st_mode)) return st.st_rdev;
    if (std::chrono::steady_clock::now() > deadline) return 0;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

int Log2(uint32_t value) {
  int shift = 0;
  while ((1u << shift) < value) ++shift;
  return shift;
}

bool IsPowerOfTwo(uint32_t value) { return value != 0 && (value & (value - 1)) == 0; }

Status CheckBackend(const BlockDevice& backend, uint32_t max_io_bytes) {
  const uint32_t lbs = backend.logical_block_size();
  const uint32_t pbs = backend.physical_block_size();
  if (!IsPowerOfTwo(lbs) || lbs < 512 || lbs > 4096) {
    return Status::Error(EINVAL, "ublk: logical block size must be a power of two in [512, 4096]");
  }
  if (!IsPowerOfTwo(pbs) || pbs < lbs) {
    return Status::Error(EINVAL, "ublk: bad physical block size");
  }
  if (backend.size() == 0 || backend.size() % lbs != 0) {
    return Status::Error(EINVAL, "ublk: size must be a non-zero multiple of the block size");
  }
  if (max_io_bytes < 4096 || max_io_bytes % 4096 != 0 || max_io_bytes > (1u << 25)) {
    return Status::Error(EINVAL, "ublk: max_io_bytes must be a multiple of 4 KiB up to 32 MiB");
  }
  return Status::Ok();
}

ublk_params MakeParams(const BlockDevice& backend, uint32_t max_io_bytes) {
  const DeviceCapabilities caps = backend.capabilities();
  const uint32_t lbs = backend.logical_block_size();
  const uint32_t pbs = backend.physical_block_size();
  ublk_params params{};
  params.len = sizeof(params);
  params.types = UBLK_PARAM_TYPE_BASIC;
  ublk_param_basic& basic = params.basic;
  if (caps.read_only) basic.attrs |= UBLK_ATTR_READ_ONLY;
  if (caps.flush) basic.attrs |= UBLK_ATTR_VOLATILE_CACHE;
  if (caps.flush && caps.fua) basic.attrs |= UBLK_ATTR_FUA;
  basic.logical_bs_shift = static_cast<uint8_t>(Log2(lbs));
  basic.physical_bs_shift = static_cast<uint8_t>(Log2(std::min<uint32_t>(pbs, 1u << 16)));
  basic.io_min_shift = basic.logical_bs_shift;
  basic.io_opt_shift = basic.physical_bs_shift;
  basic.max_sectors = max_io_bytes >> 9;
  basic.dev_sectors = backend.size() >> 9;
  if (!caps.read_only && (caps.trim || caps.write_zeroes)) {
    params.types |= UBLK_PARAM_TYPE_DISCARD;
    ublk_param_discard& discard = params.discard;
    discard.discard_granularity = std::max<uint32_t>(pbs, 4096);
    discard.max_discard_segments = 1;
    discard.max_discard_sectors = caps.trim ? (UINT32_MAX >> 9) : 0;
    discard.max_write_zeroes_sectors = caps.write_zeroes ? (UINT32_MAX >> 9) : 0;
  }
  return params;
}

}  // namespace

struct Device::Impl {
  enum class State { kServing, kStopped, kAbandoned };

  std::shared_ptr<BlockDevice> backend;
  DeviceOptions options;
  std::unique_ptr<Control> control;
  ublksrv_ctrl_dev_info info{};
  int dev_id = -1;
  Fd char_fd;
  std::vector<std::unique_ptr<Queue>> queues;
  uint64_t rdev = 0;
  State state = State::kStopped;

  uint32_t id() const { return static_cast<uint32_t>(dev_id); }

  // Opens /dev/ublkcN and starts every queue; on failure nothing is left running.
  Status Attach() {
    BLKSNAP_ASSIGN_OR_RETURN(char_fd, OpenRetrying(CharPath(dev_id), kNodeTimeout));
    uint16_t workers = options.workers_per_queue;
    if (workers == 0) workers = DefaultWorkersPerQueue(info.queue_depth);
    if (options.serve_inline) workers = 0;
    for (uint16_t q = 0; q < info.nr_hw_queues; ++q) {
      auto queue = std::make_unique<Queue>(*backend, char_fd.get(), q, info.queue_depth,
                                           info.max_io_buf_bytes, workers);
      Status status = queue->Start();
      if (!status.ok()) {
        Detach();
        return status;
      }
      queues.push_back(std::move(queue));
    }
    return Status::Ok();
  }

  // Stops every queue and closes /dev/ublkcN (the kernel device stays).
  void Detach() {
    for (auto& queue : queues) queue->RequestStop();
    for (auto& queue : queues) queue->Join();
    queues.clear();
    char_fd.Close();
  }

  // Tears down whatever a failed Create() left: queues, char fd, the kernel device.
  Status Discard(Status why) {
    Detach();
    if (control && dev_id >= 0) {
      control->StopDevice(id()).IgnoreError();
      control->DeleteDevice(id()).IgnoreError();
    }
    state = State::kStopped;
    return why;
  }

  // A failed Recover() leaves the kernel device for another attempt.
  Status Abandon(Status why) {
    Detach();
    state = State::kAbandoned;
    return why;
  }
};

uint16_t DefaultWorkersForCpus(int cpus, uint16_t queue_depth) {
  const int workers =
      std::clamp(2 * std::max(cpus, 1), int{DeviceOptions::kMinDefaultWorkersPerQueue},
                 int{DeviceOptions::kMaxDefaultWorkersPerQueue});
  return static_cast<uint16_t>(std::min<int>(queue_depth, workers));
}

uint16_t DefaultWorkersPerQueue(uint16_t queue_depth) {
  // The calling thread's mask (the daemon pins no thread, so it is the process's, a cpuset's
  // limit included); a machine with more CPU ids than a cpu_set_t holds fails the call and
  // counts its online CPUs instead.
  cpu_set_t set;
  CPU_ZERO(&set);
  const int cpus = ::sched_getaffinity(0, sizeof(set), &set) == 0
                       ? CPU_COUNT(&set)
                       : static_cast<int>(::sysconf(_SC_NPROCESSORS_ONLN));
  return DefaultWorkersForCpus(cpus, queue_depth);
}

bool Available() { return Fd(::open(kControlPath, O_RDWR | O_CLOEXEC)).valid(); }

Device::Device(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Device::~Device() {
  if (impl_ && impl_->state == Impl::State::kServing) Stop().IgnoreError();
}

int Device::dev_id() const { return impl_->dev_id; }
std::string Device::path() const { return BlockPath(impl_->dev_id); }
uint64_t Device::rdev() const { return impl_->rdev; }

Result<std::unique_ptr<Device>> Device::Create(std::shared_ptr<BlockDevice> backend,
                                               const DeviceOptions& options) {
  if (!backend) return Status::Error(EINVAL, "ublk: no backend");
  BLKSNAP_RETURN_IF_ERROR(CheckBackend(*backend, options.max_io_bytes));
  if (options.queues == 0 || options.queue_depth == 0 ||
      options.queue_depth > UBLK_MAX_QUEUE_DEPTH) {
    return Status::Error(EINVAL, "ublk: bad queue count or depth");
  }
  auto impl = std::make_unique<Impl>();
  impl->backend = std::move(backend);
  impl->options = options;
  BLKSNAP_ASSIGN_OR_RETURN(impl->control, Control::Open());

  ublksrv_ctrl_dev_info& info = impl->info;
  info.nr_hw_queues = options.queues;
  info.queue_depth = options.queue_depth;
  info.max_io_buf_bytes = options.max_io_bytes;
  info.dev_id = static_cast<uint32_t>(options.dev_id);
  info.flags = UBLK_F_CMD_IOCTL_ENCODE;
  if (options.user_recovery) info.flags |= UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_REISSUE;
  BLKSNAP_RETURN_IF_ERROR(impl->control->AddDevice(info));
  impl->dev_id = static_cast<int>(info.dev_id);
  impl->state = Impl::State::kServing;

  ublk_params params = MakeParams(*impl->backend, info.max_io_buf_bytes);
  if (Status s = impl->control->SetParams(impl->id(), params); !s.ok()) return impl->Discard(s);
  if (Status s = impl->Attach(); !s.ok()) return impl->Discard(s);
  if (Status s = impl->control->StartDevice(impl->id()); !s.ok()) return impl->Discard(s);
  impl->rdev = StatRdev(BlockPath(impl->dev_id), kNodeTimeout);
  return std::unique_ptr<Device>(new Device(std::move(impl)));
}

Result<std::unique_ptr<Device>> Device::Recover(int dev_id, std::shared_ptr<BlockDevice> backend,
                                                const DeviceOptions& options) {
  if (!backend) return Status::Error(EINVAL, "ublk: no backend");
  if (dev_id < 0) return Status::Error(EINVAL, "ublk: Recover needs a device id");
  auto impl = std::make_unique<Impl>();
  impl->backend = std::move(backend);
  impl->options = options;
  impl->dev_id = dev_id;
  BLKSNAP_ASSIGN_OR_RETURN(impl->control, Control::Open());
  const uint32_t id = impl->id();
  ublksrv_ctrl_dev_info& info = impl->info;
  BLKSNAP_RETURN_IF_ERROR(impl->control->GetInfo(id, info));
  if (!(info.flags & UBLK_F_USER_RECOVERY)) {
    return Status::Error(EINVAL, "ublk: device was created without user recovery");
  }
  BLKSNAP_RETURN_IF_ERROR(CheckBackend(*impl->backend, info.max_io_buf_bytes));
  ublk_params params{};
  params.len = sizeof(params);
  params.types = UBLK_PARAM_TYPE_BASIC;
  BLKSNAP_RETURN_IF_ERROR(impl->control->GetParams(id, params));
  if (params.basic.dev_sectors != impl->backend->size() >> 9 ||
      params.basic.logical_bs_shift != Log2(impl->backend->logical_block_size())) {
    return Status::Error(EINVAL, "ublk: backend size or block size differs from the device's");
  }

  // The kernel accepts START_USER_RECOVERY once the old server's /dev/ublkcN is released and
  // the device is quiesced (its monitor notices a dead server within a few seconds).
  auto deadline = std::chrono::steady_clock::now() + kRecoverTimeout;
  for (;;) {
    Status s = impl->control->StartUserRecovery(id);
    if (s.ok()) break;
    if (s.errnum() != EBUSY || std::chrono::steady_clock::now() > deadline) return s;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  impl->state = Impl::State::kServing;
  if (Status s = impl->Attach(); !s.ok()) return impl->Abandon(s);
  if (Status s = impl->control->EndUserRecovery(id); !s.ok()) return impl->Abandon(s);
  impl->rdev = StatRdev(BlockPath(dev_id), kNodeTimeout);
  return std::unique_ptr<Device>(new Device(std::move(impl)));
}

Status Device::Stop() {
  Impl& impl = *impl_;
  if (impl.state != Impl::State::kServing) return Status::Ok();
  Status first = impl.control->StopDevice(impl.id());
  impl.Detach();
  Status del = impl.control->DeleteDevice(impl.id());
  impl.state = Impl::State::kStopped;
  return first.ok() ? del : first;
}

void Device::Abandon() {
  Impl& impl = *impl_;
  if (impl.state != Impl::State::kServing) return;
  impl.Abandon(Status::Ok()).IgnoreError();
}

}  // namespace blksnap::ublk
