// Unit tests of the backup manifest (manifest.h): round trips, a changed field (value, type,
// added, removed) fails the checksum, a checksum recomputed over a broken manifest still fails
// the field checks, unknown fields are tolerated, a newer version is ENOTSUP, deep nesting and
// oversize input are refused, and no input throws. Backup ids and RFC 3339 times.
#include "repository/manifest.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "repository/index.h"

namespace blksnap::repo {
namespace {

using nlohmann::json;
using std::chrono::system_clock;

Manifest Sample() {
  Manifest m;
  m.id = "20261130t183000z-0badcafe";
  m.device = "vol0";
  m.host = "backup-host";
  m.device_size = (uint64_t{8} << 30) + 4096;
  m.chunk_size = 4 << 20;
  m.time = "2026-11-30T18:30:00Z";
  m.full = false;
  m.cbt_generation = "6f1c0a6e-8d7b-4a44-9c61-2f3a1b5c7d90";
  m.snap_number = 7;
  m.parent = "20261129t183000z-12345678";
  m.index.bytes.fill(0xab);
  m.stats = {8ull << 30, 1ull << 28, 40, 90ull << 20, 24, 1900, 12.25};
  return m;
}

// The encoded sample as JSON, changed by `change`, with its checksum recomputed when `reseal`.
std::string Edited(const std::function<void(json&)>& change, bool reseal) {
  json object = json::parse(EncodeManifest(Sample()));
  change(object);
  if (reseal) {
    object.erase("checksum");
    const std::string text = object.dump();
    object["checksum"] = Sha256(text).Hex();
  }
  return object.dump(2);
}

void ExpectBad(std::string_view text, const char* what) {
  auto parsed = ParseManifest(text);
  ASSERT_FALSE(parsed.ok()) << what;
  EXPECT_EQ(parsed.status().errnum(), EBADMSG) << what << ": " << parsed.status().ToString();
}

TEST(ManifestTest, RoundTrips) {
  Manifest full = Sample();
  full.full = true;
  full.full_reason = "generation";
  full.parent = "";
  full.host = "";
  full.stats.seconds = 0.1;
  for (const Manifest& m : {Sample(), full}) {
    ASSERT_TRUE(CheckManifest(m).ok()) << CheckManifest(m).ToString();
    auto parsed = ParseManifest(EncodeManifest(m));
    ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
    EXPECT_EQ(*parsed, m);
    EXPECT_EQ(EncodeManifest(*parsed), EncodeManifest(m));
  }
}

TEST(ManifestTest, WhitespaceAndKeyOrderDoNotMatter) {
  const std::string compact = json::parse(EncodeManifest(Sample())).dump();
  EXPECT_TRUE(ParseManifest(compact).ok());
  EXPECT_TRUE(ParseManifest("\n  " + compact + "  \n").ok());
}

TEST(ManifestTest, AChangedFieldFailsTheChecksum) {
  const std::vector<std::pair<const char*, std::function<void(json&)>>> changes = {
      {"device", [](json& o) { o["device"] = "vol1"; }},
      {"snap_number", [](json& o) { o["snap_number"] = 8; }},
      {"index", [](json& o) { o["index"] = std::string(64, 'c'); }},
      {"stats.new_chunks", [](json& o) { o["stats"]["new_chunks"] = 41; }},
      {"stats.seconds", [](json& o) { o["stats"]["seconds"] = 12.5; }},
      {"full", [](json& o) { o["full"] = true; }},
      {"type of snap_number", [](json& o) { o["snap_number"] = "7"; }},
      {"removed host", [](json& o) { o.erase("host"); }},
      {"added field", [](json& o) { o["note"] = "x"; }},
      {"checksum", [](json& o) { o["checksum"] = std::string(64, '0'); }},
      {"checksum in capitals",
       [](json& o) {
         std::string sum = o["checksum"];
         for (char& c : sum) c = char(std::toupper(c));
         o["checksum"] = sum;
       }},
      {"no checksum", [](json& o) { o.erase("checksum"); }},
      {"checksum not a string", [](json& o) { o["checksum"] = 1; }},
  };
  for (const auto& [what, change] : changes) {
    const std::string text = Edited(change, /*reseal=*/false);
    ExpectBad(text, what);
    EXPECT_NE(ParseManifest(text).status().message().find("checksum"), std::string_view::npos)
        << what;
  }
}

TEST(ManifestTest, UnknownFieldsAreTolerated) {
  const std::string text = Edited(
      [](json& o) {
        o["encryption_note"] = {{"a", 1}, {"b", {1, 2, 3}}};
        o["stats"]["future_counter"] = 5;
      },
      /*reseal=*/true);
  auto parsed = ParseManifest(text);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(*parsed, Sample());
}

TEST(ManifestTest, MissingOrMistypedFieldsAreRefusedWithACorrectChecksum) {
  for (const char* key :
       {"id", "device", "host", "device_size", "chunk_size", "time", "full", "full_reason",
        "cbt_generation", "snap_number", "parent", "index", "stats", "version"}) {
    ExpectBad(Edited([key](json& o) { o.erase(key); }, true), key);
    ExpectBad(Edited([key](json& o) { o[key] = json::array(); }, true), key);
  }
  for (const char* key : {"logical_bytes", "read_bytes", "new_chunks", "new_bytes_stored",
                          "reused_chunks", "zero_chunks", "seconds"}) {
    ExpectBad(Edited([key](json& o) { o["stats"].erase(key); }, true), key);
    ExpectBad(Edited([key](json& o) { o["stats"][key] = "1"; }, true), key);
  }
  ExpectBad(Edited([](json& o) { o["snap_number"] = -1; }, true), "negative");
  ExpectBad(Edited([](json& o) { o["device_size"] = 1.5; }, true), "float");
  ExpectBad(Edited([](json& o) { o["full"] = 1; }, true), "full as a number");
  ExpectBad(Edited([](json& o) { o["stats"]["seconds"] = -1; }, true), "negative seconds");
  ExpectBad(Edited([](json& o) { o["stats"] = 3; }, true), "stats not an object");
}

TEST(ManifestTest, BrokenRulesAreRefusedWithACorrectChecksum) {
  const std::vector<std::pair<const char*, std::function<void(json&)>>> changes = {
      {"id", [](json& o) { o["id"] = "20261130T183000Z-0badcafe"; }},
      {"device", [](json& o) { o["device"] = ""; }},
      {"chunk_size", [](json& o) { o["chunk_size"] = 3 << 20; }},
      {"time", [](json& o) { o["time"] = "2026-02-30T18:30:00Z"; }},
      {"incremental with reason", [](json& o) { o["full_reason"] = "first"; }},
      {"incremental without parent", [](json& o) { o["parent"] = ""; }},
      {"full without reason", [](json& o) { o["full"] = true; }},
      {"parent", [](json& o) { o["parent"] = "yesterday"; }},
      {"zero index", [](json& o) { o["index"] = std::string(64, '0'); }},
      {"index in capitals", [](json& o) { o["index"] = std::string(64, 'A'); }},
      {"version 0", [](json& o) { o["version"] = 0; }},
  };
  for (const auto& [what, change] : changes) ExpectBad(Edited(change, true), what);
  Manifest m = Sample();
  m.parent = "";
  EXPECT_EQ(CheckManifest(m).errnum(), EINVAL);
  m = Sample();
  m.stats.seconds = std::numeric_limits<double>::quiet_NaN();
  EXPECT_EQ(CheckManifest(m).errnum(), EINVAL);
  ExpectBad(EncodeManifest(m), "NaN seconds");
}

TEST(ManifestTest, ANewerVersionIsNotSupported) {
  auto parsed = ParseManifest(Edited([](json& o) { o["version"] = 2; }, true));
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().errnum(), ENOTSUP);
}

TEST(ManifestTest, BadTextIsRefusedWithoutThrowing) {
  const std::string good = EncodeManifest(Sample());
  for (std::string_view text : {"", "{", "[]", "null", "1", "\"x\"", "{\"checksum\": \"\"}",
                                "{\"a\": \"\xff\"}", "{} {}"}) {
    ExpectBad(text, "bad text");
  }
  for (size_t n = 0; n < good.size(); n += 7) ExpectBad(good.substr(0, n), "truncated");
  ExpectBad(std::string(100000, '[') + std::string(100000, ']'), "deep arrays");
  // A deep value inside the object is refused before anything recursive (dump) sees it.
  const std::string deep = "{\"checksum\": \"00\", \"deep\": " + std::string(100000, '[') +
                           std::string(100000, ']') + "}";
  auto parsed = ParseManifest(deep);
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.status().message().find("nested too deeply"), std::string_view::npos)
      << parsed.status().ToString();
  std::string shallow = EncodeManifest(Sample());
  shallow.insert(1, "\"deep\": " + std::string(kMaxManifestDepth, '[') +
                        std::string(kMaxManifestDepth, ']') + ",");
  EXPECT_NE(ParseManifest(shallow).status().message().find("checksum mismatch"),
            std::string_view::npos)
      << ParseManifest(shallow).status().ToString();
  ExpectBad(std::string(kMaxManifestSize + 1, ' '), "oversize");
}

TEST(ManifestTest, BackupIdsSortByTime) {
  const auto t0 = std::chrono::sys_days(std::chrono::year(2026) / 11 / 30) +
                  std::chrono::hours(18) + std::chrono::minutes(30) +
                  std::chrono::milliseconds(999);
  const std::string id = NewBackupId(t0);
  EXPECT_EQ(id.substr(0, 17), "20261130t183000z-");
  // A valid object name component: [a-z0-9._-] (repository_format.h, ValidateObjectName).
  for (char c : id) EXPECT_TRUE(std::islower(c) || std::isdigit(c) || c == '-') << id;
  EXPECT_TRUE(IsValidBackupId(id)) << id;
  EXPECT_EQ(id.substr(17, 3), "3e7");           // 999 ms
  EXPECT_NE(NewBackupId(t0), NewBackupId(t0));  // 20 random bits: equal once in a million
  // Within one second, ids sort by the millisecond.
  EXPECT_LT(NewBackupId(t0 - std::chrono::milliseconds(998)), NewBackupId(t0));
  std::string previous;
  for (int step = 0; step < 400; ++step) {
    const auto t = t0 + std::chrono::seconds(1) * (int64_t{step} * step * 9973);
    const std::string next = NewBackupId(t);
    EXPECT_TRUE(IsValidBackupId(next)) << next;
    EXPECT_LT(previous, next);
    previous = next;
  }
  for (std::string_view bad :
       {"", "20261130t183000z-0badcafe0", "20261130t183000z-0BADCAFE", "20261130T183000Z-0badcafe",
        "2026113ot183000z-0badcafe", "20261130t183000z_0badcafe", "../../../../../etc/passwd"}) {
    EXPECT_FALSE(IsValidBackupId(bad)) << bad;
  }
}

TEST(ManifestTest, Rfc3339) {
  using std::chrono::sys_days;
  const auto t = sys_days(std::chrono::year(2024) / 2 / 29) + std::chrono::hours(23) +
                 std::chrono::minutes(59) + std::chrono::seconds(58);
  EXPECT_EQ(FormatRfc3339(t + std::chrono::milliseconds(700)), "2024-02-29T23:59:58.700Z");
  EXPECT_EQ(FormatRfc3339(system_clock::time_point{}), "1970-01-01T00:00:00.000Z");
  EXPECT_EQ(*ParseRfc3339(FormatRfc3339(t + std::chrono::milliseconds(7))),
            t + std::chrono::milliseconds(7));
  auto parsed = ParseRfc3339("2024-02-29T23:59:58Z");
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(*parsed, t);
  EXPECT_EQ(*ParseRfc3339("2024-03-01T01:59:58+02:00"), t);
  EXPECT_EQ(*ParseRfc3339("2024-02-29t20:29:58-03:30"), t);
  EXPECT_EQ(*ParseRfc3339("2024-02-29T23:59:58.25z"), t + std::chrono::milliseconds(250));
  for (std::string_view bad :
       {"", "2024-02-30T00:00:00Z", "2023-02-29T00:00:00Z", "2024-13-01T00:00:00Z",
        "2024-01-01T24:00:00Z", "2024-01-01T00:60:00Z", "2024-01-01 00:00:00Z",
        "2024-01-01T00:00:00", "2024-01-01T00:00:00.Z", "2024-01-01T00:00:00+0200",
        "2024-01-01T00:00:00Z ", "24-01-01T00:00:00Z", "2024-1-01T00:00:00Z",
        "2999-01-01T00:00:00Z", "1600-01-01T00:00:00Z"}) {  // beyond system_clock's range
    EXPECT_FALSE(ParseRfc3339(bad).ok()) << bad;
  }
}

}  // namespace
}  // namespace blksnap::repo
