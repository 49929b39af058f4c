// Unit tests of fuse::Mount: real FUSE mounts (root and /dev/fuse needed, skipped otherwise)
// over memory devices; data checked with the sector pattern, calls with a CountingDevice.
#include "fuse/fuse_mount.h"

#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <set>
#include <thread>
#include <vector>

#include "blksnap/io.h"
#include "fuse/loop_device.h"
#include "fuse/test_util.h"
#include "testing/sector_pattern.h"

namespace blksnap::fuse {
namespace {

using blksnap::testing::StampSectors;
using blksnap::testing::VerifySectors;
using testing::AlignedBuffer;
using testing::CountingDevice;
using testing::TempDir;

constexpr uint64_t kSize = 8 << 20;

class MountTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!testing::IsRoot()) GTEST_SKIP() << "needs root and /dev/fuse";
    device_ = std::make_shared<CountingDevice>(MakeMemoryDevice(kSize));
    auto mount = Mount::Create(dir_.path());
    ASSERT_TRUE(mount.ok()) << mount.status().ToString();
    mount_ = std::move(mount).value();
  }

  TempDir dir_;
  std::shared_ptr<CountingDevice> device_;
  std::unique_ptr<Mount> mount_;
};

TEST_F(MountTest, ReadWriteDirect) {
  ASSERT_TRUE(mount_->AddFile("vol@1", device_, false).ok());
  std::string path = mount_->FilePath("vol@1");
  EXPECT_EQ(path, dir_.path() + "/vol@1");
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), kSize);
  EXPECT_TRUE(S_ISREG(st.st_mode));

  int fd = open(path.c_str(), O_RDWR | O_DIRECT);
  ASSERT_GE(fd, 0) << strerror(errno);
  EXPECT_TRUE(mount_->IsOpen("vol@1"));
  // 1 MiB requests across the whole device, then unaligned-size reads.
  AlignedBuffer buf(1 << 20);
  for (uint64_t off = 0; off < kSize; off += buf.size()) {
    StampSectors(buf.span(), off / 512, 7);
    ASSERT_EQ(pwrite(fd, buf.data(), buf.size(), off), static_cast<ssize_t>(buf.size()));
  }
  for (uint64_t off = 0; off < kSize; off += buf.size()) {
    ASSERT_EQ(pread(fd, buf.data(), buf.size(), off), static_cast<ssize_t>(buf.size()));
    ASSERT_TRUE(VerifySectors(buf.span(), off / 512, 7).ok());
  }
  // Requests reach the device as large as libfuse allows (1 MiB).
  EXPECT_EQ(device_->max_write.load(), 1u << 20);
  EXPECT_EQ(device_->max_read.load(), 1u << 20);
  // The device holds the same data.
  std::vector<uint8_t> direct(kSize);
  ASSERT_TRUE(device_->Read(0, direct).ok());
  EXPECT_TRUE(VerifySectors(direct, 0, 7).ok());
  // Reads at and past the end return 0 bytes; writes there fail with ENOSPC.
  EXPECT_EQ(pread(fd, buf.data(), 4096, kSize), 0);
  EXPECT_EQ(pwrite(fd, buf.data(), 4096, kSize), -1);
  EXPECT_EQ(errno, ENOSPC);
  close(fd);

  // Buffered (non-O_DIRECT) access is served directly as well.
  fd = open(path.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  std::vector<uint8_t> small(512 * 3);
  ASSERT_EQ(pread(fd, small.data(), small.size(), 512 * 5), static_cast<ssize_t>(small.size()));
  EXPECT_TRUE(VerifySectors(small, 5, 7).ok());
  close(fd);
}

TEST_F(MountTest, ReaddirListsFiles) {
  ASSERT_TRUE(mount_->AddFile("a", device_, false).ok());
  ASSERT_TRUE(mount_->AddFile("snap@b", MakeMemoryDevice(1 << 20), true).ok());
  DIR* d = opendir(dir_.path().c_str());
  ASSERT_NE(d, nullptr);
  std::set<std::string> names;
  while (dirent* e = readdir(d)) names.insert(e->d_name);
  closedir(d);
  EXPECT_EQ(names, (std::set<std::string>{".", "..", "a", "snap@b"}));
}

TEST_F(MountTest, ReadOnlyFile) {
  ASSERT_TRUE(mount_->AddFile("ro", device_, true).ok());
  std::string path = mount_->FilePath("ro");
  EXPECT_LT(open(path.c_str(), O_RDWR), 0);
  EXPECT_EQ(errno, EROFS);
  int fd = open(path.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  char c;
  EXPECT_EQ(pread(fd, &c, 1, 0), 1);
  close(fd);
}

TEST_F(MountTest, FsyncFuaAndFallocate) {
  ASSERT_TRUE(mount_->AddFile("v", device_, false).ok());
  std::string path = mount_->FilePath("v");
  int fd = open(path.c_str(), O_RDWR | O_DIRECT);
  ASSERT_GE(fd, 0);
  AlignedBuffer buf(1 << 20);
  StampSectors(buf.span(), 0, 3);
  ASSERT_EQ(pwrite(fd, buf.data(), buf.size(), 0), static_cast<ssize_t>(buf.size()));

  uint64_t flushes = device_->flushes;
  ASSERT_EQ(fsync(fd), 0);
  EXPECT_GT(device_->flushes.load(), flushes);

  // Punch: the range reads back as zeroes and other sectors keep their data.
  ASSERT_EQ(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4096, 8192), 0)
      << strerror(errno);
  EXPECT_EQ(device_->last_zero_flags.load() & kZeroNoHole, 0u);
  // Zero range keeps the allocation.
  ASSERT_EQ(fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 65536, 4096), 0)
      << strerror(errno);
  EXPECT_EQ(device_->last_zero_flags.load() & kZeroNoHole, kZeroNoHole);
  EXPECT_EQ(device_->zeroes.load(), 2u);
  ASSERT_EQ(pread(fd, buf.data(), buf.size(), 0), static_cast<ssize_t>(buf.size()));
  for (uint64_t s = 0; s < buf.size() / 512; ++s) {
    auto sector = buf.span().subspan(s * 512, 512);
    bool zeroed = (s >= 8 && s < 24) || (s >= 128 && s < 136);
    if (zeroed) {
      EXPECT_TRUE(testing::AllZero(sector)) << "sector " << s;
    } else {
      EXPECT_TRUE(VerifySectors(sector, s, 3).ok()) << "sector " << s;
    }
  }
  // Growing the file is impossible.
  EXPECT_NE(fallocate(fd, 0, kSize - 4096, 8192), 0);
  EXPECT_NE(ftruncate(fd, kSize * 2), 0);
  close(fd);

  // O_DSYNC writes reach the device with FUA.
  fd = open(path.c_str(), O_RDWR | O_DIRECT | O_DSYNC);
  ASSERT_GE(fd, 0);
  uint64_t fua = device_->fua_writes;
  ASSERT_EQ(pwrite(fd, buf.data(), 4096, 0), 4096);
  EXPECT_GT(device_->fua_writes.load(), fua);
  close(fd);
}

TEST_F(MountTest, SeekDataAndHole) {
  // The memory device is sparse: only written pages are data.
  ASSERT_TRUE(mount_->AddFile("v", device_, true).ok());
  std::vector<uint8_t> data(1 << 20);
  StampSectors(data, (2 << 20) / 512, 1);
  ASSERT_TRUE(device_->Write(2 << 20, data, 0).ok());
  StampSectors(data, (5 << 20) / 512, 1);
  ASSERT_TRUE(device_->Write(5 << 20, data, 0).ok());
  int fd = open(mount_->FilePath("v").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  EXPECT_EQ(lseek(fd, 0, SEEK_DATA), 2 << 20);
  EXPECT_EQ(lseek(fd, 2 << 20, SEEK_HOLE), 3 << 20);
  EXPECT_EQ(lseek(fd, 3 << 20, SEEK_DATA), 5 << 20);
  EXPECT_EQ(lseek(fd, (5 << 20) + 4096, SEEK_DATA), (5 << 20) + 4096);
  EXPECT_EQ(lseek(fd, 5 << 20, SEEK_HOLE), 6 << 20);
  EXPECT_EQ(lseek(fd, 6 << 20, SEEK_DATA), -1);
  EXPECT_EQ(errno, ENXIO);
  EXPECT_EQ(lseek(fd, 6 << 20, SEEK_HOLE), 6 << 20);  // already in a hole
  EXPECT_EQ(lseek(fd, kSize, SEEK_DATA), -1);
  EXPECT_EQ(errno, ENXIO);
  close(fd);
}

TEST_F(MountTest, NamesAndErrors) {
  ASSERT_TRUE(mount_->AddFile("x", device_, false).ok());
  EXPECT_EQ(mount_->AddFile("x", device_, false).errnum(), EEXIST);
  EXPECT_EQ(mount_->AddFile("", device_, false).errnum(), EINVAL);
  EXPECT_EQ(mount_->AddFile("a/b", device_, false).errnum(), EINVAL);
  EXPECT_EQ(mount_->AddFile("..", device_, false).errnum(), EINVAL);
  EXPECT_EQ(mount_->AddFile("y", nullptr, false).errnum(), EINVAL);
  EXPECT_EQ(mount_->RemoveFile("nope").errnum(), ENOENT);
  EXPECT_FALSE(mount_->IsOpen("x"));
  EXPECT_FALSE(mount_->IsOpen("nope"));
  EXPECT_LT(open((dir_.path() + "/nope").c_str(), O_RDONLY), 0);
  EXPECT_EQ(errno, ENOENT);
  EXPECT_LT(open((dir_.path() + "/new").c_str(), O_RDWR | O_CREAT, 0600), 0);
}

TEST_F(MountTest, RemoveRevokesOpenHandles) {
  ASSERT_TRUE(mount_->AddFile("v", device_, false).ok());
  std::string path = mount_->FilePath("v");
  int fd = open(path.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  EXPECT_TRUE(mount_->IsOpen("v"));
  ASSERT_TRUE(mount_->RemoveFile("v").ok());
  char c = 0;
  EXPECT_EQ(pread(fd, &c, 1, 0), -1);
  EXPECT_EQ(errno, ENODEV);
  EXPECT_LT(open(path.c_str(), O_RDONLY), 0);
  EXPECT_EQ(errno, ENOENT);
  close(fd);
  // The name can be reused at once, for another device.
  auto other = MakeMemoryDevice(1 << 20);
  std::vector<uint8_t> data(4096);
  StampSectors(data, 0, 9);
  ASSERT_TRUE(other->Write(0, data).ok());
  ASSERT_TRUE(mount_->AddFile("v", other, false).ok());
  fd = open(path.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  struct stat st;
  ASSERT_EQ(fstat(fd, &st), 0);
  EXPECT_EQ(st.st_size, 1 << 20);
  ASSERT_EQ(pread(fd, data.data(), data.size(), 0), 4096);
  EXPECT_TRUE(VerifySectors(data, 0, 9).ok());
  close(fd);
  // FUSE sends release in the background after close(): wait, bounded, for it.
  for (int i = 0; i < 500 && mount_->IsOpen("v"); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_FALSE(mount_->IsOpen("v"));
}

TEST_F(MountTest, DestroyWhileBusy) {
  ASSERT_TRUE(mount_->AddFile("v", device_, false).ok());
  std::string path = mount_->FilePath("v");
  std::atomic<bool> stop{false};
  std::atomic<int> ok_ios{0};
  std::vector<std::thread> threads;
  std::vector<int> fds;
  for (int i = 0; i < 4; ++i) {
    int fd = open(path.c_str(), O_RDWR | O_DIRECT);
    ASSERT_GE(fd, 0);
    fds.push_back(fd);
    threads.emplace_back([fd, i, &stop, &ok_ios] {
      AlignedBuffer buf(256 << 10);
      StampSectors(buf.span(), 0, 1);
      for (uint64_t n = 0; !stop; ++n) {
        off_t off = static_cast<off_t>(((n * 4 + i) * buf.size()) % kSize);
        ssize_t r = (n % 2) ? pread(fd, buf.data(), buf.size(), off)
                            : pwrite(fd, buf.data(), buf.size(), off);
        if (r < 0) break;  // the mount went away
        ok_ios++;
      }
    });
  }
  while (ok_ios < 100) std::this_thread::yield();
  mount_.reset();  // must not hang with the files open and I/O in flight
  stop = true;
  for (auto& t : threads) t.join();
  for (int fd : fds) {
    char c;
    EXPECT_EQ(pread(fd, &c, 1, 0), -1);  // the connection is gone
    close(fd);
  }
  struct statfs st;
  ASSERT_EQ(statfs(dir_.path().c_str(), &st), 0);
  EXPECT_NE(st.f_type, 0x65735546) << "still a FUSE mount";
}

TEST_F(MountTest, LiveMountIsRefused) {
  auto second = Mount::Create(dir_.path());
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().errnum(), EBUSY);
}

TEST(MountStaleTest, StaleMountIsReplaced) {
  if (!testing::IsRoot() || access("/dev/loop-control", W_OK) != 0)
    GTEST_SKIP() << "needs root, /dev/fuse and /dev/loop-control";
  TempDir dir;
  // A child mounts, puts a loop device on a file and dies without cleaning up (a crashed
  // daemon): the kernel keeps a dead mount at dir; the loop device unbinds itself (autoclear)
  // when the child's fds close.
  int pipe_fds[2];
  ASSERT_EQ(pipe(pipe_fds), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(pipe_fds[0]);
    auto mount = Mount::Create(dir.path());
    if (!mount.ok() || !(*mount)->AddFile("v", MakeMemoryDevice(1 << 20), false).ok()) _exit(1);
    auto loop = LoopDevice::Attach((*mount)->FilePath("v"), 512, false);
    if (!loop.ok()) _exit(2);
    int number = loop->number();
    if (write(pipe_fds[1], &number, sizeof(number)) != sizeof(number)) _exit(3);
    _exit(0);  // no destructors
  }
  close(pipe_fds[1]);
  int number = -1;
  ASSERT_EQ(read(pipe_fds[0], &number, sizeof(number)), ssize_t(sizeof(number)));
  close(pipe_fds[0]);
  int wstatus = 0;
  ASSERT_EQ(waitpid(pid, &wstatus, 0), pid);
  ASSERT_TRUE(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0);
  struct statfs st;
  ASSERT_NE(statfs(dir.path().c_str(), &st), 0);
  ASSERT_EQ(errno, ENOTCONN);
  EXPECT_NE(
      access(("/sys/block/loop" + std::to_string(number) + "/loop/backing_file").c_str(), F_OK), 0)
      << "loop device of the dead process still bound";

  auto mount = Mount::Create(dir.path());
  ASSERT_TRUE(mount.ok()) << mount.status().ToString();
  auto device = MakeMemoryDevice(1 << 20);
  ASSERT_TRUE((*mount)->AddFile("v", device, false).ok());
  int fd = open((*mount)->FilePath("v").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0) << strerror(errno);
  close(fd);
}

}  // namespace
}  // namespace blksnap::fuse
