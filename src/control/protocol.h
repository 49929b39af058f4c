// The blksnapd control protocol: constants and helpers shared by the daemon and the client.
//
// Wire format (docs/control-protocol.md): newline-delimited JSON over a Unix stream socket.
// A request is one line {"v": 1, "id": N, "method": "...", "params": {...}}; the answer is one
// line {"v": 1, "id": N, "result": {...}} or {"v": 1, "id": N, "error": {"errno": E,
// "message": "..."}}. Requests longer than kMaxRequestBytes are answered with EMSGSIZE and the
// connection is closed.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "blksnap/cbt.h"
#include "blksnap/status.h"

namespace blksnap::control {

inline constexpr int kProtocolVersion = 1;
inline constexpr size_t kMaxRequestBytes = 1u << 20;     // one request line, newline excluded
inline constexpr size_t kMaxResponseBytes = 256u << 20;  // what the client accepts
inline constexpr int kMaxJsonDepth = 32;
// cbt-read returns at most this many map bytes per call (base64 keeps answers well below 1 MiB).
inline constexpr uint64_t kMaxCbtReadBytes = 512u << 10;
// cbt-mark-dirty accepts at most this many ranges per call.
inline constexpr size_t kMaxRangesPerRequest = 16384;

inline constexpr const char* kDefaultControlPath = "/run/blksnap/control.sock";

// "4096", "64K", "1.5G" style sizes: a non-negative integer, optionally followed by one of
// K, M, G, T (powers of 1024; "KiB"/"KB" spellings accepted). EINVAL with a clear message for
// anything else, ERANGE on overflow.
Result<uint64_t> ParseSize(std::string_view text);
// 1536 -> "1.5K", 1073741824 -> "1G", 100 -> "100".
std::string FormatSize(uint64_t bytes);
// "OFFSET:LENGTH", both sizes; LENGTH must be > 0.
Result<ByteExtent> ParseRange(std::string_view text);

// Nesting depth of a JSON text (brackets outside strings), to refuse hostile nesting before
// handing the text to the recursive-descent parser.
int JsonDepth(std::string_view text);

// {"errno": E, "message": "..."} for a non-OK status.
nlohmann::json ErrorObject(const Status& status);
// The Status an error object describes (EPROTO if it is malformed).
Status StatusFromErrorObject(const nlohmann::json& error);

// Parameter access with protocol errors (EINVAL naming the parameter).
Result<std::string> GetString(const nlohmann::json& params, const char* key);
Result<uint64_t> GetUint(const nlohmann::json& params, const char* key);
std::optional<std::string> GetOptionalString(const nlohmann::json& params, const char* key);
bool GetBool(const nlohmann::json& params, const char* key, bool fallback = false);

// Base64 (RFC 4648, with padding), for the cbt map.
std::string Base64Encode(std::string_view bytes);
Result<std::string> Base64Decode(std::string_view text);

}  // namespace blksnap::control
