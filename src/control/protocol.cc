// Helpers of the control protocol: size and range parsing, error objects, parameter access,
// base64. Pure functions without state or locking; unit-tested in protocol_test.cc and used on
// untrusted input by the daemon, so every parser rejects instead of guessing.
#include "control/protocol.h"

#include <cctype>
#include <cstring>
#include <limits>

namespace blksnap::control {

namespace {

std::string Quote(std::string_view text) {
  std::string out = "'";
  out.append(text.substr(0, 64));
  if (text.size() > 64) out += "...";
  out += "'";
  return out;
}

}  // namespace

Result<uint64_t> ParseSize(std::string_view text) {
  std::string_view s = text;
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  if (s.empty())
    return Status::Error(EINVAL, "invalid size '': expected a number like 4096 or 64M");
  size_t i = 0;
  uint64_t whole = 0;
  bool digits = false;
  while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) {
    digits = true;
    uint64_t d = static_cast<uint64_t>(s[i] - '0');
    if (whole > (std::numeric_limits<uint64_t>::max() - d) / 10) {
      return Status::Error(ERANGE, "size " + Quote(text) + " is too large");
    }
    whole = whole * 10 + d;
    ++i;
  }
  // Optional fraction, only meaningful with a suffix ("1.5G").
  uint64_t frac_num = 0, frac_den = 1;
  if (i < s.size() && s[i] == '.') {
    ++i;
    bool frac_digits = false;
    while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) {
      frac_digits = true;
      if (frac_den < 1000000000ull) {
        frac_num = frac_num * 10 + static_cast<uint64_t>(s[i] - '0');
        frac_den *= 10;
      }
      ++i;
    }
    if (!frac_digits) digits = false;
  }
  if (!digits) {
    return Status::Error(EINVAL, "invalid size " + Quote(text) +
                                     ": expected a number like 4096 or 64M (suffixes K, M, G, T)");
  }
  std::string suffix;
  for (; i < s.size(); ++i)
    suffix += static_cast<char>(std::toupper(static_cast<unsigned char>(s[i])));
  unsigned shift = 0;
  if (suffix.empty() || suffix == "B") {
    shift = 0;
  } else {
    static const char kUnits[] = "KMGTP";
    const char* p = std::strchr(kUnits, suffix[0]);
    std::string rest = suffix.substr(1);
    if (p == nullptr || !(rest.empty() || rest == "B" || rest == "IB")) {
      return Status::Error(EINVAL, "invalid size " + Quote(text) +
                                       ": unknown suffix (use K, M, G or T, powers of 1024)");
    }
    shift = 10u * static_cast<unsigned>(p - kUnits + 1);
  }
  if (shift == 0 && frac_num != 0) {
    return Status::Error(EINVAL, "invalid size " + Quote(text) + ": fractional bytes");
  }
  if (shift > 0 && whole > (std::numeric_limits<uint64_t>::max() >> shift)) {
    return Status::Error(ERANGE, "size " + Quote(text) + " is too large");
  }
  uint64_t value = whole << shift;
  if (frac_num != 0) {
    // frac_num / frac_den * 2^shift, exact enough for sizes (frac_den <= 1e9, shift <= 50).
    unsigned __int128 extra = (static_cast<unsigned __int128>(frac_num) << shift) / frac_den;
    if (extra > std::numeric_limits<uint64_t>::max() - value) {
      return Status::Error(ERANGE, "size " + Quote(text) + " is too large");
    }
    value += static_cast<uint64_t>(extra);
  }
  return value;
}

std::string FormatSize(uint64_t bytes) {
  static const char kUnits[] = "KMGTP";
  if (bytes < 1024) return std::to_string(bytes);
  int unit = -1;
  double value = static_cast<double>(bytes);
  while (value >= 1024.0 && unit < 4) {
    value /= 1024.0;
    ++unit;
  }
  char buf[32];
  uint64_t scale = 1ull << (10 * (unit + 1));
  if (bytes % scale == 0) {
    std::snprintf(buf, sizeof(buf), "%llu%c", static_cast<unsigned long long>(bytes / scale),
                  kUnits[unit]);
  } else {
    std::snprintf(buf, sizeof(buf), "%.1f%c", value, kUnits[unit]);
  }
  return buf;
}

Result<ByteExtent> ParseRange(std::string_view text) {
  size_t colon = text.find(':');
  if (colon == std::string_view::npos) {
    return Status::Error(EINVAL, "invalid range " + Quote(text) + ": expected OFFSET:LENGTH");
  }
  auto offset = ParseSize(text.substr(0, colon));
  if (!offset.ok()) {
    return Status::Error(EINVAL, "invalid range " + Quote(text) + ": bad offset");
  }
  auto length = ParseSize(text.substr(colon + 1));
  if (!length.ok()) {
    return Status::Error(EINVAL, "invalid range " + Quote(text) + ": bad length");
  }
  if (*length == 0) {
    return Status::Error(EINVAL, "invalid range " + Quote(text) + ": length must be > 0");
  }
  if (*offset > std::numeric_limits<uint64_t>::max() - *length) {
    return Status::Error(ERANGE, "invalid range " + Quote(text) + ": end overflows");
  }
  return ByteExtent{*offset, *length};
}

int JsonDepth(std::string_view text) {
  int depth = 0, max_depth = 0;
  bool in_string = false, escape = false;
  for (char c : text) {
    if (in_string) {
      if (escape) {
        escape = false;
      } else if (c == '\\') {
        escape = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      max_depth = std::max(max_depth, ++depth);
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return max_depth;
}

nlohmann::json ErrorObject(const Status& status) {
  int errnum = status.ok() ? 0 : status.errnum();
  std::string message(status.message());
  if (message.empty()) message = std::strerror(errnum);
  return {{"errno", errnum}, {"message", message}};
}

Status StatusFromErrorObject(const nlohmann::json& error) {
  if (!error.is_object() || !error.contains("errno") || !error["errno"].is_number_integer()) {
    return Status::Error(EPROTO, "malformed error object from blksnapd");
  }
  int errnum = error["errno"].get<int>();
  if (errnum <= 0) errnum = EIO;
  std::string message = "unknown error";
  if (error.contains("message") && error["message"].is_string()) {
    message = error["message"].get<std::string>();
  }
  return Status::Error(errnum, message);
}

Result<std::string> GetString(const nlohmann::json& params, const char* key) {
  if (!params.is_object() || !params.contains(key)) {
    return Status::Error(EINVAL, std::string("missing parameter '") + key + "'");
  }
  const auto& v = params[key];
  if (!v.is_string()) {
    return Status::Error(EINVAL, std::string("parameter '") + key + "' must be a string");
  }
  return v.get<std::string>();
}

Result<uint64_t> GetUint(const nlohmann::json& params, const char* key) {
  if (!params.is_object() || !params.contains(key)) {
    return Status::Error(EINVAL, std::string("missing parameter '") + key + "'");
  }
  const auto& v = params[key];
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer() && v.get<int64_t>() >= 0)
    return static_cast<uint64_t>(v.get<int64_t>());
  if (v.is_string()) {
    auto size = ParseSize(v.get<std::string>());
    if (size.ok()) return *size;
    return Status::Error(
        EINVAL, std::string("parameter '") + key + "': " + std::string(size.status().message()));
  }
  return Status::Error(EINVAL,
                       std::string("parameter '") + key + "' must be a non-negative integer");
}

std::optional<std::string> GetOptionalString(const nlohmann::json& params, const char* key) {
  if (!params.is_object() || !params.contains(key) || !params[key].is_string()) return std::nullopt;
  return params[key].get<std::string>();
}

bool GetBool(const nlohmann::json& params, const char* key, bool fallback) {
  if (!params.is_object() || !params.contains(key) || !params[key].is_boolean()) return fallback;
  return params[key].get<bool>();
}

namespace {
constexpr char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
}

std::string Base64Encode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    uint32_t v = (uint32_t(uint8_t(bytes[i])) << 16) | (uint32_t(uint8_t(bytes[i + 1])) << 8) |
                 uint8_t(bytes[i + 2]);
    out += kB64[(v >> 18) & 63];
    out += kB64[(v >> 12) & 63];
    out += kB64[(v >> 6) & 63];
    out += kB64[v & 63];
  }
  size_t rest = bytes.size() - i;
  if (rest > 0) {
    uint32_t v = uint32_t(uint8_t(bytes[i])) << 16;
    if (rest == 2) v |= uint32_t(uint8_t(bytes[i + 1])) << 8;
    out += kB64[(v >> 18) & 63];
    out += kB64[(v >> 12) & 63];
    out += rest == 2 ? kB64[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

Result<std::string> Base64Decode(std::string_view text) {
  if (text.size() % 4 != 0) return Status::Error(EINVAL, "base64: length not a multiple of 4");
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  std::string out;
  out.reserve(text.size() / 4 * 3);
  for (size_t i = 0; i < text.size(); i += 4) {
    int pad = 0;
    uint32_t v = 0;
    for (size_t j = 0; j < 4; ++j) {
      char c = text[i + j];
      if (c == '=' && i + 4 == text.size() && j >= 2) {
        ++pad;
        v <<= 6;
        continue;
      }
      int d = value(c);
      if (d < 0 || pad > 0) return Status::Error(EINVAL, "base64: invalid character");
      v = (v << 6) | static_cast<uint32_t>(d);
    }
    out += static_cast<char>((v >> 16) & 0xff);
    if (pad < 2) out += static_cast<char>((v >> 8) & 0xff);
    if (pad < 1) out += static_cast<char>(v & 0xff);
  }
  return out;
}

}  // namespace blksnap::control
