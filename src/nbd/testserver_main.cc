// blksnap-nbd-testserver: serves files or memory devices through blksnap::nbd::Server.
//
// For integration tests that need an NBD server before the daemon exists. Usage:
//   blksnap-nbd-testserver --unix PATH [--tcp HOST:PORT] [--tls-cert F --tls-key F]
//       [--tls-ca F] [--tls-psk F] [--tls-required] [--tcp-insecure] [--ready-file F]
//       [--max-connections N] [--workers N] [--max-extra-workers N]
//       [--max-connection-inflight SIZE] [--max-total-inflight SIZE]
//       [--handshake-timeout-ms MS] [--request-timeout-ms MS] EXPORT...
//   (the limits are ServerOptions' fields, defaults as there)
//   EXPORT = NAME=file:PATH[,OPT...] | NAME=mem:SIZE[,OPT...]   (SIZE takes K/M/G suffixes)
//   OPT    = ro | desc=TEXT | cbt=MAPFILE:BLOCKSIZE | nomulticonn | psync | direct
// cbt= serves MAPFILE's bytes as the export's CBT read map (blksnap:cbt context).
// Prints one line per export ("NAME UNIX_URI [TCP_URI]") then "READY", writes the ready file
// (if asked) and serves until SIGINT or SIGTERM.
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include "blksnap/cbt.h"
#include "blksnap/io.h"
#include "nbd/nbd_server.h"

namespace {

using blksnap::BlockDevice;
using blksnap::CbtInfo;
using blksnap::Status;

class FileCbtSource : public blksnap::CbtSource {
 public:
  FileCbtSource(std::vector<uint8_t> map, uint32_t block_size, uint64_t capacity)
      : map_(std::move(map)), block_size_(block_size), capacity_(capacity) {}
  CbtInfo cbt_info() const override {
    CbtInfo info;
    info.block_size = block_size_;
    info.block_count = map_.size();
    info.device_capacity = capacity_;
    for (uint8_t b : map_) info.changes_number = std::max(info.changes_number, b);
    return info;
  }
  Status ReadCbtMap(uint64_t first_block, std::span<uint8_t> out) const override {
    if (first_block > map_.size() || out.size() > map_.size() - first_block) {
      return Status::Error(EINVAL, "beyond the CBT map");
    }
    std::copy_n(map_.begin() + static_cast<std::ptrdiff_t>(first_block), out.size(), out.begin());
    return Status::Ok();
  }

 private:
  std::vector<uint8_t> map_;
  uint32_t block_size_;
  uint64_t capacity_;
};

class NoMultiConnDevice : public blksnap::ForwardingDevice {
 public:
  using ForwardingDevice::ForwardingDevice;
  blksnap::DeviceCapabilities capabilities() const override {
    auto caps = ForwardingDevice::capabilities();
    caps.multi_conn_safe = false;
    return caps;
  }
};

uint64_t ParseSize(const std::string& s) {
  char* end = nullptr;
  uint64_t v = std::strtoull(s.c_str(), &end, 10);
  switch (end && *end ? *end : 0) {
    case 'K':
    case 'k':
      v <<= 10;
      break;
    case 'M':
    case 'm':
      v <<= 20;
      break;
    case 'G':
    case 'g':
      v <<= 30;
      break;
    default:
      break;
  }
  return v;
}

[[noreturn]] void Die(const std::string& msg) {
  std::cerr << "blksnap-nbd-testserver: " << msg << "\n";
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  blksnap::nbd::ServerOptions options;
  std::string ready_file;
  std::vector<std::string> exports;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) Die("missing value for " + a);
      return argv[++i];
    };
    if (a == "--unix")
      options.unix_path = next();
    else if (a == "--tcp")
      options.tcp_address = next();
    else if (a == "--tls-cert")
      options.tls_cert = next();
    else if (a == "--tls-key")
      options.tls_key = next();
    else if (a == "--tls-ca")
      options.tls_ca = next();
    else if (a == "--tls-psk")
      options.tls_psk_file = next();
    else if (a == "--tls-required")
      options.tls_required = true;
    else if (a == "--tcp-insecure")
      options.allow_insecure_tcp = true;
    else if (a == "--max-connections")
      options.max_connections = std::atoi(next().c_str());
    else if (a == "--workers")
      options.workers_per_connection = std::atoi(next().c_str());
    else if (a == "--max-extra-workers")
      options.max_extra_workers = std::atoi(next().c_str());
    else if (a == "--max-connection-inflight")
      options.max_connection_inflight = ParseSize(next());
    else if (a == "--max-total-inflight")
      options.max_total_inflight = ParseSize(next());
    else if (a == "--handshake-timeout-ms")
      options.handshake_timeout_ms = std::atoi(next().c_str());
    else if (a == "--request-timeout-ms")
      options.request_timeout_ms = std::atoi(next().c_str());
    else if (a == "--ready-file")
      ready_file = next();
    else if (a == "-h" || a == "--help") {
      std::cout << "usage: blksnap-nbd-testserver --unix PATH [--tcp HOST:PORT] [TLS options] "
                   "[--tcp-insecure] [limit options, see the source] "
                   "NAME=file:PATH[,ro,desc=T,cbt=MAP:BS,nomulticonn,psync,direct]|"
                   "NAME=mem:SIZE[,...]\n";
      return 0;
    } else if (a.find('=') != std::string::npos)
      exports.push_back(a);
    else
      Die("unknown argument " + a);
  }

  // Block the stop signals before any thread starts so that only sigwait sees them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto server = blksnap::nbd::Server::Start(options);
  if (!server.ok()) Die(server.status().ToString());

  for (const std::string& spec : exports) {
    const size_t eq = spec.find('=');
    const std::string name = spec.substr(0, eq);
    std::vector<std::string> parts;
    size_t pos = eq + 1;
    for (;;) {
      size_t comma = spec.find(',', pos);
      parts.push_back(spec.substr(pos, comma - pos));
      if (comma == std::string::npos) break;
      pos = comma + 1;
    }
    blksnap::nbd::ExportOptions eo;
    blksnap::FileOpenOptions fo;
    bool no_multi_conn = false;
    std::string cbt_spec;
    for (size_t k = 1; k < parts.size(); ++k) {
      const std::string& o = parts[k];
      if (o == "ro")
        eo.read_only = fo.read_only = true;
      else if (o.rfind("desc=", 0) == 0)
        eo.description = o.substr(5);
      else if (o.rfind("cbt=", 0) == 0)
        cbt_spec = o.substr(4);
      else if (o == "nomulticonn")
        no_multi_conn = true;
      else if (o == "psync")
        fo.engine = blksnap::IoEngine::kPsync;
      else if (o == "direct")
        fo.direct = true;
      else
        Die("unknown export option " + o);
    }
    std::shared_ptr<BlockDevice> dev;
    const std::string& what = parts[0];
    if (what.rfind("file:", 0) == 0) {
      auto r = blksnap::OpenFileDevice(what.substr(5), fo);
      if (!r.ok()) Die(r.status().ToString());
      dev = *r;
    } else if (what.rfind("mem:", 0) == 0) {
      dev = blksnap::MakeMemoryDevice(ParseSize(what.substr(4)));
    } else {
      Die("bad export " + spec);
    }
    if (no_multi_conn) dev = std::make_shared<NoMultiConnDevice>(dev);
    if (!cbt_spec.empty()) {
      const size_t colon = cbt_spec.rfind(':');
      if (colon == std::string::npos) Die("cbt=MAPFILE:BLOCKSIZE");
      std::ifstream f(cbt_spec.substr(0, colon), std::ios::binary);
      if (!f) Die("cannot read " + cbt_spec.substr(0, colon));
      std::vector<uint8_t> map((std::istreambuf_iterator<char>(f)),
                               std::istreambuf_iterator<char>());
      eo.cbt = std::make_shared<FileCbtSource>(
          std::move(map), static_cast<uint32_t>(ParseSize(cbt_spec.substr(colon + 1))),
          dev->size());
    }
    Status st = (*server)->AddExport(name, dev, eo);
    if (!st.ok()) Die(st.ToString());
    std::cout << name << " " << (*server)->UnixUri(name);
    if (!options.tcp_address.empty()) std::cout << " " << (*server)->TcpUri(name);
    std::cout << "\n";
  }
  std::cout << "READY" << std::endl;
  if (!ready_file.empty()) {
    std::ofstream(ready_file) << "ready\n";
  }
  int sig = 0;
  sigwait(&stop_signals, &sig);
  (*server)->Stop();
  return 0;
}
