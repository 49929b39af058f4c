// Durable snapshots (issue 15) at the engine level, on the I/O seam: a taken snapshot is
// recovered from its difference storage after
//   - a daemon crash: every device stops at one instant (writes that returned are kept);
//   - a power cut at each sync point: writes not flushed are dropped on the original and the
//     storage alike (FaultDevice buffering), at the Nth flush of either;
//   - a clean close (CloseSnapshot).
// The oracle is the self-checking sector pattern: the original holds generation 1 at the take,
// writers stamp later generations; the recovered image must hold generation 1 in every sector.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <random>
#include <thread>
#include <vector>

#include "blksnap/engine.h"
#include "blksnap/io.h"
#include "engine/chunk_log.h"
#include "engine/diff_storage_format.h"
#include "engine/engine_test_util.h"
#include "engine/power_test_util.h"
#include "util/crc32c.h"
#include "util/mutex.h"

namespace blksnap {
namespace {

constexpr uint64_t kMiB = 1ull << 20;
constexpr uint64_t kDeviceSize = 16 * kMiB;
constexpr uint64_t kStorageSize = 64 * kMiB;
constexpr uint64_t kWrite = 64 * 1024;

struct Machine {
  std::shared_ptr<BlockDevice> original_disk = MakeMemoryDevice(kDeviceSize);
  std::shared_ptr<BlockDevice> storage_disk = MakeMemoryDevice(kStorageSize);
  Power power;
  std::shared_ptr<BlockDevice> original, storage;

  explicit Machine(bool buffered) {
    power.drop = buffered;
    auto wrap = [&](std::shared_ptr<BlockDevice> disk) {
      auto fault = std::make_shared<FaultDevice>(disk);
      fault->SetBufferUnflushed(buffered);
      power.devices.push_back(fault);
      return std::make_shared<PoweredDevice>(fault, &power);
    };
    original = wrap(original_disk);
    storage = wrap(storage_disk);
  }
};

// Under a sanitizer (ten times slower) the sync points are sampled: every kStride-th one.
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
constexpr uint64_t kStride = 7;
constexpr int kCrashRounds = 4;
#else
constexpr uint64_t kStride = 1;
constexpr int kCrashRounds = 12;
#endif

// false: the crash and power tests run again with the chunks handed to storer threads (the
// path of memory snapshots and image writes) instead of stored by the writers themselves.
bool g_store_inline = true;
struct ThroughStorers {
  ThroughStorers() { g_store_inline = false; }
  ~ThroughStorers() { g_store_inline = true; }
};

Config TestConfig() {
  Config config;
  config.durable_store_inline = g_store_inline;
  config.cbt_checkpoint_interval_ms = 0;
  // The chunk log compacts itself every few pages: the crash and power cuts below fall before,
  // during and after compactions too.
  config.chunk_log_compact_pages = 4;
  return config;
}

// Random 64 KiB writes of generations 2, 3, ... by `threads` writers until `stop` or an error.
void RunWriters(BlockDevice& dev, int threads, std::atomic<bool>& stop, uint64_t max_writes) {
  std::vector<std::thread> writers;
  std::atomic<uint64_t> writes{0};
  for (int t = 0; t < threads; ++t) {
    writers.emplace_back([&, t] {
      std::mt19937_64 rng(t * 7919 + 1);
      while (!stop && writes.fetch_add(1) < max_writes) {
        const uint64_t offset = rng() % (kDeviceSize / kWrite) * kWrite;
        if (!WritePattern(dev, offset, kWrite, 2 + (rng() % 1000)).ok()) return;
      }
    });
  }
  for (auto& w : writers) w.join();
}

// Recovers the snapshot on a fresh engine over the disks' content and checks the image.
void ExpectRecoveredImage(Machine& m, const Uuid& id, SnapshotDurability durability,
                          const char* from, bool go_on = true) {
  auto engine = Engine::Create(TestConfig()).value();
  ASSERT_TRUE(engine->Attach("d", m.original_disk).ok());
  auto snap = engine->RecoverSnapshot({.id = id,
                                       .storage_device = m.storage_disk,
                                       .power_lost = m.power.drop,
                                       .check_originals = false});
  ASSERT_TRUE(snap.ok()) << snap.status().ToString();
  EXPECT_EQ((*snap)->state(), SnapshotState::kTaken);
  EXPECT_EQ((*snap)->durability(), durability);
  EXPECT_EQ((*snap)->recovered_from(), from);
  auto image = (*snap)->image("d");
  ASSERT_TRUE(image);
  ASSERT_OK(VerifyPattern(*image, 0, kDeviceSize, 1));
  if (!go_on) return;
  // The recovered snapshot goes on preserving: overwrite everything, the image stays.
  auto tracker = engine->FindTracker("d");
  ASSERT_OK(WritePattern(*tracker, 0, kDeviceSize, 5000));
  ASSERT_OK(VerifyPattern(*image, 0, kDeviceSize, 1));
  ASSERT_OK(engine->Destroy(id));
}

Result<Uuid> TakeSnapshot(Engine& engine, Machine& m, SnapshotDurability durability) {
  BLKSNAP_ASSIGN_OR_RETURN(auto tracker, engine.Attach("d", m.original));
  BLKSNAP_RETURN_IF_ERROR(WritePattern(*tracker, 0, kDeviceSize, 1));
  BLKSNAP_RETURN_IF_ERROR(tracker->Flush());
  BLKSNAP_ASSIGN_OR_RETURN(Uuid id, engine.CreateSnapshot({.storage_path = "storage",
                                                           .storage_device = m.storage,
                                                           .durability = durability}));
  BLKSNAP_RETURN_IF_ERROR(engine.AddDevice(id, "d"));
  BLKSNAP_RETURN_IF_ERROR(engine.Take(id).status());
  return id;
}

void CrashAtRandomInstants() {
  for (int round = 0; round < kCrashRounds; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    Machine m(/*buffered=*/false);
    Uuid id;
    {
      auto engine = Engine::Create(TestConfig()).value();
      auto taken = TakeSnapshot(*engine, m, SnapshotDurability::kCrash);
      ASSERT_TRUE(taken.ok()) << taken.status().ToString();
      id = *taken;
      std::atomic<bool> stop{false};
      std::thread killer([&] {
        std::this_thread::sleep_for(std::chrono::microseconds(200 + round * 1500));
        m.power.Cut();  // kill -9: every device stops at once
      });
      RunWriters(*engine->FindTracker("d"), 4, stop, 100000);
      killer.join();
    }
    ExpectRecoveredImage(m, id, SnapshotDurability::kCrash, kSnapshotRecoveredDaemonCrash);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

TEST(DurableSnapshotTest, DaemonCrashAtRandomInstantsKeepsTheImage) { CrashAtRandomInstants(); }

TEST(DurableSnapshotTest, DaemonCrashThroughStorersKeepsTheImage) {
  ThroughStorers storers;
  CrashAtRandomInstants();
}

void PowerCutAtEverySyncPoint() {
  uint64_t cuts_after_take = 0;
  for (uint64_t cut = 1;; cut += kStride) {
    SCOPED_TRACE("power cut at flush " + std::to_string(cut));
    Machine m(/*buffered=*/true);
    m.power.cut_at = cut;
    m.power.keep_seed = cut % 3 ? cut * 2654435761u : 0;  // two in three keep some writes
    Result<Uuid> taken = Status::Error(EIO, "not taken");
    bool cut_while_live = false;
    {
      auto engine = Engine::Create(TestConfig()).value();
      taken = TakeSnapshot(*engine, m, SnapshotDurability::kPower);
      if (taken.ok()) {
        std::atomic<bool> stop{false};
        RunWriters(*engine->FindTracker("d"), 4, stop, 160);
      }
      cut_while_live = m.power.off;
    }  // destroys the snapshot: a cut now may or may not leave it recoverable
    if (!m.power.off) break;  // the workload ended before this sync point: all points seen
    if (taken.ok() && !cut_while_live) {
      auto engine = Engine::Create(TestConfig()).value();
      ASSERT_TRUE(engine->Attach("d", m.original_disk).ok());
      auto snap = engine->RecoverSnapshot(
          {.id = *taken, .storage_device = m.storage_disk, .check_originals = false});
      if (snap.ok()) ASSERT_OK(VerifyPattern(*(*snap)->image("d"), 0, kDeviceSize, 1));
      continue;
    }
    if (!taken.ok()) {
      // The take did not return: the snapshot may or may not be recoverable, never wrong.
      auto engine = Engine::Create(TestConfig()).value();
      ASSERT_TRUE(engine->Attach("d", m.original_disk).ok());
      continue;
    }
    ++cuts_after_take;
    ExpectRecoveredImage(m, *taken, SnapshotDurability::kPower, kSnapshotRecoveredPowerLoss,
                         /*go_on=*/cut % 8 == 1);
    if (::testing::Test::HasFatalFailure()) return;
  }
  EXPECT_GT(cuts_after_take, 5u / kStride);
  std::printf("power cut at %llu sync points after the take\n",
              static_cast<unsigned long long>(cuts_after_take));
}

TEST(DurableSnapshotTest, PowerCutAtEverySyncPointKeepsTheImageOrNoSnapshot) {
  PowerCutAtEverySyncPoint();
}

TEST(DurableSnapshotTest, PowerCutThroughStorersKeepsTheImageOrNoSnapshot) {
  ThroughStorers storers;
  PowerCutAtEverySyncPoint();
}

TEST(DurableSnapshotTest, CleanCloseAndRecoverKeepsEverything) {
  Machine m(false);
  auto engine = Engine::Create(TestConfig()).value();
  auto id = TakeSnapshot(*engine, m, SnapshotDurability::kPower);
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  auto tracker = engine->FindTracker("d");
  ASSERT_OK(WritePattern(*tracker, 0, kDeviceSize / 2, 7));
  // An image write lands in the storage and survives too.
  auto image = engine->FindSnapshot(*id)->image("d");
  ASSERT_OK(WritePattern(*image, kDeviceSize - kWrite, kWrite, 9));
  ASSERT_OK(engine->CloseSnapshot(*id));
  EXPECT_FALSE(engine->FindSnapshot(*id));
  EXPECT_FALSE(tracker->snapshot());
  auto snap = engine->RecoverSnapshot(
      {.id = *id, .storage_device = m.storage_disk, .check_originals = false});
  ASSERT_TRUE(snap.ok()) << snap.status().ToString();
  EXPECT_EQ((*snap)->recovered_from(), kSnapshotRecoveredCleanStop);
  image = (*snap)->image("d");
  ASSERT_OK(VerifyPattern(*image, 0, kDeviceSize - kWrite, 1));
  ASSERT_OK(VerifyPattern(*image, kDeviceSize - kWrite, kWrite, 9));
  // Recovering twice is refused while it lives; after destroy the storage says nothing is there.
  EXPECT_EQ(
      engine->RecoverSnapshot({.id = *id, .storage_device = m.storage_disk}).status().errnum(),
      EEXIST);
  ASSERT_OK(engine->Destroy(*id));
  EXPECT_EQ(
      engine
          ->RecoverSnapshot({.id = *id, .storage_device = m.storage_disk, .check_originals = false})
          .status()
          .errnum(),
      ENOENT);
}

TEST(DurableSnapshotTest, CorruptionPersistsAndOtherStoragesAreRefused) {
  Machine m(false);
  auto engine = Engine::Create(TestConfig()).value();
  auto tracker = engine->Attach("d", m.original).value();
  ASSERT_OK(WritePattern(*tracker, 0, kDeviceSize, 1));
  // A limit of 1 MiB: overwriting the device overflows it.
  auto id = engine->CreateSnapshot({.storage_path = "s",
                                    .limit = kMiB,
                                    .storage_device = m.storage,
                                    .durability = SnapshotDurability::kCrash});
  ASSERT_TRUE(id.ok());
  ASSERT_OK(engine->AddDevice(*id, "d"));
  ASSERT_TRUE(engine->Take(*id).ok());
  ASSERT_OK(WritePattern(*tracker, 0, kDeviceSize, 2));
  EXPECT_EQ(engine->FindSnapshot(*id)->state(), SnapshotState::kCorrupted);
  m.power.Cut();
  engine.reset();

  auto next = Engine::Create(TestConfig()).value();
  ASSERT_TRUE(next->Attach("d", m.original_disk).ok());
  // Another id: refused, nothing changed.
  auto wrong = next->RecoverSnapshot({.id = Uuid::Random(), .storage_device = m.storage_disk});
  EXPECT_EQ(wrong.status().errnum(), EINVAL) << wrong.status().ToString();
  auto snap = next->RecoverSnapshot(
      {.id = *id, .storage_device = m.storage_disk, .check_originals = false});
  ASSERT_TRUE(snap.ok()) << snap.status().ToString();
  EXPECT_EQ((*snap)->state(), SnapshotState::kCorrupted);
  std::vector<uint8_t> buf(4096);
  EXPECT_EQ((*snap)->image("d")->Read(0, buf).errnum(), EIO);
  ASSERT_OK(next->Destroy(*id));
}

TEST(DurableSnapshotTest, NewGenerationOrPowerLossOfACrashSnapshotRecoversCorrupted) {
  Machine m(false);
  Uuid id;
  {
    auto engine = Engine::Create(TestConfig()).value();
    id = TakeSnapshot(*engine, m, SnapshotDurability::kCrash).value();
    m.power.Cut();
  }
  {
    // CBT in memory: a new generation, the changes while nobody tracked are unknown.
    auto engine = Engine::Create(TestConfig()).value();
    ASSERT_TRUE(engine->Attach("d", m.original_disk).ok());
    auto snap = engine->RecoverSnapshot({.id = id, .storage_device = m.storage_disk});
    ASSERT_TRUE(snap.ok()) << snap.status().ToString();
    EXPECT_EQ((*snap)->state(), SnapshotState::kCorrupted);
    ASSERT_OK(engine->CloseSnapshot(id));
  }
  // And it stays corrupted; a crash-durability snapshot after a power loss is corrupted too.
  auto engine = Engine::Create(TestConfig()).value();
  ASSERT_TRUE(engine->Attach("d", m.original_disk).ok());
  auto snap = engine->RecoverSnapshot(
      {.id = id, .storage_device = m.storage_disk, .check_originals = false});
  ASSERT_TRUE(snap.ok()) << snap.status().ToString();
  EXPECT_EQ((*snap)->state(), SnapshotState::kCorrupted);
}

TEST(DurableSnapshotTest, MissingDeviceOrMemorySnapshotIsRefused) {
  Machine m(false);
  Uuid id;
  {
    auto engine = Engine::Create(TestConfig()).value();
    id = TakeSnapshot(*engine, m, SnapshotDurability::kPower).value();
    EXPECT_EQ(engine->CloseSnapshot(Uuid::Random()).errnum(), ENOENT);
    m.power.Cut();
  }
  auto engine = Engine::Create(TestConfig()).value();
  auto none = engine->RecoverSnapshot({.id = id, .storage_device = m.storage_disk});
  EXPECT_EQ(none.status().errnum(), ENODEV) << none.status().ToString();
  ASSERT_TRUE(engine->Attach("d", m.original_disk).ok());

  Machine mem(false);
  auto memory = Engine::Create(TestConfig()).value();
  auto mid = TakeSnapshot(*memory, mem, SnapshotDurability::kMemory).value();
  EXPECT_EQ(memory->CloseSnapshot(mid).errnum(), EINVAL);
  auto refused = engine->RecoverSnapshot({.id = mid, .storage_device = mem.storage_disk});
  EXPECT_EQ(refused.status().errnum(), EINVAL) << refused.status().ToString();
}

}  // namespace
}  // namespace blksnap

namespace blksnap {
namespace {

// 4 KiB chunks written one at a time: one commit, one page per chunk (power: a page per round;
// crash packs its commits into one page), 16 segments of log.
// With `zero` the device is all zeroes at the take: records without data, so each new segment
// directly follows the one before (the reader must not take it for the same segment).
void RecoverAFullLog(bool zero) {
  Config config = TestConfig();
  config.chunk_minimum_shift = 12;
  config.chunk_log_compact_pages = UINT32_MAX;  // one long chain
  Machine m(false);
  Uuid id;
  {
    auto engine = Engine::Create(config).value();
    auto tracker = engine->Attach("d", m.original).value();
    if (!zero) ASSERT_OK(WritePattern(*tracker, 0, kDeviceSize, 1));
    id = engine
             ->CreateSnapshot({.storage_path = "s",
                               .storage_device = m.storage,
                               .durability = SnapshotDurability::kPower})
             .value();
    ASSERT_OK(engine->AddDevice(id, "d"));
    ASSERT_TRUE(engine->Take(id).ok());
    for (uint64_t off = 0; off < kDeviceSize; off += 4096) {
      ASSERT_OK(WritePattern(*tracker, off, 4096, 2));
    }
    m.power.Cut();
  }
  auto engine = Engine::Create(config).value();
  ASSERT_TRUE(engine->Attach("d", m.original_disk).ok());
  auto snap = engine->RecoverSnapshot(
      {.id = id, .storage_device = m.storage_disk, .check_originals = false});
  ASSERT_TRUE(snap.ok()) << snap.status().ToString();
  // Data (unless zero) + 16 segments.
  EXPECT_GE((*snap)->storage_info().used, (zero ? 0 : kDeviceSize) + 16 * kMiB);
  if (!zero) {
    ASSERT_OK(VerifyPattern(*(*snap)->image("d"), 0, kDeviceSize, 1));
    return;
  }
  std::vector<uint8_t> image(kDeviceSize), zeroes(kDeviceSize, 0);
  ASSERT_OK((*snap)->image("d")->Read(0, image));
  EXPECT_TRUE(image == zeroes);
}

TEST(DurableSnapshotTest, ALogOfManySegmentsIsReadWhole) { RecoverAFullLog(false); }

// A record carries the CRC-32C of the chunk's take-time data where the CPU computes it with its
// instruction, else 0 (not computed: nothing checks it, util/crc32c.h Crc32cIsFast).
TEST(DurableSnapshotTest, ARecordCarriesItsDataCrcWhereTheCpuComputesItCheaply) {
  Config config = TestConfig();
  config.chunk_log_compact_pages = UINT32_MAX;  // the records as committed, not compacted
  Machine m(false);
  auto engine = Engine::Create(config).value();
  auto id = TakeSnapshot(*engine, m, SnapshotDurability::kCrash);
  ASSERT_TRUE(id.ok());
  ASSERT_OK(WritePattern(*engine->FindTracker("d"), 0, kWrite, 2));
  std::vector<uint8_t> slots(2 * kDiffStorageHeaderBlockSize);
  ASSERT_OK(m.storage_disk->Read(0, slots));
  const DiffStorageHeader h = ParseDiffStorageHeaderSlots(slots).value();
  auto scan = ChunkLog::Read(*m.storage_disk, *id, h.log_start, h.log_epoch, 0);
  ASSERT_TRUE(scan.ok());
  ASSERT_EQ(scan->records.size(), 1u);
  const LogRecord& r = scan->records.front();
  std::vector<uint8_t> data(r.length);
  ASSERT_OK(m.storage_disk->Read(r.offset, data));
  std::vector<uint8_t> take_time(r.length);
  ASSERT_OK(engine->FindSnapshot(*id)->image("d")->Read(r.chunk * r.length, take_time));
  ASSERT_TRUE(data == take_time);
  EXPECT_EQ(r.crc, Crc32cIsFast() ? Crc32c(data.data(), data.size()) : 0u);
}

// A committed log page damaged (one bit) while a later commit is intact: records are lost, so
// the snapshot comes back corrupted, never served with the original's newer data. (Power: a
// page per commit; crash commits fill one page.)
TEST(DurableSnapshotTest, ADamagedCommittedPageIsReportedNotServed) {
  Config config = TestConfig();
  config.chunk_log_compact_pages = UINT32_MAX;
  for (bool damage : {false, true}) {
    Machine m(false);
    Uuid id;
    {
      auto engine = Engine::Create(config).value();
      id = TakeSnapshot(*engine, m, SnapshotDurability::kPower).value();
      const uint64_t chunk = 1ull << config.chunk_minimum_shift;
      for (uint64_t off = 0; off < 8 * chunk; off += chunk) {  // one chunk, one commit each
        ASSERT_OK(WritePattern(*engine->FindTracker("d"), off, kWrite, 2));
      }
      m.power.Cut();
    }
    std::vector<uint8_t> slots(2 * kDiffStorageHeaderBlockSize);
    ASSERT_OK(m.storage_disk->Read(0, slots));
    const uint64_t second_page = ParseDiffStorageHeaderSlots(slots).value().log_start + 4096;
    std::vector<uint8_t> page(4096);
    ASSERT_OK(m.storage_disk->Read(second_page, page));
    if (damage) page[100] ^= 0x10;
    ASSERT_OK(m.storage_disk->Write(second_page, page));
    auto engine = Engine::Create(config).value();
    ASSERT_TRUE(engine->Attach("d", m.original_disk).ok());
    auto snap = engine->RecoverSnapshot(
        {.id = id, .storage_device = m.storage_disk, .check_originals = false});
    ASSERT_TRUE(snap.ok()) << snap.status().ToString();
    if (!damage) {
      EXPECT_EQ((*snap)->state(), SnapshotState::kTaken);
      ASSERT_OK(VerifyPattern(*(*snap)->image("d"), 0, kDeviceSize, 1));
      continue;
    }
    EXPECT_EQ((*snap)->state(), SnapshotState::kCorrupted);
    EXPECT_EQ((*snap)->devices().front().errnum, EUCLEAN);
    std::vector<uint8_t> buf(4096);
    EXPECT_EQ((*snap)->image("d")->Read(0, buf).errnum(), EIO);
  }
}

// A clean close seals its log: even its last page damaged is reported, not taken for a torn
// tail (the header says how many pages are durable).
TEST(DurableSnapshotTest, ADamagedPageOfASealedLogIsReported) {
  Machine m(false);
  auto engine = Engine::Create(TestConfig()).value();
  auto id = TakeSnapshot(*engine, m, SnapshotDurability::kPower).value();
  ASSERT_OK(WritePattern(*engine->FindTracker("d"), 0, kDeviceSize / 2, 2));
  ASSERT_OK(engine->CloseSnapshot(id));
  std::vector<uint8_t> slots(2 * kDiffStorageHeaderBlockSize);
  ASSERT_OK(m.storage_disk->Read(0, slots));
  const DiffStorageHeader h = ParseDiffStorageHeaderSlots(slots).value();
  EXPECT_GT(h.log_sealed, 0u);
  std::vector<uint8_t> page(4096);
  const uint64_t last = h.log_start + (h.log_sealed - 1) * 4096;  // compacted: one segment
  ASSERT_OK(m.storage_disk->Read(last, page));
  page[200] ^= 1;
  ASSERT_OK(m.storage_disk->Write(last, page));
  auto snap = engine->RecoverSnapshot(
      {.id = id, .storage_device = m.storage_disk, .check_originals = false});
  ASSERT_TRUE(snap.ok()) << snap.status().ToString();
  EXPECT_EQ((*snap)->state(), SnapshotState::kCorrupted);
  EXPECT_EQ((*snap)->devices().front().errnum, EUCLEAN);
}

// Recovered after a clean stop, then a crash: "daemon-crash" (the closed flag is cleared at
// recovery, corrupted or not); a second clean stop without writes does not grow the storage.
TEST(DurableSnapshotTest, CloseRecoverCloseKeepsSizeAndCrashIsACrash) {
  for (bool corrupted : {false, true}) {
    SCOPED_TRACE(corrupted ? "corrupted" : "taken");
    Machine m(false);
    auto engine = Engine::Create(TestConfig()).value();
    auto id = TakeSnapshot(*engine, m, SnapshotDurability::kPower).value();
    ASSERT_OK(WritePattern(*engine->FindTracker("d"), 0, kDeviceSize / 2, 2));
    ASSERT_OK(engine->CloseSnapshot(id));
    // Through the powered device: the crash below must stop this engine's writes too.
    RecoverSnapshotOptions options{
        .id = id, .storage_device = m.storage, .check_originals = corrupted ? true : false};
    auto snap = engine->RecoverSnapshot(options);
    ASSERT_TRUE(snap.ok()) << snap.status().ToString();
    EXPECT_EQ((*snap)->state(), corrupted ? SnapshotState::kCorrupted : SnapshotState::kTaken);
    const uint64_t used = (*snap)->storage_info().used;
    ASSERT_OK(engine->CloseSnapshot(id));
    options.check_originals = false;
    snap = engine->RecoverSnapshot(options);
    ASSERT_TRUE(snap.ok()) << snap.status().ToString();
    EXPECT_EQ((*snap)->recovered_from(), kSnapshotRecoveredCleanStop);
    EXPECT_EQ((*snap)->storage_info().used, used);
    // A crash now (the engine dropped without closing): not a clean stop.
    m.power.Cut();
    engine.reset();
    auto next = Engine::Create(TestConfig()).value();
    ASSERT_TRUE(next->Attach("d", m.original_disk).ok());
    options.storage_device = m.storage_disk;
    snap = next->RecoverSnapshot(options);
    ASSERT_TRUE(snap.ok()) << snap.status().ToString();
    EXPECT_EQ((*snap)->recovered_from(), kSnapshotRecoveredDaemonCrash);
    EXPECT_EQ((*snap)->state(), corrupted ? SnapshotState::kCorrupted : SnapshotState::kTaken);
  }
}

TEST(DurableSnapshotTest, ALogOfAdjacentSegmentsIsReadWhole) { RecoverAFullLog(true); }

}  // namespace
}  // namespace blksnap

namespace blksnap {
namespace {

// A recovery that fails (its device is not attached yet) leaves the storage file blksnap made
// where it is; once it succeeds, destroy removes the file as before.
TEST(DurableSnapshotTest, AFailedRecoveryKeepsTheStorageFile) {
  char tmpl[] = "/tmp/blksnap-durable-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  auto original = MakeMemoryDevice(kDeviceSize);
  std::string file;
  Uuid id;
  {
    auto engine = Engine::Create(TestConfig()).value();
    auto tracker = engine->Attach("d", original).value();
    ASSERT_OK(WritePattern(*tracker, 0, kDeviceSize, 1));
    id = engine->CreateSnapshot({.storage_path = dir, .limit = 64 * kMiB}).value();
    ASSERT_OK(engine->AddDevice(id, "d"));
    ASSERT_TRUE(engine->Take(id).ok());
    ASSERT_OK(WritePattern(*tracker, 0, kDeviceSize / 2, 2));
    file = engine->FindSnapshot(id)->storage_info().file;
    EXPECT_EQ(file, dir + "/blksnap-" + id.ToString() + ".diff");
    ASSERT_OK(engine->CloseSnapshot(id));
  }
  auto engine = Engine::Create(TestConfig()).value();
  auto missing = engine->RecoverSnapshot({.storage_file = file, .id = id});
  EXPECT_EQ(missing.status().errnum(), ENODEV) << missing.status().ToString();
  EXPECT_EQ(access(file.c_str(), F_OK), 0) << "a failed recovery removed " << file;
  ASSERT_TRUE(engine->Attach("d", original).ok());
  auto snap = engine->RecoverSnapshot({.storage_file = file, .id = id, .check_originals = false});
  ASSERT_TRUE(snap.ok()) << snap.status().ToString();
  ASSERT_OK(VerifyPattern(*(*snap)->image("d"), 0, kDeviceSize, 1));
  ASSERT_OK(engine->Destroy(id));
  EXPECT_NE(access(file.c_str(), F_OK), 0) << file << " outlived its snapshot";
  rmdir(dir.c_str());
}

}  // namespace
}  // namespace blksnap

namespace blksnap {
namespace {

// Attached with hold_writes (a daemon restarting), a device's writes wait until its snapshot is
// recovered, so the snapshot preserves them; ReleaseWrites lets them in without one.
TEST(DurableSnapshotTest, HeldWritesWaitForTheRecoveredSnapshot) {
  Machine m(false);
  Uuid id;
  {
    auto engine = Engine::Create(TestConfig()).value();
    id = TakeSnapshot(*engine, m, SnapshotDurability::kPower).value();
    ASSERT_OK(engine->CloseSnapshot(id));
  }
  auto engine = Engine::Create(TestConfig()).value();
  auto tracker = engine->Attach("d", m.original_disk, {.hold_writes = true}).value();
  std::atomic<bool> written{false};
  std::thread writer([&] {
    EXPECT_OK(WritePattern(*tracker, 0, kDeviceSize, 2));  // waits for ReleaseWrites
    written = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_FALSE(written.load()) << "a held write went through before the recovery";
  auto snap = engine->RecoverSnapshot(
      {.id = id, .storage_device = m.storage_disk, .check_originals = false});
  ASSERT_TRUE(snap.ok()) << snap.status().ToString();
  // Still held: a device may have several snapshots to recover, the newest first.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(written.load()) << "the recovery let a held write in";
  ASSERT_OK(engine->ReleaseWrites("d"));
  writer.join();
  ASSERT_OK(VerifyPattern(*(*snap)->image("d"), 0, kDeviceSize, 1));
  ASSERT_OK(VerifyPattern(*tracker, 0, kDeviceSize, 2));
  ASSERT_OK(engine->Destroy(id));
  // Without a snapshot to recover: ReleaseWrites.
  auto other = engine->Attach("e", MakeMemoryDevice(kDeviceSize), {.hold_writes = true}).value();
  std::thread second([&] { EXPECT_OK(WritePattern(*other, 0, 4096, 3)); });
  ASSERT_OK(engine->ReleaseWrites("e"));
  second.join();
  EXPECT_EQ(engine->ReleaseWrites("nope").errnum(), ENOENT);
}

}  // namespace
}  // namespace blksnap
