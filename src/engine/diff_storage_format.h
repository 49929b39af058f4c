// The difference-storage on-disk format, version 3 (reads 2): every constant of it, in one place.
// The format is described in docs/diff-storage-format.md; keep the two in step.
//
// Layout: a header area of kDiffStorageHeaderSize bytes (2 MiB) at offset 0 holding two header
// slots of kDiffStorageHeaderBlockSize bytes (8 KiB) at 0 and 8 KiB: a header is written to the
// slot of its sequence number (seq % 2), so a torn header write leaves the other slot, and the
// valid slot with the higher seq is the header. After the header area: preserved chunks and,
// for a durable snapshot, the chunk log — 1 MiB segments of 4 KiB pages, each page one batch of
// records (device, chunk index, storage offset, length, data CRC), chained by `next`, numbered by
// seq, stamped with the epoch (one per run that wrote to it). Every allocation is a multiple of
// kAllocationAlign. All integers are little-endian; every header and page ends in a CRC-32C.
//
// The parsers read untrusted bytes (a file found at a storage path): they check the length
// before every read and refuse anything else than a valid version-2 or -3 header or page with
// EINVAL (EPROTO for a valid header of another version) and a message naming what is wrong.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "blksnap/status.h"
#include "blksnap/uuid.h"

namespace blksnap {

inline constexpr uint64_t kDiffStorageHeaderSize = 2ull << 20;  // the header area
inline constexpr size_t kDiffStorageHeaderBlockSize = 8192;     // one header slot
inline constexpr uint64_t kAllocationAlign = 4096;  // every chunk's storage offset is a multiple
inline constexpr uint32_t kDiffStorageFormatVersion = 3;
// Version 2 differs only in lacking kRecordFlagVerify: read, and written as 3 once continued.
inline constexpr uint32_t kDiffStorageOldestVersion = 2;
inline constexpr char kDiffStorageMagic[16] = "BLKSNAP-DIFFSTO";  // 15 characters and a NUL

// Header slot fields.
inline constexpr size_t kMagicOffset = 0, kMagicSize = 16;
inline constexpr size_t kVersionOffset = 16, kVersionSize = 4;
inline constexpr size_t kHeaderSizeOffset = 20, kHeaderSizeSize = 4;
inline constexpr size_t kSnapshotIdOffset = 24, kSnapshotIdSize = 16;
inline constexpr size_t kCreatedOffset = 40, kCreatedSize = 8;
inline constexpr size_t kLimitOffset = 48, kLimitSize = 8;
inline constexpr size_t kSeqOffset = 56;          // u64: which write of the header this is
inline constexpr size_t kDurabilityOffset = 64;   // u32: 0 memory, 1 crash, 2 power
inline constexpr size_t kStateOffset = 68;        // u32: kStorageState*
inline constexpr size_t kErrnoOffset = 72;        // u32: why corrupted
inline constexpr size_t kFlagsOffset = 76;        // u32: kStorageFlag*
inline constexpr size_t kLogStartOffset = 80;     // u64: the first log page (0: none)
inline constexpr size_t kLogEpochOffset = 88;     // u64: the epoch new log pages carry
inline constexpr size_t kDeviceCountOffset = 96;  // u32
inline constexpr size_t kReservedOffset = 100;    // zero up to kLogSealedOffset
// u64: the log's pages 1..this are known written and durable (a compaction, a clean close): a
// bad page among them is damage, not a torn tail. 0: nothing known.
inline constexpr size_t kLogSealedOffset = 104;
// u64: when the snapshot was taken (ns since the epoch; 0 in storages written before it): the
// order of the snapshots of a device (area_chain.h). Bytes up to kDeviceTableOffset were zero.
inline constexpr size_t kTakenOffset = 112;
inline constexpr size_t kDeviceTableOffset = 128;  // kDeviceEntrySize bytes per device
inline constexpr size_t kDeviceEntrySize = 144;
inline constexpr size_t kDeviceCapacityOffset = 0;  // u64, in an entry
inline constexpr size_t kDeviceShiftOffset = 8;     // u32: chunk shift
inline constexpr size_t kDeviceNameLenOffset = 12;  // u16
inline constexpr size_t kDeviceNameOffset = 16, kDeviceNameSize = 128;
inline constexpr size_t kChecksumOffset = kDiffStorageHeaderBlockSize - 4, kChecksumSize = 4;
inline constexpr uint32_t kMaxStorageDevices = 48;
static_assert(kDeviceTableOffset + kMaxStorageDevices * kDeviceEntrySize <= kChecksumOffset);
static_assert(kLimitOffset + kLimitSize == kSeqOffset);
static_assert(sizeof(kDiffStorageMagic) == kMagicSize);

inline constexpr uint32_t kStorageStateCreated = 0;        // never taken: nothing to recover
inline constexpr uint32_t kStorageStateTaken = 1;          // the chunk log holds the snapshot
inline constexpr uint32_t kStorageStateCorrupted = 2;      // errno says why; never served again
inline constexpr uint32_t kStorageFlagOwnsFile = 1u << 0;  // blksnap created the file: remove it
inline constexpr uint32_t kStorageFlagClosed = 1u << 1;    // closed cleanly (CloseSnapshot)
// A memory snapshot newer than this one holds copies it reads (several-snapshots.md): a
// recovery after a crash comes back corrupted (ESTALE).
inline constexpr uint32_t kStorageFlagVolatileNewer = 1u << 2;

// The chunk log.
inline constexpr uint64_t kLogSegmentSize = 1ull << 20;
inline constexpr size_t kLogPageSize = 4096;
inline constexpr char kLogPageMagic[8] = {'B', 'L', 'K', 'S', 'N', 'L', 'O', 'G'};
inline constexpr size_t kPageMagicOffset = 0;
inline constexpr size_t kPageIdOffset = 8;      // 16: the snapshot id
inline constexpr size_t kPageSeqOffset = 24;    // u64: 1, 2, 3, ... along the chain
inline constexpr size_t kPageEpochOffset = 32;  // u64: never decreases along the chain
inline constexpr size_t kPageNextOffset = 40;   // u64: where the next page goes
inline constexpr size_t kPageCountOffset = 48;  // u32: records in this page
inline constexpr size_t kPageBatchOffset = 56;  // u64: seq of the first page of its commit
inline constexpr size_t kPageRecordsOffset = 64;
inline constexpr size_t kLogRecordSize = 32;
inline constexpr size_t kPageChecksumOffset = kLogPageSize - 4;
inline constexpr uint32_t kLogRecordsPerPage =
    (kPageChecksumOffset - kPageRecordsOffset) / kLogRecordSize;  // 125
// In a record.
inline constexpr size_t kRecordChunkOffset = 0;       // u64: chunk index
inline constexpr size_t kRecordStorageOffset = 8;     // u64: where the data is
inline constexpr size_t kRecordDeviceOffset = 16;     // u16: index in the device table
inline constexpr size_t kRecordFlagsOffset = 18;      // u16: kRecordFlag*
inline constexpr size_t kRecordLengthOffset = 20;     // u32: data bytes
inline constexpr size_t kRecordCrcOffset = 24;        // u32: CRC-32C of the data
inline constexpr uint16_t kRecordFlagZero = 1u << 0;  // all zeroes at the take: no data
// The CRC is the data's as written and is checked when the record is in the log's last commit:
// that commit's data may not have reached the disk (one flush for data and record).
inline constexpr uint16_t kRecordFlagVerify = 1u << 1;

struct StorageDevice {
  std::string name;
  uint64_t capacity = 0;
  uint32_t chunk_shift = 0;
  bool operator==(const StorageDevice&) const = default;
};

struct DiffStorageHeader {
  uint32_t version = kDiffStorageFormatVersion;
  uint32_t header_size = static_cast<uint32_t>(kDiffStorageHeaderSize);
  Uuid snapshot_id;
  uint64_t created = 0;  // seconds since the epoch
  uint64_t limit = 0;    // usable bytes after the header area
  uint64_t seq = 0;
  uint32_t durability = 0;  // SnapshotDurability as 0, 1, 2
  uint32_t state = kStorageStateCreated;
  uint32_t errnum = 0;
  uint32_t flags = 0;
  uint64_t log_start = 0;
  uint64_t log_epoch = 0;
  uint64_t log_sealed = 0;  // kLogSealedOffset
  uint64_t taken = 0;       // kTakenOffset: ns since the epoch
  std::vector<StorageDevice> devices;
  bool operator==(const DiffStorageHeader&) const = default;
};

struct LogRecord {
  uint64_t chunk = 0;
  uint64_t offset = 0;
  uint16_t device = 0;
  uint16_t flags = 0;
  uint32_t length = 0;
  uint32_t crc = 0;
  bool operator==(const LogRecord&) const = default;
};

struct LogPage {
  Uuid snapshot_id;
  uint64_t seq = 0;
  uint64_t epoch = 0;
  uint64_t next = 0;
  uint64_t batch_first = 0;        // seq of the first page written with this one (one commit)
  std::vector<LogRecord> records;  // at most kLogRecordsPerPage
  bool operator==(const LogPage&) const = default;
};

// A header slot: magic, fields, device table, zero reserved bytes and the CRC-32C of the rest.
// At most kMaxStorageDevices devices, names of at most kDeviceNameSize bytes (the caller checks).
std::array<uint8_t, kDiffStorageHeaderBlockSize> SerializeDiffStorageHeader(
    const DiffStorageHeader& header);
// Validates (length, magic, checksum, version, header size, limit, enums, device table) and
// decodes one slot. `bytes` may be longer than a slot (only the first slot is read).
Result<DiffStorageHeader> ParseDiffStorageHeader(std::span<const uint8_t> bytes);
// The header of a header area's first two slots (`bytes` at least 2 slots): the valid slot with
// the higher seq; the error of slot 0 if neither is valid.
Result<DiffStorageHeader> ParseDiffStorageHeaderSlots(std::span<const uint8_t> bytes);

std::array<uint8_t, kLogPageSize> SerializeLogPage(const LogPage& page);

// A log page written record by record in place (a crash log's open page, ChunkLog): after
// Begin and each Append, `page` (kLogPageSize bytes, the caller's) holds exactly what
// SerializeLogPage gives for the header and the records so far, checksum included. An Append
// costs the same whatever the page holds: the records' CRC is carried from one to the next and
// combined with the header's (Crc32cCombine), never recomputed over the page.
class LogPageBuilder {
 public:
  // The page of `header`'s id, seq, epoch, next and batch_first, with no records.
  void Begin(uint8_t* page, const LogPage& header);
  // One more record; count() < kLogRecordsPerPage (the caller starts a new page before).
  void Append(uint8_t* page, const LogRecord& record);
  uint32_t count() const { return count_; }

 private:
  void Seal(uint8_t* page) const;  // count and checksum
  uint32_t count_ = 0;
  uint32_t records_crc_ = 0;  // Crc32c of the records so far
};
// A crash log's open page kept in a shared mapping of the storage (ChunkLog): every store is in
// the kernel at once, and a kill -9 may stop between any two. These copy the builder's `page` to
// `mapped` in an order that leaves, at every instant, a whole version of the page, a page without
// the magic (not begun: the end of the log), or a page that ParseTornLogPage turns back into
// the version before the interrupted append.
// Begin: the magic cleared, the rest of the page, then the magic.
void PublishLogPageBegin(uint8_t* mapped, const uint8_t* page);
// Append (the builder's count() records now): the new record, then the count, then the checksum.
void PublishLogPageAppend(uint8_t* mapped, const uint8_t* page, uint32_t count);
// Validates (length, magic, checksum, count, record flags) and decodes a log page.
Result<LogPage> ParseLogPage(std::span<const uint8_t> bytes);
// A page that a kill stopped inside PublishLogPageAppend (the new record stored but not yet the
// count, or the count but not yet the checksum): the version before that append, as
// ParseLogPage decodes it; a whole page as it is. EINVAL for any other page.
Result<LogPage> ParseTornLogPage(std::span<const uint8_t> bytes);
// The page of snapshot `id` numbered `seq` with an epoch in [min_epoch, max_epoch], by its
// magic and header fields, whatever its checksum says (a crash log's page that fails it is
// damaged, not torn: ChunkLog::Read).
bool IsLogPageOf(std::span<const uint8_t> bytes, const Uuid& id, uint64_t seq, uint64_t min_epoch,
                 uint64_t max_epoch);

}  // namespace blksnap
