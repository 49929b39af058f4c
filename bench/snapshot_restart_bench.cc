// snapshot_restart_bench: how long a durable snapshot takes to come back after a restart, and
// what it costs in memory (issue 15: 1 TiB device, 10% of its chunks preserved, ready < 2 s).
//
//   snapshot_restart_bench DIR [FRACTION] [clean|crash]
//
// A child process attaches a sparse 1 TiB file DIR/restart-1t.img (64 KiB chunks), takes a
// snapshot with durability crash into DIR (the storage file is the same whatever the
// durability; crash only skips the flushes, which makes the setup fast), preserves FRACTION of
// the chunks by trimming 4 KiB of every tenth chunk from 16 threads (each a zero chunk: a
// record, no data), then either closes the snapshot (clean: CloseSnapshot, which compacts the
// chunk log) or exits without any clean-up (crash: _exit, the log as written). The parent then
// attaches the file and times RecoverSnapshot; it prints one JSON line with the seconds, the
// records' log size and the RSS before and after (VmRSS, KiB). The files are removed.
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "blksnap/engine.h"
#include "blksnap/io.h"

using namespace blksnap;

namespace {

constexpr uint64_t kSize = 1ull << 40, kChunk = 64 * 1024;

long RssKb() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::atol(line.c_str() + 6);
  }
  return 0;
}

Config BenchConfig() {
  Config c;
  c.chunk_minimum_shift = 16;
  c.cbt_checkpoint_interval_ms = 0;
  return c;
}

[[noreturn]] void Die(const char* what, const Status& s) {
  std::fprintf(stderr, "%s: %s\n", what, s.ToString().c_str());
  _exit(1);
}

// The child: returns through _exit only.
[[noreturn]] void Prepare(const std::string& img, const std::string& dir, double fraction,
                          bool clean, int out_fd) {
  auto engine = Engine::Create(BenchConfig()).value();
  auto disk = OpenFileDevice(img, {});
  if (!disk.ok()) Die("open", disk.status());
  auto tracker = engine->Attach("d", *disk);
  if (!tracker.ok()) Die("attach", tracker.status());
  auto id = engine->CreateSnapshot({.storage_path = dir, .durability = SnapshotDurability::kCrash});
  if (!id.ok()) Die("create", id.status());
  if (Status s = engine->AddDevice(*id, "d"); !s.ok()) Die("add", s);
  if (auto t = engine->Take(*id); !t.ok()) Die("take", t.status());
  const uint64_t chunks = kSize / kChunk, n = static_cast<uint64_t>(chunks * fraction);
  std::atomic<uint64_t> next{0};
  std::vector<std::thread> writers;
  for (int i = 0; i < 16; ++i) {
    writers.emplace_back([&] {
      for (uint64_t k; (k = next.fetch_add(1)) < n;) {
        Status s = (*tracker)->Trim((k * 10 % chunks) * kChunk, 4096);
        if (!s.ok()) Die("trim", s);
      }
    });
  }
  for (auto& w : writers) w.join();
  const std::string file = engine->FindSnapshot(*id)->storage_info().file;
  const long rss = RssKb();
  if (clean) {
    if (Status s = engine->CloseSnapshot(*id); !s.ok()) Die("close", s);
  }
  const std::string line =
      id->ToString() + " " + file + " " + std::to_string(n) + " " + std::to_string(rss) + "\n";
  if (write(out_fd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) _exit(1);
  _exit(0);  // crash: no destructor runs, nothing is closed
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s DIR [FRACTION] [clean|crash]\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  const double fraction = argc > 2 ? std::atof(argv[2]) : 0.1;
  const bool clean = argc > 3 ? std::string(argv[3]) != "crash" : true;
  const std::string img = dir + "/restart-1t.img";
  if (truncate(img.c_str(), 0) != 0 && errno != ENOENT) return 1;
  { std::ofstream(img, std::ios::app); }
  if (truncate(img.c_str(), static_cast<off_t>(kSize)) != 0) return 1;
  int fds[2];
  if (pipe(fds) != 0) return 1;
  const pid_t child = fork();
  if (child == 0) {
    close(fds[0]);
    Prepare(img, dir, fraction, clean, fds[1]);
  }
  close(fds[1]);
  char buf[512] = {};
  const ssize_t got = read(fds[0], buf, sizeof(buf) - 1);
  int status = 0;
  waitpid(child, &status, 0);
  if (got <= 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) return 1;
  char id_text[64], file[400];
  unsigned long long preserved = 0;
  long rss_before = 0;
  if (std::sscanf(buf, "%63s %399s %llu %ld", id_text, file, &preserved, &rss_before) != 4)
    return 1;

  auto engine = Engine::Create(BenchConfig()).value();
  auto disk = OpenFileDevice(img, {});
  if (!disk.ok() || !engine->Attach("d", *disk).ok()) return 1;
  const long rss_idle = RssKb();
  const auto start = std::chrono::steady_clock::now();
  auto snap = engine->RecoverSnapshot(
      {.storage_file = file, .id = *Uuid::Parse(id_text), .check_originals = false});
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!snap.ok()) Die("recover", snap.status());
  std::printf(
      "{\"restart\": \"%s\", \"preserved_chunks\": %llu, \"ready_s\": %.3f, "
      "\"storage_used_mib\": %llu, \"rss_before_kib\": %ld, \"rss_idle_kib\": %ld, "
      "\"rss_after_kib\": %ld}\n",
      clean ? "clean" : "crash", preserved, seconds,
      static_cast<unsigned long long>((*snap)->storage_info().used >> 20), rss_before, rss_idle,
      RssKb());
  engine->Destroy((*snap)->id()).IgnoreError();
  unlink(img.c_str());
  return 0;
}
