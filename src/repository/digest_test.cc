#include "repository/digest.h"

#include <gtest/gtest.h>

#include <unordered_set>

namespace blksnap::repo {
namespace {

TEST(DigestTest, HexRoundTripAndZero) {
  Digest d;
  EXPECT_TRUE(d.IsZero());
  EXPECT_EQ(d.Hex(), std::string(64, '0'));
  for (size_t i = 0; i < d.bytes.size(); ++i) d.bytes[i] = static_cast<uint8_t>(i * 7 + 0xa0);
  EXPECT_FALSE(d.IsZero());
  const std::string hex = d.Hex();
  EXPECT_EQ(hex.substr(0, 6), "a0a7ae");
  auto back = Digest::FromHex(hex);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, d);
  std::unordered_set<Digest, DigestHash> set{d, Digest{}};
  EXPECT_EQ(set.size(), 2u);
  EXPECT_TRUE(set.contains(*back));
}

TEST(DigestTest, FromHexRefusesAnythingElse) {
  const std::string good(64, 'f');
  EXPECT_TRUE(Digest::FromHex(good).ok());
  for (std::string bad : {std::string(63, 'f'), std::string(65, 'f'), std::string(64, 'F'),
                          std::string(64, 'g'), std::string(), good.substr(0, 62) + " f"}) {
    auto r = Digest::FromHex(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().errnum(), EINVAL);
  }
}

TEST(DigestTest, OrderIsByteOrder) {
  Digest a, b;
  a.bytes[0] = 1;
  b.bytes[31] = 2;
  EXPECT_LT(b, a);
  EXPECT_LT(b.Hex(), a.Hex());  // hex order is the same: sorted names list in digest order
}

}  // namespace
}  // namespace blksnap::repo
