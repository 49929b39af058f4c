// The `blksnap` tool's commands (see commands.h): each checks its arguments, sends one or a few
// control requests and shows the result through format.h. Sizes, ranges and numbers given on
// the command line are parsed here (usage errors, exit 2) so that nothing malformed reaches the
// daemon. No state beyond the Context; single-threaded.
#include "cli/commands.h"

#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <thread>
#include <utility>

#include "blksnap/engine.h"
#include "cli/fiemap.h"
#include "control/protocol.h"

namespace blksnap::cli {

using nlohmann::json;

void Fail(const Status& status) {
  throw CommandError{ExitCodeForErrno(status.errnum()), status.errnum(),
                     std::string(status.message())};
}
void Usage(const std::string& message) { throw CommandError{kExitUsage, EINVAL, message}; }

void Check(const Status& s) {
  if (!s.ok()) Fail(s);
}

std::string Absolute(const std::string& path) {
  return std::filesystem::absolute(path).lexically_normal().string();
}

uint64_t ParseSizeArg(const std::string& what, const std::string& text) {
  auto v = control::ParseSize(text);
  if (!v.ok()) Usage(what + ": " + std::string(v.status().message()));
  return *v;
}

uint64_t ParseNumberArg(const std::string& what, const std::string& text, uint64_t max) {
  if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos ||
      text.size() > 19) {
    Usage(what + ": invalid number '" + text + "'");
  }
  uint64_t v = std::stoull(text);
  if (v > max) Usage(what + ": " + text + " is out of range (0.." + std::to_string(max) + ")");
  return v;
}

ControlClient& Context::Client() {
  if (!client) {
    auto c = ControlClient::Connect(control);
    if (!c.ok()) {
      throw CommandError{kExitNoDaemon, c.status().errnum(), std::string(c.status().message())};
    }
    client = std::move(c).value();
  }
  return *client;
}

json Context::Call(const std::string& method, const json& params) {
  return Check(Client().Call(method, params));
}

void BlockFronts::AddTo(json& params) const {
  params["loop"] = loop;
  if (ublk) params["ublk"] = true;
  if (blockdev) params["blockdev"] = true;
}

void CmdVersion(Context& ctx) { ShowVersion(ctx.output, ctx.Call("version")); }

void CmdAttach(Context& ctx, const std::string& path, const std::string& name,
               const BlockFronts& fronts) {
  json params = {{"path", Absolute(path)}};
  fronts.AddTo(params);
  if (!name.empty()) params["name"] = name;
  ShowAttach(ctx.output, ctx.Call("attach", params));
}

void CmdDetach(Context& ctx, const std::string& name, bool force) {
  ctx.Call("detach", {{"name", name}, {"force", force}});
  ShowDetach(ctx.output, name);
}

void CmdDevices(Context& ctx) { ShowDevices(ctx.output, ctx.Call("devices")); }

void CmdCbtInfo(Context& ctx, const std::string& name) {
  ShowCbtInfo(ctx.output, name, ctx.Call("cbt-info", {{"name", name}}));
}

void CmdCbtRead(Context& ctx, const std::string& name, const std::string& output) {
  auto map = Check(ctx.Client().ReadCbtMap(name));
  std::string path = Absolute(output);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) Fail(Status::Error(errno, "cannot write " + path + ": " + std::strerror(errno)));
  out.write(reinterpret_cast<const char*>(map.data()), static_cast<std::streamsize>(map.size()));
  out.close();
  if (!out) Fail(Status::Error(EIO, "writing " + path + " failed"));
  ShowCbtRead(ctx.output, name, path, map.size());
}

void CmdCbtChanges(Context& ctx, const std::string& name, const std::string& since,
                   const std::string& generation) {
  uint64_t n = ParseNumberArg("--since", since, 255);
  json params = {{"name", name}, {"since", n}};
  if (!generation.empty()) {
    if (!Uuid::Parse(generation)) Usage("--generation: invalid id '" + generation + "'");
    params["generation"] = generation;
  }
  ShowCbtChanges(ctx.output, name, n, ctx.Call("cbt-changes", params));
}

namespace {

// EXDEV unless `file` lives on a file system whose device is one of device `name`'s block
// fronts (loop, ublk): FIEMAP offsets are offsets on that file system's device.
Status CheckFileOnDevice(Context& ctx, const std::string& name, const std::string& file) {
  struct stat fst {};
  if (::stat(file.c_str(), &fst) != 0) return Status::FromErrno("stat " + file);
  json devices = ctx.Call("devices");
  std::vector<std::string> fronts;
  for (const auto& d : devices.value("devices", json::array())) {
    if (!d.is_object() || d.value("name", "") != name) continue;
    for (const char* kind : {"loop", "ublk"}) {
      if (!d.contains(kind) || !d[kind].is_string()) continue;
      const std::string path = d[kind].get<std::string>();
      struct stat bst {};
      if (::stat(path.c_str(), &bst) == 0 && S_ISBLK(bst.st_mode) && bst.st_rdev == fst.st_dev) {
        return Status::Ok();
      }
      fronts.push_back(path);
    }
    std::string listed;
    for (const auto& f : fronts) listed += (listed.empty() ? "" : ", ") + f;
    return Status::Error(EXDEV, file + " is on device " + std::to_string(major(fst.st_dev)) + ":" +
                                    std::to_string(minor(fst.st_dev)) +
                                    ", not on a block front of '" + name + "' (" +
                                    (listed.empty() ? "it has none" : listed) +
                                    "); its extents would mark the wrong blocks (--force if it "
                                    "is mounted from the NBD export)");
  }
  return Status::Error(ENOENT, "no device named '" + name + "'");
}

}  // namespace

void CmdCbtMarkDirty(Context& ctx, const std::string& name, const std::vector<std::string>& ranges,
                     const std::string& file, bool force) {
  if (ranges.empty() == file.empty()) Usage("cbt mark-dirty: give either --range or --file");
  if (force && file.empty()) Usage("cbt mark-dirty: --force goes with --file");
  std::vector<ByteExtent> list;
  size_t skipped = 0;
  if (!file.empty()) {
    if (!force) Check(CheckFileOnDevice(ctx, name, Absolute(file)));
    list = Check(FileExtents(Absolute(file), &skipped));
    if (list.empty()) Fail(Status::Error(ENODATA, "file " + file + " has no allocated extents"));
  } else {
    for (const auto& r : ranges) {
      auto e = control::ParseRange(r);
      if (!e.ok()) Usage("--range: " + std::string(e.status().message()));
      list.push_back(*e);
    }
  }
  Check(ctx.Client().MarkDirty(name, list));
  uint64_t bytes = 0;
  for (const auto& e : list) bytes += e.length;
  ShowMarkDirty(ctx.output, name, list.size(), bytes, skipped);
}

void CmdSnapshotCreate(Context& ctx, const std::string& storage, const std::string& limit,
                       const BlockFronts& fronts, const std::vector<std::string>& devices,
                       bool force, const std::string& durability) {
  uint64_t bytes = ParseSizeArg("--limit", limit);
  json params = {{"storage", Absolute(storage)}, {"limit", bytes}, {"devices", devices}};
  if (force) params["force"] = true;
  if (!durability.empty()) {
    // Checked here too, so a bad word is a usage error and nothing is asked of the daemon.
    if (!ParseSnapshotDurability(durability).ok()) {
      Usage("--durability: '" + durability.substr(0, 32) + "' is not one of memory, crash, power");
    }
    params["durability"] = durability;
  }
  fronts.AddTo(params);
  ShowSnapshotCreated(ctx.output, ctx.Call("snapshot-create", params));
}

void CmdSnapshotAdd(Context& ctx, const std::string& id, const std::string& device) {
  ctx.Call("snapshot-add", {{"id", id}, {"device", device}});
  ShowSnapshotAdded(ctx.output, id, device);
}

void CmdSnapshotTake(Context& ctx, const std::string& id) {
  ShowSnapshotTaken(ctx.output, ctx.Call("snapshot-take", {{"id", id}}));
}

void CmdSnapshotDestroy(Context& ctx, const std::string& id, bool force) {
  ctx.Call("snapshot-destroy", {{"id", id}, {"force", force}});
  ShowSnapshotDestroyed(ctx.output, id);
}

void CmdSnapshotAbandonRollback(Context& ctx, const std::string& device) {
  ctx.Call("snapshot-abandon-rollback", {{"device", device}});
  if (ctx.output.as_json) {
    ctx.output.Emit({{"device", device}, {"abandoned", true}});
    return;
  }
  std::cout << "device " << device
            << ": rollback abandoned (the device stays partly rolled back)\n";
}

void CmdSnapshotRollback(Context& ctx, const std::string& id,
                         const std::vector<std::string>& devices, bool force, bool no_wait) {
  json params = {{"id", id}, {"force", force}};
  if (!devices.empty()) params["devices"] = devices;
  json started = ctx.Call("snapshot-rollback", params)["devices"];
  const bool tty = ::isatty(STDERR_FILENO) == 1;
  json result = {{"id", id}, {"devices", json::array()}};
  for (;;) {
    // The devices' rollbacks, as `devices` reports them.
    json list = ctx.Call("devices")["devices"];
    uint64_t total = 0, merged = 0;
    bool merging = false;
    result["devices"] = json::array();
    for (const auto& d : list) {
      if (std::find(started.begin(), started.end(), d["name"]) == started.end()) continue;
      const json& r = d["rollback"];
      if (!r.is_object()) continue;
      total += r["bytes_total"].get<uint64_t>();
      merged += r["bytes_merged"].get<uint64_t>();
      merging = merging || r["state"] == "merging";
      result["devices"].push_back({{"name", d["name"]}, {"rollback", r}});
    }
    if (no_wait || !merging) break;
    if (ctx.output.as_json) {
      ctx.output.Emit(
          {{"progress", {{"what", "rollback"}, {"done_bytes", merged}, {"total_bytes", total}}}});
    } else if (tty) {
      std::fprintf(stderr, "\rrollback: %s / %s merged   ", SizeText(merged).c_str(),
                   SizeText(total).c_str());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  if (tty && !ctx.output.as_json && !no_wait) std::fprintf(stderr, "\n");
  for (const auto& d : result["devices"]) {
    if (d["rollback"]["state"] == "failed") {
      Fail(Status::Error(
          d["rollback"]["errno"].is_number() ? d["rollback"]["errno"].get<int>() : EIO,
          "rollback of '" + d["name"].get<std::string>() +
              "' failed: " + Str(d["rollback"]["error"])));
    }
  }
  if (ctx.output.as_json) {
    ctx.output.Emit(result);
    return;
  }
  for (const auto& d : result["devices"]) {
    std::cout << "device " << d["name"].get<std::string>() << ": rollback to snapshot " << id << " "
              << d["rollback"]["state"].get<std::string>() << " ("
              << SizeText(d["rollback"]["bytes_merged"]) << " of "
              << SizeText(d["rollback"]["bytes_total"]) << " merged)\n";
  }
}

void CmdSnapshotSetLimit(Context& ctx, const std::string& id, const std::string& limit) {
  uint64_t bytes = ParseSizeArg("SIZE", limit);
  ShowSnapshotLimit(ctx.output, ctx.Call("snapshot-set-limit", {{"id", id}, {"limit", bytes}}));
}

void CmdSnapshotList(Context& ctx) { ShowSnapshotList(ctx.output, ctx.Call("snapshot-list")); }

void CmdSnapshotInfo(Context& ctx, const std::string& id) {
  ShowSnapshotInfo(ctx.output, ctx.Call("snapshot-info", {{"id", id}}));
}

int CmdWaitEvent(Context& ctx, const std::string& id, const std::string& timeout) {
  uint64_t ms = ParseNumberArg("--timeout", timeout, 7ull * 24 * 3600 * 1000);
  json r = Check(ctx.Client().WaitEvent(id, std::chrono::milliseconds(ms)));
  ShowWaitEvent(ctx.output, ms, r);
  return r.value("result", "") == "timeout" ? kExitTimeout : kExitOk;
}

// Polls wait-event (1 s at a time) for the events after the last one seen. The snapshot is gone
// when the daemon answers ENODEV, or ENOENT once an event was seen (it existed at first); a
// corrupted event ends the watch with kExitCorrupted.
int CmdWatch(Context& ctx, const std::string& id) {
  uint64_t after = 0;
  for (;;) {
    auto r = ctx.Client().WaitEvent(id, std::chrono::milliseconds(1000), after);
    if (!r.ok()) {
      int err = r.status().errnum();
      if (err == ENODEV || (err == ENOENT && after > 0)) {
        ShowWatchDestroyed(ctx.output, id);
        return kExitOk;
      }
      Fail(r.status());
    }
    if ((*r)["result"] == "timeout") continue;
    after = (*r)["seq"].get<uint64_t>();
    ShowWatchEvent(ctx.output, *r);
    if ((*r)["event"] == "corrupted") return kExitCorrupted;
  }
}

void CmdStatus(Context& ctx) { ShowStatus(ctx.output, ctx.Call("status")); }

}  // namespace blksnap::cli
