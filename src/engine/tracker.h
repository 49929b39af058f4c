// TrackerImpl: the layer over an original device that records changes and drives copy-on-write
// (blksnap's tracker.c).
//
// Writes, trims and write-zeroes enter the IoGate, mark the CBT write map, ask the newest
// DiffArea (if a snapshot is taken) to preserve the chunks they touch, then reach the original;
// if that area is corrupted, the next older one preserves instead (area_chain.h). Reads go
// straight to the original. The list of areas writers use changes only while the gate is
// closed (take, destroy), so a writer inside the gate reads it without a lock. The device's
// AreaChain (the same areas, for image reads) lives as long as the tracker.
//
// A device may be in several taken snapshots (at most kMaxSnapshotsPerDevice) and in at most
// one snapshot not yet taken.
#pragma once

#include <atomic>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "blksnap/engine.h"
#include "engine/area_chain.h"
#include "engine/cbt_map.h"
#include "engine/diff_area.h"
#include "engine/io_gate.h"
#include "engine/rollback.h"
#include "util/mutex.h"

namespace blksnap {

class SnapshotImpl;

class TrackerImpl final : public Tracker {
 public:
  // cbt: the device's change tracking, opened by the engine (CbtMap::Open).
  TrackerImpl(std::string name, std::shared_ptr<BlockDevice> original, const AttachOptions& options,
              std::unique_ptr<CbtMap> cbt);

  uint64_t size() const override { return original_->size(); }
  uint32_t logical_block_size() const override { return original_->logical_block_size(); }
  uint32_t physical_block_size() const override { return original_->physical_block_size(); }
  DeviceCapabilities capabilities() const override;
  Status Read(uint64_t offset, std::span<uint8_t> buf) override;
  Status Write(uint64_t offset, std::span<const uint8_t> buf, uint32_t flags) override;
  Status Flush() override;
  Status Trim(uint64_t offset, uint64_t length) override;
  Status WriteZeroes(uint64_t offset, uint64_t length, uint32_t flags) override;
  Result<std::vector<Extent>> BlockStatus(uint64_t offset, uint64_t length) override;

  const std::string& name() const override { return name_; }
  const std::string& path() const override { return path_; }
  CbtInfo cbt_info() const override { return cbt_->info(); }
  Status ReadCbtMap(uint64_t first_block, std::span<uint8_t> out) const override {
    return cbt_->ReadMap(first_block, out);
  }
  Result<std::vector<ByteExtent>> ChangedExtents(
      uint8_t since_snap, const std::optional<Uuid>& generation) const override {
    return cbt_->ChangedExtents(since_snap, generation);
  }
  Status MarkDirty(uint64_t offset, uint64_t length) override;
  std::optional<RollbackProgress> rollback() const override;
  std::shared_ptr<Snapshot> snapshot() const override;
  std::vector<std::shared_ptr<Snapshot>> snapshots() const override;
  void AddAlias(uint64_t rdev) override;
  void RemoveAlias(uint64_t rdev) override;

  // Engine internals.
  IoGate& gate() { return gate_; }
  CbtMap& cbt() { return *cbt_; }
  const std::shared_ptr<BlockDevice>& original() const { return original_; }
  const std::shared_ptr<AreaChain>& chain() const { return chain_; }
  // The areas writers preserve into, oldest first; only with the gate closed.
  const std::vector<std::shared_ptr<DiffArea>>& areas() const { return areas_; }
  // Adds a taken snapshot's area at `position` of the chain (oldest first); gate closed.
  void InsertArea(std::shared_ptr<DiffArea> area, size_t position);
  // Takes `area` out: writers stop copying into it (the gate closed around the change), then,
  // if `shield`, every older area gets its own copy of each chunk `area` holds and its storers
  // finish, and the area leaves the chain (chain reads in it drained). Gate open on entry.
  void RemoveArea(const std::shared_ptr<DiffArea>& area, bool shield);
  // Snapshots holding this device, in the order they were added (the newest last).
  std::vector<std::shared_ptr<SnapshotImpl>> snapshot_impls() const;
  void AddSnapshot(const std::shared_ptr<SnapshotImpl>& snapshot);
  // Before AddSnapshot: EALREADY if `snapshot` holds this device, EBUSY if another snapshot
  // not yet taken does, or kMaxSnapshotsPerDevice do.
  Status CheckCanJoin(const SnapshotImpl& snapshot) const;
  // How many areas of the chain belong to snapshots taken at or before `taken` (recovery).
  size_t ChainPosition(uint64_t taken) const;
  void RemoveSnapshot(const SnapshotImpl* snapshot);
  // True if a storage with this identity lives on this device or one of its aliases.
  bool Holds(const StorageIdentity& storage) const;
  // Rollback (rollback.h). InstallRollback: with the gate closed; the tracker keeps every
  // rollback it had alive (a reader may hold the raw pointer), the last one current.
  void InstallRollback(std::unique_ptr<Rollback> rollback);
  Rollback* current_rollback() const { return rollback_.load(); }
  // A write of the original for the rollback's merge: CBT and copy-on-write as any write, but
  // not held for the rollback itself.
  Status WriteMerged(uint64_t offset, std::span<const uint8_t> data);
  // AttachOptions::hold_reads until ReleaseReads().
  void HoldReads() EXCLUDES(hold_mu_);
  void ReleaseReads() EXCLUDES(hold_mu_);

  // Detach: later I/O fails with ENODEV; waits for in-flight writes (so the CBT state can be
  // sealed or removed after the last mark).
  void MarkDetached() {
    detached_.store(true);
    ReleaseReads();
    gate_.Shutdown();
  }

 private:
  // `merge`: a write of the rollback's own merge (no wait for it).
  template <typename Op>
  Status Modify(uint64_t offset, uint64_t length, Op op, bool merge = false);
  void WaitReads() EXCLUDES(hold_mu_);

  const std::string name_;
  const std::string path_;
  const std::shared_ptr<BlockDevice> original_;
  const std::unique_ptr<CbtMap> cbt_;
  IoGate gate_;
  const std::shared_ptr<AreaChain> chain_;
  std::vector<std::shared_ptr<DiffArea>> areas_;  // changes only while gate_ is closed
  std::atomic<bool> detached_{false};
  std::atomic<Rollback*> rollback_{nullptr};  // the current rollback; owned by rollbacks_
  std::atomic<bool> reads_held_{false};
  Mutex hold_mu_;
  CondVar hold_cv_;

  mutable Mutex mu_;
  std::vector<std::weak_ptr<SnapshotImpl>> snapshots_ GUARDED_BY(mu_);
  // st_rdev of aliasing devices (a multiset: the FUSE mount aliases a device once per front).
  std::multiset<uint64_t> aliases_ GUARDED_BY(mu_);
  std::vector<std::unique_ptr<Rollback>> rollbacks_ GUARDED_BY(mu_);
  bool is_block_device_ = false;           // set at construction
  uint64_t rdev_ = 0, dev_ = 0, ino_ = 0;  // identity of path, set at construction
};

}  // namespace blksnap
