#!/usr/bin/python3
"""kill -9 of the leader under load, twice: the others elect a new leader and
keep acknowledging writes; the old leader restarts and catches up; every
acknowledged write is then on every member, and the recorded history of
puts, gets and compare-and-swaps (through all members) is linearizable.

    /usr/bin/python3 tests/cluster/test_kill_leader.py <build-dir>
    CAIRN_TEST_SERVER=etcd /usr/bin/python3 tests/cluster/test_kill_leader.py <build-dir>
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clusterlib import main  # noqa: E402
from history import Load, check_acked_everywhere, check_linearizable, wait_acks  # noqa: E402


def test(t):
    t.case("bootstrap 3 members")
    c = t.cluster(3)
    c.start_all()
    leader = c.leader()

    t.case("load: 6 clients through all members (puts, gets, cas)")
    load = Load(c, t, "kl", clients=6, keys=12)
    load.start()
    time.sleep(2)

    for rnd in (1, 2):
        t.case("round %d: kill -9 the leader %s under load" % (rnd, leader.name))
        time.sleep(t.rng.random())
        t_kill = time.monotonic_ns()
        c.kill9(leader)
        others = [m for m in c.members if m is not leader]
        new = c.leader(members=others, timeout=15)
        t_elected = time.monotonic_ns()
        t.check(new is not leader, "the killed member is still the leader")
        t.log("%s took over %.2f s after the kill" % (new.name, (t_elected - t_kill) / 1e9))

        t.case("round %d: writes keep being acknowledged through %s and %s"
               % (rnd, others[0].name, others[1].name))
        for m in others:
            wait_acks(t, load, t_elected, 10, members=[m], what="writes since %s took over" % new.name)
        time.sleep(1.5)

        t.case("round %d: restart %s (kill -9 data dir) and let it catch up" % (rnd, leader.name))
        c.restart(leader)
        time.sleep(2)
        leader = c.leader()

    t.case("stop the load; a final read of every key through every member")
    load.stop()
    load.final_reads()

    t.case("every acknowledged write is on every member")
    check_acked_everywhere(t, c, load)

    t.case("the history is linearizable")
    check_linearizable(t, load)

    t.case("SIGTERM every member")
    c.stop_all()


main(test)
