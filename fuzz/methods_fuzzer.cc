// libFuzzer target: the control protocol's method table (src/daemon/methods.cc) behind a
// request line. Input bytes are one request, parsed like the control server does (depth check,
// no exceptions); its method and params go to HandleRequest over a real engine with no fronts
// and a memory Env, so attach and snapshot-create touch no real file. Any exception escaping is
// a crash (the table must answer every input with a Status).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "blksnap/engine.h"
#include "blksnap/env.h"
#include "control/protocol.h"
#include "daemon/methods.h"
#include "daemon/no_fronts.h"

namespace {

using namespace blksnap;
using namespace blksnap::daemon;

// A memory Env with one directory and one 1 MiB device file, so attach and snapshot-create
// reach their real paths without touching this machine's files.
Env* TheEnv() {
  auto* env = new MemoryEnv();
  env->AddDirectory("/mem");
  env->WriteFileAtomic("/mem/disk", std::string(1 << 20, '\0')).IgnoreError();
  return env;
}

Service& TheService() {
  static Env* env = TheEnv();
  static Service* service = [] {
    ServiceInfo info;
    info.env = env;
    Config config;
    config.env = env;  // difference storage in memory too
    auto* s = new Service(Engine::Create(config).value(), std::make_unique<NoFronts>(), info);
    return s;
  }();
  return *service;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view line(reinterpret_cast<const char*>(data), size);
  if (control::JsonDepth(line) > control::kMaxJsonDepth) return 0;
  auto request = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (request.is_discarded() || !request.is_object()) return 0;
  auto method = request.find("method");
  if (method == request.end() || !method->is_string()) return 0;
  nlohmann::json params = request.value("params", nlohmann::json::object());
  // Waits are bounded by the fuzzer's own budget: never let one block.
  auto result =
      HandleRequest(TheService(), method->get<std::string>(), params, [] { return true; });
  (void)result;
  return 0;
}
