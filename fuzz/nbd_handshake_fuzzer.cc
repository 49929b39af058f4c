// libFuzzer target: the NBD handshake, then (if it reaches transmission) the request parser,
// fed from one byte string without sockets. Finds crashes, hangs and sanitizer reports in
// option parsing (lengths that lie, nested meta-context queries, truncation anywhere).
#include <cstddef>
#include <cstdint>

#include "blksnap/io.h"
#include "nbd/handshake.h"
#include "nbd/session.h"
#include "nbd/test_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace blksnap;
  using namespace blksnap::nbd;
  static std::shared_ptr<BlockDevice> dev = MakeMemoryDevice(1 << 20);
  test::MapHost host;
  host.Add("a", dev, ExportOptions{"desc", false, nullptr});
  host.Add("", dev, ExportOptions{"", true, nullptr});
  if (size > 0 && (data[0] & 0x80)) host.forced_ = true;
  std::unique_ptr<Transport> t =
      std::make_unique<MemoryTransport>(std::span<const uint8_t>(data, size));
  static_cast<MemoryTransport*>(t.get())->set_record_output(false);
  InputBuffer in;
  Result<Negotiated> n = Handshake(host, t, in).Run();
  if (n.ok()) {
    SessionLimits limits;
    limits.max_workers = 1;
    Session(*t, in, *n, limits).Run();
  }
  return 0;
}
