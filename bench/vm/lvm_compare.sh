#!/usr/bin/env bash
# Purpose: blksnap against LVM's classic snapshot (dm-snapshot) in the VM, on the same storage,
# with the workloads of issue 6; also blksnap's FUSE+loop front and the raw device (the
# ceiling). Run on the host as bench/vm/run (it boots the VM); method and results:
# docs/performance-vm.md.
#
#   lvm_compare.sh BUILD_DIR OUT_DIR        (inside the VM, as root)
#
# Storage: one brd RAM disk holds one LVM volume group; every side uses logical volumes of it,
# so the origin and the copy-on-write area are the same dm-linear-on-brd on both sides:
#   raw           fio on the origin LV (no snapshot; LVM's own "no snapshot" case is this LV)
#   dm-snapshot   lvcreate -s -c 64k (classic, not thin): writes to the origin LV, the image is
#                 the snapshot LV, the COW area a linear LV of the same VG
#   blksnap-ublk  blksnapd --chunk-minimum-shift 16 (64 KiB chunks), attach LV --ublk, snapshot
#                 create --storage DIFF_LV --ublk: front and image are /dev/ublkbN
#                 (durability: the default, crash since 2026-12-03 (power before): every
#                 original write waits until its chunk's copy and record are written)
#   blksnap-ublk-memory, blksnap-ublk-crash, blksnap-ublk-power   the same with snapshot create
#                 --durability memory | crash | power (power: copy and record flushed; no plain
#                 jobs: without a snapshot durability changes nothing)
#   blksnap-loop  the same daemon and device, front and image as FUSE file + loop (--loop);
#                 not in the default sides (BENCH_SIDES=...,blksnap-loop)
# BENCH_BACKING=loop puts the volume group on a loop device over a file on tmpfs instead.
# BENCH_DAEMON_ARGS="--chunk-storer-threads 2" passes tunables to blksnapd (kept in run.json).
# BENCH_PERF=cow64k,... profiles those jobs with perf (their numbers then carry its overhead).
# BENCH_SNAPSHOTS=N (default 1) takes N snapshots of the origin before cow64k (issue 18):
#   dm-snapshot   N snapshot LVs (lvcreate -s N times, each its own COW LV of COW_MB), so
#                 every first write copies the chunk into each of the N COW areas
#   blksnap-*     N snapshots (create + take, one after another, nothing written between),
#                 each with its own difference-storage LV of COW_MB; one copy per chunk, in
#                 the newest snapshot's storage
#   With N > 1 each side runs only cow64k-1 (one snapshot, as cow64k with N=1) and then
#   cow64k (N snapshots), in that order; the plain jobs, fill1m, steady64k and imgread are
#   skipped (VM time). BENCH_IMAGES=0: blksnap's cow64k / cow64k-1 snapshots get no image
#   device (no --ublk / --loop; the images stay NBD exports and FUSE files), to see what the
#   image devices cost; dm-snapshot's snapshot LVs are devices either way. The volume group
#   grows by N-1 COW areas: at 512 MiB and N=4 that is ~2.8 GiB of brd in a 3 GiB VM, so use
#   BENCH_SIZE_MB=256 there.
#
# Workloads (fio libaio, direct=1, iodepth 32; time-based ones run BENCH_RUNTIME s):
#   randread4k, randwrite4k, randwrite64k   no snapshot
#   cow64k     right after the take over the fully written device: 64 KiB random writes with
#              fio's random map (no block twice) over the whole device, so every write preserves
#              a new chunk (capped at BENCH_COW_CAP s)
#   fill1m     then one sequential 1 MiB pass (preserves every chunk left; timed, not a target)
#   steady64k  then 64 KiB random writes with every chunk already preserved
#   imgread    a fresh take, every other 64 KiB chunk rewritten (rw=write:64k), then the image
#              device read sequentially with 1 MiB requests, MiB/s (raw: read1m of the origin)
# Before its jobs each side (dm-snapshot, each blksnap side) copies a quarter of the chunks once
# on a throwaway snapshot (warm_cow; BENCH_WARMUP=0 skips it). Each job runs after sync +
# drop_caches. Per job OUT_DIR gets SIDE.WORKLOAD.json (fio) and
# SIDE.WORKLOAD.stat (/proc/stat right before and after the job's I/O, through fio's
# exec_prerun/exec_postrun: whole-VM CPU time and context switches).
set -euo pipefail
BUILD=$(cd "${1:?usage: lvm_compare.sh BUILD_DIR OUT_DIR}" && pwd)
OUT=${2:?usage: lvm_compare.sh BUILD_DIR OUT_DIR}
SIZE_MB=${BENCH_SIZE_MB:-512}
RT=${BENCH_RUNTIME:-6}
COW_CAP=${BENCH_COW_CAP:-90}
BACKING=${BENCH_BACKING:-brd}
SIDES=${BENCH_SIDES:-raw,dm-snapshot,blksnap-ublk,blksnap-ublk-memory,blksnap-ublk-crash}
DAEMON_ARGS=${BENCH_DAEMON_ARGS:-}  # extra blksnapd options (tunables), recorded in run.json
PERF=${BENCH_PERF:-}  # workloads to profile (perf record -a, cpu-clock): SIDE.WL.perf*.txt
SNAPS=${BENCH_SNAPSHOTS:-1}  # snapshots of the origin taken before cow64k
IMAGES=${BENCH_IMAGES:-1}  # 0: no image device on the snapshots of the cow jobs
WARMUP=${BENCH_WARMUP:-1}  # 1: each side warms its copy-on-write path up first (warm_cow)
[[ $SNAPS =~ ^[0-9]+$ ]] && [ "$SNAPS" -ge 1 ] && [ "$SNAPS" -le 16 ] ||
  { echo "lvm_compare.sh: BENCH_SNAPSHOTS must be 1..16" >&2; exit 2; }
DAEMON=$BUILD/src/daemon/blksnapd
CLI=$BUILD/src/cli/blksnap
COW_MB=$((SIZE_MB + SIZE_MB / 16 + 8))  # every chunk once, plus metadata (dm: 16 B per chunk)
VG=blksnapbench
LVM_CONFIG='activation{udev_sync=0 udev_rules=0 monitoring=0} devices{obtain_device_list_from_udev=0}'
export LVM_SUPPRESS_FD_WARNINGS=1
WORK=$(mktemp -d /tmp/lvm-compare.XXXXXX)
DAEMON_PID=
LOOPDEV=

echo  # the VM console eats the first line of output
log() { echo "== $(date +%T) $*"; }
fail() { echo "FAIL: $*" >&2; tail -n 20 "$WORK/blksnapd.log" >&2 2>/dev/null || true; exit 1; }
lvm_() { lvm "$1" --config "$LVM_CONFIG" "${@:2}"; }
bs() { "$CLI" --control "$WORK/control.sock" "$@"; }
jget() { /usr/bin/python3 -c 'import json,sys; print(eval(sys.argv[2], {"j": json.loads(sys.argv[1])}))' "$1" "$2"; }
has_side() { [[ ",$SIDES," == *",$1,"* ]]; }

cleanup() {
  set +e
  if [ -n "$DAEMON_PID" ]; then
    kill -TERM "$DAEMON_PID"
    for _ in $(seq 300); do [ -e "/proc/$DAEMON_PID" ] || break; sleep 0.1; done
  fi
  lvm_ vgremove -y -f "$VG" >/dev/null 2>&1
  [ -n "$LOOPDEV" ] && losetup -d "$LOOPDEV"
  rm -rf "$WORK"
}
trap cleanup EXIT

for m in brd dm-snapshot loop fuse ublk_drv; do modprobe "$m" 2>/dev/null || true; done
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
# Whole-VM CPU and switches (report.py), and every thread's user and system ticks (FILE.tasks:
# "tid (comm) utime stime" before and after, for telling which thread a job's CPU went to),
# taken outside the /proc/stat pair so that the job's CPU does not include their own.
cat >"$WORK/stat.sh" <<'SH'
#!/bin/sh
tasks() {
  echo "--" >>"$1.tasks"
  # utime and stime are the 12th and 13th fields after the name's ")" (a name may hold spaces).
  cat /proc/[0-9]*/task/[0-9]*/stat 2>/dev/null |
    awk 'match($0, /\) [^)]*$/) { split(substr($0, RSTART + 2), f, " ");
          print substr($0, 1, RSTART), f[12], f[13] }' >>"$1.tasks"
  grep -H ctxt_switches /proc/[0-9]*/task/[0-9]*/status 2>/dev/null >>"$1.tasks"
}
if [ -s "$1" ]; then grep -E "^(cpu|ctxt) " /proc/stat >>"$1"; tasks "$1"
else tasks "$1"; grep -E "^(cpu|ctxt) " /proc/stat >>"$1"; fi
SH
chmod +x "$WORK/stat.sh"
[ -x "$DAEMON" ] && [ -x "$CLI" ] || fail "blksnapd / blksnap not built in $BUILD"

# ---- storage: one volume group on brd (or a loop device over a tmpfs file) ----
backing_mb=$((SIZE_MB + SNAPS * COW_MB + 64))  # the COW LVs and the diff LVs never coexist
if [ "$BACKING" = brd ]; then
  rmmod brd 2>/dev/null || true
  modprobe brd rd_nr=1 rd_size=$((backing_mb * 1024)) max_part=0 || fail "modprobe brd"
  PV=/dev/ram0
else
  mkdir -p /dev/shm/bench && truncate -s "${backing_mb}M" /dev/shm/bench/pv.img
  LOOPDEV=$(losetup -f --show /dev/shm/bench/pv.img) || fail "losetup"
  PV=$LOOPDEV
fi
# Write every byte of the backing store once, so no side pays for brd (or tmpfs) allocating and
# zeroing its pages on first write (dm-snapshot's COW LV and blksnap's diff LV use the same
# extents one after the other).
fio --name=prefill --filename="$PV" --ioengine=libaio --direct=1 --iodepth=8 --rw=write --bs=1M \
  --size="${backing_mb}M" --eta=never >/dev/null || fail "prefill $PV"
lvm_ pvcreate -y "$PV" >/dev/null && lvm_ vgcreate "$VG" "$PV" >/dev/null || fail "pv/vgcreate on $PV"
lvm_ lvcreate -y -n origin -L "${SIZE_MB}M" "$VG" >/dev/null || fail "lvcreate origin"
ORIGIN=/dev/$VG/origin
SIZE=$((SIZE_MB << 20))
log "backing $BACKING ($PV, $backing_mb MiB), origin $ORIGIN $SIZE_MB MiB, runtime $RT s, $SNAPS snapshot(s)"

# job SIDE WORKLOAD DEV fio-args...: one fio job after sync + drop_caches, results in OUT.
job() {
  local side=$1 wl=$2 dev=$3; shift 3
  local stat=$OUT/$side.$wl.stat perf_pid=
  sync; echo 3 >/proc/sys/vm/drop_caches
  rm -f "$stat" "$stat.tasks"
  if [[ ",$PERF," == *",$wl,"* ]]; then
    # Under TCG perf's interrupt is slow: without this the kernel throttles sampling to nothing.
    sysctl -q -w kernel.perf_cpu_time_max_percent=0
    # Starts disabled; enabling through the control fifo (acknowledged) means it is recording
    # (its start-up, reading every process's maps, takes seconds under TCG).
    rm -f "$WORK/perf.ctl" "$WORK/perf.ack"; mkfifo "$WORK/perf.ctl" "$WORK/perf.ack"
    perf record -e cpu-clock -F 250 -a -g -D -1 --control "fifo:$WORK/perf.ctl,$WORK/perf.ack" \
      -o "$WORK/perf.data" >"$OUT/$side.$wl.perf.log" 2>&1 &
    perf_pid=$!
    exec 8>"$WORK/perf.ctl" 9<"$WORK/perf.ack"
    echo enable >&8; read -r -t 120 _ <&9 || fail "perf did not start"
  fi
  # fio runs the pre/post commands right around the job's I/O (and leaves NAME.*.txt in its cwd).
  (cd "$WORK" && fio --name="$wl" --filename="$dev" --ioengine=libaio --direct=1 --iodepth=32 \
    --exec_prerun="$WORK/stat.sh $stat" --exec_postrun="$WORK/stat.sh $stat" \
    --output-format=json --output="$OUT/$side.$wl.json" --eta=never "$@" \
    >"$OUT/$side.$wl.err" 2>&1) ||
    { cat "$OUT/$side.$wl.err" >&2; fail "fio $side $wl"; }
  if [ -n "$perf_pid" ]; then
    exec 8>&- 9<&-
    kill -INT "$perf_pid"; wait "$perf_pid" || true
    for sort in comm,dso comm,sym; do
      perf report -i "$WORK/perf.data" --stdio --no-children --sort "$sort" -g none \
        --percent-limit 0.5 2>/dev/null | grep -v '^$'
    done >"$OUT/$side.$wl.perf.txt"
    perf report -i "$WORK/perf.data" --stdio --no-children --sort sym -g caller,0.5,callee \
      --percent-limit 2 2>/dev/null >"$OUT/$side.$wl.perf-callers.txt"
    # The server's own samples in finer grain (blksnapd, or dm-snapshot's kworkers).
    perf report -i "$WORK/perf.data" --stdio --no-children --comms blksnapd --sort dso,sym -g none \
      --percent-limit 0.1 2>/dev/null | grep -v '^$' >"$OUT/$side.$wl.perf-server.txt" || true
  fi
  log "$side $wl: $(/usr/bin/python3 -c 'import json,sys; j=json.load(open(sys.argv[1]))["jobs"][0]; r,w=j["read"],j["write"]; print("%d IOPS, %.1f MiB/s" % (r["iops"]+w["iops"], (r["bw"]+w["bw"])/1024))' "$OUT/$side.$wl.json")"
}
timed() { echo --runtime="$RT" --time_based --size="$SIZE"; }
plain_jobs() {  # SIDE DEV
  job "$1" randread4k "$2" --rw=randread --bs=4k $(timed)
  job "$1" randwrite4k "$2" --rw=randwrite --bs=4k $(timed)
  job "$1" randwrite64k "$2" --rw=randwrite --bs=64k $(timed)
}
# cow64k SIDE WORKLOAD FRONT: every write preserves a new chunk (right after a take).
cow64k() { job "$1" "$2" "$3" --rw=randwrite --bs=64k --size="$SIZE" --runtime="$COW_CAP"; }
cow_jobs() {  # SIDE FRONT: right after a take
  cow64k "$1" cow64k "$2"
  job "$1" fill1m "$2" --rw=write --bs=1M --size="$SIZE"
  job "$1" steady64k "$2" --rw=randwrite --bs=64k $(timed)
}
# warm_cow DEV: an unmeasured copy-on-write of a quarter of the chunks (64 KiB random writes) on
# a snapshot the caller made and drops afterwards, so the measured jobs do not pay for the
# first use of the copy-on-write path (under TCG: translating its code, starting threads,
# faulting buffers in; a fresh blksnapd's first copy-on-write job ran up to 2x slower than its
# second, docs/performance-vm.md). BENCH_WARMUP=0 skips it.
warm_cow() {
  [ "$WARMUP" = 1 ] || return 0
  fio --name=warmup --filename="$1" --ioengine=libaio --direct=1 --iodepth=32 --rw=randwrite \
    --bs=64k --size="$SIZE" --io_size=$((SIZE / 4)) --eta=never >/dev/null || fail "warm-up on $1"
}
half_write() {  # FRONT: every other 64 KiB chunk, right after a take
  fio --name=half --filename="$1" --ioengine=libaio --direct=1 --iodepth=32 --rw=write:64k \
    --bs=64k --size="$SIZE" --eta=never >/dev/null || fail "half write on $1"
}
imgread() { job "$1" imgread "$2" --rw=read --bs=1M --size="$SIZE"; }

# The origin is fully written once (random data), so no side reads holes.
fio --name=fill --filename="$ORIGIN" --ioengine=libaio --direct=1 --iodepth=8 --rw=write \
  --bs=1M --size="$SIZE" --refill_buffers --eta=never >/dev/null || fail "initial fill"

if has_side raw; then
  plain_jobs raw "$ORIGIN"
  job raw read1m "$ORIGIN" --rw=read --bs=1M --size="$SIZE"
fi

# dm_snaps K: K snapshot LVs of the origin, snap0 .. snapK-1, each with its own COW LV.
dm_snaps() {
  local i
  for ((i = 0; i < $1; i++)); do
    lvm_ lvcreate -y -s -c 64k -n "snap$i" -L "${COW_MB}M" "$VG/origin" >/dev/null ||
      fail "lvcreate -s snap$i"
  done
}
# dm_done K: each snapshot LV is still valid (not overflowed / invalidated); then removed.
dm_done() {
  local i attr
  for ((i = 0; i < $1; i++)); do
    attr=$(lvm_ lvs --noheadings -o lv_attr "$VG/snap$i" | tr -d ' ')
    [ "${attr:4:1}" != I ] || fail "dm-snapshot snap$i became invalid ($attr)"
    log "dm-snapshot snap$i $(lvm_ lvs --noheadings -o snap_percent "$VG/snap$i" | tr -d ' ')% used"
  done
  for ((i = 0; i < $1; i++)); do lvm_ lvremove -y "$VG/snap$i" >/dev/null || fail "lvremove snap$i"; done
}
if has_side dm-snapshot; then
  dm_snaps 1 && warm_cow "$ORIGIN" && lvm_ lvremove -y "$VG/snap0" >/dev/null || fail "dm warm-up"
  if [ "$SNAPS" -gt 1 ]; then
    dm_snaps 1 && cow64k dm-snapshot cow64k-1 "$ORIGIN" && dm_done 1
    dm_snaps "$SNAPS" && cow64k dm-snapshot cow64k "$ORIGIN" && dm_done "$SNAPS"
  else
    dm_snaps 1
    cow_jobs dm-snapshot "$ORIGIN"
    dm_done 1
    dm_snaps 1
    half_write "$ORIGIN"
    imgread dm-snapshot "/dev/$VG/snap0"
    dm_done 1
  fi
fi

BLKSNAP_SIDES=(blksnap-ublk blksnap-ublk-memory blksnap-ublk-crash blksnap-ublk-power blksnap-loop)
any_blksnap=0
for side in "${BLKSNAP_SIDES[@]}"; do has_side "$side" && any_blksnap=1; done
if [ $any_blksnap = 1 ]; then
  DIFFS=()  # one difference-storage LV per snapshot, like dm-snapshot's COW LVs
  for ((i = 0; i < SNAPS; i++)); do
    lvm_ lvcreate -y -n "diff$i" -L "${COW_MB}M" "$VG" >/dev/null || fail "lvcreate diff$i"
    DIFFS+=("/dev/$VG/diff$i")
  done
  "$DAEMON" --state-dir "$WORK/state" --control "$WORK/control.sock" --nbd-unix "$WORK/nbd.sock" \
    --fuse-dir "$WORK/fuse" --chunk-minimum-shift 16 --diff-storage-minimum 64M $DAEMON_ARGS \
    --log-file "$WORK/blksnapd.log" --daemonize --pidfile "$WORK/blksnapd.pid" ||
    fail "blksnapd start"
  DAEMON_PID=$(cat "$WORK/blksnapd.pid")
  a=$(bs --json attach "$ORIGIN" --name vol --ublk --loop) || fail "attach"
  declare -A FRONT=([ublk]=$(jget "$a" 'j["ublk"]') [loop]=$(jget "$a" 'j["loop"]'))
  log "blksnapd $DAEMON_PID: front ublk ${FRONT[ublk]}, loop ${FRONT[loop]}"
  for side in "${BLKSNAP_SIDES[@]}"; do
    has_side "$side" || continue
    kind=${side#blksnap-}; kind=${kind%%-*}
    durability=${side#blksnap-$kind}; durability=${durability#-}  # empty: the default
    dur_args=(); [ -n "$durability" ] && dur_args=(--durability "$durability")
    front=${FRONT[$kind]}
    [ -b "$front" ] || fail "$side: front '$front'"
    # Without a snapshot the durability changes nothing: the plain jobs run once per front.
    [ -z "$durability" ] && [ "$SNAPS" = 1 ] && plain_jobs "$side" "$front"
    if [ "$WARMUP" = 1 ]; then
      id=$(bs snapshot create --storage "${DIFFS[0]}" --limit 0 "${dur_args[@]}" vol) &&
        bs snapshot take "$id" >/dev/null && warm_cow "$front" &&
        bs snapshot destroy "$id" >/dev/null || fail "$side warm-up"
    fi
    phases=(cow img); [ "$SNAPS" -gt 1 ] && phases=(cow1 cowN)
    for phase in "${phases[@]}"; do
      k=1; [ $phase = cowN ] && k=$SNAPS
      ids=()  # oldest first: destroying the oldest first copies nothing into the others
      for ((i = 0; i < k; i++)); do
        img_args=("--$kind"); [ "$IMAGES" = 0 ] && [ $phase != img ] && img_args=()
        id=$(bs snapshot create --storage "${DIFFS[$i]}" --limit 0 "${dur_args[@]}" "${img_args[@]}" vol 2>"$WORK/create.err") ||
          { cat "$WORK/create.err" >&2; fail "$side create (storage ${DIFFS[$i]}, ${durability:-default} durability)"; }
        bs snapshot take "$id" >/dev/null || fail "$side take $id"
        ids+=("$id")
      done
      id=${ids[$((k - 1))]}  # the newest
      case $phase in
        cow)
          log "$side: snapshot $id durability $(jget "$(bs --json snapshot info "$id")" 'j.get("durability")')"
          cow_jobs "$side" "$front"
          log "$side: blksnapd $(grep -E '^(Rss|AnonHugePages)' /proc/$DAEMON_PID/smaps_rollup | tr -s ' ' | tr '\n' ' ')" ;;
        cow1 | cowN)
          log "$side: $k snapshot(s) ${ids[*]}, durability $(jget "$(bs --json snapshot info "$id")" 'j.get("durability")')"
          wl=cow64k; [ $phase = cow1 ] && wl=cow64k-1
          cow64k "$side" "$wl" "$front" ;;
        img)
          img=$(jget "$(bs --json snapshot info "$id")" "j['devices'][0]['image']['$kind']")
          [ -b "$img" ] || fail "$side: image device '$img'"
          half_write "$front"
          imgread "$side" "$img" ;;
      esac
      for id in "${ids[@]}"; do
        info=$(bs --json snapshot info "$id")
        [ "$(jget "$info" 'j["devices"][0]["error"]')" = 0 ] || fail "$side: snapshot error: $info"
        log "$side: snapshot $id difference storage used $(($(jget "$info" 'j["storage"]["used"]') >> 20)) MiB"
      done
      for id in "${ids[@]}"; do bs snapshot destroy "$id" >/dev/null || fail "$side destroy $id"; done
    done
  done
  bs detach vol >/dev/null || fail "detach"
fi

/usr/bin/python3 - "$OUT/run.json" <<PY
import json, os, platform, sys, time
json.dump({"time": time.strftime("%Y-%m-%d %H:%M:%S"), "kernel": platform.release(),
           "tree": "${BENCH_TREE:-unknown}", "daemon_args": "$DAEMON_ARGS",
           "backing": "$BACKING", "size_mib": $SIZE_MB, "snapshots": $SNAPS, "images": $IMAGES, "warmup": $WARMUP, "runtime_s": $RT, "cpus": os.cpu_count(),
           "mem_mib": os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") >> 20},
          open(sys.argv[1], "w"))
PY
log "done"
