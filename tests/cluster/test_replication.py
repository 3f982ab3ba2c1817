#!/usr/bin/python3
"""Replication through the leader alone (what a cluster must do before
followers forward writes): 3 members agree on one leader; recorded load
through the leader; a follower killed with kill -9 and restarted catches up
from the log; every acknowledged write is then on every member (read
locally, at its revision), HashKV at one revision is the same everywhere,
and the history is linearizable.

    /usr/bin/python3 tests/cluster/test_replication.py <build-dir>
    CAIRN_TEST_SERVER=etcd /usr/bin/python3 tests/cluster/test_replication.py <build-dir>
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clusterlib import main  # noqa: E402
from history import Load, check_acked_everywhere, check_linearizable, wait_acks  # noqa: E402
import etcd3.etcdrpc as rpc  # noqa: E402


def test(t):
    t.case("bootstrap 3 members; every member names the same leader (Maintenance.Status)")
    c = t.cluster(3)
    c.start_all()
    leader = c.leader()
    followers = [m for m in c.members if m is not leader]
    ids = {m.name: m.status().header.member_id for m in c.members}
    t.eq(3, len(set(ids.values())), "distinct member IDs in the Status headers (%s)" % ids)
    t.log("leader %s" % leader.name)

    t.case("recorded load through the leader %s" % leader.name)
    load = Load(c, t, "rp", clients=4, keys=8)
    load.targets = [leader]
    load.start()
    wait_acks(t, load, 0, 50)

    t.case("kill -9 the follower %s under load; the leader keeps acknowledging writes" % followers[0].name)
    c.kill9(followers[0])
    t_killed = time.monotonic_ns()
    wait_acks(t, load, t_killed, 50, what="writes with one follower down")

    t.case("restart %s; it catches up from the log" % followers[0].name)
    c.start(followers[0])
    target = leader.revision()
    t.wait_for(30, lambda: followers[0].revision() >= target, "%s reaches revision %d" % (followers[0].name, target))
    time.sleep(1)

    t.case("stop the load; a final read of every key through the leader")
    load.stop()
    load.final_reads(members=[leader])

    t.case("every acknowledged write is on every member")
    rev = check_acked_everywhere(t, c, load, members=c.members)

    t.case("HashKV at revision %d is the same on every member" % rev)
    got = {m.name: m.maint().HashKV(rpc.HashKVRequest(revision=rev), timeout=10).hash for m in c.members}
    t.eq(1, len(set(got.values())), "HashKV at revision %d per member: %s" % (rev, got))

    t.case("the history is linearizable")
    check_linearizable(t, load)

    t.case("every member still names %s as the leader" % leader.name)
    t.check(c.leader() is leader, "the leader changed during the test")

    t.case("SIGTERM every member, the leader last")
    took = c.stop_all()
    t.log("seconds to exit: %s" % {k: round(v, 2) for k, v in took.items()})


main(test)
