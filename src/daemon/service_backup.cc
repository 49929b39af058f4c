// Service::Backup: one atomic snapshot of the named devices, each device's image backed up into a
// repository (issue 16; docs/backup.md), the snapshot destroyed.
//
// For each device the newest backup of the same device and host in the repository is the
// candidate parent. The backup is incremental when that parent has this device's current CBT
// generation, an older snap number, the same size and the repository's chunk size: only the
// extents CBT reports changed since the parent's snap number are read (Tracker::ChangedExtents,
// which fails with ESTALE if the generation changed meanwhile). Otherwise it is full, with the
// reason recorded in the manifest: "first", "generation", "size", "requested" (--full) or
// "parent-damaged" (`repo verify --repair` marked the parent: its index may name chunks that are
// gone, and a full backup stores them anew).
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
#include "repository/backup_image.h"
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
  BLKSNAP_ASSIGN_OR_RETURN(std::unique_ptr<repo::Repository> repository,
                           repo::Repository::OpenAt(request.repo, request.key_file));
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

  // The job's progress entry, from now until this function returns.
  if (!request.job.empty()) {
    MutexLock lock(progress_mu_);
    if (!progress_.try_emplace(request.job).second) {
      return Status::Error(EEXIST, "a backup job named '" + request.job + "' is running");
    }
  }
  struct EndJob {
    Service* service;
    const std::string& job;
    ~EndJob() {
      if (job.empty()) return;
      MutexLock lock(service->progress_mu_);
      service->progress_.erase(job);
    }
  } end_job{this, request.job};

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
    if (!request.job.empty()) {
      spec.progress_interval = std::chrono::milliseconds(100);
      const size_t position = &device - request.devices.data();
      spec.progress = [this, &request, &device, position](const repo::TransferProgress& p) {
        MutexLock lock(progress_mu_);
        BackupProgressView& v = progress_[request.job];
        v = {device,        position,     request.devices.size(), p.done_bytes,
             p.total_bytes, p.read_bytes, p.stored_bytes};
      };
    }
    const std::optional<repo::Manifest> last = LastBackup(existing, device, host);
    bool damaged = false;
    if (last && !request.full) {
      BLKSNAP_ASSIGN_OR_RETURN(damaged, repository->IsMarkedDamaged(last->id));
    }
    if (request.full) {
      spec.full_reason = "requested";
    } else if (!last) {
      spec.full_reason = "first";
    } else if (damaged) {
      spec.full_reason = "parent-damaged";  // repo verify --repair found damage under it
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

Result<BackupProgressView> Service::BackupProgress(const std::string& job) {
  MutexLock lock(progress_mu_);
  auto it = progress_.find(job);
  if (it == progress_.end()) return Status::Error(ENOENT, "no backup job '" + job + "' is running");
  return it->second;
}

Result<ServedBackupView> Service::ServeBackup(const ServeBackupRequest& request) {
  BLKSNAP_ASSIGN_OR_RETURN(std::unique_ptr<repo::Repository> opened,
                           repo::Repository::OpenAt(request.repo, request.key_file));
  std::shared_ptr<repo::Repository> repository = std::move(opened);
  BLKSNAP_ASSIGN_OR_RETURN(repo::Manifest m, repository->GetBackup(request.backup));
  BLKSNAP_ASSIGN_OR_RETURN(repo::Index index, repository->GetIndex(m.index));
  if (index.device_size != m.device_size) {
    return Status::Error(EBADMSG, "backup " + m.id + ": its index does not match it");
  }
  ServedBackupView view;
  view.backup = m.id;
  view.device = m.device;
  view.name = "backup-" + m.id;
  view.size = m.device_size;
  {
    MutexLock lock(mu_);
    if (shut_down_) return Status::Error(ESHUTDOWN, "blksnapd is stopping");
    if (served_.count(m.id)) return Status::Error(EEXIST, "backup " + m.id + " is served already");
  }
  auto image = std::make_shared<repo::BackupImage>(repository, std::move(index));
  ExposeOptions options;
  options.read_only = true;
  options.loop = request.loop;
  options.description = "blksnap backup " + m.id + " of " + m.device;
  BLKSNAP_ASSIGN_OR_RETURN(std::unique_ptr<Exposure> exposure,
                           fronts_->Expose(view.name, image, nullptr, options));
  view.fronts = exposure->addresses();
  MutexLock lock(mu_);
  if (shut_down_ || served_.count(m.id)) {
    exposure->Remove().IgnoreError();
    return Status::Error(EEXIST, "backup " + m.id + " is served already");
  }
  served_[m.id] = std::move(exposure);
  spdlog::info("serving backup {} of {} as {}", m.id, m.device, view.name);
  return view;
}

Status Service::UnserveBackup(const std::string& backup) {
  std::unique_ptr<Exposure> exposure;
  {
    MutexLock lock(mu_);
    auto it = served_.find(backup);
    if (it == served_.end()) return Status::Error(ENOENT, "backup " + backup + " is not served");
    exposure = std::move(it->second);
    served_.erase(it);
  }
  return exposure->Remove();
}

}  // namespace blksnap::daemon
