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
#include "util/thread_name.h"

namespace blksnap {
namespace {

constexpr const auto& kMagic = kDiffStorageMagic;  // diff_storage_format.h
constexpr uint64_t kMiB = 1ull << 20;

// How the storage at path is opened. A regular file (or one about to be created) goes through
// the page cache when page_cache is set: chunk writes are copies into the cache that the kernel
// writes back, image reads of recently preserved chunks come from memory (as QEMU's fleecing
// file does; docs/performance.md, "Durable snapshots"), crash durability is a write to the
// kernel and power durability a flush per commit round either way. A block device is written
// with O_DIRECT like the kernel module's bios: a RAM disk or an LV would otherwise hold every
// chunk twice and throttle copy-on-write on dirty pages (docs/performance-vm.md).
StorageFileOptions StorageOptionsFor(Env* env, const std::string& path, bool page_cache) {
  StorageFileOptions options;
  options.exclusive = true;
  options.direct = true;
  if (page_cache) {
    auto st = env->Stat(path);
    options.direct = st.ok() && st->exists && st->kind == FileKind::kBlockDevice;
  }
  return options;
}

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

StorageIdentity IdentityOf(const std::string& path, const FileStat& st) {
  StorageIdentity identity;
  identity.path = path;
  identity.is_block_device = st.kind == FileKind::kBlockDevice;
  identity.rdev = identity.is_block_device ? st.rdev : 0;
  identity.dev = identity.is_block_device ? 0 : st.dev;
  identity.ino = identity.is_block_device ? 0 : st.ino;
  return identity;
}

// Removes the file at path if it is still the one opened (not replaced meanwhile).
std::function<void()> RemoverOf(Env* env, const std::string& path, const FileStat& st) {
  return [env, path, dev = st.dev, ino = st.ino] {
    auto now = env->Stat(path);
    if (now.ok() && now->exists && now->dev == dev && now->ino == ino) {
      env->RemoveFile(path).IgnoreError();
    }
  };
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
                         uint64_t step, EventFn events, std::string path,
                         SnapshotDurability durability)
    : device_(std::move(device)),
      grow_(std::move(grow)),
      step_(step),
      events_(std::move(events)),
      path_(std::move(path)),
      durability_(durability),
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
                                                         std::string path,
                                                         SnapshotDurability durability) {
  if (device->size() <= kDiffStorageHeaderSize + kMiB) {
    return Status::Error(ENOSPC, "difference storage smaller than its 2 MiB header plus 1 MiB");
  }
  const uint64_t usable = device->size() - kDiffStorageHeaderSize;
  if (limit == 0 || limit > usable) limit = usable;
  std::shared_ptr<DiffStorage> storage(new DiffStorage(std::move(device), std::move(grow), limit,
                                                       step, std::move(events), std::move(path),
                                                       durability));
  // Not shared yet: the locks below cost nothing and let the analysis check the fields.
  DiffStorage* raw = storage.get();
  {
    MutexLock lock(raw->mu_);
    raw->header_.snapshot_id = id;
    raw->header_.durability = static_cast<uint32_t>(durability);
    raw->header_.created =
        static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::seconds>(
                                  std::chrono::system_clock::now().time_since_epoch())
                                  .count());
    // Slot 1 is cleared first: a reused storage may hold a stale header of another snapshot
    // there, with a higher seq than this one's first.
    std::vector<uint8_t> zero(kDiffStorageHeaderBlockSize, 0);
    BLKSNAP_RETURN_IF_ERROR(raw->device_->Write(kDiffStorageHeaderBlockSize, zero));
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
    storage->StartGrower();
  } else {
    MutexLock lock(raw->mu_);
    raw->reserved_ = limit;  // fixed-size devices are reserved whole
  }
  return storage;
}

void DiffStorage::StartGrower() {
  grower_ = std::thread([this] { GrowerLoop(); });
}

Result<std::shared_ptr<DiffStorage>> DiffStorage::Open(const std::string& given, uint64_t limit,
                                                       uint64_t step, const Uuid& id,
                                                       EventFn events, Env* env,
                                                       const Checks& checks,
                                                       SnapshotDurability durability) {
  if (env == nullptr) env = Env::Default();
  // A durable snapshot must be found again after a restart: a named file, not O_TMPFILE.
  std::string path = given;
  if (durability != SnapshotDurability::kMemory) {
    auto st = env->Stat(given);
    if (st.ok() && st->kind == FileKind::kDirectory) {
      path = given + (given.ends_with('/') ? "" : "/") + "blksnap-" + id.ToString() + ".diff";
    }
  }
  // Chunks are allocated 4 KiB-aligned so that O_DIRECT storage needs no bounce; unaligned
  // image I/O is bounced by the file device. A directory gets an unnamed temporary file (env.h).
  // Block devices are claimed (O_EXCL) only when the data path opens, after every check.
  const StorageFileOptions options = StorageOptionsFor(env, path, checks.page_cache);
  BLKSNAP_ASSIGN_OR_RETURN(std::shared_ptr<StorageFile> file, env->OpenStorageFile(path, options));
  const FileStat st = file->stat();
  // A file this open created goes again if anything below fails, and when the storage goes.
  std::function<void()> remove_created;
  if (file->created()) {
    remove_created = RemoverOf(env, path, st);
  }
  struct Cleanup {
    std::function<void()>* fn;
    ~Cleanup() {
      if (fn && *fn) (*fn)();
    }
  } cleanup{&remove_created};

  const StorageIdentity identity = IdentityOf(path, st);
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
    BLKSNAP_ASSIGN_OR_RETURN(storage, Create(std::move(device), nullptr, limit, step, id,
                                             std::move(events), given, durability));
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
                                             std::move(events), given, durability));
  }
  storage->set_identity(identity);
  if (!identity.is_block_device) {
    storage->set_resize([file](uint64_t size) { return file->Truncate(size); });
  }
  // Unnamed temporary files have no name to find them by again.
  auto now = env->Stat(path);
  storage->file_ = now.ok() && now->kind == FileKind::kDirectory ? "" : path;
  if (file->created() && durability != SnapshotDurability::kMemory) {
    MutexLock lock(storage->mu_);
    storage->header_.flags |= kStorageFlagOwnsFile;
    BLKSNAP_RETURN_IF_ERROR(storage->WriteHeader());
  }
  storage->on_release_ = std::exchange(remove_created, nullptr);
  storage->buffered_ = !options.direct;
  return storage;
}

Result<std::shared_ptr<DiffStorage>> DiffStorage::OpenExisting(const std::string& path,
                                                               std::shared_ptr<BlockDevice> device,
                                                               const Uuid& id, uint64_t step,
                                                               EventFn events, Env* env,
                                                               bool page_cache) {
  if (env == nullptr) env = Env::Default();
  std::vector<uint8_t> slots(2 * kDiffStorageHeaderBlockSize, 0);
  std::shared_ptr<StorageFile> file;
  FileStat st;
  StorageFileOptions options;
  // A write-back that failed after the last daemon stopped looking (a crash log's mapped pages
  // and buffered chunk writes are written back by the kernel alone) is reported to the first
  // flush through a newly opened file (Linux's errseq, while the kernel keeps the inode), and
  // until then fails direct reads: the device is flushed before it is read, and the error kept.
  int lost_writeback = 0;
  auto check_writeback = [&lost_writeback](BlockDevice& d) {
    const Status flushed = d.Flush();
    if (!flushed.ok()) lost_writeback = flushed.errnum() ? flushed.errnum() : EIO;
  };
  if (device) {
    if (device->size() < kDiffStorageHeaderSize)
      return Status::Error(EINVAL, "difference storage " + path + " is smaller than its header");
    check_writeback(*device);
    BLKSNAP_RETURN_IF_ERROR(device->Read(0, slots));
  } else {
    options = StorageOptionsFor(env, path, page_cache);
    BLKSNAP_ASSIGN_OR_RETURN(file, env->OpenStorageFile(path, options));
    st = file->stat();
    if (file->created()) {  // it was not there: remove the empty file this open made
      env->RemoveFile(path).IgnoreError();
      return Status::Error(ENOENT, "difference storage " + path + " is gone");
    }
    BLKSNAP_ASSIGN_OR_RETURN(size_t n, file->ReadAt(0, slots));
    slots.resize(n);
  }
  auto parsed = ParseDiffStorageHeaderSlots(slots);
  if (!parsed.ok()) {
    return Status::Error(parsed.status().errnum(),
                         path + ": " + std::string(parsed.status().message()));
  }
  if (parsed->snapshot_id != id) {
    return Status::Error(EINVAL, path + " is the difference storage of snapshot " +
                                     parsed->snapshot_id.ToString() + ", not " + id.ToString());
  }
  if (parsed->durability == static_cast<uint32_t>(SnapshotDurability::kMemory)) {
    return Status::Error(EINVAL, path + " is the storage of a snapshot kept in memory only");
  }
  GrowFn grow;
  if (!device) {
    BLKSNAP_ASSIGN_OR_RETURN(device, file->OpenDevice());
    check_writeback(*device);  // the header was read buffered: a cached page reports nothing
    if (st.kind != FileKind::kBlockDevice) {
      grow = [file](uint64_t offset, uint64_t length) { return file->Reserve(offset, length); };
    }
  }
  const uint64_t usable =
      device->size() > kDiffStorageHeaderSize ? device->size() - kDiffStorageHeaderSize : 0;
  if (!grow && parsed->limit > usable) {
    return Status::Error(EINVAL, path + " is smaller than the limit its header records");
  }
  std::shared_ptr<DiffStorage> storage(
      new DiffStorage(std::move(device), std::move(grow), parsed->limit, step, std::move(events),
                      path, static_cast<SnapshotDurability>(parsed->durability)));
  {
    MutexLock lock(storage->mu_);
    storage->header_ = *parsed;
  }
  storage->file_ = path;
  storage->lost_writeback_ = lost_writeback;
  if (file) {
    const StorageIdentity identity = IdentityOf(path, st);
    storage->set_identity(identity);
    storage->buffered_ = !options.direct;
    if (!identity.is_block_device) {
      storage->set_resize([file](uint64_t size) { return file->Truncate(size); });
    }
    if (parsed->flags & kStorageFlagOwnsFile) {
      // Armed by the caller once recovery succeeded (or found nothing to recover): a failed
      // recovery must leave the storage where it is.
      storage->remover_ = RemoverOf(env, path, st);
    }
  }
  return storage;
}

Status DiffStorage::Resume(uint64_t end, const ChunkLog::Cursor& cursor, uint64_t pages,
                           bool continue_log) {
  Uuid id;
  bool sync;
  ChunkLog::Cursor next = cursor;
  {
    MutexLock lock(mu_);
    used_ = std::min(limit_, end > kDiffStorageHeaderSize ? end - kDiffStorageHeaderSize : 0);
    reserved_ = grow_ ? used_ : limit_;
    if (continue_log || (header_.flags & kStorageFlagClosed)) {
      // Pages written from now on carry a new epoch, recorded before the first of them.
      next.epoch = std::max(header_.log_epoch, cursor.epoch) + 1;
      const DiffStorageHeader old = header_;
      if (continue_log) header_.log_epoch = next.epoch;
      header_.flags &= ~kStorageFlagClosed;
      header_.version = kDiffStorageFormatVersion;  // a version 2 log goes on with CRC records
      ++header_.seq;
      Status s = WriteHeader();
      if (!s.ok()) {
        header_ = old;
        return s;
      }
    }
    id = header_.snapshot_id;
    sync = durability_ == SnapshotDurability::kPower;
  }
  if (continue_log) {
    log_ = std::make_unique<ChunkLog>(this, id, sync, next);
    log_->set_pages_since_compaction(pages);
  }
  if (grow_) StartGrower();
  return Status::Ok();
}

Status DiffStorage::WriteHeader() {
  header_.limit = limit_;
  const auto block = SerializeDiffStorageHeader(header_);
  const uint64_t slot = (header_.seq % 2) * kDiffStorageHeaderBlockSize;
  BLKSNAP_RETURN_IF_ERROR(device_->Write(slot, block));
  if (durability_ != SnapshotDurability::kMemory) BLKSNAP_RETURN_IF_ERROR(device_->Flush());
  return Status::Ok();
}

DiffStorageHeader DiffStorage::header() const {
  MutexLock lock(mu_);
  return header_;
}

Status DiffStorage::UpdateHeader(const std::function<void(DiffStorageHeader&)>& change) {
  MutexLock lock(mu_);
  const DiffStorageHeader old = header_;
  change(header_);
  ++header_.seq;
  Status s = WriteHeader();
  if (!s.ok()) header_ = old;
  return s;
}

Status DiffStorage::StartLog() {
  BLKSNAP_ASSIGN_OR_RETURN(
      log_, ChunkLog::Start(this, header().snapshot_id, durability_ == SnapshotDurability::kPower));
  return Status::Ok();
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
  NameThisThread("storage-grower");
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
  ++header_.seq;
  Status header = WriteHeader();
  if (!header.ok()) {
    --header_.seq;
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
