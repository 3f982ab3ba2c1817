#!/usr/bin/env bash
# tests/integration/test_maintenance.sh: the Maintenance, Cluster, Auth and
# health services and the HTTP endpoints of a single-member server, through
# etcdctl 3.4, curl and raw gRPC calls (python3 grpcio).
#
# Every expectation holds against etcd 3.4.23, except where a case says
# "cairn only" or "etcd only" (the snapshot's file format: etcd's is a bolt
# database that `etcdctl snapshot status` reads, Cairn's an LMDB file).
# The HashKV values are etcd 3.4.23's for the history written here: a server
# that hashes its history differently fails.
#
#   bash tests/integration/test_maintenance.sh <build-dir>
#   CAIRN_TEST_SERVER=etcd bash tests/integration/test_maintenance.sh <build-dir>
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh" "$@"

command -v curl >/dev/null || it_fail "curl is missing (apt-get install curl)"

# ---------------------------------------------------------------- helpers

# grpc PATH REQUEST-HEX: one unary call with raw bytes. stdout: "OK" and the
# response's top-level fields as JSON ({"2": 123, "1": "<hex>"}: varints as
# numbers, bytes as hex; a repeated field keeps its last value), or the
# status code name and the message.
GRPC_PY='
import grpc, json, sys
endpoint, path, req = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
def fields(b):
    out, i = {}, 0
    def varint():
        nonlocal i
        v, shift = 0, 0
        while True:
            c = b[i]; i += 1
            v |= (c & 0x7f) << shift; shift += 7
            if c < 0x80: return v
    while i < len(b):
        key = varint(); num, wt = key >> 3, key & 7
        if wt == 0: out[str(num)] = varint()
        elif wt == 2:
            n = varint(); out[str(num)] = b[i:i + n].hex(); i += n
        else: raise SystemExit("unexpected wire type %d" % wt)
    return out
ch = grpc.insecure_channel(endpoint)
try:
    resp = ch.unary_unary(path)(req, timeout=10)
    print("OK", json.dumps(fields(resp), sort_keys=True))
except grpc.RpcError as e:
    print(e.code().name, e.details())
'
grpc() {
  it_run "$IT_PYTHON" -c "$GRPC_PY" "$IT_ENDPOINT" "$1" "${2:-}"
  assert_rc 0
}

# A field of the last grpc answer's JSON: grpc_field 2
grpc_field() {
  sed 's/^OK //' "$IT_TMP/out" | it_json_get "d.get(\"$1\")"
}

# http PATH [curl options...]: sets HTTP_CODE, HTTP_TYPE; the body is in
# $IT_TMP/out.
http() {
  local path=$1
  shift
  IT_LAST_CMD="curl $* $IT_URL$path"
  local meta
  meta=$(curl -s -o "$IT_TMP/out" -w '%{http_code} %{content_type}' "$@" "$IT_URL$path")
  IT_RC=$?
  HTTP_CODE=${meta%% *}
  HTTP_TYPE=${meta#* }
  assert_rc 0
}

# A metric's value (the first sample whose name and labels start the line
# with $1 followed by a space) from $IT_TMP/metrics.
metric() {
  awk -v m="$1" 'index($0, m " ") == 1 { print $2; exit }' "$IT_TMP/metrics"
}

fetch_metrics() {
  http /metrics
  assert_eq 200 "$HTTP_CODE" "GET /metrics status"
  cp "$IT_TMP/out" "$IT_TMP/metrics"
}

# Asserts that metric $1 exists and its value satisfies the python
# expression $2 on v (e.g. "v >= 1").
assert_metric() {
  local v
  v=$(metric "$1")
  [[ -n "$v" ]] || it_fail "/metrics has no sample $1"
  "$IT_PYTHON" -c "import sys; v = float(sys.argv[1]); sys.exit(0 if ($2) else 1)" "$v" ||
    it_fail "/metrics: $1 is $v, expected $2"
}

status_json() { # prints the Status object of `endpoint status -w json`
  ctl endpoint status -w json | it_json_get 'json.dumps(d[0]["Status"])'
}

db_size() {
  ctl endpoint status -w json | it_json_get 'd[0]["Status"]["dbSize"]'
}

# Checks a snapshot file as etcdctl's Save does, and the digest itself:
# length % 512 == 32, the last 32 bytes are the SHA-256 of the rest.
assert_snapshot_file() { # path min-bytes
  local got
  got=$("$IT_PYTHON" - "$1" "$2" <<'EOF'
import hashlib, sys
b = open(sys.argv[1], "rb").read()
print(len(b) >= int(sys.argv[2]), len(b) % 512 == 32, hashlib.sha256(b[:-32]).digest() == b[-32:])
EOF
  )
  assert_eq "True True True" "$got" "snapshot $1: >= $2 bytes, size % 512 == 32, trailing SHA-256"
}

# ---------------------------------------------------------------- the server

it_case "start a fresh single-member server"
it_server_up

# ---------------------------------------------------------------- HashKV first: it needs the history from revision 1

it_case "HashKV of a fixed history: etcd 3.4.23's values at every revision"
# Puts, an overwrite, a txn with two puts and a delete (one revision, three
# sub-revisions), an empty value, range deletes.
ctl_ok put a 1 <<<"OK" # revision 2
ctl_ok put b 2 <<<"OK" # 3
ctl_ok put a 3 <<<"OK" # 4
it_run_in 'value("a") = "3"\n\nput c 4\nput d 5\ndel b\n\n\n' ctl txn # 5
assert_rc 0
ctl_ok put e "" <<<"OK" # 6
ctl_ok del a c <<<"1"   # 7
ctl_ok put f 6 <<<"OK"  # 8
ctl_ok put d 7 <<<"OK"  # 9
# "header-revision hash compact_revision" of `endpoint hashkv --rev=$1`.
hashkv() {
  ctl endpoint hashkv --rev="$1" -w json | it_json_get \
    '"%d %d %d" % (d[0]["HashKV"]["header"]["revision"], d[0]["HashKV"]["hash"], d[0]["HashKV"]["compact_revision"])'
}
assert_eq "9 904492174 -1" "$(hashkv 0)" "hashkv (latest)"
assert_eq "9 2587454935 -1" "$(hashkv 2)" "hashkv --rev=2"
assert_eq "9 1827592406 -1" "$(hashkv 3)" "hashkv --rev=3"
assert_eq "9 2069675932 -1" "$(hashkv 4)" "hashkv --rev=4"
assert_eq "9 1421323504 -1" "$(hashkv 5)" "hashkv --rev=5 (the txn)"
assert_eq "9 1302591630 -1" "$(hashkv 6)" "hashkv --rev=6"
assert_eq "9 186246903 -1" "$(hashkv 7)" "hashkv --rev=7"
assert_eq "9 904492174 -1" "$(hashkv 9)" "hashkv --rev=9"
it_run ctl endpoint hashkv --rev=10
assert_rc 1
assert_err_last "Error: etcdserver: mvcc: required revision is a future revision"

it_case "HashKV after a compaction: only versions still current below it count"
ctl_ok compaction 7 <<<"compacted revision 7"
assert_eq "9 3666425679 7" "$(hashkv 0)" "hashkv after compaction at 7"
assert_eq "9 1200821061 7" "$(hashkv 8)" "hashkv --rev=8 after compaction at 7"
assert_eq "9 3666425679 7" "$(hashkv 9)" "hashkv --rev=9 after compaction at 7"
it_run ctl endpoint hashkv --rev=7
assert_rc 1
assert_err_last "Error: etcdserver: mvcc: required revision has been compacted"
# Every key deleted: etcd then counts what compaction left below it.
ctl_ok del a z <<<"4" # 10
ctl_ok compaction 10 <<<"compacted revision 10"
assert_eq "10 1084519789 10" "$(hashkv 0)" "hashkv with no live key"
ctl_ok put z 1 <<<"OK" # 11
assert_eq "11 974378710 10" "$(hashkv 0)" "hashkv after a put"

# ---------------------------------------------------------------- Status, members

it_case "Status: version, sizes, leader, raft indexes, no errors"
got=$(status_json | it_json_get \
  '[d["version"], d["dbSize"] > 0, 0 < d["dbSizeInUse"] <= d["dbSize"], d["leader"], d["header"]["member_id"], d["raftIndex"] >= d["raftAppliedIndex"] > 0, d["raftTerm"] > 0, "errors" in d, d.get("isLearner", False)]')
assert_eq "['3.4.23', True, True, $IT_MID, $IT_MID, True, True, False, False]" "$got" \
  "endpoint status -w json"

it_case "member list: this member; the header has no revision (as etcd's)"
it_run ctl member list -w json
assert_rc 0
assert_json "{\"header\":{\"cluster_id\":\"<CID>\",\"member_id\":\"<MID>\",\"raft_term\":\"<TERM>\"},\"members\":[{\"ID\":$IT_MID,\"name\":\"$IT_NAME\",\"peerURLs\":[\"$IT_PEER_URL\"],\"clientURLs\":[\"$IT_URL\"]}]}"
grpc /etcdserverpb.Cluster/MemberList ""
assert_match '^OK ' "$(it_out)" "MemberList over raw gRPC"

# ---------------------------------------------------------------- HTTP

it_case "GET /version, /health; other methods and paths"
http /version
assert_eq "200 application/json" "$HTTP_CODE $HTTP_TYPE" "GET /version"
assert_eq '{"etcdserver":"3.4.23","etcdcluster":"3.4.0"}' "$(it_out)" "GET /version body"
http /health
assert_eq "200 text/plain; charset=utf-8" "$HTTP_CODE $HTTP_TYPE" "GET /health"
assert_eq '{"health":"true"}' "$(it_out)" "GET /health body"
http /health -X POST
assert_eq 405 "$HTTP_CODE" "POST /health"
http /no/such/path
assert_eq 404 "$HTTP_CODE" "GET /no/such/path"

it_case "grpc.health.v1.Health/Check: SERVING for \"\", NOT_FOUND for another service"
grpc /grpc.health.v1.Health/Check ""
assert_eq 'OK {"1": 1}' "$(it_out)" "Health/Check"
grpc /grpc.health.v1.Health/Check 0a03666f6f # service "foo"
assert_eq "NOT_FOUND unknown service" "$(it_out)" "Health/Check of service foo"

# ---------------------------------------------------------------- Auth, MoveLeader

it_case "Auth: authentication is not enabled; etcdctl --user then works without a token"
grpc /etcdserverpb.Auth/Authenticate 0a04726f6f7412027077 # name "root", password "pw"
assert_eq "FAILED_PRECONDITION etcdserver: authentication is not enabled" "$(it_out)" \
  "Authenticate"
ctl_ok --user=root:pw put auth-probe v <<<"OK"
ctl_ok --user=root:pw get auth-probe --print-value-only <<<"v"

it_case "MoveLeader: to itself succeeds at once, to a non-member fails"
ctl_ok move-leader "$IT_MID_HEX" <<<"Leadership transferred from $IT_MID_HEX to $IT_MID_HEX"
ctl_err 1 "Error: etcdserver: bad leader transferee" move-leader 1234

# ---------------------------------------------------------------- Hash

it_case "Hash: stable while nothing is written, changed by a write"
grpc /etcdserverpb.Maintenance/Hash ""
assert_match '^OK ' "$(it_out)" "Hash"
h1=$(grpc_field 2)
[[ "$h1" =~ ^[0-9]+$ ]] || it_fail "Hash: no hash field in $(it_out)"
grpc /etcdserverpb.Maintenance/Hash ""
assert_eq "$h1" "$(grpc_field 2)" "Hash without writes in between"
ctl_ok put hash-probe v <<<"OK"
grpc /etcdserverpb.Maintenance/Hash ""
h2=$(grpc_field 2)
[[ "$h2" != "$h1" ]] || it_fail "Hash did not change after a put ($h1)"

# ---------------------------------------------------------------- Snapshot, defrag

it_case "snapshot save of a store of a few MB (many chunks), digest checked"
big=$(head -c 60000 /dev/zero | tr '\0' x)
for ((i = 0; i < 40; i++)); do
  it_run ctl put "big/$i" "$big"
  assert_rc 0
done
it_run ctl snapshot save "$IT_TMP/snap.db"
assert_rc 0
assert_out <<<"Snapshot saved at $IT_TMP/snap.db"
assert_snapshot_file "$IT_TMP/snap.db" $((40 * 60000))
if [[ "$IT_SERVER" == etcd ]]; then
  # etcd only: the file is a bolt database etcdctl can read.
  it_run ctl snapshot status "$IT_TMP/snap.db" -w json
  assert_rc 0
  got=$(it_json_get '[d["totalKey"] > 40, d["totalSize"] > 40 * 60000]' <"$IT_TMP/out")
  assert_eq "[True, True]" "$got" "snapshot status"
fi

it_case "three snapshots at once all complete"
pids=()
for n in 1 2 3; do
  ctl snapshot save "$IT_TMP/par$n.db" >"$IT_TMP/par$n.out" 2>&1 &
  pids+=($!)
done
for n in 1 2 3; do
  wait "${pids[$((n - 1))]}" || {
    cat "$IT_TMP/par$n.out" >&2
    it_fail "concurrent snapshot $n failed"
  }
  assert_snapshot_file "$IT_TMP/par$n.db" $((40 * 60000))
done

it_case "defrag gives the space of deleted and compacted data back"
before=$(db_size)
ctl_ok del big/ --prefix <<<"40"
r=$(it_revision)
ctl_ok compaction "$r" --physical <<<"compacted revision $r"
ctl_ok defrag <<<"Finished defragmenting etcd member[$IT_ENDPOINT]"
after=$(db_size)
((after * 2 < before)) || it_fail "dbSize $before before, $after after defrag"
ctl_ok get auth-probe --print-value-only <<<"v"

# ---------------------------------------------------------------- metrics

it_case "GET /metrics: Prometheus text with etcd's names"
# A watcher so that the watch gauges have something to count.
IT_BG_OUT="$IT_TMP/watch"
it_bg ctl watch metrics-probe
WATCH_PID=$IT_BG_PID
IT_BG_OUT=""
it_run ctl get metrics-probe
assert_rc 0
http /metrics
assert_eq 200 "$HTTP_CODE" "GET /metrics"
assert_match '^text/plain; version=0\.0\.4' "$HTTP_TYPE" "/metrics content type"
cp "$IT_TMP/out" "$IT_TMP/metrics"
rev=$(it_revision)
assert_metric etcd_server_has_leader "v == 1"
assert_metric etcd_server_is_leader "v == 1"
assert_metric etcd_mvcc_db_total_size_in_bytes "v > 0"
assert_metric etcd_mvcc_db_total_size_in_use_in_bytes "v > 0"
assert_metric etcd_debugging_mvcc_current_revision "v == $rev"
assert_metric etcd_server_proposals_committed_total "v >= $rev"
assert_metric etcd_server_proposals_applied_total "v >= $rev"
assert_metric etcd_disk_wal_fsync_duration_seconds_count "v >= 0"
assert_metric 'etcd_disk_wal_fsync_duration_seconds_bucket{le="+Inf"}' "v >= 0"
assert_metric etcd_disk_backend_commit_duration_seconds_count "v >= 0"
it_wait_for 10 "fetch_metrics; [[ \$(metric etcd_debugging_mvcc_watcher_total) == 1 ]]" ||
  it_fail "etcd_debugging_mvcc_watcher_total is $(metric etcd_debugging_mvcc_watcher_total) with one watcher"
assert_metric etcd_debugging_mvcc_watch_stream_total "v == 1"
assert_metric 'grpc_server_handled_total{grpc_code="OK",grpc_method="Status",grpc_service="etcdserverpb.Maintenance",grpc_type="unary"}' "v >= 1"
assert_metric 'grpc_server_handled_total{grpc_code="OK",grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"}' "v >= 1"
assert_metric 'grpc_server_handled_total{grpc_code="OutOfRange",grpc_method="HashKV",grpc_service="etcdserverpb.Maintenance",grpc_type="unary"}' "v >= 2"
it_stop_pid "$WATCH_PID" 5 || true

# ---------------------------------------------------------------- alarms

it_case "Alarm ACTIVATE NOSPACE by request: puts refused, deletes allowed, disarm restores"
mid_varint=$("$IT_PYTHON" -c '
import sys
v = int(sys.argv[1]); out = b""
while True:
    b = v & 0x7f; v >>= 7
    if v: out += bytes([b | 0x80])
    else: out += bytes([b]); break
print(out.hex())' "$IT_MID")
grpc /etcdserverpb.Maintenance/Alarm "0801${mid_varint:+10$mid_varint}1801"
assert_eq "OK {\"2\": \"08${mid_varint}1001\"}" "$(it_out)" "Alarm ACTIVATE NOSPACE"
ctl_ok alarm list <<<"memberID:$IT_MID alarm:NOSPACE "
ctl_err 1 "Error: etcdserver: mvcc: database space exceeded" put small v
ctl_ok del auth-probe <<<"1"
http /health
assert_eq "503 text/plain; charset=utf-8" "$HTTP_CODE $HTTP_TYPE" "GET /health under NOSPACE"
assert_out <<<'{"health":"false"}'
http '/health?exclude=NOSPACE'
assert_eq 200 "$HTTP_CODE" "GET /health?exclude=NOSPACE"
it_run ctl endpoint status
assert_match ", memberID:$IT_MID alarm:NOSPACE $" "$(it_out)" "endpoint status shows the alarm"
# Disarming another member's alarm, or another type, changes nothing.
grpc /etcdserverpb.Maintenance/Alarm "080210051801"
assert_eq "OK {}" "$(it_out)" "Alarm DEACTIVATE of member 5"
ctl_ok alarm disarm <<<"memberID:$IT_MID alarm:NOSPACE "
ctl_ok alarm list </dev/null
ctl_ok put small v <<<"OK"
http /health
assert_eq 200 "$HTTP_CODE" "GET /health after disarm"
it_server_stop

it_case "quota: the NOSPACE alarm survives a restart, until compact+defrag+disarm"
it_server_up --quota-backend-bytes=$((512 * 1024))
ok=0
for ((i = 0; i < 100; i++)); do
  it_run ctl put "big/$i" "$big"
  [[ $IT_RC -eq 0 ]] || break
  ok=$((ok + 1))
done
((ok > 0 && ok < 100)) || it_fail "$ok puts of 60 kB fit in a 512 KiB quota"
assert_err_last "Error: etcdserver: mvcc: database space exceeded"
ctl_ok alarm list <<<"memberID:$IT_MID alarm:NOSPACE "
it_server_stop
it_server_start
it_server_wait_ready
ctl_ok alarm list <<<"memberID:$IT_MID alarm:NOSPACE "
ctl_err 1 "Error: etcdserver: mvcc: database space exceeded" put small v
http /health
assert_eq 503 "$HTTP_CODE" "GET /health after a restart under NOSPACE"
ctl_ok del big/ --prefix <<<"$ok"
r=$(it_revision)
ctl_ok compaction "$r" --physical <<<"compacted revision $r"
ctl_ok defrag <<<"Finished defragmenting etcd member[$IT_ENDPOINT]"
ctl_ok alarm disarm <<<"memberID:$IT_MID alarm:NOSPACE "
ctl_ok put small v <<<"OK"
it_server_stop
it_server_start
it_server_wait_ready
ctl_ok alarm list </dev/null
ctl_ok put small2 v <<<"OK"
http /health
assert_eq 200 "$HTTP_CODE" "GET /health after disarm and restart"
it_server_stop

it_done
