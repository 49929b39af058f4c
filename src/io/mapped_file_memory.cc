// MemoryMappedFiles: mapped files in memory, for power-cut and kill -9 tests (see
// blksnap/mapped_file.h).
//
// State (shared with every MemoryMappedFile handed out, so files outlive both the mapping
// objects and the MappedFiles object): path -> File. A File holds `live` (what a mapping sees:
// the page cache) and `synced` (what the disk holds: copied from live at each Sync()). A mapping
// keeps its File alive; Create of an existing name makes a new File (the old mapping keeps the
// old one, as after unlink). DropUnsynced rewrites live from synced page by page.
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
};

}  // namespace

struct MemoryMappedFiles::State {
  Mutex mu;
  std::map<std::string, std::shared_ptr<File>> files GUARDED_BY(mu);
  std::string boot_id GUARDED_BY(mu) = "memory-boot-1";
  uint64_t syncs GUARDED_BY(mu) = 0;
};

namespace {

class MemoryMappedFile final : public MappedFile {
 public:
  MemoryMappedFile(std::shared_ptr<MemoryMappedFiles::State> state, std::shared_ptr<File> file)
      : state_(std::move(state)), file_(std::move(file)) {}
  uint8_t* data() override { return file_->live.empty() ? nullptr : file_->live.data(); }
  uint64_t size() const override { return file_->live.size(); }
  Status Sync() override {
    MutexLock lock(state_->mu);
    file_->synced.resize(file_->live.size());
    for (size_t i = 0; i < file_->live.size(); ++i)
      file_->synced[i] = std::atomic_ref<uint8_t>(file_->live[i]).load(std::memory_order_relaxed);
    file_->ever_synced = true;
    ++state_->syncs;
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
  auto file = std::make_shared<File>();
  file->live.assign(size, 0);
  file->synced = file->live;  // Create makes size and name durable
  file->ever_synced = true;
  state_->files[path] = file;
  return std::unique_ptr<MappedFile>(new MemoryMappedFile(state_, file));
}

Status MemoryMappedFiles::Remove(const std::string& path) {
  MutexLock lock(state_->mu);
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
    if (f.live.size() != f.synced.size()) f.live.resize(f.synced.size());
    for (uint64_t page = 0; page < f.live.size(); page += kPage) {
      if (seed != 0 && random() % 2) continue;  // written back before the cut
      const uint64_t end = std::min<uint64_t>(page + kPage, f.live.size());
      std::copy(f.synced.begin() + page, f.synced.begin() + end, f.live.begin() + page);
    }
    f.synced = f.live;
    ++it;
  }
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
