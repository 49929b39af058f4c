// NBD fronts: a device exported by the NBD server as a Front (front/front.h).
#pragma once

#include <memory>
#include <string>

#include "front/front.h"
#include "nbd/nbd_server.h"

namespace blksnap::nbd {

// Adds export `name` for device on server; read_only_variant (images): the same device also as
// a read-only export of that name ("nbd-ro" front). The server must outlive the fronts.
Result<std::unique_ptr<Front>> MakeExportFront(Server& server, const std::string& name,
                                               std::shared_ptr<BlockDevice> device,
                                               const ExportOptions& options,
                                               bool read_only_variant = false);

}  // namespace blksnap::nbd
