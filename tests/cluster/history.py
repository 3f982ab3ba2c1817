"""tests/cluster/history.py: concurrent clients that record every operation,
and the checks run on what they recorded.

Load(cluster, t, prefix) runs `clients` threads; each does, as fast as the
servers answer, on a key drawn from a small pool: a put of a unique value, a
linearizable get, or a compare-and-swap (a Txn: value(key) = the value this
client last saw ? put(key, unique)). Each goes to a member chosen round-robin
among load.targets (default: the cluster's current members), with a deadline
of op_timeout seconds. Every operation is recorded as a linearize.Op with its
invocation and completion times (time.monotonic_ns()) and its outcome:
  ok       a response (a cas that did not succeed is an ok cas with result False)
  fail     refused before it reached any server (gRPC UNAVAILABLE "failed to
           connect"): it cannot have taken effect
  unknown  any other error (deadline, connection lost, "request timed out",
           leader changes...): it may have taken effect, or not
An acknowledged write (put, or a cas that succeeded) also records the
revision from its response header.

Per-key histories are kept short so that the checker stays fast: a key is
retired after ops_per_key operations, or once unknowns_per_key of its writes
had an unknown outcome (each one multiplies the states the search may visit),
and a fresh key takes its slot. A client pauses error_pause_s after an error,
so that a failover does not pile up unknown outcomes.

Checks:
  check_linearizable(t, load)  every key's history is linearizable (after
                               final_reads added a linearizable get of every
                               key through every live member)
  check_acked_everywhere(t, cluster, load)  every acknowledged write is on
      every live member: Range(key, revision=its revision, serializable) gives
      its value with that mod revision; no two acked writes share a revision
"""

import threading
import time

import grpc

import etcd3.etcdrpc as rpc

import linearize as L
from clusterlib import TestFailure, grpc_error_text


def classify(e):
    """An RPC error's outcome: FAIL when the request surely never reached a
    server, UNKNOWN otherwise."""
    try:
        code, det = e.code(), (e.details() or "")
    except Exception:
        return L.UNKNOWN, repr(e)
    text = "%s %s" % (code.name, det)
    if code == grpc.StatusCode.UNAVAILABLE and ("failed to connect" in det.lower()
                                                 or "connection refused" in det.lower()):
        return L.FAIL, text
    return L.UNKNOWN, text


class Load:
    def __init__(self, cluster, t, prefix, clients=6, keys=12, ops_per_key=150, op_timeout=2.0,
                 read_rate=0.35, cas_rate=0.2, pause_s=0.0, unknowns_per_key=4, error_pause_s=0.05):
        self.cluster = cluster
        self.t = t
        self.prefix = prefix
        self.nclients = clients
        self.op_timeout = op_timeout
        self.read_rate = read_rate
        self.cas_rate = cas_rate
        self.ops_per_key = ops_per_key
        self.pause_s = pause_s
        self.unknowns_per_key = unknowns_per_key
        self.error_pause_s = error_pause_s
        self.key_unknowns = {}
        self.targets = list(cluster.members)
        self.ops = []
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()
        self.threads = []
        self.slots = ["%s/k%02d.0" % (prefix, i) for i in range(keys)]
        self.key_count = {}
        self.key_gen = [0] * keys
        self.errors = []  # unexpected exceptions in the clients
        self.next_id = 0
        self.rr = 0

    # ------------------------------------------------------------ running

    def start(self):
        for c in range(self.nclients):
            th = threading.Thread(target=self._client, args=(c,), daemon=True)
            th.start()
            self.threads.append(th)

    def stop(self):
        self.stop_ev.set()
        for th in self.threads:
            th.join(timeout=self.op_timeout + 10)
        if self.errors:
            raise TestFailure("a load client hit an unexpected error: %s" % self.errors[0])

    def run_for(self, seconds):
        self.start()
        time.sleep(seconds)
        self.stop()

    def _pick(self, rng):
        with self.lock:
            i = rng.randrange(len(self.slots))
            key = self.slots[i]
            n = self.key_count.get(key, 0)
            if n >= self.ops_per_key or self.key_unknowns.get(key, 0) >= self.unknowns_per_key:
                self.key_gen[i] += 1
                key = "%s/k%02d.%d" % (self.prefix, i, self.key_gen[i])
                self.slots[i] = key
                n = 0
            self.key_count[key] = n + 1
            targets = self.targets
            m = targets[self.rr % len(targets)]
            self.rr += 1
            self.next_id += 1
            return key, m, self.next_id

    def record(self, op):
        with self.lock:
            self.ops.append(op)
            if op.outcome == L.UNKNOWN and op.kind != L.GET:
                self.key_unknowns[op.key] = self.key_unknowns.get(op.key, 0) + 1

    def _client(self, c):
        import random
        rng = random.Random(self.t.seed * 1000 + c)
        seen = {}  # key -> the last value this client read or wrote
        n = 0
        name = "c%d" % c
        try:
            while not self.stop_ev.is_set():
                n += 1
                key, m, oid = self._pick(rng)
                r = rng.random()
                if r < self.read_rate:
                    op = self.do_get(m, key, name, oid)
                    if op.outcome == L.OK:
                        seen[key] = op.result
                elif r < self.read_rate + self.cas_rate and seen.get(key) is not None:
                    value = "%s-%d" % (name, n)
                    op = self.do_cas(m, key, seen[key], value, name, oid)
                    if op.outcome == L.OK and op.result:
                        seen[key] = value
                else:
                    value = "%s-%d" % (name, n)
                    op = self.do_put(m, key, value, name, oid)
                    if op.outcome == L.OK:
                        seen[key] = value
                if self.pause_s:
                    time.sleep(self.pause_s)
                if op.outcome != L.OK and self.error_pause_s:
                    time.sleep(self.error_pause_s)
        except Exception as e:  # a bug in the client itself, or a wrong answer
            import traceback
            self.errors.append("%s: %r\n%s" % (name, e, traceback.format_exc()))

    # ------------------------------------------------------------ operations

    def do_put(self, m, key, value, client, oid, timeout=None):
        t_inv = time.monotonic_ns()
        try:
            r = m.kv().Put(rpc.PutRequest(key=key.encode(), value=value.encode()),
                           timeout=timeout or self.op_timeout)
            op = L.Op(L.PUT, key, t_inv, time.monotonic_ns(), L.OK, value=value, client=client,
                      member=m.name, id=oid, note="rev %d" % r.header.revision)
            op.rev = r.header.revision
        except grpc.RpcError as e:
            outcome, text = classify(e)
            op = L.Op(L.PUT, key, t_inv, time.monotonic_ns(), outcome, value=value, client=client,
                      member=m.name, id=oid, note=text)
            op.rev = None
        op.t_end = time.monotonic_ns()
        self.record(op)
        return op

    def do_get(self, m, key, client, oid, timeout=None):
        t_inv = time.monotonic_ns()
        try:
            r = m.kv().Range(rpc.RangeRequest(key=key.encode()), timeout=timeout or self.op_timeout)
            val = r.kvs[0].value.decode() if r.kvs else None
            op = L.Op(L.GET, key, t_inv, time.monotonic_ns(), L.OK, result=val, client=client,
                      member=m.name, id=oid, note="rev %d" % r.header.revision)
        except grpc.RpcError as e:
            outcome, text = classify(e)
            op = L.Op(L.GET, key, t_inv, time.monotonic_ns(), outcome, client=client, member=m.name,
                      id=oid, note=text)
        op.rev = None
        op.t_end = time.monotonic_ns()
        self.record(op)
        return op

    def do_cas(self, m, key, expect, value, client, oid, timeout=None):
        t_inv = time.monotonic_ns()
        k = key.encode()
        req = rpc.TxnRequest(
            compare=[rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.VALUE, key=k,
                                 value=expect.encode())],
            success=[rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=value.encode()))])
        try:
            r = m.kv().Txn(req, timeout=timeout or self.op_timeout)
            op = L.Op(L.CAS, key, t_inv, time.monotonic_ns(), L.OK, expect=expect, value=value,
                      result=bool(r.succeeded), client=client, member=m.name, id=oid,
                      note="rev %d" % r.header.revision)
            op.rev = r.header.revision if r.succeeded else None
        except grpc.RpcError as e:
            outcome, text = classify(e)
            op = L.Op(L.CAS, key, t_inv, time.monotonic_ns(), outcome, expect=expect, value=value,
                      client=client, member=m.name, id=oid, note=text)
            op.rev = None
        op.t_end = time.monotonic_ns()
        self.record(op)
        return op

    # ------------------------------------------------------------ views

    def keys(self):
        with self.lock:
            return sorted({o.key for o in self.ops})

    def acked_writes(self):
        return [o for o in self.ops if o.outcome == L.OK and o.rev is not None]

    def summary(self):
        """Counts by kind and outcome ("cas ok" counts both results; how
        many of them succeeded is in parentheses)."""
        by = {}
        for o in self.ops:
            by[(o.kind, o.outcome)] = by.get((o.kind, o.outcome), 0) + 1
        won = sum(1 for o in self.ops if o.kind == L.CAS and o.outcome == L.OK and o.result)
        return ", ".join("%s %s: %d%s" % (k, oc, n, (" (%d succeeded)" % won) if (k, oc) == (L.CAS, L.OK) else "")
                         for (k, oc), n in sorted(by.items()))

    def error_counts(self, since_ns=0, names=None, top=4):
        """The most frequent errors (outcome and text) since since_ns,
        through the named members (default all): for failure messages."""
        counts = {}
        with self.lock:
            for o in self.ops:
                if o.outcome != L.OK and o.t_inv >= since_ns and (names is None or o.member in names):
                    k = "%s: %s" % (o.outcome, o.note)
                    counts[k] = counts.get(k, 0) + 1
        return "; ".join("%dx %s" % (n, k) for k, n in sorted(counts.items(), key=lambda x: -x[1])[:top]) or "none"

    def ops_between(self, t_from, t_to, kinds=(L.PUT, L.CAS)):
        return [o for o in self.ops if o.kind in kinds and o.t_inv >= t_from and o.t_end <= t_to]

    def final_reads(self, members=None, timeout=5, parallel=16):
        """A linearizable get of every key through every given member (default:
        the live ones), added to the history, parallel gets at a time. Retries
        a read up to 5 times (a member just restarted may still be catching
        up); a read that fails 5 times fails the test."""
        from concurrent.futures import ThreadPoolExecutor
        ms = members or self.cluster.live()

        def one(key, m):
            for attempt in range(5):
                op = self.do_get(m, key, "final", -1, timeout=timeout)
                if op.outcome == L.OK:
                    return None
                with self.lock:
                    self.ops.remove(op)
                time.sleep(0.3)
            return "final read of %s through %s failed 5 times: %s" % (key, m.name, op.note)

        with ThreadPoolExecutor(max_workers=parallel) as pool:
            errors = [e for e in pool.map(lambda km: one(*km), [(k, m) for k in self.keys() for m in ms]) if e]
        if errors:
            raise TestFailure("%d final reads failed, e.g. %s" % (len(errors), errors[0]))


def check_linearizable(t, load, what="the history"):
    """Checks every key; fails the test with the checker's report."""
    t0 = time.monotonic()
    ok, results, report = L.check(load.ops, t0=t.t0_ns)
    took = time.monotonic() - t0
    nkeys = len(results)
    states = sum(r.states for r in results)
    t.log("linearizability: %d operations on %d keys (%s); checked in %.2f s, %d states"
          % (len(load.ops), nkeys, load.summary(), took, states))
    if not ok:
        t.fail("%s is not linearizable (times are seconds from the start of the test; the note is the"
               " response's revision or the error):\n%s" % (what, report))


def check_acked_everywhere(t, cluster, load, members=None, timeout=20):
    """Every acknowledged write is on every given member (default: live)."""
    acked = load.acked_writes()
    if not acked:
        t.fail("no write was acknowledged at all (%s)" % load.summary())
    byrev = {}
    for o in acked:
        if o.rev in byrev:
            p = byrev[o.rev]
            t.fail("two acknowledged writes got the same revision %d:\n  %s\n  %s"
                   % (o.rev, p.describe(t.t0_ns), o.describe(t.t0_ns)))
        byrev[o.rev] = o
    maxrev = max(byrev)
    for m in (members or cluster.live()):
        t.wait_for(timeout, lambda: m.revision() >= maxrev,
                   "%s reaches revision %d, the highest acknowledged one" % (m.name, maxrev))
        kv = m.kv()
        for i in range(0, len(acked), 200):
            batch = acked[i:i + 200]
            futs = [(o, kv.Range.future(rpc.RangeRequest(key=o.key.encode(), revision=o.rev, serializable=True),
                                        timeout=10)) for o in batch]
            for o, f in futs:
                try:
                    r = f.result()
                except grpc.RpcError as e:
                    t.fail("%s: reading %s at revision %d failed: %s" % (m.name, o.key, o.rev, grpc_error_text(e)))
                got = [(kv_.value.decode(), kv_.mod_revision) for kv_ in r.kvs]
                if got != [(o.value, o.rev)]:
                    t.fail("%s: the acknowledged write is not there: key %s at revision %d holds %r, expected"
                           " [(%r, %d)]\n  the write: %s" % (m.name, o.key, o.rev, got, o.value, o.rev,
                                                             o.describe(t.t0_ns)))
    t.log("all %d acknowledged writes are on %s (up to revision %d)"
          % (len(acked), ", ".join(m.name for m in (members or cluster.live())), maxrev))
    return maxrev


class Prober:
    """A client pinned to one member, putting unique values one after the
    other (every interval_s) on its own keys, recorded into load's history:
    shows when writes through that member were acknowledged, and when not.
    Its keys rotate every ops_per_key operations, like the load's."""

    def __init__(self, load, member, interval_s=0.02, timeout=2.0):
        self.load = load
        self.member = member
        self.interval_s = interval_s
        self.timeout = timeout
        self.name = "probe-" + member.name
        self.stop_ev = threading.Event()
        self.th = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.th.start()
        return self

    def stop(self):
        self.stop_ev.set()
        self.th.join(timeout=self.timeout + 10)

    def _run(self):
        n = 0
        try:
            while not self.stop_ev.is_set():
                n += 1
                key = "%s/%s.%d" % (self.load.prefix, self.name, n // self.load.ops_per_key)
                self.load.do_put(self.member, key, "%s-%d" % (self.name, n), self.name, -n, timeout=self.timeout)
                self.stop_ev.wait(self.interval_s)
        except Exception as e:
            import traceback
            self.load.errors.append("%s: %r\n%s" % (self.name, e, traceback.format_exc()))

    def ops(self, t_from=0, t_to=None):
        t_to = t_to or time.monotonic_ns()
        with self.load.lock:
            return [o for o in self.load.ops if o.client == self.name and o.t_inv >= t_from and o.t_end <= t_to]


def longest_gap_s(ops, t_from, t_to):
    """The longest time in [t_from, t_to] (ns) without an acknowledged op
    among ops, in seconds."""
    acks = sorted(o.t_ret for o in ops if o.outcome == L.OK and t_from <= o.t_ret <= t_to)
    points = [t_from] + acks + [t_to]
    return max(b - a for a, b in zip(points, points[1:])) / 1e9


def wait_acks(t, load, since_ns, n, members=None, timeout=10, what="writes"):
    """Waits until at least n writes invoked after since_ns were acknowledged
    (through the given members, default any); returns them."""
    names = None if members is None else {m.name for m in members}

    def acked():
        with load.lock:
            ops = [o for o in load.ops if o.kind in (L.PUT, L.CAS) and o.t_inv >= since_ns and o.outcome == L.OK
                   and o.rev is not None and (names is None or o.member in names)]
        return ops if len(ops) >= n else None

    try:
        return t.wait_for(timeout, acked, "")
    except TestFailure:
        t.fail("fewer than %d %s acknowledged%s within %d s (%s); the errors they got: %s"
               % (n, what, "" if names is None else " through " + "/".join(sorted(names)), timeout,
                  load.summary(), load.error_counts(since_ns, names)))
