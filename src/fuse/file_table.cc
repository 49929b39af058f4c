// FileTable: names -> devices, inode numbers and open handles of a fuse::Mount.
//
// Design notes: see file_table.h (rules, locking). Every method takes mutex_ for its lookups
// only; a device reference that must go away (Remove, Clear) is dropped after mutex_ is
// released, so a device's destructor never runs under the table's lock.
#include "fuse/file_table.h"

#include <climits>
#include <utility>

namespace blksnap::fuse {
namespace {

bool ValidName(const std::string& name) {
  return !name.empty() && name.size() <= NAME_MAX && name != "." && name != ".." &&
         name.find('/') == std::string::npos && name.find('\0') == std::string::npos;
}

}  // namespace

std::shared_ptr<BlockDevice> FileEntry::Device() const {
  MutexLock lock(mutex_);
  return device_;
}

void FileEntry::Drop() {
  std::shared_ptr<BlockDevice> old;
  MutexLock lock(mutex_);
  old.swap(device_);
}

Status FileTable::Add(const std::string& name, std::shared_ptr<BlockDevice> device,
                      bool read_only) {
  if (!ValidName(name)) return Status::Error(EINVAL, "bad FUSE file name '" + name + "'");
  if (device == nullptr || device->size() == 0)
    return Status::Error(EINVAL, "no device or zero-sized device for " + name);
  read_only = read_only || device->capabilities().read_only;
  MutexLock lock(mutex_);
  if (by_name_.count(name) != 0) return Status::Error(EEXIST, "FUSE file exists: " + name);
  auto entry =
      std::make_shared<FileEntry>(name, next_ino_++, device->size(), read_only, std::move(device));
  by_name_[name] = entry;
  by_ino_[entry->ino] = entry;
  return Status::Ok();
}

Status FileTable::Remove(const std::string& name) {
  std::shared_ptr<FileEntry> entry;
  {
    MutexLock lock(mutex_);
    auto it = by_name_.find(name);
    if (it == by_name_.end()) return Status::Error(ENOENT, "no FUSE file " + name);
    entry = it->second;
    by_name_.erase(it);
    by_ino_.erase(entry->ino);
  }
  entry->Drop();
  return Status::Ok();
}

bool FileTable::IsOpen(const std::string& name) const {
  MutexLock lock(mutex_);
  auto it = by_name_.find(name);
  return it != by_name_.end() && it->second->open_count.load() > 0;
}

std::shared_ptr<FileEntry> FileTable::FindIno(uint64_t ino) const {
  MutexLock lock(mutex_);
  auto it = by_ino_.find(ino);
  return it == by_ino_.end() ? nullptr : it->second;
}

std::shared_ptr<FileEntry> FileTable::FindName(const std::string& name) const {
  MutexLock lock(mutex_);
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second;
}

std::vector<std::shared_ptr<FileEntry>> FileTable::List() const {
  std::vector<std::shared_ptr<FileEntry>> entries;
  MutexLock lock(mutex_);
  entries.reserve(by_name_.size());
  for (const auto& [name, entry] : by_name_) entries.push_back(entry);
  return entries;
}

Handle* FileTable::Open(std::shared_ptr<FileEntry> entry, bool fua) {
  entry->open_count.fetch_add(1);
  auto handle = std::make_unique<Handle>(Handle{std::move(entry), fua});
  Handle* raw = handle.get();
  MutexLock lock(mutex_);
  handles_.emplace(raw, std::move(handle));
  return raw;
}

void FileTable::Release(Handle* handle) {
  std::unique_ptr<Handle> owned;  // freed after the lock is released
  MutexLock lock(mutex_);
  auto it = handles_.find(handle);
  if (it == handles_.end()) return;  // freed by Clear() already
  owned = std::move(it->second);
  handles_.erase(it);
  owned->entry->open_count.fetch_sub(1);
}

void FileTable::Clear() {
  std::map<uint64_t, std::shared_ptr<FileEntry>> entries;
  std::map<const Handle*, std::unique_ptr<Handle>> handles;  // freed outside the lock
  {
    MutexLock lock(mutex_);
    entries.swap(by_ino_);
    by_name_.clear();
    handles.swap(handles_);
  }
  for (auto& [ino, entry] : entries) entry->Drop();
}

}  // namespace blksnap::fuse
