// The repository's config object: its JSON encoding and parser, the checks of its fields, and
// the key file (see codec.h; the format in docs/repository-format.md section 2). JSON is parsed
// by nlohmann without exceptions (json::parse(text, nullptr, false)); every field's presence and
// type is checked before it is read, then ValidateRepoConfig checks the ranges. The checksum is
// the SHA-256 of the compact dump of the object without its "checksum" member (nlohmann dumps
// members sorted by name, so the dump is canonical). No state. Making a new config (its wrapped
// master key) is in codec.cc, beside the cipher.
#include <fcntl.h>
#include <openssl/crypto.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "blksnap/uuid.h"
#include "repository/codec.h"
#include "util/fd.h"

namespace blksnap::repo {
namespace {

using json = nlohmann::json;

Status BadConfig(std::string_view why) {
  return Status::Error(EBADMSG, "repository config: " + std::string(why));
}

// Reads an integer member into `out` if it is present, an integer and within [lo, hi].
template <typename T>
Status GetInt(const json& j, const char* key, int64_t lo, int64_t hi, T& out) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number_integer()) {
    return BadConfig(std::string("\"") + key + "\" is missing or not an integer");
  }
  if (it->is_number_unsigned() ? it->get<uint64_t>() > static_cast<uint64_t>(hi)
                               : (it->get<int64_t>() < lo || it->get<int64_t>() > hi)) {
    return Status::Error(EINVAL, std::string("repository config: \"") + key + "\" out of range");
  }
  out = static_cast<T>(it->get<int64_t>());
  return Status::Ok();
}

Status GetString(const json& j, const char* key, std::string& out) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string()) {
    return BadConfig(std::string("\"") + key + "\" is missing or not a string");
  }
  out = it->get<std::string>();
  return Status::Ok();
}

Status GetHex(const json& j, const char* key, std::span<uint8_t> out) {
  std::string hex;
  BLKSNAP_RETURN_IF_ERROR(GetString(j, key, hex));
  if (!FromHex(hex, out)) {
    return BadConfig(std::string("\"") + key + "\" is not " + std::to_string(out.size() * 2) +
                     " lowercase hex characters");
  }
  return Status::Ok();
}

Status ParseEncryption(const json& e, RepoConfig& c) {
  if (!e.is_object()) return BadConfig("\"encryption\" is not an object or null");
  std::string cipher, kdf;
  BLKSNAP_RETURN_IF_ERROR(GetString(e, "cipher", cipher));
  BLKSNAP_RETURN_IF_ERROR(GetString(e, "kdf", kdf));
  if (cipher != kCipherName || kdf != kKdfName) {
    return Status::Error(
        EPROTO, "repository config: cipher " + cipher + " with kdf " + kdf + " is not supported");
  }
  BLKSNAP_RETURN_IF_ERROR(
      GetInt(e, "kdf_iterations", kMinKdfIterations, kMaxKdfIterations, c.kdf_iterations));
  BLKSNAP_RETURN_IF_ERROR(GetHex(e, "kdf_salt", c.kdf_salt));
  BLKSNAP_RETURN_IF_ERROR(GetHex(e, "key_nonce", c.key_nonce));
  BLKSNAP_RETURN_IF_ERROR(GetHex(e, "wrapped_key", c.wrapped_key));
  c.encrypted = true;
  return Status::Ok();
}

}  // namespace

Status ValidateRepoConfig(const RepoConfig& c) {
  if (c.version != kConfigVersion && c.version != kConfigVersionSegmented) {
    return Status::Error(EPROTO, "repository config version " + std::to_string(c.version) +
                                     " is not supported (this blksnap reads versions 1 and 2)");
  }
  if (!Uuid::Parse(c.id)) return Status::Error(EINVAL, "repository config: id is not a uuid");
  if (c.chunk_size < kMinChunkSize || c.chunk_size > kMaxChunkSize ||
      (c.chunk_size & (c.chunk_size - 1)) != 0) {
    return Status::Error(EINVAL, "repository config: chunk size " + std::to_string(c.chunk_size) +
                                     " is not a power of two from 64 KiB to 64 MiB");
  }
  if (c.zstd_level < kMinZstdLevel || c.zstd_level > kMaxZstdLevel) {
    return Status::Error(EINVAL, "repository config: zstd level " + std::to_string(c.zstd_level) +
                                     " is not in -7..22");
  }
  if (c.version == kConfigVersion && c.segment_size != 0) {
    return Status::Error(EINVAL, "repository config: a version 1 repository has no segments");
  }
  const uint32_t s = c.segment_size;
  if (c.version == kConfigVersionSegmented &&
      (s < kMinSegmentSize || (s & (s - 1)) != 0 || s > c.chunk_size ||
       c.chunk_size / s > kMaxSegmentsPerChunk)) {
    return Status::Error(EINVAL, "repository config: segment size " + std::to_string(s) +
                                     " is not a power of two from 4 KiB to the chunk size, with "
                                     "at most 1024 segments per chunk");
  }
  if (c.encrypted &&
      (c.kdf_iterations < kMinKdfIterations || c.kdf_iterations > kMaxKdfIterations)) {
    return Status::Error(EINVAL, "repository config: kdf iterations " +
                                     std::to_string(c.kdf_iterations) + " not in 1000..10000000");
  }
  return Status::Ok();
}

Result<std::string> EncodeConfig(const RepoConfig& c) {
  BLKSNAP_RETURN_IF_ERROR(ValidateRepoConfig(c));
  json j = {{"format", kConfigFormat},    {"version", c.version},       {"id", c.id},
            {"chunk_size", c.chunk_size}, {"zstd_level", c.zstd_level}, {"encryption", nullptr}};
  if (c.version == kConfigVersionSegmented) j["segment_size"] = c.segment_size;
  if (c.encrypted) {
    j["encryption"] = {{"cipher", kCipherName},
                       {"kdf", kKdfName},
                       {"kdf_iterations", c.kdf_iterations},
                       {"kdf_salt", ToHex(c.kdf_salt)},
                       {"key_nonce", ToHex(c.key_nonce)},
                       {"wrapped_key", ToHex(c.wrapped_key)}};
  }
  j["checksum"] = Sha256(j.dump()).Hex();
  return j.dump(2) + "\n";
}

Result<RepoConfig> ParseConfig(std::string_view text) {
  if (text.size() > kMaxConfigSize) return BadConfig("larger than 64 KiB");
  // The config nests two levels; deeper input is dropped as it is parsed (the parser itself is
  // not recursive, but dump() and the destructor are).
  bool too_deep = false;
  const json::parser_callback_t limit_depth = [&too_deep](int depth, json::parse_event_t, json&) {
    if (depth > kMaxConfigDepth) too_deep = true;
    return depth <= kMaxConfigDepth;
  };
  json j = json::parse(text, limit_depth, false);
  if (too_deep) return BadConfig("nested too deeply");
  if (j.is_discarded() || !j.is_object()) return BadConfig("not a JSON object");
  std::string checksum;
  BLKSNAP_RETURN_IF_ERROR(GetString(j, "checksum", checksum));
  j.erase("checksum");
  if (Sha256(j.dump(-1, ' ', false, json::error_handler_t::replace)).Hex() != checksum) {
    return BadConfig("checksum mismatch (the config object is damaged)");
  }
  std::string format;
  BLKSNAP_RETURN_IF_ERROR(GetString(j, "format", format));
  if (format != kConfigFormat) return BadConfig("format is not \"blksnap-repository\"");
  RepoConfig c;
  BLKSNAP_RETURN_IF_ERROR(GetInt(j, "version", 0, UINT32_MAX, c.version));
  if (c.version != kConfigVersion && c.version != kConfigVersionSegmented)
    return ValidateRepoConfig(c);  // EPROTO: the other fields may differ
  if (c.version == kConfigVersionSegmented) {
    BLKSNAP_RETURN_IF_ERROR(GetInt(j, "segment_size", 0, kMaxChunkSize, c.segment_size));
  }
  BLKSNAP_RETURN_IF_ERROR(GetString(j, "id", c.id));
  BLKSNAP_RETURN_IF_ERROR(GetInt(j, "chunk_size", 0, kMaxChunkSize, c.chunk_size));
  BLKSNAP_RETURN_IF_ERROR(GetInt(j, "zstd_level", kMinZstdLevel, kMaxZstdLevel, c.zstd_level));
  auto e = j.find("encryption");
  if (e == j.end()) return BadConfig("\"encryption\" is missing");
  if (!e->is_null()) BLKSNAP_RETURN_IF_ERROR(ParseEncryption(*e, c));
  BLKSNAP_RETURN_IF_ERROR(ValidateRepoConfig(c));
  return c;
}

Result<std::vector<uint8_t>> ReadKeyFile(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return Status::FromErrno("open key file " + path);
  std::vector<uint8_t> key(kMaxKeyFileSize + 1);
  size_t done = 0;
  while (done < key.size()) {
    const ssize_t n = ::read(fd.get(), key.data() + done, key.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::FromErrno("read key file " + path);
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  if (done == 0 || done > kMaxKeyFileSize) {
    OPENSSL_cleanse(key.data(), key.size());
    return Status::Error(EINVAL, "key file " + path + ": 1 byte to 1 MiB wanted");
  }
  key.resize(done);
  return key;
}

}  // namespace blksnap::repo
