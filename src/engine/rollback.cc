// Rollback: see rollback.h.
#include "engine/rollback.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <set>

namespace blksnap {
namespace {

constexpr uint64_t kRunBytes = 4ull << 20;      // one image read and one original write
constexpr uint64_t kCommitBytes = 64ull << 20;  // merged data per journal commit, at most
constexpr auto kCommitInterval = std::chrono::milliseconds(250);  // and at least this often

// A buffer aligned for direct I/O.
struct AlignedBuffer {
  explicit AlignedBuffer(uint64_t size)
      : data(static_cast<uint8_t*>(std::aligned_alloc(4096, (size + 4095) / 4096 * 4096))) {}
  ~AlignedBuffer() { std::free(data); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  uint8_t* data;
};

}  // namespace

const char* ToString(RollbackProgress::State state) {
  switch (state) {
    case RollbackProgress::State::kMerging:
      return "merging";
    case RollbackProgress::State::kDone:
      return "done";
    case RollbackProgress::State::kFailed:
      return "failed";
    case RollbackProgress::State::kStopped:
      return "stopped";
  }
  return "?";
}

Rollback::Rollback(Params params, RollbackJournalHeader header)
    : params_(std::move(params)),
      header_(std::move(header)),
      geometry_(params_.area->geometry()),
      listed_(new std::atomic<uint64_t>[(geometry_.count + 63) / 64]()) {}

Rollback::~Rollback() { Stop(); }

void Rollback::List(uint64_t index) {
  listed_[index / 64].fetch_or(1ull << (index % 64));
  MutexLock lock(mu_);
  states_[index] = State::kListed;
  order_.push_back(index);
  ++total_;
}

Result<std::unique_ptr<Rollback>> Rollback::Start(Params params,
                                                  const std::vector<uint64_t>& chunks) {
  const ChunkGeometry g = params.area->geometry();
  RollbackJournalHeader header;
  header.snapshot = params.snapshot;
  header.device = params.device;
  header.device_size = g.capacity;
  header.chunk_size = g.size();
  header.chunk_count = g.count;
  header.started = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                             std::chrono::system_clock::now().time_since_epoch())
                                             .count());
  const uint64_t bitmap_bytes = RollbackBitmapBytes(g.count);
  if (params.journal->size() < kRollbackHeaderSize + bitmap_bytes)
    return Status::Error(EINVAL, "rollback journal device is too small");
  std::unique_ptr<Rollback> r(new Rollback(std::move(params), header));
  std::vector<uint8_t> bitmap(bitmap_bytes, 0);
  for (uint64_t index : chunks) {
    if (index >= g.count) return Status::Error(EINVAL, "rollback chunk beyond the device");
    bitmap[index / 8] |= static_cast<uint8_t>(1u << (index % 8));
    r->List(index);
  }
  // The bitmap first, then the header that makes the journal valid, each synced.
  const auto block = SerializeRollbackHeader(header);
  BLKSNAP_RETURN_IF_ERROR(r->params_.journal->Write(kRollbackHeaderSize, bitmap, 0));
  BLKSNAP_RETURN_IF_ERROR(r->params_.journal->Flush());
  BLKSNAP_RETURN_IF_ERROR(r->params_.journal->Write(0, block, 0));
  BLKSNAP_RETURN_IF_ERROR(r->params_.journal->Flush());
  MutexLock lock(r->commit_mu_);
  r->bitmap_ = std::move(bitmap);
  return r;
}

Result<std::unique_ptr<Rollback>> Rollback::Resume(Params params) {
  std::vector<uint8_t> block(kRollbackHeaderSize);
  if (params.journal->size() < kRollbackHeaderSize)
    return Status::Error(EINVAL, "rollback journal is too short");
  BLKSNAP_RETURN_IF_ERROR(params.journal->Read(0, block));
  BLKSNAP_ASSIGN_OR_RETURN(RollbackJournalHeader header, ParseRollbackHeader(block));
  const ChunkGeometry g = params.area->geometry();
  if (header.snapshot != params.snapshot || header.device != params.device) {
    return Status::Error(EINVAL, "rollback journal is for snapshot " + header.snapshot.ToString() +
                                     " and device '" + header.device + "'");
  }
  if (header.device_size != g.capacity || header.chunk_size != g.size()) {
    return Status::Error(EINVAL, "rollback journal describes another device size or chunk size");
  }
  const uint64_t bitmap_bytes = RollbackBitmapBytes(g.count);
  if (params.journal->size() < kRollbackHeaderSize + bitmap_bytes)
    return Status::Error(EINVAL, "rollback journal is too short for its bitmap");
  std::vector<uint8_t> bitmap(bitmap_bytes);
  BLKSNAP_RETURN_IF_ERROR(params.journal->Read(kRollbackHeaderSize, bitmap));
  std::unique_ptr<Rollback> r(new Rollback(std::move(params), header));
  for (uint64_t index = 0; index < g.count; ++index) {
    if (bitmap[index / 8] & (1u << (index % 8))) r->List(index);
  }
  MutexLock lock(r->commit_mu_);
  r->bitmap_ = std::move(bitmap);
  return r;
}

void Rollback::Run() {
  bool nothing = false;
  {
    MutexLock lock(mu_);
    nothing = total_ == 0;
    workers_left_ = params_.threads;
  }
  if (nothing) {
    if (!done_.exchange(true) && params_.on_done) params_.on_done();
    return;
  }
  for (int i = 0; i < params_.threads; ++i) threads_.emplace_back([this] { Worker(); });
}

Status Rollback::Read(uint64_t offset, std::span<uint8_t> buf) {
  if (done_.load()) return params_.original->Read(offset, buf);
  uint64_t done = 0;
  while (done < buf.size()) {
    // A run of chunks that are all listed, or all not.
    const uint64_t first = geometry_.index(offset + done);
    const bool listed = Listed(first);
    uint64_t end = std::min<uint64_t>(offset + buf.size(), geometry_.offset(first + 1));
    while (end < offset + buf.size() && Listed(geometry_.index(end)) == listed) {
      end = std::min<uint64_t>(offset + buf.size(), end + geometry_.size());
    }
    auto part = buf.subspan(done, end - offset - done);
    BLKSNAP_RETURN_IF_ERROR(listed ? params_.area->ImageRead(offset + done, part)
                                   : params_.original->Read(offset + done, part));
    done = end - offset;
  }
  return Status::Ok();
}

Status Rollback::BeforeWrite(uint64_t offset, uint64_t length) {
  if (done_.load() || length == 0) return Status::Ok();
  const uint64_t last = geometry_.index(offset + length - 1);
  for (uint64_t index = geometry_.index(offset); index <= last; ++index) {
    if (!Listed(index)) continue;
    for (;;) {
      State state;
      {
        MutexLock lock(mu_);
        auto it = states_.find(index);
        if (it == states_.end()) break;  // merged and committed meanwhile
        if (it->second == State::kMerging) {
          cv_.Wait(mu_);
          continue;
        }
        state = it->second;
        if (state == State::kListed) {
          if (!failure_.ok()) {
            return Status::Error(EIO, "rollback failed: " + std::string(failure_.message()));
          }
          it->second = State::kMerging;
        }
      }
      if (state == State::kListed) {
        Status s = MergeRange(index, 1);
        FinishRange(index, 1, s);
        if (!s.ok()) {
          Fail(s);
          return s;
        }
      }
      BLKSNAP_RETURN_IF_ERROR(Commit());
    }
  }
  return Status::Ok();
}

bool Rollback::ClaimRun(uint64_t* first, uint64_t* count) {
  MutexLock lock(mu_);
  while (cursor_ < order_.size()) {
    const uint64_t index = order_[cursor_++];
    auto it = states_.find(index);
    if (it == states_.end() || it->second != State::kListed) continue;
    it->second = State::kMerging;
    *first = index;
    *count = 1;
    while (cursor_ < order_.size() && order_[cursor_] == index + *count &&
           (*count + 1) * geometry_.size() <= kRunBytes) {
      auto next = states_.find(order_[cursor_]);
      if (next == states_.end() || next->second != State::kListed) break;
      next->second = State::kMerging;
      ++*count;
      ++cursor_;
    }
    return true;
  }
  return false;
}

Status Rollback::MergeRange(uint64_t first, uint64_t count) {
  const uint64_t offset = geometry_.offset(first);
  const uint64_t end = std::min(geometry_.capacity, geometry_.offset(first + count));
  AlignedBuffer buf(end - offset);
  std::span<uint8_t> data(buf.data, end - offset);
  BLKSNAP_RETURN_IF_ERROR(params_.area->ImageRead(offset, data));
  return params_.write(offset, data);
}

void Rollback::FinishRange(uint64_t first, uint64_t count, const Status& status) {
  MutexLock lock(mu_);
  for (uint64_t i = first; i < first + count; ++i) {
    states_[i] = status.ok() ? State::kMerged : State::kListed;
    if (status.ok()) merged_.push_back(i);
  }
  cv_.SignalAll();
}

void Rollback::Fail(const Status& status) {
  stopping_.store(true);
  MutexLock lock(mu_);
  if (failure_.ok()) failure_ = status;
  cv_.SignalAll();
}

void Rollback::Worker() {
  while (!stopping_.load()) {
    if (params_.merge_delay_us > 0)
      std::this_thread::sleep_for(std::chrono::microseconds(params_.merge_delay_us));
    uint64_t first = 0, count = 0;
    if (!ClaimRun(&first, &count)) break;
    Status s = MergeRange(first, count);
    FinishRange(first, count, s);
    if (!s.ok()) {
      Fail(s);
      break;
    }
    bool commit = false;
    {
      MutexLock lock(mu_);
      commit = merged_.size() * geometry_.size() >= kCommitBytes ||
               std::chrono::steady_clock::now() - last_commit_ >= kCommitInterval;
    }
    if (commit) {
      if (Status c = Commit(); !c.ok()) {
        Fail(c);
        break;
      }
    }
  }
  bool last = false;
  {
    MutexLock lock(mu_);
    last = --workers_left_ == 0;
  }
  if (last) {
    if (Status c = Commit(); !c.ok()) Fail(c);
  }
}

Status Rollback::Commit() {
  MutexLock commit(commit_mu_);
  std::vector<uint64_t> batch;
  {
    MutexLock lock(mu_);
    batch.swap(merged_);
  }
  if (batch.empty()) return Status::Ok();
  // The merged data is durable before the journal stops listing it.
  Status s = params_.original->Flush();
  std::set<uint64_t> blocks;
  if (s.ok()) {
    for (uint64_t index : batch) {
      bitmap_[index / 8] &= static_cast<uint8_t>(~(1u << (index % 8)));
      blocks.insert(index / 8 / kRollbackBitmapBlock);
    }
    for (uint64_t block : blocks) {
      s = params_.journal->Write(
          kRollbackHeaderSize + block * kRollbackBitmapBlock,
          std::span<const uint8_t>(bitmap_.data() + block * kRollbackBitmapBlock,
                                   kRollbackBitmapBlock),
          0);
      if (!s.ok()) break;
    }
    if (s.ok()) s = params_.journal->Flush();
  }
  bool finished = false;
  {
    MutexLock lock(mu_);
    if (!s.ok()) {
      merged_.insert(merged_.end(), batch.begin(), batch.end());  // still listed on disk
      return s;
    }
    for (uint64_t index : batch) {
      states_.erase(index);
      Unlist(index);
    }
    committed_ += batch.size();
    last_commit_ = std::chrono::steady_clock::now();
    finished = committed_ == total_;
    cv_.SignalAll();
  }
  if (finished && !done_.exchange(true) && params_.on_done) params_.on_done();
  return Status::Ok();
}

void Rollback::Stop() {
  stopping_.store(true);
  for (auto& t : threads_) {
    if (t.joinable()) t.join();
  }
  threads_.clear();
  Commit().IgnoreError();
  MutexLock lock(mu_);
  stopped_ = true;
  cv_.SignalAll();
}

RollbackProgress Rollback::progress() const {
  RollbackProgress p;
  p.snapshot = params_.snapshot;
  p.chunk_size = geometry_.size();
  MutexLock lock(mu_);
  p.chunks_total = total_;
  p.chunks_merged = committed_;
  if (done_.load()) {
    p.state = RollbackProgress::State::kDone;
  } else if (!failure_.ok()) {
    p.state = RollbackProgress::State::kFailed;
    p.errnum = failure_.errnum();
    p.error = std::string(failure_.message());
  } else if (stopped_) {
    p.state = RollbackProgress::State::kStopped;
  }
  return p;
}

}  // namespace blksnap
