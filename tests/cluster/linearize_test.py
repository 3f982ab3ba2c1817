#!/usr/bin/python3
"""Checks the linearizability checker (linearize.py) on known histories.

Runs without servers (ctest: cluster_linearize_checker, always registered):
  /usr/bin/python3 tests/cluster/linearize_test.py
Random histories print their seed; CAIRN_TEST_SEED=<n> repeats them.
"""

import math
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import linearize as L  # noqa: E402

FAILURES = []
INF = math.inf


def op(kind, t_inv, t_ret, outcome=L.OK, **kw):
    kw.setdefault("key", "k")
    op.n += 1
    # Times are given in seconds, the checker's reports print nanoseconds as
    # seconds.
    return L.Op(kind, kw.pop("key"), t_inv * 1e9, None if t_ret is None else t_ret * 1e9, outcome,
                id=op.n, **kw)


op.n = 0


def put(v, a, b, outcome=L.OK, key="k"):
    return op(L.PUT, a, b, outcome, value=v, key=key)


def get(v, a, b, outcome=L.OK, key="k"):
    return op(L.GET, a, b, outcome, result=v, key=key)


def cas(e, v, res, a, b, outcome=L.OK, key="k"):
    return op(L.CAS, a, b, outcome, expect=e, value=v, result=res, key=key)


def expect(name, want, ops, **kw):
    ok, results, report = L.check(ops, **kw)
    if any(r.ok is None for r in results):
        FAILURES.append("%s: the search hit its bound\n%s" % (name, report))
        print("FAIL " + name)
    elif ok != want:
        FAILURES.append("%s: expected %s, the checker said %s\n%s" % (
            name, "linearizable" if want else "NOT linearizable",
            "linearizable" if ok else "NOT linearizable", report))
        print("FAIL " + name)
    else:
        print("ok   %s (%d states)" % (name, sum(r.states for r in results)))
    return ok, results, report


def fixed_cases():
    # Plain registers.
    expect("sequential put/get", True, [put("a", 0, 1), get("a", 2, 3), put("b", 4, 5), get("b", 6, 7)])
    expect("read of an absent key", True, [get(None, 0, 1), put("a", 2, 3), get("a", 4, 5)])
    expect("stale read after a completed put", False, [put("a", 0, 1), put("b", 2, 3), get("a", 4, 5)])
    expect("read of a value never written", False, [put("a", 0, 1), get("zz", 2, 3)])
    expect("absent after a completed put", False, [put("a", 0, 1), get(None, 2, 3)])
    expect("read concurrent with a put sees either value", True,
           [put("a", 0, 1), put("b", 2, 10), get("a", 3, 4), get("b", 5, 6), get("b", 11, 12)])
    expect("value flips back while a put is in flight", False,
           [put("a", 0, 1), put("b", 2, 10), get("b", 3, 4), get("a", 5, 6)])
    expect("two readers disagree on the order of two puts", False,
           [put("a", 0, 10), put("b", 0, 10),
            get("a", 11, 12), get("b", 13, 14),
            get("b", 11, 12), get("a", 13, 14)])
    expect("two readers agree on the order of two concurrent puts", True,
           [put("a", 0, 10), put("b", 0, 10),
            get("a", 1, 2), get("b", 3, 4),
            get("a", 1, 2), get("b", 11, 14)])
    expect("read before the put was invoked", False, [get("a", 0, 1), put("a", 2, 3)])
    expect("a completion at the same instant as an invocation counts as concurrent", True,
           [get("a", 0, 2), put("a", 2, 3)])

    # Outcomes.
    expect("failed put never read", True, [put("a", 0, 1), put("x", 2, 3, L.FAIL), get("a", 4, 5)])
    expect("failed put read", False, [put("a", 0, 1), put("x", 2, 3, L.FAIL), get("x", 4, 5)])
    expect("unknown put read later", True, [put("a", 0, 1), put("x", 2, None, L.UNKNOWN), get("x", 50, 51)])
    expect("unknown put never took effect", True,
           [put("a", 0, 1), put("x", 2, None, L.UNKNOWN), get("a", 50, 51), get("a", 60, 61)])
    expect("unknown put read before its invocation", False,
           [put("a", 0, 1), get("x", 2, 3), put("x", 4, None, L.UNKNOWN)])
    expect("unknown put took effect, then the older value came back", False,
           [put("a", 0, 1), put("x", 2, None, L.UNKNOWN), get("x", 3, 4), get("a", 5, 6)])
    expect("unknown put taking effect after later puts", True,
           [put("a", 0, 1), put("x", 2, None, L.UNKNOWN), put("b", 3, 4), get("b", 5, 6), get("x", 7, 8)])
    expect("a get without response says nothing", True,
           [put("a", 0, 1), get("zz", 2, None, L.UNKNOWN), get("a", 3, 4)])
    expect("many unknown puts, one read", True,
           [put("a", 0, 1)] + [put("u%d" % i, 2 + i, None, L.UNKNOWN) for i in range(30)]
           + [get("u17", 100, 101), get("u17", 102, 103)])

    # Compare-and-swap.
    expect("cas succeeded on the right value", True,
           [put("a", 0, 1), cas("a", "b", True, 2, 3), get("b", 4, 5)])
    expect("cas succeeded on the wrong value", False, [put("c", 0, 1), cas("a", "b", True, 2, 3)])
    expect("cas failed on the right value", False, [put("a", 0, 1), cas("a", "b", False, 2, 3)])
    expect("cas on an absent key fails", True, [cas(None, "b", False, 0, 1), get(None, 2, 3)])
    expect("cas on an absent key cannot succeed", False, [cas(None, "b", True, 0, 1)])
    expect("two concurrent cas from the same value both succeeded", False,
           [put("a", 0, 1), cas("a", "b", True, 2, 5), cas("a", "c", True, 2, 5)])
    expect("two concurrent cas from the same value, one succeeded", True,
           [put("a", 0, 1), cas("a", "b", True, 2, 5), cas("a", "c", False, 2, 5), get("b", 6, 7)])
    expect("a read of the value of a cas that failed", False,
           [put("a", 0, 1), cas("x", "b", False, 2, 3), get("b", 4, 5)])
    expect("a cas chain", True,
           [put("a", 0, 1), cas("a", "b", True, 2, 3), cas("b", "c", True, 4, 5),
            cas("a", "d", False, 6, 7), get("c", 8, 9)])
    expect("unknown cas explains a read", True,
           [put("a", 0, 1), cas("a", "b", None, 2, None, L.UNKNOWN), get("b", 5, 6)])
    expect("unknown cas that could not have succeeded explains nothing", False,
           [put("c", 0, 1), cas("a", "b", None, 2, None, L.UNKNOWN), get("b", 5, 6)])
    # An unknown put nobody read may still explain a failed cas: it must not
    # be dropped then.
    expect("unknown put, never read, explains a failed cas", True,
           [put("a", 0, 1), put("x", 2, None, L.UNKNOWN), cas("a", "c", False, 3, 4)])
    expect("a failed cas with nothing to explain it", False,
           [put("a", 0, 1), put("x", 2, 3, L.FAIL), cas("a", "c", False, 3, 4)])

    # Keys are independent; the report names the failing key.
    ok, _, report = expect("one bad key among good ones", False,
                           [put("a", 0, 1, key="k1"), get("a", 2, 3, key="k1"),
                            put("a", 0, 1, key="k2"), put("b", 2, 3, key="k2"), get("a", 4, 5, key="k2")])
    if "key k2: not linearizable" not in report or "k1" in report.split("\n")[0]:
        FAILURES.append("the report should name k2 only:\n" + report)
    if "history of the key" not in report:
        FAILURES.append("the report lacks the history excerpt:\n" + report)
    # A failure only the search finds: its report shows the operations that
    # could come next and the prefix.
    ok, _, report = expect("two cas from one value both succeeded, with other keys around", False,
                           [put("x", 0, 1, key="k3"), put("a", 0, 1), cas("a", "b", True, 2, 5),
                            cas("a", "c", True, 2, 5)])
    if "next?" not in report or "* " not in report or "k3" in report:
        FAILURES.append("the search's report lacks the candidates or the prefix:\n" + report)
    expect("initial value given per key", True, [get("init", 0, 1, key="k9")], initial={"k9": "init"})


def random_history(rng, nclients, nops, unknown_rate, cas_rate=0.2, key="k"):
    """A linearizable history by construction: each op takes effect at a
    random point inside its interval (an unknown one maybe never); results
    come from applying the ops in the order of those points."""
    clocks = [0.0] * nclients
    pending = []
    counter = [0]
    for i in range(nops):
        c = rng.randrange(nclients)
        t_inv = clocks[c] + rng.random() * 3
        t_ret = t_inv + 0.1 + rng.random() * 8
        clocks[c] = t_ret
        r = rng.random()
        counter[0] += 1
        v = "v%d" % counter[0]
        kind = L.GET if r < 0.4 else (L.CAS if r < 0.4 + cas_rate else L.PUT)
        unknown = kind != L.GET and rng.random() < unknown_rate
        if unknown:
            point = t_inv + rng.random() * 20 if rng.random() < 0.5 else None
            clocks[c] = t_inv + 3  # the client gives up and moves on
        else:
            point = t_inv + rng.random() * (t_ret - t_inv)
        pending.append([kind, t_inv, t_ret, point, v, unknown, c])
    order = sorted((p for p in pending if p[3] is not None), key=lambda p: p[3])
    value = None
    written = [None]
    result = {}
    for p in order:
        kind, v = p[0], p[4]
        if kind == L.PUT:
            value = v
            written.append(v)
        elif kind == L.GET:
            result[id(p)] = value
        else:
            exp = rng.choice(written[-3:]) if rng.random() < 0.7 else value
            p.append(exp)
            ok = value is not None and value == exp
            result[id(p)] = ok
            if ok:
                value = v
                written.append(v)
    ops = []
    for p in pending:
        kind, t_inv, t_ret, point, v, unknown, c = p[:7]
        outcome = L.UNKNOWN if unknown else L.OK
        if kind == L.CAS:
            exp = p[7] if len(p) > 7 else rng.choice(written[-3:])
            ops.append(op(L.CAS, t_inv, None if unknown else t_ret, outcome, expect=exp, value=v,
                          result=None if unknown else result.get(id(p)), key=key, client="c%d" % c))
        elif kind == L.PUT:
            ops.append(op(L.PUT, t_inv, None if unknown else t_ret, outcome, value=v, key=key, client="c%d" % c))
        else:
            ops.append(op(L.GET, t_inv, t_ret, L.OK, result=result.get(id(p)), key=key, client="c%d" % c))
    return ops


def random_cases(seed):
    rng = random.Random(seed)
    t = time.monotonic()
    # The size the cluster tests produce per key, and more.
    for i in range(20):
        ops = random_history(rng, nclients=rng.choice([3, 6, 10]), nops=rng.choice([50, 150, 300]),
                             unknown_rate=rng.choice([0, 0.02, 0.1]))
        ok, res, report = expect("random linearizable history %d (%d ops)" % (i, len(ops)), True, ops)
        if not ok:
            return
        # Break it: a completed get now reads a value that was never written.
        gets = [o for o in ops if o.kind == L.GET and o.outcome == L.OK]
        if gets:
            victim = rng.choice(gets)
            victim.result = "never-written"
            expect("random history %d with a read of a value never written" % i, False, ops)
            victim.result = None
        # Break it so that only the search can tell: a get that comes after
        # two completed puts, one after the other, reads the older value.
        seq = [o for o in ops if o.kind == L.PUT and o.outcome == L.OK]
        done = False
        for p1 in seq:
            for p2 in seq:
                if p1.t_ret < p2.t_inv:
                    later = [g for g in gets if g.t_inv > p2.t_ret]
                    if later:
                        g = later[0]
                        saved, g.result = g.result, p1.value
                        expect("random history %d with a stale read" % i, False, ops)
                        g.result = saved
                        done = True
                        break
            if done:
                break
        # Break it so that the search usually has to tell: a cas that failed
        # now says it succeeded from a value another cas already replaced
        # (values are written once, so it cannot come back).
        won = [o for o in ops if o.kind == L.CAS and o.outcome == L.OK and o.result]
        lost = [o for o in ops if o.kind == L.CAS and o.outcome == L.OK and not o.result]
        if won and lost:
            w, l = won[0], lost[0]
            saved = (l.expect, l.result)
            l.expect, l.result = w.expect, True
            expect("random history %d with two cas succeeding from one value" % i, False, ops)
            l.expect, l.result = saved
    elapsed = time.monotonic() - t
    print("random histories: %.2f s" % elapsed)
    if elapsed > 30:
        FAILURES.append("the random histories took %.1f s: the checker is too slow" % elapsed)


def stale_read_injection():
    """A long sequential tail after a concurrent burst: a read of the
    previous value after a completed overwrite must be caught even deep into
    a history."""
    ops = []
    t = 0
    for i in range(200):
        ops.append(put("s%d" % i, t, t + 1))
        ops.append(get("s%d" % i, t + 2, t + 3))
        t += 4
    expect("200 sequential put/get pairs", True, list(ops))
    ops.append(put("last", t, t + 1))
    ops.append(get("s199", t + 2, t + 3))
    expect("200 sequential pairs, then a stale read", False, ops)


def bound_case():
    # Many mutually concurrent puts and interleaved reads, with a bound far
    # too small: the verdict must be "inconclusive" (ok None), reported as a
    # failure that says so.
    ops = [put("p%d" % i, 0, 100) for i in range(14)]
    ops += [get("p3", 101, 102), get("p5", 103, 104), get("p3", 105, 106)]
    ok, results, report = L.check(ops, states_max=50)
    if ok or results[0].ok is not None or "search bound exceeded" not in report:
        FAILURES.append("the bound: expected an inconclusive result that says the bound was exceeded,"
                        " got ok=%r verdict=%r\n%s" % (ok, results[0].ok, report))
        print("FAIL search bound")
    else:
        print("ok   search bound reported: %s" % report.split("\n")[0])


def total_bound_case():
    # Two keys that each need the search; a total bound below the first
    # key's states leaves the second one unchecked, which is a failure.
    ops = [put("a", 0, 1, key="t1"), cas("a", "b", True, 2, 5, key="t1"), cas("a", "c", False, 2, 5, key="t1"),
           put("a", 0, 1, key="t2"), get("a", 2, 3, key="t2")]
    ok, results, report = L.check(ops, total_states_max=1)
    if ok or results[1].ok is not None or "not checked" not in report:
        FAILURES.append("the total bound: expected the second key unchecked and a failure, got ok=%r\n%s"
                        % (ok, report))
        print("FAIL total bound")
    else:
        print("ok   total bound reported: %s" % report.split("\n")[-1])


def main():
    seed = int(os.environ.get("CAIRN_TEST_SEED") or random.randrange(1 << 30))
    print("seed: %d (CAIRN_TEST_SEED=%d repeats this run)" % (seed, seed))
    fixed_cases()
    stale_read_injection()
    bound_case()
    total_bound_case()
    random_cases(seed)
    if FAILURES:
        print("\n\n".join(["FAIL: linearize_test (seed %d):" % seed] + FAILURES), file=sys.stderr)
        sys.exit(1)
    print("PASS: linearize_test")


if __name__ == "__main__":
    main()
