// Records: see records.h for the format and the rules of reading it.
//
// Parsing uses nlohmann::json without exceptions (parse(..., nullptr, false)) and checks the type
// of every value before reading it, so no get<> can throw. Each entry is read by an EntryReader
// that stops at the first bad field and remembers why; the entry is then skipped with one problem
// line "devices[2] (\"vol0\"): size is not an unsigned integer". Serialising builds the same
// json the daemon always wrote (plus "clean_stop": true after a clean stop, "boot_id" when known
// and "snapshots" when there is one) and dumps it with invalid UTF-8 replaced, so it cannot
// throw.
#include "daemon/records.h"

#include <climits>
#include <nlohmann/json.hpp>

namespace blksnap::daemon {
namespace {

using nlohmann::json;

constexpr size_t kMaxNameInProblem = 64;

// Reads the fields of one entry; the first bad field sets problem() and later reads do nothing.
class EntryReader {
 public:
  explicit EntryReader(const json& entry) : entry_(entry) {}

  const std::string& problem() const { return problem_; }
  bool ok() const { return problem_.empty(); }

  void String(const char* key, std::string* out) {
    const json* v = Find(key, /*required=*/true);
    if (!v) return;
    if (!v->is_string()) return Fail(key, "is not a string");
    const auto& s = v->get_ref<const std::string&>();
    if (s.empty()) return Fail(key, "is empty");
    *out = s;
  }

  // A required list of non-empty strings.
  void StringList(const char* key, std::vector<std::string>* out) {
    const json* v = Find(key, /*required=*/true);
    if (!v) return;
    if (!v->is_array()) return Fail(key, "is not a list");
    for (const auto& item : *v) {
      if (!item.is_string() || item.get_ref<const std::string&>().empty()) {
        return Fail(key, "holds something that is not a non-empty string");
      }
      out->push_back(item.get<std::string>());
    }
  }

  // A required string that Uuid::Parse accepts.
  void UuidText(const char* key, std::string* out) {
    String(key, out);
    if (ok() && !Uuid::Parse(*out)) Fail(key, "is not a UUID");
  }

  // "crash" or "power": a memory snapshot is never recorded.
  void Durability(const char* key, SnapshotDurability* out) {
    std::string word;
    String(key, &word);
    if (!ok()) return;
    auto d = ParseSnapshotDurability(word);
    if (!d.ok() || *d == SnapshotDurability::kMemory) return Fail(key, "is not crash or power");
    *out = *d;
  }

  void Bool(const char* key, bool* out) {
    const json* v = Find(key, /*required=*/false);
    if (!v) return;
    if (!v->is_boolean()) return Fail(key, "is not true or false");
    *out = v->get<bool>();
  }

  void Int(const char* key, int* out, int64_t min, bool required) {
    const json* v = Find(key, required);
    if (!v) return;
    if (!v->is_number_integer()) return Fail(key, "is not an integer");
    if (v->is_number_unsigned() ? v->get<uint64_t>() > static_cast<uint64_t>(INT_MAX)
                                : v->get<int64_t>() < min) {
      return Fail(key, "is out of range (" + v->dump() + ")");
    }
    *out = static_cast<int>(v->is_number_unsigned() ? static_cast<int64_t>(v->get<uint64_t>())
                                                    : v->get<int64_t>());
  }

  void Uint64(const char* key, uint64_t* out) {
    const json* v = Find(key, /*required=*/false);
    if (!v) return;
    if (!v->is_number_unsigned()) return Fail(key, "is not an unsigned integer");
    *out = v->get<uint64_t>();
  }

  void BlockSize(const char* key, uint32_t* out) {
    uint64_t size = *out;
    Uint64(key, &size);
    if (!ok()) return;
    if (size < 512 || size > 65536 || (size & (size - 1)) != 0) {
      return Fail(key, "is not a power of two from 512 to 65536 (" + std::to_string(size) + ")");
    }
    *out = static_cast<uint32_t>(size);
  }

 private:
  const json* Find(const char* key, bool required) {
    if (!ok()) return nullptr;
    auto it = entry_.find(key);
    if (it == entry_.end()) {
      if (required) Fail(key, "is missing");
      return nullptr;
    }
    return &*it;
  }
  void Fail(const char* key, const std::string& why) { problem_ = std::string(key) + " " + why; }

  const json& entry_;
  std::string problem_;
};

// "devices[2]" plus the entry's name when it has a string one, escaped and cut short.
std::string EntryLabel(const char* list, size_t index, const json& entry, const char* name_key) {
  std::string label = std::string(list) + "[" + std::to_string(index) + "]";
  if (entry.is_object()) {
    auto it = entry.find(name_key);
    if (it != entry.end() && it->is_string()) {
      std::string name = it->dump(-1, ' ', /*ensure_ascii=*/true, json::error_handler_t::replace);
      if (name.size() > kMaxNameInProblem) name = name.substr(0, kMaxNameInProblem) + "...";
      label += " (" + name + ")";
    }
  }
  return label;
}

template <typename Record, typename ReadFn>
void ReadList(const json& list, const char* list_name, const char* name_key, ReadFn read,
              std::vector<Record>* out, std::vector<std::string>* problems) {
  for (size_t i = 0; i < list.size(); ++i) {
    const json& entry = list[i];
    if (!entry.is_object()) {
      problems->push_back(EntryLabel(list_name, i, entry, name_key) + " is not an object (" +
                          std::string(entry.type_name()) + ")");
      continue;
    }
    EntryReader reader(entry);
    Record record;
    read(reader, &record);
    if (!reader.ok()) {
      problems->push_back(EntryLabel(list_name, i, entry, name_key) + ": " + reader.problem());
      continue;
    }
    out->push_back(std::move(record));
  }
}

void ReadDevice(EntryReader& r, DeviceRecord* d) {
  r.String("name", &d->name);
  r.String("path", &d->path);
  r.Bool("loop", &d->loop);
  r.Bool("ublk", &d->ublk);
  r.Int("ublk_dev_id", &d->ublk_dev_id, -1, /*required=*/false);
  r.Uint64("size", &d->size);
  r.BlockSize("logical_block_size", &d->logical_block_size);
}

void ReadImage(EntryReader& r, ImageRecord* img) {
  r.String("snapshot", &img->snapshot);
  r.String("device", &img->device);
  r.Int("ublk_dev_id", &img->ublk_dev_id, 0, /*required=*/true);
  r.Uint64("size", &img->size);
  r.BlockSize("logical_block_size", &img->logical_block_size);
}

void ReadSnapshot(EntryReader& r, SnapshotRecord* snap) {
  r.UuidText("id", &snap->id);
  r.String("storage", &snap->storage);
  r.String("storage_file", &snap->storage_file);
  r.Durability("durability", &snap->durability);
  r.Bool("taken", &snap->taken);
  r.Uint64("taken_at", &snap->taken_at);
  r.Bool("taking", &snap->taking);
  r.Uint64("limit", &snap->limit);
  r.Bool("loop", &snap->loop);
  r.Bool("ublk", &snap->ublk);
  r.StringList("devices", &snap->devices);
}

}  // namespace

Result<ParsedRecords> ParseRecords(std::string_view text) {
  const json doc = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return Status::Error(EINVAL, "device records are not valid JSON");
  if (!doc.is_object()) {
    return Status::Error(
        EINVAL, std::string("device records are a JSON ") + doc.type_name() + ", not an object");
  }
  auto version = doc.find("version");
  if (version == doc.end()) return Status::Error(EINVAL, "device records have no version");
  if (!version->is_number_unsigned() || version->get<uint64_t>() != kRecordsVersion) {
    std::string shown = version->dump(-1, ' ', true, json::error_handler_t::replace);
    if (shown.size() > kMaxNameInProblem) shown = shown.substr(0, kMaxNameInProblem) + "...";
    return Status::Error(EINVAL, "device records have version " + shown + ", expected " +
                                     std::to_string(kRecordsVersion));
  }
  auto devices = doc.find("devices");
  if (devices == doc.end() || !devices->is_array())
    return Status::Error(EINVAL, "device records have no \"devices\" list");

  ParsedRecords parsed;
  auto pid = doc.find("pid");
  if (pid != doc.end()) {
    if (pid->is_number_integer() &&
        (!pid->is_number_unsigned() || pid->get<uint64_t>() <= static_cast<uint64_t>(INT64_MAX))) {
      parsed.records.pid = pid->get<int64_t>();
    } else {
      parsed.problems.push_back("pid is not an integer");
    }
  }
  auto clean_stop = doc.find("clean_stop");
  if (clean_stop != doc.end()) {
    if (clean_stop->is_boolean()) {
      parsed.records.clean_stop = clean_stop->get<bool>();
    } else {
      parsed.problems.push_back(std::string("clean_stop is not true or false (") +
                                clean_stop->type_name() + ")");
    }
  }
  auto boot_id = doc.find("boot_id");
  if (boot_id != doc.end()) {
    if (boot_id->is_string()) {
      parsed.records.boot_id = boot_id->get<std::string>();
    } else {
      parsed.problems.push_back(std::string("boot_id is not a string (") + boot_id->type_name() +
                                ")");
    }
  }
  ReadList(*devices, "devices", "name", ReadDevice, &parsed.records.devices, &parsed.problems);
  auto images = doc.find("images");
  if (images != doc.end()) {
    if (images->is_array()) {
      ReadList(*images, "images", "device", ReadImage, &parsed.records.images, &parsed.problems);
    } else {
      parsed.problems.push_back(std::string("images is not a list (") + images->type_name() + ")");
    }
  }
  auto snapshots = doc.find("snapshots");
  if (snapshots != doc.end()) {
    if (snapshots->is_array()) {
      ReadList(*snapshots, "snapshots", "id", ReadSnapshot, &parsed.records.snapshots,
               &parsed.problems);
    } else {
      parsed.problems.push_back(std::string("snapshots is not a list (") + snapshots->type_name() +
                                ")");
    }
  }
  return parsed;
}

bool WrittenBeforeAPowerLoss(const Records& records, std::string_view boot_id) {
  return !records.clean_stop && !records.boot_id.empty() && !boot_id.empty() &&
         records.boot_id != boot_id;
}

std::string SerializeRecords(const Records& records) {
  json devices = json::array();
  for (const auto& d : records.devices) {
    devices.push_back({{"name", d.name},
                       {"path", d.path},
                       {"loop", d.loop},
                       {"ublk", d.ublk},
                       {"ublk_dev_id", d.ublk_dev_id},
                       {"size", d.size},
                       {"logical_block_size", d.logical_block_size}});
  }
  json images = json::array();
  for (const auto& img : records.images) {
    images.push_back({{"snapshot", img.snapshot},
                      {"device", img.device},
                      {"ublk_dev_id", img.ublk_dev_id},
                      {"size", img.size},
                      {"logical_block_size", img.logical_block_size}});
  }
  json doc = {{"version", kRecordsVersion},
              {"pid", records.pid},
              {"devices", std::move(devices)},
              {"images", std::move(images)}};
  // Only when true, so a running daemon's records are what blksnapd has always written.
  if (records.clean_stop) doc["clean_stop"] = true;
  if (!records.boot_id.empty()) doc["boot_id"] = records.boot_id;
  if (!records.snapshots.empty()) {
    json snapshots = json::array();
    for (const auto& snap : records.snapshots) {
      snapshots.push_back({{"id", snap.id},
                           {"storage", snap.storage},
                           {"storage_file", snap.storage_file},
                           {"durability", ToString(snap.durability)},
                           {"taken", snap.taken},
                           {"limit", snap.limit},
                           {"loop", snap.loop},
                           {"ublk", snap.ublk},
                           {"devices", snap.devices}});
      if (snap.taken_at) snapshots.back()["taken_at"] = snap.taken_at;  // absent: unknown
      if (snap.taking) snapshots.back()["taking"] = true;               // absent: false
    }
    doc["snapshots"] = std::move(snapshots);
  }
  return doc.dump(2, ' ', /*ensure_ascii=*/false, json::error_handler_t::replace) + "\n";
}

RecordStore::RecordStore(Env& env, std::string state_dir)
    : env_(env), path_(std::move(state_dir) + "/" + kRecordsFileName) {}

Result<std::optional<ParsedRecords>> RecordStore::Load() {
  auto text = env_.ReadFile(path_, Env::kMaxReadFileSize);
  Status bad;
  if (!text.ok()) {
    if (text.status().errnum() == ENOENT) return std::optional<ParsedRecords>();
    bad = text.status();
  } else {
    auto parsed = ParseRecords(*text);
    if (parsed.ok()) {
      if (!parsed->problems.empty()) {
        // Keep what is about to be lost: the next Save rewrites the file without those entries.
        Status kept = env_.WriteFileAtomic(bad_path(), *text);
        if (!kept.ok()) {
          parsed->problems.push_back("cannot keep a copy in " + bad_path() + ": " +
                                     kept.ToString());
        }
      }
      return std::optional<ParsedRecords>(std::move(parsed).value());
    }
    bad = parsed.status();
  }
  Status moved = env_.RenameFile(path_, bad_path());
  const std::string where = moved.ok()
                                ? "moved to " + bad_path()
                                : "cannot move it to " + bad_path() + ": " + moved.ToString();
  return Status::Error(bad.errnum(), "unreadable device records " + path_ + " (" +
                                         std::string(bad.message()) + "); " + where);
}

Status RecordStore::Save(const Records& records) {
  if (records.empty()) {
    Status s = env_.RemoveFile(path_);
    if (!s.ok() && s.errnum() != ENOENT) return s;
    return Status::Ok();
  }
  return env_.WriteFileAtomic(path_, SerializeRecords(records));
}

}  // namespace blksnap::daemon
