// blksnap: the command-line tool. Every command is one or a few control-protocol requests
// (docs/cli.md, docs/control-protocol.md); the output is human-readable by default and exactly
// one JSON object with --json (`snapshot watch --json`: one object per line).
//
// This file is the wiring: the CLI11 command tree and its options, each subcommand's callback
// choosing the action (a Cmd* function of commands.h), and the error handling. Parsing runs the
// callbacks, which only record the action; the action runs after a successful parse.
//
// Errors: one line "blksnap: error: ..." on stderr and, with --json, the object
// {"error": {"errno", "message"}} alone on stdout; the exit status comes from the table in
// exit_codes.h (printed in the --help footer): usage errors (CLI11 parse failures, bad size,
// range, number) 2, no daemon 5, daemon errors by their errno. CLI11 reads every option before
// it reports a parse failure, so --json is known then too, wherever it stands.
#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdlib>
#include <exception>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/exit_codes.h"
#include "cli/repo_commands.h"
#include "control/protocol.h"

namespace blksnap::cli {
namespace {

int Failed(const Output& out, int code, int errnum, const std::string& message) {
  ShowError(out, errnum, message);
  return code;
}

int Main(int argc, char** argv) {
  CLI::App app{"blksnap: block-device snapshots and change tracking (talks to blksnapd)",
               "blksnap"};
  app.set_version_flag("--version", std::string("blksnap ") + BLKSNAP_VERSION);
  app.footer(ExitCodeHelp());
  Context ctx;
  const char* env = std::getenv("BLKSNAP_CONTROL");
  ctx.control = env && *env ? env : control::kDefaultControlPath;
  app.add_option("--control", ctx.control, "blksnapd control socket ($BLKSNAP_CONTROL)")
      ->capture_default_str();
  app.add_flag("--json", ctx.output.as_json,
               "print exactly one JSON object (a failure: {\"error\": {\"errno\", \"message\"}})");
  app.require_subcommand(1);
  app.fallthrough();

  std::function<int()> action;
  auto run = [&action](std::function<void()> f) {
    action = [f] {
      f();
      return 0;
    };
  };

  app.add_subcommand("version", "daemon and tool versions")->callback([&] {
    run([&] { CmdVersion(ctx); });
  });

  std::string attach_path, attach_name;
  BlockFronts attach_fronts;
  auto* attach = app.add_subcommand("attach", "start tracking a file or block device");
  attach->add_option("PATH", attach_path, "file or block device")->required();
  attach->add_option("--name", attach_name, "device name (default: the file's base name)");
  attach->add_flag("--loop", attach_fronts.loop, "also put a loop device on its FUSE front");
  attach->add_flag("--ublk", attach_fronts.ublk, "also expose it as a ublk device /dev/ublkbN");
  attach->add_flag("--blockdev", attach_fronts.blockdev,
                   "also expose it as a block device through the daemon's --frontend");
  attach->callback([&] { run([&] { CmdAttach(ctx, attach_path, attach_name, attach_fronts); }); });

  std::string detach_name;
  bool detach_force = false;
  auto* detach = app.add_subcommand("detach", "stop tracking a device");
  detach->add_option("NAME", detach_name)->required();
  detach->add_flag("--force", detach_force, "even while a front is in use");
  detach->callback([&] { run([&] { CmdDetach(ctx, detach_name, detach_force); }); });

  app.add_subcommand("devices", "list tracked devices")->callback([&] {
    run([&] { CmdDevices(ctx); });
  });

  auto* cbt = app.add_subcommand("cbt", "change-block tracking");
  cbt->require_subcommand(1);
  std::string cbt_name, cbt_output, cbt_since, cbt_generation, cbt_file;
  std::vector<std::string> cbt_ranges;
  auto* cbt_info = cbt->add_subcommand("info", "CBT parameters");
  cbt_info->add_option("NAME", cbt_name)->required();
  cbt_info->callback([&] { run([&] { CmdCbtInfo(ctx, cbt_name); }); });
  auto* cbt_read = cbt->add_subcommand("read", "save the read map (one byte per block)");
  cbt_read->add_option("NAME", cbt_name)->required();
  cbt_read->add_option("--output,-o", cbt_output, "file to write")->required();
  cbt_read->callback([&] { run([&] { CmdCbtRead(ctx, cbt_name, cbt_output); }); });
  auto* cbt_changes = cbt->add_subcommand("changes", "changed byte extents since a snap number");
  cbt_changes->add_option("NAME", cbt_name)->required();
  cbt_changes->add_option("--since", cbt_since, "snap number of the last backup (0..255)")
      ->required();
  cbt_changes->add_option("--generation", cbt_generation, "expected generation id");
  cbt_changes->callback(
      [&] { run([&] { CmdCbtChanges(ctx, cbt_name, cbt_since, cbt_generation); }); });
  auto* cbt_mark = cbt->add_subcommand("mark-dirty", "mark ranges changed");
  cbt_mark->add_option("NAME", cbt_name)->required();
  cbt_mark->add_option("--range", cbt_ranges, "OFFSET:LENGTH (sizes), repeatable");
  cbt_mark->add_option("--file", cbt_file,
                       "mark the extents of this file (FIEMAP); it must live on a file system "
                       "mounted from NAME's loop or ublk front");
  bool cbt_mark_force = false;
  cbt_mark->add_flag("--force", cbt_mark_force,
                     "with --file: skip that check (a file system mounted from NAME's NBD "
                     "export through the kernel NBD client, which blksnapd cannot see)");
  cbt_mark->callback(
      [&] { run([&] { CmdCbtMarkDirty(ctx, cbt_name, cbt_ranges, cbt_file, cbt_mark_force); }); });

  auto* snap = app.add_subcommand("snapshot", "snapshots");
  snap->require_subcommand(1);
  std::string snap_id, snap_storage, snap_limit, snap_device, snap_timeout;
  BlockFronts snap_fronts;
  std::vector<std::string> snap_devices;
  auto* create = snap->add_subcommand("create", "create a snapshot of devices");
  create
      ->add_option("--storage", snap_storage, "difference storage: directory, file or block device")
      ->required();
  create->add_option("--limit", snap_limit, "storage limit (size; 0 = none)")->required();
  create->add_flag("--loop", snap_fronts.loop, "put loop devices on the images");
  create->add_flag("--ublk", snap_fronts.ublk, "expose the images as ublk devices");
  create->add_flag("--blockdev", snap_fronts.blockdev,
                   "expose the images as block devices through the daemon's --frontend");
  bool snap_force = false;
  create->add_flag("--force", snap_force,
                   "use a storage that holds a file-system or partition signature or other data "
                   "(it is overwritten)");
  std::string snap_durability;
  create->add_option("--durability", snap_durability,
                     "what a taken snapshot survives: memory (nothing: it dies with blksnapd), "
                     "crash (a daemon crash or restart; the default), power (a power loss too)");
  create->add_option("DEVICE", snap_devices, "device names")->required();
  create->callback([&] {
    run([&] {
      CmdSnapshotCreate(ctx, snap_storage, snap_limit, snap_fronts, snap_devices, snap_force,
                        snap_durability);
    });
  });
  auto* add = snap->add_subcommand("add", "add a device before take");
  add->add_option("ID", snap_id)->required();
  add->add_option("DEVICE", snap_device)->required();
  add->callback([&] { run([&] { CmdSnapshotAdd(ctx, snap_id, snap_device); }); });
  auto* take = snap->add_subcommand("take", "take the snapshot");
  take->add_option("ID", snap_id)->required();
  take->callback([&] { run([&] { CmdSnapshotTake(ctx, snap_id); }); });
  bool destroy_force = false;
  auto* destroy = snap->add_subcommand("destroy", "destroy the snapshot");
  destroy->add_option("ID", snap_id)->required();
  destroy->add_flag("--force", destroy_force,
                    "even while a client uses an image (NBD connection, open FUSE file, "
                    "mounted loop or ublk device)");
  destroy->callback([&] { run([&] { CmdSnapshotDestroy(ctx, snap_id, destroy_force); }); });
  std::vector<std::string> rollback_devices;
  bool rollback_force = false, rollback_no_wait = false;
  auto* rollback = snap->add_subcommand(
      "rollback", "roll devices back to the snapshot (the original becomes its image)");
  rollback->add_option("ID", snap_id)->required();
  rollback->add_option("DEVICE", rollback_devices, "devices of the snapshot (default: all)");
  rollback->add_flag("--force", rollback_force,
                     "even with a file system mounted on a device's front (it cannot see its "
                     "data change: unmount first)");
  rollback->add_flag("--no-wait", rollback_no_wait,
                     "return once the devices serve the snapshot's data; the merge goes on");
  rollback->callback([&] {
    run([&] {
      CmdSnapshotRollback(ctx, snap_id, rollback_devices, rollback_force, rollback_no_wait);
    });
  });
  std::string abandon_device;
  auto* abandon = snap->add_subcommand(
      "abandon-rollback",
      "give up a rollback that cannot resume (its snapshot lost): the device stays partly rolled "
      "back");
  abandon->add_option("DEVICE", abandon_device)->required();
  abandon->callback([&] { run([&] { CmdSnapshotAbandonRollback(ctx, abandon_device); }); });
  auto* set_limit = snap->add_subcommand(
      "set-limit", "raise the storage limit of a live snapshot (answers a no_space event)");
  set_limit->add_option("ID", snap_id)->required();
  set_limit->add_option("SIZE", snap_limit, "new storage limit (size; 0 = none)")->required();
  set_limit->callback([&] { run([&] { CmdSnapshotSetLimit(ctx, snap_id, snap_limit); }); });
  snap->add_subcommand("list", "all snapshots")->callback([&] {
    run([&] { CmdSnapshotList(ctx); });
  });
  auto* info = snap->add_subcommand("info", "state, storage and images");
  info->add_option("ID", snap_id)->required();
  info->callback([&] { run([&] { CmdSnapshotInfo(ctx, snap_id); }); });
  auto* wait = snap->add_subcommand("wait-event", "wait for the next event");
  wait->add_option("ID", snap_id)->required();
  wait->add_option("--timeout", snap_timeout, "milliseconds")->required();
  wait->callback([&] { action = [&] { return CmdWaitEvent(ctx, snap_id, snap_timeout); }; });
  auto* watch = snap->add_subcommand("watch", "print events until corrupted or destroyed");
  watch->add_option("ID", snap_id)->required();
  watch->callback([&] { action = [&] { return CmdWatch(ctx, snap_id); }; });

  app.add_subcommand("status", "devices, snapshots, storage use and events")->callback([&] {
    run([&] { CmdStatus(ctx); });
  });

  RepoArgs repo_args;
  AddRepoCommands(app, ctx, repo_args, run);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion&) {
    std::cout << "blksnap " << BLKSNAP_VERSION << "\n";
    return 0;
  } catch (const CLI::ParseError& e) {
    std::string msg = e.what();
    if (msg.empty()) msg = "invalid command line";
    return Failed(ctx.output, kExitUsage, EINVAL, msg + " (see blksnap --help)");
  } catch (const CommandError& e) {
    return Failed(ctx.output, e.exit_code, e.errnum, e.message);
  }
  if (!action) {
    return Failed(ctx.output, kExitUsage, EINVAL, "no command given (see blksnap --help)");
  }
  try {
    return action();
  } catch (const CommandError& e) {
    return Failed(ctx.output, e.exit_code, e.errnum, e.message);
  } catch (const nlohmann::json::exception& e) {
    return Failed(ctx.output, kExitError, EPROTO,
                  std::string("unexpected answer from blksnapd: ") + e.what());
  } catch (const std::exception& e) {
    return Failed(ctx.output, kExitError, EIO, e.what());
  }
}

}  // namespace
}  // namespace blksnap::cli

int main(int argc, char** argv) { return blksnap::cli::Main(argc, argv); }
