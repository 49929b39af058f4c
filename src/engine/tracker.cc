// TrackerImpl: see tracker.h.
#include "engine/tracker.h"

#include <sys/stat.h>

#include <algorithm>

#include "engine/snapshot.h"

namespace blksnap {

TrackerImpl::TrackerImpl(std::string name, std::shared_ptr<BlockDevice> original,
                         const AttachOptions& options, std::unique_ptr<CbtMap> cbt)
    : name_(std::move(name)),
      path_(options.path),
      original_(std::move(original)),
      cbt_(std::move(cbt)),
      chain_(std::make_shared<AreaChain>(original_)) {
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
  if (reads_held_.load()) WaitReads();
  if (Rollback* r = rollback_.load(); r && r->active()) return r->Read(offset, buf);
  return original_->Read(offset, buf);
}

void TrackerImpl::WaitReads() {
  MutexLock lock(hold_mu_);
  while (reads_held_.load()) hold_cv_.Wait(hold_mu_);
}

void TrackerImpl::HoldReads() {
  MutexLock lock(hold_mu_);
  reads_held_.store(true);
}

void TrackerImpl::ReleaseReads() {
  MutexLock lock(hold_mu_);
  reads_held_.store(false);
  hold_cv_.SignalAll();
}

template <typename Op>
Status TrackerImpl::Modify(uint64_t offset, uint64_t length, Op op, bool merge) {
  BLKSNAP_RETURN_IF_ERROR(CheckRange(*this, offset, length));
  for (;;) {
    // A rollback merges the chunks first, outside the gate (its merge writes enter it). One
    // installed (gate closed) while this writer waited at the gate: again, for that one.
    Rollback* checked = nullptr;
    if (!merge) {
      checked = rollback_.load();
      if (checked && checked->active())
        BLKSNAP_RETURN_IF_ERROR(checked->BeforeWrite(offset, length));
    }
    GateGuard guard(gate_);
    if (!guard.entered() || detached_.load()) return Status::Error(ENODEV, "device detached");
    if (!merge && rollback_.load() != checked) continue;
    cbt_->MarkWrite(offset, length);  // before the write is issued (durable CBT relies on it)
    // The newest area copies; a corrupted one hands over to the next older (area_chain.h).
    for (auto it = areas_.rbegin(); it != areas_.rend(); ++it) {
      if ((*it)->PreserveForOriginalWrite(offset, length)) break;
    }
    return op();
  }
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

Status TrackerImpl::WriteMerged(uint64_t offset, std::span<const uint8_t> data) {
  return Modify(
      offset, data.size(), [&] { return original_->Write(offset, data, 0); }, true);
}

void TrackerImpl::InstallRollback(std::unique_ptr<Rollback> rollback) {
  Rollback* raw = rollback.get();
  MutexLock lock(mu_);
  rollbacks_.push_back(std::move(rollback));
  rollback_.store(raw);
}

std::optional<RollbackProgress> TrackerImpl::rollback() const {
  MutexLock lock(mu_);
  if (rollbacks_.empty()) return std::nullopt;
  return rollbacks_.back()->progress();
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

void TrackerImpl::InsertArea(std::shared_ptr<DiffArea> area, size_t position) {
  position = std::min(position, areas_.size());
  areas_.insert(areas_.begin() + static_cast<std::ptrdiff_t>(position), area);
  chain_->Set(areas_);
}

void TrackerImpl::RemoveArea(const std::shared_ptr<DiffArea>& area, bool shield) {
  gate_.Close();
  std::erase(areas_, area);
  gate_.Open();
  // No writer copies into `area` any more; older areas may still read through it.
  if (shield) {
    // All copies first (many storers in flight), then the wait for each one's commit: per
    // chunk, so writers keeping the older areas' queues busy cannot starve the destroy.
    area->StopNewCopies();  // no shield into it from now on: the list below is complete
    const std::vector<uint64_t> copied = area->CopiedChunks();
    for (uint64_t index : copied) {
      chain_->ShieldOlder(area.get(), index, false).IgnoreError();  // a failure corrupts it
    }
    const AreaChain::List older = chain_->OlderThan(area.get());
    for (uint64_t index : copied) {
      for (const auto& o : older) o->WaitCopyCommitted(index);
    }
  }
  AreaChain::List rest = *chain_->list();
  std::erase(rest, area);
  chain_->Set(std::move(rest));
  area->StopChainReads();
}

std::shared_ptr<Snapshot> TrackerImpl::snapshot() const {
  auto all = snapshot_impls();
  return all.empty() ? nullptr : all.back();
}

std::vector<std::shared_ptr<Snapshot>> TrackerImpl::snapshots() const {
  auto all = snapshot_impls();
  return {all.begin(), all.end()};
}

std::vector<std::shared_ptr<SnapshotImpl>> TrackerImpl::snapshot_impls() const {
  MutexLock lock(mu_);
  std::vector<std::shared_ptr<SnapshotImpl>> out;
  for (const auto& weak : snapshots_) {
    if (auto s = weak.lock()) out.push_back(std::move(s));
  }
  // In take order (a recovery adds them in any order), the one not yet taken last.
  auto key = [](const std::shared_ptr<SnapshotImpl>& s) {
    return s->state() == SnapshotState::kCreated ? UINT64_MAX : s->taken_at();
  };
  std::stable_sort(out.begin(), out.end(),
                   [&key](const auto& a, const auto& b) { return key(a) < key(b); });
  return out;
}

Status TrackerImpl::CheckCanJoin(const SnapshotImpl& snapshot) const {
  const auto current = snapshot_impls();
  for (const auto& s : current) {
    if (s.get() == &snapshot)
      return Status::Error(EALREADY, "device '" + name_ + "' is already in this snapshot");
    if (s->state() == SnapshotState::kCreated) {
      return Status::Error(
          EBUSY, "device '" + name_ + "' is in snapshot " + s->id().ToString() + ", not taken yet");
    }
  }
  if (current.size() >= kMaxSnapshotsPerDevice) {
    return Status::Error(EBUSY, "device '" + name_ + "' is in " + std::to_string(current.size()) +
                                    " snapshots (at most " +
                                    std::to_string(kMaxSnapshotsPerDevice) + ")");
  }
  return Status::Ok();
}

size_t TrackerImpl::ChainPosition(uint64_t taken) const {
  size_t position = 0;
  for (const auto& s : snapshot_impls()) {
    if (s->state() != SnapshotState::kCreated && s->taken_at() <= taken) ++position;
  }
  return position;
}

void TrackerImpl::AddSnapshot(const std::shared_ptr<SnapshotImpl>& snapshot) {
  MutexLock lock(mu_);
  snapshots_.push_back(snapshot);
}

void TrackerImpl::RemoveSnapshot(const SnapshotImpl* snapshot) {
  MutexLock lock(mu_);
  std::erase_if(snapshots_, [snapshot](const std::weak_ptr<SnapshotImpl>& weak) {
    auto s = weak.lock();
    return !s || s.get() == snapshot;
  });
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
