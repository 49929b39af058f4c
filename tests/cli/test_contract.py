#!/usr/bin/python3
# Purpose: the outcomes a backup script acts on beyond plain errors (test_errors.py): a
# wait-event that times out exits 6 with its result on stdout; `snapshot watch` on a corrupted
# snapshot exits 7 with the corrupted event last; `snapshot destroy` is refused (exit 4, EBUSY,
# "(use --force)") while a client holds an image open, and goes through with --force.
#
# Algorithm (needs FUSE, i.e. root and /dev/fuse; data through the FUSE fronts with the
# self-checking pattern): attach a and b (64 MiB each) and stamp 32 MiB of both with seq 1.
# 1. Snapshot D of b, taken; hold its FUSE image file open: destroy -> exit 4 + the JSON error
#    object, D still listed; destroy --force with the file still open -> 0, D gone.
# 2. Snapshot C of a with --limit 8M, taken: wait-event --timeout 50 -> exit 6 (both forms).
#    Write 32 MiB of a (seq 2): C overflows and is corrupted; `snapshot watch` (--json and
#    human) exits 7 with the corrupted event last; the original reads seq 2.
# `snapshot set-limit`, which saves such a snapshot, is test_set_limit.py.
import errno
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from blksnap_cli_lib import (attach_written, fuse_test_main, json_error, taken_snapshot,
                             verify_front, wait_state, write_front)

MiB = 1 << 20
BUSY, TIMEOUT, CORRUPTED = 4, 6, 7  # src/cli/exit_codes.h


def run(d, t):
    storage = os.path.join(d.tmp, "storage")
    os.mkdir(storage)
    devs = attach_written(d, ("a", "b"), 64 * MiB, 32 * MiB)

    destroy_in_use(d, t, storage, devs)
    timeout_and_corrupted(d, t, storage, devs)
    for name in devs:
        d.cli_json("detach", name)
    t.check(d.alive(), "daemon still running")


def destroy_in_use(d, t, storage, devs):
    sid, info = taken_snapshot(d, storage, "64M", "b")
    image = info["devices"][0]["image"]["fuse"]
    with open(image, "rb") as held:
        held.read(4096)
        rc, out, err = d.cli("--json", "snapshot", "destroy", sid)
        e = json_error(out) or {}
        t.check(rc == BUSY and e.get("errno") == errno.EBUSY
                and e.get("message", "").endswith("(use --force)") and "is open" in e["message"]
                and err.startswith("blksnap: error: "),
                "destroy while the image file is open: refused (exit %d, %r)" % (rc, out.strip()))
        t.check(any(s["id"] == sid for s in d.cli_json("snapshot", "list")["snapshots"]),
                "the refused destroy left the snapshot")
        rc, out, err = d.cli("snapshot", "destroy", sid)
        t.check(rc == BUSY and out == "" and "(use --force)" in err,
                "destroy while in use (human): exit %d, %r" % (rc, err.strip()))
        rc, out, err = d.cli("--json", "snapshot", "destroy", sid, "--force")
        t.check(rc == 0 and json.loads(out or "null") == {},
                "destroy --force with the image file still open (exit %d, %r %r)"
                % (rc, out.strip(), err.strip()))
    t.check(all(s["id"] != sid for s in d.cli_json("snapshot", "list")["snapshots"]),
            "destroy --force removed the snapshot")


def timeout_and_corrupted(d, t, storage, devs):
    sid, _ = taken_snapshot(d, storage, "8M", "a")
    rc, out, err = d.cli("--json", "snapshot", "wait-event", sid, "--timeout", "50")
    t.check(rc == TIMEOUT and json.loads(out or "{}").get("result") == "timeout" and err == "",
            "wait-event without an event: exit %d (6), %r" % (rc, out.strip()))
    rc, out, err = d.cli("snapshot", "wait-event", sid, "--timeout", "50")
    t.check(rc == TIMEOUT and "timeout" in out and err == "", "wait-event timeout (human): exit %d" % rc)

    write_front(d, devs["a"], 0, 32 * MiB, 2)
    state = wait_state(d, sid, "corrupted")
    t.check(state == "corrupted", "32 MiB of writes overflow an 8M limit (state %s)" % state)
    rc, out, err = d.cli("--json", "snapshot", "watch", sid)
    lines = [json.loads(x) for x in out.splitlines() if x.strip()]
    t.check(rc == CORRUPTED and lines and lines[-1].get("event") == "corrupted",
            "watch on the corrupted snapshot: exit %d (7), last %r" % (rc, lines[-1] if lines else None))
    rc, out, err = d.cli("snapshot", "watch", sid)
    t.check(rc == CORRUPTED and "corrupted" in (out.splitlines() or [""])[-1],
            "watch (human) on the corrupted snapshot: exit %d, %r" % (rc, out.strip()))
    d.cli_json("snapshot", "destroy", sid)
    t.check(verify_front(d, devs["a"], 0, 32 * MiB, 2), "the original is whole after the overflow")


if __name__ == "__main__":
    fuse_test_main(run)
