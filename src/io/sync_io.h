// SyncIo: synchronous positional I/O on a file descriptor, done by one of two engines.
//
// The engines ("io_uring" through liburing, "psync" through pread/pwrite) present the same
// contract: a call returns when the whole transfer is done (short transfers, EINTR and EAGAIN
// are retried inside), so a caller never sees a partial write. Both are safe to call from any
// number of threads at once. Internal to src/io.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "blksnap/io.h"
#include "blksnap/status.h"

namespace blksnap::io {

class SyncIo {
 public:
  SyncIo() = default;
  SyncIo(const SyncIo&) = delete;
  SyncIo& operator=(const SyncIo&) = delete;
  virtual ~SyncIo() = default;

  virtual const char* name() const = 0;
  // Reads up to buf.size() bytes at offset; returns the number read, fewer only at end of file.
  virtual Result<size_t> Read(int fd, uint64_t offset, std::span<uint8_t> buf) = 0;
  // Writes all of buf at offset; fua: durable on return (RWF_DSYNC, or write + fdatasync).
  virtual Status Write(int fd, uint64_t offset, std::span<const uint8_t> buf, bool fua) = 0;
  // fdatasync.
  virtual Status Sync(int fd) = 0;
};

std::unique_ptr<SyncIo> MakePsyncIo();
// Fails (ENOSYS, EPERM, ENOMEM, ...) when this kernel or sandbox cannot run io_uring.
Result<std::unique_ptr<SyncIo>> MakeUringIo();
// Resolves kAuto: BLKSNAP_IO_ENGINE=psync|io_uring overrides it; otherwise psync (measured faster
// for one synchronous request at a time, see sync_io.cc). Explicit engines are honoured or fail.
Result<std::unique_ptr<SyncIo>> MakeSyncIo(IoEngine engine);

}  // namespace blksnap::io
