// Session: mount(2) of a FUSE file system and the libfuse multi-threaded loop serving it.
//
// Design notes
// - Mounting: we open /dev/fuse and call mount(2) ourselves (we run as root) instead of
//   fuse_session_mount(), then hand the fd to libfuse with fuse_session_custom_io(). The
//   custom read() is what makes a clean stop possible: the fd is non-blocking and every worker
//   waits on it *and* on a stop eventfd, so Stop() can wake all workers even while the kernel
//   keeps the connection alive (a loop device still holds a file open after the lazy unmount).
//   Without it the workers would sleep in read(/dev/fuse) forever.
// - Waiting: each libfuse worker thread waits in its own epoll set: /dev/fuse with
//   EPOLLEXCLUSIVE, so a new request wakes one idle worker instead of all of them (poll() on a
//   shared fd wakes every waiter: with 16 idle workers that was ~10 context switches per 4 KiB
//   request), and the stop eventfd without it, so Stop() wakes them all. A worker first tries
//   the read (a busy worker going back for more finds queued requests without sleeping) and
//   sleeps only when /dev/fuse is empty. Stop() wins over queued requests.
// - Stop: lazy unmount (MNT_DETACH: the name goes away at once, the superblock lives on while
//   files are open), signal the eventfd, join the session loop (requests in progress finish
//   first), destroy the session. Closing the last /dev/fuse fd aborts the connection, so the
//   remaining holders get ENOTCONN instead of waiting for a reply that never comes.
// - States: new -> started (mounted_, loop_thread_) -> stopped (stopped_, for good). Only
//   stopped_ and stop_fd_ are read by the worker threads; the rest is the owner's.
#define FUSE_USE_VERSION 314

#include "fuse/session.h"

#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>

namespace blksnap::fuse {
namespace {

constexpr unsigned kMaxThreads = 64;
constexpr unsigned kMaxIdleThreads = 16;

// Lazily unmounts dead FUSE mounts stacked at dir (statfs fails with ENOTCONN there).
Status ClearStaleMounts(const std::string& dir) {
  for (int i = 0; i < 16; ++i) {
    struct statfs st;
    if (::statfs(dir.c_str(), &st) == 0) return Status::Ok();
    if (errno == ENOENT) {
      if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST)
        return Status::FromErrno("mkdir " + dir);
      continue;
    }
    if (errno != ENOTCONN && errno != ECONNABORTED) return Status::FromErrno("statfs " + dir);
    if (::umount2(dir.c_str(), MNT_DETACH) != 0)
      return Status::FromErrno("unmount stale FUSE mount at " + dir);
  }
  return Status::Error(EBUSY, "too many stale mounts at " + dir);
}

bool IsFuseMountRoot(const std::string& dir) {
  struct statfs st;
  if (::statfs(dir.c_str(), &st) != 0) return false;
  constexpr long kFuseSuperMagic = 0x65735546;
  if (st.f_type != kFuseSuperMagic) return false;
  // The root of a mount has a different device than its parent directory.
  struct stat self, parent;
  if (::stat(dir.c_str(), &self) != 0 || ::stat((dir + "/..").c_str(), &parent) != 0) return false;
  return self.st_dev != parent.st_dev;
}

// A worker thread's epoll set over (/dev/fuse, stop eventfd); see the design notes.
struct WorkerWait {
  const void* owner = nullptr;
  int fuse_fd = -1, stop_fd = -1;  // what epfd watches
  Fd epfd;

  bool Arm(const void* session, int fuse, int stop) {
    if (owner == session && fuse_fd == fuse && stop_fd == stop && epfd.valid()) return true;
    owner = nullptr;
    epfd = Fd(::epoll_create1(EPOLL_CLOEXEC));
    if (!epfd.valid()) return false;
    epoll_event fuse_ev{.events = EPOLLIN | EPOLLEXCLUSIVE, .data = {.fd = fuse}};
    epoll_event stop_ev{.events = EPOLLIN, .data = {.fd = stop}};
    if (::epoll_ctl(epfd.get(), EPOLL_CTL_ADD, fuse, &fuse_ev) != 0 ||
        ::epoll_ctl(epfd.get(), EPOLL_CTL_ADD, stop, &stop_ev) != 0) {
      epfd.Close();
      return false;
    }
    owner = session;
    fuse_fd = fuse;
    stop_fd = stop;
    return true;
  }
};

}  // namespace

Result<std::string> PrepareMountDir(const std::string& dir) {
  if (dir.empty()) return Status::Error(EINVAL, "empty FUSE mount dir");
  std::string path = dir;
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  BLKSNAP_RETURN_IF_ERROR(ClearStaleMounts(path));
  char resolved[PATH_MAX];
  if (::realpath(path.c_str(), resolved) == nullptr) return Status::FromErrno("realpath " + path);
  path = resolved;
  if (IsFuseMountRoot(path)) return Status::Error(EBUSY, "a live FUSE file system is at " + path);
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return Status::FromErrno("stat " + path);
  if (!S_ISDIR(st.st_mode)) return Status::Error(ENOTDIR, path + " is not a directory");
  return path;
}

Status Session::Start(const fuse_lowlevel_ops& ops, void* userdata) {
  stop_fd_ = Fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!stop_fd_.valid()) return Status::FromErrno("eventfd");

  Fd fuse_fd(::open("/dev/fuse", O_RDWR | O_CLOEXEC | O_NONBLOCK));  // until the session owns it
  if (!fuse_fd.valid()) return Status::FromErrno("open /dev/fuse");

  const char* argv[] = {"blksnap", nullptr};
  fuse_args args = FUSE_ARGS_INIT(1, const_cast<char**>(argv));
  userdata_ = userdata;
  session_ = fuse_session_new(&args, &ops, sizeof(ops), this);
  fuse_opt_free_args(&args);
  if (session_ == nullptr) return Status::Error(ENOMEM, "fuse_session_new failed");

  std::string options = "fd=" + std::to_string(fuse_fd.get()) +
                        ",rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions";
  if (::mount("blksnap", dir_.c_str(), "fuse.blksnap", MS_NOSUID | MS_NODEV, options.c_str()) != 0)
    return Status::FromErrno("mount FUSE at " + dir_);
  mounted_ = true;

  static const fuse_custom_io kIo = {.writev = &Session::IoWritev,
                                     .read = &Session::IoRead,
                                     .splice_receive = nullptr,
                                     .splice_send = nullptr};
  if (int res = fuse_session_custom_io(session_, &kIo, fuse_fd.get()); res != 0)
    return Status::Error(-res, "fuse_session_custom_io");
  (void)fuse_fd.Release();  // the session closes it now

  loop_thread_ = std::thread([this] {
    fuse_loop_config* config = fuse_loop_cfg_create();
    fuse_loop_cfg_set_clone_fd(config, 0);
    fuse_loop_cfg_set_max_threads(config, kMaxThreads);
    fuse_loop_cfg_set_idle_threads(config, kMaxIdleThreads);
    fuse_session_loop_mt(session_, config);
    fuse_loop_cfg_destroy(config);
  });
  return Status::Ok();
}

void Session::Stop() {
  if (stopped_.exchange(true)) return;
  if (mounted_) {
    // Fails only if someone unmounted it already (EINVAL); nothing else to do then.
    (void)::umount2(dir_.c_str(), MNT_DETACH);
    mounted_ = false;
  }
  if (stop_fd_.valid()) {
    uint64_t one = 1;
    ssize_t n = ::write(stop_fd_.get(), &one, sizeof(one));
    (void)n;
  }
  if (session_ != nullptr) fuse_session_exit(session_);
  if (loop_thread_.joinable()) loop_thread_.join();
  if (session_ != nullptr) {
    fuse_session_destroy(session_);  // closes /dev/fuse: aborts the connection
    session_ = nullptr;
  }
}

void* Session::Userdata(fuse_req_t req) {
  return static_cast<Session*>(fuse_req_userdata(req))->userdata_;
}

void Session::InvalidateEntry(const std::string& name) {
  // No lock held by the caller: the kernel may need a worker to finish a lookup first. Fails
  // harmlessly when nothing is cached.
  if (session_ != nullptr && !stopped_)
    (void)fuse_lowlevel_notify_inval_entry(session_, FUSE_ROOT_ID, name.c_str(), name.size());
}

ssize_t Session::IoRead(int fd, void* buf, size_t len, void* userdata) {
  auto* self = static_cast<Session*>(userdata);
  thread_local WorkerWait wait;
  for (;;) {
    if (self->stopped_.load()) {
      errno = ENODEV;  // libfuse ends the session loop on ENODEV
      return -1;
    }
    ssize_t res = ::read(fd, buf, len);
    if (res >= 0 || (errno != EAGAIN && errno != EINTR)) return res;
    if (errno == EINTR) continue;
    if (wait.Arm(self, fd, self->stop_fd_.get())) {
      epoll_event events[2];
      int n = ::epoll_wait(wait.epfd.get(), events, 2, -1);
      if (n < 0 && errno != EINTR) return -1;
    } else {
      pollfd fds[2] = {{.fd = fd, .events = POLLIN, .revents = 0},
                       {.fd = self->stop_fd_.get(), .events = POLLIN, .revents = 0}};
      if (::poll(fds, 2, -1) < 0 && errno != EINTR) return -1;
    }
  }
}

ssize_t Session::IoWritev(int fd, iovec* iov, int count, void* /*userdata*/) {
  return ::writev(fd, iov, count);
}

}  // namespace blksnap::fuse
