#include "engine/diff_storage.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <vector>

#include "blksnap/env.h"
#include "blksnap/io.h"
#include "engine/engine_test_util.h"

namespace blksnap {
namespace {

constexpr uint64_t kMiB = 1ull << 20;

struct Recorder {
  std::mutex mu;
  std::vector<SnapshotEvent> events;
  DiffStorage::EventFn fn() {
    return [this](SnapshotEvent e) {
      std::lock_guard lock(mu);
      events.push_back(e);
    };
  }
  size_t count() {
    std::lock_guard lock(mu);
    return events.size();
  }
};

TEST(DiffStorageTest, AllocationsStayFourKiBAligned) {
  // A short last chunk (any length) must not misalign the chunks allocated after it: storage
  // I/O is O_DIRECT.
  auto dev = MakeMemoryDevice(kDiffStorageHeaderSize + 8 * kMiB);
  auto storage = DiffStorage::Create(dev, nullptr, 0, 4 * kMiB, Uuid::Random(), nullptr);
  ASSERT_TRUE(storage.ok()) << storage.status().ToString();
  auto short_chunk = (*storage)->Allocate(1000);
  ASSERT_TRUE(short_chunk.ok());
  auto next = (*storage)->Allocate(64 * 1024);
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(*next, *short_chunk + kAllocationAlign);
  EXPECT_EQ(*next % kAllocationAlign, 0u);
  EXPECT_EQ((*storage)->info().used, kAllocationAlign + 64 * 1024);
}

TEST(DiffStorageTest, AllocatesAfterHeaderAndGrowsInSteps) {
  auto dev = MakeMemoryDevice(kDiffStorageHeaderSize + 64 * kMiB);
  std::atomic<int> grows{0};
  Recorder rec;
  auto grow = [&](uint64_t offset, uint64_t length) {
    EXPECT_EQ(offset % kMiB, 0u);
    EXPECT_EQ(length, 4 * kMiB);
    ++grows;
    return Status::Ok();
  };
  auto storage = DiffStorage::Create(dev, grow, 16 * kMiB, 4 * kMiB, Uuid::Random(), rec.fn());
  ASSERT_TRUE(storage.ok()) << storage.status().ToString();
  EXPECT_EQ(grows.load(), 1);  // the first step is reserved at creation
  EXPECT_EQ((*storage)->info().capacity, 4 * kMiB);
  auto first = (*storage)->Allocate(kMiB);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(*first, kDiffStorageHeaderSize);
  for (int i = 1; i < 16; ++i) {
    auto off = (*storage)->Allocate(kMiB);
    ASSERT_TRUE(off.ok()) << i << ": " << off.status().ToString();
    EXPECT_EQ(*off, kDiffStorageHeaderSize + i * kMiB);
  }
  EXPECT_EQ(grows.load(), 4);  // 16 MiB limit in 4 MiB steps
  EXPECT_EQ((*storage)->info().used, 16 * kMiB);
  auto over = (*storage)->Allocate(kMiB);
  EXPECT_EQ(over.status().errnum(), ENOSPC);
  ASSERT_GE(rec.count(), 1u);
  EXPECT_EQ(rec.events[0].type, SnapshotEvent::Type::kNoSpace);
  EXPECT_EQ(rec.count(), 1u);  // raised once
}

TEST(DiffStorageTest, GrowthFailureRaisesNoSpaceAndFailsAllocation) {
  auto dev = MakeMemoryDevice(kDiffStorageHeaderSize + 64 * kMiB);
  int calls = 0;
  auto grow = [&](uint64_t, uint64_t) {
    return ++calls == 1 ? Status::Ok() : Status::Error(ENOSPC, "file system full");
  };
  Recorder rec;
  auto storage = DiffStorage::Create(dev, grow, 64 * kMiB, 2 * kMiB, Uuid::Random(), rec.fn());
  ASSERT_TRUE(storage.ok());
  ASSERT_TRUE((*storage)->Allocate(kMiB).ok());
  ASSERT_TRUE((*storage)->Allocate(kMiB).ok());
  EXPECT_EQ((*storage)->Allocate(kMiB).status().errnum(), ENOSPC);
  ASSERT_EQ(rec.count(), 1u);
  EXPECT_EQ(rec.events[0].type, SnapshotEvent::Type::kNoSpace);
}

TEST(DiffStorageTest, HeaderCarriesMagicAndId) {
  auto dev = MakeMemoryDevice(kDiffStorageHeaderSize + 8 * kMiB);
  Uuid id = Uuid::Random();
  auto storage = DiffStorage::Create(dev, nullptr, 0, kMiB, id, nullptr);
  ASSERT_TRUE(storage.ok());
  std::vector<uint8_t> header(4096);
  ASSERT_OK(dev->Read(0, header));
  EXPECT_EQ(std::string(reinterpret_cast<char*>(header.data())), "BLKSNAP-DIFFSTO");
  EXPECT_EQ(0, memcmp(header.data() + 24, id.bytes().data(), 16));
  EXPECT_EQ((*storage)->info().capacity, 8 * kMiB);  // fixed-size: all reserved
}

// A MemoryEnv serves the storage without a disk: the free space sets the limit, and a named file
// that is not a storage is refused.
TEST(DiffStorageTest, OpensThroughAMemoryEnv) {
  MemoryEnv env;
  env.AddDirectory("/storage");
  env.SetFreeBytes(64 * kMiB + 123);
  auto storage = DiffStorage::Open("/storage", 0, 4 * kMiB, Uuid::Random(), nullptr, &env);
  ASSERT_TRUE(storage.ok()) << storage.status().ToString();
  EXPECT_EQ((*storage)->info().limit, 64 * kMiB);
  for (int i = 0; i < 12; ++i) ASSERT_TRUE((*storage)->Allocate(kMiB).ok()) << i;
  EXPECT_FALSE((*storage)->identity().is_block_device);
  ASSERT_TRUE(env.WriteFileAtomic("/storage/notes.txt", "precious").ok());
  auto refused =
      DiffStorage::Open("/storage/notes.txt", 8 * kMiB, kMiB, Uuid::Random(), nullptr, &env);
  EXPECT_EQ(refused.status().errnum(), EEXIST);
  EXPECT_EQ(*env.ReadFile("/storage/notes.txt", 100), "precious");
}

// A named file the storage created is removed when the storage goes; one that existed stays; a
// missing directory is named in the error. A placement check that refuses leaves nothing behind
// and nothing written.
TEST(DiffStorageTest, RemovesOnlyTheFileItCreated) {
  MemoryEnv env;
  env.AddDirectory("/storage");
  env.SetFreeBytes(64 * kMiB);
  auto missing = DiffStorage::Open("/nowhere/diff", 8 * kMiB, kMiB, Uuid::Random(), nullptr, &env);
  EXPECT_EQ(missing.status().errnum(), ENOENT);
  EXPECT_NE(missing.status().message().find("/nowhere"), std::string_view::npos);
  {
    auto storage = DiffStorage::Open("/storage/new", 8 * kMiB, kMiB, Uuid::Random(), nullptr, &env);
    ASSERT_TRUE(storage.ok()) << storage.status().ToString();
    EXPECT_TRUE(env.HasFile("/storage/new"));
  }
  EXPECT_FALSE(env.HasFile("/storage/new"));
  DiffStorageChecks refuse;
  refuse.placement = [](const StorageIdentity& id) {
    return Status::Error(EINVAL, "refused " + id.path);
  };
  auto refused =
      DiffStorage::Open("/storage/new", 8 * kMiB, kMiB, Uuid::Random(), nullptr, &env, refuse);
  EXPECT_EQ(refused.status().errnum(), EINVAL);
  EXPECT_FALSE(env.HasFile("/storage/new"));
  ASSERT_TRUE(env.WriteFileAtomic("/storage/old", "").ok());
  {
    auto storage = DiffStorage::Open("/storage/old", 8 * kMiB, kMiB, Uuid::Random(), nullptr, &env);
    ASSERT_TRUE(storage.ok()) << storage.status().ToString();
  }
  EXPECT_TRUE(env.HasFile("/storage/old"));
}

class DiffStorageFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/var/tmp/blksnap-ds-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_;
};

TEST_F(DiffStorageFileTest, DirectoryGetsAnUnnamedTemporaryFile) {
  {
    auto storage = DiffStorage::Open(dir_, 64 * kMiB, 4 * kMiB, Uuid::Random(), nullptr);
    ASSERT_TRUE(storage.ok()) << storage.status().ToString();
    for (int i = 0; i < 8; ++i) ASSERT_TRUE((*storage)->Allocate(kMiB).ok());
    EXPECT_GE((*storage)->info().capacity, 8 * kMiB);
    EXPECT_TRUE(std::filesystem::is_empty(dir_));  // nothing named in the directory
  }
}

TEST_F(DiffStorageFileTest, RegularFileIsReservedWithFallocate) {
  const std::string path = dir_ + "/storage";
  auto storage = DiffStorage::Open(path, 32 * kMiB, 4 * kMiB, Uuid::Random(), nullptr);
  ASSERT_TRUE(storage.ok()) << storage.status().ToString();
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), kDiffStorageHeaderSize + 32 * kMiB);
  // Only the first step (plus the header block) is allocated on disk.
  EXPECT_GE(static_cast<uint64_t>(st.st_blocks) * 512, 4 * kMiB);
  EXPECT_LT(static_cast<uint64_t>(st.st_blocks) * 512, 8 * kMiB);
  for (int i = 0; i < 20; ++i) ASSERT_TRUE((*storage)->Allocate(kMiB).ok()) << i;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_GE(static_cast<uint64_t>(st.st_blocks) * 512, 20 * kMiB);
}

// The open flags (fdinfo "flags:", octal) of every descriptor of this process open on path.
std::vector<unsigned> OpenFlagsOf(const std::string& path) {
  std::vector<unsigned> flags;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    if (std::filesystem::read_symlink(e.path(), ec) != path) continue;
    std::ifstream info("/proc/self/fdinfo/" + e.path().filename().string());
    std::string key;
    unsigned value = 0;
    while (info >> key)
      if (key == "flags:" && (info >> std::oct >> value)) flags.push_back(value);
  }
  return flags;
}

TEST_F(DiffStorageFileTest, RegularFileStorageUsesThePageCacheUnlessTold) {
  // Config::diff_storage_page_cache: a regular file's data path is buffered (image reads from
  // memory), or O_DIRECT when the tunable is off.
  for (bool page_cache : {true, false}) {
    const std::string path = dir_ + (page_cache ? "/cached" : "/direct");
    DiffStorage::Checks checks;
    checks.page_cache = page_cache;
    auto storage = DiffStorage::Open(path, 8 * kMiB, 4 * kMiB, Uuid::Random(), nullptr, nullptr,
                                     checks, SnapshotDurability::kCrash);
    ASSERT_TRUE(storage.ok()) << storage.status().ToString();
    const std::vector<unsigned> flags = OpenFlagsOf(path);
    ASSERT_FALSE(flags.empty());
    bool direct = false;
    for (unsigned f : flags) direct = direct || (f & O_DIRECT) != 0;
    EXPECT_EQ(direct, !page_cache) << path;
  }
}

TEST_F(DiffStorageFileTest, BadPathsFailClearly) {
  auto missing =
      DiffStorage::Open("/nonexistent/dir/file", kMiB * 8, kMiB, Uuid::Random(), nullptr);
  EXPECT_EQ(missing.status().errnum(), ENOENT);
  auto chr = DiffStorage::Open("/dev/null", kMiB * 8, kMiB, Uuid::Random(), nullptr);
  EXPECT_EQ(chr.status().errnum(), EINVAL);
}

// Every step of creating a file storage fails through the Env, and the snapshot creation reports
// that step's error and leaves no snapshot behind; the next creation works.
TEST_F(DiffStorageFileTest, StorageCreationFailuresReachCreateSnapshot) {
  FaultEnv env(Env::Default());
  Config config;
  config.diff_storage_minimum = 4 * kMiB;
  config.env = &env;
  auto engine = Engine::Create(config).value();
  SnapshotOptions options;
  options.storage_path = dir_ + "/storage";
  options.limit = 32 * kMiB;
  struct Case {
    FaultEnv::Op op;
    int errnum;
    int expected;  // the errno CreateSnapshot reports
  };
  const Case cases[] = {{FaultEnv::Op::kOpen, EACCES, EACCES},
                        {FaultEnv::Op::kTruncate, EFBIG, EFBIG},
                        {FaultEnv::Op::kReserve, ENOSPC, ENOSPC}};
  for (const auto& c : cases) {
    env.FailNth(c.op, 1, c.errnum);
    auto id = engine->CreateSnapshot(options);
    ASSERT_FALSE(id.ok()) << static_cast<int>(c.op);
    EXPECT_EQ(id.status().errnum(), c.expected);
    EXPECT_NE(id.status().message().find("injected"), std::string_view::npos)
        << id.status().ToString();
    EXPECT_TRUE(engine->snapshots().empty());
  }
  // No space left for the first step.
  env.NoSpaceAfter(kMiB);
  EXPECT_EQ(engine->CreateSnapshot(options).status().errnum(), ENOSPC);
  env.Reset();
  // The storage's data path fails too: the header write.
  env.OnStorageDevice([](FaultDevice& device) { device.FailNthWrite(1, EIO); });
  EXPECT_EQ(engine->CreateSnapshot(options).status().errnum(), EIO);
  EXPECT_TRUE(engine->snapshots().empty());
  env.OnStorageDevice(nullptr);
  auto ok = engine->CreateSnapshot(options);
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  // The header: slot 1 cleared, slot 0, then slot 1 again marking the file as ours.
  EXPECT_EQ(env.last_storage_device()->writes(), 3u);
  ASSERT_TRUE(engine->Destroy(*ok).ok());
}

}  // namespace
}  // namespace blksnap
