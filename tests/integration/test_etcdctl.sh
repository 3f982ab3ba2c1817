#!/usr/bin/env bash
# tests/integration/test_etcdctl.sh: etcdctl 3.4's view of a single-member
# server. Every command and flag people use, with stdout, the last line of
# stderr and the exit code compared exactly where etcd is deterministic.
# Revisions are not read back from the server: the test counts them ($rev)
# from the writes it makes, so a write that bumps the revision when etcd
# would not (or the other way round) fails the next comparison.
#
#   bash tests/integration/test_etcdctl.sh <build-dir>
#   CAIRN_TEST_SERVER=etcd bash tests/integration/test_etcdctl.sh <build-dir>
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh" "$@"

# ---------------------------------------------------------------- helpers

# The response header etcdctl -w json prints, after it_json_norm.
hdr() { printf '{"cluster_id":"<CID>","member_id":"<MID>","revision":%d,"raft_term":"<TERM>"}' "$1"; }
# The same header inlined, as in lease and status JSON.
hdr_inline() { printf '"cluster_id":"<CID>","member_id":"<MID>","revision":%d,"raft_term":"<TERM>"' "$1"; }

# kvj KEY CREATE MOD VERSION [VALUE] [LEASE-decimal]: a KeyValue as etcdctl
# prints it in JSON (empty value and zero lease omitted, as proto3 JSON does).
kvj() {
  local s
  s=$(printf '{"key":"%s","create_revision":%d,"mod_revision":%d,"version":%d' \
    "$(b64 "$1")" "$2" "$3" "$4")
  if [[ -n "${5:-}" ]]; then s+=",\"value\":\"$(b64 "$5")\""; fi
  if [[ -n "${6:-}" && "${6:-}" != 0 ]]; then s+=",\"lease\":$6"; fi
  printf '%s}' "$s"
}

# The server's revision must be $rev.
assert_rev() {
  local got
  got=$(it_revision) || it_fail "cannot read the revision"
  assert_eq "$rev" "$got" "store revision"
}

# Starts `etcdctl watch ARGS` in the background, output to $IT_TMP/watch.
watch_start() {
  rm -f "$IT_TMP/watch" "$IT_TMP/watch.err"
  IT_BG_OUT="$IT_TMP/watch"
  it_bg ctl watch "$@"
  IT_BG_OUT=""
  WATCH_PID=$IT_BG_PID
  WATCH_ARGS="$*"
}

# Waits until the watch printed $1 lines (or exited), gives it 0.3 s more to
# print anything unexpected, stops it, and moves its output to out/err so the
# usual assertions apply. IT_RC is its exit code, or "running" if it was
# still watching (and had to be stopped).
watch_finish() {
  local lines=$1 timeout=${2:-15}
  it_wait_for "$timeout" \
    "[[ \$(wc -l <'$IT_TMP/watch') -ge $lines ]] || ! kill -0 $WATCH_PID 2>/dev/null"
  sleep 0.3
  if kill -0 "$WATCH_PID" 2>/dev/null; then
    it_signal TERM "$WATCH_PID"
    wait "$WATCH_PID" 2>/dev/null
    IT_RC=running
  else
    wait "$WATCH_PID"
    IT_RC=$?
  fi
  cp "$IT_TMP/watch" "$IT_TMP/out"
  cp "$IT_TMP/watch.err" "$IT_TMP/err"
  IT_LAST_CMD="etcdctl watch $WATCH_ARGS"
}

# Lease IDs print as 16 hex digits; JSON has them in decimal.
lease_dec() { printf '%d' "0x$1"; }

# Grants a lease; sets LEASE (hex as printed) and LEASE_DEC.
grant() { # ttl expected-granted-ttl
  it_run ctl lease grant "$1"
  assert_rc 0
  local line
  line=$(it_out)
  assert_match "^lease [0-9a-f]{16} granted with TTL\\(${2}s\\)$" "$line" "lease grant output"
  LEASE=$(awk '{print $2}' <<<"$line")
  LEASE_DEC=$(lease_dec "$LEASE")
  if ((LEASE_DEC <= 0)); then it_fail "lease ID $LEASE is not positive"; fi
}

# ---------------------------------------------------------------- the server

it_case "start a fresh single-member server"
it_server_up
rev=1

it_case "empty store: get prints nothing, header revision 1"
ctl_ok get foo </dev/null
ctl_ok get "" --prefix </dev/null
it_run ctl get foo -w json
assert_rc 0
assert_json "{\"header\":$(hdr 1)}"

# ---------------------------------------------------------------- put / get

it_case "put then get (simple, json, fields)"
ctl_ok put foo bar <<<"OK"
rev=2
ctl_ok get foo <<'EOF'
foo
bar
EOF
it_run ctl get foo -w json
assert_rc 0
assert_json "{\"header\":$(hdr 2),\"kvs\":[$(kvj foo 2 2 1 bar)],\"count\":1}"
it_run ctl get foo -w fields
assert_rc 0
it_norm_fields
assert_out <<'EOF'
"ClusterID" : <CID>
"MemberID" : <MID>
"Revision" : 2
"RaftTerm" : <TERM>
"Key" : "foo"
"CreateRevision" : 2
"ModRevision" : 2
"Version" : 1
"Value" : "bar"
"Lease" : 0
"More" : false
"Count" : 1
EOF

it_case "put the same value again: version and revision still move; --prev-kv"
ctl_ok put foo bar --prev-kv <<'EOF'
OK
foo
bar
EOF
rev=3
it_run ctl put foo baz --prev-kv -w json
assert_rc 0
rev=4
assert_json "{\"header\":$(hdr 4),\"prev_kv\":$(kvj foo 2 3 2 bar)}"
it_run ctl put newkey v -w json
assert_rc 0
rev=5
assert_json "{\"header\":$(hdr 5)}"
ctl_ok put newkey v2 --prev-kv <<'EOF'
OK
newkey
v
EOF
rev=6
it_run ctl get foo -w json
assert_json "{\"header\":$(hdr 6),\"kvs\":[$(kvj foo 2 4 3 baz)],\"count\":1}"

it_case "put errors: empty key, unknown lease, --ignore-value on a missing key"
ctl_err 1 "Error: etcdserver: key is not provided" put "" v
ctl_err 1 "Error: etcdserver: requested lease not found" put k/x v --lease=1234
ctl_err 1 "Error: etcdserver: key not found" put k/missing --ignore-value
ctl_err 1 "Error: etcdserver: key is not provided" get ""
assert_rev

it_case "values: spaces, UTF-8, a leading dash, stdin with newlines, --hex"
ctl_ok put k/space "a b  c" <<<"OK"
ctl_ok put k/utf8 "héllo ✓" <<<"OK"
ctl_ok put -- k/dash -v <<<"OK"
it_run_in 'line1\nline2\n' ctl put k/stdin
assert_rc 0
assert_out <<<"OK"
rev=$((rev + 4))
ctl_ok get k/ --prefix <<'EOF'
k/dash
-v
k/space
a b  c
k/stdin
line1
line2

k/utf8
héllo ✓
EOF
ctl_ok get k/dash --hex <<'EOF'
\x6b\x2f\x64\x61\x73\x68
\x2d\x76
EOF
assert_rev

# ---------------------------------------------------------------- ranges

it_case "a prefix data set: keys p/a..p/e, with p and p0 around it"
# values chosen so that sorting by value, version, create or mod revision
# gives different orders than by key.
for kv in p/a=3 p/b=1 p/c=5 p/d=2 p/e=4 p/b=6 p/d=7 p/d=8 p=root p0=after; do
  ctl_ok put "${kv%%=*}" "${kv#*=}" <<<"OK"
done
# p/a 11, p/b 12 (v1) 16 (v2), p/c 13, p/d 14 (v1) 17 (v2) 18 (v3), p/e 15, p 19, p0 20
rev=20
assert_rev

it_case "get --prefix, --keys-only, --print-value-only"
ctl_ok get p/ --prefix <<'EOF'
p/a
3
p/b
6
p/c
5
p/d
8
p/e
4
EOF
ctl_ok get p/ --prefix --keys-only <<'EOF'
p/a

p/b

p/c

p/d

p/e

EOF
ctl_ok get p/ --prefix --print-value-only <<'EOF'
3
6
5
8
4
EOF
ctl_ok get p --prefix --keys-only --print-value-only <<'EOF'







EOF

it_case "get with a range end, --from-key"
ctl_ok get p/b p/d <<'EOF'
p/b
6
p/c
5
EOF
ctl_ok get p/c --from-key <<'EOF'
p/c
5
p/d
8
p/e
4
p0
after
EOF
ctl_ok get "" --from-key --keys-only <<'EOF'
foo

k/dash

k/space

k/stdin

k/utf8

newkey

p

p/a

p/b

p/c

p/d

p/e

p0

EOF
ctl_ok get p/z p/a </dev/null

it_case "get --limit: more and count in JSON"
ctl_ok get p/ --prefix --limit 2 <<'EOF'
p/a
3
p/b
6
EOF
it_run ctl get p/ --prefix --limit 2 -w json
assert_rc 0
assert_json "{\"header\":$(hdr 20),\"kvs\":[$(kvj p/a 11 11 1 3),$(kvj p/b 12 16 2 6)],\"more\":true,\"count\":5}"
it_run ctl get p/ --prefix --limit 5 -w json --keys-only
assert_rc 0
assert_json "{\"header\":$(hdr 20),\"kvs\":[$(kvj p/a 11 11 1),$(kvj p/b 12 16 2),$(kvj p/c 13 13 1),$(kvj p/d 14 18 3),$(kvj p/e 15 15 1)],\"count\":5}"
it_run ctl get p/ --prefix --limit 1 -w fields
assert_rc 0
it_norm_fields
assert_out <<'EOF'
"ClusterID" : <CID>
"MemberID" : <MID>
"Revision" : 20
"RaftTerm" : <TERM>
"Key" : "p/a"
"CreateRevision" : 11
"ModRevision" : 11
"Version" : 1
"Value" : "3"
"Lease" : 0
"More" : true
"Count" : 5
EOF

it_case "get --sort-by / --order"
ctl_ok get p/ --prefix --sort-by=KEY --order=DESCEND --keys-only <<'EOF'
p/e

p/d

p/c

p/b

p/a

EOF
ctl_ok get p/ --prefix --order=DESCEND --print-value-only <<'EOF'
4
8
5
6
3
EOF
ctl_ok get p/ --prefix --sort-by=VALUE --print-value-only <<'EOF'
3
4
5
6
8
EOF
ctl_ok get p/ --prefix --sort-by=VALUE --order=DESCEND --limit=2 <<'EOF'
p/d
8
p/b
6
EOF
ctl_ok get p/ --prefix --sort-by=VERSION --order=DESCEND --limit=2 --keys-only <<'EOF'
p/d

p/b

EOF
ctl_ok get p/ --prefix --sort-by=MODIFY --order=DESCEND --keys-only <<'EOF'
p/d

p/b

p/e

p/c

p/a

EOF
ctl_ok get p/ --prefix --sort-by=CREATE --order=ASCEND --keys-only <<'EOF'
p/a

p/b

p/c

p/d

p/e

EOF
it_run ctl get p/ --prefix --sort-by=MODIFY --order=DESCEND --limit=2 -w json
assert_rc 0
assert_json "{\"header\":$(hdr 20),\"kvs\":[$(kvj p/d 14 18 3 8),$(kvj p/b 12 16 2 6)],\"more\":true,\"count\":5}"

it_case "get --consistency=s"
ctl_ok get p/ --prefix --consistency=s --print-value-only <<'EOF'
3
6
5
8
4
EOF

it_case "get --rev: history, revision 1, future revisions"
ctl_ok get p/ --prefix --rev=15 <<'EOF'
p/a
3
p/b
1
p/c
5
p/d
2
p/e
4
EOF
ctl_ok get p/d --rev=13 </dev/null
it_run ctl get p/d --rev=17 -w json
assert_rc 0
assert_json "{\"header\":$(hdr 20),\"kvs\":[$(kvj p/d 14 17 2 7)],\"count\":1}"
ctl_ok get foo --rev=1 </dev/null
ctl_ok get p/d --rev=20 --print-value-only <<<"8"
ctl_err 1 "Error: etcdserver: mvcc: required revision is a future revision" get foo --rev=21
ctl_err 1 "Error: etcdserver: mvcc: required revision is a future revision" get foo --rev=100000

# ---------------------------------------------------------------- delete

it_case "del: a missing key deletes 0 and does not bump the revision"
ctl_ok del nothing-here <<<"0"
ctl_ok del p/zz --prefix <<<"0"
assert_rev

it_case "del one key, del --prefix --prev-kv (one revision), -w json"
ctl_ok del foo <<<"1"
rev=21
ctl_ok del p/ --prefix --prev-kv <<'EOF'
5
p/a
3
p/b
6
p/c
5
p/d
8
p/e
4
EOF
rev=22
ctl_ok get p/ --prefix </dev/null
ctl_ok get p --prefix --keys-only <<'EOF'
p

p0

EOF
it_run ctl del p0 --prev-kv -w json
assert_rc 0
rev=23
assert_json "{\"header\":$(hdr 23),\"deleted\":1,\"prev_kvs\":[$(kvj p0 20 20 1 after)]}"
it_run ctl del p -w json
assert_rc 0
rev=24
assert_json "{\"header\":$(hdr 24),\"deleted\":1}"
assert_rev

it_case "del with a range end and --from-key"
for k in r/1 r/2 r/3 r/4; do ctl_ok put "$k" "v$k" <<<"OK"; done
rev=28
ctl_ok del r/1 r/3 <<<"2"
rev=29
ctl_ok get r/ --prefix --keys-only <<'EOF'
r/3

r/4

EOF
ctl_ok del r/4 --from-key <<<"1"
rev=30
ctl_ok get r/3 --from-key --print-value-only <<<"vr/3"
ctl_ok del r/3 <<<"1"
rev=31
assert_rev

it_case "a deleted then re-created key starts again at version 1"
ctl_ok put foo again <<<"OK"
rev=32
it_run ctl get foo -w json
assert_json "{\"header\":$(hdr 32),\"kvs\":[$(kvj foo 32 32 1 again)],\"count\":1}"

# ---------------------------------------------------------------- watch (history)

it_case "watch --rev: a key's history (puts and the delete)"
watch_start foo --rev=2
watch_finish 15
assert_eq running "$IT_RC" "watch still running"
assert_out <<'EOF'
PUT
foo
bar
PUT
foo
bar
PUT
foo
baz
DELETE
foo

PUT
foo
again
EOF

it_case "watch --prefix --rev --prev-kv over puts and a range delete"
watch_start p/d --prefix --rev=14 --prev-kv
# put p/d 2 (no prev), put 7 (prev 2), put 8 (prev 7), delete (prev 8)
watch_finish 18
assert_eq running "$IT_RC" "watch still running"
assert_out <<'EOF'
PUT
p/d
2
PUT
p/d
2
p/d
7
PUT
p/d
7
p/d
8
DELETE
p/d
8
p/d

EOF

it_case "watch KEY RANGE_END --rev"
watch_start r/2 r/4 --rev=25
# r/2 and r/3 created at 26 and 27, r/2 deleted at 29, r/3 deleted at 31
watch_finish 12
assert_eq running "$IT_RC" "watch still running"
assert_out <<'EOF'
PUT
r/2
vr/2
PUT
r/3
vr/3
DELETE
r/2

DELETE
r/3

EOF

# ---------------------------------------------------------------- watch (live)

it_case "watch --prefix from the next revision sees live writes in order"
watch_start w/ --prefix --rev=$((rev + 1))
ctl_ok put w/a 1 <<<"OK"
ctl_ok put w/b 2 <<<"OK"
ctl_ok put other x <<<"OK"
ctl_ok put w/a 3 <<<"OK"
ctl_ok del w/ --prefix <<<"2"
rev=$((rev + 5))
watch_finish 15
assert_eq running "$IT_RC" "watch still running"
assert_out <<'EOF'
PUT
w/a
1
PUT
w/b
2
PUT
w/a
3
DELETE
w/a

DELETE
w/b

EOF

it_case "watch: a txn's events come in op order; -w json carries the header"
watch_start t/ --prefix --rev=$((rev + 1)) -w json
it_run_in '\nput t/b 1\nput t/a 2\n\n\n' ctl txn
assert_rc 0
rev=$((rev + 1))
watch_finish 1
assert_eq running "$IT_RC" "watch still running"
assert_json "{\"Header\":$(hdr $rev),\"Events\":[{\"kv\":$(kvj t/b $rev $rev 1 1)},{\"kv\":$(kvj t/a $rev $rev 1 2)}],\"CompactRevision\":0,\"Canceled\":false,\"Created\":false}"
ctl_ok del t/ --prefix <<<"2"
rev=$((rev + 1))

# ---------------------------------------------------------------- txn

it_case "txn: compares true -> success ops"
ctl_ok put t1 a <<<"OK"
rev=$((rev + 1))
t1_create=$rev
it_run_in 'value("t1") = "a"\n\nput t2 yes\nget t1\n\nput t2 no\n\n' ctl txn
assert_rc 0
rev=$((rev + 1))
assert_out <<'EOF'
SUCCESS

OK

t1
a
EOF

it_case "txn: compares false -> failure ops (put and del share a revision)"
it_run_in 'value("t1") = "b"\n\nput t2 yes\n\nput t2 no\ndel t1\n\n' ctl txn
assert_rc 0
rev=$((rev + 1))
assert_out <<'EOF'
FAILURE

OK

1
EOF
ctl_ok get t1 </dev/null
it_run ctl get t2 -w json
assert_json "{\"header\":$(hdr $rev),\"kvs\":[$(kvj t2 $((rev - 1)) $rev 2 no)],\"count\":1}"

it_case "txn: version / mod / create compares with > < !="
it_run_in "version(\"t2\") > \"1\"\nmod(\"t2\") < \"$((rev + 1))\"\ncreate(\"t2\") != \"0\"\n\nget t2\n\n\n" ctl txn
assert_rc 0
assert_out <<'EOF'
SUCCESS

t2
no
EOF
it_run_in "mod(\"t2\") = \"$((rev - 1))\"\n\n\nget t2\n\n" ctl txn
assert_rc 0
assert_out <<'EOF'
FAILURE

t2
no
EOF
it_run_in 'create("t1") = "0"\nversion("t1") = "0"\n\nput t1 created\n\n\n' ctl txn
assert_rc 0
rev=$((rev + 1))
assert_out <<'EOF'
SUCCESS

OK
EOF

it_case "txn: a value compare on a missing key fails, even against \"\""
it_run_in 'value("t-missing") = ""\n\nput y 1\n\nput y 2\n\n' ctl txn
assert_rc 0
rev=$((rev + 1))
assert_out <<'EOF'
FAILURE

OK
EOF
ctl_ok get y --print-value-only <<<"2"

it_case "txn -w json: nested responses carry a header with the revision only"
it_run_in '\nput x 1\nget x\n\n\n' ctl txn -w json
assert_rc 0
rev=$((rev + 1))
assert_json "{\"header\":$(hdr $rev),\"succeeded\":true,\"responses\":[{\"Response\":{\"ResponsePut\":{\"header\":{\"revision\":$rev}}}},{\"Response\":{\"ResponseRange\":{\"header\":{\"revision\":$rev},\"kvs\":[$(kvj x $rev $rev 1 1)],\"count\":1}}}]}"
it_run_in 'value("x") = "nope"\n\n\ndel x --prev-kv\n\n' ctl txn -w json
assert_rc 0
rev=$((rev + 1))
assert_json "{\"header\":$(hdr $rev),\"responses\":[{\"Response\":{\"ResponseDeleteRange\":{\"header\":{\"revision\":$rev},\"deleted\":1,\"prev_kvs\":[$(kvj x $((rev - 1)) $((rev - 1)) 1 1)]}}}]}"

it_case "txn: ranges and prefix deletes inside a txn"
it_run_in '\nput q/a 1\nput q/b 2\nget q/ --prefix\n\n\n' ctl txn
assert_rc 0
rev=$((rev + 1))
assert_out <<'EOF'
SUCCESS

OK

OK

q/a
1
q/b
2
EOF
it_run_in '\ndel q/ --prefix\nget q/ --prefix\n\n\n' ctl txn
assert_rc 0
rev=$((rev + 1))
assert_out <<'EOF'
SUCCESS

2

EOF

it_case "txn without writes does not bump the revision"
it_run_in '\n\n\n' ctl txn
assert_rc 0
assert_out <<<"SUCCESS"
it_run_in '\n\n\n' ctl txn -w json
assert_rc 0
assert_json "{\"header\":$(hdr $rev),\"succeeded\":true}"
it_run_in 'value("t2") = "no"\n\nget t2 --keys-only\n\n\n' ctl txn
assert_rc 0
assert_out <<'EOF'
SUCCESS

t2

EOF
it_run_in '\ndel no-such-key\n\n\n' ctl txn
assert_rc 0
assert_out <<'EOF'
SUCCESS

0
EOF
assert_rev

it_case "txn errors: duplicate key, malformed compare"
it_run_in '\nput x 1\nput x 2\n\n\n' ctl txn
assert_rc 1
assert_out_empty
assert_err_last "Error: etcdserver: duplicate key given in txn request"
it_run_in '\nput x 1\ndel x\n\n\n' ctl txn
assert_rc 1
assert_err_last "Error: etcdserver: duplicate key given in txn request"
it_run_in 'bogus\n\n\n' ctl txn
assert_rc 3
assert_err_last "Error: malformed comparison: bogus"
assert_rev

# ---------------------------------------------------------------- leases

it_case "lease grant: TTL raised to the minimum, too large a TTL refused"
grant 1 2
ctl_ok lease revoke "$LEASE" <<<"lease $LEASE revoked"
grant 0 2
ctl_ok lease revoke "$LEASE" <<<"lease $LEASE revoked"
grant 9000000000 9000000000
ctl_ok lease revoke "$LEASE" <<<"lease $LEASE revoked"
ctl_err 1 "Error: failed to grant lease (etcdserver: too large lease TTL)" lease grant 9000000001
it_run ctl lease grant 30 -w json
assert_rc 0
json_lease=$(it_json_get 'd["ID"]' <"$IT_TMP/out")
assert_json "{$(hdr_inline $rev),\"ID\":$json_lease,\"TTL\":30,\"Error\":\"\"}"
ctl_ok lease revoke "$(printf '%x' "$json_lease")" <<<"lease $(printf '%016x' "$json_lease") revoked"
assert_rev

it_case "put --lease; --ignore-value drops the lease; --ignore-lease keeps it"
grant 600 600
L=$LEASE
ctl_ok put l/a 1 --lease="$L" <<<"OK"
rev=$((rev + 1))
la_create=$rev
it_run ctl get l/a -w json
assert_json "{\"header\":$(hdr $rev),\"kvs\":[$(kvj l/a $rev $rev 1 1 "$LEASE_DEC")],\"count\":1}"
# etcd: --ignore-value without --ignore-lease puts lease 0 (the key leaves its lease).
ctl_ok put l/a --ignore-value <<<"OK"
rev=$((rev + 1))
it_run ctl get l/a -w json
assert_json "{\"header\":$(hdr $rev),\"kvs\":[$(kvj l/a "$la_create" $rev 2 1)],\"count\":1}"
ctl_ok put l/a 2 --lease="$L" <<<"OK"
ctl_ok put l/a 3 --ignore-lease <<<"OK"
ctl_ok put l/b 1 --lease="$L" <<<"OK"
rev=$((rev + 3))
it_run ctl get l/a -w json
assert_json "{\"header\":$(hdr $rev),\"kvs\":[$(kvj l/a "$la_create" $((rev - 1)) 4 3 "$LEASE_DEC")],\"count\":1}"
ctl_err 128 "Error: put command needs only 1 argument when 'ignore-value' is set" put l/a 4 --ignore-value
it_run ctl put l/a --ignore-value --ignore-lease
assert_rc 0
rev=$((rev + 1))
ctl_ok get l/a --print-value-only <<<"3"

it_case "lease timetolive (--keys, json), list, keep-alive --once"
it_run ctl lease timetolive "$L"
assert_rc 0
assert_match "^lease $L granted with TTL\\(600s\\), remaining\\((59[0-9]|600)s\\)$" "$(it_out)" "timetolive"
it_run ctl lease timetolive "$L" --keys
assert_rc 0
line=$(it_out)
assert_match "^lease $L granted with TTL\\(600s\\), remaining\\((59[0-9]|600)s\\), attached keys\\(\\[(.*)\\]\\)$" "$line" "timetolive --keys"
keys=$(sed -E 's/.*attached keys\(\[(.*)\]\)$/\1/' <<<"$line" | tr ' ' '\n' | sort | tr '\n' ' ')
assert_eq "l/a l/b " "$keys" "attached keys (sorted; etcd's order is random)"
it_run ctl lease timetolive "$L" --keys -w json
assert_rc 0
got=$(it_json_norm <"$IT_TMP/out" | it_json_get \
  '[d["id"], d["granted-ttl"], 590 <= d["ttl"] <= 600, sorted(d["keys"]), d["revision"], d["member_id"]]')
assert_eq "[$LEASE_DEC, 600, True, ['$(b64 l/a)', '$(b64 l/b)'], $rev, '<MID>']" "$got" "timetolive -w json"
grant 300 300
L2=$LEASE
it_run ctl lease list
assert_rc 0
assert_eq "found 2 leases" "$(head -n 1 "$IT_TMP/out")" "lease list header"
got=$(tail -n +2 "$IT_TMP/out" | sort | tr '\n' ' ')
want=$(printf '%s\n' "$L" "$L2" | sort | tr '\n' ' ')
assert_eq "$want" "$got" "lease list IDs (sorted)"
it_run ctl lease list -w json
assert_rc 0
got=$(it_json_norm <"$IT_TMP/out" | it_json_get 'sorted(x["id"] for x in d["leases"])')
want=$(printf '%s\n' "$LEASE_DEC" "$(lease_dec "$L")" | sort -n | paste -sd, | sed 's/,/, /g')
assert_eq "[$want]" "$got" "lease list -w json IDs"
ctl_ok lease keep-alive --once "$L" <<<"lease $L keepalived with TTL(600)"
it_run ctl lease keep-alive --once "$L" -w json
assert_rc 0
assert_json "{$(hdr_inline $rev),\"ID\":$(lease_dec "$L"),\"TTL\":600}"

it_case "lease revoke deletes the attached keys in one revision"
watch_start l/ --prefix --rev=$((rev + 1))
ctl_ok lease revoke "$L" <<<"lease $L revoked"
rev=$((rev + 1))
watch_finish 6
assert_eq running "$IT_RC" "watch still running"
assert_out <<'EOF'
DELETE
l/a

DELETE
l/b

EOF
ctl_ok get l/ --prefix </dev/null
assert_rev
it_run ctl lease revoke "$L2" -w json
assert_rc 0
assert_json "{\"header\":$(hdr $rev)}"
assert_rev

it_case "unknown leases: revoke, timetolive, keep-alive"
ctl_err 1 "Error: failed to revoke lease (etcdserver: requested lease not found)" lease revoke "$L"
ctl_ok lease timetolive "$L" <<<"lease $L already expired"
ctl_ok lease timetolive 1234 <<<"lease 0000000000001234 already expired"
it_run ctl lease timetolive 1234 -w json
assert_rc 0
assert_json "{$(hdr_inline $rev),\"id\":4660,\"ttl\":-1,\"granted-ttl\":0,\"keys\":null}"
ctl_err 2 "Error: etcdserver: requested lease not found" lease keep-alive --once "$L"

it_case "lease expiry deletes keys; lease keep-alive keeps another lease alive"
grant 2 2
exp_lease=$LEASE
ctl_ok put e/expiring x --lease="$exp_lease" <<<"OK"
grant 2 2
ka_lease=$LEASE
ctl_ok put e/kept y --lease="$ka_lease" <<<"OK"
rev=$((rev + 2))
IT_BG_OUT="$IT_TMP/keepalive"
it_bg ctl lease keep-alive "$ka_lease"
IT_BG_OUT=""
ka_pid=$IT_BG_PID
it_wait_for 10 "[[ -z \"\$(ctl get e/expiring)\" ]]" || it_fail "e/expiring still there 10 s after its 2 s lease"
rev=$((rev + 1))
ctl_ok lease timetolive "$exp_lease" <<<"lease $exp_lease already expired"
sleep 1.5
ctl_ok get e/kept --print-value-only <<<"y"
it_signal TERM "$ka_pid"
wait "$ka_pid" 2>/dev/null
n=$(grep -c . "$IT_TMP/keepalive")
if ((n < 3)); then it_fail "keep-alive printed $n lines in ~3.5 s, expected at least 3 (every TTL/3)"; fi
if grep -Ev "^lease $ka_lease keepalived with TTL\\(2\\)$" "$IT_TMP/keepalive"; then
  it_fail "unexpected keep-alive output (above)"
fi
it_wait_for 10 "[[ -z \"\$(ctl get e/kept)\" ]]" || it_fail "e/kept still there 10 s after its keep-alive stopped"
rev=$((rev + 1))
assert_rev

# ---------------------------------------------------------------- lock

it_case "lock: runs a command holding the lock, with ETCD_LOCK_KEY"
it_run ctl lock mylock -- sh -c 'echo "held $ETCD_LOCK_KEY"'
assert_rc 0
assert_match '^held mylock/[0-9a-f]+$' "$(it_out)" "lock output"
ctl_ok get mylock --prefix </dev/null
# the lock key is put, then deleted on unlock; revoking its lease then deletes nothing
rev=$((rev + 2))
assert_rev

it_case "lock: a second locker waits until the first lets go"
IT_BG_OUT="$IT_TMP/lock1"
it_bg ctl lock mylock
IT_BG_OUT=""
lock1_pid=$IT_BG_PID
it_wait_for 10 "grep -q '^mylock/' '$IT_TMP/lock1'" || it_fail "the first locker did not get the lock"
IT_BG_OUT="$IT_TMP/lock2"
it_bg ctl lock mylock -- echo second
IT_BG_OUT=""
lock2_pid=$IT_BG_PID
sleep 1
kill -0 "$lock2_pid" 2>/dev/null || it_fail "the second locker did not wait ($(cat "$IT_TMP/lock2"))"
assert_eq "" "$(cat "$IT_TMP/lock2")" "second locker output while waiting"
it_signal INT "$lock1_pid"
wait "$lock1_pid"
assert_eq 0 "$?" "first locker exit code after SIGINT"
it_wait_for 10 "! kill -0 $lock2_pid 2>/dev/null" || it_fail "the second locker never got the lock"
wait "$lock2_pid"
assert_eq 0 "$?" "second locker exit code"
assert_eq "second" "$(cat "$IT_TMP/lock2")" "second locker output"
ctl_ok get mylock --prefix </dev/null
# two lock keys put, two deleted
rev=$((rev + 4))
assert_rev

# ---------------------------------------------------------------- compaction

it_case "compaction: reads below it fail, at it work; watches from before it are cancelled"
ctl_ok get foo --rev=15 --print-value-only <<<"baz"
ctl_ok compaction 16 <<<"compacted revision 16"
ctl_err 1 "Error: etcdserver: mvcc: required revision has been compacted" get foo --rev=15
ctl_err 1 "Error: etcdserver: mvcc: required revision has been compacted" get foo --rev=1
ctl_ok get p/ --prefix --rev=16 --print-value-only <<'EOF'
3
6
5
2
4
EOF
ctl_ok get p/ --prefix --rev=16 --keys-only --limit=1 <<'EOF'
p/a

EOF
ctl_err 1 "Error: etcdserver: mvcc: required revision has been compacted" compaction 16
ctl_err 1 "Error: etcdserver: mvcc: required revision has been compacted" compaction 5
ctl_err 1 "Error: etcdserver: mvcc: required revision is a future revision" compaction $((rev + 1))
ctl_ok compaction 17 --physical <<<"compacted revision 17"
ctl_ok compaction 18 -w json <<<"compacted revision 18"
assert_rev
watch_start foo --rev=5
watch_finish 1
assert_rc 5
assert_out_empty
assert_err_has '^watch was canceled \(etcdserver: mvcc: required revision has been compacted\)$'
assert_err_last "Error: watch is canceled by the server"
# at the compacted revision itself the watch works
watch_start p/d --rev=18 --prefix
watch_finish 6
assert_eq running "$IT_RC" "watch still running"
assert_out <<'EOF'
PUT
p/d
8
DELETE
p/d

EOF
ctl_ok compaction "$rev" <<<"compacted revision $rev"
ctl_ok get foo --rev="$rev" --print-value-only <<<"again"
assert_rev

# ---------------------------------------------------------------- cluster and maintenance

it_case "member list (simple, json, table)"
it_run ctl member list
assert_rc 0
assert_out <<EOF
$IT_MID_HEX, started, $IT_NAME, $IT_PEER_URL, $IT_URL, false
EOF
it_run ctl member list -w json
assert_rc 0
assert_json "{\"header\":{\"cluster_id\":\"<CID>\",\"member_id\":\"<MID>\",\"raft_term\":\"<TERM>\"},\"members\":[{\"ID\":$IT_MID,\"name\":\"$IT_NAME\",\"peerURLs\":[\"$IT_PEER_URL\"],\"clientURLs\":[\"$IT_URL\"]}]}"
it_run ctl member list -w table
assert_rc 0
"$IT_PYTHON" - "$IT_TMP/table" "$IT_MID_HEX" "$IT_NAME" "$IT_PEER_URL" "$IT_URL" <<'EOF'
import sys
out, *cells = sys.argv[1:]
head = ["ID", "STATUS", "NAME", "PEER ADDRS", "CLIENT ADDRS", "IS LEARNER"]
row = [cells[0], "started", cells[1], cells[2], cells[3], "false"]
w = [max(len(a), len(b)) for a, b in zip(head, row)]
sep = "+" + "+".join("-" * (x + 2) for x in w) + "+"
def centre(s, n):
    left = (n - len(s)) // 2
    return " " * left + s + " " * (n - len(s) - left)
with open(out, "w") as f:
    f.write(sep + "\n")
    f.write("|" + "|".join(" " + centre(h, x) + " " for h, x in zip(head, w)) + "|\n")
    f.write(sep + "\n")
    f.write("|" + "|".join(" " + c.rjust(x) + " " for c, x in zip(row, w)) + "|\n")
    f.write(sep + "\n")
EOF
assert_out <"$IT_TMP/table"

it_case "endpoint status (simple, json, fields)"
it_run ctl endpoint status
assert_rc 0
assert_match "^$IT_ENDPOINT, $IT_MID_HEX, 3\\.4\\.[0-9]+, [0-9.]+ [kMG]?B, true, false, [1-9][0-9]*, [1-9][0-9]*, [1-9][0-9]*, $" \
  "$(it_out)" "endpoint status"
it_run ctl endpoint status -w json
assert_rc 0
got=$(it_json_norm <"$IT_TMP/out" | it_json_get \
  '[len(d), d[0]["Endpoint"], d[0]["Status"]["header"], d[0]["Status"]["version"].startswith("3.4."), d[0]["Status"]["dbSize"] > 0, d[0]["Status"]["dbSizeInUse"] <= d[0]["Status"]["dbSize"], d[0]["Status"]["leader"], d[0]["Status"]["raftIndex"] >= d[0]["Status"]["raftAppliedIndex"] > 0, d[0]["Status"]["raftTerm"]]')
assert_eq "[1, '$IT_ENDPOINT', {'cluster_id': '<CID>', 'member_id': '<MID>', 'revision': $rev, 'raft_term': '<TERM>'}, True, True, True, $IT_MID, True, '<TERM>']" \
  "$got" "endpoint status -w json"
it_run ctl endpoint status -w fields
assert_rc 0
it_norm_fields
sed -i -E -e 's/^"Version" : "3\.4\.[0-9]+"$/"Version" : "3.4.x"/' \
  -e 's/^"(DBSize|RaftIndex|RaftAppliedIndex)" : [1-9][0-9]*$/"\1" : N/' "$IT_TMP/out"
assert_out <<EOF
"ClusterID" : <CID>
"MemberID" : <MID>
"Revision" : $rev
"RaftTerm" : <TERM>
"Version" : "3.4.x"
"DBSize" : N
"Leader" : <MID>
"IsLearner" : false
"RaftIndex" : N
"RaftTerm" : <TERM>
"RaftAppliedIndex" : N
"Errors" : []
"Endpoint" : "$IT_ENDPOINT"

EOF

it_case "endpoint health (its simple output goes to stderr), json"
it_run ctl endpoint health
assert_rc 0
assert_out_empty
assert_match "^$IT_ENDPOINT is healthy: successfully committed proposal: took = [0-9.]+(ns|µs|ms|s)$" \
  "$(cat "$IT_TMP/err")" "endpoint health"
it_run ctl endpoint health -w json
assert_rc 0
got=$(it_json_get '[(x["endpoint"], x["health"], "error" in x) for x in d]' <"$IT_TMP/out")
assert_eq "[('$IT_ENDPOINT', True, False)]" "$got" "endpoint health -w json"

it_case "snapshot save: the database followed by its SHA-256"
it_run ctl snapshot save "$IT_TMP/snap.db"
assert_rc 0
assert_out <<<"Snapshot saved at $IT_TMP/snap.db"
got=$("$IT_PYTHON" - "$IT_TMP/snap.db" <<'EOF'
import hashlib, sys
b = open(sys.argv[1], "rb").read()
print(len(b) > 32 + 4096, len(b) % 512 == 32, hashlib.sha256(b[:-32]).digest() == b[-32:])
EOF
)
assert_eq "True True True" "$got" "snapshot: non-trivial size, size % 512 == 32, trailing SHA-256 of the rest"
[[ ! -e "$IT_TMP/snap.db.part" ]] || it_fail "snapshot left its .part file"

it_case "defrag, alarm list / disarm with no alarm"
ctl_ok defrag <<<"Finished defragmenting etcd member[$IT_ENDPOINT]"
ctl_ok alarm list </dev/null
ctl_ok alarm disarm </dev/null
ctl_ok get foo --print-value-only <<<"again"
assert_rev

it_case "SIGTERM stops the server"
it_server_stop

# ---------------------------------------------------------------- space quota

it_case "quota: writes fail with NOSPACE, the alarm shows, compact+defrag+disarm recovers"
it_server_up --quota-backend-bytes=$((512 * 1024))
big=$(head -c 60000 /dev/zero | tr '\0' x)
ok=0
for ((i = 0; i < 100; i++)); do
  it_run ctl put "big/$i" "$big"
  [[ $IT_RC -eq 0 ]] || break
  ok=$((ok + 1))
done
if ((ok == 100)); then it_fail "100 puts of 60 kB fit in a 512 KiB quota"; fi
if ((ok == 0)); then it_fail "no put fit in a 512 KiB quota"; fi
assert_rc 1
assert_err_last "Error: etcdserver: mvcc: database space exceeded"
ctl_ok alarm list <<<"memberID:$IT_MID alarm:NOSPACE "
it_run ctl alarm list -w json
assert_rc 0
assert_json "{\"alarms\":[{\"memberID\":\"<MID>\",\"alarm\":1}]}"
it_run ctl endpoint status
assert_match ", memberID:$IT_MID alarm:NOSPACE $" "$(it_out)" "endpoint status shows the alarm"
ctl_err 1 "Error: etcdserver: mvcc: database space exceeded" put small v
ctl_ok get big/0 --keys-only <<'EOF'
big/0

EOF
# deletes are allowed under the alarm
ctl_ok del big/ --prefix <<<"$ok"
r=$(it_revision)
ctl_ok compaction "$r" --physical <<<"compacted revision $r"
ctl_ok defrag <<<"Finished defragmenting etcd member[$IT_ENDPOINT]"
ctl_ok alarm disarm <<<"memberID:$IT_MID alarm:NOSPACE "
ctl_ok alarm list </dev/null
ctl_ok put small v <<<"OK"
ctl_ok get small --print-value-only <<<"v"
it_server_stop

it_done
