// Config: every engine tunable in one place, named after the Linux blksnap module parameters.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "blksnap/status.h"

namespace blksnap {

class Env;  // env.h

struct Config {
  // Change-block tracking: block size 2^shift, starting at the minimum shift and grown while the
  // block count exceeds tracking_block_maximum_count, never beyond the maximum shift. Chosen when
  // a CBT generation starts; a device's recovered CBT state keeps the block size it was made with.
  // 16 KiB (the kernel module's default is 64 KiB): an incremental backup of small-file churn
  // reads 1.9x the bytes changed instead of 3.6x (docs/performance.md, "Repository format 2").
  uint32_t tracking_block_minimum_shift = 14;
  uint32_t tracking_block_maximum_shift = 26;
  uint64_t tracking_block_maximum_count = 2097152;
  // Durable CBT: every this many milliseconds, each device written since its last checkpoint
  // has its maps made durable and its write-intent journal emptied (what a power loss may then
  // over-report is bounded by the regions written in about two intervals). 0 = only at a clean
  // stop.
  uint32_t cbt_checkpoint_interval_ms = 30000;

  // Copy-on-write chunks: size 2^shift, starting at the minimum shift and grown while the chunk
  // count exceeds 2^chunk_maximum_count_shift, never beyond chunk_maximum_shift.
  uint32_t chunk_minimum_shift = 18;
  uint32_t chunk_maximum_shift = 26;
  uint32_t chunk_maximum_count_shift = 40;
  // Chunks copied into memory and waiting to be written to the difference storage; writers
  // that would exceed it wait (throttling).
  uint32_t chunk_maximum_in_queue = 64;
  // Chunks kept in memory after being stored, for image reads (LRU).
  uint32_t chunk_maximum_in_cache = 32;
  // Threads writing queued chunks to the difference storage, each one synchronous direct write
  // at a time: at most this many chunk writes in flight. One starts with the snapshot, more only
  // while the queue outgrows them. 16 suits disks (latency to overlap); 1 suits a RAM-backed
  // storage on few CPUs (docs/performance.md findings 8-9, docs/performance-vm.md).
  uint32_t chunk_storer_threads = 16;
  // Durable snapshots (crash, power): an original write that must wait for its chunk's copy to
  // be stored and committed stores it in its own thread (true) instead of handing it to a
  // storer and waiting for it (false). The commit is grouped with the other writers' either way
  // (docs/durable-snapshots.md). Memory snapshots whose storage goes through the page cache
  // store inline too, the copies of original writes and those an image write makes for an
  // older snapshot (a copy into the kernel costs less than the hand-off); on O_DIRECT storage
  // their writers hand the copy to the storers and go on.
  bool durable_store_inline = true;
  // Durable snapshots: the chunk log is compacted (every preserved chunk's record, 125 to a
  // page, in a new chain) once it has grown by this many 4 KiB pages and by twice the pages of
  // the last compaction, so a restart after a crash reads a bounded log
  // (docs/durable-snapshots.md).
  uint32_t chunk_log_compact_pages = 16384;

  // Difference storage in a regular file goes through the page cache (true): chunk writes are
  // copies the kernel writes back, image reads of preserved chunks are served from memory while
  // it holds them. false: O_DIRECT, as block-device storage always is (docs/design.md).
  bool diff_storage_page_cache = true;

  // Difference storage grows in steps of this many bytes.
  uint64_t diff_storage_minimum = 1ull << 30;

  // Creates, sizes and opens difference storage files (env.h); null: Env::Default(). Not owned:
  // must outlive the engine.
  Env* env = nullptr;

  // Checks and normalises the values. Values that can be corrected (a maximum below its
  // minimum) are corrected and described in *warnings; impossible values are refused with
  // EINVAL and a message naming the tunable.
  Status Validate(std::vector<std::string>* warnings = nullptr);
};

}  // namespace blksnap
