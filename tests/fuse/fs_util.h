// Shell and file-system helpers for the tests/fuse integration tests.
#pragma once

#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "fuse/test_util.h"

namespace blksnap::fuse::testing {

// Runs a shell command; returns its exit status and (optionally) its output.
inline int Shell(const std::string& command, std::string* output = nullptr) {
  FILE* p = popen((command + " 2>&1").c_str(), "r");
  if (p == nullptr) return -1;
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof(buf), p)) out.append(buf, n);
  int status = pclose(p);
  if (output != nullptr) *output = out;
  if (status != 0) std::fprintf(stderr, "$ %s\n%s", command.c_str(), out.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

inline bool HaveTool(const std::string& tool) {
  return Shell("command -v " + tool + " >/dev/null") == 0;
}

// A mount of a block device at a fresh directory; lazily unmounted on destruction.
class FsMount {
 public:
  FsMount() = default;
  FsMount(const FsMount&) = delete;
  ~FsMount() { Unmount(); }
  int Mount(const std::string& device, const std::string& options) {
    return Shell("mount -o " + options + " " + device + " " + dir_.path());
  }
  int Unmount() {
    if (!Mounted()) return 0;
    int rc = Shell("umount " + dir_.path());
    if (rc != 0) ::umount2(dir_.path().c_str(), MNT_DETACH);
    return rc;
  }
  bool Mounted() const {
    struct stat self, parent;
    return ::stat(dir_.path().c_str(), &self) == 0 &&
           ::stat((dir_.path() + "/..").c_str(), &parent) == 0 && self.st_dev != parent.st_dev;
  }
  const std::string& path() const { return dir_.path(); }

 private:
  TempDir dir_;
};

inline std::string MkfsCommand(const std::string& fs, const std::string& device) {
  return fs == "xfs" ? "mkfs.xfs -q -f " + device : "mkfs.ext4 -q -F " + device;
}
inline std::string FsckCommand(const std::string& fs, const std::string& device) {
  return fs == "xfs" ? "xfs_repair -n " + device : "e2fsck -fn " + device;
}

// Writes `count` files of 1-4 MiB of random data with O_DIRECT; returns `sha256sum` lines.
inline std::string WriteFiles(const std::string& dir, const std::string& prefix, int count) {
  for (int i = 0; i < count; ++i) {
    std::string file = dir + "/" + prefix + std::to_string(i);
    if (Shell("dd if=/dev/urandom of=" + file + " bs=1M count=" + std::to_string(1 + i % 4) +
              " oflag=direct status=none") != 0)
      return "";
  }
  std::string sums;
  if (Shell("cd " + dir + " && sha256sum " + prefix + "*", &sums) != 0) return "";
  return sums;
}

inline int CheckSums(const std::string& dir, const std::string& sums) {
  std::string file = dir + ".sha256";
  std::ofstream(file) << sums;
  int rc = Shell("cd " + dir + " && sha256sum --quiet -c " + file);
  ::unlink(file.c_str());
  return rc;
}

}  // namespace blksnap::fuse::testing
