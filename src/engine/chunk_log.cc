// ChunkLog: see chunk_log.h for the commit protocol and the recovery scan.
#include "engine/chunk_log.h"

#include <cstdlib>
#include <cstring>
#include <memory>

#include "blksnap/block_device.h"
#include "engine/diff_storage.h"

namespace blksnap {
namespace {

struct FreeDeleter {
  void operator()(uint8_t* p) const { std::free(p); }
};
using AlignedBuffer = std::unique_ptr<uint8_t[], FreeDeleter>;

// Direct I/O wants aligned memory as well as aligned offsets.
AlignedBuffer AllocateAligned(size_t bytes) {
  return AlignedBuffer(static_cast<uint8_t*>(std::aligned_alloc(kLogPageSize, bytes)));
}

uint64_t RoundUp(uint64_t n) { return (n + kAllocationAlign - 1) & ~(kAllocationAlign - 1); }

}  // namespace

ChunkLog::ChunkLog(DiffStorage* storage, const Uuid& id, bool sync, Cursor cursor)
    : storage_(storage), id_(id), sync_(sync), start_(cursor.next_page) {
  MutexLock lock(write_mu_);
  cursor_ = cursor;
}

Result<std::unique_ptr<ChunkLog>> ChunkLog::Start(DiffStorage* storage, const Uuid& id, bool sync) {
  BLKSNAP_ASSIGN_OR_RETURN(uint64_t first, storage->Allocate(kLogSegmentSize));
  Cursor cursor;
  cursor.next_page = first;
  cursor.segment_end = first + kLogSegmentSize;
  return std::make_unique<ChunkLog>(storage, id, sync, cursor);
}

Result<uint64_t> ChunkLog::WriteCompact(DiffStorage* storage, const Uuid& id, bool sync,
                                        uint64_t epoch, const std::vector<LogRecord>& records) {
  BLKSNAP_ASSIGN_OR_RETURN(std::unique_ptr<ChunkLog> log, Start(storage, id, sync));
  MutexLock write(log->write_mu_);
  log->cursor_.epoch = epoch;
  BLKSNAP_RETURN_IF_ERROR(log->WriteBatch(records));
  return log->start();
}

uint64_t ChunkLog::commits() const {
  MutexLock lock(mu_);
  return batches_;
}

Status ChunkLog::Commit(const LogRecord& record) {
  MutexLock lock(mu_);
  if (!failed_.ok()) return failed_;
  pending_.push_back(record);
  const uint64_t ticket = ++submitted_;
  while (committed_ < ticket && failed_.ok()) {
    if (writing_) {
      cv_.Wait(mu_);
      continue;
    }
    // Become the writer of everything queued so far.
    writing_ = true;
    std::vector<LogRecord> batch;
    batch.swap(pending_);
    const uint64_t last = submitted_;
    mu_.Unlock();
    Status s;
    {
      MutexLock write(write_mu_);
      s = WriteBatch(batch);
    }
    mu_.Lock();
    writing_ = false;
    ++batches_;
    if (s.ok()) {
      committed_ = last;
    } else {
      failed_ = s;
    }
    cv_.SignalAll();
  }
  return committed_ >= ticket ? Status::Ok() : failed_;
}

Status ChunkLog::WriteBatch(const std::vector<LogRecord>& batch) {
  BlockDevice& device = storage_->device();
  // Power: the data of every record of the batch (written before it was queued) is durable
  // before any page that locates it can be.
  if (sync_) BLKSNAP_RETURN_IF_ERROR(device.Flush());
  const size_t pages = (batch.size() + kLogRecordsPerPage - 1) / kLogRecordsPerPage;
  AlignedBuffer buffer = AllocateAligned(pages * kLogPageSize);
  if (!buffer) return Status::Error(ENOMEM, "no memory for chunk log pages");
  uint64_t run_start = cursor_.next_page;  // consecutive pages are written with one write
  size_t run_pages = 0;
  for (size_t i = 0; i < pages; ++i) {
    LogPage page;
    page.snapshot_id = id_;
    page.seq = cursor_.next_seq;
    page.epoch = cursor_.epoch;
    const uint64_t offset = cursor_.next_page;
    // The last page of a segment points to a new one (which may happen to follow it).
    const bool last_in_segment = offset + kLogPageSize >= cursor_.segment_end;
    if (last_in_segment) {
      BLKSNAP_ASSIGN_OR_RETURN(uint64_t segment, storage_->Allocate(kLogSegmentSize));
      page.next = segment;
    } else {
      page.next = offset + kLogPageSize;
    }
    const size_t first = i * kLogRecordsPerPage;
    const size_t count = std::min<size_t>(kLogRecordsPerPage, batch.size() - first);
    page.records.assign(batch.begin() + first, batch.begin() + first + count);
    const auto bytes = SerializeLogPage(page);
    std::memcpy(buffer.get() + run_pages * kLogPageSize, bytes.data(), kLogPageSize);
    ++run_pages;
    const bool jump = last_in_segment;
    if (jump || i + 1 == pages) {
      BLKSNAP_RETURN_IF_ERROR(device.Write(
          run_start, std::span<const uint8_t>(buffer.get(), run_pages * kLogPageSize)));
      run_start = page.next;
      // The pages written so far are reused from the start of the buffer.
      run_pages = 0;
    }
    cursor_.next_page = page.next;
    if (jump) cursor_.segment_end = page.next + kLogSegmentSize;
    ++cursor_.next_seq;
  }
  if (sync_) BLKSNAP_RETURN_IF_ERROR(device.Flush());
  return Status::Ok();
}

Result<ChunkLog::Scan> ChunkLog::Read(BlockDevice& device, const Uuid& id, uint64_t start,
                                      uint64_t header_epoch) {
  Scan scan;
  scan.cursor.next_page = start;
  scan.cursor.segment_end = start + kLogSegmentSize;
  scan.cursor.epoch = 1;
  scan.end = scan.cursor.segment_end;
  AlignedBuffer buffer = AllocateAligned(kLogSegmentSize);
  if (!buffer) return Status::Error(ENOMEM, "no memory to read the chunk log");
  uint64_t offset = start;
  for (;;) {
    // Read from this page to the end of its segment (or of the device) at once.
    const uint64_t segment_end = scan.cursor.segment_end;
    if (offset + kLogPageSize > device.size() || offset >= segment_end) break;
    const uint64_t length = std::min(segment_end, device.size()) - offset;
    const uint64_t whole = length / kLogPageSize * kLogPageSize;
    BLKSNAP_RETURN_IF_ERROR(device.Read(offset, std::span(buffer.get(), whole)));
    bool jumped = false;
    for (uint64_t at = 0; at < whole; at += kLogPageSize) {
      auto page = ParseLogPage(std::span<const uint8_t>(buffer.get() + at, kLogPageSize));
      if (!page.ok() || page->snapshot_id != id || page->seq != scan.cursor.next_seq ||
          page->epoch < scan.cursor.epoch || page->epoch > header_epoch) {
        return scan;  // the end of the log
      }
      const uint64_t here = offset + at;
      const bool last_in_segment = here + kLogPageSize == segment_end;
      if (last_in_segment ? page->next + kLogSegmentSize > device.size()
                          : page->next != here + kLogPageSize) {
        return scan;  // not where we put the next page: not a page we wrote
      }
      for (const LogRecord& r : page->records) {
        if (!(r.flags & kRecordFlagZero))
          scan.end = std::max(scan.end, r.offset + RoundUp(r.length));
        scan.records.push_back(r);
      }
      ++scan.pages;
      scan.cursor.next_seq = page->seq + 1;
      scan.cursor.epoch = page->epoch;
      scan.cursor.next_page = page->next;
      if (last_in_segment) {
        scan.cursor.segment_end = page->next + kLogSegmentSize;
        scan.end = std::max(scan.end, scan.cursor.segment_end);
        offset = page->next;
        jumped = true;
        break;
      }
    }
    if (!jumped) offset += whole;
  }
  return scan;
}

}  // namespace blksnap
