// NBD wire constants and big-endian encoding helpers.
//
// The one constants header for the NBD protocol as blksnap speaks it (docs/nbd.md; the protocol
// itself is doc/proto.md of NetworkBlockDevice/nbd). Everything on the wire is big-endian.
#pragma once

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace blksnap::nbd {

// Handshake.
inline constexpr uint64_t kNbdMagic = 0x4e42444d41474943ull;  // "NBDMAGIC"
inline constexpr uint64_t kIHaveOpt = 0x49484156454F5054ull;  // "IHAVEOPT"
inline constexpr uint64_t kOptReplyMagic = 0x3e889045565a9ull;
inline constexpr uint16_t kFlagFixedNewstyle = 1u << 0;
inline constexpr uint16_t kFlagNoZeroes = 1u << 1;
inline constexpr uint32_t kClientFlagFixedNewstyle = 1u << 0;
inline constexpr uint32_t kClientFlagNoZeroes = 1u << 1;

// Options.
inline constexpr uint32_t kOptExportName = 1;
inline constexpr uint32_t kOptAbort = 2;
inline constexpr uint32_t kOptList = 3;
inline constexpr uint32_t kOptStartTls = 5;
inline constexpr uint32_t kOptInfo = 6;
inline constexpr uint32_t kOptGo = 7;
inline constexpr uint32_t kOptStructuredReply = 8;
inline constexpr uint32_t kOptListMetaContext = 9;
inline constexpr uint32_t kOptSetMetaContext = 10;

// Option replies.
inline constexpr uint32_t kRepAck = 1;
inline constexpr uint32_t kRepServer = 2;
inline constexpr uint32_t kRepInfo = 3;
inline constexpr uint32_t kRepMetaContext = 4;
inline constexpr uint32_t kRepErrUnsup = 0x80000001u;
inline constexpr uint32_t kRepErrPolicy = 0x80000002u;
inline constexpr uint32_t kRepErrInvalid = 0x80000003u;
inline constexpr uint32_t kRepErrPlatform = 0x80000004u;
inline constexpr uint32_t kRepErrTlsReqd = 0x80000005u;
inline constexpr uint32_t kRepErrUnknown = 0x80000006u;
inline constexpr uint32_t kRepErrShutdown = 0x80000007u;
inline constexpr uint32_t kRepErrTooBig = 0x80000009u;

// NBD_INFO_* types.
inline constexpr uint16_t kInfoExport = 0;
inline constexpr uint16_t kInfoName = 1;
inline constexpr uint16_t kInfoDescription = 2;
inline constexpr uint16_t kInfoBlockSize = 3;

// Transmission flags.
inline constexpr uint16_t kTxHasFlags = 1u << 0;
inline constexpr uint16_t kTxReadOnly = 1u << 1;
inline constexpr uint16_t kTxSendFlush = 1u << 2;
inline constexpr uint16_t kTxSendFua = 1u << 3;
inline constexpr uint16_t kTxRotational = 1u << 4;
inline constexpr uint16_t kTxSendTrim = 1u << 5;
inline constexpr uint16_t kTxSendWriteZeroes = 1u << 6;
inline constexpr uint16_t kTxSendDf = 1u << 7;
inline constexpr uint16_t kTxCanMultiConn = 1u << 8;
inline constexpr uint16_t kTxSendCache = 1u << 10;
inline constexpr uint16_t kTxSendFastZero = 1u << 11;

// Requests.
inline constexpr uint32_t kRequestMagic = 0x25609513u;
inline constexpr size_t kRequestHeaderSize = 28;
inline constexpr uint16_t kCmdRead = 0;
inline constexpr uint16_t kCmdWrite = 1;
inline constexpr uint16_t kCmdDisc = 2;
inline constexpr uint16_t kCmdFlush = 3;
inline constexpr uint16_t kCmdTrim = 4;
inline constexpr uint16_t kCmdCache = 5;
inline constexpr uint16_t kCmdWriteZeroes = 6;
inline constexpr uint16_t kCmdBlockStatus = 7;
inline constexpr uint16_t kCmdFlagFua = 1u << 0;
inline constexpr uint16_t kCmdFlagNoHole = 1u << 1;
inline constexpr uint16_t kCmdFlagDf = 1u << 2;
inline constexpr uint16_t kCmdFlagReqOne = 1u << 3;
inline constexpr uint16_t kCmdFlagFastZero = 1u << 4;

// Replies.
inline constexpr uint32_t kSimpleReplyMagic = 0x67446698u;
inline constexpr uint32_t kStructuredReplyMagic = 0x668e33efu;
inline constexpr size_t kSimpleReplyHeaderSize = 16;
inline constexpr size_t kStructuredReplyHeaderSize = 20;
inline constexpr uint16_t kReplyFlagDone = 1u << 0;
inline constexpr uint16_t kReplyTypeNone = 0;
inline constexpr uint16_t kReplyTypeOffsetData = 1;
inline constexpr uint16_t kReplyTypeOffsetHole = 2;
inline constexpr uint16_t kReplyTypeBlockStatus = 5;
inline constexpr uint16_t kReplyTypeError = 0x8001;
inline constexpr uint16_t kReplyTypeErrorOffset = 0x8002;

// The only error values allowed on the wire.
inline constexpr uint32_t kNbdEperm = 1;
inline constexpr uint32_t kNbdEio = 5;
inline constexpr uint32_t kNbdEnomem = 12;
inline constexpr uint32_t kNbdEinval = 22;
inline constexpr uint32_t kNbdEnospc = 28;
inline constexpr uint32_t kNbdEoverflow = 75;
inline constexpr uint32_t kNbdEnotsup = 95;
inline constexpr uint32_t kNbdEshutdown = 108;

// Size constraints we advertise (NBD_INFO_BLOCK_SIZE).
inline constexpr uint32_t kMinBlockSize = 1;
inline constexpr uint32_t kPreferredBlockSize = 4096;
inline constexpr uint32_t kMaxPayload = 32u << 20;

// Limits on what a client may make us buffer during the handshake.
inline constexpr uint32_t kMaxOptionLength = 64u << 10;  // larger options: ERR_TOO_BIG
inline constexpr uint32_t kMaxStringLength = 4096;
// Descriptors per block-status chunk (the spec allows up to 2^20; fewer is always legal, the
// reply then covers a prefix). 2^16 keeps a chunk at 512 KiB, which bounds what one request
// can make a worker build (see kBlockStatusReserve in session.cc).
inline constexpr size_t kMaxExtentsPerChunk = 1u << 16;

// Meta contexts.
inline constexpr std::string_view kContextBaseAllocation = "base:allocation";
inline constexpr std::string_view kContextBlksnapCbt = "blksnap:cbt";
inline constexpr uint32_t kContextIdBaseAllocation = 1;
inline constexpr uint32_t kContextIdBlksnapCbt = 2;

// Maps a positive errno to the NBD error value sent on the wire (never anything else).
uint32_t ErrnoToNbdError(int errnum);

// Human-readable names for logs.
const char* OptionName(uint32_t option);
const char* CommandName(uint16_t type);

// A request header as it arrived.
struct Request {
  uint16_t flags = 0;
  uint16_t type = 0;
  uint64_t cookie = 0;
  uint64_t offset = 0;
  uint32_t length = 0;
};

// Decodes a 28-byte request header; false when the magic is wrong.
bool ParseRequestHeader(std::span<const uint8_t, kRequestHeaderSize> bytes, Request* out);

inline void PutBe16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v >> 8);
  p[1] = static_cast<uint8_t>(v);
}
inline void PutBe32(uint8_t* p, uint32_t v) {
  for (int i = 3; i >= 0; --i, v >>= 8) p[i] = static_cast<uint8_t>(v);
}
inline void PutBe64(uint8_t* p, uint64_t v) {
  for (int i = 7; i >= 0; --i, v >>= 8) p[i] = static_cast<uint8_t>(v);
}
inline uint16_t GetBe16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }
inline uint32_t GetBe32(const uint8_t* p) {
  return uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | uint32_t{p[2]} << 8 | p[3];
}
inline uint64_t GetBe64(const uint8_t* p) { return uint64_t{GetBe32(p)} << 32 | GetBe32(p + 4); }

// Appends big-endian values to a byte vector (handshake replies, block-status payloads).
class WireWriter {
 public:
  void U16(uint16_t v) {
    Grow(2, [&](uint8_t* p) { PutBe16(p, v); });
  }
  void U32(uint32_t v) {
    Grow(4, [&](uint8_t* p) { PutBe32(p, v); });
  }
  void U64(uint64_t v) {
    Grow(8, [&](uint8_t* p) { PutBe64(p, v); });
  }
  void Bytes(std::string_view s) { bytes_.insert(bytes_.end(), s.begin(), s.end()); }
  void Zeroes(size_t n) { bytes_.insert(bytes_.end(), n, 0); }
  std::vector<uint8_t>& bytes() { return bytes_; }
  size_t size() const { return bytes_.size(); }

 private:
  template <typename F>
  void Grow(size_t n, F put) {
    bytes_.resize(bytes_.size() + n);
    put(bytes_.data() + bytes_.size() - n);
  }
  std::vector<uint8_t> bytes_;
};

// Reads big-endian values from an option payload; every getter fails (returns false) instead
// of reading past the end.
class WireReader {
 public:
  explicit WireReader(std::span<const uint8_t> bytes) : bytes_(bytes) {}
  bool U16(uint16_t* v) {
    return Take(2, [&](const uint8_t* p) { *v = GetBe16(p); });
  }
  bool U32(uint32_t* v) {
    return Take(4, [&](const uint8_t* p) { *v = GetBe32(p); });
  }
  bool String(size_t n, std::string* s) {
    return Take(n, [&](const uint8_t* p) { s->assign(reinterpret_cast<const char*>(p), n); });
  }
  size_t remaining() const { return bytes_.size() - pos_; }

 private:
  template <typename F>
  bool Take(size_t n, F get) {
    if (n > remaining()) return false;
    get(bytes_.data() + pos_);
    pos_ += n;
    return true;
  }
  std::span<const uint8_t> bytes_;
  size_t pos_ = 0;
};

}  // namespace blksnap::nbd
