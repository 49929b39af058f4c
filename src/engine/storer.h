// ChunkStorer: the queue of preserved chunks waiting for the difference storage, its
// throttling, and the storer threads that drain it (the write half of blksnap's diff_area.c).
//
// A copy-on-write first takes a slot (AcquireSlot: waits while chunk_maximum_in_queue chunks
// are in flight, i.e. being copied, queued or being stored: throttling), copies the chunk, then
// either gives the slot back (ReleaseSlot: a zero chunk, an error, or a durable snapshot's
// original write that stored the chunk itself) or queues the chunk (Enqueue). Storer threads pop
// chunks and call the store function, each one synchronous write at a time, then release the slot.
// One storer starts with the snapshot; more start on demand, up to chunk_storer_threads, only while
// the queue is longer than the storers awake (so a fast storage keeps one busy and the rest asleep,
// a slow one gets many writes in flight).
//
// States: running --Fail()--> failed (throttled copies are released; queued chunks are still
// stored or failed by the store function) --Stop()--> stopped (threads joined; queued chunks
// are dropped; AcquireSlot refuses). Stop() may come from any state.
//
// Locking: mu_ guards the queue and counters. Three condition variables so that no wake-up is a
// herd: storers wait for work (work_cv_), throttled copies for a free slot (room_cv_, one per
// slot freed), WaitIdle() for an empty queue (idle_cv_). The store function runs without mu_.
// Cost per chunk: one lock to take the slot, one to queue, one to pop, one to release, and one
// call through store_ per stored chunk (beside a chunk write); nothing per I/O.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <thread>
#include <utility>
#include <vector>

#include "blksnap/config.h"
#include "engine/chunk.h"
#include "util/mutex.h"

namespace blksnap {

class ChunkStorer {
 public:
  using StoreFn = std::function<void(uint64_t index, Chunk* chunk)>;

  // Starts the first storer thread.
  ChunkStorer(const Config& config, StoreFn store);
  ~ChunkStorer() { Stop(); }
  ChunkStorer(const ChunkStorer&) = delete;
  ChunkStorer& operator=(const ChunkStorer&) = delete;

  // Waits for room in the queue; false (no slot taken) once failed or stopped.
  bool AcquireSlot() EXCLUDES(mu_);
  // Gives a slot back without queueing (zero chunk, copy error).
  void ReleaseSlot() EXCLUDES(mu_);
  // Queues a copied chunk in the slot taken for it; a storer stores it and frees the slot.
  void Enqueue(uint64_t index, Chunk* chunk) EXCLUDES(mu_);
  // Releases throttled copies for good (the snapshot is corrupted).
  void Fail() EXCLUDES(mu_);
  // Stops and joins the storers; queued chunks are not stored. True the first time.
  bool Stop() EXCLUDES(mu_);
  // Blocks until no chunk is in flight (or stopped).
  void WaitIdle() EXCLUDES(mu_);
  // Chunks in flight: being copied, queued or being stored.
  uint64_t in_queue() const EXCLUDES(mu_);

 private:
  void Loop() EXCLUDES(mu_);
  void WakeStorerIfBehind() REQUIRES(mu_);  // after queueing a chunk

  const uint64_t max_in_queue_;  // chunk_maximum_in_queue
  const size_t storer_limit_;    // chunk_storer_threads
  const StoreFn store_;

  mutable Mutex mu_;
  CondVar work_cv_;
  CondVar room_cv_;
  CondVar idle_cv_;
  std::deque<std::pair<uint64_t, Chunk*>> queue_ GUARDED_BY(mu_);
  uint64_t in_queue_ GUARDED_BY(mu_) = 0;  // includes being copied and being stored
  bool failed_ GUARDED_BY(mu_) = false;
  bool stop_ GUARDED_BY(mu_) = false;
  size_t storers_waiting_ GUARDED_BY(mu_) = 0;        // storers blocked on work_cv_
  size_t wakeups_pending_ GUARDED_BY(mu_) = 0;        // notified, not yet awake
  std::vector<std::thread> storers_ GUARDED_BY(mu_);  // started on demand
};

}  // namespace blksnap
