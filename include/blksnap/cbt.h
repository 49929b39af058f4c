// Change-block tracking as seen from outside the engine.
//
// Every tracked device keeps one byte per tracking block. The *read map* (frozen at each
// snapshot take) holds, for each block, the snap number of the snapshot during whose activity
// the block last changed; 0 means unchanged since the generation began. A backup tool that took
// its last backup at snap number N copies every block whose byte is > N, provided the
// generation id is still the one it saw (a new generation means: take a full backup).
//
// Durable tracking (AttachOptions::cbt_path): the maps live in a state file (docs/cbt-format.md)
// and survive a daemon restart, a kill -9 and a power loss (a write-intent journal bounds what
// a power loss can hide). A generation that had to start over says why in
// CbtInfo::generation_reason, one of the kCbtReason* strings below.
#pragma once

#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "blksnap/status.h"
#include "blksnap/uuid.h"

namespace blksnap {

// Why the current generation began (CbtInfo::generation_reason).
inline constexpr char kCbtReasonNew[] = "new";  // first attach, or tracking in memory only
// A previous run tracked the device (AttachOptions::cbt_expected) but its state file is gone.
inline constexpr char kCbtReasonStateLost[] = "state-lost";
// The state file was unreadable: bad magic, version, checksum or size (e.g. torn).
inline constexpr char kCbtReasonStateCorrupt[] = "state-corrupt";
// The device's capacity (or the tracking block size) differs from the state file's.
inline constexpr char kCbtReasonCapacityChanged[] = "capacity-changed";
// The run that tracked the device did not stop cleanly, the machine rebooted since, and the
// write-intent journal that would have bounded what was lost could not be trusted: it had
// failed (an I/O error on the state file) before the power went.
inline constexpr char kCbtReasonUncleanPower[] = "restart-unclean-power";
// The original is another file or device than the one tracked (device, inode, rdev, kind).
inline constexpr char kCbtReasonIdentityChanged[] = "identity-changed";
// Same file, but its size, mtime or ctime changed since the clean stop: written by someone else.
inline constexpr char kCbtReasonOutsideWrite[] = "outside-write";
// The snap number would have passed 255.
inline constexpr char kCbtReasonSnapNumberWrap[] = "snap-number-wrap";
// The map was marked corrupted (a copy-on-write failure lost a change).
inline constexpr char kCbtReasonCorrupted[] = "corrupted";

struct CbtInfo {
  uint32_t block_size = 0;  // bytes, a power of two
  uint64_t block_count = 0;
  uint64_t device_capacity = 0;  // bytes
  Uuid generation_id;
  uint8_t changes_number = 0;  // snap number of the last take (the read map's newest value)
  std::string generation_reason = kCbtReasonNew;  // why this generation began (kCbtReason*)
  bool durable = false;  // the maps live in a state file and survive a restart
  // When the maps were last made durable (at attach, at each take, at a clean stop); the
  // epoch if never (memory only).
  std::chrono::system_clock::time_point last_checkpoint{};
  // How this run found the state (kCbtRecovered*): "" for a new generation.
  std::string recovered_from;
  uint64_t journal_syncs = 0;        // syncs of the write-intent journal since attach
  uint64_t journal_region_size = 0;  // bytes; 0 in memory
};

// How the state file of a continued generation was found (CbtInfo::recovered_from).
inline constexpr char kCbtRecoveredCleanStop[] = "clean-stop";      // exact
inline constexpr char kCbtRecoveredDaemonCrash[] = "daemon-crash";  // exact, in the page cache
// The machine went down with the file open: the maps as on disk plus every journal region,
// marked changed (a bounded over-report).
inline constexpr char kCbtRecoveredPowerLoss[] = "power-loss";

// The identity of an original, recorded in the state file at attach and at a clean stop, and
// compared at the next attach to detect writes blksnap could not see. Fields that do not apply
// stay 0; kind kUnknown disables the comparison.
struct CbtIdentity {
  enum Kind : uint32_t { kUnknown = 0, kFile = 1, kBlockDevice = 2 };
  uint32_t kind = kUnknown;
  uint64_t dev = 0, ino = 0, rdev = 0;
  uint64_t size = 0;                   // bytes
  int64_t mtime_ns = 0, ctime_ns = 0;  // files only (a device node's times say nothing)
  bool operator==(const CbtIdentity&) const = default;
};

// A fresh identity of the file or block device at `path` (stat, and the size of a block device).
Result<CbtIdentity> StatCbtIdentity(const std::string& path);

struct ByteExtent {
  uint64_t offset = 0;
  uint64_t length = 0;
  bool operator==(const ByteExtent&) const = default;
};

// Read access to a device's CBT read map; implemented by the engine's tracker and consumed by
// frontends (NBD's blksnap:cbt meta context) and the daemon.
class CbtSource {
 public:
  virtual ~CbtSource() = default;
  virtual CbtInfo cbt_info() const = 0;
  // Copies read-map bytes [first_block, first_block + out.size()) into out; EINVAL past the end.
  virtual Status ReadCbtMap(uint64_t first_block, std::span<uint8_t> out) const = 0;
};

}  // namespace blksnap
