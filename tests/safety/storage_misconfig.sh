#!/bin/bash
# Purpose: issue 13, "data loss through misconfiguration" of the difference storage, through the
# real daemon and CLI (blksnapd + blksnap): every misplaced --storage is refused before anything
# is written, and a storage file blksnap created is gone after snapshot destroy.
#
# Usage: storage_misconfig.sh BLKSNAPD BLKSNAP. Exit 77 = skipped (not root, no FUSE/loop, no
# mkfs.ext4). Algorithm:
#  1. attach a 64 MiB file with --loop (the daemon's loop front over its FUSE file), mkfs.ext4 on
#     the front, mount it, write files and record their sha256, unmount; record the image's
#     size and sha256;
#  2. snapshot create with --storage naming, in turn: the front loop device; the tracked image
#     file; an outside `losetup` over the image; each must fail, and after each the image has the
#     same size and sha256 (before the fix the front case wrote a header through the front, and
#     the image-file case cut the image to header + limit); while the outside loop is bound, a
#     snapshot of the device is refused (writes through that loop would bypass the tracker);
#  3. --storage in a directory that does not exist: refused, "does not exist";
#  4. --storage naming a missing file: created, then gone after snapshot destroy; an existing
#     empty file stays after destroy;
#  5. a --limit whose header + limit overflows: refused naming the limit, not "smaller than";
#  6. e2fsck of the front is clean and the files check out.
set -euo pipefail
blksnapd=$1
blksnap=$2
if [ "$(id -u)" != 0 ] || [ ! -w /dev/fuse ] || [ ! -w /dev/loop-control ]; then exit 77; fi
command -v mkfs.ext4 >/dev/null || exit 77
[ -x /usr/bin/python3 ] || exit 77

. "$(dirname "$0")/../lib/workdir.sh"
blksnap_workdir blksnap-safety
failed=0
# expect WHAT COMMAND...: runs COMMAND (a test, not fatal under set -e) and reports it.
expect() {
  local what=$1
  shift
  if "$@"; then echo "ok   $what"; else echo "FAIL $what"; failed=1; fi
}
refused_with() {  # refused_with RC OUTPUT WORD [NOT-WORD]: a failure whose message has WORD
  [ "$1" != 0 ] && grep -q -- "$3" <<<"$2" && { [ -z "${4:-}" ] || ! grep -q -- "$4" <<<"$2"; }
}
same_image() { [ "$(image_state)" = "$before" ]; }
bs() { "$blksnap" --json "$@"; }
image_state() { echo "$(stat -c %s "$work/vol.img") $(sha256sum <"$work/vol.img" | cut -d' ' -f1)"; }

"$blksnapd" --state-dir "$work/state" --control "$BLKSNAP_CONTROL" --no-nbd \
  --fuse-dir "$fuse" --diff-storage-minimum 8M --log-file "$work/daemon.log" &
daemon_pid=$!
for _ in $(seq 1 100); do
  [ -S "$BLKSNAP_CONTROL" ] && "$blksnap" version >/dev/null 2>&1 && break
  kill -0 "$daemon_pid" 2>/dev/null || { echo "FAIL daemon died at start"; exit 1; }
  sleep 0.1
done

# 1. A volume with a file system, through its front.
truncate -s 64M "$work/vol.img"
front=$(bs attach "$work/vol.img" --name vol --loop | json loop)
[ -b "$front" ] || { echo "FAIL attach --loop gave no loop device"; exit 1; }
mkfs.ext4 -q -F "$front"
mkdir -p "$work/mnt"
mount "$front" "$work/mnt"
for i in 0 1 2; do dd if=/dev/urandom of="$work/mnt/f$i" bs=1M count=2 oflag=direct status=none; done
(cd "$work/mnt" && sha256sum f*) >"$work/files.sha"
umount "$work/mnt"
sync
before=$(image_state)

# 2. Storage on the device itself, in three disguises.
outside=$(losetup -f --show "$work/vol.img")
for storage in "$front" "$work/vol.img" "$outside"; do
  rc=0
  out=$("$blksnap" snapshot create --storage "$storage" --limit 16M vol 2>&1) || rc=$?
  expect "--storage $storage refused ($(head -1 <<<"$out"))" [ "$rc" != 0 ]
  expect "image unchanged after --storage $storage" same_image
done
# While that outside loop is bound to the tracked file, writes through it would bypass the
# tracker: the device cannot join a snapshot.
mkdir -p "$work/storage"
rc=0
out=$("$blksnap" snapshot create --storage "$work/storage" --limit 16M vol 2>&1) || rc=$?
expect "snapshot refused while $outside is bound to the image ($(head -1 <<<"$out"))" \
  refused_with "$rc" "$out" "$outside"
losetup -d "$outside"

# 3. A missing directory.
rc=0
out=$("$blksnap" snapshot create --storage "$work/no/such/dir/diff" --limit 16M vol 2>&1) || rc=$?
expect "missing storage directory refused ($(head -1 <<<"$out"))" \
  refused_with "$rc" "$out" "does not exist"
expect "nothing created for the missing directory" [ ! -e "$work/no" ]

# 4. A storage file blksnap creates is removed at destroy; an existing one stays.
id=$(bs snapshot create --storage "$work/diff.bin" --limit 16M vol | json id)
expect "storage file created" [ -f "$work/diff.bin" ]
bs snapshot destroy "$id" >/dev/null
expect "created storage file removed at destroy" [ ! -e "$work/diff.bin" ]
touch "$work/mine.bin"
id=$(bs snapshot create --storage "$work/mine.bin" --limit 16M vol | json id)
bs snapshot destroy "$id" >/dev/null
expect "existing storage file kept at destroy" [ -e "$work/mine.bin" ]

# 5. A limit that overflows.
rc=0
out=$("$blksnap" snapshot create --storage "$work" --limit 18446744073709551615 vol 2>&1) || rc=$?
expect "huge --limit names the limit ($(head -1 <<<"$out"))" \
  refused_with "$rc" "$out" "limit" "smaller than"

# 6. The original is whole.
expect "image unchanged at the end" same_image
fsck_clean() { e2fsck -fn "$front" >/dev/null 2>&1; }
expect "front file system clean" fsck_clean
files_intact() {
  mount -o ro "$front" "$work/mnt" || return 1
  local rc=0
  (cd "$work/mnt" && sha256sum --quiet -c "$work/files.sha") || rc=1
  umount "$work/mnt"
  return $rc
}
expect "files intact" files_intact
[ "$failed" = 0 ] || { tail -20 "$work/daemon.log" >&2; exit 1; }
