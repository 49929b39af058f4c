// ControlServer: accepts control-protocol clients on a Unix socket and answers their requests.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>

#include "blksnap/status.h"

namespace blksnap::daemon {

class ControlServer {
 public:
  // Answers one request; `cancelled` returns true once the client hung up.
  using Handler =
      std::function<Result<nlohmann::json>(const std::string& method, const nlohmann::json& params,
                                           const std::function<bool()>& cancelled)>;

  static constexpr size_t kMaxClients = 1024;

  // Binds `path` (mode 0600, replacing a stale socket file) and listens.
  static Result<std::unique_ptr<ControlServer>> Listen(const std::string& path, Handler handler);
  ~ControlServer();
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  // Accepts clients until Stop(); each client is served by its own thread.
  void Run();
  // Stops accepting, disconnects every client and waits for their threads. Thread-safe.
  void Stop();

  // The answer to one request line (exposed for tests and fuzzing).
  std::string AnswerLine(std::string_view line, const std::function<bool()>& cancelled);

 private:
  ControlServer(int listen_fd, int wake_fd, std::string path, Handler handler);
  void Serve(int fd);

  const int listen_fd_;
  const int wake_fd_;  // eventfd: wakes Run() on Stop()
  const std::string path_;
  const Handler handler_;
  std::atomic<bool> stopping_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::set<int> clients_;  // guarded by mu_: fds of connected clients
  size_t threads_ = 0;     // guarded by mu_: client threads still running
};

}  // namespace blksnap::daemon
