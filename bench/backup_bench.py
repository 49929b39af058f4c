#!/usr/bin/env python3
"""Backup, incremental and restore: blksnap against restic and borg on one image (issue 16,
"Speed"), side by side in one run.

Run (root: loop mounts and FUSE), after a release build (bench/run builds build-release/, or
`cmake -G Ninja -B build-release -DCMAKE_BUILD_TYPE=Release && ninja -C build-release blksnapd
blksnap_cli`):
    sudo /usr/bin/python3 bench/backup_bench.py [--quick] [--build DIR] [--size BYTES]
--quick uses a 512 MiB image; otherwise BENCH_BACKUP_SIZE (default 4G). Results go to
bench/results/backup-<git tree>[-quick][-chunkSIZE].json (--chunk-size: blksnap's repository chunk
size, default 4M); method and figures: docs/performance.md,
section "Backup (issue 16)". Not part of bench/run's default run.

Design note. One sequence, every tool on the same image file and the same changes:
  1. image   a sparse file of the size, mkfs.ext4 (no lazy init, so nothing writes to it later
             by itself), mounted with `mount -o loop` and filled with a copy of /usr's regular
             files (and symlinks), in sorted order, up to 60% of the size; the rest is free
             (never-written, zero) space. Unmounted.
  2. full    blksnapd on a scratch state dir attaches the image with --loop; `repo init` then
             `backup` (full; compression zstd-3 by default). restic (repository v2, compression
             auto) and borg (-e none, --compression zstd,3) back up the image file by path.
             Before each timed step the image is read once, so each tool starts from the same
             page-cached image.
  3. rewrite ~1% of the copied files (seeded random choice), each overwritten in place with
             random bytes of its size, through blksnap's front: the --loop device of the
             attached image is mounted, the files written, synced, unmounted, so CBT sees
             every write. "changed bytes" = the bytes that differ on the device afterwards, in
             4 KiB blocks (the image is copied before the rewrite and compared after, untimed):
             the rewritten files' data plus what ext4 wrote for them (inode tables, bitmaps,
             its journal), all of which a block-level backup must read. The rewritten files'
             sizes are recorded too ("file_bytes_rewritten", and read / that as info).
  4. incr    blksnap `backup` (incremental: its stats.read_bytes is the bytes it read), then
             restic and borg of the image file again (both re-read all of it: its mtime changed).
  5. restore blksnap `restore` of the incremental to a file (then `repo serve` of it: seconds
             from the command to its first 512 bytes read over NBD), `restic restore latest`, `borg
             extract` of the second archive; each result is compared with the image (cmp,
             untimed) and removed. Each restore's time includes `sync -f` of the target's file
             system: blksnap writes with O_DIRECT and fdatasyncs before it exits, restic and borg
             leave dirty pages that 24 GiB of page cache would hide otherwise (an untimed `sync`
             before each restore, so none pays for another's dirty pages). Then each tool
             restores again into a tmpfs (SCRATCH_TMPFS, default /dev/shm), each tool's
             repository read once just before (untimed): no disk, so the figure is the
             repository and CPU side (the "page-cached repo" target). Each of the two restores
             runs RESTORE_ROUNDS times per tool, the tools taking turns, and the median counts:
             this shared machine's disk varies by +-30% from minute to minute.
  6. cpu     openssl's SHA-256 and zstd -b3 speeds on this machine (one core each), the limit
             on the data path of all three tools.
Timing: wall seconds of each command (the CLI's round trip for blksnap). Sizes: du -sb of each
repository after both backups. Every process is started by setups.spawn or run() and stopped
by its pid; setups.cleanup() removes our loop devices, mounts and the scratch dir at the end.
"""
import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time

os.environ.setdefault("BLKSNAP_BENCH_DIR", "/var/tmp/blksnap-backup-bench")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import GIB, MIB, ROOT, SCRATCH, loadavg, log, run  # noqa: E402
from setups import Lab, cleanup, stop  # noqa: E402

FILL = 0.60  # share of the image filled with files
REWRITE = 0.01  # share of the files rewritten before the incremental
RESTORE_ROUNDS = int(os.environ.get("BENCH_RESTORE_ROUNDS", "3"))  # each restore, median counts
SEED = 16
TARGETS = (  # name, key in ratios, comparison, target
    ("full backup blksnap/restic", "full_vs_restic", ">=", 2.0),
    ("full backup blksnap/borg", "full_vs_borg", ">=", 2.0),
    ("repository size blksnap/restic", "repo_vs_restic", "<=", 1.0),
    ("incremental speed-up vs restic", "incr_speedup_vs_restic", ">=", 20.0),
    ("bytes read / bytes changed on the device", "read_vs_changed", "<=", 2.0),
    ("restore blksnap/restic", "restore_vs_restic", ">=", 2.0),
    ("restore blksnap/restic, into tmpfs", "restore_tmpfs_vs_restic", ">=", 2.0),
    # >= 1 "where the CPU allows": the wanted value is min(1, 0.9 x the CPU limit), see below.
    ("restore GiB/s (page-cached repo, into tmpfs)", "restore_tmpfs_gibps", ">=", 1.0),
    ("repo serve: first byte, s", "serve_first_byte_s", "<=", 1.0),
)


def parse_size(s):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    s = str(s).strip().upper().rstrip("B").rstrip("I")
    return int(float(s[:-1]) * units[s[-1]]) if s[-1] in units else int(s)


def timed(cmd, **kw):
    t = time.monotonic()
    r = run(cmd, **kw)
    return time.monotonic() - t, r


def du(path):
    return int(run(["du", "-sb", path]).stdout.split()[0])


def warm(path):
    """Reads the file once, so the next step starts from a page-cached image."""
    with open(path, "rb") as f:
        while f.read(8 * MIB):
            pass


def warm_tree(top):
    """Reads every file under top once: a page-cached repository for the tmpfs restore."""
    for d, _, names in os.walk(top):
        for name in names:
            p = os.path.join(d, name)
            if os.path.isfile(p) and not os.path.islink(p):
                warm(p)


# ---------------------------------------------------------------- the image


def fill_from_usr(mnt, budget):
    """Copies /usr's regular files into mnt, in a seeded random order (so the mix of sizes and
    directories is /usr's, not its first directories'), until budget bytes; symlinks of the
    copied directories come along. Returns the copied files as (relative path, size)."""
    candidates, links = [], []
    for d, dirs, names in os.walk("/usr"):
        dirs.sort()
        for n in sorted(names):
            src = os.path.join(d, n)
            try:
                if os.path.islink(src):
                    links.append(src)
                elif os.path.isfile(src) and os.path.getsize(src) > 0:
                    candidates.append((src, os.path.getsize(src)))
            except OSError:
                continue
    random.Random(SEED).shuffle(candidates)
    files, total, made = [], 0, set()
    for src, size in candidates:
        if total + size > budget:
            continue
        rel = os.path.relpath(src, "/")
        dst = os.path.join(mnt, rel)
        try:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copyfile(src, dst)
        except OSError:
            continue
        made.add(os.path.dirname(rel))
        files.append((rel, size))
        total += size
        if total >= budget * 0.999:
            break
    for src in links:
        rel = os.path.relpath(src, "/")
        if os.path.dirname(rel) in made:
            try:
                os.symlink(os.readlink(src), os.path.join(mnt, rel))
            except OSError:
                pass
    return files, total


def make_image(path, size, mnt):
    log(f"image: {size // MIB} MiB ext4, filling {FILL:.0%} from /usr")
    with open(path, "wb") as f:
        f.truncate(size)
    run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", path])
    os.makedirs(mnt, exist_ok=True)
    run(["mount", "-o", "loop", path, mnt])
    try:
        files, total = fill_from_usr(mnt, int(size * FILL))
    finally:
        run(["umount", mnt])
    run(["sync"])
    log(f"image: {len(files)} files, {total / MIB:.0f} MiB")
    return files, total


def changed_blocks_bytes(before, after, block=4096):
    """Bytes of the 4 KiB blocks that differ between two images of one size."""
    n = 0
    with open(before, "rb") as a, open(after, "rb") as b:
        while True:
            x, y = a.read(8 * MIB), b.read(8 * MIB)
            if not x and not y:
                return n
            if x != y:
                n += sum(block for i in range(0, max(len(x), len(y)), block)
                         if x[i:i + block] != y[i:i + block])


def rewrite(front, mnt, files, img=None):
    """Overwrites ~REWRITE of the files in place with random bytes, through the front."""
    rng = random.Random(SEED)
    chosen = rng.sample(files, max(1, int(len(files) * REWRITE)))
    run(["mount", front, mnt] if front else ["mount", "-o", "loop", img, mnt])
    try:
        for rel, size in chosen:
            with open(os.path.join(mnt, rel), "r+b") as f:
                f.write(os.urandom(size))
        run(["sync"])
    finally:
        run(["umount", mnt])
    run(["sync"])
    return len(chosen), sum(s for _, s in chosen)


# ---------------------------------------------------------------- the tools


class Blksnap:
    name = "blksnap"

    def __init__(self, lab, img, chunk_size=None, segment_size=None, daemon_args="",
                 zstd_level=None):
        self.lab, self.img = lab, img
        self.repo = os.path.join(SCRATCH, "repo-blksnap")
        self.proc = lab.daemon(daemon_args.split())
        self.front = lab.cli_json("attach", img, "--name", "img", "--loop")["loop"]
        run([lab.cli, "repo", "init", self.repo] +
            (["--chunk-size", chunk_size] if chunk_size else []) +
            (["--segment-size", segment_size] if segment_size else []) +
            (["--zstd-level", zstd_level] if zstd_level else []))
        self.last = None

    def backup(self):
        s, r = timed([self.lab.cli, "--control", self.lab.ctl, "--json", "backup", "img",
                      "--repo", self.repo], timeout=1800)
        m = json.loads(r.stdout.strip().splitlines()[-1])["backups"][0]
        self.last = m["id"]
        return s, {"id": m["id"], "full": m["full"], "read_bytes": m["stats"]["read_bytes"],
                   "new_bytes_stored": m["stats"]["new_bytes_stored"],
                   "seconds_inside": m["stats"]["seconds"]}

    def restore(self, target):
        s, _ = timed([self.lab.cli, "--json", "restore", self.last, target, "--repo", self.repo],
                     timeout=1800)
        return s, target

    def serve_first_byte(self):
        """Seconds from `repo serve` of the last backup to its first 512 bytes read over NBD."""
        import nbd
        t0 = time.monotonic()
        r = self.lab.cli_json("repo", "serve", self.last, "--repo", self.repo)
        h = nbd.NBD()
        h.connect_uri(r["nbd"])
        h.pread(512, 0)
        s = time.monotonic() - t0
        h.shutdown()
        self.lab.cli_json("repo", "unserve", self.last)
        return s

    def finish(self):
        stop(self.proc)


class Restic:
    name = "restic"

    def __init__(self, img):
        self.img = img
        self.repo = os.path.join(SCRATCH, "repo-restic")
        self.env = dict(os.environ, RESTIC_PASSWORD="bench", RESTIC_REPOSITORY=self.repo,
                        RESTIC_CACHE_DIR=os.path.join(SCRATCH, "restic-cache"))
        run(["restic", "init", "--repository-version", "2"], env=self.env)

    def backup(self):
        s, r = timed(["restic", "backup", "--json", "--compression", "auto", self.img],
                     env=self.env, timeout=1800)
        summary = [json.loads(l) for l in r.stdout.splitlines() if '"summary"' in l][-1]
        return s, {"read_bytes": summary.get("total_bytes_processed"),
                   "new_bytes_stored": summary.get("data_added")}

    def restore(self, target):
        d = target + ".d"
        s, _ = timed(["restic", "restore", "latest", "--target", d], env=self.env, timeout=1800)
        return s, d + self.img


class Borg:
    name = "borg"

    def __init__(self, img):
        self.img = img
        self.repo = os.path.join(SCRATCH, "repo-borg")
        self.env = dict(os.environ, BORG_BASE_DIR=os.path.join(SCRATCH, "borg-base"),
                        BORG_PASSPHRASE="", BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
                        BORG_RELOCATED_REPO_ACCESS_IS_OK="yes")
        run(["borg", "init", "-e", "none", self.repo], env=self.env)
        self.n = 0

    def backup(self):
        self.n += 1
        s, r = timed(["borg", "create", "--json", "--compression", "zstd,3",
                      f"{self.repo}::b{self.n}", self.img], env=self.env, timeout=1800)
        st = json.loads(r.stdout)["archive"]["stats"]
        return s, {"read_bytes": st.get("original_size"),
                   "new_bytes_stored": st.get("deduplicated_size")}

    def restore(self, target):
        d = target + ".d"
        os.makedirs(d, exist_ok=True)
        s, _ = timed(["borg", "extract", f"{self.repo}::b{self.n}"], env=self.env, cwd=d,
                     timeout=1800)
        return s, os.path.join(d, self.img.lstrip("/"))


# ---------------------------------------------------------------- CPU limits


def cpu_speeds(sample):
    out = {}
    r = run(["openssl", "speed", "-evp", "sha256", "-bytes", str(4 * MIB), "-seconds", "2"],
            check=False)
    for line in r.stdout.splitlines():
        if line.lower().startswith("sha256"):
            out["sha256_MBps"] = round(float(line.split()[-1].rstrip("k")) / 1000, 1)
    # The whole sample as one frame, and cut into independent 4 MiB frames as the repository
    # stores chunks (what a restore decompresses).
    for key, extra in (("zstd3", []), ("zstd3_4M", ["-B4M"])):
        r = run(["zstd", "-b3", "-i2", *extra, sample], check=False)
        text = (r.stderr or "") + (r.stdout or "")
        for chunk in text.replace("\r", "\n").splitlines():
            if "MB/s" in chunk and "->" in chunk:
                speeds = [float(w) for w, nxt in zip(chunk.split(), chunk.split()[1:])
                          if nxt.startswith("MB/s")]
                if len(speeds) >= 2:
                    out[f"{key}_compress_MBps"], out[f"{key}_decompress_MBps"] = speeds[:2]
                out[f"{key}_line"] = chunk.strip()
    return out


def tmpfs_write_cpu(where, nbytes):
    """CPU seconds (of a dd writing nbytes of zeroes in 4 MiB writes into a new file in `where`)
    the kernel takes to put that many bytes into tmpfs: the part of a restore into tmpfs no
    restore tool avoids. Measured right after the restore, in the same memory state."""
    path = os.path.join(where, "blksnap-bench-write-ceiling")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run(["dd", "if=/dev/zero", f"of={path}", "bs=4M", f"count={max(1, nbytes // (4 * MIB))}",
         "status=none"])
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    os.unlink(path)
    return round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2)


def restore_cpu_limit_gibps(size, b, cpu, cpus):
    """The fastest a restore into tmpfs can go on this machine's CPUs: every CPU busy with the
    two steps it cannot skip, decompressing the bytes it writes (zstd -3 on 4 MiB frames of the
    image's first 256 MiB, which compress better than the rest and so decompress faster: the
    limit is if anything too high) and the kernel's tmpfs writes of them (dd, same run)."""
    dec, write_s = cpu.get("zstd3_4M_decompress_MBps"), b.get("tmpfs_write_cpu_s")
    written = b.get("restore_tmpfs_written_bytes")
    if not (dec and write_s and written):
        return None
    return round(size / GIB / ((written / (dec * 1e6) + write_s) / cpus), 2)


# ---------------------------------------------------------------- the run


def ratio(a, b):
    return round(a / b, 2) if a and b else None


def summarize(size, changed, file_bytes, tools, cpu, cpus):
    if not all(t in tools for t in ("blksnap", "restic", "borg")):
        return {}, {}
    b, r, g = tools["blksnap"], tools["restic"], tools["borg"]
    limit = restore_cpu_limit_gibps(size, b, cpu, cpus)
    rat = {
        "full_vs_restic": ratio(b["full_MBps"], r["full_MBps"]),
        "full_vs_borg": ratio(b["full_MBps"], g["full_MBps"]),
        "repo_vs_restic": ratio(b["repo_bytes"], r["repo_bytes"]),
        "incr_speedup_vs_restic": ratio(r["incr_s"], b["incr_s"]),
        "incr_speedup_vs_borg": ratio(g["incr_s"], b["incr_s"]),
        "read_vs_changed": ratio(b["incr_read_bytes"], changed),
        "read_vs_file_bytes_rewritten": ratio(b["incr_read_bytes"], file_bytes),
        "restore_vs_restic": ratio(b["restore_MBps"], r["restore_MBps"]),
        "restore_vs_borg": ratio(b["restore_MBps"], g["restore_MBps"]),
        "restore_gibps": round(size / GIB / b["restore_s"], 2),
        "restore_tmpfs_vs_restic": ratio(b.get("restore_tmpfs_MBps"), r.get("restore_tmpfs_MBps")),
        "restore_tmpfs_gibps": (round(size / GIB / b["restore_tmpfs_s"], 2)
                                if b.get("restore_tmpfs_s") else None),
        "serve_first_byte_s": b.get("serve_first_byte_s"),
        "restore_tmpfs_cpu_limit_gibps": limit,
    }
    targets = {}
    for name, key, op, want in TARGETS:
        if key == "restore_tmpfs_gibps" and limit:
            want = min(want, round(0.9 * limit, 2))
        v = rat.get(key)
        ok = v is not None and (v >= want if op == ">=" else v <= want)
        targets[name] = {"value": v, "target": f"{op} {want:g}", "met": ok}
    return rat, targets


def table(doc):
    t = doc["tools"]
    rows = [("full MB/s", "full_MBps"), ("full s", "full_s"), ("incr s", "incr_s"),
            ("incr read MiB", "incr_read_MiB"), ("restore MB/s", "restore_MBps"),
            ("restore s", "restore_s"), ("restore into tmpfs MB/s", "restore_tmpfs_MBps"),
            ("repo MiB", "repo_MiB")]
    lines = ["| | " + " | ".join(t) + " |", "|---|" + "---:|" * len(t)]
    for label, key in rows:
        lines.append(f"| {label} | " + " | ".join(str(t[n].get(key)) for n in t) + " |")
    lines += ["", "| target | value | wanted | met |", "|---|---:|---|---|"]
    for name, v in doc["targets"].items():
        lines.append(f"| {name} | {v['value']} | {v['target']} | {'yes' if v['met'] else 'NO'} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="512 MiB image")
    ap.add_argument("--size", help="image size (default BENCH_BACKUP_SIZE or 4G)")
    ap.add_argument("--build", default=os.path.join(ROOT, "build-release"))
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir")
    ap.add_argument("--chunk-size", help="blksnap's repository chunk size (repo init; default 4M)")
    ap.add_argument("--zstd-level", help="blksnap's zstd level (repo init; default 3)")
    ap.add_argument("--daemon-args", default="",
                    help="extra blksnapd options, e.g. '--tracking-block-minimum-shift 14' "
                         "(16 KiB CBT blocks)")
    ap.add_argument("--segment-size",
                    help="blksnap's segment size (repo init; default 64K; 0: repository format 1)")
    ap.add_argument("--only", default="blksnap,restic,borg",
                    help="tools, comma-separated (debugging; ratios need all three)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("backup_bench: needs root (loop mounts, FUSE)")
    size = parse_size(a.size or ("512M" if a.quick else os.environ.get("BENCH_BACKUP_SIZE",
                                                                      "4G")))
    cleanup()
    os.makedirs(SCRATCH, exist_ok=True)
    lab = Lab(a.build, size)
    img, mnt = os.path.join(SCRATCH, "image.img"), os.path.join(SCRATCH, "mnt")
    started = time.monotonic()
    tools, doc = {}, {}
    try:
        files, filled = make_image(img, size, mnt)
        only = a.only.split(",")
        runners = [c(lab, img, a.chunk_size, a.segment_size, a.daemon_args, a.zstd_level)
                   if c is Blksnap else c(img)
                   for c in (Blksnap, Restic, Borg) if c.name in only]
        for t in runners:
            warm(img)
            log(f"{t.name}: full backup")
            s, info = t.backup()
            tools[t.name] = {"full_s": round(s, 2), "full_MBps": round(size / 1e6 / s, 1),
                             "full": info}
        front = runners[0].front if "blksnap" in only else None  # else mount -o loop
        before = os.path.join(SCRATCH, "image.before")
        run(["cp", "--sparse=always", img, before])
        n, file_bytes = rewrite(front, mnt, files, img)
        changed = changed_blocks_bytes(before, img)
        os.unlink(before)
        log(f"rewrote {n} files, {file_bytes / MIB:.1f} MiB, through {front or 'a loop mount'}:"
            f" {changed / MIB:.1f} MiB of the device changed")
        for t in runners:
            warm(img)
            log(f"{t.name}: incremental backup")
            s, info = t.backup()
            rb = info.get("read_bytes")
            tools[t.name].update({"incr_s": round(s, 2), "incr": info, "incr_read_bytes": rb,
                                  "incr_read_MiB": round(rb / MIB, 1) if rb else None,
                                  "repo_bytes": du(t.repo),
                                  "repo_MiB": round(du(t.repo) / MIB, 1)})
        tmpfs = os.environ.get("SCRATCH_TMPFS", "/dev/shm")
        for where, key in ((SCRATCH, "restore"), (tmpfs, "restore_tmpfs")):
            times = {t.name: [] for t in runners}
            for rnd in range(RESTORE_ROUNDS):
                for t in runners:
                    log(f"{t.name}: restore into {where} ({rnd + 1}/{RESTORE_ROUNDS})")
                    base = os.path.join(where, f"blksnap-bench-restore-{t.name}.img")
                    run(["sync"])  # untimed: no tool pays for another's dirty pages
                    if key == "restore_tmpfs":
                        warm_tree(t.repo)  # untimed: "from a page-cached repository"
                    s, out = t.restore(base)
                    s += timed(["sync", "-f", where])[0]
                    times[t.name].append(round(s, 2))
                    if rnd == 0:  # the content is checked once
                        same = run(["cmp", "-s", img, out], check=False).returncode == 0
                        tools[t.name][f"{key}_identical"] = same
                    if key == "restore_tmpfs" and t.name == "blksnap" and rnd == 0:
                        written = os.stat(out).st_blocks * 512  # zero chunks are holes
                        tools[t.name].update({"restore_tmpfs_written_bytes": written,
                                              "tmpfs_write_cpu_s": tmpfs_write_cpu(where,
                                                                                   written)})
                    for p in (out, base, base + ".d"):
                        (shutil.rmtree if os.path.isdir(p) else os.unlink)(p) \
                            if os.path.lexists(p) else None
            for name, ts in times.items():
                s = sorted(ts)[len(ts) // 2]
                tools[name].update({f"{key}_s": s, f"{key}_MBps": round(size / 1e6 / s, 1),
                                    f"{key}_rounds_s": ts})
        if "blksnap" in only:
            log("blksnap: repo serve, first byte over NBD")
            tools["blksnap"]["serve_first_byte_s"] = round(runners[0].serve_first_byte(), 3)
            runners[0].finish()
        sample = os.path.join(SCRATCH, "sample")
        run(["dd", f"if={img}", f"of={sample}", "bs=1M", f"count={min(256, size // MIB)}"])
        cpu = cpu_speeds(sample)
        rat, targets = summarize(size, changed, file_bytes, tools, cpu, os.cpu_count())
        tree = run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], check=False)
        doc = {"meta": {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "tree": tree.stdout.strip(), "image_bytes": size,
                        "filled_bytes": filled, "files": len(files), "rewritten_files": n,
                        "changed_bytes": changed, "file_bytes_rewritten": file_bytes,
                        "restore_rounds": RESTORE_ROUNDS,
                        "quick": a.quick, "cpus": os.cpu_count(),
                        "chunk_size": a.chunk_size or "4M",
                        "segment_size": a.segment_size or "16K",
                        "daemon_args": a.daemon_args, "zstd_level": a.zstd_level or "3",
                        "build": a.build,
                        "loadavg_end": loadavg(),
                        "seconds": round(time.monotonic() - started, 1),
                        "restic": run(["restic", "version"]).stdout.strip(),
                        "borg": run(["borg", "--version"]).stdout.strip()},
               "cpu": cpu, "tools": tools, "ratios": rat, "targets": targets}
    finally:
        cleanup(remove=not a.keep)
    print(table(doc))
    print(f"\nCPU (one core): SHA-256 {doc['cpu'].get('sha256_MBps')} MB/s, zstd -3 "
          f"{doc['cpu'].get('zstd3_compress_MBps')} MB/s compress, "
          f"{doc['cpu'].get('zstd3_decompress_MBps')} MB/s decompress "
          f"({doc['cpu'].get('zstd3_4M_decompress_MBps')} MB/s in 4 MiB frames); "
          f"tmpfs writes of the restored bytes: {doc['tools'].get('blksnap', {}).get('tmpfs_write_cpu_s')}"
          f" CPU s; restore into tmpfs CPU limit "
          f"{doc['ratios'].get('restore_tmpfs_cpu_limit_gibps')} GiB/s")
    name = (f"backup-{doc['meta']['tree']}{'-quick' if a.quick else ''}"
            f"{'-chunk' + a.chunk_size if a.chunk_size else ''}"
            f"{'-segment' + a.segment_size if a.segment_size else ''}"
            f"{'-cbt' if a.daemon_args else ''}"
            f"{'-zstd' + a.zstd_level if a.zstd_level else ''}.json")
    path = os.path.join(ROOT, "bench", "results", name)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
