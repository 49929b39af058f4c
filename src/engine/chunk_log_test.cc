// Crash-durability commits (chunk_log.h, "Crash"): each commit adds its record to the log's open
// page and writes that page again, whole, in place, so records share pages (125 to a page)
// instead of taking a page per round, and no writer waits for another's round. A daemon crash
// keeps every record whose commit returned; the recovered log continues on a new page with the
// next epoch and never writes into the page it ended on. Kill -9 at random instants during
// concurrent commits: durable_snapshot_test.cc, DaemonCrashAtRandomInstantsKeepsTheImage.
#include "engine/chunk_log.h"

#include <gtest/gtest.h>

#include <vector>

#include "blksnap/engine.h"
#include "blksnap/io.h"
#include "engine/diff_storage_format.h"
#include "engine/engine_test_util.h"
#include "engine/power_test_util.h"

namespace blksnap {
namespace {

constexpr uint64_t kMiB = 1ull << 20;
constexpr uint64_t kDeviceSize = 4 * kMiB;
constexpr uint64_t kChunk = 4096;

Config TestConfig() {
  Config config;
  config.cbt_checkpoint_interval_ms = 0;
  config.chunk_minimum_shift = 12;
  config.chunk_log_compact_pages = UINT32_MAX;  // the records as committed
  return config;
}

ChunkLog::Scan ReadLog(BlockDevice& storage, const Uuid& id) {
  std::vector<uint8_t> slots(2 * kDiffStorageHeaderBlockSize);
  EXPECT_TRUE(storage.Read(0, slots).ok());
  const DiffStorageHeader h = ParseDiffStorageHeaderSlots(slots).value();
  auto scan = ChunkLog::Read(storage, id, h.log_start, h.log_epoch, h.log_sealed);
  EXPECT_TRUE(scan.ok());
  return scan.ok() ? *scan : ChunkLog::Scan{};
}

Result<std::shared_ptr<Snapshot>> Recover(Engine& engine, std::shared_ptr<BlockDevice> original,
                                          std::shared_ptr<BlockDevice> storage, const Uuid& id) {
  BLKSNAP_RETURN_IF_ERROR(engine.Attach("d", original).status());
  return engine.RecoverSnapshot({.id = id, .storage_device = storage, .check_originals = false});
}

TEST(ChunkLogTest, CrashCommitsShareAPageWrittenInPlaceAndSurviveACrash) {
  auto original_disk = MakeMemoryDevice(kDeviceSize);
  auto storage_disk = MakeMemoryDevice(64 * kMiB);
  constexpr uint64_t kFirst = 300;  // 125 + 125 + 50 records
  Uuid id;
  {
    Power power;  // a daemon crash: written data stays
    auto engine = Engine::Create(TestConfig()).value();
    auto tracker = engine->Attach("d", Powered(original_disk, &power)).value();
    ASSERT_OK(WritePattern(*tracker, 0, kDeviceSize, 1));
    id = engine
             ->CreateSnapshot({.storage_path = "storage",
                               .storage_device = Powered(storage_disk, &power),
                               .durability = SnapshotDurability::kCrash})
             .value();
    ASSERT_OK(engine->AddDevice(id, "d"));
    ASSERT_TRUE(engine->Take(id).ok());
    for (uint64_t i = 0; i < kFirst; ++i) ASSERT_OK(WritePattern(*tracker, i * kChunk, kChunk, 2));
    // Written as committed, before any crash: three pages, not one per commit.
    const ChunkLog::Scan scan = ReadLog(*storage_disk, id);
    EXPECT_EQ(scan.records.size(), kFirst);
    EXPECT_EQ(scan.pages, (kFirst + kLogRecordsPerPage - 1) / kLogRecordsPerPage);
    power.Cut();
  }
  {
    Power power;
    auto engine = Engine::Create(TestConfig()).value();
    auto snap = Recover(*engine, Powered(original_disk, &power), Powered(storage_disk, &power), id);
    ASSERT_TRUE(snap.ok()) << snap.status().ToString();
    EXPECT_EQ((*snap)->state(), SnapshotState::kTaken);
    ASSERT_OK(VerifyPattern(*(*snap)->image("d"), 0, kDeviceSize, 1));
    // The recovered log goes on in a new page (its last page, half full, is not written
    // again): 10 more commits, then a crash again.
    auto tracker = engine->FindTracker("d");
    for (uint64_t i = kFirst; i < kFirst + 10; ++i)
      ASSERT_OK(WritePattern(*tracker, i * kChunk, kChunk, 3));
    const ChunkLog::Scan scan = ReadLog(*storage_disk, id);
    EXPECT_EQ(scan.records.size(), kFirst + 10);
    EXPECT_EQ(scan.pages, 4u);
    power.Cut();
  }
  auto engine = Engine::Create(TestConfig()).value();
  auto snap = Recover(*engine, original_disk, storage_disk, id);
  ASSERT_TRUE(snap.ok()) << snap.status().ToString();
  EXPECT_EQ((*snap)->state(), SnapshotState::kTaken);
  ASSERT_OK(VerifyPattern(*(*snap)->image("d"), 0, kDeviceSize, 1));
}

}  // namespace
}  // namespace blksnap
