// Records: the daemon's state file (STATE_DIR/devices.json) as a schema, read and written
// through an Env.
//
// The file lists each attached device and each ublk image device, so the next start re-attaches
// the devices: after a clean stop ("clean_stop": true, written by Shutdown: no images, no ublk
// dev_ids) as after a crash (the running daemon's records: ublk fronts are recovered, orphaned
// images removed). Format (version 1, the one blksnapd has always written, plus the optional
// "clean_stop"; keys sorted, two-space indent, final newline):
//
//   {"boot_id": str (only when known),
//    "clean_stop": true (only when true),
//    "devices": [{"name": str, "path": str, "loop": bool, "ublk": bool, "ublk_dev_id": int,
//                 "size": uint64, "logical_block_size": uint32}, ...],
//    "images":  [{"snapshot": uuid str, "device": str, "ublk_dev_id": int, "size": uint64,
//                 "logical_block_size": uint32}, ...],
//    "snapshots": [{"id": uuid str, "storage": str, "storage_file": str,
//                   "durability": "crash"|"power", "taken": bool, "limit": uint64, "loop": bool,
//                   "ublk": bool, "devices": [str, ...]}, ...] (only when there is one),
//    "pid": int64, "version": 1}
//
// "snapshots" (issue 15, durable snapshots) lists each snapshot of durability crash or power
// whose storage has a file: what the next start hands to Engine::RecoverSnapshot (storage_file,
// id) and the image fronts it exposes again (NBD and FUSE always, loop and ublk as asked at
// create; a crash's ublk image devices are in "images"). "taken" false: created, not taken when
// written (after a crash the engine releases its storage, or finds it taken after all). A reader
// that does not know the list ignores it: the file stays version 1. "boot_id" (the
// kernel's boot id when the records were written) tells a crash from a power loss.
//
// Reading never throws, whatever the bytes. The document must be an object with "version": 1
// (an integer) and a "devices" list; anything else is an error (EINVAL). Inside, each entry is
// checked on its own: an entry that is not an object, lacks a required field (devices: name,
// path; images: snapshot, device, ublk_dev_id >= 0), has an empty required string, or has a field
// of the wrong type or out of range (ublk_dev_id -1..INT_MAX; logical_block_size a power of two
// in 512..64 KiB) is skipped and named in ParsedRecords::problems. A bad "pid", a non-bool
// "clean_stop" or a non-list "images" is a problem too (pid reads as 0, clean_stop as false — a
// crash, the cautious reading —, no images). Snapshots: an entry lacking id (a UUID), storage,
// storage_file, or devices (a list of non-empty strings), or whose durability is not
// "crash" or "power", is skipped and named; a non-list "snapshots" or a non-string "boot_id" is
// a problem (no snapshots; boot id unknown). Optional fields take the defaults below;
// unknown fields are ignored. Names and paths are checked further by the daemon, not here.
//
// Thread safety: the functions are pure; a RecordStore is used under its owner's lock.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "blksnap/engine.h"
#include "blksnap/env.h"
#include "blksnap/status.h"

namespace blksnap::daemon {

inline constexpr int kRecordsVersion = 1;
inline constexpr const char* kRecordsFileName = "devices.json";

struct DeviceRecord {
  std::string name, path;
  bool loop = false, ublk = false;
  int ublk_dev_id = -1;
  uint64_t size = 0;
  uint32_t logical_block_size = 512;
  bool operator==(const DeviceRecord&) const = default;
};

struct ImageRecord {
  std::string snapshot, device;
  int ublk_dev_id = -1;
  uint64_t size = 0;
  uint32_t logical_block_size = 512;
  bool operator==(const ImageRecord&) const = default;
};

// A durable snapshot to recover at the next start (see the top of this file).
struct SnapshotRecord {
  std::string id;            // the snapshot's UUID, as text
  std::string storage;       // as given to snapshot create (a directory, file or block device)
  std::string storage_file;  // StorageInfo::file: what RecoverSnapshot opens
  SnapshotDurability durability = SnapshotDurability::kPower;  // kCrash or kPower
  bool taken = true;                                           // false: created, not yet taken
  uint64_t taken_at = 0;  // Snapshot::taken_at (0: unknown); restart recovers the newest first
  // Written before a take and cleared after it: a snapshot found so at restart may have made
  // copies the older snapshots of its devices read (they come back ESTALE if it is lost).
  bool taking = false;
  uint64_t limit = 0;  // StorageInfo::limit when written (for reports: the storage keeps its own)
  bool loop = false, ublk = false;   // image fronts asked for at create
  std::vector<std::string> devices;  // member device names
  bool operator==(const SnapshotRecord&) const = default;
};

struct Records {
  int64_t pid = 0;      // the daemon that wrote them
  std::string boot_id;  // the boot they were written in; "" unknown
  // Written by a clean stop (Service::Shutdown): the devices were detached with their CBT sealed
  // and their fronts removed. false: the records of a running daemon (after a crash).
  bool clean_stop = false;
  std::vector<DeviceRecord> devices;
  std::vector<ImageRecord> images;
  std::vector<SnapshotRecord> snapshots;
  bool empty() const { return devices.empty() && images.empty() && snapshots.empty(); }
  bool operator==(const Records&) const = default;
};

struct ParsedRecords {
  Records records;
  std::vector<std::string> problems;  // one line per entry (or field) skipped
};

// See the top of this file. Never throws.
Result<ParsedRecords> ParseRecords(std::string_view text);
// The records of a run that crashed in another boot than `boot_id` (the machine went down: a
// power loss for the snapshots they hold). false after a clean stop (everything was made durable)
// or when either boot id is unknown.
bool WrittenBeforeAPowerLoss(const Records& records, std::string_view boot_id);
// Pretty JSON (as above) + "\n", version 1. Strings that are not valid UTF-8 have their bad
// bytes replaced with U+FFFD (JSON cannot carry them). Never throws.
std::string SerializeRecords(const Records& records);

// STATE_DIR/devices.json through an Env.
class RecordStore {
 public:
  // env must outlive the store.
  RecordStore(Env& env, std::string state_dir);

  // nullopt when there is no file. An unreadable or invalid file is renamed to devices.json.bad
  // and an error returned whose message says so. When single entries are bad, the file is also
  // copied to devices.json.bad (the original stays), the good entries are returned, and
  // `problems` lists what was lost.
  Result<std::optional<ParsedRecords>> Load();
  // Atomic replace (Env::WriteFileAtomic); empty Records remove the file (a missing file is
  // fine). On failure the previous file stays as it was.
  Status Save(const Records& records);

  const std::string& path() const { return path_; }
  std::string bad_path() const { return path_ + ".bad"; }

 private:
  Env& env_;
  const std::string path_;
};

}  // namespace blksnap::daemon
