// The exit statuses of the `blksnap` tool: the one table that main.cc maps errors through, that
// `blksnap --help` prints in its footer and that docs/cli.md documents. A script can rely on
// them (together with the {"error": {"errno", "message"}} object --json prints on failure).
//
// How an error gets its status (ExitCodeForErrno): a command-line problem found before any
// request is kExitUsage; failing to connect to the control socket is kExitNoDaemon whatever the
// errno; an error answered by blksnapd (or a local operation) is classified by its errno below;
// kExitTimeout and kExitCorrupted are outcomes of wait-event and watch, not errors. No state.
#pragma once

#include <cerrno>
#include <string>

namespace blksnap::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;      // any other failure (EINVAL, EIO, ENOTSUP, ...)
inline constexpr int kExitUsage = 2;      // bad command line: unknown command/option, bad value
inline constexpr int kExitNotFound = 3;   // no such device, snapshot or file (ENOENT, ENODEV)
inline constexpr int kExitBusy = 4;       // refused: in use, exists, already done, not allowed
inline constexpr int kExitNoDaemon = 5;   // cannot connect to the control socket
inline constexpr int kExitTimeout = 6;    // snapshot wait-event: no event within --timeout
inline constexpr int kExitCorrupted = 7;  // snapshot watch: the snapshot is corrupted

struct ExitCodeInfo {
  int code;
  const char* name;     // short, for the table
  const char* meaning;  // one line
};

// In the order of the codes; --help and docs/cli.md print this table.
inline constexpr ExitCodeInfo kExitCodes[] = {
    {kExitOk, "ok", "success"},
    {kExitError, "error", "any other failure (EINVAL, EIO, ENOTSUP, ESTALE, ...)"},
    {kExitUsage, "usage", "bad command line (unknown command or option, bad size, range, number)"},
    {kExitNotFound, "not found", "no such device, snapshot or file (ENOENT, ENODEV)"},
    {kExitBusy, "refused",
     "in use, exists, already done, not allowed (EBUSY, EEXIST, EALREADY, ...)"},
    {kExitNoDaemon, "no daemon", "cannot connect to blksnapd's control socket"},
    {kExitTimeout, "timeout", "snapshot wait-event: no event within --timeout"},
    {kExitCorrupted, "corrupted", "snapshot watch: the snapshot is corrupted"},
};

// The exit status of an error with this errno, answered by blksnapd or met locally.
inline int ExitCodeForErrno(int errnum) {
  switch (errnum) {
    case ENOENT:
    case ENODEV:
      return kExitNotFound;
    case EBUSY:
    case EEXIST:
    case EALREADY:
    case EPERM:
    case EACCES:
      return kExitBusy;
    default:
      return kExitError;
  }
}

// The table as text, for the --help footer.
inline std::string ExitCodeHelp() {
  std::string text = "Exit status:\n";
  for (const auto& e : kExitCodes) {
    std::string name = e.name;
    name.resize(11, ' ');
    text += "  " + std::to_string(e.code) + "  " + name + e.meaning + "\n";
  }
  text += "With --json a failure prints {\"error\": {\"errno\", \"message\"}} on stdout.";
  return text;
}

}  // namespace blksnap::cli
