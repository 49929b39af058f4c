// Digest: hex conversion and hashing (see digest.h). No state, no locking.
#include "repository/digest.h"

#include <cstring>

namespace blksnap::repo {
namespace {

constexpr char kHexDigits[] = "0123456789abcdef";

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

}  // namespace

std::string Digest::Hex() const {
  std::string hex(bytes.size() * 2, '0');
  for (size_t i = 0; i < bytes.size(); ++i) {
    hex[2 * i] = kHexDigits[bytes[i] >> 4];
    hex[2 * i + 1] = kHexDigits[bytes[i] & 0xf];
  }
  return hex;
}

Result<Digest> Digest::FromHex(std::string_view hex) {
  Digest digest;
  if (hex.size() != digest.bytes.size() * 2) {
    return Status::Error(EINVAL, "digest: expected 64 lowercase hex characters");
  }
  for (size_t i = 0; i < digest.bytes.size(); ++i) {
    const int high = HexValue(hex[2 * i]);
    const int low = HexValue(hex[2 * i + 1]);
    if (high < 0 || low < 0) {
      return Status::Error(EINVAL, "digest: expected 64 lowercase hex characters");
    }
    digest.bytes[i] = static_cast<uint8_t>(high << 4 | low);
  }
  return digest;
}

bool Digest::IsZero() const {
  for (uint8_t b : bytes) {
    if (b != 0) return false;
  }
  return true;
}

size_t DigestHash::operator()(const Digest& digest) const {
  // The bytes are a cryptographic hash already: any 8 of them are uniformly distributed.
  size_t h;
  std::memcpy(&h, digest.bytes.data(), sizeof(h));
  return h;
}

}  // namespace blksnap::repo
