#include "engine/buffer_pool.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

namespace blksnap {
namespace {

TEST(BufferPoolTest, RecyclesUpToTheBoundAndUnmapsTheRest) {
  BufferPool pool(256 * 1024, 2);
  std::vector<uint8_t*> buffers;
  for (int i = 0; i < 5; ++i) {
    uint8_t* b = pool.Get();
    ASSERT_NE(b, nullptr);
    std::memset(b, i, pool.buffer_size());  // the whole buffer is usable
    buffers.push_back(b);
  }
  for (uint8_t* b : buffers) pool.Put(b);
  EXPECT_EQ(pool.free_count(), 2u);
  uint8_t* again = pool.Get();
  EXPECT_TRUE(again == buffers[0] || again == buffers[1]);
  EXPECT_EQ(pool.free_count(), 1u);
  pool.Put(again);
  pool.Put(nullptr);
  EXPECT_EQ(pool.free_count(), 2u);
}

}  // namespace
}  // namespace blksnap
