// Repository::Verify and its repair (`repo verify [--repair]`; docs/backup.md "Verify, prune,
// gc", docs/repository-format.md section 7).
//
// Verify starts from the manifests: it collects, for every distinct index and chunk, the backups
// referencing it, reads every index, then `threads` workers pull chunks from a shared counter
// and read each one whole (a delta through its base); problems and the progress callback go
// through a local mutex.
//
// Repair is what Proxmox Backup Server's verify does with a bad chunk (it renames it to
// "<digest>.0.bad"): a damaged object must leave its content-addressed name, or every later
// backup that produces that content finds it present and references it again (dedup is by
// name). So, under the exclusive lease (no backup is running and none can find the object
// present meanwhile), each problem's object that still exists is copied to "bad/<name>" (kept
// for inspection; nothing reads bad/) and deleted, and each affected backup gets the marker
// "damaged/<id>" (a sealed blob, AAD = its name, listing the objects), which makes the next
// backup of its device full: an incremental would copy the parent's index, damaged entries and
// all. The order makes a cut harmless: a marker before the move only forces a full backup; a
// copy without its delete leaves the damage where the next repair finds it again. Markers of
// backups that are gone are gc's (repository.cc).
#include <algorithm>
#include <atomic>
#include <map>
#include <thread>

#include "repository/repository.h"
#include "repository/repository_format.h"

namespace blksnap::repo {
namespace {

std::span<const uint8_t> TextBytes(std::string_view text) {
  return {reinterpret_cast<const uint8_t*>(text.data()), text.size()};
}

std::string DamagedName(const std::string& id) { return std::string(kDamagedPrefix) + id; }

// The object a problem names: its chunk's or its index's.
std::string ObjectName(const Repository::VerifyProblem& p) {
  return p.index ? std::string(kIndexesPrefix) + p.chunk.Hex() : Codec::ChunkName(p.chunk);
}

}  // namespace

Result<std::vector<Repository::VerifyProblem>> Repository::Verify(
    const std::vector<std::string>& backup_ids, int threads,
    std::function<void(uint64_t done, uint64_t total)> progress, bool repair) {
  auto lease = store_->Lock(repair ? LockMode::kExclusive : LockMode::kShared, !repair);
  if (!lease.ok()) {
    if (repair && lease.status().errnum() == EBUSY) {
      return Status::Error(EBUSY, "a backup is running on the repository (repair needs it alone)");
    }
    return lease.status();
  }
  std::vector<VerifyProblem> problems;
  std::vector<Manifest> manifests;
  if (backup_ids.empty()) {
    std::vector<std::pair<std::string, Status>> damaged;
    BLKSNAP_ASSIGN_OR_RETURN(manifests, ListBackups(&damaged));
    for (auto& [id, error] : damaged) problems.push_back({Digest{}, std::move(error), {id}});
  } else {
    for (const std::string& id : backup_ids) {
      auto manifest = GetBackup(id);
      if (manifest.ok()) {
        manifests.push_back(std::move(*manifest));
      } else if (manifest.status().errnum() == ENOENT || manifest.status().errnum() == EINVAL) {
        return manifest.status();
      } else {
        problems.push_back({Digest{}, manifest.status(), {id}});
      }
    }
  }

  // Indexes first (each once), then every distinct chunk with the backups referencing it.
  std::map<Digest, std::vector<std::string>> index_users;
  for (const Manifest& m : manifests) index_users[m.index].push_back(m.id);
  std::map<Digest, std::vector<std::string>> chunk_users;
  for (const auto& [index_id, users] : index_users) {
    auto index = GetIndex(index_id);
    if (!index.ok()) {
      problems.push_back({index_id, index.status(), users, true});
      continue;
    }
    for (const std::string& user : users) {
      for (const Digest& chunk : index->chunks) {
        if (chunk.IsZero()) continue;
        auto& list = chunk_users[chunk];
        if (list.empty() || list.back() != user) list.push_back(user);
      }
    }
  }

  std::vector<const std::pair<const Digest, std::vector<std::string>>*> work;
  work.reserve(chunk_users.size());
  for (const auto& entry : chunk_users) work.push_back(&entry);
  const uint64_t total = work.size();
  std::atomic<size_t> next{0};
  Mutex mu;
  uint64_t done = 0;
  std::vector<VerifyProblem> found;
  auto worker = [&] {
    for (size_t i = next++; i < work.size(); i = next++) {
      auto chunk = GetChunk(work[i]->first);
      MutexLock lock(mu);
      if (!chunk.ok()) found.push_back({work[i]->first, chunk.status(), work[i]->second});
      ++done;
      if (progress) progress(done, total);
    }
  };
  const int workers = std::clamp(threads, 1, 64);
  std::vector<std::thread> pool;
  for (int i = 1; i < workers && static_cast<uint64_t>(i) < total; ++i) pool.emplace_back(worker);
  worker();
  for (std::thread& t : pool) t.join();

  MutexLock lock(mu);
  for (VerifyProblem& problem : found) problems.push_back(std::move(problem));
  for (VerifyProblem& problem : problems) std::sort(problem.backups.begin(), problem.backups.end());
  std::stable_sort(
      problems.begin(), problems.end(),
      [](const VerifyProblem& a, const VerifyProblem& b) { return a.chunk < b.chunk; });
  if (repair) BLKSNAP_RETURN_IF_ERROR(Repair(problems));
  return problems;
}

Status Repository::Repair(std::vector<VerifyProblem>& problems) {
  // The markers first: each affected backup, with the objects it lost.
  std::map<std::string, std::vector<std::string>> lost;
  for (const VerifyProblem& p : problems) {
    if (p.chunk.IsZero()) continue;  // a manifest that cannot be read: nothing to move or mark
    const std::string name = ObjectName(p);
    for (const std::string& id : p.backups) lost[id].push_back(name);
  }
  for (const auto& [id, names] : lost) {
    std::string text;
    for (const std::string& name : names) text += name + "\n";
    const std::string marker = DamagedName(id);
    BLKSNAP_ASSIGN_OR_RETURN(std::vector<uint8_t> blob,
                             codec_.Seal(TextBytes(text), TextBytes(marker)));
    BLKSNAP_RETURN_IF_ERROR(store_->Put(marker, blob));
  }
  // Then each damaged object leaves its name: copied to bad/, then deleted.
  for (VerifyProblem& p : problems) {
    if (p.chunk.IsZero()) continue;
    const std::string name = ObjectName(p);
    auto bytes = store_->Get(name);
    if (!bytes.ok() && bytes.status().errnum() == ENOENT) continue;  // missing: nothing to move
    if (bytes.ok()) {
      BLKSNAP_RETURN_IF_ERROR(store_->Put(std::string(kBadPrefix) + name, *bytes));
    }  // else unreadable even as bytes: deleted without a copy
    BLKSNAP_RETURN_IF_ERROR(store_->Delete(name));
    p.moved_aside = true;
  }
  return Status::Ok();
}

Result<bool> Repository::IsMarkedDamaged(const std::string& id) {
  if (!IsValidBackupId(id)) return Status::Error(EINVAL, "'" + id + "' is not a backup id");
  return store_->Exists(DamagedName(id));
}

}  // namespace blksnap::repo
