#!/usr/bin/python3
"""kill -9 of the whole cluster under load, twice: after every member
restarts, a leader is elected, every acknowledged write is on every member,
and the recorded history of puts, gets and compare-and-swaps (through all
members) is linearizable. Acknowledged writes survive a crash of every
member at once (the raft log is the durable record; the store catches up
from it).

    /usr/bin/python3 tests/cluster/test_kill_all.py <build-dir>
    CAIRN_TEST_SERVER=etcd /usr/bin/python3 tests/cluster/test_kill_all.py <build-dir>
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clusterlib  # noqa: E402
from clusterlib import main  # noqa: E402
from history import Load, check_acked_everywhere, check_linearizable, wait_acks  # noqa: E402



def close_channels(c):
    """Closes every member's client channel before the restart."""
    for m in c.members:
        if m._chan is not None:
            m._chan.close()
            m._chan = None


def test(t):
    t.case("bootstrap 3 members")
    c = t.cluster(3)
    c.start_all()
    c.leader()

    for rnd in (1, 2):
        t.case("round %d: load: 6 clients through all members (puts, gets, cas)" % rnd)
        load = Load(c, t, "ka%d" % rnd, clients=6, keys=12)
        load.start()
        time.sleep(2 + t.rng.random())

        t.case("round %d: kill -9 every member under load" % rnd)
        for m in c.members:
            c.kill9(m)
        load.stop()
        close_channels(c)

        t.case("round %d: restart every member; a leader is elected" % rnd)
        # Forking while grpc's threads retry a cluster that is down can wait
        # forever in grpc's fork handler: start them without it.
        clusterlib.SPAWN_WITHOUT_FORK_HANDLERS = True
        for m in c.members:
            c.start(m)
        clusterlib.SPAWN_WITHOUT_FORK_HANDLERS = False
        c.wait_ready(c.members)
        leader = c.leader()
        t.log("leader after the restart: %s" % leader.name)

        t.case("round %d: a final read of every key through every member" % rnd)
        load.final_reads()

        t.case("round %d: every acknowledged write is on every member" % rnd)
        check_acked_everywhere(t, c, load)

        t.case("round %d: the history is linearizable" % rnd)
        check_linearizable(t, load)

    t.case("writes are acknowledged through every member")
    load = Load(c, t, "ka-after", clients=3, keys=6)
    t_start = time.monotonic_ns()
    load.start()
    for m in c.members:
        wait_acks(t, load, t_start, 10, members=[m], what="writes after the restarts")
    load.stop()

    t.case("SIGTERM every member")
    c.stop_all()


main(test)
