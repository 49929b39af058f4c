#!/usr/bin/env python3
"""Backup, restore and verify through the real daemon and CLI (issue 16; docs/backup.md).

Algorithm: a 32 MiB device, its first 24 MiB stamped with the self-checking pattern (seq 1)
through its front, the last 8 MiB zeroes; a repository with 256 KiB chunks.
* `backup` -> full ("first"); the oracle is the original file's bytes right after the command.
* 1 MiB at 4 MiB rewritten (seq 2); `backup` -> incremental with the first as parent, reading
  at most 2x the changed bytes and storing new chunks only for them.
* `backup --full` -> full ("requested") storing almost nothing new (dedup).
* detach, a write into the file, attach (a new CBT generation, "outside-write"): `backup` ->
  full ("generation") storing only the one chunk that changed; it restores byte-identical.
* `restore` of each backup into a new file: byte-identical to its oracle (SHA-256), sparse
  (the zero tail is a hole), `--verify` passes; restore to a block device is the loop part.
* `repo serve` of the incremental: its NBD export (and FUSE file when there is one) reads as
  its oracle, read-only; a second serve is refused; `repo unserve` removes it.
* `repo list` lists the three with their kinds; `repo stats` counts them.
* An encrypted repository: a backup and a restore with the key; a wrong key is refused with a
  one-line "wrong key" error and exit status != 0; no key at all is refused.
* kill -9 of the daemon during a backup of a 128 MiB random device (3 rounds, random instants):
  after a restart the repository lists no partial backup, the next backup succeeds reusing
  what the killed one stored, and restores byte-identical; `repo verify` passes.
* Two daemons (two state dirs, a device each) back up into one repository at once: both
  succeed and both backups restore byte-identical.
* ext4 (as root with FUSE): 40 files on ext4 on the device's loop front, backed up while
  mounted (the take freezes it); 10 deleted afterwards; the backup served with `repo serve
  --loop` and mounted read-only holds every file with its checksum at the backup.
* A flipped byte in one stored chunk: `repo verify` fails naming the chunk and every backup
  that uses it; restoring such a backup fails; `repo verify --repair` moves it to bad/ and marks
  exactly those backups, the next backup is full ("parent-damaged") when the newest was
  affected and restores and verifies; after `repo prune --keep-last 1` and `repo gc` only the
  newest backup is listed, chunks and the markers were deleted.
"""
import hashlib
import json
import os
import random
import subprocess
import threading
import time

from blksnap_cli_lib import Daemon, daemon_test_main, fuse_possible, sha, tree_sums, write_front

MIB = 1 << 20


def run(d, t):
    size = 32 * MIB
    img = d.make_image("vm.img", size)
    dev = d.cli_json("attach", img, "--name", "vm")
    write_front(d, dev, 0, 24 * MIB, 1)
    repo = os.path.join(d.tmp, "repo")
    # Options out of range: one line, exit 1, nothing created.
    for bad in (["--zstd-level", "99"], ["--segment-size", "3000"], ["--segment-size", "8M"]):
        rc, out, err = d.cli("repo", "init", repo, *bad)
        t.check(rc == 1 and len(err.strip().splitlines()) == 1 and not os.path.exists(repo),
                "repo init %s refused, nothing made: rc=%d %r" % (" ".join(bad), rc, err))
    init = d.cli_json("repo", "init", repo, "--chunk-size", "256K")
    t.check(init["chunk_size"] == 256 * 1024 and not init["encrypted"], "repo init: %s" % init)
    t.check(init["segment_size"] == 16 * 1024 and init["zstd_level"] == 2,
            "a new repository is format 2, 16K segments, zstd level 2: %s" % init)
    t.check(d.cli_json("cbt", "info", "vm")["block_size"] == 16 * 1024,
            "CBT blocks of 16 KiB by default, the repository's segment size")

    b1 = backup(d, "vm", "--repo", repo)["backups"][0]
    o1 = sha(img)
    t.check(b1["full"] and b1["full_reason"] == "first", "first backup is full (first)")
    t.check(b1["stats"]["zero_chunks"] == 32, "the zero tail is 32 zero chunks: %s" % b1["stats"])

    write_front(d, dev, 4 * MIB, MIB, 2)
    b2 = backup(d, "vm", "--repo", repo)["backups"][0]
    o2 = sha(img)
    t.check(not b2["full"] and b2["parent"] == b1["id"], "second backup is incremental on the first")
    t.check(0 < b2["stats"]["read_bytes"] <= 2 * MIB,
            "incremental read %d bytes for 1 MiB changed" % b2["stats"]["read_bytes"])
    t.check(b2["stats"]["new_chunks"] == 4, "incremental stored 4 new chunks: %s" % b2["stats"])

    b3 = backup(d, "vm", "--repo", repo, "--full")["backups"][0]
    t.check(b3["full"] and b3["full_reason"] == "requested", "--full is full (requested)")
    t.check(b3["stats"]["new_chunks"] == 0 and b3["stats"]["read_bytes"] == size,
            "--full read everything and stored nothing new: %s" % b3["stats"])

    # A write while the device is not tracked starts a new CBT generation: the next backup is
    # full ("generation") and stores only the chunk that write changed.
    d.cli_json("detach", "vm")
    with open(img, "r+b") as f:
        f.seek(20 * MIB)
        f.write(b"outside the daemon")
    d.cli_json("attach", img, "--name", "vm")
    cbt = d.cli_json("cbt", "info", "vm")
    b4 = backup(d, "vm", "--repo", repo)["backups"][0]
    t.check(b4["full"] and b4["full_reason"] == "generation" and b4["cbt_generation"] == cbt["generation_id"]
            and b4["cbt_generation"] != b3["cbt_generation"],
            "after an outside write: full (generation), new generation %s" % cbt.get("generation_reason"))
    t.check(b4["stats"]["new_chunks"] == 1, "it stored only the changed chunk: %s" % b4["stats"])
    o4 = sha(img)
    out = os.path.join(d.tmp, "restored-b4")
    restore(d, t, b4["id"], out, "--repo", repo)
    t.check(sha(out) == o4, "the generation backup restores byte-identical")
    os.unlink(out)

    for b, oracle in ((b1, o1), (b2, o2), (b3, o2)):
        out = os.path.join(d.tmp, "restored-" + b["id"])
        r = restore(d, t, b["id"], out, "--repo", repo, "--verify")
        t.check(r["verified"] and sha(out) == oracle, "restore of %s is byte-identical" % b["id"])
        st = os.stat(out)
        t.check(st.st_size == size and st.st_blocks * 512 <= 25 * MIB,
                "restored file is sparse (%d bytes allocated)" % (st.st_blocks * 512))
        os.unlink(out)

    serve(d, t, repo, b2, o2, size)

    listed = d.cli_json("repo", "list", "--repo", repo)["backups"]
    t.check([b["id"] for b in listed] == [b1["id"], b2["id"], b3["id"], b4["id"]],
            "repo list: the four")
    stats = d.cli_json("repo", "stats", "--repo", repo)
    t.check(stats["backups"] == 4 and stats["logical_bytes"] == 4 * size, "repo stats: %s" % stats)

    # Encrypted repository.
    key = os.path.join(d.tmp, "key")
    with open(key, "wb") as f:
        f.write(os.urandom(32))
    bad = os.path.join(d.tmp, "bad-key")
    with open(bad, "wb") as f:
        f.write(os.urandom(32))
    erepo = os.path.join(d.tmp, "erepo")
    d.cli_json("repo", "init", erepo, "--encrypt", "--key-file", key)
    eb = backup(d, "vm", "--repo", erepo, "--key-file", key)["backups"][0]
    out = os.path.join(d.tmp, "restored-enc")
    restore(d, t, eb["id"], out, "--repo", erepo, "--key-file", key)
    t.check(sha(out) == o4, "encrypted backup restores byte-identical")
    rc, _, err = d.cli("restore", eb["id"], out, "--repo", erepo, "--key-file", bad)
    t.check(rc != 0 and "wrong key" in err and err.count("\n") == 1,
            "a wrong key is refused in one line: %r" % err)
    rc, _, err = d.cli("repo", "list", "--repo", erepo)
    t.check(rc != 0, "no key for an encrypted repository is refused: %r" % err)

    killed_backups(d, t)
    two_daemons(d, t)
    if fuse_possible():
        ext4_files(d, t)
    else:
        t.skip("ext4 files through repo serve --loop", "needs root, /dev/fuse, /dev/loop-control")

    # A damaged chunk: the biggest chunk object (data, not a zero chunk) gets a flipped byte.
    chunks = []
    for root, _, files in os.walk(os.path.join(repo, "chunks")):
        chunks += [os.path.join(root, f) for f in files if not f.startswith(".")]
    victim = max(chunks, key=os.path.getsize)
    with open(victim, "r+b") as f:
        f.seek(os.path.getsize(victim) // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x40]))
    rc, out, err = d.cli("--json", "repo", "verify", "--repo", repo, "--since", "2200-01-01")
    t.check(rc == 0 and json.loads(out)["ok"], "verify --since a future date checks nothing: %r" % out)
    rc, out, err = d.cli("--json", "repo", "verify", "--repo", repo)
    res = json.loads(out.splitlines()[0]) if out else {}
    problems = res.get("problems", [])
    t.check(rc != 0 and len(problems) == 1 and os.path.basename(victim) == problems[0]["chunk"],
            "repo verify names the damaged chunk: rc=%d %s" % (rc, problems))
    affected = problems[0]["backups"] if problems else []
    t.check(len(affected) >= 1, "the damaged chunk's backups are listed: %s" % affected)
    if affected:
        rc, _, err = d.cli("restore", affected[0], os.path.join(d.tmp, "x"), "--repo", repo)
        t.check(rc != 0 and "checksum mismatch" in err,
                "restore of an affected backup fails (its seal): %r" % err)
        rc, _, err = d.cli("restore", affected[0], os.path.join(d.tmp, "x"), "--repo", repo,
                           "--check-digests")
        t.check(rc != 0, "restore --check-digests of an affected backup fails: %r" % err)

    # Repair: the damaged chunk leaves its name for bad/, every backup it affects is marked; the
    # next backup of the device is full ("parent-damaged") when the newest backup is affected,
    # and stores the chunk anew (an incremental would copy the damaged entry; a full backup
    # would find a damaged chunk present by name and reuse it).
    rc, out, err = d.cli("--json", "repo", "verify", "--repo", repo, "--repair")
    res = json.loads(out.splitlines()[0]) if out else {}
    moved = [p for p in res.get("problems", []) if p.get("moved_aside")]
    aside = os.path.join(repo, "bad", os.path.relpath(victim, repo))
    t.check(rc != 0 and res.get("repaired") and len(moved) == 1 and not os.path.exists(victim)
            and os.path.exists(aside), "verify --repair moved the chunk to bad/: rc=%d %s" % (rc, res))
    t.check(sorted(os.listdir(os.path.join(repo, "damaged"))) == sorted(affected),
            "verify --repair marked exactly the affected backups")
    b5 = backup(d, "vm", "--repo", repo)["backups"][0]
    if b4["id"] in affected:
        t.check(b5["full"] and b5["full_reason"] == "parent-damaged" and b5["stats"]["new_chunks"] >= 1,
                "after a repair under the newest backup: full (parent-damaged), the lost chunk "
                "stored anew: %s" % b5)
    else:
        t.check(not b5["full"], "the newest backup was not affected: incremental")
    o5 = sha(img)
    out = os.path.join(d.tmp, "restored-b5")
    restore(d, t, b5["id"], out, "--repo", repo, "--verify")
    t.check(sha(out) == o5, "the backup after the repair restores byte-identical")
    os.unlink(out)
    rc, out, err = d.cli("--json", "repo", "verify", "--repo", repo, b5["id"])
    t.check(rc == 0 and json.loads(out)["ok"], "the backup after the repair verifies: %r" % out)

    pruned = d.cli_json("repo", "prune", "--repo", repo, "--keep-last", "1")
    t.check(sorted(pruned["removed"]) == sorted([b1["id"], b2["id"], b3["id"], b4["id"]]),
            "prune keeps the newest")
    gc = d.cli_json("repo", "gc", "--repo", repo)
    t.check(gc["indexes_deleted"] >= 1, "gc deleted the pruned indexes: %s" % gc)
    markers = os.path.join(repo, "damaged")
    t.check(not os.path.isdir(markers) or os.listdir(markers) == [],
            "gc removed the markers of the pruned backups")
    listed = d.cli_json("repo", "list", "--repo", repo)["backups"]
    t.check([b["id"] for b in listed] == [b5["id"]], "only the newest backup is left")


def serve(d, t, repo, b, oracle, size):
    """repo serve: the backup point read through its NBD export (and FUSE file) is the oracle."""
    start = time.monotonic()
    r = d.cli_json("repo", "serve", b["id"], "--repo", repo)
    import nbd
    h = nbd.NBD()
    h.connect_uri(r["nbd"])
    first = h.pread(512, 0)
    print("repo serve: first byte %.3f s after the command" % (time.monotonic() - start))
    t.check(h.get_size() == size and h.is_read_only(), "served backup: size, read-only")
    digest = hashlib.sha256()
    for off in range(0, size, 4 * MIB):
        digest.update(h.pread(4 * MIB, off))
    h.shutdown()
    t.check(len(first) == 512 and digest.hexdigest() == oracle,
            "the served backup reads as the backup (NBD %s)" % r["nbd"])
    if r.get("fuse"):
        t.check(sha(r["fuse"]) == oracle, "the served backup reads as the backup (FUSE)")
    rc, _, err = d.cli("repo", "serve", b["id"], "--repo", repo)
    t.check(rc != 0 and "served already" in err, "serving it twice is refused: %r" % err)
    d.cli_json("repo", "unserve", b["id"])
    rc, _, err = d.cli("repo", "unserve", b["id"])
    t.check(rc != 0, "unserve of a backup not served fails: %r" % err)


def backup(d, *argv, progress=None):
    """blksnap --json backup ...: any {"progress"} lines, then the result; returns the result
    (and appends the progress objects to `progress` when given)."""
    rc, out, err = d.cli("--json", "backup", *argv)
    if rc != 0:
        raise RuntimeError("blksnap backup %s failed (%d): %s" % (argv, rc, err))
    lines = [json.loads(x) for x in out.splitlines() if x.strip()]
    if not all("progress" in x for x in lines[:-1]):
        raise RuntimeError("blksnap backup: unexpected output %r" % out)
    if progress is not None:
        progress += [x["progress"] for x in lines[:-1]]
    return lines[-1]


def restore(d, t, *argv):
    """blksnap --json restore ...: {"progress"} lines, then the result; returns the result."""
    rc, out, err = d.cli("--json", "restore", *argv)
    if rc != 0:
        raise RuntimeError("blksnap restore %s failed (%d): %s" % (argv, rc, err))
    lines = [json.loads(x) for x in out.splitlines() if x.strip()]
    t.check(all("progress" in x for x in lines[:-1]) and lines[-1].get("bytes"),
            "restore --json: %d progress line(s), then the result" % (len(lines) - 1))
    return lines[-1]


def random_image(d, name, size):
    path = d.make_image(name, size)
    with open(path, "r+b") as f:
        for off in range(0, size, 4 * MIB):
            f.write(os.urandom(min(4 * MIB, size - off)))
    return path


def killed_backups(d, t):
    """kill -9 during backups; the repository stays valid and the next backup reuses chunks."""
    k = Daemon(d.args, fuse=False, tmp=os.path.join(d.tmp, "killed"))
    os.makedirs(k.tmp, exist_ok=True)
    k.start()
    try:
        size = 128 * MIB
        img = random_image(k, "big.img", size)
        k.cli_json("attach", img, "--name", "big")
        repo = os.path.join(d.tmp, "krepo")
        k.cli_json("repo", "init", repo)
        oracle = sha(img)
        for r in range(3):
            cmd = [k.args["blksnap"], "--control", k.control, "backup", "big", "--repo", repo]
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(random.uniform(0.02, 0.4))
            k.proc.kill()
            k.proc.wait()
            p.wait(timeout=60)
            k.proc = None
            k.start()
            listed = k.cli_json("repo", "list", "--repo", repo)["backups"]
            t.check(all(b["stats"]["logical_bytes"] == size for b in listed),
                    "round %d: only complete backups are listed (%d)" % (r, len(listed)))
        stored_before = k.cli_json("repo", "stats", "--repo", repo)["chunks"]
        b = backup(k, "big", "--repo", repo)["backups"][0]
        t.check(b["stats"]["new_chunks"] + b["stats"]["reused_chunks"] == 32,
                "the backup after the kills covers 32 chunks: %s" % b["stats"])
        t.check(stored_before == 0 or b["stats"]["reused_chunks"] > 0,
                "it reused the %d chunks the killed backups stored" % stored_before)
        out = os.path.join(d.tmp, "big-restored")
        restore(d, t, b["id"], out, "--repo", repo, "--verify")
        t.check(sha(out) == oracle, "the backup after the kills restores byte-identical")
        os.unlink(out)
        rc, _, err = d.cli("repo", "verify", "--repo", repo)
        t.check(rc == 0, "repo verify passes after the kills: %r" % err)
        # Progress: a backup that stores 128 MiB of random data on one thread into a new
        # repository of 64 KiB chunks (2048 objects, each written and fsynced) takes long
        # enough for the CLI's polls (every 100 ms) to see it.
        fresh = os.path.join(d.tmp, "krepo2")
        k.cli_json("repo", "init", fresh, "--chunk-size", "64K")
        progress = []
        backup(k, "big", "--repo", fresh, "--threads", "1", progress=progress)
        t.check(len(progress) >= 1 and all(
            p["total_bytes"] == size and 0 < p["done_bytes"] <= size for p in progress),
            "backup --json: %d progress line(s) with the device's bytes" % len(progress))
    finally:
        k.cleanup()


def ext4_files(d, t, repo=None):
    """Files on ext4 on a tracked loop front, backed up while mounted; the served backup
    mounted read-only (repo serve --loop) holds every file with its checksum at the backup.
    repo: the repository to make and use (a path or URL); default a directory of the test."""
    f = Daemon(d.args, fuse=True, tmp=os.path.join(d.tmp, "ext4"))
    os.makedirs(f.tmp, exist_ok=True)
    f.start()
    mnt = os.path.join(f.tmp, "mnt")
    served_mnt = os.path.join(f.tmp, "served")
    os.makedirs(mnt)
    os.makedirs(served_mnt)
    try:
        img = f.make_image("fs.img", 64 * MIB)
        dev = f.cli_json("attach", img, "--name", "fs", "--loop")
        subprocess.run(["mkfs.ext4", "-q", dev["loop"]], check=True)
        subprocess.run(["mount", dev["loop"], mnt], check=True)
        rnd = random.Random(5)
        for i in range(40):
            sub = os.path.join(mnt, "dir%d" % (i % 5))
            os.makedirs(sub, exist_ok=True)
            with open(os.path.join(sub, "file%d" % i), "wb") as out:
                out.write(bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(1, 200000))))
        os.sync()
        before = tree_sums(mnt)
        repo = repo or os.path.join(f.tmp, "repo")
        f.cli_json("repo", "init", repo)
        b = backup(f, "fs", "--repo", repo)["backups"][0]
        # The front changes after the backup; the backup must not.
        for name in list(before)[:10]:
            os.unlink(os.path.join(mnt, name))
        os.sync()
        served = f.cli_json("repo", "serve", b["id"], "--repo", repo, "--loop")
        subprocess.run(["mount", "-o", "ro,noload", served["loop"], served_mnt], check=True)
        try:
            got = tree_sums(served_mnt)
            got.pop("lost+found", None)
            t.check(got == before, "ext4 on the served backup: %d files, each with its checksum at "
                    "the backup (%d differ)" % (len(before), sum(got.get(k) != v for k, v in before.items())))
        finally:
            subprocess.run(["umount", served_mnt])
        f.cli_json("repo", "unserve", b["id"])
    finally:
        subprocess.run(["umount", mnt], stderr=subprocess.DEVNULL)
        f.cleanup()


def two_daemons(d, t):
    """Two daemons back up into one repository at the same time."""
    repo = os.path.join(d.tmp, "shared")
    d.cli_json("repo", "init", repo)
    daemons, oracles, results = [], {}, {}
    try:
        for i in range(2):
            x = Daemon(d.args, fuse=False, tmp=os.path.join(d.tmp, "two-%d" % i))
            os.makedirs(x.tmp, exist_ok=True)
            daemons.append(x.start())
            img = random_image(x, "dev%d.img" % i, 48 * MIB)
            x.cli_json("attach", img, "--name", "dev%d" % i)
            oracles["dev%d" % i] = sha(img)

        def run_backup(i):
            try:
                results[i] = (0, backup(daemons[i], "dev%d" % i, "--repo", repo), "")
            except RuntimeError as e:
                results[i] = (1, None, str(e))

        threads = [threading.Thread(target=run_backup, args=(i,)) for i in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        for i in range(2):
            rc, out, err = results[i]
            if not t.check(rc == 0, "daemon %d backed up into the shared repository: %r" % (i, err)):
                continue
            b = out["backups"][0]
            dest = os.path.join(d.tmp, "two-restored-%d" % i)
            restore(d, t, b["id"], dest, "--repo", repo, "--verify")
            t.check(sha(dest) == oracles["dev%d" % i], "daemon %d's backup restores" % i)
    finally:
        for x in daemons:
            x.cleanup()


if __name__ == "__main__":
    daemon_test_main(run)
