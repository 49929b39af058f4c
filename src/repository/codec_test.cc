#include "repository/codec.h"

#include <gtest/gtest.h>
#include <pthread.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <random>
#include <thread>

#include "repository/chunk_table.h"
#include "util/crc32c.h"
#include "util/little_endian.h"

namespace blksnap::repo {
namespace {

std::vector<uint8_t> Key(uint8_t seed) { return std::vector<uint8_t>(32, seed); }

RepoConfig NewConfig(bool encrypted, int zstd_level = 3,
                     uint32_t segment_size = kDefaultSegmentSize) {
  NewRepoOptions options;
  options.zstd_level = zstd_level;
  options.segment_size = segment_size;
  options.kdf_iterations = kMinKdfIterations;
  const auto key = Key(7);
  auto c = NewRepoConfig(options,
                         encrypted ? std::optional(std::span<const uint8_t>(key)) : std::nullopt);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return *c;
}

Codec OpenCodec(const RepoConfig& c) {
  const auto key = Key(7);
  auto codec =
      Codec::Open(c, c.encrypted ? std::optional(std::span<const uint8_t>(key)) : std::nullopt);
  EXPECT_TRUE(codec.ok()) << codec.status().ToString();
  return *codec;
}

std::vector<uint8_t> Compressible(size_t n) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>((i / 64) % 7);
  return v;
}

std::vector<uint8_t> Random(size_t n, unsigned seed = 1) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

std::span<const uint8_t> Aad(const Digest& d) { return d.bytes; }

TEST(CodecTest, ConfigRoundTripPlainAndEncrypted) {
  for (bool encrypted : {false, true}) {
    RepoConfig c = NewConfig(encrypted);
    auto text = EncodeConfig(c);
    ASSERT_TRUE(text.ok()) << text.status().ToString();
    auto back = ParseConfig(*text);
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    EXPECT_EQ(back->id, c.id);
    EXPECT_EQ(back->chunk_size, c.chunk_size);
    EXPECT_EQ(back->zstd_level, c.zstd_level);
    EXPECT_EQ(back->encrypted, encrypted);
    EXPECT_EQ(back->kdf_iterations, c.kdf_iterations);
    EXPECT_EQ(back->kdf_salt, c.kdf_salt);
    EXPECT_EQ(back->key_nonce, c.key_nonce);
    EXPECT_EQ(back->wrapped_key, c.wrapped_key);
  }
}

TEST(CodecTest, ConfigDamageIsRefused) {
  const std::string text = *EncodeConfig(NewConfig(true));
  // Any edit of a value breaks the checksum: EBADMSG.
  std::string edited = text;
  edited.replace(edited.find("\"zstd_level\": 3"), 15, "\"zstd_level\": 4");
  EXPECT_EQ(ParseConfig(edited).status().errnum(), EBADMSG);
  // Deep nesting is refused while parsing, so nothing recursive (dump, destruction) runs over
  // it: even on a 256 KiB stack.
  static const std::string deep =
      "{\"checksum\":\"0\",\"a\":" + std::string(30000, '[') + std::string(30000, ']') + "}";
  static int deep_errnum = 0;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 256 << 10);
  pthread_t thread;
  ASSERT_EQ(pthread_create(
                &thread, &attr,
                [](void*) -> void* {
                  deep_errnum = ParseConfig(deep).status().errnum();
                  return nullptr;
                },
                nullptr),
            0);
  pthread_join(thread, nullptr);
  pthread_attr_destroy(&attr);
  EXPECT_EQ(deep_errnum, EBADMSG);
  for (std::string bad : {std::string("not json"), std::string("[]"), std::string("{}"),
                          text.substr(0, text.size() / 2), std::string(70000, ' ')}) {
    EXPECT_EQ(ParseConfig(bad).status().errnum(), EBADMSG) << bad.substr(0, 40);
  }
}

TEST(CodecTest, ConfigOutOfRangeIsRefused) {
  RepoConfig c = NewConfig(false);
  c.chunk_size = 3 << 20;
  EXPECT_EQ(EncodeConfig(c).status().errnum(), EINVAL);
  c.chunk_size = 32 << 10;
  EXPECT_EQ(EncodeConfig(c).status().errnum(), EINVAL);
  c.chunk_size = 1 << 20;
  c.zstd_level = 23;
  EXPECT_EQ(EncodeConfig(c).status().errnum(), EINVAL);
  c.zstd_level = 3;
  c.id = "nope";
  EXPECT_EQ(EncodeConfig(c).status().errnum(), EINVAL);
}

TEST(CodecTest, KeyChecks) {
  RepoConfig plain = NewConfig(false);
  RepoConfig enc = NewConfig(true);
  const auto right = Key(7), wrong = Key(8);
  EXPECT_TRUE(Codec::Open(enc, std::span<const uint8_t>(right)).ok());
  auto r = Codec::Open(enc, std::span<const uint8_t>(wrong));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().errnum(), EACCES);
  EXPECT_EQ(r.status().message(), "wrong key for repository " + enc.id);
  EXPECT_EQ(Codec::Open(enc, std::nullopt).status().errnum(), EACCES);
  EXPECT_EQ(Codec::Open(plain, std::span<const uint8_t>(right)).status().errnum(), EINVAL);
  // The wrapped key belongs to its repository id: moving it to another id is a wrong key.
  RepoConfig moved = enc;
  moved.id = plain.id;
  EXPECT_EQ(Codec::Open(moved, std::span<const uint8_t>(right)).status().errnum(), EACCES);
  // A passphrase of any length works as a key file.
  const std::string phrase = "correct horse battery staple\n";
  std::span<const uint8_t> phrase_bytes(reinterpret_cast<const uint8_t*>(phrase.data()),
                                        phrase.size());
  NewRepoOptions options;
  options.kdf_iterations = kMinKdfIterations;
  auto c = NewRepoConfig(options, phrase_bytes);
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(Codec::Open(*c, phrase_bytes).ok());
  EXPECT_EQ(Codec::Open(*c, phrase_bytes.first(phrase.size() - 1)).status().errnum(), EACCES);
}

TEST(CodecTest, ChunkIdIsShaOrKeyedHmac) {
  const auto data = Compressible(1000);
  // Version 1: SHA-256("abc") from FIPS 180-2.
  const Codec v1 = OpenCodec(NewConfig(false, 3, 0));
  const std::string abc = "abc";
  EXPECT_EQ(v1.ChunkId({reinterpret_cast<const uint8_t*>(abc.data()), 3}).Hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  // Segmented: SHA-256 of the tag, length, segment size and the segment digests.
  Codec plain = OpenCodec(NewConfig(false));
  const auto big = Compressible(3 * kDefaultSegmentSize + 5);
  std::vector<uint8_t> input(kSegmentedIdTag.begin(), kSegmentedIdTag.end());
  for (uint64_t v : {uint64_t{big.size()}, uint64_t{kDefaultSegmentSize}}) {
    const int bytes = v == big.size() ? 8 : 4;
    for (int b = 0; b < bytes; ++b) input.push_back(static_cast<uint8_t>(v >> (8 * b)));
  }
  for (const Digest& d : SegmentDigests(big, kDefaultSegmentSize)) {
    input.insert(input.end(), d.bytes.begin(), d.bytes.end());
  }
  EXPECT_EQ(SegmentDigests(big, kDefaultSegmentSize).size(), 4u);
  EXPECT_EQ(SegmentDigests(big, kDefaultSegmentSize)[3], Sha256(std::span(big).last(5)));
  EXPECT_EQ(plain.ChunkId(big), Sha256(input));
  EXPECT_NE(plain.ChunkId(big), v1.ChunkId(big));
  Codec enc1 = OpenCodec(NewConfig(true));
  Codec enc2 = OpenCodec(NewConfig(true));
  EXPECT_NE(enc1.ChunkId(data), plain.ChunkId(data));
  EXPECT_NE(enc1.ChunkId(data), enc2.ChunkId(data));  // each repository has its own id key
  EXPECT_EQ(enc1.ChunkId(data), enc1.ChunkId(data));
  EXPECT_EQ(Codec::ChunkName(plain.ChunkId(data)).substr(0, 10),
            "chunks/" + plain.ChunkId(data).Hex().substr(0, 2) + "/");
}

TEST(CodecTest, SealRoundTrips) {
  for (bool encrypted : {false, true}) {
    for (int level : {0, 3}) {
      Codec codec = OpenCodec(NewConfig(encrypted, level));
      for (const auto& data : {Compressible(1 << 20), Random(100000), std::vector<uint8_t>()}) {
        const Digest id = codec.ChunkId(data);
        auto blob = codec.Seal(data, Aad(id));
        ASSERT_TRUE(blob.ok()) << blob.status().ToString();
        EXPECT_EQ((*blob)[5],
                  (encrypted ? kBlobEncrypted : 0) |
                      (level != 0 && data == Compressible(1 << 20) ? kBlobCompressed : 0));
        auto back = codec.Unseal(*blob, Aad(id));
        ASSERT_TRUE(back.ok()) << back.status().ToString();
        EXPECT_EQ(*back, data);
      }
    }
  }
}

// UnsealInto decodes into the caller's buffer: the same bytes as Unseal, nothing written past
// them, a buffer too small for the plain length refused, and damage caught as by Unseal.
TEST(CodecTest, UnsealIntoFillsTheCallersBuffer) {
  for (bool encrypted : {false, true}) {
    for (int level : {0, 3}) {
      Codec codec = OpenCodec(NewConfig(encrypted, level));
      for (const auto& data : {Compressible(1 << 20), Random(100000), std::vector<uint8_t>()}) {
        const Digest id = codec.ChunkId(data);
        const auto blob = *codec.Seal(data, Aad(id));
        std::vector<uint8_t> out(data.size() + 64, 0xaa);
        auto n = codec.UnsealInto(blob, Aad(id), out);
        ASSERT_TRUE(n.ok()) << n.status().ToString();
        ASSERT_EQ(*n, data.size());
        EXPECT_TRUE(std::equal(data.begin(), data.end(), out.begin()));
        EXPECT_EQ(std::count(out.begin() + data.size(), out.end(), 0xaa), 64);
        if (data.empty()) continue;
        EXPECT_EQ(codec.UnsealInto(blob, Aad(id), std::span(out).first(data.size() - 1))
                      .status()
                      .errnum(),
                  EBADMSG);
        auto bad = blob;
        bad[bad.size() / 2] ^= 1;
        EXPECT_EQ(codec.UnsealInto(bad, Aad(id), out).status().errnum(), EBADMSG);
      }
    }
  }
}

// SealInto reuses a caller's buffer, dirty from earlier blobs of other sizes: each blob is the
// one Seal makes (a plain repository's seal is deterministic) and unseals; the buffer only grows.
TEST(CodecTest, SealIntoReusesADirtyBuffer) {
  Codec codec = OpenCodec(NewConfig(false));
  std::vector<uint8_t> buffer(100, 0xff);
  size_t capacity = 0;
  for (const auto& data : {Random(300000), Compressible(5000), std::vector<uint8_t>(), Random(70),
                           Compressible(1 << 20), Random(300000, 2)}) {
    const Digest id = codec.ChunkId(data);
    auto blob = codec.SealInto(data, Aad(id), &buffer);
    ASSERT_TRUE(blob.ok()) << blob.status().ToString();
    EXPECT_EQ(blob->data(), buffer.data());
    EXPECT_GE(buffer.size(), capacity);
    capacity = buffer.size();
    const std::vector<uint8_t> copy(blob->begin(), blob->end());
    EXPECT_EQ(copy, *codec.Seal(data, Aad(id)));
    EXPECT_EQ(*codec.Unseal(copy, Aad(id)), data);
    std::fill(buffer.begin(), buffer.end(), 0xff);
  }
}

// SealFramed makes the blob Seal makes, around the chunk's bytes in the frame when the payload
// stays raw in a plain repository (no copy), in the seal buffer otherwise; the chunk's bytes are
// left as they were. UnsealFramed decodes a blob read around frame.plain() in place.
TEST(CodecTest, SealFramedAndUnsealFramedWorkAroundTheChunk) {
  constexpr size_t kCapacity = (1 << 20) + 5;
  for (bool encrypted : {false, true}) {
    for (int level : {0, 3}) {
      Codec codec = OpenCodec(NewConfig(encrypted, level));
      for (const auto& data :
           {Compressible(1 << 20), Random(kCapacity), Random(100000), std::vector<uint8_t>()}) {
        SCOPED_TRACE(testing::Message()
                     << "encrypted " << encrypted << " level " << level << " size " << data.size());
        const Digest id = codec.ChunkId(data);
        ChunkFrame frame(kCapacity);
        ASSERT_TRUE(frame.ok());
        std::copy(data.begin(), data.end(), frame.plain().begin());
        std::vector<uint8_t> buffer;
        auto sealed = codec.SealFramed(frame, data.size(), Aad(id), &buffer);
        ASSERT_TRUE(sealed.ok()) << sealed.status().ToString();
        const std::vector<uint8_t> blob(sealed->begin(), sealed->end());
        EXPECT_TRUE(std::equal(data.begin(), data.end(), frame.plain().begin()));
        const bool raw = (blob[5] & kBlobCompressed) == 0;
        if (raw && !encrypted) {
          EXPECT_EQ(sealed->data() + codec.PayloadOffset(), frame.plain().data());
        } else {
          EXPECT_EQ(sealed->data(), buffer.data());
        }
        if (!encrypted) {
          EXPECT_EQ(blob, *codec.Seal(data, Aad(id)));
        }
        EXPECT_EQ(*codec.Unseal(blob, Aad(id)), data);

        ChunkFrame in(kCapacity);
        ASSERT_TRUE(in.ok());
        std::fill(in.plain().begin(), in.plain().end(), 0xaa);
        std::copy(blob.begin(), blob.end(), in.Around(codec.PayloadOffset()).begin());
        auto n = codec.UnsealFramed(in, blob.size(), Aad(id));
        ASSERT_TRUE(n.ok()) << n.status().ToString();
        ASSERT_EQ(*n, data.size());
        EXPECT_TRUE(std::equal(data.begin(), data.end(), in.plain().begin()));
        EXPECT_EQ(codec.UnsealFramed(in, in.Around(codec.PayloadOffset()).size() + 1, Aad(id))
                      .status()
                      .errnum(),
                  EBADMSG);
        if (data.empty()) continue;
        auto bad = blob;
        bad[bad.size() / 2] ^= 1;
        std::copy(bad.begin(), bad.end(), in.Around(codec.PayloadOffset()).begin());
        EXPECT_EQ(codec.UnsealFramed(in, bad.size(), Aad(id)).status().errnum(), EBADMSG);
      }
    }
  }
}

TEST(CodecTest, CompressibleShrinksIncompressibleStaysRaw) {
  Codec codec = OpenCodec(NewConfig(true));
  const auto small = *codec.Seal(Compressible(1 << 20), {});
  EXPECT_LT(small.size(), 20000u);
  const auto random = Random(1 << 20);
  const auto raw = *codec.Seal(random, {});
  EXPECT_EQ(raw[5] & kBlobCompressed, 0);
  EXPECT_EQ(raw.size(), kBlobHeaderSize + kGcmNonceSize + random.size() + kGcmTagSize);
  // Encryption hides equal plaintexts: two seals differ (random nonce).
  EXPECT_NE(*codec.Seal(random, {}), raw);
}

// The compressibility probe on 4 MiB chunks (codec.cc): random bytes are stored raw, compressible
// ones compressed, and so is a chunk that is random but for one compressible region, wherever
// that region lies (the probe's slices must see it); every blob round-trips.
TEST(CodecTest, ProbeStoresRandomRawAndCompressibleCompressed) {
  constexpr size_t kChunk = 4 << 20;
  std::vector<std::pair<std::string, std::vector<uint8_t>>> cases = {
      {"random", Random(kChunk)}, {"compressible", Compressible(kChunk)}};
  for (size_t eighth : {0, 3, 7}) {
    auto mixed = Random(kChunk, 3);
    std::fill_n(mixed.begin() + eighth * kChunk / 8, kChunk / 8, 0);
    cases.emplace_back("random with zero eighth " + std::to_string(eighth), std::move(mixed));
  }
  for (bool encrypted : {false, true}) {
    Codec codec = OpenCodec(NewConfig(encrypted));
    for (const auto& [name, data] : cases) {
      const Digest id = codec.ChunkId(data);
      const auto blob = *codec.Seal(data, Aad(id));
      const bool compressed = blob[5] & kBlobCompressed;
      EXPECT_EQ(compressed, name != "random") << name << " encrypted " << encrypted;
      if (compressed) {
        EXPECT_LT(blob.size(), data.size() * 15 / 16) << name;
      }
      EXPECT_EQ(*codec.Unseal(blob, Aad(id)), data) << name;
    }
  }
}

TEST(CodecTest, AnyFlippedByteIsEbadmsg) {
  for (bool encrypted : {false, true}) {
    Codec codec = OpenCodec(NewConfig(encrypted));
    for (const auto& data : {Compressible(4096), Random(300)}) {
      const Digest id = codec.ChunkId(data);
      const auto blob = *codec.Seal(data, Aad(id));
      for (size_t i = 0; i < blob.size(); ++i) {
        for (uint8_t mask : {0x01, 0x80}) {
          auto bad = blob;
          bad[i] ^= mask;
          auto r = codec.Unseal(bad, Aad(id));
          ASSERT_FALSE(r.ok()) << "byte " << i << " encrypted " << encrypted;
          ASSERT_EQ(r.status().errnum(), EBADMSG) << r.status().ToString();
        }
      }
      for (size_t n : {size_t{0}, size_t{15}, blob.size() - 1}) {
        EXPECT_EQ(codec.Unseal(std::span(blob).first(n), Aad(id)).status().errnum(), EBADMSG);
      }
      auto longer = blob;
      longer.push_back(0);
      EXPECT_EQ(codec.Unseal(longer, Aad(id)).status().errnum(), EBADMSG);
    }
  }
}

// A plain repository's CRC covers the stored (compressed) bytes; zstd's content checksum covers
// what they decode to. A compressed payload changed anywhere after its frame header, with the CRC
// recomputed so the blob still opens, must not decode to other bytes: every such blob is EBADMSG.
// (Without the checksum, some of these decode "fine" to other bytes.)
TEST(CodecTest, ACompressedPayloadIsCheckedAfterDecoding) {
  Codec codec = OpenCodec(NewConfig(false));
  std::vector<uint8_t> data(64 << 10);
  std::mt19937 rng(5);
  for (auto& b : data) b = static_cast<uint8_t>('a' + rng() % 8);  // literals, few matches
  const Digest id = codec.ChunkId(data);
  const auto blob = *codec.Seal(data, Aad(id));
  ASSERT_EQ(blob[5], kBlobCompressed) << "expected a compressed payload";
  constexpr size_t h = kBlobHeaderSize;
  const uint32_t payload_length = GetLe<uint32_t>(&blob[12]);
  ASSERT_EQ(blob.size(), h + payload_length + kBlobCrcSize);
  int refused = 0;
  for (size_t i = h + 18; i < h + payload_length; i += 7) {  // past the zstd frame header
    auto bad = blob;
    bad[i] ^= 0x01;
    uint32_t crc = Crc32c(bad.data(), h);
    crc = Crc32c(id.bytes.data(), id.bytes.size(), crc);
    crc = Crc32c(bad.data() + h, payload_length, crc);
    PutLe<uint32_t>(&bad[h + payload_length], crc);
    auto r = codec.Unseal(bad, Aad(id));
    ASSERT_FALSE(r.ok() && *r != data) << "byte " << i << " decoded to other bytes";
    ASSERT_FALSE(r.ok()) << "byte " << i;
    ASSERT_EQ(r.status().errnum(), EBADMSG) << r.status().ToString();
    ++refused;
  }
  EXPECT_GT(refused, 100);
}

TEST(CodecTest, BlobUnderAnotherNameIsEbadmsg) {
  for (bool encrypted : {false, true}) {
    Codec codec = OpenCodec(NewConfig(encrypted));
    const auto a = Compressible(5000), b = Random(5000);
    const auto blob = *codec.Seal(a, Aad(codec.ChunkId(a)));
    auto r = codec.Unseal(blob, Aad(codec.ChunkId(b)));
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().errnum(), EBADMSG);
  }
}

TEST(CodecTest, BlobOfTheOtherKindOrKeyIsEbadmsg) {
  Codec plain = OpenCodec(NewConfig(false));
  Codec enc = OpenCodec(NewConfig(true));
  Codec other = OpenCodec(NewConfig(true));
  const auto data = Random(1000);
  EXPECT_EQ(enc.Unseal(*plain.Seal(data, {}), {}).status().errnum(), EBADMSG);
  EXPECT_EQ(plain.Unseal(*enc.Seal(data, {}), {}).status().errnum(), EBADMSG);
  EXPECT_EQ(other.Unseal(*enc.Seal(data, {}), {}).status().errnum(), EBADMSG);
}

TEST(CodecTest, LengthsAreBounded) {
  Codec codec = OpenCodec(NewConfig(false));
  std::vector<uint8_t> huge(kMaxPlainLength + 1);
  EXPECT_EQ(codec.Seal(huge, {}).status().errnum(), EINVAL);
  // A header claiming more than the limit is refused before anything is allocated.
  auto blob = *codec.Seal(Compressible(4096), {});
  blob[8] = blob[9] = blob[10] = blob[11] = 0xff;
  EXPECT_EQ(codec.Unseal(blob, {}).status().errnum(), EBADMSG);
}

TEST(CodecTest, OneCodecSealsFromManyThreads) {
  Codec codec = OpenCodec(NewConfig(true));
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) {
        const auto data = (i % 2) ? Random(20000, t * 100 + i) : Compressible(20000 + t);
        const Digest id = codec.ChunkId(data);
        auto blob = codec.Seal(data, Aad(id));
        auto back = blob.ok() ? codec.Unseal(*blob, Aad(id)) : blob.status();
        if (!back.ok() || *back != data) ++failures;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
}

TEST(CodecTest, ReadKeyFile) {
  const std::string path = ::testing::TempDir() + "/codec_test_key";
  {
    std::ofstream out(path, std::ios::binary);
    out << "passphrase\n";
  }
  auto key = ReadKeyFile(path);
  ASSERT_TRUE(key.ok()) << key.status().ToString();
  EXPECT_EQ(std::string(key->begin(), key->end()), "passphrase\n");  // used as stored
  { std::ofstream out(path, std::ios::binary | std::ios::trunc); }
  EXPECT_EQ(ReadKeyFile(path).status().errnum(), EINVAL);  // empty
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << std::string(kMaxKeyFileSize + 1, 'k');
  }
  EXPECT_EQ(ReadKeyFile(path).status().errnum(), EINVAL);  // too large
  std::remove(path.c_str());
  EXPECT_EQ(ReadKeyFile(path).status().errnum(), ENOENT);
}

}  // namespace
}  // namespace blksnap::repo
