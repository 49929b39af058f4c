#include "blksnap/uuid.h"

#include <gtest/gtest.h>

#include <set>

#include "util/crc32c.h"

namespace blksnap {
namespace {

TEST(UuidTest, RandomIsVersion4AndRoundTrips) {
  std::set<Uuid> seen;
  for (int i = 0; i < 100; ++i) {
    Uuid u = Uuid::Random();
    EXPECT_FALSE(u.is_nil());
    EXPECT_EQ(u.bytes()[6] >> 4, 4);
    std::string text = u.ToString();
    ASSERT_EQ(text.size(), 36u);
    EXPECT_EQ(Uuid::Parse(text), u);
    seen.insert(u);
  }
  EXPECT_EQ(seen.size(), 100u);
}

TEST(UuidTest, ParseRejectsMalformed) {
  EXPECT_FALSE(Uuid::Parse(""));
  EXPECT_FALSE(Uuid::Parse("not-a-uuid"));
  EXPECT_FALSE(Uuid::Parse("0123456789abcdef0123456789abcdef0123"));
  EXPECT_FALSE(Uuid::Parse("0123456g-89ab-cdef-0123-456789abcdef"));
  EXPECT_TRUE(Uuid::Parse("0123456F-89ab-cdef-0123-456789abcdef"));
}

TEST(Crc32cTest, KnownVector) {
  // RFC 3720 test vector: 32 bytes of zeroes.
  uint8_t zeroes[32] = {};
  EXPECT_EQ(Crc32c(zeroes, sizeof(zeroes)), 0x8A9136AAu);
  EXPECT_EQ(Crc32c("123456789", 9), 0xE3069283u);
}

}  // namespace
}  // namespace blksnap
