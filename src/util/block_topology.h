// Block topology: what the kernel tells us about how block devices and files stack, read from
// sysfs, so blksnap can refuse a difference storage that is an alias of a tracked device, and
// warn about loop devices bound to a tracked file.
//
// Every function takes the sysfs root ("/sys" in production; a fake tree in a temp dir in tests)
// and reads only these entries (MAJ:MIN of a device number):
//   <root>/dev/block/MAJ:MIN                  the device's directory (a symlink in real sysfs)
//   <root>/dev/block/MAJ:MIN/dev              "MAJ:MIN\n"
//   <root>/dev/block/MAJ:MIN/slaves/NAME/dev  devices this one is built on (dm, md)
//   <root>/dev/block/MAJ:MIN/holders/NAME/dev devices built on this one
//   <root>/dev/block/MAJ:MIN/partition        present for a partition; its disk is the parent dir
//   <root>/dev/block/MAJ:MIN/loop/backing_file a loop device's backing file (path)
//   <root>/block/NAME                         every whole block device (for LoopsBoundTo)
// Backing files are stat(2)ed by path (they are in the caller's mount namespace). A missing entry
// means "nothing there" (an unbound loop, no slaves), never an error: the functions answer what
// they can see.
//
// Nodes and wholeness. A Node is a block device (rdev) or a file (dev, ino). ResolveLower(start)
// lists every node that data written to `start` lands on: itself; for a loop device its backing
// file; for a file the block device of its file system; for a partition its disk; for a stacked
// device (dm, md) its slaves; transitively. A node is `whole` when all of it is reached (the start,
// and a loop's backing file); it is partial when only part of it is (a file's file system device,
// a partition's disk, a slave of a device-mapper target, and all below those). Two stacks overlap
// (Overlaps) when they share a node that is whole in at least one of them: /dev/sdb1 and /dev/sdb2
// share only a partial sdb (fine); /dev/sdb and /dev/sdb1 share sdb, whole in the first (refused);
// two LVs of one PV share only a partial PV (fine).
//
// Limits: file systems with anonymous device numbers (major 0: btrfs, tmpfs, FUSE, overlay) do not
// lead to a block device; a loop's offset/size limits are ignored (treated as whole).
//
// No state, no locks; each call reads sysfs afresh.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace blksnap::topology {

struct Node {
  bool is_file = false;
  uint64_t rdev = 0;  // block device: its device number
  uint64_t dev = 0;   // file: the device of its file system
  uint64_t ino = 0;   // file: its inode
  bool whole = true;  // see the top of this file
  std::string path;   // how it was found (for messages); may be empty

  bool SameAs(const Node& other) const {
    return is_file == other.is_file &&
           (is_file ? dev == other.dev && ino == other.ino : rdev == other.rdev);
  }
};

// "MAJ:MIN" of a device number.
std::string DevName(uint64_t rdev);
// A node for what `path` names (stat(2), following links); is_file for anything not a block
// device. False if it cannot be stat'ed.
bool NodeForPath(const std::string& path, Node* out);

// The backing file of loop device `rdev` as sysfs shows it; empty if rdev is not a bound loop.
std::string LoopBackingFile(const std::string& sysfs, uint64_t rdev);
// Devices directly below rdev: its slaves and, for a partition, its disk.
std::vector<uint64_t> LowerDevices(const std::string& sysfs, uint64_t rdev);
// Devices directly above rdev: its holders and its partitions.
std::vector<uint64_t> UpperDevices(const std::string& sysfs, uint64_t rdev);
// `start` and every node below it (see the top of this file), start first.
std::vector<Node> ResolveLower(const std::string& sysfs, const Node& start);
// True if the stacks share a node that is whole in at least one of them; *shared (if given)
// then names it.
bool Overlaps(const std::vector<Node>& a, const std::vector<Node>& b, Node* shared = nullptr);

struct LoopBinding {
  uint64_t rdev = 0;
  std::string device;        // "/dev/loopN"
  std::string backing_file;  // as sysfs shows it
};
// Loop devices whose backing file is the file (dev, ino).
std::vector<LoopBinding> LoopsBoundTo(const std::string& sysfs, uint64_t dev, uint64_t ino);

}  // namespace blksnap::topology
