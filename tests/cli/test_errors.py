#!/usr/bin/python3
# Purpose: every error path of the CLI contract gives one clear `blksnap: error: ...` line on
# stderr, the documented exit status (1 for errors, 2 for usage errors), nothing on stdout, and
# leaves the daemon's state exactly as it was.
#
# Algorithm: start blksnapd, attach devices a and b, create snapshot S1 of a (taken) and S2 of
# b (created). For each bad command (unknown device, double attach by name and by path, a
# device into a second snapshot, take twice, destroy an unknown id, bad ids, bad sizes, bad
# ranges, wrong generation, detach while in a snapshot, unknown commands/options), record
# `devices` + `snapshot list` before, run it, check exit status, the single error line and
# its key words, then compare the state after with the state before. Finally point the CLI
# at a socket where no daemon runs.
import os
import sys
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from blksnap_cli_lib import Daemon, Failures, parse_args

MiB = 1 << 20


def main():
    args = parse_args(sys.argv)
    t = Failures()
    d = Daemon(args, fuse=False).start()
    try:
        run(d, t)
    except Exception as e:
        t.check(False, "unexpected exception: %r\n%s" % (e, d.log_text()))
    finally:
        d.cleanup()
    t.done()


def expect_error(d, t, argv, code, words, what):
    before = d.state_snapshot()
    rc, out, err = d.cli(*argv)
    lines = [x for x in err.splitlines() if x.strip()]
    ok = (rc == code and len(lines) == 1 and lines[0].startswith("blksnap: error: ")
          and out == "" and all(w.lower() in lines[0].lower() for w in words))
    t.check(ok, "%s -> exit %d, %r" % (what, rc, lines[0] if lines else err))
    after = d.state_snapshot()
    t.check(before == after, "%s leaves the state unchanged" % what)
    # --json changes nothing about errors: still one line on stderr, nothing on stdout.
    rc2, out2, err2 = d.cli("--json", *argv)
    t.check(rc2 == code and out2 == "" and err2.startswith("blksnap: error: "),
            "%s with --json: same error, empty stdout" % what)


def run(d, t):
    a_path = d.make_image("a.img", 16 * MiB)
    b_path = d.make_image("b.img", 16 * MiB)
    d.cli_json("attach", a_path, "--name", "a")
    d.cli_json("attach", b_path, "--name", "b")
    storage = os.path.join(d.tmp, "storage")
    os.mkdir(storage)
    s1 = d.cli_json("snapshot", "create", "--storage", storage, "--limit", "64M", "a")["id"]
    d.cli_json("snapshot", "take", s1)
    s2 = d.cli_json("snapshot", "create", "--storage", storage, "--limit", "64M", "b")["id"]
    gen = d.cli_json("cbt", "info", "a")["generation_id"]
    unknown_id = str(uuid.uuid4())

    # Unknown device.
    expect_error(d, t, ["detach", "nope"], 1, ["nope"], "detach unknown device")
    expect_error(d, t, ["cbt", "info", "nope"], 1, ["no device", "nope"], "cbt info unknown device")
    expect_error(d, t, ["cbt", "changes", "nope", "--since", "0"], 1, ["nope"], "cbt changes unknown device")
    expect_error(d, t, ["cbt", "read", "nope", "--output", os.path.join(d.tmp, "m")], 1, ["nope"],
                 "cbt read unknown device")
    expect_error(d, t, ["cbt", "mark-dirty", "nope", "--range", "0:4K"], 1, ["nope"], "mark-dirty unknown device")
    expect_error(d, t, ["snapshot", "create", "--storage", storage, "--limit", "1G", "nope"], 1, ["nope"],
                 "snapshot create with an unknown device")
    expect_error(d, t, ["snapshot", "add", s2, "nope"], 1, ["nope"], "snapshot add unknown device")
    expect_error(d, t, ["attach", os.path.join(d.tmp, "missing.img")], 1, ["missing.img"],
                 "attach a file that does not exist")
    expect_error(d, t, ["attach", d.tmp], 1, ["not a regular file"], "attach a directory")

    # Double attach.
    expect_error(d, t, ["attach", b_path, "--name", "a"], 1, ["already attached"], "attach a taken name")
    expect_error(d, t, ["attach", a_path, "--name", "a2"], 1, ["already attached", "'a'"],
                 "attach the same file twice")
    c_path = d.make_image("c.img", 16 * MiB)
    expect_error(d, t, ["attach", c_path, "--name", "x/y"], 1, ["invalid device name"], "attach a bad name")
    expect_error(d, t, ["attach", c_path, "--name", "x@y"], 1, ["invalid device name"], "attach a name with @")

    # A device in two snapshots.
    expect_error(d, t, ["snapshot", "create", "--storage", storage, "--limit", "64M", "a"], 1,
                 ["already in snapshot", s1], "snapshot create with a device in another snapshot")
    expect_error(d, t, ["snapshot", "add", s2, "a"], 1, ["already in snapshot", s1],
                 "snapshot add a device of another snapshot")
    expect_error(d, t, ["snapshot", "add", s2, "b"], 1, ["already in snapshot"], "snapshot add twice")
    expect_error(d, t, ["snapshot", "create", "--storage", storage, "--limit", "64M", "b", "b"], 1, [],
                 "snapshot create listing a device twice")

    # Take twice, add after take.
    expect_error(d, t, ["snapshot", "take", s1], 1, ["already", "taken"], "take twice")
    expect_error(d, t, ["snapshot", "take", unknown_id], 1, ["no snapshot"], "take an unknown id")

    # Destroy / info / wait on unknown or malformed ids.
    expect_error(d, t, ["snapshot", "destroy", unknown_id], 1, ["no snapshot", unknown_id], "destroy an unknown id")
    expect_error(d, t, ["snapshot", "destroy", "not-a-uuid"], 1, ["invalid snapshot id"], "destroy a malformed id")
    expect_error(d, t, ["snapshot", "info", unknown_id], 1, ["no snapshot"], "info on an unknown id")
    expect_error(d, t, ["snapshot", "wait-event", unknown_id, "--timeout", "10"], 1, ["no snapshot"],
                 "wait-event on an unknown id")

    # Detach while in a snapshot.
    expect_error(d, t, ["detach", "a"], 1, ["in snapshot"], "detach a device in a snapshot")
    expect_error(d, t, ["detach", "a", "--force"], 1, ["in snapshot"], "detach --force a device in a snapshot")

    # Bad sizes (usage errors).
    for bad in ("12X", "-5", "abc", "1.5", "99999999999999999999", ""):
        expect_error(d, t, ["snapshot", "create", "--storage", storage, "--limit", bad, "b"], 2,
                     ["--limit"], "bad size %r" % bad)
    # Bad ranges: malformed ones are usage errors, ranges past the end are errors.
    for bad in ("5", "0:0", "x:4K", "4K:", "1:2:3"):
        expect_error(d, t, ["cbt", "mark-dirty", "a", "--range", bad], 2, ["range"], "bad range %r" % bad)
    expect_error(d, t, ["cbt", "mark-dirty", "a", "--range", "16M:4K"], 1, ["past the end"],
                 "range starting at the end")
    expect_error(d, t, ["cbt", "mark-dirty", "a", "--range", "0:4K", "--range", "15M:2M"], 1,
                 ["past the end"], "a good and a bad range (nothing marked)")
    expect_error(d, t, ["cbt", "mark-dirty", "a", "--range", "18446744073709551615:1"], 2, ["range"],
                 "range overflowing 64 bits")
    expect_error(d, t, ["cbt", "mark-dirty", "a"], 2, ["--range", "--file"], "mark-dirty without ranges")
    expect_error(d, t, ["cbt", "changes", "a", "--since", "256"], 2, ["--since"], "since out of range")
    expect_error(d, t, ["cbt", "changes", "a", "--since", "x"], 2, ["--since"], "since not a number")
    expect_error(d, t, ["snapshot", "wait-event", s2, "--timeout", "soon"], 2, ["--timeout"], "bad timeout")

    # Wrong generation.
    other = str(uuid.uuid4())
    expect_error(d, t, ["cbt", "changes", "a", "--since", "0", "--generation", other], 1,
                 ["generation changed", "full backup"], "changes with a stale generation")
    expect_error(d, t, ["cbt", "changes", "a", "--since", "0", "--generation", "zz"], 2, ["generation"],
                 "changes with a malformed generation")
    t.check(d.cli_json("cbt", "info", "a")["generation_id"] == gen, "generation unchanged by the errors")

    # Usage errors.
    expect_error(d, t, ["frobnicate"], 2, [], "unknown command")
    expect_error(d, t, ["devices", "--bogus"], 2, [], "unknown option")
    expect_error(d, t, ["snapshot", "create", "--limit", "1G", "b"], 2, ["--storage"], "missing --storage")
    expect_error(d, t, ["attach"], 2, ["PATH"], "attach without a path")

    # A daemon that is not running.
    missing = os.path.join(d.tmp, "no-daemon.sock")
    for argv in (["version"], ["devices"], ["snapshot", "list"], ["status"]):
        rc, out, err = d.cli(*argv, control=missing)
        t.check(rc == 1 and out == "" and err.startswith("blksnap: error: cannot connect")
                and "is blksnapd running" in err and err.count("\n") == 1,
                "%s without a daemon: %r" % (argv[0], err.strip()))

    # Clean up in order; the daemon is healthy after all of this.
    d.cli_json("snapshot", "destroy", s1)
    d.cli_json("snapshot", "destroy", s2)
    d.cli_json("detach", "a")
    d.cli_json("detach", "b")
    t.check(d.state_snapshot() == {"devices": [], "snapshots": []}, "empty state at the end")
    t.check(d.alive(), "daemon still running")


if __name__ == "__main__":
    main()
