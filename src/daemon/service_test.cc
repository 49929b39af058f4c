// Service tests: the daemon's typed operations over a real engine on small sparse files, with
// fake fronts (service_test_fixture.h). What the old service did only in integration tests is
// checked here: all-or-nothing requests, the records' life cycle, take without the service lock,
// events. Durable snapshots across a stop or a crash: service_durable_test.cc.
#include "daemon/service.h"

#include <gtest/gtest.h>

#include <future>

#include "daemon/service_test_fixture.h"

namespace blksnap::daemon {
namespace {

using namespace fixture;  // NOLINT: the fixture
namespace fs = std::filesystem;

TEST_F(ServiceTest, AttachListsTheDeviceWithItsFronts) {
  Start();
  auto v = service_->Attach({.path = MakeFile("vol.img"), .name = "vol"});
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(v->size, 64ull << 20);
  EXPECT_EQ(v->fronts.nbd, "fake://vol");
  EXPECT_FALSE(v->snapshot.has_value());
  auto list = service_->Devices();
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].name, "vol");
  EXPECT_TRUE(Exposed("vol"));
}

TEST_F(ServiceTest, AttachRefusesDuplicatesAndBadNamesAndChangesNothing) {
  Start();
  std::string path = MakeFile("vol.img");
  ASSERT_TRUE(service_->Attach({.path = path, .name = "vol"}).ok());
  auto same_path = service_->Attach({.path = path, .name = "other"});
  EXPECT_EQ(same_path.status().errnum(), EBUSY);
  auto same_name = service_->Attach({.path = MakeFile("b.img"), .name = "vol"});
  EXPECT_EQ(same_name.status().errnum(), EEXIST);
  for (const char* bad : {"x/y", "x@y", "..", "a b"}) {
    auto r = service_->Attach({.path = MakeFile("c.img"), .name = bad});
    EXPECT_EQ(r.status().errnum(), EINVAL) << bad;
    EXPECT_NE(r.status().ToString().find("invalid device name"), std::string::npos);
  }
  auto relative = service_->Attach({.path = "vol.img"});
  EXPECT_EQ(relative.status().errnum(), EINVAL);
  EXPECT_EQ(service_->Devices().size(), 1u);
  EXPECT_EQ(engine_->trackers().size(), 1u);
}

TEST_F(ServiceTest, AFrontFailureUndoesTheEngineAttach) {
  Start();
  log_->fail.insert("vol");
  std::string path = MakeFile("vol.img");
  auto r = service_->Attach({.path = path, .name = "vol"});
  EXPECT_EQ(r.status().errnum(), EIO);
  EXPECT_EQ(engine_->FindTracker("vol"), nullptr);
  EXPECT_TRUE(service_->Devices().empty());
  log_->fail.clear();
  EXPECT_TRUE(service_->Attach({.path = path, .name = "vol"}).ok());
}

TEST_F(ServiceTest, DetachRefusesBusyFrontsUnlessForced) {
  Start();
  ASSERT_TRUE(service_->Attach({.path = MakeFile("vol.img"), .name = "vol"}).ok());
  log_->busy.insert("vol");
  Status s = service_->Detach("vol", false);
  EXPECT_EQ(s.errnum(), EBUSY);
  EXPECT_NE(s.ToString().find("--force"), std::string::npos);
  EXPECT_TRUE(Exposed("vol"));
  EXPECT_OK(service_->Detach("vol", true));
  EXPECT_FALSE(Exposed("vol"));
  EXPECT_TRUE(service_->Devices().empty());
  EXPECT_EQ(service_->Detach("vol", false).errnum(), ENOENT);
}

TEST_F(ServiceTest, MarkDirtyChecksEveryRangeBeforeMarkingAny) {
  Start();
  ASSERT_TRUE(service_->Attach({.path = MakeFile("vol.img"), .name = "vol"}).ok());
  // After one take, a marked range reads as changed in snapshot 1 (the read map's newest).
  auto id = service_->CreateSnapshot({.storage = (dir_ / "storage").string(), .devices = {"vol"}});
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  ASSERT_TRUE(service_->Take(*id).ok());
  ASSERT_OK(service_->DestroySnapshot(*id, false));
  auto before = service_->CbtChanges("vol", 0, std::nullopt);
  ASSERT_TRUE(before.ok());
  EXPECT_TRUE(before->extents.empty());
  Status s = service_->MarkDirty("vol", {{0, 4096}, {64ull << 20, 4096}});
  EXPECT_EQ(s.errnum(), EINVAL);
  EXPECT_TRUE(service_->CbtChanges("vol", 0, std::nullopt)->extents.empty());
  EXPECT_OK(service_->MarkDirty("vol", {{0, 4096}}));
  EXPECT_EQ(service_->CbtChanges("vol", 0, std::nullopt)->extents.size(), 1u);
}

TEST_F(ServiceTest, ChangesSinceATakeThatDidNotHappenIsAnError) {
  Start();
  ASSERT_TRUE(service_->Attach({.path = MakeFile("vol.img"), .name = "vol"}).ok());
  auto info = service_->GetCbtInfo("vol");
  ASSERT_TRUE(info.ok());
  EXPECT_TRUE(service_->CbtChanges("vol", info->changes_number, std::nullopt).ok());
  auto future = service_->CbtChanges("vol", info->changes_number + 1, std::nullopt);
  EXPECT_EQ(future.status().errnum(), EINVAL);
  EXPECT_NE(future.status().ToString().find("after the last take"), std::string::npos);
}

TEST_F(ServiceTest, SnapshotTakeFreezesTheLoopFrontsAndExposesImages) {
  Start();
  ASSERT_TRUE(service_->Attach({.path = MakeFile("vol.img"), .name = "vol", .loop = true}).ok());
  auto id = service_->CreateSnapshot(
      {.storage = (dir_ / "storage").string(), .limit = 16ull << 20, .devices = {"vol"}});
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  auto take = service_->Take(*id);
  ASSERT_TRUE(take.ok()) << take.status().ToString();
  {
    std::lock_guard lock(log_->mu);
    ASSERT_EQ(log_->frozen.size(), 1u);
    EXPECT_GE(log_->frozen[0], 0x7000u);
    EXPECT_EQ(log_->thaws, 1);
  }
  const std::string image = "vol@" + id->ToString();
  EXPECT_TRUE(Exposed(image));
  auto view = service_->GetSnapshot(*id);
  ASSERT_TRUE(view.ok());
  EXPECT_EQ(view->state, SnapshotState::kTaken);
  ASSERT_EQ(view->devices.size(), 1u);
  ASSERT_TRUE(view->devices[0].image.has_value());
  EXPECT_EQ(view->devices[0].image->nbd, "fake://" + image);
  EXPECT_EQ(service_->Take(*id).status().errnum(), EALREADY);
  // The device is in the snapshot: detach is refused even with --force.
  EXPECT_EQ(service_->Detach("vol", true).errnum(), EBUSY);
  // An image in use is destroyed only with force.
  log_->busy.insert(image);
  Status busy = service_->DestroySnapshot(*id, false);
  EXPECT_EQ(busy.errnum(), EBUSY);
  EXPECT_NE(busy.ToString().find("--force"), std::string::npos);
  EXPECT_TRUE(Exposed(image));
  EXPECT_OK(service_->DestroySnapshot(*id, true));
  EXPECT_FALSE(Exposed(image));
  EXPECT_EQ(service_->GetSnapshot(*id).status().errnum(), ENOENT);
  EXPECT_OK(service_->Detach("vol", false));
}

TEST_F(ServiceTest, ATakeDoesNotHoldTheServiceWhileFreezing) {
  Start();
  ASSERT_TRUE(service_->Attach({.path = MakeFile("vol.img"), .name = "vol", .loop = true}).ok());
  auto id = service_->CreateSnapshot(
      {.storage = (dir_ / "storage").string(), .limit = 16ull << 20, .devices = {"vol"}});
  ASSERT_TRUE(id.ok());
  std::promise<void> entered, release;
  auto release_future = release.get_future().share();
  log_->on_freeze = [&entered, release_future] {
    entered.set_value();
    release_future.wait();
  };
  auto take = std::async(std::launch::async, [&] { return service_->Take(*id); });
  entered.get_future().wait();
  // While the freeze hangs, other requests are answered, and the snapshot is busy.
  EXPECT_EQ(service_->Devices().size(), 1u);
  EXPECT_EQ(service_->DestroySnapshot(*id, false).errnum(), EBUSY);
  EXPECT_EQ(service_->Take(*id).status().errnum(), EBUSY);
  release.set_value();
  auto result = take.get();
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_OK(service_->DestroySnapshot(*id, false));
}

TEST_F(ServiceTest, CreateSnapshotIsAllOrNothing) {
  Start();
  ASSERT_TRUE(service_->Attach({.path = MakeFile("a.img"), .name = "a"}).ok());
  auto twice =
      service_->CreateSnapshot({.storage = (dir_ / "storage").string(), .devices = {"a", "a"}});
  EXPECT_EQ(twice.status().errnum(), EINVAL);
  auto unknown =
      service_->CreateSnapshot({.storage = (dir_ / "storage").string(), .devices = {"a", "nope"}});
  EXPECT_EQ(unknown.status().errnum(), ENOENT);
  EXPECT_TRUE(service_->Snapshots().empty());
  EXPECT_TRUE(engine_->snapshots().empty());
  EXPECT_EQ(engine_->FindTracker("a")->snapshot(), nullptr);
}

TEST_F(ServiceTest, EventsReachEveryWaiterAndACursorlessWaitConsumes) {
  Start();
  ASSERT_TRUE(service_->Attach({.path = MakeFile("vol.img"), .name = "vol"}).ok());
  // A storage with 2 MiB of room: overwriting 8 MiB of written data overflows it.
  auto tracker = engine_->FindTracker("vol");
  ASSERT_OK(WritePattern(*tracker, 0, 8ull << 20, 1));
  auto id = service_->CreateSnapshot(
      {.storage = (dir_ / "storage").string(), .limit = 2ull << 20, .devices = {"vol"}});
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  ASSERT_TRUE(service_->Take(*id).ok());
  auto none = service_->WaitEvent(*id, 0, std::chrono::milliseconds(10), nullptr);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->timed_out);
  EXPECT_EQ(none->last_seq, 0u);
  (void)WritePattern(*tracker, 0, 8ull << 20, 2);
  auto a = service_->WaitEvent(*id, 0, std::chrono::seconds(10), nullptr);
  auto b = service_->WaitEvent(*id, 0, std::chrono::seconds(10), nullptr);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_FALSE(a->timed_out);
  EXPECT_EQ(a->record.seq, 1u);
  EXPECT_EQ(b->record.seq, 1u);
  // Without "after", each wait returns the next event once.
  auto first = service_->WaitEvent(*id, std::nullopt, std::chrono::seconds(10), nullptr);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->record.seq, 1u);
  auto last = service_->GetSnapshot(*id)->events;
  ASSERT_FALSE(last.empty());
  auto next = service_->WaitEvent(*id, std::nullopt, std::chrono::milliseconds(10), nullptr);
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(next->timed_out, last.size() == 1);
  if (!next->timed_out) {
    EXPECT_EQ(next->record.seq, 2u);
  }
  EXPECT_EQ(service_->GetSnapshot(*id)->state, SnapshotState::kCorrupted);
  // A corrupted snapshot cannot be saved by a larger storage.
  EXPECT_EQ(service_->SetStorageLimit(*id, 64ull << 20).status().errnum(), EINVAL);
  // A cancelled wait ends early.
  auto cancelled = service_->WaitEvent(*id, 1000, std::chrono::seconds(30), [] { return true; });
  EXPECT_EQ(cancelled.status().errnum(), ECANCELED);
  EXPECT_OK(service_->DestroySnapshot(*id, false));
}

TEST_F(ServiceTest, SetStorageLimitRaisesTheLimitOfALiveSnapshot) {
  Start();
  ASSERT_TRUE(service_->Attach({.path = MakeFile("vol.img"), .name = "vol"}).ok());
  auto id = service_->CreateSnapshot(
      {.storage = (dir_ / "storage").string(), .limit = 4ull << 20, .devices = {"vol"}});
  ASSERT_TRUE(id.ok());
  auto raised = service_->SetStorageLimit(*id, 32ull << 20);
  ASSERT_TRUE(raised.ok()) << raised.status().ToString();
  EXPECT_EQ(*raised, 32ull << 20);
  EXPECT_EQ(service_->GetSnapshot(*id)->storage.limit, 32ull << 20);
  EXPECT_EQ(service_->SetStorageLimit(*id, 8ull << 20).status().errnum(), EINVAL);
  EXPECT_EQ(service_->SetStorageLimit(Uuid::Random(), 8ull << 20).status().errnum(), ENOENT);
  EXPECT_OK(service_->DestroySnapshot(*id, false));
}

TEST_F(ServiceTest, RecordsFollowTheDevicesAndACrashedRunIsRestored) {
  Start();
  std::string path = MakeFile("vol.img");
  ASSERT_TRUE(service_->Attach({.path = path, .name = "vol"}).ok());
  const fs::path records = dir_ / "state" / "devices.json";
  ASSERT_TRUE(fs::exists(records));
  // A crash: the records stay. Simulate it by copying them over a clean stop's.
  fs::copy_file(records, dir_ / "saved.json");
  service_.reset();
  fs::copy_file(dir_ / "saved.json", records, fs::copy_options::overwrite_existing);
  Start();
  auto list = service_->Devices();
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].name, "vol");
  EXPECT_EQ(list[0].path, path);
  EXPECT_TRUE(list[0].restored);
  auto restart = service_->restart();
  ASSERT_TRUE(restart.has_value());
  EXPECT_FALSE(restart->clean_stop);
  EXPECT_TRUE(restart->failed.empty());
  EXPECT_FALSE(list[0].restored_after_clean_stop);
  // The last detach removes the records.
  EXPECT_OK(service_->Detach("vol", false));
  EXPECT_FALSE(fs::exists(records));
}

// A clean stop keeps the devices recorded ("clean_stop": true, ublk dev_ids dropped), and the
// next start attaches them again with new fronts as asked (no ublk Recover) and the CBT
// generation continued; detach is what forgets a device, the last one removes the file.
TEST_F(ServiceTest, ACleanStopKeepsTheDevicesAndTheNextStartReattachesThem) {
  Start(true, /*durable_cbt=*/true);
  std::string a = MakeFile("a.img"), b = MakeFile("b.img");
  ASSERT_TRUE(service_->Attach({.path = a, .name = "a", .loop = true}).ok());
  auto vb = service_->Attach({.path = b, .name = "b", .ublk = true});
  ASSERT_TRUE(vb.ok()) << vb.status().ToString();
  const int ublk_id = vb->fronts.ublk_dev_id;
  ASSERT_GE(ublk_id, 0);
  ASSERT_OK(service_->MarkDirty("a", {{0, 4096}}));
  const CbtInfo cbt_a = *service_->GetCbtInfo("a");
  const fs::path records = dir_ / "state" / "devices.json";
  EXPECT_EQ(ReadText(records).find("clean_stop"), std::string::npos) << "running: not clean";

  service_.reset();  // SIGTERM
  EXPECT_FALSE(Exposed("a") || Exposed("b")) << "the fronts are removed at a clean stop";
  ASSERT_TRUE(fs::exists(records)) << "a clean stop keeps the device records";
  RecordStore store(*Env::Default(), (dir_ / "state").string());
  auto kept = store.Load();
  ASSERT_TRUE(kept.ok() && kept->has_value());
  const Records& r = (*kept)->records;
  EXPECT_TRUE(r.clean_stop);
  EXPECT_TRUE(r.images.empty());
  ASSERT_EQ(r.devices.size(), 2u);
  EXPECT_EQ(r.devices[0].name, "a");
  EXPECT_TRUE(r.devices[0].loop);
  EXPECT_EQ(r.devices[1].name, "b");
  EXPECT_TRUE(r.devices[1].ublk);
  EXPECT_EQ(r.devices[1].ublk_dev_id, -1) << "its ublk device was removed";

  Start(true, /*durable_cbt=*/true);
  auto list = service_->Devices();
  ASSERT_EQ(list.size(), 2u);
  for (const auto& d : list) {
    EXPECT_TRUE(d.restored) << d.name;
    EXPECT_TRUE(d.restored_after_clean_stop) << d.name;
    EXPECT_TRUE(Exposed(d.name)) << d.name;
  }
  EXPECT_EQ(list[0].path, a);
  EXPECT_EQ(list[0].cbt.generation_id, cbt_a.generation_id);
  EXPECT_EQ(list[0].cbt.recovered_from, "clean-stop");
  EXPECT_EQ(list[0].cbt.changes_number, cbt_a.changes_number);
  {
    std::lock_guard lock(log_->mu);
    EXPECT_TRUE(log_->options["a"].loop);
    EXPECT_TRUE(log_->options["b"].ublk);
    EXPECT_EQ(log_->options["b"].ublk_recover_id, -1) << "a new ublk device, not ublk Recover";
  }
  EXPECT_GE(list[1].fronts.ublk_dev_id, 0);
  EXPECT_FALSE(list[1].fronts.ublk_recovered);
  auto restart = service_->restart();
  ASSERT_TRUE(restart.has_value());
  EXPECT_TRUE(restart->clean_stop);
  EXPECT_EQ(restart->ublk_recovered, 0u);
  EXPECT_TRUE(restart->failed.empty());
  EXPECT_TRUE(restart->notes.empty());
  // Running again: the records are a running daemon's (a crash now is a crash).
  EXPECT_EQ(ReadText(records).find("clean_stop"), std::string::npos);

  EXPECT_OK(service_->Detach("a", false));
  ASSERT_TRUE(fs::exists(records));
  service_.reset();
  Start(true, /*durable_cbt=*/true);
  list = service_->Devices();
  ASSERT_EQ(list.size(), 1u) << "a detached device stays forgotten";
  EXPECT_EQ(list[0].name, "b");
  EXPECT_OK(service_->Detach("b", false));
  EXPECT_FALSE(fs::exists(records)) << "the last detach removes the records";
  service_.reset();
  EXPECT_FALSE(fs::exists(records)) << "nothing to record at a clean stop";
  Start();
  EXPECT_FALSE(service_->restart().has_value());
}

// A record that failed to re-attach stays recorded through a clean stop (with the ublk dev_id a
// crash left, still waiting for its recovery) and is retried at the next start.
TEST_F(ServiceTest, AFailedRecordSurvivesACleanStop) {
  Start();
  std::string path = MakeFile("vol.img");
  auto v = service_->Attach({.path = path, .name = "vol", .ublk = true});
  ASSERT_TRUE(v.ok());
  const int ublk_id = v->fronts.ublk_dev_id;
  const fs::path records = dir_ / "state" / "devices.json";
  fs::copy_file(records, dir_ / "saved.json");
  service_.reset();
  fs::copy_file(dir_ / "saved.json", records, fs::copy_options::overwrite_existing);  // a crash
  const std::string moved = (dir_ / "moved.img").string();
  fs::rename(path, moved);
  Start();
  ASSERT_TRUE(service_->Devices().empty());
  service_.reset();
  fs::rename(moved, path);
  Start();
  auto list = service_->Devices();
  ASSERT_EQ(list.size(), 1u);
  {
    std::lock_guard lock(log_->mu);
    EXPECT_EQ(log_->options["vol"].ublk_recover_id, ublk_id) << "the crash's ublk device";
  }
  auto restart = service_->restart();
  ASSERT_TRUE(restart.has_value());
  EXPECT_TRUE(restart->clean_stop);
}

TEST_F(ServiceTest, ARecordThatCannotBeReattachedIsKeptAndCanBeDropped) {
  Start();
  std::string path = MakeFile("vol.img");
  ASSERT_TRUE(service_->Attach({.path = path, .name = "vol"}).ok());
  fs::copy_file(dir_ / "state" / "devices.json", dir_ / "saved.json");
  service_.reset();
  fs::copy_file(dir_ / "saved.json", dir_ / "state" / "devices.json",
                fs::copy_options::overwrite_existing);
  fs::remove(path);
  Start();
  EXPECT_TRUE(service_->Devices().empty());
  auto restart = service_->restart();
  ASSERT_TRUE(restart.has_value());
  ASSERT_EQ(restart->failed.size(), 1u);
  EXPECT_EQ(restart->failed[0].name, "vol");
  // The name stays taken until the record is dropped.
  EXPECT_EQ(service_->Attach({.path = MakeFile("new.img"), .name = "vol"}).status().errnum(),
            EEXIST);
  EXPECT_OK(service_->Detach("vol", false));
  EXPECT_TRUE(service_->Attach({.path = MakeFile("new2.img"), .name = "vol"}).ok());
}

TEST(ServiceMemoryEnvTest, AttachSnapshotAndRecordsWithoutADisk) {
  MemoryEnv env;
  env.AddDirectory("/mem");
  env.AddDirectory("/state");
  ASSERT_OK(env.WriteFileAtomic("/mem/disk", std::string(8 << 20, '\0')));
  Config config;
  config.env = &env;
  auto log = std::make_shared<FrontLog>();
  Service service(Engine::Create(config).value(), std::make_unique<FakeFronts>(log),
                  ServiceInfo{.state_dir = "/state", .control_path = "/c", .env = &env});
  service.Restore();
  auto v = service.Attach({.path = "/mem/disk", .name = "d"});
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(v->size, 8u << 20);
  EXPECT_TRUE(env.HasFile("/state/devices.json"));
  auto id = service.CreateSnapshot({.storage = "/mem", .limit = 4u << 20, .devices = {"d"}});
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  ASSERT_TRUE(service.Take(*id).ok());
  EXPECT_OK(service.DestroySnapshot(*id, false));
  EXPECT_EQ(service.Attach({.path = "/mem/none", .name = "n"}).status().errnum(), ENOENT);
}

TEST_F(ServiceTest, AStartWithoutRecordsIsNotARestart) {
  Start();
  EXPECT_FALSE(service_->restart().has_value());
}

}  // namespace
}  // namespace blksnap::daemon
