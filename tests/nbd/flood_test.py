#!/usr/bin/python3
# Purpose: a hostile local client cannot exhaust the NBD server's memory, threads or
# connections, a stalled request pins nothing for long, and only root reaches the Unix socket
# (issue 13, "no one else gets in"); a normal client keeps working during and after each attack.
# Algorithm: blksnap-nbd-testserver with the default limits (64 connections + 8 reserved for
# root on the Unix socket, 8 workers per connection on demand, 64 extra workers, 64 MiB in
# flight per connection, 256 MiB in total) but a 1 s request timeout, serving an 8 MiB file
# over its Unix socket (started under umask 0) and a plaintext loopback TCP listener
# (--tcp-insecure, for the flood). Raw-socket attackers, figures from /proc/PID/status:
#  1. 30 connections each announce a 32 MiB write, send 100 bytes and stall: peak RSS
#     (VmHWM, reset through /proc/PID/clear_refs before each phase) grows by < 64 MiB
#     (unbounded server: ~1 GB); threads stay < base + 66 (one per attacker, nbdcopy's 4
#     connections with up to 8 workers each); nbdcopy copies and verifies the export
#     meanwhile; all 30 are closed within 8 s (1 s each, 8 at a time as write claims free up).
#  2. The same, but each sends 31 MiB of its 32: VmHWM grows by < 256 MiB (the total budget)
#     + 30 x 1.2 MiB + 32 MiB; nbdcopy works meanwhile.
#  3. 500 TCP connections held open: at most 64 greeted, the rest closed at once, one
#     "refusing" log line; threads < base + 98 (64 + nbdcopy's 4 x 8); root's nbdcopy over
#     the Unix socket works during the flood (reserved connections) and after it.
#  4. Half a request header, and a client that never reads its replies: each connection is
#     closed within 5 s.
#  5. uid nobody cannot connect to the Unix socket (run as root only).
# At the end the thread count is back to the baseline.
import os
import socket
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest  # noqa: E402
from nbdtest import check  # noqa: E402
from nbdwire import CMD_READ, CMD_WRITE, REQUEST_MAGIC, go, recv_exact, request  # noqa: E402

SERVER, PATTERN = sys.argv[1], sys.argv[2]
for tool in ("nbdcopy",):
    if subprocess.run(["sh", "-c", "command -v " + tool], stdout=subprocess.DEVNULL).returncode:
        print("SKIP: %s missing" % tool)
        sys.exit(nbdtest.SKIP)
MiB = 1 << 20
t_start = time.time()

tmp = nbdtest.tempfile.mkdtemp(prefix="nbd-flood-")
os.chmod(tmp, 0o755)  # so that only the socket's own mode keeps other users out
disk = os.path.join(tmp, "disk.img")
nbdtest.make_file(disk, 8 * MiB)
assert nbdtest.pattern(PATTERN, "write", disk, 0, 8 * MiB, 1) == 0
old_umask = os.umask(0)  # the server must not depend on the umask for its socket's mode
srv = nbdtest.TestServer(SERVER, ["d=file:%s" % disk], tmpdir=tmp,
                         extra=["--tcp", "127.0.0.1:0", "--tcp-insecure",
                                "--request-timeout-ms", "1000", *os.environ.get("NBDTEST_SERVER_ARGS", "").split(),
                                "--handshake-timeout-ms", "10000"],
                         stderr_path=os.path.join(tmp, "server.err"))
os.umask(old_umask)
tcp_port = int(srv.uri("d", tcp=True).rsplit(":", 1)[1].split("/")[0])


def unix_sock():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(srv.sock)
    return s


def closed_within(s, seconds, drain_limit=64 * MiB):
    """True if the server closes s within `seconds` (reads and drops what it sends first)."""
    deadline = time.time() + seconds
    got = 0
    while time.time() < deadline and got < drain_limit:
        s.settimeout(max(0.01, deadline - time.time()))
        try:
            b = s.recv(1 << 20)
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False
        if not b:
            return True
        got += len(b)
    return False


def nbdcopy_ok(what):
    out = os.path.join(tmp, "copy.img")
    if os.path.exists(out):
        os.unlink(out)
    r = subprocess.run(["timeout", "30", "nbdcopy", srv.uri("d"), out],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ok = r.returncode == 0 and nbdtest.pattern(PATTERN, "verify", out, 0, 8 * MiB, 1) == 0
    check(ok, "nbdcopy copies the export correctly " + what + (" " + r.stderr if not ok else ""))


class Sampler:
    """Samples the server's thread count every 10 ms."""

    def __init__(self):
        self.peak = 0
        self.running = True
        self.t = threading.Thread(target=self.run)
        self.t.start()

    def run(self):
        while self.running:
            try:
                self.peak = max(self.peak, srv.status("Threads"))
            except (OSError, KeyError):
                pass
            time.sleep(0.01)

    def stop(self):
        self.running = False
        self.t.join()
        return self.peak


nbdcopy_ok("before the attacks")
time.sleep(0.5)
base_threads = srv.thread_count()
print("baseline: %d threads, VmRSS %d KiB, VmHWM %d KiB" %
      (base_threads, srv.status("VmRSS"), srv.status("VmHWM")))


def stalled_writers(n, send_bytes, what, rss_bound_kib, thread_bound):
    with open("/proc/%d/clear_refs" % srv.proc.pid, "w") as f:
        f.write("5")  # VmHWM := VmRSS, so each phase measures its own peak
    rss_before = srv.status("VmRSS")
    sampler = Sampler()
    socks = []
    for i in range(n):
        s = unix_sock()
        go(s)
        s.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_WRITE, i, 0, 32 * MiB))
        socks.append(s)
    payload = b"\xab" * send_bytes

    def feed(s):
        try:
            s.settimeout(10)
            s.sendall(payload)
        except OSError:
            pass  # closed by the server (stalled or no budget in time)

    feeders = [threading.Thread(target=feed, args=(s,)) for s in socks]
    for t in feeders:
        t.start()
    time.sleep(0.3)
    nbdcopy_ok("during " + what)
    t0 = time.time()
    closed = sum(closed_within(s, max(0.1, 8 - (time.time() - t0))) for s in socks)
    elapsed = time.time() - t0
    for t in feeders:
        t.join()
    for s in socks:
        s.close()
    peak_threads = sampler.stop()
    grew = srv.status("VmHWM") - rss_before
    print("%s: VmHWM grew by %d KiB, peak %d threads (baseline %d), closed %d of %d in %.1f s"
          % (what, grew, peak_threads, base_threads, closed, n, elapsed))
    check(grew < rss_bound_kib, "%s: RSS growth %d KiB < %d KiB" % (what, grew, rss_bound_kib))
    check(peak_threads < base_threads + thread_bound,
          "%s: peak threads %d < %d" % (what, peak_threads, base_threads + thread_bound))
    check(closed == n, "%s: every stalled connection closed by the request timeout" % what)


# 1. Announce 32 MiB, send 100 bytes, stall.
# Threads: one per attacker plus nbdcopy's 4 connections with up to 8 workers each.
stalled_writers(30, 100, "30 stalled 32 MiB writes", 64 * 1024, 30 + 4 * 8 + 4)
# 2. Send 31 MiB of the 32 (real memory, bounded by the total in-flight budget).
stalled_writers(30, 31 * MiB, "30 writes stalled after 31 MiB", (256 + 36 + 32) * 1024,
                30 + 4 * 8 + 4)
nbdcopy_ok("after the write attacks")

# 3. 500 connections over TCP, held open.
sampler = Sampler()
flood = []
for i in range(500):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(("127.0.0.1", tcp_port))
    flood.append(s)
greeted = refused = 0
for s in flood:
    try:
        recv_exact(s, 18)
        greeted += 1
    except (EOFError, ConnectionResetError):
        refused += 1
    except socket.timeout:
        pass
nbdcopy_ok("during a flood of 500 TCP connections (root's reserve on the Unix socket)")
flood_threads = sampler.stop()
print("500 connections: %d greeted, %d refused, peak %d threads" %
      (greeted, refused, flood_threads))
check(greeted <= 64 and refused >= 436, "500 connections: %d greeted (<= 64), %d refused"
      % (greeted, refused))
# Threads: one per admitted connection plus nbdcopy's 4 with up to 8 workers each.
flood_bound = base_threads + 64 + 4 * 8 + 2
check(flood_threads < flood_bound, "500 connections: peak threads %d < %d"
      % (flood_threads, flood_bound))
for s in flood:
    s.close()
check(nbdtest.wait_for(lambda: srv.thread_count() <= base_threads),
      "threads back to the baseline after the flood")
nbdcopy_ok("after the flood")
refusals = srv.stderr_text().count("refusing new ones")
check(refusals == 1, "one log line for the burst of refusals (%d)" % refusals)

# 4. Stalls: half a request header; replies never read.
s = unix_sock()
go(s)
s.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_READ, 1, 0, 4096)[:10])
check(closed_within(s, 5), "half a request header: closed within 5 s")
s.close()
s = unix_sock()
go(s)
for k in range(64):
    request(s, CMD_READ, k, 0, 4 * MiB, flags=4)
time.sleep(3)  # the server fills the socket buffer, then its send times out
check(closed_within(s, 5), "replies never read: closed within 5 s")
s.close()

# 5. Other users cannot connect to the Unix socket, whatever the umask.
if os.geteuid() == 0:
    r = subprocess.run([sys.executable, "-c",
                        "import os, socket, sys\n"
                        "os.setgid(65534); os.setuid(65534)\n"
                        "s = socket.socket(socket.AF_UNIX)\n"
                        "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n"
                        "    sys.exit(3)\n", srv.sock])
    check(r.returncode == 3, "uid nobody cannot connect to the Unix socket (exit %d)"
          % r.returncode)

check(nbdtest.wait_for(lambda: srv.thread_count() <= base_threads),
      "no thread leak (%d now, %d at start)" % (srv.thread_count(), base_threads))
srv.stop()
nbdtest.finish()
print("PASS (%.1f s)" % (time.time() - t_start))
