// TrackerImpl: see tracker.h.
#include "engine/tracker.h"

#include <sys/stat.h>

#include "engine/snapshot.h"

namespace blksnap {

TrackerImpl::TrackerImpl(std::string name, std::shared_ptr<BlockDevice> original,
                         const AttachOptions& options, std::unique_ptr<CbtMap> cbt)
    : name_(std::move(name)),
      path_(options.path),
      original_(std::move(original)),
      cbt_(std::move(cbt)) {
  struct stat st {};
  if (!path_.empty() && ::stat(path_.c_str(), &st) == 0) {
    is_block_device_ = S_ISBLK(st.st_mode);
    rdev_ = st.st_rdev;
    dev_ = st.st_dev;
    ino_ = st.st_ino;
  }
}

DeviceCapabilities TrackerImpl::capabilities() const {
  DeviceCapabilities caps = original_->capabilities();
  caps.multi_conn_safe = true;
  return caps;
}

Status TrackerImpl::Read(uint64_t offset, std::span<uint8_t> buf) {
  if (detached_.load()) return Status::Error(ENODEV, "device detached");
  BLKSNAP_RETURN_IF_ERROR(CheckRange(*this, offset, buf.size()));
  return original_->Read(offset, buf);
}

template <typename Op>
Status TrackerImpl::Modify(uint64_t offset, uint64_t length, Op op) {
  BLKSNAP_RETURN_IF_ERROR(CheckRange(*this, offset, length));
  GateGuard guard(gate_);
  if (!guard.entered() || detached_.load()) return Status::Error(ENODEV, "device detached");
  cbt_->MarkWrite(offset, length);  // before the write is issued (durable CBT relies on it)
  if (area_) area_->PreserveForOriginalWrite(offset, length);
  return op();
}

Status TrackerImpl::Write(uint64_t offset, std::span<const uint8_t> buf, uint32_t flags) {
  return Modify(offset, buf.size(), [&] { return original_->Write(offset, buf, flags); });
}

Status TrackerImpl::Trim(uint64_t offset, uint64_t length) {
  return Modify(offset, length, [&] { return original_->Trim(offset, length); });
}

Status TrackerImpl::WriteZeroes(uint64_t offset, uint64_t length, uint32_t flags) {
  return Modify(offset, length, [&] { return original_->WriteZeroes(offset, length, flags); });
}

Status TrackerImpl::Flush() {
  if (detached_.load()) return Status::Error(ENODEV, "device detached");
  return original_->Flush();
}

Result<std::vector<Extent>> TrackerImpl::BlockStatus(uint64_t offset, uint64_t length) {
  if (detached_.load()) return Status::Error(ENODEV, "device detached");
  return original_->BlockStatus(offset, length);
}

Status TrackerImpl::MarkDirty(uint64_t offset, uint64_t length) {
  return cbt_->MarkBoth(offset, length);
}

std::shared_ptr<Snapshot> TrackerImpl::snapshot() const { return snapshot_impl(); }

std::shared_ptr<SnapshotImpl> TrackerImpl::snapshot_impl() const {
  MutexLock lock(mu_);
  return snapshot_.lock();
}

void TrackerImpl::set_snapshot(std::weak_ptr<SnapshotImpl> snapshot) {
  MutexLock lock(mu_);
  snapshot_ = std::move(snapshot);
}

void TrackerImpl::AddAlias(uint64_t rdev) {
  MutexLock lock(mu_);
  aliases_.insert(rdev);
}

void TrackerImpl::RemoveAlias(uint64_t rdev) {
  MutexLock lock(mu_);
  if (auto it = aliases_.find(rdev); it != aliases_.end()) aliases_.erase(it);
}

bool TrackerImpl::Holds(const StorageIdentity& storage) const {
  MutexLock lock(mu_);
  if (storage.is_block_device) {
    return (is_block_device_ && storage.rdev == rdev_) || aliases_.count(storage.rdev) > 0;
  }
  if (storage.ino != 0 && storage.dev == dev_ && storage.ino == ino_) return true;  // same file
  if (is_block_device_ && storage.dev == rdev_) return true;  // a file system on this device
  return aliases_.count(storage.dev) > 0;
}

}  // namespace blksnap
