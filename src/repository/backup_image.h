// BackupImage: a backup point as a read-only block device (issue 16, `blksnap repo serve`), so
// the daemon's fronts serve it like a snapshot image: NBD export, FUSE file, loop device —
// instant restore, file-level restore with `mount -o ro`, `qemu-img convert`, booting a VM.
//
// A read is split by chunk: a zero chunk reads as zeroes without any I/O; any other chunk is
// fetched from the repository (Repository::GetChunk checks its digest) and kept in a small LRU
// cache of decoded chunks (`cache_chunks` of them), so sequential and nearby reads fetch each
// chunk once. A damaged or missing chunk fails the reads that touch it (EIO with the chunk's
// message), never returns wrong data. BlockStatus reports zero chunks as holes.
//
// Thread-safe: the cache is guarded by mu_; fetches run without it (two readers of one
// uncached chunk may both fetch it; the second insert is dropped).
#pragma once

#include <cstdint>
#include <list>
#include <memory>
#include <unordered_map>
#include <vector>

#include "blksnap/block_device.h"
#include "repository/index.h"
#include "repository/repository.h"
#include "util/mutex.h"
#include "util/thread_annotations.h"

namespace blksnap::repo {

class BackupImage : public BlockDevice {
 public:
  // The repository must outlive the image (the image shares it).
  BackupImage(std::shared_ptr<Repository> repo, Index index, size_t cache_chunks = 16);

  uint64_t size() const override { return index_.device_size; }
  DeviceCapabilities capabilities() const override;
  Status Read(uint64_t offset, std::span<uint8_t> buf) override;
  Status Write(uint64_t, std::span<const uint8_t>, uint32_t) override { return ReadOnly(); }
  Status Flush() override { return Status::Ok(); }
  Status Trim(uint64_t, uint64_t) override { return ReadOnly(); }
  Status WriteZeroes(uint64_t, uint64_t, uint32_t) override { return ReadOnly(); }
  Result<std::vector<Extent>> BlockStatus(uint64_t offset, uint64_t length) override;

 private:
  static Status ReadOnly() { return Status::Error(EROFS, "a backup image is read-only"); }
  // The decoded chunk `i` (cached or fetched).
  Result<std::shared_ptr<const std::vector<uint8_t>>> Chunk(uint64_t i) EXCLUDES(mu_);

  const std::shared_ptr<Repository> repo_;
  const Index index_;
  const size_t cache_chunks_;
  Mutex mu_;
  std::list<uint64_t> lru_ GUARDED_BY(mu_);  // most recent first
  struct Entry {
    std::shared_ptr<const std::vector<uint8_t>> data;
    std::list<uint64_t>::iterator pos;
  };
  std::unordered_map<uint64_t, Entry> cache_ GUARDED_BY(mu_);
};

}  // namespace blksnap::repo
