// Codec, and a new repository's config with its wrapped master key (see codec.h; formats in
// docs/repository-format.md sections 2-3; the config's encoding and parser are in
// repo_config.cc).
//
// Blob: SealInto writes the header, compresses straight into the blob (kept raw when zstd is not
// smaller, or when the probe below finds the input incompressible), then encrypts the payload
// (AES-256-GCM: a zstd frame in place, raw bytes straight from the caller's, with no copy) or
// appends a CRC-32C. It writes into a caller's buffer that only grows (a backup worker keeps
// one, so a 4 MiB chunk costs no fresh zero-filled allocation and no page faults; every header
// byte is written, none is left from the buffer's last use); Seal is SealInto into a new vector,
// trimmed to the blob. Unseal (and UnsealInto, which decodes into a caller's buffer: restores
// reuse one per worker) checks the header, the exact blob size, the encryption flag against the
// repository, then the tag or the CRC before it decompresses (an encrypted raw payload is
// decrypted straight into the caller's buffer), and decompresses only a single zstd frame whose
// declared content size is the header's plain length: a damaged blob never makes it allocate
// more than kMaxPlainLength. SealFramed and UnsealFramed work on a ChunkFrame (chunk_frame.h): a
// plain repository's raw payload is the chunk's bytes where they lie in the frame (header
// written before them, CRC after; read so, the CRC is checked there), an encrypted raw payload is
// decrypted in place; a compressed payload read around the chunk's bytes is moved to the
// thread's scratch buffer first (zstd does not decompress onto its input). Nonces are 96 random
// bits from RAND_bytes (2^32 blobs per key keep the collision probability negligible).
//
// The compressibility probe: zstd over 4 MiB of random or already compressed bytes costs ~2 ms of
// CPU, and its output is then thrown away. So before compressing an input of 512 KiB or more
// (kProbeMinPlain), SealInto compresses 16 slices of 4 KiB spread evenly from its start to its
// end (64 KiB, 1/64 of a 4 MiB chunk), each alone at zstd level 1, and stores the input raw,
// without compressing it, when together they do not shrink at all. Smaller inputs (manifests,
// indexes of small devices, chunks of a small chunk size) are compressed without a probe. The
// choice never affects correctness: the blob's flags say raw or compressed and Unseal reads
// both. What it can cost: a chunk whose only redundancy lies between the slices (a zero run of a
// few hundred KiB amid random bytes, random blocks repeated within the chunk) is stored raw
// where zstd would have shrunk it.
//
// State: a Codec holds its config and the two halves of the master key (wiped with
// OPENSSL_cleanse on destruction); no mutable state. zstd contexts (and UnsealInto's buffer for
// decrypted compressed payloads) are thread_local, so concurrent Seal/Unseal calls on one Codec
// are safe.
#include "repository/codec.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <zstd.h>

#include <cstring>
#include <memory>

#include "blksnap/uuid.h"
#include "repository/chunk_table.h"
#include "util/crc32c.h"
#include "util/little_endian.h"
#include "util/prefault.h"

namespace blksnap::repo {
namespace {

Status BadBlob(std::string_view why) { return Status::Error(EBADMSG, "blob: " + std::string(why)); }
struct CipherCtxFree {
  void operator()(EVP_CIPHER_CTX* ctx) const { EVP_CIPHER_CTX_free(ctx); }
};

// AES-256-GCM of `in` into `out` (in.size() bytes: in.data() itself, or not overlapping it),
// authenticating aad1 + aad2; encrypt writes `tag`, decrypt checks it. False on a tag mismatch
// (or an OpenSSL failure).
bool Gcm(bool encrypt, std::span<const uint8_t> key, std::span<const uint8_t> nonce,
         std::span<const uint8_t> aad1, std::span<const uint8_t> aad2, std::span<const uint8_t> in,
         uint8_t* out, uint8_t* tag) {
  std::unique_ptr<EVP_CIPHER_CTX, CipherCtxFree> ctx(EVP_CIPHER_CTX_new());
  if (!ctx || nonce.size() != kGcmNonceSize || key.size() != kCipherKeySize) return false;
  if (EVP_CipherInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, key.data(), nonce.data(),
                        encrypt ? 1 : 0) != 1) {
    return false;
  }
  int length = 0;
  for (std::span<const uint8_t> aad : {aad1, aad2}) {
    if (!aad.empty() && EVP_CipherUpdate(ctx.get(), nullptr, &length, aad.data(),
                                         static_cast<int>(aad.size())) != 1) {
      return false;
    }
  }
  if (!in.empty() &&
      EVP_CipherUpdate(ctx.get(), out, &length, in.data(), static_cast<int>(in.size())) != 1) {
    return false;
  }
  if (!encrypt && EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, kGcmTagSize, tag) != 1) {
    return false;
  }
  uint8_t final_block[16];
  if (EVP_CipherFinal_ex(ctx.get(), final_block, &length) != 1) return false;
  if (encrypt && EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, kGcmTagSize, tag) != 1) {
    return false;
  }
  return true;
}

// The key-encryption key: PBKDF2-HMAC-SHA256 of the key file's bytes.
bool DeriveKek(std::span<const uint8_t> key, const RepoConfig& config,
               std::array<uint8_t, kCipherKeySize>& kek) {
  return PKCS5_PBKDF2_HMAC(reinterpret_cast<const char*>(key.data()), static_cast<int>(key.size()),
                           config.kdf_salt.data(), config.kdf_salt.size(),
                           static_cast<int>(config.kdf_iterations), EVP_sha256(), kek.size(),
                           kek.data()) == 1;
}

std::string WrapAad(const RepoConfig& config) { return std::string(kKeyWrapAadPrefix) + config.id; }
std::span<const uint8_t> Bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

struct CCtxFree {
  void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
};
struct DCtxFree {
  void operator()(ZSTD_DCtx* d) const { ZSTD_freeDCtx(d); }
};
ZSTD_CCtx* ThreadCCtx() {
  thread_local std::unique_ptr<ZSTD_CCtx, CCtxFree> ctx(ZSTD_createCCtx());
  return ctx.get();
}
// The compressibility probe (see the design note): kProbeSlices slices of kProbeSliceSize
// bytes, spread evenly from the first byte to the last, each compressed alone at kProbeLevel.
constexpr size_t kProbeMinPlain = 512 << 10;  // smaller inputs are compressed without a probe
constexpr size_t kProbeSlices = 16;
constexpr size_t kProbeSliceSize = 4 << 10;
constexpr int kProbeLevel = 1;

ZSTD_CCtx* ThreadProbeCCtx() {
  thread_local std::unique_ptr<ZSTD_CCtx, CCtxFree> ctx(ZSTD_createCCtx());
  return ctx.get();
}

// True when the probe finds `plain` not worth compressing; false when it is worth it and on any
// doubt (too small to probe, no zstd context, a zstd error): then the whole is compressed.
bool ProbeSaysIncompressible(std::span<const uint8_t> plain) {
  if (plain.size() < kProbeMinPlain) return false;
  ZSTD_CCtx* cctx = ThreadProbeCCtx();
  if (cctx == nullptr) return false;
  thread_local std::array<uint8_t, ZSTD_COMPRESSBOUND(kProbeSliceSize)> out;
  const size_t stride = (plain.size() - kProbeSliceSize) / (kProbeSlices - 1);
  size_t compressed = 0;
  for (size_t i = 0; i < kProbeSlices; ++i) {
    const size_t n = ZSTD_compressCCtx(cctx, out.data(), out.size(), plain.data() + i * stride,
                                       kProbeSliceSize, kProbeLevel);
    if (ZSTD_isError(n)) return false;
    compressed += n;
  }
  // Each slice's frame adds ~9 bytes of headers, so a slice must save more than that to count.
  return compressed >= kProbeSlices * kProbeSliceSize;
}

ZSTD_DCtx* ThreadDCtx() {
  thread_local std::unique_ptr<ZSTD_DCtx, DCtxFree> ctx(ZSTD_createDCtx());
  return ctx.get();
}

// This thread's scratch buffer, `size` bytes of it (it only grows): a compressed payload's clear
// or moved bytes on their way to zstd.
std::span<uint8_t> ThreadScratch(size_t size) {
  thread_local std::vector<uint8_t> scratch;
  if (scratch.size() < size) ResizePrefaulted(scratch, size);
  return {scratch.data(), size};
}

bool Overlap(std::span<const uint8_t> a, std::span<const uint8_t> b) {
  const auto a0 = reinterpret_cast<uintptr_t>(a.data()), b0 = reinterpret_cast<uintptr_t>(b.data());
  return a0 < b0 + b.size() && b0 < a0 + a.size();
}

}  // namespace

// ---- Config

Result<RepoConfig> NewRepoConfig(const NewRepoOptions& options,
                                 std::optional<std::span<const uint8_t>> key) {
  RepoConfig c;
  c.id = Uuid::Random().ToString();
  c.chunk_size = options.chunk_size;
  c.zstd_level = options.zstd_level;
  c.segment_size = options.segment_size;
  c.version = options.segment_size != 0 ? kConfigVersionSegmented : kConfigVersion;
  if (key) {
    if (key->empty() || key->size() > kMaxKeyFileSize) {
      return Status::Error(EINVAL, "key: 1 byte to 1 MiB wanted");
    }
    c.encrypted = true;
    c.kdf_iterations = options.kdf_iterations;
  }
  BLKSNAP_RETURN_IF_ERROR(ValidateRepoConfig(c));
  if (!key) return c;
  std::array<uint8_t, kMasterKeySize> master{};
  std::array<uint8_t, kCipherKeySize> kek{};
  bool ok = RAND_bytes(c.kdf_salt.data(), c.kdf_salt.size()) == 1 &&
            RAND_bytes(c.key_nonce.data(), c.key_nonce.size()) == 1 &&
            RAND_bytes(master.data(), master.size()) == 1 && DeriveKek(*key, c, kek);
  if (ok) {
    ok = Gcm(true, kek, c.key_nonce, Bytes(WrapAad(c)), {}, master, c.wrapped_key.data(),
             c.wrapped_key.data() + kMasterKeySize);
  }
  OPENSSL_cleanse(master.data(), master.size());
  OPENSSL_cleanse(kek.data(), kek.size());
  if (!ok) return Status::Error(EIO, "repository key: OpenSSL failed to make the master key");
  return c;
}

// ---- Codec

Result<Codec> Codec::Open(const RepoConfig& config, std::optional<std::span<const uint8_t>> key) {
  BLKSNAP_RETURN_IF_ERROR(ValidateRepoConfig(config));
  Codec codec(config);
  if (!config.encrypted) {
    if (key) {
      return Status::Error(EINVAL, "repository " + config.id + " is not encrypted: no key wanted");
    }
    return codec;
  }
  if (!key) {
    return Status::Error(EACCES, "repository " + config.id + " is encrypted: a key file is needed");
  }
  if (key->empty()) return Status::Error(EINVAL, "key: empty");
  std::array<uint8_t, kCipherKeySize> kek{};
  std::array<uint8_t, kWrappedKeySize> master = config.wrapped_key;
  if (!DeriveKek(*key, config, kek)) return Status::Error(EIO, "repository key: PBKDF2 failed");
  const bool ok =
      Gcm(false, kek, config.key_nonce, Bytes(WrapAad(config)), {},
          std::span(master.data(), kMasterKeySize), master.data(), master.data() + kMasterKeySize);
  OPENSSL_cleanse(kek.data(), kek.size());
  if (ok) {
    std::memcpy(codec.cipher_key_.data(), master.data(), kCipherKeySize);
    std::memcpy(codec.id_key_.data(), master.data() + kCipherKeySize, codec.id_key_.size());
  }
  OPENSSL_cleanse(master.data(), master.size());
  if (!ok) return Status::Error(EACCES, "wrong key for repository " + config.id);
  return codec;
}

Codec::~Codec() {
  OPENSSL_cleanse(cipher_key_.data(), cipher_key_.size());
  OPENSSL_cleanse(id_key_.data(), id_key_.size());
}

std::string Codec::ChunkName(const Digest& id) {
  const std::string hex = id.Hex();
  return std::string(kChunksPrefix) + hex.substr(0, 2) + "/" + hex;
}

Digest Codec::ChunkId(std::span<const uint8_t> plain) const {
  if (segmented()) return SegmentedId(plain.size(), SegmentDigests(plain, config_.segment_size));
  return KeyedHash(plain);
}

Digest Codec::SegmentedId(uint64_t length, std::span<const Digest> digests) const {
  std::vector<uint8_t> input(kSegmentedIdTag.size() + 12 + 32 * digests.size());
  std::memcpy(input.data(), kSegmentedIdTag.data(), kSegmentedIdTag.size());
  uint8_t* p = input.data() + kSegmentedIdTag.size();
  PutLe<uint64_t>(p, length);
  PutLe<uint32_t>(p + 8, config_.segment_size);
  for (size_t i = 0; i < digests.size(); ++i) {
    std::memcpy(p + 12 + 32 * i, digests[i].bytes.data(), 32);
  }
  return KeyedHash(input);
}

Digest Codec::KeyedHash(std::span<const uint8_t> bytes) const {
  if (!config_.encrypted) return Sha256(bytes);
  Digest d;
  unsigned int length = 0;
  if (HMAC(EVP_sha256(), id_key_.data(), static_cast<int>(id_key_.size()), bytes.data(),
           bytes.size(), d.bytes.data(), &length) == nullptr) {
    std::abort();  // only fails on allocation failure inside OpenSSL
  }
  return d;
}

Result<std::vector<uint8_t>> Codec::Seal(std::span<const uint8_t> plain,
                                         std::span<const uint8_t> aad) const {
  std::vector<uint8_t> blob;
  BLKSNAP_ASSIGN_OR_RETURN(std::span<const uint8_t> sealed, SealInto(plain, aad, &blob));
  blob.resize(sealed.size());
  return blob;
}

Result<std::span<const uint8_t>> Codec::SealInto(std::span<const uint8_t> plain,
                                                 std::span<const uint8_t> aad,
                                                 std::vector<uint8_t>* buffer) const {
  return SealImpl(plain, aad, buffer, nullptr);
}

Result<std::span<const uint8_t>> Codec::SealFramed(ChunkFrame& frame, size_t length,
                                                   std::span<const uint8_t> aad,
                                                   std::vector<uint8_t>* buffer) const {
  if (length > frame.capacity()) return Status::Error(EINVAL, "seal: longer than the frame");
  return SealImpl(frame.plain().first(length), aad, buffer, &frame);
}

size_t Codec::PayloadOffset() const {
  return kBlobHeaderSize + (config_.encrypted ? kGcmNonceSize : 0);
}

Result<std::span<const uint8_t>> Codec::SealImpl(std::span<const uint8_t> plain,
                                                 std::span<const uint8_t> aad,
                                                 std::vector<uint8_t>* buffer,
                                                 ChunkFrame* frame) const {
  if (plain.size() > kMaxPlainLength) return Status::Error(EINVAL, "seal: larger than 65 MiB");
  const size_t offset = PayloadOffset();
  const size_t trailer = config_.encrypted ? kGcmTagSize : kBlobCrcSize;
  const bool try_compress =
      config_.zstd_level != 0 && !plain.empty() && !ProbeSaysIncompressible(plain);
  // A raw payload of a plain repository is the chunk's bytes where they lie in a frame.
  const bool raw_in_frame = frame != nullptr && !config_.encrypted;
  const size_t room =
      try_compress ? std::max(ZSTD_compressBound(plain.size()), plain.size()) : plain.size();
  uint8_t* blob = nullptr;
  if (try_compress || !raw_in_frame) {
    if (buffer->size() < offset + room + trailer)
      ResizePrefaulted(*buffer, offset + room + trailer);
    blob = buffer->data();
  }
  size_t payload_length = plain.size();
  uint8_t flags = config_.encrypted ? kBlobEncrypted : 0;
  if (try_compress) {
    ZSTD_CCtx* cctx = ThreadCCtx();
    if (cctx == nullptr) return Status::Error(ENOMEM, "seal: no zstd context");
    // The frame carries zstd's content checksum (XXH64 of the plain bytes, 4 bytes), which
    // ZSTD_decompressDCtx checks: an unseal then checks the decoded bytes too, not only the
    // stored ones, without a SHA-256 (Repository::ChunkCheck::kSeal).
    ZSTD_CCtx_reset(cctx, ZSTD_reset_session_and_parameters);
    ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, config_.zstd_level);
    ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1);
    const size_t n = ZSTD_compress2(cctx, blob + offset, room, plain.data(), plain.size());
    if (!ZSTD_isError(n) && n < plain.size()) {
      payload_length = n;
      flags |= kBlobCompressed;
    }
  }
  // A raw payload is the plain bytes: in place in a frame, or copied into the blob, or in an
  // encrypted repository encrypted straight from them into it.
  const bool raw = !(flags & kBlobCompressed);
  if (raw && raw_in_frame) blob = frame->Around(offset).data();
  uint8_t* const payload = blob + offset;
  if (raw && !config_.encrypted && !plain.empty() && payload != plain.data()) {
    std::memcpy(payload, plain.data(), plain.size());
  }
  std::memcpy(blob, kBlobMagic, sizeof(kBlobMagic));
  blob[4] = kBlobVersion;
  blob[5] = flags;
  blob[6] = blob[7] = 0;
  PutLe<uint32_t>(&blob[8], static_cast<uint32_t>(plain.size()));
  PutLe<uint32_t>(&blob[12], static_cast<uint32_t>(payload_length));
  const std::span<const uint8_t> header(blob, kBlobHeaderSize);
  if (config_.encrypted) {
    const std::span<uint8_t> nonce(blob + kBlobHeaderSize, kGcmNonceSize);
    if (RAND_bytes(nonce.data(), nonce.size()) != 1 ||
        !Gcm(true, cipher_key_, nonce, header, aad,
             raw ? plain : std::span<const uint8_t>(payload, payload_length), payload,
             payload + payload_length)) {
      return Status::Error(EIO, "seal: OpenSSL AES-256-GCM failed");
    }
  } else {
    uint32_t crc = Crc32c(header.data(), header.size());
    crc = Crc32c(aad.data(), aad.size(), crc);
    crc = Crc32c(payload, payload_length, crc);
    PutLe<uint32_t>(payload + payload_length, crc);
  }
  return std::span<const uint8_t>(blob, offset + payload_length + trailer);
}

Result<Codec::BlobLayout> Codec::CheckBlob(std::span<const uint8_t> blob) const {
  if (blob.size() < kBlobHeaderSize) return BadBlob("shorter than its header");
  if (std::memcmp(blob.data(), kBlobMagic, sizeof(kBlobMagic)) != 0) return BadBlob("bad magic");
  if (blob[4] != kBlobVersion) return BadBlob("version " + std::to_string(blob[4]) + " unknown");
  const uint8_t flags = blob[5];
  if ((flags & ~(kBlobCompressed | kBlobEncrypted)) != 0 || blob[6] != 0 || blob[7] != 0) {
    return BadBlob("unknown flags");
  }
  BlobLayout layout;
  layout.encrypted = flags & kBlobEncrypted;
  layout.compressed = flags & kBlobCompressed;
  if (layout.encrypted != config_.encrypted) {
    return BadBlob(layout.encrypted ? "encrypted in a plain repository"
                                    : "not encrypted in an encrypted repository");
  }
  layout.plain_length = GetLe<uint32_t>(&blob[8]);
  layout.payload_length = GetLe<uint32_t>(&blob[12]);
  if (layout.plain_length > kMaxPlainLength) return BadBlob("plain length over 65 MiB");
  if (layout.compressed
          ? (layout.payload_length == 0 || layout.payload_length >= layout.plain_length)
          : layout.payload_length != layout.plain_length) {
    return BadBlob("payload length does not match the plain length");
  }
  layout.offset = kBlobHeaderSize + (layout.encrypted ? kGcmNonceSize : 0);
  const size_t trailer = layout.encrypted ? kGcmTagSize : kBlobCrcSize;
  if (blob.size() != uint64_t{layout.offset} + layout.payload_length + trailer) {
    return BadBlob("size " + std::to_string(blob.size()) + " does not match its header");
  }
  return layout;
}

Result<std::vector<uint8_t>> Codec::Unseal(std::span<const uint8_t> blob,
                                           std::span<const uint8_t> aad) const {
  BLKSNAP_ASSIGN_OR_RETURN(BlobLayout layout, CheckBlob(blob));
  std::vector<uint8_t> plain(layout.plain_length);
  BLKSNAP_ASSIGN_OR_RETURN(size_t length, UnsealInto(blob, aad, plain));
  plain.resize(length);  // == plain_length
  return plain;
}

Result<size_t> Codec::UnsealInto(std::span<const uint8_t> blob, std::span<const uint8_t> aad,
                                 std::span<uint8_t> out) const {
  BLKSNAP_ASSIGN_OR_RETURN(BlobLayout layout, CheckBlob(blob));
  const uint32_t plain_length = layout.plain_length;
  const uint32_t payload_length = layout.payload_length;
  const size_t offset = layout.offset;
  if (out.size() < plain_length) {
    return BadBlob("plain length " + std::to_string(plain_length) + " over the " +
                   std::to_string(out.size()) + " bytes expected");
  }
  const std::span<const uint8_t> header = blob.first(kBlobHeaderSize);
  const std::span<const uint8_t> stored = blob.subspan(offset, payload_length);
  std::span<const uint8_t> payload = stored;
  if (layout.encrypted) {
    // Decrypted from the blob straight into `out` when raw, else into this thread's scratch
    // buffer, which then feeds zstd.
    std::span<uint8_t> clear;
    if (layout.compressed) {
      clear = ThreadScratch(payload_length);
    } else {
      clear = out.first(payload_length);
    }
    std::array<uint8_t, kGcmTagSize> tag;
    std::memcpy(tag.data(), blob.data() + offset + payload_length, tag.size());
    if (!Gcm(false, cipher_key_, blob.subspan(kBlobHeaderSize, kGcmNonceSize), header, aad, stored,
             clear.data(), tag.data())) {
      return BadBlob("authentication failed (damaged, or stored under another name)");
    }
    if (!layout.compressed) return size_t{plain_length};
    payload = clear;
  } else {
    uint32_t crc = Crc32c(header.data(), header.size());
    crc = Crc32c(aad.data(), aad.size(), crc);
    crc = Crc32c(stored.data(), stored.size(), crc);
    if (crc != GetLe<uint32_t>(blob.data() + offset + payload_length)) {
      return BadBlob("checksum mismatch (damaged, or stored under another name)");
    }
    if (!layout.compressed) {
      // Nothing to copy when the blob was read around `out` (UnsealFramed).
      if (payload_length > 0 && out.data() != stored.data()) {
        std::memcpy(out.data(), stored.data(), payload_length);
      }
      return size_t{plain_length};
    }
    if (Overlap(stored, out.first(plain_length))) {
      // A compressed payload read around `out` (UnsealFramed): zstd needs it elsewhere.
      const std::span<uint8_t> moved = ThreadScratch(payload_length);
      std::memcpy(moved.data(), stored.data(), payload_length);
      payload = moved;
    }
  }
  if (ZSTD_getFrameContentSize(payload.data(), payload.size()) != plain_length ||
      ZSTD_findFrameCompressedSize(payload.data(), payload.size()) != payload.size()) {
    return BadBlob("zstd frame does not match the header");
  }
  ZSTD_DCtx* dctx = ThreadDCtx();
  if (dctx == nullptr) return Status::Error(ENOMEM, "unseal: no zstd context");
  const size_t n =
      ZSTD_decompressDCtx(dctx, out.data(), plain_length, payload.data(), payload.size());
  if (ZSTD_isError(n) || n != plain_length) return BadBlob("zstd frame is damaged");
  return size_t{plain_length};
}

Result<size_t> Codec::UnsealFramed(ChunkFrame& frame, size_t blob_size,
                                   std::span<const uint8_t> aad) const {
  const std::span<uint8_t> room = frame.Around(PayloadOffset());
  if (blob_size > room.size()) return BadBlob("longer than a chunk's blob");
  return UnsealInto(room.first(blob_size), aad, frame.plain());
}

}  // namespace blksnap::repo
