// Tests of the S3 store on a real radosgw: the ObjectStore contract every backend passes, plus
// what only S3 has (URLs, credentials, a missing bucket, leases as objects that expire when their
// holder dies).
//
// The gateway: BLKSNAP_TEST_CEPH_CONF names the ceph.conf of a cluster made by
// scripts/ceph-cluster; its directory holds rgw.url and s3.credentials (the user "blksnap").
// ctest -L ceph starts one (fixture ceph_cluster). Without the variable every test that needs the
// gateway FAILS: a missing cluster is never a pass. Each test works under a key prefix of its own
// in the bucket "blksnap-test".
#include "repository/s3_store.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include "repository/s3_client.h"
#include "repository/store_contract_test.h"

namespace blksnap::repo {
namespace {

constexpr char kBucket[] = "blksnap-test";

#define EXPECT_OK(expr) EXPECT_TRUE((expr).ok())
#define ASSERT_OK(expr)                    \
  do {                                     \
    const ::blksnap::Status s_ = (expr);   \
    ASSERT_TRUE(s_.ok()) << s_.ToString(); \
  } while (0)

std::vector<uint8_t> Bytes(std::string_view s) { return {s.begin(), s.end()}; }

std::string UniquePrefix() {
  static std::atomic<int> counter{0};
  return "t" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + "-" +
         std::to_string(std::chrono::steady_clock::now().time_since_epoch().count() % 1000000);
}

// The directory of the test cluster, or EINVAL if the test has none.
Result<std::string> ClusterDir() {
  const char* conf = std::getenv("BLKSNAP_TEST_CEPH_CONF");
  if (conf == nullptr || *conf == '\0') {
    return Status::Error(EINVAL,
                         "BLKSNAP_TEST_CEPH_CONF is not set: this test needs a Ceph cluster with "
                         "radosgw; run it with `ctest -L ceph` (scripts/ceph-cluster starts one)");
  }
  const std::string path = conf;
  return path.substr(0, path.rfind('/'));
}

Result<std::string> TestUrl(const std::string& bucket, const std::string& prefix,
                            const std::string& credentials = "") {
  BLKSNAP_ASSIGN_OR_RETURN(std::string dir, ClusterDir());
  std::ifstream in(dir + "/rgw.url");
  std::string endpoint;
  if (!(in >> endpoint)) return Status::Error(ENOENT, dir + "/rgw.url: no gateway URL");
  return "s3://" + bucket + "/" + prefix + "?endpoint=" + endpoint +
         "&credentials=" + (credentials.empty() ? dir + "/s3.credentials" : credentials);
}

Result<std::unique_ptr<ObjectStore>> OpenTestStore(const std::string& prefix, int ttl = 120) {
  BLKSNAP_ASSIGN_OR_RETURN(std::string url, TestUrl(kBucket, prefix));
  return OpenS3Store(url, {.lock_ttl_seconds = ttl, .create_bucket = true});
}

INSTANTIATE_TEST_SUITE_P(Gateway, StoreContractTest,
                         ::testing::Values(StoreBackend{
                             "S3",
                             [](const std::string&) { return OpenTestStore(UniquePrefix()); }}),
                         StoreBackendName);

// ---- URLs and credentials (no gateway needed)

TEST(S3UrlTest, ParsesBucketPrefixAndParameters) {
  auto loc = ParseS3Url("s3://backups/fleet/host-1?endpoint=http://127.0.0.1:7480/&region=eu-1");
  ASSERT_TRUE(loc.ok()) << loc.status().ToString();
  EXPECT_EQ(loc->bucket, "backups");
  EXPECT_EQ(loc->prefix, "fleet/host-1/");
  EXPECT_EQ(loc->endpoint, "http://127.0.0.1:7480");
  EXPECT_EQ(loc->region, "eu-1");
  EXPECT_TRUE(loc->path_style);
  auto aws = ParseS3Url("s3://backups");
  ASSERT_TRUE(aws.ok());
  EXPECT_EQ(aws->endpoint, "https://s3.us-east-1.amazonaws.com");
  EXPECT_FALSE(aws->path_style);
  EXPECT_EQ(aws->prefix, "");
}

TEST(S3UrlTest, RefusesBadUrlsWithOneLine) {
  for (const char* bad : {"s3:/b", "http://b", "s3://B", "s3://ab", "s3://b_x", "s3://bucket/../x",
                          "s3://bucket?endpoint=ftp://x", "s3://bucket?secret=abc",
                          "s3://bucket?style=weird", "s3://bucket?region=", "s3://bucket?x"}) {
    auto loc = ParseS3Url(bad);
    ASSERT_FALSE(loc.ok()) << bad;
    EXPECT_EQ(loc.status().errnum(), EINVAL) << bad;
    EXPECT_EQ(loc.status().message().find('\n'), std::string::npos) << bad;
  }
}

TEST(S3UrlTest, CredentialsFromAFileProfile) {
  const std::string path = ::testing::TempDir() + "/s3-credentials-" + UniquePrefix();
  std::ofstream(path)
      << "# comment\n[default]\naws_access_key_id = AK\naws_secret_access_key = S1\n"
         "[profile other]\naws_access_key_id=AK2\naws_secret_access_key=S2\n"
         "aws_session_token = T\n";
  S3Location loc;
  loc.credentials_file = path;
  loc.profile = "other";
  auto other = LoadS3Credentials(loc);
  ASSERT_TRUE(other.ok()) << other.status().ToString();
  EXPECT_EQ(other->access_key, "AK2");
  EXPECT_EQ(other->secret_key, "S2");
  EXPECT_EQ(other->session_token, "T");
  loc.profile = "missing";
  auto missing = LoadS3Credentials(loc);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().message().find("S1"), std::string::npos);  // never a key
  ::unlink(path.c_str());
}

// ---- On the gateway

TEST(S3StoreTest, MissingBucketWrongKeysAndNoGatewayAreOneLineErrors) {
  auto missing = TestUrl("blksnap-no-such-bucket", "x");
  ASSERT_TRUE(missing.ok()) << missing.status().ToString();
  auto store = OpenS3Store(*missing);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().errnum(), ENOENT) << store.status().ToString();
  EXPECT_NE(store.status().message().find("no such bucket"), std::string::npos);

  const std::string wrong = ::testing::TempDir() + "/s3-wrong-" + UniquePrefix();
  std::ofstream(wrong) << "[default]\naws_access_key_id = NOPE\naws_secret_access_key = nope\n";
  auto url = TestUrl(kBucket, "x", wrong);
  ASSERT_TRUE(url.ok());
  store = OpenS3Store(*url, {.create_bucket = true});
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().errnum(), EACCES) << store.status().ToString();
  EXPECT_EQ(store.status().message().find("nope"), std::string::npos);
  ::unlink(wrong.c_str());

  store = OpenS3Store("s3://" + std::string(kBucket) + "?endpoint=http://127.0.0.1:1" +
                      "&credentials=/nonexistent");
  ASSERT_FALSE(store.ok());  // the credentials file first
  EXPECT_EQ(store.status().errnum(), ENOENT) << store.status().ToString();
}

TEST(S3StoreTest, PrefixesKeepRepositoriesApart) {
  auto a = OpenTestStore(UniquePrefix());
  auto b = OpenTestStore(UniquePrefix());
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_OK((*a)->Put("config", Bytes("a")));
  EXPECT_FALSE(*(*b)->Exists("config"));
  EXPECT_TRUE((*b)->List("")->empty());
  auto listed = (*a)->List("");
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(*listed, std::vector<std::string>{"config"});  // the lease objects never listed
}

TEST(S3StoreTest, ListPagesPastAThousandKeys) {
  auto store = OpenTestStore(UniquePrefix());
  ASSERT_TRUE(store.ok());
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = t; i < 1100; i += 8) {
        char name[32];
        std::snprintf(name, sizeof(name), "chunks/%04d", i);
        EXPECT_OK((*store)->Put(name, Bytes("x")));
      }
    });
  }
  for (auto& t : threads) t.join();
  auto listed = (*store)->List("chunks/");
  ASSERT_TRUE(listed.ok()) << listed.status().ToString();
  ASSERT_EQ(listed->size(), 1100u);
  EXPECT_EQ(listed->front(), "chunks/0000");
  EXPECT_EQ(listed->back(), "chunks/1099");
}

// A lease whose holder died (never released, never refreshed) expires after the ttl by the
// gateway's clock; a live one is refreshed past it.
TEST(S3StoreTest, LeasesAreRefreshedAndADeadHoldersExpire) {
  constexpr int kTtl = 3;
  const std::string prefix = UniquePrefix();
  auto store = OpenTestStore(prefix, kTtl);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  {
    auto shared = (*store)->Lock(LockMode::kShared, false);
    ASSERT_TRUE(shared.ok()) << shared.status().ToString();
    std::this_thread::sleep_for(std::chrono::seconds(kTtl + 2));
    auto exclusive = (*store)->Lock(LockMode::kExclusive, false);
    ASSERT_FALSE(exclusive.ok()) << "a refreshed shared lease was taken as expired";
    EXPECT_EQ(exclusive.status().errnum(), EBUSY);
  }
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {  // the holder: takes the exclusive lease and dies holding it
    auto own = OpenTestStore(prefix, kTtl);
    if (!own.ok()) ::_exit(2);
    auto lease = (*own)->Lock(LockMode::kExclusive, false);
    ::_exit(lease.ok() ? 0 : 3);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  auto blocked = (*store)->Lock(LockMode::kShared, false);
  ASSERT_FALSE(blocked.ok()) << "the dead holder's lease was not seen";
  EXPECT_EQ(blocked.status().errnum(), EBUSY);
  std::this_thread::sleep_for(std::chrono::seconds(kTtl + 2));
  auto after = (*store)->Lock(LockMode::kExclusive, false);
  EXPECT_TRUE(after.ok()) << after.status().ToString();
}

TEST(S3StoreTest, ALeaseLapsesWhileTheGatewayStalls) {
  auto store = OpenTestStore(UniquePrefix(), /*ttl=*/6);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  auto dir = ClusterDir();
  ASSERT_TRUE(dir.ok()) << dir.status().ToString();
  ExpectLeaseLapsesWhileStopped(*dir + "/run/rgw.gw.pid", **store, 6);
}

}  // namespace
}  // namespace blksnap::repo
