// libFuzzer target: the rollback journal's header parser (src/engine/rollback_journal_format.h)
// on arbitrary bytes, as found in the state directory. It must never read out of bounds; what
// it accepts must serialize back to the same fields and the same bytes (one encoding).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>

#include "engine/rollback_journal_format.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace blksnap;
  auto parsed = ParseRollbackHeader(std::span<const uint8_t>(data, size));
  if (!parsed.ok()) return 0;
  const auto block = SerializeRollbackHeader(*parsed);
  auto again = ParseRollbackHeader(block);
  if (!again.ok() || again->snapshot != parsed->snapshot || again->device != parsed->device ||
      again->device_size != parsed->device_size || again->chunk_size != parsed->chunk_size ||
      again->chunk_count != parsed->chunk_count || again->started != parsed->started) {
    std::abort();
  }
  if (std::memcmp(block.data(), data, kRbDeviceNameOffset + parsed->device.size()) != 0)
    std::abort();
  return 0;
}
