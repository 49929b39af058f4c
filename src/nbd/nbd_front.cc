// NBD fronts: one export of the NBD server. Idle while no connection is in the transmission
// phase on it; removing it closes the connections that remain (nbd::Server::RemoveExport).
#include "nbd/nbd_front.h"

namespace blksnap::nbd {
namespace {

class ExportFront final : public Front {
 public:
  ExportFront(Server& server, std::string name, bool ro_variant)
      : server_(server), name_(std::move(name)), ro_variant_(ro_variant) {}
  ~ExportFront() override { Remove().IgnoreError(); }

  const char* kind() const override { return ro_variant_ ? "nbd-ro" : "nbd"; }
  void Describe(FrontAddresses& out) const override {
    if (removed_) return;
    if (ro_variant_) {
      out.nbd_ro = server_.UnixUri(name_);
      return;
    }
    out.nbd = server_.UnixUri(name_);
    out.nbd_tcp = server_.TcpUri(name_);
  }
  Status CheckIdle() const override {
    size_t n = removed_ ? 0 : server_.ConnectionCount(name_);
    if (n == 0) return Status::Ok();
    return Status::Error(
        EBUSY, "NBD export '" + name_ + "' has " + std::to_string(n) + " client connection(s)");
  }
  Status Remove() override {
    if (removed_) return Status::Ok();
    removed_ = true;
    return server_.RemoveExport(name_);
  }

 private:
  Server& server_;
  const std::string name_;
  const bool ro_variant_;
  bool removed_ = false;
};

}  // namespace

Result<std::unique_ptr<Front>> MakeExportFront(Server& server, const std::string& name,
                                               std::shared_ptr<BlockDevice> device,
                                               const ExportOptions& options,
                                               bool read_only_variant) {
  BLKSNAP_RETURN_IF_ERROR(server.AddExport(name, std::move(device), options));
  return std::unique_ptr<Front>(new ExportFront(server, name, read_only_variant));
}

}  // namespace blksnap::nbd
