// Unit tests of the index object (index.h): round trips (empty device, partial last chunk, zero
// chunks), every single-byte change of an encoded index detected, every truncation and extension
// refused, header fields that lie (count, chunk size, version, flags) refused even with a correct
// checksum, and a huge claimed count refused by its length before any allocation.
#include "repository/index.h"

#include <gtest/gtest.h>

#include <cstring>

#include "repository/catalog_format.h"

namespace blksnap::repo {
namespace {

Digest Numbered(uint32_t n) {
  Digest d;
  for (size_t i = 0; i < d.bytes.size(); ++i) d.bytes[i] = static_cast<uint8_t>(n * 31 + i + 1);
  return d;
}

Index Sample(uint64_t device_size, uint64_t chunk_size) {
  Index index{device_size, chunk_size, {}};
  for (uint64_t i = 0; i < ChunkCount(device_size, chunk_size); ++i) {
    index.chunks.push_back(i % 3 == 1 ? Digest{} : Numbered(uint32_t(i)));
  }
  return index;
}

void PutU64(std::vector<uint8_t>& bytes, size_t offset, uint64_t value) {
  for (int i = 0; i < 8; ++i) bytes[offset + i] = uint8_t(value >> (8 * i));
}

// Rewrites the trailing checksum so that only the field checks can catch a change.
void Reseal(std::vector<uint8_t>& bytes) {
  const size_t body = bytes.size() - kIndexChecksumSize;
  const Digest sum = Sha256(std::span<const uint8_t>(bytes.data(), body));
  std::memcpy(bytes.data() + body, sum.bytes.data(), sum.bytes.size());
}

void ExpectBad(const std::vector<uint8_t>& bytes, const char* what) {
  auto parsed = ParseIndex(bytes);
  ASSERT_FALSE(parsed.ok()) << what;
  EXPECT_EQ(parsed.status().errnum(), EBADMSG) << what;
  EXPECT_EQ(parsed.status().message().find('\n'), std::string_view::npos);
}

TEST(IndexTest, RoundTrips) {
  const uint64_t kMiB = 1 << 20;
  for (const Index& index :
       {Sample(0, 64 << 10), Sample(10 * kMiB, 4 * kMiB), Sample(8 * kMiB, 4 * kMiB),
        Sample(1, 64 * kMiB), Sample(3 * kMiB + 5, 64 << 10)}) {
    ASSERT_TRUE(CheckIndex(index).ok());
    const auto bytes = EncodeIndex(index);
    EXPECT_EQ(bytes.size(), kIndexHeaderSize + 32 * index.chunks.size() + kIndexChecksumSize);
    auto parsed = ParseIndex(bytes);
    ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
    EXPECT_EQ(*parsed, index);
  }
}

TEST(IndexTest, EncodingIsTheDocumentedLayout) {
  const Index index = Sample(5 << 20, 4 << 20);  // two chunks
  const auto bytes = EncodeIndex(index);
  ASSERT_EQ(bytes.size(), 40u + 64 + 32);
  EXPECT_EQ(std::memcmp(bytes.data(), "BSNPIDX1", 8), 0);
  EXPECT_EQ(bytes[8], 1);          // version
  EXPECT_EQ(bytes[16 + 2], 0x50);  // device_size 5 MiB, little-endian
  EXPECT_EQ(bytes[24 + 2], 0x40);  // chunk_size 4 MiB
  EXPECT_EQ(bytes[32], 2);         // count
  EXPECT_EQ(bytes[40], index.chunks[0].bytes[0]);
  EXPECT_EQ(bytes[72], 0);  // chunk 1 is a zero chunk
}

TEST(IndexTest, EveryByteChangeIsDetected) {
  const auto good = EncodeIndex(Sample(7 << 16, 64 << 10));
  for (size_t i = 0; i < good.size(); ++i) {
    for (uint8_t flip : {uint8_t{0x01}, uint8_t{0x80}, uint8_t{0xff}}) {
      auto bad = good;
      bad[i] ^= flip;
      auto parsed = ParseIndex(bad);
      ASSERT_FALSE(parsed.ok()) << "byte " << i << " ^ " << int(flip);
      EXPECT_EQ(parsed.status().errnum(), EBADMSG);
    }
  }
}

TEST(IndexTest, EveryOtherLengthIsRefused) {
  const auto good = EncodeIndex(Sample(5 << 16, 64 << 10));
  for (size_t n = 0; n < good.size(); ++n) {
    ExpectBad(std::vector<uint8_t>(good.begin(), good.begin() + n), "truncated");
  }
  for (size_t extra : {1, 31, 32, 64}) {
    auto longer = good;
    longer.resize(good.size() + extra, 0);
    ExpectBad(longer, "extended");
  }
}

TEST(IndexTest, LyingHeaderFieldsAreRefusedEvenWhenResealed) {
  const auto good = EncodeIndex(Sample(5 << 16, 64 << 10));  // 5 chunks
  struct Case {
    size_t offset;
    uint64_t value;
    const char* what;
  };
  for (const Case& c : {Case{index_field::kCount, 4, "count too small"},
                        Case{index_field::kCount, 6, "count too large"},
                        Case{index_field::kDeviceSize, 6 << 16, "device larger than count"},
                        Case{index_field::kChunkSize, 32 << 10, "chunk size below 64 KiB"},
                        Case{index_field::kChunkSize, 128ull << 20, "chunk size above 64 MiB"},
                        Case{index_field::kChunkSize, (64 << 10) + 4096, "not a power of two"},
                        Case{index_field::kChunkSize, 0, "chunk size zero"}}) {
    auto bad = good;
    PutU64(bad, c.offset, c.value);
    Reseal(bad);
    ExpectBad(bad, c.what);
  }
  auto version = good;
  version[index_field::kVersion] = 2;
  Reseal(version);
  ExpectBad(version, "version 2");
  auto flags = good;
  flags[index_field::kFlags] = 1;
  Reseal(flags);
  ExpectBad(flags, "flags");
}

TEST(IndexTest, AHugeClaimedCountIsRefusedByItsLength) {
  // 2^63 bytes at 64 KiB: 2^47 entries (4 PiB of digests) claimed by a 72-byte object.
  Index empty{0, 64 << 10, {}};
  auto bad = EncodeIndex(empty);
  PutU64(bad, index_field::kDeviceSize, uint64_t{1} << 63);
  PutU64(bad, index_field::kCount, uint64_t{1} << 47);
  Reseal(bad);
  ExpectBad(bad, "huge count");
  PutU64(bad, index_field::kDeviceSize, ~uint64_t{0});
  PutU64(bad, index_field::kCount, (~uint64_t{0} >> 16) + 1);
  Reseal(bad);
  ExpectBad(bad, "largest device");
}

TEST(IndexTest, CheckIndexNamesInconsistentIndexes) {
  EXPECT_EQ(CheckIndex(Index{1 << 20, 3 << 16, {}}).errnum(), EINVAL);
  Index short_list = Sample(1 << 20, 64 << 10);
  short_list.chunks.pop_back();
  EXPECT_EQ(CheckIndex(short_list).errnum(), EINVAL);
  // Its encoding does not parse: a reader never gets an index that does not cover the device.
  ExpectBad(EncodeIndex(short_list), "short list");
}

}  // namespace
}  // namespace blksnap::repo
