// The difference-storage header slots and chunk-log pages: see diff_storage_format.h and
// docs/diff-storage-format.md.
#include "engine/diff_storage_format.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cassert>
#include <cstring>
#include <string>

#include "util/crc32c.h"
#include "util/little_endian.h"

namespace blksnap {
namespace {

Uuid GetUuid(const uint8_t* in) {
  std::array<uint8_t, kSnapshotIdSize> id{};
  std::memcpy(id.data(), in, kSnapshotIdSize);
  return Uuid(id);
}

// Checks the CRC-32C stored at `at` over bytes [0, at).
Status CheckCrc(const uint8_t* p, size_t at, const char* what) {
  const uint32_t stored = GetLe<uint32_t>(p + at);
  const uint32_t crc = Crc32c(p, at);
  if (stored == crc) return Status::Ok();
  return Status::Error(EINVAL, std::string(what) + " checksum mismatch (stored " +
                                   std::to_string(stored) + ", computed " + std::to_string(crc) +
                                   ")");
}

}  // namespace

std::array<uint8_t, kDiffStorageHeaderBlockSize> SerializeDiffStorageHeader(
    const DiffStorageHeader& header) {
  std::array<uint8_t, kDiffStorageHeaderBlockSize> block{};
  uint8_t* p = block.data();
  std::memcpy(p + kMagicOffset, kDiffStorageMagic, kMagicSize);
  PutLe<uint32_t>(p + kVersionOffset, header.version);
  PutLe<uint32_t>(p + kHeaderSizeOffset, header.header_size);
  std::memcpy(p + kSnapshotIdOffset, header.snapshot_id.bytes().data(), kSnapshotIdSize);
  PutLe<uint64_t>(p + kCreatedOffset, header.created);
  PutLe<uint64_t>(p + kLimitOffset, header.limit);
  PutLe<uint64_t>(p + kSeqOffset, header.seq);
  PutLe<uint32_t>(p + kDurabilityOffset, header.durability);
  PutLe<uint32_t>(p + kStateOffset, header.state);
  PutLe<uint32_t>(p + kErrnoOffset, header.errnum);
  PutLe<uint32_t>(p + kFlagsOffset, header.flags);
  PutLe<uint64_t>(p + kLogStartOffset, header.log_start);
  PutLe<uint64_t>(p + kLogEpochOffset, header.log_epoch);
  PutLe<uint64_t>(p + kLogSealedOffset, header.log_sealed);
  PutLe<uint64_t>(p + kTakenOffset, header.taken);
  const size_t count = std::min<size_t>(header.devices.size(), kMaxStorageDevices);
  PutLe<uint32_t>(p + kDeviceCountOffset, static_cast<uint32_t>(count));
  for (size_t i = 0; i < count; ++i) {
    const StorageDevice& d = header.devices[i];
    uint8_t* e = p + kDeviceTableOffset + i * kDeviceEntrySize;
    PutLe<uint64_t>(e + kDeviceCapacityOffset, d.capacity);
    PutLe<uint32_t>(e + kDeviceShiftOffset, d.chunk_shift);
    const size_t len = std::min(d.name.size(), kDeviceNameSize);
    PutLe<uint16_t>(e + kDeviceNameLenOffset, static_cast<uint16_t>(len));
    std::memcpy(e + kDeviceNameOffset, d.name.data(), len);
  }
  PutLe<uint32_t>(p + kChecksumOffset, Crc32c(p, kChecksumOffset));
  return block;
}

Result<DiffStorageHeader> ParseDiffStorageHeader(std::span<const uint8_t> bytes) {
  if (bytes.size() < kDiffStorageHeaderBlockSize) {
    return Status::Error(
        EINVAL, "difference storage header truncated: " + std::to_string(bytes.size()) + " of " +
                    std::to_string(kDiffStorageHeaderBlockSize) + " bytes");
  }
  const uint8_t* p = bytes.data();
  if (std::memcmp(p + kMagicOffset, kDiffStorageMagic, kMagicSize) != 0)
    return Status::Error(EINVAL, "not a blksnap difference storage (bad magic)");
  DiffStorageHeader header;
  header.version = GetLe<uint32_t>(p + kVersionOffset);
  if (header.version < kDiffStorageOldestVersion || header.version > kDiffStorageFormatVersion) {
    // Checked before the checksum: version 1 had a 4 KiB header, summed over its own length.
    return Status::Error(EPROTO, "difference storage format version " +
                                     std::to_string(header.version) + " is not supported (only " +
                                     std::to_string(kDiffStorageOldestVersion) + " to " +
                                     std::to_string(kDiffStorageFormatVersion) + ")");
  }
  BLKSNAP_RETURN_IF_ERROR(CheckCrc(p, kChecksumOffset, "difference storage header"));
  header.header_size = GetLe<uint32_t>(p + kHeaderSizeOffset);
  if (header.header_size != kDiffStorageHeaderSize) {
    return Status::Error(EINVAL,
                         "difference storage header area of " + std::to_string(header.header_size) +
                             " bytes (version 3: " + std::to_string(kDiffStorageHeaderSize) + ")");
  }
  header.snapshot_id = GetUuid(p + kSnapshotIdOffset);
  header.created = GetLe<uint64_t>(p + kCreatedOffset);
  header.limit = GetLe<uint64_t>(p + kLimitOffset);
  if (header.limit == 0 || header.limit > UINT64_MAX - kDiffStorageHeaderSize) {
    return Status::Error(EINVAL, "difference storage limit of " + std::to_string(header.limit) +
                                     " bytes is out of range");
  }
  header.seq = GetLe<uint64_t>(p + kSeqOffset);
  header.durability = GetLe<uint32_t>(p + kDurabilityOffset);
  header.state = GetLe<uint32_t>(p + kStateOffset);
  header.errnum = GetLe<uint32_t>(p + kErrnoOffset);
  header.flags = GetLe<uint32_t>(p + kFlagsOffset);
  header.log_start = GetLe<uint64_t>(p + kLogStartOffset);
  header.log_epoch = GetLe<uint64_t>(p + kLogEpochOffset);
  header.log_sealed = GetLe<uint64_t>(p + kLogSealedOffset);
  header.taken = GetLe<uint64_t>(p + kTakenOffset);
  if (header.durability > 2) {
    return Status::Error(EINVAL,
                         "difference storage durability " + std::to_string(header.durability));
  }
  if (header.state > kStorageStateCorrupted) {
    return Status::Error(EINVAL, "difference storage state " + std::to_string(header.state));
  }
  if (header.flags & ~(kStorageFlagOwnsFile | kStorageFlagClosed | kStorageFlagVolatileNewer)) {
    return Status::Error(EINVAL, "difference storage flags " + std::to_string(header.flags));
  }
  if (header.log_start % kAllocationAlign != 0 ||
      (header.log_start != 0 && header.log_start < kDiffStorageHeaderSize)) {
    return Status::Error(EINVAL, "difference storage log start " +
                                     std::to_string(header.log_start) + " is misplaced");
  }
  const uint32_t count = GetLe<uint32_t>(p + kDeviceCountOffset);
  if (count > kMaxStorageDevices) {
    return Status::Error(EINVAL, "difference storage lists " + std::to_string(count) +
                                     " devices (at most " + std::to_string(kMaxStorageDevices) +
                                     ")");
  }
  for (uint32_t i = 0; i < count; ++i) {
    const uint8_t* e = p + kDeviceTableOffset + i * kDeviceEntrySize;
    StorageDevice d;
    d.capacity = GetLe<uint64_t>(e + kDeviceCapacityOffset);
    d.chunk_shift = GetLe<uint32_t>(e + kDeviceShiftOffset);
    const uint16_t len = GetLe<uint16_t>(e + kDeviceNameLenOffset);
    if (len == 0 || len > kDeviceNameSize || d.capacity == 0 || d.chunk_shift < 9 ||
        d.chunk_shift > 40) {
      return Status::Error(
          EINVAL, "difference storage device entry " + std::to_string(i) + " is malformed");
    }
    d.name.assign(reinterpret_cast<const char*>(e + kDeviceNameOffset), len);
    header.devices.push_back(std::move(d));
  }
  return header;
}

Result<DiffStorageHeader> ParseDiffStorageHeaderSlots(std::span<const uint8_t> bytes) {
  auto first = ParseDiffStorageHeader(bytes);
  auto second = bytes.size() >= 2 * kDiffStorageHeaderBlockSize
                    ? ParseDiffStorageHeader(bytes.subspan(kDiffStorageHeaderBlockSize))
                    : Result<DiffStorageHeader>(Status::Error(EINVAL, "no second header slot"));
  if (first.ok() && second.ok()) return first->seq >= second->seq ? first : second;
  if (second.ok()) return second;
  return first;
}

namespace {

// A page's header fields (count 0, no records): the bytes up to kPageRecordsOffset.
void PutLogPageHeader(uint8_t* p, const LogPage& page) {
  std::memcpy(p + kPageMagicOffset, kLogPageMagic, sizeof(kLogPageMagic));
  std::memcpy(p + kPageIdOffset, page.snapshot_id.bytes().data(), kSnapshotIdSize);
  PutLe<uint64_t>(p + kPageSeqOffset, page.seq);
  PutLe<uint64_t>(p + kPageEpochOffset, page.epoch);
  PutLe<uint64_t>(p + kPageNextOffset, page.next);
  PutLe<uint64_t>(p + kPageBatchOffset, page.batch_first);
}

void PutLogRecord(uint8_t* e, const LogRecord& r) {
  PutLe<uint64_t>(e + kRecordChunkOffset, r.chunk);
  PutLe<uint64_t>(e + kRecordStorageOffset, r.offset);
  PutLe<uint16_t>(e + kRecordDeviceOffset, r.device);
  PutLe<uint16_t>(e + kRecordFlagsOffset, r.flags);
  PutLe<uint32_t>(e + kRecordLengthOffset, r.length);
  PutLe<uint32_t>(e + kRecordCrcOffset, r.crc);
}

}  // namespace

std::array<uint8_t, kLogPageSize> SerializeLogPage(const LogPage& page) {
  std::array<uint8_t, kLogPageSize> block{};
  uint8_t* p = block.data();
  PutLogPageHeader(p, page);
  const size_t count = std::min<size_t>(page.records.size(), kLogRecordsPerPage);
  PutLe<uint32_t>(p + kPageCountOffset, static_cast<uint32_t>(count));
  for (size_t i = 0; i < count; ++i) {
    PutLogRecord(p + kPageRecordsOffset + i * kLogRecordSize, page.records[i]);
  }
  PutLe<uint32_t>(p + kPageChecksumOffset, Crc32c(p, kPageChecksumOffset));
  return block;
}

void LogPageBuilder::Begin(uint8_t* page, const LogPage& header) {
  std::memset(page, 0, kLogPageSize);
  PutLogPageHeader(page, header);
  count_ = 0;
  records_crc_ = 0;
  Seal(page);
}

void LogPageBuilder::Append(uint8_t* page, const LogRecord& record) {
  assert(count_ < kLogRecordsPerPage);
  uint8_t* e = page + kPageRecordsOffset + count_ * kLogRecordSize;
  PutLogRecord(e, record);
  records_crc_ = Crc32c(e, kLogRecordSize, records_crc_);
  ++count_;
  Seal(page);
}

void LogPageBuilder::Seal(uint8_t* page) const {
  PutLe<uint32_t>(page + kPageCountOffset, count_);
  // CRC(header + records + zeros) = the header's CRC carried over the records' (kept from one
  // Append to the next), then over the zero bytes up to the checksum: the page's CRC without
  // reading its records or zeros again.
  // The operators for each record count are computed once: two multiplications per Seal.
  struct Operators {
    std::array<uint32_t, kLogRecordsPerPage + 1> records, zeros;
  };
  static const Operators ops = [] {
    Operators o;
    for (uint32_t n = 0; n <= kLogRecordsPerPage; ++n) {
      const uint64_t records = uint64_t{n} * kLogRecordSize;
      o.records[n] = Crc32cOperator(records);
      o.zeros[n] = Crc32cOperator(kPageChecksumOffset - kPageRecordsOffset - records);
    }
    return o;
  }();
  const uint32_t crc = Crc32cZerosBy(
      Crc32cCombineBy(Crc32c(page, kPageRecordsOffset), records_crc_, ops.records[count_]),
      ops.zeros[count_]);
  PutLe<uint32_t>(page + kPageChecksumOffset, crc);
}

namespace {

template <typename T>
void StoreInOrder(uint8_t* mapped, const uint8_t* page, size_t offset) {
  T value;
  std::memcpy(&value, page + offset, sizeof(T));  // the bytes as they are, little-endian or not
  std::atomic_ref<T>(*reinterpret_cast<T*>(mapped + offset))
      .store(value, std::memory_order_release);
}

}  // namespace

void PublishLogPageBegin(uint8_t* mapped, const uint8_t* page) {
  static_assert(kPageMagicOffset == 0 && sizeof(kLogPageMagic) == sizeof(uint64_t));
  std::atomic_ref<uint64_t>(*reinterpret_cast<uint64_t*>(mapped + kPageMagicOffset))
      .store(0, std::memory_order_release);
  // A release store keeps the stores before it before it, not those after: this fence keeps the
  // copy below after the cleared magic (a kill is a signal: a compiler fence is what it needs).
  std::atomic_signal_fence(std::memory_order_seq_cst);
  std::memcpy(mapped + sizeof(uint64_t), page + sizeof(uint64_t), kLogPageSize - sizeof(uint64_t));
  StoreInOrder<uint64_t>(mapped, page, kPageMagicOffset);
}

void PublishLogPageAppend(uint8_t* mapped, const uint8_t* page, uint32_t count) {
  assert(count >= 1 && count <= kLogRecordsPerPage);
  const size_t slot = kPageRecordsOffset + size_t{count - 1} * kLogRecordSize;
  std::memcpy(mapped + slot, page + slot, kLogRecordSize);
  StoreInOrder<uint32_t>(mapped, page, kPageCountOffset);
  StoreInOrder<uint32_t>(mapped, page, kPageChecksumOffset);
}

Result<LogPage> ParseTornLogPage(std::span<const uint8_t> bytes) {
  if (auto whole = ParseLogPage(bytes); whole.ok() || bytes.size() < kLogPageSize) return whole;
  const uint8_t* p = bytes.data();
  const uint32_t stored = GetLe<uint32_t>(p + kPageCountOffset);
  auto slot = [](uint32_t n) { return kPageRecordsOffset + size_t{n} * kLogRecordSize; };
  auto zero = [p](size_t from, size_t to) {
    return std::all_of(p + from, p + to, [](uint8_t b) { return b == 0; });
  };
  // The page with `count` records: the count set, the slots from there on zeroed.
  auto before = [&](uint32_t count) -> Result<LogPage> {
    std::array<uint8_t, kLogPageSize> page;
    std::memcpy(page.data(), p, kLogPageSize);
    PutLe<uint32_t>(page.data() + kPageCountOffset, count);
    std::memset(page.data() + slot(count), 0, kPageChecksumOffset - slot(count));
    if (Crc32c(page.data(), kPageChecksumOffset) != GetLe<uint32_t>(p + kPageChecksumOffset))
      return Status::Error(EINVAL, "chunk log page fails its checksum and is not a torn append");
    return ParseLogPage(page);
  };
  // Stopped before the count: the old count, some of the new record in the slot after the
  // records, and zeroes past that slot (as the page's Begin left them).
  if (stored < kLogRecordsPerPage && zero(slot(stored + 1), kPageChecksumOffset)) {
    if (auto page = before(stored); page.ok()) return page;
  }
  // Stopped before the checksum: the count one more, its last slot not zero (no record is),
  // zeroes past it.
  if (stored >= 1 && stored <= kLogRecordsPerPage && !zero(slot(stored - 1), slot(stored)) &&
      zero(slot(stored), kPageChecksumOffset)) {
    if (auto page = before(stored - 1); page.ok()) return page;
  }
  return Status::Error(EINVAL, "chunk log page fails its checksum and is not a torn append");
}

bool IsLogPageOf(std::span<const uint8_t> bytes, const Uuid& id, uint64_t seq, uint64_t min_epoch,
                 uint64_t max_epoch) {
  if (bytes.size() < kLogPageSize) return false;
  const uint8_t* p = bytes.data();
  const uint64_t epoch = GetLe<uint64_t>(p + kPageEpochOffset);
  return std::memcmp(p + kPageMagicOffset, kLogPageMagic, sizeof(kLogPageMagic)) == 0 &&
         GetUuid(p + kPageIdOffset) == id && GetLe<uint64_t>(p + kPageSeqOffset) == seq &&
         epoch >= min_epoch && epoch <= max_epoch;
}

Result<LogPage> ParseLogPage(std::span<const uint8_t> bytes) {
  if (bytes.size() < kLogPageSize) return Status::Error(EINVAL, "chunk log page truncated");
  const uint8_t* p = bytes.data();
  if (std::memcmp(p + kPageMagicOffset, kLogPageMagic, sizeof(kLogPageMagic)) != 0)
    return Status::Error(EINVAL, "not a chunk log page (bad magic)");
  BLKSNAP_RETURN_IF_ERROR(CheckCrc(p, kPageChecksumOffset, "chunk log page"));
  LogPage page;
  page.snapshot_id = GetUuid(p + kPageIdOffset);
  page.seq = GetLe<uint64_t>(p + kPageSeqOffset);
  page.epoch = GetLe<uint64_t>(p + kPageEpochOffset);
  page.next = GetLe<uint64_t>(p + kPageNextOffset);
  page.batch_first = GetLe<uint64_t>(p + kPageBatchOffset);
  const uint32_t count = GetLe<uint32_t>(p + kPageCountOffset);
  if (count > kLogRecordsPerPage)
    return Status::Error(EINVAL, "chunk log page holds " + std::to_string(count) + " records");
  if (page.batch_first == 0 || page.batch_first > page.seq)
    return Status::Error(EINVAL, "chunk log page of a commit that starts after it");
  if (page.next % kAllocationAlign != 0 || page.next < kDiffStorageHeaderSize)
    return Status::Error(EINVAL, "chunk log page points to " + std::to_string(page.next));
  for (uint32_t i = 0; i < count; ++i) {
    const uint8_t* e = p + kPageRecordsOffset + i * kLogRecordSize;
    LogRecord r;
    r.chunk = GetLe<uint64_t>(e + kRecordChunkOffset);
    r.offset = GetLe<uint64_t>(e + kRecordStorageOffset);
    r.device = GetLe<uint16_t>(e + kRecordDeviceOffset);
    r.flags = GetLe<uint16_t>(e + kRecordFlagsOffset);
    r.length = GetLe<uint32_t>(e + kRecordLengthOffset);
    r.crc = GetLe<uint32_t>(e + kRecordCrcOffset);
    const bool zero = r.flags & kRecordFlagZero;
    if ((r.flags & ~(kRecordFlagZero | kRecordFlagVerify)) ||
        (!zero && (r.offset % kAllocationAlign != 0 || r.offset < kDiffStorageHeaderSize ||
                   r.length == 0))) {
      return Status::Error(EINVAL, "chunk log record " + std::to_string(i) + " is malformed");
    }
    page.records.push_back(r);
  }
  return page;
}

}  // namespace blksnap
