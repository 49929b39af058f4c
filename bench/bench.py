#!/usr/bin/python3
"""blksnap side by side with its peers (issue 6). Run through bench/run, which installs the
tools and builds blksnap in release mode; method and results in docs/performance.md.

Design note. This file is the command line only; the work is in the modules beside it
(common.py lists them): setups.py starts and removes what is measured, workloads.py measures
it, report.py turns the rounds into bench/results/{latest,quick}.{json,png} and the printed
table. A run: clean up what an earlier run left, prefill one master image, then --repeat
rounds of every selected setup (each on a fresh copy of the master), of the take latency, of
the durable-CBT comparison and of the restart (durable.py), then the memory measurement once;
a setup that fails is recorded under "failures" and the run
goes on. Whatever happens, the processes, loops and mounts it made are removed (also by
--cleanup-only, which bench/run's shell trap calls if Python dies).
"""
import argparse
import datetime
import json
import os
import signal
import subprocess
import sys

import durable
import report
import setups
import workloads
from common import CHUNK, GIB, IODEPTH, MIB, ROOT, SCRATCH, loadavg, log

# What a failed setup, take or memory measurement raises; anything else stops the run.
MEASURE_ERRORS = (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError)


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--build", default=os.path.join(ROOT, "build-release"))
    ap.add_argument("--cleanup-only", action="store_true")
    ap.add_argument("--chart-only", metavar="JSON", help="redraw the chart of a results file")
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--only", help="comma-separated setups and/or take,memory,cbt,restart "
                    "(default: all)")
    ap.add_argument("--no-extras", action="store_true",
                    help="skip take latency, memory, cbt and restart")
    ap.add_argument("--size", type=int, help="image bytes")
    ap.add_argument("--runtime", type=int, help="seconds per timed job")
    ap.add_argument("--output", help="results directory (default bench/results)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds of every setup (and of take latency); figures are medians")
    return ap.parse_args()


def attempt(failures, what, fn, rnd=None, errors=MEASURE_ERRORS + (KeyError,), show=repr):
    """Runs one measurement; a failure is recorded (with its round, if any) and logged."""
    try:
        fn()
    except errors as e:
        failures.append({"setup": what, **({} if rnd is None else {"round": rnd}),
                         "error": str(e)[-1500:]})
        log(f"  {what} FAILED: {show(e)}")


def measure(args, lab, wl, dur, meta):
    """Every round of every setup, the take latency, the durable-CBT comparison, the memory and
    the restart; returns (rounds, failures)."""
    failures, rounds = [], []

    def wanted(what):  # the extras: unless --no-extras or left out by --only
        return not args.no_extras and (not args.only or what in args.only.split(","))
    lab.make_master()
    loads = {}
    for rnd in range(args.repeat):
        if args.repeat > 1:
            log(f"round {rnd + 1} of {args.repeat}")
        wl.results = {}
        rounds.append(wl.results)
        for name, _ in lab.setups():
            loads.setdefault(name, []).append(loadavg())
            attempt(failures, name, lambda: wl.measure_setup(name), rnd, MEASURE_ERRORS, str)
        if wanted("take"):
            attempt(failures, "take", wl.take_latency, rnd)
        if wanted("cbt"):
            attempt(failures, "cbt", dur.compare, rnd)
        if wanted("restart"):
            attempt(failures, "restart", dur.restart, rnd)
    if wanted("memory"):
        attempt(failures, "memory", wl.memory)
    meta["load_per_setup"] = loads
    return rounds, failures


def main():
    args = parse_args()
    if args.cleanup_only:
        setups.cleanup()
        return 0
    if args.chart_only:
        with open(args.chart_only) as f:
            doc = json.load(f)
        report.chart(os.path.splitext(args.chart_only)[0] + ".png", doc["ratios"], doc["targets"])
        return 0

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    setups.cleanup()
    os.makedirs(SCRATCH)
    lab = setups.Lab(args.build, args.size or (256 * MIB if args.quick else 2 * GIB), args.only)
    wl = workloads.Workloads(lab, args.runtime or (2 if args.quick else 10), args.quick)
    dur = durable.Durable(lab, wl, args.quick)
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "mode": "quick" if args.quick else "full", "image_bytes": lab.size,
            "runtime_s": wl.runtime, "iodepth": IODEPTH, "nproc": os.cpu_count(),
            "load_start": loadavg(), "versions": report.versions(), "chunk_bytes": CHUNK,
            "daemon_args": os.environ.get("BENCH_DAEMON_ARGS", ""),
            # What bench/settle_memory.py did before the run (bench/run passes it on).
            "memory_settle": json.loads(os.environ.get("BENCH_MEMORY_SETTLE") or "null")}
    log(f"bench: {meta['mode']} mode, images {lab.size // MIB} MiB, {wl.runtime} s per job, "
        f"load {meta['load_start']}")
    try:
        rounds, failures = measure(args, lab, wl, dur, meta)
    finally:
        setups.cleanup()
    meta["load_end"] = loadavg()
    meta["rounds"] = len(rounds)
    doc = report.document(meta, rounds, wl.takes, wl.mem, failures, lab.notes, dur.summary())
    outdir = args.output or os.path.join(ROOT, "bench", "results")
    os.makedirs(outdir, exist_ok=True)
    stem = "quick" if args.quick else "latest"
    with open(os.path.join(outdir, stem + ".json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    report.chart(os.path.join(outdir, stem + ".png"), doc["ratios"], doc["targets"])
    print(report.summary(doc))
    print(f"\nwrote {os.path.join(outdir, stem + '.json')} (load {meta['load_start']} -> "
          f"{meta['load_end']})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
