// Object names (ValidateObjectName, ValidateListPrefix), the default PutBatch (each Put straight
// through the store) and FaultyStore, the test wrapper that fails or drops operations on demand.
// FaultyStore keeps its rules and counters under mu_; the wrapped store is called without mu_
// held. A FaultyStore batch holds its objects (with the crash epoch of their put) under its own
// mutex until Commit puts those of the current epoch into the wrapped store.
#include "repository/object_store.h"

#include <algorithm>
#include <cstring>
#include <map>

#include "repository/repository_format.h"

namespace blksnap::repo {
namespace {

bool NameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}

// Checks '/'-separated components; the last one may be empty only if allow_trailing_slash.
Status CheckComponents(std::string_view name, bool allow_trailing_slash, std::string_view what) {
  if (name.size() > kMaxObjectNameLength) {
    return Status::Error(EINVAL, std::string(what) + " longer than 1024 bytes");
  }
  size_t start = 0;
  while (true) {
    const size_t slash = name.find('/', start);
    const std::string_view part = name.substr(
        start, slash == std::string_view::npos ? std::string_view::npos : slash - start);
    const bool last = slash == std::string_view::npos;
    if (part.empty() && !(last && allow_trailing_slash && start > 0)) {
      return Status::Error(EINVAL, std::string(what) + " '" + std::string(name) +
                                       "': empty component (leading, trailing or double '/')");
    }
    if (!part.empty() && part[0] == '.') {
      return Status::Error(
          EINVAL, std::string(what) + " '" + std::string(name) + "': a component starts with '.'");
    }
    if (part.size() > kMaxNameComponentLength) {
      return Status::Error(EINVAL, std::string(what) + ": a component is longer than 255 bytes");
    }
    for (char c : part) {
      if (!NameChar(c)) {
        return Status::Error(EINVAL, std::string(what) + " '" + std::string(name) +
                                         "': characters other than [a-z0-9._/-]");
      }
    }
    if (last) return Status::Ok();
    start = slash + 1;
  }
}

// The default batch: every Put is the store's (durable on return); nothing to commit.
class DirectBatch : public PutBatch {
 public:
  explicit DirectBatch(ObjectStore& store) : store_(store) {}
  Status Put(const std::string& name, std::span<const uint8_t> data) override {
    return store_.Put(name, data);
  }
  bool Contains(const std::string&) override { return false; }
  Status Commit() override { return Status::Ok(); }

 private:
  ObjectStore& store_;
};

}  // namespace

std::unique_ptr<PutBatch> ObjectStore::NewPutBatch() {
  return std::make_unique<DirectBatch>(*this);
}

Result<size_t> ObjectStore::ReadInto(const std::string& name, std::span<uint8_t> out) {
  BLKSNAP_ASSIGN_OR_RETURN(std::vector<uint8_t> data, Get(name));
  if (data.size() > out.size()) {
    return Status::Error(
        EMSGSIZE, "object '" + name + "' is longer than " + std::to_string(out.size()) + " bytes");
  }
  if (!data.empty()) std::memcpy(out.data(), data.data(), data.size());
  return data.size();
}

Result<ObjectStore::Tail> ObjectStore::ReadTail(const std::string& name, std::span<uint8_t> out) {
  BLKSNAP_ASSIGN_OR_RETURN(std::vector<uint8_t> data, Get(name));
  Tail tail{data.size(), std::min(data.size(), out.size())};
  if (tail.length > 0)
    std::memcpy(out.data(), data.data() + data.size() - tail.length, tail.length);
  return tail;
}

Status ValidateObjectName(std::string_view name) {
  if (name == kLockObject) return Status::Error(EINVAL, "object name 'lock' is reserved");
  return CheckComponents(name, false, "object name");
}

Status ValidateListPrefix(std::string_view prefix) {
  if (prefix.empty()) return Status::Ok();
  return CheckComponents(prefix, true, "list prefix");
}

// ---- FaultyStore

void FaultyStore::FailAfter(StoreOp op, int successes, int errnum, std::string prefix) {
  MutexLock lock(mu_);
  rules_[static_cast<int>(op)] = {true, successes, errnum, std::move(prefix)};
}

void FaultyStore::DropPuts(std::string prefix) {
  MutexLock lock(mu_);
  drop_ = true;
  drop_prefix_ = std::move(prefix);
}

void FaultyStore::CrashBefore(std::string prefix) {
  MutexLock lock(mu_);
  crash_armed_ = true;
  crash_prefix_ = std::move(prefix);
}

void FaultyStore::Clear() {
  MutexLock lock(mu_);
  for (Rule& rule : rules_) rule = Rule{};
  drop_ = false;
  drop_prefix_.clear();
  crash_armed_ = false;
  lapse_ = false;
}

void FaultyStore::LapseLeases() {
  MutexLock lock(mu_);
  lapse_ = true;
}

uint64_t FaultyStore::CrashEpoch(std::string_view name) {
  MutexLock lock(mu_);
  if (crash_armed_ && name.starts_with(crash_prefix_)) {
    crash_armed_ = false;
    ++crash_epoch_;
  }
  return crash_epoch_;
}

class FaultyStore::Batch : public PutBatch {
 public:
  explicit Batch(FaultyStore& store) : store_(store) {}
  Status Put(const std::string& name, std::span<const uint8_t> data) override {
    BLKSNAP_RETURN_IF_ERROR(store_.Check(StoreOp::kPut, name));
    if (store_.Dropped(name)) return Status::Ok();
    const uint64_t epoch = store_.CrashEpoch(name);
    MutexLock lock(mu_);
    held_[name] = {epoch, std::vector<uint8_t>(data.begin(), data.end())};
    return Status::Ok();
  }
  bool Contains(const std::string& name) override {
    MutexLock lock(mu_);
    return held_.contains(name);
  }
  Status Commit() override {
    std::map<std::string, std::pair<uint64_t, std::vector<uint8_t>>> held;
    {
      MutexLock lock(mu_);
      held.swap(held_);
    }
    uint64_t epoch = 0;
    {
      MutexLock lock(store_.mu_);
      epoch = store_.crash_epoch_;
    }
    for (const auto& [name, entry] : held) {
      if (entry.first != epoch) continue;  // lost in a crash
      BLKSNAP_RETURN_IF_ERROR(store_.base_->Put(name, entry.second));
    }
    return Status::Ok();
  }

 private:
  FaultyStore& store_;
  Mutex mu_;
  std::map<std::string, std::pair<uint64_t, std::vector<uint8_t>>> held_ GUARDED_BY(mu_);
};

std::unique_ptr<PutBatch> FaultyStore::NewPutBatch() { return std::make_unique<Batch>(*this); }

int FaultyStore::calls(StoreOp op) const {
  MutexLock lock(mu_);
  return calls_[static_cast<int>(op)];
}

Status FaultyStore::Check(StoreOp op, std::string_view name) {
  MutexLock lock(mu_);
  ++calls_[static_cast<int>(op)];
  Rule& rule = rules_[static_cast<int>(op)];
  if (!rule.active || !name.starts_with(rule.prefix)) return Status::Ok();
  if (rule.successes_left > 0) {
    --rule.successes_left;
    return Status::Ok();
  }
  return Status::Error(rule.errnum, "injected failure on '" + std::string(name) + "'");
}

bool FaultyStore::Dropped(std::string_view name) {
  MutexLock lock(mu_);
  return drop_ && name.starts_with(drop_prefix_);
}

Status FaultyStore::Put(const std::string& name, std::span<const uint8_t> data) {
  BLKSNAP_RETURN_IF_ERROR(Check(StoreOp::kPut, name));
  CrashEpoch(name);
  if (Dropped(name)) return Status::Ok();
  return base_->Put(name, data);
}

Status FaultyStore::PutIfAbsent(const std::string& name, std::span<const uint8_t> data) {
  BLKSNAP_RETURN_IF_ERROR(Check(StoreOp::kPut, name));
  CrashEpoch(name);
  if (Dropped(name)) return Status::Ok();
  return base_->PutIfAbsent(name, data);
}

Result<std::vector<uint8_t>> FaultyStore::Get(const std::string& name) {
  BLKSNAP_RETURN_IF_ERROR(Check(StoreOp::kGet, name));
  return base_->Get(name);
}

Result<size_t> FaultyStore::ReadInto(const std::string& name, std::span<uint8_t> out) {
  BLKSNAP_RETURN_IF_ERROR(Check(StoreOp::kGet, name));
  return base_->ReadInto(name, out);
}

Result<ObjectStore::Tail> FaultyStore::ReadTail(const std::string& name, std::span<uint8_t> out) {
  BLKSNAP_RETURN_IF_ERROR(Check(StoreOp::kGet, name));
  return base_->ReadTail(name, out);
}

Result<bool> FaultyStore::Exists(const std::string& name) {
  BLKSNAP_RETURN_IF_ERROR(Check(StoreOp::kExists, name));
  return base_->Exists(name);
}

Result<uint64_t> FaultyStore::Size(const std::string& name) {
  BLKSNAP_RETURN_IF_ERROR(Check(StoreOp::kExists, name));
  return base_->Size(name);
}

Result<std::vector<std::string>> FaultyStore::List(const std::string& prefix) {
  BLKSNAP_RETURN_IF_ERROR(Check(StoreOp::kList, prefix));
  return base_->List(prefix);
}

Status FaultyStore::Delete(const std::string& name) {
  BLKSNAP_RETURN_IF_ERROR(Check(StoreOp::kDelete, name));
  return base_->Delete(name);
}

namespace {

// A lease of the base store that says it lapsed.
class LapsedLease final : public Lease {
 public:
  explicit LapsedLease(std::unique_ptr<Lease> base) : base_(std::move(base)) {}
  bool Lapsed() const override { return true; }

 private:
  const std::unique_ptr<Lease> base_;
};

}  // namespace

Result<std::unique_ptr<Lease>> FaultyStore::Lock(LockMode mode, bool wait) {
  BLKSNAP_RETURN_IF_ERROR(Check(StoreOp::kLock, ""));
  BLKSNAP_ASSIGN_OR_RETURN(std::unique_ptr<Lease> lease, base_->Lock(mode, wait));
  bool lapse = false;
  {
    MutexLock lock(mu_);
    lapse = lapse_;
  }
  if (lapse) return std::unique_ptr<Lease>(new LapsedLease(std::move(lease)));
  return lease;
}

}  // namespace blksnap::repo
