// Closing and recovering a durable snapshot: see snapshot_recovery.h.
#include "engine/snapshot_recovery.h"

#include <algorithm>
#include <map>

#include "engine/snapshot.h"
#include "util/crc32c.h"

namespace blksnap {

Status SealClosedStorage(DiffStorage& storage, const Uuid& id, bool taken,
                         const std::vector<std::shared_ptr<DiffArea>>& areas) {
  int drained_errno = 0;
  for (const auto& area : areas) {
    if (area->corrupted() && !drained_errno) drained_errno = area->corrupt_errno();
  }
  // The chunk log compacted (125 records a page), so the next start reads a few MiB, not
  // one page per commit; the header then points at it. A crash before that keeps the old log.
  Status s = storage.device().Flush();
  uint64_t log_start = storage.header().log_start;
  const uint64_t epoch = storage.header().log_epoch + 1;
  // Every page written is durable now (the storers are idle, the flush above): sealed.
  uint64_t sealed = storage.log() ? storage.log()->last_seq() : 0;
  if (s.ok() && taken && !drained_errno && storage.log()) {
    std::vector<LogRecord> records;
    for (const auto& area : areas) area->CollectRecords(&records);
    // Not when it is compact already (a start and a stop without much written): no growth.
    const uint64_t packed = (records.size() + kLogRecordsPerPage - 1) / kLogRecordsPerPage;
    if (storage.log()->pages_since_compaction() > packed + 16) {
      uint64_t pages = 0;
      auto compact = ChunkLog::WriteCompact(&storage, id, /*sync=*/true, epoch, records, &pages);
      if (compact.ok()) {  // else the old log stays: correct, slower
        log_start = *compact;
        sealed = pages;
      }
    }
  }
  if (s.ok()) {
    s = storage.UpdateHeader([&](DiffStorageHeader& h) {
      if (h.log_start != log_start) h.log_epoch = epoch;
      h.log_start = log_start;
      h.log_sealed = sealed;
      h.flags |= kStorageFlagClosed;
      if (drained_errno && h.state != kStorageStateCorrupted) {
        h.state = kStorageStateCorrupted;
        h.errnum = static_cast<uint32_t>(drained_errno);
      }
    });
  } else {
    // A write-back failed (the kernel reports it at the flush; a crash log's mapped pages are
    // written back only by the kernel): the log may say less on the disk than it did here, and
    // a restart would then serve chunks from originals already overwritten. Corrupted, if the
    // header can still be written; else the next start finds what the disk holds.
    const int errnum = s.errnum() != 0 ? s.errnum() : EIO;
    storage
        .UpdateHeader([errnum](DiffStorageHeader& h) {
          if (h.state == kStorageStateCorrupted) return;
          h.state = kStorageStateCorrupted;
          h.errnum = static_cast<uint32_t>(errnum);
        })
        .IgnoreError();
  }
  return s;
}

Status CheckLogRecords(const ChunkLog::Scan& scan, const std::vector<ChunkGeometry>& geometries,
                       uint64_t storage_size, const std::string& name) {
  for (const LogRecord& r : scan.records) {
    const bool bad = r.device >= geometries.size() || r.chunk >= geometries[r.device].count ||
                     (!(r.flags & kRecordFlagZero) &&
                      (r.length != geometries[r.device].length(r.chunk) ||
                       r.offset > storage_size || r.length > storage_size - r.offset));
    if (bad) return Status::Error(EINVAL, name + ": a chunk log record is out of range");
  }
  return Status::Ok();
}

Status CheckLastCommit(BlockDevice& device, uint64_t sealed, bool torn_tail, ChunkLog::Scan* scan,
                       uint64_t* dropped, bool* unreadable) {
  *dropped = 0;
  *unreadable = false;
  if (scan->pages == 0 || scan->cursor.next_seq - 1 <= sealed) return Status::Ok();
  std::vector<uint8_t> data;
  size_t kept = scan->last_commit;
  for (size_t i = scan->last_commit; i < scan->records.size(); ++i) {
    const LogRecord& r = scan->records[i];
    bool keep = true;
    if ((r.flags & kRecordFlagVerify) && !(r.flags & kRecordFlagZero)) {
      data.resize(r.length);
      Status s = device.Read(r.offset, data);
      if (s.errnum() == ENOMEM) return s;
      if (!s.ok()) {
        *unreadable = true;  // torn, or bad since it was committed: nothing to tell which
        return Status::Ok();
      }
      keep = Crc32c(data.data(), data.size()) == r.crc;
      // A crash log's mismatch is damage, unless a later record of the chunk replaces this one
      // (an image write records the chunk again, without a CRC, before changing its data).
      if (!keep && !torn_tail &&
          std::none_of(scan->records.begin() + static_cast<ptrdiff_t>(i) + 1, scan->records.end(),
                       [&](const LogRecord& later) {
                         return later.device == r.device && later.chunk == r.chunk;
                       })) {
        *unreadable = true;
        return Status::Ok();
      }
    }
    if (keep) {
      scan->records[kept++] = r;
    } else {
      ++*dropped;
    }
  }
  scan->records.resize(kept);
  return Status::Ok();
}

ChunkLog::Collector CompactionCollector(std::vector<std::weak_ptr<DiffArea>> areas) {
  return [areas = std::move(areas)](std::vector<LogRecord>* out) {
    std::vector<std::shared_ptr<DiffArea>> live;
    size_t touched = 0;
    for (const auto& weak : areas) {
      if (auto area = weak.lock()) {
        touched += area->stats().chunks_touched;
        live.push_back(std::move(area));
      }
    }
    // One allocation of the right size (large: mmap, given back when freed), not a doubling
    // series that the allocator's arenas would keep after each compaction.
    out->reserve(touched + 1024);
    for (const auto& area : live) area->CollectRecords(out);
  };
}

Status ResolveRecoveredDevices(
    const DiffStorageHeader& h, const Uuid& id, const std::string& name,
    const std::function<std::shared_ptr<TrackerImpl>(const std::string&)>& find,
    std::vector<std::shared_ptr<TrackerImpl>>* trackers, std::vector<ChunkGeometry>* geometries) {
  for (const StorageDevice& d : h.devices) {
    for (const auto& t : *trackers) {
      if (t->name() == d.name)
        return Status::Error(EINVAL, name + " lists device '" + d.name + "' twice");
    }
    std::shared_ptr<TrackerImpl> tracker = find(d.name);
    if (!tracker) {
      return Status::Error(
          ENODEV, "snapshot " + id.ToString() + ": device '" + d.name + "' is not attached");
    }
    if (tracker->original()->size() != d.capacity) {
      return Status::Error(EINVAL, "snapshot " + id.ToString() + ": device '" + d.name + "' has " +
                                       std::to_string(tracker->original()->size()) +
                                       " bytes, the snapshot " + std::to_string(d.capacity));
    }
    ChunkGeometry g;
    g.shift = d.chunk_shift;
    g.capacity = d.capacity;
    g.count = (d.capacity + g.size() - 1) >> g.shift;
    for (const auto& other : tracker->snapshot_impls()) {
      if (other->state() == SnapshotState::kCreated ||
          tracker->snapshot_impls().size() >= kMaxSnapshotsPerDevice) {
        return Status::Error(EBUSY,
                             "device '" + d.name + "' is in snapshot " + other->id().ToString());
      }
    }
    if (auto chain = tracker->chain()->list();
        !chain->empty() && chain->back()->geometry().shift != g.shift) {
      return Status::Error(EINVAL, "snapshot " + id.ToString() + ": device '" + d.name +
                                       "' has chunks of 2^" + std::to_string(g.shift) +
                                       " bytes, its other snapshots 2^" +
                                       std::to_string(chain->back()->geometry().shift));
    }
    trackers->push_back(std::move(tracker));
    geometries->push_back(g);
  }
  return Status::Ok();
}

void ReleaseDestroyedStorage(DiffStorage& storage, bool keep_records) {
  storage
      .UpdateHeader([keep_records](DiffStorageHeader& h) {
        if (keep_records) {
          h.state = kStorageStateCorrupted;
          h.errnum = ECANCELED;
        } else {
          h.state = kStorageStateCreated;
        }
        h.flags &= ~kStorageFlagClosed;
      })
      .IgnoreError();
}

void SyncVolatileNewerFlags(const std::vector<std::shared_ptr<TrackerImpl>>& trackers,
                            const SnapshotImpl* taking, const SnapshotImpl* leaving) {
  std::map<SnapshotImpl*, bool> need;  // durable snapshot -> flag wanted
  for (const auto& tracker : trackers) {
    const auto snaps = tracker->snapshot_impls();
    for (const auto& d : snaps) {
      if (d.get() == leaving || d->durability() == SnapshotDurability::kMemory ||
          d->state() == SnapshotState::kCreated) {
        continue;
      }
      bool& flag = need[d.get()];
      for (const auto& m : snaps) {
        if (m.get() == leaving || m->durability() != SnapshotDurability::kMemory) continue;
        if (m.get() == taking ||
            (m->state() != SnapshotState::kCreated && m->taken_at() > d->taken_at())) {
          flag = true;
        }
      }
    }
  }
  for (const auto& entry : need) {
    const bool flag = entry.second;  // a plain variable: lambdas capture it (clang 14)
    auto storage = entry.first->storage();
    if (!storage || ((storage->header().flags & kStorageFlagVolatileNewer) != 0) == flag) continue;
    storage
        ->UpdateHeader([flag](DiffStorageHeader& h) {
          h.flags =
              flag ? (h.flags | kStorageFlagVolatileNewer) : (h.flags & ~kStorageFlagVolatileNewer);
        })
        .IgnoreError();  // a failed header write fails the snapshot's log too: recovery refuses it
  }
}

}  // namespace blksnap
