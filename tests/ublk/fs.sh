#!/usr/bin/env bash
# Purpose: a real filesystem (ext4 or xfs) on a ublk device: data survives unmount and a server
# restart (fresh device on the same backing file), and the filesystem stays fsck-clean.
# Algorithm (inside the VM), FSTYPE = $2: serve a 512 MiB sparse file; mkfs; mount; write
# random-data files of assorted sizes and copy a directory tree; record sha256sums; unmount;
# fsck (e2fsck -fn / xfs_repair -n) must be clean; stop the server; start a new server on the
# same file; mount; sha256sum -c must pass; unmount; fsck again; stop the server.
. "$(dirname "$0")/lib.sh"
FSTYPE=${2:?usage: fs.sh BUILD_DIR ext4|xfs}

fsck_clean() {
  case $FSTYPE in
    ext4) e2fsck -fn "$DEV" >"$WORK/fsck.out" 2>&1 || { cat "$WORK/fsck.out"; fail "e2fsck"; } ;;
    xfs) xfs_repair -n "$DEV" >"$WORK/fsck.out" 2>&1 || { cat "$WORK/fsck.out"; fail "xfs_repair"; } ;;
  esac
}

truncate -s 512M "$WORK/backing"
mkdir -p "$WORK/mnt"
start_server "$WORK/backing"
log "mkfs.$FSTYPE"
mkfs."$FSTYPE" -q "$DEV" >/dev/null 2>&1 || mkfs."$FSTYPE" -f -q "$DEV" || fail "mkfs.$FSTYPE"
mount -t "$FSTYPE" "$DEV" "$WORK/mnt" || fail "mount"
for n in 1 7 64 300 1024 4096; do
  head -c $((n * 1024 + n)) /dev/urandom >"$WORK/mnt/file_$n"
done
mkdir "$WORK/mnt/tree" && cp -r /usr/include/linux "$WORK/mnt/tree/"
(cd "$WORK/mnt" && find . -type f -print0 | sort -z | xargs -0 sha256sum) >"$WORK/sums"
[ "$(wc -l <"$WORK/sums")" -gt 100 ] || fail "too few files written"
umount "$WORK/mnt"
fsck_clean
stop_server

log "fresh server on the same backing file"
start_server "$WORK/backing"
mount -t "$FSTYPE" "$DEV" "$WORK/mnt" || fail "mount after restart"
(cd "$WORK/mnt" && sha256sum --quiet -c "$WORK/sums") || fail "checksums differ after restart"
umount "$WORK/mnt"
fsck_clean
stop_server
echo "PASS fs $FSTYPE"
