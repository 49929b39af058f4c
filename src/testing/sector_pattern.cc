// The self-checking sector pattern: see sector_pattern.h for the layout.
#include "testing/sector_pattern.h"

#include <chrono>
#include <cstring>

#include "util/crc32c.h"

namespace blksnap::testing {
namespace {

constexpr size_t kCrcOffset = 8;
constexpr size_t kPayloadOffset = 40;

void Put64(uint8_t* p, uint64_t v) { std::memcpy(p, &v, 8); }
uint64_t Get64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

uint32_t SectorCrc(const uint8_t* sector) {
  uint32_t crc = Crc32c(sector, kCrcOffset);
  const uint8_t zero[4] = {};
  crc = Crc32c(zero, 4, crc);
  return Crc32c(sector + kCrcOffset + 4, kSectorSize - kCrcOffset - 4, crc);
}

}  // namespace

void StampSectors(std::span<uint8_t> buf, uint64_t first_sector, uint64_t sequence) {
  const uint64_t now =
      static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                std::chrono::system_clock::now().time_since_epoch())
                                .count());
  for (size_t off = 0; off + kSectorSize <= buf.size(); off += kSectorSize) {
    uint8_t* s = buf.data() + off;
    const uint64_t sector = first_sector + off / kSectorSize;
    Put64(s, kSectorMagic);
    std::memset(s + kCrcOffset, 0, 8);
    Put64(s + 16, sequence);
    Put64(s + 24, sector);
    Put64(s + 32, now);
    uint64_t x = sector * 0x9E3779B97F4A7C15ull ^ sequence;
    for (size_t i = kPayloadOffset; i < kSectorSize; i += 8) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      Put64(s + i, x);
    }
    const uint32_t crc = SectorCrc(s);
    std::memcpy(s + kCrcOffset, &crc, 4);
  }
}

SectorInfo InspectSector(std::span<const uint8_t> sector) {
  SectorInfo info;
  if (sector.size() < kSectorSize) return info;
  const uint8_t* s = sector.data();
  info.zero = true;
  for (size_t i = 0; i < kSectorSize; ++i) {
    if (s[i]) {
      info.zero = false;
      break;
    }
  }
  if (Get64(s) != kSectorMagic) return info;
  uint32_t crc;
  std::memcpy(&crc, s + kCrcOffset, 4);
  if (crc != SectorCrc(s)) return info;
  info.valid = true;
  info.sequence = Get64(s + 16);
  info.sector = Get64(s + 24);
  info.time_ns = Get64(s + 32);
  return info;
}

Status VerifySectors(std::span<const uint8_t> buf, uint64_t first_sector, uint64_t sequence) {
  for (size_t off = 0; off + kSectorSize <= buf.size(); off += kSectorSize) {
    const uint64_t expected = first_sector + off / kSectorSize;
    SectorInfo info = InspectSector(buf.subspan(off, kSectorSize));
    std::string why;
    if (!info.valid) {
      why = info.zero ? "is all zeroes" : "is corrupt (bad magic or CRC)";
    } else if (info.sector != expected) {
      why = "holds sector " + std::to_string(info.sector);
    } else if (info.sequence != sequence) {
      why = "has sequence " + std::to_string(info.sequence) + ", expected " +
            std::to_string(sequence);
    }
    if (!why.empty()) {
      return Status::Error(EILSEQ, "sector " + std::to_string(expected) + " " + why);
    }
  }
  return Status::Ok();
}

}  // namespace blksnap::testing
