// The NBD server: serves BlockDevices as NBD exports over a Unix socket and optionally TCP.
//
// Protocol, meta contexts (base:allocation, blksnap:cbt), TLS and the threading model are
// described in docs/nbd.md. Thread safety: every method may be called from any thread;
// AddExport/RemoveExport take effect for new connections immediately.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "blksnap/block_device.h"
#include "blksnap/cbt.h"
#include "blksnap/status.h"
#include "util/percent_encode.h"

namespace blksnap::nbd {

struct ServerOptions {
  std::string unix_path;  // listen here when non-empty
  // Mode of the Unix socket (set between bind and listen, so no client can connect before it
  // applies). Connecting needs write permission: 0600 = root's only.
  unsigned unix_mode = 0600;
  // "host:port", empty = off; bind loopback unless a host is given. TCP needs TLS credentials
  // and then every TCP connection must use TLS (FORCEDTLS), loopback included: on a TCP port
  // any local user could otherwise read and write the exports.
  std::string tcp_address;
  // Serve plaintext TCP on a loopback address without TLS credentials (every local user can
  // then reach every export). Beyond loopback TLS stays required.
  bool allow_insecure_tcp = false;
  // TLS (GnuTLS): X.509 with tls_cert + tls_key (tls_ca: verify client certificates against
  // it), and/or PSK with a psktool-format file ("username:hexkey" lines).
  std::string tls_cert, tls_key, tls_ca, tls_psk_file;
  bool tls_required = false;  // FORCEDTLS on the Unix socket too

  // Resource bounds against hostile or broken local clients (docs/nbd.md "Limits").
  // Open connections (handshake and transmission); more are accepted and closed at once...
  int max_connections = 64;
  // ...except that root (SO_PEERCRED uid 0) on the Unix socket may open this many more, so a
  // flood over TCP cannot lock the daemon's own clients (backups, nbd-client) out.
  int root_reserved_connections = 8;
  // Threads serving one connection, its own included (started on demand); 0 = default (8,
  // or BLKSNAP_NBD_WORKERS=1..64).
  int workers_per_connection = 0;
  // Worker threads beyond each connection's own, across the server. With the connection cap
  // this bounds the server's threads: at most 2 + max_connections + root_reserved_connections
  // + max_extra_workers (plus any the BlockDevices start, e.g. io_uring workers).
  int max_extra_workers = 64;
  // Request and reply payload bytes held at once by one connection and by the whole server
  // (at least 32 MiB, the largest request). A request that does not fit waits (backpressure);
  // write payloads are taken and allocated 1 MiB at a time as their bytes arrive.
  uint64_t max_connection_inflight = 64u << 20;
  uint64_t max_total_inflight = 256u << 20;
  // A client must finish the handshake (TLS included) within this time.
  int handshake_timeout_ms = 60000;
  // Once a request has begun (its first byte arrived), its header and payload must arrive
  // within this time, and a reply must make progress within it; else the connection is
  // closed. Between requests a client may stay idle indefinitely. 0 = no limit.
  int request_timeout_ms = 30000;
  // Where refusals and closed connections are reported (one line each, at most one per
  // burst of refused connections); empty = stderr.
  std::function<void(const std::string&)> log;
};

struct ExportOptions {
  std::string description;
  bool read_only = false;
  std::shared_ptr<const CbtSource> cbt;  // null = no blksnap:cbt context
};

// What Server::Stats() reports (for the daemon's status and for tests).
struct ServerStats {
  size_t connections = 0;       // open, in the handshake or transmission phase
  uint64_t refused = 0;         // connections refused at max_connections since start
  uint64_t inflight_bytes = 0;  // payload bytes held by requests now
  uint64_t extra_workers = 0;   // worker threads running beyond each connection's own
  bool insecure_tcp = false;    // a plaintext TCP listener is open (allow_insecure_tcp)
};

class Server {
 public:
  // Binds the listeners and starts accepting. EINVAL for TCP without TLS credentials (unless
  // allow_insecure_tcp on loopback) and for limits out of range.
  static Result<std::unique_ptr<Server>> Start(const ServerOptions& options);
  ~Server();  // Stop()
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // EEXIST if the name is taken, EINVAL for names longer than 4096 bytes.
  Status AddExport(const std::string& name, std::shared_ptr<BlockDevice> device,
                   const ExportOptions& options);
  // Removes the export and closes open connections to it; returns once they are gone.
  // ENOENT if there is no such export.
  Status RemoveExport(const std::string& name);
  // Connections in the transmission phase on this export.
  size_t ConnectionCount(const std::string& name) const;
  // nbd+unix:///NAME?socket=PATH ("" without a Unix listener).
  std::string UnixUri(const std::string& name) const;
  // nbd://host:port/NAME (nbds:// when TLS is required), "" if TCP is off.
  std::string TcpUri(const std::string& name) const;
  ServerStats Stats() const;
  // Stops listening, closes every connection and waits for them; idempotent.
  void Stop();

 private:
  struct State;
  explicit Server(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

using blksnap::PercentEncode;  // util/percent_encode.h: export names in URIs

}  // namespace blksnap::nbd
