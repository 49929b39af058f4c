# Shared helpers of the CLI integration tests (not a test itself).
#
# Daemon starts the real blksnapd on a temporary state dir with its own control socket, NBD
# socket and (as root with /dev/fuse) FUSE dir, and runs the real `blksnap` tool against it.
# Data goes through the device's front: the FUSE file when there is one, else the NBD export
# (python3-libnbd); blksnap-pattern stamps and verifies the self-checking sector pattern, via a
# scratch file when the front is NBD.
import bisect
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

SKIP = 77


def parse_args(argv):
    args = {}
    it = iter(argv[1:])
    for a in it:
        if a.startswith("--"):
            args[a[2:]] = next(it)
    for key in ("blksnapd", "blksnap", "pattern"):
        if key not in args:
            sys.exit("usage: %s --blksnapd PATH --blksnap PATH --pattern PATH" % argv[0])
    return args


def fuse_possible():
    if os.environ.get("BLKSNAP_TEST_NO_FUSE"):
        return False
    return os.geteuid() == 0 and os.path.exists("/dev/fuse") and os.path.exists("/dev/loop-control")


class Failures:
    """Collects check results; exit status 1 if any failed. A check that cannot run here is
    reported with skip(): printed as SKIP and counted apart, never as a pass."""

    def __init__(self):
        self.failed = 0
        self.passed = 0
        self.skipped = 0

    def check(self, cond, what):
        if cond:
            self.passed += 1
            print("ok   %s" % what, flush=True)
        else:
            self.failed += 1
            print("FAIL %s" % what, flush=True)
        return cond

    def skip(self, what, why):
        self.skipped += 1
        print("SKIP %s (%s)" % (what, why), flush=True)

    def done(self):
        print("%d checks passed, %d failed, %d skipped" % (self.passed, self.failed, self.skipped))
        sys.exit(1 if self.failed else 0)


class Daemon:
    def __init__(self, args, fuse=None, extra=(), tmp=None, env=None):
        self.args = args
        self.env = env  # extra environment variables of blksnapd
        self.tmp = tmp or tempfile.mkdtemp(prefix="blksnap-cli-")
        self.fuse = fuse_possible() if fuse is None else fuse
        self.control = os.path.join(self.tmp, "control.sock")
        self.nbd = os.path.join(self.tmp, "nbd.sock")
        self.fuse_dir = os.path.join(self.tmp, "dev")
        self.state = os.path.join(self.tmp, "state")
        self.log_path = os.path.join(self.tmp, "blksnapd.log")
        self.extra = list(extra)
        self.proc = None

    def command(self):
        cmd = [self.args["blksnapd"], "--state-dir", self.state, "--control", self.control,
               "--nbd-unix", self.nbd, "--log-level", "debug"]
        cmd += ["--fuse-dir", self.fuse_dir] if self.fuse else ["--no-fuse"]
        return cmd + self.extra

    def start(self):
        self.log = open(self.log_path, "ab")
        env = dict(os.environ, **self.env) if self.env else None
        self.proc = subprocess.Popen(self.command(), stdout=self.log, stderr=self.log, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("blksnapd exited with %d:\n%s" % (self.proc.returncode, self.log_text()))
            try:
                s = socket.socket(socket.AF_UNIX)
                s.connect(self.control)
                s.close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("blksnapd did not start:\n" + self.log_text())

    def log_text(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        return rc

    def cleanup(self):
        self.stop()
        subprocess.run(["umount", "-l", self.fuse_dir], stderr=subprocess.DEVNULL)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def cli(self, *argv, control=None):
        """Runs blksnap; returns (rc, stdout, stderr)."""
        cmd = [self.args["blksnap"], "--control", control or self.control] + [str(a) for a in argv]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        return p.returncode, p.stdout, p.stderr

    def cli_json(self, *argv):
        """Runs blksnap --json; returns the parsed object (raises on failure)."""
        rc, out, err = self.cli("--json", *argv)
        if rc != 0:
            raise RuntimeError("blksnap %s failed (%d): %s" % (" ".join(map(str, argv)), rc, err))
        return json.loads(out)

    def state_snapshot(self):
        """Devices and snapshots as the daemon reports them, for unchanged-state checks."""
        devices = self.cli_json("devices")["devices"]
        snaps = self.cli_json("snapshot", "list")["snapshots"]
        for d in devices:
            d.pop("cbt", None)  # CBT numbers are checked separately
        return {"devices": sorted(devices, key=lambda d: d["name"]),
                "snapshots": sorted(snaps, key=lambda s: s["id"])}

    def make_image(self, name, size):
        path = os.path.join(self.tmp, name)
        with open(path, "wb") as f:
            f.truncate(size)
        return path


def taken_snapshot(d, storage, limit, device):
    """Creates and takes a snapshot of one device; returns (id, its snapshot info)."""
    sid = d.cli_json("snapshot", "create", "--storage", storage, "--limit", limit, device)["id"]
    d.cli_json("snapshot", "take", sid)
    return sid, d.cli_json("snapshot", "info", sid)


def wait_state(d, sid, state, timeout=30):
    """Polls snapshot info until the snapshot is in state; returns the last state seen."""
    seen = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = d.cli_json("snapshot", "info", sid)["state"]
        if seen == state:
            break
        time.sleep(0.1)
    return seen


def json_error(out):
    """The {"errno", "message"} of out if out is exactly one {"error": {...}} object, else None."""
    try:
        j = json.loads(out)
    except ValueError:
        return None
    if (out.count("\n") != 1 or not isinstance(j, dict) or list(j) != ["error"]
            or not isinstance(j["error"], dict) or sorted(j["error"]) != ["errno", "message"]
            or not isinstance(j["error"]["errno"], int) or not isinstance(j["error"]["message"], str)):
        return None
    return j["error"]


def nbd_uri_parts(uri):
    return uri


def write_front(d, dev, offset, length, seq):
    """Stamps [offset, offset+length) of a device's front (or image addresses) with seq."""
    pattern = d.args["pattern"]
    if dev.get("fuse"):
        subprocess.run([pattern, "write", dev["fuse"], "--offset", str(offset), "--length",
                        str(length), "--seq", str(seq)], check=True)
        return
    import nbd
    scratch = os.path.join(d.tmp, "scratch-w")
    with open(scratch, "wb") as f:
        f.truncate(offset + length)
    subprocess.run([pattern, "write", scratch, "--offset", str(offset), "--length", str(length),
                    "--seq", str(seq)], check=True)
    with open(scratch, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    h = nbd.NBD()
    h.connect_uri(dev["nbd"])
    for pos in range(0, length, 1 << 20):
        h.pwrite(data[pos:pos + (1 << 20)], offset + pos)
    h.flush()
    h.shutdown()
    os.unlink(scratch)


def verify_front(d, dev, offset, length, seq):
    """True if [offset, offset+length) of the front/image holds pattern seq."""
    pattern = d.args["pattern"]
    if dev.get("fuse"):
        p = subprocess.run([pattern, "verify", dev["fuse"], "--offset", str(offset), "--length",
                            str(length), "--seq", str(seq)], capture_output=True, text=True)
        if p.returncode != 0:
            print("    verify: " + p.stderr.strip())
        return p.returncode == 0
    import nbd
    h = nbd.NBD()
    h.connect_uri(dev["nbd"])
    data = b"".join(h.pread(min(1 << 20, length - pos), offset + pos)
                    for pos in range(0, length, 1 << 20))
    h.shutdown()
    scratch = os.path.join(d.tmp, "scratch-v")
    with open(scratch, "wb") as f:
        f.truncate(offset)
        f.seek(offset)
        f.write(data)
    p = subprocess.run([pattern, "verify", scratch, "--offset", str(offset), "--length",
                        str(length), "--seq", str(seq)], capture_output=True, text=True)
    os.unlink(scratch)
    if p.returncode != 0:
        print("    verify: " + p.stderr.strip())
    return p.returncode == 0


def covers(extents, offset, length):
    """True if the union of [o, o+l) extents covers [offset, offset+length)."""
    pos = offset
    for o, l in sorted(extents):
        if o <= pos < o + l:
            pos = o + l
        if pos >= offset + length:
            return True
    return pos >= offset + length


def uncovered(extents, offsets, length):
    """The offsets o of `offsets` whose [o, o+length) the union of the extents does not cover.
    Merges the extents once, then a binary search per offset (thousands of each per call)."""
    merged = []
    for o, l in sorted(extents):
        if merged and o <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], o + l)
        else:
            merged.append([o, o + l])
    starts = [m[0] for m in merged]
    missing = []
    for off in offsets:
        i = bisect.bisect_right(starts, off) - 1
        if i < 0 or merged[i][1] < off + length:
            missing.append(off)
    return missing


def fuse_test_main(run):
    """Runs run(d, t) against a daemon with the FUSE front; skips (exit SKIP) without FUSE."""
    if not fuse_possible():
        print("SKIP: needs root, /dev/fuse and /dev/loop-control")
        sys.exit(SKIP)
    daemon_test_main(run, fuse=True)


def daemon_test_main(run, fuse=False):
    """Runs run(d, t) against one daemon, reports every check and exits with the verdict."""
    args = parse_args(sys.argv)
    t = Failures()
    d = Daemon(args, fuse=fuse).start()
    try:
        run(d, t)
    except Exception as e:
        t.check(False, "unexpected exception: %r\n%s" % (e, d.log_text()))
    finally:
        d.cleanup()
    t.done()


def attach_written(d, names, size, written):
    """Attaches one image per name and writes `written` bytes of pattern 1 through its front."""
    devs = {}
    for name in names:
        devs[name] = d.cli_json("attach", d.make_image(name + ".img", size), "--name", name)
        write_front(d, devs[name], 0, written, 1)
    return devs


def sha(path, size=None):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = size if size is not None else os.path.getsize(path)
        while left > 0:
            b = f.read(min(left, 4 << 20))
            if not b:
                break
            h.update(b)
            left -= len(b)
    return h.hexdigest()


def tree_sums(root):
    """{relative path: SHA-256} of every regular file under root."""
    sums = {}
    for base, _, files in os.walk(root):
        for name in files:
            path = os.path.join(base, name)
            if os.path.isfile(path) and not os.path.islink(path):
                sums[os.path.relpath(path, root)] = sha(path)
    return sums
