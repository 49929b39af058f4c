// libFuzzer target: the repository catalog's parsers (src/repository/index.h, manifest.h). Each
// input is tried as an index object and as a manifest: neither may crash, throw or allocate in
// proportion to a claimed count. An index that parses is canonical: encoding it gives the input
// back. A manifest that parses follows CheckManifest and survives a round trip (its own encoding
// parses to the same manifest).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <string_view>

#include "repository/index.h"
#include "repository/manifest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace blksnap::repo;
  const std::span<const uint8_t> bytes(data, size);
  auto index = ParseIndex(bytes);
  if (index.ok()) {
    if (!CheckIndex(*index).ok()) abort();
    const auto encoded = EncodeIndex(*index);
    if (encoded.size() != size || !std::equal(encoded.begin(), encoded.end(), data)) abort();
  }
  auto manifest = ParseManifest(std::string_view(reinterpret_cast<const char*>(data), size));
  if (manifest.ok()) {
    if (!CheckManifest(*manifest).ok()) abort();
    auto again = ParseManifest(EncodeManifest(*manifest));
    if (!again.ok() || !(*again == *manifest)) abort();
  }
  return 0;
}
