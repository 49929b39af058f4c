// cow_bench: copy-on-write throughput of the engine alone, per durability (issue 15), without
// NBD or fio, so that changes to the chunk pipeline (storers, chunk log, commits) can be
// compared in one run, alternated, on a busy machine.
//
//   cow_bench DIR DURABILITY THREADS SIZE_MIB [STORAGE_DIR]
//
// Prefills DIR/orig.img (SIZE_MIB, non-zero, synced), attaches it, takes a snapshot with
// 64 KiB chunks and DURABILITY (memory|crash|power) whose storage is a directory (STORAGE_DIR,
// default DIR/diff: put it on tmpfs to take the flush out), then THREADS threads write 64 KiB
// to every chunk once, in a random order (each write preserves a new chunk: fio's cow64k), and
// prints the IOPS of that pass. Like the NBD client, it does not wait for the storers after
// the last write. Environment: COW_QUEUE sets chunk_maximum_in_queue, COW_STORERS
// chunk_storer_threads, COW_STORAGE_CACHE (0|1) diff_storage_page_cache, COW_INLINE (0|1)
// durable_store_inline.
//
// COW_SNAPSHOTS=N (default 1; issue 18) takes N snapshots of the device: N-1 first, each
// followed by an unmeasured pass writing a random quarter of the chunks, drawn anew each time
// (they may overlap; the older snapshots hold copies of their own), then the last one, before the
// measured pass above (each write makes the newest snapshot copy a new chunk; the older ones read
// through it). Snapshot i stores in STORAGE_DIR/sI (a file in that directory, as `snapshot create
// --storage DIR`); with N=1 that is STORAGE_DIR itself, as before.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "blksnap/engine.h"
#include "blksnap/io.h"

namespace {

constexpr uint64_t kChunk = 64 * 1024;

bool Prefill(const std::string& path, uint64_t size) {
  const int fd = ::open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0644);
  if (fd < 0) return false;
  std::vector<uint8_t> buf(1 << 20, 0x11);
  bool ok = true;
  for (uint64_t off = 0; ok && off < size; off += buf.size()) {
    buf[0] = static_cast<uint8_t>(off >> 20);
    ok = ::pwrite(fd, buf.data(), buf.size(), static_cast<off_t>(off)) ==
         static_cast<ssize_t>(buf.size());
  }
  ok = ok && ::fsync(fd) == 0;
  ::close(fd);
  return ok;
}

int Fail(const char* what, const blksnap::Status& s) {
  std::fprintf(stderr, "cow_bench: %s: %s\n", what, s.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace blksnap;
  if (argc < 5) {
    std::fprintf(stderr,
                 "usage: cow_bench DIR memory|crash|power THREADS SIZE_MIB [STORAGE_DIR]\n");
    return 2;
  }
  const std::string dir = argv[1];
  auto durability = ParseSnapshotDurability(argv[2]);
  if (!durability.ok()) return Fail("durability", durability.status());
  const int threads = std::max(1, std::atoi(argv[3]));
  const uint64_t size = std::strtoull(argv[4], nullptr, 10) << 20;
  const std::string storage = argc > 5 ? argv[5] : dir + "/diff";
  int snapshots = 1;
  if (const char* n = std::getenv("COW_SNAPSHOTS")) snapshots = std::max(1, std::atoi(n));
  std::filesystem::create_directories(storage);
  const std::string image = dir + "/orig.img";
  if (!Prefill(image, size)) {
    std::perror("cow_bench: prefill");
    return 1;
  }

  Config config;
  config.chunk_minimum_shift = 16;
  if (const char* q = std::getenv("COW_QUEUE")) config.chunk_maximum_in_queue = std::atoi(q);
  if (const char* d = std::getenv("COW_STORAGE_CACHE"))
    config.diff_storage_page_cache = std::atoi(d) != 0;
  if (const char* t = std::getenv("COW_STORERS")) config.chunk_storer_threads = std::atoi(t);
  if (const char* i = std::getenv("COW_INLINE")) config.durable_store_inline = std::atoi(i) != 0;
  auto engine = Engine::Create(config);
  if (!engine.ok()) return Fail("engine", engine.status());
  auto device = OpenFileDevice(image);
  if (!device.ok()) return Fail("open", device.status());
  auto tracker = (*engine)->Attach("d", *device);
  if (!tracker.ok()) return Fail("attach", tracker.status());
  const uint64_t chunks = size / kChunk;
  std::vector<uint64_t> order(chunks);
  for (uint64_t i = 0; i < chunks; ++i) order[i] = i;
  std::vector<Uuid> ids;
  for (int n = 0; n < snapshots; ++n) {
    SnapshotOptions options;
    options.storage_path = snapshots == 1 ? storage : storage + "/s" + std::to_string(n);
    std::filesystem::create_directories(options.storage_path);
    options.limit = 2 * size + (1ull << 30);
    options.durability = *durability;
    auto id = (*engine)->CreateSnapshot(options);
    if (!id.ok()) return Fail("create", id.status());
    ids.push_back(*id);
    if (Status s = (*engine)->AddDevice(*id, "d"); !s.ok()) return Fail("add", s);
    if (auto taken = (*engine)->Take(*id); !taken.ok()) return Fail("take", taken.status());
    if (n + 1 == snapshots) break;
    // An unmeasured pass over a new random quarter: snapshot n keeps copies of its own.
    std::shuffle(order.begin(), order.end(), std::mt19937_64(1000 + n));
    std::vector<uint8_t> buf(kChunk, static_cast<uint8_t>(0x20 + n));
    for (uint64_t i = 0; i < chunks / 4; ++i) {
      if (Status s = (*tracker)->Write(order[i] * kChunk, buf, 0); !s.ok()) return Fail("fill", s);
    }
  }

  for (uint64_t i = 0; i < chunks; ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), std::mt19937_64(42));
  std::atomic<uint64_t> next{0};
  std::atomic<bool> failed{false};
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> writers;
  for (int t = 0; t < threads; ++t) {
    writers.emplace_back([&] {
      std::vector<uint8_t> buf(kChunk, 0x5a);
      for (uint64_t i; (i = next.fetch_add(1)) < chunks && !failed;) {
        if (!(*tracker)->Write(order[i] * kChunk, buf, 0).ok()) failed = true;
      }
    });
  }
  for (auto& w : writers) w.join();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (failed) return Fail("write", Status::Error(EIO, "a write failed"));
  std::printf("%s threads=%d chunks=%llu %.0f IOPS snapshots=%d\n", argv[2], threads,
              static_cast<unsigned long long>(chunks), chunks / seconds, snapshots);
  // Oldest first: nobody reads through the oldest, so its destroy moves no copies.
  for (const Uuid& id : ids) (*engine)->Destroy(id).IgnoreError();
  return 0;
}
