// Method-table tests: every method answers hostile parameters with an error and never throws,
// unknown methods are ENOSYS, and the encodings keep the wire contract's fields.
#include "daemon/methods.h"

#include <gtest/gtest.h>

#include "blksnap/engine.h"
#include "blksnap/env.h"
#include "daemon/no_fronts.h"

namespace blksnap::daemon {
namespace {

using nlohmann::json;

std::unique_ptr<Service> MakeService() {
  return std::make_unique<Service>(Engine::Create({}).value(), std::make_unique<NoFronts>(),
                                   ServiceInfo{});
}

TEST(MethodsTest, UnknownMethodAndNonObjectParams) {
  auto service = MakeService();
  EXPECT_EQ(HandleRequest(*service, "nope", json::object(), nullptr).status().errnum(), ENOSYS);
  EXPECT_EQ(HandleRequest(*service, "version", json::array(), nullptr).status().errnum(), EINVAL);
}

TEST(MethodsTest, HostileParametersNeverThrow) {
  auto service = MakeService();
  const std::vector<json> hostile = {
      json::object(),
      {{"name", 5}, {"path", 7}, {"id", true}, {"since", "x"}},
      {{"name", "x"}, {"ranges", 3}},
      {{"name", "x"}, {"ranges", {{1}, {"a", "b"}, {-1, 2}}}},
      {{"path", "/nonexistent"}, {"name", json::array()}},
      {{"storage", "/tmp"}, {"devices", "a"}},
      {{"storage", "/tmp"}, {"devices", {1, 2}}},
      {{"id", "01234567-89ab-cdef-0123-456789abcdef"}, {"timeout_ms", -1}},
      {{"id", "not-a-uuid"}, {"timeout_ms", 0}},
      {{"name", "x"}, {"offset", "1Q"}, {"count", 1e300}},
  };
  for (auto name : MethodNames()) {
    for (const auto& params : hostile) {
      EXPECT_NO_THROW({
        auto r = HandleRequest(*service, std::string(name), params, nullptr);
        (void)r;
      }) << name
         << " " << params.dump();
    }
  }
}

TEST(MethodsTest, VersionAndStatusKeepTheirFields) {
  auto service = MakeService();
  auto v = HandleRequest(*service, "version", json::object(), nullptr);
  ASSERT_TRUE(v.ok());
  for (const char* key : {"version", "protocol", "pid", "fronts"}) EXPECT_TRUE(v->contains(key));
  auto s = HandleRequest(*service, "status", json::object(), nullptr);
  ASSERT_TRUE(s.ok());
  for (const char* key :
       {"state_dir", "control", "nbd_unix", "nbd_tcp", "fuse_dir", "ublk", "frontend", "restart"}) {
    EXPECT_TRUE((*s)["daemon"].contains(key)) << key;
  }
  EXPECT_TRUE((*s)["daemon"]["restart"].is_null());
}

// The restart report and a restored device say which kind of restart it was: a clean stop's
// records (docs/control-protocol.md: "after": "clean-stop") or a crash's ("after": "crash").
TEST(MethodsTest, TheRestartReportSaysWhatEndedThePreviousRun) {
  for (bool clean : {true, false}) {
    MemoryEnv env;
    env.AddDirectory("/mem");
    env.AddDirectory("/state");
    ASSERT_TRUE(env.WriteFileAtomic("/mem/disk", std::string(1 << 20, '\0')).ok());
    Records records;
    records.clean_stop = clean;
    records.devices.push_back({.name = "d", .path = "/mem/disk"});
    ASSERT_TRUE(env.WriteFileAtomic("/state/devices.json", SerializeRecords(records)).ok());
    Config config;
    config.env = &env;
    Service service(Engine::Create(config).value(), std::make_unique<NoFronts>(),
                    ServiceInfo{.state_dir = "/state", .env = &env});
    service.Restore();
    auto s = HandleRequest(service, "status", json::object(), nullptr);
    ASSERT_TRUE(s.ok());
    const json& restart = (*s)["daemon"]["restart"];
    ASSERT_TRUE(restart.is_object()) << clean;
    EXPECT_EQ(restart["after"], clean ? "clean-stop" : "crash");
    EXPECT_EQ(restart["message"], clean ? kCleanRestartNote : kRestartNote);
    ASSERT_EQ((*s)["devices"].size(), 1u) << s->dump();
    EXPECT_EQ((*s)["devices"][0]["restored"], true);
    EXPECT_EQ((*s)["devices"][0]["restore_note"], clean ? kCleanRestartNote : kRestartNote);
  }
}

// snapshot-create's "durability" (memory|crash|power, default crash) reaches the engine; a bad
// word is EINVAL with nothing created; info and list show it with "recovered_from" (null: not
// brought back at start) and the storage's "file".
TEST(MethodsTest, SnapshotDurabilityIsAskedForAndShown) {
  MemoryEnv env;
  env.AddDirectory("/mem");
  ASSERT_TRUE(env.WriteFileAtomic("/mem/disk", std::string(1 << 20, '\0')).ok());
  Config config;
  config.env = &env;
  Service service(Engine::Create(config).value(), std::make_unique<NoFronts>(),
                  ServiceInfo{.env = &env});
  ASSERT_TRUE(
      HandleRequest(service, "attach", {{"path", "/mem/disk"}, {"name", "d"}}, nullptr).ok());
  const json create = {{"storage", "/mem"}, {"limit", 4 << 20}, {"devices", {"d"}}};
  for (const json& bad : {json("fast"), json("Power"), json(""), json(5), json(nullptr)}) {
    json params = create;
    params["durability"] = bad;
    auto r = HandleRequest(service, "snapshot-create", params, nullptr);
    ASSERT_FALSE(r.ok()) << bad.dump();
    EXPECT_EQ(r.status().errnum(), EINVAL) << bad.dump();
    EXPECT_NE(r.status().ToString().find("durability"), std::string::npos) << r.status().ToString();
    EXPECT_EQ(r.status().ToString().find('\n'), std::string::npos);
  }
  EXPECT_TRUE(
      (*HandleRequest(service, "snapshot-list", json::object(), nullptr))["snapshots"].empty())
      << "a bad durability creates nothing";
  for (const char* word : {"memory", "crash", "power", ""}) {
    json params = create;
    if (*word) params["durability"] = word;
    auto created = HandleRequest(service, "snapshot-create", params, nullptr);
    ASSERT_TRUE(created.ok()) << word << ": " << created.status().ToString();
    const json id = (*created)["id"];
    auto info = HandleRequest(service, "snapshot-info", {{"id", id}}, nullptr);
    ASSERT_TRUE(info.ok());
    EXPECT_EQ((*info)["durability"], *word ? word : "crash");
    EXPECT_TRUE((*info)["recovered_from"].is_null());
    EXPECT_TRUE((*info)["storage"].contains("file"));
    auto list = HandleRequest(service, "snapshot-list", json::object(), nullptr);
    ASSERT_TRUE(list.ok());
    ASSERT_EQ((*list)["snapshots"].size(), 1u);
    EXPECT_EQ((*list)["snapshots"][0]["durability"], *word ? word : "crash");
    EXPECT_TRUE((*list)["snapshots"][0].contains("recovered_from"));
    ASSERT_TRUE(HandleRequest(service, "snapshot-destroy", {{"id", id}}, nullptr).ok());
  }
}

// A recorded durable snapshot the start cannot bring back (here its storage file is gone) is in
// restart.snapshots_failed with its id and the error; the daemon starts all the same.
TEST(MethodsTest, TheRestartReportNamesSnapshotsThatDidNotComeBack) {
  MemoryEnv env;
  env.AddDirectory("/mem");
  env.AddDirectory("/state");
  ASSERT_TRUE(env.WriteFileAtomic("/mem/disk", std::string(1 << 20, '\0')).ok());
  Records records;
  records.clean_stop = true;
  records.devices.push_back({.name = "d", .path = "/mem/disk"});
  const std::string id = "0e5d2c1b-1111-4222-8333-944455556666";
  records.snapshots.push_back({.id = id,
                               .storage = "/mem",
                               .storage_file = "/mem/blksnap-" + id + ".diff",
                               .devices = {"d"}});
  ASSERT_TRUE(env.WriteFileAtomic("/state/devices.json", SerializeRecords(records)).ok());
  Config config;
  config.env = &env;
  Service service(Engine::Create(config).value(), std::make_unique<NoFronts>(),
                  ServiceInfo{.state_dir = "/state", .env = &env});
  service.Restore();
  auto s = HandleRequest(service, "status", json::object(), nullptr);
  ASSERT_TRUE(s.ok());
  const json& restart = (*s)["daemon"]["restart"];
  EXPECT_TRUE(restart["snapshots"].empty());
  ASSERT_EQ(restart["snapshots_failed"].size(), 1u) << restart.dump();
  EXPECT_EQ(restart["snapshots_failed"][0]["id"], id);
  EXPECT_EQ(restart["snapshots_failed"][0]["storage_file"], "/mem/blksnap-" + id + ".diff");
  EXPECT_FALSE(restart["snapshots_failed"][0]["error"].get<std::string>().empty());
  EXPECT_EQ((*s)["devices"].size(), 1u);
  EXPECT_TRUE((*s)["snapshots"].empty());
}

TEST(MethodsTest, MissingParametersNameTheParameter) {
  auto service = MakeService();
  auto r = HandleRequest(*service, "attach", json::object(), nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().errnum(), EINVAL);
  EXPECT_NE(r.status().ToString().find("path"), std::string::npos);
}

}  // namespace
}  // namespace blksnap::daemon
