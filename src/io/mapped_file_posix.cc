// PosixMappedFiles: state files mapped with mmap(MAP_SHARED) (see blksnap/mapped_file.h).
//
// Open maps the file at its current size; Create truncates it to zero, sizes it (ftruncate: a
// sparse file reading as zeroes), fsyncs the file and its directory (so the name survives a
// power cut) and maps it. Sync is msync(MS_SYNC) of the whole mapping plus fsync (the size and
// any metadata); SyncRange is msync(MS_SYNC) of the range alone. The descriptor stays open with the
// mapping. No state beyond the descriptor and the mapping, no locking: the kernel orders concurrent
// stores and msync.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

#include "blksnap/mapped_file.h"
#include "util/fd.h"

namespace blksnap {
namespace {

class PosixMappedFile final : public MappedFile {
 public:
  PosixMappedFile(Fd fd, uint8_t* data, uint64_t size)
      : fd_(std::move(fd)), data_(data), size_(size) {}
  PosixMappedFile(const PosixMappedFile&) = delete;
  PosixMappedFile& operator=(const PosixMappedFile&) = delete;
  ~PosixMappedFile() override {
    if (data_) ::munmap(data_, size_);
  }

  uint8_t* data() override { return data_; }
  uint64_t size() const override { return size_; }
  Status Sync() override {
    if (data_ && ::msync(data_, size_, MS_SYNC) != 0) return Status::FromErrno("msync");
    if (::fsync(fd_.get()) != 0) return Status::FromErrno("fsync");
    return Status::Ok();
  }
  // msync(MS_SYNC) of a range writes that range's dirty pages and waits for them
  // (vfs_fsync_range with datasync): no fsync, which would write every dirty page of the file.
  Status SyncRange(uint64_t offset, uint64_t length) override {
    if (!data_ || length == 0) return Status::Ok();
    if (offset > size_ || length > size_ - offset)
      return Status::Error(EINVAL, "sync range beyond the mapping");
    const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    const uint64_t start = offset / page * page;
    if (::msync(data_ + start, offset + length - start, MS_SYNC) != 0)
      return Status::FromErrno("msync");
    return Status::Ok();
  }

 private:
  Fd fd_;
  uint8_t* data_;
  uint64_t size_;
};

Result<std::unique_ptr<MappedFile>> Map(Fd fd, const std::string& path) {
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return Status::FromErrno("fstat " + path);
  if (!S_ISREG(st.st_mode)) return Status::Error(EINVAL, path + " is not a regular file");
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  uint8_t* data = nullptr;
  if (size > 0) {
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
    if (p == MAP_FAILED) return Status::FromErrno("mmap " + path);
    data = static_cast<uint8_t*>(p);
  }
  return std::unique_ptr<MappedFile>(new PosixMappedFile(std::move(fd), data, size));
}

Status SyncDirectory(const std::string& path) {
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "."
                          : slash == 0               ? "/"
                                                     : path.substr(0, slash);
  Fd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return Status::FromErrno("open " + dir);
  if (::fsync(fd.get()) != 0) return Status::FromErrno("fsync " + dir);
  return Status::Ok();
}

class PosixFiles final : public MappedFiles {
 public:
  Result<std::unique_ptr<MappedFile>> Open(const std::string& path) override {
    Fd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW));
    if (!fd.valid()) return Status::FromErrno("open " + path);
    return Map(std::move(fd), path);
  }

  Result<std::unique_ptr<MappedFile>> Create(const std::string& path, uint64_t size) override {
    if (size == 0) return Status::Error(EINVAL, "a mapped file needs a size");
    Fd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (!fd.valid()) return Status::FromErrno("create " + path);
    if (::ftruncate(fd.get(), 0) != 0 || ::ftruncate(fd.get(), static_cast<off_t>(size)) != 0)
      return Status::FromErrno("ftruncate " + path);
    if (::fsync(fd.get()) != 0) return Status::FromErrno("fsync " + path);
    BLKSNAP_RETURN_IF_ERROR(SyncDirectory(path));
    return Map(std::move(fd), path);
  }

  Status Remove(const std::string& path) override {
    if (::unlink(path.c_str()) != 0) return Status::FromErrno("unlink " + path);
    return SyncDirectory(path);
  }

  explicit PosixFiles(std::string boot_id_path) : boot_id_path_(std::move(boot_id_path)) {}

  std::string BootId() override {
    std::ifstream in(boot_id_path_);
    std::string id;
    std::getline(in, id);
    return id;  // empty if unreadable: every restart then counts as a reboot (safe side)
  }

 private:
  const std::string boot_id_path_;
};

}  // namespace

std::shared_ptr<MappedFiles> PosixMappedFiles() {
  static const std::shared_ptr<MappedFiles> files =
      std::make_shared<PosixFiles>("/proc/sys/kernel/random/boot_id");
  return files;
}

std::shared_ptr<MappedFiles> PosixMappedFiles(const std::string& boot_id_path) {
  return std::make_shared<PosixFiles>(boot_id_path);
}

}  // namespace blksnap
