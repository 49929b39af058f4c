// Crash-durability commits (chunk_log.h, "Crash"): each commit adds its record to the log's open
// page and writes that page again, whole, in place, so records share pages (125 to a page)
// instead of taking a page per round, and no writer waits for another's round. A daemon crash
// keeps every record whose commit returned; the recovered log continues on a new page with the
// next epoch and never writes into the page it ended on; a damaged page is reported, not taken
// for a torn tail. Kill -9 at random instants during concurrent commits: durable_snapshot_test.cc,
// DaemonCrashAtRandomInstantsKeepsTheImage.
#include "engine/chunk_log.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/falloc.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <new>
#include <random>
#include <string>
#include <vector>

#include "blksnap/engine.h"
#include "blksnap/io.h"
#include "engine/diff_storage.h"
#include "engine/diff_storage_format.h"
#include "engine/engine_test_util.h"
#include "engine/power_test_util.h"
#include "util/crc32c.h"

namespace blksnap {
namespace {

constexpr uint64_t kMiB = 1ull << 20;
constexpr uint64_t kDeviceSize = 4 * kMiB;
constexpr uint64_t kChunk = 4096;

Config TestConfig() {
  Config config;
  config.cbt_checkpoint_interval_ms = 0;
  config.chunk_minimum_shift = 12;
  config.chunk_log_compact_pages = UINT32_MAX;  // the records as committed
  return config;
}

// Where the header says the chunk log starts.
uint64_t LogStart(BlockDevice& storage) {
  std::vector<uint8_t> slots(2 * kDiffStorageHeaderBlockSize);
  EXPECT_TRUE(storage.Read(0, slots).ok());
  auto header = ParseDiffStorageHeaderSlots(slots);
  EXPECT_TRUE(header.ok());
  return header.ok() ? header->log_start : 0;
}

std::vector<uint8_t> PageAt(BlockDevice& storage, uint64_t offset) {
  std::vector<uint8_t> page(kLogPageSize);
  EXPECT_TRUE(storage.Read(offset, page).ok());
  return page;
}

ChunkLog::Scan ReadLog(BlockDevice& storage, const Uuid& id) {
  std::vector<uint8_t> slots(2 * kDiffStorageHeaderBlockSize);
  EXPECT_TRUE(storage.Read(0, slots).ok());
  const DiffStorageHeader h = ParseDiffStorageHeaderSlots(slots).value();
  auto scan = ChunkLog::Read(storage, id, h.log_start, h.log_epoch, h.log_sealed);
  EXPECT_TRUE(scan.ok());
  return scan.ok() ? *scan : ChunkLog::Scan{};
}

Result<std::shared_ptr<Snapshot>> Recover(Engine& engine, std::shared_ptr<BlockDevice> original,
                                          std::shared_ptr<BlockDevice> storage, const Uuid& id) {
  BLKSNAP_RETURN_IF_ERROR(engine.Attach("d", original).status());
  return engine.RecoverSnapshot({.id = id, .storage_device = storage, .check_originals = false});
}

// Generation 1 on a fresh device, a crash snapshot of it taken, chunks 0..n-1 preserved (one
// commit each), and (when `scan`) the log as written; then a daemon crash (written data stays).
Uuid CrashAfterCommits(std::shared_ptr<BlockDevice> original_disk,
                       std::shared_ptr<BlockDevice> storage_disk, uint64_t n,
                       ChunkLog::Scan* scan = nullptr) {
  Power power;
  auto engine = Engine::Create(TestConfig()).value();
  auto tracker = engine->Attach("d", Powered(original_disk, &power)).value();
  EXPECT_TRUE(WritePattern(*tracker, 0, kDeviceSize, 1).ok());
  Uuid id = engine
                ->CreateSnapshot({.storage_path = "storage",
                                  .storage_device = Powered(storage_disk, &power),
                                  .durability = SnapshotDurability::kCrash})
                .value();
  EXPECT_TRUE(engine->AddDevice(id, "d").ok());
  EXPECT_TRUE(engine->Take(id).ok());
  for (uint64_t i = 0; i < n; ++i) EXPECT_TRUE(WritePattern(*tracker, i * kChunk, kChunk, 2).ok());
  if (scan) *scan = ReadLog(*storage_disk, id);
  power.Cut();
  return id;
}

// Recovers snapshot `id` (it must come back taken, with the take's image), writes chunks
// [first, first + n) (each a commit), runs `then`, and crashes again (written data stays).
void RecoverWriteAndCrash(std::shared_ptr<BlockDevice> original_disk,
                          std::shared_ptr<BlockDevice> storage_disk, const Uuid& id, uint64_t first,
                          uint64_t n, const std::function<void()>& then = {}) {
  Power power;
  auto engine = Engine::Create(TestConfig()).value();
  auto snap = Recover(*engine, Powered(original_disk, &power), Powered(storage_disk, &power), id);
  ASSERT_TRUE(snap.ok()) << snap.status().ToString();
  EXPECT_EQ((*snap)->state(), SnapshotState::kTaken);
  ASSERT_OK(VerifyPattern(*(*snap)->image("d"), 0, kDeviceSize, 1));
  auto tracker = engine->FindTracker("d");
  for (uint64_t i = first; i < first + n; ++i)
    ASSERT_OK(WritePattern(*tracker, i * kChunk, kChunk, 3));
  if (then) then();
  power.Cut();
}

// Snapshot `id` recovers taken, with the take's image.
void ExpectTakeRecovered(std::shared_ptr<BlockDevice> original_disk,
                         std::shared_ptr<BlockDevice> storage_disk, const Uuid& id) {
  auto engine = Engine::Create(TestConfig()).value();
  auto snap = Recover(*engine, original_disk, storage_disk, id);
  ASSERT_TRUE(snap.ok()) << snap.status().ToString();
  EXPECT_EQ((*snap)->state(), SnapshotState::kTaken);
  ASSERT_OK(VerifyPattern(*(*snap)->image("d"), 0, kDeviceSize, 1));
}

TEST(ChunkLogTest, CrashCommitsShareAPageWrittenInPlaceAndSurviveACrash) {
  auto original_disk = MakeMemoryDevice(kDeviceSize);
  auto storage_disk = MakeMemoryDevice(64 * kMiB);
  constexpr uint64_t kFirst = 300;  // 125 + 125 + 50 records
  ChunkLog::Scan scan;
  const Uuid id = CrashAfterCommits(original_disk, storage_disk, kFirst, &scan);
  // Written as committed, before the crash: three pages, not one per commit.
  EXPECT_EQ(scan.records.size(), kFirst);
  EXPECT_EQ(scan.pages, (kFirst + kLogRecordsPerPage - 1) / kLogRecordsPerPage);
  // The recovered log goes on in a new page (its last page, half full, is not written again):
  // 10 more commits, then a crash again.
  RecoverWriteAndCrash(original_disk, storage_disk, id, kFirst, 10, [&] {
    const ChunkLog::Scan after = ReadLog(*storage_disk, id);
    EXPECT_EQ(after.records.size(), kFirst + 10);
    EXPECT_EQ(after.pages, 4u);
  });
  ExpectTakeRecovered(original_disk, storage_disk, id);
}

// The open page holds every record of the last commits, so a bit flipped in it must not pass for
// a torn tail (only a power loss tears a crash log's page, and that corrupts the snapshot
// anyway): the snapshot comes back corrupted, never served without the records.
TEST(ChunkLogTest, ADamagedOpenPageOfACrashLogIsReportedNotServed) {
  for (bool damage : {false, true}) {
    SCOPED_TRACE(damage ? "damaged" : "intact");
    auto original_disk = MakeMemoryDevice(kDeviceSize);
    auto storage_disk = MakeMemoryDevice(64 * kMiB);
    const Uuid id = CrashAfterCommits(original_disk, storage_disk, 8);
    const uint64_t page_at = LogStart(*storage_disk);
    std::vector<uint8_t> page = PageAt(*storage_disk, page_at);
    if (damage) page[200] ^= 0x10;  // in the records
    ASSERT_OK(storage_disk->Write(page_at, page));
    auto engine = Engine::Create(TestConfig()).value();
    auto snap = Recover(*engine, original_disk, storage_disk, id);
    ASSERT_TRUE(snap.ok()) << snap.status().ToString();
    std::vector<uint8_t> buf(kChunk);
    if (!damage) {
      EXPECT_EQ((*snap)->state(), SnapshotState::kTaken);
      ASSERT_OK(VerifyPattern(*(*snap)->image("d"), 0, kDeviceSize, 1));
      continue;
    }
    EXPECT_EQ((*snap)->state(), SnapshotState::kCorrupted);
    EXPECT_EQ((*snap)->devices().front().errnum, EUCLEAN);
    EXPECT_EQ((*snap)->image("d")->Read(0, buf).errnum(), EIO);
  }
}

// A crash commit's data was in the kernel before its record: at recovery a record of the last
// page whose data no longer matches its CRC is damage (power would drop it as a torn commit's),
// so the snapshot comes back corrupted instead of reading that chunk from the overwritten
// original.
TEST(ChunkLogTest, DamagedDataOfACrashCommitIsReportedNotDropped) {
  if (!Crc32cIsFast()) GTEST_SKIP() << "records carry no CRC on this CPU: nothing to check";
  auto original_disk = MakeMemoryDevice(kDeviceSize);
  auto storage_disk = MakeMemoryDevice(64 * kMiB);
  ChunkLog::Scan scan;
  const Uuid id = CrashAfterCommits(original_disk, storage_disk, 8, &scan);
  ASSERT_EQ(scan.records.size(), 8u);
  const LogRecord& r = scan.records.front();
  ASSERT_TRUE(r.flags & kRecordFlagVerify);
  ASSERT_OK(storage_disk->Write(r.offset, std::vector<uint8_t>(r.length, 0)));
  auto engine = Engine::Create(TestConfig()).value();
  auto snap = Recover(*engine, original_disk, storage_disk, id);
  ASSERT_TRUE(snap.ok()) << snap.status().ToString();
  EXPECT_EQ((*snap)->state(), SnapshotState::kCorrupted);
  EXPECT_EQ((*snap)->devices().front().errnum, EUCLEAN);
}

// Read() of a crash log whose open page a kill stopped inside an append (a mapped page): the
// version before that append, and the end of the log, not damage — unless a later commit follows
// it, in the same segment or (the page being the last of its segment) in the next one: then the
// page had been committed whole, and is damaged.
TEST(ChunkLogTest, AnAppendStoppedBetweenItsStoresEndsTheLogWithTheVersionBefore) {
  const Uuid id = Uuid::Random();
  const uint64_t start = kDiffStorageHeaderSize;
  // Page `seq` at `at` with `records` records; `torn`: and the next record's bytes in its slot,
  // not yet counted (a kill between the record and the count).
  auto write_page = [&](BlockDevice& storage, uint64_t seq, uint64_t epoch, uint64_t at,
                        uint64_t next, uint32_t records, bool torn) {
    LogPage header;
    header.snapshot_id = id;
    header.seq = header.batch_first = seq;
    header.epoch = epoch;
    header.next = next;
    std::vector<uint8_t> bytes(kLogPageSize), whole(kLogPageSize);
    LogPageBuilder builder, more;
    builder.Begin(bytes.data(), header);
    more.Begin(whole.data(), header);
    for (uint32_t i = 0; i <= records; ++i) {
      LogRecord r;
      r.chunk = seq * 1000 + i;
      r.offset = 6 * kMiB;
      r.length = 4096;
      if (i < records) builder.Append(bytes.data(), r);
      more.Append(whole.data(), r);
    }
    const size_t slot = kPageRecordsOffset + size_t{records} * kLogRecordSize;
    if (torn) std::copy_n(whole.begin() + slot, kLogRecordSize, bytes.begin() + slot);
    ASSERT_OK(storage.Write(at, bytes));
  };
  for (bool last_in_segment : {false, true}) {
    SCOPED_TRACE(last_in_segment ? "the last page of a segment" : "inside a segment");
    auto storage = MakeMemoryDevice(8 * kMiB);
    const uint64_t pages = last_in_segment ? kLogSegmentSize / kLogPageSize : 2;
    const uint64_t next_segment = start + 2 * kMiB;
    for (uint64_t seq = 1; seq < pages; ++seq)
      write_page(*storage, seq, 1, start + (seq - 1) * kLogPageSize, start + seq * kLogPageSize, 1,
                 false);
    const uint64_t torn_at = start + (pages - 1) * kLogPageSize;
    const uint64_t after = last_in_segment ? next_segment : torn_at + kLogPageSize;
    write_page(*storage, pages, 1, torn_at, after, 7, true);  // 7 returned, the 8th torn
    if (::testing::Test::HasFatalFailure()) return;
    auto scan = ChunkLog::Read(*storage, id, start, 2, 0, /*torn_tail=*/false);
    ASSERT_TRUE(scan.ok());
    EXPECT_FALSE(scan->damaged);
    EXPECT_TRUE(scan->torn_page);
    ASSERT_EQ(scan->records.size(), pages - 1 + 7);
    EXPECT_EQ(scan->records.back().chunk, pages * 1000 + 6);
    EXPECT_EQ(scan->cursor.next_seq, pages + 1);  // a recovered log goes on after that page
    EXPECT_EQ(scan->cursor.next_page, after);
    // A later commit after it (the next run's, with the next epoch).
    write_page(*storage, pages + 1, 2, after, after + kLogPageSize, 1, false);
    scan = ChunkLog::Read(*storage, id, start, 2, 0, /*torn_tail=*/false);
    ASSERT_TRUE(scan.ok());
    EXPECT_TRUE(scan->damaged);
  }
}

// A torn crash page stays on the disk as it is; the recovery compacts the log past it, so the
// commits after the recovery never make it look damaged: a second crash recovers the snapshot.
TEST(ChunkLogTest, ARecoveryPastATornPageSurvivesTheNextCrash) {
  auto original_disk = MakeMemoryDevice(kDeviceSize);
  auto storage_disk = MakeMemoryDevice(64 * kMiB);
  const Uuid id = CrashAfterCommits(original_disk, storage_disk, 8);
  const uint64_t page_at = LogStart(*storage_disk);
  std::vector<uint8_t> page = PageAt(*storage_disk, page_at);
  // A ninth record stored, not counted: its commit never returned (its chunk was never written).
  const size_t slot = kPageRecordsOffset + 8 * kLogRecordSize;
  for (size_t i = 0; i < kLogRecordSize; ++i) page[slot + i] = static_cast<uint8_t>(i + 1);
  ASSERT_OK(storage_disk->Write(page_at, page));
  RecoverWriteAndCrash(original_disk, storage_disk, id, 8, 4);
  ExpectTakeRecovered(original_disk, storage_disk, id);
}

// A file in a directory whose files the storage maps (ext4, XFS; else tmpfs), and how to open
// it; "" if there is none.
std::string MappableFile(const std::string& name, FileOpenOptions* options) {
  for (const std::string& dir : {::testing::TempDir(), std::string("/dev/shm/")}) {
    const std::string path = dir + "/" + name;
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) continue;
    const bool sized = ::ftruncate(fd, kMiB) == 0;
    ::close(fd);
    options->direct = dir != "/dev/shm/";  // tmpfs has O_DIRECT only since Linux 6.6
    auto probe = OpenFileDevice(path, *options);
    if (sized && probe.ok() && (*probe)->MapShared(0, kLogPageSize).ok()) return path;
    ::unlink(path.c_str());
  }
  return "";
}

// A store into the mapped open page that the kernel cannot back raises SIGBUS (here: the file
// was truncated under the mapping): the commit fails with EIO, as a failed write would, and
// the daemon lives on.
TEST(ChunkLogTest, AMappedPageThatFaultsFailsTheCommitNotTheProcess) {
  FileOpenOptions options;
  const std::string path = MappableFile("chunk_log_sigbus_test.storage", &options);
  ASSERT_FALSE(path.empty()) << "no directory whose files can be mapped";
  ASSERT_EQ(::truncate(path.c_str(), 16 * kMiB), 0);
  auto device = OpenFileDevice(path, options);
  ASSERT_TRUE(device.ok());
  const Uuid id = Uuid::Random();
  auto storage =
      DiffStorage::Create(*device, nullptr, 0, kMiB, id, nullptr, "", SnapshotDurability::kCrash);
  ASSERT_TRUE(storage.ok());
  auto log = ChunkLog::Start(storage->get(), id, /*sync=*/false);
  ASSERT_TRUE(log.ok());
  LogRecord record;
  record.offset = kDiffStorageHeaderSize + 8 * kMiB;
  record.length = 4096;
  ASSERT_OK((*log)->Commit(record));
  ASSERT_EQ(::truncate(path.c_str(), 0), 0);  // the mapped page is past the end now
  record.chunk = 1;
  const Status s = (*log)->Commit(record);
  EXPECT_EQ(s.errnum(), EIO) << s.ToString();
  EXPECT_NE(s.ToString().find("SIGBUS"), std::string::npos) << s.ToString();
  EXPECT_EQ((*log)->Commit(record).errnum(), EIO);  // the log has failed for good
  ::unlink(path.c_str());
}

// A directory on a disk that can be made to fail the writes to a file: ext4 on a loop device
// over a file on a small tmpfs. Fail(file) takes the file's blocks out of that backing file
// (punches them) and fills the tmpfs: the loop device then fails each write to them (ENOSPC),
// so the kernel's write-back of anything stored into the file fails.
class FailingDisk {
 public:
  FailingDisk() {
    std::string base = ::testing::TempDir() + "/failing_disk.XXXXXX";
    if (::mkdtemp(base.data()) == nullptr) return;
    base_ = base;
    ok_ = Run("mkdir " + base_ + "/back " + base_ + "/mnt && mount -t tmpfs -o size=32M tmpfs " +
              base_ + "/back && truncate -s 128M " + base_ +
              "/back/img && mkfs.ext4 -q -F -O ^has_journal -N 64 -b 4096 " + base_ +
              "/back/img && mount -o loop " + base_ + "/back/img " + base_ + "/mnt");
  }
  ~FailingDisk() {
    if (base_.empty()) return;
    Run("umount -l " + base_ + "/mnt; umount -l " + base_ + "/back; rm -rf " + base_);
  }
  bool ok() const { return ok_; }
  std::string dir() const { return base_ + "/mnt"; }

  bool Fail(const std::string& file) {
    if (!Run("sync")) return false;
    const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
    const int img = ::open((base_ + "/back/img").c_str(), O_RDWR | O_CLOEXEC);
    bool ok = fd >= 0 && img >= 0;
    constexpr int kExtents = 64;
    std::vector<uint8_t> buf(sizeof(fiemap) + kExtents * sizeof(fiemap_extent));
    auto* map = reinterpret_cast<fiemap*>(buf.data());
    map->fm_length = FIEMAP_MAX_OFFSET;
    map->fm_flags = FIEMAP_FLAG_SYNC;
    map->fm_extent_count = kExtents;
    ok = ok && ::ioctl(fd, FS_IOC_FIEMAP, map) == 0 && map->fm_mapped_extents > 0;
    for (uint32_t i = 0; ok && i < map->fm_mapped_extents; ++i) {
      const fiemap_extent& e = map->fm_extents[i];
      ok = ::fallocate(img, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                       static_cast<off_t>(e.fe_physical), static_cast<off_t>(e.fe_length)) == 0;
    }
    if (fd >= 0) ::close(fd);
    if (img >= 0) ::close(img);
    return ok && Run("head -c 64M /dev/zero > " + base_ + "/back/fill; true");
  }

 private:
  static bool Run(const std::string& command) {
    return std::system((command + " >/dev/null 2>&1").c_str()) == 0;
  }
  std::string base_;
  bool ok_ = false;
};

// The kernel writes a mapped log page back when it likes, and tells no store when that fails:
// without a check, commits into the mapped page went on returning while the disk lost them.
// A full page's write-back is waited for when the page after it is full, so a disk that fails
// its writes fails a commit within two pages (250 commits), and the log has failed for good.
TEST(ChunkLogTest, AFailedWriteBackOfAMappedPageFailsACommitWithinTwoPages) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (mount, loop devices)";
  FailingDisk disk;
  ASSERT_TRUE(disk.ok()) << "could not mount ext4 on a loop device over a tmpfs";
  const std::string path = disk.dir() + "/storage";
  {
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::ftruncate(fd, 16 * kMiB), 0);
    ::close(fd);
  }
  FileOpenOptions options;
  options.direct = true;
  auto device = OpenFileDevice(path, options);
  ASSERT_TRUE(device.ok()) << device.status().ToString();
  const Uuid id = Uuid::Random();
  auto storage =
      DiffStorage::Create(*device, nullptr, 0, kMiB, id, nullptr, "", SnapshotDurability::kCrash);
  ASSERT_TRUE(storage.ok()) << storage.status().ToString();
  auto log = ChunkLog::Start(storage->get(), id, /*sync=*/false);
  ASSERT_TRUE(log.ok());
  ASSERT_TRUE((*device)->MapShared((*log)->start(), kLogPageSize).ok()) << "not mapped: " << path;
  LogRecord record;
  record.offset = kDiffStorageHeaderSize + 8 * kMiB;
  record.length = 4096;
  ASSERT_OK((*log)->Commit(record));  // the first page, mapped
  ASSERT_TRUE(disk.Fail(path));
  uint64_t failed_at = 0;
  Status s;
  for (uint64_t i = 1; i <= 3 * kLogRecordsPerPage && s.ok(); ++i) {
    record.chunk = i;
    s = (*log)->Commit(record);
    failed_at = i;
  }
  ASSERT_FALSE(s.ok()) << "every commit returned on a disk that failed their pages' write-back";
  EXPECT_LE(failed_at, 2 * kLogRecordsPerPage) << s.ToString();
  std::printf("commit %llu failed: %s\n", static_cast<unsigned long long>(failed_at),
              s.ToString().c_str());
  EXPECT_FALSE((*log)->Commit(record).ok());  // the log has failed for good
}

// The mapped open page (chunk_log.h, "In-place commits") with a real process and a real file: a
// child commits records one after another into a crash log on a file the kernel maps, and the
// parent kills it (SIGKILL) at a random instant, round after round. Every record whose commit
// returned is read back in order (from the page cache, through O_DIRECT), and the log is never
// taken for damaged — also when the kill stopped an append between its stores (a torn page).
TEST(ChunkLogTest, MappedCommitsSurviveAKillAtAnyInstant) {
  FileOpenOptions options;
  const std::string path = MappableFile("chunk_log_kill_test.storage", &options);
  ASSERT_FALSE(path.empty()) << "no directory whose files can be mapped";
  struct Shared {
    std::atomic<uint64_t> returned{0};
    std::atomic<uint64_t> start{0};
    std::atomic<int> mapped{0};
  };
  void* p =
      ::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(p, MAP_FAILED);
  Shared* shared = new (p) Shared;
  const uint64_t seed = std::random_device{}();
  std::mt19937_64 rng(seed);
  SCOPED_TRACE("seed " + std::to_string(seed));
  constexpr int kRounds = 200;
  int torn = 0;
  for (int round = 0; round < kRounds; ++round) {
    {
      const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
      ASSERT_GE(fd, 0);
      ASSERT_EQ(::ftruncate(fd, 16 * kMiB), 0);
      ::close(fd);
    }
    const Uuid id = Uuid::Random();
    shared->returned = 0;
    shared->start = 0;
    shared->mapped = 0;
    const uint64_t target = 1 + rng() % 600;  // up to five pages, after the log started
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      auto device = OpenFileDevice(path, options);
      if (!device.ok()) ::_exit(1);
      auto storage = DiffStorage::Create(*device, nullptr, 0, kMiB, id, nullptr, "",
                                         SnapshotDurability::kCrash);
      if (!storage.ok()) ::_exit(2);
      auto log = ChunkLog::Start(storage->get(), id, /*sync=*/false);
      if (!log.ok()) ::_exit(3);
      shared->mapped = (*device)->MapShared((*log)->start(), kLogPageSize).ok() ? 1 : 0;
      shared->start = (*log)->start();
      for (uint64_t i = 0; i < 100000; ++i) {
        LogRecord record;
        record.chunk = i;
        record.offset = kDiffStorageHeaderSize + 8 * kMiB;
        record.length = 4096;
        if (!(*log)->Commit(record).ok()) ::_exit(4);
        shared->returned.store(i + 1);
      }
      for (;;) ::pause();  // the parent was slow to kill: it kills here
    }
    int status = 0;
    while (shared->returned.load() < target && ::waitpid(child, &status, WNOHANG) == 0) {
    }
    for (uint64_t spin = rng() % 20000; spin > 0; --spin) (void)shared->returned.load();
    ::kill(child, SIGKILL);
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "child status " << status;
    ASSERT_EQ(shared->mapped.load(), 1) << "the storage file was not mapped: " << path;
    const uint64_t returned = shared->returned.load();
    auto device = OpenFileDevice(path, options);
    ASSERT_TRUE(device.ok());
    auto scan = ChunkLog::Read(**device, id, shared->start, 1, 0, /*torn_tail=*/false);
    ASSERT_TRUE(scan.ok()) << scan.status().ToString();
    ASSERT_FALSE(scan->damaged) << "round " << round << ", " << returned << " returned";
    // The commit in flight may or may not be in: its record was published, or not yet.
    ASSERT_GE(scan->records.size(), returned) << "round " << round;
    ASSERT_LE(scan->records.size(), returned + 1) << "round " << round;
    for (uint64_t k = 0; k < scan->records.size(); ++k) ASSERT_EQ(scan->records[k].chunk, k);
    if (scan->pages > 0) {  // the last page, within the first segment: torn or whole?
      std::vector<uint8_t> page(kLogPageSize);
      ASSERT_OK((*device)->Read(scan->cursor.next_page - kLogPageSize, page));
      torn += ParseLogPage(page).ok() ? 0 : 1;
    }
  }
  ::munmap(p, sizeof(Shared));
  ::unlink(path.c_str());
  std::printf("%d of %d kills stopped an append between its stores\n", torn, kRounds);
}

}  // namespace
}  // namespace blksnap
