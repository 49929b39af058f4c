// Fronts: the servers the daemon exposes devices and snapshot images through (the NBD server,
// the FUSE mount with its loop devices, ublk), behind one interface so the service can be
// tested with fakes (service_test.cc).
//
// ServerFronts (StartFronts) is the real one: it starts every configured server; a server that
// fails to start is logged and left out (the daemon serves the others), except NBD TCP/TLS
// configuration errors, which fail the start. Each Expose() returns an Exposure
// (front/exposure.h) that owns the fronts it made.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "blksnap/block_device.h"
#include "blksnap/cbt.h"
#include "blksnap/status.h"
#include "front/exposure.h"
#include "nbd/nbd_server.h"

namespace blksnap::daemon {

struct FrontOptions {
  // The NBD server: unix_path empty and tcp_address empty = no NBD; TLS, limits and timeouts
  // as documented in nbd/nbd_server.h and docs/nbd.md.
  nbd::ServerOptions nbd;
  std::string fuse_dir;  // empty: no FUSE mount
  // Block-device frontend used for a plain "block device" request (--blockdev): "ublk",
  // "fuse-loop" or "auto" (ublk when /dev/ublk-control is usable, else fuse-loop).
  std::string frontend = "auto";
  // Threads serving each ublk queue, as ublk::MakeDeviceFront takes them: -1 the default, 0 none
  // (the queue thread serves one request at a time: for RAM-backed devices), N that many.
  int ublk_workers = -1;
};

// What kind of block device Expose() should put on a device, besides NBD and FUSE.
struct ExposeOptions {
  bool read_only = false;
  bool loop = false;         // a loop device on the FUSE file
  bool ublk = false;         // a /dev/ublkbN device
  int ublk_recover_id = -1;  // with ublk: re-attach to this kernel device (daemon restart)
  std::string description;   // NBD export description
  std::string ro_name;       // images: also a read-only NBD export of this name
};

// What the running servers offer, fixed at start.
struct FrontsInfo {
  bool nbd = false;
  bool fuse = false;
  bool ublk = false;                        // /dev/ublk-control usable at start
  std::string block_frontend;               // "ublk" or "fuse-loop": what --blockdev requests get
  std::string nbd_unix, nbd_tcp, fuse_dir;  // empty when that server is off
  bool nbd_tcp_insecure = false;            // plaintext TCP allowed (--nbd-tcp-insecure)
};

class Fronts {
 public:
  virtual ~Fronts() = default;
  virtual const FrontsInfo& info() const = 0;

  // Exposes dev as `name` on every running front; with options.loop, also a loop device on the
  // FUSE file (ENOTSUP without FUSE); with options.ublk a ublk device (ENOTSUP without ublk).
  // On failure nothing stays exposed.
  virtual Result<std::unique_ptr<Exposure>> Expose(const std::string& name,
                                                   std::shared_ptr<BlockDevice> dev,
                                                   std::shared_ptr<const CbtSource> cbt,
                                                   const ExposeOptions& options) = 0;
  // Removes a ublk device a dead daemon left behind (see ublk::RemoveOrphan).
  virtual Status RemoveOrphanUblk(int dev_id, uint64_t size, uint32_t logical_block_size) = 0;
  // Freezes the file systems mounted on these block devices; the returned function thaws them.
  virtual Result<std::function<void()>> Freeze(const std::vector<uint64_t>& rdevs) = 0;
  // Stops the servers. Call after every exposure is removed.
  virtual void Stop() = 0;
};

Result<std::unique_ptr<Fronts>> StartFronts(const FrontOptions& options);

}  // namespace blksnap::daemon
