#!/usr/bin/python3
"""Removing members under load, from 5 members: a follower, then the leader
(etcdctl member remove). Each removed member leaves the member list of every
other and stops by itself (etcd exits with code 0 once it learns it was
removed); the rest elect a leader when needed and keep acknowledging writes.
Then every acknowledged write is on the 3 remaining members and the history
(which includes operations through the removed members before their
removal) is linearizable.

    /usr/bin/python3 tests/cluster/test_member_remove.py <build-dir>
    CAIRN_TEST_SERVER=etcd /usr/bin/python3 tests/cluster/test_member_remove.py <build-dir>
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clusterlib import main  # noqa: E402
from history import Load, check_acked_everywhere, check_linearizable, wait_acks  # noqa: E402


def test(t):
    t.case("bootstrap 5 members; load through all of them")
    c = t.cluster(5)
    c.start_all()
    load = Load(c, t, "mr", clients=6, keys=12)
    load.start()
    time.sleep(1.5)

    def remove(victim, what):
        t.case("etcdctl member remove %s (%s) under load" % (victim.name, what))
        rest = [m for m in c.members if m is not victim]
        victim.expect_running = False  # it may exit as soon as it learns of its removal
        out, _, _, n = c.ctl_retry("member", "remove", "%x" % victim.id, members=rest,
                                   retry_on=("unhealthy cluster",))
        t.log("%s (%d attempts)" % (out.strip(), n))
        t_removed = time.monotonic_ns()
        c.members = rest
        load.targets = list(rest)
        victim.removed = True

        t.case("%s is gone from the member list of every other member" % victim.name)
        for m in rest:
            t.wait_for(10, lambda: sorted(x["ID"] for x in c.member_list(m)) == sorted(mm.id for mm in rest),
                       "member list through %s holds exactly %s" % (m.name, [mm.name for mm in rest]))

        t.case("%s stops by itself (exit code 0)" % victim.name)
        t.wait_for(15, lambda: not victim.running(), "%s exits after its removal" % victim.name)
        t.eq(0, victim.proc.returncode, "exit code of the removed %s" % victim.name)

        t.case("the others have one leader and keep acknowledging writes")
        leader = c.leader(members=rest)
        acked = wait_acks(t, load, t_removed, 20, what="writes since the removal of %s" % victim.name)
        t.log("leader %s; %d writes acknowledged since the removal" % (leader.name, len(acked)))

    leader = c.leader()
    remove([m for m in c.members if m is not leader][0], "a follower")
    remove(c.leader(), "the leader")

    t.case("stop the load; final reads through the 3 remaining members")
    load.stop()
    load.final_reads()

    t.case("every acknowledged write is on the 3 remaining members")
    check_acked_everywhere(t, c, load)

    t.case("the history is linearizable")
    check_linearizable(t, load)

    t.case("SIGTERM every member")
    c.stop_all()


main(test)
