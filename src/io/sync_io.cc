// The two I/O engines behind FileDevice.
//
// psync: pread / pwrite loops; FUA is pwritev2(RWF_DSYNC), falling back to pwrite + fdatasync
// where the kernel refuses the flag.
//
// io_uring: the BlockDevice interface is synchronous and called from many threads at once, so
// the engine owns no ring of its own. Each thread lazily creates one small ring (kRingDepth
// entries) in a thread_local on its first I/O and keeps it until it exits; a request is one SQE
// submitted and waited on by the calling thread (io_uring_submit_and_wait: one syscall per
// request, like pread). Nothing is shared between threads, so there is no lock, no completion
// routing and no contention on the data path; the ring is set up with SINGLE_ISSUER and
// DEFER_TASKRUN when the kernel has them (only its own thread ever touches it). A ring is
// fd-agnostic, so one thread's ring serves every FileDevice. If a thread cannot get a ring
// (ENOMEM, EMFILE), its calls fall back to psync: slower, never wrong.
//
// Retries: negative completions -EINTR / -EAGAIN are resubmitted; short transfers continue from
// where they stopped; a read that returns 0 is end of file (the caller zero-fills).
#include "io/sync_io.h"

#include <fcntl.h>
#include <liburing.h>
#include <sched.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

namespace blksnap::io {
namespace {


constexpr unsigned kRingDepth = 4;

// ---- psync ------------------------------------------------------------------------------------

Result<size_t> PsyncRead(int fd, uint64_t offset, std::span<uint8_t> buf) {
  size_t done = 0;
  while (done < buf.size()) {
    const ssize_t n =
        ::pread(fd, buf.data() + done, buf.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        sched_yield();
        continue;
      }
      return Status::FromErrno("pread");
    }
    if (n == 0) break;  // end of file
    done += static_cast<size_t>(n);
  }
  return done;
}

Status PsyncWrite(int fd, uint64_t offset, std::span<const uint8_t> buf, bool fua) {
  bool dsync_flag = fua;
  size_t done = 0;
  while (done < buf.size()) {
    iovec iov{const_cast<uint8_t*>(buf.data() + done), buf.size() - done};
    const off_t pos = static_cast<off_t>(offset + done);
    const ssize_t n =
        dsync_flag ? ::pwritev2(fd, &iov, 1, pos, RWF_DSYNC) : ::pwritev(fd, &iov, 1, pos);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        sched_yield();
        continue;
      }
      if (dsync_flag && (errno == EOPNOTSUPP || errno == ENOSYS)) {
        dsync_flag = false;  // old kernel: write, then fdatasync below
        continue;
      }
      return Status::FromErrno("pwrite");
    }
    if (n == 0) return Status::Error(EIO, "pwrite wrote nothing");
    done += static_cast<size_t>(n);
  }
  if (fua && !dsync_flag) {
    while (::fdatasync(fd) != 0) {
      if (errno != EINTR) return Status::FromErrno("fdatasync");
    }
  }
  return Status::Ok();
}

Status PsyncSync(int fd) {
  while (::fdatasync(fd) != 0) {
    if (errno != EINTR) return Status::FromErrno("fdatasync");
  }
  return Status::Ok();
}

class PsyncIo final : public SyncIo {
 public:
  const char* name() const override { return "psync"; }
  Result<size_t> Read(int fd, uint64_t offset, std::span<uint8_t> buf) override {
    return PsyncRead(fd, offset, buf);
  }
  Status Write(int fd, uint64_t offset, std::span<const uint8_t> buf, bool fua) override {
    return PsyncWrite(fd, offset, buf, fua);
  }
  Status Sync(int fd) override { return PsyncSync(fd); }
};

// ---- io_uring ---------------------------------------------------------------------------------

// One thread's ring: created on first use, destroyed when the thread exits. Move-only by
// construction (it lives only in a thread_local).
class ThreadRing {
 public:
  ThreadRing() = default;
  ThreadRing(const ThreadRing&) = delete;
  ThreadRing& operator=(const ThreadRing&) = delete;
  ~ThreadRing() {
    if (ready_) io_uring_queue_exit(&ring_);
  }

  // The ring, or nullptr (with errnum) if this thread cannot have one.
  io_uring* Get(int* errnum) {
    if (!tried_) {
      tried_ = true;
      io_uring_params params{};
      params.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
      int ret = io_uring_queue_init_params(kRingDepth, &ring_, &params);
      if (ret == -EINVAL) {  // kernel older than 6.1: plain ring
        params = io_uring_params{};
        ret = io_uring_queue_init_params(kRingDepth, &ring_, &params);
      }
      if (ret < 0) {
        error_ = -ret;
      } else {
        ready_ = true;
      }
    }
    *errnum = error_;
    return ready_ ? &ring_ : nullptr;
  }

 private:
  io_uring ring_{};
  bool tried_ = false;
  bool ready_ = false;
  int error_ = 0;
};

thread_local ThreadRing tls_ring;

// Submits the one prepared SQE and returns its completion result (res), retrying interrupted
// waits. Exactly one request is in flight on the ring at any time.
int SubmitAndWait(io_uring* ring) {
  int ret = io_uring_submit_and_wait(ring, 1);
  while (ret < 0) {
    if (ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) return ret;
    if (ret != -EINTR) sched_yield();
    // The SQE may or may not have been consumed: resubmit only what is still pending.
    ret = io_uring_sq_ready(ring) > 0 ? io_uring_submit_and_wait(ring, 1) : 0;
  }
  io_uring_cqe* cqe = nullptr;
  do {
    ret = io_uring_wait_cqe(ring, &cqe);
  } while (ret == -EINTR || ret == -EAGAIN);
  if (ret < 0) return ret;
  const int res = cqe->res;
  io_uring_cqe_seen(ring, cqe);
  return res;
}

class UringIo final : public SyncIo {
 public:
  const char* name() const override { return "io_uring"; }

  Result<size_t> Read(int fd, uint64_t offset, std::span<uint8_t> buf) override {
    int err = 0;
    io_uring* ring = tls_ring.Get(&err);
    if (!ring) return PsyncRead(fd, offset, buf);
    size_t done = 0;
    while (done < buf.size()) {
      io_uring_sqe* sqe = io_uring_get_sqe(ring);
      if (!sqe) return Status::Error(EBUSY, "io_uring: no free SQE");
      const size_t len = std::min<size_t>(buf.size() - done, kMaxRw);
      io_uring_prep_read(sqe, fd, buf.data() + done, static_cast<unsigned>(len), offset + done);
      const int res = SubmitAndWait(ring);
      if (res == -EINTR || res == -EAGAIN) continue;
      if (res < 0) return Status::Error(-res, "io_uring read");
      if (res == 0) break;  // end of file
      done += static_cast<size_t>(res);
    }
    return done;
  }

  Status Write(int fd, uint64_t offset, std::span<const uint8_t> buf, bool fua) override {
    int err = 0;
    io_uring* ring = tls_ring.Get(&err);
    if (!ring) return PsyncWrite(fd, offset, buf, fua);
    size_t done = 0;
    while (done < buf.size()) {
      io_uring_sqe* sqe = io_uring_get_sqe(ring);
      if (!sqe) return Status::Error(EBUSY, "io_uring: no free SQE");
      const size_t len = std::min<size_t>(buf.size() - done, kMaxRw);
      io_uring_prep_write(sqe, fd, buf.data() + done, static_cast<unsigned>(len), offset + done);
      if (fua) sqe->rw_flags = RWF_DSYNC;
      const int res = SubmitAndWait(ring);
      if (res == -EINTR || res == -EAGAIN) continue;
      if (res < 0) return Status::Error(-res, "io_uring write");
      if (res == 0) return Status::Error(EIO, "io_uring write wrote nothing");
      done += static_cast<size_t>(res);
    }
    return Status::Ok();
  }

  Status Sync(int fd) override {
    int err = 0;
    io_uring* ring = tls_ring.Get(&err);
    if (!ring) return PsyncSync(fd);
    for (;;) {
      io_uring_sqe* sqe = io_uring_get_sqe(ring);
      if (!sqe) return Status::Error(EBUSY, "io_uring: no free SQE");
      io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
      const int res = SubmitAndWait(ring);
      if (res == -EINTR || res == -EAGAIN) continue;
      if (res < 0) return Status::Error(-res, "io_uring fdatasync");
      return Status::Ok();
    }
  }

 private:
  // The kernel caps one transfer at MAX_RW_COUNT (INT_MAX rounded down to a page) anyway.
  static constexpr size_t kMaxRw = 1u << 30;
};

}  // namespace

std::unique_ptr<SyncIo> MakePsyncIo() { return std::make_unique<PsyncIo>(); }

Result<std::unique_ptr<SyncIo>> MakeUringIo() {
  // Probe with this thread's ring (kept for its later I/O) and check the opcodes we use.
  int err = 0;
  io_uring* ring = tls_ring.Get(&err);
  if (!ring) return Status::Error(err ? err : ENOSYS, "io_uring ring setup");
  io_uring_probe* probe = io_uring_get_probe_ring(ring);
  if (probe) {
    const bool ok = io_uring_opcode_supported(probe, IORING_OP_READ) &&
                    io_uring_opcode_supported(probe, IORING_OP_WRITE) &&
                    io_uring_opcode_supported(probe, IORING_OP_FSYNC);
    io_uring_free_probe(probe);
    if (!ok) return Status::Error(ENOTSUP, "io_uring lacks READ/WRITE/FSYNC");
  }
  return std::unique_ptr<SyncIo>(std::make_unique<UringIo>());
}

Result<std::unique_ptr<SyncIo>> MakeSyncIo(IoEngine engine) {
  if (engine == IoEngine::kAuto) {
    const char* env = std::getenv("BLKSNAP_IO_ENGINE");
    const std::string choice = env ? env : "";
    if (choice == "psync") return MakePsyncIo();
    if (choice == "io_uring") return MakeUringIo();
    if (!choice.empty() && choice != "auto") {
      return Status::Error(EINVAL, "BLKSNAP_IO_ENGINE must be psync, io_uring or auto");
    }
    // psync by default: each call here is one synchronous request, and a per-thread ring
    // with one request in flight measured slower than pread/pwrite (buffered writes are punted
    // to io-wq workers, a thread hop per request): 4 KiB random reads 2.3x, writes 3.1x and
    // 1 MiB reads 30x faster over NBD with psync (docs/performance.md). io_uring stays
    // available (kIoUring, BLKSNAP_IO_ENGINE=io_uring) for where it wins.
    return MakePsyncIo();
  }
  if (engine == IoEngine::kIoUring) return MakeUringIo();
  return MakePsyncIo();
}

}  // namespace blksnap::io
