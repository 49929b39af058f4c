// Tests of RadosStore on a real cluster: the ObjectStore contract every backend passes, plus what
// only RADOS has (URLs, namespaces, cephx errors, leases held across clients and expiring when
// their holder dies).
//
// The cluster: BLKSNAP_TEST_CEPH_CONF names the ceph.conf of a cluster made by scripts/ceph-cluster
// (pool "blksnap", user client.blksnap limited to that pool). ctest -L ceph starts one in the
// build tree (fixture ceph_cluster), runs this binary and stops it. Without the variable every
// test that needs the cluster FAILS: a missing cluster is never a pass. Each test works in a
// namespace of its own (random), so tests never see each other's objects.
#include "repository/rados_store.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include "repository/store_contract_test.h"

extern char** environ;

namespace blksnap::repo {
namespace {

constexpr char kConfVariable[] = "BLKSNAP_TEST_CEPH_CONF";
constexpr char kHolderNamespaceVariable[] = "BLKSNAP_TEST_RADOS_HOLDER_NS";
constexpr int kHolderLeaseSeconds = 3;

std::vector<uint8_t> Bytes(std::string_view s) { return {s.begin(), s.end()}; }

std::string RandomNamespace() {
  static std::atomic<int> counter{0};
  return "t" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + "-" +
         std::to_string(std::chrono::steady_clock::now().time_since_epoch().count() % 1000000);
}

// The test cluster's URL for `ns`, or EINVAL if the test has no cluster.
Result<RadosUrl> TestUrl(const std::string& ns) {
  const char* conf = std::getenv(kConfVariable);
  if (conf == nullptr || *conf == '\0') {
    return Status::Error(EINVAL, std::string(kConfVariable) +
                                     " is not set: this test needs a Ceph cluster; run it with "
                                     "`ctest -L ceph` (scripts/ceph-cluster starts one)");
  }
  RadosUrl url;
  url.pool = "blksnap";
  url.ns = ns;
  url.conf = conf;
  url.id = "blksnap";
  return url;
}

Result<std::unique_ptr<ObjectStore>> OpenTestStore(const std::string& ns,
                                                   const RadosStoreOptions& options = {}) {
  BLKSNAP_ASSIGN_OR_RETURN(RadosUrl url, TestUrl(ns));
  return OpenRadosStore(url, options);
}

INSTANTIATE_TEST_SUITE_P(Cluster, StoreContractTest,
                         ::testing::Values(StoreBackend{
                             "Rados",
                             [](const std::string&) { return OpenTestStore(RandomNamespace()); }}),
                         StoreBackendName);

// ---- URLs (no cluster needed)

TEST(RadosUrlTest, ParsesPoolNamespaceAndParameters) {
  auto url = ParseRadosUrl("rados://backups/host-1?conf=/etc/ceph/c%26.conf&id=blk.snap");
  ASSERT_TRUE(url.ok()) << url.status().ToString();
  EXPECT_EQ(url->pool, "backups");
  EXPECT_EQ(url->ns, "host-1");
  EXPECT_EQ(url->conf, "/etc/ceph/c&.conf");
  EXPECT_EQ(url->id, "blk.snap");
  EXPECT_EQ(url->keyring, "");
  EXPECT_EQ(url->Display(), "rados://backups/host-1");

  url = ParseRadosUrl("rados://p");
  ASSERT_TRUE(url.ok());
  EXPECT_EQ(url->ns, "");
  EXPECT_EQ(url->conf, "/etc/ceph/ceph.conf");
  EXPECT_EQ(url->id, "admin");
  EXPECT_EQ(url->Display(), "rados://p");
  url = ParseRadosUrl("rados://p?keyring=/k");
  ASSERT_TRUE(url.ok());
  EXPECT_EQ(url->keyring, "/k");
}

TEST(RadosUrlTest, RefusesBadUrlsWithOneLine) {
  for (const char* bad : {"", "s3://b", "rados:/p", "rados://", "rados:///ns", "rados://p/",
                          "rados://p/a/b", "rados://p q", "rados://p?", "rados://p?id=a&",
                          "rados://p?conf", "rados://p?conf=", "rados://p?x=1",
                          "rados://p?id=a&id=b", "rados://p?id=a/b", "rados://p?conf=%zz",
                          "rados://p?conf=%0", "rados://p?key=AQBsecret==", "rados://p?secret=s"}) {
    auto url = ParseRadosUrl(bad);
    ASSERT_FALSE(url.ok()) << bad;
    EXPECT_EQ(url.status().errnum(), EINVAL) << bad;
    const std::string message = url.status().ToString();
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    EXPECT_EQ(message.find("AQBsecret"), std::string::npos) << message;
  }
}

// ---- On the cluster

class RadosStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto url = TestUrl(ns_);
    ASSERT_TRUE(url.ok()) << url.status().ToString();
    url_ = *url;
    auto store = OpenRadosStore(url_);
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(*store);
  }

  const std::string ns_ = RandomNamespace();
  RadosUrl url_;
  std::unique_ptr<ObjectStore> store_;
};

TEST_F(RadosStoreTest, OpenErrorsAreOneLineAndNameTheProblem) {
  RadosUrl url = url_;
  url.pool = "no-such-pool";
  auto store = OpenRadosStore(url);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().errnum(), ENOENT);
  EXPECT_NE(store.status().ToString().find("no such pool 'no-such-pool'"), std::string::npos)
      << store.status().ToString();

  url = url_;
  url.conf = "/nonexistent/ceph.conf";
  store = OpenRadosStore(url);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().errnum(), ENOENT);
  EXPECT_NE(store.status().ToString().find("/nonexistent/ceph.conf"), std::string::npos);

  // A keyring with the user's key altered: cephx refuses it, and the key is never shown.
  const std::string dir = url_.conf.substr(0, url_.conf.rfind('/'));
  std::ifstream in(dir + "/ceph.client.blksnap.keyring");
  std::stringstream text;
  text << in.rdbuf();
  std::string keyring = text.str();
  const size_t key_at = keyring.find("key = ");
  ASSERT_NE(key_at, std::string::npos) << keyring;
  const std::string real_key = keyring.substr(key_at + 6, 40);
  char& secret_char = keyring[key_at + 6 + 20];  // inside the secret bytes of the base64 key
  secret_char = secret_char == 'A' ? 'B' : 'A';
  const std::string wrong = ::testing::TempDir() + "/wrong.keyring." + ns_;
  std::ofstream(wrong) << keyring;
  url = url_;
  url.keyring = wrong;
  RadosStoreOptions quick;
  quick.connect_timeout_seconds = 10;
  store = OpenRadosStore(url, quick);
  ::unlink(wrong.c_str());
  ASSERT_FALSE(store.ok());
  const std::string message = store.status().ToString();
  EXPECT_TRUE(store.status().errnum() == EACCES || store.status().errnum() == EPERM) << message;
  EXPECT_NE(message.find("client.blksnap"), std::string::npos) << message;
  EXPECT_EQ(message.find(real_key), std::string::npos) << message;
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;
}

TEST_F(RadosStoreTest, APoolTheUserMayNotUseIsAccessDenied) {
  RadosUrl url = url_;
  url.pool = ".rgw.root";  // made by radosgw; client.blksnap has caps on pool blksnap only
  auto store = OpenRadosStore(url);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  const Status put = (*store)->Put("config", Bytes("x"));
  EXPECT_TRUE(put.errnum() == EPERM || put.errnum() == EACCES) << put.ToString();
  EXPECT_NE(put.ToString().find("access denied"), std::string::npos) << put.ToString();
  EXPECT_NE(put.ToString().find("rados://.rgw.root"), std::string::npos) << put.ToString();
}

TEST_F(RadosStoreTest, NamespacesAreSeparateRepositories) {
  auto other = OpenTestStore(ns_ + "-other");
  ASSERT_TRUE(other.ok()) << other.status().ToString();
  ASSERT_TRUE(store_->Put("config", Bytes("mine")).ok());
  EXPECT_FALSE(*(*other)->Exists("config"));
  EXPECT_TRUE((*other)->List("")->empty());
  ASSERT_TRUE((*other)->PutIfAbsent("config", Bytes("theirs")).ok());
  EXPECT_EQ(*store_->Get("config"), Bytes("mine"));
  // Each namespace has its own lock object too.
  auto exclusive = store_->Lock(LockMode::kExclusive, false);
  ASSERT_TRUE(exclusive.ok()) << exclusive.status().ToString();
  EXPECT_TRUE((*other)->Lock(LockMode::kExclusive, false).ok());
  EXPECT_EQ(*store_->List(""), std::vector<std::string>{"config"});  // "lock" is never listed
}

// Small objects go through librados's C calls, large ones (odd rounds, over
// kRadosHugeCopyMinimum) through RadosWriteFull: both create exclusively.
TEST_F(RadosStoreTest, ConcurrentCreatesHaveOneWinner) {
  std::vector<std::thread> threads;
  std::atomic<int> failures{0}, created{0}, exists{0};
  const std::vector<uint8_t> small(64 << 10, 0x5a);
  std::vector<uint8_t> large((2 << 20) + 17);
  for (size_t i = 0; i < large.size(); ++i) large[i] = static_cast<uint8_t>(i * 13);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int round = 0; round < 10; ++round) {
        const std::vector<uint8_t>& chunk = round % 2 ? large : small;
        if (!store_->Put("chunks/7f/" + std::to_string(round), chunk).ok()) ++failures;
        const Status s = store_->PutIfAbsent("backups/" + std::to_string(round), chunk);
        if (s.ok()) {
          ++created;
        } else if (s.errnum() == EEXIST) {
          ++exists;
        } else {
          ++failures;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(created.load(), 10);
  EXPECT_EQ(exists.load(), 30);
  EXPECT_EQ(store_->List("chunks/")->size(), 10u);
  EXPECT_TRUE(*store_->Get("backups/3") == large);
  EXPECT_TRUE(*store_->Get("chunks/7f/5") == large);
  EXPECT_TRUE(*store_->Get("backups/4") == small);
}

// Get reads a first 4 MiB + 64 KiB with the size in one operation and repeats for larger objects:
// sizes around that boundary, and a reader racing with a writer that swaps a small and a large
// object.
TEST_F(RadosStoreTest, ObjectsOfAnySizeReadWhole) {
  for (size_t size : {size_t{0}, size_t{1}, size_t{1} << 20, (size_t{4} << 20) + (64 << 10),
                      (size_t{4} << 20) + (64 << 10) + 1, size_t{9} << 20}) {
    std::vector<uint8_t> data(size);
    for (size_t i = 0; i < size; ++i) data[i] = static_cast<uint8_t>(i * 7 + size);
    ASSERT_TRUE(store_->Put("data", data).ok()) << size;
    auto got = store_->Get("data");
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    EXPECT_TRUE(*got == data) << size;
    EXPECT_EQ(*store_->Size("data"), size);
  }
  ExpectReadersSeeWholeObjects(*store_, std::vector<uint8_t>(512 << 10, 's'),
                               std::vector<uint8_t>(6 << 20, 'l'), 40);
}

TEST_F(RadosStoreTest, LeasesConflictAcrossClients) {
  auto other = OpenRadosStore(url_);  // another connection: another RADOS client
  ASSERT_TRUE(other.ok()) << other.status().ToString();
  auto shared = store_->Lock(LockMode::kShared, false);
  ASSERT_TRUE(shared.ok()) << shared.status().ToString();
  auto busy = (*other)->Lock(LockMode::kExclusive, false);
  ASSERT_FALSE(busy.ok());
  EXPECT_EQ(busy.status().errnum(), EBUSY);
  EXPECT_NE(busy.status().ToString().find(url_.Display()), std::string::npos);
  EXPECT_TRUE((*other)->Lock(LockMode::kShared, false).ok());
  shared->reset();
  EXPECT_TRUE((*other)->Lock(LockMode::kExclusive, false).ok());
}

// A lease outlives its duration while its holder lives: the lease thread renews it.
TEST_F(RadosStoreTest, ALiveHoldersLeaseIsRenewed) {
  RadosStoreOptions short_lease;
  short_lease.lease_seconds = 2;
  auto holder = OpenRadosStore(url_, short_lease);
  ASSERT_TRUE(holder.ok()) << holder.status().ToString();
  auto exclusive = (*holder)->Lock(LockMode::kExclusive, false);
  ASSERT_TRUE(exclusive.ok()) << exclusive.status().ToString();
  std::this_thread::sleep_for(std::chrono::seconds(5));
  EXPECT_EQ(store_->Lock(LockMode::kShared, false).status().errnum(), EBUSY);
  exclusive->reset();
  EXPECT_TRUE(store_->Lock(LockMode::kShared, false).ok());
}

// The only OSD stopped for longer than half the lease: the renewals stall, the lease lapsed.
TEST_F(RadosStoreTest, ALeaseLapsesWhileTheOsdStalls) {
  RadosStoreOptions short_lease;
  short_lease.lease_seconds = 6;
  auto holder = OpenRadosStore(url_, short_lease);
  ASSERT_TRUE(holder.ok()) << holder.status().ToString();
  const std::string conf = std::getenv(kConfVariable);
  ExpectLeaseLapsesWhileStopped(conf.substr(0, conf.rfind('/')) + "/run/osd.0.pid", **holder, 6);
}

// Run only as a child of ACrashedHoldersLeaseExpires: takes an exclusive lease with a short
// duration in the namespace it is given, says so on stdout and waits to be killed.
TEST(RadosHolder, DISABLED_HoldExclusiveUntilKilled) {
  const char* ns = std::getenv(kHolderNamespaceVariable);
  ASSERT_NE(ns, nullptr);
  RadosStoreOptions options;
  options.lease_seconds = kHolderLeaseSeconds;
  auto store = OpenTestStore(ns, options);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  auto lease = (*store)->Lock(LockMode::kExclusive, false);
  ASSERT_TRUE(lease.ok()) << lease.status().ToString();
  std::printf("held\n");
  std::fflush(stdout);
  std::this_thread::sleep_for(std::chrono::seconds(120));
}

TEST_F(RadosStoreTest, ACrashedHoldersLeaseExpires) {
  int out[2];
  ASSERT_EQ(::pipe(out), 0);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&actions, out[0]);
  const std::string filter = "--gtest_filter=RadosHolder.DISABLED_HoldExclusiveUntilKilled";
  const std::string ns_env = std::string(kHolderNamespaceVariable) + "=" + ns_;
  std::vector<char*> env;
  for (char** e = environ; *e != nullptr; ++e) env.push_back(*e);
  env.push_back(const_cast<char*>(ns_env.c_str()));
  env.push_back(nullptr);
  char self[] = "/proc/self/exe";
  char also[] = "--gtest_also_run_disabled_tests";
  char* argv[] = {self, const_cast<char*>(filter.c_str()), also, nullptr};
  pid_t child = 0;
  ASSERT_EQ(::posix_spawn(&child, self, &actions, nullptr, argv, env.data()), 0);
  posix_spawn_file_actions_destroy(&actions);
  ::close(out[1]);
  std::string said;
  char c;
  while (::read(out[0], &c, 1) == 1) {
    said += c;
    if (said.ends_with("held\n")) break;
  }
  ::close(out[0]);
  ASSERT_TRUE(said.ends_with("held\n")) << "the holder failed: " << said;

  ::kill(child, SIGKILL);  // dies holding the lock: nothing unlocks it, nothing renews it
  int wstatus = 0;
  ASSERT_EQ(::waitpid(child, &wstatus, 0), child);
  const auto killed = std::chrono::steady_clock::now();
  EXPECT_EQ(store_->Lock(LockMode::kShared, false).status().errnum(), EBUSY);
  // Expires after at most kHolderLeaseSeconds (polled, so a lock that never expires fails the
  // test instead of hanging it).
  Result<std::unique_ptr<Lease>> lease = Status::Error(EBUSY, "not tried");
  while (std::chrono::steady_clock::now() - killed <
         std::chrono::seconds(kHolderLeaseSeconds + 10)) {
    lease = store_->Lock(LockMode::kShared, false);
    if (lease.status().errnum() != EBUSY) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(lease.ok()) << lease.status().ToString();
  EXPECT_GE(std::chrono::steady_clock::now() - killed, std::chrono::milliseconds(500));
}

}  // namespace
}  // namespace blksnap::repo
