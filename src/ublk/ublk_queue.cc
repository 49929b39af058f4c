// Queue: the ublk data path of one hardware queue (FETCH / COMMIT_AND_FETCH loop, worker pool).
//
// Design notes
// ------------
// One queue thread per hardware queue owns that queue's io_uring, its mmap of the kernel's
// request descriptors and one buffer of max_io_bytes per tag. ublk requires every FETCH/COMMIT
// for a queue to come from the task that first fetched (the "ubq daemon"), so only the queue
// thread talks to the kernel. BlockDevice calls are synchronous, so the queue thread never
// serves a request itself: it hands tags to a small worker pool (a mutex-guarded deque +
// condition variable) and the workers hand (tag, result) back through a mutex-guarded vector
// plus an eventfd that the queue ring always has a pending 8-byte READ on. A request therefore
// costs two thread hops (queue -> worker -> queue) and both directions batch: one CQE batch is
// dispatched under one lock, and a worker writes the eventfd only when no wake-up is already
// pending (notify_pending_), so under load the queue thread drains many completions per
// wake-up and commits them with one io_uring_submit. Alternatives rejected: per-tag threads
// (depth threads per queue, 64+ mostly idle threads, worse on 2 CPUs); workers committing
// directly (the kernel rejects commands from a task other than the queue's daemon before
// UBLK_F_PER_IO_DAEMON, which 6.12 lacks). With no workers (serve_inline) the queue thread
// serves and commits each request itself.
//
// Tag states (queue thread only): kInKernel (FETCH/COMMIT_AND_FETCH pending), kInWorker
// (dispatched, result not yet committed), kIdle (aborted by the kernel or left unserved while
// stopping). The queue thread exits when the kernel has aborted every tag (STOP_DEV cancels
// pending fetches with UBLK_IO_RES_ABORT) or a stop was requested and no tag is in a worker.
// Requests that arrive after a stop request are not served: for Stop() there are none (the
// disk is gone), for Abandon() the kernel re-issues them to the next server
// (UBLK_F_USER_RECOVERY_REISSUE). Closing the ring cancels the remaining FETCHes.
//
// Locking: work_mu_ guards work_, quit_ and idle_workers_; done_mu_ guards done_; neither is
// held across backend I/O or io_uring calls, and they are never held together.
#include "ublk/ublk_queue.h"

#include <liburing.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "ublk/ublk_request.h"
#include "ublk/ublk_ring.h"
#include "ublk/ublk_uapi.h"
#include "util/thread_name.h"

namespace blksnap::ublk {
namespace {

constexpr uint64_t kEventUserData = ~0ull;  // the eventfd READ; tags are < 4096
constexpr size_t kCommitBatch = 8;  // a worker wakes the queue thread after this many results

}  // namespace

void Mapping::Reset() {
  if (addr_ != nullptr) ::munmap(addr_, length_);
  addr_ = nullptr;
  length_ = 0;
}

Status Queue::Start() {
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  const size_t desc_bytes = QueueDescBytes(depth_, page);
  void* descs = ::mmap(nullptr, desc_bytes, PROT_READ, MAP_SHARED | MAP_POPULATE, char_fd_,
                       static_cast<off_t>(QueueDescOffset(q_id_, page)));
  if (descs == MAP_FAILED) return Status::FromErrno("mmap ublk descriptors");
  descs_ = Mapping(descs, desc_bytes);
  const size_t buf_bytes = static_cast<size_t>(depth_) * max_io_bytes_;
  // Plain pages, not MapHugeAligned: with huge-page request buffers a CI run once hung the VM's
  // kernel after a kill -9 of the daemon during fio (tests/daemon_ublk/recover.sh: fio stuck in
  // an RCU read-side section); not reproduced, so not risked. A 6.12 kernel with THP "always"
  // backs this mapping with huge pages anyway when its size is a multiple of 2 MiB.
  void* bufs =
      ::mmap(nullptr, buf_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (bufs == MAP_FAILED) return Status::FromErrno("mmap ublk buffers");
  buffers_ = Mapping(bufs, buf_bytes);
  event_fd_ = Fd(::eventfd(0, EFD_CLOEXEC));
  if (!event_fd_.valid()) return Status::FromErrno("eventfd");

  std::promise<Status> started;
  std::future<Status> started_future = started.get_future();
  thread_ = std::thread([this, &started] { Run(started); });
  Status status = started_future.get();
  if (!status.ok()) Join();
  return status;
}

void Queue::RequestStop() {
  stop_requested_.store(true, std::memory_order_release);
  Wake();
}

void Queue::Join() {
  if (thread_.joinable()) thread_.join();
}

void Queue::Wake() {
  if (event_fd_.valid() && !notify_pending_.exchange(true, std::memory_order_acq_rel)) {
    uint64_t one = 1;
    ssize_t n = ::write(event_fd_.get(), &one, sizeof(one));
    (void)n;  // an eventfd write only fails on counter overflow, which a pending READ prevents
  }
}

bool Queue::QueueIoCommand(io_uring* ring, uint32_t cmd_op, uint16_t tag, int32_t result) {
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

void Queue::ArmEventRead(io_uring* ring) {
  io_uring_sqe* sqe = GetSqe(ring);
  if (sqe == nullptr) return;
  io_uring_prep_read(sqe, event_fd_.get(), &event_value_, sizeof(event_value_), 0);
  sqe->user_data = kEventUserData;
}

void Queue::Run(std::promise<Status>& started) {
  NameThisThread("ublk-q" + std::to_string(q_id_));
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
    MutexLock lock(work_mu_);
    quit_ = true;
  }
  work_cv_.SignalAll();
  for (auto& worker : workers_) worker.join();
  workers_.clear();
  // ~Ring closes the ring; the kernel cancels the FETCHes still pending.
}

void Queue::Loop(io_uring* r) {
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
          std::fprintf(stderr, "ublk queue %u tag %u: %s\n", q_id_, tag, std::strerror(-cqe->res));
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
      Dispatch(ready);
    }

    if (drain) {
      notify_pending_.store(false, std::memory_order_release);
      {
        MutexLock lock(done_mu_);
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

void Queue::Dispatch(std::vector<uint16_t>& ready) {
  size_t wake;
  {
    MutexLock lock(work_mu_);
    work_.insert(work_.end(), ready.begin(), ready.end());
    queued_.store(work_.size(), std::memory_order_release);
    // Wake only as many sleeping workers as there is new work: busy workers pick up the rest
    // before they sleep again.
    wake = std::min<size_t>(ready.size(), idle_workers_);
  }
  for (size_t i = 0; i < wake; ++i) work_cv_.Signal();
  ready.clear();
}

int Queue::Serve(uint16_t tag) {
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

void Queue::WorkerLoop() {
  NameThisThread("ublk-w" + std::to_string(q_id_));
  for (;;) {
    uint16_t tag;
    {
      MutexLock lock(work_mu_);
      if (!quit_ && work_.empty()) {
        ++idle_workers_;
        while (!quit_ && work_.empty()) work_cv_.Wait(work_mu_);
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
      MutexLock lock(done_mu_);
      done_.emplace_back(tag, result);
      done_count = done_.size();
    }
    // Wake the queue thread when this worker is about to go idle or a batch has built up;
    // otherwise keep serving and let the completions commit together (fewer wake-ups of the
    // queue thread and of the submitter on the other side of the ring).
    if (done_count >= kCommitBatch || queued_.load(std::memory_order_acquire) == 0) Wake();
  }
}

}  // namespace blksnap::ublk
