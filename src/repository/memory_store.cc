// MemoryStore: an ObjectStore in a std::map, for tests. Same semantics as the local store in one
// process: Put replaces, PutIfAbsent gives EEXIST, Get ENOENT, List sorted by prefix, Delete
// idempotent, names validated.
//
// Locking: objects_ under mu_. Leases: a LockTable shared (shared_ptr) by the store and every
// lease it handed out, so a lease may outlive the store; its counters are under its own mutex and
// a CondVar wakes waiters when a lease is released.
#include <map>

#include "repository/object_store.h"

namespace blksnap::repo {
namespace {

struct LockTable {
  Mutex mu;
  CondVar released;
  int shared GUARDED_BY(mu) = 0;
  bool exclusive GUARDED_BY(mu) = false;
};

class MemoryLease : public Lease {
 public:
  MemoryLease(std::shared_ptr<LockTable> table, LockMode mode)
      : table_(std::move(table)), mode_(mode) {}
  ~MemoryLease() override {
    MutexLock lock(table_->mu);
    if (mode_ == LockMode::kShared) {
      --table_->shared;
    } else {
      table_->exclusive = false;
    }
    table_->released.SignalAll();
  }

 private:
  const std::shared_ptr<LockTable> table_;
  const LockMode mode_;
};

class MemoryStore : public ObjectStore {
 public:
  Status Put(const std::string& name, std::span<const uint8_t> data) override {
    BLKSNAP_RETURN_IF_ERROR(ValidateObjectName(name));
    MutexLock lock(mu_);
    objects_[name].assign(data.begin(), data.end());
    return Status::Ok();
  }

  Status PutIfAbsent(const std::string& name, std::span<const uint8_t> data) override {
    BLKSNAP_RETURN_IF_ERROR(ValidateObjectName(name));
    MutexLock lock(mu_);
    auto [it, inserted] = objects_.try_emplace(name, data.begin(), data.end());
    if (!inserted) return Status::Error(EEXIST, "object '" + name + "' exists");
    return Status::Ok();
  }

  Result<std::vector<uint8_t>> Get(const std::string& name) override {
    BLKSNAP_RETURN_IF_ERROR(ValidateObjectName(name));
    MutexLock lock(mu_);
    auto it = objects_.find(name);
    if (it == objects_.end()) return Status::Error(ENOENT, "object '" + name + "' not found");
    return it->second;
  }

  Result<bool> Exists(const std::string& name) override {
    BLKSNAP_RETURN_IF_ERROR(ValidateObjectName(name));
    MutexLock lock(mu_);
    return objects_.contains(name);
  }

  Result<uint64_t> Size(const std::string& name) override {
    BLKSNAP_RETURN_IF_ERROR(ValidateObjectName(name));
    MutexLock lock(mu_);
    auto it = objects_.find(name);
    if (it == objects_.end()) return Status::Error(ENOENT, "object '" + name + "' not found");
    return uint64_t{it->second.size()};
  }

  Result<std::vector<std::string>> List(const std::string& prefix) override {
    BLKSNAP_RETURN_IF_ERROR(ValidateListPrefix(prefix));
    std::vector<std::string> names;
    MutexLock lock(mu_);
    for (auto it = objects_.lower_bound(prefix);
         it != objects_.end() && it->first.starts_with(prefix); ++it) {
      names.push_back(it->first);
    }
    return names;
  }

  Status Delete(const std::string& name) override {
    BLKSNAP_RETURN_IF_ERROR(ValidateObjectName(name));
    MutexLock lock(mu_);
    objects_.erase(name);
    return Status::Ok();
  }

  Result<std::unique_ptr<Lease>> Lock(LockMode mode, bool wait) override {
    LockTable& t = *locks_;
    MutexLock lock(t.mu);
    while (t.exclusive || (mode == LockMode::kExclusive && t.shared > 0)) {
      if (!wait) return Status::Error(EBUSY, "repository is locked by another user");
      t.released.Wait(t.mu);
    }
    if (mode == LockMode::kShared) {
      ++t.shared;
    } else {
      t.exclusive = true;
    }
    return std::unique_ptr<Lease>(new MemoryLease(locks_, mode));
  }

 private:
  Mutex mu_;
  std::map<std::string, std::vector<uint8_t>, std::less<>> objects_ GUARDED_BY(mu_);
  const std::shared_ptr<LockTable> locks_ = std::make_shared<LockTable>();
};

}  // namespace

std::unique_ptr<ObjectStore> NewMemoryStore() { return std::make_unique<MemoryStore>(); }

}  // namespace blksnap::repo
