// The CBT state file header: see cbt_format.h and docs/cbt-format.md.
#include "engine/cbt_format.h"

#include <cstring>

#include "util/crc32c.h"
#include "util/little_endian.h"

namespace blksnap {
namespace {

void PutText(uint8_t* out, size_t field, const std::string& text) {
  std::memcpy(out, text.data(), std::min(text.size(), field - 1));  // the rest stays NUL
}

// The text of a NUL-padded field: printable ASCII, then only NULs.
Result<std::string> GetText(const uint8_t* in, size_t field, const char* what) {
  size_t n = 0;
  while (n < field && in[n] != 0) {
    if (in[n] < 0x20 || in[n] > 0x7e)
      return Status::Error(EINVAL, std::string("CBT state: ") + what + " is not printable text");
    ++n;
  }
  if (n == field) return Status::Error(EINVAL, std::string("CBT state: ") + what + " unterminated");
  for (size_t i = n; i < field; ++i) {
    if (in[i] != 0) return Status::Error(EINVAL, std::string("CBT state: ") + what + " padding");
  }
  return std::string(reinterpret_cast<const char*>(in), n);
}

Status Bad(const std::string& what) { return Status::Error(EINVAL, "CBT state: " + what); }

}  // namespace

std::array<uint8_t, kCbtHeaderSize> SerializeCbtHeader(const CbtHeader& h) {
  namespace f = cbt_field;
  std::array<uint8_t, kCbtHeaderSize> block{};
  uint8_t* p = block.data();
  std::memcpy(p + f::kMagic, kCbtMagic, sizeof(kCbtMagic));
  PutLe<uint32_t>(p + f::kVersion, kCbtFormatVersion);
  PutLe<uint32_t>(p + f::kHeaderSize, kCbtHeaderSize);
  PutLe<uint64_t>(p + f::kSequence, h.sequence);
  std::memcpy(p + f::kGeneration, h.generation.bytes().data(), 16);
  PutLe<uint64_t>(p + f::kCapacity, h.capacity);
  PutLe<uint32_t>(p + f::kBlockShift, h.block_shift);
  PutLe<uint32_t>(p + f::kFlags, h.flags);
  PutLe<uint64_t>(p + f::kBlockCount, h.block_count);
  p[f::kActive] = h.active;
  p[f::kPrevious] = h.previous;
  PutLe<uint64_t>(p + f::kCheckpointTime, h.checkpoint_time_ns);
  PutLe<uint64_t>(p + f::kWriteMapOffset, kCbtMapsOffset);
  PutLe<uint64_t>(p + f::kReadMapOffset, CbtReadMapOffset(h.block_count));
  PutLe<uint32_t>(p + f::kIdentityKind, h.identity.kind);
  PutLe<uint32_t>(p + f::kJournalShift, h.journal_shift);
  PutLe<uint64_t>(p + f::kJournalRegions, h.journal_regions);
  PutLe<uint64_t>(p + f::kJournalOffset, CbtJournalOffset(h.block_count, h.journal_regions, 0));
  PutLe<uint64_t>(p + f::kIdentityDev, h.identity.dev);
  PutLe<uint64_t>(p + f::kIdentityIno, h.identity.ino);
  PutLe<uint64_t>(p + f::kIdentityRdev, h.identity.rdev);
  PutLe<uint64_t>(p + f::kIdentitySize, h.identity.size);
  PutLe<int64_t>(p + f::kIdentityMtime, h.identity.mtime_ns);
  PutLe<int64_t>(p + f::kIdentityCtime, h.identity.ctime_ns);
  PutText(p + f::kBootId, f::kBootIdSize, h.boot_id);
  PutText(p + f::kReason, f::kReasonSize, h.reason);
  PutLe<uint32_t>(p + f::kChecksum, Crc32c(p, f::kChecksum));
  return block;
}

namespace {

Result<CbtHeader> ParseSlot(std::span<const uint8_t> file, int slot) {
  namespace f = cbt_field;
  const uint8_t* p = file.data() + static_cast<size_t>(slot) * kCbtHeaderSize;
  if (std::memcmp(p + f::kMagic, kCbtMagic, sizeof(kCbtMagic)) != 0) return Bad("bad magic");
  if (GetLe<uint32_t>(p + f::kChecksum) != Crc32c(p, f::kChecksum))
    return Bad("header checksum mismatch");
  const uint32_t version = GetLe<uint32_t>(p + f::kVersion);
  if (version != kCbtFormatVersion) {
    return Status::Error(EPROTO, "CBT state: format version " + std::to_string(version) +
                                     " is not supported (only " +
                                     std::to_string(kCbtFormatVersion) + ")");
  }
  if (GetLe<uint32_t>(p + f::kHeaderSize) != kCbtHeaderSize) return Bad("header size");
  CbtHeader h;
  h.sequence = GetLe<uint64_t>(p + f::kSequence);
  std::array<uint8_t, 16> id{};
  std::memcpy(id.data(), p + f::kGeneration, 16);
  h.generation = Uuid(id);
  h.capacity = GetLe<uint64_t>(p + f::kCapacity);
  h.block_shift = GetLe<uint32_t>(p + f::kBlockShift);
  h.flags = GetLe<uint32_t>(p + f::kFlags);
  h.block_count = GetLe<uint64_t>(p + f::kBlockCount);
  h.active = p[f::kActive];
  h.previous = p[f::kPrevious];
  h.checkpoint_time_ns = GetLe<uint64_t>(p + f::kCheckpointTime);
  if (h.capacity == 0) return Bad("zero capacity");
  if (h.block_shift < kCbtMinimumShift || h.block_shift > kCbtMaximumShift)
    return Bad("block shift " + std::to_string(h.block_shift) + " out of range");
  if (h.block_count != CbtBlockCount(h.capacity, h.block_shift))
    return Bad("block count does not match capacity and block size");
  if (h.flags & ~kCbtKnownFlags) return Bad("unknown flags");
  if (h.active == 0 || h.previous >= h.active) return Bad("snap numbers out of order");
  for (size_t i = f::kPrevious + 1; i < f::kCheckpointTime; ++i) {
    if (p[i] != 0) return Bad("reserved bytes not zero");
  }
  if (GetLe<uint64_t>(p + f::kWriteMapOffset) != kCbtMapsOffset ||
      GetLe<uint64_t>(p + f::kReadMapOffset) != CbtReadMapOffset(h.block_count))
    return Bad("map offsets");
  h.journal_shift = GetLe<uint32_t>(p + f::kJournalShift);
  h.journal_regions = GetLe<uint64_t>(p + f::kJournalRegions);
  if (h.journal_shift != CbtJournalShift(h.capacity, h.block_shift) ||
      h.journal_regions != CbtBlockCount(h.capacity, h.journal_shift))
    return Bad("journal geometry");
  if (GetLe<uint64_t>(p + f::kJournalOffset) !=
      CbtJournalOffset(h.block_count, h.journal_regions, 0))
    return Bad("journal offset");
  // The block count is bounded by capacity >> 9 < 2^55 and the regions by 2^14, so the file
  // size cannot overflow.
  const uint64_t size = CbtFileSize(h.block_count, h.journal_regions);
  if (file.size() != size) {
    return Bad("file of " + std::to_string(file.size()) + " bytes, the header implies " +
               std::to_string(size));
  }
  h.identity.kind = GetLe<uint32_t>(p + f::kIdentityKind);
  if (h.identity.kind > CbtIdentity::kBlockDevice) return Bad("identity kind");
  h.identity.dev = GetLe<uint64_t>(p + f::kIdentityDev);
  h.identity.ino = GetLe<uint64_t>(p + f::kIdentityIno);
  h.identity.rdev = GetLe<uint64_t>(p + f::kIdentityRdev);
  h.identity.size = GetLe<uint64_t>(p + f::kIdentitySize);
  h.identity.mtime_ns = GetLe<int64_t>(p + f::kIdentityMtime);
  h.identity.ctime_ns = GetLe<int64_t>(p + f::kIdentityCtime);
  auto boot_id = GetText(p + f::kBootId, f::kBootIdSize, "boot id");
  if (!boot_id.ok()) return std::move(boot_id).status();
  h.boot_id = std::move(boot_id).value();
  auto reason = GetText(p + f::kReason, f::kReasonSize, "generation reason");
  if (!reason.ok()) return std::move(reason).status();
  h.reason = std::move(reason).value();
  for (size_t i = f::kReserved; i < f::kChecksum; ++i) {
    if (p[i] != 0) return Bad("reserved bytes not zero");
  }
  return h;
}

}  // namespace

Result<CbtHeader> ParseCbtState(std::span<const uint8_t> file, int* slot) {
  if (slot) *slot = 0;
  if (file.size() < kCbtMapsOffset)
    return Bad("file of " + std::to_string(file.size()) + " bytes, shorter than its header");
  Result<CbtHeader> first = ParseSlot(file, 0);
  Result<CbtHeader> second = ParseSlot(file, 1);
  const bool use_second = second.ok() && (!first.ok() || second->sequence > first->sequence);
  if (slot) *slot = use_second ? 1 : 0;
  return use_second ? std::move(second) : std::move(first);
}

}  // namespace blksnap
