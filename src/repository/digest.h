// Digest: the 32-byte name of a repository object (a chunk's SHA-256 or HMAC-SHA-256, an
// index's SHA-256). Shared by every layer of src/repository (docs/repository-format.md).
//
// Hex() gives the 64 lowercase hex characters used in object names ("chunks/ab/ab..."); FromHex
// accepts exactly that form and nothing else (EINVAL). The all-zero digest is not a valid hash
// of anything we store: indexes use it to mark a chunk that reads as zeroes. A plain value type:
// no state, no locking.
#pragma once

#include <array>
#include <compare>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "blksnap/status.h"

namespace blksnap::repo {

struct Digest {  // SHA-256 or HMAC-SHA-256, 32 bytes
  std::array<uint8_t, 32> bytes{};

  std::string Hex() const;  // 64 lowercase hex chars
  // Exactly 64 lowercase hex characters; EINVAL on anything else.
  static Result<Digest> FromHex(std::string_view hex);
  bool IsZero() const;  // all 32 bytes zero: the "zero chunk" marker in indexes
  auto operator<=>(const Digest&) const = default;
};

struct DigestHash {  // for unordered_set / unordered_map
  size_t operator()(const Digest& digest) const;
};

}  // namespace blksnap::repo
