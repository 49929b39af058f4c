// MappedFiles: the I/O seam for memory-mapped state files (the durable CBT maps), beside Env
// (env.h), which covers files read and written with system calls.
//
// A MappedFile is a whole file mapped shared and writable: stores into data() land in the page
// cache at once, so they outlive the process (a kill -9 loses nothing), and reach the disk at
// the latest at Sync() (msync + fsync). What a power loss keeps of stores after the last Sync()
// is undefined: any page may or may not have been written back.
//
// Two implementations:
//  - PosixMappedFiles(): open/ftruncate/mmap(MAP_SHARED); the boot id is the kernel's
//    (/proc/sys/kernel/random/boot_id), so a reader can tell a daemon restart from a reboot.
//  - MemoryMappedFiles: files in memory, for tests. Files outlive the MappedFile objects (another
//    Open of the same name sees the bytes, as after a kill -9); DropUnsynced() simulates a power
//    cut (each page falls back to its content at the last Sync(), or keeps the newer content,
//    as the kernel's write-back may have taken it); set_boot_id() simulates the reboot.
//    CutPowerAtSync(n) cuts the power at the moment of the n-th sync from now (that sync and all
//    later ones fail with EIO and persist nothing): the power-cut test at every sync point.
//
// Thread safety: MappedFiles methods may be called from any thread. A MappedFile's data() may be
// read and written from many threads (the caller orders its own stores); Sync() may run while
// others store (what they store meanwhile may or may not be included).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "blksnap/status.h"

namespace blksnap {

class MappedFile {
 public:
  virtual ~MappedFile() = default;  // unmaps; never syncs (that is Sync()'s job)
  virtual uint8_t* data() = 0;
  virtual uint64_t size() const = 0;
  // Everything stored into data() so far is durable when this returns OK.
  virtual Status Sync() = 0;
  // Only the pages covering [offset, offset + length) (msync of that range): what was stored
  // there so far is durable when this returns OK; other pages are not written.
  virtual Status SyncRange(uint64_t offset, uint64_t length) = 0;
};

class MappedFiles {
 public:
  virtual ~MappedFiles() = default;
  // Maps an existing file at its current size (which may be 0: data() is then null).
  // ENOENT if it does not exist.
  virtual Result<std::unique_ptr<MappedFile>> Open(const std::string& path) = 0;
  // Creates the file (or empties an existing one) at `size` zero bytes, makes its name durable
  // (fsync of the directory) and maps it. size > 0.
  virtual Result<std::unique_ptr<MappedFile>> Create(const std::string& path, uint64_t size) = 0;
  // ENOENT if it does not exist.
  virtual Status Remove(const std::string& path) = 0;
  // The identity of the running kernel boot; another value means the machine rebooted.
  virtual std::string BootId() = 0;
};

// The real thing; never null, shared by every caller.
std::shared_ptr<MappedFiles> PosixMappedFiles();
// The real thing, except that the boot id is the first line of the file at boot_id_path: a test
// simulates a reboot by changing it (blksnapd: BLKSNAP_TEST_BOOT_ID_FILE).
std::shared_ptr<MappedFiles> PosixMappedFiles(const std::string& boot_id_path);

class MemoryMappedFiles final : public MappedFiles {
 public:
  Result<std::unique_ptr<MappedFile>> Open(const std::string& path) override;
  Result<std::unique_ptr<MappedFile>> Create(const std::string& path, uint64_t size) override;
  Status Remove(const std::string& path) override;
  std::string BootId() override;

  // A power cut. Call while no MappedFile of these files is open. seed 0: every page falls back
  // to its content at the last Sync() (a file never synced disappears); otherwise each page
  // independently keeps its newer content or falls back, chosen by a generator seeded with seed.
  void DropUnsynced(uint64_t seed = 0);
  // The n-th Sync()/SyncRange() from now (n >= 1) and every later one fail with EIO and persist
  // nothing, as if the machine had died just before it; DropUnsynced() then applies. 0 disarms.
  void CutPowerAtSync(uint64_t n);
  bool power_cut() const;  // a cut armed by CutPowerAtSync has happened
  // The next n syncs fail with EIO and persist nothing; the power stays on (an I/O error).
  void FailNextSyncs(uint64_t n);
  void set_boot_id(std::string boot_id);
  // Test access to a file's current bytes (empty if absent), and a way to damage them.
  std::vector<uint8_t> Contents(const std::string& path);
  void SetContents(const std::string& path, std::vector<uint8_t> bytes);  // as if synced
  uint64_t syncs() const;  // Sync() calls so far, over all files

  MemoryMappedFiles();
  ~MemoryMappedFiles() override;

  struct State;  // src/io/mapped_file_memory.cc; shared with the files handed out

 private:
  std::shared_ptr<State> state_;
};

}  // namespace blksnap
