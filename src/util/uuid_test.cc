#include "blksnap/uuid.h"

#include <gtest/gtest.h>

#include <set>

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
  EXPECT_FALSE(Uuid::Parse("0123456f-89ab-cdef-0123-456789abcdef0"));  // too long
  EXPECT_FALSE(Uuid::Parse("0123456f-89ab-cdef-0123-456789abcde"));    // too short
  EXPECT_FALSE(Uuid::Parse("0123456f+89ab-cdef-0123-456789abcdef"));   // separator
  EXPECT_FALSE(Uuid::Parse("0123456f89ab-cdef-0123-456789abcdef-"));   // separator place
  EXPECT_FALSE(Uuid::Parse(std::string_view("0123456f-89ab-cdef-0123-456789abcde\0", 36)));
}

TEST(UuidTest, KnownTextAndBytes) {
  auto u = Uuid::Parse("0123456F-89AB-cdef-0123-456789abcdef");
  ASSERT_TRUE(u);
  const std::array<uint8_t, 16> want = {0x01, 0x23, 0x45, 0x6f, 0x89, 0xab, 0xcd, 0xef,
                                        0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef};
  EXPECT_EQ(u->bytes(), want);
  EXPECT_EQ(u->ToString(), "0123456f-89ab-cdef-0123-456789abcdef");  // lower case
  EXPECT_EQ(Uuid(want), *u);
}

TEST(UuidTest, NilAndVariant) {
  EXPECT_TRUE(Uuid().is_nil());
  EXPECT_EQ(Uuid().ToString(), "00000000-0000-0000-0000-000000000000");
  EXPECT_EQ(Uuid::Parse("00000000-0000-0000-0000-000000000000"), Uuid());
  std::array<uint8_t, 16> one{};
  one[15] = 1;
  EXPECT_FALSE(Uuid(one).is_nil());
  for (int i = 0; i < 100; ++i) EXPECT_EQ(Uuid::Random().bytes()[8] & 0xc0, 0x80);  // RFC 4122
}

}  // namespace
}  // namespace blksnap
