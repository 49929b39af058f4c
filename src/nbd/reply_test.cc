// Unit tests: reply encoding (reply.h) — read pieces from extents, the byte layout of read,
// block-status and error chunks.
#include "nbd/reply.h"

#include <gtest/gtest.h>

namespace blksnap::nbd {
namespace {

using Pieces = std::vector<ReadPiece>;
constexpr uint32_t kHoleFlags = kExtentHole | kExtentZero;

TEST(ReplyTest, ReadPiecesMergeAndFillTheRestWithData) {
  // Data, data, zero, hole+zero, then the extents stop short of the read.
  std::vector<Extent> ext = {
      {0, 4096, 0}, {4096, 4096, 0}, {8192, 4096, kExtentZero}, {12288, 4096, kHoleFlags}};
  Pieces p;
  ReadPiecesFromExtents(ext, 1000, 20000, &p);
  EXPECT_EQ(
      p, (Pieces{{1000, 7192, false}, {8192, 8192, true}, {16384, 1000 + 20000 - 16384, false}}));
  // The read ends inside the hole: clipped, nothing after it.
  ReadPiecesFromExtents(std::span(ext).subspan(2), 8192, 6000, &p);
  EXPECT_EQ(p, (Pieces{{8192, 6000, true}}));
  // Extents that stop in data: the data piece grows to the end of the read.
  ReadPiecesFromExtents(std::span(ext).first(1), 0, 8192, &p);
  EXPECT_EQ(p, (Pieces{{0, 8192, false}}));
}

TEST(ReplyTest, ReadPiecesStopAtAGapOrAForeignStart) {
  std::vector<Extent> gap = {{0, 4096, kHoleFlags}, {8192, 4096, kHoleFlags}};
  Pieces p;
  ReadPiecesFromExtents(gap, 0, 12288, &p);
  EXPECT_EQ(p, (Pieces{{0, 4096, true}, {4096, 8192, false}}));
  ReadPiecesFromExtents(gap, 5000, 100, &p);  // nothing known at 5000
  EXPECT_TRUE(p.empty());
  ReadPiecesFromExtents({}, 0, 100, &p);
  EXPECT_TRUE(p.empty());
}

TEST(ReplyTest, ReadChunksLayout) {
  std::vector<uint8_t> data(8192, 0xab);
  Pieces pieces = {{4096, 4096, false}, {8192, 4096, true}, {12288, 4096, false}};
  std::vector<uint8_t> headers;
  std::vector<iovec> iov;
  EncodeReadChunks(pieces, 0x1122334455667788ull, 4096, data.data(), &headers, &iov);
  ASSERT_EQ(iov.size(), 5u);
  // Data chunk: header(20) + offset(8), then the bytes from data.
  const auto* h = static_cast<const uint8_t*>(iov[0].iov_base);
  EXPECT_EQ(iov[0].iov_len, 28u);
  EXPECT_EQ(GetBe32(h), kStructuredReplyMagic);
  EXPECT_EQ(GetBe16(h + 4), 0);
  EXPECT_EQ(GetBe16(h + 6), kReplyTypeOffsetData);
  EXPECT_EQ(GetBe64(h + 8), 0x1122334455667788ull);
  EXPECT_EQ(GetBe32(h + 16), 8u + 4096);
  EXPECT_EQ(GetBe64(h + 20), 4096u);
  EXPECT_EQ(iov[1].iov_base, data.data());
  EXPECT_EQ(iov[1].iov_len, 4096u);
  // Hole chunk: header + offset + size, no data.
  h = static_cast<const uint8_t*>(iov[2].iov_base);
  EXPECT_EQ(iov[2].iov_len, 32u);
  EXPECT_EQ(GetBe16(h + 4), 0);
  EXPECT_EQ(GetBe16(h + 6), kReplyTypeOffsetHole);
  EXPECT_EQ(GetBe32(h + 16), 12u);
  EXPECT_EQ(GetBe64(h + 20), 8192u);
  EXPECT_EQ(GetBe32(h + 28), 4096u);
  // The last chunk is flagged done and its data starts 8192 bytes into data.
  h = static_cast<const uint8_t*>(iov[3].iov_base);
  EXPECT_EQ(GetBe16(h + 4), kReplyFlagDone);
  EXPECT_EQ(GetBe64(h + 20), 12288u);
  EXPECT_EQ(iov[4].iov_base, data.data() + 8192);
}

TEST(ReplyTest, BlockStatusChunksLayout) {
  std::vector<uint8_t> out;
  const std::vector<WireExtent> a = {{4096, 0}, {8192, 3}};
  const std::vector<WireExtent> b = {{512, 1}};
  EXPECT_EQ(AppendBlockStatusChunk(&out, 7, kContextIdBaseAllocation, a), 0u);
  const size_t second = AppendBlockStatusChunk(&out, 7, kContextIdBlksnapCbt, b);
  EXPECT_EQ(second, 20u + 4 + 16);
  ASSERT_EQ(out.size(), second + 20 + 4 + 8);
  MarkChunkDone(out.data() + second);
  const uint8_t* h = out.data();
  EXPECT_EQ(GetBe32(h), kStructuredReplyMagic);
  EXPECT_EQ(GetBe16(h + 4), 0);  // only the last chunk is done
  EXPECT_EQ(GetBe16(h + 6), kReplyTypeBlockStatus);
  EXPECT_EQ(GetBe64(h + 8), 7u);
  EXPECT_EQ(GetBe32(h + 16), 4u + 16);
  EXPECT_EQ(GetBe32(h + 20), kContextIdBaseAllocation);
  EXPECT_EQ(GetBe32(h + 24), 4096u);
  EXPECT_EQ(GetBe32(h + 28), 0u);
  EXPECT_EQ(GetBe32(h + 32), 8192u);
  EXPECT_EQ(GetBe32(h + 36), 3u);
  h = out.data() + second;
  EXPECT_EQ(GetBe16(h + 4), kReplyFlagDone);
  EXPECT_EQ(GetBe32(h + 16), 4u + 8);
  EXPECT_EQ(GetBe32(h + 20), kContextIdBlksnapCbt);
  EXPECT_EQ(GetBe32(h + 24), 512u);
  EXPECT_EQ(GetBe32(h + 28), 1u);
}

TEST(ReplyTest, SimpleAndErrorHeaders) {
  uint8_t simple[kSimpleReplyHeaderSize];
  PutSimpleReplyHeader(simple, kNbdEio, 42);
  EXPECT_EQ(GetBe32(simple), kSimpleReplyMagic);
  EXPECT_EQ(GetBe32(simple + 4), kNbdEio);
  EXPECT_EQ(GetBe64(simple + 8), 42u);
  uint8_t err[kErrorChunkHeaderSize];
  PutErrorChunkHeader(err, 42, kNbdEnospc, 11);
  EXPECT_EQ(GetBe16(err + 4), kReplyFlagDone);
  EXPECT_EQ(GetBe16(err + 6), kReplyTypeError);
  EXPECT_EQ(GetBe32(err + 16), 6u + 11);
  EXPECT_EQ(GetBe32(err + 20), kNbdEnospc);
  EXPECT_EQ(GetBe16(err + 24), 11);
}

}  // namespace
}  // namespace blksnap::nbd
