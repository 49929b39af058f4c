#!/usr/bin/env bash
# Host-side wrapper for the integration tests that need the VM kernel (tests/ublk,
# tests/daemon_ublk): runs one script inside the VM.
#
#   vm_test.sh BUILD_DIR SCRIPT [ARGS...]
#
# The host kernel has no ublk_drv, so each such test boots Debian's 6.12 kernel with
# /work/shared/vm/run-in-vm (TCG, 2 CPUs) and runs `bash SCRIPT BUILD_DIR ARGS...` there, in
# BUILD_DIR (shared read-write with the VM at the same path, so the built binaries are used
# directly). Exit status: the script's; 77 (ctest SKIP) only when qemu cannot run at all.
set -uo pipefail
BUILD=$(cd "$1" && pwd); SCRIPT=$2; shift 2
RUN_IN_VM=${RUN_IN_VM:-/work/shared/vm/run-in-vm}
if [ ! -x "$RUN_IN_VM" ]; then
  echo "SKIP: $RUN_IN_VM not found, cannot boot the ublk test VM"; exit 77
fi
if ! command -v qemu-system-x86_64 >/dev/null 2>&1 && [ ! -w /var/lib/dpkg ]; then
  echo "SKIP: qemu-system-x86_64 missing and not installable here, cannot boot the ublk test VM"
  exit 77
fi
cd "$BUILD" || exit 1
out=$(mktemp)
"$RUN_IN_VM" --cpus 2 --mem 2048 --timeout "${UBLK_VM_TIMEOUT:-800}" -- \
  bash "$SCRIPT" "$BUILD" "$@" 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
if [ "$rc" != 0 ] && grep -qE "run-in-vm: cannot download|qemu-system-x86_64: (command )?not found|Could not access KVM|failed to initialize" "$out"; then
  rm -f "$out"; echo "SKIP: qemu could not run (see above)"; exit 77
fi
rm -f "$out"
exit "$rc"
