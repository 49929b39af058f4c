// Exposure: every front of one exposed device, owned together (RAII).
//
// An exposure is built front by front (Add, innermost first: NBD, FUSE file, loop on the file,
// ublk) and removed outermost first, so a file system on a loop or ublk device goes before the
// file it sits on. When an alias owner is set (the tracker of the device the fronts lead to),
// the block devices of the exposure are registered with it as aliases (so the engine refuses
// difference storage on them) and unregistered at removal. Destroying an exposure removes it.
// Not thread-safe: one owner.
#pragma once

#include <memory>
#include <vector>

#include "blksnap/engine.h"
#include "front/front.h"

namespace blksnap {

class Exposure {
 public:
  Exposure() = default;
  ~Exposure();
  Exposure(const Exposure&) = delete;
  Exposure& operator=(const Exposure&) = delete;

  // Takes ownership of one more front (outside the ones already added).
  void Add(std::unique_ptr<Front> front);
  // Registers every block device of the exposure as an alias of tracker (and later ones too).
  void SetAliasOwner(std::shared_ptr<Tracker> tracker);

  FrontAddresses addresses() const;
  std::vector<uint64_t> rdevs() const;
  // The first front in use, as EBUSY; OK when all are idle.
  Status CheckIdle() const;
  // Removes every front (outermost first) and the aliases; returns the first error. Idempotent.
  Status Remove();
  bool empty() const { return fronts_.empty(); }

 private:
  std::vector<std::unique_ptr<Front>> fronts_;  // in the order added
  std::shared_ptr<Tracker> alias_owner_;
};

}  // namespace blksnap
