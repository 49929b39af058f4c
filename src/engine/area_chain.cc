// AreaChain: see area_chain.h for the rules that make one copy serve every older snapshot.
#include "engine/area_chain.h"

#include <algorithm>

#include "engine/diff_area.h"

namespace blksnap {
namespace {

// Position of `self` in `list`, or list.size() if it is not there.
size_t Find(const AreaChain::List& list, const DiffArea* self) {
  for (size_t i = 0; i < list.size(); ++i) {
    if (list[i].get() == self) return i;
  }
  return list.size();
}

}  // namespace

void AreaChain::Set(List list) {
  auto published = std::make_shared<const List>(std::move(list));
  MutexLock lock(mu_);
  list_ = std::move(published);
}

Status AreaChain::ReadNewer(const DiffArea* self, uint64_t index, uint64_t in_chunk,
                            std::span<uint8_t> buf) {
  for (;;) {
    const std::shared_ptr<const List> chain = list();
    const size_t pos = Find(*chain, self);
    if (pos == chain->size()) return Status::Error(ENODEV, "snapshot left the chain");
    // True if an area in (pos, end) has a usable copy now, or the chain changed: what was read
    // from area `end` (or the original) may be newer than this take (an image write to `end`
    // shields the areas before it first; a write of the original copies into the newest).
    auto changed = [&](size_t end) {
      if (list() != chain) return true;
      for (size_t i = pos + 1; i < end; ++i) {
        if ((*chain)[i]->HasCopy(index)) return true;
      }
      return false;
    };
    bool retry = false;
    for (size_t i = pos + 1; i < chain->size() && !retry; ++i) {
      Status s;
      switch ((*chain)[i]->ReadCopy(index, in_chunk, buf, &s)) {
        case DiffArea::Copy::kRead:
          if (!s.ok() || !changed(i)) return s;
          retry = true;
          break;
        case DiffArea::Copy::kGone:
          retry = true;  // it left the chain: read the new list
          break;
        case DiffArea::Copy::kAbsent:
          break;
      }
    }
    if (retry) continue;
    const ChunkGeometry& g = self->geometry();
    BLKSNAP_RETURN_IF_ERROR(original_->Read(g.offset(index) + in_chunk, buf));
    // The original changes only once the newest area holds a usable copy: none now, and the
    // same chain (no take meanwhile), proves the read saw the data of every take after ours.
    if (!changed(chain->size())) return Status::Ok();
  }
}

bool AreaChain::NewerHas(const DiffArea* self, uint64_t index) const {
  const std::shared_ptr<const List> chain = list();
  for (size_t i = Find(*chain, self) + 1; i < chain->size(); ++i) {
    if ((*chain)[i]->HasCopy(index)) return true;
  }
  return false;
}

Status AreaChain::ShieldOlder(const DiffArea* self, uint64_t index, bool wait_stored) {
  const std::shared_ptr<const List> chain = list();
  const size_t pos = Find(*chain, self);
  for (size_t i = std::min(pos, chain->size()); i-- > 0;) {
    DiffArea& older = *(*chain)[i];
    if (older.HasCopy(index)) {
      // It and those before it read their own; a durable one's once committed, before the
      // caller changes the newer copy they might otherwise read through (a lost record).
      if (wait_stored) older.WaitCopyCommitted(index);
      return Status::Ok();
    }
    // A corrupted area serves no image; the ones before it read through it, so go on.
    if (older.corrupted()) continue;
    Status s = older.PreserveChunk(index, wait_stored);
    // ENODEV: it is leaving the chain (destroy shields from its copies): the next one. A
    // failure that corrupted it: the next one too.
    if (s.errnum() == ENODEV || (!s.ok() && older.corrupted())) continue;
    return s;
  }
  return Status::Ok();
}

AreaChain::List AreaChain::OlderThan(const DiffArea* self) const {
  const std::shared_ptr<const List> chain = list();
  const size_t pos = Find(*chain, self);
  return List(chain->begin(),
              chain->begin() + static_cast<std::ptrdiff_t>(std::min(pos, chain->size())));
}

}  // namespace blksnap
