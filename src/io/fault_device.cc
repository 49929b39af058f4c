// FaultDevice: fault injection over any BlockDevice (declared in io.h).
//
// Faults are checked in this order on each call, after the range check (an out-of-range call
// returns EINVAL and triggers nothing): added latency (sleep, no lock held), the call counter,
// FailAllWrites, the FailNth countdown of its kind (one-shot: it disarms after firing), and for
// Write the NoSpaceAfter budget (a write larger than what is left fails whole with ENOSPC and
// consumes nothing; Trim and WriteZeroes never run out of space). A failed call touches nothing.
//
// Unflushed-write buffering (power-loss simulation). While enabled, Write, Trim and WriteZeroes
// do not reach the device below: they are kept in an overlay, a map of non-overlapping byte
// ranges (data, zeroes or trimmed) keyed by offset, newest write winning. Reads read the device
// below and then lay the overlay over the result, so callers see their writes. Flush() writes the
// overlay down in offset order and then flushes the device below. A FUA write is durable on its
// own: it goes straight down with FUA and removes its range from the overlay (it does not make
// earlier buffered writes durable, as on a real disk). DropUnflushed() discards the overlay.
// Disabling buffering keeps the overlay until Flush, DropUnflushed or Reset; writes then go
// straight down and cut their range out of it. Reset() disarms every fault, stops buffering and
// writes the overlay down (without a flush), so nothing accepted is lost. Limitation: BlockStatus
// (inherited from ForwardingDevice) reports the device below and does not see the overlay.
//
// Counters (reads/writes/flushes) count every call since construction, failed ones included;
// writes() counts Write, Trim and WriteZeroes. Reset() does not clear them.
//
// Locking: mu guards the fault settings (short sections, never held across I/O). overlay_mu
// guards the overlay and the buffering switch: shared for reads and pass-through writes, so those
// run in parallel; exclusive for overlay updates, Flush, DropUnflushed and Reset. Reads hold it
// shared across the read below, so a Flush cannot move data between the overlay and the device
// while a read is combining the two.
#include <algorithm>
#include <cstring>
#include <map>
#include <thread>
#include <vector>

#include "blksnap/io.h"
#include "util/mutex.h"

namespace blksnap {

namespace {

enum class SegmentKind { kData, kZero, kTrim };

struct Segment {
  uint64_t length = 0;
  SegmentKind kind = SegmentKind::kData;
  uint32_t zero_flags = 0;
  std::vector<uint8_t> data;  // kData only
};

struct Countdown {
  uint64_t left = 0;  // 0 = disarmed
  int errnum = EIO;
  // True if this call is the one that fails.
  bool Tick() {
    if (left == 0) return false;
    return --left == 0;
  }
};

}  // namespace

struct FaultDevice::State {
  Mutex mu;  // guards the fault settings below
  Countdown read_fault GUARDED_BY(mu);
  Countdown write_fault GUARDED_BY(mu);
  Countdown flush_fault GUARDED_BY(mu);
  int fail_all_writes GUARDED_BY(mu) = 0;
  bool no_space_armed GUARDED_BY(mu) = false;
  uint64_t no_space_left GUARDED_BY(mu) = 0;

  std::atomic<int64_t> latency_us{0};
  std::atomic<uint64_t> reads{0};
  std::atomic<uint64_t> writes{0};
  std::atomic<uint64_t> flushes{0};

  SharedMutex overlay_mu;  // guards buffering and overlay
  bool buffering GUARDED_BY(overlay_mu) = false;
  // offset -> segment; segments never overlap
  std::map<uint64_t, Segment> overlay GUARDED_BY(overlay_mu);

  void Sleep() const {
    const int64_t us = latency_us.load(std::memory_order_relaxed);
    if (us > 0) std::this_thread::sleep_for(std::chrono::microseconds(us));
  }

  // Fault decision for a write-kind call of `bytes` (consumes_space: a Write).
  Status CheckWriteFaults(uint64_t bytes, bool consumes_space) EXCLUDES(mu) {
    MutexLock lock(mu);
    if (fail_all_writes) return Status::Error(fail_all_writes, "injected write failure (all)");
    if (write_fault.Tick()) {
      const int err = write_fault.errnum;
      return Status::Error(err, "injected write failure (nth)");
    }
    if (consumes_space && no_space_armed) {
      if (bytes > no_space_left) return Status::Error(ENOSPC, "injected out of space");
      no_space_left -= bytes;
    }
    return Status::Ok();
  }

  // Removes [offset, offset + length) from the overlay, splitting segments that straddle it.
  void Carve(uint64_t offset, uint64_t length) REQUIRES(overlay_mu) {
    if (overlay.empty() || length == 0) return;
    const uint64_t end = offset + length;
    auto it = overlay.upper_bound(offset);
    if (it != overlay.begin()) {
      auto prev = std::prev(it);
      const uint64_t pstart = prev->first;
      const uint64_t pend = pstart + prev->second.length;
      if (pend > offset) {
        if (pend > end) {  // the new range sits inside prev: keep its right part
          Segment right = Slice(prev->second, end - pstart, pend - end);
          overlay.emplace(end, std::move(right));
        }
        Shrink(prev->second, offset - pstart);
        if (prev->second.length == 0) overlay.erase(prev);
      }
    }
    it = overlay.lower_bound(offset);
    while (it != overlay.end() && it->first < end) {
      const uint64_t sstart = it->first;
      const uint64_t send = sstart + it->second.length;
      if (send <= end) {
        it = overlay.erase(it);
        continue;
      }
      Segment right = Slice(it->second, end - sstart, send - end);
      overlay.erase(it);
      overlay.emplace(end, std::move(right));
      break;
    }
  }

  static Segment Slice(const Segment& s, uint64_t from, uint64_t length) {
    Segment out;
    out.length = length;
    out.kind = s.kind;
    out.zero_flags = s.zero_flags;
    if (s.kind == SegmentKind::kData) {
      out.data.assign(s.data.begin() + static_cast<ptrdiff_t>(from),
                      s.data.begin() + static_cast<ptrdiff_t>(from + length));
    }
    return out;
  }

  static void Shrink(Segment& s, uint64_t length) {
    s.length = length;
    if (s.kind == SegmentKind::kData) {
      s.data.resize(length);
      s.data.shrink_to_fit();
    }
  }

  // Writes the overlay down in offset order; applied segments leave the overlay, so a failure
  // keeps the rest buffered.
  Status WriteBack(BlockDevice& next) REQUIRES(overlay_mu) {
    while (!overlay.empty()) {
      auto it = overlay.begin();
      const Segment& s = it->second;
      Status st;
      switch (s.kind) {
        case SegmentKind::kData:
          st = next.Write(it->first, s.data, 0);
          break;
        case SegmentKind::kZero:
          st = next.WriteZeroes(it->first, s.length, s.zero_flags);
          break;
        case SegmentKind::kTrim:
          st = next.Trim(it->first, s.length);
          break;
      }
      if (!st.ok()) return st;
      overlay.erase(it);
    }
    return Status::Ok();
  }
};

FaultDevice::FaultDevice(std::shared_ptr<BlockDevice> next)
    : ForwardingDevice(std::move(next)), state_(std::make_unique<State>()) {}

FaultDevice::~FaultDevice() = default;

void FaultDevice::FailNthRead(uint64_t nth, int errnum) {
  MutexLock lock(state_->mu);
  state_->read_fault = Countdown{nth, errnum};
}

void FaultDevice::FailNthWrite(uint64_t nth, int errnum) {
  MutexLock lock(state_->mu);
  state_->write_fault = Countdown{nth, errnum};
}

void FaultDevice::FailNthFlush(uint64_t nth, int errnum) {
  MutexLock lock(state_->mu);
  state_->flush_fault = Countdown{nth, errnum};
}

void FaultDevice::FailAllWrites(int errnum) {
  MutexLock lock(state_->mu);
  state_->fail_all_writes = errnum;
}

void FaultDevice::NoSpaceAfter(uint64_t bytes) {
  MutexLock lock(state_->mu);
  state_->no_space_armed = true;
  state_->no_space_left = bytes;
}

void FaultDevice::SetLatency(std::chrono::microseconds latency) {
  state_->latency_us.store(latency.count(), std::memory_order_relaxed);
}

void FaultDevice::SetBufferUnflushed(bool enabled) {
  WriterLock lock(state_->overlay_mu);
  state_->buffering = enabled;
}

void FaultDevice::DropUnflushed() {
  WriterLock lock(state_->overlay_mu);
  state_->overlay.clear();
}

void FaultDevice::DropUnflushedKeepingSome(uint64_t seed) {
  WriterLock lock(state_->overlay_mu);
  uint64_t x = seed | 1;
  for (auto it = state_->overlay.begin(); it != state_->overlay.end();) {
    x ^= x << 13;  // xorshift64: a fixed, seedable choice per segment
    x ^= x >> 7;
    x ^= x << 17;
    it = (x & 1) ? std::next(it) : state_->overlay.erase(it);
  }
  state_->WriteBack(*next()).IgnoreError();
  state_->overlay.clear();
}

void FaultDevice::Reset() {
  {
    MutexLock lock(state_->mu);
    state_->read_fault = Countdown{};
    state_->write_fault = Countdown{};
    state_->flush_fault = Countdown{};
    state_->fail_all_writes = 0;
    state_->no_space_armed = false;
    state_->no_space_left = 0;
  }
  state_->latency_us.store(0, std::memory_order_relaxed);
  WriterLock lock(state_->overlay_mu);
  state_->buffering = false;
  // Best effort: a device below that fails now keeps the rest in the overlay, still readable.
  state_->WriteBack(*next()).IgnoreError();
}

uint64_t FaultDevice::reads() const { return state_->reads.load(); }
uint64_t FaultDevice::writes() const { return state_->writes.load(); }
uint64_t FaultDevice::flushes() const { return state_->flushes.load(); }

Status FaultDevice::Read(uint64_t offset, std::span<uint8_t> buf) {
  state_->Sleep();
  state_->reads.fetch_add(1, std::memory_order_relaxed);
  BLKSNAP_RETURN_IF_ERROR(CheckRange(*this, offset, buf.size()));
  {
    MutexLock lock(state_->mu);
    if (state_->read_fault.Tick()) {
      return Status::Error(state_->read_fault.errnum, "injected read failure (nth)");
    }
  }
  ReaderLock lock(state_->overlay_mu);
  BLKSNAP_RETURN_IF_ERROR(next()->Read(offset, buf));
  if (state_->overlay.empty() || buf.empty()) return Status::Ok();
  const uint64_t end = offset + buf.size();
  auto it = state_->overlay.upper_bound(offset);
  if (it != state_->overlay.begin()) --it;
  for (; it != state_->overlay.end() && it->first < end; ++it) {
    const uint64_t sstart = it->first;
    const uint64_t send = sstart + it->second.length;
    const uint64_t from = std::max(sstart, offset);
    const uint64_t to = std::min(send, end);
    if (from >= to) continue;
    uint8_t* dst = buf.data() + (from - offset);
    if (it->second.kind == SegmentKind::kData) {
      std::memcpy(dst, it->second.data.data() + (from - sstart), to - from);
    } else {
      std::memset(dst, 0, to - from);
    }
  }
  return Status::Ok();
}

Status FaultDevice::Write(uint64_t offset, std::span<const uint8_t> buf, uint32_t flags) {
  state_->Sleep();
  state_->writes.fetch_add(1, std::memory_order_relaxed);
  BLKSNAP_RETURN_IF_ERROR(CheckRange(*this, offset, buf.size()));
  BLKSNAP_RETURN_IF_ERROR(state_->CheckWriteFaults(buf.size(), /*consumes_space=*/true));
  {
    ReaderLock lock(state_->overlay_mu);
    if (!state_->buffering && state_->overlay.empty()) return next()->Write(offset, buf, flags);
  }
  WriterLock lock(state_->overlay_mu);
  if (!state_->buffering || (flags & kWriteFua)) {
    BLKSNAP_RETURN_IF_ERROR(next()->Write(offset, buf, flags));
    state_->Carve(offset, buf.size());
    return Status::Ok();
  }
  if (buf.empty()) return Status::Ok();
  state_->Carve(offset, buf.size());
  Segment s;
  s.length = buf.size();
  s.kind = SegmentKind::kData;
  s.data.assign(buf.begin(), buf.end());
  state_->overlay.emplace(offset, std::move(s));
  return Status::Ok();
}

Status FaultDevice::Flush() {
  state_->Sleep();
  state_->flushes.fetch_add(1, std::memory_order_relaxed);
  {
    MutexLock lock(state_->mu);
    if (state_->flush_fault.Tick()) {
      return Status::Error(state_->flush_fault.errnum, "injected flush failure (nth)");
    }
  }
  {
    // Write the overlay down first; the flush below then covers it. The lock is not held
    // across the flush itself, so a slow fsync does not stall other I/O.
    WriterLock lock(state_->overlay_mu);
    BLKSNAP_RETURN_IF_ERROR(state_->WriteBack(*next()));
  }
  return next()->Flush();
}

Status FaultDevice::Trim(uint64_t offset, uint64_t length) {
  state_->Sleep();
  state_->writes.fetch_add(1, std::memory_order_relaxed);
  BLKSNAP_RETURN_IF_ERROR(CheckRange(*this, offset, length));
  BLKSNAP_RETURN_IF_ERROR(state_->CheckWriteFaults(length, /*consumes_space=*/false));
  {
    ReaderLock lock(state_->overlay_mu);
    if (!state_->buffering && state_->overlay.empty()) return next()->Trim(offset, length);
  }
  WriterLock lock(state_->overlay_mu);
  if (!state_->buffering) {
    BLKSNAP_RETURN_IF_ERROR(next()->Trim(offset, length));
    state_->Carve(offset, length);
    return Status::Ok();
  }
  if (length == 0) return Status::Ok();
  state_->Carve(offset, length);
  Segment s;
  s.length = length;
  s.kind = SegmentKind::kTrim;
  state_->overlay.emplace(offset, std::move(s));
  return Status::Ok();
}

Status FaultDevice::WriteZeroes(uint64_t offset, uint64_t length, uint32_t flags) {
  state_->Sleep();
  state_->writes.fetch_add(1, std::memory_order_relaxed);
  BLKSNAP_RETURN_IF_ERROR(CheckRange(*this, offset, length));
  BLKSNAP_RETURN_IF_ERROR(state_->CheckWriteFaults(length, /*consumes_space=*/false));
  {
    ReaderLock lock(state_->overlay_mu);
    if (!state_->buffering && state_->overlay.empty()) {
      return next()->WriteZeroes(offset, length, flags);
    }
  }
  WriterLock lock(state_->overlay_mu);
  if (!state_->buffering) {
    BLKSNAP_RETURN_IF_ERROR(next()->WriteZeroes(offset, length, flags));
    state_->Carve(offset, length);
    return Status::Ok();
  }
  if (length == 0) return Status::Ok();
  state_->Carve(offset, length);
  Segment s;
  s.length = length;
  s.kind = SegmentKind::kZero;
  s.zero_flags = flags & ~kZeroFast;  // applied later, when speed no longer matters
  state_->overlay.emplace(offset, std::move(s));
  return Status::Ok();
}

}  // namespace blksnap
