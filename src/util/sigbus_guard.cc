// SigbusGuard: see sigbus_guard.h.
#include "util/sigbus_guard.h"

#include <signal.h>

#include <mutex>

namespace blksnap {

thread_local SigbusGuardRange t_sigbus_guard;

namespace {

struct sigaction g_previous;

// A fault the kernel raised for the access that failed (not kill(2), raise(3), sigqueue(3), a
// kernel-sent SI_KERNEL, or an asynchronous memory-error report about some other page).
bool RaisedByAccess(const siginfo_t* info) {
  switch (info->si_code) {
    case BUS_ADRALN:
    case BUS_ADRERR:
    case BUS_OBJERR:
    case BUS_MCEERR_AR:
      return true;
    default:
      return false;
  }
}

void OnSigbus(int sig, siginfo_t* info, void* context) {
  SigbusGuardRange& guard = t_sigbus_guard;
  if (info != nullptr && RaisedByAccess(info) && guard.jump != nullptr &&
      info->si_addr >= guard.begin && info->si_addr < guard.end) {
    sigjmp_buf* jump = guard.jump;
    guard.jump = nullptr;
    siglongjmp(*jump, 1);
  }
  // Not a guarded store: the action that was there before, with its own flags.
  if (info != nullptr && RaisedByAccess(info)) {
    ::sigaction(SIGBUS, &g_previous, nullptr);  // returns and faults again, under that action
    return;
  }
  // Sent (kill, raise, sigqueue) or an asynchronous report: chained to that action directly, so
  // our handler stays in place whatever the action does (a re-raise would meet it again where a
  // runtime defers signals, as TSan does).
  if (g_previous.sa_handler == SIG_IGN) return;
  if (g_previous.sa_handler == SIG_DFL) {
    ::signal(SIGBUS, SIG_DFL);
    ::raise(sig);  // not blocked here (SA_NODEFER): the default action, death with a core
    return;
  }
  if ((g_previous.sa_flags & SA_SIGINFO) != 0) {
    g_previous.sa_sigaction(sig, info, context);
  } else {
    g_previous.sa_handler(sig);
  }
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
