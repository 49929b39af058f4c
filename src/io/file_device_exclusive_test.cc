// FileOpenOptions::exclusive on a real block device (root, losetup, mkfs.ext4; skipped otherwise):
//  1. a loop device over a file with ext4, mounted: an exclusive open fails with EBUSY and a
//     message saying blksnap must be its only user; a plain open still works (as before);
//  2. unmounted and held exclusively by us: mounting it fails; after we close it, it mounts;
//  3. on a regular file, exclusive is ignored (opens fine).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "blksnap/io.h"
#include "util/test_loop.h"

namespace blksnap {
namespace {

TEST(FileDeviceExclusiveTest, MountedDeviceRefusedAndHeldDeviceCannotBeMounted) {
  char tmpl[] = "/var/tmp/blksnap-excl-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  const std::string image = dir + "/fs.img", mnt = dir + "/mnt";
  std::filesystem::create_directory(mnt);
  ASSERT_EQ(::close(::open(image.c_str(), O_RDWR | O_CREAT, 0600)), 0);
  ASSERT_EQ(::truncate(image.c_str(), 32 << 20), 0);
  // Regular files ignore the option.
  EXPECT_TRUE(OpenFileDevice(image, {.exclusive = true}).ok());
  struct Cleanup {
    std::string dir, mnt;
    ~Cleanup() {
      ::umount2(mnt.c_str(), MNT_DETACH);
      std::filesystem::remove_all(dir);
    }
  } cleanup{dir, mnt};
  if (std::system(("mkfs.ext4 -q -F " + image + " >/dev/null 2>&1").c_str()) != 0) {
    GTEST_SKIP() << "mkfs.ext4 unavailable";
  }
  ScopedLoop loop(image);
  if (loop.path().empty()) GTEST_SKIP() << "needs root and losetup";

  ASSERT_EQ(::mount(loop.path().c_str(), mnt.c_str(), "ext4", 0, nullptr), 0) << errno;
  auto mounted = OpenFileDevice(loop.path(), {.direct = true, .exclusive = true});
  ASSERT_FALSE(mounted.ok());
  EXPECT_EQ(mounted.status().errnum(), EBUSY);
  EXPECT_NE(mounted.status().message().find("only user"), std::string_view::npos)
      << mounted.status().ToString();
  EXPECT_TRUE(OpenFileDevice(loop.path(), {.direct = true}).ok());  // not exclusive: as before
  ASSERT_EQ(::umount(mnt.c_str()), 0);

  {
    auto held = OpenFileDevice(loop.path(), {.direct = true, .exclusive = true});
    ASSERT_TRUE(held.ok()) << held.status().ToString();
    EXPECT_NE(::mount(loop.path().c_str(), mnt.c_str(), "ext4", 0, nullptr), 0);
    EXPECT_EQ(errno, EBUSY);
  }
  ASSERT_EQ(::mount(loop.path().c_str(), mnt.c_str(), "ext4", 0, nullptr), 0) << errno;
  ASSERT_EQ(::umount(mnt.c_str()), 0);
}

}  // namespace
}  // namespace blksnap
