// DiffArea: copy-on-write state of one device in one taken snapshot (blksnap's diff_area.c and
// chunk.c).
//
// The device is cut into chunks of 2^shift bytes (the last may be shorter). The chunk table is
// sparse: a chunk has an entry only once something touched it, so a fresh snapshot of a 16 TiB
// device costs a few kilobytes. Entries live in kShards hash maps, each with its own mutex and
// condition variable, so writes to different chunks rarely meet.
//
// Chunk states (no entry = NEW: the original still holds the take-time data):
//   COPYING   one thread reads the chunk from the original; others touching it wait
//   IN_MEMORY the take-time data is in `buffer`, queued for the storer thread
//   STORED    the data is in the difference storage at storage_offset (buffer may stay cached),
//             or the chunk was all zeroes at the take (storage_offset == kZeroChunk): nothing is
//             stored, image reads return zeroes, and an image write first gives it a stored,
//             zero-filled copy. Sparse and freshly provisioned devices thus cost no storage.
//   FAILED    preserving failed; the snapshot is corrupted
// A write to the original proceeds as soon as its chunks are IN_MEMORY, STORED or FAILED: it
// waits for a read of the chunk, never for the write to the difference storage, which storer
// threads do in the background, each one direct write at a time: one from the start, up to
// chunk_storer_threads while the queue outgrows them (so that many chunk writes are in flight
// on a slow storage, as the kernel module keeps many bios in flight). At most
// chunk_maximum_in_queue chunks wait in memory; beyond that, new copies wait (throttling). After
// storing, up to chunk_maximum_in_cache buffers stay in a CLOCK cache for image reads. Buffers come
// from a BufferPool (mmap, bounded free list), so memory stays bounded however many chunks a
// snapshot preserves; an entry of the table is 24 bytes plus the hash map's node.
//
// Image reads of NEW chunks read the original without taking an entry, then re-check the state:
// the original can only change after a chunk becomes IN_MEMORY, so seeing NEW or COPYING after
// the read proves the data read was the take-time data; otherwise the read is retried.
//
// Locking order: a data stripe (DataMu) before a shard mutex before queue_mu_/cache_mu_; never
// wait for a data stripe while holding a shard mutex, and never hold two data stripes. The original
// device is never read or written with a lock held except a data stripe (image writes and the
// storer, which do not touch the original).
//
// Failure: any error while preserving marks the area corrupted (errno recorded, callback fired
// once); from then on writes to the original skip copy-on-write entirely and image I/O fails
// with EIO. Shutdown() (destroy) waits for in-flight image I/O and fails later calls with ENODEV.
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "blksnap/block_device.h"
#include "blksnap/config.h"
#include "engine/buffer_pool.h"
#include "engine/diff_storage.h"
#include "engine/io_gate.h"

namespace blksnap {

struct ChunkGeometry {
  uint32_t shift = 0;
  uint64_t count = 0;
  uint64_t capacity = 0;
  uint64_t size() const { return 1ull << shift; }
  uint64_t length(uint64_t index) const {
    const uint64_t offset = index << shift;
    return std::min(size(), capacity - offset);
  }
};
ChunkGeometry ComputeChunkGeometry(uint64_t capacity, uint32_t io_size, const Config& config);

struct DiffAreaStats {
  uint64_t chunks_touched = 0;  // entries in the table
  uint64_t chunks_copied = 0;   // read from the original
  uint64_t chunks_stored = 0;   // written to the difference storage
  uint64_t chunks_zero = 0;     // all zeroes at the take: preserved without storage
  uint64_t chunks_in_queue = 0;
  uint64_t chunks_cached = 0;
};

class DiffArea {
 public:
  using CorruptFn = std::function<void(int errnum)>;

  DiffArea(std::shared_ptr<BlockDevice> original, std::shared_ptr<DiffStorage> storage,
           ChunkGeometry geometry, const Config& config, CorruptFn on_corrupt);
  ~DiffArea();
  DiffArea(const DiffArea&) = delete;
  DiffArea& operator=(const DiffArea&) = delete;

  // Before a write, trim or write-zeroes reaches [offset, offset + length) of the original.
  // Never fails: a failure to preserve corrupts the snapshot and the original write goes on.
  void PreserveForOriginalWrite(uint64_t offset, uint64_t length);

  Status ImageRead(uint64_t offset, std::span<uint8_t> buf);
  // data.empty() with zero_length > 0 writes zeroes.
  Status ImageWrite(uint64_t offset, std::span<const uint8_t> data);
  Status ImageWriteZeroes(uint64_t offset, uint64_t length);
  Status ImageFlush();

  // Waits for in-flight image I/O; later image I/O fails with ENODEV. Idempotent.
  void StopImageIo() { image_gate_.Shutdown(); }
  // StopImageIo(), then stops the storer and releases memory and the storage. Call only once no
  // writer of the original can reach this area any more.
  void Shutdown();

  const ChunkGeometry& geometry() const { return geometry_; }
  bool corrupted() const { return corrupt_errno_.load() != 0; }
  int corrupt_errno() const { return corrupt_errno_.load(); }
  DiffAreaStats stats() const;
  // Blocks until every queued chunk is stored (tests, benchmarks, future persistence).
  void WaitStored();

 private:
  enum class State : uint8_t { kCopying, kInMemory, kStored, kFailed };
  // 24 bytes, stored inline in its shard's map (references stay valid across rehashing).
  struct Chunk {
    uint64_t storage_offset = UINT64_MAX;  // guarded by the chunk's data stripe
    uint8_t* buffer = nullptr;             // guarded by the data stripe; from pool_
    State state = State::kCopying;         // guarded by the shard mutex
    bool cached = false;                   // guarded by cache_mu_
    bool referenced = false;               // guarded by cache_mu_ (CLOCK bit)
  };
  struct Shard {
    std::mutex mu;
    std::condition_variable cv;
    std::unordered_map<uint64_t, Chunk> chunks;
  };
  static constexpr uint64_t kZeroChunk = UINT64_MAX - 1;  // storage_offset of a zero chunk
  static_assert(sizeof(Chunk) == 24, "a chunk entry is 24 bytes: memory per preserved chunk");
  static constexpr size_t kShards = 64;
  static constexpr size_t kDataStripes = 256;

  std::mutex& DataMu(uint64_t index) { return data_mu_[index % kDataStripes]; }
  Shard& ShardOf(uint64_t index) { return shards_[index % kShards]; }
  // Makes sure chunk `index` is preserved; returns it (null if the area is corrupted/failed).
  Chunk* Preserve(uint64_t index);
  void SetState(uint64_t index, Chunk* chunk, State state);
  void Corrupt(int errnum);
  void StorerLoop();
  void ReleaseQueueSlot();    // without queue_mu_ held
  void WakeStorerIfBehind();  // with queue_mu_ held, after queueing a chunk
  void StoreChunk(Chunk* chunk, uint64_t index);
  void CacheInsert(uint64_t index, Chunk* chunk);  // without the chunk's data stripe held
  void CacheTouch(Chunk* chunk);
  void FreeBuffer(Chunk* chunk);  // requires the chunk's data stripe
  // Gives a zero chunk a zero-filled stored copy; requires the chunk's data stripe.
  Status MaterializeZeroChunk(uint64_t index, Chunk* chunk);
  Status ReadChunkRange(uint64_t index, uint64_t in_chunk, std::span<uint8_t> buf);
  Status WriteChunkRange(uint64_t index, uint64_t in_chunk, std::span<const uint8_t> data);
  Status CheckImageIo() const;
  // Calls fn(index, offset_in_chunk, offset_in_request, length) for each chunk of the range.
  template <typename Fn>
  Status ForEachChunk(uint64_t offset, uint64_t length, Fn fn);

  const std::shared_ptr<BlockDevice> original_;
  std::shared_ptr<DiffStorage> storage_;  // reset by Shutdown (after the gate is shut)
  const ChunkGeometry geometry_;
  const Config config_;
  const CorruptFn on_corrupt_;

  std::array<Shard, kShards> shards_;
  // Serialises access to a chunk's buffer and stored copy between image writes, image reads of
  // buffers, the storer and cache eviction. Striped: a chunk entry carries no mutex.
  std::array<std::mutex, kDataStripes> data_mu_;
  BufferPool pool_;
  std::atomic<int> corrupt_errno_{0};
  IoGate image_gate_;

  // Three condition variables so that no wake-up is a herd: storers wait for work (one more is
  // woken only while the queue outgrows the storers awake, WakeStorerIfBehind), throttled copies
  // for a free slot (one per slot freed), WaitStored() for an empty queue.
  mutable std::mutex queue_mu_;
  std::condition_variable work_cv_;
  std::condition_variable room_cv_;
  std::condition_variable idle_cv_;
  std::deque<std::pair<uint64_t, Chunk*>> queue_;  // guarded by queue_mu_
  uint64_t in_queue_ = 0;       // guarded by queue_mu_ (includes being copied and being stored)
  bool stop_ = false;           // guarded by queue_mu_
  size_t storers_waiting_ = 0;  // guarded by queue_mu_: storers blocked on work_cv_
  size_t wakeups_pending_ = 0;  // guarded by queue_mu_: notified, not yet awake

  // CLOCK cache of stored chunks whose buffers are kept for image reads.
  mutable std::mutex cache_mu_;
  std::vector<std::pair<uint64_t, Chunk*>> cache_;  // guarded by cache_mu_
  size_t cache_hand_ = 0;                           // guarded by cache_mu_

  std::atomic<uint64_t> chunks_touched_{0}, chunks_copied_{0}, chunks_stored_{0}, chunks_zero_{0};
  const size_t storer_limit_;         // chunk_storer_threads
  std::vector<std::thread> storers_;  // guarded by queue_mu_; started on demand
};

}  // namespace blksnap
