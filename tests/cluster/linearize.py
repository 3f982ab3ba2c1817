"""A linearizability checker for histories of single-key register operations.

Pure Python, no server and no gRPC: the cluster tests record their histories
with history.py and check them here; linearize_test.py checks the checker.

The model (per key, an etcd key used as a register):
  put(v)          sets the value to v (values are unique in our histories,
                  the checker does not need them to be)
  get() -> v      reads the value; None means the key is absent
  cas(e, v) -> b  a Txn "value(key) = e ? put(key, v)": succeeded (b True) iff
                  the value was e (a missing key never compares equal, as in
                  etcd), and then sets it to v; b False leaves it unchanged
The initial value of every key is None (absent) unless told otherwise.

Each operation has an invocation time and, when it completed, a completion
time (any clock, the same for all operations: the tests use
time.monotonic_ns()), and an outcome:
  "ok"       it completed with a response: it took effect exactly once,
             between its invocation and its completion;
  "fail"     it certainly did not take effect (e.g. refused before it was
             sent): dropped from the history;
  "unknown"  no response (timeout, connection lost): it may have taken
             effect at any point after its invocation, or never. A get with
             an unknown outcome says nothing and is dropped; an unknown put
             or cas stays, with an infinite completion time and no result.

Keys are independent (a register per key is a local property, Herlihy and
Wing), so each key is searched alone: the history is linearizable iff every
key's is.

The search is Wing & Gong's, with Lowe's memoization: a state is (the set of
operations already linearized, the register value); the next operation to
linearize is any pending one invoked before the earliest completion among the
pending "ok" operations; a state seen before is not explored again. It ends
with success as soon as every "ok" operation is linearized (an unknown
operation left over never took effect). Two reductions keep it small: an
unknown put whose value nobody read and nobody compared against is dropped
when no cas that failed (or may have) completed after its invocation (such a
put can only matter by making a cas fail); failed operations and gets
without a response are dropped.

Bounds: each key's search stops after STATES_MAX distinct states (default
200000) and reports "inconclusive"; a whole check stops searching new keys
once TOTAL_STATES_MAX states (2 million, about 20 s) were used. A test treats
an inconclusive key as a failure with its own message, so that a slow search
never passes silently. The tests keep each
key's history to a few hundred operations with at most ~10 concurrent
clients, which searches in well under a second.
"""

import math

STATES_MAX = 200000
TOTAL_STATES_MAX = 2000000

PUT, GET, CAS = "put", "get", "cas"
OK, FAIL, UNKNOWN = "ok", "fail", "unknown"


class Op:
    """One operation of a history.

    kind: PUT, GET or CAS. key: any hashable. value: the value written (put,
    and cas's new value). expect: cas's compared value. result: get's value
    read (None: absent), cas's succeeded flag. t_inv, t_ret: invocation and
    completion times (t_ret None or math.inf when the outcome is unknown).
    client, member, note: free text for the reports. rev, t_end: for the
    callers (the revision of an acknowledged write; when the client stopped
    waiting), unused here.
    """

    __slots__ = ("id", "kind", "key", "value", "expect", "result", "outcome",
                 "t_inv", "t_ret", "client", "member", "note", "rev", "t_end")

    def __init__(self, kind, key, t_inv, t_ret, outcome, value=None, expect=None,
                 result=None, client="", member="", note="", id=None):
        assert kind in (PUT, GET, CAS), kind
        assert outcome in (OK, FAIL, UNKNOWN), outcome
        self.id = id
        self.kind = kind
        self.key = key
        self.value = value
        self.expect = expect
        self.result = result
        self.outcome = outcome
        self.t_inv = t_inv
        self.t_ret = math.inf if (outcome == UNKNOWN or t_ret is None) else t_ret
        self.client = client
        self.member = member
        self.note = note
        self.rev = None
        self.t_end = t_ret

    def what(self):
        if self.kind == PUT:
            what = "put(%s)" % _fmt(self.value)
        elif self.kind == GET:
            what = "get() -> %s" % (_fmt(self.result) if self.outcome == OK else "?")
        else:
            res = {True: "succeeded", False: "failed", None: "?"}[self.result if self.outcome == OK else None]
            what = "cas(%s -> %s) -> %s" % (_fmt(self.expect), _fmt(self.value), res)
        return what

    def describe(self, t0=0):
        def ts(t):
            if t == math.inf:
                return "     never"
            return "%+10.4f" % ((t - t0) / 1e9)
        what = self.what()
        who = ("%s@%s" % (self.client, self.member)).strip("@")
        return "#%-5s %s..%s %-8s %-14s %s%s" % (
            self.id, ts(self.t_inv), ts(self.t_ret), self.outcome, who, what,
            ("  [%s]" % self.note) if self.note else "")


def _fmt(v):
    if v is None:
        return "<absent>"
    if isinstance(v, bytes):
        try:
            return v.decode()
        except UnicodeDecodeError:
            return repr(v)
    return str(v)


class Result:
    """The verdict for one key: ok True/False, or None when the search hit its
    bound. report: the text to print on failure."""

    def __init__(self, key, ok, states, nops, report=""):
        self.key = key
        self.ok = ok
        self.states = states
        self.nops = nops
        self.report = report


def _prepare(ops):
    """Drops what carries no constraint; returns (oks, unknowns) sorted by
    invocation."""
    keep = [o for o in ops if o.outcome != FAIL and not (o.kind == GET and o.outcome == UNKNOWN)]
    observed = set()
    for o in keep:
        if o.kind == GET and o.outcome == OK:
            observed.add(o.result)
        elif o.kind == CAS and not (o.outcome == OK and o.result is False):
            observed.add(o.expect)
    # An unknown put whose value nobody observed only changes what a later
    # cas compares against: it can matter only to a cas that failed (or may
    # have) and completed after the put's invocation.
    last_failed_cas = max((o.t_ret for o in keep if o.kind == CAS and
                           (o.outcome == UNKNOWN or (o.outcome == OK and o.result is False))), default=-math.inf)
    keep = [o for o in keep if not (o.kind == PUT and o.outcome == UNKNOWN and o.value not in observed
                                    and o.t_inv > last_failed_cas)]
    oks = sorted((o for o in keep if o.outcome == OK), key=lambda o: (o.t_inv, o.t_ret))
    unknowns = sorted((o for o in keep if o.outcome == UNKNOWN), key=lambda o: o.t_inv)
    return oks, unknowns


def _step(op, value):
    """The register after op applied on value, or _NO if op's result is
    impossible there."""
    if op.kind == PUT:
        return op.value
    if op.kind == GET:
        return value if op.result == value else _NO
    # cas
    if op.outcome == UNKNOWN:
        return op.value if (value is not None and value == op.expect) else value
    equal = value is not None and value == op.expect
    if op.result:
        return op.value if equal else _NO
    return value if not equal else _NO


_NO = object()


def check_key(key, ops, initial=None, states_max=STATES_MAX, t0=0):
    """Searches one key's history. Returns a Result."""
    oks, unknowns = _prepare(ops)
    k = len(oks)
    allops = oks + unknowns
    n = len(allops)
    all_ok_mask = (1 << k) - 1
    inv = [o.t_inv for o in allops]
    ret = [o.t_ret for o in allops]
    if k == 0:
        return Result(key, True, 0, n)
    bad = _impossible_read(oks, allops, initial, ops)
    if bad is not None:
        op, why = bad
        return Result(key, False, 0, n, _excerpt(
            key, allops, k, op, t0, "not linearizable: %s" % why))

    seen = set()
    stack = [(0, initial)]
    seen.add((0, initial))
    best_done = -1
    best_state = None
    while stack:
        mask, value = stack.pop()
        free = ~mask & all_ok_mask
        if free == 0:
            return Result(key, True, len(seen), n)
        first = (free & -free).bit_length() - 1
        # The earliest completion among the pending ok ops: ops are sorted by
        # invocation, and an op invoked after the best completion so far
        # completes after it too, so the scan stops there.
        m = math.inf
        cands = []
        j = first
        while j < k and inv[j] <= m:
            if not (mask >> j) & 1:
                if ret[j] < m:
                    m = ret[j]
                cands.append(j)
            j += 1
        cands = [c for c in cands if inv[c] <= m]
        for u in range(k, n):
            if inv[u] > m:
                break
            if not (mask >> u) & 1:
                cands.append(u)
        ndone = bin(mask & all_ok_mask).count("1")
        if ndone > best_done:
            best_done = ndone
            best_state = (mask, value, cands)
        for c in cands:
            nv = _step(allops[c], value)
            if nv is _NO:
                continue
            st = (mask | (1 << c), nv)
            if st in seen:
                continue
            seen.add(st)
            if len(seen) > states_max:
                return Result(key, None, len(seen), n, _report(
                    key, allops, k, best_state, t0,
                    "search bound exceeded: more than %d states for %d operations; the history is"
                    " too long or too concurrent for this key (keep per-key histories shorter)"
                    % (states_max, n)))
            stack.append(st)
    return Result(key, False, len(seen), n, _report(key, allops, k, best_state, t0, "not linearizable"))


def _may_write(o):
    """A put, or a cas that succeeded or whose outcome is unknown."""
    return o.kind == PUT or (o.kind == CAS and (o.outcome == UNKNOWN or o.result))


def _impossible_read(oks, allops, initial, ops):
    """A cheap necessary condition, checked before the search (which would
    take long to exhaust every order before failing): a completed read (a get,
    or a cas that succeeded) sees a value that some write not known to have
    failed wrote, and that write was invoked before the read completed.
    Returns (op, reason) for the first read that breaks it, or None."""
    first_write = {}
    for o in allops:
        if _may_write(o):
            first_write[o.value] = min(first_write.get(o.value, math.inf), o.t_inv)
    failed = {o.value for o in ops if o.outcome == FAIL and o.kind in (PUT, CAS)}
    for o in oks:
        if o.kind == GET:
            seen = o.result
        elif o.kind == CAS and o.result:
            seen = o.expect
        else:
            continue
        if seen is None or seen == initial:
            continue
        t = first_write.get(seen)
        if t is None:
            return o, "it read %s, which %s" % (
                _fmt(seen), "only a failed write wrote" if seen in failed else "no write wrote")
        if t > o.t_ret:
            return o, "it read %s before the write of that value was invoked" % _fmt(seen)
    return _stale_read(oks, allops, initial)


def _stale_read(oks, allops, initial):
    """Two more necessary conditions, for keys whose written values are all
    distinct (as in the tests): a read must not see a value overwritten by a
    write that completed before the read began (W(v) < W2 < read(v), each
    completed before the next began), and two reads one after the other must
    not see values in the opposite order of their writes."""
    writer = {}
    for o in allops:
        if _may_write(o):
            if o.value in writer or o.value == initial:
                return None
            writer[o.value] = o
    reads = []
    for o in oks:
        if o.kind == GET:
            reads.append((o, o.result))
        elif o.kind == CAS and o.result:
            reads.append((o, o.expect))
    # (invocation, completion) of each read value's write; the initial value
    # was written before everything.
    span = {v: (w.t_inv, w.t_ret) for v, w in writer.items()}
    span[initial] = (-math.inf, -math.inf)
    done_writes = [o for o in oks if o.kind == PUT or (o.kind == CAS and o.result)]
    for r, v in reads:
        if v not in span:
            continue
        w_ret = span[v][1]
        for w2 in done_writes:
            if w2.value != v and w2.t_inv > w_ret and w2.t_ret < r.t_inv:
                return r, "it read %s, overwritten by #%s (%s) which completed before the read began" % (
                    _fmt(v), w2.id, w2.what())
    reads.sort(key=lambda x: x[0].t_inv)
    for i, (r1, v1) in enumerate(reads):
        if v1 not in span:
            continue
        for r2, v2 in reads[i + 1:]:
            if r2.t_inv <= r1.t_ret or v2 not in span or v2 == v1:
                continue
            if span[v2][1] < span[v1][0]:
                return r2, "it read %s after #%s had read the newer %s (the write of %s completed before" \
                    " the write of %s began)" % (_fmt(v2), r1.id, _fmt(v1), _fmt(v2), _fmt(v1))
    return None


def _excerpt(key, allops, k, bad, t0, verdict):
    lines = ["key %s: %s (%d operations: %d completed, %d unknown outcome)"
             % (_fmt(key), verdict, len(allops), k, len(allops) - k),
             "  the read:  " + bad.describe(t0)]
    order = sorted(allops, key=lambda o: o.t_inv)
    pivot = order.index(bad)
    lo, hi = max(0, pivot - 15), min(len(order), pivot + 5)
    lines.append("history of the key, operations %d..%d of %d by invocation time"
                 " (seconds from the start):" % (lo, hi - 1, len(order)))
    for o in order[lo:hi]:
        lines.append("  %s %s" % (">" if o is bad else " ", o.describe(t0)))
    return "\n".join(lines)


def _report(key, allops, k, best, t0, verdict):
    mask, value, cands = best
    lines = ["key %s: %s (%d operations: %d completed, %d unknown outcome)"
             % (_fmt(key), verdict, len(allops), k, len(allops) - k)]
    done = bin(mask & ((1 << k) - 1)).count("1")
    lines.append("the longest linearizable prefix found holds %d of the %d completed operations,"
                 " leaving the value %s; none of the operations that could come next fits:"
                 % (done, k, _fmt(value)))
    for c in cands:
        lines.append("  next?  " + allops[c].describe(t0))
    # The history around that point, in invocation order (* = linearized in
    # that prefix).
    order = sorted(range(len(allops)), key=lambda i: allops[i].t_inv)
    pending = [i for i in order if not (mask >> i) & 1]
    pivot = order.index(pending[0]) if pending else 0
    lo, hi = max(0, pivot - 12), min(len(order), pivot + 20)
    lines.append("history of the key, operations %d..%d of %d by invocation time"
                 " (seconds from the start; * = in the prefix):" % (lo, hi - 1, len(order)))
    for i in order[lo:hi]:
        lines.append("  %s %s" % ("*" if (mask >> i) & 1 else " ", allops[i].describe(t0)))
    return "\n".join(lines)


def check(ops, initial=None, states_max=STATES_MAX, t0=0, total_states_max=TOTAL_STATES_MAX):
    """Checks a whole history (any keys). Returns (ok, results, report):
    ok is True when every key is linearizable; report describes the first
    failing keys (at most 3). Once the keys searched so far used
    total_states_max states, the remaining keys are not searched and count
    as inconclusive (a failure), so that a whole check stays bounded too."""
    by_key = {}
    for o in ops:
        by_key.setdefault(o.key, []).append(o)
    results = []
    used = 0
    for key in sorted(by_key, key=lambda x: str(x)):
        if used > total_states_max:
            results.append(Result(key, None, 0, len(by_key[key]),
                                  "key %s: not checked: the whole check used more than %d states"
                                  " (too many unknown outcomes or too long a history)" % (_fmt(key), total_states_max)))
            continue
        init = initial.get(key) if isinstance(initial, dict) else initial
        r = check_key(key, by_key[key], init, states_max, t0)
        used += r.states
        results.append(r)
    bad = [r for r in results if r.ok is not True]
    report = "\n\n".join(r.report for r in bad[:3])
    if len(bad) > 3:
        report += "\n\n(%d more keys fail)" % (len(bad) - 3)
    return not bad, results, report
