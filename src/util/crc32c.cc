// CRC-32C in two implementations behind one entry point.
//   Portable: table-driven, slicing by 8 (eight tables, eight bytes per step; several times the
//     one-table byte loop, ~0.5 GB/s); any CPU without the instruction (an emulated one too).
//   Hardware: x86-64 SSE4.2 `crc32` instruction, eight bytes per step. Compiled with a target
//     attribute, so the rest of the build needs no -msse4.2, and chosen at run time by a cpuid
//     check (__builtin_cpu_supports). On other architectures HaveHardware() is false.
//     One `crc32` has a latency of 3 cycles and a throughput of 1 per cycle, so a single stream
//     runs at a third of what the CPU can do (~0.17 s/GiB: 10% of a backup's CPU, issues 16-17).
//     Buffers of 3 x kShortBlock bytes or more are therefore cut into blocks of three lanes,
//     each lane its own CRC stream, and the lanes are joined by shifting a lane's CRC over the
//     next lane's length of zero bytes (a linear map: four table lookups, the tables made at
//     compile time from the operator below) and XOR-ing in the next lane's CRC:
//     crc(a + b) = shift_len(b)(crc(a)) ^ crc_from_zero(b).
// Carrying a CRC over n zero bytes it does not read (the lanes' tables, Combine, Zeros) is a
// multiplication of the register by x^(8n) modulo the polynomial, with x^(2^k) from a table made
// at compile time (zlib's multmodp and x2nmodp in the reflected bit order: x^0 is the top bit).
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

// a * b modulo the polynomial, both in the reflected order.
constexpr uint32_t MultModP(uint32_t a, uint32_t b) {
  uint32_t product = 0;
  for (uint32_t m = 1u << 31; m != 0; m >>= 1) {
    if (a & m) {
      product ^= b;
      if ((a & (m - 1)) == 0) break;
    }
    b = (b & 1) ? (b >> 1) ^ kPolynomial : b >> 1;
  }
  return product;
}

// kX2n[k] = x^(2^k) modulo the polynomial, for every bit of a 64-bit count of bits.
constexpr std::array<uint32_t, 67> MakeX2n() {
  std::array<uint32_t, 67> t{};
  uint32_t p = 1u << 30;  // x^1
  t[0] = p;
  for (size_t k = 1; k < t.size(); ++k) t[k] = p = MultModP(p, p);
  return t;
}
constexpr std::array<uint32_t, 67> kX2n = MakeX2n();

// x^(8 * bytes) modulo the polynomial: the operator that feeds `bytes` zero bytes.
constexpr uint32_t XPow8n(uint64_t bytes) {
  uint32_t p = 1u << 31;  // x^0
  for (unsigned k = 3; bytes != 0; bytes >>= 1, ++k) {
    if (bytes & 1) p = MultModP(kX2n[k], p);
  }
  return p;
}

Crc32cFunction Choose() {
  return crc32c_internal::HaveHardware() ? crc32c_internal::Hardware : crc32c_internal::Portable;
}

}  // namespace

bool Crc32cIsFast() {
  static const bool fast = crc32c_internal::HaveHardware();
  return fast;
}

uint32_t Crc32cOperator(uint64_t length) { return XPow8n(length); }

uint32_t Crc32cCombineBy(uint32_t crc_a, uint32_t crc_b, uint32_t length_operator) {
  return MultModP(length_operator, crc_a) ^ crc_b;
}

uint32_t Crc32cZerosBy(uint32_t crc_a, uint32_t length_operator) {
  return ~MultModP(length_operator, ~crc_a);
}

uint32_t Crc32cCombine(uint32_t crc_a, uint32_t crc_b, uint64_t length_b) {
  return Crc32cCombineBy(crc_a, crc_b, XPow8n(length_b));
}

uint32_t Crc32cZeros(uint32_t crc_a, uint64_t zeros) { return Crc32cZerosBy(crc_a, XPow8n(zeros)); }

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

// Tables of the operator that feeds `bytes` zero bytes to a (non-inverted) CRC register, one
// per byte of the register: Shift(tables, crc) = the register after those zeros.
using ShiftTables = std::array<std::array<uint32_t, 256>, 4>;

constexpr ShiftTables MakeShiftTables(size_t bytes) {
  const uint32_t op = XPow8n(bytes);
  ShiftTables tables{};
  for (uint32_t n = 0; n < 256; ++n) {
    for (int k = 0; k < 4; ++k) tables[k][n] = MultModP(op, n << (8 * k));
  }
  return tables;
}

constexpr size_t kLongBlock = 8192;  // bytes per lane: three lanes of 8 KiB per step
constexpr size_t kShortBlock = 256;  // for what is left under 3 x kLongBlock
constexpr ShiftTables kLongShift = MakeShiftTables(kLongBlock);
constexpr ShiftTables kShortShift = MakeShiftTables(kShortBlock);

uint32_t Shift(const ShiftTables& t, uint32_t crc) {
  return t[0][crc & 0xff] ^ t[1][(crc >> 8) & 0xff] ^ t[2][(crc >> 16) & 0xff] ^ t[3][crc >> 24];
}

// Whole steps of three lanes of `lane` bytes each from *p (8-byte aligned), continuing `crc`.
__attribute__((target("sse4.2"))) uint64_t ThreeLanes(uint64_t crc, const uint8_t*& p,
                                                      size_t& length, size_t lane,
                                                      const ShiftTables& shift) {
  while (length >= 3 * lane) {
    uint64_t c1 = 0, c2 = 0;
    for (const uint8_t* end = p + lane; p < end; p += 8) {
      uint64_t w0, w1, w2;
      std::memcpy(&w0, p, 8);
      std::memcpy(&w1, p + lane, 8);
      std::memcpy(&w2, p + 2 * lane, 8);
      crc = __builtin_ia32_crc32di(crc, w0);
      c1 = __builtin_ia32_crc32di(c1, w1);
      c2 = __builtin_ia32_crc32di(c2, w2);
    }
    crc = Shift(shift, static_cast<uint32_t>(crc)) ^ static_cast<uint32_t>(c1);
    crc = Shift(shift, static_cast<uint32_t>(crc)) ^ static_cast<uint32_t>(c2);
    p += 2 * lane;
    length -= 3 * lane;
  }
  return crc;
}

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
  c = ThreeLanes(c, p, length, kLongBlock, kLongShift);
  c = ThreeLanes(c, p, length, kShortBlock, kShortShift);
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
