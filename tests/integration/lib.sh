# tests/integration/lib.sh: helpers for Cairn's integration tests.
#
# Sourced by every tests/integration/test_*.sh, which ctest runs as
# `bash <script> <build-dir>`. The server under test is chosen by
# CAIRN_TEST_SERVER:
#   cairn (default)  <build-dir>/cairn
#   etcd             /usr/bin/etcd (the reference: every expectation written
#                    here must hold against it)
# Both get the same etcd flag names; etcd also gets --logger=zap, which only
# silences its deprecation warning about the old logger.
#
# Conventions:
# - Each test calls it_case "name" before a group of checks; the first failed
#   assertion prints what was expected and what came, the case, the last
#   command and the tail of the server log, and exits 1.
# - Commands run through it_run, which keeps stdout, stderr and the exit code
#   in files ($IT_TMP/out, $IT_TMP/err) and $IT_RC, so that outputs can be
#   compared byte for byte (command substitution would drop trailing newlines).
# - Every process the helpers start is recorded, and the EXIT trap stops them
#   all (SIGTERM, then SIGKILL), so no server or watcher outlives the test.

set -u -o pipefail

IT_BUILD=${1:-}
if [[ -z "$IT_BUILD" ]]; then
  echo "usage: bash $0 <build-dir>" >&2
  exit 2
fi
IT_BUILD=$(cd "$IT_BUILD" 2>/dev/null && pwd) || {
  echo "FAIL: build directory ${1} does not exist" >&2
  exit 1
}
IT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
IT_SERVER=${CAIRN_TEST_SERVER:-cairn}
IT_ETCD_BIN=${CAIRN_TEST_ETCD:-/usr/bin/etcd}
IT_ETCDCTL=${CAIRN_TEST_ETCDCTL:-/usr/bin/etcdctl}
IT_PYTHON=${CAIRN_TEST_PYTHON:-/usr/bin/python3}
IT_SCRIPT=$(basename "$0" .sh)
IT_T0=$(date +%s.%N)
IT_CASES=0
IT_CASE="(setup)"
IT_LAST_CMD=""
IT_RC=0
IT_PIDS=()     # every background process started through it_bg or the server helpers
IT_SRV_PID=""  # the running server, if any

export ETCDCTL_API=3
# Every client talks to 127.0.0.1: no proxy, whatever the environment says.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY grpc_proxy all_proxy ALL_PROXY

case "$IT_SERVER" in
  cairn)
    IT_SERVER_BIN="$IT_BUILD/cairn"
    if [[ ! -x "$IT_SERVER_BIN" ]]; then
      echo "FAIL: $IT_SCRIPT: no cairn binary at $IT_SERVER_BIN (build the daemon first," \
        "or run against the reference with CAIRN_TEST_SERVER=etcd)" >&2
      exit 1
    fi
    ;;
  etcd)
    IT_SERVER_BIN="$IT_ETCD_BIN"
    if [[ ! -x "$IT_SERVER_BIN" ]]; then
      echo "FAIL: $IT_SCRIPT: CAIRN_TEST_SERVER=etcd but $IT_SERVER_BIN is missing" \
        "(apt-get install etcd-server)" >&2
      exit 1
    fi
    ;;
  *)
    echo "FAIL: CAIRN_TEST_SERVER must be cairn or etcd, not '$IT_SERVER'" >&2
    exit 1
    ;;
esac
for tool in "$IT_ETCDCTL" "$IT_PYTHON"; do
  if [[ ! -x "$tool" ]]; then
    echo "FAIL: $IT_SCRIPT: $tool is missing (apt-get install etcd-client python3-etcd3)" >&2
    exit 1
  fi
done

IT_TMP=$(mktemp -d "${TMPDIR:-/tmp}/cairn-it-${IT_SCRIPT}.XXXXXX")

# The test runs its own copy of the daemon: a rebuild while it runs (which
# truncates and relinks build/cairn) must not break a restart half-way.
if [[ "$IT_SERVER" == cairn ]]; then
  cp "$IT_SERVER_BIN" "$IT_TMP/cairn" || {
    echo "FAIL: $IT_SCRIPT: cannot copy $IT_SERVER_BIN" >&2
    exit 1
  }
  [[ -s "$IT_TMP/cairn" ]] || {
    echo "FAIL: $IT_SCRIPT: $IT_SERVER_BIN is empty (being rebuilt?)" >&2
    exit 1
  }
  IT_SERVER_BIN="$IT_TMP/cairn"
fi

# ---------------------------------------------------------------- cleanup

# Every background process runs under setsid, in a process group of its own
# whose ID is its PID: signals go to the group, so that whatever it started
# (etcdctl lock -- CMD) goes too.
it_signal() { # signal pid
  kill "-$1" -- "-$2" 2>/dev/null || kill "-$1" "$2" 2>/dev/null
}

# Stops one process: SIGTERM, then SIGKILL after $2 seconds (default 10).
# Returns 0 if it ended on SIGTERM, 1 if it needed SIGKILL.
it_stop_pid() {
  local pid=$1 grace=${2:-10} i
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
  it_signal TERM "$pid"
  for ((i = 0; i < grace * 20; i++)); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
    sleep 0.05
  done
  it_signal KILL "$pid"
  wait "$pid" 2>/dev/null
  return 1
}

it_cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in "${IT_PIDS[@]}"; do
    it_stop_pid "$pid" 5 || true
  done
  if [[ $rc -eq 0 && -z "${CAIRN_TEST_KEEP:-}" ]]; then
    rm -rf "$IT_TMP"
  else
    echo "(test files kept in $IT_TMP)" >&2
  fi
  exit "$rc"
}
trap it_cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM

# Runs "$@" in the background (stdout to $IT_BG_OUT, stderr to $IT_BG_OUT.err),
# records it for cleanup, sets IT_BG_PID. "ctl" as the command means etcdctl
# against the server under test (a shell function cannot be exec'd, and a
# subshell's PID is not the process to signal).
it_bg() {
  local out=${IT_BG_OUT:-$IT_TMP/bg.$RANDOM}
  if [[ "$1" == ctl ]]; then
    shift
    set -- "${IT_CTL[@]}" "$@"
  elif declare -F "$1" >/dev/null; then
    it_fail "it_bg: $1 is a shell function; give it a program"
  fi
  setsid "$@" >"$out" 2>"$out.err" &
  IT_BG_PID=$!
  IT_PIDS+=("$IT_BG_PID")
}

# ---------------------------------------------------------------- failure and cases

it_log_tail() {
  if [[ -n "${IT_LOG:-}" && -f "$IT_LOG" ]]; then
    echo "--- last lines of the server log ($IT_LOG):"
    tail -n 25 "$IT_LOG"
  fi
}

# Prints a failure with context and exits 1.
it_fail() {
  {
    echo "FAIL: $IT_SCRIPT [$IT_SERVER] case '$IT_CASE': $*"
    if [[ -n "$IT_LAST_CMD" ]]; then
      echo "--- last command: $IT_LAST_CMD"
      echo "--- its exit code: $IT_RC"
      echo "--- its stdout:"
      sed -n '1,60p' "$IT_TMP/out" 2>/dev/null
      echo "--- its stderr:"
      sed -n '1,30p' "$IT_TMP/err" 2>/dev/null
    fi
    it_log_tail
  } >&2
  exit 1
}

it_case() {
  local now
  now=$(date +%s%N)
  if [[ -n "${IT_CASE_T0:-}" ]]; then
    printf '   (%d ms)\n' $(((now - IT_CASE_T0) / 1000000))
  fi
  IT_CASE_T0=$now
  IT_CASE=$1
  IT_CASES=$((IT_CASES + 1))
  IT_LAST_CMD=""
  echo "-- $IT_CASE"
}

it_done() {
  local t1
  t1=$(date +%s.%N)
  printf 'PASS: %s [%s] %d cases in %.1f s\n' "$IT_SCRIPT" "$IT_SERVER" "$IT_CASES" \
    "$(awk -v a="$IT_T0" -v b="$t1" 'BEGIN { print b - a }')"
}

# ---------------------------------------------------------------- running commands

# Runs "$@" with stdin from /dev/null (or from it_run_in); stdout in
# $IT_TMP/out, stderr in $IT_TMP/err, exit code in IT_RC. Never fails itself.
it_run() {
  IT_LAST_CMD="$*"
  "$@" </dev/null >"$IT_TMP/out" 2>"$IT_TMP/err"
  IT_RC=$?
  return 0
}

# it_run_in INPUT cmd...: as it_run with INPUT (printf %b, so \n works) on stdin.
it_run_in() {
  local input=$1
  shift
  IT_LAST_CMD="$* <<< $(printf '%q' "$input")"
  printf '%b' "$input" | "$@" >"$IT_TMP/out" 2>"$IT_TMP/err"
  IT_RC=$?
  return 0
}

# The last command's stdout without trailing newlines.
it_out() { cat "$IT_TMP/out"; }

# etcdctl against the server under test.
ctl() {
  "${IT_CTL[@]}" "$@"
}

# ---------------------------------------------------------------- assertions

assert_eq() { # expected actual what
  if [[ "$1" != "$2" ]]; then
    it_fail "$3: expected [$1], got [$2]"
  fi
}

assert_match() { # extended-regex actual what
  if ! [[ "$2" =~ $1 ]]; then
    it_fail "$3: expected a match of /$1/, got [$2]"
  fi
}

assert_rc() { # expected-exit-code
  if [[ "$IT_RC" != "$1" ]]; then
    it_fail "exit code: expected $1, got $IT_RC"
  fi
}

# Compares the last command's stdout byte for byte with stdin (a heredoc).
assert_out() {
  local what=${1:-stdout}
  cat >"$IT_TMP/expected"
  if ! cmp -s "$IT_TMP/expected" "$IT_TMP/out"; then
    {
      echo "--- expected $what (\$ marks line ends):"
      sed 's/$/$/' "$IT_TMP/expected"
      echo "--- actual $what:"
      sed 's/$/$/' "$IT_TMP/out"
      echo "--- diff:"
      diff -u "$IT_TMP/expected" "$IT_TMP/out"
    } >&2
    it_fail "$what differs from the expected text"
  fi
}

assert_out_empty() {
  if [[ -s "$IT_TMP/out" ]]; then
    it_fail "stdout: expected nothing"
  fi
}

# The last line of stderr equals $1 exactly (etcdctl prints "Error: ..." last;
# client-side log lines before it are not the server's doing).
assert_err_last() {
  local last
  last=$(tail -n 1 "$IT_TMP/err")
  if [[ "$last" != "$1" ]]; then
    it_fail "last line of stderr: expected [$1], got [$last]"
  fi
}

# stderr holds a line matching the extended regex $1.
assert_err_has() {
  if ! grep -Eq -- "$1" "$IT_TMP/err"; then
    it_fail "stderr: expected a line matching /$1/"
  fi
}

# Shorthands: run, check exit code 0 and stdout.
ctl_ok() { # args... ; expected stdout on stdin
  it_run ctl "$@"
  assert_rc 0
  assert_out
}

# Runs etcdctl expecting failure: ctl_err RC "Error: ..." args...
ctl_err() {
  local rc=$1 msg=$2
  shift 2
  it_run ctl "$@"
  assert_rc "$rc"
  assert_out_empty
  assert_err_last "$msg"
}

# Polls "$@" (a shell command string run with eval) every 0.1 s until it
# succeeds or $1 seconds pass; returns its status.
it_wait_for() {
  local timeout=$1 end
  shift
  end=$(($(date +%s%N) + timeout * 1000000000))
  while true; do
    if eval "$@"; then return 0; fi
    if (($(date +%s%N) > end)); then return 1; fi
    sleep 0.1
  done
}

# ---------------------------------------------------------------- JSON

# Reads JSON from stdin and prints it compact with cluster_id / member_id /
# raft_term values (at any depth, in any field spelling etcdctl uses) replaced
# by "<CID>", "<MID>" and "<TERM>" when they are what the server should say:
# the cluster and member IDs of the member list, a positive term. A wrong ID
# stays a number, so the comparison fails and shows it.
it_json_norm() {
  "$IT_PYTHON" -c '
import json, sys
cid, mid = int(sys.argv[1] or 0), int(sys.argv[2] or 0)
def walk(v):
    if isinstance(v, dict):
        out = {}
        for k, x in v.items():
            lk = k.lower()
            if lk in ("cluster_id", "clusterid") and x == cid:
                x = "<CID>"
            elif lk in ("member_id", "memberid") and x == mid:
                x = "<MID>"
            elif lk in ("raft_term", "raftterm") and isinstance(x, int) and x > 0:
                x = "<TERM>"
            else:
                x = walk(x)
            out[k] = x
        return out
    if isinstance(v, list):
        return [walk(x) for x in v]
    return v
for line in sys.stdin:
    if line.strip():
        print(json.dumps(walk(json.loads(line)), separators=(",", ":")))
' "${IT_CID:-}" "${IT_MID:-}"
}

# Rewrites the last command's stdout (etcdctl -w fields) in place: the
# "ClusterID", "MemberID"/"Leader" and "RaftTerm" lines get the same
# placeholders as it_json_norm.
it_norm_fields() {
  sed -i -E \
    -e "s/^\"ClusterID\" : ${IT_CID}\$/\"ClusterID\" : <CID>/" \
    -e "s/^\"(MemberID|Leader)\" : ${IT_MID}\$/\"\1\" : <MID>/" \
    -e 's/^"RaftTerm" : [1-9][0-9]*$/"RaftTerm" : <TERM>/' \
    "$IT_TMP/out"
}

# Compares the last command's stdout, normalized by it_json_norm, with $1.
assert_json() {
  local got
  got=$(it_json_norm <"$IT_TMP/out") || it_fail "stdout is not JSON"
  if [[ "$got" != "$1" ]]; then
    it_fail "JSON differs:
--- expected:
$1
--- actual (normalized):
$got"
  fi
}

# Prints a field of the JSON on stdin: it_json_get 'd["header"]["revision"]'
it_json_get() {
  "$IT_PYTHON" -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"
}

# Base64 of a string, as etcdctl -w json prints bytes.
b64() { printf '%s' "$1" | base64 -w0; }

# ---------------------------------------------------------------- ports and servers

# Prints N distinct free TCP ports on 127.0.0.1 (bound to port 0 by the kernel,
# then released: good enough for tests that run serially).
# Makes in directory $1 a CA (ca.crt/key), a server certificate for
# 127.0.0.1 (server.crt/key) and a client certificate (client.crt/key), all
# signed by the CA, with openssl; valid for 2 days.
it_make_pki() {
  (
    cd "$1" &&
      openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=cairn-test-ca" \
        -keyout ca.key -out ca.crt &&
      openssl req -newkey rsa:2048 -nodes -subj "/CN=server" -keyout server.key -out server.csr &&
      printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext &&
      openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
        -extfile server.ext -out server.crt &&
      openssl req -newkey rsa:2048 -nodes -subj "/CN=client" -keyout client.key -out client.csr &&
      printf 'extendedKeyUsage=clientAuth\n' >client.ext &&
      openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
        -extfile client.ext -out client.crt
  )
}

it_free_ports() {
  "$IT_PYTHON" -c '
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
' "$1"
}

# Prepares a new member (name, fresh data dir, free ports) without starting it.
# Extra arguments are more etcd flags for every start of this member
# (e.g. --quota-backend-bytes=...).
it_server_new() {
  local ports
  IT_SRV_N=$((${IT_SRV_N:-0} + 1))
  IT_NAME="it${IT_SRV_N}"
  IT_DATA="$IT_TMP/data$IT_SRV_N"
  IT_LOG="$IT_TMP/server$IT_SRV_N.log"
  ports=$(it_free_ports 2) || it_fail "cannot pick free ports"
  read -r IT_CLIENT_PORT IT_PEER_PORT <<<"$ports"
  IT_ENDPOINT="127.0.0.1:$IT_CLIENT_PORT"
  IT_CTL=("$IT_ETCDCTL" --endpoints="$IT_ENDPOINT" --dial-timeout=3s --command-timeout=10s)
  IT_URL="http://$IT_ENDPOINT"
  IT_PEER_URL="http://127.0.0.1:$IT_PEER_PORT"
  IT_EXTRA_FLAGS=("$@")
  IT_CID=""
  IT_MID=""
}

# Starts the current member on its data dir (new or existing) in the background.
it_server_start() {
  local -a args=(
    --name="$IT_NAME"
    --data-dir="$IT_DATA"
    --listen-client-urls="$IT_URL"
    --advertise-client-urls="$IT_URL"
    --listen-peer-urls="$IT_PEER_URL"
    --initial-advertise-peer-urls="$IT_PEER_URL"
    --initial-cluster="$IT_NAME=$IT_PEER_URL"
    --log-level=info
  )
  if [[ "$IT_SERVER" == etcd ]]; then
    args+=(--logger=zap)
  fi
  args+=("${IT_EXTRA_FLAGS[@]}")
  [[ -z "$IT_SRV_PID" ]] || it_fail "it_server_start: a server is already running (pid $IT_SRV_PID)"
  echo "=== start $IT_SERVER: $IT_SERVER_BIN ${args[*]}" >>"$IT_LOG"
  setsid "$IT_SERVER_BIN" "${args[@]}" >>"$IT_LOG" 2>&1 &
  IT_SRV_PID=$!
  IT_PIDS+=("$IT_SRV_PID")
}

# Waits until `etcdctl endpoint health` succeeds (default 30 s); fails if the
# server exits first or never gets ready.
it_server_wait_ready() {
  local timeout=${1:-30} end
  end=$(($(date +%s%N) + timeout * 1000000000))
  while true; do
    if ! kill -0 "$IT_SRV_PID" 2>/dev/null; then
      wait "$IT_SRV_PID"
      local rc=$?
      IT_SRV_PID=""
      it_fail "the server exited (code $rc) before it was ready"
    fi
    if "$IT_ETCDCTL" --endpoints="$IT_ENDPOINT" --dial-timeout=1s --command-timeout=1s \
      endpoint health >/dev/null 2>&1; then
      break
    fi
    if (($(date +%s%N) > end)); then
      it_fail "the server was not ready after ${timeout} s"
    fi
    sleep 0.1
  done
  if [[ -z "$IT_MID" ]]; then
    local ids
    ids=$(ctl member list -w json | it_json_get \
      'str(d["header"]["cluster_id"]) + " " + str(d["members"][0]["ID"])') ||
      it_fail "member list -w json failed after the server was ready"
    read -r IT_CID IT_MID <<<"$ids"
    IT_MID_HEX=$(printf '%x' "$IT_MID")
  fi
}

# A new member, started and ready.
it_server_up() {
  it_server_new "$@"
  it_server_start
  it_server_wait_ready
}

# SIGTERM, SIGKILL after 10 s. Fails the test if the server needed SIGKILL.
# The exit code must be 0, or 143 (killed by SIGTERM: etcd re-raises the
# signal after its shutdown handlers ran). The log must hold no sanitizer
# report (for runs from an ASan/UBSan build dir).
it_server_stop() {
  [[ -n "$IT_SRV_PID" ]] || return 0
  local pid=$IT_SRV_PID i rc
  IT_SRV_PID=""
  if ! kill -0 "$pid" 2>/dev/null; then
    wait "$pid"
    it_fail "the server had already exited (code $?) when the test stopped it"
  fi
  echo "=== stop (SIGTERM)" >>"$IT_LOG"
  kill -TERM "$pid"
  for ((i = 0; i < 200; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  if kill -0 "$pid" 2>/dev/null; then
    it_signal KILL "$pid"
    wait "$pid" 2>/dev/null
    it_fail "the server did not exit within 10 s of SIGTERM"
  fi
  wait "$pid"
  rc=$?
  [[ $rc -eq 0 || $rc -eq 143 ]] || it_fail "the server exited with code $rc after SIGTERM"
  it_check_log
}

# Fails if the server log has a sanitizer or crash report.
it_check_log() {
  local pat='ERROR: (AddressSanitizer|LeakSanitizer)|runtime error: |: assertion failed: '
  if grep -Eq "$pat" "$IT_LOG"; then
    it_fail "the server log has a sanitizer or assertion report: $(grep -Em3 "$pat" "$IT_LOG")"
  fi
}

# kill -9 of the running server; waits until it is gone.
it_server_kill9() {
  [[ -n "$IT_SRV_PID" ]] || it_fail "it_server_kill9: no server running"
  echo "=== kill -9" >>"$IT_LOG"
  it_signal KILL "$IT_SRV_PID"
  wait "$IT_SRV_PID" 2>/dev/null
  IT_SRV_PID=""
  it_check_log
}

# kill -9, then start again on the same data dir and ports, wait until ready.
it_server_crash_restart() {
  it_server_kill9
  it_server_start
  it_server_wait_ready
}

# The server is still running (not crashed).
assert_server_alive() {
  if [[ -z "$IT_SRV_PID" ]] || ! kill -0 "$IT_SRV_PID" 2>/dev/null; then
    it_fail "the server is not running any more (crashed?)"
  fi
}

# The current store revision, from a Range's header.
it_revision() {
  ctl get it-revision-probe -w json | it_json_get 'd["header"]["revision"]'
}
