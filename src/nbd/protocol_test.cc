// Unit tests: errno mapping, request-header decoding, wire reader bounds, URI encoding.
#include "nbd/protocol.h"

#include <gtest/gtest.h>

#include "nbd/nbd_server.h"

namespace blksnap::nbd {
namespace {

TEST(ProtocolTest, ErrnoMapsOnlyToSpecErrors) {
  EXPECT_EQ(ErrnoToNbdError(0), 0u);
  EXPECT_EQ(ErrnoToNbdError(EPERM), kNbdEperm);
  EXPECT_EQ(ErrnoToNbdError(EROFS), kNbdEperm);
  EXPECT_EQ(ErrnoToNbdError(EACCES), kNbdEperm);
  EXPECT_EQ(ErrnoToNbdError(EIO), kNbdEio);
  EXPECT_EQ(ErrnoToNbdError(ENOMEM), kNbdEnomem);
  EXPECT_EQ(ErrnoToNbdError(EINVAL), kNbdEinval);
  EXPECT_EQ(ErrnoToNbdError(ENOSPC), kNbdEnospc);
  EXPECT_EQ(ErrnoToNbdError(EDQUOT), kNbdEnospc);
  EXPECT_EQ(ErrnoToNbdError(EFBIG), kNbdEnospc);
  EXPECT_EQ(ErrnoToNbdError(EOVERFLOW), kNbdEoverflow);
  EXPECT_EQ(ErrnoToNbdError(ENOTSUP), kNbdEnotsup);
  EXPECT_EQ(ErrnoToNbdError(EOPNOTSUPP), kNbdEnotsup);
  EXPECT_EQ(ErrnoToNbdError(ESHUTDOWN), kNbdEshutdown);
  const uint32_t allowed[] = {kNbdEperm,  kNbdEio,       kNbdEnomem,  kNbdEinval,
                              kNbdEnospc, kNbdEoverflow, kNbdEnotsup, kNbdEshutdown};
  for (int e = 1; e < 200; ++e) {
    const uint32_t v = ErrnoToNbdError(e);
    EXPECT_NE(std::find(std::begin(allowed), std::end(allowed), v), std::end(allowed))
        << "errno " << e << " -> " << v;
  }
}

TEST(ProtocolTest, ParsesRequestHeader) {
  uint8_t b[kRequestHeaderSize];
  PutBe32(b, kRequestMagic);
  PutBe16(b + 4, kCmdFlagFua);
  PutBe16(b + 6, kCmdWrite);
  PutBe64(b + 8, 0x1122334455667788ull);
  PutBe64(b + 16, 4096);
  PutBe32(b + 24, 512);
  Request r;
  ASSERT_TRUE(ParseRequestHeader(std::span<const uint8_t, kRequestHeaderSize>(b), &r));
  EXPECT_EQ(r.flags, kCmdFlagFua);
  EXPECT_EQ(r.type, kCmdWrite);
  EXPECT_EQ(r.cookie, 0x1122334455667788ull);
  EXPECT_EQ(r.offset, 4096u);
  EXPECT_EQ(r.length, 512u);
  b[0] ^= 1;
  EXPECT_FALSE(ParseRequestHeader(std::span<const uint8_t, kRequestHeaderSize>(b), &r));
}

TEST(ProtocolTest, WireRoundTripAndBounds) {
  WireWriter w;
  w.U16(0xabcd);
  w.U32(0x01020304);
  w.U64(0x0102030405060708ull);
  w.Bytes("xy");
  ASSERT_EQ(w.size(), 16u);
  EXPECT_EQ(GetBe64(w.bytes().data() + 6), 0x0102030405060708ull);
  WireReader r(w.bytes());
  uint16_t a;
  uint32_t b;
  std::string s;
  ASSERT_TRUE(r.U16(&a));
  ASSERT_TRUE(r.U32(&b));
  EXPECT_EQ(a, 0xabcd);
  EXPECT_EQ(b, 0x01020304u);
  EXPECT_FALSE(r.String(11, &s));  // would run past the end
  EXPECT_TRUE(r.String(10, &s));
  EXPECT_EQ(r.remaining(), 0u);
  EXPECT_FALSE(r.U16(&a));
}

TEST(ProtocolTest, PercentEncodesExportNames) {
  EXPECT_EQ(PercentEncode("sda@1234-ab", "@"), "sda@1234-ab");
  EXPECT_EQ(PercentEncode("a b/c?d", ""), "a%20b%2Fc%3Fd");
  EXPECT_EQ(PercentEncode("/run/x y.sock", "/"), "/run/x%20y.sock");
  EXPECT_EQ(PercentEncode("\xff", ""), "%FF");
}

}  // namespace
}  // namespace blksnap::nbd
