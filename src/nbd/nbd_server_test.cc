// Unit tests for Server: export registry, URIs, connection counting, RemoveExport closing
// live connections, listener policy (TCP needs TLS unless allowed on loopback), Stop with
// clients attached. The resource limits are in limits_test.cc.
#include "nbd/nbd_server.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <thread>

#include "blksnap/io.h"
#include "nbd/test_util.h"

namespace blksnap::nbd {
namespace {

using test::ConnectUnix;
using test::Go;
using test::ReadAll;
using test::TempSocket;
using test::WaitFor;

TEST(ServerTest, RegistryAndUris) {
  ServerOptions o;
  o.unix_path = TempSocket();
  auto s = Server::Start(o);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  Server& srv = **s;
  ASSERT_TRUE(srv.AddExport("sda@1a2b-3c", MakeMemoryDevice(1 << 20), {}).ok());
  EXPECT_EQ(srv.AddExport("sda@1a2b-3c", MakeMemoryDevice(4096), {}).errnum(), EEXIST);
  EXPECT_EQ(srv.RemoveExport("nope").errnum(), ENOENT);
  EXPECT_EQ(srv.UnixUri("sda@1a2b-3c"), "nbd+unix:///sda@1a2b-3c?socket=" + o.unix_path);
  EXPECT_EQ(srv.UnixUri("a b"), "nbd+unix:///a%20b?socket=" + o.unix_path);
  EXPECT_EQ(srv.TcpUri("x"), "");
  EXPECT_EQ(srv.ConnectionCount("sda@1a2b-3c"), 0u);
  EXPECT_EQ(srv.ConnectionCount("nope"), 0u);
}

TEST(ServerTest, TcpLoopbackAndPublicPolicy) {
  // Plaintext TCP, loopback included, only with the explicit insecure option.
  ServerOptions o;
  o.tcp_address = "127.0.0.1:0";
  Result<std::unique_ptr<Server>> refused = Server::Start(o);
  EXPECT_EQ(refused.status().errnum(), EINVAL);
  EXPECT_NE(refused.status().message().find("TLS"), std::string::npos);
  o.allow_insecure_tcp = true;
  auto s = Server::Start(o);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  const std::string uri = (*s)->TcpUri("d@x");
  EXPECT_EQ(uri.rfind("nbd://127.0.0.1:", 0), 0u) << uri;
  EXPECT_NE(uri.find("/d@x"), std::string::npos);
  EXPECT_EQ((*s)->UnixUri("d"), "");
  EXPECT_TRUE((*s)->Stats().insecure_tcp);
  // Beyond loopback TLS is required even with the insecure option.
  ServerOptions pub;
  pub.tcp_address = "0.0.0.0:0";
  pub.allow_insecure_tcp = true;
  EXPECT_EQ(Server::Start(pub).status().errnum(), EINVAL);
  ServerOptions none;
  EXPECT_EQ(Server::Start(none).status().errnum(), EINVAL);
}

TEST(ServerTest, RemoveExportClosesConnections) {
  ServerOptions o;
  o.unix_path = TempSocket();
  auto s = Server::Start(o);
  ASSERT_TRUE(s.ok());
  Server& srv = **s;
  ASSERT_TRUE(srv.AddExport("a", MakeMemoryDevice(1 << 20), {}).ok());
  ASSERT_TRUE(srv.AddExport("b", MakeMemoryDevice(1 << 20), {}).ok());
  int a1 = ConnectUnix(o.unix_path), a2 = ConnectUnix(o.unix_path), b1 = ConnectUnix(o.unix_path);
  ASSERT_TRUE(Go(a1, "a") && Go(a2, "a") && Go(b1, "b"));
  EXPECT_TRUE(WaitFor([&] { return srv.ConnectionCount("a") == 2; }));
  EXPECT_TRUE(WaitFor([&] { return srv.ConnectionCount("b") == 1; }));
  ASSERT_TRUE(srv.RemoveExport("a").ok());
  std::vector<uint8_t> b;
  EXPECT_FALSE(ReadAll(a1, 1, &b));  // closed by the server
  EXPECT_FALSE(ReadAll(a2, 1, &b));
  EXPECT_EQ(srv.ConnectionCount("b"), 1u);
  // The other export still works.
  test::ClientBytes req;
  req.Request(kCmdRead, 9, 0, 512);
  ASSERT_EQ(write(b1, req.bytes().data(), req.bytes().size()), 28);
  ASSERT_TRUE(ReadAll(b1, 16 + 512, &b));
  EXPECT_EQ(GetBe32(b.data() + 4), 0u);
  // A new client cannot reach the removed export.
  int a3 = ConnectUnix(o.unix_path);
  EXPECT_FALSE(Go(a3, "a"));
  close(a1);
  close(a2);
  close(a3);
  // Stop with a client attached returns and closes it.
  srv.Stop();
  EXPECT_FALSE(ReadAll(b1, 1, &b));
  close(b1);
  EXPECT_EQ(ConnectUnix(o.unix_path), -1);
}

}  // namespace
}  // namespace blksnap::nbd
