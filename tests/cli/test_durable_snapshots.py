#!/usr/bin/env python3
"""Durable snapshots through the real daemon (issue 15, guarantees 1, 2, 4, 5; docs/durable-
snapshots.md). Each phase runs its own daemon on its own state dir; data is the self-checking
sector pattern (blksnap-pattern), the oracle of an image is the original's bytes at the take.

Algorithm:
* clean restart (guarantee 1): a 64 MiB device stamped with generation A (seq 1); a snapshot
  with --durability power, storage in a directory (the file blksnap-<id>.diff there), images on
  NBD, FUSE and (with FUSE) a loop device, taken; generation B over the first half of the
  original, generation D over the image's last 4 MiB (through its NBD export), set-limit. The
  image verifies as A (D at its end) through every front; SIGTERM, start again: the same id is
  listed with the same state, limit (the one set), storage path and file, durability power,
  recovered_from "clean-stop", the same NBD export name and FUSE file, a loop device again; the
  image verifies as before with the same SHA-256 through each front; generation C over the second half of the
  original: the recovered snapshot still preserves (the image is still A); kill -9 and start:
  recovered_from "daemon-crash", the image the same. Destroy removes the storage file.
* kill -9 rounds (guarantee 2): a 32 MiB device stamped with seq 1. Each round: create and take
  (durability default = crash, or power), the oracle = the original read through NBD; a writer
  of 64 KiB random writes of a new generation (seq round+2, bytes precomputed by blksnap-pattern
  into a scratch file) on the original — through NBD (libnbd: logged once the server replied)
  or, every other round, through the original's loop front opened O_DIRECT|O_SYNC; kill -9 of
  the daemon at a random instant after the first acknowledged write; start again. Checks: the
  snapshot is listed, taken, recovered_from "daemon-crash", its durability kept; the image
  (through NBD, or its loop device on loop rounds) has the oracle's SHA-256 (round 0: verifies
  as seq 1); every logged 64 KiB write is on the original byte for byte; destroy removes the
  storage file. BLKSNAP_DSNAP_ROUNDS (default 40; ~0.8 s a round) sets the rounds.
* simulated reboot (guarantee 3 at the daemon's level): the same rounds, with another boot id
  after each kill (BLKSNAP_TEST_BOOT_ID_FILE, as test_durable_cbt.py): a power snapshot is
  listed, taken, recovered_from "power-loss", its image the take's data; a crash snapshot comes
  back corrupted (its copies were only written to the kernel), its image not served. (The page cache survives, so this checks the contract, not the flushes: the
  unit tests' power-cut seam does that.)
* memory durability: a snapshot created --durability memory (no storage file: an unnamed
  temporary file) is gone after a clean stop and after a kill -9 (not listed, info says not
  found), nothing is left in its storage directory, and its device can join a new snapshot.
* corrupted persists (guarantee 4): a 4M limit overflowed by 16 MiB of writes: corrupted; after
  a clean stop and start, and after a kill -9 and start, it is listed corrupted with the same
  device error, its image reads fail (NBD and FUSE), the original holds the writes; destroy
  works and removes the storage file.
* storage vanished (guarantee 5): a taken durable snapshot, SIGTERM, its storage file removed,
  start: the daemon runs, the restart report names the snapshot as failed, the snapshot is not
  listed, the device is attached again (its fronts, its data) and can join a new snapshot.
* two devices: a crash snapshot of two devices (seq 1 and 2, then 3 over half of each) comes back
  after a kill -9 and after a clean stop with both members, each image its own take.
* damaged storage (guarantee 4): while the daemon is stopped, a bit flipped in the first
  chunk-log page of a clean-closed power snapshot (offsets from docs/diff-storage-format.md), in
  the log's first page after 8 commits and a kill -9 (crash, the default: the commits share that
  page, written in place), in both header slots: at the start each is
  reported failed or comes back corrupted, or its image is the take's byte for byte: never
  served wrong.
* interrupted stop: SIGTERM then SIGKILL within 30 ms (during the clean stop's close), 6 rounds
  with every chunk of a 32 MiB device preserved: the next start serves the take's image or
  reports the snapshot, never serves it wrong.

Without root, /dev/fuse and /dev/loop-control the loop and FUSE parts are skipped and the test
exits 77 (skipped) even if every other check passed.
"""
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from blksnap_cli_lib import SKIP, Daemon, Failures, fuse_possible, parse_args, wait_state, \
    write_front
from durable_snapshots_lib import BLOCK, LOOP_WRITER, NBD_WRITER, MiB, check_gone, create, \
    dev_free, device, explain_difference, first_log_page, flip_byte, image_fronts, \
    image_unreadable, info, kill9, listed, loops_left, new_generation, read_front, read_nbd, restart_entries, restart_report, sha, start_writer, \
    storage_file, verifies

CLEAN_SIZE = 64 * MiB
IMAGE_WRITE = 4 * MiB  # written through the image in the clean phase
KILL_SIZE = 32 * MiB
ROUNDS = int(os.environ.get("BLKSNAP_DSNAP_ROUNDS", "40"))
STOP_ROUNDS = 6  # SIGTERM then SIGKILL
MAX_WRITE_TIME = 0.2  # the kill comes this long at most after the first acknowledged write


# ---- 1. clean restart ----

def image_as_written(d, data, what):
    """The clean phase's image: generation A, and D (seq 4) in its last IMAGE_WRITE bytes."""
    return (verifies(d, data, 1, what, 0, CLEAN_SIZE - IMAGE_WRITE) and
            verifies(d, data, 4, what, CLEAN_SIZE - IMAGE_WRITE))


def clean_restart(d, t, fuse):
    storage = os.path.join(d.tmp, "storage")
    os.mkdir(storage)
    half = CLEAN_SIZE // 2
    dev = d.cli_json("attach", d.make_image("cv.img", CLEAN_SIZE), "--name", "cv")
    write_front(d, dev, 0, CLEAN_SIZE, 1)
    sid = create(d, storage, "96M", ["cv"], durability="power", loop=fuse)
    before = info(d, sid)
    t.check(before["durability"] == "power" and before["recovered_from"] is None and
            before["storage"]["file"] == storage_file(d, storage, sid) and
            os.path.exists(storage_file(d, storage, sid)),
            "clean: a power snapshot in a directory: file %r, recovered_from %r" %
            (before["storage"].get("file"), before.get("recovered_from")))
    write_front(d, dev, 0, half, 2)
    image = before["devices"][0]["image"]
    # An image write (a journal replay of a mounted image does that) is part of the snapshot.
    write_front(d, {"nbd": image["nbd"]}, CLEAN_SIZE - IMAGE_WRITE, IMAGE_WRITE, 4)
    d.cli_json("snapshot", "set-limit", sid, "112M")
    sums = {}
    for what, address in image_fronts(image):
        data = read_front(what, address, CLEAN_SIZE)
        sums[what] = sha(data)
        t.check(image_as_written(d, data, what), "clean: before the stop the image through %s "
                "is generation A, and D where it was written" % what)
    if fuse:
        t.check(set(sums) == {"nbd", "fuse", "loop"}, "clean: NBD, FUSE and loop images (%r)" %
                sorted(sums))
    before = info(d, sid)  # used: after the writes

    rc = d.stop()
    t.check(rc == 0, "clean: SIGTERM stops the daemon (exit %s)" % rc)
    t.check(os.path.exists(storage_file(d, storage, sid)), "clean: the storage file is kept")
    d.start()
    t.check(len(listed(d, sid)) == 1, "clean: the same id is listed after the start")
    after = info(d, sid)
    for key in ("state", "durability"):
        t.check(after[key] == before[key], "clean: same %s (%r, was %r)" %
                (key, after[key], before[key]))
    for key in ("path", "file", "limit"):
        t.check(after["storage"][key] == before["storage"][key], "clean: same storage %s (%r, "
                "was %r)" % (key, after["storage"][key], before["storage"][key]))
    # The first clean close may compact the log into a new segment (docs/diff-storage-format.md),
    # but restarts must not eat storage one after the other: that would overflow a limited
    # snapshot after enough restarts with no write at all (checked after the second restart).
    t.check(after["storage"]["used"] <= before["storage"]["used"] + 1 * MiB,
            "clean: the restart used at most one log segment (used %r, was %r)" %
            (after["storage"]["used"], before["storage"]["used"]))
    t.check(after["recovered_from"] == "clean-stop",
            "clean: recovered_from %r (want 'clean-stop')" % after["recovered_from"])
    reported = restart_entries(d, "snapshots", sid)
    t.check(reported == [{"id": sid, "recovered_from": "clean-stop", "state": "taken"}],
            "clean: restart.snapshots reports it (%r)" % reported)
    new_image = after["devices"][0]["image"]
    t.check(new_image["nbd"] == image["nbd"] and new_image["fuse"] == image["fuse"],
            "clean: the same NBD export and FUSE file (%r %r)" %
            (new_image["nbd"], new_image["fuse"]))
    if fuse:
        t.check((new_image.get("loop") or "").startswith("/dev/loop"),
                "clean: a loop device on the image again (%r)" % new_image.get("loop"))
    t.check(after["storage"]["limit"] == 112 * MiB, "clean: the limit set after the take is kept")
    for what, address in image_fronts(new_image):
        data = read_front(what, address, CLEAN_SIZE)
        t.check(sums.get(what) == sha(data) and image_as_written(d, data, what),
                "clean: after the start the image through %s is generation A (and D), the same "
                "bytes" % what)
    original = read_nbd(device(d, "cv")["nbd"], CLEAN_SIZE)
    t.check(verifies(d, original, 2, "original", 0, half) and
            verifies(d, original, 1, "original", half),
            "clean: the original is generation B, then A (its writes survived the restart)")
    write_front(d, device(d, "cv"), half, half, 3)
    data = read_nbd(new_image["nbd"], CLEAN_SIZE)
    t.check(sha(data) == sums["nbd"], "clean: generation C over the second half of the original "
            "after the start: the recovered snapshot preserved it (the image is still A)")

    # A recovered snapshot survives the next restart too: kill -9 this time.
    kill9(d)
    d.start()
    again = info(d, sid)
    t.check(again["state"] == "taken" and again["recovered_from"] == "daemon-crash",
            "clean, then kill -9: state %r, recovered_from %r (want 'daemon-crash')" %
            (again["state"], again["recovered_from"]))
    t.check(sha(read_nbd(again["devices"][0]["image"]["nbd"], CLEAN_SIZE)) == sums["nbd"],
            "clean, then kill -9: the image is still generation A, the same bytes")
    used = [again["storage"]["used"]]
    for _ in range(2):
        d.stop()
        d.start()
        used.append(info(d, sid)["storage"]["used"])
    t.check(used[1] <= used[0] + 1 * MiB and used[2] == used[1],
            "clean: two more clean restarts: at most one log segment once, then none (used %r)" %
            used)

    d.cli_json("snapshot", "destroy", sid)
    check_gone(d, t, sid, storage, "clean: destroyed after the restart")
    d.cli_json("detach", "cv")


# ---- 2. kill -9 rounds ----

def check_image(d, t, what, image, loop, oracle, first):
    """The image through its loop device (loop rounds) or NBD equals the oracle byte for byte."""
    front, address = ("loop", image.get("loop")) if loop else ("nbd", image["nbd"])
    got = read_front(front, address, KILL_SIZE) if address else b""
    same = sha(got) == sha(oracle)
    if not same and got:
        explain_difference(d, oracle, got)
    if first:
        same = same and verifies(d, got, 1, "image")
    return t.check(same, "%s: the image through %s (%s) is the take's data byte for byte" %
                   (what, front, address))


def kill_round(d, t, r, storage, loop, durability, boot_id_file=None):
    """One round on device kv: take, writer, kill -9 (and a new boot id: a simulated reboot),
    start, checks, destroy. True if every check passed."""
    want_durability = durability or "crash"
    reboot = boot_id_file is not None
    what = "%s round %d (%s writer, %s)" % ("reboot" if reboot else "kill -9", r,
                                            "loop" if loop else "NBD", want_durability)
    dev = device(d, "kv")
    oracle = read_nbd(dev["nbd"], KILL_SIZE)
    sid = create(d, storage, "64M", ["kv"], durability=durability, loop=loop)
    data_path = new_generation(d, r + 2, KILL_SIZE)
    log = os.path.join(d.tmp, "writes-%d.log" % r)
    script, address = (LOOP_WRITER, dev["loop"]) if loop else (NBD_WRITER, dev["nbd"])
    writer = start_writer(script, address, log, data_path, KILL_SIZE)
    time.sleep(random.uniform(0, MAX_WRITE_TIME))
    kill9(d)
    writer.wait(30)
    if reboot:
        with open(boot_id_file, "w") as f:
            f.write("boot-%d\n" % r)
    d.start()

    ok = True
    found = listed(d, sid)
    s = info(d, sid) if found else {}
    # Copies only written to the kernel cannot be trusted after a power loss: a crash snapshot
    # comes back corrupted, never served (docs/cli.md, "Restart after a clean stop or a crash").
    want_state = "corrupted" if reboot and want_durability == "crash" else "taken"
    ok &= t.check(len(found) == 1, "%s: the snapshot is listed after the start" % what)
    ok &= t.check(s.get("state") == want_state and
                  (s["devices"][0]["error"] != 0) == (want_state == "corrupted"),
                  "%s: state %r (want %r), device error %r" %
                  (what, s.get("state"), want_state, s["devices"][0]["error"] if s else None))
    reported = restart_entries(d, "snapshots", sid)
    ok &= t.check(len(reported) == 1 and reported[0].get("state") == want_state,
                  "%s: restart.snapshots reports it %r" % (what, reported))
    if s:
        want = "power-loss" if reboot else "daemon-crash"
        ok &= t.check(s["recovered_from"] == want and s["durability"] == want_durability,
                      "%s: recovered_from %r, durability %r" %
                      (what, s["recovered_from"], s["durability"]))
        if s["state"] == "taken":
            ok &= check_image(d, t, what, s["devices"][0]["image"], loop, oracle, r == 0)
        else:
            ok &= t.check(image_unreadable(s["devices"][0]["image"]),
                          "%s: the corrupted image is not served" % what)
    with open(log) as f:
        offsets = sorted(set(int(x) for x in f.read().split()))
    with open(data_path, "rb") as f:
        written = f.read()
    now = read_nbd(device(d, "kv")["nbd"], KILL_SIZE)
    missing = [o for o in offsets if now[o:o + BLOCK] != written[o:o + BLOCK]]
    ok &= t.check(not missing, "%s: the original holds every one of %d acknowledged writes "
                  "(missing %d)" % (what, len(offsets), len(missing)))
    if found:
        d.cli_json("snapshot", "destroy", sid)
    ok &= t.check(not listed(d, sid) and not os.path.exists(storage_file(d, storage, sid)),
                  "%s: destroyed, the storage file is gone" % what)
    return ok


def attach_kv(d, fuse):
    storage = os.path.join(d.tmp, "storage")
    os.mkdir(storage)
    argv = ["attach", d.make_image("kv.img", KILL_SIZE), "--name", "kv"]
    dev = d.cli_json(*(argv + (["--loop"] if fuse else [])))
    write_front(d, dev, 0, KILL_SIZE, 1)
    return storage


def kill_rounds(d, t, fuse):
    """Rounds alternate the writer's front (NBD, loop) and, every two, the durability (the
    default, crash; power)."""
    storage = attach_kv(d, fuse)
    started = time.monotonic()
    bad = 0
    for r in range(ROUNDS):
        durability = None if (r // 2) % 2 == 0 else "power"
        bad += 0 if kill_round(d, t, r, storage, fuse and r % 2 == 1, durability) else 1
    t.check(bad == 0, "kill -9: %d rounds in %.0f s, %d bad" %
            (ROUNDS, time.monotonic() - started, bad))


def simulated_reboot(d, t, fuse, boot_id_file):
    """kill -9 and another boot id (BLKSNAP_TEST_BOOT_ID_FILE, as test_durable_cbt does): a
    power snapshot is recovered from a power loss; a crash one is right, corrupted or dropped."""
    storage = attach_kv(d, fuse)
    for r, durability in enumerate(("power", "crash", "power")):
        kill_round(d, t, r, storage, fuse and r == 1, durability, boot_id_file)


# ---- 3. memory durability ----

def memory_durability(d, t):
    storage = os.path.join(d.tmp, "storage")
    os.mkdir(storage)
    dev = d.cli_json("attach", d.make_image("mv.img", 16 * MiB), "--name", "mv")
    write_front(d, dev, 0, 16 * MiB, 1)
    for how in ("clean stop", "kill -9"):
        sid = create(d, storage, "32M", ["mv"], durability="memory")
        s = info(d, sid)
        t.check(s["durability"] == "memory" and s["storage"]["file"] is None and
                os.listdir(storage) == [],
                "memory: no named storage file (%r, dir %r)" % (s["storage"].get("file"),
                                                               os.listdir(storage)))
        write_front(d, device(d, "mv"), 0, 4 * MiB, 2)
        if how == "clean stop":
            rc = d.stop()
            t.check(rc == 0, "memory: clean stop (exit %s)" % rc)
        else:
            kill9(d)
        d.start()
        check_gone(d, t, sid, storage, "memory, after a %s" % how)
        t.check(os.listdir(storage) == [], "memory, after a %s: the storage dir is empty (%r)" %
                (how, os.listdir(storage)))
        dev = device(d, "mv")
        t.check(dev["snapshot"] is None, "memory, after a %s: the device is in no snapshot (%r)"
                % (how, dev["snapshot"]))
    sid = create(d, storage, "32M", ["mv"])
    t.check(info(d, sid)["state"] == "taken", "memory: the device joins a new snapshot")
    d.cli_json("snapshot", "destroy", sid)


# ---- 4. corrupted persists ----

def corrupted_persists(d, t, fuse):
    storage = os.path.join(d.tmp, "storage")
    os.mkdir(storage)
    dev = d.cli_json("attach", d.make_image("xv.img", 32 * MiB), "--name", "xv")
    write_front(d, dev, 0, 16 * MiB, 1)
    sid = create(d, storage, "4M", ["xv"], durability="power")
    write_front(d, dev, 0, 16 * MiB, 2)
    state = wait_state(d, sid, "corrupted")
    t.check(state == "corrupted", "corrupted: 16 MiB of writes overflow a 4M limit (%s)" % state)
    before = info(d, sid)
    for how in ("clean stop", "kill -9"):
        if how == "clean stop":
            rc = d.stop()
            t.check(rc == 0, "corrupted: clean stop (exit %s)" % rc)
        else:
            kill9(d)
        d.start()
        found = listed(d, sid)
        t.check(len(found) == 1 and found[0]["state"] == "corrupted",
                "corrupted, after a %s: listed corrupted (%r)" % (how, found))
        if not found:
            return
        s = info(d, sid)
        want = "clean-stop" if how == "clean stop" else "daemon-crash"
        t.check(s["recovered_from"] == want and
                s["devices"][0]["error"] == before["devices"][0]["error"] != 0,
                "corrupted, after a %s: recovered_from %r, device error %r (was %r)" %
                (how, s["recovered_from"], s["devices"][0]["error"],
                 before["devices"][0]["error"]))
        reported = restart_entries(d, "snapshots", sid)
        t.check([x.get("state") for x in reported] == ["corrupted"],
                "corrupted, after a %s: restart.snapshots reports it corrupted (%r)" %
                (how, reported))
        t.check(image_unreadable(s["devices"][0]["image"]),
                "corrupted, after a %s: image reads fail through every front" % how)
    original = read_nbd(device(d, "xv")["nbd"], 16 * MiB)
    t.check(verifies(d, original, 2, "original"), "corrupted: the original holds the writes")
    d.cli_json("snapshot", "destroy", sid)
    check_gone(d, t, sid, storage, "corrupted: destroyed after the restarts")


# ---- 5. storage vanished ----

def storage_vanished(d, t, fuse):
    storage = os.path.join(d.tmp, "storage")
    os.mkdir(storage)
    argv = ["attach", d.make_image("sv.img", 16 * MiB), "--name", "sv"]
    dev = d.cli_json(*(argv + (["--loop"] if fuse else [])))
    write_front(d, dev, 0, 16 * MiB, 1)
    sid = create(d, storage, "32M", ["sv"], loop=fuse)
    write_front(d, dev, 0, 4 * MiB, 2)
    path = info(d, sid)["storage"]["file"]
    rc = d.stop()
    t.check(rc == 0 and path == storage_file(d, storage, sid) and os.path.exists(path),
            "vanished: clean stop (exit %s), the storage file %r kept" % (rc, path))
    if os.path.exists(path):
        os.unlink(path)
    d.start()
    failed = restart_entries(d, "snapshots_failed", sid)
    t.check(len(failed) == 1 and failed[0].get("error") and not restart_entries(d, "snapshots", sid),
            "vanished: restart.snapshots_failed names the snapshot (%s)" %
            json.dumps(restart_report(d))[:600])
    t.check(d.alive(), "vanished: the daemon runs")
    check_gone(d, t, sid, storage, "vanished")
    dev = device(d, "sv")
    t.check(dev["restored"] is True and dev["snapshot"] is None and dev["nbd"] and
            (not fuse or (dev.get("loop") or "").startswith("/dev/loop")),
            "vanished: the device is attached again with its fronts, in no snapshot (%r)" % dev)
    original = read_nbd(dev["nbd"], 16 * MiB)
    t.check(verifies(d, original, 2, "original", 0, 4 * MiB) and
            verifies(d, original, 1, "original", 4 * MiB),
            "vanished: the device's data is as written")
    sid2 = create(d, storage, "32M", ["sv"])
    t.check(info(d, sid2)["state"] == "taken", "vanished: the device joins a new snapshot")
    d.cli_json("snapshot", "destroy", sid2)


# ---- 6. a snapshot of two devices ----

def two_devices(d, t):
    storage = os.path.join(d.tmp, "storage")
    os.mkdir(storage)
    size = 16 * MiB
    for seq, name in enumerate(("ta", "tb"), 1):
        write_front(d, d.cli_json("attach", d.make_image(name + ".img", size), "--name", name),
                    0, size, seq)
    sid = create(d, storage, "64M", ["ta", "tb"], durability="crash")
    for name in ("ta", "tb"):
        write_front(d, device(d, name), 0, size // 2, 3)
    for how in ("kill -9", "clean stop"):
        if how == "kill -9":
            kill9(d)
        else:
            d.stop()
        d.start()
        s = info(d, sid)
        t.check(s["state"] == "taken" and [x["name"] for x in s["devices"]] == ["ta", "tb"],
                "two devices, after a %s: taken, both members (%s, %r)" %
                (how, s["state"], [x["name"] for x in s["devices"]]))
        for seq, member in enumerate(s["devices"], 1):
            data = read_nbd(member["image"]["nbd"], size)
            t.check(verifies(d, data, seq, member["name"]),
                    "two devices, after a %s: the image of %s is its take (seq %d)" %
                    (how, member["name"], seq))
    d.cli_json("snapshot", "destroy", sid)
    check_gone(d, t, sid, storage, "two devices: destroyed")


# ---- 7. damaged storage ----

DAMAGE = ("the first log page after a clean stop", "a committed log page after a kill -9",
          "both header slots")


def damaged_storage(d, t):
    """A bit flip in the first chunk-log page after a clean stop (a closed log: no torn tail is
    possible), in the log's first page after 8 commits and a kill -9 (crash, the default: one
    page holds them all and a bad one is damage, not a torn tail), in both header slots: the snapshot is
    reported failed or comes back corrupted; if it is served (taken), its image must be the
    take's, byte for byte."""
    storage = os.path.join(d.tmp, "storage")
    os.mkdir(storage)
    size = 16 * MiB
    dev = d.cli_json("attach", d.make_image("dv.img", size), "--name", "dv")
    write_front(d, dev, 0, size, 1)
    for what in DAMAGE:
        sid = create(d, storage, "64M", ["dv"])
        if what == DAMAGE[1]:
            for i in range(8):  # each write waits for its own commit
                write_front(d, device(d, "dv"), i * MiB, BLOCK, 2)
        else:
            write_front(d, device(d, "dv"), 0, size // 2, 2)
        oracle = sha(read_nbd(info(d, sid)["devices"][0]["image"]["nbd"], size))
        if what == DAMAGE[1]:
            kill9(d)
        else:
            d.stop()
        path = storage_file(d, storage, sid)
        if what != DAMAGE[2]:
            start = first_log_page(path)
            t.check(start > 0, "damaged: the header locates the chunk log (%d)" % start)
            flip_byte(path, start + 200)  # in the page's records
        else:
            flip_byte(path, 100)
            flip_byte(path, 8192 + 100)
        d.start()
        failed = restart_entries(d, "snapshots_failed", sid)
        s = info(d, sid) if listed(d, sid) else {}
        served = s.get("state") == "taken"
        same = served and sha(read_nbd(s["devices"][0]["image"]["nbd"], size)) == oracle
        t.check(failed or s.get("state") == "corrupted" or same,
                "damaged %s: reported failed (%r), corrupted, or served right (state %r, image "
                "the take's: %r) — never served wrong" % (what, failed, s.get("state"), same))
        if s:
            d.cli_json("snapshot", "destroy", sid, "--force")
        elif os.path.exists(path):
            os.unlink(path)  # a snapshot not recovered leaves its storage (docs/cli.md)
        t.check(not listed(d, sid) and dev_free(d, "dv"),
                "damaged %s: afterwards the device is in no snapshot" % what)


# ---- 8. a clean stop cut short ----

def interrupted_stop(d, t):
    """SIGTERM, then SIGKILL at a random instant of the clean stop (while CloseSnapshot compacts
    the log): each start serves the take (clean-stop or daemon-crash) or reports the snapshot."""
    storage = os.path.join(d.tmp, "storage")
    os.mkdir(storage)
    size = 32 * MiB
    write_front(d, d.cli_json("attach", d.make_image("iv.img", size), "--name", "iv"), 0, size, 1)
    bad = 0
    for r in range(STOP_ROUNDS):
        sid = create(d, storage, "0", ["iv"])
        write_front(d, device(d, "iv"), 0, size, r + 2)  # every chunk preserved
        oracle = sha(read_nbd(info(d, sid)["devices"][0]["image"]["nbd"], size))
        d.proc.send_signal(signal.SIGTERM)
        time.sleep(random.uniform(0, 0.03))
        kill9(d)
        d.start()
        failed = restart_entries(d, "snapshots_failed", sid)
        s = info(d, sid) if listed(d, sid) else {}
        same = (s.get("state") == "taken" and
                sha(read_nbd(s["devices"][0]["image"]["nbd"], size)) == oracle)
        if not t.check(failed or s.get("state") == "corrupted" or same,
                       "interrupted stop %d: %s, recovered_from %r, image the take's: %r" %
                       (r, "reported failed" if failed else "state %r" % s.get("state"),
                        s.get("recovered_from"), same)):
            bad += 1
        if s:
            d.cli_json("snapshot", "destroy", sid, "--force")
        elif os.path.exists(storage_file(d, storage, sid)):
            os.unlink(storage_file(d, storage, sid))
    t.check(bad == 0, "interrupted stop: %d rounds, %d served wrong" % (STOP_ROUNDS, bad))


def main():
    args = parse_args(sys.argv)
    try:
        import nbd  # noqa: F401
    except ImportError:
        print("SKIP: needs python3-libnbd")
        sys.exit(SKIP)
    t = Failures()
    fuse = fuse_possible()
    if not fuse:
        t.skip("FUSE and loop fronts (images, loop writer)", "needs root, /dev/fuse, "
               "/dev/loop-control")
    boot_id_file = os.path.join(tempfile.mkdtemp(prefix="blksnap-boot-"), "boot_id")
    phases = [("clean restart", lambda d: clean_restart(d, t, fuse)),
              ("kill -9 rounds", lambda d: kill_rounds(d, t, fuse)),
              ("simulated reboot", lambda d: simulated_reboot(d, t, fuse, boot_id_file)),
              ("memory durability", lambda d: memory_durability(d, t)),
              ("corrupted persists", lambda d: corrupted_persists(d, t, fuse)),
              ("storage vanished", lambda d: storage_vanished(d, t, fuse)),
              ("two devices", lambda d: two_devices(d, t)),
              ("damaged storage", lambda d: damaged_storage(d, t)),
              ("interrupted stop", lambda d: interrupted_stop(d, t))]
    only = os.environ.get("BLKSNAP_DSNAP_ONLY")  # a phase name, to run one while debugging
    for name, phase in phases:
        if only and only not in name:
            continue
        env = None
        if "reboot" in name:
            env = {"BLKSNAP_TEST_BOOT_ID_FILE": boot_id_file}
            with open(boot_id_file, "w") as f:
                f.write("boot-A\n")
        d = Daemon(args, fuse=fuse, env=env)
        started = time.monotonic()
        try:
            d.start()
            phase(d)
            t.check(d.alive(), "%s: the daemon still runs (%.1f s)" %
                    (name, time.monotonic() - started))
            d.stop()
            left = loops_left(d)
            t.check(not left, "%s: no loop device left after the stop (%r)" % (name, left))
        except Exception as e:
            t.check(False, "%s: unexpected exception: %r\n%s" % (name, e, d.log_text()))
        finally:
            d.cleanup()
    shutil.rmtree(os.path.dirname(boot_id_file), ignore_errors=True)
    if t.skipped and not t.failed:
        print("%d checks passed, %d skipped: SKIP" % (t.passed, t.skipped))
        sys.exit(SKIP)
    t.done()


if __name__ == "__main__":
    main()
