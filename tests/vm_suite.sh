#!/usr/bin/env bash
# Runs inside the test VM (started by tests/vm_test.sh): the scripts of one ctest test in turn,
# on a single boot, so a group of VM tests pays the ~1 min TCG boot once instead of per script.
#
#   vm_suite.sh BUILD_DIR SCRIPT_TIMEOUT ENTRY...      ENTRY = "SCRIPT [ARGS...]" (one word)
#
# Each ENTRY runs as `bash SCRIPT BUILD_DIR ARGS...` in BUILD_DIR, in its own process group
# (GNU timeout makes one and kills it after SCRIPT_TIMEOUT seconds); the script makes its own
# scratch directory under $BLKSNAP_VM_TMP (a tmpfs this runner mounts) and its EXIT trap cleans
# up what it started. Between scripts this
# runner also removes what a failed or killed script may have left, so the next one starts as on
# a fresh boot: processes of the script's group and any process running a binary of BUILD_DIR
# (blksnapd daemonizes out of the group), file systems mounted under the scratch tmpfs, kernel
# NBD connections, loop devices over its files, every entry in it, ublk devices (by unloading
# ublk_drv; the scripts load it again), the page cache, and the kernel log (scripts grep dmesg
# for I/O errors on ublk devices, and device numbers are reused). Whatever it had to clean is
# printed. Output: a START header and a PASS/FAIL line with the elapsed seconds per script, a
# summary at the end. Exit status: 0 when every script exited 0, else 1 (a script's 77 is a
# failure here: only the host wrapper may skip, when qemu cannot run).
set -uo pipefail
BUILD=$1 SCRIPT_TIMEOUT=$2
shift 2
cd "$BUILD" || exit 1
echo  # the VM console eats the first line of output
tag="===== vm-suite:"
# A scratch tmpfs of the VM's own for the scripts' scratch directories (lib.sh: mktemp under
# $BLKSNAP_VM_TMP), emptied in full between scripts. Not /tmp: the overlay's /tmp shows what host
# processes put in the host's /tmp meanwhile, and the build dir and sources may lie under /tmp
# (a CI clone), where a tmpfs mounted on /tmp would hide them.
SCRATCH=/blksnap-vm-scratch
mkdir -p "$SCRATCH" && mount -t tmpfs -o size=75% tmpfs "$SCRATCH" || exit 1
export BLKSNAP_VM_TMP=$SCRATCH

# name ENTRY: the script path below tests/ plus its arguments, for headers and the summary.
name() {
  local script=${1%% *} args=
  [ "$1" = "$script" ] || args=" ${1#* }"
  echo "$(basename "$(dirname "$script")")/$(basename "$script")$args"
}

# build_procs: "PID BINARY" of each live process running a binary of BUILD_DIR (a zombie has
# no exe link). One find, not a readlink per process: forks are slow under TCG.
build_procs() {
  find /proc -mindepth 2 -maxdepth 2 -name exe -lname "$BUILD/*" -printf '%h %l\n' 2>/dev/null |
    sed 's#^/proc/##'
}

# tidy: undo what the last script left; prints one "left over:" line per thing it removed.
tidy() {
  local p m s d f left=()
  while read -r p f; do
    [ -n "$p" ] && kill -KILL "$p" 2>/dev/null && left+=("process $p $f")
  done <<<"$(build_procs)"
  # A process killed with ublk commands in flight exits once the kernel cancels them (slow
  # under TCG): wait up to 120 s for the binaries to be gone before touching the devices.
  for _ in $(seq 1200); do
    [ -n "$(build_procs)" ] || break
    sleep 0.1
  done
  for m in $(awk -v s="^$SCRATCH/" '$2 ~ s {print $2}' /proc/mounts | sort -r); do
    fsfreeze -u "$m" 2>/dev/null
    umount -l "$m" && left+=("mount $m")
  done
  for s in /sys/block/nbd*/pid; do
    [ -e "$s" ] || continue
    d=$(basename "$(dirname "$s")")
    nbd-client -d "/dev/$d" >/dev/null 2>&1; left+=("nbd connection /dev/$d")
  done
  while read -r d f; do
    case $f in "$SCRATCH"/*) losetup -d "$d" && left+=("loop $d over $f") ;; esac
  done <<<"$(losetup -n -l -O NAME,BACK-FILE 2>/dev/null)"
  if compgen -G "/dev/ublk[bc]*" >/dev/null; then
    left+=("ublk devices: $(echo /dev/ublk[bc]*)")
    timeout 120 modprobe -r ublk_drv || left+=("(modprobe -r ublk_drv failed: devices remain)")
  fi
  for f in "$SCRATCH"/* "$SCRATCH"/.[!.]*; do
    [ -e "$f" ] || continue
    rm -rf "$f"; left+=("$f")
  done
  sync; echo 3 >/proc/sys/vm/drop_caches
  dmesg -C
  for f in "${left[@]+"${left[@]}"}"; do echo "$tag left over: $f (removed)"; done
}

results=() failed=0 total_start=$(date +%s)
for entry in "$@"; do
  read -r -a words <<<"$entry"
  n=$(name "$entry")
  echo; echo "$tag START $n"
  start=$(date +%s)
  # In the background, so timeout is not the shell's foreground job and $! names its group.
  timeout -k 30 "$SCRIPT_TIMEOUT" bash "${words[0]}" "$BUILD" "${words[@]:1}" &
  pid=$!
  wait "$pid"; rc=$?
  secs=$(($(date +%s) - start))
  kill -KILL -- "-$pid" 2>/dev/null  # what the script left running in its group
  why=
  if [ "$secs" -ge "$SCRIPT_TIMEOUT" ] && { [ "$rc" = 124 ] || [ "$rc" = 137 ]; }; then
    why=", timed out after $SCRIPT_TIMEOUT s"
  elif [ "$rc" -gt 128 ]; then
    why=", killed by SIG$(kill -l "$((rc - 128))" 2>/dev/null)"
  fi
  if [ "$rc" = 0 ]; then
    result="PASS $n (${secs} s)"
  else
    failed=$((failed + 1))
    result="FAIL $n (exit $rc$why, ${secs} s)"
    # Indented: run-in-vm drops console lines that look like kernel messages.
    echo "$tag kernel log of $n (tail):"; dmesg | tail -n 30 | sed 's/^/  /'
  fi
  tidy
  echo "$tag $result"
  results+=("$result")
done

echo; echo "$tag summary ($# scripts, $failed failed, $(($(date +%s) - total_start)) s):"
for r in "${results[@]}"; do echo "$tag   $r"; done
[ "$failed" = 0 ]
