// Unit tests of the mountinfo parser and of FrozenFilesystems on devices with nothing mounted.
// Freezing real file systems is covered by tests/fuse (integration).
#include "fuse/freeze.h"

#include <gtest/gtest.h>
#include <sys/sysmacros.h>

namespace blksnap::fuse {
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

TEST(FreezeTest, NothingMountedIsNothingFrozen) {
  auto frozen = FrozenFilesystems::Freeze({makedev(7, 250), makedev(259, 77)});
  ASSERT_TRUE(frozen.ok()) << frozen.status().ToString();
  EXPECT_TRUE(frozen->mount_points().empty());
  frozen->Thaw();
  auto empty = FrozenFilesystems::Freeze({});
  EXPECT_TRUE(empty.ok());
}

}  // namespace
}  // namespace blksnap::fuse
