// The difference-storage header: a good header round-trips (also the one DiffStorage writes);
// each corruption is refused with a message naming it.
#include "engine/diff_storage_format.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "blksnap/io.h"
#include "engine/diff_storage.h"
#include "util/crc32c.h"

namespace blksnap {
namespace {

DiffStorageHeader Sample() {
  DiffStorageHeader h;
  h.snapshot_id = Uuid::Random();
  h.created = 1764489600;
  h.limit = (8ull << 30) + 12345;
  h.seq = 7;
  h.durability = 2;
  h.state = kStorageStateTaken;
  h.flags = kStorageFlagOwnsFile;
  h.log_start = kDiffStorageHeaderSize;
  h.log_epoch = 3;
  h.devices = {{"vol0", 1ull << 30, 16}, {std::string(128, 'x'), 4096, 12}};
  return h;
}

// Rewrites the checksum, so that a test reaches the check after it.
void Reseal(std::array<uint8_t, kDiffStorageHeaderBlockSize>& block) {
  const uint32_t crc = Crc32c(block.data(), kChecksumOffset);
  for (size_t i = 0; i < 4; ++i) block[kChecksumOffset + i] = static_cast<uint8_t>(crc >> (8 * i));
}

void ExpectRefused(std::span<const uint8_t> bytes, int errnum, const std::string& words) {
  auto parsed = ParseDiffStorageHeader(bytes);
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().errnum(), errnum);
  EXPECT_NE(parsed.status().ToString().find(words), std::string::npos)
      << parsed.status().ToString();
}

TEST(DiffStorageFormatTest, GoodHeaderRoundTripsInTheDocumentedLayout) {
  const DiffStorageHeader h = Sample();
  const auto block = SerializeDiffStorageHeader(h);
  auto parsed = ParseDiffStorageHeader(block);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(*parsed, h);
  // The layout of docs/diff-storage-format.md, byte by byte where it is fixed.
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(block.data()), 16),
            std::string("BLKSNAP-DIFFSTO\0", 16));
  EXPECT_EQ(block[16], 3);  // version, little-endian
  EXPECT_EQ(block[20], 0);  // header area 2 MiB = 0x200000, little-endian
  EXPECT_EQ(block[21], 0);
  EXPECT_EQ(block[22], 0x20);
  EXPECT_EQ(block[23], 0);
  EXPECT_EQ(block[48], 12345 & 0xff);
  for (size_t i = kReservedOffset; i < kDeviceTableOffset; ++i) ASSERT_EQ(block[i], 0) << i;
  for (size_t i = kDeviceTableOffset + 2 * kDeviceEntrySize; i < kChecksumOffset; ++i)
    ASSERT_EQ(block[i], 0) << i;
  // A longer buffer (the whole header area) parses the same.
  std::vector<uint8_t> area(kDiffStorageHeaderSize, 0xaa);
  std::copy(block.begin(), block.end(), area.begin());
  ASSERT_TRUE(ParseDiffStorageHeader(area).ok());
}

TEST(DiffStorageFormatTest, TheHeaderDiffStorageWritesParses) {
  auto dev = MakeMemoryDevice(kDiffStorageHeaderSize + (8ull << 20));
  const Uuid id = Uuid::Random();
  auto storage = DiffStorage::Create(dev, nullptr, 4ull << 20, 4ull << 20, id, nullptr);
  ASSERT_TRUE(storage.ok()) << storage.status().ToString();
  std::vector<uint8_t> block(kDiffStorageHeaderBlockSize);
  ASSERT_TRUE(dev->Read(0, block).ok());
  auto parsed = ParseDiffStorageHeader(block);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->snapshot_id, id);
  EXPECT_EQ(parsed->limit, 4ull << 20);
  EXPECT_GT(parsed->created, 0u);
}

TEST(DiffStorageFormatTest, EachCorruptionIsRefusedWithAClearMessage) {
  const auto good = SerializeDiffStorageHeader(Sample());
  ExpectRefused({}, EINVAL, "truncated");
  ExpectRefused(std::span(good).first(kDiffStorageHeaderBlockSize - 1), EINVAL, "truncated");

  auto block = good;
  block[3] ^= 1;
  ExpectRefused(block, EINVAL, "bad magic");

  block = good;
  block[100] = 1;  // a reserved byte: only the checksum notices
  ExpectRefused(block, EINVAL, "checksum mismatch");
  block = good;
  block[kChecksumOffset] ^= 0x80;
  ExpectRefused(block, EINVAL, "checksum mismatch");

  block = good;
  block[kVersionOffset] = 1;  // an older blksnapd's storage: refused before its checksum
  ExpectRefused(block, EPROTO, "version 1 is not supported");
  block = good;
  block[kVersionOffset] = 4;  // a newer blksnapd's storage
  ExpectRefused(block, EPROTO, "version 4 is not supported");
  block = good;
  block[kVersionOffset] = 2;  // version 2 (no CRC-checked records) is read
  Reseal(block);
  EXPECT_EQ(ParseDiffStorageHeader(block).value().version, 2u);

  block = good;
  block[kStateOffset] = 9;
  Reseal(block);
  ExpectRefused(block, EINVAL, "state");
  block = good;
  block[kDeviceCountOffset] = kMaxStorageDevices + 1;
  Reseal(block);
  ExpectRefused(block, EINVAL, "devices");
  block = good;
  block[kDeviceTableOffset + kDeviceNameLenOffset] = 0;  // an empty name
  block[kDeviceTableOffset + kDeviceNameLenOffset + 1] = 0;
  Reseal(block);
  ExpectRefused(block, EINVAL, "device entry 0");

  block = good;
  block[kHeaderSizeOffset + 1] = 0x10;  // 0x201000
  Reseal(block);
  ExpectRefused(block, EINVAL, "header area");

  block = good;
  for (size_t i = 0; i < kLimitSize; ++i) block[kLimitOffset + i] = 0;
  Reseal(block);
  ExpectRefused(block, EINVAL, "limit");
  for (size_t i = 0; i < kLimitSize; ++i) block[kLimitOffset + i] = 0xff;
  Reseal(block);
  ExpectRefused(block, EINVAL, "limit");
}

TEST(DiffStorageFormatTest, TheValidSlotWithTheHigherSeqIsTheHeader) {
  DiffStorageHeader a = Sample(), b = Sample();
  b.seq = a.seq + 1;
  b.state = kStorageStateCorrupted;
  std::vector<uint8_t> area(2 * kDiffStorageHeaderBlockSize);
  auto put = [&](const DiffStorageHeader& h, size_t slot) {
    const auto block = SerializeDiffStorageHeader(h);
    std::copy(block.begin(), block.end(), area.begin() + slot * kDiffStorageHeaderBlockSize);
  };
  put(a, 0);
  put(b, 1);
  EXPECT_EQ(ParseDiffStorageHeaderSlots(area).value(), b);
  area[kDiffStorageHeaderBlockSize + 200] ^= 1;  // slot 1 torn: slot 0 stands
  EXPECT_EQ(ParseDiffStorageHeaderSlots(area).value(), a);
  area[200] ^= 1;  // both torn: the error of slot 0
  EXPECT_EQ(ParseDiffStorageHeaderSlots(area).status().errnum(), EINVAL);
}

// A log page of a new snapshot, without records: `next` is `next_page` pages after the header.
LogPage PageHeader(uint64_t seq, uint64_t batch_first, uint64_t epoch, uint64_t next_page) {
  LogPage page;
  page.snapshot_id = Uuid::Random();
  page.seq = seq;
  page.batch_first = batch_first;
  page.epoch = epoch;
  page.next = kDiffStorageHeaderSize + next_page * kLogPageSize;
  return page;
}

TEST(DiffStorageFormatTest, LogPagesRoundTripAndATornPageIsRefused) {
  LogPage page = PageHeader(42, 40, 2, 8);
  for (uint32_t i = 0; i < kLogRecordsPerPage; ++i) {
    LogRecord r;
    r.chunk = i * 3;
    r.device = static_cast<uint16_t>(i % 4);
    if (i % 5 == 0) {
      r.flags = kRecordFlagZero;
    } else {
      r.offset = kDiffStorageHeaderSize + (i + 1) * 65536;
      r.length = 65536;
      r.crc = 0x12345678u + i;
      if (i % 2) r.flags = kRecordFlagVerify;  // the CRC is checked in the last commit
    }
    page.records.push_back(r);
  }
  auto bytes = SerializeLogPage(page);
  EXPECT_EQ(ParseLogPage(bytes).value(), page);
  EXPECT_EQ(kLogRecordsPerPage, 125u);
  auto torn = bytes;
  std::fill(torn.begin() + 2048, torn.end(), 0);  // half a page reached the disk
  EXPECT_NE(ParseLogPage(torn).status().ToString().find("checksum"), std::string::npos);
  EXPECT_EQ(ParseLogPage(std::span(bytes).first(100)).status().errnum(), EINVAL);
  page.batch_first = 43;  // a commit cannot start after its page
  EXPECT_EQ(ParseLogPage(SerializeLogPage(page)).status().errnum(), EINVAL);
  page.batch_first = 40;
  page.records[1].flags = 4;  // an unknown flag
  EXPECT_NE(ParseLogPage(SerializeLogPage(page)).status().ToString().find("malformed"),
            std::string::npos);
  page.records[1].flags = 0;
  page.records[1].offset = 12345;  // not aligned, not after the header
  EXPECT_NE(ParseLogPage(SerializeLogPage(page)).status().ToString().find("malformed"),
            std::string::npos);
}

TEST(DiffStorageFormatTest, APageBuiltRecordByRecordIsTheSerializedPage) {
  LogPage page = PageHeader(7, 7, 3, 3);
  std::vector<uint8_t> bytes(kLogPageSize, 0xee);  // Begin overwrites whatever was there
  LogPageBuilder builder;
  builder.Begin(bytes.data(), page);
  EXPECT_EQ(builder.count(), 0u);
  auto want = SerializeLogPage(page);
  ASSERT_TRUE(std::equal(want.begin(), want.end(), bytes.begin()));
  for (uint32_t i = 0; i < kLogRecordsPerPage; ++i) {
    LogRecord r;
    r.chunk = 1000 + i * 7;
    r.device = static_cast<uint16_t>(i % 3);
    r.offset = kDiffStorageHeaderSize + (i + 5) * 65536;
    r.length = 65536;
    r.crc = 0x9e3779b9u * (i + 1);
    builder.Append(bytes.data(), r);
    page.records.push_back(r);
    want = SerializeLogPage(page);
    ASSERT_TRUE(std::equal(want.begin(), want.end(), bytes.begin())) << "after record " << i;
    ASSERT_EQ(ParseLogPage(bytes).value(), page);
  }
  EXPECT_EQ(builder.count(), kLogRecordsPerPage);
  // The next page in the same buffer and builder: nothing of the full one is left.
  page.seq = 8;
  page.records.clear();
  builder.Begin(bytes.data(), page);
  LogRecord r;
  r.chunk = 5;
  r.flags = kRecordFlagZero;
  builder.Append(bytes.data(), r);
  page.records.push_back(r);
  want = SerializeLogPage(page);
  EXPECT_TRUE(std::equal(want.begin(), want.end(), bytes.begin()));
  EXPECT_EQ(builder.count(), 1u);
}

// A crash log's mapped open page (chunk_log.h): a kill -9 may stop PublishLogPageAppend after
// any of its stores. Every state it can leave parses, with ParseTornLogPage, as the version
// before the append (whose commit never returned); the version after parses as it is; a page
// damaged anywhere else does not parse.
TEST(DiffStorageFormatTest, AnAppendStoppedAtAnyStoreIsTheVersionBefore) {
  LogPage page = PageHeader(9, 9, 2, 10);
  auto record = [](uint32_t i) {
    LogRecord r;
    r.chunk = 77 + i;
    r.offset = kDiffStorageHeaderSize + (i + 20) * 65536;
    r.length = 65536;
    r.crc = 0x2545f491u * (i + 1);
    r.flags = i % 2 ? kRecordFlagVerify : 0;
    return r;
  };
  for (uint32_t n : {0u, 1u, 60u, kLogRecordsPerPage - 1}) {
    SCOPED_TRACE("append to a page of " + std::to_string(n) + " records");
    std::vector<uint8_t> built(kLogPageSize), mapped(kLogPageSize, 0xee);
    LogPageBuilder builder;
    builder.Begin(built.data(), page);
    PublishLogPageBegin(mapped.data(), built.data());
    LogPage before = page;
    for (uint32_t i = 0; i < n; ++i) {
      builder.Append(built.data(), record(i));
      PublishLogPageAppend(mapped.data(), built.data(), builder.count());
      before.records.push_back(record(i));
    }
    ASSERT_EQ(ParseLogPage(mapped).value(), before);
    builder.Append(built.data(), record(n));
    LogPage after = before;
    after.records.push_back(record(n));
    // The record's bytes, stored in any order (a memcpy's), then the count, then the checksum.
    const size_t slot = kPageRecordsOffset + size_t{n} * kLogRecordSize;
    std::vector<uint8_t> state = mapped;
    for (size_t b = 0; b < kLogRecordSize; ++b) {
      const size_t at = slot + (b * 13) % kLogRecordSize;
      state[at] = built[at];
      if (state == mapped) continue;  // the byte did not change: no new state
      EXPECT_FALSE(ParseLogPage(state).ok()) << "record byte " << b;
      ASSERT_EQ(ParseTornLogPage(state).value(), before) << "record byte " << b;
    }
    std::copy_n(built.begin() + kPageCountOffset, 4, state.begin() + kPageCountOffset);
    EXPECT_FALSE(ParseLogPage(state).ok());
    EXPECT_EQ(ParseTornLogPage(state).value(), before) << "count stored, checksum not";
    PublishLogPageAppend(mapped.data(), built.data(), builder.count());
    EXPECT_EQ(mapped, built);
    EXPECT_EQ(ParseLogPage(mapped).value(), after);
    EXPECT_EQ(ParseTornLogPage(mapped).value(), after);
    // Damage is not a torn append: a committed record, the header, a count two ahead.
    if (n > 0) {
      auto damaged = state;
      damaged[kPageRecordsOffset + 5] ^= 1;
      EXPECT_EQ(ParseTornLogPage(damaged).status().errnum(), EINVAL);
    }
    auto header = state;
    header[kPageSeqOffset] ^= 1;
    EXPECT_EQ(ParseTornLogPage(header).status().errnum(), EINVAL);
    if (n + 2 <= kLogRecordsPerPage) {
      auto ahead = state;
      ahead[kPageCountOffset] = static_cast<uint8_t>(n + 2);
      EXPECT_EQ(ParseTornLogPage(ahead).status().errnum(), EINVAL);
    }
  }
  // Begin stopped after clearing the magic: not a page of the log at all (its end).
  std::vector<uint8_t> built(kLogPageSize), mapped(kLogPageSize);
  LogPageBuilder builder;
  builder.Begin(built.data(), page);
  // A full page damaged past its records (padding no append writes), or with a record slot
  // emptied: damage, not an append stopped midway.
  for (uint32_t i = 0; i < kLogRecordsPerPage; ++i) builder.Append(built.data(), record(i));
  auto padding = built;
  padding[kPageChecksumOffset - 1] ^= 1;
  EXPECT_EQ(ParseTornLogPage(padding).status().errnum(), EINVAL);
  auto emptied = built;
  std::fill_n(emptied.begin() + kPageRecordsOffset + 124 * kLogRecordSize, kLogRecordSize, 0);
  EXPECT_EQ(ParseTornLogPage(emptied).status().errnum(), EINVAL);
  builder.Begin(built.data(), page);
  PublishLogPageBegin(mapped.data(), built.data());
  mapped[0] = 0;
  EXPECT_FALSE(IsLogPageOf(mapped, page.snapshot_id, page.seq, 1, 9));
  EXPECT_EQ(ParseTornLogPage(mapped).status().errnum(), EINVAL);
}

}  // namespace
}  // namespace blksnap
