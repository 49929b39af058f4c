// Microbenchmarks of the backup repository's per-chunk work (src/repository), on one 4 MiB
// chunk, so the limits of backup and restore throughput on this machine show (bytes/s):
//   ChunkId/0, /1          SHA-256 (plain repository) and HMAC-SHA-256 (encrypted) of a chunk;
//   Seal/E/C/R, Unseal/E/C E = encrypted (AES-256-GCM), C = compressible data (zstd level 3
//                          shrinks it ~6x) or random (kept raw); R = SealInto a reused buffer
//                          (as a backup worker does) rather than Seal's fresh vector;
//   LocalPut               one chunk Put into a local store in /tmp (write, fsync, rename,
//                          fsync directory), a new name each time.
#include <benchmark/benchmark.h>
#include <stdlib.h>

#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "repository/codec.h"
#include "repository/object_store.h"

namespace blksnap::repo {
namespace {

constexpr size_t kChunk = 4 << 20;

// Random bytes, or text-like data: words drawn at random from a small vocabulary.
std::vector<uint8_t> Data(bool compressible) {
  std::mt19937_64 rng(42);
  std::vector<uint8_t> v;
  v.reserve(kChunk);
  static const char* kWords[] = {"block ", "snapshot ", "chunk ", "device ", "backup ",
                                 "the ",   "of ",       "and ",   "0x1f3a ", "tracking\n"};
  while (v.size() < kChunk) {
    if (compressible) {
      for (const char* c = kWords[rng() % 10]; *c && v.size() < kChunk; ++c) v.push_back(*c);
    } else {
      v.push_back(static_cast<uint8_t>(rng()));
    }
  }
  return v;
}

Codec MakeCodec(bool encrypted) {
  NewRepoOptions options;
  options.kdf_iterations = kMinKdfIterations;
  const std::vector<uint8_t> key(32, 1);
  auto config = NewRepoConfig(
      options, encrypted ? std::optional(std::span<const uint8_t>(key)) : std::nullopt);
  return Codec::Open(*config,
                     encrypted ? std::optional(std::span<const uint8_t>(key)) : std::nullopt)
      .value();
}

void BM_ChunkId(benchmark::State& state) {
  const Codec codec = MakeCodec(state.range(0) != 0);
  const auto data = Data(false);
  for (auto _ : state) benchmark::DoNotOptimize(codec.ChunkId(data));
  state.SetBytesProcessed(state.iterations() * kChunk);
}
BENCHMARK(BM_ChunkId)->Arg(0)->Arg(1);

void BM_Seal(benchmark::State& state) {
  const Codec codec = MakeCodec(state.range(0) != 0);
  const auto data = Data(state.range(1) != 0);
  const Digest id = codec.ChunkId(data);
  size_t stored = 0;
  std::vector<uint8_t> buffer;
  for (auto _ : state) {
    stored = state.range(2) != 0 ? codec.SealInto(data, id.bytes, &buffer)->size()
                                 : codec.Seal(data, id.bytes)->size();
  }
  state.SetBytesProcessed(state.iterations() * kChunk);
  state.counters["stored_ratio"] = static_cast<double>(stored) / kChunk;
}
BENCHMARK(BM_Seal)->ArgsProduct({{0, 1}, {0, 1}, {0, 1}});

void BM_Unseal(benchmark::State& state) {
  const Codec codec = MakeCodec(state.range(0) != 0);
  const auto data = Data(state.range(1) != 0);
  const Digest id = codec.ChunkId(data);
  const auto blob = *codec.Seal(data, id.bytes);
  for (auto _ : state) benchmark::DoNotOptimize(codec.Unseal(blob, id.bytes)->size());
  state.SetBytesProcessed(state.iterations() * kChunk);
}
BENCHMARK(BM_Unseal)->ArgsProduct({{0, 1}, {0, 1}});

void BM_LocalPut(benchmark::State& state) {
  std::string dir = "/tmp/repository_bench.XXXXXX";
  if (::mkdtemp(dir.data()) == nullptr) {
    state.SkipWithError("mkdtemp");
    return;
  }
  auto store = OpenLocalStore(dir).value();
  const auto data = Data(false);
  int n = 0;
  for (auto _ : state) {
    if (!store->Put("chunks/00/" + std::to_string(n++), data).ok()) state.SkipWithError("put");
  }
  state.SetBytesProcessed(state.iterations() * kChunk);
  std::filesystem::remove_all(dir);
}
BENCHMARK(BM_LocalPut)->UseRealTime();

}  // namespace
}  // namespace blksnap::repo

BENCHMARK_MAIN();
