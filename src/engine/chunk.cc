// Chunk geometry: see chunk.h.
#include "engine/chunk.h"

namespace blksnap {

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

}  // namespace blksnap
