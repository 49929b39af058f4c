// ublk Device: control commands, queue threads, worker pools.
//
// Design notes
// ------------
// Control path. Every control command is an IORING_OP_URING_CMD on /dev/ublk-control through
// a small SQE128 ring owned by the Device (commands are synchronous: one SQE, wait for its CQE).
// Create: ADD_DEV -> SET_PARAMS -> open /dev/ublkcN -> start every queue (each queues one
// FETCH_REQ per tag) -> START_DEV (the kernel waits until all FETCH_REQs are queued, then adds
// /dev/ublkbN). Recover: GET_DEV_INFO + GET_PARAMS (check the backend fits) ->
// START_USER_RECOVERY (retried while the kernel still reports EBUSY, i.e. the dead server's
// /dev/ublkcN is not released or the device not yet quiesced) -> open /dev/ublkcN -> start
// queues -> END_USER_RECOVERY. Stop: STOP_DEV -> stop queues -> close /dev/ublkcN -> DEL_DEV
// (DEL_DEV waits for the last reference to the char device, hence the order).
//
// Data path. One queue thread per hardware queue owns that queue's io_uring, its mmap of the
// kernel's request descriptors and one buffer of max_io_bytes per tag. ublk requires every
// FETCH/COMMIT for a queue to come from the task that first fetched (the "ubq daemon"), so
// only the queue thread talks to the kernel. BlockDevice calls are synchronous, so the queue
// thread never serves a request itself: it hands tags to a small worker pool (a mutex-guarded
// deque + condition variable) and the workers hand (tag, result) back through a
// mutex-guarded vector plus an eventfd that the queue ring always has a pending 8-byte READ
// on. A request therefore costs two thread hops (queue -> worker -> queue) and both directions
// batch: one CQE batch is dispatched under one lock, and a worker writes the eventfd only when
// no wake-up is already pending (notify_pending_), so under load the queue thread drains many
// completions per wake-up and commits them with one io_uring_submit. Alternatives rejected:
// per-tag threads (depth threads per queue, 64+ mostly idle threads, worse on 2 CPUs);
// workers committing directly (the kernel rejects commands from a task other than the queue's
// daemon before UBLK_F_PER_IO_DAEMON, which 6.12 lacks).
//
// Tag states (queue thread only): kInKernel (FETCH/COMMIT_AND_FETCH pending), kInWorker
// (dispatched, result not yet committed), kIdle (aborted by the kernel or left unserved while
// stopping). The queue thread exits when the kernel has aborted every tag (STOP_DEV cancels
// pending fetches with UBLK_IO_RES_ABORT) or a stop was requested and no tag is in a worker.
// Requests that arrive after a stop request are not served: for Stop() there are none (the
// disk is gone), for Abandon() the kernel re-issues them to the next server
// (UBLK_F_USER_RECOVERY_REISSUE). Closing the ring cancels the remaining FETCHes.
//
// Locking: Queue::work_mu_ guards work_ and quit_; Queue::done_mu_ guards done_; neither is
// held across backend I/O or io_uring calls. Device methods run on the owner's thread only.
#include "ublk/ublk_device.h"

#include <fcntl.h>
#include <liburing.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <future>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "ublk/ublk_request.h"
#include "ublk/ublk_uapi.h"
#include "util/fd.h"

namespace blksnap::ublk {
namespace {

constexpr char kControlPath[] = "/dev/ublk-control";
constexpr uint64_t kEventUserData = ~0ull;  // the eventfd READ; tags are < 4096
constexpr size_t kCommitBatch = 8;  // a worker wakes the queue thread after this many results
constexpr auto kRecoverTimeout = std::chrono::seconds(30);
constexpr auto kNodeTimeout = std::chrono::seconds(10);

std::string CharPath(int dev_id) { return "/dev/ublkc" + std::to_string(dev_id); }
std::string BlockPath(int dev_id) { return "/dev/ublkb" + std::to_string(dev_id); }

// An mmap'd region, unmapped on destruction.
class Mapping {
 public:
  Mapping() = default;
  Mapping(void* addr, size_t length) : addr_(addr), length_(length) {}
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  Mapping(Mapping&& other) noexcept
      : addr_(std::exchange(other.addr_, nullptr)), length_(std::exchange(other.length_, 0)) {}
  Mapping& operator=(Mapping&& other) noexcept {
    if (this != &other) {
      Reset();
      addr_ = std::exchange(other.addr_, nullptr);
      length_ = std::exchange(other.length_, 0);
    }
    return *this;
  }
  ~Mapping() { Reset(); }
  uint8_t* data() const { return static_cast<uint8_t*>(addr_); }
  void Reset() {
    if (addr_ != nullptr) ::munmap(addr_, length_);
    addr_ = nullptr;
    length_ = 0;
  }

 private:
  void* addr_ = nullptr;
  size_t length_ = 0;
};

// An io_uring instance; not movable (liburing's struct points into its own mappings, and
// queue threads keep a pointer to it).
class Ring {
 public:
  Ring() = default;
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;
  ~Ring() {
    if (initialized_) io_uring_queue_exit(&ring_);
  }
  Status Init(unsigned entries, unsigned flags) {
    int ret = io_uring_queue_init(entries, &ring_, flags);
    if (ret < 0) return Status::Error(-ret, "io_uring_queue_init");
    initialized_ = true;
    return Status::Ok();
  }
  io_uring* get() { return &ring_; }

 private:
  io_uring ring_{};
  bool initialized_ = false;
};

// Submits everything queued and waits for at least one CQE, retrying on EINTR.
int SubmitAndWait(io_uring* ring) {
  for (;;) {
    int ret = io_uring_submit_and_wait(ring, 1);
    if (ret != -EINTR) return ret;
  }
}

io_uring_sqe* GetSqe(io_uring* ring) {
  io_uring_sqe* sqe = io_uring_get_sqe(ring);
  if (sqe == nullptr) {
    io_uring_submit(ring);
    sqe = io_uring_get_sqe(ring);
  }
  return sqe;
}

// The /dev/ublk-control channel.
class Control {
 public:
  static Result<std::unique_ptr<Control>> Open() {
    auto control = std::unique_ptr<Control>(new Control());
    control->fd_ = Fd(::open(kControlPath, O_RDWR | O_CLOEXEC));
    if (control->fd_.get() < 0) return Status::FromErrno("open /dev/ublk-control");
    BLKSNAP_RETURN_IF_ERROR(control->ring_.Init(4, IORING_SETUP_SQE128));
    return control;
  }

  // Runs one control command for dev_id with buf (may be null) as its payload and data0 as
  // data[0]; returns the kernel's non-negative result.
  Result<int> Run(uint32_t cmd_op, uint32_t dev_id, void* buf, uint16_t len, uint64_t data0,
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

 private:
  Control() = default;
  Fd fd_;
  Ring ring_;
};

// Opens path, retrying while it does not exist yet (devtmpfs/udev) or is still held by a
// dying server (EBUSY).
Result<Fd> OpenRetrying(const std::string& path, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd >= 0) return Fd(fd);
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

}  // namespace

// One hardware queue: its thread, ring, descriptors, buffers and workers.
class Queue {
 public:
  Queue(BlockDevice& backend, int char_fd, uint16_t q_id, uint16_t depth, uint32_t max_io_bytes,
        uint16_t workers)
      : backend_(backend),
        char_fd_(char_fd),
        q_id_(q_id),
        depth_(depth),
        max_io_bytes_(max_io_bytes),
        worker_count_(workers) {}
  Queue(const Queue&) = delete;
  Queue& operator=(const Queue&) = delete;
  ~Queue() {
    RequestStop();
    Join();
  }

  // Maps descriptors and buffers, starts the thread and returns once it has queued a
  // FETCH_REQ for every tag (or failed to).
  Status Start() {
    const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
    const size_t desc_bytes = QueueDescBytes(depth_, page);
    void* descs = ::mmap(nullptr, desc_bytes, PROT_READ, MAP_SHARED | MAP_POPULATE, char_fd_,
                         static_cast<off_t>(QueueDescOffset(q_id_, page)));
    if (descs == MAP_FAILED) return Status::FromErrno("mmap ublk descriptors");
    descs_ = Mapping(descs, desc_bytes);
    const size_t buf_bytes = static_cast<size_t>(depth_) * max_io_bytes_;
    void* bufs =
        ::mmap(nullptr, buf_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (bufs == MAP_FAILED) return Status::FromErrno("mmap ublk buffers");
    buffers_ = Mapping(bufs, buf_bytes);
    event_fd_ = Fd(::eventfd(0, EFD_CLOEXEC));
    if (event_fd_.get() < 0) return Status::FromErrno("eventfd");

    std::promise<Status> started;
    std::future<Status> started_future = started.get_future();
    thread_ = std::thread([this, &started] { Run(started); });
    Status status = started_future.get();
    if (!status.ok()) Join();
    return status;
  }

  // Asks the queue thread to finish: requests already in workers complete and are committed,
  // new ones are left to the kernel. Safe to call more than once, from any thread.
  void RequestStop() {
    stop_requested_.store(true, std::memory_order_release);
    Wake();
  }

  void Join() {
    if (thread_.joinable()) thread_.join();
  }

 private:
  enum class TagState : uint8_t { kIdle, kInKernel, kInWorker };

  uint8_t* Buffer(uint16_t tag) const {
    return buffers_.data() + static_cast<size_t>(tag) * max_io_bytes_;
  }

  void Wake() {
    if (event_fd_.get() >= 0 && !notify_pending_.exchange(true, std::memory_order_acq_rel)) {
      uint64_t one = 1;
      ssize_t n = ::write(event_fd_.get(), &one, sizeof(one));
      (void)n;  // an eventfd write only fails on counter overflow, which a pending READ prevents
    }
  }

  bool QueueIoCommand(io_uring* ring, uint32_t cmd_op, uint16_t tag, int32_t result) {
    io_uring_sqe* sqe = GetSqe(ring);
    if (sqe == nullptr) return false;
    io_uring_prep_rw(IORING_OP_URING_CMD, sqe, char_fd_, nullptr, 0, 0);
    sqe->cmd_op = cmd_op;
    auto* cmd = reinterpret_cast<ublksrv_io_cmd*>(&sqe->addr3);
    cmd->q_id = q_id_;
    cmd->tag = tag;
    cmd->result = result;
    cmd->addr = reinterpret_cast<uint64_t>(Buffer(tag));
    sqe->user_data = tag;
    return true;
  }

  void ArmEventRead(io_uring* ring) {
    io_uring_sqe* sqe = GetSqe(ring);
    if (sqe == nullptr) return;
    io_uring_prep_read(sqe, event_fd_.get(), &event_value_, sizeof(event_value_), 0);
    sqe->user_data = kEventUserData;
  }

  void Run(std::promise<Status>& started) {
    Ring ring;
    // Enough SQEs for one command per tag plus the eventfd read; COOP_TASKRUN avoids IPIs for
    // task work since this thread enters the kernel on every loop anyway.
    unsigned entries = 2;
    while (entries < static_cast<unsigned>(depth_) + 1) entries *= 2;
    Status status = ring.Init(entries, IORING_SETUP_COOP_TASKRUN);
    if (!status.ok()) status = ring.Init(entries, 0);
    if (!status.ok()) {
      started.set_value(std::move(status));
      return;
    }
    io_uring* r = ring.get();
    states_.assign(depth_, TagState::kIdle);
    for (uint16_t tag = 0; tag < depth_; ++tag) {
      if (!QueueIoCommand(r, UBLK_U_IO_FETCH_REQ, tag, -1)) {
        started.set_value(Status::Error(EBUSY, "ublk queue ring full"));
        return;
      }
      states_[tag] = TagState::kInKernel;
    }
    ArmEventRead(r);
    int ret = io_uring_submit(r);
    if (ret < 0) {
      started.set_value(Status::Error(-ret, "io_uring_submit FETCH_REQ"));
      return;
    }
    for (uint16_t i = 0; i < worker_count_; ++i) workers_.emplace_back([this] { WorkerLoop(); });
    started.set_value(Status::Ok());

    Loop(r);

    {
      std::lock_guard<std::mutex> lock(work_mu_);
      quit_ = true;
    }
    work_cv_.notify_all();
    for (auto& worker : workers_) worker.join();
    workers_.clear();
    // ~Ring closes the ring; the kernel cancels the FETCHes still pending.
  }

  void Loop(io_uring* r) {
    std::vector<uint16_t> ready;
    std::vector<std::pair<uint16_t, int>> done;
    uint32_t aborted = 0;
    uint32_t in_worker = 0;
    for (;;) {
      const bool stopping = stop_requested_.load(std::memory_order_acquire);
      if (aborted == depth_ || (stopping && in_worker == 0)) return;
      int ret = SubmitAndWait(r);
      if (ret < 0 && ret != -EBUSY && ret != -EAGAIN) {
        std::fprintf(stderr, "ublk queue %u: io_uring_submit_and_wait: %s\n", q_id_,
                     std::strerror(-ret));
        return;
      }
      bool drain = false;
      unsigned head;
      unsigned seen = 0;
      io_uring_cqe* cqe;
      io_uring_for_each_cqe(r, head, cqe) {
        ++seen;
        if (cqe->user_data == kEventUserData) {
          drain = true;
          continue;
        }
        const auto tag = static_cast<uint16_t>(cqe->user_data);
        if (tag >= depth_) continue;
        if (cqe->res == UBLK_IO_RES_OK && !stop_requested_.load(std::memory_order_acquire)) {
          states_[tag] = TagState::kInWorker;
          ready.push_back(tag);
        } else {
          // UBLK_IO_RES_ABORT: the device is going away; other errors: the command was
          // rejected. Either way the kernel no longer holds this tag. A request that arrives
          // while stopping is left unserved.
          if (cqe->res != UBLK_IO_RES_OK && cqe->res != UBLK_IO_RES_ABORT) {
            std::fprintf(stderr, "ublk queue %u tag %u: %s\n", q_id_, tag,
                         std::strerror(-cqe->res));
          }
          if (states_[tag] != TagState::kIdle) ++aborted;
          states_[tag] = TagState::kIdle;
        }
      }
      io_uring_cq_advance(r, seen);

      if (!ready.empty() && worker_count_ == 0) {
        // Inline mode: serve on this thread and commit right away.
        for (uint16_t tag : ready) {
          states_[tag] = TagState::kInKernel;
          if (!QueueIoCommand(r, UBLK_U_IO_COMMIT_AND_FETCH_REQ, tag, Serve(tag))) {
            states_[tag] = TagState::kIdle;
            ++aborted;
          }
        }
        ready.clear();
      }
      if (!ready.empty()) {
        in_worker += static_cast<uint32_t>(ready.size());
        size_t wake;
        {
          std::lock_guard<std::mutex> lock(work_mu_);
          work_.insert(work_.end(), ready.begin(), ready.end());
          queued_.store(work_.size(), std::memory_order_release);
          // Wake only as many sleeping workers as there is new work: busy workers pick up
          // the rest before they sleep again.
          wake = std::min<size_t>(ready.size(), idle_workers_);
        }
        for (size_t i = 0; i < wake; ++i) work_cv_.notify_one();
        ready.clear();
      }

      if (drain) {
        notify_pending_.store(false, std::memory_order_release);
        {
          std::lock_guard<std::mutex> lock(done_mu_);
          done.swap(done_);
        }
        for (auto [tag, result] : done) {
          --in_worker;
          states_[tag] = TagState::kInKernel;
          if (!QueueIoCommand(r, UBLK_U_IO_COMMIT_AND_FETCH_REQ, tag, result)) {
            std::fprintf(stderr, "ublk queue %u: no SQE to commit tag %u\n", q_id_, tag);
            states_[tag] = TagState::kIdle;
            ++aborted;
          }
        }
        done.clear();
        ArmEventRead(r);
      }
    }
  }

  int Serve(uint16_t tag) {
    const auto* descs = reinterpret_cast<const ublksrv_io_desc*>(descs_.data());
    ublksrv_io_desc desc;
    std::memcpy(&desc, &descs[tag], sizeof(desc));
    const uint8_t op = ublksrv_get_op(&desc);
    if ((op == UBLK_IO_OP_READ || op == UBLK_IO_OP_WRITE) &&
        (static_cast<uint64_t>(desc.nr_sectors) << 9) > max_io_bytes_) {
      return -EINVAL;  // the kernel never sends more than max_io_bytes; be safe anyway
    }
    return ServeRequest(backend_, desc, Buffer(tag));
  }

  void WorkerLoop() {
    for (;;) {
      uint16_t tag;
      {
        std::unique_lock<std::mutex> lock(work_mu_);
        if (!quit_ && work_.empty()) {
          ++idle_workers_;
          work_cv_.wait(lock, [this] { return quit_ || !work_.empty(); });
          --idle_workers_;
        }
        if (work_.empty()) return;  // quit_ and nothing left
        tag = work_.front();
        work_.pop_front();
        queued_.store(work_.size(), std::memory_order_release);
      }
      const int result = Serve(tag);
      size_t done_count;
      {
        std::lock_guard<std::mutex> lock(done_mu_);
        done_.emplace_back(tag, result);
        done_count = done_.size();
      }
      // Wake the queue thread when this worker is about to go idle or a batch has built up;
      // otherwise keep serving and let the completions commit together (fewer wake-ups of the
      // queue thread and of the submitter on the other side of the ring).
      if (done_count >= kCommitBatch || queued_.load(std::memory_order_acquire) == 0) Wake();
    }
  }

  BlockDevice& backend_;
  const int char_fd_;
  const uint16_t q_id_;
  const uint16_t depth_;
  const uint32_t max_io_bytes_;
  const uint16_t worker_count_;
  Mapping descs_;
  Mapping buffers_;
  Fd event_fd_;
  uint64_t event_value_ = 0;  // target of the pending eventfd READ
  std::thread thread_;
  std::vector<std::thread> workers_;  // started and joined by the queue thread
  std::vector<TagState> states_;      // queue thread only
  std::atomic<bool> stop_requested_{false};
  std::atomic<bool> notify_pending_{false};  // an eventfd wake-up is in flight

  std::mutex work_mu_;
  std::condition_variable work_cv_;
  std::deque<uint16_t> work_;      // guarded by work_mu_
  bool quit_ = false;              // guarded by work_mu_
  size_t idle_workers_ = 0;        // guarded by work_mu_: workers waiting on work_cv_
  std::atomic<size_t> queued_{0};  // work_.size(), written under work_mu_, read without it

  std::mutex done_mu_;
  std::vector<std::pair<uint16_t, int>> done_;  // guarded by done_mu_
};

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

  Status StartQueues() {
    uint16_t workers = options.workers_per_queue;
    if (workers == 0) workers = std::min<uint16_t>(info.queue_depth, 4);
    if (options.serve_inline) workers = 0;
    for (uint16_t q = 0; q < info.nr_hw_queues; ++q) {
      auto queue = std::make_unique<Queue>(*backend, char_fd.get(), q, info.queue_depth,
                                           info.max_io_buf_bytes, workers);
      Status status = queue->Start();
      if (!status.ok()) {
        StopQueues();
        return status;
      }
      queues.push_back(std::move(queue));
    }
    return Status::Ok();
  }

  void StopQueues() {
    for (auto& queue : queues) queue->RequestStop();
    for (auto& queue : queues) queue->Join();
    queues.clear();
  }

  // Tears down whatever a failed Create() left: queues, char fd, the kernel device.
  void Discard() {
    StopQueues();
    char_fd.Close();
    if (control && dev_id >= 0) {
      control->Run(UBLK_U_CMD_STOP_DEV, dev_id, nullptr, 0, 0, "STOP_DEV").status().IgnoreError();
      control->Run(UBLK_U_CMD_DEL_DEV, dev_id, nullptr, 0, 0, "DEL_DEV").status().IgnoreError();
    }
    state = State::kStopped;
  }
};

bool Available() {
  int fd = ::open(kControlPath, O_RDWR | O_CLOEXEC);
  if (fd < 0) return false;
  ::close(fd);
  return true;
}

Device::Device(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Device::~Device() {
  if (impl_ && impl_->state == Impl::State::kServing) Stop().IgnoreError();
}

int Device::dev_id() const { return impl_->dev_id; }
std::string Device::path() const { return BlockPath(impl_->dev_id); }
uint64_t Device::rdev() const { return impl_->rdev; }

namespace {

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
  {
    auto added =
        impl->control->Run(UBLK_U_CMD_ADD_DEV, info.dev_id, &info, sizeof(info), 0, "ADD_DEV");
    if (!added.ok()) return added.status();
  }
  impl->dev_id = static_cast<int>(info.dev_id);
  impl->state = Impl::State::kServing;

  auto fail = [&impl](Status status) -> Result<std::unique_ptr<Device>> {
    impl->Discard();
    return status;
  };
  ublk_params params = MakeParams(*impl->backend, info.max_io_buf_bytes);
  if (auto r = impl->control->Run(UBLK_U_CMD_SET_PARAMS, info.dev_id, &params, sizeof(params), 0,
                                  "SET_PARAMS");
      !r.ok()) {
    return fail(r.status());
  }
  auto fd = OpenRetrying(CharPath(impl->dev_id), kNodeTimeout);
  if (!fd.ok()) return fail(fd.status());
  impl->char_fd = std::move(fd).value();
  if (Status s = impl->StartQueues(); !s.ok()) return fail(std::move(s));
  if (auto r = impl->control->Run(UBLK_U_CMD_START_DEV, info.dev_id, nullptr, 0,
                                  static_cast<uint64_t>(::getpid()), "START_DEV");
      !r.ok()) {
    return fail(r.status());
  }
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
  const auto id = static_cast<uint32_t>(dev_id);
  ublksrv_ctrl_dev_info& info = impl->info;
  {
    auto r =
        impl->control->Run(UBLK_U_CMD_GET_DEV_INFO, id, &info, sizeof(info), 0, "GET_DEV_INFO");
    if (!r.ok()) return r.status();
  }
  if (!(info.flags & UBLK_F_USER_RECOVERY)) {
    return Status::Error(EINVAL, "ublk: device was created without user recovery");
  }
  BLKSNAP_RETURN_IF_ERROR(CheckBackend(*impl->backend, info.max_io_buf_bytes));
  ublk_params params{};
  params.len = sizeof(params);
  params.types = UBLK_PARAM_TYPE_BASIC;
  {
    auto r =
        impl->control->Run(UBLK_U_CMD_GET_PARAMS, id, &params, sizeof(params), 0, "GET_PARAMS");
    if (!r.ok()) return r.status();
  }
  if (params.basic.dev_sectors != impl->backend->size() >> 9 ||
      params.basic.logical_bs_shift != Log2(impl->backend->logical_block_size())) {
    return Status::Error(EINVAL, "ublk: backend size or block size differs from the device's");
  }

  // The kernel accepts START_USER_RECOVERY once the old server's /dev/ublkcN is released and
  // the device is quiesced (its monitor notices a dead server within a few seconds).
  auto deadline = std::chrono::steady_clock::now() + kRecoverTimeout;
  for (;;) {
    auto r = impl->control->Run(UBLK_U_CMD_START_USER_RECOVERY, id, nullptr, 0, 0,
                                "START_USER_RECOVERY");
    if (r.ok()) break;
    if (r.status().errnum() != EBUSY || std::chrono::steady_clock::now() > deadline) {
      return r.status();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  impl->state = Impl::State::kServing;
  auto fd = OpenRetrying(CharPath(dev_id), kNodeTimeout);
  if (!fd.ok()) {
    impl->state = Impl::State::kAbandoned;  // leave the device for another attempt
    return fd.status();
  }
  impl->char_fd = std::move(fd).value();
  if (Status s = impl->StartQueues(); !s.ok()) {
    impl->char_fd.Close();
    impl->state = Impl::State::kAbandoned;
    return s;
  }
  if (auto r = impl->control->Run(UBLK_U_CMD_END_USER_RECOVERY, id, nullptr, 0,
                                  static_cast<uint64_t>(::getpid()), "END_USER_RECOVERY");
      !r.ok()) {
    impl->StopQueues();
    impl->char_fd.Close();
    impl->state = Impl::State::kAbandoned;
    return r.status();
  }
  impl->rdev = StatRdev(BlockPath(dev_id), kNodeTimeout);
  return std::unique_ptr<Device>(new Device(std::move(impl)));
}

Status Device::Stop() {
  Impl& impl = *impl_;
  if (impl.state != Impl::State::kServing) return Status::Ok();
  const auto id = static_cast<uint32_t>(impl.dev_id);
  Status first = impl.control->Run(UBLK_U_CMD_STOP_DEV, id, nullptr, 0, 0, "STOP_DEV").status();
  impl.StopQueues();
  impl.char_fd.Close();
  Status del = impl.control->Run(UBLK_U_CMD_DEL_DEV, id, nullptr, 0, 0, "DEL_DEV").status();
  impl.state = Impl::State::kStopped;
  return first.ok() ? del : first;
}

void Device::Abandon() {
  Impl& impl = *impl_;
  if (impl.state != Impl::State::kServing) return;
  impl.StopQueues();
  impl.char_fd.Close();
  impl.state = Impl::State::kAbandoned;
}

}  // namespace blksnap::ublk
