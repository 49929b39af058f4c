// ServerFronts: the daemon's real Fronts, over the NBD server, the FUSE mount (+ loop devices)
// and ublk.
//
// State: at most one NBD server and one FUSE mount, created in StartFronts() and stopped in
// Stop(). ublk needs no server object: each exposure owns its ublk device. Whether ublk is
// usable is decided once at start (ublk::Available()), with the block-device frontend that
// --blockdev requests get (--frontend ublk|fuse-loop|auto).
//
// Locking: none here. The NBD server and the FUSE mount are thread-safe; exposures are owned
// by the service, which never changes one from two threads.
#include "daemon/fronts.h"

#include <spdlog/spdlog.h>

#include <filesystem>

#include "fuse/fuse_front.h"
#include "nbd/nbd_front.h"
#include "ublk/ublk_front.h"
#include "util/freeze.h"

namespace blksnap::daemon {
namespace {

class ServerFronts final : public Fronts {
 public:
  ~ServerFronts() override { Stop(); }

  Status Start(const FrontOptions& options);

  const FrontsInfo& info() const override { return info_; }
  Result<std::unique_ptr<Exposure>> Expose(const std::string& name,
                                           std::shared_ptr<BlockDevice> dev,
                                           std::shared_ptr<const CbtSource> cbt,
                                           const ExposeOptions& options) override;
  Status RemoveOrphanUblk(int dev_id, uint64_t size, uint32_t logical_block_size) override {
    if (!info_.ublk) return Status::Error(ENOTSUP, "ublk is not available");
    return ublk::RemoveOrphan(dev_id, size, logical_block_size);
  }
  Result<std::function<void()>> Freeze(const std::vector<uint64_t>& rdevs) override;
  void Stop() override {
    if (nbd_) nbd_->Stop();
    nbd_.reset();
    mount_.reset();  // unmounts
  }

 private:
  Status StartNbd(const FrontOptions& options);
  FrontsInfo info_;
  int ublk_workers_ = -1;
  std::unique_ptr<nbd::Server> nbd_;
  std::unique_ptr<fuse::Mount> mount_;
};

Status ServerFronts::StartNbd(const FrontOptions& options) {
  const nbd::ServerOptions& so = options.nbd;
  if (!so.unix_path.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(std::filesystem::path(so.unix_path).parent_path(), ec);
  }
  auto server = nbd::Server::Start(so);
  if (!server.ok()) {
    if (!so.tcp_address.empty()) return server.status();
    spdlog::warn("NBD front disabled: {}", server.status().ToString());
    return Status::Ok();
  }
  nbd_ = std::move(server).value();
  info_.nbd = true;
  info_.nbd_unix = so.unix_path;
  info_.nbd_tcp = so.tcp_address;
  info_.nbd_tcp_insecure = nbd_->Stats().insecure_tcp;
  spdlog::info("NBD server on {}{}{}", so.unix_path, so.tcp_address.empty() ? "" : " and tcp ",
               so.tcp_address);
  if (info_.nbd_tcp_insecure) {
    spdlog::warn(
        "NBD over TCP WITHOUT TLS on {} (--nbd-tcp-insecure): every local user can read "
        "and write the exports",
        so.tcp_address);
  }
  return Status::Ok();
}

Status ServerFronts::Start(const FrontOptions& options) {
  ublk_workers_ = options.ublk_workers;
  if (!options.nbd.unix_path.empty() || !options.nbd.tcp_address.empty()) {
    BLKSNAP_RETURN_IF_ERROR(StartNbd(options));
  }
  if (!options.fuse_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(options.fuse_dir, ec);
    auto mount = fuse::Mount::Create(options.fuse_dir);
    if (!mount.ok()) {
      spdlog::warn("FUSE front disabled: {}", mount.status().ToString());
    } else {
      mount_ = std::move(mount).value();
      info_.fuse = true;
      info_.fuse_dir = options.fuse_dir;
      spdlog::info("FUSE mount at {}", options.fuse_dir);
    }
  }
  info_.ublk = ublk::Available();
  const std::string& fe = options.frontend;
  if (fe == "ublk") {
    if (!info_.ublk) {
      return Status::Error(ENOTSUP,
                           "--frontend ublk: ublk is not available (/dev/ublk-control missing or "
                           "not usable: modprobe ublk_drv, run as root)");
    }
    info_.block_frontend = "ublk";
  } else if (fe == "fuse-loop") {
    info_.block_frontend = "fuse-loop";
  } else if (fe == "auto" || fe.empty()) {
    info_.block_frontend = info_.ublk ? "ublk" : "fuse-loop";
  } else {
    return Status::Error(EINVAL, "--frontend must be ublk, fuse-loop or auto, not '" + fe + "'");
  }
  spdlog::info("ublk front {}; block devices (--blockdev) via {}",
               info_.ublk ? "available" : "not available (no /dev/ublk-control)",
               info_.block_frontend);
  return Status::Ok();
}

Result<std::unique_ptr<Exposure>> ServerFronts::Expose(const std::string& name,
                                                       std::shared_ptr<BlockDevice> dev,
                                                       std::shared_ptr<const CbtSource> cbt,
                                                       const ExposeOptions& options) {
  if (options.loop && !mount_) {
    return Status::Error(ENOTSUP,
                         "loop devices need the FUSE front, which is not running (needs root, "
                         "/dev/fuse and --fuse-dir)");
  }
  if (options.ublk && !info_.ublk) {
    return Status::Error(ENOTSUP,
                         "ublk is not available: /dev/ublk-control is missing or not usable "
                         "(needs Linux >= 6.0 with ublk_drv loaded, and root)");
  }
  auto exposure = std::make_unique<Exposure>();  // removes what was added if we return early
  if (nbd_) {
    nbd::ExportOptions eo;
    eo.description = options.description;
    eo.read_only = options.read_only;
    eo.cbt = cbt;
    BLKSNAP_ASSIGN_OR_RETURN(auto front, nbd::MakeExportFront(*nbd_, name, dev, eo));
    exposure->Add(std::move(front));
    if (!options.ro_name.empty()) {
      eo.read_only = true;
      eo.description = options.description + " (read-only)";
      auto ro = nbd::MakeExportFront(*nbd_, options.ro_name, dev, eo, /*read_only_variant=*/true);
      if (ro.ok()) {
        exposure->Add(std::move(ro).value());
      } else {
        spdlog::warn("read-only NBD export {}: {}", options.ro_name, ro.status().ToString());
      }
    }
  }
  if (mount_) {
    BLKSNAP_ASSIGN_OR_RETURN(
        auto front, fuse::MakeFileFront(*mount_, name, dev, options.read_only, options.loop));
    exposure->Add(std::move(front));
  }
  if (options.ublk) {
    BLKSNAP_ASSIGN_OR_RETURN(
        auto front, ublk::MakeDeviceFront(dev, options.ublk_recover_id, name, ublk_workers_));
    exposure->Add(std::move(front));
  }
  return exposure;
}

Result<std::function<void()>> ServerFronts::Freeze(const std::vector<uint64_t>& rdevs) {
  if (rdevs.empty()) return std::function<void()>([] {});
  BLKSNAP_ASSIGN_OR_RETURN(auto frozen, FrozenFilesystems::Freeze(rdevs));
  auto holder = std::make_shared<FrozenFilesystems>(std::move(frozen));
  return std::function<void()>([holder] { holder->Thaw(); });
}

}  // namespace

Result<std::unique_ptr<Fronts>> StartFronts(const FrontOptions& options) {
  auto fronts = std::make_unique<ServerFronts>();
  BLKSNAP_RETURN_IF_ERROR(fronts->Start(options));
  return std::unique_ptr<Fronts>(std::move(fronts));
}

}  // namespace blksnap::daemon
