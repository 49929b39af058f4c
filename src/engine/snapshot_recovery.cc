// Closing and recovering a durable snapshot: see snapshot_recovery.h.
#include "engine/snapshot_recovery.h"

namespace blksnap {

Status SealClosedStorage(DiffStorage& storage, const Uuid& id, bool taken,
                         const std::vector<std::shared_ptr<DiffArea>>& areas) {
  int drained_errno = 0;
  for (const auto& area : areas) {
    if (area->corrupted() && !drained_errno) drained_errno = area->corrupt_errno();
  }
  // The chunk log compacted (125 records a page), so the next start reads a few MiB, not
  // one page per commit; the header then points at it. A crash before that keeps the old log.
  Status s = storage.device().Flush();
  uint64_t log_start = storage.header().log_start;
  const uint64_t epoch = storage.header().log_epoch + 1;
  // Every page written is durable now (the storers are idle, the flush above): sealed.
  uint64_t sealed = storage.log() ? storage.log()->last_seq() : 0;
  if (s.ok() && taken && !drained_errno && storage.log()) {
    std::vector<LogRecord> records;
    for (const auto& area : areas) area->CollectRecords(&records);
    // Not when it is compact already (a start and a stop without much written): no growth.
    const uint64_t packed = (records.size() + kLogRecordsPerPage - 1) / kLogRecordsPerPage;
    if (storage.log()->pages_since_compaction() > packed + 16) {
      uint64_t pages = 0;
      auto compact = ChunkLog::WriteCompact(&storage, id, /*sync=*/true, epoch, records, &pages);
      if (compact.ok()) {  // else the old log stays: correct, slower
        log_start = *compact;
        sealed = pages;
      }
    }
  }
  if (s.ok()) {
    s = storage.UpdateHeader([&](DiffStorageHeader& h) {
      if (h.log_start != log_start) h.log_epoch = epoch;
      h.log_start = log_start;
      h.log_sealed = sealed;
      h.flags |= kStorageFlagClosed;
      if (drained_errno && h.state != kStorageStateCorrupted) {
        h.state = kStorageStateCorrupted;
        h.errnum = static_cast<uint32_t>(drained_errno);
      }
    });
  }
  return s;
}

Status CheckLogRecords(const ChunkLog::Scan& scan, const std::vector<ChunkGeometry>& geometries,
                       uint64_t storage_size, const std::string& name) {
  for (const LogRecord& r : scan.records) {
    const bool bad = r.device >= geometries.size() || r.chunk >= geometries[r.device].count ||
                     (!(r.flags & kRecordFlagZero) &&
                      (r.length != geometries[r.device].length(r.chunk) ||
                       r.offset > storage_size || r.length > storage_size - r.offset));
    if (bad) return Status::Error(EINVAL, name + ": a chunk log record is out of range");
  }
  return Status::Ok();
}

ChunkLog::Collector CompactionCollector(std::vector<std::weak_ptr<DiffArea>> areas) {
  return [areas = std::move(areas)](std::vector<LogRecord>* out) {
    std::vector<std::shared_ptr<DiffArea>> live;
    size_t touched = 0;
    for (const auto& weak : areas) {
      if (auto area = weak.lock()) {
        touched += area->stats().chunks_touched;
        live.push_back(std::move(area));
      }
    }
    // One allocation of the right size (large: mmap, given back when freed), not a doubling
    // series that the allocator's arenas would keep after each compaction.
    out->reserve(touched + 1024);
    for (const auto& area : live) area->CollectRecords(out);
  };
}

}  // namespace blksnap
