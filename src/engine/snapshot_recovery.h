// The steps of closing, compacting and recovering a durable snapshot that need no engine state
// (docs/durable-snapshots.md; the engine's CloseSnapshot and RecoverSnapshot call them).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "blksnap/status.h"
#include "blksnap/uuid.h"
#include "engine/chunk.h"
#include "engine/chunk_log.h"
#include "engine/diff_area.h"
#include "engine/diff_storage.h"
#include "engine/tracker.h"

namespace blksnap {

// The end of a clean close, once the areas are detached and their storers idle: flushes the
// storage, compacts the chunk log (125 records a page, unless it is compact already: no growth
// per restart) so the next start reads a few MiB, and writes the header closed with the log's
// pages sealed. A copy that failed while the writers drained (after the snapshot was marked
// destroyed, so OnCorrupt did not record it) makes the header say corrupted. A crash before the
// header write keeps the old log.
Status SealClosedStorage(DiffStorage& storage, const Uuid& id, bool taken,
                         const std::vector<std::shared_ptr<DiffArea>>& areas);

// The chunk log's compaction source for a durable snapshot: every preserved chunk's record of
// the member areas still alive.
ChunkLog::Collector CompactionCollector(std::vector<std::weak_ptr<DiffArea>> areas);

// EINVAL unless every record of the scan names a device of the table, a chunk of it, and (with
// data) the chunk's length at an offset within the storage's `storage_size` bytes.
Status CheckLogRecords(const ChunkLog::Scan& scan, const std::vector<ChunkGeometry>& geometries,
                       uint64_t storage_size, const std::string& name);

// The log's last commit, when its pages are not sealed, may be torn by a power cut: one flush
// made its pages and its data durable (chunk_log.h), so a page may be on the disk without the
// data it locates. Reads the data of each of its records with kRecordFlagVerify and drops from
// the scan those whose CRC-32C does not match (their commit never returned: their originals
// were not overwritten); *dropped counts them. Once the log continues, the caller compacts it
// without them (ChunkLog::Compact), or a later commit would make them look committed. Data that
// cannot be read sets *unreadable (the snapshot cannot be vouched for: the caller marks it
// corrupted); only ENOMEM fails. Without `torn_tail` (a crash log: its data was in the kernel
// before its record was written, so a mismatch is data damaged since) a mismatching record that
// no later record of its chunk replaces sets *unreadable too, instead of being dropped.
Status CheckLastCommit(BlockDevice& device, uint64_t sealed, bool torn_tail, ChunkLog::Scan* scan,
                       uint64_t* dropped, bool* unreadable);

// Destroy of a durable snapshot: its storage stops saying taken (a crash recovers nothing), or,
// with `keep_records` (older snapshots still read through its records until their copies are
// committed), says corrupted with ECANCELED.
void ReleaseDestroyedStorage(DiffStorage& storage, bool keep_records);

// Sets or clears kStorageFlagVolatileNewer in the storage of every durable snapshot of these
// devices: set while a memory snapshot taken after it (or `taking`, a memory snapshot about to
// be taken) holds one of its devices, `leaving` (being destroyed) not counted.
void SyncVolatileNewerFlags(const std::vector<std::shared_ptr<TrackerImpl>>& trackers,
                            const SnapshotImpl* taking, const SnapshotImpl* leaving);

// The attached trackers of the devices a recovered storage's header lists, with their chunk
// geometries: ENODEV for a device not attached (`find` gives null), EINVAL for a device listed
// twice, of another size, or whose other snapshots use another chunk size (one geometry per
// chain, area_chain.h), EBUSY for a device in a snapshot not taken yet or in
// kMaxSnapshotsPerDevice snapshots.
Status ResolveRecoveredDevices(
    const DiffStorageHeader& h, const Uuid& id, const std::string& name,
    const std::function<std::shared_ptr<TrackerImpl>(const std::string&)>& find,
    std::vector<std::shared_ptr<TrackerImpl>>* trackers, std::vector<ChunkGeometry>* geometries);

}  // namespace blksnap
