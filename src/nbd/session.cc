// NBD transmission phase: request dispatch and block status. The reply bytes are encoded by
// reply.cc and written by session_send.cc; this file decides what to reply and owns the threads,
// locks and budgets.
//
// Threading (leader/follower, as in nbdkit's multi-threaded model, but with a shared input
// buffer): each connection is served by up to max_workers threads (default 8). A worker takes
// recv_mu_, reads one request header (and a write's payload) from the connection's InputBuffer,
// releases recv_mu_ and executes the request on the BlockDevice itself, then sends the reply
// (session_send.cc: one writev of header + payload, or queued for the thread sending). So a request
// never changes thread between the socket and the device, many requests are in flight at once,
// replies go out in completion order, and the only locks are per connection (nothing global on the
// data path). The InputBuffer serves a burst of pipelined request headers from a single recv(), so
// a queue depth of 32 costs far fewer than 32 recv syscalls. Each worker keeps its buffers
// (payload, chunk headers, iovecs, extents) across requests, the payload buffer up to 1 MiB.
//
// Workers start on demand: the connection's own thread is the first; when a worker takes a
// request and no other worker is free to read the next one (free_ drops to 0), it starts one
// more, up to max_workers and while the server-wide extra_workers budget allows. An idle or
// strictly sequential client therefore costs one thread. Workers live until the session ends.
//
// Bounds (SessionLimits): a read reserves its length, a write its payload 1 MiB at a time as
// the bytes arrive (so announcing 32 MiB and sending 10 bytes pins one piece of budget and a
// few resident pages, not 32 MiB: buffers are not zero-filled, see PayloadBuffer), in the
// connection's budget and the server's, both or none (atomic counters; a request that does not
// fit waits, holding neither: backpressure). The reservation is returned after the reply is
// sent. Deadlock freedom: besides requests being executed (which finish and give back), only
// receivers hold budget while waiting for more; there is one per connection, needing at most
// 32 MiB (<= the connection's limit), and a receiver first claims its whole length in the
// server-wide total_receiving budget (limit = the total), so the receivers' needs fit in the
// total together and one of them can always go on. A request whose header or payload stops
// arriving for request_timeout is the client's stall: the connection is closed (InputBuffer's
// stall limit and SO_RCVTIMEO, set by the server); so is one whose reply the client does not
// read (SO_SNDTIMEO). Between requests a client may be idle indefinitely.
//
// Stopping: NBD_CMD_DISC, end of stream or a stall sets stop_; workers finish the request they
// hold, then exit. A protocol violation (bad magic) or a failed send also shuts the socket down
// so that every worker wakes up. The Server closes the fd after Run() returns.
//
// Replies: session_send.cc (one sender at a time, small replies queued for it).
//
// Errors: requests are validated first (flags, read-only, range, payload size) and answered
// with the spec's errors; device errors go through ErrnoToNbdError. With structured replies
// an error is one NBD_REPLY_TYPE_ERROR chunk carrying the device's message.
#include "nbd/session.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "nbd/extents.h"
#include "nbd/reply.h"
#include "util/thread_name.h"

namespace blksnap::nbd {
namespace {

// Reads at least this long probe the device for holes and answer them with OFFSET_HOLE chunks
// (a 4 KiB random read should not pay for a block-status lookup).
constexpr uint32_t kHoleProbeMin = 64u << 10;
// Most read-map bytes looked at per blksnap:cbt chunk (the reply may cover less than asked).
constexpr uint64_t kMaxCbtBlocksPerRequest = 1u << 20;
constexpr size_t kZeroBufferSize = 1u << 20;
// A write payload is reserved, allocated and received this much at a time.
constexpr size_t kPayloadPiece = 1u << 20;
// A worker's payload buffer is kept across requests up to this capacity, its other scratch
// buffers (block-status chunks, extents, CBT map) up to kKeepScratch bytes each.
constexpr size_t kKeepBuffer = 1u << 20;
constexpr size_t kKeepScratch = 64u << 10;
// In-flight budget a block-status request takes: at most two chunks of kMaxExtentsPerChunk
// descriptors, the extents between, and the CBT map bytes examined.
constexpr uint64_t kBlockStatusReserve =
    2 * (kStructuredReplyHeaderSize + 4 + 8 * kMaxExtentsPerChunk) +
    sizeof(WireExtent) * kMaxExtentsPerChunk + kMaxCbtBlocksPerRequest;

}  // namespace

// A payload buffer that is not zero-filled: its pages become resident only as received bytes or
// device reads land in them, so memory follows data even though a write's whole buffer is
// allocated (as address space) up front, and it is never copied to grow.
class PayloadBuffer {
 public:
  uint8_t* Get(size_t n) {
    if (n > capacity_) {
      buf_.reset();
      buf_.reset(new uint8_t[n]);  // default-initialised: not touched
      capacity_ = n;
    }
    return buf_.get();
  }
  uint8_t* data() const { return buf_.get(); }
  // Frees the buffer if it is larger than `keep`.
  void Trim(size_t keep) {
    if (capacity_ > keep) {
      buf_.reset();
      capacity_ = 0;
    }
  }

 private:
  std::unique_ptr<uint8_t[]> buf_;
  size_t capacity_ = 0;
};

struct Session::Scratch {
  std::vector<ReadPiece> pieces;
  PayloadBuffer data;
  std::vector<uint8_t> headers;
  std::vector<iovec> iov;
  std::vector<WireExtent> extents;
  std::vector<uint8_t> map;
  uint64_t reserved = 0;  // in-flight budget held for the current request

  // Lets go of buffers that one large request grew, so idle workers hold little.
  void Trim() {
    data.Trim(kKeepBuffer);
    TrimVector(headers, kKeepScratch);
    TrimVector(extents, kKeepScratch / sizeof(WireExtent));
    TrimVector(map, kKeepScratch);
    TrimVector(iov, kKeepScratch / sizeof(iovec));
    TrimVector(pieces, kKeepScratch / sizeof(ReadPiece));
  }
  template <typename T>
  static void TrimVector(std::vector<T>& v, size_t keep) {
    if (v.capacity() > keep) std::vector<T>().swap(v);
  }
};

Session::Session(Transport& transport, InputBuffer& in, const Negotiated& negotiated,
                 SessionLimits limits)
    : transport_(transport),
      in_(in),
      negotiated_(negotiated),
      device_(*negotiated.entry->device),
      caps_(negotiated.entry->device->capabilities()),
      read_only_(negotiated.entry->read_only()),
      limits_(std::move(limits)),
      connection_inflight_(limits_.connection_inflight) {
  MutexLock lock(recv_mu_);
  in_.set_stall_timeout(limits_.request_timeout);
}

void Session::Run() {
  WorkerLoop();
  // Every thread that could start another is either this one (done) or in threads_; one that
  // is being joined may still push a new one, which the next round joins.
  for (;;) {
    std::thread t;
    {
      MutexLock lock(threads_mu_);
      if (threads_.empty()) break;
      t = std::move(threads_.back());
      threads_.pop_back();
    }
    t.join();
  }
  if (limits_.extra_workers) {
    limits_.extra_workers->Give(static_cast<uint64_t>(started_.load() - 1));
  }
}

void Session::MaybeAddWorker() {
  int n = started_.load(std::memory_order_relaxed);
  if (n >= limits_.max_workers || stop_.load(std::memory_order_relaxed)) return;
  if (!started_.compare_exchange_strong(n, n + 1, std::memory_order_relaxed)) return;
  if (limits_.extra_workers && !limits_.extra_workers->TryTake(1)) {
    started_.fetch_sub(1, std::memory_order_relaxed);
    return;
  }
  free_.fetch_add(1, std::memory_order_relaxed);
  MutexLock lock(threads_mu_);
  threads_.emplace_back([this] { WorkerLoop(); });
}

void Session::Fail() {
  stop_.store(true, std::memory_order_relaxed);
  transport_.Shutdown();
}

void Session::Log(const std::string& why) {
  if (!limits_.log || logged_.exchange(true)) return;
  limits_.log("nbd: closing a connection to export " + negotiated_.entry->name + ": " + why);
}

void Session::WorkerLoop() {
  NameThisThread("nbd-worker");
  Scratch s;
  Request req;
  uint32_t pre_error = 0;
  while (ReadRequest(&req, s, &pre_error)) {
    if (free_.fetch_sub(1, std::memory_order_relaxed) == 1) MaybeAddWorker();
    Handle(req, s, pre_error);
    Release(s);
    free_.fetch_add(1, std::memory_order_relaxed);
    // Do not let one large request pin its memory for the connection's lifetime.
    s.Trim();
  }
  Release(s);
}

bool Session::Stopped() const {
  // The server shuts the socket down from outside (Stop, RemoveExport); a worker waiting for
  // budget while holding the receive lock would otherwise be the one to notice, too late.
  return stop_.load(std::memory_order_relaxed) ||
         (limits_.shut_down && limits_.shut_down->load(std::memory_order_relaxed));
}

bool Session::Reserve(uint64_t n, Scratch& s, bool* waited) {
  Budget* total = limits_.total_inflight;
  const auto stopped = [this] { return Stopped(); };
  for (bool first = true;; first = false) {
    if (!first && waited) *waited = true;
    if (connection_inflight_.TryTake(n)) {
      if (!total || total->TryTake(n)) {
        s.reserved += n;
        return true;
      }
      connection_inflight_.Give(n);
      if (!total->WaitFits(n, stopped)) return false;
    } else if (!connection_inflight_.WaitFits(n, stopped)) {
      return false;
    }
  }
}

void Session::Release(Scratch& s) {
  if (s.reserved == 0) return;
  if (limits_.total_inflight) limits_.total_inflight->Give(s.reserved);
  connection_inflight_.Give(s.reserved);
  s.reserved = 0;
}

bool Session::ReadRequest(Request* req, Scratch& s, uint32_t* pre_error) {
  MutexLock lock(recv_mu_);
  if (stop_.load(std::memory_order_relaxed)) return false;
  // Between requests the client may be silent as long as it likes (SO_RCVTIMEO only wakes us).
  while (in_.buffered() == 0) {
    Status st = in_.Fill(transport_);
    if (st.ok()) break;
    if (st.errnum() != ETIMEDOUT || stop_.load(std::memory_order_relaxed)) {
      stop_.store(true, std::memory_order_relaxed);
      return false;
    }
  }
  in_.StartRequest();
  uint8_t hdr[kRequestHeaderSize];
  if (Status st = in_.ReadExact(transport_, hdr); !st.ok()) {
    if (st.errnum() == ETIMEDOUT) Log(std::string(st.message()));
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
      if (Status st = in_.Skip(transport_, req->length); !st.ok()) {
        if (st.errnum() == ETIMEDOUT) Log(std::string(st.message()));
        stop_.store(true, std::memory_order_relaxed);
        return false;
      }
      *pre_error = kNbdEinval;
      return true;
    }
    return ReadPayload(*req, s);
  }
  return true;
}

bool Session::ReadPayload(const Request& req, Scratch& s) {
  // Memory follows the bytes that actually arrive: the buffer is address space until bytes land
  // in it, and the budget is reserved one piece at a time just before the piece is read. The
  // whole length is claimed first, so the receivers' partial reservations can never add up to
  // the whole budget with each waiting for more.
  // Time spent waiting for budget is ours, not the client's: the stall clock restarts after it.
  Budget* claims = limits_.total_receiving;
  if (claims && !claims->TryTake(req.length)) {
    if (!claims->Take(req.length, [this] { return Stopped(); })) {
      stop_.store(true, std::memory_order_relaxed);
      return false;
    }
    in_.StartRequest();
  }
  uint8_t* buf = s.data.Get(req.length);
  bool ok = true;
  for (size_t done = 0; done < req.length && ok;) {
    const size_t piece = std::min<size_t>(req.length - done, kPayloadPiece);
    bool waited = false;
    ok = Reserve(piece, s, &waited);
    if (waited) in_.StartRequest();
    if (ok) {
      Status st = in_.ReadExact(transport_, std::span<uint8_t>(buf + done, piece));
      if (!st.ok() && st.errnum() == ETIMEDOUT) Log(std::string(st.message()));
      ok = st.ok();
    }
    done += piece;
  }
  if (claims) claims->Give(req.length);
  if (!ok) stop_.store(true, std::memory_order_relaxed);
  return ok;
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
      st = device_.Write(r.offset, std::span<const uint8_t>(s.data.data(), r.length),
                         fua && caps_.fua ? kWriteFua : 0);
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
  if (!Reserve(r.length, s)) {
    // Only when the connection is stopping: nobody will read the answer.
    return SendError(r.cookie, kNbdEshutdown, "connection closing");
  }
  s.data.Get(r.length);  // holes are never sent, so the buffer need not be zeroed
  std::vector<ReadPiece>& pieces = s.pieces;
  pieces.clear();
  if (structured && caps_.block_status && r.length >= kHoleProbeMin && !(r.flags & kCmdFlagDf)) {
    auto ext = device_.BlockStatus(r.offset, r.length);
    if (ext.ok()) ReadPiecesFromExtents(*ext, r.offset, r.length, &pieces);
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
    PutSimpleReplyHeader(hdr, 0, r.cookie);
    iovec iov[2] = {{hdr, sizeof hdr}, {s.data.data(), r.length}};
    Send(iov);
    return;
  }
  // One chunk per piece; the last carries NBD_REPLY_FLAG_DONE.
  EncodeReadChunks(pieces, r.cookie, r.offset, s.data.data(), &s.headers, &s.iov);
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
  // reported as the only chunk. What that can take is bounded, and reserved like a read.
  if (!Reserve(kBlockStatusReserve, s)) {
    return SendError(r.cookie, kNbdEshutdown, "connection closing");
  }
  s.headers.clear();
  size_t last_chunk = 0;
  auto add_chunk = [&](uint32_t context_id) {
    if (r.flags & kCmdFlagReqOne) KeepFirstExtent(&s.extents);
    last_chunk = AppendBlockStatusChunk(&s.headers, r.cookie, context_id, s.extents);
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
  MarkChunkDone(s.headers.data() + last_chunk);
  iovec iov{s.headers.data(), s.headers.size()};
  Send(std::span<const iovec>(&iov, 1));
}

}  // namespace blksnap::nbd
