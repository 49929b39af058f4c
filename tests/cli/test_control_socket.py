#!/usr/bin/python3
# Purpose: the control socket survives hostile and heavy use: garbage, half requests, deeply
# nested JSON, unknown methods and versions, a 10 MB line, idle and slow clients, a long
# wait-event, and 200 concurrent clients; every request gets an answer and the daemon keeps
# serving (checked with the CLI after every step).
#
# Algorithm: start blksnapd with one attached device and one created snapshot. Speak raw
# newline-delimited JSON on the socket: each hostile line must be answered with
# {"error": {"errno", "message"}} (the connection stays usable, except after the oversized
# line, which is answered with EMSGSIZE and closed). Keep an idle client, a half-request
# client and a client blocked in wait-event (timeout 60 s) open while 200 threads each connect
# and run several requests; all answers must be right. Finally check the socket is mode 0600
# and that the blocked wait-event ends with an error when the snapshot is destroyed.
import json
import os
import socket
import stat
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from blksnap_cli_lib import daemon_test_main

MiB = 1 << 20


class Conn:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(60)
        self.s.connect(path)
        self.buf = b""

    def send(self, data):
        self.s.sendall(data)

    def line(self):
        while b"\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def call(self, method, params=None, id=1):
        req = {"v": 1, "id": id, "method": method}
        if params is not None:
            req["params"] = params
        self.send((json.dumps(req) + "\n").encode())
        return self.line()

    def close(self):
        self.s.close()


def main():
    daemon_test_main(run)


def healthy(d, t, what):
    rc, out, err = d.cli("--json", "devices")
    t.check(rc == 0 and d.alive(), "daemon serves after %s" % what)


def is_error(ans, errno_=None):
    return (isinstance(ans, dict) and "error" in ans and isinstance(ans["error"].get("errno"), int)
            and isinstance(ans["error"].get("message"), str)
            and (errno_ is None or ans["error"]["errno"] == errno_))


def run(d, t):
    mode = stat.S_IMODE(os.stat(d.control).st_mode)
    t.check(mode == 0o600, "control socket mode is 0600 (got %o)" % mode)
    path = d.make_image("a.img", 16 * MiB)
    d.cli_json("attach", path, "--name", "a")
    storage = os.path.join(d.tmp, "storage")
    os.mkdir(storage)
    sid = d.cli_json("snapshot", "create", "--storage", storage, "--limit", "16M", "a")["id"]

    c = Conn(d.control)
    ans = c.call("version")
    t.check(ans.get("id") == 1 and ans.get("v") == 1 and "version" in ans.get("result", {}),
            "a well-formed request gets its result")
    hostile = [
        (b"garbage\n", "plain garbage"),
        (b"\x00\xff\xfe\x01\n", "binary bytes"),
        (b"[1,2,3]\n", "a JSON array"),
        (b'{"v":1,"id":2}\n', "no method"),
        (b'{"v":1,"id":3,"method":42}\n', "method not a string"),
        (b'{"v":1,"id":4,"method":"no-such-method"}\n', "unknown method"),
        (b'{"v":99,"id":5,"method":"version"}\n', "unknown protocol version"),
        (b'{"v":1,"id":6,"method":"attach","params":[]}\n', "params not an object"),
        (b'{"v":1,"id":7,"method":"attach","params":{"path":5}}\n', "wrong parameter type"),
        (b'{"v":1,"id":8,"method":"cbt-info","params":{}}\n', "missing parameter"),
        (b"[" * 100000 + b"]" * 100000 + b"\n", "100000 nested arrays"),
        (b'{"v":1,"id":9,"method":"cbt-read","params":{"name":"a","offset":18446744073709551615}}\n',
         "cbt-read past the map"),
        (b'{"v":1,"id":10,"method":"snapshot-wait-event","params":{"id":"x","timeout_ms":1}}\n',
         "bad snapshot id"),
        (b'{"v":1,"id":11,"method":"cbt-mark-dirty","params":{"name":"a","ranges":[[0,-1]]}}\n',
         "negative range length"),
        (b'{"v":1,"id":12,"method":"cbt-changes","params":{"name":"a","since":1e300}}\n',
         "huge float parameter"),
        (b'{"v":1,"id":13,"method":"version"', "an unterminated request (completed below)"),
    ]
    for data, what in hostile[:-1]:
        c.send(data)
        ans = c.line()
        t.check(is_error(ans), "%s -> error answer %s" % (what, json.dumps(ans)[:120] if ans else ans))
    # A request split over several writes is still one request.
    c.send(b'{"v":1,"id":14,')
    c.send(b'"method":"ver')
    c.send(b'sion"}\n')
    ans = c.line()
    t.check(ans and ans.get("id") == 14 and "result" in ans, "a request in three pieces")
    c.send(b'\n\n  \n{"v":1,"id":15,"method":"version"}\r\n')
    ans = c.line()
    t.check(ans and ans.get("id") == 15, "blank lines are skipped, CRLF accepted")
    t.check(c.call("devices", id=16).get("id") == 16, "connection still usable after hostile lines")
    c.close()
    healthy(d, t, "hostile lines")

    # Half request, then hang up.
    h = Conn(d.control)
    h.send(b'{"v":1,"id":1,"method":"sna')
    h.close()
    healthy(d, t, "a half request and hang-up")

    # 10 MB line: EMSGSIZE, then closed.
    big = Conn(d.control)
    payload = b'{"v":1,"id":1,"method":"version","params":{"x":"' + b"x" * (10 * MiB) + b'"}}\n'
    sender = threading.Thread(target=lambda: _send_quiet(big, payload))
    sender.start()
    ans = big.line()
    sender.join()
    t.check(is_error(ans, 90), "10 MB line -> EMSGSIZE (%s)" % (json.dumps(ans)[:120] if ans else ans))
    try:
        rest = big.line()
    except OSError:
        rest = None
    t.check(rest is None, "connection closed after the oversized line")
    big.close()
    healthy(d, t, "a 10 MB line")

    # Idle client, half-request client and a blocked wait-event stay open during the load.
    idle = Conn(d.control)
    half = Conn(d.control)
    half.send(b'{"v":1,"id":1,"meth')
    waiter = Conn(d.control)
    waiter.send((json.dumps({"v": 1, "id": 77, "method": "snapshot-wait-event",
                             "params": {"id": sid, "timeout_ms": 60000}}) + "\n").encode())

    results = []
    lock = threading.Lock()

    def client(i):
        ok = 0
        try:
            cc = Conn(d.control)
            for k in range(5):
                ans = cc.call("cbt-info" if k % 2 else "version",
                              {"name": "a"} if k % 2 else None, id=i * 10 + k)
                if ans and ans.get("id") == i * 10 + k and "result" in ans:
                    ok += 1
            cc.close()
        except OSError as e:
            print("client %d: %r" % (i, e))
        with lock:
            results.append(ok)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(200)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    t.check(len(results) == 200 and all(r == 5 for r in results),
            "200 concurrent clients x 5 requests all answered (%d/1000)" % sum(results))
    t.check(idle.call("version", id=5).get("id") == 5, "the idle client is still served")

    # Destroying the snapshot ends the blocked wait-event with an error.
    d.cli_json("snapshot", "destroy", sid)
    ans = waiter.line()
    t.check(ans and ans.get("id") == 77 and is_error(ans), "blocked wait-event ends with an error on destroy")
    for x in (idle, half, waiter):
        x.close()
    healthy(d, t, "200 clients")
    d.cli_json("detach", "a")


def _send_quiet(conn, data):
    try:
        conn.send(data)
    except OSError:
        pass  # the daemon closes after answering; the rest of the line is refused


if __name__ == "__main__":
    main()
