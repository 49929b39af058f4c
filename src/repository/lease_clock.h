// LeaseClock: whether a lease kept alive by periodic renewals stayed alive (the RADOS and S3
// leases; a local flock never lapses). The holder calls Renewed() after each successful renewal;
// Lapsed() turns true, for good, once more than `limit` passed between two successful renewals
// (or since the last one, checked at the call): the store may have let the lease expire then,
// and another holder of the other kind (gc beside a backup) may have come and gone. The limit is
// half the lease's duration, so a lapse is reported before the store could expire the lease.
// Thread-safe.
#pragma once

#include <chrono>

#include "util/mutex.h"
#include "util/thread_annotations.h"

namespace blksnap::repo {

class LeaseClock {
 public:
  explicit LeaseClock(std::chrono::milliseconds limit)
      : limit_(limit), last_(std::chrono::steady_clock::now()) {}

  void Renewed() EXCLUDES(mu_) {
    MutexLock lock(mu_);
    const auto now = std::chrono::steady_clock::now();
    if (now - last_ > limit_) lapsed_ = true;
    last_ = now;
  }
  bool Lapsed() const EXCLUDES(mu_) {
    MutexLock lock(mu_);
    if (std::chrono::steady_clock::now() - last_ > limit_) lapsed_ = true;
    return lapsed_;
  }

 private:
  const std::chrono::milliseconds limit_;
  mutable Mutex mu_;
  std::chrono::steady_clock::time_point last_ GUARDED_BY(mu_);
  mutable bool lapsed_ GUARDED_BY(mu_) = false;
};

}  // namespace blksnap::repo
