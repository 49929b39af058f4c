// Unit tests of FileTable (no FUSE, no root): the name rules, fresh inode numbers, removal
// revoking the device of open handles, open counts, and Clear() letting go of everything.
#include "fuse/file_table.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "blksnap/io.h"

namespace blksnap::fuse {
namespace {

constexpr uint64_t kSize = 1 << 20;

class ReadOnlyDevice : public ForwardingDevice {
 public:
  using ForwardingDevice::ForwardingDevice;
  DeviceCapabilities capabilities() const override {
    DeviceCapabilities caps = ForwardingDevice::capabilities();
    caps.read_only = true;
    return caps;
  }
};

TEST(FileTableTest, NameRules) {
  FileTable files;
  const std::string bad_names[] = {
      "", ".", "..", "a/b", std::string(256, 'x'), std::string("a\0b", 3)};
  for (const std::string& bad : bad_names) {
    EXPECT_EQ(files.Add(bad, MakeMemoryDevice(kSize), false).errnum(), EINVAL) << bad;
  }
  EXPECT_EQ(files.Add("nodev", nullptr, false).errnum(), EINVAL);
  EXPECT_TRUE(files.Add("vol0@snap-1", MakeMemoryDevice(kSize), false).ok());
  EXPECT_TRUE(files.Add(std::string(255, 'x'), MakeMemoryDevice(kSize), false).ok());
  EXPECT_EQ(files.Add("vol0@snap-1", MakeMemoryDevice(kSize), false).errnum(), EEXIST);
  EXPECT_EQ(files.List().size(), 2u);
}

TEST(FileTableTest, ReadOnlyFromFlagOrDevice) {
  FileTable files;
  ASSERT_TRUE(files.Add("rw", MakeMemoryDevice(kSize), false).ok());
  ASSERT_TRUE(files.Add("ro", MakeMemoryDevice(kSize), true).ok());
  ASSERT_TRUE(
      files.Add("dev-ro", std::make_shared<ReadOnlyDevice>(MakeMemoryDevice(kSize)), false).ok());
  EXPECT_FALSE(files.FindName("rw")->read_only);
  EXPECT_TRUE(files.FindName("ro")->read_only);
  EXPECT_TRUE(files.FindName("dev-ro")->read_only);
  EXPECT_EQ(files.FindName("rw")->size, kSize);
}

TEST(FileTableTest, InodesAreFreshAndNeverReused) {
  FileTable files;
  ASSERT_TRUE(files.Add("a", MakeMemoryDevice(kSize), false).ok());
  const uint64_t first = files.FindName("a")->ino;
  EXPECT_GT(first, kRootIno);
  EXPECT_EQ(files.FindIno(first)->name, "a");
  ASSERT_TRUE(files.Remove("a").ok());
  EXPECT_EQ(files.FindIno(first), nullptr);
  EXPECT_EQ(files.FindName("a"), nullptr);
  ASSERT_TRUE(files.Add("a", MakeMemoryDevice(kSize), false).ok());
  EXPECT_NE(files.FindName("a")->ino, first);
  EXPECT_EQ(files.FindIno(first), nullptr);
  EXPECT_EQ(files.FindIno(kRootIno), nullptr);
  EXPECT_EQ(files.Remove("missing").errnum(), ENOENT);
}

TEST(FileTableTest, RemoveRevokesOpenHandlesAndCountsThem) {
  FileTable files;
  auto device = MakeMemoryDevice(kSize);
  ASSERT_TRUE(files.Add("vol", device, false).ok());
  EXPECT_FALSE(files.IsOpen("vol"));
  Handle* one = files.Open(files.FindName("vol"), false);
  Handle* two = files.Open(files.FindName("vol"), true);
  EXPECT_TRUE(files.IsOpen("vol"));
  EXPECT_TRUE(two->fua);
  EXPECT_EQ(one->entry->Device(), device);
  files.Release(one);
  EXPECT_TRUE(files.IsOpen("vol"));

  std::weak_ptr<BlockDevice> watch = device;
  device.reset();
  ASSERT_TRUE(files.Remove("vol").ok());
  EXPECT_EQ(two->entry->Device(), nullptr) << "an open handle still reaches a removed device";
  EXPECT_TRUE(watch.expired()) << "the table kept the removed device alive";
  EXPECT_FALSE(files.IsOpen("vol"));  // the name is gone
  EXPECT_EQ(two->entry->open_count.load(), 1);
  files.Release(two);
}

TEST(FileTableTest, ClearDropsDevicesAndFreesUnreleasedHandles) {
  FileTable files;
  auto device = MakeMemoryDevice(kSize);
  ASSERT_TRUE(files.Add("vol", device, false).ok());
  Handle* handle = files.Open(files.FindName("vol"), false);
  std::weak_ptr<FileEntry> entry = handle->entry;
  std::weak_ptr<BlockDevice> watch = device;
  device.reset();
  files.Clear();
  EXPECT_TRUE(watch.expired());
  EXPECT_TRUE(entry.expired()) << "the handle (and its entry) outlived Clear()";
  EXPECT_TRUE(files.List().empty());
  files.Release(handle);  // the kernel's late release after Clear(): ignored
  ASSERT_TRUE(files.Add("vol", MakeMemoryDevice(kSize), false).ok());  // still usable
}

}  // namespace
}  // namespace blksnap::fuse
