"""The setups measured: fresh images, the servers that export them and the fronts a workload
drives, plus the hygiene that removes every process, loop device and mount we made.

Design note. Setups (each on a fresh copy of the same prefilled master image):
  NBD over a Unix socket (fio's nbd engine):
    raw           fio io_uring direct=1 on the image file itself (the disk's ceiling, not NBD)
    nbdkit        nbdkit file
    qsd           qemu-storage-daemon, raw file node exported writable
    qsd-cbw       qemu-storage-daemon, copy-before-write filter into a raw fleecing file +
                  snapshot-access node: front = cbw node, image = snapshot-access node
    blksnap       blksnapd, front export, no snapshot
    blksnap-snap  blksnapd, snapshot taken: front export for writes, NAME@ID for image reads
                  (durability crash, the default); blksnap-snap-memory and blksnap-snap-power
                  the same with --durability memory / power (issue 15: the price of durability)
    blksnap-psync blksnapd with BLKSNAP_IO_ENGINE=psync (not a peer: evidence for a fix);
                  blksnap-fuse-psync the same through FUSE+loop
  FUSE + loop (/dev/loopN with direct I/O):
    raw-loop, qsd-fuse, qsd-cbw-fuse, blksnap-fuse (attach --loop),
    blksnap-snap-fuse (attach --loop + snapshot create --loop)
Every server opens the image through the page cache (blksnapd does not use O_DIRECT; nbdkit
and QEMU are run with their defaults, cache.direct=off), so all compete on equal terms.

Life cycle: Lab.start(name, img) returns (processes, loop devices we attached, endpoints);
endpoints has "front" (an NBD URI or a /dev/loopN or the image path) and, for snapshot setups,
"image"; Lab.finish() detaches the loops, stops the processes and unmounts QSD's FUSE files.
Lab.daemon() starts a blksnapd and remembers its control socket for Lab.cli_json() (one daemon
at a time). Process hygiene: every process is started by spawn(), recorded in SCRATCH/pids and
stopped by its pid; cleanup() removes loop devices and mounts under SCRATCH (bench.py
--cleanup-only does just that, for bench/run's shell trap).
"""
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time

from common import GIB, MIB, PIDS, SCRATCH, is_snap, log, run

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


def loop_attach(path, read_only=False):
    cmd = ["losetup", "-f", "--show", "--direct-io=on"] + (["--read-only"] if read_only else [])
    return run(cmd + [path]).stdout.strip()


def fresh_socket(name):
    """SCRATCH/NAME, removed if the previous round left it (the servers will not replace it)."""
    sock = os.path.join(SCRATCH, name)
    if os.path.exists(sock):
        os.unlink(sock)
    return sock


# ---------------------------------------------------------------- the lab


class Lab:
    """Images, servers and setups of one run. size: image bytes; build: blksnap's build dir;
    only: the --only list (setups and/or take,memory) or None for the default set."""

    def __init__(self, build, size, only=None):
        self.size = size
        self.only = only
        self.bin = os.path.join(build, "src")
        self.blksnapd = os.path.join(self.bin, "daemon", "blksnapd")
        self.cli = os.path.join(self.bin, "cli", "blksnap")
        self.notes = []
        self.root = os.geteuid() == 0
        self.master = os.path.join(SCRATCH, "master.img")
        self.ctl = None  # control socket of the last daemon() started

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
        sock = fresh_socket("nbdkit.sock")
        p = spawn(["nbdkit", "--foreground", "--exit-with-parent", "-U", sock, "file",
                   f"file={img}"])
        wait_for(lambda: sock_ready(sock), "nbdkit")
        return p, f"nbd+unix:///?socket={sock}"

    def qsd(self, img, *, cbw=False, fuse=False):
        sock = fresh_socket("qsd.sock")
        cmd = ["qemu-storage-daemon",
               "--blockdev", f"file,node-name=src,filename={img},aio=io_uring"]
        front = "src"
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
        ff, fi = os.path.join(SCRATCH, "qsd-front"), os.path.join(SCRATCH, "qsd-image")
        if fuse:
            open(ff, "w").close()
            cmd += ["--export", f"fuse,id=f0,node-name={front},mountpoint={ff},writable=on"]
            if cbw:
                open(fi, "w").close()
                cmd += ["--export", f"fuse,id=f1,node-name=acc,mountpoint={fi}"]
        else:
            cmd += ["--nbd-server", f"addr.type=unix,addr.path={sock}",
                    "--export", f"nbd,id=e0,node-name={front},name=front,writable=on"]
            if cbw:
                cmd += ["--export", "nbd,id=e1,node-name=acc,name=image"]
        p = spawn(cmd)
        if fuse:
            wait_for(lambda: ff in our_mounts(), "qsd fuse")
            out["front"] = loop_attach(ff)
            if cbw:
                wait_for(lambda: fi in our_mounts(), "qsd fuse")
                out["image"] = loop_attach(fi, read_only=True)
        else:
            wait_for(lambda: sock_ready(sock), "qemu-storage-daemon")
            out["front"] = f"nbd+unix:///front?socket={sock}"
            if cbw:
                out["image"] = f"nbd+unix:///image?socket={sock}"
        return p, out

    def daemon_cmd(self, extra=(), tag="d"):
        """blksnapd's command line with its files in SCRATCH/tag; sets self.ctl."""
        d = os.path.join(SCRATCH, tag)
        os.makedirs(d, exist_ok=True)
        self.ctl = os.path.join(d, "control.sock")
        cmd = [self.blksnapd, "--state-dir", d, "--control", self.ctl,
               "--nbd-unix", os.path.join(d, "nbd.sock"), "--log-level", "warn",
               "--log-file", os.path.join(d, "log")]
        cmd += ["--fuse-dir", os.path.join(d, "fuse")] if self.root else ["--no-fuse"]
        # BENCH_DAEMON_ARGS: extra options for every blksnapd of the run (an A/B of a daemon
        # setting without a rebuild; the same variable as bench/vm's), recorded as daemon_args.
        cmd += shlex.split(os.environ.get("BENCH_DAEMON_ARGS", ""))
        return cmd + list(extra)

    def daemon(self, extra=(), tag="d", env=None):
        """A blksnapd with no devices: a clean stop keeps the device records (and the next start
        would re-attach them), so the records and CBT state of an earlier setup go first."""
        d = os.path.join(SCRATCH, tag)
        for f in (os.path.join(d, "devices.json"), os.path.join(d, "cbt")):
            if os.path.isdir(f):
                shutil.rmtree(f)
            elif os.path.exists(f):
                os.unlink(f)
        p = spawn(self.daemon_cmd(extra, tag), env=dict(os.environ, **(env or {})))
        wait_for(lambda: sock_ready(self.ctl), "blksnapd")
        return p

    def cli_json(self, *args, timeout=120):
        r = run([self.cli, "--control", self.ctl, "--json", *args], timeout=timeout)
        return json.loads(r.stdout.strip().splitlines()[-1])

    def blksnap_setup(self, img, *, snap=False, loop=False, extra=("--chunk-minimum-shift", "16"),
                      env=None, durability=None):
        p = self.daemon(extra, env=env)
        dev = self.cli_json("attach", img, "--name", "dev", *(["--loop"] if loop else []))
        out = {"front": dev["loop"] if loop else dev["nbd"]}
        if snap:
            os.makedirs(os.path.join(SCRATCH, "diff"), exist_ok=True)
            sid = self.cli_json("snapshot", "create", "--storage", os.path.join(SCRATCH, "diff"),
                                "--limit", str(2 * self.size + GIB),
                                *(["--durability", durability] if durability else []),
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
             ("qsd-cbw", "nbd"), ("blksnap-snap", "nbd"), ("blksnap-snap-memory", "nbd")]
        if self.root:
            s += [("raw-loop", "loop"), ("qsd-fuse", "loop"), ("blksnap-fuse", "loop"),
                  ("qsd-cbw-fuse", "loop"), ("blksnap-snap-fuse", "loop")]
        else:
            self.notes.append("not root: FUSE+loop setups skipped")
        # The psync controls equal the default since the io owner's 1da5506; only on request.
        s += [("blksnap-psync", "nbd")] + ([("blksnap-fuse-psync", "loop")] if self.root else [])
        # CBT in memory only (--cbt-in-memory): the control for the cost of durable CBT.
        s += [("blksnap-memcbt", "nbd")]
        # Durability power (a flush per commit round; crash is the default) and crash named
        # explicitly (the default before 2026-12-03 was power): on request.
        s += [("blksnap-snap-power", "nbd"), ("blksnap-snap-crash", "nbd")]
        keep = self.only.split(",") if self.only else [
            x[0] for x in s
            if "-psync" not in x[0] and "-memcbt" not in x[0] and "-crash" not in x[0] and
            "-power" not in x[0]]
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
            extra = ("--chunk-minimum-shift", "16")
            if name.endswith("-memcbt"):
                extra += ("--cbt-in-memory",)
            durability = next((d for d in ("memory", "crash", "power") if name.endswith("-" + d)),
                              None)
            p, out = self.blksnap_setup(img, snap=is_snap(name), loop=fuse, env=env, extra=extra,
                                        durability=durability)
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
