// Block-status extent lists for NBD_CMD_BLOCK_STATUS: merging and clipping.
//
// Pure functions (no I/O) so they can be unit-tested and fuzzed: the session fetches extents
// from the device (base:allocation) or read-map bytes from the CbtSource (blksnap:cbt) and turns
// them into the descriptors a NBD_REPLY_TYPE_BLOCK_STATUS chunk carries.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "blksnap/block_device.h"

namespace blksnap::nbd {

// One block-status descriptor as sent on the wire.
struct WireExtent {
  uint32_t length = 0;
  uint32_t flags = 0;
  bool operator==(const WireExtent&) const = default;
};

// Turns device extents into descriptors for the request [offset, offset + length):
// clips to the request, keeps only the HOLE|ZERO bits, merges neighbours with equal flags, fills
// gaps (should a device report any) with flags 0, stops at max_extents (>= 1) descriptors. The
// result covers a non-empty prefix of the request, or is empty when length is 0 or the device
// reported nothing at offset.
std::vector<WireExtent> AllocationExtents(std::span<const Extent> extents, uint64_t offset,
                                          uint32_t length, size_t max_extents);

// Turns CBT read-map bytes into descriptors for [offset, offset + length). map[i] is the byte of
// block first_block + i; block_size is a power of two. Each descriptor's flags is the map byte;
// runs of equal bytes are merged. Bytes beyond the map (a short map) end the list.
std::vector<WireExtent> CbtExtents(std::span<const uint8_t> map, uint64_t first_block,
                                   uint32_t block_size, uint64_t offset, uint32_t length,
                                   size_t max_extents);

// Keeps only the first descriptor (NBD_CMD_FLAG_REQ_ONE); it never exceeds the request length
// because both builders clip to the request.
void KeepFirstExtent(std::vector<WireExtent>* extents);

}  // namespace blksnap::nbd
