// The self-checking sector pattern used by every data test.
//
// Each 512-byte sector is stamped with a magic number, its own sector number, a sequence number
// (which write generation put it there), a timestamp, a payload derived from all of these, and
// a CRC-32C over the whole sector. A verifier can then tell, for any sector read back: whether it
// is intact, whether it sits where it was written, and which write it came from.
//
// Layout (little-endian): magic u64 | crc32c u32 | reserved u32 | sequence u64 | sector u64 |
// time_ns u64 | payload (472 bytes). The CRC covers the sector with the crc field zeroed.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "blksnap/status.h"

namespace blksnap::testing {

inline constexpr uint32_t kSectorSize = 512;
inline constexpr uint64_t kSectorMagic = 0x4b534e53424c4b53ull;  // "SKLBSNSK"

// Stamps every sector of buf (buf.size() must be a multiple of kSectorSize), the first being
// sector first_sector, with the given sequence number.
void StampSectors(std::span<uint8_t> buf, uint64_t first_sector, uint64_t sequence);

struct SectorInfo {
  bool valid = false;   // magic and CRC correct
  bool zero = false;    // all bytes zero (never written)
  uint64_t sector = 0;  // the sector number stamped into it
  uint64_t sequence = 0;
  uint64_t time_ns = 0;
};
SectorInfo InspectSector(std::span<const uint8_t> sector);

// OK if every sector of buf is valid, stamped with its own number (first_sector + i) and with
// `sequence`; otherwise EILSEQ with a message naming the first bad sector and what it holds.
Status VerifySectors(std::span<const uint8_t> buf, uint64_t first_sector, uint64_t sequence);

}  // namespace blksnap::testing
