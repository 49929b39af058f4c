# Helpers of test_durable_snapshots.py (not a test itself): the kill rounds' writers (64 KiB
# writes through NBD or a loop device, each offset logged once acknowledged), reading images and
# devices through NBD, loop devices and FUSE files, checking bytes with blksnap-pattern, the
# daemon's view of a snapshot (info, list, the restart report), and the storage format's offsets
# for the damaged-storage phase (docs/diff-storage-format.md).
import hashlib
import mmap
import os
import signal
import struct
import subprocess
import sys
import time

MiB = 1 << 20
NOT_FOUND = 3  # src/cli/exit_codes.h
BLOCK = 64 << 10  # the kill rounds' writers' I/O: a new chunk per write right after the take

# argv: NBD URI, log, the round's data file (the whole device in the round's generation), size.
NBD_WRITER = r'''
import nbd, random, sys
uri, log, data_path, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
data = open(data_path, "rb").read()
h = nbd.NBD()
h.connect_uri(uri)
with open(log, "a", buffering=1) as f:
    while True:
        off = random.randrange(0, size // %d) * %d
        h.pwrite(data[off:off + %d], off)
        f.write("%%d\n" %% off)
''' % (BLOCK, BLOCK, BLOCK)

# O_DIRECT needs an aligned buffer: an anonymous mapping is page-aligned.
LOOP_WRITER = r'''
import mmap, os, random, sys
path, log, data_path, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
data = open(data_path, "rb").read()
fd = os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_SYNC)
buf = mmap.mmap(-1, %d)
with open(log, "a", buffering=1) as f:
    while True:
        off = random.randrange(0, size // %d) * %d
        buf.seek(0)
        buf.write(data[off:off + %d])
        try:
            if os.pwrite(fd, buf, off) != %d:
                break
        except OSError:
            break
        f.write("%%d\n" %% off)
''' % (BLOCK, BLOCK, BLOCK, BLOCK, BLOCK)


def read_nbd(uri, size):
    import nbd
    h = nbd.NBD()
    h.connect_uri(uri)
    data = b"".join(h.pread(min(4 * MiB, size - pos), pos) for pos in range(0, size, 4 * MiB))
    h.shutdown()
    return data


def read_path(path, size):
    """Reads a loop device with O_DIRECT (no stale page cache), a FUSE file with plain reads."""
    if not path.startswith("/dev/"):
        with open(path, "rb") as f:
            return f.read(size)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        buf = mmap.mmap(-1, 4 * MiB)
        parts = []
        for pos in range(0, size, 4 * MiB):
            n = os.preadv(fd, [buf], pos)
            parts.append(buf[:n])
        return b"".join(parts)
    finally:
        os.close(fd)


def sha(data):
    return hashlib.sha256(data).hexdigest()


def pattern_on_bytes(d, data, *args):
    """Runs blksnap-pattern verify/inspect on data placed at offset 0 of a scratch file."""
    scratch = os.path.join(d.tmp, "scratch-pattern")
    with open(scratch, "wb") as f:
        f.write(data)
    p = subprocess.run([d.args["pattern"], args[0], scratch] + list(args[1:]),
                       capture_output=True, text=True)
    os.unlink(scratch)
    return p


def verifies(d, data, seq, what, offset=0, length=None):
    """True if [offset, offset+length) of data (placed at offset 0) holds pattern seq."""
    length = len(data) - offset if length is None else length
    p = pattern_on_bytes(d, data, "verify", "--seq", str(seq), "--offset", str(offset),
                         "--length", str(length))
    if p.returncode != 0:
        print("    %s: %s" % (what, p.stderr.strip()))
    return p.returncode == 0


def explain_difference(d, want, got):
    """Prints the pattern runs of the oracle and of what was read (first differing lines)."""
    a = pattern_on_bytes(d, want, "inspect").stdout.splitlines()
    b = pattern_on_bytes(d, got, "inspect").stdout.splitlines()
    for i in range(max(len(a), len(b))):
        x = a[i] if i < len(a) else "-"
        y = b[i] if i < len(b) else "-"
        if x != y:
            print("    at the take: %s | now: %s" % (x, y))
            break


def create(d, storage, limit, names, durability=None, loop=False):
    """Creates and takes a snapshot; returns its id."""
    argv = ["snapshot", "create", "--storage", storage, "--limit", limit]
    if durability:
        argv += ["--durability", durability]
    if loop:
        argv.append("--loop")
    sid = d.cli_json(*argv, *names)["id"]
    d.cli_json("snapshot", "take", sid)
    return sid


def info(d, sid):
    return d.cli_json("snapshot", "info", sid)


def listed(d, sid):
    return [s for s in d.cli_json("snapshot", "list")["snapshots"] if s["id"] == sid]


def device(d, name):
    return [x for x in d.cli_json("devices")["devices"] if x["name"] == name][0]


def restart_report(d):
    return d.cli_json("status")["daemon"]["restart"] or {}


def kill9(d):
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait()
    d.proc = None


def storage_file(d, storage, sid):
    return os.path.join(storage, "blksnap-%s.diff" % sid)


def check_gone(d, t, sid, storage, what):
    """After a destroy or a lost snapshot: not listed, info not found, no storage file."""
    rc, _, err = d.cli("snapshot", "info", sid)
    t.check(not listed(d, sid) and rc == NOT_FOUND,
            "%s: not listed, info: not found (exit %d, %r)" % (what, rc, err.strip()))
    t.check(not os.path.exists(storage_file(d, storage, sid)),
            "%s: %s is gone (dir: %r)" % (what, storage_file(d, storage, sid),
                                          sorted(os.listdir(storage))))


def image_fronts(image):
    """The image's addresses to read through: (what, uri or path)."""
    fronts = [("nbd", image["nbd"])]
    for key in ("fuse", "loop"):
        if image.get(key):
            fronts.append((key, image[key]))
    return fronts


def image_unreadable(image):
    """True if a read of the image's first MiB fails through each of its fronts."""
    for what, address in image_fronts(image):
        try:
            read_front(what, address, 1 * MiB)
            print("    %s read of %s succeeded" % (what, address))
            return False
        except Exception as e:  # nbd.Error, OSError
            print("    %s read: %s" % (what, e))
    return True


def read_front(what, address, size):
    return read_nbd(address, size) if what == "nbd" else read_path(address, size)


def restart_entries(d, key, sid):
    """The entries of restart.KEY ("snapshots" or "snapshots_failed") about snapshot sid."""
    return [x for x in restart_report(d).get(key) or [] if x.get("id") == sid]


def loops_left(d):
    """Loop devices still bound to a file of this daemon's (autoclear may take a moment)."""
    deadline = time.monotonic() + 5
    while True:
        out = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
        left = [x for x in out.splitlines() if d.tmp in x]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def first_log_page(path):
    """The offset of the first chunk-log page, from the header slot with the higher seq
    (docs/diff-storage-format.md: slots at 0 and 8192, seq at +56, log start at +80)."""
    slots = []
    with open(path, "rb") as f:
        for off in (0, 8192):
            f.seek(off)
            b = f.read(8192)
            if b[:16] == b"BLKSNAP-DIFFSTO\0":
                slots.append((struct.unpack_from("<Q", b, 56)[0],
                              struct.unpack_from("<Q", b, 80)[0]))
    return max(slots)[1] if slots else 0


def flip_byte(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


def dev_free(d, name):
    return device(d, name)["snapshot"] is None


def start_writer(script, address, log, data_path, size):
    """Starts a writer; returns once its first write is acknowledged (logged)."""
    writer = subprocess.Popen([sys.executable, "-c", script, address, log, data_path,
                               str(size)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not (os.path.exists(log) and os.path.getsize(log) > 0):
        if writer.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the writer on %s wrote nothing (exit %s)" %
                               (address, writer.poll()))
        time.sleep(0.005)
    return writer


def new_generation(d, seq, size):
    """The whole device in generation seq, in a data file the writer copies blocks from."""
    path = os.path.join(d.tmp, "gen.data")
    if os.path.exists(path):
        os.unlink(path)
    with open(path, "wb") as f:
        f.truncate(size)
    subprocess.run([d.args["pattern"], "write", path, "--seq", str(seq)], check=True)
    return path
