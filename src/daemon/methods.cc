// Methods: one table {name, handler}; each handler parses its parameters, calls one Service
// operation and encodes the result. The encodings are the wire contract of
// docs/control-protocol.md: field names and null-ness must not change.
#include "daemon/methods.h"

#include <unistd.h>

#include <array>
#include <cstring>

#include "control/protocol.h"

namespace blksnap::daemon {

using control::GetBool;
using control::GetOptionalString;
using control::GetString;
using control::GetUint;
using nlohmann::json;

namespace {

using Cancelled = std::function<bool()>;
using Handler = Result<json> (*)(Service&, const json&, const Cancelled&);

json OrNull(const std::string& s) { return s.empty() ? json(nullptr) : json(s); }

int64_t EpochMs(std::chrono::system_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

json AddressesJson(const FrontAddresses& a) {
  json j = {{"nbd", OrNull(a.nbd)},
            {"fuse", OrNull(a.fuse)},
            {"loop", OrNull(a.loop)},
            {"ublk", OrNull(a.ublk)},
            {"nbd_tcp", OrNull(a.nbd_tcp)}};
  if (!a.nbd_ro.empty()) j["nbd_ro"] = a.nbd_ro;
  return j;
}

// The CBT state of a device: numbers, generation and its reason, durability.
json CbtJson(const CbtInfo& c) {
  return {{"block_size", c.block_size},
          {"block_count", c.block_count},
          {"device_capacity", c.device_capacity},
          {"generation_id", c.generation_id.ToString()},
          {"generation_reason", c.generation_reason},
          {"changes_number", c.changes_number},
          {"durable", c.durable},
          {"last_checkpoint", c.durable ? json(EpochMs(c.last_checkpoint)) : json(nullptr)},
          {"recovered_from", c.recovered_from.empty() ? json(nullptr) : json(c.recovered_from)},
          {"journal_syncs", c.journal_syncs},
          {"journal_region_size", c.journal_region_size},
          {"state_sync_failed", c.state_sync_failed}};
}

// The last rollback onto a device (null: none since it was attached).
json RollbackJson(const std::optional<RollbackProgress>& r) {
  if (!r) return nullptr;
  return {{"snapshot", r->snapshot.ToString()},
          {"state", ToString(r->state)},
          {"chunks_total", r->chunks_total},
          {"chunks_merged", r->chunks_merged},
          {"bytes_total", r->chunks_total * r->chunk_size},
          {"bytes_merged", r->chunks_merged * r->chunk_size},
          {"errno", r->errnum ? json(r->errnum) : json(nullptr)},
          {"error", r->error.empty() ? json(nullptr) : json(r->error)}};
}

json DeviceJson(const DeviceView& d) {
  json j = AddressesJson(d.fronts);
  j["name"] = d.name;
  j["path"] = d.path;
  j["size"] = d.size;
  j["snapshot"] = d.snapshot ? json(d.snapshot->ToString()) : json(nullptr);
  j["snapshots"] = json::array();
  for (const auto& id : d.snapshots) j["snapshots"].push_back(id.ToString());
  j["cbt"] = CbtJson(d.cbt);
  j["rollback"] = RollbackJson(d.rollback);
  j["restored"] = d.restored;
  if (d.restored) j["restore_note"] = RestartNote(d.restored_after_clean_stop);
  return j;
}

json RestartJson(const std::optional<RestartView>& r) {
  if (!r) return nullptr;
  json failed = json::array();
  for (const auto& f : r->failed) {
    failed.push_back(
        {{"name", f.name}, {"path", f.path}, {"ublk_dev_id", f.ublk_dev_id}, {"error", f.error}});
  }
  json snapshots = json::array();
  for (const auto& s : r->snapshots) {
    snapshots.push_back({{"id", s.id.ToString()},
                         {"recovered_from", OrNull(s.recovered_from)},
                         {"state", ToString(s.state)}});
  }
  json snapshots_failed = json::array();
  for (const auto& f : r->snapshots_failed) {
    snapshots_failed.push_back(
        {{"id", f.id}, {"storage_file", f.storage_file}, {"error", f.error}});
  }
  return json{{"time", EpochMs(r->time)},
              {"after", r->clean_stop ? "clean-stop" : "crash"},
              {"message", RestartNote(r->clean_stop)},
              {"ublk_recovered", r->ublk_recovered},
              {"notes", r->notes},
              {"failed", failed},
              {"snapshots", snapshots},
              {"snapshots_failed", snapshots_failed}};
}

json EventJson(const SnapshotEventRecord& r) {
  json j = {{"seq", r.seq}, {"event", ToString(r.event.type)}, {"time", EpochMs(r.time)}};
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

json SnapshotJson(const SnapshotView& s) {
  json devices = json::array();
  for (const auto& d : s.devices) {
    json image = d.image ? AddressesJson(*d.image)
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
              {"state", ToString(s.state)},
              {"durability", ToString(s.durability)},
              {"recovered_from", OrNull(s.recovered_from)},
              {"storage",
               {{"path", s.storage.path},
                {"file", OrNull(s.storage.file)},
                {"capacity", s.storage.capacity},
                {"used", s.storage.used},
                {"limit", s.storage.limit}}},
              {"devices", devices}};
}

Result<Uuid> ParseId(const json& params) {
  BLKSNAP_ASSIGN_OR_RETURN(std::string text, GetString(params, "id"));
  auto id = Uuid::Parse(text);
  if (!id) {
    return Status::Error(EINVAL,
                         "invalid snapshot id '" + text.substr(0, 64) +
                             "' (expected a UUID like 01234567-89ab-cdef-0123-456789abcdef)");
  }
  return *id;
}

Result<json> Version(Service& service, const json&, const Cancelled&) {
  const FrontsInfo& f = service.fronts_info();
  return json{{"version", BLKSNAP_VERSION},
              {"protocol", control::kProtocolVersion},
              {"pid", static_cast<int64_t>(::getpid())},
              {"fronts", {{"nbd", f.nbd}, {"fuse", f.fuse}, {"ublk", f.ublk}}}};
}

Result<json> Attach(Service& service, const json& params, const Cancelled&) {
  AttachRequest r;
  BLKSNAP_ASSIGN_OR_RETURN(r.path, GetString(params, "path"));
  r.name = GetOptionalString(params, "name").value_or("");
  r.loop = GetBool(params, "loop");
  r.ublk = GetBool(params, "ublk");
  r.blockdev = GetBool(params, "blockdev");
  BLKSNAP_ASSIGN_OR_RETURN(DeviceView view, service.Attach(r));
  json j = DeviceJson(view);
  j["warnings"] = view.warnings;
  return j;
}

Result<json> Detach(Service& service, const json& params, const Cancelled&) {
  BLKSNAP_ASSIGN_OR_RETURN(std::string name, GetString(params, "name"));
  BLKSNAP_RETURN_IF_ERROR(service.Detach(name, GetBool(params, "force")));
  return json::object();
}

Result<json> Devices(Service& service, const json&, const Cancelled&) {
  json list = json::array();
  for (const auto& d : service.Devices()) list.push_back(DeviceJson(d));
  return json{{"devices", list}, {"restart", RestartJson(service.restart())}};
}

Result<json> CbtInfoOf(Service& service, const json& params, const Cancelled&) {
  BLKSNAP_ASSIGN_OR_RETURN(std::string name, GetString(params, "name"));
  BLKSNAP_ASSIGN_OR_RETURN(CbtInfo info, service.GetCbtInfo(name));
  json j = CbtJson(info);
  j["name"] = name;
  return j;
}

Result<json> CbtRead(Service& service, const json& params, const Cancelled&) {
  BLKSNAP_ASSIGN_OR_RETURN(std::string name, GetString(params, "name"));
  uint64_t offset = 0;
  if (params.contains("offset")) {
    BLKSNAP_ASSIGN_OR_RETURN(offset, GetUint(params, "offset"));
  }
  uint64_t count = control::kMaxCbtReadBytes;
  if (params.contains("count")) {
    BLKSNAP_ASSIGN_OR_RETURN(count, GetUint(params, "count"));
  }
  count = std::min(count, control::kMaxCbtReadBytes);
  BLKSNAP_ASSIGN_OR_RETURN(CbtMapSlice slice, service.ReadCbtMap(name, offset, count));
  return json{{"offset", slice.offset},
              {"count", slice.count},
              {"block_count", slice.block_count},
              {"data", control::Base64Encode(slice.bytes)}};
}

Result<json> CbtChanges(Service& service, const json& params, const Cancelled&) {
  BLKSNAP_ASSIGN_OR_RETURN(std::string name, GetString(params, "name"));
  BLKSNAP_ASSIGN_OR_RETURN(uint64_t since, GetUint(params, "since"));
  std::optional<Uuid> generation;
  if (auto g = GetOptionalString(params, "generation")) {
    generation = Uuid::Parse(*g);
    if (!generation) {
      return Status::Error(EINVAL, "invalid generation id '" + g->substr(0, 64) + "'");
    }
  }
  BLKSNAP_ASSIGN_OR_RETURN(CbtChangesView v, service.CbtChanges(name, since, generation));
  json extents = json::array();
  for (const auto& e : v.extents) extents.push_back({e.offset, e.length});
  return json{{"name", name},
              {"generation_id", v.info.generation_id.ToString()},
              {"changes_number", v.info.changes_number},
              {"since", since},
              {"bytes", v.bytes},
              {"extents", extents}};
}

Result<json> CbtMarkDirty(Service& service, const json& params, const Cancelled&) {
  BLKSNAP_ASSIGN_OR_RETURN(std::string name, GetString(params, "name"));
  if (!params.contains("ranges") || !params["ranges"].is_array()) {
    return Status::Error(EINVAL, "missing parameter 'ranges' (a list of [offset, length])");
  }
  const json& list = params["ranges"];
  if (list.size() > control::kMaxRangesPerRequest) {
    return Status::Error(E2BIG, "too many ranges in one request");
  }
  std::vector<ByteExtent> ranges;
  for (const auto& r : list) {
    if (!r.is_array() || r.size() != 2 || !r[0].is_number_unsigned() ||
        !r[1].is_number_unsigned()) {
      return Status::Error(EINVAL,
                           "each range must be [offset, length] with non-negative integers");
    }
    ranges.push_back({r[0].get<uint64_t>(), r[1].get<uint64_t>()});
  }
  BLKSNAP_RETURN_IF_ERROR(service.MarkDirty(name, ranges));
  return json::object();
}

Result<json> SnapshotCreate(Service& service, const json& params, const Cancelled&) {
  SnapshotRequest r;
  BLKSNAP_ASSIGN_OR_RETURN(r.storage, GetString(params, "storage"));
  if (params.contains("limit")) {
    BLKSNAP_ASSIGN_OR_RETURN(r.limit, GetUint(params, "limit"));
  }
  r.loop = GetBool(params, "loop");
  r.ublk = GetBool(params, "ublk");
  r.blockdev = GetBool(params, "blockdev");
  r.force = GetBool(params, "force");
  if (auto word = GetOptionalString(params, "durability")) {
    auto durability = ParseSnapshotDurability(*word);
    if (!durability.ok()) return durability.status();
    r.durability = *durability;
  } else if (params.contains("durability")) {
    return Status::Error(EINVAL, "'durability' must be a string: memory, crash or power");
  }
  if (params.contains("devices")) {
    if (!params["devices"].is_array()) return Status::Error(EINVAL, "'devices' must be a list");
    for (const auto& d : params["devices"]) {
      if (!d.is_string()) return Status::Error(EINVAL, "'devices' must be a list of names");
      r.devices.push_back(d.get<std::string>());
    }
  }
  BLKSNAP_ASSIGN_OR_RETURN(Uuid id, service.CreateSnapshot(r));
  return json{{"id", id.ToString()}};
}

Result<json> SnapshotAdd(Service& service, const json& params, const Cancelled&) {
  BLKSNAP_ASSIGN_OR_RETURN(Uuid id, ParseId(params));
  BLKSNAP_ASSIGN_OR_RETURN(std::string device, GetString(params, "device"));
  BLKSNAP_RETURN_IF_ERROR(service.AddDevice(id, device));
  return json::object();
}

Result<json> SnapshotSetLimit(Service& service, const json& params, const Cancelled&) {
  BLKSNAP_ASSIGN_OR_RETURN(Uuid id, ParseId(params));
  BLKSNAP_ASSIGN_OR_RETURN(uint64_t limit, GetUint(params, "limit"));
  BLKSNAP_ASSIGN_OR_RETURN(uint64_t now, service.SetStorageLimit(id, limit));
  return json{{"id", id.ToString()}, {"limit", now}};
}

Result<json> SnapshotTake(Service& service, const json& params, const Cancelled&) {
  BLKSNAP_ASSIGN_OR_RETURN(Uuid id, ParseId(params));
  BLKSNAP_ASSIGN_OR_RETURN(TakeView v, service.Take(id));
  return json{{"id", v.id.ToString()},
              {"took_ms", v.took_ms},
              {"held_us", v.held_us},
              {"frozen_us", v.frozen_us},
              {"warnings", v.warnings}};
}

// backup: the manifests as the repository stores them (docs/repository-format.md), one per
// device, plus the snapshot used.
Result<json> Backup(Service& service, const json& params, const Cancelled& cancelled) {
  BackupRequest r;
  if (!params.contains("devices") || !params["devices"].is_array() || params["devices"].empty())
    return Status::Error(EINVAL, "'devices' must be a non-empty list of names");
  for (const auto& d : params["devices"]) {
    if (!d.is_string()) return Status::Error(EINVAL, "'devices' must be a list of names");
    r.devices.push_back(d.get<std::string>());
  }
  BLKSNAP_ASSIGN_OR_RETURN(r.repo, GetString(params, "repo"));
  r.key_file = GetOptionalString(params, "key_file").value_or("");
  r.storage = GetOptionalString(params, "storage").value_or("");
  r.full = GetBool(params, "full");
  r.job = GetOptionalString(params, "job").value_or("");
  if (params.contains("snapshot")) {
    BLKSNAP_ASSIGN_OR_RETURN(r.snapshot, ParseId(json{{"id", params["snapshot"]}}));
  }
  if (params.contains("threads")) {
    BLKSNAP_ASSIGN_OR_RETURN(uint64_t threads, GetUint(params, "threads"));
    if (threads < 1 || threads > 64) return Status::Error(EINVAL, "'threads' must be 1 to 64");
    r.threads = static_cast<int>(threads);
  }
  BLKSNAP_ASSIGN_OR_RETURN(BackupView view, service.Backup(r, cancelled));
  json backups = json::array();
  for (const repo::Manifest& m : view.backups) {
    json j = json::parse(repo::EncodeManifest(m), nullptr, false);
    j.erase("checksum");
    backups.push_back(std::move(j));
  }
  return json{{"snapshot", view.snapshot.ToString()},
              {"took_ms", view.snapshot_took_ms},
              {"backups", std::move(backups)}};
}

Result<json> BackupProgress(Service& service, const json& params, const Cancelled&) {
  BLKSNAP_ASSIGN_OR_RETURN(std::string job, GetString(params, "job"));
  BLKSNAP_ASSIGN_OR_RETURN(BackupProgressView v, service.BackupProgress(job));
  return json{{"device", v.device},
              {"device_index", v.device_index},
              {"devices", v.devices},
              {"done_bytes", v.done_bytes},
              {"total_bytes", v.total_bytes},
              {"read_bytes", v.read_bytes},
              {"stored_bytes", v.stored_bytes}};
}

Result<json> RepoServe(Service& service, const json& params, const Cancelled&) {
  ServeBackupRequest r;
  BLKSNAP_ASSIGN_OR_RETURN(r.repo, GetString(params, "repo"));
  BLKSNAP_ASSIGN_OR_RETURN(r.backup, GetString(params, "backup"));
  r.key_file = GetOptionalString(params, "key_file").value_or("");
  r.loop = GetBool(params, "loop");
  BLKSNAP_ASSIGN_OR_RETURN(ServedBackupView v, service.ServeBackup(r));
  json j = AddressesJson(v.fronts);
  j["backup"] = v.backup;
  j["device"] = v.device;
  j["name"] = v.name;
  j["size"] = v.size;
  return j;
}

Result<json> RepoUnserve(Service& service, const json& params, const Cancelled&) {
  BLKSNAP_ASSIGN_OR_RETURN(std::string backup, GetString(params, "backup"));
  BLKSNAP_RETURN_IF_ERROR(service.UnserveBackup(backup));
  return json::object();
}

Result<json> SnapshotDestroy(Service& service, const json& params, const Cancelled&) {
  BLKSNAP_ASSIGN_OR_RETURN(Uuid id, ParseId(params));
  BLKSNAP_RETURN_IF_ERROR(service.DestroySnapshot(id, GetBool(params, "force")));
  return json::object();
}

Result<json> SnapshotRollback(Service& service, const json& params, const Cancelled&) {
  RollbackRequest r;
  BLKSNAP_ASSIGN_OR_RETURN(r.id, ParseId(params));
  if (params.contains("devices")) {
    if (!params["devices"].is_array()) return Status::Error(EINVAL, "'devices' must be a list");
    for (const auto& d : params["devices"]) {
      if (!d.is_string()) return Status::Error(EINVAL, "'devices' must be a list of names");
      r.devices.push_back(d.get<std::string>());
    }
  }
  r.force = GetBool(params, "force");
  BLKSNAP_ASSIGN_OR_RETURN(std::vector<std::string> devices, service.Rollback(r));
  return json{{"id", r.id.ToString()}, {"devices", devices}};
}

Result<json> SnapshotAbandonRollback(Service& service, const json& params, const Cancelled&) {
  BLKSNAP_ASSIGN_OR_RETURN(std::string device, GetString(params, "device"));
  BLKSNAP_RETURN_IF_ERROR(service.AbandonRollback(device));
  return json::object();
}

Result<json> SnapshotList(Service& service, const json&, const Cancelled&) {
  json list = json::array();
  for (const auto& s : service.Snapshots()) {
    list.push_back({{"id", s.id.ToString()},
                    {"state", ToString(s.state)},
                    {"durability", ToString(s.durability)},
                    {"recovered_from", OrNull(s.recovered_from)},
                    {"devices", s.devices}});
  }
  return json{{"snapshots", list}};
}

Result<json> SnapshotInfo(Service& service, const json& params, const Cancelled&) {
  BLKSNAP_ASSIGN_OR_RETURN(Uuid id, ParseId(params));
  BLKSNAP_ASSIGN_OR_RETURN(SnapshotView v, service.GetSnapshot(id));
  return SnapshotJson(v);
}

Result<json> WaitEvent(Service& service, const json& params, const Cancelled& cancelled) {
  BLKSNAP_ASSIGN_OR_RETURN(Uuid id, ParseId(params));
  BLKSNAP_ASSIGN_OR_RETURN(uint64_t timeout_ms, GetUint(params, "timeout_ms"));
  std::optional<uint64_t> after;
  if (params.contains("after")) {
    BLKSNAP_ASSIGN_OR_RETURN(after, GetUint(params, "after"));
  }
  // Clamped here so the conversion to milliseconds cannot overflow (the service caps it lower).
  timeout_ms = std::min<uint64_t>(timeout_ms, 7ull * 24 * 3600 * 1000);
  BLKSNAP_ASSIGN_OR_RETURN(
      EventWaitView v,
      service.WaitEvent(id, after, std::chrono::milliseconds(timeout_ms), cancelled));
  if (v.timed_out) {
    return json{{"result", "timeout"}, {"id", id.ToString()}, {"event", nullptr},
                {"device", nullptr},   {"errno", nullptr},    {"requested", nullptr},
                {"seq", v.last_seq}};
  }
  json j = EventJson(v.record);
  j["result"] = "ok";
  j["id"] = id.ToString();
  return j;
}

Result<json> StatusReport(Service& service, const json&, const Cancelled&) {
  StatusView v = service.GetStatus();
  json devices = json::array();
  for (const auto& d : v.devices) devices.push_back(DeviceJson(d));
  json snaps = json::array();
  for (const auto& s : v.snapshots) {
    json j = SnapshotJson(s);
    json events = json::array();
    for (const auto& r : s.events) events.push_back(EventJson(r));
    j["events"] = events;
    snaps.push_back(j);
  }
  const FrontsInfo& f = v.fronts;
  json daemon = {{"version", BLKSNAP_VERSION},
                 {"pid", static_cast<int64_t>(::getpid())},
                 {"state_dir", v.state_dir},
                 {"control", v.control_path},
                 {"nbd_unix", f.nbd ? OrNull(f.nbd_unix) : json(nullptr)},
                 {"nbd_tcp", f.nbd ? OrNull(f.nbd_tcp) : json(nullptr)},
                 {"nbd_tcp_insecure", f.nbd_tcp_insecure},
                 {"fuse_dir", f.fuse ? OrNull(f.fuse_dir) : json(nullptr)},
                 {"ublk", f.ublk},
                 {"frontend", f.block_frontend}};
  daemon["restart"] = RestartJson(v.restart);
  return json{{"daemon", daemon}, {"devices", devices}, {"snapshots", snaps}};
}

struct Method {
  std::string_view name;
  Handler handler;
};

// Mirrors docs/control-protocol.md, in its order.
constexpr std::array kMethods = {
    Method{"version", Version},
    Method{"attach", Attach},
    Method{"detach", Detach},
    Method{"devices", Devices},
    Method{"cbt-info", CbtInfoOf},
    Method{"cbt-read", CbtRead},
    Method{"cbt-changes", CbtChanges},
    Method{"cbt-mark-dirty", CbtMarkDirty},
    Method{"snapshot-create", SnapshotCreate},
    Method{"snapshot-add", SnapshotAdd},
    Method{"snapshot-take", SnapshotTake},
    Method{"snapshot-set-limit", SnapshotSetLimit},
    Method{"snapshot-destroy", SnapshotDestroy},
    Method{"snapshot-rollback", SnapshotRollback},
    Method{"snapshot-abandon-rollback", SnapshotAbandonRollback},
    Method{"backup", Backup},
    Method{"backup-progress", BackupProgress},
    Method{"repo-serve", RepoServe},
    Method{"repo-unserve", RepoUnserve},
    Method{"snapshot-list", SnapshotList},
    Method{"snapshot-info", SnapshotInfo},
    Method{"snapshot-wait-event", WaitEvent},
    Method{"status", StatusReport},
};

}  // namespace

Result<json> HandleRequest(Service& service, const std::string& method, const json& params,
                           const std::function<bool()>& cancelled) {
  if (!params.is_object()) return Status::Error(EINVAL, "'params' must be an object");
  for (const Method& m : kMethods) {
    if (m.name == method) return m.handler(service, params, cancelled);
  }
  return Status::Error(ENOSYS, "unknown method '" + method.substr(0, 64) + "'");
}

std::vector<std::string_view> MethodNames() {
  std::vector<std::string_view> names;
  for (const Method& m : kMethods) names.push_back(m.name);
  return names;
}

}  // namespace blksnap::daemon
