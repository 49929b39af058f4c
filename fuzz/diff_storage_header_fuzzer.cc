// libFuzzer target: the difference-storage parsers (src/engine/diff_storage_format.h) on
// arbitrary bytes, as found at a difference-storage path: ParseDiffStorageHeader,
// ParseDiffStorageHeaderSlots, ParseLogPage (chunk-log pages) and ParseTornLogPage (a crash log's
// mapped page stopped inside an append). They must never read out of bounds; whatever they
// accept must serialize back to the same fields (one encoding).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>

#include "engine/diff_storage_format.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace blksnap;
  const std::span<const uint8_t> bytes(data, size);
  (void)ParseDiffStorageHeaderSlots(bytes);
  if (auto parsed = ParseDiffStorageHeader(bytes); parsed.ok()) {
    const auto block = SerializeDiffStorageHeader(*parsed);
    auto again = ParseDiffStorageHeader(block);
    if (!again.ok() || !(*again == *parsed)) std::abort();
    if (std::memcmp(block.data(), data, kReservedOffset) != 0) std::abort();
  }
  if (auto page = ParseLogPage(bytes); page.ok()) {
    auto again = ParseLogPage(SerializeLogPage(*page));
    if (!again.ok() || !(*again == *page)) std::abort();
  }
  if (auto page = ParseTornLogPage(bytes); page.ok()) {
    auto again = ParseLogPage(SerializeLogPage(*page));
    if (!again.ok() || !(*again == *page)) std::abort();
  }
  return 0;
}
