// Retention: which backups a policy keeps (`blksnap repo forget`), with restic's `forget`
// semantics, per device, in UTC (docs/repository-format.md section 6).
//
// For each device, its backups newest first (ties broken by id, larger first, so the result does
// not depend on the input order). Each rule walks that list with its own budget of N buckets:
// keep_last's bucket is the backup itself; keep_daily's the UTC day; keep_weekly's the ISO 8601
// week (Monday to Sunday, its ISO year); keep_monthly's the UTC month. A backup whose bucket
// differs from the previous backup's bucket of that rule is the newest of a new bucket: the rule
// keeps it and spends one of its N. So keep_daily N keeps the newest backup of each of the N
// newest days that have backups. A backup is kept when any rule keeps it. A negative N is
// unlimited (every bucket); a policy of all zeroes keeps everything (the caller refuses to run
// it: "nothing would be pruned" is not what the user meant). Pure functions: no state, no
// locking.
#pragma once

#include <chrono>
#include <string>
#include <vector>

namespace blksnap::repo {

struct RetentionPolicy {
  int keep_last = 0, keep_daily = 0, keep_weekly = 0, keep_monthly = 0;

  // True when no rule is set: SelectKept would keep everything.
  bool empty() const { return !keep_last && !keep_daily && !keep_weekly && !keep_monthly; }
};

struct RetentionItem {
  std::string id, device;
  std::chrono::system_clock::time_point time;
};

// The ids of the kept backups, sorted ascending, each once.
std::vector<std::string> SelectKept(std::vector<RetentionItem> items,
                                    const RetentionPolicy& policy);

}  // namespace blksnap::repo
