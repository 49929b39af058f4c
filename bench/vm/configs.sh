#!/usr/bin/env bash
# bench/vm/configs.sh: same-boot A/B of blksnapd configurations on copy-on-write heavy writes,
# inside the test VM (as root there). For an engine or front change whose effect is smaller than
# the VM's run-to-run spread (docs/performance-vm.md, "Only same-run ratios mean anything"):
# every configuration runs in the same boot, interleaved, ROUNDS times.
#
#   /work/shared/vm/run-in-vm --cpus 2 --mem 3072 --timeout 2400 -- \
#     env ROUNDS=2 CONFIGS="dm;--ublk-workers 16;--ublk-workers 4" bash bench/vm/configs.sh
#
# CONFIGS: ';'-separated; "dm" is LVM's classic snapshot (dm-snapshot, 64 KiB chunks), anything
# else is blksnapd's extra arguments, optionally prefixed by "B=BUILD_DIR " (another build of
# blksnapd/blksnap, e.g. a copy of the old binaries) and "E=VAR=VALUE " (one environment
# variable for blksnapd). Each blksnap configuration: a fresh daemon, the origin attached with a
# ublk front, a throwaway snapshot warmed up with a quarter of the chunks, then cow64k with 1 and
# with N (4) snapshots taken (each with a ublk image and its own difference-storage LV), as
# lvm_compare.sh's cow64k-1 / cow64k. Knobs: SIZE_MB (256), ROUNDS (2), DUR (crash), N (4).
# Prints one line per measurement: RESULT [config] n=SNAPSHOTS iops=… cpu_us=… ctxt=…
# (whole-VM busy CPU µs and context switches per write, taken by fio's exec_prerun/postrun
# right around the job). Storage: one brd RAM disk as in lvm_compare.sh.
set -u
BUILD=${BUILD:-$(cd "$(dirname "$0")/../.." && pwd)/build}
SIZE_MB=${SIZE_MB:-256} ROUNDS=${ROUNDS:-2} DUR=${DUR:-crash} N=${N:-4}
IFS=';' read -ra CFGS <<<"${CONFIGS:-dm;--ublk-workers 16;--ublk-workers 4}"
W=$(mktemp -d /tmp/configs.XXXXXX)
for m in brd dm-snapshot ublk_drv; do modprobe "$m" 2>/dev/null; done
LVMC='activation{udev_sync=0 udev_rules=0 monitoring=0} devices{obtain_device_list_from_udev=0}'
lv() { lvm "$1" --config "$LVMC" "${@:2}"; }
COW=$((SIZE_MB + SIZE_MB / 16 + 8))
rmmod brd 2>/dev/null
modprobe brd rd_nr=1 rd_size=$(((SIZE_MB + N * COW + 64) * 1024)) max_part=0 || exit 1
dd if=/dev/zero of=/dev/ram0 bs=1M oflag=direct status=none 2>/dev/null  # ENOSPC at the end; no side pays for brd's first touch
lv pvcreate -y /dev/ram0 >/dev/null && lv vgcreate vg /dev/ram0 >/dev/null &&
  lv lvcreate -y -n origin -L "${SIZE_MB}M" vg >/dev/null || exit 1
fio --name=fill --filename=/dev/vg/origin --ioengine=libaio --direct=1 --iodepth=8 --rw=write \
  --bs=1M --size="${SIZE_MB}M" --refill_buffers --eta=never >/dev/null
printf '#!/bin/sh\nawk "/^cpu /{print \\$2+\\$3+\\$4+\\$7+\\$8} /^ctxt/{print \\$2}" /proc/stat >>"$1"\n' \
  >"$W/stat.sh" && chmod +x "$W/stat.sh"
cow() {  # DEV LABEL SNAPSHOTS: one pass of 64 KiB random writes, every one a first write
  sync; echo 3 >/proc/sys/vm/drop_caches
  (cd "$W" && fio --name=cow --filename="$1" --ioengine=libaio --direct=1 --iodepth=32 \
    --rw=randwrite --bs=64k --size="${SIZE_MB}M" --exec_prerun="$W/stat.sh $W/stat" \
    --exec_postrun="$W/stat.sh $W/stat" --output-format=json --output="$W/fio.json" >/dev/null)
  local iops writes=$((SIZE_MB * 16))
  iops=$(python3 -c 'import json,sys; print("%.0f" % json.load(open(sys.argv[1]))["jobs"][0]["write"]["iops"])' "$W/fio.json")
  # shellcheck disable=SC2046  # the four numbers the two stat.sh calls wrote
  set -- "$1" "$2" "$3" $(cat "$W/stat"); rm -f "$W/stat"
  echo "RESULT $2 n=$3 iops=$iops cpu_us=$((($6 - $4) * 10000 / writes)) ctxt=$(((($7 - $5) * 100 / writes)))e-2"
}
warm() {
  fio --name=warm --filename="$1" --ioengine=libaio --direct=1 --iodepth=32 --rw=randwrite \
    --bs=64k --size="${SIZE_MB}M" --io_size=$((SIZE_MB / 4))M --eta=never >/dev/null
}
dm_warm=0
for ((r = 1; r <= ROUNDS; r++)); do
  for cfg in "${CFGS[@]}"; do
    if [ "$cfg" = dm ]; then
      if [ $dm_warm = 0 ]; then  # as lvm_compare.sh: the first copy-on-write pass is not measured
        lv lvcreate -y -s -c 64k -n snap0 -L "${COW}M" vg/origin >/dev/null && warm /dev/vg/origin &&
          lv lvremove -y vg/snap0 >/dev/null && dm_warm=1
      fi
      for n in 1 "$N"; do
        for ((i = 0; i < n; i++)); do lv lvcreate -y -s -c 64k -n "snap$i" -L "${COW}M" vg/origin >/dev/null; done
        cow /dev/vg/origin dm "$n"
        for ((i = 0; i < n; i++)); do lv lvremove -y "vg/snap$i" >/dev/null; done
      done
      continue
    fi
    label=$cfg build=$BUILD env_var=
    case $cfg in B=*) build=${cfg%% *}; build=${build#B=}; cfg=${cfg#* } ;; esac
    case $cfg in E=*) env_var=${cfg%% *}; env_var=${env_var#E=}; cfg=${cfg#* } ;; esac
    for ((i = 0; i < N; i++)); do lv lvcreate -y -n "diff$i" -L "${COW}M" vg >/dev/null; done
    rm -rf "$W/state"
    # shellcheck disable=SC2086  # cfg: the daemon's extra arguments
    env $env_var "$build/src/daemon/blksnapd" --state-dir "$W/state" --control "$W/c.sock" \
      --nbd-unix "$W/nbd.sock" --fuse-dir "$W/fuse" --chunk-minimum-shift 16 \
      --diff-storage-minimum 64M $cfg --log-file "$W/blksnapd.log" --daemonize --pidfile "$W/pid" ||
      { echo "blksnapd [$label] did not start" >&2; exit 1; }
    bs() { "$build/src/cli/blksnap" --control "$W/c.sock" "$@"; }
    front=$(bs --json attach /dev/vg/origin --name vol --ublk |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["ublk"])')
    for n in 0 1 "$N"; do  # 0: the warm-up on a throwaway snapshot
      ids=()
      for ((i = 0; i < (n > 0 ? n : 1); i++)); do
        id=$(bs snapshot create --storage "/dev/vg/diff$i" --limit 0 --durability "$DUR" --ublk vol) &&
          bs snapshot take "$id" >/dev/null || exit 1
        ids+=("$id")
      done
      if [ "$n" = 0 ]; then warm "$front"; else cow "$front" "[$label]" "$n"; fi
      for id in "${ids[@]}"; do bs snapshot destroy "$id" >/dev/null; done
    done
    bs detach vol >/dev/null
    pid=$(cat "$W/pid") && kill "$pid" && while [ -e "/proc/$pid" ]; do sleep 0.2; done
    for ((i = 0; i < N; i++)); do lv lvremove -y "vg/diff$i" >/dev/null; done
  done
done
echo "configs.sh: done"
