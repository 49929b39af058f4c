// Helpers for the NBD unit tests: a HandshakeHost over a map of exports and a byte builder
// for client messages, and socket helpers for tests against a running Server.
#pragma once

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "nbd/handshake.h"
#include "nbd/protocol.h"

namespace blksnap::nbd::test {

// A CBT read map held in memory (blksnap:cbt context tests).
class FixedCbt : public CbtSource {
 public:
  explicit FixedCbt(std::vector<uint8_t> map, uint32_t block_size = 65536)
      : map_(std::move(map)), block_size_(block_size) {}
  CbtInfo cbt_info() const override {
    CbtInfo i;
    i.block_size = block_size_;
    i.block_count = map_.size();
    return i;
  }
  Status ReadCbtMap(uint64_t first, std::span<uint8_t> out) const override {
    if (first + out.size() > map_.size()) return Status::Error(EINVAL, "past end");
    std::copy_n(map_.begin() + first, out.size(), out.begin());
    return Status::Ok();
  }

 private:
  std::vector<uint8_t> map_;
  uint32_t block_size_;
};

class MapHost : public HandshakeHost {
 public:
  void Add(const std::string& name, std::shared_ptr<BlockDevice> dev, ExportOptions o = {}) {
    auto e = std::make_shared<ExportEntry>();
    e->name = name;
    e->device = std::move(dev);
    e->options = std::move(o);
    exports_[name] = e;
  }
  std::shared_ptr<ExportEntry> FindExport(std::string_view name) override {
    auto it = exports_.find(std::string(name));
    return it == exports_.end() ? nullptr : it->second;
  }
  std::vector<std::shared_ptr<ExportEntry>> ListExports() override {
    std::vector<std::shared_ptr<ExportEntry>> v;
    for (auto& [n, e] : exports_) v.push_back(e);
    return v;
  }
  TlsContext* tls() override { return nullptr; }
  bool tls_forced() override { return forced_; }
  bool forced_ = false;

 private:
  std::map<std::string, std::shared_ptr<ExportEntry>> exports_;
};

// Client-side message builder.
class ClientBytes {
 public:
  ClientBytes& Flags(uint32_t f) {
    w_.U32(f);
    return *this;
  }
  ClientBytes& Option(uint32_t opt, const std::vector<uint8_t>& data = {}) {
    w_.U64(kIHaveOpt);
    w_.U32(opt);
    w_.U32(static_cast<uint32_t>(data.size()));
    w_.bytes().insert(w_.bytes().end(), data.begin(), data.end());
    return *this;
  }
  ClientBytes& Request(uint16_t type, uint64_t cookie, uint64_t offset, uint32_t length,
                       uint16_t flags = 0) {
    w_.U32(kRequestMagic);
    w_.U16(flags);
    w_.U16(type);
    w_.U64(cookie);
    w_.U64(offset);
    w_.U32(length);
    return *this;
  }
  ClientBytes& Raw(const std::vector<uint8_t>& b) {
    w_.bytes().insert(w_.bytes().end(), b.begin(), b.end());
    return *this;
  }
  std::vector<uint8_t>& bytes() { return w_.bytes(); }

  // Payload of NBD_OPT_INFO / NBD_OPT_GO.
  static std::vector<uint8_t> InfoGo(const std::string& name, std::vector<uint16_t> infos = {}) {
    WireWriter w;
    w.U32(static_cast<uint32_t>(name.size()));
    w.Bytes(name);
    w.U16(static_cast<uint16_t>(infos.size()));
    for (uint16_t i : infos) w.U16(i);
    return w.bytes();
  }
  // Payload of NBD_OPT_LIST/SET_META_CONTEXT.
  static std::vector<uint8_t> Meta(const std::string& name, std::vector<std::string> queries) {
    WireWriter w;
    w.U32(static_cast<uint32_t>(name.size()));
    w.Bytes(name);
    w.U32(static_cast<uint32_t>(queries.size()));
    for (auto& q : queries) {
      w.U32(static_cast<uint32_t>(q.size()));
      w.Bytes(q);
    }
    return w.bytes();
  }

 private:
  WireWriter w_;
};

// One option reply parsed from server output.
struct OptReply {
  uint32_t option = 0;
  uint32_t type = 0;
  std::vector<uint8_t> data;
};

// Parses the server's greeting (18 bytes) and all option replies that follow; stops at the
// first byte that is not an option reply (e.g. the transmission phase) and reports its offset.
inline std::vector<OptReply> ParseOptReplies(const std::vector<uint8_t>& out, size_t* end) {
  std::vector<OptReply> replies;
  size_t pos = 18;
  while (pos + 20 <= out.size() && GetBe64(out.data() + pos) == kOptReplyMagic) {
    OptReply r;
    r.option = GetBe32(out.data() + pos + 8);
    r.type = GetBe32(out.data() + pos + 12);
    uint32_t len = GetBe32(out.data() + pos + 16);
    if (pos + 20 + len > out.size()) break;
    r.data.assign(out.begin() + pos + 20, out.begin() + pos + 20 + len);
    replies.push_back(std::move(r));
    pos += 20 + len;
  }
  if (end) *end = pos;
  return replies;
}

// --- Against a running Server over its Unix socket ---

inline std::string TempSocket() {
  static int n = 0;
  return "/tmp/blksnap-nbd-unit-" + std::to_string(getpid()) + "-" + std::to_string(n++) + ".sock";
}

inline int ConnectUnix(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

inline bool ReadAll(int fd, size_t n, std::vector<uint8_t>* out) {
  out->resize(n);
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, out->data() + got, n - got);
    if (r <= 0) return false;
    got += r;
  }
  return true;
}

// Runs a GO handshake for `name` and consumes the replies up to the final ACK.
inline bool Go(int fd, const std::string& name) {
  ClientBytes c;
  c.Flags(kClientFlagFixedNewstyle).Option(kOptGo, ClientBytes::InfoGo(name));
  std::vector<uint8_t> b;
  if (!ReadAll(fd, 18, &b)) return false;
  if (write(fd, c.bytes().data(), c.bytes().size()) != static_cast<ssize_t>(c.bytes().size())) {
    return false;
  }
  for (;;) {
    if (!ReadAll(fd, 20, &b)) return false;
    const uint32_t type = GetBe32(b.data() + 12);
    const uint32_t len = GetBe32(b.data() + 16);
    std::vector<uint8_t> payload;
    if (len && !ReadAll(fd, len, &payload)) return false;
    if (type == kRepAck) return true;
    if (type != kRepInfo) return false;
  }
}

inline bool WaitFor(const std::function<bool()>& pred) {
  for (int i = 0; i < 500; ++i) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return pred();
}

}  // namespace blksnap::nbd::test
