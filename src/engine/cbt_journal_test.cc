// The write-intent journal (cbt_journal.h) under power cuts, on MemoryMappedFiles.
//
// A power cut is MemoryMappedFiles::CutPowerAtSync(k): the k-th sync from now never happens,
// nor does anything after it; each page holds either what was synced or what the page cache
// held at that instant (write-back may have taken it). The property, for every completed take j
// the tool was told about (its changes number K_j; the first and the last three are checked):
// after the recovery and one more take,
// `changes since K_j` reports every write issued after take j before the cut (never an
// under-report), and reports nothing but blocks written after take j or blocks in a journal
// region written since the last completed checkpoint (a bounded over-report).
#include "engine/cbt_journal.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <random>
#include <set>
#include <thread>

#include "blksnap/mapped_file.h"
#include "engine/cbt_map.h"
#include "engine/engine_test_util.h"

namespace blksnap {
namespace {

constexpr uint64_t kGiB = 1ull << 30;
constexpr uint64_t kCapacity = 2 * kGiB;
constexpr uint32_t kBlockShift = 16;                               // 64 KiB tracking blocks
constexpr uint64_t kBlocksPerRegion = 1ull << (26 - kBlockShift);  // 64 MiB journal regions
constexpr uint64_t kRegionsUsed = 12;  // the workload writes only these: the rest never change
const char* const kState = "/state/vol.cbt";

Config TestConfig() {
  Config config;
  config.tracking_block_minimum_shift = kBlockShift;
  return config;
}

std::unique_ptr<CbtMap> OpenMap(const std::shared_ptr<MemoryMappedFiles>& files) {
  auto map =
      CbtMap::Open(kCapacity, TestConfig(), {.path = kState, .expected = true, .files = files});
  EXPECT_TRUE(map.ok()) << map.status().ToString();
  return map.ok() ? std::move(map).value() : nullptr;
}

// Blocks reported changed since `since`, one flag per block.
std::vector<bool> ChangedBlocks(const CbtMap& map, uint8_t since) {
  std::vector<bool> blocks(kCapacity >> kBlockShift);
  auto extents = map.ChangedExtents(since, std::nullopt);
  EXPECT_TRUE(extents.ok());
  for (const auto& e : *extents) {
    for (uint64_t b = e.offset >> kBlockShift; b < (e.offset + e.length) >> kBlockShift; ++b)
      blocks[b] = true;
  }
  return blocks;
}

struct Script {
  enum Kind { kWrite, kTake, kCheckpoint };
  struct Op {
    Kind kind;
    uint64_t block;
  };
  std::vector<Op> ops;
  explicit Script(uint64_t seed, int count) {
    std::mt19937_64 random(seed);
    for (int i = 0; i < count; ++i) {
      const uint64_t roll = random() % 20;
      const uint64_t block =
          (random() % kRegionsUsed) * kBlocksPerRegion + random() % kBlocksPerRegion;
      ops.push_back({roll < 15 ? kWrite : roll < 17 ? kTake : kCheckpoint, block});
    }
  }
};

// What the tool and the test know of a run cut at some sync.
struct RunLog {
  std::vector<uint8_t> numbers{0};  // changes numbers of completed takes (0: generation)
  std::vector<std::vector<uint64_t>> issued{{}};     // per number: writes issued after its take
  std::vector<std::vector<uint64_t>> attempted{{}};  // ... and writes begun (for the bound)
  std::set<uint64_t> regions_since_checkpoint;       // regions begun since the last checkpoint
};

RunLog RunScript(CbtMap& map, MemoryMappedFiles& files, const Script& script) {
  RunLog log;
  for (const auto& op : script.ops) {
    if (files.power_cut()) break;  // the machine is gone
    if (op.kind == Script::kWrite) {
      for (auto& a : log.attempted) a.push_back(op.block);
      log.regions_since_checkpoint.insert(op.block / kBlocksPerRegion);
      map.MarkWrite(op.block << kBlockShift, 1ull << kBlockShift);
      if (files.power_cut()) break;  // it was never issued
      for (auto& i : log.issued) i.push_back(op.block);
    } else if (op.kind == Script::kTake) {
      map.SwitchForTake(kCapacity);
      if (!map.CommitTake().ok() || files.power_cut()) break;
      log.numbers.push_back(map.info().changes_number);
      log.issued.emplace_back();
      log.attempted.emplace_back();
    } else {
      if (map.Checkpoint().ok() && !files.power_cut()) log.regions_since_checkpoint.clear();
    }
  }
  return log;
}

void CheckRecovery(const std::shared_ptr<MemoryMappedFiles>& files, const Uuid& generation,
                   const RunLog& log) {
  auto map = OpenMap(files);
  ASSERT_TRUE(map);
  const CbtInfo info = map->info();
  ASSERT_EQ(info.generation_id, generation) << info.generation_reason;
  EXPECT_EQ(info.recovered_from, kCbtRecoveredPowerLoss);
  map->SwitchForTake(kCapacity);
  // Since the generation began, and since each of the last three takes (the numbers a tool
  // would hold).
  for (size_t j = 0; j < log.numbers.size(); ++j) {
    if (j != 0 && j + 3 < log.numbers.size()) continue;
    const std::vector<bool> changed = ChangedBlocks(*map, log.numbers[j]);
    for (uint64_t b : log.issued[j])
      ASSERT_TRUE(changed[b]) << "block " << b << " written after take " << j << " lost";
    std::vector<bool> allowed(changed.size());
    for (uint64_t b : log.attempted[j]) allowed[b] = true;
    for (uint64_t b = 0; b < changed.size(); ++b) {
      ASSERT_TRUE(!changed[b] || allowed[b] ||
                  log.regions_since_checkpoint.count(b / kBlocksPerRegion))
          << "block " << b << " reported since take " << j << " but never written since";
    }
  }
}

// Every sync of the workload (journal commits, checkpoints, take headers) in turn is where the
// power goes.
TEST(CbtJournalTest, PowerCutAtEverySyncPoint) {
  const Script script(42, 160);
  uint64_t total_syncs = 0;
  {
    auto files = std::make_shared<MemoryMappedFiles>();
    auto map = OpenMap(files);
    ASSERT_TRUE(map);
    const uint64_t before = files->syncs();
    RunScript(*map, *files, script);
    total_syncs = files->syncs() - before;
  }
  ASSERT_GT(total_syncs, 100u);
  std::printf("power cuts at %llu sync points\n", static_cast<unsigned long long>(total_syncs));
  for (uint64_t k = 1; k <= total_syncs + 1; ++k) {
    SCOPED_TRACE("power cut at sync " + std::to_string(k) + " of " + std::to_string(total_syncs));
    auto files = std::make_shared<MemoryMappedFiles>();
    auto map = OpenMap(files);
    ASSERT_TRUE(map);
    const Uuid generation = map->info().generation_id;
    files->CutPowerAtSync(k);
    const RunLog log = RunScript(*map, *files, script);
    map.reset();
    files->DropUnsynced(k);  // each page: synced or as the page cache had it, at random
    files->set_boot_id("after-the-cut");
    CheckRecovery(files, generation, log);
    if (HasFatalFailure()) return;
  }
}

// Writers, checkpoints and the cut on different threads: the epoch switch must wait for every
// writer that noted its region in the old epoch before that epoch's journal is cleared.
TEST(CbtJournalTest, PowerCutWhileWritersAndCheckpointsRace) {
  for (int round = 0; round < 12; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    auto files = std::make_shared<MemoryMappedFiles>();
    auto map = OpenMap(files);
    ASSERT_TRUE(map);
    map->SwitchForTake(kCapacity);
    ASSERT_OK(map->CommitTake());
    const Uuid generation = map->info().generation_id;
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> writes{0};
    std::vector<std::vector<uint64_t>> issued(2);
    std::vector<std::thread> threads;
    for (int w = 0; w < 2; ++w) {
      threads.emplace_back([&, w] {
        std::mt19937_64 random(round * 10 + w);
        while (!stop.load() && !files->power_cut()) {
          const uint64_t block =
              (random() % kRegionsUsed) * kBlocksPerRegion + random() % kBlocksPerRegion;
          map->MarkWrite(block << kBlockShift, 1ull << kBlockShift);
          if (!files->power_cut()) {
            issued[w].push_back(block);
            writes.fetch_add(1);
          }
        }
      });
    }
    threads.emplace_back([&] {
      while (!stop.load() && !files->power_cut()) {
        map->Checkpoint().IgnoreError();
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
    });
    // The cut is armed only once the writers wrote (a slow start, as under ASan on a loaded
    // machine, would otherwise let the first sync cut before any write and test nothing).
    for (int i = 0; i < 5000 && writes.load() < 2; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5 + round * 3));
    files->CutPowerAtSync(1 + round % 3);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    stop.store(true);
    for (auto& t : threads) t.join();
    map.reset();
    files->DropUnsynced(round + 1);
    files->set_boot_id("after-the-cut");
    auto again = OpenMap(files);
    ASSERT_TRUE(again);
    ASSERT_EQ(again->info().generation_id, generation) << again->info().generation_reason;
    again->SwitchForTake(kCapacity);
    const std::vector<bool> changed = ChangedBlocks(*again, 1);
    size_t count = 0;
    for (const auto& writes : issued) {
      for (uint64_t b : writes) {
        ASSERT_TRUE(changed[b]) << "block " << b << " lost";
        ++count;
      }
    }
    EXPECT_GT(count, 0u);
  }
}

// A checkpoint's Switch waits for a writer that entered the old epoch and has not stored its
// fine marks yet: clearing that epoch's journal before would lose the write at a power cut.
TEST(CbtJournalTest, SwitchWaitsForWritersOfTheOldEpoch) {
  std::array<std::vector<uint8_t>, 2> areas{std::vector<uint8_t>(4), std::vector<uint8_t>(4)};
  CbtJournal journal(26, 4ull << 26, {areas[0].data(), areas[1].data()},
                     [](int) { return Status::Ok(); });
  uint32_t epoch = 0;
  ASSERT_OK(journal.Enter(0, 4096, &epoch));
  std::atomic<bool> switched{false};
  std::thread checkpoint([&] {
    EXPECT_EQ(journal.Switch(), static_cast<int>(epoch & 1));
    switched.store(true);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_FALSE(switched.load()) << "Switch returned while a writer of the old epoch was inside";
  journal.Leave(epoch);
  checkpoint.join();
  EXPECT_TRUE(switched.load());
  uint32_t next = 0;  // a writer after the switch notes in the other area
  ASSERT_OK(journal.Enter(0, 4096, &next));
  EXPECT_NE(next & 1, epoch & 1);
  EXPECT_EQ(areas[next & 1][0], 1);
  journal.Leave(next);
}

// A sync of the state file that fails (an I/O error, the power stays on) is recorded in the
// header for the rest of the run: after a power loss the generation cannot continue
// ("restart-unclean-power"), even if later syncs succeed (Linux reports a failed write-back
// once and marks the page clean).
TEST(CbtJournalTest, FailedSyncIsRecordedForTheRun) {
  for (int failing : {0, 1}) {  // the journal's sync, or the checkpoint's
    SCOPED_TRACE(failing == 0 ? "journal sync fails" : "checkpoint sync fails");
    auto files = std::make_shared<MemoryMappedFiles>();
    auto map = OpenMap(files);
    ASSERT_TRUE(map);
    const Uuid generation = map->info().generation_id;
    if (failing == 0) files->FailNextSyncs(1);
    map->MarkWrite(5 << kBlockShift, 4096);
    if (failing == 1) {
      files->FailNextSyncs(1);
      EXPECT_FALSE(map->Checkpoint().ok());
    }
    EXPECT_TRUE(map->info().state_sync_failed);
    ASSERT_OK(map->Checkpoint());  // a later sync succeeds: proves nothing
    EXPECT_TRUE(map->info().state_sync_failed);
    map.reset();
    files->DropUnsynced(0);
    files->set_boot_id("after-the-cut");
    auto again = OpenMap(files);
    ASSERT_TRUE(again);
    EXPECT_NE(again->info().generation_id, generation);
    EXPECT_EQ(again->info().generation_reason, kCbtReasonUncleanPower);
  }
}

// The journal costs a sync only for a region's first write since the last checkpoint, and an
// idle device is not checkpointed at all.
TEST(CbtJournalTest, SyncsOnlyForNewRegions) {
  auto files = std::make_shared<MemoryMappedFiles>();
  auto map = OpenMap(files);
  ASSERT_TRUE(map);
  const uint64_t start = files->syncs();
  for (uint64_t b = 0; b < kBlocksPerRegion; ++b) map->MarkWrite(b << kBlockShift, 4096);
  EXPECT_EQ(files->syncs() - start, 1u);  // one region
  EXPECT_EQ(map->info().journal_syncs, 1u);
  map->MarkWrite(kBlocksPerRegion << kBlockShift, 2 << kBlockShift);  // the next region
  EXPECT_EQ(files->syncs() - start, 2u);
  ASSERT_OK(map->CheckpointIfWritten());
  const uint64_t after_checkpoint = files->syncs();
  EXPECT_GT(after_checkpoint, start + 2);
  ASSERT_OK(map->CheckpointIfWritten());  // nothing written since
  EXPECT_EQ(files->syncs(), after_checkpoint);
  map->MarkWrite(0, 4096);  // a new epoch: the region is journaled again
  EXPECT_EQ(files->syncs(), after_checkpoint + 1);
}

}  // namespace
}  // namespace blksnap
