// RunBackup / RunRestore on memory devices and a memory store: full and incremental backups
// restored byte-identical to the image at each point, incremental reads only changed chunks,
// zero chunks are not stored, a damaged chunk fails the restore of the backups that use it.
#include "repository/backup.h"

#include <gtest/gtest.h>

#include <random>

#include "blksnap/io.h"
#include "repository/object_store.h"

namespace blksnap::repo {
namespace {

constexpr uint64_t kChunk = 64 * 1024;
constexpr uint64_t kSize = 64 * kChunk + 12345;  // a short last chunk

std::vector<uint8_t> ReadAll(BlockDevice& dev) {
  std::vector<uint8_t> out(dev.size());
  EXPECT_TRUE(dev.Read(0, out).ok());
  return out;
}

void Scribble(BlockDevice& dev, uint64_t offset, uint64_t length, uint32_t seed) {
  std::vector<uint8_t> data(length);
  std::mt19937 rng(seed);
  for (auto& b : data) b = static_cast<uint8_t>(rng());
  ASSERT_TRUE(dev.Write(offset, data).ok());
}

class BackupTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = NewMemoryStore();
    store_ = store.get();
    NewRepoOptions o;
    o.chunk_size = kChunk;
    ASSERT_TRUE(Repository::Init(*store, o, std::nullopt).ok());
    auto repo = Repository::Open(std::move(store), std::nullopt);
    ASSERT_TRUE(repo.ok()) << repo.status().ToString();
    repo_ = std::move(repo).value();
    image_ = MakeMemoryDevice(kSize);
    // Data in most chunks, zeroes in chunks 10..19.
    for (uint64_t i = 0; i < 65; ++i) {
      if (i >= 10 && i < 20) continue;
      Scribble(*image_, i * kChunk, std::min(kChunk, kSize - i * kChunk), 1000 + i);
    }
  }

  Manifest Full() {
    BackupSpec spec;
    spec.device = "vda";
    spec.host = "test";
    spec.snap_number = 1;
    auto m = RunBackup(*repo_, *image_, spec);
    EXPECT_TRUE(m.ok()) << m.status().ToString();
    return *m;
  }

  Manifest Incremental(const Manifest& parent, std::vector<ByteExtent> changed) {
    BackupSpec spec;
    spec.device = "vda";
    spec.host = "test";
    spec.snap_number = parent.snap_number + 1;
    spec.parent = parent;
    auto index = repo_->GetIndex(parent.index);
    EXPECT_TRUE(index.ok());
    spec.parent_index = *index;
    spec.changed = std::move(changed);
    auto m = RunBackup(*repo_, *image_, spec);
    EXPECT_TRUE(m.ok()) << m.status().ToString();
    return *m;
  }

  std::vector<uint8_t> Restored(const Manifest& m, bool zeroed, bool verify = true) {
    auto target = MakeMemoryDevice(kSize);
    if (!zeroed) Scribble(*target, 0, kSize, 7);  // junk that zero chunks must overwrite
    RestoreSpec spec;
    spec.target_is_zeroed = zeroed;
    spec.verify = verify;
    Status s = RunRestore(*repo_, m, *target, spec);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return ReadAll(*target);
  }

  ObjectStore* store_ = nullptr;
  std::unique_ptr<Repository> repo_;
  std::shared_ptr<BlockDevice> image_;
};

TEST_F(BackupTest, FullBackupRestoresByteIdenticalAndSkipsZeroes) {
  const std::vector<uint8_t> before = ReadAll(*image_);
  std::vector<TransferProgress> progress;
  BackupSpec spec;
  spec.device = "vda";
  spec.progress = [&](const TransferProgress& p) { progress.push_back(p); };
  auto m = RunBackup(*repo_, *image_, spec);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_TRUE(m->full);
  EXPECT_EQ(m->full_reason, "first");
  EXPECT_EQ(m->stats.zero_chunks, 10u);
  EXPECT_EQ(m->stats.new_chunks, 55u);
  EXPECT_EQ(m->stats.read_bytes, kSize);
  auto chunks = store_->List("chunks/");
  ASSERT_TRUE(chunks.ok());
  EXPECT_EQ(chunks->size(), 55u);  // zero chunks are not stored
  ASSERT_FALSE(progress.empty());
  EXPECT_EQ(progress.back().done_bytes, kSize);

  Scribble(*image_, 0, kSize, 99);  // the image moves on; the backup does not
  EXPECT_EQ(Restored(*m, true), before);
  EXPECT_EQ(Restored(*m, false), before);
}

TEST_F(BackupTest, IncrementalReadsOnlyChangedChunksAndRestoresEachPoint) {
  const Manifest full = Full();
  const std::vector<uint8_t> at_full = ReadAll(*image_);
  // Change three ranges: inside chunk 3, across chunks 30..31, and the short last chunk.
  Scribble(*image_, 3 * kChunk + 100, 200, 1);
  Scribble(*image_, 31 * kChunk - 10, 20, 2);
  Scribble(*image_, kSize - 5, 5, 3);
  const std::vector<ByteExtent> changed = {
      {3 * kChunk + 100, 200}, {31 * kChunk - 10, 20}, {kSize - 5, 5}};
  const Manifest inc = Incremental(full, changed);
  EXPECT_FALSE(inc.full);
  EXPECT_EQ(inc.parent, full.id);
  EXPECT_EQ(inc.stats.read_bytes, 3 * kChunk + (kSize - 64 * kChunk));  // chunks 3, 30, 31, 64
  EXPECT_EQ(inc.stats.new_chunks, 4u);
  const std::vector<uint8_t> at_inc = ReadAll(*image_);
  EXPECT_EQ(Restored(full, true), at_full);
  EXPECT_EQ(Restored(inc, true), at_inc);
}

TEST_F(BackupTest, AnIncrementalThatMissesAChangeIsWrongSoTheExtentsMatter) {
  // The test of the test: leaving a change out of the extents yields a restore that differs.
  const Manifest full = Full();
  Scribble(*image_, 40 * kChunk, 10, 5);
  const Manifest inc = Incremental(full, {});
  EXPECT_EQ(inc.stats.read_bytes, 0u);
  EXPECT_NE(Restored(inc, true, false), ReadAll(*image_));
}

TEST_F(BackupTest, ADamagedChunkFailsTheRestoresThatUseIt) {
  const Manifest full = Full();
  auto index = repo_->GetIndex(full.index);
  ASSERT_TRUE(index.ok());
  const std::string name = Codec::ChunkName(index->chunks[5]);
  auto blob = store_->Get(name);
  ASSERT_TRUE(blob.ok());
  (*blob)[blob->size() / 2] ^= 0x40;
  ASSERT_TRUE(store_->Put(name, *blob).ok());
  auto target = MakeMemoryDevice(kSize);
  Status s = RunRestore(*repo_, full, *target, RestoreSpec{});
  EXPECT_EQ(s.errnum(), EBADMSG) << s.ToString();
}

TEST_F(BackupTest, AParentOfAnotherSizeIsRefused) {
  const Manifest full = Full();
  BackupSpec spec;
  spec.device = "vda";
  spec.parent = full;
  spec.parent_index = *repo_->GetIndex(full.index);
  spec.parent_index.device_size += kChunk;
  EXPECT_EQ(RunBackup(*repo_, *image_, spec).status().errnum(), EINVAL);
}

TEST_F(BackupTest, ATargetTooSmallIsRefusedBeforeAnyWrite) {
  const Manifest full = Full();
  auto target = MakeMemoryDevice(kSize - 512);
  EXPECT_EQ(RunRestore(*repo_, full, *target, RestoreSpec{}).errnum(), EINVAL);
}

}  // namespace
}  // namespace blksnap::repo
