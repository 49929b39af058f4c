// ChunkFrame: a backup or restore worker's chunk buffer, with room for a blob around the chunk's
// bytes (issues 16-17: the client's CPU per GB).
//
// A blob (docs/repository-format.md, "Blobs") is a header (and a nonce when encrypted), the
// payload, then a trailer (CRC-32C or GCM tag). When the payload is the chunk's bytes stored raw
// (random or already compressed data: most of a backup's bytes that do not compress), a frame
// lets the blob be built (Codec::SealFramed) or read (Repository::ReadChunk) around the bytes
// where they lie, instead of copying 4 MiB into or out of a separate blob buffer:
//
//   | headroom (kHeadroom) | plain(): capacity bytes, 4 KiB-aligned | tailroom (kTailroom) |
//             [header nonce][payload ..................... ][trailer]
//             ^ Around(payload_offset)
//
// plain() is 4 KiB-aligned so a target or image opened with O_DIRECT takes it without a bounce.
// State: one aligned allocation, owned (move-only), its pages prefaulted; no locking: one worker
// uses it at a time.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <span>

#include "util/prefault.h"

namespace blksnap::repo {

class ChunkFrame {
 public:
  static constexpr size_t kAlignment = 4096;
  // Before plain(): at least any blob's payload offset (header + nonce, 28 bytes), and a whole
  // alignment unit so that plain() stays aligned.
  static constexpr size_t kHeadroom = kAlignment;
  // After plain()'s capacity: any blob's trailer (16 bytes), then a segmented chunk's table blob
  // and footer (repository_format.h: kMaxChunkTableBlob + 8 bytes, under 33 KiB).
  static constexpr size_t kTailroom = 36 * 1024;

  // ok() is false when the allocation failed.
  explicit ChunkFrame(size_t capacity) : capacity_(capacity), base_(Allocate(capacity)) {
    // Every page of a worker's frame gets written (a restore fills it whole; a backup reads its
    // chunks into it): made present at once rather than faulted in one by one (prefault.h).
    if (base_) PrefaultForWrite(base_.get(), AllocationSize(capacity), /*huge=*/true);
  }

  bool ok() const { return base_ != nullptr; }
  size_t capacity() const { return capacity_; }
  // The chunk's bytes (capacity() of them, 4 KiB-aligned).
  std::span<uint8_t> plain() { return {base_.get() + kHeadroom, capacity_}; }
  // The room for a blob whose payload starts at plain(): from payload_offset bytes before
  // plain() (at most kHeadroom) to the end of the tailroom.
  std::span<uint8_t> Around(size_t payload_offset) {
    return {base_.get() + kHeadroom - payload_offset, payload_offset + capacity_ + kTailroom};
  }

 private:
  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  // Aligned to a huge page, so that all of a frame but its tailroom can be in huge pages
  // (prefault.h); plain() is then 4 KiB-aligned (kHeadroom in).
  static uint8_t* Allocate(size_t capacity) {
    void* p = nullptr;
    const size_t align = capacity >= kHugePageSize ? kHugePageSize : kAlignment;
    if (::posix_memalign(&p, align, AllocationSize(capacity)) != 0) return nullptr;
    return static_cast<uint8_t*>(p);
  }
  static size_t AllocationSize(size_t capacity) {
    const size_t size = kHeadroom + capacity + kTailroom;
    return (size + kAlignment - 1) / kAlignment * kAlignment;
  }

  size_t capacity_;
  std::unique_ptr<uint8_t[], Free> base_;
};

}  // namespace blksnap::repo
