// blksnapd: the blksnap daemon. Owns the engine, the fronts (NBD, FUSE, loop, ublk) and the
// control socket; see docs/cli.md for its options and docs/control-protocol.md for the protocol.
//
// Start-up order: parse options (command line over config file), daemonize if asked (the
// parent waits on a pipe until the child is ready or failed, so `blksnapd --daemonize && blksnap
// ...` works), take the state-dir lock (flock; a second daemon on the same dir refuses),
// create the engine, start the fronts, open the pidfile (a refused one fails the start before
// any client can connect), listen on the control socket, write the pid into the pidfile,
// re-attach the devices a crashed predecessor recorded in STATE_DIR/devices.json, their ublk
// devices through user recovery (Service::Restore: last, so no start-up failure follows it,
// and before the first accept), tell systemd READY=1. Signals SIGTERM/SIGINT/SIGHUP are blocked
// in every thread and taken by the main thread with sigwait(); shutdown stops the control
// server, destroys every snapshot, removes every front, loop and ublk device, detaches every
// device, unmounts FUSE and removes the device records. CBT lives in memory only and is lost at
// shutdown; a kill -9 leaves the records (and the ublk devices) for the next start.
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <thread>
#include <tuple>

#include "blksnap/config.h"
#include "blksnap/engine.h"
#include "blksnap/mapped_file.h"
#include "control/protocol.h"
#include "daemon/control_server.h"
#include "daemon/fronts.h"
#include "daemon/logging.h"
#include "daemon/methods.h"
#include "daemon/service.h"
#include "daemon/systemd.h"
#include "nbd/nbd_server.h"

namespace blksnap::daemon {
namespace {

struct Options {
  std::string state_dir = "/var/lib/blksnap";
  std::string control = control::kDefaultControlPath;
  std::string nbd_unix = "/run/blksnap/nbd.sock";
  std::string nbd_tcp;
  std::string tls_cert, tls_key, tls_ca, tls_psk;
  bool tls_required = false;
  bool nbd_tcp_insecure = false;
  // NBD limits (docs/nbd.md): counts, sizes (as given) and timeouts in seconds.
  nbd::ServerOptions nbd_limits;
  std::string nbd_max_inflight = "256M", nbd_max_connection_inflight = "64M";
  double nbd_handshake_timeout = 60, nbd_request_timeout = 30;
  std::string fuse_dir = "/run/blksnap/dev";
  std::string frontend = "auto";
  int ublk_workers = -1;
  bool no_nbd = false, no_fuse = false;
  bool cbt_in_memory = false;
  std::string log_level = "info";
  std::string log_file;
  bool daemonize = false;
  std::string pidfile;
  // Tunables, as given (sizes allowed); empty = default.
  std::map<std::string, std::string> tunables;
};

struct Tunable {
  const char* option;
  const char* help;
  std::function<bool(Config&, uint64_t)> set;  // false: out of the field's range
};

template <typename Field>
std::function<bool(Config&, uint64_t)> Setter(Field Config::*field) {
  return [field](Config& c, uint64_t v) {
    using T = std::remove_reference_t<decltype(c.*field)>;
    if (v > std::numeric_limits<T>::max()) return false;
    c.*field = static_cast<T>(v);
    return true;
  };
}

std::vector<Tunable> Tunables() {
  return {
      {"tracking-block-minimum-shift", "CBT block size minimum, log2 bytes (default 14)",
       Setter(&Config::tracking_block_minimum_shift)},
      {"tracking-block-maximum-shift", "CBT block size maximum, log2 bytes (default 26)",
       Setter(&Config::tracking_block_maximum_shift)},
      {"tracking-block-maximum-count", "CBT blocks per device at most (default 2097152)",
       Setter(&Config::tracking_block_maximum_count)},
      {"chunk-minimum-shift", "COW chunk size minimum, log2 bytes (default 18)",
       Setter(&Config::chunk_minimum_shift)},
      {"chunk-maximum-shift", "COW chunk size maximum, log2 bytes (default 26)",
       Setter(&Config::chunk_maximum_shift)},
      {"chunk-maximum-count-shift", "COW chunks per device at most, log2 (default 40)",
       Setter(&Config::chunk_maximum_count_shift)},
      {"chunk-maximum-in-queue", "chunks waiting to be stored before writers wait (default 64)",
       Setter(&Config::chunk_maximum_in_queue)},
      {"chunk-maximum-in-cache", "stored chunks cached for image reads (default 32)",
       Setter(&Config::chunk_maximum_in_cache)},
      {"chunk-storer-threads", "threads writing chunks to the difference storage (default 16)",
       Setter(&Config::chunk_storer_threads)},
      {"durable-store-inline",
       "1: an original write stores its chunk in its own thread (durable snapshots, and memory "
       "ones on page-cache storage); 0: hands it to a storer (default 1)",
       Setter(&Config::durable_store_inline)},
      {"diff-storage-page-cache",
       "1: difference storage in a regular file through the page cache; 0: O_DIRECT (block "
       "devices always are) (default 1)",
       Setter(&Config::diff_storage_page_cache)},
      {"diff-storage-minimum", "difference storage growth step, a size (default 1G)",
       Setter(&Config::diff_storage_minimum)},
      {"cbt-checkpoint-interval-ms",
       "durable CBT: checkpoint every device written since its last one this often, in "
       "milliseconds; 0 = only at a clean stop (default 30000)",
       Setter(&Config::cbt_checkpoint_interval_ms)},
  };
}

// The durable CBT state files' seam; BLKSNAP_TEST_BOOT_ID_FILE lets a test simulate a reboot
// (a new boot id) without one.
std::shared_ptr<MappedFiles> StateFiles() {
  const char* boot_id_file = std::getenv("BLKSNAP_TEST_BOOT_ID_FILE");
  if (boot_id_file && *boot_id_file) {
    spdlog::warn("boot id read from {} (BLKSNAP_TEST_BOOT_ID_FILE): for tests only", boot_id_file);
    return PosixMappedFiles(boot_id_file);
  }
  return PosixMappedFiles();
}

int UsageError(const std::string& message) {
  std::cerr << "blksnapd: error: " << message << "\n";
  return 2;
}

// The NBD server's bounds against hostile clients (docs/nbd.md has what each one stops).
void AddNbdLimitOptions(CLI::App& app, Options& opt) {
  nbd::ServerOptions& l = opt.nbd_limits;
  app.add_flag("--nbd-tcp-insecure", opt.nbd_tcp_insecure,
               "INSECURE: allow NBD over TCP without TLS (loopback only); every local user can "
               "then read and write every export");
  app.add_option("--nbd-max-connections", l.max_connections, "NBD connections at most")
      ->capture_default_str()
      ->check(CLI::Range(1, 65536));
  app.add_option("--nbd-root-reserved", l.root_reserved_connections,
                 "extra NBD connections kept for root on the Unix socket")
      ->capture_default_str()
      ->check(CLI::Range(0, 1024));
  app.add_option("--nbd-workers", l.workers_per_connection,
                 "threads serving one NBD connection (0 = 8)")
      ->capture_default_str()
      ->check(CLI::Range(0, 64));
  app.add_option("--nbd-max-extra-workers", l.max_extra_workers,
                 "NBD worker threads beyond one per connection, server-wide")
      ->capture_default_str()
      ->check(CLI::Range(0, 4096));
  app.add_option("--nbd-max-inflight", opt.nbd_max_inflight,
                 "NBD request payload bytes held at once, server-wide (a size, >= 32M)")
      ->capture_default_str();
  app.add_option("--nbd-max-connection-inflight", opt.nbd_max_connection_inflight,
                 "NBD request payload bytes held at once per connection (a size, >= 32M)")
      ->capture_default_str();
  app.add_option("--nbd-handshake-timeout", opt.nbd_handshake_timeout,
                 "seconds an NBD client has to finish its handshake")
      ->capture_default_str()
      ->check(CLI::Range(0.1, 3600.0));
  app.add_option("--nbd-request-timeout", opt.nbd_request_timeout,
                 "seconds a started NBD request may stall before its connection is closed "
                 "(0 = never)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 3600.0));
}

// Fills the NBD server's options; a one-line error for a bad size.
Result<nbd::ServerOptions> NbdOptions(const Options& opt) {
  nbd::ServerOptions so = opt.nbd_limits;
  so.unix_path = opt.nbd_unix;
  so.tcp_address = opt.nbd_tcp;
  so.tls_cert = opt.tls_cert;
  so.tls_key = opt.tls_key;
  so.tls_ca = opt.tls_ca;
  so.tls_psk_file = opt.tls_psk;
  so.tls_required = opt.tls_required;
  so.allow_insecure_tcp = opt.nbd_tcp_insecure;
  for (auto [text, field, name] :
       {std::tuple{&opt.nbd_max_inflight, &so.max_total_inflight, "--nbd-max-inflight"},
        std::tuple{&opt.nbd_max_connection_inflight, &so.max_connection_inflight,
                   "--nbd-max-connection-inflight"}}) {
    auto size = control::ParseSize(*text);
    if (!size.ok())
      return Status::Error(EINVAL, std::string(name) + ": " + size.status().ToString());
    if (*size < (32u << 20)) return Status::Error(EINVAL, std::string(name) + " must be >= 32M");
    *field = *size;
  }
  so.handshake_timeout_ms = static_cast<int>(opt.nbd_handshake_timeout * 1000);
  so.request_timeout_ms = static_cast<int>(opt.nbd_request_timeout * 1000);
  so.log = [](const std::string& line) { spdlog::warn("nbd: {}", line); };
  return so;
}

// Readiness pipe of --daemonize: the child writes "" (ready) or an error message, then closes.
int g_ready_fd = -1;

void ReportReady(const std::string& error) {
  if (g_ready_fd >= 0) {
    std::string msg = error.empty() ? std::string("OK") : error;
    if (::write(g_ready_fd, msg.data(), msg.size()) < 0) {
      // The parent died; nothing to tell.
    }
    ::close(g_ready_fd);
    g_ready_fd = -1;
  }
}

int Fail(const std::string& message) {
  spdlog::error("{}", message);
  ReportReady(message);
  return 1;
}

// The pidfile, opened before the control socket is made and written once it listens: a file
// refused (a planted symlink, not a regular file of ours) fails the start before any client can
// connect, and a daemon that then fails to listen (another blksnapd has the socket) leaves a
// pidfile it did not create untouched.
struct Pidfile {
  int fd = -1;
  bool created = false;  // by us: removed again if the start fails
};

// Closes a pidfile the start gave up on: removed if we created it and it is still empty (another
// daemon that opened it meanwhile and wrote its pid keeps it).
void AbandonPidfile(Pidfile& p, const std::string& path) {
  if (p.fd < 0) return;
  struct stat st {};
  if (p.created && ::fstat(p.fd, &st) == 0 && st.st_size == 0) ::unlink(path.c_str());
  ::close(p.fd);
  p.fd = -1;
}

// Opens path without following a symlink planted there (O_NOFOLLOW), and only a regular file
// owned by us with one link, so another user cannot make the daemon clobber a file of theirs
// (O_NONBLOCK: a FIFO planted there is refused, not waited on).
Result<Pidfile> OpenPidfile(const std::string& path) {
  constexpr int kFlags = O_WRONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC;
  Pidfile p;
  p.fd = ::open(path.c_str(), kFlags | O_CREAT | O_EXCL, 0644);
  p.created = p.fd >= 0;
  if (p.fd < 0 && errno == EEXIST) p.fd = ::open(path.c_str(), kFlags);
  if (p.fd < 0) {
    int err = errno;
    if (err == ELOOP) {
      return Status::Error(err, "pidfile " + path + " is a symbolic link; refusing to follow it");
    }
    return Status::Error(err, "cannot write pidfile " + path);
  }
  struct stat st {};
  if (::fstat(p.fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != ::geteuid() ||
      st.st_nlink != 1) {
    AbandonPidfile(p, path);
    return Status::Error(
        EPERM, "pidfile " + path + " is not a regular file of ours with one link; refusing it");
  }
  return p;
}

// Writes our pid into the opened pidfile and closes it (a file we created is removed again if
// that fails).
Status WritePid(Pidfile& p, const std::string& path) {
  std::string text = std::to_string(::getpid()) + "\n";
  errno = EIO;  // a short write sets none
  bool ok = ::ftruncate(p.fd, 0) == 0 &&
            ::pwrite(p.fd, text.data(), text.size(), 0) == static_cast<ssize_t>(text.size());
  int err = errno;
  ::close(p.fd);
  p.fd = -1;
  if (ok) return Status::Ok();
  if (p.created) ::unlink(path.c_str());
  return Status::Error(err, "cannot write pidfile " + path);
}

// Every control client, NBD connection and FUSE/loop/ublk device holds descriptors: use the
// hard limit (a service's soft limit is often 1024, below kMaxClients control clients alone).
void RaiseFileLimit() {
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
    lim.rlim_cur = lim.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &lim);
  }
}

// Forks; the parent waits for the child's readiness report and exits with its outcome.
void Daemonize() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    std::perror("blksnapd: pipe");
    std::exit(1);
  }
  pid_t pid = ::fork();
  if (pid < 0) {
    std::perror("blksnapd: fork");
    std::exit(1);
  }
  if (pid > 0) {
    ::close(fds[1]);
    std::string msg;
    char buf[512];
    ssize_t n;
    while ((n = ::read(fds[0], buf, sizeof(buf))) > 0) msg.append(buf, static_cast<size_t>(n));
    if (msg == "OK") std::_Exit(0);
    std::cerr << "blksnapd: error: " << (msg.empty() ? "daemon exited during start-up" : msg)
              << "\n";
    std::_Exit(1);
  }
  ::close(fds[0]);
  g_ready_fd = fds[1];
  ::setsid();
  int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null >= 0) {
    ::dup2(null, STDIN_FILENO);
    ::dup2(null, STDOUT_FILENO);
    ::dup2(null, STDERR_FILENO);
    if (null > STDERR_FILENO) ::close(null);
  }
}

int Run(int argc, char** argv) {
  Options opt;
  CLI::App app{"blksnapd: block-device snapshots and change tracking, as a service", "blksnapd"};
  app.set_version_flag("--version", BLKSNAP_VERSION);
  app.set_config("--config", "", "config file: 'option = value' lines (see docs/cli.md)");
  app.add_option("--state-dir", opt.state_dir, "state directory (lock file)")
      ->capture_default_str();
  app.add_option("--control", opt.control, "control socket path")->capture_default_str();
  app.add_option("--nbd-unix", opt.nbd_unix, "NBD Unix socket ('' = none)")->capture_default_str();
  app.add_option("--nbd-tcp", opt.nbd_tcp, "NBD TCP address HOST:PORT (default off)");
  app.add_option("--tls-cert", opt.tls_cert, "NBD TLS certificate (PEM)");
  app.add_option("--tls-key", opt.tls_key, "NBD TLS private key (PEM)");
  app.add_option("--tls-ca", opt.tls_ca, "NBD TLS CA certificate for client checks (PEM)");
  app.add_option("--tls-psk", opt.tls_psk, "NBD TLS PSK file");
  app.add_flag("--tls-required", opt.tls_required, "refuse NBD clients that do not use TLS");
  AddNbdLimitOptions(app, opt);
  app.add_option("--fuse-dir", opt.fuse_dir, "FUSE mount point ('' = none)")->capture_default_str();
  app.add_option("--frontend", opt.frontend,
                 "block-device front for --blockdev requests: ublk, fuse-loop or auto (ublk when "
                 "/dev/ublk-control exists)")
      ->capture_default_str()
      ->check(CLI::IsMember({"ublk", "fuse-loop", "auto"}));
  app.add_option("--ublk-workers", opt.ublk_workers,
                 "threads serving each ublk device's queue (-1 = two per CPU, 4 to 16; 0 = none: "
                 "the queue thread serves one request at a time, for RAM-backed storage)")
      ->capture_default_str()
      ->check(CLI::Range(-1, 64));
  app.add_flag("--no-nbd", opt.no_nbd, "do not start the NBD front");
  app.add_flag("--no-fuse", opt.no_fuse, "do not start the FUSE front");
  app.add_flag("--cbt-in-memory", opt.cbt_in_memory,
               "keep CBT in memory only (every restart starts a new generation); default: "
               "durable, in STATE_DIR/cbt");
  app.add_option("--log-level", opt.log_level, "trace, debug, info, warn, error")
      ->capture_default_str()
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}));
  app.add_option("--log-file", opt.log_file, "log to this file instead of stderr");
  app.add_flag("--daemonize", opt.daemonize, "run in the background once ready");
  app.add_option("--pidfile", opt.pidfile, "write the daemon's pid here");
  for (const auto& t : Tunables()) {
    app.add_option_function<std::string>(
        std::string("--") + t.option,
        [&opt, name = std::string(t.option)](const std::string& v) { opt.tunables[name] = v; },
        t.help);
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    return UsageError(e.what());
  }

  Config config;
  for (const auto& t : Tunables()) {
    auto it = opt.tunables.find(t.option);
    if (it == opt.tunables.end()) continue;
    auto v = control::ParseSize(it->second);
    if (!v.ok())
      return UsageError("--" + std::string(t.option) + ": " + std::string(v.status().message()));
    if (!t.set(config, *v))
      return UsageError("--" + std::string(t.option) + ": value out of range");
  }
  std::vector<std::string> warnings;
  Status valid = config.Validate(&warnings);
  if (!valid.ok()) return UsageError(std::string(valid.message()));
  if (opt.no_nbd) opt.nbd_unix.clear();
  if (opt.no_nbd && !opt.nbd_tcp.empty()) return UsageError("--no-nbd contradicts --nbd-tcp");
  if (opt.no_fuse) opt.fuse_dir.clear();
  for (std::string* p :
       {&opt.state_dir, &opt.control, &opt.nbd_unix, &opt.fuse_dir, &opt.pidfile, &opt.log_file}) {
    if (!p->empty()) *p = std::filesystem::absolute(*p).lexically_normal().string();
  }

  if (opt.daemonize) Daemonize();

  if (Status s = StartLogging(opt.log_file, opt.log_level); !s.ok()) {
    ReportReady(std::string(s.message()));
    std::cerr << "blksnapd: error: " << s.message() << "\n";
    return 1;
  }
  for (const auto& w : warnings) spdlog::warn("config: {}", w);

  // State dir and its lock.
  std::error_code ec;
  std::filesystem::create_directories(opt.state_dir, ec);
  if (ec) return Fail("cannot create state dir " + opt.state_dir + ": " + ec.message());
  std::string lock_path = opt.state_dir + "/blksnapd.lock";
  int lock_fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd < 0) return Fail("cannot open " + lock_path + ": " + std::strerror(errno));
  if (::flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
    char buf[32] = {};
    ssize_t n = ::pread(lock_fd, buf, sizeof(buf) - 1, 0);
    std::string pid = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "?";
    while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
    return Fail("another blksnapd (pid " + pid + ") is already running on state dir " +
                opt.state_dir);
  }
  std::string pid_text = std::to_string(::getpid()) + "\n";
  if (::ftruncate(lock_fd, 0) != 0 || ::pwrite(lock_fd, pid_text.data(), pid_text.size(), 0) < 0) {
    spdlog::warn("cannot write pid into {}: {}", lock_path, std::strerror(errno));
  }

  // Signals: blocked everywhere (threads inherit the mask), taken by sigwait below.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  RaiseFileLimit();
  auto engine = Engine::Create(config);
  if (!engine.ok()) return Fail("cannot start the engine: " + engine.status().ToString());

  FrontOptions fo;
  auto nbd_options = NbdOptions(opt);
  if (!nbd_options.ok()) return Fail(nbd_options.status().ToString());
  fo.nbd = std::move(nbd_options).value();
  fo.fuse_dir = opt.fuse_dir;
  fo.frontend = opt.frontend;
  fo.ublk_workers = opt.ublk_workers;
  auto fronts = StartFronts(fo);
  if (!fronts.ok()) return Fail("cannot start the fronts: " + fronts.status().ToString());

  auto service = std::make_shared<Service>(std::move(engine).value(), std::move(fronts).value(),
                                           ServiceInfo{.state_dir = opt.state_dir,
                                                       .control_path = opt.control,
                                                       .durable_cbt = !opt.cbt_in_memory,
                                                       .mapped_files = StateFiles()});
  // The pidfile is checked before the control socket exists: a client that can connect must
  // find a daemon that will serve it, not one about to exit on a refused pidfile.
  Pidfile pidfile;
  if (!opt.pidfile.empty()) {
    auto opened = OpenPidfile(opt.pidfile);
    if (!opened.ok()) {
      service->Shutdown();
      return Fail(opened.status().ToString());
    }
    pidfile = *opened;
  }
  std::filesystem::create_directories(std::filesystem::path(opt.control).parent_path(), ec);
  auto server = ControlServer::Listen(
      opt.control, [service](const std::string& method, const nlohmann::json& params,
                             const std::function<bool()>& cancelled) {
        return HandleRequest(*service, method, params, cancelled);
      });
  if (!server.ok()) {
    service->Shutdown();
    AbandonPidfile(pidfile, opt.pidfile);  // never another daemon's
    return Fail(server.status().ToString());
  }
  if (pidfile.fd >= 0) {
    Status s = WritePid(pidfile, opt.pidfile);
    if (!s.ok()) {
      service->Shutdown();
      return Fail(s.ToString());
    }
  }
  // Last step before serving, so no start-up failure can follow it: a failed start must not
  // stop the ublk devices a crashed daemon left (Shutdown would delete them). Clients that
  // connect meanwhile wait in the listen backlog.
  service->Restore();
  std::thread server_thread([&server] { (*server)->Run(); });
  spdlog::info("blksnapd {} ready: control socket {}, state dir {}", BLKSNAP_VERSION, opt.control,
               opt.state_dir);
  ReportReady("");
  systemd::NotifyReady();

  // SIGHUP reopens the log (logrotate) and never tears anything down; SIGTERM/SIGINT stop.
  int sig = 0;
  for (;;) {
    if (sigwait(&signals, &sig) != 0) continue;
    if (sig != SIGHUP) break;
    Status s = ReopenLog();
    if (s.ok()) {
      spdlog::info("SIGHUP: log reopened; devices and snapshots unchanged");
    } else {
      spdlog::error("SIGHUP: {}", s.ToString());
    }
  }
  spdlog::info("signal {} received: shutting down", strsignal(sig));
  systemd::NotifyStopping();
  (*server)->Stop();
  server_thread.join();
  server->reset();
  service->Shutdown();
  if (!opt.pidfile.empty()) ::unlink(opt.pidfile.c_str());
  ::close(lock_fd);
  spdlog::info("blksnapd stopped");
  return 0;
}

}  // namespace
}  // namespace blksnap::daemon

int main(int argc, char** argv) {
  // Request buffers (up to 32 MiB per NBD request, 1 MiB per FUSE request) are allocated and
  // freed by many threads. A fixed mmap threshold keeps glibc from raising it dynamically and
  // parking freed large buffers in per-thread arenas, which made the daemon's resident memory
  // grow with the work done rather than with what it holds (docs/performance.md, memory).
  mallopt(M_MMAP_THRESHOLD, 128 * 1024);
  return blksnap::daemon::Run(argc, argv);
}
