// Queue: one ublk hardware queue served from a BlockDevice: its thread, io_uring, request
// descriptors, data buffers and worker pool.
//
//   Queue queue(backend, char_fd, q_id, depth, max_io_bytes, workers);
//   BLKSNAP_RETURN_IF_ERROR(queue.Start());  // every tag has a FETCH_REQ queued
//   ...
//   queue.RequestStop();                     // from any thread
//   queue.Join();                            // or let it go out of scope
//
// Thread safety: Start/Join by the owner; RequestStop from any thread. The backend is called
// from the worker threads (or the queue thread with workers == 0) concurrently; it must
// outlive the Queue. Design notes in ublk_queue.cc.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <future>
#include <thread>
#include <utility>
#include <vector>

#include "blksnap/block_device.h"
#include "blksnap/status.h"
#include "util/fd.h"
#include "util/mutex.h"

struct io_uring;

namespace blksnap::ublk {

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
  void Reset();

 private:
  void* addr_ = nullptr;
  size_t length_ = 0;
};

class Queue {
 public:
  // workers: threads that call the backend; 0 serves every request on the queue thread.
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
  Status Start();

  // Asks the queue thread to finish: requests already in workers complete and are committed,
  // new ones are left to the kernel. Safe to call more than once, from any thread.
  void RequestStop();

  void Join();

 private:
  enum class TagState : uint8_t { kIdle, kInKernel, kInWorker };

  uint8_t* Buffer(uint16_t tag) const {
    return buffers_.data() + static_cast<size_t>(tag) * max_io_bytes_;
  }
  void Wake();
  bool QueueIoCommand(io_uring* ring, uint32_t cmd_op, uint16_t tag, int32_t result);
  void ArmEventRead(io_uring* ring);
  void Run(std::promise<Status>& started);
  void Loop(io_uring* ring);
  // Hands tags to the workers (ready is left empty).
  void Dispatch(std::vector<uint16_t>& ready) EXCLUDES(work_mu_);
  int Serve(uint16_t tag);
  void WorkerLoop() EXCLUDES(work_mu_, done_mu_);

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

  Mutex work_mu_;
  CondVar work_cv_;  // signalled when work_ grows or quit_ is set
  std::deque<uint16_t> work_ GUARDED_BY(work_mu_);
  bool quit_ GUARDED_BY(work_mu_) = false;
  size_t idle_workers_ GUARDED_BY(work_mu_) = 0;  // workers waiting on work_cv_
  std::atomic<size_t> queued_{0};  // work_.size(), written under work_mu_, read without it

  Mutex done_mu_;
  std::vector<std::pair<uint16_t, int>> done_ GUARDED_BY(done_mu_);
};

}  // namespace blksnap::ublk
