#!/usr/bin/env python3
"""Backup and restore into Ceph: blksnap on rados:// and s3:// against `rados bench` (the
ceiling) and restic's S3 backend on the same radosgw (issue 17, "Speed"), side by side in one run.

Run (root or not), after a release build (`cmake -G Ninja -B build-release
-DCMAKE_BUILD_TYPE=Release && ninja -C build-release blksnapd blksnap_cli`):
    python3 bench/ceph_bench.py [--quick] [--build DIR] [--size BYTES] [--threads 4,16]
--quick uses a 256 MiB image, otherwise 1 GiB. Results: bench/results/ceph-<git short
hash>[-quick].json; method and figures: docs/performance.md, section "Repository on Ceph
(issue 17)", and docs/scaling.md. Not part of bench/run.

Design note. One sequence, on one throw-away cluster:
  1. cluster  `scripts/ceph-cluster start SCRATCH/ceph` (one mon, mgr, OSD on a sparse file,
              radosgw; pool `blksnap`, cephx user client.blksnap, S3 user in s3.credentials);
              `destroy` in the finally block, so also after a failure or SIGTERM.
  2. image    a file of random bytes (os.urandom): nothing dedups, nothing compresses, so every
              tool moves every byte; read once before each timed backup (page-cached source).
  3. ceiling  for each thread count T: `rados bench -p blksnap 20 write -b 4 MiB -t T
              --max-objects 3072 --no-cleanup` (20 s or 12 GiB; the OSD's file is 40 GiB),
              then `rados bench 20 seq -t T`, then `rados cleanup`, as client.blksnap. T
              defaults to 4,16: blksnap's default backup workers are 4 (kBackupThreads) and 16
              into s3:// (S3Store's preferred_writes); a restore from either store defaults to
              4 (RestoreSpec).
  3b. S3     for each T, curl's parallel transfers PUT as many 4 MiB objects as the image holds
              into a new bucket on the radosgw (body SHA-256 signed, as blksnap signs, and
              again UNSIGNED-PAYLOAD), then GET them into /dev/null (s3_ceiling): the least any
              S3 client can ask of radosgw, which `rados bench` bypasses. Its ratios to rados
              bench say what an S3 client can reach here; blksnap's s3:// to it, how near.
  4. blksnap  blksnapd on a scratch state dir attaches the image; for each backend (rados://
              blksnap/NS, s3://BUCKET on the radosgw) and each T: `repo init` of a new
              namespace/bucket (so no run dedups against another), `backup --threads T` (full),
              `restore --threads T` into a file, compared with the image (cmp, untimed), removed.
              Every restore (blksnap's and restic's) is timed up to `sync -f` of the scratch
              file system, after an untimed `sync`: blksnap writes with O_DIRECT and
              fdatasyncs, restic leaves dirty pages that the page cache would hide.
              Then the same restore into /dev/shm ("restore_ram"): the read path without the
              target's disk, which on this one machine is also the OSD's; it is what `rados
              bench seq` (which writes nothing) is the ceiling of.
  5. restic   `restic -r s3:RGW/restic-bench` (keys from s3.credentials in the environment):
              init, backup of the image file, restore latest; compared and removed.
  6. ratios   blksnap backup / rados bench write and restore (and restore_ram) / rados bench
              seq at the same T (target >= 0.7), s3:// backup / curl put and restore_ram / curl
              get (the same 0.7, against the S3 ceiling), blksnap / restic (target >= 2; restores to
              disk, as restic's), printed as a table, each beside
              what a CPU-bound machine predicts (the inverse ratio of total CPU s per GB);
              openssl SHA-256 and zstd -3 speeds of the image's bytes (one core) as context.
Timing: wall seconds of each command (the CLI's round trip). MB/s = 10^6 bytes/s of the image
size (rados bench's "MB/sec" is MiB/s and is converted). CPU: user+system seconds of blksnapd
(backups run in the daemon), of the child commands (restore runs in the CLI; restic), and of
ceph-osd and radosgw (from /proc/PID/stat of the pids in SCRATCH/ceph/run), per step: the
per-host and per-cluster costs docs/scaling.md starts from. Load average before and after each
step (the machine is shared).
"""
import argparse
import configparser
import json
import os
import resource
import shutil
import signal
import sys
import time

os.environ["BLKSNAP_BENCH_DIR"] = os.environ.get("BLKSNAP_CEPH_BENCH_DIR",
                                                 "/var/tmp/blksnap-ceph-bench")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import MIB, ROOT, SCRATCH, loadavg, log, run  # noqa: E402
from setups import Lab, cleanup, stop  # noqa: E402
from backup_bench import cpu_speeds  # noqa: E402

CLUSTER = os.path.join(SCRATCH, "ceph")
CEPH_SCRIPT = os.path.join(ROOT, "scripts", "ceph-cluster")
BENCH_SECONDS = 20
OBJECT = 4 * MIB  # rados bench object size = the repository's default chunk size
# rados bench write stops at BENCH_SECONDS or this many objects (12 GiB), whichever comes first:
# the OSD outran its file once (20 s at 1 GB/s), and a full OSD hangs every writer.
BENCH_MAX_OBJECTS = 3072
OSD_GIB = 40  # the cluster's sparse OSD file: the ceiling's 12 GiB plus every round's data
DEFAULT_THREADS = 4  # blksnap's default backup workers (16 into s3://) and remote restore reads
RAM_DIR = "/dev/shm"  # tmpfs: the target of the second restore of each round
TARGETS = (("vs rados bench", "vs_rados", 0.7), ("vs restic S3", "vs_restic", 2.0))


def parse_size(s):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    s = str(s).strip().upper().rstrip("B").rstrip("I")
    return int(float(s[:-1]) * units[s[-1]]) if s[-1] in units else int(s)


# ---------------------------------------------------------------- CPU accounting


def proc_cpu(pid):
    """user+system CPU seconds of a live process (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class Meter:
    """Wall time, load and CPU seconds of blksnapd, the waited-for children and each Ceph daemon
    over one step."""

    def __init__(self, daemons):
        self.daemons = daemons  # name -> pid

    def __enter__(self):
        self.t0, self.load0, self.c0 = time.monotonic(), loadavg()[0], children_cpu()
        self.d0 = {n: proc_cpu(p) for n, p in self.daemons.items()}
        return self

    def __exit__(self, *exc):
        self.seconds = time.monotonic() - self.t0
        self.cpu = {n: round(proc_cpu(p) - self.d0[n], 2) for n, p in self.daemons.items()}
        self.cpu["children"] = round(children_cpu() - self.c0, 2)
        self.load = [self.load0, loadavg()[0]]
        return False

    def result(self, nbytes):
        return {"s": round(self.seconds, 2), "MBps": round(nbytes / 1e6 / self.seconds, 1),
                "cpu_s": self.cpu, "cpu_s_per_GB": per_gb(self.cpu, nbytes), "load1": self.load}


def per_gb(cpu, nbytes):
    """CPU seconds per 10^9 bytes moved: the client (blksnapd + waited-for commands), the OSD,
    radosgw, and all of them."""
    client = cpu.get("blksnapd", 0) + cpu.get("children", 0)
    out = {"client": client, "osd": cpu.get("osd.0", 0), "rgw": cpu.get("rgw.gw", 0)}
    out["total"] = sum(out.values())
    return {k: round(v / (nbytes / 1e9), 2) for k, v in out.items()}


def daemon_glibc_tunables():
    """The daemons' GLIBC_TUNABLES, as scripts/ceph-cluster recorded them (their own environ
    shows them cut at the first ':' by glibc's parser)."""
    try:
        with open(os.path.join(CLUSTER, "run", "glibc-tunables")) as f:
            return f.read().strip()
    except OSError:
        return None


def ceph_daemons():
    out = {}
    for name in ("osd.0", "rgw.gw", "mon.a", "mgr.x"):
        try:
            with open(os.path.join(CLUSTER, "run", f"{name}.pid")) as f:
                out[name] = int(f.read())
        except (OSError, ValueError):
            pass
    return out


# ---------------------------------------------------------------- the cluster and the ceiling


def conf():
    return os.path.join(CLUSTER, "ceph.conf")


def rgw_url():
    with open(os.path.join(CLUSTER, "rgw.url")) as f:
        return f.read().strip()


def s3_keys():
    c = configparser.ConfigParser()
    c.read(os.path.join(CLUSTER, "s3.credentials"))
    return c["default"]["aws_access_key_id"], c["default"]["aws_secret_access_key"]


def rados(*args, timeout=300):
    return run(["rados", "-c", conf(), "--id", "blksnap", "-p", "blksnap", *args],
               timeout=timeout)


def parse_rados_bench(text):
    out = {}
    keys = {"Bandwidth (MB/sec)": "MiBps", "Average IOPS": "iops",
            "Average Latency(s)": "lat_avg_s", "Max latency(s)": "lat_max_s",
            "Total time run": "seconds", "Total writes made": "objects",
            "Total reads made": "objects"}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        if k.strip() in keys:
            try:
                out[keys[k.strip()]] = float(v.split()[0])
            except (ValueError, IndexError):
                pass
    if "MiBps" in out:
        out["MBps"] = round(out["MiBps"] * MIB / 1e6, 1)
    return out


def rados_bench(threads, daemons):
    res = {}
    for mode in ("write", "seq"):
        extra = (["-b", str(OBJECT), "--max-objects", str(BENCH_MAX_OBJECTS), "--no-cleanup"]
                 if mode == "write" else [])
        log(f"rados bench {mode} -t {threads}")
        with Meter(daemons) as m:
            r = rados("bench", str(BENCH_SECONDS), mode, "-t", str(threads), *extra)
        res[mode] = dict(parse_rados_bench(r.stdout), cpu_s=m.cpu, load1=m.load)
        moved = res[mode].get("objects", 0) * OBJECT
        res[mode]["cpu_s_per_GB"] = per_gb(m.cpu, moved) if moved else None
    rados("cleanup")
    return res


def s3_ceiling(threads, daemons, count):
    """The least an S3 client can ask of radosgw, T requests at a time: curl's parallel
    transfers (libcurl's multi interface, connections reused) PUT `count` objects of 4 MiB of
    random bytes into a new bucket, then GET each into /dev/null. `put` sends the body's
    SHA-256, hashed once before the clock starts, as x-amz-content-sha256 (radosgw verifies it,
    as for blksnap's requests; the client hashes nothing); `put_unsigned` sends
    UNSIGNED-PAYLOAD (radosgw verifies nothing). Every response must be a 200."""
    body = os.path.join(SCRATCH, "s3-ceiling-object")
    with open(body, "wb") as f:
        f.write(os.urandom(OBJECT))
    digest = run(["sha256sum", body]).stdout.split()[0]
    bucket = f"{rgw_url()}/ceiling-t{threads}"
    cfg = os.path.join(SCRATCH, "s3-ceiling.curl")
    key, secret = s3_keys()

    def curl(sha, lines, *args):
        # The keys go in a private config file, never on a command line (ps, this bench's errors).
        fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f'user = "{key}:{secret}"\nheader = "x-amz-content-sha256: {sha}"\n')
            f.writelines(lines)
        return run(["curl", "-sS", "--aws-sigv4", "aws:amz:us-east-1:s3", *args, "-K", cfg],
                   timeout=1800)

    curl("UNSIGNED-PAYLOAD", [f'url = "{bucket}"\n'], "-f", "-X", "PUT")
    res = {}
    # (operation, payload hash header, objects, what each transfer does): `get` reads put's.
    for op, sha, name, what in (("put", digest, "put", f'upload-file = "{body}"'),
                                ("put_unsigned", "UNSIGNED-PAYLOAD", "unsigned",
                                 f'upload-file = "{body}"'),
                                ("get", "UNSIGNED-PAYLOAD", "put", 'output = "/dev/null"')):
        lines = [f'url = "{bucket}/{name}-{i:05d}"\n{what}\n' for i in range(count)]
        log(f"s3 ceiling {op} -t {threads} (curl)")
        with Meter(daemons) as m:
            r = curl(sha, lines, "-Z", "--parallel-max", str(threads), "-w", "%{http_code}\n")
        codes = r.stdout.split()
        if len(codes) != count or any(c != "200" for c in codes):
            bad = sorted(set(codes) - {"200"})
            raise RuntimeError(f"s3 ceiling {op}: {len(codes)} responses, not 200: {bad}")
        res[op] = m.result(count * OBJECT)
    remove(cfg)
    remove(body)
    return res


# ---------------------------------------------------------------- the tools


def same(a, b):
    return run(["cmp", "-s", a, b], check=False).returncode == 0


def remove(p):
    if os.path.isdir(p):
        shutil.rmtree(p)
    elif os.path.lexists(p):
        os.unlink(p)


def warm(path):
    with open(path, "rb") as f:
        while f.read(8 * MIB):
            pass


def blksnap_round(lab, img, size, url, threads, daemons):
    """repo init, full backup, restore, compare: one backend at one thread count."""
    run([lab.cli, "repo", "init", url], timeout=120)
    warm(img)
    with Meter(daemons) as m:
        r = run([lab.cli, "--control", lab.ctl, "--json", "backup", "img", "--repo", url,
                 "--threads", str(threads)], timeout=3600)
    b = json.loads(r.stdout.strip().splitlines()[-1])["backups"][0]
    out = {"backup": dict(m.result(size), id=b["id"], stats=b["stats"])}
    run(["sync"])  # untimed: no restore pays for the dirty pages of what ran before it
    # To the scratch disk, then into RAM: the read path alone, what `rados bench seq` (which
    # writes nothing) measures; on one machine the disk restore's writes share the OSD's disk.
    for op, target in (("restore", os.path.join(SCRATCH, "restore.img")),
                       ("restore_ram", os.path.join(RAM_DIR, "blksnap-ceph-bench-restore.img"))):
        with Meter(daemons) as m:
            run([lab.cli, "--json", "restore", b["id"], target, "--repo", url, "--threads",
                 str(threads)], timeout=3600)
            if op == "restore":
                run(["sync", "-f", SCRATCH])  # blksnap fdatasyncs itself: kept for symmetry
        out[op] = dict(m.result(size), identical=same(img, target))
        remove(target)
    return out


def restic_round(img, size, daemons):
    key, secret = s3_keys()
    env = dict(os.environ, AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret,
               RESTIC_PASSWORD="bench", RESTIC_REPOSITORY=f"s3:{rgw_url()}/restic-bench",
               RESTIC_CACHE_DIR=os.path.join(SCRATCH, "restic-cache"))
    run(["restic", "init"], env=env, timeout=120)
    warm(img)
    with Meter(daemons) as m:
        r = run(["restic", "backup", "--json", img], env=env, timeout=3600)
    summary = [json.loads(l) for l in r.stdout.splitlines() if '"summary"' in l][-1]
    out = {"backup": dict(m.result(size), data_added=summary.get("data_added"))}
    d = os.path.join(SCRATCH, "restic-restore")
    run(["sync"])
    with Meter(daemons) as m:
        run(["restic", "restore", "latest", "--target", d], env=env, timeout=3600)
        run(["sync", "-f", SCRATCH])  # restic leaves the restored file in dirty pages
    out["restore"] = dict(m.result(size), identical=same(img, d + img))
    remove(d)
    return out


# ---------------------------------------------------------------- the report


def ratio(a, b):
    return round(a / b, 2) if a and b else None


def summarize(doc):
    """Ratios and targets: each blksnap backend/thread count against rados bench at the same
    thread count and against restic."""
    rat, targets, model = {}, {}, {}
    rest = doc["restic"]
    for key, r in doc["blksnap"].items():  # key = "rados-t4", "s3-t16", ...
        t = key.split("-t")[1]
        ceil = doc["rados_bench"].get(f"t{t}", {})
        for op, bench_mode in (("backup", "write"), ("restore", "seq"), ("restore_ram", "seq")):
            mine = r[op]["MBps"]
            rat[f"{key} {op} vs rados bench {bench_mode}"] = ratio(
                mine, ceil.get(bench_mode, {}).get("MBps"))
            if op in rest:
                rat[f"{key} {op} vs restic"] = ratio(mine, rest[op]["MBps"])
            # What a CPU-bound run predicts: the ratio of total CPU seconds per GB.
            cb = (ceil.get(bench_mode) or {}).get("cpu_s_per_GB") or {}
            model[f"{key} {op} vs rados bench {bench_mode}"] = ratio(
                cb.get("total"), r[op]["cpu_s_per_GB"]["total"])
        s3c = doc.get("s3_ceiling", {}).get(f"t{t}")
        if key.startswith("s3-") and s3c:  # the S3 ceiling: what radosgw gives any client
            for op, curl_op in (("backup", "put"), ("restore_ram", "get")):
                rat[f"{key} {op} vs curl s3 {curl_op}"] = ratio(r[op]["MBps"],
                                                               s3c[curl_op]["MBps"])
    for t, c in doc.get("s3_ceiling", {}).items():
        rb = doc["rados_bench"].get(t, {})
        for op, bench_mode in (("put", "write"), ("put_unsigned", "write"), ("get", "seq")):
            rat[f"curl s3 -t {t[1:]} {op} vs rados bench {bench_mode}"] = ratio(
                c[op]["MBps"], rb.get(bench_mode, {}).get("MBps"))
    for name, v in rat.items():
        want = 2.0 if name.endswith("vs restic") else 0.7
        targets[name] = {"value": v, "target": f">= {want:g}", "met": v is not None and v >= want,
                         "cpu_model": model.get(name)}
    return rat, targets


def table(doc):
    def cpu(c):
        return "/".join(str(c.get(k)) for k in ("client", "osd", "rgw")) if c else "-"

    lines = ["| | backup MB/s | restore MB/s | restore to RAM MB/s | CPU s/GB backup "
             "(client/osd/rgw) | restore |", "|---|---:|---:|---:|---|---|"]
    rows = [(f"rados bench -t {t[1:]} (write / seq)", {"backup": rb["write"],
                                                       "restore": rb["seq"]})
            for t, rb in doc["rados_bench"].items()]
    rows += [(f"curl s3 -t {t[1:]} (put / get; put unsigned: {c['put_unsigned']['MBps']})",
              {"backup": c["put"], "restore": c["get"]})
             for t, c in doc.get("s3_ceiling", {}).items()]
    rows += [(f"blksnap {k}", v) for k, v in doc["blksnap"].items()] + [("restic s3",
                                                                        doc["restic"])]
    for name, v in rows:
        b, r = v["backup"], v["restore"]
        ram = v.get("restore_ram", {}).get("MBps", "")
        lines.append(f"| {name} | {b.get('MBps')} | {r.get('MBps')} | {ram} | "
                     f"{cpu(b.get('cpu_s_per_GB'))} | {cpu(r.get('cpu_s_per_GB'))} |")
    lines += ["", "| ratio | value | wanted | met | CPU-bound model |", "|---|---:|---|---|---:|"]
    for name, v in doc["targets"].items():
        lines.append(f"| {name} | {v['value']} | {v['target']} | {'yes' if v['met'] else 'NO'} "
                     f"| {v['cpu_model'] if v['cpu_model'] is not None else ''} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="256 MiB image")
    ap.add_argument("--size", help="image size (default 1G)")
    ap.add_argument("--build", default=os.path.join(ROOT, "build-release"))
    ap.add_argument("--threads", default=f"{DEFAULT_THREADS},16",
                    help="blksnap --threads / rados bench -t values, comma-separated")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir")
    a = ap.parse_args()
    size = parse_size(a.size or ("256M" if a.quick else "1G"))
    threads = [int(t) for t in a.threads.split(",")]
    for tool in ("restic", "curl", "rados"):  # before the minutes of a cluster and a ceiling
        if not shutil.which(tool):
            sys.exit(f"ceph_bench: {tool} is missing (scripts/install-deps installs curl and "
                     "rados; apt-get install restic, as bench/run does)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("ceph_bench: SIGTERM"))
    cleanup()
    os.makedirs(SCRATCH, exist_ok=True)
    lab = Lab(a.build, size)
    img = os.path.join(SCRATCH, "image.img")
    started, load_start = time.monotonic(), loadavg()
    doc, proc = {}, None
    try:
        log(f"image: {size // MIB} MiB of random bytes")
        with open(img, "wb") as f:
            for _ in range(size // (8 * MIB)):
                f.write(os.urandom(8 * MIB))
        log("cluster: start")
        t0 = time.monotonic()
        run([CEPH_SCRIPT, "start", CLUSTER], timeout=400,
            env=dict(os.environ, CEPH_CLUSTER_OSD_GIB=str(OSD_GIB)))
        cluster_start_s = round(time.monotonic() - t0, 1)
        daemons = ceph_daemons()
        tunables = daemon_glibc_tunables()
        doc["rados_bench"] = {f"t{t}": rados_bench(t, daemons) for t in threads}
        doc["s3_ceiling"] = {f"t{t}": s3_ceiling(t, daemons, size // OBJECT) for t in threads}
        proc = lab.daemon()
        daemons["blksnapd"] = proc.pid
        lab.cli_json("attach", img, "--name", "img")
        cred = os.path.join(CLUSTER, "s3.credentials")
        doc["blksnap"] = {}
        for t in threads:
            for backend in ("rados", "s3"):
                url = (f"rados://blksnap/bench-t{t}?conf={conf()}&id=blksnap" if backend ==
                       "rados" else f"s3://bench-t{t}?endpoint={rgw_url()}&credentials={cred}")
                log(f"blksnap {backend} --threads {t}: backup, restore")
                doc["blksnap"][f"{backend}-t{t}"] = blksnap_round(lab, img, size, url, t,
                                                                  daemons)
        stop(proc)
        proc = None
        daemons.pop("blksnapd")
        log("restic s3: backup, restore")
        doc["restic"] = restic_round(img, size, daemons)
        rat, targets = summarize(doc)
        sample = os.path.join(SCRATCH, "sample")
        run(["dd", f"if={img}", f"of={sample}", "bs=1M", f"count={min(256, size // MIB)}"])
        doc["cpu"] = cpu_speeds(sample)  # SHA-256 and zstd -3 of this random data, one core
        tree = run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], check=False)
        doc = {"meta": {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "tree": tree.stdout.strip(), "image_bytes": size, "quick": a.quick,
                        "threads": threads, "cpus": os.cpu_count(),
                        "loadavg_start": load_start, "loadavg_end": loadavg(),
                        "cluster_start_s": cluster_start_s,
                        "cluster_glibc_tunables": tunables,
                        "seconds": round(time.monotonic() - started, 1),
                        "ceph": run(["ceph", "--version"]).stdout.strip(),
                        "restic": run(["restic", "version"]).stdout.strip()},
               **doc, "ratios": rat, "targets": targets}
    finally:
        stop(proc)
        if os.path.isdir(CLUSTER):
            r = run([CEPH_SCRIPT, "destroy", CLUSTER], check=False, timeout=300)
            if r.returncode:
                log(f"cluster destroy failed: {r.stderr.strip()}")
        cleanup(remove=not a.keep)
    print(table(doc))
    c = doc.get("cpu", {})
    print(f"\nCPU (one core, this data): SHA-256 {c.get('sha256_MBps')} MB/s, zstd -3 "
          f"{c.get('zstd3_compress_MBps')} MB/s compress; load {doc['meta']['loadavg_start']} "
          f"-> {doc['meta']['loadavg_end']}; the cluster's GLIBC_TUNABLES: "
          f"{doc['meta'].get('cluster_glibc_tunables')!r}")
    name = f"ceph-{doc['meta']['tree']}{'-quick' if a.quick else ''}.json"
    path = os.path.join(ROOT, "bench", "results", name)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
