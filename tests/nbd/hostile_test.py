#!/usr/bin/python3
# Purpose: the server survives hostile and broken clients and leaks nothing.
# (Also: silent clients are dropped at the handshake deadline, idle attached ones are kept.)
# Algorithm: with a raw socket client speaking the NBD wire format by hand: wrong greeting
# magic, every truncation point of a valid handshake, an oversized option (skipped with
# ERR_TOO_BIG, negotiation continues) and a huge one (connection dropped), unknown options,
# requests past the end and unknown commands (spec errors, connection stays usable), a bad
# request magic (connection dropped), a client vanishing in the middle of a large read reply,
# then 1,000 connect/disconnect cycles at assorted points. After each group the server must
# still serve a correct read, and at the end its fd and thread counts must be back to the
# baseline measured after the first clean connection.
import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest  # noqa: E402
from nbdtest import check  # noqa: E402
from nbdwire import IHAVEOPT, go, greet, option, read_chunks, read_reply, recv_exact, request  # noqa: E402

SERVER, PATTERN = sys.argv[1], sys.argv[2]
MiB = 1 << 20

tmp = nbdtest.tempfile.mkdtemp(prefix="nbd-hostile-")
disk = os.path.join(tmp, "disk.img")
nbdtest.make_file(disk, 8 * MiB)
assert nbdtest.pattern(PATTERN, "write", disk, 0, 8 * MiB, 1) == 0
# Silent clients are dropped after 2 s.
srv = nbdtest.TestServer(SERVER, ["d=file:%s" % disk], extra=["--handshake-timeout-ms", "2000"],
                         tmpdir=tmp)


def sock():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(srv.sock)
    return s


def closed(s, timeout=5):
    """True if the server closed s within `timeout` seconds (a timeout means still open)."""
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def healthy(what):
    s = sock()
    go(s)
    request(s, 0, 7, 4096, 4096)
    data = b""
    for typ, cookie, payload in read_chunks(s):
        assert typ == 1 and cookie == 7
        data += payload[8:]
    request(s, 2, 0, 0, 0)
    s.close()
    check(srv.alive() and nbdtest.verify_bytes(PATTERN, tmp, data, 4096, 1),
          "server healthy after " + what)


healthy("start")
time.sleep(1)  # let the server finish tearing down the health check's connection
base_fds, base_threads = srv.fd_count(), srv.thread_count()

# Wrong magic from the client where IHAVEOPT belongs.
s = sock()
greet(s)
s.sendall(b"X" * 16)
check(closed(s), "wrong option magic drops the connection")
s.close()
# Unknown client flags.
s = sock()
recv_exact(s, 18)
s.sendall(struct.pack(">I", 0x100))
check(closed(s), "unknown client flags drop the connection")
s.close()
healthy("wrong magic")

# Truncated handshakes: stop after every byte of a valid GO exchange.
valid = struct.pack(">I", 3) + struct.pack(">QII", IHAVEOPT, 7, 7) + struct.pack(">I", 1) + \
    b"d" + struct.pack(">H", 0)
for n in range(len(valid)):
    s = sock()
    recv_exact(s, 18)
    s.sendall(valid[:n])
    s.close()
healthy("truncated handshakes")

# Oversized option lengths.
s = sock()
greet(s)
option(s, 3, b"\0" * (100 * 1024))
check(read_reply(s)[1] == 0x80000009, "100 KiB option answered ERR_TOO_BIG")
option(s, 77)
check(read_reply(s)[1] == 0x80000001, "unknown option answered ERR_UNSUP, negotiation goes on")
s.sendall(struct.pack(">QII", IHAVEOPT, 3, 0xFFFFFFF0))
check(closed(s), "4 GiB option length drops the connection")
s.close()
healthy("oversized options")

# Bad requests in the transmission phase.
s = sock()
go(s)
request(s, 0, 1, 8 * MiB - 512, 4096)
(typ, cookie, payload), = read_chunks(s)
check(typ == 0x8001 and struct.unpack(">I", payload[:4])[0] == 22, "read past end: EINVAL")
request(s, 1, 2, 8 * MiB, 512, payload=b"\0" * 512)
(typ, cookie, payload), = read_chunks(s)
check(typ == 0x8001 and struct.unpack(">I", payload[:4])[0] == 28, "write past end: ENOSPC")
request(s, 0, 3, 2**63, 1)
(typ, cookie, payload), = read_chunks(s)
check(struct.unpack(">I", payload[:4])[0] == 22, "offset 2^63: EINVAL")
request(s, 99, 4, 0, 0)
(typ, cookie, payload), = read_chunks(s)
check(typ == 0x8001 and cookie == 4 and struct.unpack(">I", payload[:4])[0] == 22,
      "unknown command: EINVAL")
request(s, 7, 5, 0, 512)
(typ, cookie, payload), = read_chunks(s)
check(struct.unpack(">I", payload[:4])[0] == 22, "block status without contexts: EINVAL")
request(s, 0, 6, 0, 512, flags=0x8000)
(typ, cookie, payload), = read_chunks(s)
check(struct.unpack(">I", payload[:4])[0] == 22, "unknown command flag: EINVAL")
request(s, 0, 7, 0, 512)
check(read_chunks(s)[0][0] == 1, "connection still usable after errors")
s.sendall(b"\xde\xad\xbe\xef" + b"\0" * 24)
check(closed(s), "bad request magic drops the connection")
s.close()
healthy("bad requests")

# Client disconnecting in the middle of replies (large reads, many in flight).
for i in range(20):
    s = sock()
    go(s)
    for k in range(16):
        request(s, 0, k, 0, 4 * MiB, flags=4)  # DF: one 4 MiB data chunk each
    recv_exact(s, 1000)
    s.close()
healthy("disconnects mid-reply")

# A client that connects and says nothing is dropped at the handshake deadline; one that is
# idle in the transmission phase is not.
silent = sock()
recv_exact(silent, 18)
idle = sock()
go(idle)
time.sleep(3)
check(closed(silent, 0.5), "silent client dropped after the handshake timeout")
request(idle, 0, 1, 0, 512)
check(read_chunks(idle)[0][0] == 1, "idle client in transmission phase kept")
silent.close()
idle.close()
healthy("handshake timeout")

# 1,000 connect/disconnect cycles, cut at different points.
for i in range(1000):
    s = sock()
    mode = i % 4
    if mode >= 1:
        recv_exact(s, 18)
    if mode >= 2:
        s.sendall(struct.pack(">I", 3))
    if mode == 3:
        option(s, 2)  # ABORT
        read_reply(s)
    s.close()
healthy("1000 connect/disconnect cycles")

check(nbdtest.wait_for(lambda: srv.fd_count() <= base_fds),
      "no fd leak (%d fds now, %d at start)" % (srv.fd_count(), base_fds))
check(nbdtest.wait_for(lambda: srv.thread_count() <= base_threads),
      "no thread leak (%d now, %d at start)" % (srv.thread_count(), base_threads))
srv.stop()
print("PASS")
