// The repository catalog's formats (issue 16, layer 2): every constant of the index object and
// the backup manifest, in one place. The formats are described in docs/repository-format.md
// (sections 4-6); keep the two in step.
//
// Index object ("indexes/<hex>"), all integers little-endian:
//   offset  0  magic    8 bytes  "BSNPIDX1"
//           8  version  u32      kIndexVersion
//          12  flags    u32      0 (a reader refuses any other value)
//          16  device_size u64   bytes
//          24  chunk_size  u64   a power of two, kIndexMinChunkSize .. kIndexMaxChunkSize
//          32  count       u64   ceil(device_size / chunk_size)
//          40  count x 32 bytes  the digest of each chunk, all zero for a chunk of zeroes
//     40+32*count  32 bytes      SHA-256 of every byte before it
// Backup manifest ("backups/<backup id>"): a JSON object, see manifest.h.
// Constants only: no state, no locking.
#pragma once

#include <cstddef>
#include <cstdint>

namespace blksnap::repo {

inline constexpr char kIndexMagic[8] = {'B', 'S', 'N', 'P', 'I', 'D', 'X', '1'};
inline constexpr uint32_t kIndexVersion = 1;
inline constexpr size_t kIndexHeaderSize = 40;
inline constexpr size_t kIndexEntrySize = 32;
inline constexpr size_t kIndexChecksumSize = 32;

// Field offsets in the index header.
namespace index_field {
inline constexpr size_t kMagic = 0;        // 8 bytes
inline constexpr size_t kVersion = 8;      // u32
inline constexpr size_t kFlags = 12;       // u32, 0
inline constexpr size_t kDeviceSize = 16;  // u64
inline constexpr size_t kChunkSize = 24;   // u64
inline constexpr size_t kCount = 32;       // u64
}  // namespace index_field

// The chunk sizes a repository may use: the bounds of the repository config (kMinChunkSize and
// kMaxChunkSize of repository_format.h, repeated under other names so that both headers can be
// included together).
inline constexpr uint64_t kIndexMinChunkSize = uint64_t{64} << 10;
inline constexpr uint64_t kIndexMaxChunkSize = uint64_t{64} << 20;

constexpr bool IsValidChunkSize(uint64_t size) {
  return size >= kIndexMinChunkSize && size <= kIndexMaxChunkSize && (size & (size - 1)) == 0;
}

// Chunks covering a device: ceil(device_size / chunk_size), without overflow.
constexpr uint64_t ChunkCount(uint64_t device_size, uint64_t chunk_size) {
  return device_size / chunk_size + (device_size % chunk_size != 0 ? 1 : 0);
}

// Manifest: the version this code writes and the newest it reads; the field names.
inline constexpr uint32_t kManifestVersion = 1;
inline constexpr char kManifestChecksumField[] = "checksum";

// A backup id: "yyyymmddthhmmssz-xxxxxxxx" (UTC time of the backup, 8 lowercase hex random), all
// lowercase because object names are [a-z0-9._/-] (ValidateObjectName).
inline constexpr size_t kBackupIdTimeLength = 16;  // "20261130t183000z"
inline constexpr size_t kBackupIdRandomLength = 8;
inline constexpr size_t kBackupIdLength = kBackupIdTimeLength + 1 + kBackupIdRandomLength;

}  // namespace blksnap::repo
