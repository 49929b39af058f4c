// Digest: hex conversion and SHA-256 (see digest.h). No state, no locking.
#include "repository/digest.h"

#include <openssl/evp.h>

#include <cstdio>
#include <cstdlib>
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

std::string ToHex(std::span<const uint8_t> bytes) {
  std::string hex(bytes.size() * 2, '0');
  for (size_t i = 0; i < bytes.size(); ++i) {
    hex[2 * i] = kHexDigits[bytes[i] >> 4];
    hex[2 * i + 1] = kHexDigits[bytes[i] & 0xf];
  }
  return hex;
}

bool FromHex(std::string_view hex, std::span<uint8_t> out) {
  if (hex.size() != out.size() * 2) return false;
  for (size_t i = 0; i < out.size(); ++i) {
    const int high = HexValue(hex[2 * i]);
    const int low = HexValue(hex[2 * i + 1]);
    if (high < 0 || low < 0) return false;
    out[i] = static_cast<uint8_t>(high << 4 | low);
  }
  return true;
}

std::string Digest::Hex() const { return ToHex(bytes); }

Result<Digest> Digest::FromHex(std::string_view hex) {
  Digest digest;
  if (!repo::FromHex(hex, digest.bytes)) {
    return Status::Error(EINVAL, "digest: expected 64 lowercase hex characters");
  }
  return digest;
}

Digest Sha256(std::span<const uint8_t> data) {
  Digest out;
  unsigned int length = 0;
  if (EVP_Digest(data.data(), data.size(), out.bytes.data(), &length, EVP_sha256(), nullptr) != 1 ||
      length != out.bytes.size()) {
    std::fputs("blksnap: SHA-256 failed (OpenSSL out of memory)\n", stderr);
    std::abort();
  }
  return out;
}

Digest Sha256(std::string_view text) {
  return Sha256({reinterpret_cast<const uint8_t*>(text.data()), text.size()});
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
