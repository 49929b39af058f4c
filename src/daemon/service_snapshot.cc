// Service: the snapshot life cycle (create, add, take, destroy), its images' fronts and its
// events. See service.h for the state and the locking; in short, a take runs without mu_ (its
// entry is marked busy), so freezing file systems never blocks other clients' requests.
//
// Events live in the engine (one sequenced log per snapshot, any number of waiters); a wait
// here holds only a reference to the engine's snapshot, never mu_.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>

#include "daemon/service.h"

namespace blksnap::daemon {
namespace {

Status Annotate(const Status& s, const std::string& prefix) {
  if (s.ok()) return s;
  return Status::Error(s.errnum(), prefix + ": " + std::string(s.message()));
}

// Longest single wait; a longer timeout is cut to this.
constexpr auto kMaxWait = std::chrono::hours(24 * 7);
// How often a wait checks whether its client went away.
constexpr auto kCancelSlice = std::chrono::milliseconds(250);

// A device joins a snapshot (`id`, or a new one when null) unless it is already in it
// (EALREADY), in another snapshot not yet taken, or in kMaxSnapshotsPerDevice snapshots (EBUSY).
Status CheckCanJoin(const Tracker& tracker, const Uuid* id, const std::string& device) {
  const auto snaps = tracker.snapshots();
  for (const auto& snap : snaps) {
    if (id && snap->id() == *id) {
      return Status::Error(EALREADY,
                           "device '" + device + "' is already in snapshot " + id->ToString());
    }
    if (snap->state() == SnapshotState::kCreated) {
      return Status::Error(EBUSY, "device '" + device + "' is in snapshot " +
                                      snap->id().ToString() + ", not taken yet");
    }
  }
  if (snaps.size() >= kMaxSnapshotsPerDevice) {
    return Status::Error(EBUSY, "device '" + device + "' is in " + std::to_string(snaps.size()) +
                                    " snapshots (at most " +
                                    std::to_string(kMaxSnapshotsPerDevice) + ")");
  }
  return Status::Ok();
}

}  // namespace

Result<Service::SnapshotEntry*> Service::FindSnapshotLocked(const Uuid& id) {
  auto it = snapshots_.find(id);
  if (it == snapshots_.end()) return Status::Error(ENOENT, "no snapshot " + id.ToString());
  return &it->second;
}

Result<Uuid> Service::CreateSnapshot(const SnapshotRequest& request) {
  const std::string& storage = request.storage;
  if (storage.empty() || storage[0] != '/') {
    return Status::Error(EINVAL, "storage path must be absolute: '" + storage + "'");
  }
  bool loop = request.loop;
  bool ublk = request.ublk;
  BLKSNAP_RETURN_IF_ERROR(ResolveBlockFronts(request.blockdev, &loop, &ublk));
  if (loop && !fronts_->info().fuse) {
    return Status::Error(ENOTSUP, "--loop needs the FUSE front, which is not running");
  }
  MutexLock lock(mu_);
  if (shut_down_) return Status::Error(ESHUTDOWN, "blksnapd is shutting down");
  const auto& devices = request.devices;
  for (size_t i = 0; i < devices.size(); ++i) {
    BLKSNAP_ASSIGN_OR_RETURN(auto tracker, FindTrackerLocked(devices[i]));
    if (std::find(devices.begin(), devices.begin() + i, devices[i]) != devices.begin() + i) {
      return Status::Error(EINVAL, "device '" + devices[i] + "' is listed twice");
    }
    // Several taken snapshots of a device are fine (issue 18); one not yet taken holds it.
    BLKSNAP_RETURN_IF_ERROR(CheckCanJoin(*tracker, nullptr, devices[i]));
  }
  auto id = engine_->CreateSnapshot({.storage_path = storage,
                                     .limit = request.limit,
                                     .force = request.force,
                                     .durability = request.durability});
  if (!id.ok()) return Annotate(id.status(), "cannot create snapshot");
  for (const auto& d : devices) {
    Status s = engine_->AddDevice(*id, d);
    if (!s.ok()) {
      engine_->Destroy(*id).IgnoreError();
      return Annotate(s, "cannot add device '" + d + "'");
    }
  }
  auto snap = engine_->FindSnapshot(*id);
  if (!snap) return Status::Error(EIO, "snapshot vanished after creation");
  SnapshotEntry entry;
  entry.id = *id;
  entry.storage = storage;
  entry.loop = loop;
  entry.ublk = ublk;
  entry.snapshot = std::move(snap);
  snapshots_.emplace(*id, std::move(entry));
  SaveRecordsLocked();  // a durable snapshot's storage file is released after a crash
  spdlog::info("created snapshot {} with storage {} (limit {}, durability {}) of {} device(s)",
               id->ToString(), storage, request.limit, ToString(request.durability),
               devices.size());
  return *id;
}

Status Service::AddDevice(const Uuid& id, const std::string& device) {
  MutexLock lock(mu_);
  BLKSNAP_ASSIGN_OR_RETURN(SnapshotEntry * entry, FindSnapshotLocked(id));
  if (entry->busy) return Status::Error(EBUSY, "snapshot " + id.ToString() + " is being taken");
  BLKSNAP_ASSIGN_OR_RETURN(auto tracker, FindTrackerLocked(device));
  BLKSNAP_RETURN_IF_ERROR(CheckCanJoin(*tracker, &id, device));
  Status s = engine_->AddDevice(id, device);
  if (!s.ok()) return Annotate(s, "cannot add device '" + device + "' to " + id.ToString());
  SaveRecordsLocked();
  spdlog::info("snapshot {}: added '{}'", id.ToString(), device);
  return Status::Ok();
}

Result<uint64_t> Service::SetStorageLimit(const Uuid& id, uint64_t limit) {
  std::shared_ptr<Snapshot> snap;
  {
    MutexLock lock(mu_);
    BLKSNAP_ASSIGN_OR_RETURN(SnapshotEntry * entry, FindSnapshotLocked(id));
    snap = entry->snapshot;
  }
  Status s = snap->SetStorageLimit(limit);
  if (!s.ok()) return Annotate(s, "cannot set the storage limit of " + id.ToString());
  spdlog::info("snapshot {}: storage limit raised to {} bytes", id.ToString(), limit);
  {
    MutexLock lock(mu_);
    SaveRecordsLocked();  // a durable snapshot's record holds its limit
  }
  return snap->storage_info().limit;
}

Result<TakeView> Service::Take(const Uuid& id) {
  std::shared_ptr<Snapshot> snap;
  std::vector<uint64_t> rdevs;
  {
    MutexLock lock(mu_);
    BLKSNAP_ASSIGN_OR_RETURN(SnapshotEntry * entry, FindSnapshotLocked(id));
    if (entry->busy) return Status::Error(EBUSY, "snapshot " + id.ToString() + " is being taken");
    snap = entry->snapshot;
    if (snap->state() != SnapshotState::kCreated) {
      return Status::Error(EALREADY,
                           "snapshot " + id.ToString() + " is already " + ToString(snap->state()));
    }
    if (snap->devices().empty()) {
      return Status::Error(ENODEV, "snapshot " + id.ToString() + " has no devices; add one first");
    }
    for (const auto& d : snap->devices()) {
      auto dev = devices_.find(d.name);
      if (dev == devices_.end()) continue;
      for (uint64_t rdev : dev->second.fronts->rdevs()) rdevs.push_back(rdev);
    }
    entry->busy = true;
    SaveRecordsLocked();  // "taking": a crash inside the take is known at restart
  }
  // Freeze and switch without mu_: a file system's sync during the freeze may need the fronts,
  // and other clients keep being answered.
  std::function<void()> thaw;
  TakeHooks hooks;
  if (!rdevs.empty()) {
    hooks.freeze = [this, &rdevs, &thaw]() -> Status {
      auto t = fronts_->Freeze(rdevs);
      if (!t.ok()) return Annotate(t.status(), "freezing file systems");
      thaw = std::move(t).value();
      return Status::Ok();
    };
    hooks.thaw = [&thaw] {
      if (thaw) thaw();
    };
  }
  auto start = std::chrono::steady_clock::now();
  auto stats = engine_->Take(id, hooks);
  auto took = std::chrono::steady_clock::now() - start;

  MutexLock lock(mu_);
  auto it = snapshots_.find(id);
  if (it != snapshots_.end()) it->second.busy = false;
  if (!stats.ok()) {
    SaveRecordsLocked();  // not taking any more
    return Annotate(stats.status(), "cannot take snapshot " + id.ToString());
  }
  if (it == snapshots_.end())
    return Status::Error(ENOENT, "snapshot " + id.ToString() + " is gone");
  TakeView view;
  view.id = id;
  ExposeImagesLocked(it->second, &view.warnings);
  SaveRecordsLocked();
  view.took_ms = std::chrono::duration<double, std::milli>(took).count();
  view.held_us = stats->held.count();
  view.frozen_us = stats->frozen.count();
  spdlog::info("took snapshot {} in {:.3f} ms (writers held {} us)", id.ToString(), view.took_ms,
               view.held_us);
  return view;
}

void Service::ExposeImagesLocked(SnapshotEntry& entry, std::vector<std::string>* warnings,
                                 const std::map<std::string, int>& ublk_recover_ids) {
  const std::string id = entry.id.ToString();
  for (const auto& d : entry.snapshot->devices()) {
    auto image = entry.snapshot->image(d.name);
    if (!image) continue;
    std::shared_ptr<Tracker> tracker;
    if (auto dev = devices_.find(d.name); dev != devices_.end()) tracker = dev->second.tracker;
    std::string front = d.name + "@" + id;
    ExposeOptions eo;
    eo.loop = entry.loop;
    eo.ublk = entry.ublk;
    eo.description = "blksnap image of " + d.name + " at snapshot " + id;
    eo.ro_name = front + ":ro";
    if (auto r = ublk_recover_ids.find(d.name); entry.ublk && r != ublk_recover_ids.end()) {
      eo.ublk_recover_id = r->second;
    }
    auto exposure = fronts_->Expose(front, image, tracker, eo);
    if (!exposure.ok()) {
      warnings->push_back("image of '" + d.name + "': " + exposure.status().ToString());
      spdlog::warn("snapshot {}: exposing image of '{}': {}", id, d.name,
                   exposure.status().ToString());
      continue;
    }
    // An image's block devices alias its original: no difference storage may go there.
    (*exposure)->SetAliasOwner(tracker);
    entry.images[d.name] = std::move(exposure).value();
  }
}

Status Service::DestroySnapshot(const Uuid& id, bool force) {
  MutexLock lock(mu_);
  auto it = snapshots_.find(id);
  if (it == snapshots_.end() && !engine_->FindSnapshot(id)) {
    return Status::Error(ENOENT, "no snapshot " + id.ToString());
  }
  if (it != snapshots_.end() && it->second.busy) {
    return Status::Error(EBUSY, "snapshot " + id.ToString() + " is being taken");
  }
  if (it != snapshots_.end() && !force) {
    for (const auto& [device, exposure] : it->second.images) {
      Status idle = exposure->CheckIdle();
      if (!idle.ok()) {
        return Status::Error(EBUSY, "the image of '" + device + "' in snapshot " + id.ToString() +
                                        " is in use: " + std::string(idle.message()) +
                                        " (use --force)");
      }
    }
  }
  // Fronts first, so no client keeps using an image whose I/O is about to fail.
  if (it != snapshots_.end()) {
    for (auto& [device, exposure] : it->second.images) {
      Status s = exposure->Remove();
      if (!s.ok())
        spdlog::warn("snapshot {}: removing image fronts: {}", id.ToString(), s.ToString());
    }
  }
  Status s = engine_->Destroy(id);
  if (!s.ok() && s.errnum() != ENOENT) return Annotate(s, "cannot destroy " + id.ToString());
  if (it != snapshots_.end()) snapshots_.erase(it);
  SaveRecordsLocked();
  spdlog::info("destroyed snapshot {}", id.ToString());
  return Status::Ok();
}

std::vector<SnapshotSummary> Service::Snapshots() {
  MutexLock lock(mu_);
  std::vector<SnapshotSummary> list;
  for (const auto& [id, entry] : snapshots_) {
    SnapshotSummary s;
    s.id = id;
    s.state = entry.snapshot->state();
    s.durability = entry.snapshot->durability();
    s.recovered_from = entry.snapshot->recovered_from();
    for (const auto& d : entry.snapshot->devices()) s.devices.push_back(d.name);
    list.push_back(std::move(s));
  }
  return list;
}

SnapshotView Service::SnapshotViewLocked(const SnapshotEntry& s) const {
  SnapshotView v;
  v.id = s.id;
  v.state = s.snapshot->state();
  v.durability = s.snapshot->durability();
  v.recovered_from = s.snapshot->recovered_from();
  v.storage = s.snapshot->storage_info();
  // As given at create, also for a recovered snapshot (the engine knows it by its file then).
  if (!s.storage.empty()) v.storage.path = s.storage;
  for (const auto& d : s.snapshot->devices()) {
    SnapshotDeviceView dv;
    dv.name = d.name;
    dv.errnum = d.errnum;
    if (auto img = s.images.find(d.name); img != s.images.end()) {
      dv.image = img->second->addresses();
    }
    v.devices.push_back(std::move(dv));
  }
  v.events = s.snapshot->events();
  return v;
}

Result<SnapshotView> Service::GetSnapshot(const Uuid& id) {
  MutexLock lock(mu_);
  BLKSNAP_ASSIGN_OR_RETURN(SnapshotEntry * entry, FindSnapshotLocked(id));
  return SnapshotViewLocked(*entry);
}

Result<EventWaitView> Service::WaitEvent(const Uuid& id, std::optional<uint64_t> after,
                                         std::chrono::milliseconds timeout,
                                         const std::function<bool()>& cancelled) {
  std::shared_ptr<Snapshot> snap;
  uint64_t cursor = 0;
  {
    MutexLock lock(mu_);
    BLKSNAP_ASSIGN_OR_RETURN(SnapshotEntry * entry, FindSnapshotLocked(id));
    snap = entry->snapshot;
    cursor = after.value_or(entry->consumed);
  }
  timeout = std::min<std::chrono::milliseconds>(timeout, kMaxWait);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    auto slice =
        std::clamp<std::chrono::milliseconds>(left, std::chrono::milliseconds(0), kCancelSlice);
    auto ev = snap->WaitEvent(cursor, slice);
    if (ev.ok()) {
      if (!after) {
        MutexLock lock(mu_);
        auto it = snapshots_.find(id);
        if (it != snapshots_.end()) it->second.consumed = std::max(it->second.consumed, ev->seq);
      }
      EventWaitView v;
      v.record = *ev;
      return v;
    }
    if (ev.status().errnum() == ENODEV) {
      return Status::Error(ENODEV, "snapshot " + id.ToString() + " was destroyed");
    }
    if (ev.status().errnum() != ETIMEDOUT) return ev.status();
    if (std::chrono::steady_clock::now() >= deadline) {
      EventWaitView v;
      v.timed_out = true;
      v.last_seq = snap->last_event_seq();
      return v;
    }
    if (cancelled && cancelled()) return Status::Error(ECANCELED, "client went away");
  }
}

}  // namespace blksnap::daemon
