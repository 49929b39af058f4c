// Storage placement (issue 13): where a difference storage, or the daemon's state dir, may not
// be. The checks walk the block topology below a path (util/block_topology.h: loop backing
// files, slaves, a partition's disk, a file's file system) and compare it with a tracker and its
// aliases (fronts). The engine runs them before a storage's first write (engine.cc).
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "blksnap/status.h"
#include "blksnap/uuid.h"
#include "engine/diff_storage.h"
#include "engine/tracker.h"
#include "util/block_topology.h"

namespace blksnap {

StorageIdentity ToIdentity(const topology::Node& n);
topology::Node ToNode(const StorageIdentity& id);
// A node for messages: its path, or its device (and inode).
std::string Describe(const topology::Node& n);

// EINVAL if a node of `below` (the resolved stack of `start`, called `what`) is the tracker or
// one of its aliases (fronts): `what` is on the tracked device. No I/O (Holds is in memory).
Status CheckOnTracker(const TrackerImpl& tracker, const std::string& what,
                      const topology::Node& start, const std::vector<topology::Node>& below,
                      const char* why);
// EINVAL if the storage (with `below`, its resolved stack) is on or under the tracker.
Status CheckStorageOn(const TrackerImpl& tracker, const StorageIdentity& storage,
                      const std::vector<topology::Node>& below, const std::string& sysfs);
// Before a storage's first write: EINVAL if it is on or under any tracker, EBUSY if it is
// already the storage of a snapshot in `others` (id, its storage).
Status CheckStoragePlacement(const StorageIdentity& storage,
                             const std::vector<std::shared_ptr<TrackerImpl>>& trackers,
                             const std::vector<std::pair<Uuid, StorageIdentity>>& others,
                             const std::string& sysfs);
// EINVAL if `path` (called `what`) is on a tracked device: the trackers' side only (not the
// overlap with each original, which costs a sysfs walk per device). Nothing at path: OK.
Status CheckNotOnTrackers(const std::string& path, const std::string& what,
                          const std::vector<std::shared_ptr<TrackerImpl>>& trackers,
                          const std::string& sysfs);
// EBUSY if a loop device is bound to the tracked file: writes through it bypass the tracker.
Status CheckNoLoopOnFile(const TrackerImpl& tracker, const std::string& sysfs);

}  // namespace blksnap
