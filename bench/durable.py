"""The cost of durable change tracking (issue 14, "Speed"): durable CBT (the default) against the
same daemon with --cbt-in-memory, side by side in one run, and a daemon restart with many
attached devices.

Design note. Two sections, each a method of Durable:
  compare()  one round: on a fresh copy of the master image, for both configurations (the
             order alternates between rounds, slices and passes, so drift on this shared machine
             falls on both), a fresh daemon (fresh state dir) attaches the image and runs
               randwrite4k  4 KiB random writes after a warm-up of the same writes (every
                            region of the device already written since the attach: the steady
                            state); both daemons run at once, each on its own copy, and short
                            slices alternate between them; in a full run 4 x --runtime each,
                            long enough to span a periodic CBT checkpoint (~30 s), whose cleared
                            write-intent journal the writes must set again;
               seq1m_fresh  passes of one sequential 1 MiB write over the whole device right
                            after the attach (a fresh state dir each pass, so every region is
                            fresh: never written since the attach or a checkpoint). The image is
                            prefilled, so no file-system allocation dilutes the ratio.
             Every job starts after a sync (no writeback of the previous job's data in it).
             Around each timed job it reads "journal_syncs" from `blksnap cbt info dev --json`
             (syncs of the write-intent journal since attach; the daemon's cbt-info answer if
             the CLI does not pass it on); its delta per GiB written is reported ("n/a" when
             the daemon has no such field).
  restart()  one round: N sparse 1 TiB files (100; 10 with --quick), for each configuration a fresh
             daemon attaches them all; then a clean stop (SIGTERM) and a start, after which the
             devices are back: re-attached by the daemon from its records before it is ready
             (a clean stop keeps them, since main's 2be0b92), or, with a daemon that forgets
             them at a clean stop, attached again by the client (durable CBT continues; once
             through one connection, once more after another clean restart through 8
             connections at once); then kill -9 and a start, after which the daemon
             re-attaches them from its records before it is ready. Measured: exec to
             READY=1 (sd_notify to a NOTIFY_SOCKET of ours, the kernel's arrival timestamp) and
             to the first answer on the control socket, the attach time (sequential requests on
             each connection), VmRSS/RssAnon/RssFile of the daemon after each stage, and how
             many devices kept their CBT generation.
State: rounds and restarts, one compare() and one restart() result per round; summary() makes
the document's "durable_cbt" part of them (the restart round shown is the one with the median
kill -9 ready time of the durable daemon, every round's figures beside it).
Every daemon is started by setups.spawn (recorded for cleanup) and stopped by its pid.
"""
import array
import json
import os
import shutil
import signal
import socket
import statistics
import threading
import time

from common import GIB, KIB, MIB, SCRATCH, TIB, log, run
from setups import spawn, stop

PAIR = ("blksnap", "blksnap-memcbt")  # durable CBT (the default), CBT in memory only
CONFIGS = (("durable", ()), ("memory", ("--cbt-in-memory",)))
PARALLEL = 8  # connections of the parallel re-attach after a clean restart
SO_TIMESTAMP = getattr(socket, "SO_TIMESTAMP", 29)  # Linux's value; Python does not export it


class Control:
    """One control-protocol connection (docs/control-protocol.md): sequential requests."""

    def __init__(self, path, timeout=120):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""
        self.next_id = 0

    def call(self, method, **params):
        self.next_id += 1
        req = {"v": 1, "id": self.next_id, "method": method, "params": params}
        self.sock.sendall(json.dumps(req).encode() + b"\n")
        while b"\n" not in self.buf:
            data = self.sock.recv(1 << 16)
            if not data:
                raise RuntimeError(f"control socket closed during {method}")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        ans = json.loads(line)
        if "error" in ans:
            raise RuntimeError(f"{method} {params}: {ans['error']}")
        return ans["result"]

    def close(self):
        self.sock.close()


def rss(pid):
    """VmRSS, RssAnon, RssFile and RssShmem of a process, bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[k] = int(v.split()[0]) * KIB
    return out


def mib(b):
    return round(b / MIB, 1)


def syncs(info):
    v = info.get("journal_syncs")
    return v if isinstance(v, int) else None


def per_gib(d_syncs, nbytes):
    return None if d_syncs is None or not nbytes else round(d_syncs / (nbytes / GIB), 2)


def fmt(v):
    return "n/a" if v is None else f"{v:g}"


class Durable:
    def __init__(self, lab, wl, quick):
        self.lab = lab
        self.wl = wl  # Workloads: its fio()
        self.quick = quick
        self.rounds = []    # compare() of each round
        self.restarts = []  # restart() of each round

    # ------------------------------------------------------------ compare

    def session(self, setup, img, tag):
        """A fresh daemon of the setup's configuration with img attached as "dev"; returns
        (process, NBD URI, control socket)."""
        shutil.rmtree(os.path.join(SCRATCH, tag), ignore_errors=True)
        extra = ("--chunk-minimum-shift", "16") + (
            ("--cbt-in-memory",) if setup.endswith("-memcbt") else ())
        p = self.lab.daemon(extra, tag=tag)
        try:
            dev = self.lab.cli_json("attach", img, "--name", "dev")
            run(["sync"])  # no writeback of the previous job's data in this one
        except BaseException:
            stop(p)
            raise
        return p, dev["nbd"], self.lab.ctl

    def journal_syncs(self, ctl):
        """"journal_syncs" of `blksnap cbt info dev --json`, else of the daemon's cbt-info
        answer (should the CLI not pass it on), else None."""
        self.lab.ctl = ctl
        v = syncs(self.lab.cli_json("cbt", "info", "dev"))
        if v is None:
            c = Control(ctl)
            try:
                v = syncs(c.call("cbt-info", name="dev"))
            finally:
                c.close()
        return v

    def timed(self, setup, sess, wl, **kw):
        """One fio job on session sess with the journal's sync count read around it."""
        _, uri, ctl = sess
        before = self.journal_syncs(ctl)
        m = self.wl.fio(uri, wl, **kw)
        after = self.journal_syncs(ctl)
        d = None if before is None or after is None else after - before
        m.update(journal_syncs=d, syncs_per_gib=per_gib(d, m["bytes"]))
        v = m["iops"] if wl == "randwrite4k" else m["mib_s"]
        log(f"  cbt {setup:15s} {wl:12s} {v:>10.1f} {'IOPS' if wl == 'randwrite4k' else 'MiB/s'}"
            f"  journal syncs {fmt(d)} ({fmt(m['syncs_per_gib'])}/GiB)")
        return m

    def steady(self, order, imgs, res):
        """Both daemons up at once, each on its own copy of the image; after a warm-up each,
        time slices of 4 KiB random writes alternate between them (ABBA...), 4 x --runtime in
        all for each (a full run: 8 slices of 5 s, spanning a ~30 s checkpoint)."""
        sess = {}
        try:
            for setup in order:
                sess[setup] = self.session(setup, imgs[setup], "cbt-" + setup)
                self.wl.fio(sess[setup][1], "randwrite4k", runtime=1 if self.quick else 3)
            n = 2 if self.quick else 8
            rt = max(1, (self.wl.runtime if self.quick else 4 * self.wl.runtime) // n)
            for i in range(n):
                for setup in (order if i % 2 == 0 else order[::-1]):
                    res[setup]["randwrite4k"].append(
                        self.timed(setup, sess[setup], "randwrite4k", runtime=rt))
        finally:
            for x in sess.values():
                stop(x[0])

    def compare(self):
        lab = self.lab
        img = lab.fresh_image("cbt")
        other = os.path.join(SCRATCH, "cbt-other.raw")  # fresh_image() keeps one .img only
        order = PAIR if len(self.rounds) % 2 == 0 else PAIR[::-1]
        res = {s: {"randwrite4k": [], "seq1m_fresh": []} for s in PAIR}
        try:
            run(["cp", "--sparse=never", img, other])
            self.steady(order, {PAIR[0]: img, PAIR[1]: other}, res)
            os.unlink(other)
            for k in range(2 if self.quick else 4):
                for setup in (order if k % 2 == 0 else order[::-1]):
                    sess = self.session(setup, img, f"cbt-{setup}-{k}")
                    try:
                        res[setup]["seq1m_fresh"].append(self.timed(
                            setup, sess, "seq1m_fresh", time_based=False, runtime=3600,
                            extra=("--rw=write", "--bs=1m")))
                    finally:
                        stop(sess[0])
        finally:
            for f in os.listdir(SCRATCH):
                f = os.path.join(SCRATCH, f)
                if os.path.basename(f).startswith("cbt-"):
                    (os.unlink if os.path.isfile(f) else shutil.rmtree)(f)
        self.rounds.append(res)

    # ------------------------------------------------------------ restart

    def start(self, extra, tag):
        """Starts a daemon; returns (process, {"ready_s", "first_answer_s"}), both from exec."""
        lab = self.lab
        cmd = lab.daemon_cmd(extra, tag)
        ns_path = os.path.join(SCRATCH, tag, "notify")
        if os.path.exists(ns_path):
            os.unlink(ns_path)
        ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        ns.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
        ns.bind(ns_path)
        ns.setblocking(False)
        t0 = time.time()
        p = spawn(cmd, env=dict(os.environ, NOTIFY_SOCKET=ns_path))
        out = {}
        try:
            while "first_answer_s" not in out:
                if p.poll() is not None:
                    raise RuntimeError(f"blksnapd exited with {p.returncode} at start")
                try:
                    c = Control(lab.ctl, timeout=60)
                except OSError:
                    time.sleep(0.002)
                    continue
                try:  # a connect during start-up waits in the backlog until the daemon serves
                    c.call("version")
                    out["first_answer_s"] = round(time.time() - t0, 4)
                finally:
                    c.close()
            deadline = time.monotonic() + 30
            while "ready_s" not in out:
                if time.monotonic() > deadline:
                    raise RuntimeError("no READY=1 from blksnapd on NOTIFY_SOCKET")
                try:
                    msg, anc, _, _ = ns.recvmsg(4096, socket.CMSG_SPACE(16))
                except BlockingIOError:
                    time.sleep(0.002)
                    continue
                if b"READY=1" not in msg.split(b"\n"):
                    continue
                when = time.time()
                for level, kind, data in anc:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMP:
                        sec, usec = array.array("q", data[:16])
                        when = sec + usec / 1e6
                out["ready_s"] = round(when - t0, 4)
        except BaseException:
            stop(p)
            raise
        finally:
            ns.close()
        return p, out

    def attach_all(self, imgs, conns=1):
        """Attaches imgs[i] as "r<i>" through conns connections in parallel (each sequential);
        returns the seconds it took."""
        errors = []

        def some(k):
            try:
                c = Control(self.lab.ctl)
                try:
                    for i in range(k, len(imgs), conns):
                        c.call("attach", path=imgs[i], name=f"r{i}")
                finally:
                    c.close()
            except (OSError, RuntimeError) as e:
                errors.append(e)
        t = time.monotonic()
        threads = [threading.Thread(target=some, args=(k,)) for k in range(conns)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if errors:
            raise RuntimeError(f"attach: {errors[0]}")
        return round(time.monotonic() - t, 3)

    def reattach(self, imgs, conns=1):
        """After a clean restart: ("daemon", 0) if the daemon re-attached the devices from its
        records by itself (since main's 2be0b92 a clean stop keeps them), else ("client", the
        seconds attach_all took)."""
        c = Control(self.lab.ctl)
        try:
            have = len(c.call("devices")["devices"])
        finally:
            c.close()
        if have == len(imgs):
            return "daemon", 0.0
        if have:
            raise RuntimeError(f"restart: {have} of {len(imgs)} devices back after a clean stop")
        return "client", self.attach_all(imgs, conns)

    def clean_restart(self, p, extra, tag):
        """SIGTERM, then a start; returns (process, {"stop_s", "ready_s", ...})."""
        t = time.monotonic()
        p.send_signal(signal.SIGTERM)
        p.wait(120)
        stop_s = round(time.monotonic() - t, 3)
        p, out = self.start(extra, tag)
        out["stop_s"] = stop_s
        return p, out

    def generations(self, n):
        """Device name -> CBT generation id of the devices attached now (must be n of them)."""
        c = Control(self.lab.ctl)
        try:
            devs = c.call("devices")["devices"]
            if len(devs) != n:
                raise RuntimeError(f"restart: {len(devs)} devices attached, expected {n}")
            return {d["name"]: c.call("cbt-info", name=d["name"])["generation_id"] for d in devs}
        finally:
            c.close()

    def one_config(self, cfg, extra, imgs):
        tag = "restart-" + cfg
        shutil.rmtree(os.path.join(SCRATCH, tag), ignore_errors=True)
        n, r = len(imgs), {}
        p, r["cold"] = self.start(extra, tag)
        try:
            r["cold"]["rss"] = rss(p.pid)
            r["attach_s"] = self.attach_all(imgs)
            r["attached"] = {"rss": rss(p.pid)}
            gens = self.generations(n)
            p, r["clean"] = self.clean_restart(p, extra, tag)
            c = r["clean"]
            c["rss_before_attach"] = rss(p.pid)
            c["reattached_by"], c["reattach_s"] = self.reattach(imgs)
            c["serving_all_s"] = round(c["ready_s"] + c["reattach_s"], 3)
            c["rss"] = rss(p.pid)
            g = self.generations(n)
            c["generations_kept"] = sum(g.get(k) == v for k, v in gens.items())
            # Once more, the client attaching through PARALLEL connections at once.
            p, r["clean_parallel"] = self.clean_restart(p, extra, tag)
            c = r["clean_parallel"]
            c["reattached_by"], c["reattach_s"] = self.reattach(imgs, PARALLEL)
            c["serving_all_s"] = round(c["ready_s"] + c["reattach_s"], 3)
            c["rss"] = rss(p.pid)
            self.generations(n)
            p.kill()  # kill -9: the next daemon re-attaches from its records before READY=1
            p.wait()
            p, r["crash"] = self.start(extra, tag)
            r["crash"]["rss"] = rss(p.pid)
            g = self.generations(n)
            r["crash"]["generations_kept"] = sum(g.get(k) == v for k, v in gens.items())
        finally:
            stop(p, timeout=120)
        log(f"  restart {cfg:7s} {n} x 1 TiB: attach {r['attach_s']} s, RSS "
            f"{mib(r['attached']['rss']['VmRSS'])} MiB; clean restart: ready "
            f"{r['clean']['ready_s']} s + attach {r['clean']['reattach_s']} s by "
            f"{r['clean']['reattached_by']} "
            f"({r['clean_parallel']['reattach_s']} s in {PARALLEL} connections), RSS "
            f"{mib(r['clean']['rss']['VmRSS'])} MiB, kept {r['clean']['generations_kept']}; "
            f"kill -9: ready {r['crash']['ready_s']} s, RSS {mib(r['crash']['rss']['VmRSS'])} "
            f"MiB, kept {r['crash']['generations_kept']}")
        return r

    def restart(self):
        n = 10 if self.quick else 100
        d = os.path.join(SCRATCH, "restart-imgs")
        os.makedirs(d, exist_ok=True)
        imgs = []
        for i in range(n):
            imgs.append(os.path.join(d, f"r{i}.img"))
            with open(imgs[-1], "w") as f:
                f.truncate(TIB)
        res = {"devices": n, "device_bytes": TIB, "configs": {}}
        run(["sync"])  # attach syncs each state file: no earlier job's writeback in the way
        try:
            for cfg, extra in CONFIGS:
                res["configs"][cfg] = self.one_config(cfg, extra, imgs)
        finally:
            shutil.rmtree(d, ignore_errors=True)
            for cfg, _ in CONFIGS:
                shutil.rmtree(os.path.join(SCRATCH, "restart-" + cfg), ignore_errors=True)
        self.restarts.append(res)

    # ------------------------------------------------------------ results

    def summary(self):
        """The "durable_cbt" part of the results document (None if nothing was measured)."""
        if not self.rounds and not self.restarts:
            return None
        out = {"rounds": self.rounds, "restart": None, "restart_rounds": self.restarts}
        if self.restarts:
            ready = [r["configs"]["durable"]["crash"]["ready_s"] for r in self.restarts]
            out["restart"] = self.restarts[ready.index(statistics.median_low(ready))]
            for cfg, _ in CONFIGS:
                for how in ("clean", "clean_parallel", "crash"):
                    for k in ("ready_s", "reattach_s"):
                        v = [r["configs"][cfg][how].get(k) for r in self.restarts]
                        if None not in v:
                            out["restart"]["configs"][cfg][how][k + "_rounds"] = v
        a, b = PAIR
        for wl, key in (("randwrite4k", "iops"), ("seq1m_fresh", "mib_s")):
            # The ratio of the totals (the mean over equal slices or passes): per 5 s slice the
            # pairs scatter by +-30% on this machine, and their totals are what a user gets.
            pairs, per_round, nbytes, nsyncs = [], [], 0, 0
            for r in self.rounds:
                xs, ys = r[a].get(wl), r[b].get(wl)
                xs, ys = (xs, ys) if isinstance(xs, list) else ([xs], [ys])
                if not xs or not ys:
                    continue
                pairs += [round(x[key] / y[key], 3) for x, y in zip(xs, ys) if y[key]]
                per_round.append((sum(x[key] for x in xs), sum(y[key] for y in ys)))
                for x in xs:
                    nbytes += x["bytes"]
                    nsyncs = None if nsyncs is None or x["journal_syncs"] is None else \
                        nsyncs + x["journal_syncs"]
            if per_round:
                rr = [round(x / y, 3) for x, y in per_round if y]
                out[wl] = {"ratio": round(sum(x for x, _ in per_round) /
                                          sum(y for _, y in per_round), 3),
                           "ratio_range": [min(rr), max(rr)], "round_ratios": rr,
                           "pair_ratios": pairs,
                           "pair_ratio_median": round(statistics.median(pairs), 3),
                           "durable_gib": round(nbytes / GIB, 2), "journal_syncs": nsyncs,
                           "syncs_per_gib": per_gib(nsyncs, nbytes)}
        return out
