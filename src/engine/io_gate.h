// IoGate: holds writers out of a device for the instant of a snapshot switch.
//
// Writers bracket each request with Enter()/Exit(); Close() stops new entries and waits until
// in-flight ones have left; Open() lets them in again. Unlike pthread rwlocks (which prefer
// readers and can starve the taker), a closed gate admits nobody, so Close() always finishes
// once in-flight requests do. Shutdown() closes for good: Enter() then returns false.
//
// The fast path is one atomic increment and one load (Dekker-style handshake with Close(), both
// sequentially consistent); the mutex is touched only while the gate is closed.
//
// Close() first waits for in-flight requests by yielding the CPU for a short while before it
// sleeps: they are usually page-cache copies that finish within microseconds, and on a busy
// machine a sleep and wake-up of the taker costs milliseconds while writers are held.
#pragma once

#include <atomic>
#include <cstdint>
#include <thread>

#include "util/mutex.h"

namespace blksnap {

class IoGate {
 public:
  // Returns false if the gate is shut down (the caller must not proceed and must not Exit()).
  bool Enter() EXCLUDES(mu_) {
    for (;;) {
      inflight_.fetch_add(1);
      if (!closed_.load()) return true;
      Exit();
      MutexLock lock(mu_);
      while (closed_.load() && !shutdown_) cv_.Wait(mu_);
      if (shutdown_) return false;
    }
  }

  // True between Close() and Open() (a hint: another thread may change it right after).
  bool closed() const { return closed_.load(); }

  void Exit() EXCLUDES(mu_) {
    if (inflight_.fetch_sub(1) == 1 && closed_.load()) {
      MutexLock lock(mu_);
      cv_.SignalAll();
    }
  }

  // Waits for in-flight requests to leave; new ones wait in Enter() until Open().
  void Close() EXCLUDES(mu_) {
    {
      MutexLock lock(mu_);
      closed_.store(true);
    }
    for (int i = 0; i < kYieldsBeforeSleep && inflight_.load() != 0; ++i) {
      std::this_thread::yield();
    }
    MutexLock lock(mu_);
    while (inflight_.load() != 0) cv_.Wait(mu_);
  }

  void Open() EXCLUDES(mu_) {
    MutexLock lock(mu_);
    if (shutdown_) return;
    closed_.store(false);
    cv_.SignalAll();
  }

  // Closes for good: waits for in-flight requests; later Enter() calls return false.
  void Shutdown() EXCLUDES(mu_) {
    MutexLock lock(mu_);
    shutdown_ = true;
    closed_.store(true);
    cv_.SignalAll();
    while (inflight_.load() != 0) cv_.Wait(mu_);
  }

 private:
  static constexpr int kYieldsBeforeSleep = 200;  // ~0.1-1 ms of yielding, then sleep
  std::atomic<int64_t> inflight_{0};
  std::atomic<bool> closed_{false};  // written under mu_, read lock-free by Enter()
  Mutex mu_;
  CondVar cv_;
  bool shutdown_ GUARDED_BY(mu_) = false;
};

// Enter()s on construction, Exit()s on destruction if entered.
class GateGuard {
 public:
  explicit GateGuard(IoGate& gate) : gate_(gate), entered_(gate.Enter()) {}
  ~GateGuard() {
    if (entered_) gate_.Exit();
  }
  GateGuard(const GateGuard&) = delete;
  GateGuard& operator=(const GateGuard&) = delete;
  bool entered() const { return entered_; }

 private:
  IoGate& gate_;
  bool entered_;
};

}  // namespace blksnap
