// The blksnap engine: tracked devices, snapshots and their images.
//
//   auto engine = Engine::Create(config).value();
//   auto tracker = engine->Attach("vol0", OpenFileDevice("/srv/vol0.img").value(), {}).value();
//   // ... all writes to vol0 go through `tracker` (a BlockDevice) from now on ...
//   Uuid id = engine->CreateSnapshot({.storage_path = "/var/tmp", .limit = 8ull << 30}).value();
//   engine->AddDevice(id, "vol0");
//   engine->Take(id, {});
//   auto image = engine->FindSnapshot(id)->image("vol0");  // a BlockDevice: the take-time data
//   ...
//   engine->Destroy(id);
//
// Thread safety: every method of Engine, Tracker and Snapshot may be called from any thread.
// Objects handed out as shared_ptr stay valid while held; after Destroy()/Detach() their I/O
// fails (ENODEV) instead of touching freed state.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "blksnap/block_device.h"
#include "blksnap/cbt.h"
#include "blksnap/config.h"
#include "blksnap/status.h"
#include "blksnap/uuid.h"

namespace blksnap {

class Snapshot;
struct RollbackProgress;  // below

// The one rule for device names (Engine::Attach; the daemon and CLI use it too): 1 to 128
// characters, each an ASCII letter, digit, '-', '_' or '.', and not "." or "..". So a name is
// safe as a path component (FUSE files, NBD export names, state files) and in messages.
// EINVAL with a message naming the rule otherwise.
Status ValidateDeviceName(std::string_view name);

// A tracked device: a BlockDevice layer over the original that records every change (CBT) and,
// while a snapshot is taken, preserves each chunk's old content before its first overwrite.
// All writes to the original must go through it.
// The taken snapshots one device may be in at once (issue 18).
inline constexpr size_t kMaxSnapshotsPerDevice = 16;

class Tracker : public BlockDevice, public CbtSource {
 public:
  virtual const std::string& name() const = 0;
  virtual const std::string& path() const = 0;  // as given to Attach (may be empty)

  // Byte extents of blocks whose read-map value is > since_snap. If generation is given and
  // differs from the current one, fails with ESTALE ("generation changed: full backup needed").
  virtual Result<std::vector<ByteExtent>> ChangedExtents(
      uint8_t since_snap, const std::optional<Uuid>& generation = std::nullopt) const = 0;
  // Marks [offset, offset + length) changed: write map = active, read map = previous.
  virtual Status MarkDirty(uint64_t offset, uint64_t length) = 0;

  // The newest snapshot this device is in (created or taken), or null.
  virtual std::shared_ptr<Snapshot> snapshot() const = 0;
  // Every snapshot this device is in, oldest first: several taken ones (at most
  // kMaxSnapshotsPerDevice) and at most one not yet taken.
  virtual std::vector<std::shared_ptr<Snapshot>> snapshots() const = 0;

  // The last rollback onto this device (Engine::Rollback), if any since it was attached.
  virtual std::optional<RollbackProgress> rollback() const = 0;

  // Devices that alias this one (e.g. a loop device on its front), as st_rdev values, so the
  // engine can refuse difference storage placed on them.
  virtual void AddAlias(uint64_t rdev) = 0;
  virtual void RemoveAlias(uint64_t rdev) = 0;
};

enum class SnapshotState { kCreated, kTaken, kCorrupted, kDestroyed };
const char* ToString(SnapshotState state);  // "created", "taken", "corrupted", "destroyed"

// What a taken snapshot survives (docs/durable-snapshots.md), chosen per snapshot as LVM chooses
// a persistent or transient exception store. The rule of the durable modes: the original chunk is
// overwritten only after its preserved copy and the record that locates it are in the difference
// storage (written to the kernel for kCrash; synced, one sync per batch, for kPower).
enum class SnapshotDurability {
  kMemory,  // nothing: the snapshot dies with the process (an unnamed temporary storage file)
  kCrash,   // a daemon crash or restart (kill -9, upgrade); not a power loss (the default)
  kPower,   // a power loss too
};
const char* ToString(SnapshotDurability durability);  // "memory", "crash", "power"
// EINVAL with a one-line message for anything but those three words.
Result<SnapshotDurability> ParseSnapshotDurability(std::string_view text);

// How a recovered snapshot was found (Snapshot::recovered_from); "" when created by this run.
inline constexpr char kSnapshotRecoveredCleanStop[] = "clean-stop";      // CloseSnapshot
inline constexpr char kSnapshotRecoveredDaemonCrash[] = "daemon-crash";  // same boot
inline constexpr char kSnapshotRecoveredPowerLoss[] = "power-loss";      // the machine rebooted

struct SnapshotEvent {
  enum class Type { kCorrupted, kNoSpace };
  Type type = Type::kCorrupted;
  std::string device;      // kCorrupted: which device's copy failed
  int errnum = 0;          // kCorrupted: why
  uint64_t requested = 0;  // kNoSpace: bytes the storage wanted to grow by
};
const char* ToString(SnapshotEvent::Type type);  // "corrupted", "no_space"

// One entry of a snapshot's event log.
struct SnapshotEventRecord {
  uint64_t seq = 0;  // 1, 2, 3, ... per snapshot
  SnapshotEvent event;
  std::chrono::system_clock::time_point time;
};

struct StorageInfo {
  std::string path;  // as given (a directory, a file or a block device)
  // The file or device that holds the data, to recover the snapshot from: path itself, or the
  // file made in the directory path for a durable snapshot; "" for an unnamed temporary file.
  std::string file;
  uint64_t capacity = 0;  // bytes usable now (file size minus header)
  uint64_t used = 0;      // bytes holding preserved chunks
  uint64_t limit = 0;
};

struct SnapshotDeviceInfo {
  std::string name;
  int errnum = 0;  // non-zero once this device's copy-on-write failed
};

class Snapshot {
 public:
  virtual ~Snapshot() = default;
  virtual const Uuid& id() const = 0;
  virtual SnapshotState state() const = 0;
  virtual StorageInfo storage_info() const = 0;
  // Raises the difference storage's limit while the snapshot lives (the answer to a no_space
  // event). EINVAL below the current limit or once corrupted; ENOSPC beyond what a block-device
  // storage holds; ENODEV once destroyed.
  virtual Status SetStorageLimit(uint64_t limit) = 0;
  virtual std::vector<SnapshotDeviceInfo> devices() const = 0;
  virtual SnapshotDurability durability() const = 0;
  // When it was taken, in ns since the epoch (0: not taken, or recovered from a storage written
  // before the field existed). Orders the snapshots of a device.
  virtual uint64_t taken_at() const = 0;
  // kSnapshotRecovered* for a snapshot RecoverSnapshot brought back, "" otherwise.
  virtual std::string recovered_from() const = 0;
  // The image of one of its devices: null unless the snapshot is taken. Reads give the data
  // at the take; writes land in the difference storage, never on the original. Once the
  // snapshot is corrupted, image I/O fails with EIO; once destroyed, with ENODEV.
  virtual std::shared_ptr<BlockDevice> image(const std::string& device) const = 0;

  // Events form one sequenced log per snapshot; readers do not consume them, so any number of
  // readers see every event (each remembers the last seq it saw).
  //
  // The first event with seq > after; ETIMEDOUT if none arrives within timeout; ENODEV once the
  // snapshot is destroyed and no event after `after` is left. Any number of threads may wait.
  // If events after `after` were already dropped from the log (it keeps 64), the oldest kept one
  // is returned: a gap in seq tells the reader it missed some.
  virtual Result<SnapshotEventRecord> WaitEvent(uint64_t after,
                                                std::chrono::milliseconds timeout) = 0;
  // The most recent events (at most 64), oldest first.
  virtual std::vector<SnapshotEventRecord> events() const = 0;
  // seq of the newest event (0 if none yet).
  virtual uint64_t last_event_seq() const = 0;
};

class MappedFiles;  // mapped_file.h

struct AttachOptions {
  std::string path;  // for reports and for the storage-placement check; may be empty
  // Durable change tracking (docs/cbt-format.md): the device's CBT state file. Empty: CBT in
  // memory only, a new generation at every attach. Attach continues the generation found there
  // or starts a new one with a reason (CbtInfo::generation_reason); before it returns, the file
  // is marked open by this boot and synced.
  std::string cbt_path;
  // A previous run tracked this device: a missing state file is "state-lost", not "new".
  bool cbt_expected = false;
  // The original's identity now (StatCbtIdentity(path)), compared with the one recorded at the
  // last clean stop to detect writes made while nobody tracked it. Unknown: not compared.
  CbtIdentity identity;
  std::shared_ptr<MappedFiles> mapped_files;  // null: PosixMappedFiles() (tests: memory)
  // Writes wait until ReleaseWrites(name) (RecoverSnapshot leaves them held: a device may have
  // several snapshots to recover, the newest first): a daemon restarting re-attaches a recorded
  // snapshot's devices (and their fronts) before the snapshots, and no write may reach such an
  // original unpreserved.
  bool hold_writes = false;
  // Reads wait too, until ReleaseWrites(name): a device with a rollback to resume (its original
  // is half merged) serves nothing before the rollback is back (Engine::Rollback with resume).
  bool hold_reads = false;
};

struct DetachOptions {
  // The clean stop of a daemon that will attach the device again: the state file is sealed, so
  // the next attach continues the generation exactly. false: the state file is removed.
  bool keep_cbt = false;
  // With keep_cbt: the original's identity after its last write (a fresh StatCbtIdentity).
  CbtIdentity identity;
};

struct SnapshotOptions {
  // A directory (an unnamed temporary file is made in it), a regular file (grown with
  // fallocate) or a block device (used at its fixed size).
  std::string storage_path;
  uint64_t limit = 0;  // bytes; 0 = no limit beyond the file system's free space
  // Accept a storage that holds a file-system or partition signature (ext4, XFS, btrfs, swap,
  // LUKS, MBR, GPT): its content is destroyed. Without it such a storage is refused (EEXIST).
  bool force = false;
  // Optional: use this already opened device as the storage (fixed size; tests and embedders
  // use it to stack a FaultDevice). storage_path then only names it in reports.
  std::shared_ptr<BlockDevice> storage_device;
  // kCrash and kPower: a directory storage_path gets a named file, blksnap-<id>.diff, removed
  // when the snapshot is destroyed (kMemory: an unnamed temporary file). The default: crash
  // (docs/durable-snapshots.md, "The default and its price").
  SnapshotDurability durability = SnapshotDurability::kCrash;
};

// Brings back a durable snapshot from its difference storage after a restart (CloseSnapshot,
// a crash or a power loss). Its devices must be attached again first, with the capacities the
// storage records.
struct RecoverSnapshotOptions {
  std::string storage_file;                     // StorageInfo::file of the snapshot
  Uuid id;                                      // the snapshot the storage must belong to
  std::shared_ptr<BlockDevice> storage_device;  // instead of storage_file (tests)
  // The machine went down since the snapshot was written (the daemon knows it from the boot id):
  // a kCrash snapshot cannot be trusted and comes back corrupted. Also inferred from a member
  // device whose CBT was recovered from a power loss.
  bool power_lost = false;
  // Each member's CBT must have continued across the restart (a new generation means writes
  // blksnap could not see, e.g. while the daemon was down): otherwise the snapshot comes back
  // corrupted with that reason. false only for tests with CBT in memory.
  bool check_originals = true;
  // Non-zero: recover it corrupted with this errno (the daemon: a newer snapshot of a member
  // device was lost, and this one read some chunks through it).
  int corrupt = 0;
};

// Rollback of a device to a snapshot (Engine::Rollback, docs/several-snapshots.md): the original
// becomes the snapshot's image (with the writes made to the image). The merge runs in the
// background; the device serves the snapshot's data at once (reads of chunks not merged yet come
// from the snapshot; a write to one waits for that chunk's merge). The journal
// (docs/rollback-journal-format.md) lists the chunks still to merge, so a crash or restart
// resumes the merge (RollbackOptions::resume) and never merges a chunk again after a write.
struct RollbackOptions {
  std::string journal_path;  // created (must not exist), or continued with resume
  std::shared_ptr<BlockDevice> journal_device;  // instead of journal_path (tests)
  // Continue the merge the journal describes (after a restart; the snapshot recovered first).
  bool resume = false;
  // A pause after each merged run of chunks (tests cut a merge mid-way with it).
  uint32_t merge_delay_us = 0;
};

struct RollbackProgress {
  enum class State { kMerging, kDone, kFailed, kStopped };
  State state = State::kMerging;
  Uuid snapshot;
  uint64_t chunks_total = 0;   // chunks the merge writes (those that differ from the snapshot)
  uint64_t chunks_merged = 0;  // of them, merged and recorded in the journal
  uint64_t chunk_size = 0;
  int errnum = 0;  // kFailed: why (a message in `error`)
  std::string error;
};
const char* ToString(RollbackProgress::State state);  // "merging", "done", "failed", "stopped"

// Hooks around the switch in Take(), e.g. to freeze file systems on the devices' fronts.
// freeze runs before writers are held; if it fails, the take fails and thaw is not called.
// thaw runs after writers are released, whether or not the switch succeeded.
struct TakeHooks {
  std::function<Status()> freeze;
  std::function<void()> thaw;
};

struct TakeStats {
  std::chrono::microseconds held{0};    // how long writers were held
  std::chrono::microseconds frozen{0};  // from freeze to thaw (0 without hooks)
};

class Engine {
 public:
  static Result<std::unique_ptr<Engine>> Create(Config config);
  virtual ~Engine() = default;

  virtual const Config& config() const = 0;

  // EEXIST if the name is taken; EINVAL for a name ValidateDeviceName refuses or a zero-sized
  // device.
  virtual Result<std::shared_ptr<Tracker>> Attach(const std::string& name,
                                                  std::shared_ptr<BlockDevice> original,
                                                  const AttachOptions& options = {}) = 0;
  // ENOENT unknown; EBUSY while in a snapshot. Waits for in-flight writes; later I/O through
  // the tracker fails with ENODEV. An error from sealing or removing the state file is returned
  // with the device detached all the same (an unsealed file then recovers as after a crash).
  virtual Status Detach(const std::string& name, const DetachOptions& options = {}) = 0;
  virtual std::shared_ptr<Tracker> FindTracker(const std::string& name) const = 0;
  // Lets the writes of a device attached with hold_writes in (idempotent; ENOENT unknown).
  virtual Status ReleaseWrites(const std::string& name) = 0;
  virtual std::vector<std::shared_ptr<Tracker>> trackers() const = 0;

  virtual Result<Uuid> CreateSnapshot(const SnapshotOptions& options) = 0;
  // ENOENT unknown snapshot or device; EALREADY already in this snapshot; EBUSY in another, or
  // the snapshot is already taken; EINVAL if the device holds this snapshot's storage.
  virtual Status AddDevice(const Uuid& id, const std::string& device) = 0;
  // Atomic across the snapshot's devices. EALREADY if taken; ENODEV without devices.
  virtual Result<TakeStats> Take(const Uuid& id, const TakeHooks& hooks = {}) = 0;
  // Safe while I/O to originals and images is in flight. ENOENT unknown.
  virtual Status Destroy(const Uuid& id) = 0;
  // The clean stop of a durable snapshot (the daemon stops; RecoverSnapshot brings it back):
  // image I/O stops, every preserved chunk and the state are made durable, the devices leave the
  // snapshot and the storage is closed, not released. Call once no writer of the originals is
  // left (the fronts are gone): a write after it is not preserved. EINVAL for a kMemory or a
  // created (not taken) snapshot; ENOENT unknown.
  virtual Status CloseSnapshot(const Uuid& id) = 0;
  // See RecoverSnapshotOptions. Validates the storage (header, checksums, id, devices and their
  // capacities) before anything changes; rebuilds the chunk tables from the storage's chunk log
  // and puts the snapshot back in the state it was (taken or corrupted) under the same id.
  // ENOENT (and the storage released) for a snapshot that was never taken; EINVAL/EPROTO for a
  // storage that is not this snapshot's or fails its checks (nothing is served from it); ENODEV
  // for a missing device; EBUSY for a device already in a snapshot.
  virtual Result<std::shared_ptr<Snapshot>> RecoverSnapshot(
      const RecoverSnapshotOptions& options) = 0;
  // Starts rolling `device` back to snapshot `id` (see RollbackOptions) and returns once the
  // device serves the snapshot's data; the merge goes on in the background (Tracker::rollback()).
  // EINVAL for a memory snapshot or a memory snapshot newer than it on the device (a restart
  // could not resume), EIO for a corrupted snapshot, EBUSY while a rollback of the device runs,
  // EEXIST for an existing journal without resume; ENOENT unknown snapshot or device. With resume
  // the journal must name this snapshot and device (EINVAL). While it merges, the snapshot's
  // image refuses writes (EROFS), the snapshot cannot be destroyed (EBUSY) and no snapshot of the
  // device can be taken (EBUSY). The journal is removed once every chunk is merged.
  virtual Status Rollback(const Uuid& id, const std::string& device,
                          const RollbackOptions& options) = 0;
  virtual std::shared_ptr<Snapshot> FindSnapshot(const Uuid& id) const = 0;
  virtual std::vector<std::shared_ptr<Snapshot>> snapshots() const = 0;

  // EINVAL (one line naming `what` and the device) if `path` or the file system holding it
  // lies on a tracked device, on one of its fronts (aliases), or on anything stacked on them
  // (loop, dm): the tracker half of the difference storage's placement check
  // (util/block_topology.h). For the daemon's own files (the state dir), whose writes must never
  // be changes of a tracked device. OK when `path` does not exist.
  virtual Status CheckNotOnTracked(const std::string& path, const std::string& what) = 0;
};

}  // namespace blksnap
