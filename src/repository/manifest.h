// Manifest: the record of one backup, stored as the object "backups/<backup id>" once the
// backup's chunks and index are stored (docs/repository-format.md section 5).
//
// A JSON object (nlohmann) with a "version", the fields of Manifest and a "checksum": the
// lowercase hex SHA-256 of the canonical dump (compact, keys sorted) of the object without the
// "checksum" field. Fields this code does not know are kept in the checksum and otherwise
// ignored, so a newer blksnap may add some; a missing or mistyped field, a bad checksum or a
// value that breaks CheckManifest's rules is EBADMSG; a newer version is ENOTSUP. Parsing never
// throws, checks each field's type before reading it, and refuses inputs larger than
// kMaxManifestSize or nested deeper than kMaxManifestDepth (fuzzed). Pure functions and plain
// values: no state, no locking (NewBackupId reads std::random_device).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "blksnap/status.h"
#include "repository/digest.h"

namespace blksnap::repo {

inline constexpr size_t kMaxManifestSize = size_t{1} << 20;
inline constexpr int kMaxManifestDepth = 16;

struct BackupStats {
  uint64_t logical_bytes = 0;     // the device's size read or skipped
  uint64_t read_bytes = 0;        // bytes read from the snapshot
  uint64_t new_chunks = 0;        // chunks stored by this backup
  uint64_t new_bytes_stored = 0;  // their stored (compressed, sealed) size
  uint64_t reused_chunks = 0;     // chunks already in the repository
  uint64_t zero_chunks = 0;       // chunks of zeroes (not stored)
  double seconds = 0;             // wall time of the backup; finite, >= 0

  bool operator==(const BackupStats&) const = default;
};

struct Manifest {
  std::string id;              // "<UTC time yyyymmddthhmmssz>-<8 hex random>", sortable
  std::string device;          // the device name in the daemon, not empty
  std::string host;            // gethostname, for repositories shared by several hosts
  uint64_t device_size = 0;    // bytes
  uint64_t chunk_size = 0;     // a power of two, 64 KiB .. 64 MiB
  std::string time;            // RFC 3339 UTC (FormatRfc3339)
  bool full = false;           // full read (first, new generation, --full) or incremental
  std::string full_reason;     // "first", "generation", "requested"; "" when incremental
  std::string cbt_generation;  // uuid string of the CBT generation at the take
  uint64_t snap_number = 0;    // CBT snap number of the take
  std::string parent;          // backup id whose index was reused, "" for none
  Digest index;                // the Index object's digest (indexes/<hex>), not zero
  BackupStats stats;

  bool operator==(const Manifest&) const = default;
};

// The rules a manifest's values follow (beyond their types): a valid id; a non-empty device; a
// valid chunk size; a time ParseRfc3339 accepts; a full backup has a full_reason, an incremental
// one has none and has a parent; a parent is "" or a valid id; a non-zero index digest; finite,
// non-negative seconds. EINVAL naming the first broken rule.
Status CheckManifest(const Manifest& manifest);

// The JSON text (indented, with the checksum). The manifest must pass CheckManifest: the text of
// one that does not is refused by ParseManifest.
std::string EncodeManifest(const Manifest& manifest);

// Parses and verifies a manifest (see the top of this file for the errors). Fuzzed. The caller
// also checks that the id is the one in the object's name "backups/<id>".
Result<Manifest> ParseManifest(std::string_view text);

// "yyyymmddthhmmssz-mmmxxxxx": the UTC time (whole seconds), then 3 hex digits of milliseconds
// and 5 random lowercase hex digits. Ids sort as their times do (to the millisecond). All
// lowercase: the id is part of the object name "backups/<id>", and object names are [a-z0-9._/-].
std::string NewBackupId(std::chrono::system_clock::time_point time);
bool IsValidBackupId(std::string_view id);

// RFC 3339 in UTC with milliseconds: "2026-11-30T18:30:00.000Z". ParseRfc3339 accepts years
// 1678..2261 only (system_clock nanoseconds; beyond, a time would wrap).
std::string FormatRfc3339(std::chrono::system_clock::time_point time);
// Accepts "YYYY-MM-DDTHH:MM:SS", an optional fraction of a second (its first 9 digits are used)
// and "Z" or "+hh:mm"/"-hh:mm" ('t' and 'z' too); EINVAL on anything else or an invalid date.
Result<std::chrono::system_clock::time_point> ParseRfc3339(std::string_view text);

}  // namespace blksnap::repo
