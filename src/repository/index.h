// Index: the list of a backup's chunks, one digest per chunk of the device, stored as the object
// "indexes/<hex>" (format: catalog_format.h, docs/repository-format.md section 4).
//
// EncodeIndex writes a fixed header, the digests and a SHA-256 of everything before it.
// ParseIndex reads untrusted bytes: it checks the length before it reads, the header's fields
// (magic, version, flags, chunk size, count == ceil(device_size / chunk_size)), that the length
// is exactly the one the header implies and the checksum, all before it allocates the entries;
// any damage is EBADMSG with a one-line message naming what is wrong. Plain values and pure
// functions: no state, no locking.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "blksnap/status.h"
#include "repository/digest.h"

namespace blksnap::repo {

struct Index {  // one digest per chunk of the device; zero chunk = Digest{}
  uint64_t device_size = 0;
  uint64_t chunk_size = 0;
  std::vector<Digest> chunks;  // ceil(device_size / chunk_size) entries

  bool operator==(const Index&) const = default;
};

// OK when chunk_size is valid (a power of two, 64 KiB .. 64 MiB) and chunks has
// ceil(device_size / chunk_size) entries; EINVAL naming the problem otherwise.
Status CheckIndex(const Index& index);

// The encoded object. The index must pass CheckIndex: the bytes of one that does not are
// refused by ParseIndex.
std::vector<uint8_t> EncodeIndex(const Index& index);

// Parses an encoded index; EBADMSG on any damage (fuzzed: never throws, never trusts a length).
Result<Index> ParseIndex(std::span<const uint8_t> bytes);

}  // namespace blksnap::repo
