// Device API tests. Argument checks run everywhere; the rest needs ublk_drv and is skipped
// (GTEST_SKIP) where /dev/ublk-control is missing — tests/ublk/api.sh runs this binary inside
// the VM, where everything runs: Create/Stop, data through /dev/ublkbN checked with the sector
// pattern on the backend, in-process Abandon + Recover, Recover refusing a mismatched backend.
#include "ublk/ublk_device.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "blksnap/io.h"
#include "testing/sector_pattern.h"

namespace blksnap::ublk {
namespace {

constexpr uint64_t kSize = 16 << 20;

class OddBlockDevice : public ForwardingDevice {
 public:
  using ForwardingDevice::ForwardingDevice;
  uint32_t logical_block_size() const override { return 520; }
};

TEST(UblkDeviceTest, DefaultWorkersAreTwoPerCpuFromFourToSixteen) {
  EXPECT_EQ(DefaultWorkersForCpus(1, 64), 4);
  EXPECT_EQ(DefaultWorkersForCpus(2, 64), 4);
  EXPECT_EQ(DefaultWorkersForCpus(3, 64), 6);
  EXPECT_EQ(DefaultWorkersForCpus(5, 64), 10);
  EXPECT_EQ(DefaultWorkersForCpus(8, 64), 16);
  EXPECT_EQ(DefaultWorkersForCpus(9, 64), 16);
  EXPECT_EQ(DefaultWorkersForCpus(100, 64), 16);
  EXPECT_EQ(DefaultWorkersForCpus(0, 64), 4);  // a count that failed
  EXPECT_EQ(DefaultWorkersForCpus(5, 8), 8);   // never more than the queue depth
  EXPECT_EQ(DefaultWorkersForCpus(100, 2), 2);
  // This process's CPUs, and one CPU (a container limited to it).
  cpu_set_t all;
  ASSERT_EQ(sched_getaffinity(0, sizeof(all), &all), 0);
  EXPECT_EQ(DefaultWorkersPerQueue(64), DefaultWorkersForCpus(CPU_COUNT(&all), 64));
  cpu_set_t one;
  CPU_ZERO(&one);
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(c, &all)) {
      CPU_SET(c, &one);
      break;
    }
  }
  ASSERT_EQ(sched_setaffinity(0, sizeof(one), &one), 0);
  EXPECT_EQ(DefaultWorkersPerQueue(64), 4);
  ASSERT_EQ(sched_setaffinity(0, sizeof(all), &all), 0);
}

TEST(UblkDeviceTest, CreateRejectsBadGeometryBeforeTouchingTheKernel) {
  auto odd = std::make_shared<OddBlockDevice>(MakeMemoryDevice(kSize));
  auto device = Device::Create(odd, {});
  ASSERT_FALSE(device.ok());
  EXPECT_EQ(device.status().errnum(), EINVAL);

  DeviceOptions bad;
  bad.queue_depth = 0;
  device = Device::Create(MakeMemoryDevice(kSize), bad);
  ASSERT_FALSE(device.ok());
  EXPECT_EQ(device.status().errnum(), EINVAL);

  bad = {};
  bad.max_io_bytes = 1000;
  device = Device::Create(MakeMemoryDevice(kSize), bad);
  ASSERT_FALSE(device.ok());
  EXPECT_EQ(device.status().errnum(), EINVAL);
}

TEST(UblkDeviceTest, CreateFailsCleanlyWithoutUblk) {
  if (Available()) GTEST_SKIP() << "ublk_drv present";
  auto device = Device::Create(MakeMemoryDevice(kSize), {});
  ASSERT_FALSE(device.ok());
}

// Writes `sectors` stamped sectors at `first` through the block device node with O_DIRECT.
void WriteThroughNode(const std::string& path, uint64_t first, uint64_t sectors, uint64_t seq) {
  int fd = ::open(path.c_str(), O_RDWR | O_DIRECT);
  ASSERT_GE(fd, 0) << path << ": " << std::strerror(errno);
  void* mem = nullptr;
  ASSERT_EQ(posix_memalign(&mem, 4096, sectors * 512), 0);
  std::span<uint8_t> buf(static_cast<uint8_t*>(mem), sectors * 512);
  testing::StampSectors(buf, first, seq);
  EXPECT_EQ(::pwrite(fd, buf.data(), buf.size(), static_cast<off_t>(first * 512)),
            static_cast<ssize_t>(buf.size()));
  EXPECT_EQ(::fsync(fd), 0);
  ::close(fd);
  free(mem);
}

Status ReadThroughNode(const std::string& path, uint64_t first, uint64_t sectors, uint64_t seq) {
  int fd = ::open(path.c_str(), O_RDONLY | O_DIRECT);
  if (fd < 0) return Status::FromErrno("open " + path);
  void* mem = nullptr;
  if (posix_memalign(&mem, 4096, sectors * 512) != 0) return Status::Error(ENOMEM, "memalign");
  std::span<uint8_t> buf(static_cast<uint8_t*>(mem), sectors * 512);
  ssize_t n = ::pread(fd, buf.data(), buf.size(), static_cast<off_t>(first * 512));
  ::close(fd);
  Status status = n == static_cast<ssize_t>(buf.size())
                      ? testing::VerifySectors(buf, first, seq)
                      : Status::Error(EIO, "short read through the ublk node");
  free(mem);
  return status;
}

TEST(UblkDeviceTest, ServesDataAndStops) {
  if (!Available()) GTEST_SKIP() << "no /dev/ublk-control (ublk_drv not loaded)";
  auto backend = MakeMemoryDevice(kSize);
  DeviceOptions options;
  options.queues = 2;
  auto device = Device::Create(backend, options);
  ASSERT_TRUE(device.ok()) << device.status().ToString();
  const std::string path = (*device)->path();
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ((*device)->rdev(), st.st_rdev);

  WriteThroughNode(path, 100, 64, 3);
  std::vector<uint8_t> back(64 * 512);
  ASSERT_TRUE(backend->Read(100 * 512, back).ok());
  EXPECT_TRUE(testing::VerifySectors(back, 100, 3).ok());
  EXPECT_TRUE(ReadThroughNode(path, 100, 64, 3).ok());

  EXPECT_TRUE((*device)->Stop().ok());
  EXPECT_NE(::access(path.c_str(), F_OK), 0) << path << " still exists after Stop()";
  EXPECT_TRUE((*device)->Stop().ok());  // idempotent
}

TEST(UblkDeviceTest, AbandonThenRecoverInProcess) {
  if (!Available()) GTEST_SKIP() << "no /dev/ublk-control (ublk_drv not loaded)";
  auto backend = MakeMemoryDevice(kSize);
  auto device = Device::Create(backend, {});
  ASSERT_TRUE(device.ok()) << device.status().ToString();
  const int id = (*device)->dev_id();
  const std::string path = (*device)->path();
  WriteThroughNode(path, 8, 16, 5);
  (*device)->Abandon();
  device->reset();  // the destructor must not delete an abandoned device
  ASSERT_EQ(::access(path.c_str(), F_OK), 0) << "abandoned device vanished";

  // A backend of another size is refused before recovery starts.
  auto wrong = Device::Recover(id, MakeMemoryDevice(kSize * 2), {});
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.status().errnum(), EINVAL);

  auto recovered = Device::Recover(id, backend, {});
  ASSERT_TRUE(recovered.ok()) << recovered.status().ToString();
  EXPECT_EQ((*recovered)->path(), path);
  EXPECT_TRUE(ReadThroughNode(path, 8, 16, 5).ok());
  WriteThroughNode(path, 40, 8, 6);
  EXPECT_TRUE(ReadThroughNode(path, 40, 8, 6).ok());
  // ~Device stops and deletes it.
  recovered->reset();
  EXPECT_NE(::access(path.c_str(), F_OK), 0);
}

}  // namespace
}  // namespace blksnap::ublk
