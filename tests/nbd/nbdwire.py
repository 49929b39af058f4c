# Raw NBD wire helpers for the hostile-client tests (tests/nbd/hostile_test.py,
# flood_test.py): a client speaking fixed newstyle and transmission by hand over a socket.
import struct

IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
CMD_READ, CMD_WRITE, CMD_DISC = 0, 1, 2


def recv_exact(s, n):
    b = b""
    while len(b) < n:
        chunk = s.recv(n - len(b))
        if not chunk:
            raise EOFError("closed after %d of %d bytes" % (len(b), n))
        b += chunk
    return b


def option(s, opt, data=b""):
    s.sendall(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)


def read_reply(s):
    magic, opt, typ, ln = struct.unpack(">QIII", recv_exact(s, 20))
    assert magic == REPLY_MAGIC, hex(magic)
    return opt, typ, recv_exact(s, ln)


def greet(s):
    hello = recv_exact(s, 18)
    assert hello[:16] == struct.pack(">QQ", 0x4E42444D41474943, IHAVEOPT)
    s.sendall(struct.pack(">I", 3))  # fixed newstyle, no zeroes


def go(s, name=b"d"):
    greet(s)
    option(s, 8)  # structured replies
    assert read_reply(s)[1] == 1
    option(s, 7, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
    while True:
        _, typ, _ = read_reply(s)
        if typ == 1:
            return
        assert typ == 3, hex(typ)


def request(s, typ, cookie, offset, length, flags=0, payload=b""):
    s.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, flags, typ, cookie, offset, length) + payload)


def read_chunks(s):
    chunks = []
    while True:
        magic, flags, typ, cookie, ln = struct.unpack(">IHHQI", recv_exact(s, 20))
        assert magic == 0x668E33EF, hex(magic)
        chunks.append((typ, cookie, recv_exact(s, ln)))
        if flags & 1:
            return chunks
