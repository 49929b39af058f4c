// The physical extents of a file (FIEMAP), for `blksnap cbt mark-dirty --file`.
#pragma once

#include <string>
#include <vector>

#include "blksnap/cbt.h"
#include "blksnap/status.h"

namespace blksnap::cli {

// Byte extents of the file on its block device (fe_physical, fe_length), after syncing the
// file (FIEMAP_FLAG_SYNC). Extents without a known location (inline, encoded, unknown) are
// skipped and counted in *skipped.
Result<std::vector<ByteExtent>> FileExtents(const std::string& path, size_t* skipped = nullptr);

}  // namespace blksnap::cli
