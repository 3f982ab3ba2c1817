#!/usr/bin/python3
"""A 3-member cluster bootstraps; a write through any member is read through
every member; etcdctl with all three endpoints works; every member names the
same leader.

    /usr/bin/python3 tests/cluster/test_bootstrap.py <build-dir>
    CAIRN_TEST_SERVER=etcd /usr/bin/python3 tests/cluster/test_bootstrap.py <build-dir>
"""

import json
import os
import urllib.request
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clusterlib import main  # noqa: E402
import etcd3.etcdrpc as rpc  # noqa: E402


def test(t):
    t.case("bootstrap 3 members (--initial-cluster-state new)")
    c = t.cluster(3)
    c.start_all()

    t.case("member list: the same 3 members through every member")
    want = sorted((m.name, (m.peer_url,), (m.url,)) for m in c.members)
    for m in c.members:
        d = c.ctl_json("member", "list", members=[m])
        got = sorted((x.get("name", ""), tuple(x.get("peerURLs", [])), tuple(x.get("clientURLs", [])))
                     for x in d["members"])
        t.eq(want, got, "member list through %s (name, peer URLs, client URLs)" % m.name)
        ids = sorted(x["ID"] for x in d["members"])
        t.eq(sorted(mm.id for mm in c.members), ids, "member IDs through %s" % m.name)
        t.check(d["header"]["cluster_id"] != 0, "cluster ID through %s is 0" % m.name)
    cids = {c.ctl_json("member", "list", members=[m])["header"]["cluster_id"] for m in c.members}
    t.eq(1, len(cids), "number of distinct cluster IDs across the members (%s)" % cids)

    t.case("endpoint status with all three endpoints: one leader, the same everywhere")
    leader = c.leader()
    st = c.ctl_json("endpoint", "status")
    t.eq(3, len(st), "entries of endpoint status")
    leaders = {e["Endpoint"]: e["Status"]["leader"] for e in st}
    t.eq(1, len(set(leaders.values())), "the leader each member reports (%s)" % leaders)
    t.eq(leader.id, list(leaders.values())[0], "the leader's ID")
    self_leaders = [e["Endpoint"] for e in st if e["Status"]["header"]["member_id"] == e["Status"]["leader"]]
    t.eq([leader.endpoint], self_leaders, "members that are their own leader")
    t.log("leader: %s (%x)" % (leader.name, leader.id))

    t.case("a write through each member is read through every member")
    for w in c.members:
        r = w.put("boot/from-" + w.name, "written through " + w.name)
        rev = r.header.revision
        for m in c.members:
            value, kv, _ = m.get("boot/from-" + w.name)
            t.eq(b"written through " + w.name.encode(), value,
                 "linearizable get through %s of the key written through %s" % (m.name, w.name))
            t.eq(rev, kv.mod_revision, "mod revision through %s" % m.name)
        for m in c.members:
            t.wait_for(10, lambda: m.get("boot/from-" + w.name, serializable=True)[0] is not None,
                       "serializable get through %s of the key written through %s" % (m.name, w.name))

    t.case("etcdctl with all three endpoints: put, get, del")
    out, _, _ = c.ctl("put", "boot/ctl", "v1")
    t.eq("OK\n", out, "etcdctl put")
    for m in c.members:
        out, _, _ = c.ctl("get", "boot/ctl", "--print-value-only", members=[m])
        t.eq("v1\n", out, "etcdctl get through %s" % m.name)
    out, _, _ = c.ctl("del", "boot/ctl")
    t.eq("1\n", out, "etcdctl del")
    for m in c.members:
        out, _, _ = c.ctl("get", "boot/ctl", members=[m])
        t.eq("", out, "etcdctl get through %s after the delete" % m.name)

    t.case("leases through every member: grant, keep-alive, time-to-live, list, revoke")
    for m in c.members:
        ls = rpc.LeaseStub(m.chan())
        g = ls.LeaseGrant(rpc.LeaseGrantRequest(TTL=30), timeout=5)
        t.check(g.ID != 0 and g.TTL == 30, "grant through %s: %s" % (m.name, g))
        t.eq(m.id, g.header.member_id, "member id in the grant's header through %s" % m.name)
        key = "boot/lease-" + m.name
        m.kv().Put(rpc.PutRequest(key=key.encode(), value=b"v", lease=g.ID), timeout=5)
        ka = list(ls.LeaseKeepAlive(iter([rpc.LeaseKeepAliveRequest(ID=g.ID)]), timeout=5))
        t.eq([(g.ID, 30)], [(r.ID, r.TTL) for r in ka], "keep-alive through %s" % m.name)
        t.eq(m.id, ka[0].header.member_id, "member id in the keep-alive's header through %s" % m.name)
        ttl = ls.LeaseTimeToLive(rpc.LeaseTimeToLiveRequest(ID=g.ID, keys=True), timeout=5)
        t.eq([key.encode()], list(ttl.keys), "keys of the lease through %s" % m.name)
        t.check(0 < ttl.TTL <= 30, "remaining TTL through %s: %d" % (m.name, ttl.TTL))
        listed = [x.ID for x in ls.LeaseLeases(rpc.LeaseLeasesRequest(), timeout=5).leases]
        t.check(g.ID in listed, "lease %x listed through %s: %s" % (g.ID, m.name, listed))
        ls.LeaseRevoke(rpc.LeaseRevokeRequest(ID=g.ID), timeout=5)
        for other in c.members:
            t.eq(None, other.get(key)[0], "the revoked lease's key through %s" % other.name)

    t.case("endpoint health: every member healthy")
    h = c.ctl_json("endpoint", "health")
    t.eq(sorted(m.endpoint for m in c.members), sorted(e["endpoint"].replace("http://", "") for e in h),
         "endpoints in endpoint health")
    t.check(all(e["health"] for e in h), "endpoint health: %s" % h)

    t.case("GET /health on every member (the HTTP endpoint, a quorum read on followers too)")
    for m in c.members:
        body = urllib.request.urlopen("http://%s/health" % m.endpoint, timeout=5).read()
        t.eq(True, json.loads(body).get("health") == "true", "/health through %s: %r" % (m.name, body))

    t.case("every member is at the same revision")
    rev = c.members[0].revision(serializable=False)
    for m in c.members:
        t.wait_for(10, lambda: m.revision() == rev, "%s at revision %d" % (m.name, rev))

    t.case("SIGTERM every member, the leader last: each exits cleanly within 10 s")
    took = c.stop_all()
    t.log("seconds to exit: %s" % {k: round(v, 2) for k, v in took.items()})


main(test)
