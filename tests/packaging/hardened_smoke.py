#!/usr/bin/env python3
"""Purpose: blksnapd works inside the sandbox its systemd unit sets up, and the unit's system-call
allow list covers every call the daemon makes.

There is no systemd as PID 1 to run the unit, so the test applies what it can of it by hand,
read from the generated unit: the capability bounding set and no_new_privs (setpriv), the umask,
and it records the system calls with strace instead of enforcing SystemCallFilter=.
Algorithm: ext4 image -> blksnapd (sandboxed, traced) -> attach --loop, mount the loop front,
write "one"; attach a block device (an outside loop device) -> snapshot create --loop of both,
take (freezes the mounted ext4) -> write "two" -> the image's loop device mounts and reads "one"
-> destroy, unmount, detach both, SIGTERM: exit 0. Then
every traced system call must be in the unit's SystemCallFilter= allow list (groups expanded
with systemd-analyze). Needs root, /dev/loop-control, /dev/fuse, strace, setpriv, mkfs.ext4.
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

SKIP = 77


def unit_settings(path):
    settings = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def syscall_groups():
    out = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True,
                         check=True).stdout
    groups, cur = {}, None
    for line in out.splitlines():
        if line.startswith("@"):
            cur = line.split()[0]
            groups[cur] = []
        elif cur and line.startswith("    ") and not line.strip().startswith("#"):
            groups[cur].append(line.strip())
        elif not line.strip():
            cur = None
    return groups


def allowed_syscalls(filters, groups):
    def expand(name, seen):
        if not name.startswith("@"):
            return {name}
        if name in seen:
            return set()
        seen.add(name)
        out = set()
        for member in groups[name]:
            out |= expand(member, seen)
        return out

    allowed = set()
    for line in filters:
        if line.startswith("~"):
            continue  # deny lists only narrow; the allow list is what we check against
        for word in line.split():
            allowed |= expand(word, set())
    return allowed


def traced_syscalls(trace):
    names = set()
    with open(trace, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = re.sub(r"^\d+\s+", "", line)
            m = re.match(r"<\.\.\. (\w+) resumed>", line) or re.match(r"(\w+)\(", line)
            if m:
                names.add(m.group(1))
    return names


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--blksnapd", required=True)
    ap.add_argument("--blksnap", required=True)
    ap.add_argument("--unit", required=True)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("skip: needs root")
        return SKIP
    for tool in ("strace", "setpriv", "mkfs.ext4", "systemd-analyze", "mount"):
        if not shutil.which(tool):
            print(f"skip: no {tool}")
            return SKIP
    for dev in ("/dev/loop-control", "/dev/fuse"):
        if not os.path.exists(dev):
            print(f"skip: no {dev}")
            return SKIP

    unit = unit_settings(args.unit)
    caps = unit["CapabilityBoundingSet"][0].split()
    bounding = "-all," + ",".join("+" + c.lower().removeprefix("cap_") for c in caps)
    umask = int(unit.get("UMask", ["0022"])[0], 8)
    sandbox = ["setpriv", f"--bounding-set={bounding}"]
    if unit.get("NoNewPrivileges", ["no"])[0] == "yes":
        sandbox.append("--no-new-privs")
    allowed = allowed_syscalls(unit["SystemCallFilter"], syscall_groups())

    work = tempfile.mkdtemp(prefix="blksnap-hardened.")
    mounts, daemon, ok, backing = [], None, False, None
    ctl = os.path.join(work, "ctl.sock")
    pidfile = os.path.join(work, "pid")

    def stop_daemon():  # SIGTERM to blksnapd itself: strace would detach on its own SIGTERM
        with open(pidfile) as f:
            os.kill(int(f.read()), signal.SIGTERM)

    def cli(*a):
        r = subprocess.run([args.blksnap, "--control", ctl, "--json", *a], capture_output=True,
                           text=True)
        if r.returncode != 0:
            raise RuntimeError(f"blksnap {' '.join(a)}: {r.stderr.strip()}")
        return json.loads(r.stdout) if r.stdout.strip() else {}

    def mount(dev, where, *opts):
        os.makedirs(where, exist_ok=True)
        subprocess.run(["mount", *opts, dev, where], check=True)
        mounts.append(where)

    def umount(where):
        subprocess.run(["umount", where], check=True)
        mounts.remove(where)

    try:
        img = os.path.join(work, "img")
        with open(img, "wb") as f:
            f.truncate(64 << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", img], check=True)
        trace = os.path.join(work, "trace")
        old_umask = os.umask(umask)
        daemon = subprocess.Popen(
            sandbox + ["strace", "-f", "-qq", "-o", trace, args.blksnapd, "--state-dir",
                       os.path.join(work, "state"), "--control", ctl, "--nbd-unix",
                       os.path.join(work, "nbd.sock"), "--fuse-dir", os.path.join(work, "dev"),
                       "--log-file", os.path.join(work, "log"), "--pidfile", pidfile])
        os.umask(old_umask)
        for _ in range(300):  # the pid is written once the control socket listens
            if os.path.exists(pidfile) and os.path.getsize(pidfile) > 0:
                break
            if daemon.poll() is not None:
                raise RuntimeError(f"blksnapd exited with {daemon.returncode} at start")
            time.sleep(0.1)
        loop = cli("attach", img, "--name", "vm", "--loop")["loop"]
        # A block device too (opened with O_DIRECT): an outside loop device over a second file.
        img2 = os.path.join(work, "img2")
        with open(img2, "wb") as f:
            f.truncate(16 << 20)
        backing = subprocess.run(["losetup", "-f", "--show", img2], capture_output=True,
                                 text=True, check=True).stdout.strip()
        cli("attach", backing, "--name", "blk")
        mount(loop, os.path.join(work, "mnt"))
        with open(os.path.join(work, "mnt", "a"), "w") as f:
            f.write("one")
        os.sync()
        snap = cli("snapshot", "create", "--storage", work, "--limit", "32M", "vm", "blk",
                   "--loop")["id"]
        took = cli("snapshot", "take", snap)
        if took.get("warnings"):
            raise RuntimeError(f"take warned: {took['warnings']}")
        with open(os.path.join(work, "mnt", "a"), "w") as f:
            f.write("two")
        os.sync()
        image = cli("snapshot", "info", snap)["devices"][0]["image"]["loop"]
        mount(image, os.path.join(work, "snap"), "-o", "ro,noload")
        with open(os.path.join(work, "snap", "a")) as f:
            seen = f.read()
        if seen != "one":
            raise RuntimeError(f"the snapshot image reads {seen!r}, not 'one'")
        umount(os.path.join(work, "snap"))
        cli("snapshot", "destroy", snap)
        umount(os.path.join(work, "mnt"))
        cli("detach", "vm")
        cli("detach", "blk")
        stop_daemon()
        if daemon.wait(timeout=60) != 0:  # strace exits with blksnapd's status
            raise RuntimeError(f"blksnapd exited with {daemon.returncode}")
        daemon = None
        used = traced_syscalls(trace)
        missing = sorted(used - allowed)
        print(f"{len(used)} system calls used, all but {missing} in SystemCallFilter "
              f"({len(allowed)} allowed); capabilities {bounding}; umask {umask:04o}")
        if missing:
            raise RuntimeError(f"SystemCallFilter= of {args.unit} lacks {missing}")
        ok = True
    except Exception as e:  # report and clean up
        print(f"FAIL: {e}")
        log = os.path.join(work, "log")
        if os.path.exists(log):
            print(open(log, encoding="utf-8", errors="replace").read()[-3000:])
    finally:
        for where in reversed(mounts):
            subprocess.run(["umount", "-l", where])
        if daemon is not None:
            try:
                stop_daemon()
            except (OSError, ValueError):
                daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
        if backing:
            subprocess.run(["losetup", "-d", backing])
        shutil.rmtree(work, ignore_errors=True)
    print("ok" if ok else "failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
