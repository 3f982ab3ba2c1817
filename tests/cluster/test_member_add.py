#!/usr/bin/python3
"""Adding a voting member under load: etcdctl member add, then the new member
starts with --initial-cluster-state existing, catches up, serves reads and
writes; every member lists the four; every acknowledged write is on all four
and the history (through all members, the new one included) is linearizable.

    /usr/bin/python3 tests/cluster/test_member_add.py <build-dir>
    CAIRN_TEST_SERVER=etcd /usr/bin/python3 tests/cluster/test_member_add.py <build-dir>
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clusterlib import main  # noqa: E402
from history import Load, check_acked_everywhere, check_linearizable  # noqa: E402
import linearize as L  # noqa: E402


def test(t):
    t.case("bootstrap 3 members; load through all of them")
    c = t.cluster(3)
    c.start_all()
    load = Load(c, t, "ma", clients=6, keys=12)
    load.start()
    time.sleep(1)

    t.case("etcdctl member add m4 under load; start it with --initial-cluster-state existing")
    voters = list(c.members)
    m4 = c.member_add(through=voters)
    c.wait_ready([m4])
    t_joined = time.monotonic_ns()

    t.case("every member lists the same four members, m4 by its name and URLs")
    for m in c.members:
        t.wait_for(10, lambda: sorted((x.get("name", ""), tuple(x.get("clientURLs", []))) for x in c.member_list(m))
                   == sorted((mm.name, (mm.url,)) for mm in c.members),
                   "member list through %s shows m1..m4 with their names and client URLs" % m.name)
        t.check(not any(x.get("isLearner") for x in c.member_list(m)), "a learner in the member list through %s"
                % m.name)

    t.case("the load goes through m4 too")
    load.targets = list(c.members)
    time.sleep(3)
    via4 = [o for o in load.ops_between(t_joined, time.monotonic_ns(), kinds=(L.PUT, L.CAS, L.GET))
            if o.member == "m4" and o.outcome == L.OK]
    t.check(len(via4) >= 10, "only %d operations through m4 succeeded in 3 s (%s)" % (len(via4), load.summary()))
    t.log("%d operations through m4 succeeded" % len(via4))
    leader = c.leader()
    t.log("leader: %s" % leader.name)

    t.case("stop the load; final reads through all four")
    load.stop()
    load.final_reads()

    t.case("every acknowledged write is on all four members (m4 caught up)")
    check_acked_everywhere(t, c, load)

    t.case("the history is linearizable")
    check_linearizable(t, load)

    t.case("SIGTERM every member")
    c.stop_all()


main(test)
