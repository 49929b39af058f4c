// systemd integration of blksnapd through libsystemd: service-manager notifications
// (sd_notify: READY, STOPPING, STATUS) and logging to the journal (a spdlog sink over
// sd_journal_sendv, picked when stderr is already connected to the journal).
// Everything here is a no-op outside systemd: no $NOTIFY_SOCKET, no notification; the journal
// sink needs journald's socket and drops messages (counted) when it is missing.
#pragma once

#include <spdlog/details/null_mutex.h>
#include <spdlog/logger.h>
#include <spdlog/sinks/base_sink.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace blksnap::systemd {

// sd_notify(3) messages to the service manager. Each returns true when a message was sent,
// false when not running under a Type=notify unit ($NOTIFY_SOCKET unset) or the send failed.
bool NotifyReady();     // READY=1: start-up finished, clients may connect
bool NotifyStopping();  // STOPPING=1: shutting down
// STATUS=text, shown by `systemctl status`; line breaks become spaces (one assignment only).
bool NotifyStatus(std::string_view text);

// True when `fd` is the stream systemd connected to the journal: $JOURNAL_STREAM ("DEV:INO")
// names fd's device and inode. JournalStreamIs(STDERR_FILENO) decides whether the daemon logs
// to the journal (with priorities and fields) rather than as plain text on stderr.
bool JournalStreamIs(int fd);
bool StderrIsJournal();

// The journal priority (syslog LOG_*) of a spdlog level.
int JournalPriority(spdlog::level::level_enum level);

// A spdlog sink that sends every message to journald as one entry with the fields MESSAGE,
// PRIORITY (from the level), SYSLOG_IDENTIFIER, TID, and CODE_FILE/CODE_LINE/CODE_FUNC when the
// message carries a source location (SPDLOG_LOGGER_* macros). sd_journal_sendv is thread-safe,
// so the sink takes no lock (null_mutex). A send that fails is counted in dropped().
class JournalSink final : public spdlog::sinks::base_sink<spdlog::details::null_mutex> {
 public:
  // The transport: receives the "FIELD=value" strings of one entry; returns 0 or -errno.
  using Sender = std::function<int(const std::vector<std::string>& fields)>;

  explicit JournalSink(std::string identifier);  // sends with sd_journal_sendv
  JournalSink(std::string identifier, Sender sender);

  uint64_t dropped() const { return dropped_.load(std::memory_order_relaxed); }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override;
  void flush_() override {}

 private:
  const std::string identifier_;
  const Sender sender_;
  std::atomic<uint64_t> dropped_{0};
};

// A logger named `name` with one JournalSink (SYSLOG_IDENTIFIER `name`).
std::shared_ptr<spdlog::logger> MakeJournalLogger(const std::string& name);

}  // namespace blksnap::systemd
