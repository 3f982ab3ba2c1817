#!/usr/bin/python3
"""etcdctl move-leader under load, twice, each time to a follower: every
member then names the target as leader, writes keep being acknowledged, every
acknowledged write is on every member and the history is linearizable.

    /usr/bin/python3 tests/cluster/test_move_leader.py <build-dir>
    CAIRN_TEST_SERVER=etcd /usr/bin/python3 tests/cluster/test_move_leader.py <build-dir>
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clusterlib import main  # noqa: E402
from history import Load, check_acked_everywhere, check_linearizable, wait_acks  # noqa: E402


def test(t):
    t.case("bootstrap 3 members; load through all of them")
    c = t.cluster(3)
    c.start_all()
    load = Load(c, t, "ml", clients=6, keys=12)
    load.start()
    time.sleep(1.5)

    for rnd in (1, 2):
        old = c.leader()
        target = [m for m in c.members if m is not old][rnd % 2]
        t.case("round %d: etcdctl move-leader %s (from %s) under load" % (rnd, target.name, old.name))
        out, _, _ = c.ctl("move-leader", "%x" % target.id)
        t.log(out.strip())
        t_moved = time.monotonic_ns()
        t.eq("Leadership transferred from %x to %x" % (old.id, target.id), out.strip(), "etcdctl move-leader's output")
        now = c.leader()
        t.check(now is target, "after move-leader to %s, every member names %s as the leader" % (target.name, now.name))

        t.case("round %d: writes keep being acknowledged" % rnd)
        acked = wait_acks(t, load, t_moved, 20, what="writes since the move")
        time.sleep(1)
        t.log("%d writes acknowledged since the move" % len(acked))

    t.case("stop the load; final reads through every member")
    load.stop()
    load.final_reads()

    t.case("every acknowledged write is on every member")
    check_acked_everywhere(t, c, load)

    t.case("the history is linearizable")
    check_linearizable(t, load)

    t.case("SIGTERM every member")
    c.stop_all()


main(test)
