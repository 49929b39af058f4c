// Object names (ValidateObjectName, ValidateListPrefix) and FaultyStore, the test wrapper that
// fails or drops operations on demand. FaultyStore keeps its rules and counters under mu_; the
// wrapped store is called without mu_ held.
#include "repository/object_store.h"

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

}  // namespace

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

void FaultyStore::Clear() {
  MutexLock lock(mu_);
  for (Rule& rule : rules_) rule = Rule{};
  drop_ = false;
  drop_prefix_.clear();
}

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
  if (Dropped(name)) return Status::Ok();
  return base_->Put(name, data);
}

Status FaultyStore::PutIfAbsent(const std::string& name, std::span<const uint8_t> data) {
  BLKSNAP_RETURN_IF_ERROR(Check(StoreOp::kPut, name));
  if (Dropped(name)) return Status::Ok();
  return base_->PutIfAbsent(name, data);
}

Result<std::vector<uint8_t>> FaultyStore::Get(const std::string& name) {
  BLKSNAP_RETURN_IF_ERROR(Check(StoreOp::kGet, name));
  return base_->Get(name);
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

Result<std::unique_ptr<Lease>> FaultyStore::Lock(LockMode mode, bool wait) {
  BLKSNAP_RETURN_IF_ERROR(Check(StoreOp::kLock, ""));
  return base_->Lock(mode, wait);
}

}  // namespace blksnap::repo
