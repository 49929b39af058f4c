// ObjectStore: the seam between the backup repository and where its objects live (issue 16; Ceph
// RADOS and S3 backends come next). A store holds named, immutable-by-convention byte strings.
//
// Contract of every backend:
//  - Put is whole-object and atomic: a reader sees the old object, nothing, or the whole new one,
//    never a torn write; after Put returns OK the object is durable.
//  - PutIfAbsent creates atomically: EEXIST if the name exists (manifests are published so).
//  - Get: ENOENT if missing. Exists: false if missing. Delete: OK if missing (idempotent).
//  - ReadInto: Get into a caller's buffer (no allocation, no zero-fill: a restore reads chunk
//    after chunk into one), one round trip where the backend allows; EMSGSIZE when the object
//    is longer than the buffer (the buffer's bytes are then unspecified).
//  - ReadTail: the object's last bytes (as many as fit in the buffer, all of it when shorter) and
//    its size, one round trip where the backend allows (an incremental backup reads the table
//    at the end of a segmented chunk so: chunk_table.h).
//  - Size: the object's length in bytes; ENOENT if missing.
//  - List(prefix): the sorted names that start with `prefix` ("" lists everything).
//  - Lock: backups hold kShared for their whole run, gc holds kExclusive; wait=false gives EBUSY
//    when the other kind is held. The Lease releases on destruction.
//  - Names: ValidateObjectName ([a-z0-9._/-], '/'-separated non-empty components that do not
//    start with '.', at most 1024 bytes); anything else is EINVAL. "lock" is reserved.
// Every method is safe to call from several threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "blksnap/status.h"
#include "util/mutex.h"
#include "util/thread_annotations.h"

namespace blksnap::repo {

class Lease {
 public:
  virtual ~Lease() = default;
  // True if the lease may have expired at some moment since it was taken (a store whose leases
  // live by renewal, and a renewal failed or came too late: lease_clock.h). Others may have held
  // the other kind meanwhile, so a backup must not publish what it found present then.
  virtual bool Lapsed() const { return false; }
};

enum class LockMode { kShared, kExclusive };

// Puts whose durability is settled together (a backup's chunks), so a store can pay for it once
// per batch instead of once per object. Put returns once the object is written; it may become
// visible under its name and durable only at Commit (a store may also commit on its own, e.g.
// every so many objects). Contains(name): put through this batch and not yet visible. Commit
// returns once every object put before it is durable and visible; a crash before that leaves
// each of them absent or whole, never torn. A batch destroyed without Commit may leave its
// objects absent (a local store's temporaries stay for gc). Thread-safe; must not outlive its
// store.
class PutBatch {
 public:
  virtual ~PutBatch() = default;
  virtual Status Put(const std::string& name, std::span<const uint8_t> data) = 0;
  virtual bool Contains(const std::string& name) = 0;
  virtual Status Commit() = 0;
};

class ObjectStore {
 public:
  virtual ~ObjectStore() = default;
  virtual Status Put(const std::string& name, std::span<const uint8_t> data) = 0;
  virtual Status PutIfAbsent(const std::string& name, std::span<const uint8_t> data) = 0;
  virtual Result<std::vector<uint8_t>> Get(const std::string& name) = 0;
  // The object's length. The default is Get and a copy.
  virtual Result<size_t> ReadInto(const std::string& name, std::span<uint8_t> out);
  struct Tail {
    uint64_t object_size = 0;
    size_t length = 0;  // the object's last `length` bytes are out[0, length)
  };
  // The default is Get and a copy.
  virtual Result<Tail> ReadTail(const std::string& name, std::span<uint8_t> out);
  virtual Result<bool> Exists(const std::string& name) = 0;
  virtual Result<uint64_t> Size(const std::string& name) = 0;
  virtual Result<std::vector<std::string>> List(const std::string& prefix) = 0;
  virtual Status Delete(const std::string& name) = 0;
  virtual Result<std::unique_ptr<Lease>> Lock(LockMode mode, bool wait) = 0;
  // A new batch. The default puts each object at once with Put (durable when Put returns).
  virtual std::unique_ptr<PutBatch> NewPutBatch();
  // True when every request waits out a network round trip (RADOS, S3): a restore then keeps
  // as many chunk reads in flight as writes, not one per CPU.
  virtual bool remote() const { return false; }
  // Chunk writes a backup keeps in flight when the caller does not say (0: no preference, the
  // backup's own default). S3 wants more than the CPUs: each PUT waits for the gateway to
  // verify, store and answer before the next one leaves (docs/performance.md, "The test
  // cluster's allocator").
  virtual int preferred_writes() const { return 0; }
};

// OK for a valid object name (see above), EINVAL naming the problem otherwise.
Status ValidateObjectName(std::string_view name);
// A List prefix: "" or a valid name, optionally ending with '/'; a last component may be partial
// ("chunks/a" lists chunks/ab/... and chunks/a0/...).
Status ValidateListPrefix(std::string_view prefix);

// A directory: objects are files (names may contain '/', e.g. "chunks/ab/abcd..."; directories
// are created on demand), written to a temporary ".tmp-..." file in the final directory,
// fsynced, renamed, the directory fsynced; PutIfAbsent by link(2); Delete fsyncs the directory;
// a PutBatch writes its temporaries without fsync and, at Commit (or every kLocalBatchObjects
// objects), fsyncs them all, renames them and fsyncs each of their directories once;
// Lock by flock(2) on DIR/lock, opened afresh for each Lock call. Temporaries are never listed;
// an exclusive Lock removes those older than kStaleTempSeconds (their writer died).
// ENOENT if `dir` does not exist, ENOTDIR if it is not a directory.
Result<std::unique_ptr<ObjectStore>> OpenLocalStore(const std::string& dir);

// For tests: objects in a map, leases counted in memory (same semantics, one process).
std::unique_ptr<ObjectStore> NewMemoryStore();

// For tests: wraps a store and fails or drops operations on demand. Thread-safe.
// kPut: Put, PutIfAbsent and a batch's Put; kExists: Exists and Size. Its batches keep their
// objects in memory until Commit, which puts them into the wrapped store; CrashBefore(prefix)
// models a power loss just before the next put of a name under prefix: every object still held
// by a batch is lost (their Commit stores nothing of it).
// kGet: Get, ReadInto and ReadTail
enum class StoreOp { kPut, kGet, kExists, kList, kDelete, kLock };
class FaultyStore : public ObjectStore {
 public:
  explicit FaultyStore(std::unique_ptr<ObjectStore> base) : base_(std::move(base)) {}

  // After `successes` more successful calls of `op` on names starting with `prefix`, every such
  // call fails with `errnum` until Clear().
  void FailAfter(StoreOp op, int successes, int errnum, std::string prefix = "") EXCLUDES(mu_);
  // Put/PutIfAbsent of names starting with `prefix` report OK and store nothing (a lost write).
  void DropPuts(std::string prefix) EXCLUDES(mu_);
  void CrashBefore(std::string prefix) EXCLUDES(mu_);
  // Leases taken from now on say Lapsed() (their renewals were lost) until Clear().
  void LapseLeases() EXCLUDES(mu_);
  void Clear() EXCLUDES(mu_);
  // Calls of `op` seen so far (failed ones included).
  int calls(StoreOp op) const EXCLUDES(mu_);
  ObjectStore& base() { return *base_; }

  Status Put(const std::string& name, std::span<const uint8_t> data) override;
  Status PutIfAbsent(const std::string& name, std::span<const uint8_t> data) override;
  Result<std::vector<uint8_t>> Get(const std::string& name) override;
  Result<size_t> ReadInto(const std::string& name, std::span<uint8_t> out) override;
  Result<Tail> ReadTail(const std::string& name, std::span<uint8_t> out) override;
  Result<bool> Exists(const std::string& name) override;
  Result<uint64_t> Size(const std::string& name) override;
  Result<std::vector<std::string>> List(const std::string& prefix) override;
  Status Delete(const std::string& name) override;
  Result<std::unique_ptr<Lease>> Lock(LockMode mode, bool wait) override;
  std::unique_ptr<PutBatch> NewPutBatch() override;
  bool remote() const override { return base_->remote(); }
  int preferred_writes() const override { return base_->preferred_writes(); }

 private:
  class Batch;
  static constexpr int kOps = 6;
  struct Rule {
    bool active = false;
    int successes_left = 0;
    int errnum = 0;
    std::string prefix;
  };
  // Counts the call; a non-OK Status if a rule makes it fail.
  Status Check(StoreOp op, std::string_view name) EXCLUDES(mu_);
  bool Dropped(std::string_view name) EXCLUDES(mu_);
  // The crash rule: counts a crash when `name` matches it (and clears it); the current epoch.
  uint64_t CrashEpoch(std::string_view name) EXCLUDES(mu_);

  const std::unique_ptr<ObjectStore> base_;
  mutable Mutex mu_;
  Rule rules_[kOps] GUARDED_BY(mu_);
  int calls_[kOps] GUARDED_BY(mu_) = {};
  bool drop_ GUARDED_BY(mu_) = false;
  std::string drop_prefix_ GUARDED_BY(mu_);
  bool crash_armed_ GUARDED_BY(mu_) = false;
  std::string crash_prefix_ GUARDED_BY(mu_);
  uint64_t crash_epoch_ GUARDED_BY(mu_) = 0;  // batch objects put before a crash are lost
  bool lapse_ GUARDED_BY(mu_) = false;
};

}  // namespace blksnap::repo
