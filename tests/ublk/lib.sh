# Shared helpers for the ublk integration scripts; sourced inside the VM.
#   $1 of the sourcing script: the build directory (holds src/ublk/blksnap-ublk-testserver).
# Provides: SERVER, WORK (scratch dir, removed on exit), start_server, stop_server, fail, log.
set -euo pipefail

BUILD=${1:?usage: $0 BUILD_DIR}
SERVER=$BUILD/src/ublk/blksnap-ublk-testserver
[ -x "$SERVER" ] || { echo "FAIL: $SERVER not built" >&2; exit 1; }
# Under the VM suite's own tmpfs (tests/vm_suite.sh exports BLKSNAP_VM_TMP), else /tmp.
WORK=$(mktemp -d "${BLKSNAP_VM_TMP:-/tmp}/ublk-test.XXXXXX")
SERVER_PID=
DEV=
DEV_ID=

log() { echo "== $*"; }
echo  # the VM console eats the first line of output
fail() { echo "FAIL: $*" >&2; exit 1; }

cleanup() {
  set +e
  mountpoint -q "$WORK/mnt" 2>/dev/null && umount -l "$WORK/mnt"
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID"; wait "$SERVER_PID"
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

modprobe ublk_drv || fail "modprobe ublk_drv"
[ -c /dev/ublk-control ] || fail "/dev/ublk-control missing after modprobe"

# start_server ARGS...: runs the test server in the background; sets SERVER_PID, DEV, DEV_ID.
start_server() {
  "$SERVER" "$@" >"$WORK/server.out" 2>"$WORK/server.err" &
  SERVER_PID=$!
  for _ in $(seq 1200); do
    DEV=$(head -n1 "$WORK/server.out" 2>/dev/null || true)
    [ -n "$DEV" ] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.err" >&2; fail "server exited: $*"; }
    sleep 0.1
  done
  [ -n "$DEV" ] || { cat "$WORK/server.err" >&2; ls -l /dev/ublk* >&2; dmesg | tail >&2
    fail "server did not report a device"; }
  [ -b "$DEV" ] || fail "$DEV is not a block device"
  DEV_ID=${DEV#/dev/ublkb}
  log "server $SERVER_PID serves $DEV"
}

# stop_server: SIGTERM, expect a clean exit and the device gone.
stop_server() {
  kill -TERM "$SERVER_PID"
  local rc=0
  wait "$SERVER_PID" || rc=$?
  SERVER_PID=
  [ "$rc" = 0 ] || { cat "$WORK/server.err" >&2; fail "server exit status $rc"; }
  for _ in $(seq 50); do [ -e "$DEV" ] || break; sleep 0.1; done
  [ ! -e "$DEV" ] || fail "$DEV still present after stop"
  [ ! -e "/dev/ublkc$DEV_ID" ] || fail "/dev/ublkc$DEV_ID still present after stop"
}
