#!/usr/bin/python3
"""A learner under load: etcdctl member add --learner, the learner starts
with --initial-cluster-state existing and catches up (it refuses client
writes and linearizable reads, as etcd's learners do, but serves
serializable reads), etcdctl member promote makes it a voter (retried while
it is not yet in sync), and it then serves everything. Every acknowledged
write is on all four members and the history is linearizable.

    /usr/bin/python3 tests/cluster/test_learner.py <build-dir>
    CAIRN_TEST_SERVER=etcd /usr/bin/python3 tests/cluster/test_learner.py <build-dir>
"""

import os
import sys
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clusterlib import main, grpc_error_text  # noqa: E402
from history import Load, check_acked_everywhere, check_linearizable  # noqa: E402
import linearize as L  # noqa: E402


def test(t):
    t.case("bootstrap 3 members; load through all of them")
    c = t.cluster(3)
    c.start_all()
    voters = list(c.members)
    load = Load(c, t, "ln", clients=6, keys=12)
    load.start()
    time.sleep(1)

    t.case("etcdctl member add --learner m4; start it with --initial-cluster-state existing")
    m4 = c.member_add(learner=True, through=voters)

    t.case("the member list shows m4 as a learner, through every voter")
    for m in voters:
        t.wait_for(10, lambda: [x.get("isLearner", False) for x in c.member_list(m) if x["ID"] == m4.id] == [True],
                   "m4 listed as a learner through %s" % m.name)

    t.case("the learner catches up: a serializable read through it sees the latest writes")
    target = voters[0].revision(serializable=False)
    t.wait_for(20, lambda: m4.revision() >= target, "m4's revision reaches %d" % target)

    t.case("the learner refuses a client write and a linearizable read (as etcd)")
    for what, call in (("put", lambda: m4.put("ln/via-learner", "x", timeout=3)),
                       ("linearizable get", lambda: m4.get("ln/via-learner", timeout=3))):
        try:
            call()
            t.fail("a %s through the learner m4 succeeded" % what)
        except grpc.RpcError as e:
            t.log("%s through the learner: %s" % (what, grpc_error_text(e)))
    value, _, _ = voters[0].get("ln/via-learner")
    t.eq(None, value, "the key the learner was asked to write, read through m1")

    t.case("etcdctl member promote m4 (retried while it is not in sync)")
    out, _, _, n = c.ctl_retry("member", "promote", "%x" % m4.id, members=voters,
                               retry_on=("in sync", "unhealthy cluster"))
    t.log("%s (%d attempts)" % (out.strip(), n))
    for m in c.members:
        t.wait_for(10, lambda: not any(x.get("isLearner", False) for x in c.member_list(m)),
                   "no learner left in the member list through %s" % m.name)

    t.case("the promoted member serves reads and writes under load")
    t_promoted = time.monotonic_ns()
    load.targets = list(c.members)
    time.sleep(3)
    via4 = [o for o in load.ops_between(t_promoted, time.monotonic_ns(), kinds=(L.PUT, L.CAS, L.GET))
            if o.member == "m4" and o.outcome == L.OK]
    t.check(len(via4) >= 10, "only %d operations through m4 succeeded in 3 s (%s)" % (len(via4), load.summary()))
    t.log("%d operations through m4 succeeded; leader %s" % (len(via4), c.leader().name))

    t.case("stop the load; final reads through all four")
    load.stop()
    load.final_reads()

    t.case("every acknowledged write is on all four members")
    check_acked_everywhere(t, c, load)

    t.case("the history is linearizable")
    check_linearizable(t, load)

    t.case("SIGTERM every member")
    c.stop_all()


main(test)
