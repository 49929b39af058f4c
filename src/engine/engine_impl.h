// EngineImpl: the registry of tracked devices and snapshots, and the take/destroy protocol.
//
// Take (atomic across the snapshot's devices):
//   1. build a DiffArea per device (outside the critical section: allocation, threads);
//   2. run the freeze hook (file systems flush through us and freeze);
//   3. close every device's IoGate, in address order, waiting for in-flight writes;
//   4. switch each CBT map and install each DiffArea;
//   5. open the gates, run the thaw hook, publish the images.
// Writers are held only during 3-5 (TakeStats::held).
// Destroy: stop image I/O (waits for in-flight image requests), close each gate, remove the
// DiffArea, open the gate (the original no longer pays for copy-on-write), then shut each
// DiffArea down (storer, memory) and release the storage. take_mu_ serialises take, destroy, add
// and detach; mu_ guards the two maps and busy_.
// Attach and Detach open, seal or remove the device's CBT state file (syncs) with no engine lock
// held; busy_ reserves the name meanwhile, so two runs never map the same state file.
// Storage placement (issue 13): CreateSnapshot hands DiffStorage::Open a check that runs before
// the storage's first write: the storage and everything below it (util/block_topology.h: loop
// backing files, slaves, a partition's disk, a file's file system) must not be, or be on, any
// attached tracker, its aliases (fronts), or anything below it; nor another snapshot's storage.
// CreateSnapshot holds take_mu_, so no device is attached between the check and the snapshot;
// AddDevice repeats the tracker check for a device attached later. CheckNotOnTracked applies
// the tracker half of it to any path (the daemon's state dir).
// The placement checks are in placement.h; the close and recovery steps that need no engine
// state in snapshot_recovery.h.
#pragma once

#include <algorithm>
#include <chrono>
#include <map>
#include <set>
#include <thread>

#include "blksnap/engine.h"
#include "blksnap/env.h"
#include "engine/diff_storage.h"
#include "engine/placement.h"
#include "engine/rollback.h"
#include "engine/snapshot.h"
#include "engine/snapshot_recovery.h"
#include "engine/tracker.h"
#include "util/mutex.h"

namespace blksnap {

class EngineImpl final : public Engine {
 public:
  using Clock = std::chrono::steady_clock;

  explicit EngineImpl(Config config) : config_(config) {
    if (config_.cbt_checkpoint_interval_ms > 0)
      checkpointer_ = std::thread([this] { CheckpointLoop(); });
  }
  ~EngineImpl() override {
    if (checkpointer_.joinable()) {
      {
        MutexLock lock(stop_mu_);
        stopping_ = true;
      }
      stop_cv_.SignalAll();
      checkpointer_.join();
    }
    for (auto& tracker : TrackerImpls()) {
      if (blksnap::Rollback* r = tracker->current_rollback()) r->Stop();  // the journal stays
    }
    for (auto& snapshot : snapshots()) Destroy(snapshot->id()).IgnoreError();
  }

  const Config& config() const override { return config_; }

  Result<std::shared_ptr<Tracker>> Attach(const std::string& name,
                                          std::shared_ptr<BlockDevice> original,
                                          const AttachOptions& options) override {
    BLKSNAP_RETURN_IF_ERROR(ValidateDeviceName(name));
    if (!original || original->size() == 0)
      return Status::Error(EINVAL, "device '" + name + "' has no capacity");
    BLKSNAP_RETURN_IF_ERROR(Reserve(name));
    // Recovers the CBT state: file I/O and a sync, with no engine lock held, so attaches of
    // several devices (a daemon start) overlap their syncs.
    auto cbt = CbtMap::Open(original->size(), config_,
                            {.path = options.cbt_path,
                             .expected = options.cbt_expected,
                             .identity = options.identity,
                             .files = options.mapped_files});
    MutexLock take(take_mu_);
    MutexLock lock(mu_);
    busy_.erase(name);
    if (!cbt.ok()) return std::move(cbt).status();
    auto tracker =
        std::make_shared<TrackerImpl>(name, std::move(original), options, std::move(cbt).value());
    if (options.hold_writes) tracker->gate().Close();  // no writer yet: returns at once
    if (options.hold_reads) tracker->HoldReads();
    trackers_[name] = tracker;
    return std::shared_ptr<Tracker>(tracker);
  }

  Status Detach(const std::string& name, const DetachOptions& options) override {
    std::shared_ptr<TrackerImpl> tracker;
    {
      MutexLock take(take_mu_);
      MutexLock lock(mu_);
      auto it = trackers_.find(name);
      if (it == trackers_.end()) return Status::Error(ENOENT, "no device named '" + name + "'");
      if (auto snap = it->second->snapshot()) {
        return Status::Error(EBUSY,
                             "device '" + name + "' is in snapshot " + snap->id().ToString());
      }
      tracker = it->second;
      trackers_.erase(it);
      busy_.insert(name);  // no attach of this name until its state file is sealed or removed
    }
    tracker->MarkDetached();  // waits for in-flight writes: their marks come before the seal
    Status s = options.keep_cbt ? tracker->cbt().Close(options.identity) : tracker->cbt().Remove();
    MutexLock lock(mu_);
    busy_.erase(name);
    return s;
  }

  std::shared_ptr<Tracker> FindTracker(const std::string& name) const override {
    MutexLock lock(mu_);
    auto it = trackers_.find(name);
    return it == trackers_.end() ? nullptr : it->second;
  }

  Status ReleaseWrites(const std::string& name) override {
    std::shared_ptr<TrackerImpl> tracker;
    {
      MutexLock lock(mu_);
      auto it = trackers_.find(name);
      if (it == trackers_.end()) return Status::Error(ENOENT, "no device named '" + name + "'");
      tracker = it->second;
    }
    tracker->gate().Open();
    tracker->ReleaseReads();
    return Status::Ok();
  }

  std::vector<std::shared_ptr<Tracker>> trackers() const override {
    MutexLock lock(mu_);
    std::vector<std::shared_ptr<Tracker>> out;
    for (auto& [name, tracker] : trackers_) out.push_back(tracker);
    return out;
  }

  Result<Uuid> CreateSnapshot(const SnapshotOptions& options) override {
    if (options.storage_path.empty() && !options.storage_device)
      return Status::Error(EINVAL, "difference storage path is empty");
    const Uuid id = Uuid::Random();
    auto events = std::make_shared<EventLog>();
    auto push = [events](SnapshotEvent e) { events->Push(std::move(e)); };
    MutexLock take(take_mu_);  // no attach between the placement check and the snapshot
    DiffStorageChecks checks;
    checks.force = options.force;
    checks.page_cache = config_.diff_storage_page_cache;
    checks.placement = [this](const StorageIdentity& storage) { return CheckPlacement(storage); };
    auto storage =
        options.storage_device
            ? DiffStorage::Create(options.storage_device, nullptr, options.limit,
                                  config_.diff_storage_minimum, id, push, options.storage_path,
                                  options.durability)
            : DiffStorage::Open(options.storage_path, options.limit, config_.diff_storage_minimum,
                                id, push, config_.env, checks, options.durability);
    if (!storage.ok()) return std::move(storage).status();
    auto snapshot =
        std::make_shared<SnapshotImpl>(id, std::move(storage).value(), events, options.durability);
    MutexLock lock(mu_);
    snapshots_[id] = snapshot;
    return id;
  }

  Status AddDevice(const Uuid& id, const std::string& device) override {
    MutexLock take(take_mu_);
    std::shared_ptr<SnapshotImpl> snapshot;
    std::shared_ptr<TrackerImpl> tracker;
    BLKSNAP_RETURN_IF_ERROR(Find(id, &snapshot));
    {
      MutexLock lock(mu_);
      auto it = trackers_.find(device);
      if (it == trackers_.end()) return Status::Error(ENOENT, "no device named '" + device + "'");
      tracker = it->second;
    }
    if (snapshot->state() != SnapshotState::kCreated)
      return Status::Error(EBUSY, "snapshot " + id.ToString() + " is already taken");
    BLKSNAP_RETURN_IF_ERROR(tracker->CheckCanJoin(*snapshot));
    auto storage = snapshot->storage();
    if (storage && tracker->Holds(storage->identity())) {
      return Status::Error(EINVAL,
                           "device '" + device + "' holds this snapshot's difference storage");
    }
    if (storage && !storage->identity().path.empty()) {
      Status s = CheckStoragePlacement(storage->identity(), {tracker}, {}, env()->SysfsRoot());
      if (!s.ok()) {
        return Status::Error(
            EINVAL, "device '" + device + "' holds this snapshot's " + std::string(s.message()));
      }
    }
    BLKSNAP_RETURN_IF_ERROR(CheckNoLoopOnFile(*tracker, env()->SysfsRoot()));
    tracker->AddSnapshot(snapshot);
    snapshot->AddMember(std::move(tracker));
    return Status::Ok();
  }

  Result<TakeStats> Take(const Uuid& id, const TakeHooks& hooks) override {
    MutexLock take(take_mu_);
    std::shared_ptr<SnapshotImpl> snapshot;
    BLKSNAP_RETURN_IF_ERROR(Find(id, &snapshot));
    if (snapshot->state() != SnapshotState::kCreated)
      return Status::Error(EALREADY, "snapshot " + id.ToString() + " is already taken");
    std::vector<SnapshotImpl::Member> members = snapshot->members();
    if (members.empty())
      return Status::Error(ENODEV, "snapshot " + id.ToString() + " has no devices");
    for (auto& m : members) BLKSNAP_RETURN_IF_ERROR(CheckNotRollingBack(*m.tracker, nullptr));
    auto storage = snapshot->storage();
    const bool durable = snapshot->durability() != SnapshotDurability::kMemory;
    if (durable) {
      if (members.size() > kMaxStorageDevices) {
        return Status::Error(EINVAL, "a durable snapshot holds at most " +
                                         std::to_string(kMaxStorageDevices) + " devices");
      }
      if (!storage->log()) BLKSNAP_RETURN_IF_ERROR(storage->StartLog());
    }

    std::vector<StorageDevice> table;  // the storage's device table: members in this order
    for (auto& m : members) {
      const uint64_t capacity = m.tracker->original()->size();
      const uint32_t io_size = std::max(m.tracker->logical_block_size(), 512u);
      // One geometry per device chain (area_chain.h): the newest area's, if any.
      const auto chain = m.tracker->chain()->list();
      const ChunkGeometry geometry = chain->empty()
                                         ? ComputeChunkGeometry(capacity, io_size, config_)
                                         : chain->back()->geometry();
      m.area = MakeArea(snapshot, m.tracker, geometry, static_cast<uint16_t>(table.size()));
      table.push_back({m.tracker->name(), capacity, geometry.shift});
    }
    std::sort(members.begin(), members.end(),
              [](const auto& a, const auto& b) { return a.tracker.get() < b.tracker.get(); });

    // A memory snapshot over durable ones: their storages say so before it copies anything.
    if (!durable) SyncVolatileNewerFlags(Trackers(members), snapshot.get(), nullptr);
    TakeStats stats;
    const auto freeze_start = Clock::now();
    if (hooks.freeze) BLKSNAP_RETURN_IF_ERROR(hooks.freeze());
    const auto hold_start = Clock::now();
    for (auto& m : members) m.tracker->gate().Close();
    for (auto& m : members) {
      m.tracker->cbt().SwitchForTake(m.tracker->original()->size());
      m.tracker->InsertArea(m.area, m.tracker->areas().size());
    }
    snapshot->set_taken_at(NowNs());
    for (auto& m : members) m.tracker->gate().Open();
    const auto hold_end = Clock::now();
    if (hooks.thaw) hooks.thaw();
    stats.held = std::chrono::duration_cast<std::chrono::microseconds>(hold_end - hold_start);
    if (hooks.freeze) {
      stats.frozen =
          std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - freeze_start);
    }
    // The new snap numbers durable before the take returns (after the thaw: the file system
    // does not wait for the sync): the power-loss recovery relies on it. If they cannot be, the
    // take fails and is undone (the tool keeps its old number; the CBT numbers moved on, which
    // only over-reports against it).
    for (auto& m : members) {
      Status s = m.tracker->cbt().CommitTake();
      if (s.ok()) continue;
      RemoveAreas(members);
      for (auto& u : members) u.area->Shutdown();
      return Status::Error(s.errnum(), "the CBT state of '" + m.tracker->name() +
                                           "' cannot be made durable: " + std::string(s.message()));
    }
    // A durable snapshot exists once its storage says taken (a crash before that drops it: the
    // take never returned).
    if (durable) {
      Status s = storage->UpdateHeader([&](DiffStorageHeader& h) {
        if (h.state != kStorageStateCorrupted) h.state = kStorageStateTaken;
        h.devices = table;
        h.log_start = storage->log()->start();
        h.log_epoch = 1;
        h.taken = snapshot->taken_at();
      });
      if (!s.ok()) {
        RemoveAreas(members);
        for (auto& u : members) u.area->Shutdown();
        return Status::Error(s.errnum(), "cannot record the take in the difference storage: " +
                                             std::string(s.message()));
      }
      // Only now: a compaction moves the header's log start, which the take header above
      // must not overwrite with the first chain's.
      EnableCompaction(*storage, members);
    }
    for (auto& m : members) m.image = std::make_shared<SnapImage>(m.area, m.tracker);
    snapshot->SetTaken(std::move(members));
    return stats;
  }

  Status Destroy(const Uuid& id) override {
    MutexLock take(take_mu_);
    std::shared_ptr<SnapshotImpl> snapshot;
    {
      MutexLock lock(mu_);
      auto it = snapshots_.find(id);
      if (it == snapshots_.end()) return Status::Error(ENOENT, "no snapshot " + id.ToString());
      snapshot = it->second;
      for (auto& m : snapshot->members())
        BLKSNAP_RETURN_IF_ERROR(CheckNotRollingBack(*m.tracker, &id));
      snapshots_.erase(it);
    }
    std::vector<SnapshotImpl::Member> members = snapshot->MarkDestroyed();
    // Images first: an in-flight image write may still be copying a chunk from the original,
    // which must not change under it until the copy is done.
    for (auto& m : members) {
      if (m.area) m.area->StopImageIo();
    }
    // A durable storage no longer says taken before the originals stop being preserved: a
    // crash from here on (or a stale record, or a storage that outlives the snapshot: a block
    // device, a file given by path) recovers nothing. With older snapshots of a member device
    // it says corrupted (ECANCELED) instead until their copies are in their storage: they
    // read through its records until then (area_chain.h).
    auto storage = snapshot->storage();
    const bool durable = storage && storage->durability() != SnapshotDurability::kMemory;
    bool older = false;
    for (auto& m : members)
      older = older || (m.area && !m.tracker->chain()->OlderThan(m.area.get()).empty());
    if (durable) ReleaseDestroyedStorage(*storage, older);
    RemoveAreas(members);
    if (durable && older) ReleaseDestroyedStorage(*storage, false);
    if (!durable) SyncVolatileNewerFlags(Trackers(members), nullptr, snapshot.get());
    for (auto& m : members) m.tracker->RemoveSnapshot(snapshot.get());
    if (storage) DisableCompaction(*storage);
    for (auto& m : members) {
      if (m.area) m.area->Shutdown();
    }
    snapshot->ReleaseStorage();
    return Status::Ok();
  }

  Status CloseSnapshot(const Uuid& id) override {
    MutexLock take(take_mu_);
    std::shared_ptr<SnapshotImpl> snapshot;
    BLKSNAP_RETURN_IF_ERROR(Find(id, &snapshot));
    const SnapshotState state = snapshot->state();
    if (snapshot->durability() == SnapshotDurability::kMemory || state == SnapshotState::kCreated) {
      return Status::Error(EINVAL, "snapshot " + id.ToString() +
                                       (state == SnapshotState::kCreated
                                            ? " is not taken: nothing to keep"
                                            : " is kept in memory only: destroy it instead"));
    }
    // Older snapshots of a member device read through this one: they are closed first (the
    // next start recovers the chain in take order).
    for (const auto& m : snapshot->members()) {
      if (!m.tracker->chain()->OlderThan(m.area.get()).empty()) {
        return Status::Error(
            EBUSY, "an older snapshot of '" + m.tracker->name() + "' is open: close it first");
      }
    }
    for (const auto& m : snapshot->members()) {
      if (blksnap::Rollback* r = m.tracker->current_rollback())
        r->Stop();  // resumed after the restart
    }
    {
      MutexLock lock(mu_);
      snapshots_.erase(id);
    }
    auto storage = snapshot->storage();
    std::vector<SnapshotImpl::Member> members = snapshot->MarkDestroyed();
    for (auto& m : members) m.area->StopImageIo();
    // In-flight writers finish: their chunks are stored first. No older area to shield.
    for (auto& m : members) m.tracker->RemoveArea(m.area, false);
    for (auto& m : members) m.area->WaitStored();
    for (auto& m : members) m.tracker->RemoveSnapshot(snapshot.get());
    DisableCompaction(*storage);
    std::vector<std::shared_ptr<DiffArea>> areas;
    for (auto& m : members) areas.push_back(m.area);
    Status s = SealClosedStorage(*storage, id, state == SnapshotState::kTaken, areas);
    storage->KeepFile();
    for (auto& m : members) m.area->Shutdown();
    snapshot->ReleaseStorage();
    return s;
  }

  Result<std::shared_ptr<Snapshot>> RecoverSnapshot(const RecoverSnapshotOptions& options) override;

  Status Rollback(const Uuid& id, const std::string& device,
                  const RollbackOptions& options) override {
    MutexLock take(take_mu_);
    std::shared_ptr<TrackerImpl> tracker;
    {
      MutexLock lock(mu_);
      if (auto it = trackers_.find(device); it != trackers_.end()) tracker = it->second;
    }
    if (!tracker) return Status::Error(ENOENT, "no device named '" + device + "'");
    return RollbackDevice(tracker, id, options, env(), [this](const Uuid& target) {
      std::shared_ptr<SnapshotImpl> snapshot;
      Status found = Find(target, &snapshot);
      return found.ok() ? snapshot : nullptr;
    });
  }

  std::shared_ptr<Snapshot> FindSnapshot(const Uuid& id) const override {
    MutexLock lock(mu_);
    auto it = snapshots_.find(id);
    return it == snapshots_.end() ? nullptr : it->second;
  }

  std::vector<std::shared_ptr<Snapshot>> snapshots() const override {
    MutexLock lock(mu_);
    std::vector<std::shared_ptr<Snapshot>> out;
    for (auto& [id, snapshot] : snapshots_) out.push_back(snapshot);
    return out;
  }

 private:
  Status Find(const Uuid& id, std::shared_ptr<SnapshotImpl>* out) const EXCLUDES(mu_) {
    MutexLock lock(mu_);
    auto it = snapshots_.find(id);
    if (it == snapshots_.end()) return Status::Error(ENOENT, "no snapshot " + id.ToString());
    *out = it->second;
    return Status::Ok();
  }

  Env* env() const { return config_.env ? config_.env : Env::Default(); }

  // DiffStorage::Open's placement check (see the top of this file). take_mu_ is held.
  Status CheckPlacement(const StorageIdentity& storage) EXCLUDES(mu_) {
    std::vector<std::pair<Uuid, StorageIdentity>> others;
    for (const auto& s : snapshots()) {
      if (auto other = static_cast<SnapshotImpl&>(*s).storage()) {
        others.emplace_back(s->id(), other->identity());
      }
    }
    return CheckStoragePlacement(storage, TrackerImpls(), others, env()->SysfsRoot());
  }

  Status CheckNotOnTracked(const std::string& path, const std::string& what) override
      EXCLUDES(mu_) {
    return CheckNotOnTrackers(path, what, TrackerImpls(), env()->SysfsRoot());
  }

  // The DiffArea of one member: corruption goes to the snapshot (which records it in a durable
  // storage before the failing write proceeds).
  std::shared_ptr<DiffArea> MakeArea(const std::shared_ptr<SnapshotImpl>& snapshot,
                                     const std::shared_ptr<TrackerImpl>& tracker,
                                     const ChunkGeometry& geometry, uint16_t index) {
    std::weak_ptr<SnapshotImpl> weak = snapshot;
    auto storage = snapshot->storage();
    return std::make_shared<DiffArea>(
        tracker->original(), tracker->chain(), storage, geometry, config_,
        [weak, name = tracker->name()](int errnum) {
          if (auto s = weak.lock()) s->OnCorrupt(name, errnum);
        },
        storage->log(), index);
  }

  // Durable snapshots: the chunk log compacts itself from the members' chunk tables.
  void EnableCompaction(DiffStorage& storage, const std::vector<SnapshotImpl::Member>& members) {
    std::vector<std::weak_ptr<DiffArea>> areas;
    for (const auto& m : members) areas.push_back(m.area);
    storage.log()->SetCompaction(CompactionCollector(std::move(areas)),
                                 config_.chunk_log_compact_pages);
  }
  static void DisableCompaction(DiffStorage& storage) {
    if (storage.log()) storage.log()->SetCompaction(nullptr, 0);
  }

  // Each tracker stops copying into its area (writers held around the change); the older
  // areas of its chain get their own copies of what it holds (area_chain.h).
  static void RemoveAreas(const std::vector<SnapshotImpl::Member>& members) {
    for (const auto& m : members) {
      if (m.area) m.tracker->RemoveArea(m.area, true);
    }
  }

  static std::vector<std::shared_ptr<TrackerImpl>> Trackers(
      const std::vector<SnapshotImpl::Member>& members) {
    std::vector<std::shared_ptr<TrackerImpl>> out;
    for (const auto& m : members) out.push_back(m.tracker);
    return out;
  }

  static uint64_t NowNs() {
    return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                     std::chrono::system_clock::now().time_since_epoch())
                                     .count());
  }

  std::vector<std::shared_ptr<TrackerImpl>> TrackerImpls() const EXCLUDES(mu_) {
    MutexLock lock(mu_);
    std::vector<std::shared_ptr<TrackerImpl>> out;
    for (auto& [name, tracker] : trackers_) out.push_back(tracker);
    return out;
  }

  // Durable CBT: the periodic checkpoint of every device written since its last one. No engine
  // lock is held while a device syncs.
  void CheckpointLoop() {
    const auto interval = std::chrono::milliseconds(config_.cbt_checkpoint_interval_ms);
    for (;;) {
      {
        MutexLock lock(stop_mu_);
        if (stop_cv_.WaitFor(stop_mu_, interval, [this]() REQUIRES(stop_mu_) { return stopping_; }))
          return;
      }
      for (auto& tracker : TrackerImpls()) tracker->cbt().CheckpointIfWritten().IgnoreError();
    }
  }

  // Attach: claims a name whose state file is about to be opened.
  Status Reserve(const std::string& name) EXCLUDES(mu_) {
    MutexLock lock(mu_);
    if (trackers_.count(name))
      return Status::Error(EEXIST, "device '" + name + "' is already attached");
    if (!busy_.insert(name).second)
      return Status::Error(EBUSY, "device '" + name + "' is being attached or detached");
    return Status::Ok();
  }

  const Config config_;
  Mutex take_mu_ ACQUIRED_BEFORE(mu_);  // serialises take, destroy, add and detach
  mutable Mutex mu_;
  std::map<std::string, std::shared_ptr<TrackerImpl>> trackers_ GUARDED_BY(mu_);
  std::map<Uuid, std::shared_ptr<SnapshotImpl>> snapshots_ GUARDED_BY(mu_);
  // Names being attached or detached: their state file is being opened, sealed or removed.
  std::set<std::string> busy_ GUARDED_BY(mu_);
  Mutex stop_mu_;
  CondVar stop_cv_;
  bool stopping_ GUARDED_BY(stop_mu_) = false;
  std::thread checkpointer_;  // CheckpointLoop
};

}  // namespace blksnap
