#!/usr/bin/python3
"""libcairn's informer (tests/client/client_informer_probe.c) under
concurrent writers and compactions, and its re-list after a compaction:

1. probe A through all three endpoints, probe B through the leader only;
   two writers put and delete keys under the prefix through every member
   while the test compacts at increasing revisions; at each check point A's
   map, printed at its revision R, equals a Range of the prefix at R
   (linearizable, at revision R); after the writers stop, A's and B's maps
   equal a linearizable Range;
2. B's member (the leader) is killed -9; meanwhile 3 keys are added, 2 updated, 2
   deleted and the store compacted past B's revision; the member restarts
   (B held with SIGSTOP until the member has applied the compaction, so
   that B's watch cannot resume): B lists again and reports exactly those
   differences (3 adds, 2 updates, 2 deletes), and its map equals the Range.

    /usr/bin/python3 tests/cluster/test_client_informer.py <build-dir>
    CAIRN_TEST_SERVER=etcd /usr/bin/python3 tests/cluster/test_client_informer.py <build-dir>
"""

import os
import signal
import sys
import threading
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clusterlib import main  # noqa: E402
from probelib import Probe, dump, fresh_revision  # noqa: E402
import etcd3.etcdrpc as rpc  # noqa: E402

PREFIX = b"cinf/"
KEYS = 30


def prefix_end(p):
    return p[:-1] + bytes([p[-1] + 1])


def range_map(m, revision=0):
    """The prefix through m (linearizable), at revision (0: now): (header
    revision, {key: (value, mod, create, version, lease)})."""
    r = m.kv().Range(rpc.RangeRequest(key=PREFIX, range_end=prefix_end(PREFIX), revision=revision), timeout=5)
    return r.header.revision, {kv.key: (kv.value, kv.mod_revision, kv.create_revision, kv.version, kv.lease)
                               for kv in r.kvs}


def compare(t, what, want, got):
    if want == got:
        return
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    differ = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    t.fail("%s: the informer's map differs from the Range: %d keys missing (%s), %d extra (%s), %d differ (%s)"
           % (what, len(missing), missing[:5], len(extra), extra[:5], len(differ),
              [(k, want[k], got[k]) for k in differ[:3]]))


class Writers:
    """Threads putting and deleting random keys of the prefix through every
    member in turn, until stop(); errors are counted, not failures."""

    def __init__(self, t, members, n=2):
        self.t = t
        self.members = members
        self.stop_ev = threading.Event()
        self.ops = 0
        self.errors = 0
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]
        for th in self.threads:
            th.start()

    def _run(self, i):
        rng = __import__("random").Random(self.t.seed + i)
        n = 0
        while not self.stop_ev.is_set():
            m = self.members[n % len(self.members)]
            n += 1
            key = PREFIX + b"k%02d" % rng.randrange(KEYS)
            try:
                if rng.random() < 0.3:
                    m.kv().DeleteRange(rpc.DeleteRangeRequest(key=key), timeout=2)
                else:
                    m.kv().Put(rpc.PutRequest(key=key, value=b"v%d.%d" % (i, n)), timeout=2)
                self.ops += 1
            except grpc.RpcError:
                self.errors += 1
            time.sleep(0.005)

    def stop(self):
        self.stop_ev.set()
        for th in self.threads:
            th.join(timeout=10)


def test(t):
    t.case("bootstrap 3 members, %d keys under %s" % (KEYS // 2, PREFIX.decode()))
    c = t.cluster(3)
    c.start_all()
    leader = c.leader()
    f = leader  # B's only endpoint (a killed leader restarts faster than a killed follower)
    for i in range(KEYS // 2):
        leader.put(PREFIX + b"k%02d" % i, "initial")

    t.case("probe A through every member, probe B through %s (the leader) only" % f.name)
    pa = Probe(t, "client_informer_probe", ["--endpoints", c.endpoints(), "--prefix", PREFIX.decode(),
                                            "--quiet"], stdin=True)
    pb = Probe(t, "client_informer_probe", ["--endpoints", f.endpoint, "--prefix", PREFIX.decode(),
                                            "--quiet"], stdin=True)
    for p in (pa, pb):
        p.wait(lambda x: x.startswith("SYNCED "), 10, "the first list")

    t.case("concurrent writers; at each check point A's map at R equals the Range at R; compact at R")
    w = Writers(t, c.members)
    last = 0
    for i in range(5):
        time.sleep(0.7)
        rev, got = dump(pa, last + 1)
        _, want = range_map(leader, rev)
        compare(t, "check point %d at revision %d" % (i, rev), want, got)
        leader.kv().Compact(rpc.CompactionRequest(revision=rev), timeout=5)
        t.log("check point %d: revision %d, %d keys, compacted at %d" % (i, rev, len(got), rev))
        last = rev
    w.stop()
    t.log("%d writes (%d errors)" % (w.ops, w.errors))

    t.case("writers stopped: A's and B's maps equal a linearizable Range")
    end, want = range_map(leader)
    for p in (pa, pb):
        rev, got = dump(p, end)
        compare(t, "%s after the writers" % p.name, want, got)

    t.case("kill -9 %s (B's only endpoint); 3 adds, 2 updates, 2 deletes; compact" % f.name)
    c.kill9(f)
    leader = c.leader(members=[m for m in c.members if m is not f])
    keys = sorted(want)
    present = [k for k in keys]
    absent = [PREFIX + b"new%d" % i for i in range(3)]
    for k in absent:
        leader.put(k, "added")
    for k in present[:2]:
        leader.put(k, "updated")
    for k in present[2:4]:
        leader.kv().DeleteRange(rpc.DeleteRangeRequest(key=k), timeout=5)
    now = leader.revision(serializable=False)
    leader.kv().Compact(rpc.CompactionRequest(revision=now), timeout=5)

    t.case("restart %s with B stopped; resume B: it lists again, only the differences" % f.name)
    mark = len(pb.snapshot())
    pb.signal(signal.SIGSTOP)
    t0 = time.monotonic()
    c.start(f)
    t.wait_for(20, lambda: fresh_revision(f) >= now, "%s applied the compaction at %d" % (f.name, now))
    t.log("%s restarted and caught up in %.1f s" % (f.name, time.monotonic() - t0))
    t0 = time.monotonic()
    pb.signal(signal.SIGCONT)
    i, line = pb.wait(lambda x: x.startswith("SYNCED ") and x.split()[2] == "1", 15,
                      "a re-list after the compaction", mark)
    t.log("B listed again %.1f s after SIGCONT" % (pb.times[i] - t0))
    fld = line.split()
    t.eq((3, 2, 2), (int(fld[3]), int(fld[4]), int(fld[5])),
         "(adds, updates, deletes) reported by the re-list (%s)" % line)
    end, want = range_map(leader)
    rev, got = dump(pb, end)
    compare(t, "B after the re-list", want, got)
    rev, got = dump(pa, end)
    compare(t, "A at the end", want, got)
    t.log("re-list: %s" % line)

    t.case("SIGTERM the probes and every member")
    for p in (pa, pb):
        t.check(not any(x.startswith("END ") for x in p.snapshot()), "%s ended by itself%s" % (p.name, p.tail()))
        p.stop()
    c.stop_all()


main(test)
