// FileOperations: lookup/getattr/setattr/readdir/open/release/read/write/flush/fsync/
// fallocate/lseek on a flat directory of device files.
//
// Design notes
// - The root (inode 1) is a directory holding the FileTable's files; there are no others.
//   FileOrReply() answers every request for the root or for an unknown inode in one place;
//   DeviceOrReply() answers ENODEV for a handle whose file was removed.
// - Handles: fi->fh is a FileTable Handle (entry + whether writes are FUA), released in
//   release(); an open that the kernel never learns of (interrupted) is released at once.
// - Data path: FOPEN_DIRECT_IO on every open (no page cache), so loop devices and O_DIRECT
//   readers see exactly the device. max_write is the largest libfuse 3.14 accepts (its buffer,
//   FUSE_MAX_MAX_PAGES pages). libfuse 3.14 cannot set FOPEN_PARALLEL_DIRECT_WRITES, so
//   synchronous writers to one file serialize at the kernel's inode lock; the loop driver's
//   asynchronous direct I/O still overlaps requests (FUSE_CAP_ASYNC_DIO).
// - Mapping: read/write -> Read/Write (O_SYNC/O_DSYNC -> kWriteFua), fsync -> Flush, fallocate
//   ZERO_RANGE -> WriteZeroes(kZeroNoHole), PUNCH_HOLE -> WriteZeroes(0), lseek SEEK_DATA/
//   SEEK_HOLE -> BlockStatus. The size is fixed: truncate fails with EPERM.
// - Locking: none here; the FileTable's, for lookups only. Device I/O runs with no lock held
//   on whichever session worker received the request.
#define FUSE_USE_VERSION 314

#include "fuse/fuse_ops.h"

#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <linux/falloc.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <string>
#include <utility>
#include <vector>

#include "fuse/file_table.h"
#include "fuse/session.h"

namespace blksnap::fuse {
namespace {

static_assert(kRootIno == FUSE_ROOT_ID);

constexpr double kTimeout = 1.0;          // entry and attribute cache, seconds
constexpr unsigned kMaxWrite = 1u << 20;  // libfuse 3.14 clamps to its buffer size
constexpr unsigned kMaxBackground = 128;  // async direct I/O requests in flight per mount

FileTable& Files(fuse_req_t req) { return *static_cast<FileTable*>(Session::Userdata(req)); }

Handle& HandleOf(fuse_file_info* fi) { return *reinterpret_cast<Handle*>(fi->fh); }

struct stat RootAttr() {
  struct stat st {};
  st.st_ino = FUSE_ROOT_ID;
  st.st_mode = S_IFDIR | 0755;
  st.st_nlink = 2;
  return st;
}

struct stat FileAttr(const FileEntry& entry) {
  struct stat st {};
  st.st_ino = entry.ino;
  st.st_mode = S_IFREG | (entry.read_only ? 0400 : 0600);
  st.st_nlink = 1;
  st.st_size = static_cast<off_t>(entry.size);
  st.st_blksize = 4096;
  st.st_blocks = static_cast<blkcnt_t>((entry.size + 511) / 512);
  return st;
}

// The file at ino, or null once the request is answered: for the root with its attributes
// (root_error 0) or with root_error, for an unknown inode with ENOENT.
std::shared_ptr<FileEntry> FileOrReply(fuse_req_t req, fuse_ino_t ino, int root_error) {
  if (ino == FUSE_ROOT_ID) {
    if (root_error != 0) {
      fuse_reply_err(req, root_error);
    } else {
      struct stat st = RootAttr();
      fuse_reply_attr(req, &st, kTimeout);
    }
    return nullptr;
  }
  auto entry = Files(req).FindIno(ino);
  if (entry == nullptr) fuse_reply_err(req, ENOENT);
  return entry;
}

// The device behind an open handle, or null once the request is answered with ENODEV (the file
// was removed while open).
std::shared_ptr<BlockDevice> DeviceOrReply(fuse_req_t req, const FileEntry& entry) {
  auto device = entry.Device();
  if (device == nullptr) fuse_reply_err(req, ENODEV);
  return device;
}

void OnInit(void* /*userdata*/, fuse_conn_info* conn) {
  conn->max_write = kMaxWrite;
  conn->max_read = 0;  // no limit beyond max_pages
  conn->max_readahead = 0;
  conn->max_background = kMaxBackground;
  conn->congestion_threshold = kMaxBackground * 3 / 4;
  if (conn->capable & FUSE_CAP_ASYNC_DIO) conn->want |= FUSE_CAP_ASYNC_DIO;
  conn->want &= ~(FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE |
                  FUSE_CAP_WRITEBACK_CACHE);
}

void OnLookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  if (parent != FUSE_ROOT_ID) {
    fuse_reply_err(req, ENOTDIR);
    return;
  }
  auto entry = Files(req).FindName(name);
  if (entry == nullptr) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  fuse_entry_param e{};
  e.ino = entry->ino;
  e.generation = 1;
  e.attr = FileAttr(*entry);
  e.attr_timeout = kTimeout;
  e.entry_timeout = kTimeout;
  fuse_reply_entry(req, &e);
}

void OnGetattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* /*fi*/) {
  auto entry = FileOrReply(req, ino, 0);
  if (entry == nullptr) return;
  struct stat st = FileAttr(*entry);
  fuse_reply_attr(req, &st, kTimeout);
}

void OnSetattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set,
               fuse_file_info* /*fi*/) {
  auto entry = FileOrReply(req, ino, 0);
  if (entry == nullptr) return;
  // The size of a device file is fixed; mode, owner and times are accepted and ignored.
  if ((to_set & FUSE_SET_ATTR_SIZE) && static_cast<uint64_t>(attr->st_size) != entry->size) {
    fuse_reply_err(req, EPERM);
    return;
  }
  struct stat st = FileAttr(*entry);
  fuse_reply_attr(req, &st, kTimeout);
}

void OnReaddir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* /*fi*/) {
  if (ino != FUSE_ROOT_ID) {
    fuse_reply_err(req, ENOTDIR);
    return;
  }
  std::vector<std::pair<std::string, struct stat>> names;
  names.emplace_back(".", RootAttr());
  names.emplace_back("..", RootAttr());
  for (const auto& entry : Files(req).List()) names.emplace_back(entry->name, FileAttr(*entry));
  std::vector<char> buf(size);
  size_t used = 0;
  for (size_t i = static_cast<size_t>(off); i < names.size(); ++i) {
    size_t need = fuse_add_direntry(req, buf.data() + used, size - used, names[i].first.c_str(),
                                    &names[i].second, static_cast<off_t>(i + 1));
    if (need > size - used) break;
    used += need;
  }
  fuse_reply_buf(req, buf.data(), used);
}

void OnOpen(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  auto entry = FileOrReply(req, ino, EISDIR);
  if (entry == nullptr) return;
  int access = fi->flags & O_ACCMODE;
  if (entry->read_only && access != O_RDONLY) {
    fuse_reply_err(req, EROFS);
    return;
  }
  if (fi->flags & O_TRUNC) {
    fuse_reply_err(req, EPERM);
    return;
  }
  FileTable& files = Files(req);
  Handle* handle = files.Open(std::move(entry), (fi->flags & (O_SYNC | O_DSYNC)) != 0);
  fi->fh = reinterpret_cast<uint64_t>(handle);
  fi->direct_io = 1;
  fi->keep_cache = 0;
  if (fuse_reply_open(req, fi) != 0) {
    // The opener went away (interrupted): the kernel never sends release for this handle.
    files.Release(handle);
  }
}

void OnRelease(fuse_req_t req, fuse_ino_t /*ino*/, fuse_file_info* fi) {
  Files(req).Release(&HandleOf(fi));
  fuse_reply_err(req, 0);
}

void OnRead(fuse_req_t req, fuse_ino_t /*ino*/, size_t size, off_t off, fuse_file_info* fi) {
  const FileEntry& entry = *HandleOf(fi).entry;
  auto device = DeviceOrReply(req, entry);
  if (device == nullptr) return;
  uint64_t offset = static_cast<uint64_t>(off);
  if (off < 0 || offset >= entry.size) {
    fuse_reply_buf(req, nullptr, 0);
    return;
  }
  size = static_cast<size_t>(std::min<uint64_t>(size, entry.size - offset));
  thread_local std::vector<uint8_t> buf;
  if (buf.size() < size) buf.resize(size);
  Status status = device->Read(offset, std::span<uint8_t>(buf.data(), size));
  if (!status.ok()) {
    fuse_reply_err(req, status.errnum());
    return;
  }
  fuse_reply_buf(req, reinterpret_cast<const char*>(buf.data()), size);
}

void OnWrite(fuse_req_t req, fuse_ino_t /*ino*/, const char* buf, size_t size, off_t off,
             fuse_file_info* fi) {
  const Handle& handle = HandleOf(fi);
  const FileEntry& entry = *handle.entry;
  auto device = DeviceOrReply(req, entry);
  if (device == nullptr) return;
  uint64_t offset = static_cast<uint64_t>(off);
  if (off < 0 || offset >= entry.size) {
    if (size == 0) {
      fuse_reply_write(req, 0);
    } else {
      fuse_reply_err(req, ENOSPC);
    }
    return;
  }
  size = static_cast<size_t>(std::min<uint64_t>(size, entry.size - offset));
  // O_DSYNC may come per request (the kernel passes IOCB_DSYNC as write flags).
  bool fua = handle.fua || (fi->flags & (O_SYNC | O_DSYNC)) != 0;
  Status status =
      device->Write(offset, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(buf), size),
                    fua ? kWriteFua : 0);
  if (!status.ok()) {
    fuse_reply_err(req, status.errnum());
    return;
  }
  fuse_reply_write(req, size);
}

void OnFlush(fuse_req_t req, fuse_ino_t /*ino*/, fuse_file_info* /*fi*/) {
  // close(2): nothing buffered here (direct I/O); durability is fsync's job.
  fuse_reply_err(req, 0);
}

void OnFsync(fuse_req_t req, fuse_ino_t /*ino*/, int /*datasync*/, fuse_file_info* fi) {
  auto device = DeviceOrReply(req, *HandleOf(fi).entry);
  if (device == nullptr) return;
  Status status = device->Flush();
  fuse_reply_err(req, status.ok() ? 0 : status.errnum());
}

void OnFallocate(fuse_req_t req, fuse_ino_t /*ino*/, int mode, off_t off, off_t len,
                 fuse_file_info* fi) {
  const FileEntry& entry = *HandleOf(fi).entry;
  if (mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) {
    fuse_reply_err(req, EOPNOTSUPP);
    return;
  }
  if (entry.read_only) {
    fuse_reply_err(req, EROFS);
    return;
  }
  auto device = DeviceOrReply(req, entry);
  if (device == nullptr) return;
  if (off < 0 || len <= 0) {
    fuse_reply_err(req, EINVAL);
    return;
  }
  uint64_t offset = static_cast<uint64_t>(off);
  uint64_t end = offset + static_cast<uint64_t>(len);
  if (end < offset) end = UINT64_MAX;
  if (end > entry.size && !(mode & FALLOC_FL_KEEP_SIZE)) {
    fuse_reply_err(req, ENOSPC);  // the file cannot grow
    return;
  }
  end = std::min(end, entry.size);
  if (offset >= end) {
    fuse_reply_err(req, 0);
    return;
  }
  Status status;
  if (mode & FALLOC_FL_PUNCH_HOLE) {
    status = device->WriteZeroes(offset, end - offset, 0);
  } else if (mode & FALLOC_FL_ZERO_RANGE) {
    status = device->WriteZeroes(offset, end - offset, kZeroNoHole);
  }  // plain allocation: the device is fully provisioned already
  fuse_reply_err(req, status.ok() ? 0 : status.errnum());
}

// SEEK_DATA / SEEK_HOLE from the device's BlockStatus (holes: kExtentHole; allocated zeroes
// count as data), so sparse-aware readers (cp --sparse, qemu-img) can skip an image's holes.
void OnLseek(fuse_req_t req, fuse_ino_t /*ino*/, off_t off, int whence, fuse_file_info* fi) {
  const FileEntry& entry = *HandleOf(fi).entry;
  if (whence != SEEK_DATA && whence != SEEK_HOLE) {
    fuse_reply_err(req, EINVAL);  // the kernel handles SEEK_SET/CUR/END itself
    return;
  }
  auto device = DeviceOrReply(req, entry);
  if (device == nullptr) return;
  uint64_t pos = static_cast<uint64_t>(off);
  if (off < 0 || pos >= entry.size) {
    fuse_reply_err(req, ENXIO);
    return;
  }
  if (!device->capabilities().block_status) {  // all data
    fuse_reply_lseek(req, whence == SEEK_DATA ? off : static_cast<off_t>(entry.size));
    return;
  }
  while (pos < entry.size) {
    auto extents = device->BlockStatus(pos, entry.size - pos);
    if (!extents.ok()) {
      fuse_reply_err(req, extents.status().errnum());
      return;
    }
    if (extents->empty()) break;
    for (const Extent& e : *extents) {
      bool hole = (e.flags & kExtentHole) != 0;
      if (hole == (whence == SEEK_HOLE)) {
        fuse_reply_lseek(req, static_cast<off_t>(std::max(pos, e.offset)));
        return;
      }
      pos = std::max(pos, e.offset + e.length);
    }
  }
  if (whence == SEEK_DATA) {
    fuse_reply_err(req, ENXIO);  // only holes after off
  } else {
    fuse_reply_lseek(req, static_cast<off_t>(entry.size));  // the implicit hole at EOF
  }
}

}  // namespace

const fuse_lowlevel_ops& FileOperations() {
  static const fuse_lowlevel_ops kOps = [] {
    fuse_lowlevel_ops ops{};
    ops.init = &OnInit;
    ops.lookup = &OnLookup;
    ops.getattr = &OnGetattr;
    ops.setattr = &OnSetattr;
    ops.readdir = &OnReaddir;
    ops.open = &OnOpen;
    ops.release = &OnRelease;
    ops.read = &OnRead;
    ops.write = &OnWrite;
    ops.flush = &OnFlush;
    ops.fsync = &OnFsync;
    ops.fallocate = &OnFallocate;
    ops.lseek = &OnLseek;
    return ops;
  }();
  return kOps;
}

}  // namespace blksnap::fuse
