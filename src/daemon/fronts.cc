// Fronts: the daemon's glue to the NBD server, the FUSE mount + loop devices and ublk devices.
//
// State: at most one NBD server and one FUSE mount, created in Start() and torn down in Stop().
// ublk needs no server object: each exposed set owns its ublk::Device (stopped and deleted on
// Unexpose; a daemon killed without Unexpose leaves it to the kernel for Recover()). Whether
// ublk is usable is decided once at Start() (ublk::Available()), together with the block-device
// frontend that --blockdev requests get (--frontend ublk|fuse-loop|auto).
// Each exposed device is described by a FrontSet that its owner (the service) keeps and hands
// back to Unexpose(). Frontends compiled out (no library at build time) or failing to start
// simply stay null; callers see null addresses.
//
// Locking: none here. The NBD server and the FUSE mount are thread-safe; the service calls
// Expose/Unexpose under its own mutex, so sets are never changed concurrently.
#include "daemon/fronts.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>

#if BLKSNAP_HAVE_NBD
#include "nbd/nbd_server.h"
#endif
#if BLKSNAP_HAVE_FUSE
#include "fuse/freeze.h"
#include "fuse/fuse_mount.h"
#include "fuse/loop_device.h"
#endif
#if BLKSNAP_HAVE_UBLK
#include "ublk/ublk_device.h"
#endif

namespace blksnap::daemon {

using nlohmann::json;

namespace {
json OrNull(const std::string& s) { return s.empty() ? json(nullptr) : json(s); }

// A backend for a ublk device whose data is gone (the image of a snapshot that did not survive a
// daemon restart): same geometry, every I/O fails, so waiting requests end with EIO.
class GoneDevice : public BlockDevice {
 public:
  GoneDevice(uint64_t size, uint32_t lbs) : size_(size), lbs_(lbs) {}
  uint64_t size() const override { return size_; }
  uint32_t logical_block_size() const override { return lbs_; }
  uint32_t physical_block_size() const override { return std::max<uint32_t>(lbs_, 4096); }
  DeviceCapabilities capabilities() const override { return {}; }
  Status Read(uint64_t, std::span<uint8_t>) override { return Gone(); }
  Status Write(uint64_t, std::span<const uint8_t>, uint32_t) override { return Gone(); }
  Status Flush() override { return Gone(); }
  Status Trim(uint64_t, uint64_t) override { return Gone(); }
  Status WriteZeroes(uint64_t, uint64_t, uint32_t) override { return Gone(); }

 private:
  static Status Gone() { return Status::Error(EIO, "device gone with the daemon restart"); }
  const uint64_t size_;
  const uint32_t lbs_;
};

}  // namespace

std::vector<uint64_t> FrontSet::rdevs() const {
  std::vector<uint64_t> r;
  if (loop_rdev != 0) r.push_back(loop_rdev);
  if (ublk_rdev != 0) r.push_back(ublk_rdev);
  return r;
}

json FrontSet::ToJson() const {
  json j = {{"nbd", OrNull(nbd_uri)},
            {"fuse", OrNull(fuse_path)},
            {"loop", OrNull(loop_path)},
            {"ublk", OrNull(ublk_path)}};
  j["nbd_tcp"] = OrNull(nbd_tcp_uri);
  if (!nbd_ro_uri.empty()) j["nbd_ro"] = nbd_ro_uri;
  return j;
}

struct Fronts::Impl {
  FrontOptions options;
  bool ublk = false;           // ublk usable (decided at Start)
  std::string block_frontend;  // "ublk" or "fuse-loop"

#if BLKSNAP_HAVE_NBD
  std::unique_ptr<nbd::Server> nbd;
#endif
#if BLKSNAP_HAVE_FUSE
  std::unique_ptr<fuse::Mount> mount;
#endif
};

Result<std::unique_ptr<Fronts>> Fronts::Start(const FrontOptions& options) {
  std::unique_ptr<Fronts> fronts(new Fronts());
  fronts->impl_ = std::make_unique<Impl>();
  fronts->impl_->options = options;
#if BLKSNAP_HAVE_NBD
  if (!options.nbd_unix.empty() || !options.nbd_tcp.empty()) {
    if (!options.nbd_unix.empty()) {
      std::error_code ec;
      std::filesystem::create_directories(std::filesystem::path(options.nbd_unix).parent_path(),
                                          ec);
    }
    nbd::ServerOptions so;
    so.unix_path = options.nbd_unix;
    so.tcp_address = options.nbd_tcp;
    so.tls_cert = options.tls_cert;
    so.tls_key = options.tls_key;
    so.tls_ca = options.tls_ca;
    so.tls_psk_file = options.tls_psk_file;
    so.tls_required = options.tls_required;
    auto server = nbd::Server::Start(so);
    if (!server.ok()) {
      if (!options.nbd_tcp.empty()) return server.status();
      spdlog::warn("NBD front disabled: {}", server.status().ToString());
    } else {
      fronts->impl_->nbd = std::move(server).value();
      spdlog::info("NBD server on {}{}{}", options.nbd_unix,
                   options.nbd_tcp.empty() ? "" : " and tcp ", options.nbd_tcp);
    }
  }
#else
  if (!options.nbd_tcp.empty()) {
    return Status::Error(ENOTSUP, "--nbd-tcp: this blksnapd was built without the NBD front");
  }
#endif
#if BLKSNAP_HAVE_FUSE
  if (!options.fuse_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(options.fuse_dir, ec);
    auto mount = fuse::Mount::Create(options.fuse_dir);
    if (!mount.ok()) {
      spdlog::warn("FUSE front disabled: {}", mount.status().ToString());
    } else {
      fronts->impl_->mount = std::move(mount).value();
      spdlog::info("FUSE mount at {}", options.fuse_dir);
    }
  }
#endif
#if BLKSNAP_HAVE_UBLK
  fronts->impl_->ublk = ublk::Available();
#endif
  const std::string& fe = options.frontend;
  if (fe == "ublk") {
    if (!fronts->impl_->ublk) {
      return Status::Error(ENOTSUP,
                           "--frontend ublk: ublk is not available (/dev/ublk-control missing or "
                           "not usable: modprobe ublk_drv, run as root)");
    }
    fronts->impl_->block_frontend = "ublk";
  } else if (fe == "fuse-loop") {
    fronts->impl_->block_frontend = "fuse-loop";
  } else if (fe == "auto" || fe.empty()) {
    fronts->impl_->block_frontend = fronts->impl_->ublk ? "ublk" : "fuse-loop";
  } else {
    return Status::Error(EINVAL, "--frontend must be ublk, fuse-loop or auto, not '" + fe + "'");
  }
  spdlog::info("ublk front {}; block devices (--blockdev) via {}",
               fronts->impl_->ublk ? "available" : "not available (no /dev/ublk-control)",
               fronts->impl_->block_frontend);
  return fronts;
}

Fronts::~Fronts() { Stop(); }

bool Fronts::has_nbd() const {
#if BLKSNAP_HAVE_NBD
  return impl_->nbd != nullptr;
#else
  return false;
#endif
}

bool Fronts::has_fuse() const {
#if BLKSNAP_HAVE_FUSE
  return impl_->mount != nullptr;
#else
  return false;
#endif
}

bool Fronts::has_ublk() const { return impl_->ublk; }

const std::string& Fronts::block_frontend() const { return impl_->block_frontend; }

json Fronts::Describe() const {
  return {{"nbd_unix", has_nbd() ? OrNull(impl_->options.nbd_unix) : json(nullptr)},
          {"nbd_tcp", has_nbd() ? OrNull(impl_->options.nbd_tcp) : json(nullptr)},
          {"fuse_dir", has_fuse() ? OrNull(impl_->options.fuse_dir) : json(nullptr)},
          {"ublk", has_ublk()},
          {"frontend", impl_->block_frontend}};
}

Result<FrontSet> Fronts::Expose(const std::string& name, std::shared_ptr<BlockDevice> dev,
                                std::shared_ptr<const CbtSource> cbt,
                                const ExposeOptions& options) {
  FrontSet set;
  const bool read_only = options.read_only;
  const bool loop = options.loop;
  const std::string& description = options.description;
  const std::string& ro_name = options.ro_name;
  if (loop && !has_fuse()) {
    return Status::Error(ENOTSUP,
                         "loop devices need the FUSE front, which is not running (needs root, "
                         "/dev/fuse and --fuse-dir)");
  }
  if (options.ublk && !has_ublk()) {
    return Status::Error(ENOTSUP,
                         "ublk is not available: /dev/ublk-control is missing or not usable "
                         "(needs Linux >= 6.0 with ublk_drv loaded, and root)");
  }
  (void)name;
  (void)cbt;
  (void)read_only;
  (void)description;
  (void)ro_name;
#if BLKSNAP_HAVE_NBD
  if (impl_->nbd) {
    nbd::ExportOptions eo;
    eo.description = description;
    eo.read_only = read_only;
    eo.cbt = cbt;
    Status s = impl_->nbd->AddExport(name, dev, eo);
    if (!s.ok()) return s;
    set.nbd_export = name;
    set.nbd_uri = impl_->nbd->UnixUri(name);
    set.nbd_tcp_uri = impl_->nbd->TcpUri(name);
    if (!ro_name.empty()) {
      eo.read_only = true;
      eo.description = description + " (read-only)";
      Status ro = impl_->nbd->AddExport(ro_name, dev, eo);
      if (ro.ok()) {
        set.nbd_ro_export = ro_name;
        set.nbd_ro_uri = impl_->nbd->UnixUri(ro_name);
      } else {
        spdlog::warn("read-only NBD export {}: {}", ro_name, ro.ToString());
      }
    }
  }
#endif
#if BLKSNAP_HAVE_FUSE
  if (impl_->mount) {
    Status s = impl_->mount->AddFile(name, dev, read_only);
    if (!s.ok()) {
      Unexpose(set).IgnoreError();
      return s;
    }
    set.fuse_file = name;
    set.fuse_path = impl_->mount->FilePath(name);
    if (loop) {
      auto ld = fuse::LoopDevice::Attach(set.fuse_path, dev->logical_block_size(), read_only);
      if (!ld.ok()) {
        Status err = ld.status();
        Unexpose(set).IgnoreError();
        return Status::Error(err.errnum(),
                             "loop device on " + set.fuse_path + ": " + std::string(err.message()));
      }
      auto holder = std::make_shared<fuse::LoopDevice>(std::move(ld).value());
      set.loop_path = holder->path();
      set.loop_rdev = holder->rdev();
      set.loop = holder;
    }
  }
#endif
#if BLKSNAP_HAVE_UBLK
  if (options.ublk) {
    ublk::DeviceOptions uo;
    uo.queues = 1;
    uo.user_recovery = true;
    Result<std::unique_ptr<ublk::Device>> ud = Status::Error(ENODEV, "");
    if (options.ublk_recover_id >= 0) {
      ud = ublk::Device::Recover(options.ublk_recover_id, dev, uo);
      if (ud.ok()) {
        set.ublk_recovered = true;
        spdlog::info("ublk: re-attached /dev/ublkb{} to '{}'", options.ublk_recover_id, name);
      } else {
        spdlog::warn("ublk: cannot re-attach /dev/ublkb{} to '{}' ({}); creating a new device",
                     options.ublk_recover_id, name, ud.status().ToString());
        // A leftover device of another geometry would block nothing; leave it to the admin.
      }
    }
    if (!ud.ok()) ud = ublk::Device::Create(dev, uo);
    if (!ud.ok()) {
      Status err = ud.status();
      Unexpose(set).IgnoreError();
      return Status::Error(err.errnum(),
                           "ublk device for '" + name + "': " + std::string(err.message()));
    }
    std::shared_ptr<ublk::Device> holder = std::move(ud).value();
    set.ublk_path = holder->path();
    set.ublk_rdev = holder->rdev();
    set.ublk_dev_id = holder->dev_id();
    set.ublk = holder;
  }
#endif
  return set;
}

Status Fronts::RemoveOrphanUblk(int dev_id, uint64_t size, uint32_t logical_block_size) {
#if BLKSNAP_HAVE_UBLK
  if (!has_ublk()) return Status::Error(ENOTSUP, "ublk is not available");
  auto gone = std::make_shared<GoneDevice>(size, logical_block_size);
  auto ud = ublk::Device::Recover(dev_id, gone, {});
  if (!ud.ok()) return ud.status();
  return (*ud)->Stop();
#else
  (void)dev_id;
  (void)size;
  (void)logical_block_size;
  return Status::Error(ENOTSUP, "built without ublk");
#endif
}

Status Fronts::Unexpose(FrontSet& set) {
  Status first;
  auto keep = [&first](Status s) {
    if (!s.ok() && first.ok()) first = std::move(s);
  };
  (void)keep;
#if BLKSNAP_HAVE_UBLK
  // ublk first: it is the outermost block device (a file system may sit on it).
  if (set.ublk) {
    auto ud = std::static_pointer_cast<ublk::Device>(set.ublk);
    keep(ud->Stop());
    set.ublk.reset();
  }
#endif
#if BLKSNAP_HAVE_FUSE
  if (set.loop) {
    auto ld = std::static_pointer_cast<fuse::LoopDevice>(set.loop);
    keep(ld->Detach());
    set.loop.reset();
  }
  if (!set.fuse_file.empty() && impl_->mount) keep(impl_->mount->RemoveFile(set.fuse_file));
#endif
#if BLKSNAP_HAVE_NBD
  if (impl_->nbd) {
    if (!set.nbd_export.empty()) keep(impl_->nbd->RemoveExport(set.nbd_export));
    if (!set.nbd_ro_export.empty()) keep(impl_->nbd->RemoveExport(set.nbd_ro_export));
  }
#endif
  set.loop.reset();
  set = FrontSet();
  return first;
}

Status Fronts::CheckIdle(const FrontSet& set) const {
  for (const auto& [kind, path] :
       {std::pair<const char*, const std::string*>{"loop", &set.loop_path},
        {"ublk", &set.ublk_path}}) {
    if (path->empty()) continue;
    // A mounted or exclusively opened block device refuses O_EXCL opens with EBUSY.
    int fd = ::open(path->c_str(), O_RDONLY | O_EXCL | O_CLOEXEC);
    if (fd < 0 && errno == EBUSY) {
      return Status::Error(EBUSY, std::string(kind) + " device " + *path + " is in use (mounted?)");
    }
    if (fd >= 0) ::close(fd);
  }
#if BLKSNAP_HAVE_NBD
  if (impl_->nbd) {
    for (const std::string* e : {&set.nbd_export, &set.nbd_ro_export}) {
      if (!e->empty() && impl_->nbd->ConnectionCount(*e) > 0) {
        return Status::Error(EBUSY, "NBD export '" + *e + "' has " +
                                        std::to_string(impl_->nbd->ConnectionCount(*e)) +
                                        " client connection(s)");
      }
    }
  }
#endif
#if BLKSNAP_HAVE_FUSE
  // The loop device itself keeps the FUSE file open; only check the file without one.
  if (impl_->mount && set.loop_path.empty() && !set.fuse_file.empty() &&
      impl_->mount->IsOpen(set.fuse_file)) {
    return Status::Error(EBUSY, "FUSE file " + set.fuse_path + " is open");
  }
#endif
  return Status::Ok();
}

Result<std::function<void()>> Fronts::Freeze(const std::vector<uint64_t>& rdevs) {
  if (rdevs.empty()) return std::function<void()>([] {});
#if BLKSNAP_HAVE_FUSE
  auto frozen = fuse::FrozenFilesystems::Freeze(rdevs);
  if (!frozen.ok()) return frozen.status();
  auto holder = std::make_shared<fuse::FrozenFilesystems>(std::move(frozen).value());
  return std::function<void()>([holder] { holder->Thaw(); });
#else
  return std::function<void()>([] {});
#endif
}

void Fronts::Stop() {
  if (!impl_) return;
#if BLKSNAP_HAVE_NBD
  if (impl_->nbd) {
    impl_->nbd->Stop();
    impl_->nbd.reset();
  }
#endif
#if BLKSNAP_HAVE_FUSE
  impl_->mount.reset();  // unmounts
#endif
}

}  // namespace blksnap::daemon
