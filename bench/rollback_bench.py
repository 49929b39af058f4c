#!/usr/bin/env python3
"""Rollback speed (issue 18, "Speed"): merge throughput against a plain dd copy of the same amount
of data on the same storage, and the time from `blksnap snapshot rollback` to the first read of
the rolled-back device.

Method. A fresh blksnapd (release build, its own state dir) attaches an image file of --size
bytes (default 4 GiB; --quick 512 MiB) filled with random data, with the FUSE front; a durable
snapshot (power) is taken with its storage in a directory beside the image; then 25% of the
device's 256 KiB chunks, chosen at random, are overwritten through the FUSE file (each first
write copies the chunk into the difference storage) and synced. The page cache is dropped
(echo 3 > drop_caches) before each timed step.
  rollback  `blksnap snapshot rollback ID --no-wait` (its wall time), then one 4 KiB read of a
            changed chunk through the FUSE file: "first read" = from the command's start to that
            read's end; then polled every 20 ms until the merge is done: merge MB/s = the bytes
            the merge wrote (the daemon's bytes_total) / (done - command start).
  dd        `dd if=STORAGE_FILE of=SCRATCH bs=4M count=N conv=fsync` with N*4 MiB = the merged
            bytes: the same amount read from the storage file and written to a file on the same
            file system, synced.
Ratio = merge MB/s / dd MB/s (target >= 0.8), first read target < 100 ms. Needs root (FUSE).
Writes bench/results/rollback-<rev>[-quick].json and prints one line per figure.
"""
import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MIB = 1 << 20
CHUNK = 256 * 1024


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--blksnapd", default=os.path.join(ROOT, "build-release/src/daemon/blksnapd"))
    ap.add_argument("--blksnap", default=os.path.join(ROOT, "build-release/src/cli/blksnap"))
    ap.add_argument("--size", type=int, default=4096, help="MiB")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dir", default=os.environ.get("BLKSNAP_BENCH_DIR", "/var/tmp/blksnap-bench"))
    a = ap.parse_args()
    size = (512 if a.quick else a.size) * MIB
    work = os.path.join(a.dir, "rollback")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.join(work, "storage"))
    control = os.path.join(work, "control.sock")
    fuse_dir = os.path.join(work, "dev")
    daemon = None

    def cli(*argv):
        p = subprocess.run([a.blksnap, "--control", control, "--json"] + [str(x) for x in argv],
                           capture_output=True, text=True, check=True)
        return json.loads(p.stdout.strip().splitlines()[-1])

    try:
        img = os.path.join(work, "vol.img")
        with open(img, "wb") as f:
            block = os.urandom(4 * MIB)
            for _ in range(size // len(block)):
                f.write(block)
        daemon = subprocess.Popen([a.blksnapd, "--state-dir", os.path.join(work, "state"),
                                   "--control", control, "--fuse-dir", fuse_dir,
                                   "--nbd-unix", os.path.join(work, "nbd.sock")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(300):
            if os.path.exists(control):
                break
            time.sleep(0.05)
        dev = cli("attach", img, "--name", "vol")
        sid = cli("snapshot", "create", "--storage", os.path.join(work, "storage"), "--limit", "0",
                  "--durability", "power", "vol")["id"]
        cli("snapshot", "take", sid)
        rnd = random.Random(18)
        chunks = sorted(rnd.sample(range(size // CHUNK), size // CHUNK // 4))
        data = os.urandom(CHUNK)
        fd = os.open(dev["fuse"], os.O_RDWR)
        for c in chunks:
            os.pwrite(fd, data, c * CHUNK)
        os.fsync(fd)
        os.close(fd)
        storage_file = cli("snapshot", "info", sid)["storage"]["file"]

        drop_caches()
        start = time.monotonic()
        cli("snapshot", "rollback", sid, "--no-wait")
        command = time.monotonic() - start
        fd = os.open(dev["fuse"], os.O_RDONLY)
        os.pread(fd, 4096, chunks[len(chunks) // 2] * CHUNK)
        os.close(fd)
        first_read = time.monotonic() - start
        while True:
            r = cli("devices")["devices"][0]["rollback"]
            if r["state"] != "merging":
                break
            time.sleep(0.02)
        merge = time.monotonic() - start
        if r["state"] != "done":
            sys.exit("rollback ended %r" % r)
        merged = r["bytes_total"]

        drop_caches()
        count = max(1, merged // (4 * MIB))
        start = time.monotonic()
        subprocess.run(["dd", "if=" + storage_file, "of=" + os.path.join(work, "dd.out"), "bs=4M",
                        "count=%d" % count, "conv=fsync", "status=none"], check=True)
        dd = time.monotonic() - start
        res = {
            "size_bytes": size, "chunks_changed": len(chunks), "merged_bytes": merged,
            "command_ms": command * 1000, "first_read_ms": first_read * 1000,
            "merge_s": merge, "merge_mb_s": merged / merge / 1e6,
            "dd_s": dd, "dd_mb_s": count * 4 * MIB / dd / 1e6,
            "load_average": os.getloadavg(),
        }
        res["ratio"] = res["merge_mb_s"] / res["dd_mb_s"]
        rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True).stdout.strip()
        out = os.path.join(HERE, "results", "rollback-%s%s.json" % (rev, "-quick" if a.quick else ""))
        with open(out, "w") as f:
            json.dump(res, f, indent=1)
        for k, v in res.items():
            print("%-16s %s" % (k, "%.3f" % v if isinstance(v, float) else v))
        print("merge / dd = %.2f (target >= 0.8); first read %.1f ms (target < 100 ms) -> %s" %
              (res["ratio"], res["first_read_ms"], out))
    finally:
        if daemon:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(60)
            except subprocess.TimeoutExpired:
                daemon.kill()
        subprocess.run(["umount", "-l", fuse_dir], stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
