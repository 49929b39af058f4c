#!/usr/bin/python3
"""Results of bench/vm/lvm_compare.sh: collect one run, keep the runs in one JSON, print tables.

  report.py collect OUT_DIR RESULTS_JSON   add the run in OUT_DIR to RESULTS_JSON ({"runs": [...]})
  report.py table RESULTS_JSON [--last N]  per run: the table and the ratios; then the medians

Per job the run directory holds SIDE.WORKLOAD.json (fio --output-format=json) and
SIDE.WORKLOAD.stat (the "cpu" and "ctxt" lines of /proc/stat before and after the job). CPU is
the whole VM's busy time (user, nice, system, irq, softirq, steal) in USER_HZ ticks, so it
includes the kernel's work (dm-snapshot's kcopyd, loop, FUSE) and blksnapd's; per I/O it is
comparable across sides, unlike a per-process figure.

A run's "snapshots" (BENCH_SNAPSHOTS, 1 when absent) is the number of snapshots of the origin
taken before cow64k; with more than one, cow64k-1 is the same job with one snapshot, in the
same run, and the ratios compare the two.
"""
import glob
import json
import os
import statistics
import sys

SIDES = ["raw", "dm-snapshot", "blksnap-ublk", "blksnap-ublk-memory", "blksnap-ublk-crash",
         "blksnap-ublk-power", "blksnap-loop"]
PLAIN = ("randread4k", "randwrite4k", "randwrite64k")  # no snapshot
# Sides whose no-snapshot workloads are another side's rows: dm-snapshot's origin without a
# snapshot is the raw LV; blksnap-ublk-memory/-crash/-power differ from blksnap-ublk (the default
# durability: power in runs before 2026-12-03, crash since) only once a snapshot exists.
SAME_PLAIN = {"dm-snapshot": "raw", "blksnap-ublk-memory": "blksnap-ublk",
              "blksnap-ublk-crash": "blksnap-ublk", "blksnap-ublk-power": "blksnap-ublk"}
WORKLOADS = ["randread4k", "randwrite4k", "randwrite64k", "cow64k-1", "cow64k", "fill1m", "steady64k",
             "imgread", "read1m"]
MIB_S = {"fill1m", "imgread", "read1m"}  # reported in MiB/s; the others in IOPS
USER_HZ = os.sysconf("SC_CLK_TCK")


def job_result(prefix):
    j = json.load(open(prefix + ".json"))["jobs"][0]
    r, w = j["read"], j["write"]
    ios = r["total_ios"] + w["total_ios"]
    main = w if w["total_ios"] > r["total_ios"] else r
    res = {"iops": round(r["iops"] + w["iops"], 1),
           "mib_s": round((r["bw"] + w["bw"]) / 1024, 1),
           "ios": ios,
           "runtime_s": round(main["runtime"] / 1000, 2),
           "p99_us": round(main["clat_ns"]["percentile"].get("99.000000", 0) / 1000)}
    lines = open(prefix + ".stat").read().split("\n")
    cpu = [[int(x) for x in line.split()[1:]] for line in lines if line.startswith("cpu")]
    ctxt = [int(line.split()[1]) for line in lines if line.startswith("ctxt")]
    if len(cpu) == 2 and len(ctxt) == 2 and ios:
        busy = [sum(c[i] for i in (0, 1, 2, 5, 6, 7) if i < len(c)) for c in cpu]
        cpu_us = (busy[1] - busy[0]) * 1e6 / USER_HZ
        res["cpu_us_per_io"] = round(cpu_us / ios, 1)
        res["cs_per_io"] = round((ctxt[1] - ctxt[0]) / ios, 2)
    return res


def collect(out_dir, results_path):
    run = json.load(open(os.path.join(out_dir, "run.json")))
    run["results"] = {}
    # What bench/settle_memory.py did before the runs (bench/vm/run passes it on).
    run["memory_settle"] = json.loads(os.environ.get("BENCH_MEMORY_SETTLE") or "null")
    for path in sorted(glob.glob(os.path.join(out_dir, "*.json"))):
        name = os.path.basename(path)[:-5]
        if name == "run" or "." not in name:
            continue
        side, wl = name.rsplit(".", 1)
        run["results"].setdefault(side, {})[wl] = job_result(path[:-5])
    data = {"runs": []}
    if os.path.exists(results_path):
        data = json.load(open(results_path))
    data["runs"].append(run)
    tmp = results_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.replace(tmp, results_path)


def value(res, side, wl):
    """The number a table shows: IOPS or MiB/s. A SAME_PLAIN side's no-snapshot workloads are
    those of the side it names."""
    r = res.get(side, {}).get(wl)
    if r is None and side in SAME_PLAIN and wl in PLAIN:
        r = res.get(SAME_PLAIN[side], {}).get(wl)
    if r is None:
        return None
    return r["mib_s"] if wl in MIB_S else r["iops"]


def ratio(a, b):
    return None if a is None or not b else a / b


def snapshots(run):
    return run.get("snapshots", 1)


def ratios(res, n=1):
    """Same-run ratios; n is the run's snapshot count (cow64k was taken with n snapshots)."""
    out = {}
    if n > 1:  # issue 18: blksnap shares one copy per chunk, dm-snapshot copies n times
        for side in ("blksnap-ublk", "blksnap-ublk-memory", "blksnap-ublk-crash",
                     "blksnap-ublk-power"):
            for wl, label in (("cow64k", f"cow64k ({n} snapshots)"), ("cow64k-1", "cow64k-1")):
                out[f"{label}: {side} / dm-snapshot"] = ratio(value(res, side, wl),
                                                           value(res, "dm-snapshot", wl))
        for side in ("dm-snapshot", "blksnap-ublk", "blksnap-ublk-memory", "blksnap-ublk-crash",
                     "blksnap-ublk-power"):
            out[f"cow64k {n} snapshots / 1: {side}"] = ratio(value(res, side, "cow64k"),
                                                             value(res, side, "cow64k-1"))
        return out
    for wl in ("randread4k", "randwrite4k", "randwrite64k", "cow64k", "steady64k", "imgread"):
        out[f"{wl}: blksnap-ublk / dm-snapshot"] = ratio(value(res, "blksnap-ublk", wl),
                                                        value(res, "dm-snapshot", wl))
    for side in ("blksnap-ublk-memory", "blksnap-ublk-crash", "blksnap-ublk-power"):
        for wl in ("cow64k", "steady64k", "imgread"):
            out[f"{wl}: {side} / dm-snapshot"] = ratio(value(res, side, wl),
                                                       value(res, "dm-snapshot", wl))
    for wl in ("cow64k", "steady64k", "imgread"):
        out[f"{wl}: blksnap-ublk (default durability) / blksnap-ublk-memory"] = ratio(
            value(res, "blksnap-ublk", wl), value(res, "blksnap-ublk-memory", wl))
    for wl in ("randread4k", "randwrite4k", "randwrite64k", "cow64k", "steady64k", "imgread"):
        out[f"{wl}: blksnap-ublk / blksnap-loop"] = ratio(value(res, "blksnap-ublk", wl),
                                                         value(res, "blksnap-loop", wl))
    for side in ("dm-snapshot", "blksnap-ublk", "blksnap-ublk-memory", "blksnap-ublk-crash",
                 "blksnap-ublk-power", "blksnap-loop"):
        out[f"steady64k / randwrite64k: {side}"] = ratio(value(res, side, "steady64k"),
                                                         value(res, side, "randwrite64k"))
    return out


def fmt(v, digits=0):
    return "-" if v is None else f"{v:.{digits}f}"


def print_table(res, wls, cell, note):
    """One markdown table: a row per side, cell(res, side, wl) per workload."""
    print("| side | " + " | ".join(wls) + " |")
    print("|---" * (len(wls) + 1) + "|")
    for side in [s for s in SIDES if s in res]:
        print(f"| {side} | " + " | ".join(cell(res, side, wl) for wl in wls) + " |")
    print(note)


def speed_cell(res, side, wl):
    if res[side].get(wl) is None:
        return f"= {SAME_PLAIN.get(side, '?')}" if value(res, side, wl) is not None else ""
    return fmt(value(res, side, wl))


def cost_cell(res, side, wl):
    r = res[side].get(wl)
    if r is None or "cpu_us_per_io" not in r:
        return ""
    return f"{r['cpu_us_per_io']:.0f} / {r['cs_per_io']:.1f}"


def print_run(run):
    res = run["results"]
    print(f"run {run['time']}  tree {run.get('tree', '?')}  kernel {run['kernel']}  "
          f"backing {run['backing']}  {run['size_mib']} MiB  {run['runtime_s']} s jobs  "
          f"{snapshots(run)} snapshot(s) for cow64k  "
          + ("no blksnap image devices  " if run.get("images", 1) == 0 else "") +
          f"{run['cpus']} vCPUs" + (f"  blksnapd {run['daemon_args']}" if run.get("daemon_args") else ""))
    wls = [w for w in WORKLOADS if any(w in r for r in res.values())]
    print_table(res, wls, speed_cell, "(IOPS; fill1m, imgread, read1m in MiB/s)" +
                (f"; cow64k with {snapshots(run)} snapshots, cow64k-1 with one"
                 if snapshots(run) > 1 else ""))
    print_table(res, wls, cost_cell, "(whole-VM CPU µs per I/O / context switches per I/O)")


def main():
    if len(sys.argv) >= 4 and sys.argv[1] == "collect":
        collect(sys.argv[2], sys.argv[3])
        return
    if len(sys.argv) < 3 or sys.argv[1] != "table":
        sys.exit(__doc__)
    runs = json.load(open(sys.argv[2]))["runs"]
    if "--last" in sys.argv:
        runs = runs[-int(sys.argv[sys.argv.index("--last") + 1]):]
    all_ratios = []
    for run in runs:
        print_run(run)
        rs = ratios(run["results"], snapshots(run))
        all_ratios.append(rs)
        print("ratios: " + "; ".join(f"{k} {fmt(v, 2)}" for k, v in rs.items() if v is not None))
        print()
    if len(runs) > 1 and len({snapshots(r) for r in runs}) > 1:
        print("runs with different snapshot counts: no medians")
    elif len(runs) > 1:
        med = {}  # side -> workload -> the median, in the shape value() reads
        for side in SIDES:
            for wl in WORKLOADS:
                vs = [value(r["results"], side, wl) for r in runs]
                vs = [v for v in vs if v is not None]
                if vs and wl in runs[0]["results"].get(side, {}):
                    med.setdefault(side, {})[wl] = {"iops": statistics.median(vs),
                                                    "mib_s": statistics.median(vs)}
        wls = [w for w in WORKLOADS if any(w in r for r in med.values())]
        print(f"medians over {len(runs)} runs:")
        print_table(med, wls, speed_cell, "(IOPS; fill1m, imgread, read1m in MiB/s)")
        print()
        print(f"ratios over {len(runs)} runs (median, min-max):")
        for k in all_ratios[0]:
            vs = [r[k] for r in all_ratios if r.get(k) is not None]
            if vs:
                print(f"  {k}: {statistics.median(vs):.2f} ({min(vs):.2f}-{max(vs):.2f})")


if __name__ == "__main__":
    main()
