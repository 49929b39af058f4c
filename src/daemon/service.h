// Service: the daemon's state and the handlers of every control-protocol method.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "blksnap/engine.h"
#include "daemon/fronts.h"

namespace blksnap::daemon {

struct ServiceInfo {
  std::string state_dir;
  std::string control_path;
};

class Service {
 public:
  Service(std::unique_ptr<Engine> engine, std::unique_ptr<Fronts> fronts, ServiceInfo info);
  ~Service();

  // Runs one request. `cancelled` tells a long wait that its client went away.
  Result<nlohmann::json> Handle(const std::string& method, const nlohmann::json& params,
                                const std::function<bool()>& cancelled);

  // Destroys every snapshot, removes every front (ublk devices stopped and deleted), detaches
  // every device, stops the fronts and removes the device records of the state dir.
  void Shutdown();

  // Daemon start after a crash: re-attaches every device recorded in STATE_DIR/devices.json
  // (engine attach, NBD/FUSE/loop fronts again, ublk fronts re-attached with ublk Recover so
  // their I/O resumes), removes ublk image devices whose snapshot is gone, and remembers what
  // failed for `status`. Call once, before serving requests.
  void Restore();

 private:
  struct EventRecord {
    uint64_t seq = 0;
    SnapshotEvent event;
    std::chrono::system_clock::time_point when;
  };
  // Events of one snapshot, filled by its watcher thread; waiters read them by sequence number.
  struct EventLog {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<EventRecord> events;  // guarded by mu (the last kMaxEvents)
    uint64_t next_seq = 1;           // guarded by mu
    uint64_t consumed = 0;           // guarded by mu: queue cursor of wait-event without "after"
    bool closed = false;             // guarded by mu: snapshot destroyed / daemon stopping
  };
  struct DeviceEntry {
    std::string name;
    std::string path;
    dev_t st_dev = 0;
    ino_t st_ino = 0;
    std::shared_ptr<Tracker> tracker;
    FrontSet fronts;
    bool loop = false;      // asked for a loop front
    bool ublk = false;      // asked for a ublk front
    bool restored = false;  // re-attached at start from the state dir's records
  };
  // A recorded device that could not be re-attached at start (kept in the records so the next
  // start retries; `detach NAME` drops it and removes its ublk device).
  struct FailedRecord {
    nlohmann::json record;
    std::string error;
  };
  struct SnapshotEntry {
    Uuid id;
    std::string storage;
    bool loop = false;
    bool ublk = false;
    std::map<std::string, FrontSet> images;  // device name -> image fronts (after take)
    std::shared_ptr<EventLog> events;
    std::thread watcher;
    std::shared_ptr<std::atomic<bool>> stop;
  };

  Result<nlohmann::json> Version();
  Result<nlohmann::json> Attach(const nlohmann::json& params);
  Result<nlohmann::json> Detach(const nlohmann::json& params);
  Result<nlohmann::json> Devices();
  Result<nlohmann::json> CbtInfoOf(const nlohmann::json& params);
  Result<nlohmann::json> CbtRead(const nlohmann::json& params);
  Result<nlohmann::json> CbtChanges(const nlohmann::json& params);
  Result<nlohmann::json> CbtMarkDirty(const nlohmann::json& params);
  Result<nlohmann::json> SnapshotCreate(const nlohmann::json& params);
  Result<nlohmann::json> SnapshotAdd(const nlohmann::json& params);
  Result<nlohmann::json> SnapshotTake(const nlohmann::json& params);
  Result<nlohmann::json> SnapshotDestroy(const nlohmann::json& params);
  Result<nlohmann::json> SnapshotList();
  Result<nlohmann::json> SnapshotInfo(const nlohmann::json& params);
  Result<nlohmann::json> WaitEvent(const nlohmann::json& params,
                                   const std::function<bool()>& cancelled);
  Result<nlohmann::json> StatusReport();

  // Callers hold mu_.
  // Attaches path as name with the given block fronts; ublk_recover_id >= 0 re-attaches that
  // ublk device. Returns the device object.
  Status ResolveBlockFronts(const nlohmann::json& params, bool* loop, bool* ublk) const;
  Result<nlohmann::json> AttachLocked(const std::string& name, const std::string& path, bool loop,
                                      bool ublk, int ublk_recover_id, bool restored);
  // Writes STATE_DIR/devices.json (temp file, fsync, rename, fsync dir); logs failures.
  void SaveRecordsLocked();
  nlohmann::json RestartJsonLocked() const;
  Result<std::shared_ptr<Tracker>> FindTrackerLocked(const std::string& name) const;
  Result<Uuid> ParseId(const nlohmann::json& params) const;
  nlohmann::json DeviceJsonLocked(const DeviceEntry& d) const;
  nlohmann::json SnapshotJsonLocked(const SnapshotEntry& s, const Snapshot& snap) const;
  // Removes a snapshot entry (fronts of its images, watcher) after the engine destroyed it.
  void UnexposeImagesLocked(SnapshotEntry& entry);
  void ReleaseSnapshotLocked(SnapshotEntry& entry, std::vector<std::thread>* joins);
  void StartWatcher(SnapshotEntry& entry, std::shared_ptr<Snapshot> snap);

  static nlohmann::json EventJson(const EventRecord& r);

  const ServiceInfo info_;
  std::mutex mu_;
  std::unique_ptr<Engine> engine_;              // guarded by mu_ for composite operations
  std::unique_ptr<Fronts> fronts_;              // guarded by mu_
  std::map<std::string, DeviceEntry> devices_;  // guarded by mu_
  std::map<Uuid, SnapshotEntry> snapshots_;     // guarded by mu_
  bool shut_down_ = false;                      // guarded by mu_
  // Records are written only once Restore() has read the previous ones (a start that fails
  // before must leave a crashed daemon's records alone): guarded by mu_.
  bool records_loaded_ = false;
  // Set by Restore() when the state dir held records of a previous run: guarded by mu_.
  bool restarted_ = false;
  std::chrono::system_clock::time_point restart_time_;
  size_t ublk_recovered_ = 0;
  std::vector<std::string> restart_notes_;
  std::map<std::string, FailedRecord> failed_;  // name -> record that could not be re-attached
};

}  // namespace blksnap::daemon
