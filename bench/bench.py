#!/usr/bin/python3
"""blksnap side by side with its peers (issue 6). Run through bench/run, which installs the
tools and builds blksnap in release mode; method and results in docs/performance.md.

Setups (each on a fresh copy of the same prefilled image):
  NBD over a Unix socket, fio's nbd engine, iodepth 32:
    raw           fio io_uring direct=1 on the image file itself (the disk's ceiling, not NBD)
    nbdkit        nbdkit file
    qsd           qemu-storage-daemon, raw file node exported writable
    qsd-cbw       qemu-storage-daemon, copy-before-write filter into a raw fleecing file +
                  snapshot-access node: front = cbw node, image = snapshot-access node
    blksnap       blksnapd, front export, no snapshot
    blksnap-snap  blksnapd, snapshot taken: front export for writes, NAME@ID for image reads
    blksnap-psync blksnapd with BLKSNAP_IO_ENGINE=psync (not a peer: evidence for a fix);
                  blksnap-fuse-psync the same through FUSE+loop
  FUSE + loop (/dev/loopN with direct I/O, fio io_uring direct=1, iodepth 32):
    raw-loop, qsd-fuse, qsd-cbw-fuse, blksnap-fuse (attach --loop),
    blksnap-snap-fuse (attach --loop + snapshot create --loop)
Every server opens the image through the page cache (blksnapd does not use O_DIRECT; nbdkit
and QEMU are run with their defaults, cache.direct=off), so all compete on equal terms.

Workloads: randread4k, randwrite4k, read1m, write1m, randwrite64k (time based). Snapshot
setups instead run, in order: cow64k (64 KiB random writes right after the take, random map so
no chunk is hit twice: every write preserves a new chunk), a sequential 1 MiB pass over the whole
front (preserves every chunk), steady64k (the same 64 KiB random writes, nothing left to
preserve), then the four basic workloads (writes to the front, reads from the image, which
now comes from the difference storage), then on a fresh image and a fresh take: every other
64 KiB chunk rewritten (half the chunks preserved) and the whole image read with nbdcopy.
Also: take latency (create/take/destroy via the CLI with a writer running) and the daemon's
memory with a 1 TiB sparse device.

Process hygiene: every process is started by us, recorded in SCRATCH/pids and stopped by its
pid; loop devices and mounts under SCRATCH are removed at the end (--cleanup-only does just
that, for the shell trap).
"""
import argparse
import datetime
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRATCH = os.environ.get("BLKSNAP_BENCH_DIR", "/var/tmp/blksnap-bench")
PIDS = os.path.join(SCRATCH, "pids")
KIB, MIB, GIB, TIB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
CHUNK = 64 * KIB  # QEMU's copy-before-write cluster; blksnap runs with --chunk-minimum-shift 16

BASIC = {
    "randread4k": dict(rw="randread", bs="4k"),
    "randwrite4k": dict(rw="randwrite", bs="4k"),
    "read1m": dict(rw="read", bs="1m"),
    "write1m": dict(rw="write", bs="1m"),
    "randwrite64k": dict(rw="randwrite", bs="64k"),
}
UNITS = {"randread4k": "IOPS", "randwrite4k": "IOPS", "randwrite64k": "IOPS", "cow64k": "IOPS",
         "steady64k": "IOPS", "read1m": "MiB/s", "write1m": "MiB/s", "fill1m": "MiB/s",
         "imgread": "MiB/s"}


def is_snap(setup):
    """Snapshot setups: a copy-before-write peer or blksnap with a taken snapshot."""
    return "-cbw" in setup or "-snap" in setup


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd, check=True, capture=True, timeout=None, **kw):
    r = subprocess.run(cmd, text=True, capture_output=capture, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))}: exit {r.returncode}: "
                           f"{(r.stderr or '').strip()[-2000:]}")
    return r


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


# ---------------------------------------------------------------- process and device hygiene

def spawn(cmd, **kw):
    """Starts a process in its own session and records its pid for cleanup."""
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True, **kw)
    with open(PIDS, "a") as f:
        f.write(f"{p.pid} {os.path.basename(cmd[0])}\n")
    return p


def stop(p, timeout=30):
    if p is None or p.poll() is not None:
        return
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def our_loops():
    out = []
    for dev in sorted(os.listdir("/sys/block")):
        bf = f"/sys/block/{dev}/loop/backing_file"
        if dev.startswith("loop") and os.path.exists(bf):
            with open(bf) as f:
                if f.read().strip().startswith(SCRATCH + "/"):
                    out.append("/dev/" + dev)
    return out


def our_mounts():
    with open("/proc/mounts") as f:
        mps = [l.split()[1] for l in f]
    return [m for m in mps if m.startswith(SCRATCH + "/")]


def cleanup(remove=True):
    """Loop devices first (they hold FUSE files), then our processes, then mounts."""
    for dev in our_loops():
        subprocess.run(["losetup", "-d", dev], capture_output=True)
    if os.path.exists(PIDS):
        with open(PIDS) as f:
            entries = [l.split() for l in f if l.strip()]
        for pid_s, name in entries:
            pid = int(pid_s)
            try:
                with open(f"/proc/{pid}/comm") as c:
                    comm = c.read().strip()
            except OSError:
                continue
            if not name.startswith(comm[:15]) and not comm.startswith(name[:15]):
                continue  # the pid was reused by someone else's process
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                continue
            for _ in range(100):
                if not os.path.exists(f"/proc/{pid}"):
                    break
                time.sleep(0.1)
            else:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
    for dev in our_loops():
        subprocess.run(["losetup", "-d", dev], capture_output=True)
    for m in sorted(our_mounts(), reverse=True):
        subprocess.run(["umount", "-l", m], capture_output=True)
    if remove and os.path.isdir(SCRATCH):
        shutil.rmtree(SCRATCH, ignore_errors=True)


def wait_for(pred, what, timeout=30):
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        if pred():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def sock_ready(path):
    if not os.path.exists(path):
        return False
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def loop_attach(path):
    dev = run(["losetup", "-f", "--show", "--direct-io=on", path]).stdout.strip()
    return dev


# ---------------------------------------------------------------- fio

class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.size = args.size or (256 * MIB if self.quick else 2 * GIB)
        self.runtime = args.runtime or (2 if self.quick else 10)
        self.bin = os.path.join(args.build, "src")
        self.blksnapd = os.path.join(self.bin, "daemon", "blksnapd")
        self.cli = os.path.join(self.bin, "cli", "blksnap")
        self.results = {}  # setup -> workload -> metrics (the current round while measuring)
        self.rounds = []   # one results dict per --repeat round
        self.takes = []    # take_latency() of each round
        self.notes = []
        self.root = os.geteuid() == 0
        self.master = os.path.join(SCRATCH, "master.img")

    # fio: job on an NBD URI or on a file/device; returns metrics of the written/read side.
    def fio(self, target, wl, *, runtime=None, time_based=True, extra=(), io_size=None):
        spec = BASIC.get(wl, {})
        cmd = ["fio", "--name=job", "--output-format=json", "--iodepth=32",
               f"--rw={extra_rw(spec, extra)}", f"--bs={extra_bs(spec, extra)}",
               "--randrepeat=0", "--group_reporting"]
        if target.startswith("nbd"):
            cmd += ["--ioengine=nbd", f"--uri={target}"]
        else:
            # The raw ceiling and the loop devices: O_DIRECT (buffered io_uring on a file
            # is punted to io-wq workers and measures those, not the disk).
            cmd += ["--ioengine=io_uring", f"--filename={target}", "--direct=1",
                    f"--size={self.size}"]
        rt = runtime or self.runtime
        cmd += [f"--runtime={rt}"]
        if time_based:
            cmd += ["--time_based"]
        if io_size:
            cmd += [f"--io_size={io_size}"]
        cmd += [e for e in extra if not e.startswith("--rw=") and not e.startswith("--bs=")]
        r = run(cmd, timeout=rt * 10 + 300)
        data = json.loads(r.stdout[r.stdout.index("{"):])
        job = data["jobs"][0]
        side = "write" if job["write"]["io_bytes"] > job["read"]["io_bytes"] else "read"
        s = job[side]
        pct = s.get("clat_ns", {}).get("percentile", {})
        m = {"iops": round(s["iops"], 1), "mib_s": round(s["bw"] / 1024.0, 1),
             "lat_p50_us": round(pct.get("50.000000", 0) / 1000.0, 1),
             "lat_p99_us": round(pct.get("99.000000", 0) / 1000.0, 1),
             "bytes": s["io_bytes"], "seconds": round(job.get("job_runtime", 0) / 1000.0, 2)}
        if job.get("error"):
            raise RuntimeError(f"fio error {job['error']} on {target} {wl}")
        return m

    def record(self, setup, wl, m):
        self.results.setdefault(setup, {})[wl] = m
        v = m["iops"] if UNITS.get(wl) == "IOPS" else m["mib_s"]
        log(f"  {setup:18s} {wl:13s} {v:>10.1f} {UNITS.get(wl, '')}"
            + (f"  p99 {m['lat_p99_us']:.0f} us" if m.get("lat_p99_us") else ""))

    # ------------------------------------------------------------ images

    def make_master(self):
        log(f"prefilling master image ({self.size // MIB} MiB, random data)")
        run(["fio", "--name=fill", "--ioengine=io_uring", f"--filename={self.master}",
             f"--size={self.size}", "--rw=write", "--bs=1m", "--iodepth=8", "--direct=1",
             "--refill_buffers=1", "--output-format=terse"])

    def fresh_image(self, name):
        path = os.path.join(SCRATCH, name + ".img")
        for f in os.listdir(SCRATCH):
            if f.endswith(".img") and f != "master.img":
                os.unlink(os.path.join(SCRATCH, f))
        run(["cp", "--sparse=never", self.master, path])
        run(["sync"])
        return path

    # ------------------------------------------------------------ servers

    def nbdkit(self, img):
        sock = os.path.join(SCRATCH, "nbdkit.sock")
        if os.path.exists(sock):  # left by the previous round; nbdkit will not replace it
            os.unlink(sock)
        p = spawn(["nbdkit", "--foreground", "--exit-with-parent", "-U", sock, "file",
                   f"file={img}"])
        wait_for(lambda: sock_ready(sock), "nbdkit")
        return p, f"nbd+unix:///?socket={sock}"

    def qsd(self, img, *, cbw=False, fuse=False):
        sock = os.path.join(SCRATCH, "qsd.sock")
        if os.path.exists(sock):
            os.unlink(sock)
        cmd = ["qemu-storage-daemon",
               "--blockdev", f"file,node-name=src,filename={img},aio=io_uring"]
        front = "src"
        fleece = None
        if cbw:
            fleece = os.path.join(SCRATCH, "fleece.raw")
            if os.path.exists(fleece):
                os.unlink(fleece)
            with open(fleece, "w") as f:
                f.truncate(self.size)
            cmd += ["--blockdev", f"file,node-name=tgt,filename={fleece},aio=io_uring",
                    "--blockdev", "copy-before-write,node-name=cbw,file=src,target=tgt",
                    "--blockdev", "snapshot-access,node-name=acc,file=cbw"]
            front = "cbw"
        out = {}
        if fuse:
            ff = os.path.join(SCRATCH, "qsd-front")
            open(ff, "w").close()
            cmd += ["--export", f"fuse,id=f0,node-name={front},mountpoint={ff},writable=on"]
            if cbw:
                fi = os.path.join(SCRATCH, "qsd-image")
                open(fi, "w").close()
                cmd += ["--export", f"fuse,id=f1,node-name=acc,mountpoint={fi}"]
        else:
            cmd += ["--nbd-server", f"addr.type=unix,addr.path={sock}",
                    "--export", f"nbd,id=e0,node-name={front},name=front,writable=on"]
            if cbw:
                cmd += ["--export", "nbd,id=e1,node-name=acc,name=image"]
        p = spawn(cmd)
        if fuse:
            wait_for(lambda: os.path.join(SCRATCH, "qsd-front") in our_mounts(), "qsd fuse")
            out["front"] = loop_attach(os.path.join(SCRATCH, "qsd-front"))
            if cbw:
                wait_for(lambda: os.path.join(SCRATCH, "qsd-image") in our_mounts(), "qsd fuse")
                out["image"] = run(["losetup", "-f", "--show", "--direct-io=on", "--read-only",
                                    os.path.join(SCRATCH, "qsd-image")]).stdout.strip()
        else:
            wait_for(lambda: sock_ready(sock), "qemu-storage-daemon")
            out["front"] = f"nbd+unix:///front?socket={sock}"
            if cbw:
                out["image"] = f"nbd+unix:///image?socket={sock}"
        return p, out

    def daemon(self, extra=(), tag="d", env=None):
        d = os.path.join(SCRATCH, tag)
        os.makedirs(d, exist_ok=True)
        self.ctl = os.path.join(d, "control.sock")
        cmd = [self.blksnapd, "--state-dir", d, "--control", self.ctl,
               "--nbd-unix", os.path.join(d, "nbd.sock"), "--log-level", "warn",
               "--log-file", os.path.join(d, "log")]
        cmd += ["--fuse-dir", os.path.join(d, "fuse")] if self.root else ["--no-fuse"]
        cmd += list(extra)
        p = spawn(cmd, env=dict(os.environ, **(env or {})))
        wait_for(lambda: sock_ready(self.ctl), "blksnapd")
        return p

    def cli_json(self, *args, timeout=120):
        r = run([self.cli, "--control", self.ctl, "--json", *args], timeout=timeout)
        return json.loads(r.stdout.strip().splitlines()[-1])

    def blksnap_setup(self, img, *, snap=False, loop=False, extra=("--chunk-minimum-shift", "16"),
                      env=None):
        p = self.daemon(extra, env=env)
        dev = self.cli_json("attach", img, "--name", "dev", *(["--loop"] if loop else []))
        out = {"front": dev["loop"] if loop else dev["nbd"]}
        if snap:
            os.makedirs(os.path.join(SCRATCH, "diff"), exist_ok=True)
            sid = self.cli_json("snapshot", "create", "--storage", os.path.join(SCRATCH, "diff"),
                                "--limit", str(2 * self.size + GIB),
                                *(["--loop"] if loop else []), "dev")["id"]
            take = self.cli_json("snapshot", "take", sid)
            info = self.cli_json("snapshot", "info", sid)
            im = info["devices"][0]["image"]
            out["image"] = im["loop"] if loop else im["nbd"]
            out["snapshot"] = sid
            out["took_ms"] = take.get("took_ms")
        return p, out

    # ------------------------------------------------------------ setups

    def setups(self):
        s = [("raw", "nbd"), ("nbdkit", "nbd"), ("qsd", "nbd"), ("blksnap", "nbd"),
             ("qsd-cbw", "nbd"), ("blksnap-snap", "nbd")]
        if self.root:
            s += [("raw-loop", "loop"), ("qsd-fuse", "loop"), ("blksnap-fuse", "loop"),
                  ("qsd-cbw-fuse", "loop"), ("blksnap-snap-fuse", "loop")]
        else:
            self.notes.append("not root: FUSE+loop setups skipped")
        # The psync controls equal the default since the io owner's 1da5506; only on request.
        s += [("blksnap-psync", "nbd")] + ([("blksnap-fuse-psync", "loop")] if self.root else [])
        keep = self.args.only.split(",") if self.args.only else [x[0] for x in s[:-2]]
        return [x for x in s if x[0] in keep]

    def start(self, name, img):
        """Returns (processes, loops we attached ourselves, endpoints)."""
        fuse = "-fuse" in name
        if name == "raw":
            return [], [], {"front": img}
        if name == "raw-loop":
            dev = loop_attach(img)
            return [], [dev], {"front": dev}
        if name == "nbdkit":
            p, uri = self.nbdkit(img)
            return [p], [], {"front": uri}
        if name.startswith("qsd"):
            p, out = self.qsd(img, cbw=is_snap(name), fuse=fuse)
            loops = [v for v in out.values() if v.startswith("/dev/")]
            return [p], loops, out
        if name.startswith("blksnap"):
            # blksnap-psync: the same daemon with its I/O engine forced to psync (evidence for
            # docs/performance.md: buffered io_uring writes are punted to io-wq workers).
            env = {"BLKSNAP_IO_ENGINE": "psync"} if name.endswith("-psync") else None
            p, out = self.blksnap_setup(img, snap=is_snap(name), loop=fuse, env=env)
            return [p], [], out
        raise ValueError(name)

    def finish(self, procs, loops):
        for dev in loops:
            run(["losetup", "-d", dev], check=False)
        for p in procs:
            stop(p)
        for m in sorted(our_mounts(), reverse=True):
            if "/qsd-" in m:
                run(["umount", "-l", m], check=False)

    def measure_setup(self, name):
        snap = is_snap(name)
        img = self.fresh_image(name)
        procs, loops, ep = self.start(name, img)
        log(f"setup {name}: front {ep.get('front')}" + (f", image {ep['image']}" if snap else ""))
        try:
            if not snap:
                for wl in BASIC:
                    self.record(name, wl, self.fio(ep["front"], wl))
            else:
                # Right after the take: each 64 KiB write preserves a new chunk (random map).
                self.record(name, "cow64k", self.fio(ep["front"], "cow64k", time_based=False,
                                                     extra=("--rw=randwrite", "--bs=64k")))
                # Preserve the rest, then the steady state.
                self.record(name, "fill1m", self.fio(ep["front"], "fill1m", time_based=False,
                                                     runtime=3600,
                                                     extra=("--rw=write", "--bs=1m")))
                self.record(name, "steady64k", self.fio(ep["front"], "steady64k",
                                                        extra=("--rw=randwrite", "--bs=64k")))
                for wl in BASIC:
                    if wl == "randwrite64k":
                        continue
                    target = ep["image"] if "read" in wl else ep["front"]
                    self.record(name, wl, self.fio(target, wl))
        finally:
            self.finish(procs, loops)
        if snap:
            self.image_read(name)

    def image_read(self, name):
        """Fresh image and take; every other chunk rewritten; the whole image read."""
        img = self.fresh_image(name)
        procs, loops, ep = self.start(name, img)
        try:
            # write:64k skips 64 KiB after each write; io_size stops it after one pass.
            self.fio(ep["front"], "half", time_based=False, runtime=3600,
                     io_size=self.size // 2, extra=("--rw=write:64k", "--bs=64k"))
            t = time.monotonic()
            if ep["image"].startswith("nbd"):
                run(["nbdcopy", ep["image"], "null:"], timeout=3600)
            else:
                run(["nbdcopy", ep["image"], "null:"], timeout=3600)
            dt = time.monotonic() - t
            m = {"iops": 0, "mib_s": round(self.size / MIB / dt, 1), "seconds": round(dt, 3),
                 "bytes": self.size}
            self.record(name, "imgread", m)
        finally:
            self.finish(procs, loops)

    # ------------------------------------------------------------ take latency

    def take_latency(self):
        n = 20 if self.quick else 100
        img = self.fresh_image("take")
        p = self.daemon(("--chunk-minimum-shift", "16"))
        writer = None
        try:
            dev = self.cli_json("attach", img, "--name", "dev")
            logf = open(os.path.join(SCRATCH, "take-writer.json"), "w")
            writer = spawn(["fio", "--name=w", "--ioengine=nbd", f"--uri={dev['nbd']}",
                            "--rw=randwrite", "--bs=4k", "--iodepth=32", "--time_based",
                            "--runtime=3600", "--output-format=json"], stdout=logf)
            time.sleep(1)
            os.makedirs(os.path.join(SCRATCH, "diff"), exist_ok=True)
            took, wall, held = [], [], []
            for _ in range(n):
                sid = self.cli_json("snapshot", "create", "--storage",
                                    os.path.join(SCRATCH, "diff"), "--limit", "4G", "dev")["id"]
                t = time.monotonic()
                r = self.cli_json("snapshot", "take", sid)
                wall.append((time.monotonic() - t) * 1000)
                took.append(float(r["took_ms"]))
                if "held_us" in r:
                    held.append(float(r["held_us"]))
                time.sleep(0.05)  # writers run against the taken snapshot (COW)
                self.cli_json("snapshot", "destroy", sid)
            if writer.poll() is not None:
                raise RuntimeError("take: the writer died")
        finally:
            stop(writer)
            stop(p)

        def pct(v, q):
            v = sorted(v)
            return round(v[min(len(v) - 1, int(round(q * (len(v) - 1))))], 3)
        res = {"takes": n, "took_ms_p50": pct(took, .5), "took_ms_p99": pct(took, .99),
               "took_ms_max": round(max(took), 3), "cli_wall_ms_p50": pct(wall, .5),
               "cli_wall_ms_p99": pct(wall, .99), "took_ms": took, "held_us": held}
        if held:
            res.update(held_us_p50=pct(held, .5), held_us_p99=pct(held, .99))
        log(f"  take: p50 {res['took_ms_p50']} ms, p99 {res['took_ms_p99']} ms "
            f"(CLI wall p99 {res['cli_wall_ms_p99']} ms)")
        self.takes.append(res)

    # ------------------------------------------------------------ memory

    def memory(self):
        """1 TiB sparse device, default chunk size (256 KiB: 4 Mi chunks): RSS idle, attached,
        taken, then after stages of preserved chunks up to 10% of them (419430 chunks). Each
        preserved chunk gets one 4 KiB write; every 10th chunk of the device is hit, so the
        table is spread over the whole device. The device is sparse, so every preserved chunk
        was zeroes at the take and takes no difference storage (the engine keeps zero chunks as
        table entries only), which is what lets the 10% point be measured instead of
        extrapolated: the table is the same as for data chunks, and data chunks' buffers are
        bounded by chunk_maximum_in_queue + chunk_maximum_in_cache (reported beside)."""
        big = os.path.join(SCRATCH, "big.img")
        with open(big, "w") as f:
            f.truncate(TIB)
        p = self.daemon((), tag="mem")
        res = {"device_bytes": TIB}

        def status():
            d = {}
            with open(f"/proc/{p.pid}/status") as f:
                for line in f:
                    k, _, v = line.partition(":")
                    if k in ("VmRSS", "VmHWM"):
                        d[k] = int(v.split()[0]) * KIB
            return d
        try:
            res["idle"] = status()
            dev = self.cli_json("attach", big, "--name", "big")
            res["attached"] = status()
            cbt = self.cli_json("cbt", "info", "big")
            res["cbt"] = cbt
            res["cbt_maps_bytes"] = 2 * cbt["block_count"]
            diff = os.path.join(SCRATCH, "diff")
            os.makedirs(diff, exist_ok=True)
            sid = self.cli_json("snapshot", "create", "--storage", diff, "--limit", "0",
                                "big")["id"]
            self.cli_json("snapshot", "take", sid)
            res["taken"] = status()
            chunk = 256 * KIB  # default chunk_minimum_shift 18
            chunks = TIB // chunk
            every = 10  # every 10th chunk: 10% of them once the whole device is covered
            ten = chunks // every
            fractions = (0.0005, 0.001) if self.quick else (0.01, 0.025, 0.05, 0.10)
            res.update(chunk_bytes=chunk, chunks=chunks, ten_percent_chunks=ten,
                       buffers_bound_bytes=(64 + 32) * chunk)
            points, done = [], 0
            for frac in fractions:
                upto = int(ten * frac / 0.10)
                n = upto - done
                t = time.monotonic()
                self.fio(dev["nbd"], "mem", time_based=False, runtime=3600,
                         extra=("--rw=write:%dk" % ((every * chunk) // KIB - 4), "--bs=4k",
                                "--io_size=%d" % (n * 4 * KIB),
                                "--offset=%d" % (done * every * chunk)))
                dt = time.monotonic() - t
                done = upto
                info = self.cli_json("snapshot", "info", sid)
                st = status()
                points.append({"preserved": done, "fraction": frac, "VmRSS": st["VmRSS"],
                               "VmHWM": st["VmHWM"], "storage_used": info["storage"]["used"],
                               "seconds": round(dt, 1)})
                log(f"  memory: {done} chunks preserved ({frac:.2%}) in {dt:.0f} s: RSS "
                    f"{st['VmRSS'] / MIB:.1f} MiB, storage used {info['storage']['used']}")
            res["stages"] = points
            xs = [pt["preserved"] for pt in points]
            ys = [pt["VmRSS"] for pt in points]
            if len(xs) > 1:
                mx, my = statistics.mean(xs), statistics.mean(ys)
                slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / \
                    sum((x - mx) ** 2 for x in xs)
                res["rss_per_preserved_chunk"] = round(slope, 1)
            last = points[-1]
            res["measured_fraction"] = last["fraction"]
            res["rss_at_last_stage"] = last["VmRSS"]
            # Quick mode stops far short of 10%: extrapolate there only (labelled as such).
            res["rss_10pct"] = int(last["VmRSS"] + max(0.0, res.get("rss_per_preserved_chunk",
                                                                    0.0)) * (ten - done))
            res["rss_10pct_measured"] = done >= ten
            res["taken_rss"] = res["taken"]["VmRSS"]
            res["final"] = status()
            self.cli_json("snapshot", "destroy", sid)
            res["destroyed"] = status()
        finally:
            stop(p)
            if os.path.exists(big):
                os.unlink(big)
            shutil.rmtree(os.path.join(SCRATCH, "mem"), ignore_errors=True)
        log(f"  memory: taken {res['taken_rss'] / MIB:.1f} MiB; "
            f"{'measured' if res['rss_10pct_measured'] else 'extrapolated'} at 10% "
            f"{res['rss_10pct'] / MIB:.1f} MiB; CBT maps {res['cbt_maps_bytes'] / MIB:.1f} MiB")
        self.mem = res


def extra_rw(spec, extra):
    for e in extra:
        if e.startswith("--rw="):
            return e[5:]
    return spec["rw"]


def extra_bs(spec, extra):
    for e in extra:
        if e.startswith("--bs="):
            return e[5:]
    return spec["bs"]


# ---------------------------------------------------------------- report

def metric(res, setup, wl):
    m = res.get(setup, {}).get(wl)
    if not m:
        return None
    return m["iops"] if UNITS[wl] == "IOPS" else m["mib_s"]


def ratio(res, a, b, wl, wl_b=None):
    x, y = metric(res, a, wl), metric(res, b, wl_b or wl)
    if x is None or not y:
        return None
    return round(x / y, 3)


def round_ratios(rounds, a, b, wl, wl_b=None):
    """The ratio a/b within each round (the two setups ran minutes apart, not a whole run)."""
    return [v for v in (ratio(r, a, b, wl, wl_b) for r in rounds) if v is not None]


def median_ratio(rounds, a, b, wl, wl_b=None):
    v = round_ratios(rounds, a, b, wl, wl_b)
    return round(statistics.median(v), 3) if v else None


def combine(rounds):
    """Per setup and workload: the round whose main figure is the median (median_low for an even
    count), with every round's figure under "samples"."""
    out = {}
    for setup in dict.fromkeys(s for r in rounds for s in r):
        for wl in dict.fromkeys(w for r in rounds for w in r.get(setup, {})):
            ms = [r[setup][wl] for r in rounds if wl in r.get(setup, {})]
            key = "iops" if UNITS.get(wl) == "IOPS" else "mib_s"
            vals = [m[key] for m in ms]
            med = statistics.median_low(vals)
            m = dict(ms[vals.index(med)])
            m["samples"] = vals
            out.setdefault(setup, {})[wl] = m
    return out


def combine_takes(takes):
    if not takes:
        return None
    if len(takes) == 1:
        return takes[0]
    took = sorted(v for t in takes for v in t["took_ms"])
    held = sorted(v for t in takes for v in t["held_us"])

    def pct(v, q):
        return round(v[min(len(v) - 1, int(round(q * (len(v) - 1))))], 3) if v else None
    return {"takes": len(took), "rounds": len(takes), "took_ms_p50": pct(took, .5),
            "took_ms_p99": pct(took, .99), "took_ms_max": round(took[-1], 3),
            "held_us_p50": pct(held, .5), "held_us_p99": pct(held, .99),
            "took_ms_p99_per_round": [t["took_ms_p99"] for t in takes],
            "cli_wall_ms_p99_per_round": [t["cli_wall_ms_p99"] for t in takes]}


def targets(rounds, take, mem):
    t = []

    def add(name, value, goal, op=">="):
        met = None if value is None else (value >= goal if op == ">=" else value < goal)
        t.append({"target": name, "value": value, "goal": f"{op} {goal}", "met": met})
    for wl in ("randread4k", "randwrite4k"):
        add(f"NBD {wl}: blksnap / qsd", median_ratio(rounds, "blksnap", "qsd", wl), 1.2)
        add(f"NBD {wl}: blksnap / nbdkit", median_ratio(rounds, "blksnap", "nbdkit", wl), 1.0)
    add("NBD cow64k: blksnap-snap / qsd-cbw", median_ratio(rounds, "blksnap-snap", "qsd-cbw", "cow64k"), 1.5)
    add("NBD steady64k: blksnap-snap / blksnap randwrite64k",
        median_ratio(rounds, "blksnap-snap", "blksnap", "steady64k", "randwrite64k"), 0.9)
    add("NBD imgread: blksnap-snap / qsd-cbw", median_ratio(rounds, "blksnap-snap", "qsd-cbw", "imgread"),
        1.0)
    for wl in ("randread4k", "randwrite4k"):
        add(f"FUSE {wl}: blksnap-fuse / qsd-fuse", median_ratio(rounds, "blksnap-fuse", "qsd-fuse", wl), 1.2)
    add("FUSE cow64k: blksnap-snap-fuse / qsd-cbw-fuse",
        median_ratio(rounds, "blksnap-snap-fuse", "qsd-cbw-fuse", "cow64k"), 1.5)
    add("FUSE steady64k: blksnap-snap-fuse / blksnap-fuse randwrite64k",
        median_ratio(rounds, "blksnap-snap-fuse", "blksnap-fuse", "steady64k", "randwrite64k"), 0.9)
    add("FUSE imgread: blksnap-snap-fuse / qsd-cbw-fuse",
        median_ratio(rounds, "blksnap-snap-fuse", "qsd-cbw-fuse", "imgread"), 1.0)
    if take:
        add("take p99 ms (writers running)", take["took_ms_p99"], 10, "<")
    if mem:
        v = round((mem["rss_10pct"] - mem["cbt_maps_bytes"]) / MIB, 1)
        how = "measured" if mem["rss_10pct_measured"] else "extrapolated"
        add(f"RSS MiB minus CBT maps, 1 TiB, 10% preserved ({how})", v, 64, "<")
        v = round((mem["taken_rss"] - mem["cbt_maps_bytes"]) / MIB, 1)
        add("RSS MiB minus CBT maps, 1 TiB, snapshot taken", v, 64, "<")
    return t


def table(res):
    wls = ["randread4k", "randwrite4k", "read1m", "write1m", "randwrite64k", "cow64k",
           "fill1m", "steady64k", "imgread"]
    wls = [w for w in wls if any(w in r for r in res.values())]
    head = ["setup"] + [f"{w} ({UNITS[w]})" for w in wls]
    rows = [head]
    for s, r in res.items():
        rows.append([s] + [("%.0f" % metric(res, s, w)) if metric(res, s, w) is not None else "-"
                           for w in wls])
    width = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(width[i]) if i else c.ljust(width[i])
                               for i, c in enumerate(r)) for r in rows)


def ratios(rounds):
    """Every blksnap setup against its peers, per workload: the median of the per-round ratios
    and, with more than one round, their range."""
    pairs = [("blksnap", "qsd"), ("blksnap", "nbdkit"), ("blksnap", "raw"),
             ("blksnap-psync", "qsd"), ("blksnap-psync", "nbdkit"), ("blksnap-psync", "blksnap"),
             ("blksnap-snap", "qsd-cbw"), ("blksnap-fuse", "qsd-fuse"),
             ("blksnap-fuse", "raw-loop"), ("blksnap-snap-fuse", "qsd-cbw-fuse"),
             ("blksnap-fuse-psync", "qsd-fuse"), ("blksnap-fuse-psync", "blksnap-fuse")]
    out, spread = {}, {}
    for a, b in pairs:
        for wl in UNITS:
            v = round_ratios(rounds, a, b, wl)
            if v:
                out[f"{a} / {b} {wl}"] = round(statistics.median(v), 3)
                spread[f"{a} / {b} {wl}"] = [min(v), max(v)]
    return out, spread


def chart(path, rat, tg):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing: no chart")
        return False
    keys = [k for k in rat if "/ raw" not in k]
    fig, ax = plt.subplots(figsize=(11, max(4, 0.28 * len(keys) + 1.5)))
    vals = [rat[k] for k in keys]
    colors = ["tab:green" if v >= 1 else "tab:red" for v in vals]
    ax.barh(range(len(keys)), vals, color=colors)
    ax.set_yticks(range(len(keys)))
    ax.set_yticklabels(keys, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ticks = [0.25, 0.5, 0.75, 1, 1.2, 1.5, 2, 3, 4, 6, 8, 16]
    lo, hi = min(vals + [0.9]) * 0.9, max(vals + [1.6]) * 1.15
    ax.set_xlim(lo, hi)
    ax.set_xticks([t for t in ticks if lo <= t <= hi])
    ax.set_xticklabels([f"{t:g}" for t in ticks if lo <= t <= hi])
    ax.minorticks_off()
    ax.axvline(1.0, color="black", lw=0.8)
    for g, style in ((1.2, ":"), (1.5, "--")):
        ax.axvline(g, color="gray", lw=0.8, ls=style)
    for i, v in enumerate(vals):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=6)
    ax.set_xlabel("ratio, log scale (blksnap / peer; > 1 = blksnap faster); "
                  "dotted 1.2×, dashed 1.5× (issue 6 targets)")
    ax.set_title("blksnap vs peers, same run")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def versions():
    def first(cmd):
        try:
            return run(cmd, check=False).stdout.splitlines()[0].strip()
        except Exception:  # noqa: BLE001 - best effort
            return None
    git = run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], check=False).stdout.strip()
    return {"git": git, "fio": first(["fio", "--version"]),
            "nbdkit": first(["nbdkit", "--version"]),
            "qemu-storage-daemon": first(["qemu-storage-daemon", "--version"]),
            "nbdcopy": first(["nbdcopy", "--version"]), "kernel": os.uname().release}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--build", default=os.path.join(ROOT, "build-release"))
    ap.add_argument("--cleanup-only", action="store_true")
    ap.add_argument("--chart-only", metavar="JSON", help="redraw the chart of a results file")
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--only", help="comma-separated setups and/or take,memory (default: all)")
    ap.add_argument("--no-extras", action="store_true", help="skip take latency and memory")
    ap.add_argument("--size", type=int, help="image bytes")
    ap.add_argument("--runtime", type=int, help="seconds per timed job")
    ap.add_argument("--output", help="results directory (default bench/results)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds of every setup (and of take latency); figures are medians")
    args = ap.parse_args()
    if args.cleanup_only:
        cleanup()
        return 0
    if args.chart_only:
        with open(args.chart_only) as f:
            doc = json.load(f)
        chart(os.path.splitext(args.chart_only)[0] + ".png", doc["ratios"], doc["targets"])
        return 0

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    cleanup()
    os.makedirs(SCRATCH)
    b = Bench(args)
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "mode": "quick" if args.quick else "full", "image_bytes": b.size,
            "runtime_s": b.runtime, "iodepth": 32, "nproc": os.cpu_count(),
            "load_start": loadavg(), "versions": versions(), "chunk_bytes": CHUNK}
    log(f"bench: {meta['mode']} mode, images {b.size // MIB} MiB, {b.runtime} s per job, "
        f"load {meta['load_start']}")
    failures = []
    b.take = b.mem = None
    try:
        b.make_master()
        loads = {}
        for rnd in range(args.repeat):
            if args.repeat > 1:
                log(f"round {rnd + 1} of {args.repeat}")
            b.results = {}
            b.rounds.append(b.results)
            for name, _ in b.setups():
                loads.setdefault(name, []).append(loadavg())
                try:
                    b.measure_setup(name)
                except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as e:
                    failures.append({"setup": name, "round": rnd, "error": str(e)[-1500:]})
                    log(f"  {name} FAILED: {e}")
            if not args.no_extras and (not args.only or "take" in args.only.split(",")):
                try:
                    b.take_latency()
                except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError,
                        KeyError) as e:
                    failures.append({"setup": "take", "round": rnd, "error": str(e)[-1500:]})
                    log(f"  take FAILED: {e!r}")
        for what, fn in (("memory", b.memory),):
            if not args.no_extras and (not args.only or what in args.only.split(",")):
                try:
                    fn()
                except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError,
                        KeyError) as e:
                    failures.append({"setup": what, "error": str(e)[-1500:]})
                    log(f"  {what} FAILED: {e!r}")
        meta["load_per_setup"] = loads
    finally:
        cleanup()
    meta["load_end"] = loadavg()
    meta["rounds"] = len(b.rounds)
    b.results = combine(b.rounds)
    b.take = combine_takes(b.takes)
    rat, spread = ratios(b.rounds)
    tg = targets(b.rounds, b.take, b.mem)
    doc = {"meta": meta, "results": b.results, "ratios": rat, "ratio_range": spread,
           "targets": tg, "take": b.take, "take_rounds": b.takes if len(b.takes) > 1 else None,
           "memory": b.mem, "failures": failures, "notes": b.notes, "rounds": b.rounds}
    outdir = args.output or os.path.join(ROOT, "bench", "results")
    os.makedirs(outdir, exist_ok=True)
    stem = "quick" if args.quick else "latest"
    with open(os.path.join(outdir, stem + ".json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    chart(os.path.join(outdir, stem + ".png"), rat, tg)
    print()
    print(table(b.results))
    print()
    print("ratios:")
    for k, v in rat.items():
        rng = spread.get(k)
        extra = f"  [{rng[0]:.2f} .. {rng[1]:.2f}]" if rng and len(b.rounds) > 1 else ""
        print(f"  {k:55s} {v:6.2f}{extra}")
    print()
    print("targets:")
    for t in tg:
        mark = {True: "MET ", False: "MISS", None: "n/a "}[t["met"]]
        print(f"  {mark} {t['target']:62s} {t['value']}  (goal {t['goal']})")
    if failures:
        print("\nfailures:")
        for f in failures:
            print(f"  {f['setup']}: {f['error'][:300]}")
    print(f"\nwrote {os.path.join(outdir, stem + '.json')} (load {meta['load_start']} -> "
          f"{meta['load_end']})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
