// Unit tests of OpenFileDevice on real files in a temporary directory, with both engines and
// with and without O_DIRECT, plus a loop device for the block-device path when available.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "blksnap/io.h"
#include "testing/sector_pattern.h"
#include "util/test_loop.h"

namespace blksnap {
namespace {

using testing::StampSectors;
using testing::VerifySectors;

// TSan cannot see liburing's raw mmap/munmap of ring memory, so a new thread's ring mapped where
// an exited thread's was reads as a race. TSan builds run the psync engine only.
#if defined(__SANITIZE_THREAD__)
constexpr bool kThreadSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
constexpr bool kThreadSanitizer = true;
#else
constexpr bool kThreadSanitizer = false;
#endif
#else
constexpr bool kThreadSanitizer = false;
#endif

#define SKIP_IO_URING_UNDER_TSAN(engine)                                                  \
  do {                                                                                    \
    if (kThreadSanitizer && (engine) == IoEngine::kIoUring) {                             \
      GTEST_SKIP() << "io_uring is not checked under TSan (kernel writes are invisible)"; \
    }                                                                                     \
  } while (0)

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/var/tmp/blksnap-io-test.XXXXXX";
    const char* p = ::mkdtemp(tmpl);
    if (p) path_ = p;
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Creates a file of `size` bytes (sparse) and returns its path.
std::string MakeFile(const TempDir& dir, const std::string& name, uint64_t size) {
  const std::string path = dir.path() + "/" + name;
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
  EXPECT_GE(fd, 0);
  EXPECT_EQ(::ftruncate(fd, static_cast<off_t>(size)), 0);
  ::close(fd);
  return path;
}

struct Mode {
  IoEngine engine;
  bool direct;
};

std::string ModeName(const ::testing::TestParamInfo<Mode>& info) {
  return std::string(info.param.engine == IoEngine::kIoUring ? "IoUring" : "Psync") +
         (info.param.direct ? "Direct" : "Buffered");
}

class FileDeviceTest : public ::testing::TestWithParam<Mode> {
 protected:
  void SetUp() override {
    SKIP_IO_URING_UNDER_TSAN(GetParam().engine);
    ASSERT_FALSE(dir_.path().empty());
  }

  std::shared_ptr<BlockDevice> Open(const std::string& path, bool read_only = false) {
    FileOpenOptions options;
    options.direct = GetParam().direct;
    options.engine = GetParam().engine;
    options.read_only = read_only;
    auto dev = OpenFileDevice(path, options);
    EXPECT_TRUE(dev.ok()) << dev.status().ToString();
    if (!dev.ok()) return nullptr;
    EXPECT_EQ(FileDeviceEngineName(**dev),
              GetParam().engine == IoEngine::kIoUring ? "io_uring" : "psync");
    return *dev;
  }

  TempDir dir_;
};

TEST_P(FileDeviceTest, AlignedPatternRoundTrip) {
  const std::string path = MakeFile(dir_, "a.img", 8 << 20);
  auto dev = Open(path);
  ASSERT_TRUE(dev);
  EXPECT_EQ(dev->size(), 8u << 20);
  // Page-aligned buffer so O_DIRECT goes straight through.
  std::unique_ptr<uint8_t, decltype(&std::free)> mem(
      static_cast<uint8_t*>(std::aligned_alloc(4096, 1 << 20)), &std::free);
  std::span<uint8_t> buf(mem.get(), 1 << 20);
  StampSectors(buf, (2 << 20) / 512, 11);
  ASSERT_TRUE(dev->Write(2 << 20, buf, 0).ok());
  ASSERT_TRUE(dev->Flush().ok());
  std::fill(buf.begin(), buf.end(), 0xEE);
  ASSERT_TRUE(dev->Read(2 << 20, buf).ok());
  EXPECT_TRUE(VerifySectors(buf, (2 << 20) / 512, 11).ok());

  // Reopen: the data reached the file.
  dev.reset();
  dev = Open(path);
  ASSERT_TRUE(dev);
  std::fill(buf.begin(), buf.end(), 0);
  ASSERT_TRUE(dev->Read(2 << 20, buf).ok());
  EXPECT_TRUE(VerifySectors(buf, (2 << 20) / 512, 11).ok());
}

TEST_P(FileDeviceTest, UnalignedRoundTrips) {
  const std::string path = MakeFile(dir_, "u.img", 4 << 20);
  auto dev = Open(path);
  ASSERT_TRUE(dev);
  // Background pattern, sequence 1, over the whole device.
  std::vector<uint8_t> all(4 << 20);
  StampSectors(all, 0, 1);
  ASSERT_TRUE(dev->Write(0, all, 0).ok());

  // Sector-aligned offsets and lengths that are not 4 KiB-aligned, from a buffer at an odd
  // address, and spanning more than one bounce window.
  struct Case {
    uint64_t offset;
    size_t length;
  };
  const Case cases[] = {{512, 512},
                        {3584, 1024},
                        {4096 + 512, 7 * 512},
                        {(1 << 20) - 1536, (1 << 20) + 3072},
                        {(4 << 20) - 512, 512}};
  uint64_t seq = 2;
  for (const Case& c : cases) {
    std::vector<uint8_t> storage(c.length + 1);
    std::span<uint8_t> buf(storage.data() + 1, c.length);  // misaligned address
    StampSectors(buf, c.offset / 512, seq);
    ASSERT_TRUE(dev->Write(c.offset, buf, seq % 2 ? kWriteFua : 0).ok()) << c.offset;
    StampSectors(std::span<uint8_t>(all).subspan(c.offset, c.length), c.offset / 512, seq);
    std::fill(buf.begin(), buf.end(), 0);
    ASSERT_TRUE(dev->Read(c.offset, buf).ok());
    EXPECT_TRUE(VerifySectors(buf, c.offset / 512, seq).ok()) << c.offset;
    ++seq;
  }
  // Neighbours survived the read-modify-writes: compare sector by sector with the model.
  std::vector<uint8_t> back(all.size());
  ASSERT_TRUE(dev->Read(0, back).ok());
  for (uint64_t s = 0; s < all.size() / 512; ++s) {
    const auto got = std::span<const uint8_t>(back).subspan(s * 512, 512);
    const auto want = testing::InspectSector(std::span<const uint8_t>(all).subspan(s * 512, 512));
    ASSERT_TRUE(VerifySectors(got, s, want.sequence).ok()) << "sector " << s;
  }

  // Byte-granular I/O (not even sector-aligned).
  std::vector<uint8_t> bytes = {1, 2, 3, 4, 5, 6, 7};
  ASSERT_TRUE(dev->Write(4095, bytes, 0).ok());
  std::vector<uint8_t> got(7);
  ASSERT_TRUE(dev->Read(4095, got).ok());
  EXPECT_EQ(got, bytes);
}

TEST_P(FileDeviceTest, UnalignedFileSizeTail) {
  const uint64_t size = (1 << 20) + 1000;  // not a multiple of any block size
  const std::string path = MakeFile(dir_, "t.img", size);
  auto dev = Open(path);
  ASSERT_TRUE(dev);
  EXPECT_EQ(dev->size(), size);
  std::vector<uint8_t> tail(1000 + 24);
  for (size_t i = 0; i < tail.size(); ++i) tail[i] = static_cast<uint8_t>(i * 7 + 1);
  ASSERT_TRUE(dev->Write(size - tail.size(), tail, kWriteFua).ok());
  std::vector<uint8_t> back(tail.size());
  ASSERT_TRUE(dev->Read(size - back.size(), back).ok());
  EXPECT_EQ(back, tail);
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), size);  // the file did not grow
}

TEST_P(FileDeviceTest, ConcurrentWritersDisjointRegions) {
  constexpr int kThreads = 8;
  constexpr uint64_t kRegion = 1 << 20;
  const std::string path = MakeFile(dir_, "c.img", kThreads * kRegion);
  auto dev = Open(path);
  ASSERT_TRUE(dev);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(t);
      // Random sector-granular pieces inside the thread's region, many of them unaligned.
      for (int i = 0; i < 100; ++i) {
        const uint64_t sectors = 1 + rng() % 64;
        const uint64_t first = rng() % (kRegion / 512 - sectors);
        std::vector<uint8_t> buf(sectors * 512);
        const uint64_t pos = t * kRegion + first * 512;
        StampSectors(buf, pos / 512, 1);
        ASSERT_TRUE(dev->Write(pos, buf, 0).ok());
      }
      // Then the whole region, in 12 KiB pieces, final content.
      std::vector<uint8_t> buf(12 * 1024);
      for (uint64_t off = 0; off < kRegion; off += buf.size()) {
        const size_t n = std::min<uint64_t>(buf.size(), kRegion - off);
        auto piece = std::span<uint8_t>(buf).first(n);
        StampSectors(piece, (t * kRegion + off) / 512, 50 + t);
        ASSERT_TRUE(dev->Write(t * kRegion + off, piece, 0).ok());
      }
    });
  }
  for (auto& th : threads) th.join();
  ASSERT_TRUE(dev->Flush().ok());
  std::vector<uint8_t> back(kRegion);
  for (int t = 0; t < kThreads; ++t) {
    ASSERT_TRUE(dev->Read(t * kRegion, back).ok());
    EXPECT_TRUE(VerifySectors(back, t * kRegion / 512, 50 + t).ok()) << "thread " << t;
  }
}

TEST_P(FileDeviceTest, ConcurrentUnalignedWritersSharingBlocks) {
  // 8 threads write interleaved 512-byte sectors: with O_DIRECT on a 4 KiB-aligned file every
  // write is a read-modify-write of a block that other threads write too.
  constexpr int kThreads = 8;
  constexpr uint64_t kSectors = 2048;
  const std::string path = MakeFile(dir_, "s.img", kSectors * 512);
  auto dev = Open(path);
  ASSERT_TRUE(dev);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<uint8_t> buf(512);
      for (uint64_t s = t; s < kSectors; s += kThreads) {
        StampSectors(buf, s, 200 + t);
        ASSERT_TRUE(dev->Write(s * 512, buf, 0).ok());
      }
    });
  }
  for (auto& th : threads) th.join();
  std::vector<uint8_t> back(kSectors * 512);
  ASSERT_TRUE(dev->Read(0, back).ok());
  for (uint64_t s = 0; s < kSectors; ++s) {
    ASSERT_TRUE(
        VerifySectors(std::span<const uint8_t>(back).subspan(s * 512, 512), s, 200 + s % kThreads)
            .ok())
        << "sector " << s;
  }
}

TEST_P(FileDeviceTest, TrimZeroesAndBlockStatus) {
  constexpr uint64_t kMiB = 1 << 20;
  const std::string path = MakeFile(dir_, "z.img", 8 * kMiB);
  auto dev = Open(path);
  ASSERT_TRUE(dev);
  EXPECT_TRUE(dev->capabilities().block_status);
  EXPECT_TRUE(dev->capabilities().fast_zero);

  auto ext = dev->BlockStatus(0, 8 * kMiB);
  ASSERT_TRUE(ext.ok());
  ASSERT_EQ(ext->size(), 1u);
  EXPECT_EQ((*ext)[0], (Extent{0, 8 * kMiB, kExtentHole | kExtentZero}));

  std::vector<uint8_t> data(4 * kMiB);
  StampSectors(data, kMiB / 512, 5);
  ASSERT_TRUE(dev->Write(kMiB, data, 0).ok());  // data in [1, 5) MiB
  ASSERT_TRUE(dev->Flush().ok());
  ext = dev->BlockStatus(0, 8 * kMiB);
  ASSERT_TRUE(ext.ok());
  ASSERT_EQ(ext->size(), 3u);
  EXPECT_EQ((*ext)[0], (Extent{0, kMiB, kExtentHole | kExtentZero}));
  EXPECT_EQ((*ext)[1], (Extent{kMiB, 4 * kMiB, 0}));
  EXPECT_EQ((*ext)[2], (Extent{5 * kMiB, 3 * kMiB, kExtentHole | kExtentZero}));

  auto allocated = [&] {
    struct stat st;
    EXPECT_EQ(::stat(path.c_str(), &st), 0);
    return static_cast<uint64_t>(st.st_blocks) * 512;
  };
  const uint64_t allocated_before = allocated();
  EXPECT_GE(allocated_before, 4 * kMiB);
  // Allocation checks allow for filesystem metadata blocks (extent tree splits).
  constexpr uint64_t kSlack = 64 * 1024;
  // Trim [2, 3) MiB: a hole; reads zero.
  ASSERT_TRUE(dev->Trim(2 * kMiB, kMiB).ok());
  const uint64_t allocated_after_trim = allocated();
  EXPECT_LE(allocated_after_trim, allocated_before - kMiB + kSlack);
  // Write-zeroes keeping allocation [3, 3.5) MiB, and punching [4, 4.5) MiB.
  ASSERT_TRUE(dev->WriteZeroes(3 * kMiB, kMiB / 2, kZeroNoHole).ok());
  const uint64_t allocated_after_zero = allocated();
  EXPECT_GE(allocated_after_zero + kSlack, allocated_after_trim);  // still allocated
  ASSERT_TRUE(dev->WriteZeroes(4 * kMiB, kMiB / 2, kZeroFast).ok());
  EXPECT_LE(allocated(), allocated_after_zero - kMiB / 2 + kSlack);  // punched
  // Unaligned write-zeroes in the middle of a sector.
  ASSERT_TRUE(dev->WriteZeroes(kMiB + 100, 300, 0).ok());

  std::vector<uint8_t> back(4 * kMiB);
  ASSERT_TRUE(dev->Read(kMiB, back).ok());
  for (uint64_t i = 0; i < back.size(); ++i) {
    const uint64_t pos = kMiB + i;
    const bool zero = (pos >= kMiB + 100 && pos < kMiB + 400) ||
                      (pos >= 2 * kMiB && pos < 3 * kMiB + kMiB / 2) ||
                      (pos >= 4 * kMiB && pos < 4 * kMiB + kMiB / 2);
    if (zero) {
      ASSERT_EQ(back[i], 0) << pos;
    } else {
      ASSERT_EQ(back[i], data[i]) << pos;
    }
  }

  ext = dev->BlockStatus(0, 8 * kMiB);
  ASSERT_TRUE(ext.ok());
  auto flags_at = [&](uint64_t pos) -> int {
    for (const Extent& e : *ext) {
      if (pos >= e.offset && pos < e.offset + e.length) return static_cast<int>(e.flags);
    }
    return -1;
  };
  EXPECT_EQ(flags_at(2 * kMiB + 4096), kExtentHole | kExtentZero);  // trimmed
  // Zeroed but kept allocated: ext4 reports its unwritten extents as holes, so either is fine
  // as long as a hole is also flagged zero.
  EXPECT_NE(flags_at(3 * kMiB + 4096), kExtentHole);
  EXPECT_EQ(flags_at(4 * kMiB + 4096), kExtentHole | kExtentZero);  // zeroed by punch
  EXPECT_EQ(flags_at(kMiB + 4096), 0);
  // Extents are contiguous and cover the request.
  uint64_t pos = 0;
  for (const Extent& e : *ext) {
    EXPECT_EQ(e.offset, pos);
    pos += e.length;
  }
  EXPECT_EQ(pos, 8 * kMiB);

  // A sub-range query starts at its offset.
  ext = dev->BlockStatus(2 * kMiB + 512, 1024);
  ASSERT_TRUE(ext.ok());
  ASSERT_FALSE(ext->empty());
  EXPECT_EQ((*ext)[0], (Extent{2 * kMiB + 512, 1024, kExtentHole | kExtentZero}));
}

TEST_P(FileDeviceTest, OutOfRangeIsEinval) {
  const std::string path = MakeFile(dir_, "r.img", 1 << 20);
  auto dev = Open(path);
  ASSERT_TRUE(dev);
  std::vector<uint8_t> buf(4096);
  EXPECT_EQ(dev->Read((1 << 20) - 512, buf).errnum(), EINVAL);
  EXPECT_EQ(dev->Write(1 << 20, std::span<const uint8_t>(buf).first(1), 0).errnum(), EINVAL);
  EXPECT_EQ(dev->Trim(UINT64_MAX - 10, 100).errnum(), EINVAL);
  EXPECT_EQ(dev->WriteZeroes(0, (1 << 20) + 1, 0).errnum(), EINVAL);
  EXPECT_EQ(dev->BlockStatus(1 << 20, 1).status().errnum(), EINVAL);
  EXPECT_TRUE(dev->Read(1 << 20, std::span<uint8_t>()).ok());
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 1 << 20);
}

TEST_P(FileDeviceTest, GrownFileIsSeen) {
  const std::string path = MakeFile(dir_, "g.img", 1 << 20);
  auto dev = Open(path);
  ASSERT_TRUE(dev);
  ASSERT_EQ(::truncate(path.c_str(), 2 << 20), 0);
  std::vector<uint8_t> buf(4096);
  StampSectors(buf, (1 << 20) / 512, 4);
  EXPECT_TRUE(dev->Write(1 << 20, buf, 0).ok());
  EXPECT_EQ(dev->size(), 2u << 20);
}

TEST_P(FileDeviceTest, ReadOnlyRefusesWrites) {
  const std::string path = MakeFile(dir_, "ro.img", 1 << 20);
  auto dev = Open(path, /*read_only=*/true);
  ASSERT_TRUE(dev);
  EXPECT_TRUE(dev->capabilities().read_only);
  std::vector<uint8_t> buf(4096);
  EXPECT_EQ(dev->Write(0, buf, 0).errnum(), EROFS);
  EXPECT_EQ(dev->Trim(0, 4096).errnum(), EROFS);
  EXPECT_EQ(dev->WriteZeroes(0, 4096, 0).errnum(), EROFS);
  EXPECT_TRUE(dev->Read(0, buf).ok());
  EXPECT_TRUE(dev->Flush().ok());
}

INSTANTIATE_TEST_SUITE_P(Engines, FileDeviceTest,
                         ::testing::Values(Mode{IoEngine::kIoUring, false},
                                           Mode{IoEngine::kIoUring, true},
                                           Mode{IoEngine::kPsync, false},
                                           Mode{IoEngine::kPsync, true}),
                         ModeName);

TEST(FileDeviceOpenTest, MissingFileAndDirectoryFail) {
  TempDir dir;
  auto missing = OpenFileDevice(dir.path() + "/nope");
  EXPECT_EQ(missing.status().errnum(), ENOENT);
  auto directory = OpenFileDevice(dir.path());
  EXPECT_FALSE(directory.ok());
}

TEST(FileDeviceOpenTest, EngineSelectionFromEnvironment) {
  TempDir dir;
  const std::string path = MakeFile(dir, "e.img", 1 << 20);
  ASSERT_EQ(::setenv("BLKSNAP_IO_ENGINE", "psync", 1), 0);
  auto dev = OpenFileDevice(path);
  ASSERT_TRUE(dev.ok());
  EXPECT_EQ(FileDeviceEngineName(**dev), "psync");
  ASSERT_EQ(::setenv("BLKSNAP_IO_ENGINE", "io_uring", 1), 0);
  dev = OpenFileDevice(path);
  ASSERT_TRUE(dev.ok());
  EXPECT_EQ(FileDeviceEngineName(**dev), "io_uring");
  ::unsetenv("BLKSNAP_IO_ENGINE");
  FileOpenOptions uring_options;
  uring_options.engine = IoEngine::kIoUring;
  const bool uring_works = OpenFileDevice(path, uring_options).ok();
  dev = OpenFileDevice(path);  // kAuto: psync (measured faster for synchronous requests)
  ASSERT_TRUE(dev.ok());
  EXPECT_EQ(FileDeviceEngineName(**dev), "psync");
  if (uring_works) {
    ASSERT_EQ(::setenv("BLKSNAP_IO_ENGINE", "auto", 1), 0);
    EXPECT_EQ(FileDeviceEngineName(*OpenFileDevice(path).value()), "psync");
    ::unsetenv("BLKSNAP_IO_ENGINE");
  }
  ASSERT_EQ(::setenv("BLKSNAP_IO_ENGINE", "bogus", 1), 0);
  EXPECT_EQ(OpenFileDevice(path).status().errnum(), EINVAL);
  ::unsetenv("BLKSNAP_IO_ENGINE");
  // An explicit engine ignores the environment.
  FileOpenOptions options;
  options.engine = IoEngine::kPsync;
  ASSERT_EQ(::setenv("BLKSNAP_IO_ENGINE", "io_uring", 1), 0);
  dev = OpenFileDevice(path, options);
  ::unsetenv("BLKSNAP_IO_ENGINE");
  ASSERT_TRUE(dev.ok());
  EXPECT_EQ(FileDeviceEngineName(**dev), "psync");
  EXPECT_EQ(FileDeviceEngineName(*MakeMemoryDevice(4096)), "none");
}

TEST(FileDeviceOpenTest, ManyThreadsEachGetARing) {
  // Threads come and go; each creates and tears down its own ring.
  SKIP_IO_URING_UNDER_TSAN(IoEngine::kIoUring);
  TempDir dir;
  const std::string path = MakeFile(dir, "m.img", 1 << 20);
  FileOpenOptions options;
  options.engine = IoEngine::kIoUring;
  auto dev = OpenFileDevice(path, options);
  ASSERT_TRUE(dev.ok());
  for (int round = 0; round < 4; ++round) {
    std::vector<std::thread> threads;
    for (int t = 0; t < 16; ++t) {
      threads.emplace_back([&, t] {
        std::vector<uint8_t> buf(4096);
        const uint64_t pos = static_cast<uint64_t>(t) * 65536;
        StampSectors(buf, pos / 512, round + 1);
        ASSERT_TRUE((*dev)->Write(pos, buf, kWriteFua).ok());
        ASSERT_TRUE((*dev)->Read(pos, buf).ok());
        ASSERT_TRUE(VerifySectors(buf, pos / 512, round + 1).ok());
      });
    }
    for (auto& th : threads) th.join();
  }
}

// ---- block devices, through a loop device --------------------------------------------------

// A loop device over a sparse file: ScopedLoop (util/test_loop.h).

class BlockDeviceTest : public ::testing::TestWithParam<std::tuple<Mode, uint32_t>> {};

TEST_P(BlockDeviceTest, LoopDeviceRoundTripTrimZeroes) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root for losetup";
  const Mode mode = std::get<0>(GetParam());
  SKIP_IO_URING_UNDER_TSAN(mode.engine);
  const uint32_t sector_size = std::get<1>(GetParam());
  TempDir dir;
  const uint64_t size = 16 << 20;
  const std::string backing = MakeFile(dir, "loop.img", size);
  ScopedLoop loop(backing, sector_size);
  if (loop.path().empty()) GTEST_SKIP() << "losetup unavailable";

  FileOpenOptions options;
  options.direct = mode.direct;
  options.engine = mode.engine;
  auto opened = OpenFileDevice(loop.path(), options);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  BlockDevice& dev = **opened;
  EXPECT_EQ(dev.size(), size);
  EXPECT_EQ(dev.logical_block_size(), sector_size);
  EXPECT_GE(dev.physical_block_size(), sector_size);
  EXPECT_FALSE(dev.capabilities().block_status);

  // Whole device with the pattern, then unaligned overwrites (RMW of 4 KiB sectors).
  std::vector<uint8_t> all(size);
  StampSectors(all, 0, 1);
  ASSERT_TRUE(dev.Write(0, all, 0).ok());
  std::vector<uint8_t> piece(3 * 512 + 1);
  std::span<uint8_t> odd(piece.data() + 1, 3 * 512);
  StampSectors(odd, 4097, 2);
  ASSERT_TRUE(dev.Write(4097 * 512, odd, kWriteFua).ok());
  std::copy(odd.begin(), odd.end(), all.begin() + 4097 * 512);  // the model

  // Trim the aligned middle of [1 MiB + 512, 2 MiB + 512): it reads as zeroes or as before.
  ASSERT_TRUE(dev.Trim((1 << 20) + 512, 1 << 20).ok());
  // Write-zeroes with unaligned edges, and a fast one that may be refused.
  ASSERT_TRUE(dev.WriteZeroes((4 << 20) + 512, (1 << 20) + 1024, 0).ok());
  std::fill(all.begin() + (4 << 20) + 512, all.begin() + (5 << 20) + 1536, 0);
  const Status fast = dev.WriteZeroes(8 << 20, 1 << 20, kZeroFast);
  EXPECT_TRUE(fast.ok() || fast.errnum() == ENOTSUP) << fast.ToString();
  if (fast.ok()) std::fill(all.begin() + (8 << 20), all.begin() + (9 << 20), 0);
  ASSERT_TRUE(dev.Flush().ok());

  std::vector<uint8_t> back(size);
  ASSERT_TRUE(dev.Read(0, back).ok());
  for (uint64_t s = 0; s < size / 512; ++s) {
    const auto got = std::span<const uint8_t>(back).subspan(s * 512, 512);
    const auto want = std::span<const uint8_t>(all).subspan(s * 512, 512);
    const bool trimmed = s * 512 >= (1 << 20) + 512 && s * 512 < (2 << 20) + 512;
    if (trimmed && testing::InspectSector(got).zero) continue;
    ASSERT_TRUE(std::equal(got.begin(), got.end(), want.begin())) << "sector " << s;
  }

  // Read-only open of the same device refuses writes.
  FileOpenOptions ro = options;
  ro.read_only = true;
  auto readonly = OpenFileDevice(loop.path(), ro);
  ASSERT_TRUE(readonly.ok());
  EXPECT_EQ((*readonly)->Write(0, std::span<const uint8_t>(all).first(4096), 0).errnum(), EROFS);
  EXPECT_EQ((*readonly)->Write(size, std::span<const uint8_t>(), 0).errnum(), EROFS);
}

std::string BlockModeName(const ::testing::TestParamInfo<std::tuple<Mode, uint32_t>>& info) {
  const Mode mode = std::get<0>(info.param);
  return std::string(mode.engine == IoEngine::kIoUring ? "IoUring" : "Psync") +
         (mode.direct ? "Direct" : "Buffered") + std::to_string(std::get<1>(info.param));
}

INSTANTIATE_TEST_SUITE_P(Loop, BlockDeviceTest,
                         ::testing::Combine(::testing::Values(Mode{IoEngine::kIoUring, false},
                                                              Mode{IoEngine::kIoUring, true},
                                                              Mode{IoEngine::kPsync, true}),
                                            ::testing::Values(512u, 4096u)),
                         BlockModeName);

}  // namespace
}  // namespace blksnap
