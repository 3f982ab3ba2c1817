#!/usr/bin/env bash
# tests/integration/test_restart.sh: kill -9 at any moment, then restart on the
# same data dir: every acknowledged write is there, the revision continues,
# leases keep their TTLs and still expire, compaction and history survive.
#
# Rounds of: writer threads (restart_writer.py) putting, txn-ing and deleting
# as fast as the server acks, a kill -9 a random 0.1-1.3 s after the first
# ack while writes are in flight, a restart, and a check of every acknowledged write so far.
# CAIRN_TEST_SEED=<n> repeats a run's delays and operation mix.
#
#   bash tests/integration/test_restart.sh <build-dir>
#   CAIRN_TEST_SERVER=etcd bash tests/integration/test_restart.sh <build-dir>
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh" "$@"

seed=${CAIRN_TEST_SEED:-$(((RANDOM << 15) | RANDOM))}
echo "seed: $seed (CAIRN_TEST_SEED=$seed repeats this run)"
RANDOM=$seed
ROUNDS=3
WRITERS=4

writer() { "$IT_PYTHON" "$IT_DIR/restart_writer.py" "$@"; }

# Verifies every ack log so far; sets maxrev.
verify_acks() {
  it_run writer verify "$IT_ENDPOINT" "$IT_TMP"/acks.*
  [[ $IT_RC -eq 0 ]] || it_fail "acknowledged writes lost or wrong after the restart (LOST lines above)"
  cat "$IT_TMP/out" | grep -v '^MAXREV'
  maxrev=$(awk '/^MAXREV/ {print $2}' "$IT_TMP/out")
}

# The revision continues: the store is at >= the highest acked revision and
# the next put gets the next revision.
assert_revision_continues() {
  local cur next
  cur=$(it_revision)
  ((cur >= maxrev)) || it_fail "revision went back: store at $cur, acked up to $maxrev"
  next=$(ctl put restart/next "after $1" -w json | it_json_get 'd["header"]["revision"]')
  assert_eq $((cur + 1)) "$next" "revision of the first put after $1"
}

assert_same_member() {
  local ids
  ids=$(ctl member list -w json | it_json_get 'str(d["header"]["cluster_id"]) + " " + str(d["members"][0]["ID"])')
  assert_eq "$IT_CID $IT_MID" "$ids" "cluster and member IDs after $1"
}

lease_ttl() { # lease-hex -> "granted remaining"
  ctl lease timetolive "$1" -w json | it_json_get 'str(d["granted-ttl"]) + " " + str(d["ttl"])'
}

it_case "start a fresh single-member server"
it_server_up

it_case "before the crashes: leases, a revoked lease, a compaction"
it_run ctl lease grant 600
assert_rc 0
long_lease=$(awk '{print $2}' "$IT_TMP/out")
ctl_ok put lease/long v --lease="$long_lease" <<<"OK"
it_run ctl lease grant 5
short_lease=$(awk '{print $2}' "$IT_TMP/out")
ctl_ok put lease/short v --lease="$short_lease" <<<"OK"
it_run ctl lease grant 600
revoked_lease=$(awk '{print $2}' "$IT_TMP/out")
ctl_ok put lease/revoked v --lease="$revoked_lease" <<<"OK"
ctl_ok lease revoke "$revoked_lease" <<<"lease $revoked_lease revoked"
ctl_ok put cmp/k v1 <<<"OK"
cmp_rev1=$(it_revision)
ctl_ok put cmp/k v2 <<<"OK"
cmp_rev2=$(it_revision)
ctl_ok compaction "$cmp_rev2" <<<"compacted revision $cmp_rev2"
t_leases=$(date +%s)

it_case "kill -9 while the server is still starting, then restart"
it_server_kill9
it_server_start
sleep 0.$((RANDOM % 3))
it_server_kill9
it_server_start
it_server_wait_ready
assert_same_member "a kill during startup"
ctl_ok get cmp/k --print-value-only <<<"v2"

for ((round = 1; round <= ROUNDS; round++)); do
  it_case "round $round: $WRITERS writers, kill -9 mid-write, restart, every ack there"
  IT_BG_OUT="$IT_TMP/writer.$round"
  it_bg "$IT_PYTHON" "$IT_DIR/restart_writer.py" write "$IT_ENDPOINT" "$IT_TMP/acks.$round" "$round" "$WRITERS" "$seed"
  IT_BG_OUT=""
  wpid=$IT_BG_PID
  # the kill comes a random 0.1-1.3 s after the first acknowledged write
  it_wait_for 20 "[[ -s '$IT_TMP/acks.$round' ]] || ! kill -0 $wpid 2>/dev/null" ||
    it_fail "no write acknowledged within 20 s"
  delay_ms=$((100 + RANDOM % 1200))
  sleep "$(awk -v m="$delay_ms" 'BEGIN { print m / 1000 }')"
  kill -0 "$wpid" 2>/dev/null || it_fail "the writer stopped before the kill: $(cat "$IT_TMP/writer.$round"*)"
  it_server_kill9
  it_wait_for 20 "! kill -0 $wpid 2>/dev/null" || it_fail "the writer did not stop within 20 s of the kill"
  wait "$wpid"
  wrc=$?
  cat "$IT_TMP/writer.$round"
  [[ $wrc -eq 0 ]] || it_fail "the writer failed (exit $wrc): $(cat "$IT_TMP/writer.$round.err")"
  acked=$(wc -l <"$IT_TMP/acks.$round")
  ((acked > 0)) || it_fail "no write was acknowledged in ${delay_ms} ms"
  echo "   killed ${delay_ms} ms after the first ack, $acked acked key writes in this round"
  it_server_start
  it_server_wait_ready
  assert_same_member "kill -9"
  verify_acks
  assert_revision_continues "restart $round"
done

it_case "leases after the crashes: granted TTL kept, remaining counting down, keep-alive works"
read -r granted rem1 <<<"$(lease_ttl "$long_lease")"
assert_eq 600 "$granted" "granted TTL of the long lease"
# etcd 3.4 does not persist remaining TTLs: a restart gives every lease its
# full TTL again. Cairn checkpoints them (docs/leases.md); either way a new
# leader may add its election timeout, hence the +2. Expiring early is wrong.
# (test_lease.sh checks Cairn's stricter bound.)
((rem1 >= 1 && rem1 <= 602)) || it_fail "remaining TTL $rem1 of the long lease is outside [1, 602]"
ctl_ok get lease/long --print-value-only <<<"v"
sleep 1.1
read -r granted rem2 <<<"$(lease_ttl "$long_lease")"
((rem2 < rem1)) || it_fail "remaining TTL not counting down: $rem1 then $rem2 1.1 s later"
it_run ctl lease timetolive "$long_lease" --keys
assert_rc 0
assert_match "attached keys\\(\\[lease/long\\]\\)$" "$(it_out)" "keys of the long lease"
ctl_ok lease keep-alive --once "$long_lease" <<<"lease $long_lease keepalived with TTL(600)"
ctl_ok lease timetolive "$revoked_lease" <<<"lease $revoked_lease already expired"
ctl_ok get lease/revoked </dev/null

it_case "the 5 s lease still expires after the restarts (and deletes its key)"
it_wait_for 15 "[[ -z \"\$(ctl get lease/short)\" ]]" ||
  it_fail "lease/short still there 15 s after the last restart (its lease has a 5 s TTL)"
ctl_ok lease timetolive "$short_lease" <<<"lease $short_lease already expired"
echo "   (gone $(($(date +%s) - t_leases)) s after it was granted)"

it_case "compaction survives: below it reads fail, at it they work"
ctl_err 1 "Error: etcdserver: mvcc: required revision has been compacted" get cmp/k --rev="$cmp_rev1"
ctl_ok get cmp/k --rev="$cmp_rev2" --print-value-only <<<"v2"
ctl_err 1 "Error: etcdserver: mvcc: required revision has been compacted" compaction "$cmp_rev2"

it_case "history survives: a watch from before the crashes replays it"
ctl_ok put cmp/k v3 <<<"OK"
IT_BG_OUT="$IT_TMP/watch"
it_bg ctl watch cmp/k --rev="$cmp_rev2"
IT_BG_OUT=""
wpid=$IT_BG_PID
it_wait_for 10 "[[ \$(wc -l <'$IT_TMP/watch') -ge 6 ]]" || it_fail "watch: $(cat "$IT_TMP/watch")"
it_stop_pid "$wpid" 5
assert_eq "PUT cmp/k v2 PUT cmp/k v3 " "$(tr '\n' ' ' <"$IT_TMP/watch")" "replayed events"

it_case "SIGTERM, restart: nothing changes across a clean restart"
before=$(it_revision)
it_server_stop
it_server_start
it_server_wait_ready
assert_same_member "a clean restart"
assert_eq "$before" "$(it_revision)" "revision across a clean restart"
verify_acks
assert_revision_continues "a clean restart"
it_server_stop

it_done
