#!/usr/bin/env python3
# Several snapshots of one device through the real daemon and CLI (issue 18): three taken
# snapshots with writes between, each image (FUSE file, else NBD) holding exactly its take's
# sector pattern; image writes to one stay private; destroy of the middle one; a device in a
# snapshot not yet taken refuses another; a clean restart and a kill -9 bring the durable ones
# back in their chain; a newer snapshot whose storage vanished while the daemon was down leaves
# the older one of the device corrupted (ESTALE), never silently wrong.
import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from blksnap_cli_lib import (Daemon, Failures, fuse_possible, parse_args, verify_front,  # noqa: E402
                             write_front)

MiB = 1 << 20
SIZE = 32 * MiB


def image(d, sid):
    return d.cli_json("snapshot", "info", sid)["devices"][0]["image"]


def take(d, storage, durability):
    sid = d.cli_json("snapshot", "create", "--storage", storage, "--limit", "0", "--durability",
                     durability, "vol")["id"]
    d.cli_json("snapshot", "take", sid)
    return sid


def check_model(d, t, sid, model, what):
    """model: [(offset, length, seq)] covering the device."""
    img = image(d, sid)
    ok = all(verify_front(d, img, o, l, s) for o, l, s in model)
    t.check(ok, "%s: snapshot %s holds its take" % (what, sid[:8]))


def run(args, t):
    fuse = fuse_possible()
    d = Daemon(args, fuse=fuse).start()
    storage = os.path.join(d.tmp, "storage")
    os.mkdir(storage)
    try:
        dev = d.cli_json("attach", d.make_image("vol.img", SIZE), "--name", "vol")
        write_front(d, dev, 0, SIZE, 1)
        s1 = take(d, storage, "power")
        write_front(d, dev, 0, 8 * MiB, 2)
        s2 = take(d, storage, "power")
        write_front(d, dev, 4 * MiB, 8 * MiB, 3)
        s3 = take(d, storage, "memory")
        write_front(d, dev, 0, SIZE, 4)
        m1 = [(0, SIZE, 1)]
        m2 = [(0, 8 * MiB, 2), (8 * MiB, SIZE - 8 * MiB, 1)]
        m3 = [(0, 4 * MiB, 2), (4 * MiB, 8 * MiB, 3), (12 * MiB, SIZE - 12 * MiB, 1)]
        for sid, m in ((s1, m1), (s2, m2), (s3, m3)):
            check_model(d, t, sid, m, "three takes")
        devices = d.cli_json("devices")["devices"]
        t.check(devices[0]["snapshots"] == [s1, s2, s3] and devices[0]["snapshot"] == s3,
                "devices lists the three snapshots oldest first: %r" % devices[0].get("snapshots"))

        # One snapshot not yet taken holds the device; a second is refused with one line.
        s4 = d.cli_json("snapshot", "create", "--storage", storage, "--limit", "0", "vol")["id"]
        rc, out, err = d.cli("snapshot", "create", "--storage", storage, "--limit", "0", "vol")
        t.check(rc != 0 and "not taken yet" in err and len(err.strip().splitlines()) == 1,
                "a device in a snapshot not yet taken refuses another: rc %d %r" % (rc, err))
        d.cli_json("snapshot", "destroy", s4)

        # Image writes to the middle snapshot stay in it.
        write_front(d, image(d, s2), 8 * MiB, MiB, 5)
        m2 = [(0, 8 * MiB, 2), (8 * MiB, MiB, 5), (9 * MiB, SIZE - 9 * MiB, 1)]
        check_model(d, t, s2, m2, "image write to the middle")
        check_model(d, t, s1, m1, "image write to the middle")
        check_model(d, t, s3, m3, "image write to the middle")

        # Destroy the middle one: the oldest reads what it held through its own copies now.
        d.cli_json("snapshot", "destroy", s2)
        write_front(d, dev, 2 * MiB, 4 * MiB, 6)
        check_model(d, t, s1, m1, "middle destroyed")
        check_model(d, t, s3, m3, "middle destroyed")

        # A clean restart: the durable one comes back, the memory one is gone.
        s5 = take(d, storage, "power")
        m5 = [(0, 2 * MiB, 4), (2 * MiB, 4 * MiB, 6), (6 * MiB, SIZE - 6 * MiB, 4)]
        write_front(d, dev, 0, SIZE, 7)
        t.check(d.stop() == 0, "clean stop")
        d.start()
        ids = [s["id"] for s in d.cli_json("snapshot", "list")["snapshots"]]
        t.check(sorted(ids) == sorted([s1, s5]), "after a clean restart: %r" % ids)
        dev = d.cli_json("devices")["devices"][0]
        t.check(dev["snapshots"] == [s1, s5], "chain order after the restart: %r" % dev["snapshots"])
        check_model(d, t, s1, m1, "clean restart")
        check_model(d, t, s5, m5, "clean restart")

        # kill -9 while both are live, then more writes after the restart.
        write_front(d, dev, 16 * MiB, 4 * MiB, 8)
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        d.proc = None
        d.start()
        dev = d.cli_json("devices")["devices"][0]
        write_front(d, dev, 0, SIZE, 9)
        check_model(d, t, s1, m1, "kill -9")
        check_model(d, t, s5, m5, "kill -9")

        # The newer one's storage vanishes while the daemon is down: the older comes back
        # corrupted, never served wrong.
        info5 = d.cli_json("snapshot", "info", s5)
        t.check(d.stop() == 0, "clean stop before the storage goes")
        os.unlink(info5["storage"]["file"])
        d.start()
        snaps = {s["id"]: s for s in d.cli_json("snapshot", "list")["snapshots"]}
        t.check(s5 not in snaps, "the snapshot whose storage vanished is gone")
        t.check(s1 in snaps and snaps[s1]["state"] == "corrupted",
                "the older snapshot comes back corrupted: %r" % snaps.get(s1))
        d.cli_json("snapshot", "destroy", s1)

        # A memory snapshot over a durable one holds copies the durable one reads: after a
        # kill -9 the durable one comes back corrupted; after a clean stop it comes back whole.
        dev = d.cli_json("devices")["devices"][0]
        write_front(d, dev, 0, SIZE, 10)
        p1 = take(d, storage, "power")
        take(d, storage, "memory")
        write_front(d, dev, 0, SIZE, 11)
        t.check(d.stop() == 0, "clean stop with a memory snapshot over a durable one")
        d.start()
        snaps = {s["id"]: s for s in d.cli_json("snapshot", "list")["snapshots"]}
        t.check(list(snaps) == [p1] and snaps[p1]["state"] == "taken",
                "after a clean stop the durable one is back whole: %r" % snaps)
        check_model(d, t, p1, [(0, SIZE, 10)], "memory over durable, clean stop")
        m2 = take(d, storage, "memory")
        dev = d.cli_json("devices")["devices"][0]
        write_front(d, dev, 0, SIZE, 12)
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        d.proc = None
        d.start()
        snaps = {s["id"]: s for s in d.cli_json("snapshot", "list")["snapshots"]}
        t.check(m2 not in snaps and snaps.get(p1, {}).get("state") == "corrupted",
                "after a kill -9 the durable one under a memory one is corrupted: %r" % snaps)
        d.cli_json("snapshot", "destroy", p1)

        # A crash inside a newer snapshot's take (its record says "taking", its storage never
        # said taken): the copies it made are lost, so the older one comes back ESTALE.
        p2 = take(d, storage, "power")
        t.check(d.stop() == 0, "clean stop before the records are edited")
        records_path = os.path.join(d.state, "devices.json")
        with open(records_path) as f:
            records = json.load(f)
        mine = [r for r in records["snapshots"] if r["id"] == p2][0]
        records["snapshots"].append({
            "id": "0e5d2c1b-1111-4222-8333-944455556666", "storage": storage,
            "storage_file": os.path.join(storage, "gone.diff"), "durability": "power",
            "taken": False, "taking": True, "taken_at": mine.get("taken_at", 0) + 1,
            "limit": 0, "loop": False, "ublk": False, "devices": ["vol"]})
        with open(records_path, "w") as f:
            json.dump(records, f)
        d.start()
        snaps = {s["id"]: s for s in d.cli_json("snapshot", "list")["snapshots"]}
        t.check(snaps.get(p2, {}).get("state") == "corrupted",
                "an older snapshot under one whose take was cut is corrupted: %r" % snaps)
        d.cli_json("snapshot", "destroy", p2)
        d.cli_json("detach", "vol")
    except Exception as e:  # noqa: BLE001
        t.check(False, "unexpected exception: %r\n%s" % (e, d.log_text()))
    finally:
        d.cleanup()


def main():
    args = parse_args(sys.argv)
    t = Failures()
    run(args, t)
    t.done()


if __name__ == "__main__":
    main()
