// Tests of the sysfs walk (block_topology.h).
//
// FakeSysfs builds the entries block_topology reads in a temp dir: a disk 8:0 with partitions
// 8:1 and 8:2, a device-mapper 253:0 over 8:1 (slaves/holders), and loop devices 7:0 / 7:1 whose
// backing_file names real temp files, so the loop -> file -> fs-device edges use real stat(2).
// RealLoop (root and losetup needed; skipped otherwise) checks the same against the kernel's own
// sysfs: a loop device over a temp file resolves to that file, and LoopsBoundTo finds it.
#include "util/block_topology.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

namespace blksnap::topology {
namespace {

namespace fs = std::filesystem;

class FakeSysfs : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/blksnap-sysfs-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    root_ = tmpl;
    data_ = root_ + "/data";
    fs::create_directories(data_);
    // A disk and its partitions: partitions are subdirectories of the disk's directory.
    AddDevice("devices/sda", makedev(8, 0));
    AddDevice("devices/sda/sda1", makedev(8, 1), /*partition=*/true);
    AddDevice("devices/sda/sda2", makedev(8, 2), /*partition=*/true);
    AddDevice("devices/dm-0", makedev(253, 0));
    Link("devices/dm-0/slaves/sda1", "devices/sda/sda1");
    Link("devices/sda/sda1/holders/dm-0", "devices/dm-0");
    file_a_ = MakeFile("a.img");
    file_b_ = MakeFile("b.img");
    AddDevice("devices/loop0", makedev(7, 0));
    Write("devices/loop0/loop/backing_file", file_a_ + "\n");
    AddDevice("devices/loop1", makedev(7, 1));
    Write("devices/loop1/loop/backing_file", file_a_ + "\n");  // a second loop on a.img
    AddDevice("devices/loop2", makedev(7, 2));                 // unbound
    Link("block/loop0", "devices/loop0");
    Link("block/loop1", "devices/loop1");
    Link("block/loop2", "devices/loop2");
    Link("block/sda", "devices/sda");
  }
  void TearDown() override { fs::remove_all(root_); }

  void Write(const std::string& rel, const std::string& text) {
    const fs::path p = fs::path(root_) / rel;
    fs::create_directories(p.parent_path());
    std::ofstream(p) << text;
  }
  void Link(const std::string& rel, const std::string& target_rel) {
    const fs::path p = fs::path(root_) / rel;
    fs::create_directories(p.parent_path());
    fs::create_directory_symlink(fs::path(root_) / target_rel, p);
  }
  void AddDevice(const std::string& rel, uint64_t rdev, bool partition = false) {
    Write(rel + "/dev", DevName(rdev) + "\n");
    if (partition) Write(rel + "/partition", "1\n");
    Link("dev/block/" + DevName(rdev), rel);
  }
  std::string MakeFile(const std::string& name) {
    const std::string path = data_ + "/" + name;
    std::ofstream(path) << "data";
    return path;
  }
  static Node Block(uint64_t rdev) {
    Node n;
    n.rdev = rdev;
    return n;
  }
  static Node File(const std::string& path) {
    Node n;
    EXPECT_TRUE(NodeForPath(path, &n));
    return n;
  }

  std::string root_, data_, file_a_, file_b_;
};

TEST_F(FakeSysfs, LoopsAndStacks) {
  EXPECT_EQ(LoopBackingFile(root_, makedev(7, 0)), file_a_);
  EXPECT_EQ(LoopBackingFile(root_, makedev(7, 2)), "");
  EXPECT_EQ(LowerDevices(root_, makedev(253, 0)), std::vector<uint64_t>{makedev(8, 1)});
  EXPECT_EQ(LowerDevices(root_, makedev(8, 2)), std::vector<uint64_t>{makedev(8, 0)});
  EXPECT_TRUE(LowerDevices(root_, makedev(8, 0)).empty());
  auto upper = UpperDevices(root_, makedev(8, 0));
  std::sort(upper.begin(), upper.end());
  EXPECT_EQ(upper, (std::vector<uint64_t>{makedev(8, 1), makedev(8, 2)}));
  EXPECT_EQ(UpperDevices(root_, makedev(8, 1)), std::vector<uint64_t>{makedev(253, 0)});
}

TEST_F(FakeSysfs, ResolveLowerFollowsLoopSlavesAndPartitions) {
  // dm-0 -> sda1 -> sda (partial below dm-0).
  auto dm = ResolveLower(root_, Block(makedev(253, 0)));
  ASSERT_EQ(dm.size(), 3u);
  EXPECT_TRUE(dm[0].whole);
  EXPECT_EQ(dm[1].rdev, makedev(8, 1));
  EXPECT_FALSE(dm[1].whole);
  EXPECT_EQ(dm[2].rdev, makedev(8, 0));
  // loop0 -> a.img (whole) -> the file system's device (partial).
  auto loop = ResolveLower(root_, Block(makedev(7, 0)));
  ASSERT_GE(loop.size(), 2u);
  EXPECT_TRUE(loop[1].SameAs(File(file_a_)));
  EXPECT_TRUE(loop[1].whole);
}

TEST_F(FakeSysfs, OverlapNeedsAWholeSharedNode) {
  auto lower = [&](Node n) { return ResolveLower(root_, n); };
  // A loop over a tracked file is that file.
  EXPECT_TRUE(Overlaps(lower(Block(makedev(7, 0))), lower(File(file_a_))));
  EXPECT_FALSE(Overlaps(lower(Block(makedev(7, 0))), lower(File(file_b_))));
  // Two loops over one file alias each other.
  Node shared;
  EXPECT_TRUE(Overlaps(lower(Block(makedev(7, 0))), lower(Block(makedev(7, 1))), &shared));
  EXPECT_TRUE(shared.is_file);
  // Partitions of one disk do not; a disk and its partition do; a dm over a partition does.
  EXPECT_FALSE(Overlaps(lower(Block(makedev(8, 1))), lower(Block(makedev(8, 2)))));
  EXPECT_TRUE(Overlaps(lower(Block(makedev(8, 0))), lower(Block(makedev(8, 2)))));
  EXPECT_TRUE(Overlaps(lower(Block(makedev(253, 0))), lower(Block(makedev(8, 1)))));
  EXPECT_TRUE(Overlaps(lower(Block(makedev(253, 0))), lower(Block(makedev(8, 0)))));
  EXPECT_FALSE(Overlaps(lower(Block(makedev(253, 0))), lower(Block(makedev(8, 2)))));
  // Two files on one file system share only a partial device.
  EXPECT_FALSE(Overlaps(lower(File(file_a_)), lower(File(file_b_))));
}

TEST_F(FakeSysfs, LoopsBoundToAFile) {
  const Node a = File(file_a_);
  auto loops = LoopsBoundTo(root_, a.dev, a.ino);
  ASSERT_EQ(loops.size(), 2u);
  std::sort(loops.begin(), loops.end(),
            [](const auto& x, const auto& y) { return x.device < y.device; });
  EXPECT_EQ(loops[0].device, "/dev/loop0");
  EXPECT_EQ(loops[0].rdev, makedev(7, 0));
  EXPECT_EQ(loops[1].device, "/dev/loop1");
  const Node b = File(file_b_);
  EXPECT_TRUE(LoopsBoundTo(root_, b.dev, b.ino).empty());
  EXPECT_TRUE(LoopsBoundTo(root_ + "/nonexistent", a.dev, a.ino).empty());
}

// The kernel's sysfs: a loop device over a temp file.
TEST(RealSysfsTest, RealLoop) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root for losetup";
  char tmpl[] = "/var/tmp/blksnap-topo-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  const std::string file = dir + "/backing.img";
  ASSERT_EQ(::truncate((file).c_str(), 0), -1);  // not there yet
  { std::ofstream(file) << std::string(1 << 20, 'x'); }
  FILE* p = ::popen(("losetup --find --show " + file + " 2>/dev/null").c_str(), "r");
  ASSERT_NE(p, nullptr);
  char line[256] = {};
  std::string loop;
  if (std::fgets(line, sizeof(line), p)) loop = line;
  const bool ok = ::pclose(p) == 0;
  while (!loop.empty() && loop.back() == '\n') loop.pop_back();
  if (!ok || loop.empty()) {
    fs::remove_all(dir);
    GTEST_SKIP() << "losetup unavailable";
  }
  Node loop_node, file_node;
  ASSERT_TRUE(NodeForPath(loop, &loop_node));
  ASSERT_TRUE(NodeForPath(file, &file_node));
  EXPECT_FALSE(loop_node.is_file);
  EXPECT_EQ(LoopBackingFile("/sys", loop_node.rdev), file);
  EXPECT_TRUE(Overlaps(ResolveLower("/sys", loop_node), ResolveLower("/sys", file_node)));
  bool found = false;
  for (const auto& b : LoopsBoundTo("/sys", file_node.dev, file_node.ino)) {
    found = found || (b.device == loop && b.rdev == loop_node.rdev);
  }
  EXPECT_TRUE(found);
  EXPECT_EQ(std::system(("losetup -d " + loop).c_str()), 0);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace blksnap::topology
