// The engine's half of a rollback (rollback.h): the checks, the journal file, the list of chunks
// to merge and the installation in the tracker. Engine::Rollback calls it with its take mutex
// held, so no take, destroy or recovery runs meanwhile.
#include <algorithm>

#include "blksnap/env.h"
#include "engine/rollback.h"
#include "engine/snapshot.h"
#include "engine/tracker.h"

namespace blksnap {

namespace {

// The journal device of `options` (opened, or created and sized for a device of `geometry` when
// not resuming); `created`: a file this call made (removed again on a failure).
Result<std::shared_ptr<BlockDevice>> OpenRollbackJournal(const RollbackOptions& options,
                                                         const ChunkGeometry& geometry, Env* env,
                                                         bool* created) {
  *created = false;
  if (options.journal_device) return options.journal_device;
  if (options.journal_path.empty()) return Status::Error(EINVAL, "no rollback journal path");
  BLKSNAP_ASSIGN_OR_RETURN(FileStat st, env->Stat(options.journal_path));
  if (!options.resume && st.exists) {
    return Status::Error(EEXIST, "rollback journal " + options.journal_path +
                                     " exists: a rollback of this device was cut; resume it");
  }
  if (options.resume && !st.exists)
    return Status::Error(ENOENT, "no rollback journal " + options.journal_path);
  BLKSNAP_ASSIGN_OR_RETURN(auto file,
                           env->OpenStorageFile(options.journal_path, {.direct = false}));
  *created = file->created();
  Status s = Status::Ok();
  if (!options.resume)
    s = file->Truncate(kRollbackHeaderSize + RollbackBitmapBytes(geometry.count));
  auto device = s.ok() ? file->OpenDevice() : Result<std::shared_ptr<BlockDevice>>(s);
  if (!device.ok() && *created) env->RemoveFile(options.journal_path).IgnoreError();
  return device;
}

Result<Uuid> RollbackJournalSnapshot(BlockDevice& journal) {
  std::vector<uint8_t> block(kRollbackHeaderSize);
  if (journal.size() < block.size()) return Status::Error(EINVAL, "rollback journal is too short");
  BLKSNAP_RETURN_IF_ERROR(journal.Read(0, block));
  BLKSNAP_ASSIGN_OR_RETURN(RollbackJournalHeader header, ParseRollbackHeader(block));
  return header.snapshot;
}

Status CheckRollback(const SnapshotImpl& snapshot, const TrackerImpl& tracker,
                     const RollbackOptions& options) {
  const std::string what = "snapshot " + snapshot.id().ToString();
  switch (snapshot.state()) {
    case SnapshotState::kTaken:
      break;
    case SnapshotState::kCorrupted:
      return Status::Error(EIO, what + " is corrupted: its image cannot be trusted");
    default:
      return Status::Error(EINVAL, what + " is not taken");
  }
  if (snapshot.durability() == SnapshotDurability::kMemory) {
    return Status::Error(EINVAL,
                         what + " is kept in memory only: a rollback needs a durable " +
                             "snapshot (durability crash or power) to resume after a crash");
  }
  for (const auto& s : tracker.snapshot_impls()) {
    if (s.get() != &snapshot && s->state() != SnapshotState::kCreated &&
        s->taken_at() > snapshot.taken_at() && s->durability() == SnapshotDurability::kMemory) {
      return Status::Error(EINVAL, "snapshot " + s->id().ToString() + " of '" + tracker.name() +
                                       "' is newer and kept in memory only: the rollback could " +
                                       "not resume after a crash; destroy it first");
    }
  }
  if (Rollback* r = tracker.current_rollback(); r && r->active()) {
    const RollbackProgress p = r->progress();
    if (!options.resume || p.state == RollbackProgress::State::kMerging) {
      return Status::Error(EBUSY, "device '" + tracker.name() + "' is being rolled back to " +
                                      "snapshot " + p.snapshot.ToString());
    }
  }
  return Status::Ok();
}

Status StartRollback(const std::shared_ptr<SnapshotImpl>& snapshot,
                     const std::shared_ptr<TrackerImpl>& tracker,
                     std::shared_ptr<BlockDevice> journal, const RollbackOptions& options,
                     Env* env) {
  BLKSNAP_RETURN_IF_ERROR(CheckRollback(*snapshot, *tracker, options));
  std::shared_ptr<DiffArea> area;
  for (const auto& m : snapshot->members()) {
    if (m.tracker == tracker) area = m.area;
  }
  if (!area) {
    return Status::Error(
        ENOENT, "device '" + tracker->name() + "' is not in snapshot " + snapshot->id().ToString());
  }
  if (Rollback* old = tracker->current_rollback()) old->Stop();  // a failed or stopped one
  Rollback::Params params;
  params.snapshot = snapshot->id();
  params.device = tracker->name();
  params.area = area;
  params.original = tracker->original();
  params.journal = std::move(journal);
  params.write = [t = tracker.get()](uint64_t offset, std::span<const uint8_t> data) {
    return t->WriteMerged(offset, data);
  };
  std::weak_ptr<DiffArea> weak = area;
  params.on_done = [weak, env, path = options.journal_path] {
    if (auto a = weak.lock()) a->SetReadOnly(false);
    if (!path.empty()) env->RemoveFile(path).IgnoreError();
  };
  params.merge_delay_us = options.merge_delay_us;

  area->SetReadOnly(true);  // the target stops changing (in-flight image writes drained)
  const bool held = tracker->gate().closed();  // a restart: writes held until recovered
  if (!held) tracker->gate().Close();
  Result<std::unique_ptr<Rollback>> r = Status::Error(EINVAL, "");
  if (options.resume) {
    r = Rollback::Resume(std::move(params));
  } else {
    // Every chunk where the image may differ from the original: a copy in its area or a newer
    // one (area_chain.h). Writers are held, so no chunk changes meanwhile.
    std::vector<uint64_t> chunks;
    const auto chain = tracker->chain()->list();
    auto it = std::find(chain->begin(), chain->end(), area);
    for (; it != chain->end(); ++it) {
      auto copied = (*it)->CopiedChunks();
      chunks.insert(chunks.end(), copied.begin(), copied.end());
    }
    std::sort(chunks.begin(), chunks.end());
    chunks.erase(std::unique(chunks.begin(), chunks.end()), chunks.end());
    r = Rollback::Start(std::move(params), chunks);
  }
  if (!r.ok()) {
    if (!held) tracker->gate().Open();
    area->SetReadOnly(false);
    return std::move(r).status();
  }
  Rollback* raw = r->get();
  tracker->InstallRollback(std::move(r).value());
  if (!held) tracker->gate().Open();
  raw->Run();
  return Status::Ok();
}

}  // namespace

Status RollbackDevice(const std::shared_ptr<TrackerImpl>& tracker, const Uuid& id,
                      const RollbackOptions& options, Env* env,
                      const std::function<std::shared_ptr<SnapshotImpl>(const Uuid&)>& find) {
  const auto chain = tracker->chain()->list();
  if (chain->empty()) {
    return Status::Error(ENOENT, "device '" + tracker->name() + "' is in no taken snapshot");
  }
  bool created = false;
  BLKSNAP_ASSIGN_OR_RETURN(auto journal,
                           OpenRollbackJournal(options, chain->back()->geometry(), env, &created));
  Uuid target = id;
  Status s = Status::Ok();
  if (target.is_nil() && options.resume) {
    auto named = RollbackJournalSnapshot(*journal);
    if (named.ok()) target = *named;
    s = named.status();
  }
  std::shared_ptr<SnapshotImpl> snapshot = s.ok() ? find(target) : nullptr;
  if (s.ok() && !snapshot) s = Status::Error(ENOENT, "no snapshot " + target.ToString());
  if (s.ok()) s = StartRollback(snapshot, tracker, std::move(journal), options, env);
  if (!s.ok() && created) env->RemoveFile(options.journal_path).IgnoreError();
  return s;
}

Status CheckNotRollingBack(const TrackerImpl& tracker, const Uuid* id) {
  Rollback* r = tracker.current_rollback();
  if (!r || !r->active() || (id && r->snapshot() != *id)) return Status::Ok();
  if (id && r->progress().state != RollbackProgress::State::kMerging) return Status::Ok();
  return Status::Error(EBUSY, "device '" + tracker.name() + "' is being rolled back to snapshot " +
                                  r->snapshot().ToString());
}

}  // namespace blksnap
