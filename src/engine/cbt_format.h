// The CBT state file, format version 3: every constant of it, in one place. The format is
// described in docs/cbt-format.md; keep the two in step.
//
// Layout: two header slots of kCbtHeaderSize bytes (4 KiB) each at offsets 0 and 4096, then the
// write map (one byte per tracking block) at kCbtMapsOffset (8 KiB), then the read map at the
// next multiple of 4 KiB,
// then the two areas of the write-intent journal (one byte per journal region, each area
// starting at a multiple of 4 KiB); the file ends at the next multiple of 4 KiB after the
// second area. All integers little-endian. The maps and the journal are used in place through a
// shared mapping (engine/cbt_store.h, engine/cbt_journal.h).
//
// The header slots: a header write goes to the slot that does not hold the last durable header,
// so a header torn by a power cut mid-write (or by write-back racing the stores) leaves the
// previous one intact; the valid slot with the higher sequence number is the header.
//
// ParseCbtState reads untrusted bytes (a file found in the state directory): it checks every
// length before it reads and accepts only a file with at least one valid version-3 header slot
// whose fields imply exactly the file's size; otherwise EINVAL (EPROTO for a valid header of
// another version) with a message naming what is wrong in slot 0. It never allocates in
// proportion to the input.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "blksnap/cbt.h"
#include "blksnap/status.h"
#include "blksnap/uuid.h"

namespace blksnap {

inline constexpr size_t kCbtHeaderSize = 4096;  // one header slot
inline constexpr int kCbtHeaderSlots = 2;
inline constexpr uint64_t kCbtMapsOffset = kCbtHeaderSize * kCbtHeaderSlots;  // the write map
inline constexpr uint64_t kCbtMapAlign = 4096;
inline constexpr uint32_t kCbtFormatVersion = 3;
inline constexpr char kCbtMagic[16] = "BLKSNAP-CBTSTAT";  // 15 characters and a NUL
inline constexpr uint32_t kCbtMinimumShift = 9, kCbtMaximumShift = 40;
// Journal regions: at least 64 MiB (and at least one tracking block), at most 16384 of them per
// device (the region grows for devices beyond 1 TiB).
inline constexpr uint32_t kCbtJournalMinimumShift = 26;
inline constexpr uint64_t kCbtJournalMaximumRegions = 16384;

// Field offsets in a header slot.
namespace cbt_field {
inline constexpr size_t kMagic = 0;            // 16 bytes
inline constexpr size_t kVersion = 16;         // u32
inline constexpr size_t kHeaderSize = 20;      // u32, = kCbtHeaderSize
inline constexpr size_t kSequence = 24;        // u64, +1 at every header write
inline constexpr size_t kGeneration = 32;      // 16 bytes (UUID)
inline constexpr size_t kCapacity = 48;        // u64, bytes
inline constexpr size_t kBlockShift = 56;      // u32
inline constexpr size_t kFlags = 60;           // u32, kCbtFlag*
inline constexpr size_t kBlockCount = 64;      // u64
inline constexpr size_t kActive = 72;          // u8
inline constexpr size_t kPrevious = 73;        // u8; 74..79 zero
inline constexpr size_t kCheckpointTime = 80;  // u64, ns since the epoch of the last checkpoint
inline constexpr size_t kWriteMapOffset = 88;  // u64, = kCbtMapsOffset
inline constexpr size_t kReadMapOffset = 96;   // u64
inline constexpr size_t kIdentityKind = 104;   // u32 (CbtIdentity::Kind)
inline constexpr size_t kJournalShift = 108;   // u32, log2 of the journal region size
inline constexpr size_t kIdentityDev = 112;    // u64
inline constexpr size_t kIdentityIno = 120;    // u64
inline constexpr size_t kIdentityRdev = 128;   // u64
inline constexpr size_t kIdentitySize = 136;   // u64
inline constexpr size_t kIdentityMtime = 144;  // i64 ns
inline constexpr size_t kIdentityCtime = 152;  // i64 ns
inline constexpr size_t kBootId = 160;         // 40 bytes, text, NUL-padded
inline constexpr size_t kBootIdSize = 40;
inline constexpr size_t kReason = 200;  // 32 bytes, text, NUL-padded
inline constexpr size_t kReasonSize = 32;
inline constexpr size_t kJournalRegions = 232;           // u64
inline constexpr size_t kJournalOffset = 240;            // u64, the first journal area
inline constexpr size_t kReserved = 248;                 // zero up to the checksum
inline constexpr size_t kChecksum = kCbtHeaderSize - 4;  // u32 CRC-32C of bytes 0..4091
}  // namespace cbt_field

inline constexpr uint32_t kCbtFlagSealed = 1;     // written by a clean stop, cleared at attach
inline constexpr uint32_t kCbtFlagCorrupted = 2;  // the next take starts a new generation
// A sync of the state file failed during this run (journal, checkpoint or header; sticky until
// the next attach): after a power loss the generation cannot continue ("restart-unclean-power").
inline constexpr uint32_t kCbtFlagJournalFailed = 4;
inline constexpr uint32_t kCbtKnownFlags =
    kCbtFlagSealed | kCbtFlagCorrupted | kCbtFlagJournalFailed;

struct CbtHeader {
  uint64_t sequence = 0;
  Uuid generation;
  uint64_t capacity = 0;
  uint32_t block_shift = 0;
  uint32_t flags = 0;
  uint64_t block_count = 0;
  uint32_t journal_shift = 0;
  uint64_t journal_regions = 0;
  uint8_t active = 1;
  uint8_t previous = 0;
  uint64_t checkpoint_time_ns = 0;
  CbtIdentity identity;
  std::string boot_id;  // at most kBootIdSize - 1 characters
  std::string reason;   // at most kReasonSize - 1 characters
  bool operator==(const CbtHeader&) const = default;
};

inline uint64_t CbtAlign(uint64_t n) {
  return (n + kCbtMapAlign - 1) / kCbtMapAlign * kCbtMapAlign;
}
inline uint64_t CbtReadMapOffset(uint64_t block_count) {
  return kCbtMapsOffset + CbtAlign(block_count);
}
// which = 0 or 1
inline uint64_t CbtJournalOffset(uint64_t block_count, uint64_t regions, int which) {
  return kCbtMapsOffset + 2 * CbtAlign(block_count) +
         static_cast<uint64_t>(which) * CbtAlign(regions);
}
inline uint64_t CbtFileSize(uint64_t block_count, uint64_t regions) {
  return CbtJournalOffset(block_count, regions, 2);
}
// ceil(capacity / 2^shift)
inline uint64_t CbtBlockCount(uint64_t capacity, uint32_t shift) {
  return (capacity >> shift) + ((capacity & ((1ull << shift) - 1)) ? 1 : 0);
}
// The journal region shift for a device: kCbtJournalMinimumShift or the tracking block shift,
// whichever is larger, grown until the device has at most kCbtJournalMaximumRegions regions.
inline uint32_t CbtJournalShift(uint64_t capacity, uint32_t block_shift) {
  uint32_t shift = block_shift > kCbtJournalMinimumShift ? block_shift : kCbtJournalMinimumShift;
  while (shift < 63 && CbtBlockCount(capacity, shift) > kCbtJournalMaximumRegions) ++shift;
  return shift;
}

// A header slot: magic, fields, zero reserved bytes, CRC. Strings longer than their field are
// cut.
std::array<uint8_t, kCbtHeaderSize> SerializeCbtHeader(const CbtHeader& header);

// Validates and decodes the header of `file`, which must be the whole state file: the valid slot
// with the higher sequence (slot 0 on a tie), whose size must be CbtFileSize(block_count,
// journal_regions), the journal geometry the one CbtJournalShift gives. *slot (if not null)
// says which slot it was.
Result<CbtHeader> ParseCbtState(std::span<const uint8_t> file, int* slot = nullptr);

}  // namespace blksnap
