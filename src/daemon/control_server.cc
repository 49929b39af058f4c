// ControlServer: the daemon's end of the control protocol (docs/control-protocol.md).
//
// Threads: Run() polls the listening socket and an eventfd; each accepted client gets its own
// detached thread that reads request lines and writes answers in order. A slow or idle client
// therefore only ever blocks its own thread, and a long wait-event never delays anyone else.
// At most kMaxClients are served at once. A client idle between requests for idle_timeout is
// disconnected (SO_RCVTIMEO), and at the cap the client idle for longest is evicted to make room,
// so half-open connections can never lock everyone else out; only when every slot is answering
// a request is a new client told EBUSY and closed.
//
// Framing and hostile input: lines are at most kMaxRequestBytes (newline excluded); a longer
// line is answered with EMSGSIZE, then the connection is shut for writing, the rest of the
// client's input is drained for a moment (so the error is not lost to a reset) and closed.
// JSON nested deeper than kMaxJsonDepth is refused before parsing. Any parse or type error
// becomes an error answer; nothing a client sends can throw out of a client thread.
//
// Locking: mu_ guards the client table and the thread count; Stop() shuts every client socket
// down (waking its thread's recv) and waits on cv_ until the count reaches zero.
#include "daemon/control_server.h"

#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include "control/protocol.h"

namespace blksnap::daemon {

using nlohmann::json;

namespace {

bool SendAll(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    done += static_cast<size_t>(n);
  }
  return true;
}

std::string ErrorLine(const json& id, const Status& status) {
  json reply = {
      {"v", control::kProtocolVersion}, {"id", id}, {"error", control::ErrorObject(status)}};
  return reply.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

}  // namespace

ControlServer::ControlServer(int listen_fd, int wake_fd, std::string path, Handler handler,
                             std::chrono::milliseconds idle_timeout)
    : listen_fd_(listen_fd),
      wake_fd_(wake_fd),
      path_(std::move(path)),
      handler_(std::move(handler)),
      idle_timeout_(idle_timeout) {}

ControlServer::~ControlServer() {
  Stop();
  ::close(listen_fd_);
  ::close(wake_fd_);
  ::unlink(path_.c_str());
}

Result<std::unique_ptr<ControlServer>> ControlServer::Listen(
    const std::string& path, Handler handler, std::chrono::milliseconds idle_timeout) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return Status::Error(ENAMETOOLONG, "control socket path too long: " + path);
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::FromErrno("socket");
  // A socket file left here is stale only if nobody answers on it: another daemon (with another
  // state dir) may be listening, and replacing its socket would orphan its devices.
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) {
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
      ::close(fd);
      return Status::Error(EADDRINUSE, "another blksnapd is listening on " + path +
                                           "; refusing to take over its control socket");
    }
    ::close(fd);
    fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return Status::FromErrno("socket");
    ::unlink(path.c_str());
  }
  mode_t old_mask = ::umask(0077);
  int rc = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  int bind_errno = errno;
  ::umask(old_mask);
  if (rc != 0) {
    ::close(fd);
    return Status::Error(bind_errno,
                         "cannot bind control socket " + path + ": " + std::strerror(bind_errno));
  }
  if (::chmod(path.c_str(), 0600) != 0 || ::listen(fd, 256) != 0) {
    Status s = Status::FromErrno("control socket " + path);
    ::close(fd);
    return s;
  }
  int wake = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake < 0) {
    Status s = Status::FromErrno("eventfd");
    ::close(fd);
    return s;
  }
  return std::unique_ptr<ControlServer>(
      new ControlServer(fd, wake, path, std::move(handler), idle_timeout));
}

void ControlServer::Run() {
  while (!stopping_.load()) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    int n = ::poll(fds, 2, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      spdlog::error("control socket poll: {}", std::strerror(errno));
      return;
    }
    if (fds[1].revents) break;
    if (!(fds[0].revents & POLLIN)) continue;
    int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE) {
        spdlog::warn("control socket accept: {}", std::strerror(errno));
        ::usleep(100000);
      }
      continue;
    }
    {
      MutexLock lock(mu_);
      size_t live = 0;
      for (const auto& [cfd, c] : clients_) live += c.evicted ? 0 : 1;
      if (stopping_.load() || (live >= kMaxClients && !EvictIdleLocked())) {
        SendAll(fd, ErrorLine(nullptr, Status::Error(EBUSY,
                                                     "too many control clients, all "
                                                     "busy with requests")));
        ::close(fd);
        continue;
      }
      clients_[fd] = Client{std::chrono::steady_clock::now(), false, false};
      ++threads_;
    }
    // A client that stops reading its answers must not hold its thread forever, and one that
    // sends nothing between requests goes after idle_timeout_.
    timeval snd{60, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &snd, sizeof(snd));
    const auto idle_us =
        std::chrono::duration_cast<std::chrono::microseconds>(idle_timeout_).count();
    timeval rcv{static_cast<time_t>(idle_us / 1000000),
                static_cast<suseconds_t>(idle_us % 1000000)};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &rcv, sizeof(rcv));
    try {
      std::thread([this, fd] { Serve(fd); }).detach();
    } catch (const std::system_error& e) {
      spdlog::warn("control client thread: {}", e.what());
      MutexLock lock(mu_);
      clients_.erase(fd);
      --threads_;
      ::close(fd);
    }
  }
}

void ControlServer::Stop() {
  stopping_.store(true);
  uint64_t one = 1;
  if (::write(wake_fd_, &one, sizeof(one)) < 0) {
    // The eventfd only fails if its counter overflows; Run() is awake then anyway.
  }
  MutexLock lock(mu_);
  for (const auto& [fd, c] : clients_) ::shutdown(fd, SHUT_RDWR);
  while (threads_ != 0) cv_.Wait(mu_);
}

bool ControlServer::EvictIdleLocked() {
  int victim = -1;
  std::chrono::steady_clock::time_point oldest = std::chrono::steady_clock::time_point::max();
  for (const auto& [fd, c] : clients_) {
    if (c.in_request || c.evicted || c.last_active >= oldest) continue;
    victim = fd;
    oldest = c.last_active;
  }
  if (victim < 0) return false;
  // Its thread wakes from recv with EOF and closes the fd itself.
  clients_[victim].evicted = true;
  ::shutdown(victim, SHUT_RDWR);
  spdlog::warn("control socket: {} clients, disconnected the longest idle one", kMaxClients);
  return true;
}

void ControlServer::MarkClient(int fd, bool in_request) {
  MutexLock lock(mu_);
  auto it = clients_.find(fd);
  if (it == clients_.end()) return;
  it->second.in_request = in_request;
  it->second.last_active = std::chrono::steady_clock::now();
}

std::string ControlServer::AnswerLine(std::string_view line,
                                      const std::function<bool()>& cancelled) {
  json id = nullptr;
  if (control::JsonDepth(line) > control::kMaxJsonDepth) {
    return ErrorLine(id, Status::Error(EINVAL, "request nested too deeply"));
  }
  json request = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (request.is_discarded()) {
    return ErrorLine(id, Status::Error(EINVAL, "malformed request: not JSON"));
  }
  if (!request.is_object()) {
    return ErrorLine(id, Status::Error(EINVAL, "malformed request: expected a JSON object"));
  }
  if (request.contains("id") && (request["id"].is_primitive())) id = request["id"];
  if (request.contains("v")) {
    const json& v = request["v"];
    if (!v.is_number_integer() || v.get<int64_t>() != control::kProtocolVersion) {
      return ErrorLine(id, Status::Error(EPROTONOSUPPORT,
                                         "unsupported protocol version " + v.dump().substr(0, 32) +
                                             " (this blksnapd speaks " +
                                             std::to_string(control::kProtocolVersion) + ")"));
    }
  }
  if (!request.contains("method") || !request["method"].is_string()) {
    return ErrorLine(id, Status::Error(EINVAL, "malformed request: missing 'method'"));
  }
  std::string method = request["method"].get<std::string>();
  json params = request.contains("params") ? request["params"] : json::object();
  if (params.is_null()) params = json::object();
  if (!params.is_object()) {
    return ErrorLine(id, Status::Error(EINVAL, "malformed request: 'params' must be an object"));
  }
  Result<json> result = Status::Error(EIO, "internal error");
  try {
    result = handler_(method, params, cancelled);
  } catch (const std::exception& e) {
    spdlog::error("request '{}' failed: {}", method.substr(0, 64), e.what());
    result = Status::Error(EIO, std::string("internal error: ") + e.what());
  }
  if (!result.ok()) {
    spdlog::debug("request '{}': {}", method.substr(0, 64), result.status().ToString());
    return ErrorLine(id, result.status());
  }
  json reply = {{"v", control::kProtocolVersion}, {"id", id}, {"result", *result}};
  return reply.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

void ControlServer::Serve(int fd) {
  auto cancelled = [fd] {
    pollfd p{fd, POLLRDHUP, 0};
    return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
  };
  std::string buf;
  char chunk[65536];
  while (!stopping_.load()) {
    ssize_t n = ::recv(fd, chunk, sizeof(chunk), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // EOF (a half request is dropped) or error
    buf.append(chunk, static_cast<size_t>(n));
    bool closed = false, oversized = false;
    size_t start = 0;
    for (;;) {
      size_t nl = buf.find('\n', start);
      if (nl == std::string::npos) break;
      std::string_view line(buf.data() + start, nl - start);
      start = nl + 1;
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (line.size() > control::kMaxRequestBytes) {
        oversized = true;
        break;
      }
      if (line.find_first_not_of(" \t") == std::string_view::npos) continue;
      MarkClient(fd, true);
      std::string answer = AnswerLine(line, cancelled);
      MarkClient(fd, false);
      if (!SendAll(fd, answer)) {
        closed = true;
        break;
      }
    }
    if (closed) break;
    buf.erase(0, start);
    if (!oversized && buf.size() <= control::kMaxRequestBytes) continue;
    // Oversized request: answer, stop writing, drain briefly (so the client can read the
    // answer instead of a reset), close.
    SendAll(fd, ErrorLine(nullptr,
                          Status::Error(EMSGSIZE, "request longer than " +
                                                      std::to_string(control::kMaxRequestBytes) +
                                                      " bytes; closing the connection")));
    ::shutdown(fd, SHUT_WR);
    timeval tv{1, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    size_t drained = 0;
    while (drained < (64u << 20) && !stopping_.load()) {
      ssize_t d = ::recv(fd, chunk, sizeof(chunk), 0);
      if (d <= 0) break;
      drained += static_cast<size_t>(d);
    }
    break;
  }
  MutexLock lock(mu_);
  clients_.erase(fd);
  ::close(fd);
  if (--threads_ == 0) cv_.SignalAll();
}

}  // namespace blksnap::daemon
