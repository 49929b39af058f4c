// The difference-storage header: see diff_storage_format.h and docs/diff-storage-format.md.
#include "engine/diff_storage_format.h"

#include <cstring>
#include <string>

#include "util/crc32c.h"

namespace blksnap {
namespace {

template <typename T>
void PutLe(uint8_t* out, T value) {
  for (size_t i = 0; i < sizeof(T); ++i) out[i] = static_cast<uint8_t>(value >> (8 * i));
}

template <typename T>
T GetLe(const uint8_t* in) {
  T value = 0;
  for (size_t i = 0; i < sizeof(T); ++i) value |= static_cast<T>(in[i]) << (8 * i);
  return value;
}

}  // namespace

std::array<uint8_t, kDiffStorageHeaderBlockSize> SerializeDiffStorageHeader(
    const DiffStorageHeader& header) {
  std::array<uint8_t, kDiffStorageHeaderBlockSize> block{};
  std::memcpy(block.data() + kMagicOffset, kDiffStorageMagic, kMagicSize);
  PutLe<uint32_t>(block.data() + kVersionOffset, header.version);
  PutLe<uint32_t>(block.data() + kHeaderSizeOffset, header.header_size);
  std::memcpy(block.data() + kSnapshotIdOffset, header.snapshot_id.bytes().data(), kSnapshotIdSize);
  PutLe<uint64_t>(block.data() + kCreatedOffset, header.created);
  PutLe<uint64_t>(block.data() + kLimitOffset, header.limit);
  PutLe<uint32_t>(block.data() + kChecksumOffset, Crc32c(block.data(), kChecksumOffset));
  return block;
}

Result<DiffStorageHeader> ParseDiffStorageHeader(std::span<const uint8_t> bytes) {
  if (bytes.size() < kDiffStorageHeaderBlockSize) {
    return Status::Error(
        EINVAL, "difference storage header truncated: " + std::to_string(bytes.size()) + " of " +
                    std::to_string(kDiffStorageHeaderBlockSize) + " bytes");
  }
  const uint8_t* p = bytes.data();
  if (std::memcmp(p + kMagicOffset, kDiffStorageMagic, kMagicSize) != 0)
    return Status::Error(EINVAL, "not a blksnap difference storage (bad magic)");
  const uint32_t stored_crc = GetLe<uint32_t>(p + kChecksumOffset);
  const uint32_t crc = Crc32c(p, kChecksumOffset);
  if (stored_crc != crc) {
    return Status::Error(EINVAL, "difference storage header checksum mismatch (stored " +
                                     std::to_string(stored_crc) + ", computed " +
                                     std::to_string(crc) + ")");
  }
  DiffStorageHeader header;
  header.version = GetLe<uint32_t>(p + kVersionOffset);
  if (header.version != kDiffStorageFormatVersion) {
    return Status::Error(EPROTO, "difference storage format version " +
                                     std::to_string(header.version) + " is not supported (only " +
                                     std::to_string(kDiffStorageFormatVersion) + ")");
  }
  header.header_size = GetLe<uint32_t>(p + kHeaderSizeOffset);
  if (header.header_size != kDiffStorageHeaderSize) {
    return Status::Error(EINVAL,
                         "difference storage header area of " + std::to_string(header.header_size) +
                             " bytes (version 1: " + std::to_string(kDiffStorageHeaderSize) + ")");
  }
  std::array<uint8_t, kSnapshotIdSize> id{};
  std::memcpy(id.data(), p + kSnapshotIdOffset, kSnapshotIdSize);
  header.snapshot_id = Uuid(id);
  header.created = GetLe<uint64_t>(p + kCreatedOffset);
  header.limit = GetLe<uint64_t>(p + kLimitOffset);
  if (header.limit == 0 || header.limit > UINT64_MAX - kDiffStorageHeaderSize) {
    return Status::Error(EINVAL, "difference storage limit of " + std::to_string(header.limit) +
                                     " bytes is out of range");
  }
  return header;
}

}  // namespace blksnap
