// Integration tests of src/fuse with real loop devices and real file systems (root only).
//
// Purpose: show that a BlockDevice served by fuse::Mount carries real file systems through a
// fuse::LoopDevice, that FrozenFilesystems gives a consistent device image without
// deadlocking against the FUSE threads of the same process, and that discard, write-zeroes
// and tear-down under load behave.
//
// Algorithm (per test):
//  - FileSystemOnLoop (ext4 with 512-byte blocks, xfs with 4096): memory device -> FUSE file
//    -> loop device (direct I/O) -> mkfs -> mount -> write files with dd oflag=direct, record
//    sha256 -> write and delete junk files, fstrim (discards reach the device as
//    WriteZeroes) -> umount -> fsck must be clean -> mount again -> sha256sum -c.
//  - FreezeGivesConsistentImage: ext4 on the loop; freeze from the test thread (not a FUSE
//    worker); a writer thread blocks (seen in state D) while frozen; copy the whole device
//    while frozen; thaw; the writer finishes and its sector-pattern data verifies; the copy,
//    served as a second FUSE file on its own loop device, fscks clean and mounts read-only
//    with the files from before the freeze (checksums).
//  - FreezeFailsCleanly: freezing a device that is already frozen fails with EBUSY and leaves
//    the other file system of the same request thawed (a write to it completes).
//  - DiscardAndZeroOutThroughLoop: sector-pattern data through the loop; BLKDISCARD and
//    BLKZEROOUT ranges read back as zeroes on the device, the rest verifies.
//  - UnmountWhileBusy: readers and writers on the loop device; the Mount is destroyed under
//    them: no hang, their I/O fails, the loop device detaches.
// Every mount and loop device is released by RAII guards, also when an assertion fails.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "blksnap/io.h"
#include "fs_util.h"
#include "fuse/fuse_mount.h"
#include "fuse/loop_device.h"
#include "fuse/test_util.h"
#include "testing/sector_pattern.h"
#include "util/freeze.h"

namespace blksnap::fuse {
namespace {

using blksnap::testing::StampSectors;
using blksnap::testing::VerifySectors;
using testing::AlignedBuffer;
using testing::CheckSums;
using testing::CountingDevice;
using testing::FsckCommand;
using testing::FsMount;
using testing::HaveTool;
using testing::MkfsCommand;
using testing::Shell;
using testing::TempDir;
using testing::WriteFiles;

// One memory device on a FUSE file with a loop device on it.
class StackTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!testing::IsRoot() || access("/dev/loop-control", W_OK) != 0)
      GTEST_SKIP() << "needs root, /dev/fuse and /dev/loop-control";
    auto mount = Mount::Create(fuse_dir_.path());
    ASSERT_TRUE(mount.ok()) << mount.status().ToString();
    mount_ = std::move(mount).value();
  }
  void TearDown() override {
    for (auto& loop : loops_) loop.Detach().IgnoreError();
  }

  // Adds `name` over a memory device; returns the attached loop device.
  LoopDevice* AddVolume(const std::string& name, std::shared_ptr<BlockDevice> device,
                        uint32_t block_size) {
    if (!mount_->AddFile(name, device, false).ok()) return nullptr;
    auto loop = LoopDevice::Attach(mount_->FilePath(name), block_size, false);
    if (!loop.ok()) {
      ADD_FAILURE() << loop.status().ToString();
      return nullptr;
    }
    loops_.push_back(std::move(loop).value());
    return &loops_.back();
  }

  TempDir fuse_dir_;
  std::unique_ptr<Mount> mount_;
  std::vector<LoopDevice> loops_;  // detached before mount_ goes (declared after it)
};

struct FsParam {
  const char* fs;
  uint32_t block_size;
};

class FileSystemOnLoop : public StackTest, public ::testing::WithParamInterface<FsParam> {};

TEST_P(FileSystemOnLoop, WriteFsckRemountVerify) {
  const std::string fs = GetParam().fs;
  if (!HaveTool(fs == "xfs" ? "mkfs.xfs" : "mkfs.ext4")) GTEST_SKIP() << "no mkfs." << fs;
  loops_.reserve(2);
  auto device =
      std::make_shared<CountingDevice>(MakeMemoryDevice(512ull << 20, GetParam().block_size));
  LoopDevice* loop = AddVolume("vol@" + fs, device, GetParam().block_size);
  ASSERT_NE(loop, nullptr);
  EXPECT_TRUE(loop->direct_io());
  ASSERT_EQ(Shell(MkfsCommand(fs, loop->path())), 0);
  std::string sums;
  {
    FsMount fsmount;
    ASSERT_EQ(fsmount.Mount(loop->path(), "rw"), 0);
    sums = WriteFiles(fsmount.path(), "f", 8);
    ASSERT_FALSE(sums.empty());
    // Discards of freed blocks travel loop -> FUSE fallocate -> WriteZeroes and must not
    // touch live files (checked below by fsck and the checksums).
    ASSERT_FALSE(WriteFiles(fsmount.path(), "junk", 4).empty());
    ASSERT_EQ(Shell("rm " + fsmount.path() + "/junk*"), 0);
    uint64_t zeroes = device->zeroes;
    ASSERT_EQ(Shell("fstrim " + fsmount.path()), 0);
    EXPECT_GT(device->zeroes.load(), zeroes) << "fstrim sent no discard through the loop";
    ASSERT_EQ(fsmount.Unmount(), 0);
  }
  ASSERT_EQ(Shell(FsckCommand(fs, loop->path())), 0) << fs << " not clean after umount";
  FsMount fsmount;
  ASSERT_EQ(fsmount.Mount(loop->path(), "ro"), 0);
  EXPECT_EQ(CheckSums(fsmount.path(), sums), 0);
  ASSERT_EQ(fsmount.Unmount(), 0);
}

INSTANTIATE_TEST_SUITE_P(Fs, FileSystemOnLoop,
                         ::testing::Values(FsParam{"ext4", 512}, FsParam{"xfs", 4096}),
                         [](const auto& info) { return std::string(info.param.fs); });

// State letter of a thread of this process ('R', 'S', 'D', ...).
char ThreadState(pid_t tid) {
  std::ifstream in("/proc/self/task/" + std::to_string(tid) + "/stat");
  std::string line;
  std::getline(in, line);
  auto paren = line.rfind(')');
  return paren == std::string::npos || paren + 2 >= line.size() ? '?' : line[paren + 2];
}

TEST_F(StackTest, FreezeGivesConsistentImage) {
  loops_.reserve(2);
  auto device = MakeMemoryDevice(128ull << 20);
  LoopDevice* loop = AddVolume("vol", device, 512);
  ASSERT_NE(loop, nullptr);
  ASSERT_EQ(Shell(MkfsCommand("ext4", loop->path())), 0);
  FsMount fsmount;
  ASSERT_EQ(fsmount.Mount(loop->path(), "rw"), 0);
  std::string sums = WriteFiles(fsmount.path(), "before", 4);
  ASSERT_FALSE(sums.empty());

  auto frozen = FrozenFilesystems::Freeze({loop->rdev()});
  ASSERT_TRUE(frozen.ok()) << frozen.status().ToString();
  ASSERT_EQ(frozen->mount_points().size(), 1u);
  EXPECT_EQ(frozen->mount_points()[0], fsmount.path());

  // A writer blocks while the file system is frozen.
  std::atomic<pid_t> writer_tid{0};
  std::atomic<bool> written{false};
  std::string after = fsmount.path() + "/after";
  std::thread writer([&] {
    writer_tid = gettid();
    std::vector<uint8_t> data(1 << 20);
    StampSectors(data, 0, 5);
    int fd = open(after.c_str(), O_CREAT | O_WRONLY, 0644);
    bool ok =
        fd >= 0 && write(fd, data.data(), data.size()) == ssize_t(data.size()) && fsync(fd) == 0;
    if (fd >= 0) close(fd);
    written = ok;
  });
  while (writer_tid == 0) std::this_thread::yield();
  // Wait (bounded) until the writer sleeps uninterruptibly in the kernel: the freeze holds it.
  bool blocked = false;
  for (int i = 0; i < 1000 && !blocked; ++i) {
    blocked = ThreadState(writer_tid) == 'D';
    if (!blocked) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(blocked) << "the writer never blocked on the frozen file system";
  EXPECT_FALSE(written);

  // The device image while frozen.
  auto copy = MakeMemoryDevice(device->size());
  {
    std::vector<uint8_t> chunk(4 << 20);
    for (uint64_t off = 0; off < device->size(); off += chunk.size()) {
      ASSERT_TRUE(device->Read(off, chunk).ok());
      ASSERT_TRUE(copy->Write(off, chunk).ok());
    }
  }
  frozen->Thaw();
  writer.join();
  EXPECT_TRUE(written);
  {
    std::vector<uint8_t> data(1 << 20);
    int fd = open(after.c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(read(fd, data.data(), data.size()), ssize_t(data.size()));
    close(fd);
    EXPECT_TRUE(VerifySectors(data, 0, 5).ok());
  }

  // The frozen image is a clean file system holding exactly the files from before.
  LoopDevice* image = AddVolume("image", copy, 512);
  ASSERT_NE(image, nullptr);
  EXPECT_EQ(Shell(FsckCommand("ext4", image->path())), 0) << "frozen image not clean";
  FsMount image_mount;
  ASSERT_EQ(image_mount.Mount(image->path(), "ro"), 0);
  EXPECT_EQ(CheckSums(image_mount.path(), sums), 0);
  EXPECT_NE(access((image_mount.path() + "/after").c_str(), F_OK), 0);
  ASSERT_EQ(image_mount.Unmount(), 0);
  ASSERT_EQ(fsmount.Unmount(), 0);
  EXPECT_EQ(Shell(FsckCommand("ext4", loop->path())), 0);
}

TEST_F(StackTest, FreezeFailsCleanly) {
  loops_.reserve(2);
  LoopDevice* a = AddVolume("a", MakeMemoryDevice(64ull << 20), 512);
  LoopDevice* b = AddVolume("b", MakeMemoryDevice(64ull << 20), 512);
  ASSERT_TRUE(a != nullptr && b != nullptr);
  ASSERT_EQ(Shell(MkfsCommand("ext4", a->path())), 0);
  ASSERT_EQ(Shell(MkfsCommand("ext4", b->path())), 0);
  FsMount ma, mb;
  ASSERT_EQ(ma.Mount(a->path(), "rw"), 0);
  ASSERT_EQ(mb.Mount(b->path(), "rw"), 0);

  auto first = FrozenFilesystems::Freeze({b->rdev()});
  ASSERT_TRUE(first.ok());
  // a freezes, b fails (already frozen): a must be thawed again.
  auto second = FrozenFilesystems::Freeze({a->rdev(), b->rdev()});
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().errnum(), EBUSY);
  EXPECT_NE(second.status().message().find(mb.path()), std::string::npos)
      << second.status().ToString();
  EXPECT_EQ(Shell("dd if=/dev/zero of=" + ma.path() + "/x bs=64k count=1 conv=fsync status=none"),
            0);
  first->Thaw();
  EXPECT_EQ(Shell("dd if=/dev/zero of=" + mb.path() + "/x bs=64k count=1 conv=fsync status=none"),
            0);
}

TEST_F(StackTest, DiscardAndZeroOutThroughLoop) {
  loops_.reserve(1);
  constexpr uint64_t kSize = 16 << 20;
  auto device = std::make_shared<CountingDevice>(MakeMemoryDevice(kSize));
  LoopDevice* loop = AddVolume("vol", device, 512);
  ASSERT_NE(loop, nullptr);
  int fd = open(loop->path().c_str(), O_RDWR | O_DIRECT);
  ASSERT_GE(fd, 0);
  AlignedBuffer buf(kSize);
  StampSectors(buf.span(), 0, 21);
  ASSERT_EQ(pwrite(fd, buf.data(), kSize, 0), ssize_t(kSize));
  uint64_t discard[2] = {1 << 20, 1 << 20};   // [1 MiB, 2 MiB)
  uint64_t zeroout[2] = {4 << 20, 64 << 10};  // [4 MiB, 4 MiB + 64 KiB)
  EXPECT_EQ(ioctl(fd, BLKDISCARD, discard), 0) << strerror(errno);
  EXPECT_EQ(ioctl(fd, BLKZEROOUT, zeroout), 0) << strerror(errno);
  EXPECT_GE(device->zeroes.load(), 2u);
  EXPECT_EQ(device->trims.load(), 0u);
  close(fd);
  std::vector<uint8_t> back(kSize);
  ASSERT_TRUE(device->Read(0, back).ok());
  for (uint64_t s = 0; s < kSize / 512; ++s) {
    uint64_t off = s * 512;
    auto sector = std::span<const uint8_t>(back).subspan(off, 512);
    bool zeroed = (off >= discard[0] && off < discard[0] + discard[1]) ||
                  (off >= zeroout[0] && off < zeroout[0] + zeroout[1]);
    if (zeroed) {
      ASSERT_TRUE(testing::AllZero(sector)) << "sector " << s;
    } else {
      ASSERT_TRUE(VerifySectors(sector, s, 21).ok()) << "sector " << s;
    }
  }
}

TEST_F(StackTest, LoopRequestsOverlap) {
  // Concurrent O_DIRECT writers on the loop device reach the device concurrently (the loop
  // driver's direct I/O is asynchronous through FUSE), not one request at a time.
  loops_.reserve(1);
  auto slow = std::make_shared<FaultDevice>(MakeMemoryDevice(16 << 20));
  slow->SetLatency(std::chrono::milliseconds(2));
  auto device = std::make_shared<CountingDevice>(slow);
  LoopDevice* loop = AddVolume("vol", device, 512);
  ASSERT_NE(loop, nullptr);
  std::vector<std::thread> threads;
  std::atomic<bool> ok{true};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      int fd = open(loop->path().c_str(), O_RDWR | O_DIRECT);
      AlignedBuffer buf(64 << 10);
      for (int i = 0; fd >= 0 && i < 50; ++i) {
        uint64_t off = uint64_t(t * 50 + i) * buf.size();
        StampSectors(buf.span(), off / 512, 4);
        if (pwrite(fd, buf.data(), buf.size(), off_t(off)) != ssize_t(buf.size())) ok = false;
      }
      if (fd < 0) ok = false;
      if (fd >= 0) close(fd);
    });
  }
  for (auto& t : threads) t.join();
  ASSERT_TRUE(ok);
  EXPECT_GE(device->max_in_flight.load(), 2u);
  std::vector<uint8_t> back(200 * (64 << 10));
  ASSERT_TRUE(device->Read(0, back).ok());
  EXPECT_TRUE(VerifySectors(back, 0, 4).ok());
}

TEST_F(StackTest, UnmountWhileBusy) {
  loops_.reserve(1);
  LoopDevice* loop = AddVolume("vol", MakeMemoryDevice(64ull << 20), 512);
  ASSERT_NE(loop, nullptr);
  std::atomic<int> ios{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      int fd = open(loop->path().c_str(), O_RDWR | O_DIRECT);
      if (fd < 0) return;
      AlignedBuffer buf(128 << 10);
      StampSectors(buf.span(), 0, 1);
      for (uint64_t n = 0; !stop; ++n) {
        off_t off = off_t(((n * 4 + i) * buf.size()) % (64ull << 20));
        ssize_t r = (n + i) % 2 ? pread(fd, buf.data(), buf.size(), off)
                                : pwrite(fd, buf.data(), buf.size(), off);
        if (r < 0) break;
        ios++;
      }
      close(fd);
    });
  }
  while (ios < 200) std::this_thread::yield();
  mount_.reset();  // tears the FUSE file away under the loop device
  stop = true;
  for (auto& t : threads) t.join();
  int number = loop->number();
  std::string file = loop->backing_file();
  EXPECT_TRUE(loop->Detach().ok());
  std::ifstream bound("/sys/block/loop" + std::to_string(number) + "/loop/backing_file");
  std::string backing;
  EXPECT_FALSE(bound && std::getline(bound, backing) && backing == file);
}

}  // namespace
}  // namespace blksnap::fuse
