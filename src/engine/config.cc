// Config::Validate: corrects what can be corrected, refuses what cannot.
#include "blksnap/config.h"

#include <string>

namespace blksnap {
namespace {

Status OutOfRange(const char* name, uint64_t value, uint64_t lo, uint64_t hi) {
  return Status::Error(EINVAL, std::string(name) + " = " + std::to_string(value) +
                                   " is out of range [" + std::to_string(lo) + ", " +
                                   std::to_string(hi) + "]");
}

}  // namespace

Status Config::Validate(std::vector<std::string>* warnings) {
  auto warn = [&](std::string text) {
    if (warnings) warnings->push_back(std::move(text));
  };
  if (tracking_block_minimum_shift < 9 || tracking_block_minimum_shift > 40)
    return OutOfRange("tracking_block_minimum_shift", tracking_block_minimum_shift, 9, 40);
  if (tracking_block_maximum_shift > 40)
    return OutOfRange("tracking_block_maximum_shift", tracking_block_maximum_shift, 9, 40);
  if (tracking_block_maximum_shift < tracking_block_minimum_shift) {
    warn("tracking_block_maximum_shift raised to tracking_block_minimum_shift (" +
         std::to_string(tracking_block_minimum_shift) + ")");
    tracking_block_maximum_shift = tracking_block_minimum_shift;
  }
  if (tracking_block_maximum_count == 0)
    return OutOfRange("tracking_block_maximum_count", 0, 1, UINT64_MAX);
  if (chunk_minimum_shift < 9 || chunk_minimum_shift > 30)
    return OutOfRange("chunk_minimum_shift", chunk_minimum_shift, 9, 30);
  if (chunk_maximum_shift > 30)
    return OutOfRange("chunk_maximum_shift", chunk_maximum_shift, 9, 30);
  if (chunk_maximum_shift < chunk_minimum_shift) {
    warn("chunk_maximum_shift raised to chunk_minimum_shift (" +
         std::to_string(chunk_minimum_shift) + ")");
    chunk_maximum_shift = chunk_minimum_shift;
  }
  if (chunk_maximum_count_shift < 1 || chunk_maximum_count_shift > 56)
    return OutOfRange("chunk_maximum_count_shift", chunk_maximum_count_shift, 1, 56);
  if (chunk_maximum_in_queue < 1 || chunk_maximum_in_queue > 65536)
    return OutOfRange("chunk_maximum_in_queue", chunk_maximum_in_queue, 1, 65536);
  if (chunk_storer_threads < 1 || chunk_storer_threads > 64)
    return OutOfRange("chunk_storer_threads", chunk_storer_threads, 1, 64);
  if (chunk_log_compact_pages < 1)
    return OutOfRange("chunk_log_compact_pages", chunk_log_compact_pages, 1, UINT32_MAX);
  if (chunk_maximum_in_cache > 1u << 20)
    return OutOfRange("chunk_maximum_in_cache", chunk_maximum_in_cache, 0, 1u << 20);
  constexpr uint64_t kMiB = 1ull << 20;
  if (diff_storage_minimum < kMiB)
    return OutOfRange("diff_storage_minimum", diff_storage_minimum, kMiB, UINT64_MAX / 2);
  if (diff_storage_minimum % kMiB) {
    diff_storage_minimum = (diff_storage_minimum / kMiB + 1) * kMiB;
    warn("diff_storage_minimum rounded up to a multiple of 1 MiB");
  }
  return Status::Ok();
}

}  // namespace blksnap
