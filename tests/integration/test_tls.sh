#!/usr/bin/env bash
# TLS on the client port: --cert-file/--key-file serve https (ALPN h2) to
# etcdctl; with --client-cert-auth and --trusted-ca-file a client must present
# a certificate signed by that CA. Runs against cairn or, with
# CAIRN_TEST_SERVER=etcd, the real etcd.
source "$(dirname "$0")/lib.sh"

it_case "certificates for a CA, the server (127.0.0.1) and a client"
pki=$IT_TMP/pki
mkdir -p "$pki"
it_make_pki "$pki" >"$IT_TMP/openssl.log" 2>&1 || it_fail "openssl failed: $(tail -5 "$IT_TMP/openssl.log")"

# it_server_new picks ports; the client URL is switched to https.
tls_member() {
  it_server_new --cert-file="$pki/server.crt" --key-file="$pki/server.key" "$@"
  IT_URL="https://$IT_ENDPOINT"
  IT_CTL=("$IT_ETCDCTL" --endpoints="$IT_URL" --dial-timeout=3s --command-timeout=10s
    --cacert="$pki/ca.crt")
  it_server_start
  local i
  for ((i = 0; i < 300; i++)); do
    "${IT_CTL[@]}" --cert="$pki/client.crt" --key="$pki/client.key" \
      --dial-timeout=1s --command-timeout=1s endpoint health >/dev/null 2>&1 && return 0
    kill -0 "$IT_SRV_PID" 2>/dev/null || it_fail "the server exited before it was ready"
    sleep 0.1
  done
  it_fail "the TLS server was not ready"
}

it_case "https: put and get over TLS with the CA"
tls_member
it_run ctl put tlskey tlsvalue
assert_rc 0
it_run ctl get tlskey --print-value-only
assert_eq "tlsvalue" "$(it_out)" "value read over TLS"

it_case "https: a client that does not trust the server's CA is refused"
it_run "$IT_ETCDCTL" --endpoints="$IT_URL" --dial-timeout=2s --command-timeout=3s get tlskey
[[ $IT_RC -ne 0 ]] || it_fail "a client without the CA got an answer"

it_case "plaintext gRPC on the https port gets no answer"
it_run "$IT_ETCDCTL" --endpoints="$IT_ENDPOINT" --dial-timeout=2s --command-timeout=3s get tlskey
[[ $IT_RC -ne 0 ]] || it_fail "plaintext reached the TLS port"
it_server_stop

it_case "client-cert-auth: a client certificate is required"
tls_member --trusted-ca-file="$pki/ca.crt" --client-cert-auth
it_run ctl --cert="$pki/client.crt" --key="$pki/client.key" put auth ok
assert_rc 0
it_run ctl --cert="$pki/client.crt" --key="$pki/client.key" get auth --print-value-only
assert_eq "ok" "$(it_out)" "value with a client certificate"
it_run ctl get auth
[[ $IT_RC -ne 0 ]] || it_fail "a client without a certificate got an answer"
it_server_stop

it_done
