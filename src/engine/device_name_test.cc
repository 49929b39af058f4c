// ValidateDeviceName: the one device-name rule (include/blksnap/engine.h).
#include <string>
#include <string_view>

#include "blksnap/engine.h"
#include "engine/engine_test_util.h"

namespace blksnap {
namespace {

TEST(ValidateDeviceNameTest, AcceptsLettersDigitsDashUnderscoreDot) {
  EXPECT_OK(ValidateDeviceName("vol0"));
  EXPECT_OK(ValidateDeviceName("My-Disk_1.img"));
  EXPECT_OK(ValidateDeviceName("..."));
  EXPECT_OK(ValidateDeviceName(std::string(128, 'a')));
}

TEST(ValidateDeviceNameTest, RefusesEverythingElseWithEinval) {
  for (std::string_view bad : {"", ".", "..", "a/b", "a b", "a:b", "é", "a\nb", "-\\", "a@b"}) {
    Status s = ValidateDeviceName(bad);
    EXPECT_EQ(s.errnum(), EINVAL) << "'" << bad << "'";
  }
  EXPECT_EQ(ValidateDeviceName(std::string(129, 'a')).errnum(), EINVAL);
  EXPECT_EQ(ValidateDeviceName(std::string_view("a\0b", 3)).errnum(), EINVAL);
  EXPECT_NE(ValidateDeviceName("a/b").message().find("letters, digits"), std::string::npos);
}

}  // namespace
}  // namespace blksnap
