// Index encoding and parsing: see index.h and catalog_format.h. Pure functions, no locking.
//
// ParseIndex checks in this order: the length holds a header and a checksum, magic, version,
// flags, chunk size, count against device_size / chunk_size, the exact length (computed from a
// count already bounded by the device size, so it cannot overflow), the SHA-256; only then does
// it allocate count entries. Every check fails with EBADMSG and its own message.
#include "repository/index.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "repository/catalog_format.h"
#include "util/little_endian.h"

namespace blksnap::repo {
namespace {

Status Bad(const std::string& what) { return Status::Error(EBADMSG, "index: " + what); }

}  // namespace

Status CheckIndex(const Index& index) {
  if (!IsValidChunkSize(index.chunk_size)) {
    return Status::Error(EINVAL, "index: chunk size " + std::to_string(index.chunk_size) +
                                     " is not a power of two from 64 KiB to 64 MiB");
  }
  const uint64_t count = ChunkCount(index.device_size, index.chunk_size);
  if (index.chunks.size() != count) {
    return Status::Error(EINVAL, "index: " + std::to_string(index.chunks.size()) +
                                     " chunks for a device of " + std::to_string(count));
  }
  return Status::Ok();
}

std::vector<uint8_t> EncodeIndex(const Index& index) {
  const size_t body = kIndexHeaderSize + index.chunks.size() * kIndexEntrySize;
  std::vector<uint8_t> out(body + kIndexChecksumSize);
  std::memcpy(out.data() + index_field::kMagic, kIndexMagic, sizeof(kIndexMagic));
  PutLe<uint32_t>(out.data() + index_field::kVersion, kIndexVersion);
  PutLe<uint32_t>(out.data() + index_field::kFlags, 0);
  PutLe<uint64_t>(out.data() + index_field::kDeviceSize, index.device_size);
  PutLe<uint64_t>(out.data() + index_field::kChunkSize, index.chunk_size);
  PutLe<uint64_t>(out.data() + index_field::kCount, index.chunks.size());
  uint8_t* entry = out.data() + kIndexHeaderSize;
  for (const Digest& digest : index.chunks) {
    std::memcpy(entry, digest.bytes.data(), kIndexEntrySize);
    entry += kIndexEntrySize;
  }
  const Digest sum = Sha256(std::span<const uint8_t>(out.data(), body));
  std::memcpy(out.data() + body, sum.bytes.data(), sum.bytes.size());
  return out;
}

Result<Index> ParseIndex(std::span<const uint8_t> bytes) {
  if (bytes.size() < kIndexHeaderSize + kIndexChecksumSize) {
    return Bad("object of " + std::to_string(bytes.size()) + " bytes is shorter than a header");
  }
  const uint8_t* in = bytes.data();
  if (std::memcmp(in + index_field::kMagic, kIndexMagic, sizeof(kIndexMagic)) != 0) {
    return Bad("bad magic");
  }
  const auto version = GetLe<uint32_t>(in + index_field::kVersion);
  if (version != kIndexVersion) return Bad("version " + std::to_string(version) + " unknown");
  const auto flags = GetLe<uint32_t>(in + index_field::kFlags);
  if (flags != 0) return Bad("unknown flags " + std::to_string(flags));
  Index index;
  index.device_size = GetLe<uint64_t>(in + index_field::kDeviceSize);
  index.chunk_size = GetLe<uint64_t>(in + index_field::kChunkSize);
  if (!IsValidChunkSize(index.chunk_size)) {
    return Bad("chunk size " + std::to_string(index.chunk_size) + " invalid");
  }
  const auto count = GetLe<uint64_t>(in + index_field::kCount);
  if (count != ChunkCount(index.device_size, index.chunk_size)) {
    return Bad("count " + std::to_string(count) + " does not match the device size");
  }
  // count <= 2^64 / 64 KiB, so the body size cannot overflow.
  const uint64_t body = kIndexHeaderSize + count * kIndexEntrySize;
  if (bytes.size() != body + kIndexChecksumSize) {
    return Bad("object of " + std::to_string(bytes.size()) + " bytes, expected " +
               std::to_string(body + kIndexChecksumSize));
  }
  const Digest sum = Sha256(bytes.first(body));
  if (std::memcmp(sum.bytes.data(), in + body, sum.bytes.size()) != 0)
    return Bad("checksum mismatch");
  index.chunks.resize(count);
  const uint8_t* entry = in + kIndexHeaderSize;
  for (Digest& digest : index.chunks) {
    std::memcpy(digest.bytes.data(), entry, kIndexEntrySize);
    entry += kIndexEntrySize;
  }
  return index;
}

}  // namespace blksnap::repo
