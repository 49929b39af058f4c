// DiffStorage: see diff_storage.h. The header layout is in docs/diff-storage-format.md and
// diff_storage_format.h.
#include "engine/diff_storage.h"

#include <chrono>
#include <cstring>
#include <vector>

#include "blksnap/env.h"
#include "blksnap/io.h"

namespace blksnap {
namespace {

constexpr const auto& kMagic = kDiffStorageMagic;  // diff_storage_format.h
constexpr uint64_t kMiB = 1ull << 20;

}  // namespace

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
                                                       EventFn events, Env* env) {
  if (env == nullptr) env = Env::Default();
  // O_DIRECT for every kind of storage, as the kernel module writes its difference storage with
  // bios: a page cache would only add a copy per chunk and dirty throttling to copy-on-write
  // (docs/performance-vm.md: cow64k 0.34-0.51x -> 0.83-0.93x of dm-snapshot in the VM;
  // docs/performance.md finding 8 for files). Chunks are allocated 4 KiB-aligned; unaligned image
  // I/O is bounced by the file device. A directory gets an unnamed temporary file (env.h).
  StorageFileOptions options;
  options.direct = true;
  BLKSNAP_ASSIGN_OR_RETURN(std::shared_ptr<StorageFile> file, env->OpenStorageFile(path, options));
  const FileStat st = file->stat();
  StorageIdentity identity;
  if (st.kind == FileKind::kBlockDevice) {
    identity.is_block_device = true;
    identity.rdev = st.rdev;
    BLKSNAP_ASSIGN_OR_RETURN(auto device, file->OpenDevice());
    BLKSNAP_ASSIGN_OR_RETURN(
        auto storage, Create(std::move(device), nullptr, limit, step, id, std::move(events), path));
    storage->set_identity(identity);
    return storage;
  }
  // Never overwrite data: an existing non-empty file must be a difference storage already.
  if (st.size > 0) {
    uint8_t magic[sizeof(kMagic)] = {};
    auto n = file->ReadAt(0, magic);
    if (!n.ok() || *n != sizeof(magic) || std::memcmp(magic, kMagic, sizeof(kMagic)) != 0) {
      return Status::Error(EEXIST, path +
                                       " is a non-empty file that is not a blksnap "
                                       "difference storage; refusing to overwrite it");
    }
  }
  identity.dev = st.dev;
  identity.ino = st.ino;
  if (limit == 0) {
    BLKSNAP_ASSIGN_OR_RETURN(uint64_t free, file->FreeBytes());
    limit = free / kMiB * kMiB;
  }
  if (limit < kMiB) return Status::Error(ENOSPC, "difference storage limit below 1 MiB");
  BLKSNAP_RETURN_IF_ERROR(file->Truncate(kDiffStorageHeaderSize + limit));
  BLKSNAP_ASSIGN_OR_RETURN(std::shared_ptr<BlockDevice> device, file->OpenDevice());
  GrowFn grow = [file](uint64_t offset, uint64_t length) { return file->Reserve(offset, length); };
  BLKSNAP_ASSIGN_OR_RETURN(auto storage, Create(std::move(device), std::move(grow), limit, step, id,
                                                std::move(events), path));
  storage->set_identity(identity);
  storage->set_resize([file](uint64_t size) { return file->Truncate(size); });
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
    return Status::Error(EINVAL, "the limit can only be raised (it is " +
                                     std::to_string(limit_) + " bytes, " +
                                     std::to_string(used_) + " in use)");
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
  return StorageInfo{path_, reserved_, used_, limit_};
}

}  // namespace blksnap
