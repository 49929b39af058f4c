// Service: the daemon's state machine over the engine and the fronts.
//
// State: devices_ (attached devices with their fronts) and snapshots_ (each with its image
// fronts and an event log). The engine is the source of truth for snapshot states and CBT;
// the service adds names, paths and addresses.
//
// Locking: mu_ serialises every state-changing request (they are rare and short), and is
// never held while waiting for events. A take holds mu_ while the engine freezes file systems
// through the fronts; FUSE threads serving that freeze never take mu_, so it cannot deadlock.
// Each snapshot has a watcher thread that moves engine events (Snapshot::WaitEvent) into its
// EventLog; wait-event requests read the log under the log's own mutex, so any number of
// clients can wait at once, and status can show recent events.
//
// Every request either fully succeeds or leaves the state as it was: attach undoes the engine
// attach if a front fails, snapshot create destroys the snapshot if a device cannot be added,
// mark-dirty checks every range before marking any.
//
// Records (survive a crash): STATE_DIR/devices.json lists each attached device (name, path,
// requested fronts, ublk dev_id) and each ublk image device, rewritten atomically (temp file,
// fsync, rename, fsync of the dir) under mu_ after every change. A clean Shutdown() removes it;
// a killed daemon leaves it, and Restore() at the next start re-attaches the devices (ublk
// fronts through ublk Recover, so file systems on them never see an error) and removes the
// image devices (their snapshots died with the daemon). CBT and snapshots are in memory only:
// a restored device starts a new CBT generation, which status and devices report.
#include "daemon/service.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "blksnap/io.h"
#include "control/protocol.h"

namespace blksnap::daemon {

using control::GetBool;
using control::GetOptionalString;
using control::GetString;
using control::GetUint;
using nlohmann::json;

namespace {

constexpr size_t kMaxEvents = 64;
constexpr const char* kRecordsFile = "devices.json";
constexpr int kRecordsVersion = 1;
constexpr const char* kRestartNote =
    "blksnapd restarted: CBT restarted with a new generation (full backup needed) and snapshots "
    "from before the restart are gone";
constexpr auto kWatchSlice = std::chrono::milliseconds(500);

Status ValidateName(const std::string& name) {
  if (name.empty()) return Status::Error(EINVAL, "device name must not be empty");
  if (name.size() > 128) return Status::Error(EINVAL, "device name longer than 128 characters");
  if (name == "." || name == "..")
    return Status::Error(EINVAL, "invalid device name '" + name + "'");
  for (unsigned char c : name) {
    if (c == '/' || c == '@' || c <= ' ' || c == 0x7f) {
      return Status::Error(
          EINVAL, "invalid device name '" + name + "': no '/', '@', spaces or control characters");
    }
  }
  return Status::Ok();
}

json ExtentsJson(const std::vector<ByteExtent>& extents) {
  json list = json::array();
  for (const auto& e : extents) list.push_back({e.offset, e.length});
  return list;
}

Status Annotate(const Status& s, const std::string& prefix) {
  if (s.ok()) return s;
  return Status::Error(s.errnum(), prefix + ": " + std::string(s.message()));
}

}  // namespace

Service::Service(std::unique_ptr<Engine> engine, std::unique_ptr<Fronts> fronts, ServiceInfo info)
    : info_(std::move(info)), engine_(std::move(engine)), fronts_(std::move(fronts)) {}

Service::~Service() { Shutdown(); }

Result<json> Service::Handle(const std::string& method, const json& params,
                             const std::function<bool()>& cancelled) {
  if (!params.is_object()) return Status::Error(EINVAL, "'params' must be an object");
  if (method == "version") return Version();
  if (method == "attach") return Attach(params);
  if (method == "detach") return Detach(params);
  if (method == "devices") return Devices();
  if (method == "cbt-info") return CbtInfoOf(params);
  if (method == "cbt-read") return CbtRead(params);
  if (method == "cbt-changes") return CbtChanges(params);
  if (method == "cbt-mark-dirty") return CbtMarkDirty(params);
  if (method == "snapshot-create") return SnapshotCreate(params);
  if (method == "snapshot-add") return SnapshotAdd(params);
  if (method == "snapshot-take") return SnapshotTake(params);
  if (method == "snapshot-destroy") return SnapshotDestroy(params);
  if (method == "snapshot-list") return SnapshotList();
  if (method == "snapshot-info") return SnapshotInfo(params);
  if (method == "snapshot-wait-event") return WaitEvent(params, cancelled);
  if (method == "status") return StatusReport();
  std::string shown = method.substr(0, 64);
  return Status::Error(ENOSYS, "unknown method '" + shown + "'");
}

Result<json> Service::Version() {
  return json{{"version", BLKSNAP_VERSION},
              {"protocol", control::kProtocolVersion},
              {"pid", static_cast<int64_t>(::getpid())},
              {"fronts",
               {{"nbd", fronts_->has_nbd()},
                {"fuse", fronts_->has_fuse()},
                {"ublk", fronts_->has_ublk()}}}};
}

Result<std::shared_ptr<Tracker>> Service::FindTrackerLocked(const std::string& name) const {
  auto it = devices_.find(name);
  if (it == devices_.end()) return Status::Error(ENOENT, "no device named '" + name + "'");
  return it->second.tracker;
}

Result<Uuid> Service::ParseId(const json& params) const {
  BLKSNAP_ASSIGN_OR_RETURN(std::string text, GetString(params, "id"));
  auto id = Uuid::Parse(text);
  if (!id) {
    return Status::Error(EINVAL,
                         "invalid snapshot id '" + text.substr(0, 64) +
                             "' (expected a UUID like 01234567-89ab-cdef-0123-456789abcdef)");
  }
  return *id;
}

json Service::DeviceJsonLocked(const DeviceEntry& d) const {
  json j = d.fronts.ToJson();
  j["name"] = d.name;
  j["path"] = d.path;
  j["size"] = d.tracker->size();
  auto snap = d.tracker->snapshot();
  j["snapshot"] = snap ? json(snap->id().ToString()) : json(nullptr);
  CbtInfo cbt = d.tracker->cbt_info();
  j["cbt"] = {{"block_size", cbt.block_size},
              {"block_count", cbt.block_count},
              {"generation_id", cbt.generation_id.ToString()},
              {"changes_number", cbt.changes_number}};
  j["restored"] = d.restored;
  if (d.restored) j["restore_note"] = kRestartNote;
  return j;
}

Result<json> Service::Attach(const json& params) {
  BLKSNAP_ASSIGN_OR_RETURN(std::string path, GetString(params, "path"));
  if (path.empty() || path[0] != '/') {
    return Status::Error(EINVAL, "path must be absolute: '" + path + "'");
  }
  std::string name = GetOptionalString(params, "name").value_or("");
  if (name.empty()) name = std::filesystem::path(path).filename().string();
  BLKSNAP_RETURN_IF_ERROR(ValidateName(name));
  bool loop = GetBool(params, "loop");
  bool ublk = GetBool(params, "ublk");
  std::lock_guard lock(mu_);
  if (shut_down_) return Status::Error(ESHUTDOWN, "blksnapd is shutting down");
  BLKSNAP_RETURN_IF_ERROR(ResolveBlockFronts(params, &loop, &ublk));
  if (failed_.count(name)) {
    return Status::Error(EEXIST, "a device named '" + name +
                                     "' is recorded but failed to re-attach at start; detach it "
                                     "first");
  }
  auto j = AttachLocked(name, path, loop, ublk, -1, false);
  if (j.ok()) SaveRecordsLocked();
  return j;
}

// Applies "blockdev" (the daemon's --frontend choice) to the requested fronts and refuses
// ublk where the kernel has none. Shared by attach and snapshot-create.
Status Service::ResolveBlockFronts(const json& params, bool* loop, bool* ublk) const {
  if (GetBool(params, "blockdev")) {
    if (fronts_->block_frontend() == "ublk") {
      *ublk = true;
    } else {
      *loop = true;
    }
  }
  if (*ublk && !fronts_->has_ublk()) {
    return Status::Error(ENOTSUP,
                         "--ublk: ublk is not available here (/dev/ublk-control missing: needs "
                         "Linux >= 6.0 with ublk_drv loaded, and root)");
  }
  return Status::Ok();
}

Result<json> Service::AttachLocked(const std::string& name, const std::string& path, bool loop,
                                   bool ublk, int ublk_recover_id, bool restored) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return Status::Error(errno, "cannot attach " + path + ": " + std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
    return Status::Error(EINVAL, "cannot attach " + path + ": not a regular file or block device");
  }
  if (devices_.count(name)) {
    return Status::Error(EEXIST, "a device named '" + name + "' is already attached");
  }
  for (const auto& [other_name, d] : devices_) {
    if (d.st_dev == st.st_dev && d.st_ino == st.st_ino) {
      return Status::Error(EBUSY, path + " is already attached as '" + other_name + "'");
    }
  }
  // A block device is opened with O_DIRECT: its page cache would only hold a second copy of what
  // the fronts' own caches (the file system above ublk/loop, the NBD client) already hold, and
  // every write through it costs a page allocation, a copy and a writeback pass — 2-4x the CPU
  // per copy-on-write write measured in docs/performance-vm.md. Regular files stay buffered.
  auto original = OpenFileDevice(path, {.direct = S_ISBLK(st.st_mode)});
  if (!original.ok()) return Annotate(original.status(), "cannot open " + path);
  auto tracker = engine_->Attach(name, *original, {.path = path});
  if (!tracker.ok()) return Annotate(tracker.status(), "cannot attach '" + name + "'");
  ExposeOptions eo;
  eo.loop = loop;
  eo.ublk = ublk;
  eo.ublk_recover_id = ublk_recover_id;
  eo.description = "blksnap device " + name;
  auto fronts = fronts_->Expose(name, *tracker, *tracker, eo);
  if (!fronts.ok()) {
    engine_->Detach(name).IgnoreError();
    return Annotate(fronts.status(), "cannot expose '" + name + "'");
  }
  for (uint64_t rdev : fronts->rdevs()) (*tracker)->AddAlias(rdev);
  if (fronts->ublk_recovered) ++ublk_recovered_;
  DeviceEntry entry{name, path, st.st_dev, st.st_ino, *tracker, std::move(fronts).value()};
  entry.loop = loop;
  entry.ublk = ublk;
  entry.restored = restored;
  json j = DeviceJsonLocked(entry);
  std::string extra;
  if (!entry.fronts.loop_path.empty()) extra += " loop " + entry.fronts.loop_path;
  if (!entry.fronts.ublk_path.empty()) {
    extra +=
        (entry.fronts.ublk_recovered ? " ublk (recovered) " : " ublk ") + entry.fronts.ublk_path;
  }
  devices_.emplace(name, std::move(entry));
  spdlog::info("{} {} as '{}' ({} bytes){}", restored ? "re-attached" : "attached", path, name,
               j["size"].get<uint64_t>(), extra);
  return j;
}

Result<json> Service::Detach(const json& params) {
  BLKSNAP_ASSIGN_OR_RETURN(std::string name, GetString(params, "name"));
  bool force = GetBool(params, "force");
  std::lock_guard lock(mu_);
  auto it = devices_.find(name);
  if (it == devices_.end()) {
    auto f = failed_.find(name);
    if (f == failed_.end()) return Status::Error(ENOENT, "no device named '" + name + "'");
    // A record that could not be re-attached: drop it; its ublk device (if the kernel still
    // has it) is removed, failing the I/O that waited on it.
    const json& rec = f->second.record;
    int dev_id = rec.value("ublk_dev_id", -1);
    if (dev_id >= 0) {
      Status s = fronts_->RemoveOrphanUblk(dev_id, rec.value("size", uint64_t(0)),
                                           rec.value("logical_block_size", 512u));
      if (!s.ok()) spdlog::warn("removing /dev/ublkb{} of '{}': {}", dev_id, name, s.ToString());
    }
    failed_.erase(f);
    SaveRecordsLocked();
    spdlog::info("dropped the record of '{}'", name);
    return json::object();
  }
  DeviceEntry& d = it->second;
  if (auto snap = d.tracker->snapshot()) {
    return Status::Error(EBUSY, "device '" + name + "' is in snapshot " + snap->id().ToString() +
                                    "; destroy the snapshot first");
  }
  if (!force) {
    Status idle = fronts_->CheckIdle(d.fronts);
    if (!idle.ok()) {
      return Status::Error(EBUSY, "device '" + name + "' is in use: " +
                                      std::string(idle.message()) + " (use --force)");
    }
  }
  std::vector<uint64_t> rdevs = d.fronts.rdevs();
  Status unexposed = fronts_->Unexpose(d.fronts);
  if (!unexposed.ok()) spdlog::warn("detach '{}': {}", name, unexposed.ToString());
  for (uint64_t rdev : rdevs) d.tracker->RemoveAlias(rdev);
  Status s = engine_->Detach(name);
  if (!s.ok()) {
    // Put the fronts back so the state is what it was (a new ublk device, if it had one).
    ExposeOptions eo;
    eo.loop = d.loop;
    eo.ublk = d.ublk;
    eo.description = "blksnap device " + name;
    auto again = fronts_->Expose(name, d.tracker, d.tracker, eo);
    if (again.ok()) {
      d.fronts = std::move(again).value();
      for (uint64_t rdev : d.fronts.rdevs()) d.tracker->AddAlias(rdev);
    }
    SaveRecordsLocked();
    return Annotate(s, "cannot detach '" + name + "'");
  }
  devices_.erase(it);
  SaveRecordsLocked();
  spdlog::info("detached '{}'", name);
  return json::object();
}

Result<json> Service::Devices() {
  std::lock_guard lock(mu_);
  json list = json::array();
  for (const auto& [name, d] : devices_) list.push_back(DeviceJsonLocked(d));
  return json{{"devices", list}, {"restart", RestartJsonLocked()}};
}

Result<json> Service::CbtInfoOf(const json& params) {
  BLKSNAP_ASSIGN_OR_RETURN(std::string name, GetString(params, "name"));
  std::shared_ptr<Tracker> tracker;
  {
    std::lock_guard lock(mu_);
    BLKSNAP_ASSIGN_OR_RETURN(tracker, FindTrackerLocked(name));
  }
  CbtInfo info = tracker->cbt_info();
  return json{{"name", name},
              {"block_size", info.block_size},
              {"block_count", info.block_count},
              {"device_capacity", info.device_capacity},
              {"generation_id", info.generation_id.ToString()},
              {"changes_number", info.changes_number}};
}

Result<json> Service::CbtRead(const json& params) {
  BLKSNAP_ASSIGN_OR_RETURN(std::string name, GetString(params, "name"));
  uint64_t offset = 0;
  if (params.contains("offset")) {
    BLKSNAP_ASSIGN_OR_RETURN(offset, GetUint(params, "offset"));
  }
  uint64_t count = control::kMaxCbtReadBytes;
  if (params.contains("count")) {
    BLKSNAP_ASSIGN_OR_RETURN(count, GetUint(params, "count"));
  }
  std::shared_ptr<Tracker> tracker;
  {
    std::lock_guard lock(mu_);
    BLKSNAP_ASSIGN_OR_RETURN(tracker, FindTrackerLocked(name));
  }
  CbtInfo info = tracker->cbt_info();
  if (offset > info.block_count) {
    return Status::Error(EINVAL, "offset " + std::to_string(offset) + " is past the map's " +
                                     std::to_string(info.block_count) + " blocks");
  }
  count = std::min({count, control::kMaxCbtReadBytes, info.block_count - offset});
  std::string bytes(count, '\0');
  BLKSNAP_RETURN_IF_ERROR(tracker->ReadCbtMap(
      offset, std::span<uint8_t>(reinterpret_cast<uint8_t*>(bytes.data()), bytes.size())));
  return json{{"offset", offset},
              {"count", count},
              {"block_count", info.block_count},
              {"data", control::Base64Encode(bytes)}};
}

Result<json> Service::CbtChanges(const json& params) {
  BLKSNAP_ASSIGN_OR_RETURN(std::string name, GetString(params, "name"));
  BLKSNAP_ASSIGN_OR_RETURN(uint64_t since, GetUint(params, "since"));
  if (since > 255) return Status::Error(EINVAL, "'since' must be a snap number 0..255");
  std::optional<Uuid> generation;
  if (auto g = GetOptionalString(params, "generation")) {
    generation = Uuid::Parse(*g);
    if (!generation)
      return Status::Error(EINVAL, "invalid generation id '" + g->substr(0, 64) + "'");
  }
  std::shared_ptr<Tracker> tracker;
  {
    std::lock_guard lock(mu_);
    BLKSNAP_ASSIGN_OR_RETURN(tracker, FindTrackerLocked(name));
  }
  CbtInfo info = tracker->cbt_info();
  if (generation && *generation != info.generation_id) {
    return Status::Error(ESTALE, "generation changed: full backup needed (device '" + name +
                                     "' is at generation " + info.generation_id.ToString() + ")");
  }
  BLKSNAP_ASSIGN_OR_RETURN(auto extents,
                           tracker->ChangedExtents(static_cast<uint8_t>(since), generation));
  uint64_t bytes = 0;
  for (const auto& e : extents) bytes += e.length;
  return json{{"name", name},
              {"generation_id", info.generation_id.ToString()},
              {"changes_number", info.changes_number},
              {"since", since},
              {"bytes", bytes},
              {"extents", ExtentsJson(extents)}};
}

Result<json> Service::CbtMarkDirty(const json& params) {
  BLKSNAP_ASSIGN_OR_RETURN(std::string name, GetString(params, "name"));
  if (!params.contains("ranges") || !params["ranges"].is_array()) {
    return Status::Error(EINVAL, "missing parameter 'ranges' (a list of [offset, length])");
  }
  const json& list = params["ranges"];
  if (list.size() > control::kMaxRangesPerRequest) {
    return Status::Error(E2BIG, "too many ranges in one request");
  }
  std::shared_ptr<Tracker> tracker;
  {
    std::lock_guard lock(mu_);
    BLKSNAP_ASSIGN_OR_RETURN(tracker, FindTrackerLocked(name));
  }
  uint64_t size = tracker->size();
  std::vector<ByteExtent> ranges;
  for (const auto& r : list) {
    if (!r.is_array() || r.size() != 2 || !r[0].is_number_unsigned() ||
        !r[1].is_number_unsigned()) {
      return Status::Error(EINVAL,
                           "each range must be [offset, length] with non-negative integers");
    }
    ByteExtent e{r[0].get<uint64_t>(), r[1].get<uint64_t>()};
    std::string shown = std::to_string(e.offset) + ":" + std::to_string(e.length);
    if (e.length == 0) return Status::Error(EINVAL, "range " + shown + ": length must be > 0");
    if (e.offset >= size || e.length > size - e.offset) {
      return Status::Error(EINVAL, "range " + shown + " is past the end of device '" + name +
                                       "' (" + std::to_string(size) + " bytes)");
    }
    ranges.push_back(e);
  }
  for (const auto& e : ranges) BLKSNAP_RETURN_IF_ERROR(tracker->MarkDirty(e.offset, e.length));
  return json::object();
}

void Service::StartWatcher(SnapshotEntry& entry, std::shared_ptr<Snapshot> snap) {
  auto log = entry.events;
  auto stop = entry.stop;
  std::weak_ptr<Snapshot> weak = snap;
  entry.watcher = std::thread([log, stop, snap, id = entry.id]() mutable {
    while (!stop->load()) {
      auto ev = snap->WaitEvent(kWatchSlice);
      if (ev.ok()) {
        spdlog::warn("snapshot {}: event {} device '{}' errno {} requested {}", id.ToString(),
                     ToString(ev->type), ev->device, ev->errnum, ev->requested);
        std::lock_guard lock(log->mu);
        log->events.push_back({log->next_seq++, *ev, std::chrono::system_clock::now()});
        while (log->events.size() > kMaxEvents) log->events.pop_front();
        log->cv.notify_all();
        continue;
      }
      int err = ev.status().errnum();
      if (err == ETIMEDOUT) continue;
      if (err == ENODEV) break;
      spdlog::debug("snapshot {}: wait event: {}", id.ToString(), ev.status().ToString());
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    std::lock_guard lock(log->mu);
    log->closed = true;
    log->cv.notify_all();
  });
}

void Service::UnexposeImagesLocked(SnapshotEntry& entry) {
  for (auto& [device, set] : entry.images) {
    if (auto d = devices_.find(device); d != devices_.end()) {
      for (uint64_t rdev : set.rdevs()) d->second.tracker->RemoveAlias(rdev);
    }
    Status s = fronts_->Unexpose(set);
    if (!s.ok()) {
      spdlog::warn("snapshot {}: removing image fronts: {}", entry.id.ToString(), s.ToString());
    }
  }
}

void Service::ReleaseSnapshotLocked(SnapshotEntry& entry, std::vector<std::thread>* joins) {
  UnexposeImagesLocked(entry);
  entry.images.clear();
  entry.stop->store(true);
  {
    std::lock_guard lock(entry.events->mu);
    entry.events->closed = true;
    entry.events->cv.notify_all();
  }
  if (entry.watcher.joinable()) joins->push_back(std::move(entry.watcher));
}

Result<json> Service::SnapshotCreate(const json& params) {
  BLKSNAP_ASSIGN_OR_RETURN(std::string storage, GetString(params, "storage"));
  if (storage.empty() || storage[0] != '/') {
    return Status::Error(EINVAL, "storage path must be absolute: '" + storage + "'");
  }
  uint64_t limit = 0;
  if (params.contains("limit")) {
    BLKSNAP_ASSIGN_OR_RETURN(limit, GetUint(params, "limit"));
  }
  bool loop = GetBool(params, "loop");
  bool ublk = GetBool(params, "ublk");
  std::vector<std::string> devices;
  if (params.contains("devices")) {
    if (!params["devices"].is_array()) return Status::Error(EINVAL, "'devices' must be a list");
    for (const auto& d : params["devices"]) {
      if (!d.is_string()) return Status::Error(EINVAL, "'devices' must be a list of names");
      devices.push_back(d.get<std::string>());
    }
  }
  std::lock_guard lock(mu_);
  if (shut_down_) return Status::Error(ESHUTDOWN, "blksnapd is shutting down");
  BLKSNAP_RETURN_IF_ERROR(ResolveBlockFronts(params, &loop, &ublk));
  if (loop && !fronts_->has_fuse()) {
    return Status::Error(ENOTSUP, "--loop needs the FUSE front, which is not running");
  }
  for (size_t i = 0; i < devices.size(); ++i) {
    BLKSNAP_ASSIGN_OR_RETURN(auto tracker, FindTrackerLocked(devices[i]));
    for (size_t j = 0; j < i; ++j) {
      if (devices[j] == devices[i]) {
        return Status::Error(EINVAL, "device '" + devices[i] + "' is listed twice");
      }
    }
    if (auto snap = tracker->snapshot()) {
      return Status::Error(
          EBUSY, "device '" + devices[i] + "' is already in snapshot " + snap->id().ToString());
    }
  }
  auto id = engine_->CreateSnapshot({.storage_path = storage, .limit = limit});
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
  entry.events = std::make_shared<EventLog>();
  entry.stop = std::make_shared<std::atomic<bool>>(false);
  auto [it, inserted] = snapshots_.emplace(*id, std::move(entry));
  StartWatcher(it->second, snap);
  spdlog::info("created snapshot {} with storage {} (limit {}) of {} device(s)", id->ToString(),
               storage, limit, devices.size());
  return json{{"id", id->ToString()}};
}

Result<json> Service::SnapshotAdd(const json& params) {
  BLKSNAP_ASSIGN_OR_RETURN(Uuid id, ParseId(params));
  BLKSNAP_ASSIGN_OR_RETURN(std::string device, GetString(params, "device"));
  std::lock_guard lock(mu_);
  if (!snapshots_.count(id)) return Status::Error(ENOENT, "no snapshot " + id.ToString());
  BLKSNAP_ASSIGN_OR_RETURN(auto tracker, FindTrackerLocked(device));
  if (auto snap = tracker->snapshot()) {
    if (snap->id() == id) {
      return Status::Error(EALREADY,
                           "device '" + device + "' is already in snapshot " + id.ToString());
    }
    return Status::Error(EBUSY,
                         "device '" + device + "' is already in snapshot " + snap->id().ToString());
  }
  Status s = engine_->AddDevice(id, device);
  if (!s.ok()) return Annotate(s, "cannot add device '" + device + "' to " + id.ToString());
  spdlog::info("snapshot {}: added '{}'", id.ToString(), device);
  return json::object();
}

Result<json> Service::SnapshotTake(const json& params) {
  BLKSNAP_ASSIGN_OR_RETURN(Uuid id, ParseId(params));
  std::lock_guard lock(mu_);
  auto it = snapshots_.find(id);
  if (it == snapshots_.end()) return Status::Error(ENOENT, "no snapshot " + id.ToString());
  SnapshotEntry& entry = it->second;
  auto snap = engine_->FindSnapshot(id);
  if (!snap) return Status::Error(ENOENT, "no snapshot " + id.ToString());
  if (snap->state() != SnapshotState::kCreated) {
    return Status::Error(EALREADY,
                         "snapshot " + id.ToString() + " is already " + ToString(snap->state()));
  }
  std::vector<std::string> names;
  std::vector<uint64_t> rdevs;
  for (const auto& d : snap->devices()) {
    names.push_back(d.name);
    auto dev = devices_.find(d.name);
    if (dev != devices_.end()) {
      for (uint64_t rdev : dev->second.fronts.rdevs()) rdevs.push_back(rdev);
    }
  }
  if (names.empty()) {
    return Status::Error(ENODEV, "snapshot " + id.ToString() + " has no devices; add one first");
  }
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
  if (!stats.ok()) return Annotate(stats.status(), "cannot take snapshot " + id.ToString());
  json warnings = json::array();
  for (const auto& name : names) {
    auto image = snap->image(name);
    if (!image) continue;
    std::shared_ptr<const CbtSource> cbt;
    if (auto dev = devices_.find(name); dev != devices_.end()) cbt = dev->second.tracker;
    std::string front = name + "@" + id.ToString();
    ExposeOptions eo;
    eo.loop = entry.loop;
    eo.ublk = entry.ublk;
    eo.description = "blksnap image of " + name + " at snapshot " + id.ToString();
    eo.ro_name = front + ":ro";
    auto set = fronts_->Expose(front, image, cbt, eo);
    if (!set.ok()) {
      warnings.push_back("image of '" + name + "': " + set.status().ToString());
      spdlog::warn("snapshot {}: exposing image of '{}': {}", id.ToString(), name,
                   set.status().ToString());
      continue;
    }
    if (auto dev = devices_.find(name); dev != devices_.end()) {
      for (uint64_t rdev : set->rdevs()) dev->second.tracker->AddAlias(rdev);
    }
    entry.images[name] = std::move(set).value();
  }
  SaveRecordsLocked();
  double took_ms = std::chrono::duration<double, std::milli>(took).count();
  spdlog::info("took snapshot {} in {:.3f} ms (writers held {} us)", id.ToString(), took_ms,
               stats->held.count());
  return json{{"id", id.ToString()},
              {"took_ms", took_ms},
              {"held_us", stats->held.count()},
              {"frozen_us", stats->frozen.count()},
              {"warnings", warnings}};
}

Result<json> Service::SnapshotDestroy(const json& params) {
  BLKSNAP_ASSIGN_OR_RETURN(Uuid id, ParseId(params));
  std::vector<std::thread> joins;
  {
    std::lock_guard lock(mu_);
    auto it = snapshots_.find(id);
    if (it == snapshots_.end() && !engine_->FindSnapshot(id)) {
      return Status::Error(ENOENT, "no snapshot " + id.ToString());
    }
    // Fronts first, so no client keeps using an image whose I/O is about to fail.
    if (it != snapshots_.end()) UnexposeImagesLocked(it->second);
    Status s = engine_->Destroy(id);
    if (!s.ok() && s.errnum() != ENOENT) return Annotate(s, "cannot destroy " + id.ToString());
    if (it != snapshots_.end()) {
      ReleaseSnapshotLocked(it->second, &joins);
      snapshots_.erase(it);
    }
    SaveRecordsLocked();
  }
  for (auto& t : joins) t.join();
  spdlog::info("destroyed snapshot {}", id.ToString());
  return json::object();
}

json Service::SnapshotJsonLocked(const SnapshotEntry& s, const Snapshot& snap) const {
  StorageInfo st = snap.storage_info();
  json devices = json::array();
  for (const auto& d : snap.devices()) {
    auto img = s.images.find(d.name);
    json image = img != s.images.end() ? img->second.ToJson()
                                       : json{{"nbd", nullptr},
                                              {"fuse", nullptr},
                                              {"loop", nullptr},
                                              {"ublk", nullptr},
                                              {"nbd_tcp", nullptr}};
    devices.push_back({{"name", d.name},
                       {"error", d.errnum},
                       {"error_message", d.errnum ? json(std::strerror(d.errnum)) : json(nullptr)},
                       {"image", image}});
  }
  return json{{"id", s.id.ToString()},
              {"state", ToString(snap.state())},
              {"storage",
               {{"path", st.path.empty() ? s.storage : st.path},
                {"capacity", st.capacity},
                {"used", st.used},
                {"limit", st.limit}}},
              {"devices", devices}};
}

Result<json> Service::SnapshotList() {
  std::lock_guard lock(mu_);
  json list = json::array();
  for (const auto& [id, entry] : snapshots_) {
    auto snap = engine_->FindSnapshot(id);
    if (!snap) continue;
    json devices = json::array();
    for (const auto& d : snap->devices()) devices.push_back(d.name);
    list.push_back(
        {{"id", id.ToString()}, {"state", ToString(snap->state())}, {"devices", devices}});
  }
  return json{{"snapshots", list}};
}

Result<json> Service::SnapshotInfo(const json& params) {
  BLKSNAP_ASSIGN_OR_RETURN(Uuid id, ParseId(params));
  std::lock_guard lock(mu_);
  auto it = snapshots_.find(id);
  auto snap = engine_->FindSnapshot(id);
  if (it == snapshots_.end() || !snap) return Status::Error(ENOENT, "no snapshot " + id.ToString());
  return SnapshotJsonLocked(it->second, *snap);
}

json Service::EventJson(const EventRecord& r) {
  json j = {
      {"seq", r.seq},
      {"event", ToString(r.event.type)},
      {"time",
       std::chrono::duration_cast<std::chrono::milliseconds>(r.when.time_since_epoch()).count()}};
  if (r.event.type == SnapshotEvent::Type::kCorrupted) {
    j["device"] = r.event.device;
    j["errno"] = r.event.errnum;
    j["message"] = std::strerror(r.event.errnum);
    j["requested"] = nullptr;
  } else {
    j["device"] = nullptr;
    j["errno"] = nullptr;
    j["requested"] = r.event.requested;
  }
  return j;
}

Result<json> Service::WaitEvent(const json& params, const std::function<bool()>& cancelled) {
  BLKSNAP_ASSIGN_OR_RETURN(Uuid id, ParseId(params));
  BLKSNAP_ASSIGN_OR_RETURN(uint64_t timeout_ms, GetUint(params, "timeout_ms"));
  std::optional<uint64_t> after;
  if (params.contains("after")) {
    BLKSNAP_ASSIGN_OR_RETURN(after, GetUint(params, "after"));
  }
  timeout_ms = std::min<uint64_t>(timeout_ms, 7ull * 24 * 3600 * 1000);
  std::shared_ptr<EventLog> log;
  {
    std::lock_guard lock(mu_);
    auto it = snapshots_.find(id);
    if (it == snapshots_.end()) return Status::Error(ENOENT, "no snapshot " + id.ToString());
    log = it->second.events;
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  std::unique_lock lock(log->mu);
  for (;;) {
    uint64_t cursor = after.value_or(log->consumed);
    for (const auto& r : log->events) {
      if (r.seq > cursor) {
        if (!after) log->consumed = r.seq;
        json j = EventJson(r);
        j["result"] = "ok";
        j["id"] = id.ToString();
        return j;
      }
    }
    if (log->closed) {
      return Status::Error(ENODEV, "snapshot " + id.ToString() + " was destroyed");
    }
    auto now = std::chrono::steady_clock::now();
    if (now >= deadline) {
      return json{{"result", "timeout"},     {"id", id.ToString()}, {"event", nullptr},
                  {"device", nullptr},       {"errno", nullptr},    {"requested", nullptr},
                  {"seq", log->next_seq - 1}};
    }
    if (cancelled && cancelled()) return Status::Error(ECANCELED, "client went away");
    log->cv.wait_until(lock, std::min(deadline, now + std::chrono::milliseconds(250)));
  }
}

Result<json> Service::StatusReport() {
  std::lock_guard lock(mu_);
  json devices = json::array();
  for (const auto& [name, d] : devices_) devices.push_back(DeviceJsonLocked(d));
  json snaps = json::array();
  for (const auto& [id, entry] : snapshots_) {
    auto snap = engine_->FindSnapshot(id);
    if (!snap) continue;
    json j = SnapshotJsonLocked(entry, *snap);
    json events = json::array();
    {
      std::lock_guard elock(entry.events->mu);
      for (const auto& r : entry.events->events) events.push_back(EventJson(r));
    }
    j["events"] = events;
    snaps.push_back(j);
  }
  json daemon = {{"version", BLKSNAP_VERSION},
                 {"pid", static_cast<int64_t>(::getpid())},
                 {"state_dir", info_.state_dir},
                 {"control", info_.control_path}};
  daemon.update(fronts_->Describe());
  daemon["restart"] = RestartJsonLocked();
  return json{{"daemon", daemon}, {"devices", devices}, {"snapshots", snaps}};
}

void Service::Shutdown() {
  std::vector<std::thread> joins;
  {
    std::lock_guard lock(mu_);
    if (shut_down_) return;
    shut_down_ = true;
    for (auto& [id, entry] : snapshots_) {
      UnexposeImagesLocked(entry);
      Status s = engine_->Destroy(id);
      if (!s.ok()) spdlog::warn("destroying snapshot {}: {}", id.ToString(), s.ToString());
      ReleaseSnapshotLocked(entry, &joins);
      spdlog::info("destroyed snapshot {}", id.ToString());
    }
    snapshots_.clear();
    for (auto& [name, d] : devices_) {
      Status s = fronts_->Unexpose(d.fronts);
      if (!s.ok()) spdlog::warn("removing fronts of '{}': {}", name, s.ToString());
      s = engine_->Detach(name);
      if (!s.ok()) spdlog::warn("detaching '{}': {}", name, s.ToString());
      spdlog::info("detached '{}' (its CBT is lost: CBT lives in memory only)", name);
    }
    devices_.clear();
    // Clean stop: nothing is left to recover, except records that failed to re-attach.
    SaveRecordsLocked();
  }
  for (auto& t : joins) t.join();
  std::lock_guard lock(mu_);
  fronts_->Stop();
}

void Service::SaveRecordsLocked() {
  if (info_.state_dir.empty() || !records_loaded_) return;
  json devices = json::array();
  for (const auto& [name, d] : devices_) {
    devices.push_back({{"name", name},
                       {"path", d.path},
                       {"loop", d.loop},
                       {"ublk", d.ublk},
                       {"ublk_dev_id", d.fronts.ublk_dev_id},
                       {"size", d.tracker->size()},
                       {"logical_block_size", d.tracker->logical_block_size()}});
  }
  for (const auto& [name, f] : failed_) devices.push_back(f.record);
  json images = json::array();
  for (const auto& [id, entry] : snapshots_) {
    for (const auto& [device, set] : entry.images) {
      if (set.ublk_dev_id < 0) continue;
      auto d = devices_.find(device);
      if (d == devices_.end()) continue;
      images.push_back({{"snapshot", id.ToString()},
                        {"device", device},
                        {"ublk_dev_id", set.ublk_dev_id},
                        {"size", d->second.tracker->size()},
                        {"logical_block_size", d->second.tracker->logical_block_size()}});
    }
  }
  const std::string path = info_.state_dir + "/" + kRecordsFile;
  if (devices.empty() && images.empty()) {
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
      spdlog::warn("cannot remove {}: {}", path, std::strerror(errno));
    }
    return;
  }
  json doc = {{"version", kRecordsVersion},
              {"pid", static_cast<int64_t>(::getpid())},
              {"devices", devices},
              {"images", images}};
  std::string text = doc.dump(2) + "\n";
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    spdlog::error("cannot write {}: {}", tmp, std::strerror(errno));
    return;
  }
  size_t done = 0;
  bool ok = true;
  while (done < text.size()) {
    ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ok = false;
      break;
    }
    done += static_cast<size_t>(n);
  }
  if (ok && ::fsync(fd) != 0) ok = false;
  int err = errno;
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
    if (ok) err = errno;
    spdlog::error("cannot write {}: {}", path, std::strerror(err));
    ::unlink(tmp.c_str());
    return;
  }
  int dfd = ::open(info_.state_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

json Service::RestartJsonLocked() const {
  if (!restarted_) return nullptr;
  json failed = json::array();
  for (const auto& [name, f] : failed_) {
    failed.push_back({{"name", name},
                      {"path", f.record.value("path", std::string())},
                      {"ublk_dev_id", f.record.value("ublk_dev_id", -1)},
                      {"error", f.error}});
  }
  return json{{"time", std::chrono::duration_cast<std::chrono::milliseconds>(
                           restart_time_.time_since_epoch())
                           .count()},
              {"message", kRestartNote},
              {"ublk_recovered", ublk_recovered_},
              {"notes", restart_notes_},
              {"failed", failed}};
}

void Service::Restore() {
  std::lock_guard lock(mu_);
  if (info_.state_dir.empty() || records_loaded_) return;
  records_loaded_ = true;
  const std::string path = info_.state_dir + "/" + kRecordsFile;
  std::ifstream in(path);
  if (!in) return;  // first start, or the last stop was clean
  std::stringstream buf;
  buf << in.rdbuf();
  json doc = json::parse(buf.str(), nullptr, /*allow_exceptions=*/false);
  restarted_ = true;
  restart_time_ = std::chrono::system_clock::now();
  if (doc.is_discarded() || !doc.is_object() || doc.value("version", 0) != kRecordsVersion ||
      !doc.contains("devices") || !doc["devices"].is_array()) {
    std::string bad = path + ".bad";
    ::rename(path.c_str(), bad.c_str());
    std::string note = "unreadable device records " + path + " moved to " + bad;
    spdlog::error("{}", note);
    restart_notes_.push_back(note);
    return;
  }
  spdlog::warn("{} (records of pid {} in {})", kRestartNote, doc.value("pid", int64_t(0)), path);
  if (doc.contains("images") && doc["images"].is_array()) {
    for (const auto& img : doc["images"]) {
      int dev_id = img.value("ublk_dev_id", -1);
      if (dev_id < 0) continue;
      Status s = fronts_->RemoveOrphanUblk(dev_id, img.value("size", uint64_t(0)),
                                           img.value("logical_block_size", 512u));
      std::string note = "snapshot " + img.value("snapshot", std::string("?")) + " image of '" +
                         img.value("device", std::string("?")) + "' on /dev/ublkb" +
                         std::to_string(dev_id) + " is gone" +
                         (s.ok() ? ": device removed" : ": cannot remove it: " + s.ToString());
      spdlog::warn("{}", note);
      restart_notes_.push_back(note);
    }
  }
  for (const auto& rec : doc["devices"]) {
    std::string name = rec.value("name", std::string());
    std::string dpath = rec.value("path", std::string());
    bool loop = rec.value("loop", false);
    bool ublk = rec.value("ublk", false);
    int dev_id = rec.value("ublk_dev_id", -1);
    Status s = ValidateName(name);
    if (s.ok() && (dpath.empty() || dpath[0] != '/')) {
      s = Status::Error(EINVAL, "bad path '" + dpath + "'");
    }
    if (s.ok() && ublk && !fronts_->has_ublk()) {
      s = Status::Error(ENOTSUP, "ublk is not available any more");
    }
    if (s.ok()) {
      auto j = AttachLocked(name, dpath, loop, ublk, ublk ? dev_id : -1, true);
      if (!j.ok()) s = j.status();
    }
    if (!s.ok()) {
      spdlog::error("cannot re-attach recorded device '{}' ({}): {}", name, dpath, s.ToString());
      if (name.empty()) name = "?" + std::to_string(failed_.size());
      failed_[name] = FailedRecord{rec, std::string(s.message())};
    }
  }
  spdlog::warn("restored {} device(s), {} ublk front(s) recovered, {} failed", devices_.size(),
               ublk_recovered_, failed_.size());
  SaveRecordsLocked();
}

}  // namespace blksnap::daemon
