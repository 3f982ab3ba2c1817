#!/usr/bin/python3
"""A clean SIGTERM stops a member promptly (exit code 0, or etcd's 143) and
loses nothing: a follower under load (the others keep acknowledging
writes), the leader under load (the others take over), each restarted; then
every acknowledged write is on every member, the history is linearizable,
and finally all three get SIGTERM at the same moment.

    /usr/bin/python3 tests/cluster/test_sigterm.py <build-dir>
    CAIRN_TEST_SERVER=etcd /usr/bin/python3 tests/cluster/test_sigterm.py <build-dir>
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clusterlib import main  # noqa: E402
from history import Load, Prober, check_acked_everywhere, check_linearizable, wait_acks  # noqa: E402

# One member stopping alone; all three at once (etcd's leader then spends
# ~7 s trying to hand over its leadership to members that are stopping too).
ONE_S = 10
ALL_S = 15


def test(t):
    t.case("bootstrap 3 members; load through all members and a prober per member")
    c = t.cluster(3)
    c.start_all()
    load = Load(c, t, "st", clients=6, keys=12)
    load.start()
    probers = {m.name: Prober(load, m).start() for m in c.members}
    time.sleep(1.5)

    for what in ("a follower", "the leader"):
        leader = c.leader()
        victim = leader if what == "the leader" else [m for m in c.members if m is not leader][0]
        others = [m for m in c.members if m is not victim]
        t.case("SIGTERM %s (%s) under load: it exits cleanly within %d s" % (victim.name, what, ONE_S))
        took = c.terminate(victim, timeout=ONE_S)
        t_stopped = time.monotonic_ns()
        t.log("%s exited in %.2f s with code %d" % (victim.name, took, victim.proc.returncode))

        t.case("the others have a leader and acknowledge writes")
        c.leader(members=others)
        for m in others:
            wait_acks(t, load, t_stopped, 5, members=[m], what="writes since %s stopped" % victim.name)

        t.case("restart %s" % victim.name)
        c.restart(victim)

    time.sleep(1)
    t.case("stop the load; final reads through every member")
    for p in probers.values():
        p.stop()
    load.stop()
    load.final_reads()

    t.case("every acknowledged write is on every member")
    check_acked_everywhere(t, c, load)

    t.case("the history is linearizable")
    check_linearizable(t, load)

    t.case("SIGTERM to all three at once: each exits cleanly within %d s" % ALL_S)
    took = c.stop_all(timeout=ALL_S, together=True)
    t.log("seconds to exit: %s" % {k: round(v, 2) for k, v in took.items()})


main(test)
