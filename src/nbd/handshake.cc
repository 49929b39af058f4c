// Fixed newstyle NBD handshake (see handshake.h and docs/nbd.md).
//
// States: greeting sent -> client flags read -> option loop -> transmission (GO/EXPORT_NAME)
// or end (ABORT, disconnect, protocol violation). Every option's payload is read completely
// (at most kMaxOptionLength bytes; larger ones are skipped and answered ERR_TOO_BIG) before it
// is parsed with WireReader, which never reads past the payload, so a malformed option can only
// produce ERR_INVALID. Options we do not know get ERR_UNSUP and negotiation continues.
// TLS: NOTLS (no context: STARTTLS -> ERR_UNSUP), SELECTIVETLS (context, not forced: no export
// is TLS-only) or FORCEDTLS (every option but STARTTLS/ABORT -> ERR_TLS_REQD until TLS is up;
// EXPORT_NAME without TLS ends the connection). STARTTLS forgets structured replies and meta
// contexts, as the spec requires.
#include "nbd/handshake.h"

#include <array>
#include <cerrno>

#include "nbd/protocol.h"

namespace blksnap::nbd {
namespace {

// Options we refuse to buffer but can still skip over; beyond this we hang up.
constexpr uint64_t kMaxSkippableOption = 16u << 20;

}  // namespace

uint16_t TransmissionFlags(const ExportEntry& e, bool structured) {
  const DeviceCapabilities caps = e.device->capabilities();
  uint16_t f = kTxHasFlags | kTxSendCache;
  if (e.read_only()) {
    f |= kTxReadOnly;
  } else {
    if (caps.trim) f |= kTxSendTrim;
    f |= kTxSendWriteZeroes | kTxSendFastZero;  // emulated when the device lacks them
  }
  if (caps.flush || caps.fua) f |= kTxSendFlush | kTxSendFua;
  if (structured) f |= kTxSendDf;
  if (caps.multi_conn_safe) f |= kTxCanMultiConn;
  return f;
}

Status Handshake::SendReply(uint32_t option, uint32_t type, std::span<const uint8_t> payload) {
  std::array<uint8_t, 20> hdr;
  PutBe64(hdr.data(), kOptReplyMagic);
  PutBe32(hdr.data() + 8, option);
  PutBe32(hdr.data() + 12, type);
  PutBe32(hdr.data() + 16, static_cast<uint32_t>(payload.size()));
  iovec iov[2] = {{hdr.data(), hdr.size()}, {const_cast<uint8_t*>(payload.data()), payload.size()}};
  return transport_->WriteAll(std::span<const iovec>(iov, payload.empty() ? 1 : 2));
}

Status Handshake::SendError(uint32_t option, uint32_t type, std::string_view message) {
  return SendReply(
      option, type,
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(message.data()), message.size()));
}

Status Handshake::HandleList(uint32_t option, std::span<const uint8_t> data) {
  if (!data.empty()) return SendError(option, kRepErrInvalid, "NBD_OPT_LIST takes no data");
  for (const auto& e : host_.ListExports()) {
    WireWriter w;
    w.U32(static_cast<uint32_t>(e->name.size()));
    w.Bytes(e->name);
    w.Bytes(std::string_view(e->options.description).substr(0, kMaxStringLength));
    BLKSNAP_RETURN_IF_ERROR(SendReply(option, kRepServer, w.bytes()));
  }
  return SendReply(option, kRepAck);
}

Status Handshake::HandleInfoGo(uint32_t option, std::span<const uint8_t> data, bool* entered) {
  WireReader r(data);
  uint32_t name_len = 0;
  std::string name;
  uint16_t n_requests = 0;
  if (!r.U32(&name_len) || name_len > kMaxStringLength || !r.String(name_len, &name) ||
      !r.U16(&n_requests) || r.remaining() != size_t{n_requests} * 2) {
    return SendError(option, kRepErrInvalid, "malformed NBD_OPT_INFO/GO");
  }
  bool want_name = false, want_description = false;
  for (uint16_t i = 0; i < n_requests; ++i) {
    uint16_t info = 0;
    if (!r.U16(&info)) return SendError(option, kRepErrInvalid, "malformed info request");
    if (info == kInfoName) want_name = true;
    if (info == kInfoDescription) want_description = true;
  }
  std::shared_ptr<ExportEntry> e = host_.FindExport(name);
  if (!e) return SendError(option, kRepErrUnknown, "no such export");

  const uint16_t flags = TransmissionFlags(*e, structured_);
  {
    WireWriter w;
    w.U16(kInfoExport);
    w.U64(e->device->size());
    w.U16(flags);
    BLKSNAP_RETURN_IF_ERROR(SendReply(option, kRepInfo, w.bytes()));
  }
  if (want_name) {
    WireWriter w;
    w.U16(kInfoName);
    w.Bytes(e->name);
    BLKSNAP_RETURN_IF_ERROR(SendReply(option, kRepInfo, w.bytes()));
  }
  if (want_description && !e->options.description.empty()) {
    WireWriter w;
    w.U16(kInfoDescription);
    w.Bytes(std::string_view(e->options.description).substr(0, kMaxStringLength));
    BLKSNAP_RETURN_IF_ERROR(SendReply(option, kRepInfo, w.bytes()));
  }
  {
    // Sent whether asked or not: our constraints are the defaults, so this is only a hint.
    WireWriter w;
    w.U16(kInfoBlockSize);
    w.U32(kMinBlockSize);
    w.U32(kPreferredBlockSize);
    w.U32(kMaxPayload);
    BLKSNAP_RETURN_IF_ERROR(SendReply(option, kRepInfo, w.bytes()));
  }
  BLKSNAP_RETURN_IF_ERROR(SendReply(option, kRepAck));
  if (option == kOptGo) {
    result_.entry = std::move(e);
    result_.structured = structured_;
    const bool same = meta_export_ == name;
    result_.base_allocation = structured_ && same && meta_base_;
    result_.cbt = structured_ && same && meta_cbt_ && result_.entry->options.cbt != nullptr;
    result_.tx_flags = flags;
    *entered = true;
  }
  return Status::Ok();
}

Status Handshake::HandleMetaContext(uint32_t option, std::span<const uint8_t> data) {
  const bool set = option == kOptSetMetaContext;
  if (set) {
    // Replaces the previous selection even when it fails.
    meta_export_.clear();
    meta_base_ = meta_cbt_ = false;
    if (!structured_) {
      return SendError(option, kRepErrInvalid, "negotiate structured replies first");
    }
  }
  WireReader r(data);
  uint32_t name_len = 0, n_queries = 0;
  std::string name;
  if (!r.U32(&name_len) || name_len > kMaxStringLength || !r.String(name_len, &name) ||
      !r.U32(&n_queries)) {
    return SendError(option, kRepErrInvalid, "malformed meta context request");
  }
  std::vector<std::string> queries;
  for (uint32_t i = 0; i < n_queries; ++i) {
    uint32_t len = 0;
    std::string q;
    if (!r.U32(&len) || len > kMaxStringLength || !r.String(len, &q)) {
      return SendError(option, kRepErrInvalid, "malformed meta context query");
    }
    queries.push_back(std::move(q));
  }
  if (r.remaining() != 0) return SendError(option, kRepErrInvalid, "trailing bytes");
  std::shared_ptr<ExportEntry> e = host_.FindExport(name);
  if (!e) return SendError(option, kRepErrUnknown, "no such export");

  const bool has_cbt = e->options.cbt != nullptr;
  bool base = false, cbt = false;
  if (queries.empty()) {
    base = !set;
    cbt = !set && has_cbt;
  }
  for (const std::string& q : queries) {
    if (q == kContextBaseAllocation || (!set && q == "base:")) base = true;
    if (has_cbt && (q == kContextBlksnapCbt || (!set && q == "blksnap:"))) cbt = true;
  }
  auto send_context = [&](uint32_t id, std::string_view ctx) {
    WireWriter w;
    w.U32(set ? id : 0);
    w.Bytes(ctx);
    return SendReply(option, kRepMetaContext, w.bytes());
  };
  if (base) BLKSNAP_RETURN_IF_ERROR(send_context(kContextIdBaseAllocation, kContextBaseAllocation));
  if (cbt) BLKSNAP_RETURN_IF_ERROR(send_context(kContextIdBlksnapCbt, kContextBlksnapCbt));
  if (set) {
    meta_export_ = name;
    meta_base_ = base;
    meta_cbt_ = cbt;
  }
  return SendReply(option, kRepAck);
}

Status Handshake::HandleStartTls(std::span<const uint8_t> data) {
  if (!data.empty()) return SendError(kOptStartTls, kRepErrInvalid, "STARTTLS takes no data");
  if (tls_active_) return SendError(kOptStartTls, kRepErrInvalid, "TLS is already active");
  TlsContext* tls = host_.tls();
  if (!tls) return SendError(kOptStartTls, kRepErrUnsup, "TLS is not configured");
  BLKSNAP_RETURN_IF_ERROR(SendReply(kOptStartTls, kRepAck));
  if (in_.buffered() != 0) {
    // The client must wait for our ACK before starting TLS; plaintext after STARTTLS is an
    // injection attempt.
    return Status::Error(EPROTO, "data after NBD_OPT_STARTTLS");
  }
  BLKSNAP_ASSIGN_OR_RETURN(transport_, tls->Upgrade(std::move(transport_)));
  tls_active_ = true;
  structured_ = false;
  meta_export_.clear();
  meta_base_ = meta_cbt_ = false;
  return Status::Ok();
}

Result<Negotiated> Handshake::Run() {
  {
    WireWriter w;
    w.U64(kNbdMagic);
    w.U64(kIHaveOpt);
    w.U16(kFlagFixedNewstyle | kFlagNoZeroes);
    iovec iov{w.bytes().data(), w.size()};
    BLKSNAP_RETURN_IF_ERROR(transport_->WriteAll(std::span<const iovec>(&iov, 1)));
  }
  uint8_t cflags_bytes[4];
  BLKSNAP_RETURN_IF_ERROR(in_.ReadExact(*transport_, cflags_bytes));
  const uint32_t cflags = GetBe32(cflags_bytes);
  if (cflags & ~(kClientFlagFixedNewstyle | kClientFlagNoZeroes)) {
    return Status::Error(EPROTO, "unknown client flags");
  }
  no_zeroes_ = cflags & kClientFlagNoZeroes;

  std::vector<uint8_t> data;
  for (;;) {
    uint8_t hdr[16];
    BLKSNAP_RETURN_IF_ERROR(in_.ReadExact(*transport_, hdr));
    if (GetBe64(hdr) != kIHaveOpt) return Status::Error(EPROTO, "bad option magic");
    const uint32_t option = GetBe32(hdr + 8);
    const uint32_t len = GetBe32(hdr + 12);
    if (len > kMaxOptionLength) {
      if (option == kOptExportName || len > kMaxSkippableOption) {
        return Status::Error(EPROTO, "option too large");
      }
      BLKSNAP_RETURN_IF_ERROR(in_.Skip(*transport_, len));
      BLKSNAP_RETURN_IF_ERROR(SendError(option, kRepErrTooBig, "option too large"));
      continue;
    }
    data.resize(len);
    BLKSNAP_RETURN_IF_ERROR(in_.ReadExact(*transport_, data));

    if (option == kOptAbort) {
      SendReply(option, kRepAck).IgnoreError();  // the client may already be gone
      return Status::Error(ECONNABORTED, "client aborted the handshake");
    }
    if (host_.tls_forced() && !tls_active_ && option != kOptStartTls) {
      if (option == kOptExportName) return Status::Error(EPERM, "TLS required");
      BLKSNAP_RETURN_IF_ERROR(SendError(option, kRepErrTlsReqd, "TLS required"));
      continue;
    }
    bool entered = false;
    switch (option) {
      case kOptExportName: {
        if (len > kMaxStringLength) return Status::Error(EPROTO, "export name too long");
        std::string name(data.begin(), data.end());
        std::shared_ptr<ExportEntry> e = host_.FindExport(name);
        if (!e) return Status::Error(ENOENT, "unknown export");
        const uint16_t flags = TransmissionFlags(*e, structured_);
        WireWriter w;
        w.U64(e->device->size());
        w.U16(flags);
        if (!no_zeroes_) w.Zeroes(124);
        iovec iov{w.bytes().data(), w.size()};
        BLKSNAP_RETURN_IF_ERROR(transport_->WriteAll(std::span<const iovec>(&iov, 1)));
        result_.entry = std::move(e);
        result_.structured = structured_;
        const bool same = meta_export_ == name;
        result_.base_allocation = structured_ && same && meta_base_;
        result_.cbt = structured_ && same && meta_cbt_ && result_.entry->options.cbt != nullptr;
        result_.tx_flags = flags;
        return std::move(result_);
      }
      case kOptList:
        BLKSNAP_RETURN_IF_ERROR(HandleList(option, data));
        break;
      case kOptStartTls:
        BLKSNAP_RETURN_IF_ERROR(HandleStartTls(data));
        break;
      case kOptInfo:
      case kOptGo:
        BLKSNAP_RETURN_IF_ERROR(HandleInfoGo(option, data, &entered));
        if (entered) return std::move(result_);
        break;
      case kOptStructuredReply:
        if (!data.empty()) {
          BLKSNAP_RETURN_IF_ERROR(SendError(option, kRepErrInvalid, "takes no data"));
        } else {
          structured_ = true;
          BLKSNAP_RETURN_IF_ERROR(SendReply(option, kRepAck));
        }
        break;
      case kOptListMetaContext:
      case kOptSetMetaContext:
        BLKSNAP_RETURN_IF_ERROR(HandleMetaContext(option, data));
        break;
      default:
        BLKSNAP_RETURN_IF_ERROR(SendError(option, kRepErrUnsup, "unsupported option"));
        break;
    }
  }
}

}  // namespace blksnap::nbd
