// libFuzzer target: ParseDiffStorageHeader (src/engine/diff_storage_format.h) on arbitrary
// bytes, as found at a difference-storage path. It must never read out of bounds; whatever it
// accepts must serialize back to the same first block (the format has one encoding).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>

#include "engine/diff_storage_format.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace blksnap;
  auto parsed = ParseDiffStorageHeader(std::span<const uint8_t>(data, size));
  if (!parsed.ok()) return 0;
  // Accepted: a full block whose reserved bytes may be anything the checksum covers; the
  // fields must round-trip.
  const auto block = SerializeDiffStorageHeader(*parsed);
  auto again = ParseDiffStorageHeader(block);
  if (!again.ok() || !(*again == *parsed)) std::abort();
  if (std::memcmp(block.data(), data, kReservedOffset) != 0) std::abort();
  return 0;
}
