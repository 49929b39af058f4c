// libFuzzer target: the daemon's state file parser (src/daemon/records.h). Any bytes must parse
// without throwing or crashing; bytes that parse must survive a round trip: serialising the
// records and parsing them again gives the same records (clean_stop included) and no problems.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "daemon/records.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using blksnap::daemon::ParseRecords;
  auto parsed = ParseRecords(std::string_view(reinterpret_cast<const char*>(data), size));
  if (!parsed.ok()) return 0;
  const std::string text = blksnap::daemon::SerializeRecords(parsed->records);
  auto again = ParseRecords(text);
  if (!again.ok() || !again->problems.empty() || !(again->records == parsed->records)) abort();
  if (blksnap::daemon::SerializeRecords(again->records) != text) abort();
  return 0;
}
