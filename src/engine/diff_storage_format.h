// The difference-storage on-disk format, version 1: every constant of it, in one place.
// The format is described in docs/diff-storage-format.md; keep the two in step.
//
// Layout: a header area of kDiffStorageHeaderSize bytes (2 MiB) at offset 0, whose first
// kDiffStorageHeaderBlockSize bytes (4 KiB) are the header below; preserved chunks follow,
// each at a multiple of kAllocationAlign. All integers are little-endian.
//
// ParseDiffStorageHeader reads untrusted bytes (a file found at a storage path): it checks the
// length before every read and refuses anything else than a valid version-1 header with EINVAL
// (or EPROTO for a valid header of another version) and a message naming what is wrong.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

#include "blksnap/status.h"
#include "blksnap/uuid.h"

namespace blksnap {

inline constexpr uint64_t kDiffStorageHeaderSize = 2ull << 20;  // the header area
inline constexpr size_t kDiffStorageHeaderBlockSize = 4096;     // the header proper
inline constexpr uint64_t kAllocationAlign = 4096;  // every chunk's storage offset is a multiple
inline constexpr uint32_t kDiffStorageFormatVersion = 1;
inline constexpr char kDiffStorageMagic[16] = "BLKSNAP-DIFFSTO";  // 15 characters and a NUL

// Field offsets and sizes in the header block.
inline constexpr size_t kMagicOffset = 0, kMagicSize = 16;
inline constexpr size_t kVersionOffset = 16, kVersionSize = 4;
inline constexpr size_t kHeaderSizeOffset = 20, kHeaderSizeSize = 4;
inline constexpr size_t kSnapshotIdOffset = 24, kSnapshotIdSize = 16;
inline constexpr size_t kCreatedOffset = 40, kCreatedSize = 8;
inline constexpr size_t kLimitOffset = 48, kLimitSize = 8;
inline constexpr size_t kReservedOffset = 56;  // zero up to the checksum
inline constexpr size_t kChecksumOffset = kDiffStorageHeaderBlockSize - 4, kChecksumSize = 4;
static_assert(kLimitOffset + kLimitSize == kReservedOffset);
static_assert(sizeof(kDiffStorageMagic) == kMagicSize);

struct DiffStorageHeader {
  uint32_t version = kDiffStorageFormatVersion;
  uint32_t header_size = static_cast<uint32_t>(kDiffStorageHeaderSize);
  Uuid snapshot_id;
  uint64_t created = 0;  // seconds since the epoch
  uint64_t limit = 0;    // usable bytes after the header area
  bool operator==(const DiffStorageHeader&) const = default;
};

// The header block: magic, fields, zero reserved bytes and the CRC-32C of bytes 0..4091.
std::array<uint8_t, kDiffStorageHeaderBlockSize> SerializeDiffStorageHeader(
    const DiffStorageHeader& header);

// Validates (length, magic, checksum, version, header size, limit) and decodes a header block.
// `bytes` may be longer than a block (only the first block is read) or shorter (refused).
Result<DiffStorageHeader> ParseDiffStorageHeader(std::span<const uint8_t> bytes);

}  // namespace blksnap
