// The backup commands: see repo_commands.h.
#include "cli/repo_commands.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <optional>
#include <random>
#include <thread>

#include "blksnap/io.h"
#include "repository/backup.h"
#include "repository/codec.h"
#include "repository/object_store.h"
#include "repository/store_url.h"

namespace blksnap::cli {
namespace {

using nlohmann::json;

std::optional<std::vector<uint8_t>> Key(const RepoArgs& a) {
  if (a.key_file.empty()) return std::nullopt;
  return Check(repo::ReadKeyFile(Absolute(a.key_file)));
}

// A repository location as the daemon and the stores take it: paths absolute, URLs as given.
std::string Location(const std::string& repo) {
  return repo::IsStoreUrl(repo) ? repo : Absolute(repo);
}

std::unique_ptr<repo::Repository> OpenRepo(const RepoArgs& a) {
  if (a.repo.empty()) Usage("no repository: give --repo PATH|URL or set BLKSNAP_REPO");
  return Check(
      repo::Repository::OpenAt(Location(a.repo), a.key_file.empty() ? "" : Absolute(a.key_file)));
}

json ManifestJson(const repo::Manifest& m) {
  json j = json::parse(repo::EncodeManifest(m), nullptr, false);
  j.erase("checksum");
  return j;
}

// Progress on a terminal (stderr, rewritten in place) or as JSON lines; nothing otherwise.
repo::ProgressFn Progress(const Output& out, const std::string& what) {
  const bool tty = ::isatty(STDERR_FILENO) == 1;
  if (!out.as_json && !tty) return {};
  const auto start = std::chrono::steady_clock::now();
  return [&out, what, start, tty](const repo::TransferProgress& p) {
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double rate = s > 0 ? p.done_bytes / s : 0;
    const double eta = rate > 0 ? (p.total_bytes - p.done_bytes) / rate : 0;
    if (out.as_json) {
      out.Emit({{"progress",
                 {{"what", what},
                  {"done_bytes", p.done_bytes},
                  {"total_bytes", p.total_bytes},
                  {"bytes_per_second", static_cast<uint64_t>(rate)},
                  {"eta_seconds", eta}}}});
    } else if (tty) {
      std::fprintf(stderr, "\r%s: %s / %s  %s/s  ETA %.0f s   ", what.c_str(),
                   SizeText(p.done_bytes).c_str(), SizeText(p.total_bytes).c_str(),
                   SizeText(static_cast<uint64_t>(rate)).c_str(), eta);
      if (p.done_bytes == p.total_bytes) std::fprintf(stderr, "\n");
    }
  };
}

// The backup request, on this connection in a thread, while a second connection polls its
// progress (method backup-progress, by a job name chosen here) every 100 ms and shows it. Without
// a terminal and without --json: just the request.
json CallShowingProgress(Context& ctx, json params) {
  repo::ProgressFn show = Progress(ctx.output, "backup");
  if (!show) return ctx.Call("backup", params);
  std::random_device random;
  const std::string job = "cli-" + std::to_string(::getpid()) + "-" + std::to_string(random());
  params["job"] = job;
  ctx.Client();  // connected here: a missing daemon is reported before the thread starts
  std::mutex mu;
  std::condition_variable finished;
  bool done = false;  // guarded by mu
  json result;
  std::optional<CommandError> error;
  std::thread call([&] {
    try {
      result = ctx.Call("backup", params);
    } catch (const CommandError& e) {
      error = e;
    }
    std::lock_guard lock(mu);
    done = true;
    finished.notify_one();
  });
  auto poller = ControlClient::Connect(ctx.control);
  for (;;) {
    {  // the answer ends the wait at once: a short backup does not sit out a polling period
      std::unique_lock lock(mu);
      if (finished.wait_for(lock, std::chrono::milliseconds(100), [&] { return done; })) break;
    }
    if (!poller.ok()) continue;
    auto p = (*poller)->Call("backup-progress", {{"job", job}});
    if (!p.ok() || (*p)["total_bytes"].get<uint64_t>() == 0) continue;
    show({(*p)["done_bytes"].get<uint64_t>(), (*p)["total_bytes"].get<uint64_t>(),
          (*p)["read_bytes"].get<uint64_t>(), (*p)["stored_bytes"].get<uint64_t>()});
  }
  call.join();
  if (error) throw *error;
  return result;
}

constexpr int kDefaultThreads = 4;

// Chunk writes in flight for a restore without --threads. Into memory (a tmpfs or ramfs file)
// the restore is CPU-bound: 0, one write per decoder (one decoder per CPU; more only contend for
// the file's lock and the caches). Into a disk (a block device, or a file taking O_DIRECT on a
// disk's file system) each write waits for the disk: 16 behind the decoders, so the disk sees a
// queue (docs/performance.md "Restore to a disk", "Restore: decoders on the CPUs").
int RestoreThreads(const std::string& target, bool block, bool direct) {
  if (block) return 16;
  struct statfs fs {};
  if (::statfs(target.c_str(), &fs) != 0) return 0;
  const bool memory = fs.f_type == TMPFS_MAGIC || fs.f_type == RAMFS_MAGIC;
  return direct && !memory ? 16 : 0;
}

void CmdBackup(Context& ctx, const RepoArgs& a) {
  if (a.repo.empty()) Usage("no repository: give --repo PATH|URL or set BLKSNAP_REPO");
  json params = {{"devices", a.devices}, {"repo", Location(a.repo)}, {"full", a.full}};
  // No --threads: the daemon picks the store's default (4; 16 PUTs in flight for s3://).
  if (a.threads > 0) params["threads"] = a.threads;
  if (!a.key_file.empty()) params["key_file"] = Absolute(a.key_file);
  if (!a.snapshot.empty()) params["snapshot"] = a.snapshot;
  if (!a.storage.empty()) params["storage"] = Absolute(a.storage);
  json r = CallShowingProgress(ctx, params);
  if (ctx.output.as_json) return ctx.output.Emit(r);
  for (const json& m : r["backups"]) {
    const json& st = m["stats"];
    std::printf("backup %s of %s: %s (%s), %s read, %s new in %s chunks, %s reused, %.1f s\n",
                Str(m["id"]).c_str(), Str(m["device"]).c_str(),
                m["full"].get<bool>() ? "full" : "incremental",
                m["full"].get<bool>() ? Str(m["full_reason"]).c_str()
                                      : ("parent " + Str(m["parent"])).c_str(),
                SizeText(st["read_bytes"]).c_str(), SizeText(st["new_bytes_stored"]).c_str(),
                Str(st["new_chunks"]).c_str(), Str(st["reused_chunks"]).c_str(),
                st["seconds"].get<double>());
  }
}

void CmdRestore(Context& ctx, const RepoArgs& a) {
  auto repository = OpenRepo(a);
  const repo::Manifest m = Check(repository->GetBackup(a.backup));
  const std::string target = Absolute(a.target);
  struct stat st {};
  const bool exists = ::stat(target.c_str(), &st) == 0;
  const bool block = exists && S_ISBLK(st.st_mode);
  if (exists && !block && !S_ISREG(st.st_mode)) {
    Usage("restore target " + target + " is neither a regular file nor a block device");
  }
  if (!block) {
    // A new or emptied file of the backup's size: zero chunks stay holes.
    const int fd = ::open(target.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) Fail(Status::FromErrno("creating " + target));
    const int rc = ::ftruncate(fd, static_cast<off_t>(m.device_size));
    ::close(fd);
    if (rc != 0) Fail(Status::FromErrno("sizing " + target));
  }
  FileOpenOptions o;
  o.exclusive = true;  // a mounted block device is refused (EBUSY)
  // O_DIRECT: the restore writes aligned 4 MiB chunks once; through the page cache they would
  // cost a copy each and a long final fdatasync. Buffered where O_DIRECT is refused (tmpfs).
  o.direct = true;
  auto opened = OpenFileDevice(target, o);
  if (!opened.ok() && opened.status().errnum() == EINVAL) {
    o.direct = false;
    opened = OpenFileDevice(target, o);
  }
  auto device = Check(std::move(opened));
  repo::RestoreSpec spec;
  spec.threads = a.threads > 0 ? a.threads : RestoreThreads(target, block, o.direct);
  spec.target_is_zeroed = !block;
  spec.verify = a.verify;
  spec.check_digests = a.check_digests;
  spec.progress = Progress(ctx.output, "restore");
  const auto start = std::chrono::steady_clock::now();
  Check(repo::RunRestore(*repository, m, *device, spec));
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (ctx.output.as_json) {
    return ctx.output.Emit({{"backup", m.id},
                            {"target", target},
                            {"bytes", m.device_size},
                            {"seconds", s},
                            {"verified", a.verify}});
  }
  std::printf("restored backup %s (%s of %s) to %s in %.1f s%s\n", m.id.c_str(),
              SizeText(m.device_size).c_str(), m.device.c_str(), target.c_str(), s,
              a.verify ? ", verified" : "");
}

void CmdRepoInit(Context& ctx, const RepoArgs& a) {
  const std::string path = Location(a.target);
  if (a.encrypt == a.key_file.empty()) {
    Usage(a.encrypt ? "--encrypt needs --key-file F" : "--key-file needs --encrypt at init");
  }
  repo::NewRepoOptions o;
  if (!a.chunk_size.empty()) o.chunk_size = ParseSizeArg("--chunk-size", a.chunk_size);
  if (a.zstd_level) o.zstd_level = *a.zstd_level;
  if (a.segment_size == "0") {
    o.segment_size = 0;
  } else if (!a.segment_size.empty()) {
    const uint64_t s = ParseSizeArg("--segment-size", a.segment_size);
    if (s > UINT32_MAX) Usage("--segment-size: at most the chunk size");
    o.segment_size = static_cast<uint32_t>(s);
  }
  {  // the options checked before anything is created (a bad one changes nothing)
    repo::RepoConfig c;
    c.version = o.segment_size != 0 ? repo::kConfigVersionSegmented : repo::kConfigVersion;
    c.id = "00000000-0000-4000-8000-000000000000";
    c.chunk_size = o.chunk_size;
    c.zstd_level = o.zstd_level;
    c.segment_size = o.segment_size;
    Check(repo::ValidateRepoConfig(c));
  }
  auto store = Check(repo::OpenStore(path, /*create=*/true));
  const auto key = Key(a);
  std::optional<std::span<const uint8_t>> span;
  if (key) span = std::span<const uint8_t>(*key);
  Check(repo::Repository::Init(*store, o, span));
  if (ctx.output.as_json) {
    return ctx.output.Emit({{"repo", path},
                            {"chunk_size", o.chunk_size},
                            {"segment_size", o.segment_size},
                            {"zstd_level", o.zstd_level},
                            {"encrypted", a.encrypt}});
  }
  std::printf("repository %s: chunks of %s%s, %s\n", path.c_str(), SizeText(o.chunk_size).c_str(),
              o.segment_size != 0 ? (" in segments of " + SizeText(o.segment_size)).c_str() : "",
              a.encrypt ? "encrypted (AES-256-GCM)" : "not encrypted");
}

void CmdRepoList(Context& ctx, const RepoArgs& a) {
  auto repository = OpenRepo(a);
  std::vector<std::pair<std::string, Status>> damaged;
  const auto all = Check(repository->ListBackups(&damaged));
  json list = json::array();
  std::vector<std::vector<std::string>> rows = {
      {"ID", "DEVICE", "HOST", "TIME", "KIND", "SIZE", "NEW", "GEN/SNAP", "PARENT"}};
  for (const repo::Manifest& m : all) {
    if (!a.device.empty() && m.device != a.device) continue;
    list.push_back(ManifestJson(m));
    rows.push_back({m.id, m.device, m.host, m.time, m.full ? "full:" + m.full_reason : "incr",
                    SizeText(m.device_size), SizeText(m.stats.new_bytes_stored),
                    m.cbt_generation.substr(0, 8) + "/" + std::to_string(m.snap_number),
                    m.parent.empty() ? "-" : m.parent});
  }
  for (const auto& [id, status] : damaged) {
    std::fprintf(stderr, "blksnap: warning: backup %s is unreadable: %s\n", id.c_str(),
                 std::string(status.message()).c_str());
  }
  if (ctx.output.as_json) return ctx.output.Emit({{"backups", list}});
  PrintTable(rows);
}

void CmdRepoVerify(Context& ctx, const RepoArgs& a) {
  auto repository = OpenRepo(a);
  std::vector<std::string> ids = a.backups;
  if (!a.since.empty()) {
    // Backups made at or after TIME (RFC 3339, or a date yyyy-mm-dd meaning its midnight UTC).
    const std::string text = a.since.size() == 10 ? a.since + "T00:00:00Z" : a.since;
    auto since = repo::ParseRfc3339(text);
    if (!since.ok()) Usage("--since: '" + a.since + "' is not a time like 2026-11-30T18:00:00Z");
    for (const repo::Manifest& m : Check(repository->ListBackups())) {
      auto t = repo::ParseRfc3339(m.time);
      if (t.ok() && *t >= *since &&
          (a.backups.empty() ||
           std::find(a.backups.begin(), a.backups.end(), m.id) != a.backups.end())) {
        ids.push_back(m.id);
      }
    }
    if (!a.backups.empty()) ids.erase(ids.begin(), ids.begin() + a.backups.size());
    if (ids.empty()) {
      if (ctx.output.as_json) return ctx.output.Emit({{"ok", true}, {"problems", json::array()}});
      std::printf("no backup since %s\n", a.since.c_str());
      return;
    }
  }
  const auto problems =
      Check(repository->Verify(ids, a.threads > 0 ? a.threads : kDefaultThreads, {}, a.repair));
  json list = json::array();
  for (const auto& p : problems) {
    list.push_back({{"chunk", p.chunk.Hex()},
                    {"errno", p.error.errnum()},
                    {"message", std::string(p.error.message())},
                    {"backups", p.backups},
                    {"moved_aside", p.moved_aside}});
    if (!ctx.output.as_json) {
      std::string affected;
      for (const auto& b : p.backups) affected += " " + b;
      std::fprintf(stderr, "blksnap: error: %s; affects backups:%s%s\n",
                   std::string(p.error.message()).c_str(), affected.c_str(),
                   p.moved_aside ? " (moved aside to bad/)" : "");
    }
  }
  if (ctx.output.as_json) {
    ctx.output.Emit({{"ok", problems.empty()}, {"problems", list}, {"repaired", a.repair}});
  } else if (problems.empty()) {
    std::printf("verified: every chunk readable and matching its digest\n");
  } else if (a.repair) {
    std::fprintf(stderr,
                 "blksnap: the affected backups are marked damaged: the next backup of each "
                 "device is full and stores the lost chunks anew\n");
  }
  if (!problems.empty()) {
    throw CommandError{kExitError, EBADMSG,
                       std::to_string(problems.size()) + " damaged or missing chunk(s)"};
  }
}

void CmdRepoPrune(Context& ctx, const RepoArgs& a) {
  auto repository = OpenRepo(a);
  repo::RetentionPolicy policy;
  policy.keep_last = a.keep_last;
  policy.keep_daily = a.keep_daily;
  policy.keep_weekly = a.keep_weekly;
  policy.keep_monthly = a.keep_monthly;
  const auto removed = Check(repository->Prune(policy, a.dry_run));
  if (ctx.output.as_json) return ctx.output.Emit({{"removed", removed}, {"dry_run", a.dry_run}});
  for (const auto& id : removed)
    std::printf("%s %s\n", a.dry_run ? "would remove" : "removed", id.c_str());
  std::printf("%zu backup(s) %s; run `blksnap repo gc` to free their chunks\n", removed.size(),
              a.dry_run ? "would be removed" : "removed");
}

void CmdRepoGc(Context& ctx, const RepoArgs& a) {
  auto repository = OpenRepo(a);
  const auto r = Check(repository->Gc());
  if (ctx.output.as_json) {
    return ctx.output.Emit({{"chunks_deleted", r.chunks_deleted},
                            {"bytes_freed", r.bytes_freed},
                            {"indexes_deleted", r.indexes_deleted},
                            {"chunks_kept", r.chunks_kept}});
  }
  std::printf("gc: %llu chunk(s) and %llu index(es) deleted, %s freed, %llu chunk(s) kept\n",
              static_cast<unsigned long long>(r.chunks_deleted),
              static_cast<unsigned long long>(r.indexes_deleted), SizeText(r.bytes_freed).c_str(),
              static_cast<unsigned long long>(r.chunks_kept));
}

void CmdRepoStats(Context& ctx, const RepoArgs& a) {
  auto repository = OpenRepo(a);
  const auto s = Check(repository->GetStats());
  const double ratio = s.stored_bytes ? static_cast<double>(s.logical_bytes) / s.stored_bytes : 0;
  if (ctx.output.as_json) {
    return ctx.output.Emit({{"backups", s.backups},
                            {"logical_bytes", s.logical_bytes},
                            {"chunks", s.chunks},
                            {"stored_bytes", s.stored_bytes},
                            {"ratio", ratio}});
  }
  std::printf(
      "%llu backup(s), %s logical, %llu chunk(s), %s stored: %.1fx (dedup and compression)\n",
      static_cast<unsigned long long>(s.backups), SizeText(s.logical_bytes).c_str(),
      static_cast<unsigned long long>(s.chunks), SizeText(s.stored_bytes).c_str(), ratio);
}

void CmdRepoServe(Context& ctx, const RepoArgs& a) {
  if (a.repo.empty()) Usage("no repository: give --repo PATH|URL or set BLKSNAP_REPO");
  json params = {{"repo", Location(a.repo)}, {"backup", a.backup}, {"loop", a.loop}};
  if (!a.key_file.empty()) params["key_file"] = Absolute(a.key_file);
  json r = ctx.Call("repo-serve", params);
  if (ctx.output.as_json) return ctx.output.Emit(r);
  std::printf("serving backup %s of %s (%s, read-only)\n", Str(r["backup"]).c_str(),
              Str(r["device"]).c_str(), SizeText(r["size"]).c_str());
  for (const char* front : {"nbd", "nbd_tcp", "fuse", "loop"}) {
    if (!r[front].is_null()) std::printf("  %-8s %s\n", front, Str(r[front]).c_str());
  }
}

void CmdRepoUnserve(Context& ctx, const RepoArgs& a) {
  ctx.Call("repo-unserve", {{"backup", a.backup}});
  if (ctx.output.as_json) return ctx.output.Emit({{"backup", a.backup}});
  std::printf("backup %s no longer served\n", a.backup.c_str());
}

}  // namespace

void AddRepoCommands(CLI::App& app, Context& ctx, RepoArgs& a,
                     const std::function<void(std::function<void()>)>& run) {
  auto repo_option = [&a](CLI::App* c) {
    c->add_option("--repo", a.repo,
                  "repository: directory, rados://... or s3://... ($BLKSNAP_REPO)")
        ->envname("BLKSNAP_REPO");
    c->add_option("--key-file", a.key_file, "key of an encrypted repository ($BLKSNAP_KEY_FILE)")
        ->envname("BLKSNAP_KEY_FILE");
  };
  auto threads = [&a](CLI::App* c) {
    c->add_option("--threads", a.threads,
                  "chunks in flight (default 4; a backup into s3://, a restore to a disk or block "
                  "device: 16)")
        ->check(CLI::Range(1, 64));
  };

  auto* backup =
      app.add_subcommand("backup", "back devices up into a repository (through blksnapd)");
  repo_option(backup);
  threads(backup);
  backup->add_flag("--full", a.full, "read everything even when CBT allows an incremental backup");
  backup->add_option("--snapshot", a.snapshot, "back up this taken snapshot instead of taking one");
  backup->add_option("--storage", a.storage,
                     "storage of the snapshot taken (default STATE_DIR/backup)");
  backup->add_option("DEVICE", a.devices, "device names")->required();
  backup->callback([&] { run([&] { CmdBackup(ctx, a); }); });

  auto* restore = app.add_subcommand("restore", "write a backup to a file or block device");
  repo_option(restore);
  threads(restore);
  restore->add_option("BACKUP", a.backup, "backup id (repo list)")->required();
  restore->add_option("TARGET", a.target, "file (created, sparse) or block device")->required();
  restore->add_flag("--verify", a.verify, "re-read the target and check every chunk");
  restore->add_flag("--check-digests", a.check_digests,
                    "re-hash every chunk as it is read (default: its checksum is checked)");
  restore->callback([&] { run([&] { CmdRestore(ctx, a); }); });

  auto* repo = app.add_subcommand("repo", "backup repositories");
  repo->require_subcommand(1);
  auto* init = repo->add_subcommand("init", "create a repository");
  init->add_option(
          "PATH", a.target,
          "directory (created), rados://POOL[/NS]?... or s3://BUCKET[/PREFIX]?... (bucket created)")
      ->required();
  init->add_flag("--encrypt", a.encrypt, "AES-256-GCM under a key derived from --key-file");
  init->add_option("--key-file", a.key_file, "key file (any bytes, e.g. 32 random ones)");
  init->add_option("--chunk-size", a.chunk_size, "chunk size (64K..64M, power of two; default 4M)");
  init->add_option("--zstd-level", a.zstd_level,
                   "zstd level of the chunks (-7..22, 0: not compressed; default 2)");
  init->add_option("--segment-size", a.segment_size,
                   "segment size (4K..chunk size, power of two, at most 1024 per chunk; default "
                   "64K; 0: a version-1 repository, whole chunks)");
  init->callback([&] { run([&] { CmdRepoInit(ctx, a); }); });
  auto* list = repo->add_subcommand("list", "backups in the repository");
  repo_option(list);
  list->add_option("DEVICE", a.device, "only this device's");
  list->callback([&] { run([&] { CmdRepoList(ctx, a); }); });
  auto* verify = repo->add_subcommand("verify", "re-read and re-hash every chunk of backups");
  repo_option(verify);
  threads(verify);
  verify->add_option("BACKUP", a.backups, "backup ids (default: all)");
  verify->add_flag("--repair", a.repair,
                   "move damaged chunks aside (bad/) and mark the backups they affect, so the "
                   "next backup of their devices is full and stores them anew");
  verify->add_option("--since", a.since,
                     "only backups made at or after TIME (RFC 3339 or yyyy-mm-dd)");
  verify->callback([&] { run([&] { CmdRepoVerify(ctx, a); }); });
  auto* prune = repo->add_subcommand("prune", "remove backups the retention policy does not keep");
  repo_option(prune);
  prune->add_option("--keep-last", a.keep_last, "the newest N of each device");
  prune->add_option("--keep-daily", a.keep_daily, "the newest of each of the last N days");
  prune->add_option("--keep-weekly", a.keep_weekly, "the newest of each of the last N weeks");
  prune->add_option("--keep-monthly", a.keep_monthly, "the newest of each of the last N months");
  prune->add_flag("--dry-run", a.dry_run, "only say what would be removed");
  prune->callback([&] { run([&] { CmdRepoPrune(ctx, a); }); });
  auto* gc = repo->add_subcommand("gc", "delete chunks no backup references");
  repo_option(gc);
  gc->callback([&] { run([&] { CmdRepoGc(ctx, a); }); });
  auto* serve = repo->add_subcommand(
      "serve", "expose a backup read-only through blksnapd (NBD export, FUSE file, loop device)");
  repo_option(serve);
  serve->add_option("BACKUP", a.backup, "backup id")->required();
  serve->add_flag("--loop", a.loop, "also a loop device (/dev/loopN) on its FUSE file");
  serve->callback([&] { run([&] { CmdRepoServe(ctx, a); }); });
  auto* unserve = repo->add_subcommand("unserve", "stop serving a backup");
  unserve->add_option("BACKUP", a.backup, "backup id")->required();
  unserve->callback([&] { run([&] { CmdRepoUnserve(ctx, a); }); });
  auto* stats = repo->add_subcommand("stats", "logical and stored bytes");
  repo_option(stats);
  stats->callback([&] { run([&] { CmdRepoStats(ctx, a); }); });
}

}  // namespace blksnap::cli
