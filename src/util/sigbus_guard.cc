// SigbusGuard: see sigbus_guard.h.
#include "util/sigbus_guard.h"

#include <signal.h>

#include <mutex>

namespace blksnap {

thread_local sigjmp_buf* t_sigbus_jump = nullptr;

namespace {

struct sigaction g_previous;

void OnSigbus(int sig, siginfo_t* info, void* context) {
  if (sigjmp_buf* jump = t_sigbus_jump) {
    t_sigbus_jump = nullptr;
    siglongjmp(*jump, 1);
  }
  // Not a guarded store: what was there before.
  if ((g_previous.sa_flags & SA_SIGINFO) && g_previous.sa_sigaction) {
    g_previous.sa_sigaction(sig, info, context);
    return;
  }
  if (g_previous.sa_handler != SIG_DFL && g_previous.sa_handler != SIG_IGN) {
    g_previous.sa_handler(sig);
    return;
  }
  ::signal(SIGBUS, SIG_DFL);  // the store faults again on return, and the process dies of it
}

}  // namespace

void InstallSigbusHandler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction action {};
    action.sa_sigaction = OnSigbus;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&action.sa_mask);
    ::sigaction(SIGBUS, &action, &g_previous);
  });
}

}  // namespace blksnap
