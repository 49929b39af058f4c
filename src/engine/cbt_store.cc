// CbtStore: see cbt_store.h for the recovery rules and the checkpoint order.
#include "engine/cbt_store.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>

#include "util/fd.h"

namespace blksnap {
namespace {

uint64_t NowNs() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

bool SameObject(const CbtIdentity& a, const CbtIdentity& b) {
  return a.kind == b.kind && a.dev == b.dev && a.ino == b.ino && a.rdev == b.rdev;
}

}  // namespace

// The recovery rules of cbt_store.h: "" to continue the generation, else the reason for a new one.
std::string CbtRecoveryReason(const Result<CbtHeader>& parsed, const CbtGeometry& geometry,
                              const CbtIdentity& identity, const std::string& boot_id) {
  if (!parsed.ok()) return kCbtReasonStateCorrupt;
  const CbtHeader& h = parsed.value();
  // The block size is the generation's: a generation made with other blocks continues with them
  // (a changed default or --tracking-block-minimum-shift applies from the next generation).
  if (h.capacity != geometry.capacity) return kCbtReasonCapacityChanged;
  const bool sealed = h.flags & kCbtFlagSealed;
  const bool rebooted = boot_id.empty() || h.boot_id != boot_id;
  if (!sealed && rebooted && (h.flags & kCbtFlagJournalFailed)) return kCbtReasonUncleanPower;
  if (h.identity.kind == CbtIdentity::kUnknown || identity.kind == CbtIdentity::kUnknown) return "";
  if (!SameObject(h.identity, identity)) return kCbtReasonIdentityChanged;
  if (sealed && h.identity != identity) return kCbtReasonOutsideWrite;
  return "";
}

Result<std::unique_ptr<CbtStore>> CbtStore::Open(const CbtGeometry& geometry,
                                                 const CbtStoreOptions& options) {
  if (options.path.empty()) return Memory(geometry);
  std::unique_ptr<CbtStore> store(new CbtStore);
  store->durable_ = true;
  store->path_ = options.path;
  store->files_ = options.files ? options.files : PosixMappedFiles();
  const std::string boot_id = store->files_->BootId();
  std::string reason;
  auto existing = store->files_->Open(options.path);
  if (!existing.ok()) {
    if (existing.status().errnum() != ENOENT) return std::move(existing).status();
    reason = options.expected ? kCbtReasonStateLost : kCbtReasonNew;
  } else {
    std::unique_ptr<MappedFile> file = std::move(existing).value();
    int slot = 0;
    auto parsed = ParseCbtState({file->data(), static_cast<size_t>(file->size())}, &slot);
    reason = CbtRecoveryReason(parsed, geometry, options.identity, boot_id);
    if (reason.empty()) {
      store->header_ = std::move(parsed).value();
      store->file_ = std::move(file);
      store->durable_slot_ = slot;  // once synced below
      const CbtHeader& h = store->header_;
      store->recovered_from_ = (h.flags & kCbtFlagSealed)                 ? kCbtRecoveredCleanStop
                               : !boot_id.empty() && h.boot_id == boot_id ? kCbtRecoveredDaemonCrash
                                                                          : kCbtRecoveredPowerLoss;
    }
  }
  if (!reason.empty()) {
    BLKSNAP_RETURN_IF_ERROR(store->MakeFile(geometry));
    store->NewGeneration(geometry, reason);
  }
  store->MakeJournal();
  if (store->recovered_from_ == kCbtRecoveredPowerLoss) store->RecoverFromJournal();
  if (reason.empty()) {
    // The header found and the maps (with whatever the journal added) are durable before the
    // journal is emptied and before the other header slot is written.
    BLKSNAP_RETURN_IF_ERROR(store->SyncFile());
    if (!store->JournalEmpty()) {
      for (int which : {0, 1})
        std::memset(store->journal_area(which), 0, store->header_.journal_regions);
    }
  }
  // From here on the file says "open, not stopped cleanly, by this boot".
  store->header_.flags &= ~(kCbtFlagSealed | kCbtFlagJournalFailed);
  store->header_.boot_id = boot_id;
  store->header_.identity = options.identity;
  // One sync: the maps need no ordering against this header (after a power loss the journal
  // recovery rebuilds the read map and numbers above anything in the maps; the journal is
  // already empty only if the maps were synced first).
  store->header_.checkpoint_time_ns = NowNs();
  store->Publish();
  BLKSNAP_RETURN_IF_ERROR(store->SyncFile());
  return store;
}

std::unique_ptr<CbtStore> CbtStore::Memory(const CbtGeometry& geometry) {
  std::unique_ptr<CbtStore> store(new CbtStore);
  store->MakeMemory(geometry);
  store->NewGeneration(geometry, kCbtReasonNew);
  store->Publish();
  return store;
}

CbtStore::~CbtStore() = default;

Status CbtStore::MakeFile(const CbtGeometry& geometry) {
  file_.reset();
  BLKSNAP_ASSIGN_OR_RETURN(file_, files_->Create(path_, CbtFileSize(geometry)));
  durable_slot_ = 1;  // both slots zero: the first header goes to slot 0
  published_ = false;
  return Status::Ok();
}

void CbtStore::MakeMemory(const CbtGeometry& geometry) {
  memory_ = std::make_unique<uint8_t[]>(CbtFileSize(geometry));  // zeroed
}

uint8_t* CbtStore::journal_area(int which) {
  return base() + CbtJournalOffset(header_.block_count, header_.journal_regions, which);
}

void CbtStore::MakeJournal() {
  const uint64_t size = CbtAlign(header_.journal_regions);
  journal_ = std::make_unique<CbtJournal>(
      header_.journal_shift, header_.capacity,
      std::array<uint8_t*, 2>{journal_area(0), journal_area(1)},
      [this, size](int which) { return file_->SyncRange(journal_area(which) - base(), size); });
}

bool CbtStore::JournalEmpty() {
  const uint8_t* journal = journal_area(0);  // both areas, one after the other
  return std::all_of(journal, journal + CbtAlign(header_.journal_regions) * 2,
                     [](uint8_t b) { return b == 0; });
}

// The power-loss recovery of cbt_store.h. Every take the tool heard of made its header durable
// (SyncHeader) before it returned, so the header's active number is above every number handed
// out; a take in progress at the cut may have left newer map values, which the active number is
// raised to (every value stays <= active). Journal regions are marked with it: reported changed
// since any number handed out.
void CbtStore::RecoverFromJournal() {
  CbtHeader& h = header_;
  uint8_t* write = write_map();
  const uint8_t newest = *std::max_element(write, write + h.block_count);
  const uint8_t active = std::max(h.active, newest);
  const uint8_t* area0 = journal_area(0);
  const uint8_t* area1 = journal_area(1);
  const uint32_t per_region = h.journal_shift - h.block_shift;
  for (uint64_t r = 0; r < h.journal_regions; ++r) {
    if (!area0[r] && !area1[r]) continue;
    const uint64_t first = r << per_region;
    const uint64_t last = std::min(h.block_count, (r + 1) << per_region);
    std::memset(write + first, active, last - first);
  }
  std::memcpy(read_map(), write, h.block_count);
  h.active = active;
}

void CbtStore::NewGeneration(const CbtGeometry& geometry, const std::string& reason) {
  header_.generation = Uuid::Random();
  header_.capacity = geometry.capacity;
  header_.block_shift = geometry.block_shift;
  header_.block_count = geometry.block_count();
  header_.journal_shift = CbtJournalShift(geometry.capacity, geometry.block_shift);
  header_.journal_regions = CbtBlockCount(geometry.capacity, header_.journal_shift);
  header_.flags = 0;
  header_.active = 1;
  header_.previous = 0;
  header_.reason = reason;  // sequence, boot id and identity carry over
}

void CbtStore::Reset(const CbtGeometry& geometry, const std::string& reason) {
  if (durable_ && !MakeFile(geometry).ok()) {
    // Never leave a file that a later attach could continue with the old maps.
    file_.reset();
    files_->Remove(path_).IgnoreError();
    durable_ = false;
  }
  if (!durable_) MakeMemory(geometry);
  NewGeneration(geometry, reason);
  if (durable_) {
    MakeJournal();
  } else {
    journal_.reset();
  }
  Publish();
}

void CbtStore::Publish() {
  ++header_.sequence;
  const auto block = SerializeCbtHeader(header_);
  // Byte stores that a concurrent reader of the whole mapping (write-back, a journal writer's
  // sync in MemoryMappedFiles) may observe half done: the header CRC covers that, and the
  // durable header is in the other slot.
  uint8_t* out = base() + (1 - durable_slot_) * kCbtHeaderSize;
  published_ = true;
  for (size_t i = 0; i < block.size(); ++i)
    std::atomic_ref<uint8_t>(out[i]).store(block[i], std::memory_order_relaxed);
}

Status CbtStore::Checkpoint() {
  if (!durable_) {
    Publish();
    return Status::Ok();
  }
  // Every writer of the old epoch has stored its marks once Switch returns; the sync makes them
  // durable (under the header of the last checkpoint); only then may their journal go.
  const int old = journal_->Switch();
  BLKSNAP_RETURN_IF_ERROR(SyncFile());
  BLKSNAP_RETURN_IF_ERROR(journal_->Clear(old));
  header_.checkpoint_time_ns = NowNs();
  return SyncHeader();
}

Status CbtStore::SyncHeader() {
  Publish();
  if (!durable_) return Status::Ok();
  const int slot = 1 - durable_slot_;
  BLKSNAP_RETURN_IF_ERROR(file_->SyncRange(slot * kCbtHeaderSize, kCbtHeaderSize));
  durable_slot_ = slot;
  published_ = false;
  return Status::Ok();
}

Status CbtStore::SyncFile() {
  BLKSNAP_RETURN_IF_ERROR(file_->Sync());
  if (published_) durable_slot_ = 1 - durable_slot_;
  published_ = false;
  return Status::Ok();
}

Status CbtStore::Close(const CbtIdentity& identity) {
  if (!durable_) return Status::Ok();
  header_.identity = identity;
  header_.flags |= kCbtFlagSealed;
  return Checkpoint();
}

Status CbtStore::Remove() {
  if (!durable_) return Status::Ok();
  journal_.reset();
  file_.reset();
  durable_ = false;
  MakeMemory({header_.capacity, header_.block_shift});
  Status s = files_->Remove(path_);
  return s.ok() || s.errnum() == ENOENT ? Status::Ok() : s;
}

Result<CbtIdentity> StatCbtIdentity(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return Status::FromErrno("stat " + path);
  CbtIdentity id;
  id.dev = st.st_dev;
  id.ino = st.st_ino;
  if (S_ISBLK(st.st_mode)) {
    id.kind = CbtIdentity::kBlockDevice;
    id.rdev = st.st_rdev;
    Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid() || ::ioctl(fd.get(), BLKGETSIZE64, &id.size) != 0)
      return Status::FromErrno("size of " + path);
  } else if (S_ISREG(st.st_mode)) {
    id.kind = CbtIdentity::kFile;
    id.size = static_cast<uint64_t>(st.st_size);
    id.mtime_ns = int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec;
    id.ctime_ns = int64_t{st.st_ctim.tv_sec} * 1000000000 + st.st_ctim.tv_nsec;
  } else {
    return Status::Error(EINVAL, path + " is neither a regular file nor a block device");
  }
  return id;
}

}  // namespace blksnap
