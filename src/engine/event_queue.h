// EventQueue: a snapshot's events (corrupted, no_space), waited on with a timeout.
// Thread-safe; Close() wakes every waiter with ENODEV.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>

#include "blksnap/engine.h"

namespace blksnap {

class EventQueue {
 public:
  void Push(SnapshotEvent event) {
    std::lock_guard lock(mu_);
    if (closed_) return;
    events_.push_back(std::move(event));
    cv_.notify_one();
  }

  Result<SnapshotEvent> Wait(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    if (!cv_.wait_for(lock, timeout, [&] { return closed_ || !events_.empty(); }))
      return Status::Error(ETIMEDOUT, "no event within the timeout");
    if (!events_.empty()) {
      SnapshotEvent event = std::move(events_.front());
      events_.pop_front();
      return event;
    }
    return Status::Error(ENODEV, "snapshot destroyed");
  }

  void Close() {
    std::lock_guard lock(mu_);
    closed_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<SnapshotEvent> events_;  // guarded by mu_
  bool closed_ = false;               // guarded by mu_
};

}  // namespace blksnap
