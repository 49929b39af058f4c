// MemoryEnv: files in a map, for tests that need no disk (see env.h).
//
// State (State, shared with the WritableFiles and StorageFiles handed out, so they may outlive
// the env): files (path -> content), dirs (paths that Stat reports as directories), free_bytes
// (what FreeBytes reports and the budget Reserve draws from), next_ino. A WritableFile appends to
// its map entry directly (there is no page cache to lose: Sync is a no-op). A storage file opened
// in a directory is anonymous (not in the map). OpenDevice makes a memory device of the file's
// current size holding a copy of its map content. Truncate, Reserve and the device's data are
// seen by that StorageFile only: the map keeps the content the file had when opened.
//
// Locking: State::mu guards everything in State; held only for map operations, never across
// device I/O.
#include <algorithm>
#include <map>
#include <set>

#include "blksnap/env.h"
#include "blksnap/io.h"
#include "io/env_path.h"
#include "util/mutex.h"

namespace blksnap {

struct MemoryEnv::State {
  Mutex mu;
  std::map<std::string, std::string> files GUARDED_BY(mu);
  std::map<std::string, uint64_t> inodes GUARDED_BY(mu);
  std::set<std::string> dirs GUARDED_BY(mu);
  uint64_t free_bytes GUARDED_BY(mu) = 1ull << 30;
  uint64_t next_ino GUARDED_BY(mu) = 2;

  bool IsDir(const std::string& path) const REQUIRES(mu) {
    return path == "/" || path == "." || dirs.count(path) != 0;
  }
};

namespace {

constexpr uint64_t kMemoryDev = 0x6d656d;  // "mem": st_dev of every MemoryEnv file

Status NoEntry(const std::string& what, const std::string& path) {
  return Status::Error(ENOENT, what + " " + path + ": no such file");
}

class MemoryWritableFile : public WritableFile {
 public:
  MemoryWritableFile(std::shared_ptr<MemoryEnv::State> state, std::string path)
      : state_(std::move(state)), path_(std::move(path)) {}

  Status Append(std::string_view data) override {
    if (closed_) return Status::Error(EBADF, "write " + path_ + ": closed");
    MutexLock lock(state_->mu);
    auto it = state_->files.find(path_);
    if (it == state_->files.end()) return NoEntry("write", path_);  // removed meanwhile
    it->second.append(data);
    return Status::Ok();
  }
  Status Sync() override {
    if (closed_) return Status::Error(EBADF, "fsync " + path_ + ": closed");
    return Status::Ok();
  }
  Status Close() override {
    closed_ = true;
    return Status::Ok();
  }

 private:
  const std::shared_ptr<MemoryEnv::State> state_;
  const std::string path_;
  bool closed_ = false;
};

class MemoryStorageFile : public StorageFile {
 public:
  // path empty: anonymous (made in a directory).
  MemoryStorageFile(std::shared_ptr<MemoryEnv::State> state, std::string path, FileStat stat,
                    std::string content, bool created)
      : state_(std::move(state)),
        path_(std::move(path)),
        stat_(stat),
        content_(std::move(content)),
        size_(content_.size()),
        created_(created) {}

  const FileStat& stat() const override { return stat_; }
  bool created() const override { return created_; }

  Result<size_t> ReadAt(uint64_t offset, std::span<uint8_t> buf) override {
    if (offset >= size_) return size_t{0};
    const size_t n = std::min<uint64_t>(buf.size(), size_ - offset);
    std::fill_n(buf.data(), n, 0);
    if (offset < content_.size()) {
      std::copy_n(content_.data() + offset, std::min<uint64_t>(n, content_.size() - offset),
                  buf.data());
    }
    return n;
  }

  Status Truncate(uint64_t size) override {
    size_ = size;
    if (content_.size() > size) content_.resize(size);
    return Status::Ok();
  }

  Status Reserve(uint64_t offset, uint64_t length) override {
    MutexLock lock(state_->mu);
    if (length > state_->free_bytes)
      return Status::Error(ENOSPC, "fallocate " + Name() + ": no space left");
    state_->free_bytes -= length;
    size_ = std::max(size_, offset + length);
    return Status::Ok();
  }

  Result<uint64_t> FreeBytes() override {
    MutexLock lock(state_->mu);
    return state_->free_bytes;
  }

  Result<std::shared_ptr<BlockDevice>> OpenDevice() override {
    if (size_ == 0) return Status::Error(EINVAL, "open " + Name() + ": empty file");
    auto device = MakeMemoryDevice(size_);
    // Copy the content in; all-zero 64 KiB pieces are skipped to keep the device sparse.
    constexpr size_t kPiece = 64 << 10;
    for (size_t off = 0; off < content_.size(); off += kPiece) {
      const size_t n = std::min(kPiece, content_.size() - off);
      std::string_view piece(content_.data() + off, n);
      if (piece.find_first_not_of('\0') == std::string_view::npos) continue;
      BLKSNAP_RETURN_IF_ERROR(device->Write(
          off, std::span(reinterpret_cast<const uint8_t*>(piece.data()), piece.size()), 0));
    }
    return device;
  }

 private:
  std::string Name() const { return path_.empty() ? "(unnamed)" : path_; }

  const std::shared_ptr<MemoryEnv::State> state_;
  const std::string path_;
  const FileStat stat_;
  std::string content_;  // the map content at open, cut by Truncate
  uint64_t size_;        // the file's size as this handle sees it (sparse beyond content_)
  const bool created_;
};

}  // namespace

MemoryEnv::MemoryEnv() : state_(std::make_shared<State>()) {}
MemoryEnv::~MemoryEnv() = default;

void MemoryEnv::AddDirectory(const std::string& path) {
  MutexLock lock(state_->mu);
  state_->dirs.insert(path);
}

void MemoryEnv::SetFreeBytes(uint64_t bytes) {
  MutexLock lock(state_->mu);
  state_->free_bytes = bytes;
}

bool MemoryEnv::HasFile(const std::string& path) const {
  MutexLock lock(state_->mu);
  return state_->files.count(path) != 0;
}

Result<std::string> MemoryEnv::ReadFile(const std::string& path, uint64_t max_size) {
  MutexLock lock(state_->mu);
  auto it = state_->files.find(path);
  if (it == state_->files.end()) {
    if (state_->dirs.count(path)) return Status::Error(EISDIR, "read " + path + ": a directory");
    return NoEntry("open", path);
  }
  if (it->second.size() > max_size) {
    return Status::Error(EFBIG,
                         "read " + path + ": larger than " + std::to_string(max_size) + " bytes");
  }
  return it->second;
}

Result<std::unique_ptr<WritableFile>> MemoryEnv::NewWritableFile(const std::string& path) {
  {
    MutexLock lock(state_->mu);
    if (state_->files.count(path) || state_->dirs.count(path))
      return Status::Error(EEXIST, "create " + path + ": file exists");
    if (!state_->IsDir(io::DirName(path))) return NoEntry("create", path);
    state_->files[path];
    state_->inodes[path] = state_->next_ino++;
  }
  return std::unique_ptr<WritableFile>(new MemoryWritableFile(state_, path));
}

Status MemoryEnv::SyncDir(const std::string& dir) {
  MutexLock lock(state_->mu);
  if (!state_->IsDir(dir)) return NoEntry("open directory", dir);
  return Status::Ok();
}

Status MemoryEnv::RemoveFile(const std::string& path) {
  MutexLock lock(state_->mu);
  if (!state_->files.erase(path)) return NoEntry("remove", path);
  state_->inodes.erase(path);
  return Status::Ok();
}

Status MemoryEnv::RenameFile(const std::string& from, const std::string& to) {
  MutexLock lock(state_->mu);
  auto it = state_->files.find(from);
  if (it == state_->files.end()) return NoEntry("rename", from);
  if (from == to) return Status::Ok();
  if (state_->dirs.count(to)) return Status::Error(EISDIR, "rename " + from + " to " + to);
  state_->files[to] = std::move(it->second);
  state_->inodes[to] = state_->inodes[from];
  state_->files.erase(from);
  state_->inodes.erase(from);
  return Status::Ok();
}

Result<FileStat> MemoryEnv::Stat(const std::string& path) {
  MutexLock lock(state_->mu);
  FileStat st;
  st.dev = kMemoryDev;
  if (auto it = state_->files.find(path); it != state_->files.end()) {
    st.exists = true;
    st.kind = FileKind::kRegular;
    st.size = it->second.size();
    st.ino = state_->inodes[path];
  } else if (state_->IsDir(path)) {
    st.exists = true;
    st.kind = FileKind::kDirectory;
    st.ino = 1;
  } else {
    return FileStat{};
  }
  return st;
}

Result<std::shared_ptr<BlockDevice>> MemoryEnv::OpenDevice(const std::string& path,
                                                           const FileOpenOptions&) {
  std::string content;
  {
    MutexLock lock(state_->mu);
    auto it = state_->files.find(path);
    if (it == state_->files.end()) return NoEntry("open", path);
    content = it->second;
  }
  if (content.empty()) return Status::Error(EINVAL, "open " + path + ": an empty file");
  auto device = MakeMemoryDevice((content.size() + 511) / 512 * 512);
  content.resize((content.size() + 511) / 512 * 512, '\0');
  BLKSNAP_RETURN_IF_ERROR(device->Write(
      0, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(content.data()), content.size()),
      0));
  return device;
}

Result<std::unique_ptr<StorageFile>> MemoryEnv::OpenStorageFile(const std::string& path,
                                                                const StorageFileOptions&) {
  BLKSNAP_ASSIGN_OR_RETURN(FileStat st, Stat(path));
  std::string name = path;
  std::string content;
  bool created = false;
  if (st.kind == FileKind::kDirectory) {
    name.clear();
    MutexLock lock(state_->mu);
    st = FileStat{true, FileKind::kRegular, 0, kMemoryDev, state_->next_ino++, 0};
  } else {
    MutexLock lock(state_->mu);
    if (!st.exists) {
      if (!state_->IsDir(io::DirName(path))) {
        return Status::Error(
            ENOENT, "storage " + path + ": directory " + io::DirName(path) + " does not exist");
      }
      created = true;
      state_->files[path];
      st = FileStat{true, FileKind::kRegular, 0, kMemoryDev, state_->next_ino++, 0};
      state_->inodes[path] = st.ino;
    }
    content = state_->files[path];
  }
  return std::unique_ptr<StorageFile>(
      new MemoryStorageFile(state_, std::move(name), st, std::move(content), created));
}

}  // namespace blksnap
