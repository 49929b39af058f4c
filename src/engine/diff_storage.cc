// DiffStorage: see diff_storage.h. The header layout is in docs/diff-storage-format.md and
// diff_storage_format.h.
#include "engine/diff_storage.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <vector>

#include "blksnap/io.h"

namespace blksnap {
namespace {

constexpr const auto& kMagic = kDiffStorageMagic;  // diff_storage_format.h
constexpr uint64_t kMiB = 1ull << 20;

// Owns a file descriptor shared by the grow function.
struct SharedFd {
  int fd = -1;
  ~SharedFd() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

DiffStorage::DiffStorage(std::shared_ptr<BlockDevice> device, GrowFn grow, uint64_t limit,
                         uint64_t step, EventFn events, std::string path)
    : device_(std::move(device)),
      grow_(std::move(grow)),
      limit_(limit),
      step_(step),
      events_(std::move(events)),
      path_(std::move(path)) {}

DiffStorage::~DiffStorage() {
  {
    MutexLock lock(mu_);
    stop_ = true;
    cv_.SignalAll();
  }
  if (grower_.joinable()) grower_.join();
}

Result<std::shared_ptr<DiffStorage>> DiffStorage::Create(std::shared_ptr<BlockDevice> device,
                                                         GrowFn grow, uint64_t limit, uint64_t step,
                                                         const Uuid& id, EventFn events,
                                                         std::string path) {
  if (device->size() <= kDiffStorageHeaderSize + kMiB) {
    return Status::Error(ENOSPC, "difference storage smaller than its 2 MiB header plus 1 MiB");
  }
  const uint64_t usable = device->size() - kDiffStorageHeaderSize;
  if (limit == 0 || limit > usable) limit = usable;
  std::shared_ptr<DiffStorage> storage(new DiffStorage(std::move(device), std::move(grow), limit,
                                                       step, std::move(events), std::move(path)));
  BLKSNAP_RETURN_IF_ERROR(storage->WriteHeader(id));
  // Not shared yet: the locks below cost nothing and let the analysis check the fields.
  DiffStorage* raw = storage.get();
  // The first step is reserved now, so that a storage without room fails at creation.
  const uint64_t first = std::min(step, limit);
  if (storage->grow_) {
    Status s = storage->grow_(kDiffStorageHeaderSize, first);
    if (!s.ok()) {
      return Status::Error(s.errnum(), "cannot reserve the first " + std::to_string(first >> 20) +
                                           " MiB of difference storage: " + s.ToString());
    }
    {
      MutexLock lock(raw->mu_);
      raw->reserved_ = first;
    }
    storage->grower_ = std::thread([raw] { raw->GrowerLoop(); });
  } else {
    MutexLock lock(raw->mu_);
    raw->reserved_ = limit;  // fixed-size devices are reserved whole
  }
  return storage;
}

Result<std::shared_ptr<DiffStorage>> DiffStorage::Open(const std::string& path, uint64_t limit,
                                                       uint64_t step, const Uuid& id,
                                                       EventFn events) {
  struct stat st {};
  const bool exists = ::stat(path.c_str(), &st) == 0;
  if (!exists && errno != ENOENT) return Status::FromErrno("stat " + path);
  StorageIdentity identity;
  auto fd = std::make_shared<SharedFd>();
  std::string device_path = path;
  // O_DIRECT for every kind of storage, as the kernel module writes its difference storage with
  // bios: a page cache would only add a copy per chunk and dirty throttling to copy-on-write
  // (docs/performance-vm.md: cow64k 0.34-0.51x -> 0.83-0.93x of dm-snapshot in the VM;
  // docs/performance.md finding 8 for files). Chunks are allocated 4 KiB-aligned; unaligned image
  // I/O is bounced by the file device.
  FileOpenOptions direct;
  direct.direct = true;
  if (exists && S_ISBLK(st.st_mode)) {
    identity.is_block_device = true;
    identity.rdev = st.st_rdev;
    BLKSNAP_ASSIGN_OR_RETURN(auto device, OpenFileDevice(path, direct));
    BLKSNAP_ASSIGN_OR_RETURN(
        auto storage, Create(std::move(device), nullptr, limit, step, id, std::move(events), path));
    storage->set_identity(identity);
    return storage;
  }
  if (exists && S_ISDIR(st.st_mode)) {
    fd->fd = ::open(path.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd->fd < 0) return Status::FromErrno("create a temporary file in " + path);
    device_path = "/proc/self/fd/" + std::to_string(fd->fd);
  } else if (!exists || S_ISREG(st.st_mode)) {
    fd->fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd->fd < 0) return Status::FromErrno("open difference storage " + path);
    // Never overwrite data: an existing non-empty file must be a difference storage already.
    char magic[sizeof(kMagic)] = {};
    if (exists && st.st_size > 0 &&
        (::pread(fd->fd, magic, sizeof(magic), 0) != static_cast<ssize_t>(sizeof(magic)) ||
         std::memcmp(magic, kMagic, sizeof(kMagic)) != 0)) {
      return Status::Error(EEXIST, path +
                                       " is a non-empty file that is not a blksnap "
                                       "difference storage; refusing to overwrite it");
    }
  } else {
    return Status::Error(EINVAL, path + " is not a directory, regular file or block device");
  }
  struct stat fst {};
  if (::fstat(fd->fd, &fst) != 0) return Status::FromErrno("fstat " + path);
  identity.dev = fst.st_dev;
  identity.ino = fst.st_ino;
  if (limit == 0) {
    struct statvfs vfs {};
    if (::fstatvfs(fd->fd, &vfs) != 0) return Status::FromErrno("statvfs " + path);
    limit = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize / kMiB * kMiB;
  }
  if (limit < kMiB) return Status::Error(ENOSPC, "difference storage limit below 1 MiB");
  if (::ftruncate(fd->fd, static_cast<off_t>(kDiffStorageHeaderSize + limit)) != 0)
    return Status::FromErrno("size difference storage " + path);
  auto opened = OpenFileDevice(device_path, direct);
  if (!opened.ok() && opened.status().errnum() == EINVAL) {
    opened = OpenFileDevice(device_path);  // a file system without O_DIRECT (tmpfs before 6.6)
  }
  if (!opened.ok()) return opened.status();
  std::shared_ptr<BlockDevice> device = std::move(*opened);
  GrowFn grow = [fd](uint64_t offset, uint64_t length) -> Status {
    if (::fallocate(fd->fd, 0, static_cast<off_t>(offset), static_cast<off_t>(length)) != 0)
      return Status::FromErrno("fallocate difference storage");
    return Status::Ok();
  };
  BLKSNAP_ASSIGN_OR_RETURN(auto storage, Create(std::move(device), std::move(grow), limit, step, id,
                                                std::move(events), path));
  storage->set_identity(identity);
  return storage;
}

Status DiffStorage::WriteHeader(const Uuid& id) {
  DiffStorageHeader header;
  header.snapshot_id = id;
  header.created = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::seconds>(
                                             std::chrono::system_clock::now().time_since_epoch())
                                             .count());
  header.limit = limit_;
  const auto block = SerializeDiffStorageHeader(header);
  return device_->Write(0, block);
}

Result<uint64_t> DiffStorage::Allocate(uint64_t bytes) {
  // Every allocation starts on a 4 KiB boundary, so direct I/O never needs a bounce (a short
  // last chunk would otherwise misalign every chunk after it).
  bytes = (bytes + kAllocationAlign - 1) & ~(kAllocationAlign - 1);
  MutexLock lock(mu_);
  for (;;) {
    if (stop_) return Status::Error(ENODEV, "difference storage closed");
    if (used_ + bytes <= reserved_) {
      const uint64_t offset = kDiffStorageHeaderSize + used_;
      used_ += bytes;
      if (reserved_ - used_ < std::min(step_, limit_) / 2) {
        if (reserved_ < limit_ && !grow_failed_ && grow_) {
          if (!growing_) {
            growing_ = true;
            cv_.SignalAll();
          }
        } else {
          RaiseNoSpace(step_);
        }
      }
      return offset;
    }
    if (reserved_ >= limit_ || grow_failed_ || !grow_) {
      RaiseNoSpace(bytes);
      return Status::Error(
          ENOSPC, "difference storage is full (limit " + std::to_string(limit_ >> 20) + " MiB)");
    }
    if (!growing_) {
      growing_ = true;
      cv_.SignalAll();
    }
    while (growing_ && !stop_) cv_.Wait(mu_);
  }
}

void DiffStorage::RaiseNoSpace(uint64_t requested) {
  if (no_space_raised_) return;
  no_space_raised_ = true;
  if (events_) {
    SnapshotEvent event;
    event.type = SnapshotEvent::Type::kNoSpace;
    event.requested = requested;
    events_(std::move(event));
  }
}

void DiffStorage::GrowerLoop() {
  // Manual Lock/Unlock: grow_ runs without mu_, and the analysis follows a plain Mutex through
  // that better than a scoped lock released in the middle.
  mu_.Lock();
  for (;;) {
    while (!growing_ && !stop_) cv_.Wait(mu_);
    if (stop_) break;
    const uint64_t length = std::min(step_, limit_ - reserved_);
    const uint64_t offset = kDiffStorageHeaderSize + reserved_;
    mu_.Unlock();
    Status s = length ? grow_(offset, length) : Status::Error(ENOSPC, "limit reached");
    mu_.Lock();
    if (s.ok()) {
      reserved_ += length;
    } else {
      grow_failed_ = true;
      RaiseNoSpace(length);
    }
    growing_ = false;
    cv_.SignalAll();
  }
  mu_.Unlock();
}

StorageInfo DiffStorage::info() const {
  MutexLock lock(mu_);
  return StorageInfo{path_, reserved_, used_, limit_};
}

}  // namespace blksnap
