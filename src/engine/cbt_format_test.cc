// The CBT state file's header (cbt_format.h) and its two slots as CbtStore uses them
// (cbt_store.h): every header byte is checked, the valid slot with the higher sequence is the
// header, and a header write torn by a power cut (the page written back while the header was
// being stored, or the disk cut mid-page) leaves the previous header, so the generation
// continues instead of starting over with "state-corrupt".
#include "engine/cbt_format.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "blksnap/mapped_file.h"
#include "engine/cbt_store.h"
#include "engine/engine_test_util.h"
#include "util/crc32c.h"
#include "util/little_endian.h"

namespace blksnap {
namespace {

constexpr uint64_t kDevSize = 4ull << 20;
constexpr uint32_t kShift = 12;
constexpr uint64_t kBlocks = kDevSize >> kShift;
const char* const kState = "/state/vol.cbt";

CbtHeader SampleHeader() {
  CbtHeader h;
  h.sequence = 5;
  h.generation = Uuid::Random();
  h.capacity = kDevSize - 1;
  h.block_shift = kShift;
  h.block_count = kBlocks;
  h.active = 3;
  h.previous = 2;
  h.flags = kCbtFlagSealed;
  h.boot_id = "3f0a";
  h.reason = kCbtReasonOutsideWrite;
  h.identity = {.kind = CbtIdentity::kBlockDevice, .rdev = 0x801, .size = kDevSize - 1};
  h.journal_shift = CbtJournalShift(h.capacity, h.block_shift);
  h.journal_regions = CbtBlockCount(h.capacity, h.journal_shift);
  return h;
}

std::vector<uint8_t> EmptyFile(const CbtHeader& h) {
  return std::vector<uint8_t>(CbtFileSize(CbtGeometry{h.capacity, h.block_shift}));
}

void PutSlot(std::vector<uint8_t>& file, int slot, const CbtHeader& h) {
  const auto block = SerializeCbtHeader(h);
  std::copy(block.begin(), block.end(), file.begin() + slot * kCbtHeaderSize);
}

TEST(CbtFormatTest, RoundTripAndEveryByteIsChecked) {
  const CbtHeader h = SampleHeader();
  auto file = EmptyFile(h);
  PutSlot(file, 0, h);
  int slot = -1;
  auto parsed = ParseCbtState(file, &slot);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(*parsed, h);
  EXPECT_EQ(slot, 0);
  for (size_t i = 0; i < kCbtHeaderSize; ++i) {  // any flipped header byte is refused
    auto bad = file;
    bad[i] ^= 0x01;
    EXPECT_FALSE(ParseCbtState(bad).ok()) << "byte " << i;
  }
  file.push_back(0);
  EXPECT_FALSE(ParseCbtState(file).ok());
}

TEST(CbtFormatTest, TheValidSlotWithTheHigherSequenceIsTheHeader) {
  CbtHeader older = SampleHeader();
  CbtHeader newer = older;
  newer.sequence = older.sequence + 1;
  newer.active = older.active + 1;
  for (int newer_slot : {0, 1}) {
    SCOPED_TRACE("newer header in slot " + std::to_string(newer_slot));
    auto file = EmptyFile(older);
    PutSlot(file, 1 - newer_slot, older);
    PutSlot(file, newer_slot, newer);
    int slot = -1;
    auto parsed = ParseCbtState(file, &slot);
    ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
    EXPECT_EQ(*parsed, newer);
    EXPECT_EQ(slot, newer_slot);
    // The newer one torn (its second half never written): the older one is the header.
    std::fill_n(file.begin() + newer_slot * kCbtHeaderSize + kCbtHeaderSize / 2, kCbtHeaderSize / 2,
                0);
    parsed = ParseCbtState(file, &slot);
    ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
    EXPECT_EQ(*parsed, older);
    EXPECT_EQ(slot, 1 - newer_slot);
    // Both torn: nothing.
    std::fill_n(file.begin() + (1 - newer_slot) * kCbtHeaderSize + 100, 8, 0xff);
    EXPECT_FALSE(ParseCbtState(file).ok());
  }
}

// A format-2 file (one header, maps at 4 KiB) from an older blksnapd is refused, so it starts a
// new generation ("state-corrupt": one full backup), never read with the wrong layout.
TEST(CbtFormatTest, AnotherVersionIsRefused) {
  const CbtHeader h = SampleHeader();
  auto file = EmptyFile(h);
  PutSlot(file, 0, h);
  PutLe<uint32_t>(file.data() + cbt_field::kVersion, 2);
  PutLe<uint32_t>(file.data() + cbt_field::kChecksum, Crc32c(file.data(), cbt_field::kChecksum));
  auto parsed = ParseCbtState(file);
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().errnum(), EPROTO);
}

// Every header write goes to the slot that does not hold the last durable header: whichever
// header write a power cut tears (here: each of a run's writes in turn, its slot left half
// written on the disk), the file still has a valid header of this generation, and the marks.
TEST(CbtHeaderSlotsTest, ATornHeaderWriteLeavesThePreviousHeader) {
  for (int writes = 1; writes <= 6; ++writes) {
    SCOPED_TRACE(std::to_string(writes) + " header writes after the attach");
    auto files = std::make_shared<MemoryMappedFiles>();
    const CbtGeometry geometry{kDevSize, kShift};
    auto store = CbtStore::Open(geometry, {.path = kState, .files = files});
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    const Uuid generation = (*store)->header().generation;
    (*store)->write_map()[7] = 1;
    ASSERT_OK((*store)->Checkpoint());
    for (int i = 1; i < writes; ++i) {  // durable header writes: takes and checkpoints
      if (i % 2) {
        ++(*store)->header().active;
        ASSERT_OK((*store)->SyncHeader());
      } else {
        ASSERT_OK((*store)->Checkpoint());
      }
    }
    (*store)->Publish();  // the write the power cut tears
    store->reset();
    auto bytes = files->Contents(kState);
    int newest = -1;
    ASSERT_TRUE(ParseCbtState(bytes, &newest).ok());
    // Torn: the first 100 bytes reached the disk, the rest (checksum included) did not.
    std::fill_n(bytes.begin() + newest * kCbtHeaderSize + 100, kCbtHeaderSize - 100, 0);
    files->SetContents(kState, bytes);
    files->set_boot_id("after-the-cut");
    auto again = CbtStore::Open(geometry, {.path = kState, .expected = true, .files = files});
    ASSERT_TRUE(again.ok()) << again.status().ToString();
    EXPECT_EQ((*again)->header().generation, generation) << (*again)->header().reason;
    EXPECT_EQ((*again)->recovered_from(), kCbtRecoveredPowerLoss);
    EXPECT_GE((*again)->write_map()[7], 1);
  }
}

}  // namespace
}  // namespace blksnap
