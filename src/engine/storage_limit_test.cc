// Raising a live snapshot's storage limit (DiffStorage::SetLimit, Snapshot::SetStorageLimit):
// the answer to a no_space event. A storage file grows; a fixed device allows up to its size;
// lowering is refused; a snapshot that raises its limit in time survives a write load that
// would otherwise corrupt it.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "blksnap/engine.h"
#include "blksnap/io.h"
#include "engine/diff_storage.h"
#include "engine/engine_test_util.h"

namespace blksnap {
namespace {

constexpr uint64_t kMiB = 1ull << 20;

TEST(StorageLimitTest, AFixedDeviceRaisesUpToItsSizeAndNeverLowers) {
  auto dev = MakeMemoryDevice(kDiffStorageHeaderSize + 16 * kMiB);
  auto storage = DiffStorage::Create(dev, nullptr, 4 * kMiB, 4 * kMiB, Uuid::Random(), nullptr);
  ASSERT_TRUE(storage.ok()) << storage.status().ToString();
  auto& s = **storage;
  ASSERT_TRUE(s.Allocate(4 * kMiB).ok());
  EXPECT_EQ(s.Allocate(4096).status().errnum(), ENOSPC);
  EXPECT_EQ(s.SetLimit(2 * kMiB).errnum(), EINVAL);
  EXPECT_EQ(s.SetLimit(32 * kMiB).errnum(), ENOSPC);
  EXPECT_EQ(s.info().limit, 4 * kMiB);
  ASSERT_OK(s.SetLimit(16 * kMiB));
  EXPECT_EQ(s.info().limit, 16 * kMiB);
  EXPECT_TRUE(s.Allocate(8 * kMiB).ok());
}

TEST(StorageLimitTest, ASnapshotThatRaisesItsLimitInTimeSurvives) {
  const std::string dir =
      std::filesystem::temp_directory_path() / ("blksnap-limit-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  Config config;
  config.diff_storage_minimum = 2 * kMiB;  // grow in small steps
  config.chunk_minimum_shift = 16;         // 64 KiB chunks
  auto engine = Engine::Create(config).value();
  auto original = MakeMemoryDevice(64 * kMiB);
  auto tracker = engine->Attach("vol", original).value();
  ASSERT_OK(WritePattern(*tracker, 0, 32 * kMiB, 1));
  auto id = engine->CreateSnapshot({.storage_path = dir + "/storage", .limit = 4 * kMiB});
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  ASSERT_OK(engine->AddDevice(*id, "vol"));
  ASSERT_TRUE(engine->Take(*id).ok());
  auto snap = engine->FindSnapshot(*id);
  // Overwrite 32 MiB in 256 KiB steps; answer each no_space event by adding 8 MiB.
  uint64_t seen = 0;
  for (uint64_t off = 0; off < 32 * kMiB; off += 256 * 1024) {
    ASSERT_OK(WritePattern(*tracker, off, 256 * 1024, 2));
    for (;;) {
      auto ev = snap->WaitEvent(seen, std::chrono::milliseconds(0));
      if (!ev.ok()) break;
      seen = ev->seq;
      ASSERT_EQ(ev->event.type, SnapshotEvent::Type::kNoSpace) << "corrupted at " << off;
      ASSERT_OK(snap->SetStorageLimit(snap->storage_info().limit + 8 * kMiB));
    }
  }
  EXPECT_GT(seen, 0u) << "the load never ran out of room: the test proves nothing";
  EXPECT_EQ(snap->state(), SnapshotState::kTaken);
  auto image = snap->image("vol");
  ASSERT_NE(image, nullptr);
  EXPECT_OK(VerifyPattern(*image, 0, 32 * kMiB, 1));
  EXPECT_OK(VerifyPattern(*tracker, 0, 32 * kMiB, 2));
  ASSERT_OK(engine->Destroy(*id));
  std::filesystem::remove_all(dir);
}

TEST(StorageLimitTest, WithoutRaisingTheSameLoadCorruptsTheSnapshot) {
  const std::string dir =
      std::filesystem::temp_directory_path() / ("blksnap-limit-no-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  Config config;
  config.diff_storage_minimum = 2 * kMiB;
  config.chunk_minimum_shift = 16;
  auto engine = Engine::Create(config).value();
  auto tracker = engine->Attach("vol", MakeMemoryDevice(64 * kMiB)).value();
  ASSERT_OK(WritePattern(*tracker, 0, 32 * kMiB, 1));
  auto id = engine->CreateSnapshot({.storage_path = dir + "/storage", .limit = 4 * kMiB});
  ASSERT_TRUE(id.ok());
  ASSERT_OK(engine->AddDevice(*id, "vol"));
  ASSERT_TRUE(engine->Take(*id).ok());
  for (uint64_t off = 0; off < 32 * kMiB; off += kMiB) {
    ASSERT_OK(WritePattern(*tracker, off, kMiB, 2));  // the original is never refused
  }
  auto snap = engine->FindSnapshot(*id);
  // The copies that did not fit are stored in the background: wait for the verdict.
  for (int i = 0; i < 200 && snap->state() != SnapshotState::kCorrupted; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(snap->state(), SnapshotState::kCorrupted);
  EXPECT_EQ(snap->SetStorageLimit(64 * kMiB).errnum(), EINVAL);
  ASSERT_OK(engine->Destroy(*id));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace blksnap
