// Chunk geometry, the CLOCK chunk cache and the storer's queue and throttling, each alone.
#include "engine/chunk.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "engine/chunk_cache.h"
#include "engine/storer.h"
#include "util/mutex.h"

namespace blksnap {
namespace {

TEST(ChunkGeometryTest, MapsIndexesToByteRangesWithAShortLastChunk) {
  Config config;  // chunk_minimum_shift 18: 256 KiB
  const ChunkGeometry g = ComputeChunkGeometry(3 * (1ull << 18) + 4096, 512, config);
  EXPECT_EQ(g.shift, 18u);
  EXPECT_EQ(g.size(), 1ull << 18);
  EXPECT_EQ(g.count, 4u);
  EXPECT_EQ(g.length(0), 1ull << 18);
  EXPECT_EQ(g.length(3), 4096u);
  EXPECT_EQ(g.offset(3), 3ull << 18);
  EXPECT_EQ(g.index((3ull << 18) + 100), 3u);
  EXPECT_EQ(g.index((1ull << 18) - 1), 0u);
  EXPECT_EQ(g.in_chunk((2ull << 18) + 7), 7u);
}

TEST(ChunkGeometryTest, GrowsForLargeIoAndManyChunksWithinTheMaximum) {
  Config config;
  EXPECT_EQ(ComputeChunkGeometry(1ull << 30, 1u << 20, config).shift, 20u);  // at least io size
  config.chunk_maximum_count_shift = 4;                                      // 16 chunks at most
  EXPECT_EQ(ComputeChunkGeometry(1ull << 30, 512, config).shift, 26u);       // capped by maximum
  EXPECT_EQ(ComputeChunkGeometry(16ull << 18, 512, config).shift, 18u);
  EXPECT_EQ(ComputeChunkGeometry((16ull << 18) + 1, 512, config).shift, 19u);
}

TEST(ChunkCacheTest, ClockEvictsTheFirstChunkNotReadSinceTheHandPassed) {
  ChunkCache cache(3);
  std::vector<Chunk> chunks(5);
  for (uint64_t i = 0; i < 3; ++i) EXPECT_EQ(cache.Insert(i, &chunks[i]).second, nullptr);
  EXPECT_EQ(cache.size(), 3u);
  cache.Touch(&chunks[0]);  // read: spared once
  auto victim = cache.Insert(3, &chunks[3]);
  EXPECT_EQ(victim.first, 1u);
  EXPECT_EQ(victim.second, &chunks[1]);
  EXPECT_FALSE(chunks[1].cached);
  EXPECT_FALSE(chunks[0].referenced);  // the hand cleared it
  cache.Touch(&chunks[1]);             // not cached any more: no effect
  EXPECT_FALSE(chunks[1].referenced);
  victim = cache.Insert(4, &chunks[4]);
  EXPECT_EQ(victim.first, 2u);
  EXPECT_EQ(cache.size(), 3u);
  cache.Clear();
  EXPECT_EQ(cache.size(), 0u);
}

TEST(ChunkStorerTest, StoresQueuedChunksAndThrottlesAtTheQueueLimit) {
  Config config;
  config.chunk_maximum_in_queue = 2;
  config.chunk_storer_threads = 2;
  Mutex mu;
  CondVar cv;
  bool release = false;
  std::atomic<int> stored{0};
  ChunkStorer storer(config, [&](uint64_t, Chunk*) {
    MutexLock lock(mu);
    while (!release) cv.Wait(mu);
    ++stored;
  });
  std::vector<Chunk> chunks(3);
  ASSERT_TRUE(storer.AcquireSlot());
  storer.Enqueue(0, &chunks[0]);
  ASSERT_TRUE(storer.AcquireSlot());
  storer.Enqueue(1, &chunks[1]);
  EXPECT_EQ(storer.in_queue(), 2u);
  std::atomic<bool> third{false};
  std::thread writer([&] {
    if (storer.AcquireSlot()) {
      third = true;
      storer.ReleaseSlot();
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(third.load()) << "a third copy must wait for a free slot";
  {
    MutexLock lock(mu);
    release = true;
    cv.SignalAll();
  }
  writer.join();
  EXPECT_TRUE(third.load());
  storer.WaitIdle();
  EXPECT_EQ(stored.load(), 2);
  EXPECT_EQ(storer.in_queue(), 0u);
}

TEST(ChunkStorerTest, FailReleasesThrottledCopiesAndStopRefusesSlots) {
  Config config;
  config.chunk_maximum_in_queue = 1;
  ChunkStorer storer(config, [](uint64_t, Chunk*) {});
  ASSERT_TRUE(storer.AcquireSlot());  // the only slot, never released
  std::atomic<int> refused{0};
  std::thread writer([&] {
    if (!storer.AcquireSlot()) ++refused;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  storer.Fail();
  writer.join();
  EXPECT_EQ(refused.load(), 1);
  EXPECT_TRUE(storer.Stop());
  EXPECT_FALSE(storer.Stop());
  EXPECT_FALSE(storer.AcquireSlot());
}

}  // namespace
}  // namespace blksnap
