#!/usr/bin/python3
# Purpose: every `blksnap` command works against a real blksnapd, in human and --json form,
# with the keys the CLI contract (issue 3) promises, and the data path behind the commands is
# right: a taken snapshot's image keeps the data of the take while the front changes.
#
# Algorithm: start blksnapd on a temporary state dir (FUSE + loop fronts when root, NBD
# always). Attach two sparse images; stamp 1 MiB of device A with pattern seq 1 through its
# front; create a snapshot of A, add B, take it; stamp the same range with seq 2; check the
# front reads seq 2 and the image seq 1; check cbt info/read/changes/mark-dirty; wait-event
# times out; watch ends when the snapshot is destroyed; status shows everything; with a loop
# device: mkfs + mount the front, write a file without fsync and take: the take froze the ext4
# (frozen_us > 0, the image fscks clean and holds the file, read with debugfs); mark a file dirty
# via FIEMAP; destroy, detach (the last one removes devices.json), and the daemon is empty again
# and stops cleanly, leaving no device records.
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from blksnap_cli_lib import Daemon, Failures, covers, parse_args, verify_front, write_front

MiB = 1 << 20


def main():
    args = parse_args(sys.argv)
    t = Failures()
    d = Daemon(args).start()
    try:
        run(d, t)
        rc = d.stop()
        t.check(rc == 0, "daemon stops with status 0 on SIGTERM (got %r)" % rc)
        t.check(not os.path.exists(os.path.join(d.state, "devices.json")),
                "no device: the clean stop leaves no device records")
    except Exception as e:  # report, then fail
        t.check(False, "unexpected exception: %r\n%s" % (e, d.log_text()))
    finally:
        d.cleanup()
    t.done()


def run(d, t):
    rc, out, err = d.cli("version")
    t.check(rc == 0 and "blksnapd" in out and "blksnap " in out, "version (human)")
    v = d.cli_json("version")
    t.check(isinstance(v.get("version"), str) and v["version"], "version --json has 'version'")

    a_path = d.make_image("vol-a.img", 64 * MiB)
    b_path = d.make_image("vol-b.img", 32 * MiB)
    rc, out, err = d.cli("attach", a_path, "--name", "a")
    t.check(rc == 0 and "attached a" in out, "attach (human): " + out.strip().splitlines()[0] if out else err)
    b = d.cli_json("attach", b_path)
    for key in ("name", "path", "size", "nbd", "fuse", "loop"):
        t.check(key in b, "attach --json has '%s'" % key)
    t.check(b["name"] == "vol-b.img", "attach: name defaults to the base name")
    t.check(b["size"] == 32 * MiB and b["path"] == b_path, "attach: size and path")
    t.check(b["loop"] is None, "attach without --loop: loop is null")
    # The daemon serves NBD on d.nbd (Daemon always passes --nbd-unix): the URI is required.
    uri = "nbd+unix:///vol-b.img?socket=" + d.nbd
    t.check(b["nbd"] == uri, "attach: nbd URI %r" % b["nbd"])
    if shutil.which("nbdinfo"):
        p = subprocess.run(["nbdinfo", "--size", uri], capture_output=True, text=True, timeout=60)
        t.check(p.returncode == 0 and p.stdout.strip() == str(32 * MiB),
                "attach: the nbd URI serves the device (nbdinfo --size: %r %r)"
                % (p.stdout.strip(), p.stderr.strip()))
    else:
        t.skip("attach: the nbd URI serves the device", "nbdinfo not installed")
    if d.fuse:
        t.check(b["fuse"] == os.path.join(d.fuse_dir, "vol-b.img"), "attach: FUSE path")

    devs = d.cli_json("devices")["devices"]
    t.check(sorted(x["name"] for x in devs) == ["a", "vol-b.img"], "devices lists both")
    for key in ("name", "path", "size", "nbd", "fuse", "loop", "snapshot"):
        t.check(all(key in x for x in devs), "devices entries have '%s'" % key)
    rc, out, err = d.cli("devices")
    t.check(rc == 0 and "vol-b.img" in out and "NAME" in out, "devices (human table)")

    a = next(x for x in devs if x["name"] == "a")
    have_front = bool(a.get("fuse") or a.get("nbd"))
    info = d.cli_json("cbt", "info", "a")
    for key in ("block_size", "block_count", "device_capacity", "generation_id", "changes_number"):
        t.check(key in info, "cbt info has '%s'" % key)
    t.check(info["device_capacity"] == 64 * MiB, "cbt info: capacity")
    t.check(info["block_count"] * info["block_size"] >= 64 * MiB, "cbt info: blocks cover the device")
    rc, out, err = d.cli("cbt", "info", "a")
    t.check(rc == 0 and "generation" in out, "cbt info (human)")

    if have_front:
        write_front(d, a, 0, MiB, 1)
        t.check(verify_front(d, a, 0, MiB, 1), "front reads back seq 1")

    storage = os.path.join(d.tmp, "storage")
    os.mkdir(storage)
    sid = d.cli_json("snapshot", "create", "--storage", storage, "--limit", "256M", "a")["id"]
    t.check(len(sid) == 36, "snapshot create --json returns an id")
    lst = d.cli_json("snapshot", "list")["snapshots"]
    t.check([s["id"] for s in lst] == [sid] and lst[0]["state"] == "created", "snapshot list: created")
    rc, out, err = d.cli("snapshot", "add", sid, "vol-b.img")
    t.check(rc == 0, "snapshot add (human)")
    si = d.cli_json("snapshot", "info", sid)
    t.check(si["state"] == "created" and sorted(x["name"] for x in si["devices"]) == ["a", "vol-b.img"],
            "snapshot info: created with both devices")
    for key in ("path", "capacity", "used", "limit"):
        t.check(key in si["storage"], "snapshot info storage has '%s'" % key)
    t.check(si["storage"]["limit"] == 256 * MiB, "snapshot info: limit 256M")
    t.check(d.cli_json("devices")["devices"][0]["snapshot"] == sid, "devices: snapshot id shown")

    take = d.cli_json("snapshot", "take", sid)
    t.check(take.get("id") == sid and isinstance(take.get("took_ms"), (int, float)), "snapshot take --json")
    si = d.cli_json("snapshot", "info", sid)
    t.check(si["state"] == "taken", "snapshot info: taken")
    img_a = next(x for x in si["devices"] if x["name"] == "a")
    for key in ("name", "error", "image"):
        t.check(key in img_a, "snapshot info device has '%s'" % key)
    for key in ("nbd", "fuse", "loop"):
        t.check(key in img_a["image"], "snapshot info image has '%s'" % key)
    t.check(img_a["error"] == 0, "snapshot info: device without error")
    rc, out, err = d.cli("snapshot", "info", sid)
    t.check(rc == 0 and "taken" in out, "snapshot info (human)")

    if have_front:
        write_front(d, a, 0, MiB, 2)
        t.check(verify_front(d, a, 0, MiB, 2), "front reads the new data (seq 2)")
        if img_a["image"].get("fuse") or img_a["image"].get("nbd"):
            t.check(verify_front(d, img_a["image"], 0, MiB, 1), "image still holds the take (seq 1)")

    info = d.cli_json("cbt", "info", "a")
    t.check(info["changes_number"] >= 1, "cbt info: changes_number advanced by the take")
    ch = d.cli_json("cbt", "changes", "a", "--since", "0")
    t.check("generation_id" in ch and "extents" in ch, "cbt changes --json keys")
    if have_front:
        t.check(covers(ch["extents"], 0, MiB), "cbt changes since 0 cover the written MiB")
    ch2 = d.cli_json("cbt", "changes", "a", "--since", "0", "--generation", info["generation_id"])
    t.check(ch2["extents"] == ch["extents"], "cbt changes with the right generation")
    rc, out, err = d.cli("cbt", "changes", "a", "--since", "0")
    t.check(rc == 0 and "extent" in out, "cbt changes (human)")

    map_path = os.path.join(d.tmp, "map.bin")
    r = d.cli_json("cbt", "read", "a", "--output", map_path)
    t.check(r.get("bytes") == info["block_count"] and os.path.getsize(map_path) == info["block_count"],
            "cbt read writes one byte per block")
    with open(map_path, "rb") as f:
        m = f.read()
    if have_front:
        t.check(m[0] >= 1, "cbt read: first block marked changed")

    mark_off = 48 * MiB
    r = d.cli_json("cbt", "mark-dirty", "a", "--range", "48M:64K", "--range", "50M:4K")
    t.check(r == {"ranges": 2, "bytes": 64 * 1024 + 4096}, "cbt mark-dirty --range --json: %r" % r)
    rc, out, err = d.cli("cbt", "mark-dirty", "a", "--range", "%d:%d" % (mark_off, 4096))
    t.check(rc == 0, "cbt mark-dirty (human)")
    d.cli_json("cbt", "read", "a", "--output", map_path)
    with open(map_path, "rb") as f:
        m = f.read()
    # Mark-dirty after the take puts the last snap number (changes_number) in the read map, so
    # the ranges count as changed since any earlier snap; untouched blocks stay 0.
    bs = info["block_size"]
    t.check(m[mark_off // bs] == info["changes_number"] and m[(50 * MiB) // bs] == info["changes_number"],
            "mark-dirty: read map holds snap number %d at 48M and 50M (got %d, %d)"
            % (info["changes_number"], m[mark_off // bs], m[(50 * MiB) // bs]))
    t.check(m[(56 * MiB) // bs] == 0, "mark-dirty: an unmarked block (56M) stays 0")
    ch = d.cli_json("cbt", "changes", "a", "--since", "0")
    t.check(covers(ch["extents"], mark_off, 64 * 1024) and covers(ch["extents"], 50 * MiB, 4096)
            and not covers(ch["extents"], 56 * MiB, bs),
            "mark-dirty ranges (and only they) show in the changes since 0")

    # A timeout is an outcome, not an error: the result on stdout, exit status 6.
    rc, out, err = d.cli("--json", "snapshot", "wait-event", sid, "--timeout", "100")
    t.check(rc == 6 and json.loads(out).get("result") == "timeout" and err == "",
            "wait-event times out without events (exit %d, %r)" % (rc, out))
    rc, out, err = d.cli("snapshot", "wait-event", sid, "--timeout", "50")
    t.check(rc == 6 and "timeout" in out, "wait-event (human)")

    rc, out, err = d.cli("status")
    t.check(rc == 0 and "DEVICES" in out and "SNAPSHOTS" in out and sid in out and "vol-b.img" in out,
            "status prints the table")
    st = d.cli_json("status")
    t.check(len(st["devices"]) == 2 and len(st["snapshots"]) == 1, "status --json")

    watch = subprocess.Popen([d.args["blksnap"], "--control", d.control, "--json", "snapshot",
                              "watch", sid], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    rc, out, err = d.cli("snapshot", "destroy", sid)
    t.check(rc == 0 and "destroyed" in out, "snapshot destroy (human)")
    try:
        wout, werr = watch.communicate(timeout=30)
        lines = [json.loads(x) for x in wout.splitlines() if x.strip()]
        t.check(watch.returncode == 0 and lines and lines[-1].get("result") == "destroyed",
                "watch ends with the destroy (%r %r)" % (wout, werr))
    except subprocess.TimeoutExpired:
        watch.kill()
        t.check(False, "watch did not end after destroy")
    t.check(d.cli_json("snapshot", "list")["snapshots"] == [], "snapshot list empty after destroy")
    if have_front:
        t.check(verify_front(d, a, 0, MiB, 2), "front keeps seq 2 after destroy")

    if d.fuse:
        loop_flow(d, t)

    t.check(d.cli_json("detach", "a") == {}, "detach --json gives {}")
    rc, out, err = d.cli("detach", "vol-b.img")
    t.check(rc == 0 and "detached" in out, "detach (human)")
    t.check(d.cli_json("devices")["devices"] == [], "devices empty after detach")
    t.check(not os.path.exists(os.path.join(d.state, "devices.json")),
            "the last detach removes the device records")


def loop_flow(d, t):
    """attach --loop, ext4 on the loop device, snapshot create --loop, FIEMAP mark-dirty."""
    path = d.make_image("vol-c.img", 128 * MiB)
    c = d.cli_json("attach", path, "--name", "c", "--loop")
    t.check(c["loop"] and c["loop"].startswith("/dev/loop"), "attach --loop reports a loop device")
    mnt = os.path.join(d.tmp, "mnt-c")
    os.mkdir(mnt)
    subprocess.run(["mkfs.ext4", "-q", "-F", c["loop"]], check=True)
    subprocess.run(["mount", c["loop"], mnt], check=True)
    try:
        fpath = os.path.join(mnt, "data.bin")
        with open(fpath, "wb") as f:
            f.write(os.urandom(2 * MiB))
            f.flush()
            os.fsync(f.fileno())
        rc, out, err = d.cli("detach", "c")
        t.check(rc == 4 and "in use" in err, "detach refused (exit 4) while the loop device is mounted")
        storage = os.path.join(d.tmp, "storage-c")
        os.mkdir(storage)
        sid = d.cli_json("snapshot", "create", "--storage", storage, "--limit", "64M", "--loop", "c")["id"]
        # A file written without fsync just before the take sits in the page cache (delayed
        # allocation, commit and writeback are seconds away): only the take's FIFREEZE of the
        # ext4 on the loop front puts it, with clean metadata, into the image.
        fresh = os.urandom(256 * 1024)
        with open(os.path.join(mnt, "fresh.bin"), "wb") as f:
            f.write(fresh)
        take = d.cli_json("snapshot", "take", sid)
        t.check(take["id"] == sid and take.get("frozen_us", 0) > 0 and take.get("warnings") == [],
                "take with a mounted ext4 reports the freeze (frozen_us > 0): %r" % take)
        si = d.cli_json("snapshot", "info", sid)
        img = si["devices"][0]["image"]
        t.check(img["loop"] and img["loop"].startswith("/dev/loop"), "snapshot create --loop: image loop device")
        fsck = subprocess.run(["e2fsck", "-fn", img["loop"]], capture_output=True, text=True)
        t.check(fsck.returncode == 0, "the image's ext4 is clean, nothing to replay (it was frozen): "
                "e2fsck -fn exit %d %s" % (fsck.returncode, fsck.stdout.strip()[-300:]))
        cat = subprocess.run(["debugfs", "-R", "cat /fresh.bin", img["loop"]], capture_output=True)
        t.check(cat.stdout == fresh, "the image holds the file written without fsync before the take "
                "(%d of %d bytes)" % (len(cat.stdout), len(fresh)))
        r = d.cli_json("cbt", "mark-dirty", "c", "--file", fpath)
        t.check(r.get("ranges", 0) >= 1, "cbt mark-dirty --file (FIEMAP) marks the file's extents")
        # A file on another file system (here the test's temp dir) would mark the wrong blocks.
        other = d.make_image("elsewhere.bin", 1 << 20)
        with open(other, "r+b") as f:
            f.write(os.urandom(1 << 20))
        rc, out, err = d.cli("--json", "cbt", "mark-dirty", "c", "--file", other)
        t.check(rc != 0 and "not on a block front of 'c'" in err,
                "cbt mark-dirty --file refuses a file on another device (exit %d): %s" %
                (rc, err.strip()[-160:]))
        # --force skips that check: the ranges reach the daemon, which still refuses any range
        # past the device's end (the temp dir's disk is larger than the 128 MiB device).
        rc, out, err = d.cli("--json", "cbt", "mark-dirty", "c", "--file", other, "--force")
        t.check("not on a block front" not in err and ("past the end" in err or rc == 0),
                "... and --force skips the check (exit %d) %s" % (rc, err.strip()[-120:]))
        d.cli_json("snapshot", "destroy", sid)
    finally:
        subprocess.run(["umount", mnt])
    t.check(d.cli_json("detach", "c") == {}, "detach the loop device's device after umount")


if __name__ == "__main__":
    main()
