// AreaChain: the DiffAreas of one device, one per taken snapshot, oldest first (issue 18:
// several snapshots per device with one preserved copy per chunk).
//
// Only the newest area copies on a write of the original (TrackerImpl). A chunk's copy in an
// area therefore holds the data of its own take and also of every older take whose area has no
// usable copy of that chunk: nothing wrote the chunk in between. So an area without a copy of a
// chunk reads it through the newer areas, the first usable copy winning, and the original last.
// The rules that keep this true:
//   * reading through (ReadNewer): an original read is re-checked afterwards, and retried if a
//     newer area got a usable copy meanwhile or the chain changed (a take): the original only
//     changes after the newest area's copy is usable;
//   * before an area's copy of a chunk changes (an image write), the nearest older area without
//     a usable copy gets its own (ShieldOlder), read through the chain as it still is;
//   * before an area leaves the chain (destroy), every usable copy it holds is shielded the
//     same way (the older areas' copies are in their storage before it goes), and while it
//     leaves, readers holding the old list either finish in it or are told to retry;
//   * a corrupted area keeps the copies it holds (a copy whose store failed stays in memory),
//     and the writer falls back to the next older area (TrackerImpl::Modify), so the overflow of
//     one snapshot never corrupts the others.
//
// Locking: mu_ guards the list pointer only; a list is immutable once published, so a reader
// walks its own reference without a lock. Set() is called with the tracker's gate closed (take,
// recovery) or, for removals, after the writers stopped copying into the area that leaves.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "blksnap/block_device.h"
#include "util/mutex.h"

namespace blksnap {

class DiffArea;

class AreaChain {
 public:
  using List = std::vector<std::shared_ptr<DiffArea>>;  // oldest first

  explicit AreaChain(std::shared_ptr<BlockDevice> original) : original_(std::move(original)) {}

  std::shared_ptr<const List> list() const EXCLUDES(mu_) {
    MutexLock lock(mu_);
    return list_;
  }
  void Set(List list) EXCLUDES(mu_);

  // The take-time data of bytes [in_chunk, in_chunk + buf.size()) of chunk `index` as the areas
  // newer than `self` and the original hold it (every area of a chain has one geometry). ENODEV
  // if `self` is not in the chain.
  Status ReadNewer(const DiffArea* self, uint64_t index, uint64_t in_chunk, std::span<uint8_t> buf);
  // True if an area newer than `self` has a usable copy of chunk `index` now.
  bool NewerHas(const DiffArea* self, uint64_t index) const;
  // Before `self`'s copy of chunk `index` changes or goes: the nearest older area that would
  // read the chunk through `self` gets its own copy. `wait_stored`: a durable older area's copy
  // is committed before this returns (else the caller waits for the older areas' storers).
  Status ShieldOlder(const DiffArea* self, uint64_t index, bool wait_stored);
  // The areas older than `self` (destroy waits for their storers after shielding).
  List OlderThan(const DiffArea* self) const;

 private:
  const std::shared_ptr<BlockDevice> original_;
  mutable Mutex mu_;
  std::shared_ptr<const List> list_ GUARDED_BY(mu_) = std::make_shared<const List>();
};

}  // namespace blksnap
