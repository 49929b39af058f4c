// The ObjectStore contract tests (see store_contract_test.h): what every backend must do, run
// once per StoreBackend that a test binary instantiates.
#include "repository/store_contract_test.h"

#include <signal.h>
#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

namespace blksnap::repo {

std::string StoreBackendName(const ::testing::TestParamInfo<StoreBackend>& info) {
  return info.param.name;
}

void StoreContractTest::SetUp() {
  std::string tmpl = ::testing::TempDir() + "/store_contract_test.XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
  dir_ = tmpl;
  auto store = GetParam().open(dir_);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  store_ = std::move(*store);
}

void StoreContractTest::TearDown() {
  store_.reset();
  if (!dir_.empty()) std::filesystem::remove_all(dir_);
}

void ExpectReadersSeeWholeObjects(ObjectStore& store, const std::vector<uint8_t>& a,
                                  const std::vector<uint8_t>& b, int puts) {
  ASSERT_TRUE(store.Put("config", a).ok());
  std::atomic<bool> done{false};
  std::atomic<int> bad{0}, reads{0}, failed_puts{0};
  std::thread reader([&] {
    while (!done) {
      auto got = store.Get("config");
      if (!got.ok() || (*got != a && *got != b)) ++bad;
      ++reads;
    }
  });
  for (int i = 0; i < puts; ++i) {
    if (!store.Put("config", i % 2 ? a : b).ok()) ++failed_puts;
  }
  done = true;
  reader.join();
  EXPECT_EQ(failed_puts.load(), 0);
  EXPECT_EQ(bad.load(), 0) << "of " << reads.load() << " reads";
}

// The lease is renewed every third of its duration and lapses when two renewals are more than
// half of it apart, so a renewal may be late by a sixth of the duration: with 6 s leases, 1 s
// (a loaded CI machine made a 3 s lease lapse while the gateway ran). The stall lasts a whole
// duration, twice the limit.
void ExpectLeaseLapsesWhileStopped(const std::string& pid_file, ObjectStore& store,
                                   int lease_seconds) {
  std::ifstream in(pid_file);
  pid_t pid = 0;
  ASSERT_TRUE(in >> pid) << pid_file << ": no pid";
  const std::chrono::seconds lease(lease_seconds);
  auto held = store.Lock(LockMode::kShared, false);
  ASSERT_TRUE(held.ok()) << held.status().ToString();
  std::this_thread::sleep_for(lease);
  EXPECT_FALSE((*held)->Lapsed()) << "a lease renewed in time says it lapsed";
  ASSERT_EQ(::kill(pid, SIGSTOP), 0);
  std::this_thread::sleep_for(lease);
  ASSERT_EQ(::kill(pid, SIGCONT), 0);
  std::this_thread::sleep_for(lease / 2);
  EXPECT_TRUE((*held)->Lapsed()) << "the lease did not notice its stalled renewals";
}

namespace {

std::vector<uint8_t> Bytes(std::string_view s) { return {s.begin(), s.end()}; }

TEST_P(StoreContractTest, PutGetExistsDelete) {
  ObjectStore& s = *store_;
  EXPECT_EQ(s.Get("config").status().errnum(), ENOENT);
  EXPECT_EQ(s.Get("chunks/ab/abcd").status().errnum(), ENOENT);
  EXPECT_FALSE(*s.Exists("config"));
  ASSERT_TRUE(s.Put("config", Bytes("one")).ok());
  ASSERT_TRUE(s.Put("chunks/ab/abcd", Bytes("chunk")).ok());
  ASSERT_TRUE(s.Put("empty", {}).ok());
  EXPECT_EQ(*s.Get("config"), Bytes("one"));
  EXPECT_EQ(*s.Get("chunks/ab/abcd"), Bytes("chunk"));
  EXPECT_TRUE(s.Get("empty")->empty());
  EXPECT_TRUE(*s.Exists("chunks/ab/abcd"));
  EXPECT_FALSE(*s.Exists("chunks/ab"));  // a directory is not an object
  EXPECT_FALSE(*s.Exists("config/x"));
  ASSERT_TRUE(s.Put("config", Bytes("two")).ok());  // replaces
  EXPECT_EQ(*s.Get("config"), Bytes("two"));
  ASSERT_TRUE(s.Delete("config").ok());
  ASSERT_TRUE(s.Delete("config").ok());  // idempotent
  ASSERT_TRUE(s.Delete("nowhere/at/all").ok());
  EXPECT_EQ(s.Get("config").status().errnum(), ENOENT);
}

// ReadInto: the object into the caller's buffer, its length returned; a buffer one byte short is
// EMSGSIZE, a missing object ENOENT. The large object takes more than RADOS's first read guess.
TEST_P(StoreContractTest, ReadIntoFillsTheCallersBuffer) {
  ObjectStore& s = *store_;
  std::vector<uint8_t> buffer(100);
  EXPECT_EQ(s.ReadInto("chunks/ab/abcd", buffer).status().errnum(), ENOENT);
  EXPECT_EQ(s.ReadInto("UPPER", buffer).status().errnum(), EINVAL);
  ASSERT_TRUE(s.Put("empty", {}).ok());
  EXPECT_EQ(*s.ReadInto("empty", buffer), 0u);
  for (size_t size : {size_t{100000}, (size_t{5} << 20) + 3}) {
    std::vector<uint8_t> data(size);
    for (size_t i = 0; i < size; ++i) data[i] = static_cast<uint8_t>(i * 7 + i / 4096);
    ASSERT_TRUE(s.Put("chunks/ab/abcd", data).ok());
    buffer.assign(size + 10, 0xaa);
    auto n = s.ReadInto("chunks/ab/abcd", buffer);
    ASSERT_TRUE(n.ok()) << n.status().ToString();
    ASSERT_EQ(*n, size);
    EXPECT_TRUE(std::equal(data.begin(), data.end(), buffer.begin()));
    n = s.ReadInto("chunks/ab/abcd", std::span(buffer).first(size));
    ASSERT_TRUE(n.ok()) << n.status().ToString();
    EXPECT_EQ(*n, size);
    EXPECT_EQ(s.ReadInto("chunks/ab/abcd", std::span(buffer).first(size - 1)).status().errnum(),
              EMSGSIZE);
    EXPECT_EQ(*s.Get("chunks/ab/abcd"), data);
  }
}

// ReadTail: the object's last bytes (as many as the buffer holds, or all of a shorter object) and
// its size; a missing object is ENOENT.
TEST_P(StoreContractTest, ReadTailReadsTheLastBytes) {
  ObjectStore& s = *store_;
  std::vector<uint8_t> buffer(4096, 0xaa);
  EXPECT_EQ(s.ReadTail("chunks/ab/abcd", buffer).status().errnum(), ENOENT);
  ASSERT_TRUE(s.Put("empty", {}).ok());
  auto tail = s.ReadTail("empty", buffer);
  ASSERT_TRUE(tail.ok()) << tail.status().ToString();
  EXPECT_EQ(tail->object_size, 0u);
  EXPECT_EQ(tail->length, 0u);
  for (size_t size : {size_t{100}, size_t{300000}}) {
    std::vector<uint8_t> data(size);
    for (size_t i = 0; i < size; ++i) data[i] = static_cast<uint8_t>(i * 13 + i / 251);
    ASSERT_TRUE(s.Put("chunks/ab/abcd", data).ok());
    tail = s.ReadTail("chunks/ab/abcd", buffer);
    ASSERT_TRUE(tail.ok()) << tail.status().ToString();
    EXPECT_EQ(tail->object_size, size);
    ASSERT_EQ(tail->length, std::min(size, buffer.size()));
    EXPECT_TRUE(std::equal(data.end() - tail->length, data.end(), buffer.begin()));
  }
}

TEST_P(StoreContractTest, PutIfAbsentRefusesAnExistingName) {
  ASSERT_TRUE(store_->PutIfAbsent("backups/b1", Bytes("first")).ok());
  auto again = store_->PutIfAbsent("backups/b1", Bytes("second"));
  EXPECT_EQ(again.errnum(), EEXIST);
  EXPECT_EQ(*store_->Get("backups/b1"), Bytes("first"));
}

TEST_P(StoreContractTest, ListIsSortedByPrefix) {
  for (const char* name : {"indexes/ff", "chunks/ab/ab02", "chunks/01/0100", "chunks/ab/ab01",
                           "config", "backups/20261130t1-aa", "chunks/ac/ac00"}) {
    ASSERT_TRUE(store_->Put(name, Bytes(name)).ok());
  }
  using V = std::vector<std::string>;
  EXPECT_EQ(*store_->List("chunks/"),
            (V{"chunks/01/0100", "chunks/ab/ab01", "chunks/ab/ab02", "chunks/ac/ac00"}));
  EXPECT_EQ(*store_->List("chunks/a"), (V{"chunks/ab/ab01", "chunks/ab/ab02", "chunks/ac/ac00"}));
  EXPECT_EQ(*store_->List("chunks/ab/ab02"), (V{"chunks/ab/ab02"}));
  EXPECT_EQ(*store_->List("backups/"), (V{"backups/20261130t1-aa"}));
  EXPECT_EQ(store_->List("")->size(), 7u);
  EXPECT_EQ(store_->List("")->front(), "backups/20261130t1-aa");
  EXPECT_TRUE(store_->List("nothing/")->empty());
  EXPECT_EQ(store_->List("/abs").status().errnum(), EINVAL);
}

TEST_P(StoreContractTest, NamesAreValidated) {
  for (const char* bad : {"", "/abs", "a//b", "a/", "../x", "a/../b", "a/./b", ".hidden",
                          "chunks/.tmp-x", "UPPER", "sp ace", "lock", "a\\b"}) {
    EXPECT_EQ(store_->Put(bad, Bytes("x")).errnum(), EINVAL) << bad;
    EXPECT_EQ(store_->Get(bad).status().errnum(), EINVAL) << bad;
  }
  EXPECT_EQ(store_->Put(std::string(256, 'a'), Bytes("x")).errnum(), EINVAL);
  EXPECT_TRUE(store_->Put("a-b_c.d/0-9", Bytes("x")).ok());
}

TEST_P(StoreContractTest, SharedLeasesExcludeAnExclusiveOne) {
  auto shared1 = store_->Lock(LockMode::kShared, false);
  auto shared2 = store_->Lock(LockMode::kShared, false);
  ASSERT_TRUE(shared1.ok() && shared2.ok());
  auto exclusive = store_->Lock(LockMode::kExclusive, false);
  ASSERT_FALSE(exclusive.ok());
  EXPECT_EQ(exclusive.status().errnum(), EBUSY);
  shared1->reset();
  EXPECT_EQ(store_->Lock(LockMode::kExclusive, false).status().errnum(), EBUSY);
  shared2->reset();
  exclusive = store_->Lock(LockMode::kExclusive, false);
  ASSERT_TRUE(exclusive.ok()) << exclusive.status().ToString();
  EXPECT_EQ(store_->Lock(LockMode::kShared, false).status().errnum(), EBUSY);
  // A waiter gets the lease once the holder lets go.
  std::thread release([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    exclusive->reset();
  });
  auto waited = store_->Lock(LockMode::kShared, true);
  release.join();
  EXPECT_TRUE(waited.ok()) << waited.status().ToString();
}

// Put replaces an object atomically: a reader racing with the writer sees the old or the new
// object whole, never a missing, empty or partial one.
TEST_P(StoreContractTest, ReadersNeverSeeAPartialObject) {
  ExpectReadersSeeWholeObjects(*store_, std::vector<uint8_t>(1 << 20, 'a'),
                               std::vector<uint8_t>(1 << 20, 'b'), 100);
}

}  // namespace
}  // namespace blksnap::repo
