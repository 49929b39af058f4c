// Change-block tracking as seen from outside the engine.
//
// Every tracked device keeps one byte per tracking block. The *read map* (frozen at each
// snapshot take) holds, for each block, the snap number of the snapshot during whose activity
// the block last changed; 0 means unchanged since the generation began. A backup tool that took
// its last backup at snap number N copies every block whose byte is > N, provided the
// generation id is still the one it saw (a new generation means: take a full backup).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "blksnap/status.h"
#include "blksnap/uuid.h"

namespace blksnap {

struct CbtInfo {
  uint32_t block_size = 0;  // bytes, a power of two
  uint64_t block_count = 0;
  uint64_t device_capacity = 0;  // bytes
  Uuid generation_id;
  uint8_t changes_number = 0;  // snap number of the last take (the read map's newest value)
};

struct ByteExtent {
  uint64_t offset = 0;
  uint64_t length = 0;
  bool operator==(const ByteExtent&) const = default;
};

// Read access to a device's CBT read map; implemented by the engine's tracker and consumed by
// frontends (NBD's blksnap:cbt meta context) and the daemon.
class CbtSource {
 public:
  virtual ~CbtSource() = default;
  virtual CbtInfo cbt_info() const = 0;
  // Copies read-map bytes [first_block, first_block + out.size()) into out; EINVAL past the end.
  virtual Status ReadCbtMap(uint64_t first_block, std::span<uint8_t> out) const = 0;
};

}  // namespace blksnap
