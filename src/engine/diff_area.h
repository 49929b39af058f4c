// DiffArea: copy-on-write state of one device in one taken snapshot (blksnap's diff_area.c):
// the chunk table and the copy-on-write decisions. Chunk geometry and states are in chunk.h,
// the queue and storer threads in storer.h, the cache of stored buffers in chunk_cache.h.
//
// The chunk table is sparse: a chunk has an entry only once something touched it, so a fresh
// snapshot of a 16 TiB device costs a few kilobytes. Entries live in kShards hash maps, each
// with its own mutex and condition variable, so writes to different chunks rarely meet.
//
// A write to the original proceeds as soon as its chunks are IN_MEMORY, STORED or FAILED: it
// waits for a read of the chunk, never for the write to the difference storage, which the
// ChunkStorer does in the background. A chunk all zeroes at the take is STORED without storage
// (a zero chunk), so sparse and freshly provisioned devices cost no storage. Buffers come from a
// BufferPool (mmap, bounded free list), so memory stays bounded however many chunks a snapshot
// preserves; an entry of the table is 24 bytes plus the hash map's node.
//
// Image reads of NEW chunks read the original without taking an entry, then re-check the state:
// the original can only change after a chunk becomes IN_MEMORY, so seeing NEW or COPYING after
// the read proves the data read was the take-time data; otherwise the read is retried.
//
// Locking order: a data stripe (DataMu) before a shard mutex before the storer's and the cache's
// mutexes; never wait for a data stripe while holding a shard mutex, and never hold two data
// stripes. The original device is never read or written with a lock held except a data stripe
// (image writes and the storer, which do not touch the original). Shard maps are annotated
// GUARDED_BY their shard's mutex; chunk fields are guarded by a stripe chosen by index, which
// the thread-safety analysis cannot express: those are comments (chunk.h).
//
// Failure: any error while preserving marks the area corrupted (errno recorded, callback fired
// once); from then on writes to the original skip copy-on-write entirely and image I/O fails
// with EIO. Shutdown() (destroy) waits for in-flight image I/O and fails later calls with ENODEV.
// The callback runs before any original write that the failure concerns proceeds (writers that
// find the area corrupted wait for it): a durable snapshot records its corruption first.
//
// Durable snapshots (a ChunkLog given): a write to the original waits until each chunk it
// touches is STORED, and STORED then means the data and its record are committed to the chunk
// log (chunk_log.h): the write-ordering rule. Since it waits anyway, the writer stores the chunk
// itself (StoreChunk in its own thread, Config::durable_store_inline) instead of queueing it
// for a storer. A memory snapshot's writer does the same when the storage goes through the
// page cache (the store is a copy into the kernel, cheaper than the hand-off) and then goes
// on; on O_DIRECT storage it queues the copy. A zero chunk gets a record without data. Image
// writes do not wait (they change the snapshot, not the original); an image write that gives a
// zero chunk storage commits a record for it. RestoreChunk rebuilds the table at recovery.
//
// Several snapshots of one device (area_chain.h): the areas of a device form a chain, oldest
// first. A copy is read from the newer areas (and the original last) instead of the original
// alone; an image write first gives the nearest older area its own copy (ShieldOlder). A chunk
// whose store fails keeps its buffer (STORED without storage, the area corrupted): the older
// areas may read through it, and destroy shields them from it.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <unordered_map>

#include "blksnap/block_device.h"
#include "blksnap/config.h"
#include "engine/area_chain.h"
#include "engine/buffer_pool.h"
#include "engine/chunk.h"
#include "engine/chunk_cache.h"
#include "engine/diff_storage.h"
#include "engine/io_gate.h"
#include "engine/storer.h"
#include "util/mutex.h"

namespace blksnap {

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

  // `chain`: the device's areas (this one is added to it by the engine). `log` (null: kMemory)
  // is the storage's chunk log, `device_index` this device's index in the storage's device
  // table.
  DiffArea(std::shared_ptr<BlockDevice> original, std::shared_ptr<AreaChain> chain,
           std::shared_ptr<DiffStorage> storage, ChunkGeometry geometry, const Config& config,
           CorruptFn on_corrupt, ChunkLog* log = nullptr, uint16_t device_index = 0);
  ~DiffArea();
  DiffArea(const DiffArea&) = delete;
  DiffArea& operator=(const DiffArea&) = delete;

  // Before a write, trim or write-zeroes reaches [offset, offset + length) of the original.
  // Never fails: a failure to preserve corrupts the snapshot and the original write goes on.
  // False if the area is corrupted (the next older area of the chain preserves instead).
  bool PreserveForOriginalWrite(uint64_t offset, uint64_t length);

  // The chain (area_chain.h). ReadCopy reads this area's usable copy of a chunk (IN_MEMORY or
  // STORED, corrupted area or not); kGone once StopChainReads ran.
  enum class Copy { kAbsent, kRead, kGone };
  Copy ReadCopy(uint64_t index, uint64_t in_chunk, std::span<uint8_t> buf, Status* status);
  bool HasCopy(uint64_t index);
  // Gives chunk `index` a copy of its take-time data if it has none (an older area shielded
  // from a newer one's change); `wait_stored`: committed first when durable.
  Status PreserveChunk(uint64_t index, bool wait_stored);
  // A durable area: waits until its copy of chunk `index` (if any) is committed. No-op without
  // a chunk log (a copy in memory serves as well as a stored one).
  void WaitCopyCommitted(uint64_t index);
  // Chunks with a usable copy (destroy shields the older areas from each).
  std::vector<uint64_t> CopiedChunks();
  // Waits for chain reads in this area; later ones get kGone. Idempotent.
  void StopChainReads() { chain_gate_.Shutdown(); }
  // Waits for PreserveChunk calls in this area; later ones fail with ENODEV (so ShieldOlder
  // goes on to the next older area). Destroy calls it before listing the copies to shield.
  void StopNewCopies() { copy_gate_.Shutdown(); }

  Status ImageRead(uint64_t offset, std::span<uint8_t> buf);
  Status ImageWrite(uint64_t offset, std::span<const uint8_t> data);
  Status ImageWriteZeroes(uint64_t offset, uint64_t length);
  Status ImageFlush();

  // A rollback onto the device reads this image as its target (rollback.h): image writes fail
  // with EROFS while it merges. Waits for in-flight image I/O before it returns.
  void SetReadOnly(bool read_only) {
    image_gate_.Close();
    read_only_.store(read_only);
    image_gate_.Open();
  }

  // Waits for in-flight image I/O; later image I/O fails with ENODEV. Idempotent.
  void StopImageIo() { image_gate_.Shutdown(); }
  // StopImageIo() and StopChainReads(), then stops the storer and releases memory and the storage.
  // Call only once no writer of the original can reach this area any more.
  void Shutdown();

  // Recovery, before the area is installed: chunk `index` is STORED at `offset` (kZeroChunk: a
  // zero chunk). A later call for the same chunk replaces the earlier one.
  void RestoreChunk(uint64_t index, uint64_t offset);
  // A record per chunk whose data is written (STORED, or IN_MEMORY with its storage_offset
  // set): the compactions of the chunk log. Takes the shard mutexes only, so it may run while
  // storers wait for a commit.
  void CollectRecords(std::vector<LogRecord>* out);
  // Recovery of a snapshot recorded as corrupted: corrupted without the callback.
  void SetCorrupted(int errnum);

  const ChunkGeometry& geometry() const { return geometry_; }
  bool corrupted() const { return corrupt_errno_.load() != 0; }
  int corrupt_errno() const { return corrupt_errno_.load(); }
  DiffAreaStats stats() const;
  // Blocks until every queued chunk is stored (tests, benchmarks, future persistence).
  void WaitStored() { storer_.WaitIdle(); }

 private:
  struct Shard {
    Mutex mu;
    CondVar cv;  // a chunk of this shard left COPYING
    std::unordered_map<uint64_t, Chunk> chunks GUARDED_BY(mu);
  };
  static constexpr size_t kShards = 64;
  static constexpr size_t kDataStripes = 256;

  Mutex& DataMu(uint64_t index) { return data_mu_[index % kDataStripes]; }
  Shard& ShardOf(uint64_t index) { return shards_[index % kShards]; }
  // Makes sure chunk `index` is preserved; returns it (null if the area is corrupted/failed).
  // `original_write`: the caller will overwrite the original (a durable area then waits for
  // STORED).
  Chunk* Preserve(uint64_t index, bool original_write);
  // Waits until the chunk leaves IN_MEMORY (durable original writes); null if it FAILED.
  Chunk* WaitStored(uint64_t index, Chunk* chunk);
  // Commits the record of a chunk stored at `offset` (or a zero chunk); requires its stripe.
  // With `data` (the bytes written there) the record carries their CRC (kRecordFlagVerify).
  Status CommitRecord(uint64_t index, uint64_t offset, const uint8_t* data, uint64_t length);
  void SetState(uint64_t index, Chunk* chunk, ChunkState state);
  // Sets storage_offset under the shard mutex as well as the data stripe (held by the caller),
  // so CollectRecords may read it.
  void SetOffset(uint64_t index, Chunk* chunk, uint64_t offset);
  void Corrupt(int errnum);
  // The store function of storer_: writes a queued chunk to the difference storage.
  void StoreChunk(uint64_t index, Chunk* chunk);
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
  const std::shared_ptr<AreaChain> chain_;
  std::shared_ptr<DiffStorage> storage_;  // reset by Shutdown (after the gate is shut)
  const ChunkGeometry geometry_;
  const Config config_;
  const CorruptFn on_corrupt_;

  std::array<Shard, kShards> shards_;
  // Serialises access to a chunk's buffer and stored copy between image writes, image reads of
  // buffers, the storer and cache eviction. Striped: a chunk entry carries no mutex.
  std::array<Mutex, kDataStripes> data_mu_;
  BufferPool pool_;
  std::atomic<int> corrupt_errno_{0};
  std::atomic<bool> read_only_{false};  // SetReadOnly
  Mutex corrupt_mu_;                    // held while the first failure is recorded (on_corrupt_)
  ChunkLog* const log_;
  const uint16_t device_index_;
  IoGate image_gate_;
  IoGate chain_gate_;  // reads of this area's copies by older areas (ReadCopy, HasCopy)
  IoGate copy_gate_;   // copies made for the chain (PreserveChunk)
  ChunkCache cache_;
  std::atomic<uint64_t> chunks_touched_{0}, chunks_copied_{0}, chunks_stored_{0}, chunks_zero_{0};
  // Last: its first thread starts in the constructor and may call StoreChunk.
  ChunkStorer storer_;
};

}  // namespace blksnap
