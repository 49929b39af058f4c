// NoFronts: a Fronts with no server at all (every Expose gives an empty Exposure, freezing does
// nothing), for tests and the methods fuzzer that drive the service without NBD, FUSE or ublk.
#pragma once

#include "daemon/fronts.h"

namespace blksnap::daemon {

class NoFronts final : public Fronts {
 public:
  NoFronts() { info_.block_frontend = "fuse-loop"; }
  const FrontsInfo& info() const override { return info_; }
  Result<std::unique_ptr<Exposure>> Expose(const std::string&, std::shared_ptr<BlockDevice>,
                                           std::shared_ptr<const CbtSource>,
                                           const ExposeOptions&) override {
    return std::make_unique<Exposure>();
  }
  Status RemoveOrphanUblk(int, uint64_t, uint32_t) override { return Status::Ok(); }
  Result<std::function<void()>> Freeze(const std::vector<uint64_t>&) override {
    return std::function<void()>([] {});
  }
  void Stop() override {}

 private:
  FrontsInfo info_;
};

}  // namespace blksnap::daemon
