// Server: listeners, the export registry and connection lifetimes (see nbd_server.h).
//
// Threads: one accept thread polls the listeners and an eventfd; each accepted connection gets
// one thread that runs the handshake and then the Session (which adds worker threads on
// demand, within the server-wide extra_workers budget). A finished connection marks itself
// done and pokes the eventfd; the accept thread joins and frees it (so fds and threads never
// pile up over thousands of short connections). The accept thread is also the handshake
// watchdog: it wakes at the earliest handshake deadline and shuts down connections that have
// not reached the transmission phase by then (TLS handshakes and trickling clients included).
//
// Limits: at most max_connections connections exist at once (handshake or transmission), plus
// root_reserved_connections that only root on the Unix socket may use (SO_PEERCRED, asked only
// when over the cap); beyond that a connection is accepted and closed at once, and the first
// refusal of a burst and the end of the burst are logged. Payload bytes in flight are bounded per
// connection and in total (total_inflight, shared by all Sessions), threads by the connection cap
// and the extra-worker budget; see session.cc.
//
// Locking: mu guards the export map, the connection list and each ExportEntry's bookkeeping
// (connections, removed) and each Connection's flags. It is taken on connect, on attach after
// the handshake, on disconnect and by the watchdog, never per request. A connection's fd is
// shut down from other threads (RemoveExport, Stop, the watchdog) only while holding mu and
// only before the connection thread set `closing`, so we never shut down a recycled fd number.
//
// TLS policy: with no TLS credentials the server runs NOTLS, and Start() refuses a TCP listener
// unless allow_insecure_tcp (and then only on loopback); with credentials, the Unix socket is
// SELECTIVETLS (clients may upgrade) unless tls_required, which makes it FORCEDTLS, and TCP
// connections are always FORCEDTLS: a TCP port is open to every local user.
#include "nbd/nbd_server.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <list>
#include <map>
#include <thread>

#include "nbd/budget.h"
#include "nbd/handshake.h"
#include "nbd/protocol.h"
#include "nbd/session.h"
#include "nbd/transport.h"
#include "util/mutex.h"
#include "util/thread_annotations.h"

namespace blksnap::nbd {
namespace {

// Threads start on demand, so the default costs nothing to a connection that sends one request
// at a time; 32 lets a client at queue depth 32 have every request served at once, which a
// durable snapshot's writers need (each waits for its chunk's record to be committed, and a
// commit round carries the records of the writers waiting: docs/performance.md).
constexpr int kDefaultWorkers = 32;
constexpr int kMaxWorkers = 64;

using Clock = std::chrono::steady_clock;

void SetSocketTimeouts(int fd, std::chrono::milliseconds t) {
  timeval tv{static_cast<time_t>(t.count() / 1000),
             static_cast<suseconds_t>(t.count() % 1000 * 1000)};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

bool PeerIsRoot(int unix_fd) {
  ucred cred{};
  socklen_t len = sizeof cred;
  return ::getsockopt(unix_fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 && cred.uid == 0;
}

void LogToStderr(const std::string& line) { std::fprintf(stderr, "%s\n", line.c_str()); }

int DefaultWorkersPerConnection() {
  if (const char* env = std::getenv("BLKSNAP_NBD_WORKERS")) {
    int n = std::atoi(env);
    if (n >= 1 && n <= kMaxWorkers) return n;
  }
  return kDefaultWorkers;
}

bool IsLoopback(const sockaddr* sa) {
  if (sa->sa_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
  }
  if (sa->sa_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr)) return true;
    if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) return in6->sin6_addr.s6_addr[12] == 127;
  }
  return false;
}

// Splits "host:port", "[v6]:port", ":port" or "port".
Status SplitHostPort(const std::string& addr, std::string* host, std::string* port) {
  if (!addr.empty() && addr[0] == '[') {
    size_t close = addr.find(']');
    if (close == std::string::npos || close + 1 >= addr.size() || addr[close + 1] != ':') {
      return Status::Error(EINVAL, "bad TCP address " + addr);
    }
    *host = addr.substr(1, close - 1);
    *port = addr.substr(close + 2);
  } else if (size_t colon = addr.rfind(':'); colon != std::string::npos) {
    *host = addr.substr(0, colon);
    *port = addr.substr(colon + 1);
  } else {
    host->clear();
    *port = addr;
  }
  if (host->empty()) *host = "127.0.0.1";
  if (port->empty()) return Status::Error(EINVAL, "no port in TCP address " + addr);
  return Status::Ok();
}

}  // namespace

struct Connection {
  int fd = -1;  // owned by the transport inside the connection thread
  bool tcp = false;
  bool forced_tls = false;
  // The rest is guarded by State::mu: not GUARDED_BY, which cannot name another object's
  // mutex; every access is under MutexLock(mu) or in a REQUIRES(mu) function.
  bool closing = false;           // fd is about to be closed
  bool done = false;              // the thread has finished
  bool in_handshake = true;       // the watchdog may shut it down at the deadline
  std::atomic<bool> shut{false};  // shut down from outside (the session's waits look at it)
  Clock::time_point handshake_deadline;
  std::shared_ptr<ExportEntry> entry;  // set while attached
  std::thread thread;
};

struct Server::State {
  explicit State(const ServerOptions& o)
      : options(o),
        extra_workers(static_cast<uint64_t>(std::max(o.max_extra_workers, 0))),
        total_inflight(o.max_total_inflight),
        total_receiving(o.max_total_inflight) {}

  const ServerOptions options;
  Fd unix_listen;
  Fd tcp_listen;
  bool tcp_forced_tls = false;
  std::string tcp_host;  // for URIs
  int tcp_port = 0;
  Fd wake;  // eventfd: stop or reap
  std::unique_ptr<TlsContext> tls;
  int workers = kDefaultWorkers;
  Budget extra_workers;    // worker threads beyond each connection's own
  Budget total_inflight;   // payload bytes held by all connections
  Budget total_receiving;  // claims of write payloads being received (see session.cc)
  std::thread accept_thread;

  mutable Mutex mu;
  CondVar cv;  // a connection detached or finished
  std::map<std::string, std::shared_ptr<ExportEntry>> exports GUARDED_BY(mu);
  std::list<std::unique_ptr<Connection>> connections GUARDED_BY(mu);
  size_t active GUARDED_BY(mu) = 0;      // connections not done
  bool refusing GUARDED_BY(mu) = false;  // in a burst of refused connections
  uint64_t refused_in_burst GUARDED_BY(mu) = 0;
  uint64_t refused_total GUARDED_BY(mu) = 0;
  bool stopping GUARDED_BY(mu) = false;
  bool stopped GUARDED_BY(mu) = false;

  void Wake() {
    uint64_t one = 1;
    ssize_t n = ::write(wake.get(), &one, sizeof one);
    (void)n;
  }
  void Log(const std::string& line) const { (options.log ? options.log : LogToStderr)(line); }
  void ShutdownLocked(Connection& c) REQUIRES(mu) {
    if (!c.closing && c.fd >= 0) {
      ::shutdown(c.fd, SHUT_RDWR);
      c.shut.store(true);
    }
  }
  void AcceptLoop();
  void Accept(int listen_fd, bool tcp);
  void RunConnection(Connection* c);
  void ReapLocked() REQUIRES(mu);
  // Shuts down connections past their handshake deadline; returns the poll timeout (ms) until
  // the next deadline, -1 if none.
  int WatchHandshakesLocked() REQUIRES(mu);

  // The handshake's view of the server for one connection.
  class Host : public HandshakeHost {
   public:
    Host(State& s, bool forced) : s_(s), forced_(forced) {}
    std::shared_ptr<ExportEntry> FindExport(std::string_view name) override {
      MutexLock lock(s_.mu);
      auto it = s_.exports.find(std::string(name));
      return it == s_.exports.end() ? nullptr : it->second;
    }
    std::vector<std::shared_ptr<ExportEntry>> ListExports() override {
      MutexLock lock(s_.mu);
      std::vector<std::shared_ptr<ExportEntry>> out;
      for (const auto& [name, e] : s_.exports) out.push_back(e);
      return out;
    }
    TlsContext* tls() override { return s_.tls.get(); }
    bool tls_forced() override { return forced_; }

   private:
    State& s_;
    bool forced_;
  };
};

void Server::State::AcceptLoop() {
  for (;;) {
    int timeout_ms;
    {
      MutexLock lock(mu);
      timeout_ms = WatchHandshakesLocked();
    }
    pollfd fds[3] = {
        {wake.get(), POLLIN, 0}, {unix_listen.get(), POLLIN, 0}, {tcp_listen.get(), POLLIN, 0}};
    int n = ::poll(fds, 3, timeout_ms);
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (fds[0].revents) {
      uint64_t v;
      ssize_t r = ::read(wake.get(), &v, sizeof v);
      (void)r;
      MutexLock lock(mu);
      ReapLocked();
      if (stopping) return;
    }
    if (fds[1].revents & POLLIN) Accept(unix_listen.get(), false);
    if (fds[2].revents & POLLIN) Accept(tcp_listen.get(), true);
  }
}

int Server::State::WatchHandshakesLocked() {
  const auto now = Clock::now();
  auto next = Clock::time_point::max();
  for (auto& c : connections) {
    if (!c->in_handshake || c->closing) continue;
    if (c->handshake_deadline <= now) {
      ShutdownLocked(*c);
      c->in_handshake = false;  // once is enough; the thread is on its way out
    } else {
      next = std::min(next, c->handshake_deadline);
    }
  }
  if (next == Clock::time_point::max()) return -1;
  // Round up so that we do not wake a millisecond early and spin.
  return static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(next - now).count());
}

void Server::State::Accept(int listen_fd, bool tcp) {
  int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
  if (fd < 0) return;  // EAGAIN, ECONNABORTED, EMFILE: try again on the next poll
  MutexLock lock(mu);
  if (stopping) {
    ::close(fd);
    return;
  }
  if (active >= static_cast<size_t>(options.max_connections) &&
      !(!tcp &&
        active < static_cast<size_t>(options.max_connections) +
                     static_cast<size_t>(options.root_reserved_connections) &&
        PeerIsRoot(fd))) {
    // Refuse: closing at once costs no thread and no memory. Log the first of a burst.
    ::close(fd);
    ++refused_total;
    if (!refusing) {
      Log("nbd: " + std::to_string(active) +
          " connections open (the limit, max_connections): refusing new ones");
      refusing = true;
      refused_in_burst = 0;
    }
    ++refused_in_burst;
    return;
  }
  if (refusing) {
    Log("nbd: accepting connections again (" + std::to_string(refused_in_burst) + " refused)");
    refusing = false;
  }
  if (tcp) {
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  auto c = std::make_unique<Connection>();
  c->fd = fd;
  c->tcp = tcp;
  c->forced_tls = options.tls_required || (tcp && tcp_forced_tls);
  c->handshake_deadline = Clock::now() + std::chrono::milliseconds(options.handshake_timeout_ms);
  Connection* raw = c.get();
  connections.push_back(std::move(c));
  ++active;
  raw->thread = std::thread([this, raw] { RunConnection(raw); });
}

void Server::State::RunConnection(Connection* c) {
  std::unique_ptr<Transport> transport = std::make_unique<SocketTransport>(Fd(c->fd));
  auto in = std::make_unique<InputBuffer>();
  Host host(*this, c->forced_tls);
  Result<Negotiated> negotiated = Handshake(host, transport, *in).Run();
  if (negotiated.ok()) {
    std::shared_ptr<ExportEntry> entry = negotiated->entry;
    bool attached = false;
    {
      MutexLock lock(mu);
      if (c->in_handshake && !entry->removed && !stopping && !c->closing) {
        c->in_handshake = false;
        c->entry = entry;
        ++entry->connections;
        attached = true;
      }
    }
    if (attached) {
      SessionLimits limits;
      limits.max_workers = workers;
      limits.extra_workers = &extra_workers;
      limits.connection_inflight = options.max_connection_inflight;
      limits.total_inflight = &total_inflight;
      limits.total_receiving = &total_receiving;
      limits.request_timeout = std::chrono::milliseconds(options.request_timeout_ms);
      limits.shut_down = &c->shut;
      limits.log = [this](const std::string& line) { Log(line); };
      // Idle between requests is fine (the session retries); a stalled request or an unread
      // reply ends the connection after the request timeout.
      if (options.request_timeout_ms > 0) SetSocketTimeouts(c->fd, limits.request_timeout);
      Session(*transport, *in, *negotiated, std::move(limits)).Run();
      MutexLock lock(mu);
      c->entry.reset();
      --entry->connections;
    }
  }
  {
    MutexLock lock(mu);
    c->closing = true;
  }
  transport.reset();  // closes the fd (after shutting TLS down, if any)
  {
    MutexLock lock(mu);
    c->done = true;
    --active;
  }
  cv.SignalAll();
  Wake();
}

void Server::State::ReapLocked() {
  for (auto it = connections.begin(); it != connections.end();) {
    if ((*it)->done) {
      (*it)->thread.join();
      it = connections.erase(it);
    } else {
      ++it;
    }
  }
}

namespace {

Status CheckLimits(const ServerOptions& o) {
  auto bad = [](const std::string& what) { return Status::Error(EINVAL, "NBD limits: " + what); };
  if (o.max_connections < 1) return bad("max_connections must be at least 1");
  if (o.root_reserved_connections < 0) return bad("root_reserved_connections must not be negative");
  if (o.workers_per_connection < 0 || o.workers_per_connection > kMaxWorkers) {
    return bad("workers_per_connection must be 0 (default) to " + std::to_string(kMaxWorkers));
  }
  if (o.max_extra_workers < 0) return bad("max_extra_workers must not be negative");
  if (o.max_connection_inflight < kMaxPayload || o.max_total_inflight < kMaxPayload) {
    return bad("in-flight limits must be at least 32 MiB (the largest request)");
  }
  if (o.handshake_timeout_ms < 1) return bad("handshake_timeout_ms must be positive");
  if (o.request_timeout_ms < 0) return bad("request_timeout_ms must not be negative");
  return Status::Ok();
}

}  // namespace

Server::Server(std::unique_ptr<State> state) : state_(std::move(state)) {}

Server::~Server() { Stop(); }

Result<std::unique_ptr<Server>> Server::Start(const ServerOptions& options) {
  BLKSNAP_RETURN_IF_ERROR(CheckLimits(options));
  auto s = std::make_unique<State>(options);
  s->workers = options.workers_per_connection > 0 ? options.workers_per_connection
                                                  : DefaultWorkersPerConnection();
  if (options.unix_path.empty() && options.tcp_address.empty()) {
    return Status::Error(EINVAL, "no listener configured (unix_path or tcp_address)");
  }
  const bool want_tls =
      !options.tls_cert.empty() || !options.tls_key.empty() || !options.tls_psk_file.empty();
  if (want_tls) {
    BLKSNAP_ASSIGN_OR_RETURN(s->tls, MakeTlsContext(options));
  } else if (options.tls_required) {
    return Status::Error(EINVAL, "tls_required without TLS credentials");
  }
  s->wake = Fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!s->wake.valid()) return Status::FromErrno("eventfd");

  if (!options.unix_path.empty()) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (options.unix_path.size() >= sizeof addr.sun_path) {
      return Status::Error(ENAMETOOLONG, "unix socket path too long");
    }
    std::memcpy(addr.sun_path, options.unix_path.c_str(), options.unix_path.size() + 1);
    struct stat st;
    if (::lstat(options.unix_path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) {
      ::unlink(options.unix_path.c_str());  // a stale socket from an earlier run
    }
    s->unix_listen = Fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!s->unix_listen.valid()) return Status::FromErrno("socket(AF_UNIX)");
    if (::bind(s->unix_listen.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      return Status::FromErrno("bind " + options.unix_path);
    }
    // Before listen(): nobody can connect yet, so the mode applies to every client.
    if (::chmod(options.unix_path.c_str(), options.unix_mode) != 0) {
      return Status::FromErrno("chmod " + options.unix_path);
    }
    if (::listen(s->unix_listen.get(), 128) != 0) return Status::FromErrno("listen");
  }

  if (!options.tcp_address.empty()) {
    std::string host, port;
    BLKSNAP_RETURN_IF_ERROR(SplitHostPort(options.tcp_address, &host, &port));
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    addrinfo* res = nullptr;
    int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &res);
    if (rc != 0) {
      return Status::Error(EINVAL, "getaddrinfo " + options.tcp_address + ": " + gai_strerror(rc));
    }
    std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> guard(res, ::freeaddrinfo);
    // Any local user can connect to a TCP port, loopback included: TCP needs TLS.
    if (!s->tls && !IsLoopback(res->ai_addr)) {
      return Status::Error(EINVAL,
                           "NBD over TCP beyond loopback needs TLS credentials (PSK or "
                           "X.509)");
    }
    if (!s->tls && !options.allow_insecure_tcp) {
      return Status::Error(EINVAL,
                           "NBD over TCP without TLS would let every local user read "
                           "and write the exports: give TLS credentials (PSK or X.509) "
                           "or allow insecure TCP explicitly");
    }
    s->tcp_forced_tls = s->tls != nullptr;
    s->tcp_listen = Fd(::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!s->tcp_listen.valid()) return Status::FromErrno("socket(TCP)");
    int one = 1;
    ::setsockopt(s->tcp_listen.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(s->tcp_listen.get(), res->ai_addr, res->ai_addrlen) != 0) {
      return Status::FromErrno("bind " + options.tcp_address);
    }
    if (::listen(s->tcp_listen.get(), 128) != 0) return Status::FromErrno("listen");
    sockaddr_storage bound{};
    socklen_t len = sizeof bound;
    ::getsockname(s->tcp_listen.get(), reinterpret_cast<sockaddr*>(&bound), &len);
    s->tcp_port = bound.ss_family == AF_INET6
                      ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                      : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
    if (host == "0.0.0.0" || host == "::") {
      // A wildcard bind is not an address clients can use: advertise our host name.
      char name[256] = {};
      if (::gethostname(name, sizeof name - 1) == 0 && name[0]) host = name;
    }
    s->tcp_host = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  }

  State* raw = s.get();
  s->accept_thread = std::thread([raw] { raw->AcceptLoop(); });
  return std::unique_ptr<Server>(new Server(std::move(s)));
}

void Server::Stop() {
  State& s = *state_;
  {
    MutexLock lock(s.mu);
    if (s.stopped) return;
    s.stopped = true;
    s.stopping = true;
    for (auto& c : s.connections) s.ShutdownLocked(*c);
  }
  s.Wake();
  if (s.accept_thread.joinable()) s.accept_thread.join();
  std::list<std::unique_ptr<Connection>> conns;
  {
    MutexLock lock(s.mu);
    for (auto& c : s.connections) s.ShutdownLocked(*c);
    conns.swap(s.connections);
  }
  for (auto& c : conns) c->thread.join();
  s.unix_listen.Close();
  s.tcp_listen.Close();
  if (!s.options.unix_path.empty()) ::unlink(s.options.unix_path.c_str());
  MutexLock lock(s.mu);
  for (auto& [name, e] : s.exports) e->removed = true;
  s.exports.clear();
}

Status Server::AddExport(const std::string& name, std::shared_ptr<BlockDevice> device,
                         const ExportOptions& options) {
  if (!device) return Status::Error(EINVAL, "null device");
  if (name.size() > kMaxStringLength) return Status::Error(EINVAL, "export name too long");
  auto e = std::make_shared<ExportEntry>();
  e->name = name;
  e->device = std::move(device);
  e->options = options;
  MutexLock lock(state_->mu);
  if (state_->stopping) return Status::Error(ESHUTDOWN, "server stopped");
  if (!state_->exports.emplace(name, std::move(e)).second) {
    return Status::Error(EEXIST, "export " + name + " exists");
  }
  return Status::Ok();
}

Status Server::RemoveExport(const std::string& name) {
  State& s = *state_;
  MutexLock lock(s.mu);
  auto it = s.exports.find(name);
  if (it == s.exports.end()) return Status::Error(ENOENT, "no export " + name);
  std::shared_ptr<ExportEntry> e = it->second;
  s.exports.erase(it);
  e->removed = true;
  for (auto& c : s.connections) {
    if (c->entry == e) s.ShutdownLocked(*c);
  }
  s.cv.Wait(s.mu, [&]() REQUIRES(s.mu) { return e->connections == 0; });
  return Status::Ok();
}

size_t Server::ConnectionCount(const std::string& name) const {
  MutexLock lock(state_->mu);
  auto it = state_->exports.find(name);
  return it == state_->exports.end() ? 0 : it->second->connections;
}

ServerStats Server::Stats() const {
  const State& s = *state_;
  ServerStats st;
  st.inflight_bytes = s.total_inflight.used();
  st.extra_workers = s.extra_workers.used();
  st.insecure_tcp = s.tcp_listen.valid() && !s.tcp_forced_tls;
  MutexLock lock(s.mu);
  st.connections = s.active;
  st.refused = s.refused_total;
  return st;
}

std::string Server::UnixUri(const std::string& name) const {
  if (state_->options.unix_path.empty()) return "";
  const char* scheme = state_->options.tls_required ? "nbds+unix" : "nbd+unix";
  return std::string(scheme) + ":///" + PercentEncode(name, "@") +
         "?socket=" + PercentEncode(state_->options.unix_path, "/");
}

std::string Server::TcpUri(const std::string& name) const {
  if (!state_->tcp_listen.valid() && state_->tcp_port == 0) return "";
  const bool tls = state_->options.tls_required || state_->tcp_forced_tls;
  return std::string(tls ? "nbds" : "nbd") + "://" + state_->tcp_host + ":" +
         std::to_string(state_->tcp_port) + "/" + PercentEncode(name, "@");
}

}  // namespace blksnap::nbd
