#!/usr/bin/env python3
# Rollback of a device to a snapshot through the real daemon and CLI (issue 18): ext4 on the
# device's loop front, files written, snapshot s1 taken, files deleted and new ones written,
# snapshot s2 taken, more writes. Then:
#   * rollback is refused while the file system is mounted (one line), for a memory snapshot,
#     and while a memory snapshot newer than s1 lives;
#   * `snapshot rollback s1 --no-wait` returns with the front serving s1's image at once (its
#     bytes compared with s1's image read before), and the merge going on;
#   * kill -9 of the daemon mid-merge (merge slowed by BLKSNAP_TEST_ROLLBACK_DELAY_US); the
#     restart resumes it; a clean stop while it merges again, and the next start resumes it
#     too; when it is done the front is byte-identical to s1's image, e2fsck finds
#     nothing, every deleted file is back with its checksum, the journal is gone;
#   * s2 (taken after s1) is intact: its image's bytes as before;
#   * CBT: after the next take, the changes since s2 cover every 64 KiB block where s1 and s2
#     differ (so the next incremental backup cannot miss a rolled-back chunk);
#   * a second rollback (to s2, waiting, with progress lines under --json) ends "done";
#   * a third (to s4) stopped mid-merge, s4's storage deleted while the daemon is down: the
#     restart reports it failed, `snapshot abandon-rollback` gives it up (refused while merging).
import os
import random
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from blksnap_cli_lib import (SKIP, Daemon, Failures, covers, fuse_possible,  # noqa: E402
                             parse_args, sha, tree_sums)

MiB = 1 << 20
SIZE = 96 * MiB
BLOCK = 64 * 1024


def differing_blocks(a, b, size):
    out = []
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for off in range(0, size, BLOCK):
            if fa.read(BLOCK) != fb.read(BLOCK):
                out.append(off)
    return out


def write_files(mnt, rnd, names):
    for name in names:
        with open(os.path.join(mnt, name), "wb") as out:
            out.write(rnd.randbytes(rnd.randrange(100_000, 2 * MiB)))
    os.sync()


def take(d, storage, durability="power"):
    sid = d.cli_json("snapshot", "create", "--storage", storage, "--limit", "0", "--durability",
                     durability, "fs")["id"]
    d.cli_json("snapshot", "take", sid)
    return sid


def image_file(d, sid):
    return d.cli_json("snapshot", "info", sid)["devices"][0]["image"]["fuse"]


def rollback_of(d):
    return d.cli_json("devices")["devices"][0]["rollback"]


def wait_done(d, timeout=120):
    deadline = time.monotonic() + timeout
    r = rollback_of(d)
    while r and r["state"] == "merging" and time.monotonic() < deadline:
        time.sleep(0.1)
        r = rollback_of(d)
    return r


def one_line_error(t, rc, err, needle, what):
    t.check(rc != 0 and needle in err and len(err.strip().splitlines()) == 1,
            "%s: rc %d %r" % (what, rc, err.strip()))


def run(d, t):
    storage = os.path.join(d.tmp, "storage")
    mnt = os.path.join(d.tmp, "mnt")
    os.mkdir(storage)
    os.mkdir(mnt)
    rnd = random.Random(18)
    dev = d.cli_json("attach", d.make_image("fs.img", SIZE), "--name", "fs", "--loop")
    subprocess.run(["mkfs.ext4", "-q", dev["loop"]], check=True)
    subprocess.run(["mount", dev["loop"], mnt], check=True)
    mounted = True
    try:
        write_files(mnt, rnd, ["a%d" % i for i in range(30)])
        before = tree_sums(mnt)
        s1 = take(d, storage)
        for i in range(20):
            os.unlink(os.path.join(mnt, "a%d" % i))
        write_files(mnt, rnd, ["b%d" % i for i in range(10)])
        s2 = take(d, storage)
        write_files(mnt, rnd, ["c%d" % i for i in range(10)])
        sum1, sum2 = sha(image_file(d, s1)), sha(image_file(d, s2))
        s2_number = d.cli_json("devices")["devices"][0]["cbt"]["changes_number"]

        rc, _, err = d.cli("snapshot", "rollback", s1)
        one_line_error(t, rc, err, "mounted", "rollback refused while ext4 is mounted")
        subprocess.run(["umount", mnt], check=True)
        mounted = False
        mem = take(d, storage, "memory")
        rc, _, err = d.cli("snapshot", "rollback", mem)
        one_line_error(t, rc, err, "memory", "rollback to a memory snapshot refused")
        rc, _, err = d.cli("snapshot", "rollback", s1)
        one_line_error(t, rc, err, "newer and kept in memory",
                       "rollback refused under a newer memory snapshot")
        d.cli_json("snapshot", "destroy", mem)

        started = time.monotonic()
        r = d.cli_json("snapshot", "rollback", s1, "--no-wait")
        t.check([x["name"] for x in r.get("devices", [])] == ["fs"],
                "rollback --no-wait names the device: %r" % r)
        state = rollback_of(d)
        t.check(state and state["state"] == "merging" and state["snapshot"] == s1,
                "the merge runs in the background: %r" % state)
        t.check(sha(dev["fuse"]) == sum1,
                "the front serves s1's image at once (%.0f ms after the command)" %
                ((time.monotonic() - started) * 1000))
        rc, _, err = d.cli("snapshot", "destroy", s1)
        one_line_error(t, rc, err, "rolled back", "destroy of the target refused while it merges")
        journal = os.path.join(d.state, "rollback-fs.journal")
        t.check(os.path.exists(journal), "the journal is in the state dir while it merges")

        # kill -9 once a part is merged and committed (a commit every 250 ms, a run of chunks
        # every 1.5 s per merge thread here).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = rollback_of(d)
            if state["state"] != "merging" or state["chunks_merged"] > 0:
                break
            time.sleep(0.02)
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        d.proc = None
        merged_at_kill = state["chunks_merged"]
        t.check(state["state"] == "merging" and 0 < merged_at_kill < state["chunks_total"],
                "killed mid-merge: %d of %d chunks merged" % (merged_at_kill,
                                                              state["chunks_total"]))
        d.start()
        dev = d.cli_json("devices")["devices"][0]
        t.check(dev["rollback"] is not None and dev["rollback"]["snapshot"] == s1,
                "after kill -9 the rollback resumes: %r (merged %r of %r before the kill)" %
                (dev["rollback"], merged_at_kill, state and state["chunks_total"]))
        # A clean stop mid-merge keeps the journal; the next start resumes again.
        t.check(rollback_of(d)["state"] == "merging",
                "the resumed merge still runs (else raise the test's merge delay)")
        t.check(d.stop() == 0, "clean stop while the resumed merge runs")
        t.check(os.path.exists(journal), "the journal survives the clean stop")
        d.start()
        dev = d.cli_json("devices")["devices"][0]
        t.check(dev["rollback"] is not None and dev["rollback"]["snapshot"] == s1,
                "after the clean restart the rollback resumes: %r" % dev["rollback"])
        r = wait_done(d)
        t.check(r and r["state"] == "done" and r["chunks_merged"] == r["chunks_total"],
                "the resumed merge ends: %r" % r)
        t.check(sha(dev["fuse"]) == sum1, "the front is byte-identical to s1's image")
        t.check(not os.path.exists(journal), "the journal is removed when the merge ends")
        t.check(sha(image_file(d, s2)) == sum2, "s2, taken after s1, is intact")
        fsck = subprocess.run(["e2fsck", "-fn", dev["loop"]], capture_output=True, text=True)
        t.check(fsck.returncode == 0, "e2fsck -fn is clean: rc %d %s" % (fsck.returncode,
                                                                         fsck.stdout[-300:]))
        subprocess.run(["mount", dev["loop"], mnt], check=True)
        got = tree_sums(mnt)
        got.pop("lost+found", None)
        subprocess.run(["umount", mnt], check=True)
        t.check(got == before, "every file of s1 is back with its checksum (%d files, %d differ)" %
                (len(before), sum(got.get(k) != v for k, v in before.items())))

        # CBT: the rolled-back blocks are changes since s2, seen at the next take.
        s3 = take(d, storage)
        extents = d.cli_json("cbt", "changes", "fs", "--since", str(s2_number))["extents"]
        missing = [o for o in differing_blocks(image_file(d, s1), image_file(d, s2), SIZE)
                   if not covers(extents, o, BLOCK)]
        t.check(not missing, "CBT covers every block the rollback changed (%d missing)" %
                len(missing))
        d.cli_json("snapshot", "destroy", s3)

        # A second rollback, to s2, waiting for the end with JSON progress lines.
        rc, out, err = d.cli("--json", "snapshot", "rollback", s2)
        lines = [line for line in out.splitlines() if line.strip()]
        t.check(rc == 0 and lines and '"done"' in lines[-1],
                "rollback to s2 ends done: rc %d %s %s" % (rc, lines[-1:] if lines else out, err))
        t.check(sha(dev["fuse"]) == sum2, "the front is byte-identical to s2's image")
        for sid in (s1, s2):
            d.cli_json("snapshot", "destroy", sid)
        abandon_lost_rollback(d, t, storage, dev, journal)
        d.cli_json("detach", "fs")
    finally:
        if mounted:
            subprocess.run(["umount", mnt], stderr=subprocess.DEVNULL)


def abandon_lost_rollback(d, t, storage, dev, journal):
    """A rollback whose snapshot is lost while the daemon is down cannot resume: the device
    reports it failed, and `snapshot abandon-rollback` gives it up (refused while it merges)."""
    s4 = take(d, storage)
    with open(dev["fuse"], "r+b") as f:  # 64 KiB in each MiB: many runs, a slow merge
        rnd = random.Random(4)
        for off in range(0, SIZE, MiB):
            f.seek(off)
            f.write(rnd.randbytes(BLOCK))
        os.fsync(f.fileno())
    d.cli_json("snapshot", "rollback", s4, "--no-wait")
    rc, _, err = d.cli("snapshot", "abandon-rollback", "fs")
    one_line_error(t, rc, err, "merging", "abandon refused while the rollback merges")
    t.check(d.stop() == 0, "clean stop mid-merge (rollback to s4)")
    lost = [os.path.join(storage, n) for n in os.listdir(storage) if s4 in n]
    t.check(lost, "s4's storage file found: %r" % os.listdir(storage))
    for path in lost:
        os.unlink(path)
    d.start()
    r = rollback_of(d)
    t.check(r and r["state"] == "failed" and "cannot resume" in (r["error"] or ""),
            "a rollback whose snapshot was lost is reported failed: %r" % r)
    t.check(os.path.exists(journal), "its journal is kept until abandoned")
    rc, _, err = d.cli("detach", "fs")
    one_line_error(t, rc, err, "abandon-rollback", "detach refused while a rollback is unfinished")
    rc, out, err = d.cli("snapshot", "abandon-rollback", "fs")
    t.check(rc == 0 and "abandoned" in out, "abandon-rollback: rc %d %s %s" % (rc, out, err))
    t.check(not os.path.exists(journal) and rollback_of(d) is None,
            "abandoned: no journal, no rollback shown")
    rc, _, err = d.cli("snapshot", "abandon-rollback", "fs")
    one_line_error(t, rc, err, "no rollback", "a second abandon is refused")
    s5 = take(d, storage)
    d.cli_json("snapshot", "destroy", s5)
    t.check(d.stop() == 0, "clean stop after the abandon")
    d.start()
    t.check(rollback_of(d) is None, "the next start resumes nothing")


def main():
    if not fuse_possible():
        print("SKIP: needs root, /dev/fuse and /dev/loop-control")
        sys.exit(SKIP)
    args = parse_args(sys.argv)
    t = Failures()
    d = Daemon(args, fuse=True, env={"BLKSNAP_TEST_ROLLBACK_DELAY_US": "1500000"}).start()
    try:
        run(d, t)
    except Exception as e:  # noqa: BLE001
        t.check(False, "unexpected exception: %r\n%s" % (e, d.log_text()))
    finally:
        d.cleanup()
    t.done()


if __name__ == "__main__":
    main()
