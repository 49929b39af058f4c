// RunBackup and RunRestore: moving a device's bytes into a repository and back (issue 16).
//
// A backup reads the image (a snapshot image, or any BlockDevice that does not change while it
// is read) chunk by chunk (the repository's chunk size), `threads` chunks at a time: a chunk of
// zeroes becomes the zero digest and is not stored; any other chunk is named by the codec and
// stored unless the repository has it (Repository::PutChunk, through one PutBatch: the store makes
// the new chunks durable together, and the backup commits the batch before it stores the index,
// so the manifest never references a chunk a crash could lose). An incremental backup (a parent
// backup of the same device, size and chunk size, plus the byte extents changed since the
// parent's snap number) reads only the chunks those extents touch and takes every other digest
// from the parent's index without reading it. The index is stored, then the manifest is published
// last: a backup that fails or is killed leaves no manifest, only chunks that the next backup
// reuses (and gc frees if none does).
//
// A restore writes every chunk of a backup's index to a target at least as large as the device:
// decoders (one per CPU) each read a blob into a ChunkFrame around its 4 KiB-aligned chunk
// buffer and decode there (Repository::ReadChunk: a raw payload is not copied); the chunk is
// written from there, by the decoder itself or, when more writes should be in flight than there
// are decoders (a disk), by one of `threads` writer threads the frame is handed to: a target
// opened with O_DIRECT takes it without a copy. ReadChunk checks each chunk's seal (CRC-32C or GCM
// tag over its name and bytes, and zstd's content checksum), so a damaged or missing chunk fails
// the restore with that chunk's error; `check_digests` also re-hashes each chunk as it is read.
// Zero chunks are skipped when the target already reads as zeroes (a new or truncated sparse file:
// they stay holes), else written as zeroes. `verify` then re-reads the target and checks every
// chunk against the index.
//
// Progress is reported through a callback, from the worker threads, at most every
// `progress_interval` (and once at the end); it must be thread-safe and quick.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "blksnap/block_device.h"
#include "blksnap/cbt.h"
#include "blksnap/status.h"
#include "repository/index.h"
#include "repository/manifest.h"
#include "repository/repository.h"

namespace blksnap::repo {

struct TransferProgress {
  uint64_t done_bytes = 0;    // of the device, read, skipped or written
  uint64_t total_bytes = 0;   // the device's size
  uint64_t read_bytes = 0;    // backup: read from the image; restore: fetched chunk bytes
  uint64_t stored_bytes = 0;  // backup: new blob bytes stored
};
using ProgressFn = std::function<void(const TransferProgress&)>;

// A backup's workers when neither the caller nor the store says (hashing is the CPU's work).
constexpr int kBackupThreads = 4;
// What the workers a store prefers may hold in chunk buffers, at most, two chunks a worker
// (ObjectStore::preferred_writes: 16 for S3 with 4 MiB chunks, fewer for larger chunks).
constexpr uint64_t kPreferredWorkersMemory = 128ull << 20;

struct BackupSpec {
  std::string device;  // the device's name (manifest)
  std::string host;    // empty: gethostname
  std::string cbt_generation;
  uint64_t snap_number = 0;
  // Incremental: the parent backup, its index and the extents changed since its snap number.
  std::optional<Manifest> parent;
  Index parent_index;
  std::vector<ByteExtent> changed;
  // Full (no parent): why ("first", "generation", "requested").
  std::string full_reason = "first";
  // Workers, each reading, hashing and storing its own chunk (0: the store's preferred_writes,
  // else kBackupThreads).
  int threads = 0;
  ProgressFn progress;
  std::chrono::milliseconds progress_interval{250};
  // Polled between chunks: true stops the backup with ECANCELED (nothing is published).
  std::function<bool()> cancelled;
};

// This machine's name, as backups record it (gethostname; "unknown" if it fails).
std::string HostName();

// The published manifest. EINVAL when the parent does not match the image (size, chunk size).
Result<Manifest> RunBackup(Repository& repo, BlockDevice& image, const BackupSpec& spec);

struct RestoreSpec {
  // Chunk writes in flight (0: one per decoder, or 4 from a remote store). Chunks are read and
  // decoded by `decoders` workers (0: one per usable CPU, or `threads` from a remote store, whose
  // reads wait on the network; never more than threads); when threads is more than that (a disk
  // wants a queue), each decoder hands its decoded chunk to `threads` writer threads and goes on
  // (docs/performance.md, "A faster machine; the CLI's poll, decoders per CPU").
  int threads = 0;
  int decoders = 0;
  bool target_is_zeroed = false;  // a new or truncated file: zero chunks are left as holes
  bool verify = false;            // re-read the target afterwards and check every chunk
  // Re-hash each chunk as it is read (Repository::ChunkCheck::kDigest); by default each blob's
  // seal is checked (kSeal), and `verify` re-hashes what landed on the target.
  bool check_digests = false;
  ProgressFn progress;
  std::chrono::milliseconds progress_interval{250};
};

Status RunRestore(Repository& repo, const Manifest& backup, BlockDevice& target,
                  const RestoreSpec& spec);

}  // namespace blksnap::repo
