// ControlServer: accepts control-protocol clients on a Unix socket and answers their requests.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "blksnap/status.h"
#include "util/mutex.h"

namespace blksnap::daemon {

class ControlServer {
 public:
  // Answers one request; `cancelled` returns true once the client hung up.
  using Handler =
      std::function<Result<nlohmann::json>(const std::string& method, const nlohmann::json& params,
                                           const std::function<bool()>& cancelled)>;

  static constexpr size_t kMaxClients = 1024;
  // A client that sends nothing for this long between requests is disconnected.
  static constexpr std::chrono::seconds kDefaultIdleTimeout{60};

  // Binds `path` (mode 0600) and listens. A socket file left by a dead daemon is replaced; one
  // where a live daemon answers is refused (EADDRINUSE): a second daemon never takes it over.
  static Result<std::unique_ptr<ControlServer>> Listen(
      const std::string& path, Handler handler,
      std::chrono::milliseconds idle_timeout = kDefaultIdleTimeout);
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
  struct Client {
    std::chrono::steady_clock::time_point last_active;
    bool in_request = false;  // a request is being answered: never evicted
    bool evicted = false;
  };
  ControlServer(int listen_fd, int wake_fd, std::string path, Handler handler,
                std::chrono::milliseconds idle_timeout);
  void Serve(int fd);
  // At the cap: disconnects the client idle for longest (between requests), so a new client
  // always gets through unless every slot is answering a request. False if none is idle.
  bool EvictIdleLocked() REQUIRES(mu_);
  void MarkClient(int fd, bool in_request) EXCLUDES(mu_);

  const int listen_fd_;
  const int wake_fd_;  // eventfd: wakes Run() on Stop()
  const std::string path_;
  const Handler handler_;
  const std::chrono::milliseconds idle_timeout_;
  std::atomic<bool> stopping_{false};
  Mutex mu_;
  CondVar cv_;
  std::map<int, Client> clients_ GUARDED_BY(mu_);  // by fd
  size_t threads_ GUARDED_BY(mu_) = 0;             // client threads still running
};

}  // namespace blksnap::daemon
