// NBD protocol helpers: errno mapping, request-header decoding, names for logs.
//
// ErrnoToNbdError is the single place where device errors become wire errors; the spec allows
// only EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP and ESHUTDOWN, so everything else
// is folded into the closest of these (unknown device errors become EIO).
#include "nbd/protocol.h"

#include <cerrno>

namespace blksnap::nbd {

uint32_t ErrnoToNbdError(int errnum) {
  switch (errnum) {
    case 0:
      return 0;
    case EPERM:
    case EACCES:
    case EROFS:
      return kNbdEperm;
    case ENOMEM:
      return kNbdEnomem;
    case EINVAL:
    case ERANGE:
    case ENXIO:
      return kNbdEinval;
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
      return kNbdEnospc;
    case EOVERFLOW:
      return kNbdEoverflow;
    case ENOTSUP:
#if EOPNOTSUPP != ENOTSUP
    case EOPNOTSUPP:
#endif
      return kNbdEnotsup;
    case ESHUTDOWN:
      return kNbdEshutdown;
    default:
      return kNbdEio;
  }
}

bool ParseRequestHeader(std::span<const uint8_t, kRequestHeaderSize> bytes, Request* out) {
  const uint8_t* p = bytes.data();
  if (GetBe32(p) != kRequestMagic) return false;
  out->flags = GetBe16(p + 4);
  out->type = GetBe16(p + 6);
  out->cookie = GetBe64(p + 8);
  out->offset = GetBe64(p + 16);
  out->length = GetBe32(p + 24);
  return true;
}

const char* OptionName(uint32_t option) {
  switch (option) {
    case kOptExportName:
      return "EXPORT_NAME";
    case kOptAbort:
      return "ABORT";
    case kOptList:
      return "LIST";
    case kOptStartTls:
      return "STARTTLS";
    case kOptInfo:
      return "INFO";
    case kOptGo:
      return "GO";
    case kOptStructuredReply:
      return "STRUCTURED_REPLY";
    case kOptListMetaContext:
      return "LIST_META_CONTEXT";
    case kOptSetMetaContext:
      return "SET_META_CONTEXT";
    default:
      return "unknown";
  }
}

const char* CommandName(uint16_t type) {
  switch (type) {
    case kCmdRead:
      return "READ";
    case kCmdWrite:
      return "WRITE";
    case kCmdDisc:
      return "DISC";
    case kCmdFlush:
      return "FLUSH";
    case kCmdTrim:
      return "TRIM";
    case kCmdCache:
      return "CACHE";
    case kCmdWriteZeroes:
      return "WRITE_ZEROES";
    case kCmdBlockStatus:
      return "BLOCK_STATUS";
    default:
      return "unknown";
  }
}

}  // namespace blksnap::nbd
