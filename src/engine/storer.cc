// ChunkStorer: see storer.h for the queue, the throttling and the on-demand storer threads.
#include "engine/storer.h"

#include <algorithm>
#include <system_error>

#include "util/thread_name.h"

namespace blksnap {

ChunkStorer::ChunkStorer(const Config& config, StoreFn store)
    : max_in_queue_(config.chunk_maximum_in_queue),
      storer_limit_(std::max(1u, config.chunk_storer_threads)),
      store_(std::move(store)) {
  MutexLock lock(mu_);
  storers_.emplace_back([this] { Loop(); });  // the rest start on demand
}

bool ChunkStorer::AcquireSlot() {
  MutexLock lock(mu_);
  while (in_queue_ >= max_in_queue_ && !stop_ && !failed_) room_cv_.Wait(mu_);
  if (stop_ || failed_) return false;
  ++in_queue_;
  return true;
}

void ChunkStorer::ReleaseSlot() {
  MutexLock lock(mu_);
  --in_queue_;
  room_cv_.Signal();
  if (in_queue_ == 0) idle_cv_.SignalAll();
}

void ChunkStorer::Enqueue(uint64_t index, Chunk* chunk) {
  MutexLock lock(mu_);
  queue_.emplace_back(index, chunk);
  WakeStorerIfBehind();
}

void ChunkStorer::Fail() {
  MutexLock lock(mu_);
  failed_ = true;
  room_cv_.SignalAll();  // release throttled writers
}

bool ChunkStorer::Stop() {
  std::vector<std::thread> storers;
  {
    MutexLock lock(mu_);
    if (stop_ && storers_.empty()) return false;
    stop_ = true;  // from now on no storer is started
    storers.swap(storers_);
    work_cv_.SignalAll();
    room_cv_.SignalAll();
    idle_cv_.SignalAll();
  }
  for (std::thread& storer : storers) storer.join();
  return true;
}

void ChunkStorer::WaitIdle() {
  MutexLock lock(mu_);
  while (in_queue_ != 0 && !stop_) idle_cv_.Wait(mu_);
}

uint64_t ChunkStorer::in_queue() const {
  MutexLock lock(mu_);
  return in_queue_;
}

void ChunkStorer::WakeStorerIfBehind() {
  // Storers not waiting will look at the queue before they wait again; those notified will
  // wake. Wake one more only while the queue is longer than they are many: a fast storage keeps
  // one storer busy and the rest asleep, a slow one wakes them all. Storers are started here,
  // on demand, up to storer_limit_ (one from the start): a take starts one thread, not 16.
  const size_t awake = storers_.size() - storers_waiting_ + wakeups_pending_;
  if (queue_.size() <= awake || stop_) return;
  if (storers_waiting_ > wakeups_pending_) {
    ++wakeups_pending_;
    work_cv_.Signal();
  } else if (storers_.size() < storer_limit_) {
    try {
      storers_.emplace_back([this] { Loop(); });
    } catch (const std::system_error&) {
      // No thread to spare: the storers already running drain the queue.
    }
  }
}

void ChunkStorer::Loop() {
  NameThisThread("storer");
  for (;;) {
    std::pair<uint64_t, Chunk*> item;
    {
      MutexLock lock(mu_);
      while (!stop_ && queue_.empty()) {
        ++storers_waiting_;
        work_cv_.Wait(mu_);
        --storers_waiting_;
        if (wakeups_pending_ > 0) --wakeups_pending_;  // a spurious wake-up only over-wakes later
      }
      if (stop_) return;
      item = queue_.front();
      queue_.pop_front();
    }
    store_(item.first, item.second);
    ReleaseSlot();
  }
}

}  // namespace blksnap
