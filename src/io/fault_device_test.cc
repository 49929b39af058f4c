// Unit tests of FaultDevice: every fault, the unflushed-write overlay, counters, thread safety.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <thread>
#include <vector>

#include "blksnap/io.h"
#include "testing/sector_pattern.h"

namespace blksnap {
namespace {

using testing::StampSectors;
using testing::VerifySectors;

constexpr uint64_t kSize = 1 << 20;

struct Stack {
  std::shared_ptr<BlockDevice> base = MakeMemoryDevice(kSize);
  std::shared_ptr<FaultDevice> fault = std::make_shared<FaultDevice>(base);
};

std::vector<uint8_t> Pattern(uint64_t offset, size_t length, uint64_t seq) {
  std::vector<uint8_t> buf(length);
  StampSectors(buf, offset / 512, seq);
  return buf;
}

// OK if [offset, offset+length) of dev holds sequence seq.
Status Holds(BlockDevice& dev, uint64_t offset, size_t length, uint64_t seq) {
  std::vector<uint8_t> buf(length);
  BLKSNAP_RETURN_IF_ERROR(dev.Read(offset, buf));
  return VerifySectors(buf, offset / 512, seq);
}

bool IsZero(BlockDevice& dev, uint64_t offset, size_t length) {
  std::vector<uint8_t> buf(length, 1);
  if (!dev.Read(offset, buf).ok()) return false;
  for (uint8_t b : buf) {
    if (b) return false;
  }
  return true;
}

TEST(FaultDeviceTest, PassThroughAndCounters) {
  Stack s;
  auto data = Pattern(4096, 8192, 1);
  ASSERT_TRUE(s.fault->Write(4096, data, 0).ok());
  EXPECT_TRUE(Holds(*s.base, 4096, 8192, 1).ok());
  EXPECT_TRUE(Holds(*s.fault, 4096, 8192, 1).ok());
  ASSERT_TRUE(s.fault->Trim(0, 4096).ok());
  ASSERT_TRUE(s.fault->WriteZeroes(0, 512, 0).ok());
  ASSERT_TRUE(s.fault->Flush().ok());
  EXPECT_EQ(s.fault->reads(), 1u);
  EXPECT_EQ(s.fault->writes(), 3u);  // Write, Trim, WriteZeroes
  EXPECT_EQ(s.fault->flushes(), 1u);
  EXPECT_EQ(s.fault->size(), kSize);
}

TEST(FaultDeviceTest, FailNthRead) {
  Stack s;
  std::vector<uint8_t> buf(512);
  s.fault->FailNthRead(3, EBADMSG);
  EXPECT_TRUE(s.fault->Read(0, buf).ok());
  EXPECT_TRUE(s.fault->Read(0, buf).ok());
  EXPECT_EQ(s.fault->Read(0, buf).errnum(), EBADMSG);
  EXPECT_TRUE(s.fault->Read(0, buf).ok());  // one-shot
  s.fault->FailNthRead(1);
  s.fault->FailNthRead(0);  // disarmed
  EXPECT_TRUE(s.fault->Read(0, buf).ok());
}

TEST(FaultDeviceTest, FailNthWriteCountsTrimAndZeroesAndTouchesNothing) {
  Stack s;
  auto data = Pattern(0, 4096, 2);
  s.fault->FailNthWrite(3);
  EXPECT_TRUE(s.fault->Trim(0, 512).ok());              // 1
  EXPECT_TRUE(s.fault->WriteZeroes(0, 512, 0).ok());    // 2
  EXPECT_EQ(s.fault->Write(0, data, 0).errnum(), EIO);  // 3
  EXPECT_TRUE(IsZero(*s.base, 0, 4096));
  EXPECT_TRUE(s.fault->Write(0, data, 0).ok());
  EXPECT_TRUE(Holds(*s.base, 0, 4096, 2).ok());
  s.fault->FailNthWrite(1, ENOSPC);
  EXPECT_EQ(s.fault->WriteZeroes(0, 4096, 0).errnum(), ENOSPC);
  EXPECT_TRUE(Holds(*s.base, 0, 4096, 2).ok());
}

TEST(FaultDeviceTest, FailNthFlush) {
  Stack s;
  s.fault->FailNthFlush(2, EIO);
  EXPECT_TRUE(s.fault->Flush().ok());
  EXPECT_EQ(s.fault->Flush().errnum(), EIO);
  EXPECT_TRUE(s.fault->Flush().ok());
  EXPECT_EQ(s.fault->flushes(), 3u);
}

TEST(FaultDeviceTest, FailAllWrites) {
  Stack s;
  auto data = Pattern(0, 512, 3);
  s.fault->FailAllWrites(EROFS);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(s.fault->Write(0, data, 0).errnum(), EROFS);
  EXPECT_EQ(s.fault->Trim(0, 512).errnum(), EROFS);
  EXPECT_EQ(s.fault->WriteZeroes(0, 512, 0).errnum(), EROFS);
  std::vector<uint8_t> buf(512);
  EXPECT_TRUE(s.fault->Read(0, buf).ok());  // reads unaffected
  EXPECT_TRUE(IsZero(*s.base, 0, 512));
  s.fault->FailAllWrites(0);
  EXPECT_TRUE(s.fault->Write(0, data, 0).ok());
}

TEST(FaultDeviceTest, NoSpaceAfterBytes) {
  Stack s;
  s.fault->NoSpaceAfter(10 * 512);
  auto a = Pattern(0, 8 * 512, 4);
  auto b = Pattern(8 * 512, 4 * 512, 4);
  auto c = Pattern(8 * 512, 2 * 512, 4);
  EXPECT_TRUE(s.fault->Write(0, a, 0).ok());                  // 8 of 10 used
  EXPECT_EQ(s.fault->Write(8 * 512, b, 0).errnum(), ENOSPC);  // 4 > 2 left: nothing written
  EXPECT_TRUE(IsZero(*s.base, 8 * 512, 4 * 512));
  EXPECT_TRUE(s.fault->Trim(0, 512).ok());          // trims and zeroes need no space
  EXPECT_TRUE(s.fault->Write(8 * 512, c, 0).ok());  // exactly the 2 left
  EXPECT_EQ(s.fault->Write(0, std::span<const uint8_t>(a).first(512), 0).errnum(), ENOSPC);
  EXPECT_TRUE(s.fault->Write(0, std::span<const uint8_t>(), 0).ok());  // zero bytes fit
  s.fault->Reset();
  EXPECT_TRUE(s.fault->Write(0, a, 0).ok());
}

TEST(FaultDeviceTest, OutOfRangeIsEinvalAndDoesNotTick) {
  Stack s;
  s.fault->FailNthWrite(1);
  std::vector<uint8_t> buf(1024);
  EXPECT_EQ(s.fault->Write(kSize - 512, buf, 0).errnum(), EINVAL);
  EXPECT_EQ(s.fault->Write(0, buf, 0).errnum(), EIO);  // the armed fault fires now
}

TEST(FaultDeviceTest, LatencyIsAdded) {
  // Asserts only a lower bound, which cannot fail spuriously.
  Stack s;
  s.fault->SetLatency(std::chrono::milliseconds(20));
  std::vector<uint8_t> buf(512);
  const auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(s.fault->Read(0, buf).ok());
  ASSERT_TRUE(s.fault->Write(0, buf, 0).ok());
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(40));
  s.fault->SetLatency(std::chrono::microseconds(0));
}

TEST(FaultDeviceTest, DropUnflushedLosesExactlyTheUnflushedWrites) {
  Stack s;
  auto w1 = Pattern(0, 4096, 1);
  ASSERT_TRUE(s.fault->Write(0, w1, 0).ok());  // before buffering: durable
  s.fault->SetBufferUnflushed(true);

  auto a = Pattern(8192, 4096, 2);  // unflushed, later flushed
  ASSERT_TRUE(s.fault->Write(8192, a, 0).ok());
  EXPECT_TRUE(IsZero(*s.base, 8192, 4096));          // not below yet
  EXPECT_TRUE(Holds(*s.fault, 8192, 4096, 2).ok());  // but visible through the layer
  ASSERT_TRUE(s.fault->Flush().ok());
  EXPECT_TRUE(Holds(*s.base, 8192, 4096, 2).ok());

  auto b = Pattern(16384, 4096, 3);  // FUA: durable on its own
  ASSERT_TRUE(s.fault->Write(16384, b, kWriteFua).ok());
  EXPECT_TRUE(Holds(*s.base, 16384, 4096, 3).ok());

  // Unflushed: an overwrite of part of w1, a new range, a trim of part of a, zeroes inside b.
  auto c = Pattern(1024, 1024, 4);
  auto d = Pattern(32768, 8192, 5);
  ASSERT_TRUE(s.fault->Write(1024, c, 0).ok());
  ASSERT_TRUE(s.fault->Write(32768, d, 0).ok());
  ASSERT_TRUE(s.fault->Trim(8192, 1024).ok());
  ASSERT_TRUE(s.fault->WriteZeroes(16384 + 512, 512, 0).ok());
  // Reads combine the overlay with what is below.
  EXPECT_TRUE(Holds(*s.fault, 0, 1024, 1).ok());
  EXPECT_TRUE(Holds(*s.fault, 1024, 1024, 4).ok());
  EXPECT_TRUE(Holds(*s.fault, 2048, 2048, 1).ok());
  EXPECT_TRUE(Holds(*s.fault, 32768, 8192, 5).ok());
  EXPECT_TRUE(IsZero(*s.fault, 8192, 1024));
  EXPECT_TRUE(Holds(*s.fault, 9216, 3072, 2).ok());
  EXPECT_TRUE(IsZero(*s.fault, 16384 + 512, 512));
  EXPECT_TRUE(Holds(*s.fault, 16384, 512, 3).ok());

  s.fault->DropUnflushed();  // power loss
  EXPECT_TRUE(Holds(*s.fault, 0, 4096, 1).ok());
  EXPECT_TRUE(Holds(*s.fault, 8192, 4096, 2).ok());
  EXPECT_TRUE(Holds(*s.fault, 16384, 4096, 3).ok());
  EXPECT_TRUE(IsZero(*s.fault, 32768, 8192));
  EXPECT_TRUE(Holds(*s.base, 0, 4096, 1).ok());
  EXPECT_TRUE(IsZero(*s.base, 32768, 8192));
}

TEST(FaultDeviceTest, OverlayNewestWriteWinsAcrossOverlaps) {
  Stack s;
  s.fault->SetBufferUnflushed(true);
  // Model of the expected content, sector by sector (0 = zero).
  std::vector<uint64_t> model(64, 0);
  auto write = [&](uint64_t first, uint64_t count, uint64_t seq) {
    auto buf = Pattern(first * 512, count * 512, seq);
    ASSERT_TRUE(s.fault->Write(first * 512, buf, 0).ok());
    for (uint64_t i = first; i < first + count; ++i) model[i] = seq;
  };
  write(0, 16, 1);
  write(4, 4, 2);   // inside
  write(2, 4, 3);   // straddles start of 2's segment
  write(7, 10, 4);  // straddles end, past 1's end
  write(20, 4, 5);
  write(18, 8, 6);  // covers 5 entirely
  ASSERT_TRUE(s.fault->WriteZeroes(10 * 512, 2 * 512, 0).ok());
  for (uint64_t i = 10; i < 12; ++i) model[i] = 0;
  auto check = [&](BlockDevice& dev) {
    for (uint64_t i = 0; i < model.size(); ++i) {
      if (model[i] == 0) {
        ASSERT_TRUE(IsZero(dev, i * 512, 512)) << "sector " << i;
      } else {
        ASSERT_TRUE(Holds(dev, i * 512, 512, model[i]).ok()) << "sector " << i;
      }
    }
  };
  check(*s.fault);
  EXPECT_TRUE(IsZero(*s.base, 0, 64 * 512));
  // One read across everything, unaligned.
  std::vector<uint8_t> all(64 * 512 - 100);
  ASSERT_TRUE(s.fault->Read(50, all).ok());
  ASSERT_TRUE(s.fault->Flush().ok());
  check(*s.base);
  std::vector<uint8_t> after(all.size());
  ASSERT_TRUE(s.fault->Read(50, after).ok());
  EXPECT_EQ(all, after);
}

TEST(FaultDeviceTest, FlushFailureKeepsOverlay) {
  Stack s;
  s.fault->SetBufferUnflushed(true);
  auto a = Pattern(0, 4096, 7);
  ASSERT_TRUE(s.fault->Write(0, a, 0).ok());
  s.fault->FailNthFlush(1);
  EXPECT_EQ(s.fault->Flush().errnum(), EIO);
  EXPECT_TRUE(IsZero(*s.base, 0, 4096));
  s.fault->DropUnflushed();
  EXPECT_TRUE(IsZero(*s.fault, 0, 4096));
}

TEST(FaultDeviceTest, DisablingBufferingKeepsOverlayUntilFlush) {
  Stack s;
  s.fault->SetBufferUnflushed(true);
  auto a = Pattern(0, 8192, 8);
  ASSERT_TRUE(s.fault->Write(0, a, 0).ok());
  s.fault->SetBufferUnflushed(false);
  auto b = Pattern(4096, 512, 9);  // straight down, and cuts the overlay
  ASSERT_TRUE(s.fault->Write(4096, b, 0).ok());
  EXPECT_TRUE(Holds(*s.base, 4096, 512, 9).ok());
  EXPECT_TRUE(Holds(*s.fault, 4096, 512, 9).ok());
  EXPECT_TRUE(Holds(*s.fault, 0, 4096, 8).ok());
  EXPECT_TRUE(IsZero(*s.base, 0, 4096));
  ASSERT_TRUE(s.fault->Flush().ok());
  EXPECT_TRUE(Holds(*s.base, 0, 4096, 8).ok());
  EXPECT_TRUE(Holds(*s.base, 4096, 512, 9).ok());
  EXPECT_TRUE(Holds(*s.base, 4608, 8192 - 4608, 8).ok());
}

TEST(FaultDeviceTest, ResetClearsEveryFaultAndKeepsData) {
  Stack s;
  s.fault->FailNthRead(1);
  s.fault->FailNthWrite(1);
  s.fault->FailNthFlush(1);
  s.fault->FailAllWrites(EIO);
  s.fault->NoSpaceAfter(0);
  s.fault->SetBufferUnflushed(true);
  s.fault->Reset();
  auto a = Pattern(0, 4096, 10);
  std::vector<uint8_t> buf(512);
  EXPECT_TRUE(s.fault->Read(0, buf).ok());
  EXPECT_TRUE(s.fault->Write(0, a, 0).ok());
  EXPECT_TRUE(Holds(*s.base, 0, 4096, 10).ok());  // not buffered any more
  EXPECT_TRUE(s.fault->Flush().ok());

  s.fault->SetBufferUnflushed(true);
  auto b = Pattern(0, 4096, 11);
  ASSERT_TRUE(s.fault->Write(0, b, 0).ok());
  s.fault->Reset();  // writes the overlay down
  EXPECT_TRUE(Holds(*s.base, 0, 4096, 11).ok());
  EXPECT_EQ(s.fault->writes(), 2u);  // counters survive Reset
}

TEST(FaultDeviceTest, ConcurrentIoWithFaultsAndBuffering) {
  // 8 threads write their own sectors while faults are armed and flushes run; every write that
  // reported success must be readable afterwards, and failures must be exactly the armed count.
  Stack s;
  constexpr int kThreads = 8;
  constexpr uint64_t kPerThread = 128;
  s.fault->SetBufferUnflushed(true);
  s.fault->FailNthWrite(100);
  std::atomic<int> failures{0};
  std::vector<std::vector<uint64_t>> written(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (uint64_t i = 0; i < kPerThread; ++i) {
        const uint64_t sector = i * kThreads + t;
        auto buf = Pattern(sector * 512, 512, 1 + t);
        Status st = s.fault->Write(sector * 512, buf, i % 7 == 0 ? kWriteFua : 0);
        if (st.ok()) {
          written[t].push_back(sector);
        } else {
          failures.fetch_add(1);
        }
        if (i % 16 == 0) {
          ASSERT_TRUE(s.fault->Flush().ok());
        }
        std::vector<uint8_t> back(512);
        ASSERT_TRUE(s.fault->Read(sector * 512, back).ok());
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 1);
  ASSERT_TRUE(s.fault->Flush().ok());
  for (int t = 0; t < kThreads; ++t) {
    for (uint64_t sector : written[t]) {
      ASSERT_TRUE(Holds(*s.base, sector * 512, 512, 1 + t).ok()) << sector;
    }
  }
  EXPECT_EQ(s.fault->writes(), kThreads * kPerThread);
}

TEST(FaultDeviceTest, StacksOverFileDevice) {
  char tmpl[] = "/var/tmp/blksnap-fault-test.XXXXXX";
  const int fd = ::mkstemp(tmpl);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, kSize), 0);
  ::close(fd);
  auto file = OpenFileDevice(tmpl);
  ASSERT_TRUE(file.ok());
  FaultDevice fault(*file);
  EXPECT_NE(FileDeviceEngineName(fault), "none");
  auto a = Pattern(0, 4096, 12);
  fault.SetBufferUnflushed(true);
  ASSERT_TRUE(fault.Write(0, a, 0).ok());
  fault.DropUnflushed();
  EXPECT_TRUE(IsZero(**file, 0, 4096));
  ::unlink(tmpl);
}

}  // namespace
}  // namespace blksnap
