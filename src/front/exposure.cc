// Exposure: see exposure.h. Removal order is the reverse of creation (a loop device before the
// FUSE file it reads, a ublk device before anything); aliases go with the fronts.
#include "front/exposure.h"

namespace blksnap {

Exposure::~Exposure() { Remove().IgnoreError(); }

namespace {

// The device numbers a front makes an alias of the device behind it.
std::vector<uint64_t> AliasesOf(const Front& f) {
  std::vector<uint64_t> a;
  if (f.rdev() != 0) a.push_back(f.rdev());
  if (f.alias_dev() != 0) a.push_back(f.alias_dev());
  return a;
}

}  // namespace

void Exposure::Add(std::unique_ptr<Front> front) {
  if (alias_owner_) {
    for (uint64_t dev : AliasesOf(*front)) alias_owner_->AddAlias(dev);
  }
  fronts_.push_back(std::move(front));
}

void Exposure::SetAliasOwner(std::shared_ptr<Tracker> tracker) {
  alias_owner_ = std::move(tracker);
  if (!alias_owner_) return;
  for (const auto& f : fronts_) {
    for (uint64_t dev : AliasesOf(*f)) alias_owner_->AddAlias(dev);
  }
}

FrontAddresses Exposure::addresses() const {
  FrontAddresses a;
  for (const auto& f : fronts_) f->Describe(a);
  return a;
}

std::vector<uint64_t> Exposure::rdevs() const {
  std::vector<uint64_t> r;
  for (const auto& f : fronts_) {
    if (f->rdev() != 0) r.push_back(f->rdev());
  }
  return r;
}

Status Exposure::CheckIdle() const {
  // Outermost first: a mounted loop device is the more useful message than its open FUSE file.
  for (auto it = fronts_.rbegin(); it != fronts_.rend(); ++it) {
    BLKSNAP_RETURN_IF_ERROR((*it)->CheckIdle());
  }
  return Status::Ok();
}

Status Exposure::Remove() {
  Status first;
  while (!fronts_.empty()) {
    std::unique_ptr<Front> f = std::move(fronts_.back());
    fronts_.pop_back();
    const std::vector<uint64_t> aliases = AliasesOf(*f);  // a removed front reports none
    Status s = f->Remove();
    if (!s.ok() && first.ok()) first = s;
    if (alias_owner_) {
      for (uint64_t dev : aliases) alias_owner_->RemoveAlias(dev);
    }
  }
  return first;
}

}  // namespace blksnap
