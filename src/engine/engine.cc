// The engine's entry point (Engine::Create) and the recovery of a durable snapshot; the class
// itself, with its design note (take, destroy, placement, locking), is in engine_impl.h.
#include "engine/engine_impl.h"

namespace blksnap {

// Recovery of a durable snapshot (see RecoverSnapshotOptions and docs/durable-snapshots.md):
// everything is validated before the first write; the header is then rewritten (a new log
// epoch, or the corruption found) and the areas installed as a take would.
Result<std::shared_ptr<Snapshot>> EngineImpl::RecoverSnapshot(
    const RecoverSnapshotOptions& options) {
  const Uuid& id = options.id;
  const std::string name =
      options.storage_file.empty() ? "difference storage" : options.storage_file;
  MutexLock take(take_mu_);
  if (FindSnapshot(id)) return Status::Error(EEXIST, "snapshot " + id.ToString() + " exists");
  auto events = std::make_shared<EventLog>();
  auto push = [events](SnapshotEvent e) { events->Push(std::move(e)); };
  BLKSNAP_ASSIGN_OR_RETURN(
      std::shared_ptr<DiffStorage> storage,
      DiffStorage::OpenExisting(name, options.storage_device, id, config_.diff_storage_minimum,
                                push, config_.env, config_.diff_storage_page_cache));
  const DiffStorageHeader h = storage->header();
  if (h.state == kStorageStateCreated) {
    storage->ArmRemoval();  // released when `storage` goes (a file blksnap made is removed)
    return Status::Error(ENOENT, "snapshot " + id.ToString() +
                                     " was not taken when it was last written; its storage is "
                                     "released");
  }
  if (h.log_start == 0 || h.devices.empty())
    return Status::Error(EINVAL, name + " records a taken snapshot without a chunk log");
  // The devices, as the storage lists them.
  std::vector<std::shared_ptr<TrackerImpl>> trackers;
  std::vector<ChunkGeometry> geometries;
  BLKSNAP_RETURN_IF_ERROR(ResolveRecoveredDevices(
      h, id, name,
      [this](const std::string& device) -> std::shared_ptr<TrackerImpl> {
        MutexLock lock(mu_);
        auto it = trackers_.find(device);
        return it == trackers_.end() ? nullptr : it->second;
      },
      &trackers, &geometries));
  // A crash log is torn only by a power loss, which corrupts its snapshot anyway.
  const bool torn_tail =
      static_cast<SnapshotDurability>(h.durability) != SnapshotDurability::kCrash;
  BLKSNAP_ASSIGN_OR_RETURN(
      ChunkLog::Scan scan,
      ChunkLog::Read(storage->device(), id, h.log_start, h.log_epoch, h.log_sealed, torn_tail));
  BLKSNAP_RETURN_IF_ERROR(CheckLogRecords(scan, geometries, storage->device().size(), name));
  // How it was found, and whether it can be trusted.
  bool power_lost = options.power_lost;
  for (const auto& t : trackers) {
    if (t->cbt_info().recovered_from == kCbtRecoveredPowerLoss) power_lost = true;
  }
  std::string from = (h.flags & kStorageFlagClosed) ? kSnapshotRecoveredCleanStop
                     : power_lost                   ? kSnapshotRecoveredPowerLoss
                                                    : kSnapshotRecoveredDaemonCrash;
  int corrupt =
      h.state == kStorageStateCorrupted ? (h.errnum ? static_cast<int>(h.errnum) : EIO) : 0;
  const auto durability = static_cast<SnapshotDurability>(h.durability);
  // A write-back that failed while nobody looked (DiffStorage::lost_writeback): the log on the
  // disk may say less than the daemon did.
  if (!corrupt) corrupt = storage->lost_writeback();
  if (!corrupt && power_lost && durability == SnapshotDurability::kCrash) corrupt = ESTALE;
  if (!corrupt && scan.damaged) corrupt = EUCLEAN;  // a committed page is damaged
  // A memory snapshot taken after it held copies it read, and died with the daemon.
  if (!corrupt && (h.flags & kStorageFlagVolatileNewer) && !(h.flags & kStorageFlagClosed))
    corrupt = ESTALE;
  if (!corrupt) corrupt = options.corrupt;
  if (!corrupt && options.check_originals) {
    for (const auto& t : trackers) {
      if (t->cbt_info().recovered_from.empty()) corrupt = ESTALE;  // changes unknown
    }
  }
  uint64_t torn = 0;  // records of a last commit whose data did not reach the disk
  if (!corrupt) {
    bool unreadable = false;
    BLKSNAP_RETURN_IF_ERROR(
        CheckLastCommit(storage->device(), h.log_sealed, torn_tail, &scan, &torn, &unreadable));
    if (unreadable) corrupt = EUCLEAN;  // the last commit's data cannot be vouched for
  }
  if (corrupt && h.state != kStorageStateCorrupted) {
    BLKSNAP_RETURN_IF_ERROR(storage->UpdateHeader([corrupt](DiffStorageHeader& hd) {
      hd.state = kStorageStateCorrupted;
      hd.errnum = static_cast<uint32_t>(corrupt);
    }));
  }
  BLKSNAP_RETURN_IF_ERROR(
      storage->Resume(scan.end, scan.cursor, scan.pages, /*continue_log=*/!corrupt));
  // Without the records of a torn commit, or past a torn crash page (chunk_log.h, Scan).
  if ((torn || scan.torn_page) && storage->log())
    BLKSNAP_RETURN_IF_ERROR(storage->log()->Compact(scan.records));
  storage->ArmRemoval();  // recovered: destroy removes a file blksnap made, as before

  auto snapshot = std::make_shared<SnapshotImpl>(id, storage, events, durability, from);
  snapshot->set_taken_at(h.taken);
  std::vector<SnapshotImpl::Member> members;
  for (size_t i = 0; i < trackers.size(); ++i) {
    snapshot->AddMember(trackers[i]);
    SnapshotImpl::Member m;
    m.tracker = trackers[i];
    m.area = MakeArea(snapshot, trackers[i], geometries[i], static_cast<uint16_t>(i));
    members.push_back(std::move(m));
  }
  for (const LogRecord& r : scan.records) {
    members[r.device].area->RestoreChunk(r.chunk,
                                         (r.flags & kRecordFlagZero) ? kZeroChunk : r.offset);
  }
  if (storage->log()) EnableCompaction(*storage, members);
  for (auto& m : members) {
    if (corrupt) m.area->SetCorrupted(corrupt);
    // Its place in the device's chain: after the snapshots taken before it.
    const size_t position = m.tracker->ChainPosition(h.taken);
    m.tracker->AddSnapshot(snapshot);
    // Writes held by the caller (AttachOptions::hold_writes: the daemon recovers the newest
    // snapshot first and lets writes in after the last) stay held.
    const bool held = m.tracker->gate().closed();
    if (!held) m.tracker->gate().Close();
    m.tracker->InsertArea(m.area, position);
    if (!held) m.tracker->gate().Open();
    m.image = std::make_shared<SnapImage>(m.area, m.tracker);
  }
  snapshot->SetTaken(members);
  if (corrupt) snapshot->OnCorrupt(members.front().tracker->name(), corrupt);
  {
    MutexLock lock(mu_);
    snapshots_[id] = snapshot;
  }
  return std::shared_ptr<Snapshot>(snapshot);
}

Result<std::unique_ptr<Engine>> Engine::Create(Config config) {
  BLKSNAP_RETURN_IF_ERROR(config.Validate());
  return std::unique_ptr<Engine>(new EngineImpl(config));
}

}  // namespace blksnap
