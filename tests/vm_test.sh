#!/usr/bin/env bash
# Host-side wrapper for the integration tests that need the VM kernel (tests/ublk,
# tests/daemon_ublk, tests/nbd_kernel): boots the VM once and runs one or more scripts in it.
#
#   vm_test.sh [--timeout S] [--script-timeout S] BUILD_DIR ENTRY...
#     ENTRY = "SCRIPT [ARGS...]", one word each, e.g. "tests/ublk/fs.sh xfs"
#   VM_ONLY=ERE    run only the entries matching ERE (e.g. VM_ONLY='recover.sh ext4')
#
# The host kernel has no ublk_drv (nor nbd), so this boots Debian's 6.12 kernel with
# /work/shared/vm/run-in-vm (TCG, 2 CPUs; ~1 min per boot) and runs tests/vm_suite.sh there,
# which runs `bash SCRIPT BUILD_DIR ARGS...` for each ENTRY in turn, in BUILD_DIR (shared
# read-write with the VM at the same path, so the built binaries are used directly), cleaning up
# between scripts and printing a PASS/FAIL line per script and a summary. --timeout bounds the
# whole VM (default 800 s, or $UBLK_VM_TIMEOUT), --script-timeout each script (default 600 s).
# One script alone, for debugging: tests/vm_test.sh build "tests/ublk/fs.sh xfs".
# Exit status: 0 when every script passed, 1 otherwise (the failed scripts are named at the
# end); 77 (ctest SKIP) only when qemu cannot run at all.
set -uo pipefail
VM_TIMEOUT=${UBLK_VM_TIMEOUT:-800} SCRIPT_TIMEOUT=600
while [ $# -gt 0 ]; do case $1 in
  --timeout) VM_TIMEOUT=$2; shift 2 ;;
  --script-timeout) SCRIPT_TIMEOUT=$2; shift 2 ;;
  *) break ;; esac; done
[ $# -ge 2 ] || { echo "usage: vm_test.sh [--timeout S] [--script-timeout S] BUILD_DIR \"SCRIPT [ARGS...]\"..." >&2; exit 2; }
BUILD=$(cd "$1" && pwd) || exit 2
shift
SUITE=$(cd "$(dirname "$0")" && pwd)/vm_suite.sh
entries=()
for e in "$@"; do
  script=${e%% *}
  [ -f "$script" ] || { echo "vm_test.sh: '$script' (of entry '$e') is not a script; one entry is \"SCRIPT [ARGS...]\" in one word" >&2; exit 2; }
  script=$(cd "$(dirname "$script")" && pwd)/$(basename "$script")
  [ "$e" = "${e%% *}" ] || script="$script ${e#* }"
  if [ -z "${VM_ONLY:-}" ] || grep -qE -- "$VM_ONLY" <<<"$script"; then entries+=("$script"); fi
done
[ ${#entries[@]} -gt 0 ] || { echo "vm_test.sh: no entry matches VM_ONLY='${VM_ONLY:-}'" >&2; exit 2; }

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
start=$(date +%s)
# A VM that fails before the suite starts its first script (seen once in CI: status 1 after 8 s,
# boot included, nothing printed) ran no test: it is booted once more. A failure of a script,
# or a VM that dies after a START, is reported as it is.
for attempt in 1 2; do
  "$RUN_IN_VM" --cpus 2 --mem 2048 --timeout "$VM_TIMEOUT" -- \
    bash "$SUITE" "$BUILD" "$SCRIPT_TIMEOUT" "${entries[@]}" 2>&1 | tee "$out"
  rc=${PIPESTATUS[0]}
  [ "$rc" != 0 ] && [ "$attempt" = 1 ] && ! tr -d '\r' <"$out" | grep -aqE "^===== vm-suite: START" || break
  echo "vm_test.sh: the VM ended (status $rc) before the suite started a script; booting it again"
done
echo "vm_test.sh: VM ran ${#entries[@]} script(s) in $(($(date +%s) - start)) s, boot included, status $rc"
if [ "$rc" != 0 ] && grep -qE "run-in-vm: cannot download|qemu-system-x86_64: (command )?not found|Could not access KVM|failed to initialize" "$out"; then
  rm -f "$out"; echo "SKIP: qemu could not run (see above)"; exit 77
fi
if [ "$rc" != 0 ]; then
  # Name what failed, also when the VM died (timeout, crash) before the suite's summary.
  tr -d '\r' <"$out" | grep -aE "^===== vm-suite: FAIL" | sed 's/^===== vm-suite: /vm_test.sh: /'
  last=$(tr -d '\r' <"$out" | grep -aE "^===== vm-suite: (START|PASS|FAIL)" | tail -n 1)
  case $last in *START*) echo "vm_test.sh: the VM stopped during ${last#*START } (VM timeout ${VM_TIMEOUT} s or crash)" ;; esac
  grep -aqE "^===== vm-suite: summary" "$out" || echo "vm_test.sh: the VM ended before the suite's summary; scripts after the last START did not run"
fi
rm -f "$out"
exit "$rc"
