// SigbusGuard: a store into a shared file mapping that the kernel cannot back (the file shrank
// under it, its file system shut down or went read-only, the page could not be read in, no space
// for a copy-on-write file system's write-back) raises SIGBUS, which would kill the daemon with
// every front it serves. Stores into [addr, addr + length) made between SigbusGuard() and
// SigbusUnguard() turn it into an error instead: the handler (installed once, process-wide)
// jumps back to the guard's sigsetjmp, which then returns non-zero.
//
//   InstallSigbusHandler();           // once, before the first guard
//   sigjmp_buf jump;
//   if (sigsetjmp(jump, 0) != 0) {    // a store faulted: nothing after it ran, the guard is off
//     return Status::Error(EIO, "...");
//   }
//   SigbusGuard(&jump, addr, length);
//   ... stores into the mapping (no objects with destructors, nothing to undo) ...
//   SigbusUnguard();
//
// Only a fault the kernel raised for an address inside the guarded range jumps. Anything else
// gets the action that was there before, as if the handler had never been installed: a fault
// elsewhere (the handler puts the old action back and returns, so the instruction faults again
// under it: by default the process dies with a core), a SIGBUS sent by kill(2) or raise(3), or
// an asynchronous memory-error report (BUS_MCEERR_AO), even inside a guard (the handler chains
// to the old action: ignored, the default's death, or the old handler called with its
// arguments, and stays installed).
//
// No system call on the way in or out (the jump buffer does not save the signal mask; the
// handler runs with SIGBUS unblocked, SA_NODEFER, so nothing stays blocked after the jump).
// Compiler fences keep the guard's stores around the guarded stores. Used by ChunkLog for the
// mapped open page of a crash log (chunk_log.h).
#pragma once

#include <setjmp.h>

#include <atomic>
#include <cstddef>

namespace blksnap {

// The thread's guard (jump null outside a guard: see the top of this file).
struct SigbusGuardRange {
  sigjmp_buf* jump = nullptr;
  const void* begin = nullptr;
  const void* end = nullptr;
};
extern thread_local SigbusGuardRange t_sigbus_guard;

void InstallSigbusHandler();

inline void SigbusGuard(sigjmp_buf* jump, const void* addr, size_t length) {
  t_sigbus_guard.begin = addr;
  t_sigbus_guard.end = static_cast<const char*>(addr) + length;
  t_sigbus_guard.jump = jump;
  std::atomic_signal_fence(std::memory_order_seq_cst);
}

inline void SigbusUnguard() {
  std::atomic_signal_fence(std::memory_order_seq_cst);
  t_sigbus_guard.jump = nullptr;
}

}  // namespace blksnap
