#!/usr/bin/env bash
# tests/integration/test_bench.sh: a smoke test of cairn-bench
# (docs/performance.md, "cairn-bench"): every workload for a few hundred
# requests or about a second against one member, its JSON parsed and sane
# (requests > 0, no errors, percentiles in order, the workload's extras
# consistent). It never asserts timings.
#
#   bash tests/integration/test_bench.sh <build-dir>
#   CAIRN_TEST_SERVER=etcd bash tests/integration/test_bench.sh <build-dir>
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh" "$@"

BENCH="$IT_BUILD/cairn-bench"
[[ -x "$BENCH" ]] || it_fail "no cairn-bench at $BENCH (cmake --build <dir> --target cairn-bench)"

# Checks the JSON in $IT_TMP/out (python: d is the report; extra checks in $1).
check_json() {
  "$IT_PYTHON" - "$IT_TMP/out" "${1:-True}" >"$IT_TMP/check" 2>&1 <<'PY' || it_fail "JSON check: $(cat "$IT_TMP/check")"
import json, sys
d = json.load(open(sys.argv[1]))
def lat_ok(l, what):
    keys = ["min", "p50", "p90", "p99", "p999", "max"]
    vals = [l[k] for k in keys]
    assert all(isinstance(v, (int, float)) and v >= 0 for v in vals + [l["mean"]]), (what, l)
    assert vals == sorted(vals), (what, "percentiles out of order", l)
    assert l["min"] <= l["mean"] <= l["max"], (what, l)
assert d["tool"] == "cairn-bench", d
assert d["requests"] > 0, d
assert d["errors"] == 0 and d["first_error"] is None, d
assert d["elapsed_s"] > 0 and d["throughput_rps"] > 0 and d["client_cpu_s"] >= 0, d
assert isinstance(d["params"], dict) and d["params"]["clients"] > 0, d
lat_ok(d["latency_us"], "latency_us")
assert eval(sys.argv[2]), ("check failed", sys.argv[2], d)
if "reads" in d:
    lat_ok(d["reads"]["latency_us"], "reads")
    lat_ok(d["writes"]["latency_us"], "writes")
if "delivery_latency_us" in d:
    lat_ok(d["delivery_latency_us"], "delivery")
if "keepalive" in d:
    lat_ok(d["keepalive"]["latency_us"], "keepalive")
PY
}

bench() { # args...: runs cairn-bench against the server, JSON on stdout
  it_run "$BENCH" --endpoints "$IT_ENDPOINT" --quiet --json - "$@"
  assert_rc 0
}

it_server_up

it_case "put: --total, 4 clients on 2 connections"
bench put --total 300 --clients 4 --conns 2
check_json 'd["workload"] == "put" and d["requests"] == 300 and d["endpoints"] == ["'"$IT_ENDPOINT"'"]'

it_case "range: preloaded key space, serializable, --duration"
bench range --key-space 200 --duration 0.5 --consistency s
check_json 'd["workload"] == "range" and d["params"]["consistency"] == "s"'

it_case "range: linearizable, sequential keys, no preload"
bench range --total 300 --sequential --no-preload --prefix bench-nopre/
check_json 'd["params"]["preload"] is False and d["params"]["sequential"] is True'

it_case "txn: compare-and-swap, every request succeeded or failed"
bench txn --total 400 --key-space 50 --clients 8
check_json 'd["succeeded"] + d["failed"] == d["requests"] == 400 and d["succeeded"] > 0'

it_case "delete: from a preloaded key space"
bench delete --total 300 --key-space 300 --sequential --prefix bench-del/
check_json 'd["deleted"] == 300'
it_run ctl get bench-del/ --prefix --keys-only
assert_rc 0
assert_out_empty

it_case "mixed: reads and writes add up"
bench mixed --total 500 --read-ratio 0.5 --key-space 100
check_json 'd["reads"]["requests"] + d["writes"]["requests"] == d["requests"] and d["reads"]["requests"] > 0 and d["writes"]["requests"] > 0'

it_case "watch: fan-out to every watcher, nothing missing"
bench watch --watchers 20 --watch-streams 4 --put-rate 300 --total 150 --prefix bench-w/
check_json 'd["watchers"] == 20 and d["streams"] == 4 and d["missing"] == 0 and d["duplicates"] == 0 and d["events"] == 20 * d["requests"] == 3000 and 0 <= d["before_ack"] <= d["events"]'

it_case "watch: put rate 0 (as fast as the clients allow), --duration"
bench watch --watchers 10 --watch-streams 10 --put-rate 0 --duration 0.5 --clients 4 --prefix bench-w2/
check_json 'd["missing"] == 0 and d["events"] == 10 * d["requests"]'

it_case "lease: grants, keep-alives on 2 streams, leases revoked afterwards"
bench lease --duration 0.5 --keepalives 10 --conns 2 --lease-ttl 30
check_json 'd["keepalive"]["requests"] > 0 and d["keepalive"]["errors"] == 0'
it_run ctl lease list
assert_rc 0
assert_eq "found 0 leases" "$(head -n 1 "$IT_TMP/out")" "leases left after the lease run"

it_case "the human table when --json is not -"
it_run "$BENCH" --endpoints "$IT_ENDPOINT" --quiet --total 50 --json "$IT_TMP/r.json" put
assert_rc 0
assert_match "requests 50, errors 0" "$(it_out)" "table"
it_run "$IT_PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["requests"])' "$IT_TMP/r.json"
assert_eq 50 "$(it_out)" "requests in the JSON file"

it_case "usage errors exit 2; a dead endpoint fails the run with its error"
it_run "$BENCH" --bogus put
assert_rc 2
it_run "$BENCH" --key-size 2 --key-space 1000 put
assert_rc 2
dead=$(it_free_ports 1)
it_run "$BENCH" --endpoints "127.0.0.1:$dead" --quiet --total 20 --timeout-ms 2000 --json - put
assert_rc 1
check_dead() {
  "$IT_PYTHON" -c '
import json, sys
d = json.load(open(sys.argv[1]))
assert d["requests"] == 0 and d["errors"] == 20 and d["first_error"], d
' "$IT_TMP/out" || it_fail "the dead endpoint's report"
}
check_dead

it_server_stop

it_case "https with a client certificate: --cacert/--cert/--key, --insecure-skip-tls-verify"
pki=$IT_TMP/pki
mkdir -p "$pki"
(
  cd "$pki" &&
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
      -subj "/CN=bench-ca" -keyout ca.key -out ca.crt &&
    for who in server client; do
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$who" \
        -keyout $who.key -out $who.csr || exit 1
    done &&
    printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext &&
    printf 'extendedKeyUsage=clientAuth\n' >client.ext &&
    for who in server client; do
      openssl x509 -req -in $who.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
        -extfile $who.ext -out $who.crt || exit 1
    done
) >"$IT_TMP/openssl.log" 2>&1 || it_fail "openssl failed: $(tail -5 "$IT_TMP/openssl.log")"
it_server_new --cert-file="$pki/server.crt" --key-file="$pki/server.key" \
  --trusted-ca-file="$pki/ca.crt" --client-cert-auth
IT_URL="https://$IT_ENDPOINT"
it_server_start
TLS=(--cert "$pki/client.crt" --key "$pki/client.key")
it_wait_for 30 '"$BENCH" --endpoints "$IT_URL" --quiet --total 1 --timeout-ms 1000 \
  --cacert "$pki/ca.crt" "${TLS[@]}" put >/dev/null 2>&1' || it_fail "the TLS server was not ready"
it_run "$BENCH" --endpoints "$IT_URL" --quiet --json - --total 200 --cacert "$pki/ca.crt" "${TLS[@]}" put
assert_rc 0
check_json 'd["requests"] == 200 and d["params"]["cacert"].endswith("ca.crt")'
it_run "$BENCH" --endpoints "$IT_URL" --quiet --json - --total 200 --insecure-skip-tls-verify \
  "${TLS[@]}" --conns 2 range --key-space 100
assert_rc 0
check_json 'd["params"]["insecure_skip_tls_verify"] is True'
it_run "$BENCH" --endpoints "$IT_ENDPOINT" --quiet --total 10 --cacert "$pki/ca.crt" put
assert_rc 2 # TLS flags without an https:// endpoint
it_server_stop
it_done
