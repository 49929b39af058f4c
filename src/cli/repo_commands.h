// The backup commands of the `blksnap` tool (issue 16, docs/backup.md): `backup` asks blksnapd to
// back devices up (the daemon reads the snapshot images and CBT); `restore` and `repo
// init|list|verify|prune|gc|stats` work on the repository directly, in this process, without
// the daemon. The repository is `--repo PATH` or $BLKSNAP_REPO; an encrypted one needs
// `--key-file F` (or $BLKSNAP_KEY_FILE).
//
// Progress of a restore or a verify: a line on stderr rewritten in place (bytes, rate, ETA) when
// stderr is a terminal; with --json, {"progress": {...}} lines on stdout before the result.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "cli/commands.h"

namespace blksnap::cli {

// The command line's values (they must outlive the parse).
struct RepoArgs {
  std::string repo, key_file, snapshot, storage, chunk_size, segment_size, target, backup;
  std::optional<int> zstd_level;
  std::vector<std::string> devices, backups;
  bool full = false, encrypt = false, verify = false, dry_run = false, loop = false;
  bool check_digests = false, repair = false;
  int threads = 0;  // --threads; 0: the command's default (the store's for backup, RestoreThreads)
  int keep_last = 0, keep_daily = 0, keep_weekly = 0, keep_monthly = 0;
  std::string device, since;
};

// Adds `backup`, `restore` and `repo ...` to app; run() records the action as main.cc does.
void AddRepoCommands(CLI::App& app, Context& ctx, RepoArgs& args,
                     const std::function<void(std::function<void()>)>& run);

}  // namespace blksnap::cli
