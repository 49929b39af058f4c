// systemd integration: sd_notify wrappers, the $JOURNAL_STREAM check and the journald sink.
// Stateless apart from the sink's dropped-message counter (atomic); no locks. Notifications go
// through libsystemd's sd_notify, which finds $NOTIFY_SOCKET (path or @abstract) itself.
#include "daemon/systemd.h"

#define SD_JOURNAL_SUPPRESS_LOCATION  // our fields carry the logging call's location, not ours
#include <sys/stat.h>
#include <sys/uio.h>
#include <syslog.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <cstdlib>

namespace blksnap::systemd {
namespace {

bool Notify(const std::string& state) { return sd_notify(0, state.c_str()) > 0; }

int SendToJournal(const std::vector<std::string>& fields) {
  std::vector<iovec> iov(fields.size());
  for (size_t i = 0; i < fields.size(); ++i) {
    iov[i].iov_base = const_cast<char*>(fields[i].data());
    iov[i].iov_len = fields[i].size();
  }
  return sd_journal_sendv(iov.data(), static_cast<int>(iov.size()));
}

}  // namespace

bool NotifyReady() { return Notify("READY=1"); }

bool NotifyStopping() { return Notify("STOPPING=1"); }

bool NotifyStatus(std::string_view text) {
  std::string state = "STATUS=";
  for (char c : text) state += (c == '\n' || c == '\r') ? ' ' : c;
  return Notify(state);
}

bool JournalStreamIs(int fd) {
  const char* env = std::getenv("JOURNAL_STREAM");
  if (env == nullptr) return false;
  uintmax_t dev = 0, ino = 0;
  int end = 0;
  if (std::sscanf(env, "%ju:%ju%n", &dev, &ino, &end) != 2 || env[end] != '\0') return false;
  struct stat st;
  if (::fstat(fd, &st) != 0) return false;
  return static_cast<uintmax_t>(st.st_dev) == dev && static_cast<uintmax_t>(st.st_ino) == ino;
}

bool StderrIsJournal() { return JournalStreamIs(STDERR_FILENO); }

int JournalPriority(spdlog::level::level_enum level) {
  switch (level) {
    case spdlog::level::trace:
    case spdlog::level::debug:
      return LOG_DEBUG;
    case spdlog::level::info:
      return LOG_INFO;
    case spdlog::level::warn:
      return LOG_WARNING;
    case spdlog::level::err:
      return LOG_ERR;
    case spdlog::level::critical:
      return LOG_CRIT;
    default:
      return LOG_NOTICE;
  }
}

JournalSink::JournalSink(std::string identifier)
    : JournalSink(std::move(identifier), SendToJournal) {}

JournalSink::JournalSink(std::string identifier, Sender sender)
    : identifier_(std::move(identifier)), sender_(std::move(sender)) {}

void JournalSink::sink_it_(const spdlog::details::log_msg& msg) {
  std::vector<std::string> fields;
  fields.reserve(7);
  fields.push_back("MESSAGE=" + std::string(msg.payload.data(), msg.payload.size()));
  fields.push_back("PRIORITY=" + std::to_string(JournalPriority(msg.level)));
  fields.push_back("SYSLOG_IDENTIFIER=" + identifier_);
  fields.push_back("TID=" + std::to_string(msg.thread_id));
  if (!msg.source.empty()) {
    fields.push_back(std::string("CODE_FILE=") + msg.source.filename);
    fields.push_back("CODE_LINE=" + std::to_string(msg.source.line));
    if (msg.source.funcname != nullptr) {
      fields.push_back(std::string("CODE_FUNC=") + msg.source.funcname);
    }
  }
  if (sender_(fields) < 0) dropped_.fetch_add(1, std::memory_order_relaxed);
}

std::shared_ptr<spdlog::logger> MakeJournalLogger(const std::string& name) {
  return std::make_shared<spdlog::logger>(name, std::make_shared<JournalSink>(name));
}

}  // namespace blksnap::systemd
