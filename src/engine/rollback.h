// Rollback: merges a snapshot's image back onto its device (issue 18; `lvconvert --merge`).
//
// The chunks to merge are those where the snapshot's image may differ from the original: every
// chunk the snapshot's area or a newer area of the chain holds a copy of (area_chain.h), found
// with the device's writers held. They are listed in a journal (rollback_journal_format.h) before
// the device serves anything from the rollback. Then:
//
//   * a read of the device: a chunk still listed is read from the snapshot's image, the others
//     from the original (which holds the snapshot's data once merged);
//   * a write of the device to a listed chunk merges that chunk first and waits until the
//     journal no longer lists it (so a resumed merge never writes it again over the user's data);
//   * background workers merge runs of listed chunks: read the image, write the original through
//     the tracker (`write`: CBT marks the chunk, a newer snapshot preserves its copy first), and
//     every batch (64 MiB, or 250 ms) is committed: the original flushed, then the journal's
//     bits cleared and synced.
//
// Chunk states (a map for the listed chunks only; `listed_` is a bitmap read without a lock):
//   listed --claim--> merging --written--> merged --commit--> done (unlisted)
// A failure (an image read or an original write) stops the workers and leaves the chunk listed;
// the rollback is kFailed, reads of listed chunks go on trying the image, writes to them fail.
// Stop() (a clean stop) joins the workers and commits what they merged; the rest stays listed in
// the journal for the next run.
//
// Locking: mu_ guards the chunk states and counters; commit_mu_ serialises commits (the journal's
// bitmap copy is guarded by it). No lock is held across I/O except commit_mu_.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "blksnap/engine.h"
#include "engine/chunk.h"
#include "engine/diff_area.h"
#include "engine/rollback_journal_format.h"
#include "util/mutex.h"

namespace blksnap {

class Rollback {
 public:
  struct Params {
    Uuid snapshot;
    std::string device;
    std::shared_ptr<DiffArea> area;  // the snapshot's area on the device: the target
    std::shared_ptr<BlockDevice> original;
    std::shared_ptr<BlockDevice> journal;
    // Writes the original as a write through the tracker would, without the rollback's own
    // check (CBT mark, copy-on-write for the other snapshots).
    std::function<Status(uint64_t offset, std::span<const uint8_t> data)> write;
    // Runs once when every chunk is merged (the journal is then removed by the caller).
    std::function<void()> on_done;
    uint32_t merge_delay_us = 0;
    int threads = 4;
  };

  // A new journal listing `chunks` (sorted) is written and synced.
  static Result<std::unique_ptr<Rollback>> Start(Params params,
                                                 const std::vector<uint64_t>& chunks);
  // The journal is read back; the chunks it lists are merged.
  static Result<std::unique_ptr<Rollback>> Resume(Params params);
  ~Rollback();
  Rollback(const Rollback&) = delete;
  Rollback& operator=(const Rollback&) = delete;

  // Starts the background workers (after the rollback is installed in the tracker).
  void Run();
  // The device's read while this rollback is installed.
  Status Read(uint64_t offset, std::span<uint8_t> buf);
  // Before a write, trim or write-zeroes of [offset, offset + length): each listed chunk is
  // merged and committed first. The caller is outside the tracker's gate.
  Status BeforeWrite(uint64_t offset, uint64_t length);
  // Joins the workers and commits what they merged; idempotent.
  void Stop();
  RollbackProgress progress() const;
  bool active() const { return !done_.load(); }  // not every chunk merged yet
  const Uuid& snapshot() const { return params_.snapshot; }

 private:
  enum class State : uint8_t { kListed, kMerging, kMerged };

  Rollback(Params params, RollbackJournalHeader header);
  bool Listed(uint64_t index) const {
    return (listed_[index / 64].load(std::memory_order_acquire) >> (index % 64)) & 1;
  }
  void Unlist(uint64_t index) {
    listed_[index / 64].fetch_and(~(1ull << (index % 64)), std::memory_order_acq_rel);
  }
  void List(uint64_t index);  // at start or resume only
  void Worker();
  // Claims a run of consecutive listed chunks from the cursor; false when none is left.
  bool ClaimRun(uint64_t* first, uint64_t* count) EXCLUDES(mu_);
  Status MergeRange(uint64_t first, uint64_t count);
  void FinishRange(uint64_t first, uint64_t count, const Status& status) EXCLUDES(mu_);
  // Flushes the original, clears the merged chunks' bits in the journal and syncs it.
  Status Commit() EXCLUDES(commit_mu_, mu_);
  void Fail(const Status& status) EXCLUDES(mu_);

  const Params params_;
  const RollbackJournalHeader header_;
  const ChunkGeometry geometry_;
  std::unique_ptr<std::atomic<uint64_t>[]> listed_;
  std::atomic<bool> done_{false};
  std::atomic<bool> stopping_{false};

  mutable Mutex mu_;
  CondVar cv_;  // a chunk left kMerging, or a commit finished
  std::unordered_map<uint64_t, State> states_ GUARDED_BY(mu_);  // listed chunks only
  std::vector<uint64_t> order_ GUARDED_BY(mu_);                 // listed chunks, sorted
  size_t cursor_ GUARDED_BY(mu_) = 0;
  std::vector<uint64_t> merged_ GUARDED_BY(mu_);  // merged, not committed yet
  uint64_t total_ GUARDED_BY(mu_) = 0;
  uint64_t committed_ GUARDED_BY(mu_) = 0;
  std::chrono::steady_clock::time_point last_commit_ GUARDED_BY(mu_) =
      std::chrono::steady_clock::now();
  Status failure_ GUARDED_BY(mu_);
  bool stopped_ GUARDED_BY(mu_) = false;
  int workers_left_ GUARDED_BY(mu_) = 0;

  Mutex commit_mu_ ACQUIRED_BEFORE(mu_);
  std::vector<uint8_t> bitmap_ GUARDED_BY(commit_mu_);  // the journal's bitmap as on disk

  std::vector<std::thread> threads_;
};

class Env;
class SnapshotImpl;
class TrackerImpl;

// The engine's half (rollback_start.cc; Engine::Rollback holds its take mutex): opens or makes
// the journal, finds the snapshot (`find`: null for an unknown id; with resume and a nil id, the
// one the journal names), checks it can be rolled back onto `tracker`, lists the chunks to merge
// with the tracker's writers held (or reads them from the journal), installs and starts it.
Status RollbackDevice(const std::shared_ptr<TrackerImpl>& tracker, const Uuid& id,
                      const RollbackOptions& options, Env* env,
                      const std::function<std::shared_ptr<SnapshotImpl>(const Uuid&)>& find);
// EBUSY while `tracker` has a rollback not done (to snapshot `*id`: only while it merges, so a
// failed or stopped one's target may go; with id null, for a take, whatever its state: a take
// must not see a half-merged original).
Status CheckNotRollingBack(const TrackerImpl& tracker, const Uuid* id);

}  // namespace blksnap
