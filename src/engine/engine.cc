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
#include "blksnap/engine.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <set>
#include <thread>

#include "blksnap/env.h"
#include "engine/diff_storage.h"
#include "engine/snapshot.h"
#include "engine/tracker.h"
#include "util/block_topology.h"
#include "util/mutex.h"

namespace blksnap {
namespace {

using Clock = std::chrono::steady_clock;

StorageIdentity ToIdentity(const topology::Node& n) {
  StorageIdentity id;
  id.path = n.path;
  id.is_block_device = !n.is_file;
  id.rdev = n.rdev;
  id.dev = n.dev;
  id.ino = n.ino;
  return id;
}

topology::Node ToNode(const StorageIdentity& id) {
  topology::Node n;
  n.is_file = !id.is_block_device;
  n.rdev = id.rdev;
  n.dev = id.dev;
  n.ino = id.ino;
  n.path = id.path;
  return n;
}

std::string Describe(const topology::Node& n) {
  if (!n.path.empty()) return n.path;
  if (n.is_file) return "file " + topology::DevName(n.dev) + " inode " + std::to_string(n.ino);
  return "block device " + topology::DevName(n.rdev);
}

// EINVAL if a node of `below` (the resolved stack of `start`, called `what`) is the tracker or
// one of its aliases (fronts): `what` is on the tracked device. No I/O (Holds is in memory).
Status CheckOnTracker(const TrackerImpl& tracker, const std::string& what,
                      const topology::Node& start, const std::vector<topology::Node>& below,
                      const char* why) {
  for (const auto& node : below) {
    if (tracker.Holds(ToIdentity(node))) {
      std::string via = node.SameAs(start) ? "" : " (through " + Describe(node) + ")";
      return Status::Error(
          EINVAL, what + " is on tracked device '" + tracker.name() + "'" + via + "; " + why);
    }
  }
  return Status::Ok();
}

// EINVAL if the storage (with `below`, its resolved stack) is on or under the tracker.
Status CheckStorageOn(const TrackerImpl& tracker, const StorageIdentity& storage,
                      const std::vector<topology::Node>& below, const std::string& sysfs) {
  const std::string what = "difference storage " + storage.path;
  BLKSNAP_RETURN_IF_ERROR(
      CheckOnTracker(tracker, what, ToNode(storage), below, "writing it would bypass the tracker"));
  topology::Node original, shared;
  if (!tracker.path().empty() && topology::NodeForPath(tracker.path(), &original) &&
      topology::Overlaps(below, topology::ResolveLower(sysfs, original), &shared)) {
    return Status::Error(EINVAL, what + " shares " + Describe(shared) + " with tracked device '" +
                                     tracker.name() + "'; writing it would harm the original");
  }
  return Status::Ok();
}

// EBUSY if a loop device is bound to the tracked file: writes through it bypass the tracker, so
// a snapshot would silently miss them. (The daemon's own loop front is bound to its FUSE file.)
Status CheckNoLoopOnFile(const TrackerImpl& tracker, const std::string& sysfs) {
  topology::Node node;
  if (tracker.path().empty() || sysfs.empty() || !topology::NodeForPath(tracker.path(), &node) ||
      !node.is_file) {
    return Status::Ok();
  }
  const auto loops = topology::LoopsBoundTo(sysfs, node.dev, node.ino);
  if (loops.empty()) return Status::Ok();
  return Status::Error(EBUSY, loops.front().device + " is bound to " + tracker.path() +
                                  ", the file of device '" + tracker.name() +
                                  "': writes through it would bypass the tracker and be missing "
                                  "from the snapshot (losetup -d " +
                                  loops.front().device + ")");
}

class EngineImpl final : public Engine {
 public:
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
      if (auto snap = it->second->snapshot_impl()) {
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
    checks.placement = [this](const StorageIdentity& storage) { return CheckPlacement(storage); };
    auto storage =
        options.storage_device
            ? DiffStorage::Create(options.storage_device, nullptr, options.limit,
                                  config_.diff_storage_minimum, id, push, options.storage_path)
            : DiffStorage::Open(options.storage_path, options.limit, config_.diff_storage_minimum,
                                id, push, config_.env, checks);
    if (!storage.ok()) return std::move(storage).status();
    auto snapshot = std::make_shared<SnapshotImpl>(id, std::move(storage).value(), events,
                                                   options.durability);
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
    if (auto current = tracker->snapshot_impl()) {
      if (current == snapshot)
        return Status::Error(EALREADY, "device '" + device + "' is already in this snapshot");
      return Status::Error(EBUSY,
                           "device '" + device + "' is in snapshot " + current->id().ToString());
    }
    auto storage = snapshot->storage();
    if (storage && tracker->Holds(storage->identity())) {
      return Status::Error(EINVAL,
                           "device '" + device + "' holds this snapshot's difference storage");
    }
    if (storage && !storage->identity().path.empty()) {
      const std::string sysfs = env()->SysfsRoot();
      const auto below = topology::ResolveLower(sysfs, ToNode(storage->identity()));
      Status s = CheckStorageOn(*tracker, storage->identity(), below, sysfs);
      if (!s.ok()) {
        return Status::Error(
            EINVAL, "device '" + device + "' holds this snapshot's " + std::string(s.message()));
      }
    }
    BLKSNAP_RETURN_IF_ERROR(CheckNoLoopOnFile(*tracker, env()->SysfsRoot()));
    tracker->set_snapshot(snapshot);
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
    auto storage = snapshot->storage();

    std::weak_ptr<SnapshotImpl> weak = snapshot;
    for (auto& m : members) {
      const uint64_t capacity = m.tracker->original()->size();
      const uint32_t io_size = std::max(m.tracker->logical_block_size(), 512u);
      m.area = std::make_shared<DiffArea>(m.tracker->original(), storage,
                                          ComputeChunkGeometry(capacity, io_size, config_), config_,
                                          [weak, name = m.tracker->name()](int errnum) {
                                            if (auto s = weak.lock()) s->OnCorrupt(name, errnum);
                                          });
    }
    std::sort(members.begin(), members.end(),
              [](const auto& a, const auto& b) { return a.tracker.get() < b.tracker.get(); });

    TakeStats stats;
    const auto freeze_start = Clock::now();
    if (hooks.freeze) BLKSNAP_RETURN_IF_ERROR(hooks.freeze());
    const auto hold_start = Clock::now();
    for (auto& m : members) m.tracker->gate().Close();
    for (auto& m : members) {
      m.tracker->cbt().SwitchForTake(m.tracker->original()->size());
      m.tracker->set_area(m.area);
    }
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
      DetachAreas(members);
      for (auto& u : members) u.area->Shutdown();
      return Status::Error(s.errnum(), "the CBT state of '" + m.tracker->name() +
                                           "' cannot be made durable: " + std::string(s.message()));
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
      snapshots_.erase(it);
    }
    std::vector<SnapshotImpl::Member> members = snapshot->MarkDestroyed();
    // Images first: an in-flight image write may still be copying a chunk from the original,
    // which must not change under it until the copy is done.
    for (auto& m : members) {
      if (m.area) m.area->StopImageIo();
    }
    DetachAreas(members);
    for (auto& m : members) m.tracker->set_snapshot({});
    for (auto& m : members) {
      if (m.area) m.area->Shutdown();
    }
    snapshot->ReleaseStorage();
    return Status::Ok();
  }

  Status CloseSnapshot(const Uuid& id) override {
    return Status::Error(ENOTSUP, "snapshot " + id.ToString() + ": not built yet");
  }

  Result<std::shared_ptr<Snapshot>> RecoverSnapshot(
      const RecoverSnapshotOptions& options) override {
    return Status::Error(ENOTSUP, "snapshot " + options.id.ToString() + ": not built yet");
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
    const std::string sysfs = env()->SysfsRoot();
    const auto below = topology::ResolveLower(sysfs, ToNode(storage));
    for (const auto& tracker : TrackerImpls()) {
      BLKSNAP_RETURN_IF_ERROR(CheckStorageOn(*tracker, storage, below, sysfs));
    }
    for (const auto& s : snapshots()) {
      auto other = static_cast<SnapshotImpl&>(*s).storage();
      if (!other) continue;
      const StorageIdentity& o = other->identity();
      const bool same = storage.is_block_device ? o.is_block_device && o.rdev == storage.rdev
                                                : !o.is_block_device && o.ino != 0 &&
                                                      o.dev == storage.dev && o.ino == storage.ino;
      if (same) {
        return Status::Error(EBUSY, "difference storage " + storage.path +
                                        " is already the storage of snapshot " +
                                        s->id().ToString());
      }
    }
    return Status::Ok();
  }

  // The trackers' side only (not the overlap with each original, which costs a sysfs walk per
  // device): one walk below `path`, then a lookup per tracker.
  Status CheckNotOnTracked(const std::string& path, const std::string& what) override
      EXCLUDES(mu_) {
    topology::Node node;
    if (!topology::NodeForPath(path, &node)) return Status::Ok();  // nothing there yet
    const auto below = topology::ResolveLower(env()->SysfsRoot(), node);
    for (const auto& tracker : TrackerImpls()) {
      BLKSNAP_RETURN_IF_ERROR(
          CheckOnTracker(*tracker, what, node, below,
                         "the daemon's writes there would be tracked as changes of that "
                         "device and could deadlock its write path"));
    }
    return Status::Ok();
  }

  // Each tracker stops copying into its area (writers held around the change).
  static void DetachAreas(const std::vector<SnapshotImpl::Member>& members) {
    for (const auto& m : members) {
      if (!m.area) continue;
      m.tracker->gate().Close();
      m.tracker->set_area(nullptr);
      m.tracker->gate().Open();
    }
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

}  // namespace

Status ValidateDeviceName(std::string_view name) {
  if (name.empty()) return Status::Error(EINVAL, "device name is empty");
  if (name.size() > 128) return Status::Error(EINVAL, "device name longer than 128 characters");
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '-' || c == '_' || c == '.';
    if (!ok) {
      return Status::Error(EINVAL, "device name '" + std::string(name) +
                                       "' may only hold letters, digits, '-', '_' and '.'");
    }
  }
  if (name == "." || name == "..") return Status::Error(EINVAL, "device name is reserved");
  return Status::Ok();
}

Result<std::unique_ptr<Engine>> Engine::Create(Config config) {
  BLKSNAP_RETURN_IF_ERROR(config.Validate());
  return std::unique_ptr<Engine>(new EngineImpl(config));
}

}  // namespace blksnap
