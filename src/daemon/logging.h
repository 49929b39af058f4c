// Logging of blksnapd: spdlog to stderr or to a file that SIGHUP reopens (for logrotate).
#pragma once

#include <spdlog/spdlog.h>

#include <memory>
#include <string>

#include "blksnap/status.h"

namespace blksnap::daemon {

// Makes and installs the default logger: a file (appended to) or stderr, with the daemon's
// pattern and level. Fails with a one-line message if the file cannot be opened.
Status StartLogging(const std::string& log_file, const std::string& level);

// Reopens the log file (after logrotate moved it); nothing to do when logging to stderr. Safe
// while other threads log.
Status ReopenLog();

}  // namespace blksnap::daemon
