#!/bin/bash
# Purpose: the issue-5 flows through the real daemon and CLI (blksnapd + blksnap): volumes on
# loop devices over the daemon's FUSE files, snapshots taken with their file systems frozen,
# images on their own loop devices, and a clean daemon shutdown.
#
# Usage: daemon_flow.sh SCENARIO BLKSNAPD BLKSNAP [BLKSNAP_PATTERN]. Exit 77 = skipped (not root, no FUSE/loop,
# no mkfs for the file system). Scenarios and their algorithms:
#  standard-ext4 / standard-xfs: attach a 512 MiB file with --loop, mkfs, mount, write files
#    with dd oflag=direct and record sha256; snapshot create --loop + take (the daemon freezes
#    the file system); write more files, delete one pre-take file and fstrim; mount the image read-only (xfs: nouuid) and find
#    exactly the pre-take files; mount it read-write, write files, remount, check them;
#    destroy; unmount the original, fsck clean, remount, every original file intact and no
#    image file in it.
#  two-devices: two volumes in one snapshot with the difference storage on a separate loop
#    block device; both images hold their pre-take files.
#  storage-limit: a 16 MiB limit and heavy overwrites of the original: the snapshot becomes
#    corrupted (state and event), image reads fail, the original fscks clean with all files.
#  destroy-under-load: dd writers on the original file system and readers on the image loop
#    device; destroy while they run: no hang, the original fscks clean with its files.
#  sigterm: with the original and an image on loop devices (nothing mounted), SIGTERM the
#    daemon: it exits 0, no loop device is bound to its FUSE files, the FUSE dir is unmounted,
#    devices.json keeps vol ("clean_stop": true). Start again: vol is back by itself with a new
#    loop device that reads the data written before, restored after a clean stop, in the same
#    CBT generation (recovered_from "clean-stop"); the snapshot is gone.
#  sigterm-mounted: SIGTERM while a file system on the front loop device is mounted and being
#    written: the daemon still exits promptly (0), the writer gets I/O errors instead of
#    hanging, and the loop device unbinds itself once the file system is unmounted.
#  concurrent-writes: sector pattern seq 1 over the front loop device; take; then for a
#    while blksnap-pattern writes seq 2 to the front's first 3/4 and seq 3 to the image's last
#    3/4 at the same time (O_DIRECT, loop devices); afterwards the front holds 2 then 1, the
#    image 1 then 3 (the image never sees seq 2, the front never seq 3).
#  sigkill-restart: write random data through the front loop device (O_DIRECT + fsync) with a
#    snapshot and an image loop device present, SIGKILL the daemon: its loop devices unbind
#    themselves (autoclear), the dead FUSE mount is replaced by a restarted daemon, which
#    re-attaches the volume from its records with a new loop device that reads back the same
#    sha256.
set -euo pipefail
scenario=$1
blksnapd=$2
blksnap=$3
pattern=${4:-}
if [ "$(id -u)" != 0 ] || [ ! -w /dev/fuse ] || [ ! -w /dev/loop-control ]; then exit 77; fi
[ -x /usr/bin/python3 ] || exit 77  # reads the CLI's --json output

. "$(dirname "$0")/../lib/workdir.sh"
blksnap_workdir blksnap-daemon
storage_loop=""
fail() {
  echo "FAIL ($scenario): $*" >&2
  [ -f "$work/daemon.log" ] && tail -20 "$work/daemon.log" >&2
  exit 1
}
bs() { "$blksnap" --json "$@"; }
# ours LOOP: true while LOOP is bound to a file of this test (other processes on the machine
# may grab a freed loop device at once).
ours() {
  local f="/sys/block/${1#/dev/}/loop/backing_file"
  [ -e "$f" ] && case "$(cat "$f" 2>/dev/null)" in "$work"/*) true ;; *) false ;; esac
}

start_daemon() {
  "$blksnapd" --state-dir "$work/state" --control "$BLKSNAP_CONTROL" --no-nbd \
    --fuse-dir "$fuse" --diff-storage-minimum 8M --log-file "$work/daemon.log" &
  daemon_pid=$!
  for _ in $(seq 1 100); do
    [ -S "$BLKSNAP_CONTROL" ] && "$blksnap" version >/dev/null 2>&1 && return 0
    kill -0 "$daemon_pid" 2>/dev/null 2>&1 || fail "daemon died at start"
    sleep 0.1
  done
  fail "daemon not ready"
}

# attach NAME SIZE: a file-backed volume with a loop device; prints the loop device.
attach() {
  truncate -s "$2" "$work/$1.img"
  bs attach "$work/$1.img" --name "$1" --loop | json loop
}
mkfs_cmd() { if [ "$1" = xfs ]; then echo "mkfs.xfs -q -f"; else echo "mkfs.ext4 -q -F"; fi; }
fsck_cmd() { if [ "$1" = xfs ]; then echo "xfs_repair -n"; else echo "e2fsck -fn"; fi; }
# write_files DIR PREFIX COUNT: files of 1-4 MiB with O_DIRECT; sha256 lines to stdout.
write_files() {
  for i in $(seq 0 $(($3 - 1))); do
    dd if=/dev/urandom of="$1/$2$i" bs=1M count=$((1 + i % 4)) oflag=direct status=none
  done
  (cd "$1" && sha256sum "$2"*)
}
check_sums() { (cd "$1" && sha256sum --quiet -c "$2") || fail "checksums differ in $1 ($2)"; }
# snapshot DEVICE... : creates (--loop) and takes a snapshot; prints its id.
snapshot() {
  local storage=$1
  shift
  local id
  # Memory snapshots: these flows check that a snapshot dies with the daemon (issue 15's
  # durable ones are tests/cli/test_durable_snapshots.py).
  id=$(bs snapshot create --storage "$storage" --limit "${limit:-0}" --loop --durability memory \
    "$@" | json id)
  bs snapshot take "$id" >"$work/take.json" || fail "take failed"
  echo "$id"
}
image_loop() { bs snapshot info "$1" | /usr/bin/python3 -S -c 'import json,sys
for d in json.load(sys.stdin)["devices"]:
    if d["name"]==sys.argv[1]: print(d["image"]["loop"] or "")' "$2"; }

start_daemon
mkdir -p "$work/orig" "$work/img" "$work/orig2" "$work/img2" "$work/storage"

case "$scenario" in
standard-ext4 | standard-xfs)
  fs=${scenario#standard-}
  command -v "mkfs.$fs" >/dev/null || exit 77
  uuid_opt=""
  [ "$fs" = xfs ] && uuid_opt=",nouuid"
  loop=$(attach vol 512M)
  [ -b "$loop" ] || fail "attach --loop gave no loop device"
  $(mkfs_cmd "$fs") "$loop"
  mount "$loop" "$work/orig"
  write_files "$work/orig" before 6 >"$work/before.sha"
  id=$(snapshot "$work/storage" vol)
  /usr/bin/python3 -S -c 'import json,sys; t=json.load(open(sys.argv[1])); assert t["frozen_us"] > 0, t' \
    "$work/take.json" || fail "take did not freeze the file system"
  write_files "$work/orig" after 4 >"$work/after.sha"
  # Deleting a pre-take file and trimming sends discards through the tracker, which must
  # preserve the old blocks for the image first.
  rm "$work/orig/before0"
  fstrim "$work/orig"
  grep -v ' before0$' "$work/before.sha" >"$work/kept.sha"
  iloop=$(image_loop "$id" vol)
  [ -b "$iloop" ] || fail "no image loop device"
  mount -o "ro$uuid_opt" "$iloop" "$work/img" || fail "image does not mount read-only"
  check_sums "$work/img" "$work/before.sha"
  [ ! -e "$work/img/after0" ] || fail "post-take file in the image"
  umount "$work/img"
  mount -o "rw$uuid_opt" "$iloop" "$work/img" || fail "image does not mount read-write"
  write_files "$work/img" image 3 >"$work/image.sha"
  umount "$work/img"
  $(fsck_cmd "$fs") "$iloop" >/dev/null 2>&1 || fail "image not clean after read-write use"
  mount -o "ro$uuid_opt" "$iloop" "$work/img"
  check_sums "$work/img" "$work/image.sha"
  check_sums "$work/img" "$work/before.sha"
  umount "$work/img"
  bs snapshot destroy "$id" >/dev/null
  ! ours "$iloop" || fail "image loop left after destroy"
  umount "$work/orig"
  $(fsck_cmd "$fs") "$loop" >/dev/null 2>&1 || fail "original not clean"
  mount -o ro "$loop" "$work/orig"
  check_sums "$work/orig" "$work/kept.sha"
  check_sums "$work/orig" "$work/after.sha"
  [ ! -e "$work/orig/before0" ] || fail "a deleted file came back"
  [ ! -e "$work/orig/image0" ] || fail "an image write leaked into the original"
  umount "$work/orig"
  ;;
two-devices)
  truncate -s 256M "$work/storage.img"
  storage_loop=$(losetup -f --show "$work/storage.img")
  a=$(attach a 128M)
  b=$(attach b 128M)
  mkfs.ext4 -q -F "$a"
  mkfs.ext4 -q -F "$b"
  mount "$a" "$work/orig"
  mount "$b" "$work/orig2"
  write_files "$work/orig" a 4 >"$work/a.sha"
  write_files "$work/orig2" b 4 >"$work/b.sha"
  id=$(snapshot "$storage_loop" a b)
  rm -f "$work"/orig/a* "$work"/orig2/b*
  write_files "$work/orig" a 4 >/dev/null
  write_files "$work/orig2" b 4 >/dev/null
  mount -o ro "$(image_loop "$id" a)" "$work/img"
  mount -o ro "$(image_loop "$id" b)" "$work/img2"
  check_sums "$work/img" "$work/a.sha"
  check_sums "$work/img2" "$work/b.sha"
  umount "$work/img" "$work/img2"
  used=$(bs snapshot info "$id" | json storage.used)
  [ "$used" -gt 0 ] || fail "nothing preserved in the storage"
  bs snapshot destroy "$id" >/dev/null
  umount "$work/orig" "$work/orig2"
  e2fsck -fn "$a" >/dev/null 2>&1 && e2fsck -fn "$b" >/dev/null 2>&1 || fail "originals not clean"
  ;;
storage-limit)
  loop=$(attach vol 256M)
  mkfs.ext4 -q -F "$loop"
  mount "$loop" "$work/orig"
  write_files "$work/orig" before 8 >/dev/null
  limit=16M
  id=$(snapshot "$work/storage" vol)
  iloop=$(image_loop "$id" vol)
  for i in $(seq 0 7); do
    dd if=/dev/urandom of="$work/orig/before$i" bs=1M count=$((1 + i % 4)) oflag=direct \
      conv=notrunc status=none
  done
  write_files "$work/orig" after 12 >/dev/null
  (cd "$work/orig" && sha256sum before* after*) >"$work/all.sha"
  state=""
  for _ in $(seq 1 20); do
    state=$(bs snapshot info "$id" | json state)
    [ "$state" = corrupted ] && break
    bs snapshot wait-event "$id" --timeout 1000 >>"$work/events" || true
  done
  [ "$state" = corrupted ] || fail "snapshot not corrupted (state $state)"
  if dd if="$iloop" of=/dev/null bs=64k count=16 iflag=direct status=none 2>/dev/null; then
    fail "image reads still succeed"
  fi
  bs snapshot destroy "$id" >/dev/null
  umount "$work/orig"
  e2fsck -fn "$loop" >/dev/null 2>&1 || fail "original not clean"
  mount -o ro "$loop" "$work/orig"
  check_sums "$work/orig" "$work/all.sha"
  umount "$work/orig"
  ;;
destroy-under-load)
  loop=$(attach vol 256M)
  mkfs.ext4 -q -F "$loop"
  mount "$loop" "$work/orig"
  write_files "$work/orig" before 4 >"$work/before.sha"
  id=$(snapshot "$work/storage" vol)
  iloop=$(image_loop "$id" vol)
  pids=()
  for w in 0 1; do
    (for n in $(seq 1 30); do
      dd if=/dev/urandom of="$work/orig/load$w" bs=1M count=4 oflag=direct status=none || exit 1
    done) &
    pids+=($!)
  done
  # Ends once the image is gone: reads fail, or the detached loop device reads as empty (size 0,
  # where dd "succeeds" at once and the loop would spin forever).
  (while [ "$(blockdev --getsize64 "$iloop" 2>/dev/null || echo 0)" != 0 ] &&
    dd if="$iloop" of=/dev/null bs=1M count=64 iflag=direct status=none 2>/dev/null; do :; done) &
  reader=$!
  sleep 1
  # A reader is using the image: --force, as for any destroy while an image may be in use.
  bs snapshot destroy "$id" --force >/dev/null 2>&1 || fail "destroy --force under load failed"
  for p in "${pids[@]}"; do wait "$p" || fail "a writer on the original failed"; done
  wait "$reader" || true  # ends once the image is gone
  umount "$work/orig"
  e2fsck -fn "$loop" >/dev/null 2>&1 || fail "original not clean"
  mount -o ro "$loop" "$work/orig"
  check_sums "$work/orig" "$work/before.sha"
  umount "$work/orig"
  ;;
sigterm)
  loop=$(attach vol 64M)
  dd if=/dev/urandom of="$work/data" bs=1M count=8 status=none
  dd if="$work/data" of="$loop" bs=1M seek=4 oflag=direct conv=fsync status=none
  generation=$(bs cbt info vol | json generation_id)
  id=$(snapshot "$work/storage" vol)
  iloop=$(image_loop "$id" vol)
  [ -b "$loop" ] && [ -b "$iloop" ] || fail "no loop devices"
  kill -TERM "$daemon_pid"
  rc=0
  wait "$daemon_pid" || rc=$?
  daemon_pid=""
  [ "$rc" = 0 ] || fail "daemon exited with $rc"
  for l in "$loop" "$iloop"; do
    ! ours "$l" || fail "$l still bound after SIGTERM"
  done
  if grep -q " $fuse " /proc/self/mountinfo; then fail "FUSE dir still mounted"; fi
  [ "$(json clean_stop <"$work/state/devices.json")" = True ] &&
    [ "$(json devices.0.name <"$work/state/devices.json")" = vol ] ||
    fail "SIGTERM did not keep vol's record: $(cat "$work/state/devices.json" 2>&1)"
  # An upgrade / systemctl restart: the next start brings vol back as it was.
  start_daemon
  bs devices >"$work/devices.json"
  [ "$(json devices.0.name <"$work/devices.json")" = vol ] || fail "vol not re-attached"
  [ "$(json devices.0.restored <"$work/devices.json")" = True ] || fail "vol not restored"
  [ "$(json restart.after <"$work/devices.json")" = clean-stop ] || fail "restart not clean-stop"
  [ "$(json devices.0.cbt.generation_id <"$work/devices.json")" = "$generation" ] ||
    fail "a new CBT generation after a clean stop"
  [ "$(json devices.0.cbt.recovered_from <"$work/devices.json")" = clean-stop ] ||
    fail "recovered_from is not clean-stop"
  loop=$(json devices.0.loop <"$work/devices.json")
  [ -b "$loop" ] || fail "vol re-attached without its loop device"
  want=$(sha256sum <"$work/data" | cut -d' ' -f1)
  got=$(dd if="$loop" bs=1M skip=4 count=8 iflag=direct status=none | sha256sum | cut -d' ' -f1)
  [ "$want" = "$got" ] || fail "data written before SIGTERM differs"
  [ "$(bs snapshot list | json snapshots)" = "[]" ] || fail "a snapshot survived the restart"
  ;;
sigterm-mounted)
  loop=$(attach vol 128M)
  mkfs.ext4 -q -F "$loop"
  mount "$loop" "$work/orig"
  (for _ in $(seq 1 1000); do
    dd if=/dev/zero of="$work/orig/f" bs=1M count=4 oflag=direct status=none 2>/dev/null || exit 0
  done
  exit 1) &
  writer=$!
  sleep 1
  kill -TERM "$daemon_pid"
  rc=0
  wait "$daemon_pid" || rc=$?
  daemon_pid=""
  [ "$rc" = 0 ] || fail "daemon exited with $rc"
  wait "$writer" || fail "the writer never saw an error"
  # Mounted, so nobody else can have taken it: still bound (to the lazily unmounted file).
  backing="/sys/block/${loop#/dev/}/loop/backing_file"
  [ -e "$backing" ] || fail "loop unbound under a mounted fs"
  before=$(cat "$backing")
  umount "$work/orig" || umount -l "$work/orig"
  if [ -e "$backing" ] && [ "$(cat "$backing" 2>/dev/null)" = "$before" ]; then
    fail "$loop still bound after the file system was unmounted"
  fi
  if grep -q " $fuse " /proc/self/mountinfo; then fail "FUSE dir still mounted"; fi
  ;;
concurrent-writes)
  [ -n "$pattern" ] || exit 77
  loop=$(attach vol 64M)
  "$pattern" write "$loop" --length 32M --seq 1 --direct >/dev/null
  id=$(snapshot "$work/storage" vol)
  iloop=$(image_loop "$id" vol)
  (for _ in 1 2 3; do "$pattern" write "$loop" --length 24M --seq 2 --direct --block 256K \
    >/dev/null || exit 1; done) &
  front_writer=$!
  (for _ in 1 2 3; do "$pattern" write "$iloop" --offset 8M --length 24M --seq 3 --direct \
    --block 256K >/dev/null || exit 1; done) &
  image_writer=$!
  wait "$front_writer" || fail "front writer failed"
  wait "$image_writer" || fail "image writer failed"
  "$pattern" verify "$loop" --length 24M --seq 2 --direct >/dev/null || fail "front seq 2"
  "$pattern" verify "$loop" --offset 24M --length 8M --seq 1 --direct >/dev/null \
    || fail "front seq 1"
  "$pattern" verify "$iloop" --length 8M --seq 1 --direct >/dev/null || fail "image seq 1"
  "$pattern" verify "$iloop" --offset 8M --length 24M --seq 3 --direct >/dev/null \
    || fail "image seq 3"
  bs snapshot destroy "$id" >/dev/null
  "$pattern" verify "$loop" --offset 24M --length 8M --seq 1 --direct >/dev/null \
    || fail "front after destroy"
  ;;
sigkill-restart)
  loop=$(attach vol 64M)
  id=$(snapshot "$work/storage" vol)
  iloop=$(image_loop "$id" vol)
  dd if=/dev/urandom of="$work/data" bs=1M count=8 status=none
  dd if="$work/data" of="$loop" bs=1M seek=4 oflag=direct conv=fsync status=none
  kill -KILL "$daemon_pid"
  { wait "$daemon_pid"; } 2>/dev/null || true
  daemon_pid=""
  for l in "$loop" "$iloop"; do
    ! ours "$l" || fail "$l still bound after SIGKILL"
  done
  start_daemon
  grep -q " $fuse .* fuse.blksnap " /proc/self/mountinfo || fail "no FUSE mount after restart"
  # The restarted daemon re-attaches recorded devices with their fronts (devices.json).
  loop=$(bs devices | json devices.0.loop)
  [ "$(bs devices | json devices.0.name)" = vol ] || fail "vol not re-attached after restart"
  [ -b "$loop" ] || fail "vol re-attached without its loop device"
  bs status >/dev/null
  want=$(sha256sum <"$work/data" | cut -d' ' -f1)
  got=$(dd if="$loop" bs=1M skip=4 count=8 iflag=direct status=none | sha256sum | cut -d' ' -f1)
  [ "$want" = "$got" ] || fail "data written before SIGKILL differs"
  ;;
*)
  echo "unknown scenario $scenario" >&2
  exit 2
  ;;
esac
echo "PASS ($scenario)"
