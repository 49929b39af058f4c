// Prefault: a prefaulted buffer keeps its bytes, and ResizePrefaulted is resize().
#include "util/prefault.h"

#include <gtest/gtest.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <numeric>
#include <string>

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

// The AnonHugePages of the mapping holding p, in KiB (-1: not found).
long AnonHugeKiBAt(const void* p) {
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool inside = false;
  const auto at = reinterpret_cast<uintptr_t>(p);
  while (std::getline(smaps, line)) {
    unsigned long lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2 && line.find(':') > 20) {
      inside = lo <= at && at < hi;
    } else if (inside && line.rfind("AnonHugePages:", 0) == 0) {
      return std::stol(line.substr(14));
    }
  }
  return -1;
}

TEST(PrefaultTest, AskForHugePagesForWholeHugeRanges) {
  std::ifstream thp("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string setting;
  std::getline(thp, setting);
  if (setting.empty() || setting.find("[never]") != std::string::npos) {
    GTEST_SKIP() << "no transparent huge pages here: '" << setting << "'";
  }
  void* p = nullptr;
  ASSERT_EQ(::posix_memalign(&p, kHugePageSize, 2 * kHugePageSize + 4096), 0);
  PrefaultForWrite(p, 2 * kHugePageSize + 4096, /*huge=*/true);
  EXPECT_GE(AnonHugeKiBAt(p), 2048) << "THP setting: " << setting;
  std::memset(p, 1, 2 * kHugePageSize + 4096);
  std::free(p);
}

TEST(PrefaultTest, MapHugeAlignedStartsOnAHugePageAndGetsOne) {
  std::ifstream thp("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string setting;
  std::getline(thp, setting);
  for (size_t bytes : {size_t{4096}, kHugePageSize, 3 * kHugePageSize + 8192}) {
    auto* p = static_cast<uint8_t*>(MapHugeAligned(bytes));
    ASSERT_NE(p, nullptr) << bytes;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % kHugePageSize, 0u) << bytes;
    std::memset(p, 7, bytes);  // all of it mapped, writable
    EXPECT_EQ(p[bytes - 1], 7);
    if (bytes >= kHugePageSize && !setting.empty() &&
        setting.find("[never]") == std::string::npos) {
      EXPECT_GE(AnonHugeKiBAt(p), 2048) << "THP setting: " << setting;
    }
    EXPECT_EQ(::munmap(p, bytes), 0);
  }
  EXPECT_EQ(MapHugeAligned(0), nullptr);
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
