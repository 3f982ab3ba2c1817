#!/usr/bin/python3
"""Watches opened on the followers see every event once and in order across a
leader change: a prefix watch on each follower, recorded load through all
members, kill -9 of the leader, its restart. Each watch must deliver exactly
the revisions from its start to the end of the load, each once, in order,
every acknowledged write at its revision with its value, and nothing that no
client wrote; a watch replaying the same range afterwards gives the same
events. The history is linearizable too.

    /usr/bin/python3 tests/cluster/test_watch_failover.py <build-dir>
    CAIRN_TEST_SERVER=etcd /usr/bin/python3 tests/cluster/test_watch_failover.py <build-dir>
"""

import os
import queue
import sys
import threading
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clusterlib import main, grpc_error_text  # noqa: E402
from history import Load, check_linearizable  # noqa: E402
import linearize as L  # noqa: E402
import etcd3.etcdrpc as rpc  # noqa: E402

PREFIX = b"wf/"


class Watch:
    """A raw Watch stream on one member: one watcher on PREFIX from a start
    revision. events: (revision, type, key, value) in arrival order."""

    def __init__(self, member, start_rev):
        self.member = member
        self.start_rev = start_rev
        self.events = []
        self.created = threading.Event()
        self.problem = None  # a cancel or a stream error
        self.reqs = queue.Queue()
        self.reqs.put(rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
            key=PREFIX, range_end=PREFIX[:-1] + bytes([PREFIX[-1] + 1]), start_revision=start_rev)))
        self.call = member.watch_stub().Watch(self._requests())
        self.th = threading.Thread(target=self._read, daemon=True)
        self.th.start()

    def _requests(self):
        while True:
            r = self.reqs.get()
            if r is None:
                return
            yield r

    def _read(self):
        try:
            for resp in self.call:
                if resp.created:
                    self.created.set()
                if resp.canceled:
                    self.problem = "canceled by the server: %r (compact revision %d)" % (
                        resp.cancel_reason, resp.compact_revision)
                for ev in resp.events:
                    self.events.append((ev.kv.mod_revision, "DELETE" if ev.type == 1 else "PUT",
                                        ev.kv.key.decode(), ev.kv.value.decode()))
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                self.problem = "the stream failed: %s" % grpc_error_text(e)

    def close(self):
        self.reqs.put(None)
        self.call.cancel()

    def last_rev(self):
        return self.events[-1][0] if self.events else 0


def check_watch(t, w, end_rev, load, what):
    """The checks on one watch's events; returns them."""
    t.wait_for(20, lambda: w.problem or w.last_rev() >= end_rev,
               "%s: events up to revision %d (got up to %d)" % (what, end_rev, w.last_rev()))
    if w.problem:
        t.fail("%s on %s: %s" % (what, w.member.name, w.problem))
    evs = list(w.events)
    revs = [e[0] for e in evs]
    for i in range(1, len(revs)):
        if revs[i] <= revs[i - 1]:
            t.fail("%s on %s: event %d has revision %d after %d (%s): out of order or duplicated;"
                   " events around it: %s" % (what, w.member.name, i, revs[i], revs[i - 1],
                                               "duplicate" if revs[i] == revs[i - 1] else "back in time",
                                               evs[max(0, i - 3):i + 3]))
    want = list(range(w.start_rev, end_rev + 1))
    if revs != want:
        missing = sorted(set(want) - set(revs))
        extra = sorted(set(revs) - set(want))
        t.fail("%s on %s: expected each revision %d..%d once; missing %d (first: %s), unexpected %d (first: %s)"
               % (what, w.member.name, w.start_rev, end_rev, len(missing), missing[:10], len(extra), extra[:10]))
    byrev = {e[0]: e for e in evs}
    for o in load.acked_writes():
        e = byrev.get(o.rev)
        if e is None or (e[1], e[2], e[3]) != ("PUT", o.key, o.value):
            t.fail("%s on %s: the acknowledged write %s is not the event at revision %d: %s"
                   % (what, w.member.name, o.describe(t.t0_ns), o.rev, e))
    acked_revs = {o.rev for o in load.acked_writes()}
    maybe = {(o.key, o.value) for o in load.ops if o.kind in (L.PUT, L.CAS) and o.outcome == L.UNKNOWN}
    for e in evs:
        if e[0] not in acked_revs and (e[2], e[3]) not in maybe:
            t.fail("%s on %s: event %s was written by no client (neither acknowledged nor of unknown outcome)"
                   % (what, w.member.name, e))
    t.log("%s on %s: %d events, revisions %d..%d, each once, in order"
          % (what, w.member.name, len(evs), w.start_rev, end_rev))
    return evs


def test(t):
    t.case("bootstrap 3 members")
    c = t.cluster(3)
    c.start_all()
    leader = c.leader()
    followers = [m for m in c.members if m is not leader]
    start = leader.revision(serializable=False) + 1

    t.case("a prefix watch on each follower (%s), from revision %d" % ([m.name for m in followers], start))
    watches = [Watch(m, start) for m in followers]
    for w in watches:
        if not w.created.wait(10):
            t.fail("the watch on %s was not created within 10 s (%s)" % (w.member.name, w.problem))

    t.case("load through all members (keys under %s)" % PREFIX.decode())
    load = Load(c, t, PREFIX.decode().rstrip("/"), clients=6, keys=12)
    load.start()
    time.sleep(2)

    t.case("kill -9 the leader %s under load; a new leader takes over" % leader.name)
    c.kill9(leader)
    new = c.leader(members=followers)
    t.log("new leader: %s" % new.name)
    time.sleep(2)

    t.case("restart %s under load" % leader.name)
    c.restart(leader)
    time.sleep(2)

    t.case("stop the load")
    load.stop()
    end = max(m.revision(serializable=False) for m in c.members)
    t.log("revisions %d..%d; %s" % (start, end, load.summary()))
    t.check(end - start > 100, "only %d revisions written" % (end - start))

    t.case("each follower's watch: every revision once, in order, matching the writes")
    lists = [check_watch(t, w, end, load, "the live watch") for w in watches]
    t.eq(lists[0], lists[1], "the events of the two followers' watches")

    t.case("a watch replaying %d..%d on every member gives the same events" % (start, end))
    for m in c.members:
        rw = Watch(m, start)
        evs = check_watch(t, rw, end, load, "the replay")
        rw.close()
        t.eq(lists[0], evs, "the replayed events on %s against the live ones" % m.name)
    for w in watches:
        w.close()

    t.case("the history is linearizable")
    load.final_reads()
    check_linearizable(t, load)

    t.case("SIGTERM every member")
    c.stop_all()


main(test)
