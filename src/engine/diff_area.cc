// DiffArea: see diff_area.h for the chunk state machine, the sparse table and the locking.
#include "engine/diff_area.h"

#include <cstring>
#include <system_error>
#include <vector>

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

ChunkGeometry ComputeChunkGeometry(uint64_t capacity, uint32_t io_size, const Config& config) {
  auto count_by_shift = [&](uint32_t shift) {
    return (capacity >> shift) + ((capacity & ((1ull << shift) - 1)) ? 1 : 0);
  };
  uint32_t shift = config.chunk_minimum_shift;
  while ((1ull << shift) < io_size && shift < 30) ++shift;
  while (count_by_shift(shift) > (1ull << config.chunk_maximum_count_shift) &&
         shift < config.chunk_maximum_shift) {
    ++shift;
  }
  return ChunkGeometry{shift, count_by_shift(shift), capacity};
}

DiffArea::DiffArea(std::shared_ptr<BlockDevice> original, std::shared_ptr<DiffStorage> storage,
                   ChunkGeometry geometry, const Config& config, CorruptFn on_corrupt)
    : original_(std::move(original)),
      storage_(std::move(storage)),
      geometry_(geometry),
      config_(config),
      on_corrupt_(std::move(on_corrupt)),
      pool_(geometry.size(), config.chunk_maximum_in_queue),
      storer_limit_(std::max(1u, config.chunk_storer_threads)) {
  storers_.emplace_back([this] { StorerLoop(); });  // the rest start on demand
}

DiffArea::~DiffArea() { Shutdown(); }

void DiffArea::Shutdown() {
  image_gate_.Shutdown();
  std::vector<std::thread> storers;
  {
    std::lock_guard lock(queue_mu_);
    if (stop_ && storers_.empty()) return;
    stop_ = true;  // from now on no storer is started
    storers.swap(storers_);
    work_cv_.notify_all();
    room_cv_.notify_all();
    idle_cv_.notify_all();
  }
  for (std::thread& storer : storers) storer.join();
  {
    std::lock_guard lock(cache_mu_);
    cache_.clear();
  }
  // No image I/O, storer or copy-on-write can run any more: free without the data stripes.
  for (Shard& shard : shards_) {
    std::lock_guard lock(shard.mu);
    for (auto& [index, chunk] : shard.chunks) {
      pool_.Put(chunk.buffer);
      chunk.buffer = nullptr;
    }
  }
  storage_.reset();
}

void DiffArea::Corrupt(int errnum) {
  int expected = 0;
  if (!corrupt_errno_.compare_exchange_strong(expected, errnum ? errnum : EIO)) return;
  {
    std::lock_guard lock(queue_mu_);
    room_cv_.notify_all();  // release throttled writers
  }
  if (on_corrupt_) on_corrupt_(errnum ? errnum : EIO);
}

void DiffArea::SetState(uint64_t index, Chunk* chunk, State state) {
  Shard& shard = ShardOf(index);
  std::lock_guard lock(shard.mu);
  chunk->state = state;
  shard.cv.notify_all();
}

DiffArea::Chunk* DiffArea::Preserve(uint64_t index) {
  Shard& shard = ShardOf(index);
  std::unique_lock lock(shard.mu);
  auto [it, inserted] = shard.chunks.try_emplace(index);
  Chunk* chunk = &it->second;
  if (!inserted) {
    shard.cv.wait(lock, [&] { return chunk->state != State::kCopying; });
    return chunk->state == State::kFailed ? nullptr : chunk;
  }
  lock.unlock();
  chunks_touched_.fetch_add(1, std::memory_order_relaxed);

  auto fail = [&](int errnum) -> Chunk* {
    Corrupt(errnum);
    SetState(index, chunk, State::kFailed);
    return nullptr;
  };
  {
    std::unique_lock queue(queue_mu_);
    room_cv_.wait(
        queue, [&] { return in_queue_ < config_.chunk_maximum_in_queue || stop_ || corrupted(); });
    if (stop_ || corrupted()) {
      queue.unlock();
      return fail(corrupted() ? corrupt_errno() : ENODEV);
    }
    ++in_queue_;
  }
  const uint64_t length = geometry_.length(index);
  uint8_t* buffer = pool_.Get();
  if (!buffer) {
    ReleaseQueueSlot();
    return fail(ENOMEM);
  }
  Status s = original_->Read(index << geometry_.shift, std::span(buffer, length));
  if (!s.ok()) {
    pool_.Put(buffer);
    ReleaseQueueSlot();
    return fail(s.errnum());
  }
  chunks_copied_.fetch_add(1, std::memory_order_relaxed);
  if (IsAllZero(buffer, length)) {
    pool_.Put(buffer);
    {
      std::lock_guard data(DataMu(index));
      chunk->storage_offset = kZeroChunk;
    }
    chunks_zero_.fetch_add(1, std::memory_order_relaxed);
    SetState(index, chunk, State::kStored);
    ReleaseQueueSlot();
    return chunk;
  }
  {
    std::lock_guard data(DataMu(index));
    chunk->buffer = buffer;
  }
  SetState(index, chunk, State::kInMemory);
  {
    std::lock_guard queue(queue_mu_);
    queue_.emplace_back(index, chunk);
    WakeStorerIfBehind();
  }
  return chunk;
}

void DiffArea::PreserveForOriginalWrite(uint64_t offset, uint64_t length) {
  if (length == 0 || corrupted() || offset >= geometry_.capacity) return;
  const uint64_t end = std::min(geometry_.capacity, offset + length);
  const uint64_t last = (end - 1) >> geometry_.shift;
  for (uint64_t index = offset >> geometry_.shift; index <= last; ++index) {
    if (!Preserve(index) && corrupted()) return;
  }
}

void DiffArea::ReleaseQueueSlot() {
  std::lock_guard queue(queue_mu_);
  --in_queue_;
  room_cv_.notify_one();
  if (in_queue_ == 0) idle_cv_.notify_all();
}

void DiffArea::WakeStorerIfBehind() {
  // Storers not waiting will look at the queue before they wait again; those notified will
  // wake. Wake one more only while the queue is longer than they are many: a fast storage keeps
  // one storer busy and the rest asleep, a slow one wakes them all. Storers are started here,
  // on demand, up to storer_limit_ (one from the start): a take starts one thread, not 16.
  const size_t awake = storers_.size() - storers_waiting_ + wakeups_pending_;
  if (queue_.size() <= awake || stop_) return;
  if (storers_waiting_ > wakeups_pending_) {
    ++wakeups_pending_;
    work_cv_.notify_one();
  } else if (storers_.size() < storer_limit_) {
    try {
      storers_.emplace_back([this] { StorerLoop(); });
    } catch (const std::system_error&) {
      // No thread to spare: the storers already running drain the queue.
    }
  }
}

void DiffArea::StorerLoop() {
  for (;;) {
    std::unique_lock queue(queue_mu_);
    while (!stop_ && queue_.empty()) {
      ++storers_waiting_;
      work_cv_.wait(queue);
      --storers_waiting_;
      if (wakeups_pending_ > 0) --wakeups_pending_;  // a spurious wake-up only over-wakes later
    }
    if (stop_) return;
    auto [index, chunk] = queue_.front();
    queue_.pop_front();
    queue.unlock();
    StoreChunk(chunk, index);
    ReleaseQueueSlot();
  }
}

void DiffArea::FreeBuffer(Chunk* chunk) {
  pool_.Put(chunk->buffer);
  chunk->buffer = nullptr;
}

void DiffArea::StoreChunk(Chunk* chunk, uint64_t index) {
  {
    std::lock_guard data(DataMu(index));
    const uint64_t length = geometry_.length(index);
    Status s = corrupted() ? Status::Error(corrupt_errno(), "snapshot corrupted") : Status::Ok();
    uint64_t offset = UINT64_MAX;
    if (s.ok()) {
      auto allocated = storage_->Allocate(length);
      if (allocated.ok()) {
        offset = *allocated;
        s = storage_->device().Write(offset, std::span<const uint8_t>(chunk->buffer, length));
      } else {
        s = allocated.status();
      }
    }
    if (!s.ok()) {
      Corrupt(s.errnum());
      FreeBuffer(chunk);
      SetState(index, chunk, State::kFailed);
      return;
    }
    chunk->storage_offset = offset;
    SetState(index, chunk, State::kStored);
    chunks_stored_.fetch_add(1, std::memory_order_relaxed);
    if (config_.chunk_maximum_in_cache == 0) {
      FreeBuffer(chunk);
      return;
    }
  }
  CacheInsert(index, chunk);
}

void DiffArea::CacheInsert(uint64_t index, Chunk* chunk) {
  std::pair<uint64_t, Chunk*> victim{0, nullptr};
  {
    std::lock_guard lock(cache_mu_);
    chunk->cached = true;
    chunk->referenced = false;
    if (cache_.size() < config_.chunk_maximum_in_cache) {
      cache_.emplace_back(index, chunk);
      return;
    }
    // CLOCK: skip (and clear) recently read entries, evict the first one not read since.
    while (cache_[cache_hand_].second->referenced) {
      cache_[cache_hand_].second->referenced = false;
      cache_hand_ = (cache_hand_ + 1) % cache_.size();
    }
    victim = cache_[cache_hand_];
    victim.second->cached = false;
    cache_[cache_hand_] = {index, chunk};
    cache_hand_ = (cache_hand_ + 1) % cache_.size();
  }
  // Each chunk is inserted once, by the storer that stored it: the victim cannot be cached again
  // meanwhile.
  std::lock_guard data(DataMu(victim.first));
  if (victim.second->storage_offset != UINT64_MAX) FreeBuffer(victim.second);
}

void DiffArea::CacheTouch(Chunk* chunk) {
  std::lock_guard lock(cache_mu_);
  if (chunk->cached) chunk->referenced = true;
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
  const uint64_t offset = (index << geometry_.shift) + in_chunk;
  for (;;) {
    std::unique_lock lock(shard.mu);
    auto it = shard.chunks.find(index);
    if (it == shard.chunks.end()) {
      lock.unlock();
      BLKSNAP_RETURN_IF_ERROR(original_->Read(offset, buf));
      lock.lock();
      it = shard.chunks.find(index);
      // The original changes only after a chunk leaves COPYING: what we read is take-time data.
      if (it == shard.chunks.end() || it->second.state == State::kCopying) return Status::Ok();
      continue;
    }
    Chunk* chunk = &it->second;
    shard.cv.wait(lock, [&] { return chunk->state != State::kCopying; });
    if (chunk->state == State::kFailed) {
      Status s = CheckImageIo();
      return s.ok() ? Status::Error(EIO, "chunk lost") : s;
    }
    lock.unlock();
    std::lock_guard data(DataMu(index));
    if (chunk->buffer) {
      std::memcpy(buf.data(), chunk->buffer + in_chunk, buf.size());
      CacheTouch(chunk);
      return Status::Ok();
    }
    if (chunk->storage_offset == kZeroChunk) {
      std::memset(buf.data(), 0, buf.size());
      return Status::Ok();
    }
    if (chunk->storage_offset == UINT64_MAX) return Status::Error(EIO, "chunk lost");
    return storage_->device().Read(chunk->storage_offset + in_chunk, buf);
  }
}

Status DiffArea::WriteChunkRange(uint64_t index, uint64_t in_chunk, std::span<const uint8_t> data) {
  Chunk* chunk = Preserve(index);
  if (!chunk) return Status::Error(EIO, "snapshot corrupted");
  std::lock_guard guard(DataMu(index));
  if (chunk->storage_offset == kZeroChunk)
    BLKSNAP_RETURN_IF_ERROR(MaterializeZeroChunk(index, chunk));
  if (chunk->buffer) std::memcpy(chunk->buffer + in_chunk, data.data(), data.size());
  if (chunk->storage_offset != UINT64_MAX) {
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
  chunk->storage_offset = offset;
  chunks_stored_.fetch_add(1, std::memory_order_relaxed);
  return Status::Ok();
}

template <typename Fn>
Status DiffArea::ForEachChunk(uint64_t offset, uint64_t length, Fn fn) {
  uint64_t done = 0;
  while (done < length) {
    const uint64_t pos = offset + done;
    const uint64_t index = pos >> geometry_.shift;
    const uint64_t in_chunk = pos - (index << geometry_.shift);
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

void DiffArea::WaitStored() {
  std::unique_lock queue(queue_mu_);
  idle_cv_.wait(queue, [&] { return in_queue_ == 0 || stop_; });
}

DiffAreaStats DiffArea::stats() const {
  DiffAreaStats s;
  s.chunks_touched = chunks_touched_.load();
  s.chunks_copied = chunks_copied_.load();
  s.chunks_stored = chunks_stored_.load();
  s.chunks_zero = chunks_zero_.load();
  {
    std::lock_guard lock(queue_mu_);
    s.chunks_in_queue = in_queue_;
  }
  std::lock_guard lock(cache_mu_);
  s.chunks_cached = cache_.size();
  return s;
}

}  // namespace blksnap
