// Crash-durability commits (chunk_log.h, "Crash"): each commit adds its record to the log's open
// page and writes that page again, whole, in place, so records share pages (125 to a page)
// instead of taking a page per round, and no writer waits for another's round. A daemon crash
// keeps every record whose commit returned; the recovered log continues on a new page with the
// next epoch and never writes into the page it ended on; a damaged page is reported, not taken
// for a torn tail. Kill -9 at random instants during concurrent commits: durable_snapshot_test.cc,
// DaemonCrashAtRandomInstantsKeepsTheImage.
#include "engine/chunk_log.h"

#include <gtest/gtest.h>

#include <vector>

#include "blksnap/engine.h"
#include "blksnap/io.h"
#include "engine/diff_storage_format.h"
#include "engine/engine_test_util.h"
#include "engine/power_test_util.h"
#include "util/crc32c.h"

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

// Generation 1 on a fresh device, a crash snapshot of it taken, chunks 0..n-1 preserved (one
// commit each), and (when `scan`) the log as written; then a daemon crash (written data stays).
Uuid CrashAfterCommits(std::shared_ptr<BlockDevice> original_disk,
                       std::shared_ptr<BlockDevice> storage_disk, uint64_t n,
                       ChunkLog::Scan* scan = nullptr) {
  Power power;
  auto engine = Engine::Create(TestConfig()).value();
  auto tracker = engine->Attach("d", Powered(original_disk, &power)).value();
  EXPECT_TRUE(WritePattern(*tracker, 0, kDeviceSize, 1).ok());
  Uuid id = engine
                ->CreateSnapshot({.storage_path = "storage",
                                  .storage_device = Powered(storage_disk, &power),
                                  .durability = SnapshotDurability::kCrash})
                .value();
  EXPECT_TRUE(engine->AddDevice(id, "d").ok());
  EXPECT_TRUE(engine->Take(id).ok());
  for (uint64_t i = 0; i < n; ++i) EXPECT_TRUE(WritePattern(*tracker, i * kChunk, kChunk, 2).ok());
  if (scan) *scan = ReadLog(*storage_disk, id);
  power.Cut();
  return id;
}

TEST(ChunkLogTest, CrashCommitsShareAPageWrittenInPlaceAndSurviveACrash) {
  auto original_disk = MakeMemoryDevice(kDeviceSize);
  auto storage_disk = MakeMemoryDevice(64 * kMiB);
  constexpr uint64_t kFirst = 300;  // 125 + 125 + 50 records
  ChunkLog::Scan scan;
  const Uuid id = CrashAfterCommits(original_disk, storage_disk, kFirst, &scan);
  // Written as committed, before the crash: three pages, not one per commit.
  EXPECT_EQ(scan.records.size(), kFirst);
  EXPECT_EQ(scan.pages, (kFirst + kLogRecordsPerPage - 1) / kLogRecordsPerPage);
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
    const ChunkLog::Scan after = ReadLog(*storage_disk, id);
    EXPECT_EQ(after.records.size(), kFirst + 10);
    EXPECT_EQ(after.pages, 4u);
    power.Cut();
  }
  auto engine = Engine::Create(TestConfig()).value();
  auto snap = Recover(*engine, original_disk, storage_disk, id);
  ASSERT_TRUE(snap.ok()) << snap.status().ToString();
  EXPECT_EQ((*snap)->state(), SnapshotState::kTaken);
  ASSERT_OK(VerifyPattern(*(*snap)->image("d"), 0, kDeviceSize, 1));
}

// The open page holds every record of the last commits, so a bit flipped in it must not pass for
// a torn tail (only a power loss tears a crash log's page, and that corrupts the snapshot
// anyway): the snapshot comes back corrupted, never served without the records.
TEST(ChunkLogTest, ADamagedOpenPageOfACrashLogIsReportedNotServed) {
  for (bool damage : {false, true}) {
    SCOPED_TRACE(damage ? "damaged" : "intact");
    auto original_disk = MakeMemoryDevice(kDeviceSize);
    auto storage_disk = MakeMemoryDevice(64 * kMiB);
    const Uuid id = CrashAfterCommits(original_disk, storage_disk, 8);
    std::vector<uint8_t> slots(2 * kDiffStorageHeaderBlockSize);
    ASSERT_OK(storage_disk->Read(0, slots));
    const uint64_t page_at = ParseDiffStorageHeaderSlots(slots).value().log_start;
    std::vector<uint8_t> page(kLogPageSize);
    ASSERT_OK(storage_disk->Read(page_at, page));
    if (damage) page[200] ^= 0x10;  // in the records
    ASSERT_OK(storage_disk->Write(page_at, page));
    auto engine = Engine::Create(TestConfig()).value();
    auto snap = Recover(*engine, original_disk, storage_disk, id);
    ASSERT_TRUE(snap.ok()) << snap.status().ToString();
    std::vector<uint8_t> buf(kChunk);
    if (!damage) {
      EXPECT_EQ((*snap)->state(), SnapshotState::kTaken);
      ASSERT_OK(VerifyPattern(*(*snap)->image("d"), 0, kDeviceSize, 1));
      continue;
    }
    EXPECT_EQ((*snap)->state(), SnapshotState::kCorrupted);
    EXPECT_EQ((*snap)->devices().front().errnum, EUCLEAN);
    EXPECT_EQ((*snap)->image("d")->Read(0, buf).errnum(), EIO);
  }
}

// A crash commit's data was in the kernel before its record: at recovery a record of the last
// page whose data no longer matches its CRC is damage (power would drop it as a torn commit's),
// so the snapshot comes back corrupted instead of reading that chunk from the overwritten
// original.
TEST(ChunkLogTest, DamagedDataOfACrashCommitIsReportedNotDropped) {
  if (!Crc32cIsFast()) GTEST_SKIP() << "records carry no CRC on this CPU: nothing to check";
  auto original_disk = MakeMemoryDevice(kDeviceSize);
  auto storage_disk = MakeMemoryDevice(64 * kMiB);
  ChunkLog::Scan scan;
  const Uuid id = CrashAfterCommits(original_disk, storage_disk, 8, &scan);
  ASSERT_EQ(scan.records.size(), 8u);
  const LogRecord& r = scan.records.front();
  ASSERT_TRUE(r.flags & kRecordFlagVerify);
  ASSERT_OK(storage_disk->Write(r.offset, std::vector<uint8_t>(r.length, 0)));
  auto engine = Engine::Create(TestConfig()).value();
  auto snap = Recover(*engine, original_disk, storage_disk, id);
  ASSERT_TRUE(snap.ok()) << snap.status().ToString();
  EXPECT_EQ((*snap)->state(), SnapshotState::kCorrupted);
  EXPECT_EQ((*snap)->devices().front().errnum, EUCLEAN);
}

}  // namespace
}  // namespace blksnap
