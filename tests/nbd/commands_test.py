#!/usr/bin/python3
# Purpose: exercise every NBD command and flag of blksnap's server through libnbd (the
# reference client library), checking data with the self-checking sector pattern.
# Algorithm: serve a 64 MiB sparse file whose first 8 MiB hold pattern seq 1 (written with
# blksnap-pattern), a read-only export of the same file, a memory export and a CBT read map.
# Then: check the advertised flags; read data (simple and structured, including OFFSET_HOLE
# chunks over the sparse part and the DF flag); write with and without FUA and verify the
# backing file with blksnap-pattern; WRITE_ZEROES with NO_HOLE and FAST_ZERO; TRIM; CACHE;
# FLUSH; BLOCK_STATUS on base:allocation and blksnap:cbt with and without REQ_ONE; errors
# (past the end, read-only) must be the spec's errno values; four clients write disjoint
# ranges at once and the file is verified.
import faulthandler
import os
import signal
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest  # noqa: E402
from nbdtest import check  # noqa: E402

faulthandler.register(signal.SIGUSR1, all_threads=True)
nbdtest.require_nbd_module()
import nbd  # noqa: E402

SERVER, PATTERN = sys.argv[1], sys.argv[2]
MiB = 1 << 20
SIZE = 64 * MiB

tmp = nbdtest.tempfile.mkdtemp(prefix="nbd-commands-")
disk = os.path.join(tmp, "disk.img")
nbdtest.make_file(disk, SIZE)
assert nbdtest.pattern(PATTERN, "write", disk, 0, 8 * MiB, 1) == 0
cbt_map = os.path.join(tmp, "cbt.map")
with open(cbt_map, "wb") as f:  # 1 MiB blocks: snap numbers of each block's last change
    f.write(bytes([0, 0, 3, 3, 3, 1] + [0] * 56 + [2, 2]))

srv = nbdtest.TestServer(SERVER, [
    "disk@0f0e-uuid=file:%s,desc=test disk,cbt=%s:1M" % (disk, cbt_map),
    "ro=file:%s,ro" % disk,
    "mem=mem:16M",
], tmpdir=tmp)


def connect(name, contexts=("base:allocation", "blksnap:cbt"), strict=True):
    h = nbd.NBD()
    for c in contexts:
        h.add_meta_context(c)
    if not strict:
        h.set_strict_mode(0)  # let bad requests reach the server
    h.connect_uri(srv.uri(name))
    return h


def expect_errno(fn, errnum, what):
    try:
        fn()
    except nbd.Error as e:
        check(e.errnum == errnum, "%s fails with errno %d (got %s)" % (what, errnum, e.errnum))
        return
    raise AssertionError(what + " succeeded")


h = connect("disk@0f0e-uuid")
check(h.get_size() == SIZE, "size")
check(h.can_flush() and h.can_fua() and h.can_trim() and h.can_zero(), "write flags advertised")
check(h.can_fast_zero() and h.can_cache() and h.can_df(), "fast zero, cache, df advertised")
check(h.can_multi_conn(), "multi-conn advertised for a file device")
check(not h.is_read_only(), "read-write export")
check(h.can_meta_context("base:allocation") and h.can_meta_context("blksnap:cbt"), "contexts")
check(h.get_structured_replies_negotiated(), "structured replies negotiated")

# READ: simple data path and pattern check.
data = h.pread(MiB, 0)
check(nbdtest.verify_bytes(PATTERN, tmp, data, 0, 1), "read returns the pattern")

# Structured read across data and a hole: data chunks for [7M, 8M), hole chunk(s) after.
chunks = []


def on_chunk(buf, offset, status, error):
    chunks.append((offset, len(buf), status))
    return 0


buf = h.pread_structured(2 * MiB, 7 * MiB, on_chunk)
check(any(s == nbd.READ_HOLE for _, _, s in chunks), "structured read uses OFFSET_HOLE")
check(any(s == nbd.READ_DATA for _, _, s in chunks), "structured read uses OFFSET_DATA")
check(sum(n for _, n, _ in chunks) == 2 * MiB, "chunks cover the request exactly")
check(buf[MiB:] == bytes(MiB), "hole reads as zeroes")
check(nbdtest.verify_bytes(PATTERN, tmp, buf[:MiB], 7 * MiB, 1), "data part intact")
chunks.clear()
h.pread_structured(256 * 1024, 7 * MiB + 768 * 1024, on_chunk, nbd.CMD_FLAG_DF)
check(len(chunks) == 1, "DF read is one chunk")

# WRITE with and without FUA, then verify the backing file.
h.pwrite(nbdtest.pattern_bytes(PATTERN, tmp, 8 * MiB, MiB, 2), 8 * MiB, nbd.CMD_FLAG_FUA)
h.pwrite(nbdtest.pattern_bytes(PATTERN, tmp, 9 * MiB, MiB, 2), 9 * MiB)
h.flush()
check(nbdtest.pattern(PATTERN, "verify", disk, 8 * MiB, 2 * MiB, 2) == 0, "writes landed")

# WRITE_ZEROES: plain, NO_HOLE, FAST_ZERO (may be refused with ENOTSUP, never half-done).
h.zero(64 * 1024, 9 * MiB)
check(h.pread(64 * 1024, 9 * MiB) == bytes(64 * 1024), "write zeroes")
h.zero(64 * 1024, 9 * MiB + 128 * 1024, nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FUA)
check(h.pread(64 * 1024, 9 * MiB + 128 * 1024) == bytes(64 * 1024), "write zeroes NO_HOLE")
before = h.pread(64 * 1024, 9 * MiB + 512 * 1024)
try:
    h.zero(64 * 1024, 9 * MiB + 512 * 1024, nbd.CMD_FLAG_FAST_ZERO)
    check(h.pread(64 * 1024, 9 * MiB + 512 * 1024) == bytes(64 * 1024), "fast zero done")
except nbd.Error as e:
    check(e.errnum == 95, "fast zero refused with ENOTSUP")
    check(h.pread(64 * 1024, 9 * MiB + 512 * 1024) == before, "refused fast zero changed nothing")

# TRIM, CACHE, FLUSH.
h.trim(MiB, 12 * MiB)
h.trim(MiB, 13 * MiB, nbd.CMD_FLAG_FUA)
h.cache(MiB, 0)
h.flush()
check(True, "trim, trim+FUA, cache and flush accepted")

# BLOCK_STATUS: base:allocation shows data then holes; blksnap:cbt shows the map runs.
ext = {}


def on_extents(ctx, offset, entries, err):
    ext.setdefault(ctx, []).append([(entries[i], entries[i + 1])
                                    for i in range(0, len(entries), 2)])
    return 0


h.block_status(SIZE, 0, on_extents)
alloc = ext["base:allocation"][0]
cbt = ext["blksnap:cbt"][0]
check(alloc[0][1] & 1 == 0 and any(f & 3 == 3 for _, f in alloc), "allocation: data and holes")
check(cbt == [(2 * MiB, 0), (3 * MiB, 3), (MiB, 1), (56 * MiB, 0), (2 * MiB, 2)],
      "blksnap:cbt extents are the merged read map: %s" % cbt)
ext.clear()
h.block_status(3 * MiB, 100, on_extents, nbd.CMD_FLAG_REQ_ONE)
for ctx, lists in ext.items():
    check(len(lists[0]) == 1 and lists[0][0][0] <= 3 * MiB, "REQ_ONE: one extent for " + ctx)
check(ext["blksnap:cbt"][0][0] == (2 * MiB - 100, 0), "REQ_ONE cbt extent clipped")
ext.clear()
h.block_status(MiB, 2 * MiB + 4096, on_extents)
check(ext["blksnap:cbt"][0][0] == (MiB, 3), "cbt mid-block query")

# Errors from the server itself (strict mode off so libnbd sends the bad requests).
hs = connect("disk@0f0e-uuid", strict=False)
expect_errno(lambda: hs.pread(4096, SIZE - 512), 22, "read past end")
expect_errno(lambda: hs.pwrite(bytes(4096), SIZE), 28, "write past end")
expect_errno(lambda: hs.zero(4096, SIZE), 28, "write zeroes past end")
expect_errno(lambda: hs.trim(4096, SIZE), 22, "trim past end")
expect_errno(lambda: hs.block_status(4096, SIZE, on_extents), 22, "block status past end")
check(nbdtest.verify_bytes(PATTERN, tmp, hs.pread(512, 0), 0, 1), "still usable")
hs.shutdown()

ro = connect("ro", contexts=(), strict=False)
check(ro.is_read_only() and not ro.can_trim(), "read-only export advertised")
expect_errno(lambda: ro.pwrite(bytes(512), 0), 1, "write to read-only")
expect_errno(lambda: ro.trim(512, 0), 1, "trim on read-only")
expect_errno(lambda: ro.zero(512, 0), 1, "zero on read-only")
ro.shutdown()

# Several clients at once on one export: disjoint 2 MiB ranges with seq 3.
def client(i):
    c = connect("disk@0f0e-uuid", contexts=())
    off = 16 * MiB + i * 2 * MiB
    for k in range(8):
        o = off + k * 256 * 1024
        c.pwrite(nbdtest.pattern_bytes(PATTERN, tmp, o, 256 * 1024, 3), o)
    c.flush()
    c.shutdown()


threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
check(nbdtest.pattern(PATTERN, "verify", disk, 16 * MiB, 8 * MiB, 3) == 0, "4 clients at once")

# Memory export: full write/read cycle.
m = connect("mem")
m.pwrite(nbdtest.pattern_bytes(PATTERN, tmp, 0, MiB, 4), 0)
check(nbdtest.verify_bytes(PATTERN, tmp, m.pread(MiB, 0), 0, 4), "memory export")
m.shutdown()
h.shutdown()
srv.stop()
print("PASS")
