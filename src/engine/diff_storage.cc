// DiffStorage: see diff_storage.h. The header layout is in docs/diff-storage-format.md and
// diff_storage_format.h.
#include "engine/diff_storage.h"

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <string_view>
#include <utility>
#include <vector>

#include "blksnap/env.h"
#include "blksnap/io.h"
#include "util/block_topology.h"
#include "util/fd.h"

namespace blksnap {
namespace {

constexpr const auto& kMagic = kDiffStorageMagic;  // diff_storage_format.h
constexpr uint64_t kMiB = 1ull << 20;

// The largest limit any storage can have: header + limit must fit in an off_t.
constexpr uint64_t kMaxLimit = (uint64_t{1} << 63) - 1 - kDiffStorageHeaderSize;

bool HasAt(std::span<const uint8_t> head, size_t offset, std::string_view bytes) {
  return head.size() >= offset + bytes.size() &&
         std::memcmp(head.data() + offset, bytes.data(), bytes.size()) == 0;
}

// Refuses a limit whose header + limit cannot be a file size (it would wrap to a tiny file).
Status CheckLimit(uint64_t limit) {
  if (limit <= kMaxLimit) return Status::Ok();
  return Status::Error(EFBIG, "difference storage limit " + std::to_string(limit) +
                                  " bytes is too large (at most " + std::to_string(kMaxLimit) +
                                  " bytes)");
}

// Step 3 of Open (diff_storage.h): what the storage holds now must be ours to overwrite.
// True if the regular file at path has any allocated data (SEEK_DATA finds some).
bool FileHasData(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return false;
  return ::lseek(fd.get(), 0, SEEK_DATA) >= 0;
}

Status CheckContent(StorageFile& file, const std::string& path, bool force,
                    const std::string& sysfs) {
  const FileStat& st = file.stat();
  const bool block = st.kind == FileKind::kBlockDevice;
  if (!block && st.size == 0) return Status::Ok();
  std::vector<uint8_t> head(kDiffStorageProbeSize, 0);
  BLKSNAP_ASSIGN_OR_RETURN(size_t n, file.ReadAt(0, head));
  head.resize(n);
  const std::string found = DetectForeignSignature(head);
  if (!found.empty() && !force) {
    return Status::Error(EEXIST, path + " holds " + found +
                                     "; refusing to use it as difference storage (--force "
                                     "destroys its content)");
  }
  const bool ours = HasAt(head, 0, {kMagic, sizeof(kMagic)});
  // A loop device over a file that holds data (an outside losetup over someone's image): its
  // content is that file's, whatever its first bytes say.
  if (block && !force && !ours && !sysfs.empty()) {
    const std::string backing = topology::LoopBackingFile(sysfs, st.rdev);
    if (!backing.empty() && FileHasData(backing)) {
      return Status::Error(EEXIST, path + " is a loop device over " + backing +
                                       ", which holds data; refusing to use it as difference "
                                       "storage (--force destroys its content)");
    }
  }
  // Never overwrite data: an existing non-empty file must be a difference storage already.
  if (!block && !force && !ours) {
    return Status::Error(EEXIST, path +
                                     " is a non-empty file that is not a blksnap difference "
                                     "storage; refusing to overwrite it (--force to destroy it)");
  }
  return Status::Ok();
}

}  // namespace

std::string DetectForeignSignature(std::span<const uint8_t> head) {
  if (HasAt(head, 0, {kMagic, sizeof(kMagic)})) return "";  // ours
  if (HasAt(head, 1080, "\x53\xef")) return "an ext2/3/4 file system";
  if (HasAt(head, 0, "XFSB")) return "an XFS file system";
  if (HasAt(head, 65600, "_BHRfS_M")) return "a btrfs file system";
  if (HasAt(head, 4086, "SWAPSPACE2") || HasAt(head, 4086, "SWAP-SPACE") ||
      HasAt(head, 65526, "SWAPSPACE2")) {
    return "a swap area";
  }
  if (HasAt(head, 0, "LUKS\xba\xbe")) return "a LUKS encrypted volume";
  if (HasAt(head, 512, "EFI PART") || HasAt(head, 4096, "EFI PART")) return "a GPT partition table";
  if (HasAt(head, 510, "\x55\xaa")) {
    for (size_t entry = 446; entry < 510; entry += 16) {
      if (head[entry + 4] != 0) return "an MBR partition table";
    }
  }
  return "";
}

DiffStorage::DiffStorage(std::shared_ptr<BlockDevice> device, GrowFn grow, uint64_t limit,
                         uint64_t step, EventFn events, std::string path)
    : device_(std::move(device)),
      grow_(std::move(grow)),
      step_(step),
      events_(std::move(events)),
      path_(std::move(path)),
      limit_(limit) {}

DiffStorage::~DiffStorage() {
  {
    MutexLock lock(mu_);
    stop_ = true;
    cv_.SignalAll();
  }
  if (grower_.joinable()) grower_.join();
  if (on_release_) on_release_();
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
  // Not shared yet: the locks below cost nothing and let the analysis check the fields.
  DiffStorage* raw = storage.get();
  raw->id_ = id;
  raw->created_ = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::seconds>(
                                            std::chrono::system_clock::now().time_since_epoch())
                                            .count());
  {
    MutexLock lock(raw->mu_);
    BLKSNAP_RETURN_IF_ERROR(raw->WriteHeader());
  }
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
                                                       EventFn events, Env* env,
                                                       const Checks& checks) {
  if (env == nullptr) env = Env::Default();
  // O_DIRECT for every kind of storage, as the kernel module writes its difference storage with
  // bios: a page cache would only add a copy per chunk and dirty throttling to copy-on-write
  // (docs/performance-vm.md: cow64k 0.34-0.51x -> 0.83-0.93x of dm-snapshot in the VM;
  // docs/performance.md finding 8 for files). Chunks are allocated 4 KiB-aligned; unaligned image
  // I/O is bounced by the file device. A directory gets an unnamed temporary file (env.h).
  // Block devices are claimed (O_EXCL) only when the data path opens, after every check.
  StorageFileOptions options;
  options.direct = true;
  options.exclusive = true;
  BLKSNAP_ASSIGN_OR_RETURN(std::shared_ptr<StorageFile> file, env->OpenStorageFile(path, options));
  const FileStat st = file->stat();
  // A file this open created goes again if anything below fails, and when the storage goes.
  std::function<void()> remove_created;
  if (file->created()) {
    remove_created = [env, path, dev = st.dev, ino = st.ino] {
      auto now = env->Stat(path);
      if (now.ok() && now->exists && now->dev == dev && now->ino == ino) {
        env->RemoveFile(path).IgnoreError();
      }
    };
  }
  struct Cleanup {
    std::function<void()>* fn;
    ~Cleanup() {
      if (fn && *fn) (*fn)();
    }
  } cleanup{&remove_created};

  StorageIdentity identity;
  identity.path = path;
  identity.is_block_device = st.kind == FileKind::kBlockDevice;
  identity.rdev = identity.is_block_device ? st.rdev : 0;
  identity.dev = identity.is_block_device ? 0 : st.dev;
  identity.ino = identity.is_block_device ? 0 : st.ino;
  if (checks.placement) BLKSNAP_RETURN_IF_ERROR(checks.placement(identity));
  BLKSNAP_RETURN_IF_ERROR(CheckContent(*file, path, checks.force, env->SysfsRoot()));
  BLKSNAP_RETURN_IF_ERROR(CheckLimit(limit));

  std::shared_ptr<DiffStorage> storage;
  if (identity.is_block_device) {
    BLKSNAP_ASSIGN_OR_RETURN(auto device, file->OpenDevice());
    const uint64_t usable =
        device->size() > kDiffStorageHeaderSize ? device->size() - kDiffStorageHeaderSize : 0;
    if (limit > usable) {
      return Status::Error(EFBIG, "difference storage limit " + std::to_string(limit) +
                                      " bytes exceeds the " + std::to_string(usable) +
                                      " bytes usable on " + path + " after its 2 MiB header");
    }
    BLKSNAP_ASSIGN_OR_RETURN(
        storage, Create(std::move(device), nullptr, limit, step, id, std::move(events), path));
  } else {
    if (limit == 0) {
      BLKSNAP_ASSIGN_OR_RETURN(uint64_t free, file->FreeBytes());
      limit = free / kMiB * kMiB;
    }
    if (limit < kMiB) return Status::Error(ENOSPC, "difference storage limit below 1 MiB");
    Status s = file->Truncate(kDiffStorageHeaderSize + limit);
    if (!s.ok() && s.errnum() == EFBIG) {
      return Status::Error(EFBIG, "difference storage limit " + std::to_string(limit) +
                                      " bytes is beyond the largest file the file system "
                                      "holding " +
                                      path + " allows: " + s.ToString());
    }
    BLKSNAP_RETURN_IF_ERROR(s);
    BLKSNAP_ASSIGN_OR_RETURN(std::shared_ptr<BlockDevice> device, file->OpenDevice());
    GrowFn grow = [file](uint64_t offset, uint64_t length) {
      return file->Reserve(offset, length);
    };
    BLKSNAP_ASSIGN_OR_RETURN(storage, Create(std::move(device), std::move(grow), limit, step, id,
                                             std::move(events), path));
  }
  storage->set_identity(identity);
  if (!identity.is_block_device) {
    storage->set_resize([file](uint64_t size) { return file->Truncate(size); });
  }
  storage->on_release_ = std::exchange(remove_created, nullptr);
  return storage;
}

Status DiffStorage::WriteHeader() {
  DiffStorageHeader header;
  header.snapshot_id = id_;
  header.created = created_;
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

Status DiffStorage::SetLimit(uint64_t limit) {
  MutexLock lock(mu_);
  if (stop_) return Status::Error(ENODEV, "difference storage closed");
  if (limit < limit_) {
    return Status::Error(EINVAL, "the limit can only be raised (it is " + std::to_string(limit_) +
                                     " bytes, " + std::to_string(used_) + " in use)");
  }
  if (limit == limit_) return Status::Ok();
  if (limit > UINT64_MAX - kDiffStorageHeaderSize) {
    return Status::Error(EOVERFLOW, "limit " + std::to_string(limit) + " is too large");
  }
  if (resize_) {
    // The file grows sparse; space is still reserved step by step by the grower.
    Status s = resize_(kDiffStorageHeaderSize + limit);
    if (!s.ok()) {
      return Status::Error(s.errnum(), "cannot resize the difference storage to " +
                                           std::to_string(limit) +
                                           " bytes: " + std::string(s.message()));
    }
  } else {
    const uint64_t usable = device_->size() - kDiffStorageHeaderSize;
    if (limit > usable) {
      return Status::Error(ENOSPC, "the difference storage device holds at most " +
                                       std::to_string(usable) + " bytes after its header");
    }
    reserved_ = limit;  // fixed-size devices are reserved whole
  }
  const uint64_t old_limit = limit_;
  limit_ = limit;
  Status header = WriteHeader();
  if (!header.ok()) {
    limit_ = old_limit;
    if (!resize_) reserved_ = old_limit;
    return Status::Error(header.errnum(),
                         "cannot record the new limit: " + std::string(header.message()));
  }
  // Re-arm: the next shortage raises no_space again; a growth stopped at the old limit resumes.
  no_space_raised_ = false;
  grow_failed_ = false;
  if (grow_ && reserved_ - used_ < std::min(step_, limit_) / 2 && reserved_ < limit_) {
    growing_ = true;
  }
  cv_.SignalAll();
  return Status::Ok();
}

StorageInfo DiffStorage::info() const {
  MutexLock lock(mu_);
  return StorageInfo{path_, file_, reserved_, used_, limit_};
}

}  // namespace blksnap
