// Block-status extent merging and clipping (see extents.h).
//
// Both builders walk the source in offset order, clip every piece to the request window and
// append it to the result, extending the last descriptor when the flags are equal. Lengths fit
// in 32 bits because the window itself is at most 2^32 - 1 bytes long.
#include "nbd/extents.h"

#include <algorithm>

namespace blksnap::nbd {
namespace {

// Appends [len, flags], merging with the previous descriptor; false once max_extents is full
// and the new piece could not be merged.
bool Append(std::vector<WireExtent>* out, uint64_t len, uint32_t flags, size_t max_extents) {
  if (len == 0) return true;
  if (!out->empty() && out->back().flags == flags) {
    out->back().length += static_cast<uint32_t>(len);
    return true;
  }
  if (out->size() >= max_extents) return false;
  out->push_back(WireExtent{static_cast<uint32_t>(len), flags});
  return true;
}

}  // namespace

std::vector<WireExtent> AllocationExtents(std::span<const Extent> extents, uint64_t offset,
                                          uint32_t length, size_t max_extents) {
  std::vector<WireExtent> out;
  if (max_extents == 0) max_extents = 1;
  const uint64_t end = offset + length;
  uint64_t pos = offset;
  for (const Extent& e : extents) {
    if (pos >= end) break;
    if (e.length == 0) continue;
    const uint64_t e_end = e.offset + e.length < e.offset ? UINT64_MAX : e.offset + e.length;
    if (e_end <= pos) continue;  // entirely before the window (or already covered)
    if (e.offset > pos) {        // a gap: report it as plain data
      if (out.empty()) break;    // must start exactly at offset
      const uint64_t gap_end = std::min(e.offset, end);
      if (!Append(&out, gap_end - pos, 0, max_extents)) return out;
      pos = gap_end;
      if (pos >= end) break;
    }
    const uint64_t piece_end = std::min(e_end, end);
    const uint32_t flags = e.flags & (kExtentHole | kExtentZero);
    if (!Append(&out, piece_end - pos, flags, max_extents)) return out;
    pos = piece_end;
  }
  return out;
}

std::vector<WireExtent> CbtExtents(std::span<const uint8_t> map, uint64_t first_block,
                                   uint32_t block_size, uint64_t offset, uint32_t length,
                                   size_t max_extents) {
  std::vector<WireExtent> out;
  if (max_extents == 0) max_extents = 1;
  if (block_size == 0 || length == 0) return out;
  const uint64_t end = offset + length;
  uint64_t pos = offset;
  for (size_t i = 0; i < map.size() && pos < end; ++i) {
    const uint64_t block = first_block + i;
    const uint64_t b_start = block * block_size;
    const uint64_t b_end = b_start + block_size;
    if (b_end <= pos) continue;
    if (b_start > pos) break;  // the map does not start at offset's block
    const uint64_t piece_end = std::min(b_end, end);
    if (!Append(&out, piece_end - pos, map[i], max_extents)) return out;
    pos = piece_end;
  }
  return out;
}

void KeepFirstExtent(std::vector<WireExtent>* extents) {
  if (extents->size() > 1) extents->resize(1);
}

}  // namespace blksnap::nbd
