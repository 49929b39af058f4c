// CRC-32C in two implementations behind one entry point.
//   Portable: table-driven, one byte per step (~0.5 GB/s); any CPU.
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

constexpr std::array<uint32_t, 256> MakeTable() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ kPolynomial : c >> 1;
    table[i] = c;
  }
  return table;
}
constexpr auto kTable = MakeTable();

using Crc32cFunction = uint32_t (*)(const void*, size_t, uint32_t);

Crc32cFunction Choose() {
  return crc32c_internal::HaveHardware() ? crc32c_internal::Hardware : crc32c_internal::Portable;
}

}  // namespace

namespace crc32c_internal {

uint32_t Portable(const void* data, size_t length, uint32_t crc) {
  const auto* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
  for (size_t i = 0; i < length; ++i) crc = kTable[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
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
