// RunBackup / RunRestore on memory devices and a memory store: full and incremental backups
// restored byte-identical to the image at each point, incremental reads only changed chunks,
// zero chunks are not stored, a damaged chunk fails the restore of the backups that use it.
#include "repository/backup.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <random>
#include <thread>

#include "blksnap/io.h"
#include "repository/backup_image.h"
#include "repository/object_store.h"
#include "repository/repository_test_util.h"

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
    // One segment per chunk: a changed chunk is never a delta (more than half of its segments
    // changed), so these tests follow the whole-chunk path, reading the parent's version and
    // overlaying the changed bytes (segmented_chunk_test.cc covers deltas).
    o.segment_size = static_cast<uint32_t>(kChunk);
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

  // decoders < threads: the writes go behind the decoders (WriteBehind); else each decoder
  // writes its own chunks. The default: both ways, whatever this machine's CPUs.
  std::vector<uint8_t> Restored(const Manifest& m, bool zeroed, bool verify = true,
                                int decoders = 2, int threads = 5) {
    auto target = MakeMemoryDevice(kSize);
    if (!zeroed) Scribble(*target, 0, kSize, 7);  // junk that zero chunks must overwrite
    RestoreSpec spec;
    spec.target_is_zeroed = zeroed;
    spec.verify = verify;
    spec.decoders = decoders;
    spec.threads = threads;
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
  EXPECT_EQ(Restored(*m, false, false, 3, 3), before);  // the decoders write
  EXPECT_EQ(Restored(*m, false, false, 1, 16), before);
  EXPECT_EQ(Restored(*m, true, false, 0, 0), before);  // one decoder per CPU, each writing
}

// A target whose writes at one offset fail.
class FailingWrites : public ForwardingDevice {
 public:
  FailingWrites(std::shared_ptr<BlockDevice> next, uint64_t bad)
      : ForwardingDevice(next), bad_(bad) {}
  Status Write(uint64_t offset, std::span<const uint8_t> buf, uint32_t flags) override {
    if (offset == bad_) return Status::Error(ENOSPC, "no space left (test)");
    return ForwardingDevice::Write(offset, buf, flags);
  }

 private:
  const uint64_t bad_;
};

TEST_F(BackupTest, AFailedWriteFailsTheRestoreWithItsError) {
  const Manifest full = Full();
  for (auto [decoders, threads] : {std::pair{1, 4}, std::pair{2, 2}, std::pair{2, 64}}) {
    for (uint64_t bad : {uint64_t{0}, 30 * kChunk, 64 * kChunk}) {
      auto target = std::make_shared<FailingWrites>(MakeMemoryDevice(kSize), bad);
      RestoreSpec spec;
      spec.decoders = decoders;
      spec.threads = threads;
      std::vector<TransferProgress> progress;
      spec.progress = [&](const TransferProgress& p) { progress.push_back(p); };
      Status s = RunRestore(*repo_, full, *target, spec);
      EXPECT_EQ(s.errnum(), ENOSPC)
          << decoders << "/" << threads << " at " << bad << ": " << s.ToString();
      if (!progress.empty()) {
        EXPECT_LT(progress.back().done_bytes, kSize);
      }
    }
  }
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
  // Chunks 3, 30, 31 and 64 changed by a few bytes each: only those bytes are read from the
  // image, the rest of each chunk comes from the parent's version in the repository.
  EXPECT_EQ(inc.stats.read_bytes, 225u);
  EXPECT_EQ(inc.stats.new_chunks, 4u);
  const std::vector<uint8_t> at_inc = ReadAll(*image_);
  EXPECT_EQ(Restored(full, true), at_full);
  EXPECT_EQ(Restored(inc, true), at_inc);

  // A chunk more than half rewritten is read whole; a zero chunk (12) gets its changed bytes
  // over zeroes; a chunk whose parent version is damaged (40) is read whole, and still right.
  Scribble(*image_, 5 * kChunk, kChunk, 4);
  Scribble(*image_, 12 * kChunk + 7, 9, 5);
  Scribble(*image_, 40 * kChunk + 1, 1, 6);
  auto index = repo_->GetIndex(inc.index);
  const std::string name = Codec::ChunkName(index->chunks[40]);
  auto blob = store_->Get(name);
  (*blob)[blob->size() / 2] ^= 0x10;
  ASSERT_TRUE(store_->Put(name, *blob).ok());
  const Manifest inc2 =
      Incremental(inc, {{5 * kChunk, kChunk}, {12 * kChunk + 7, 9}, {40 * kChunk + 1, 1}});
  EXPECT_EQ(inc2.stats.read_bytes, kChunk + 9 + kChunk);
  const std::vector<uint8_t> at_inc2 = ReadAll(*image_);
  auto target = MakeMemoryDevice(kSize);
  RestoreSpec spec;
  spec.target_is_zeroed = true;
  ASSERT_TRUE(RunRestore(*repo_, inc2, *target, spec).ok());
  EXPECT_EQ(ReadAll(*target), at_inc2);
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

// A blob sealed from other bytes than its name's (a writer's bug: the seal is right, the content
// is not what was hashed) opens fine, so a plain restore, which checks seals, writes it; the
// target check (`verify`) and the per-chunk re-hash (`check_digests`) each catch it, as does the
// repository's Verify.
TEST_F(BackupTest, ABlobOfOtherBytesIsCaughtByVerifyAndByCheckDigests) {
  const Manifest full = Full();
  auto index = repo_->GetIndex(full.index);
  ASSERT_TRUE(index.ok());
  const Digest id = index->chunks[5];
  std::vector<uint8_t> other(kChunk, 0x5a);
  ASSERT_TRUE(PutForgedChunk(*repo_, id, other).ok());
  for (auto [verify, check] : {std::pair{true, false}, std::pair{false, true}}) {
    auto target = MakeMemoryDevice(kSize);
    RestoreSpec spec;
    spec.verify = verify;
    spec.check_digests = check;
    Status s = RunRestore(*repo_, full, *target, spec);
    EXPECT_EQ(s.errnum(), check ? EBADMSG : EIO) << s.ToString();
  }
  auto problems = repo_->Verify({full.id}, 2);
  ASSERT_TRUE(problems.ok()) << problems.status().ToString();
  EXPECT_FALSE(problems->empty());
}

// A repository of kChunk chunks on `store`.
Result<std::unique_ptr<Repository>> OpenRepositoryOver(std::unique_ptr<ObjectStore> store) {
  NewRepoOptions o;
  o.chunk_size = kChunk;
  BLKSNAP_RETURN_IF_ERROR(Repository::Init(*store, o, std::nullopt));
  return Repository::Open(std::move(store), std::nullopt);
}

// A repository of kChunk chunks on a FaultyStore over memory; *faulty = that store.
Result<std::unique_ptr<Repository>> OpenFaultyRepository(FaultyStore** faulty) {
  auto owner = std::make_unique<FaultyStore>(NewMemoryStore());
  *faulty = owner.get();
  return OpenRepositoryOver(std::move(owner));
}

// A store that counts the chunk reads in flight, and a backup's chunk lookups (each held 10 ms,
// so they overlap when the workers issue them together), and says it is remote or not and
// how many writes it prefers.
class CountingStore : public FaultyStore {
 public:
  CountingStore(std::unique_ptr<ObjectStore> base, bool remote, int preferred_writes = 0)
      : FaultyStore(std::move(base)), remote_(remote), preferred_writes_(preferred_writes) {}
  bool remote() const override { return remote_; }
  int preferred_writes() const override { return preferred_writes_; }
  Result<size_t> ReadInto(const std::string& name, std::span<uint8_t> out) override {
    Hold();
    return FaultyStore::ReadInto(name, out);
  }
  Result<bool> Exists(const std::string& name) override {
    if (name.starts_with("chunks/")) Hold();
    return FaultyStore::Exists(name);
  }
  int most() const { return most_.load(); }
  void ResetMost() { most_ = 0; }

 private:
  void Hold() {
    const int now = ++in_flight_;
    for (int seen = most_.load(); now > seen && !most_.compare_exchange_weak(seen, now);) {
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    --in_flight_;
  }

  const bool remote_;
  const int preferred_writes_;
  std::atomic<int> in_flight_{0}, most_{0};
};

// A repository over `store`, and in it a backup with `threads` workers of a kSize image
// scribbled with `seed`, into *image.
Result<Manifest> BackupScribbledOver(std::unique_ptr<ObjectStore> store, int threads, int seed,
                                     std::unique_ptr<Repository>* repo,
                                     std::shared_ptr<BlockDevice>* image) {
  BLKSNAP_ASSIGN_OR_RETURN(*repo, OpenRepositoryOver(std::move(store)));
  *image = MakeMemoryDevice(kSize);
  Scribble(**image, 0, kSize, seed);
  BackupSpec b;
  b.device = "vda";
  b.threads = threads;
  return RunBackup(**repo, **image, b);
}

// A backup without a thread count runs the store's preferred_writes workers (S3: 16), or
// kBackupThreads when the store has no preference; a count given wins.
TEST(BackupConcurrencyTest, TheStoresPreferenceSetsTheDefaultWorkers) {
  struct Case {
    int preferred, threads, at_least, at_most;
  };
  // With the preference, more reads in flight than the default's workers could make (all 12
  // only where the workers start together: under TSan on two loaded CPUs 8 were seen).
  for (const Case& k :
       {Case{12, 0, kBackupThreads + 1, 12}, Case{0, 0, 2, kBackupThreads}, Case{12, 2, 1, 2}}) {
    SCOPED_TRACE(testing::Message() << "preferred " << k.preferred << " threads " << k.threads);
    auto owner = std::make_unique<CountingStore>(NewMemoryStore(), true, k.preferred);
    CountingStore* counting = owner.get();
    std::unique_ptr<Repository> repo;
    std::shared_ptr<BlockDevice> image;
    auto m = BackupScribbledOver(std::move(owner), k.threads, 13, &repo, &image);
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    EXPECT_GE(counting->most(), k.at_least);  // some slack for a slow start
    EXPECT_LE(counting->most(), k.at_most);
  }
}

// From a remote store every one of `threads` workers reads (the network's latency is what they
// overlap); from a local one only the decoders do, one per CPU.
TEST(RestoreConcurrencyTest, ARemoteStoreHasThreadsReadsInFlight) {
  for (bool remote : {true, false}) {
    SCOPED_TRACE(remote ? "remote" : "local");
    auto owner = std::make_unique<CountingStore>(NewMemoryStore(), remote);
    CountingStore* counting = owner.get();
    std::unique_ptr<Repository> repo;
    std::shared_ptr<BlockDevice> image;
    auto m = BackupScribbledOver(std::move(owner), 0, 12, &repo, &image);
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    auto target = MakeMemoryDevice(kSize);
    RestoreSpec spec;
    spec.threads = 6;
    if (!remote) spec.decoders = 2;  // whatever this machine's CPUs
    counting->ResetMost();           // the backup's lookups counted too
    ASSERT_TRUE(RunRestore(*repo, *m, *target, spec).ok());
    EXPECT_EQ(ReadAll(*target), ReadAll(*image));
    if (remote) {
      EXPECT_GE(counting->most(), 3);  // 6 workers reading: more than 2 decoders; slack to start
    } else {
      EXPECT_LE(counting->most(), 2);
    }
  }
}

// A backup's chunks go through a batch that the store may keep unsynced until Commit: a power
// loss just before the index (or the manifest) is stored must not lose a chunk they reference.
// The FaultyStore drops every batch object still uncommitted at that instant.
TEST(BackupDurabilityTest, ChunksAreDurableBeforeTheIndexAndTheManifest) {
  for (const char* crash_before : {"indexes/", "backups/"}) {
    SCOPED_TRACE(crash_before);
    FaultyStore* faulty_ptr = nullptr;
    auto repo = OpenFaultyRepository(&faulty_ptr);
    ASSERT_TRUE(repo.ok()) << repo.status().ToString();
    FaultyStore& faulty = *faulty_ptr;
    auto image = MakeMemoryDevice(kSize);
    Scribble(*image, 0, kSize, 11);
    faulty.CrashBefore(crash_before);
    BackupSpec spec;
    spec.device = "vda";
    auto m = RunBackup(**repo, *image, spec);
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    auto problems = (*repo)->Verify({m->id}, 2);
    ASSERT_TRUE(problems.ok()) << problems.status().ToString();
    EXPECT_TRUE(problems->empty())
        << problems->size() << " problems, the first: " << problems->front().error.ToString();
  }
}

// A backup whose lease lapsed (the store unreachable; a gc may have freed chunks it found
// present) publishes nothing and says why; the next one, with its lease held, does.
TEST(BackupDurabilityTest, ABackupWhoseLeaseLapsedIsNotPublished) {
  FaultyStore* faulty_ptr = nullptr;
  auto repo = OpenFaultyRepository(&faulty_ptr);
  ASSERT_TRUE(repo.ok()) << repo.status().ToString();
  FaultyStore& faulty = *faulty_ptr;
  auto image = MakeMemoryDevice(kSize);
  Scribble(*image, 0, kSize, 12);
  BackupSpec spec;
  spec.device = "vda";
  faulty.LapseLeases();
  auto lapsed = RunBackup(**repo, *image, spec);
  ASSERT_FALSE(lapsed.ok());
  EXPECT_EQ(lapsed.status().errnum(), EAGAIN) << lapsed.status().ToString();
  EXPECT_TRUE((*repo)->ListBackups()->empty());
  faulty.Clear();
  auto again = RunBackup(**repo, *image, spec);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ((*repo)->ListBackups()->size(), 1u);
}

// A FaultyStore batch loses what it holds in a crash: the test above can fail.
TEST(BackupDurabilityTest, AFaultyBatchLosesUncommittedObjectsInACrash) {
  FaultyStore faulty(NewMemoryStore());
  auto batch = faulty.NewPutBatch();
  const std::vector<uint8_t> data = {1, 2, 3};
  ASSERT_TRUE(batch->Put("chunks/aa/lost", data).ok());
  faulty.CrashBefore("indexes/");
  ASSERT_TRUE(faulty.Put("indexes/x", data).ok());
  ASSERT_TRUE(batch->Put("chunks/aa/kept", data).ok());
  ASSERT_TRUE(batch->Commit().ok());
  EXPECT_FALSE(*faulty.Exists("chunks/aa/lost"));
  EXPECT_TRUE(*faulty.Exists("chunks/aa/kept"));
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

TEST_F(BackupTest, ABackupImageReadsAsTheBackupAndReportsZeroChunksAsHoles) {
  const std::vector<uint8_t> before = ReadAll(*image_);
  const Manifest full = Full();
  Scribble(*image_, 0, kSize, 99);
  std::shared_ptr<Repository> shared(std::move(repo_));
  BackupImage image(shared, *shared->GetIndex(full.index), 2);
  EXPECT_EQ(image.size(), kSize);
  EXPECT_EQ(ReadAll(image), before);
  // Unaligned reads across chunk boundaries, through a cache of two chunks.
  std::mt19937 rng(3);
  for (int i = 0; i < 200; ++i) {
    const uint64_t off = rng() % kSize;
    const uint64_t len = std::min<uint64_t>(kSize - off, rng() % (3 * kChunk) + 1);
    std::vector<uint8_t> got(len);
    ASSERT_TRUE(image.Read(off, got).ok());
    ASSERT_TRUE(std::equal(got.begin(), got.end(), before.begin() + off)) << off << "+" << len;
  }
  auto extents = image.BlockStatus(0, kSize);
  ASSERT_TRUE(extents.ok());
  ASSERT_EQ(extents->size(), 3u);  // data, the zero chunks 10..19, data
  EXPECT_EQ((*extents)[1].offset, 10 * kChunk);
  EXPECT_EQ((*extents)[1].length, 10 * kChunk);
  EXPECT_EQ((*extents)[1].flags, kExtentHole | kExtentZero);
  EXPECT_EQ(image.Write(0, std::span<const uint8_t>(before.data(), 512), 0).errnum(), EROFS);
  // A damaged chunk fails the reads of it (EIO), never returns other bytes.
  const std::string name = Codec::ChunkName(shared->GetIndex(full.index)->chunks[30]);
  auto blob = store_->Get(name);
  (*blob)[blob->size() - 1] ^= 1;
  ASSERT_TRUE(store_->Put(name, *blob).ok());
  BackupImage fresh(shared, *shared->GetIndex(full.index), 2);
  std::vector<uint8_t> buf(4096);
  EXPECT_EQ(fresh.Read(30 * kChunk + 100, buf).errnum(), EIO);
  EXPECT_TRUE(fresh.Read(29 * kChunk, buf).ok());
}

}  // namespace
}  // namespace blksnap::repo
