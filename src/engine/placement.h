// Storage placement (issue 13): where a difference storage, or the daemon's state dir, may not
// be. The checks walk the block topology below a path (util/block_topology.h: loop backing
// files, slaves, a partition's disk, a file's file system) and compare it with a tracker and its
// aliases (fronts). The engine runs them before a storage's first write (engine.cc).
#pragma once

#include <string>
#include <vector>

#include "blksnap/status.h"
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
// EBUSY if a loop device is bound to the tracked file: writes through it bypass the tracker.
Status CheckNoLoopOnFile(const TrackerImpl& tracker, const std::string& sysfs);

}  // namespace blksnap
