#!/usr/bin/env bash
# Purpose: snapshots taken and destroyed on a ublk front while fio writes to it with
# verification: the writes never fail or corrupt, and every image holds exactly the data of its
# take instant (checked with the self-checking sector pattern), read through its own ublk device.
# Algorithm (inside the VM): start blksnapd; attach a 256 MiB sparse file with --ublk; stamp the
# first 16 MiB of /dev/ublkbN with pattern seq 1; start fio (4k random writes, QD16, crc32c
# verify) on [64 MiB, 192 MiB) of the same device; three rounds while fio runs: snapshot create
# --ublk + take, stamp the live 16 MiB with seq r+1, the image's ublk device must verify seq r
# and the live device seq r+1, destroy (the image device vanishes); fio exits 0 with err=0 and
# verifies; no kernel I/O error; detach: the device vanishes.
. "$(dirname "$0")/lib.sh"
PATTERN=$BUILD/src/testing/blksnap-pattern
[ -x "$PATTERN" ] || fail "$PATTERN not built"

truncate -s 256M "$WORK/vol.img"
mkdir -p "$WORK/storage"
start_daemon
DEV=$(jget "$(bs --json attach "$WORK/vol.img" --name vol --ublk)" 'j["ublk"]')
[ -b "$DEV" ] || fail "attach --ublk gave '$DEV'"
"$PATTERN" write "$DEV" --length 16M --seq 1 --direct || fail "stamp seq 1"

fio --name=snapio --filename="$DEV" --offset=64M --size=128M --direct=1 --ioengine=libaio \
  --iodepth=16 --rw=randwrite --bs=4k --verify=crc32c --verify_fatal=1 --do_verify=1 \
  --eta=never >"$WORK/fio.out" 2>&1 &
fio_pid=$!
for r in 1 2 3; do
  kill -0 $fio_pid 2>/dev/null || { cat "$WORK/fio.out"; fail "fio ended before round $r"; }
  ID=$(bs snapshot create --storage "$WORK/storage" --limit 0 --ublk vol) || fail "create $r"
  bs snapshot take "$ID" >/dev/null || fail "take $r"
  IMG=$(jget "$(bs --json snapshot info "$ID")" 'j["devices"][0]["image"]["ublk"]')
  [ -b "$IMG" ] || fail "round $r: image ublk device '$IMG'"
  "$PATTERN" write "$DEV" --length 16M --seq $((r + 1)) --direct || fail "stamp seq $((r + 1))"
  "$PATTERN" verify "$IMG" --length 16M --seq $r --direct || fail "round $r: image is not seq $r"
  "$PATTERN" verify "$DEV" --length 16M --seq $((r + 1)) --direct || fail "round $r: live data"
  bs snapshot destroy "$ID" >/dev/null || fail "destroy $r"
  wait_gone "$IMG"
  log "round $r: image $IMG held the take-time data"
done
rc=0; wait $fio_pid || rc=$?
grep -E "err=|WRITE:|READ:" "$WORK/fio.out" || true
[ "$rc" = 0 ] || { cat "$WORK/fio.out"; fail "fio failed (status $rc)"; }
grep -q "err= 0" "$WORK/fio.out" || fail "fio reported errors"
dmesg | grep -iE "I/O error.*ublkb" && fail "kernel logged I/O errors on a ublk device"
bs detach vol >/dev/null || fail "detach"
wait_gone "$DEV"
stop_daemon
echo "PASS daemon ublk fio + snapshots"
