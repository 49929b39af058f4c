// The rollback journal on-disk format, version 1: every constant of it, in one place. The format
// is described in docs/rollback-journal-format.md; keep the two in step.
//
// A rollback (rollback.h) merges a snapshot's image back onto its device. The journal says which
// chunks are still to be merged, so a crash or a restart mid-merge resumes where it was and never
// merges a chunk again after the user wrote it:
//
//   [0, 4096)        the header: magic, version, snapshot id, device name and size, chunk size,
//                    chunk count, start time, CRC-32C of the bytes before it (written once, when
//                    the journal is made, together with the bitmap, then synced);
//   [4096, ...)      the pending bitmap, one bit per chunk (bit i % 8 of byte i / 8; 1 = still
//                    to merge), padded with zero bits to a multiple of 4096 bytes.
//
// Bits only ever go from 1 to 0, one 4 KiB block at a time, after the merged chunks' data was
// flushed to the device; a merged chunk is written to by the user only after the block clearing
// its bit is synced. So a torn block write mixes blocks that agree on every bit the user may
// have relied on, and the bitmap needs no checksum: any mix of its old and new sectors is valid.
//
// The parser reads untrusted bytes (a file found in the state directory): it checks the length
// before every read and refuses anything but a valid version-1 header with EINVAL (EPROTO for a
// valid header of another version) and a message naming what is wrong.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "blksnap/status.h"
#include "blksnap/uuid.h"

namespace blksnap {

inline constexpr size_t kRollbackHeaderSize = 4096;
inline constexpr size_t kRollbackBitmapBlock = 4096;  // bitmap writes are whole blocks
inline constexpr uint32_t kRollbackFormatVersion = 1;
inline constexpr char kRollbackMagic[16] = "BLKSNAP-ROLLBCK";  // 15 characters and a NUL

inline constexpr size_t kRbMagicOffset = 0, kRbMagicSize = 16;
inline constexpr size_t kRbVersionOffset = 16;        // u32
inline constexpr size_t kRbHeaderSizeOffset = 20;     // u32: kRollbackHeaderSize
inline constexpr size_t kRbSnapshotOffset = 24;       // 16 bytes: the snapshot rolled back to
inline constexpr size_t kRbDeviceSizeOffset = 40;     // u64: the device's size in bytes
inline constexpr size_t kRbChunkSizeOffset = 48;      // u64: a power of two
inline constexpr size_t kRbChunkCountOffset = 56;     // u64: bits in the bitmap
inline constexpr size_t kRbStartedOffset = 64;        // u64: ns since the epoch
inline constexpr size_t kRbDeviceNameLenOffset = 72;  // u16
inline constexpr size_t kRbDeviceNameOffset = 80;     // up to kRbDeviceNameSize bytes
inline constexpr size_t kRbDeviceNameSize = 128;
inline constexpr size_t kRbCrcOffset = kRollbackHeaderSize - 4;  // u32 over [0, kRbCrcOffset)

struct RollbackJournalHeader {
  uint32_t version = kRollbackFormatVersion;
  Uuid snapshot;
  std::string device;
  uint64_t device_size = 0;
  uint64_t chunk_size = 0;
  uint64_t chunk_count = 0;
  uint64_t started = 0;
};

// Bytes of the bitmap of `chunk_count` chunks, padded to kRollbackBitmapBlock.
uint64_t RollbackBitmapBytes(uint64_t chunk_count);

std::array<uint8_t, kRollbackHeaderSize> SerializeRollbackHeader(
    const RollbackJournalHeader& header);
// Checks magic, version, CRC, the device name, a power-of-two chunk size and that chunk_count
// chunks of chunk_size cover device_size exactly.
Result<RollbackJournalHeader> ParseRollbackHeader(std::span<const uint8_t> block);

}  // namespace blksnap
