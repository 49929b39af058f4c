// Unit tests of fuse::LoopDevice: loop devices on regular files and on FUSE files (root only).
// Data written through /dev/loopN with O_DIRECT is checked on the backing device with the
// sector pattern.
#include "fuse/loop_device.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <thread>
#include <vector>

#include "blksnap/io.h"
#include "fuse/fuse_mount.h"
#include "fuse/test_util.h"
#include "testing/sector_pattern.h"

namespace blksnap::fuse {
namespace {

using blksnap::testing::StampSectors;
using blksnap::testing::VerifySectors;
using testing::AlignedBuffer;
using testing::TempDir;

// True while loop device `number` is bound to `file`. (Other processes on this machine attach
// loop devices too: a freed number may be bound again at once, to their file.)
bool Bound(int number, const std::string& file) {
  std::ifstream in("/sys/block/loop" + std::to_string(number) + "/loop/backing_file");
  std::string backing;
  return in && std::getline(in, backing) && backing == file;
}

class LoopTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!testing::IsRoot() || access("/dev/loop-control", W_OK) != 0)
      GTEST_SKIP() << "needs root, /dev/fuse and /dev/loop-control";
    auto mount = Mount::Create(dir_.path());
    ASSERT_TRUE(mount.ok()) << mount.status().ToString();
    mount_ = std::move(mount).value();
  }

  TempDir dir_;
  std::unique_ptr<Mount> mount_;
};

TEST_F(LoopTest, DirectIoOnFuseFile) {
  auto device = MakeMemoryDevice(16 << 20);
  ASSERT_TRUE(mount_->AddFile("vol", device, false).ok());
  auto loop = LoopDevice::Attach(mount_->FilePath("vol"), 512, false);
  ASSERT_TRUE(loop.ok()) << loop.status().ToString();
  EXPECT_TRUE(loop->direct_io()) << "the loop driver refused direct I/O on the FUSE file";
  EXPECT_EQ(major(loop->rdev()), 7u);
  EXPECT_EQ(loop->path(), "/dev/loop" + std::to_string(loop->number()));
  EXPECT_TRUE(mount_->IsOpen("vol"));

  int fd = open(loop->path().c_str(), O_RDWR | O_DIRECT);
  ASSERT_GE(fd, 0);
  uint64_t size = 0;
  ASSERT_EQ(ioctl(fd, BLKGETSIZE64, &size), 0);
  EXPECT_EQ(size, 16u << 20);
  AlignedBuffer buf(1 << 20);
  for (uint64_t off = 0; off < size; off += buf.size()) {
    StampSectors(buf.span(), off / 512, 11);
    ASSERT_EQ(pwrite(fd, buf.data(), buf.size(), off), static_cast<ssize_t>(buf.size()));
  }
  ASSERT_EQ(fsync(fd), 0);
  close(fd);
  std::vector<uint8_t> back(size);
  ASSERT_TRUE(device->Read(0, back).ok());
  EXPECT_TRUE(VerifySectors(back, 0, 11).ok());

  int number = loop->number();
  std::string file = loop->backing_file();
  EXPECT_EQ(file, mount_->FilePath("vol"));
  EXPECT_TRUE(Bound(number, file));
  ASSERT_TRUE(loop->Detach().ok());
  EXPECT_FALSE(Bound(number, file));
  EXPECT_FALSE(loop->attached());
  // The kernel releases the backing file asynchronously (FUSE sends release in the
  // background): wait, bounded, for the handle to close.
  for (int i = 0; i < 500 && mount_->IsOpen("vol"); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_FALSE(mount_->IsOpen("vol"));
}

TEST_F(LoopTest, BlockSize4096AndReadOnly) {
  auto device = MakeMemoryDevice(4 << 20, 4096);
  ASSERT_TRUE(mount_->AddFile("vol", device, false).ok());
  auto loop = LoopDevice::Attach(mount_->FilePath("vol"), 4096, true);
  ASSERT_TRUE(loop.ok()) << loop.status().ToString();
  int fd = open(loop->path().c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  int lbs = 0, ro = 0;
  ASSERT_EQ(ioctl(fd, BLKSSZGET, &lbs), 0);
  EXPECT_EQ(lbs, 4096);
  ASSERT_EQ(ioctl(fd, BLKROGET, &ro), 0);
  EXPECT_EQ(ro, 1);
  close(fd);
  // A read-only block device may be opened for writing, but writes fail.
  fd = open(loop->path().c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  char sector[4096] = {};
  EXPECT_EQ(pwrite(fd, sector, sizeof(sector), 0), -1);
  EXPECT_EQ(errno, EPERM);
  close(fd);
  EXPECT_EQ(LoopDevice::Attach(mount_->FilePath("vol"), 1000, false).status().errnum(), EINVAL);
}

TEST_F(LoopTest, DetachWhileOpenIsDeferred) {
  auto device = MakeMemoryDevice(1 << 20);
  ASSERT_TRUE(mount_->AddFile("vol", device, false).ok());
  auto loop = LoopDevice::Attach(mount_->FilePath("vol"), 512, false);
  ASSERT_TRUE(loop.ok());
  int number = loop->number();
  std::string file = loop->backing_file();
  int holder = open(loop->path().c_str(), O_RDONLY);
  ASSERT_GE(holder, 0);
  EXPECT_EQ(loop->Detach().errnum(), EBUSY);
  EXPECT_TRUE(Bound(number, file));
  close(holder);  // the last close unbinds (autoclear)
  EXPECT_FALSE(Bound(number, file));
}

TEST_F(LoopTest, MoveAndDestructorDetach) {
  auto device = MakeMemoryDevice(1 << 20);
  ASSERT_TRUE(mount_->AddFile("vol", device, false).ok());
  int number = -1;
  std::string file = mount_->FilePath("vol");
  {
    auto loop = LoopDevice::Attach(mount_->FilePath("vol"), 512, false);
    ASSERT_TRUE(loop.ok());
    LoopDevice moved = std::move(loop).value();
    number = moved.number();
    EXPECT_TRUE(Bound(number, file));
  }
  EXPECT_FALSE(Bound(number, file));
}

TEST_F(LoopTest, DetachLoopDevicesUnder) {
  auto device = MakeMemoryDevice(1 << 20);
  ASSERT_TRUE(mount_->AddFile("a", device, false).ok());
  ASSERT_TRUE(mount_->AddFile("b", device, false).ok());
  auto a = LoopDevice::Attach(mount_->FilePath("a"), 512, false);
  auto b = LoopDevice::Attach(mount_->FilePath("b"), 512, false);
  ASSERT_TRUE(a.ok() && b.ok());
  auto detached = DetachLoopDevicesUnder(dir_.path());
  ASSERT_TRUE(detached.ok());
  EXPECT_EQ(*detached, 2);
  int na = a->number(), nb = b->number();
  ASSERT_TRUE(a->Detach().ok());  // already unbound by the sweep: closing is all that is left
  ASSERT_TRUE(b->Detach().ok());
  EXPECT_FALSE(Bound(na, mount_->FilePath("a")));
  EXPECT_FALSE(Bound(nb, mount_->FilePath("b")));
}

}  // namespace
}  // namespace blksnap::fuse
