// libFuzzer target: the CBT state file (src/engine/cbt_format.h) and its recovery
// (src/engine/cbt_store.h).
//
// The input is a whole state file. ParseCbtState must never crash and never read past the input;
// a header it accepts must serialise back to the same bytes of the slot it came from (no field is
// silently dropped).
// Then the file is placed in a MemoryMappedFiles and opened as the state of a 64 KiB device with
// 4 KiB blocks: CbtStore::Open must succeed, and continue the generation only with the maps found
// in the file (exactly after a clean stop or a crash of this boot; after a power loss, with every
// mark kept and the read map rebuilt from the write map), else start a new one with a reason.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "blksnap/mapped_file.h"
#include "engine/cbt_format.h"
#include "engine/cbt_store.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace blksnap;
  const std::vector<uint8_t> bytes(data, data + size);
  int slot = -1;
  auto parsed = ParseCbtState(bytes, &slot);
  if (slot != 0 && slot != 1) std::abort();
  if (parsed.ok()) {
    const auto block = SerializeCbtHeader(*parsed);
    if (std::memcmp(block.data(), bytes.data() + slot * kCbtHeaderSize, block.size()) != 0)
      std::abort();
  }

  auto files = std::make_shared<MemoryMappedFiles>();
  files->set_boot_id("fuzz-boot");
  files->SetContents("/cbt", bytes);
  const CbtGeometry geometry{64 * 1024, 12};
  auto store = CbtStore::Open(geometry, {.path = "/cbt", .expected = true, .files = files});
  if (!store.ok()) std::abort();
  const CbtHeader& h = (*store)->header();
  if (h.capacity != geometry.capacity || h.block_count != 16) std::abort();
  const bool continued = parsed.ok() && h.generation == parsed->generation;
  if (continued && (*store)->recovered_from() == kCbtRecoveredPowerLoss) {
    for (size_t i = 0; i < 16; ++i) {
      if ((*store)->write_map()[i] < data[kCbtMapsOffset + i]) std::abort();  // a mark lost
      if ((*store)->read_map()[i] != (*store)->write_map()[i]) std::abort();
      if ((*store)->write_map()[i] > h.active) std::abort();
    }
  } else if (continued) {
    if (std::memcmp((*store)->write_map(), data + kCbtMapsOffset, 16) != 0) std::abort();
    if (std::memcmp((*store)->read_map(), data + CbtReadMapOffset(16), 16) != 0) std::abort();
  } else if (h.reason.empty() || h.reason == kCbtReasonNew) {
    std::abort();
  }
  return 0;
}
