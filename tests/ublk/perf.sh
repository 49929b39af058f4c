#!/usr/bin/env bash
# Purpose: measure 4 KiB random I/O at QD32 through ublk against the same fio run directly on
# the backing file, inside the VM (numbers are only comparable within one run; see
# docs/ublk.md). Not a pass/fail test: it prints a table.
# Algorithm (inside the VM): for each backing store (a file on tmpfs; a file on ext4 on a brd
# RAM disk, served with O_DIRECT), fill a 256 MiB file, run fio randread and randwrite (4k,
# QD32, libaio, O_DIRECT, 8 s) on the file, then on /dev/ublkbN served by the test server
# for each server configuration (second argument), and print IOPS and the ratio.
#   perf.sh BUILD_DIR ["SERVER ARGS;SERVER ARGS;..."]   (default: "default;--inline")
. "$(dirname "$0")/lib.sh"
RUNTIME=${UBLK_PERF_RUNTIME:-8}
IFS=';' read -r -a CONFIGS <<<"${2:-default;--inline}"

iops() {  # iops FILE RW
  fio --name=p --filename="$1" --direct=1 --ioengine=libaio --iodepth=32 --rw="$2" --bs=4k \
    --size=256M --runtime="$RUNTIME" --time_based --output-format=json --eta=never 2>/dev/null |
    /usr/bin/python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; print(int(j["read"]["iops"]+j["write"]["iops"]))'
}

measure() {  # measure LABEL BACKING [SERVER_ARGS]
  local label=$1 backing=$2; shift 2
  local fr fw
  fr=$(iops "$backing" randread); fw=$(iops "$backing" randwrite)
  printf '%-28s %-22s randread %7s  randwrite %7s\n' "$label" "file (direct)" "$fr" "$fw"
  local cfg
  for cfg in "${CONFIGS[@]}"; do
    local args=()
    [ "$cfg" = default ] || read -r -a args <<<"$cfg"
    start_server "${args[@]}" "$@" "$backing" >/dev/null
    local ur uw
    ur=$(iops "$DEV" randread); uw=$(iops "$DEV" randwrite)
    stop_server
    printf '%-28s %-22s randread %7s (%.2fx) randwrite %7s (%.2fx)\n' "$label" "ublk $cfg" \
      "$ur" "$(echo "$ur / $fr" | bc -l)" "$uw" "$(echo "$uw / $fw" | bc -l)"
  done
}

# Reference: the block layer alone (null_blk, no data copy), to show the per-request floor.
modprobe null_blk nr_devices=1 gb=1 queue_mode=2 irqmode=0 || fail "modprobe null_blk"
printf '%-28s %-22s randread %7s  randwrite %7s\n' "null_blk" "kernel" \
  "$(iops /dev/nullb0 randread)" "$(iops /dev/nullb0 randwrite)"
rmmod null_blk

dd if=/dev/zero of="$WORK/backing" bs=1M count=256 status=none
measure "tmpfs file" "$WORK/backing"
rm -f "$WORK/backing"

modprobe brd rd_nr=1 rd_size=$((300 * 1024)) || fail "modprobe brd"
mkfs.ext4 -q /dev/ram0 && mkdir -p "$WORK/ram" && mount /dev/ram0 "$WORK/ram"
dd if=/dev/zero of="$WORK/ram/backing" bs=1M count=256 status=none oflag=direct
measure "ext4-on-brd file" "$WORK/ram/backing" --direct
umount "$WORK/ram"
