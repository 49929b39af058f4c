// Unit tests for the transmission phase over a socketpair: every command, flags, errors,
// structured reads with holes, block status, out-of-order safety and disconnects.
#include "nbd/session.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <set>
#include <thread>

#include "blksnap/io.h"
#include "nbd/test_util.h"
#include "testing/sector_pattern.h"

namespace blksnap::nbd {
namespace {

using test::ClientBytes;

using test::FixedCbt;

struct Chunk {
  uint16_t flags = 0, type = 0;
  uint64_t cookie = 0;
  std::vector<uint8_t> payload;
};

class SessionTest : public ::testing::Test {
 protected:
  void Start(bool structured, bool read_only = false, int workers = 4) {
    device_ = MakeMemoryDevice(kSize);
    entry_ = std::make_shared<ExportEntry>();
    entry_->name = "d";
    entry_->device = device_;
    entry_->options.read_only = read_only;
    entry_->options.cbt = std::make_shared<FixedCbt>(std::vector<uint8_t>{0, 0, 2, 2, 1, 0, 0, 7});
    Negotiated n;
    n.entry = entry_;
    n.structured = structured;
    n.base_allocation = structured;
    n.cbt = structured;
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    client_ = sv[0];
    transport_ = std::make_unique<SocketTransport>(Fd(sv[1]));
    SessionLimits limits;
    limits.max_workers = workers;
    server_ = std::thread([this, n, limits] { Session(*transport_, in_, n, limits).Run(); });
  }
  void TearDown() override {
    if (client_ >= 0) {
      Send(ClientBytes().Request(kCmdDisc, 0, 0, 0).bytes());
      server_.join();
      close(client_);
    }
  }
  static constexpr uint64_t kSize = 512 << 10;

  void Send(const std::vector<uint8_t>& b) {
    ASSERT_EQ(write(client_, b.data(), b.size()), static_cast<ssize_t>(b.size()));
  }
  std::vector<uint8_t> ReadN(size_t n) {
    std::vector<uint8_t> b(n);
    size_t got = 0;
    while (got < n) {
      ssize_t r = read(client_, b.data() + got, n - got);
      if (r <= 0) break;
      got += r;
    }
    b.resize(got);
    return b;
  }
  // Simple reply: returns error; data (if any) of `len` bytes into *data.
  uint32_t ReadSimple(uint64_t cookie, size_t len = 0, std::vector<uint8_t>* data = nullptr) {
    auto h = ReadN(16);
    EXPECT_EQ(GetBe32(h.data()), kSimpleReplyMagic);
    EXPECT_EQ(GetBe64(h.data() + 8), cookie);
    uint32_t err = GetBe32(h.data() + 4);
    if (err == 0 && len && data) *data = ReadN(len);
    return err;
  }
  Chunk ReadChunk() {
    auto h = ReadN(20);
    Chunk c;
    EXPECT_EQ(GetBe32(h.data()), kStructuredReplyMagic);
    c.flags = GetBe16(h.data() + 4);
    c.type = GetBe16(h.data() + 6);
    c.cookie = GetBe64(h.data() + 8);
    c.payload = ReadN(GetBe32(h.data() + 16));
    return c;
  }
  std::vector<Chunk> ReadReply() {
    std::vector<Chunk> v;
    do v.push_back(ReadChunk());
    while (!(v.back().flags & kReplyFlagDone));
    return v;
  }
  std::vector<uint8_t> Stamped(uint64_t offset, size_t len, uint64_t seq) {
    std::vector<uint8_t> b(len);
    blksnap::testing::StampSectors(b, offset / 512, seq);
    return b;
  }

  std::shared_ptr<BlockDevice> device_;
  std::shared_ptr<ExportEntry> entry_;
  std::unique_ptr<SocketTransport> transport_;
  InputBuffer in_;
  std::thread server_;
  int client_ = -1;
};

TEST_F(SessionTest, SimpleWriteReadFlushTrimZero) {
  Start(false);
  auto data = Stamped(8192, 8192, 1);
  Send(ClientBytes().Request(kCmdWrite, 1, 8192, 8192, kCmdFlagFua).Raw(data).bytes());
  EXPECT_EQ(ReadSimple(1), 0u);
  Send(ClientBytes().Request(kCmdRead, 2, 8192, 8192).bytes());
  std::vector<uint8_t> back;
  EXPECT_EQ(ReadSimple(2, 8192, &back), 0u);
  EXPECT_TRUE(blksnap::testing::VerifySectors(back, 16, 1).ok());
  Send(ClientBytes().Request(kCmdFlush, 3, 0, 0).bytes());
  EXPECT_EQ(ReadSimple(3), 0u);
  Send(ClientBytes().Request(kCmdWriteZeroes, 4, 8192, 4096, kCmdFlagNoHole).bytes());
  EXPECT_EQ(ReadSimple(4), 0u);
  Send(ClientBytes().Request(kCmdRead, 5, 8192, 4096).bytes());
  EXPECT_EQ(ReadSimple(5, 4096, &back), 0u);
  EXPECT_EQ(back, std::vector<uint8_t>(4096, 0));
  Send(ClientBytes().Request(kCmdTrim, 6, 0, 4096).bytes());
  EXPECT_EQ(ReadSimple(6), 0u);
  Send(ClientBytes().Request(kCmdCache, 7, 0, 4096).bytes());
  EXPECT_EQ(ReadSimple(7), 0u);
}

TEST_F(SessionTest, ErrorsUseSpecCodes) {
  Start(false);
  Send(ClientBytes().Request(kCmdRead, 1, kSize - 512, 1024).bytes());
  EXPECT_EQ(ReadSimple(1), kNbdEinval);
  Send(ClientBytes().Request(kCmdWrite, 2, kSize, 512).Raw(std::vector<uint8_t>(512)).bytes());
  EXPECT_EQ(ReadSimple(2), kNbdEnospc);
  Send(ClientBytes().Request(kCmdWriteZeroes, 3, UINT64_MAX - 10, 512).bytes());
  EXPECT_EQ(ReadSimple(3), kNbdEnospc);
  Send(ClientBytes().Request(kCmdTrim, 4, kSize, 1).bytes());
  EXPECT_EQ(ReadSimple(4), kNbdEinval);
  Send(ClientBytes().Request(42, 5, 0, 0).bytes());
  EXPECT_EQ(ReadSimple(5), kNbdEinval);
  Send(ClientBytes().Request(kCmdRead, 6, 0, 512, 1u << 12).bytes());  // unknown flag
  EXPECT_EQ(ReadSimple(6), kNbdEinval);
  Send(ClientBytes().Request(kCmdBlockStatus, 7, 0, 512).bytes());  // no structured replies
  EXPECT_EQ(ReadSimple(7), kNbdEinval);
  Send(ClientBytes().Request(kCmdRead, 8, 0, kMaxPayload + 1).bytes());
  EXPECT_EQ(ReadSimple(8), kNbdEinval);
  // An oversized write's payload is consumed; the connection stays in sync.
  std::vector<uint8_t> big(kMaxPayload + 4096, 0xaa);
  std::thread writer([&] {
    Send(
        ClientBytes().Request(kCmdWrite, 9, 0, static_cast<uint32_t>(big.size())).Raw(big).bytes());
  });
  EXPECT_EQ(ReadSimple(9), kNbdEinval);
  writer.join();
  Send(ClientBytes().Request(kCmdRead, 10, 0, 512).bytes());
  std::vector<uint8_t> back;
  EXPECT_EQ(ReadSimple(10, 512, &back), 0u);
  EXPECT_EQ(back, std::vector<uint8_t>(512, 0));
}

TEST_F(SessionTest, ReadOnlyRefusesWritesWithEperm) {
  Start(false, true);
  Send(ClientBytes().Request(kCmdWrite, 1, 0, 512).Raw(std::vector<uint8_t>(512, 1)).bytes());
  EXPECT_EQ(ReadSimple(1), kNbdEperm);
  Send(ClientBytes().Request(kCmdTrim, 2, 0, 512).bytes());
  EXPECT_EQ(ReadSimple(2), kNbdEperm);
  Send(ClientBytes().Request(kCmdWriteZeroes, 3, 0, 512).bytes());
  EXPECT_EQ(ReadSimple(3), kNbdEperm);
  Send(ClientBytes().Request(kCmdRead, 4, 0, 512).bytes());
  std::vector<uint8_t> back;
  EXPECT_EQ(ReadSimple(4, 512, &back), 0u);
}

TEST_F(SessionTest, StructuredReadReportsHoles) {
  Start(true);
  auto data = Stamped(65536, 4096, 7);
  Send(ClientBytes().Request(kCmdWrite, 1, 65536, 4096).Raw(data).bytes());
  ASSERT_EQ(ReadReply().back().type, kReplyTypeNone);
  Send(ClientBytes().Request(kCmdRead, 2, 0, 256 << 10).bytes());
  auto chunks = ReadReply();
  // Reassemble and check that at least one hole chunk was used.
  std::vector<uint8_t> img(256 << 10, 0xee);
  bool saw_hole = false;
  for (const Chunk& c : chunks) {
    EXPECT_EQ(c.cookie, 2u);
    const uint64_t off = GetBe64(c.payload.data());
    if (c.type == kReplyTypeOffsetHole) {
      saw_hole = true;
      std::fill_n(img.begin() + off, GetBe32(c.payload.data() + 8), 0);
    } else {
      ASSERT_EQ(c.type, kReplyTypeOffsetData);
      std::copy(c.payload.begin() + 8, c.payload.end(), img.begin() + off);
    }
  }
  EXPECT_TRUE(saw_hole);
  EXPECT_EQ(img[0], 0);
  EXPECT_TRUE(blksnap::testing::VerifySectors(std::span(img).subspan(65536, 4096), 128, 7).ok());
  EXPECT_EQ(img[(256 << 10) - 1], 0);
  // DF: exactly one data chunk.
  Send(ClientBytes().Request(kCmdRead, 3, 0, 128 << 10, kCmdFlagDf).bytes());
  chunks = ReadReply();
  ASSERT_EQ(chunks.size(), 1u);
  EXPECT_EQ(chunks[0].type, kReplyTypeOffsetData);
  EXPECT_EQ(chunks[0].payload.size(), 8u + (128 << 10));
  // Errors are error chunks.
  Send(ClientBytes().Request(kCmdRead, 4, kSize, 512).bytes());
  chunks = ReadReply();
  ASSERT_EQ(chunks.size(), 1u);
  EXPECT_EQ(chunks[0].type, kReplyTypeError);
  EXPECT_EQ(GetBe32(chunks[0].payload.data()), kNbdEinval);
}

TEST_F(SessionTest, BlockStatusBothContextsAndReqOne) {
  Start(true);
  Send(ClientBytes().Request(kCmdWrite, 1, 0, 4096).Raw(Stamped(0, 4096, 1)).bytes());
  ReadReply();
  Send(ClientBytes().Request(kCmdBlockStatus, 2, 0, kSize).bytes());
  auto chunks = ReadReply();
  ASSERT_EQ(chunks.size(), 2u);
  std::map<uint32_t, std::vector<std::pair<uint32_t, uint32_t>>> by_ctx;
  for (auto& c : chunks) {
    ASSERT_EQ(c.type, kReplyTypeBlockStatus);
    uint32_t id = GetBe32(c.payload.data());
    for (size_t p = 4; p + 8 <= c.payload.size(); p += 8) {
      by_ctx[id].push_back({GetBe32(c.payload.data() + p), GetBe32(c.payload.data() + p + 4)});
    }
  }
  ASSERT_FALSE(by_ctx[kContextIdBaseAllocation].empty());
  EXPECT_EQ(by_ctx[kContextIdBaseAllocation][0].second & kExtentHole, 0u);
  const std::vector<std::pair<uint32_t, uint32_t>> cbt = {
      {131072, 0}, {131072, 2}, {65536, 1}, {131072, 0}, {65536, 7}};
  EXPECT_EQ(by_ctx[kContextIdBlksnapCbt], cbt);
  // REQ_ONE: one extent per context, never longer than the request.
  Send(ClientBytes().Request(kCmdBlockStatus, 3, 70000, 100000, kCmdFlagReqOne).bytes());
  chunks = ReadReply();
  ASSERT_EQ(chunks.size(), 2u);
  for (auto& c : chunks) {
    ASSERT_EQ(c.payload.size(), 12u);
    EXPECT_LE(GetBe32(c.payload.data() + 4), 100000u);
    if (GetBe32(c.payload.data()) == kContextIdBlksnapCbt) {
      EXPECT_EQ(GetBe32(c.payload.data() + 4), 131072u - 70000u);
      EXPECT_EQ(GetBe32(c.payload.data() + 8), 0u);
    }
  }
  // Past the end: EINVAL.
  Send(ClientBytes().Request(kCmdBlockStatus, 4, kSize, 1).bytes());
  chunks = ReadReply();
  EXPECT_EQ(chunks[0].type, kReplyTypeError);
}

TEST_F(SessionTest, FastZeroIsRefusedOrDone) {
  Start(true);
  Send(ClientBytes().Request(kCmdWriteZeroes, 1, 0, 65536, kCmdFlagFastZero).bytes());
  auto chunks = ReadReply();
  // The memory device does fast zeroes.
  EXPECT_EQ(chunks.back().type, kReplyTypeNone);
}

TEST_F(SessionTest, ManyPipelinedRequestsAllAnswered) {
  Start(true, false, 8);
  constexpr int kN = 120;  // distinct 4 KiB blocks: overlapping in-flight writes are unordered
  ClientBytes c;
  for (int i = 0; i < kN; ++i) {
    const uint64_t off = static_cast<uint64_t>(i) * 4096;
    c.Request(kCmdWrite, 1000 + i, off, 4096).Raw(Stamped(off, 4096, 5));
  }
  std::thread writer([&] { Send(c.bytes()); });
  std::set<uint64_t> cookies;
  for (int i = 0; i < kN; ++i) {
    auto chunks = ReadReply();
    EXPECT_EQ(chunks.back().type, kReplyTypeNone);
    cookies.insert(chunks.back().cookie);
  }
  writer.join();
  EXPECT_EQ(cookies.size(), static_cast<size_t>(kN));
  std::vector<uint8_t> all(kN * 4096);
  ASSERT_TRUE(device_->Read(0, all).ok());
  EXPECT_TRUE(blksnap::testing::VerifySectors(all, 0, 5).ok());
}

// Replies of many workers share the socket (session.cc, "Replies"): small ones are queued for
// the thread sending, large ones wait for it. With the client not reading for a while, the
// socket fills, the queue reaches its cap and workers wait: every reply must still arrive
// exactly once and whole (simple replies have no framing, so one interleaved byte breaks the
// parse or the data check).
TEST_F(SessionTest, RepliesOfManyWorkersArriveWholeAndOnceEach) {
  Start(false, false, 16);
  timeval tv{10, 0};  // a lost reply fails the test instead of hanging it
  ASSERT_EQ(setsockopt(client_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv), 0);
  Send(ClientBytes().Request(kCmdWrite, 1, 0, kSize).Raw(Stamped(0, kSize, 5)).bytes());
  ASSERT_EQ(ReadSimple(1), 0u);
  constexpr int kN = 600;
  const uint32_t sizes[] = {512, 4096, 4096, 65536, 512, 131072};
  std::map<uint64_t, std::pair<uint64_t, uint32_t>> asked;  // cookie -> (offset, length)
  ClientBytes c;
  for (int i = 0; i < kN; ++i) {
    const uint32_t len = sizes[i % 6];
    const uint64_t off = (static_cast<uint64_t>(i) * 7919 * 512) % (kSize - len + 512) / 512 * 512;
    const uint64_t cookie = 100 + i;
    if (i % 10 == 9) {
      c.Request(kCmdFlush, cookie, 0, 0);
      asked[cookie] = {0, 0};
    } else {
      c.Request(kCmdRead, cookie, off, len);
      asked[cookie] = {off, len};
    }
  }
  std::thread writer([&] { Send(c.bytes()); });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // let the socket fill up
  std::set<uint64_t> seen;
  for (int i = 0; i < kN; ++i) {
    auto h = ReadN(16);
    ASSERT_EQ(h.size(), 16u);
    ASSERT_EQ(GetBe32(h.data()), kSimpleReplyMagic) << "reply " << i;
    ASSERT_EQ(GetBe32(h.data() + 4), 0u);
    const uint64_t cookie = GetBe64(h.data() + 8);
    auto it = asked.find(cookie);
    ASSERT_NE(it, asked.end()) << "unknown cookie " << cookie;
    ASSERT_TRUE(seen.insert(cookie).second) << "cookie " << cookie << " answered twice";
    const auto [off, len] = it->second;
    if (len == 0) continue;
    auto data = ReadN(len);
    ASSERT_EQ(data.size(), len);
    ASSERT_TRUE(blksnap::testing::VerifySectors(data, off / 512, 5).ok()) << "cookie " << cookie;
  }
  writer.join();
  EXPECT_EQ(seen.size(), static_cast<size_t>(kN));
}

TEST_F(SessionTest, BadMagicDropsTheConnection) {
  Start(true);
  Send(std::vector<uint8_t>(28, 0x55));
  server_.join();
  EXPECT_TRUE(ReadN(1).empty());
  close(client_);
  client_ = -1;
}

TEST_F(SessionTest, ClientVanishingMidReplyIsHarmless) {
  Start(true);
  Send(ClientBytes().Request(kCmdRead, 1, 0, 256 << 10, kCmdFlagDf).bytes());
  close(client_);
  client_ = -1;
  server_.join();
}

}  // namespace
}  // namespace blksnap::nbd
