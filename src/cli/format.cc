// Formatting of the `blksnap` tool's results (see format.h): human text — tables padded to the
// widest cell, sizes as "64M", "-" for null — or the JSON object docs/cli.md promises. Each
// Show function first handles --json (Emit) and returns, then prints the human form; the JSON
// objects of attach, cbt info/changes and snapshot take are filtered to the documented keys,
// the others pass the daemon's result through. No state, no locking: the tool is one thread.
#include "cli/format.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <iostream>

#include "control/protocol.h"

namespace blksnap::cli {

using nlohmann::json;

void Output::Emit(const json& j) const { std::cout << j.dump() << std::endl; }

void ShowError(const Output& out, int errnum, const std::string& message) {
  // Replace, not throw, on bytes that are not UTF-8 (a path in the message).
  if (out.as_json) {
    std::cout << json{{"error", {{"errno", errnum}, {"message", message}}}}.dump(
                     -1, ' ', false, json::error_handler_t::replace)
              << std::endl;
  }
  std::cerr << "blksnap: error: " << message << "\n";
}

std::string Str(const json& v) {
  if (v.is_null()) return "-";
  if (v.is_string()) return v.get<std::string>();
  return v.dump();
}

std::string SizeText(const json& v) {
  if (!v.is_number()) return "-";
  return control::FormatSize(v.get<uint64_t>());
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

namespace {

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

void PrintDevice(const json& d) {
  std::cout << Str(d["name"]) << ": " << Str(d["path"]) << ", " << SizeText(d["size"]);
  if (!d.value("snapshot", json()).is_null()) std::cout << ", in snapshot " << Str(d["snapshot"]);
  std::cout << "\n";
  PrintFronts(d, "  ");
  if (d.value("restored", false)) {
    std::cout << "  note: " << Str(d.value("restore_note", json())) << "\n";
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
  for (const auto& s : restart.value("snapshots", json::array())) {
    std::cout << "recovered snapshot " << Str(s.value("id", json())) << " ("
              << Str(s.value("state", json())) << ", after "
              << Str(s.value("recovered_from", json())) << ")\n";
  }
  for (const auto& f : restart.value("snapshots_failed", json::array())) {
    std::cout << "FAILED to recover snapshot " << Str(f.value("id", json())) << " from "
              << Str(f.value("storage_file", json())) << ": " << Str(f.value("error", json()))
              << " (its record is dropped; the storage file is left as it is)\n";
  }
}

// Prints a JSON {} for --json, else the human line.
void Done(const Output& out, const std::string& line) {
  if (out.as_json) {
    out.Emit(json::object());
  } else {
    std::cout << line << "\n";
  }
}

// An event time (milliseconds since the epoch) in local time.
std::string When(const json& e, const char* format) {
  std::time_t t = e.value("time", int64_t(0)) / 1000;
  char when[32];
  std::strftime(when, sizeof(when), format, std::localtime(&t));
  return when;
}

}  // namespace

void ShowVersion(const Output& out, json daemon) {
  if (out.as_json) {
    out.Emit({{"version", BLKSNAP_VERSION},
              {"tool_version", BLKSNAP_VERSION},
              {"daemon_version", daemon.value("version", json())},
              {"protocol", daemon.value("protocol", json())}});
    return;
  }
  std::cout << "blksnap " << BLKSNAP_VERSION << "\n"
            << "blksnapd " << Str(daemon.value("version", json())) << " (protocol "
            << Str(daemon.value("protocol", json())) << ")\n";
}

void ShowAttach(const Output& out, json r) {
  if (out.as_json) {
    json j = {{"name", r["name"]},
              {"path", r["path"]},
              {"size", r["size"]},
              {"nbd", r.value("nbd", json())},
              {"fuse", r.value("fuse", json())},
              {"loop", r.value("loop", json())},
              {"ublk", r.value("ublk", json())}};
    for (const char* k : {"nbd_tcp", "cbt", "warnings"}) {
      if (r.contains(k)) j[k] = r[k];
    }
    out.Emit(j);
    return;
  }
  std::cout << "attached ";
  PrintDevice(r);
  for (const auto& w : r.value("warnings", json::array())) {
    if (w.is_string()) std::cerr << "blksnap: warning: " << w.get<std::string>() << "\n";
  }
}

void ShowDetach(const Output& out, const std::string& name) { Done(out, "detached " + name); }

void ShowDevices(const Output& out, json r) {
  if (out.as_json) {
    out.Emit(r);
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
  for (const auto& d : r["devices"]) {
    const json rb = d.value("rollback", json());
    if (!rb.is_object() || rb["state"] == "done") continue;
    std::cout << "device " << Str(d["name"]) << ": rollback to snapshot " << Str(rb["snapshot"])
              << " " << Str(rb["state"]) << ", " << SizeText(rb["bytes_merged"]) << " of "
              << SizeText(rb["bytes_total"]) << " merged"
              << (rb["error"].is_string() ? ": " + Str(rb["error"]) : "") << "\n";
  }
  PrintRestart(r.value("restart", json()));
}

void ShowCbtInfo(const Output& out, const std::string& name, json r) {
  json j = {{"block_size", r["block_size"]},
            {"block_count", r["block_count"]},
            {"device_capacity", r["device_capacity"]},
            {"generation_id", r["generation_id"]},
            {"generation_reason", r.value("generation_reason", json())},
            {"changes_number", r["changes_number"]},
            {"durable", r.value("durable", json())},
            {"last_checkpoint", r.value("last_checkpoint", json())},
            {"recovered_from", r.value("recovered_from", json())},
            {"journal_syncs", r.value("journal_syncs", json())},
            {"journal_region_size", r.value("journal_region_size", json())},
            {"state_sync_failed", r.value("state_sync_failed", json())}};
  if (out.as_json) {
    out.Emit(j);
    return;
  }
  std::cout << "device:          " << name << "\n"
            << "block size:      " << SizeText(r["block_size"]) << " (" << Str(r["block_size"])
            << ")\n"
            << "block count:     " << Str(r["block_count"]) << "\n"
            << "device capacity: " << SizeText(r["device_capacity"]) << " ("
            << Str(r["device_capacity"]) << ")\n"
            << "generation id:   " << Str(r["generation_id"]) << " ("
            << Str(r.value("generation_reason", json())) << ")\n"
            << "changes number:  " << Str(r["changes_number"]) << "\n"
            << "durability:      "
            << (r.value("durable", false) ? "state file with write-intent journal (region " +
                                                SizeText(r.value("journal_region_size", json(0))) +
                                                "), survives restarts, crashes and power loss"
                                          : std::string("memory only"))
            << "\n";
  if (r.value("durable", false)) {
    std::cout << "recovered from:  " << Str(r.value("recovered_from", json())) << "\n"
              << "last checkpoint: " << Str(r.value("last_checkpoint", json()))
              << " (ms since the epoch)\n";
  }
}

void ShowCbtRead(const Output& out, const std::string& name, const std::string& path,
                 size_t bytes) {
  if (out.as_json) {
    out.Emit({{"bytes", bytes}});
  } else {
    std::cout << "wrote " << bytes << " bytes of the CBT map of " << name << " to " << path << "\n";
  }
}

void ShowCbtChanges(const Output& out, const std::string& name, uint64_t since, json r) {
  if (out.as_json) {
    out.Emit({{"generation_id", r["generation_id"]},
              {"changes_number", r.value("changes_number", json())},
              {"bytes", r.value("bytes", json())},
              {"extents", r["extents"]}});
    return;
  }
  std::cout << "device " << name << ", generation " << Str(r["generation_id"]) << ": "
            << r["extents"].size() << " extent(s), " << SizeText(r.value("bytes", json()))
            << " changed since snap " << since << " (now at "
            << Str(r.value("changes_number", json())) << ")\n";
  if (!r["extents"].empty()) {
    std::vector<std::vector<std::string>> rows = {{"OFFSET", "LENGTH", "(offset)", "(length)"}};
    for (const auto& e : r["extents"]) {
      rows.push_back({Str(e[0]), Str(e[1]), SizeText(e[0]), SizeText(e[1])});
    }
    PrintTable(rows);
  }
}

void ShowMarkDirty(const Output& out, const std::string& name, size_t ranges, uint64_t bytes,
                   size_t skipped) {
  if (out.as_json) {
    out.Emit({{"ranges", ranges}, {"bytes", bytes}});
  } else {
    std::cout << "marked " << ranges << " range(s), " << control::FormatSize(bytes) << " of "
              << name << " as changed";
    if (skipped) std::cout << " (" << skipped << " extent(s) without a location skipped)";
    std::cout << "\n";
  }
}

void ShowSnapshotCreated(const Output& out, json r) {
  if (out.as_json) {
    out.Emit({{"id", r["id"]}});
  } else {
    std::cout << Str(r["id"]) << "\n";
  }
}

void ShowSnapshotAdded(const Output& out, const std::string& id, const std::string& device) {
  Done(out, "added " + device + " to snapshot " + id);
}

void ShowSnapshotTaken(const Output& out, json r) {
  if (out.as_json) {
    json j = {{"id", r["id"]}, {"took_ms", r["took_ms"]}};
    for (const char* k : {"held_us", "frozen_us", "warnings"}) {
      if (r.contains(k)) j[k] = r[k];
    }
    out.Emit(j);
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

void ShowSnapshotDestroyed(const Output& out, const std::string& id) {
  Done(out, "destroyed snapshot " + id);
}

void ShowSnapshotLimit(const Output& out, json r) {
  if (out.as_json) {
    out.Emit({{"id", r["id"]}, {"limit", r["limit"]}});
    return;
  }
  std::cout << "snapshot " << Str(r["id"]) << ": storage limit "
            << (r["limit"] == 0 ? std::string("none") : SizeText(r["limit"])) << "\n";
}

void ShowSnapshotList(const Output& out, json r) {
  if (out.as_json) {
    out.Emit(r);
    return;
  }
  if (r["snapshots"].empty()) {
    std::cout << "no snapshots\n";
    return;
  }
  std::vector<std::vector<std::string>> rows = {
      {"ID", "STATE", "DURABILITY", "RECOVERED", "DEVICES"}};
  for (const auto& s : r["snapshots"]) {
    std::string devices;
    for (const auto& d : s.value("devices", json::array())) {
      if (!devices.empty()) devices += ',';
      devices += Str(d);
    }
    rows.push_back({Str(s["id"]), Str(s["state"]), Str(s.value("durability", json())),
                    Str(s.value("recovered_from", json())), devices.empty() ? "-" : devices});
  }
  PrintTable(rows);
}

void ShowSnapshotInfo(const Output& out, json r) {
  if (out.as_json) {
    out.Emit(r);
    return;
  }
  const json& st = r["storage"];
  std::cout << "snapshot " << Str(r["id"]) << ": " << Str(r["state"]) << "\n"
            << "  storage: " << Str(st["path"]) << ", used " << SizeText(st["used"]) << " of "
            << SizeText(st["capacity"]) << " (limit "
            << (st["limit"].is_number() && st["limit"].get<uint64_t>() == 0 ? std::string("none")
                                                                            : SizeText(st["limit"]))
            << ")\n";
  if (!st.value("file", json()).is_null())
    std::cout << "  storage file: " << Str(st["file"]) << "\n";
  std::cout << "  durability: " << Str(r.value("durability", json())) << "\n";
  if (!r.value("recovered_from", json()).is_null()) {
    std::cout << "  recovered from: " << Str(r["recovered_from"]) << " (brought back at start)\n";
  }
  for (const auto& d : r["devices"]) {
    std::cout << "  device " << Str(d["name"]);
    if (d.value("error", 0) != 0) {
      std::cout << ": FAILED (" << std::strerror(d["error"].get<int>()) << ")";
    }
    std::cout << "\n";
    PrintFronts(d["image"], "    image ");
  }
}

void ShowWaitEvent(const Output& out, uint64_t timeout_ms, json r) {
  if (out.as_json) {
    out.Emit(r);
    return;
  }
  if (r["result"] == "timeout") {
    std::cout << "timeout: no event within " << timeout_ms << " ms\n";
  } else {
    std::cout << EventText(r) << "\n";
  }
}

void ShowWatchEvent(const Output& out, json r) {
  if (out.as_json) {
    out.Emit(r);
  } else {
    std::cout << When(r, "%H:%M:%S") << " " << EventText(r) << std::endl;
  }
}

void ShowWatchDestroyed(const Output& out, const std::string& id) {
  if (out.as_json) {
    out.Emit({{"id", id}, {"result", "destroyed"}, {"event", "destroyed"}});
  } else {
    std::cout << "snapshot " << id << " destroyed\n";
  }
}

void ShowStatus(const Output& out, json r) {
  if (out.as_json) {
    out.Emit(r);
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
        {"  ID", "STATE", "DURABILITY", "DEVICES", "STORAGE", "USED", "CAPACITY", "LIMIT"}};
    for (const auto& s : r["snapshots"]) {
      std::string devices;
      for (const auto& dev : s["devices"]) {
        if (!devices.empty()) devices += ',';
        devices += Str(dev["name"]);
        if (dev.value("error", 0) != 0) devices += "(failed)";
      }
      const json& st = s["storage"];
      rows.push_back({"  " + Str(s["id"]), Str(s["state"]), Str(s.value("durability", json())),
                      devices.empty() ? "-" : devices, Str(st["path"]), SizeText(st["used"]),
                      SizeText(st["capacity"]), st["limit"] == 0 ? "none" : SizeText(st["limit"])});
    }
    PrintTable(rows);
  }
  std::cout << "\nEVENTS\n";
  size_t shown = 0;
  for (const auto& s : r["snapshots"]) {
    for (const auto& e : s.value("events", json::array())) {
      std::cout << "  " << When(e, "%Y-%m-%d %H:%M:%S") << "  " << Str(s["id"]) << "  "
                << EventText(e) << "\n";
      ++shown;
    }
  }
  if (shown == 0) std::cout << "  (none)\n";
}

}  // namespace blksnap::cli
