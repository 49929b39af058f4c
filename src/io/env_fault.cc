// FaultEnv: fault injection over another Env (see env.h).
//
// State (State, shared with the WritableFiles and StorageFiles it hands out, so a fault set after
// a file was opened still applies to it): per kind of operation a call counter, a one-shot
// countdown (fail_nth: the call that brings it from 1 to 0 fails) with its errno, and a sticky
// errno (fail_all); a no-space budget (bytes left for Append and Reserve; UINT64_MAX = none); the
// FaultDevice over the last storage device opened and the setup run on each new one.
//
// Check (State::Check) before each forwarded call, in this order: count the call, fail_all,
// the countdown. A failed call does not reach the Env below. The no-space budget is checked
// after those, and a call that fits consumes its bytes.
//
// Locking: State::mu guards every field; it is never held while calling the Env below.
#include <algorithm>
#include <array>
#include <cstdint>

#include "blksnap/env.h"
#include "blksnap/io.h"
#include "util/mutex.h"

namespace blksnap {

struct FaultEnv::State {
  struct OpFaults {
    uint64_t calls = 0;
    uint64_t fail_nth = 0;  // 0: disarmed
    int nth_errnum = 0;
    int fail_all = 0;  // 0: off
  };

  Mutex mu;
  std::array<OpFaults, kOpCount> ops GUARDED_BY(mu);
  uint64_t space_left GUARDED_BY(mu) = UINT64_MAX;
  std::shared_ptr<FaultDevice> last_device GUARDED_BY(mu);
  std::function<void(FaultDevice&)> device_setup GUARDED_BY(mu);

  static const char* Name(Op op) {
    static constexpr const char* kNames[kOpCount] = {"open",   "write",    "sync",   "rename",
                                                     "remove", "truncate", "reserve"};
    return kNames[static_cast<int>(op)];
  }

  // The injected error for this call of op (what names the call), or OK.
  Status Check(Op op, const std::string& what, uint64_t bytes = 0) EXCLUDES(mu) {
    MutexLock lock(mu);
    OpFaults& f = ops[static_cast<int>(op)];
    ++f.calls;
    int errnum = f.fail_all;
    if (errnum == 0 && f.fail_nth > 0 && --f.fail_nth == 0) errnum = f.nth_errnum;
    if (errnum != 0) {
      return Status::Error(errnum, std::string("injected ") + Name(op) + " fault: " + what);
    }
    if (op == Op::kWrite || op == Op::kReserve) {
      if (bytes > space_left)
        return Status::Error(ENOSPC, std::string("injected no space: ") + what);
      if (space_left != UINT64_MAX) space_left -= bytes;
    }
    return Status::Ok();
  }
};

namespace {

using Op = FaultEnv::Op;

class FaultWritableFile : public WritableFile {
 public:
  FaultWritableFile(std::shared_ptr<FaultEnv::State> state, std::string path,
                    std::unique_ptr<WritableFile> next)
      : state_(std::move(state)), path_(std::move(path)), next_(std::move(next)) {}

  Status Append(std::string_view data) override {
    BLKSNAP_RETURN_IF_ERROR(state_->Check(Op::kWrite, "write " + path_, data.size()));
    return next_->Append(data);
  }
  Status Sync() override {
    BLKSNAP_RETURN_IF_ERROR(state_->Check(Op::kSync, "fsync " + path_));
    return next_->Sync();
  }
  Status Close() override { return next_->Close(); }

 private:
  const std::shared_ptr<FaultEnv::State> state_;
  const std::string path_;
  const std::unique_ptr<WritableFile> next_;
};

class FaultStorageFile : public StorageFile {
 public:
  FaultStorageFile(std::shared_ptr<FaultEnv::State> state, std::string path,
                   std::unique_ptr<StorageFile> next)
      : state_(std::move(state)), path_(std::move(path)), next_(std::move(next)) {}

  const FileStat& stat() const override { return next_->stat(); }
  bool created() const override { return next_->created(); }
  Result<size_t> ReadAt(uint64_t offset, std::span<uint8_t> buf) override {
    return next_->ReadAt(offset, buf);
  }
  Status Truncate(uint64_t size) override {
    BLKSNAP_RETURN_IF_ERROR(state_->Check(Op::kTruncate, "truncate " + path_));
    return next_->Truncate(size);
  }
  Status Reserve(uint64_t offset, uint64_t length) override {
    BLKSNAP_RETURN_IF_ERROR(state_->Check(Op::kReserve, "fallocate " + path_, length));
    return next_->Reserve(offset, length);
  }
  Result<uint64_t> FreeBytes() override {
    BLKSNAP_ASSIGN_OR_RETURN(uint64_t free, next_->FreeBytes());
    MutexLock lock(state_->mu);
    return std::min(free, state_->space_left);
  }
  Result<std::shared_ptr<BlockDevice>> OpenDevice() override {
    BLKSNAP_RETURN_IF_ERROR(state_->Check(Op::kOpen, "open device of " + path_));
    BLKSNAP_ASSIGN_OR_RETURN(auto device, next_->OpenDevice());
    auto fault = std::make_shared<FaultDevice>(std::move(device));
    std::function<void(FaultDevice&)> setup;
    {
      MutexLock lock(state_->mu);
      state_->last_device = fault;
      setup = state_->device_setup;
    }
    if (setup) setup(*fault);
    return std::shared_ptr<BlockDevice>(fault);
  }

 private:
  const std::shared_ptr<FaultEnv::State> state_;
  const std::string path_;
  const std::unique_ptr<StorageFile> next_;
};

}  // namespace

FaultEnv::FaultEnv(Env* target) : EnvWrapper(target), state_(std::make_shared<State>()) {}
FaultEnv::~FaultEnv() = default;

void FaultEnv::FailNth(Op op, uint64_t nth, int errnum) {
  MutexLock lock(state_->mu);
  state_->ops[static_cast<int>(op)].fail_nth = nth;
  state_->ops[static_cast<int>(op)].nth_errnum = errnum;
}

void FaultEnv::FailAll(Op op, int errnum) {
  MutexLock lock(state_->mu);
  state_->ops[static_cast<int>(op)].fail_all = errnum;
}

void FaultEnv::NoSpaceAfter(uint64_t bytes) {
  MutexLock lock(state_->mu);
  state_->space_left = bytes;
}

void FaultEnv::Reset() {
  MutexLock lock(state_->mu);
  for (auto& f : state_->ops) {
    f.fail_nth = 0;
    f.fail_all = 0;
  }
  state_->space_left = UINT64_MAX;
}

uint64_t FaultEnv::calls(Op op) const {
  MutexLock lock(state_->mu);
  return state_->ops[static_cast<int>(op)].calls;
}

std::shared_ptr<FaultDevice> FaultEnv::last_storage_device() const {
  MutexLock lock(state_->mu);
  return state_->last_device;
}

void FaultEnv::OnStorageDevice(std::function<void(FaultDevice&)> setup) {
  MutexLock lock(state_->mu);
  state_->device_setup = std::move(setup);
}

Result<std::string> FaultEnv::ReadFile(const std::string& path, uint64_t max_size) {
  BLKSNAP_RETURN_IF_ERROR(state_->Check(Op::kOpen, "open " + path));
  return EnvWrapper::ReadFile(path, max_size);
}

Result<std::unique_ptr<WritableFile>> FaultEnv::NewWritableFile(const std::string& path) {
  BLKSNAP_RETURN_IF_ERROR(state_->Check(Op::kOpen, "create " + path));
  BLKSNAP_ASSIGN_OR_RETURN(auto file, EnvWrapper::NewWritableFile(path));
  return std::unique_ptr<WritableFile>(new FaultWritableFile(state_, path, std::move(file)));
}

Status FaultEnv::SyncDir(const std::string& dir) {
  BLKSNAP_RETURN_IF_ERROR(state_->Check(Op::kSync, "fsync directory " + dir));
  return EnvWrapper::SyncDir(dir);
}

Status FaultEnv::RemoveFile(const std::string& path) {
  BLKSNAP_RETURN_IF_ERROR(state_->Check(Op::kRemove, "remove " + path));
  return EnvWrapper::RemoveFile(path);
}

Status FaultEnv::RenameFile(const std::string& from, const std::string& to) {
  BLKSNAP_RETURN_IF_ERROR(state_->Check(Op::kRename, "rename " + from + " to " + to));
  return EnvWrapper::RenameFile(from, to);
}

Result<std::unique_ptr<StorageFile>> FaultEnv::OpenStorageFile(const std::string& path,
                                                               const StorageFileOptions& options) {
  BLKSNAP_RETURN_IF_ERROR(state_->Check(Op::kOpen, "open storage " + path));
  BLKSNAP_ASSIGN_OR_RETURN(auto file, EnvWrapper::OpenStorageFile(path, options));
  return std::unique_ptr<StorageFile>(new FaultStorageFile(state_, path, std::move(file)));
}

}  // namespace blksnap
