// Write-path microbenchmarks of the engine on memory devices, so regressions show:
//   NoSnapshot         tracker overhead only (CBT marking, gate);
//   SnapshotFirstPass  every write lands in a chunk not yet preserved (copy-on-write);
//   SnapshotSecondPass every chunk already preserved (steady state).
// Each iteration is one 4 KiB write at the next chunk; 64 KiB chunks, as in the peer benchmarks.
//   Crc32c/0 and /1    the table and the SSE4.2 CRC-32C over one 4 KiB block (bytes/s).
#include <benchmark/benchmark.h>

#include <vector>

#include "blksnap/engine.h"
#include "blksnap/io.h"
#include "util/crc32c.h"

namespace blksnap {
namespace {

constexpr uint64_t kDevSize = 1ull << 30;
constexpr uint64_t kChunk = 64 * 1024;

struct Setup {
  std::unique_ptr<Engine> engine;
  std::shared_ptr<Tracker> tracker;
  Uuid id;

  explicit Setup(bool snapshot) {
    Config c;
    c.chunk_minimum_shift = 16;
    engine = Engine::Create(c).value();
    tracker = engine->Attach("bench", MakeMemoryDevice(kDevSize)).value();
    std::vector<uint8_t> fill(1 << 20, 0x11);  // allocate every page before measuring
    for (uint64_t off = 0; off < kDevSize; off += fill.size()) {
      if (!tracker->Write(off, fill, 0).ok()) std::abort();
    }
    if (!snapshot) return;
    SnapshotOptions opts;
    opts.storage_path = "memory";
    opts.storage_device = MakeMemoryDevice(kDevSize + (4ull << 20));
    id = engine->CreateSnapshot(opts).value();
    if (!engine->AddDevice(id, "bench").ok() || !engine->Take(id).ok()) std::abort();
  }
};

void WriteEachChunk(benchmark::State& state, Setup& setup, bool wait_stored) {
  std::vector<uint8_t> buf(4096, 0x5a);
  uint64_t chunk = 0;
  for (auto _ : state) {
    if (!setup.tracker->Write(chunk * kChunk, buf, 0).ok()) state.SkipWithError("write failed");
    if (++chunk == kDevSize / kChunk) chunk = 0;
  }
  if (wait_stored) {
    if (auto snap = setup.engine->FindSnapshot(setup.id))
      snap->image("bench")->Flush().IgnoreError();
  }
  state.SetBytesProcessed(state.iterations() * buf.size());
}

void BM_NoSnapshot(benchmark::State& state) {
  Setup setup(false);
  WriteEachChunk(state, setup, false);
}
BENCHMARK(BM_NoSnapshot)->UseRealTime();

void BM_SnapshotFirstPass(benchmark::State& state) {
  Setup setup(true);
  WriteEachChunk(state, setup, true);
}
// One pass over the device at most, so every write is a first write to its chunk.
BENCHMARK(BM_SnapshotFirstPass)->Iterations(kDevSize / kChunk)->UseRealTime();

void BM_SnapshotSecondPass(benchmark::State& state) {
  Setup setup(true);
  std::vector<uint8_t> buf(4096, 0x33);
  for (uint64_t c = 0; c < kDevSize / kChunk; ++c) {
    if (!setup.tracker->Write(c * kChunk, buf, 0).ok()) std::abort();
  }
  WriteEachChunk(state, setup, false);
}
BENCHMARK(BM_SnapshotSecondPass)->UseRealTime();

// Arg 0: the portable table; 1: the SSE4.2 instruction (skipped on CPUs without it).
void BM_Crc32c(benchmark::State& state) {
  const bool hardware = state.range(0) != 0;
  if (hardware && !crc32c_internal::HaveHardware()) {
    state.SkipWithError("no SSE4.2");
    return;
  }
  auto impl = hardware ? crc32c_internal::Hardware : crc32c_internal::Portable;
  std::vector<uint8_t> block(4096, 0x5a);
  uint32_t crc = 0;
  for (auto _ : state) {
    crc = impl(block.data(), block.size(), crc);
    benchmark::DoNotOptimize(crc);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * block.size()));
}
BENCHMARK(BM_Crc32c)->Arg(0)->Arg(1);

}  // namespace
}  // namespace blksnap

BENCHMARK_MAIN();
