// CRC-32C in two implementations behind one entry point.
//   Portable: table-driven, slicing by 8 (eight tables, eight bytes per step; several times the
//     one-table byte loop, ~0.5 GB/s); any CPU without the instruction (an emulated one too).
//   Hardware: x86-64 SSE4.2 `crc32` instruction, eight bytes per step (several GB/s). Compiled
//     with a target attribute, so the rest of the build needs no -msse4.2, and chosen at run time
//     by a cpuid check (__builtin_cpu_supports). On other architectures HaveHardware() is false.
// The choice is made once, on first use, into a function-local static (thread-safe init); no
// other state, no locking.
#include "util/crc32c.h"

#include <array>
#include <cstring>

namespace blksnap {
namespace {

constexpr uint32_t kPolynomial = 0x82F63B78u;  // 0x1EDC6F41 bit-reversed

// kTables[0] is the classic byte table; kTables[k][i] is the CRC of byte i followed by k zero
// bytes, so eight bytes are folded with eight lookups at once.
using Tables = std::array<std::array<uint32_t, 256>, 8>;
constexpr Tables MakeTables() {
  Tables t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ kPolynomial : c >> 1;
    t[0][i] = c;
  }
  for (uint32_t i = 0; i < 256; ++i) {
    for (size_t k = 1; k < 8; ++k) t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xff];
  }
  return t;
}
constexpr Tables kTables = MakeTables();

using Crc32cFunction = uint32_t (*)(const void*, size_t, uint32_t);

Crc32cFunction Choose() {
  return crc32c_internal::HaveHardware() ? crc32c_internal::Hardware : crc32c_internal::Portable;
}

}  // namespace

namespace crc32c_internal {

uint32_t Portable(const void* data, size_t length, uint32_t crc) {
  const auto* p = static_cast<const uint8_t*>(data);
  const auto& t = kTables;
  crc = ~crc;
  for (; length >= 8; length -= 8, p += 8) {
    // Little-endian assembly of the next eight bytes, whatever the host's byte order.
    const uint32_t lo =
        crc ^ (uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24);
    crc = t[7][lo & 0xff] ^ t[6][(lo >> 8) & 0xff] ^ t[5][(lo >> 16) & 0xff] ^ t[4][lo >> 24] ^
          t[3][p[4]] ^ t[2][p[5]] ^ t[1][p[6]] ^ t[0][p[7]];
  }
  for (; length > 0; --length) crc = t[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
  return ~crc;
}

#if defined(__x86_64__)

bool HaveHardware() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("sse4.2");
}

__attribute__((target("sse4.2"))) uint32_t Hardware(const void* data, size_t length, uint32_t crc) {
  const auto* p = static_cast<const uint8_t*>(data);
  uint64_t c = ~crc;
  // Head: single bytes up to an 8-byte boundary, so the word loads below are aligned.
  while (length > 0 && (reinterpret_cast<uintptr_t>(p) & 7) != 0) {
    c = __builtin_ia32_crc32qi(static_cast<uint32_t>(c), *p++);
    --length;
  }
  for (; length >= 8; length -= 8, p += 8) {
    uint64_t word;
    std::memcpy(&word, p, sizeof(word));
    c = __builtin_ia32_crc32di(c, word);
  }
  for (; length > 0; --length) c = __builtin_ia32_crc32qi(static_cast<uint32_t>(c), *p++);
  return ~static_cast<uint32_t>(c);
}

#else

bool HaveHardware() { return false; }
uint32_t Hardware(const void* data, size_t length, uint32_t crc) {
  return Portable(data, length, crc);
}

#endif

}  // namespace crc32c_internal

uint32_t Crc32c(const void* data, size_t length, uint32_t crc) {
  static const Crc32cFunction impl = Choose();
  return impl(data, length, crc);
}

}  // namespace blksnap
