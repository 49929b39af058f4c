// Budget (see budget.h): lock-free take/give, condition-variable waits for backpressure.
#include "nbd/budget.h"

namespace blksnap::nbd {
namespace {
constexpr auto kWaitSlice = std::chrono::milliseconds(50);
}  // namespace

bool Budget::TryTake(uint64_t n) {
  uint64_t cur = used_.load(std::memory_order_relaxed);
  do {
    if (n > limit_ || cur > limit_ - n) return false;
  } while (!used_.compare_exchange_weak(cur, cur + n, std::memory_order_acq_rel,
                                        std::memory_order_relaxed));
  return true;
}

bool Budget::Take(uint64_t n, const std::function<bool()>& stopped) {
  for (;;) {
    if (TryTake(n)) return true;
    if (!WaitFits(n, stopped)) return false;
  }
}

bool Budget::WaitFits(uint64_t n, const std::function<bool()>& stopped) {
  if (n > limit_) return false;
  auto fits = [&] { return used_.load() <= limit_ - n; };
  if (fits()) return true;
  waiters_.fetch_add(1);
  bool ok = false;
  {
    MutexLock lock(mu_);
    for (;;) {
      if (fits()) {
        ok = true;
        break;
      }
      if (stopped && stopped()) break;
      cv_.WaitUntil(mu_, Clock::now() + kWaitSlice);
    }
  }
  waiters_.fetch_sub(1);
  return ok;
}

void Budget::Give(uint64_t n) {
  used_.fetch_sub(n);
  if (waiters_.load() > 0) {
    MutexLock lock(mu_);
    cv_.SignalAll();
  }
}

}  // namespace blksnap::nbd
