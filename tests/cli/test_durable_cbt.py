#!/usr/bin/env python3
"""Durable CBT through the real daemon (issue 14, guarantees 1, 2, 4, 5).

Algorithm:
* kill -9 rounds: a writer process writes 64 KiB blocks at random offsets through the NBD
  export and logs each offset only after the server acknowledged it; the daemon is killed with
  SIGKILL at a random instant; a new daemon on the same state dir re-attaches the device from
  its records. Checks: the generation id is unchanged and durable; a take then reports, in
  `cbt changes --since N` (N = the changes number before the round), every logged write.
* clean stop: SIGTERM, attach the same file under the same name again: same generation, same
  changes number, the same read map (cbt read), reason unchanged.
* outside write: SIGTERM, write to the image file directly, attach again: a new generation
  with generation_reason "outside-write".
"""
import base64
import os
import random
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from blksnap_cli_lib import Daemon, Failures, covers, parse_args

MiB = 1 << 20
SIZE = 4096 * MiB  # sparse: each round writes a few tens of MiB of it
BLOCK = 4096        # small writes at random places: a round changes a fraction of the blocks
ROUNDS = int(os.environ.get("BLKSNAP_CBT_ROUNDS", "12"))

WRITER = r'''
import nbd, os, random, sys
uri, log = sys.argv[1], sys.argv[2]
h = nbd.NBD()
h.connect_uri(uri)
data = os.urandom(%d)
with open(log, "a", buffering=1) as f:
    while True:
        off = random.randrange(0, %d // %d) * %d
        h.pwrite(data, off)
        f.write("%%d\n" %% off)
''' % (BLOCK, SIZE, BLOCK, BLOCK)


def cbt(d, name):
    return d.cli_json("cbt", "info", name)


def take_and_changes(d, storage, name, since):
    """Takes a snapshot (the read map catches up), returns the extents changed since `since`."""
    sid = d.cli_json("snapshot", "create", "--storage", storage, "--limit", "64M", name)["id"]
    d.cli_json("snapshot", "take", sid)
    changes = d.cli_json("cbt", "changes", name, "--since", str(since))
    d.cli_json("snapshot", "destroy", sid, "--force")
    return changes


def kill_rounds(d, t, image, storage):
    dev = d.cli_json("attach", image, "--name", "vol")
    take_and_changes(d, storage, "vol", 0)
    first = cbt(d, "vol")
    t.check(first["durable"] is True and first["generation_reason"] == "new",
            "a new device: durable CBT, reason 'new' (%s)" % first["generation_reason"])
    missed_rounds = 0
    for r in range(ROUNDS):
        before = cbt(d, "vol")
        log = os.path.join(d.tmp, "writes-%d.log" % r)
        writer = subprocess.Popen([sys.executable, "-c", WRITER, dev["nbd"], log],
                                  stderr=subprocess.DEVNULL)
        time.sleep(random.uniform(0.15, 0.6))
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        d.proc = None
        writer.wait(30)
        d.start()
        after = cbt(d, "vol")
        same = after["generation_id"] == first["generation_id"]
        t.check(same, "round %d: kill -9, restart: same generation (%s, reason %s)" %
                (r, after["generation_id"][:8], after["generation_reason"]))
        with open(log) as f:
            offsets = [int(x) for x in f.read().split()]
        changes = take_and_changes(d, storage, "vol", before["changes_number"])
        missing = [o for o in offsets if not covers(changes["extents"], o, BLOCK)]
        if missing:
            missed_rounds += 1
        t.check(not missing, "round %d: every one of %d acknowledged writes is reported changed "
                "(missing %d)" % (r, len(offsets), len(missing)))
        dev = d.cli_json("devices")["devices"][0]
    t.check(missed_rounds == 0, "%d kill -9 rounds, none under-reported" % ROUNDS)
    return first["generation_id"]


def clean_stop(d, t, image, generation):
    before = cbt(d, "vol")
    before_map = d.cli_json("cbt", "read", "vol", "--output", os.path.join(d.tmp, "map1"))
    with open(os.path.join(d.tmp, "map1"), "rb") as f:
        map1 = f.read()
    rc = d.stop()
    t.check(rc == 0, "clean stop (exit %s)" % rc)
    d.start()
    d.cli_json("attach", image, "--name", "vol")
    after = cbt(d, "vol")
    d.cli_json("cbt", "read", "vol", "--output", os.path.join(d.tmp, "map2"))
    with open(os.path.join(d.tmp, "map2"), "rb") as f:
        map2 = f.read()
    t.check(after["generation_id"] == generation and
            after["changes_number"] == before["changes_number"],
            "clean stop and attach again: the same generation and changes number")
    t.check(map1 == map2 and len(map1) > 0, "... and the same read map (%d bytes)" % len(map1))
    del before_map


def outside_write(d, t, image, generation):
    d.stop()
    with open(image, "r+b") as f:
        f.seek(5 * MiB)
        f.write(b"x" * 4096)
    d.start()
    d.cli_json("attach", image, "--name", "vol")
    after = cbt(d, "vol")
    t.check(after["generation_id"] != generation and
            after["generation_reason"] == "outside-write",
            "a write while nobody tracked the file: new generation, reason %s" %
            after["generation_reason"])
    d.cli_json("detach", "vol")
    t.check(not os.path.exists(os.path.join(d.state, "cbt", "vol.cbt")),
            "detach removes the state file")


def main():
    args = parse_args(sys.argv)
    try:
        import nbd  # noqa: F401
    except ImportError:
        print("SKIP: needs python3-libnbd")
        sys.exit(77)
    t = Failures()
    d = Daemon(args, fuse=False).start()
    try:
        image = d.make_image("vol.img", SIZE)
        storage = os.path.join(d.tmp, "storage")
        os.mkdir(storage)
        generation = kill_rounds(d, t, image, storage)
        clean_stop(d, t, image, generation)
        outside_write(d, t, image, generation)
    except Exception as e:
        t.check(False, "unexpected exception: %r\n%s" % (e, d.log_text()))
    finally:
        d.cleanup()
    t.done()


if __name__ == "__main__":
    main()
