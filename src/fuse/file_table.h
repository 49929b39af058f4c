// FileTable: the files of a fuse::Mount: names -> inode numbers -> BlockDevices, open handles.
//
// It knows nothing of FUSE itself (fuse_ops.cc turns requests into calls on it), so its rules
// read in one place:
// - Names: no '/', not "." or "..", at most NAME_MAX bytes; each name at most once.
// - Inodes: 1 is the mount's root directory; each Add takes a fresh number from 2 up, never
//   reused, so a kernel inode or handle left over from a removed file can never reach a newer
//   device.
// - Remove drops the name and the inode at once and the entry's device reference; handles that
//   are still open keep their FileEntry, whose Device() is then null (I/O fails with ENODEV).
// - Handles: Open() allocates one (owned by the table until Release()), counts it on its entry
//   (IsOpen), and Clear() frees those the kernel never released.
//
// Locking: FileTable::mutex_ guards the maps, the handle set and the inode counter; each
// FileEntry's mutex_ guards its device pointer only. Requests copy the shared_ptr under that
// mutex and do device I/O with no lock held. The two are never held together.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "blksnap/block_device.h"
#include "blksnap/status.h"
#include "util/mutex.h"

namespace blksnap::fuse {

inline constexpr uint64_t kRootIno = 1;  // FUSE_ROOT_ID

class FileEntry {
 public:
  FileEntry(std::string name, uint64_t ino, uint64_t size, bool read_only,
            std::shared_ptr<BlockDevice> device)
      : name(std::move(name)),
        ino(ino),
        size(size),
        read_only(read_only),
        device_(std::move(device)) {}

  const std::string name;
  const uint64_t ino;
  const uint64_t size;
  const bool read_only;
  std::atomic<int> open_count{0};

  // The device, or null once the file was removed (or the mount stopped).
  std::shared_ptr<BlockDevice> Device() const EXCLUDES(mutex_);
  // Lets go of the device (its last reference may go away here, outside the lock).
  void Drop() EXCLUDES(mutex_);

 private:
  mutable Mutex mutex_;
  std::shared_ptr<BlockDevice> device_ GUARDED_BY(mutex_);
};

// What an open file handle (fuse_file_info::fh) points to.
struct Handle {
  std::shared_ptr<FileEntry> entry;
  bool fua = false;  // opened O_SYNC/O_DSYNC: every write is FUA
};

class FileTable {
 public:
  FileTable() = default;
  FileTable(const FileTable&) = delete;
  FileTable& operator=(const FileTable&) = delete;
  ~FileTable() { Clear(); }

  // EINVAL for a bad name or a missing/zero-sized device, EEXIST if the name is taken. A device
  // that reports itself read-only makes a read-only file.
  Status Add(const std::string& name, std::shared_ptr<BlockDevice> device, bool read_only)
      EXCLUDES(mutex_);
  // ENOENT if unknown. The entry's device is dropped.
  Status Remove(const std::string& name) EXCLUDES(mutex_);
  bool IsOpen(const std::string& name) const EXCLUDES(mutex_);

  std::shared_ptr<FileEntry> FindIno(uint64_t ino) const EXCLUDES(mutex_);
  std::shared_ptr<FileEntry> FindName(const std::string& name) const EXCLUDES(mutex_);
  // Every file, in name order.
  std::vector<std::shared_ptr<FileEntry>> List() const EXCLUDES(mutex_);

  // A new handle on entry (owned by the table), counted in entry->open_count until
  // Release(handle).
  Handle* Open(std::shared_ptr<FileEntry> entry, bool fua) EXCLUDES(mutex_);
  void Release(Handle* handle) EXCLUDES(mutex_);

  // Drops every device and name and frees the handles never released (the kernel connection is
  // gone). The table stays usable.
  void Clear() EXCLUDES(mutex_);

 private:
  mutable Mutex mutex_;
  std::map<std::string, std::shared_ptr<FileEntry>> by_name_ GUARDED_BY(mutex_);
  std::map<uint64_t, std::shared_ptr<FileEntry>> by_ino_ GUARDED_BY(mutex_);
  // Open handles, not yet released; the key is what fuse_file_info::fh carries.
  std::map<const Handle*, std::unique_ptr<Handle>> handles_ GUARDED_BY(mutex_);
  uint64_t next_ino_ GUARDED_BY(mutex_) = kRootIno + 1;
};

}  // namespace blksnap::fuse
