// Block topology: see block_topology.h. Reads sysfs with std::filesystem (error_code overloads:
// nothing throws) and plain file reads; a missing or unreadable entry reads as empty.
#include "util/block_topology.h"

#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

namespace blksnap::topology {
namespace {

namespace fs = std::filesystem;

// A walk deeper than this is a loop in a (fake or strange) tree; real stacks are a few levels.
constexpr size_t kMaxNodes = 256;

std::string ReadLine(const fs::path& path) {
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line)) return "";
  while (!line.empty() && (line.back() == '\n' || line.back() == ' ')) line.pop_back();
  return line;
}

// Parses "MAJ:MIN"; 0 if malformed.
uint64_t ParseDev(const std::string& text) {
  unsigned int maj = 0, min = 0;
  char colon = 0;
  std::istringstream in(text);
  if (!(in >> maj >> colon >> min) || colon != ':') return 0;
  return makedev(maj, min);
}

fs::path DeviceDir(const std::string& sysfs, uint64_t rdev) {
  return fs::path(sysfs) / "dev" / "block" / DevName(rdev);
}

// The device numbers of the entries of dir/<sub>/NAME/dev.
std::vector<uint64_t> ListDevs(const fs::path& dir) {
  std::vector<uint64_t> out;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const uint64_t d = ParseDev(ReadLine(it->path() / "dev"));
    if (d != 0) out.push_back(d);
  }
  return out;
}

// The disk of a partition (the parent directory of its sysfs directory), 0 otherwise.
uint64_t PartitionDisk(const std::string& sysfs, uint64_t rdev) {
  const fs::path dir = DeviceDir(sysfs, rdev);
  std::error_code ec;
  if (!fs::exists(dir / "partition", ec)) return 0;
  const fs::path real = fs::canonical(dir, ec);
  if (ec) return 0;
  return ParseDev(ReadLine(real.parent_path() / "dev"));
}

}  // namespace

std::string DevName(uint64_t rdev) {
  return std::to_string(major(rdev)) + ":" + std::to_string(minor(rdev));
}

bool NodeForPath(const std::string& path, Node* out) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return false;
  *out = Node{};
  out->path = path;
  if (S_ISBLK(st.st_mode)) {
    out->rdev = st.st_rdev;
  } else {
    out->is_file = true;
    out->dev = st.st_dev;
    out->ino = st.st_ino;
  }
  return true;
}

std::string LoopBackingFile(const std::string& sysfs, uint64_t rdev) {
  return ReadLine(DeviceDir(sysfs, rdev) / "loop" / "backing_file");
}

std::vector<uint64_t> LowerDevices(const std::string& sysfs, uint64_t rdev) {
  std::vector<uint64_t> out = ListDevs(DeviceDir(sysfs, rdev) / "slaves");
  if (const uint64_t disk = PartitionDisk(sysfs, rdev)) out.push_back(disk);
  return out;
}

std::vector<uint64_t> UpperDevices(const std::string& sysfs, uint64_t rdev) {
  const fs::path dir = DeviceDir(sysfs, rdev);
  std::vector<uint64_t> out = ListDevs(dir / "holders");
  std::error_code ec;
  const fs::path real = fs::canonical(dir, ec);
  if (ec) return out;
  for (fs::directory_iterator it(real, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code ec2;
    if (!fs::exists(it->path() / "partition", ec2)) continue;
    const uint64_t d = ParseDev(ReadLine(it->path() / "dev"));
    if (d != 0) out.push_back(d);
  }
  return out;
}

std::vector<Node> ResolveLower(const std::string& sysfs, const Node& start) {
  std::vector<Node> out;
  std::vector<Node> todo{start};
  auto seen = [&out](const Node& n) {
    for (auto& o : out) {
      if (o.SameAs(n)) {
        o.whole = o.whole || n.whole;  // reached whole by some path
        return true;
      }
    }
    return false;
  };
  while (!todo.empty() && out.size() < kMaxNodes) {
    Node node = std::move(todo.front());
    todo.erase(todo.begin());
    if (seen(node)) continue;
    out.push_back(node);
    if (node.is_file) {
      // The file system's device; anonymous devices (major 0) lead nowhere.
      if (major(node.dev) != 0) {
        Node fsdev;
        fsdev.rdev = node.dev;
        fsdev.whole = false;
        todo.push_back(fsdev);
      }
      continue;
    }
    if (sysfs.empty()) continue;
    const std::string backing = LoopBackingFile(sysfs, node.rdev);
    Node file;
    if (!backing.empty() && NodeForPath(backing, &file) && file.is_file) {
      file.whole = node.whole;
      todo.push_back(file);
    }
    for (uint64_t lower : LowerDevices(sysfs, node.rdev)) {
      Node below;
      below.rdev = lower;
      below.whole = false;
      todo.push_back(below);
    }
  }
  return out;
}

bool Overlaps(const std::vector<Node>& a, const std::vector<Node>& b, Node* shared) {
  for (const auto& x : a) {
    for (const auto& y : b) {
      if (x.SameAs(y) && (x.whole || y.whole)) {
        if (shared) *shared = x.whole ? x : y;
        return true;
      }
    }
  }
  return false;
}

std::vector<LoopBinding> LoopsBoundTo(const std::string& sysfs, uint64_t dev, uint64_t ino) {
  std::vector<LoopBinding> out;
  std::error_code ec;
  for (fs::directory_iterator it(fs::path(sysfs) / "block", ec), end; !ec && it != end;
       it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.rfind("loop", 0) != 0) continue;
    const std::string backing = ReadLine(it->path() / "loop" / "backing_file");
    if (backing.empty()) continue;
    struct stat st {};
    if (::stat(backing.c_str(), &st) != 0 || st.st_dev != dev || st.st_ino != ino) continue;
    LoopBinding b;
    b.rdev = ParseDev(ReadLine(it->path() / "dev"));
    b.device = "/dev/" + name;
    b.backing_file = backing;
    out.push_back(std::move(b));
  }
  return out;
}

}  // namespace blksnap::topology
