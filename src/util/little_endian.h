// Little-endian fixed-width integers in byte buffers, the byte order of every on-disk format
// (docs/diff-storage-format.md, docs/cbt-format.md, docs/repository-format.md). Header-only,
// no state.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace blksnap {

// T: any integer type (signed ones as their two's-complement bits).
template <typename T>
void PutLe(uint8_t* out, T value) {
  using U = std::make_unsigned_t<T>;
  for (size_t i = 0; i < sizeof(T); ++i) out[i] = static_cast<uint8_t>(U(value) >> (8 * i));
}

template <typename T>
T GetLe(const uint8_t* in) {
  std::make_unsigned_t<T> value = 0;
  for (size_t i = 0; i < sizeof(T); ++i) value |= static_cast<decltype(value)>(in[i]) << (8 * i);
  return static_cast<T>(value);
}

}  // namespace blksnap
