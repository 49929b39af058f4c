// Uuid: random version-4 UUIDs and their canonical text form, from libuuid (util-linux), which
// draws from getrandom(2) and parses and prints the RFC 4122 form. Stateless, thread-safe.
#include "blksnap/uuid.h"

#include <uuid/uuid.h>

#include <cstring>

namespace blksnap {
namespace {

constexpr size_t kTextLength = 36;  // "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
static_assert(sizeof(uuid_t) == 16);

}  // namespace

Uuid Uuid::Random() {
  uuid_t raw;
  uuid_generate_random(raw);
  std::array<uint8_t, 16> b{};
  std::memcpy(b.data(), raw, b.size());
  return Uuid(b);
}

std::optional<Uuid> Uuid::Parse(std::string_view text) {
  if (text.size() != kTextLength) return std::nullopt;
  char buf[kTextLength + 1];
  std::memcpy(buf, text.data(), kTextLength);
  buf[kTextLength] = '\0';  // an embedded NUL makes it shorter, which uuid_parse refuses
  uuid_t raw;
  if (uuid_parse(buf, raw) != 0) return std::nullopt;
  std::array<uint8_t, 16> b{};
  std::memcpy(b.data(), raw, b.size());
  return Uuid(b);
}

std::string Uuid::ToString() const {
  char out[kTextLength + 1];
  uuid_unparse_lower(bytes_.data(), out);
  return std::string(out, kTextLength);
}

bool Uuid::is_nil() const { return uuid_is_null(bytes_.data()) != 0; }

}  // namespace blksnap
