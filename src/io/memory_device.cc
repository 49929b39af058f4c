// MemoryDevice: a sparse, zero-filled in-memory BlockDevice (MakeMemoryDevice in io.h).
//
// Storage is a two-level table of 64 KiB pages: a directory of leaves, each leaf holding the
// pointers of kPagesPerLeaf pages. The directory is sized at construction (8 bytes per 64 MiB of
// device, so 16 TiB costs 2 MiB); leaves and pages are allocated on first write and published
// with compare-and-swap, so concurrent first writes to a page agree on one allocation. Leaves
// live until the device dies; pages are freed by Trim and by WriteZeroes without kZeroNoHole.
//
// Locking: page_locks_ are striped reader/writer locks keyed by page index. Reads take their
// pages' stripes shared; writes, zeroing and freeing take them exclusive, so no reader or writer
// can hold a pointer to a freed page, and a read concurrent with a write of the same bytes is
// not a data race. (The engine reads the original optimistically while a writer may change it
// and discards what it read if so, diff_area.h; on a file the kernel makes that safe, here the
// lock does, and TSan stays quiet.) Overlapping concurrent writes have no defined result, as on
// a disk.
// BlockStatus reports unallocated pages as hole+zero and allocated pages as data.
#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <memory>

#include "blksnap/io.h"
#include "util/mutex.h"

namespace blksnap {
namespace {

constexpr uint64_t kPageShift = 16;
constexpr uint64_t kPageSize = 1ull << kPageShift;
constexpr uint64_t kLeafShift = 10;
constexpr uint64_t kPagesPerLeaf = 1ull << kLeafShift;
constexpr size_t kLockStripes = 256;

struct Leaf {
  std::array<std::atomic<uint8_t*>, kPagesPerLeaf> pages{};
  ~Leaf() {
    for (auto& p : pages) delete[] p.load(std::memory_order_relaxed);
  }
};

class MemoryDevice final : public BlockDevice {
 public:
  MemoryDevice(uint64_t size, uint32_t logical_block_size)
      : size_(size),
        logical_block_size_(logical_block_size ? logical_block_size : 512),
        leaf_count_((PageCount() + kPagesPerLeaf - 1) >> kLeafShift),
        leaves_(std::make_unique<std::atomic<Leaf*>[]>(leaf_count_)) {}

  ~MemoryDevice() override {
    for (uint64_t i = 0; i < leaf_count_; ++i) delete leaves_[i].load(std::memory_order_relaxed);
  }

  uint64_t size() const override { return size_; }
  uint32_t logical_block_size() const override { return logical_block_size_; }
  uint32_t physical_block_size() const override {
    return std::max<uint32_t>(logical_block_size_, 4096);
  }
  DeviceCapabilities capabilities() const override {
    DeviceCapabilities caps;
    caps.fast_zero = true;
    caps.block_status = true;
    return caps;
  }

  Status Read(uint64_t offset, std::span<uint8_t> buf) override {
    BLKSNAP_RETURN_IF_ERROR(CheckRange(*this, offset, buf.size()));
    ForEachPage(offset, buf.size(), [&](uint64_t page, size_t in_page, size_t n, size_t done) {
      ReaderLock lock(LockOf(page));
      const uint8_t* p = HeldPage(page);
      if (p) {
        std::memcpy(buf.data() + done, p + in_page, n);
      } else {
        std::memset(buf.data() + done, 0, n);
      }
    });
    return Status::Ok();
  }

  Status Write(uint64_t offset, std::span<const uint8_t> buf, uint32_t /*flags*/) override {
    BLKSNAP_RETURN_IF_ERROR(CheckRange(*this, offset, buf.size()));
    bool no_memory = false;
    ForEachPage(offset, buf.size(), [&](uint64_t page, size_t in_page, size_t n, size_t done) {
      if (no_memory) return;
      WriterLock lock(LockOf(page));
      uint8_t* p = PageForWrite(page);
      if (!p) {
        no_memory = true;
        return;
      }
      std::memcpy(p + in_page, buf.data() + done, n);
    });
    if (no_memory) return Status::Error(ENOMEM, "memory device: page allocation");
    return Status::Ok();
  }

  Status Flush() override { return Status::Ok(); }

  Status Trim(uint64_t offset, uint64_t length) override { return WriteZeroes(offset, length, 0); }

  Status WriteZeroes(uint64_t offset, uint64_t length, uint32_t flags) override {
    BLKSNAP_RETURN_IF_ERROR(CheckRange(*this, offset, length));
    ForEachPage(offset, length, [&](uint64_t page, size_t in_page, size_t n, size_t) {
      if (n == PageBytes(page) && !(flags & kZeroNoHole)) {
        WriterLock lock(LockOf(page));
        FreePage(page);
        return;
      }
      WriterLock lock(LockOf(page));
      if (uint8_t* p = HeldPage(page)) std::memset(p + in_page, 0, n);
    });
    return Status::Ok();
  }

  Result<std::vector<Extent>> BlockStatus(uint64_t offset, uint64_t length) override {
    BLKSNAP_RETURN_IF_ERROR(CheckRange(*this, offset, length));
    std::vector<Extent> extents;
    ForEachPage(offset, length, [&](uint64_t page, size_t, size_t n, size_t done) {
      // Only the pointer is looked at (an atomic load), not the page: no stripe lock needed.
      const uint32_t flags = PageIfPresent(page) ? 0 : (kExtentHole | kExtentZero);
      if (!extents.empty() && extents.back().flags == flags) {
        extents.back().length += n;
      } else {
        extents.push_back(Extent{offset + done, n, flags});
      }
    });
    return extents;
  }

 private:
  uint64_t PageCount() const { return (size_ + kPageSize - 1) >> kPageShift; }
  // Bytes of the device in this page (the last page may be short).
  size_t PageBytes(uint64_t page) const {
    return static_cast<size_t>(std::min<uint64_t>(kPageSize, size_ - (page << kPageShift)));
  }
  // The analysis matches LockOf(page) expressions: a function that REQUIRES(LockOf(page)) is
  // checked against the stripe its caller locked for the same page variable (it cannot tell
  // that two page numbers share a stripe, nor prove which bytes a stripe covers).
  SharedMutex& LockOf(uint64_t page) RETURN_CAPABILITY(page_locks_[page % kLockStripes]) {
    return page_locks_[page % kLockStripes];
  }

  // fn(page, offset in page, bytes, bytes done before) for each page piece of the range.
  template <typename Fn>
  void ForEachPage(uint64_t offset, uint64_t length, Fn&& fn) {
    uint64_t done = 0;
    while (done < length) {
      const uint64_t pos = offset + done;
      const uint64_t page = pos >> kPageShift;
      const size_t in_page = static_cast<size_t>(pos & (kPageSize - 1));
      const size_t n = static_cast<size_t>(std::min<uint64_t>(kPageSize - in_page, length - done));
      fn(page, in_page, n, static_cast<size_t>(done));
      done += n;
    }
  }

  // The page's pointer, or null; unlocked (atomic), so only to test presence.
  uint8_t* PageIfPresent(uint64_t page) const {
    Leaf* leaf = leaves_[page >> kLeafShift].load(std::memory_order_acquire);
    return leaf ? leaf->pages[page & (kPagesPerLeaf - 1)].load(std::memory_order_acquire) : nullptr;
  }

  // The page, or null, while the caller holds its stripe: shared to read it, exclusive to write.
  uint8_t* HeldPage(uint64_t page) REQUIRES_SHARED(LockOf(page)) { return PageIfPresent(page); }

  // The CAS makes leaf creation safe across stripes.
  uint8_t* PageForWrite(uint64_t page) REQUIRES(LockOf(page)) {
    std::atomic<Leaf*>& leaf_slot = leaves_[page >> kLeafShift];
    Leaf* leaf = leaf_slot.load(std::memory_order_acquire);
    if (!leaf) {
      auto fresh = std::make_unique<Leaf>();
      if (leaf_slot.compare_exchange_strong(leaf, fresh.get(), std::memory_order_acq_rel)) {
        leaf = fresh.release();
      }
    }
    std::atomic<uint8_t*>& slot = leaf->pages[page & (kPagesPerLeaf - 1)];
    uint8_t* p = slot.load(std::memory_order_acquire);
    if (p) return p;
    auto fresh = std::unique_ptr<uint8_t[]>(new (std::nothrow) uint8_t[kPageSize]());
    if (!fresh) return nullptr;
    if (slot.compare_exchange_strong(p, fresh.get(), std::memory_order_acq_rel)) {
      p = fresh.release();
    }
    return p;
  }

  void FreePage(uint64_t page) REQUIRES(LockOf(page)) {
    Leaf* leaf = leaves_[page >> kLeafShift].load(std::memory_order_acquire);
    if (!leaf) return;
    delete[] leaf->pages[page & (kPagesPerLeaf - 1)].exchange(nullptr, std::memory_order_acq_rel);
  }

  const uint64_t size_;
  const uint32_t logical_block_size_;
  const uint64_t leaf_count_;
  const std::unique_ptr<std::atomic<Leaf*>[]> leaves_;  // published by CAS, freed in destructor
  std::array<SharedMutex, kLockStripes> page_locks_;    // guard page lifetime (see top)
};

}  // namespace

std::shared_ptr<BlockDevice> MakeMemoryDevice(uint64_t size, uint32_t logical_block_size) {
  return std::make_shared<MemoryDevice>(size, logical_block_size);
}

}  // namespace blksnap
