// The S3 ObjectStore (issue 17): a repository in an S3 bucket (Ceph's radosgw, AWS S3, other
// S3-compatible stores), under an optional key prefix. URL and credentials: s3_client.h.
//
// The ObjectStore contract (object_store.h) on S3:
//   Put          PUT (S3 makes a whole object visible at once, durable when acknowledged)
//   PutIfAbsent  PUT with If-None-Match: * (412 -> EEXIST; radosgw and AWS S3 honour it)
//   Get/Size     GET / HEAD; Exists = HEAD; Delete = DELETE (a missing object is OK)
//   List         ListObjectsV2 pages, the prefix stripped, names that are not valid object
//                names (foreign keys, the lock objects) skipped, sorted
// Lock: S3 has no locks, so leases are objects under PREFIX/.lock/ (a component that starts
// with '.' is never a repository object name), kept alive by a thread that rewrites them every
// ttl/3 and deleted on release; one whose Last-Modified is older than the ttl by the server's
// own clock (its Date header: no dependence on the hosts' clocks) belongs to a dead holder and is
// ignored, and removed by the next exclusive locker.
//   shared     write .lock/shared-<random>, then look for a live .lock/exclusive: if there is
//              one, remove ours and report EBUSY (or retry while wait).
//   exclusive  create .lock/exclusive with If-None-Match (a stale one is deleted first), read it
//              back (a concurrent breaker of the same stale lock may have replaced ours: then
//              it is theirs), then list the live .lock/shared-*: if any, remove ours, EBUSY.
// Each side writes its own object before it looks for the other's, and S3 reads are strongly
// consistent (radosgw, AWS since 2020), so a shared and an exclusive lease never both succeed;
// both may back off and retry.
#pragma once

#include <memory>
#include <string>

#include "blksnap/status.h"
#include "repository/object_store.h"

namespace blksnap::repo {

struct S3StoreOptions {
  int lock_ttl_seconds = 120;  // a lease not refreshed for this long is a dead holder's
  bool create_bucket = false;  // `repo init`: make the bucket if it does not exist
};

// Parses the URL, loads the credentials, and checks the bucket (HEAD): ENOENT "no such bucket",
// EACCES "access denied", ECONNREFUSED/ETIMEDOUT for an endpoint that does not answer.
Result<std::unique_ptr<ObjectStore>> OpenS3Store(const std::string& url,
                                                 const S3StoreOptions& options = {});

}  // namespace blksnap::repo
