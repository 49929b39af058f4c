// libFuzzer target: the NBD transmission phase (request headers, flags, ranges, write
// payloads, block status over both meta contexts) on a 1 MiB memory device, fed from memory.
// The first byte picks the negotiated state (structured replies, contexts, read-only).
#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "blksnap/io.h"
#include "nbd/session.h"

namespace {

class FuzzCbt : public blksnap::CbtSource {
 public:
  blksnap::CbtInfo cbt_info() const override {
    blksnap::CbtInfo i;
    i.block_size = 4096;
    i.block_count = 200;  // shorter than the device on purpose
    return i;
  }
  blksnap::Status ReadCbtMap(uint64_t first, std::span<uint8_t> out) const override {
    if (first + out.size() > 200) return blksnap::Status::Error(EINVAL, "past end");
    for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<uint8_t>((first + i) / 7);
    return blksnap::Status::Ok();
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace blksnap;
  using namespace blksnap::nbd;
  if (size < 1) return 0;
  static std::shared_ptr<BlockDevice> dev = MakeMemoryDevice(1 << 20);
  auto entry = std::make_shared<ExportEntry>();
  entry->name = "f";
  entry->device = dev;
  entry->options.read_only = data[0] & 8;
  entry->options.cbt = std::make_shared<FuzzCbt>();
  Negotiated n;
  n.entry = entry;
  n.structured = data[0] & 1;
  n.base_allocation = data[0] & 2;
  n.cbt = data[0] & 4;
  MemoryTransport t(std::span<const uint8_t>(data + 1, size - 1));
  t.set_record_output(false);
  InputBuffer in;
  SessionLimits limits;
  limits.max_workers = 1;
  Session(t, in, n, limits).Run();
  return 0;
}
