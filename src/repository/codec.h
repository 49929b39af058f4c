// The repository's keys, chunk naming and sealing (layer 1; docs/repository-format.md sections
// 2-3, constants in repository_format.h).
//
// The config object (JSON, checked by a SHA-256 "checksum" field) names the repository, its chunk
// size and zstd level, and when encrypted carries the 64-byte master key wrapped with AES-256-GCM
// under a key derived from the key file's bytes (PBKDF2-HMAC-SHA256, random salt). The key file is
// any bytes (32 random bytes, or a passphrase): only its derived key matters, and the GCM tag of
// the wrapped master key tells a wrong key from the right one.
//
// A Codec names chunks (SHA-256, or HMAC-SHA-256 under the id key when encrypted, so names reveal
// nothing) and seals blobs: zstd (kept raw when not smaller, or when a probe of 64 KiB of slices
// finds the input incompressible: codec.cc), then AES-256-GCM with a random 96-bit nonce when
// encrypted, or a CRC-32C trailer when not. Unseal checks everything and gives EBADMSG on any
// damage. A Codec is immutable after Open: every method is const and thread-safe.
// All crypto is OpenSSL libcrypto, all compression libzstd.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "blksnap/status.h"
#include "repository/chunk_frame.h"
#include "repository/digest.h"
#include "repository/repository_format.h"

namespace blksnap::repo {

struct RepoConfig {
  uint32_t version = kConfigVersion;
  std::string id;                           // uuid string
  uint64_t chunk_size = kDefaultChunkSize;  // power of two, kMinChunkSize .. kMaxChunkSize
  int zstd_level = kDefaultZstdLevel;       // kMinZstdLevel .. kMaxZstdLevel; 0: not compressed
  // Version 2 (kConfigVersionSegmented): chunks are segmented (chunk_table.h), segments of this
  // size; version 1: 0, a chunk is one blob named by the hash of its bytes.
  uint32_t segment_size = 0;
  bool encrypted = false;
  // When encrypted: the KDF parameters and the wrapped master key (unused otherwise).
  uint32_t kdf_iterations = 0;
  std::array<uint8_t, kKdfSaltSize> kdf_salt{};
  std::array<uint8_t, kGcmNonceSize> key_nonce{};
  std::array<uint8_t, kWrappedKeySize> wrapped_key{};  // ciphertext, then the GCM tag
};

struct NewRepoOptions {
  uint64_t chunk_size = kDefaultChunkSize;
  int zstd_level = kDefaultZstdLevel;
  uint32_t kdf_iterations = kDefaultKdfIterations;  // tests use kMinKdfIterations
  // Segmented chunks (config version 2) with segments of this size; 0: version 1.
  uint32_t segment_size = kDefaultSegmentSize;
};

// A new repository's config: a random id and, when `key` is given, a random master key wrapped
// under it (encrypted). EINVAL for options out of range or an empty key.
Result<RepoConfig> NewRepoConfig(const NewRepoOptions& options,
                                 std::optional<std::span<const uint8_t>> key);
// The config object's bytes (JSON with a "checksum" field). EINVAL if a field is out of range.
// EPROTO for another version; EINVAL (one line) for a field out of its range.
Status ValidateRepoConfig(const RepoConfig& config);
Result<std::string> EncodeConfig(const RepoConfig& config);
// Never throws; EBADMSG for damaged or malformed bytes (bad JSON, a missing or mistyped field, a
// checksum mismatch), EPROTO for a well-formed config of another format version, EINVAL for a
// field out of range.
Result<RepoConfig> ParseConfig(std::string_view text);

// Reads a key file: its bytes, 1 .. kMaxKeyFileSize of them (EINVAL otherwise).
Result<std::vector<uint8_t>> ReadKeyFile(const std::string& path);

class Codec {
 public:
  // A wrong key: EACCES "wrong key for repository <id>"; no key for an encrypted repository:
  // EACCES; a key for a plain repository: EINVAL.
  static Result<Codec> Open(const RepoConfig& config, std::optional<std::span<const uint8_t>> key);

  Codec(const Codec& other) = default;
  Codec& operator=(const Codec& other) = default;
  ~Codec();

  const RepoConfig& config() const { return config_; }
  bool encrypted() const { return config_.encrypted; }

  bool segmented() const { return config_.segment_size != 0; }
  // The id of a chunk or index with these bytes. Version 1: SHA-256 of `plain`, or HMAC-SHA-256
  // under the id key when encrypted. Segmented (version 2): SegmentedId of its segment digests.
  Digest ChunkId(std::span<const uint8_t> plain) const;
  // The id of a segmented chunk of `length` bytes whose segments have these SHA-256 digests:
  // SHA-256 (HMAC-SHA-256 when encrypted) of kSegmentedIdTag, the length (u64 LE), the segment
  // size (u32 LE) and the digests.
  Digest SegmentedId(uint64_t length, std::span<const Digest> digests) const;
  // The blob of `plain` (at most kMaxPlainLength bytes, else EINVAL): header, then the payload
  // compressed unless that is not smaller or the probe finds it incompressible, sealed with GCM
  // (AAD = header + `aad`) when encrypted, else followed by a CRC-32C of header + `aad` +
  // payload.
  Result<std::vector<uint8_t>> Seal(std::span<const uint8_t> plain,
                                    std::span<const uint8_t> aad) const;
  // Seal into `buffer`, a caller's buffer reused from call to call (grown when too small, never
  // shrunk: a worker sealing chunk after chunk allocates and faults its pages in once): the
  // blob, a prefix of *buffer, valid until the buffer is next used. Errors as Seal.
  Result<std::span<const uint8_t>> SealInto(std::span<const uint8_t> plain,
                                            std::span<const uint8_t> aad,
                                            std::vector<uint8_t>* buffer) const;
  // SealInto for the first `length` bytes of frame.plain() (a backup worker's chunk buffer): a
  // blob whose payload stays raw in a plain repository is built around those bytes in the frame
  // (header before them, CRC-32C after: no copy of the chunk); any other blob goes into *buffer
  // as with SealInto. The chunk's bytes are never modified. Errors as Seal.
  Result<std::span<const uint8_t>> SealFramed(ChunkFrame& frame, size_t length,
                                              std::span<const uint8_t> aad,
                                              std::vector<uint8_t>* buffer) const;
  // The plain bytes of a blob sealed with the same `aad`; EBADMSG "<what is wrong>" on any damage
  // (never allocates more than the blob's size plus its checked plain length). A plain blob in an
  // encrypted repository is damage too (it would be unauthenticated).
  Result<std::vector<uint8_t>> Unseal(std::span<const uint8_t> blob,
                                      std::span<const uint8_t> aad) const;
  // Unseal into `out` (a caller's reused buffer): the plain length; EBADMSG as Unseal, also when
  // the plain length is over out.size(). Bytes of `out` past the plain length are left alone.
  // `out` may start exactly at the blob's payload (blob.data() + PayloadOffset(): the blob was
  // read around it, UnsealFramed), and the blob's bytes are then overwritten; any other overlap
  // of `out` and `blob` is not allowed.
  Result<size_t> UnsealInto(std::span<const uint8_t> blob, std::span<const uint8_t> aad,
                            std::span<uint8_t> out) const;
  // UnsealInto of the blob of `blob_size` bytes at frame.Around(PayloadOffset()) (read there by
  // a restore worker) into frame.plain(): a raw payload is checked (or decrypted) where it lies.
  Result<size_t> UnsealFramed(ChunkFrame& frame, size_t blob_size,
                              std::span<const uint8_t> aad) const;
  // Where a blob's payload starts: its header, and the nonce when encrypted.
  size_t PayloadOffset() const;

  // The object name of a chunk: "chunks/XX/<64 hex>".
  static std::string ChunkName(const Digest& id);

 private:
  explicit Codec(const RepoConfig& config) : config_(config) {}
  // SHA-256 of `bytes`, or HMAC-SHA-256 under the id key when encrypted.
  Digest KeyedHash(std::span<const uint8_t> bytes) const;

  // SealInto, and SealFramed when `frame` is given (plain = the start of frame->plain()).
  Result<std::span<const uint8_t>> SealImpl(std::span<const uint8_t> plain,
                                            std::span<const uint8_t> aad,
                                            std::vector<uint8_t>* buffer, ChunkFrame* frame) const;

  struct BlobLayout {
    bool encrypted = false, compressed = false;
    uint32_t plain_length = 0, payload_length = 0;
    size_t offset = 0;  // of the payload
  };
  // The header's checks (magic, version, flags, lengths, the exact size): EBADMSG on damage.
  Result<BlobLayout> CheckBlob(std::span<const uint8_t> blob) const;

  RepoConfig config_;
  std::array<uint8_t, kCipherKeySize> cipher_key_{};
  std::array<uint8_t, kMasterKeySize - kCipherKeySize> id_key_{};
};

}  // namespace blksnap::repo
