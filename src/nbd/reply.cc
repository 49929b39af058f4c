// Reply encoding (see reply.h): byte layouts of doc/proto.md's simple and structured replies.
//
// Layouts (big-endian): simple reply = magic(4) error(4) cookie(8); chunk header = magic(4)
// flags(2) type(2) cookie(8) length(4); OFFSET_DATA payload = offset(8) data; OFFSET_HOLE =
// offset(8) size(4); BLOCK_STATUS = context id(4) then per descriptor length(4) flags(4);
// ERROR = error(4) message length(2) message. No state, no locks.
#include "nbd/reply.h"

#include <algorithm>

namespace blksnap::nbd {

void PutSimpleReplyHeader(uint8_t* p, uint32_t error, uint64_t cookie) {
  PutBe32(p, kSimpleReplyMagic);
  PutBe32(p + 4, error);
  PutBe64(p + 8, cookie);
}

void PutChunkHeader(uint8_t* p, uint16_t flags, uint16_t type, uint64_t cookie, uint32_t len) {
  PutBe32(p, kStructuredReplyMagic);
  PutBe16(p + 4, flags);
  PutBe16(p + 6, type);
  PutBe64(p + 8, cookie);
  PutBe32(p + 16, len);
}

void PutErrorChunkHeader(uint8_t* p, uint64_t cookie, uint32_t error, size_t message_len) {
  PutChunkHeader(p, kReplyFlagDone, kReplyTypeError, cookie,
                 static_cast<uint32_t>(6 + message_len));
  PutBe32(p + kStructuredReplyHeaderSize, error);
  PutBe16(p + kStructuredReplyHeaderSize + 4, static_cast<uint16_t>(message_len));
}

void ReadPiecesFromExtents(std::span<const Extent> extents, uint64_t offset, uint32_t length,
                           std::vector<ReadPiece>* pieces) {
  pieces->clear();
  const uint64_t end_of_read = offset + length;
  uint64_t pos = offset;
  for (const Extent& e : extents) {
    if (pos >= end_of_read) break;
    if (e.offset > pos || e.offset + e.length <= pos) break;
    const uint64_t end = std::min(e.offset + e.length, end_of_read);
    const bool hole = e.flags & kExtentZero;
    if (!pieces->empty() && pieces->back().hole == hole) {
      pieces->back().length += static_cast<uint32_t>(end - pos);
    } else {
      pieces->push_back(ReadPiece{pos, static_cast<uint32_t>(end - pos), hole});
    }
    pos = end;
  }
  if (!pieces->empty() && pos < end_of_read) {
    const uint32_t rest = static_cast<uint32_t>(end_of_read - pos);
    if (!pieces->back().hole) {
      pieces->back().length += rest;
    } else {
      pieces->push_back(ReadPiece{pos, rest, false});
    }
  }
}

void EncodeReadChunks(std::span<const ReadPiece> pieces, uint64_t cookie, uint64_t offset,
                      uint8_t* data, std::vector<uint8_t>* headers, std::vector<iovec>* iov) {
  constexpr size_t kHdr = kStructuredReplyHeaderSize;
  headers->resize(pieces.size() * kReadChunkHeaderSpace);
  iov->clear();
  for (size_t i = 0; i < pieces.size(); ++i) {
    const ReadPiece& p = pieces[i];
    uint8_t* h = headers->data() + i * kReadChunkHeaderSpace;
    const uint16_t flags = i + 1 == pieces.size() ? kReplyFlagDone : 0;
    PutBe64(h + kHdr, p.offset);
    if (p.hole) {
      PutChunkHeader(h, flags, kReplyTypeOffsetHole, cookie, 12);
      PutBe32(h + kHdr + 8, p.length);
      iov->push_back({h, kHdr + 12});
    } else {
      PutChunkHeader(h, flags, kReplyTypeOffsetData, cookie, 8 + p.length);
      iov->push_back({h, kHdr + 8});
      iov->push_back({data + (p.offset - offset), p.length});
    }
  }
}

size_t AppendBlockStatusChunk(std::vector<uint8_t>* out, uint64_t cookie, uint32_t context_id,
                              std::span<const WireExtent> extents) {
  const size_t start = out->size();
  const uint32_t payload = static_cast<uint32_t>(4 + 8 * extents.size());
  out->resize(start + kStructuredReplyHeaderSize + payload);
  uint8_t* h = out->data() + start;
  PutChunkHeader(h, 0, kReplyTypeBlockStatus, cookie, payload);
  PutBe32(h + kStructuredReplyHeaderSize, context_id);
  uint8_t* d = h + kStructuredReplyHeaderSize + 4;
  for (const WireExtent& e : extents) {
    PutBe32(d, e.length);
    PutBe32(d + 4, e.flags);
    d += 8;
  }
  return start;
}

void MarkChunkDone(uint8_t* chunk) { PutBe16(chunk + 4, kReplyFlagDone); }

}  // namespace blksnap::nbd
