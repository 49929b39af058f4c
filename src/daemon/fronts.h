// Fronts: how the daemon exposes devices and snapshot images (NBD exports, FUSE files, loop
// devices, ublk devices). Each frontend is compiled in only when its library exists
// (BLKSNAP_HAVE_NBD, BLKSNAP_HAVE_FUSE, BLKSNAP_HAVE_UBLK) and started only when configured and
// available; absent fronts report null addresses.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "blksnap/block_device.h"
#include "blksnap/cbt.h"
#include "blksnap/status.h"

namespace blksnap::daemon {

struct FrontOptions {
  std::string nbd_unix;  // empty: no NBD Unix socket
  std::string nbd_tcp;   // "host:port"; empty: no TCP
  std::string tls_cert, tls_key, tls_ca, tls_psk_file;
  bool tls_required = false;
  std::string fuse_dir;  // empty: no FUSE mount
  // Block-device frontend used for a plain "block device" request (--blockdev): "ublk",
  // "fuse-loop" or "auto" (ublk when /dev/ublk-control is usable, else fuse-loop).
  std::string frontend = "auto";
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

// The addresses of one exposed device (a front or an image). Owned by the daemon's device or
// snapshot entry; removed with Fronts::Unexpose.
struct FrontSet {
  std::string nbd_export;  // empty: not exported
  std::string nbd_uri, nbd_tcp_uri;
  std::string nbd_ro_export;  // images only: a read-only variant
  std::string nbd_ro_uri;
  std::string fuse_file;  // empty: no FUSE file
  std::string fuse_path;
  std::string loop_path;  // empty: no loop device
  uint64_t loop_rdev = 0;
  std::shared_ptr<void> loop;  // the loop device object (opaque here)
  std::string ublk_path;       // empty: no ublk device
  uint64_t ublk_rdev = 0;
  int ublk_dev_id = -1;
  bool ublk_recovered = false;  // re-attached to a device a previous daemon left (Recover)
  std::shared_ptr<void> ublk;   // the ublk::Device (opaque here)

  // st_rdev of every block device on this set (loop, ublk): to freeze and to alias.
  std::vector<uint64_t> rdevs() const;

  // {"nbd": uri|null, "fuse": path|null, "loop": path|null, "ublk": path|null,
  //  "nbd_tcp": uri|null}
  nlohmann::json ToJson() const;
};

class Fronts {
 public:
  // Starts every configured front that is compiled in. A front that fails to start is logged
  // and left out (the daemon still serves the others), except NBD TCP/TLS configuration errors,
  // which fail the start.
  static Result<std::unique_ptr<Fronts>> Start(const FrontOptions& options);
  ~Fronts();

  bool has_nbd() const;
  bool has_fuse() const;
  bool has_ublk() const;  // ublk compiled in and /dev/ublk-control usable at start
  // The block-device frontend chosen at start for --blockdev requests: "ublk" or "fuse-loop".
  const std::string& block_frontend() const;
  // {"nbd_unix", "nbd_tcp", "fuse_dir", "ublk", "frontend"} (null when off)
  nlohmann::json Describe() const;

  // Exposes dev as `name` on every running front; with options.loop, also a loop device on the
  // FUSE file (ENOTSUP without FUSE); with options.ublk a ublk device (ENOTSUP without ublk),
  // re-attached with Recover when ublk_recover_id >= 0 (a new device if that fails; the set
  // says which). On failure nothing stays exposed.
  Result<FrontSet> Expose(const std::string& name, std::shared_ptr<BlockDevice> dev,
                          std::shared_ptr<const CbtSource> cbt, const ExposeOptions& options);
  // Removes a ublk device a dead daemon left behind whose backend is gone (a snapshot image):
  // re-attaches with a backend failing every I/O (EIO) of the recorded geometry, then stops and
  // deletes it, so nothing waits on it forever.
  Status RemoveOrphanUblk(int dev_id, uint64_t size, uint32_t logical_block_size);
  // Removes everything in set (loop first); best effort, returns the first error.
  Status Unexpose(FrontSet& set);
  // EBUSY naming the front if a client uses it (NBD connections, an open FUSE file, a mounted
  // or opened loop device).
  Status CheckIdle(const FrontSet& set) const;
  // Freezes the filesystems on these block devices; the returned function thaws them.
  Result<std::function<void()>> Freeze(const std::vector<uint64_t>& rdevs);

  // Stops NBD and unmounts FUSE. Call after every set is unexposed.
  void Stop();

 private:
  Fronts() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace blksnap::daemon
