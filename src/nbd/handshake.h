// The NBD handshake (fixed newstyle option haggling), independent of sockets.
//
// Handshake::Run drives one connection from the server greeting to the transmission phase
// (or to the end of the connection) over a Transport, asking a HandshakeHost about exports and
// TLS. Tests and the fuzzer feed it bytes through a MemoryTransport.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "blksnap/block_device.h"
#include "blksnap/cbt.h"
#include "nbd/nbd_server.h"
#include "nbd/transport.h"

namespace blksnap::nbd {

// One export as the protocol code sees it.
struct ExportEntry {
  std::string name;
  std::shared_ptr<BlockDevice> device;
  ExportOptions options;
  // Server bookkeeping, guarded by the server's State::mu (not GUARDED_BY: the analysis
  // cannot name another object's mutex; nbd_server.cc touches them only under it).
  size_t connections = 0;
  bool removed = false;

  bool read_only() const { return options.read_only || device->capabilities().read_only; }
};

// Transmission flags for an export, given whether structured replies were negotiated.
uint16_t TransmissionFlags(const ExportEntry& e, bool structured);

// Upgrades a plain transport to TLS (tls.cc); the server owns one per configuration.
class TlsContext {
 public:
  virtual ~TlsContext() = default;
  // Runs the TLS handshake over `plain` (which the result takes over).
  virtual Result<std::unique_ptr<Transport>> Upgrade(std::unique_ptr<Transport> plain) = 0;
};

// GnuTLS-backed context from the server options; ENOTSUP when built without GnuTLS.
Result<std::unique_ptr<TlsContext>> MakeTlsContext(const ServerOptions& options);

class HandshakeHost {
 public:
  virtual ~HandshakeHost() = default;
  virtual std::shared_ptr<ExportEntry> FindExport(std::string_view name) = 0;
  virtual std::vector<std::shared_ptr<ExportEntry>> ListExports() = 0;
  virtual TlsContext* tls() = 0;  // null: TLS not offered (NOTLS mode)
  virtual bool tls_forced() = 0;  // FORCEDTLS on this connection
};

// What the handshake agreed on.
struct Negotiated {
  std::shared_ptr<ExportEntry> entry;
  bool structured = false;
  bool base_allocation = false;  // meta context selected
  bool cbt = false;
  uint16_t tx_flags = 0;
};

class Handshake {
 public:
  Handshake(HandshakeHost& host, std::unique_ptr<Transport>& transport, InputBuffer& in)
      : host_(host), transport_(transport), in_(in) {}

  // OK with the chosen export once the transmission phase begins; an error when the client
  // aborted (ECONNABORTED), disconnected, broke the protocol or asked for an unknown export
  // with NBD_OPT_EXPORT_NAME. STARTTLS replaces `transport` with the TLS transport.
  Result<Negotiated> Run();

 private:
  Status SendReply(uint32_t option, uint32_t type, std::span<const uint8_t> payload = {});
  Status SendError(uint32_t option, uint32_t type, std::string_view message);
  Status HandleList(uint32_t option, std::span<const uint8_t> data);
  Status HandleInfoGo(uint32_t option, std::span<const uint8_t> data, bool* entered);
  Status HandleMetaContext(uint32_t option, std::span<const uint8_t> data);
  Status HandleStartTls(std::span<const uint8_t> data);

  HandshakeHost& host_;
  std::unique_ptr<Transport>& transport_;
  InputBuffer& in_;
  bool no_zeroes_ = false;
  bool tls_active_ = false;
  bool structured_ = false;
  // The last NBD_OPT_SET_META_CONTEXT: which export it named and what it selected.
  std::string meta_export_;
  bool meta_base_ = false;
  bool meta_cbt_ = false;
  Negotiated result_;
};

}  // namespace blksnap::nbd
