#!/usr/bin/env bash
# Purpose: the standard blksnap flow with Linux's own NBD client (nbd.ko + nbd-client) instead
# of a ublk or loop front: a file system (FS = $2: ext4 or xfs) on /dev/nbd0, served by
# blksnapd's NBD export of a tracked image file, is snapshotted while mounted; the image,
# connected to /dev/nbd1, holds exactly the take-time files while the live file system changes;
# CBT reports the blocks written after the take; the original is fsck-clean at the end.
# Algorithm (inside the VM): modprobe nbd; start blksnapd (NBD on a Unix socket, no FUSE);
# attach a 512 MiB sparse file (xfs: a loop device over it, so the daemon's block-device path
# is covered with a real file system; the daemon must hold it with O_DIRECT); nbd-client -unix
# SOCK /dev/nbd0 -N vol; mkfs, mount, write random files and a directory tree, record sha256
# sums; snapshot create, then fsfreeze -f, snapshot take, fsfreeze -u (the daemon cannot see
# that /dev/nbd0 is its front, so it cannot freeze it itself); change the live files; `cbt
# changes --since N1` (N1: the take's snap number) is still empty (the read map is frozen at
# the take); nbd-client -readonly connects the image export vol@ID:ro to /dev/nbd1; ext4:
# e2fsck -fn of the image is clean (only true if the freeze worked); mount it read-only without
# log replay; while a writer keeps changing the live fs, the image's sums equal the take-time
# sums and the post-take file is absent; the live fs really differs; destroy is refused (exit 4,
# "(use --force)") while /dev/nbd1 is connected; disconnect /dev/nbd1 (the kernel device is
# gone: size 0), destroy without --force; a second create + freeze + take: `cbt changes
# --since N1` is non-empty, covers every physical extent (FIEMAP) of the file overwritten after
# the first take, and is far from the whole device; destroy; umount, fsck clean; detach is
# refused while /dev/nbd0 is connected; nbd-client -d; detach succeeds (no NBD client left); no
# kernel error on nbd0/nbd1; SIGTERM.
. "$(dirname "$0")/../daemon_ublk/lib.sh"
FS=${2:-ext4}
case $FS in
  ext4) do_mkfs() { mkfs.ext4 -q "$1"; }; do_fsck() { e2fsck -fn "$1"; }; image_opts=ro,noload ;;
  xfs) do_mkfs() { mkfs.xfs -q -f "$1"; }; do_fsck() { xfs_repair -n "$1"; }
    image_opts=ro,nouuid,norecovery ;;
  *) fail "usage: flow.sh BUILD_DIR ext4|xfs" ;;
esac
command -v nbd-client >/dev/null || fail "nbd-client not installed (scripts/install-deps)"
modprobe nbd || fail "modprobe nbd"
[ -b /dev/nbd0 ] && [ -b /dev/nbd1 ] || fail "/dev/nbd0 or /dev/nbd1 missing after modprobe nbd"
SOCK=$WORK/nbd.sock  # start_daemon's --nbd-unix
ORIG=
SIZE=$((512 << 20))

# Extends lib.sh's cleanup: thaw, unmount and disconnect before the daemon is stopped.
nbd_cleanup() {
  set +e
  fsfreeze -u "$WORK/mnt" 2>/dev/null
  for m in "$WORK"/mnt*; do mountpoint -q "$m" 2>/dev/null && umount -l "$m"; done
  for d in /dev/nbd0 /dev/nbd1; do nbd-client -c "$d" >/dev/null 2>&1 && nbd-client -d "$d"; done
  cleanup
  [ "$ORIG" = "${ORIG#/dev/loop}" ] || losetup -d "$ORIG"
}
trap nbd_cleanup EXIT

# connect DEV EXPORT [nbd-client options]: the kernel client on the daemon's Unix socket.
connect() {
  local dev=$1 export=$2; shift 2
  nbd-client -unix "$SOCK" "$dev" -N "$export" -b 4096 "$@" || fail "nbd-client $dev $export"
  nbd-client -c "$dev" >/dev/null || fail "nbd-client -c: $dev not connected"
}

# disconnect DEV: nbd-client -d; the kernel device must drop to size 0 within 10 s.
disconnect() {
  nbd-client -d "$1" >/dev/null || fail "nbd-client -d $1"
  for _ in $(seq 100); do
    [ "$(blockdev --getsize64 "$1" 2>/dev/null || echo 0)" = 0 ] && return 0
    sleep 0.1
  done
  fail "$1 still has a size after nbd-client -d"
}

# take_frozen ID: fsfreeze around `snapshot take`; prints the changes_number after the take.
take_frozen() {
  fsfreeze -f "$WORK/mnt" || fail "fsfreeze -f"
  if ! bs snapshot take "$1" >/dev/null; then fsfreeze -u "$WORK/mnt"; fail "snapshot take $1"; fi
  fsfreeze -u "$WORK/mnt" || fail "fsfreeze -u"
  jget "$(bs --json cbt info vol)" 'j["changes_number"]'
}

# changes_check SINCE FILE: `cbt changes vol --since SINCE` covers every physical extent of FILE
# (FIEMAP, after a sync) and less than half the device; prints the changed bytes.
changes_check() {
  /usr/bin/python3 - "$(bs --json cbt changes vol --since "$1")" "$2" "$SIZE" <<'PY'
import array, fcntl, json, os, struct, sys
changes, path, size = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
FS_IOC_FIEMAP, FIEMAP_FLAG_SYNC, N = 0xC020660B, 1, 512
buf = bytearray(32 + 56 * N)
struct.pack_into("=QQLLLL", buf, 0, 0, 2**64 - 1, FIEMAP_FLAG_SYNC, 0, N, 0)
fd = os.open(path, os.O_RDONLY)
fcntl.ioctl(fd, FS_IOC_FIEMAP, buf)
os.close(fd)
count = struct.unpack_from("=L", buf, 20)[0]
extents = [struct.unpack_from("=QQQ", buf, 32 + 56 * i)[1:] for i in range(count)]
if not extents:
    sys.exit(f"FIEMAP of {path} returned no extents")
changed = changes["extents"]
for phys, length in extents:
    end, pos = phys + length, phys
    for off, ln in sorted(changed):
        if off <= pos < off + ln:
            pos = off + ln
    if pos < end:
        sys.exit(f"CBT misses [{pos}, {end}) of {path} (extent {phys}+{length}); changes {changed}")
if not 0 < changes["bytes"] < size // 2:
    sys.exit(f"CBT reports {changes['bytes']} changed bytes of {size}")
print(changes["bytes"])
PY
}

truncate -s "$SIZE" "$WORK/vol.img"
ORIG=$WORK/vol.img
if [ "$FS" = xfs ]; then  # the block-device original (opened with O_DIRECT) gets a run too
  modprobe loop || fail "modprobe loop"
  ORIG=$(losetup -f --show "$WORK/vol.img") || fail "losetup"
fi
mkdir -p "$WORK/mnt" "$WORK/mnt-image" "$WORK/storage"
start_daemon
bs attach "$ORIG" --name vol >/dev/null || fail "attach $ORIG"
if [ "$ORIG" != "$WORK/vol.img" ]; then  # a block device: the daemon holds it with O_DIRECT
  direct=
  for fd in /proc/"$DAEMON_PID"/fd/*; do
    [ "$(readlink "$fd")" = "$ORIG" ] || continue
    flags=$(awk '/^flags:/ {print $2}' "/proc/$DAEMON_PID/fdinfo/${fd##*/}")
    direct=$(( 8#$flags & 8#40000 ))
  done
  [ -n "$direct" ] && [ "$direct" != 0 ] || fail "blksnapd does not hold $ORIG with O_DIRECT"
fi
connect /dev/nbd0 vol
[ "$(blockdev --getsize64 /dev/nbd0)" = "$SIZE" ] || fail "/dev/nbd0 size"
log "vol on /dev/nbd0"

do_mkfs /dev/nbd0 || fail "mkfs $FS"
mount -t "$FS" /dev/nbd0 "$WORK/mnt" || fail "mount"
for i in 1 2 3; do dd if=/dev/urandom of="$WORK/mnt/file$i" bs=1M count=$((i * 3)) status=none; done
mkdir -p "$WORK/mnt/tree/a/b" "$WORK/mnt/tree/c"
for i in $(seq 20); do head -c $((i * 1000)) /dev/urandom >"$WORK/mnt/tree/a/b/f$i"; done
for i in $(seq 5); do head -c $((i * 7000)) /dev/urandom >"$WORK/mnt/tree/c/g$i"; done
(cd "$WORK/mnt" && find . -type f ! -name lost+found -print0 | sort -z | xargs -0 sha256sum) \
  >"$WORK/sums.take"

ID=$(bs snapshot create --storage "$WORK/storage" --limit 0 vol) || fail "snapshot create"
N1=$(take_frozen "$ID") || fail "take"
log "snapshot $ID taken, snap number $N1"
[ "$N1" -ge 1 ] || fail "changes_number $N1 after the take"

# Change the live file system after the take: overwrite file1 in place, delete, create.
dd if=/dev/urandom of="$WORK/mnt/file1" bs=1M count=3 conv=notrunc status=none
rm "$WORK/mnt/file2" "$WORK/mnt/tree/c/g3"
echo new >"$WORK/mnt/after-take"
sync
[ "$(jget "$(bs --json cbt changes vol --since "$N1")" 'len(j["extents"])')" = 0 ] ||
  fail "cbt changes since the take are not empty before the next take (read map not frozen?)"

connect /dev/nbd1 "vol@$ID:ro" -readonly
[ "$(blockdev --getsize64 /dev/nbd1)" = "$SIZE" ] || fail "/dev/nbd1 size"
[ "$(blockdev --getro /dev/nbd1)" = 1 ] || fail "/dev/nbd1 is not read-only"
log "image vol@$ID:ro on /dev/nbd1"
if [ "$FS" = ext4 ]; then
  do_fsck /dev/nbd1 >"$WORK/fsck-image.out" 2>&1 ||
    { cat "$WORK/fsck-image.out"; fail "image fsck"; }
fi
mount -t "$FS" -o "$image_opts" /dev/nbd1 "$WORK/mnt-image" || fail "mount image"
# A writer keeps changing the live fs while the image is read.
(
  for i in $(seq 40); do
    dd if=/dev/urandom of="$WORK/mnt/file3" bs=64k count=4 seek=$((i * 4)) conv=notrunc \
      status=none
    head -c 5000 /dev/urandom >"$WORK/mnt/tree/a/b/f$i"
    sync
  done
) &
writer=$!
(cd "$WORK/mnt-image" && sha256sum --quiet -c "$WORK/sums.take") || fail "image sums differ"
[ ! -e "$WORK/mnt-image/after-take" ] || fail "image holds a file written after the take"
wait $writer || fail "writer on the live fs failed"
(cd "$WORK/mnt-image" && sha256sum --quiet -c "$WORK/sums.take") ||
  fail "image sums differ after the live writes"
(cd "$WORK/mnt" && sha256sum --quiet -c "$WORK/sums.take" >/dev/null 2>&1) &&
  fail "the live fs still has the take-time sums (post-take writes lost?)"
[ -e "$WORK/mnt/after-take" ] && [ ! -e "$WORK/mnt/file2" ] || fail "live fs lost its changes"
umount "$WORK/mnt-image"
# The kernel client still holds the image: destroy is refused (exit 4) until it disconnects.
rc=0
bs snapshot destroy "$ID" >/dev/null 2>"$WORK/destroy.err" || rc=$?
[ "$rc" = 4 ] && grep -q -- "(use --force)" "$WORK/destroy.err" ||
  fail "destroy with /dev/nbd1 connected: exit $rc, $(cat "$WORK/destroy.err")"
disconnect /dev/nbd1
bs snapshot destroy "$ID" >/dev/null || fail "destroy after nbd-client -d (a client still connected?)"

ID2=$(bs snapshot create --storage "$WORK/storage" --limit 0 vol) || fail "snapshot create 2"
N2=$(take_frozen "$ID2") || fail "take 2"
[ "$N2" -gt "$N1" ] || fail "changes_number $N2 after the second take, first $N1"
changed=$(changes_check "$N1" "$WORK/mnt/file1") || fail "cbt changes since $N1"
log "cbt: $changed bytes changed since snap $N1, covering every extent of the rewritten file1"
bs snapshot destroy "$ID2" >/dev/null || fail "destroy 2"

umount "$WORK/mnt"
do_fsck /dev/nbd0 >"$WORK/fsck.out" 2>&1 || { cat "$WORK/fsck.out"; fail "fsck of the original"; }
bs detach vol >/dev/null 2>&1 && fail "detach succeeded while nbd-client was connected"
disconnect /dev/nbd0
bs detach vol >/dev/null || fail "detach after nbd-client -d (an NBD client still connected?)"
dmesg | grep -iE "(I/O error|critical).*nbd[01]|nbd[01].*(error|timed out)" &&
  fail "kernel logged errors on an nbd device"
stop_daemon
echo "PASS kernel nbd client flow $FS"
