// libFuzzer target: the repository's config object and sealed blobs (src/repository/codec.h).
//
// Every input is tried as a config object (ParseConfig) and as a blob (Unseal) of a plain and of
// an encrypted repository, with the 32-byte AAD that the seeds were sealed with. None may crash
// or read past the input. A config ParseConfig accepts must encode and parse back to the same
// fields; a blob Unseal accepts must give its header's plain length and seal again to a blob
// that unseals to the same bytes. Every input is also a segmented chunk's table
// (ParseChunkTable: one it accepts must encode to the same bytes) and an object's footer.
//
// Seeds (fuzz/corpus/repository_codec_fuzzer/) are real objects: the two configs below and blobs
// of each kind. Regenerate them with
//   BLKSNAP_FUZZ_WRITE_SEEDS=fuzz/corpus/repository_codec_fuzzer
//   build-fuzz/fuzz/repository_codec_fuzzer
// (the encrypted config is fixed, so its blobs stay valid; the key is 32 bytes of 0x5a).
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "repository/chunk_table.h"
#include "repository/codec.h"

namespace {

using namespace blksnap::repo;

constexpr char kEncryptedConfig[] = R"({
  "checksum": "26ef33f23afb0900503466a959f0788179e6dbde3ffc0b3bf6f4636f45aac934",
  "chunk_size": 65536,
  "encryption": {
    "cipher": "aes-256-gcm",
    "kdf": "pbkdf2-hmac-sha256",
    "kdf_iterations": 1000,
    "kdf_salt": "055579a58d33ffee17ac13d5f5453c86",
    "key_nonce": "acf47fdc87d3e1adacd43d8e",
    "wrapped_key": "b95a3517fd0146d4ccee2efc41806edd2aca17dfebf4ca411fde9083caaa04fe2c52305e38e4e3a4b2b896f0b68ad7e23f60b4dacc693a4f78eae3e435335c0b6065c015d6a5e84c0d803528f7fd8f3c"
  },
  "format": "blksnap-repository",
  "id": "2216d0c2-be6b-4338-96fe-2c7c2619c8aa",
  "version": 1,
  "zstd_level": 3
}
)";

struct Codecs {
  Codec plain;
  Codec encrypted;
};

const Codecs& GetCodecs() {
  static const Codecs codecs = [] {
    RepoConfig plain_config;
    plain_config.id = "6b1c4d0e-8f2a-4c3b-9d5e-7a6f1e2d3c4b";
    const std::vector<uint8_t> key(32, 0x5a);
    auto encrypted_config = ParseConfig(kEncryptedConfig);
    if (!encrypted_config.ok()) std::abort();
    auto plain = Codec::Open(plain_config, std::nullopt);
    auto encrypted = Codec::Open(*encrypted_config, std::span<const uint8_t>(key));
    if (!plain.ok() || !encrypted.ok()) std::abort();
    return Codecs{*plain, *encrypted};
  }();
  return codecs;
}

std::vector<uint8_t> Aad() { return std::vector<uint8_t>(32, 0xa5); }

void CheckConfig(std::string_view text) {
  auto config = ParseConfig(text);
  if (!config.ok()) return;
  auto encoded = EncodeConfig(*config);
  if (!encoded.ok()) std::abort();
  auto again = ParseConfig(*encoded);
  if (!again.ok() || again->id != config->id || again->chunk_size != config->chunk_size ||
      again->zstd_level != config->zstd_level || again->encrypted != config->encrypted ||
      again->wrapped_key != config->wrapped_key || again->kdf_salt != config->kdf_salt) {
    std::abort();
  }
}

void CheckBlob(const Codec& codec, std::span<const uint8_t> blob) {
  const auto aad = Aad();
  auto plain = codec.Unseal(blob, aad);
  if (!plain.ok()) {
    if (plain.status().errnum() != EBADMSG) std::abort();
    return;
  }
  const uint32_t plain_length = blob[8] | blob[9] << 8 | blob[10] << 16 | uint32_t{blob[11]} << 24;
  if (plain->size() != plain_length) std::abort();
  auto resealed = codec.Seal(*plain, aad);
  if (!resealed.ok()) std::abort();
  auto back = codec.Unseal(*resealed, aad);
  if (!back.ok() || *back != *plain) std::abort();
}

void CheckChunkTable(std::span<const uint8_t> bytes) {
  auto table = ParseChunkTable(bytes);
  if (table.ok()) {
    const std::vector<uint8_t> again = EncodeChunkTable(*table);
    if (!std::equal(again.begin(), again.end(), bytes.begin(), bytes.end())) std::abort();
  } else if (table.status().errnum() != EBADMSG) {
    std::abort();
  }
  auto footer = ParseChunkFooter(bytes, bytes.size());
  if (footer.ok() && *footer + 8 > bytes.size()) std::abort();
}

void WriteSeeds(const std::string& dir) {
  const Codecs& codecs = GetCodecs();
  auto write = [&dir](const std::string& name, std::span<const uint8_t> bytes) {
    std::ofstream(dir + "/" + name, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()),
               static_cast<std::streamsize>(bytes.size()));
  };
  RepoConfig plain_config = codecs.plain.config();
  const std::string plain_text = *EncodeConfig(plain_config);
  const std::string encrypted_text = kEncryptedConfig;
  write("config-plain", {reinterpret_cast<const uint8_t*>(plain_text.data()), plain_text.size()});
  write("config-encrypted",
        {reinterpret_cast<const uint8_t*>(encrypted_text.data()), encrypted_text.size()});
  std::vector<uint8_t> text(3000), noise(300);
  for (size_t i = 0; i < text.size(); ++i) text[i] = static_cast<uint8_t>("blksnap "[i % 8]);
  uint32_t x = 12345;
  for (auto& b : noise) b = static_cast<uint8_t>((x = x * 1103515245 + 12345) >> 16);
  const auto aad = Aad();
  write("blob-plain-compressed", *codecs.plain.Seal(text, aad));
  write("blob-plain-raw", *codecs.plain.Seal(noise, aad));
  write("blob-plain-empty", *codecs.plain.Seal({}, aad));
  write("blob-encrypted-compressed", *codecs.encrypted.Seal(text, aad));
  write("blob-encrypted-raw", *codecs.encrypted.Seal(noise, aad));
  ChunkTable table;  // a delta of 3 segments of 4 KiB (the last one short) storing the second
  table.length = 3 * 4096 - 100;
  table.segment_size = 4096;
  table.depth = 2;
  table.base.bytes.fill(0x11);
  table.present = {0, 1, 0};
  table.digests.resize(3);
  for (size_t i = 0; i < 3; ++i) table.digests[i].bytes.fill(static_cast<uint8_t>(0x20 + i));
  write("chunk-table-delta", EncodeChunkTable(table));
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = std::getenv("BLKSNAP_FUZZ_WRITE_SEEDS")) {
    WriteSeeds(dir);
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::span<const uint8_t> bytes(data, size);
  CheckConfig({reinterpret_cast<const char*>(data), size});
  CheckBlob(GetCodecs().plain, bytes);
  CheckBlob(GetCodecs().encrypted, bytes);
  CheckChunkTable(bytes);
  return 0;
}
