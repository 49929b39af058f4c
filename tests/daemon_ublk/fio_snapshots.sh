#!/usr/bin/env bash
# Purpose: snapshots taken and destroyed on a ublk front while fio writes to it with
# verification: the writes never fail or corrupt, and every image holds exactly the data of its
# take instant (checked with the self-checking sector pattern), read through its own ublk device.
# Algorithm (inside the VM): start blksnapd; attach a 256 MiB sparse file with --ublk; stamp the
# first 16 MiB of /dev/ublkbN with pattern seq 1; in the background, run fio jobs back to back
# (4k random writes, QD16, crc32c verify of what each wrote) on [64 MiB, 128 MiB) of the same
# device until told to stop, so writes go on during every round whatever the speed; three
# rounds: snapshot create --ublk + take, stamp the live 16 MiB with seq r+1, the image's ublk
# device must verify seq r and the live device seq r+1, destroy (the image device vanishes);
# stop the fio loop: every fio job exited 0 with err=0 (verified); no kernel I/O error;
# detach: the device vanishes.
. "$(dirname "$0")/lib.sh"
PATTERN=$BUILD/src/testing/blksnap-pattern
[ -x "$PATTERN" ] || fail "$PATTERN not built"

truncate -s 256M "$WORK/vol.img"
mkdir -p "$WORK/storage"
start_daemon
DEV=$(jget "$(bs --json attach "$WORK/vol.img" --name vol --ublk)" 'j["ublk"]')
[ -b "$DEV" ] || fail "attach --ublk gave '$DEV'"
"$PATTERN" write "$DEV" --length 16M --seq 1 --direct || fail "stamp seq 1"

# fio jobs back to back until $WORK/stop exists; exit status 1 at the first failed job.
(
  n=0
  while [ ! -e "$WORK/stop" ]; do
    n=$((n + 1))
    fio --name=snapio$n --filename="$DEV" --offset=64M --size=64M --direct=1 --ioengine=libaio \
      --iodepth=16 --rw=randwrite --bs=4k --verify=crc32c --verify_fatal=1 --do_verify=1 \
      --randseed=$n --eta=never >"$WORK/fio.$n.out" 2>&1 || { echo "fio job $n failed"; exit 1; }
    grep -q "err= 0" "$WORK/fio.$n.out" || { echo "fio job $n reported errors"; exit 1; }
  done
  echo "$n fio jobs passed"
) &
fio_pid=$!
for r in 1 2 3; do
  kill -0 $fio_pid 2>/dev/null || { cat "$WORK"/fio.*.out; fail "the fio loop ended before round $r"; }
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
touch "$WORK/stop"
rc=0; wait $fio_pid || rc=$?
grep -hE "err=|WRITE:|READ:" "$WORK"/fio.*.out || true
[ "$rc" = 0 ] || { cat "$WORK"/fio.*.out; fail "fio failed during the snapshots"; }
dmesg | grep -iE "I/O error.*ublkb" && fail "kernel logged I/O errors on a ublk device"
bs detach vol >/dev/null || fail "detach"
wait_gone "$DEV"
stop_daemon
echo "PASS daemon ublk fio + snapshots"
