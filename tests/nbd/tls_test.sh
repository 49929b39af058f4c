#!/bin/bash
# Purpose: NBD_OPT_STARTTLS with GnuTLS: PSK and X.509 (with client certificates), the
# --tls-required (FORCEDTLS) mode, and the rules that TCP needs TLS (loopback included, unless
# --tcp-insecure; beyond loopback always) and that TCP connections must use it.
# Algorithm: write a psktool-format key file and an openssl-made CA, server and client
# certificates; start blksnap-nbd-testserver with TLS; connect with nbdinfo/nbdcopy over
# nbds:// (PSK on the Unix socket, X.509 on loopback TCP) and copy the pattern out and verify
# it; check that a plaintext client is refused in --tls-required mode, that a wrong PSK is
# refused, that plaintext on a TCP listener with credentials is refused (the Unix socket stays
# selective), that TCP without credentials fails at start (loopback: unless --tcp-insecure,
# then nbdcopy works over plaintext; 0.0.0.0: always).
# Usage: tls_test.sh TESTSERVER PATTERN_TOOL   (exit 77 = skipped)
set -euo pipefail
SERVER=$1
PATTERN=$2
for tool in nbdinfo nbdcopy openssl; do
  command -v $tool >/dev/null || { echo "SKIP: $tool missing"; exit 77; }
done
TMP=$(mktemp -d /tmp/nbd-tls-XXXXXX)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT
ok() { echo "ok - $*"; }
fail() { echo "FAIL - $*"; exit 1; }
start() {  # start ARGS...: runs the server, waits for READY
  rm -f "$TMP/out"
  "$SERVER" "$@" > "$TMP/out" 2> "$TMP/err" &
  PID=$!
  for i in $(seq 100); do grep -q READY "$TMP/out" 2>/dev/null && return 0; sleep 0.1; done
  cat "$TMP/err"; fail "server did not start"
}
stop() { kill -TERM $PID; wait $PID || true; PID=; }

truncate -s 8M "$TMP/disk.img"
"$PATTERN" write "$TMP/disk.img" --seq 1 >/dev/null

# --- PSK, TLS required ---
echo "alice:$(openssl rand -hex 32)" > "$TMP/keys.psk"
echo "alice:$(openssl rand -hex 32)" > "$TMP/wrong.psk"
start --unix "$TMP/s.sock" --tls-psk "$TMP/keys.psk" --tls-required --request-timeout-ms 500 \
  "d=file:$TMP/disk.img"
grep -q "^d nbds+unix:///d?socket=" "$TMP/out" || fail "URI should say nbds+unix"
PSK_URI="nbds+unix://alice@/d?socket=$TMP/s.sock&tls-psk-file=$TMP/keys.psk"
nbdinfo "$PSK_URI" | grep -q "TLS" || fail "nbdinfo over PSK"
nbdcopy "$PSK_URI" "$TMP/copy.img"
"$PATTERN" verify "$TMP/copy.img" --seq 1 >/dev/null
ok "PSK: nbdinfo and nbdcopy over TLS, data verified"
if /usr/bin/python3 -c 'import nbd' 2>/dev/null; then
  # Idle longer than the request timeout between requests: the TLS session survives the
  # receive timeouts that wake the server while it waits for the next request.
  /usr/bin/python3 - "$PSK_URI" <<'EOF' || fail "idle TLS client dropped"
import sys, time, nbd
h = nbd.NBD()
h.set_uri_allow_local_file(True)
h.connect_uri(sys.argv[1])
a = h.pread(4096, 0)
time.sleep(1.5)
assert h.pread(4096, 0) == a
h.shutdown()
EOF
  ok "TLS client idle past the request timeout is kept"
fi
! nbdinfo "nbd+unix:///d?socket=$TMP/s.sock" >/dev/null 2>&1 || fail "plaintext accepted"
ok "tls-required: plaintext client refused"
! nbdinfo "nbds+unix://alice@/d?socket=$TMP/s.sock&tls-psk-file=$TMP/wrong.psk" \
  >/dev/null 2>&1 || fail "wrong PSK accepted"
ok "wrong PSK refused"
nbdinfo --list "$PSK_URI" | grep -q 'export="d"' || fail "list after TLS"
ok "server still serving after failed TLS handshakes"
stop

# --- X.509 with client certificates, TLS optional (SELECTIVETLS), TCP loopback ---
C="$TMP/pki"
mkdir -p "$C/client"
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$C/ca-key.pem" -out "$C/ca-cert.pem" \
  -days 2 -subj "/CN=blksnap test CA" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout "$C/server-key.pem" -out "$C/server.csr" \
  -subj "/CN=localhost" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > "$C/srv.ext"
openssl x509 -req -in "$C/server.csr" -CA "$C/ca-cert.pem" -CAkey "$C/ca-key.pem" \
  -CAcreateserial -out "$C/server-cert.pem" -days 2 -extfile "$C/srv.ext" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout "$C/client/client-key.pem" \
  -out "$C/client.csr" -subj "/CN=backup-client" 2>/dev/null
printf 'extendedKeyUsage=clientAuth\n' > "$C/cli.ext"
openssl x509 -req -in "$C/client.csr" -CA "$C/ca-cert.pem" -CAkey "$C/ca-key.pem" \
  -CAcreateserial -out "$C/client/client-cert.pem" -days 2 -extfile "$C/cli.ext" 2>/dev/null
cp "$C/ca-cert.pem" "$C/client/ca-cert.pem"
start --unix "$TMP/s.sock" --tcp 127.0.0.1:0 --tls-cert "$C/server-cert.pem" \
  --tls-key "$C/server-key.pem" --tls-ca "$C/ca-cert.pem" "d=file:$TMP/disk.img"
PORT=$(awk '$1 == "d" {print $3}' "$TMP/out" | sed 's|.*:\([0-9]*\)/.*|\1|')
X509_URI="nbds://localhost:$PORT/d?tls-certificates=$C/client"
nbdinfo "$X509_URI" | grep -q "TLS" || fail "nbdinfo over X.509"
nbdcopy "$X509_URI" "$TMP/copy2.img"
"$PATTERN" verify "$TMP/copy2.img" --seq 1 >/dev/null
ok "X.509 with client certificate: nbdcopy over TLS, data verified"
! nbdinfo "nbd://127.0.0.1:$PORT/d" >/dev/null 2>&1 || fail "plaintext accepted on loopback TCP"
ok "TLS configured: plaintext refused on loopback TCP too (FORCEDTLS)"
nbdinfo "nbd+unix:///d?socket=$TMP/s.sock" >/dev/null || fail "plaintext refused on the Unix socket"
ok "selective TLS on the Unix socket: plaintext allowed there"
mkdir -p "$C/nocert" && cp "$C/ca-cert.pem" "$C/nocert/"
! nbdinfo "nbds://localhost:$PORT/d?tls-certificates=$C/nocert" >/dev/null 2>&1 \
  || fail "client without certificate accepted"
ok "client without certificate refused when a CA is configured"
stop

# --- TCP needs TLS, loopback included, unless explicitly allowed there ---
if "$SERVER" --unix "$TMP/s2.sock" --tcp 127.0.0.1:0 "d=file:$TMP/disk.img" > /dev/null \
  2> "$TMP/err"; then
  fail "loopback TCP without TLS started"
fi
grep -q "TLS" "$TMP/err" && [ "$(wc -l < "$TMP/err")" = 1 ] || fail "unclear refusal: $(cat "$TMP/err")"
ok "loopback TCP without TLS credentials refused at start: $(cat "$TMP/err")"
start --unix "$TMP/s.sock" --tcp 127.0.0.1:0 --tcp-insecure "d=file:$TMP/disk.img"
PORT=$(awk '$1 == "d" {print $3}' "$TMP/out" | sed 's|.*:\([0-9]*\)/.*|\1|')
nbdcopy "nbd://127.0.0.1:$PORT/d" "$TMP/copy3.img"
"$PATTERN" verify "$TMP/copy3.img" --seq 1 >/dev/null
ok "--tcp-insecure: plaintext loopback TCP served"
stop
if "$SERVER" --unix "$TMP/s2.sock" --tcp 0.0.0.0:0 --tcp-insecure "d=file:$TMP/disk.img" \
  > /dev/null 2>&1; then
  fail "non-loopback TCP without TLS started"
fi
ok "non-loopback TCP without TLS credentials refused at start, even with --tcp-insecure"
start --unix "$TMP/s.sock" --tcp 0.0.0.0:0 --tls-psk "$TMP/keys.psk" "d=file:$TMP/disk.img"
grep -q "^d .* nbds://" "$TMP/out" || fail "TCP URI should be nbds://"
PORT=$(awk '$1 == "d" {print $3}' "$TMP/out" | sed 's|.*:\([0-9]*\)/.*|\1|')
! nbdinfo "nbd://127.0.0.1:$PORT/d" >/dev/null 2>&1 || fail "plaintext on a public listener"
nbdinfo "nbds://alice@127.0.0.1:$PORT/d?tls-psk-file=$TMP/keys.psk" >/dev/null
nbdinfo "nbd+unix:///d?socket=$TMP/s.sock" >/dev/null || fail "unix socket should stay plaintext"
ok "public TCP listener forces TLS, Unix socket does not"
stop
echo PASS
