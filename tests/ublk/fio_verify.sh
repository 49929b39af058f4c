#!/usr/bin/env bash
# Purpose: data integrity of a ublk device served by blksnap-ublk-testserver, under fio and
# block-level discard / write-zeroes, and that the data really lands in the backing file.
# Algorithm (inside the VM): serve a 128 MiB sparse file with 2 hardware queues; check the
# queue limits the kernel took from the backend (size, block size, write cache, FUA, discard,
# queue count); fio random
# writes with mixed sizes (4k..128k, QD32, O_DIRECT) verified with crc32c; fio 4k random
# writes at QD32 verified with crc32c; blkdiscard and blkdiscard -z a range, which must read
# back as zeroes; remember the device's sha256; stop the server (the device must vanish);
# the backing file's sha256 must equal the device's.
. "$(dirname "$0")/lib.sh"

truncate -s 128M "$WORK/backing"
start_server --queues 2 --depth 64 "$WORK/backing"
q=/sys/block/ublkb$DEV_ID/queue
[ "$(cat /sys/block/ublkb$DEV_ID/size)" = $((128 * 2048)) ] || fail "wrong device size"
[ "$(cat $q/logical_block_size)" = 512 ] || fail "logical block size $(cat $q/logical_block_size)"
[ "$(cat $q/write_cache)" = "write back" ] || fail "no volatile write cache (flush not passed)"
[ "$(cat $q/fua)" = 1 ] || fail "FUA not advertised"
[ "$(cat $q/discard_max_bytes)" != 0 ] || fail "discard not advertised"
[ "$(cat $q/nr_requests)" -ge 1 ] && [ "$(ls /sys/block/ublkb$DEV_ID/mq | wc -l)" = 2 ] ||
  fail "expected 2 hardware queues"

FIO="fio --filename=$DEV --direct=1 --ioengine=libaio --iodepth=32 --verify=crc32c --verify_fatal=1 --do_verify=1 --group_reporting --eta=never"
log "fio mixed-size random writes with verify"
$FIO --name=mixed --rw=randwrite --bsrange=4k-128k --size=48M --offset=0 || fail "fio mixed verify"
log "fio 4k random writes with verify"
$FIO --name=rand4k --rw=randwrite --bs=4k --size=16M --offset=64M || fail "fio 4k verify"

log "discard and write-zeroes"
dd if=/dev/urandom of="$DEV" bs=1M seek=96 count=8 oflag=direct status=none
blkdiscard -o $((96 << 20)) -l $((4 << 20)) "$DEV" || fail "blkdiscard"
blkdiscard -z -o $((100 << 20)) -l $((4 << 20)) "$DEV" || fail "blkdiscard -z"
head -c $((8 << 20)) /dev/zero >"$WORK/zeros"
dd if="$DEV" of="$WORK/range" bs=1M skip=96 count=8 iflag=direct status=none
cmp "$WORK/range" "$WORK/zeros" || fail "discarded / zeroed range does not read as zeroes"

sync
dev_sum=$(dd if="$DEV" bs=1M iflag=direct status=none | sha256sum | cut -d' ' -f1)
stop_server
file_sum=$(sha256sum <"$WORK/backing" | cut -d' ' -f1)
[ "$dev_sum" = "$file_sum" ] || fail "backing file differs from what the device returned"
echo "PASS fio_verify"
