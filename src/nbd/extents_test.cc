// Unit tests: block-status extent clipping and merging (base:allocation and blksnap:cbt).
#include "nbd/extents.h"

#include <gtest/gtest.h>

namespace blksnap::nbd {
namespace {

using V = std::vector<WireExtent>;

TEST(ExtentsTest, AllocationClipsAndMerges) {
  std::vector<Extent> ext = {{0, 4096, 0},
                             {4096, 4096, 0},
                             {8192, 8192, kExtentHole | kExtentZero},
                             {16384, 4096, kExtentHole | kExtentZero | 0x100},
                             {20480, 4096, 0}};
  // Request [1000, 1000 + 20000): first piece clipped, the two data extents merged, the unknown
  // flag bit dropped so the holes merge too, last piece clipped.
  EXPECT_EQ(AllocationExtents(ext, 1000, 20000, 100),
            (V{{7192, 0}, {12288, 3}, {1000 + 20000 - 20480, 0}}));
}

TEST(ExtentsTest, AllocationFillsGapsAndStopsAtMax) {
  std::vector<Extent> ext = {{0, 512, 3}, {1024, 512, 3}, {1536, 512, 0}};
  EXPECT_EQ(AllocationExtents(ext, 0, 2048, 100), (V{{512, 3}, {512, 0}, {512, 3}, {512, 0}}));
  EXPECT_EQ(AllocationExtents(ext, 0, 2048, 2), (V{{512, 3}, {512, 0}}));
  // A device that does not start at offset yields nothing (the caller reports plain data).
  EXPECT_TRUE(AllocationExtents(ext, 600, 100, 10).empty());
  std::vector<Extent> late = {{1024, 512, 3}};
  EXPECT_TRUE(AllocationExtents(late, 0, 2048, 10).empty());
}

TEST(ExtentsTest, CbtMergesRunsOfEqualBytes) {
  const uint8_t map[] = {0, 0, 3, 3, 3, 1, 0};
  // Block size 4096; request covers blocks 0..6 fully.
  EXPECT_EQ(CbtExtents(map, 0, 4096, 0, 7 * 4096, 100),
            (V{{8192, 0}, {12288, 3}, {4096, 1}, {4096, 0}}));
  // Unaligned request [100, 100 + 3 * 4096) starting in block 0.
  EXPECT_EQ(CbtExtents(map, 0, 4096, 100, 3 * 4096, 100), (V{{8092, 0}, {4196, 3}}));
  // Map starting at block 2 for a request at block 2.
  EXPECT_EQ(CbtExtents(std::span<const uint8_t>(map + 2, 3), 2, 4096, 2 * 4096, 4096 * 3, 100),
            (V{{12288, 3}}));
  // Max extents.
  EXPECT_EQ(CbtExtents(map, 0, 4096, 0, 7 * 4096, 2), (V{{8192, 0}, {12288, 3}}));
  // A short map ends the list early.
  EXPECT_EQ(CbtExtents(std::span<const uint8_t>(map, 1), 0, 4096, 0, 7 * 4096, 10), (V{{4096, 0}}));
}

TEST(ExtentsTest, KeepFirst) {
  V v{{1, 1}, {2, 2}};
  KeepFirstExtent(&v);
  EXPECT_EQ(v, (V{{1, 1}}));
}

}  // namespace
}  // namespace blksnap::nbd
