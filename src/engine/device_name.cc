// The one rule for device names (include/blksnap/engine.h, ValidateDeviceName).
#include <string>
#include <string_view>

#include "blksnap/engine.h"

namespace blksnap {

Status ValidateDeviceName(std::string_view name) {
  if (name.empty()) return Status::Error(EINVAL, "device name is empty");
  if (name.size() > 128) return Status::Error(EINVAL, "device name longer than 128 characters");
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '-' || c == '_' || c == '.';
    if (!ok) {
      return Status::Error(EINVAL, "device name '" + std::string(name) +
                                       "' may only hold letters, digits, '-', '_' and '.'");
    }
  }
  if (name == "." || name == "..") return Status::Error(EINVAL, "device name is reserved");
  return Status::Ok();
}

}  // namespace blksnap
