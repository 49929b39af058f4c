// The `blksnap` tool's commands, one function each: check and convert the arguments, build the
// control-protocol request (docs/control-protocol.md), call blksnapd through ControlClient and
// hand the result to the matching Show function (format.h). main.cc wires them to the command
// line.
//
// Errors: a failed request or local operation throws CommandError{kExitError, message}; a bad
// argument found here (size, range, number, id) throws CommandError{kExitUsage, message}; main
// prints the one "blksnap: error: ..." line. Client-side paths (attach PATH, --storage, --output,
// --file) are made absolute against the tool's working directory before they are sent, since
// the daemon has its own. Single-threaded: one Context, one connection, opened at first use.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "blksnap/control_client.h"
#include "cli/format.h"

namespace blksnap::cli {

inline constexpr int kExitError = 1;
inline constexpr int kExitUsage = 2;

// Thrown for errors found while running a command; main turns it into the one error line.
struct CommandError {
  int exit_code;
  std::string message;
};

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
void CmdCbtMarkDirty(Context& ctx, const std::string& name, const std::vector<std::string>& ranges,
                     const std::string& file);
void CmdSnapshotCreate(Context& ctx, const std::string& storage, const std::string& limit,
                       const BlockFronts& fronts, const std::vector<std::string>& devices);
void CmdSnapshotAdd(Context& ctx, const std::string& id, const std::string& device);
void CmdSnapshotTake(Context& ctx, const std::string& id);
void CmdSnapshotDestroy(Context& ctx, const std::string& id);
void CmdSnapshotList(Context& ctx);
void CmdSnapshotInfo(Context& ctx, const std::string& id);
void CmdWaitEvent(Context& ctx, const std::string& id, const std::string& timeout);
// Prints events until the snapshot is corrupted or destroyed; returns the exit status.
int CmdWatch(Context& ctx, const std::string& id);
void CmdStatus(Context& ctx);

}  // namespace blksnap::cli
