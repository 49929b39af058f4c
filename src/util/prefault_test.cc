// Prefault: a prefaulted buffer keeps its bytes, and ResizePrefaulted is resize().
#include "util/prefault.h"

#include <gtest/gtest.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstring>
#include <numeric>

namespace blksnap {
namespace {

TEST(PrefaultTest, KeepsTheBytesOfAnUnalignedRange) {
  std::vector<uint8_t> v(3 * kPrefaultMinimum + 123);
  std::iota(v.begin(), v.end(), uint8_t{7});
  const std::vector<uint8_t> before = v;
  PrefaultForWrite(v.data() + 1, v.size() - 1);  // unaligned both ends: whole pages inside only
  EXPECT_EQ(v, before);
  PrefaultForWrite(nullptr, 1 << 20);  // no-ops, no crash
  PrefaultForWrite(v.data(), 10);
}

TEST(PrefaultTest, MakesAFreshMappingResident) {
  const size_t size = 64 * 4096;
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(p, MAP_FAILED);
  std::vector<unsigned char> resident(size / 4096);
  ASSERT_EQ(::mincore(p, size, resident.data()), 0);
  EXPECT_EQ(std::count(resident.begin(), resident.end(), 1), 0);
  PrefaultForWrite(p, size);
  ASSERT_EQ(::mincore(p, size, resident.data()), 0);
  // MADV_POPULATE_WRITE is Linux 5.14; CI and this project's machines have it.
  EXPECT_EQ(std::count_if(resident.begin(), resident.end(), [](unsigned char r) { return r & 1; }),
            static_cast<long>(resident.size()));
  ::munmap(p, size);
}

TEST(PrefaultTest, ResizeKeepsThePrefixAndZeroesTheRest) {
  for (size_t from : {size_t{0}, size_t{100}, size_t{5000}}) {
    for (size_t to : {size_t{0}, size_t{50}, kPrefaultMinimum - 1, kPrefaultMinimum * 5 + 17}) {
      std::vector<uint8_t> v(from, 0xab);
      ResizePrefaulted(v, to);
      ASSERT_EQ(v.size(), to);
      for (size_t i = 0; i < to; ++i) {
        ASSERT_EQ(v[i], i < from ? 0xab : 0) << from << " -> " << to << " at " << i;
      }
    }
  }
}

}  // namespace
}  // namespace blksnap
