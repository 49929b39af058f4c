// Unit tests of the retention policy (retention.h) on hand-made timelines whose expected results
// were worked out by hand (comments give the reasoning): several backups a day with gaps over two
// months, UTC day, ISO week and month boundaries, per-device selection, N larger than the number
// of backups, ties, input order, an all-zero policy keeping everything, a negative N.
#include "repository/retention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "repository/manifest.h"

namespace blksnap::repo {
namespace {

namespace chrono = std::chrono;
using Strings = std::vector<std::string>;

chrono::system_clock::time_point At(int year, unsigned month, unsigned day, int hour = 12,
                                    int minute = 0, int second = 0) {
  return chrono::sys_days(chrono::year(year) / month / day) + chrono::hours(hour) +
         chrono::minutes(minute) + chrono::seconds(second);
}

// Items named by their time ("2026-10-31T06:00:00Z"), so ids sort as times do.
RetentionItem Item(chrono::system_clock::time_point time, std::string device = "vol0") {
  return {FormatRfc3339(time), std::move(device), time};
}

std::string Name(int year, unsigned month, unsigned day, int hour, int minute = 0, int second = 0) {
  return FormatRfc3339(At(year, month, day, hour, minute, second));
}

Strings Sorted(Strings ids) {
  std::sort(ids.begin(), ids.end());
  return ids;
}

// September and October 2026, no backup on days divisible by 3: 41 days. One backup at 06:00
// each day, another at 18:00 on even days, and a last one on Oct 31 at 23:59:59: 62 backups.
// 2026-10-01 is a Thursday: the ISO weeks are Sep 21-27, Sep 28-Oct 4, Oct 5-11, Oct 12-18,
// Oct 19-25, Oct 26-Nov 1.
std::vector<RetentionItem> TwoMonths() {
  std::vector<RetentionItem> items;
  for (unsigned month : {9u, 10u}) {
    const unsigned days = month == 9 ? 30 : 31;
    for (unsigned day = 1; day <= days; ++day) {
      if (day % 3 == 0) continue;
      items.push_back(Item(At(2026, month, day, 6)));
      if (day % 2 == 0) items.push_back(Item(At(2026, month, day, 18)));
    }
  }
  items.push_back(Item(At(2026, 10, 31, 23, 59, 59)));
  return items;
}

TEST(RetentionTest, TheTimelineHasTheBackupsItsCommentSays) { EXPECT_EQ(TwoMonths().size(), 62u); }

TEST(RetentionTest, KeepLast) {
  EXPECT_EQ(SelectKept(TwoMonths(), {.keep_last = 3}),
            Sorted({Name(2026, 10, 31, 23, 59, 59), Name(2026, 10, 31, 6), Name(2026, 10, 29, 6)}));
  EXPECT_EQ(SelectKept(TwoMonths(), {.keep_last = 100}).size(), 62u);
}

TEST(RetentionTest, KeepDailyKeepsTheNewestOfEachOfTheNewestDays) {
  // The 7 newest days with backups: Oct 31, 29, 28, 26, 25, 23, 22 (27, 30 and 24 have none).
  EXPECT_EQ(SelectKept(TwoMonths(), {.keep_daily = 7}),
            Sorted({Name(2026, 10, 31, 23, 59, 59), Name(2026, 10, 29, 6), Name(2026, 10, 28, 18),
                    Name(2026, 10, 26, 18), Name(2026, 10, 25, 6), Name(2026, 10, 23, 6),
                    Name(2026, 10, 22, 18)}));
  EXPECT_EQ(SelectKept(TwoMonths(), {.keep_daily = 1000}).size(), 41u);  // one per day
}

TEST(RetentionTest, KeepWeeklyUsesIsoWeeks) {
  // Newest of Oct 26-Nov 1, Oct 19-25, Oct 12-18, Oct 5-11, Sep 28-Oct 4 (across the month),
  // Sep 21-27.
  EXPECT_EQ(SelectKept(TwoMonths(), {.keep_weekly = 6}),
            Sorted({Name(2026, 10, 31, 23, 59, 59), Name(2026, 10, 25, 6), Name(2026, 10, 17, 6),
                    Name(2026, 10, 11, 6), Name(2026, 10, 4, 18), Name(2026, 9, 26, 18)}));
}

TEST(RetentionTest, KeepMonthlyWithFewerMonthsThanN) {
  EXPECT_EQ(SelectKept(TwoMonths(), {.keep_monthly = 3}),
            Sorted({Name(2026, 10, 31, 23, 59, 59), Name(2026, 9, 29, 6)}));
}

TEST(RetentionTest, ABackupIsKeptWhenAnyRuleKeepsIt) {
  // The union of the four cases above with last 3, daily 7, weekly 4, monthly 3.
  EXPECT_EQ(SelectKept(TwoMonths(),
                       {.keep_last = 3, .keep_daily = 7, .keep_weekly = 4, .keep_monthly = 3}),
            Sorted({Name(2026, 10, 31, 23, 59, 59), Name(2026, 10, 31, 6), Name(2026, 10, 29, 6),
                    Name(2026, 10, 28, 18), Name(2026, 10, 26, 18), Name(2026, 10, 25, 6),
                    Name(2026, 10, 23, 6), Name(2026, 10, 22, 18), Name(2026, 10, 17, 6),
                    Name(2026, 10, 11, 6), Name(2026, 9, 29, 6)}));
}

TEST(RetentionTest, UtcDayBoundaries) {
  const std::vector<RetentionItem> items = {Item(At(2026, 5, 1, 0, 0, 0)),
                                            Item(At(2026, 5, 1, 23, 59, 59)),
                                            Item(At(2026, 5, 2, 0, 0, 0))};
  EXPECT_EQ(SelectKept(items, {.keep_daily = 2}),
            Sorted({Name(2026, 5, 1, 23, 59, 59), Name(2026, 5, 2, 0)}));
  EXPECT_EQ(SelectKept(items, {.keep_monthly = 2}),
            Sorted({Name(2026, 5, 2, 0)}));  // one month only
}

TEST(RetentionTest, IsoWeeksAcrossTheNewYear) {
  // 2026-01-01 is a Thursday: ISO week 2026-W01 is Mon 2025-12-29 .. Sun 2026-01-04, so Dec 28
  // (a Sunday) is 2025-W52 and Dec 29 and Jan 2 share a week. 2026 has 53 weeks: Dec 28 2026 ..
  // Jan 3 2027 is 2026-W53, Jan 4 2027 starts 2027-W01.
  const std::vector<RetentionItem> items = {
      Item(At(2025, 12, 28)), Item(At(2025, 12, 29)), Item(At(2026, 1, 2)), Item(At(2026, 1, 4)),
      Item(At(2026, 1, 5)),   Item(At(2026, 12, 28)), Item(At(2027, 1, 3)), Item(At(2027, 1, 4))};
  EXPECT_EQ(SelectKept(items, {.keep_weekly = 100}),
            Sorted({Name(2025, 12, 28, 12), Name(2026, 1, 4, 12), Name(2026, 1, 5, 12),
                    Name(2027, 1, 3, 12), Name(2027, 1, 4, 12)}));
  EXPECT_EQ(SelectKept(items, {.keep_monthly = 3}),
            Sorted({Name(2027, 1, 4, 12), Name(2026, 12, 28, 12), Name(2026, 1, 5, 12)}));
}

TEST(RetentionTest, BucketsOfDifferentYearsDiffer) {
  // The only backups are in January 2026 and January 2027 (and in ISO week 2 of each year).
  const std::vector<RetentionItem> items = {Item(At(2026, 1, 7)), Item(At(2026, 1, 8)),
                                            Item(At(2027, 1, 13)), Item(At(2027, 1, 14))};
  EXPECT_EQ(SelectKept(items, {.keep_monthly = 2}),
            Sorted({Name(2026, 1, 8, 12), Name(2027, 1, 14, 12)}));
  EXPECT_EQ(SelectKept(items, {.keep_weekly = 2}),
            Sorted({Name(2026, 1, 8, 12), Name(2027, 1, 14, 12)}));
  EXPECT_EQ(SelectKept(items, {.keep_monthly = 1}), Sorted({Name(2027, 1, 14, 12)}));
}

TEST(RetentionTest, EachDeviceIsSelectedOnItsOwn) {
  std::vector<RetentionItem> items = {Item(At(2026, 3, 1), "a"), Item(At(2026, 3, 2), "a"),
                                      Item(At(2026, 3, 3), "a"), Item(At(2026, 2, 1, 1), "b"),
                                      Item(At(2026, 2, 1, 2), "b")};
  items[3].id = "b-1";
  items[4].id = "b-2";
  EXPECT_EQ(SelectKept(items, {.keep_last = 1}), Sorted({Name(2026, 3, 3, 12), "b-2"}));
  EXPECT_EQ(SelectKept(items, {.keep_daily = 2}),
            Sorted({Name(2026, 3, 3, 12), Name(2026, 3, 2, 12), "b-2"}));
}

TEST(RetentionTest, TheResultDoesNotDependOnTheInputOrder) {
  std::vector<RetentionItem> items = TwoMonths();
  // Ties: three backups at one instant; keep_last 1 keeps the largest id.
  const auto tie = At(2026, 11, 1, 8);
  for (const char* id : {"tie-b", "tie-c", "tie-a"}) items.push_back({id, "vol0", tie});
  const RetentionPolicy policy{.keep_last = 1, .keep_daily = 5, .keep_weekly = 3};
  const Strings expected = SelectKept(items, policy);
  EXPECT_TRUE(std::binary_search(expected.begin(), expected.end(), "tie-c"));
  EXPECT_FALSE(std::binary_search(expected.begin(), expected.end(), "tie-a"));
  std::mt19937 random(42);
  for (int round = 0; round < 20; ++round) {
    std::shuffle(items.begin(), items.end(), random);
    EXPECT_EQ(SelectKept(items, policy), expected);
  }
}

TEST(RetentionTest, AnAllZeroPolicyKeepsEverything) {
  EXPECT_TRUE(RetentionPolicy{}.empty());
  EXPECT_FALSE(RetentionPolicy{.keep_monthly = 1}.empty());
  Strings all;
  for (const auto& item : TwoMonths()) all.push_back(item.id);
  EXPECT_EQ(SelectKept(TwoMonths(), {}), Sorted(all));
  EXPECT_TRUE(SelectKept({}, {.keep_last = 3}).empty());
  EXPECT_TRUE(SelectKept({}, {}).empty());
}

TEST(RetentionTest, ANegativeCountIsUnlimited) {
  EXPECT_EQ(SelectKept(TwoMonths(), {.keep_daily = -1}).size(), 41u);
  EXPECT_EQ(SelectKept(TwoMonths(), {.keep_last = -1}).size(), 62u);
}

}  // namespace
}  // namespace blksnap::repo
