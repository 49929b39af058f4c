// ChunkLog: the records that locate a durable snapshot's preserved chunks in its difference
// storage (docs/diff-storage-format.md, "chunk log"; docs/durable-snapshots.md).
//
// A record (device, chunk index, storage offset, length, CRC of the data) is committed once its
// chunk's data is in the storage: Commit() returns when the page holding it is written (to the
// kernel: durability crash, see in-place commits below) or synced together with the data before
// it (durability power: see group commit below). The original chunk may be overwritten only after
// that (the write-ordering rule), so a record found at recovery locates data that is there (or, in
// a torn last commit, fails its data CRC and is dropped), and a record lost to a crash belongs to a
// chunk whose original was never overwritten.
//
// In-place commits (crash): a commit adds its record to the log's open page under write_mu_;
// when the page is full the next commit starts a new one. The page is built in a locked buffer,
// updated in constant time (the record, the count, a CRC combined from carried parts:
// LogPageBuilder), not serialized again. No writer waits for another's round (a round costs
// every waiter a futex sleep and wake-up; measured: +30% copy-on-write IOPS, docs/performance.md),
// and 125 records share a page. Where the storage can map it (BlockDevice::MapShared: a file on
// ext4, XFS or tmpfs, or a block device) the open page is mapped shared and the commit stores
// its record into that mapping — in the kernel's page cache at once, so it outlives a kill -9 as
// a write would, without a system call or an I/O (a 4 KiB direct write a commit before: ~7% of a
// copy-on-write's CPU in the VM, docs/performance-vm.md). A kill may stop the stores anywhere, so
// they go in an order that leaves a page the recovery reads right (PublishLogPageAppend /
// ParseTornLogPage: the record, then the count, then the checksum; a page is begun with its
// magic cleared first and stored last); a page read back that way is still on the disk as it
// is, so the recovery compacts the log past it (Scan::torn_page). A store that faults (SIGBUS:
// the storage failing) fails the commit as a failed write would (util/sigbus_guard.h). The
// kernel writes a mapped page back when it likes and reports a failed write-back to no store:
// a full page's write-back is started when it is left and waited for when the next one is, so
// a failing write-back fails a commit at most two pages later (MappedRange::WriteBack).
// Elsewhere the page is written again, whole (4 KiB,
// aligned): the kernel completes a one-page write into its cache or does not start it. Either
// way the page on record holds every record whose commit returned, and both are safe for a
// process crash only: a crash snapshot found after a power loss is corrupted anyway
// (docs/durable-snapshots.md). A recovered log starts a new page (the next epoch) and never
// writes into the page it ended on.
//
// Group commit (power): callers queue their record and wait; whoever finds no round being written
// becomes the writer of everything queued so far, so N storers in flight cost one commit, not N
// (dm-snapshot's persistent store pays a data write and a FUA metadata write per commit). For
// power, a round whose records all carry the data's CRC (kRecordFlagVerify; zero records need
// none) is its pages and then one flush, for them and the data: committed by that flush. A
// power cut during it may leave a page on the disk without the data it locates, so recovery
// checks the CRCs of the log's last commit and drops the records that fail (CheckLastCommit in
// snapshot_recovery.h); every earlier commit was flushed before the next one was written. Other
// rounds (a record without a CRC: a CPU without a CRC instruction, an image write) are
// pipelined: one flush (the data of the batch and the pages of the round before, which it
// thereby commits), then their pages, committed by the next round's flush (a lone writer leads
// that round itself). Either way one flush per round. Power pages are never rewritten: each
// batch starts a new page (a torn rewrite could lose records that were committed).
//
// Pages are chained: each says where the next page goes (the next 4 KiB of its 1 MiB segment,
// or a new segment allocated from the storage when the segment is full), is numbered (seq 1, 2,
// ...) and carries the epoch of the run that wrote it. Read() follows the chain from the header's
// log start and stops at the first page that is not the expected next one (bad CRC, other
// snapshot, seq not +1, epoch lower than its predecessor's or above the header's): a torn batch
// ends the log, and a stale page left behind a torn batch by an earlier run is never taken for a
// new one, because a recovered log continues with the next epoch.
//
// Compaction: once the log has grown by compact_pages pages and by twice the pages of the last
// compaction, the writer of a commit (after its batch) asks the collector for a record of every
// chunk whose data is written (the chunk tables: see DiffArea::CollectRecords), writes them 125
// to a page in a new chain with the next epoch (flushed first and after for power), and points
// the header at it; commits then continue on the new chain. Commits wait meanwhile. A crash
// before the header write keeps the old chain, complete; after it, the new one holds every
// committed record (and maybe some about to be: their data is written, so they are right).
//
// Errors are sticky: after a failed commit every later Commit() fails (the snapshot is then
// corrupted by its caller). Locking: mu_ guards the queue and the counters; the writer holds
// write_mu_ (the cursor) while it writes without mu_. In-place (crash) commits take write_mu_
// only. Read() of a crash log (torn_tail false) also takes a page of this log that fails its
// CRC for damage, not for the end (only a power loss tears a crash page), unless it is an append
// that a kill stopped between its stores (ParseTornLogPage) and no later commit follows it: then
// the version before that append ends the log.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "blksnap/status.h"
#include "blksnap/uuid.h"
#include "engine/diff_storage_format.h"
#include "util/mutex.h"

namespace blksnap {

class BlockDevice;
class MappedRange;
class DiffStorage;

class ChunkLog {
 public:
  // Where a log continues: the next page's offset, the end of its segment, its seq and epoch.
  struct Cursor {
    uint64_t next_page = 0;
    uint64_t segment_end = 0;
    uint64_t next_seq = 1;
    uint64_t epoch = 1;
  };
  struct Scan {
    std::vector<LogRecord> records;  // in log order: a later record of a chunk replaces one before
    Cursor cursor;                   // where the log continues (epoch: the last page's)
    uint64_t end = 0;                // the first byte past every record's data and the log
    uint64_t pages = 0;
    // A page that was committed is damaged (a commit written after it is intact): records are
    // lost. Detected within a segment only.
    bool damaged = false;
    // The log ended at a crash page that a kill stopped inside an append, read as the version
    // before (ParseTornLogPage). It is still on the disk as it is: the recovery compacts the log,
    // so that no later commit ever follows it (which would make it look damaged).
    bool torn_page = false;
    // records[last_commit..] are the last commit's: with kRecordFlagVerify, their data may not
    // have reached the disk (CheckLastCommit).
    size_t last_commit = 0;
  };

  // Appends a record of every chunk whose data is written (for a compaction).
  using Collector = std::function<void(std::vector<LogRecord>* out)>;

  ChunkLog(DiffStorage* storage, const Uuid& id, bool sync, Cursor cursor);
  ~ChunkLog();
  ChunkLog(const ChunkLog&) = delete;
  ChunkLog& operator=(const ChunkLog&) = delete;

  // A new log: allocates its first segment from the storage.
  static Result<std::unique_ptr<ChunkLog>> Start(DiffStorage* storage, const Uuid& id, bool sync);
  // Follows the chain from `start` (see the top of this file). Never fails on content: a bad
  // page ends the log. Fails only on a read error.
  // `sealed`: pages 1..sealed are known durable (DiffStorageHeader::log_sealed): ending
  // before it is damage. Without `torn_tail` (a crash log: only a power loss tears a page, and
  // that corrupts a crash snapshot anyway) a page of this log that fails its checksum where
  // the next page should be is damage too, not the end of the log.
  static Result<Scan> Read(BlockDevice& device, const Uuid& id, uint64_t start,
                           uint64_t header_epoch, uint64_t sealed, bool torn_tail = true);

  // A compacted log (a clean stop): `records` packed 125 to a page in a new chain starting in a
  // new segment, with `epoch`; returns once written (and flushed for power). The caller then
  // points the header at it. The old chain's space is not reused.
  // Returns the new chain's start; *pages: its pages.
  static Result<uint64_t> WriteCompact(DiffStorage* storage, const Uuid& id, bool sync,
                                       uint64_t epoch, const std::vector<LogRecord>& records,
                                       uint64_t* pages);

  // Commits one record (see the top of this file); blocks until it is.
  Status Commit(const LogRecord& record) EXCLUDES(mu_);
  // Compacts now, to `records` (recovery, after dropping torn records: a later commit must not
  // make them look committed). Not while commits run.
  Status Compact(std::vector<LogRecord> records) EXCLUDES(write_mu_);
  // Enables compaction (null disables it: before the chunk tables go). Waits for a compaction
  // in progress.
  void SetCompaction(Collector collector, uint64_t compact_pages) EXCLUDES(write_mu_);
  uint64_t start() const { return start_; }
  // The seq of the last page written (0 if none).
  uint64_t last_seq() const EXCLUDES(write_mu_);
  // Pages written (or, for a recovered log, read) since the chain began.
  uint64_t pages_since_compaction() const EXCLUDES(write_mu_);
  void set_pages_since_compaction(uint64_t pages) EXCLUDES(write_mu_);
  uint64_t commits() const EXCLUDES(mu_);  // power rounds written (for tests and stats)
  uint64_t compactions() const { return compactions_.load(); }  // for tests and stats

 private:
  // Writes `batch` as pages at cursor_ (no flush).
  Status AppendPages(const std::vector<LogRecord>& batch) REQUIRES(write_mu_);
  // A page at cursor_ (header fields, `next`: a new segment's first page if this is its
  // segment's last); advances cursor_ past it.
  Status StartPage(uint64_t batch_first, LogPage* page, bool* last_in_segment) REQUIRES(write_mu_);
  // Crash: the record added to the open page, which is written again whole (see the top).
  Status CommitInPlace(const LogRecord& record) EXCLUDES(write_mu_);
  Status WriteInPlace(const LogRecord& record) REQUIRES(write_mu_);
  // The open page's new version into its mapping: Begin's (a new page) or the last Append's.
  Status PublishMapped(bool begin) REQUIRES(write_mu_);
  Status LeaveMappedPage() REQUIRES(write_mu_);
  // A round of commits (power: pages then flush when every record carries its CRC, else flush
  // then pages). *durable: this batch is committed now (else by the next round's flush).
  Status WriteRound(const std::vector<LogRecord>& batch, bool* durable) REQUIRES(write_mu_);
  Status CompactIfDue(bool* durable) REQUIRES(write_mu_);
  // The compaction itself: `records` in a new chain, the header pointed at it.
  Status CompactWith(std::vector<LogRecord> records) REQUIRES(write_mu_);

  DiffStorage* const storage_;
  const Uuid id_;
  const bool sync_;
  const uint64_t start_;

  mutable Mutex mu_;
  CondVar cv_;
  std::vector<LogRecord> pending_ GUARDED_BY(mu_);
  uint64_t submitted_ GUARDED_BY(mu_) = 0;
  uint64_t committed_ GUARDED_BY(mu_) = 0;
  uint64_t written_ GUARDED_BY(mu_) = 0;  // power: pages written, flushed by the next round
  uint64_t batches_ GUARDED_BY(mu_) = 0;
  std::atomic<uint64_t> compactions_{0};
  bool writing_ GUARDED_BY(mu_) = false;
  Status failed_ GUARDED_BY(mu_);

  mutable Mutex write_mu_ ACQUIRED_AFTER(mu_);
  Cursor cursor_ GUARDED_BY(write_mu_);
  Collector collector_ GUARDED_BY(write_mu_);
  uint64_t compact_pages_ GUARDED_BY(write_mu_) = 0;
  uint64_t pages_since_compaction_ GUARDED_BY(write_mu_) = 0;
  uint64_t last_compaction_pages_ GUARDED_BY(write_mu_) = 0;
  bool unflushed_pages_ GUARDED_BY(write_mu_) = false;  // power: pages not flushed yet
  // Crash: the page that in-place commits fill, where it is, and the locked page its bytes
  // are written from; a failed in-place commit fails every later one.
  LogPageBuilder open_page_ GUARDED_BY(write_mu_);  // the bytes of in_place_buffer_
  uint64_t open_page_offset_ GUARDED_BY(write_mu_) = 0;
  bool open_page_valid_ GUARDED_BY(write_mu_) = false;
  uint8_t* in_place_buffer_ GUARDED_BY(write_mu_) = nullptr;
  Status in_place_failed_ GUARDED_BY(write_mu_);
  // The open page mapped from the storage (null: written with Write); false once the storage
  // refused a mapping (ENOTSUP).
  std::unique_ptr<MappedRange> open_map_ GUARDED_BY(write_mu_);
  std::unique_ptr<MappedRange> left_map_ GUARDED_BY(write_mu_);  // the page before, written back
  bool map_pages_ GUARDED_BY(write_mu_) = true;
};

}  // namespace blksnap
