// BackupImage: see backup_image.h.
#include "repository/backup_image.h"

#include <algorithm>
#include <cstring>

namespace blksnap::repo {

BackupImage::BackupImage(std::shared_ptr<Repository> repo, Index index, size_t cache_chunks)
    : repo_(std::move(repo)),
      index_(std::move(index)),
      cache_chunks_(std::max<size_t>(1, cache_chunks)) {}

DeviceCapabilities BackupImage::capabilities() const {
  DeviceCapabilities c;
  c.read_only = true;
  c.flush = false;
  c.fua = false;
  c.trim = false;
  c.write_zeroes = false;
  c.block_status = true;
  return c;
}

Result<std::shared_ptr<const std::vector<uint8_t>>> BackupImage::Chunk(uint64_t i) {
  {
    MutexLock lock(mu_);
    auto it = cache_.find(i);
    if (it != cache_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second.pos);
      return it->second.data;
    }
  }
  auto fetched = repo_->GetChunk(index_.chunks[i]);
  if (!fetched.ok()) return Status::Error(EIO, std::string(fetched.status().message()));
  const uint64_t offset = i * index_.chunk_size;
  const uint64_t length = std::min(index_.chunk_size, index_.device_size - offset);
  if (fetched->size() != length) {
    return Status::Error(EIO, "chunk " + index_.chunks[i].Hex() + " has " +
                                  std::to_string(fetched->size()) + " bytes, not " +
                                  std::to_string(length));
  }
  auto data = std::make_shared<const std::vector<uint8_t>>(std::move(fetched).value());
  MutexLock lock(mu_);
  if (cache_.count(i) == 0) {
    lru_.push_front(i);
    cache_[i] = Entry{data, lru_.begin()};
    if (cache_.size() > cache_chunks_) {
      cache_.erase(lru_.back());
      lru_.pop_back();
    }
  }
  return data;
}

Status BackupImage::Read(uint64_t offset, std::span<uint8_t> buf) {
  if (offset > size() || buf.size() > size() - offset) {
    return Status::Error(EINVAL, "read beyond the end of the backup image");
  }
  const uint64_t chunk = index_.chunk_size;
  uint64_t done = 0;
  while (done < buf.size()) {
    const uint64_t pos = offset + done;
    const uint64_t i = pos / chunk;
    const uint64_t in_chunk = pos % chunk;
    const uint64_t n = std::min<uint64_t>(buf.size() - done, chunk - in_chunk);
    if (index_.chunks[i].IsZero()) {
      std::memset(buf.data() + done, 0, n);
    } else {
      BLKSNAP_ASSIGN_OR_RETURN(auto data, Chunk(i));
      std::memcpy(buf.data() + done, data->data() + in_chunk, n);
    }
    done += n;
  }
  return Status::Ok();
}

Result<std::vector<Extent>> BackupImage::BlockStatus(uint64_t offset, uint64_t length) {
  std::vector<Extent> out;
  const uint64_t end = std::min(size(), offset + length);
  const uint64_t chunk = index_.chunk_size;
  for (uint64_t pos = offset; pos < end;) {
    const uint64_t i = pos / chunk;
    const uint64_t n = std::min(end, (i + 1) * chunk) - pos;
    const uint32_t flags = index_.chunks[i].IsZero() ? (kExtentHole | kExtentZero) : 0;
    if (!out.empty() && out.back().flags == flags) {
      out.back().length += n;
    } else {
      out.push_back({pos, n, flags});
    }
    pos += n;
  }
  return out;
}

}  // namespace blksnap::repo
