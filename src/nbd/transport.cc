// Transports: socket and memory implementations, and the input buffer (see transport.h).
//
// SocketTransport uses blocking recv/sendmsg with MSG_NOSIGNAL (a client that disconnects
// mid-reply gives EPIPE, never SIGPIPE). Shutdown() is shutdown(SHUT_RDWR), which wakes every
// thread blocked on the socket; the fd itself is closed only by the destructor, after all
// threads using the transport are gone, so the fd number cannot be reused under them. EAGAIN
// from a blocking socket means SO_RCVTIMEO / SO_SNDTIMEO expired and is reported as ETIMEDOUT.
#include "nbd/transport.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace blksnap::nbd {

Result<size_t> SocketTransport::ReadSome(std::span<uint8_t> buf) {
  for (;;) {
    ssize_t n = ::recv(fd_.get(), buf.data(), buf.size(), 0);
    if (n > 0) return static_cast<size_t>(n);
    if (n == 0) return Status::Error(ECONNRESET, "peer closed the connection");
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      return Status::Error(ETIMEDOUT, "no data within the receive timeout");
    }
    return Status::FromErrno("recv");
  }
}

Status SocketTransport::WriteAll(std::span<const iovec> iov_in) {
  // Copy the iovec array only when a partial write forces us to advance through it.
  constexpr size_t kMaxIov = 64;
  iovec local[kMaxIov];
  size_t count = std::min(iov_in.size(), kMaxIov);
  std::copy_n(iov_in.begin(), count, local);
  size_t next_in = count;
  iovec* iov = local;
  while (count > 0 || next_in < iov_in.size()) {
    if (count == 0) {
      count = std::min(iov_in.size() - next_in, kMaxIov);
      std::copy_n(iov_in.begin() + next_in, count, local);
      next_in += count;
      iov = local;
    }
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = count;
    ssize_t n = ::sendmsg(fd_.get(), &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        return Status::Error(ETIMEDOUT, "the client read nothing within the send timeout");
      }
      return Status::FromErrno("sendmsg");
    }
    size_t left = static_cast<size_t>(n);
    while (count > 0 && left >= iov->iov_len) {
      left -= iov->iov_len;
      ++iov;
      --count;
    }
    if (count > 0 && left > 0) {
      iov->iov_base = static_cast<uint8_t*>(iov->iov_base) + left;
      iov->iov_len -= left;
    }
  }
  return Status::Ok();
}

void SocketTransport::Shutdown() {
  if (fd_.valid()) ::shutdown(fd_.get(), SHUT_RDWR);
}

Result<size_t> MemoryTransport::ReadSome(std::span<uint8_t> buf) {
  MutexLock lock(mu_);
  if (shut_) return Status::Error(ESHUTDOWN, "transport shut down");
  if (pos_ >= input_.size()) return Status::Error(ECONNRESET, "end of input");
  size_t n = std::min(buf.size(), input_.size() - pos_);
  std::memcpy(buf.data(), input_.data() + pos_, n);
  pos_ += n;
  return n;
}

Status MemoryTransport::WriteAll(std::span<const iovec> iov) {
  MutexLock lock(mu_);
  if (shut_) return Status::Error(EPIPE, "transport shut down");
  if (!record_) return Status::Ok();
  for (const iovec& v : iov) {
    const auto* p = static_cast<const uint8_t*>(v.iov_base);
    output_.insert(output_.end(), p, p + v.iov_len);
  }
  return Status::Ok();
}

void MemoryTransport::Shutdown() {
  MutexLock lock(mu_);
  shut_ = true;
}

std::vector<uint8_t> MemoryTransport::output() const {
  MutexLock lock(mu_);
  return output_;
}

Result<size_t> InputBuffer::Pull(Transport& t, std::span<uint8_t> buf) {
  if (stall_timeout_.count() > 0) {
    const auto now = Clock::now();
    if (started_ == Clock::time_point{}) {
      started_ = now;
    } else if (now - started_ >= stall_timeout_) {
      return Status::Error(ETIMEDOUT, "request stalled: the client stopped sending it");
    }
  }
  return t.ReadSome(buf);
}

Status InputBuffer::Fill(Transport& t) {
  if (buffered() > 0) return Status::Ok();
  BLKSNAP_ASSIGN_OR_RETURN(size_t n, t.ReadSome(buf_));
  pos_ = 0;
  end_ = n;
  return Status::Ok();
}

Status InputBuffer::ReadExact(Transport& t, std::span<uint8_t> out) {
  if (out.empty()) return Status::Ok();
  size_t done = std::min(out.size(), buffered());
  if (done > 0) std::memcpy(out.data(), buf_.data() + pos_, done);
  pos_ += done;
  while (done < out.size()) {
    const size_t want = out.size() - done;
    if (want >= buf_.size() / 2) {
      // Large payload: read straight into the destination.
      BLKSNAP_ASSIGN_OR_RETURN(size_t n, Pull(t, out.subspan(done)));
      done += n;
      continue;
    }
    BLKSNAP_ASSIGN_OR_RETURN(size_t n, Pull(t, buf_));
    pos_ = 0;
    end_ = n;
    const size_t take = std::min(want, n);
    std::memcpy(out.data() + done, buf_.data(), take);
    pos_ = take;
    done += take;
  }
  return Status::Ok();
}

Status InputBuffer::Skip(Transport& t, uint64_t n) {
  const size_t from_buf = static_cast<size_t>(std::min<uint64_t>(n, buffered()));
  pos_ += from_buf;
  n -= from_buf;
  while (n > 0) {
    BLKSNAP_ASSIGN_OR_RETURN(size_t got, Pull(t, buf_));
    const size_t take = static_cast<size_t>(std::min<uint64_t>(n, got));
    pos_ = take;
    end_ = got;
    n -= take;
  }
  return Status::Ok();
}

}  // namespace blksnap::nbd
