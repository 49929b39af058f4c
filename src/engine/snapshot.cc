// SnapshotImpl: see snapshot.h.
#include "engine/snapshot.h"

namespace blksnap {

const char* ToString(SnapshotState state) {
  switch (state) {
    case SnapshotState::kCreated:
      return "created";
    case SnapshotState::kTaken:
      return "taken";
    case SnapshotState::kCorrupted:
      return "corrupted";
    case SnapshotState::kDestroyed:
      return "destroyed";
  }
  return "unknown";
}

const char* ToString(SnapshotDurability durability) {
  switch (durability) {
    case SnapshotDurability::kMemory:
      return "memory";
    case SnapshotDurability::kCrash:
      return "crash";
    case SnapshotDurability::kPower:
      return "power";
  }
  return "unknown";
}

Result<SnapshotDurability> ParseSnapshotDurability(std::string_view text) {
  for (auto d :
       {SnapshotDurability::kMemory, SnapshotDurability::kCrash, SnapshotDurability::kPower}) {
    if (text == ToString(d)) return d;
  }
  return Status::Error(EINVAL,
                       "durability '" + std::string(text) + "' is not one of memory, crash, power");
}

SnapshotImpl::SnapshotImpl(Uuid id, std::shared_ptr<DiffStorage> storage,
                           std::shared_ptr<EventLog> events, SnapshotDurability durability,
                           std::string recovered_from)
    : id_(id),
      events_(std::move(events)),
      durability_(durability),
      recovered_from_(std::move(recovered_from)) {
  MutexLock lock(mu_);
  storage_ = std::move(storage);
  last_storage_info_ = storage_->info();
}

SnapshotState SnapshotImpl::state() const {
  MutexLock lock(mu_);
  return state_;
}

Status SnapshotImpl::SetStorageLimit(uint64_t limit) {
  std::shared_ptr<DiffStorage> storage;
  {
    MutexLock lock(mu_);
    if (state_ == SnapshotState::kDestroyed || !storage_) {
      return Status::Error(ENODEV, "snapshot " + id_.ToString() + " is destroyed");
    }
    if (state_ == SnapshotState::kCorrupted) {
      return Status::Error(EINVAL, "snapshot " + id_.ToString() +
                                       " is corrupted; a larger storage cannot bring it back");
    }
    storage = storage_;
  }
  return storage->SetLimit(limit);
}

StorageInfo SnapshotImpl::storage_info() const {
  MutexLock lock(mu_);
  return storage_ ? storage_->info() : last_storage_info_;
}

std::vector<SnapshotDeviceInfo> SnapshotImpl::devices() const {
  MutexLock lock(mu_);
  std::vector<SnapshotDeviceInfo> out;
  for (const Member& m : members_) out.push_back({m.tracker->name(), m.errnum});
  return out;
}

std::shared_ptr<BlockDevice> SnapshotImpl::image(const std::string& device) const {
  MutexLock lock(mu_);
  for (const Member& m : members_) {
    if (m.tracker->name() == device) return m.image;
  }
  return nullptr;
}

std::vector<SnapshotImpl::Member> SnapshotImpl::members() const {
  MutexLock lock(mu_);
  return members_;
}

void SnapshotImpl::AddMember(std::shared_ptr<TrackerImpl> tracker) {
  MutexLock lock(mu_);
  members_.push_back(Member{std::move(tracker), nullptr, nullptr, 0});
}

bool SnapshotImpl::HasMember(const TrackerImpl* tracker) const {
  MutexLock lock(mu_);
  for (const Member& m : members_) {
    if (m.tracker.get() == tracker) return true;
  }
  return false;
}

void SnapshotImpl::SetTaken(std::vector<Member> members) {
  MutexLock lock(mu_);
  for (Member& m : members) {  // keep errors recorded by an early corruption callback
    for (const Member& old : members_) {
      if (old.tracker == m.tracker && old.errnum) m.errnum = old.errnum;
    }
  }
  members_ = std::move(members);
  if (state_ == SnapshotState::kCreated) state_ = SnapshotState::kTaken;
}

void SnapshotImpl::OnCorrupt(const std::string& device, int errnum) {
  std::shared_ptr<DiffStorage> storage;
  {
    MutexLock lock(mu_);
    if (state_ == SnapshotState::kDestroyed) return;
    for (Member& m : members_) {
      if (m.tracker->name() == device && m.errnum == 0) m.errnum = errnum;
    }
    state_ = SnapshotState::kCorrupted;
    storage = storage_;
  }
  // A durable snapshot records it before the write that failed to be preserved proceeds (the
  // caller holds it): after a restart it is still corrupted. If the storage cannot be written,
  // neither can its chunk log, and recovery fails on it (reported, never served).
  if (storage && durability_ != SnapshotDurability::kMemory) {
    storage
        ->UpdateHeader([errnum](DiffStorageHeader& h) {
          if (h.state == kStorageStateCorrupted) return;
          h.state = kStorageStateCorrupted;
          h.errnum = static_cast<uint32_t>(errnum);
        })
        .IgnoreError();
  }
  SnapshotEvent event;
  event.type = SnapshotEvent::Type::kCorrupted;
  event.device = device;
  event.errnum = errnum;
  events_->Push(std::move(event));
}

std::vector<SnapshotImpl::Member> SnapshotImpl::MarkDestroyed() {
  std::vector<Member> members;
  {
    MutexLock lock(mu_);
    state_ = SnapshotState::kDestroyed;
    members = members_;
  }
  events_->Close();
  return members;
}

}  // namespace blksnap

namespace blksnap {

void SnapshotImpl::ReleaseStorage() {
  MutexLock lock(mu_);
  if (!storage_) return;
  last_storage_info_ = storage_->info();
  storage_.reset();
}

}  // namespace blksnap
