// Where a repository lives, as the user names it (`--repo`, `repo init`): a local directory, a
// Ceph pool through librados (rados://POOL[/NAMESPACE]?conf=&id=&keyring=, rados_store.h) or an
// S3 bucket (s3://BUCKET[/PREFIX]?endpoint=&region=&credentials=..., s3_store.h). Every command
// works the same on each; only the opening differs.
#pragma once

#include <memory>
#include <string>

#include "blksnap/status.h"
#include "repository/object_store.h"

namespace blksnap::repo {

// True for a rados:// or s3:// location (not a path: never made absolute).
bool IsStoreUrl(const std::string& location);

// Opens the store at `location`. create (repo init): a missing directory is made (mode 0700, its
// parent must exist), a missing bucket is made; a pool must exist (pools are the cluster
// administrator's). ENOTSUP for rados:// in a build without librados.
Result<std::unique_ptr<ObjectStore>> OpenStore(const std::string& location, bool create = false);

}  // namespace blksnap::repo
