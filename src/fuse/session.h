// Session: one FUSE mount point and the libfuse threads that serve it (low-level API).
//
//   BLKSNAP_ASSIGN_OR_RETURN(std::string dir, PrepareMountDir("/run/blksnap/fuse"));
//   Session session(dir);
//   BLKSNAP_RETURN_IF_ERROR(session.Start(ops, userdata));  // ops get userdata
//   ...
//   session.Stop();  // or let it go out of scope
//
// It mounts and serves; what the files are is the operations' business (fuse_ops.h).
//
// Thread safety: Start and Stop are called by the owner; stopped() and InvalidateEntry from
// any thread. The operations run on the session's worker threads (up to 64, 16 idle).
#pragma once

#include <sys/types.h>
#include <sys/uio.h>

#include <atomic>
#include <string>
#include <thread>

#include "blksnap/status.h"
#include "util/fd.h"

struct fuse_session;
struct fuse_lowlevel_ops;
struct fuse_req;
typedef struct fuse_req* fuse_req_t;  // as <fuse_lowlevel.h> declares it

namespace blksnap::fuse {

// Makes dir ready to mount on: creates it if missing, lazily unmounts dead FUSE mounts stacked
// there (statfs fails with ENOTCONN), and returns its canonical path. EBUSY if a live FUSE file
// system is mounted at dir, ENOTDIR if it is not a directory.
Result<std::string> PrepareMountDir(const std::string& dir);

class Session {
 public:
  explicit Session(std::string dir) : dir_(std::move(dir)) {}
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
  ~Session() { Stop(); }

  // Mounts (fstype fuse.blksnap, allow_other, default_permissions) at dir and starts serving
  // with ops. An operation finds userdata (which must outlive Stop()) with Userdata(req).
  Status Start(const fuse_lowlevel_ops& ops, void* userdata);

  // The userdata given to Start() of the session serving req. (libfuse hands its own
  // userdata to the custom I/O as well, so that one is the Session itself.)
  static void* Userdata(fuse_req_t req);

  // Lazy unmount, wakes and joins every worker (requests in progress finish first), destroys
  // the session (closing /dev/fuse aborts the connection: later requests from files still open
  // fail with ENOTCONN). Idempotent.
  void Stop();

  bool stopped() const { return stopped_.load(); }
  // Drops the kernel's cached name -> inode binding of a root entry. No-op once stopped.
  void InvalidateEntry(const std::string& name);

  const std::string& dir() const { return dir_; }

 private:
  // Custom I/O on the /dev/fuse fd (see session.cc).
  static ssize_t IoRead(int fd, void* buf, size_t len, void* userdata);
  static ssize_t IoWritev(int fd, struct iovec* iov, int count, void* userdata);

  const std::string dir_;
  fuse_session* session_ = nullptr;
  void* userdata_ = nullptr;  // for the operations
  Fd stop_fd_;                // eventfd: readable once Stop() began
  bool mounted_ = false;
  std::thread loop_thread_;
  std::atomic<bool> stopped_{false};
};

}  // namespace blksnap::fuse
