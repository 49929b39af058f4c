#include "blksnap/status.h"

#include <gtest/gtest.h>

namespace blksnap {
namespace {

TEST(StatusTest, OkByDefault) {
  Status s;
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.errnum(), 0);
  EXPECT_EQ(s.ToString(), "OK");
}

TEST(StatusTest, ErrorCarriesErrnoAndMessage) {
  Status s = Status::Error(ENOSPC, "grow storage");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.errnum(), ENOSPC);
  EXPECT_EQ(s.message(), "grow storage");
  EXPECT_EQ(s.ToString(), "grow storage: No space left on device");
  Status copy = s;
  EXPECT_EQ(copy.errnum(), ENOSPC);
}

Result<int> Half(int v) {
  if (v % 2) return Status::Error(EINVAL, "odd");
  return v / 2;
}

Result<int> Quarter(int v) {
  BLKSNAP_ASSIGN_OR_RETURN(int h, Half(v));
  return Half(h);
}

TEST(ResultTest, ValueOrError) {
  EXPECT_EQ(*Quarter(8), 2);
  EXPECT_EQ(Quarter(6).status().errnum(), EINVAL);
  EXPECT_TRUE(Quarter(8).status().ok());
  Result<int> from_ok = Status::Ok();  // misuse turns into an error, never a fake value
  EXPECT_FALSE(from_ok.ok());
}

}  // namespace
}  // namespace blksnap
