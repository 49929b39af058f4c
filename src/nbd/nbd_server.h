// The NBD server: serves BlockDevices as NBD exports over a Unix socket and optionally TCP.
//
// Protocol, meta contexts (base:allocation, blksnap:cbt), TLS and the threading model are
// described in docs/nbd.md. Thread safety: every method may be called from any thread;
// AddExport/RemoveExport take effect for new connections immediately.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "blksnap/block_device.h"
#include "blksnap/cbt.h"
#include "blksnap/status.h"

namespace blksnap::nbd {

struct ServerOptions {
  std::string unix_path;    // listen here when non-empty
  std::string tcp_address;  // "host:port", empty = off; bind loopback unless a host is given
  // TLS (GnuTLS): X.509 with tls_cert + tls_key (tls_ca: verify client certificates against
  // it), and/or PSK with a psktool-format file ("username:hexkey" lines).
  std::string tls_cert, tls_key, tls_ca, tls_psk_file;
  bool tls_required = false;  // FORCEDTLS: every option but STARTTLS/ABORT needs TLS first
};

struct ExportOptions {
  std::string description;
  bool read_only = false;
  std::shared_ptr<const CbtSource> cbt;  // null = no blksnap:cbt context
};

class Server {
 public:
  // Binds the listeners and starts accepting. TCP on a non-loopback address requires TLS
  // credentials (and then every TCP connection must use TLS).
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
  // Stops listening, closes every connection and waits for them; idempotent.
  void Stop();

 private:
  struct State;
  explicit Server(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

// Percent-encodes everything but RFC 3986 unreserved characters and the bytes in `keep`.
std::string PercentEncode(std::string_view s, std::string_view keep = "");

}  // namespace blksnap::nbd
