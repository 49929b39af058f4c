// Storage placement: see placement.h.
#include "engine/placement.h"

namespace blksnap {

StorageIdentity ToIdentity(const topology::Node& n) {
  StorageIdentity id;
  id.path = n.path;
  id.is_block_device = !n.is_file;
  id.rdev = n.rdev;
  id.dev = n.dev;
  id.ino = n.ino;
  return id;
}

topology::Node ToNode(const StorageIdentity& id) {
  topology::Node n;
  n.is_file = !id.is_block_device;
  n.rdev = id.rdev;
  n.dev = id.dev;
  n.ino = id.ino;
  n.path = id.path;
  return n;
}

std::string Describe(const topology::Node& n) {
  if (!n.path.empty()) return n.path;
  if (n.is_file) return "file " + topology::DevName(n.dev) + " inode " + std::to_string(n.ino);
  return "block device " + topology::DevName(n.rdev);
}

// EINVAL if a node of `below` (the resolved stack of `start`, called `what`) is the tracker or
// one of its aliases (fronts): `what` is on the tracked device. No I/O (Holds is in memory).
Status CheckOnTracker(const TrackerImpl& tracker, const std::string& what,
                      const topology::Node& start, const std::vector<topology::Node>& below,
                      const char* why) {
  for (const auto& node : below) {
    if (tracker.Holds(ToIdentity(node))) {
      std::string via = node.SameAs(start) ? "" : " (through " + Describe(node) + ")";
      return Status::Error(
          EINVAL, what + " is on tracked device '" + tracker.name() + "'" + via + "; " + why);
    }
  }
  return Status::Ok();
}

// EINVAL if the storage (with `below`, its resolved stack) is on or under the tracker.
Status CheckStorageOn(const TrackerImpl& tracker, const StorageIdentity& storage,
                      const std::vector<topology::Node>& below, const std::string& sysfs) {
  const std::string what = "difference storage " + storage.path;
  BLKSNAP_RETURN_IF_ERROR(
      CheckOnTracker(tracker, what, ToNode(storage), below, "writing it would bypass the tracker"));
  topology::Node original, shared;
  if (!tracker.path().empty() && topology::NodeForPath(tracker.path(), &original) &&
      topology::Overlaps(below, topology::ResolveLower(sysfs, original), &shared)) {
    return Status::Error(EINVAL, what + " shares " + Describe(shared) + " with tracked device '" +
                                     tracker.name() + "'; writing it would harm the original");
  }
  return Status::Ok();
}

// EBUSY if a loop device is bound to the tracked file: writes through it bypass the tracker, so
// a snapshot would silently miss them. (The daemon's own loop front is bound to its FUSE file.)
Status CheckNoLoopOnFile(const TrackerImpl& tracker, const std::string& sysfs) {
  topology::Node node;
  if (tracker.path().empty() || sysfs.empty() || !topology::NodeForPath(tracker.path(), &node) ||
      !node.is_file) {
    return Status::Ok();
  }
  const auto loops = topology::LoopsBoundTo(sysfs, node.dev, node.ino);
  if (loops.empty()) return Status::Ok();
  return Status::Error(EBUSY, loops.front().device + " is bound to " + tracker.path() +
                                  ", the file of device '" + tracker.name() +
                                  "': writes through it would bypass the tracker and be missing "
                                  "from the snapshot (losetup -d " +
                                  loops.front().device + ")");
}

Status CheckStoragePlacement(const StorageIdentity& storage,
                             const std::vector<std::shared_ptr<TrackerImpl>>& trackers,
                             const std::vector<std::pair<Uuid, StorageIdentity>>& others,
                             const std::string& sysfs) {
  const auto below = topology::ResolveLower(sysfs, ToNode(storage));
  for (const auto& tracker : trackers) {
    BLKSNAP_RETURN_IF_ERROR(CheckStorageOn(*tracker, storage, below, sysfs));
  }
  for (const auto& [id, o] : others) {
    const bool same = storage.is_block_device ? o.is_block_device && o.rdev == storage.rdev
                                              : !o.is_block_device && o.ino != 0 &&
                                                    o.dev == storage.dev && o.ino == storage.ino;
    if (same) {
      return Status::Error(EBUSY, "difference storage " + storage.path +
                                      " is already the storage of snapshot " + id.ToString());
    }
  }
  return Status::Ok();
}

Status CheckNotOnTrackers(const std::string& path, const std::string& what,
                          const std::vector<std::shared_ptr<TrackerImpl>>& trackers,
                          const std::string& sysfs) {
  topology::Node node;
  if (!topology::NodeForPath(path, &node)) return Status::Ok();  // nothing there yet
  const auto below = topology::ResolveLower(sysfs, node);
  for (const auto& tracker : trackers) {
    BLKSNAP_RETURN_IF_ERROR(
        CheckOnTracker(*tracker, what, node, below,
                       "the daemon's writes there would be tracked as changes of that "
                       "device and could deadlock its write path"));
  }
  return Status::Ok();
}

}  // namespace blksnap
