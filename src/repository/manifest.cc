// Manifest encoding and parsing, backup ids and RFC 3339 times: see manifest.h.
//
// Parsing: the size is bounded first; nlohmann parses without exceptions (parse(..., false))
// with a callback that flags any value nested deeper than kMaxManifestDepth (so the recursive
// dump and copy below never see deep input); the checksum is verified over the canonical dump
// of the object without "checksum" (dump cannot throw: the parser accepts valid UTF-8 only, and
// the encoder replaces invalid UTF-8); then each field is read by a FieldReader that checks its
// type and stops at the first problem; then CheckManifest's rules. Pure functions: no state, no
// locking.
#include "repository/manifest.h"

#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>
#include <span>

#include "repository/catalog_format.h"
#include "repository/index.h"

namespace blksnap::repo {
namespace {

using nlohmann::json;
namespace chrono = std::chrono;

// Compact, keys sorted (nlohmann's object is a std::map), invalid UTF-8 replaced: never throws.
std::string CanonicalDump(const json& object) {
  return object.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string ChecksumOf(const json& object_without_checksum) {
  const std::string text = CanonicalDump(object_without_checksum);
  return Sha256(text).Hex();
}

// Reads the fields of the manifest object; the first problem is kept and later reads do nothing.
class FieldReader {
 public:
  explicit FieldReader(const json& object) : object_(object) {}
  const std::string& problem() const { return problem_; }

  void String(const char* key, std::string* out) {
    if (const json* v = Find(key, &json::is_string, "a string")) *out = v->get<std::string>();
  }
  void Unsigned(const char* key, uint64_t* out) {
    if (const json* v = Find(key, &json::is_number_unsigned, "an unsigned integer")) {
      *out = v->get<uint64_t>();
    }
  }
  void Bool(const char* key, bool* out) {
    if (const json* v = Find(key, &json::is_boolean, "true or false")) *out = v->get<bool>();
  }
  void Number(const char* key, double* out) {
    if (const json* v = Find(key, &json::is_number, "a number")) *out = v->get<double>();
  }
  void DigestHex(const char* key, Digest* out) {
    std::string hex;
    String(key, &hex);
    if (!problem_.empty()) return;
    auto digest = Digest::FromHex(hex);
    if (!digest.ok()) return Fail(key, "is not 64 lowercase hex digits");
    *out = *digest;
  }
  // A nested object: the caller reads it with its own reader, then Adopt()s that reader's
  // problem, prefixed with the key.
  const json* Object(const char* key) { return Find(key, &json::is_object, "an object"); }
  void Adopt(const char* key, const FieldReader& inner) {
    if (problem_.empty() && !inner.problem_.empty())
      problem_ = std::string(key) + "." + inner.problem_;
  }

 private:
  const json* Find(const char* key, bool (json::*is_type)() const noexcept, const char* type) {
    if (!problem_.empty()) return nullptr;
    auto it = object_.find(key);
    if (it == object_.end()) {
      Fail(key, "is missing");
      return nullptr;
    }
    if (!((*it).*is_type)()) {
      Fail(key, (std::string("is not ") + type).c_str());
      return nullptr;
    }
    return &*it;
  }
  void Fail(const char* key, const char* what) { problem_ = std::string(key) + " " + what; }

  const json& object_;
  std::string problem_;
};

Status Bad(const std::string& what) { return Status::Error(EBADMSG, "manifest: " + what); }

// The first broken rule of CheckManifest, or "".
std::string BrokenRule(const Manifest& m) {
  if (!IsValidBackupId(m.id)) return "id is not a backup id";  // not echoed: any bytes
  if (m.device.empty()) return "device is empty";
  if (!IsValidChunkSize(m.chunk_size)) return "chunk_size is not a power of two, 64 KiB..64 MiB";
  if (!ParseRfc3339(m.time).ok()) return "time is not an RFC 3339 time";
  if (m.full && m.full_reason.empty()) return "full backup without a full_reason";
  if (!m.full && !m.full_reason.empty()) return "incremental backup with a full_reason";
  if (!m.full && m.parent.empty()) return "incremental backup without a parent";
  if (!m.parent.empty() && !IsValidBackupId(m.parent)) return "parent is not a backup id";
  if (m.index.IsZero()) return "index digest is zero";
  if (!std::isfinite(m.stats.seconds) || m.stats.seconds < 0)
    return "stats.seconds is negative or not finite";
  return "";
}

json ManifestToJson(const Manifest& m) {
  const BackupStats& s = m.stats;
  return json{{"version", kManifestVersion},
              {"id", m.id},
              {"device", m.device},
              {"host", m.host},
              {"device_size", m.device_size},
              {"chunk_size", m.chunk_size},
              {"time", m.time},
              {"full", m.full},
              {"full_reason", m.full_reason},
              {"cbt_generation", m.cbt_generation},
              {"snap_number", m.snap_number},
              {"parent", m.parent},
              {"index", m.index.Hex()},
              {"stats",
               {{"logical_bytes", s.logical_bytes},
                {"read_bytes", s.read_bytes},
                {"new_chunks", s.new_chunks},
                {"new_bytes_stored", s.new_bytes_stored},
                {"reused_chunks", s.reused_chunks},
                {"zero_chunks", s.zero_chunks},
                // JSON has no NaN or infinity (nlohmann writes null): such a manifest fails
                // CheckManifest anyway, and its text must still be a number here.
                {"seconds", std::isfinite(s.seconds) ? s.seconds : -1.0}}}};
}

void ReadFields(FieldReader& r, Manifest* m) {
  r.String("id", &m->id);
  r.String("device", &m->device);
  r.String("host", &m->host);
  r.Unsigned("device_size", &m->device_size);
  r.Unsigned("chunk_size", &m->chunk_size);
  r.String("time", &m->time);
  r.Bool("full", &m->full);
  r.String("full_reason", &m->full_reason);
  r.String("cbt_generation", &m->cbt_generation);
  r.Unsigned("snap_number", &m->snap_number);
  r.String("parent", &m->parent);
  r.DigestHex("index", &m->index);
  const json* stats = r.Object("stats");
  if (!stats) return;
  FieldReader s(*stats);
  BackupStats* out = &m->stats;
  s.Unsigned("logical_bytes", &out->logical_bytes);
  s.Unsigned("read_bytes", &out->read_bytes);
  s.Unsigned("new_chunks", &out->new_chunks);
  s.Unsigned("new_bytes_stored", &out->new_bytes_stored);
  s.Unsigned("reused_chunks", &out->reused_chunks);
  s.Unsigned("zero_chunks", &out->zero_chunks);
  s.Number("seconds", &out->seconds);
  r.Adopt("stats", s);
}

// The UTC calendar date and time of day of a time, whole seconds.
struct UtcFields {
  int year;
  unsigned month, day;
  int hour, minute, second;
};

UtcFields Utc(chrono::system_clock::time_point time) {
  const auto seconds = chrono::floor<chrono::seconds>(time);
  const auto day = chrono::floor<chrono::days>(seconds);
  const chrono::year_month_day ymd(day);
  const chrono::hh_mm_ss hms(seconds - day);
  return {int(ymd.year()),          unsigned(ymd.month()),      unsigned(ymd.day()),
          int(hms.hours().count()), int(hms.minutes().count()), int(hms.seconds().count())};
}

// Parses exactly `digits` decimal digits at text[*pos], advancing *pos; false otherwise.
bool Digits(std::string_view text, size_t* pos, size_t digits, int* out) {
  if (*pos > text.size() || text.size() - *pos < digits) return false;
  int value = 0;
  for (size_t i = 0; i < digits; ++i) {
    const char c = text[*pos + i];
    if (c < '0' || c > '9') return false;
    value = value * 10 + (c - '0');
  }
  *pos += digits;
  *out = value;
  return true;
}

bool Expect(std::string_view text, size_t* pos, char c) {
  if (*pos >= text.size() || text[*pos] != c) return false;
  ++*pos;
  return true;
}

}  // namespace

Status CheckManifest(const Manifest& manifest) {
  const std::string rule = BrokenRule(manifest);
  if (!rule.empty()) return Status::Error(EINVAL, "manifest: " + rule);
  return Status::Ok();
}

std::string EncodeManifest(const Manifest& manifest) {
  json object = ManifestToJson(manifest);
  object[kManifestChecksumField] = ChecksumOf(object);
  return object.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
}

Result<Manifest> ParseManifest(std::string_view text) {
  if (text.size() > kMaxManifestSize) return Bad("larger than 1 MiB");
  bool too_deep = false;
  const json::parser_callback_t depth_guard = [&too_deep](int depth, json::parse_event_t, json&) {
    if (depth > kMaxManifestDepth) too_deep = true;
    return depth <= kMaxManifestDepth;
  };
  json object = json::parse(text, depth_guard, /*allow_exceptions=*/false);
  if (object.is_discarded()) return Bad("not JSON");
  if (too_deep) return Bad("nested too deeply");
  if (!object.is_object()) return Bad("not a JSON object");

  auto checksum = object.find(kManifestChecksumField);
  if (checksum == object.end() || !checksum->is_string()) return Bad("checksum is missing");
  const std::string stored = checksum->get<std::string>();
  object.erase(checksum);
  if (ChecksumOf(object) != stored) return Bad("checksum mismatch");

  auto version = object.find("version");
  if (version == object.end() || !version->is_number_unsigned()) return Bad("version is missing");
  if (version->get<uint64_t>() > kManifestVersion) {
    return Status::Error(ENOTSUP, "manifest: version " + std::to_string(version->get<uint64_t>()) +
                                      " is newer than this blksnap reads");
  }
  if (version->get<uint64_t>() == 0) return Bad("version 0");

  Manifest manifest;
  FieldReader reader(object);
  ReadFields(reader, &manifest);
  if (!reader.problem().empty()) return Bad(reader.problem());
  const std::string rule = BrokenRule(manifest);
  if (!rule.empty()) return Bad(rule);
  return manifest;
}

std::string NewBackupId(chrono::system_clock::time_point time) {
  const UtcFields utc = Utc(time);
  std::random_device random;
  // The first three hex digits are the milliseconds (000..3e7), so that backups taken in one
  // second still sort by time; the other five are random.
  const auto ms =
      chrono::duration_cast<chrono::milliseconds>(time - chrono::floor<chrono::seconds>(time))
          .count();
  const uint32_t suffix = static_cast<uint32_t>(ms) << 20 |
                          (std::uniform_int_distribution<uint32_t>()(random) & 0xfffff);
  char id[64];
  std::snprintf(id, sizeof(id), "%04d%02u%02ut%02d%02d%02dz-%08x", utc.year, utc.month, utc.day,
                utc.hour, utc.minute, utc.second, suffix);
  return id;
}

bool IsValidBackupId(std::string_view id) {
  if (id.size() != kBackupIdLength) return false;
  for (size_t i = 0; i < id.size(); ++i) {
    const char c = id[i];
    bool ok;
    if (i == 8) {
      ok = c == 't';
    } else if (i == 15) {
      ok = c == 'z';
    } else if (i == 16) {
      ok = c == '-';
    } else if (i > 16) {
      ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
    } else {
      ok = c >= '0' && c <= '9';
    }
    if (!ok) return false;
  }
  return true;
}

std::string FormatRfc3339(chrono::system_clock::time_point time) {
  const UtcFields utc = Utc(time);
  const auto ms =
      chrono::duration_cast<chrono::milliseconds>(time - chrono::floor<chrono::seconds>(time))
          .count();
  char text[64];
  std::snprintf(text, sizeof(text), "%04d-%02u-%02uT%02d:%02d:%02d.%03dZ", utc.year, utc.month,
                utc.day, utc.hour, utc.minute, utc.second, static_cast<int>(ms));
  return text;
}

Result<chrono::system_clock::time_point> ParseRfc3339(std::string_view text) {
  const Status bad = Status::Error(EINVAL, "not an RFC 3339 time");
  size_t pos = 0;
  int year, month, mday, hour, minute, second;
  if (!Digits(text, &pos, 4, &year) || !Expect(text, &pos, '-') || !Digits(text, &pos, 2, &month) ||
      !Expect(text, &pos, '-') || !Digits(text, &pos, 2, &mday)) {
    return bad;
  }
  if (!Expect(text, &pos, 'T') && !Expect(text, &pos, 't')) return bad;
  if (!Digits(text, &pos, 2, &hour) || !Expect(text, &pos, ':') ||
      !Digits(text, &pos, 2, &minute) || !Expect(text, &pos, ':') ||
      !Digits(text, &pos, 2, &second)) {
    return bad;
  }
  const chrono::year_month_day ymd{chrono::year(year), chrono::month(unsigned(month)),
                                   chrono::day(unsigned(mday))};
  if (!ymd.ok() || hour > 23 || minute > 59 || second > 60) return bad;
  // system_clock counts nanoseconds in 64 bits: 1678..2261 only (beyond, the time would wrap).
  if (year < 1678 || year > 2261) return bad;
  chrono::nanoseconds fraction{0};
  if (Expect(text, &pos, '.')) {
    int64_t nanos = 0, scale = 100000000;
    size_t digits = 0;
    while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') {
      if (digits++ < 9) {
        nanos += (text[pos] - '0') * scale;
        scale /= 10;
      }
      ++pos;
    }
    if (digits == 0) return bad;
    fraction = chrono::nanoseconds(nanos);
  }
  chrono::minutes offset{0};
  if (!Expect(text, &pos, 'Z') && !Expect(text, &pos, 'z')) {
    int sign = 0, off_hours, off_minutes;
    if (Expect(text, &pos, '+')) {
      sign = 1;
    } else if (Expect(text, &pos, '-')) {
      sign = -1;
    }
    if (sign == 0 || !Digits(text, &pos, 2, &off_hours) || !Expect(text, &pos, ':') ||
        !Digits(text, &pos, 2, &off_minutes) || off_hours > 23 || off_minutes > 59) {
      return bad;
    }
    offset = chrono::minutes(sign * (off_hours * 60 + off_minutes));
  }
  if (pos != text.size()) return bad;
  const auto local = chrono::sys_days(ymd) + chrono::hours(hour) + chrono::minutes(minute) +
                     chrono::seconds(second) + fraction;
  return chrono::time_point_cast<chrono::system_clock::duration>(local - offset);
}

}  // namespace blksnap::repo
