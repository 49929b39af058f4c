// Unit tests of the control server's framing and robustness, with a fake handler (no engine):
// answers in order, garbage and hostile lines answered with errors, oversized lines answered
// with EMSGSIZE and closed, a blocked request does not delay other clients, 200 clients at
// once, Stop() with clients connected.
#include "daemon/control_server.h"

#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <future>
#include <thread>

#include "blksnap/control_client.h"
#include "control/protocol.h"

namespace blksnap::daemon {
namespace {

using nlohmann::json;

class ControlServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/blksnap_srv_XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
    path_ = dir_ + "/control.sock";
    auto server =
        ControlServer::Listen(path_,
                              [this](const std::string& method, const json& params,
                                     const std::function<bool()>& cancelled) -> Result<json> {
                                if (method == "echo") return params;
                                if (method == "block") {
                                  // Waits until released or the client hangs up.
                                  std::unique_lock lock(mu_);
                                  while (!released_ && !(cancelled && cancelled())) {
                                    cv_.wait_for(lock, std::chrono::milliseconds(50));
                                  }
                                  return json{{"released", released_}};
                                }
                                if (method == "throw") throw std::runtime_error("boom");
                                return Status::Error(ENOSYS, "unknown method '" + method + "'");
                              });
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(server).value();
    thread_ = std::thread([this] { server_->Run(); });
  }
  void TearDown() override {
    {
      std::lock_guard lock(mu_);
      released_ = true;
    }
    cv_.notify_all();
    server_->Stop();
    thread_.join();
    server_.reset();
    rmdir(dir_.c_str());
  }

  int Connect() {
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strcpy(addr.sun_path, path_.c_str());
    EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    return fd;
  }
  static std::string ReadLine(int fd) {
    std::string line;
    char c;
    while (read(fd, &c, 1) == 1 && c != '\n') line += c;
    return line;
  }
  static void WriteAll(int fd, const std::string& s) {
    size_t done = 0;
    while (done < s.size()) {
      ssize_t n = send(fd, s.data() + done, s.size() - done, MSG_NOSIGNAL);
      if (n <= 0) return;
      done += size_t(n);
    }
  }
  static int ErrnoOf(const std::string& line) {
    auto j = json::parse(line);
    return j.at("error").at("errno").get<int>();
  }

  std::string dir_, path_;
  std::unique_ptr<ControlServer> server_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool released_ = false;
};

TEST_F(ControlServerTest, SocketIsPrivate) {
  struct stat st {};
  ASSERT_EQ(stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST_F(ControlServerTest, AnswersInOrderWithIds) {
  int fd = Connect();
  WriteAll(fd, R"({"v":1,"id":7,"method":"echo","params":{"a":1}})"
               "\n"
               R"({"id":"x","method":"nope"})"
               "\n");
  auto a = json::parse(ReadLine(fd));
  EXPECT_EQ(a["id"], 7);
  EXPECT_EQ(a["result"]["a"], 1);
  auto b = json::parse(ReadLine(fd));
  EXPECT_EQ(b["id"], "x");
  EXPECT_EQ(b["error"]["errno"], ENOSYS);
  close(fd);
}

TEST_F(ControlServerTest, GarbageGetsErrors) {
  int fd = Connect();
  std::vector<std::string> lines = {"hello",
                                    "[1,2]",
                                    "{\"method\":5}",
                                    "{\"v\":2,\"method\":\"echo\"}",
                                    std::string(100, '[') + std::string(100, ']'),
                                    "{\"method\":\"echo\",\"params\":3}",
                                    "\x01\x02\xff\xfe",
                                    "{\"method\":\"throw\"}"};
  for (const std::string& line : lines) {
    WriteAll(fd, line + "\n");
    std::string answer = ReadLine(fd);
    ASSERT_FALSE(answer.empty()) << line;
    auto j = json::parse(answer);
    EXPECT_TRUE(j.contains("error")) << line << " -> " << answer;
  }
  // Still serving on the same connection.
  WriteAll(fd, R"({"method":"echo","params":{"ok":true}})"
               "\n");
  EXPECT_EQ(json::parse(ReadLine(fd))["result"]["ok"], true);
  close(fd);
}

TEST_F(ControlServerTest, OversizedLineIsRefusedAndClosed) {
  int fd = Connect();
  std::string big(10u << 20, 'x');
  std::thread writer([&] { WriteAll(fd, big + "\n"); });
  std::string answer = ReadLine(fd);
  writer.join();
  EXPECT_EQ(ErrnoOf(answer), EMSGSIZE);
  char c;
  EXPECT_LE(read(fd, &c, 1), 0);  // closed
  close(fd);
  // Others still served.
  int fd2 = Connect();
  WriteAll(fd2, R"({"method":"echo","params":{}})"
                "\n");
  EXPECT_TRUE(json::parse(ReadLine(fd2)).contains("result"));
  close(fd2);
}

TEST_F(ControlServerTest, HalfRequestThenHangUp) {
  int fd = Connect();
  WriteAll(fd, R"({"method":"ec)");
  close(fd);
  auto client = ControlClient::Connect(path_);
  ASSERT_TRUE(client.ok());
  EXPECT_TRUE((*client)->Call("echo", {{"x", 1}}).ok());
}

TEST_F(ControlServerTest, BlockedRequestDoesNotBlockOthers) {
  auto blocked = ControlClient::Connect(path_);
  ASSERT_TRUE(blocked.ok());
  auto pending = std::async(std::launch::async, [&] { return (*blocked)->Call("block"); });
  for (int i = 0; i < 20; ++i) {
    auto c = ControlClient::Connect(path_);
    ASSERT_TRUE(c.ok());
    auto r = (*c)->Call("echo", {{"i", i}});
    ASSERT_TRUE(r.ok());
    EXPECT_EQ((*r)["i"], i);
  }
  {
    std::lock_guard lock(mu_);
    released_ = true;
  }
  cv_.notify_all();
  auto r = pending.get();
  ASSERT_TRUE(r.ok());
  EXPECT_EQ((*r)["released"], true);
}

TEST_F(ControlServerTest, TwoHundredConcurrentClients) {
  std::vector<std::unique_ptr<ControlClient>> clients;
  for (int i = 0; i < 200; ++i) {
    auto c = ControlClient::Connect(path_);
    ASSERT_TRUE(c.ok()) << i;
    clients.push_back(std::move(c).value());
  }
  std::vector<std::thread> threads;
  std::atomic<int> good{0};
  for (int i = 0; i < 200; ++i) {
    threads.emplace_back([&, i] {
      for (int k = 0; k < 5; ++k) {
        auto r = clients[i]->Call("echo", {{"i", i}, {"k", k}});
        if (r.ok() && (*r)["i"] == i && (*r)["k"] == k) ++good;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(good.load(), 1000);
}

TEST_F(ControlServerTest, StopWithClientsConnected) {
  auto blocked = ControlClient::Connect(path_);
  ASSERT_TRUE(blocked.ok());
  auto pending = std::async(std::launch::async, [&] { return (*blocked)->Call("block"); });
  int idle = Connect();
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  {
    std::lock_guard lock(mu_);
    released_ = true;
  }
  cv_.notify_all();
  server_->Stop();  // must return: idle client disconnected, blocked one released
  (void)pending.get();
  close(idle);
}

TEST_F(ControlServerTest, ASecondServerNeverTakesALiveSocket) {
  auto second = ControlServer::Listen(
      path_, [](const std::string&, const json&, const std::function<bool()>&) -> Result<json> {
        return json{{"second", true}};
      });
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().errnum(), EADDRINUSE);
  // The first still answers on its socket.
  auto client = ControlClient::Connect(path_);
  ASSERT_TRUE(client.ok());
  auto r = (*client)->Call("echo", {{"first", true}});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ((*r)["first"], true);
}

TEST_F(ControlServerTest, AStaleSocketFileIsReplaced) {
  std::string stale = dir_ + "/stale.sock";
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strcpy(addr.sun_path, stale.c_str());
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  close(fd);  // the file stays, nobody listens
  auto server = ControlServer::Listen(
      stale, [](const std::string&, const json&, const std::function<bool()>&) -> Result<json> {
        return json::object();
      });
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  server->reset();
}

TEST_F(ControlServerTest, IdleClientsAreDisconnected) {
  std::string path = dir_ + "/idle.sock";
  auto server = ControlServer::Listen(
      path,
      [](const std::string&, const json& params, const std::function<bool()>&) -> Result<json> {
        return params;
      },
      std::chrono::milliseconds(200));
  ASSERT_TRUE(server.ok());
  std::thread run([&] { (*server)->Run(); });
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strcpy(addr.sun_path, path.c_str());
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  WriteAll(fd, R"({"method":"echo","params":{"a":1}})"
               "\n");
  EXPECT_TRUE(json::parse(ReadLine(fd)).contains("result"));
  WriteAll(fd, R"({"method":"ec)");  // half a request, then silence
  auto start = std::chrono::steady_clock::now();
  char c;
  EXPECT_EQ(read(fd, &c, 1), 0);  // closed by the server
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  close(fd);
  (*server)->Stop();
  run.join();
}

TEST_F(ControlServerTest, IdleConnectionsAtTheCapCannotLockOthersOut) {
  // Both ends live in this process: room for 2 x kMaxClients descriptors.
  rlimit lim{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &lim), 0);
  if (lim.rlim_cur < 4 * ControlServer::kMaxClients) {
    lim.rlim_cur = std::min<rlim_t>(lim.rlim_max, 4 * ControlServer::kMaxClients);
    ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &lim), 0);
  }
  ASSERT_GE(lim.rlim_cur, 2 * ControlServer::kMaxClients + 64) << "RLIMIT_NOFILE too low";
  std::vector<int> idle;
  for (size_t i = 0; i < ControlServer::kMaxClients; ++i) idle.push_back(Connect());
  // Every slot is taken by a silent client; a real one still gets its answer.
  for (int round = 0; round < 3; ++round) {
    auto client = ControlClient::Connect(path_);
    ASSERT_TRUE(client.ok());
    auto r = (*client)->Call("echo", {{"round", round}});
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ((*r)["round"], round);
  }
  for (int fd : idle) close(fd);
}

}  // namespace
}  // namespace blksnap::daemon
