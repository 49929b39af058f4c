"""What every part of the benchmark shares: paths, sizes, the workload tables, logging and
running a command.

Design note: the benchmark is four modules around this one, imported in one direction only:
  common     this file: constants, log(), run(), loadavg(); no state
  setups     the things measured: images, servers (blksnapd, qemu-storage-daemon, nbdkit),
             NBD and FUSE+loop fronts, and the process/mount/loop hygiene that removes them
  workloads  what is measured on them: fio jobs, the snapshot sequence, image read, take
             latency, daemon memory; collects one results dict per round
  durable    the cost of durable CBT: durable against --cbt-in-memory side by side, and a
             daemon restart with many attached devices (issue 14)
  report     turns the rounds into the JSON document, the table, the ratios and the chart
  bench.py   the command line: wires the others, runs the rounds, writes the results
The JSON document's schema belongs to report.document(); docs/performance.md gives the method.
"""
import os
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRATCH = os.environ.get("BLKSNAP_BENCH_DIR", "/var/tmp/blksnap-bench")
PIDS = os.path.join(SCRATCH, "pids")
KIB, MIB, GIB, TIB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
CHUNK = 64 * KIB  # QEMU's copy-before-write cluster; blksnap runs with --chunk-minimum-shift 16
IODEPTH = 32

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


def percentile(v, q):
    """The q-quantile of v (any order) by nearest rank, rounded to 3 places; None if empty."""
    v = sorted(v)
    return round(v[min(len(v) - 1, int(round(q * (len(v) - 1))))], 3) if v else None


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]
