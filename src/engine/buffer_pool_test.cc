#include "engine/buffer_pool.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>
#include <string>
#include <vector>

namespace blksnap {
namespace {

// Pages of [p, p + bytes) resident in memory.
size_t Resident(const uint8_t* p, size_t bytes) {
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> vec((bytes + page - 1) / page);
  EXPECT_EQ(::mincore(const_cast<uint8_t*>(p), bytes, vec.data()), 0);
  size_t n = 0;
  for (unsigned char v : vec) n += v & 1;
  return n;
}

// The VmFlags of the mapping holding p (/proc/self/smaps), empty if not found.
std::string VmFlagsAt(const void* p) {
  std::ifstream smaps("/proc/self/smaps");
  const auto at = reinterpret_cast<uintptr_t>(p);
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    unsigned long begin, end;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &begin, &end) == 2 && line.find(' ') < 30) {
      inside = at >= begin && at < end;
    } else if (inside && line.rfind("VmFlags:", 0) == 0) {
      return line.substr(8) + " ";
    }
  }
  return "";
}

TEST(BufferPoolTest, RecyclesUpToTheBoundAndReleasesTheRest) {
  BufferPool pool(256 * 1024, 2);
  std::vector<uint8_t*> buffers;
  for (int i = 0; i < 5; ++i) {
    uint8_t* b = pool.Get();
    ASSERT_NE(b, nullptr);
    std::memset(b, i + 1, pool.buffer_size());  // the whole buffer is usable
    buffers.push_back(b);
  }
  for (uint8_t* b : buffers) pool.Put(b);
  EXPECT_EQ(pool.free_count(), 2u);
  EXPECT_EQ(pool.released_count(), 3u);
  // The released ones hold no memory any more; the kept ones do.
  for (int i = 2; i < 5; ++i) EXPECT_EQ(Resident(buffers[i], pool.buffer_size()), 0u) << i;
  EXPECT_GT(Resident(buffers[0], pool.buffer_size()), 0u);
  for (int i = 0; i < 2; ++i) EXPECT_EQ(buffers[i][pool.buffer_size() - 1], i + 1) << i;
  // Their slab is no huge-page candidate any more (khugepaged would make them resident again).
  EXPECT_NE(VmFlagsAt(buffers[2]).find(" nh "), std::string::npos) << VmFlagsAt(buffers[2]);
  uint8_t* again = pool.Get();  // a resident one first
  EXPECT_TRUE(again == buffers[0] || again == buffers[1]);
  EXPECT_EQ(pool.free_count(), 1u);
  pool.Put(again);
  pool.Put(nullptr);
  EXPECT_EQ(pool.free_count(), 2u);
  // Then the released ones, usable again; no new memory is mapped while any is left.
  std::set<uint8_t*> known(buffers.begin(), buffers.end());
  for (int i = 0; i < 5; ++i) {
    uint8_t* b = pool.Get();
    ASSERT_TRUE(known.count(b)) << i;
    std::memset(b, 0x5a, pool.buffer_size());
  }
  EXPECT_EQ(pool.free_count(), 0u);
  EXPECT_EQ(pool.released_count(), 0u);
}

TEST(BufferPoolTest, CarvesDistinctBuffersFromHugePageAlignedSlabs) {
  constexpr size_t kSize = 64 * 1024;
  BufferPool pool(kSize, 0);
  constexpr size_t kPerSlab = BufferPool::kSlabBytes / kSize;
  std::vector<uint8_t*> buffers;
  for (size_t i = 0; i < kPerSlab + 3; ++i) buffers.push_back(pool.Get());
  std::set<uint8_t*> distinct(buffers.begin(), buffers.end());
  EXPECT_EQ(distinct.size(), buffers.size());
  for (uint8_t* b : buffers) {
    ASSERT_NE(b, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b) % kSize, 0u);
  }
  // The first buffer of each slab starts a huge page; the others follow it.
  EXPECT_EQ(reinterpret_cast<uintptr_t>(buffers[0]) % BufferPool::kSlabBytes, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(buffers[kPerSlab]) % BufferPool::kSlabBytes, 0u);
  EXPECT_EQ(buffers[kPerSlab - 1], buffers[0] + (kPerSlab - 1) * kSize);
  for (size_t i = 0; i < buffers.size(); ++i) std::memset(buffers[i], static_cast<int>(i), kSize);
  for (size_t i = 0; i < buffers.size(); ++i) {
    EXPECT_EQ(buffers[i][0], static_cast<uint8_t>(i));
    EXPECT_EQ(buffers[i][kSize - 1], static_cast<uint8_t>(i));
  }
  for (uint8_t* b : buffers) pool.Put(b);
  EXPECT_EQ(pool.released_count(), buffers.size());
}

TEST(BufferPoolTest, BuffersSmallerThanAPageGetAPageEach) {
  // 512-byte chunks: giving one back must not wipe the ones next to it (the kernel drops whole
  // pages), some of which may hold a chunk's only copy.
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  BufferPool pool(512, 0);
  std::vector<uint8_t*> buffers;
  for (int i = 0; i < 16; ++i) {
    uint8_t* b = pool.Get();
    ASSERT_NE(b, nullptr);
    std::memset(b, i + 1, pool.buffer_size());
    buffers.push_back(b);
  }
  for (size_t i = 1; i < buffers.size(); ++i)
    EXPECT_GE(buffers[i] - buffers[i - 1], static_cast<std::ptrdiff_t>(page));
  for (size_t i = 0; i < buffers.size(); i += 2) pool.Put(buffers[i]);  // released: max_free 0
  EXPECT_EQ(pool.released_count(), 8u);
  for (size_t i = 1; i < buffers.size(); i += 2) {
    for (size_t j = 0; j < pool.buffer_size(); ++j) {
      ASSERT_EQ(buffers[i][j], static_cast<uint8_t>(i + 1)) << "buffer " << i << " byte " << j;
    }
  }
}

TEST(BufferPoolTest, BuffersLargerThanASlabAreSlabsOfTheirOwn) {
  constexpr size_t kSize = 2 * BufferPool::kSlabBytes;
  BufferPool pool(kSize, 1);
  uint8_t* a = pool.Get();
  uint8_t* b = pool.Get();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a) % BufferPool::kSlabBytes, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b) % BufferPool::kSlabBytes, 0u);
  EXPECT_TRUE(b >= a + kSize || a >= b + kSize);
  std::memset(a, 1, kSize);
  std::memset(b, 2, kSize);
  EXPECT_EQ(a[kSize - 1], 1);
  pool.Put(a);
  pool.Put(b);
  EXPECT_EQ(pool.free_count(), 1u);
  EXPECT_EQ(pool.released_count(), 1u);
}

}  // namespace
}  // namespace blksnap
