// SigbusGuard: a store into a shared file mapping that the kernel cannot back (the file shrank
// under it, its file system shut down or went read-only, the page could not be read in, no space
// for a copy-on-write file system's write-back) raises SIGBUS, which would kill the daemon with
// every front it serves. Stores made between a guard's sigsetjmp and SigbusUnguard() turn it
// into an error instead: the handler (installed once, process-wide) jumps back to the guard's
// sigsetjmp, which then returns non-zero; a SIGBUS anywhere else gets the action that was
// there before (by default: the process dies, as without the handler).
//
//   InstallSigbusHandler();           // once, before the first guard
//   sigjmp_buf jump;
//   if (sigsetjmp(jump, 0) != 0) {    // a store faulted: nothing after it ran, the guard is off
//     return Status::Error(EIO, "...");
//   }
//   t_sigbus_jump = &jump;
//   ... stores into the mapping (no objects with destructors, nothing to undo) ...
//   SigbusUnguard();
//
// No system call on the way in or out (the jump buffer does not save the signal mask; the
// handler runs with SIGBUS unblocked, SA_NODEFER, so nothing stays blocked after the jump).
// Used by ChunkLog for the mapped open page of a crash log (chunk_log.h).
#pragma once

#include <setjmp.h>

namespace blksnap {

// The thread's guard, if any (null outside a guard: see the top of this file).
extern thread_local sigjmp_buf* t_sigbus_jump;
void InstallSigbusHandler();
inline void SigbusUnguard() { t_sigbus_jump = nullptr; }

}  // namespace blksnap
