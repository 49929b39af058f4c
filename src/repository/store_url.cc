// OpenStore: see store_url.h.
#include "repository/store_url.h"

#include <sys/stat.h>

#include "repository/s3_store.h"
#ifdef BLKSNAP_WITH_RADOS
#include "repository/rados_store.h"
#endif

namespace blksnap::repo {

bool IsStoreUrl(const std::string& location) {
  return location.rfind("rados://", 0) == 0 || location.rfind("s3://", 0) == 0;
}

Result<std::unique_ptr<ObjectStore>> OpenStore(const std::string& location, bool create) {
  if (location.rfind("s3://", 0) == 0) return OpenS3Store(location, {.create_bucket = create});
  if (location.rfind("rados://", 0) == 0) {
#ifdef BLKSNAP_WITH_RADOS
    return OpenRadosStore(location);
#else
    return Status::Error(ENOTSUP, "rados:// repositories need a blksnap built with librados");
#endif
  }
  if (location.find("://") != std::string::npos)
    return Status::Error(EINVAL,
                         "repository '" + location +
                             "': a directory, rados://POOL[/NS]?... or s3://BUCKET[/PREFIX]?...");
  if (create && ::mkdir(location.c_str(), 0700) != 0 && errno != EEXIST)
    return Status::FromErrno("creating " + location);
  return OpenLocalStore(location);
}

}  // namespace blksnap::repo
