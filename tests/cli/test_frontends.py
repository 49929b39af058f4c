#!/usr/bin/python3
# Purpose: block-device front selection and crash restart on a host without ublk: "ublk" keys
# are null everywhere, --ublk fails with one clear error line and changes nothing, --frontend
# auto falls back to fuse-loop (--blockdev gives a loop device), --frontend ublk refuses to
# start; after a kill -9 a restarted daemon re-attaches the recorded devices (durable CBT: the
# same generation; the restart reported by devices and status), reports a recorded device it cannot re-attach
# (and `detach` drops it), moves unreadable records aside; a clean SIGTERM keeps the records and
# the next start re-attaches the devices ("after": "clean-stop"); detach forgets a device.
#
# Algorithm: start a daemon (FUSE when root); status says ublk unavailable, frontend fuse-loop;
# attach two sparse files, one with --blockdev (loop with FUSE, else ENOTSUP error and nothing
# attached); JSON of attach, devices, snapshot info and status carry "ublk": null; attach
# --ublk and snapshot create --ublk fail with exit 1, one "blksnap: error: ... ublk ..." line,
# nothing on stdout, the state unchanged; stamp the sector pattern through a front; kill -9
# the daemon; a start that fails (bad pidfile) leaves the records; remove one attached file; start a daemon on the same state dir: the other device
# is back (restored, same CBT generation, pattern intact through its front, a loop device again if
# it had one), status names the missing one under restart.failed and the human status says
# snapshots are gone; detach of the failed one drops it; SIGTERM: devices.json holds a alone,
# "clean_stop": true; start again: a is back (restored after a clean stop, same generation,
# recovered_from "clean-stop", pattern intact, its loop device if it had one); detach a: the
# records are gone, and a SIGTERM leaves none; a garbage devices.json is moved to
# devices.json.bad and reported; --frontend ublk: exit 1.
import json
import os
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from blksnap_cli_lib import Daemon, Failures, parse_args, verify_front, write_front

MiB = 1 << 20


def main():
    args = parse_args(sys.argv)
    t = Failures()
    if os.path.exists("/dev/ublk-control"):
        print("SKIP: this host has ublk (/dev/ublk-control); these checks are for hosts without it "
              "(tests/daemon_ublk covers ublk in the VM)")
        sys.exit(77)
    daemons = []
    try:
        run(args, t, daemons)
    except Exception as e:
        t.check(False, "unexpected exception: %r\n%s" % (e, "\n".join(d.log_text() for d in daemons)))
    finally:
        for d in daemons:
            d.cleanup()
    t.done()


def pattern(d, name, verb):
    """Stamps (verb "write") and/or verifies the sector pattern on the first 4 MiB of the
    device's front: the FUSE file, else the NBD export (python3-libnbd, else nbdcopy of a scratch
    file). Returns whether the front reads back the pattern (after "write": what was stamped)."""
    dev = [x for x in d.cli_json("devices")["devices"] if x["name"] == name][0]
    try:
        if not dev.get("fuse"):
            import nbd  # noqa: F401
        if verb == "write":
            write_front(d, dev, 0, 4 * MiB, 7)
        return verify_front(d, dev, 0, 4 * MiB, 7)
    except ImportError:
        pass
    scratch = os.path.join(d.tmp, "scratch-nbdcopy")
    if verb == "write":
        with open(scratch, "wb") as f:
            f.truncate(4 * MiB)
        subprocess.run([d.args["pattern"], "write", scratch, "--seq", "7"], check=True)
        subprocess.run(["nbdcopy", "--destination-is-zero", scratch, dev["nbd"]], check=True)
        os.unlink(scratch)
    subprocess.run(["nbdcopy", dev["nbd"], scratch], check=True)
    with open(scratch, "r+b") as f:
        f.truncate(4 * MiB)
    return subprocess.run([d.args["pattern"], "verify", scratch, "--seq", "7"]).returncode == 0


def run(args, t, daemons):
    d = Daemon(args).start()
    daemons.append(d)
    st = d.cli_json("status")["daemon"]
    t.check(st.get("ublk") is False and st.get("frontend") == "fuse-loop",
            "no ublk here: status says ublk unavailable, frontend fuse-loop (auto fell back)")
    t.check(st.get("restart") is None, "fresh start: no restart report")

    a_path = d.make_image("a.img", 32 * MiB)
    b_path = d.make_image("b.img", 32 * MiB)
    a = d.cli_json("attach", a_path, "--name", "a")
    t.check("ublk" in a and a["ublk"] is None, "attach --json: \"ublk\": null")
    rc, out, err = d.cli("attach", b_path, "--name", "b", "--blockdev")
    if d.fuse:
        b = json.loads(d.cli("--json", "devices")[1])["devices"][1]
        t.check(rc == 0 and b["loop"] and b["loop"].startswith("/dev/loop") and b["ublk"] is None,
                "--blockdev with --frontend auto and no ublk gives a loop device")
    else:
        t.check(rc == 1 and err.startswith("blksnap: error: ") and "FUSE" in err,
                "--blockdev without FUSE and ublk: clear error (%r)" % err.strip())
        d.cli_json("attach", b_path, "--name", "b")
    devs = d.cli_json("devices")["devices"]
    t.check(all("ublk" in x and x["ublk"] is None for x in devs), "devices --json: \"ublk\": null")
    t.check(all(x.get("restored") is False for x in devs), "devices: not restored")

    before = d.state_snapshot()
    rc, out, err = d.cli("attach", d.make_image("c.img", 16 * MiB), "--name", "c", "--ublk")
    t.check(rc == 1 and out == "" and err.count("\n") == 1 and
            err.startswith("blksnap: error: ") and "ublk" in err,
            "attach --ublk without ublk: one error line (%r)" % err.strip())
    rc, out, err = d.cli("snapshot", "create", "--storage", d.tmp, "--limit", "0", "--ublk", "a")
    t.check(rc == 1 and out == "" and err.count("\n") == 1 and "ublk" in err,
            "snapshot create --ublk without ublk: one error line (%r)" % err.strip())
    t.check(d.state_snapshot() == before, "state unchanged by the failed --ublk requests")

    # A memory snapshot: it dies with the daemon (durable ones: test_durable_snapshots.py).
    sid = d.cli_json("snapshot", "create", "--storage", d.tmp, "--limit", "0",
                     "--durability", "memory", "a")["id"]
    d.cli_json("snapshot", "take", sid)
    info = d.cli_json("snapshot", "info", sid)
    t.check(info["devices"][0]["image"].get("ublk", "missing") is None,
            "snapshot info --json: image \"ublk\": null")
    t.check(all(x.get("ublk", "missing") is None for x in d.cli_json("status")["devices"]),
            "status --json: \"ublk\": null")
    t.check(pattern(d, "a", "write"), "pattern stamped on a's front and read back")
    gen = {x["name"]: x["cbt"]["generation_id"] for x in d.cli_json("devices")["devices"]}
    records = os.path.join(d.state, "devices.json")
    t.check(os.path.exists(records), "device records in the state dir")

    # Crash, lose one backing file, restart on the same state dir.
    d.proc.kill()
    d.proc.wait()
    d.proc = None
    t.check(os.path.exists(records), "records survive kill -9")
    with open(records) as f:
        saved = f.read()
    p = subprocess.run([args["blksnapd"], "--state-dir", d.state, "--control", d.control,
                        "--no-nbd", "--no-fuse", "--pidfile", os.path.join(d.tmp, "no", "pid")],
                       capture_output=True, text=True, timeout=60)
    with open(records) as f:
        t.check(p.returncode == 1 and f.read() == saved,
                "a start that fails (bad pidfile) leaves the records alone")
    os.unlink(b_path)
    d2 = Daemon(args, tmp=d.tmp).start()
    daemons.append(d2)
    devs = d2.cli_json("devices")
    names = [x["name"] for x in devs["devices"]]
    t.check(names == ["a"], "a re-attached, b (file gone) not: %r" % names)
    a2 = devs["devices"][0] if names else {}
    t.check(a2.get("restored") is True and "after a crash" in a2.get("restore_note", ""),
            "a marked restored with a note")
    # Durable CBT: a kill -9 on the same boot keeps every mark in the mapped state file.
    t.check(a2.get("cbt", {}).get("generation_id") == gen["a"] and
            a2.get("cbt", {}).get("durable") is True,
            "a's CBT continues in the same generation after kill -9: %r" % a2.get("cbt"))
    t.check(pattern(d2, "a", "verify"), "pattern intact through a's front after restart")
    st = d2.cli_json("status")
    r = st["daemon"].get("restart") or {}
    failed = r.get("failed", [])
    t.check(len(failed) == 1 and failed[0]["name"] == "b" and failed[0]["path"] == b_path
            and failed[0]["error"], "status reports b as failed to re-attach: %r" % failed)
    t.check(st["snapshots"] == [], "no snapshot survived the restart")
    rc, out, err = d2.cli("status")
    t.check(rc == 0 and "snapshots from before the restart are gone" in out
            and "FAILED to re-attach b" in out, "human status reports the restart")
    rc, out, err = d2.cli("devices")
    t.check(rc == 0 and "after a crash" in out, "human devices reports the restart")
    with open(records) as f:
        t.check("\"b\"" in f.read(), "b's record kept for the next start")
    t.check(d2.cli_json("detach", "b") == {}, "detach drops b's record")
    t.check(d2.cli_json("status")["daemon"]["restart"]["failed"] == [], "b no longer reported")
    a_loop = a2.get("loop")
    t.check(d2.stop() == 0, "SIGTERM: exit 0")
    with open(records) as f:
        kept = json.load(f)
    t.check(kept.get("clean_stop") is True and [x["name"] for x in kept["devices"]] == ["a"],
            "clean stop keeps a's record, marked clean_stop: %r" % kept)

    # The start after a clean stop (an upgrade): a is back by itself, exactly as it was.
    d2b = Daemon(args, tmp=d.tmp).start()
    daemons.append(d2b)
    devs = d2b.cli_json("devices")
    names = [x["name"] for x in devs["devices"]]
    t.check(names == ["a"] and devs["restart"]["after"] == "clean-stop",
            "after a clean stop: a re-attached, restart after clean-stop (%r)" % names)
    a3 = devs["devices"][0] if names else {}
    t.check(a3.get("restored") is True and "clean stop" in a3.get("restore_note", ""),
            "a marked restored after a clean stop (%r)" % a3.get("restore_note"))
    t.check(a3.get("cbt", {}).get("generation_id") == gen["a"] and
            a3.get("cbt", {}).get("recovered_from") == "clean-stop",
            "a's CBT continues: same generation, recovered_from clean-stop (%r)" % a3.get("cbt"))
    t.check(a3.get("nbd", "").startswith("nbd+unix://") and bool(a3.get("loop")) == bool(a_loop),
            "a's fronts are back (nbd %s, loop %s)" % (a3.get("nbd"), a3.get("loop")))
    t.check(pattern(d2b, "a", "verify"), "pattern intact through a's front after a clean restart")
    rc, out, err = d2b.cli("status")
    t.check(rc == 0 and "after a clean stop" in out, "human status reports a clean restart")
    t.check(d2b.cli_json("detach", "a") == {}, "detach a")
    t.check(not os.path.exists(records), "the last detach removes the device records")
    t.check(d2b.stop() == 0, "SIGTERM: exit 0")
    t.check(not os.path.exists(records), "a clean stop with no device leaves no records")

    with open(records, "w") as f:
        f.write("{not json")
    d3 = Daemon(args, tmp=d.tmp).start()
    daemons.append(d3)
    notes = d3.cli_json("status")["daemon"]["restart"]["notes"]
    t.check(os.path.exists(records + ".bad") and any("devices.json.bad" in n for n in notes),
            "garbage records moved aside and reported: %r" % notes)
    d3.stop()

    p = subprocess.run([args["blksnapd"], "--state-dir", os.path.join(d.tmp, "s4"), "--control",
                        os.path.join(d.tmp, "s4.sock"), "--no-nbd", "--no-fuse", "--frontend",
                        "ublk"], capture_output=True, text=True, timeout=60)
    t.check(p.returncode == 1 and "ublk" in p.stderr, "--frontend ublk without ublk: exit 1 (%r)"
            % p.stderr.strip()[-200:])
    p = subprocess.run([args["blksnapd"], "--state-dir", os.path.join(d.tmp, "s5"), "--control",
                        os.path.join(d.tmp, "s5.sock"), "--no-nbd", "--no-fuse", "--frontend",
                        "nbd"], capture_output=True, text=True, timeout=60)
    t.check(p.returncode == 2, "--frontend nbd: usage error")


if __name__ == "__main__":
    main()
