// Budget: a counted resource shared by threads (payload bytes in flight, worker threads).
//
// The NBD server bounds what a client can make it hold with budgets: bytes of request and reply
// payload in flight per connection and across the server, and worker threads across the
// server. TryTake and Give are lock-free (one atomic read-modify-write each), so the data path
// takes no lock while a budget has room. Take and WaitFits wait (backpressure) until the
// amount fits or a stop condition holds; waiters sleep on a CondVar that Give signals only
// when someone waits. No wake-up is lost: a waiter publishes itself in waiters_ before it
// re-checks under mu_, and Give reads waiters_ after returning its amount (both seq_cst).
// Waits are sliced (50 ms) so a stop condition is seen promptly without anyone signalling.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>

#include "util/mutex.h"

namespace blksnap::nbd {

class Budget {
 public:
  using Clock = std::chrono::steady_clock;

  explicit Budget(uint64_t limit) : limit_(limit) {}
  Budget(const Budget&) = delete;
  Budget& operator=(const Budget&) = delete;

  uint64_t limit() const { return limit_; }
  uint64_t used() const { return used_.load(std::memory_order_relaxed); }

  // Takes n if it fits now.
  bool TryTake(uint64_t n);
  // Takes n, waiting while it does not fit. False (nothing taken) when n exceeds the limit or
  // once stopped() is true (asked every wait slice).
  bool Take(uint64_t n, const std::function<bool()>& stopped) EXCLUDES(mu_);
  // Waits until n would fit, without taking it (for callers that take from several budgets
  // all or nothing). False when n exceeds the limit or once stopped().
  bool WaitFits(uint64_t n, const std::function<bool()>& stopped) EXCLUDES(mu_);
  // Returns n taken earlier.
  void Give(uint64_t n) EXCLUDES(mu_);

 private:
  const uint64_t limit_;
  std::atomic<uint64_t> used_{0};
  std::atomic<int> waiters_{0};
  // Guards no field (the counters are atomic): waiters re-check and sleep under it, and Give
  // signals under it, so a wake-up cannot fall between a waiter's check and its sleep.
  Mutex mu_;
  CondVar cv_;
};

}  // namespace blksnap::nbd
