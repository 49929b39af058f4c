// Chunks: the unit of copy-on-write (blksnap's chunk.c). A device is cut into chunks of 2^shift
// bytes (the last may be shorter); ChunkGeometry maps chunk indexes to byte ranges and back.
//
// Chunk states (no entry in the table = NEW: the original still holds the take-time data):
//   COPYING   one thread reads the chunk from the original; others touching it wait
//   IN_MEMORY the take-time data is in `buffer`, queued for a storer thread (storer.h)
//   STORED    the data is in the difference storage at storage_offset (buffer may stay cached,
//             chunk_cache.h), or the chunk was all zeroes at the take (storage_offset ==
//             kZeroChunk): nothing is stored, image reads return zeroes, and an image write first
//             gives it a stored, zero-filled copy.
//   FAILED    preserving failed; the snapshot is corrupted
//
//  NEW --first write of the original, or first image write--> COPYING
//  COPYING --read OK--> IN_MEMORY --stored--> STORED;  COPYING --read OK, all zeroes--> STORED
//  COPYING / IN_MEMORY --any error--> FAILED
//
// Locking: a Chunk carries no mutex (it is 24 bytes, one per touched chunk). Its fields are
// guarded by locks of the DiffArea and ChunkCache that own it, as marked on each field; the
// thread-safety analysis cannot name a striped lock per field, so those are comments only.
#pragma once

#include <algorithm>
#include <cstdint>

#include "blksnap/config.h"

namespace blksnap {

struct ChunkGeometry {
  uint32_t shift = 0;
  uint64_t count = 0;     // chunks, the last one possibly short
  uint64_t capacity = 0;  // device bytes
  uint64_t size() const { return 1ull << shift; }
  // Bytes of chunk `index` (size(), or less for the last chunk).
  uint64_t length(uint64_t index) const {
    const uint64_t offset = index << shift;
    return std::min(size(), capacity - offset);
  }
  uint64_t offset(uint64_t index) const { return index << shift; }  // first byte of the chunk
  uint64_t index(uint64_t byte) const { return byte >> shift; }     // chunk holding the byte
  uint64_t in_chunk(uint64_t byte) const { return byte & (size() - 1); }
};

// The chunk size for a device: chunk_minimum_shift, at least io_size, grown while the count
// exceeds 2^chunk_maximum_count_shift, capped by chunk_maximum_shift (see Config).
ChunkGeometry ComputeChunkGeometry(uint64_t capacity, uint32_t io_size, const Config& config);

enum class ChunkState : uint8_t { kCopying, kInMemory, kStored, kFailed };

// storage_offset values that are not offsets.
inline constexpr uint64_t kChunkNotStored = UINT64_MAX;
inline constexpr uint64_t kZeroChunk = UINT64_MAX - 1;  // all zeroes at the take: nothing stored

// One entry of the chunk table, stored inline in its shard's map (references stay valid across
// rehashing).
struct Chunk {
  uint64_t storage_offset = kChunkNotStored;  // guarded by the chunk's data stripe (DiffArea)
  uint8_t* buffer = nullptr;                  // guarded by the data stripe; from a BufferPool
  ChunkState state = ChunkState::kCopying;    // guarded by the shard mutex (DiffArea)
  bool cached = false;                        // guarded by ChunkCache's mutex
  bool referenced = false;                    // guarded by ChunkCache's mutex (CLOCK bit)
  // Its last record has no CRC to check (an image write may change the data in place): guarded
  // by the data stripe.
  bool plain_record = false;
};
static_assert(sizeof(Chunk) == 24, "a chunk entry is 24 bytes: memory per preserved chunk");

}  // namespace blksnap
