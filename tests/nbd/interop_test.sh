#!/bin/bash
# Purpose: interoperability of blksnap's NBD server with the real clients from Debian:
# nbdinfo (--list, --map for base:allocation and blksnap:cbt, --can), nbdcopy in both
# directions, qemu-img info/compare/convert, qemu-io write -z / discard / read -P / flush, and
# fio's nbd engine with verify, several jobs (connections) at once.
# Algorithm: serve a sparse file holding sector pattern seq 1 in its first 16 MiB (plus a CBT
# map and a read-only twin) with blksnap-nbd-testserver; check what each client reports
# against what we put there; copy data out and in and verify it with blksnap-pattern; let
# qemu-io write known bytes and read them back; run fio randwrite+verify on 4 connections.
# Usage: interop_test.sh TESTSERVER PATTERN_TOOL   (exit 77 = skipped)
set -euo pipefail
SERVER=$1
PATTERN=$2
for tool in nbdinfo nbdcopy qemu-img qemu-io fio; do
  command -v $tool >/dev/null || { echo "SKIP: $tool missing"; exit 77; }
done
TMP=$(mktemp -d /tmp/nbd-interop-XXXXXX)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT
ok() { echo "ok - $*"; }
fail() { echo "FAIL - $*"; exit 1; }

MiB=$((1 << 20))
truncate -s 64M "$TMP/disk.img"
"$PATTERN" write "$TMP/disk.img" --length 16M --seq 1
printf '\x00\x00\x05\x05\x05\x02' > "$TMP/cbt.map"  # 4 MiB blocks, then short: rest unchanged
"$SERVER" --unix "$TMP/s.sock" "sda@4f1c-snap=file:$TMP/disk.img,desc=snapshot image,cbt=$TMP/cbt.map:4M" \
  "ro=file:$TMP/disk.img,ro" "solo=mem:8M,nomulticonn" > "$TMP/out" &
PID=$!
for i in $(seq 100); do grep -q READY "$TMP/out" 2>/dev/null && break; sleep 0.1; done
URI=$(awk '$1 == "sda@4f1c-snap" {print $2}' "$TMP/out")
RO=$(awk '$1 == "ro" {print $2}' "$TMP/out")
SOLO=$(awk '$1 == "solo" {print $2}' "$TMP/out")
[ -n "$URI" ] || fail "no URI"

# nbdinfo
nbdinfo --list "$URI" > "$TMP/list"
grep -q 'export="sda@4f1c-snap"' "$TMP/list" && grep -q 'description: snapshot image' "$TMP/list" \
  && grep -q 'export="ro"' "$TMP/list" && grep -q 'blksnap:cbt' "$TMP/list" || fail "nbdinfo --list"
ok "nbdinfo --list shows exports, descriptions and contexts"
nbdinfo --map "$URI" > "$TMP/map"
head -1 "$TMP/map" | grep -q "^ *0 *16777216 *0 *data" || fail "base:allocation map: $(cat $TMP/map)"
grep -q "hole,zero" "$TMP/map" || fail "no hole in map"
ok "nbdinfo --map (base:allocation): data then holes"
nbdinfo --map=blksnap:cbt "$URI" > "$TMP/cbt"
cat "$TMP/cbt"
diff <(awk '{print $1, $2, $3}' "$TMP/cbt") - <<EOT || fail "blksnap:cbt map"
0 8388608 0
8388608 12582912 5
20971520 4194304 2
25165824 41943040 0
EOT
ok "nbdinfo --map=blksnap:cbt shows the merged read map"
nbdinfo --can write "$URI" && nbdinfo --can trim "$URI" && nbdinfo --can zero "$URI" \
  && nbdinfo --can fast-zero "$URI" && nbdinfo --can flush "$URI" && nbdinfo --can fua "$URI" \
  && nbdinfo --can multi-conn "$URI" && nbdinfo --can cache "$URI" || fail "nbdinfo --can (rw)"
! nbdinfo --can write "$RO" || fail "read-only export writable"
! nbdinfo --can multi-conn "$SOLO" || fail "multi-conn advertised for a non-shared cache"
ok "nbdinfo --can matches device capabilities and export options"

# nbdcopy out and in.
nbdcopy "$URI" "$TMP/copy.img"
"$PATTERN" verify "$TMP/copy.img" --length 16M --seq 1 && cmp "$TMP/copy.img" "$TMP/disk.img"
ok "nbdcopy export -> file"
truncate -s 8M "$TMP/in.img"
"$PATTERN" write "$TMP/in.img" --seq 2
nbdcopy "$TMP/in.img" "$SOLO"
nbdcopy "$SOLO" "$TMP/back.img"
"$PATTERN" verify "$TMP/back.img" --seq 2
ok "nbdcopy file -> export -> file"

# qemu-img
qemu-img info "$URI" | grep -q "virtual size: 64 MiB" || fail "qemu-img info"
qemu-img compare -f raw -F raw "$URI" "$TMP/disk.img"
qemu-img convert -f raw -O raw "$URI" "$TMP/conv.img"
"$PATTERN" verify "$TMP/conv.img" --length 16M --seq 1
qemu-img convert -n -f raw -O raw "$TMP/in.img" "$SOLO"
qemu-img compare -f raw -F raw "$SOLO" "$TMP/in.img"
ok "qemu-img info/compare/convert"

# qemu-io
qemu-io -f raw -c 'write -P 0x5a 32M 1M' -c 'write -z 33M 1M' -c 'discard 34M 1M' -c flush \
  -c 'read -P 0x5a 32M 1M' -c 'read -P 0 33M 1M' "$URI" | tee "$TMP/qio"
! grep -q "Pattern verification failed\|error\|failed" "$TMP/qio" || fail "qemu-io"
cmp <(head -c $((33 * MiB)) "$TMP/disk.img" | tail -c $MiB) <(head -c $MiB /dev/zero | tr '\0' 'Z') \
  || fail "qemu-io write did not reach the file"
ok "qemu-io write -P / write -z / discard / flush / read -P"

# fio nbd engine with verify, 4 connections at once on disjoint ranges.
fio --name=nbdverify --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=32 \
  --numjobs=4 --offset_increment=8M --size=8M --offset=16M --verify=crc32c \
  --verify_fatal=1 --do_verify=1 --verify_state_save=0 --group_reporting > "$TMP/fio" \
  || { cat "$TMP/fio"; fail fio; }
grep -q "err= 0" "$TMP/fio" || fail "fio reported errors"
ok "fio nbd engine randwrite+verify, 4 connections, iodepth 32"

"$PATTERN" verify "$TMP/disk.img" --length 16M --seq 1
ok "pattern region untouched by the other tests"
kill -TERM $PID
wait $PID
PID=
echo PASS
