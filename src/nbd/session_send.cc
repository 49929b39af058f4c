// The NBD session's replies (Session::Send*, declared in session.h).
//
// Replies: one thread at a time writes to the socket (the sender). A small reply (up to
// kQueuedReplyMax bytes: every write, flush, trim and zero reply, errors, 4 KiB reads) of a
// worker that finds a sender at work is copied into queued_ and the worker goes on; the sender
// writes whatever queued up, in one writev, before it lets go, so queued_ is empty whenever no
// one is sending. Larger replies (payload buffers the worker reuses) wait for the sender role.
// This replaced a plain mutex around the write: with copy-on-write completing a group-commit
// round at once, 32 workers queued on it, and a sender that woke the client was often
// preempted by it while holding the mutex (a lock convoy: a third of the daemon's context
// switches on the host, docs/performance.md). queued_ is capped (kQueuedBytesMax; above it a
// worker waits as for a large reply), so a client that stops reading replies cannot grow it.
// A sender that lets go wakes one worker waiting for the role (not all: a stampede at every
// handoff halved image reads of many large replies) and every worker waiting for queue room.
#include <cstring>
#include <string>
#include <vector>

#include "nbd/reply.h"
#include "nbd/session.h"

namespace blksnap::nbd {
namespace {

// Replies up to this many bytes may be queued for the sender instead of waiting for it.
constexpr size_t kQueuedReplyMax = 4096 + 64;
constexpr size_t kQueuedBytesMax = 256u << 10;

}  // namespace

void Session::SendSimple(uint64_t cookie, uint32_t error, std::span<const uint8_t> payload) {
  uint8_t hdr[kSimpleReplyHeaderSize];
  PutSimpleReplyHeader(hdr, error, cookie);
  iovec iov[2] = {{hdr, sizeof hdr}, {const_cast<uint8_t*>(payload.data()), payload.size()}};
  Send(std::span<const iovec>(iov, payload.empty() ? 1 : 2));
}

void Session::SendDone(uint64_t cookie) {
  uint8_t hdr[kStructuredReplyHeaderSize];
  PutChunkHeader(hdr, kReplyFlagDone, kReplyTypeNone, cookie, 0);
  iovec iov{hdr, sizeof hdr};
  Send(std::span<const iovec>(&iov, 1));
}

void Session::SendError(uint64_t cookie, uint32_t error, std::string_view message) {
  if (!negotiated_.structured) return SendSimple(cookie, error);
  message = message.substr(0, 1024);
  uint8_t hdr[kErrorChunkHeaderSize];
  PutErrorChunkHeader(hdr, cookie, error, message.size());
  iovec iov[2] = {{hdr, sizeof hdr}, {const_cast<char*>(message.data()), message.size()}};
  Send(std::span<const iovec>(iov, message.empty() ? 1 : 2));
}

void Session::Send(std::span<const iovec> iov) {
  size_t bytes = 0;
  for (const iovec& v : iov) bytes += v.iov_len;
  std::vector<uint8_t> batch;
  {
    MutexLock lock(send_mu_);
    const bool small = bytes <= kQueuedReplyMax;
    while (sending_) {
      if (small && queued_.size() + bytes <= kQueuedBytesMax) {
        for (const iovec& v : iov) {
          const auto* p = static_cast<const uint8_t*>(v.iov_base);
          queued_.insert(queued_.end(), p, p + v.iov_len);
        }
        return;  // the sender writes it before it lets go
      }
      // A large reply waits for the sender role, woken alone (a wake-all would stampede every
      // waiting worker at each handoff: image reads of many 256 KiB replies lost half their
      // speed that way); a small one for room in queued_.
      if (small) {
        ++room_waiters_;
        room_cv_.Wait(send_mu_);
        --room_waiters_;
      } else {
        ++sender_waiters_;
        sender_cv_.Wait(send_mu_);
        --sender_waiters_;
      }
    }
    sending_ = true;
    batch.swap(queued_);
  }
  SendAsSender(batch, iov);
}

void Session::SendAsSender(std::vector<uint8_t>& batch, std::span<const iovec> first) {
  std::vector<iovec> iov;  // only when queued bytes go with this thread's own reply
  for (;;) {
    std::span<const iovec> out = first;
    const iovec queued{batch.data(), batch.size()};
    if (!batch.empty() && first.empty()) {
      out = std::span<const iovec>(&queued, 1);
    } else if (!batch.empty()) {
      iov.assign(1, queued);
      iov.insert(iov.end(), first.begin(), first.end());
      out = iov;
    }
    first = {};
    Status st = out.empty() ? Status::Ok() : transport_.WriteAll(out);
    if (!st.ok()) {  // the client went away mid-reply, or stopped reading replies
      if (st.errnum() == ETIMEDOUT) Log(std::string(st.message()));
      Fail();
    }
    batch.clear();
    MutexLock lock(send_mu_);
    if (queued_.empty()) {
      sending_ = false;
      if (sender_waiters_ > 0) sender_cv_.Signal();  // it becomes the sender
      if (room_waiters_ > 0) room_cv_.SignalAll();   // the first of them does, the rest queue
      return;
    }
    batch.swap(queued_);
    if (room_waiters_ > 0) room_cv_.SignalAll();  // room in queued_ again
  }
}

}  // namespace blksnap::nbd
