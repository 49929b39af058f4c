// CRC-32C (Castagnoli, polynomial 0x1EDC6F41 reflected as 0x82F63B78), used by the sector
// pattern and by on-disk headers and records. Crc32c() picks the fastest implementation once:
// the SSE4.2 `crc32` instruction when the CPU has it, else a byte-wise table. Both give the same
// result (RFC 3720 test vectors in crc32c_test.cc). Stateless and thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>

namespace blksnap {

// The CRC of `length` bytes at `data`, continuing from `crc` (the result of an earlier call over
// the preceding bytes, or 0 to start): Crc32c(a+b) == Crc32c(b, Crc32c(a)).
uint32_t Crc32c(const void* data, size_t length, uint32_t crc = 0);

// True when Crc32c() runs on the CPU's instruction (tens of GB/s); false when it is the table
// (~0.5 GB/s natively, and 30-50x slower than the instruction under an emulated CPU such as
// QEMU's TCG default model). Optional checksums are skipped when this is false: a durable
// snapshot's data CRC in its log record, which then costs its commit a second flush
// (engine/chunk_log.h).
bool Crc32cIsFast();

// Crc32c(a + b) from Crc32c(a), Crc32c(b) and b's length, without b's bytes (zlib's
// crc32_combine for this polynomial): O(log length_b), a few hundred shifts and XORs.
uint32_t Crc32cCombine(uint32_t crc_a, uint32_t crc_b, uint64_t length_b);
// Crc32c(a + `zeros` zero bytes) from Crc32c(a), in the same time.
uint32_t Crc32cZeros(uint32_t crc_a, uint64_t zeros);
// For a length used again and again: its operator (x^(8 * length) modulo the polynomial,
// O(log length)) computed once, then applied in 32 steps. Crc32cZeros(c, n) ==
// Crc32cZerosBy(c, Crc32cOperator(n)); Crc32cCombine(a, b, n) ==
// Crc32cCombineBy(a, b, Crc32cOperator(n)).
uint32_t Crc32cOperator(uint64_t length);
uint32_t Crc32cZerosBy(uint32_t crc_a, uint32_t length_operator);
uint32_t Crc32cCombineBy(uint32_t crc_a, uint32_t crc_b, uint32_t length_operator);

namespace crc32c_internal {
// The two implementations behind Crc32c(), exposed for tests and benchmarks.
uint32_t Portable(const void* data, size_t length, uint32_t crc);
// True when the CPU executes Hardware(); calling Hardware() otherwise is undefined.
bool HaveHardware();
uint32_t Hardware(const void* data, size_t length, uint32_t crc);
}  // namespace crc32c_internal

}  // namespace blksnap
