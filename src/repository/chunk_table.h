// ChunkTable: the table of a segmented chunk (repository config version 2;
// docs/repository-format.md section 3a, constants in repository_format.h).
//
// A segmented chunk is cut into segments (64 KiB by default, the CBT block) and named by a hash
// over the segments' SHA-256 digests (Codec::ChunkId), so a backup that changed a few segments
// of a chunk names the new version from the parent's table and the digests of what changed,
// without reading or hashing the rest. Its object holds a data blob, the table blob and a footer:
//
//   | data blob: the segments stored here | table blob: this table | footer: table blob size,
//   "BSC2" |
//
// A full chunk stores every segment. A delta (an incremental backup's new version of a chunk it
// changed in a few segments) stores only those, names its base (the parent's version, itself
// full or a delta) and is one deeper than it; reading a delta reads its base first and lays the
// stored segments over it. The table sits at the end so a restore reads a full chunk's data
// blob where its ChunkFrame expects it, and an incremental reads only the object's tail
// (ObjectStore::ReadTail) to learn the parent's digests.
//
// ParseChunkTable trusts nothing (every field, the exact size; EBADMSG with one line), the
// encoding is canonical, and fuzz/repository_codec_fuzzer.cc feeds it arbitrary bytes. A plain
// value type: no state, no locking.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "blksnap/status.h"
#include "repository/digest.h"

namespace blksnap::repo {

struct ChunkTable {
  uint64_t length = 0;           // the chunk's bytes
  uint32_t segment_size = 0;     // a power of two; the last segment may be shorter
  uint32_t depth = 0;            // 0: full; a delta: its base's depth + 1
  Digest base;                   // zero for a full chunk
  std::vector<uint8_t> present;  // per segment: 1 when its bytes are in this object
  std::vector<Digest> digests;   // per segment: SHA-256 of its bytes

  bool IsDelta() const { return !base.IsZero(); }
  size_t segments() const { return digests.size(); }
  uint64_t SegmentOffset(size_t i) const { return uint64_t{segment_size} * i; }
  uint64_t SegmentLength(size_t i) const;
  uint64_t StoredLength() const;  // the bytes of the present segments
};

// ceil(length / segment_size).
uint64_t SegmentCount(uint64_t length, uint32_t segment_size);
// The SHA-256 of each segment of `plain`.
std::vector<Digest> SegmentDigests(std::span<const uint8_t> plain, uint32_t segment_size);

// The table's plain bytes. The table must be valid (as ParseChunkTable would accept it).
std::vector<uint8_t> EncodeChunkTable(const ChunkTable& table);
// EBADMSG "chunk table: <what is wrong>" for anything but a valid, exactly sized table.
Result<ChunkTable> ParseChunkTable(std::span<const uint8_t> bytes);

// The AAD of a chunk's table blob: its 32 id bytes, then kChunkTableAadSuffix.
std::vector<uint8_t> ChunkTableAad(const Digest& id);

// The footer of a chunk object whose table blob has `table_blob_size` bytes.
void PutChunkFooter(std::span<uint8_t, 8> out, uint32_t table_blob_size);
// The table blob's size from the last 8 bytes of `tail` (the end of an object of `object_size`
// bytes): EBADMSG when the magic is wrong or the size does not fit in the object.
Result<uint32_t> ParseChunkFooter(std::span<const uint8_t> tail, uint64_t object_size);

}  // namespace blksnap::repo
