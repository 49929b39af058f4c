#!/usr/bin/python3
# Purpose: the outcomes a backup script acts on, beyond plain errors (test_errors.py): a
# wait-event that times out exits 6 with its result on stdout; `snapshot watch` on a corrupted
# snapshot exits 7; `snapshot destroy` is refused (exit 4, EBUSY, "(use --force)") while a
# client holds an image open and goes through with --force; and `snapshot set-limit` answers a
# no_space event so that the snapshot survives a write load that overflows the same limit on a
# snapshot left alone.
#
# Algorithm (needs FUSE, i.e. root and /dev/fuse; data through the FUSE fronts with the
# self-checking pattern): attach a and b (64 MiB each) and stamp 32 MiB of both with seq 1.
# 1. Snapshot D of b, taken; hold its FUSE image file open: destroy -> exit 4 + the JSON error
#    object, D still listed; destroy --force with the file still open -> 0, D gone.
# 2. Snapshot S of a with --limit 8M, taken: wait-event --timeout 50 -> exit 6 (both forms).
#    Write 6 MiB of a (seq 2): wait-event gives no_space; set-limit S 64M answers {"id",
#    "limit"}; write the rest of the 32 MiB: S is still taken without a device error, its image
#    reads seq 1, the front seq 2.
# 3. Snapshot C of b with the same 8M limit, taken, the same 32 MiB written, no set-limit: C is
#    corrupted; `snapshot watch` (--json and human) exits 7 with the corrupted event last.
# set-limit's usage and not-found errors are checked too.
import errno
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from blksnap_cli_lib import SKIP, Daemon, Failures, fuse_possible, parse_args, verify_front, write_front

MiB = 1 << 20
BUSY, NOT_FOUND, USAGE, TIMEOUT, CORRUPTED = 4, 3, 2, 6, 7


def main():
    args = parse_args(sys.argv)
    if not fuse_possible():
        print("SKIP: needs root, /dev/fuse and /dev/loop-control")
        sys.exit(SKIP)
    t = Failures()
    d = Daemon(args, fuse=True).start()
    try:
        run(d, t)
    except Exception as e:
        t.check(False, "unexpected exception: %r\n%s" % (e, d.log_text()))
    finally:
        d.cleanup()
    t.done()


def error_object(out):
    try:
        j = json.loads(out)
    except ValueError:
        return {}
    return j.get("error", {}) if isinstance(j, dict) and list(j) == ["error"] else {}


def snapshot(d, storage, limit, device):
    sid = d.cli_json("snapshot", "create", "--storage", storage, "--limit", limit, device)["id"]
    d.cli_json("snapshot", "take", sid)
    return sid, d.cli_json("snapshot", "info", sid)


def run(d, t):
    storage = os.path.join(d.tmp, "storage")
    os.mkdir(storage)
    devs = {}
    for name in ("a", "b"):
        devs[name] = d.cli_json("attach", d.make_image(name + ".img", 64 * MiB), "--name", name)
        write_front(d, devs[name], 0, 32 * MiB, 1)

    destroy_in_use(d, t, storage, devs)
    sid = set_limit_answers_no_space(d, t, storage, devs)
    overflow_without_set_limit(d, t, storage, devs)

    d.cli_json("snapshot", "destroy", sid)
    for name in devs:
        d.cli_json("detach", name)
    t.check(d.alive(), "daemon still running")


def destroy_in_use(d, t, storage, devs):
    sid, info = snapshot(d, storage, "64M", "b")
    image = info["devices"][0]["image"]["fuse"]
    with open(image, "rb") as held:
        held.read(4096)
        rc, out, err = d.cli("--json", "snapshot", "destroy", sid)
        e = error_object(out)
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


def wait_event(d, sid, timeout_ms):
    rc, out, err = d.cli("--json", "snapshot", "wait-event", sid, "--timeout", str(timeout_ms))
    return rc, json.loads(out) if out.strip() else {}


def set_limit_answers_no_space(d, t, storage, devs):
    sid, info = snapshot(d, storage, "8M", "a")
    image = info["devices"][0]["image"]

    rc, w = wait_event(d, sid, 50)
    t.check(rc == TIMEOUT and w.get("result") == "timeout",
            "wait-event without an event: exit %d (6), %r" % (rc, w))
    rc, out, err = d.cli("snapshot", "wait-event", sid, "--timeout", "50")
    t.check(rc == TIMEOUT and "timeout" in out and err == "", "wait-event timeout (human): exit %d" % rc)

    # Half the limit used raises no_space; the snapshot is still fine.
    write_front(d, devs["a"], 0, 6 * MiB, 2)
    rc, w = wait_event(d, sid, 10000)
    t.check(rc == 0 and w.get("event") == "no_space", "no_space after 6 MiB of an 8M limit: %r" % w)

    rc, out, err = d.cli("--json", "snapshot", "set-limit", sid, "64M")
    ans = json.loads(out) if rc == 0 and out.strip() else None
    t.check(ans == {"id": sid, "limit": 64 * MiB},
            "set-limit 64M answers {id, limit} (exit %d, %r %r)" % (rc, out.strip(), err.strip()))
    rc, out, err = d.cli("snapshot", "set-limit", sid, "64M")
    t.check(rc == 0 and sid in out and "64M" in out, "set-limit (human): %r" % out.strip())
    t.check(d.cli_json("snapshot", "info", sid)["storage"]["limit"] == 64 * MiB,
            "snapshot info shows the new limit")

    write_front(d, devs["a"], 6 * MiB, 26 * MiB, 2)
    info = d.cli_json("snapshot", "info", sid)
    t.check(info["state"] == "taken" and info["devices"][0]["error"] == 0,
            "after 32 MiB of writes the raised snapshot is still taken (%s, error %r, used %r)"
            % (info["state"], info["devices"][0]["error"], info["storage"]["used"]))
    t.check(info["storage"]["used"] > 8 * MiB, "it holds more than the old 8M limit")
    t.check(verify_front(d, image, 0, 32 * MiB, 1), "the image still reads the take (seq 1)")
    t.check(verify_front(d, devs["a"], 0, 32 * MiB, 2), "the front reads seq 2")

    rc, out, err = d.cli("--json", "snapshot", "set-limit", sid, "12X")
    t.check(rc == USAGE and error_object(out).get("errno") == errno.EINVAL,
            "set-limit with a bad size: usage error (exit %d)" % rc)
    rc, out, err = d.cli("--json", "snapshot", "set-limit", "0b6f5c0e-0000-4000-8000-000000000000",
                         "64M")
    t.check(rc == NOT_FOUND and error_object(out).get("errno") == errno.ENOENT,
            "set-limit of an unknown snapshot: not found (exit %d, %r)" % (rc, out.strip()))
    return sid


def overflow_without_set_limit(d, t, storage, devs):
    sid, _ = snapshot(d, storage, "8M", "b")
    write_front(d, devs["b"], 0, 32 * MiB, 2)
    state = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = d.cli_json("snapshot", "info", sid)["state"]
        if state == "corrupted":
            break
        time.sleep(0.1)
    t.check(state == "corrupted", "the same load corrupts a snapshot left at 8M (state %s)" % state)

    rc, out, err = d.cli("--json", "snapshot", "watch", sid)
    lines = [json.loads(x) for x in out.splitlines() if x.strip()]
    t.check(rc == CORRUPTED and lines and lines[-1].get("event") == "corrupted",
            "watch on the corrupted snapshot: exit %d (7), last %r" % (rc, lines[-1] if lines else None))
    rc, out, err = d.cli("snapshot", "watch", sid)
    t.check(rc == CORRUPTED and "corrupted" in out.splitlines()[-1] if out else False,
            "watch (human) on the corrupted snapshot: exit %d" % rc)
    d.cli_json("snapshot", "destroy", sid)
    t.check(verify_front(d, devs["b"], 0, 32 * MiB, 2), "the original b is whole after the overflow")


if __name__ == "__main__":
    main()
