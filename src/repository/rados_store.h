// RadosStore: the ObjectStore of a Ceph RADOS pool (issue 17), through librados. Built only when
// librados is found (BLKSNAP_WITH_RADOS is then defined for every user of blksnap_repository).
//
// Addressed by a URL:
//   rados://POOL[/NAMESPACE][?conf=PATH][&id=NAME][&keyring=PATH]
//     POOL, NAMESPACE  [A-Za-z0-9._-]+; no NAMESPACE is the pool's default namespace
//     conf             the Ceph configuration file (default /etc/ceph/ceph.conf)
//     id               the cephx user without "client." (default "admin")
//     keyring          a keyring file, if the configuration does not name one
//   Values may be %XX-escaped. A URL never carries a secret: key= and secret= are refused.
//
// Semantics (object_store.h): objects are RADOS objects named as the store's names; Put is one
// write_full (atomic on the OSD, durable once acknowledged); PutIfAbsent one write operation
// create(exclusive) + write_full (EEXIST); Exists/Size a stat; List walks the namespace's object
// listing, keeps the names with the prefix and sorts them client-side (a full scan of the
// namespace: RADOS lists in hash order and has no prefix index); Delete removes (ENOENT is OK).
// Lock is a RADOS advisory lock (cls_lock) named "blksnap" on the object "lock": shared (tag
// "blksnap") or exclusive, each lease with its own cookie and a duration (lease_seconds), renewed
// by a thread of the lease every third of it, so a crashed holder's lock expires by itself.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "blksnap/status.h"
#include "repository/object_store.h"

namespace blksnap::repo {

struct RadosUrl {
  std::string pool;
  std::string ns;  // "" is the default namespace
  std::string conf = "/etc/ceph/ceph.conf";
  std::string id = "admin";
  std::string keyring;  // "" leaves it to the configuration

  // "rados://POOL[/NAMESPACE]": what messages name (never the query: no paths, no ids).
  std::string Display() const;
};

// EINVAL with a one-line message naming what is wrong for anything but the grammar above.
Result<RadosUrl> ParseRadosUrl(std::string_view url);

struct RadosStoreOptions {
  // How long a lease outlives its holder's last renewal (a crashed holder's lock expires then).
  int lease_seconds = 60;
  // librados timeouts where the configuration leaves them at their defaults (0 = forever for
  // operations, 300 s for the first connection): a dead cluster or OSD becomes ETIMEDOUT.
  int connect_timeout_seconds = 30;
  int op_timeout_seconds = 120;
};

// Connects as client.ID and opens POOL (ENOENT "no such pool" if it does not exist). Errors name
// the cluster's configuration and user, never a key.
Result<std::unique_ptr<ObjectStore>> OpenRadosStore(const RadosUrl& url,
                                                    const RadosStoreOptions& options = {});
Result<std::unique_ptr<ObjectStore>> OpenRadosStore(std::string_view url);

}  // namespace blksnap::repo
