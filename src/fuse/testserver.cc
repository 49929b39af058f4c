// blksnap-fuse-testserver: serves memory devices and files as files of a FUSE mount.
//
//   blksnap-fuse-testserver DIR SPEC... [--loop NAME[:BLOCK_SIZE]]...
//   SPEC: NAME=mem:SIZE[:LOGICAL_BLOCK_SIZE][,ro]   a zero-filled memory device (SIZE: 64M, 1G)
//         NAME=file:PATH[,ro]                       a regular file or block device
//
// Prints "loop NAME /dev/loopN dio=0|1" for each --loop, then "ready", and serves until SIGTERM
// or SIGINT; then detaches its loop devices and unmounts. For tests of src/fuse before the
// daemon exists; not an interface anyone should build on.
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "blksnap/io.h"
#include "fuse/fuse_mount.h"
#include "fuse/loop_device.h"

namespace {

bool ParseSize(const std::string& text, uint64_t* size) {
  char* end = nullptr;
  unsigned long long value = std::strtoull(text.c_str(), &end, 10);
  if (end == text.c_str()) return false;
  std::string suffix = end;
  if (suffix == "K" || suffix == "k")
    value <<= 10;
  else if (suffix == "M" || suffix == "m")
    value <<= 20;
  else if (suffix == "G" || suffix == "g")
    value <<= 30;
  else if (!suffix.empty())
    return false;
  *size = value;
  return true;
}

int Usage() {
  std::fprintf(stderr,
               "usage: blksnap-fuse-testserver DIR NAME=mem:SIZE[:LBS][,ro] | "
               "NAME=file:PATH[,ro] ... [--loop NAME[:BLOCK_SIZE]]...\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace blksnap;
  if (argc < 2) return Usage();
  // Block the stop signals before any thread starts, so only sigwait() below sees them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  auto mount = fuse::Mount::Create(argv[1]);
  if (!mount.ok()) {
    std::fprintf(stderr, "mount %s: %s\n", argv[1], mount.status().ToString().c_str());
    return 1;
  }
  std::map<std::string, uint32_t> block_sizes;
  std::vector<std::pair<std::string, uint32_t>> loops;
  for (int i = 2; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--loop" && i + 1 < argc) {
      std::string spec = argv[++i];
      uint32_t lbs = 0;
      if (auto colon = spec.find(':'); colon != std::string::npos) {
        lbs = static_cast<uint32_t>(std::stoul(spec.substr(colon + 1)));
        spec.resize(colon);
      }
      loops.emplace_back(spec, lbs);
      continue;
    }
    auto eq = arg.find('=');
    if (eq == std::string::npos) return Usage();
    std::string name = arg.substr(0, eq);
    std::string spec = arg.substr(eq + 1);
    bool read_only = false;
    if (spec.size() > 3 && spec.compare(spec.size() - 3, 3, ",ro") == 0) {
      read_only = true;
      spec.resize(spec.size() - 3);
    }
    std::shared_ptr<BlockDevice> device;
    if (spec.rfind("mem:", 0) == 0) {
      std::string rest = spec.substr(4);
      uint32_t lbs = 512;
      if (auto colon = rest.find(':'); colon != std::string::npos) {
        lbs = static_cast<uint32_t>(std::stoul(rest.substr(colon + 1)));
        rest.resize(colon);
      }
      uint64_t size = 0;
      if (!ParseSize(rest, &size)) return Usage();
      device = MakeMemoryDevice(size, lbs);
    } else if (spec.rfind("file:", 0) == 0) {
      auto opened = OpenFileDevice(spec.substr(5), {.read_only = read_only});
      if (!opened.ok()) {
        std::fprintf(stderr, "%s: %s\n", spec.c_str(), opened.status().ToString().c_str());
        return 1;
      }
      device = std::move(opened).value();
    } else {
      return Usage();
    }
    block_sizes[name] = device->logical_block_size();
    if (Status s = (*mount)->AddFile(name, device, read_only); !s.ok()) {
      std::fprintf(stderr, "add %s: %s\n", name.c_str(), s.ToString().c_str());
      return 1;
    }
  }
  std::vector<fuse::LoopDevice> attached;
  for (const auto& [name, lbs] : loops) {
    auto loop = fuse::LoopDevice::Attach((*mount)->FilePath(name),
                                         lbs != 0 ? lbs : block_sizes[name], false);
    if (!loop.ok()) {
      std::fprintf(stderr, "loop %s: %s\n", name.c_str(), loop.status().ToString().c_str());
      return 1;
    }
    std::printf("loop %s %s dio=%d\n", name.c_str(), loop->path().c_str(),
                loop->direct_io() ? 1 : 0);
    attached.push_back(std::move(loop).value());
  }
  std::printf("ready\n");
  std::fflush(stdout);

  int sig = 0;
  sigwait(&stop_signals, &sig);
  for (auto& loop : attached) {
    if (Status s = loop.Detach(); !s.ok())
      std::fprintf(stderr, "detach: %s\n", s.ToString().c_str());
  }
  return 0;
}
