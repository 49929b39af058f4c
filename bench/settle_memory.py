#!/usr/bin/python3
"""bench/settle_memory.py settle|restore: give a benchmark a machine whose memory costs what
memory costs.

Why: this project's machines are Firecracker guests (PVM) with a virtio balloon that reports free
pages to the host (VIRTIO_BALLOON_F_REPORTING). The host then takes those pages back, and the
guest pays a host fault on the first write to each one again: measured 2026-12-02, writing 18 GB
to a tmpfs file ran at ~390 MB/s the first time and at ~5.5 GB/s once every page had been
written and no page was reported any more. Every benchmark here that grows the page cache (an
image copied, a difference storage or QEMU's fleecing file written) paid that toll at random:
whichever setup reached pages the host had taken back ran several times slower (cow64k of one
binary swung between 2.3k and 17k IOPS in consecutive runs). docs/performance.md, "Memory that
costs what memory costs".

settle: unbinds every virtio balloon device that has free page reporting from its driver (the
host stops taking pages back; BENCH_KEEP_BALLOON=1 leaves it bound, and so does a balloon the
host has inflated), records which in
STATE_FILE, then has the kernel populate anonymous mappings as large as the available memory
minus a margin (at most BENCH_SETTLE_MIB when set) and frees them, so that the page cache and the daemons' memory
land on pages the host has already given. Prints one JSON line: what it did and how fast the
first touch ran (the toll the run would have paid), for the results' meta.
restore: binds the recorded devices to their driver again (the machine as it was found).
"""
import json
import mmap
import os
import sys
import time

DRIVER = "/sys/bus/virtio/drivers/virtio_balloon"
DEVICES = "/sys/bus/virtio/devices"
STATE_FILE = "/run/blksnap-bench-balloon"
VIRTIO_ID_BALLOON = 5
VIRTIO_BALLOON_F_REPORTING = 5  # feature bit: free page reporting
MIB = 1 << 20
GIB = 1 << 30
MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0x8000)
MARGIN = 768 * MIB  # left untouched: the kernel and this process need some


def reporting_balloons():
    """Bound virtio balloon devices that report free pages."""
    out = []
    if not os.path.isdir(DRIVER):
        return out
    for dev in sorted(os.listdir(DEVICES)):
        d = os.path.join(DEVICES, dev)
        try:
            with open(os.path.join(d, "device")) as f:
                if int(f.read().strip(), 16) != VIRTIO_ID_BALLOON:
                    continue
            with open(os.path.join(d, "features")) as f:
                features = f.read().strip()
        except OSError:
            continue
        bound = os.path.realpath(os.path.join(d, "driver")) == os.path.realpath(DRIVER)
        if bound and len(features) > VIRTIO_BALLOON_F_REPORTING and \
                features[VIRTIO_BALLOON_F_REPORTING] == "1":
            out.append(dev)
    return out


def balloon_inflated():
    """True when the host has inflated the balloon (unbinding would hand those pages back)."""
    try:
        with open("/proc/vmstat") as f:
            for line in f:
                if line.startswith("nr_balloon_pages "):
                    return int(line.split()[1]) > 0
    except OSError:
        pass
    return False


def mem_available():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def touch(nbytes):
    """Populates anonymous mappings of nbytes in all, 1 GiB each (MAP_POPULATE: the kernel writes
    every page, no fault per page, which costs ~12 us in a PVM guest), held until the last is
    made; returns (seconds, first GiB's MB/s)."""
    maps = []
    t0 = time.monotonic()
    first = None
    try:
        for _ in range(nbytes // GIB):
            maps.append(mmap.mmap(-1, GIB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS |
                                  MAP_POPULATE))
            if first is None:
                first = 1024 / max(1e-9, time.monotonic() - t0)
    finally:
        for m in maps:
            m.close()
    return time.monotonic() - t0, first


def settle():
    result = {"balloon_unbound": [], "touched_mib": 0, "seconds": 0.0, "first_gib_mb_s": None}
    if os.geteuid() != 0:
        result["note"] = "not root: balloon left as it is"
    elif os.environ.get("BENCH_KEEP_BALLOON") == "1":
        result["note"] = "BENCH_KEEP_BALLOON=1: balloon left as it is"
    elif balloon_inflated():
        result["note"] = "balloon inflated by the host: left as it is"
    else:
        for dev in reporting_balloons():
            try:
                with open(os.path.join(DRIVER, "unbind"), "w") as f:
                    f.write(dev)
                result["balloon_unbound"].append(dev)
            except OSError as e:
                result["note"] = f"could not unbind {dev}: {e}"
        if result["balloon_unbound"]:
            with open(STATE_FILE, "a") as f:
                f.write("".join(d + "\n" for d in result["balloon_unbound"]))
    n = (mem_available() - MARGIN) // GIB * GIB
    cap = int(os.environ.get("BENCH_SETTLE_MIB", "0")) * MIB  # 0: no cap
    if cap:
        n = min(n, cap // GIB * GIB)
    if n >= GIB:
        seconds, first = touch(n)
        result.update(touched_mib=n // MIB, seconds=round(seconds, 1),
                      first_gib_mb_s=round(first) if first else None)
    print(json.dumps(result))


def restore():
    try:
        with open(STATE_FILE) as f:
            devs = [d for d in f.read().split() if d]
    except FileNotFoundError:
        return
    failed = []
    for dev in dict.fromkeys(devs):
        try:
            with open(os.path.join(DRIVER, "bind"), "w") as f:
                f.write(dev)
        except OSError as e:
            print(f"settle_memory: could not bind {dev} again: {e}", file=sys.stderr)
            failed.append(dev)
    if failed:  # kept for the next restore
        with open(STATE_FILE, "w") as f:
            f.write("".join(d + "\n" for d in failed))
    else:
        os.unlink(STATE_FILE)


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("settle", "restore"):
        sys.exit("usage: settle_memory.py settle|restore")
    settle() if sys.argv[1] == "settle" else restore()
