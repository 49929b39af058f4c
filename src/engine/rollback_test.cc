// Rollback of a device to a snapshot (issue 18, rollback.h): the original becomes the snapshot's
// image (with the image's own writes) while the device serves that content from the first
// instant, user writes during the merge land on top, a newer snapshot keeps its take, CBT covers
// every rolled-back chunk; a daemon crash (every device stops at once) or a power cut (unflushed
// writes dropped) at any instant of the merge is resumed from the journal to the same result,
// and never merges a chunk again over a write that came after its merge. The oracle is a model
// of the sector-pattern generation of every 512-byte sector.
#include <gtest/gtest.h>

#include <chrono>
#include <random>
#include <thread>
#include <vector>

#include "blksnap/engine.h"
#include "blksnap/io.h"
#include "engine/engine_test_util.h"
#include "engine/model_test_util.h"
#include "engine/power_test_util.h"
#include "engine/rollback_journal_format.h"
#include "util/crc32c.h"
#include "util/little_endian.h"

namespace blksnap {
namespace {

using namespace model_test;
constexpr uint64_t kStorageSize = 2 * kMiB + 32 * kMiB;

// Each sector holds the generation of `a` or of `b` (writes whose flush failed at a power cut
// may or may not have reached the disk).
Status VerifyEither(BlockDevice& dev, const Model& a, const Model& b) {
  std::vector<uint8_t> buf(kSectors * kSector);
  BLKSNAP_RETURN_IF_ERROR(dev.Read(0, buf));
  for (uint64_t s = 0; s < kSectors; ++s) {
    auto sector = std::span(buf).subspan(s * kSector, kSector);
    if (testing::VerifySectors(sector, s, a[s]).ok()) continue;
    Status st = testing::VerifySectors(sector, s, b[s]);
    if (!st.ok())
      return Status::Error(st.errnum(),
                           "sector " + std::to_string(s) + ": " + std::string(st.message()));
  }
  return Status::Ok();
}

Result<Uuid> Take(Engine& engine, std::shared_ptr<BlockDevice> storage) {
  BLKSNAP_ASSIGN_OR_RETURN(Uuid id,
                           engine.CreateSnapshot({.storage_path = "storage",
                                                  .storage_device = std::move(storage),
                                                  .durability = SnapshotDurability::kPower}));
  BLKSNAP_RETURN_IF_ERROR(engine.AddDevice(id, "vol"));
  BLKSNAP_RETURN_IF_ERROR(engine.Take(id).status());
  return id;
}

// Waits until the device's rollback leaves kMerging; its final state.
RollbackProgress::State WaitRollback(Tracker& tracker) {
  for (int i = 0; i < 60000; ++i) {
    auto p = tracker.rollback();
    if (p && p->state != RollbackProgress::State::kMerging) return p->state;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return RollbackProgress::State::kMerging;
}

// Two snapshots: s1, image writes to it, then s2; the models of both images and of the device.
struct Scene {
  std::shared_ptr<BlockDevice> original, storage1, storage2, journal;
  Uuid s1, s2;
  Model m1, m2, now;
  uint64_t gen = 2;
  uint8_t s2_number = 0;
};

void BuildScene(Engine& engine, Tracker& tracker, Scene& sc, std::mt19937_64& rng) {
  ASSERT_OK(WritePattern(tracker, 0, kDevSize, 1));
  sc.now.assign(kSectors, 1);
  sc.s1 = Take(engine, sc.storage1).value();
  sc.m1 = sc.now;
  ASSERT_OK(RandomWrites(tracker, sc.now, rng, 30, &sc.gen));
  auto image1 = engine.FindSnapshot(sc.s1)->image("vol");
  ASSERT_OK(RandomWrites(*image1, sc.m1, rng, 6, &sc.gen));
  ASSERT_OK(image1->Flush());  // image writes are durable once flushed
  sc.s2 = Take(engine, sc.storage2).value();
  sc.s2_number = tracker.cbt_info().changes_number;
  sc.m2 = sc.now;
  ASSERT_OK(RandomWrites(tracker, sc.now, rng, 30, &sc.gen));
}

TEST(RollbackTest, TheDeviceServesTheImageAtOnceAndBecomesItWithWritesOnTop) {
  auto engine = Engine::Create(TestConfig()).value();
  Scene sc;
  sc.original = MakeMemoryDevice(kDevSize);
  sc.storage1 = MakeMemoryDevice(kStorageSize);
  sc.storage2 = MakeMemoryDevice(kStorageSize);
  sc.journal = MakeMemoryDevice(1 * kMiB);
  auto tracker = engine->Attach("vol", sc.original).value();
  std::mt19937_64 rng(7);
  BuildScene(*engine, *tracker, sc, rng);
  const Model before = sc.now;

  // The merge threads wait 1.5 s before each run (the first run of each worker included), so
  // everything up to the wait below happens while it merges, sanitizers or not.
  ASSERT_OK(
      engine->Rollback(sc.s1, "vol", {.journal_device = sc.journal, .merge_delay_us = 1500000}));
  // Served at once, while the merge runs.
  ASSERT_EQ(tracker->rollback()->state, RollbackProgress::State::kMerging);
  EXPECT_OK(VerifyModel(*tracker, sc.m1));
  ASSERT_EQ(engine->Destroy(sc.s1).errnum(), EBUSY);
  EXPECT_EQ(engine->Rollback(sc.s1, "vol", {.journal_device = sc.journal}).errnum(), EBUSY);
  std::vector<uint8_t> sector(kSector);
  EXPECT_EQ(engine->FindSnapshot(sc.s1)->image("vol")->Write(0, sector, 0).errnum(), EROFS);
  Uuid s3 = engine
                ->CreateSnapshot({.storage_path = "s3",
                                  .storage_device = MakeMemoryDevice(kStorageSize),
                                  .durability = SnapshotDurability::kPower})
                .value();
  ASSERT_OK(engine->AddDevice(s3, "vol"));
  EXPECT_EQ(engine->Take(s3).status().errnum(), EBUSY);
  ASSERT_OK(engine->Destroy(s3));
  // Writes during the merge land on top of the snapshot's data.
  Model expect = sc.m1;
  ASSERT_OK(RandomWrites(*tracker, expect, rng, 40, &sc.gen));
  EXPECT_OK(VerifyModel(*tracker, expect));
  ASSERT_EQ(WaitRollback(*tracker), RollbackProgress::State::kDone);
  const auto p = *tracker->rollback();
  EXPECT_GT(p.chunks_total, 0u);
  EXPECT_EQ(p.chunks_merged, p.chunks_total);
  EXPECT_OK(VerifyModel(*tracker, expect));
  EXPECT_OK(VerifyModel(*sc.original, expect));
  EXPECT_OK(VerifyModel(*engine->FindSnapshot(sc.s2)->image("vol"), sc.m2));
  EXPECT_OK(VerifyModel(*engine->FindSnapshot(sc.s1)->image("vol"), sc.m1));
  EXPECT_OK(engine->FindSnapshot(sc.s1)->image("vol")->Write(0, sector, 0));  // writable again
  // CBT: every sector the rollback changed is in the changes since s2 (seen at the next take).
  s3 = Take(*engine, MakeMemoryDevice(kStorageSize)).value();
  auto extents = tracker->ChangedExtents(sc.s2_number).value();
  for (uint64_t s = 0; s < kSectors; ++s) {
    if (before[s] == sc.m1[s]) continue;
    const uint64_t byte = s * kSector;
    bool covered = false;
    for (const auto& e : extents)
      covered = covered || (byte >= e.offset && byte < e.offset + e.length);
    ASSERT_TRUE(covered) << "sector " << s << " rolled back but not in the CBT";
  }
}

TEST(RollbackTest, RefusesMemoryAndCorruptedSnapshotsAndAnExistingJournal) {
  auto engine = Engine::Create(TestConfig()).value();
  auto tracker = engine->Attach("vol", MakeMemoryDevice(kDevSize)).value();
  Uuid mem = engine
                 ->CreateSnapshot({.storage_path = "m",
                                   .storage_device = MakeMemoryDevice(kStorageSize),
                                   .durability = SnapshotDurability::kMemory})
                 .value();
  ASSERT_OK(engine->AddDevice(mem, "vol"));
  ASSERT_TRUE(engine->Take(mem).ok());
  auto journal = MakeMemoryDevice(1 * kMiB);
  EXPECT_EQ(engine->Rollback(mem, "vol", {.journal_device = journal}).errnum(), EINVAL);
  EXPECT_EQ(engine->Rollback(Uuid::Random(), "vol", {.journal_device = journal}).errnum(), ENOENT);
  EXPECT_EQ(engine->Rollback(mem, "nope", {.journal_device = journal}).errnum(), ENOENT);
  // A resume of a journal that is not one.
  EXPECT_EQ(engine->Rollback(Uuid(), "vol", {.journal_device = journal, .resume = true}).errnum(),
            EINVAL);
  EXPECT_FALSE(tracker->rollback().has_value());
}

// A crash (kill: the devices keep what was written) or a power cut (unflushed writes dropped)
// mid-merge, at `round`-dependent instants; the next engine recovers the snapshots, resumes the
// rollback from the journal and ends with the same device.
void CrashMidMerge(bool power_cut, int round) {
  Power power;
  power.drop = power_cut;
  if (power_cut) power.keep_seed = round % 2 ? 0 : 977 * round + 1;
  Scene sc;
  auto disks = std::vector<std::shared_ptr<BlockDevice>>{
      MakeMemoryDevice(kDevSize), MakeMemoryDevice(kStorageSize), MakeMemoryDevice(kStorageSize),
      MakeMemoryDevice(1 * kMiB)};
  sc.original = Powered(disks[0], &power);
  sc.storage1 = Powered(disks[1], &power);
  sc.storage2 = Powered(disks[2], &power);
  sc.journal = Powered(disks[3], &power);
  std::mt19937_64 rng(100 + round);
  Model expect, maybe;  // maybe: with the writes whose flush did not return
  bool started = false;
  {
    auto engine = Engine::Create(TestConfig()).value();
    auto tracker = engine->Attach("vol", sc.original).value();
    BuildScene(*engine, *tracker, sc, rng);
    ASSERT_OK(tracker->Flush());
    expect = sc.now;
    // The power goes at the k-th flush from here (the journal's, the merge's, the storage's).
    if (power_cut) power.cut_at = power.flushes.load() + 1 + round;
    Status s =
        engine->Rollback(sc.s1, "vol", {.journal_device = sc.journal, .merge_delay_us = 500});
    started = s.ok();
    if (started) {
      expect = sc.m1;
      // User writes during the merge, each flushed (so a power cut cannot take them back).
      for (int i = 0; i < 4 && !power.off; ++i) {
        maybe = expect;
        if (!RandomWrites(*tracker, maybe, rng, 3, &sc.gen).ok() || !tracker->Flush().ok()) break;
        expect = maybe;
      }
    }
    if (!power_cut) std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 20));
    power.Cut();
  }
  // The next run: the snapshots back (the newest first), the rollback resumed if its journal
  // is valid; the device is the snapshot's image with the acknowledged writes on top.
  auto engine = Engine::Create(TestConfig()).value();
  auto tracker = engine->Attach("vol", disks[0]).value();
  for (auto [id, disk] : {std::pair{sc.s2, disks[2]}, std::pair{sc.s1, disks[1]}}) {
    auto snap = engine->RecoverSnapshot(
        {.id = id, .storage_device = disk, .power_lost = power_cut, .check_originals = false});
    ASSERT_TRUE(snap.ok()) << snap.status().ToString();
    ASSERT_EQ((*snap)->state(), SnapshotState::kTaken);
  }
  Status resumed = engine->Rollback(Uuid(), "vol", {.journal_device = disks[3], .resume = true});
  if (!started) {
    // The start was cut: the journal may or may not have become valid; either way the device
    // is all before or all after.
    if (!resumed.ok()) {
      EXPECT_OK(VerifyModel(*tracker, expect));
      return;
    }
    expect = sc.m1;
  }
  ASSERT_OK(resumed);
  ASSERT_EQ(WaitRollback(*tracker), RollbackProgress::State::kDone);
  if (maybe.empty()) maybe = expect;
  EXPECT_OK(VerifyEither(*tracker, expect, maybe));
  EXPECT_OK(VerifyEither(*disks[0], expect, maybe));
  EXPECT_OK(VerifyModel(*engine->FindSnapshot(sc.s2)->image("vol"), sc.m2));
  EXPECT_OK(VerifyModel(*engine->FindSnapshot(sc.s1)->image("vol"), sc.m1));
}

TEST(RollbackJournalFormatTest, RoundTripsAndRefusesDamage) {
  RollbackJournalHeader h;
  h.snapshot = Uuid::Random();
  h.device = "vol";
  h.device_size = kDevSize;
  h.chunk_size = 64 * kKiB;
  h.chunk_count = (kDevSize + h.chunk_size - 1) / h.chunk_size;
  h.started = 123;
  auto block = SerializeRollbackHeader(h);
  auto parsed = ParseRollbackHeader(block);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->snapshot, h.snapshot);
  EXPECT_EQ(parsed->device, "vol");
  EXPECT_EQ(parsed->chunk_count, h.chunk_count);
  EXPECT_EQ(RollbackBitmapBytes(h.chunk_count), kRollbackBitmapBlock);
  auto damaged = block;
  damaged[kRbDeviceSizeOffset] ^= 1;
  EXPECT_EQ(ParseRollbackHeader(damaged).status().errnum(), EINVAL);  // checksum
  auto other = block;
  PutLe<uint32_t>(other.data() + kRbVersionOffset, 2);
  PutLe<uint32_t>(other.data() + kRbCrcOffset, Crc32c(other.data(), kRbCrcOffset));
  EXPECT_EQ(ParseRollbackHeader(other).status().errnum(), EPROTO);
  h.chunk_count += 1;
  EXPECT_EQ(ParseRollbackHeader(SerializeRollbackHeader(h)).status().errnum(), EINVAL);
  EXPECT_EQ(ParseRollbackHeader(std::span(block).first(100)).status().errnum(), EINVAL);
}

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
constexpr int kRounds = 4;
#else
constexpr int kRounds = 16;
#endif

TEST(RollbackTest, ADaemonCrashMidMergeIsResumed) {
  for (int round = 0; round < kRounds; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    CrashMidMerge(false, round);
    if (HasFatalFailure() || HasFailure()) return;
  }
}

TEST(RollbackTest, APowerCutAtEachFlushOfTheMergeIsResumed) {
  for (int round = 0; round < 3 * kRounds; ++round) {
    SCOPED_TRACE("cut at flush " + std::to_string(round + 1));
    CrashMidMerge(true, round);
    if (HasFatalFailure() || HasFailure()) return;
  }
}

}  // namespace
}  // namespace blksnap
