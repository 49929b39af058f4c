// Unit tests for ServeRequest: descriptors built by hand (the host kernel has no ublk_drv)
// against a memory device, with a recording layer to check the flags passed down.
#include "ublk/ublk_request.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "blksnap/io.h"
#include "testing/sector_pattern.h"

namespace blksnap::ublk {
namespace {

class RecordingDevice : public ForwardingDevice {
 public:
  using ForwardingDevice::ForwardingDevice;
  Status Write(uint64_t offset, std::span<const uint8_t> buf, uint32_t flags) override {
    last_write_flags = flags;
    return ForwardingDevice::Write(offset, buf, flags);
  }
  Status Flush() override {
    ++flushes;
    return ForwardingDevice::Flush();
  }
  Status Trim(uint64_t offset, uint64_t length) override {
    last_trim = {offset, length};
    return ForwardingDevice::Trim(offset, length);
  }
  Status WriteZeroes(uint64_t offset, uint64_t length, uint32_t flags) override {
    last_zero_flags = flags;
    return ForwardingDevice::WriteZeroes(offset, length, flags);
  }
  uint32_t last_write_flags = ~0u;
  uint32_t last_zero_flags = ~0u;
  int flushes = 0;
  std::pair<uint64_t, uint64_t> last_trim{};
};

ublksrv_io_desc Desc(uint8_t op, uint32_t flags, uint64_t sector, uint32_t sectors) {
  ublksrv_io_desc desc{};
  desc.op_flags = op | (flags);
  desc.start_sector = sector;
  desc.nr_sectors = sectors;
  return desc;
}

constexpr uint64_t kSize = 1 << 20;

TEST(ServeRequestTest, WriteThenReadRoundTripsThePattern) {
  auto device = MakeMemoryDevice(kSize);
  std::vector<uint8_t> buf(8 * 512);
  testing::StampSectors(buf, 16, 7);
  EXPECT_EQ(ServeRequest(*device, Desc(UBLK_IO_OP_WRITE, 0, 16, 8), buf.data()), 8 * 512);
  std::vector<uint8_t> back(8 * 512);
  EXPECT_EQ(ServeRequest(*device, Desc(UBLK_IO_OP_READ, 0, 16, 8), back.data()), 8 * 512);
  EXPECT_TRUE(testing::VerifySectors(back, 16, 7).ok());
}

TEST(ServeRequestTest, FuaMapsToWriteFua) {
  RecordingDevice device(MakeMemoryDevice(kSize));
  std::vector<uint8_t> buf(512, 0xab);
  EXPECT_EQ(ServeRequest(device, Desc(UBLK_IO_OP_WRITE, UBLK_IO_F_FUA, 0, 1), buf.data()), 512);
  EXPECT_EQ(device.last_write_flags, kWriteFua);
  EXPECT_EQ(ServeRequest(device, Desc(UBLK_IO_OP_WRITE, 0, 0, 1), buf.data()), 512);
  EXPECT_EQ(device.last_write_flags, 0u);
}

TEST(ServeRequestTest, FlushDiscardAndWriteZeroes) {
  RecordingDevice device(MakeMemoryDevice(kSize));
  std::vector<uint8_t> buf(4096, 0xcd);
  ASSERT_EQ(ServeRequest(device, Desc(UBLK_IO_OP_WRITE, 0, 8, 8), buf.data()), 4096);
  EXPECT_EQ(ServeRequest(device, Desc(UBLK_IO_OP_FLUSH, 0, 0, 0), nullptr), 0);
  EXPECT_EQ(device.flushes, 1);
  EXPECT_EQ(ServeRequest(device, Desc(UBLK_IO_OP_DISCARD, 0, 8, 8), nullptr), 0);
  EXPECT_EQ(device.last_trim.first, 4096u);
  EXPECT_EQ(device.last_trim.second, 4096u);

  ASSERT_EQ(ServeRequest(device, Desc(UBLK_IO_OP_WRITE, 0, 8, 8), buf.data()), 4096);
  EXPECT_EQ(ServeRequest(device, Desc(UBLK_IO_OP_WRITE_ZEROES, UBLK_IO_F_NOUNMAP, 8, 8), nullptr),
            0);
  EXPECT_EQ(device.last_zero_flags, kZeroNoHole);
  std::vector<uint8_t> back(4096, 0xff);
  ASSERT_EQ(ServeRequest(device, Desc(UBLK_IO_OP_READ, 0, 8, 8), back.data()), 4096);
  EXPECT_EQ(back, std::vector<uint8_t>(4096, 0));
  EXPECT_EQ(ServeRequest(device, Desc(UBLK_IO_OP_WRITE_ZEROES, 0, 8, 8), nullptr), 0);
  EXPECT_EQ(device.last_zero_flags, 0u);
}

TEST(ServeRequestTest, ErrorsBecomeNegativeErrno) {
  auto device = MakeMemoryDevice(kSize);
  std::vector<uint8_t> buf(512);
  // Past the end of the device: the backend refuses with EINVAL.
  EXPECT_EQ(ServeRequest(*device, Desc(UBLK_IO_OP_READ, 0, kSize / 512, 1), buf.data()), -EINVAL);
  EXPECT_EQ(ServeRequest(*device, Desc(UBLK_IO_OP_WRITE_SAME, 0, 0, 1), buf.data()), -EOPNOTSUPP);
}

TEST(UblkUapiTest, DescriptorMapOffsets) {
  // The kernel places queue q's descriptors at q * round_up(4096 * 24, page).
  EXPECT_EQ(QueueDescOffset(0, 4096), 0u);
  EXPECT_EQ(QueueDescOffset(1, 4096), 98304u);
  EXPECT_EQ(QueueDescBytes(64, 4096), 4096u);
  EXPECT_EQ(QueueDescBytes(200, 4096), 8192u);
}

}  // namespace
}  // namespace blksnap::ublk
