// ScopedLoop: a loop device over a file for tests (losetup), detached on destruction.
//
// path() is empty when losetup is unavailable (not root, no loop driver): tests then skip.
// Header-only; used by the io, util and engine tests that need a real block device.
#pragma once

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace blksnap {

class ScopedLoop {
 public:
  explicit ScopedLoop(const std::string& backing, uint32_t sector_size = 512) {
    if (::geteuid() != 0) return;
    const std::string cmd = "losetup --find --show --sector-size " + std::to_string(sector_size) +
                            " " + backing + " 2>/dev/null";
    FILE* p = ::popen(cmd.c_str(), "r");
    if (!p) return;
    char line[256] = {};
    if (std::fgets(line, sizeof(line), p)) path_ = line;
    if (::pclose(p) != 0) path_.clear();
    while (!path_.empty() && (path_.back() == '\n' || path_.back() == ' ')) path_.pop_back();
  }
  ~ScopedLoop() { Detach(); }
  ScopedLoop(const ScopedLoop&) = delete;
  ScopedLoop& operator=(const ScopedLoop&) = delete;

  // Detaches now (idempotent); true on success.
  // The kernel defers the unbind while someone (udev probing a new device) still has it open:
  // wait until sysfs no longer shows a backing file, so a test that checks "no loop is bound
  // any more" right after does not race udev.
  bool Detach() {
    if (path_.empty()) return true;
    const bool ok = std::system(("losetup -d " + path_).c_str()) == 0;
    const std::string backing =
        "/sys/block/" + path_.substr(path_.rfind('/') + 1) + "/loop/backing_file";
    for (int i = 0; i < 500 && ::access(backing.c_str(), F_OK) == 0; ++i) ::usleep(10000);
    path_.clear();
    return ok;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace blksnap
