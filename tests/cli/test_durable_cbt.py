#!/usr/bin/env python3
"""Durable CBT through the real daemon (issue 14, guarantees 1, 2, 3, 4, 5).

Algorithm:
* kill -9 rounds, once through the NBD export and once through a loop device on the FUSE file
  (`attach --loop`): a writer process writes 4 KiB blocks at random offsets through the front
  and logs each offset only after the write was acknowledged end to end (NBD: the server's
  reply; loop: pwrite on the loop device opened O_DIRECT|O_SYNC returned, so the daemon served
  the write and the flush). Once the first write is logged, the daemon is killed with SIGKILL
  at a random instant; the writer gets an error and exits (the loop device then unbinds itself:
  autoclear); a new daemon on the same state dir re-attaches the device from its records, with
  the same fronts (a new loop device). Checks per round: the generation id is unchanged,
  `recovered_from` is "daemon-crash", and a take then reports, in `cbt changes --since N`
  (N = the changes number before the round), every logged write.
* clean stop: SIGTERM and start again: the device is attached again by itself (restored, the
  status restart report says "after": "clean-stop"), with its NBD export, the same generation,
  the same changes number, the same read map (cbt read), recovered_from "clean-stop"; an
  attach of the same name is refused (already attached). The loop daemon does the same after
  its kill -9 rounds: the device comes back with a loop device.
* outside write: SIGTERM, write to the image file directly, start again: the automatic
  re-attach starts a new generation with generation_reason "outside-write".
* state dir on a front: ext4 on a device's loop front mounted over the state dir; an attach
  and a records rewrite are refused, nothing is written there (state_dir_on_front()).
* simulated reboot: the daemon reads its boot id from BLKSNAP_TEST_BOOT_ID_FILE; a take, an
  NBD writer, kill -9, another boot id in the file (a reboot), start again: the same generation
  (the write-intent journal continues it), recovered_from "power-loss", every logged write in
  `cbt changes --since N` after the next take.

BLKSNAP_CBT_ROUNDS (default 50) sets the kill -9 rounds of each front. The loop front needs
root, /dev/fuse and /dev/loop-control: without them the other phases run and the test exits
77 (skipped), not 0.
"""
import os
import random
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from blksnap_cli_lib import SKIP, Daemon, Failures, fuse_possible, parse_args, uncovered

MiB = 1 << 20
SIZE = 4096 * MiB  # sparse: each round writes a few tens of MiB of it
BLOCK = 4096        # small writes at random places: a round changes a fraction of the blocks
ROUNDS = int(os.environ.get("BLKSNAP_CBT_ROUNDS", "50"))
REBOOT_ROUNDS = 3
MAX_WRITE_TIME = 0.6  # the kill comes this long at most after the first acknowledged write

# The pause keeps 2x50 rounds at a few hundred MB of dirty image data (unpaced: ~2 GB of random
# 4 KiB writes, whose write-back and removal took a minute on the test machine).
NBD_WRITER = r'''
import nbd, os, random, sys, time
uri, log = sys.argv[1], sys.argv[2]
h = nbd.NBD()
h.connect_uri(uri)
data = os.urandom(%d)
with open(log, "a", buffering=1) as f:
    while True:
        off = random.randrange(0, %d // %d) * %d
        h.pwrite(data, off)
        f.write("%%d\n" %% off)
        time.sleep(0.0001)
''' % (BLOCK, SIZE, BLOCK, BLOCK)

# O_DIRECT needs an aligned buffer: an anonymous mapping is page-aligned.
LOOP_WRITER = r'''
import mmap, os, random, sys
path, log = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_SYNC)
buf = mmap.mmap(-1, %d)
buf.write(os.urandom(%d))
with open(log, "a", buffering=1) as f:
    while True:
        off = random.randrange(0, %d // %d) * %d
        try:
            if os.pwrite(fd, buf, off) != %d:
                break
        except OSError:
            break
        f.write("%%d\n" %% off)
''' % (BLOCK, BLOCK, SIZE, BLOCK, BLOCK, BLOCK)

# front -> (attach options, writer, the device's address key)
FRONTS = {"nbd": ([], NBD_WRITER, "nbd"), "loop": (["--loop"], LOOP_WRITER, "loop")}


def cbt(d, name):
    return d.cli_json("cbt", "info", name)


def device(d, name):
    return [x for x in d.cli_json("devices")["devices"] if x["name"] == name][0]


def take_and_changes(d, storage, name, since):
    """Takes a snapshot (the read map catches up), returns the extents changed since `since`."""
    sid = d.cli_json("snapshot", "create", "--storage", storage, "--limit", "64M", name)["id"]
    d.cli_json("snapshot", "take", sid)
    changes = d.cli_json("cbt", "changes", name, "--since", str(since))
    d.cli_json("snapshot", "destroy", sid, "--force")
    return changes


def start_writer(d, front, dev, log):
    """Starts the writer on the device's front; returns once its first write is acknowledged."""
    address = dev[FRONTS[front][2]]
    writer = subprocess.Popen([sys.executable, "-c", FRONTS[front][1], address, log],
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not (os.path.exists(log) and os.path.getsize(log) > 0):
        if writer.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the %s writer on %s wrote nothing (exit %s)" %
                               (front, address, writer.poll()))
        time.sleep(0.005)
    return writer


def crash_during_writes(d, front, dev, log):
    """A writer on the front, kill -9 of the daemon at a random instant, the writer's end."""
    writer = start_writer(d, front, dev, log)
    time.sleep(random.uniform(0, MAX_WRITE_TIME))
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait()
    d.proc = None
    writer.wait(30)


def check_recovery(d, t, storage, name, before, log, what, generation, recovered_from):
    """After a restart: the generation, how it was recovered, and every logged write reported
    by `cbt changes --since` before's changes number after the next take. True if none missed."""
    after = cbt(d, name)
    t.check(after["generation_id"] == generation,
            "%s: same generation (%s, reason %s)" %
            (what, after["generation_id"][:8], after["generation_reason"]))
    t.check(after.get("recovered_from") == recovered_from, "%s: recovered_from %r (want %r)" %
            (what, after.get("recovered_from"), recovered_from))
    with open(log) as f:
        offsets = [int(x) for x in f.read().split()]
    changes = take_and_changes(d, storage, name, before["changes_number"])
    missing = uncovered(changes["extents"], offsets, BLOCK)
    t.check(not missing, "%s: every one of %d acknowledged writes is reported changed "
            "(missing %d)" % (what, len(offsets), len(missing)))
    return not missing


def kill_rounds(d, t, front, image, storage, name):
    dev = d.cli_json("attach", image, "--name", name, *FRONTS[front][0])
    take_and_changes(d, storage, name, 0)
    first = cbt(d, name)
    t.check(first["durable"] is True and first["generation_reason"] == "new",
            "%s: a new device: durable CBT, reason 'new' (%s)" % (front, first["generation_reason"]))
    missed_rounds = 0
    started = time.monotonic()
    for r in range(ROUNDS):
        before = cbt(d, name)
        log = os.path.join(d.tmp, "writes-%s-%d.log" % (front, r))
        crash_during_writes(d, front, dev, log)
        d.start()
        dev = device(d, name)
        if front == "loop":
            t.check(dev.get("loop", "").startswith("/dev/loop"),
                    "loop round %d: the restarted daemon exposes a loop device again (%s)" %
                    (r, dev.get("loop")))
        if not check_recovery(d, t, storage, name, before, log, "%s round %d: kill -9, restart" %
                              (front, r), first["generation_id"], "daemon-crash"):
            missed_rounds += 1
    t.check(missed_rounds == 0, "%s: %d kill -9 rounds in %.0f s, none under-reported" %
            (front, ROUNDS, time.monotonic() - started))
    return first["generation_id"]


def read_map(d, name, file):
    d.cli_json("cbt", "read", name, "--output", os.path.join(d.tmp, file))
    with open(os.path.join(d.tmp, file), "rb") as f:
        return f.read()


def clean_restart(d, t, image, name, front, generation):
    """SIGTERM and start (an upgrade, `systemctl restart`): the device is back by itself, with
    its fronts, in the same generation, exactly as it was. Returns the device."""
    before = cbt(d, name)
    map1 = read_map(d, name, "map1-" + name)
    rc = d.stop()
    t.check(rc == 0, "%s: clean stop (exit %s)" % (name, rc))
    d.start()
    dev = device(d, name)
    restart = d.cli_json("status")["daemon"]["restart"] or {}
    t.check(dev["restored"] is True and restart.get("after") == "clean-stop" and
            "clean stop" in dev.get("restore_note", ""),
            "%s: re-attached by the start after a clean stop (restart %r)" % (name, restart))
    t.check(dev["path"] == image and dev.get("nbd", "").startswith("nbd+unix://"),
            "... with its NBD export (%r)" % dev.get("nbd"))
    if front == "loop":
        t.check(dev.get("loop", "").startswith("/dev/loop"),
                "... and a loop device again (%r)" % dev.get("loop"))
    after = cbt(d, name)
    map2 = read_map(d, name, "map2-" + name)
    t.check(after["generation_id"] == generation and
            after["changes_number"] == before["changes_number"],
            "%s: clean stop and start: the same generation and changes number" % name)
    t.check(map1 == map2 and len(map1) > 0, "... and the same read map (%d bytes)" % len(map1))
    t.check(after.get("recovered_from") == "clean-stop",
            "... recovered_from %r (want 'clean-stop')" % after.get("recovered_from"))
    rc, _, err = d.cli("attach", image, "--name", name)
    t.check(rc != 0 and "already attached" in err,
            "... an attach of it again is refused: already attached (%r)" % err.strip())
    return dev


def outside_write(d, t, image, generation):
    d.stop()
    with open(image, "r+b") as f:
        f.seek(5 * MiB)
        f.write(b"x" * 4096)
    d.start()  # re-attaches vol from the records
    after = cbt(d, "vol")
    t.check(after["generation_id"] != generation and
            after["generation_reason"] == "outside-write",
            "a write while nobody tracked the file: new generation, reason %s" %
            after["generation_reason"])
    d.cli_json("detach", "vol")
    t.check(not os.path.exists(os.path.join(d.state, "cbt", "vol.cbt")),
            "detach removes the state file")


def simulated_reboot(d, t, boot_id_file, storage):
    """Kill -9 during NBD writes, then another boot id: the journal's recovery, not the page
    cache's, must continue the generation (the test cannot drop the page cache, so it checks
    the contract: same generation, recovered_from power-loss, nothing under-reported)."""
    image = d.make_image("reboot.img", SIZE)
    d.cli_json("attach", image, "--name", "rb")
    take_and_changes(d, storage, "rb", 0)
    for r in range(REBOOT_ROUNDS):
        before = cbt(d, "rb")
        log = os.path.join(d.tmp, "writes-reboot-%d.log" % r)
        crash_during_writes(d, "nbd", device(d, "rb"), log)
        with open(boot_id_file, "w") as f:
            f.write("boot-%s\n" % "BCD"[r])
        d.start()
        check_recovery(d, t, storage, "rb", before, log, "reboot %d: kill -9, new boot id" % r,
                       before["generation_id"], "power-loss")


def state_dir_on_front(d, t, storage):
    """The state dir must never lie on a tracked device's front. The state dir is fixed at
    start, so the reachable way there is a mount over it (or over a parent) from a front while
    the daemon runs: here ext4 on device fs's loop front, mounted over the state dir, holding a
    copy of the state dir's layout (cbt/). Then an attach (its CBT state file) and a records
    rewrite (after a take) must be refused, and nothing may be written to that file system."""
    dev = d.cli_json("attach", d.make_image("fs.img", 64 * MiB), "--name", "fs", "--loop")
    subprocess.run(["mkfs.ext4", "-q", "-F", dev["loop"]], check=True)
    mnt = os.path.join(d.tmp, "mnt")
    os.mkdir(mnt)
    subprocess.run(["mount", dev["loop"], mnt], check=True)
    os.mkdir(os.path.join(mnt, "cbt"))
    subprocess.run(["umount", mnt], check=True)
    subprocess.run(["mount", dev["loop"], d.state], check=True)
    try:
        rc, out, err = d.cli("attach", d.make_image("other.img", 16 * MiB), "--name", "other")
        t.check(rc == 1 and err.count("\n") == 1 and "state dir " + d.state in err and
                "tracked device 'fs'" in err,
                "attach while the state dir is on fs's front: refused (%r)" % err.strip())
        t.check("other" not in [x["name"] for x in d.cli_json("devices")["devices"]],
                "... and not attached")
        take_and_changes(d, storage, "fs", 0)  # a take rewrites the records
        t.check("not writing " + os.path.join(d.state, "devices.json") in d.log_text(),
                "a take: the records are not rewritten there (logged)")
        t.check(sorted(os.listdir(d.state)) == ["cbt", "lost+found"] and
                os.listdir(os.path.join(d.state, "cbt")) == [],
                "nothing of the daemon's written to the file system on the front (%r)" %
                sorted(os.listdir(d.state)))
    finally:
        if subprocess.run(["umount", d.state]).returncode != 0:
            subprocess.run(["umount", "-l", d.state])  # busy: a file of the daemon's is open there
    d.cli_json("attach", os.path.join(d.tmp, "other.img"), "--name", "other")
    with open(os.path.join(d.state, "devices.json")) as f:
        t.check('"other"' in f.read(), "unmounted: attach works, the records are written again")


def main():
    args = parse_args(sys.argv)
    try:
        import nbd  # noqa: F401
    except ImportError:
        print("SKIP: needs python3-libnbd")
        sys.exit(SKIP)
    t = Failures()
    daemons = []

    def daemon(**kw):
        daemons.append(Daemon(args, **kw))
        return daemons[-1].start()

    try:
        d = daemon(fuse=False)
        image = d.make_image("vol.img", SIZE)
        storage = os.path.join(d.tmp, "storage")
        os.mkdir(storage)
        generation = kill_rounds(d, t, "nbd", image, storage, "vol")
        clean_restart(d, t, image, "vol", "nbd", generation)
        outside_write(d, t, image, generation)
        d.stop()

        if fuse_possible():
            d = daemon(fuse=True)
            loop_image = d.make_image("loop.img", SIZE)
            loop_generation = kill_rounds(d, t, "loop", loop_image, storage, "lvol")
            clean_restart(d, t, loop_image, "lvol", "loop", loop_generation)
            if shutil.which("mkfs.ext4"):
                state_dir_on_front(d, t, storage)
            else:
                t.skip("state dir on a front", "needs mkfs.ext4")
            d.stop()
        else:
            t.skip("kill -9 rounds through a loop front, state dir on a front",
                   "needs root, /dev/fuse, /dev/loop-control")

        boot_id_file = os.path.join(d.tmp, "boot_id")
        with open(boot_id_file, "w") as f:
            f.write("boot-A\n")
        d = daemon(fuse=False, env={"BLKSNAP_TEST_BOOT_ID_FILE": boot_id_file})
        simulated_reboot(d, t, boot_id_file, storage)
    except Exception as e:
        t.check(False, "unexpected exception: %r\n%s" % (e, daemons[-1].log_text()))
    finally:
        for d in daemons:
            d.cleanup()
    if t.skipped and not t.failed:
        print("%d checks passed, %d skipped: SKIP" % (t.passed, t.skipped))
        sys.exit(SKIP)
    t.done()


if __name__ == "__main__":
    main()
