#!/usr/bin/python3
"""libcairn's watch across failures (tests/client/client_watch_probe.c):

1. a prefix watch through all three endpoints (the leader first, so that
   its stream is on the member that dies), recorded load through the python
   client, kill -9 of the leader mid-load and its restart: the probe prints
   exactly every revision of the load, once each, in order, each
   acknowledged write at its revision with its value, nothing no client
   wrote;
2. a member that stops answering mid-stream (SIGSTOP of the follower the
   watch is on): with a 1 s keep-alive PING the watch moves to another
   member and delivers the writes made meanwhile, each once, within a few
   seconds (no hang).

    /usr/bin/python3 tests/cluster/test_client_watch_failover.py <build-dir>
    CAIRN_TEST_SERVER=etcd /usr/bin/python3 tests/cluster/test_client_watch_failover.py <build-dir>
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clusterlib import main  # noqa: E402
from history import Load  # noqa: E402
import linearize as L  # noqa: E402
from probelib import Probe, unq  # noqa: E402

PREFIX = "cwf/"


def events(probe):
    """(revision, type, key, value) of every EV line so far."""
    out = []
    for line in probe.snapshot():
        if line.startswith("EV "):
            f = line.split(" ")
            out.append((int(f[1]), f[2], unq(f[3]).decode(), unq(f[4]).decode()))
    return out


def check_events(t, probe, start, end, load):
    probe.wait(lambda x: x.startswith("EV ") and int(x.split()[1]) >= end, 20,
               "events up to revision %d" % end)
    evs = [e for e in events(probe) if e[0] <= end]
    revs = [e[0] for e in evs]
    for i in range(1, len(revs)):
        if revs[i] <= revs[i - 1]:
            t.fail("event %d has revision %d after %d (%s); around it: %s%s"
                   % (i, revs[i], revs[i - 1], "duplicate" if revs[i] == revs[i - 1] else "back in time",
                      evs[max(0, i - 3):i + 3], probe.tail()))
    want = list(range(start, end + 1))
    if revs != want:
        missing = sorted(set(want) - set(revs))
        extra = sorted(set(revs) - set(want))
        t.fail("expected each revision %d..%d once; missing %d (first: %s), unexpected %d (first: %s)%s"
               % (start, end, len(missing), missing[:10], len(extra), extra[:10], probe.tail()))
    byrev = {e[0]: e for e in evs}
    for o in load.acked_writes():
        e = byrev.get(o.rev)
        if e is None or (e[1], e[2], e[3]) != ("PUT", o.key, o.value):
            t.fail("the acknowledged write %s is not the event at revision %d: %s"
                   % (o.describe(t.t0_ns), o.rev, e))
    acked = {o.rev for o in load.acked_writes()}
    maybe = {(o.key, o.value) for o in load.ops if o.kind in (L.PUT, L.CAS) and o.outcome == L.UNKNOWN}
    for e in evs:
        if e[0] not in acked and (e[2], e[3]) not in maybe:
            t.fail("event %s was written by no client (neither acknowledged nor of unknown outcome)" % (e,))
    return evs


def test(t):
    t.case("bootstrap 3 members")
    c = t.cluster(3)
    c.start_all()
    leader = c.leader()
    others = [m for m in c.members if m is not leader]
    start = leader.revision(serializable=False) + 1

    t.case("the probe watches %s from revision %d through %s (the leader first)"
           % (PREFIX, start, [leader.name] + [m.name for m in others]))
    probe = Probe(t, "client_watch_probe", ["--endpoints", c.endpoints([leader] + others),
                                            "--prefix", PREFIX, "--start-rev", str(start)])

    t.case("load through all members; kill -9 the leader %s mid-load, restart it" % leader.name)
    load = Load(c, t, PREFIX.rstrip("/"), clients=4, keys=10)
    load.start()
    time.sleep(1.5)
    c.kill9(leader)
    new = c.leader(members=others)
    t.log("new leader: %s" % new.name)
    time.sleep(1.5)
    c.restart(leader)
    time.sleep(1)
    load.stop()
    end = max(m.revision(serializable=False) for m in c.members)
    t.log("revisions %d..%d; %s" % (start, end, load.summary()))
    t.check(end - start > 50, "only %d revisions written" % (end - start))

    t.case("the probe's events: every revision %d..%d once, in order, matching the writes" % (start, end))
    evs = check_events(t, probe, start, end, load)
    eps = [x.split()[1] for x in probe.snapshot() if x.startswith("ENDPOINT ")]
    t.log("%d events; the probe's endpoints in turn: %s" % (len(evs), eps))
    t.check(not any(x.startswith("END ") for x in probe.snapshot()),
            "the watch ended by itself%s" % probe.tail())
    probe.stop()

    t.case("SIGSTOP the follower a watch is on: the watch moves on within its keep-alive")
    leader = c.leader()
    f = [m for m in c.members if m is not leader][0]
    rest = [m for m in c.members if m is not f]
    base = leader.revision(serializable=False)
    probe2 = Probe(t, "client_watch_probe", ["--endpoints", c.endpoints([f] + rest), "--prefix", PREFIX,
                                             "--start-rev", str(base + 1), "--keepalive-time-ms", "1000",
                                             "--keepalive-timeout-ms", "1000", "--dial-timeout-ms", "1000"])
    r = leader.put(PREFIX + "before-stop", "x").header.revision
    probe2.wait(lambda x: x.startswith("EV %d " % r), 10, "the event of the put before the SIGSTOP")
    c.sigstop(f)
    t0 = time.monotonic()
    revs = [leader.put(PREFIX + "during-stop-%d" % i, str(i)).header.revision for i in range(10)]
    probe2.wait(lambda x: x.startswith("EV %d " % revs[-1]), 15,
                "the events written while %s is stopped" % f.name)
    took = time.monotonic() - t0
    t.log("the watch delivered them %.1f s after the SIGSTOP" % took)
    got = [e[0] for e in events(probe2)]
    t.eq(list(range(base + 1, revs[-1] + 1)), got, "the revisions the second watch delivered")
    c.sigcont(f)
    probe2.stop()

    t.case("SIGTERM every member")
    c.stop_all()


main(test)
