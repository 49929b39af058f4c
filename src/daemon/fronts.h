// Fronts: how the daemon exposes devices and snapshot images (NBD exports, FUSE files, loop
// devices). Each frontend is compiled in only when its library exists (BLKSNAP_HAVE_NBD,
// BLKSNAP_HAVE_FUSE) and started only when configured and available; absent fronts report
// null addresses.
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

  // {"nbd": uri|null, "fuse": path|null, "loop": path|null, "nbd_tcp": uri|null}
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
  nlohmann::json Describe() const;  // {"nbd_unix", "nbd_tcp", "fuse_dir"} (null when off)

  // Exposes dev as `name` on every running front; with `loop`, also a loop device on the FUSE
  // file (ENOTSUP without FUSE). On failure nothing stays exposed.
  Result<FrontSet> Expose(const std::string& name, std::shared_ptr<BlockDevice> dev,
                          std::shared_ptr<const CbtSource> cbt, bool read_only, bool loop,
                          const std::string& description, const std::string& ro_name = "");
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
