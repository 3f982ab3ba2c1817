#!/usr/bin/env bash
# The daemon's command line: etcd's flag names, ETCD_* variables, refusals.
set -u
build=${1:?usage: test_flags.sh BUILD_DIR}
cairn="$build/cairn"
fail() { echo "FAIL: $*" >&2; exit 1; }
[ -x "$cairn" ] || fail "no cairn binary at $cairn (build it first)"

out=$("$cairn" --help) || fail "--help exited $?"
for f in --name --data-dir --listen-client-urls --advertise-client-urls --listen-peer-urls \
         --initial-advertise-peer-urls --initial-cluster --initial-cluster-state \
         --initial-cluster-token --snapshot-count --heartbeat-interval --election-timeout \
         --quota-backend-bytes --max-request-bytes --max-txn-ops --auto-compaction-mode \
         --auto-compaction-retention --cert-file --key-file --trusted-ca-file \
         --client-cert-auth --log-level; do
  grep -q -- "$f" <<<"$out" || fail "--help does not list $f"
done

out=$("$cairn" --version) || fail "--version exited $?"
grep -q "etcd API Version: 3.4" <<<"$out" || fail "--version: $out"

err=$("$cairn" --no-such-flag 2>&1); rc=$?
[ $rc -eq 2 ] || fail "unknown flag exited $rc"
grep -q "unknown flag --no-such-flag" <<<"$err" || fail "unknown flag message: $err"

err=$("$cairn" --wal-dir /tmp/x 2>&1); rc=$?
[ $rc -eq 2 ] || fail "unsupported flag exited $rc"
grep -q "does not support" <<<"$err" || fail "unsupported flag message: $err"

err=$("$cairn" --snapshot-count abc 2>&1); rc=$?
[ $rc -eq 2 ] || fail "bad number exited $rc"
grep -q 'invalid value "abc" for flag --snapshot-count' <<<"$err" || fail "bad number message: $err"

err=$(ETCD_LOG_LEVEL=loud "$cairn" 2>&1); rc=$?
[ $rc -eq 2 ] || fail "bad ETCD_LOG_LEVEL exited $rc"
grep -q "log-level" <<<"$err" || fail "ETCD_LOG_LEVEL not read: $err"

err=$("$cairn" --client-cert-auth 2>&1); rc=$?
[ $rc -eq 2 ] || fail "--client-cert-auth without CA exited $rc"
grep -q "trusted-ca-file" <<<"$err" || fail "client-cert-auth message: $err"

err=$("$cairn" --listen-client-urls nonsense 2>&1); rc=$?
[ $rc -eq 2 ] || fail "bad URL exited $rc"

# A peer port another process holds: the start fails and says which address
# and why (libraft alone says only "I/O error").
tmp=$(mktemp -d)
/usr/bin/python3 -c '
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
print(s.getsockname()[1], flush=True); time.sleep(30)' >"$tmp/port" &
holder=$!
for _ in $(seq 50); do [ -s "$tmp/port" ] && break; sleep 0.1; done
pp=$(cat "$tmp/port")
[ -n "$pp" ] || fail "no port from the holder"
err=$(timeout 20 "$cairn" --name m0 --data-dir "$tmp/d" --listen-client-urls http://127.0.0.1:0 \
  --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
  --initial-cluster "m0=http://127.0.0.1:$pp" 2>&1); rc=$?
kill "$holder" 2>/dev/null; wait "$holder" 2>/dev/null
rm -rf "$tmp"
[ $rc -ne 0 ] && [ $rc -ne 124 ] || fail "a held peer port: exited $rc"
grep -q "listen for peers on 127.0.0.1:$pp: Address already in use" <<<"$err" ||
  fail "held peer port message: $err"

echo "PASS test_flags"
