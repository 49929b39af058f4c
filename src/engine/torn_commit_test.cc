// A power commit's torn tail (chunk_log.h): one flush makes a commit's pages and data durable,
// so after a power cut the log's last commit may locate data that never reached the disk.
// Recovery checks the CRCs of that commit and drops what fails, and compacts the log without it,
// so that the next commits never make a dropped record look committed. The power-cut tests of
// durable_snapshot_test.cc cover the first half at random instants; this one tears a commit on
// purpose and follows the recovered snapshot through a second crash, and makes the commit's data
// unreadable (the snapshot then comes back corrupted, as it must when nothing can vouch for it).
// And a close whose flush fails (a write-back lost) leaves the snapshot corrupted, not served,
// as does a recovery whose first flush reports a write-back the crashed daemon never saw.
#include <gtest/gtest.h>

#include <vector>

#include "blksnap/engine.h"
#include "blksnap/io.h"
#include "engine/chunk_log.h"
#include "engine/diff_storage_format.h"
#include "engine/engine_test_util.h"
#include "engine/power_test_util.h"
#include "util/crc32c.h"

namespace blksnap {
namespace {

constexpr uint64_t kMiB = 1ull << 20;
constexpr uint64_t kDeviceSize = 16 * kMiB;
constexpr uint64_t kChunk = 64 * 1024;

Config TestConfig() {
  Config config;
  config.cbt_checkpoint_interval_ms = 0;
  config.chunk_minimum_shift = 16;
  config.chunk_log_compact_pages = UINT32_MAX;  // the records as committed
  return config;
}

LogRecord LastRecord(BlockDevice& storage, const Uuid& id) {
  std::vector<uint8_t> slots(2 * kDiffStorageHeaderBlockSize);
  EXPECT_TRUE(storage.Read(0, slots).ok());
  const DiffStorageHeader h = ParseDiffStorageHeaderSlots(slots).value();
  auto scan = ChunkLog::Read(storage, id, h.log_start, h.log_epoch, h.log_sealed);
  EXPECT_TRUE(scan.ok() && !scan->records.empty());
  return scan->records.back();
}

Result<std::shared_ptr<Snapshot>> Recover(Engine& engine, std::shared_ptr<BlockDevice> original,
                                          std::shared_ptr<BlockDevice> storage, const Uuid& id) {
  BLKSNAP_RETURN_IF_ERROR(engine.Attach("d", original).status());
  return engine.RecoverSnapshot(
      {.id = id, .storage_device = storage, .power_lost = true, .check_originals = false});
}

// Generation 1 on the device, then a snapshot of it taken (power-durable unless told).
Uuid Take(Engine& engine, BlockDevice& tracker, std::shared_ptr<BlockDevice> storage,
          SnapshotDurability durability = SnapshotDurability::kPower) {
  EXPECT_TRUE(WritePattern(tracker, 0, kDeviceSize, 1).ok());
  Uuid id = engine
                .CreateSnapshot({.storage_path = "storage",
                                 .storage_device = std::move(storage),
                                 .durability = durability})
                .value();
  EXPECT_TRUE(engine.AddDevice(id, "d").ok());
  EXPECT_TRUE(engine.Take(id).ok());
  return id;
}

// A snapshot taken on fresh disks, chunk 0 preserved by one commit (the log's last), then a
// daemon crash (what was written stays).
struct Crashed {
  std::shared_ptr<BlockDevice> original_disk = MakeMemoryDevice(kDeviceSize);
  std::shared_ptr<BlockDevice> storage_disk = MakeMemoryDevice(64 * kMiB);
  Uuid id;
};

Crashed CrashAfterOneCommit() {
  Crashed c;
  Power power;
  auto engine = Engine::Create(TestConfig()).value();
  auto tracker = engine->Attach("d", Powered(c.original_disk, &power)).value();
  c.id = Take(*engine, *tracker, Powered(c.storage_disk, &power));
  EXPECT_TRUE(WritePattern(*tracker, 0, kChunk, 2).ok());
  power.Cut();
  return c;
}

TEST(TornCommitTest, ATornLastCommitIsDroppedAndStaysDropped) {
  if (!Crc32cIsFast()) GTEST_SKIP() << "records carry no CRC on this CPU: no torn-tail check";
  auto [original_disk, storage_disk, id] = CrashAfterOneCommit();
  // The power cut took chunk 0's data but not the page that locates it.
  const LogRecord torn = LastRecord(*storage_disk, id);
  ASSERT_EQ(torn.chunk, 0u);
  ASSERT_TRUE(torn.flags & kRecordFlagVerify);
  ASSERT_OK(storage_disk->Write(torn.offset, std::vector<uint8_t>(torn.length, 0)));

  {
    Power power;
    auto engine = Engine::Create(TestConfig()).value();
    auto snap = Recover(*engine, Powered(original_disk, &power), Powered(storage_disk, &power), id);
    ASSERT_TRUE(snap.ok()) << snap.status().ToString();
    EXPECT_EQ((*snap)->state(), SnapshotState::kTaken);
    // Dropped: chunk 0 reads from the original (here its newer data: this test tore a commit
    // that had returned; a real torn commit never returned, so the original was not written).
    ASSERT_OK(VerifyPattern(*(*snap)->image("d"), 0, kChunk, 2));
    ASSERT_OK(VerifyPattern(*(*snap)->image("d"), kChunk, kDeviceSize - kChunk, 1));
    // The snapshot goes on: chunk 1 preserved by a new commit, then a crash again.
    ASSERT_OK(WritePattern(*engine->FindTracker("d"), kChunk, kChunk, 3));
    power.Cut();
  }
  auto engine = Engine::Create(TestConfig()).value();
  auto snap = Recover(*engine, original_disk, storage_disk, id);
  ASSERT_TRUE(snap.ok()) << snap.status().ToString();
  // The dropped record is not in the log any more: chunk 0 is not the zeroes it located.
  ASSERT_OK(VerifyPattern(*(*snap)->image("d"), 0, kChunk, 2));
  ASSERT_OK(VerifyPattern(*(*snap)->image("d"), kChunk, kDeviceSize - kChunk, 1));
}

// Reads of one range fail: a storage whose sectors went bad while the daemon was down.
class BadRangeDevice : public ForwardingDevice {
 public:
  BadRangeDevice(std::shared_ptr<BlockDevice> next, uint64_t offset, uint64_t length)
      : ForwardingDevice(std::move(next)), offset_(offset), length_(length) {}
  Status Read(uint64_t offset, std::span<uint8_t> buf) override {
    if (offset < offset_ + length_ && offset + buf.size() > offset_)
      return Status::Error(EIO, "bad sector");
    return ForwardingDevice::Read(offset, buf);
  }

 private:
  uint64_t offset_, length_;
};

// The last commit's data cannot be read at recovery: nothing tells a torn commit from a chunk
// gone bad, so the snapshot comes back corrupted (EUCLEAN), is never served, and stays so.
TEST(TornCommitTest, UnreadableLastCommitDataMarksTheSnapshotCorrupted) {
  if (!Crc32cIsFast()) GTEST_SKIP() << "records carry no CRC on this CPU: no torn-tail check";
  auto [original_disk, storage_disk, id] = CrashAfterOneCommit();
  const LogRecord last = LastRecord(*storage_disk, id);
  ASSERT_TRUE(last.flags & kRecordFlagVerify);
  {
    auto engine = Engine::Create(TestConfig()).value();
    auto bad = std::make_shared<BadRangeDevice>(storage_disk, last.offset, last.length);
    auto snap = Recover(*engine, original_disk, bad, id);
    ASSERT_TRUE(snap.ok()) << snap.status().ToString();
    EXPECT_EQ((*snap)->state(), SnapshotState::kCorrupted);
    ASSERT_EQ((*snap)->devices().size(), 1u);
    EXPECT_EQ((*snap)->devices()[0].errnum, EUCLEAN);
    std::vector<uint8_t> buf(4096);
    EXPECT_FALSE((*snap)->image("d")->Read(kChunk, buf).ok());  // never served
    // The original is as the writes left it.
    ASSERT_OK(VerifyPattern(*engine->FindTracker("d"), 0, kChunk, 2));
    ASSERT_OK(VerifyPattern(*engine->FindTracker("d"), kChunk, kDeviceSize - kChunk, 1));
    ASSERT_OK(engine->CloseSnapshot(id));  // a clean stop (the engine's end would destroy it)
  }
  // The sectors readable again: the snapshot stays corrupted.
  auto engine = Engine::Create(TestConfig()).value();
  auto snap = Recover(*engine, original_disk, storage_disk, id);
  ASSERT_TRUE(snap.ok()) << snap.status().ToString();
  EXPECT_EQ((*snap)->state(), SnapshotState::kCorrupted);
}

// An image write changes a preserved chunk's data in place: its record, if it is the last commit,
// must not be dropped for a CRC that no longer matches.
TEST(TornCommitTest, AnImageWriteInPlaceIsNotTakenForATornCommit) {
  auto original_disk = MakeMemoryDevice(kDeviceSize);
  auto storage_disk = MakeMemoryDevice(64 * kMiB);
  Uuid id;
  {
    Power power;
    auto engine = Engine::Create(TestConfig()).value();
    auto tracker = engine->Attach("d", Powered(original_disk, &power)).value();
    id = Take(*engine, *tracker, Powered(storage_disk, &power));
    ASSERT_OK(WritePattern(*tracker, 0, kChunk, 2));  // chunk 0 preserved: generation 1
    auto image = engine->FindSnapshot(id)->image("d");
    ASSERT_OK(WritePattern(*image, 0, kChunk, 7));  // the image's chunk 0 changes in place
    ASSERT_OK(image->Flush());
    power.Cut();
  }
  auto engine = Engine::Create(TestConfig()).value();
  auto snap = Recover(*engine, original_disk, storage_disk, id);
  ASSERT_TRUE(snap.ok()) << snap.status().ToString();
  ASSERT_OK(VerifyPattern(*(*snap)->image("d"), 0, kChunk, 7));
  ASSERT_OK(VerifyPattern(*(*snap)->image("d"), kChunk, kDeviceSize - kChunk, 1));
}

// A clean close flushes the storage before it seals the log; when that flush fails, some of
// what the log said may never reach the disk (a crash log's pages are written back by the
// kernel, whose error shows only at the flush): the snapshot is marked corrupted, so the next
// start reports it instead of serving a log that may end early.
TEST(TornCommitTest, AFailedFlushAtCloseLeavesTheSnapshotCorrupted) {
  auto original_disk = MakeMemoryDevice(kDeviceSize);
  auto storage_disk = MakeMemoryDevice(64 * kMiB);
  Uuid id;
  {
    auto engine = Engine::Create(TestConfig()).value();
    auto tracker = engine->Attach("d", original_disk).value();
    ASSERT_OK(WritePattern(*tracker, 0, kDeviceSize, 1));
    auto storage = std::make_shared<FaultDevice>(storage_disk);
    id = engine
             ->CreateSnapshot({.storage_path = "storage",
                               .storage_device = storage,
                               .durability = SnapshotDurability::kCrash})
             .value();
    ASSERT_OK(engine->AddDevice(id, "d"));
    ASSERT_TRUE(engine->Take(id).ok());
    ASSERT_OK(WritePattern(*tracker, 0, 4 * kChunk, 2));
    storage->FailNthFlush(1, EIO);
    EXPECT_EQ(engine->CloseSnapshot(id).errnum(), EIO);
  }
  auto engine = Engine::Create(TestConfig()).value();
  ASSERT_OK(engine->Attach("d", original_disk).status());
  auto snap =
      engine->RecoverSnapshot({.id = id, .storage_device = storage_disk, .check_originals = false});
  ASSERT_TRUE(snap.ok()) << snap.status().ToString();
  EXPECT_EQ((*snap)->state(), SnapshotState::kCorrupted);
}

// A crash log's mapped pages are written back by the kernel alone: one that failed after the
// daemon died (kill -9) is reported, if the kernel still has it, to the first flush through a
// newly opened file (Linux's errseq). A recovery whose first flush fails brings the snapshot
// back corrupted with that error, not served.
TEST(TornCommitTest, AFailedFlushAtRecoveryAfterACrashLeavesTheSnapshotCorrupted) {
  auto original_disk = MakeMemoryDevice(kDeviceSize);
  auto storage_disk = MakeMemoryDevice(64 * kMiB);
  Uuid id;
  {
    Power power;
    auto engine = Engine::Create(TestConfig()).value();
    auto tracker = engine->Attach("d", Powered(original_disk, &power)).value();
    id = Take(*engine, *tracker, Powered(storage_disk, &power), SnapshotDurability::kCrash);
    ASSERT_OK(WritePattern(*tracker, 0, 4 * kChunk, 2));
    power.Cut();  // the daemon dies: what it wrote stays
  }
  auto storage = std::make_shared<FaultDevice>(storage_disk);
  storage->FailNthFlush(1, ENOSPC);
  auto engine = Engine::Create(TestConfig()).value();
  ASSERT_OK(engine->Attach("d", original_disk).status());
  auto snap =
      engine->RecoverSnapshot({.id = id, .storage_device = storage, .check_originals = false});
  ASSERT_TRUE(snap.ok()) << snap.status().ToString();
  EXPECT_EQ((*snap)->state(), SnapshotState::kCorrupted);
  ASSERT_EQ((*snap)->devices().size(), 1u);
  EXPECT_EQ((*snap)->devices()[0].errnum, ENOSPC);  // the reason: the flush's error
  std::vector<uint8_t> block(4096);
  EXPECT_EQ((*snap)->image("d")->Read(0, block).errnum(), EIO);
}

}  // namespace
}  // namespace blksnap
