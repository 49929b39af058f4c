// The rollback journal's header: see rollback_journal_format.h and
// docs/rollback-journal-format.md.
#include "engine/rollback_journal_format.h"

#include <cstring>

#include "util/crc32c.h"
#include "util/little_endian.h"

namespace blksnap {

uint64_t RollbackBitmapBytes(uint64_t chunk_count) {
  const uint64_t bytes = (chunk_count + 7) / 8;
  return (bytes + kRollbackBitmapBlock - 1) / kRollbackBitmapBlock * kRollbackBitmapBlock;
}

std::array<uint8_t, kRollbackHeaderSize> SerializeRollbackHeader(
    const RollbackJournalHeader& header) {
  std::array<uint8_t, kRollbackHeaderSize> block{};
  uint8_t* p = block.data();
  std::memcpy(p + kRbMagicOffset, kRollbackMagic, kRbMagicSize);
  PutLe<uint32_t>(p + kRbVersionOffset, header.version);
  PutLe<uint32_t>(p + kRbHeaderSizeOffset, kRollbackHeaderSize);
  std::memcpy(p + kRbSnapshotOffset, header.snapshot.bytes().data(), 16);
  PutLe<uint64_t>(p + kRbDeviceSizeOffset, header.device_size);
  PutLe<uint64_t>(p + kRbChunkSizeOffset, header.chunk_size);
  PutLe<uint64_t>(p + kRbChunkCountOffset, header.chunk_count);
  PutLe<uint64_t>(p + kRbStartedOffset, header.started);
  const size_t len = std::min(header.device.size(), kRbDeviceNameSize);
  PutLe<uint16_t>(p + kRbDeviceNameLenOffset, static_cast<uint16_t>(len));
  std::memcpy(p + kRbDeviceNameOffset, header.device.data(), len);
  PutLe<uint32_t>(p + kRbCrcOffset, Crc32c(p, kRbCrcOffset));
  return block;
}

Result<RollbackJournalHeader> ParseRollbackHeader(std::span<const uint8_t> block) {
  if (block.size() < kRollbackHeaderSize) {
    return Status::Error(
        EINVAL, "rollback journal header is short (" + std::to_string(block.size()) + " bytes)");
  }
  const uint8_t* p = block.data();
  if (std::memcmp(p + kRbMagicOffset, kRollbackMagic, kRbMagicSize) != 0)
    return Status::Error(EINVAL, "not a blksnap rollback journal (bad magic)");
  const uint32_t stored = GetLe<uint32_t>(p + kRbCrcOffset);
  if (stored != Crc32c(p, kRbCrcOffset))
    return Status::Error(EINVAL, "rollback journal header checksum mismatch");
  RollbackJournalHeader h;
  h.version = GetLe<uint32_t>(p + kRbVersionOffset);
  if (h.version != kRollbackFormatVersion) {
    return Status::Error(EPROTO, "rollback journal version " + std::to_string(h.version) +
                                     " (expected " + std::to_string(kRollbackFormatVersion) + ")");
  }
  if (GetLe<uint32_t>(p + kRbHeaderSizeOffset) != kRollbackHeaderSize)
    return Status::Error(EINVAL, "rollback journal header size is not 4096");
  std::array<uint8_t, 16> id{};
  std::memcpy(id.data(), p + kRbSnapshotOffset, 16);
  h.snapshot = Uuid(id);
  h.device_size = GetLe<uint64_t>(p + kRbDeviceSizeOffset);
  h.chunk_size = GetLe<uint64_t>(p + kRbChunkSizeOffset);
  h.chunk_count = GetLe<uint64_t>(p + kRbChunkCountOffset);
  h.started = GetLe<uint64_t>(p + kRbStartedOffset);
  const uint16_t len = GetLe<uint16_t>(p + kRbDeviceNameLenOffset);
  if (len == 0 || len > kRbDeviceNameSize)
    return Status::Error(EINVAL, "rollback journal device name length " + std::to_string(len));
  h.device.assign(reinterpret_cast<const char*>(p + kRbDeviceNameOffset), len);
  if (h.snapshot.is_nil()) return Status::Error(EINVAL, "rollback journal names no snapshot");
  if (h.chunk_size < 512 || (h.chunk_size & (h.chunk_size - 1)) != 0 || h.chunk_size > (1ull << 40))
    return Status::Error(EINVAL, "rollback journal chunk size is not a power of two");
  if (h.device_size == 0 || h.device_size > (1ull << 60) ||
      h.chunk_count != (h.device_size + h.chunk_size - 1) / h.chunk_size) {
    return Status::Error(EINVAL, "rollback journal chunk count does not cover the device size");
  }
  return h;
}

}  // namespace blksnap
