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
#include "blksnap/engine.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <set>

#include "engine/diff_storage.h"
#include "engine/snapshot.h"
#include "engine/tracker.h"
#include "util/mutex.h"

namespace blksnap {
namespace {

using Clock = std::chrono::steady_clock;

class EngineImpl final : public Engine {
 public:
  explicit EngineImpl(Config config) : config_(config) {}
  ~EngineImpl() override {
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
    auto storage =
        options.storage_device
            ? DiffStorage::Create(options.storage_device, nullptr, options.limit,
                                  config_.diff_storage_minimum, id, push, options.storage_path)
            : DiffStorage::Open(options.storage_path, options.limit, config_.diff_storage_minimum,
                                id, push, config_.env);
    if (!storage.ok()) return std::move(storage).status();
    auto snapshot = std::make_shared<SnapshotImpl>(id, std::move(storage).value(), events);
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
    for (auto& m : members) {
      if (m.area) {
        m.tracker->gate().Close();
        m.tracker->set_area(nullptr);
        m.tracker->gate().Open();
      }
      m.tracker->set_snapshot({});
    }
    for (auto& m : members) {
      if (m.area) m.area->Shutdown();
    }
    snapshot->ReleaseStorage();
    return Status::Ok();
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
