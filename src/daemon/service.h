// Service: the daemon's typed operations over the engine, the fronts and the state records.
//
// It knows nothing of JSON or sockets: methods.cc maps each control-protocol method to one
// operation here (parameters in, a result struct out), and the control server carries the
// bytes. service_test.cc drives it with memory devices and fake fronts.
//
// State: devices_ (attached devices, each with its Exposure) and snapshots_ (each with the
// Exposures of its images). The engine is the source of truth for snapshot states, events and
// CBT; the service adds names, paths, fronts and the records of STATE_DIR/devices.json.
//
// Durable snapshots (issue 15, docs/durable-snapshots.md): a taken snapshot of durability crash
// or power is recorded (records.h "snapshots") while it lives; a clean stop closes it
// (Engine::CloseSnapshot) instead of destroying it, and the next start brings it back
// (Engine::RecoverSnapshot) with its images exposed under the same names.
//
// Locking: mu_ guards the maps. It is held for bookkeeping, never across a freeze, a take, the
// creation of a ublk device or an event wait: attach reserves its name (pending_) and builds
// the device without mu_; a take marks its snapshot busy, freezes and switches without mu_ and
// takes mu_ again to expose the images. Operations that find a busy snapshot or a pending
// name answer EBUSY.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "blksnap/engine.h"
#include "blksnap/env.h"
#include "blksnap/mapped_file.h"
#include "daemon/fronts.h"
#include "daemon/records.h"
#include "repository/manifest.h"
#include "util/mutex.h"

namespace blksnap::daemon {

struct ServiceInfo {
  std::string state_dir;  // empty: no records (tests)
  std::string control_path;
  Env* env = nullptr;  // null: Env::Default()
  // Durable CBT (docs/cbt-format.md): each device's maps in STATE_DIR/cbt/NAME.cbt, sealed at a
  // clean stop, continued at the next attach of the same device under the same name (or at
  // the re-attach after a crash). false, or no state dir: CBT in memory only.
  bool durable_cbt = false;
  std::shared_ptr<MappedFiles> mapped_files;  // the state files' seam; null: PosixMappedFiles()
};

struct DeviceView {
  std::string name, path;
  uint64_t size = 0;
  std::optional<Uuid> snapshot;  // the newest snapshot holding the device
  std::vector<Uuid> snapshots;   // every one, oldest first
  CbtInfo cbt;
  FrontAddresses fronts;
  bool restored = false;  // re-attached at start from the records of a previous run
  bool restored_after_clean_stop = false;    // restored, and that run stopped cleanly
  std::vector<std::string> warnings;         // attach only: e.g. an outside loop device on the file
  std::optional<RollbackProgress> rollback;  // the last rollback onto it since it was attached
};

// snapshot rollback: the devices of snapshot `id` (all of them when empty) roll back to it.
struct RollbackRequest {
  Uuid id;
  std::vector<std::string> devices;
  bool force = false;  // even with a file system mounted on a device's front
};

struct FailedRecordView {
  std::string name, path, error;
  int ublk_dev_id = -1;
};

// A recorded durable snapshot the start brought back.
struct RecoveredSnapshotView {
  Uuid id;
  std::string recovered_from;  // kSnapshotRecovered*
  SnapshotState state = SnapshotState::kTaken;
};

// A recorded durable snapshot the start could not bring back (its record is dropped).
struct FailedSnapshotView {
  std::string id, storage_file, error;
};

// What the last start found of a previous run's records (null in status when there were none:
// a first start, or the previous run had no device when it stopped).
struct RestartView {
  std::chrono::system_clock::time_point time;
  bool clean_stop = false;  // the previous run stopped cleanly (Shutdown), else it crashed
  size_t ublk_recovered = 0;
  std::vector<std::string> notes;
  std::vector<FailedRecordView> failed;
  std::vector<RecoveredSnapshotView> snapshots;
  std::vector<FailedSnapshotView> snapshots_failed;
};

struct AttachRequest {
  std::string path;  // absolute
  std::string name;  // empty: the file name of path
  bool loop = false, ublk = false, blockdev = false;
};

struct CbtMapSlice {
  uint64_t offset = 0, count = 0, block_count = 0;
  std::string bytes;  // count map bytes
};

struct CbtChangesView {
  CbtInfo info;
  uint8_t since = 0;
  uint64_t bytes = 0;
  std::vector<ByteExtent> extents;
};

struct SnapshotRequest {
  std::string storage;  // absolute
  uint64_t limit = 0;
  bool loop = false, ublk = false, blockdev = false;
  bool force = false;  // a storage holding a signature or data may be overwritten
  SnapshotDurability durability = SnapshotDurability::kCrash;  // docs/durable-snapshots.md
  std::vector<std::string> devices;
};

struct TakeView {
  Uuid id;
  double took_ms = 0;
  int64_t held_us = 0, frozen_us = 0;
  std::vector<std::string> warnings;  // images that could not be exposed
};

struct SnapshotSummary {
  Uuid id;
  SnapshotState state = SnapshotState::kCreated;
  SnapshotDurability durability = SnapshotDurability::kPower;
  std::string recovered_from;  // Snapshot::recovered_from(): "" unless brought back at start
  std::vector<std::string> devices;
};

struct SnapshotDeviceView {
  std::string name;
  int errnum = 0;
  std::optional<FrontAddresses> image;  // after the take, when exposed
};

struct SnapshotView {
  Uuid id;
  SnapshotState state = SnapshotState::kCreated;
  SnapshotDurability durability = SnapshotDurability::kPower;
  std::string recovered_from;  // Snapshot::recovered_from(): "" unless brought back at start
  StorageInfo storage;
  std::vector<SnapshotDeviceView> devices;
  std::vector<SnapshotEventRecord> events;  // recent ones
};

// Service::Backup (service_backup.cc): the devices of one snapshot into a repository.
struct BackupRequest {
  std::vector<std::string> devices;
  std::string repo;              // the repository directory, absolute
  std::string key_file;          // absolute; empty: a plain repository
  bool full = false;             // read everything even if an incremental backup is possible
  std::optional<Uuid> snapshot;  // a taken snapshot to back up (left as it is); none: take one
  std::string storage;           // the storage of the snapshot taken; empty: STATE_DIR/backup
  int threads = 0;               // 0: the store's default (repo::BackupSpec::threads)
  std::string job;  // a name the client chose: BackupProgress(job) while it runs ("": none)
};

// Service::BackupProgress: where a running backup is (updated every 100 ms).
struct BackupProgressView {
  std::string device;                    // the device being backed up
  size_t device_index = 0, devices = 0;  // its position (from 0) among the request's devices
  uint64_t done_bytes = 0, total_bytes = 0, read_bytes = 0, stored_bytes = 0;
};

struct BackupView {
  Uuid snapshot;
  double snapshot_took_ms = 0;          // 0 when the snapshot was given
  std::vector<repo::Manifest> backups;  // one per device, in the request's order
};

// Service::ServeBackup: a backup point exposed read-only as "backup-<id>".
struct ServeBackupRequest {
  std::string repo, key_file;  // absolute
  std::string backup;          // backup id
  bool loop = false;           // also a loop device on its FUSE file
};

struct ServedBackupView {
  std::string backup, device, name;  // name: the NBD export and FUSE file
  uint64_t size = 0;
  FrontAddresses fronts;
};

struct EventWaitView {
  bool timed_out = false;
  SnapshotEventRecord record;  // when !timed_out
  uint64_t last_seq = 0;       // when timed_out: the newest event's seq
};

struct StatusView {
  std::string state_dir, control_path;
  FrontsInfo fronts;
  std::vector<DeviceView> devices;
  std::vector<SnapshotView> snapshots;
  std::optional<RestartView> restart;
};

// The note that restored devices and the restart report carry: after a crash (kRestartNote) or
// after a clean stop (kCleanRestartNote); RestartNote() picks one.
extern const char* const kRestartNote;
extern const char* const kCleanRestartNote;
const char* RestartNote(bool clean_stop);

class Service {
 public:
  Service(std::unique_ptr<Engine> engine, std::unique_ptr<Fronts> fronts, ServiceInfo info);
  ~Service();  // Shutdown()

  const FrontsInfo& fronts_info() const { return fronts_->info(); }

  Result<DeviceView> Attach(const AttachRequest& request) EXCLUDES(mu_);
  Status Detach(const std::string& name, bool force) EXCLUDES(mu_);
  std::vector<DeviceView> Devices() EXCLUDES(mu_);
  std::optional<RestartView> restart() EXCLUDES(mu_);

  Result<CbtInfo> GetCbtInfo(const std::string& name) EXCLUDES(mu_);
  Result<CbtMapSlice> ReadCbtMap(const std::string& name, uint64_t offset, uint64_t count)
      EXCLUDES(mu_);
  Result<CbtChangesView> CbtChanges(const std::string& name, uint64_t since,
                                    const std::optional<Uuid>& generation) EXCLUDES(mu_);
  // Checks every range before marking any.
  Status MarkDirty(const std::string& name, const std::vector<ByteExtent>& ranges) EXCLUDES(mu_);

  Result<Uuid> CreateSnapshot(const SnapshotRequest& request) EXCLUDES(mu_);
  Status AddDevice(const Uuid& id, const std::string& device) EXCLUDES(mu_);
  // Raises the snapshot's storage limit (the answer to a no_space event); the new limit.
  Result<uint64_t> SetStorageLimit(const Uuid& id, uint64_t limit) EXCLUDES(mu_);
  Result<TakeView> Take(const Uuid& id) EXCLUDES(mu_);
  // Refused (EBUSY) while a client uses one of its images, unless force.
  Status DestroySnapshot(const Uuid& id, bool force) EXCLUDES(mu_);
  std::vector<SnapshotSummary> Snapshots() EXCLUDES(mu_);
  // Starts rolling the devices back (Engine::Rollback; journals in the state dir) and
  // returns their names once each serves the snapshot's data; the merges go on in the background
  // (DeviceView::rollback). Refused (EBUSY) while a file system is mounted on a device's front,
  // unless force; every device is checked before the first starts.
  Result<std::vector<std::string>> Rollback(const RollbackRequest& request) EXCLUDES(mu_);
  // Gives up a rollback that cannot go on (its snapshot lost or corrupted, so a restart could not
  // resume it): removes the device's journal, so its original stays partly rolled back (CBT
  // marked every merged chunk) and the device may be rolled back or snapshotted anew. ENOENT
  // without a journal; EBUSY while a rollback runs on the device or failed while running (run
  // `snapshot rollback` again to resume it).
  Status AbandonRollback(const std::string& device) EXCLUDES(mu_);
  Result<SnapshotView> GetSnapshot(const Uuid& id) EXCLUDES(mu_);
  // Runs on the caller's thread for as long as the backup takes; mu_ only for the snapshot's
  // create, take and destroy. cancelled (polled between chunks; may be empty): true ends it
  // with ECANCELED, nothing published.
  Result<BackupView> Backup(const BackupRequest& request,
                            const std::function<bool()>& cancelled = {}) EXCLUDES(mu_);
  // The progress of the running backup whose request named `job`; ENOENT when none runs.
  Result<BackupProgressView> BackupProgress(const std::string& job) EXCLUDES(progress_mu_);
  // Exposes a backup point read-only on every front (EEXIST if it is served already); it stays
  // until UnserveBackup or the daemon stops.
  Result<ServedBackupView> ServeBackup(const ServeBackupRequest& request) EXCLUDES(mu_);
  Status UnserveBackup(const std::string& backup) EXCLUDES(mu_);
  // The first event after `after` (without it: after the last one a cursor-less wait returned).
  // `cancelled` is polled so a wait ends when its client goes away (ECANCELED).
  Result<EventWaitView> WaitEvent(const Uuid& id, std::optional<uint64_t> after,
                                  std::chrono::milliseconds timeout,
                                  const std::function<bool()>& cancelled) EXCLUDES(mu_);
  StatusView GetStatus() EXCLUDES(mu_);

  // Removes every front (images' and devices'; ublk devices stopped and deleted), then closes
  // every recorded durable snapshot (Engine::CloseSnapshot: kept for the next start) and destroys
  // the others (memory durability, not taken, or failing to close), detaches every device
  // (durable CBT sealed), stops the fronts and rewrites the records of the state dir as a clean
  // stop's: every device (with the fronts it asked for, no ublk dev_id), the records that failed
  // to re-attach, and the closed snapshots, so the next start brings them back. Only `detach`
  // forgets a device, only `snapshot destroy` a snapshot.
  void Shutdown() EXCLUDES(mu_);

  // Daemon start: re-attaches every device recorded in STATE_DIR/devices.json, then recovers
  // every recorded durable snapshot (Engine::RecoverSnapshot) and exposes its images as a take
  // does. After a crash, ublk fronts (of devices and of recovered images) come back through ublk
  // Recover (their I/O resumes) and ublk image devices whose snapshot is gone are removed; after
  // a clean stop, the fronts are created anew. A snapshot that cannot be recovered is logged,
  // reported (restart.snapshots_failed) and its record dropped. Remembers what failed, and which
  // kind of restart it was, for `status`. Call once, before serving.
  void Restore() EXCLUDES(mu_);

 private:
  struct DeviceEntry {
    std::string name, path;
    dev_t st_dev = 0;
    ino_t st_ino = 0;
    std::shared_ptr<Tracker> tracker;
    std::unique_ptr<Exposure> fronts;
    bool loop = false, ublk = false;  // fronts asked for
    bool restored = false;
  };
  struct SnapshotEntry {
    Uuid id;
    std::string storage;
    bool loop = false, ublk = false;
    bool busy = false;                                        // a take is running without mu_
    std::map<std::string, std::unique_ptr<Exposure>> images;  // device name -> image fronts
    std::shared_ptr<Snapshot> snapshot;
    uint64_t consumed = 0;  // cursor of wait-event calls without "after"
  };
  struct FailedRecord {
    DeviceRecord record;
    std::string error;
  };

  Status ResolveBlockFronts(bool blockdev, bool* loop, bool* ublk) const;
  // Through the Env: a regular file or block device, else a one-line error.
  Result<FileStat> StatOriginal(const std::string& path);
  // Opens, attaches and exposes a device without mu_ (the name is reserved in pending_).
  // st: the original as AttachReserved found it (StatOriginal).
  Result<DeviceEntry> BuildDevice(const std::string& name, const std::string& path,
                                  const FileStat& st, bool loop, bool ublk, int ublk_recover_id,
                                  bool restored, bool hold_writes = false) EXCLUDES(mu_);
  // STATE_DIR/rollback-NAME.journal, or "" without a state dir.
  std::string RollbackJournalPath(const std::string& name) const;
  bool HasRollbackJournal(const std::string& name);
  // Restart: each device with a journal resumes its rollback (its snapshots recovered, its I/O
  // still held); a failure is logged and noted in the restart report.
  void ResumeRollbacks(const std::set<std::string>& devices) EXCLUDES(mu_);
  // STATE_DIR/cbt/NAME.cbt, or "" when CBT is not durable.
  std::string CbtPath(const std::string& name) const;
  // EINVAL if the state dir lies on a tracked device or its fronts (engine CheckNotOnTracked),
  // or, with ublk_recover_id >= 0, on that ublk device (about to be recovered). Before each use
  // of the state dir: an attach (its CBT state file), a rewrite of the records.
  Status CheckStateDir(int ublk_recover_id = -1) const;
  // hold_writes: AttachOptions::hold_writes (a recorded snapshot's member, at a restart).
  Result<DeviceView> AttachReserved(const std::string& name, const std::string& path, bool loop,
                                    bool ublk, int ublk_recover_id, bool restored,
                                    bool hold_writes = false) EXCLUDES(mu_);
  Result<std::shared_ptr<Tracker>> FindTrackerLocked(const std::string& name) const REQUIRES(mu_);
  Result<SnapshotEntry*> FindSnapshotLocked(const Uuid& id) REQUIRES(mu_);
  DeviceView DeviceViewLocked(const DeviceEntry& d) const REQUIRES(mu_);
  SnapshotView SnapshotViewLocked(const SnapshotEntry& s) const REQUIRES(mu_);
  // ublk_recover_ids: device name -> the ublk image device a crashed run left (restart only).
  void ExposeImagesLocked(SnapshotEntry& entry, std::vector<std::string>* warnings,
                          const std::map<std::string, int>& ublk_recover_ids = {}) REQUIRES(mu_);
  // The record of a durable snapshot the next start can recover (or release, if not taken), or
  // nullopt (memory durability, or no storage file).
  std::optional<SnapshotRecord> SnapshotRecordLocked(const SnapshotEntry& entry) const
      REQUIRES(mu_);
  // The records of the current state (devices, failed records, ublk images), not clean_stop.
  Records CollectRecordsLocked() const REQUIRES(mu_);
  void SaveRecordsLocked() REQUIRES(mu_) { WriteRecordsLocked(CollectRecordsLocked()); }
  void WriteRecordsLocked(const Records& records) REQUIRES(mu_);
  void RestoreImagesLocked(const Records& records) REQUIRES(mu_);
  // Restart: brings back one recorded durable snapshot (corrupted with `corrupt` if non-zero),
  // or reports why not (false).
  bool RecoverRecordedSnapshot(const SnapshotRecord& rec, const std::vector<ImageRecord>& images,
                               bool clean_stop, bool power_lost, int corrupt) EXCLUDES(mu_);
  // Removes a ublk image device a crashed run left (a restart note says so).
  void RemoveOrphanImageLocked(const ImageRecord& img) REQUIRES(mu_);
  // Removes the ublk image devices a crashed run left for this snapshot, except those of the
  // images `recovered` exposes again.
  void RemoveOrphanImagesLocked(const std::string& snapshot, const std::vector<ImageRecord>& images,
                                const SnapshotEntry* recovered = nullptr) REQUIRES(mu_);
  std::optional<RestartView> RestartLocked() const REQUIRES(mu_);

  const ServiceInfo info_;
  Env& env_;
  const std::string boot_id_;  // this boot's (MappedFiles::BootId), recorded to tell a power loss
  std::unique_ptr<RecordStore> records_;  // null without a state dir
  const std::unique_ptr<Engine> engine_;
  const std::unique_ptr<Fronts> fronts_;

  mutable Mutex mu_;
  std::map<std::string, DeviceEntry> devices_ GUARDED_BY(mu_);
  std::set<std::string> pending_ GUARDED_BY(mu_);  // names being attached without mu_
  std::map<Uuid, SnapshotEntry> snapshots_ GUARDED_BY(mu_);
  std::map<std::string, std::unique_ptr<Exposure>> served_ GUARDED_BY(mu_);  // backup id -> fronts
  // Running backups by job name (Backup registers and removes its own).
  mutable Mutex progress_mu_;
  std::map<std::string, BackupProgressView> progress_ GUARDED_BY(progress_mu_);
  bool shut_down_ GUARDED_BY(mu_) = false;
  // Records are written only once Restore() has read the previous ones (a start that fails
  // before must leave a crashed daemon's records alone).
  bool records_loaded_ GUARDED_BY(mu_) = false;
  std::optional<RestartView> restart_ GUARDED_BY(mu_);
  std::map<std::string, FailedRecord> failed_ GUARDED_BY(mu_);  // records not re-attached
  // Rollbacks a restart could not resume (journal kept): shown as the device's rollback, failed.
  std::map<std::string, RollbackProgress> stuck_rollbacks_ GUARDED_BY(mu_);
};

}  // namespace blksnap::daemon
