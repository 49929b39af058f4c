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
#include <span>
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

// Lowercase hex of any bytes, and back (exactly 2 * out.size() lowercase hex characters).
std::string ToHex(std::span<const uint8_t> bytes);
bool FromHex(std::string_view hex, std::span<uint8_t> out);

// SHA-256 (OpenSSL EVP): chunk names of plain repositories, the index's and the manifest's and
// config's checksums. Aborts only when OpenSSL cannot allocate (an encoder without a checksum
// would write an object that never parses).
Digest Sha256(std::span<const uint8_t> data);
Digest Sha256(std::string_view text);

}  // namespace blksnap::repo
