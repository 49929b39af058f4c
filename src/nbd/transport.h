// Byte transports under the NBD protocol code: sockets, TLS sessions, memory (tests, fuzzing).
//
// The handshake and the transmission code only see Transport and InputBuffer, so they can be
// fed bytes without a socket. Thread safety: one reader and one writer may use a Transport at
// the same time (the session serialises readers with its receive lock and writers with its send
// lock); Shutdown() may be called from any thread and makes blocked calls return.
#pragma once

#include <sys/uio.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "blksnap/status.h"
#include "util/fd.h"
#include "util/mutex.h"

namespace blksnap::nbd {

class Transport {
 public:
  virtual ~Transport() = default;
  // Reads at least one and at most buf.size() bytes. ECONNRESET on end of stream, ETIMEDOUT
  // when the socket's receive timeout (SO_RCVTIMEO) passed without data.
  virtual Result<size_t> ReadSome(std::span<uint8_t> buf) = 0;
  // Writes every byte of every iovec (one syscall when the kernel takes it all). ETIMEDOUT
  // when the socket's send timeout (SO_SNDTIMEO) passed without progress.
  virtual Status WriteAll(std::span<const iovec> iov) = 0;
  // Makes blocked and future reads and writes fail; idempotent, any thread.
  virtual void Shutdown() = 0;
  // The socket under the transport, or -1.
  virtual int fd() const { return -1; }
};

// A connected stream socket (Unix or TCP). Owns the fd.
class SocketTransport : public Transport {
 public:
  explicit SocketTransport(Fd fd) : fd_(std::move(fd)) {}
  Result<size_t> ReadSome(std::span<uint8_t> buf) override;
  Status WriteAll(std::span<const iovec> iov) override;
  void Shutdown() override;
  int fd() const override { return fd_.get(); }

 private:
  Fd fd_;
};

// Reads from a fixed byte string and records everything written (tests, fuzzing).
class MemoryTransport : public Transport {
 public:
  explicit MemoryTransport(std::span<const uint8_t> input) : input_(input) {}
  Result<size_t> ReadSome(std::span<uint8_t> buf) override EXCLUDES(mu_);
  Status WriteAll(std::span<const iovec> iov) override EXCLUDES(mu_);
  void Shutdown() override EXCLUDES(mu_);
  // Everything written so far (copy, thread-safe).
  std::vector<uint8_t> output() const EXCLUDES(mu_);
  void set_record_output(bool record) EXCLUDES(mu_) {
    MutexLock lock(mu_);
    record_ = record;
  }

 private:
  mutable Mutex mu_;  // guards everything below but the input bytes themselves (never written)
  const std::span<const uint8_t> input_;
  size_t pos_ GUARDED_BY(mu_) = 0;
  bool record_ GUARDED_BY(mu_) = true;
  bool shut_ GUARDED_BY(mu_) = false;
  std::vector<uint8_t> output_ GUARDED_BY(mu_);
};

// A read buffer over a Transport: small reads (request headers) are served from one large
// recv, payloads larger than what is buffered go straight into the caller's memory.
// Stall limit: after StartRequest(), the reads of one request may wait on the transport for at
// most the stall timeout in all (checked before each syscall, so the fast path of buffered
// headers reads no clock); past it they fail with ETIMEDOUT. The socket's SO_RCVTIMEO bounds a
// single blocked recv.
// Not thread-safe: callers hold the session's receive lock.
class InputBuffer {
 public:
  explicit InputBuffer(size_t capacity = 128 << 10) : buf_(capacity) {}
  // Fills out completely or fails (ECONNRESET on EOF).
  Status ReadExact(Transport& t, std::span<uint8_t> out);
  // Reads and drops n bytes.
  Status Skip(Transport& t, uint64_t n);
  // Waits for more bytes with one read into the (empty) buffer, without a stall limit.
  Status Fill(Transport& t);
  size_t buffered() const { return end_ - pos_; }

  // 0 = no stall limit.
  void set_stall_timeout(std::chrono::milliseconds t) { stall_timeout_ = t; }
  // A request begins: its stall clock starts at the next read that has to wait.
  void StartRequest() { started_ = {}; }

 private:
  using Clock = std::chrono::steady_clock;
  Result<size_t> Pull(Transport& t, std::span<uint8_t> buf);

  std::vector<uint8_t> buf_;
  size_t pos_ = 0;
  size_t end_ = 0;
  std::chrono::milliseconds stall_timeout_{0};
  Clock::time_point started_{};
};

}  // namespace blksnap::nbd
