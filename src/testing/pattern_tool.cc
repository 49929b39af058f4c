// blksnap-pattern: writes, verifies and inspects the self-checking sector pattern
// (sector_pattern.h) on a regular file or a block device, for shell and Python integration
// tests.
//
//   blksnap-pattern write   PATH [--offset B] [--length B] --seq N [--direct] [--block B]
//   blksnap-pattern verify  PATH [--offset B] [--length B] --seq N [--direct] [--block B]
//   blksnap-pattern inspect PATH [--offset B] [--length B] [--direct] [--block B]
//
// Sizes are bytes with an optional K, M, G or T suffix (powers of 1024). --offset defaults to
// 0, --length to the rest of the device, --block (the I/O size) to 1M; offset and length must
// be multiples of 512. Each sector is stamped with its own number on the target (byte offset /
// 512), so a sector that lands elsewhere is detected. I/O goes through OpenFileDevice, so
// BLKSNAP_IO_ENGINE selects the engine; write ends with a flush.
//
// Exit status: 0 success (verify: every sector good); 1 verify found a bad sector (one line
// on stderr naming the first); 2 usage or I/O error.
//
// inspect prints one line per run of sectors in the same state, sector numbers inclusive:
//   0-1023 seq 1
//   1024-2047 zero
//   2048-2050 invalid
//   2051-2060 misplaced seq 3 (stamped 9000-9009)
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "blksnap/io.h"
#include "testing/sector_pattern.h"

namespace blksnap::testing {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitMismatch = 1;
constexpr int kExitError = 2;

void Usage() {
  std::fprintf(stderr,
               "usage: blksnap-pattern write|verify|inspect PATH [--offset BYTES] "
               "[--length BYTES] [--seq N] [--direct] [--block BYTES]\n"
               "  sizes take K/M/G/T suffixes (1024-based)\n");
}

// "4096", "64K", "1M", "2G", "1T" (an optional trailing "B" or "iB" is accepted).
std::optional<uint64_t> ParseSize(std::string_view text) {
  if (text.empty()) return std::nullopt;
  size_t digits = 0;
  uint64_t value = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') {
    const uint64_t d = static_cast<uint64_t>(text[digits] - '0');
    if (value > (UINT64_MAX - d) / 10) return std::nullopt;
    value = value * 10 + d;
    ++digits;
  }
  if (digits == 0) return std::nullopt;
  std::string_view suffix = text.substr(digits);
  if (suffix == "iB" || suffix == "B") return std::nullopt;  // unit without a multiplier
  unsigned shift = 0;
  if (!suffix.empty()) {
    switch (suffix[0]) {
      case 'k':
      case 'K':
        shift = 10;
        break;
      case 'm':
      case 'M':
        shift = 20;
        break;
      case 'g':
      case 'G':
        shift = 30;
        break;
      case 't':
      case 'T':
        shift = 40;
        break;
      default:
        return std::nullopt;
    }
    suffix.remove_prefix(1);
    if (!suffix.empty() && suffix != "B" && suffix != "iB") return std::nullopt;
  }
  if (shift && value > (UINT64_MAX >> shift)) return std::nullopt;
  return value << shift;
}

struct Args {
  std::string command;
  std::string path;
  uint64_t offset = 0;
  std::optional<uint64_t> length;
  std::optional<uint64_t> seq;
  uint64_t block = 1 << 20;
  bool direct = false;
};

std::optional<Args> ParseArgs(int argc, char** argv) {
  if (argc < 3) return std::nullopt;
  Args args;
  args.command = argv[1];
  args.path = argv[2];
  for (int i = 3; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--direct") {
      args.direct = true;
      continue;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "blksnap-pattern: %s needs a value\n", argv[i]);
      return std::nullopt;
    }
    const std::optional<uint64_t> value = ParseSize(argv[i + 1]);
    if (!value) {
      std::fprintf(stderr, "blksnap-pattern: bad value for %s: %s\n", argv[i], argv[i + 1]);
      return std::nullopt;
    }
    ++i;
    if (arg == "--offset") {
      args.offset = *value;
    } else if (arg == "--length") {
      args.length = *value;
    } else if (arg == "--seq") {
      args.seq = *value;
    } else if (arg == "--block") {
      args.block = *value;
    } else {
      std::fprintf(stderr, "blksnap-pattern: unknown option %s\n", argv[i - 1]);
      return std::nullopt;
    }
  }
  if (args.command != "write" && args.command != "verify" && args.command != "inspect") {
    std::fprintf(stderr, "blksnap-pattern: unknown command %s\n", args.command.c_str());
    return std::nullopt;
  }
  if (args.command != "inspect" && !args.seq) {
    std::fprintf(stderr, "blksnap-pattern: %s needs --seq\n", args.command.c_str());
    return std::nullopt;
  }
  if (args.block == 0 || args.block % kSectorSize != 0 || args.offset % kSectorSize != 0 ||
      (args.length && *args.length % kSectorSize != 0)) {
    std::fprintf(stderr, "blksnap-pattern: offset, length and block must be multiples of 512\n");
    return std::nullopt;
  }
  return args;
}

struct FreeDeleter {
  void operator()(uint8_t* p) const { std::free(p); }
};

int Fail(const Status& status) {
  std::fprintf(stderr, "blksnap-pattern: %s\n", status.ToString().c_str());
  return kExitError;
}

// Describes one run of sectors in the same state for inspect.
struct Run {
  std::string kind;   // "seq", "zero", "invalid", "misplaced"
  uint64_t seq = 0;   // seq and misplaced
  int64_t shift = 0;  // misplaced: stamped sector - actual sector
  uint64_t first = 0;
  uint64_t last = 0;

  bool Extends(const Run& next) const {
    return kind == next.kind && seq == next.seq && shift == next.shift && last + 1 == next.first;
  }
  void Print() const {
    if (kind == "seq") {
      std::printf("%llu-%llu seq %llu\n", static_cast<unsigned long long>(first),
                  static_cast<unsigned long long>(last), static_cast<unsigned long long>(seq));
    } else if (kind == "misplaced") {
      std::printf("%llu-%llu misplaced seq %llu (stamped %llu-%llu)\n",
                  static_cast<unsigned long long>(first), static_cast<unsigned long long>(last),
                  static_cast<unsigned long long>(seq),
                  static_cast<unsigned long long>(first + shift),
                  static_cast<unsigned long long>(last + shift));
    } else {
      std::printf("%llu-%llu %s\n", static_cast<unsigned long long>(first),
                  static_cast<unsigned long long>(last), kind.c_str());
    }
  }
};

int Main(int argc, char** argv) {
  const std::optional<Args> parsed = ParseArgs(argc, argv);
  if (!parsed) {
    Usage();
    return kExitError;
  }
  const Args& args = *parsed;
  FileOpenOptions options;
  options.direct = args.direct;
  options.read_only = args.command != "write";
  Result<std::shared_ptr<BlockDevice>> opened = OpenFileDevice(args.path, options);
  if (!opened.ok()) return Fail(opened.status());
  BlockDevice& dev = **opened;
  if (args.offset > dev.size()) {
    return Fail(Status::Error(EINVAL, "offset beyond the end of " + args.path));
  }
  const uint64_t length = args.length.value_or(dev.size() - args.offset);
  if (Status range = CheckRange(dev, args.offset, length); !range.ok()) return Fail(range);

  const size_t block =
      static_cast<size_t>(std::min<uint64_t>(args.block, std::max<uint64_t>(length, kSectorSize)));
  std::unique_ptr<uint8_t, FreeDeleter> memory(
      static_cast<uint8_t*>(std::aligned_alloc(4096, (block + 4095) / 4096 * 4096)));
  if (!memory) return Fail(Status::Error(ENOMEM, "buffer"));

  std::optional<Run> run;
  for (uint64_t done = 0; done < length;) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(block, length - done));
    const std::span<uint8_t> buf(memory.get(), n);
    const uint64_t pos = args.offset + done;
    const uint64_t first_sector = pos / kSectorSize;
    if (args.command == "write") {
      StampSectors(buf, first_sector, *args.seq);
      if (Status s = dev.Write(pos, buf, 0); !s.ok()) return Fail(s);
    } else {
      if (Status s = dev.Read(pos, buf); !s.ok()) return Fail(s);
      if (args.command == "verify") {
        if (Status s = VerifySectors(buf, first_sector, *args.seq); !s.ok()) {
          std::fprintf(stderr, "blksnap-pattern: verify %s: %s\n", args.path.c_str(),
                       std::string(s.message()).c_str());
          return kExitMismatch;
        }
      } else {
        for (size_t off = 0; off < n; off += kSectorSize) {
          const uint64_t sector = first_sector + off / kSectorSize;
          const SectorInfo info = InspectSector(buf.subspan(off, kSectorSize));
          Run cur;
          cur.first = cur.last = sector;
          if (info.zero) {
            cur.kind = "zero";
          } else if (!info.valid) {
            cur.kind = "invalid";
          } else if (info.sector == sector) {
            cur.kind = "seq";
            cur.seq = info.sequence;
          } else {
            cur.kind = "misplaced";
            cur.seq = info.sequence;
            cur.shift = static_cast<int64_t>(info.sector - sector);
          }
          if (run && run->Extends(cur)) {
            run->last = sector;
          } else {
            if (run) run->Print();
            run = cur;
          }
        }
      }
    }
    done += n;
  }
  if (run) run->Print();
  if (args.command == "write") {
    if (Status s = dev.Flush(); !s.ok()) return Fail(s);
  }
  if (args.command == "verify") {
    std::printf("ok: %llu sectors from %llu hold seq %llu\n",
                static_cast<unsigned long long>(length / kSectorSize),
                static_cast<unsigned long long>(args.offset / kSectorSize),
                static_cast<unsigned long long>(*args.seq));
  }
  return kExitOk;
}

}  // namespace
}  // namespace blksnap::testing

int main(int argc, char** argv) { return blksnap::testing::Main(argc, argv); }
