// Formatting of the `blksnap` tool: how each command's result is shown, human-readable on
// stdout by default or as exactly one JSON object per result with --json (docs/cli.md lists the
// keys). Commands (commands.h) fetch results from blksnapd; the Show* functions here only print
// them — no requests, no state beyond the Output they are given. Warnings go to stderr as
// "blksnap: warning: ...". Single-threaded, like the tool.
#pragma once

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace blksnap::cli {

// Where and how results go: stdout, human text or (as_json) one JSON object per line.
struct Output {
  bool as_json = false;
  // Prints one JSON object on its own line and flushes (watch streams them).
  void Emit(const nlohmann::json& j) const;
};

// A failure: "blksnap: error: MESSAGE" on stderr, and with --json also
// {"error": {"errno": N, "message": "MESSAGE"}} on stdout (docs/cli.md).
void ShowError(const Output& out, int errnum, const std::string& message);

// "-" for null, the string itself, else the JSON text of the value.
std::string Str(const nlohmann::json& v);
// A byte count as a size ("64M"), "-" when it is not a number.
std::string SizeText(const nlohmann::json& v);
// Columns padded to their widest cell, two spaces apart; rows[0] is the header.
void PrintTable(const std::vector<std::vector<std::string>>& rows);
// One line for a snapshot event ("corrupted: device 'a' failed (errno 5, ...)").
std::string EventText(const nlohmann::json& event);

// One Show function per command result; the arguments are what the command knows besides the
// daemon's result object. Results are taken by value so that reading a key the daemon left out
// gives null (non-const operator[]), as it always has, instead of undefined behaviour.
void ShowVersion(const Output& out, nlohmann::json daemon);
void ShowAttach(const Output& out, nlohmann::json r);
void ShowDetach(const Output& out, const std::string& name);
void ShowDevices(const Output& out, nlohmann::json r);
void ShowCbtInfo(const Output& out, const std::string& name, nlohmann::json r);
void ShowCbtRead(const Output& out, const std::string& name, const std::string& path, size_t bytes);
void ShowCbtChanges(const Output& out, const std::string& name, uint64_t since, nlohmann::json r);
void ShowMarkDirty(const Output& out, const std::string& name, size_t ranges, uint64_t bytes,
                   size_t skipped);
void ShowSnapshotCreated(const Output& out, nlohmann::json r);
void ShowSnapshotAdded(const Output& out, const std::string& id, const std::string& device);
void ShowSnapshotTaken(const Output& out, nlohmann::json r);
void ShowSnapshotDestroyed(const Output& out, const std::string& id);
// snapshot set-limit: the daemon's {"id", "limit"}.
void ShowSnapshotLimit(const Output& out, nlohmann::json r);
void ShowSnapshotList(const Output& out, nlohmann::json r);
void ShowSnapshotInfo(const Output& out, nlohmann::json r);
void ShowWaitEvent(const Output& out, uint64_t timeout_ms, nlohmann::json r);
// `snapshot watch`: one event as it arrives, and the end when the snapshot is gone.
void ShowWatchEvent(const Output& out, nlohmann::json r);
void ShowWatchDestroyed(const Output& out, const std::string& id);
void ShowStatus(const Output& out, nlohmann::json r);

}  // namespace blksnap::cli
