// ControlClient: drives a running blksnapd over its control socket without the CLI.
//
//   auto client = ControlClient::Connect("/run/blksnap/control.sock").value();
//   auto dev = client->Attach("/srv/vol0.img", {.name = "vol0"}).value();   // {"name", ...}
//   auto id = client->CreateSnapshot("/var/tmp", 8ull << 30, {"vol0"}).value();
//   client->Take(id).value();
//   client->Call("snapshot-info", {{"id", id}});  // any method of docs/control-protocol.md
//
// Results are the protocol's JSON result objects (docs/control-protocol.md lists their keys).
// Errors from the daemon come back as Status with the daemon's errno and message; transport
// failures as ECONNREFUSED/ENOENT (no daemon), EPIPE/ECONNRESET (daemon went away) or EPROTO.
//
// Thread safety: one ControlClient is one connection; calls on it are serialised by an internal
// mutex, so it may be shared, but a long wait-event blocks other calls on the same client. Use
// one client per thread for concurrency.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "blksnap/cbt.h"
#include "blksnap/status.h"

namespace blksnap {

struct ClientAttachOptions {
  std::string name;   // empty: the file's base name
  bool loop = false;  // also put a loop device on the FUSE front
};

class ControlClient {
 public:
  // Connects to the daemon's control socket. ENOENT/ECONNREFUSED with a message naming the path
  // and suggesting that blksnapd is not running.
  static Result<std::unique_ptr<ControlClient>> Connect(const std::string& socket_path);
  ~ControlClient();
  ControlClient(const ControlClient&) = delete;
  ControlClient& operator=(const ControlClient&) = delete;

  // One request/answer round trip: the "result" object, or the daemon's error.
  Result<nlohmann::json> Call(const std::string& method,
                              const nlohmann::json& params = nlohmann::json::object());

  // Typed conveniences over Call().
  Result<std::string> DaemonVersion();
  Result<nlohmann::json> Attach(const std::string& path, const ClientAttachOptions& options = {});
  Status Detach(const std::string& name, bool force = false);
  Result<CbtInfo> GetCbtInfo(const std::string& name);
  // The whole read map (fetched in pieces).
  Result<std::vector<uint8_t>> ReadCbtMap(const std::string& name);
  Result<std::vector<ByteExtent>> ChangedExtents(const std::string& name, uint8_t since,
                                                 const std::optional<std::string>& generation = {});
  Status MarkDirty(const std::string& name, const std::vector<ByteExtent>& ranges);
  // Returns the new snapshot's id.
  Result<std::string> CreateSnapshot(const std::string& storage_path, uint64_t limit,
                                     const std::vector<std::string>& devices, bool loop = false);
  Status AddDevice(const std::string& id, const std::string& device);
  Result<nlohmann::json> Take(const std::string& id);  // {"id", "took_ms", ...}
  Status Destroy(const std::string& id);
  // {"result": "ok"|"timeout", ...}; `after`: see wait-event in docs/control-protocol.md.
  Result<nlohmann::json> WaitEvent(const std::string& id, std::chrono::milliseconds timeout,
                                   std::optional<uint64_t> after = std::nullopt);

  const std::string& socket_path() const { return path_; }

 private:
  ControlClient(int fd, std::string path);
  Status SendLine(const std::string& line);
  Result<std::string> ReadLine();

  std::mutex mu_;
  int fd_;  // guarded by mu_ for I/O
  std::string path_;
  uint64_t next_id_ = 1;  // guarded by mu_
  std::string inbuf_;     // guarded by mu_: bytes read past the last line
};

}  // namespace blksnap
