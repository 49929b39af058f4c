// PosixEnv: Env::Default(), the Env over Linux system calls (see env.h).
//
// Every call is one or a few system calls on its own file descriptor; EINTR is retried. The
// storage file keeps its descriptor (PosixStorageFile::fd_) for ReadAt, Truncate, Reserve and
// FreeBytes, and OpenDevice reopens it through OpenFileDevice (io.h): by path for a named file or
// block device, through /proc/self/fd for an unnamed temporary file (the only name it has). Block
// devices keep a read-only, non-exclusive descriptor for ReadAt (probing for signatures); the
// exclusive claim (O_EXCL) is OpenDevice's, after the caller's checks passed.
//
// State: none shared; Env::Default() is a function-local static never destroyed, so it stays
// valid in destructors of other statics. Thread safety: no locks needed.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <utility>

#include "blksnap/env.h"
#include "blksnap/io.h"
#include "io/env_path.h"
#include "util/fd.h"

namespace blksnap {
namespace {

FileStat ToFileStat(const struct stat& st) {
  FileStat out;
  out.exists = true;
  if (S_ISREG(st.st_mode)) {
    out.kind = FileKind::kRegular;
  } else if (S_ISDIR(st.st_mode)) {
    out.kind = FileKind::kDirectory;
  } else if (S_ISBLK(st.st_mode)) {
    out.kind = FileKind::kBlockDevice;
  } else {
    out.kind = FileKind::kOther;
  }
  out.size = static_cast<uint64_t>(st.st_size);
  out.dev = st.st_dev;
  out.ino = st.st_ino;
  out.rdev = st.st_rdev;
  return out;
}

class PosixWritableFile : public WritableFile {
 public:
  PosixWritableFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  ~PosixWritableFile() override { Close().IgnoreError(); }
  PosixWritableFile(const PosixWritableFile&) = delete;
  PosixWritableFile& operator=(const PosixWritableFile&) = delete;

  Status Append(std::string_view data) override {
    if (fd_ < 0) return Status::Error(EBADF, "write " + path_ + ": closed");
    while (!data.empty()) {
      const ssize_t n = ::write(fd_, data.data(), data.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return Status::FromErrno("write " + path_);
      if (n == 0) return Status::Error(EIO, "write " + path_ + ": wrote nothing");
      data.remove_prefix(static_cast<size_t>(n));
    }
    return Status::Ok();
  }

  Status Sync() override {
    if (fd_ < 0) return Status::Error(EBADF, "fsync " + path_ + ": closed");
    if (::fsync(fd_) != 0) return Status::FromErrno("fsync " + path_);
    return Status::Ok();
  }

  Status Close() override {
    if (fd_ < 0) return Status::Ok();
    const int fd = std::exchange(fd_, -1);
    if (::close(fd) != 0 && errno != EINTR) return Status::FromErrno("close " + path_);
    return Status::Ok();
  }

 private:
  const std::string path_;
  int fd_;  // -1 once closed
};

class PosixStorageFile : public StorageFile {
 public:
  PosixStorageFile(std::string path, Fd fd, FileStat stat, bool anonymous, bool created,
                   StorageFileOptions options)
      : path_(std::move(path)),
        fd_(std::move(fd)),
        stat_(stat),
        anonymous_(anonymous),
        created_(created),
        options_(options) {}

  const FileStat& stat() const override { return stat_; }

  Result<size_t> ReadAt(uint64_t offset, std::span<uint8_t> buf) override {
    if (!fd_.valid()) return Status::Error(EBADF, "read " + path_ + ": not open");
    size_t done = 0;
    while (done < buf.size()) {
      const ssize_t n = ::pread(fd_.get(), buf.data() + done, buf.size() - done,
                                static_cast<off_t>(offset + done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return Status::FromErrno("pread " + path_);
      if (n == 0) break;
      done += static_cast<size_t>(n);
    }
    return done;
  }

  bool created() const override { return created_; }

  Status Truncate(uint64_t size) override {
    BLKSNAP_RETURN_IF_ERROR(NeedFd("truncate"));
    if (::ftruncate(fd_.get(), static_cast<off_t>(size)) != 0)
      return Status::FromErrno("truncate " + path_);
    return Status::Ok();
  }

  Status Reserve(uint64_t offset, uint64_t length) override {
    BLKSNAP_RETURN_IF_ERROR(NeedFd("fallocate"));
    if (::fallocate(fd_.get(), 0, static_cast<off_t>(offset), static_cast<off_t>(length)) != 0)
      return Status::FromErrno("fallocate " + path_);
    return Status::Ok();
  }

  Result<uint64_t> FreeBytes() override {
    BLKSNAP_RETURN_IF_ERROR(NeedFd("statvfs"));
    struct statvfs vfs {};
    if (::fstatvfs(fd_.get(), &vfs) != 0) return Status::FromErrno("statvfs " + path_);
    return static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
  }

  Result<std::shared_ptr<BlockDevice>> OpenDevice() override {
    const std::string device_path =
        anonymous_ ? "/proc/self/fd/" + std::to_string(fd_.get()) : path_;
    FileOpenOptions open_options;
    open_options.direct = options_.direct;
    open_options.exclusive = options_.exclusive;
    auto opened = OpenFileDevice(device_path, open_options);
    if (!opened.ok() && options_.direct && opened.status().errnum() == EINVAL &&
        stat_.kind == FileKind::kRegular) {
      opened = OpenFileDevice(device_path);  // a file system without O_DIRECT (tmpfs before 6.6)
    }
    return opened;
  }

 private:
  Status NeedFd(const char* what) const {
    if (stat_.kind == FileKind::kRegular && fd_.valid()) return Status::Ok();
    return Status::Error(EINVAL, std::string(what) + " " + path_ + ": not a regular file");
  }

  const std::string path_;  // the directory for an unnamed temporary file
  Fd fd_;                   // regular files read-write; block devices read-only (probing)
  const FileStat stat_;
  const bool anonymous_;
  const bool created_;  // this open created the named file
  const StorageFileOptions options_;
};

class PosixEnv : public Env {
 public:
  Result<std::string> ReadFile(const std::string& path, uint64_t max_size) override {
    Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return Status::FromErrno("open " + path);
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) return Status::FromErrno("fstat " + path);
    if (S_ISDIR(st.st_mode)) return Status::Error(EISDIR, "read " + path + ": a directory");
    if (static_cast<uint64_t>(st.st_size) > max_size) return TooBig(path, max_size);
    std::string out;
    out.resize(static_cast<size_t>(st.st_size));
    size_t done = 0;
    for (;;) {
      if (done == out.size()) {
        // The file may be longer than fstat said (or a /proc file): read on until end of file.
        if (out.size() > max_size) return TooBig(path, max_size);
        out.resize(std::min<uint64_t>(max_size + 1, std::max<size_t>(out.size() * 2, 4096)));
      }
      const ssize_t n = ::read(fd.get(), out.data() + done, out.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return Status::FromErrno("read " + path);
      if (n == 0) break;
      done += static_cast<size_t>(n);
    }
    if (done > max_size) return TooBig(path, max_size);
    out.resize(done);
    return out;
  }

  Result<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path) override {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) return Status::FromErrno("create " + path);
    return std::unique_ptr<WritableFile>(new PosixWritableFile(path, fd));
  }

  Status SyncDir(const std::string& dir) override {
    Fd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!fd.valid()) return Status::FromErrno("open directory " + dir);
    if (::fsync(fd.get()) != 0) return Status::FromErrno("fsync directory " + dir);
    return Status::Ok();
  }

  Status RemoveFile(const std::string& path) override {
    if (::unlink(path.c_str()) != 0) return Status::FromErrno("remove " + path);
    return Status::Ok();
  }

  Status RenameFile(const std::string& from, const std::string& to) override {
    if (::rename(from.c_str(), to.c_str()) != 0)
      return Status::FromErrno("rename " + from + " to " + to);
    return Status::Ok();
  }

  Result<FileStat> Stat(const std::string& path) override {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
      if (errno == ENOENT) return FileStat{};
      return Status::FromErrno("stat " + path);
    }
    return ToFileStat(st);
  }

  Result<std::shared_ptr<BlockDevice>> OpenDevice(const std::string& path,
                                                  const FileOpenOptions& options) override {
    return OpenFileDevice(path, options);
  }

  Result<std::unique_ptr<StorageFile>> OpenStorageFile(const std::string& path,
                                                       const StorageFileOptions& options) override {
    BLKSNAP_ASSIGN_OR_RETURN(FileStat st, Stat(path));
    if (st.kind == FileKind::kBlockDevice) {
      Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
      if (!fd.valid()) return Status::FromErrno("open " + path);
      return std::unique_ptr<StorageFile>(
          new PosixStorageFile(path, std::move(fd), st, false, false, options));
    }
    Fd fd;
    const bool anonymous = st.kind == FileKind::kDirectory;
    bool created = false;
    if (anonymous) {
      fd = Fd(::open(path.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600));
      if (!fd.valid()) return Status::FromErrno("create a temporary file in " + path);
    } else if (st.kind == FileKind::kRegular) {
      fd = Fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
      if (!fd.valid()) return Status::FromErrno("open " + path);
    } else if (st.kind == FileKind::kMissing) {
      const std::string dir = io::DirName(path);
      BLKSNAP_ASSIGN_OR_RETURN(FileStat parent, Stat(dir));
      if (parent.kind != FileKind::kDirectory) {
        return Status::Error(ENOENT, "storage " + path + ": directory " + dir + " does not exist");
      }
      // O_EXCL|O_NOFOLLOW: a file (or symlink) that appeared since the stat is not ours to own.
      fd = Fd(::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
      if (!fd.valid()) return Status::FromErrno("create " + path);
      created = true;
    } else {
      return Status::Error(EINVAL, path + " is not a directory, regular file or block device");
    }
    struct stat fst {};
    if (::fstat(fd.get(), &fst) != 0) return Status::FromErrno("fstat " + path);
    return std::unique_ptr<StorageFile>(
        new PosixStorageFile(path, std::move(fd), ToFileStat(fst), anonymous, created, options));
  }

 private:
  static Status TooBig(const std::string& path, uint64_t max_size) {
    return Status::Error(EFBIG,
                         "read " + path + ": larger than " + std::to_string(max_size) + " bytes");
  }
};

}  // namespace

Env* Env::Default() {
  static Env* const env = new PosixEnv();
  return env;
}

}  // namespace blksnap
