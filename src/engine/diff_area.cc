// DiffArea: see diff_area.h for the chunk table, the copy-on-write decisions and the locking.
#include "engine/diff_area.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "util/crc32c.h"

namespace blksnap {
namespace {

// Word-at-a-time, 64 bytes per step (vectorised), stopping at the first non-zero step: data
// chunks cost a few loads, zero chunks one pass at memory speed.
bool IsAllZero(const uint8_t* p, size_t n) {
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    uint64_t acc = 0;
    for (size_t j = 0; j < 64; j += 8) {
      uint64_t w;
      std::memcpy(&w, p + i + j, 8);
      acc |= w;
    }
    if (acc != 0) return false;
  }
  for (; i < n; ++i) {
    if (p[i] != 0) return false;
  }
  return true;
}

}  // namespace

DiffArea::DiffArea(std::shared_ptr<BlockDevice> original, std::shared_ptr<AreaChain> chain,
                   std::shared_ptr<DiffStorage> storage, ChunkGeometry geometry,
                   const Config& config, CorruptFn on_corrupt, ChunkLog* log, uint16_t device_index)
    : original_(std::move(original)),
      chain_(std::move(chain)),
      storage_(std::move(storage)),
      geometry_(geometry),
      config_(config),
      on_corrupt_(std::move(on_corrupt)),
      pool_(geometry.size(), config.chunk_maximum_in_queue),
      log_(log),
      device_index_(device_index),
      cache_(config.chunk_maximum_in_cache),
      storer_(config, [this](uint64_t index, Chunk* chunk) { StoreChunk(index, chunk); }) {}

DiffArea::~DiffArea() { Shutdown(); }

void DiffArea::Shutdown() {
  image_gate_.Shutdown();
  copy_gate_.Shutdown();
  chain_gate_.Shutdown();
  if (!storer_.Stop()) return;
  cache_.Clear();
  // No image I/O, storer or copy-on-write can run any more: free without the data stripes.
  for (Shard& shard : shards_) {
    MutexLock lock(shard.mu);
    for (auto& [index, chunk] : shard.chunks) {
      pool_.Put(chunk.buffer);
      chunk.buffer = nullptr;
    }
  }
  storage_.reset();
}

void DiffArea::Corrupt(int errnum) {
  MutexLock lock(corrupt_mu_);  // later callers wait until the first is recorded
  int expected = 0;
  if (!corrupt_errno_.compare_exchange_strong(expected, errnum ? errnum : EIO)) return;
  storer_.Fail();  // release throttled writers
  if (on_corrupt_) on_corrupt_(errnum ? errnum : EIO);
}

void DiffArea::SetCorrupted(int errnum) {
  MutexLock lock(corrupt_mu_);
  corrupt_errno_.store(errnum ? errnum : EIO);
  storer_.Fail();
}

void DiffArea::RestoreChunk(uint64_t index, uint64_t offset) {
  Shard& shard = ShardOf(index);
  {
    // Not live yet, but in the writers' order (data, then shard): TSan's lock-order graph
    // spans the area's life, and a writer after recovery takes the same two stripes.
    MutexLock data(DataMu(index));
    MutexLock lock(shard.mu);
    auto [it, inserted] = shard.chunks.try_emplace(index);
    it->second.state = ChunkState::kStored;
    if (inserted) chunks_touched_.fetch_add(1, std::memory_order_relaxed);
    it->second.storage_offset = offset;
  }
  (offset == kZeroChunk ? chunks_zero_ : chunks_stored_).fetch_add(1, std::memory_order_relaxed);
}

void DiffArea::CollectRecords(std::vector<LogRecord>* out) {
  for (Shard& shard : shards_) {
    MutexLock lock(shard.mu);
    for (const auto& [index, chunk] : shard.chunks) {
      // STORED, or IN_MEMORY with its data written and its record committed or about to be
      // (the offset is set before the commit): either way the record is right.
      // (A STORED chunk without an offset is one whose store failed: kept in memory only.)
      const bool located =
          (chunk.state == ChunkState::kStored || chunk.state == ChunkState::kInMemory) &&
          chunk.storage_offset != kChunkNotStored;
      if (!located) continue;
      LogRecord r;
      r.chunk = index;
      r.device = device_index_;
      if (chunk.storage_offset == kZeroChunk) {
        r.flags = kRecordFlagZero;
      } else {
        r.offset = chunk.storage_offset;  // no data stripe needed: nothing changes any more
        r.length = static_cast<uint32_t>(geometry_.length(index));
      }
      out->push_back(r);
    }
  }
}

Chunk* DiffArea::WaitStored(uint64_t index, Chunk* chunk) {
  Shard& shard = ShardOf(index);
  MutexLock lock(shard.mu);
  while (chunk->state == ChunkState::kCopying || chunk->state == ChunkState::kInMemory)
    shard.cv.Wait(shard.mu);
  return chunk->state == ChunkState::kFailed ? nullptr : chunk;
}

Status DiffArea::CommitRecord(uint64_t index, uint64_t offset, const uint8_t* data,
                              uint64_t length) {
  LogRecord record;
  record.chunk = index;
  record.device = device_index_;
  if (offset == kZeroChunk) {
    record.flags = kRecordFlagZero;
  } else {
    record.offset = offset;
    record.length = static_cast<uint32_t>(length);
    // With the data's CRC (kRecordFlagVerify) a power commit costs one flush after the record
    // instead of one before it and one after (chunk_log.h). None where the CPU has no CRC
    // instruction, where the table would be a fifth of a copy-on-write's CPU (an emulated CPU:
    // docs/performance-vm.md), or where the data may change in place (an image write).
    if (data && Crc32cIsFast()) {
      record.crc = Crc32c(data, length);
      record.flags = kRecordFlagVerify;
    }
  }
  return log_->Commit(record);
}

void DiffArea::SetOffset(uint64_t index, Chunk* chunk, uint64_t offset) {
  Shard& shard = ShardOf(index);
  MutexLock lock(shard.mu);
  chunk->storage_offset = offset;
}

void DiffArea::SetState(uint64_t index, Chunk* chunk, ChunkState state) {
  Shard& shard = ShardOf(index);
  MutexLock lock(shard.mu);
  chunk->state = state;
  shard.cv.SignalAll();
}

Chunk* DiffArea::Preserve(uint64_t index, bool original_write) {
  Shard& shard = ShardOf(index);
  Chunk* chunk;
  const bool wait_stored = original_write && log_;
  {
    MutexLock lock(shard.mu);
    auto [it, inserted] = shard.chunks.try_emplace(index);
    chunk = &it->second;
    if (!inserted) {
      while (chunk->state == ChunkState::kCopying ||
             (wait_stored && chunk->state == ChunkState::kInMemory)) {
        shard.cv.Wait(shard.mu);
      }
      return chunk->state == ChunkState::kFailed ? nullptr : chunk;
    }
  }
  chunks_touched_.fetch_add(1, std::memory_order_relaxed);

  auto fail = [&](int errnum) -> Chunk* {
    Corrupt(errnum);
    SetState(index, chunk, ChunkState::kFailed);
    return nullptr;
  };
  if (!storer_.AcquireSlot()) return fail(corrupted() ? corrupt_errno() : ENODEV);
  const uint64_t length = geometry_.length(index);
  uint8_t* buffer = pool_.Get();
  if (!buffer) {
    storer_.ReleaseSlot();
    return fail(ENOMEM);
  }
  // The take-time data: the newer areas' copies, else the original (area_chain.h).
  Status s = chain_->ReadNewer(this, index, 0, std::span(buffer, length));
  if (!s.ok()) {
    pool_.Put(buffer);
    storer_.ReleaseSlot();
    return fail(s.errnum());
  }
  chunks_copied_.fetch_add(1, std::memory_order_relaxed);
  if (IsAllZero(buffer, length)) {
    pool_.Put(buffer);
    {
      MutexLock data(DataMu(index));
      chunk->storage_offset = kZeroChunk;
    }
    chunks_zero_.fetch_add(1, std::memory_order_relaxed);
    if (!log_) {
      SetState(index, chunk, ChunkState::kStored);
      storer_.ReleaseSlot();
      return chunk;
    }
    // Durable: a zero chunk needs its record too (a storer commits it).
  } else {
    MutexLock data(DataMu(index));
    chunk->buffer = buffer;
  }
  SetState(index, chunk, ChunkState::kInMemory);
  if (original_write && config_.durable_store_inline && (log_ || storage_->buffered())) {
    // Durable: the writer waits for the copy anyway, a hand-off to a storer only adds two
    // wake-ups. Memory, storage through the page cache: the store is a copy into the kernel,
    // cheaper than the hand-off (docs/performance.md, "Memory that costs what memory costs").
    StoreChunk(index, chunk);
    storer_.ReleaseSlot();
    return wait_stored ? WaitStored(index, chunk) : chunk;
  }
  storer_.Enqueue(index, chunk);
  return wait_stored ? WaitStored(index, chunk) : chunk;
}

bool DiffArea::PreserveForOriginalWrite(uint64_t offset, uint64_t length) {
  if (length == 0 || offset >= geometry_.capacity) return true;
  if (corrupted()) {
    MutexLock wait(corrupt_mu_);  // the corruption is recorded before the original changes
    return false;
  }
  const uint64_t end = std::min(geometry_.capacity, offset + length);
  const uint64_t last = geometry_.index(end - 1);
  for (uint64_t index = geometry_.index(offset); index <= last; ++index) {
    if (!Preserve(index, true) && corrupted()) {
      MutexLock wait(corrupt_mu_);
      return false;
    }
  }
  // A store that failed meanwhile kept its buffer (older areas read through it), but this
  // area is corrupted: the next older one preserves too.
  return !corrupted();
}

DiffArea::Copy DiffArea::ReadCopy(uint64_t index, uint64_t in_chunk, std::span<uint8_t> buf,
                                  Status* status) {
  GateGuard guard(chain_gate_);
  if (!guard.entered()) return Copy::kGone;
  Shard& shard = ShardOf(index);
  Chunk* chunk;
  {
    MutexLock lock(shard.mu);
    auto it = shard.chunks.find(index);
    if (it == shard.chunks.end()) return Copy::kAbsent;
    chunk = &it->second;
    while (chunk->state == ChunkState::kCopying) shard.cv.Wait(shard.mu);
    if (chunk->state == ChunkState::kFailed) return Copy::kAbsent;
  }
  MutexLock data(DataMu(index));
  if (chunk->buffer) {
    std::memcpy(buf.data(), chunk->buffer + in_chunk, buf.size());
  } else if (chunk->storage_offset == kZeroChunk) {
    std::memset(buf.data(), 0, buf.size());
  } else if (chunk->storage_offset != kChunkNotStored) {
    *status = storage_->device().Read(chunk->storage_offset + in_chunk, buf);
  } else {
    return Copy::kAbsent;  // failed meanwhile, before its data was read
  }
  return Copy::kRead;
}

bool DiffArea::HasCopy(uint64_t index) {
  GateGuard guard(chain_gate_);
  if (!guard.entered()) return false;
  Shard& shard = ShardOf(index);
  MutexLock lock(shard.mu);
  auto it = shard.chunks.find(index);
  return it != shard.chunks.end() &&
         (it->second.state == ChunkState::kInMemory || it->second.state == ChunkState::kStored);
}

Status DiffArea::PreserveChunk(uint64_t index, bool wait_stored) {
  GateGuard guard(copy_gate_);
  if (!guard.entered()) return Status::Error(ENODEV, "snapshot leaving the chain");
  if (Preserve(index, wait_stored)) return Status::Ok();
  return Status::Error(corrupted() ? corrupt_errno() : EIO, "cannot preserve a chunk");
}

void DiffArea::WaitCopyCommitted(uint64_t index) {
  if (!log_) return;
  GateGuard guard(chain_gate_);
  if (!guard.entered()) return;
  Shard& shard = ShardOf(index);
  MutexLock lock(shard.mu);
  auto it = shard.chunks.find(index);
  if (it == shard.chunks.end()) return;
  const Chunk* chunk = &it->second;  // stays valid across rehashing, unlike the iterator
  while (chunk->state == ChunkState::kCopying || chunk->state == ChunkState::kInMemory)
    shard.cv.Wait(shard.mu);
}

std::vector<uint64_t> DiffArea::CopiedChunks() {
  std::vector<uint64_t> out;
  for (Shard& shard : shards_) {
    MutexLock lock(shard.mu);
    for (const auto& [index, chunk] : shard.chunks) {
      if (chunk.state == ChunkState::kInMemory || chunk.state == ChunkState::kStored)
        out.push_back(index);
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

void DiffArea::FreeBuffer(Chunk* chunk) {
  pool_.Put(chunk->buffer);
  chunk->buffer = nullptr;
}

void DiffArea::StoreChunk(uint64_t index, Chunk* chunk) {
  {
    MutexLock data(DataMu(index));
    const uint64_t length = geometry_.length(index);
    Status s = corrupted() ? Status::Error(corrupt_errno(), "snapshot corrupted") : Status::Ok();
    uint64_t offset = kChunkNotStored;
    if (s.ok() && chunk->storage_offset != kChunkNotStored) {
      // Durable zero chunk: its record (an image write may have given it storage meanwhile,
      // and committed that record itself).
      if (chunk->storage_offset == kZeroChunk) s = CommitRecord(index, kZeroChunk, nullptr, 0);
      if (!s.ok()) {
        Corrupt(s.errnum());
        SetState(index, chunk, ChunkState::kFailed);
      } else {
        SetState(index, chunk, ChunkState::kStored);
      }
      return;
    }
    if (s.ok()) {
      auto allocated = storage_->Allocate(length);
      if (allocated.ok()) {
        offset = *allocated;
        s = storage_->device().Write(offset, std::span<const uint8_t>(chunk->buffer, length));
        if (s.ok() && log_) {
          // Located before the commit: a compaction of the log meanwhile includes it (its data
          // is written). Under the shard mutex too, where CollectRecords reads it.
          SetOffset(index, chunk, offset);
          s = CommitRecord(index, offset, chunk->buffer, length);
        }
      } else {
        s = allocated.status();
      }
    }
    if (!s.ok()) {
      // The original may already hold new data: the buffer is the only copy of the take-time
      // data, which older snapshots of the device may read through this area. Kept (STORED
      // without an offset) until the area is shut down; this area serves no image any more.
      Corrupt(s.errnum());
      if (offset != kChunkNotStored) SetOffset(index, chunk, kChunkNotStored);
      SetState(index, chunk, ChunkState::kStored);
      return;
    }
    SetOffset(index, chunk, offset);
    SetState(index, chunk, ChunkState::kStored);
    chunks_stored_.fetch_add(1, std::memory_order_relaxed);
    if (cache_.capacity() == 0) {
      FreeBuffer(chunk);
      return;
    }
  }
  // Without the data stripe (the victim has its own). Each chunk is inserted once, by the
  // storer that stored it: the victim cannot be cached again meanwhile.
  const ChunkCache::Entry victim = cache_.Insert(index, chunk);
  if (!victim.second) return;
  MutexLock data(DataMu(victim.first));
  if (victim.second->storage_offset != kChunkNotStored) FreeBuffer(victim.second);
}

Status DiffArea::CheckImageIo() const {
  if (corrupted()) {
    return Status::Error(EIO,
                         "snapshot corrupted (" + std::string(strerror(corrupt_errno())) + ")");
  }
  return Status::Ok();
}

Status DiffArea::ReadChunkRange(uint64_t index, uint64_t in_chunk, std::span<uint8_t> buf) {
  Shard& shard = ShardOf(index);
  for (;;) {
    Chunk* chunk = nullptr;
    {
      MutexLock lock(shard.mu);
      auto it = shard.chunks.find(index);
      if (it != shard.chunks.end()) {
        chunk = &it->second;
        while (chunk->state == ChunkState::kCopying) shard.cv.Wait(shard.mu);
        if (chunk->state == ChunkState::kFailed) {
          Status s = CheckImageIo();
          return s.ok() ? Status::Error(EIO, "chunk lost") : s;
        }
      }
    }
    if (!chunk) {
      BLKSNAP_RETURN_IF_ERROR(chain_->ReadNewer(this, index, in_chunk, buf));
      MutexLock lock(shard.mu);
      auto it = shard.chunks.find(index);
      // The original changes only after a chunk leaves COPYING: what we read is take-time data
      // (and ReadNewer re-checked the newer areas).
      if (it == shard.chunks.end() || it->second.state == ChunkState::kCopying) {
        return Status::Ok();
      }
      continue;
    }
    MutexLock data(DataMu(index));
    if (chunk->buffer) {
      std::memcpy(buf.data(), chunk->buffer + in_chunk, buf.size());
      cache_.Touch(chunk);
      return Status::Ok();
    }
    if (chunk->storage_offset == kZeroChunk) {
      std::memset(buf.data(), 0, buf.size());
      return Status::Ok();
    }
    if (chunk->storage_offset == kChunkNotStored) return Status::Error(EIO, "chunk lost");
    return storage_->device().Read(chunk->storage_offset + in_chunk, buf);
  }
}

Status DiffArea::WriteChunkRange(uint64_t index, uint64_t in_chunk, std::span<const uint8_t> data) {
  // The older snapshots that read this chunk through this area keep its take-time data.
  BLKSNAP_RETURN_IF_ERROR(chain_->ShieldOlder(this, index, true));
  Chunk* chunk = Preserve(index, false);
  if (!chunk) return Status::Error(EIO, "snapshot corrupted");
  MutexLock guard(DataMu(index));
  if (chunk->storage_offset == kZeroChunk) {
    BLKSNAP_RETURN_IF_ERROR(MaterializeZeroChunk(index, chunk));
  } else if (log_ && chunk->storage_offset != kChunkNotStored && !chunk->plain_record) {
    // Its record may be the log's last commit, whose CRCs recovery checks: recorded again
    // without a CRC before the data changes in place (once per chunk and run).
    BLKSNAP_RETURN_IF_ERROR(
        CommitRecord(index, chunk->storage_offset, nullptr, geometry_.length(index)));
    chunk->plain_record = true;
  }
  if (chunk->buffer) std::memcpy(chunk->buffer + in_chunk, data.data(), data.size());
  if (chunk->storage_offset != kChunkNotStored) {
    return storage_->device().Write(chunk->storage_offset + in_chunk, data);
  }
  if (!chunk->buffer) return Status::Error(EIO, "chunk lost");
  return Status::Ok();  // still queued: the storer writes the updated buffer
}

Status DiffArea::MaterializeZeroChunk(uint64_t index, Chunk* chunk) {
  const uint64_t length = geometry_.length(index);
  BLKSNAP_ASSIGN_OR_RETURN(uint64_t offset, storage_->Allocate(length));
  // Allocated space may hold old data (a block-device storage): zero it, keeping it allocated.
  // On failure the chunk stays a zero chunk and only this image write fails.
  BLKSNAP_RETURN_IF_ERROR(storage_->device().WriteZeroes(offset, length, kZeroNoHole));
  SetOffset(index, chunk, offset);  // zeroes either way, if a compaction records it early
  if (log_) {
    // Without a CRC: the image write that follows changes the data in place.
    Status s = CommitRecord(index, offset, nullptr, length);
    if (!s.ok()) {
      SetOffset(index, chunk, kZeroChunk);
      return s;
    }
    chunk->plain_record = true;
  }
  chunks_stored_.fetch_add(1, std::memory_order_relaxed);
  return Status::Ok();
}

template <typename Fn>
Status DiffArea::ForEachChunk(uint64_t offset, uint64_t length, Fn fn) {
  uint64_t done = 0;
  while (done < length) {
    const uint64_t pos = offset + done;
    const uint64_t index = geometry_.index(pos);
    const uint64_t in_chunk = pos - geometry_.offset(index);
    const uint64_t n = std::min<uint64_t>(length - done, geometry_.length(index) - in_chunk);
    BLKSNAP_RETURN_IF_ERROR(fn(index, in_chunk, done, n));
    done += n;
  }
  return Status::Ok();
}

Status DiffArea::ImageRead(uint64_t offset, std::span<uint8_t> buf) {
  GateGuard guard(image_gate_);
  if (!guard.entered()) return Status::Error(ENODEV, "snapshot destroyed");
  BLKSNAP_RETURN_IF_ERROR(CheckImageIo());
  BLKSNAP_RETURN_IF_ERROR(ForEachChunk(
      offset, buf.size(), [&](uint64_t index, uint64_t in_chunk, uint64_t done, uint64_t n) {
        return ReadChunkRange(index, in_chunk, buf.subspan(done, n));
      }));
  return CheckImageIo();  // a failure during the read may have made the data suspect
}

Status DiffArea::ImageWrite(uint64_t offset, std::span<const uint8_t> data) {
  GateGuard guard(image_gate_);
  if (!guard.entered()) return Status::Error(ENODEV, "snapshot destroyed");
  BLKSNAP_RETURN_IF_ERROR(CheckImageIo());
  if (read_only_.load())
    return Status::Error(EROFS, "the snapshot is being rolled back onto its device");
  return ForEachChunk(offset, data.size(),
                      [&](uint64_t index, uint64_t in_chunk, uint64_t done, uint64_t n) {
                        return WriteChunkRange(index, in_chunk, data.subspan(done, n));
                      });
}

Status DiffArea::ImageWriteZeroes(uint64_t offset, uint64_t length) {
  std::vector<uint8_t> zeroes(std::min<uint64_t>(length, geometry_.size()), 0);
  uint64_t done = 0;
  while (done < length) {
    const uint64_t n = std::min<uint64_t>(length - done, zeroes.size());
    BLKSNAP_RETURN_IF_ERROR(ImageWrite(offset + done, std::span(zeroes.data(), n)));
    done += n;
  }
  return Status::Ok();
}

Status DiffArea::ImageFlush() {
  GateGuard guard(image_gate_);
  if (!guard.entered()) return Status::Error(ENODEV, "snapshot destroyed");
  BLKSNAP_RETURN_IF_ERROR(CheckImageIo());
  WaitStored();
  BLKSNAP_RETURN_IF_ERROR(CheckImageIo());
  return storage_->device().Flush();
}

DiffAreaStats DiffArea::stats() const {
  DiffAreaStats s;
  s.chunks_touched = chunks_touched_.load();
  s.chunks_copied = chunks_copied_.load();
  s.chunks_stored = chunks_stored_.load();
  s.chunks_zero = chunks_zero_.load();
  s.chunks_in_queue = storer_.in_queue();
  s.chunks_cached = cache_.size();
  return s;
}

}  // namespace blksnap
