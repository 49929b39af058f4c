// CRC-32C: both implementations against the RFC 3720 (iSCSI) appendix B.4 vectors, against each
// other on every length and alignment around the word size, and chained (crc of a+b from a).
#include "util/crc32c.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

namespace blksnap {
namespace {

using Impl = uint32_t (*)(const void*, size_t, uint32_t);

struct Vector {
  std::vector<uint8_t> data;
  uint32_t crc;
};

std::vector<Vector> Rfc3720Vectors() {
  std::vector<Vector> v;
  v.push_back({std::vector<uint8_t>(32, 0x00), 0x8A9136AAu});
  v.push_back({std::vector<uint8_t>(32, 0xff), 0x62A8AB43u});
  std::vector<uint8_t> up(32), down(32);
  for (int i = 0; i < 32; ++i) {
    up[i] = static_cast<uint8_t>(i);
    down[i] = static_cast<uint8_t>(31 - i);
  }
  v.push_back({up, 0x46DD794Eu});
  v.push_back({down, 0x113FDB5Cu});
  // An iSCSI SCSI Read (10) command PDU.
  v.push_back({{0x01, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00,
                0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x18, 0x28, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00},
               0xD9963A56u});
  const char* check = "123456789";  // the usual "check" value of CRC catalogues
  v.push_back({std::vector<uint8_t>(check, check + 9), 0xE3069283u});
  v.push_back({{}, 0u});
  return v;
}

void ExpectVectors(Impl impl) {
  for (const auto& v : Rfc3720Vectors()) {
    EXPECT_EQ(impl(v.data.data(), v.data.size(), 0), v.crc) << "length " << v.data.size();
    // At every misalignment too (the hardware path aligns its word loads).
    for (size_t shift = 1; shift < 8; ++shift) {
      std::vector<uint8_t> buf(v.data.size() + shift);
      if (!v.data.empty()) std::memcpy(buf.data() + shift, v.data.data(), v.data.size());
      EXPECT_EQ(impl(buf.data() + shift, v.data.size(), 0), v.crc) << "shift " << shift;
    }
  }
}

TEST(Crc32cTest, PortableMatchesRfc3720) { ExpectVectors(crc32c_internal::Portable); }

TEST(Crc32cTest, HardwareMatchesRfc3720) {
  if (!crc32c_internal::HaveHardware()) GTEST_SKIP() << "no SSE4.2 crc32 on this CPU";
  ExpectVectors(crc32c_internal::Hardware);
}

TEST(Crc32cTest, DispatchMatchesRfc3720) {
  ExpectVectors([](const void* d, size_t n, uint32_t c) { return Crc32c(d, n, c); });
}

TEST(Crc32cTest, ImplementationsAgreeAndChain) {
  std::mt19937_64 rng(42);
  std::vector<uint8_t> buf(4096 + 16);
  for (auto& b : buf) b = static_cast<uint8_t>(rng());
  for (size_t offset = 0; offset < 8; ++offset) {
    for (size_t length : {0, 1, 7, 8, 9, 15, 16, 17, 63, 511, 4096}) {
      const uint8_t* p = buf.data() + offset;
      uint32_t want = crc32c_internal::Portable(p, length, 0);
      EXPECT_EQ(Crc32c(p, length), want) << offset << "+" << length;
      if (crc32c_internal::HaveHardware()) {
        EXPECT_EQ(crc32c_internal::Hardware(p, length, 0), want) << offset << "+" << length;
      }
      size_t half = length / 3;
      EXPECT_EQ(Crc32c(p + half, length - half, Crc32c(p, half)), want) << offset << "+" << length;
    }
  }
}

// The hardware path runs three lanes of 8 KiB (then of 256 bytes) at once and joins them: every
// length around those block sizes, whole and chained, against the portable one.
TEST(Crc32cTest, HardwareLanesMatchPortableOnLongBuffers) {
  if (!crc32c_internal::HaveHardware()) GTEST_SKIP() << "no SSE4.2 crc32 on this CPU";
  std::mt19937_64 rng(7);
  std::vector<uint8_t> buf((4 << 20) + 64);
  for (auto& b : buf) b = static_cast<uint8_t>(rng());
  for (size_t offset : {0, 3}) {
    for (size_t length : {767, 768, 769, 1023, 24575, 24576, 24577, 24576 + 768 + 13, 49152 + 1,
                          100000, 4 << 20, (4 << 20) + 7}) {
      const uint8_t* p = buf.data() + offset;
      const uint32_t want = crc32c_internal::Portable(p, length, 0);
      EXPECT_EQ(crc32c_internal::Hardware(p, length, 0), want) << offset << "+" << length;
      const size_t head = length / 3 + 1;
      EXPECT_EQ(
          crc32c_internal::Hardware(p + head, length - head, crc32c_internal::Hardware(p, head, 0)),
          want)
          << offset << "+" << length << " chained";
    }
  }
}

TEST(Crc32cTest, CombineAndZerosMatchTheBytes) {
  std::mt19937_64 rng(11);
  std::vector<uint8_t> buf(9000);
  for (auto& b : buf) b = static_cast<uint8_t>(rng());
  for (size_t a : {0, 1, 7, 64, 4000}) {
    for (size_t b : {0, 1, 8, 31, 32, 255, 4028, 5000}) {
      const uint32_t crc_a = Crc32c(buf.data(), a);
      EXPECT_EQ(Crc32cCombine(crc_a, Crc32c(buf.data() + a, b), b), Crc32c(buf.data(), a + b))
          << a << "+" << b;
      std::vector<uint8_t> zeros(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(a));
      zeros.resize(a + b, 0);
      EXPECT_EQ(Crc32cZeros(crc_a, b), Crc32c(zeros.data(), zeros.size())) << a << "+0x" << b;
      EXPECT_EQ(Crc32cZerosBy(crc_a, Crc32cOperator(b)), Crc32cZeros(crc_a, b));
      EXPECT_EQ(Crc32cCombineBy(crc_a, 12345, Crc32cOperator(b)), Crc32cCombine(crc_a, 12345, b));
    }
  }
  // Lengths no buffer here holds: every entry of the power table, checked by composition
  // (n zeros then m zeros are n + m zeros).
  const uint32_t c = Crc32c(buf.data(), 100);
  for (uint64_t n : {uint64_t{1} << 20, (uint64_t{1} << 40) + 3, (uint64_t{1} << 62) - 1}) {
    for (uint64_t m : {uint64_t{1}, uint64_t{4096}, (uint64_t{1} << 33) + 7}) {
      EXPECT_EQ(Crc32cZeros(Crc32cZeros(c, n), m), Crc32cZeros(c, n + m)) << n << "+" << m;
    }
  }
}

}  // namespace
}  // namespace blksnap
