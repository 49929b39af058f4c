// ChunkLog: see chunk_log.h for the commit protocol and the recovery scan.
#include "engine/chunk_log.h"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "blksnap/block_device.h"
#include "engine/diff_storage.h"
#include "util/sigbus_guard.h"

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

ChunkLog::~ChunkLog() {
  if (in_place_buffer_) ::munmap(in_place_buffer_, kLogPageSize);
}

Result<std::unique_ptr<ChunkLog>> ChunkLog::Start(DiffStorage* storage, const Uuid& id, bool sync) {
  BLKSNAP_ASSIGN_OR_RETURN(uint64_t first, storage->Allocate(kLogSegmentSize));
  Cursor cursor;
  cursor.next_page = first;
  cursor.segment_end = first + kLogSegmentSize;
  return std::make_unique<ChunkLog>(storage, id, sync, cursor);
}

Result<uint64_t> ChunkLog::WriteCompact(DiffStorage* storage, const Uuid& id, bool sync,
                                        uint64_t epoch, const std::vector<LogRecord>& records,
                                        uint64_t* pages) {
  BLKSNAP_ASSIGN_OR_RETURN(std::unique_ptr<ChunkLog> log, Start(storage, id, sync));
  MutexLock write(log->write_mu_);
  log->cursor_.epoch = epoch;
  BlockDevice& device = storage->device();
  if (sync) BLKSNAP_RETURN_IF_ERROR(device.Flush());
  BLKSNAP_RETURN_IF_ERROR(log->AppendPages(records));
  if (sync) BLKSNAP_RETURN_IF_ERROR(device.Flush());
  *pages = log->cursor_.next_seq - 1;
  return log->start();
}

uint64_t ChunkLog::commits() const {
  MutexLock lock(mu_);
  return batches_;
}

Status ChunkLog::Commit(const LogRecord& record) {
  if (!sync_) return CommitInPlace(record);
  // Power from here on: a round of group commit.
  MutexLock lock(mu_);
  if (!failed_.ok()) return failed_;
  pending_.push_back(record);
  const uint64_t ticket = ++submitted_;
  while (committed_ < ticket && failed_.ok()) {
    if (writing_) {
      cv_.Wait(mu_);
      continue;
    }
    // Become the writer of everything queued so far (a round).
    writing_ = true;
    std::vector<LogRecord> batch;
    batch.swap(pending_);
    const uint64_t last = submitted_;   // the batch's tickets end here
    const uint64_t written = written_;  // pages written by the last round, not yet flushed
    mu_.Unlock();
    Status s;
    bool durable = false;
    {
      MutexLock write(write_mu_);
      s = WriteRound(batch, &durable);
    }
    mu_.Lock();
    writing_ = false;
    ++batches_;
    if (!s.ok()) {
      failed_ = s;
    } else if (durable) {
      committed_ = written_ = last;
    } else {
      committed_ = std::max(committed_, written);  // this round's flush made them durable
      written_ = last;
    }
    cv_.SignalAll();
  }
  return committed_ >= ticket ? Status::Ok() : failed_;
}

Status ChunkLog::WriteRound(const std::vector<LogRecord>& batch, bool* durable) {
  BlockDevice& device = storage_->device();
  const bool verified = std::all_of(batch.begin(), batch.end(), [](const LogRecord& r) {
    return (r.flags & (kRecordFlagZero | kRecordFlagVerify)) != 0;
  });
  if (verified && !batch.empty()) {
    // Power, every record checkable: the pages, then one flush for them and the data. Torn by
    // a power cut, this commit is the log's last and recovery drops its records whose data
    // does not match (the originals of those were not overwritten: nothing was committed).
    // The last round's pages go first: a commit is on the disk only after the one before it.
    if (unflushed_pages_) BLKSNAP_RETURN_IF_ERROR(device.Flush());
    unflushed_pages_ = false;
    BLKSNAP_RETURN_IF_ERROR(AppendPages(batch));
    BLKSNAP_RETURN_IF_ERROR(device.Flush());
    *durable = true;
    return CompactIfDue(durable);
  }
  // Power otherwise: one flush makes the data of this batch (written before it was queued) and
  // the pages of the last round durable. Only then are this batch's pages written: a page that
  // locates data never reaches the disk before the data, and the next round's flush commits it.
  BLKSNAP_RETURN_IF_ERROR(device.Flush());
  unflushed_pages_ = false;
  if (batch.empty()) return Status::Ok();
  BLKSNAP_RETURN_IF_ERROR(AppendPages(batch));
  unflushed_pages_ = true;
  return CompactIfDue(durable);
}

Status ChunkLog::AppendPages(const std::vector<LogRecord>& batch) {
  BlockDevice& device = storage_->device();
  const size_t pages = (batch.size() + kLogRecordsPerPage - 1) / kLogRecordsPerPage;
  // At most a segment's worth of pages is written at once (they are consecutive only within
  // a segment), from one buffer.
  const size_t buffer_pages = std::min<size_t>(pages, kLogSegmentSize / kLogPageSize);
  AlignedBuffer buffer = AllocateAligned(std::max<size_t>(buffer_pages, 1) * kLogPageSize);
  if (!buffer) return Status::Error(ENOMEM, "no memory for chunk log pages");
  uint64_t run_start = cursor_.next_page;  // consecutive pages are written with one write
  size_t run_pages = 0;
  const uint64_t batch_first = cursor_.next_seq;
  for (size_t i = 0; i < pages; ++i) {
    LogPage page;
    bool last_in_segment = false;
    BLKSNAP_RETURN_IF_ERROR(StartPage(batch_first, &page, &last_in_segment));
    const size_t first = i * kLogRecordsPerPage;
    const size_t count = std::min<size_t>(kLogRecordsPerPage, batch.size() - first);
    page.records.assign(batch.begin() + first, batch.begin() + first + count);
    const auto bytes = SerializeLogPage(page);
    std::memcpy(buffer.get() + run_pages * kLogPageSize, bytes.data(), kLogPageSize);
    ++run_pages;
    if (last_in_segment || i + 1 == pages || run_pages == buffer_pages) {
      BLKSNAP_RETURN_IF_ERROR(device.Write(
          run_start, std::span<const uint8_t>(buffer.get(), run_pages * kLogPageSize)));
      run_start = page.next;
      run_pages = 0;  // the buffer is reused from its start
    }
  }
  return Status::Ok();
}

Status ChunkLog::StartPage(uint64_t batch_first, LogPage* page, bool* last_in_segment) {
  page->snapshot_id = id_;
  page->batch_first = batch_first;
  page->seq = cursor_.next_seq;
  page->epoch = cursor_.epoch;
  page->records.clear();
  const uint64_t offset = cursor_.next_page;
  // The last page of a segment points to a new one (which may happen to follow it).
  *last_in_segment = offset + kLogPageSize >= cursor_.segment_end;
  if (*last_in_segment) {
    BLKSNAP_ASSIGN_OR_RETURN(uint64_t segment, storage_->Allocate(kLogSegmentSize));
    page->next = segment;
  } else {
    page->next = offset + kLogPageSize;
  }
  cursor_.next_page = page->next;
  if (*last_in_segment) cursor_.segment_end = page->next + kLogSegmentSize;
  ++cursor_.next_seq;
  ++pages_since_compaction_;
  return Status::Ok();
}

Status ChunkLog::CommitInPlace(const LogRecord& record) {
  MutexLock write(write_mu_);
  if (!in_place_failed_.ok()) return in_place_failed_;
  Status s = WriteInPlace(record);
  if (s.ok()) {
    bool durable = false;
    s = CompactIfDue(&durable);
  }
  if (!s.ok()) in_place_failed_ = s;
  return s;
}

Status ChunkLog::WriteInPlace(const LogRecord& record) {
  if (!in_place_buffer_) {
    void* p =
        ::mmap(nullptr, kLogPageSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return Status::FromErrno("chunk log page buffer");
    in_place_buffer_ = static_cast<uint8_t*>(p);
    // Resident, so that the kernel's copy from it cannot stop at a fault (and then at a kill,
    // leaving the page torn). Best effort: without the lock a fault is still rare.
    std::memset(in_place_buffer_, 0, kLogPageSize);
    (void)::mlock(in_place_buffer_, kLogPageSize);
  }
  BlockDevice& device = storage_->device();
  if (!open_page_valid_ || open_page_.count() == kLogRecordsPerPage) {
    open_page_offset_ = cursor_.next_page;
    bool last_in_segment = false;
    open_page_valid_ = false;
    BLKSNAP_RETURN_IF_ERROR(LeaveMappedPage());
    LogPage header;
    BLKSNAP_RETURN_IF_ERROR(StartPage(cursor_.next_seq, &header, &last_in_segment));
    open_page_.Begin(in_place_buffer_, header);
    if (map_pages_) {
      auto mapped = device.MapShared(open_page_offset_, kLogPageSize);
      if (mapped.ok()) {
        InstallSigbusHandler();
        open_map_ = std::move(mapped).value();
        BLKSNAP_RETURN_IF_ERROR(PublishMapped(/*begin=*/true));
      } else if (mapped.status().errnum() == ENOTSUP) {
        map_pages_ = false;  // this device never maps: written from now on
      }
    }
    open_page_valid_ = true;
  }
  // The page is changed in place: a failed write below leaves the record in the buffer, but
  // then the log has failed for good (in_place_failed_) and the buffer is never written again.
  open_page_.Append(in_place_buffer_, record);
  if (open_map_) return PublishMapped(/*begin=*/false);
  return device.Write(open_page_offset_, std::span<const uint8_t>(in_place_buffer_, kLogPageSize));
}

Status ChunkLog::LeaveMappedPage() {
  // The full page stays in the kernel as it is, its write-back started now and waited for a
  // page later: a write-back that fails (a failing disk) fails a commit within 250 commits,
  // where nothing else would report it before the next flush.
  if (left_map_) {
    Status s = left_map_->WriteBack(/*wait=*/true);
    left_map_.reset();
    if (!s.ok()) {
      return Status::Error(s.errnum(), "chunk log: the write-back of a full log page failed (" +
                                           std::string(s.message()) + ")");
    }
  }
  if (!open_map_) return Status::Ok();
  left_map_ = std::move(open_map_);
  return left_map_->WriteBack(/*wait=*/false);
}

Status ChunkLog::PublishMapped(bool begin) {
  // A store the kernel cannot back (the file shrank, its file system failed, the page could
  // not be read in) raises SIGBUS: an error here, as a failed write would be.
  sigjmp_buf jump;
  if (sigsetjmp(jump, 0) != 0) {
    open_map_.reset();
    return Status::Error(EIO, "chunk log: a store into the mapped log page failed (SIGBUS)");
  }
  SigbusGuard(&jump, open_map_->data(), kLogPageSize);
  if (begin) {
    PublishLogPageBegin(open_map_->data(), in_place_buffer_);
  } else {
    PublishLogPageAppend(open_map_->data(), in_place_buffer_, open_page_.count());
  }
  SigbusUnguard();
  return Status::Ok();
}

uint64_t ChunkLog::last_seq() const {
  MutexLock write(write_mu_);
  return cursor_.next_seq - 1;
}

uint64_t ChunkLog::pages_since_compaction() const {
  MutexLock write(write_mu_);
  return pages_since_compaction_;
}

void ChunkLog::set_pages_since_compaction(uint64_t pages) {
  MutexLock write(write_mu_);
  pages_since_compaction_ = pages;
}

void ChunkLog::SetCompaction(Collector collector, uint64_t compact_pages) {
  MutexLock write(write_mu_);
  collector_ = std::move(collector);
  compact_pages_ = compact_pages;
}

Status ChunkLog::CompactIfDue(bool* durable) {
  if (!collector_ || pages_since_compaction_ < compact_pages_ ||
      pages_since_compaction_ < 2 * last_compaction_pages_) {
    return Status::Ok();
  }
  std::vector<LogRecord> records;
  collector_(&records);
  BLKSNAP_RETURN_IF_ERROR(CompactWith(std::move(records)));
  *durable = true;  // flushed after the pages written before it (power)
  return Status::Ok();
}

Status ChunkLog::Compact(std::vector<LogRecord> records) {
  MutexLock write(write_mu_);
  return CompactWith(std::move(records));
}

Status ChunkLog::CompactWith(std::vector<LogRecord> records) {
  // Compacted records carry no CRC: their data is flushed before them, and may change in place.
  for (LogRecord& r : records) {
    r.flags &= static_cast<uint16_t>(~kRecordFlagVerify);
    r.crc = 0;
  }
  BlockDevice& device = storage_->device();
  // Power: the data of every collected record is durable before a page that locates it.
  if (sync_) BLKSNAP_RETURN_IF_ERROR(device.Flush());
  const Cursor old = cursor_;
  BLKSNAP_ASSIGN_OR_RETURN(uint64_t first, storage_->Allocate(kLogSegmentSize));
  cursor_.next_page = first;
  cursor_.segment_end = first + kLogSegmentSize;
  cursor_.next_seq = 1;
  cursor_.epoch = storage_->header().log_epoch + 1;
  Status s = AppendPages(records);
  if (s.ok() && sync_) s = device.Flush();
  if (!s.ok()) {
    cursor_ = old;  // the header still points at the old chain, complete
    return s;
  }
  const uint64_t epoch = cursor_.epoch;
  const uint64_t sealed = cursor_.next_seq - 1;
  // From here a failure is fatal: the header may or may not point at the new chain.
  BLKSNAP_RETURN_IF_ERROR(storage_->UpdateHeader([&](DiffStorageHeader& h) {
    h.log_start = first;
    h.log_epoch = epoch;
    h.log_sealed = sealed;
  }));
  last_compaction_pages_ = (records.size() + kLogRecordsPerPage - 1) / kLogRecordsPerPage;
  pages_since_compaction_ = 0;
  unflushed_pages_ = false;
  open_page_valid_ = false;  // the next in-place commit starts a page of the new chain
  open_map_.reset();         // the old chain's pages: an error of theirs still shows, later
  left_map_.reset();
  compactions_.fetch_add(1);
  return Status::Ok();
}

Result<ChunkLog::Scan> ChunkLog::Read(BlockDevice& device, const Uuid& id, uint64_t start,
                                      uint64_t header_epoch, uint64_t sealed, bool torn_tail) {
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
    // A page of this log at `at` that starts the commit after `seq`'s.
    auto next_commit_at = [&](uint64_t at, uint64_t seq) {
      if (at + kLogPageSize > whole) return false;
      auto page = ParseLogPage(std::span<const uint8_t>(buffer.get() + at, kLogPageSize));
      return page.ok() && page->snapshot_id == id && page->seq == seq + 1 &&
             page->batch_first == page->seq && page->epoch >= scan.cursor.epoch &&
             page->epoch <= header_epoch;
    };
    for (uint64_t at = 0; at < whole; at += kLogPageSize) {
      const std::span<const uint8_t> bytes(buffer.get() + at, kLogPageSize);
      auto page = ParseLogPage(bytes);
      // A crash log's open page that a kill stopped inside an append (a mapped page,
      // PublishLogPageAppend): the version before that append, and the end of the log.
      bool torn = false;
      if (!page.ok() && !torn_tail &&
          IsLogPageOf(bytes, id, scan.cursor.next_seq, scan.cursor.epoch, header_epoch) &&
          !next_commit_at(at + kLogPageSize, scan.cursor.next_seq)) {
        auto before = ParseTornLogPage(bytes);
        torn = before.ok();
        if (torn) page = std::move(before);
      }
      if (!page.ok() || page->snapshot_id != id || page->seq != scan.cursor.next_seq ||
          page->epoch < scan.cursor.epoch || page->epoch > header_epoch) {
        // The end of the log — unless the next commit follows: a commit is written only once
        // the one before it returned (for power: synced), so this page was committed and is
        // now damaged. Then records are missing: the snapshot must not be served.
        scan.damaged = scan.cursor.next_seq <= sealed ||
                       next_commit_at(at + kLogPageSize, scan.cursor.next_seq) ||
                       (!torn_tail && IsLogPageOf(bytes, id, scan.cursor.next_seq,
                                                  scan.cursor.epoch, header_epoch));
        return scan;
      }
      const uint64_t here = offset + at;
      const bool last_in_segment = here + kLogPageSize == segment_end;
      if (last_in_segment ? page->next + kLogSegmentSize > device.size()
                          : page->next != here + kLogPageSize) {
        scan.damaged = scan.cursor.next_seq <= sealed;
        return scan;  // not where we put the next page: not a page we wrote
      }
      if (page->batch_first == page->seq) scan.last_commit = scan.records.size();
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
      }
      if (torn) {
        // Sealed pages are whole; a commit after the page (in the next segment, where the
        // check above does not look) means it had been committed whole: damaged.
        scan.torn_page = true;
        scan.damaged = page->seq <= sealed;
        if (last_in_segment && page->next + kLogPageSize <= device.size()) {
          BLKSNAP_RETURN_IF_ERROR(device.Read(page->next, std::span(buffer.get(), kLogPageSize)));
          scan.damaged = scan.damaged || next_commit_at(0, page->seq);
        }
        return scan;
      }
      if (last_in_segment) {
        offset = page->next;
        jumped = true;
        break;
      }
    }
    if (!jumped) offset += whole;
  }
  scan.damaged = scan.cursor.next_seq <= sealed;  // ended (short device) inside the sealed part
  return scan;
}

}  // namespace blksnap
