// RunBackup and RunRestore: see backup.h.
//
// Both run one loop (ParallelChunks): `threads` workers take chunk indexes from one atomic
// counter, each with its own ChunkFrame (the chunk's bytes, 4 KiB-aligned, with room for a
// blob's header and trailer around them: a chunk stored raw is sealed, and read back, where it
// lies) and its own seal buffer (a backup seals every compressed or encrypted chunk into it:
// allocated and faulted in by the first chunk, reused by the rest); the first
// error stops every worker and is returned. Counters are atomics; the progress callback is called
// by whichever worker passes the interval first (a try-lock), so no extra thread is needed.
#include "repository/backup.h"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <system_error>
#include <thread>

#include "repository/repository_format.h"

namespace blksnap::repo {
namespace {

using Clock = std::chrono::steady_clock;

bool IsAllZero(const uint8_t* p, size_t n) {
  static const uint8_t kZero[4096] = {};
  while (n > 0) {
    const size_t k = std::min(n, sizeof kZero);
    if (std::memcmp(p, kZero, k) != 0) return false;
    p += k;
    n -= k;
  }
  return true;
}

struct Counters {
  std::atomic<uint64_t> done{0}, read{0}, stored{0};
};

class Reporter {
 public:
  Reporter(const ProgressFn& fn, std::chrono::milliseconds interval, uint64_t total,
           const Counters& c)
      : fn_(fn), interval_(interval), total_(total), c_(c), last_(Clock::now()) {}
  void Maybe() {
    if (!fn_) return;
    std::unique_lock lock(mu_, std::try_to_lock);
    if (!lock.owns_lock() || Clock::now() - last_ < interval_) return;
    last_ = Clock::now();
    fn_(Snapshot());
  }
  void Final() {
    if (!fn_) return;
    std::lock_guard lock(mu_);
    fn_(Snapshot());
  }

 private:
  TransferProgress Snapshot() const {
    return {c_.done.load(), total_, c_.read.load(), c_.stored.load()};
  }
  const ProgressFn fn_;  // a copy: callers may pass a temporary
  const std::chrono::milliseconds interval_;
  const uint64_t total_;
  const Counters& c_;
  std::mutex mu_;  // only serializes the callback (never held while waiting for anything)
  Clock::time_point last_;
};

using ChunkFn = std::function<Status(uint64_t, ChunkFrame&, std::vector<uint8_t>&)>;

// Runs fn(index, frame, seal_buffer) for every chunk index in [0, count) on `threads` workers,
// each with its own ChunkFrame of chunk_size bytes and its own seal buffer (empty at first;
// Repository::PutChunk grows it).
Status ParallelChunks(uint64_t count, int threads, size_t chunk_size, Reporter& reporter,
                      const ChunkFn& fn) {
  std::atomic<uint64_t> next{0};
  std::atomic<bool> stop{false};
  std::mutex error_mu;
  Status first_error;
  auto fail = [&](Status s) {
    std::lock_guard lock(error_mu);
    if (first_error.ok()) first_error = std::move(s);
    stop = true;
  };
  auto worker = [&] {
    ChunkFrame frame(chunk_size);
    if (!frame.ok()) return fail(Status::Error(ENOMEM, "no memory for a chunk buffer"));
    std::vector<uint8_t> seal_buffer;
    for (;;) {
      if (stop.load(std::memory_order_relaxed)) return;
      const uint64_t index = next.fetch_add(1);
      if (index >= count) return;
      Status s = fn(index, frame, seal_buffer);
      if (!s.ok()) return fail(std::move(s));
      reporter.Maybe();
    }
  };
  const int n = static_cast<int>(std::clamp<uint64_t>(threads, 1, std::max<uint64_t>(count, 1)));
  std::vector<std::thread> workers;
  for (int i = 1; i < n; ++i) workers.emplace_back(worker);
  worker();
  for (auto& t : workers) t.join();
  if (first_error.ok()) reporter.Final();
  return first_error;
}

uint64_t ChunkCount(uint64_t size, uint64_t chunk) { return (size + chunk - 1) / chunk; }

// CPUs this process may run on (its affinity mask), 1 to 8: the restore's decoders, each with
// a 4 MiB frame; more than 8 would not make one target faster, and the mask does not show a
// container's CPU quota.
int UsableCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  int n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  if (::sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) n = CPU_COUNT(&set);
  return std::clamp(n, 1, 8);
}

// A backup's workers: `threads` if given, else the store's preferred_writes capped by the
// workers' memory (a frame and a seal buffer of about a chunk each: 16 workers of 4 MiB chunks,
// never fewer than kBackupThreads), else kBackupThreads.
int BackupWorkers(int threads, const ObjectStore& store, uint64_t chunk) {
  if (threads > 0) return threads;
  const int preferred = store.preferred_writes();
  if (preferred <= 0) return kBackupThreads;
  const uint64_t fit = std::max<uint64_t>(kBackupThreads, kPreferredWorkersMemory / (2 * chunk));
  return static_cast<int>(std::min<uint64_t>(preferred, fit));
}

// A restore's writes behind its decoders: `writers` threads, each one synchronous write at a
// time, so a disk sees that many writes queued while the decoders (no more than the CPUs: more
// only evict each other's 4 MiB frames from the caches and thrash the scheduler) stay busy. A
// decoder hands its filled frame over (Write swaps it with a free one, waiting for one if need be)
// and decodes the next chunk; a writer writes the frame and puts it back in the pool. The pool
// holds one frame per writer, so at most `writers` chunks wait or are being written. The first
// error is kept and returned by every later Write and by Finish; after it, queued frames are
// returned unwritten.
class WriteBehind {
 public:
  WriteBehind(BlockDevice& target, int writers, size_t chunk_size, Counters& c)
      : target_(target), c_(c) {
    for (int i = 0; i < writers; ++i) {
      auto frame = std::make_unique<ChunkFrame>(chunk_size);
      if (!frame->ok()) {
        error_ = Status::Error(ENOMEM, "no memory for a chunk buffer");
        break;
      }
      free_.push_back(std::move(frame));
    }
    try {
      for (int i = 0; i < writers && error_.ok(); ++i) threads_.emplace_back([this] { Run(); });
    } catch (const std::system_error& e) {  // no thread (EAGAIN): the restore fails with that
      std::lock_guard lock(mu_);
      error_ = Status::Error(e.code().value(), "cannot start a restore writer thread");
      changed_.notify_all();
    }
  }
  ~WriteBehind() { Finish().IgnoreError(); }

  // Queues the first `length` bytes of `frame` for a write at `offset`; `frame` comes back as a
  // free frame to decode the next chunk into.
  Status Write(uint64_t offset, size_t length, ChunkFrame& frame) {
    std::unique_lock lock(mu_);
    changed_.wait(lock, [&] { return !free_.empty() || !error_.ok(); });
    if (!error_.ok()) return error_;
    std::unique_ptr<ChunkFrame> mine = std::move(free_.back());
    free_.pop_back();
    std::swap(*mine, frame);
    queue_.push_back({offset, length, std::move(mine)});
    changed_.notify_all();
    return Status::Ok();
  }

  // Waits until every queued frame is written (or dropped after an error); the first error.
  Status Finish() {
    {
      std::lock_guard lock(mu_);
      closing_ = true;
      changed_.notify_all();
    }
    for (auto& t : threads_) t.join();
    threads_.clear();
    std::lock_guard lock(mu_);
    return error_;
  }

 private:
  struct Job {
    uint64_t offset;
    size_t length;
    std::unique_ptr<ChunkFrame> frame;
  };

  void Run() {
    std::unique_lock lock(mu_);
    for (;;) {
      changed_.wait(lock, [&] { return !queue_.empty() || closing_; });
      if (queue_.empty()) return;  // closing, nothing left
      Job job = std::move(queue_.front());
      queue_.pop_front();
      if (error_.ok()) {
        lock.unlock();
        Status s = target_.Write(job.offset, job.frame->plain().first(job.length));
        if (s.ok()) c_.done += job.length;
        lock.lock();
        if (!s.ok() && error_.ok()) error_ = std::move(s);
      }
      free_.push_back(std::move(job.frame));
      changed_.notify_all();
    }
  }

  BlockDevice& target_;
  Counters& c_;
  std::mutex mu_;
  std::condition_variable changed_;  // a frame freed, a job queued, an error, closing
  std::vector<std::unique_ptr<ChunkFrame>> free_;
  std::deque<Job> queue_;
  Status error_;
  bool closing_ = false;
  std::vector<std::thread> threads_;
};

// An incremental backup's view of one chunk: the changed byte ranges inside it (absolute
// offsets, sorted). Chunks with none are unchanged.
using ChangedPieces = std::vector<std::vector<ByteExtent>>;

ChangedPieces PiecesByChunk(const std::vector<ByteExtent>& changed, uint64_t size, uint64_t chunk) {
  ChangedPieces pieces(ChunkCount(size, chunk));
  for (const ByteExtent& e : changed) {
    if (e.length == 0 || e.offset >= size) continue;
    const uint64_t end = e.offset + std::min(e.length, size - e.offset);
    for (uint64_t pos = e.offset; pos < end;) {
      const uint64_t i = pos / chunk;
      const uint64_t piece_end = std::min(end, (i + 1) * chunk);
      pieces[i].push_back({pos, piece_end - pos});
      pos = piece_end;
    }
  }
  return pieces;
}

// Fills `data` (the chunk at `offset`) for an incremental backup. When at most half the chunk
// changed and the parent's version of it reads back fine (a zero chunk, or ReadChunk, straight
// into `data`, with its digest checked), only the changed pieces are read from the image, over the
// parent's data: the device is read for what changed, not for whole chunks. Otherwise the whole
// chunk is read. *read: bytes read from the image.
Status FillChangedChunk(Repository& repo, BlockDevice& image, uint64_t offset, ChunkFrame& frame,
                        std::span<uint8_t> data, const Digest& parent,
                        const std::vector<ByteExtent>& pieces, uint64_t* read) {
  uint64_t changed = 0;
  for (const ByteExtent& p : pieces) changed += p.length;
  bool base = false;
  if (changed <= data.size() / 2) {
    if (parent.IsZero()) {
      std::memset(data.data(), 0, data.size());
      base = true;
    } else if (auto old = repo.ReadChunk(parent, frame); old.ok() && *old == data.size()) {
      base = true;
    }  // else: the parent's chunk is damaged or missing: read it all from the image
  }
  if (!base) {
    *read = data.size();
    return image.Read(offset, data);
  }
  *read = changed;
  for (const ByteExtent& p : pieces) {
    BLKSNAP_RETURN_IF_ERROR(image.Read(p.offset, data.subspan(p.offset - offset, p.length)));
  }
  return Status::Ok();
}

// Segmented repositories: an incremental's changed chunk as a delta over the parent's version
// when that works (the parent's table reads, its chain is below the depth limit, at most half
// the segments changed): only the changed segments are read from the image and hashed, and of the
// parent only its table is read. Empty: the caller stores a full chunk instead.
Result<std::optional<Repository::Put>> PutChangedAsDelta(
    Repository& repo, BlockDevice& image, uint64_t offset, std::span<uint8_t> data,
    const Digest& parent, const std::vector<ByteExtent>& pieces, PutBatch* batch,
    std::vector<uint8_t>* sealed, uint64_t* read) {
  const uint32_t seg = repo.codec().config().segment_size;
  std::vector<uint32_t> changed;  // the segments the pieces touch, ascending
  for (const ByteExtent& p : pieces) {
    const uint64_t first = (p.offset - offset) / seg;
    const uint64_t last = (p.offset - offset + p.length - 1) / seg;
    for (uint64_t s = first; s <= last; ++s) {
      if (changed.empty() || changed.back() < s) changed.push_back(static_cast<uint32_t>(s));
    }
  }
  using Maybe = std::optional<Repository::Put>;
  if (changed.empty() || changed.size() * 2 > SegmentCount(data.size(), seg)) return Maybe{};
  auto table = repo.ReadTable(parent);
  if (!table.ok() || table->depth >= kMaxDeltaDepth || table->length != data.size()) {
    return Maybe{};  // a full chunk: from the image (FillChangedChunk)
  }
  *read = 0;
  for (size_t k = 0; k < changed.size();) {  // runs of adjacent segments, one read each
    size_t end = k + 1;
    while (end < changed.size() && changed[end] == changed[end - 1] + 1) ++end;
    const uint64_t at = uint64_t{changed[k]} * seg;
    const uint64_t length =
        std::min<uint64_t>(uint64_t{changed[end - 1] + 1} * seg, data.size()) - at;
    Status r = image.Read(offset + at, data.subspan(at, length));
    if (!r.ok()) {
      return Status::Error(r.errnum(), "reading at " + std::to_string(offset + at) + ": " +
                                           std::string(r.message()));
    }
    *read += length;
    k = end;
  }
  BLKSNAP_ASSIGN_OR_RETURN(Repository::Put put,
                           repo.PutDelta(parent, *table, data, changed, batch, sealed));
  return Maybe{put};
}

}  // namespace

std::string HostName() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0) return "unknown";
  return buf;
}

Result<Manifest> RunBackup(Repository& repo, BlockDevice& image, const BackupSpec& spec) {
  const auto started = Clock::now();
  const uint64_t size = image.size();
  const uint64_t chunk = repo.chunk_size();
  if (size == 0) return Status::Error(EINVAL, "device " + spec.device + " is empty");
  const bool incremental = spec.parent.has_value();
  if (incremental) {
    const Index& p = spec.parent_index;
    if (p.device_size != size || p.chunk_size != chunk ||
        p.chunks.size() != ChunkCount(size, chunk)) {
      return Status::Error(EINVAL, "backup " + spec.parent->id + " does not match device " +
                                       spec.device + " (size or chunk size changed)");
    }
  }
  // Backups hold the shared lease for their whole run: gc cannot free a chunk this backup
  // found in the repository and relies on.
  BLKSNAP_ASSIGN_OR_RETURN(std::unique_ptr<Lease> lease, repo.BackupLease());

  Index index;
  index.device_size = size;
  index.chunk_size = chunk;
  index.chunks.resize(ChunkCount(size, chunk));
  ChangedPieces pieces;
  if (incremental) pieces = PiecesByChunk(spec.changed, size, chunk);

  // New chunks go through one batch, committed (durable) before the index is stored.
  std::unique_ptr<PutBatch> batch = repo.NewChunkBatch();
  Counters c;
  std::atomic<uint64_t> new_chunks{0}, reused{0}, zeroes{0};
  Reporter reporter(spec.progress, spec.progress_interval, size, c);
  const int threads = BackupWorkers(spec.threads, repo.store(), chunk);
  Status s = ParallelChunks(
      index.chunks.size(), threads, chunk, reporter,
      [&](uint64_t i, ChunkFrame& frame, std::vector<uint8_t>& sealed) -> Status {
        if (spec.cancelled && spec.cancelled()) {
          return Status::Error(ECANCELED, "backup of " + spec.device + " cancelled");
        }
        const uint64_t offset = i * chunk;
        const uint64_t length = std::min(chunk, size - offset);
        if (incremental && pieces[i].empty()) {
          index.chunks[i] = spec.parent_index.chunks[i];  // unchanged: not read
          c.done += length;
          return Status::Ok();
        }
        std::span<uint8_t> data = frame.plain().first(length);
        uint64_t read = length;
        if (incremental && repo.codec().segmented() && !spec.parent_index.chunks[i].IsZero()) {
          BLKSNAP_ASSIGN_OR_RETURN(
              std::optional<Repository::Put> delta,
              PutChangedAsDelta(repo, image, offset, data, spec.parent_index.chunks[i], pieces[i],
                                batch.get(), &sealed, &read));
          if (delta) {
            index.chunks[i] = delta->id;
            delta->stored ? ++new_chunks : ++reused;
            c.stored += delta->stored_bytes;
            c.read += read;
            c.done += length;
            return Status::Ok();
          }
        }
        Status r = incremental ? FillChangedChunk(repo, image, offset, frame, data,
                                                  spec.parent_index.chunks[i], pieces[i], &read)
                               : image.Read(offset, data);
        if (!r.ok()) {
          return Status::Error(r.errnum(), "reading " + spec.device + " at " +
                                               std::to_string(offset) + ": " +
                                               std::string(r.message()));
        }
        c.read += read;
        if (IsAllZero(data.data(), data.size())) {
          index.chunks[i] = Digest{};
          ++zeroes;
        } else {
          BLKSNAP_ASSIGN_OR_RETURN(Repository::Put put,
                                   repo.PutChunk(frame, length, batch.get(), &sealed));
          index.chunks[i] = put.id;
          if (put.stored) {
            ++new_chunks;
            c.stored += put.stored_bytes;
          } else {
            ++reused;
          }
        }
        c.done += length;
        return Status::Ok();
      });
  // Committed even after a failure: what was stored is there for the next backup to reuse.
  const Status committed = batch->Commit();
  BLKSNAP_RETURN_IF_ERROR(s);
  BLKSNAP_RETURN_IF_ERROR(committed);
  if (incremental) {
    for (size_t i = 0; i < index.chunks.size(); ++i) {
      if (pieces[i].empty()) index.chunks[i].IsZero() ? ++zeroes : ++reused;
    }
  }
  BLKSNAP_ASSIGN_OR_RETURN(Digest index_id, repo.PutIndex(index));

  Manifest m;
  const auto now = std::chrono::system_clock::now();
  m.id = NewBackupId(now);
  m.device = spec.device;
  m.host = spec.host.empty() ? HostName() : spec.host;
  m.device_size = size;
  m.chunk_size = chunk;
  m.time = FormatRfc3339(now);
  m.full = !incremental;
  m.full_reason = incremental ? "" : spec.full_reason;
  m.cbt_generation = spec.cbt_generation;
  m.snap_number = spec.snap_number;
  m.parent = incremental ? spec.parent->id : "";
  m.index = index_id;
  m.stats.logical_bytes = size;
  m.stats.read_bytes = c.read;
  m.stats.new_chunks = new_chunks;
  m.stats.new_bytes_stored = c.stored;
  m.stats.reused_chunks = reused;
  m.stats.zero_chunks = zeroes;
  m.stats.seconds = std::chrono::duration<double>(Clock::now() - started).count();
  // A lease that lapsed (the store unreachable for longer than half its duration) may have let a
  // gc run beside this backup and free chunks it found present: such a backup is not published.
  if (lease->Lapsed()) {
    return Status::Error(EAGAIN, "backup of " + spec.device +
                                     " not published: its repository lease lapsed while the "
                                     "store was unreachable (a gc may have run); run it again");
  }
  BLKSNAP_RETURN_IF_ERROR(repo.PublishBackup(m));
  return m;
}

Status RunRestore(Repository& repo, const Manifest& backup, BlockDevice& target,
                  const RestoreSpec& spec) {
  BLKSNAP_ASSIGN_OR_RETURN(Index index, repo.GetIndex(backup.index));
  const uint64_t size = index.device_size;
  const uint64_t chunk = index.chunk_size;
  if (size != backup.device_size || index.chunks.size() != ChunkCount(size, chunk)) {
    return Status::Error(EBADMSG, "backup " + backup.id + ": its index does not match it");
  }
  if (target.size() < size) {
    return Status::Error(EINVAL, "the target (" + std::to_string(target.size()) +
                                     " bytes) is smaller than backup " + backup.id + " (" +
                                     std::to_string(size) + " bytes)");
  }
  Counters c;
  Reporter reporter(spec.progress, spec.progress_interval, size, c);
  // More writes in flight than CPUs (a disk): decoders on the CPUs, the writes behind them.
  // A remote store's reads wait on the network: then every worker reads, decodes and writes its
  // own chunks, `threads` of them (4 by default), as before the decoders were split off.
  const bool remote = repo.store().remote();
  const int threads = spec.threads > 0 ? spec.threads : remote ? 4 : UsableCpus();
  const int decoders = std::min(threads, spec.decoders > 0 ? spec.decoders
                                         : remote          ? threads
                                                           : UsableCpus());
  std::optional<WriteBehind> behind;
  if (threads > decoders) behind.emplace(target, threads, chunk, c);
  Status decoded = ParallelChunks(
      index.chunks.size(), decoders, chunk, reporter,
      [&](uint64_t i, ChunkFrame& frame, std::vector<uint8_t>&) -> Status {
        const uint64_t offset = i * chunk;
        const uint64_t length = std::min(chunk, size - offset);
        if (index.chunks[i].IsZero()) {
          if (!spec.target_is_zeroed) BLKSNAP_RETURN_IF_ERROR(target.WriteZeroes(offset, length));
          c.done += length;
          return Status::Ok();
        }
        BLKSNAP_ASSIGN_OR_RETURN(
            size_t got, repo.ReadChunk(index.chunks[i], frame,
                                       spec.check_digests ? Repository::ChunkCheck::kDigest
                                                          : Repository::ChunkCheck::kSeal));
        if (got != length) {
          return Status::Error(EBADMSG, "backup " + backup.id + ": chunk " + index.chunks[i].Hex() +
                                            " has " + std::to_string(got) + " bytes, not " +
                                            std::to_string(length));
        }
        c.read += length;
        if (behind) return behind->Write(offset, length, frame);
        BLKSNAP_RETURN_IF_ERROR(target.Write(offset, frame.plain().first(length)));
        c.done += length;
        return Status::Ok();
      });
  const Status written = behind ? behind->Finish() : Status::Ok();
  BLKSNAP_RETURN_IF_ERROR(decoded);
  BLKSNAP_RETURN_IF_ERROR(written);
  if (behind) {
    reporter.Final();  // the decoders' final report came before the last writes
    behind.reset();    // its frames are not needed for the verify pass
  }
  BLKSNAP_RETURN_IF_ERROR(target.Flush());
  if (!spec.verify) return Status::Ok();

  Counters v;
  Reporter quiet(ProgressFn{}, spec.progress_interval, size, v);
  return ParallelChunks(
      index.chunks.size(), threads, chunk, quiet,
      [&](uint64_t i, ChunkFrame& frame, std::vector<uint8_t>&) -> Status {
        const uint64_t offset = i * chunk;
        std::span<uint8_t> data = frame.plain().first(std::min(chunk, size - offset));
        BLKSNAP_RETURN_IF_ERROR(target.Read(offset, data));
        const bool ok = index.chunks[i].IsZero() ? IsAllZero(data.data(), data.size())
                                                 : repo.codec().ChunkId(data) == index.chunks[i];
        if (!ok) {
          return Status::Error(EIO, "verify: the target differs from backup " + backup.id +
                                        " in the chunk at offset " + std::to_string(offset));
        }
        return Status::Ok();
      });
}

}  // namespace blksnap::repo
