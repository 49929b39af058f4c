// systemd integration: notifications arrive on a Unix datagram socket the test binds and names
// in $NOTIFY_SOCKET (path and abstract), STATUS cannot smuggle a second assignment, the
// $JOURNAL_STREAM check matches only the named dev:ino, and the journal sink's fields (priority
// mapping, identifier, source location, dropped count) as seen by a fake transport.
#include "daemon/systemd.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <syslog.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>

namespace blksnap::systemd {
namespace {

// A datagram socket standing in for systemd's notification socket; restores the environment.
class NotifySocket {
 public:
  explicit NotifySocket(bool abstract) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    EXPECT_GE(fd_, 0);
    timeval tv{5, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::string name = "blksnap-notify-test-" + std::to_string(::getpid());
    if (abstract) {
      env_ = "@" + name;
      std::memcpy(addr.sun_path + 1, name.data(), name.size());
      len_ = offsetof(sockaddr_un, sun_path) + 1 + name.size();
    } else {
      char dir[] = "/tmp/blksnap-notify.XXXXXX";
      EXPECT_NE(::mkdtemp(dir), nullptr);
      dir_ = dir;
      env_ = dir_ + "/notify";
      std::memcpy(addr.sun_path, env_.data(), env_.size());
      len_ = offsetof(sockaddr_un, sun_path) + env_.size() + 1;
    }
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), static_cast<socklen_t>(len_)), 0)
        << std::strerror(errno);
    ::setenv("NOTIFY_SOCKET", env_.c_str(), 1);
  }
  ~NotifySocket() {
    ::unsetenv("NOTIFY_SOCKET");
    ::close(fd_);
    if (!dir_.empty()) {
      ::unlink(env_.c_str());
      ::rmdir(dir_.c_str());
    }
  }

  std::string Receive() {
    char buf[4096];
    ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
    if (n < 0) return "(nothing: " + std::string(std::strerror(errno)) + ")";
    return std::string(buf, static_cast<size_t>(n));
  }

 private:
  int fd_ = -1;
  size_t len_ = 0;
  std::string dir_, env_;
};

TEST(SystemdNotifyTest, NothingSentOutsideSystemd) {
  ::unsetenv("NOTIFY_SOCKET");
  EXPECT_FALSE(NotifyReady());
  EXPECT_FALSE(NotifyStopping());
  EXPECT_FALSE(NotifyStatus("hello"));
}

TEST(SystemdNotifyTest, ReadyStoppingStatusReachThePathSocket) {
  NotifySocket sock(false);
  EXPECT_TRUE(NotifyReady());
  EXPECT_EQ(sock.Receive(), "READY=1");
  EXPECT_TRUE(NotifyStatus("2 devices, 1 snapshot"));
  EXPECT_EQ(sock.Receive(), "STATUS=2 devices, 1 snapshot");
  EXPECT_TRUE(NotifyStopping());
  EXPECT_EQ(sock.Receive(), "STOPPING=1");
}

TEST(SystemdNotifyTest, AbstractSocket) {
  NotifySocket sock(true);
  EXPECT_TRUE(NotifyReady());
  EXPECT_EQ(sock.Receive(), "READY=1");
}

TEST(SystemdNotifyTest, StatusCannotAddAssignments) {
  NotifySocket sock(false);
  EXPECT_TRUE(NotifyStatus("device vm\nREADY=1\r\nMAINPID=1"));
  EXPECT_EQ(sock.Receive(), "STATUS=device vm READY=1  MAINPID=1");
}

class JournalStreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fd_ = ::open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    other_ = ::open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    ASSERT_GE(fd_, 0);
    ASSERT_GE(other_, 0);
  }
  void TearDown() override {
    ::unsetenv("JOURNAL_STREAM");
    ::close(fd_);
    ::close(other_);
  }
  std::string DevIno(int fd) {
    struct stat st;
    EXPECT_EQ(::fstat(fd, &st), 0);
    return std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino);
  }
  int fd_ = -1, other_ = -1;
};

TEST_F(JournalStreamTest, MatchesOnlyTheNamedDevIno) {
  ::unsetenv("JOURNAL_STREAM");
  EXPECT_FALSE(JournalStreamIs(fd_));
  ::setenv("JOURNAL_STREAM", DevIno(fd_).c_str(), 1);
  EXPECT_TRUE(JournalStreamIs(fd_));
  EXPECT_FALSE(JournalStreamIs(other_));
  EXPECT_FALSE(JournalStreamIs(-1));
}

TEST_F(JournalStreamTest, MalformedValuesAreNotAMatch) {
  std::string good = DevIno(fd_);
  for (const std::string& bad : {good + "x", good + ":1", std::string(""), std::string(":"),
                                 "x" + good, good.substr(0, good.find(':'))}) {
    ::setenv("JOURNAL_STREAM", bad.c_str(), 1);
    EXPECT_FALSE(JournalStreamIs(fd_)) << "'" << bad << "'";
  }
}

TEST(JournalSinkTest, PriorityMapping) {
  EXPECT_EQ(JournalPriority(spdlog::level::trace), LOG_DEBUG);
  EXPECT_EQ(JournalPriority(spdlog::level::debug), LOG_DEBUG);
  EXPECT_EQ(JournalPriority(spdlog::level::info), LOG_INFO);
  EXPECT_EQ(JournalPriority(spdlog::level::warn), LOG_WARNING);
  EXPECT_EQ(JournalPriority(spdlog::level::err), LOG_ERR);
  EXPECT_EQ(JournalPriority(spdlog::level::critical), LOG_CRIT);
}

// The fields of each entry, as FIELD -> value.
using Entry = std::map<std::string, std::string>;

TEST(JournalSinkTest, EntriesCarryMessagePriorityIdentifierAndLocation) {
  std::vector<Entry> entries;
  auto sink = std::make_shared<JournalSink>("blksnapd-test", [&](const auto& fields) {
    Entry e;
    for (const auto& f : fields) {
      size_t eq = f.find('=');
      EXPECT_NE(eq, std::string::npos) << f;
      e[f.substr(0, eq)] = f.substr(eq + 1);
    }
    entries.push_back(e);
    return 0;
  });
  spdlog::logger logger("test", sink);
  logger.set_level(spdlog::level::trace);
  logger.info("attached {} ({} bytes)", "vm", 4096);
  logger.warn("line one\nline two");
  logger.error("failed");
  const int line = __LINE__ + 1;
  SPDLOG_LOGGER_CRITICAL(&logger, "with location");

  ASSERT_EQ(entries.size(), 4u);
  EXPECT_EQ(entries[0]["MESSAGE"], "attached vm (4096 bytes)");
  EXPECT_EQ(entries[0]["PRIORITY"], std::to_string(LOG_INFO));
  EXPECT_EQ(entries[0]["SYSLOG_IDENTIFIER"], "blksnapd-test");
  EXPECT_FALSE(entries[0]["TID"].empty());
  EXPECT_EQ(entries[0].count("CODE_FILE"), 0u);            // spdlog::info carries no location
  EXPECT_EQ(entries[1]["MESSAGE"], "line one\nline two");  // the journal keeps it one entry
  EXPECT_EQ(entries[1]["PRIORITY"], std::to_string(LOG_WARNING));
  EXPECT_EQ(entries[2]["PRIORITY"], std::to_string(LOG_ERR));
  EXPECT_EQ(entries[3]["PRIORITY"], std::to_string(LOG_CRIT));
  EXPECT_NE(entries[3]["CODE_FILE"].find("systemd_test.cc"), std::string::npos);
  EXPECT_EQ(entries[3]["CODE_LINE"], std::to_string(line));
  EXPECT_EQ(sink->dropped(), 0u);
}

TEST(JournalSinkTest, FailedSendsAreCounted) {
  auto sink = std::make_shared<JournalSink>("t", [](const auto&) { return -EPIPE; });
  spdlog::logger logger("test", sink);
  logger.info("a");
  logger.info("b");
  EXPECT_EQ(sink->dropped(), 2u);
}

TEST(JournalSinkTest, RealSenderDoesNotThrowWithoutJournald) {
  // Whether or not journald listens here, a message is either sent or counted as dropped.
  auto sink = std::make_shared<JournalSink>("blksnapd-test");
  spdlog::logger logger("test", sink);
  EXPECT_NO_THROW(logger.info("systemd_test: a message to the journal, if there is one"));
  EXPECT_NO_THROW(MakeJournalLogger("blksnapd-test")->debug("not logged at info level"));
}

}  // namespace
}  // namespace blksnap::systemd
