"""What is measured on the setups: fio jobs, the snapshot sequence, the image read, take
latency and the daemon's memory.

Design note. Workloads: randread4k, randwrite4k, read1m, write1m, randwrite64k (time based,
iodepth 32; NBD fronts through fio's nbd engine, files and loop devices through io_uring with
direct=1). Snapshot setups instead run, in order: cow64k (64 KiB random writes right after the
take, random map so no chunk is hit twice: every write preserves a new chunk), a sequential
1 MiB pass over the whole front (fill1m, preserves every chunk), steady64k (the same 64 KiB
random writes, nothing left to preserve), then the four basic workloads (writes to the front,
reads from the image, which now comes from the difference storage), then on a fresh image and
a fresh take: every other 64 KiB chunk rewritten (half the chunks preserved) and the whole
image read with nbdcopy (imgread).
Also: take latency (create/take/destroy via the CLI with a writer running) and the daemon's
memory with a 1 TiB sparse device.

State: Workloads.results is the current round (setup -> workload -> metrics); bench.py gives
it a new dict per round. takes collects one take_latency() result per round, mem the one
memory() result. Every metrics dict has iops, mib_s, bytes, seconds and (fio) lat_p50_us,
lat_p99_us; report.py reads them.
"""
import json
import os
import shutil
import statistics
import time

from common import BASIC, IODEPTH, KIB, MIB, SCRATCH, TIB, UNITS, is_snap, log, percentile, run
from setups import spawn, stop


def fio_args(spec, extra):
    """--rw and --bs: from extra when given there (the first one), else from the spec."""
    given = dict(e[2:].split("=", 1) for e in reversed(extra) if e.startswith(("--rw=", "--bs=")))
    return [f"--{k}={given[k] if k in given else spec[k]}" for k in ("rw", "bs")]


class Workloads:
    def __init__(self, lab, runtime, quick):
        self.lab = lab
        self.runtime = runtime
        self.quick = quick
        self.results = {}  # setup -> workload -> metrics (the current round while measuring)
        self.takes = []    # take_latency() of each round
        self.mem = None    # memory()

    # fio: job on an NBD URI or on a file/device; returns metrics of the written/read side.
    def fio(self, target, wl, *, runtime=None, time_based=True, extra=(), io_size=None):
        cmd = ["fio", "--name=job", "--output-format=json", f"--iodepth={IODEPTH}",
               *fio_args(BASIC.get(wl, {}), extra), "--randrepeat=0", "--group_reporting"]
        if target.startswith("nbd"):
            cmd += ["--ioengine=nbd", f"--uri={target}"]
        else:
            # The raw ceiling and the loop devices: O_DIRECT (buffered io_uring on a file
            # is punted to io-wq workers and measures those, not the disk).
            cmd += ["--ioengine=io_uring", f"--filename={target}", "--direct=1",
                    f"--size={self.lab.size}"]
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

    # ------------------------------------------------------------ setups

    def measure_setup(self, name):
        snap = is_snap(name)
        img = self.lab.fresh_image(name)
        procs, loops, ep = self.lab.start(name, img)
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
            self.lab.finish(procs, loops)
        if snap:
            self.image_read(name)

    def image_read(self, name):
        """Fresh image and take; every other chunk rewritten; the whole image read."""
        size = self.lab.size
        img = self.lab.fresh_image(name)
        procs, loops, ep = self.lab.start(name, img)
        try:
            # write:64k skips 64 KiB after each write; io_size stops it after one pass.
            self.fio(ep["front"], "half", time_based=False, runtime=3600,
                     io_size=size // 2, extra=("--rw=write:64k", "--bs=64k"))
            t = time.monotonic()
            run(["nbdcopy", ep["image"], "null:"], timeout=3600)  # an NBD URI or a loop device
            dt = time.monotonic() - t
            m = {"iops": 0, "mib_s": round(size / MIB / dt, 1), "seconds": round(dt, 3),
                 "bytes": size}
            self.record(name, "imgread", m)
        finally:
            self.lab.finish(procs, loops)

    # ------------------------------------------------------------ take latency

    def take_latency(self):
        lab = self.lab
        n = 20 if self.quick else 100
        img = lab.fresh_image("take")
        p = lab.daemon(("--chunk-minimum-shift", "16"))
        writer = None
        try:
            dev = lab.cli_json("attach", img, "--name", "dev")
            logf = open(os.path.join(SCRATCH, "take-writer.json"), "w")
            writer = spawn(["fio", "--name=w", "--ioengine=nbd", f"--uri={dev['nbd']}",
                            "--rw=randwrite", "--bs=4k", f"--iodepth={IODEPTH}", "--time_based",
                            "--runtime=3600", "--output-format=json"], stdout=logf)
            time.sleep(1)
            os.makedirs(os.path.join(SCRATCH, "diff"), exist_ok=True)
            took, wall, held = [], [], []
            for _ in range(n):
                sid = lab.cli_json("snapshot", "create", "--storage",
                                   os.path.join(SCRATCH, "diff"), "--limit", "4G", "dev")["id"]
                t = time.monotonic()
                r = lab.cli_json("snapshot", "take", sid)
                wall.append((time.monotonic() - t) * 1000)
                took.append(float(r["took_ms"]))
                if "held_us" in r:
                    held.append(float(r["held_us"]))
                time.sleep(0.05)  # writers run against the taken snapshot (COW)
                lab.cli_json("snapshot", "destroy", sid)
            if writer.poll() is not None:
                raise RuntimeError("take: the writer died")
        finally:
            stop(writer)
            stop(p)

        pct = percentile
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
        lab = self.lab
        big = os.path.join(SCRATCH, "big.img")
        with open(big, "w") as f:
            f.truncate(TIB)
        p = lab.daemon((), tag="mem")
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
            dev = lab.cli_json("attach", big, "--name", "big")
            res["attached"] = status()
            cbt = lab.cli_json("cbt", "info", "big")
            res["cbt"] = cbt
            res["cbt_maps_bytes"] = 2 * cbt["block_count"]
            diff = os.path.join(SCRATCH, "diff")
            os.makedirs(diff, exist_ok=True)
            sid = lab.cli_json("snapshot", "create", "--storage", diff, "--limit", "0",
                               "big")["id"]
            lab.cli_json("snapshot", "take", sid)
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
                info = lab.cli_json("snapshot", "info", sid)
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
            lab.cli_json("snapshot", "destroy", sid)
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
