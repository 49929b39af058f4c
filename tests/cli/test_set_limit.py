#!/usr/bin/python3
# Purpose: `blksnap snapshot set-limit ID SIZE` (blksnap's append-storage, Veeam's
# stretch_snapshot) answers a no_space event before the snapshot is corrupted: a snapshot whose
# limit was raised survives a write load that overflows the same limit on a snapshot left alone,
# and its image still holds the data of the take.
#
# Algorithm (needs FUSE, i.e. root and /dev/fuse; data through the FUSE fronts with the
# self-checking pattern): attach a and b (64 MiB each), stamp 32 MiB of both with seq 1, and
# take snapshot S of a and C of b, both with --limit 8M. Write 6 MiB of a (seq 2): more than
# half the limit used, so wait-event on S gives no_space. `set-limit S 64M` answers {"id",
# "limit"} (human form too) and snapshot info shows 64M. Write the rest of the 32 MiB of a and
# the same 32 MiB of b: S is taken without a device error, uses more than 8 MiB, its image reads
# seq 1 and the front seq 2; C (no set-limit) is corrupted. set-limit with a bad size is a usage
# error (2), of an unknown snapshot not found (3).
import errno
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from blksnap_cli_lib import (attach_written, fuse_test_main, json_error, taken_snapshot,
                             verify_front, wait_state, write_front)

MiB = 1 << 20
USAGE, NOT_FOUND = 2, 3  # src/cli/exit_codes.h


def run(d, t):
    storage = os.path.join(d.tmp, "storage")
    os.mkdir(storage)
    devs = attach_written(d, ("a", "b"), 64 * MiB, 32 * MiB)
    sid, info = taken_snapshot(d, storage, "8M", "a")
    image = info["devices"][0]["image"]
    control, _ = taken_snapshot(d, storage, "8M", "b")

    write_front(d, devs["a"], 0, 6 * MiB, 2)
    rc, out, err = d.cli("--json", "snapshot", "wait-event", sid, "--timeout", "10000")
    w = json.loads(out) if out.strip() else {}
    t.check(rc == 0 and w.get("event") == "no_space", "no_space after 6 MiB of an 8M limit: %r" % w)

    rc, out, err = d.cli("--json", "snapshot", "set-limit", sid, "64M")
    ans = json.loads(out) if rc == 0 and out.strip() else None
    t.check(ans == {"id": sid, "limit": 64 * MiB},
            "set-limit 64M answers {id, limit} (exit %d, %r %r)" % (rc, out.strip(), err.strip()))
    rc, out, err = d.cli("snapshot", "set-limit", sid, "64M")
    t.check(rc == 0 and sid in out and "64M" in out, "set-limit (human): %r" % (out.strip() or err))
    t.check(d.cli_json("snapshot", "info", sid)["storage"]["limit"] == 64 * MiB,
            "snapshot info shows the new limit")

    write_front(d, devs["a"], 6 * MiB, 26 * MiB, 2)
    write_front(d, devs["b"], 0, 32 * MiB, 2)
    info = d.cli_json("snapshot", "info", sid)
    t.check(info["state"] == "taken" and info["devices"][0]["error"] == 0,
            "after 32 MiB of writes the raised snapshot is still taken (%s, error %r, used %r)"
            % (info["state"], info["devices"][0]["error"], info["storage"]["used"]))
    t.check(info["storage"]["used"] > 8 * MiB, "it holds more than the old 8M limit")
    t.check(verify_front(d, image, 0, 32 * MiB, 1), "the image still reads the take (seq 1)")
    t.check(verify_front(d, devs["a"], 0, 32 * MiB, 2), "the front reads seq 2")
    state = wait_state(d, control, "corrupted")
    t.check(state == "corrupted", "the same load corrupts the snapshot left at 8M (%s)" % state)

    rc, out, err = d.cli("--json", "snapshot", "set-limit", sid, "12X")
    t.check(rc == USAGE and (json_error(out) or {}).get("errno") == errno.EINVAL,
            "set-limit with a bad size: usage error (exit %d)" % rc)
    rc, out, err = d.cli("--json", "snapshot", "set-limit", "0b6f5c0e-0000-4000-8000-000000000000",
                         "64M")
    t.check(rc == NOT_FOUND and (json_error(out) or {}).get("errno") == errno.ENOENT,
            "set-limit of an unknown snapshot: not found (exit %d, %r)" % (rc, out.strip()))

    for s in (sid, control):
        d.cli_json("snapshot", "destroy", s)
    for name in devs:
        d.cli_json("detach", name)
    t.check(d.alive(), "daemon still running")


if __name__ == "__main__":
    fuse_test_main(run)
