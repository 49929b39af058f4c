// Front: one way a device (a tracked device or a snapshot image) is reachable from outside the
// daemon: an NBD export, a FUSE file, a loop device on that file, a ublk device.
//
// Each server has an adapter beside it (nbd/nbd_front, fuse/fuse_front, ublk/ublk_front) that
// makes Front objects; the daemon composes them into an Exposure (front/exposure.h) and never
// sees a server's own types. A Front is removed explicitly (Remove) or when destroyed; both are
// idempotent. Thread safety: a Front is used by one owner at a time (the daemon's service holds
// its exposures under its own lock); the servers behind it are thread-safe.
#pragma once

#include <cstdint>
#include <string>

#include "blksnap/status.h"

namespace blksnap {

// Where one exposed device can be reached; each front fills in its own fields. Empty: absent.
struct FrontAddresses {
  std::string nbd;      // nbd+unix:// URI of the export
  std::string nbd_tcp;  // nbd:// or nbds:// URI when the server listens on TCP
  std::string nbd_ro;   // images: the read-only variant's URI
  std::string fuse;     // path of the FUSE file
  std::string loop;     // /dev/loopN
  std::string ublk;     // /dev/ublkbN
  int ublk_dev_id = -1;
  bool ublk_recovered = false;  // re-attached to a device a previous daemon left (ublk Recover)
};

class Front {
 public:
  virtual ~Front() = default;
  // "nbd", "nbd-ro", "fuse", "loop" or "ublk", for messages.
  virtual const char* kind() const = 0;
  // Adds this front's address to `out`.
  virtual void Describe(FrontAddresses& out) const = 0;
  // st_rdev of the block device this front creates (loop, ublk), 0 for the others. Used to
  // freeze file systems at a take and to recognise aliases of a tracked device.
  virtual uint64_t rdev() const { return 0; }
  // st_dev of a file system through which the device's data is reachable as a file (the FUSE
  // mount), 0 for none: a loop device over such a file aliases the device too.
  virtual uint64_t alias_dev() const { return 0; }
  // EBUSY naming the front and its user when a client uses it (connection, open file, mount).
  virtual Status CheckIdle() const = 0;
  // Takes the front away; clients see their device disappear. Idempotent.
  virtual Status Remove() = 0;
};

}  // namespace blksnap
