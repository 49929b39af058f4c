// The repository's stored formats (layer 1): every constant of the object names, the local
// directory layout, the config object and the sealed blob, in one place. The formats are
// described in docs/repository-format.md sections 1-3; keep the two in step. The index and
// manifest constants (layer 2) live in catalog_format.h.
//
// Blob (a chunk, or any object the caller seals), all integers little-endian:
//   offset 0  magic "BSRB" (4 bytes)
//          4  version (u8) = kBlobVersion
//          5  flags (u8): kBlobCompressed | kBlobEncrypted, other bits zero
//          6  reserved (u16) = 0
//          8  plain length (u32): bytes Unseal returns, <= kMaxPlainLength
//         12  payload length (u32): stored bytes (zstd frame, or the plain bytes when raw)
//         16  encrypted: 12-byte AES-256-GCM nonce, payload (ciphertext), 16-byte tag;
//             plain: payload, then CRC-32C (u32) of header + AAD + payload
// The GCM AAD is the 16-byte header followed by the caller's AAD (a chunk's 32 digest bytes).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace blksnap::repo {

// ---- Object names (section 1). Names use [a-z0-9._/-]; see ValidateObjectName.
inline constexpr std::string_view kConfigObject = "config";
inline constexpr std::string_view kChunksPrefix = "chunks/";    // chunks/XX/<64 hex>
inline constexpr std::string_view kIndexesPrefix = "indexes/";  // indexes/<64 hex>
inline constexpr std::string_view kBackupsPrefix = "backups/";  // backups/<backup id>
inline constexpr std::string_view kBadPrefix = "bad/";          // bad/<name>: moved aside by repair
inline constexpr std::string_view kDamagedPrefix = "damaged/";  // damaged/<backup id>: a marker
inline constexpr std::string_view kLockObject = "lock";         // flock(2) target, not an object
inline constexpr size_t kMaxObjectNameLength = 1024;
inline constexpr size_t kMaxNameComponentLength = 255;

// ---- Local directory layout (section 1).
// A writer's temporary file: ".tmp-<final base name>-<16 hex random>" in the final directory.
// Names may not start a component with '.', so a temporary is never an object name.
inline constexpr std::string_view kTempPrefix = ".tmp-";
// Under an exclusive lease (gc), temporaries older than this are removed: their writer died.
inline constexpr int64_t kStaleTempSeconds = 10 * 60;
// A local store's PutBatch commits on its own once this many objects are pending.
inline constexpr size_t kLocalBatchObjects = 256;

// ---- Config object (section 2).
inline constexpr std::string_view kConfigFormat = "blksnap-repository";
inline constexpr uint32_t kConfigVersion = 1;
inline constexpr size_t kMaxConfigSize = 64 * 1024;  // ParseConfig refuses larger input
inline constexpr int kMaxConfigDepth = 4;            // and deeper nesting
inline constexpr uint64_t kMinChunkSize = 64 * 1024;
inline constexpr uint64_t kMaxChunkSize = 64ull << 20;
inline constexpr uint64_t kDefaultChunkSize = 4ull << 20;
inline constexpr int kDefaultZstdLevel = 2;
inline constexpr int kMinZstdLevel = -7;  // negative: zstd's fast levels; 0: not compressed
inline constexpr int kMaxZstdLevel = 22;
inline constexpr std::string_view kCipherName = "aes-256-gcm";
inline constexpr std::string_view kKdfName = "pbkdf2-hmac-sha256";
inline constexpr uint32_t kDefaultKdfIterations = 600000;
inline constexpr uint32_t kMinKdfIterations = 1000;
inline constexpr uint32_t kMaxKdfIterations = 10000000;
inline constexpr size_t kKdfSaltSize = 16;
inline constexpr size_t kMasterKeySize = 64;  // 32-byte cipher key, then 32-byte id key
inline constexpr size_t kCipherKeySize = 32;
inline constexpr size_t kGcmNonceSize = 12;
inline constexpr size_t kGcmTagSize = 16;
inline constexpr size_t kWrappedKeySize = kMasterKeySize + kGcmTagSize;
// The AAD of the wrapped master key: this string followed by the repository id.
inline constexpr std::string_view kKeyWrapAadPrefix = "blksnap-repository-key-v1:";
inline constexpr size_t kMaxKeyFileSize = 1 << 20;

// ---- Blob (section 3).
inline constexpr uint8_t kBlobMagic[4] = {'B', 'S', 'R', 'B'};
inline constexpr uint8_t kBlobVersion = 1;
inline constexpr uint8_t kBlobCompressed = 1 << 0;
inline constexpr uint8_t kBlobEncrypted = 1 << 1;
inline constexpr size_t kBlobHeaderSize = 16;
inline constexpr size_t kBlobCrcSize = 4;
// The largest plain length of a blob: the largest chunk plus slack for other sealed objects.
inline constexpr uint32_t kMaxPlainLength = (64u << 20) + (1u << 20);

// ---- Segmented chunks (config version 2; section 3a, src/repository/chunk_table.h).
// A version-2 chunk object is: data blob, table blob, footer. The footer's 8 bytes are the table
// blob's size (u32) and kChunkFooterMagic. The table blob's plain bytes (a ChunkTable):
//   offset 0  magic "BSCT" (4 bytes)
//          4  version (u8) = kChunkTableVersion
//          5  flags (u8): kChunkTableDelta, other bits zero
//          6  reserved (u16) = 0
//          8  depth (u32): 0 for a full chunk, 1 + the base's depth for a delta
//         12  segment size (u32)
//         16  chunk length (u64)
//         24  segment count (u32) = ceil(length / segment size)
//         28  present count (u32): segments stored in this object's data blob
//         32  base chunk id (32 bytes; zero for a full chunk)
//         64  present bitmap, ceil(count / 8) bytes (bit i % 8 of byte i / 8: segment i)
//             then count x 32 bytes: the SHA-256 of each segment
inline constexpr uint32_t kConfigVersionSegmented = 2;
inline constexpr uint32_t kDefaultSegmentSize = 16 * 1024;
inline constexpr uint32_t kMinSegmentSize = 4 * 1024;
inline constexpr uint32_t kMaxSegmentsPerChunk = 1024;
inline constexpr uint8_t kChunkTableMagic[4] = {'B', 'S', 'C', 'T'};
inline constexpr uint8_t kChunkTableVersion = 1;
inline constexpr uint8_t kChunkTableDelta = 1 << 0;
inline constexpr size_t kChunkTableHeaderSize = 64;
inline constexpr uint8_t kChunkFooterMagic[4] = {'B', 'S', 'C', '2'};
inline constexpr size_t kChunkFooterSize = 8;
// A delta's chain (delta, its base, ...) ends in a full chunk at most this many links down; a
// backup stores a full chunk instead of a delta whose depth would exceed it.
inline constexpr uint32_t kMaxDeltaDepth = 8;
// The largest table blob: header, bitmap and digests of kMaxSegmentsPerChunk segments, plus a
// blob's header, nonce and tag.
inline constexpr size_t kMaxChunkTableBlob = kBlobHeaderSize + 12 + kChunkTableHeaderSize +
                                             kMaxSegmentsPerChunk / 8 + 32 * kMaxSegmentsPerChunk +
                                             16;
// The AAD suffix of a table blob (after the chunk's 32 id bytes); a data blob's AAD is the id.
inline constexpr std::string_view kChunkTableAadSuffix = "table";
// The chunk id of a segmented chunk is SHA-256 (HMAC-SHA-256 under the id key when encrypted) of
// this tag, the chunk length (u64) and segment size (u32), then the segment digests.
inline constexpr std::string_view kSegmentedIdTag = "blksnap-chunk-v2";

}  // namespace blksnap::repo
