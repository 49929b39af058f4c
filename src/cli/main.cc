// blksnap: the command-line tool. Every command is one or a few control-protocol requests
// (docs/cli.md, docs/control-protocol.md); the output is human-readable by default and exactly
// one JSON object with --json (`snapshot watch --json`: one object per line).
//
// Errors: one line "blksnap: error: ..." on stderr and exit status 1; usage errors (unknown
// command or option, bad size, bad range, bad number) exit with status 2. Client-side paths
// (attach PATH, --storage, --output, --file) are resolved against the tool's working directory
// before they are sent, since the daemon has its own.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "blksnap/control_client.h"
#include "cli/fiemap.h"
#include "control/protocol.h"

namespace blksnap::cli {
namespace {

using nlohmann::json;

constexpr int kExitError = 1;
constexpr int kExitUsage = 2;

// Thrown for errors found while running a command; main turns it into the one error line.
struct CommandError {
  int exit_code;
  std::string message;
};

[[noreturn]] void Fail(const Status& status) {
  throw CommandError{kExitError, std::string(status.message())};
}
[[noreturn]] void Usage(const std::string& message) { throw CommandError{kExitUsage, message}; }

template <typename T>
T Check(Result<T> r) {
  if (!r.ok()) Fail(r.status());
  return std::move(r).value();
}
void Check(const Status& s) {
  if (!s.ok()) Fail(s);
}

std::string Str(const json& v) {
  if (v.is_null()) return "-";
  if (v.is_string()) return v.get<std::string>();
  return v.dump();
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

void PrintTable(const std::vector<std::vector<std::string>>& rows) {
  if (rows.empty()) return;
  std::vector<size_t> width(rows[0].size(), 0);
  for (const auto& r : rows) {
    for (size_t i = 0; i < r.size() && i < width.size(); ++i)
      width[i] = std::max(width[i], r[i].size());
  }
  for (const auto& r : rows) {
    std::string line;
    for (size_t i = 0; i < r.size(); ++i) {
      line += r[i];
      if (i + 1 < r.size()) line += std::string(width[i] - r[i].size() + 2, ' ');
    }
    std::cout << line << "\n";
  }
}

std::string SizeText(const json& v) {
  if (!v.is_number()) return "-";
  return control::FormatSize(v.get<uint64_t>());
}

void PrintFronts(const json& f, const std::string& indent) {
  std::cout << indent << "nbd:  " << Str(f.value("nbd", json())) << "\n";
  if (f.contains("nbd_tcp") && !f["nbd_tcp"].is_null()) {
    std::cout << indent << "nbd (tcp): " << Str(f["nbd_tcp"]) << "\n";
  }
  if (f.contains("nbd_ro") && !f["nbd_ro"].is_null()) {
    std::cout << indent << "nbd (read-only): " << Str(f["nbd_ro"]) << "\n";
  }
  std::cout << indent << "fuse: " << Str(f.value("fuse", json())) << "\n";
  std::cout << indent << "loop: " << Str(f.value("loop", json())) << "\n";
  std::cout << indent << "ublk: " << Str(f.value("ublk", json())) << "\n";
}

std::string EventText(const json& e) {
  std::string ev = Str(e.value("event", json()));
  std::string text = ev;
  if (ev == "corrupted") {
    text += ": device '" + Str(e.value("device", json())) + "' failed";
    if (e.contains("errno") && e["errno"].is_number()) {
      text += " (errno " + e["errno"].dump() + ", " + std::strerror(e["errno"].get<int>()) + ")";
    }
  } else if (ev == "no_space") {
    text += ": difference storage wants " + SizeText(e.value("requested", json())) + " more";
  }
  return text;
}

struct Context {
  std::string control;
  bool json_output = false;
  std::unique_ptr<ControlClient> client;

  ControlClient& Client() {
    if (!client) client = Check(ControlClient::Connect(control));
    return *client;
  }
  json Call(const std::string& method, const json& params = json::object()) {
    return Check(Client().Call(method, params));
  }
  void Emit(const json& j) { std::cout << j.dump() << std::endl; }
};

// ---- commands ----

void CmdVersion(Context& ctx) {
  json r = ctx.Call("version");
  if (ctx.json_output) {
    ctx.Emit({{"version", BLKSNAP_VERSION},
              {"tool_version", BLKSNAP_VERSION},
              {"daemon_version", r.value("version", json())},
              {"protocol", r.value("protocol", json())}});
    return;
  }
  std::cout << "blksnap " << BLKSNAP_VERSION << "\n"
            << "blksnapd " << Str(r.value("version", json())) << " (protocol "
            << Str(r.value("protocol", json())) << ")\n";
}

void PrintDevice(const json& d) {
  std::cout << Str(d["name"]) << ": " << Str(d["path"]) << ", " << SizeText(d["size"]);
  if (!d.value("snapshot", json()).is_null()) std::cout << ", in snapshot " << Str(d["snapshot"]);
  std::cout << "\n";
  PrintFronts(d, "  ");
  if (d.value("restored", false)) {
    std::cout << "  note: " << Str(d.value("restore_note", json())) << "\n";
  }
}

// Block-device fronts asked for on the command line: --loop, --ublk, --blockdev (the daemon's
// --frontend choice).
struct BlockFronts {
  bool loop = false;
  bool ublk = false;
  bool blockdev = false;
  void AddTo(json& params) const {
    params["loop"] = loop;
    if (ublk) params["ublk"] = true;
    if (blockdev) params["blockdev"] = true;
  }
};

void CmdAttach(Context& ctx, const std::string& path, const std::string& name,
               const BlockFronts& fronts) {
  json params = {{"path", Absolute(path)}};
  fronts.AddTo(params);
  if (!name.empty()) params["name"] = name;
  json r = ctx.Call("attach", params);
  if (ctx.json_output) {
    json out = {{"name", r["name"]},
                {"path", r["path"]},
                {"size", r["size"]},
                {"nbd", r.value("nbd", json())},
                {"fuse", r.value("fuse", json())},
                {"loop", r.value("loop", json())},
                {"ublk", r.value("ublk", json())}};
    for (const char* k : {"nbd_tcp", "cbt"}) {
      if (r.contains(k)) out[k] = r[k];
    }
    ctx.Emit(out);
    return;
  }
  std::cout << "attached ";
  PrintDevice(r);
}

void CmdDetach(Context& ctx, const std::string& name, bool force) {
  ctx.Call("detach", {{"name", name}, {"force", force}});
  if (ctx.json_output) {
    ctx.Emit(json::object());
  } else {
    std::cout << "detached " << name << "\n";
  }
}

// What a daemon restart after a crash left behind (the "restart" object of devices/status).
void PrintRestart(const json& restart) {
  if (!restart.is_object()) return;
  std::cout << "\nnote: " << Str(restart.value("message", json())) << "\n";
  for (const auto& n : restart.value("notes", json::array())) {
    std::cout << "note: " << Str(n) << "\n";
  }
  for (const auto& f : restart.value("failed", json::array())) {
    std::cout << "FAILED to re-attach " << Str(f.value("name", json())) << " ("
              << Str(f.value("path", json())) << "): " << Str(f.value("error", json()))
              << " (retried at the next start; `blksnap detach " << Str(f.value("name", json()))
              << "` drops it)\n";
  }
}

void CmdDevices(Context& ctx) {
  json r = ctx.Call("devices");
  if (ctx.json_output) {
    ctx.Emit(r);
    return;
  }
  if (r["devices"].empty()) {
    std::cout << "no devices attached\n";
    return;
  }
  std::vector<std::vector<std::string>> rows = {
      {"NAME", "SIZE", "SNAPSHOT", "CBT", "PATH", "NBD", "FUSE", "LOOP", "UBLK"}};
  for (const auto& d : r["devices"]) {
    std::string cbt = "-";
    if (d.contains("cbt")) {
      cbt = "#" + Str(d["cbt"]["changes_number"]) + " " + SizeText(d["cbt"]["block_size"]) + "x" +
            Str(d["cbt"]["block_count"]);
    }
    rows.push_back({Str(d["name"]), SizeText(d["size"]), Str(d.value("snapshot", json())), cbt,
                    Str(d["path"]), Str(d.value("nbd", json())), Str(d.value("fuse", json())),
                    Str(d.value("loop", json())), Str(d.value("ublk", json()))});
  }
  PrintTable(rows);
  PrintRestart(r.value("restart", json()));
}

void CmdCbtInfo(Context& ctx, const std::string& name) {
  json r = ctx.Call("cbt-info", {{"name", name}});
  json out = {{"block_size", r["block_size"]},
              {"block_count", r["block_count"]},
              {"device_capacity", r["device_capacity"]},
              {"generation_id", r["generation_id"]},
              {"changes_number", r["changes_number"]}};
  if (ctx.json_output) {
    ctx.Emit(out);
    return;
  }
  std::cout << "device:          " << name << "\n"
            << "block size:      " << SizeText(r["block_size"]) << " (" << Str(r["block_size"])
            << ")\n"
            << "block count:     " << Str(r["block_count"]) << "\n"
            << "device capacity: " << SizeText(r["device_capacity"]) << " ("
            << Str(r["device_capacity"]) << ")\n"
            << "generation id:   " << Str(r["generation_id"]) << "\n"
            << "changes number:  " << Str(r["changes_number"]) << "\n";
}

void CmdCbtRead(Context& ctx, const std::string& name, const std::string& output) {
  auto map = Check(ctx.Client().ReadCbtMap(name));
  std::string path = Absolute(output);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) Fail(Status::Error(errno, "cannot write " + path + ": " + std::strerror(errno)));
  out.write(reinterpret_cast<const char*>(map.data()), static_cast<std::streamsize>(map.size()));
  out.close();
  if (!out) Fail(Status::Error(EIO, "writing " + path + " failed"));
  if (ctx.json_output) {
    ctx.Emit({{"bytes", map.size()}});
  } else {
    std::cout << "wrote " << map.size() << " bytes of the CBT map of " << name << " to " << path
              << "\n";
  }
}

void CmdCbtChanges(Context& ctx, const std::string& name, const std::string& since,
                   const std::string& generation) {
  uint64_t n = ParseNumberArg("--since", since, 255);
  json params = {{"name", name}, {"since", n}};
  if (!generation.empty()) {
    if (!Uuid::Parse(generation)) Usage("--generation: invalid id '" + generation + "'");
    params["generation"] = generation;
  }
  json r = ctx.Call("cbt-changes", params);
  if (ctx.json_output) {
    ctx.Emit({{"generation_id", r["generation_id"]},
              {"changes_number", r.value("changes_number", json())},
              {"bytes", r.value("bytes", json())},
              {"extents", r["extents"]}});
    return;
  }
  std::cout << "device " << name << ", generation " << Str(r["generation_id"]) << ": "
            << r["extents"].size() << " extent(s), " << SizeText(r.value("bytes", json()))
            << " changed since snap " << n << " (now at " << Str(r.value("changes_number", json()))
            << ")\n";
  if (!r["extents"].empty()) {
    std::vector<std::vector<std::string>> rows = {{"OFFSET", "LENGTH", "(offset)", "(length)"}};
    for (const auto& e : r["extents"]) {
      rows.push_back({Str(e[0]), Str(e[1]), SizeText(e[0]), SizeText(e[1])});
    }
    PrintTable(rows);
  }
}

void CmdCbtMarkDirty(Context& ctx, const std::string& name, const std::vector<std::string>& ranges,
                     const std::string& file) {
  if (ranges.empty() == file.empty()) Usage("cbt mark-dirty: give either --range or --file");
  std::vector<ByteExtent> list;
  size_t skipped = 0;
  if (!file.empty()) {
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
  if (ctx.json_output) {
    ctx.Emit({{"ranges", list.size()}, {"bytes", bytes}});
  } else {
    std::cout << "marked " << list.size() << " range(s), " << control::FormatSize(bytes) << " of "
              << name << " as changed";
    if (skipped) std::cout << " (" << skipped << " extent(s) without a location skipped)";
    std::cout << "\n";
  }
}

void CmdSnapshotCreate(Context& ctx, const std::string& storage, const std::string& limit,
                       const BlockFronts& fronts, const std::vector<std::string>& devices) {
  uint64_t bytes = ParseSizeArg("--limit", limit);
  json params = {{"storage", Absolute(storage)}, {"limit", bytes}, {"devices", devices}};
  fronts.AddTo(params);
  json r = ctx.Call("snapshot-create", params);
  if (ctx.json_output) {
    ctx.Emit({{"id", r["id"]}});
  } else {
    std::cout << Str(r["id"]) << "\n";
  }
}

void CmdSnapshotAdd(Context& ctx, const std::string& id, const std::string& device) {
  ctx.Call("snapshot-add", {{"id", id}, {"device", device}});
  if (ctx.json_output) {
    ctx.Emit(json::object());
  } else {
    std::cout << "added " << device << " to snapshot " << id << "\n";
  }
}

void CmdSnapshotTake(Context& ctx, const std::string& id) {
  json r = ctx.Call("snapshot-take", {{"id", id}});
  if (ctx.json_output) {
    json out = {{"id", r["id"]}, {"took_ms", r["took_ms"]}};
    for (const char* k : {"held_us", "frozen_us", "warnings"}) {
      if (r.contains(k)) out[k] = r[k];
    }
    ctx.Emit(out);
    return;
  }
  char ms[32];
  std::snprintf(ms, sizeof(ms), "%.3f", r["took_ms"].get<double>());
  std::cout << "took snapshot " << Str(r["id"]) << " in " << ms << " ms (writers held "
            << Str(r.value("held_us", json())) << " us)\n";
  for (const auto& w : r.value("warnings", json::array())) {
    std::cerr << "blksnap: warning: " << Str(w) << "\n";
  }
}

void CmdSnapshotDestroy(Context& ctx, const std::string& id) {
  ctx.Call("snapshot-destroy", {{"id", id}});
  if (ctx.json_output) {
    ctx.Emit(json::object());
  } else {
    std::cout << "destroyed snapshot " << id << "\n";
  }
}

void CmdSnapshotList(Context& ctx) {
  json r = ctx.Call("snapshot-list");
  if (ctx.json_output) {
    ctx.Emit(r);
    return;
  }
  if (r["snapshots"].empty()) {
    std::cout << "no snapshots\n";
    return;
  }
  std::vector<std::vector<std::string>> rows = {{"ID", "STATE", "DEVICES"}};
  for (const auto& s : r["snapshots"]) {
    std::string devices;
    for (const auto& d : s.value("devices", json::array())) {
      if (!devices.empty()) devices += ',';
      devices += Str(d);
    }
    rows.push_back({Str(s["id"]), Str(s["state"]), devices.empty() ? "-" : devices});
  }
  PrintTable(rows);
}

void PrintSnapshotInfo(const json& r) {
  const json& st = r["storage"];
  std::cout << "snapshot " << Str(r["id"]) << ": " << Str(r["state"]) << "\n"
            << "  storage: " << Str(st["path"]) << ", used " << SizeText(st["used"]) << " of "
            << SizeText(st["capacity"]) << " (limit "
            << (st["limit"].is_number() && st["limit"].get<uint64_t>() == 0 ? std::string("none")
                                                                            : SizeText(st["limit"]))
            << ")\n";
  for (const auto& d : r["devices"]) {
    std::cout << "  device " << Str(d["name"]);
    if (d.value("error", 0) != 0) {
      std::cout << ": FAILED (" << std::strerror(d["error"].get<int>()) << ")";
    }
    std::cout << "\n";
    PrintFronts(d["image"], "    image ");
  }
}

void CmdSnapshotInfo(Context& ctx, const std::string& id) {
  json r = ctx.Call("snapshot-info", {{"id", id}});
  if (ctx.json_output) {
    ctx.Emit(r);
  } else {
    PrintSnapshotInfo(r);
  }
}

void CmdWaitEvent(Context& ctx, const std::string& id, const std::string& timeout) {
  uint64_t ms = ParseNumberArg("--timeout", timeout, 7ull * 24 * 3600 * 1000);
  json r = Check(ctx.Client().WaitEvent(id, std::chrono::milliseconds(ms)));
  if (ctx.json_output) {
    ctx.Emit(r);
    return;
  }
  if (r["result"] == "timeout") {
    std::cout << "timeout: no event within " << ms << " ms\n";
  } else {
    std::cout << EventText(r) << "\n";
  }
}

int CmdWatch(Context& ctx, const std::string& id) {
  uint64_t after = 0;
  for (;;) {
    auto r = ctx.Client().WaitEvent(id, std::chrono::milliseconds(1000), after);
    if (!r.ok()) {
      int err = r.status().errnum();
      if (err == ENODEV || (err == ENOENT && after > 0)) {
        if (ctx.json_output) {
          ctx.Emit({{"id", id}, {"result", "destroyed"}, {"event", "destroyed"}});
        } else {
          std::cout << "snapshot " << id << " destroyed\n";
        }
        return 0;
      }
      Fail(r.status());
    }
    if ((*r)["result"] == "timeout") {
      if (after == 0 && r->contains("seq")) after = 0;
      continue;
    }
    after = (*r)["seq"].get<uint64_t>();
    if (ctx.json_output) {
      ctx.Emit(*r);
    } else {
      std::time_t t = (*r).value("time", int64_t(0)) / 1000;
      char when[32];
      std::strftime(when, sizeof(when), "%H:%M:%S", std::localtime(&t));
      std::cout << when << " " << EventText(*r) << std::endl;
    }
    if ((*r)["event"] == "corrupted") return 0;
  }
}

void CmdStatus(Context& ctx) {
  json r = ctx.Call("status");
  if (ctx.json_output) {
    ctx.Emit(r);
    return;
  }
  const json& d = r["daemon"];
  std::cout << "blksnapd " << Str(d["version"]) << " (pid " << Str(d["pid"]) << ")\n"
            << "  control:  " << Str(d["control"]) << "\n"
            << "  state:    " << Str(d["state_dir"]) << "\n"
            << "  nbd:      " << Str(d.value("nbd_unix", json()));
  if (!d.value("nbd_tcp", json()).is_null()) std::cout << ", tcp " << Str(d["nbd_tcp"]);
  std::cout << "\n  fuse:     " << Str(d.value("fuse_dir", json())) << "\n"
            << "  ublk:     " << (d.value("ublk", false) ? "available" : "not available")
            << "; block devices via " << Str(d.value("frontend", json())) << "\n";
  PrintRestart(d.value("restart", json()));
  std::cout << "\n";

  std::cout << "DEVICES\n";
  if (r["devices"].empty()) {
    std::cout << "  (none)\n";
  } else {
    std::vector<std::vector<std::string>> rows = {
        {"  NAME", "SIZE", "SNAPSHOT", "CBT#", "CBT BLOCK", "PATH", "LOOP", "UBLK"}};
    for (const auto& dev : r["devices"]) {
      rows.push_back(
          {"  " + Str(dev["name"]), SizeText(dev["size"]), Str(dev.value("snapshot", json())),
           dev.contains("cbt") ? Str(dev["cbt"]["changes_number"]) : "-",
           dev.contains("cbt") ? SizeText(dev["cbt"]["block_size"]) : "-", Str(dev["path"]),
           Str(dev.value("loop", json())), Str(dev.value("ublk", json()))});
    }
    PrintTable(rows);
  }
  std::cout << "\nSNAPSHOTS\n";
  if (r["snapshots"].empty()) {
    std::cout << "  (none)\n";
  } else {
    std::vector<std::vector<std::string>> rows = {
        {"  ID", "STATE", "DEVICES", "STORAGE", "USED", "CAPACITY", "LIMIT"}};
    for (const auto& s : r["snapshots"]) {
      std::string devices;
      for (const auto& dev : s["devices"]) {
        if (!devices.empty()) devices += ',';
        devices += Str(dev["name"]);
        if (dev.value("error", 0) != 0) devices += "(failed)";
      }
      const json& st = s["storage"];
      rows.push_back({"  " + Str(s["id"]), Str(s["state"]), devices.empty() ? "-" : devices,
                      Str(st["path"]), SizeText(st["used"]), SizeText(st["capacity"]),
                      st["limit"] == 0 ? "none" : SizeText(st["limit"])});
    }
    PrintTable(rows);
  }
  std::cout << "\nEVENTS\n";
  size_t shown = 0;
  for (const auto& s : r["snapshots"]) {
    for (const auto& e : s.value("events", json::array())) {
      std::time_t t = e.value("time", int64_t(0)) / 1000;
      char when[32];
      std::strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", std::localtime(&t));
      std::cout << "  " << when << "  " << Str(s["id"]) << "  " << EventText(e) << "\n";
      ++shown;
    }
  }
  if (shown == 0) std::cout << "  (none)\n";
}

int Main(int argc, char** argv) {
  CLI::App app{"blksnap: block-device snapshots and change tracking (talks to blksnapd)",
               "blksnap"};
  app.set_version_flag("--version", std::string("blksnap ") + BLKSNAP_VERSION);
  Context ctx;
  const char* env = std::getenv("BLKSNAP_CONTROL");
  ctx.control = env && *env ? env : control::kDefaultControlPath;
  app.add_option("--control", ctx.control, "blksnapd control socket ($BLKSNAP_CONTROL)")
      ->capture_default_str();
  app.add_flag("--json", ctx.json_output, "print exactly one JSON object");
  app.require_subcommand(1);
  app.fallthrough();

  std::function<int()> action;
  auto run = [&action](std::function<void()> f) {
    action = [f] {
      f();
      return 0;
    };
  };

  app.add_subcommand("version", "daemon and tool versions")->callback([&] {
    run([&] { CmdVersion(ctx); });
  });

  std::string attach_path, attach_name;
  BlockFronts attach_fronts;
  auto* attach = app.add_subcommand("attach", "start tracking a file or block device");
  attach->add_option("PATH", attach_path, "file or block device")->required();
  attach->add_option("--name", attach_name, "device name (default: the file's base name)");
  attach->add_flag("--loop", attach_fronts.loop, "also put a loop device on its FUSE front");
  attach->add_flag("--ublk", attach_fronts.ublk, "also expose it as a ublk device /dev/ublkbN");
  attach->add_flag("--blockdev", attach_fronts.blockdev,
                   "also expose it as a block device through the daemon's --frontend");
  attach->callback([&] { run([&] { CmdAttach(ctx, attach_path, attach_name, attach_fronts); }); });

  std::string detach_name;
  bool detach_force = false;
  auto* detach = app.add_subcommand("detach", "stop tracking a device");
  detach->add_option("NAME", detach_name)->required();
  detach->add_flag("--force", detach_force, "even while a front is in use");
  detach->callback([&] { run([&] { CmdDetach(ctx, detach_name, detach_force); }); });

  app.add_subcommand("devices", "list tracked devices")->callback([&] {
    run([&] { CmdDevices(ctx); });
  });

  auto* cbt = app.add_subcommand("cbt", "change-block tracking");
  cbt->require_subcommand(1);
  std::string cbt_name, cbt_output, cbt_since, cbt_generation, cbt_file;
  std::vector<std::string> cbt_ranges;
  auto* cbt_info = cbt->add_subcommand("info", "CBT parameters");
  cbt_info->add_option("NAME", cbt_name)->required();
  cbt_info->callback([&] { run([&] { CmdCbtInfo(ctx, cbt_name); }); });
  auto* cbt_read = cbt->add_subcommand("read", "save the read map (one byte per block)");
  cbt_read->add_option("NAME", cbt_name)->required();
  cbt_read->add_option("--output,-o", cbt_output, "file to write")->required();
  cbt_read->callback([&] { run([&] { CmdCbtRead(ctx, cbt_name, cbt_output); }); });
  auto* cbt_changes = cbt->add_subcommand("changes", "changed byte extents since a snap number");
  cbt_changes->add_option("NAME", cbt_name)->required();
  cbt_changes->add_option("--since", cbt_since, "snap number of the last backup (0..255)")
      ->required();
  cbt_changes->add_option("--generation", cbt_generation, "expected generation id");
  cbt_changes->callback(
      [&] { run([&] { CmdCbtChanges(ctx, cbt_name, cbt_since, cbt_generation); }); });
  auto* cbt_mark = cbt->add_subcommand("mark-dirty", "mark ranges changed");
  cbt_mark->add_option("NAME", cbt_name)->required();
  cbt_mark->add_option("--range", cbt_ranges, "OFFSET:LENGTH (sizes), repeatable");
  cbt_mark->add_option("--file", cbt_file, "mark the extents of this file (FIEMAP)");
  cbt_mark->callback([&] { run([&] { CmdCbtMarkDirty(ctx, cbt_name, cbt_ranges, cbt_file); }); });

  auto* snap = app.add_subcommand("snapshot", "snapshots");
  snap->require_subcommand(1);
  std::string snap_id, snap_storage, snap_limit, snap_device, snap_timeout;
  BlockFronts snap_fronts;
  std::vector<std::string> snap_devices;
  auto* create = snap->add_subcommand("create", "create a snapshot of devices");
  create
      ->add_option("--storage", snap_storage, "difference storage: directory, file or block device")
      ->required();
  create->add_option("--limit", snap_limit, "storage limit (size; 0 = none)")->required();
  create->add_flag("--loop", snap_fronts.loop, "put loop devices on the images");
  create->add_flag("--ublk", snap_fronts.ublk, "expose the images as ublk devices");
  create->add_flag("--blockdev", snap_fronts.blockdev,
                   "expose the images as block devices through the daemon's --frontend");
  create->add_option("DEVICE", snap_devices, "device names")->required();
  create->callback([&] {
    run([&] { CmdSnapshotCreate(ctx, snap_storage, snap_limit, snap_fronts, snap_devices); });
  });
  auto* add = snap->add_subcommand("add", "add a device before take");
  add->add_option("ID", snap_id)->required();
  add->add_option("DEVICE", snap_device)->required();
  add->callback([&] { run([&] { CmdSnapshotAdd(ctx, snap_id, snap_device); }); });
  auto* take = snap->add_subcommand("take", "take the snapshot");
  take->add_option("ID", snap_id)->required();
  take->callback([&] { run([&] { CmdSnapshotTake(ctx, snap_id); }); });
  auto* destroy = snap->add_subcommand("destroy", "destroy the snapshot");
  destroy->add_option("ID", snap_id)->required();
  destroy->callback([&] { run([&] { CmdSnapshotDestroy(ctx, snap_id); }); });
  snap->add_subcommand("list", "all snapshots")->callback([&] {
    run([&] { CmdSnapshotList(ctx); });
  });
  auto* info = snap->add_subcommand("info", "state, storage and images");
  info->add_option("ID", snap_id)->required();
  info->callback([&] { run([&] { CmdSnapshotInfo(ctx, snap_id); }); });
  auto* wait = snap->add_subcommand("wait-event", "wait for the next event");
  wait->add_option("ID", snap_id)->required();
  wait->add_option("--timeout", snap_timeout, "milliseconds")->required();
  wait->callback([&] { run([&] { CmdWaitEvent(ctx, snap_id, snap_timeout); }); });
  auto* watch = snap->add_subcommand("watch", "print events until corrupted or destroyed");
  watch->add_option("ID", snap_id)->required();
  watch->callback([&] { action = [&] { return CmdWatch(ctx, snap_id); }; });

  app.add_subcommand("status", "devices, snapshots, storage use and events")->callback([&] {
    run([&] { CmdStatus(ctx); });
  });

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion&) {
    std::cout << "blksnap " << BLKSNAP_VERSION << "\n";
    return 0;
  } catch (const CLI::ParseError& e) {
    std::string msg = e.what();
    if (msg.empty()) msg = "invalid command line";
    std::cerr << "blksnap: error: " << msg << " (see blksnap --help)\n";
    return kExitUsage;
  } catch (const CommandError& e) {
    std::cerr << "blksnap: error: " << e.message << "\n";
    return e.exit_code;
  }
  if (!action) {
    std::cerr << "blksnap: error: no command given (see blksnap --help)\n";
    return kExitUsage;
  }
  try {
    return action();
  } catch (const CommandError& e) {
    std::cerr << "blksnap: error: " << e.message << "\n";
    return e.exit_code;
  } catch (const std::exception& e) {
    std::cerr << "blksnap: error: " << e.what() << "\n";
    return kExitError;
  }
}

}  // namespace
}  // namespace blksnap::cli

int main(int argc, char** argv) { return blksnap::cli::Main(argc, argv); }
