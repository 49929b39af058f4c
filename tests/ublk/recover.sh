#!/usr/bin/env bash
# Purpose: user recovery. kill -9 of the server while fio writes (with crc32c verification) to
# the ublk device or to a file on ext4/xfs on it; a new server started with --recover DEV_ID
# re-attaches, in-flight I/O is re-issued and fio completes and verifies with no error.
# Algorithm (inside the VM), MODE = $2 (raw|ext4|xfs): serve a 512 MiB sparse file with 2
# hardware queues; for ext4/xfs mkfs and mount; start fio (64 MiB of 4k random writes, QD32,
# capped at 2000 write IOPS so the write phase lasts >= 8 s on fast machines too, verify
# crc32c) in the background; after 3 s check fio still runs and kill -9 the server; the
# /dev/ublkbN node must stay; start the server with --recover DEV_ID (same device path); wait
# for fio: exit status 0; for ext4/xfs unmount and fsck must be clean; that server then
# abandons the device on SIGTERM (Device::Abandon), the node must stay, a third server
# recovers it and reads it; stop the server, the device must vanish.
. "$(dirname "$0")/lib.sh"
MODE=${2:?usage: recover.sh BUILD_DIR raw|ext4|xfs}

truncate -s 512M "$WORK/backing"
mkdir -p "$WORK/mnt"
start_server --queues 2 "$WORK/backing"
old_dev=$DEV
if [ "$MODE" = raw ]; then
  target=$DEV; fio_size=64M
else
  mkfs."$MODE" -q "$DEV" >/dev/null 2>&1 || mkfs."$MODE" -f -q "$DEV" || fail "mkfs.$MODE"
  mount -t "$MODE" "$DEV" "$WORK/mnt" || fail "mount"
  target=$WORK/mnt/fio.dat; fio_size=64M
fi

fio --name=recover --filename="$target" --size=$fio_size --direct=1 --ioengine=libaio \
  --iodepth=32 --rw=randwrite --bs=4k --rate_iops=,2000 --verify=crc32c --verify_fatal=1 --do_verify=1 --eta=never \
  >"$WORK/fio.out" 2>&1 &
fio_pid=$!
sleep 3
kill -0 $fio_pid 2>/dev/null || { cat "$WORK/fio.out"; fail "fio ended before the kill (too fast?)"; }
log "kill -9 server $SERVER_PID during fio"
kill -9 "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
SERVER_PID=
[ -b "$old_dev" ] || fail "$old_dev vanished after the server was killed"
sleep 1
start_server --recover "$DEV_ID" --abandon-on-term "$WORK/backing"
[ "$DEV" = "$old_dev" ] || fail "recovered device $DEV is not $old_dev"
rc=0; wait $fio_pid || rc=$?
cat "$WORK/fio.out" | grep -E "err=|WRITE:|READ:" || true
[ "$rc" = 0 ] || { cat "$WORK/fio.out"; fail "fio failed across the recovery (status $rc)"; }
grep -q "err= 0" "$WORK/fio.out" || fail "fio reported errors"

if [ "$MODE" != raw ]; then
  umount "$WORK/mnt"
  case $MODE in
    ext4) e2fsck -fn "$DEV" >"$WORK/fsck.out" 2>&1 || { cat "$WORK/fsck.out"; fail "e2fsck"; } ;;
    xfs) xfs_repair -n "$DEV" >"$WORK/fsck.out" 2>&1 || { cat "$WORK/fsck.out"; fail "xfs_repair"; } ;;
  esac
fi
dmesg | grep -iE "I/O error.*ublkb" && fail "kernel logged I/O errors on the ublk device"

log "third server: graceful Abandon (SIGTERM with --abandon-on-term) and --recover"
kill -TERM "$SERVER_PID"; wait "$SERVER_PID" || fail "abandoning server exit status $?"
SERVER_PID=
[ -b "$old_dev" ] || fail "$old_dev vanished after Abandon()"
start_server --recover "$DEV_ID" "$WORK/backing"
dd if="$DEV" of=/dev/null bs=1M count=16 iflag=direct status=none || fail "read after idle recovery"
stop_server
echo "PASS recover $MODE"
