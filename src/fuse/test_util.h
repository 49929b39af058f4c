// Helpers shared by the src/fuse unit tests and tests/fuse integration tests.
#pragma once

#include <stdlib.h>
#include <sys/mount.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <span>
#include <string>

#include "blksnap/block_device.h"

namespace blksnap::fuse::testing {

// A buffer aligned for O_DIRECT.
class AlignedBuffer {
 public:
  explicit AlignedBuffer(size_t size, size_t align = 4096) : size_(size) {
    void* p = nullptr;
    if (posix_memalign(&p, align, size == 0 ? align : size) != 0) std::abort();
    data_.reset(static_cast<uint8_t*>(p));
  }
  uint8_t* data() { return data_.get(); }
  size_t size() const { return size_; }
  std::span<uint8_t> span() { return {data_.get(), size_}; }

 private:
  struct Free {
    void operator()(uint8_t* p) const { free(p); }
  };
  std::unique_ptr<uint8_t, Free> data_;
  size_t size_;
};

// Counts calls and remembers the flags of the last write / write-zeroes.
class CountingDevice : public ForwardingDevice {
 public:
  using ForwardingDevice::ForwardingDevice;
  Status Read(uint64_t offset, std::span<uint8_t> buf) override {
    reads++;
    for (uint64_t seen = max_read; buf.size() > seen;)
      if (max_read.compare_exchange_weak(seen, buf.size())) break;
    return ForwardingDevice::Read(offset, buf);
  }
  Status Write(uint64_t offset, std::span<const uint8_t> buf, uint32_t flags) override {
    uint64_t now = ++in_flight;
    for (uint64_t seen = max_in_flight; now > seen;)
      if (max_in_flight.compare_exchange_weak(seen, now)) break;
    struct Leave {
      std::atomic<uint64_t>& n;
      ~Leave() { --n; }
    } leave{in_flight};
    writes++;
    if (flags & kWriteFua) fua_writes++;
    for (uint64_t seen = max_write; buf.size() > seen;)
      if (max_write.compare_exchange_weak(seen, buf.size())) break;
    return ForwardingDevice::Write(offset, buf, flags);
  }
  Status Flush() override {
    flushes++;
    return ForwardingDevice::Flush();
  }
  Status Trim(uint64_t offset, uint64_t length) override {
    trims++;
    return ForwardingDevice::Trim(offset, length);
  }
  Status WriteZeroes(uint64_t offset, uint64_t length, uint32_t flags) override {
    zeroes++;
    last_zero_flags = flags;
    return ForwardingDevice::WriteZeroes(offset, length, flags);
  }

  std::atomic<uint64_t> reads{0}, writes{0}, fua_writes{0}, flushes{0}, trims{0}, zeroes{0};
  std::atomic<uint64_t> max_read{0}, max_write{0};       // largest single request seen
  std::atomic<uint64_t> in_flight{0}, max_in_flight{0};  // concurrent writes
  std::atomic<uint32_t> last_zero_flags{0};
};

// A fresh temporary directory, removed (if empty) on destruction.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/blksnap-fuse-XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  // A mount left on it by a failed test is lazily unmounted first (EINVAL when there is none).
  ~TempDir() {
    umount2(path_.c_str(), MNT_DETACH);
    rmdir(path_.c_str());
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

inline bool IsRoot() { return geteuid() == 0 && access("/dev/fuse", R_OK | W_OK) == 0; }

}  // namespace blksnap::fuse::testing

namespace blksnap::fuse::testing {
inline bool AllZero(std::span<const uint8_t> data) {
  for (uint8_t b : data)
    if (b != 0) return false;
  return true;
}
}  // namespace blksnap::fuse::testing
