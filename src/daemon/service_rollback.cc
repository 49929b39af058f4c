// Service: `snapshot rollback` (issue 18; docs/several-snapshots.md). The engine merges the
// snapshot's image onto each device in the background (engine/rollback.h); the daemon picks the
// devices, refuses a device with a file system mounted on its front (the file system cannot see
// its data change under it) unless forced, keeps each rollback's journal in the state dir
// (STATE_DIR/rollback-NAME.journal, removed by the engine when the merge ends) and, at a
// restart, resumes every rollback whose journal is still there before the device serves again.
#include <fcntl.h>
#include <linux/fs.h>
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "daemon/service.h"
#include "util/freeze.h"

namespace blksnap::daemon {
namespace {

// The mount points of file systems on any of `rdevs` (block devices' st_rdev).
std::vector<std::string> MountsOn(const std::vector<uint64_t>& rdevs) {
  std::ifstream in("/proc/self/mountinfo");
  std::stringstream text;
  text << in.rdbuf();
  std::vector<std::string> out;
  const std::set<uint64_t> wanted(rdevs.begin(), rdevs.end());
  for (const auto& m : ParseMountInfo(text.str())) {
    if (wanted.count(m.rdev)) out.push_back(m.mount_point);
  }
  return out;
}

// Drops the page cache of a front block device (/dev/loopN, /dev/ublkbN): it holds the data
// from before the rollback, which the device no longer serves.
void DropCache(const std::string& path) {
  if (path.empty()) return;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  if (::ioctl(fd, BLKFLSBUF, 0) != 0)
    spdlog::warn("cannot drop the page cache of {}: {}", path, std::strerror(errno));
  ::close(fd);
}

// Tests cut a merge mid-way: a pause after each merged run (BLKSNAP_TEST_ROLLBACK_DELAY_US).
uint32_t MergeDelayForTests() {
  const char* text = std::getenv("BLKSNAP_TEST_ROLLBACK_DELAY_US");
  return text ? static_cast<uint32_t>(std::strtoul(text, nullptr, 10)) : 0;
}

}  // namespace

std::string Service::RollbackJournalPath(const std::string& name) const {
  if (info_.state_dir.empty()) return "";
  return info_.state_dir + "/rollback-" + name + ".journal";
}

bool Service::HasRollbackJournal(const std::string& name) {
  const std::string path = RollbackJournalPath(name);
  if (path.empty()) return false;
  auto st = env_.Stat(path);
  return st.ok() && st->exists;
}

Result<std::vector<std::string>> Service::Rollback(const RollbackRequest& request) {
  MutexLock lock(mu_);
  if (info_.state_dir.empty()) {
    return Status::Error(EINVAL,
                         "a rollback needs the daemon's state directory (its journal lives there)");
  }
  BLKSNAP_ASSIGN_OR_RETURN(SnapshotEntry * entry, FindSnapshotLocked(request.id));
  const std::string id = request.id.ToString();
  if (entry->busy) return Status::Error(EBUSY, "snapshot " + id + " is being taken");
  std::vector<std::string> members;
  for (const auto& d : entry->snapshot->devices()) members.push_back(d.name);
  std::vector<std::string> devices = request.devices.empty() ? members : request.devices;
  // Every device checked before the first starts.
  for (const auto& name : devices) {
    if (std::find(members.begin(), members.end(), name) == members.end())
      return Status::Error(ENOENT, "device '" + name + "' is not in snapshot " + id);
    auto dev = devices_.find(name);
    if (dev == devices_.end()) return Status::Error(ENOENT, "no device named '" + name + "'");
    if (request.force || !dev->second.fronts) continue;
    const auto mounts = MountsOn(dev->second.fronts->rdevs());
    if (!mounts.empty()) {
      return Status::Error(EBUSY, "device '" + name + "' has a file system mounted at " +
                                      mounts.front() +
                                      ": unmount it first, or --force (the file system cannot " +
                                      "see its data change under it)");
    }
  }
  std::vector<std::string> started;
  for (const auto& name : devices) {
    Status s = engine_->Rollback(
        request.id, name,
        {.journal_path = RollbackJournalPath(name),
         // A journal left by a rollback that failed or was cut: it goes on where it was.
         .resume = HasRollbackJournal(name),
         .merge_delay_us = MergeDelayForTests()});
    if (!s.ok()) {
      std::string already;
      for (const auto& d : started) already += (already.empty() ? "" : ", ") + d;
      return Status::Error(s.errnum(),
                           "cannot roll '" + name + "' back to snapshot " + id +
                               (already.empty() ? "" : " (rolling back already: " + already + ")") +
                               ": " + std::string(s.message()));
    }
    if (const auto& fronts = devices_.find(name)->second.fronts) {
      const FrontAddresses a = fronts->addresses();
      DropCache(a.loop);
      DropCache(a.ublk);
    }
    spdlog::info("rolling device '{}' back to snapshot {}", name, id);
    started.push_back(name);
  }
  return started;
}

void Service::ResumeRollbacks(const std::set<std::string>& devices) {
  for (const auto& name : devices) {
    Status s = engine_->Rollback(Uuid(), name,
                                 {.journal_path = RollbackJournalPath(name),
                                  .resume = true,
                                  .merge_delay_us = MergeDelayForTests()});
    std::string note = s.ok() ? "device '" + name + "': the rollback cut by the restart resumes"
                              : "device '" + name + "': the rollback cut by the restart cannot " +
                                    "resume (" + s.ToString() +
                                    "): its original is partly rolled back";
    if (s.ok()) {
      spdlog::info("{}", note);
    } else {
      spdlog::error("{}; `blksnap snapshot abandon-rollback {}` gives it up", note, name);
    }
    MutexLock lock(mu_);
    if (restart_) restart_->notes.push_back(note);
    if (!s.ok()) {
      RollbackProgress stuck;
      stuck.state = RollbackProgress::State::kFailed;
      stuck.errnum = s.errnum();
      stuck.error = "cannot resume after the restart: " + std::string(s.message());
      stuck_rollbacks_[name] = stuck;
    }
  }
}

Status Service::AbandonRollback(const std::string& device) {
  MutexLock lock(mu_);
  auto dev = devices_.find(device);
  if (dev == devices_.end()) return Status::Error(ENOENT, "no device named '" + device + "'");
  if (!HasRollbackJournal(device)) {
    return Status::Error(ENOENT, "device '" + device + "' has no rollback to abandon");
  }
  if (auto r = dev->second.tracker->rollback(); r && r->state != RollbackProgress::State::kDone) {
    // An installed rollback still serves the snapshot's data for the chunks it has not merged.
    return Status::Error(
        EBUSY, "the rollback of '" + device + "' is " + ToString(r->state) +
                   (r->state == RollbackProgress::State::kFailed
                        ? ": run `snapshot rollback` again to resume it (after a restart it may be "
                          "abandoned if it still cannot resume)"
                        : ""));
  }
  BLKSNAP_RETURN_IF_ERROR(env_.RemoveFile(RollbackJournalPath(device)));
  stuck_rollbacks_.erase(device);
  spdlog::warn(
      "device '{}': rollback abandoned; its original stays partly rolled back (CBT marks "
      "every merged chunk)",
      device);
  return Status::Ok();
}

}  // namespace blksnap::daemon
