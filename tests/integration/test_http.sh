#!/usr/bin/env bash
# tests/integration/test_http.sh: HTTP/1.1 on the client port (/health,
# /version, /metrics) and bad input on it: garbage bytes, malformed HTTP/1.1
# and HTTP/2, hand-made gRPC framing, unknown methods, undecodable and
# oversized requests (etcd's exact errors), clients dying with streams open.
# After each, the server must still answer.
# CAIRN_TEST_SEED=<n> repeats a run's random bytes.
#
#   bash tests/integration/test_http.sh <build-dir>
#   CAIRN_TEST_SERVER=etcd bash tests/integration/test_http.sh <build-dir>
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh" "$@"

command -v curl >/dev/null || it_fail "curl is missing (apt-get install curl)"
seed=${CAIRN_TEST_SEED:-$(((RANDOM << 15) | RANDOM))}
echo "seed: $seed (CAIRN_TEST_SEED=$seed repeats this run)"

# http METHOD PATH: body in $IT_TMP/out, "code content-type" in $IT_TMP/meta
http() {
  IT_LAST_CMD="curl -X $1 $IT_URL$2"
  curl -s --noproxy '*' --max-time 10 -X "$1" -o "$IT_TMP/out" \
    -w '%{http_code} %{content_type}' "$IT_URL$2" >"$IT_TMP/meta" 2>"$IT_TMP/err"
  IT_RC=$?
  [[ $IT_RC -eq 0 ]] || it_fail "curl failed"
  read -r HTTP_CODE HTTP_TYPE <"$IT_TMP/meta"
}

# The value of a sample (no labels) in the metrics in $IT_TMP/out.
metric() {
  awk -v m="$1" '$1 == m { print $2; found = 1 } END { exit !found }' "$IT_TMP/out" ||
    it_fail "/metrics has no sample $1"
}

it_case "start a fresh single-member server"
it_server_up

it_case "GET /health"
http GET /health
assert_eq 200 "$HTTP_CODE" "status"
assert_eq 'text/plain; charset=utf-8' "$HTTP_TYPE" "content type (etcd says text/plain for this JSON)"
assert_eq '{"health":"true"}' "$(cat "$IT_TMP/out")" "body (no trailing newline)"

it_case "GET /version"
http GET /version
assert_eq 200 "$HTTP_CODE" "status"
assert_eq 'application/json' "$HTTP_TYPE" "content type"
assert_match '^\{"etcdserver":"3\.4\.[0-9]+","etcdcluster":"3\.4\.0"\}$' "$(cat "$IT_TMP/out")" "body"

it_case "GET /metrics: Prometheus text with etcd's names"
http GET /metrics
assert_eq 200 "$HTTP_CODE" "status"
assert_eq 'text/plain; version=0.0.4; charset=utf-8' "$HTTP_TYPE" "content type"
bad=$(grep -Ev '^(# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .*|[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? [-+0-9.eE]+|[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? (NaN|[+-]Inf))$' "$IT_TMP/out" | head -5)
[[ -z "$bad" ]] || it_fail "lines that are not Prometheus text format: $bad"
for m in etcd_server_has_leader:gauge etcd_server_is_leader:gauge etcd_server_leader_changes_seen_total:counter \
  etcd_server_proposals_committed_total:gauge etcd_server_proposals_applied_total:gauge \
  etcd_server_proposals_pending:gauge etcd_server_proposals_failed_total:counter \
  etcd_server_quota_backend_bytes:gauge etcd_mvcc_db_total_size_in_bytes:gauge \
  etcd_mvcc_put_total:counter etcd_disk_wal_fsync_duration_seconds:histogram \
  etcd_disk_backend_commit_duration_seconds:histogram cairn_storage_map_exact:gauge \
  cairn_storage_map_releases_total:counter cairn_storage_map_unmapped_pages_total:counter; do
  grep -qx "# TYPE ${m%%:*} ${m#*:}" "$IT_TMP/out" || it_fail "/metrics lacks '# TYPE ${m%%:*} ${m#*:}'"
done
assert_eq 1 "$(metric etcd_server_has_leader)" "etcd_server_has_leader"
assert_eq 1 "$(metric etcd_server_is_leader)" "etcd_server_is_leader"
assert_eq 0 "$(metric etcd_server_proposals_pending)" "etcd_server_proposals_pending"
assert_match '^[01]$' "$(metric cairn_storage_map_exact)" "cairn_storage_map_exact"
quota=$(metric etcd_server_quota_backend_bytes)
awk -v v="$quota" 'BEGIN { exit !(v == 2147483648) }' ||
  it_fail "etcd_server_quota_backend_bytes: expected 2147483648 (the 2 GiB default), got $quota"
(($(awk -v v="$(metric etcd_mvcc_db_total_size_in_bytes)" 'BEGIN { print (v > 0) }'))) ||
  it_fail "etcd_mvcc_db_total_size_in_bytes is not positive"
grep -q '^etcd_disk_wal_fsync_duration_seconds_bucket{le="+Inf"} ' "$IT_TMP/out" ||
  it_fail "etcd_disk_wal_fsync_duration_seconds has no +Inf bucket"
metric etcd_disk_wal_fsync_duration_seconds_sum >/dev/null
grep -q '^etcd_server_version{server_version="3\.4\.[0-9]*"} 1$' "$IT_TMP/out" ||
  it_fail "no etcd_server_version{server_version=\"3.4.x\"} 1"
puts0=$(metric etcd_mvcc_put_total)
committed0=$(metric etcd_server_proposals_committed_total)
fsyncs0=$(metric etcd_disk_wal_fsync_duration_seconds_count)
ctl_ok put metrics/k v <<<"OK"
http GET /metrics
assert_eq $((puts0 + 1)) "$(metric etcd_mvcc_put_total)" "etcd_mvcc_put_total after one put"
(($(metric etcd_server_proposals_committed_total) > committed0)) ||
  it_fail "etcd_server_proposals_committed_total did not grow with a put"
(($(metric etcd_disk_wal_fsync_duration_seconds_count) > fsyncs0)) ||
  it_fail "etcd_disk_wal_fsync_duration_seconds_count did not grow with a put"

it_case "unknown paths and methods"
http GET /nope
assert_eq 404 "$HTTP_CODE" "GET /nope"
http POST /health
assert_eq 405 "$HTTP_CODE" "POST /health"

it_case "oversized put through etcdctl: etcd's error, then the server goes on"
head -c $((1600 * 1024)) /dev/zero | tr '\0' v >"$IT_TMP/big"
IT_LAST_CMD="etcdctl put big/k < 1.6 MiB"
ctl put big/k <"$IT_TMP/big" >"$IT_TMP/out" 2>"$IT_TMP/err"
IT_RC=$?
assert_rc 1
assert_out_empty
assert_err_last "Error: etcdserver: request is too large"
head -c $((1400 * 1024)) /dev/zero | tr '\0' v >"$IT_TMP/big"
ctl put big/k <"$IT_TMP/big" >"$IT_TMP/out" 2>"$IT_TMP/err"
IT_RC=$?
assert_rc 0
it_run ctl get big/k --print-value-only
assert_rc 0
assert_eq $((1400 * 1024 + 1)) "$(wc -c <"$IT_TMP/out")" "size of the 1.4 MiB value read back (with etcdctl's newline)"
assert_server_alive

it_case "bad input (wire_probe.py; each probe checks that the server still answers)"
timeout 180 "$IT_PYTHON" "$IT_DIR/wire_probe.py" "$IT_ENDPOINT" "$seed" \
  random_bytes preface_then_garbage bad_frames http1_garbage http1_refused_at_once \
  idle_and_half_open_connections \
  grpc_by_hand grpc_errors abandoned_streams
rc=$?
[[ $rc -eq 0 ]] || it_fail "wire_probe.py failed (exit $rc, details above)"
assert_server_alive

it_case "after all that: the server still serves, /health is true, the data is intact"
ctl_ok get metrics/k --print-value-only <<<"v"
http GET /health
assert_eq '200 {"health":"true"}' "$HTTP_CODE $(cat "$IT_TMP/out")" "/health"
it_server_stop

it_done
