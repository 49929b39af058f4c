// FileDevice: a regular file or a block device as a BlockDevice (OpenFileDevice in io.h).
//
// Data goes through a SyncIo engine (sync_io.h: io_uring with per-thread rings, or psync).
// Everything else is a plain syscall on the same fd: fallocate (files) or BLKDISCARD /
// BLKZEROOUT (block devices) for trim and write-zeroes, SEEK_DATA / SEEK_HOLE for BlockStatus.
//
// Size. Block devices: BLKGETSIZE64 at open. Regular files: fstat at open, cached; a request
// beyond the cached size re-reads it once, so a file grown by someone else (fallocate,
// ftruncate) is usable without reopening. A read that meets end of file before size() (the file
// shrank underneath) zero-fills the rest.
//
// O_DIRECT. A request is sent as is when its offset and length are multiples of align_ (the
// logical block size: BLKSSZGET, or statx's dio_offset_align for files) and its buffer address is
// a multiple of mem_align_. Otherwise it is bounced through a thread-local aligned buffer in
// windows of at most kBounceWindow bytes:
//  - reads read the covering aligned window and copy out the requested part;
//  - writes read-modify-write the partial first and last blocks. Two concurrent writes that do
//    not overlap may still share such an edge block, so every RMW holds the edge blocks' stripe
//    locks (edge_locks_) from the read to the write: non-overlapping concurrent unaligned writes
//    are correct. Limitation: an aligned write that overlaps a concurrent unaligned write of the
//    same block is not ordered against it (overlapping concurrent writes have no defined result
//    anyway).
//  - a regular file whose size is not a multiple of align_: an unaligned write whose aligned
//    window would pass the aligned-down size goes through a second, buffered fd (tail_fd_),
//    because writing the whole last block would grow the file. The kernel keeps buffered and direct
//    I/O to one file coherent (direct I/O writes back and invalidates the page cache over its
//    range).
//
// Thread safety: fd_ and the geometry never change after open; size_ is atomic; edge_locks_ guard
// the RMW edge blocks; engines are thread-safe. No lock is held on the aligned data path.
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "blksnap/io.h"
#include "io/sync_io.h"
#include "util/fd.h"
#include "util/mutex.h"

namespace blksnap {
namespace {

using io::SyncIo;

constexpr size_t kBounceWindow = 1u << 20;
constexpr size_t kZeroBufferSize = 1u << 20;
constexpr size_t kEdgeLockStripes = 64;

// Holds the stripe locks of a bounced write window's partial edge blocks: none, one, or two in
// stripe order (so two writers never wait on each other crosswise). The stripes guard disk
// blocks, not fields, and are chosen at run time, which the analysis cannot follow: unchecked.
class EdgeLocks {
 public:
  using Stripes = std::array<Mutex, kEdgeLockStripes>;
  EdgeLocks(Stripes& stripes, bool head_partial, uint64_t head_block, bool tail_partial,
            uint64_t tail_block) NO_THREAD_SAFETY_ANALYSIS {
    if (!head_partial && !tail_partial) return;
    size_t s1 = (head_partial ? head_block : tail_block) % kEdgeLockStripes;
    size_t s2 = tail_partial ? tail_block % kEdgeLockStripes : s1;
    if (s1 > s2) std::swap(s1, s2);
    first_ = &stripes[s1];
    first_->Lock();
    if (s2 != s1) {
      second_ = &stripes[s2];
      second_->Lock();
    }
  }
  ~EdgeLocks() NO_THREAD_SAFETY_ANALYSIS {
    if (second_) second_->Unlock();
    if (first_) first_->Unlock();
  }
  EdgeLocks(const EdgeLocks&) = delete;
  EdgeLocks& operator=(const EdgeLocks&) = delete;

 private:
  Mutex* first_ = nullptr;
  Mutex* second_ = nullptr;
};

// Immutable zeroes for write-zeroes fallbacks; page-aligned so O_DIRECT can use it as is.
alignas(4096) const uint8_t kZeroBuffer[kZeroBufferSize] = {};

uint64_t AlignDown(uint64_t v, uint64_t a) { return v - v % a; }
uint64_t AlignUp(uint64_t v, uint64_t a) { return AlignDown(v + a - 1, a); }

struct FreeDeleter {
  void operator()(uint8_t* p) const { std::free(p); }
};

// This thread's bounce buffer, grown on demand (never shrunk) and reused by every device.
uint8_t* ThreadBounceBuffer(size_t size, size_t alignment) {
  thread_local std::unique_ptr<uint8_t, FreeDeleter> buffer;
  thread_local size_t buffer_size = 0;
  thread_local size_t buffer_alignment = 0;
  if (!buffer || buffer_size < size || buffer_alignment < alignment) {
    void* p = std::aligned_alloc(alignment, AlignUp(size, alignment));
    if (!p) return nullptr;
    buffer.reset(static_cast<uint8_t*>(p));
    buffer_size = size;
    buffer_alignment = alignment;
  }
  return buffer.get();
}

Status Erofs() { return Status::Error(EROFS, "device opened read-only"); }

class Mapped final : public MappedRange {
 public:
  // fd: a duplicate of the device's descriptor (the same open file, whose write-back errors
  // it reports), owned.
  Mapped(uint8_t* data, size_t length, int fd, uint64_t offset, const std::string& path)
      : data_(data), length_(length), fd_(fd), offset_(offset), path_(path) {}
  ~Mapped() override { ::munmap(data_, length_); }
  uint8_t* data() override { return data_; }

  Status WriteBack(bool wait) override {
    const unsigned flags =
        wait ? SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER
             : SYNC_FILE_RANGE_WRITE;
    if (::sync_file_range(fd_.get(), static_cast<off64_t>(offset_), static_cast<off64_t>(length_),
                          flags) != 0) {
      return Status::FromErrno("write-back of a mapped range of " + path_);
    }
    return Status::Ok();
  }

 private:
  uint8_t* const data_;
  const size_t length_;
  const Fd fd_;
  const uint64_t offset_;
  const std::string path_;
};

class FileDevice final : public BlockDevice {
 public:
  struct Geometry {
    bool block_device = false;
    bool read_only = false;
    bool direct = false;
    uint64_t size = 0;
    uint32_t logical_block_size = 512;
    uint32_t physical_block_size = 4096;
    uint32_t align = 1;      // offset/length alignment of direct I/O
    uint32_t mem_align = 1;  // buffer alignment of direct I/O
  };

  FileDevice(std::string path, Fd fd, Fd tail_fd, Geometry geometry, std::unique_ptr<SyncIo> io)
      : path_(std::move(path)),
        fd_(std::move(fd)),
        tail_fd_(std::move(tail_fd)),
        geo_(geometry),
        size_(geometry.size),
        io_(std::move(io)) {}

  const char* engine_name() const { return io_->name(); }

  uint64_t size() const override { return size_.load(std::memory_order_relaxed); }
  uint32_t logical_block_size() const override { return geo_.logical_block_size; }
  uint32_t physical_block_size() const override { return geo_.physical_block_size; }
  DeviceCapabilities capabilities() const override {
    DeviceCapabilities caps;
    caps.read_only = geo_.read_only;
    caps.flush = true;
    caps.fua = true;
    caps.trim = !geo_.read_only;
    caps.write_zeroes = !geo_.read_only;
    caps.fast_zero = !geo_.read_only;
    caps.block_status = !geo_.block_device;
    caps.multi_conn_safe = true;
    return caps;
  }

  Status Read(uint64_t offset, std::span<uint8_t> buf) override {
    BLKSNAP_RETURN_IF_ERROR(CheckIo(offset, buf.size()));
    if (buf.empty()) return Status::Ok();
    if (!geo_.direct || IsAligned(offset, buf.size(), buf.data())) {
      return ReadFill(fd_.get(), offset, buf);
    }
    return BouncedRead(offset, buf);
  }

  Status Write(uint64_t offset, std::span<const uint8_t> buf, uint32_t flags) override {
    if (geo_.read_only) return Erofs();
    BLKSNAP_RETURN_IF_ERROR(CheckIo(offset, buf.size()));
    if (buf.empty()) return Status::Ok();
    const bool fua = flags & kWriteFua;
    if (!geo_.direct || IsAligned(offset, buf.size(), buf.data())) {
      return Annotate(io_->Write(fd_.get(), offset, buf, fua), "write");
    }
    if (tail_fd_.valid() &&
        AlignUp(offset + buf.size(), geo_.align) > AlignDown(size(), geo_.align)) {
      return Annotate(io_->Write(tail_fd_.get(), offset, buf, fua), "write (unaligned tail)");
    }
    return BouncedWrite(offset, buf, fua);
  }

  Status Flush() override {
    if (geo_.read_only) return Status::Ok();
    return Annotate(io_->Sync(fd_.get()), "flush");
  }

  // Block devices, and files on a file system that overwrites in place once fallocate has
  // reserved the range (ext4, XFS, tmpfs): a store then needs no space. Elsewhere (btrfs: copy
  // on write at write-back) ENOTSUP, and the caller writes. A store can still fault (SIGBUS:
  // the file truncated, its file system shut down, the page unreadable, an XFS file whose
  // extents are shared by a reflink): callers guard their stores (util/sigbus_guard.h).
  Result<std::unique_ptr<MappedRange>> MapShared(uint64_t offset, uint64_t length) override {
    const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    // A page is a power of two of at least 4096 bytes: page-aligned is 4096-aligned too.
    if (geo_.read_only || length == 0 || offset % page != 0 || length % page != 0) {
      return Status::Error(ENOTSUP, "cannot map this range of " + path_);
    }
    BLKSNAP_RETURN_IF_ERROR(CheckRange(*this, offset, length));
    if (!geo_.block_device) {
      struct statfs fs;
      if (::fstatfs(fd_.get(), &fs) != 0) return Status::FromErrno("fstatfs " + path_);
      constexpr uint64_t kExt4 = 0xEF53, kXfs = 0x58465342, kTmpfs = 0x01021994;
      const auto type = static_cast<uint64_t>(fs.f_type);
      if (type != kExt4 && type != kXfs && type != kTmpfs)
        return Status::Error(ENOTSUP, "not mapped on this file system: " + path_);
      if (Fallocate(0, offset, length) != 0) return Status::FromErrno("fallocate " + path_);
    }
    void* p = ::mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd_.get(),
                     static_cast<off_t>(offset));
    if (p == MAP_FAILED) return Status::FromErrno("mmap " + path_);
    (void)::madvise(p, length, MADV_RANDOM);  // a fault reads its page only, not its neighbours
    const int fd = ::fcntl(fd_.get(), F_DUPFD_CLOEXEC, 0);
    if (fd < 0) {
      const Status s = Status::FromErrno("dup " + path_);
      ::munmap(p, length);
      return s;
    }
    return std::unique_ptr<MappedRange>(
        new Mapped(static_cast<uint8_t*>(p), length, fd, offset, path_));
  }

  Status Trim(uint64_t offset, uint64_t length) override {
    if (geo_.read_only) return Erofs();
    BLKSNAP_RETURN_IF_ERROR(CheckIo(offset, length));
    if (length == 0) return Status::Ok();
    if (geo_.block_device) {
      // BLKDISCARD wants sector alignment; discard is advisory, so shrink to the aligned inside.
      const uint64_t start = AlignUp(offset, geo_.logical_block_size);
      const uint64_t end = AlignDown(offset + length, geo_.logical_block_size);
      if (start >= end) return Status::Ok();
      uint64_t range[2] = {start, end - start};
      if (::ioctl(fd_.get(), BLKDISCARD, range) != 0) {
        if (errno == EOPNOTSUPP) return Status::Ok();
        return Status::FromErrno("BLKDISCARD " + path_);
      }
      return Status::Ok();
    }
    if (Fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0) {
      if (errno == EOPNOTSUPP) return Status::Ok();  // no holes on this filesystem: a no-op
      return Status::FromErrno("fallocate(PUNCH_HOLE) " + path_);
    }
    return Status::Ok();
  }

  Status WriteZeroes(uint64_t offset, uint64_t length, uint32_t flags) override {
    if (geo_.read_only) return Erofs();
    BLKSNAP_RETURN_IF_ERROR(CheckIo(offset, length));
    if (length == 0) return Status::Ok();
    const bool fast = flags & kZeroFast;
    const bool no_hole = flags & kZeroNoHole;
    if (geo_.block_device) return BlockDeviceZeroes(offset, length, fast, no_hole);

    if (!no_hole) {
      if (Fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0) {
        return Status::Ok();
      }
      if (errno != EOPNOTSUPP) return Status::FromErrno("fallocate(PUNCH_HOLE) " + path_);
    }
    if (Fallocate(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length) == 0) {
      return Status::Ok();
    }
    if (errno != EOPNOTSUPP) return Status::FromErrno("fallocate(ZERO_RANGE) " + path_);
    if (fast) return Status::Error(ENOTSUP, "fast zeroing not supported by " + path_);
    return WriteZeroBuffers(offset, length);
  }

  Result<std::vector<Extent>> BlockStatus(uint64_t offset, uint64_t length) override {
    BLKSNAP_RETURN_IF_ERROR(CheckIo(offset, length));
    if (geo_.block_device || length == 0) return BlockDevice::BlockStatus(offset, length);
    std::vector<Extent> extents;
    const uint64_t end = offset + length;
    uint64_t pos = offset;
    auto add = [&](uint64_t from, uint64_t to, uint32_t flags) {
      if (from >= to) return;
      if (!extents.empty() && extents.back().flags == flags &&
          extents.back().offset + extents.back().length == from) {
        extents.back().length += to - from;
      } else {
        extents.push_back(Extent{from, to - from, flags});
      }
    };
    while (pos < end) {
      const off_t data = ::lseek(fd_.get(), static_cast<off_t>(pos), SEEK_DATA);
      if (data < 0) {
        if (errno == ENXIO) {  // no data from pos to end of file: all hole
          add(pos, end, kExtentHole | kExtentZero);
          break;
        }
        if (errno == EINVAL || errno == EOPNOTSUPP) {  // no SEEK_DATA: report data
          add(pos, end, 0);
          break;
        }
        return Status::FromErrno("lseek(SEEK_DATA) " + path_);
      }
      const uint64_t data_start = std::min<uint64_t>(static_cast<uint64_t>(data), end);
      add(pos, data_start, kExtentHole | kExtentZero);
      if (data_start >= end) break;
      const off_t hole = ::lseek(fd_.get(), data, SEEK_HOLE);
      if (hole < 0) return Status::FromErrno("lseek(SEEK_HOLE) " + path_);
      // Past end of file (cached size bigger than the file) reads as a hole too.
      const uint64_t data_end = std::min<uint64_t>(static_cast<uint64_t>(hole), end);
      add(data_start, data_end, 0);
      pos = data_end;
    }
    return extents;
  }

 private:
  bool IsAligned(uint64_t offset, size_t length, const void* buf) const {
    return offset % geo_.align == 0 && length % geo_.align == 0 &&
           reinterpret_cast<uintptr_t>(buf) % geo_.mem_align == 0;
  }

  Status CheckIo(uint64_t offset, uint64_t length) {
    Status s = CheckRange(*this, offset, length);
    if (s.ok() || geo_.block_device) return s;
    struct stat st;
    if (::fstat(fd_.get(), &st) != 0) return Status::FromErrno("fstat " + path_);
    uint64_t cached = size_.load(std::memory_order_relaxed);
    const uint64_t now = static_cast<uint64_t>(st.st_size);
    while (now > cached && !size_.compare_exchange_weak(cached, now)) {
    }
    return CheckRange(*this, offset, length);
  }

  Status Annotate(Status s, const char* what) const {
    if (s.ok()) return s;
    return Status::Error(s.errnum(),
                         std::string(what) + " " + path_ + ": " + std::string(s.message()));
  }

  int Fallocate(int mode, uint64_t offset, uint64_t length) {
    int ret;
    do {
      ret = ::fallocate(fd_.get(), mode, static_cast<off_t>(offset), static_cast<off_t>(length));
    } while (ret != 0 && errno == EINTR);
    return ret;
  }

  // Reads buf at offset from fd; zero-fills what lies beyond end of file.
  Status ReadFill(int fd, uint64_t offset, std::span<uint8_t> buf) {
    Result<size_t> n = io_->Read(fd, offset, buf);
    if (!n.ok()) return Annotate(n.status(), "read");
    if (*n < buf.size()) std::memset(buf.data() + *n, 0, buf.size() - *n);
    return Status::Ok();
  }

  size_t WindowSize() const { return AlignUp(kBounceWindow, geo_.align); }
  size_t BufferAlignment() const { return std::max<size_t>({geo_.align, geo_.mem_align, 4096}); }

  Status BouncedRead(uint64_t offset, std::span<uint8_t> buf) {
    uint8_t* bounce = ThreadBounceBuffer(WindowSize(), BufferAlignment());
    if (!bounce) return Status::Error(ENOMEM, "bounce buffer");
    const uint64_t end = offset + buf.size();
    uint64_t pos = offset;
    while (pos < end) {
      const uint64_t ws = AlignDown(pos, geo_.align);
      const uint64_t we = std::min<uint64_t>(AlignUp(end, geo_.align), ws + WindowSize());
      BLKSNAP_RETURN_IF_ERROR(ReadFill(fd_.get(), ws, {bounce, we - ws}));
      const uint64_t stop = std::min(end, we);
      std::memcpy(buf.data() + (pos - offset), bounce + (pos - ws), stop - pos);
      pos = stop;
    }
    return Status::Ok();
  }

  Status BouncedWrite(uint64_t offset, std::span<const uint8_t> buf, bool fua) {
    uint8_t* bounce = ThreadBounceBuffer(WindowSize(), BufferAlignment());
    if (!bounce) return Status::Error(ENOMEM, "bounce buffer");
    const uint64_t a = geo_.align;
    const uint64_t end = offset + buf.size();
    uint64_t pos = offset;
    while (pos < end) {
      const uint64_t ws = AlignDown(pos, a);
      const uint64_t we = std::min<uint64_t>(AlignUp(end, a), ws + WindowSize());
      const uint64_t stop = std::min(end, we);
      // Edge blocks this window only partly overwrites: read them first, under their locks.
      const bool head_partial = pos % a != 0;
      const bool tail_partial = stop % a != 0;
      const uint64_t head_block = ws / a;
      const uint64_t tail_block = (we - a) / a;
      EdgeLocks lock(edge_locks_, head_partial, head_block, tail_partial, tail_block);
      if (head_partial) BLKSNAP_RETURN_IF_ERROR(ReadFill(fd_.get(), ws, {bounce, a}));
      if (tail_partial && (!head_partial || tail_block != head_block)) {
        BLKSNAP_RETURN_IF_ERROR(ReadFill(fd_.get(), we - a, {bounce + (we - a - ws), a}));
      }
      std::memcpy(bounce + (pos - ws), buf.data() + (pos - offset), stop - pos);
      BLKSNAP_RETURN_IF_ERROR(
          Annotate(io_->Write(fd_.get(), ws, {bounce, we - ws}, fua), "write (bounced)"));
      pos = stop;
    }
    return Status::Ok();
  }

  Status WriteZeroBuffers(uint64_t offset, uint64_t length) {
    while (length > 0) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(length, kZeroBufferSize));
      BLKSNAP_RETURN_IF_ERROR(Write(offset, {kZeroBuffer, n}, 0));
      offset += n;
      length -= n;
    }
    return Status::Ok();
  }

  Status BlockDeviceZeroes(uint64_t offset, uint64_t length, bool fast, bool no_hole) {
    const uint64_t lbs = geo_.logical_block_size;
    const uint64_t start = AlignUp(offset, lbs);
    const uint64_t end = AlignDown(offset + length, lbs);
    if (fast) {
      // Only the device's own write-zeroes (no fallback) is fast: fallocate(PUNCH_HOLE) on a
      // block device is blkdev_issue_zeroout(NOFALLBACK). It may unmap, so not with kZeroNoHole.
      if (no_hole || start != offset || end != offset + length) {
        return Status::Error(ENOTSUP, "fast zeroing not supported for this request on " + path_);
      }
      if (Fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0) {
        if (errno == EOPNOTSUPP || errno == EINVAL) {
          return Status::Error(ENOTSUP, "fast zeroing not supported by " + path_);
        }
        return Status::FromErrno("fallocate(PUNCH_HOLE) " + path_);
      }
      return Status::Ok();
    }
    if (start >= end) return WriteZeroBuffers(offset, length);
    if (start > offset) BLKSNAP_RETURN_IF_ERROR(WriteZeroBuffers(offset, start - offset));
    uint64_t range[2] = {start, end - start};
    if (::ioctl(fd_.get(), BLKZEROOUT, range) != 0) {
      if (errno != EOPNOTSUPP && errno != EINVAL) return Status::FromErrno("BLKZEROOUT " + path_);
      BLKSNAP_RETURN_IF_ERROR(WriteZeroBuffers(start, end - start));
    }
    if (offset + length > end)
      BLKSNAP_RETURN_IF_ERROR(WriteZeroBuffers(end, offset + length - end));
    return Status::Ok();
  }

  const std::string path_;
  const Fd fd_;
  const Fd tail_fd_;  // buffered fd for O_DIRECT regular files whose size is not aligned
  const Geometry geo_;
  std::atomic<uint64_t> size_;
  const std::unique_ptr<SyncIo> io_;
  EdgeLocks::Stripes edge_locks_;  // guard RMW of partial direct blocks
};

}  // namespace

Result<std::shared_ptr<BlockDevice>> OpenFileDevice(const std::string& path,
                                                    const FileOpenOptions& options) {
  int flags = (options.read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC;
  if (options.direct) flags |= O_DIRECT;
  if (options.exclusive) {
    // O_EXCL without O_CREAT is defined only for block devices (claims the device).
    struct stat pst;
    if (::stat(path.c_str(), &pst) == 0 && S_ISBLK(pst.st_mode)) flags |= O_EXCL;
  }
  Fd fd(::open(path.c_str(), flags));
  if (!fd.valid() && errno == EBUSY && (flags & O_EXCL)) {
    return Status::Error(EBUSY, "open " + path +
                                    ": device is busy (mounted, or held by another program); "
                                    "blksnap must be its only user");
  }
  if (!fd.valid()) return Status::FromErrno("open " + path);

  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return Status::FromErrno("fstat " + path);
  FileDevice::Geometry geo;
  geo.read_only = options.read_only;
  geo.direct = options.direct;
  Fd tail_fd;
  if (S_ISBLK(st.st_mode)) {
    geo.block_device = true;
    uint64_t bytes = 0;
    int lbs = 0;
    unsigned int pbs = 0;
    if (::ioctl(fd.get(), BLKGETSIZE64, &bytes) != 0)
      return Status::FromErrno("BLKGETSIZE64 " + path);
    if (::ioctl(fd.get(), BLKSSZGET, &lbs) != 0) return Status::FromErrno("BLKSSZGET " + path);
    if (::ioctl(fd.get(), BLKPBSZGET, &pbs) != 0) return Status::FromErrno("BLKPBSZGET " + path);
    geo.size = bytes;
    geo.logical_block_size = lbs > 0 ? static_cast<uint32_t>(lbs) : 512;
    geo.physical_block_size = pbs > 0 ? pbs : geo.logical_block_size;
    geo.align = geo.logical_block_size;
    geo.mem_align = geo.logical_block_size;
  } else if (S_ISREG(st.st_mode)) {
    geo.size = static_cast<uint64_t>(st.st_size);
    geo.logical_block_size = 512;
    geo.physical_block_size = st.st_blksize > 0 ? static_cast<uint32_t>(st.st_blksize) : 4096;
    if (options.direct) {
      struct statx stx {};
      if (::statx(fd.get(), "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
          (stx.stx_mask & STATX_DIOALIGN) && stx.stx_dio_offset_align > 0) {
        geo.align = stx.stx_dio_offset_align;
        geo.mem_align = std::max<uint32_t>(stx.stx_dio_mem_align, 1);
      } else {
        geo.align = 4096;  // unknown: the strictest common requirement
        geo.mem_align = 4096;
      }
      geo.logical_block_size = std::max<uint32_t>(geo.align, 512);
      if (!options.read_only) {  // used only while the size is not a multiple of align
        tail_fd = Fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
        if (!tail_fd.valid()) return Status::FromErrno("open (buffered tail) " + path);
      }
    }
  } else {
    return Status::Error(EINVAL, path + " is neither a regular file nor a block device");
  }
  // Block devices in direct mode: the kernel may accept smaller memory alignment (statx on 6.11+).
  if (geo.block_device && options.direct) {
    struct statx stx {};
    if (::statx(fd.get(), "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
        (stx.stx_mask & STATX_DIOALIGN) && stx.stx_dio_mem_align > 0) {
      geo.mem_align = stx.stx_dio_mem_align;
    }
  }
  if (!options.direct) {
    geo.align = 1;
    geo.mem_align = 1;
  }

  BLKSNAP_ASSIGN_OR_RETURN(std::unique_ptr<io::SyncIo> engine, io::MakeSyncIo(options.engine));
  return std::shared_ptr<BlockDevice>(std::make_shared<FileDevice>(
      path, std::move(fd), std::move(tail_fd), geo, std::move(engine)));
}

std::string FileDeviceEngineName(const BlockDevice& device) {
  const BlockDevice* d = &device;
  while (d) {
    if (auto* file = dynamic_cast<const FileDevice*>(d)) return file->engine_name();
    auto* layer = dynamic_cast<const ForwardingDevice*>(d);
    d = layer ? layer->next().get() : nullptr;
  }
  return "none";
}

}  // namespace blksnap
