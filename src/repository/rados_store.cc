// RadosStore: the ObjectStore of a RADOS pool (see rados_store.h for the URL and the semantics).
//
// librados's C API (librados.h): its C++ header does not compile under clang in C++20 (an
// ambiguous operator== in buffer.h of Ceph 16), and the C calls return -errno, never throw.
// State: a Connection (the rados_t handle, connected, and the pool's rados_ioctx_t set to the
// namespace), shared by the store and every lease it handed out, so a lease may outlive the
// store; the last of them shuts the handle down. librados is thread-safe for operations on one
// ioctx, so the store itself has no mutable state and no lock.
//
// Get is one read operation {stat, read(0, capacity)}: the size and the bytes come from the same
// version of the object, so a concurrent Put is never half seen; if the object is larger than
// the capacity (first kFirstReadBytes), the operation is repeated with the size it reported.
// ReadInto is the same operation into the caller's buffer, once (EMSGSIZE if the object is
// larger). Put and PutIfAbsent copy the bytes into librados's buffer (see Put): large blobs into
// one in huge pages (rados_write.h), small ones through the C calls.
//
// Leases: lock_shared / lock_exclusive (cls_lock on the OSD) of the lock "blksnap" on the object
// "lock" (a reserved name, never listed), with a random cookie per lease and a duration of
// lease_seconds. A lease thread renews it every third of that (LOCK_FLAG_MAY_RENEW: renewed if
// held, taken again if it had expired and nobody else took it); its destructor stops the thread
// (mu_ and wake_ of the lease) and unlocks. A holder that dies stops renewing: its lock expires
// after at most lease_seconds. Lock(wait=true) retries EBUSY with backoff (10 ms doubling to 1 s).
//
// Errors: librados returns -errno; Status carries it with "what, which object, which pool":
// "write 'chunks/ab/x' in rados://blksnap". Messages never carry a key (the URL cannot hold
// one), and name the configuration path and user only where the connection failed.
#include "repository/rados_store.h"

#include <rados/librados.h>
#include <sys/random.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <thread>

#include "repository/lease_clock.h"
#include "repository/rados_write.h"
#include "repository/repository_format.h"
#include "util/mutex.h"
#include "util/thread_annotations.h"

namespace blksnap::repo {
namespace {

constexpr char kScheme[] = "rados://";
constexpr char kLockName[] = "blksnap";                  // the cls_lock name on the lock object
const char* const kLockObjectName = kLockObject.data();  // "lock" (a literal: NUL-terminated)
constexpr char kSharedTag[] = "blksnap";
// A default chunk (4 MiB) and its blob header in one round trip (ceph_bench: with 1 MiB every
// chunk was read twice, 5 MiB moved for 4).
constexpr size_t kFirstReadBytes = (4 << 20) + (64 << 10);
constexpr auto kFirstBackoff = std::chrono::milliseconds(10);
constexpr auto kMaxBackoff = std::chrono::milliseconds(1000);

bool RadosNameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-';
}

Status CheckRadosName(std::string_view value, std::string_view what) {
  if (value.empty()) return Status::Error(EINVAL, "rados URL: empty " + std::string(what));
  if (!std::all_of(value.begin(), value.end(), RadosNameChar)) {
    return Status::Error(EINVAL, "rados URL: " + std::string(what) + " '" + std::string(value) +
                                     "' has characters other than [A-Za-z0-9._-]");
  }
  return Status::Ok();
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

Result<std::string> Unescape(std::string_view value, std::string_view key) {
  std::string out;
  for (size_t i = 0; i < value.size(); ++i) {
    if (value[i] != '%') {
      out += value[i];
      continue;
    }
    const int hi = i + 2 < value.size() ? HexValue(value[i + 1]) : -1;
    const int lo = i + 2 < value.size() ? HexValue(value[i + 2]) : -1;
    if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
      return Status::Error(EINVAL, "rados URL: bad %-escape in " + std::string(key));
    }
    out += static_cast<char>(hi * 16 + lo);
    i += 2;
  }
  return out;
}

std::string RandomCookie() {
  uint64_t value = 0;
  if (::getrandom(&value, sizeof(value), 0) != sizeof(value)) {
    value = static_cast<uint64_t>(::getpid()) << 32 ^
            static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex(16, '0');
  for (int i = 0; i < 16; ++i) hex[i] = kHex[(value >> (4 * i)) & 0xf];
  return hex;
}

std::string Quoted(const std::string& name) { return "'" + name + "'"; }

// The cluster handle and the pool's ioctx; shut down when the store and its last lease are gone.
struct Connection {
  rados_t cluster = nullptr;
  rados_ioctx_t io = nullptr;
  std::string where;  // rados://POOL[/NS]

  Connection() = default;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  ~Connection() {
    if (io != nullptr) rados_ioctx_destroy(io);
    if (cluster != nullptr) rados_shutdown(cluster);
  }

  // A librados result (-errno) as a Status: "what in rados://pool: strerror".
  Status Error(int r, const std::string& what) const {
    std::string message = what + " in " + where;
    if (r == -ENOSPC || r == -EDQUOT) message += " (the cluster or pool is full)";
    if (r == -EPERM || r == -EACCES) message += " (access denied to this user)";
    return Status::Error(r < 0 ? -r : EIO, message);
  }
};

class RadosLease : public Lease {
 public:
  RadosLease(std::shared_ptr<Connection> conn, LockMode mode, std::string cookie, int seconds)
      : conn_(std::move(conn)),
        mode_(mode),
        cookie_(std::move(cookie)),
        seconds_(seconds),
        clock_(std::chrono::milliseconds(seconds * 1000 / 2)) {
    renewer_ = std::thread([this] { RenewLoop(); });
  }

  bool Lapsed() const override { return clock_.Lapsed(); }

  ~RadosLease() override {
    {
      MutexLock lock(mu_);
      stop_ = true;
    }
    wake_.SignalAll();
    renewer_.join();
    // ENOENT if it expired meanwhile: nothing to release then.
    rados_unlock(conn_->io, kLockObjectName, kLockName, cookie_.c_str());
  }

  // lock_shared / lock_exclusive with this lease's cookie; -EBUSY if the other kind is held.
  static int Take(rados_ioctx_t io, LockMode mode, const std::string& cookie, int seconds,
                  uint8_t flags) {
    timeval duration{seconds, 0};
    const std::string description = "blksnap pid " + std::to_string(::getpid());  // rados lock info
    if (mode == LockMode::kShared) {
      return rados_lock_shared(io, kLockObjectName, kLockName, cookie.c_str(), kSharedTag,
                               description.c_str(), &duration, flags);
    }
    return rados_lock_exclusive(io, kLockObjectName, kLockName, cookie.c_str(), description.c_str(),
                                &duration, flags);
  }

 private:
  void RenewLoop() EXCLUDES(mu_) {
    const auto period = std::chrono::milliseconds(seconds_ * 1000 / 3);
    while (true) {
      {
        MutexLock lock(mu_);
        if (wake_.WaitFor(mu_, period, [this]() REQUIRES(mu_) { return stop_; })) return;
      }
      // A failure (the cluster unreachable for a while, or another holder took the lock after
      // it expired) is retried at the next period; Lapsed() tells the holder.
      if (Take(conn_->io, mode_, cookie_, seconds_, LIBRADOS_LOCK_FLAG_MAY_RENEW) == 0)
        clock_.Renewed();
    }
  }

  const std::shared_ptr<Connection> conn_;
  const LockMode mode_;
  const std::string cookie_;
  const int seconds_;
  LeaseClock clock_;
  Mutex mu_;
  CondVar wake_;
  bool stop_ GUARDED_BY(mu_) = false;
  std::thread renewer_;
};

class RadosStore : public ObjectStore {
 public:
  RadosStore(std::shared_ptr<Connection> conn, int lease_seconds)
      : conn_(std::move(conn)), lease_seconds_(lease_seconds) {}

  // The data is copied into a librados buffer before the write: a write that times out (the OSD
  // op timeout) may still be queued in librados's messenger, so it must not point at our buffer,
  // which the caller reuses or frees (a zero-copy write through librados.hpp was measured, and
  // dropped for this reason: docs/performance.md). Large blobs are copied into huge pages.
  Status Put(const std::string& name, std::span<const uint8_t> data) override {
    BLKSNAP_RETURN_IF_ERROR(ValidateObjectName(name));
    const int r = data.size() >= kRadosHugeCopyMinimum
                      ? RadosWriteFull(conn_->io, name.c_str(), data.data(), data.size(), false)
                      : rados_write_full(conn_->io, name.c_str(),
                                         reinterpret_cast<const char*>(data.data()), data.size());
    if (r < 0) return conn_->Error(r, "write " + Quoted(name));
    return Status::Ok();
  }

  Status PutIfAbsent(const std::string& name, std::span<const uint8_t> data) override {
    BLKSNAP_RETURN_IF_ERROR(ValidateObjectName(name));
    int r;
    if (data.size() >= kRadosHugeCopyMinimum) {
      r = RadosWriteFull(conn_->io, name.c_str(), data.data(), data.size(), true);
    } else {
      rados_write_op_t op = rados_create_write_op();
      rados_write_op_create(op, LIBRADOS_CREATE_EXCLUSIVE, nullptr);
      rados_write_op_write_full(op, reinterpret_cast<const char*>(data.data()), data.size());
      r = rados_write_op_operate(op, conn_->io, name.c_str(), nullptr, 0);
      rados_release_write_op(op);
    }
    if (r == -EEXIST) return Status::Error(EEXIST, "object " + Quoted(name) + " exists");
    if (r < 0) return conn_->Error(r, "create " + Quoted(name));
    return Status::Ok();
  }

  Result<std::vector<uint8_t>> Get(const std::string& name) override {
    BLKSNAP_RETURN_IF_ERROR(ValidateObjectName(name));
    size_t capacity = kFirstReadBytes;
    while (true) {
      // Default-initialised: the read fills what the object has, the rest is cut off.
      std::unique_ptr<uint8_t[]> data(new uint8_t[capacity]);
      BLKSNAP_ASSIGN_OR_RETURN(const uint64_t size, Read(name, {data.get(), capacity}));
      if (size <= capacity) return std::vector<uint8_t>(data.get(), data.get() + size);
      capacity = size;  // larger than the first guess: once more, with the size it has
    }
  }

  Result<size_t> ReadInto(const std::string& name, std::span<uint8_t> out) override {
    BLKSNAP_RETURN_IF_ERROR(ValidateObjectName(name));
    BLKSNAP_ASSIGN_OR_RETURN(const uint64_t size, Read(name, out));
    if (size > out.size()) {
      return Status::Error(EMSGSIZE, "object " + Quoted(name) + " is longer than " +
                                         std::to_string(out.size()) + " bytes");
    }
    return size;
  }

  // A stat, then one read of the last bytes (two round trips; Get would move the whole object).
  Result<Tail> ReadTail(const std::string& name, std::span<uint8_t> out) override {
    BLKSNAP_ASSIGN_OR_RETURN(const uint64_t size, Size(name));
    Tail tail{size, static_cast<size_t>(std::min<uint64_t>(size, out.size()))};
    const int n = rados_read(conn_->io, name.c_str(), reinterpret_cast<char*>(out.data()),
                             tail.length, size - tail.length);
    if (n == -ENOENT) return NotFound(name);
    if (n < 0) return conn_->Error(n, "read " + Quoted(name));
    if (static_cast<size_t>(n) != tail.length) {
      return conn_->Error(-EIO, "short read of " + Quoted(name));
    }
    return tail;
  }

  Result<bool> Exists(const std::string& name) override {
    BLKSNAP_RETURN_IF_ERROR(ValidateObjectName(name));
    uint64_t size = 0;
    time_t mtime = 0;
    const int r = rados_stat(conn_->io, name.c_str(), &size, &mtime);
    if (r == -ENOENT) return false;
    if (r < 0) return conn_->Error(r, "stat " + Quoted(name));
    return true;
  }

  Result<uint64_t> Size(const std::string& name) override {
    BLKSNAP_RETURN_IF_ERROR(ValidateObjectName(name));
    uint64_t size = 0;
    time_t mtime = 0;
    const int r = rados_stat(conn_->io, name.c_str(), &size, &mtime);
    if (r == -ENOENT) return NotFound(name);
    if (r < 0) return conn_->Error(r, "stat " + Quoted(name));
    return size;
  }

  Result<std::vector<std::string>> List(const std::string& prefix) override {
    BLKSNAP_RETURN_IF_ERROR(ValidateListPrefix(prefix));
    std::vector<std::string> names;
    rados_list_ctx_t list = nullptr;
    int r = rados_nobjects_list_open(conn_->io, &list);
    if (r < 0) return conn_->Error(r, "list objects");
    while (true) {
      const char* entry = nullptr;
      size_t entry_size = 0;
      r = rados_nobjects_list_next2(list, &entry, nullptr, nullptr, &entry_size, nullptr, nullptr);
      if (r < 0) break;
      const std::string_view oid(entry, entry_size);
      // The lock object and anything that is not a store name (a foreign object) are skipped.
      if (oid.starts_with(prefix) && ValidateObjectName(oid).ok()) names.emplace_back(oid);
    }
    rados_nobjects_list_close(list);
    if (r != -ENOENT) return conn_->Error(r, "list objects");
    std::sort(names.begin(), names.end());
    return names;
  }

  Status Delete(const std::string& name) override {
    BLKSNAP_RETURN_IF_ERROR(ValidateObjectName(name));
    const int r = rados_remove(conn_->io, name.c_str());
    if (r < 0 && r != -ENOENT) return conn_->Error(r, "remove " + Quoted(name));
    return Status::Ok();
  }

  bool remote() const override { return true; }
  Result<std::unique_ptr<Lease>> Lock(LockMode mode, bool wait) override {
    const std::string cookie = RandomCookie();
    auto backoff = kFirstBackoff;
    while (true) {
      const int r = RadosLease::Take(conn_->io, mode, cookie, lease_seconds_, 0);
      if (r == 0) break;
      if (r != -EBUSY) return conn_->Error(r, "lock " + Quoted(std::string(kLockObject)));
      if (!wait) {
        return Status::Error(EBUSY, "repository " + conn_->where + " is locked by another user (" +
                                        (mode == LockMode::kShared ? "gc" : "a backup or gc") +
                                        " is running)");
      }
      std::this_thread::sleep_for(backoff);
      backoff = std::min(backoff * 2, kMaxBackoff);
    }
    return std::unique_ptr<Lease>(new RadosLease(conn_, mode, cookie, lease_seconds_));
  }

 private:
  // One read operation {stat, read(0, out.size())} into `out`: the object's size (the bytes
  // read, when it is not larger than `out`). The size and the bytes come from the same version
  // of the object, so a concurrent Put is never half seen.
  Result<uint64_t> Read(const std::string& name, std::span<uint8_t> out) {
    uint64_t size = 0;
    size_t done = 0;
    int stat_rval = 0, read_rval = 0;
    time_t mtime = 0;
    rados_read_op_t op = rados_create_read_op();
    rados_read_op_stat(op, &size, &mtime, &stat_rval);
    rados_read_op_read(op, 0, out.size(), reinterpret_cast<char*>(out.data()), &done, &read_rval);
    int r = rados_read_op_operate(op, conn_->io, name.c_str(), 0);
    rados_release_read_op(op);
    if (r == 0) r = stat_rval < 0 ? stat_rval : read_rval;
    if (r == -ENOENT) return NotFound(name);
    if (r < 0) return conn_->Error(r, "read " + Quoted(name));
    if (size <= out.size() && done != size) {
      return conn_->Error(-EIO, "short read of " + Quoted(name));
    }
    return size;
  }

  Status NotFound(const std::string& name) const {
    return Status::Error(ENOENT, "object " + Quoted(name) + " not found in " + conn_->where);
  }

  const std::shared_ptr<Connection> conn_;
  const int lease_seconds_;
};

// Sets a librados option only where the configuration left it at `default_value`.
void SetIfDefault(rados_t cluster, const char* option, const char* default_value, int value) {
  char current[64] = {};
  if (rados_conf_get(cluster, option, current, sizeof(current)) == 0 &&
      std::string_view(current) == default_value) {
    rados_conf_set(cluster, option, std::to_string(value).c_str());
  }
}

}  // namespace

std::string RadosUrl::Display() const {
  return std::string(kScheme) + pool + (ns.empty() ? "" : "/" + ns);
}

Result<RadosUrl> ParseRadosUrl(std::string_view url) {
  if (!url.starts_with(kScheme)) {
    return Status::Error(EINVAL, "not a rados URL (rados://POOL[/NAMESPACE]?conf=PATH&id=NAME)");
  }
  std::string_view rest = url.substr(sizeof(kScheme) - 1);
  std::string_view query;
  if (const size_t q = rest.find('?'); q != std::string_view::npos) {
    query = rest.substr(q + 1);
    rest = rest.substr(0, q);
    if (query.empty()) return Status::Error(EINVAL, "rados URL: nothing after '?'");
  }
  RadosUrl parsed;
  const size_t slash = rest.find('/');
  BLKSNAP_RETURN_IF_ERROR(CheckRadosName(rest.substr(0, slash), "pool"));
  parsed.pool = std::string(rest.substr(0, slash));
  if (slash != std::string_view::npos) {
    const std::string_view ns = rest.substr(slash + 1);
    if (ns.find('/') != std::string_view::npos) {
      return Status::Error(EINVAL, "rados URL: a namespace has no '/' (rados://POOL/NAMESPACE)");
    }
    BLKSNAP_RETURN_IF_ERROR(CheckRadosName(ns, "namespace"));
    parsed.ns = std::string(ns);
  }
  bool seen[3] = {false, false, false};
  bool more = !query.empty();
  while (more) {
    const size_t amp = query.find('&');
    const std::string_view pair = query.substr(0, amp);
    more = amp != std::string_view::npos;
    if (more) query = query.substr(amp + 1);
    if (pair.empty())
      return Status::Error(EINVAL, "rados URL: an empty parameter ('&&' or '&' at the end)");
    const size_t eq = pair.find('=');
    const std::string key(pair.substr(0, eq));
    if (key == "key" || key == "secret") {
      return Status::Error(EINVAL, "rados URL: a URL never carries a secret; use keyring=FILE");
    }
    const int index = key == "conf" ? 0 : key == "id" ? 1 : key == "keyring" ? 2 : -1;
    if (index < 0) {
      return Status::Error(EINVAL,
                           "rados URL: unknown parameter '" + key + "' (known: conf, id, keyring)");
    }
    if (seen[index]) return Status::Error(EINVAL, "rados URL: '" + key + "' given twice");
    seen[index] = true;
    if (eq == std::string_view::npos || eq + 1 == pair.size()) {
      return Status::Error(EINVAL, "rados URL: empty value of '" + key + "'");
    }
    BLKSNAP_ASSIGN_OR_RETURN(std::string value, Unescape(pair.substr(eq + 1), key));
    if (index == 0) parsed.conf = std::move(value);
    if (index == 2) parsed.keyring = std::move(value);
    if (index == 1) {
      BLKSNAP_RETURN_IF_ERROR(CheckRadosName(value, "id"));
      parsed.id = std::move(value);
    }
  }
  return parsed;
}

Result<std::unique_ptr<ObjectStore>> OpenRadosStore(const RadosUrl& url,
                                                    const RadosStoreOptions& options) {
  if (options.lease_seconds < 1) return Status::Error(EINVAL, "lease_seconds must be >= 1");
  auto conn = std::make_shared<Connection>();
  conn->where = url.Display();
  const std::string who = "client." + url.id + " (conf " + url.conf + ")";
  int r = rados_create(&conn->cluster, url.id.c_str());
  if (r < 0) {
    conn->cluster = nullptr;
    return Status::Error(-r, "librados init for " + who);
  }
  r = rados_conf_read_file(conn->cluster, url.conf.c_str());
  if (r < 0) return Status::Error(-r, "read the Ceph configuration " + url.conf);
  if (!url.keyring.empty()) {
    r = rados_conf_set(conn->cluster, "keyring", url.keyring.c_str());
    if (r < 0) return Status::Error(-r, "set the keyring " + url.keyring);
  }
  SetIfDefault(conn->cluster, "client_mount_timeout", "300", options.connect_timeout_seconds);
  SetIfDefault(conn->cluster, "rados_mon_op_timeout", "0", options.connect_timeout_seconds);
  SetIfDefault(conn->cluster, "rados_osd_op_timeout", "0", options.op_timeout_seconds);
  r = rados_connect(conn->cluster);
  if (r < 0) {
    std::string hint;
    if (r == -ENOENT) hint = " (no keyring found for this user)";
    if (r == -EPERM || r == -EACCES) hint = " (wrong key, or the user does not exist)";
    if (r == -ETIMEDOUT) hint = " (no monitor answered)";
    return Status::Error(-r, "connect to the Ceph cluster as " + who + hint);
  }
  r = rados_ioctx_create(conn->cluster, url.pool.c_str(), &conn->io);
  if (r < 0) {
    conn->io = nullptr;
    if (r == -ENOENT) return Status::Error(ENOENT, "no such pool '" + url.pool + "'");
    return Status::Error(-r, "open pool '" + url.pool + "' as " + who);
  }
  rados_ioctx_set_namespace(conn->io, url.ns.c_str());
  return std::unique_ptr<ObjectStore>(new RadosStore(std::move(conn), options.lease_seconds));
}

Result<std::unique_ptr<ObjectStore>> OpenRadosStore(std::string_view url) {
  BLKSNAP_ASSIGN_OR_RETURN(RadosUrl parsed, ParseRadosUrl(url));
  return OpenRadosStore(parsed);
}

}  // namespace blksnap::repo
