// Logging: one logger for the daemon's lifetime. A file is written through a sink that can be
// reopened in place under the sink's own mutex, so SIGHUP never swaps the logger other threads
// are using (spdlog's default-logger calls go through a raw pointer).
#include "daemon/logging.h"

#include <spdlog/details/file_helper.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/stdout_sinks.h>

#include <mutex>

#include "daemon/systemd.h"

namespace blksnap::daemon {
namespace {

class ReopenableFileSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  explicit ReopenableFileSink(const std::string& path) { file_.open(path, false); }
  void Reopen() {
    std::lock_guard lock(mutex_);
    file_.reopen(false);
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    spdlog::memory_buf_t formatted;
    formatter_->format(msg, formatted);
    file_.write(formatted);
  }
  void flush_() override { file_.flush(); }

 private:
  spdlog::details::file_helper file_;
};

std::shared_ptr<ReopenableFileSink> g_file_sink;

}  // namespace

Status StartLogging(const std::string& log_file, const std::string& level) {
  std::shared_ptr<spdlog::logger> logger;
  try {
    if (!log_file.empty()) {
      g_file_sink = std::make_shared<ReopenableFileSink>(log_file);
      logger = std::make_shared<spdlog::logger>("blksnapd", g_file_sink);
    } else if (systemd::StderrIsJournal()) {
      // Under systemd: structured journal entries (priority, thread, source line).
      logger = systemd::MakeJournalLogger("blksnapd");
    } else {
      logger = spdlog::stderr_logger_mt("blksnapd");
    }
  } catch (const spdlog::spdlog_ex& e) {
    return Status::Error(EIO, std::string("log file: ") + e.what());
  }
  logger->set_pattern("%Y-%m-%d %H:%M:%S.%e %^%l%$ [%t] %v");
  logger->set_level(spdlog::level::from_str(level));
  logger->flush_on(spdlog::level::trace);
  spdlog::set_default_logger(logger);
  return Status::Ok();
}

Status ReopenLog() {
  if (!g_file_sink) return Status::Ok();
  try {
    g_file_sink->Reopen();
  } catch (const spdlog::spdlog_ex& e) {
    return Status::Error(EIO, std::string("reopening the log file: ") + e.what());
  }
  return Status::Ok();
}

}  // namespace blksnap::daemon
