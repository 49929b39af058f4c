#include "testing/sector_pattern.h"

#include <gtest/gtest.h>

#include <vector>

namespace blksnap::testing {
namespace {

TEST(SectorPatternTest, StampThenVerify) {
  std::vector<uint8_t> buf(8 * kSectorSize);
  StampSectors(buf, 100, 7);
  EXPECT_TRUE(VerifySectors(buf, 100, 7).ok());
  auto info = InspectSector(std::span(buf).subspan(3 * kSectorSize, kSectorSize));
  EXPECT_TRUE(info.valid);
  EXPECT_EQ(info.sector, 103u);
  EXPECT_EQ(info.sequence, 7u);
}

TEST(SectorPatternTest, DetectsWrongSequenceWrongPlaceAndCorruption) {
  std::vector<uint8_t> buf(4 * kSectorSize);
  StampSectors(buf, 0, 1);
  EXPECT_EQ(VerifySectors(buf, 0, 2).errnum(), EILSEQ);
  EXPECT_EQ(VerifySectors(buf, 1, 1).errnum(), EILSEQ);
  buf[2 * kSectorSize + 100] ^= 1;
  Status s = VerifySectors(buf, 0, 1);
  EXPECT_EQ(s.errnum(), EILSEQ);
  EXPECT_NE(s.message().find("sector 2 is corrupt"), std::string_view::npos);
  std::vector<uint8_t> zero(kSectorSize);
  EXPECT_TRUE(InspectSector(zero).zero);
  EXPECT_FALSE(VerifySectors(zero, 0, 0).ok());
}

}  // namespace
}  // namespace blksnap::testing
