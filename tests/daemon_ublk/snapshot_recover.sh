#!/usr/bin/env bash
# Purpose (issue 15, guarantee 1 and 2 for ublk images): a durable snapshot's ublk image survives
# a kill -9 of blksnapd like a ublk device front does: a reader of /dev/ublkbN (the image) sees
# no error across the crash and reads the take's data; after a clean stop the image comes back
# on a ublk device; destroy removes the image device and the storage file.
# Algorithm (inside the VM): start blksnapd; attach a 256 MiB sparse file with --ublk; stamp all
# of it with pattern seq 1; snapshot create --ublk (default durability: crash) + take; stamp the
# first 128 MiB of the device with seq 2 (copy-on-write of half the device). A reader loops
# `blksnap-pattern verify --direct --seq 1` over the whole image device until told to stop (exit
# 1 at the first failed pass). Once the image device has served reads, kill -9 blksnapd: both
# nodes stay; start again on the same state dir: the snapshot is listed with recovered_from
# "daemon-crash", state taken, its image on the same /dev/ublkbN; the restart report counts 2
# ublk fronts recovered and no failure; the reader's passes all succeeded (at least one after
# the restart); no kernel I/O error on the image. The device reads seq 2 then seq 1. SIGTERM,
# start: recovered_from "clean-stop", the image on a ublk device again, verifies seq 1 (whole
# device); stamp the second half of the device with seq 3 and the image still verifies seq 1;
# destroy: the image node and blksnap-<id>.diff are gone; detach; SIGTERM.
. "$(dirname "$0")/lib.sh"
PATTERN=$BUILD/src/testing/blksnap-pattern
[ -x "$PATTERN" ] || fail "$PATTERN not built"

truncate -s 256M "$WORK/vol.img"
mkdir -p "$WORK/storage"
start_daemon
DEV=$(jget "$(bs --json attach "$WORK/vol.img" --name vol --ublk)" 'j["ublk"]')
[ -b "$DEV" ] || fail "attach --ublk gave '$DEV'"
"$PATTERN" write "$DEV" --seq 1 --direct || fail "stamp seq 1"
ID=$(bs snapshot create --storage "$WORK/storage" --limit 0 --ublk vol) || fail "snapshot create"
bs snapshot take "$ID" >/dev/null || fail "take"
info=$(bs --json snapshot info "$ID") || fail "snapshot info"
IMG=$(jget "$info" 'j["devices"][0]["image"]["ublk"]')
[ -b "$IMG" ] || fail "no image ublk device ('$IMG')"
[ "$(jget "$info" 'j["durability"]')" = crash ] || fail "default durability is not crash: $info"
FILE=$(jget "$info" 'j["storage"]["file"]')
[ "$FILE" = "$WORK/storage/blksnap-$ID.diff" ] && [ -f "$FILE" ] || fail "storage file '$FILE'"
"$PATTERN" write "$DEV" --length 128M --seq 2 --direct || fail "stamp seq 2"
log "snapshot $ID, image on $IMG, storage $FILE"

# The reader: whole-image verify passes until $WORK/stop exists; each pass logged.
(
  n=0
  while [ ! -e "$WORK/stop" ]; do
    n=$((n + 1))
    "$PATTERN" verify "$IMG" --seq 1 --direct || { echo "reader pass $n failed"; exit 1; }
    echo "$n" >>"$WORK/passes"
  done
) &
reader=$!
stat=/sys/block/${IMG#/dev/}/stat
for _ in $(seq 600); do
  [ "$(awk '{print $1}' "$stat")" -gt 64 ] && break
  kill -0 $reader 2>/dev/null || break
  sleep 0.1
done
kill -0 $reader 2>/dev/null || fail "the reader ended before the kill"
log "kill -9 blksnapd $DAEMON_PID while the image is read"
kill9_daemon
[ -b "$IMG" ] || fail "$IMG vanished after blksnapd was killed"
before=$(wc -l <"$WORK/passes" 2>/dev/null || echo 0)
sleep 1
start_daemon
info=$(bs --json snapshot info "$ID") || fail "the snapshot is gone after kill -9"
log "after kill -9: $info"
[ "$(jget "$info" 'j["recovered_from"]')" = daemon-crash ] || fail "recovered_from: $info"
[ "$(jget "$info" 'j["state"]')" = taken ] || fail "state: $info"
[ "$(jget "$info" 'j["devices"][0]["image"]["ublk"]')" = "$IMG" ] ||
  fail "the image is not on $IMG any more: $info"
st=$(bs --json status)
[ "$(jget "$st" 'j["daemon"]["restart"]["ublk_recovered"]')" = 2 ] ||
  fail "status: not 2 ublk fronts recovered: $st"
[ "$(jget "$st" 'len(j["daemon"]["restart"]["failed"])')" = 0 ] || fail "status: failures: $st"
for _ in $(seq 1200); do
  [ "$(wc -l <"$WORK/passes" 2>/dev/null || echo 0)" -gt $((before + 1)) ] && break
  kill -0 $reader 2>/dev/null || break
  sleep 0.1
done
touch "$WORK/stop"
rc=0; wait $reader || rc=$?
[ "$rc" = 0 ] || fail "the image reader failed across the restart"
passes=$(wc -l <"$WORK/passes")
[ "$passes" -gt $((before + 1)) ] || fail "the reader made no whole pass after the restart"
log "the reader verified the image $passes times, $((passes - before)) after the kill"
dmesg | grep -iE "I/O error.*ublkb${IMG#/dev/ublkb}" && fail "kernel I/O errors on $IMG"
"$PATTERN" verify "$DEV" --length 128M --seq 2 --direct || fail "the device lost seq 2"
"$PATTERN" verify "$DEV" --offset 128M --seq 1 --direct || fail "the device lost seq 1"

stop_daemon
wait_gone "$IMG"
[ -f "$FILE" ] || fail "a clean stop removed the storage file"
start_daemon
info=$(bs --json snapshot info "$ID") || fail "the snapshot is gone after a clean stop"
[ "$(jget "$info" 'j["recovered_from"]')" = clean-stop ] || fail "recovered_from: $info"
IMG=$(jget "$info" 'j["devices"][0]["image"]["ublk"]')
[ -b "$IMG" ] || fail "no image ublk device after the clean restart ('$IMG')"
DEV=$(jget "$(bs --json devices)" 'j["devices"][0]["ublk"]')
"$PATTERN" verify "$IMG" --seq 1 --direct || fail "the image after the clean restart"
"$PATTERN" write "$DEV" --offset 128M --seq 3 --direct || fail "stamp seq 3"
"$PATTERN" verify "$IMG" --seq 1 --direct || fail "the recovered snapshot did not preserve seq 1"
bs snapshot destroy "$ID" >/dev/null || fail "destroy"
wait_gone "$IMG"
[ ! -e "$FILE" ] || fail "destroy left $FILE"
bs detach vol >/dev/null || fail "detach"
wait_gone "$DEV"
stop_daemon
echo "PASS daemon ublk snapshot recover"
