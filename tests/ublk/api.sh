#!/usr/bin/env bash
# Purpose: the Device C++ API against the real ublk_drv (what the daemon will call):
# Create/Stop, data through /dev/ublkbN, in-process Abandon + Recover, Recover refusing a
# mismatched backend.
# Algorithm (inside the VM): load ublk_drv and run the ublk_device_test GoogleTest binary
# (which skips these cases on hosts without ublk); every test must run, none may skip.
. "$(dirname "$0")/lib.sh"
BIN=$BUILD/src/ublk/ublk_device_test
[ -x "$BIN" ] || fail "$BIN not built"
"$BIN" --gtest_filter='-*WithoutUblk' 2>&1 | tee "$WORK/gtest.out"
[ "${PIPESTATUS[0]}" = 0 ] || fail "ublk_device_test failed"
! grep -q "SKIPPED" "$WORK/gtest.out" || fail "tests skipped inside the VM"
echo "PASS api"
