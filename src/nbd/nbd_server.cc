// Server: listeners, the export registry and connection lifetimes (see nbd_server.h).
//
// Threads: one accept thread polls the listeners and an eventfd; each accepted connection gets
// one thread that runs the handshake and then the Session (which adds its worker threads).
// A finished connection marks itself done and pokes the eventfd; the accept thread joins and
// frees it (so fds and threads never pile up over thousands of short connections).
//
// Locking: mu_ guards the export map, the connection list and each ExportEntry's bookkeeping
// (connections, removed) and each Connection's `closing` flag. It is taken on connect, on
// attach after the handshake and on disconnect, never per request. A connection's fd is shut
// down from other threads (RemoveExport, Stop) only while holding mu_ and only before the
// connection thread set `closing`, so we never shut down a recycled fd number.
//
// TLS policy: with no TLS credentials the server runs NOTLS; with credentials, SELECTIVETLS
// (clients may upgrade) unless tls_required, which makes it FORCEDTLS. Connections accepted on
// a TCP listener bound beyond loopback are always FORCEDTLS, and Start() refuses such a
// listener without credentials.
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

#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <list>
#include <map>
#include <thread>

#include "nbd/handshake.h"
#include "nbd/protocol.h"
#include "nbd/session.h"
#include "nbd/transport.h"

namespace blksnap::nbd {
namespace {

constexpr int kDefaultWorkers = 8;
constexpr int kMaxWorkers = 64;

// A client must finish the handshake within this time (BLKSNAP_NBD_HANDSHAKE_TIMEOUT seconds
// overrides), so silent connections cannot pin threads forever.
constexpr int kDefaultHandshakeTimeoutSec = 60;

int HandshakeTimeoutSec() {
  if (const char* env = std::getenv("BLKSNAP_NBD_HANDSHAKE_TIMEOUT")) {
    int n = std::atoi(env);
    if (n >= 1) return n;
  }
  return kDefaultHandshakeTimeoutSec;
}

void SetRecvTimeout(int fd, int seconds) {
  timeval tv{seconds, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

int WorkersPerConnection() {
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

std::string PercentEncode(std::string_view s, std::string_view keep) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    const bool unreserved = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                            (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' || c == '~';
    if (unreserved || keep.find(static_cast<char>(c)) != std::string_view::npos) {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

struct Connection {
  int fd = -1;  // owned by the transport inside the connection thread
  bool tcp = false;
  bool forced_tls = false;
  bool closing = false;                // guarded by State::mu_: fd is about to be closed
  bool done = false;                   // guarded by State::mu_: the thread has finished
  std::shared_ptr<ExportEntry> entry;  // guarded by State::mu_: set while attached
  std::thread thread;
};

struct Server::State {
  ServerOptions options;
  UniqueFd unix_listen;
  UniqueFd tcp_listen;
  bool tcp_forced_tls = false;
  std::string tcp_host;  // for URIs
  int tcp_port = 0;
  UniqueFd wake;  // eventfd: stop or reap
  std::unique_ptr<TlsContext> tls;
  int workers = kDefaultWorkers;
  int handshake_timeout_sec = kDefaultHandshakeTimeoutSec;
  std::thread accept_thread;

  mutable std::mutex mu;
  std::condition_variable cv;                                   // a connection detached or finished
  std::map<std::string, std::shared_ptr<ExportEntry>> exports;  // guarded by mu
  std::list<std::unique_ptr<Connection>> connections;           // guarded by mu
  bool stopping = false;                                        // guarded by mu
  bool stopped = false;                                         // guarded by mu

  void Wake() {
    uint64_t one = 1;
    ssize_t n = ::write(wake.get(), &one, sizeof one);
    (void)n;
  }
  void ShutdownLocked(Connection& c) {
    if (!c.closing && c.fd >= 0) ::shutdown(c.fd, SHUT_RDWR);
  }
  void AcceptLoop();
  void Accept(int listen_fd, bool tcp);
  void RunConnection(Connection* c);
  void ReapLocked();

  // The handshake's view of the server for one connection.
  class Host : public HandshakeHost {
   public:
    Host(State& s, bool forced) : s_(s), forced_(forced) {}
    std::shared_ptr<ExportEntry> FindExport(std::string_view name) override {
      std::lock_guard lock(s_.mu);
      auto it = s_.exports.find(std::string(name));
      return it == s_.exports.end() ? nullptr : it->second;
    }
    std::vector<std::shared_ptr<ExportEntry>> ListExports() override {
      std::lock_guard lock(s_.mu);
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
    pollfd fds[3] = {
        {wake.get(), POLLIN, 0}, {unix_listen.get(), POLLIN, 0}, {tcp_listen.get(), POLLIN, 0}};
    int n = ::poll(fds, 3, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (fds[0].revents) {
      uint64_t v;
      ssize_t r = ::read(wake.get(), &v, sizeof v);
      (void)r;
      std::lock_guard lock(mu);
      ReapLocked();
      if (stopping) return;
    }
    if (fds[1].revents & POLLIN) Accept(unix_listen.get(), false);
    if (fds[2].revents & POLLIN) Accept(tcp_listen.get(), true);
  }
}

void Server::State::Accept(int listen_fd, bool tcp) {
  int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
  if (fd < 0) return;  // EAGAIN, ECONNABORTED, EMFILE: try again on the next poll
  if (tcp) {
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  std::lock_guard lock(mu);
  if (stopping) {
    ::close(fd);
    return;
  }
  auto c = std::make_unique<Connection>();
  c->fd = fd;
  c->tcp = tcp;
  c->forced_tls = options.tls_required || (tcp && tcp_forced_tls);
  Connection* raw = c.get();
  connections.push_back(std::move(c));
  raw->thread = std::thread([this, raw] { RunConnection(raw); });
}

void Server::State::RunConnection(Connection* c) {
  std::unique_ptr<Transport> transport = std::make_unique<SocketTransport>(UniqueFd(c->fd));
  auto in = std::make_unique<InputBuffer>();
  Host host(*this, c->forced_tls);
  SetRecvTimeout(c->fd, handshake_timeout_sec);
  Result<Negotiated> negotiated = Handshake(host, transport, *in).Run();
  if (negotiated.ok()) {
    SetRecvTimeout(c->fd, 0);  // transmission: clients may idle as long as they like
    std::shared_ptr<ExportEntry> entry = negotiated->entry;
    bool attached = false;
    {
      std::lock_guard lock(mu);
      if (!entry->removed && !stopping && !c->closing) {
        c->entry = entry;
        ++entry->connections;
        attached = true;
      }
    }
    if (attached) {
      Session(*transport, *in, *negotiated).Run(workers);
      std::lock_guard lock(mu);
      c->entry.reset();
      --entry->connections;
    }
  }
  {
    std::lock_guard lock(mu);
    c->closing = true;
  }
  transport.reset();  // closes the fd (after shutting TLS down, if any)
  {
    std::lock_guard lock(mu);
    c->done = true;
  }
  cv.notify_all();
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

Server::Server(std::unique_ptr<State> state) : state_(std::move(state)) {}

Server::~Server() { Stop(); }

Result<std::unique_ptr<Server>> Server::Start(const ServerOptions& options) {
  auto s = std::make_unique<State>();
  s->options = options;
  s->workers = WorkersPerConnection();
  s->handshake_timeout_sec = HandshakeTimeoutSec();
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
  s->wake.Reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
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
    s->unix_listen.Reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!s->unix_listen.valid()) return Status::FromErrno("socket(AF_UNIX)");
    if (::bind(s->unix_listen.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      return Status::FromErrno("bind " + options.unix_path);
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
    s->tcp_forced_tls = !IsLoopback(res->ai_addr);
    if (s->tcp_forced_tls && !s->tls) {
      return Status::Error(EINVAL, "TCP beyond loopback requires TLS credentials");
    }
    s->tcp_listen.Reset(::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
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
    std::lock_guard lock(s.mu);
    if (s.stopped) return;
    s.stopped = true;
    s.stopping = true;
    for (auto& c : s.connections) s.ShutdownLocked(*c);
  }
  s.Wake();
  if (s.accept_thread.joinable()) s.accept_thread.join();
  std::list<std::unique_ptr<Connection>> conns;
  {
    std::lock_guard lock(s.mu);
    for (auto& c : s.connections) s.ShutdownLocked(*c);
    conns.swap(s.connections);
  }
  for (auto& c : conns) c->thread.join();
  s.unix_listen.Reset();
  s.tcp_listen.Reset();
  if (!s.options.unix_path.empty()) ::unlink(s.options.unix_path.c_str());
  std::lock_guard lock(s.mu);
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
  std::lock_guard lock(state_->mu);
  if (state_->stopping) return Status::Error(ESHUTDOWN, "server stopped");
  if (!state_->exports.emplace(name, std::move(e)).second) {
    return Status::Error(EEXIST, "export " + name + " exists");
  }
  return Status::Ok();
}

Status Server::RemoveExport(const std::string& name) {
  State& s = *state_;
  std::unique_lock lock(s.mu);
  auto it = s.exports.find(name);
  if (it == s.exports.end()) return Status::Error(ENOENT, "no export " + name);
  std::shared_ptr<ExportEntry> e = it->second;
  s.exports.erase(it);
  e->removed = true;
  for (auto& c : s.connections) {
    if (c->entry == e) s.ShutdownLocked(*c);
  }
  s.cv.wait(lock, [&] { return e->connections == 0; });
  return Status::Ok();
}

size_t Server::ConnectionCount(const std::string& name) const {
  std::lock_guard lock(state_->mu);
  auto it = state_->exports.find(name);
  return it == state_->exports.end() ? 0 : it->second->connections;
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
