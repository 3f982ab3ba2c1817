#!/usr/bin/python3
"""SIGSTOP under load. A stopped minority (a follower, then the leader)
cannot make the others stall: writes through the other members keep being
acknowledged. A stopped majority: no write is acknowledged (they time out
or fail, none reports success) until SIGCONT, after which writes succeed
again. Then every acknowledged write is on every member and the history is
linearizable.

    /usr/bin/python3 tests/cluster/test_sigstop.py <build-dir>
    CAIRN_TEST_SERVER=etcd /usr/bin/python3 tests/cluster/test_sigstop.py <build-dir>
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clusterlib import main  # noqa: E402
from history import Load, Prober, check_acked_everywhere, check_linearizable, longest_gap_s  # noqa: E402
import linearize as L  # noqa: E402

STOP_S = 4
OP_TIMEOUT_S = 1.5


def test(t):
    t.case("bootstrap 3 members; load through all members and a prober per member")
    c = t.cluster(3)
    c.start_all()
    load = Load(c, t, "ss", clients=6, keys=12, op_timeout=OP_TIMEOUT_S)
    load.start()
    probers = {m.name: Prober(load, m, timeout=OP_TIMEOUT_S).start() for m in c.members}
    time.sleep(1.5)

    def minority(victim, what, max_gap_s):
        t.case("SIGSTOP %s (%s) for %d s: writes through the others keep being acknowledged"
               % (victim.name, what, STOP_S))
        others = [m for m in c.members if m is not victim]
        t_stop = time.monotonic_ns()
        c.sigstop(victim)
        time.sleep(STOP_S)
        t_end = time.monotonic_ns()
        for m in others:
            ops = probers[m.name].ops(t_stop, t_end)
            acked = [o for o in ops if o.outcome == L.OK]
            gap = longest_gap_s(ops, t_stop, t_end)
            t.log("through %s: %d of %d writes acknowledged, longest gap %.2f s" % (m.name, len(acked), len(ops), gap))
            t.check(len(acked) >= 10, "with %s stopped, only %d writes through %s were acknowledged in %d s;"
                    " the errors: %s" % (victim.name, len(acked), m.name, STOP_S,
                                         load.error_counts(t_stop, {m.name})))
            t.check(gap <= max_gap_s, "with %s stopped, writes through %s stalled for %.2f s (at most %.1f s allowed)"
                    % (victim.name, m.name, gap, max_gap_s))
        t.case("SIGCONT %s" % victim.name)
        c.sigcont(victim)
        t.wait_for(10, lambda: any(o.outcome == L.OK for o in probers[victim.name].ops(time.monotonic_ns() - 1)
                                   ) or _put_ok(victim), "a write through %s after SIGCONT" % victim.name)
        c.leader()

    leader = c.leader()
    follower = [m for m in c.members if m is not leader][0]
    # A stopped follower: no stall beyond a slow op. The stopped leader: an
    # election (1 s timeout) first.
    minority(follower, "a follower", max_gap_s=1.0)
    leader = c.leader()
    minority(leader, "the leader", max_gap_s=4.0)

    t.case("SIGSTOP a majority for %d s: no write is acknowledged" % STOP_S)
    leader = c.leader()
    alive = [m for m in c.members if m is not leader][0]
    victims = [m for m in c.members if m is not alive]
    for m in victims:
        c.sigstop(m)
    # Taken once both are stopped: a write invoked before that could still
    # be committed by the running majority.
    t_stop = time.monotonic_ns()
    time.sleep(STOP_S)
    t_cont = time.monotonic_ns()
    # Writes invoked after the stop and answered before SIGCONT: none may
    # report success.
    window = load.ops_between(t_stop, t_cont)
    bad = [o for o in window if o.outcome == L.OK]
    if bad:
        t.fail("with %s stopped, %d writes invoked after the stop were acknowledged before SIGCONT, e.g.:\n%s"
               % ([m.name for m in victims], len(bad), "\n".join("  " + o.describe(t.t0_ns) for o in bad[:10])))
    through_alive = [o for o in window if o.member == alive.name]
    t.check(len(through_alive) >= 2, "only %d writes through %s were tried while the majority was stopped"
            % (len(through_alive), alive.name))
    t.log("%d writes tried in the window (%d through %s), none acknowledged; outcomes: %s"
          % (len(window), len(through_alive), alive.name,
             sorted({o.note.split(" ")[0] + " " + o.note.split(" ", 1)[-1][:40] for o in window})[:4]))

    t.case("SIGCONT the majority: writes are acknowledged again")
    for m in victims:
        c.sigcont(m)
    t.wait_for(15, lambda: all(any(o.outcome == L.OK for o in probers[m.name].ops(t_cont)) for m in c.members),
               "a write acknowledged through every member after SIGCONT")
    c.leader()

    t.case("stop the load; final reads through every member")
    for p in probers.values():
        p.stop()
    load.stop()
    load.final_reads()

    t.case("every acknowledged write is on every member")
    check_acked_everywhere(t, c, load)

    t.case("the history is linearizable")
    check_linearizable(t, load)

    t.case("SIGTERM every member")
    c.stop_all()


def _put_ok(m):
    m.put("ss/after-sigcont", "x", timeout=1)
    return True


main(test)
