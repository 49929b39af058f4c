// Tests of FrozenFilesystems and the mountinfo parser.
//
// RealExt4FreezesAndThaws (root, losetup and mkfs.ext4 needed; skipped otherwise) checks that a
// freeze really freezes, which a no-op Freeze would not pass:
//  1. a 64 MiB file in a temp dir, a loop device on it (losetup), ext4 on that, mounted;
//  2. Freeze on the loop device before mounting returns nothing frozen;
//  3. after mounting, Freeze({loop, loop}) freezes exactly that mount point, once;
//  4. FIFREEZE on the mount point again fails with EBUSY (the kernel says it is frozen);
//  5. a thread that creates and writes a file blocks (state D, never finishes) while frozen;
//  6. Thaw(): the writer finishes and its data is there; FIFREEZE works again (then thawed).
// The file system is always thawed and unmounted on the way out, even when a check fails.
#include "util/freeze.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>

#include "util/fd.h"

namespace blksnap {
namespace {

TEST(ParseMountInfoTest, Fields) {
  auto mounts = ParseMountInfo(
      "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n"
      "37 35 7:3 / /srv rw shared:2 - xfs /dev/loop3 rw\n"
      "38 35 0:45 / /run/blksnap/fuse rw - fuse.blksnap blksnap rw\n"
      "garbage\n");
  ASSERT_EQ(mounts.size(), 3u);
  EXPECT_EQ(mounts[0].rdev, makedev(98, 0));
  EXPECT_EQ(mounts[0].mount_point, "/mnt/with space");
  EXPECT_EQ(mounts[0].fs_type, "ext3");
  EXPECT_EQ(mounts[1].rdev, makedev(7, 3));
  EXPECT_EQ(mounts[1].fs_type, "xfs");
  EXPECT_EQ(mounts[2].fs_type, "fuse.blksnap");
}

// Runs a shell command; returns its exit status and its first output line.
int Shell(const std::string& command, std::string* first_line = nullptr) {
  FILE* p = ::popen((command + " 2>&1").c_str(), "r");
  if (p == nullptr) return -1;
  char buf[512];
  std::string out;
  while (std::fgets(buf, sizeof(buf), p) != nullptr) out += buf;
  int status = ::pclose(p);
  if (first_line != nullptr) *first_line = out.substr(0, out.find('\n'));
  if (status != 0) std::fprintf(stderr, "$ %s\n%s", command.c_str(), out.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// The scheduler state letter of thread tid of this process ('D': uninterruptible sleep).
char ThreadState(pid_t tid) {
  std::ifstream in("/proc/self/task/" + std::to_string(tid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  size_t paren = stat.rfind(')');
  return paren == std::string::npos || paren + 2 >= stat.size() ? '?' : stat[paren + 2];
}

// ext4 on a loop device over a file in a fresh temp dir; torn down (thawed first) on destruction.
class LoopExt4 {
 public:
  ~LoopExt4() {
    if (mounted_) {
      Fd dir(::open(mount_point_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
      if (dir.valid()) (void)::ioctl(dir.get(), FITHAW, 0);  // a test that failed midway
      (void)::umount2(mount_point_.c_str(), MNT_DETACH);
    }
    if (!device_.empty()) Shell("losetup -d " + device_);
    if (!image_.empty()) ::unlink(image_.c_str());
    if (!mount_point_.empty()) ::rmdir(mount_point_.c_str());
    if (!dir_.empty()) ::rmdir(dir_.c_str());
  }

  // Empty on success, else why the environment cannot run the test.
  std::string Setup() {
    char tmpl[] = "/tmp/blksnap-freeze-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) return "mkdtemp failed";
    dir_ = tmpl;
    image_ = dir_ + "/image";
    mount_point_ = dir_ + "/mnt";
    if (::mkdir(mount_point_.c_str(), 0755) != 0) return "mkdir failed";
    if (Shell("truncate -s 64M " + image_) != 0) return "truncate failed";
    if (Shell("mkfs.ext4 -q -F " + image_) != 0) return "mkfs.ext4 failed";
    if (Shell("losetup --find --show " + image_, &device_) != 0 || device_.empty()) {
      device_.clear();
      return "losetup failed (no loop devices?)";
    }
    struct stat st;
    if (::stat(device_.c_str(), &st) != 0) return "stat " + device_ + " failed";
    rdev_ = st.st_rdev;
    return "";
  }

  bool Mount() {
    mounted_ = ::mount(device_.c_str(), mount_point_.c_str(), "ext4", 0, nullptr) == 0;
    return mounted_;
  }

  uint64_t rdev() const { return rdev_; }
  const std::string& mount_point() const { return mount_point_; }

 private:
  std::string dir_, image_, mount_point_, device_;
  uint64_t rdev_ = 0;
  bool mounted_ = false;
};

TEST(FreezeTest, RealExt4FreezesAndThaws) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (loop devices, mount, FIFREEZE)";
  if (Shell("command -v losetup && command -v mkfs.ext4") != 0) GTEST_SKIP() << "no losetup/mkfs";
  LoopExt4 fs;
  if (std::string why = fs.Setup(); !why.empty()) GTEST_SKIP() << why;

  auto nothing = FrozenFilesystems::Freeze({fs.rdev()});  // not mounted yet
  ASSERT_TRUE(nothing.ok()) << nothing.status().ToString();
  EXPECT_TRUE(nothing->mount_points().empty());

  ASSERT_TRUE(fs.Mount()) << "mount ext4: " << std::strerror(errno);
  auto frozen = FrozenFilesystems::Freeze({fs.rdev(), fs.rdev()});
  ASSERT_TRUE(frozen.ok()) << frozen.status().ToString();
  ASSERT_EQ(frozen->mount_points().size(), 1u);
  EXPECT_EQ(frozen->mount_points()[0], fs.mount_point());

  Fd dir(::open(fs.mount_point().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  ASSERT_TRUE(dir.valid());
  errno = 0;
  EXPECT_EQ(::ioctl(dir.get(), FIFREEZE, 0), -1) << "the file system was not frozen";
  EXPECT_EQ(errno, EBUSY);
  if (errno == 0) (void)::ioctl(dir.get(), FITHAW, 0);  // undo our own freeze

  // A writer blocks in the kernel while frozen.
  const std::string file = fs.mount_point() + "/written-while-frozen";
  std::atomic<pid_t> writer_tid{0};
  std::atomic<bool> written{false};
  std::thread writer([&] {
    writer_tid = ::gettid();
    Fd fd(::open(file.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644));
    const char data[] = "after the thaw";
    written = fd.valid() && ::write(fd.get(), data, sizeof(data)) == ssize_t(sizeof(data)) &&
              ::fsync(fd.get()) == 0;
  });
  while (writer_tid == 0) std::this_thread::yield();
  bool blocked = false;
  for (int i = 0; i < 300 && !blocked && !written; ++i) {
    blocked = ThreadState(writer_tid) == 'D';
    if (!blocked) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_TRUE(blocked) << "the writer never blocked on the frozen file system";
  EXPECT_FALSE(written) << "a write went through a frozen file system";

  frozen->Thaw();
  for (int i = 0; i < 1000 && !written; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_TRUE(written) << "the writer did not finish after Thaw()";
  if (!written) (void)::ioctl(dir.get(), FITHAW, 0);  // a broken Thaw: let the writer go
  writer.join();
  struct stat st;
  EXPECT_EQ(::stat(file.c_str(), &st), 0);

  // Thawed for real: the kernel lets us freeze it again.
  EXPECT_EQ(::ioctl(dir.get(), FIFREEZE, 0), 0) << std::strerror(errno);
  (void)::ioctl(dir.get(), FITHAW, 0);
  frozen->Thaw();  // idempotent: nothing left to thaw
}

}  // namespace
}  // namespace blksnap
