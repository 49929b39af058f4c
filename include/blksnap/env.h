// Env: the seam for every file operation outside the data path (LevelDB's Env).
//
// The data path already goes through BlockDevice (io.h). Env covers the rest of what blksnap
// persists or opens: small state files (the daemon's devices.json, written atomically) and the
// difference storage's file (created, sized, reserved with fallocate, measured with statvfs,
// then opened as a BlockDevice). Tests swap the Env to fail any of those steps:
//
//   Env::Default()  POSIX (src/io/env_posix.cc); one process-wide instance, never destroyed.
//   FaultEnv        wraps another Env; fails the Nth open/write/sync/rename/remove/truncate/
//                   reserve with an errno, or runs out of space; wraps every storage device it
//                   opens in a FaultDevice so the storage's data writes can fail too.
//   MemoryEnv       files in a map (no disk); storage files are memory devices.
//
// Shape. Env's virtual methods are primitives (one system call's worth each); the composite
// WriteFileAtomic is built from them in the base class, so a FaultEnv that fails the Nth sync
// fails it inside the atomic replace of any Env:
//
//   WriteFileAtomic(path, data):
//     RemoveFile(path.tmp) (ENOENT ignored: a stale temp from a crash)
//     NewWritableFile(path.tmp)  O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600: never follows or reuses a
//                                file someone else put there
//     Append(data), Sync(), Close()
//     RenameFile(path.tmp, path) then SyncDir(dirname(path))
//   On any failure before the rename the temp is removed and `path` keeps its old content.
//
// The difference storage (OpenStorageFile): a path naming a directory gets an unnamed temporary
// file in it (O_TMPFILE, gone when closed); a regular file is opened as is; a missing path is
// created (O_EXCL, mode 0600; created() says so, so the storage can remove it again) only if its
// parent directory exists (ENOENT naming the directory otherwise); a block device is opened
// read-only for probing. Opening never writes, truncates or claims anything. The StorageFile then
// answers stat() (what was opened), ReadAt (buffered, for checking an existing header or a
// file-system signature), FreeBytes (statvfs), Truncate and Reserve (fallocate) for files, and
// OpenDevice(): the data-path BlockDevice at the file's current size, O_DIRECT when asked, falling
// back to buffered I/O for regular files on a file system that refuses O_DIRECT (EINVAL: tmpfs
// before Linux 6.6), and O_EXCL on a block device when asked (EBUSY if mounted).
//
// SysfsRoot(): where the block topology (util/block_topology.h) is read from: "/sys" for the POSIX
// Env, "" (nothing to resolve) for MemoryEnv.
//
// Errors: every method returns Status/Result with an errno and a one-line message naming the
// operation and path; nothing throws. Thread safety: Env::Default() and MemoryEnv/FaultEnv are
// safe to call from any thread; a WritableFile or StorageFile is used by one owner at a time,
// except that a StorageFile's Reserve may run on another thread than its creator.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "blksnap/block_device.h"
#include "blksnap/io.h"
#include "blksnap/status.h"

namespace blksnap {

class FaultDevice;  // io.h

enum class FileKind { kMissing, kRegular, kDirectory, kBlockDevice, kOther };

struct FileStat {
  bool exists = false;  // false: kind is kMissing and the rest is zero
  FileKind kind = FileKind::kMissing;
  uint64_t size = 0;  // regular files: bytes
  uint64_t dev = 0;   // the device of the file system holding it
  uint64_t ino = 0;
  uint64_t rdev = 0;  // block devices: their device number
};

// A file being written from its start (see Env::NewWritableFile). Close() is implied by the
// destructor (errors then ignored).
class WritableFile {
 public:
  virtual ~WritableFile() = default;
  virtual Status Append(std::string_view data) = 0;
  virtual Status Sync() = 0;  // fsync
  virtual Status Close() = 0;
};

struct StorageFileOptions {
  bool direct = true;  // OpenDevice with O_DIRECT (regular files fall back to buffered on EINVAL)
  bool exclusive = false;  // OpenDevice of a block device with O_EXCL (FileOpenOptions::exclusive)
};

// An opened difference-storage file or block device (see Env::OpenStorageFile).
class StorageFile {
 public:
  virtual ~StorageFile() = default;
  // What was opened, as of the open. An unnamed temporary file is kRegular.
  virtual const FileStat& stat() const = 0;
  // True if this open created the named file (the path did not exist before).
  virtual bool created() const { return false; }
  // Reads up to buf.size() bytes at offset (buffered; block devices too); fewer at end of file.
  virtual Result<size_t> ReadAt(uint64_t offset, std::span<uint8_t> buf) = 0;
  // Regular files only (EINVAL otherwise): set the size (sparse), reserve space (fallocate).
  virtual Status Truncate(uint64_t size) = 0;
  virtual Status Reserve(uint64_t offset, uint64_t length) = 0;
  // Bytes an unprivileged writer may still allocate on the file system holding the file.
  virtual Result<uint64_t> FreeBytes() = 0;
  // The data path over the file at its current size (call after Truncate). Each call opens a new
  // device; the StorageFile may be dropped while the device lives.
  virtual Result<std::shared_ptr<BlockDevice>> OpenDevice() = 0;
};

class Env {
 public:
  // ReadFile refuses files larger than this (EFBIG) unless told otherwise.
  static constexpr uint64_t kMaxReadFileSize = 64ull << 20;

  virtual ~Env() = default;

  // The POSIX Env; lives for the whole process.
  static Env* Default();

  // The whole file; ENOENT when missing, EFBIG when larger than max_size.
  virtual Result<std::string> ReadFile(const std::string& path,
                                       uint64_t max_size = kMaxReadFileSize) = 0;
  // A new file, created exclusively (EEXIST if anything, even a dangling symlink, is at path),
  // mode 0600.
  virtual Result<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path) = 0;
  virtual Status SyncDir(const std::string& dir) = 0;  // fsync of a directory
  virtual Status RemoveFile(const std::string& path) = 0;
  virtual Status RenameFile(const std::string& from, const std::string& to) = 0;
  // Follows a final symlink (stat(2)). A missing path is not an error: exists = false.
  virtual Result<FileStat> Stat(const std::string& path) = 0;
  virtual Result<std::unique_ptr<StorageFile>> OpenStorageFile(
      const std::string& path, const StorageFileOptions& options = {}) = 0;
  // An existing regular file or block device as a BlockDevice: the original of a tracked
  // device (never created or truncated; options as for OpenFileDevice in io.h).
  virtual Result<std::shared_ptr<BlockDevice>> OpenDevice(const std::string& path,
                                                          const FileOpenOptions& options) = 0;
  // The sysfs root for block-topology lookups; "" when there is none to look at.
  virtual std::string SysfsRoot() const { return "/sys"; }

  // Replaces path with data atomically and durably (see the top of this file). Never leaves a
  // half-written path: on failure the old content (or absence) stays.
  Status WriteFileAtomic(const std::string& path, std::string_view data);
};

// Forwards every call to another Env; subclasses override what they change.
class EnvWrapper : public Env {
 public:
  explicit EnvWrapper(Env* target) : target_(target) {}
  Env* target() const { return target_; }

  Result<std::string> ReadFile(const std::string& path, uint64_t max_size) override {
    return target_->ReadFile(path, max_size);
  }
  Result<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path) override {
    return target_->NewWritableFile(path);
  }
  Status SyncDir(const std::string& dir) override { return target_->SyncDir(dir); }
  Status RemoveFile(const std::string& path) override { return target_->RemoveFile(path); }
  Status RenameFile(const std::string& from, const std::string& to) override {
    return target_->RenameFile(from, to);
  }
  Result<FileStat> Stat(const std::string& path) override { return target_->Stat(path); }
  Result<std::unique_ptr<StorageFile>> OpenStorageFile(const std::string& path,
                                                       const StorageFileOptions& options) override {
    return target_->OpenStorageFile(path, options);
  }
  Result<std::shared_ptr<BlockDevice>> OpenDevice(const std::string& path,
                                                  const FileOpenOptions& options) override {
    return target_->OpenDevice(path, options);
  }
  std::string SysfsRoot() const override { return target_->SysfsRoot(); }

 private:
  Env* target_;
};

// Files in memory: a map from path to content, plus a set of directories (AddDirectory; "/" and
// "." always exist). A file can be created only in one of those directories (else ENOENT);
// directories are not nested: AddDirectory("/a/b") needs no "/a". Storage files are memory devices
// holding a copy of the file's content at OpenDevice; their data is not written back to the map.
class MemoryEnv : public Env {
 public:
  MemoryEnv();
  ~MemoryEnv() override;

  void AddDirectory(const std::string& path);
  // FreeBytes() of every storage file, and the limit on Reserve (default 1 GiB).
  void SetFreeBytes(uint64_t bytes);
  bool HasFile(const std::string& path) const;

  Result<std::string> ReadFile(const std::string& path, uint64_t max_size) override;
  Result<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path) override;
  Status SyncDir(const std::string& dir) override;
  Status RemoveFile(const std::string& path) override;
  Status RenameFile(const std::string& from, const std::string& to) override;
  Result<FileStat> Stat(const std::string& path) override;
  Result<std::unique_ptr<StorageFile>> OpenStorageFile(const std::string& path,
                                                       const StorageFileOptions& options) override;
  // A memory device holding a copy of the file (rounded up to 512 bytes); writes stay in it.
  Result<std::shared_ptr<BlockDevice>> OpenDevice(const std::string& path,
                                                  const FileOpenOptions& options) override;
  std::string SysfsRoot() const override { return ""; }

  struct State;  // shared with the files it hands out

 private:
  std::shared_ptr<State> state_;
};

// Fault injection over another Env. Each kind of operation has a call counter; FailNth(op, n)
// makes the nth next call of that kind fail with errnum (one-shot; 0 disarms). A failed call
// does nothing below. Counters count calls made after the setting.
//   kOpen     NewWritableFile, ReadFile, OpenStorageFile, StorageFile::OpenDevice
//   kWrite    WritableFile::Append
//   kSync     WritableFile::Sync, SyncDir
//   kRename   RenameFile
//   kRemove   RemoveFile
//   kTruncate StorageFile::Truncate
//   kReserve  StorageFile::Reserve
class FaultEnv : public EnvWrapper {
 public:
  enum class Op { kOpen, kWrite, kSync, kRename, kRemove, kTruncate, kReserve };
  static constexpr int kOpCount = 7;

  explicit FaultEnv(Env* target);
  ~FaultEnv() override;

  void FailNth(Op op, uint64_t nth, int errnum = EIO);
  // Every call of that kind fails with errnum from now on (0 = stop).
  void FailAll(Op op, int errnum);
  // Appends and Reserves fail with ENOSPC once this many more bytes have been written or
  // reserved (a call larger than what is left fails whole and consumes nothing).
  void NoSpaceAfter(uint64_t bytes);
  void Reset();                 // clears every fault (not the counters)
  uint64_t calls(Op op) const;  // since construction, failed ones included

  // The FaultDevice over the last device a StorageFile::OpenDevice returned (null before).
  std::shared_ptr<FaultDevice> last_storage_device() const;
  // Called with each new storage FaultDevice before it is returned, to arm its faults (null:
  // none). Called without FaultEnv's lock held.
  void OnStorageDevice(std::function<void(FaultDevice&)> setup);

  Result<std::string> ReadFile(const std::string& path, uint64_t max_size) override;
  Result<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path) override;
  Status SyncDir(const std::string& dir) override;
  Status RemoveFile(const std::string& path) override;
  Status RenameFile(const std::string& from, const std::string& to) override;
  Result<std::unique_ptr<StorageFile>> OpenStorageFile(const std::string& path,
                                                       const StorageFileOptions& options) override;

  struct State;  // shared with the files it hands out

 private:
  std::shared_ptr<State> state_;
};

}  // namespace blksnap
