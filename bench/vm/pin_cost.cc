// pin_cost: what one O_DIRECT read or write of a chunk costs on a block device, by the kind of
// memory it goes to or from (4 KiB pages, a transparent huge page, an io_uring fixed buffer).
//
// blksnapd's copy-on-write reads each original chunk into a copy buffer and writes it to the
// difference storage with O_DIRECT; the kernel pins the buffer's pages for each I/O, one page
// walk per 4 KiB page. This measures that cost beside the copy itself, on the device given
// (the VM benchmark's is a dm-linear volume on brd, as in lvm_compare.sh):
//
//   g++ -O2 -std=c++20 -o /tmp/pin_cost bench/vm/pin_cost.cc -luring
//   modprobe brd rd_nr=1 rd_size=262144 && echo "0 409600 linear /dev/ram0 0" | dmsetup create lin
//   /tmp/pin_cost /dev/dm-0          # writes the device's first 128 MiB: a scratch device only
//
// Prints microseconds per operation for each kind of buffer. Results: docs/performance-vm.md,
// "Huge pages for the copy buffers".
#include <fcntl.h>
#include <liburing.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

constexpr size_t kChunk = 64 * 1024;
constexpr size_t kHuge = 2 * 1024 * 1024;
constexpr int kOps = 4000;
constexpr int kSlots = 2000;  // chunks of the device used: 125 MiB

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void Check(ssize_t n, size_t want, const char* what) {
  if (n != static_cast<ssize_t>(want)) {
    std::fprintf(stderr, "%s: %zd (%s)\n", what, n, std::strerror(errno));
    std::exit(1);
  }
}

void Run(int fd, uint8_t* buf, const char* kind) {
  auto report = [&](const char* what, double t0) {
    std::printf("%-12s %-28s %7.1f us/op\n", kind, what, (Now() - t0) / kOps * 1e6);
  };
  double t = Now();
  for (int i = 0; i < kOps; ++i)
    Check(::pread(fd, buf, kChunk, off_t{i % kSlots} * kChunk), kChunk, "pread");
  report("pread 64 KiB", t);
  t = Now();
  for (int i = 0; i < kOps; ++i)
    Check(::pwrite(fd, buf, kChunk, off_t{i % kSlots} * kChunk), kChunk, "pwrite");
  report("pwrite 64 KiB", t);
  t = Now();
  for (int i = 0; i < kOps; ++i)
    Check(::pwrite(fd, buf, 4096, off_t{i % kSlots} * 4096), 4096, "pwrite");
  report("pwrite 4 KiB", t);
  t = Now();
  for (int i = 0; i < kOps; ++i) Check(::pread(fd, buf, 512, 0), 512, "pread");
  report("pread 512 B (the floor)", t);
  io_uring ring;
  if (io_uring_queue_init(8, &ring, 0) < 0) return;
  iovec iov{buf, kChunk};
  const bool fixed = io_uring_register_buffers(&ring, &iov, 1) == 0;
  for (bool use_fixed : {false, true}) {
    if (use_fixed && !fixed) break;
    t = Now();
    for (int i = 0; i < kOps; ++i) {
      io_uring_sqe* sqe = io_uring_get_sqe(&ring);
      const off_t off = off_t{i % kSlots} * kChunk;
      if (use_fixed) {
        io_uring_prep_write_fixed(sqe, fd, buf, kChunk, off, 0);
      } else {
        io_uring_prep_write(sqe, fd, buf, kChunk, off);
      }
      io_uring_cqe* cqe;
      io_uring_submit_and_wait(&ring, 1);
      if (io_uring_peek_cqe(&ring, &cqe) == 0) {
        Check(cqe->res, kChunk, "io_uring write");
        io_uring_cqe_seen(&ring, cqe);
      }
    }
    report(use_fixed ? "io_uring write fixed 64 KiB" : "io_uring write 64 KiB", t);
  }
  io_uring_queue_exit(&ring);
  std::vector<uint8_t> a(kChunk, 1), b(kChunk);
  t = Now();
  for (int i = 0; i < kOps; ++i) {
    std::memcpy(b.data(), a.data(), kChunk);
    asm volatile("" ::: "memory");
  }
  report("memcpy 64 KiB", t);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: pin_cost BLOCK_DEVICE (overwritten)\n");
    return 2;
  }
  const int fd = ::open(argv[1], O_RDWR | O_DIRECT);
  if (fd < 0) {
    std::perror(argv[1]);
    return 1;
  }
  // 4 KiB pages: a buffer of its own small mapping (what BufferPool did before), which a huge
  // page cannot back.
  void* small = ::mmap(nullptr, kChunk, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  // A huge page: 2 MiB-aligned, advised, touched.
  void* span =
      ::mmap(nullptr, 2 * kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (small == MAP_FAILED || span == MAP_FAILED) return 1;
  auto* huge = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(span) + kHuge - 1) &
                                          ~uintptr_t{kHuge - 1});
  const bool advised = ::madvise(huge, kHuge, MADV_HUGEPAGE) == 0;
  std::memset(small, 7, kChunk);
  std::memset(huge, 7, kHuge);
  Run(fd, static_cast<uint8_t*>(small), "4k-pages");
  Run(fd, huge, advised ? "huge-page" : "huge(no-THP)");
  return 0;
}
