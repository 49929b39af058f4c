// MemoryMappedFiles: mapped files in memory, for power-cut and kill -9 tests (see
// blksnap/mapped_file.h).
//
// State (shared with every MemoryMappedFile handed out, so files outlive both the mapping
// objects and the MappedFiles object): path -> File. A File holds `live` (what a mapping sees:
// the page cache) and `synced` (what the disk holds: copied from live at each Sync()). A mapping
// keeps its File alive; Create of an existing name makes a new File (the old mapping keeps the
// old one, as after unlink). DropUnsynced rewrites live from synced page by page. A
// CutPowerAtSync cut copies every live file into at_cut at the moment it happens: stores made
// after it (the test's code goes on) never reach the disk, and Create/Remove fail with EIO.
//
// Locking: State::mu guards the map, the boot id and the counters, and each File's synced copy.
// The live bytes are the mapping: callers store into them without a lock (as into a real
// mapping); Sync reads them byte by byte with relaxed atomic loads.
#include <algorithm>
#include <atomic>
#include <map>
#include <random>

#include "blksnap/mapped_file.h"
#include "util/mutex.h"

namespace blksnap {
namespace {

constexpr uint64_t kPage = 4096;

struct File {
  std::vector<uint8_t> live;
  std::vector<uint8_t> synced;
  bool ever_synced = false;
  std::vector<uint8_t> at_cut;  // live at the moment of a CutPowerAtSync cut
  bool cut = false;
};

}  // namespace

struct MemoryMappedFiles::State {
  Mutex mu;
  std::map<std::string, std::shared_ptr<File>> files GUARDED_BY(mu);
  std::string boot_id GUARDED_BY(mu) = "memory-boot-1";
  uint64_t syncs GUARDED_BY(mu) = 0;
  uint64_t cut_at GUARDED_BY(mu) = 0;   // the sync number that finds the power cut; 0 = none
  uint64_t failing GUARDED_BY(mu) = 0;  // syncs still to fail with EIO (FailNextSyncs)
  bool cut GUARDED_BY(mu) = false;

  // Counts a sync; false if the power is (now) cut and it must persist nothing.
  bool CountSync() REQUIRES(mu) {
    ++syncs;
    if (cut_at != 0 && syncs >= cut_at && !cut) {
      cut = true;  // what the page cache holds now is all a write-back could have taken
      for (auto& [path, f] : files) {
        f->at_cut.resize(f->live.size());
        for (size_t i = 0; i < f->live.size(); ++i)
          f->at_cut[i] = std::atomic_ref<uint8_t>(f->live[i]).load(std::memory_order_relaxed);
        f->cut = true;
      }
    }
    return !cut;
  }
};

namespace {

class MemoryMappedFile final : public MappedFile {
 public:
  MemoryMappedFile(std::shared_ptr<MemoryMappedFiles::State> state, std::shared_ptr<File> file)
      : state_(std::move(state)), file_(std::move(file)) {}
  uint8_t* data() override { return file_->live.empty() ? nullptr : file_->live.data(); }
  uint64_t size() const override { return file_->live.size(); }
  Status Sync() override { return SyncRange(0, file_->live.size()); }
  Status SyncRange(uint64_t offset, uint64_t length) override {
    MutexLock lock(state_->mu);
    if (!state_->CountSync()) return Status::Error(EIO, "the power is cut");
    if (state_->failing > 0) {
      --state_->failing;
      return Status::Error(EIO, "sync: injected I/O error");
    }
    if (offset > file_->live.size() || length > file_->live.size() - offset)
      return Status::Error(EINVAL, "sync range beyond the mapping");
    file_->synced.resize(file_->live.size());
    const uint64_t start = offset / kPage * kPage;
    const uint64_t end =
        std::min<uint64_t>((offset + length + kPage - 1) / kPage * kPage, file_->live.size());
    for (uint64_t i = start; i < end; ++i)
      file_->synced[i] = std::atomic_ref<uint8_t>(file_->live[i]).load(std::memory_order_relaxed);
    file_->ever_synced = true;
    return Status::Ok();
  }

 private:
  const std::shared_ptr<MemoryMappedFiles::State> state_;
  const std::shared_ptr<File> file_;
};

}  // namespace

MemoryMappedFiles::MemoryMappedFiles() : state_(std::make_shared<State>()) {}
MemoryMappedFiles::~MemoryMappedFiles() = default;

Result<std::unique_ptr<MappedFile>> MemoryMappedFiles::Open(const std::string& path) {
  MutexLock lock(state_->mu);
  auto it = state_->files.find(path);
  if (it == state_->files.end()) return Status::Error(ENOENT, "open " + path + ": no such file");
  return std::unique_ptr<MappedFile>(new MemoryMappedFile(state_, it->second));
}

Result<std::unique_ptr<MappedFile>> MemoryMappedFiles::Create(const std::string& path,
                                                              uint64_t size) {
  if (size == 0) return Status::Error(EINVAL, "a mapped file needs a size");
  MutexLock lock(state_->mu);
  if (state_->cut) return Status::Error(EIO, "the power is cut");
  auto file = std::make_shared<File>();
  file->live.assign(size, 0);
  file->synced = file->live;  // Create makes size and name durable
  file->ever_synced = true;
  state_->files[path] = file;
  return std::unique_ptr<MappedFile>(new MemoryMappedFile(state_, file));
}

Status MemoryMappedFiles::Remove(const std::string& path) {
  MutexLock lock(state_->mu);
  if (state_->cut) return Status::Error(EIO, "the power is cut");
  if (state_->files.erase(path) == 0)
    return Status::Error(ENOENT, "unlink " + path + ": no such file");
  return Status::Ok();
}

std::string MemoryMappedFiles::BootId() {
  MutexLock lock(state_->mu);
  return state_->boot_id;
}

void MemoryMappedFiles::DropUnsynced(uint64_t seed) {
  MutexLock lock(state_->mu);
  std::mt19937_64 random(seed);
  for (auto it = state_->files.begin(); it != state_->files.end();) {
    File& f = *it->second;
    if (!f.ever_synced) {
      it = state_->files.erase(it);
      continue;
    }
    if (f.cut) f.live = std::move(f.at_cut);  // stores after the cut never happened
    f.at_cut.clear();
    f.cut = false;
    if (f.live.size() != f.synced.size()) f.live.resize(f.synced.size());
    for (uint64_t page = 0; page < f.live.size(); page += kPage) {
      if (seed != 0 && random() % 2) continue;  // written back before the cut
      const uint64_t end = std::min<uint64_t>(page + kPage, f.live.size());
      std::copy(f.synced.begin() + page, f.synced.begin() + end, f.live.begin() + page);
    }
    f.synced = f.live;
    ++it;
  }
  state_->cut_at = 0;
  state_->cut = false;
}

void MemoryMappedFiles::CutPowerAtSync(uint64_t n) {
  MutexLock lock(state_->mu);
  state_->cut_at = n == 0 ? 0 : state_->syncs + n;
  state_->cut = false;
}

void MemoryMappedFiles::FailNextSyncs(uint64_t n) {
  MutexLock lock(state_->mu);
  state_->failing = n;
}

bool MemoryMappedFiles::power_cut() const {
  MutexLock lock(state_->mu);
  return state_->cut;
}

void MemoryMappedFiles::set_boot_id(std::string boot_id) {
  MutexLock lock(state_->mu);
  state_->boot_id = std::move(boot_id);
}

std::vector<uint8_t> MemoryMappedFiles::Contents(const std::string& path) {
  MutexLock lock(state_->mu);
  auto it = state_->files.find(path);
  return it == state_->files.end() ? std::vector<uint8_t>{} : it->second->live;
}

void MemoryMappedFiles::SetContents(const std::string& path, std::vector<uint8_t> bytes) {
  MutexLock lock(state_->mu);
  auto file = std::make_shared<File>();
  file->live = std::move(bytes);
  file->synced = file->live;
  file->ever_synced = true;
  state_->files[path] = file;
}

uint64_t MemoryMappedFiles::syncs() const {
  MutexLock lock(state_->mu);
  return state_->syncs;
}

}  // namespace blksnap
