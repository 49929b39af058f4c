// NameThisThread: the calling thread's name as `top -H`, `ps -L`, perf and /proc/*/task/*/comm
// show it ("ublk-q0", "storer"), so a profile or a per-thread CPU count tells the daemon's
// threads apart. Linux keeps 15 bytes; longer names are cut. Best effort, never fails.
#pragma once

#include <pthread.h>

#include <string>

namespace blksnap {

inline void NameThisThread(const std::string& name) {
  (void)::pthread_setname_np(::pthread_self(), name.substr(0, 15).c_str());
}

}  // namespace blksnap
