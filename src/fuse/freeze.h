// Compatibility only: FrozenFilesystems moved to util/freeze.h (namespace blksnap), so that every
// front freezes through the library whether FUSE is built or not. Remove this header once
// src/daemon includes util/freeze.h.
#pragma once

#include "util/freeze.h"

namespace blksnap::fuse {
using blksnap::FrozenFilesystems;
}  // namespace blksnap::fuse
