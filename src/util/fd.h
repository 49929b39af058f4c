// Fd: the one owner of a file descriptor in blksnap (move-only, closed on destruction).
//
//   Fd fd(::open(path, O_RDWR | O_CLOEXEC));
//   if (!fd.valid()) return Status::FromErrno("open " + path);
//   ::pread(fd.get(), ...);
//   int raw = fd.Release();  // hand it to something that closes it itself
//
// Not thread-safe as an object (like any value); the descriptor itself may be used from many
// threads while the Fd lives.
#pragma once

#include <unistd.h>

#include <utility>

namespace blksnap {

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) noexcept : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) {
      Close();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  ~Fd() { Close(); }

  int get() const noexcept { return fd_; }
  bool valid() const noexcept { return fd_ >= 0; }
  // Gives up ownership: returns the descriptor (-1 if none) and leaves this Fd empty.
  [[nodiscard]] int Release() noexcept { return std::exchange(fd_, -1); }
  void Close() noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

}  // namespace blksnap
