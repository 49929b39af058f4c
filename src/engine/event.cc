// EventLog: see event.h for the sequencing, the cap and the locking.
#include "engine/event.h"

#include <utility>

namespace blksnap {

const char* ToString(SnapshotEvent::Type type) {
  return type == SnapshotEvent::Type::kCorrupted ? "corrupted" : "no_space";
}

void EventLog::Push(SnapshotEvent event) {
  MutexLock lock(mu_);
  if (closed_) return;
  records_.push_back({++last_seq_, std::move(event), std::chrono::system_clock::now()});
  while (records_.size() > kMaxKept) records_.pop_front();
  cv_.SignalAll();
}

const SnapshotEventRecord* EventLog::FindAfter(uint64_t after) const {
  // Records are consecutive: the first one after `after` is found by arithmetic.
  if (records_.empty() || after >= last_seq_) return nullptr;
  const uint64_t first = records_.front().seq;
  return after < first ? &records_.front() : &records_[after - first + 1];
}

Result<SnapshotEventRecord> EventLog::Wait(uint64_t after, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  MutexLock lock(mu_);
  for (;;) {
    if (const SnapshotEventRecord* record = FindAfter(after)) return *record;
    if (closed_) return Status::Error(ENODEV, "snapshot destroyed");
    if (!cv_.WaitUntil(mu_, deadline) && !FindAfter(after) && !closed_) {
      return Status::Error(ETIMEDOUT, "no event within the timeout");
    }
  }
}

std::vector<SnapshotEventRecord> EventLog::records() const {
  MutexLock lock(mu_);
  return {records_.begin(), records_.end()};
}

uint64_t EventLog::last_seq() const {
  MutexLock lock(mu_);
  return last_seq_;
}

void EventLog::Close() {
  MutexLock lock(mu_);
  closed_ = true;
  cv_.SignalAll();
}

}  // namespace blksnap
