// Helpers shared by the engine's tests: sector-pattern I/O on any BlockDevice.
#pragma once

#include <gtest/gtest.h>

#include <vector>

#include "blksnap/block_device.h"
#include "testing/sector_pattern.h"

namespace blksnap {

inline Status WritePattern(BlockDevice& dev, uint64_t offset, uint64_t length, uint64_t seq) {
  std::vector<uint8_t> buf(length);
  testing::StampSectors(buf, offset / testing::kSectorSize, seq);
  return dev.Write(offset, buf, 0);
}

inline Status VerifyPattern(BlockDevice& dev, uint64_t offset, uint64_t length, uint64_t seq) {
  std::vector<uint8_t> buf(length);
  BLKSNAP_RETURN_IF_ERROR(dev.Read(offset, buf));
  return testing::VerifySectors(buf, offset / testing::kSectorSize, seq);
}

#define EXPECT_OK(expr)                    \
  do {                                     \
    ::blksnap::Status s_ = (expr);         \
    EXPECT_TRUE(s_.ok()) << s_.ToString(); \
  } while (0)
#define ASSERT_OK(expr)                    \
  do {                                     \
    ::blksnap::Status s_ = (expr);         \
    ASSERT_TRUE(s_.ok()) << s_.ToString(); \
  } while (0)

}  // namespace blksnap
