#!/bin/bash
# Purpose: drive blksnap-fuse-testserver with real clients: the FUSE file and the loop device
# on it show the same bytes, read-only files refuse writes, and SIGTERM leaves neither the
# FUSE mount nor the loop device behind.
#
# Algorithm: start the server with a 64 MiB memory device (plus --loop on it) and a read-only
# file; write the sector pattern through the FUSE file and verify it through the loop device,
# then the other way round (blksnap-pattern, O_DIRECT); copy random data in with dd
# oflag=direct and compare sha256 of what dd reads back; try to write the read-only file;
# SIGTERM the server and check that the mount and the loop binding are gone.
# Usage: testserver_io.sh SERVER [PATTERN_TOOL]. Exit 77 = skipped (not root, no FUSE/loop).
set -euo pipefail
server=$1
pattern=${2:-}
if [ "$(id -u)" != 0 ] || [ ! -w /dev/fuse ] || [ ! -w /dev/loop-control ]; then exit 77; fi

work=$(mktemp -d /tmp/blksnap-fuse-sh-XXXXXX)
mnt=$work/fuse
pid=""
loop=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid"; wait "$pid" || true; fi
  if [ -n "$loop" ] && ours "$loop"; then losetup -d "$loop" || true; fi
  if grep -q " $mnt " /proc/self/mountinfo; then umount -l "$mnt" || true; fi
  rm -rf "$work"
}
# ours LOOP: true while LOOP is bound to our FUSE file (a freed loop device may be taken by
# another process at once).
ours() {
  local f="/sys/block/${1#/dev/}/loop/backing_file"
  [ -e "$f" ] && case "$(cat "$f" 2>/dev/null)" in "$work"/*) true ;; *) false ;; esac
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

truncate -s 8M "$work/backing"
"$server" "$mnt" vol@a=mem:64M ro@b=file:"$work/backing",ro --loop vol@a >"$work/out" 2>"$work/err" &
pid=$!
for _ in $(seq 1 300); do
  grep -q '^ready' "$work/out" && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/err" >&2; fail "server died"; }
  sleep 0.1
done
grep -q '^ready' "$work/out" || fail "server not ready"
loop=$(awk '/^loop vol@a/ {print $3}' "$work/out")
[ -b "$loop" ] || fail "no loop device reported"
grep -q 'dio=1' "$work/out" || echo "note: loop device runs buffered (no direct I/O)" >&2
[ "$(stat -c %s "$mnt/vol@a")" = $((64 << 20)) ] || fail "wrong FUSE file size"
[ "$(blockdev --getsize64 "$loop")" = $((64 << 20)) ] || fail "wrong loop device size"

if [ -n "$pattern" ]; then
  "$pattern" write "$mnt/vol@a" --offset 0 --length 16M --seq 1 --direct
  "$pattern" verify "$loop" --offset 0 --length 16M --seq 1 --direct || fail "FUSE->loop pattern"
  "$pattern" write "$loop" --offset 16M --length 16M --seq 2 --direct
  "$pattern" verify "$mnt/vol@a" --offset 16M --length 16M --seq 2 --direct \
    || fail "loop->FUSE pattern"
  "$pattern" verify "$mnt/vol@a" --offset 0 --length 16M --seq 1 --block 4K \
    || fail "pattern, buffered 4K reads"
fi

dd if=/dev/urandom of="$work/data" bs=1M count=8 status=none
dd if="$work/data" of="$mnt/vol@a" bs=1M seek=32 oflag=direct conv=notrunc,fsync status=none
want=$(sha256sum <"$work/data" | cut -d' ' -f1)
got=$(dd if="$loop" bs=1M skip=32 count=8 iflag=direct status=none | sha256sum | cut -d' ' -f1)
[ "$want" = "$got" ] || fail "sha256 via loop device differs"
got=$(dd if="$mnt/vol@a" bs=1M skip=32 count=8 iflag=direct status=none | sha256sum | cut -d' ' -f1)
[ "$want" = "$got" ] || fail "sha256 via FUSE file differs"

if dd if=/dev/zero of="$mnt/ro@b" bs=4k count=1 conv=notrunc status=none 2>/dev/null; then
  fail "write to read-only file succeeded"
fi

kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
pid=""
[ "$rc" = 0 ] || fail "server exited with $rc"
if grep -q " $mnt " /proc/self/mountinfo; then fail "FUSE mount left behind"; fi
if ours "$loop"; then fail "loop device left bound"; fi
loop=""
echo "PASS"
