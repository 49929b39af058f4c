#include "repository/object_store.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "repository/repository_format.h"
#include "repository/store_contract_test.h"

namespace blksnap::repo {
namespace {

std::vector<uint8_t> Bytes(std::string_view s) { return {s.begin(), s.end()}; }

class TempDir {
 public:
  TempDir() {
    std::string tmpl = ::testing::TempDir() + "/repo_store_test.XXXXXX";
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// The common contract (store_contract_test.cc), run against both embedded backends.
INSTANTIATE_TEST_SUITE_P(
    Backends, StoreContractTest,
    ::testing::Values(StoreBackend{"Memory",
                                   [](const std::string&) -> Result<std::unique_ptr<ObjectStore>> {
                                     return NewMemoryStore();
                                   }},
                      StoreBackend{"Local",
                                   [](const std::string& dir) { return OpenLocalStore(dir); }}),
    StoreBackendName);

// ---- Local store only

class LocalStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = OpenLocalStore(dir_.path());
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(*store);
  }
  TempDir dir_;
  std::unique_ptr<ObjectStore> store_;
};

TEST_F(LocalStoreTest, OpenNeedsADirectory) {
  EXPECT_EQ(OpenLocalStore(dir_.path() + "/missing").status().errnum(), ENOENT);
  std::ofstream(dir_.path() + "/file") << "x";
  EXPECT_EQ(OpenLocalStore(dir_.path() + "/file").status().errnum(), ENOTDIR);
}

TEST_F(LocalStoreTest, AFileInTheWayIsNotADirectory) {
  ASSERT_TRUE(store_->Put("config", Bytes("x")).ok());
  EXPECT_EQ(store_->Put("config/x", Bytes("y")).errnum(), ENOTDIR);
  EXPECT_EQ(store_->Get("config/x").status().errnum(), ENOENT);
  EXPECT_TRUE(store_->Delete("config/x").ok());
}

TEST_F(LocalStoreTest, ObjectsAreFilesUnderTheirNames) {
  ASSERT_TRUE(store_->Put("chunks/ab/abcd", Bytes("chunk")).ok());
  std::ifstream in(dir_.path() + "/chunks/ab/abcd");
  std::string content;
  in >> content;
  EXPECT_EQ(content, "chunk");
  // No temporary is left behind by a successful Put or PutIfAbsent.
  ASSERT_TRUE(store_->PutIfAbsent("chunks/ab/abce", Bytes("x")).ok());
  ASSERT_FALSE(store_->PutIfAbsent("chunks/ab/abce", Bytes("y")).ok());
  size_t files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir_.path() + "/chunks/ab")) {
    EXPECT_FALSE(e.path().filename().string().starts_with(".")) << e.path();
    ++files;
  }
  EXPECT_EQ(files, 2u);
}

// A batch's objects are temporaries (invisible, not listed) until Commit, which makes them whole
// objects under their names; the 64th pending object commits the batch on its own.
TEST_F(LocalStoreTest, ABatchShowsItsObjectsAtCommit) {
  auto batch = store_->NewPutBatch();
  ASSERT_TRUE(batch->Put("chunks/ab/abcd", Bytes("chunk")).ok());
  ASSERT_TRUE(batch->Put("chunks/cd/cdef", Bytes("other")).ok());
  EXPECT_TRUE(batch->Contains("chunks/ab/abcd"));
  EXPECT_FALSE(*store_->Exists("chunks/ab/abcd"));
  EXPECT_TRUE(store_->List("")->empty());
  size_t temporaries = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir_.path())) {
    if (e.path().filename().string().starts_with(".tmp-")) ++temporaries;
  }
  EXPECT_EQ(temporaries, 2u);
  ASSERT_TRUE(batch->Commit().ok());
  EXPECT_FALSE(batch->Contains("chunks/ab/abcd"));
  EXPECT_EQ(*store_->Get("chunks/ab/abcd"), Bytes("chunk"));
  EXPECT_EQ(*store_->List(""), (std::vector<std::string>{"chunks/ab/abcd", "chunks/cd/cdef"}));
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir_.path())) {
    EXPECT_FALSE(e.path().filename().string().starts_with(".")) << e.path();
  }
  for (size_t i = 0; i < kLocalBatchObjects; ++i) {
    ASSERT_TRUE(batch->Put("chunks/ef/o" + std::to_string(i), Bytes("x")).ok());
  }
  EXPECT_EQ(store_->List("chunks/ef/")->size(), kLocalBatchObjects);
  EXPECT_TRUE(batch->Commit().ok());  // nothing left: a no-op
}

TEST_F(LocalStoreTest, ListSkipsTemporariesAndForeignFiles) {
  ASSERT_TRUE(store_->Put("chunks/ab/abcd", Bytes("chunk")).ok());
  // What a writer killed before its rename leaves, and files that are not objects.
  std::ofstream(dir_.path() + "/chunks/ab/.tmp-abce-0123456789abcdef") << "partial";
  std::ofstream(dir_.path() + "/chunks/ab/README") << "foreign";
  ASSERT_TRUE(store_->Lock(LockMode::kShared, false).ok());  // creates DIR/lock
  EXPECT_EQ(*store_->List(""), std::vector<std::string>{"chunks/ab/abcd"});
  EXPECT_EQ(*store_->List("chunks/ab/"), std::vector<std::string>{"chunks/ab/abcd"});
  EXPECT_EQ(store_->Exists("lock").status().errnum(), EINVAL);  // reserved, never an object
}

TEST_F(LocalStoreTest, ExclusiveLockRemovesStaleTemporaries) {
  const std::string stale = dir_.path() + "/chunks/ab/.tmp-abce-0000000000000001";
  const std::string fresh = dir_.path() + "/chunks/ab/.tmp-abcf-0000000000000002";
  ASSERT_TRUE(store_->Put("chunks/ab/abcd", Bytes("chunk")).ok());
  std::ofstream(stale) << "dead writer";
  std::ofstream(fresh) << "live writer";
  const timespec old_time[2] = {{time(nullptr) - kStaleTempSeconds - 5, 0},
                                {time(nullptr) - kStaleTempSeconds - 5, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, stale.c_str(), old_time, 0), 0);
  ASSERT_TRUE(store_->Lock(LockMode::kShared, false).ok());
  EXPECT_TRUE(std::filesystem::exists(stale));  // a shared lease removes nothing
  ASSERT_TRUE(store_->Lock(LockMode::kExclusive, false).ok());
  EXPECT_FALSE(std::filesystem::exists(stale));
  EXPECT_TRUE(std::filesystem::exists(fresh));
  EXPECT_EQ(*store_->Get("chunks/ab/abcd"), Bytes("chunk"));
}

TEST_F(LocalStoreTest, ConcurrentPutsOfOneChunk) {
  std::vector<uint8_t> chunk(256 << 10);
  for (size_t i = 0; i < chunk.size(); ++i) chunk[i] = static_cast<uint8_t>(i * 31);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0}, created{0}, exists{0};
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 20; ++round) {
        const std::string name = "chunks/7f/" + std::to_string(round);
        if (!store_->Put(name, chunk).ok()) ++failures;
        auto got = store_->Get(name);  // never a torn object
        if (!got.ok() || *got != chunk) ++failures;
        const Status s = store_->PutIfAbsent("backups/" + std::to_string(round), chunk);
        if (s.ok()) {
          ++created;
        } else if (s.errnum() == EEXIST) {
          ++exists;
        } else {
          ++failures;
        }
        (void)t;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(created.load(), 20);  // exactly one creator per name
  EXPECT_EQ(exists.load(), 7 * 20);
  EXPECT_EQ(store_->List("chunks/")->size(), 20u);
  size_t leftovers = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir_.path())) {
    if (e.path().filename().string().starts_with(".tmp-")) ++leftovers;
  }
  EXPECT_EQ(leftovers, 0u);
}

TEST_F(LocalStoreTest, LeasesConflictAcrossProcesses) {
  auto shared = store_->Lock(LockMode::kShared, false);
  ASSERT_TRUE(shared.ok());
  const pid_t child = ::fork();
  if (child == 0) {
    auto store = OpenLocalStore(dir_.path());
    if (!store.ok()) ::_exit(10);
    const int busy = (*store)->Lock(LockMode::kExclusive, false).status().errnum() == EBUSY;
    const int shared_ok = (*store)->Lock(LockMode::kShared, false).ok();
    ::_exit(busy && shared_ok ? 0 : 1);
  }
  int wstatus = 0;
  ASSERT_EQ(::waitpid(child, &wstatus, 0), child);
  ASSERT_TRUE(WIFEXITED(wstatus));
  EXPECT_EQ(WEXITSTATUS(wstatus), 0);
  shared->reset();
  EXPECT_TRUE(store_->Lock(LockMode::kExclusive, false).ok());
}

// A writer killed with SIGKILL at an arbitrary instant: every object it left is whole, and its
// temporary (if any) is never listed.
TEST_F(LocalStoreTest, AKilledWriterLeavesOnlyWholeObjects) {
  auto content = [](int i) { return std::vector<uint8_t>(1 << 20, static_cast<uint8_t>(i)); };
  for (int attempt = 0; attempt < 3; ++attempt) {
    int ready[2];
    ASSERT_EQ(::pipe(ready), 0);
    const pid_t child = ::fork();
    if (child == 0) {
      ::close(ready[0]);
      auto store = OpenLocalStore(dir_.path());
      for (int i = 0;; i = (i + 1) % 64) {
        if (!(*store)->Put("data/" + std::to_string(i), content(i)).ok()) ::_exit(1);
        if (i == 0 && ready[1] >= 0) {  // the first object is whole: the parent may kill now
          (void)!::write(ready[1], "x", 1);
          ::close(ready[1]);
          ready[1] = -1;
        }
      }
    }
    ::close(ready[1]);
    char byte;
    // Waits for the first whole object however slow the machine (a sanitizer build under load
    // took longer than a fixed 40 ms), then kills at some instant of the following writes.
    ASSERT_EQ(::read(ready[0], &byte, 1), 1) << "the writer failed before its first object";
    ::close(ready[0]);
    std::this_thread::sleep_for(std::chrono::milliseconds(5 + 30 * attempt));
    ::kill(child, SIGKILL);
    int wstatus = 0;
    ASSERT_EQ(::waitpid(child, &wstatus, 0), child);
    ASSERT_TRUE(WIFSIGNALED(wstatus)) << "the writer failed before it was killed";
    auto names = store_->List("data/");
    ASSERT_TRUE(names.ok());
    ASSERT_FALSE(names->empty());
    for (const std::string& name : *names) {
      const int i = std::stoi(name.substr(5));
      EXPECT_EQ(*store_->Get(name), content(i)) << name << " is torn";
    }
  }
}

// ---- FaultyStore

TEST(FaultyStoreTest, FailsAndDropsOnDemand) {
  FaultyStore store(NewMemoryStore());
  store.FailAfter(StoreOp::kPut, 1, ENOSPC, "chunks/");
  EXPECT_TRUE(store.Put("chunks/00/a", Bytes("a")).ok());
  EXPECT_EQ(store.Put("chunks/00/b", Bytes("b")).errnum(), ENOSPC);
  EXPECT_TRUE(store.Put("config", Bytes("c")).ok());  // another prefix
  EXPECT_EQ(store.calls(StoreOp::kPut), 3);
  store.Clear();
  store.DropPuts("backups/");
  EXPECT_TRUE(store.PutIfAbsent("backups/x", Bytes("x")).ok());
  EXPECT_EQ(store.Get("backups/x").status().errnum(), ENOENT);
  EXPECT_TRUE(*store.Exists("chunks/00/a"));
  EXPECT_FALSE(*store.Exists("chunks/00/b"));
}

}  // namespace
}  // namespace blksnap::repo
