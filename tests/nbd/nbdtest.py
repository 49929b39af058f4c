# Shared helpers for the NBD integration tests (tests/nbd/*.py): start and stop
# blksnap-nbd-testserver, count its fds and threads, read its /proc status (RSS), write/verify
# the sector pattern with blksnap-pattern.
import atexit
import os
import signal
import subprocess
import sys
import tempfile
import time

SKIP = 77


def require_nbd_module():
    try:
        import nbd  # noqa: F401
    except ImportError:
        print("SKIP: python3-libnbd (module nbd) not available")
        sys.exit(SKIP)


class TestServer:
    """Runs blksnap-nbd-testserver with the given export specs in a private temp dir."""

    def __init__(self, binary, exports, extra=(), tmpdir=None, stderr_path=None):
        self.dir = tmpdir or tempfile.mkdtemp(prefix="nbdtest-")
        self.sock = os.path.join(self.dir, "nbd.sock")
        args = [binary, "--unix", self.sock, *extra, *exports]
        self.stderr_path = stderr_path
        err = open(stderr_path, "w") if stderr_path else sys.stderr
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, text=True)
        atexit.register(self.kill)
        self.uris = {}
        for line in self.proc.stdout:
            line = line.strip()
            if line == "READY":
                break
            parts = line.split(" ")
            self.uris[parts[0]] = parts[1:]
        else:
            raise RuntimeError("test server exited before READY: %s" % self.proc.wait())

    def uri(self, name, tcp=False):
        return self.uris[name][1 if tcp else 0]

    def fd_count(self):
        return len(os.listdir("/proc/%d/fd" % self.proc.pid))

    def thread_count(self):
        return len(os.listdir("/proc/%d/task" % self.proc.pid))

    def status(self, field):
        """A numeric field of /proc/PID/status (VmRSS and VmHWM in KiB, Threads)."""
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise KeyError(field)

    def stderr_text(self):
        with open(self.stderr_path) as f:
            return f.read()

    def alive(self):
        return self.proc.poll() is None

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=30)
        assert rc == 0, "test server exited with %d" % rc


def wait_for(pred, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def make_file(path, size):
    with open(path, "wb") as f:
        f.truncate(size)


def pattern(tool, op, path, offset, length, seq):
    """blksnap-pattern write|verify on a file; returns the exit status."""
    return subprocess.run([tool, op, path, "--offset", str(offset), "--length", str(length),
                           "--seq", str(seq)]).returncode


def pattern_bytes(tool, tmpdir, offset, length, seq):
    """The sector pattern for [offset, offset+length) as bytes (stamped for that position)."""
    path = os.path.join(tmpdir, "pattern-%d-%d-%d" % (offset, length, seq))
    make_file(path, offset + length)
    assert pattern(tool, "write", path, offset, length, seq) == 0
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    os.unlink(path)
    return data


FAILED = []


def check(cond, what):
    """Prints "ok - what" or fails. With NBDTEST_KEEP_GOING=1 (to show every check that an old
    build fails) a failure prints "not ok - what" and the script goes on; call finish()."""
    if not cond:
        if os.environ.get("NBDTEST_KEEP_GOING"):
            print("not ok -", what)
            FAILED.append(what)
            return
        raise AssertionError(what)
    print("ok -", what)


def finish():
    if FAILED:
        print("%d checks failed" % len(FAILED))
        sys.exit(1)


def verify_bytes(tool, tmpdir, data, offset, seq):
    """True if data, read from [offset, offset+len), holds pattern seq stamped for that place
    (checked by blksnap-pattern verify on a sparse scratch file)."""
    path = os.path.join(tmpdir, "verify-scratch")
    make_file(path, offset + len(data))
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
    ok = pattern(tool, "verify", path, offset, len(data), seq) == 0
    os.unlink(path)
    return ok
