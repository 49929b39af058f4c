#!/usr/bin/env python3
"""The daemon's edges (issue 13), each against the real blksnapd:

* Whatever a state file holds, the daemon starts, moves the file aside (devices.json.bad) and
  reports what it lost in `status` (restart notes); good entries next to bad ones are kept.
  A clean stop keeps the re-attached device recorded ("clean_stop": true); when its file is
  gone at the next start, it is reported failed (restart "after": "clean-stop") and stays
  recorded through the next clean stop, until `detach` drops it.
* A second blksnapd with another state dir but the same control socket is refused, and the
  first stays reachable with its devices.
* A pidfile path holding a symlink planted by someone else is refused, and the link's target is
  not written.
* SIGHUP reopens the log file (after a rotation) and tears nothing down.
* NBD over TCP without TLS fails the start; --nbd-tcp-insecure allows it on loopback and status
  says so.
"""
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from blksnap_cli_lib import Daemon, Failures, parse_args

MiB = 1 << 20


def free_port():
    """A port nothing listens on, below the kernel's ephemeral range (32768-60999) and below
    scripts/ceph-cluster's (20000-59999): a port the kernel handed out would be free again the
    moment it is closed, and an outgoing connection of a test running beside this one could take
    it before the daemon binds it (seen once with the Ceph tests running alongside)."""
    for _ in range(100):
        port = random.randrange(10000, 20000)
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise RuntimeError("no free port in 10000-19999")


def bad_state_files(args, t):
    cases = {
        "version is a string": '{"version":"1","devices":[]}',
        "a device is a number": '{"version":1,"devices":[5]}',
        "a name is a number": '{"version":1,"devices":[{"name":5,"path":"/x"}]}',
        "an image is a number": '{"version":1,"devices":[],"images":[7]}',
        "truncated": '{"version":1,"devices":[{"name":"a"',
        "binary": "\x00\xff\xfe garbage",
        "devices not a list": '{"version":1,"devices":{"a":1}}',
        "clean_stop not a bool": '{"version":1,"clean_stop":"yes","devices":[]}',
    }
    for label, text in cases.items():
        d = Daemon(args, fuse=False)
        os.makedirs(d.state)
        path = os.path.join(d.state, "devices.json")
        with open(path, "w") as f:
            f.write(text)
        try:
            d.start()
            status = d.cli_json("status")
            restart = status["daemon"]["restart"]
            notes = " ".join(restart["notes"]) if restart else ""
            t.check(restart is not None and notes != "",
                    "state file (%s): the daemon starts and reports it (%s)" % (label, notes[:80]))
            t.check(os.path.exists(path + ".bad"), "state file (%s): kept aside as .bad" % label)
            t.check(d.cli_json("devices")["devices"] == [], "state file (%s): no device" % label)
        except Exception as e:
            t.check(False, "state file (%s): %r" % (label, e))
        finally:
            rc = d.stop()
            t.check(rc == 0, "state file (%s): clean stop (exit %s)" % (label, rc))
            d.cleanup()

    # A good entry next to a bad one is re-attached; the bad one is reported.
    d = Daemon(args, fuse=False)
    os.makedirs(d.state)
    image = d.make_image("good.img", 16 * MiB)
    with open(os.path.join(d.state, "devices.json"), "w") as f:
        json.dump({"version": 1, "pid": 1, "devices": [
            {"name": "good", "path": image, "loop": False, "ublk": False, "ublk_dev_id": -1,
             "size": 16 * MiB, "logical_block_size": 512},
            {"name": 17, "path": image}]}, f)
    try:
        d.start()
        names = [x["name"] for x in d.cli_json("devices")["devices"]]
        t.check(names == ["good"], "mixed state file: the good device is back (%s)" % names)
        notes = d.cli_json("status")["daemon"]["restart"]["notes"]
        t.check(any("name" in n for n in notes), "mixed state file: the bad entry is reported")
        t.check(d.stop() == 0, "clean stop")
        records = os.path.join(d.state, "devices.json")
        with open(records) as f:
            kept = json.load(f)
        t.check(kept.get("clean_stop") is True and
                [x["name"] for x in kept["devices"]] == ["good"],
                "clean stop: good stays recorded, clean_stop (%r)" % kept)
        # Its file gone at the next start: reported failed, kept through another clean stop.
        os.rename(image, image + ".moved")
        d.start()
        restart = d.cli_json("status")["daemon"]["restart"]
        t.check(restart["after"] == "clean-stop" and
                [x["name"] for x in restart["failed"]] == ["good"],
                "after a clean stop, a device whose file is gone is reported failed (%r)" %
                restart)
        t.check(d.stop() == 0, "clean stop with a failed record")
        with open(records) as f:
            kept = json.load(f)
        t.check([x["name"] for x in kept["devices"]] == ["good"],
                "the failed record stays recorded through a clean stop (%r)" % kept)
        os.rename(image + ".moved", image)
        d.start()
        names = [x["name"] for x in d.cli_json("devices")["devices"]]
        t.check(names == ["good"], "its file back: good is attached again (%s)" % names)
        d.cli_json("detach", "good")
        t.check(not os.path.exists(records), "detach drops the last record: no devices.json")
    finally:
        d.stop()
        d.cleanup()


def second_daemon(args, t):
    first = Daemon(args, fuse=False)
    os.makedirs(first.tmp, exist_ok=True)
    pidfile = os.path.join(first.tmp, "blksnapd.pid")
    first.extra = ["--pidfile", pidfile]
    first.start()
    second = Daemon(args, fuse=False, extra=["--pidfile", pidfile])
    second.control = first.control
    try:
        first.cli_json("attach", first.make_image("a.img", 16 * MiB), "--name", "a")
        # start() would see the first daemon's socket answer: run the second one to its end.
        p = subprocess.run(second.command(), capture_output=True, text=True, timeout=60)
        t.check(p.returncode != 0, "a second daemon on the same control socket exits (%d)" %
                p.returncode)
        t.check("another blksnapd is listening" in p.stderr,
                "it says why: " + (p.stderr.strip().splitlines() or ["(nothing)"])[-1][:120])
        devs = [x["name"] for x in first.cli_json("devices")["devices"]]
        t.check(devs == ["a"], "the first daemon still answers with its device (%s)" % devs)
        try:
            with open(pidfile) as f:
                held = f.read().strip()
        except OSError as e:
            held = str(e)
        t.check(held == str(first.proc.pid),
                "the first daemon's pidfile still holds its pid (%s, pid %d)" %
                (held, first.proc.pid))
    finally:
        second.stop()
        second.cleanup()
        first.stop()
        first.cleanup()


def pidfile_symlink(args, t):
    d = Daemon(args, fuse=False)
    os.makedirs(d.tmp, exist_ok=True)
    victim = os.path.join(d.tmp, "victim")
    with open(victim, "w") as f:
        f.write("precious\n")
    link = os.path.join(d.tmp, "blksnapd.pid")
    os.symlink(victim, link)
    d.extra = ["--pidfile", link]
    started = True
    try:
        d.start()
    except RuntimeError:
        started = False
    try:
        t.check(not started, "a symlinked pidfile is refused")
        with open(victim) as f:
            t.check(f.read() == "precious\n", "the symlink's target is untouched")
        t.check("symbolic link" in d.log_text(), "the error names the symlink")
    finally:
        d.stop()
        d.cleanup()


def pidfile_fifo(args, t):
    d = Daemon(args, fuse=False)
    os.makedirs(d.tmp, exist_ok=True)
    fifo = os.path.join(d.tmp, "blksnapd.pid")
    os.mkfifo(fifo)
    d.extra = ["--pidfile", fifo]
    try:
        p = subprocess.run(d.command(), capture_output=True, text=True, timeout=20)
        t.check(p.returncode != 0, "a FIFO at the pidfile's path fails the start (%d)" %
                p.returncode)
        t.check("pidfile" in p.stderr, "it says why: " +
                (p.stderr.strip().splitlines() or ["(nothing)"])[-1][:120])
    except subprocess.TimeoutExpired:
        t.check(False, "a FIFO at the pidfile's path fails the start (it waited for a reader)")
    finally:
        d.cleanup()


def sighup(args, t):
    d = Daemon(args, fuse=False)
    os.makedirs(d.tmp, exist_ok=True)
    log = os.path.join(d.tmp, "file.log")
    d.extra = ["--log-file", log]
    d.start()
    try:
        d.cli_json("attach", d.make_image("a.img", 16 * MiB), "--name", "a")
        os.rename(log, log + ".1")  # logrotate
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not os.path.exists(log) and time.monotonic() < deadline:
            time.sleep(0.05)
        t.check(os.path.exists(log), "SIGHUP reopened the log file")
        t.check(d.alive(), "the daemon is still running after SIGHUP")
        devs = [x["name"] for x in d.cli_json("devices")["devices"]]
        t.check(devs == ["a"], "SIGHUP kept the device (%s)" % devs)
        with open(log) as f:
            t.check("SIGHUP" in f.read(), "the new log file is written")
    finally:
        rc = d.stop()
        t.check(rc == 0, "clean stop after SIGHUP (exit %s)" % rc)
        d.cleanup()


def nbd_tcp_needs_tls(args, t):
    port = free_port()
    d = Daemon(args, fuse=False, extra=["--nbd-tcp", "127.0.0.1:%d" % port])
    started = True
    try:
        d.start()
    except RuntimeError:
        started = False
    t.check(not started, "--nbd-tcp without TLS fails the start")
    t.check("without TLS" in d.log_text(), "it says TLS is needed")
    d.stop()
    d.cleanup()
    d = Daemon(args, fuse=False, extra=["--nbd-tcp", "127.0.0.1:%d" % port, "--nbd-tcp-insecure"])
    try:
        d.start()
        status = d.cli_json("status")["daemon"]
        t.check(status["nbd_tcp_insecure"] is True, "status reports nbd_tcp_insecure")
    except RuntimeError as e:
        t.check(False, "--nbd-tcp-insecure starts: %s" % e)
    finally:
        d.stop()
        d.cleanup()


def losetup(path):
    return subprocess.run(["losetup", "-f", "--show", path], capture_output=True, text=True,
                          check=True).stdout.strip()


def unbind(loop):
    subprocess.run(["losetup", "-d", loop])
    backing = "/sys/block/%s/loop/backing_file" % os.path.basename(loop)
    for _ in range(500):  # the kernel defers the unbind while udev probes the device
        if not os.path.exists(backing):
            return
        time.sleep(0.01)


def originals_behind_the_tracker(args, t):
    """A mounted block device cannot be attached, an attached one cannot be mounted, and an
    outside loop over an attached image file is warned about and blocks snapshots."""
    d = Daemon(args, fuse=False).start()
    mnt = os.path.join(d.tmp, "mnt")
    os.mkdir(mnt)
    loops = []
    try:
        backing = d.make_image("disk.img", 64 * MiB)
        subprocess.run(["mkfs.ext4", "-q", "-F", backing], check=True)
        loop = losetup(backing)
        loops.append(loop)
        subprocess.run(["mount", loop, mnt], check=True)
        rc, out, err = d.cli("--json", "attach", loop, "--name", "mounted")
        t.check(rc != 0 and "EBUSY" in out or "busy" in (out + err).lower(),
                "a mounted block device is refused at attach (exit %d) %s" % (rc, err.strip()[-100:]))
        subprocess.run(["umount", mnt], check=True)
        d.cli_json("attach", loop, "--name", "held")
        m = subprocess.run(["mount", loop, mnt], capture_output=True, text=True)
        t.check(m.returncode != 0, "an attached block device cannot be mounted behind blksnap")
        if m.returncode == 0:
            subprocess.run(["umount", mnt])
        d.cli_json("detach", "held")

        image = d.make_image("file.img", 32 * MiB)
        outside = losetup(image)
        loops.append(outside)
        r = d.cli_json("attach", image, "--name", "file")
        t.check(any(outside in w for w in r.get("warnings", [])),
                "attach warns about the outside loop %s: %r" % (outside, r.get("warnings")))
        storage = os.path.join(d.tmp, "storage")
        os.mkdir(storage)
        rc, out, err = d.cli("--json", "snapshot", "create", "--storage", storage, "--limit",
                             "16M", "file")
        t.check(rc != 0 and outside in err, "a snapshot is refused while it is bound: %s" %
                err.strip()[-120:])
        unbind(outside)
        loops.remove(outside)
        rc, out, err = d.cli("--json", "snapshot", "create", "--storage", storage, "--limit",
                             "16M", "file")
        t.check(rc == 0, "... and allowed once it is gone (exit %d) %s" % (rc, err.strip()[-100:]))
        if rc == 0:
            d.cli_json("snapshot", "destroy", json.loads(out)["id"])
    finally:
        subprocess.run(["umount", mnt], stderr=subprocess.DEVNULL)
        for loop in loops:
            unbind(loop)
        d.stop()
        d.cleanup()


def main():
    args = parse_args(sys.argv)
    if os.geteuid() != 0:
        print("SKIP: needs root")
        sys.exit(77)
    t = Failures()
    for test in (bad_state_files, second_daemon, pidfile_symlink, pidfile_fifo, sighup,
                 nbd_tcp_needs_tls, originals_behind_the_tracker):
        try:
            test(args, t)
        except Exception as e:
            t.check(False, "%s: unexpected exception %r" % (test.__name__, e))
    t.done()


if __name__ == "__main__":
    main()
