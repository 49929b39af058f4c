// Ring: an io_uring instance, and the two helpers both ublk channels use with it.
//
// Shared by the control channel (ublk_control.cc: a small SQE128 ring for /dev/ublk-control)
// and the queue threads (ublk_queue.cc: one ring per hardware queue on /dev/ublkcN). A Ring is
// used by one thread at a time; it is not movable because liburing's struct points into its
// own mappings and queue threads keep a pointer to it.
#pragma once

#include <liburing.h>

#include <cerrno>

#include "blksnap/status.h"

namespace blksnap::ublk {

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
inline int SubmitAndWait(io_uring* ring) {
  for (;;) {
    int ret = io_uring_submit_and_wait(ring, 1);
    if (ret != -EINTR) return ret;
  }
}

// A free SQE, submitting what is queued first if the ring is full; null if still none.
inline io_uring_sqe* GetSqe(io_uring* ring) {
  io_uring_sqe* sqe = io_uring_get_sqe(ring);
  if (sqe == nullptr) {
    io_uring_submit(ring);
    sqe = io_uring_get_sqe(ring);
  }
  return sqe;
}

}  // namespace blksnap::ublk
