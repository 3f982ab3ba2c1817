#!/usr/bin/python3
"""libcairn's lease keep-alive across failures (tests/client/client_lease_probe.c):
the probe grants a lease with TTL 3 s, attaches two keys to it and keeps it
alive through all three endpoints, the leader first. kill -9 of the leader
(the member the probe is connected to), its restart, then kill -9 of the
member the probe renews through now, and its restart: 10 s after the first
kill the lease still exists (LeaseTimeToLive through python: TTL > 0, both
keys attached), the keys are still there, and renewals went on after each
kill.

    /usr/bin/python3 tests/cluster/test_client_lease_failover.py <build-dir>
    CAIRN_TEST_SERVER=etcd /usr/bin/python3 tests/cluster/test_client_lease_failover.py <build-dir>
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clusterlib import main  # noqa: E402
from probelib import Probe, fresh_channel, fresh_revision  # noqa: E402
import etcd3.etcdrpc as rpc  # noqa: E402

PREFIX = "clf/"
TTL = 3


def renewals(probe, start=0):
    """(line index, ttl, endpoint) of the RENEWED lines from start on."""
    out = []
    for i, line in enumerate(probe.snapshot()):
        if i >= start and line.startswith("RENEWED "):
            f = line.split()
            out.append((i, int(f[2]), f[3]))
    return out


def wait_renewal(probe, what):
    """A renewal after now: within the TTL, plus an election and a reconnect."""
    n = len(probe.snapshot())
    t0 = time.monotonic()
    i, _ = probe.wait(lambda x: x.startswith("RENEWED "), 2 * TTL + 4, "a renewal %s" % what, n)
    probe.t.log("a renewal %s: %.1f s later" % (what, probe.times[i] - t0))


def restart(t, c, m):
    t0 = time.monotonic()
    c.start(m)
    t.wait_for(15, lambda: fresh_revision(m) > 1, "%s answers after its restart" % m.name)
    t.log("%s restarted in %.1f s" % (m.name, time.monotonic() - t0))


def test(t):
    t.case("bootstrap 3 members")
    c = t.cluster(3)
    c.start_all()
    leader = c.leader()
    others = [m for m in c.members if m is not leader]

    t.case("the probe grants a %d s lease, puts two keys on it, keeps it alive (through %s first)"
           % (TTL, leader.name))
    probe = Probe(t, "client_lease_probe", ["--endpoints", c.endpoints([leader] + others), "--ttl", str(TTL),
                                            "--put", PREFIX + "a=1", "--put", PREFIX + "b=2"])
    _, line = probe.wait(lambda x: x.startswith("GRANTED ") or x.startswith("END "), 10, "the grant")
    t.check(line.startswith("GRANTED "), "the grant failed: %s%s" % (line, probe.tail()))
    lease_id = int(line.split()[1], 16)
    t.log("lease %x granted through %s" % (lease_id, line.split()[3]))
    probe.wait(lambda x: x.startswith("PUT %sb " % PREFIX), 10, "the two puts")
    probe.wait(lambda x: x.startswith("RENEWED "), TTL + 2, "a first renewal")

    t.case("kill -9 the leader %s (the member the probe is connected to), restart it" % leader.name)
    t_kill = time.monotonic()
    c.kill9(leader)
    new = c.leader(members=others)
    t.log("new leader: %s" % new.name)
    wait_renewal(probe, "after the kill of %s" % leader.name)
    restart(t, c, leader)

    now = renewals(probe)[-1][2]
    m2 = [m for m in c.members if m.endpoint == now]
    t.check(len(m2) == 1, "the probe renews through %r, not one of the members" % now)
    m2 = m2[0]
    t.case("kill -9 %s (the probe renews through it now), restart it" % m2.name)
    c.kill9(m2)
    wait_renewal(probe, "after the kill of %s" % m2.name)
    restart(t, c, m2)

    left = 10 - (time.monotonic() - t_kill)
    if left > 0:
        time.sleep(left)
    t.case("%.0f s after the first kill: the lease lives, with both keys" % (time.monotonic() - t_kill))
    t.check(not any(x.startswith("END ") for x in probe.snapshot()),
            "the keep-alive ended%s" % probe.tail())
    chans = {m.name: fresh_channel(m) for m in c.members}
    r = rpc.LeaseStub(chans[c.members[0].name]).LeaseTimeToLive(
        rpc.LeaseTimeToLiveRequest(ID=lease_id, keys=True), timeout=5)
    t.check(r.TTL > 0, "LeaseTimeToLive of %x: TTL %d (expired)%s" % (lease_id, r.TTL, probe.tail()))
    t.eq(sorted([(PREFIX + "a").encode(), (PREFIX + "b").encode()]), sorted(r.keys),
         "the keys attached to the lease")
    for k, v in (("a", b"1"), ("b", b"2")):
        for m in c.members:
            rr = rpc.KVStub(chans[m.name]).Range(rpc.RangeRequest(key=(PREFIX + k).encode()), timeout=5)
            t.eq([(v, lease_id)], [(x.value, x.lease) for x in rr.kvs], "%s%s read through %s" % (PREFIX, k, m.name))
    t.log("TTL %d s of %d; %d renewals in all" % (r.TTL, r.grantedTTL, len(renewals(probe))))

    for ch in chans.values():
        ch.close()

    t.case("SIGTERM the probe and every member")
    probe.stop()
    c.stop_all()


main(test)
