#!/usr/bin/env bash
# tests/integration/test_lease.sh: leases end to end on a single member:
# etcdctl's lease commands, python3-etcd3's refresh and expiry, the
# LeaseKeepAlive stream (several leases on one stream, half-close), and the
# remaining TTLs across a kill -9 restart. (test_etcdctl.sh checks etcdctl's
# exact outputs for leases; this one checks behaviour over time.)
#
#   bash tests/integration/test_lease.sh <build-dir>
#   CAIRN_TEST_SERVER=etcd bash tests/integration/test_lease.sh <build-dir>
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh" "$@"

# Grants a lease with etcdctl; sets LEASE (16 hex digits, as printed).
grant() { # ttl expected-granted-ttl
  it_run ctl lease grant "$1"
  assert_rc 0
  assert_match "^lease [0-9a-f]{16} granted with TTL\\(${2}s\\)$" "$(it_out)" "lease grant output"
  LEASE=$(awk '{print $2}' <"$IT_TMP/out")
}

# The remaining TTL etcdctl reports for lease $1 (a number; fails otherwise).
remaining() {
  it_run ctl lease timetolive "$1"
  assert_rc 0
  local line
  line=$(it_out)
  [[ "$line" =~ remaining\(([0-9]+)s\) ]] || it_fail "timetolive $1: no remaining TTL in [$line]"
  echo "${BASH_REMATCH[1]}"
}

# Runs a python3-etcd3 script (from stdin) against the server; its stdout is
# checked by the caller, a traceback fails the test.
py() {
  cat >"$IT_TMP/script.py"
  it_run "$IT_PYTHON" "$IT_TMP/script.py" 127.0.0.1 "$IT_CLIENT_PORT"
  if [[ "$IT_RC" != 0 ]]; then
    it_fail "python script failed"
  fi
}

# The header of every python script: a client, and a helper that prints.
PY_HEAD='
import sys, time, grpc, etcd3
from etcd3.etcdrpc import rpc_pb2 as pb
c = etcd3.client(host=sys.argv[1], port=int(sys.argv[2]), timeout=10)
def get(k):
    return c.get(k)[0]
'

it_server_up

# ---------------------------------------------------------------- etcdctl

it_case "etcdctl: grant, put --lease, timetolive --keys, list, keep-alive --once"
grant 120 120
L=$LEASE
ctl_ok put lk/a 1 --lease="$L" <<<"OK"
ctl_ok put lk/b 2 --lease="$L" <<<"OK"
it_run ctl lease timetolive "$L" --keys
assert_rc 0
assert_match "^lease $L granted with TTL\\(120s\\), remaining\\((11[0-9]|120)s\\), attached keys\\(\\[(lk/a lk/b|lk/b lk/a)\\]\\)$" \
  "$(it_out)" "timetolive --keys"
it_run ctl lease list
assert_rc 0
grep -qx "$L" "$IT_TMP/out" || it_fail "lease list does not show $L"
ctl_ok lease keep-alive --once "$L" <<<"lease $L keepalived with TTL(120)"

it_case "etcdctl: revoke deletes the keys; the lease is gone"
ctl_ok lease revoke "$L" <<<"lease $L revoked"
ctl_ok get lk --prefix </dev/null
ctl_ok lease timetolive "$L" <<<"lease $L already expired"
it_run ctl lease list
assert_rc 0
if grep -qx "$L" "$IT_TMP/out"; then it_fail "lease list still shows $L after revoke"; fi
ctl_err 1 "Error: failed to revoke lease (etcdserver: requested lease not found)" lease revoke "$L"
ctl_err 2 "Error: etcdserver: requested lease not found" lease keep-alive --once "$L"

# ---------------------------------------------------------------- python3-etcd3

it_case "python3-etcd3: grant with an ID, duplicate ID, TimeToLive of an unknown lease"
py <<EOF
$PY_HEAD
l = c.lease(60, lease_id=0x7a11)
assert l.id == 0x7a11, l.id
assert l.ttl == 60, l.ttl
try:
    c.lease(60, lease_id=0x7a11)
    raise SystemExit("duplicate lease id accepted")
except etcd3.exceptions.PreconditionFailedError:
    pass
info = c.get_lease_info(0x7a12)
assert info.TTL == -1, info
assert info.grantedTTL == 0, info
l.revoke()
try:
    l.revoke()
    raise SystemExit("revoke of a revoked lease succeeded")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.NOT_FOUND, e.code()
    assert e.details() == "etcdserver: requested lease not found", e.details()
print("ok")
EOF
assert_out <<<"ok"

it_case "python3-etcd3: an unrefreshed 2 s lease expires with its key; a refreshed one lives"
py <<EOF
$PY_HEAD
gone = c.lease(2)
kept = c.lease(2)
c.put("py/gone", "x", lease=gone)
c.put("py/kept", "y", lease=kept)
t0 = time.time()
time.sleep(1.0)
assert get("py/gone") == b"x", "expired before its TTL"
# Refresh one of them for 5 s: more than twice its TTL.
gone_at = None
while time.time() - t0 < 5.0:
    r = list(kept.refresh())
    assert len(r) == 1 and r[0].TTL == 2 and r[0].ID == kept.id, r
    if gone_at is None and get("py/gone") is None:
        gone_at = time.time() - t0
    time.sleep(0.4)
assert gone_at is not None, "py/gone still there 5 s after its 2 s lease"
assert 1.9 <= gone_at <= 4.5, gone_at
assert get("py/kept") == b"y", "refreshed lease expired"
assert kept.remaining_ttl in (1, 2), kept.remaining_ttl
assert gone.remaining_ttl == -1, gone.remaining_ttl
# Refreshing an expired lease answers TTL 0.
r = list(gone.refresh())
assert r[0].TTL == 0, r
# Stop refreshing: the other one goes too.
t1 = time.time()
while get("py/kept") is not None:
    assert time.time() - t1 < 5.0, "py/kept still there 5 s after the last refresh"
    time.sleep(0.1)
print("ok")
EOF
assert_out <<<"ok"

it_case "LeaseKeepAlive: several leases on one stream, answered in full before the OK trailers"
py <<EOF
$PY_HEAD
a = c.lease(30)
b = c.lease(40)
reqs = [pb.LeaseKeepAliveRequest(ID=i) for i in (a.id, b.id, 0x5eed, a.id)]
got = [(r.ID, r.TTL) for r in c.leasestub.LeaseKeepAlive(iter(reqs), 10)]
assert sorted(got) == sorted([(a.id, 30), (b.id, 40), (0x5eed, 0), (a.id, 30)]), got
for r in c.leasestub.LeaseKeepAlive(iter([pb.LeaseKeepAliveRequest(ID=a.id)]), 10):
    assert r.header.revision > 0 and r.header.member_id != 0, r.header
# A stream that sends nothing and half-closes ends cleanly.
assert list(c.leasestub.LeaseKeepAlive(iter([]), 10)) == []
lst = c.leasestub.LeaseLeases(pb.LeaseLeasesRequest(), 10)
have = {s.ID for s in lst.leases}
assert {a.id, b.id} <= have, (have, a.id, b.id)
a.revoke()
b.revoke()
print("ok")
EOF
assert_out <<<"ok"

# ---------------------------------------------------------------- kill -9

it_case "kill -9: leases, their keys and their remaining TTLs survive a restart"
grant 100 100
long=$LEASE
ctl_ok put crash/long v --lease="$long" <<<"OK"
t_grant=$(date +%s)
# Long enough for a checkpoint of the remaining TTLs (cairn: every 5 s).
sleep 7
before=$(remaining "$long")
# A short lease that expires only after the restart.
grant 4 4
short=$LEASE
ctl_ok put crash/short v --lease="$short" <<<"OK"
it_server_crash_restart
t_up=$(date +%s)
after=$(remaining "$long")
it_run ctl lease timetolive "$long" --keys
assert_rc 0
assert_match "^lease $long granted with TTL\\(100s\\), remaining\\([0-9]+s\\), attached keys\\(\\[crash/long\\]\\)$" \
  "$(it_out)" "timetolive --keys after the restart"
if ((after <= 0 || after > 101)); then
  it_fail "remaining TTL $after s after the restart (granted 100 s, $before s left before)"
fi
if [[ "$IT_SERVER" == cairn ]]; then
  # cairn restores the last checkpoint (at most 5 s old, plus 1 s: the
  # election timeout a new leader adds); etcd 3.4 restarts the full TTL.
  if ((after > before + 7)); then
    it_fail "remaining TTL $after s after the restart, $before s before: the checkpoint was lost"
  fi
fi
echo "   remaining TTL: $before s before the kill, $after s after ($((t_up - t_grant)) s since the grant)"

it_case "kill -9: a lease granted before the crash still expires after it; keep-alive works"
it_wait_for 15 "[[ -z \"\$(ctl get crash/short)\" ]]" ||
  it_fail "crash/short still there 15 s after the restart (lease of 6 s)"
ctl_ok lease timetolive "$short" <<<"lease $short already expired"
ctl_ok lease keep-alive --once "$long" <<<"lease $long keepalived with TTL(100)"
after=$(remaining "$long")
if ((after < 98)); then it_fail "remaining TTL $after s right after a keep-alive of a 100 s lease"; fi
ctl_ok get crash/long --print-value-only <<<"v"

it_case "kill -9 after a keep-alive: the renewed TTL survives too"
it_server_crash_restart
after=$(remaining "$long")
if ((after < 90)); then
  it_fail "remaining TTL $after s after a restart that followed a keep-alive of a 100 s lease"
fi
ctl_ok lease revoke "$long" <<<"lease $long revoked"
ctl_ok get crash --prefix </dev/null

it_server_stop
it_done
