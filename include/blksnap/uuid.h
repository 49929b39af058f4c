// Uuid: 128-bit random (version 4) identifiers for snapshots and CBT generations.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace blksnap {

class Uuid {
 public:
  Uuid() = default;  // the nil UUID
  explicit Uuid(const std::array<uint8_t, 16>& bytes) : bytes_(bytes) {}

  static Uuid Random();
  // Accepts the canonical 36-character form; nullopt otherwise.
  static std::optional<Uuid> Parse(std::string_view text);

  std::string ToString() const;  // "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", lower case
  bool is_nil() const;
  const std::array<uint8_t, 16>& bytes() const { return bytes_; }
  auto operator<=>(const Uuid&) const = default;

 private:
  std::array<uint8_t, 16> bytes_{};
};

}  // namespace blksnap
