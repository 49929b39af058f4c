// Service::Backup: one atomic snapshot of the named devices, each device's image backed up into a
// repository (issue 16; docs/backup.md), the snapshot destroyed.
//
// For each device the newest backup of the same device and host in the repository is the
// candidate parent. The backup is incremental when that parent has this device's current CBT
// generation, an older snap number, the same size and the repository's chunk size: only the
// extents CBT reports changed since the parent's snap number are read (Tracker::ChangedExtents,
// which fails with ESTALE if the generation changed meanwhile). Otherwise it is full, with the
// reason recorded in the manifest: "first", "generation", "size" or "requested" (--full).
//
// The snapshot the backup takes is of durability memory (it lives only as long as the backup)
// with its storage in STATE_DIR/backup (or the request's storage); a given snapshot (--snapshot)
// must be taken and is left as it is. The backup runs on the control connection's thread,
// without the service mutex: devices and snapshots keep being served meanwhile.
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "daemon/service.h"
#include "repository/backup.h"
#include "repository/object_store.h"

namespace blksnap::daemon {
namespace {

// The newest backup of `device` from `host`, if any.
std::optional<repo::Manifest> LastBackup(const std::vector<repo::Manifest>& all,
                                         const std::string& device, const std::string& host) {
  std::optional<repo::Manifest> last;
  for (const repo::Manifest& m : all) {
    if (m.device == device && m.host == host && (!last || m.id > last->id)) last = m;
  }
  return last;
}

}  // namespace

Result<BackupView> Service::Backup(const BackupRequest& request,
                                   const std::function<bool()>& cancelled) {
  if (request.devices.empty()) return Status::Error(EINVAL, "no device to back up");
  std::optional<std::vector<uint8_t>> key;
  if (!request.key_file.empty()) {
    BLKSNAP_ASSIGN_OR_RETURN(key, repo::ReadKeyFile(request.key_file));
  }
  BLKSNAP_ASSIGN_OR_RETURN(std::unique_ptr<repo::ObjectStore> store,
                           repo::OpenLocalStore(request.repo));
  std::optional<std::span<const uint8_t>> key_span;
  if (key) key_span = std::span<const uint8_t>(*key);
  BLKSNAP_ASSIGN_OR_RETURN(std::unique_ptr<repo::Repository> repository,
                           repo::Repository::Open(std::move(store), key_span));
  BLKSNAP_ASSIGN_OR_RETURN(std::vector<repo::Manifest> existing, repository->ListBackups());

  // The snapshot: given (taken, holding every device), or created and taken here.
  BackupView view;
  Uuid id;
  bool ours = false;
  if (request.snapshot) {
    id = *request.snapshot;
    BLKSNAP_ASSIGN_OR_RETURN(SnapshotView s, GetSnapshot(id));
    if (s.state != SnapshotState::kTaken) {
      return Status::Error(EINVAL, "snapshot " + id.ToString() + " is not taken");
    }
  } else {
    SnapshotRequest sr;
    sr.storage = !request.storage.empty()  ? request.storage
                 : info_.state_dir.empty() ? std::string("/var/tmp")
                                           : info_.state_dir + "/backup";
    if (request.storage.empty() && !info_.state_dir.empty() &&
        ::mkdir(sr.storage.c_str(), 0700) != 0 && errno != EEXIST) {
      return Status::FromErrno("creating " + sr.storage);
    }
    sr.durability = SnapshotDurability::kMemory;
    sr.devices = request.devices;
    BLKSNAP_ASSIGN_OR_RETURN(id, CreateSnapshot(sr));
    ours = true;
    auto taken = Take(id);
    if (!taken.ok()) {
      DestroySnapshot(id, true).IgnoreError();
      return std::move(taken).status();
    }
    view.snapshot_took_ms = taken->took_ms;
  }
  view.snapshot = id;
  struct DestroyAtEnd {
    Service* service;
    Uuid id;
    bool ours;
    ~DestroyAtEnd() {
      if (ours) service->DestroySnapshot(id, true).IgnoreError();
    }
  } destroy_at_end{this, id, ours};

  std::shared_ptr<Snapshot> snapshot = engine_->FindSnapshot(id);
  if (!snapshot) return Status::Error(ENOENT, "snapshot " + id.ToString() + " is gone");
  const std::string host = repo::HostName();
  for (const std::string& device : request.devices) {
    std::shared_ptr<Tracker> tracker = engine_->FindTracker(device);
    std::shared_ptr<BlockDevice> image = snapshot->image(device);
    if (!tracker || !image) {
      return Status::Error(ENOENT, "device " + device + " is not in snapshot " + id.ToString());
    }
    const CbtInfo cbt = tracker->cbt_info();
    repo::BackupSpec spec;
    spec.device = device;
    spec.host = host;
    spec.cbt_generation = cbt.generation_id.ToString();
    spec.snap_number = cbt.changes_number;
    spec.threads = request.threads;
    spec.cancelled = cancelled;
    const std::optional<repo::Manifest> last = LastBackup(existing, device, host);
    if (request.full) {
      spec.full_reason = "requested";
    } else if (!last) {
      spec.full_reason = "first";
    } else if (last->cbt_generation != spec.cbt_generation ||
               last->snap_number >= spec.snap_number) {
      spec.full_reason = "generation";
    } else if (last->device_size != image->size() || last->chunk_size != repository->chunk_size()) {
      spec.full_reason = "size";
    } else {
      auto changed =
          tracker->ChangedExtents(static_cast<uint8_t>(last->snap_number), cbt.generation_id);
      if (changed.ok()) {
        BLKSNAP_ASSIGN_OR_RETURN(spec.parent_index, repository->GetIndex(last->index));
        spec.parent = last;
        spec.changed = std::move(changed).value();
      } else if (changed.status().errnum() == ESTALE) {
        spec.full_reason = "generation";
      } else {
        return std::move(changed).status();
      }
    }
    if (!spec.parent) {
      spdlog::info("backup of {}: full ({})", device, spec.full_reason);
    }
    BLKSNAP_ASSIGN_OR_RETURN(repo::Manifest m, repo::RunBackup(*repository, *image, spec));
    spdlog::info("backup {} of {}: {} bytes read, {} new chunks ({} bytes stored) in {:.2f} s",
                 m.id, device, m.stats.read_bytes, m.stats.new_chunks, m.stats.new_bytes_stored,
                 m.stats.seconds);
    view.backups.push_back(std::move(m));
  }
  return view;
}

}  // namespace blksnap::daemon
