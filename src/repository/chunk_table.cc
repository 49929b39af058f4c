// ChunkTable: encoding, parsing, segment digests (see chunk_table.h; the layout is in
// repository_format.h and docs/repository-format.md section 3a).
#include "repository/chunk_table.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "repository/repository_format.h"
#include "util/little_endian.h"

namespace blksnap::repo {
namespace {

namespace field {
inline constexpr size_t kMagic = 0;
inline constexpr size_t kVersion = 4;
inline constexpr size_t kFlags = 5;
inline constexpr size_t kReserved = 6;
inline constexpr size_t kDepth = 8;
inline constexpr size_t kSegmentSize = 12;
inline constexpr size_t kLength = 16;
inline constexpr size_t kCount = 24;
inline constexpr size_t kPresentCount = 28;
inline constexpr size_t kBase = 32;
}  // namespace field

Status Bad(const std::string& why) { return Status::Error(EBADMSG, "chunk table: " + why); }

size_t BitmapSize(uint64_t count) { return static_cast<size_t>((count + 7) / 8); }

}  // namespace

uint64_t SegmentCount(uint64_t length, uint32_t segment_size) {
  return length / segment_size + (length % segment_size != 0 ? 1 : 0);
}

uint64_t ChunkTable::SegmentLength(size_t i) const {
  const uint64_t offset = SegmentOffset(i);
  return std::min<uint64_t>(segment_size, length - offset);
}

uint64_t ChunkTable::StoredLength() const {
  uint64_t total = 0;
  for (size_t i = 0; i < segments(); ++i) {
    if (present[i]) total += SegmentLength(i);
  }
  return total;
}

std::vector<Digest> SegmentDigests(std::span<const uint8_t> plain, uint32_t segment_size) {
  std::vector<Digest> digests(SegmentCount(plain.size(), segment_size));
  for (size_t i = 0; i < digests.size(); ++i) {
    const size_t offset = size_t{segment_size} * i;
    digests[i] =
        Sha256(plain.subspan(offset, std::min<size_t>(segment_size, plain.size() - offset)));
  }
  return digests;
}

std::vector<uint8_t> EncodeChunkTable(const ChunkTable& t) {
  const size_t count = t.segments();
  std::vector<uint8_t> out(kChunkTableHeaderSize + BitmapSize(count) + 32 * count, 0);
  uint8_t* p = out.data();
  std::memcpy(p + field::kMagic, kChunkTableMagic, 4);
  p[field::kVersion] = kChunkTableVersion;
  p[field::kFlags] = t.IsDelta() ? kChunkTableDelta : 0;
  PutLe<uint32_t>(p + field::kDepth, t.depth);
  PutLe<uint32_t>(p + field::kSegmentSize, t.segment_size);
  PutLe<uint64_t>(p + field::kLength, t.length);
  PutLe<uint32_t>(p + field::kCount, static_cast<uint32_t>(count));
  uint32_t present = 0;
  uint8_t* bitmap = p + kChunkTableHeaderSize;
  uint8_t* digests = bitmap + BitmapSize(count);
  for (size_t i = 0; i < count; ++i) {
    if (t.present[i]) {
      bitmap[i / 8] |= static_cast<uint8_t>(1u << (i % 8));
      ++present;
    }
    std::memcpy(digests + 32 * i, t.digests[i].bytes.data(), 32);
  }
  PutLe<uint32_t>(p + field::kPresentCount, present);
  std::memcpy(p + field::kBase, t.base.bytes.data(), 32);
  return out;
}

Result<ChunkTable> ParseChunkTable(std::span<const uint8_t> bytes) {
  if (bytes.size() < kChunkTableHeaderSize) return Bad("shorter than its header");
  const uint8_t* p = bytes.data();
  if (std::memcmp(p + field::kMagic, kChunkTableMagic, 4) != 0) return Bad("bad magic");
  if (p[field::kVersion] != kChunkTableVersion) {
    return Bad("version " + std::to_string(p[field::kVersion]) + " is not supported");
  }
  const uint8_t flags = p[field::kFlags];
  if ((flags & ~kChunkTableDelta) != 0 || GetLe<uint16_t>(p + field::kReserved) != 0) {
    return Bad("unknown flags or reserved bits set");
  }
  ChunkTable t;
  t.depth = GetLe<uint32_t>(p + field::kDepth);
  t.segment_size = GetLe<uint32_t>(p + field::kSegmentSize);
  t.length = GetLe<uint64_t>(p + field::kLength);
  const uint32_t count = GetLe<uint32_t>(p + field::kCount);
  const uint32_t present_count = GetLe<uint32_t>(p + field::kPresentCount);
  std::memcpy(t.base.bytes.data(), p + field::kBase, 32);
  const uint32_t s = t.segment_size;
  if (s < kMinSegmentSize || s > kMaxPlainLength || (s & (s - 1)) != 0) {
    return Bad("segment size " + std::to_string(s) + " is not a power of two of 4 KiB or more");
  }
  if (t.length == 0 || t.length > kMaxPlainLength) return Bad("bad chunk length");
  if (count != SegmentCount(t.length, s) || count > kMaxSegmentsPerChunk) {
    return Bad("segment count " + std::to_string(count) + " does not match the length");
  }
  const bool delta = (flags & kChunkTableDelta) != 0;
  if (delta != !t.base.IsZero()) return Bad("the delta flag and the base disagree");
  if (delta ? (t.depth == 0 || t.depth > kMaxDeltaDepth) : t.depth != 0) {
    return Bad("depth " + std::to_string(t.depth) + " is not valid");
  }
  const size_t bitmap_size = BitmapSize(count);
  if (bytes.size() != kChunkTableHeaderSize + bitmap_size + size_t{32} * count) {
    return Bad("size " + std::to_string(bytes.size()) + " does not match its segment count");
  }
  const uint8_t* bitmap = p + kChunkTableHeaderSize;
  t.present.resize(count);
  uint32_t seen = 0;
  for (uint32_t i = 0; i < count; ++i) {
    t.present[i] = (bitmap[i / 8] >> (i % 8)) & 1;
    seen += t.present[i];
  }
  if (count % 8 != 0 && (bitmap[bitmap_size - 1] >> (count % 8)) != 0) {
    return Bad("bits set past the last segment");
  }
  if (seen != present_count) return Bad("the present count does not match the bitmap");
  if (delta ? seen == 0 : seen != count) {
    return Bad(delta ? "a delta that stores no segment" : "a full chunk missing segments");
  }
  const uint8_t* digests = bitmap + bitmap_size;
  t.digests.resize(count);
  for (uint32_t i = 0; i < count; ++i) std::memcpy(t.digests[i].bytes.data(), digests + 32 * i, 32);
  return t;
}

std::vector<uint8_t> ChunkTableAad(const Digest& id) {
  std::vector<uint8_t> aad(id.bytes.begin(), id.bytes.end());
  aad.insert(aad.end(), kChunkTableAadSuffix.begin(), kChunkTableAadSuffix.end());
  return aad;
}

void PutChunkFooter(std::span<uint8_t, 8> out, uint32_t table_blob_size) {
  PutLe<uint32_t>(out.data(), table_blob_size);
  std::memcpy(out.data() + 4, kChunkFooterMagic, 4);
}

Result<uint32_t> ParseChunkFooter(std::span<const uint8_t> tail, uint64_t object_size) {
  if (tail.size() < kChunkFooterSize || object_size < kChunkFooterSize) {
    return Status::Error(EBADMSG, "chunk object: shorter than its footer");
  }
  const uint8_t* f = tail.data() + tail.size() - kChunkFooterSize;
  if (std::memcmp(f + 4, kChunkFooterMagic, 4) != 0) {
    return Status::Error(EBADMSG, "chunk object: no segmented-chunk footer");
  }
  const uint32_t size = GetLe<uint32_t>(f);
  if (size == 0 || size > kMaxChunkTableBlob || size > object_size - kChunkFooterSize) {
    return Status::Error(EBADMSG,
                         "chunk object: table blob size " + std::to_string(size) + " does not fit");
  }
  return size;
}

}  // namespace blksnap::repo
