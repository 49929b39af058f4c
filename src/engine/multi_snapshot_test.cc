// Several snapshots of one device (issue 18, area_chain.h): each image holds exactly its take's
// data through rounds of random writes to the original, image writes to one snapshot, destroy of
// the middle ones, the overflow of one snapshot's storage, concurrent readers and writers, and a
// clean close and recovery of a chain of durable snapshots. The oracle is a model of the
// sector-pattern generation of every 512-byte sector.
#include <gtest/gtest.h>

#include <atomic>
#include <random>
#include <thread>
#include <vector>

#include "blksnap/engine.h"
#include "blksnap/io.h"
#include "engine/engine_test_util.h"
#include "engine/model_test_util.h"

namespace blksnap {
namespace {

using namespace model_test;

class MultiSnapshotTest : public ::testing::TestWithParam<SnapshotDurability> {
 protected:
  void SetUp() override {
    engine_ = Engine::Create(TestConfig()).value();
    original_ = MakeMemoryDevice(kDevSize);
    tracker_ = engine_->Attach("vol", original_).value();
    ASSERT_OK(WritePattern(*tracker_, 0, kDevSize, 1));
    model_.assign(kSectors, 1);
  }

  Result<Uuid> Take(uint64_t storage_bytes = 2 * kMiB + 32 * kMiB) {
    SnapshotOptions opts;
    opts.durability = GetParam();
    opts.storage_path = "memory";
    opts.storage_device = MakeMemoryDevice(storage_bytes);
    BLKSNAP_ASSIGN_OR_RETURN(Uuid id, engine_->CreateSnapshot(opts));
    BLKSNAP_RETURN_IF_ERROR(engine_->AddDevice(id, "vol"));
    BLKSNAP_RETURN_IF_ERROR(engine_->Take(id).status());
    return id;
  }

  std::shared_ptr<BlockDevice> Image(const Uuid& id) {
    return engine_->FindSnapshot(id)->image("vol");
  }

  std::unique_ptr<Engine> engine_;
  std::shared_ptr<BlockDevice> original_;
  std::shared_ptr<Tracker> tracker_;
  Model model_;
  std::mt19937_64 rng_{42};
  uint64_t gen_ = 2;
};

TEST_P(MultiSnapshotTest, FourSnapshotsEachHoldTheirTakeThroughImageWritesAndDestroys) {
  std::vector<Uuid> ids;
  std::vector<Model> models;
  for (int round = 0; round < 4; ++round) {
    auto id = Take();
    ASSERT_TRUE(id.ok()) << id.status().ToString();
    ids.push_back(*id);
    models.push_back(model_);
    ASSERT_OK(RandomWrites(*tracker_, model_, rng_, 60, &gen_));
  }
  EXPECT_EQ(tracker_->snapshots().size(), 4u);
  EXPECT_EQ(tracker_->snapshot()->id(), ids.back());
  for (size_t i = 0; i < ids.size(); ++i) {
    SCOPED_TRACE("snapshot " + std::to_string(i));
    EXPECT_OK(VerifyModel(*Image(ids[i]), models[i]));
  }
  // Image writes to the third snapshot stay private to it; the older ones read through it.
  ASSERT_OK(RandomWrites(*Image(ids[2]), models[2], rng_, 40, &gen_));
  ASSERT_OK(RandomWrites(*tracker_, model_, rng_, 40, &gen_));
  for (size_t i = 0; i < ids.size(); ++i) {
    SCOPED_TRACE("after image writes, snapshot " + std::to_string(i));
    EXPECT_OK(VerifyModel(*Image(ids[i]), models[i]));
  }
  // Destroy the two middle ones: the first and the last keep their data.
  ASSERT_OK(engine_->Destroy(ids[1]));
  ASSERT_OK(RandomWrites(*tracker_, model_, rng_, 30, &gen_));
  ASSERT_OK(engine_->Destroy(ids[2]));
  ASSERT_OK(RandomWrites(*tracker_, model_, rng_, 30, &gen_));
  EXPECT_EQ(tracker_->snapshots().size(), 2u);
  EXPECT_OK(VerifyModel(*Image(ids[0]), models[0]));
  EXPECT_OK(VerifyModel(*Image(ids[3]), models[3]));
  EXPECT_OK(VerifyModel(*tracker_, model_));
  // Then the newest: the first still holds its take.
  ASSERT_OK(engine_->Destroy(ids[3]));
  ASSERT_OK(RandomWrites(*tracker_, model_, rng_, 30, &gen_));
  EXPECT_OK(VerifyModel(*Image(ids[0]), models[0]));
  ASSERT_OK(engine_->Destroy(ids[0]));
  EXPECT_FALSE(tracker_->snapshot());
  EXPECT_OK(VerifyModel(*original_, model_));
}

TEST_P(MultiSnapshotTest, OverflowOfTheNewestLeavesTheOlderAndTheOriginalIntact) {
  auto older = Take();
  ASSERT_TRUE(older.ok()) << older.status().ToString();
  // No write in between: the older one holds no copy and reads every chunk through the newer.
  const Model older_model = model_;
  auto newer = Take(3 * kMiB + 4 * kChunk);  // room for a few chunks
  ASSERT_TRUE(newer.ok()) << newer.status().ToString();
  // Every chunk, one write each: without durability a write returns once its chunk is in
  // memory, so the newer overflows with copies still queued whose originals changed already.
  for (uint64_t offset = 0; offset < kDevSize; offset += kChunk)
    ASSERT_OK(WritePattern(*tracker_, offset, std::min(kChunk, kDevSize - offset), 900));
  model_.assign(kSectors, 900);
  ASSERT_EQ(engine_->FindSnapshot(*newer)->state(), SnapshotState::kCorrupted);
  EXPECT_EQ(engine_->FindSnapshot(*older)->state(), SnapshotState::kTaken);
  std::vector<uint8_t> sector(kSector);
  EXPECT_FALSE(Image(*newer)->Read(0, sector).ok());
  EXPECT_OK(VerifyModel(*Image(*older), older_model));
  EXPECT_OK(VerifyModel(*original_, model_));
  // Destroying the overflowed one hands its copies to the older one.
  ASSERT_OK(engine_->Destroy(*newer));
  ASSERT_OK(RandomWrites(*tracker_, model_, rng_, 20, &gen_));
  EXPECT_OK(VerifyModel(*Image(*older), older_model));
}

TEST_P(MultiSnapshotTest, OverflowOfTheOlderLeavesTheNewerIntact) {
  auto older = Take(3 * kMiB + 2 * kChunk);
  ASSERT_TRUE(older.ok()) << older.status().ToString();
  ASSERT_OK(WritePattern(*tracker_, 0, kDevSize, 800));
  model_.assign(kSectors, 800);
  ASSERT_EQ(engine_->FindSnapshot(*older)->state(), SnapshotState::kCorrupted);
  auto newer = Take();
  ASSERT_TRUE(newer.ok()) << newer.status().ToString();
  const Model newer_model = model_;
  ASSERT_OK(RandomWrites(*tracker_, model_, rng_, 40, &gen_));
  Model image_model = newer_model;
  ASSERT_OK(RandomWrites(*Image(*newer), image_model, rng_, 10, &gen_));
  EXPECT_OK(VerifyModel(*Image(*newer), image_model));
  EXPECT_OK(VerifyModel(*original_, model_));
}

TEST_P(MultiSnapshotTest, ReadersAndImageWritersRaceTakesAndWritesOfTheOriginal) {
  auto first = Take();
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  const Model first_model = model_;
  std::atomic<bool> stop{false};
  std::atomic<int> failures{0};
  // Writers of the original (generations from 10000 up, no model: the takes fall anywhere).
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(t + 100);
      uint64_t g = 10000 + t * 1000000;
      while (!stop) {
        const uint64_t sectors = 1 + rng() % 256;
        const uint64_t first_sector = rng() % (kSectors - sectors);
        if (!WritePattern(*tracker_, first_sector * kSector, sectors * kSector, g++).ok())
          ++failures;
      }
    });
  }
  // A reader of the first snapshot, which must never see anything but its take.
  threads.emplace_back([&] {
    auto image = Image(*first);
    while (!stop) {
      if (!VerifyModel(*image, first_model).ok()) ++failures;
    }
  });
  // Takes, image writes to the newer snapshots and destroys meanwhile.
  std::vector<Uuid> later;
  std::mt19937_64 rng(7);
  for (int i = 0; i < 6; ++i) {
    auto id = Take();
    ASSERT_TRUE(id.ok()) << id.status().ToString();
    later.push_back(*id);
    for (int w = 0; w < 20; ++w) {
      const uint64_t offset = rng() % (kDevSize / kChunk) * kChunk;
      ASSERT_OK(WritePattern(*Image(*id), offset, 4096, 500000 + w));
    }
    if (later.size() > 2) {
      ASSERT_OK(engine_->Destroy(later.front()));
      later.erase(later.begin());
    }
  }
  stop = true;
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_OK(VerifyModel(*Image(*first), first_model));
}

TEST_P(MultiSnapshotTest, CreateRefusesADeviceInASnapshotNotYetTakenAndTooManySnapshots) {
  std::vector<Uuid> ids;
  for (size_t i = 0; i < kMaxSnapshotsPerDevice; ++i) {
    auto id = Take(3 * kMiB + 4 * kChunk);
    ASSERT_TRUE(id.ok()) << id.status().ToString();
    ids.push_back(*id);
  }
  SnapshotOptions opts;
  opts.storage_path = "memory";
  opts.durability = GetParam();
  opts.storage_device = MakeMemoryDevice(4 * kMiB);
  auto extra = engine_->CreateSnapshot(opts).value();
  EXPECT_EQ(engine_->AddDevice(extra, "vol").errnum(), EBUSY);
  ASSERT_OK(engine_->Destroy(ids[5]));
  ASSERT_OK(engine_->AddDevice(extra, "vol"));
  auto another = engine_->CreateSnapshot(opts).value();
  EXPECT_EQ(engine_->AddDevice(another, "vol").errnum(), EBUSY);  // `extra` is not taken yet
  ASSERT_OK(engine_->Take(extra).status());
  EXPECT_EQ(engine_->Detach("vol").errnum(), EBUSY);
}

INSTANTIATE_TEST_SUITE_P(Durability, MultiSnapshotTest,
                         ::testing::Values(SnapshotDurability::kMemory, SnapshotDurability::kPower),
                         [](const auto& info) {
                           return info.param == SnapshotDurability::kMemory ? "Memory" : "Power";
                         });

// Two durable snapshots of one device, closed (the older first: the newer refuses before it)
// and recovered on a fresh engine in the opposite order: the chain comes back in take order.
TEST(MultiSnapshotDurableTest, CleanCloseAndRecoveryKeepTheChain) {
  auto original_disk = MakeMemoryDevice(kDevSize);
  auto storage1 = MakeMemoryDevice(2 * kMiB + 32 * kMiB);
  auto storage2 = MakeMemoryDevice(2 * kMiB + 32 * kMiB);
  Model model(kSectors, 1), m1, m2;
  std::mt19937_64 rng(3);
  uint64_t gen = 2;
  Uuid id1, id2;
  {
    auto engine = Engine::Create(TestConfig()).value();
    auto tracker = engine->Attach("vol", original_disk).value();
    ASSERT_OK(WritePattern(*tracker, 0, kDevSize, 1));
    auto take = [&](std::shared_ptr<BlockDevice> storage) {
      Uuid id = engine
                    ->CreateSnapshot({.storage_path = "storage",
                                      .storage_device = storage,
                                      .durability = SnapshotDurability::kPower})
                    .value();
      EXPECT_OK(engine->AddDevice(id, "vol"));
      EXPECT_TRUE(engine->Take(id).ok());
      return id;
    };
    id1 = take(storage1);
    m1 = model;
    ASSERT_OK(RandomWrites(*tracker, model, rng, 40, &gen));
    id2 = take(storage2);
    m2 = model;
    ASSERT_OK(RandomWrites(*tracker, model, rng, 40, &gen));
    ASSERT_OK(RandomWrites(*engine->FindSnapshot(id2)->image("vol"), m2, rng, 10, &gen));
    EXPECT_EQ(engine->CloseSnapshot(id2).errnum(), EBUSY);
    ASSERT_OK(engine->CloseSnapshot(id1));
    ASSERT_OK(engine->CloseSnapshot(id2));
  }
  auto engine = Engine::Create(TestConfig()).value();
  auto tracker = engine->Attach("vol", original_disk).value();
  auto r2 =
      engine->RecoverSnapshot({.id = id2, .storage_device = storage2, .check_originals = false});
  ASSERT_TRUE(r2.ok()) << r2.status().ToString();
  auto r1 =
      engine->RecoverSnapshot({.id = id1, .storage_device = storage1, .check_originals = false});
  ASSERT_TRUE(r1.ok()) << r1.status().ToString();
  EXPECT_LT((*r1)->taken_at(), (*r2)->taken_at());
  EXPECT_OK(VerifyModel(*(*r1)->image("vol"), m1));
  EXPECT_OK(VerifyModel(*(*r2)->image("vol"), m2));
  ASSERT_OK(RandomWrites(*tracker, model, rng, 40, &gen));
  EXPECT_OK(VerifyModel(*(*r1)->image("vol"), m1));
  EXPECT_OK(VerifyModel(*(*r2)->image("vol"), m2));
  ASSERT_OK(engine->Destroy(id2));
  EXPECT_OK(VerifyModel(*(*r1)->image("vol"), m1));
}

}  // namespace
}  // namespace blksnap
