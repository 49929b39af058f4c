// SnapshotImpl: a snapshot of one or more tracked devices (blksnap's snapshot.c); the image of
// each device is a SnapImage (snap_image.h), its events an EventLog (event.h).
//
// States: created --Take--> taken --(a device's copy fails)--> corrupted; any --Destroy-->
// destroyed. The engine drives the transitions; a snapshot only records them, keeps its
// members (tracker, DiffArea, image) and its event log.
//
// Locking: mu_ guards state_, members_ and the storage. Corruption callbacks come from DiffArea
// threads and take mu_ briefly; they never call back into a DiffArea.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "blksnap/engine.h"
#include "engine/diff_area.h"
#include "engine/diff_storage.h"
#include "engine/event.h"
#include "engine/snap_image.h"
#include "engine/tracker.h"
#include "util/mutex.h"

namespace blksnap {

class SnapshotImpl final : public Snapshot, public std::enable_shared_from_this<SnapshotImpl> {
 public:
  struct Member {
    std::shared_ptr<TrackerImpl> tracker;
    std::shared_ptr<DiffArea> area;
    std::shared_ptr<SnapImage> image;
    int errnum = 0;
  };

  SnapshotImpl(Uuid id, std::shared_ptr<DiffStorage> storage, std::shared_ptr<EventLog> events,
               SnapshotDurability durability, std::string recovered_from = "");

  const Uuid& id() const override { return id_; }
  SnapshotState state() const override;
  StorageInfo storage_info() const override;
  Status SetStorageLimit(uint64_t limit) override EXCLUDES(mu_);
  std::vector<SnapshotDeviceInfo> devices() const override;
  SnapshotDurability durability() const override { return durability_; }
  uint64_t taken_at() const override { return taken_at_.load(); }
  void set_taken_at(uint64_t ns) { taken_at_.store(ns); }
  std::string recovered_from() const override { return recovered_from_; }
  std::shared_ptr<BlockDevice> image(const std::string& device) const override;
  Result<SnapshotEventRecord> WaitEvent(uint64_t after,
                                        std::chrono::milliseconds timeout) override {
    return events_->Wait(after, timeout);
  }
  std::vector<SnapshotEventRecord> events() const override { return events_->records(); }
  uint64_t last_event_seq() const override { return events_->last_seq(); }

  // Engine internals (called with the engine's take mutex held).
  std::shared_ptr<DiffStorage> storage() const EXCLUDES(mu_) {
    MutexLock lock(mu_);
    return storage_;
  }
  std::vector<Member> members() const;
  void AddMember(std::shared_ptr<TrackerImpl> tracker);
  bool HasMember(const TrackerImpl* tracker) const;
  void SetTaken(std::vector<Member> members);
  // A device's copy-on-write failed: record it, mark corrupted, raise the event.
  void OnCorrupt(const std::string& device, int errnum);
  // Returns the members; the snapshot is destroyed (state, events closed, storage released).
  std::vector<Member> MarkDestroyed();
  // After the members' areas are shut down: closes the storage (a temporary file vanishes).
  void ReleaseStorage();

 private:
  const Uuid id_;
  const std::shared_ptr<EventLog> events_;
  const SnapshotDurability durability_;
  const std::string recovered_from_;
  std::atomic<uint64_t> taken_at_{0};

  mutable Mutex mu_;
  // Released by ReleaseStorage (after the areas are shut down).
  std::shared_ptr<DiffStorage> storage_ GUARDED_BY(mu_);
  SnapshotState state_ GUARDED_BY(mu_) = SnapshotState::kCreated;
  std::vector<Member> members_ GUARDED_BY(mu_);
  StorageInfo last_storage_info_ GUARDED_BY(mu_);  // kept after destroy
};

}  // namespace blksnap
