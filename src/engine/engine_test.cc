// Engine tests on memory devices: copy-on-write correctness, images, CBT through the engine,
// failures (storage full, I/O errors) that must corrupt the snapshot and never the original,
// destroy under load and atomic multi-device takes. Data is checked with the sector pattern.
#include "blksnap/engine.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <random>
#include <thread>

#include "blksnap/io.h"
#include "engine/engine_test_util.h"

namespace blksnap {
namespace {

constexpr uint64_t kKiB = 1024, kMiB = 1024 * 1024;
constexpr uint64_t kChunk = 64 * kKiB;

Config TestConfig() {
  Config c;
  c.chunk_minimum_shift = 16;           // 64 KiB chunks
  c.tracking_block_minimum_shift = 12;  // 4 KiB CBT blocks
  c.diff_storage_minimum = 4 * kMiB;
  c.chunk_maximum_in_queue = 8;
  c.chunk_maximum_in_cache = 4;
  return c;
}

class EngineTest : public ::testing::Test {
 protected:
  // 16 MiB + 12 KiB: the last chunk is short.
  static constexpr uint64_t kDevSize = 16 * kMiB + 12 * kKiB;

  void SetUp() override {
    engine_ = Engine::Create(TestConfig()).value();
    original_ = MakeMemoryDevice(kDevSize);
    tracker_ = engine_->Attach("vol", original_).value();
    ASSERT_OK(WritePattern(*tracker_, 0, kDevSize, 1));
  }

  Uuid NewSnapshot(std::shared_ptr<BlockDevice> storage = nullptr,
                   SnapshotDurability durability = SnapshotDurability::kPower) {
    SnapshotOptions opts;
    opts.durability = durability;
    opts.storage_path = "memory";
    opts.storage_device = storage ? storage : MakeMemoryDevice(2 * kMiB + 64 * kMiB);
    auto id = engine_->CreateSnapshot(opts);
    EXPECT_TRUE(id.ok()) << id.status().ToString();
    return *id;
  }

  Uuid TakeSnapshot(std::shared_ptr<BlockDevice> storage = nullptr,
                    SnapshotDurability durability = SnapshotDurability::kPower) {
    Uuid id = NewSnapshot(storage, durability);
    EXPECT_OK(engine_->AddDevice(id, "vol"));
    auto stats = engine_->Take(id);
    EXPECT_TRUE(stats.ok()) << stats.status().ToString();
    return id;
  }

  std::shared_ptr<BlockDevice> Image(const Uuid& id, const std::string& dev = "vol") {
    return engine_->FindSnapshot(id)->image(dev);
  }

  std::unique_ptr<Engine> engine_;
  std::shared_ptr<BlockDevice> original_;
  std::shared_ptr<Tracker> tracker_;
};

TEST_F(EngineTest, ImageKeepsTakeTimeDataWhileOriginalChanges) {
  Uuid id = TakeSnapshot();
  auto image = Image(id);
  ASSERT_NE(image, nullptr);
  EXPECT_EQ(image->size(), kDevSize);
  ASSERT_OK(WritePattern(*tracker_, 3 * kChunk + 4096, 8192, 2));
  EXPECT_OK(VerifyPattern(*original_, 3 * kChunk + 4096, 8192, 2));
  EXPECT_OK(VerifyPattern(*image, 0, kDevSize, 1));
  EXPECT_EQ(engine_->FindSnapshot(id)->state(), SnapshotState::kTaken);
}

TEST_F(EngineTest, ChunkBoundaryWritesOnOriginal) {
  Uuid id = TakeSnapshot();
  auto image = Image(id);
  const uint64_t last_chunk = (kDevSize / kChunk) * kChunk;
  struct Io {
    uint64_t offset, length;
  } ios[] = {
      {5 * kChunk, 512},                   // first sector of a chunk
      {6 * kChunk - 512, 512},             // last sector of a chunk
      {8 * kChunk - 4096, 8192},           // straddles two chunks
      {10 * kChunk - 512, kChunk + 1024},  // touches three chunks
      {last_chunk, 512},                   // the short last chunk
      {kDevSize - 512, 512},               // the very last sector
  };
  uint64_t seq = 10;
  for (auto io : ios) ASSERT_OK(WritePattern(*tracker_, io.offset, io.length, seq++));
  seq = 10;
  for (auto io : ios) EXPECT_OK(VerifyPattern(*original_, io.offset, io.length, seq++));
  EXPECT_OK(VerifyPattern(*image, 0, kDevSize, 1));
}

TEST_F(EngineTest, TrimAndWriteZeroesAreCopiedBeforehand) {
  Uuid id = TakeSnapshot();
  ASSERT_OK(tracker_->Trim(2 * kChunk, kChunk));
  ASSERT_OK(tracker_->WriteZeroes(7 * kChunk + 512, 3 * kChunk, 0));
  std::vector<uint8_t> zero(3 * kChunk), got(3 * kChunk);
  ASSERT_OK(original_->Read(7 * kChunk + 512, got));
  EXPECT_EQ(got, zero);
  EXPECT_OK(VerifyPattern(*Image(id), 0, kDevSize, 1));
}

TEST_F(EngineTest, ImageWritesStayInTheImage) {
  Uuid id = TakeSnapshot();
  auto image = Image(id);
  const uint64_t last_chunk = (kDevSize / kChunk) * kChunk;
  ASSERT_OK(WritePattern(*image, kChunk - 1024, 2048, 5));      // straddles chunks 0 and 1
  ASSERT_OK(WritePattern(*image, last_chunk + 1024, 1024, 6));  // inside the short last chunk
  ASSERT_OK(WritePattern(*tracker_, kChunk, 512, 7));           // original write after image write
  EXPECT_OK(VerifyPattern(*image, kChunk - 1024, 2048, 5));
  EXPECT_OK(VerifyPattern(*image, last_chunk + 1024, 1024, 6));
  EXPECT_OK(VerifyPattern(*image, 0, kChunk - 1024, 1));
  EXPECT_OK(VerifyPattern(*image, kChunk + 1024, last_chunk - kChunk, 1));
  // The original never sees image writes.
  EXPECT_OK(VerifyPattern(*original_, 0, kChunk, 1));
  EXPECT_OK(VerifyPattern(*original_, kChunk, 512, 7));
  EXPECT_OK(VerifyPattern(*original_, kChunk + 512, kDevSize - kChunk - 512, 1));
  // Zeroes on the image; a flush drains the queue to the storage and data stays right.
  ASSERT_OK(image->WriteZeroes(4 * kChunk, 4096, 0));
  ASSERT_OK(image->Flush());
  std::vector<uint8_t> zero(4096), got(4096);
  ASSERT_OK(image->Read(4 * kChunk, got));
  EXPECT_EQ(got, zero);
  EXPECT_OK(VerifyPattern(*image, kChunk - 1024, 2048, 5));
  EXPECT_OK(VerifyPattern(*original_, 4 * kChunk, 4096, 1));
}

TEST_F(EngineTest, ZeroChunksArePreservedWithoutStorage) {
  ASSERT_OK(tracker_->WriteZeroes(20 * kChunk, 10 * kChunk, 0));  // chunks 20..29 all zeroes
  Uuid id = TakeSnapshot(nullptr, SnapshotDurability::kMemory);   // used: chunk data only
  auto image = Image(id);
  auto snapshot = engine_->FindSnapshot(id);
  for (uint64_t c = 18; c < 32; ++c) ASSERT_OK(WritePattern(*tracker_, c * kChunk, 4096, 2));
  ASSERT_OK(image->Flush());
  EXPECT_EQ(snapshot->storage_info().used, 4 * kChunk);  // chunks 18, 19, 30, 31 only
  std::vector<uint8_t> zero(10 * kChunk), got(10 * kChunk);
  ASSERT_OK(image->Read(20 * kChunk, got));
  EXPECT_EQ(got, zero);
  EXPECT_OK(VerifyPattern(*image, 0, 20 * kChunk, 1));
  EXPECT_OK(VerifyPattern(*image, 30 * kChunk, kDevSize - 30 * kChunk, 1));

  // An image write into a zero chunk gives it a stored, zero-filled copy first.
  ASSERT_OK(WritePattern(*image, 25 * kChunk + 4096, 8192, 3));
  EXPECT_EQ(snapshot->storage_info().used, 5 * kChunk);
  std::vector<uint8_t> chunk(kChunk);
  ASSERT_OK(image->Read(25 * kChunk, chunk));
  EXPECT_TRUE(std::all_of(chunk.begin(), chunk.begin() + 4096, [](uint8_t b) { return !b; }));
  EXPECT_TRUE(std::all_of(chunk.begin() + 12288, chunk.end(), [](uint8_t b) { return !b; }));
  EXPECT_OK(VerifyPattern(*image, 25 * kChunk + 4096, 8192, 3));
  ASSERT_OK(image->Read(26 * kChunk, chunk));  // its neighbours stay zero chunks
  EXPECT_EQ(chunk, std::vector<uint8_t>(kChunk));
  // The original was not touched by the image write.
  EXPECT_OK(VerifyPattern(*original_, 25 * kChunk, 4096, 2));
  ASSERT_OK(original_->Read(25 * kChunk + 4096, std::span(chunk.data(), kChunk - 4096)));
  EXPECT_TRUE(std::all_of(chunk.begin(), chunk.end() - 4096, [](uint8_t b) { return !b; }));
  EXPECT_EQ(snapshot->state(), SnapshotState::kTaken);
}

TEST_F(EngineTest, ImageWriteIntoZeroChunkWithFullStorageFailsAlone) {
  ASSERT_OK(tracker_->WriteZeroes(0, 40 * kChunk, 0));
  // Room for a few chunks only (as in StorageOverflowCorruptsSnapshot...).
  Uuid id =
      TakeSnapshot(MakeMemoryDevice(2 * kMiB + 4 * kChunk + kMiB), SnapshotDurability::kMemory);
  auto image = Image(id);
  auto snapshot = engine_->FindSnapshot(id);
  // 40 zero chunks preserved through original writes: no storage needed, nothing lost.
  for (uint64_t c = 0; c < 40; ++c) ASSERT_OK(WritePattern(*tracker_, c * kChunk, 4096, 2));
  ASSERT_OK(image->Flush());
  EXPECT_EQ(snapshot->storage_info().used, 0u);
  EXPECT_EQ(snapshot->state(), SnapshotState::kTaken);
  // Image writes into zero chunks: the first ones fit, then ENOSPC for that write alone.
  int failed = 0;
  for (uint64_t c = 0; c < 32; ++c) {
    Status s = WritePattern(*image, c * kChunk, 512, 4);
    if (!s.ok()) {
      EXPECT_EQ(s.errnum(), ENOSPC) << s.ToString();
      ++failed;
      std::vector<uint8_t> got(kChunk);
      ASSERT_OK(image->Read(c * kChunk, got));  // still the zero chunk it was
      EXPECT_EQ(got, std::vector<uint8_t>(kChunk));
    } else {
      EXPECT_OK(VerifyPattern(*image, c * kChunk, 512, 4));
    }
  }
  EXPECT_GT(failed, 0);
  EXPECT_LT(failed, 32);
  EXPECT_EQ(snapshot->state(), SnapshotState::kTaken);  // the image write failed, not the snapshot
  for (uint64_t c = 0; c < 40; ++c) EXPECT_OK(VerifyPattern(*original_, c * kChunk, 4096, 2));
}

TEST_F(EngineTest, StoredChunksAreReadBackFromStorageAfterCacheEviction) {
  Uuid id = TakeSnapshot();
  // Far more chunks than queue + cache hold: most must come back from the storage.
  for (uint64_t c = 0; c < 100; ++c) ASSERT_OK(WritePattern(*tracker_, c * kChunk, 4096, 2));
  ASSERT_OK(Image(id)->Flush());
  EXPECT_OK(VerifyPattern(*Image(id), 0, kDevSize, 1));
  EXPECT_OK(VerifyPattern(*original_, 50 * kChunk, 4096, 2));
}

TEST_F(EngineTest, ConcurrentRandomWritersNeverDisturbTheImage) {
  Uuid id = TakeSnapshot();
  auto image = Image(id);
  constexpr int kThreads = 6;
  constexpr uint64_t kSectors = kDevSize / 512;
  std::atomic<bool> failed{false};
  std::vector<std::thread> threads;
  // Each writer owns the sectors s with s % kThreads == t, so its last sequence per sector is
  // known; writes are 512 B to 16 KiB and may straddle chunks.
  std::vector<std::vector<uint64_t>> last(kThreads, std::vector<uint64_t>(kSectors, 1));
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(t);
      for (int i = 0; i < 400 && !failed; ++i) {
        const uint64_t sector = (rng() % (kSectors / kThreads)) * kThreads + t;
        const uint64_t seq = 100 + i;
        std::vector<uint8_t> buf(512);
        testing::StampSectors(buf, sector, seq);
        if (!tracker_->Write(sector * 512, buf, 0).ok()) failed = true;
        last[t][sector] = seq;
      }
    });
  }
  threads.emplace_back([&] {  // a reader of the image at the same time
    for (int i = 0; i < 20 && !failed; ++i) {
      if (!VerifyPattern(*image, 0, kDevSize, 1).ok()) failed = true;
    }
  });
  for (auto& th : threads) th.join();
  ASSERT_FALSE(failed);
  EXPECT_OK(VerifyPattern(*image, 0, kDevSize, 1));
  std::vector<uint8_t> all(kDevSize);
  ASSERT_OK(original_->Read(0, all));
  for (uint64_t s = 0; s < kSectors; ++s) {
    auto info = testing::InspectSector(std::span(all).subspan(s * 512, 512));
    ASSERT_TRUE(info.valid) << s;
    ASSERT_EQ(info.sequence, last[s % kThreads][s]) << s;
  }
}

TEST_F(EngineTest, CbtThroughTheEngine) {
  const Uuid gen = tracker_->cbt_info().generation_id;
  Uuid first = TakeSnapshot();  // the initial pattern write counted as snap 1
  EXPECT_EQ(tracker_->cbt_info().changes_number, 1);
  ASSERT_OK(WritePattern(*tracker_, 40960, 4096, 2));
  ASSERT_OK(WritePattern(*Image(first), 81920, 512, 3));  // image writes mark both maps
  ASSERT_OK(engine_->Destroy(first));
  Uuid second = TakeSnapshot();
  auto changed = tracker_->ChangedExtents(1, gen);
  ASSERT_TRUE(changed.ok()) << changed.status().ToString();
  EXPECT_EQ(*changed, (std::vector<ByteExtent>{{40960, 4096}, {81920, 4096}}));
  ASSERT_OK(tracker_->MarkDirty(1 * kMiB, 8192));
  changed = tracker_->ChangedExtents(1, gen);
  EXPECT_EQ(changed->back(), (ByteExtent{1 * kMiB, 8192}));
  ASSERT_OK(engine_->Destroy(second));
  EXPECT_EQ(tracker_->ChangedExtents(1, Uuid::Random()).status().errnum(), ESTALE);
}

TEST_F(EngineTest, StorageOverflowCorruptsSnapshotButOriginalKeepsEveryWrite) {
  // Room for 4 chunks only.
  Uuid id =
      TakeSnapshot(MakeMemoryDevice(2 * kMiB + 4 * kChunk + kMiB), SnapshotDurability::kMemory);
  auto snapshot = engine_->FindSnapshot(id);
  // Storage is header + 5 MiB of which limit allows... fill far beyond it.
  for (uint64_t c = 0; c < 200; ++c) ASSERT_OK(WritePattern(*tracker_, c * kChunk, kChunk, 2));
  for (uint64_t c = 0; c < 200; ++c) EXPECT_OK(VerifyPattern(*original_, c * kChunk, kChunk, 2));
  bool saw_corrupted = false, saw_no_space = false;
  uint64_t after = 0;
  for (int i = 0; i < 4; ++i) {
    auto record = snapshot->WaitEvent(after, std::chrono::milliseconds(2000));
    if (!record.ok()) break;
    EXPECT_EQ(record->seq, after + 1);
    after = record->seq;
    const SnapshotEvent* event = &record->event;
    if (event->type == SnapshotEvent::Type::kCorrupted) {
      saw_corrupted = true;
      EXPECT_EQ(event->device, "vol");
      EXPECT_EQ(event->errnum, ENOSPC);
    } else {
      saw_no_space = true;
    }
  }
  EXPECT_TRUE(saw_corrupted);
  EXPECT_TRUE(saw_no_space);
  EXPECT_EQ(snapshot->last_event_seq(), after);
  EXPECT_EQ(snapshot->events().size(), after);
  EXPECT_EQ(snapshot->state(), SnapshotState::kCorrupted);
  EXPECT_EQ(snapshot->devices()[0].errnum, ENOSPC);
  std::vector<uint8_t> buf(4096);
  EXPECT_EQ(Image(id)->Read(0, buf).errnum(), EIO);
  EXPECT_OK(engine_->Destroy(id));
}

TEST_F(EngineTest, OriginalReadErrorDuringCopyCorruptsSnapshotNotTheWrite) {
  auto fault = std::make_shared<FaultDevice>(MakeMemoryDevice(kDevSize));
  auto tracker = engine_->Attach("faulty", fault).value();
  ASSERT_OK(WritePattern(*tracker, 0, kDevSize, 1));
  Uuid id = NewSnapshot();
  ASSERT_OK(engine_->AddDevice(id, "faulty"));
  ASSERT_TRUE(engine_->Take(id).ok());
  fault->FailNthRead(1, EIO);
  ASSERT_OK(WritePattern(*tracker, 0, 4096, 2));  // the copy's read fails; the write succeeds
  EXPECT_OK(VerifyPattern(*fault, 0, 4096, 2));
  auto record = engine_->FindSnapshot(id)->WaitEvent(0, std::chrono::milliseconds(1000));
  ASSERT_TRUE(record.ok());
  EXPECT_EQ(record->seq, 1u);
  const SnapshotEvent* event = &record->event;
  EXPECT_EQ(event->type, SnapshotEvent::Type::kCorrupted);
  EXPECT_EQ(event->errnum, EIO);
  EXPECT_EQ(event->device, "faulty");
  ASSERT_OK(WritePattern(*tracker, kChunk, 4096, 3));  // later writes skip copy-on-write
  EXPECT_OK(VerifyPattern(*fault, kChunk, 4096, 3));
  std::vector<uint8_t> buf(512);
  EXPECT_EQ(engine_->FindSnapshot(id)->image("faulty")->Read(0, buf).errnum(), EIO);
}

TEST_F(EngineTest, StorageWriteErrorCorruptsSnapshot) {
  auto storage = std::make_shared<FaultDevice>(MakeMemoryDevice(2 * kMiB + 16 * kMiB));
  Uuid id = TakeSnapshot(storage);
  storage->FailAllWrites(EIO);
  for (uint64_t c = 0; c < 4; ++c) ASSERT_OK(WritePattern(*tracker_, c * kChunk, 512, 2));
  auto record = engine_->FindSnapshot(id)->WaitEvent(0, std::chrono::milliseconds(2000));
  ASSERT_TRUE(record.ok()) << record.status().ToString();
  EXPECT_EQ(record->event.type, SnapshotEvent::Type::kCorrupted);
  EXPECT_EQ(record->event.errnum, EIO);
  for (uint64_t c = 0; c < 4; ++c) EXPECT_OK(VerifyPattern(*original_, c * kChunk, 512, 2));
}

TEST_F(EngineTest, EventWaitersAreWokenWithEnodevByDestroy) {
  auto storage = std::make_shared<FaultDevice>(MakeMemoryDevice(2 * kMiB + 16 * kMiB));
  Uuid id = TakeSnapshot(storage);
  auto snapshot = engine_->FindSnapshot(id);
  storage->FailAllWrites(EIO);
  ASSERT_OK(WritePattern(*tracker_, 0, 512, 2));
  auto first = snapshot->WaitEvent(0, std::chrono::milliseconds(2000));
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  const uint64_t last = snapshot->last_event_seq();
  std::vector<std::thread> waiters;
  std::atomic<int> enodev{0};
  for (int i = 0; i < 3; ++i) {
    waiters.emplace_back([&] {
      if (snapshot->WaitEvent(last, std::chrono::seconds(10)).status().errnum() == ENODEV) ++enodev;
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_OK(engine_->Destroy(id));
  for (auto& t : waiters) t.join();
  EXPECT_EQ(enodev.load(), 3);
  // What was logged stays readable after the destroy.
  auto again = snapshot->WaitEvent(0, std::chrono::milliseconds(0));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->seq, 1u);
  EXPECT_EQ(again->event.type, SnapshotEvent::Type::kCorrupted);
}

TEST_F(EngineTest, DestroyDuringInFlightIo) {
  Uuid id = TakeSnapshot();
  auto image = Image(id);
  std::atomic<bool> stop{false};
  std::atomic<int> write_errors{0}, bad_reads{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(t);
      while (!stop) {
        // Each writer owns every third block: overlapping concurrent writes race by definition.
        const uint64_t off = ((rng() % (kDevSize / 4096 / 3)) * 3 + t) * 4096;
        if (!WritePattern(*tracker_, off, 4096, 2).ok()) ++write_errors;
      }
    });
  }
  threads.emplace_back([&] {
    std::vector<uint8_t> buf(64 * kKiB);
    std::mt19937_64 rng(9);
    const uint64_t half = kDevSize / 2 / buf.size();
    while (!stop) {
      // Reads check the first half; image writes go to the second half.
      const uint64_t off = (rng() % half) * buf.size();
      Status s = image->Read(off, buf);
      // Before destroy: take-time data; after: ENODEV. Never wrong data.
      if (s.ok() && !testing::VerifySectors(buf, off / 512, 1).ok()) ++bad_reads;
      if (!s.ok() && s.errnum() != ENODEV) ++bad_reads;
      WritePattern(*image, off + half * buf.size(), 512, 3).IgnoreError();
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_OK(engine_->Destroy(id));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  stop = true;
  for (auto& th : threads) th.join();
  EXPECT_EQ(write_errors.load(), 0);
  EXPECT_EQ(bad_reads.load(), 0);
  std::vector<uint8_t> buf(512);
  EXPECT_EQ(image->Read(0, buf).errnum(), ENODEV);
  EXPECT_EQ(engine_->FindSnapshot(id), nullptr);
  EXPECT_EQ(tracker_->snapshot(), nullptr);
}

TEST_F(EngineTest, MultiDeviceTakeIsAtomic) {
  auto other = MakeMemoryDevice(kDevSize);
  auto tracker_b = engine_->Attach("volb", other).value();
  Uuid id = NewSnapshot();
  ASSERT_OK(engine_->AddDevice(id, "vol"));
  ASSERT_OK(engine_->AddDevice(id, "volb"));
  // The writer stamps sequence k on A, then on B. Any single instant has seqA - seqB in {0, 1};
  // a take that switched the devices at different instants could capture B ahead of A, or A
  // more than one step ahead of B.
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    for (uint64_t k = 2; !stop; ++k) {
      ASSERT_OK(WritePattern(*tracker_, 0, 512, k));
      ASSERT_OK(WritePattern(*tracker_b, 0, 512, k));
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  auto stats = engine_->Take(id);
  ASSERT_TRUE(stats.ok());
  stop = true;
  writer.join();
  std::vector<uint8_t> a(512), b(512);
  auto snapshot = engine_->FindSnapshot(id);
  ASSERT_OK(snapshot->image("vol")->Read(0, a));
  ASSERT_OK(snapshot->image("volb")->Read(0, b));
  auto sa = testing::InspectSector(a), sb = testing::InspectSector(b);
  ASSERT_TRUE(sa.valid && sb.valid);
  EXPECT_TRUE(sa.sequence == sb.sequence || sa.sequence == sb.sequence + 1)
      << sa.sequence << " vs " << sb.sequence;
  EXPECT_GT(sa.sequence, 1u);
}

TEST_F(EngineTest, TakeHooksRunAroundTheSwitch) {
  Uuid id = NewSnapshot();
  ASSERT_OK(engine_->AddDevice(id, "vol"));
  std::vector<std::string> calls;
  TakeHooks hooks;
  hooks.freeze = [&] {
    calls.push_back("freeze");
    return Status::Error(EPERM, "cannot freeze");
  };
  hooks.thaw = [&] { calls.push_back("thaw"); };
  EXPECT_EQ(engine_->Take(id, hooks).status().errnum(), EPERM);
  EXPECT_EQ(calls, std::vector<std::string>{"freeze"});  // no thaw after a failed freeze
  EXPECT_EQ(engine_->FindSnapshot(id)->state(), SnapshotState::kCreated);
  EXPECT_EQ(engine_->FindSnapshot(id)->image("vol"), nullptr);
  hooks.freeze = [&] {
    calls.push_back("freeze");
    return Status::Ok();
  };
  auto stats = engine_->Take(id, hooks);
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(calls, (std::vector<std::string>{"freeze", "freeze", "thaw"}));
  EXPECT_GE(stats->frozen, stats->held);
}

TEST_F(EngineTest, ErrorsLeaveStateUnchanged) {
  Uuid id = NewSnapshot();
  EXPECT_EQ(engine_->AddDevice(id, "nope").errnum(), ENOENT);
  EXPECT_EQ(engine_->AddDevice(Uuid::Random(), "vol").errnum(), ENOENT);
  EXPECT_EQ(engine_->Take(id).status().errnum(), ENODEV);  // no devices
  ASSERT_OK(engine_->AddDevice(id, "vol"));
  EXPECT_EQ(engine_->AddDevice(id, "vol").errnum(), EALREADY);
  Uuid other = NewSnapshot();
  EXPECT_EQ(engine_->AddDevice(other, "vol").errnum(), EBUSY);
  EXPECT_EQ(engine_->Detach("vol").errnum(), EBUSY);
  ASSERT_TRUE(engine_->Take(id).ok());
  EXPECT_EQ(engine_->Take(id).status().errnum(), EALREADY);
  EXPECT_EQ(engine_->Destroy(Uuid::Random()).errnum(), ENOENT);
  EXPECT_EQ(engine_->Attach("vol", MakeMemoryDevice(kMiB)).status().errnum(), EEXIST);
  EXPECT_EQ(engine_->Attach("a/b", MakeMemoryDevice(kMiB)).status().errnum(), EINVAL);
  EXPECT_EQ(engine_->Attach("", MakeMemoryDevice(kMiB)).status().errnum(), EINVAL);
  EXPECT_EQ(engine_->snapshots().size(), 2u);
  EXPECT_EQ(engine_->trackers().size(), 1u);
  ASSERT_OK(engine_->Destroy(id));
  ASSERT_OK(engine_->Detach("vol"));
  EXPECT_EQ(engine_->Detach("vol").errnum(), ENOENT);
  std::vector<uint8_t> buf(512);
  EXPECT_EQ(tracker_->Read(0, buf).errnum(), ENODEV);
}

TEST_F(EngineTest, OutOfRangeIoIsRefused) {
  Uuid id = TakeSnapshot();
  std::vector<uint8_t> buf(1024);
  EXPECT_EQ(tracker_->Write(kDevSize - 512, buf, 0).errnum(), EINVAL);
  EXPECT_EQ(Image(id)->Read(kDevSize - 512, buf).errnum(), EINVAL);
  EXPECT_EQ(Image(id)->Write(UINT64_MAX - 100, buf, 0).errnum(), EINVAL);
  EXPECT_OK(VerifyPattern(*original_, kDevSize - 4096, 4096, 1));
}

TEST(EngineScaleTest, FreshSnapshotOfHugeDeviceTouchesNoChunks) {
  Config c = TestConfig();
  c.chunk_minimum_shift = 18;
  auto engine = Engine::Create(c).value();
  auto huge = MakeMemoryDevice(16ull << 40);  // 16 TiB, sparse
  auto tracker = engine->Attach("huge", huge).value();
  EXPECT_EQ(tracker->cbt_info().block_count, 2097152u);
  SnapshotOptions opts;
  opts.storage_device = MakeMemoryDevice(64 * kMiB);
  opts.storage_path = "memory";
  opts.durability = SnapshotDurability::kMemory;  // no chunk log: nothing allocated at all
  Uuid id = engine->CreateSnapshot(opts).value();
  ASSERT_OK(engine->AddDevice(id, "huge"));
  ASSERT_TRUE(engine->Take(id).ok());
  ASSERT_OK(WritePattern(*tracker, 8ull << 40, 4096, 2));
  EXPECT_OK(VerifyPattern(*huge, 8ull << 40, 4096, 2));
  std::vector<uint8_t> buf(4096), zero(4096);
  ASSERT_OK(engine->FindSnapshot(id)->image("huge")->Read(8ull << 40, buf));
  EXPECT_EQ(buf, zero);
  ASSERT_OK(engine->FindSnapshot(id)->image("huge")->Flush());  // waits for the storer
  // The chunk was a hole (zeroes): preserved without taking any difference storage.
  EXPECT_EQ(engine->FindSnapshot(id)->storage_info().used, 0u);
}

}  // namespace
}  // namespace blksnap

namespace blksnap {
namespace {

// The engine on real files: an image file as the original, difference storage in a directory
// (unnamed temporary file) that must grow several times, and the placement check.
class EngineFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/var/tmp/blksnap-engine-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    image_path_ = dir_ + "/vol.img";
    FILE* f = fopen(image_path_.c_str(), "w");
    ASSERT_NE(f, nullptr);
    ASSERT_EQ(ftruncate(fileno(f), 32 * kMiB), 0);
    fclose(f);
    Config c = TestConfig();
    c.diff_storage_minimum = 2 * kMiB;
    engine_ = Engine::Create(c).value();
    auto original = OpenFileDevice(image_path_);
    ASSERT_TRUE(original.ok()) << original.status().ToString();
    tracker_ = engine_->Attach("vol", *original, {.path = image_path_}).value();
  }
  void TearDown() override {
    engine_.reset();
    std::string cmd = "rm -rf " + dir_;
    ASSERT_EQ(system(cmd.c_str()), 0);
  }
  std::string dir_, image_path_;
  std::unique_ptr<Engine> engine_;
  std::shared_ptr<Tracker> tracker_;
};

TEST_F(EngineFileTest, DirectoryStorageGrowsAndImageStaysExact) {
  ASSERT_OK(WritePattern(*tracker_, 0, 32 * kMiB, 1));
  const std::string storage_dir = dir_ + "/storage";
  ASSERT_EQ(mkdir(storage_dir.c_str(), 0700), 0);
  auto id = engine_->CreateSnapshot(
      {.storage_path = storage_dir, .limit = 64 * kMiB, .durability = SnapshotDurability::kMemory});
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  ASSERT_OK(engine_->AddDevice(*id, "vol"));
  ASSERT_TRUE(engine_->Take(*id).ok());
  auto snapshot = engine_->FindSnapshot(*id);
  const uint64_t capacity_at_take = snapshot->storage_info().capacity;
  ASSERT_OK(WritePattern(*tracker_, 0, 32 * kMiB, 2));  // preserves every chunk: 32 MiB
  auto image = snapshot->image("vol");
  ASSERT_OK(image->Flush());
  EXPECT_OK(VerifyPattern(*image, 0, 32 * kMiB, 1));
  EXPECT_OK(VerifyPattern(*tracker_, 0, 32 * kMiB, 2));
  const StorageInfo info = snapshot->storage_info();
  EXPECT_EQ(info.used, 32 * kMiB);
  EXPECT_GT(info.capacity, capacity_at_take);
  EXPECT_EQ(snapshot->state(), SnapshotState::kTaken);
  ASSERT_OK(engine_->Destroy(*id));
  EXPECT_EQ(system(("test -z \"$(ls -A " + storage_dir + ")\"").c_str()), 0);
}

TEST_F(EngineFileTest, RefusesStorageThatWouldHarmData) {
  ASSERT_OK(WritePattern(*tracker_, 0, 32 * kMiB, 1));
  // The original itself is refused (it is a tracked device) before anything is written to it.
  auto same = engine_->CreateSnapshot({.storage_path = image_path_, .limit = 8 * kMiB});
  EXPECT_EQ(same.status().errnum(), EINVAL);
  EXPECT_OK(VerifyPattern(*tracker_, 0, 32 * kMiB, 1));
  struct stat st {};
  ASSERT_EQ(stat(image_path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_size, static_cast<off_t>(32 * kMiB));
  // A storage on a device aliased to the tracker (as the loop device of its front would be)
  // cannot take the device's snapshot.
  auto id = engine_->CreateSnapshot({.storage_path = dir_ + "/diff", .limit = 8 * kMiB});
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  ASSERT_EQ(stat(dir_.c_str(), &st), 0);
  tracker_->AddAlias(st.st_dev);
  EXPECT_EQ(engine_->AddDevice(*id, "vol").errnum(), EINVAL);
  EXPECT_EQ(tracker_->snapshot(), nullptr);
  tracker_->RemoveAlias(st.st_dev);
  EXPECT_OK(engine_->AddDevice(*id, "vol"));
}

}  // namespace
}  // namespace blksnap
