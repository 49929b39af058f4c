// Mount: BlockDevices served as files of a FUSE file system (libfuse3 low-level API).
//
// Design notes
// - Mounting: we open /dev/fuse and call mount(2) ourselves (we run as root) instead of
//   fuse_session_mount(), then hand the fd to libfuse with fuse_session_custom_io(). The
//   custom read() is what makes a clean stop possible: the fd is non-blocking and every worker
//   waits in poll() on it *and* on a stop eventfd, so the destructor can wake all workers even
//   while the kernel keeps the connection alive (a loop device still holds a file open after
//   the lazy unmount). Without it the workers would sleep in read(/dev/fuse) forever.
// - Stop: lazy unmount (MNT_DETACH: the name goes away at once, the superblock lives on while
//   files are open), signal the eventfd, join the session loop (requests in progress finish
//   first), destroy the session. Closing the last /dev/fuse fd aborts the connection, so the
//   remaining holders get ENOTCONN instead of waiting for a reply that never comes.
// - Inodes: 1 is the root directory; each AddFile gets a fresh inode number, never reused, so a
//   kernel inode or handle left over from a removed file can never reach a newer device.
// - State: Impl::mutex_ guards the name and inode maps; each FileEntry's own mutex guards its
//   device pointer (dropped by RemoveFile). A request copies the shared_ptr under that mutex
//   and does the device I/O without any lock held.
// - Handles: fi->fh owns a heap Handle (entry + whether writes are FUA), freed in release();
//   handles_ tracks them so Stop() frees those the kernel can no longer release.
// - Data path: FOPEN_DIRECT_IO on every open (no page cache), so loop devices and O_DIRECT
//   readers see exactly the device. max_write is the largest libfuse 3.14 accepts (its buffer,
//   FUSE_MAX_MAX_PAGES pages). libfuse 3.14 cannot set FOPEN_PARALLEL_DIRECT_WRITES, so
//   synchronous writers to one file serialize at the kernel's inode lock; the loop driver's
//   asynchronous direct I/O still overlaps requests (FUSE_CAP_ASYNC_DIO).
#define FUSE_USE_VERSION 314

#include "fuse/fuse_mount.h"

#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <linux/falloc.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "util/fd.h"

namespace blksnap::fuse {
namespace {

constexpr double kTimeout = 1.0;          // entry and attribute cache, seconds
constexpr unsigned kMaxWrite = 1u << 20;  // libfuse 3.14 clamps to its buffer size
constexpr unsigned kMaxBackground = 128;  // async direct I/O requests in flight per mount
constexpr unsigned kMaxThreads = 64;
constexpr unsigned kMaxIdleThreads = 16;

struct FileEntry {
  FileEntry(std::string n, fuse_ino_t i, uint64_t s, bool ro, std::shared_ptr<BlockDevice> d)
      : name(std::move(n)), ino(i), size(s), read_only(ro), device(std::move(d)) {}

  const std::string name;
  const fuse_ino_t ino;
  const uint64_t size;
  const bool read_only;
  std::atomic<int> open_count{0};

  std::shared_ptr<BlockDevice> Device() {
    std::lock_guard lock(mutex);
    return device;
  }
  void Drop() {
    std::shared_ptr<BlockDevice> old;
    std::lock_guard lock(mutex);
    old.swap(device);
  }

  std::mutex mutex;
  std::shared_ptr<BlockDevice> device;  // guarded by mutex; null once removed
};

struct Handle {
  std::shared_ptr<FileEntry> entry;
  bool fua = false;
};

Handle* HandleOf(fuse_file_info* fi) { return reinterpret_cast<Handle*>(fi->fh); }

bool ValidName(const std::string& name) {
  return !name.empty() && name.size() <= NAME_MAX && name != "." && name != ".." &&
         name.find('/') == std::string::npos && name.find('\0') == std::string::npos;
}

}  // namespace

class Mount::Impl {
 public:
  explicit Impl(std::string dir) : dir_(std::move(dir)) {}

  ~Impl() { Stop(); }

  Status Start();
  void Stop();

  Status AddFile(const std::string& name, std::shared_ptr<BlockDevice> device, bool read_only);
  Status RemoveFile(const std::string& name);
  bool IsOpen(const std::string& name) const;
  const std::string& dir() const { return dir_; }

 private:
  static Impl* Self(fuse_req_t req) { return static_cast<Impl*>(fuse_req_userdata(req)); }

  std::shared_ptr<FileEntry> FindIno(fuse_ino_t ino) const {
    std::lock_guard lock(mutex_);
    auto it = by_ino_.find(ino);
    return it == by_ino_.end() ? nullptr : it->second;
  }
  void ForgetHandle(Handle* handle);
  static struct stat RootAttr();
  static struct stat FileAttr(const FileEntry& entry);

  // libfuse callbacks.
  static void OnInit(void* userdata, fuse_conn_info* conn);
  static void OnLookup(fuse_req_t req, fuse_ino_t parent, const char* name);
  static void OnGetattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  static void OnSetattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set,
                        fuse_file_info* fi);
  static void OnReaddir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi);
  static void OnOpen(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  static void OnRelease(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  static void OnRead(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi);
  static void OnWrite(fuse_req_t req, fuse_ino_t ino, const char* buf, size_t size, off_t off,
                      fuse_file_info* fi);
  static void OnFsync(fuse_req_t req, fuse_ino_t ino, int datasync, fuse_file_info* fi);
  static void OnFlush(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  static void OnFallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
                          fuse_file_info* fi);
  static void OnLseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence, fuse_file_info* fi);

  // Custom I/O on the /dev/fuse fd (see the design notes).
  static ssize_t IoRead(int fd, void* buf, size_t len, void* userdata);
  static ssize_t IoWritev(int fd, iovec* iov, int count, void* userdata);

  const std::string dir_;
  fuse_session* session_ = nullptr;
  Fd stop_fd_;  // eventfd: readable once Stop() began
  bool mounted_ = false;
  std::thread loop_thread_;
  std::atomic<bool> stopped_{false};

  mutable std::mutex mutex_;
  std::map<std::string, std::shared_ptr<FileEntry>> by_name_;  // guarded by mutex_
  std::map<fuse_ino_t, std::shared_ptr<FileEntry>> by_ino_;    // guarded by mutex_
  std::set<Handle*> handles_;  // open handles, guarded by mutex_; freed by Stop if never released
  fuse_ino_t next_ino_ = FUSE_ROOT_ID + 1;  // guarded by mutex_
};

// ---- Mounting and stopping ------------------------------------------------------------------

namespace {

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

}  // namespace

Status Mount::Impl::Start() {
  int efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (efd < 0) return Status::FromErrno("eventfd");
  stop_fd_ = Fd(efd);

  Fd fuse_fd(::open("/dev/fuse", O_RDWR | O_CLOEXEC | O_NONBLOCK));  // until the session owns it
  if (!fuse_fd.valid()) return Status::FromErrno("open /dev/fuse");

  static const fuse_lowlevel_ops kOps = [] {
    fuse_lowlevel_ops ops{};
    ops.init = &Impl::OnInit;
    ops.lookup = &Impl::OnLookup;
    ops.getattr = &Impl::OnGetattr;
    ops.setattr = &Impl::OnSetattr;
    ops.readdir = &Impl::OnReaddir;
    ops.open = &Impl::OnOpen;
    ops.release = &Impl::OnRelease;
    ops.read = &Impl::OnRead;
    ops.write = &Impl::OnWrite;
    ops.flush = &Impl::OnFlush;
    ops.fsync = &Impl::OnFsync;
    ops.fallocate = &Impl::OnFallocate;
    ops.lseek = &Impl::OnLseek;
    return ops;
  }();
  const char* argv[] = {"blksnap", nullptr};
  fuse_args args = FUSE_ARGS_INIT(1, const_cast<char**>(argv));
  session_ = fuse_session_new(&args, &kOps, sizeof(kOps), this);
  fuse_opt_free_args(&args);
  if (session_ == nullptr) return Status::Error(ENOMEM, "fuse_session_new failed");

  std::string options = "fd=" + std::to_string(fuse_fd.get()) +
                        ",rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions";
  if (::mount("blksnap", dir_.c_str(), "fuse.blksnap", MS_NOSUID | MS_NODEV, options.c_str()) != 0)
    return Status::FromErrno("mount FUSE at " + dir_);
  mounted_ = true;

  static const fuse_custom_io kIo = {.writev = &Impl::IoWritev,
                                     .read = &Impl::IoRead,
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

void Mount::Impl::Stop() {
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
  std::lock_guard lock(mutex_);
  for (auto& [ino, entry] : by_ino_) entry->Drop();
  by_ino_.clear();
  by_name_.clear();
  // Handles the kernel can no longer release (the connection is gone).
  for (Handle* handle : handles_) delete handle;
  handles_.clear();
}

namespace {

// Each libfuse worker thread waits in its own epoll set: /dev/fuse with EPOLLEXCLUSIVE, so a
// new request wakes one idle worker instead of all of them (poll() on a shared fd wakes every
// waiter: with 16 idle workers that was ~10 context switches per 4 KiB request), and the stop
// eventfd without it, so Stop() wakes them all.
struct WorkerWait {
  const void* owner = nullptr;
  int fuse_fd = -1, stop_fd = -1;  // what epfd watches
  int epfd = -1;
  ~WorkerWait() {
    if (epfd >= 0) ::close(epfd);
  }
  bool Arm(const void* mount, int fuse, int stop) {
    if (owner == mount && fuse_fd == fuse && stop_fd == stop && epfd >= 0) return true;
    if (epfd >= 0) ::close(epfd);
    owner = nullptr;
    epfd = ::epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) return false;
    epoll_event fuse_ev{.events = EPOLLIN | EPOLLEXCLUSIVE, .data = {.fd = fuse}};
    epoll_event stop_ev{.events = EPOLLIN, .data = {.fd = stop}};
    if (::epoll_ctl(epfd, EPOLL_CTL_ADD, fuse, &fuse_ev) != 0 ||
        ::epoll_ctl(epfd, EPOLL_CTL_ADD, stop, &stop_ev) != 0) {
      ::close(epfd);
      epfd = -1;
      return false;
    }
    owner = mount;
    fuse_fd = fuse;
    stop_fd = stop;
    return true;
  }
};

}  // namespace

// A worker first tries the read (a busy worker going back for more finds queued requests
// without sleeping), and sleeps only when /dev/fuse is empty. Stop() wins over queued requests.
ssize_t Mount::Impl::IoRead(int fd, void* buf, size_t len, void* userdata) {
  auto* self = static_cast<Impl*>(userdata);
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
      int n = ::epoll_wait(wait.epfd, events, 2, -1);
      if (n < 0 && errno != EINTR) return -1;
    } else {
      pollfd fds[2] = {{.fd = fd, .events = POLLIN, .revents = 0},
                       {.fd = self->stop_fd_.get(), .events = POLLIN, .revents = 0}};
      if (::poll(fds, 2, -1) < 0 && errno != EINTR) return -1;
    }
  }
}

ssize_t Mount::Impl::IoWritev(int fd, iovec* iov, int count, void* /*userdata*/) {
  return ::writev(fd, iov, count);
}

// ---- Files ----------------------------------------------------------------------------------

Status Mount::Impl::AddFile(const std::string& name, std::shared_ptr<BlockDevice> device,
                            bool read_only) {
  if (!ValidName(name)) return Status::Error(EINVAL, "bad FUSE file name '" + name + "'");
  if (device == nullptr || device->size() == 0)
    return Status::Error(EINVAL, "no device or zero-sized device for " + name);
  if (stopped_) return Status::Error(ENODEV, "FUSE mount stopped");
  read_only = read_only || device->capabilities().read_only;
  std::lock_guard lock(mutex_);
  if (by_name_.count(name) != 0) return Status::Error(EEXIST, "FUSE file exists: " + name);
  auto entry =
      std::make_shared<FileEntry>(name, next_ino_++, device->size(), read_only, std::move(device));
  by_name_[name] = entry;
  by_ino_[entry->ino] = entry;
  return Status::Ok();
}

Status Mount::Impl::RemoveFile(const std::string& name) {
  std::shared_ptr<FileEntry> entry;
  {
    std::lock_guard lock(mutex_);
    auto it = by_name_.find(name);
    if (it == by_name_.end()) return Status::Error(ENOENT, "no FUSE file " + name);
    entry = it->second;
    by_name_.erase(it);
    by_ino_.erase(entry->ino);
  }
  entry->Drop();
  // Drop the kernel's cached name -> inode binding (no lock held: the kernel may need a
  // worker to finish a lookup first). Fails harmlessly when nothing is cached.
  if (session_ != nullptr && !stopped_)
    (void)fuse_lowlevel_notify_inval_entry(session_, FUSE_ROOT_ID, name.c_str(), name.size());
  return Status::Ok();
}

bool Mount::Impl::IsOpen(const std::string& name) const {
  std::lock_guard lock(mutex_);
  auto it = by_name_.find(name);
  return it != by_name_.end() && it->second->open_count.load() > 0;
}

// ---- Callbacks ------------------------------------------------------------------------------

struct stat Mount::Impl::RootAttr() {
  struct stat st {};
  st.st_ino = FUSE_ROOT_ID;
  st.st_mode = S_IFDIR | 0755;
  st.st_nlink = 2;
  return st;
}

struct stat Mount::Impl::FileAttr(const FileEntry& entry) {
  struct stat st {};
  st.st_ino = entry.ino;
  st.st_mode = S_IFREG | (entry.read_only ? 0400 : 0600);
  st.st_nlink = 1;
  st.st_size = static_cast<off_t>(entry.size);
  st.st_blksize = 4096;
  st.st_blocks = static_cast<blkcnt_t>((entry.size + 511) / 512);
  return st;
}

void Mount::Impl::OnInit(void* /*userdata*/, fuse_conn_info* conn) {
  conn->max_write = kMaxWrite;
  conn->max_read = 0;  // no limit beyond max_pages
  conn->max_readahead = 0;
  conn->max_background = kMaxBackground;
  conn->congestion_threshold = kMaxBackground * 3 / 4;
  if (conn->capable & FUSE_CAP_ASYNC_DIO) conn->want |= FUSE_CAP_ASYNC_DIO;
  conn->want &= ~(FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE |
                  FUSE_CAP_WRITEBACK_CACHE);
}

void Mount::Impl::OnLookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Impl* self = Self(req);
  if (parent != FUSE_ROOT_ID) {
    fuse_reply_err(req, ENOTDIR);
    return;
  }
  std::shared_ptr<FileEntry> entry;
  {
    std::lock_guard lock(self->mutex_);
    auto it = self->by_name_.find(name);
    if (it != self->by_name_.end()) entry = it->second;
  }
  if (entry == nullptr) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  fuse_entry_param e{};
  e.ino = entry->ino;
  e.generation = 1;
  e.attr = FileAttr(*entry);
  e.attr_timeout = kTimeout;
  e.entry_timeout = kTimeout;
  fuse_reply_entry(req, &e);
}

void Mount::Impl::OnGetattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* /*fi*/) {
  if (ino == FUSE_ROOT_ID) {
    struct stat st = RootAttr();
    fuse_reply_attr(req, &st, kTimeout);
    return;
  }
  auto entry = Self(req)->FindIno(ino);
  if (entry == nullptr) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  struct stat st = FileAttr(*entry);
  fuse_reply_attr(req, &st, kTimeout);
}

void Mount::Impl::OnSetattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set,
                            fuse_file_info* /*fi*/) {
  if (ino == FUSE_ROOT_ID) {
    struct stat st = RootAttr();
    fuse_reply_attr(req, &st, kTimeout);
    return;
  }
  auto entry = Self(req)->FindIno(ino);
  if (entry == nullptr) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  // The size of a device file is fixed; mode, owner and times are accepted and ignored.
  if ((to_set & FUSE_SET_ATTR_SIZE) && static_cast<uint64_t>(attr->st_size) != entry->size) {
    fuse_reply_err(req, EPERM);
    return;
  }
  struct stat st = FileAttr(*entry);
  fuse_reply_attr(req, &st, kTimeout);
}

void Mount::Impl::OnReaddir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                            fuse_file_info* /*fi*/) {
  Impl* self = Self(req);
  if (ino != FUSE_ROOT_ID) {
    fuse_reply_err(req, ENOTDIR);
    return;
  }
  std::vector<std::pair<std::string, struct stat>> names;
  names.emplace_back(".", RootAttr());
  names.emplace_back("..", RootAttr());
  {
    std::lock_guard lock(self->mutex_);
    for (const auto& [name, entry] : self->by_name_) names.emplace_back(name, FileAttr(*entry));
  }
  std::vector<char> buf(size);
  size_t used = 0;
  for (size_t i = static_cast<size_t>(off); i < names.size(); ++i) {
    size_t need = fuse_add_direntry(req, buf.data() + used, size - used, names[i].first.c_str(),
                                    &names[i].second, static_cast<off_t>(i + 1));
    if (need > size - used) break;
    used += need;
  }
  fuse_reply_buf(req, buf.data(), used);
}

void Mount::Impl::OnOpen(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  auto entry = Self(req)->FindIno(ino);
  if (entry == nullptr) {
    fuse_reply_err(req, ino == FUSE_ROOT_ID ? EISDIR : ENOENT);
    return;
  }
  int access = fi->flags & O_ACCMODE;
  if (entry->read_only && access != O_RDONLY) {
    fuse_reply_err(req, EROFS);
    return;
  }
  if (fi->flags & O_TRUNC) {
    fuse_reply_err(req, EPERM);
    return;
  }
  Impl* self = Self(req);
  auto* handle = new Handle{entry, (fi->flags & (O_SYNC | O_DSYNC)) != 0};
  fi->fh = reinterpret_cast<uint64_t>(handle);
  fi->direct_io = 1;
  fi->keep_cache = 0;
  entry->open_count.fetch_add(1);
  {
    std::lock_guard lock(self->mutex_);
    self->handles_.insert(handle);
  }
  if (fuse_reply_open(req, fi) != 0) {
    // The opener went away (interrupted): the kernel never sends release for this handle.
    self->ForgetHandle(handle);
  }
}

void Mount::Impl::OnRelease(fuse_req_t req, fuse_ino_t /*ino*/, fuse_file_info* fi) {
  Self(req)->ForgetHandle(HandleOf(fi));
  fuse_reply_err(req, 0);
}

void Mount::Impl::ForgetHandle(Handle* handle) {
  handle->entry->open_count.fetch_sub(1);
  {
    std::lock_guard lock(mutex_);
    handles_.erase(handle);
  }
  delete handle;
}

void Mount::Impl::OnRead(fuse_req_t req, fuse_ino_t /*ino*/, size_t size, off_t off,
                         fuse_file_info* fi) {
  FileEntry& entry = *HandleOf(fi)->entry;
  auto device = entry.Device();
  if (device == nullptr) {
    fuse_reply_err(req, ENODEV);
    return;
  }
  uint64_t offset = static_cast<uint64_t>(off);
  if (off < 0 || offset >= entry.size) {
    fuse_reply_buf(req, nullptr, 0);
    return;
  }
  size = static_cast<size_t>(std::min<uint64_t>(size, entry.size - offset));
  thread_local std::vector<uint8_t> buf;
  if (buf.size() < size) buf.resize(size);
  Status status = device->Read(offset, std::span<uint8_t>(buf.data(), size));
  if (!status.ok()) {
    fuse_reply_err(req, status.errnum());
    return;
  }
  fuse_reply_buf(req, reinterpret_cast<const char*>(buf.data()), size);
}

void Mount::Impl::OnWrite(fuse_req_t req, fuse_ino_t /*ino*/, const char* buf, size_t size,
                          off_t off, fuse_file_info* fi) {
  Handle& handle = *HandleOf(fi);
  FileEntry& entry = *handle.entry;
  auto device = entry.Device();
  if (device == nullptr) {
    fuse_reply_err(req, ENODEV);
    return;
  }
  uint64_t offset = static_cast<uint64_t>(off);
  if (off < 0 || offset >= entry.size) {
    if (size == 0) {
      fuse_reply_write(req, 0);
    } else {
      fuse_reply_err(req, ENOSPC);
    }
    return;
  }
  size = static_cast<size_t>(std::min<uint64_t>(size, entry.size - offset));
  // O_DSYNC may come per request (the kernel passes IOCB_DSYNC as write flags).
  bool fua = handle.fua || (fi->flags & (O_SYNC | O_DSYNC)) != 0;
  Status status =
      device->Write(offset, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(buf), size),
                    fua ? kWriteFua : 0);
  if (!status.ok()) {
    fuse_reply_err(req, status.errnum());
    return;
  }
  fuse_reply_write(req, size);
}

void Mount::Impl::OnFlush(fuse_req_t req, fuse_ino_t /*ino*/, fuse_file_info* /*fi*/) {
  // close(2): nothing buffered here (direct I/O); durability is fsync's job.
  fuse_reply_err(req, 0);
}

void Mount::Impl::OnFsync(fuse_req_t req, fuse_ino_t /*ino*/, int /*datasync*/,
                          fuse_file_info* fi) {
  auto device = HandleOf(fi)->entry->Device();
  if (device == nullptr) {
    fuse_reply_err(req, ENODEV);
    return;
  }
  Status status = device->Flush();
  fuse_reply_err(req, status.ok() ? 0 : status.errnum());
}

void Mount::Impl::OnFallocate(fuse_req_t req, fuse_ino_t /*ino*/, int mode, off_t off, off_t len,
                              fuse_file_info* fi) {
  FileEntry& entry = *HandleOf(fi)->entry;
  if (mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) {
    fuse_reply_err(req, EOPNOTSUPP);
    return;
  }
  if (entry.read_only) {
    fuse_reply_err(req, EROFS);
    return;
  }
  auto device = entry.Device();
  if (device == nullptr) {
    fuse_reply_err(req, ENODEV);
    return;
  }
  if (off < 0 || len <= 0) {
    fuse_reply_err(req, EINVAL);
    return;
  }
  uint64_t offset = static_cast<uint64_t>(off);
  uint64_t end = offset + static_cast<uint64_t>(len);
  if (end < offset) end = UINT64_MAX;
  if (end > entry.size && !(mode & FALLOC_FL_KEEP_SIZE)) {
    fuse_reply_err(req, ENOSPC);  // the file cannot grow
    return;
  }
  end = std::min(end, entry.size);
  if (offset >= end) {
    fuse_reply_err(req, 0);
    return;
  }
  Status status;
  if (mode & FALLOC_FL_PUNCH_HOLE) {
    status = device->WriteZeroes(offset, end - offset, 0);
  } else if (mode & FALLOC_FL_ZERO_RANGE) {
    status = device->WriteZeroes(offset, end - offset, kZeroNoHole);
  }  // plain allocation: the device is fully provisioned already
  fuse_reply_err(req, status.ok() ? 0 : status.errnum());
}

// SEEK_DATA / SEEK_HOLE from the device's BlockStatus (holes: kExtentHole; allocated zeroes
// count as data), so sparse-aware readers (cp --sparse, qemu-img) can skip an image's holes.
void Mount::Impl::OnLseek(fuse_req_t req, fuse_ino_t /*ino*/, off_t off, int whence,
                          fuse_file_info* fi) {
  FileEntry& entry = *HandleOf(fi)->entry;
  if (whence != SEEK_DATA && whence != SEEK_HOLE) {
    fuse_reply_err(req, EINVAL);  // the kernel handles SEEK_SET/CUR/END itself
    return;
  }
  auto device = entry.Device();
  if (device == nullptr) {
    fuse_reply_err(req, ENODEV);
    return;
  }
  uint64_t pos = static_cast<uint64_t>(off);
  if (off < 0 || pos >= entry.size) {
    fuse_reply_err(req, ENXIO);
    return;
  }
  if (!device->capabilities().block_status) {  // all data
    fuse_reply_lseek(req, whence == SEEK_DATA ? off : static_cast<off_t>(entry.size));
    return;
  }
  while (pos < entry.size) {
    auto extents = device->BlockStatus(pos, entry.size - pos);
    if (!extents.ok()) {
      fuse_reply_err(req, extents.status().errnum());
      return;
    }
    if (extents->empty()) break;
    for (const Extent& e : *extents) {
      bool hole = (e.flags & kExtentHole) != 0;
      if (hole == (whence == SEEK_HOLE)) {
        fuse_reply_lseek(req, static_cast<off_t>(std::max(pos, e.offset)));
        return;
      }
      pos = std::max(pos, e.offset + e.length);
    }
  }
  if (whence == SEEK_DATA) {
    fuse_reply_err(req, ENXIO);  // only holes after off
  } else {
    fuse_reply_lseek(req, static_cast<off_t>(entry.size));  // the implicit hole at EOF
  }
}

// ---- Mount ----------------------------------------------------------------------------------

Result<std::unique_ptr<Mount>> Mount::Create(const std::string& dir) {
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
  auto impl = std::make_unique<Impl>(path);
  BLKSNAP_RETURN_IF_ERROR(impl->Start());
  return std::unique_ptr<Mount>(new Mount(std::move(impl)));
}

Mount::Mount(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Mount::~Mount() = default;

Status Mount::AddFile(const std::string& name, std::shared_ptr<BlockDevice> device,
                      bool read_only) {
  return impl_->AddFile(name, std::move(device), read_only);
}
Status Mount::RemoveFile(const std::string& name) { return impl_->RemoveFile(name); }
bool Mount::IsOpen(const std::string& name) const { return impl_->IsOpen(name); }
std::string Mount::FilePath(const std::string& name) const { return impl_->dir() + "/" + name; }
const std::string& Mount::dir() const { return impl_->dir(); }

}  // namespace blksnap::fuse
