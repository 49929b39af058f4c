#!/usr/bin/env python3
"""Backup, restore, verify, serve and gc through the real daemon and CLI into a repository on a
real Ceph cluster, through librados (rados://) and through radosgw's S3 (s3://) (issue 17;
docs/ceph.md).

The cluster: BLKSNAP_TEST_CEPH_CONF names the ceph.conf of a cluster made by
scripts/ceph-cluster (pool "blksnap", user client.blksnap; radosgw's URL in rgw.url and an S3
user's keys in s3.credentials beside it). `ctest -L ceph` starts one (fixture ceph_cluster).
Without it the test FAILS: a missing cluster is never a pass.

Algorithm, for each of rados:// and s3:// (a fresh namespace / key prefix per run):
* `repo init URL`; a 32 MiB device, 24 MiB stamped (seq 1); `backup` -> full; 1 MiB rewritten;
  `backup` -> incremental on it; both restored with --verify, byte-identical to their oracles
  (SHA-256 of the original right after each backup); `repo verify` passes; `repo list` lists 2.
* rados:// only: `repo serve` of the incremental reads as its oracle over NBD; ext4 on a loop
  front backed up into rados:// while mounted, served with `repo serve --loop` and mounted
  read-only: every file with its checksum at the backup (test_backup.ext4_files).
* A missing pool, a missing bucket, wrong S3 keys and a URL carrying a secret: `repo list`
  fails with one line that names the problem and never shows the secret.
* The cluster's only OSD stopped (SIGSTOP) for 4 s during a 64 MiB backup into each, then
  continued: the backup succeeds and restores byte-identical (or fails with one line); only
  complete backups are listed; verify passes.
* Three daemons ("hosts", own state dirs) back up 32 MiB random devices into one rados://
  repository at once, hosts 1 and 2 with identical data: all three restore byte-identical and
  `repo stats` counts the shared chunks once (dedup across hosts).
* kill -9 of a fourth daemon mid-backup into that repository while another host backs up: the
  other succeeds, no partial backup is listed, `repo verify` passes, `repo gc` runs.
"""
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

from blksnap_cli_lib import Daemon, daemon_test_main, fuse_possible, write_front
from test_backup import backup, ext4_files, random_image, restore, sha

MIB = 1 << 20


def cluster():
    conf = os.environ.get("BLKSNAP_TEST_CEPH_CONF", "")
    if not conf:
        print("FAIL: BLKSNAP_TEST_CEPH_CONF is not set: run with `ctest -L ceph` "
              "(scripts/ceph-cluster starts a cluster)")
        sys.exit(1)
    base = os.path.dirname(conf)
    with open(os.path.join(base, "rgw.url")) as f:
        rgw = f.read().strip()
    tag = "t%d-%d" % (os.getpid(), random.randrange(1 << 30))
    rados = "rados://blksnap/%s?conf=%s&id=blksnap" % (tag, conf)
    s3 = "s3://blksnap-e2e/%s?endpoint=%s&credentials=%s" % (
        tag, rgw, os.path.join(base, "s3.credentials"))
    return rados, s3


def round_trip(d, t, repo, name, serve=False):
    """Full + incremental backup into repo, restored byte-identical, verified."""
    size = 32 * MIB
    img = d.make_image(name + ".img", size)
    dev = d.cli_json("attach", img, "--name", name)
    write_front(d, dev, 0, 24 * MIB, 1)
    init = d.cli_json("repo", "init", repo, "--chunk-size", "256K")
    t.check(init["chunk_size"] == 256 * 1024, "%s: repo init" % name)
    b1 = backup(d, name, "--repo", repo)["backups"][0]
    o1 = sha(img)
    t.check(b1["full"], "%s: the first backup is full" % name)
    write_front(d, dev, 4 * MIB, MIB, 2)
    b2 = backup(d, name, "--repo", repo)["backups"][0]
    o2 = sha(img)
    t.check(not b2["full"] and b2["parent"] == b1["id"] and b2["stats"]["new_chunks"] == 4,
            "%s: the second backup is incremental, 4 new chunks: %s" % (name, b2["stats"]))
    for b, oracle in ((b1, o1), (b2, o2)):
        out = os.path.join(d.tmp, "%s-%s.restored" % (name, b["id"]))
        restore(d, t, b["id"], out, "--repo", repo, "--verify")
        t.check(sha(out) == oracle, "%s: backup %s restores byte-identical" % (name, b["id"]))
        os.unlink(out)
    rc, _, err = d.cli("repo", "verify", "--repo", repo)
    t.check(rc == 0, "%s: repo verify passes: %r" % (name, err))
    listed = d.cli_json("repo", "list", "--repo", repo)["backups"]
    t.check(len(listed) == 2, "%s: repo list lists 2 backups" % name)
    if serve:
        import nbd
        r = d.cli_json("repo", "serve", b2["id"], "--repo", repo)
        h = nbd.NBD()
        h.connect_uri(r["nbd"])
        digest = hashlib.sha256()
        for off in range(0, size, 4 * MIB):
            digest.update(h.pread(4 * MIB, off))
        h.shutdown()
        t.check(digest.hexdigest() == o2, "%s: the served backup reads as the backup" % name)
        d.cli_json("repo", "unserve", b2["id"])
    d.cli_json("detach", name)


def hosts(d, t, repo):
    """Three daemons into one repository at once; two with identical data; then a kill -9."""
    daemons, oracles, results = [], {}, {}
    size = 32 * MIB
    d.cli_json("repo", "init", repo, "--chunk-size", "256K")
    try:
        data = os.urandom(size)
        for i in range(3):
            x = Daemon(d.args, fuse=False, tmp=os.path.join(d.tmp, "host-%d" % i))
            os.makedirs(x.tmp, exist_ok=True)
            daemons.append(x.start())
            img = x.make_image("disk.img", size)
            with open(img, "r+b") as f:
                f.write(data if i > 0 else os.urandom(size))
            x.cli_json("attach", img, "--name", "disk")
            oracles[i] = sha(img)

        def run_backup(i):
            try:
                results[i] = (0, backup(daemons[i], "disk", "--repo", repo), "")
            except RuntimeError as e:
                results[i] = (1, None, str(e))

        threads = [threading.Thread(target=run_backup, args=(i,)) for i in range(3)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        for i in range(3):
            rc, out, err = results[i]
            if not t.check(rc == 0, "host %d backed up into the shared repository: %r" % (i, err)):
                continue
            dest = os.path.join(d.tmp, "host-restored-%d" % i)
            restore(d, t, out["backups"][0]["id"], dest, "--repo", repo, "--verify")
            t.check(sha(dest) == oracles[i], "host %d's backup restores byte-identical" % i)
            os.unlink(dest)
        stats = d.cli_json("repo", "stats", "--repo", repo)
        t.check(stats["chunks"] == 2 * size // (256 * 1024),
                "dedup across hosts: %d chunks for 3 hosts, 2 distinct (%s)" % (stats["chunks"], stats))

        # kill -9 of one host's daemon mid-backup while another host backs up.
        k = daemons[0]
        with open(os.path.join(k.tmp, "disk.img"), "r+b") as f:
            f.write(os.urandom(size))
        cmd = [k.args["blksnap"], "--control", k.control, "backup", "disk", "--repo", repo, "--full"]
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        other = threading.Thread(target=run_backup, args=(1,))
        other.start()
        time.sleep(random.uniform(0.01, 0.15))
        k.proc.kill()
        k.proc.wait()
        p.wait(timeout=120)
        k.proc = None
        other.join()
        t.check(results[1][0] == 0, "the other host's backup succeeds beside the kill: %r" % results[1][2])
        listed = d.cli_json("repo", "list", "--repo", repo)["backups"]
        t.check(all(b["stats"]["logical_bytes"] == size for b in listed),
                "no partial backup is listed after the kill (%d listed)" % len(listed))
        rc, _, err = d.cli("repo", "verify", "--repo", repo)
        t.check(rc == 0, "repo verify passes after the kill: %r" % err)
        # The killed backup's RADOS lock outlives it by its duration (60 s): until then gc is
        # refused as if that backup still ran, then it runs.
        deadline = time.monotonic() + 120
        refused = 0
        while True:
            rc, _, err = d.cli("repo", "gc", "--repo", repo)
            if rc == 0 or time.monotonic() > deadline or "backup is running" not in err:
                break
            refused += 1
            time.sleep(5)
        t.check(rc == 0, "repo gc runs after the kill (refused %d time(s) while the killed "
                "backup's lock lived): %r" % (refused, err))
        rc, _, err = d.cli("repo", "verify", "--repo", repo)
        t.check(rc == 0, "repo verify passes after gc: %r" % err)
    finally:
        for x in daemons:
            x.cleanup()


def osd_stall(d, t, repo, name):
    """The only OSD stopped (SIGSTOP) for 4 s in the middle of a backup, then continued: the
    backup either succeeds and restores byte-identical, or fails with one line; never a
    listed backup with holes."""
    pid_file = os.path.join(os.path.dirname(os.environ["BLKSNAP_TEST_CEPH_CONF"]), "run", "osd.0.pid")
    with open(pid_file) as f:
        osd = int(f.read().strip())
    size = 64 * MIB
    img = random_image(d, name + ".img", size)
    d.cli_json("attach", img, "--name", name)
    oracle = sha(img)
    result = {}

    def run_backup():
        rc, out, err = d.cli("--json", "backup", name, "--repo", repo)
        result["rc"], result["out"], result["err"] = rc, out, err

    th = threading.Thread(target=run_backup)
    th.start()
    time.sleep(0.1)
    os.kill(osd, signal.SIGSTOP)
    try:
        time.sleep(4)
    finally:
        os.kill(osd, signal.SIGCONT)
    th.join(timeout=300)
    t.check(not th.is_alive(), "%s: the backup ends after the OSD stall" % name)
    if result.get("rc") == 0:
        b = json.loads(result["out"].splitlines()[-1])["backups"][0]
        out = os.path.join(d.tmp, name + ".restored")
        restore(d, t, b["id"], out, "--repo", repo, "--verify")
        t.check(sha(out) == oracle, "%s: the backup across the OSD stall restores byte-identical" % name)
        os.unlink(out)
    else:
        t.check(len(result.get("err", "").strip().splitlines()) == 1,
                "%s: the failed backup says why in one line: %r" % (name, result.get("err")))
    listed = d.cli_json("repo", "list", "--repo", repo)["backups"]
    t.check(all(x["stats"]["logical_bytes"] in (32 * MIB, size) for x in listed),
            "%s: only complete backups are listed after the stall" % name)
    rc, _, err = d.cli("repo", "verify", "--repo", repo)
    t.check(rc == 0, "%s: repo verify passes after the stall: %r" % (name, err))
    d.cli_json("detach", name)


def bad_locations(d, t, rados, s3):
    """A missing pool or bucket, wrong S3 keys, a URL with a secret: one line, exit != 0."""
    base = os.path.dirname(os.environ["BLKSNAP_TEST_CEPH_CONF"])
    wrong = os.path.join(d.tmp, "wrong.credentials")
    with open(wrong, "w") as f:
        f.write("[default]\naws_access_key_id = NOPE\naws_secret_access_key = sekrit\n")
    cases = [
        ("no such pool", rados.replace("rados://blksnap/", "rados://no-such-pool/", 1), "no such pool"),
        ("no such bucket", s3.replace("s3://blksnap-e2e/", "s3://blksnap-missing/", 1), "no such bucket"),
        ("wrong S3 keys", s3.replace(os.path.join(base, "s3.credentials"), wrong), "access denied"),
        ("a secret in the URL", s3 + "&secret=sekrit", "unknown parameter"),
    ]
    for what, url, says in cases:
        rc, out, err = d.cli("repo", "list", "--repo", url)
        lines = err.strip().splitlines()
        t.check(rc != 0 and len(lines) == 1 and says in err and "sekrit" not in err + out,
                "%s: one line, no secret: %r" % (what, err))


def run(d, t):
    rados, s3 = cluster()
    bad_locations(d, t, rados, s3)
    round_trip(d, t, rados, "rados", serve=True)
    round_trip(d, t, s3, "s3")
    if t.check(fuse_possible(), "FUSE and loop devices are available (root, /dev/fuse)"):
        ext4_files(d, t, repo=rados.replace("?", "-ext4?", 1))
    osd_stall(d, t, rados, "rados-stall")
    osd_stall(d, t, s3, "s3-stall")
    hosts(d, t, rados.replace("?", "-hosts?", 1))


if __name__ == "__main__":
    daemon_test_main(run)
