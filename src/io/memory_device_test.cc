// Unit tests of MakeMemoryDevice: zero fill, sparse pages, trim, BlockStatus, concurrency.
#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "blksnap/io.h"
#include "testing/sector_pattern.h"

namespace blksnap {
namespace {

using testing::StampSectors;
using testing::VerifySectors;

constexpr uint64_t kPage = 64 * 1024;

TEST(MemoryDeviceTest, StartsZeroAndAllHole) {
  auto dev = MakeMemoryDevice(1 << 20);
  EXPECT_EQ(dev->size(), 1u << 20);
  EXPECT_EQ(dev->logical_block_size(), 512u);
  std::vector<uint8_t> buf(4096, 0xAA);
  ASSERT_TRUE(dev->Read(1000, buf).ok());
  EXPECT_EQ(buf, std::vector<uint8_t>(4096, 0));
  auto ext = dev->BlockStatus(0, 1 << 20);
  ASSERT_TRUE(ext.ok());
  ASSERT_EQ(ext->size(), 1u);
  EXPECT_EQ((*ext)[0], (Extent{0, 1 << 20, kExtentHole | kExtentZero}));
}

TEST(MemoryDeviceTest, PatternRoundTripAcrossPages) {
  auto dev = MakeMemoryDevice(4 << 20, 4096);
  EXPECT_EQ(dev->logical_block_size(), 4096u);
  std::vector<uint8_t> buf(3 * kPage + 1024);
  const uint64_t offset = kPage - 512;  // straddles four pages
  StampSectors(buf, offset / 512, 7);
  ASSERT_TRUE(dev->Write(offset, buf, 0).ok());
  std::vector<uint8_t> back(buf.size());
  ASSERT_TRUE(dev->Read(offset, back).ok());
  EXPECT_TRUE(VerifySectors(back, offset / 512, 7).ok());
  auto ext = dev->BlockStatus(0, 4 << 20);
  ASSERT_TRUE(ext.ok());
  ASSERT_EQ(ext->size(), 2u);  // pages 0-4 written, the rest never
  EXPECT_EQ((*ext)[0], (Extent{0, 5 * kPage, 0}));
  EXPECT_EQ((*ext)[1], (Extent{5 * kPage, (4 << 20) - 5 * kPage, kExtentHole | kExtentZero}));
}

TEST(MemoryDeviceTest, TrimFreesWholePagesAndZeroesPartialOnes) {
  auto dev = MakeMemoryDevice(1 << 20);
  std::vector<uint8_t> data(1 << 20, 0x5A);
  ASSERT_TRUE(dev->Write(0, data, 0).ok());
  // Trim from the middle of page 1 to the middle of page 3.
  ASSERT_TRUE(dev->Trim(kPage + 100, 2 * kPage).ok());
  std::vector<uint8_t> back(1 << 20);
  ASSERT_TRUE(dev->Read(0, back).ok());
  for (uint64_t i = 0; i < back.size(); ++i) {
    const bool trimmed = i >= kPage + 100 && i < 3 * kPage + 100;
    ASSERT_EQ(back[i], trimmed ? 0 : 0x5A) << "byte " << i;
  }
  auto ext = dev->BlockStatus(0, 1 << 20);
  ASSERT_TRUE(ext.ok());
  ASSERT_EQ(ext->size(), 3u);
  EXPECT_EQ((*ext)[1], (Extent{2 * kPage, kPage, kExtentHole | kExtentZero}));
}

TEST(MemoryDeviceTest, WriteZeroesNoHoleKeepsPages) {
  auto dev = MakeMemoryDevice(4 * kPage);
  std::vector<uint8_t> data(4 * kPage, 1);
  ASSERT_TRUE(dev->Write(0, data, 0).ok());
  ASSERT_TRUE(dev->WriteZeroes(0, 2 * kPage, kZeroNoHole).ok());
  ASSERT_TRUE(dev->WriteZeroes(2 * kPage, kPage, kZeroFast).ok());
  std::vector<uint8_t> back(4 * kPage);
  ASSERT_TRUE(dev->Read(0, back).ok());
  for (uint64_t i = 0; i < back.size(); ++i) ASSERT_EQ(back[i], i < 3 * kPage ? 0 : 1);
  auto ext = dev->BlockStatus(0, 4 * kPage);
  ASSERT_TRUE(ext.ok());
  ASSERT_EQ(ext->size(), 3u);
  EXPECT_EQ((*ext)[0], (Extent{0, 2 * kPage, 0}));
  EXPECT_EQ((*ext)[1], (Extent{2 * kPage, kPage, kExtentHole | kExtentZero}));
  EXPECT_EQ((*ext)[2], (Extent{3 * kPage, kPage, 0}));
}

TEST(MemoryDeviceTest, OutOfRangeIsEinvalAndTouchesNothing) {
  auto dev = MakeMemoryDevice(1 << 20);
  std::vector<uint8_t> buf(1024, 9);
  EXPECT_EQ(dev->Write((1 << 20) - 512, buf, 0).errnum(), EINVAL);
  EXPECT_EQ(dev->Read(1 << 20, std::span<uint8_t>(buf).first(1)).errnum(), EINVAL);
  EXPECT_EQ(dev->Trim(0, (1 << 20) + 1).errnum(), EINVAL);
  EXPECT_EQ(dev->WriteZeroes(UINT64_MAX, 2, 0).errnum(), EINVAL);
  EXPECT_TRUE(dev->Read(1 << 20, std::span<uint8_t>()).ok());
  auto ext = dev->BlockStatus(0, 1 << 20);
  ASSERT_TRUE(ext.ok());
  EXPECT_EQ(ext->size(), 1u);  // nothing was allocated by the refused write
}

TEST(MemoryDeviceTest, ShortLastPage) {
  const uint64_t size = kPage + 4096;
  auto dev = MakeMemoryDevice(size);
  std::vector<uint8_t> buf(4096);
  StampSectors(buf, kPage / 512, 3);
  ASSERT_TRUE(dev->Write(kPage, buf, kWriteFua).ok());
  ASSERT_TRUE(dev->Trim(kPage, 4096).ok());  // the whole short page: freed
  auto ext = dev->BlockStatus(0, size);
  ASSERT_TRUE(ext.ok());
  ASSERT_EQ(ext->size(), 1u);
  EXPECT_EQ((*ext)[0].length, size);
}

TEST(MemoryDeviceTest, HugeSparseDeviceIsCheap) {
  auto dev = MakeMemoryDevice(16ull << 40);  // 16 TiB: directory of 2 MiB
  std::vector<uint8_t> buf(512);
  StampSectors(buf, ((16ull << 40) - 512) / 512, 1);
  ASSERT_TRUE(dev->Write((16ull << 40) - 512, buf, 0).ok());
  std::vector<uint8_t> back(512);
  ASSERT_TRUE(dev->Read((16ull << 40) - 512, back).ok());
  EXPECT_TRUE(VerifySectors(back, ((16ull << 40) - 512) / 512, 1).ok());
}

TEST(MemoryDeviceTest, ConcurrentWritersAndTrimmers) {
  constexpr int kThreads = 8;
  constexpr uint64_t kRegion = 256 * 1024;  // 4 pages per thread, sub-page writes share pages
  auto dev = MakeMemoryDevice(kThreads * kRegion);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<uint8_t> buf(1536);
      for (int round = 0; round < 200; ++round) {
        for (uint64_t off = 0; off + buf.size() <= kRegion; off += buf.size()) {
          // Interleave threads within pages: thread t writes its own sectors only.
          const uint64_t pos = static_cast<uint64_t>(t) * kRegion + off;
          StampSectors(buf, pos / 512, round + 1);
          ASSERT_TRUE(dev->Write(pos, buf, 0).ok());
        }
        if (round % 50 == 49) {
          ASSERT_TRUE(dev->Trim(static_cast<uint64_t>(t) * kRegion, kRegion).ok());
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  // The last round (200) trimmed everything; write once more and verify.
  std::vector<uint8_t> back(kRegion);
  for (int t = 0; t < kThreads; ++t) {
    ASSERT_TRUE(dev->Read(static_cast<uint64_t>(t) * kRegion, back).ok());
    for (uint8_t b : back) ASSERT_EQ(b, 0);
  }
}

TEST(MemoryDeviceTest, ConcurrentDisjointWritesVerify) {
  constexpr int kThreads = 8;
  constexpr uint64_t kRegion = 1 << 20;
  auto dev = MakeMemoryDevice(kThreads * kRegion);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<uint8_t> buf(512);
      // Sector-interleaved: thread t owns sectors s with s % kThreads == t.
      for (uint64_t s = t; s < kThreads * kRegion / 512; s += kThreads) {
        StampSectors(buf, s, 100 + t);
        ASSERT_TRUE(dev->Write(s * 512, buf, 0).ok());
      }
    });
  }
  for (auto& th : threads) th.join();
  std::vector<uint8_t> back(512);
  for (uint64_t s = 0; s < kThreads * kRegion / 512; ++s) {
    ASSERT_TRUE(dev->Read(s * 512, back).ok());
    ASSERT_TRUE(VerifySectors(back, s, 100 + s % kThreads).ok()) << s;
  }
}

}  // namespace
}  // namespace blksnap
