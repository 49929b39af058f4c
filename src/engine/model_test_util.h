// The sector-generation model shared by the tests of several snapshots and rollback: a device
// of kDevSize bytes (its last 64 KiB chunk short), a model of the sector-pattern generation of
// every 512-byte sector, random writes that keep it, and the check of a device against it.
#pragma once

#include <random>
#include <vector>

#include "blksnap/config.h"
#include "engine/engine_test_util.h"

namespace blksnap::model_test {

constexpr uint64_t kKiB = 1024, kMiB = 1024 * kKiB;
constexpr uint64_t kChunk = 64 * kKiB;
constexpr uint64_t kDevSize = 8 * kMiB + 12 * kKiB;  // the last chunk is short
constexpr uint64_t kSector = testing::kSectorSize;
constexpr uint64_t kSectors = kDevSize / kSector;

using Model = std::vector<uint64_t>;  // the generation of each sector

inline Config TestConfig() {
  Config c;
  c.chunk_minimum_shift = 16;  // 64 KiB chunks
  c.tracking_block_minimum_shift = 12;
  c.diff_storage_minimum = 1 * kMiB;
  c.chunk_maximum_in_queue = 8;
  c.chunk_maximum_in_cache = 4;
  c.cbt_checkpoint_interval_ms = 0;
  return c;
}

// Checks `dev` against `model`, one read per run of equal generations.
inline Status VerifyModel(BlockDevice& dev, const Model& model) {
  for (uint64_t s = 0; s < model.size();) {
    uint64_t e = s + 1;
    while (e < model.size() && model[e] == model[s] && e - s < 4096) ++e;
    Status st = VerifyPattern(dev, s * kSector, (e - s) * kSector, model[s]);
    if (!st.ok()) {
      return Status::Error(st.errnum(), "sectors " + std::to_string(s) + "-" + std::to_string(e) +
                                            ": " + std::string(st.message()));
    }
    s = e;
  }
  return Status::Ok();
}

// `count` random writes (512 B to 192 KiB, crossing chunks) of new generations.
inline Status RandomWrites(BlockDevice& dev, Model& model, std::mt19937_64& rng, int count,
                           uint64_t* gen) {
  for (int i = 0; i < count; ++i) {
    const uint64_t sectors = 1 + rng() % (192 * kKiB / kSector);
    const uint64_t first = rng() % (kSectors - sectors);
    const uint64_t g = (*gen)++;
    BLKSNAP_RETURN_IF_ERROR(WritePattern(dev, first * kSector, sectors * kSector, g));
    std::fill(model.begin() + first, model.begin() + first + sectors, g);
  }
  return Status::Ok();
}

}  // namespace blksnap::model_test
