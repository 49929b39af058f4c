// Unit tests for the Server's resource limits (docs/nbd.md "Limits"): the Unix socket's mode,
// the connection cap (refusal, one log line per burst, root's reserve on the Unix socket), the
// handshake deadline (silent and trickling clients), the request stall timeout, in-flight
// payload accounting (a stalled write holds only what arrived; a request beyond the total
// budget waits instead of failing), writes that exceed the budget together all complete (no
// deadlock), the bound on worker threads and on block-status replies. Budget itself is tested at
// the end.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <thread>

#include "blksnap/io.h"
#include "nbd/budget.h"
#include "nbd/nbd_server.h"
#include "nbd/test_util.h"
#include "util/mutex.h"

namespace blksnap::nbd {
namespace {

using test::ConnectUnix;
using test::Go;
using test::ReadAll;
using test::TempSocket;
using test::WaitFor;
using Clock = std::chrono::steady_clock;

// Collects the server's log lines.
struct LogSink {
  Mutex mu;
  std::vector<std::string> lines GUARDED_BY(mu);
  std::function<void(const std::string&)> fn() {
    return [this](const std::string& l) {
      MutexLock lock(mu);
      lines.push_back(l);
    };
  }
  int Count(const std::string& what) {
    MutexLock lock(mu);
    int n = 0;
    for (const auto& l : lines) n += l.find(what) != std::string::npos;
    return n;
  }
};

std::unique_ptr<Server> StartServer(ServerOptions o) {
  auto s = Server::Start(o);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  if (!s.ok()) return nullptr;
  EXPECT_TRUE((*s)->AddExport("d", MakeMemoryDevice(64 << 20), {}).ok());
  return std::move(s).value();
}

// True if the server closes fd within `limit` (reads and drops anything it sends first).
bool ClosedWithin(int fd, std::chrono::milliseconds limit) {
  timeval tv{static_cast<time_t>(limit.count() / 1000),
             static_cast<suseconds_t>(limit.count() % 1000 * 1000)};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char buf[4096];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n == 0 || (n < 0 && errno == ECONNRESET)) return true;
    if (n < 0) return false;  // timed out: still open
  }
}

int Threads() {
  int n = 0;
  for (auto& e : std::filesystem::directory_iterator("/proc/self/task")) n += !e.path().empty();
  return n;
}

void SendAll(int fd, const std::vector<uint8_t>& b) {
  ASSERT_EQ(write(fd, b.data(), b.size()), static_cast<ssize_t>(b.size()));
}

TEST(LimitsTest, UnixSocketIsOwnerOnly) {
  ServerOptions o;
  o.unix_path = TempSocket();
  auto s = StartServer(o);
  struct stat st;
  ASSERT_EQ(stat(o.unix_path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST(LimitsTest, ConnectionCapRefusesAndLogsOncePerBurst) {
  LogSink log;
  ServerOptions o;
  o.unix_path = TempSocket();
  o.max_connections = 2;
  o.root_reserved_connections = 0;
  o.log = log.fn();
  auto s = StartServer(o);
  std::vector<uint8_t> b;
  int a1 = ConnectUnix(o.unix_path), a2 = ConnectUnix(o.unix_path);
  ASSERT_TRUE(ReadAll(a1, 18, &b) && ReadAll(a2, 18, &b));  // greeted
  for (int i = 0; i < 5; ++i) {
    int x = ConnectUnix(o.unix_path);
    EXPECT_FALSE(ReadAll(x, 1, &b)) << "connection " << i + 3 << " should be refused";
    close(x);
  }
  EXPECT_EQ(s->Stats().refused, 5u);
  EXPECT_EQ(s->Stats().connections, 2u);
  EXPECT_EQ(log.Count("refusing"), 1);  // once per burst
  close(a1);
  ASSERT_TRUE(WaitFor([&] { return s->Stats().connections == 1; }));
  int a3 = ConnectUnix(o.unix_path);
  EXPECT_TRUE(Go(a3, "d"));
  EXPECT_EQ(log.Count("accepting connections again (5 refused)"), 1);
  close(a2);
  close(a3);
}

TEST(LimitsTest, RootOnTheUnixSocketHasReservedConnections) {
  ServerOptions o;
  o.unix_path = TempSocket();
  o.tcp_address = "127.0.0.1:0";
  o.allow_insecure_tcp = true;
  o.max_connections = 1;
  o.root_reserved_connections = 2;
  auto s = StartServer(o);
  std::vector<uint8_t> b;
  // The cap is taken over TCP (where nobody is known to be root).
  const std::string uri = s->TcpUri("d");
  const int port = std::stoi(uri.substr(uri.rfind(':') + 1));
  auto tcp_connect = [&] {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    return fd;
  };
  int t1 = tcp_connect(), t2 = tcp_connect();
  EXPECT_TRUE(ReadAll(t1, 18, &b));
  EXPECT_FALSE(ReadAll(t2, 1, &b));  // over the cap on TCP
  const bool root = geteuid() == 0;
  int u1 = ConnectUnix(o.unix_path), u2 = ConnectUnix(o.unix_path), u3 = ConnectUnix(o.unix_path);
  EXPECT_EQ(Go(u1, "d"), root);  // root gets in through the reserve
  EXPECT_EQ(Go(u2, "d"), root);
  EXPECT_FALSE(ReadAll(u3, 1, &b));  // the reserve is bounded too
  for (int fd : {t1, t2, u1, u2, u3}) close(fd);
}

TEST(LimitsTest, HandshakeDeadlineDropsSilentAndTricklingClients) {
  ServerOptions o;
  o.unix_path = TempSocket();
  o.handshake_timeout_ms = 300;
  auto s = StartServer(o);
  std::vector<uint8_t> b;
  const auto t0 = Clock::now();
  int silent = ConnectUnix(o.unix_path);
  ASSERT_TRUE(ReadAll(silent, 18, &b));
  EXPECT_TRUE(ClosedWithin(silent, std::chrono::milliseconds(3000)));
  EXPECT_GE(Clock::now() - t0, std::chrono::milliseconds(250));
  close(silent);
  // A client sending one byte every 50 ms never lets a single recv time out.
  int trickle = ConnectUnix(o.unix_path);
  ASSERT_TRUE(ReadAll(trickle, 18, &b));
  test::ClientBytes c;
  c.Flags(kClientFlagFixedNewstyle).Option(kOptGo, test::ClientBytes::InfoGo("d"));
  const auto t1 = Clock::now();
  bool closed = false;
  for (uint8_t byte : c.bytes()) {
    if (send(trickle, &byte, 1, MSG_NOSIGNAL) != 1) {
      closed = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (Clock::now() - t1 > std::chrono::milliseconds(1500)) break;
  }
  EXPECT_TRUE(closed || ClosedWithin(trickle, std::chrono::milliseconds(100)));
  EXPECT_LT(Clock::now() - t1, std::chrono::milliseconds(1500));
  close(trickle);
  EXPECT_TRUE(WaitFor([&] { return s->Stats().connections == 0; }));
}

TEST(LimitsTest, StalledWriteHoldsOnlyWhatArrivedAndIsClosed) {
  ServerOptions o;
  o.unix_path = TempSocket();
  o.request_timeout_ms = 400;
  auto s = StartServer(o);
  int fd = ConnectUnix(o.unix_path);
  ASSERT_TRUE(Go(fd, "d"));
  test::ClientBytes c;
  c.Request(kCmdWrite, 1, 0, 32 << 20).Raw(std::vector<uint8_t>(100, 0xab));
  const auto t0 = Clock::now();
  SendAll(fd, c.bytes());
  ASSERT_TRUE(WaitFor([&] { return s->Stats().inflight_bytes > 0; }));
  EXPECT_LE(s->Stats().inflight_bytes, 1u << 20);  // one piece, not the announced 32 MiB
  EXPECT_TRUE(ClosedWithin(fd, std::chrono::milliseconds(3000)));
  EXPECT_GE(Clock::now() - t0, std::chrono::milliseconds(350));
  EXPECT_TRUE(WaitFor([&] { return s->Stats().inflight_bytes == 0; }));
  close(fd);
  // An idle client (no request begun) is kept well past the request timeout.
  int idle = ConnectUnix(o.unix_path);
  ASSERT_TRUE(Go(idle, "d"));
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  test::ClientBytes r;
  r.Request(kCmdRead, 2, 0, 512);
  SendAll(idle, r.bytes());
  std::vector<uint8_t> b;
  ASSERT_TRUE(ReadAll(idle, 16 + 512, &b));
  EXPECT_EQ(GetBe32(b.data() + 4), 0u);
  close(idle);
}

TEST(LimitsTest, RequestBeyondTheTotalBudgetWaitsInsteadOfFailing) {
  ServerOptions o;
  o.unix_path = TempSocket();
  o.max_total_inflight = 32 << 20;
  o.request_timeout_ms = 10000;
  auto s = StartServer(o);
  int writer = ConnectUnix(o.unix_path), reader = ConnectUnix(o.unix_path);
  ASSERT_TRUE(Go(writer, "d") && Go(reader, "d"));
  // The writer holds the whole budget with a 32 MiB write of which all but 1 KiB arrived.
  std::vector<uint8_t> payload(32 << 20, 0x5a);
  test::ClientBytes w;
  w.Request(kCmdWrite, 1, 0, 32 << 20);
  SendAll(writer, w.bytes());
  std::thread feed([&] {
    size_t off = 0;
    while (off < payload.size() - 1024) {
      ssize_t n = write(writer, payload.data() + off, payload.size() - 1024 - off);
      if (n <= 0) return;
      off += n;
    }
  });
  ASSERT_TRUE(WaitFor([&] { return s->Stats().inflight_bytes == 32u << 20; }));
  feed.join();
  // A read on the other connection must wait for budget: no reply yet.
  test::ClientBytes r;
  r.Request(kCmdRead, 2, 0, 4096);
  SendAll(reader, r.bytes());
  std::vector<uint8_t> b;
  EXPECT_FALSE(ClosedWithin(reader, std::chrono::milliseconds(300)));  // nothing arrives
  // The writer completes: its write runs, the budget frees, the read is answered.
  ASSERT_EQ(write(writer, payload.data(), 1024), 1024);
  ASSERT_TRUE(ReadAll(writer, 16, &b));
  EXPECT_EQ(GetBe32(b.data() + 4), 0u);
  timeval tv{5, 0};
  setsockopt(reader, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ASSERT_TRUE(ReadAll(reader, 16 + 4096, &b));
  EXPECT_EQ(GetBe32(b.data() + 4), 0u);
  EXPECT_EQ(b[16], 0x5a);
  close(writer);
  close(reader);
}

TEST(LimitsTest, WritesBeyondTheBudgetTogetherAllComplete) {
  ServerOptions o;
  o.unix_path = TempSocket();
  o.max_total_inflight = 32 << 20;
  o.request_timeout_ms = 0;  // no timeout may break a deadlock: there must be none
  auto s = StartServer(o);
  // Three 20 MiB writes on three connections share a 32 MiB budget. Reserving piece by piece
  // without claims, each receiver would end up holding part of it and waiting for the rest.
  std::vector<uint8_t> payload(20 << 20, 7);
  std::vector<int> fds;
  std::vector<std::thread> feeders;
  for (int i = 0; i < 3; ++i) {
    int fd = ConnectUnix(o.unix_path);
    ASSERT_TRUE(Go(fd, "d"));
    test::ClientBytes w;
    w.Request(kCmdWrite, i, 0, 20 << 20);
    SendAll(fd, w.bytes());
    fds.push_back(fd);
    feeders.emplace_back([&payload, fd] {
      size_t off = 0;
      while (off < payload.size()) {
        ssize_t n = send(fd, payload.data() + off, payload.size() - off, MSG_NOSIGNAL);
        if (n <= 0) return;
        off += n;
      }
    });
  }
  std::vector<uint8_t> b;
  for (int fd : fds) {
    timeval tv{10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ASSERT_TRUE(ReadAll(fd, 16, &b)) << "a write never completed: deadlock";
    EXPECT_EQ(GetBe32(b.data() + 4), 0u);
  }
  for (auto& t : feeders) t.join();
  EXPECT_TRUE(WaitFor([&] { return s->Stats().inflight_bytes == 0; }));
  // Stop returns promptly (nothing waits forever).
  const auto t0 = Clock::now();
  s->Stop();
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(2));
  for (int fd : fds) close(fd);
}

TEST(LimitsTest, WorkerThreadsAreBounded) {
  ServerOptions o;
  o.unix_path = TempSocket();
  o.workers_per_connection = 8;
  o.max_extra_workers = 3;
  const int before = Threads();
  auto s = StartServer(o);
  constexpr int kConns = 4;
  int fds[kConns];
  for (int& fd : fds) {
    fd = ConnectUnix(o.unix_path);
    ASSERT_TRUE(Go(fd, "d"));
  }
  // Idle connections cost one thread each.
  EXPECT_LE(Threads(), before + 1 + kConns);
  // 64 pipelined reads per connection.
  int peak = 0;
  for (int round = 0; round < 5; ++round) {
    for (int fd : fds) {
      test::ClientBytes r;
      for (int i = 0; i < 64; ++i) r.Request(kCmdRead, i, uint64_t(i) << 20, 1 << 20);
      SendAll(fd, r.bytes());
    }
    peak = std::max(peak, Threads());
    std::vector<uint8_t> b;
    for (int fd : fds) ASSERT_TRUE(ReadAll(fd, 64 * (16 + (1 << 20)), &b));
    peak = std::max(peak, Threads());
  }
  EXPECT_GT(s->Stats().extra_workers, 0u);  // workers were added on demand...
  EXPECT_LE(s->Stats().extra_workers, 3u);  // ...within the server-wide budget
  EXPECT_LE(peak, before + 1 + kConns + 3);
  for (int fd : fds) close(fd);
  EXPECT_TRUE(WaitFor([&] { return s->Stats().extra_workers == 0; }));
}

TEST(LimitsTest, BlockStatusRepliesAreBounded) {
  ServerOptions o;
  o.unix_path = TempSocket();
  auto srv = Server::Start(o);
  ASSERT_TRUE(srv.ok());
  // A CBT map that changes at every 512-byte block: one descriptor per block if unbounded.
  std::vector<uint8_t> map(1 << 17);
  for (size_t i = 0; i < map.size(); ++i) map[i] = i & 1;
  ExportOptions eo;
  eo.cbt = std::make_shared<test::FixedCbt>(std::move(map), 512);
  ASSERT_TRUE((*srv)->AddExport("c", MakeMemoryDevice(64 << 20), eo).ok());
  int fd = ConnectUnix(o.unix_path);
  test::ClientBytes c;
  c.Flags(kClientFlagFixedNewstyle)
      .Option(kOptStructuredReply)
      .Option(kOptSetMetaContext, test::ClientBytes::Meta("c", {"blksnap:cbt"}))
      .Option(kOptGo, test::ClientBytes::InfoGo("c"));
  std::vector<uint8_t> b;
  ASSERT_TRUE(ReadAll(fd, 18, &b));
  SendAll(fd, c.bytes());
  for (;;) {  // option replies up to GO's ACK
    ASSERT_TRUE(ReadAll(fd, 20, &b));
    const uint32_t option = GetBe32(b.data() + 8), type = GetBe32(b.data() + 12);
    std::vector<uint8_t> payload;
    if (uint32_t len = GetBe32(b.data() + 16)) {
      ASSERT_TRUE(ReadAll(fd, len, &payload));
    }
    ASSERT_LT(type, 0x80000000u) << "option " << option << " refused";
    if (option == kOptGo && type == kRepAck) break;
  }
  test::ClientBytes r;
  r.Request(kCmdBlockStatus, 1, 0, 64 << 20);
  SendAll(fd, r.bytes());
  ASSERT_TRUE(ReadAll(fd, 20, &b));
  EXPECT_EQ(GetBe16(b.data() + 6), kReplyTypeBlockStatus);
  const uint32_t len = GetBe32(b.data() + 16);
  EXPECT_EQ((len - 4) / 8, kMaxExtentsPerChunk);  // a prefix, not 131,072 descriptors
  EXPECT_EQ(kMaxExtentsPerChunk, 65536u);
  ASSERT_TRUE(ReadAll(fd, len, &b));
  close(fd);
}

TEST(LimitsTest, BadLimitsAreRefused) {
  ServerOptions o;
  o.unix_path = TempSocket();
  o.max_total_inflight = 1 << 20;  // below the largest request
  EXPECT_EQ(Server::Start(o).status().errnum(), EINVAL);
  o.max_total_inflight = 256 << 20;
  o.max_connections = 0;
  EXPECT_EQ(Server::Start(o).status().errnum(), EINVAL);
}

TEST(BudgetTest, TakeWaitsForGiveAndHonoursStop) {
  Budget b(100);
  EXPECT_TRUE(b.TryTake(60));
  EXPECT_FALSE(b.TryTake(50));
  EXPECT_FALSE(b.Take(101, {}));  // never fits
  std::thread giver([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    b.Give(60);
  });
  const auto t0 = Clock::now();
  EXPECT_TRUE(b.Take(50, {}));
  EXPECT_GE(Clock::now() - t0, std::chrono::milliseconds(40));
  giver.join();
  EXPECT_EQ(b.used(), 50u);
  EXPECT_TRUE(b.WaitFits(50, {}));  // fits, nothing taken
  EXPECT_EQ(b.used(), 50u);
  std::atomic<bool> stop{false};
  std::thread stopper([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    stop = true;
  });
  EXPECT_FALSE(b.Take(60, [&] { return stop.load(); }));
  stopper.join();
  EXPECT_EQ(b.used(), 50u);
}

}  // namespace
}  // namespace blksnap::nbd
