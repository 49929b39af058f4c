// CRC-32C (Castagnoli), used by the sector pattern and on-disk headers.
#pragma once

#include <cstddef>
#include <cstdint>

namespace blksnap {

uint32_t Crc32c(const void* data, size_t length, uint32_t crc = 0);

}  // namespace blksnap
