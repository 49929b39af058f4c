// Service: the device records of STATE_DIR/devices.json (daemon/records.h) and the restart
// from them (after a clean stop or a crash). See service.h for the state and the locking.
//
// Records: each attached device (name, path, requested fronts, ublk dev_id) and each ublk image
// device, rewritten atomically through the Env after every change; a detach drops the device
// (the file goes with the last one). Restore() at the next start re-attaches every recorded
// device, whatever ended the previous run:
//   - a clean stop (Shutdown() rewrote the records with "clean_stop": true, no ublk dev_ids, no
//     images): the fronts are created anew and durable CBT continues from its sealed state file;
//   - a crash (the running daemon's records): ublk fronts come back through ublk Recover (file
//     systems on them never see an error), the image devices are removed (their snapshots died
//     with the daemon) and durable CBT continues where its state file allows.
// A record keeps its ublk dev_id only while that ublk device may still wait for recovery (a
// crash's record, kept through a clean stop if it failed to re-attach).
//
// Durable snapshots (issue 15): each snapshot of durability crash or power with a storage file is
// recorded ("snapshots": id, storage, storage_file, durability, taken, limit, image fronts,
// devices), rewritten at create, add, take, set-limit and destroy. A clean stop closes the taken
// ones (Engine::CloseSnapshot, service.cc) and destroys the others. A created snapshot's record
// lets the start after a crash release its storage (RecoverSnapshot: ENOENT, a note), or recover
// it if the crash came after its take but before the record said so. After the devices are
// re-attached, Restore() hands each record to Engine::RecoverSnapshot (power_lost when the records
// come from a crashed run of another boot) and, on success, re-creates the snapshot's entry and
// exposes its images exactly as a take does: the same NBD export names and FUSE files, new loop
// devices, and ublk image devices recovered after a crash ("images" of that snapshot) or created
// anew after a clean stop. A snapshot that does not come back is logged, reported
// (restart.snapshots_failed), its crash's ublk image devices removed and its record dropped; its
// storage file is left alone. Snapshots of memory durability die with the daemon, as before.
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <set>

#include "daemon/service.h"
#include "util/block_topology.h"

namespace blksnap::daemon {

// The daemon's own files never live on a device it tracks (docs/design.md, "The daemon's own
// files"): their writes would be changes of that device, and a device's CBT state file on its
// own front would be synced from inside that device's write path. The state dir is fixed at
// start, so it lands on a front only when something is mounted over it (or over a parent)
// from a front while the daemon runs, or when a ublk front holding it survived a crash and is
// being recovered.
Status Service::CheckStateDir(int ublk_recover_id) const {
  if (info_.state_dir.empty()) return Status::Ok();
  const std::string what = "state dir " + info_.state_dir;
  BLKSNAP_RETURN_IF_ERROR(engine_->CheckNotOnTracked(info_.state_dir, what));
  topology::Node dir, ublk;
  const std::string ublk_path = "/dev/ublkb" + std::to_string(ublk_recover_id);
  if (ublk_recover_id < 0 || !topology::NodeForPath(info_.state_dir, &dir) ||
      !topology::NodeForPath(ublk_path, &ublk) || ublk.is_file) {
    return Status::Ok();
  }
  for (const auto& node : topology::ResolveLower(env_.SysfsRoot(), dir)) {
    if (!node.is_file && node.rdev == ublk.rdev) {
      return Status::Error(EINVAL, what + " is on " + ublk_path +
                                       ", the ublk front being recovered; its state file would be "
                                       "read and synced through a device that waits for it");
    }
  }
  return Status::Ok();
}

void Service::WriteRecordsLocked(const Records& records) {
  if (!records_ || !records_loaded_) return;
  if (Status s = CheckStateDir(); !s.ok()) {
    spdlog::error("not writing {}: {}", records_->path(), s.ToString());
    return;
  }
  Status s = records_->Save(records);
  if (!s.ok()) spdlog::error("cannot write {}: {}", records_->path(), s.ToString());
}

std::optional<SnapshotRecord> Service::SnapshotRecordLocked(const SnapshotEntry& entry) const {
  const Snapshot& snap = *entry.snapshot;
  const SnapshotState state = snap.state();
  if (snap.durability() == SnapshotDurability::kMemory || state == SnapshotState::kDestroyed) {
    return std::nullopt;
  }
  const StorageInfo storage = snap.storage_info();
  if (storage.file.empty()) return std::nullopt;  // nothing to recover from
  SnapshotRecord r;
  r.id = entry.id.ToString();
  r.storage = entry.storage;
  r.storage_file = storage.file;
  r.durability = snap.durability();
  r.taken = state != SnapshotState::kCreated;
  r.taken_at = snap.taken_at();
  r.taking = entry.busy && state == SnapshotState::kCreated;
  r.limit = storage.limit;
  r.loop = entry.loop;
  r.ublk = entry.ublk;
  for (const auto& d : snap.devices()) r.devices.push_back(d.name);
  return r;
}

Records Service::CollectRecordsLocked() const {
  Records records;
  records.pid = ::getpid();
  records.boot_id = boot_id_;
  for (const auto& [name, d] : devices_) {
    DeviceRecord r;
    r.name = name;
    r.path = d.path;
    r.loop = d.loop;
    r.ublk = d.ublk;
    r.ublk_dev_id = d.fronts ? d.fronts->addresses().ublk_dev_id : -1;
    r.size = d.tracker->size();
    r.logical_block_size = d.tracker->logical_block_size();
    records.devices.push_back(std::move(r));
  }
  for (const auto& [name, f] : failed_) records.devices.push_back(f.record);
  for (const auto& [id, entry] : snapshots_) {
    for (const auto& [device, exposure] : entry.images) {
      int dev_id = exposure->addresses().ublk_dev_id;
      auto d = devices_.find(device);
      if (dev_id < 0 || d == devices_.end()) continue;
      ImageRecord r;
      r.snapshot = id.ToString();
      r.device = device;
      r.ublk_dev_id = dev_id;
      r.size = d->second.tracker->size();
      r.logical_block_size = d->second.tracker->logical_block_size();
      records.images.push_back(std::move(r));
    }
    if (auto r = SnapshotRecordLocked(entry)) records.snapshots.push_back(std::move(*r));
  }
  return records;
}

std::optional<RestartView> Service::RestartLocked() const {
  if (!restart_) return std::nullopt;
  RestartView v = *restart_;
  for (const auto& [name, f] : failed_) {
    v.failed.push_back({name, f.record.path, f.error, f.record.ublk_dev_id});
  }
  return v;
}

void Service::RestoreImagesLocked(const Records& records) {
  for (const auto& img : records.images) {
    if (img.ublk_dev_id < 0) continue;
    // A recorded durable snapshot's image: recovered with it, or removed if it does not come back.
    if (std::any_of(records.snapshots.begin(), records.snapshots.end(),
                    [&](const SnapshotRecord& s) { return s.id == img.snapshot; })) {
      continue;
    }
    RemoveOrphanImageLocked(img);
  }
}

void Service::RemoveOrphanImageLocked(const ImageRecord& img) {
  Status s = fronts_->RemoveOrphanUblk(img.ublk_dev_id, img.size, img.logical_block_size);
  std::string note = "snapshot " + img.snapshot + " image of '" + img.device + "' on /dev/ublkb" +
                     std::to_string(img.ublk_dev_id) + " is gone" +
                     (s.ok() ? ": device removed" : ": cannot remove it: " + s.ToString());
  spdlog::warn("{}", note);
  restart_->notes.push_back(note);
}

void Service::RemoveOrphanImagesLocked(const std::string& snapshot,
                                       const std::vector<ImageRecord>& images,
                                       const SnapshotEntry* recovered) {
  for (const auto& img : images) {
    if (img.snapshot != snapshot || img.ublk_dev_id < 0) continue;
    if (recovered && recovered->images.count(img.device)) continue;  // exposed again
    RemoveOrphanImageLocked(img);
  }
}

bool Service::RecoverRecordedSnapshot(const SnapshotRecord& rec,
                                      const std::vector<ImageRecord>& images, bool clean_stop,
                                      bool power_lost, int corrupt) {
  const auto id = Uuid::Parse(rec.id);  // the parser checked it
  Result<std::shared_ptr<Snapshot>> snap = Status::Error(EINVAL, "bad snapshot id");
  if (id) {
    snap = engine_->RecoverSnapshot({.storage_file = rec.storage_file,
                                     .id = *id,
                                     .power_lost = power_lost,
                                     .corrupt = corrupt});
  }
  MutexLock lock(mu_);
  if (!snap.ok() && !rec.taken && snap.status().errnum() == ENOENT) {
    // Created, never taken (the crash came first): the engine released its storage.
    std::string note = "snapshot " + rec.id + " was created but not taken before the restart: " +
                       "its storage is released";
    spdlog::info("{}", note);
    restart_->notes.push_back(note);
    return false;
  }
  if (!snap.ok()) {
    spdlog::error("cannot recover snapshot {} from {}: {}", rec.id, rec.storage_file,
                  snap.status().ToString());
    restart_->snapshots_failed.push_back(
        {rec.id, rec.storage_file, std::string(snap.status().message())});
    RemoveOrphanImagesLocked(rec.id, images);
    return false;
  }
  SnapshotEntry entry;
  entry.id = *id;
  entry.storage = rec.storage;
  entry.loop = rec.loop && fronts_->info().fuse;
  entry.ublk = rec.ublk && fronts_->info().ublk;
  entry.snapshot = *snap;
  if (entry.loop != rec.loop || entry.ublk != rec.ublk) {
    restart_->notes.push_back("snapshot " + rec.id + ": its images get no " +
                              (entry.ublk != rec.ublk ? "ublk" : "loop") +
                              " devices: that front is not available any more");
  }
  std::map<std::string, int> ublk_ids;  // after a crash: the image devices waiting for recovery
  if (!clean_stop) {
    for (const auto& img : images) {
      if (img.snapshot == rec.id && img.ublk_dev_id >= 0) ublk_ids[img.device] = img.ublk_dev_id;
    }
  }
  std::vector<std::string> warnings;
  ExposeImagesLocked(entry, &warnings, ublk_ids);
  for (auto& w : warnings) restart_->notes.push_back("snapshot " + rec.id + ": " + w);
  for (const auto& [device, exposure] : entry.images) {
    if (exposure->addresses().ublk_recovered) ++restart_->ublk_recovered;
  }
  // A crash's ublk image device nobody took over (the image not exposed: corrupted, or its
  // fronts failed) is removed, or its readers would wait for ever.
  if (!clean_stop) RemoveOrphanImagesLocked(rec.id, images, &entry);
  const std::string from = entry.snapshot->recovered_from();
  const SnapshotState state = entry.snapshot->state();
  restart_->snapshots.push_back({*id, from, state});
  spdlog::info("recovered snapshot {} ({}, after {}) from {}", rec.id, ToString(state),
               from.empty() ? "?" : from, rec.storage_file);
  snapshots_.emplace(*id, std::move(entry));
  return true;
}

void Service::Restore() {
  std::vector<DeviceRecord> devices;
  Records recorded;  // the snapshots and images to recover, and how the last run ended
  bool power_lost = false;
  {
    MutexLock lock(mu_);
    if (!records_ || records_loaded_) return;
    records_loaded_ = true;
    auto loaded = records_->Load();
    if (loaded.ok() && !loaded->has_value()) return;  // first start, or the last stop was clean
    restart_.emplace();
    restart_->time = std::chrono::system_clock::now();
    if (!loaded.ok()) {
      std::string note = loaded.status().ToString();
      spdlog::error("{}", note);
      restart_->notes.push_back(note);
      return;
    }
    const ParsedRecords& parsed = **loaded;
    for (const auto& problem : parsed.problems) {
      spdlog::error("{}: {}", records_->path(), problem);
      restart_->notes.push_back(records_->path() + ": " + problem);
    }
    restart_->clean_stop = parsed.records.clean_stop;
    spdlog::log(restart_->clean_stop ? spdlog::level::info : spdlog::level::warn,
                "{} (records of pid {} in {})", RestartNote(restart_->clean_stop),
                parsed.records.pid, records_->path());
    RestoreImagesLocked(parsed.records);  // none after a clean stop
    devices = parsed.records.devices;
    recorded.snapshots = parsed.records.snapshots;
    recorded.images = parsed.records.images;
    recorded.clean_stop = parsed.records.clean_stop;
    power_lost = WrittenBeforeAPowerLoss(parsed.records, boot_id_);
  }
  // The members of a recorded taken snapshot are attached with their writes held (their fronts,
  // a recovered ublk device replaying queued writes above all, would otherwise write the
  // original before the snapshot preserves it) until the snapshots are recovered.
  std::set<std::string> held;
  for (const auto& snap : recorded.snapshots) {
    if (snap.taken) held.insert(snap.devices.begin(), snap.devices.end());
  }
  std::set<std::string> rolling;  // a rollback to resume
  for (const auto& rec : devices) {
    if (!ValidateDeviceName(rec.name).ok() || !HasRollbackJournal(rec.name)) continue;
    rolling.insert(rec.name);
    held.insert(rec.name);
  }
  for (const auto& rec : devices) {
    std::string name = rec.name;
    Status s = ValidateDeviceName(name);
    if (s.ok() && (rec.path.empty() || rec.path[0] != '/')) {
      s = Status::Error(EINVAL, "bad path '" + rec.path + "'");
    }
    if (s.ok() && rec.ublk && !fronts_->info().ublk) {
      s = Status::Error(ENOTSUP, "ublk is not available any more");
    }
    if (s.ok()) {
      auto v = AttachReserved(name, rec.path, rec.loop, rec.ublk, rec.ublk ? rec.ublk_dev_id : -1,
                              true, held.count(name) > 0);
      if (!v.ok()) s = v.status();
    }
    if (!s.ok()) {
      spdlog::error("cannot re-attach recorded device '{}' ({}): {}", name, rec.path, s.ToString());
      MutexLock lock(mu_);
      if (name.empty() || failed_.count(name)) name = "?" + std::to_string(failed_.size());
      failed_[name] = FailedRecord{rec, std::string(s.message())};
    }
  }
  // Snapshots after every device: RecoverSnapshot needs its members attached. The newest
  // first: a recovered snapshot lets its devices' writes in, and they must be preserved in the
  // newest one (older snapshots read through it; area_chain.h). An older snapshot of a device
  // whose newer snapshot was lost comes back corrupted (ESTALE): it read chunks through it.
  std::vector<SnapshotRecord> snapshots = recorded.snapshots;
  std::stable_sort(snapshots.begin(), snapshots.end(),
                   [](const auto& a, const auto& b) { return a.taken_at > b.taken_at; });
  std::set<std::string> lost_devices;
  for (const auto& rec : snapshots) {
    int corrupt = 0;
    for (const auto& d : rec.devices) {
      if (lost_devices.count(d)) corrupt = ESTALE;
    }
    const bool recovered =
        RecoverRecordedSnapshot(rec, recorded.images, recorded.clean_stop, power_lost, corrupt);
    // Lost for the older snapshots: not recovered, or recovered without all its records (a
    // crash snapshot after a power loss, or changes it cannot vouch for: ESTALE; a damaged log
    // page: EUCLEAN). An overflow (ENOSPC) or a half-done destroy (ECANCELED) lost nothing.
    bool lost = !recovered && (rec.taken || rec.taking);
    if (auto id = Uuid::Parse(rec.id); recovered && id) {
      if (auto snap = engine_->FindSnapshot(*id)) {
        for (const auto& d : snap->devices())
          lost = lost || d.errnum == ESTALE || d.errnum == EUCLEAN;
      }
    }
    if (lost) lost_devices.insert(rec.devices.begin(), rec.devices.end());
  }
  ResumeRollbacks(rolling);
  // Writes are let in once every snapshot of their device is back in its chain (a snapshot
  // that could not be recovered is reported and gone).
  for (const auto& name : held) engine_->ReleaseWrites(name).IgnoreError();
  MutexLock lock(mu_);
  spdlog::warn(
      "restored {} device(s), {} ublk front(s) recovered, {} failed; {} snapshot(s) recovered, {} "
      "failed",
      devices_.size(), restart_->ublk_recovered, failed_.size(), restart_->snapshots.size(),
      restart_->snapshots_failed.size());
  SaveRecordsLocked();
}

}  // namespace blksnap::daemon
