#!/usr/bin/env bash
# tests/integration/test_cairnctl.sh: cairnctl against etcdctl.
#
# Three single-member servers run in lockstep: etcd A (driven by etcdctl,
# the reference), etcd B and cairn (both driven by cairnctl). Every command
# goes to all three; their stdout, the last line of stderr and the exit
# code must agree once what differs by nature is normalised (cluster and
# member IDs, ports, lease IDs, raft terms). Each server gets the same
# writes, so revisions stay equal. Ports: free ones picked at the start
# (36397-36399 are only named as peers or dead endpoints, never bound).
#
#   bash tests/integration/test_cairnctl.sh <build-dir>
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh" "$@"

CTL_BIN=${CAIRN_TEST_CAIRNCTL:-$IT_BUILD/cairnctl}
[[ -x "$CTL_BIN" ]] || it_fail "no cairnctl at $CTL_BIN (cmake --build <dir> --target cairnctl)"
[[ -x "$IT_ETCD_BIN" ]] || it_fail "$IT_ETCD_BIN is missing (apt-get install etcd-server)"
CAIRN_BIN="$IT_TMP/cairn"
if [[ "$IT_SERVER" != cairn ]]; then
  cp "$IT_BUILD/cairn" "$CAIRN_BIN" || it_fail "no cairn binary in $IT_BUILD"
fi

# ---------------------------------------------------------------- servers

# 0: etcd A (etcdctl), 1: etcd B (cairnctl), 2: cairn (cairnctl).
SRV_BIN=("$IT_ETCD_BIN" "$IT_ETCD_BIN" "$CAIRN_BIN")
SRV_WHAT=("etcdctl@etcd" "cairnctl@etcd" "cairnctl@cairn")
read -r -a CPORT <<<"$(it_free_ports 3)"
read -r -a PPORT <<<"$(it_free_ports 3)"
SRV_PID=("" "" "")
CID=("" "" "")
MID=("" "" "")
LEASE=("" "" "") # hex, as printed
NEWM=("" "" "")  # a member added by the test, hex

srv_start() { # i
  local i=$1 log="$IT_TMP/server$1.log"
  local -a args=(--name=it --data-dir="$IT_TMP/data$i"
    --listen-client-urls="http://127.0.0.1:${CPORT[i]}"
    --advertise-client-urls="http://127.0.0.1:${CPORT[i]}"
    --listen-peer-urls="http://127.0.0.1:${PPORT[i]}"
    --initial-advertise-peer-urls="http://127.0.0.1:${PPORT[i]}"
    --initial-cluster="it=http://127.0.0.1:${PPORT[i]}")
  [[ $i -lt 2 ]] && args+=(--logger=zap --log-level=warn)
  setsid "${SRV_BIN[i]}" "${args[@]}" >>"$log" 2>&1 &
  SRV_PID[i]=$!
  IT_PIDS+=("$!")
}

srv_ready() { # i
  local i=$1 n
  for ((n = 0; n < 300; n++)); do
    kill -0 "${SRV_PID[i]}" 2>/dev/null || { IT_LOG="$IT_TMP/server$i.log"; it_fail "server $i exited"; }
    "$IT_ETCDCTL" --endpoints="127.0.0.1:${CPORT[i]}" --dial-timeout=1s --command-timeout=1s \
      endpoint health >/dev/null 2>&1 && break
    sleep 0.1
  done
  local ids
  ids=$("$IT_ETCDCTL" --endpoints="127.0.0.1:${CPORT[i]}" member list -w json | it_json_get \
    'str(d["header"]["cluster_id"]) + " " + str(d["members"][0]["ID"])') || it_fail "member list of server $i"
  read -r CID[i] MID[i] <<<"$ids"
}

# ---------------------------------------------------------------- running one command on all three

tool() { # i args...: the client of server i
  local i=$1
  shift
  if [[ $i -eq 0 ]]; then
    "$IT_ETCDCTL" --endpoints="127.0.0.1:${CPORT[0]}" --dial-timeout=3s --command-timeout=10s "$@"
  else
    "$CTL_BIN" --endpoints="127.0.0.1:${CPORT[i]}" --dial-timeout=3s --command-timeout=10s "$@"
  fi
}

hexid() { printf '%x' "$1"; }

# Writes $IT_TMP/norm.$1.sed: the sed script that puts placeholders for
# what differs between servers by nature into the output of server $1.
# Rebuilt only when what it depends on changed (norm runs ~6 times a
# command).
NORM_KEY=("" "" "")
norm_script() { # i
  local i=$1 e=()
  local key="${CID[i]}|${MID[i]}|${LEASE[i]}|${NEWM[i]}|${CPORT[i]}|${PPORT[i]}"
  [[ "${NORM_KEY[i]}" != "$key" || ! -s "$IT_TMP/norm.$i.sed" ]] || return 0
  local pairs=("${CID[i]}" "<CID>" "${MID[i]}" "<MID>")
  [[ -n "${LEASE[i]}" ]] && pairs+=("$((16#${LEASE[i]}))" "<LEASE>")
  [[ -n "${NEWM[i]}" ]] && pairs+=("$(printf '%u' "0x${NEWM[i]}")" "<NEWM>")
  local k
  for ((k = 0; k < ${#pairs[@]}; k += 2)); do
    [[ -n "${pairs[k]}" ]] || continue
    e+=(-e "s/\\b${pairs[k]}\\b/${pairs[k + 1]}/g")
  done
  # IDs in hex, also as "%16x" pads them with spaces.
  e+=(-e "s/ +$(hexid "${CID[i]}")\\b/ <CID>/g" -e "s/ +$(hexid "${MID[i]}")\\b/ <MID>/g")
  e+=(-e "s/\\b$(hexid "${CID[i]}")\\b/<CID>/g" -e "s/\\b$(hexid "${MID[i]}")\\b/<MID>/g")
  [[ -n "${LEASE[i]}" ]] && e+=(-e "s/\\b${LEASE[i]}\\b/<LEASE>/g")
  [[ -n "${NEWM[i]}" ]] && e+=(-e "s/ +${NEWM[i]}\\b/ <NEWM>/g" -e "s/\\b${NEWM[i]}\\b/<NEWM>/g")
  e+=(-e "s/:${CPORT[i]}\\b/:<CPORT>/g" -e "s/:${PPORT[i]}\\b/:<PPORT>/g")
  e+=(-e 's/"raft_term":[1-9][0-9]*/"raft_term":<TERM>/g')
  # The remaining TTL of a lease depends on when it is asked.
  e+=(-e 's/remaining\([0-9]+s\)/remaining(<R>s)/' -e 's/"ttl":[0-9]+,"granted-ttl"/"ttl":<R>,"granted-ttl"/')
  # A lease granted without being recorded in LEASE.
  e+=(-e 's/"ID":[0-9]+,"TTL"/"ID":<ID>,"TTL"/')
  local k2
  for ((k2 = 1; k2 < ${#e[@]}; k2 += 2)); do printf '%s\n' "${e[k2]}"; done >"$IT_TMP/norm.$i.sed"
  NORM_KEY[i]=$key
}

# Rewrites files $2... (output of server $1) with those placeholders.
norm() { # i file...
  local i=$1
  shift
  norm_script "$i"
  sed -i -E -f "$IT_TMP/norm.$i.sed" "$@"
}

# tri [args...]: runs the command on the three servers (stdin from
# $TRI_IN, printf %b, when set); "@L@" in an argument stands for the
# server's lease, "@M@" for the member the test added. Fails unless the
# three agree; leaves etcdctl's (normalised) result in out/err/IT_RC.
# The three servers are independent: the three commands (and the
# normalisation of their outputs) run at the same time.
tri() {
  local i a pids=() rcs=()
  for i in 0 1 2; do
    local -a args=()
    for a in "$@"; do
      a=${a//@L@/${LEASE[i]}}
      a=${a//@M@/${NEWM[i]}}
      args+=("$a")
    done
    norm_script "$i"
    (
      if [[ -n "${TRI_IN:-}" ]]; then
        printf '%b' "$TRI_IN" | tool "$i" "${args[@]}" >"$IT_TMP/out.$i" 2>"$IT_TMP/err.$i"
      else
        tool "$i" "${args[@]}" </dev/null >"$IT_TMP/out.$i" 2>"$IT_TMP/err.$i"
      fi
      rc=$?
      # etcdctl's client logs JSON lines on stderr; the last line is the error.
      grep -v '^{"level"' "$IT_TMP/err.$i" | tail -n 1 >"$IT_TMP/errl.$i"
      norm "$i" "$IT_TMP/out.$i" "$IT_TMP/errl.$i"
      # Lines whose order follows IDs that differ between servers.
      [[ -z "${TRI_SORT:-}" ]] || sort -o "$IT_TMP/out.$i" "$IT_TMP/out.$i"
      if [[ $i -eq 0 ]]; then
        cp "$IT_TMP/out.0" "$IT_TMP/out"
        cp "$IT_TMP/err.0" "$IT_TMP/err"
      fi
      exit "$rc"
    ) &
    pids+=($!)
  done
  for i in 0 1 2; do
    wait "${pids[i]}"
    rcs+=($?)
  done
  if grep -Eq 'runtime error: |ERROR: (Address|Leak)Sanitizer' "$IT_TMP/err.1" "$IT_TMP/err.2"; then
    it_fail "sanitizer report from cairnctl: $(grep -Ehm3 'runtime error: |Sanitizer' "$IT_TMP/err.1" "$IT_TMP/err.2")"
  fi
  IT_LAST_CMD="$* ${TRI_IN:+<<< $(printf '%q' "$TRI_IN")}"
  IT_RC=${rcs[0]}
  for i in 1 2; do
    if [[ "${rcs[i]}" != "${rcs[0]}" ]] || ! cmp -s "$IT_TMP/out.0" "$IT_TMP/out.$i" ||
      ! cmp -s "$IT_TMP/errl.0" "$IT_TMP/errl.$i"; then
      {
        echo "--- ${SRV_WHAT[0]}: exit ${rcs[0]}, stdout and last line of stderr:"
        cat "$IT_TMP/out.0" "$IT_TMP/errl.0"
        echo "--- ${SRV_WHAT[i]}: exit ${rcs[i]}:"
        cat "$IT_TMP/out.$i" "$IT_TMP/errl.$i"
        echo "--- diff of stdout:"
        diff "$IT_TMP/out.0" "$IT_TMP/out.$i"
      } >&2
      it_fail "${SRV_WHAT[i]} differs from ${SRV_WHAT[0]}"
    fi
  done
}

# As tri, with the exit code and stdout (stdin: a heredoc) asserted too.
tri_ok() {
  tri "$@"
  assert_rc 0
  assert_out
}

# As tri, for a command that fails: exit code and last stderr line.
tri_err() { # rc message args...
  local rc=$1 msg=$2
  shift 2
  tri "$@"
  assert_rc "$rc"
  assert_eq "$msg" "$(cat "$IT_TMP/errl.0")" "last line of stderr"
}

# cairnctl alone on etcd B and cairn (for what etcdctl 3.4 lacks).
duo() {
  local i pids=() rcs=()
  for i in 1 2; do
    norm_script "$i"
    (
      tool "$i" "$@" </dev/null >"$IT_TMP/out.$i" 2>"$IT_TMP/err.$i"
      rc=$?
      norm "$i" "$IT_TMP/out.$i"
      exit "$rc"
    ) &
    pids+=($!)
  done
  for i in 0 1; do
    wait "${pids[i]}"
    rcs+=($?)
  done
  IT_LAST_CMD="cairnctl $*"
  cp "$IT_TMP/out.1" "$IT_TMP/out"
  cp "$IT_TMP/err.1" "$IT_TMP/err"
  IT_RC=${rcs[0]}
  if [[ "${rcs[0]}" != "${rcs[1]}" ]] || ! cmp -s "$IT_TMP/out.1" "$IT_TMP/out.2"; then
    diff "$IT_TMP/out.1" "$IT_TMP/out.2" >&2
    it_fail "cairnctl@cairn differs from cairnctl@etcd"
  fi
}

# ---------------------------------------------------------------- start

# The TLS case (at the end) has servers of its own, a cairn and an etcd with
# https and client certificates: they start with the others and get ready
# while the other cases run; openssl makes their certificates meanwhile.
it_case "TLS: certificates for a CA, the server (127.0.0.1) and a client (in the background)"
pki=$IT_TMP/pki
mkdir -p "$pki"
it_make_pki "$pki" >"$IT_TMP/openssl.log" 2>&1 &
CERT_PID=$!

tls_start() { # name bin cport pport
  local -a args=(--name=tls --data-dir="$IT_TMP/data-$1"
    --listen-client-urls="https://127.0.0.1:$3" --advertise-client-urls="https://127.0.0.1:$3"
    --listen-peer-urls="http://127.0.0.1:$4" --initial-advertise-peer-urls="http://127.0.0.1:$4"
    --initial-cluster="tls=http://127.0.0.1:$4"
    --cert-file="$pki/server.crt" --key-file="$pki/server.key"
    --trusted-ca-file="$pki/ca.crt" --client-cert-auth)
  [[ "$1" == etcd ]] && args+=(--logger=zap --log-level=warn)
  setsid "$2" "${args[@]}" >>"$IT_TMP/server-$1.log" 2>&1 &
  IT_PIDS+=("$!")
}

it_case "start etcd A, etcd B and cairn (and the TLS servers of the last case)"
for i in 0 1 2; do srv_start "$i"; done
for i in 0 1 2; do srv_ready "$i"; done
# A table is as wide as its cells: an ID whose hex has a leading zero (1 in
# 16; etcd hashes the peer URL into it) makes the ID column one narrower,
# and the member list tables of two servers would differ. A server whose ID
# is shorter than 16 hex digits starts again, fresh, on other ports.
for i in 0 1 2; do
  for ((try = 1; ; try++)); do
    mid_hex=$(hexid "${MID[i]}")
    [[ ${#mid_hex} -ne 16 ]] || break
    [[ $try -le 20 ]] || it_fail "server $i: no 16-digit member ID in 20 starts"
    it_stop_pid "${SRV_PID[i]}" 10 || it_fail "server $i needed SIGKILL"
    rm -rf "$IT_TMP/data$i"
    read -r "CPORT[i]" "PPORT[i]" <<<"$(it_free_ports 2)"
    srv_start "$i"
    srv_ready "$i"
  done
done
wait "$CERT_PID" || it_fail "openssl failed: $(tail -5 "$IT_TMP/openssl.log")"
# Ports the kernel says are free: fixed ones in the ephemeral range were once
# taken by another test's client connection (bind: address already in use).
read -r TLS_CP_CAIRN TLS_PP_CAIRN TLS_CP_ETCD TLS_PP_ETCD <<<"$(it_free_ports 4)"
tls_start cairn "$CAIRN_BIN" "$TLS_CP_CAIRN" "$TLS_PP_CAIRN"
tls_start etcd "$IT_ETCD_BIN" "$TLS_CP_ETCD" "$TLS_PP_ETCD"
tri_ok get foo </dev/null

# ---------------------------------------------------------------- kv

it_case "put and get: simple, json, --prev-kv, stdin, --hex"
tri_ok put foo bar <<<"OK"
tri_ok get foo <<'EOF'
foo
bar
EOF
tri_ok get foo -w json <<'EOF'
{"header":{"cluster_id":<CID>,"member_id":<MID>,"revision":2,"raft_term":<TERM>},"kvs":[{"key":"Zm9v","create_revision":2,"mod_revision":2,"version":1,"value":"YmFy"}],"count":1}
EOF
tri_ok put foo baz --prev-kv <<'EOF'
OK
foo
bar
EOF
tri put foo qux --prev-kv -w json
assert_rc 0
TRI_IN='line1\nline2\n' tri_ok put k/stdin <<<"OK"
tri_ok put -- k/dash -v <<<"OK"
tri_ok put k/space "a b  c" <<<"OK"
tri_ok get k/dash --hex <<'EOF'
\x6b\x2f\x64\x61\x73\x68
\x2d\x76
EOF
tri_ok get k/ --prefix <<'EOF'
k/dash
-v
k/space
a b  c
k/stdin
line1
line2

EOF
tri_ok put foo --ignore-value <<<"OK"
tri get foo -w json
assert_rc 0

it_case "put and get errors, exit codes"
tri_err 1 "Error: etcdserver: key is not provided" put "" v
tri_err 1 "Error: etcdserver: key is not provided" get ""
tri_err 1 "Error: etcdserver: key not found" put k/missing --ignore-value
tri_err 128 "Error: put command needs 1 argument and input from stdin or 2 arguments" put
tri_err 128 "Error: get command needs one argument as key and an optional argument as range_end" get
tri_err 1 "Error: etcdserver: requested lease not found" put k/x v --lease=1234

it_case "ranges: --prefix, --from-key, range end, --limit, --keys-only, --print-value-only"
for kv in p/a=3 p/b=1 p/c=5 p/d=2 p/e=4 p/b=6 p/d=7 p/d=8 p=root p0=after; do
  tri_ok put "${kv%%=*}" "${kv#*=}" <<<"OK"
done
tri get p/ --prefix
assert_rc 0
tri get p/ --prefix --keys-only
tri get p/ --prefix --print-value-only
tri get p --prefix --keys-only --print-value-only
tri get p/b p/d
tri get p/c --from-key
tri get "" --from-key --keys-only
tri get "" --prefix -w json
tri get p/ --prefix --limit 2 -w json
tri_ok get p/ --prefix --limit=2 <<'EOF'
p/a
3
p/b
6
EOF

it_case "sorting and consistency"
tri get p/ --prefix --sort-by=KEY --order=DESCEND --keys-only
tri get p/ --prefix --order=DESCEND --print-value-only
tri_ok get p/ --prefix --sort-by=VALUE --print-value-only <<'EOF'
3
4
5
6
8
EOF
tri get p/ --prefix --sort-by=VERSION --order=DESCEND --limit=2 --keys-only
tri get p/ --prefix --sort-by=MODIFY --order=DESCEND -w json
tri get p/ --prefix --sort-by=create --order=ascend --keys-only
tri get p/ --prefix --consistency=s
tri_err 4 "Error: unknown consistency flag \"x\"" get p --consistency=x

it_case "get --rev and --count-only (cairnctl only: etcdctl 3.4 has no --count-only)"
tri_ok get p/b --rev=12 --print-value-only <<<"1"
tri get p/ --prefix --rev=14 -w json
duo get p/ --prefix --count-only
assert_rc 0
assert_out <<<"5"
duo get p/ --prefix --count-only -w json
assert_match '"count":5' "$(it_out)" "count in JSON"

it_case "del: one key, --prefix, --from-key, --prev-kv, json"
tri_ok del nothere <<<"0"
tri_ok del p/a --prev-kv <<'EOF'
1
p/a
3
EOF
tri del p/b p/d -w json
tri_ok del p/ --prefix <<<"2"
tri del p0 --from-key --prev-kv -w json
tri_err 128 "Error: del command needs one argument as key and an optional argument as range_end" del

# ---------------------------------------------------------------- txn

it_case "txn from stdin: success, failure, json, prompts, a malformed compare"
tri_ok put x 1 <<<"OK"
TRI_IN='value("x") = "1"\nmod("x") > "0"\n\nput y 2\nget x\ndel zz\n\nput n 0\n\n' tri_ok txn <<'EOF'
SUCCESS

OK

x
1

0
EOF
TRI_IN='value("x") = "2"\n\nput y 2\n\nget x\nget "" --prefix --keys-only\nput n "a b"\n\n' tri txn
assert_rc 0
TRI_IN='version("x") = "1"\ncreate("x") > "0"\nval("x") != "9"\n\nput y 3 --prev-kv\nget x\ndel n --prev-kv\n\n\n' tri txn -w json
assert_rc 0
TRI_IN='\n\nget n\n\n\n' tri txn -i
assert_rc 0
TRI_IN='bad\n\n\n\n' tri_err 3 "Error: malformed comparison: bad" txn
TRI_IN='value("x") = "1"\n\nput y 1\nput y 2\n\n\n' tri_err 1 "Error: etcdserver: duplicate key given in txn request" txn

# ---------------------------------------------------------------- watch

# The number of watchers server $1 has registered (its
# etcd_debugging_mvcc_watcher_total gauge, in etcd and in cairn).
watchers() { # i
  curl -s --max-time 2 "http://127.0.0.1:${CPORT[$1]}/metrics" |
    awk '$1 == "etcd_debugging_mvcc_watcher_total" { print $2 + 0 }'
}

# Waits until each of servers $2... has registered watchers (>= 1, "some")
# or none ("0").
wait_watchers() { # some|0 i...
  local want=$1 i
  shift
  for i in "$@"; do
    if [[ $want == some ]]; then
      it_wait_for 10 "[[ \$(watchers $i) -ge 1 ]]" || it_fail "${SRV_WHAT[i]}: the watch was not registered after 10 s"
    else
      it_wait_for 10 "[[ \$(watchers $i) == 0 ]]" ||
        it_fail "${SRV_WHAT[i]}: $(watchers "$i") watchers still registered 10 s after their clients exited"
    fi
  done
}

WATCH_PIDS=()
watch_start() { # args...: one watcher per server, output in $IT_TMP/watch.$i
  local i
  WATCH_PIDS=()
  wait_watchers 0 0 1 2 # the previous case's watchers are gone
  for i in 0 1 2; do
    if [[ $i -eq 0 ]]; then
      IT_BG_OUT="$IT_TMP/watch.$i" it_bg "$IT_ETCDCTL" --endpoints="127.0.0.1:${CPORT[0]}" watch "$@"
    else
      IT_BG_OUT="$IT_TMP/watch.$i" it_bg "$CTL_BIN" --endpoints="127.0.0.1:${CPORT[i]}" watch "$@"
    fi
    WATCH_PIDS+=("$IT_BG_PID")
  done
  wait_watchers some 0 1 2 # the watches are created before the writes
}

# Waits for $1 lines from every watcher, sends $WATCH_SIG (default INT),
# checks cairnctl exited 0 on it, and compares the outputs (after sed $2,
# if any).
watch_finish() { # lines [sed-expr]
  local i rc
  WATCH_SIG=${WATCH_SIG:-INT}
  for i in 0 1 2; do
    it_wait_for 15 "[[ \$(wc -l <'$IT_TMP/watch.$i') -ge $1 ]]" ||
      it_fail "watcher $i printed $(wc -l <"$IT_TMP/watch.$i") lines, not $1"
  done
  sleep 0.3
  for i in 0 1 2; do
    # etcdctl, started in the background by a script, ignores SIGINT (and
    # dies of SIGTERM); cairnctl must end cleanly on either.
    if [[ $i -eq 0 ]]; then kill -TERM "${WATCH_PIDS[i]}"; else kill "-$WATCH_SIG" "${WATCH_PIDS[i]}"; fi
    wait "${WATCH_PIDS[i]}"
    rc=$?
    if [[ $i -gt 0 && $rc -ne 0 ]]; then
      it_fail "cairnctl watch exited $rc on SIGINT: $(cat "$IT_TMP/watch.$i.err")"
    fi
    if grep -Eq 'runtime error: |Sanitizer' "$IT_TMP/watch.$i.err"; then
      it_fail "sanitizer report from watcher $i: $(head -5 "$IT_TMP/watch.$i.err")"
    fi
    norm "$i" "$IT_TMP/watch.$i"
    [[ -z "${2:-}" ]] || sed -i -E "$2" "$IT_TMP/watch.$i"
  done
  for i in 1 2; do
    cmp -s "$IT_TMP/watch.0" "$IT_TMP/watch.$i" || {
      diff "$IT_TMP/watch.0" "$IT_TMP/watch.$i" >&2
      it_fail "the watch output of ${SRV_WHAT[i]} differs from ${SRV_WHAT[0]}"
    }
  done
  cp "$IT_TMP/watch.0" "$IT_TMP/out"
}

it_case "watch --prefix --prev-kv: PUT, DELETE, a txn; SIGINT ends it cleanly"
watch_start w --prefix --prev-kv
tri_ok put w1 a <<<"OK"
tri_ok put w1 b <<<"OK"
tri_ok del w1 <<<"1"
TRI_IN='\nput w2 x\nput w3 y\n\n\n' tri txn
watch_finish 19
assert_out <<'EOF'
PUT
w1
a
PUT
w1
a
w1
b
DELETE
w1
b
w1

PUT
w2
x
PUT
w3
y
EOF

it_case "watch -w json (the server's header as etcdctl prints it)"
watch_start w1 -w json
tri_ok put w1 c <<<"OK"
tri_ok del w1 <<<"1"
watch_finish 2

it_case "watch --rev: history, then SIGTERM"
rev=$(tool 2 get w1 -w json | it_json_get 'd["header"]["revision"]')
watch_start w1 --rev=$((rev - 1))
WATCH_SIG=TERM watch_finish 6
assert_out <<'EOF'
PUT
w1
c
DELETE
w1

EOF

# ---------------------------------------------------------------- leases

it_case "lease grant, timetolive, list, keep-alive --once, revoke"
for i in 0 1 2; do
  tool "$i" lease grant 100 >"$IT_TMP/out" 2>&1 || it_fail "lease grant on server $i: $(cat "$IT_TMP/out")"
  assert_match '^lease [0-9a-f]{16} granted with TTL\(100s\)$' "$(it_out)" "lease grant ($i)"
  LEASE[i]=$(awk '{print $2}' "$IT_TMP/out")
done
tri_ok put lk v --lease=@L@ <<<"OK"
tri_ok get lk -w json <<'EOF'
{"header":{"cluster_id":<CID>,"member_id":<MID>,"revision":33,"raft_term":<TERM>},"kvs":[{"key":"bGs=","create_revision":33,"mod_revision":33,"version":1,"value":"dg==","lease":<LEASE>}],"count":1}
EOF
tri lease timetolive @L@ --keys
assert_match '^lease <LEASE> granted with TTL\(100s\), remaining\(<R>s\), attached keys\(\[lk\]\)$' "$(it_out)" "timetolive"
tri lease timetolive @L@ -w json
tri_ok lease list <<'EOF'
found 1 leases
<LEASE>
EOF
tri lease list -w json
tri_ok lease keep-alive --once @L@ <<<"lease <LEASE> keepalived with TTL(100)"
tri_ok put lk2 v --lease=@L@ --prev-kv <<<"OK"
tri_err 128 'Error: bad lease ID arg (strconv.ParseInt: parsing "zz": invalid syntax), expecting ID in Hex' lease timetolive zz
tri lease timetolive 1234
tri_ok lease revoke @L@ <<<"lease <LEASE> revoked"
tri_ok get lk --prefix </dev/null
tri_err 1 "Error: failed to revoke lease (etcdserver: requested lease not found)" lease revoke @L@
tri_err 2 "Error: etcdserver: requested lease not found" lease keep-alive --once @L@
tri_ok lease list <<<"found 0 leases"
tri lease list -w json
tri lease grant 100 -w json
assert_match '"TTL":100,"Error":""}$' "$(it_out)" "lease grant JSON"

it_case "lease keep-alive until the lease is revoked"
for i in 0 1 2; do
  LEASE[i]=$(tool "$i" lease grant 4 | awk '{print $2}')
done
for i in 0 1 2; do
  if [[ $i -eq 0 ]]; then
    IT_BG_OUT="$IT_TMP/ka.$i" it_bg "$IT_ETCDCTL" --endpoints="127.0.0.1:${CPORT[0]}" lease keep-alive "${LEASE[i]}"
  else
    IT_BG_OUT="$IT_TMP/ka.$i" it_bg "$CTL_BIN" --endpoints="127.0.0.1:${CPORT[i]}" lease keep-alive "${LEASE[i]}"
  fi
  KA_PIDS[i]=$IT_BG_PID
done
# Each keep-alive renewed its lease (its first line) before the revoke.
for i in 0 1 2; do
  it_wait_for 10 "[[ -s '$IT_TMP/ka.$i' ]]" || it_fail "keep-alive $i printed nothing"
done
tri_ok lease revoke @L@ <<<"lease <LEASE> revoked"
for i in 0 1 2; do
  it_wait_for 10 "! kill -0 ${KA_PIDS[i]} 2>/dev/null" || it_fail "keep-alive $i still runs after the revoke"
  wait "${KA_PIDS[i]}"
  rc=$?
  [[ $rc -eq 0 ]] || it_fail "keep-alive $i exited $rc"
  norm "$i" "$IT_TMP/ka.$i"
  assert_eq "lease <LEASE> expired or revoked." "$(tail -n 1 "$IT_TMP/ka.$i")" "end of keep-alive $i"
  assert_match '^lease <LEASE> keepalived with TTL\(4\)' "$(head -n 1 "$IT_TMP/ka.$i")" "first renewal $i"
done

# ---------------------------------------------------------------- members

it_case "member list: simple, json, table"
tri_ok member list <<'EOF'
<MID>, started, it, http://127.0.0.1:<PPORT>, http://127.0.0.1:<CPORT>, false
EOF
tri member list -w json
tri member list -w table
assert_rc 0

it_case "member add --learner, update, promote, remove"
# The new member's ID differs between servers, and so does the order of
# the members (by ID): each output is checked with the cluster list sorted.
for i in 0 1 2; do
  tool "$i" member add learner1 --peer-urls=http://127.0.0.1:36399 --learner >"$IT_TMP/out.$i" 2>"$IT_TMP/err.$i" ||
    it_fail "member add on server $i: $(cat "$IT_TMP/err.$i")"
  NEWM[i]=$(awk 'NR == 1 { print $2 }' "$IT_TMP/out.$i")
  assert_match '^[0-9a-f]+$' "${NEWM[i]}" "the new member's ID ($i)"
  norm "$i" "$IT_TMP/out.$i"
  while IFS= read -r line; do
    if [[ "$line" =~ ^ETCD_INITIAL_CLUSTER=\"(.*)\"$ ]]; then
      line="ETCD_INITIAL_CLUSTER=\"$(tr ',' '\n' <<<"${BASH_REMATCH[1]}" | sort | paste -sd,)\""
    fi
    printf '%s\n' "$line"
  done <"$IT_TMP/out.$i" >"$IT_TMP/out"
  assert_out <<'EOF'
Member <NEWM> added to cluster <CID>

ETCD_NAME="learner1"
ETCD_INITIAL_CLUSTER="it=http://127.0.0.1:<PPORT>,learner1=http://127.0.0.1:36399"
ETCD_INITIAL_ADVERTISE_PEER_URLS="http://127.0.0.1:36399"
ETCD_INITIAL_CLUSTER_STATE="existing"
EOF
done
TRI_SORT=1 tri_ok member list <<'EOF'
<MID>, started, it, http://127.0.0.1:<PPORT>, http://127.0.0.1:<CPORT>, false
<NEWM>, unstarted, , http://127.0.0.1:36399, , true
EOF
tri_ok member update @M@ --peer-urls=http://127.0.0.1:36398 <<<"Member <NEWM> updated in cluster <CID>"
for i in 1 2; do
  tool "$i" member update "${NEWM[i]}" --peer-urls=http://127.0.0.1:36398 -w json >"$IT_TMP/out" ||
    it_fail "member update -w json on server $i"
  norm "$i" "$IT_TMP/out"
  assert_match '^\{"header":\{"cluster_id":<CID>,"member_id":<MID>,"raft_term":<TERM>\},"members":\[.*\{"ID":<NEWM>,"peerURLs":\["http://127.0.0.1:36398"\](,"isLearner":true)?\}' \
    "$(it_out)" "member update JSON ($i)"
done
tri_err 1 "Error: etcdserver: can only promote a learner member which is in sync with leader" member promote @M@
tri_ok member remove @M@ <<<"Member <NEWM> removed from cluster <CID>"
tri_err 128 'Error: bad member ID arg (strconv.ParseUint: parsing "zz": invalid syntax), expecting ID in Hex' member remove zz
tri_err 1 "Error: etcdserver: member not found" member remove 1234

# ---------------------------------------------------------------- endpoints

it_case "endpoint status: simple, json, table, --cluster"
for i in 1 2; do
  tool "$i" endpoint status >"$IT_TMP/out" 2>"$IT_TMP/err" || it_fail "endpoint status on $i"
  norm "$i" "$IT_TMP/out"
  assert_match '^127\.0\.0\.1:<CPORT>, <MID>, 3\.[0-9.]+, [0-9.]+ [kMG]?B, true, false, [0-9]+, [0-9]+, [0-9]+, $' \
    "$(it_out)" "endpoint status ($i)"
  tool "$i" endpoint status -w table --cluster >"$IT_TMP/out" || it_fail "endpoint status -w table"
  norm "$i" "$IT_TMP/out"
  assert_match 'ENDPOINT +\| +ID +\| VERSION \| DB SIZE \| IS LEADER \| IS LEARNER \| RAFT TERM \| RAFT INDEX \| RAFT APPLIED INDEX \| ERRORS' \
    "$(sed -n 2p "$IT_TMP/out")" "status table header"
  assert_match '^\| http://127\.0\.0\.1:<CPORT> \| <MID> \|' "$(sed -n 4p "$IT_TMP/out")" "status table row"
  tool "$i" endpoint status -w json >"$IT_TMP/out" || it_fail "endpoint status -w json"
  norm "$i" "$IT_TMP/out"
  assert_match '^\[\{"Endpoint":"127.0.0.1:<CPORT>","Status":\{"header":\{"cluster_id":<CID>,"member_id":<MID>,"revision":[0-9]+,"raft_term":<TERM>\},"version":"3\.[0-9.]+","dbSize":[0-9]+,"leader":<MID>,"raftIndex":[0-9]+,"raftTerm":[0-9]+,"raftAppliedIndex":[0-9]+(,"dbSizeInUse":[0-9]+)?\}\}\]$' \
    "$(it_out)" "endpoint status JSON ($i)"
done

it_case "endpoint health: stderr like etcdctl, json, table, --cluster, an unhealthy endpoint"
for i in 1 2; do
  tool "$i" endpoint health >"$IT_TMP/out" 2>"$IT_TMP/err" || it_fail "endpoint health on $i"
  assert_out_empty
  norm "$i" "$IT_TMP/err"
  assert_match '^127\.0\.0\.1:<CPORT> is healthy: successfully committed proposal: took = [0-9.]+(ns|µs|ms|s)$' \
    "$(cat "$IT_TMP/err")" "endpoint health ($i)"
  tool "$i" endpoint health --cluster -w json >"$IT_TMP/out" || it_fail "endpoint health -w json"
  norm "$i" "$IT_TMP/out"
  assert_match '^\[\{"endpoint":"http://127.0.0.1:<CPORT>","health":true,"took":"[0-9.]+(ns|µs|ms|s)"\}\]$' \
    "$(it_out)" "health JSON ($i)"
  tool "$i" endpoint health -w table >"$IT_TMP/out" || it_fail "endpoint health -w table"
  assert_match '^\|    ENDPOINT     \| HEALTH \| +TOOK +\| ERROR \|$' "$(sed -n 2p "$IT_TMP/out")" "health table"
done
it_run "$CTL_BIN" --endpoints=127.0.0.1:36397 --dial-timeout=1s --command-timeout=1s endpoint health
assert_rc 1
assert_err_last "Error: unhealthy cluster"
assert_err_has '^127\.0\.0\.1:36397 is unhealthy: failed to commit proposal: '

# ---------------------------------------------------------------- maintenance

it_case "snapshot save"
for i in 0 1 2; do
  tool "$i" snapshot save "$IT_TMP/snap.$i.db" >"$IT_TMP/out.$i" 2>"$IT_TMP/err.$i" ||
    it_fail "snapshot save on $i: $(cat "$IT_TMP/err.$i")"
  [[ -s "$IT_TMP/snap.$i.db" ]] || it_fail "snapshot $i is empty"
  [[ ! -e "$IT_TMP/snap.$i.db.part" ]] || it_fail "snapshot $i left its .part file"
  sed -i "s/snap\\.$i\\.db/snap.db/" "$IT_TMP/out.$i"
  cmp -s "$IT_TMP/out.0" "$IT_TMP/out.$i" || it_fail "snapshot save output: $(cat "$IT_TMP/out.$i")"
done
it_run "$CTL_BIN" --endpoints=127.0.0.1:${CPORT[0]},127.0.0.1:${CPORT[2]} snapshot save "$IT_TMP/x.db"
assert_rc 128
assert_err_last "Error: snapshot must be requested to one selected node, not multiple [127.0.0.1:${CPORT[0]} 127.0.0.1:${CPORT[2]}]"

it_case "compaction, --physical, a compacted revision, defrag, move-leader"
tri_ok compaction 5 <<<"compacted revision 5"
tri_err 1 "Error: etcdserver: mvcc: required revision has been compacted" compaction 4
tri_ok compaction 6 --physical <<<"compacted revision 6"
tri_err 1 "Error: etcdserver: mvcc: required revision has been compacted" get foo --rev=3
tri_err 5 "Error: watch is canceled by the server" watch foo --rev=2
assert_out_empty
assert_eq "watch was canceled (etcdserver: mvcc: required revision has been compacted)" \
  "$(grep -v '^{"level"' "$IT_TMP/err.2" | head -n 1)" "cairnctl's notice of the cancelled watch"
tri_ok defrag <<<"Finished defragmenting etcd member[127.0.0.1:<CPORT>]"
tri_ok defrag --cluster <<<"Finished defragmenting etcd member[http://127.0.0.1:<CPORT>]"
tri_err 1 "Error: etcdserver: bad leader transferee" move-leader 1234
for i in 0 1 2; do NEWM[i]=$(hexid "${MID[i]}"); done
tri_ok move-leader @M@ <<<"Leadership transferred from <MID> to <MID>"

# ---------------------------------------------------------------- the command line itself

it_case "version, help, unknown commands and flags"
it_run "$CTL_BIN" version
assert_rc 0
assert_match '^cairnctl version: [0-9]+\.[0-9]+\.[0-9]+
API version: 3\.4$' "$(it_out)" "version"
it_run "$CTL_BIN" --help
assert_rc 0
assert_match 'member add' "$(it_out)" "help lists the commands"
it_run "$CTL_BIN" nosuch
assert_rc 1
assert_err_has '^Error: unknown command "nosuch" for "cairnctl"$'
it_run "$CTL_BIN" get foo --nosuch
assert_rc 128
assert_err_last "Error: unknown flag: --nosuch"

it_case "environment: CAIRNCTL_ENDPOINTS, CAIRNCTL_WRITE_OUT; flags win over it"
it_run env CAIRNCTL_ENDPOINTS=127.0.0.1:${CPORT[2]} CAIRNCTL_WRITE_OUT=json "$CTL_BIN" get x
assert_rc 0
assert_match '"kvs":\[\{"key":"eA==",' "$(it_out)" "get through the environment"
it_run env CAIRNCTL_ENDPOINTS=127.0.0.1:36397 "$CTL_BIN" --endpoints=127.0.0.1:${CPORT[2]} -w simple get x --print-value-only
assert_rc 0
assert_eq "1" "$(it_out)" "flags over the environment"

it_case "failover: a dead endpoint first in the list"
it_run "$CTL_BIN" --endpoints=127.0.0.1:36397,127.0.0.1:${CPORT[2]} --dial-timeout=1s get x --print-value-only
assert_rc 0
assert_eq "1" "$(it_out)" "value through the second endpoint"

it_case "watch goes on across a restart of cairn (libcairn resumes it)"
wait_watchers 0 2
IT_BG_OUT="$IT_TMP/resume" it_bg "$CTL_BIN" --endpoints=127.0.0.1:${CPORT[2]} watch r --prev-kv
RESUME_PID=$IT_BG_PID
wait_watchers some 2
tri_ok put r 1 <<<"OK"
it_wait_for 10 "[[ \$(wc -l <'$IT_TMP/resume') -ge 3 ]]" || it_fail "no event before the restart"
it_stop_pid "${SRV_PID[2]}" 10 || it_fail "cairn needed SIGKILL"
srv_start 2
srv_ready 2
tri_ok put r 2 <<<"OK"
it_wait_for 20 "[[ \$(wc -l <'$IT_TMP/resume') -ge 8 ]]" || it_fail "no event after the restart: $(cat "$IT_TMP/resume")"
kill -INT "$RESUME_PID"
wait "$RESUME_PID" || it_fail "cairnctl watch exited $? on SIGINT after a reconnect"
cp "$IT_TMP/resume" "$IT_TMP/out"
assert_out <<'EOF'
PUT
r
1
PUT
r
1
r
2
EOF

it_case "no server: an error, exit code 1"
it_run "$CTL_BIN" --endpoints=127.0.0.1:36397 --dial-timeout=1s --command-timeout=1s get x
assert_rc 1
assert_err_has '^Error: '

# ---------------------------------------------------------------- TLS

it_case "TLS: cairnctl against cairn and etcd with client certificates"
# (The certificates were made and the two TLS servers started with the
# others, at the beginning.)
for port in "$TLS_CP_CAIRN" "$TLS_CP_ETCD"; do
  tls=(--cacert="$pki/ca.crt" --cert="$pki/client.crt" --key="$pki/client.key")
  it_wait_for 30 "'$IT_ETCDCTL' --endpoints=https://127.0.0.1:$port ${tls[*]} --dial-timeout=1s --command-timeout=1s endpoint health >/dev/null 2>&1" ||
    it_fail "the TLS server on $port was not ready"
  it_run "$CTL_BIN" --endpoints=127.0.0.1:$port "${tls[@]}" put tlskey tlsvalue
  assert_rc 0
  assert_out <<<"OK"
  it_run "$CTL_BIN" --endpoints=https://127.0.0.1:$port "${tls[@]}" get tlskey --print-value-only
  assert_rc 0
  assert_eq "tlsvalue" "$(it_out)" "value over TLS ($port)"
  it_run env CAIRNCTL_CACERT="$pki/ca.crt" CAIRNCTL_CERT="$pki/client.crt" CAIRNCTL_KEY="$pki/client.key" \
    "$CTL_BIN" --endpoints=127.0.0.1:$port endpoint health -w json
  assert_rc 0
  assert_match '"health":true' "$(it_out)" "health over TLS ($port)"
  it_run "$CTL_BIN" --endpoints=https://127.0.0.1:$port --cacert="$pki/ca.crt" \
    --dial-timeout=1s --command-timeout=1s get tlskey
  [[ $IT_RC -ne 0 ]] || it_fail "a client without a certificate got an answer ($port)"
  it_run "$CTL_BIN" --endpoints=https://127.0.0.1:$port --insecure-skip-tls-verify \
    --cert="$pki/client.crt" --key="$pki/client.key" get tlskey --print-value-only
  assert_rc 0
  assert_eq "tlsvalue" "$(it_out)" "--insecure-skip-tls-verify ($port)"
done

it_case "the servers are still up and the logs clean"
for i in 0 1 2; do
  kill -0 "${SRV_PID[i]}" 2>/dev/null || it_fail "server $i is not running any more"
done
IT_LOG="$IT_TMP/server2.log"
it_check_log

it_done
