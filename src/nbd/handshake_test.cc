// Unit tests for the handshake, fed from memory: every option, errors, and hostile input.
#include "nbd/handshake.h"

#include <gtest/gtest.h>

#include "blksnap/io.h"
#include "nbd/test_util.h"

namespace blksnap::nbd {
namespace {

using test::ClientBytes;
using test::MapHost;
using test::OptReply;
using test::ParseOptReplies;

struct HsRun {
  Result<Negotiated> result = Status::Error(EIO, "not run");
  std::vector<uint8_t> out;
  std::vector<OptReply> replies;
  size_t end = 0;
};

HsRun RunHandshake(MapHost& host, const std::vector<uint8_t>& in) {
  HsRun r;
  std::unique_ptr<Transport> t = std::make_unique<MemoryTransport>(in);
  auto* mem = static_cast<MemoryTransport*>(t.get());
  InputBuffer buf;
  r.result = Handshake(host, t, buf).Run();
  r.out = mem->output();
  r.replies = ParseOptReplies(r.out, &r.end);
  return r;
}

class HandshakeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    host_.Add("disk@1234", MakeMemoryDevice(1 << 20), ExportOptions{"first disk", false, nullptr});
    host_.Add("ro", MakeMemoryDevice(4096), ExportOptions{"", true, nullptr});
  }
  MapHost host_;
};

TEST_F(HandshakeTest, GreetingThenGoEntersTransmission) {
  ClientBytes c;
  c.Flags(kClientFlagFixedNewstyle | kClientFlagNoZeroes)
      .Option(kOptGo, ClientBytes::InfoGo("disk@1234", {kInfoName, kInfoDescription}));
  HsRun r = RunHandshake(host_, c.bytes());
  ASSERT_TRUE(r.result.ok()) << r.result.status().ToString();
  EXPECT_EQ(GetBe64(r.out.data()), kNbdMagic);
  EXPECT_EQ(GetBe64(r.out.data() + 8), kIHaveOpt);
  EXPECT_EQ(GetBe16(r.out.data() + 16), kFlagFixedNewstyle | kFlagNoZeroes);
  ASSERT_EQ(r.replies.size(), 5u);  // export, name, description, block size, ack
  EXPECT_EQ(r.replies[0].type, kRepInfo);
  EXPECT_EQ(GetBe16(r.replies[0].data.data()), kInfoExport);
  EXPECT_EQ(GetBe64(r.replies[0].data.data() + 2), 1u << 20);
  const uint16_t flags = GetBe16(r.replies[0].data.data() + 10);
  EXPECT_TRUE(flags & kTxHasFlags);
  EXPECT_FALSE(flags & kTxReadOnly);
  EXPECT_TRUE(flags & kTxSendFlush);
  EXPECT_EQ(std::string(r.replies[2].data.begin() + 2, r.replies[2].data.end()), "first disk");
  EXPECT_EQ(GetBe16(r.replies[3].data.data()), kInfoBlockSize);
  EXPECT_EQ(GetBe32(r.replies[3].data.data() + 2), 1u);
  EXPECT_EQ(GetBe32(r.replies[3].data.data() + 6), 4096u);
  EXPECT_EQ(GetBe32(r.replies[3].data.data() + 10), 32u << 20);
  EXPECT_EQ(r.replies[4].type, kRepAck);
  EXPECT_EQ(r.result->entry->name, "disk@1234");
}

TEST_F(HandshakeTest, ListInfoUnknownOptionAndReadOnly) {
  ClientBytes c;
  c.Flags(kClientFlagFixedNewstyle)
      .Option(kOptList)
      .Option(99, {1, 2, 3})
      .Option(kOptInfo, ClientBytes::InfoGo("nope"))
      .Option(kOptInfo, ClientBytes::InfoGo("ro"))
      .Option(kOptAbort);
  HsRun r = RunHandshake(host_, c.bytes());
  EXPECT_EQ(r.result.status().errnum(), ECONNABORTED);
  ASSERT_EQ(r.replies.size(), 9u);
  EXPECT_EQ(r.replies[0].type, kRepServer);
  EXPECT_EQ(GetBe32(r.replies[0].data.data()), 9u);
  EXPECT_EQ(std::string(r.replies[0].data.begin() + 4, r.replies[0].data.begin() + 13),
            "disk@1234");
  EXPECT_EQ(std::string(r.replies[0].data.begin() + 13, r.replies[0].data.end()), "first disk");
  EXPECT_EQ(r.replies[1].type, kRepServer);
  EXPECT_EQ(r.replies[2].type, kRepAck);
  EXPECT_EQ(r.replies[3].option, 99u);
  EXPECT_EQ(r.replies[3].type, kRepErrUnsup);
  EXPECT_EQ(r.replies[4].type, kRepErrUnknown);
  EXPECT_EQ(r.replies[5].type, kRepInfo);
  EXPECT_TRUE(GetBe16(r.replies[5].data.data() + 10) & kTxReadOnly);
  EXPECT_EQ(r.replies[8].option, kOptAbort);
  EXPECT_EQ(r.replies[8].type, kRepAck);
}

TEST_F(HandshakeTest, MetaContextsNeedStructuredReplies) {
  ClientBytes c;
  c.Flags(kClientFlagFixedNewstyle)
      .Option(kOptSetMetaContext, ClientBytes::Meta("disk@1234", {"base:allocation"}))
      .Option(kOptStructuredReply)
      .Option(kOptListMetaContext, ClientBytes::Meta("disk@1234", {}))
      .Option(kOptSetMetaContext,
              ClientBytes::Meta("disk@1234", {"base:allocation", "blksnap:cbt", "x-foo:bar"}))
      .Option(kOptGo, ClientBytes::InfoGo("disk@1234"));
  HsRun r = RunHandshake(host_, c.bytes());
  ASSERT_TRUE(r.result.ok());
  EXPECT_EQ(r.replies[0].type, kRepErrInvalid);
  EXPECT_EQ(r.replies[1].type, kRepAck);
  EXPECT_EQ(r.replies[2].type, kRepMetaContext);  // list: base:allocation only (no CBT source)
  EXPECT_EQ(std::string(r.replies[2].data.begin() + 4, r.replies[2].data.end()), "base:allocation");
  EXPECT_EQ(r.replies[3].type, kRepAck);
  EXPECT_EQ(r.replies[4].type, kRepMetaContext);
  EXPECT_EQ(GetBe32(r.replies[4].data.data()), kContextIdBaseAllocation);
  EXPECT_EQ(r.replies[5].type, kRepAck);
  EXPECT_TRUE(r.result->structured);
  EXPECT_TRUE(r.result->base_allocation);
  EXPECT_FALSE(r.result->cbt);
  EXPECT_TRUE(r.result->tx_flags & kTxSendDf);
}

TEST_F(HandshakeTest, MetaContextForOtherExportIsNotUsed) {
  ClientBytes c;
  c.Flags(kClientFlagFixedNewstyle)
      .Option(kOptStructuredReply)
      .Option(kOptSetMetaContext, ClientBytes::Meta("ro", {"base:allocation"}))
      .Option(kOptGo, ClientBytes::InfoGo("disk@1234"));
  HsRun r = RunHandshake(host_, c.bytes());
  ASSERT_TRUE(r.result.ok());
  EXPECT_FALSE(r.result->base_allocation);
}

TEST_F(HandshakeTest, ExportNameWithAndWithoutZeroes) {
  for (bool no_zeroes : {false, true}) {
    ClientBytes c;
    std::vector<uint8_t> name = {'r', 'o'};
    c.Flags(kClientFlagFixedNewstyle | (no_zeroes ? kClientFlagNoZeroes : 0))
        .Option(kOptExportName, name);
    HsRun r = RunHandshake(host_, c.bytes());
    ASSERT_TRUE(r.result.ok());
    EXPECT_EQ(r.out.size(), 18u + 10u + (no_zeroes ? 0u : 124u));
    EXPECT_EQ(GetBe64(r.out.data() + 18), 4096u);
  }
  ClientBytes bad;
  bad.Flags(kClientFlagFixedNewstyle).Option(kOptExportName, {'x'});
  EXPECT_FALSE(RunHandshake(host_, bad.bytes()).result.ok());
}

TEST_F(HandshakeTest, HostileInput) {
  // Unknown client flags.
  EXPECT_EQ(RunHandshake(host_, ClientBytes().Flags(0x80).bytes()).result.status().errnum(),
            EPROTO);
  // Wrong option magic.
  ClientBytes wrong;
  wrong.Flags(1).Raw(std::vector<uint8_t>(16, 0x41));
  EXPECT_EQ(RunHandshake(host_, wrong.bytes()).result.status().errnum(), EPROTO);
  // Truncated everywhere: every prefix of a valid exchange ends in an error, never a crash.
  ClientBytes full;
  full.Flags(1).Option(kOptStructuredReply).Option(kOptGo, ClientBytes::InfoGo("disk@1234"));
  for (size_t n = 0; n < full.bytes().size(); ++n) {
    std::vector<uint8_t> prefix(full.bytes().begin(), full.bytes().begin() + n);
    EXPECT_FALSE(RunHandshake(host_, prefix).result.ok()) << n;
  }
  // Oversized option: skipped and answered ERR_TOO_BIG, then negotiation continues.
  ClientBytes big;
  big.Flags(1).Option(kOptList, std::vector<uint8_t>(kMaxOptionLength + 1)).Option(kOptAbort);
  HsRun r = RunHandshake(host_, big.bytes());
  ASSERT_EQ(r.replies.size(), 2u);
  EXPECT_EQ(r.replies[0].type, kRepErrTooBig);
  // Lengths inside INFO that lie.
  std::vector<uint8_t> lie = ClientBytes::InfoGo("disk@1234");
  PutBe32(lie.data(), 1000);
  ClientBytes l;
  l.Flags(1).Option(kOptInfo, lie).Option(kOptAbort);
  r = RunHandshake(host_, l.bytes());
  ASSERT_GE(r.replies.size(), 1u);
  EXPECT_EQ(r.replies[0].type, kRepErrInvalid);
}

TEST_F(HandshakeTest, ForcedTlsRefusesEverythingButStartTls) {
  host_.forced_ = true;
  ClientBytes c;
  c.Flags(1).Option(kOptList).Option(kOptGo, ClientBytes::InfoGo("ro")).Option(kOptStartTls);
  HsRun r = RunHandshake(host_, c.bytes());
  ASSERT_EQ(r.replies.size(), 3u);
  EXPECT_EQ(r.replies[0].type, kRepErrTlsReqd);
  EXPECT_EQ(r.replies[1].type, kRepErrTlsReqd);
  EXPECT_EQ(r.replies[2].type, kRepErrUnsup);  // this host has no TLS context
  ClientBytes e;
  e.Flags(1).Option(kOptExportName, {'r', 'o'});
  EXPECT_FALSE(RunHandshake(host_, e.bytes()).result.ok());
}

}  // namespace
}  // namespace blksnap::nbd
