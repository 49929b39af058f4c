// FileExtents: walks a file's extent map with the FIEMAP ioctl, a batch of extents per call,
// until the extent flagged FIEMAP_EXTENT_LAST. Stateless; no locking.
#include "cli/fiemap.h"

#include <fcntl.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cstring>
#include <vector>

namespace blksnap::cli {

Result<std::vector<ByteExtent>> FileExtents(const std::string& path, size_t* skipped) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::Error(errno, "cannot open " + path + ": " + std::strerror(errno));
  constexpr uint32_t kBatch = 256;
  std::vector<uint8_t> buf(sizeof(fiemap) + kBatch * sizeof(fiemap_extent));
  std::vector<ByteExtent> out;
  size_t unknown = 0;
  uint64_t start = 0;
  for (;;) {
    std::memset(buf.data(), 0, buf.size());
    auto* fm = reinterpret_cast<fiemap*>(buf.data());
    fm->fm_start = start;
    fm->fm_length = FIEMAP_MAX_OFFSET - start;
    fm->fm_flags = FIEMAP_FLAG_SYNC;
    fm->fm_extent_count = kBatch;
    if (::ioctl(fd, FS_IOC_FIEMAP, fm) != 0) {
      int err = errno;
      ::close(fd);
      return Status::Error(err, "FIEMAP on " + path + ": " + std::strerror(err));
    }
    if (fm->fm_mapped_extents == 0) break;
    bool last = false;
    for (uint32_t i = 0; i < fm->fm_mapped_extents; ++i) {
      const fiemap_extent& e = fm->fm_extents[i];
      if (e.fe_flags & (FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DATA_INLINE |
                        FIEMAP_EXTENT_DATA_TAIL | FIEMAP_EXTENT_ENCODED | FIEMAP_EXTENT_DELALLOC)) {
        ++unknown;
      } else if (e.fe_length > 0) {
        if (!out.empty() && out.back().offset + out.back().length == e.fe_physical) {
          out.back().length += e.fe_length;
        } else {
          out.push_back({e.fe_physical, e.fe_length});
        }
      }
      start = e.fe_logical + e.fe_length;
      if (e.fe_flags & FIEMAP_EXTENT_LAST) last = true;
    }
    if (last) break;
  }
  ::close(fd);
  if (skipped) *skipped = unknown;
  return out;
}

}  // namespace blksnap::cli
