// SigbusGuard (sigbus_guard.h): only a fault inside the guarded range becomes an error; every
// other SIGBUS gets the action that was there before. Each case runs in a forked child (the
// handler is process-wide, and the default action kills), which reports by its exit status.
#include "util/sigbus_guard.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <functional>
#include <string>

namespace blksnap {
namespace {

constexpr int kJumped = 3;  // the child's exit status when its guard turned SIGBUS into an error
constexpr int kLived = 0;   // the child's exit status when it got past the SIGBUS

// Runs body in a child; returns its wait status.
int InChild(const std::function<void()>& body) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::signal(SIGBUS, SIG_DFL);  // the action before the handler, whatever a sanitizer installed
    body();
    ::_exit(kLived);
  }
  int status = 0;
  EXPECT_EQ(::waitpid(pid, &status, 0), pid);
  return status;
}

bool DiedOfSigbus(int status) { return WIFSIGNALED(status) && WTERMSIG(status) == SIGBUS; }
bool Exited(int status, int code) { return WIFEXITED(status) && WEXITSTATUS(status) == code; }

// A one-page shared mapping of a file that is then truncated: a store into it faults (SIGBUS,
// BUS_ADRERR). Null when no file can be mapped here.
char* FaultingPage() {
  const std::string path = ::testing::TempDir() + "/sigbus_guard_test.page";
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0 || ::ftruncate(fd, 4096) != 0) return nullptr;
  void* p = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  const bool shrunk = ::ftruncate(fd, 0) == 0;
  ::close(fd);
  ::unlink(path.c_str());
  return p == MAP_FAILED || !shrunk ? nullptr : static_cast<char*>(p);
}

// A guarded store that faults inside its range is an error (the guard's sigsetjmp returns).
TEST(SigbusGuardTest, AFaultInsideTheGuardedRangeIsAnError) {
  const int status = InChild([] {
    char* page = FaultingPage();
    if (page == nullptr) ::_exit(2);
    InstallSigbusHandler();
    sigjmp_buf jump;
    if (sigsetjmp(jump, 0) != 0) ::_exit(kJumped);
    SigbusGuard(&jump, page, 4096);
    *static_cast<volatile char*>(page + 100) = 1;
    SigbusUnguard();
  });
  EXPECT_TRUE(Exited(status, kJumped)) << status;
}

// A fault outside the guarded range, during a guard, is not the guard's: the process dies of it
// as it would without the handler.
TEST(SigbusGuardTest, AFaultOutsideTheGuardedRangeStillKills) {
  const int status = InChild([] {
    char* page = FaultingPage();
    if (page == nullptr) ::_exit(2);
    InstallSigbusHandler();
    char other[64];
    sigjmp_buf jump;
    if (sigsetjmp(jump, 0) != 0) ::_exit(kJumped);
    SigbusGuard(&jump, other, sizeof(other));
    *static_cast<volatile char*>(page + 100) = 1;
    SigbusUnguard();
  });
  EXPECT_TRUE(DiedOfSigbus(status)) << status;
}

// A SIGBUS sent to the process (kill -BUS, raise) is not a fault, inside a guard or outside one:
// the default action, death, as without the handler.
TEST(SigbusGuardTest, ASentSigbusIsNotAFault) {
  const int outside = InChild([] {
    InstallSigbusHandler();
    ::raise(SIGBUS);
  });
  EXPECT_TRUE(DiedOfSigbus(outside)) << outside;
  const int inside = InChild([] {
    InstallSigbusHandler();
    char range[64];
    sigjmp_buf jump;
    if (sigsetjmp(jump, 0) != 0) ::_exit(kJumped);
    SigbusGuard(&jump, range, sizeof(range));
    ::raise(SIGBUS);
    SigbusUnguard();
  });
  EXPECT_TRUE(DiedOfSigbus(inside)) << inside;
}

// The action from before keeps its meaning (here: ignore), and the guard still works after it.
TEST(SigbusGuardTest, AnIgnoredSentSigbusLeavesTheGuardInPlace) {
  const int status = InChild([] {
    char* page = FaultingPage();
    if (page == nullptr) ::_exit(2);
    ::signal(SIGBUS, SIG_IGN);
    InstallSigbusHandler();
    ::raise(SIGBUS);  // ignored, as before the handler
    sigjmp_buf jump;
    if (sigsetjmp(jump, 0) != 0) ::_exit(kJumped);
    SigbusGuard(&jump, page, 4096);
    *static_cast<volatile char*>(page) = 1;
    SigbusUnguard();
  });
  EXPECT_TRUE(Exited(status, kJumped)) << status;
}

// A handler from before is called for a sent SIGBUS, with its siginfo, as often as one is sent,
// and the guard still works after it.
volatile sig_atomic_t g_sent_seen = 0;
void CountSent(int /*sig*/, siginfo_t* info, void* /*context*/) {
  if (info != nullptr && info->si_code == SI_TKILL) g_sent_seen = g_sent_seen + 1;
}

TEST(SigbusGuardTest, AHandlerFromBeforeGetsEachSentSigbus) {
  const int status = InChild([] {
    char* page = FaultingPage();
    if (page == nullptr) ::_exit(2);
    struct sigaction before {};
    before.sa_sigaction = CountSent;
    before.sa_flags = SA_SIGINFO;
    sigemptyset(&before.sa_mask);
    ::sigaction(SIGBUS, &before, nullptr);
    InstallSigbusHandler();
    ::raise(SIGBUS);
    ::raise(SIGBUS);
    if (g_sent_seen != 2) ::_exit(4);
    sigjmp_buf jump;
    if (sigsetjmp(jump, 0) != 0) ::_exit(kJumped);
    SigbusGuard(&jump, page, 4096);
    *static_cast<volatile char*>(page) = 1;
    SigbusUnguard();
  });
  EXPECT_TRUE(Exited(status, kJumped)) << status;
}

}  // namespace
}  // namespace blksnap
