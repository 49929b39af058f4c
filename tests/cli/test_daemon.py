#!/usr/bin/python3
# Purpose: blksnapd's life cycle: a second daemon on the same state dir refuses to start with
# a clear message; the control socket is private (0600); tunables from the command line and
# from a config file reach the engine; bad options are usage errors; --daemonize returns once
# the daemon is ready and writes the pidfile; SIGTERM destroys snapshots, removes fronts, loop
# devices and the FUSE mount, removes the socket and pidfile, and exits 0, keeping the device
# records: the next start attaches the device again with its fronts and its CBT generation.
#
# Algorithm: start daemon 1; start a second on the same state dir (different sockets) and
# expect exit 1 naming the running pid; start daemons with bad options and expect exit 2;
# start one with --tracking-block-minimum-shift 12 and one with a config file setting it to
# 13 and read the CBT block size of an attached 16 MiB device; start one with --daemonize
# --pidfile, attach (with --loop as root), create + take a snapshot, SIGTERM it and check
# that the pidfile, socket, loop devices and FUSE mount are gone and devices.json says
# "clean_stop"; start it again: the device is back (restored, a loop device again, the same
# CBT generation, recovered_from "clean-stop"), the snapshot is not.
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from blksnap_cli_lib import Daemon, Failures, fuse_possible, parse_args

MiB = 1 << 20


def main():
    args = parse_args(sys.argv)
    t = Failures()
    daemons = []
    try:
        run(args, t, daemons)
    except Exception as e:
        t.check(False, "unexpected exception: %r\n%s" % (e, "\n".join(d.log_text() for d in daemons)))
    finally:
        for d in daemons:
            d.cleanup()
    t.done()


def run(args, t, daemons):
    d1 = Daemon(args, fuse=False).start()
    daemons.append(d1)
    second = subprocess.run([args["blksnapd"], "--state-dir", d1.state, "--control",
                             os.path.join(d1.tmp, "other.sock"), "--no-nbd", "--no-fuse"],
                            capture_output=True, text=True, timeout=60)
    t.check(second.returncode == 1 and "already running" in second.stderr
            and str(d1.proc.pid) in second.stderr,
            "second daemon on the same state dir refused: %r" % second.stderr.strip()[-200:])
    t.check(d1.alive() and d1.cli("devices")[0] == 0, "first daemon unaffected")
    t.check(oct(os.stat(d1.control).st_mode & 0o777) == oct(0o600), "control socket is 0600")

    for bad, what in ((["--chunk-minimum-shift", "abc"], "non-numeric tunable"),
                      (["--diff-storage-minimum", "12X"], "bad size tunable"),
                      (["--frobnicate"], "unknown option"),
                      (["--log-level", "loud"], "bad log level")):
        p = subprocess.run([args["blksnapd"], "--state-dir", os.path.join(d1.tmp, "s2"), "--control",
                            os.path.join(d1.tmp, "s2.sock"), "--no-nbd", "--no-fuse"] + bad,
                           capture_output=True, text=True, timeout=60)
        t.check(p.returncode == 2 and p.stderr.startswith("blksnapd: error: "),
                "%s -> usage error: %r" % (what, p.stderr.strip()[:160]))
    t.check(d1.stop() == 0, "daemon 1 exits 0 on SIGTERM")
    t.check(not os.path.exists(d1.control), "control socket removed at exit")

    # Tunables on the command line and in a config file.
    d2 = Daemon(args, fuse=False, extra=["--tracking-block-minimum-shift", "12",
                                         "--tracking-block-maximum-count", "1M"]).start()
    daemons.append(d2)
    d2.cli_json("attach", d2.make_image("t.img", 16 * MiB), "--name", "t")
    t.check(d2.cli_json("cbt", "info", "t")["block_size"] == 4096, "--tracking-block-minimum-shift 12")
    d2.stop()
    conf = os.path.join(d2.tmp, "blksnapd.conf")
    with open(conf, "w") as f:
        f.write("# blksnapd test config\ntracking-block-minimum-shift = 13\n"
                "diff-storage-minimum = 64M\nlog-level = debug\n")
    d3 = Daemon(args, fuse=False, extra=["--config", conf]).start()
    daemons.append(d3)
    d3.cli_json("attach", d3.make_image("t.img", 16 * MiB), "--name", "t")
    t.check(d3.cli_json("cbt", "info", "t")["block_size"] == 8192, "config file sets a tunable")
    d3.stop()

    # --daemonize, --pidfile and a clean SIGTERM with everything in use.
    d4 = Daemon(args)
    daemons.append(d4)
    pidfile = os.path.join(d4.tmp, "blksnapd.pid")
    cmd = d4.command() + ["--daemonize", "--pidfile", pidfile, "--log-file", d4.log_path]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    t.check(p.returncode == 0, "--daemonize returns 0 once ready (%r)" % p.stderr)
    t.check(os.path.exists(pidfile), "pidfile written")
    pid = int(open(pidfile).read())
    t.check(d4.cli("version")[0] == 0, "daemonized daemon answers at once")
    loop = fuse_possible()
    attach = ["attach", d4.make_image("v.img", 32 * MiB), "--name", "v"] + (["--loop"] if loop else [])
    dev = d4.cli_json(*attach)
    generation = d4.cli_json("cbt", "info", "v")["generation_id"]
    storage = os.path.join(d4.tmp, "storage")
    os.mkdir(storage)
    # A memory snapshot: SIGTERM destroys it (durable ones: test_durable_snapshots.py).
    sid = d4.cli_json("snapshot", "create", "--storage", storage, "--limit", "16M",
                      "--durability", "memory", *(["--loop"] if loop else []), "v")["id"]
    d4.cli_json("snapshot", "take", sid)
    img = d4.cli_json("snapshot", "info", sid)["devices"][0]["image"]
    loops = [x for x in (dev.get("loop"), img.get("loop")) if x]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and os.path.exists("/proc/%d" % pid):
        time.sleep(0.05)
    t.check(not os.path.exists("/proc/%d" % pid), "daemon exits on SIGTERM")
    t.check(not os.path.exists(pidfile), "pidfile removed")
    t.check(not os.path.exists(d4.control), "control socket removed")
    log = d4.log_text()
    t.check("destroyed snapshot " + sid in log, "shutdown destroyed the snapshot")
    t.check("blksnapd stopped" in log, "shutdown completed")
    leftovers = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    t.check(d4.fuse_dir not in leftovers, "no loop device left on the FUSE dir")
    with open("/proc/self/mountinfo") as f:
        t.check(d4.fuse_dir not in f.read(), "FUSE dir unmounted")
    if loop:
        t.check(len(loops) == 2, "loop devices were in use (front and image)")
    # Storage files are unnamed temporary files: nothing left behind.
    t.check(os.listdir(storage) == [], "no storage file left in the storage dir")

    # The device stays recorded; the next start (an upgrade, `systemctl restart`) brings it back.
    with open(os.path.join(d4.state, "devices.json")) as f:
        records = json.load(f)
    t.check(records.get("clean_stop") is True and [x["name"] for x in records["devices"]] == ["v"]
            and records["devices"][0]["loop"] == loop and records["images"] == [],
            "SIGTERM keeps the device records, marked clean_stop (%r)" % records)
    d4.start()
    back = d4.cli_json("devices")["devices"]
    t.check([x["name"] for x in back] == ["v"] and back[0]["restored"] is True,
            "restart: v is attached again by itself")
    if back:
        t.check(back[0]["nbd"].startswith("nbd+unix://") and
                (not loop or back[0].get("loop", "").startswith("/dev/loop")),
                "... with its fronts (%s, loop %s)" % (back[0]["nbd"], back[0].get("loop")))
        cbt = back[0]["cbt"]
        t.check(cbt["generation_id"] == generation and cbt["recovered_from"] == "clean-stop",
                "... the same CBT generation, recovered_from %r" % cbt["recovered_from"])
    t.check(d4.cli_json("snapshot", "list")["snapshots"] == [], "... the snapshot is gone")
    t.check(d4.cli_json("status")["daemon"]["restart"]["after"] == "clean-stop",
            "status: restart after a clean stop")


if __name__ == "__main__":
    main()
