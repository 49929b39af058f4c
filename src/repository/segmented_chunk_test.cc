// Segmented chunks (config version 2): the table's format, deltas read back through their chains
// up to the depth limit, a damaged or missing base failing its deltas, gc keeping bases and
// deleting deltas first, and incremental backups that read and store only changed segments.
#include <gtest/gtest.h>

#include <random>

#include "blksnap/io.h"
#include "repository/backup.h"
#include "repository/chunk_table.h"
#include "repository/object_store.h"
#include "repository/repository.h"
#include "repository/repository_format.h"

namespace blksnap::repo {
namespace {

constexpr uint64_t kChunk = 256 * 1024;
constexpr uint32_t kSegment = 16 * 1024;  // 16 segments per chunk
constexpr uint32_t kSegments = kChunk / kSegment;
constexpr uint64_t kSize = 8 * kChunk + 3 * kSegment + 100;  // a short last chunk

const std::vector<uint8_t> kKey(32, 9);

void Scribble(std::span<uint8_t> out, uint32_t seed) {
  std::mt19937 rng(seed);
  for (auto& b : out) b = static_cast<uint8_t>(rng());
}

void Scribble(BlockDevice& dev, uint64_t offset, uint64_t length, uint32_t seed) {
  std::vector<uint8_t> data(length);
  Scribble(data, seed);
  ASSERT_TRUE(dev.Write(offset, data).ok());
}

std::vector<uint8_t> ReadAll(BlockDevice& dev) {
  std::vector<uint8_t> out(dev.size());
  EXPECT_TRUE(dev.Read(0, out).ok());
  return out;
}

class SegmentedTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    auto store = std::make_unique<FaultyStore>(NewMemoryStore());
    store_ = store.get();
    NewRepoOptions o;
    o.chunk_size = kChunk;
    o.segment_size = kSegment;
    o.kdf_iterations = kMinKdfIterations;
    std::optional<std::span<const uint8_t>> key;
    if (GetParam()) key = kKey;
    ASSERT_TRUE(Repository::Init(*store, o, key).ok());
    auto repo = Repository::Open(std::move(store), key);
    ASSERT_TRUE(repo.ok()) << repo.status().ToString();
    repo_ = std::move(*repo);
    ASSERT_TRUE(repo_->codec().segmented());
  }

  // The chunk `id` read back (its digest checked), or empty on error.
  std::vector<uint8_t> Read(const Digest& id) {
    auto got = repo_->GetChunk(id);
    EXPECT_TRUE(got.ok()) << got.status().ToString();
    return got.ok() ? *got : std::vector<uint8_t>{};
  }

  FaultyStore* store_ = nullptr;
  std::unique_ptr<Repository> repo_;
};

INSTANTIATE_TEST_SUITE_P(PlainAndEncrypted, SegmentedTest, ::testing::Bool());

TEST(ChunkTableTest, EncodingIsCanonicalAndEveryHeaderOrBitmapBitFlipIsRefused) {
  std::vector<uint8_t> data(kChunk);
  Scribble(data, 1);
  ChunkTable table;
  table.length = kChunk;
  table.segment_size = kSegment;
  table.digests = SegmentDigests(data, kSegment);
  table.present.assign(kSegments, 1);
  const std::vector<uint8_t> bytes = EncodeChunkTable(table);
  ASSERT_EQ(bytes.size(), kChunkTableHeaderSize + kSegments / 8 + 32 * kSegments);
  auto parsed = ParseChunkTable(bytes);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(EncodeChunkTable(*parsed), bytes);
  // A full chunk's header and bitmap: any single flipped bit makes it invalid.
  for (size_t at = 0; at < kChunkTableHeaderSize + kSegments / 8; ++at) {
    for (int bit = 0; bit < 8; ++bit) {
      std::vector<uint8_t> bad = bytes;
      bad[at] ^= static_cast<uint8_t>(1 << bit);
      EXPECT_EQ(ParseChunkTable(bad).status().errnum(), EBADMSG) << at << ":" << bit;
    }
  }
  EXPECT_EQ(ParseChunkTable(std::span(bytes).first(bytes.size() - 1)).status().errnum(), EBADMSG);
  // A delta: its base, depth and present segments.
  table.base = Sha256(data);
  table.depth = 3;
  table.present.assign(kSegments, 0);
  table.present[4] = table.present[9] = 1;
  auto delta = ParseChunkTable(EncodeChunkTable(table));
  ASSERT_TRUE(delta.ok()) << delta.status().ToString();
  EXPECT_TRUE(delta->IsDelta());
  EXPECT_EQ(delta->depth, 3u);
  EXPECT_EQ(delta->StoredLength(), 2 * kSegment);
  table.depth = kMaxDeltaDepth + 1;
  EXPECT_EQ(ParseChunkTable(EncodeChunkTable(table)).status().errnum(), EBADMSG);
  table.depth = 1;
  table.present.assign(kSegments, 0);  // a delta storing nothing
  EXPECT_EQ(ParseChunkTable(EncodeChunkTable(table)).status().errnum(), EBADMSG);
}

TEST_P(SegmentedTest, DeltasReadBackThroughTheirChainUpToTheDepthLimit) {
  std::vector<uint8_t> data(kChunk);
  Scribble(data, 2);
  auto full = repo_->PutChunk(data);
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  EXPECT_EQ(full->id, repo_->codec().ChunkId(data));
  std::vector<std::pair<Digest, std::vector<uint8_t>>> versions = {{full->id, data}};
  for (uint32_t depth = 1; depth <= kMaxDeltaDepth; ++depth) {
    auto table = repo_->ReadTable(versions.back().first);
    ASSERT_TRUE(table.ok()) << table.status().ToString();
    EXPECT_EQ(table->depth, depth - 1);
    // Two segments rewritten, one of them the chunk's last.
    const std::vector<uint32_t> changed = {depth % (kSegments - 1), kSegments - 1};
    std::vector<uint8_t> next = versions.back().second;
    for (uint32_t s : changed)
      Scribble(std::span(next).subspan(s * kSegment, kSegment), 100 + depth * 7 + s);
    auto put = repo_->PutDelta(versions.back().first, *table, next, changed, nullptr, nullptr);
    ASSERT_TRUE(put.ok()) << put.status().ToString();
    EXPECT_TRUE(put->stored);
    EXPECT_LT(put->stored_bytes, 3 * kSegment + 4096);  // the two segments, not the chunk
    EXPECT_EQ(put->id, repo_->codec().ChunkId(next));   // named as a full chunk of its bytes
    EXPECT_EQ(Read(put->id), next);
    auto own = repo_->ReadTable(put->id);
    ASSERT_TRUE(own.ok());
    EXPECT_EQ(own->depth, depth);
    EXPECT_EQ(own->base, versions.back().first);
    versions.emplace_back(put->id, next);
  }
  for (const auto& [id, bytes] : versions) EXPECT_EQ(Read(id), bytes);  // every link still reads
  auto deepest = repo_->ReadTable(versions.back().first);
  ASSERT_TRUE(deepest.ok());
  const std::vector<uint32_t> one = {0};
  EXPECT_EQ(
      repo_
          ->PutDelta(versions.back().first, *deepest, versions.back().second, one, nullptr, nullptr)
          .status()
          .errnum(),
      EINVAL);
  // A segment rewritten with the bytes it had: the chunk is its base, nothing is stored.
  auto same = repo_->PutDelta(versions[0].first, *repo_->ReadTable(versions[0].first),
                              versions[0].second, one, nullptr, nullptr);
  ASSERT_TRUE(same.ok());
  EXPECT_EQ(same->id, versions[0].first);
  EXPECT_FALSE(same->stored);
}

TEST_P(SegmentedTest, AMissingOrDamagedBaseFailsItsDeltas) {
  std::vector<uint8_t> data(kChunk);
  Scribble(data, 3);
  auto base = repo_->PutChunk(data);
  ASSERT_TRUE(base.ok());
  Scribble(std::span(data).subspan(5 * kSegment, 100), 4);
  const std::vector<uint32_t> changed = {5};
  auto delta =
      repo_->PutDelta(base->id, *repo_->ReadTable(base->id), data, changed, nullptr, nullptr);
  ASSERT_TRUE(delta.ok()) << delta.status().ToString();
  const std::string name = Codec::ChunkName(base->id);
  auto blob = store_->Get(name);
  ASSERT_TRUE(blob.ok());
  // A flipped byte in the base's data blob.
  std::vector<uint8_t> damaged = *blob;
  damaged[damaged.size() / 3] ^= 0x08;
  ASSERT_TRUE(store_->Put(name, damaged).ok());
  auto got = repo_->GetChunk(delta->id);
  EXPECT_EQ(got.status().errnum(), EBADMSG) << got.status().ToString();
  EXPECT_NE(got.status().message().find("base"), std::string_view::npos);
  // Missing.
  ASSERT_TRUE(store_->Delete(name).ok());
  got = repo_->GetChunk(delta->id);
  EXPECT_EQ(got.status().errnum(), ENOENT) << got.status().ToString();
  ASSERT_TRUE(store_->Put(name, *blob).ok());
  EXPECT_EQ(Read(delta->id), data);
}

class SegmentedBackupTest : public SegmentedTest {
 protected:
  void SetUp() override {
    SegmentedTest::SetUp();
    image_ = MakeMemoryDevice(kSize);
    Scribble(*image_, 0, kSize, 10);
  }

  Manifest Backup(const Manifest* parent, std::vector<ByteExtent> changed) {
    BackupSpec spec;
    spec.device = "vda";
    spec.host = "test";
    spec.threads = 3;
    if (parent != nullptr) {
      spec.parent = *parent;
      spec.snap_number = parent->snap_number + 1;
      spec.parent_index = *repo_->GetIndex(parent->index);
      spec.changed = std::move(changed);
    }
    auto m = RunBackup(*repo_, *image_, spec);
    EXPECT_TRUE(m.ok()) << m.status().ToString();
    return m.ok() ? *m : Manifest{};
  }

  std::vector<uint8_t> Restored(const Manifest& m) {
    auto target = MakeMemoryDevice(kSize);
    RestoreSpec spec;
    spec.verify = true;
    spec.check_digests = true;
    Status s = RunRestore(*repo_, m, *target, spec);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return ReadAll(*target);
  }

  std::shared_ptr<BlockDevice> image_;
};

INSTANTIATE_TEST_SUITE_P(PlainAndEncrypted, SegmentedBackupTest, ::testing::Bool());

TEST_P(SegmentedBackupTest, IncrementalsReadAndStoreOnlyChangedSegments) {
  const Manifest full = Backup(nullptr, {});
  std::vector<std::pair<Manifest, std::vector<uint8_t>>> points = {{full, ReadAll(*image_)}};
  // Each round: 100 bytes in segment 5 of chunk 2, 20 KiB across segments 3-4 of chunk 7 (3
  // segments in all), and the short last chunk's tail. Rounds past the depth limit store chunk
  // 2 and 7 whole once.
  for (uint32_t round = 1; round <= kMaxDeltaDepth + 2; ++round) {
    const std::vector<ByteExtent> changed = {{2 * kChunk + 5 * kSegment + 10, 100},
                                             {7 * kChunk + 3 * kSegment + 1000, 20 * 1024},
                                             {kSize - 50, 50}};
    for (const ByteExtent& e : changed)
      Scribble(*image_, e.offset, e.length, 1000 + round * 10 + e.offset % 7);
    const Manifest inc = Backup(&points.back().first, changed);
    EXPECT_EQ(inc.stats.new_chunks, 3u);
    auto index = repo_->GetIndex(inc.index);
    ASSERT_TRUE(index.ok());
    auto table = repo_->ReadTable(index->chunks[2]);
    ASSERT_TRUE(table.ok()) << table.status().ToString();
    if (round <= kMaxDeltaDepth) {
      EXPECT_EQ(table->depth, round);
      // Chunks 2 and 7: 3 segments read; the last chunk (3 segments and 100 bytes) is rewritten
      // in 1 of its 4 segments: its last, 100 bytes long.
      EXPECT_EQ(inc.stats.read_bytes, 3 * kSegment + 100) << round;
      EXPECT_LT(inc.stats.new_bytes_stored, 4 * kSegment + 3 * 4096) << round;
    } else {
      EXPECT_EQ(table->depth, round - kMaxDeltaDepth - 1);  // stored whole, then a delta again
    }
    points.emplace_back(inc, ReadAll(*image_));
  }
  for (const auto& [m, bytes] : points) EXPECT_EQ(Restored(m), bytes) << m.id;
  auto problems = repo_->Verify({}, 2);
  ASSERT_TRUE(problems.ok());
  EXPECT_TRUE(problems->empty());
}

TEST_P(SegmentedBackupTest, GcKeepsTheBasesOfKeptDeltasAndDeletesDeltasFirst) {
  const Manifest full = Backup(nullptr, {});
  Scribble(*image_, 3 * kChunk + kSegment, 10, 20);
  const Manifest inc = Backup(&full, {{3 * kChunk + kSegment, 10}});
  Scribble(*image_, 3 * kChunk + 2 * kSegment, 10, 21);
  const Manifest inc2 = Backup(&inc, {{3 * kChunk + 2 * kSegment, 10}});
  const std::vector<uint8_t> at_inc2 = ReadAll(*image_);
  // Only the second incremental kept: its delta of chunk 3 needs the first's and the full's.
  ASSERT_TRUE(store_->Delete("backups/" + full.id).ok());
  ASSERT_TRUE(store_->Delete("backups/" + inc.id).ok());
  auto gc = repo_->Gc();
  ASSERT_TRUE(gc.ok()) << gc.status().ToString();
  EXPECT_EQ(gc->chunks_deleted, 0u);
  EXPECT_EQ(Restored(inc2), at_inc2);
  // Nothing kept, and each sweep cut after one delete: the deepest delta goes first, so at every
  // cut every chunk left still reads (no delta outlives its base).
  ASSERT_TRUE(store_->Delete("backups/" + inc2.id).ok());
  for (int cut = 0;; ++cut) {
    ASSERT_LT(cut, 20);
    store_->FailAfter(StoreOp::kDelete, 1, EIO, "chunks/");
    auto swept = repo_->Gc();
    store_->Clear();
    if (swept.ok()) break;
    EXPECT_EQ(swept.status().errnum(), EIO);
    auto names = store_->List("chunks/");
    ASSERT_TRUE(names.ok());
    for (const std::string& name : *names) {
      auto id = Digest::FromHex(name.substr(name.size() - 64));
      ASSERT_TRUE(id.ok());
      EXPECT_TRUE(repo_->GetChunk(*id).ok()) << "cut " << cut << ": " << name;
    }
  }
  EXPECT_TRUE(store_->List("chunks/")->empty());
}

// repo verify --repair: a damaged base and the delta over it leave their names for bad/, the
// backups using them are marked, and a full backup of the same data stores them anew (without
// the repair it would find them present by name and reference them again); gc then drops the
// markers of backups that are gone. Repair needs the repository alone.
TEST_P(SegmentedBackupTest, RepairMovesDamagedChunksAsideSoAFullBackupStoresThemAnew) {
  const Manifest full = Backup(nullptr, {});
  const std::vector<ByteExtent> changed = {{2 * kChunk + 5 * kSegment + 10, 100}};
  Scribble(*image_, changed[0].offset, changed[0].length, 77);
  const Manifest inc = Backup(&full, changed);
  const Digest base = repo_->GetIndex(full.index)->chunks[2];
  const Digest delta = repo_->GetIndex(inc.index)->chunks[2];
  ASSERT_EQ(repo_->ReadTable(delta)->base, base);
  const std::string base_name = Codec::ChunkName(base), delta_name = Codec::ChunkName(delta);
  auto blob = store_->Get(base_name);
  ASSERT_TRUE(blob.ok());
  (*blob)[blob->size() / 3] ^= 0x08;  // in its data, the table intact
  ASSERT_TRUE(store_->Put(base_name, *blob).ok());
  {
    auto lease = repo_->BackupLease();  // a backup running
    ASSERT_TRUE(lease.ok());
    EXPECT_EQ(repo_->Verify({}, 2, {}, true).status().errnum(), EBUSY);
  }
  // Without repair, a full backup of the same data references the damaged objects again.
  const Manifest again = Backup(nullptr, {});
  EXPECT_EQ(again.stats.new_chunks, 0u);

  auto problems = repo_->Verify({}, 2, {}, true);
  ASSERT_TRUE(problems.ok()) << problems.status().ToString();
  ASSERT_EQ(problems->size(), 2u);
  for (const auto& p : *problems) {
    EXPECT_TRUE(p.moved_aside) << p.chunk.Hex();
    EXPECT_FALSE(p.index);
    const std::vector<std::string> users = p.chunk == base
                                               ? std::vector<std::string>{full.id}
                                               : std::vector<std::string>{inc.id, again.id};
    EXPECT_EQ(p.backups, users) << p.chunk.Hex();
  }
  for (const std::string& name : {base_name, delta_name}) {
    EXPECT_FALSE(*store_->Exists(name)) << name;
    EXPECT_TRUE(*store_->Exists("bad/" + name)) << name;
  }
  for (const Manifest* m : {&full, &inc, &again}) EXPECT_TRUE(*repo_->IsMarkedDamaged(m->id));
  auto missing = repo_->Verify({}, 2);
  ASSERT_TRUE(missing.ok());
  ASSERT_EQ(missing->size(), 2u);
  for (const auto& p : *missing) EXPECT_EQ(p.error.errnum(), ENOENT) << p.error.ToString();

  const Manifest fresh = Backup(nullptr, {});  // what a "parent-damaged" backup does
  EXPECT_EQ(fresh.stats.new_chunks, 1u);       // chunk 2, whole this time
  EXPECT_FALSE(*repo_->IsMarkedDamaged(fresh.id));
  EXPECT_EQ(Restored(fresh), ReadAll(*image_));
  auto clean = repo_->Verify({fresh.id}, 2);
  ASSERT_TRUE(clean.ok());
  EXPECT_TRUE(clean->empty());

  for (const Manifest* m : {&full, &inc, &again}) {
    ASSERT_TRUE(store_->Delete("backups/" + m->id).ok());
  }
  ASSERT_TRUE(repo_->Gc().ok());
  EXPECT_TRUE(store_->List("damaged/")->empty());
  EXPECT_FALSE(store_->List("bad/")->empty());  // kept for inspection
}

TEST(SegmentedVersionTest, AVersionOneRepositoryStillBacksUpWholeChunks) {
  auto owner = NewMemoryStore();
  ObjectStore* store = owner.get();
  NewRepoOptions o;
  o.chunk_size = kChunk;
  o.segment_size = 0;
  ASSERT_TRUE(Repository::Init(*store, o, std::nullopt).ok());
  auto repo = Repository::Open(std::move(owner), std::nullopt);
  ASSERT_TRUE(repo.ok());
  EXPECT_FALSE((*repo)->codec().segmented());
  EXPECT_EQ((*repo)->codec().config().version, kConfigVersion);
  auto image = MakeMemoryDevice(kSize);
  Scribble(*image, 0, kSize, 30);
  BackupSpec spec;
  spec.device = "vda";
  auto full = RunBackup(**repo, *image, spec);
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  auto index = (*repo)->GetIndex(full->index);
  auto blob = store->Get(Codec::ChunkName(index->chunks[0]));
  ASSERT_TRUE(blob.ok());
  // A version-1 chunk is one blob: it starts with the blob magic and has no footer.
  EXPECT_EQ(std::string(blob->begin(), blob->begin() + 4), "BSRB");
  EXPECT_NE(std::string(blob->end() - 4, blob->end()), "BSC2");
  auto target = MakeMemoryDevice(kSize);
  ASSERT_TRUE(RunRestore(**repo, *full, *target, RestoreSpec{}).ok());
  EXPECT_EQ(ReadAll(*target), ReadAll(*image));
}

}  // namespace
}  // namespace blksnap::repo
