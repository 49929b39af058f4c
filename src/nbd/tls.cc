// TLS for NBD_OPT_STARTTLS with GnuTLS: X.509 certificates and/or pre-shared keys.
//
// One TlsContext per server holds the credentials (loaded once at start: cert+key, optional CA
// to verify client certificates, psktool-format PSK file). Upgrade() creates a GnuTLS session
// on the connection's socket in blocking mode, runs the handshake and returns a Transport
// that reads and writes TLS records. GnuTLS allows one thread receiving and one sending on a
// session at once, which is exactly how Session uses a transport (recv lock, send lock).
// Writes are corked so that a header and its payload become as few records as possible.
// The socket is blocking: GNUTLS_E_AGAIN means SO_RCVTIMEO / SO_SNDTIMEO expired (the request
// stall limit), which ends the connection rather than being retried. The TLS handshake is also
// bounded by the server's handshake deadline, which shuts the socket down.
#include <sys/socket.h>

#include <atomic>
#include <cerrno>
#include <string>

#include "nbd/handshake.h"

#ifdef BLKSNAP_HAVE_GNUTLS
#include <gnutls/gnutls.h>
#endif

namespace blksnap::nbd {

#ifdef BLKSNAP_HAVE_GNUTLS
namespace {

Status TlsError(int rc, const std::string& what) {
  return Status::Error(EPROTO, what + ": " + gnutls_strerror(rc));
}

class TlsTransport : public Transport {
 public:
  TlsTransport(std::unique_ptr<Transport> plain, gnutls_session_t session)
      : plain_(std::move(plain)), session_(session) {}
  ~TlsTransport() override {
    if (!shut_.load()) gnutls_bye(session_, GNUTLS_SHUT_WR);  // best-effort close_notify
    gnutls_deinit(session_);
  }

  Result<size_t> ReadSome(std::span<uint8_t> buf) override {
    for (;;) {
      ssize_t n = gnutls_record_recv(session_, buf.data(), buf.size());
      if (n > 0) return static_cast<size_t>(n);
      if (n == 0) return Status::Error(ECONNRESET, "peer closed the TLS session");
      if (n == GNUTLS_E_INTERRUPTED) continue;
      // Blocking socket: E_AGAIN only comes from SO_RCVTIMEO.
      if (n == GNUTLS_E_AGAIN)
        return Status::Error(ETIMEDOUT, "no data within the receive timeout");
      return TlsError(static_cast<int>(n), "gnutls_record_recv");
    }
  }

  Status WriteAll(std::span<const iovec> iov) override {
    gnutls_record_cork(session_);
    for (const iovec& v : iov) {
      const auto* p = static_cast<const uint8_t*>(v.iov_base);
      size_t left = v.iov_len;
      while (left > 0) {
        ssize_t n = gnutls_record_send(session_, p, left);
        if (n == GNUTLS_E_INTERRUPTED) continue;
        if (n < 0) {
          gnutls_record_uncork(session_, 0);
          return TlsError(static_cast<int>(n), "gnutls_record_send");
        }
        p += n;
        left -= static_cast<size_t>(n);
      }
    }
    for (;;) {
      int rc = gnutls_record_uncork(session_, GNUTLS_RECORD_WAIT);
      if (rc >= 0) return Status::Ok();
      if (rc == GNUTLS_E_INTERRUPTED) continue;
      return TlsError(rc, "gnutls_record_uncork");
    }
  }

  void Shutdown() override {
    shut_.store(true);
    plain_->Shutdown();
  }
  int fd() const override { return plain_->fd(); }

 private:
  std::unique_ptr<Transport> plain_;
  gnutls_session_t session_;
  std::atomic<bool> shut_{false};
};

class GnutlsContext : public TlsContext {
 public:
  ~GnutlsContext() override {
    if (x509_) gnutls_certificate_free_credentials(x509_);
    if (psk_) gnutls_psk_free_server_credentials(psk_);
  }

  Status Init(const ServerOptions& o) {
    if (!o.tls_cert.empty() || !o.tls_key.empty()) {
      if (o.tls_cert.empty() || o.tls_key.empty()) {
        return Status::Error(EINVAL, "TLS needs both a certificate and a key");
      }
      int rc = gnutls_certificate_allocate_credentials(&x509_);
      if (rc < 0) return TlsError(rc, "gnutls_certificate_allocate_credentials");
      rc = gnutls_certificate_set_x509_key_file(x509_, o.tls_cert.c_str(), o.tls_key.c_str(),
                                                GNUTLS_X509_FMT_PEM);
      if (rc < 0) return TlsError(rc, "loading " + o.tls_cert + " / " + o.tls_key);
      if (!o.tls_ca.empty()) {
        rc = gnutls_certificate_set_x509_trust_file(x509_, o.tls_ca.c_str(), GNUTLS_X509_FMT_PEM);
        if (rc < 0) return TlsError(rc, "loading CA " + o.tls_ca);
        verify_clients_ = true;
      }
    }
    if (!o.tls_psk_file.empty()) {
      int rc = gnutls_psk_allocate_server_credentials(&psk_);
      if (rc < 0) return TlsError(rc, "gnutls_psk_allocate_server_credentials");
      rc = gnutls_psk_set_server_credentials_file(psk_, o.tls_psk_file.c_str());
      if (rc < 0) return TlsError(rc, "loading PSK file " + o.tls_psk_file);
    }
    priority_ = psk_ ? "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK" : "NORMAL";
    return Status::Ok();
  }

  Result<std::unique_ptr<Transport>> Upgrade(std::unique_ptr<Transport> plain) override {
    gnutls_session_t session = nullptr;
    int rc = gnutls_init(&session, GNUTLS_SERVER);
    if (rc < 0) return TlsError(rc, "gnutls_init");
    // The transport owns the session from here on (deinit in its destructor).
    auto tls = std::make_unique<TlsTransport>(std::move(plain), session);
    rc = gnutls_priority_set_direct(session, priority_.c_str(), nullptr);
    if (rc < 0) return TlsError(rc, "gnutls_priority_set_direct");
    if (x509_) {
      rc = gnutls_credentials_set(session, GNUTLS_CRD_CERTIFICATE, x509_);
      if (rc < 0) return TlsError(rc, "gnutls_credentials_set(certificate)");
      if (verify_clients_) {
        gnutls_certificate_server_set_request(session, GNUTLS_CERT_REQUIRE);
        gnutls_session_set_verify_cert(session, nullptr, 0);
      }
    }
    if (psk_) {
      rc = gnutls_credentials_set(session, GNUTLS_CRD_PSK, psk_);
      if (rc < 0) return TlsError(rc, "gnutls_credentials_set(psk)");
    }
    gnutls_transport_set_int(session, tls->fd());
    gnutls_handshake_set_timeout(session, 30000);
    do {
      rc = gnutls_handshake(session);
    } while (rc < 0 && !gnutls_error_is_fatal(rc) && rc != GNUTLS_E_AGAIN);
    if (rc < 0) {
      tls->Shutdown();  // no close_notify after a failed handshake
      return TlsError(rc, "TLS handshake");
    }
    return std::unique_ptr<Transport>(std::move(tls));
  }

 private:
  gnutls_certificate_credentials_t x509_ = nullptr;
  gnutls_psk_server_credentials_t psk_ = nullptr;
  bool verify_clients_ = false;
  std::string priority_;
};

}  // namespace

Result<std::unique_ptr<TlsContext>> MakeTlsContext(const ServerOptions& options) {
  auto ctx = std::make_unique<GnutlsContext>();
  BLKSNAP_RETURN_IF_ERROR(ctx->Init(options));
  return std::unique_ptr<TlsContext>(std::move(ctx));
}

#else

Result<std::unique_ptr<TlsContext>> MakeTlsContext(const ServerOptions&) {
  return Status::Error(ENOTSUP, "built without GnuTLS");
}

#endif

}  // namespace blksnap::nbd
