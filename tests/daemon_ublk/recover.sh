#!/usr/bin/env bash
# Purpose: a blksnapd killed with SIGKILL during writes leaves its ublk front in place (I/O
# waits); blksnapd restarted on the same state dir re-attaches the recorded device, recovers
# the ublk device (same /dev/ublkbN), and the writes complete with no error seen by the file
# system; the restart is reported (durable CBT: the same generation; snapshots gone, the dead snapshot's
# ublk image removed); a clean SIGTERM afterwards removes the ublk device but keeps the record,
# and the next start brings the device back on a new ublk device (not a ublk Recover).
# Algorithm (inside the VM): start blksnapd; attach a 512 MiB sparse file with --ublk; mkfs.ext4
# and mount it; note the CBT generation; snapshot create --ublk + take (its image is a second
# ublk device, so the crash also leaves a dead image behind); fio 4k random writes QD32 with
# crc32c verify on a 64 MiB file in the background; once 1000 writes reached the device (of the
# ~16000 fio issues; fio must still run) kill -9
# blksnapd: the device node stays; restart blksnapd on the same state dir: `devices` shows the
# same /dev/ublkbN, restored, in the same CBT generation (durable, kept through the kill); status reports the restart (one ublk front
# recovered, nothing failed, the image device removed) and no snapshot; the image node is
# gone; fio exits 0 with err=0 and verifies; no kernel I/O error on the ublk device; unmount,
# e2fsck clean; SIGTERM: exit clean, device gone, the record kept ("clean_stop": true); start
# again: vol is back on a ublk device (restart "after": "clean-stop", no ublk front recovered),
# with its NBD export, in the same CBT generation (recovered_from "clean-stop"), e2fsck clean;
# detach: the device and the records are gone; SIGTERM.
. "$(dirname "$0")/lib.sh"

truncate -s 512M "$WORK/vol.img"
mkdir -p "$WORK/mnt" "$WORK/storage"
start_daemon
a=$(bs --json attach "$WORK/vol.img" --name vol --ublk) || fail "attach --ublk"
DEV=$(jget "$a" 'j["ublk"]')
GEN=$(jget "$a" 'j["cbt"]["generation_id"]')
[ -b "$DEV" ] || fail "no ublk device"
log "vol on $DEV, generation $GEN"
mkfs.ext4 -q "$DEV" || fail "mkfs.ext4"
mount -t ext4 "$DEV" "$WORK/mnt" || fail "mount"

# A memory snapshot: its image device is removed at the restart (durable ones come back).
ID=$(bs snapshot create --storage "$WORK/storage" --limit 0 --ublk --durability memory vol) ||
  fail "snapshot create"
bs snapshot take "$ID" >/dev/null || fail "take"
IMG=$(jget "$(bs --json snapshot info "$ID")" 'j["devices"][0]["image"]["ublk"]')
[ -b "$IMG" ] || fail "no image ublk device"
log "snapshot $ID, image on $IMG"

fio --name=recover --filename="$WORK/mnt/fio.dat" --size=64M --direct=1 --ioengine=libaio \
  --iodepth=32 --rw=randwrite --bs=4k --verify=crc32c --verify_fatal=1 --do_verify=1 \
  --eta=never >"$WORK/fio.out" 2>&1 &
fio_pid=$!
stat=/sys/block/${DEV#/dev/}/stat
base=$(awk '{print $5}' "$stat")
for _ in $(seq 600); do
  [ "$(awk '{print $5}' "$stat")" -gt $((base + 1000)) ] && break
  kill -0 $fio_pid 2>/dev/null || break
  sleep 0.1
done
kill -0 $fio_pid 2>/dev/null || { cat "$WORK/fio.out"; fail "fio ended before the kill"; }
log "kill -9 blksnapd $DAEMON_PID during fio"
kill9_daemon
[ -b "$DEV" ] || fail "$DEV vanished after blksnapd was killed"
[ -s "$STATE/devices.json" ] || fail "the device records vanished with the kill"
sleep 1
start_daemon
d=$(bs --json devices) || fail "devices after restart"
log "devices: $d"
[ "$(jget "$d" 'j["devices"][0]["ublk"]')" = "$DEV" ] || fail "not re-attached to $DEV"
[ "$(jget "$d" 'j["devices"][0]["restored"]')" = true ] || fail "device not marked restored"
# Durable CBT: a kill -9 on the same boot keeps the mapped maps, so the generation goes on.
[ "$(jget "$d" 'j["devices"][0]["cbt"]["generation_id"]')" = "$GEN" ] ||
  fail "CBT generation changed across a kill -9 (durable CBT lost it)"
[ "$(jget "$d" 'j["devices"][0]["cbt"]["durable"]')" = true ] || fail "CBT not durable"
st=$(bs --json status)
[ "$(jget "$st" 'j["daemon"]["restart"]["ublk_recovered"]')" = 1 ] || fail "status: $st"
[ "$(jget "$st" 'len(j["daemon"]["restart"]["failed"])')" = 0 ] || fail "status: failures"
[ "$(jget "$st" 'len(j["snapshots"])')" = 0 ] || fail "a snapshot survived the restart"
jget "$st" 'j["daemon"]["restart"]["notes"]' | grep -q "ublkb${IMG#/dev/ublkb} is gone: device removed" ||
  fail "status does not report the removed image device: $st"
bs status | grep -q "snapshots from before the restart are gone" || fail "human status note"
wait_gone "$IMG"

rc=0; wait $fio_pid || rc=$?
grep -E "err=|WRITE:|READ:" "$WORK/fio.out" || true
[ "$rc" = 0 ] || { cat "$WORK/fio.out"; fail "fio failed across the restart (status $rc)"; }
grep -q "err= 0" "$WORK/fio.out" || fail "fio reported errors"
dmesg | grep -iE "I/O error.*ublkb${DEV#/dev/ublkb}" && fail "kernel I/O errors on $DEV"
umount "$WORK/mnt"
e2fsck -fn "$DEV" >"$WORK/fsck.out" 2>&1 || { cat "$WORK/fsck.out"; fail "e2fsck"; }
stop_daemon
wait_gone "$DEV"
rec=$(cat "$STATE/devices.json" 2>/dev/null) || fail "SIGTERM dropped the device records"
[ "$(jget "$rec" 'j.get("clean_stop")')" = true ] || fail "records not marked clean_stop: $rec"
[ "$(jget "$rec" '[(d["name"], d["ublk_dev_id"]) for d in j["devices"]]')" = "[('vol', -1)]" ] ||
  fail "records after SIGTERM: $rec"
start_daemon
d=$(bs --json devices) || fail "devices after the clean restart"
log "devices after the clean restart: $d"
[ "$(jget "$d" '[x["name"] for x in j["devices"]]')" = "['vol']" ] || fail "vol not re-attached"
[ "$(jget "$d" 'j["restart"]["after"]')" = clean-stop ] || fail "restart not after clean-stop"
[ "$(jget "$d" 'j["restart"]["ublk_recovered"]')" = 0 ] || fail "a ublk Recover after a clean stop"
[ "$(jget "$d" 'j["devices"][0]["cbt"]["generation_id"]')" = "$GEN" ] ||
  fail "CBT generation changed across a clean stop"
[ "$(jget "$d" 'j["devices"][0]["cbt"]["recovered_from"]')" = clean-stop ] ||
  fail "recovered_from is not clean-stop"
[ "$(jget "$d" 'j["devices"][0]["nbd"]')" != null ] || fail "no NBD export after the restart"
DEV=$(jget "$d" 'j["devices"][0]["ublk"]')
[ -b "$DEV" ] || fail "vol re-attached without a ublk device ('$DEV')"
e2fsck -fn "$DEV" >"$WORK/fsck.out" 2>&1 || { cat "$WORK/fsck.out"; fail "e2fsck after restart"; }
bs detach vol >/dev/null || fail "detach after the clean restart"
wait_gone "$DEV"
[ ! -e "$STATE/devices.json" ] || fail "device records left after the last detach"
stop_daemon
echo "PASS daemon ublk recover"
