// Reply encoding for the NBD transmission phase: simple replies, structured reply chunks, the
// data/hole pieces of a structured read, block-status chunks.
//
// Pure functions (no I/O, no locks) so they can be unit-tested and fuzzed on their own; the
// session (session.cc) gathers what a reply carries from the device, encodes it here into its
// per-worker scratch buffers and sends the result with one writev under its send lock. Headers
// are written into caller memory and payloads are referenced by iovec, never copied.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "blksnap/block_device.h"
#include "nbd/extents.h"
#include "nbd/protocol.h"

namespace blksnap::nbd {

// A piece of a structured read reply: data or a hole, in offset order.
struct ReadPiece {
  uint64_t offset;
  uint32_t length;
  bool hole;
  bool operator==(const ReadPiece&) const = default;
};

// Bytes of an error chunk before its message: chunk header, error, message length.
inline constexpr size_t kErrorChunkHeaderSize = kStructuredReplyHeaderSize + 6;
// Bytes EncodeReadChunks needs in headers per piece: chunk header, offset, hole size.
inline constexpr size_t kReadChunkHeaderSpace = kStructuredReplyHeaderSize + 12;

// Writes the 16-byte simple reply header.
void PutSimpleReplyHeader(uint8_t* p, uint32_t error, uint64_t cookie);
// Writes the 20-byte header of a structured reply chunk whose payload is len bytes.
void PutChunkHeader(uint8_t* p, uint16_t flags, uint16_t type, uint64_t cookie, uint32_t len);
// Writes an NBD_REPLY_TYPE_ERROR chunk header (flagged DONE) for a message of message_len
// bytes (<= 65535), which the caller sends right after it.
void PutErrorChunkHeader(uint8_t* p, uint64_t cookie, uint32_t error, size_t message_len);

// Splits the read [offset, offset + length) into data and hole pieces by the device's extents,
// which must start at offset and follow each other without gaps; at the first gap or extent out
// of order the rest of the read is data. Neighbours of the same kind merge; a zero-flagged
// extent (kExtentZero) is a hole. Empty when extents is empty or does not start at offset.
void ReadPiecesFromExtents(std::span<const Extent> extents, uint64_t offset, uint32_t length,
                           std::vector<ReadPiece>* pieces);

// Encodes a structured read reply: one OFFSET_DATA or OFFSET_HOLE chunk per piece (pieces not
// empty), the last flagged DONE. Chunk headers go into *headers (kReadChunkHeaderSpace bytes per
// piece; resized, so it must not be touched until the iovecs are sent), the iovecs into *iov
// (cleared first); data pieces point into data, which holds the bytes of [offset, ...).
void EncodeReadChunks(std::span<const ReadPiece> pieces, uint64_t cookie, uint64_t offset,
                      uint8_t* data, std::vector<uint8_t>* headers, std::vector<iovec>* iov);

// Appends one NBD_REPLY_TYPE_BLOCK_STATUS chunk (flags 0) for context_id carrying extents to
// *out; returns the offset of its header in *out (see MarkChunkDone).
size_t AppendBlockStatusChunk(std::vector<uint8_t>* out, uint64_t cookie, uint32_t context_id,
                              std::span<const WireExtent> extents);

// Sets NBD_REPLY_FLAG_DONE on the chunk whose header starts at chunk.
void MarkChunkDone(uint8_t* chunk);

}  // namespace blksnap::nbd
