# Shared helpers of the daemon + ublk scripts; sourced inside the VM.
#   $1 of the sourcing script: the build directory (holds src/daemon/blksnapd, src/cli/blksnap).
# Provides: WORK (scratch dir, removed on exit), STATE (the daemon's state dir), start_daemon,
# stop_daemon, kill9_daemon, bs (the CLI on this daemon), jget (a value out of JSON), fail, log.
set -euo pipefail

BUILD=${1:?usage: $0 BUILD_DIR}
DAEMON=$BUILD/src/daemon/blksnapd
CLI=$BUILD/src/cli/blksnap
[ -x "$DAEMON" ] || { echo "FAIL: $DAEMON not built" >&2; exit 1; }
[ -x "$CLI" ] || { echo "FAIL: $CLI not built" >&2; exit 1; }
# Under the VM suite's own tmpfs (tests/vm_suite.sh exports BLKSNAP_VM_TMP), else /tmp.
WORK=$(mktemp -d "${BLKSNAP_VM_TMP:-/tmp}/daemon-ublk.XXXXXX")
STATE=$WORK/state
DAEMON_PID=

echo  # the VM console eats the first line of output
log() { echo "== $*"; }
fail() {
  echo "FAIL: $*" >&2
  echo "--- blksnapd log (tail)" >&2; tail -n 40 "$WORK/blksnapd.log" >&2 2>/dev/null || true
  exit 1
}

cleanup() {
  set +e
  for m in "$WORK"/mnt*; do mountpoint -q "$m" 2>/dev/null && umount -l "$m"; done
  if [ -n "$DAEMON_PID" ] && alive "$DAEMON_PID"; then
    kill -TERM "$DAEMON_PID"
    for _ in $(seq 100); do alive "$DAEMON_PID" || break; sleep 0.1; done
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

modprobe ublk_drv || fail "modprobe ublk_drv"
[ -c /dev/ublk-control ] || fail "/dev/ublk-control missing after modprobe"

# The CLI against this test's daemon.
bs() { "$CLI" --control "$WORK/control.sock" "$@"; }

# jget JSON EXPR: prints the Python expression EXPR evaluated on the JSON text (as j).
jget() {
  /usr/bin/python3 -S -c 'import json,sys; j=json.loads(sys.argv[1]); v=eval(sys.argv[2]); print("null" if v is None else (str(v).lower() if isinstance(v,bool) else v))' "$1" "$2"
}

# start_daemon [ARGS...]: blksnapd in the background on $STATE (no FUSE: ublk and NBD only);
# returns once it is ready (--daemonize waits for start-up, including the restore after a crash).
start_daemon() {
  "$DAEMON" --state-dir "$STATE" --control "$WORK/control.sock" --nbd-unix "$WORK/nbd.sock" \
    --no-fuse --log-level debug --log-file "$WORK/blksnapd.log" --daemonize \
    --pidfile "$WORK/blksnapd.pid" --diff-storage-minimum 64M "$@" || fail "blksnapd start"
  DAEMON_PID=$(cat "$WORK/blksnapd.pid")
  log "blksnapd pid $DAEMON_PID"
}

# alive PID: the process exists and is not a zombie (the daemonized blksnapd is not our child).
alive() {
  [ -e "/proc/$1/stat" ] || return 1
  [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]
}

# show_threads: the daemon's state and each thread's wait channel, state and kernel stack
# (stderr), and the kernel's list of blocked tasks (sysrq w, into the kernel log the suite prints
# after a failure). Called while the daemon is still there 60 s after a SIGTERM or SIGKILL: CI
# saw its exit take over 120 s twice (once after a clean stop, once after kill -9 during fio),
# with the VM idle, so the exit waits in the kernel, and by the time of the failure the process
# had gone.
show_threads() {
  grep -E "State|Threads" "/proc/$DAEMON_PID/status" >&2 || true
  for t in /proc/"$DAEMON_PID"/task/*; do
    echo "thread ${t##*/} ($(cat "$t/comm" 2>/dev/null)): $(cat "$t/wchan" 2>/dev/null)" \
      "$(awk '{print $3}' "$t/stat" 2>/dev/null)" >&2
    sed 's/^/    /' "$t/stack" >&2 2>/dev/null || true
  done
  echo w >/proc/sysrq-trigger 2>/dev/null || true
}
# wait_exit SIGNAL: waits up to 120 s for the daemon to be gone, showing its threads once at 60 s
# (the message names SIGNAL); returns 1, after showing them again, if it is still there.
wait_exit() {
  local i
  for i in $(seq 1200); do
    alive "$DAEMON_PID" || return 0
    [ "$i" = 600 ] && { echo "blksnapd still there 60 s after $1:" >&2; show_threads; }
    sleep 0.1
  done
  alive "$DAEMON_PID" || return 0
  show_threads
  return 1
}

# stop_daemon: SIGTERM; it must log its clean stop and exit — within 120 s, as after SIGKILL
# (the exit waits for the kernel to cancel the ublk queues' io_uring commands, slow under TCG
# on a loaded host; CI once saw the clean stop logged and the process still there).
stop_daemon() {
  local before t0=$SECONDS
  before=$(grep -c "blksnapd stopped" "$WORK/blksnapd.log" || true)
  kill -TERM "$DAEMON_PID"
  wait_exit SIGTERM || fail "blksnapd did not stop on SIGTERM ($((SECONDS - t0)) s)"
  log "blksnapd gone $((SECONDS - t0)) s after SIGTERM"
  [ "$(grep -c "blksnapd stopped" "$WORK/blksnapd.log")" -gt "$before" ] ||
    fail "blksnapd did not stop cleanly"
  DAEMON_PID=
}

# kill9_daemon: SIGKILL, wait until the process is gone (its exit waits for the kernel to
# cancel its ublk commands, which can take a while under TCG; 120 s at most).
kill9_daemon() {
  local t0=$SECONDS
  kill -9 "$DAEMON_PID"
  wait_exit SIGKILL || fail "blksnapd still exists 120 s after SIGKILL"
  log "blksnapd gone $((SECONDS - t0)) s after SIGKILL"
  DAEMON_PID=
}

# wait_gone PATH: the device node must disappear within 5 s.
wait_gone() {
  for _ in $(seq 50); do [ -e "$1" ] || return 0; sleep 0.1; done
  fail "$1 still present"
}
