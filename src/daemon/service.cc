// Service: devices, CBT, status and shutdown (snapshots are in service_snapshot.cc, the records
// and the restart in service_restore.cc). See service.h for the state and the locking.
//
// Every operation either fully succeeds or leaves the state as it was: attach undoes the engine
// attach if a front fails, snapshot create destroys the snapshot if a device cannot be added,
// mark-dirty checks every range before marking any.
#include "daemon/service.h"

#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <tuple>

#include "blksnap/io.h"
#include "util/block_topology.h"

namespace blksnap::daemon {
namespace {

Status Annotate(const Status& s, const std::string& prefix) {
  if (s.ok()) return s;
  return Status::Error(s.errnum(), prefix + ": " + std::string(s.message()));
}

std::string BootIdOf(const std::shared_ptr<MappedFiles>& files) {
  return (files ? files : PosixMappedFiles())->BootId();
}

}  // namespace

const char* const kRestartNote =
    "blksnapd restarted after a crash: snapshots from before the restart are gone unless durable "
    "(crash or power: recovered, see restart.snapshots); CBT goes on in the same generation where "
    "its state file allows (else a new generation: see cbt.generation_reason)";

const char* const kCleanRestartNote =
    "blksnapd restarted after a clean stop: devices re-attached, durable snapshots recovered (see "
    "restart.snapshots); durable CBT continues from its sealed state (see cbt.generation_reason "
    "and cbt.recovered_from)";

const char* RestartNote(bool clean_stop) { return clean_stop ? kCleanRestartNote : kRestartNote; }

Service::Service(std::unique_ptr<Engine> engine, std::unique_ptr<Fronts> fronts, ServiceInfo info)
    : info_(std::move(info)),
      env_(info_.env ? *info_.env : *Env::Default()),
      boot_id_(BootIdOf(info_.mapped_files)),
      engine_(std::move(engine)),
      fronts_(std::move(fronts)) {
  if (!info_.state_dir.empty()) records_ = std::make_unique<RecordStore>(env_, info_.state_dir);
  if (info_.durable_cbt && !info_.state_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(info_.state_dir + "/cbt", ec);
    if (ec) spdlog::warn("cannot create {}/cbt: {}", info_.state_dir, ec.message());
  }
}

Service::~Service() { Shutdown(); }

Status Service::ResolveBlockFronts(bool blockdev, bool* loop, bool* ublk) const {
  const FrontsInfo& fi = fronts_->info();
  if (blockdev) {
    if (fi.block_frontend == "ublk") {
      *ublk = true;
    } else {
      *loop = true;
    }
  }
  if (*ublk && !fi.ublk) {
    return Status::Error(ENOTSUP,
                         "--ublk: ublk is not available here (/dev/ublk-control missing: needs "
                         "Linux >= 6.0 with ublk_drv loaded, and root)");
  }
  return Status::Ok();
}

Result<std::shared_ptr<Tracker>> Service::FindTrackerLocked(const std::string& name) const {
  auto it = devices_.find(name);
  if (it == devices_.end()) return Status::Error(ENOENT, "no device named '" + name + "'");
  return it->second.tracker;
}

DeviceView Service::DeviceViewLocked(const DeviceEntry& d) const {
  DeviceView v;
  v.name = d.name;
  v.path = d.path;
  v.size = d.tracker->size();
  for (const auto& snap : d.tracker->snapshots()) v.snapshots.push_back(snap->id());
  if (!v.snapshots.empty()) v.snapshot = v.snapshots.back();
  v.cbt = d.tracker->cbt_info();
  v.rollback = d.tracker->rollback();
  if (auto stuck = stuck_rollbacks_.find(d.name); !v.rollback && stuck != stuck_rollbacks_.end())
    v.rollback = stuck->second;
  if (d.fronts) v.fronts = d.fronts->addresses();
  v.restored = d.restored;
  v.restored_after_clean_stop = d.restored && restart_ && restart_->clean_stop;
  return v;
}

Result<DeviceView> Service::Attach(const AttachRequest& request) {
  const std::string& path = request.path;
  if (path.empty() || path[0] != '/') {
    return Status::Error(EINVAL, "path must be absolute: '" + path + "'");
  }
  std::string name = request.name;
  if (name.empty()) name = std::filesystem::path(path).filename().string();
  Status valid = ValidateDeviceName(name);
  if (!valid.ok()) return Annotate(valid, "invalid device name '" + name.substr(0, 128) + "'");
  bool loop = request.loop;
  bool ublk = request.ublk;
  BLKSNAP_RETURN_IF_ERROR(ResolveBlockFronts(request.blockdev, &loop, &ublk));
  {
    MutexLock lock(mu_);
    if (failed_.count(name)) {
      return Status::Error(EEXIST, "a device named '" + name +
                                       "' is recorded but failed to re-attach at start; detach "
                                       "it first");
    }
  }
  auto view = AttachReserved(name, path, loop, ublk, -1, false);
  if (view.ok()) {
    MutexLock lock(mu_);
    SaveRecordsLocked();
  }
  return view;
}

std::string Service::CbtPath(const std::string& name) const {
  if (!info_.durable_cbt || info_.state_dir.empty()) return "";
  return info_.state_dir + "/cbt/" + name + ".cbt";
}

Result<Service::DeviceEntry> Service::BuildDevice(const std::string& name, const std::string& path,
                                                  const FileStat& st, bool loop, bool ublk,
                                                  int ublk_recover_id, bool restored,
                                                  bool hold_writes) {
  const bool is_block = st.kind == FileKind::kBlockDevice;
  // A block device is opened with O_DIRECT: its page cache would only hold a second copy of what
  // the fronts' own caches (the file system above ublk/loop, the NBD client) already hold, and
  // every write through it costs a page allocation, a copy and a writeback pass — 2-4x the CPU
  // per copy-on-write write measured in docs/performance-vm.md. Regular files stay buffered.
  // Exclusive (O_EXCL) for a block device: a mounted one is refused, and nobody can mount it
  // behind the tracker's back while it is attached.
  BLKSNAP_RETURN_IF_ERROR(Annotate(CheckStateDir(ublk_recover_id), "cannot attach '" + name + "'"));
  auto original = env_.OpenDevice(path, {.direct = is_block, .exclusive = true});
  if (!original.ok()) return Annotate(original.status(), "cannot open " + path);
  AttachOptions ao{.path = path};
  ao.hold_writes = hold_writes;
  // A rollback cut by the restart: the original is half merged; nothing is served until the
  // rollback is back (ResumeRollbacks).
  ao.hold_reads = hold_writes && restored && HasRollbackJournal(name);
  ao.cbt_path = CbtPath(name);
  ao.mapped_files = info_.mapped_files;
  if (!ao.cbt_path.empty()) {
    // A device re-attached from the records of a crashed run was tracked: a missing state file
    // is then "state-lost", not a first generation.
    ao.cbt_expected = restored;
    auto identity = StatCbtIdentity(path);
    if (identity.ok()) ao.identity = *identity;
  }
  auto tracker = engine_->Attach(name, *original, ao);
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
  (*fronts)->SetAliasOwner(*tracker);
  DeviceEntry entry;
  entry.name = name;
  entry.path = path;
  entry.st_dev = st.dev;
  entry.st_ino = st.ino;
  entry.tracker = *tracker;
  entry.fronts = std::move(fronts).value();
  entry.loop = loop;
  entry.ublk = ublk;
  return entry;
}

Result<FileStat> Service::StatOriginal(const std::string& path) {
  auto st = env_.Stat(path);
  if (!st.ok()) return Annotate(st.status(), "cannot attach " + path);
  if (!st->exists) return Status::Error(ENOENT, "cannot attach " + path + ": no such file");
  if (st->kind != FileKind::kRegular && st->kind != FileKind::kBlockDevice) {
    return Status::Error(EINVAL, "cannot attach " + path + ": not a regular file or block device");
  }
  return st;
}

Result<DeviceView> Service::AttachReserved(const std::string& name, const std::string& path,
                                           bool loop, bool ublk, int ublk_recover_id, bool restored,
                                           bool hold_writes) {
  BLKSNAP_ASSIGN_OR_RETURN(FileStat st, StatOriginal(path));
  {
    MutexLock lock(mu_);
    if (shut_down_) return Status::Error(ESHUTDOWN, "blksnapd is shutting down");
    if (devices_.count(name) || pending_.count(name)) {
      return Status::Error(EEXIST, "a device named '" + name + "' is already attached");
    }
    for (const auto& [other_name, d] : devices_) {
      if (d.st_dev == st.dev && d.st_ino == st.ino) {
        return Status::Error(EBUSY, path + " is already attached as '" + other_name + "'");
      }
    }
    pending_.insert(name);
  }
  // Opening, attaching and exposing (a ublk device takes a while to appear) run without mu_.
  auto built = BuildDevice(name, path, st, loop, ublk, ublk_recover_id, restored, hold_writes);
  MutexLock lock(mu_);
  pending_.erase(name);
  if (!built.ok()) return built.status();
  for (const auto& [other_name, d] : devices_) {
    if (d.st_dev == built->st_dev && d.st_ino == built->st_ino) {
      built->fronts->Remove().IgnoreError();
      engine_->Detach(name).IgnoreError();
      return Status::Error(EBUSY, path + " is already attached as '" + other_name + "'");
    }
  }
  if (shut_down_) {
    built->fronts->Remove().IgnoreError();
    engine_->Detach(name).IgnoreError();
    return Status::Error(ESHUTDOWN, "blksnapd is shutting down");
  }
  built->restored = restored;
  DeviceView view = DeviceViewLocked(*built);
  std::string extra;
  if (!view.fronts.loop.empty()) extra += " loop " + view.fronts.loop;
  if (!view.fronts.ublk.empty()) {
    extra += (view.fronts.ublk_recovered ? " ublk (recovered) " : " ublk ") + view.fronts.ublk;
  }
  if (view.fronts.ublk_recovered && restart_) ++restart_->ublk_recovered;
  if (st.kind == FileKind::kRegular && !env_.SysfsRoot().empty()) {
    // Writes through a loop device someone else bound to the file bypass the tracker; a
    // snapshot of the device is refused while one is bound (engine AddDevice).
    for (const auto& loop : topology::LoopsBoundTo(env_.SysfsRoot(), st.dev, st.ino)) {
      view.warnings.push_back(loop.device + " is bound to " + path +
                              ": writes through it are not tracked, and no snapshot of '" + name +
                              "' can be taken until it is detached (losetup -d " + loop.device +
                              ")");
      spdlog::warn("attach '{}': {}", name, view.warnings.back());
    }
  }
  devices_.emplace(name, std::move(built).value());
  spdlog::info("{} {} as '{}' ({} bytes){}", restored ? "re-attached" : "attached", path, name,
               view.size, extra);
  return view;
}

Status Service::Detach(const std::string& name, bool force) {
  MutexLock lock(mu_);
  auto it = devices_.find(name);
  if (it == devices_.end()) {
    auto f = failed_.find(name);
    if (f == failed_.end()) return Status::Error(ENOENT, "no device named '" + name + "'");
    // A record that could not be re-attached: drop it; its ublk device (if the kernel still
    // has it) is removed, failing the I/O that waited on it.
    const DeviceRecord& rec = f->second.record;
    if (rec.ublk_dev_id >= 0) {
      Status s = fronts_->RemoveOrphanUblk(rec.ublk_dev_id, rec.size, rec.logical_block_size);
      if (!s.ok()) {
        spdlog::warn("removing /dev/ublkb{} of '{}': {}", rec.ublk_dev_id, name, s.ToString());
      }
    }
    failed_.erase(f);
    SaveRecordsLocked();
    spdlog::info("dropped the record of '{}'", name);
    return Status::Ok();
  }
  DeviceEntry& d = it->second;
  if (auto snap = d.tracker->snapshot()) {
    return Status::Error(EBUSY, "device '" + name + "' is in snapshot " + snap->id().ToString() +
                                    "; destroy the snapshot first");
  }
  if (HasRollbackJournal(name)) {
    // Its journal would outlive it and be taken for the next device of this name's.
    return Status::Error(EBUSY, "device '" + name + "' has an unfinished rollback; `snapshot " +
                                    "abandon-rollback " + name + "` first");
  }
  if (!force) {
    Status idle = d.fronts->CheckIdle();
    if (!idle.ok()) {
      return Status::Error(EBUSY, "device '" + name + "' is in use: " +
                                      std::string(idle.message()) + " (use --force)");
    }
  }
  Status unexposed = d.fronts->Remove();
  if (!unexposed.ok()) spdlog::warn("detach '{}': {}", name, unexposed.ToString());
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
      d.fronts->SetAliasOwner(d.tracker);
    }
    SaveRecordsLocked();
    return Annotate(s, "cannot detach '" + name + "'");
  }
  devices_.erase(it);
  stuck_rollbacks_.erase(name);
  SaveRecordsLocked();
  spdlog::info("detached '{}'", name);
  return Status::Ok();
}

std::vector<DeviceView> Service::Devices() {
  MutexLock lock(mu_);
  std::vector<DeviceView> list;
  for (const auto& [name, d] : devices_) list.push_back(DeviceViewLocked(d));
  return list;
}

std::optional<RestartView> Service::restart() {
  MutexLock lock(mu_);
  return RestartLocked();
}

Result<CbtInfo> Service::GetCbtInfo(const std::string& name) {
  MutexLock lock(mu_);
  BLKSNAP_ASSIGN_OR_RETURN(auto tracker, FindTrackerLocked(name));
  return tracker->cbt_info();
}

Result<CbtMapSlice> Service::ReadCbtMap(const std::string& name, uint64_t offset, uint64_t count) {
  std::shared_ptr<Tracker> tracker;
  {
    MutexLock lock(mu_);
    BLKSNAP_ASSIGN_OR_RETURN(tracker, FindTrackerLocked(name));
  }
  CbtInfo info = tracker->cbt_info();
  if (offset > info.block_count) {
    return Status::Error(EINVAL, "offset " + std::to_string(offset) + " is past the map's " +
                                     std::to_string(info.block_count) + " blocks");
  }
  CbtMapSlice slice;
  slice.offset = offset;
  slice.count = std::min(count, info.block_count - offset);
  slice.block_count = info.block_count;
  slice.bytes.assign(slice.count, '\0');
  BLKSNAP_RETURN_IF_ERROR(tracker->ReadCbtMap(
      offset,
      std::span<uint8_t>(reinterpret_cast<uint8_t*>(slice.bytes.data()), slice.bytes.size())));
  return slice;
}

Result<CbtChangesView> Service::CbtChanges(const std::string& name, uint64_t since,
                                           const std::optional<Uuid>& generation) {
  if (since > 255) return Status::Error(EINVAL, "'since' must be a snap number 0..255");
  std::shared_ptr<Tracker> tracker;
  {
    MutexLock lock(mu_);
    BLKSNAP_ASSIGN_OR_RETURN(tracker, FindTrackerLocked(name));
  }
  CbtChangesView view;
  view.info = tracker->cbt_info();
  view.since = static_cast<uint8_t>(since);
  if (generation && *generation != view.info.generation_id) {
    return Status::Error(ESTALE, "generation changed: full backup needed (device '" + name +
                                     "' is at generation " + view.info.generation_id.ToString() +
                                     ")");
  }
  // A number from the future is a script's mistake (a stale or foreign N), not "no changes".
  if (view.since > view.info.changes_number) {
    return Status::Error(
        EINVAL, "'since' " + std::to_string(since) + " is after the last take of device '" + name +
                    "' (its changes number is " + std::to_string(view.info.changes_number) + ")");
  }
  BLKSNAP_ASSIGN_OR_RETURN(view.extents, tracker->ChangedExtents(view.since, generation));
  for (const auto& e : view.extents) view.bytes += e.length;
  return view;
}

Status Service::MarkDirty(const std::string& name, const std::vector<ByteExtent>& ranges) {
  std::shared_ptr<Tracker> tracker;
  {
    MutexLock lock(mu_);
    BLKSNAP_ASSIGN_OR_RETURN(tracker, FindTrackerLocked(name));
  }
  const uint64_t size = tracker->size();
  for (const auto& e : ranges) {
    std::string shown = std::to_string(e.offset) + ":" + std::to_string(e.length);
    if (e.length == 0) return Status::Error(EINVAL, "range " + shown + ": length must be > 0");
    if (e.offset >= size || e.length > size - e.offset) {
      return Status::Error(EINVAL, "range " + shown + " is past the end of device '" + name +
                                       "' (" + std::to_string(size) + " bytes)");
    }
  }
  for (const auto& e : ranges) BLKSNAP_RETURN_IF_ERROR(tracker->MarkDirty(e.offset, e.length));
  return Status::Ok();
}

StatusView Service::GetStatus() {
  MutexLock lock(mu_);
  StatusView v;
  v.state_dir = info_.state_dir;
  v.control_path = info_.control_path;
  v.fronts = fronts_->info();
  for (const auto& [name, d] : devices_) v.devices.push_back(DeviceViewLocked(d));
  for (const auto& [id, entry] : snapshots_) v.snapshots.push_back(SnapshotViewLocked(entry));
  v.restart = RestartLocked();
  return v;
}

void Service::Shutdown() {
  MutexLock lock(mu_);
  if (shut_down_) return;
  shut_down_ = true;
  // The devices and durable snapshots as they are recorded now, without ublk dev_ids: the ublk
  // devices (of devices and images) are removed below, and the next start creates new ones.
  Records kept = CollectRecordsLocked();
  for (auto& r : kept.devices) {
    if (devices_.count(r.name)) r.ublk_dev_id = -1;
  }
  kept.images.clear();
  kept.clean_stop = true;
  // Fronts first: once no client reads an image and no writer of an original is left, a closed
  // snapshot holds every change (Engine::CloseSnapshot).
  for (auto& [id, entry] : snapshots_) {
    for (auto& [device, exposure] : entry.images) exposure->Remove().IgnoreError();
  }
  for (auto& [id, exposure] : served_) exposure->Remove().IgnoreError();
  served_.clear();
  for (auto& [name, d] : devices_) {
    Status s = d.fronts->Remove();
    if (!s.ok()) spdlog::warn("removing fronts of '{}': {}", name, s.ToString());
  }
  // The snapshots not kept are destroyed first (their copies go to the older snapshots of
  // their devices, area_chain.h); then the kept ones are closed oldest first: an older one
  // reads through the newer ones until it is closed (CloseSnapshot refuses them before it).
  auto kept_taken = [&kept](const Uuid& id) {
    const std::string text = id.ToString();
    return std::any_of(kept.snapshots.begin(), kept.snapshots.end(),
                       [&text](const SnapshotRecord& r) { return r.id == text && r.taken; });
  };
  std::vector<std::tuple<bool, uint64_t, Uuid>> order;
  for (auto& [id, entry] : snapshots_)
    order.emplace_back(kept_taken(id), entry.snapshot->taken_at(), id);
  std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    return std::tie(std::get<0>(a), std::get<1>(a)) < std::tie(std::get<0>(b), std::get<1>(b));
  });
  for (const auto& item : order) {
    const Uuid& id = std::get<2>(item);
    const std::string text = id.ToString();
    auto rec = std::find_if(kept.snapshots.begin(), kept.snapshots.end(),
                            [&text](const SnapshotRecord& r) { return r.id == text; });
    if (rec != kept.snapshots.end() && !rec->taken) {
      kept.snapshots.erase(rec);  // nothing to keep: destroyed below
    } else if (rec != kept.snapshots.end()) {
      Status closed = engine_->CloseSnapshot(id);
      if (closed.ok()) {
        spdlog::info("closed snapshot {}: kept in {} for the next start", id.ToString(),
                     rec->storage_file);
        continue;
      }
      spdlog::warn("cannot close snapshot {} ({}): destroying it", id.ToString(),
                   closed.ToString());
      kept.snapshots.erase(rec);
    }
    Status s = engine_->Destroy(id);
    if (!s.ok()) spdlog::warn("destroying snapshot {}: {}", id.ToString(), s.ToString());
    spdlog::info("destroyed snapshot {}", id.ToString());
  }
  snapshots_.clear();
  for (auto& [name, d] : devices_) {
    // A clean stop seals durable CBT: attaching the device again continues its generation.
    DetachOptions options;
    options.keep_cbt = !CbtPath(name).empty();
    if (options.keep_cbt) {
      auto identity = StatCbtIdentity(d.path);
      if (identity.ok()) options.identity = *identity;
    }
    Status s = engine_->Detach(name, options);
    if (!s.ok()) spdlog::warn("detaching '{}': {}", name, s.ToString());
    spdlog::info("detached '{}' ({})", name,
                 options.keep_cbt ? "its CBT is sealed in " + CbtPath(name)
                                  : std::string("its CBT is lost: CBT lives in memory only"));
  }
  devices_.clear();
  // Clean stop: the devices stay recorded (and the records that failed to re-attach, and the
  // closed snapshots), so the next start brings them back; `detach` is how a device is
  // forgotten.
  WriteRecordsLocked(kept);
  fronts_->Stop();
}

}  // namespace blksnap::daemon
