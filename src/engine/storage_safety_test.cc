// The difference storage never harms data it was not given (issue 13, "data loss through
// misconfiguration"). Each test sets up a misconfiguration on real files (and real loop devices
// when root), asks CreateSnapshot for it, and checks that it is refused and that not one byte of
// the victim changed (size and a pattern):
//   - the tracked image file itself, even when it already starts with a storage header;
//   - the tracked file's own loop front (an alias registered with AddAlias), an outside losetup
//     over the tracked file, a loop device over a file on a file system on a front;
//   - a block device holding a file system (refused unless force) and the signature detector;
//   - a missing path (created, then removed at destroy), a missing parent directory;
//   - limits that overflow or exceed the file system's maximum file size;
//   - the daemon's state dir on a front of a tracked device, directly or through a device
//     stacked on it (Engine::CheckNotOnTracked).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

#include "blksnap/engine.h"
#include "blksnap/env.h"
#include "blksnap/io.h"
#include "engine/diff_storage.h"
#include "engine/engine_test_util.h"
#include "util/test_loop.h"

namespace blksnap {
namespace {

constexpr uint64_t kMiB = 1ull << 20;
constexpr uint64_t kImageSize = 32 * kMiB;

bool Contains(const Status& s, std::string_view what) {
  return s.message().find(what) != std::string_view::npos;
}

class StorageSafetyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/var/tmp/blksnap-safety-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    image_ = dir_ + "/vol.img";
    ASSERT_EQ(::close(::open(image_.c_str(), O_RDWR | O_CREAT, 0600)), 0);
    ASSERT_EQ(::truncate(image_.c_str(), kImageSize), 0);
    Config c;
    c.diff_storage_minimum = 2 * kMiB;
    engine_ = Engine::Create(c).value();
    auto original = OpenFileDevice(image_);
    ASSERT_TRUE(original.ok()) << original.status().ToString();
    tracker_ = engine_->Attach("vol", *original, {.path = image_}).value();
    ASSERT_OK(WritePattern(*tracker_, 0, kImageSize, 7));
  }
  void TearDown() override {
    engine_.reset();
    std::filesystem::remove_all(dir_);
  }

  // The tracked image is exactly as SetUp (and the test's own writes) left it.
  void ExpectImageIntact() {
    struct stat st {};
    ASSERT_EQ(::stat(image_.c_str(), &st), 0);
    EXPECT_EQ(static_cast<uint64_t>(st.st_size), kImageSize);
    EXPECT_OK(VerifyPattern(*tracker_, 0, kImageSize, 7));
  }

  Result<Uuid> Create(const std::string& storage, uint64_t limit = 16 * kMiB, bool force = false) {
    return engine_->CreateSnapshot({.storage_path = storage, .limit = limit, .force = force});
  }

  std::string dir_, image_;
  std::unique_ptr<Engine> engine_;
  std::shared_ptr<Tracker> tracker_;
};

// The case: a storage header already sits at the start of the tracked image (left by an
// earlier storage on its loop front); naming the image as storage used to cut it to header + limit.
TEST_F(StorageSafetyTest, TrackedImageFileIsRefusedBeforeAnyWrite) {
  std::vector<uint8_t> header(4096, 0);
  std::memcpy(header.data(), kDiffStorageMagic, sizeof(kDiffStorageMagic));
  ASSERT_OK(tracker_->Write(0, header, 0));
  auto id = Create(image_);
  EXPECT_FALSE(id.ok());
  EXPECT_EQ(id.status().errnum(), EINVAL) << id.status().ToString();
  EXPECT_TRUE(Contains(id.status(), "vol")) << id.status().ToString();
  struct stat st {};
  ASSERT_EQ(::stat(image_.c_str(), &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), kImageSize);
  std::vector<uint8_t> back(4096);
  ASSERT_OK(tracker_->Read(0, back));
  EXPECT_EQ(back, header);
  EXPECT_OK(VerifyPattern(*tracker_, 4096, kImageSize - 4096, 7));
  EXPECT_TRUE(engine_->snapshots().empty());
}

// The tracked file's own loop front (registered as an alias, as the daemon does) and an outside
// losetup over the same file (not registered: found through sysfs).
TEST_F(StorageSafetyTest, LoopDevicesOverTheTrackedFileAreRefused) {
  ScopedLoop front(image_);
  if (front.path().empty()) GTEST_SKIP() << "needs root and losetup";
  struct stat st {};
  ASSERT_EQ(::stat(front.path().c_str(), &st), 0);
  tracker_->AddAlias(st.st_rdev);
  auto id = Create(front.path());
  EXPECT_EQ(id.status().errnum(), EINVAL) << id.status().ToString();
  tracker_->RemoveAlias(st.st_rdev);
  ExpectImageIntact();
  // Not registered as an alias: an outside losetup.
  id = Create(front.path());
  EXPECT_EQ(id.status().errnum(), EINVAL) << id.status().ToString();
  EXPECT_TRUE(Contains(id.status(), "vol")) << id.status().ToString();
  ExpectImageIntact();
  EXPECT_TRUE(engine_->snapshots().empty());
}

// Loop devices the daemon did not make: over a file on a file system that is an alias of the
// tracker (as the FUSE mount holding the device's file would be, once registered), and over an
// unrelated file full of data (refused unless forced); a sparse file is fine.
TEST_F(StorageSafetyTest, ForeignLoopDevicesAreRefused) {
  const std::string other = dir_ + "/other.img";
  ASSERT_EQ(::close(::open(other.c_str(), O_RDWR | O_CREAT, 0600)), 0);
  ASSERT_EQ(::truncate(other.c_str(), 32 * kMiB), 0);
  ScopedLoop loop(other);
  if (loop.path().empty()) GTEST_SKIP() << "needs root and losetup";
  struct stat st {};
  ASSERT_EQ(::stat(dir_.c_str(), &st), 0);
  tracker_->AddAlias(st.st_dev);  // "this file system is the tracked device"
  auto id = Create(loop.path());
  EXPECT_EQ(id.status().errnum(), EINVAL) << id.status().ToString();
  tracker_->RemoveAlias(st.st_dev);
  // Sparse: accepted (and destroyed again).
  id = Create(loop.path());
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  ASSERT_OK(engine_->Destroy(*id));
  // Full of someone's data (no signature at all): refused, the data intact; force accepts it.
  ASSERT_TRUE(loop.Detach());
  std::vector<uint8_t> data(kMiB, 0x5a);
  const int fd = ::open(other.c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::pwrite(fd, data.data(), data.size(), 0), static_cast<ssize_t>(data.size()));
  ::close(fd);
  ScopedLoop data_loop(other);
  ASSERT_FALSE(data_loop.path().empty());
  id = Create(data_loop.path());
  EXPECT_EQ(id.status().errnum(), EEXIST) << id.status().ToString();
  EXPECT_TRUE(Contains(id.status(), "--force")) << id.status().ToString();
  std::vector<uint8_t> back(kMiB);
  const int rfd = ::open(other.c_str(), O_RDONLY);
  ASSERT_EQ(::pread(rfd, back.data(), back.size(), 0), static_cast<ssize_t>(back.size()));
  ::close(rfd);
  EXPECT_EQ(back, data);
  id = Create(data_loop.path(), 16 * kMiB, /*force=*/true);
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  ASSERT_OK(engine_->Destroy(*id));
  ExpectImageIntact();
}

// A partition of a front (a loop device with a partition table, scanned with -P): the partition
// is below nothing tracked, but its disk is the tracked device's alias.
TEST_F(StorageSafetyTest, PartitionOfAFrontIsRefused) {
  // An MBR with one Linux partition from sector 2048 to the end, on the tracked image.
  std::vector<uint8_t> mbr(512, 0);
  uint8_t* e = mbr.data() + 446;
  e[4] = 0x83;
  const uint32_t start = 2048, count = kImageSize / 512 - 2048;
  std::memcpy(e + 8, &start, 4);
  std::memcpy(e + 12, &count, 4);
  mbr[510] = 0x55;
  mbr[511] = 0xaa;
  ASSERT_OK(tracker_->Write(0, mbr, 0));
  ASSERT_OK(tracker_->Flush());
  if (::geteuid() != 0) GTEST_SKIP() << "needs root";
  FILE* p = ::popen(("losetup --find --show -P " + image_ + " 2>/dev/null").c_str(), "r");
  ASSERT_NE(p, nullptr);
  char line[256] = {};
  std::string front = std::fgets(line, sizeof(line), p) ? line : "";
  ::pclose(p);
  while (!front.empty() && front.back() == '\n') front.pop_back();
  if (front.empty()) GTEST_SKIP() << "losetup unavailable";
  const std::string part = front + "p1";
  for (int i = 0; i < 150 && ::access(part.c_str(), F_OK) != 0; ++i) ::usleep(20000);
  struct stat st {};
  const bool scanned = ::stat(part.c_str(), &st) == 0;
  if (scanned) {
    ASSERT_EQ(::stat(front.c_str(), &st), 0);
    tracker_->AddAlias(st.st_rdev);  // the front, as the daemon registers it
    auto id = Create(part);
    EXPECT_EQ(id.status().errnum(), EINVAL) << id.status().ToString();
    EXPECT_TRUE(Contains(id.status(), "vol")) << id.status().ToString();
  }
  EXPECT_EQ(std::system(("losetup -d " + front).c_str()), 0);
  if (!scanned) GTEST_SKIP() << "no partition device appeared for " << front;
  std::vector<uint8_t> back(512);
  ASSERT_OK(tracker_->Read(0, back));
  EXPECT_EQ(back, mbr);
  EXPECT_OK(VerifyPattern(*tracker_, 512, kImageSize - 512, 7));
}

// A loop device bound to the tracked file (an outside losetup): writes through it would bypass
// the tracker, so the device cannot join a snapshot until it is gone.
TEST_F(StorageSafetyTest, OutsideLoopOnTheTrackedFileBlocksAddDevice) {
  auto id = Create(dir_);
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  {
    ScopedLoop loop(image_);
    if (loop.path().empty()) GTEST_SKIP() << "needs root and losetup";
    Status s = engine_->AddDevice(*id, "vol");
    EXPECT_EQ(s.errnum(), EBUSY) << s.ToString();
    EXPECT_TRUE(Contains(s, loop.path())) << s.ToString();
    EXPECT_EQ(tracker_->snapshot(), nullptr);
  }
  EXPECT_OK(engine_->AddDevice(*id, "vol"));
  ASSERT_OK(engine_->Destroy(*id));
}

// A storage created after an unrelated snapshot exists is still checked against every tracker,
// not only against the devices added to its own snapshot.
TEST_F(StorageSafetyTest, CheckedAgainstEveryAttachedTracker) {
  auto other = Create(dir_ + "/diff-a");
  ASSERT_TRUE(other.ok()) << other.status().ToString();
  ASSERT_OK(engine_->AddDevice(*other, "vol"));
  auto id = Create(image_);
  EXPECT_EQ(id.status().errnum(), EINVAL) << id.status().ToString();
  ExpectImageIntact();
  ASSERT_OK(engine_->Destroy(*other));
}

// A block device with a file system: refused with a message naming it and --force; accepted with
// force (then its content is the storage's).
TEST_F(StorageSafetyTest, FileSystemSignatureNeedsForce) {
  const std::string backing = dir_ + "/fs.img";
  ASSERT_EQ(::close(::open(backing.c_str(), O_RDWR | O_CREAT, 0600)), 0);
  ASSERT_EQ(::truncate(backing.c_str(), 64 * kMiB), 0);
  if (std::system(("mkfs.ext4 -q -F " + backing + " >/dev/null 2>&1").c_str()) != 0) {
    GTEST_SKIP() << "mkfs.ext4 unavailable";
  }
  ScopedLoop loop(backing);
  if (loop.path().empty()) GTEST_SKIP() << "needs root and losetup";
  auto id = Create(loop.path());
  EXPECT_EQ(id.status().errnum(), EEXIST) << id.status().ToString();
  EXPECT_TRUE(Contains(id.status(), "ext")) << id.status().ToString();
  EXPECT_TRUE(Contains(id.status(), "--force")) << id.status().ToString();
  EXPECT_EQ(std::system(("e2fsck -n " + backing + " >/dev/null 2>&1").c_str()), 0);
  id = Create(loop.path(), 16 * kMiB, /*force=*/true);
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  ASSERT_OK(engine_->Destroy(*id));
}

TEST(DiffStorageSignatureTest, NamesWhatItFinds) {
  std::vector<uint8_t> head(kDiffStorageProbeSize, 0);
  EXPECT_EQ(DetectForeignSignature(head), "");
  auto with = [&](size_t offset, std::string_view bytes) {
    std::vector<uint8_t> h(kDiffStorageProbeSize, 0);
    std::memcpy(h.data() + offset, bytes.data(), bytes.size());
    return h;
  };
  EXPECT_NE(DetectForeignSignature(with(1080, "\x53\xef")).find("ext"), std::string::npos);
  EXPECT_NE(DetectForeignSignature(with(0, "XFSB")).find("XFS"), std::string::npos);
  EXPECT_NE(DetectForeignSignature(with(65600, "_BHRfS_M")).find("btrfs"), std::string::npos);
  EXPECT_NE(DetectForeignSignature(with(4086, "SWAPSPACE2")).find("swap"), std::string::npos);
  EXPECT_NE(DetectForeignSignature(with(0, "LUKS\xba\xbe")).find("LUKS"), std::string::npos);
  EXPECT_NE(DetectForeignSignature(with(512, "EFI PART")).find("GPT"), std::string::npos);
  auto mbr = with(510, "\x55\xaa");
  EXPECT_EQ(DetectForeignSignature(mbr), "");  // boot signature without a partition
  mbr[446 + 4] = 0x83;                         // a Linux partition entry
  EXPECT_NE(DetectForeignSignature(mbr).find("partition"), std::string::npos);
  // Our own header is not foreign.
  auto ours = with(0, std::string_view(kDiffStorageMagic, sizeof(kDiffStorageMagic)));
  EXPECT_EQ(DetectForeignSignature(ours), "");
}

// A path that does not exist: its parent must exist, and the file blksnap creates is removed at
// destroy; a file that existed before stays.
TEST_F(StorageSafetyTest, CreatedStorageFileIsRemovedAtDestroy) {
  auto missing_parent = Create(dir_ + "/no/such/dir/diff");
  EXPECT_EQ(missing_parent.status().errnum(), ENOENT);
  EXPECT_TRUE(Contains(missing_parent.status(), "does not exist"))
      << missing_parent.status().ToString();
  const std::string created = dir_ + "/diff";
  auto id = Create(created);
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  EXPECT_TRUE(std::filesystem::exists(created));
  ASSERT_OK(engine_->Destroy(*id));
  EXPECT_FALSE(std::filesystem::exists(created));
  // Refused after creation (the limit is too small): nothing left either.
  EXPECT_FALSE(Create(created, 1000).ok());
  EXPECT_FALSE(std::filesystem::exists(created));
  // An existing (empty) file is the user's: kept.
  ASSERT_EQ(::close(::open(created.c_str(), O_RDWR | O_CREAT, 0600)), 0);
  id = Create(created);
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  ASSERT_OK(engine_->Destroy(*id));
  EXPECT_TRUE(std::filesystem::exists(created));
  ExpectImageIntact();
}

TEST_F(StorageSafetyTest, HugeLimitsGetTheRightMessage) {
  for (uint64_t limit : {~0ull, ~0ull - kMiB, 1ull << 63, 1ull << 62}) {
    auto id = Create(dir_, limit);
    ASSERT_FALSE(id.ok()) << limit;
    EXPECT_FALSE(Contains(id.status(), "smaller than")) << id.status().ToString();
    EXPECT_TRUE(Contains(id.status(), "limit")) << id.status().ToString();
    EXPECT_EQ(id.status().errnum(), EFBIG) << id.status().ToString();
  }
  ExpectImageIntact();
}

// The daemon's own files (issue 14): CheckNotOnTracked refuses a state dir whose file system is
// a front of a tracked device (an alias, as a loop front mounted over the state dir registers),
// and the tracked file itself; a path elsewhere, or one that does not exist yet, is fine.
TEST_F(StorageSafetyTest, StateDirOnAFrontOfATrackedDeviceIsRefused) {
  const std::string state = dir_ + "/state";
  ASSERT_EQ(::mkdir(state.c_str(), 0700), 0);
  EXPECT_OK(engine_->CheckNotOnTracked(state, "state dir " + state));
  EXPECT_OK(engine_->CheckNotOnTracked(dir_ + "/missing", "state dir"));
  struct stat st {};
  ASSERT_EQ(::stat(state.c_str(), &st), 0);
  tracker_->AddAlias(st.st_dev);  // as if dir_'s file system were mounted from vol's front
  Status s = engine_->CheckNotOnTracked(state, "state dir " + state);
  EXPECT_EQ(s.errnum(), EINVAL);
  EXPECT_TRUE(Contains(s, "state dir " + state + " is on tracked device 'vol'")) << s.ToString();
  tracker_->RemoveAlias(st.st_dev);
  EXPECT_OK(engine_->CheckNotOnTracked(state, "state dir " + state));
  EXPECT_EQ(engine_->CheckNotOnTracked(image_, "the image").errnum(), EINVAL);
}

// Stacked: the state dir's file-system device is a device-mapper device whose slave is a front
// of the tracked device (a fake sysfs: dev/block/<its st_dev>/slaves/front/dev = 7:77, 7:77 an
// alias). The walk below the state dir reaches the front, and the error names it.
TEST_F(StorageSafetyTest, StateDirOnADeviceStackedOnAFrontIsRefused) {
  class SysfsEnv final : public EnvWrapper {
   public:
    explicit SysfsEnv(std::string root) : EnvWrapper(Env::Default()), root_(std::move(root)) {}
    std::string SysfsRoot() const override { return root_; }

   private:
    const std::string root_;
  };
  const std::string state = dir_ + "/state", sysfs = dir_ + "/sys";
  ASSERT_EQ(::mkdir(state.c_str(), 0700), 0);
  struct stat st {};
  ASSERT_EQ(::stat(state.c_str(), &st), 0);
  const auto slave = std::filesystem::path(sysfs) / "dev/block" /
                     (std::to_string(major(st.st_dev)) + ":" + std::to_string(minor(st.st_dev))) /
                     "slaves/front";
  std::filesystem::create_directories(slave);
  { std::ofstream(slave / "dev") << "7:77\n"; }
  SysfsEnv env(sysfs);
  Config c;
  c.env = &env;
  auto engine = Engine::Create(c).value();
  auto tracker = engine->Attach("vol", OpenFileDevice(image_).value(), {.path = image_}).value();
  EXPECT_OK(engine->CheckNotOnTracked(state, "state dir " + state));
  tracker->AddAlias(makedev(7, 77));  // vol's front
  Status s = engine->CheckNotOnTracked(state, "state dir " + state);
  EXPECT_EQ(s.errnum(), EINVAL);
  EXPECT_TRUE(Contains(s, "is on tracked device 'vol' (through block device 7:77)"))
      << s.ToString();
}

}  // namespace
}  // namespace blksnap
