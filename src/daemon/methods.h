// Methods: the control protocol's method table (docs/control-protocol.md) over the Service.
//
// Each entry owns its parameter parsing (protocol errors are EINVAL naming the parameter) and
// the JSON encoding of its result; the Service below it is typed and knows no JSON. Untrusted
// input: HandleRequest never throws, whatever `params` holds (fuzz/methods_fuzzer.cc).
#pragma once

#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "blksnap/status.h"
#include "daemon/service.h"

namespace blksnap::daemon {

// Runs one request. `cancelled` tells a long wait that its client went away.
Result<nlohmann::json> HandleRequest(Service& service, const std::string& method,
                                     const nlohmann::json& params,
                                     const std::function<bool()>& cancelled);

// Every method name, in table order (for tests and docs).
std::vector<std::string_view> MethodNames();

}  // namespace blksnap::daemon
