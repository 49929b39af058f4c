// Unit tests of the control protocol helpers and the client's framing (against a fake daemon
// on a socketpair-like Unix socket in a temporary directory).
#include "control/protocol.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <thread>

#include "blksnap/control_client.h"

namespace blksnap::control {
namespace {

TEST(ParseSize, PlainAndSuffixes) {
  EXPECT_EQ(*ParseSize("0"), 0u);
  EXPECT_EQ(*ParseSize("4096"), 4096u);
  EXPECT_EQ(*ParseSize("64K"), 64u << 10);
  EXPECT_EQ(*ParseSize("64k"), 64u << 10);
  EXPECT_EQ(*ParseSize("256M"), 256ull << 20);
  EXPECT_EQ(*ParseSize("2G"), 2ull << 30);
  EXPECT_EQ(*ParseSize("1T"), 1ull << 40);
  EXPECT_EQ(*ParseSize("1.5G"), 3ull << 29);
  EXPECT_EQ(*ParseSize("8MiB"), 8ull << 20);
  EXPECT_EQ(*ParseSize(" 12 "), 12u);
}

TEST(ParseSize, Rejects) {
  for (const char* bad : {"", "abc", "-1", "12X", "1.5", "K", "1..5G", "0x10", "1 G B", "."}) {
    auto r = ParseSize(bad);
    EXPECT_FALSE(r.ok()) << bad;
    if (!r.ok()) {
      EXPECT_EQ(r.status().errnum(), EINVAL) << bad;
    }
  }
  EXPECT_EQ(ParseSize("99999999999999999999").status().errnum(), ERANGE);
  EXPECT_EQ(ParseSize("17000000T").status().errnum(), ERANGE);
}

TEST(FormatSize, Readable) {
  EXPECT_EQ(FormatSize(100), "100");
  EXPECT_EQ(FormatSize(1024), "1K");
  EXPECT_EQ(FormatSize(1536), "1.5K");
  EXPECT_EQ(FormatSize(1ull << 30), "1G");
  EXPECT_EQ(FormatSize(3ull << 40), "3T");
}

TEST(ParseRange, Works) {
  auto r = ParseRange("4K:1M");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->offset, 4096u);
  EXPECT_EQ(r->length, 1u << 20);
  EXPECT_FALSE(ParseRange("4096").ok());
  EXPECT_FALSE(ParseRange("4096:0").ok());
  EXPECT_FALSE(ParseRange(":5").ok());
  EXPECT_FALSE(ParseRange("a:b").ok());
  EXPECT_FALSE(ParseRange("18446744073709551615:2").ok());
}

TEST(JsonDepth, CountsOutsideStrings) {
  EXPECT_EQ(JsonDepth("{}"), 1);
  EXPECT_EQ(JsonDepth("{\"a\":[[1]]}"), 3);
  EXPECT_EQ(JsonDepth("{\"a\":\"[[[[\\\"[[\"}"), 1);
  EXPECT_EQ(JsonDepth(std::string(1000, '[')), 1000);
}

TEST(Base64, RoundTrip) {
  for (std::string s : {std::string(), std::string("a"), std::string("ab"), std::string("abc"),
                        std::string("\0\xff\x10\x20", 4)}) {
    auto d = Base64Decode(Base64Encode(s));
    ASSERT_TRUE(d.ok());
    EXPECT_EQ(*d, s);
  }
  EXPECT_EQ(Base64Encode("foobar"), "Zm9vYmFy");
  EXPECT_EQ(Base64Encode("fo"), "Zm8=");
  EXPECT_FALSE(Base64Decode("Zm9").ok());
  EXPECT_FALSE(Base64Decode("Zm9v!mFy").ok());
}

TEST(Errors, RoundTrip) {
  auto obj = ErrorObject(Status::Error(ENOENT, "no device 'x'"));
  EXPECT_EQ(obj["errno"], ENOENT);
  Status s = StatusFromErrorObject(obj);
  EXPECT_EQ(s.errnum(), ENOENT);
  EXPECT_EQ(s.message(), "no device 'x'");
  EXPECT_EQ(StatusFromErrorObject(nlohmann::json::array()).errnum(), EPROTO);
}

TEST(Params, Access) {
  nlohmann::json p = {{"s", "x"}, {"n", 5}, {"neg", -1}, {"sz", "4K"}, {"b", true}};
  EXPECT_EQ(*GetString(p, "s"), "x");
  EXPECT_FALSE(GetString(p, "n").ok());
  EXPECT_FALSE(GetString(p, "missing").ok());
  EXPECT_EQ(*GetUint(p, "n"), 5u);
  EXPECT_EQ(*GetUint(p, "sz"), 4096u);
  EXPECT_FALSE(GetUint(p, "neg").ok());
  EXPECT_TRUE(GetBool(p, "b"));
  EXPECT_FALSE(GetBool(p, "s"));
}

// A one-connection fake daemon answering with canned lines.
class FakeDaemon {
 public:
  explicit FakeDaemon(std::vector<std::string> answers) {
    char dir[] = "/tmp/blksnap_ctl_XXXXXX";
    EXPECT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
    path_ = dir_ + "/s";
    listen_fd_ = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strcpy(addr.sun_path, path_.c_str());
    EXPECT_EQ(bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    EXPECT_EQ(listen(listen_fd_, 1), 0);
    thread_ = std::thread([this, answers] {
      int fd = accept(listen_fd_, nullptr, nullptr);
      std::string buf;
      char c;
      size_t next = 0;
      while (next < answers.size() && read(fd, &c, 1) == 1) {
        buf += c;
        if (c == '\n') {
          requests_.push_back(buf);
          std::string a = answers[next++] + "\n";
          EXPECT_EQ(write(fd, a.data(), a.size()), ssize_t(a.size()));
          buf.clear();
        }
      }
      close(fd);
    });
  }
  ~FakeDaemon() {
    thread_.join();
    close(listen_fd_);
    unlink(path_.c_str());
    rmdir(dir_.c_str());
  }
  const std::string& path() const { return path_; }
  std::vector<std::string> requests_;

 private:
  std::string dir_, path_;
  int listen_fd_ = -1;
  std::thread thread_;
};

TEST(ControlClient, ResultAndError) {
  std::vector<std::string> requests;
  {
    FakeDaemon daemon({R"({"v":1,"id":1,"result":{"version":"9.9"}})",
                       R"({"v":1,"id":2,"error":{"errno":2,"message":"no device 'x'"}})"});
    auto client = ControlClient::Connect(daemon.path());
    ASSERT_TRUE(client.ok()) << client.status().ToString();
    auto v = (*client)->DaemonVersion();
    ASSERT_TRUE(v.ok());
    EXPECT_EQ(*v, "9.9");
    Status s = (*client)->Detach("x");
    EXPECT_EQ(s.errnum(), ENOENT);
    EXPECT_EQ(s.message(), "no device 'x'");
    client->reset();
    requests = daemon.requests_;
  }
  ASSERT_EQ(requests.size(), 2u);
  auto r = nlohmann::json::parse(requests[1]);
  EXPECT_EQ(r["method"], "detach");
  EXPECT_EQ(r["params"]["name"], "x");
  EXPECT_EQ(r["v"], kProtocolVersion);
}

TEST(ControlClient, NoDaemon) {
  auto client = ControlClient::Connect("/nonexistent/blksnap.sock");
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().errnum(), ENOENT);
  EXPECT_NE(client.status().message().find("is blksnapd running"), std::string::npos);
}

}  // namespace
}  // namespace blksnap::control
