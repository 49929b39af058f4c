// Issue-5 flows through the library: engine + fuse::Mount + loop devices + freeze (root only).
//
// Purpose: the whole path a user takes (a file system on the loop device of a tracked
// volume's FUSE file, a consistent snapshot taken with the file system frozen, the image
// mounted from its own FUSE file and loop device) works and keeps the original and the image
// apart, for ext4 and xfs, one or two devices, and every kind of difference storage; and it
// survives concurrent writers, destroy under load and an exhausted storage limit.
//
// Algorithm:
//  - StandardFlow (ext4 / xfs): mkfs on the front loop device, write files with dd
//    oflag=direct, record sha256; create + take a snapshot whose freeze hook FIFREEZEs the
//    file system (FrozenFilesystems, called from the test thread, not a FUSE worker); write
//    more files, delete two pre-take files and fstrim (discards through the tracker); expose the
//    image read-only (FUSE file + loop), fsck it (ext4: clean; a frozen xfs keeps a dirty log),
//    mount it read-only (xfs: nouuid,norecovery) and find exactly the files from before the take;
//    expose it read-write, mount (xfs: nouuid), write files, unmount, fsck (clean), remount, check
//    them; destroy; unmount the original, fsck, remount and find every original file and no image
//    file.
//  - TwoDevicesAndStorageKinds: two volumes in one snapshot, storage in a directory, in a
//    file, on a separate loop block device; both images carry the pre-take files.
//  - ConcurrentWrites: sector-pattern seq 1 on the front; take; writers on the front (seq 2)
//    and on the image (seq 3) at once over overlapping ranges; afterwards the front holds 2
//    where written and 1 elsewhere, the image 3 where written and 1 elsewhere.
//  - DestroyUnderLoad: readers and writers on the front and image loop devices; Destroy while
//    they run: no hang, image I/O fails, every front write landed (pattern verifies).
//  - StorageLimit: small limit, heavy file writes on the original file system: the corrupted
//    event arrives, image reads fail with EIO, the original fscks clean with all its files.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <atomic>
#include <deque>
#include <optional>
#include <sstream>
#include <thread>
#include <vector>

#include "blksnap/engine.h"
#include "blksnap/io.h"
#include "fs_util.h"
#include "fuse/fuse_mount.h"
#include "fuse/loop_device.h"
#include "testing/sector_pattern.h"
#include "util/freeze.h"

namespace blksnap::fuse {
namespace {

using blksnap::testing::StampSectors;
using blksnap::testing::VerifySectors;
using testing::AlignedBuffer;
using testing::CheckSums;
using testing::FsckCommand;
using testing::FsMount;
using testing::HaveTool;
using testing::MkfsCommand;
using testing::Shell;
using testing::TempDir;
using testing::WriteFiles;

#define ASSERT_OK(expr)                    \
  do {                                     \
    ::blksnap::Status s_ = (expr);         \
    ASSERT_TRUE(s_.ok()) << s_.ToString(); \
  } while (0)

class EngineFlowTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!testing::IsRoot() || access("/dev/loop-control", W_OK) != 0)
      GTEST_SKIP() << "needs root, /dev/fuse and /dev/loop-control";
    Config config;
    config.diff_storage_minimum = 16 << 20;
    auto engine = Engine::Create(config);
    ASSERT_TRUE(engine.ok()) << engine.status().ToString();
    engine_ = std::move(engine).value();
    auto mount = Mount::Create(fuse_dir_.path());
    ASSERT_TRUE(mount.ok()) << mount.status().ToString();
    mount_ = std::move(mount).value();
  }
  void TearDown() override {
    // Images and their loop devices go first, then snapshots, fronts, trackers.
    for (auto it = loops_.rbegin(); it != loops_.rend(); ++it) it->Detach().IgnoreError();
    loops_.clear();
    if (engine_) {
      for (auto& snapshot : engine_->snapshots()) engine_->Destroy(snapshot->id()).IgnoreError();
    }
    mount_.reset();
    engine_.reset();
    ::unlink((storage_dir_.path() + "/storage.img").c_str());
  }

  // A tracked volume over a sparse memory device, exposed as a FUSE file with a loop device.
  LoopDevice* AddVolume(const std::string& name, uint64_t size, uint32_t block_size = 512) {
    auto tracker = engine_->Attach(name, MakeMemoryDevice(size, block_size));
    if (!tracker.ok()) {
      ADD_FAILURE() << tracker.status().ToString();
      return nullptr;
    }
    LoopDevice* loop = Expose(name, *tracker, false);
    if (loop != nullptr) (*tracker)->AddAlias(loop->rdev());
    return loop;
  }
  LoopDevice* Expose(const std::string& file, std::shared_ptr<BlockDevice> device, bool read_only) {
    uint32_t lbs = device->logical_block_size();
    if (Status s = mount_->AddFile(file, std::move(device), read_only); !s.ok()) {
      ADD_FAILURE() << s.ToString();
      return nullptr;
    }
    auto loop = LoopDevice::Attach(mount_->FilePath(file), lbs, read_only);
    if (!loop.ok()) {
      ADD_FAILURE() << loop.status().ToString();
      return nullptr;
    }
    EXPECT_TRUE(loop->direct_io());
    loops_.push_back(std::move(loop).value());
    return &loops_.back();
  }
  void Unexpose(const std::string& file, LoopDevice* loop) {
    EXPECT_TRUE(loop->Detach().ok());
    EXPECT_TRUE(mount_->RemoveFile(file).ok());
  }

  // Creates a snapshot of `devices` and takes it with their file systems frozen.
  Result<Uuid> TakeSnapshot(const std::vector<std::string>& devices,
                            const std::vector<uint64_t>& rdevs, const std::string& storage,
                            uint64_t limit = 0) {
    BLKSNAP_ASSIGN_OR_RETURN(Uuid id,
                             engine_->CreateSnapshot({.storage_path = storage, .limit = limit}));
    for (const auto& d : devices) BLKSNAP_RETURN_IF_ERROR(engine_->AddDevice(id, d));
    std::optional<FrozenFilesystems> frozen;
    TakeHooks hooks{.freeze = [&]() -> Status {
                      auto f = FrozenFilesystems::Freeze(rdevs);
                      if (!f.ok()) return f.status();
                      frozen.emplace(std::move(f).value());
                      return Status::Ok();
                    },
                    .thaw =
                        [&] {
                          if (frozen) frozen->Thaw();
                        }};
    BLKSNAP_ASSIGN_OR_RETURN(TakeStats stats, engine_->Take(id, hooks));
    (void)stats;
    return id;
  }

  std::shared_ptr<BlockDevice> Image(const Uuid& id, const std::string& device) {
    auto snapshot = engine_->FindSnapshot(id);
    return snapshot ? snapshot->image(device) : nullptr;
  }

  TempDir fuse_dir_;
  TempDir storage_dir_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<Mount> mount_;
  std::deque<LoopDevice> loops_;  // stable addresses
};

class StandardFlow : public EngineFlowTest, public ::testing::WithParamInterface<const char*> {};

TEST_P(StandardFlow, SnapshotImageMountsCleanAndStaysApart) {
  const std::string fs = GetParam();
  if (!HaveTool("mkfs." + fs)) GTEST_SKIP() << "no mkfs." << fs;
  const std::string image_ro = fs == "xfs" ? "ro,nouuid" : "ro";
  const std::string image_rw = fs == "xfs" ? "rw,nouuid" : "rw";
  LoopDevice* front = AddVolume("vol", 512ull << 20);
  ASSERT_NE(front, nullptr);
  ASSERT_EQ(Shell(MkfsCommand(fs, front->path())), 0);
  FsMount original;
  ASSERT_EQ(original.Mount(front->path(), "rw"), 0);
  std::string before = WriteFiles(original.path(), "before", 6);
  ASSERT_FALSE(before.empty());

  auto id = TakeSnapshot({"vol"}, {front->rdev()}, storage_dir_.path());
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  std::string after = WriteFiles(original.path(), "after", 4);
  ASSERT_FALSE(after.empty());
  // Delete two pre-take files and discard their blocks: the discards reach the tracker as
  // WriteZeroes, which must preserve the old data for the image first.
  ASSERT_EQ(Shell("rm " + original.path() + "/before0 " + original.path() + "/before1"), 0);
  ASSERT_EQ(Shell("fstrim " + original.path()), 0);
  std::string kept;  // the sums of before2..before5
  {
    std::istringstream lines(before);
    std::string line;
    while (std::getline(lines, line))
      if (line.find("before0") == std::string::npos && line.find("before1") == std::string::npos)
        kept += line + "\n";
  }

  // Read-only image first. A frozen ext4 is clean. A frozen xfs (kernel 6.x) keeps its log
  // dirty (the metadata is in place, only the log is not marked clean), so on a read-only
  // device it mounts with norecovery, and xfs_repair -n would complain about the log.
  const std::string image_name = "vol@" + id->ToString();
  LoopDevice* image = Expose(image_name, Image(*id, "vol"), true);
  ASSERT_NE(image, nullptr);
  if (fs == "ext4") {
    EXPECT_EQ(Shell(FsckCommand(fs, image->path())), 0) << "image of a frozen ext4 not clean";
  }
  {
    FsMount m;
    ASSERT_EQ(m.Mount(image->path(), fs == "xfs" ? "ro,nouuid,norecovery" : "ro"), 0);
    EXPECT_EQ(CheckSums(m.path(), before), 0);
    EXPECT_NE(access((m.path() + "/after0").c_str(), F_OK), 0) << "post-take file in image";
    ASSERT_EQ(m.Unmount(), 0);
  }
  Unexpose(image_name, image);

  // Read-write image: mounting replays the xfs log into the image (never the original).
  image = Expose(image_name, Image(*id, "vol"), false);
  ASSERT_NE(image, nullptr);
  std::string image_sums;
  {
    FsMount m;
    ASSERT_EQ(m.Mount(image->path(), image_rw), 0);
    EXPECT_EQ(CheckSums(m.path(), before), 0);
    image_sums = WriteFiles(m.path(), "image", 3);
    ASSERT_FALSE(image_sums.empty());
    ASSERT_EQ(m.Unmount(), 0);
    EXPECT_EQ(Shell(FsckCommand(fs, image->path())), 0) << "image not clean after rw use";
    ASSERT_EQ(m.Mount(image->path(), image_ro), 0);
    EXPECT_EQ(CheckSums(m.path(), image_sums), 0);
    EXPECT_EQ(CheckSums(m.path(), before), 0);
    EXPECT_NE(access((m.path() + "/after0").c_str(), F_OK), 0) << "post-take file in image";
    ASSERT_EQ(m.Unmount(), 0);
  }
  Unexpose(image_name, image);
  ASSERT_OK(engine_->Destroy(*id));

  ASSERT_EQ(original.Unmount(), 0);
  EXPECT_EQ(Shell(FsckCommand(fs, front->path())), 0);
  ASSERT_EQ(original.Mount(front->path(), "ro"), 0);
  EXPECT_EQ(CheckSums(original.path(), kept), 0);
  EXPECT_NE(access((original.path() + "/before0").c_str(), F_OK), 0);
  EXPECT_EQ(CheckSums(original.path(), after), 0);
  EXPECT_NE(access((original.path() + "/image0").c_str(), F_OK), 0) << "image write leaked";
}

INSTANTIATE_TEST_SUITE_P(Fs, StandardFlow, ::testing::Values("ext4", "xfs"),
                         [](const auto& info) { return std::string(info.param); });

class StorageKinds : public EngineFlowTest, public ::testing::WithParamInterface<const char*> {};

TEST_P(StorageKinds, TwoDevicesInOneSnapshot) {
  const std::string kind = GetParam();
  std::string storage;
  std::optional<LoopDevice> storage_loop;
  std::string backing = storage_dir_.path() + "/storage.img";
  if (kind == "dir") {
    storage = storage_dir_.path();
  } else if (kind == "file") {
    storage = backing;
    ASSERT_EQ(Shell("truncate -s 0 " + backing), 0);
  } else {  // a block device: a loop device on a regular file
    ASSERT_EQ(Shell("truncate -s 256M " + backing), 0);
    auto loop = LoopDevice::Attach(backing, 512, false);
    ASSERT_TRUE(loop.ok()) << loop.status().ToString();
    storage_loop.emplace(std::move(loop).value());
    storage = storage_loop->path();
  }
  LoopDevice* a = AddVolume("a", 128ull << 20);
  LoopDevice* b = AddVolume("b", 128ull << 20);
  ASSERT_TRUE(a != nullptr && b != nullptr);
  ASSERT_EQ(Shell(MkfsCommand("ext4", a->path())), 0);
  ASSERT_EQ(Shell(MkfsCommand("ext4", b->path())), 0);
  std::string sums_a, sums_b;
  {
    FsMount ma, mb;
    ASSERT_EQ(ma.Mount(a->path(), "rw"), 0);
    ASSERT_EQ(mb.Mount(b->path(), "rw"), 0);
    sums_a = WriteFiles(ma.path(), "a", 4);
    sums_b = WriteFiles(mb.path(), "b", 4);
    ASSERT_FALSE(sums_a.empty() || sums_b.empty());
    auto id = TakeSnapshot({"a", "b"}, {a->rdev(), b->rdev()}, storage);
    ASSERT_TRUE(id.ok()) << id.status().ToString();
    // Overwrite everything after the take.
    ASSERT_EQ(Shell("rm -f " + ma.path() + "/a* " + mb.path() + "/b*"), 0);
    ASSERT_FALSE(WriteFiles(ma.path(), "a", 4).empty());
    ASSERT_FALSE(WriteFiles(mb.path(), "b", 4).empty());

    for (const std::string dev : {"a", "b"}) {
      LoopDevice* image = Expose(dev + "@snap", Image(*id, dev), true);
      ASSERT_NE(image, nullptr);
      EXPECT_EQ(Shell(FsckCommand("ext4", image->path())), 0);
      FsMount m;
      ASSERT_EQ(m.Mount(image->path(), "ro"), 0);
      EXPECT_EQ(CheckSums(m.path(), dev == "a" ? sums_a : sums_b), 0) << dev;
      ASSERT_EQ(m.Unmount(), 0);
      Unexpose(dev + "@snap", image);
    }
    auto snapshot = engine_->FindSnapshot(*id);
    ASSERT_NE(snapshot, nullptr);
    EXPECT_GT(snapshot->storage_info().used, 0u);
    ASSERT_OK(engine_->Destroy(*id));
  }
  if (storage_loop) ASSERT_OK(storage_loop->Detach());
}

INSTANTIATE_TEST_SUITE_P(Storage, StorageKinds, ::testing::Values("dir", "file", "blockdev"),
                         [](const auto& info) { return std::string(info.param); });

// Pattern I/O on a block device path with O_DIRECT.
bool WriteSeq(int fd, uint64_t offset, uint64_t length, uint64_t seq) {
  AlignedBuffer buf(length);
  StampSectors(buf.span(), offset / 512, seq);
  return pwrite(fd, buf.data(), length, off_t(offset)) == ssize_t(length);
}
Status VerifySeq(BlockDevice& device, uint64_t offset, uint64_t length, uint64_t seq) {
  std::vector<uint8_t> buf(length);
  BLKSNAP_RETURN_IF_ERROR(device.Read(offset, buf));
  return VerifySectors(buf, offset / 512, seq);
}

TEST_F(EngineFlowTest, ConcurrentWritesToFrontAndImage) {
  constexpr uint64_t kSize = 64 << 20, kBlock = 256 << 10;
  LoopDevice* front = AddVolume("vol", kSize);
  ASSERT_NE(front, nullptr);
  int fd = open(front->path().c_str(), O_RDWR | O_DIRECT);
  ASSERT_GE(fd, 0);
  for (uint64_t off = 0; off < kSize; off += kBlock) ASSERT_TRUE(WriteSeq(fd, off, kBlock, 1));
  close(fd);
  auto id = TakeSnapshot({"vol"}, {front->rdev()}, storage_dir_.path());
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  auto image_device = Image(*id, "vol");
  LoopDevice* image = Expose("vol@snap", image_device, false);
  ASSERT_NE(image, nullptr);

  // The front gets seq 2 on blocks 0, 2, 4, ... of the first 3/4; the image seq 3 on blocks
  // 0, 3, 6, ... of the last 3/4: the ranges overlap in the middle.
  auto front_written = [&](uint64_t b) { return b < kSize / kBlock * 3 / 4 && b % 2 == 0; };
  auto image_written = [&](uint64_t b) { return b >= kSize / kBlock / 4 && b % 3 == 0; };
  std::atomic<bool> ok{true};
  auto writer = [&](const std::string& path, auto written, uint64_t seq) {
    int wfd = open(path.c_str(), O_RDWR | O_DIRECT);
    if (wfd < 0) {
      ok = false;
      return;
    }
    for (int pass = 0; pass < 3; ++pass)
      for (uint64_t b = 0; b < kSize / kBlock; ++b)
        if (written(b) && !WriteSeq(wfd, b * kBlock, kBlock, seq)) ok = false;
    if (fsync(wfd) != 0) ok = false;
    close(wfd);
  };
  std::thread t1(writer, front->path(), front_written, 2);
  std::thread t2(writer, image->path(), image_written, 3);
  std::thread t3(writer, front->path(), front_written, 2);
  t1.join();
  t2.join();
  t3.join();
  ASSERT_TRUE(ok);
  auto tracker = engine_->FindTracker("vol");
  for (uint64_t b = 0; b < kSize / kBlock; ++b) {
    Status f = VerifySeq(*tracker, b * kBlock, kBlock, front_written(b) ? 2 : 1);
    ASSERT_TRUE(f.ok()) << "front block " << b << ": " << f.ToString();
    Status i = VerifySeq(*image_device, b * kBlock, kBlock, image_written(b) ? 3 : 1);
    ASSERT_TRUE(i.ok()) << "image block " << b << ": " << i.ToString();
  }
  Unexpose("vol@snap", image);
  ASSERT_OK(engine_->Destroy(*id));
}

TEST_F(EngineFlowTest, DestroyUnderLoad) {
  constexpr uint64_t kSize = 64 << 20, kBlock = 128 << 10;
  LoopDevice* front = AddVolume("vol", kSize);
  ASSERT_NE(front, nullptr);
  {
    int fd = open(front->path().c_str(), O_RDWR | O_DIRECT);
    ASSERT_GE(fd, 0);
    for (uint64_t off = 0; off < kSize; off += kBlock) ASSERT_TRUE(WriteSeq(fd, off, kBlock, 1));
    close(fd);
  }
  auto id = TakeSnapshot({"vol"}, {front->rdev()}, storage_dir_.path());
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  LoopDevice* image = Expose("vol@snap", Image(*id, "vol"), false);
  ASSERT_NE(image, nullptr);

  std::atomic<bool> stop{false};
  std::atomic<int> front_ios{0}, image_ios{0}, image_errors{0};
  std::atomic<bool> front_failed{false};
  std::vector<std::thread> threads;
  // Front writers (each rewrites the first half, block by block, with seq 2) and a reader.
  for (int w = 0; w < 2; ++w) {
    threads.emplace_back([&, w] {
      int fd = open(front->path().c_str(), O_RDWR | O_DIRECT);
      for (uint64_t n = 0; fd >= 0 && (!stop || n < kSize / 2 / kBlock); ++n) {
        uint64_t b = (n * 2 + w) % (kSize / 2 / kBlock);
        if (!WriteSeq(fd, b * kBlock, kBlock, 2)) front_failed = true;
        front_ios++;
      }
      if (fd < 0) front_failed = true;
      if (fd >= 0) close(fd);
    });
  }
  // Image reader and writer.
  for (int w = 0; w < 2; ++w) {
    threads.emplace_back([&, w] {
      int fd = open(image->path().c_str(), O_RDWR | O_DIRECT);
      AlignedBuffer buf(kBlock);
      for (uint64_t n = 0; fd >= 0 && !stop; ++n) {
        off_t off = off_t(((n * 7 + w) % (kSize / kBlock)) * kBlock);
        ssize_t r = w == 0 ? pread(fd, buf.data(), kBlock, off)
                           : (WriteSeq(fd, off, kBlock, 3) ? ssize_t(kBlock) : -1);
        if (r < 0)
          image_errors++;
        else
          image_ios++;
      }
      if (fd >= 0) close(fd);
    });
  }
  while (front_ios < 50 || image_ios < 50) std::this_thread::yield();
  ASSERT_OK(engine_->Destroy(*id));
  int errors_at_destroy = image_errors;
  while (image_errors == errors_at_destroy) std::this_thread::yield();  // image I/O now fails
  stop = true;
  for (auto& t : threads) t.join();
  EXPECT_FALSE(front_failed);
  Unexpose("vol@snap", image);
  auto tracker = engine_->FindTracker("vol");
  // Every front block of the first half was written with seq 2 after the loop finished.
  Status s = VerifySeq(*tracker, 0, kSize / 2, 2);
  EXPECT_TRUE(s.ok()) << s.ToString();
  s = VerifySeq(*tracker, kSize / 2, kSize / 2, 1);
  EXPECT_TRUE(s.ok()) << s.ToString();
}

TEST_F(EngineFlowTest, StorageLimitCorruptsSnapshotNotOriginal) {
  LoopDevice* front = AddVolume("vol", 256ull << 20);
  ASSERT_NE(front, nullptr);
  ASSERT_EQ(Shell(MkfsCommand("ext4", front->path())), 0);
  FsMount original;
  ASSERT_EQ(original.Mount(front->path(), "rw"), 0);
  std::string before = WriteFiles(original.path(), "before", 8);  // ~20 MiB
  ASSERT_FALSE(before.empty());
  auto id = TakeSnapshot({"vol"}, {front->rdev()}, storage_dir_.path(), 16 << 20);
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  auto snapshot = engine_->FindSnapshot(*id);
  auto image_device = Image(*id, "vol");
  LoopDevice* image = Expose("vol@snap", image_device, true);
  ASSERT_NE(image, nullptr);

  // Overwrite every pre-take file and add more: far more than 16 MiB of copy-on-write.
  for (int i = 0; i < 8; ++i) {
    ASSERT_EQ(Shell("dd if=/dev/urandom of=" + original.path() + "/before" + std::to_string(i) +
                    " bs=1M count=" + std::to_string(1 + i % 4) +
                    " oflag=direct conv=notrunc status=none"),
              0);
  }
  std::string after = WriteFiles(original.path(), "after", 12);
  ASSERT_FALSE(after.empty());
  std::string sums;
  ASSERT_EQ(Shell("cd " + original.path() + " && sha256sum before* after*", &sums), 0);

  auto event = snapshot->WaitEvent(0, std::chrono::seconds(30));
  while (event.ok() && event->event.type != SnapshotEvent::Type::kCorrupted)
    event = snapshot->WaitEvent(event->seq, std::chrono::seconds(30));
  ASSERT_TRUE(event.ok()) << event.status().ToString();
  EXPECT_EQ(snapshot->state(), SnapshotState::kCorrupted);
  // Image reads fail with EIO, through the FUSE file and the loop device.
  int fd = open(mount_->FilePath("vol@snap").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  char buf[4096];
  EXPECT_EQ(pread(fd, buf, sizeof(buf), 0), -1);
  EXPECT_EQ(errno, EIO);
  close(fd);
  fd = open(image->path().c_str(), O_RDONLY | O_DIRECT);
  ASSERT_GE(fd, 0);
  AlignedBuffer abuf(4096);
  EXPECT_EQ(pread(fd, abuf.data(), 4096, 1 << 20), -1);
  EXPECT_EQ(errno, EIO);
  close(fd);
  Unexpose("vol@snap", image);
  ASSERT_OK(engine_->Destroy(*id));

  ASSERT_EQ(original.Unmount(), 0);
  EXPECT_EQ(Shell(FsckCommand("ext4", front->path())), 0);
  ASSERT_EQ(original.Mount(front->path(), "ro"), 0);
  EXPECT_EQ(CheckSums(original.path(), sums), 0);
}

}  // namespace
}  // namespace blksnap::fuse
