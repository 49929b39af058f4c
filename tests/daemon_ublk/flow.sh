#!/usr/bin/env bash
# Purpose: the standard flow of blksnapd with ublk fronts: a tracked device exposed as
# /dev/ublkbN carries a mounted file system (FS = $2: ext4 or xfs); a snapshot taken while it
# is mounted (the file system is frozen for the take) yields an image, exposed as another ublk
# device and over NBD, that holds exactly the take-time files; destroy and detach remove every
# ublk device and record; SIGTERM removes the ublk devices but keeps the device recorded, and
# the next start brings it back on a new ublk device in the same CBT generation.
# Algorithm (inside the VM): start blksnapd (--frontend auto must pick ublk); attach a 512 MiB
# sparse file with --ublk (JSON: "ublk" = /dev/ublkbN, "loop" null); mkfs, mount, write random
# files and a directory tree, record sha256 sums; snapshot create --ublk + take with the fs
# mounted (frozen_us > 0); change the live files; snapshot info gives the image's ublk device,
# which equals a nbdcopy of the image's NBD export byte for byte; ext4: e2fsck -fn of the image
# is clean (only true if the fs was frozen at the take); mounted (ext4 read-only without
# replay, xfs with log replay) its sums match the take-time sums; xfs: xfs_repair -n clean
# after unmount; destroy: the image device vanishes; live files are the changed ones; umount,
# fsck clean, detach: /dev/ublkbN vanishes and the state dir has no device records; attach
# again with --blockdev (the daemon's frontend: ublk) and SIGTERM: the device vanishes, exit 0,
# devices.json keeps vol ("clean_stop": true, ublk, no dev_id); start again: vol is back by
# itself (restored, restart "after": "clean-stop", no ublk Recover) on a new /dev/ublkbN with its
# NBD export, the same CBT generation (recovered_from "clean-stop"), its file system fsck-clean
# with the live files; detach: the device and the records are gone.
. "$(dirname "$0")/lib.sh"
FS=${2:-ext4}
case $FS in
  # ext4: freeze leaves a clean journal, so the image is fsck-clean as it is (proof of the
  # freeze) and mounts without replay. xfs: freeze quiesces the log but leaves the lazy
  # superblock counters to log recovery, so the image is mounted read-write (replay, nouuid:
  # the live fs has the same uuid) and checked after unmount.
  ext4) do_mkfs() { mkfs.ext4 -q "$1"; }; do_fsck() { e2fsck -fn "$1"; }
    image_opts=ro,noload; fsck_image_before_mount=1 ;;
  xfs) do_mkfs() { mkfs.xfs -q -f "$1"; }; do_fsck() { xfs_repair -n "$1"; }
    image_opts=nouuid; fsck_image_before_mount=0 ;;
  *) fail "usage: flow.sh BUILD_DIR ext4|xfs" ;;
esac

truncate -s 512M "$WORK/vol.img"
mkdir -p "$WORK/mnt" "$WORK/mnt-image"
start_daemon
st=$(bs --json status)
[ "$(jget "$st" 'j["daemon"]["ublk"]')" = true ] || fail "status: ublk not available: $st"
[ "$(jget "$st" 'j["daemon"]["frontend"]')" = ublk ] || fail "--frontend auto did not pick ublk"

a=$(bs --json attach "$WORK/vol.img" --name vol --ublk) || fail "attach --ublk"
DEV=$(jget "$a" 'j["ublk"]')
log "attached vol on $DEV"
[ -b "$DEV" ] || fail "attach: ublk '$DEV' is not a block device"
[ "$(jget "$a" 'j["loop"]')" = null ] || fail "attach --ublk made a loop device"
[ "$(jget "$a" 'j["nbd"]')" != null ] || fail "attach: no NBD front"
[ "$(jget "$(bs --json devices)" 'j["devices"][0]["ublk"]')" = "$DEV" ] || fail "devices: ublk"
[ -s "$STATE/devices.json" ] || fail "no device records in the state dir"
[ "$(blockdev --getsize64 "$DEV")" = $((512 << 20)) ] || fail "$DEV size"

do_mkfs "$DEV" || fail "mkfs $FS"
mount -t "$FS" "$DEV" "$WORK/mnt" || fail "mount"
for i in 1 2 3; do dd if=/dev/urandom of="$WORK/mnt/file$i" bs=1M count=$((i * 3)) status=none; done
mkdir -p "$WORK/mnt/tree/a/b"
for i in $(seq 20); do head -c $((i * 1000)) /dev/urandom >"$WORK/mnt/tree/a/b/f$i"; done
(cd "$WORK/mnt" && find . -type f ! -name lost+found -print0 | sort -z | xargs -0 sha256sum) \
  >"$WORK/sums.take"

ID=$(bs snapshot create --storage "$WORK" --limit 0 --ublk vol) || fail "snapshot create --ublk"
t=$(bs --json snapshot take "$ID") || fail "snapshot take with the fs mounted"
log "take: $t"
[ "$(jget "$t" 'j["frozen_us"] > 0')" = true ] || fail "take did not freeze the file system"

# Change the live file system after the take.
dd if=/dev/urandom of="$WORK/mnt/file1" bs=1M count=3 conv=notrunc status=none
rm "$WORK/mnt/file2"
echo new >"$WORK/mnt/after-take"
sync

info=$(bs --json snapshot info "$ID")
IMG=$(jget "$info" 'j["devices"][0]["image"]["ublk"]')
NBD=$(jget "$info" 'j["devices"][0]["image"]["nbd"]')
log "image on $IMG, $NBD"
[ -b "$IMG" ] && [ "$IMG" != "$DEV" ] || fail "image ublk device '$IMG'"
[ "$(jget "$info" 'j["devices"][0]["image"]["loop"]')" = null ] || fail "image got a loop device"
nbdcopy "$NBD" "$WORK/image.copy" || fail "nbdcopy of the image"
cmp "$WORK/image.copy" "$IMG" || fail "NBD and ublk views of the image differ"
rm -f "$WORK/image.copy"
if [ "$fsck_image_before_mount" = 1 ]; then
  do_fsck "$IMG" >"$WORK/fsck-image.out" 2>&1 || { cat "$WORK/fsck-image.out"; fail "image fsck"; }
fi
mount -t "$FS" -o "$image_opts" "$IMG" "$WORK/mnt-image" || fail "mount image"
(cd "$WORK/mnt-image" && sha256sum --quiet -c "$WORK/sums.take") || fail "image sums differ"
[ ! -e "$WORK/mnt-image/after-take" ] || fail "image holds a file written after the take"
umount "$WORK/mnt-image"
if [ "$fsck_image_before_mount" = 0 ]; then
  do_fsck "$IMG" >"$WORK/fsck-image.out" 2>&1 || { cat "$WORK/fsck-image.out"; fail "image fsck"; }
fi

bs snapshot destroy "$ID" >/dev/null || fail "destroy"
wait_gone "$IMG"
[ ! -e "$WORK/mnt/file2" ] && [ -e "$WORK/mnt/after-take" ] || fail "live fs lost its changes"
umount "$WORK/mnt"
do_fsck "$DEV" >"$WORK/fsck.out" 2>&1 || { cat "$WORK/fsck.out"; fail "fsck"; }
bs detach vol >/dev/null || fail "detach"
wait_gone "$DEV"
[ ! -e "$STATE/devices.json" ] || fail "device records left after detach"

a=$(bs --json attach "$WORK/vol.img" --name vol --blockdev) || fail "attach --blockdev"
DEV=$(jget "$a" 'j["ublk"]')
[ -b "$DEV" ] || fail "attach --blockdev did not give a ublk device"
GEN=$(jget "$(bs --json cbt info vol)" 'j["generation_id"]')
stop_daemon
wait_gone "$DEV"
rec=$(cat "$STATE/devices.json" 2>/dev/null) || fail "SIGTERM dropped the device records"
[ "$(jget "$rec" 'j.get("clean_stop")')" = true ] || fail "records not marked clean_stop: $rec"
[ "$(jget "$rec" '[(d["name"], d["ublk"], d["ublk_dev_id"]) for d in j["devices"]]')" = \
  "[('vol', True, -1)]" ] || fail "records after SIGTERM: $rec"

# An upgrade / systemctl restart: the next start attaches vol again on a new ublk device.
start_daemon
d=$(bs --json devices)
log "after the clean restart: $d"
[ "$(jget "$d" '[x["name"] for x in j["devices"]]')" = "['vol']" ] || fail "vol not re-attached"
[ "$(jget "$d" 'j["devices"][0]["restored"]')" = true ] || fail "vol not marked restored"
[ "$(jget "$d" 'j["restart"]["after"]')" = clean-stop ] || fail "restart not after clean-stop"
[ "$(jget "$d" 'j["restart"]["ublk_recovered"]')" = 0 ] || fail "a ublk Recover after a clean stop"
[ "$(jget "$d" 'j["devices"][0]["cbt"]["generation_id"]')" = "$GEN" ] || fail "new generation"
[ "$(jget "$d" 'j["devices"][0]["cbt"]["recovered_from"]')" = clean-stop ] ||
  fail "recovered_from is not clean-stop"
[ "$(jget "$d" 'j["devices"][0]["nbd"]')" != null ] || fail "no NBD export after the restart"
DEV=$(jget "$d" 'j["devices"][0]["ublk"]')
[ -b "$DEV" ] || fail "vol re-attached without a ublk device ('$DEV')"
do_fsck "$DEV" >"$WORK/fsck.out" 2>&1 || { cat "$WORK/fsck.out"; fail "fsck after restart"; }
mount -t "$FS" "$DEV" "$WORK/mnt" || fail "mount after the clean restart"
[ ! -e "$WORK/mnt/file2" ] && [ -e "$WORK/mnt/after-take" ] || fail "live files after restart"
umount "$WORK/mnt"
bs detach vol >/dev/null || fail "detach after the restart"
wait_gone "$DEV"
[ ! -e "$STATE/devices.json" ] || fail "device records left after the last detach"
stop_daemon
dmesg | grep -iE "I/O error.*ublkb" && fail "kernel logged I/O errors on a ublk device"
echo "PASS daemon ublk flow $FS"
