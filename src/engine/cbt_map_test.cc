#include "engine/cbt_map.h"

#include <gtest/gtest.h>

namespace blksnap {
namespace {

Config SmallBlocks() {
  Config c;
  c.tracking_block_minimum_shift = 12;  // 4 KiB blocks
  return c;
}

std::vector<uint8_t> ReadAll(const CbtMap& map) {
  std::vector<uint8_t> out(map.info().block_count);
  EXPECT_TRUE(map.ReadMap(0, out).ok());
  return out;
}

TEST(CbtMapTest, BlockSizeGrowsWithCapacityWithinLimits) {
  Config c;
  EXPECT_EQ(TrackingBlockShift(1ull << 30, c), 14u);  // 64 Ki blocks of 16 KiB
  // 16 TiB / 16 KiB = 1 Gi blocks > 2 Mi: grows to 8 MiB blocks (2 Mi of them).
  EXPECT_EQ(TrackingBlockShift(16ull << 40, c), 23u);
  c.tracking_block_maximum_shift = 20;
  EXPECT_EQ(TrackingBlockShift(16ull << 40, c), 20u);  // capped: the count may exceed the max
  CbtMap map((1ull << 20) + 1, SmallBlocks());
  EXPECT_EQ(map.info().block_count, 257u);  // the last block is partial
  EXPECT_EQ(map.info().block_size, 4096u);
}

TEST(CbtMapTest, ReadMapIsFrozenAtTakeAndNumbersAdvance) {
  CbtMap map(1 << 20, SmallBlocks());
  CbtInfo info = map.info();
  EXPECT_EQ(info.changes_number, 0);
  map.MarkWrite(0, 4096);      // block 0 during snap number 1
  map.SwitchForTake(1 << 20);  // take #1: previous = 1, active = 2
  map.MarkWrite(8192, 1);      // block 2 during 2: not visible until the next take
  auto read = ReadAll(map);
  EXPECT_EQ(read[0], 1);
  EXPECT_EQ(read[2], 0);
  EXPECT_EQ(map.info().changes_number, 1);
  map.SwitchForTake(1 << 20);
  read = ReadAll(map);
  EXPECT_EQ(read[0], 1);
  EXPECT_EQ(read[2], 2);
  EXPECT_EQ(map.info().changes_number, 2);
  EXPECT_EQ(map.info().generation_id, info.generation_id);
}

TEST(CbtMapTest, WriteMarksEveryTouchedBlockOnlyUpward) {
  CbtMap map(1 << 20, SmallBlocks());
  map.MarkWrite(4095, 2);  // straddles blocks 0 and 1
  map.MarkWrite((1 << 20) - 1, 1);
  map.SwitchForTake(1 << 20);
  auto read = ReadAll(map);
  EXPECT_EQ(read[0], 1);
  EXPECT_EQ(read[1], 1);
  EXPECT_EQ(read[2], 0);
  EXPECT_EQ(read[255], 1);
}

TEST(CbtMapTest, WrapsToNewGenerationBefore256) {
  CbtMap map(1 << 16, SmallBlocks());
  const Uuid first = map.info().generation_id;
  map.MarkWrite(0, 1);
  for (int i = 0; i < 254; ++i) map.SwitchForTake(1 << 16);
  EXPECT_EQ(map.info().changes_number, 254);
  EXPECT_EQ(map.active_snap_number(), 255);
  EXPECT_EQ(map.info().generation_id, first);
  map.SwitchForTake(1 << 16);  // active would reach 256: new generation, numbering restarts
  EXPECT_NE(map.info().generation_id, first);
  EXPECT_EQ(map.info().changes_number, 1);
  EXPECT_EQ(map.active_snap_number(), 2);
  for (uint8_t v : ReadAll(map)) EXPECT_EQ(v, 0);  // maps cleared
}

TEST(CbtMapTest, CapacityChangeOrCorruptionStartsNewGeneration) {
  CbtMap map(1 << 20, SmallBlocks());
  const Uuid g1 = map.info().generation_id;
  map.SwitchForTake(2 << 20);
  EXPECT_NE(map.info().generation_id, g1);
  EXPECT_EQ(map.info().device_capacity, 2u << 20);
  EXPECT_EQ(map.info().block_count, 512u);
  const Uuid g2 = map.info().generation_id;
  map.SwitchForTake(2 << 20);
  EXPECT_EQ(map.info().generation_id, g2);
  map.SetCorrupted();
  map.SwitchForTake(2 << 20);
  EXPECT_NE(map.info().generation_id, g2);
}

TEST(CbtMapTest, MarkBothSetsWriteToActiveAndReadToPrevious) {
  CbtMap map(1 << 20, SmallBlocks());
  map.SwitchForTake(1 << 20);  // previous 1, active 2
  ASSERT_TRUE(map.MarkBoth(4096 * 10, 4096 * 2).ok());
  auto read = ReadAll(map);
  EXPECT_EQ(read[10], 1);
  EXPECT_EQ(read[11], 1);
  EXPECT_EQ(read[12], 0);
  map.SwitchForTake(1 << 20);
  read = ReadAll(map);
  EXPECT_EQ(read[10], 2);
  EXPECT_EQ(map.MarkBoth(1 << 20, 1).errnum(), EINVAL);
}

TEST(CbtMapTest, ChangedExtentsMergesAndChecksGeneration) {
  CbtMap map((1 << 20) + 100, SmallBlocks());
  map.MarkWrite(0, 8192);
  map.MarkWrite(1 << 20, 50);  // the partial last block
  map.SwitchForTake((1 << 20) + 100);
  map.MarkWrite(16384, 1);
  map.SwitchForTake((1 << 20) + 100);
  auto all = map.ChangedExtents(0, std::nullopt);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(*all, (std::vector<ByteExtent>{{0, 8192}, {16384, 4096}, {1 << 20, 100}}));
  auto since1 = map.ChangedExtents(1, map.info().generation_id);
  ASSERT_TRUE(since1.ok());
  EXPECT_EQ(*since1, (std::vector<ByteExtent>{{16384, 4096}}));
  EXPECT_EQ(map.ChangedExtents(1, Uuid::Random()).status().errnum(), ESTALE);
}

TEST(CbtMapTest, ReadMapRejectsRangesPastTheEnd) {
  CbtMap map(1 << 20, SmallBlocks());
  std::vector<uint8_t> out(10);
  EXPECT_TRUE(map.ReadMap(246, out).ok());
  EXPECT_EQ(map.ReadMap(247, out).errnum(), EINVAL);
}

TEST(ConfigTest, ValidateCorrectsOrRefuses) {
  Config c;
  std::vector<std::string> warnings;
  EXPECT_TRUE(c.Validate(&warnings).ok());
  EXPECT_TRUE(warnings.empty());
  c.chunk_maximum_shift = 10;
  EXPECT_TRUE(c.Validate(&warnings).ok());
  EXPECT_EQ(c.chunk_maximum_shift, c.chunk_minimum_shift);
  EXPECT_EQ(warnings.size(), 1u);
  Config bad;
  bad.chunk_minimum_shift = 40;
  Status s = bad.Validate();
  EXPECT_EQ(s.errnum(), EINVAL);
  EXPECT_NE(s.message().find("chunk_minimum_shift"), std::string_view::npos);
  Config tiny;
  tiny.diff_storage_minimum = 1000;
  EXPECT_EQ(tiny.Validate().errnum(), EINVAL);
  Config no_storer;
  no_storer.chunk_storer_threads = 0;
  s = no_storer.Validate();
  EXPECT_EQ(s.errnum(), EINVAL);
  EXPECT_NE(s.message().find("chunk_storer_threads"), std::string_view::npos);
}

}  // namespace
}  // namespace blksnap
