// Retention policy selection: see retention.h for the semantics. Pure functions, no locking.
//
// The items are sorted by (device, time descending, id descending); each device's run is walked
// once per rule. Bucket keys are int64: the backup's position for keep_last, days since the
// epoch for daily, ISO year * 100 + ISO week for weekly, year * 100 + month for monthly.
#include "repository/retention.h"

#include <algorithm>
#include <cstdint>
#include <functional>
#include <optional>
#include <tuple>

namespace blksnap::repo {
namespace {

namespace chrono = std::chrono;

chrono::sys_days DayOf(chrono::system_clock::time_point time) {
  return chrono::floor<chrono::days>(time);
}

int64_t DailyKey(chrono::system_clock::time_point time) {
  return DayOf(time).time_since_epoch().count();
}

int64_t MonthlyKey(chrono::system_clock::time_point time) {
  const chrono::year_month_day ymd(DayOf(time));
  return int64_t{int(ymd.year())} * 100 + unsigned(ymd.month());
}

// ISO 8601: weeks start on Monday; week 1 is the week holding the year's first Thursday, so a
// day belongs to the ISO year of the Thursday of its week.
int64_t WeeklyKey(chrono::system_clock::time_point time) {
  const chrono::sys_days day = DayOf(time);
  const unsigned iso_weekday = chrono::weekday(day).iso_encoding();  // Monday 1 .. Sunday 7
  const chrono::sys_days thursday = day + chrono::days(4 - int(iso_weekday));
  const chrono::year iso_year = chrono::year_month_day(thursday).year();
  const chrono::sys_days first_day = chrono::sys_days(iso_year / chrono::January / 1);
  const int64_t week = (thursday - first_day).count() / 7 + 1;
  return int64_t{int(iso_year)} * 100 + week;
}

struct Rule {
  int count;
  std::function<int64_t(const RetentionItem&, size_t position)> key;
};

}  // namespace

std::vector<std::string> SelectKept(std::vector<RetentionItem> items,
                                    const RetentionPolicy& policy) {
  std::vector<std::string> kept;
  if (policy.empty()) {
    for (auto& item : items) kept.push_back(std::move(item.id));
  } else {
    std::sort(items.begin(), items.end(), [](const RetentionItem& a, const RetentionItem& b) {
      return std::tie(a.device, b.time, b.id) < std::tie(b.device, a.time, a.id);
    });
    const Rule rules[] = {
        {policy.keep_last, [](const RetentionItem&, size_t i) { return int64_t(i); }},
        {policy.keep_daily, [](const RetentionItem& it, size_t) { return DailyKey(it.time); }},
        {policy.keep_weekly, [](const RetentionItem& it, size_t) { return WeeklyKey(it.time); }},
        {policy.keep_monthly, [](const RetentionItem& it, size_t) { return MonthlyKey(it.time); }},
    };
    std::vector<bool> keep(items.size(), false);
    for (size_t begin = 0; begin < items.size();) {
      size_t end = begin;
      while (end < items.size() && items[end].device == items[begin].device) ++end;
      for (const Rule& rule : rules) {
        int left = rule.count;  // negative: unlimited
        std::optional<int64_t> last;
        for (size_t i = begin; i < end && left != 0; ++i) {
          const int64_t key = rule.key(items[i], i - begin);
          if (last == key) continue;
          last = key;
          keep[i] = true;
          if (left > 0) --left;
        }
      }
      begin = end;
    }
    for (size_t i = 0; i < items.size(); ++i) {
      if (keep[i]) kept.push_back(std::move(items[i].id));
    }
  }
  std::sort(kept.begin(), kept.end());
  kept.erase(std::unique(kept.begin(), kept.end()), kept.end());
  return kept;
}

}  // namespace blksnap::repo
