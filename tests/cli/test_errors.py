#!/usr/bin/python3
# Purpose: every error path of the CLI contract gives one clear `blksnap: error: ...` line on
# stderr, the documented exit status of its class (exit_codes.h, docs/cli.md: 1 other failure,
# 2 usage, 3 not found, 4 busy/refused, 5 no daemon), nothing on stdout without --json and
# exactly one {"error": {"errno", "message"}} object with --json, and leaves the daemon's state
# exactly as it was.
#
# Algorithm: start blksnapd, attach devices a and b, create snapshot S1 of a (taken) and S2 of
# b (created). For each bad command (unknown device, double attach by name and by path, a
# device into a second snapshot, take twice, destroy an unknown id, bad ids, bad sizes, bad
# ranges, wrong generation, a --since after the last take, detach while in a snapshot, unknown
# commands/options), record `devices` + `snapshot list` before, run it plain and with --json,
# check exit status, the single error line and its key words, the JSON error object (its errno
# where the class fixes one) and the state after against the state before. Then point the CLI
# at a socket where no daemon runs, and check that `blksnap --help` prints the exit-status table.
import errno
import os
import re
import subprocess
import sys
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from blksnap_cli_lib import daemon_test_main, json_error

MiB = 1 << 20


def main():
    daemon_test_main(run)


# The exit statuses of src/cli/exit_codes.h.
ERROR, USAGE, NOT_FOUND, BUSY, NO_DAEMON = 1, 2, 3, 4, 5
# The errnos a class implies (None: any).
CLASS_ERRNOS = {USAGE: {errno.EINVAL}, NOT_FOUND: {errno.ENOENT, errno.ENODEV},
                BUSY: {errno.EBUSY, errno.EEXIST, errno.EALREADY, errno.EPERM, errno.EACCES}}


def check_json_error(t, rc, out, err, code, what, errnum=None, words=()):
    e = json_error(out)
    allowed = {errnum} if errnum is not None else CLASS_ERRNOS.get(code)
    ok = (rc == code and e is not None and e["errno"] > 0
          and (allowed is None or e["errno"] in allowed)
          and all(w.lower() in e["message"].lower() for w in words)
          and err == "blksnap: error: " + e["message"] + "\n")
    t.check(ok, "%s with --json: exit %d, one error object %r, the same line on stderr"
            % (what, rc, out.strip()))


def expect_error(d, t, argv, code, words, what, errnum=None):
    before = d.state_snapshot()
    rc, out, err = d.cli(*argv)
    lines = [x for x in err.splitlines() if x.strip()]
    ok = (rc == code and len(lines) == 1 and lines[0].startswith("blksnap: error: ")
          and out == "" and all(w.lower() in lines[0].lower() for w in words))
    t.check(ok, "%s -> exit %d, %r" % (what, rc, lines[0] if lines else err))
    after = d.state_snapshot()
    t.check(before == after, "%s leaves the state unchanged" % what)
    # --json: the error object alone on stdout, the human line still on stderr.
    rc2, out2, err2 = d.cli("--json", *argv)
    check_json_error(t, rc2, out2, err2, code, what, errnum, words)


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
    expect_error(d, t, ["detach", "nope"], NOT_FOUND, ["nope"], "detach unknown device")
    expect_error(d, t, ["cbt", "info", "nope"], NOT_FOUND, ["no device", "nope"], "cbt info unknown device")
    expect_error(d, t, ["cbt", "changes", "nope", "--since", "0"], NOT_FOUND, ["nope"], "cbt changes unknown device")
    expect_error(d, t, ["cbt", "read", "nope", "--output", os.path.join(d.tmp, "m")], NOT_FOUND, ["nope"],
                 "cbt read unknown device")
    expect_error(d, t, ["cbt", "mark-dirty", "nope", "--range", "0:4K"], NOT_FOUND, ["nope"], "mark-dirty unknown device")
    expect_error(d, t, ["snapshot", "create", "--storage", storage, "--limit", "1G", "nope"], NOT_FOUND, ["nope"],
                 "snapshot create with an unknown device")
    expect_error(d, t, ["snapshot", "add", s2, "nope"], NOT_FOUND, ["nope"], "snapshot add unknown device")
    expect_error(d, t, ["attach", os.path.join(d.tmp, "missing.img")], NOT_FOUND, ["missing.img"],
                 "attach a file that does not exist")
    expect_error(d, t, ["attach", d.tmp], ERROR, ["not a regular file"], "attach a directory",
                 errnum=errno.EINVAL)

    # Double attach.
    expect_error(d, t, ["attach", b_path, "--name", "a"], BUSY, ["already attached"], "attach a taken name")
    expect_error(d, t, ["attach", a_path, "--name", "a2"], BUSY, ["already attached", "'a'"],
                 "attach the same file twice")
    c_path = d.make_image("c.img", 16 * MiB)
    expect_error(d, t, ["attach", c_path, "--name", "x/y"], ERROR, ["invalid device name"], "attach a bad name")
    expect_error(d, t, ["attach", c_path, "--name", "x@y"], ERROR, ["invalid device name"], "attach a name with @")

    # A device in a snapshot not yet taken joins no other (in taken ones it may: several
    # snapshots per device, test_multi_snapshots.py).
    expect_error(d, t, ["snapshot", "create", "--storage", storage, "--limit", "64M", "b"], BUSY,
                 ["not taken yet", s2], "snapshot create with a device in a snapshot not yet taken")
    expect_error(d, t, ["snapshot", "add", s1, "b"], BUSY, ["not taken yet", s2],
                 "snapshot add a device of a snapshot not yet taken")
    expect_error(d, t, ["snapshot", "add", s2, "b"], BUSY, ["already in snapshot"], "snapshot add twice")
    expect_error(d, t, ["snapshot", "create", "--storage", storage, "--limit", "64M", "b", "b"], BUSY, [],
                 "snapshot create listing a device twice")

    # Take twice, add after take.
    expect_error(d, t, ["snapshot", "take", s1], BUSY, ["already", "taken"], "take twice")
    expect_error(d, t, ["snapshot", "take", unknown_id], NOT_FOUND, ["no snapshot"], "take an unknown id")

    # Destroy / info / wait on unknown or malformed ids.
    expect_error(d, t, ["snapshot", "destroy", unknown_id], NOT_FOUND, ["no snapshot", unknown_id], "destroy an unknown id")
    expect_error(d, t, ["snapshot", "destroy", "not-a-uuid"], ERROR, ["invalid snapshot id"], "destroy a malformed id")
    expect_error(d, t, ["snapshot", "info", unknown_id], NOT_FOUND, ["no snapshot"], "info on an unknown id")
    expect_error(d, t, ["snapshot", "wait-event", unknown_id, "--timeout", "10"], NOT_FOUND, ["no snapshot"],
                 "wait-event on an unknown id")

    # Detach while in a snapshot.
    expect_error(d, t, ["detach", "a"], BUSY, ["in snapshot"], "detach a device in a snapshot")
    expect_error(d, t, ["detach", "a", "--force"], BUSY, ["in snapshot"], "detach --force a device in a snapshot")

    # Bad sizes (usage errors).
    for bad in ("12X", "-5", "abc", "1.5", "99999999999999999999", ""):
        expect_error(d, t, ["snapshot", "create", "--storage", storage, "--limit", bad, "b"], USAGE,
                     ["--limit"], "bad size %r" % bad)
    # Bad ranges: malformed ones are usage errors, ranges past the end are errors.
    for bad in ("5", "0:0", "x:4K", "4K:", "1:2:3"):
        expect_error(d, t, ["cbt", "mark-dirty", "a", "--range", bad], USAGE, ["range"], "bad range %r" % bad)
    expect_error(d, t, ["cbt", "mark-dirty", "a", "--range", "16M:4K"], ERROR, ["past the end"],
                 "range starting at the end")
    expect_error(d, t, ["cbt", "mark-dirty", "a", "--range", "0:4K", "--range", "15M:2M"], ERROR,
                 ["past the end"], "a good and a bad range (nothing marked)")
    expect_error(d, t, ["cbt", "mark-dirty", "a", "--range", "18446744073709551615:1"], USAGE, ["range"],
                 "range overflowing 64 bits")
    expect_error(d, t, ["cbt", "mark-dirty", "a"], USAGE, ["--range", "--file"], "mark-dirty without ranges")
    expect_error(d, t, ["cbt", "changes", "a", "--since", "256"], USAGE, ["--since"], "since out of range")
    expect_error(d, t, ["cbt", "changes", "a", "--since", "x"], USAGE, ["--since"], "since not a number")
    expect_error(d, t, ["snapshot", "wait-event", s2, "--timeout", "soon"], USAGE, ["--timeout"], "bad timeout")

    # Wrong generation.
    other = str(uuid.uuid4())
    expect_error(d, t, ["cbt", "changes", "a", "--since", "0", "--generation", other], ERROR,
                 ["generation changed", "full backup"], "changes with a stale generation",
                 errnum=errno.ESTALE)
    expect_error(d, t, ["cbt", "changes", "a", "--since", "0", "--generation", "zz"], USAGE, ["generation"],
                 "changes with a malformed generation")
    t.check(d.cli_json("cbt", "info", "a")["generation_id"] == gen, "generation unchanged by the errors")

    # A snap number after the last take is a script's mistake, not "no changes": a is at 1 (S1
    # taken), b at 0 (S2 not taken); the current number itself is fine (nothing changed since).
    expect_error(d, t, ["cbt", "changes", "a", "--since", "2"], ERROR, ["after the last take"],
                 "changes since a number after the last take", errnum=errno.EINVAL)
    expect_error(d, t, ["cbt", "changes", "b", "--since", "1"], ERROR, ["after the last take"],
                 "changes since 1 on a device never taken", errnum=errno.EINVAL)
    t.check(d.cli_json("cbt", "changes", "a", "--since", "1")["extents"] == [],
            "changes since the current number: no extents, no error")

    # Usage errors.
    expect_error(d, t, ["frobnicate"], USAGE, [], "unknown command")
    expect_error(d, t, ["devices", "--bogus"], USAGE, [], "unknown option")
    expect_error(d, t, ["snapshot", "create", "--limit", "1G", "b"], USAGE, ["--storage"], "missing --storage")
    expect_error(d, t, ["attach"], USAGE, ["PATH"], "attach without a path")
    # --json after the word that fails to parse still gives the JSON error object.
    for argv in (["frobnicate", "--json"], ["devices", "--bogus", "--json"],
                 ["snapshot", "create", "--limit", "1G", "b", "--json"]):
        rc, out, err = d.cli(*argv)
        check_json_error(t, rc, out, err, USAGE, "%s (--json last)" % " ".join(argv))

    # A daemon that is not running.
    missing = os.path.join(d.tmp, "no-daemon.sock")
    for argv in (["version"], ["devices"], ["snapshot", "list"], ["status"]):
        rc, out, err = d.cli(*argv, control=missing)
        t.check(rc == NO_DAEMON and out == "" and err.startswith("blksnap: error: cannot connect")
                and "is blksnapd running" in err and err.count("\n") == 1,
                "%s without a daemon: exit %d, %r" % (argv[0], rc, err.strip()))
        rc, out, err = d.cli("--json", *argv, control=missing)
        check_json_error(t, rc, out, err, NO_DAEMON, "%s without a daemon" % argv[0],
                         errnum=errno.ENOENT, words=["cannot connect", "is blksnapd running"])
    # A socket file nobody listens on: ECONNREFUSED, the same class.
    import socket
    dead = os.path.join(d.tmp, "dead.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(dead)
    s.close()
    rc, out, err = d.cli("--json", "devices", control=dead)
    check_json_error(t, rc, out, err, NO_DAEMON, "devices on a dead socket",
                     errnum=errno.ECONNREFUSED, words=["cannot connect"])

    # --help documents the table: every class with its number.
    p = subprocess.run([d.args["blksnap"], "--help"], capture_output=True, text=True)
    table = dict(re.findall(r"^  (\d)  ([a-z ]+?)  ", p.stdout, re.M))
    want = {"0": "ok", "1": "error", "2": "usage", "3": "not found", "4": "refused",
            "5": "no daemon", "6": "timeout", "7": "corrupted"}
    t.check(p.returncode == 0 and table == want, "--help lists the exit statuses: %r" % table)

    # Clean up in order; the daemon is healthy after all of this.
    d.cli_json("snapshot", "destroy", s1)
    d.cli_json("snapshot", "destroy", s2)
    d.cli_json("detach", "a")
    d.cli_json("detach", "b")
    t.check(d.state_snapshot() == {"devices": [], "snapshots": []}, "empty state at the end")
    t.check(d.alive(), "daemon still running")


if __name__ == "__main__":
    main()
