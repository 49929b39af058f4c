// Unit tests of the state file schema (records.h): round trip, the file blksnapd has always
// written, every kind of bad input loading without an exception, and RecordStore on MemoryEnv and
// FaultEnv (a failed save keeps the previous file; bad files are moved or copied to .bad).
#include "daemon/records.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <random>
#include <string>

namespace blksnap::daemon {
namespace {

Records Sample() {
  Records r;
  r.pid = 4242;
  r.devices.push_back({"vol0", "/dev/sdb", false, true, 3, 8ull << 30, 4096});
  r.devices.push_back({"img", "/srv/img.raw", true, false, -1, 1ull << 20, 512});
  r.images.push_back({"6f1c0a6e-8d7b-4a44-9c61-2f3a1b5c7d90", "vol0", 7, 8ull << 30, 4096});
  r.boot_id = "0f9e8d7c-6b5a-4938-a271-605f4e3d2c1b";
  r.snapshots.push_back(
      {.id = "6f1c0a6e-8d7b-4a44-9c61-2f3a1b5c7d90",
       .storage = "/var/tmp",
       .storage_file = "/var/tmp/blksnap-6f1c0a6e-8d7b-4a44-9c61-2f3a1b5c7d90.diff",
       .durability = SnapshotDurability::kCrash,
       .limit = 1ull << 30,
       .ublk = true,
       .devices = {"vol0", "img"}});
  return r;
}

ParsedRecords MustParse(std::string_view text) {
  auto parsed = ParseRecords(text);
  EXPECT_TRUE(parsed.ok()) << parsed.status().ToString();
  return parsed.ok() ? *parsed : ParsedRecords{};
}

TEST(RecordsTest, RoundTrip) {
  const Records r = Sample();
  const std::string text = SerializeRecords(r);
  EXPECT_EQ(text.back(), '\n');
  ParsedRecords parsed = MustParse(text);
  EXPECT_TRUE(parsed.problems.empty());
  EXPECT_EQ(parsed.records, r);
  EXPECT_EQ(SerializeRecords(Records{}), SerializeRecords(MustParse(SerializeRecords({})).records));
}

// The text the daemon's SaveRecordsLocked wrote (json dump(2): sorted keys) reads back, and
// SerializeRecords writes it byte for byte.
TEST(RecordsTest, ReadsWhatTheDaemonWrote) {
  const std::string text = R"({
  "devices": [
    {
      "logical_block_size": 512,
      "loop": true,
      "name": "d0",
      "path": "/tmp/x.img",
      "size": 67108864,
      "ublk": false,
      "ublk_dev_id": -1
    }
  ],
  "images": [
    {
      "device": "d0",
      "logical_block_size": 512,
      "size": 67108864,
      "snapshot": "0e5d2c1b-1111-4222-8333-944455556666",
      "ublk_dev_id": 2
    }
  ],
  "pid": 99,
  "version": 1
}
)";
  ParsedRecords parsed = MustParse(text);
  EXPECT_TRUE(parsed.problems.empty());
  ASSERT_EQ(parsed.records.devices.size(), 1u);
  EXPECT_EQ(parsed.records.devices[0].path, "/tmp/x.img");
  EXPECT_TRUE(parsed.records.devices[0].loop);
  ASSERT_EQ(parsed.records.images.size(), 1u);
  EXPECT_EQ(parsed.records.images[0].ublk_dev_id, 2);
  EXPECT_EQ(parsed.records.pid, 99);
  EXPECT_EQ(SerializeRecords(parsed.records), text);
}

// A clean stop's records (Service::Shutdown): "clean_stop": true, no ublk dev_ids, no images.
// Without the field (every file before it, and a running daemon's records) it reads false.
TEST(RecordsTest, CleanStopRoundTripsAndDefaultsToFalse) {
  const std::string text = R"({
  "clean_stop": true,
  "devices": [
    {
      "logical_block_size": 4096,
      "loop": false,
      "name": "vol0",
      "path": "/dev/sdb",
      "size": 8589934592,
      "ublk": true,
      "ublk_dev_id": -1
    }
  ],
  "images": [],
  "pid": 7,
  "version": 1
}
)";
  ParsedRecords parsed = MustParse(text);
  EXPECT_TRUE(parsed.problems.empty());
  EXPECT_TRUE(parsed.records.clean_stop);
  ASSERT_EQ(parsed.records.devices.size(), 1u);
  EXPECT_TRUE(parsed.records.devices[0].ublk);
  EXPECT_EQ(parsed.records.devices[0].ublk_dev_id, -1);
  EXPECT_EQ(SerializeRecords(parsed.records), text);

  Records r = Sample();
  r.clean_stop = true;
  EXPECT_EQ(MustParse(SerializeRecords(r)).records, r);
  r.clean_stop = false;
  EXPECT_EQ(SerializeRecords(r).find("clean_stop"), std::string::npos);
  EXPECT_FALSE(MustParse(R"({"version":1,"devices":[]})").records.clean_stop);
  EXPECT_FALSE(MustParse(R"({"version":1,"clean_stop":false,"devices":[]})").records.clean_stop);
  // A bad value is a problem and reads as a crash's records.
  ParsedRecords bad = MustParse(R"({"version":1,"clean_stop":"yes","devices":[]})");
  EXPECT_FALSE(bad.records.clean_stop);
  ASSERT_EQ(bad.problems.size(), 1u);
}

// Durable snapshots (issue 15): the optional "snapshots" list and "boot_id", as the daemon writes
// them; a file without them (every file before) reads with none, and one without snapshots is
// written without the key, byte for byte as before.
TEST(RecordsTest, SnapshotsRoundTripAndAreOptional) {
  const std::string text = R"({
  "boot_id": "b00710ad-0000-4000-8000-000000000001",
  "clean_stop": true,
  "devices": [
    {
      "logical_block_size": 512,
      "loop": false,
      "name": "d0",
      "path": "/tmp/x.img",
      "size": 67108864,
      "ublk": false,
      "ublk_dev_id": -1
    }
  ],
  "images": [],
  "pid": 99,
  "snapshots": [
    {
      "devices": [
        "d0"
      ],
      "durability": "power",
      "id": "0e5d2c1b-1111-4222-8333-944455556666",
      "limit": 16777216,
      "loop": true,
      "storage": "/var/tmp",
      "storage_file": "/var/tmp/blksnap-0e5d2c1b-1111-4222-8333-944455556666.diff",
      "taken": true,
      "ublk": false
    }
  ],
  "version": 1
}
)";
  ParsedRecords parsed = MustParse(text);
  EXPECT_TRUE(parsed.problems.empty());
  EXPECT_EQ(parsed.records.boot_id, "b00710ad-0000-4000-8000-000000000001");
  ASSERT_EQ(parsed.records.snapshots.size(), 1u);
  const SnapshotRecord& snap = parsed.records.snapshots[0];
  EXPECT_EQ(snap.id, "0e5d2c1b-1111-4222-8333-944455556666");
  EXPECT_EQ(snap.storage, "/var/tmp");
  EXPECT_EQ(snap.durability, SnapshotDurability::kPower);
  EXPECT_EQ(snap.limit, 16ull << 20);
  EXPECT_TRUE(snap.loop);
  EXPECT_FALSE(snap.ublk);
  EXPECT_TRUE(snap.taken);
  EXPECT_EQ(snap.devices, std::vector<std::string>{"d0"});
  EXPECT_FALSE(parsed.records.empty());
  EXPECT_EQ(SerializeRecords(parsed.records), text);

  Records only_snapshots;
  only_snapshots.snapshots = parsed.records.snapshots;
  EXPECT_FALSE(only_snapshots.empty()) << "a recorded snapshot keeps the file";
  EXPECT_EQ(MustParse(SerializeRecords(only_snapshots)).records, only_snapshots);

  ParsedRecords old = MustParse(R"({"version":1,"devices":[]})");
  EXPECT_TRUE(old.records.snapshots.empty());
  EXPECT_TRUE(old.records.boot_id.empty());
  Records none = Sample();
  none.snapshots.clear();
  none.boot_id.clear();
  EXPECT_EQ(SerializeRecords(none).find("snapshots"), std::string::npos);
  EXPECT_EQ(SerializeRecords(none).find("boot_id"), std::string::npos);
  // Optional snapshot fields take their defaults.
  ParsedRecords minimal = MustParse(
      R"({"version":1,"devices":[],"snapshots":[{"id":"0e5d2c1b-1111-4222-8333-944455556666",)"
      R"("storage":"/s","storage_file":"/s/f","durability":"crash","devices":["a"]}]})");
  // A created snapshot may have no devices yet.
  ParsedRecords created = MustParse(
      R"({"version":1,"devices":[],"snapshots":[{"id":"0e5d2c1b-1111-4222-8333-944455556666",)"
      R"("storage":"/s","storage_file":"/s/f","durability":"crash","taken":false,"devices":[]}]})");
  ASSERT_EQ(created.records.snapshots.size(), 1u);
  EXPECT_FALSE(created.records.snapshots[0].taken);
  EXPECT_TRUE(created.records.snapshots[0].devices.empty());
  ASSERT_EQ(minimal.records.snapshots.size(), 1u);
  EXPECT_EQ(minimal.records.snapshots[0],
            (SnapshotRecord{.id = "0e5d2c1b-1111-4222-8333-944455556666",
                            .storage = "/s",
                            .storage_file = "/s/f",
                            .durability = SnapshotDurability::kCrash,
                            .devices = {"a"}}));
  // Several snapshots per device: the take time and the "taking" mark round-trip.
  Records chain;
  chain.snapshots = minimal.records.snapshots;
  chain.snapshots[0].taken = false;
  chain.snapshots[0].taking = true;
  chain.snapshots[0].taken_at = 1764556800123456789ull;
  const std::string chain_text = SerializeRecords(chain);
  EXPECT_NE(chain_text.find("\"taking\": true"), std::string::npos) << chain_text;
  EXPECT_EQ(MustParse(chain_text).records, chain);
}

// A crash's records of another boot are a power loss; a clean stop's never; unknown ids never.
TEST(RecordsTest, APowerLossIsACrashInAnotherBoot) {
  Records r;
  r.boot_id = "boot-1";
  EXPECT_FALSE(WrittenBeforeAPowerLoss(r, "boot-1")) << "a daemon crash";
  EXPECT_TRUE(WrittenBeforeAPowerLoss(r, "boot-2"));
  EXPECT_FALSE(WrittenBeforeAPowerLoss(r, "")) << "this boot unknown";
  r.clean_stop = true;
  EXPECT_FALSE(WrittenBeforeAPowerLoss(r, "boot-2")) << "a clean stop, then a reboot";
  r.clean_stop = false;
  r.boot_id.clear();
  EXPECT_FALSE(WrittenBeforeAPowerLoss(r, "boot-2")) << "records from before boot ids";
}

TEST(RecordsTest, OptionalFieldsTakeDefaults) {
  ParsedRecords p = MustParse(R"({"version":1,"devices":[{"name":"a","path":"/a","x":[1]}]})");
  ASSERT_EQ(p.records.devices.size(), 1u);
  EXPECT_EQ(p.records.devices[0], (DeviceRecord{"a", "/a"}));
  EXPECT_TRUE(p.problems.empty());
}

// Documents that are not records at all: an error naming what is wrong, never an exception.
TEST(RecordsTest, BadDocumentsAreErrors) {
  const char* cases[] = {
      R"({"version":"1","devices":[]})",
      R"({"version":2,"devices":[]})",
      R"({"version":1.0,"devices":[]})",
      R"({"version":-1,"devices":[]})",
      R"({"devices":[]})",
      R"({"version":1})",
      R"({"version":1,"devices":{}})",
      R"([{"version":1,"devices":[]}])",
      R"("devices")",
      R"({"version":1,"devices":[)",
      "",
      "\xff\xfe\x00\x01garbage\x80",
      R"({"version":1e400,"devices":[]})",
      R"({"version":1,"devices":[{"name":"a","path":"/a","size":1e400}]})",  // overflow
      R"({"version":1,"devices":["\xff"]})",
  };
  for (const char* text : cases) {
    auto parsed = ParseRecords(text);
    ASSERT_FALSE(parsed.ok()) << text;
    EXPECT_EQ(parsed.status().errnum(), EINVAL) << text;
    EXPECT_EQ(parsed.status().message().find('\n'), std::string_view::npos);
  }
  EXPECT_NE(ParseRecords(R"({"version":"1","devices":[]})").status().message().find("version"),
            std::string_view::npos);
}

// Bad entries are skipped and each named in problems; good ones survive.
TEST(RecordsTest, BadEntriesAreSkippedAndReported) {
  struct Case {
    const char* text;
    const char* problem;  // a substring of the single problem line
  };
  const Case cases[] = {
      {R"({"version":1,"devices":[5]})", "devices[0] is not an object"},
      {R"({"version":1,"devices":[{"name":5,"path":"/a"}]})", "name is not a string"},
      {R"({"version":1,"devices":[{"name":"a"}]})", "(\"a\"): path is missing"},
      {R"({"version":1,"devices":[{"name":"","path":"/a"}]})", "name is empty"},
      {R"({"version":1,"devices":[],"images":[7]})", "images[0] is not an object"},
      {R"({"version":1,"devices":[],"images":{}})", "images is not a list"},
      {R"({"version":1,"pid":"x","devices":[]})", "pid is not an integer"},
      {R"({"version":1,"pid":18446744073709551615,"devices":[]})", "pid"},
      {R"({"version":1,"clean_stop":1,"devices":[]})", "clean_stop is not true or false"},
      {R"({"version":1,"clean_stop":"true","devices":[]})", "clean_stop is not true or false"},
      {R"({"version":1,"clean_stop":null,"devices":[]})", "clean_stop is not true or false"},
      {R"({"version":1,"devices":[{"name":"a","path":"/a","size":-5}]})",
       "size is not an unsigned integer"},
      {R"({"version":1,"devices":[{"name":"a","path":"/a","size":1.5e300}]})",
       "size is not an unsigned integer"},
      {R"({"version":1,"devices":[{"name":"a","path":"/a","size":18446744073709551616}]})",
       "size is not an unsigned integer"},
      {R"({"version":1,"devices":[{"name":"a","path":"/a","ublk_dev_id":99999999999}]})",
       "ublk_dev_id is out of range"},
      {R"({"version":1,"devices":[{"name":"a","path":"/a","ublk_dev_id":-2}]})",
       "ublk_dev_id is out of range"},
      {R"({"version":1,"devices":[{"name":"a","path":"/a","ublk_dev_id":"3"}]})",
       "ublk_dev_id is not an integer"},
      {R"({"version":1,"devices":[{"name":"a","path":"/a","loop":1}]})", "loop is not true"},
      {R"({"version":1,"devices":[{"name":"a","path":"/a","logical_block_size":4294967808}]})",
       "logical_block_size is not a power of two"},
      {R"({"version":1,"devices":[{"name":"a","path":"/a","logical_block_size":1000}]})",
       "logical_block_size"},
      {R"({"version":1,"devices":[],"images":[{"snapshot":"s","device":"d"}]})",
       "ublk_dev_id is missing"},
      {R"({"version":1,"devices":[],"images":[{"snapshot":"s","device":"d","ublk_dev_id":-1}]})",
       "ublk_dev_id is out of range"},
      {R"({"version":1,"devices":[{"name":"a\nb","path":5}]})", "(\"a\\nb\")"},
      {R"({"version":1,"devices":[],"boot_id":5})", "boot_id is not a string"},
      {R"({"version":1,"devices":[],"snapshots":{}})", "snapshots is not a list"},
      {R"({"version":1,"devices":[],"snapshots":[3]})", "snapshots[0] is not an object"},
      {R"({"version":1,"devices":[],"snapshots":[{"storage":"/s","storage_file":"/s/f",)"
       R"("durability":"power","devices":["a"]}]})",
       "snapshots[0]: id is missing"},
      {R"({"version":1,"devices":[],"snapshots":[{"id":"nope","storage":"/s",)"
       R"("storage_file":"/s/f","durability":"power","devices":["a"]}]})",
       "(\"nope\"): id is not a UUID"},
      {R"({"version":1,"devices":[],"snapshots":[{"id":"0e5d2c1b-1111-4222-8333-944455556666",)"
       R"("storage":"/s","durability":"power","devices":["a"]}]})",
       "storage_file is missing"},
      {R"({"version":1,"devices":[],"snapshots":[{"id":"0e5d2c1b-1111-4222-8333-944455556666",)"
       R"("storage":"/s","storage_file":"","durability":"power","devices":["a"]}]})",
       "storage_file is empty"},
      {R"({"version":1,"devices":[],"snapshots":[{"id":"0e5d2c1b-1111-4222-8333-944455556666",)"
       R"("storage":"/s","storage_file":"/s/f","durability":"memory","devices":["a"]}]})",
       "durability is not crash or power"},
      {R"({"version":1,"devices":[],"snapshots":[{"id":"0e5d2c1b-1111-4222-8333-944455556666",)"
       R"("storage":"/s","storage_file":"/s/f","durability":"fast","devices":["a"]}]})",
       "durability is not crash or power"},
      {R"({"version":1,"devices":[],"snapshots":[{"id":"0e5d2c1b-1111-4222-8333-944455556666",)"
       R"("storage":"/s","storage_file":"/s/f","devices":["a"]}]})",
       "durability is missing"},
      {R"({"version":1,"devices":[],"snapshots":[{"id":"0e5d2c1b-1111-4222-8333-944455556666",)"
       R"("storage":"/s","storage_file":"/s/f","durability":"crash","taken":0,"devices":[]}]})",
       "taken is not true or false"},
      {R"({"version":1,"devices":[],"snapshots":[{"id":"0e5d2c1b-1111-4222-8333-944455556666",)"
       R"("storage":"/s","storage_file":"/s/f","durability":"crash","devices":["a",5]}]})",
       "devices holds something that is not a non-empty string"},
      {R"({"version":1,"devices":[],"snapshots":[{"id":"0e5d2c1b-1111-4222-8333-944455556666",)"
       R"("storage":"/s","storage_file":"/s/f","durability":"crash","devices":"a"}]})",
       "devices is not a list"},
      {R"({"version":1,"devices":[],"snapshots":[{"id":"0e5d2c1b-1111-4222-8333-944455556666",)"
       R"("storage":"/s","storage_file":"/s/f","durability":"crash","devices":["a"],"limit":-1}]})",
       "limit is not an unsigned integer"},
      {R"({"version":1,"devices":[],"snapshots":[{"id":"0e5d2c1b-1111-4222-8333-944455556666",)"
       R"("storage":"/s","storage_file":"/s/f","durability":"crash","devices":["a"],"ublk":"y"}]})",
       "ublk is not true or false"},
  };
  const std::string good = R"({"name":"ok","path":"/ok"})";
  for (const auto& c : cases) {
    // The same bad entry followed by a good one (appended to the devices list): the good one is
    // kept. The cases hold no brackets inside strings.
    std::string text = c.text;
    size_t end = text.find("\"devices\":[") + 11;
    for (int depth = 1; depth > 0; ++end) depth += text[end] == '[' ? 1 : text[end] == ']' ? -1 : 0;
    --end;  // the closing bracket
    text.insert(end, text[end - 1] == '[' ? good : "," + good);
    auto parsed = ParseRecords(text);
    ASSERT_TRUE(parsed.ok()) << text << ": " << parsed.status().ToString();
    ASSERT_EQ(parsed->problems.size(), 1u) << text;
    EXPECT_NE(parsed->problems[0].find(c.problem), std::string::npos)
        << text << " -> " << parsed->problems[0];
    EXPECT_EQ(parsed->problems[0].find('\n'), std::string::npos);
    ASSERT_EQ(parsed->records.devices.size(), 1u) << text;
    EXPECT_EQ(parsed->records.devices[0].name, "ok");
  }
}

TEST(RecordsTest, RandomBytesNeverThrow) {
  std::mt19937 rng(12);
  const std::string base = SerializeRecords(Sample());
  for (int i = 0; i < 2000; ++i) {
    std::string text = base;
    for (int k = 0; k < 1 + i % 8; ++k) text[rng() % text.size()] = static_cast<char>(rng());
    if (i % 3 == 0) text.resize(rng() % text.size());
    auto parsed = ParseRecords(text);  // must not throw
    if (parsed.ok()) {
      auto again = ParseRecords(SerializeRecords(parsed->records));
      ASSERT_TRUE(again.ok());
      EXPECT_EQ(again->records, parsed->records);
    }
  }
}

TEST(RecordsTest, InvalidUtf8IsReplacedWhenWriting) {
  Records r;
  r.devices.push_back({"bad\xff", "/p\xc3"});
  auto parsed = ParseRecords(SerializeRecords(r));
  ASSERT_TRUE(parsed.ok());
  ASSERT_EQ(parsed->records.devices.size(), 1u);
  EXPECT_EQ(parsed->records.devices[0].name, "bad\xef\xbf\xbd");
}

class RecordStoreTest : public ::testing::Test {
 protected:
  void SetUp() override { mem_.AddDirectory("/state"); }
  MemoryEnv mem_;
};

TEST_F(RecordStoreTest, SaveLoadAndRemove) {
  RecordStore store(mem_, "/state");
  EXPECT_EQ(store.path(), "/state/devices.json");
  auto none = store.Load();
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  ASSERT_TRUE(store.Save(Sample()).ok());
  auto loaded = store.Load();
  ASSERT_TRUE(loaded.ok() && loaded->has_value());
  EXPECT_EQ((*loaded)->records, Sample());
  EXPECT_TRUE((*loaded)->problems.empty());
  ASSERT_TRUE(store.Save(Records{}).ok());
  EXPECT_FALSE(mem_.HasFile(store.path()));
  ASSERT_TRUE(store.Save(Records{}).ok());  // nothing to remove: fine
}

TEST_F(RecordStoreTest, FailedSaveKeepsThePreviousFile) {
  FaultEnv fault(&mem_);
  RecordStore store(fault, "/state");
  ASSERT_TRUE(store.Save(Sample()).ok());
  const std::string before = *mem_.ReadFile(store.path(), Env::kMaxReadFileSize);
  Records changed = Sample();
  changed.devices.pop_back();
  for (auto op :
       {FaultEnv::Op::kOpen, FaultEnv::Op::kWrite, FaultEnv::Op::kSync, FaultEnv::Op::kRename}) {
    fault.FailNth(op, 1, EIO);
    Status s = store.Save(changed);
    EXPECT_EQ(s.errnum(), EIO) << static_cast<int>(op);
    EXPECT_EQ(*mem_.ReadFile(store.path(), Env::kMaxReadFileSize), before);
  }
  fault.NoSpaceAfter(10);
  EXPECT_EQ(store.Save(changed).errnum(), ENOSPC);
  fault.FailNth(FaultEnv::Op::kRemove, 1, EROFS);
  EXPECT_EQ(store.Save(Records{}).errnum(), EROFS);
  EXPECT_EQ(*mem_.ReadFile(store.path(), Env::kMaxReadFileSize), before);
  fault.Reset();
  ASSERT_TRUE(store.Save(changed).ok());
  EXPECT_EQ((*store.Load())->records, changed);
}

TEST_F(RecordStoreTest, InvalidFileIsMovedAside) {
  RecordStore store(mem_, "/state");
  ASSERT_TRUE(mem_.WriteFileAtomic(store.path(), "{\"version\":1,\"dev").ok());
  auto loaded = store.Load();
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().errnum(), EINVAL);
  EXPECT_NE(loaded.status().message().find("moved to /state/devices.json.bad"),
            std::string_view::npos)
      << loaded.status().ToString();
  EXPECT_FALSE(mem_.HasFile(store.path()));
  EXPECT_EQ(*mem_.ReadFile(store.bad_path(), 100), "{\"version\":1,\"dev");
  auto again = store.Load();  // the next start begins afresh
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(again->has_value());
}

TEST_F(RecordStoreTest, TooLargeFileIsMovedAside) {
  RecordStore store(mem_, "/state");
  ASSERT_TRUE(mem_.WriteFileAtomic(store.path(), std::string(Env::kMaxReadFileSize + 1, ' ')).ok());
  auto loaded = store.Load();
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().errnum(), EFBIG);
  EXPECT_TRUE(mem_.HasFile(store.bad_path()));
}

TEST_F(RecordStoreTest, BadEntriesAreCopiedAside) {
  RecordStore store(mem_, "/state");
  const std::string text =
      R"({"version":1,"devices":[{"name":"a","path":"/a"},{"name":5}],"images":[7]})";
  ASSERT_TRUE(mem_.WriteFileAtomic(store.path(), text).ok());
  auto loaded = store.Load();
  ASSERT_TRUE(loaded.ok() && loaded->has_value()) << loaded.status().ToString();
  EXPECT_EQ((*loaded)->records.devices.size(), 1u);
  EXPECT_EQ((*loaded)->problems.size(), 2u);
  EXPECT_EQ(*mem_.ReadFile(store.bad_path(), 1000), text);
  EXPECT_EQ(*mem_.ReadFile(store.path(), 1000), text);  // the original stays until the next Save
}

TEST_F(RecordStoreTest, RealFiles) {
  char tmpl[] = "/tmp/blksnap-records-test-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  RecordStore store(*Env::Default(), tmpl);
  ASSERT_TRUE(store.Save(Sample()).ok());
  EXPECT_EQ((*store.Load())->records, Sample());
  ASSERT_TRUE(store.Save(Records{}).ok());
  EXPECT_FALSE(store.Load()->has_value());
  ::rmdir(tmpl);
}

}  // namespace
}  // namespace blksnap::daemon
