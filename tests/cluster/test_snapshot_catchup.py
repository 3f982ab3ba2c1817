#!/usr/bin/python3
"""A member that was down while the others truncated their raft logs catches
up by snapshot: --snapshot-count=100, one follower killed, 7000 writes
(well over etcd's 5000 retained entries + the snapshot count) through the
leader, then the follower restarts, reaches the others' revision, and holds
the same data: the same HashKV at one revision on every member (etcdctl
endpoint hashkv --rev, and the Maintenance.HashKV RPC), the same keys and
values, and the same history (a Range at an old revision).

    /usr/bin/python3 tests/cluster/test_snapshot_catchup.py <build-dir>
    CAIRN_TEST_SERVER=etcd /usr/bin/python3 tests/cluster/test_snapshot_catchup.py <build-dir>
"""

import os
import sys
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clusterlib  # noqa: E402
from clusterlib import main, grpc_error_text  # noqa: E402
import etcd3.etcdrpc as rpc  # noqa: E402


SNAPSHOT_COUNT = 100
WRITES = 7000
KEYS = 2500


def bulk(t, members, reqs, window=64):
    """Sends (kind, request) pairs through members in turn, window in
    flight; every one must succeed. Returns the last revision."""
    rev = 0
    inflight = []
    for i, (kind, req) in enumerate(reqs):
        m = members[i % len(members)]
        f = getattr(m.kv(), kind).future(req, timeout=10)
        inflight.append((m, kind, req, f))
        if len(inflight) >= window:
            rev = max(rev, _wait(t, inflight.pop(0)))
    for x in inflight:
        rev = max(rev, _wait(t, x))
    return rev


def _wait(t, x):
    m, kind, req, f = x
    try:
        return f.result().header.revision
    except grpc.RpcError as e:
        t.fail("%s of %r through %s failed: %s" % (kind, req.key, m.name, grpc_error_text(e)))


def dump(m, rev=0):
    r = m.kv().Range(rpc.RangeRequest(key=b"sn/", range_end=b"sn0", serializable=True, revision=rev), timeout=20)
    return [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version) for kv in r.kvs]


def test(t):
    t.case("bootstrap 3 members with --snapshot-count=%d; 300 writes" % SNAPSHOT_COUNT)
    c = t.cluster(3, snapshot_count=SNAPSHOT_COUNT)
    c.start_all()
    leader = c.leader()
    early = bulk(t, [leader], [("Put", rpc.PutRequest(key=b"sn/early%03d" % i, value=b"e%d" % i)) for i in range(300)])
    early_dump = dump(leader, early)

    t.case("kill -9 a follower")
    lagger = [m for m in c.members if m is not leader][0]
    c.wait_ready([lagger])
    c.kill9(lagger)

    t.case("%d writes through the leader %s while it is down (puts, overwrites, deletes)" % (WRITES, leader.name))
    t0 = time.monotonic()
    reqs = []
    for i in range(WRITES):
        if i % 10 == 9:
            reqs.append(("DeleteRange", rpc.DeleteRangeRequest(key=b"sn/k%04d" % ((i * 7) % KEYS))))
        else:
            reqs.append(("Put", rpc.PutRequest(key=b"sn/k%04d" % (i % KEYS), value=b"v%d" % i)))
    last = bulk(t, [leader], reqs)
    t.log("%d writes in %.1f s, store at revision %d" % (WRITES, time.monotonic() - t0, last))

    t.case("restart %s: it catches up (by snapshot) to revision %d" % (lagger.name, last))
    t0 = time.monotonic()
    c.start(lagger)
    t.wait_for(60, lambda: lagger.revision() >= last, "%s reaches revision %d" % (lagger.name, last))
    c.wait_ready([lagger])
    t.log("caught up in %.1f s" % (time.monotonic() - t0))
    # Information only (log texts differ between servers): etcd logs
    # "receiving database snapshot" ... "applied incoming Raft snapshot".
    with open(lagger.log, "rb") as f:
        since = f.read().decode("utf-8", "replace").split("=== ")[-1].splitlines()[1:]
    t.log("log lines since the restart that mention a snapshot: %d"
          % sum(1 for x in since if "snapshot" in x.lower()))

    t.case("a few more writes; every member applies them")
    leader = c.leader()
    final = bulk(t, [leader], [("Put", rpc.PutRequest(key=b"sn/after%d" % i, value=b"a")) for i in range(30)])
    for m in c.members:
        t.wait_for(20, lambda: m.revision() >= final, "%s reaches revision %d" % (m.name, final))

    t.case("HashKV at revision %d: the same on every member (etcdctl endpoint hashkv --rev)" % final)
    hk = c.ctl_json("endpoint", "hashkv", "--rev=%d" % final)
    hashes = {e["Endpoint"]: e["HashKV"]["hash"] for e in hk}
    t.eq(3, len(hashes), "entries of endpoint hashkv")
    t.eq(1, len(set(hashes.values())), "HashKV at revision %d per endpoint: %s" % (final, hashes))

    t.case("Maintenance.HashKV at two revisions, through every member")
    for rev in (final, early):
        got = {}
        for m in c.members:
            r = m.maint().HashKV(rpc.HashKVRequest(revision=rev), timeout=20)
            got[m.name] = (r.hash, r.compact_revision)
        t.eq(1, len(set(got.values())), "(hash, compact revision) at revision %d per member: %s" % (rev, got))

    t.case("the same keys, values and revisions on every member, now and at revision %d" % early)
    ref = dump(leader)
    t.check(len(ref) > 2000, "only %d keys under sn/" % len(ref))
    for m in c.members:
        got = dump(m)
        if got != ref:
            diff = [(a, b) for a, b in zip(ref, got) if a != b][:5]
            t.fail("%s holds %d keys, %s holds %d; first differences (%s, %s): %s"
                   % (m.name, len(got), leader.name, len(ref), leader.name, m.name, diff))
        t.eq(early_dump, dump(m, early), "%s's keys at revision %d" % (m.name, early))

    t.case("SIGTERM every member")
    c.stop_all()


main(test)
