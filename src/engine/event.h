// EventLog: one sequenced log of a snapshot's events (corrupted, no_space) that any number of
// readers wait on (Snapshot::WaitEvent, events(), last_event_seq()).
//
// Every event gets the next sequence number (1, 2, 3, ...) and the wall-clock time it was
// pushed. The log keeps the newest kMaxKept records; older ones are dropped. Readers never
// consume: each remembers the last seq it saw and asks for the first record after it, so many
// readers (the daemon's clients, tests, a watcher) all see every event still kept.
//
// States: open --Close()--> closed. A closed log accepts no more events; waiters are woken and,
// once no record after their `after` is left, get ENODEV.
//
// Locking: mu_ guards everything; waiters sleep on cv_, which Push() and Close() signal to all.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <vector>

#include "blksnap/engine.h"
#include "util/mutex.h"

namespace blksnap {

class EventLog {
 public:
  static constexpr size_t kMaxKept = 64;

  // Appends the event with the next seq and the current time; ignored once closed.
  void Push(SnapshotEvent event) EXCLUDES(mu_);
  // The first kept record with seq > after (if records after `after` were dropped, the oldest
  // kept one). ETIMEDOUT if none arrives within timeout; ENODEV once closed with none left.
  Result<SnapshotEventRecord> Wait(uint64_t after, std::chrono::milliseconds timeout) EXCLUDES(mu_);
  // The kept records, oldest first.
  std::vector<SnapshotEventRecord> records() const EXCLUDES(mu_);
  uint64_t last_seq() const EXCLUDES(mu_);
  // Wakes every waiter; later Push() calls are ignored.
  void Close() EXCLUDES(mu_);

 private:
  // The first kept record with seq > after, or null.
  const SnapshotEventRecord* FindAfter(uint64_t after) const REQUIRES(mu_);

  mutable Mutex mu_;
  CondVar cv_;
  std::deque<SnapshotEventRecord> records_ GUARDED_BY(mu_);  // at most kMaxKept, by seq
  uint64_t last_seq_ GUARDED_BY(mu_) = 0;
  bool closed_ GUARDED_BY(mu_) = false;
};

}  // namespace blksnap
