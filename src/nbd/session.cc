// NBD transmission phase: request dispatch, replies, block status.
//
// Threading (leader/follower, as in nbdkit's multi-threaded model, but with a shared input
// buffer): each connection runs N worker threads (default 8, BLKSNAP_NBD_WORKERS overrides).
// A worker takes recv_mu_, reads one request header (and a write's payload) from the
// connection's InputBuffer, releases recv_mu_ and executes the request on the BlockDevice
// itself, then sends the reply under send_mu_ with one writev (header + payload). So a request
// never changes thread between the socket and the device, many requests are in flight at once,
// replies go out in completion order, and the only locks are per connection (nothing global
// on the data path). The InputBuffer serves a burst of pipelined request headers from a single
// recv(), so a queue depth of 32 costs far fewer than 32 recv syscalls. Each worker keeps its
// buffers (payload, chunk headers, iovecs, extents) across requests.
//
// Stopping: NBD_CMD_DISC or end of stream sets stop_; workers finish the request they hold,
// then exit. A protocol violation (bad magic) or a failed send also shuts the socket down so
// that every worker wakes up. The Server closes the fd after Run() returns.
//
// Errors: requests are validated first (flags, read-only, range, payload size) and answered
// with the spec's errors; device errors go through ErrnoToNbdError. With structured replies
// an error is one NBD_REPLY_TYPE_ERROR chunk carrying the device's message.
#include "nbd/session.h"

#include <algorithm>
#include <cstring>
#include <thread>
#include <vector>

#include "nbd/extents.h"

namespace blksnap::nbd {
namespace {

// Reads at least this long probe the device for holes and answer them with OFFSET_HOLE chunks
// (a 4 KiB random read should not pay for a block-status lookup).
constexpr uint32_t kHoleProbeMin = 64u << 10;
// Most read-map bytes looked at per blksnap:cbt chunk (the reply may cover less than asked).
constexpr uint64_t kMaxCbtBlocksPerRequest = 1u << 20;
constexpr size_t kZeroBufferSize = 1u << 20;

void PutChunkHeader(uint8_t* p, uint16_t flags, uint16_t type, uint64_t cookie, uint32_t len) {
  PutBe32(p, kStructuredReplyMagic);
  PutBe16(p + 4, flags);
  PutBe16(p + 6, type);
  PutBe64(p + 8, cookie);
  PutBe32(p + 16, len);
}

}  // namespace

// A piece of a structured read reply: data or a hole, in offset order.
struct ReadPiece {
  uint64_t offset;
  uint32_t length;
  bool hole;
};

struct Session::Scratch {
  std::vector<ReadPiece> pieces;
  std::vector<uint8_t> data;
  std::vector<uint8_t> headers;
  std::vector<iovec> iov;
  std::vector<WireExtent> extents;
  std::vector<uint8_t> map;
};

Session::Session(Transport& transport, InputBuffer& in, const Negotiated& negotiated)
    : transport_(transport),
      in_(in),
      negotiated_(negotiated),
      device_(*negotiated.entry->device),
      caps_(negotiated.entry->device->capabilities()),
      read_only_(negotiated.entry->read_only()) {}

void Session::Run(int workers) {
  std::vector<std::thread> threads;
  for (int i = 1; i < workers; ++i) threads.emplace_back([this] { WorkerLoop(); });
  WorkerLoop();
  for (auto& t : threads) t.join();
}

void Session::Fail() {
  stop_.store(true, std::memory_order_relaxed);
  transport_.Shutdown();
}

void Session::WorkerLoop() {
  Scratch s;
  Request req;
  uint32_t pre_error = 0;
  while (ReadRequest(&req, s, &pre_error)) {
    Handle(req, s, pre_error);
    // Do not let one huge request pin its memory for the connection's lifetime.
    if (s.data.capacity() > (4u << 20)) std::vector<uint8_t>().swap(s.data);
  }
}

bool Session::ReadRequest(Request* req, Scratch& s, uint32_t* pre_error) {
  std::lock_guard lock(recv_mu_);
  if (stop_.load(std::memory_order_relaxed)) return false;
  uint8_t hdr[kRequestHeaderSize];
  if (!in_.ReadExact(transport_, hdr).ok()) {
    stop_.store(true, std::memory_order_relaxed);
    return false;
  }
  if (!ParseRequestHeader(std::span<const uint8_t, kRequestHeaderSize>(hdr), req)) {
    Fail();  // we cannot resynchronise with a client that sends garbage
    return false;
  }
  *pre_error = 0;
  if (req->type == kCmdDisc) {
    stop_.store(true, std::memory_order_relaxed);
    return false;
  }
  if (req->type == kCmdWrite) {
    if (req->length > kMaxPayload) {
      // Stay in sync with the stream: drop the payload, then fail the request.
      if (!in_.Skip(transport_, req->length).ok()) {
        stop_.store(true, std::memory_order_relaxed);
        return false;
      }
      *pre_error = kNbdEinval;
      return true;
    }
    s.data.resize(req->length);
    if (!in_.ReadExact(transport_, s.data).ok()) {
      stop_.store(true, std::memory_order_relaxed);
      return false;
    }
  }
  return true;
}

uint32_t Session::Validate(const Request& r) const {
  uint16_t allowed = kCmdFlagFua;
  switch (r.type) {
    case kCmdRead:
      if (negotiated_.structured) allowed |= kCmdFlagDf;
      break;
    case kCmdWriteZeroes:
      allowed |= kCmdFlagNoHole | kCmdFlagFastZero;
      break;
    case kCmdBlockStatus:
      allowed |= kCmdFlagReqOne;
      break;
    case kCmdWrite:
    case kCmdFlush:
    case kCmdTrim:
    case kCmdCache:
      break;
    default:
      return kNbdEinval;  // unknown command
  }
  if (r.flags & ~allowed) return kNbdEinval;
  const bool writes = r.type == kCmdWrite || r.type == kCmdTrim || r.type == kCmdWriteZeroes;
  if (writes && read_only_) return kNbdEperm;
  if (r.type == kCmdFlush) return 0;
  const uint64_t size = device_.size();
  if (r.offset > size || r.length > size - r.offset) {
    return (r.type == kCmdWrite || r.type == kCmdWriteZeroes) ? kNbdEnospc : kNbdEinval;
  }
  if (r.type == kCmdRead && r.length > kMaxPayload) {
    return negotiated_.structured ? kNbdEoverflow : kNbdEinval;
  }
  if (r.type == kCmdBlockStatus) {
    if (!negotiated_.structured || !(negotiated_.base_allocation || negotiated_.cbt)) {
      return kNbdEinval;  // no meta context selected
    }
    if (r.length == 0) return kNbdEinval;
  }
  return 0;
}

void Session::Handle(const Request& r, Scratch& s, uint32_t pre_error) {
  uint32_t err = pre_error ? pre_error : Validate(r);
  if (err) {
    SendError(r.cookie, err, "invalid request");
    return;
  }
  const bool fua = r.flags & kCmdFlagFua;
  Status st;
  switch (r.type) {
    case kCmdRead:
      HandleRead(r, s);
      return;
    case kCmdBlockStatus:
      HandleBlockStatus(r, s);
      return;
    case kCmdWrite:
      st = device_.Write(r.offset, s.data, fua && caps_.fua ? kWriteFua : 0);
      if (st.ok() && fua && !caps_.fua) st = device_.Flush();
      break;
    case kCmdFlush:
      st = device_.Flush();
      break;
    case kCmdTrim:
      if (caps_.trim) st = device_.Trim(r.offset, r.length);  // else: a hint we may ignore
      if (st.ok() && fua) st = device_.Flush();
      break;
    case kCmdCache:
      break;  // advisory; the range was validated
    case kCmdWriteZeroes: {
      const bool fast = r.flags & kCmdFlagFastZero;
      if (fast && !(caps_.write_zeroes && caps_.fast_zero)) {
        st = Status::Error(ENOTSUP, "write zeroes would not be fast");
      } else if (caps_.write_zeroes) {
        uint32_t zflags = 0;
        if (r.flags & kCmdFlagNoHole) zflags |= kZeroNoHole;
        if (fast) zflags |= kZeroFast;
        st = device_.WriteZeroes(r.offset, r.length, zflags);
      } else {
        static const std::vector<uint8_t> kZeroes(kZeroBufferSize, 0);
        for (uint64_t done = 0; done < r.length && st.ok();) {
          const size_t n =
              static_cast<size_t>(std::min<uint64_t>(r.length - done, kZeroBufferSize));
          st = device_.Write(r.offset + done, std::span<const uint8_t>(kZeroes.data(), n), 0);
          done += n;
        }
      }
      if (st.ok() && fua) st = device_.Flush();
      break;
    }
  }
  if (!st.ok()) {
    SendError(r.cookie, ErrnoToNbdError(st.errnum()), st.message());
  } else if (negotiated_.structured) {
    SendDone(r.cookie);
  } else {
    SendSimple(r.cookie, 0);
  }
}

void Session::HandleRead(const Request& r, Scratch& s) {
  const bool structured = negotiated_.structured;
  if (r.length == 0) {
    if (structured)
      SendDone(r.cookie);
    else
      SendSimple(r.cookie, 0);
    return;
  }
  s.data.resize(r.length);
  std::vector<ReadPiece>& pieces = s.pieces;
  pieces.clear();
  if (structured && caps_.block_status && r.length >= kHoleProbeMin && !(r.flags & kCmdFlagDf)) {
    auto ext = device_.BlockStatus(r.offset, r.length);
    if (ext.ok()) {
      uint64_t pos = r.offset;
      for (const Extent& e : *ext) {
        if (pos >= r.offset + r.length) break;
        if (e.offset > pos || e.offset + e.length <= pos) break;
        const uint64_t end = std::min(e.offset + e.length, r.offset + r.length);
        const bool hole = e.flags & kExtentZero;
        if (!pieces.empty() && pieces.back().hole == hole) {
          pieces.back().length += static_cast<uint32_t>(end - pos);
        } else {
          pieces.push_back(ReadPiece{pos, static_cast<uint32_t>(end - pos), hole});
        }
        pos = end;
      }
      if (pos < r.offset + r.length) {
        const uint32_t rest = static_cast<uint32_t>(r.offset + r.length - pos);
        if (!pieces.empty() && !pieces.back().hole)
          pieces.back().length += rest;
        else
          pieces.push_back(ReadPiece{pos, rest, false});
      }
    }
  }
  if (pieces.empty()) pieces.push_back(ReadPiece{r.offset, r.length, false});

  for (const ReadPiece& p : pieces) {
    if (p.hole) continue;
    Status st =
        device_.Read(p.offset, std::span<uint8_t>(s.data.data() + (p.offset - r.offset), p.length));
    if (!st.ok()) {
      SendError(r.cookie, ErrnoToNbdError(st.errnum()), st.message());
      return;
    }
  }

  if (!structured) {
    uint8_t hdr[kSimpleReplyHeaderSize];
    PutBe32(hdr, kSimpleReplyMagic);
    PutBe32(hdr + 4, 0);
    PutBe64(hdr + 8, r.cookie);
    iovec iov[2] = {{hdr, sizeof hdr}, {s.data.data(), r.length}};
    Send(iov);
    return;
  }
  // One chunk per piece; the last carries NBD_REPLY_FLAG_DONE. Chunk headers + the offset (and
  // hole size) fields are 32 bytes per piece in s.headers.
  constexpr size_t kPerPiece = 32;
  s.headers.resize(pieces.size() * kPerPiece);
  s.iov.clear();
  for (size_t i = 0; i < pieces.size(); ++i) {
    const ReadPiece& p = pieces[i];
    uint8_t* h = s.headers.data() + i * kPerPiece;
    const uint16_t flags = i + 1 == pieces.size() ? kReplyFlagDone : 0;
    if (p.hole) {
      PutChunkHeader(h, flags, kReplyTypeOffsetHole, r.cookie, 12);
      PutBe64(h + 20, p.offset);
      PutBe32(h + 28, p.length);
      s.iov.push_back({h, 32});
    } else {
      PutChunkHeader(h, flags, kReplyTypeOffsetData, r.cookie, 8 + p.length);
      PutBe64(h + 20, p.offset);
      s.iov.push_back({h, 28});
      s.iov.push_back({s.data.data() + (p.offset - r.offset), p.length});
    }
  }
  Send(s.iov);
}

Status Session::AppendAllocation(const Request& r, Scratch& s) {
  s.extents.clear();
  if (caps_.block_status) {
    BLKSNAP_ASSIGN_OR_RETURN(std::vector<Extent> ext, device_.BlockStatus(r.offset, r.length));
    s.extents = AllocationExtents(ext, r.offset, r.length, kMaxExtentsPerChunk);
  }
  if (s.extents.empty()) s.extents.push_back(WireExtent{r.length, 0});  // "all data"
  return Status::Ok();
}

Status Session::AppendCbt(const Request& r, Scratch& s) {
  s.extents.clear();
  const CbtSource& cbt = *negotiated_.entry->options.cbt;
  const CbtInfo info = cbt.cbt_info();
  const uint32_t bs = info.block_size;
  if (bs != 0 && (bs & (bs - 1)) == 0) {
    const uint64_t first = r.offset / bs;
    const uint64_t last = (r.offset + r.length - 1) / bs;
    if (first < info.block_count) {
      const uint64_t count =
          std::min({last - first + 1, info.block_count - first, kMaxCbtBlocksPerRequest});
      s.map.resize(count);
      BLKSNAP_RETURN_IF_ERROR(cbt.ReadCbtMap(first, s.map));
      s.extents = CbtExtents(s.map, first, bs, r.offset, r.length, kMaxExtentsPerChunk);
    }
  }
  // Past the tracked range (or no tracking geometry): report "unchanged" for the rest.
  if (s.extents.empty()) s.extents.push_back(WireExtent{r.length, 0});
  return Status::Ok();
}

void Session::HandleBlockStatus(const Request& r, Scratch& s) {
  // Both chunks are built in s.headers before anything is sent, so an error can still be
  // reported as the only chunk.
  s.headers.clear();
  std::vector<size_t> chunk_starts;
  auto add_chunk = [&](uint32_t context_id) {
    if (r.flags & kCmdFlagReqOne) KeepFirstExtent(&s.extents);
    const size_t start = s.headers.size();
    const uint32_t payload = static_cast<uint32_t>(4 + 8 * s.extents.size());
    s.headers.resize(start + kStructuredReplyHeaderSize + payload);
    uint8_t* h = s.headers.data() + start;
    PutChunkHeader(h, 0, kReplyTypeBlockStatus, r.cookie, payload);
    PutBe32(h + 20, context_id);
    uint8_t* d = h + 24;
    for (const WireExtent& e : s.extents) {
      PutBe32(d, e.length);
      PutBe32(d + 4, e.flags);
      d += 8;
    }
    chunk_starts.push_back(start);
  };
  if (negotiated_.base_allocation) {
    Status st = AppendAllocation(r, s);
    if (!st.ok()) return SendError(r.cookie, ErrnoToNbdError(st.errnum()), st.message());
    add_chunk(kContextIdBaseAllocation);
  }
  if (negotiated_.cbt) {
    Status st = AppendCbt(r, s);
    if (!st.ok()) return SendError(r.cookie, ErrnoToNbdError(st.errnum()), st.message());
    add_chunk(kContextIdBlksnapCbt);
  }
  // Mark the last chunk done (flags field at offset 4 of its header).
  PutBe16(s.headers.data() + chunk_starts.back() + 4, kReplyFlagDone);
  iovec iov{s.headers.data(), s.headers.size()};
  Send(std::span<const iovec>(&iov, 1));
}

void Session::SendSimple(uint64_t cookie, uint32_t error, std::span<const uint8_t> payload) {
  uint8_t hdr[kSimpleReplyHeaderSize];
  PutBe32(hdr, kSimpleReplyMagic);
  PutBe32(hdr + 4, error);
  PutBe64(hdr + 8, cookie);
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
  uint8_t hdr[kStructuredReplyHeaderSize + 6];
  PutChunkHeader(hdr, kReplyFlagDone, kReplyTypeError, cookie,
                 static_cast<uint32_t>(6 + message.size()));
  PutBe32(hdr + 20, error);
  PutBe16(hdr + 24, static_cast<uint16_t>(message.size()));
  iovec iov[2] = {{hdr, sizeof hdr}, {const_cast<char*>(message.data()), message.size()}};
  Send(std::span<const iovec>(iov, message.empty() ? 1 : 2));
}

void Session::Send(std::span<const iovec> iov) {
  Status st;
  {
    std::lock_guard lock(send_mu_);
    st = transport_.WriteAll(iov);
  }
  if (!st.ok()) Fail();  // the client went away mid-reply
}

}  // namespace blksnap::nbd
