// blksnap-ublk-testserver: serves a file as a ublk device, for the integration tests.
//
//   blksnap-ublk-testserver [--queues N] [--depth N] [--max-io BYTES] [--workers N]
//                           [--no-recovery] [--dev-id N] [--recover DEV_ID]
//                           [--abandon-on-term] [--direct] [--engine psync|io_uring]
//                           [--inline] FILE
//
// Prints the /dev/ublkbN path on stdout once the device is ready, then serves until SIGTERM or
// SIGINT, when it stops and deletes the device (or, with --abandon-on-term, leaves it for a
// later --recover). --recover DEV_ID re-attaches to a device whose server was killed.
//
// The backend is the file opened with OpenFileDevice (include/blksnap/io.h).
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "blksnap/io.h"
#include "ublk/ublk_device.h"

namespace {

void Usage() {
  std::fprintf(stderr,
               "usage: blksnap-ublk-testserver [--queues N] [--depth N] [--max-io BYTES] "
               "[--workers N] [--no-recovery] [--dev-id N] [--recover DEV_ID] "
               "[--abandon-on-term] [--direct] [--engine psync|io_uring] [--inline] FILE\n");
}

}  // namespace

int main(int argc, char** argv) {
  using blksnap::ublk::Device;
  blksnap::ublk::DeviceOptions options;
  blksnap::FileOpenOptions file_options;
  int recover_id = -1;
  bool abandon_on_term = false;
  std::string file;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto next = [&]() -> long {
      if (i + 1 >= argc) {
        Usage();
        std::exit(2);
      }
      return std::strtol(argv[++i], nullptr, 0);
    };
    if (arg == "--queues") {
      options.queues = static_cast<uint16_t>(next());
    } else if (arg == "--depth") {
      options.queue_depth = static_cast<uint16_t>(next());
    } else if (arg == "--max-io") {
      options.max_io_bytes = static_cast<uint32_t>(next());
    } else if (arg == "--workers") {
      options.workers_per_queue = static_cast<uint16_t>(next());
    } else if (arg == "--dev-id") {
      options.dev_id = static_cast<int>(next());
    } else if (arg == "--recover") {
      recover_id = static_cast<int>(next());
    } else if (arg == "--no-recovery") {
      options.user_recovery = false;
    } else if (arg == "--abandon-on-term") {
      abandon_on_term = true;
    } else if (arg == "--inline") {
      options.serve_inline = true;
    } else if (arg == "--engine") {
      std::string engine = i + 1 < argc ? argv[++i] : "";
      if (engine == "psync") {
        file_options.engine = blksnap::IoEngine::kPsync;
      } else if (engine == "io_uring") {
        file_options.engine = blksnap::IoEngine::kIoUring;
      } else {
        Usage();
        return 2;
      }
    } else if (arg == "--direct") {
      file_options.direct = true;
    } else if (!arg.empty() && arg[0] != '-' && file.empty()) {
      file = arg;
    } else {
      Usage();
      return 2;
    }
  }
  if (file.empty()) {
    Usage();
    return 2;
  }

  // Block the stop signals in every thread (the Device's threads inherit the mask) and take
  // them synchronously below.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto backend = blksnap::OpenFileDevice(file, file_options);
  if (!backend.ok()) {
    std::fprintf(stderr, "blksnap-ublk-testserver: %s\n", backend.status().ToString().c_str());
    return 1;
  }
  auto device = recover_id >= 0 ? Device::Recover(recover_id, *backend, options)
                                : Device::Create(*backend, options);
  if (!device.ok()) {
    std::fprintf(stderr, "blksnap-ublk-testserver: %s\n", device.status().ToString().c_str());
    return 1;
  }
  std::printf("%s\n", (*device)->path().c_str());
  std::fflush(stdout);

  int sig = 0;
  sigwait(&signals, &sig);
  if (abandon_on_term) {
    (*device)->Abandon();
    return 0;
  }
  blksnap::Status status = (*device)->Stop();
  if (!status.ok()) {
    std::fprintf(stderr, "blksnap-ublk-testserver: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
