// ControlClient: a blocking Unix-socket client of the control protocol.
//
// One connection per object. Call() writes one request line, then reads lines until the one
// answering its id (the daemon answers in order, so it is the next line). The mutex mu_ keeps
// concurrent callers from interleaving their lines. Answers larger than kMaxResponseBytes are
// refused (EMSGSIZE) and the connection is considered broken.
#include "blksnap/control_client.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include "control/protocol.h"

namespace blksnap {

using nlohmann::json;

ControlClient::ControlClient(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}

ControlClient::~ControlClient() {
  if (fd_ >= 0) ::close(fd_);
}

Result<std::unique_ptr<ControlClient>> ControlClient::Connect(const std::string& socket_path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof(addr.sun_path)) {
    return Status::Error(ENAMETOOLONG, "control socket path too long: " + socket_path);
  }
  std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.size() + 1);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::FromErrno("socket");
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    int err = errno;
    ::close(fd);
    return Status::Error(err, "cannot connect to blksnapd at " + socket_path + ": " +
                                  std::strerror(err) + " (is blksnapd running?)");
  }
  return std::unique_ptr<ControlClient>(new ControlClient(fd, socket_path));
}

Status ControlClient::SendLine(const std::string& line) {
  size_t done = 0;
  while (done < line.size()) {
    ssize_t n = ::send(fd_, line.data() + done, line.size() - done, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::Error(errno, std::string("sending to blksnapd: ") + std::strerror(errno));
    }
    done += static_cast<size_t>(n);
  }
  return Status::Ok();
}

Result<std::string> ControlClient::ReadLine() {
  for (;;) {
    size_t nl = inbuf_.find('\n');
    if (nl != std::string::npos) {
      std::string line = inbuf_.substr(0, nl);
      inbuf_.erase(0, nl + 1);
      return line;
    }
    if (inbuf_.size() > control::kMaxResponseBytes) {
      return Status::Error(EMSGSIZE, "answer from blksnapd too large");
    }
    char buf[65536];
    ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::Error(errno, std::string("reading from blksnapd: ") + std::strerror(errno));
    }
    if (n == 0) return Status::Error(ECONNRESET, "blksnapd closed the connection");
    inbuf_.append(buf, static_cast<size_t>(n));
  }
}

Result<json> ControlClient::Call(const std::string& method, const json& params) {
  std::lock_guard lock(mu_);
  uint64_t id = next_id_++;
  json request = {
      {"v", control::kProtocolVersion}, {"id", id}, {"method", method}, {"params", params}};
  std::string line = request.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
  if (line.size() > control::kMaxRequestBytes) {
    return Status::Error(EMSGSIZE, "request too large for the control protocol");
  }
  BLKSNAP_RETURN_IF_ERROR(SendLine(line));
  for (;;) {
    BLKSNAP_ASSIGN_OR_RETURN(std::string answer, ReadLine());
    json reply;
    try {
      reply = json::parse(answer);
    } catch (const json::exception& e) {
      return Status::Error(EPROTO, std::string("malformed answer from blksnapd: ") + e.what());
    }
    if (!reply.is_object()) return Status::Error(EPROTO, "malformed answer from blksnapd");
    // An answer without our id (e.g. an error before the daemon could read the id) is ours too.
    if (reply.contains("id") && reply["id"].is_number() && reply["id"].get<uint64_t>() != id) {
      continue;
    }
    if (reply.contains("error")) return control::StatusFromErrorObject(reply["error"]);
    if (!reply.contains("result")) return Status::Error(EPROTO, "answer without result");
    return std::move(reply["result"]);
  }
}

Result<std::string> ControlClient::DaemonVersion() {
  BLKSNAP_ASSIGN_OR_RETURN(json r, Call("version"));
  return r.value("version", std::string());
}

Result<json> ControlClient::Attach(const std::string& path, const ClientAttachOptions& options) {
  json params = {{"path", path}, {"loop", options.loop}};
  if (!options.name.empty()) params["name"] = options.name;
  return Call("attach", params);
}

Status ControlClient::Detach(const std::string& name, bool force) {
  return Call("detach", {{"name", name}, {"force", force}}).status();
}

Result<CbtInfo> ControlClient::GetCbtInfo(const std::string& name) {
  BLKSNAP_ASSIGN_OR_RETURN(json r, Call("cbt-info", {{"name", name}}));
  CbtInfo info;
  try {
    info.block_size = r.at("block_size").get<uint32_t>();
    info.block_count = r.at("block_count").get<uint64_t>();
    info.device_capacity = r.at("device_capacity").get<uint64_t>();
    auto gen = Uuid::Parse(r.at("generation_id").get<std::string>());
    if (!gen) return Status::Error(EPROTO, "bad generation id from blksnapd");
    info.generation_id = *gen;
    info.changes_number = r.at("changes_number").get<uint8_t>();
  } catch (const json::exception& e) {
    return Status::Error(EPROTO, std::string("malformed cbt-info answer: ") + e.what());
  }
  return info;
}

Result<std::vector<uint8_t>> ControlClient::ReadCbtMap(const std::string& name) {
  BLKSNAP_ASSIGN_OR_RETURN(CbtInfo info, GetCbtInfo(name));
  std::vector<uint8_t> map;
  map.reserve(info.block_count);
  while (map.size() < info.block_count) {
    uint64_t count = std::min<uint64_t>(control::kMaxCbtReadBytes, info.block_count - map.size());
    BLKSNAP_ASSIGN_OR_RETURN(
        json r, Call("cbt-read", {{"name", name}, {"offset", map.size()}, {"count", count}}));
    if (!r.contains("data") || !r["data"].is_string()) {
      return Status::Error(EPROTO, "malformed cbt-read answer");
    }
    BLKSNAP_ASSIGN_OR_RETURN(std::string bytes,
                             control::Base64Decode(r["data"].get<std::string>()));
    if (bytes.empty()) return Status::Error(EPROTO, "cbt-read returned no data");
    map.insert(map.end(), bytes.begin(), bytes.end());
  }
  return map;
}

Result<std::vector<ByteExtent>> ControlClient::ChangedExtents(
    const std::string& name, uint8_t since, const std::optional<std::string>& generation) {
  json params = {{"name", name}, {"since", since}};
  if (generation) params["generation"] = *generation;
  BLKSNAP_ASSIGN_OR_RETURN(json r, Call("cbt-changes", params));
  std::vector<ByteExtent> out;
  try {
    for (const auto& e : r.at("extents"))
      out.push_back({e.at(0).get<uint64_t>(), e.at(1).get<uint64_t>()});
  } catch (const json::exception& e) {
    return Status::Error(EPROTO, std::string("malformed cbt-changes answer: ") + e.what());
  }
  return out;
}

Status ControlClient::MarkDirty(const std::string& name, const std::vector<ByteExtent>& ranges) {
  // Validate everything in one request when it fits, so a bad range changes nothing.
  size_t i = 0;
  do {
    json list = json::array();
    for (size_t n = 0; i < ranges.size() && n < control::kMaxRangesPerRequest; ++i, ++n) {
      list.push_back({ranges[i].offset, ranges[i].length});
    }
    BLKSNAP_RETURN_IF_ERROR(Call("cbt-mark-dirty", {{"name", name}, {"ranges", list}}).status());
  } while (i < ranges.size());
  return Status::Ok();
}

Result<std::string> ControlClient::CreateSnapshot(const std::string& storage_path, uint64_t limit,
                                                  const std::vector<std::string>& devices,
                                                  bool loop) {
  BLKSNAP_ASSIGN_OR_RETURN(
      json r,
      Call("snapshot-create",
           {{"storage", storage_path}, {"limit", limit}, {"devices", devices}, {"loop", loop}}));
  return r.value("id", std::string());
}

Status ControlClient::AddDevice(const std::string& id, const std::string& device) {
  return Call("snapshot-add", {{"id", id}, {"device", device}}).status();
}

Result<json> ControlClient::Take(const std::string& id) {
  return Call("snapshot-take", {{"id", id}});
}

Status ControlClient::Destroy(const std::string& id) {
  return Call("snapshot-destroy", {{"id", id}}).status();
}

Result<json> ControlClient::WaitEvent(const std::string& id, std::chrono::milliseconds timeout,
                                      std::optional<uint64_t> after) {
  json params = {{"id", id}, {"timeout_ms", timeout.count()}};
  if (after) params["after"] = *after;
  return Call("snapshot-wait-event", params);
}

}  // namespace blksnap
