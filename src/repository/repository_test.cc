// Tests of the Repository (layer 3): init/open and keys, chunk round trips and dedup from many
// threads, verify of damaged and missing chunks, prune, gc (exactly the unreferenced objects, the
// backup lease, damaged manifests) and a backup killed before its manifest. They run on the
// memory store, the FaultyStore wrapper and a local store in a temporary directory.
#include "repository/repository.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <random>
#include <set>
#include <thread>

#include "repository/repository_format.h"
#include "repository/repository_test_util.h"

namespace blksnap::repo {
namespace {

using std::chrono::hours;
using Clock = std::chrono::system_clock;

const std::vector<uint8_t> kKey = {'s', 'e', 'c', 'r', 'e', 't'};

class TempDir {
 public:
  TempDir() {
    std::string tmpl = ::testing::TempDir() + "/repo_core_test.XXXXXX";
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

NewRepoOptions TestOptions() {
  NewRepoOptions options;
  options.chunk_size = kMinChunkSize;
  options.kdf_iterations = kMinKdfIterations;
  return options;
}

// A chunk of kMinChunkSize bytes derived from `seed` (compressible, distinct per seed).
std::vector<uint8_t> Chunk(int seed) {
  std::vector<uint8_t> data(kMinChunkSize);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>((i / 7) * 31 + seed);
  data[0] = static_cast<uint8_t>(seed);
  data[1] = static_cast<uint8_t>(seed >> 8);
  return data;
}

std::unique_ptr<Repository> MakeRepo(std::unique_ptr<ObjectStore> store, bool encrypted = false) {
  std::optional<std::span<const uint8_t>> key;
  if (encrypted) key = kKey;
  EXPECT_TRUE(Repository::Init(*store, TestOptions(), key).ok());
  auto repo = Repository::Open(std::move(store), key);
  EXPECT_TRUE(repo.ok()) << repo.status().ToString();
  return repo.ok() ? std::move(*repo) : nullptr;
}

// Stores the chunks Chunk(seed) for each seed (0: a zero chunk) and their index; returns the
// manifest of a backup of `device` taken `age` hours ago, not yet published.
Manifest StoreChunks(Repository& repo, const std::vector<int>& seeds, int age = 0,
                     const std::string& device = "vda") {
  Index index;
  index.chunk_size = repo.chunk_size();
  index.device_size = seeds.size() * repo.chunk_size();
  for (int seed : seeds) {
    if (seed == 0) {
      index.chunks.push_back(Digest{});
      continue;
    }
    auto put = repo.PutChunk(Chunk(seed));
    EXPECT_TRUE(put.ok()) << put.status().ToString();
    index.chunks.push_back(put.ok() ? put->id : Digest{});
  }
  auto index_id = repo.PutIndex(index);
  EXPECT_TRUE(index_id.ok()) << index_id.status().ToString();
  const Clock::time_point time = Clock::now() - hours(age);
  Manifest m;
  m.id = NewBackupId(time);
  m.device = device;
  m.host = "test";
  m.device_size = index.device_size;
  m.chunk_size = index.chunk_size;
  m.time = FormatRfc3339(time);
  m.full = true;
  m.full_reason = "first";
  m.index = index_id.ok() ? *index_id : Digest{};
  return m;
}

// StoreChunks, then publishes the manifest; returns the backup id.
std::string Backup(Repository& repo, const std::vector<int>& seeds, int age = 0,
                   const std::string& device = "vda") {
  const Manifest m = StoreChunks(repo, seeds, age, device);
  Status status = repo.PublishBackup(m);
  EXPECT_TRUE(status.ok()) << status.ToString();
  return m.id;
}

Digest IdOf(Repository& repo, int seed) { return repo.codec().ChunkId(Chunk(seed)); }

void FlipByte(ObjectStore& store, const std::string& name, size_t offset) {
  auto blob = store.Get(name);
  ASSERT_TRUE(blob.ok()) << blob.status().ToString();
  ASSERT_LT(offset, blob->size());
  (*blob)[offset] ^= 0x40;
  ASSERT_TRUE(store.Put(name, *blob).ok());
}

std::vector<std::string> Names(ObjectStore& store, const std::string& prefix) {
  auto names = store.List(prefix);
  EXPECT_TRUE(names.ok());
  return names.ok() ? *names : std::vector<std::string>{};
}

TEST(RepositoryTest, InitTwiceIsEexist) {
  auto store = NewMemoryStore();
  ASSERT_TRUE(Repository::Init(*store, TestOptions(), std::nullopt).ok());
  Status again = Repository::Init(*store, TestOptions(), kKey);
  EXPECT_EQ(again.errnum(), EEXIST) << again.ToString();
  EXPECT_EQ(Repository::Open(NewMemoryStore(), std::nullopt).status().errnum(), ENOENT);
}

TEST(RepositoryTest, WrongKeyIsEacces) {
  auto store = NewMemoryStore();
  ObjectStore& raw = *store;
  ASSERT_TRUE(Repository::Init(raw, TestOptions(), kKey).ok());
  const std::vector<uint8_t> wrong = {'w', 'r', 'o', 'n', 'g'};
  auto config = raw.Get("config");
  ASSERT_TRUE(config.ok());
  // Each Open takes the store: give each a copy of the config.
  auto copy = [&] {
    auto s = NewMemoryStore();
    EXPECT_TRUE(s->Put("config", *config).ok());
    return s;
  };
  EXPECT_EQ(Repository::Open(copy(), wrong).status().errnum(), EACCES);
  EXPECT_EQ(Repository::Open(copy(), std::nullopt).status().errnum(), EACCES);
  auto repo = Repository::Open(std::move(store), kKey);
  ASSERT_TRUE(repo.ok()) << repo.status().ToString();
  EXPECT_TRUE((*repo)->codec().encrypted());
}

// Round trips on both backends, plain and encrypted; stats count the stored blobs
// (ObjectStore::Size).
class RepositoryRoundTrip : public ::testing::TestWithParam<std::tuple<bool, bool>> {
 protected:
  void SetUp() override {
    const auto [local, encrypted] = GetParam();
    std::unique_ptr<ObjectStore> store;
    if (local) {
      auto opened = OpenLocalStore(dir_.path());
      ASSERT_TRUE(opened.ok()) << opened.status().ToString();
      store = std::move(*opened);
    } else {
      store = NewMemoryStore();
    }
    repo_ = MakeRepo(std::move(store), encrypted);
    ASSERT_NE(repo_, nullptr);
  }
  TempDir dir_;
  std::unique_ptr<Repository> repo_;
};

TEST_P(RepositoryRoundTrip, PutGetAndDedup) {
  Repository& repo = *repo_;
  uint64_t stored_bytes = 0;
  for (int seed = 1; seed <= 3; ++seed) {
    auto put = repo.PutChunk(Chunk(seed));
    ASSERT_TRUE(put.ok()) << put.status().ToString();
    EXPECT_TRUE(put->stored);
    EXPECT_GT(put->stored_bytes, 0u);
    stored_bytes += put->stored_bytes;
    auto again = repo.PutChunk(Chunk(seed));
    ASSERT_TRUE(again.ok());
    EXPECT_FALSE(again->stored);
    EXPECT_EQ(again->stored_bytes, 0u);
    EXPECT_EQ(again->id, put->id);
    auto got = repo.GetChunk(put->id);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    EXPECT_EQ(*got, Chunk(seed));
  }
  auto stats = repo.GetStats();
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_EQ(stats->chunks, 3u);
  EXPECT_EQ(stats->stored_bytes, stored_bytes);
  EXPECT_EQ(stats->backups, 0u);
  EXPECT_EQ(repo.GetChunk(IdOf(repo, 9)).status().errnum(), ENOENT);

  const std::string id = Backup(repo, {1, 0, 2});
  auto manifest = repo.GetBackup(id);
  ASSERT_TRUE(manifest.ok()) << manifest.status().ToString();
  auto index = repo.GetIndex(manifest->index);
  ASSERT_TRUE(index.ok()) << index.status().ToString();
  EXPECT_EQ(index->chunks, (std::vector<Digest>{IdOf(repo, 1), Digest{}, IdOf(repo, 2)}));
  stats = repo.GetStats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->backups, 1u);
  EXPECT_EQ(stats->logical_bytes, 3 * repo.chunk_size());
  EXPECT_GT(stats->stored_bytes, stored_bytes);  // plus the index
}

INSTANTIATE_TEST_SUITE_P(Stores, RepositoryRoundTrip,
                         ::testing::Combine(::testing::Bool(), ::testing::Bool()));

TEST(RepositoryTest, EightThreadsPutAndGetTheSameChunks) {
  auto repo = MakeRepo(NewMemoryStore(), true);
  ASSERT_NE(repo, nullptr);
  constexpr int kThreads = 8, kShared = 16;
  std::atomic<int> stored_shared{0}, failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int seed = 1; seed <= kShared; ++seed) {
        auto put = repo->PutChunk(Chunk(seed));
        auto own = repo->PutChunk(Chunk(1000 + t * kShared + seed));
        if (!put.ok() || !own.ok() || !own->stored) ++failures;
        if (put.ok() && put->stored) ++stored_shared;
        auto got = repo->GetChunk(IdOf(*repo, seed));
        if (!got.ok() || *got != Chunk(seed)) ++failures;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(stored_shared.load(), kShared);  // each shared chunk stored by exactly one thread
  EXPECT_EQ(Names(repo->store(), "chunks/").size(), size_t{kShared + kThreads * kShared});
}

TEST(RepositoryTest, VerifyReportsADamagedChunkWithEveryBackupUsingIt) {
  auto repo = MakeRepo(NewMemoryStore());
  ASSERT_NE(repo, nullptr);
  const std::string a = Backup(*repo, {1, 2}, 3);
  const std::string b = Backup(*repo, {2, 3}, 2);
  const std::string c = Backup(*repo, {4, 0}, 1);
  auto clean = repo->Verify({}, 4);
  ASSERT_TRUE(clean.ok()) << clean.status().ToString();
  EXPECT_TRUE(clean->empty());

  const Digest shared = IdOf(*repo, 2);
  FlipByte(repo->store(), Codec::ChunkName(shared), kBlobHeaderSize + 5);
  EXPECT_EQ(repo->GetChunk(shared).status().errnum(), EBADMSG);

  uint64_t last_done = 0, last_total = 0;
  auto problems = repo->Verify({}, 3, [&](uint64_t done, uint64_t total) {
    EXPECT_EQ(done, last_done + 1);
    last_done = done;
    last_total = total;
  });
  ASSERT_TRUE(problems.ok()) << problems.status().ToString();
  ASSERT_EQ(problems->size(), 1u);
  EXPECT_EQ((*problems)[0].chunk, shared);
  EXPECT_EQ((*problems)[0].error.errnum(), EBADMSG);
  EXPECT_EQ((*problems)[0].backups, (std::vector<std::string>{a, b}));
  EXPECT_EQ(last_total, 4u);  // chunks 1, 2, 3, 4 once each
  EXPECT_EQ(last_done, 4u);

  auto only_c = repo->Verify({c}, 2);
  ASSERT_TRUE(only_c.ok());
  EXPECT_TRUE(only_c->empty());
  auto only_a = repo->Verify({a}, 2);
  ASSERT_TRUE(only_a.ok());
  ASSERT_EQ(only_a->size(), 1u);
  EXPECT_EQ((*only_a)[0].backups, std::vector<std::string>{a});
  EXPECT_EQ(repo->Verify({"20000101t000000z-00000000"}, 1).status().errnum(), ENOENT);
}

// A blob that unseals but holds other bytes than its name says (as a Codec bug or a
// deliberately edited plain repository would leave) is refused by the hash check.
TEST(RepositoryTest, GetChunkChecksTheContentAgainstTheId) {
  auto repo = MakeRepo(NewMemoryStore());
  ASSERT_NE(repo, nullptr);
  const Digest id = IdOf(*repo, 1);
  ASSERT_TRUE(PutForgedChunk(*repo, id, Chunk(2)).ok());
  auto got = repo->GetChunk(id);
  EXPECT_EQ(got.status().errnum(), EBADMSG);
  EXPECT_NE(got.status().message().find("does not match"), std::string_view::npos)
      << got.status().ToString();
  std::vector<uint8_t> buffer(Chunk(1).size());
  auto read = repo->ReadChunk(id, buffer);
  EXPECT_EQ(read.status().errnum(), EBADMSG);
  EXPECT_NE(read.status().message().find("does not match"), std::string_view::npos)
      << read.status().ToString();
}

// ReadChunk: the chunk into the caller's buffer, its length returned; missing is ENOENT, a
// buffer too small for it EBADMSG.
TEST(RepositoryTest, ReadChunkFillsTheCallersBuffer) {
  auto repo = MakeRepo(NewMemoryStore());
  ASSERT_NE(repo, nullptr);
  const std::vector<uint8_t> data = Chunk(3);
  auto put = repo->PutChunk(data);
  ASSERT_TRUE(put.ok()) << put.status().ToString();
  std::vector<uint8_t> buffer(data.size() + 10, 0xaa);
  auto n = repo->ReadChunk(put->id, buffer);
  ASSERT_TRUE(n.ok()) << n.status().ToString();
  EXPECT_EQ(*n, data.size());
  EXPECT_TRUE(std::equal(data.begin(), data.end(), buffer.begin()));
  EXPECT_EQ(repo->ReadChunk(put->id, std::span(buffer).first(data.size() - 1)).status().errnum(),
            EBADMSG);
  EXPECT_EQ(repo->ReadChunk(IdOf(*repo, 4), buffer).status().errnum(), ENOENT);
}

// The frame forms: PutChunk(frame) stores what PutChunk stores (the same id, read back by
// GetChunk); ReadChunk(frame) reads it into frame.plain(), refuses a chunk longer than the frame
// (EBADMSG), a forged one (EBADMSG, the hash check) and a missing one (ENOENT).
TEST(RepositoryTest, ChunkFramesPutAndReadChunks) {
  std::vector<uint8_t> random(kMinChunkSize);
  std::mt19937 rng(5);
  for (auto& b : random) b = static_cast<uint8_t>(rng());
  for (int round = 0; round < 4; ++round) {
    const bool encrypted = round & 1;
    auto repo = MakeRepo(NewMemoryStore(), encrypted);
    ASSERT_NE(repo, nullptr);
    // Compressible, or stored raw (sealed and read in place in a plain repository).
    const std::vector<uint8_t> data = round & 2 ? random : Chunk(3);
    ChunkFrame frame(data.size());
    ASSERT_TRUE(frame.ok());
    std::copy(data.begin(), data.end(), frame.plain().begin());
    std::vector<uint8_t> sealed;
    auto put = repo->PutChunk(frame, data.size(), nullptr, &sealed);
    ASSERT_TRUE(put.ok()) << put.status().ToString();
    EXPECT_TRUE(put->stored);
    EXPECT_EQ(put->id, repo->codec().ChunkId(data));
    EXPECT_EQ(*repo->GetChunk(put->id), data);

    ChunkFrame in(data.size());
    ASSERT_TRUE(in.ok());
    auto n = repo->ReadChunk(put->id, in);
    ASSERT_TRUE(n.ok()) << n.status().ToString();
    ASSERT_EQ(*n, data.size());
    EXPECT_TRUE(std::equal(data.begin(), data.end(), in.plain().begin()));
    ChunkFrame small(data.size() - 100);
    ASSERT_TRUE(small.ok());
    EXPECT_EQ(repo->ReadChunk(put->id, small).status().errnum(), EBADMSG);
    EXPECT_EQ(repo->ReadChunk(IdOf(*repo, 4), in).status().errnum(), ENOENT);

    const Digest id = IdOf(*repo, 1);
    ASSERT_TRUE(PutForgedChunk(*repo, id, Chunk(2)).ok());
    auto forged = repo->ReadChunk(id, in);
    EXPECT_EQ(forged.status().errnum(), EBADMSG);
    EXPECT_NE(forged.status().message().find("does not match"), std::string_view::npos)
        << forged.status().ToString();
  }
}

TEST(RepositoryTest, VerifyReportsAMissingChunk) {
  auto repo = MakeRepo(NewMemoryStore());
  ASSERT_NE(repo, nullptr);
  const std::string a = Backup(*repo, {1, 2, 3});
  ASSERT_TRUE(repo->store().Delete(Codec::ChunkName(IdOf(*repo, 3))).ok());
  auto problems = repo->Verify({}, 8);
  ASSERT_TRUE(problems.ok());
  ASSERT_EQ(problems->size(), 1u);
  EXPECT_EQ((*problems)[0].chunk, IdOf(*repo, 3));
  EXPECT_EQ((*problems)[0].error.errnum(), ENOENT) << (*problems)[0].error.ToString();
  EXPECT_EQ((*problems)[0].backups, std::vector<std::string>{a});
}

// Two backups of the same data share one index object; damage to it is one problem naming both.
TEST(RepositoryTest, VerifyReportsADamagedIndexWithEveryBackupUsingIt) {
  auto repo = MakeRepo(NewMemoryStore(), true);
  ASSERT_NE(repo, nullptr);
  const std::string a = Backup(*repo, {1, 2}, 2);
  const std::string b = Backup(*repo, {1, 2}, 1);
  const std::string c = Backup(*repo, {3});
  const Digest index = repo->GetBackup(a)->index;
  ASSERT_EQ(repo->GetBackup(b)->index, index);
  FlipByte(repo->store(), "indexes/" + index.Hex(), kBlobHeaderSize + 1);
  EXPECT_EQ(repo->GetIndex(index).status().errnum(), EBADMSG);
  auto problems = repo->Verify({}, 2);
  ASSERT_TRUE(problems.ok()) << problems.status().ToString();
  ASSERT_EQ(problems->size(), 1u);
  EXPECT_EQ((*problems)[0].chunk, index);
  EXPECT_EQ((*problems)[0].error.errnum(), EBADMSG);
  EXPECT_EQ((*problems)[0].backups, (std::vector<std::string>{a, b}));
  auto only_c = repo->Verify({c}, 1);
  ASSERT_TRUE(only_c.ok());
  EXPECT_TRUE(only_c->empty());
}

TEST(RepositoryTest, PruneKeepLastOneRemovesOlderManifests) {
  auto repo = MakeRepo(NewMemoryStore());
  ASSERT_NE(repo, nullptr);
  const std::string old1 = Backup(*repo, {1}, 3);
  const std::string old2 = Backup(*repo, {2}, 2);
  const std::string newest = Backup(*repo, {3}, 1);
  const std::string other = Backup(*repo, {4}, 5, "vdb");  // another device keeps its own
  EXPECT_EQ(repo->Prune(RetentionPolicy{}, false).status().errnum(), EINVAL);
  RetentionPolicy policy;
  policy.keep_last = 1;
  auto dry = repo->Prune(policy, true);
  ASSERT_TRUE(dry.ok());
  EXPECT_EQ(*dry, (std::vector<std::string>{old1, old2}));
  EXPECT_EQ(Names(repo->store(), "backups/").size(), 4u);
  auto removed = repo->Prune(policy, false);
  ASSERT_TRUE(removed.ok()) << removed.status().ToString();
  EXPECT_EQ(*removed, (std::vector<std::string>{old1, old2}));
  auto left = repo->ListBackups();
  ASSERT_TRUE(left.ok());
  std::set<std::string> ids;
  for (const Manifest& m : *left) ids.insert(m.id);
  EXPECT_EQ(ids, (std::set<std::string>{newest, other}));
}

// Gc on both backends: exactly the unreferenced chunks and indexes go.
class RepositoryGc : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    std::unique_ptr<ObjectStore> store = NewMemoryStore();
    if (GetParam()) {
      auto opened = OpenLocalStore(dir_.path());
      ASSERT_TRUE(opened.ok()) << opened.status().ToString();
      store = std::move(*opened);
    }
    repo_ = MakeRepo(std::move(store));
    ASSERT_NE(repo_, nullptr);
  }
  TempDir dir_;
  std::unique_ptr<Repository> repo_;
};

TEST_P(RepositoryGc, DeletesExactlyTheUnreferencedObjects) {
  Repository& repo = *repo_;
  const std::string old = Backup(repo, {1, 2, 0}, 3);
  const std::string mid = Backup(repo, {2, 3}, 2);
  const std::string now = Backup(repo, {3, 4, 5}, 1);
  const Digest old_index = repo.GetBackup(old)->index;
  auto nothing = repo.Gc();
  ASSERT_TRUE(nothing.ok()) << nothing.status().ToString();
  EXPECT_EQ(nothing->chunks_deleted + nothing->indexes_deleted, 0u);
  EXPECT_EQ(nothing->chunks_kept, 5u);

  ASSERT_TRUE(repo.store().Delete("backups/" + old).ok());  // as prune does
  const uint64_t chunk1_size = *repo.store().Size(Codec::ChunkName(IdOf(repo, 1)));
  const uint64_t index_size = *repo.store().Size("indexes/" + old_index.Hex());
  auto gc = repo.Gc();
  ASSERT_TRUE(gc.ok()) << gc.status().ToString();
  EXPECT_EQ(gc->chunks_deleted, 1u);  // chunk 1; chunk 2 is still mid's
  EXPECT_EQ(gc->indexes_deleted, 1u);
  EXPECT_EQ(gc->chunks_kept, 4u);
  EXPECT_EQ(gc->bytes_freed, chunk1_size + index_size);
  std::vector<std::string> expected;
  for (int seed : {2, 3, 4, 5}) expected.push_back(Codec::ChunkName(IdOf(repo, seed)));
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(Names(repo.store(), "chunks/"), expected);
  EXPECT_EQ(Names(repo.store(), "indexes/").size(), 2u);
  for (const std::string& id : {mid, now}) {
    auto index = repo.GetIndex(repo.GetBackup(id)->index);
    ASSERT_TRUE(index.ok()) << index.status().ToString();
    for (const Digest& chunk : index->chunks) {
      EXPECT_TRUE(repo.GetChunk(chunk).ok()) << id << " " << chunk.Hex();
    }
  }
  auto problems = repo.Verify({}, 2);
  ASSERT_TRUE(problems.ok());
  EXPECT_TRUE(problems->empty());
}

TEST_P(RepositoryGc, RefusesWhileABackupHoldsTheLease) {
  Repository& repo = *repo_;
  Backup(repo, {1});
  ASSERT_TRUE(repo.PutChunk(Chunk(2)).ok());  // unreferenced
  auto lease = repo.BackupLease();
  ASSERT_TRUE(lease.ok()) << lease.status().ToString();
  auto busy = repo.Gc();
  EXPECT_EQ(busy.status().errnum(), EBUSY) << busy.status().ToString();
  EXPECT_TRUE(*repo.store().Exists(Codec::ChunkName(IdOf(repo, 2))));
  lease->reset();
  auto gc = repo.Gc();
  ASSERT_TRUE(gc.ok()) << gc.status().ToString();
  EXPECT_EQ(gc->chunks_deleted, 1u);
}

TEST_P(RepositoryGc, RefusesWithADamagedManifest) {
  Repository& repo = *repo_;
  const std::string a = Backup(repo, {1}, 2);
  const std::string b = Backup(repo, {2}, 1);
  ASSERT_TRUE(repo.PutChunk(Chunk(3)).ok());  // unreferenced
  FlipByte(repo.store(), "backups/" + b, kBlobHeaderSize + 3);
  std::vector<std::pair<std::string, Status>> damaged;
  auto listed = repo.ListBackups(&damaged);
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].id, a);
  ASSERT_EQ(damaged.size(), 1u);
  EXPECT_EQ(damaged[0].first, b);
  EXPECT_EQ(damaged[0].second.errnum(), EBADMSG);
  auto gc = repo.Gc();
  EXPECT_EQ(gc.status().errnum(), EBADMSG) << gc.status().ToString();
  EXPECT_EQ(Names(repo.store(), "chunks/").size(), 3u);  // nothing deleted
  // A manifest copied under another backup's name does not open (AAD = the object name).
  ASSERT_TRUE(repo.store().Put("backups/" + b, *repo.store().Get("backups/" + a)).ok());
  auto copied = repo.GetBackup(b);
  EXPECT_EQ(copied.status().errnum(), EBADMSG);
  // Refused by the seal already, before the id in the manifest is compared with the name.
  EXPECT_EQ(copied.status().message().find("names another"), std::string_view::npos)
      << copied.status().ToString();
}

// An index that cannot be read, or a stray object under "backups/", makes gc refuse as well.
TEST_P(RepositoryGc, RefusesWithAMissingIndexOrAStrayManifestName) {
  Repository& repo = *repo_;
  const std::string a = Backup(repo, {1});
  ASSERT_TRUE(repo.PutChunk(Chunk(2)).ok());  // unreferenced
  const std::string index = "indexes/" + repo.GetBackup(a)->index.Hex();
  auto saved = repo.store().Get(index);
  ASSERT_TRUE(saved.ok());
  ASSERT_TRUE(repo.store().Delete(index).ok());
  auto gc = repo.Gc();
  EXPECT_EQ(gc.status().errnum(), ENOENT) << gc.status().ToString();
  ASSERT_TRUE(repo.store().Put(index, *saved).ok());
  ASSERT_TRUE(repo.store().Put("backups/junk", std::vector<uint8_t>{1, 2, 3}).ok());
  gc = repo.Gc();
  EXPECT_EQ(gc.status().errnum(), EBADMSG) << gc.status().ToString();
  EXPECT_EQ(Names(repo.store(), "chunks/").size(), 2u);  // nothing deleted
  ASSERT_TRUE(repo.store().Delete("backups/junk").ok());
  gc = repo.Gc();
  ASSERT_TRUE(gc.ok()) << gc.status().ToString();
  EXPECT_EQ(gc->chunks_deleted, 1u);
}

INSTANTIATE_TEST_SUITE_P(Stores, RepositoryGc, ::testing::Bool());

// A backup that dies before publishing its manifest (here: the store fails the publish) leaves
// chunks and an index that no manifest references. The next backup reuses them (when it runs
// before gc); gc frees what no manifest references.
class RepositoryKilledBackup : public ::testing::TestWithParam<bool> {};

TEST_P(RepositoryKilledBackup, LeavesChunksToReuseOrCollect) {
  const bool next_backup_first = GetParam();
  auto faulty_owner = std::make_unique<FaultyStore>(NewMemoryStore());
  FaultyStore& faulty = *faulty_owner;
  auto repo = MakeRepo(std::move(faulty_owner), true);
  ASSERT_NE(repo, nullptr);
  const std::string kept = Backup(*repo, {1});

  faulty.FailAfter(StoreOp::kPut, 0, EIO, "backups/");
  {
    auto lease = repo->BackupLease();
    ASSERT_TRUE(lease.ok());
    EXPECT_EQ(repo->PublishBackup(StoreChunks(*repo, {2, 3, 4})).errnum(), EIO);
  }
  faulty.Clear();
  auto listed = repo->ListBackups();
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(listed->size(), 1u);
  EXPECT_EQ(Names(repo->store(), "chunks/").size(), 4u);

  std::vector<std::string> backups = {kept};
  if (next_backup_first) {
    // The next backup finds chunks 2 and 3 present and stores only 5.
    auto reuse = repo->PutChunk(Chunk(2));
    ASSERT_TRUE(reuse.ok());
    EXPECT_FALSE(reuse->stored);
    backups.push_back(Backup(*repo, {2, 3, 5}));
    EXPECT_EQ(Names(repo->store(), "chunks/").size(), 5u);
  }
  auto gc = repo->Gc();
  ASSERT_TRUE(gc.ok()) << gc.status().ToString();
  // Chunk 4 only, or 2, 3 and 4 when no backup reused them; the dead backup's index either way.
  EXPECT_EQ(gc->chunks_deleted, next_backup_first ? 1u : 3u);
  EXPECT_EQ(gc->indexes_deleted, 1u);
  EXPECT_EQ(gc->chunks_kept, next_backup_first ? 4u : 1u);
  EXPECT_FALSE(*repo->store().Exists(Codec::ChunkName(IdOf(*repo, 4))));
  EXPECT_EQ(Names(repo->store(), "indexes/").size(), backups.size());
  auto problems = repo->Verify(backups, 2);
  ASSERT_TRUE(problems.ok());
  EXPECT_TRUE(problems->empty());
}

INSTANTIATE_TEST_SUITE_P(NextBackupFirst, RepositoryKilledBackup, ::testing::Bool());

}  // namespace
}  // namespace blksnap::repo
