// The `blksnap` tool's commands, one function each: check and convert the arguments, build the
// control-protocol request (docs/control-protocol.md), call blksnapd through ControlClient and
// hand the result to the matching Show function (format.h). main.cc wires them to the command
// line.
//
// Errors: a failed request or local operation throws CommandError with the exit status its
// errno maps to (exit_codes.h), a failed connection to the control socket kExitNoDaemon; a bad
// argument found here (size, range, number, id) throws CommandError{kExitUsage, EINVAL, ...};
// main prints the error (exit_codes.h, docs/cli.md). Client-side paths (attach PATH, --storage,
// --output,
// --file) are made absolute against the tool's working directory before they are sent, since
// the daemon has its own. Single-threaded: one Context, one connection, opened at first use.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "blksnap/control_client.h"
#include "cli/exit_codes.h"
#include "cli/format.h"

namespace blksnap::cli {

// Thrown for errors found while running a command; main prints it (stderr line, and with
// --json the error object on stdout) and exits with exit_code.
struct CommandError {
  int exit_code;  // exit_codes.h
  int errnum;     // the errno of the failure (EINVAL for usage errors)
  std::string message;
};

// Helpers of every command file: throw the CommandError of a failed Status / Result, or of a
// usage error; make a client-side path absolute; parse a size or a number argument.
[[noreturn]] void Fail(const Status& status);
[[noreturn]] void Usage(const std::string& message);
void Check(const Status& s);
template <typename T>
T Check(Result<T> r) {
  if (!r.ok()) Fail(r.status());
  return std::move(r).value();
}
std::string Absolute(const std::string& path);
uint64_t ParseSizeArg(const std::string& what, const std::string& text);
uint64_t ParseNumberArg(const std::string& what, const std::string& text, uint64_t max);

// What every command needs: the control socket (connected at the first request) and the output.
struct Context {
  std::string control;
  Output output;
  std::unique_ptr<ControlClient> client;

  ControlClient& Client();
  // One request; throws CommandError when it fails.
  nlohmann::json Call(const std::string& method,
                      const nlohmann::json& params = nlohmann::json::object());
};

// Block-device fronts asked for on the command line: --loop, --ublk, --blockdev (the daemon's
// --frontend choice).
struct BlockFronts {
  bool loop = false;
  bool ublk = false;
  bool blockdev = false;
  void AddTo(nlohmann::json& params) const;
};

void CmdVersion(Context& ctx);
void CmdAttach(Context& ctx, const std::string& path, const std::string& name,
               const BlockFronts& fronts);
void CmdDetach(Context& ctx, const std::string& name, bool force);
void CmdDevices(Context& ctx);
void CmdCbtInfo(Context& ctx, const std::string& name);
void CmdCbtRead(Context& ctx, const std::string& name, const std::string& output);
void CmdCbtChanges(Context& ctx, const std::string& name, const std::string& since,
                   const std::string& generation);
// With --file, the file must be on a file system mounted from one of NAME's block fronts (its
// st_dev is the front's st_rdev), or FIEMAP's offsets would mark another device's blocks.
void CmdCbtMarkDirty(Context& ctx, const std::string& name, const std::vector<std::string>& ranges,
                     const std::string& file, bool force);
// durability: "memory", "crash" or "power" (checked here: a usage error otherwise); "" sends
// none (the daemon's default, crash).
void CmdSnapshotCreate(Context& ctx, const std::string& storage, const std::string& limit,
                       const BlockFronts& fronts, const std::vector<std::string>& devices,
                       bool force, const std::string& durability);
void CmdSnapshotAdd(Context& ctx, const std::string& id, const std::string& device);
void CmdSnapshotTake(Context& ctx, const std::string& id);
// force: even while a client uses one of its images (the daemon answers EBUSY otherwise).
void CmdSnapshotDestroy(Context& ctx, const std::string& id, bool force);
// Rolls devices back to a snapshot; unless no_wait, shows the merge's progress (a line on a
// terminal, {"progress": ...} lines with --json) until every device is done or one fails.
void CmdSnapshotAbandonRollback(Context& ctx, const std::string& device);
void CmdSnapshotRollback(Context& ctx, const std::string& id,
                         const std::vector<std::string>& devices, bool force, bool no_wait);
// Raises the storage limit of a live snapshot (answer to a no_space event).
void CmdSnapshotSetLimit(Context& ctx, const std::string& id, const std::string& limit);
void CmdSnapshotList(Context& ctx);
void CmdSnapshotInfo(Context& ctx, const std::string& id);
// Returns the exit status: kExitOk for an event, kExitTimeout when none came in time.
int CmdWaitEvent(Context& ctx, const std::string& id, const std::string& timeout);
// Prints events until the snapshot is corrupted or destroyed; returns the exit status:
// kExitCorrupted after a corrupted event, kExitOk when it was destroyed.
int CmdWatch(Context& ctx, const std::string& id);
void CmdStatus(Context& ctx);

}  // namespace blksnap::cli
