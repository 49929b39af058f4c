// Durable CBT (cbt_store.h, cbt_map.h through Engine::Attach/Detach): the guarantees of issue 14
// on memory-mapped files. A daemon "kill -9" is the engine destroyed without Detach (the mapping
// goes, the memory file keeps the bytes, like the page cache); a power cut is that plus
// MemoryMappedFiles::DropUnsynced (each page back to its last sync, or kept: random write-back)
// and a new boot id; a clean stop is Detach(keep_cbt).
#include "engine/cbt_store.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <future>
#include <map>
#include <random>
#include <thread>

#include "blksnap/engine.h"
#include "blksnap/io.h"
#include "blksnap/mapped_file.h"
#include "engine/cbt_format.h"
#include "engine/cbt_map.h"
#include "engine/engine_test_util.h"

namespace blksnap {
namespace {

constexpr uint64_t kMiB = 1ull << 20;
constexpr uint64_t kDevSize = 4 * kMiB;
constexpr uint64_t kBlock = 4096;  // tracking block (minimum shift 12)
constexpr uint64_t kBlocks = kDevSize / kBlock;
const char* const kState = "/state/vol.cbt";

class DurableCbtTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_.tracking_block_minimum_shift = 12;
    device_ = MakeMemoryDevice(kDevSize);
    identity_ = {.kind = CbtIdentity::kFile, .dev = 8, .ino = 42, .size = kDevSize, .mtime_ns = 1};
    Start();
  }

  // A daemon start: a new engine, the device attached with its state file.
  void Start(bool expected = true) {
    auto engine = Engine::Create(config_);
    ASSERT_TRUE(engine.ok());
    engine_ = std::move(engine).value();
    auto tracker = engine_->Attach("vol", device_,
                                   {.path = "/dev/vol",
                                    .cbt_path = kState,
                                    .cbt_expected = expected,
                                    .identity = identity_,
                                    .mapped_files = files_});
    ASSERT_TRUE(tracker.ok()) << tracker.status().ToString();
    tracker_ = std::move(tracker).value();
  }
  void CleanStop() {
    ASSERT_OK(engine_->Detach("vol", {.keep_cbt = true, .identity = identity_}));
    tracker_.reset();
    engine_.reset();
  }
  void Kill() {  // no Detach: nothing is sealed or synced
    tracker_.reset();
    engine_.reset();
  }
  void PowerCut(uint64_t seed) {
    Kill();
    files_->DropUnsynced(seed);
    files_->set_boot_id("boot-" + std::to_string(++boots_));
  }

  void Write(uint64_t block, uint64_t seq = 1) {
    ASSERT_OK(WritePattern(*tracker_, block * kBlock, kBlock, seq));
  }
  void Take() {
    SnapshotOptions opts;
    opts.storage_device = MakeMemoryDevice(2 * kMiB + 8 * kMiB);
    auto id = engine_->CreateSnapshot(opts);
    ASSERT_TRUE(id.ok());
    ASSERT_OK(engine_->AddDevice(*id, "vol"));
    ASSERT_TRUE(engine_->Take(*id).ok());
    ASSERT_OK(engine_->Destroy(*id));
  }
  std::vector<uint8_t> ReadMap() {
    std::vector<uint8_t> map(tracker_->cbt_info().block_count);
    EXPECT_OK(tracker_->ReadCbtMap(0, map));
    return map;
  }

  Config config_;
  std::shared_ptr<MemoryMappedFiles> files_ = std::make_shared<MemoryMappedFiles>();
  std::shared_ptr<BlockDevice> device_;
  CbtIdentity identity_;
  std::unique_ptr<Engine> engine_;
  std::shared_ptr<Tracker> tracker_;
  int boots_ = 1;
};

TEST_F(DurableCbtTest, FirstAttachIsNewOrStateLost) {
  EXPECT_EQ(tracker_->cbt_info().generation_reason, kCbtReasonStateLost);  // expected, no file
  EXPECT_TRUE(tracker_->cbt_info().durable);
  EXPECT_NE(tracker_->cbt_info().last_checkpoint.time_since_epoch().count(), 0);
  ASSERT_OK(engine_->Detach("vol"));  // a plain detach forgets the state
  EXPECT_TRUE(files_->Contents(kState).empty());
  Kill();
  Start(/*expected=*/false);
  EXPECT_EQ(tracker_->cbt_info().generation_reason, kCbtReasonNew);
}

// Guarantee 1, even across a reboot with unsynced pages dropped: everything equal.
TEST_F(DurableCbtTest, CleanStopAndStartContinueExactly) {
  Write(1);
  Take();
  Write(2);
  Write(7);
  Take();
  Write(9);  // in the write map only, until the next take
  const CbtInfo before = tracker_->cbt_info();
  const auto map = ReadMap();
  CleanStop();
  files_->DropUnsynced(7);
  files_->set_boot_id("boot-after-reboot");
  Start();
  const CbtInfo after = tracker_->cbt_info();
  EXPECT_EQ(after.generation_id, before.generation_id);
  EXPECT_EQ(after.generation_reason, before.generation_reason);
  EXPECT_EQ(after.changes_number, 2);
  EXPECT_EQ(ReadMap(), map);
  Take();  // the write before the stop shows at the next take
  EXPECT_EQ(ReadMap()[9], 3);
  EXPECT_EQ(ReadMap()[1], 1);
  EXPECT_EQ(ReadMap()[3], 0);
}

// Guarantee 2: kill -9 at any instant, repeated: same generation, every write counted.
TEST_F(DurableCbtTest, KillKeepsGenerationAndEveryMark) {
  const Uuid generation = tracker_->cbt_info().generation_id;
  Take();
  for (uint64_t round = 0; round < 5; ++round) {
    Write(10 + round);
    Kill();
    Start();
    EXPECT_EQ(tracker_->cbt_info().generation_id, generation);
  }
  Take();
  const auto map = ReadMap();
  for (uint64_t round = 0; round < 5; ++round) EXPECT_EQ(map[10 + round], 2) << round;
  EXPECT_EQ(map[9], 0);
}

// Guarantee 3: a power cut while tracking, every unsynced page dropped: the generation goes on
// (the journal's regions marked changed, numbers above everything handed out).
TEST_F(DurableCbtTest, PowerCutWhileTrackingContinuesFromTheJournal) {
  const Uuid generation = tracker_->cbt_info().generation_id;
  Take();
  Write(3);
  PowerCut(0);
  Start();
  const CbtInfo info = tracker_->cbt_info();
  EXPECT_EQ(info.generation_id, generation);
  EXPECT_EQ(info.recovered_from, kCbtRecoveredPowerLoss);
  EXPECT_EQ(info.changes_number, 1);
  Take();
  EXPECT_GT(ReadMap()[3], 1);
}

// A crash, then a reboot before the restart: the page cache may be gone too.
TEST_F(DurableCbtTest, CrashThenRebootContinuesFromTheJournal) {
  const Uuid generation = tracker_->cbt_info().generation_id;
  Write(3);
  Kill();
  files_->set_boot_id("boot-2");
  Start();
  EXPECT_EQ(tracker_->cbt_info().generation_id, generation);
  EXPECT_EQ(tracker_->cbt_info().recovered_from, kCbtRecoveredPowerLoss);
  Take();
  EXPECT_GT(ReadMap()[3], 0);
}

// The engine's periodic checkpoint: a device written since its last one gets its maps synced and
// its journal emptied; after a power cut the write is still there, from the maps alone.
TEST_F(DurableCbtTest, PeriodicCheckpointEmptiesTheJournal) {
  Kill();
  config_.cbt_checkpoint_interval_ms = 20;
  Start();
  const auto attached = tracker_->cbt_info().last_checkpoint;
  Write(3);
  EXPECT_GE(tracker_->cbt_info().journal_syncs, 1u) << "the write's region was not journaled";
  const CbtGeometry geometry{kDevSize, 12};
  const uint64_t journal = CbtJournalOffset(geometry.block_count(), geometry.journal_regions(), 0);
  auto journal_empty = [&](const std::vector<uint8_t>& bytes) {
    return std::all_of(bytes.begin() + journal, bytes.end(), [](uint8_t b) { return b == 0; });
  };
  for (int i = 0; i < 200 && tracker_->cbt_info().last_checkpoint == attached; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_GT(tracker_->cbt_info().last_checkpoint, attached) << "no periodic checkpoint";
  const auto checkpoint = tracker_->cbt_info().last_checkpoint;
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(tracker_->cbt_info().last_checkpoint, checkpoint) << "an idle device is checkpointed";
  EXPECT_TRUE(journal_empty(files_->Contents(kState)));
  PowerCut(0);
  Start();
  Take();
  EXPECT_EQ(ReadMap()[3], 1);
  EXPECT_EQ(ReadMap()[4], 0);  // from the synced map, not a journal region
}

// A take whose new numbers cannot be made durable fails (and is undone): after a power loss the
// recovery could hand the same number out again. The failure sticks in the state file.
TEST_F(DurableCbtTest, TakeFailsWhenItsNumbersCannotBeMadeDurable) {
  Take();
  const Uuid generation = tracker_->cbt_info().generation_id;
  SnapshotOptions opts;
  opts.storage_device = MakeMemoryDevice(10 * kMiB);
  auto id = engine_->CreateSnapshot(opts);
  ASSERT_TRUE(id.ok());
  ASSERT_OK(engine_->AddDevice(*id, "vol"));
  files_->FailNextSyncs(1);  // the header's sync after the take
  int frozen = 0;            // a failing take still thaws the file system it froze
  auto taken = engine_->Take(*id, {.freeze =
                                       [&] {
                                         ++frozen;
                                         return Status::Ok();
                                       },
                                   .thaw = [&] { --frozen; }});
  ASSERT_FALSE(taken.ok());
  EXPECT_EQ(frozen, 0) << "the take failed with the file system frozen";
  EXPECT_NE(taken.status().message().find("cannot be made durable"), std::string::npos)
      << taken.status().ToString();
  EXPECT_EQ(engine_->FindSnapshot(*id)->state(), SnapshotState::kCreated);
  Write(4);  // the original is written as ever
  ASSERT_OK(engine_->Destroy(*id));
  PowerCut(0);
  Start();
  EXPECT_NE(tracker_->cbt_info().generation_id, generation);
  EXPECT_EQ(tracker_->cbt_info().generation_reason, kCbtReasonUncleanPower);
}

// How the state was found, as `cbt info` tells a backup tool.
TEST_F(DurableCbtTest, RecoveredFromSaysHow) {
  EXPECT_EQ(tracker_->cbt_info().recovered_from, "");  // a new generation
  Kill();
  Start();
  EXPECT_EQ(tracker_->cbt_info().recovered_from, kCbtRecoveredDaemonCrash);
  CleanStop();
  Start();
  EXPECT_EQ(tracker_->cbt_info().recovered_from, kCbtRecoveredCleanStop);
}

TEST_F(DurableCbtTest, CorruptOrTruncatedStateStartsNewGeneration) {
  const Uuid first_generation = tracker_->cbt_info().generation_id;
  CleanStop();
  const std::vector<uint8_t> good = files_->Contents(kState);
  ASSERT_EQ(good.size(), CbtFileSize(CbtGeometry{kDevSize, 12}));
  struct Damage {
    const char* what;
    std::vector<uint8_t> bytes;
  };
  std::vector<Damage> damages;
  auto flipped = good;  // in both header slots (one damaged slot: cbt_format_test.cc)
  flipped[cbt_field::kActive] ^= 0x10;  // checksum mismatch
  flipped[kCbtHeaderSize + cbt_field::kActive] ^= 0x10;
  damages.push_back({"flipped bit", flipped});
  auto magic = good;
  magic[0] = 'X';
  magic[kCbtHeaderSize] = 'X';
  damages.push_back({"bad magic", magic});
  damages.push_back({"truncated header", {good.begin(), good.begin() + 100}});
  damages.push_back({"truncated maps", {good.begin(), good.end() - 4096}});
  damages.push_back({"empty", {}});
  Uuid previous = first_generation;
  for (const auto& d : damages) {
    SCOPED_TRACE(d.what);
    files_->SetContents(kState, d.bytes);
    Start();
    EXPECT_NE(tracker_->cbt_info().generation_id, previous);
    previous = tracker_->cbt_info().generation_id;
    EXPECT_EQ(tracker_->cbt_info().generation_reason, kCbtReasonStateCorrupt);
    EXPECT_EQ(tracker_->cbt_info().changes_number, 0);
    EXPECT_EQ(files_->Contents(kState).size(), good.size());  // remade
    CleanStop();
  }
}

TEST_F(DurableCbtTest, CapacityChangeStartsNewGeneration) {
  CleanStop();
  device_ = MakeMemoryDevice(2 * kDevSize);
  Start();
  EXPECT_EQ(tracker_->cbt_info().generation_reason, kCbtReasonCapacityChanged);
  EXPECT_EQ(tracker_->cbt_info().device_capacity, 2 * kDevSize);
}

// The block size is chosen when a generation starts: another configured size (a daemon upgrade
// with a new default) continues the generation in its own blocks; the next generation takes it.
TEST_F(DurableCbtTest, ConfiguredBlockSizeAppliesFromTheNextGeneration) {
  const Uuid generation = tracker_->cbt_info().generation_id;
  const uint32_t block_size = tracker_->cbt_info().block_size;
  ASSERT_EQ(block_size, 4096u);
  CleanStop();
  config_.tracking_block_minimum_shift = 13;
  Start();
  EXPECT_EQ(tracker_->cbt_info().generation_id, generation);
  EXPECT_EQ(tracker_->cbt_info().block_size, block_size);
  CleanStop();
  device_ = MakeMemoryDevice(2 * kDevSize);  // a new generation: the configured blocks
  Start();
  EXPECT_NE(tracker_->cbt_info().generation_id, generation);
  EXPECT_EQ(tracker_->cbt_info().generation_reason, kCbtReasonCapacityChanged);
  EXPECT_EQ(tracker_->cbt_info().block_size, 8192u);
}

// Guarantee 4, detectable part: after a clean stop, another file or a changed file.
TEST_F(DurableCbtTest, IdentityOrOutsideWriteStartsNewGeneration) {
  CleanStop();
  identity_.ino = 43;  // replaced by another file
  Start();
  EXPECT_EQ(tracker_->cbt_info().generation_reason, kCbtReasonIdentityChanged);
  CleanStop();
  identity_.mtime_ns += 1;  // written while nobody tracked it
  Start();
  EXPECT_EQ(tracker_->cbt_info().generation_reason, kCbtReasonOutsideWrite);
  const Uuid generation = tracker_->cbt_info().generation_id;
  CleanStop();
  Start();  // unchanged: continues
  EXPECT_EQ(tracker_->cbt_info().generation_id, generation);
}

// After a crash the file changed by the daemon's own writes (mtime, size): not an outside
// write; another inode still is.
TEST_F(DurableCbtTest, AfterCrashOnlyAnotherObjectCounts) {
  const Uuid generation = tracker_->cbt_info().generation_id;
  Kill();
  identity_.mtime_ns += 5;
  Start();
  EXPECT_EQ(tracker_->cbt_info().generation_id, generation);
  Kill();
  identity_.dev = 9;
  Start();
  EXPECT_EQ(tracker_->cbt_info().generation_reason, kCbtReasonIdentityChanged);
}

// The property: random writes and takes, a cut at a random point (kill, power cut with random
// write-back, or clean stop followed by a power cut), recovery. Then either the generation
// continues and, after a take, every block's read-map value is at least the snap number
// during which it was last written (so every backup since any snap N copies it), or the
// generation changed with a reason other than "new".
TEST_F(DurableCbtTest, PropertyEveryWriteBeforeTheCutIsReported) {
  std::mt19937_64 random(1234);
  for (int round = 0; round < 60; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    std::map<uint64_t, uint8_t> last_epoch;  // block -> snap number active at its last write
    const Uuid generation = tracker_->cbt_info().generation_id;
    const uint8_t base = tracker_->cbt_info().changes_number;
    // Blocks written before this round are already covered by the read map (checked last round).
    const int ops = 1 + static_cast<int>(random() % 40);
    for (int i = 0; i < ops; ++i) {
      if (random() % 8 == 0) {
        Take();
      } else {
        const uint64_t block = random() % kBlocks;
        Write(block, random());
        last_epoch[block] = static_cast<uint8_t>(tracker_->cbt_info().changes_number + 1);
      }
    }
    const int cut = static_cast<int>(random() % 3);
    if (cut == 0) Kill();
    if (cut == 1) PowerCut(random() | 1);
    if (cut == 2) {
      CleanStop();
      files_->DropUnsynced(random() | 1);
      files_->set_boot_id("boot-" + std::to_string(++boots_));
    }
    Start();
    const CbtInfo info = tracker_->cbt_info();
    ASSERT_EQ(info.generation_id, generation) << "cut " << cut << ": " << info.generation_reason;
    EXPECT_GE(info.changes_number, base);
    Take();
    const auto map = ReadMap();
    for (auto [block, epoch] : last_epoch) EXPECT_GE(map[block], epoch) << "block " << block;
    if (tracker_->cbt_info().changes_number > 200) {  // stay clear of the wrap
      ASSERT_OK(engine_->Detach("vol"));
      Kill();
      Start(false);
    }
  }
}

// A new generation forced at a take says why too.
TEST(CbtMapReasonTest, TakeTimeReasons) {
  Config config;
  config.tracking_block_minimum_shift = 12;
  CbtMap map(kDevSize, config);
  EXPECT_EQ(map.info().generation_reason, kCbtReasonNew);
  EXPECT_FALSE(map.info().durable);
  map.SetCorrupted();
  map.SwitchForTake(kDevSize);
  EXPECT_EQ(map.info().generation_reason, kCbtReasonCorrupted);
  for (int i = 1; i < 254; ++i) map.SwitchForTake(kDevSize);
  EXPECT_EQ(map.info().changes_number, 254);
  EXPECT_EQ(map.info().generation_reason, kCbtReasonCorrupted);
  map.SwitchForTake(kDevSize);  // active 255 -> wrap
  EXPECT_EQ(map.info().generation_reason, kCbtReasonSnapNumberWrap);
  EXPECT_EQ(map.info().changes_number, 1);
  map.SwitchForTake(kDevSize / 2);
  EXPECT_EQ(map.info().generation_reason, kCbtReasonCapacityChanged);
}

// A generation started at a take remakes the state file; a kill -9 after it continues it.
TEST(CbtMapReasonTest, NewGenerationAtTakeIsDurableToo) {
  Config config;
  config.tracking_block_minimum_shift = 9;  // 8192 blocks: the maps' size changes with capacity
  constexpr uint64_t kSmall = kDevSize / 2, kSmallBlocks = kSmall / 512;
  auto files = std::make_shared<MemoryMappedFiles>();
  const CbtStoreOptions options{.path = kState, .files = files};
  auto map = CbtMap::Open(kDevSize, config, options);
  ASSERT_TRUE(map.ok());
  EXPECT_EQ(files->Contents(kState).size(), CbtFileSize(CbtGeometry{kDevSize, 9}));
  (*map)->SwitchForTake(kSmall);  // the device shrank
  (*map)->MarkWrite(5 * 512, 1);
  const CbtInfo info = (*map)->info();
  EXPECT_EQ(info.generation_reason, kCbtReasonCapacityChanged);
  EXPECT_EQ(files->Contents(kState).size(), CbtFileSize(CbtGeometry{kSmall, 9}));
  map->reset();  // kill -9
  auto again = CbtMap::Open(kSmall, config, options);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)->info().generation_id, info.generation_id);
  EXPECT_EQ((*again)->info().changes_number, 1);
  (*again)->SwitchForTake(kSmall);
  std::vector<uint8_t> read(kSmallBlocks);
  ASSERT_OK((*again)->ReadMap(0, read));
  EXPECT_EQ(read[5], 2);
}

// MappedFiles whose Open waits until released, to hold an Attach inside its state-file I/O.
class BlockingFiles : public MappedFiles {
 public:
  explicit BlockingFiles(std::shared_ptr<MappedFiles> next) : next_(std::move(next)) {}
  Result<std::unique_ptr<MappedFile>> Open(const std::string& path) override {
    if (opens_.fetch_add(1) == 0) {  // only the first one waits
      entered_.set_value();
      release_.get_future().wait();
    }
    return next_->Open(path);
  }
  Result<std::unique_ptr<MappedFile>> Create(const std::string& path, uint64_t size) override {
    return next_->Create(path, size);
  }
  Status Remove(const std::string& path) override { return next_->Remove(path); }
  std::string BootId() override { return next_->BootId(); }
  std::promise<void> entered_, release_;

 private:
  std::atomic<int> opens_{0};
  std::shared_ptr<MappedFiles> next_;
};

// While one Attach opens a name's state file, no engine lock is held (FindTracker answers) and a
// second Attach of that name is refused: two runs never map one state file.
TEST(DurableCbtAttachTest, NameIsReservedDuringStateFileIo) {
  auto files = std::make_shared<BlockingFiles>(std::make_shared<MemoryMappedFiles>());
  auto engine = Engine::Create(Config{}).value();
  auto device = MakeMemoryDevice(kDevSize);
  const AttachOptions options{.cbt_path = kState, .mapped_files = files};
  auto first =
      std::async(std::launch::async, [&] { return engine->Attach("vol", device, options); });
  files->entered_.get_future().wait();
  const bool found = engine->FindTracker("vol") != nullptr;
  const int second = engine->Attach("vol", device, options).status().errnum();
  files->release_.set_value();
  EXPECT_FALSE(found);
  EXPECT_EQ(second, EBUSY);
  auto tracker = first.get();
  ASSERT_TRUE(tracker.ok()) << tracker.status().ToString();
  EXPECT_EQ(engine->Attach("vol", device).status().errnum(), EEXIST);
}

// The recovery rules on their own, including the sealed/unsealed identity split.
TEST(CbtRecoveryTest, Rules) {
  CbtHeader h;
  h.capacity = kDevSize;
  h.block_shift = 12;
  h.block_count = kBlocks;
  h.boot_id = "b1";
  h.identity = {.kind = CbtIdentity::kFile, .dev = 1, .ino = 2, .size = 3};
  const CbtGeometry g{kDevSize, 12};
  auto reason = [&](const CbtHeader& header, const CbtIdentity& id, const std::string& boot) {
    return CbtRecoveryReason(header, g, id, boot);
  };
  EXPECT_EQ(reason(h, h.identity, "b1"), "");  // crash, same boot
  EXPECT_EQ(reason(h, h.identity, "b2"), "");  // reboot, not sealed: the journal
  EXPECT_EQ(reason(h, h.identity, ""), "");    // boot id unknown: the journal too
  h.flags = kCbtFlagJournalFailed;
  EXPECT_EQ(reason(h, h.identity, "b1"), "");  // the page cache has every mark
  EXPECT_EQ(reason(h, h.identity, "b2"), kCbtReasonUncleanPower);
  EXPECT_EQ(reason(h, h.identity, ""), kCbtReasonUncleanPower);
  h.flags = 0;
  CbtIdentity grown = h.identity;
  grown.size = 4;
  EXPECT_EQ(reason(h, grown, "b1"), "");  // unsealed: our own writes
  h.flags = kCbtFlagSealed;
  EXPECT_EQ(reason(h, h.identity, "b2"), "");
  EXPECT_EQ(reason(h, grown, "b2"), kCbtReasonOutsideWrite);
  EXPECT_EQ(reason(h, CbtIdentity{}, "b2"), "");  // unknown identity: not compared
  EXPECT_EQ(CbtRecoveryReason(Status::Error(EINVAL, "x"), g, h.identity, "b1"),
            kCbtReasonStateCorrupt);
}

// The POSIX seam: a real file, mapped shared; a second open sees the stores of the first.
TEST(PosixMappedFilesTest, SharedAndDurable) {
  auto files = PosixMappedFiles();
  const std::string path = ::testing::TempDir() + "/cbt_mapped_file_test";
  auto a = files->Create(path, 8192);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  (*a)->data()[4097] = 7;
  auto b = files->Open(path);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ((*b)->size(), 8192u);
  EXPECT_EQ((*b)->data()[4097], 7);
  EXPECT_OK((*a)->Sync());
  EXPECT_FALSE(files->BootId().empty());
  EXPECT_OK(files->Remove(path));
  EXPECT_EQ(files->Open(path).status().errnum(), ENOENT);
}

// Guarantee 2 with a real process and a real mapping: a child attaches, writes, and dies by
// SIGKILL; the parent attaches the same state file and finds the generation and the mark.
TEST(PosixMappedFilesTest, RealKillKeepsMarks) {
  Config config;
  config.tracking_block_minimum_shift = 12;
  config.cbt_checkpoint_interval_ms = 0;  // no checkpoint thread: the test forks
  const std::string path = ::testing::TempDir() + "/cbt_real_kill_test.cbt";
  auto device = MakeMemoryDevice(kDevSize);
  const AttachOptions options{.cbt_path = path};
  auto engine = Engine::Create(config).value();
  auto tracker = engine->Attach("vol", device, options);
  ASSERT_TRUE(tracker.ok()) << tracker.status().ToString();
  const Uuid generation = (*tracker)->cbt_info().generation_id;
  ASSERT_OK(engine->Detach("vol", {.keep_cbt = true}));
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto e = Engine::Create(config).value();
    auto t = e->Attach("vol", device, options);
    if (!t.ok() || (*t)->cbt_info().generation_id != generation) ::_exit(1);
    std::vector<uint8_t> buf(kBlock, 0x5a);
    if (!(*t)->Write(77 * kBlock, buf, 0).ok()) ::_exit(2);
    ::raise(SIGKILL);
    ::_exit(3);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << status;
  tracker = engine->Attach("vol", device, options);
  ASSERT_TRUE(tracker.ok()) << tracker.status().ToString();
  EXPECT_EQ((*tracker)->cbt_info().generation_id, generation);
  SnapshotOptions snapshot;
  snapshot.storage_device = MakeMemoryDevice(2 * kMiB + 8 * kMiB);
  auto id = engine->CreateSnapshot(snapshot);
  ASSERT_TRUE(id.ok());
  ASSERT_OK(engine->AddDevice(*id, "vol"));
  ASSERT_TRUE(engine->Take(*id).ok());
  std::vector<uint8_t> map(kBlocks);
  ASSERT_OK((*tracker)->ReadCbtMap(0, map));
  EXPECT_EQ(map[77], 1);
  EXPECT_EQ(map[76], 0);
  ASSERT_OK(engine->Destroy(*id));
  ASSERT_OK(engine->Detach("vol"));
  EXPECT_EQ(::access(path.c_str(), F_OK), -1);  // a plain detach removes the file
}

}  // namespace
}  // namespace blksnap
