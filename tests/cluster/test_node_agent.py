#!/usr/bin/python3
"""examples/node-agent (cairn-node-agent) against 3 members: the directory
converges on /nodes/n1/ after puts, updates and deletes (files appear,
change, vanish; subdirectories; unsafe names refused on stderr and never
written; other nodes' keys ignored), --exec runs after each change with
CAIRN_REVISION, never two runs at once, bursts coalesced; after a kill -9 of
the member the agent is connected to; after a kill -9 of the agent itself
(keys changed while it is down, a stray file added: the directory converges,
the stray file goes); SIGTERM stops it with 0.

    /usr/bin/python3 tests/cluster/test_node_agent.py <build-dir>
    CAIRN_TEST_SERVER=etcd /usr/bin/python3 tests/cluster/test_node_agent.py <build-dir>
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clusterlib import TestFailure, main  # noqa: E402
from probelib import Probe, fresh_revision  # noqa: E402
import etcd3.etcdrpc as rpc  # noqa: E402

NODE = "n1"
PREFIX = "/nodes/%s/" % NODE
UNSAFE = ["..", "../evil", "./x", "a//b", "sub/../../evil2", "x/.", ""]


def tree(d):
    """{relative path: bytes} of every file under d (directories implied)."""
    out = {}
    for root, dirs, files in os.walk(d):
        for f in files:
            p = os.path.join(root, f)
            try:
                with open(p, "rb") as fh:
                    out[os.path.relpath(p, d)] = fh.read()
            except FileNotFoundError:  # a temp file renamed meanwhile
                out[os.path.relpath(p, d)] = None
    return out


def empty_dirs(d):
    return [os.path.relpath(r, d) for r, ds, fs in os.walk(d) if r != d and not ds and not fs]


def exec_runs(path):
    """[(start revision, end revision)] of the command's runs, checked never
    to overlap."""
    if not os.path.exists(path):
        return []
    runs, cur = [], None
    with open(path) as f:
        for line in f:
            what, rev = line.split()
            if what == "start":
                if cur is not None:
                    raise AssertionError("two runs at once: start %s during the run of %s" % (rev, cur))
                cur = rev
            else:
                if cur != rev:
                    raise AssertionError("end %s does not close the run of %s" % (rev, cur))
                runs.append(int(rev))
                cur = None
    return runs


class Agent:
    def __init__(self, t, c, endpoints_first, d, log):
        self.t, self.c, self.d, self.log = t, c, d, log
        cmd = "echo start $CAIRN_REVISION >> %s; sleep 0.2; echo end $CAIRN_REVISION >> %s" % (log, log)
        self.endpoints = c.endpoints([endpoints_first] + [m for m in c.members if m is not endpoints_first])
        self.start(cmd)

    def start(self, cmd=None):
        if cmd is not None:
            self.cmd = cmd
        self.p = Probe(self.t, "cairn-node-agent", ["--name", NODE, "--endpoints", self.endpoints,
                                                    "--dir", self.d, "--exec", self.cmd])

    def converge(self, m, what, timeout=10):
        """Waits until the directory holds exactly the safe keys of the
        prefix (read through m) and the command ran for a revision >= the
        last of them."""
        t = self.t
        r = m.kv().Range(rpc.RangeRequest(key=PREFIX.encode(), range_end=PREFIX[:-1].encode() + b"0"), timeout=5)
        want = {}
        last = 0
        for kv in r.kvs:
            rel = kv.key.decode()[len(PREFIX):]
            if rel in UNSAFE or rel.startswith("/") or any(x in ("", ".", "..") for x in rel.split("/")):
                continue
            want[rel] = kv.value
            last = max(last, kv.mod_revision)
        state = {}

        def ok():
            state["tree"] = tree(self.d)
            state["runs"] = exec_runs(self.log)
            return (state["tree"] == want and not empty_dirs(self.d)
                    and state["runs"] and state["runs"][-1] >= min(last, r.header.revision))

        try:
            t.wait_for(timeout, ok, what)
        except TestFailure:
            t.fail("%s: the directory %s is %r (empty dirs %s), expected %r; runs of the command %s%s"
                   % (what, self.d, state.get("tree"), empty_dirs(self.d), want, state.get("runs"), self.p.tail()))
        return want


def test(t):
    t.case("bootstrap 3 members")
    c = t.cluster(3)
    c.start_all()
    leader = c.leader()
    f = [m for m in c.members if m is not leader][0]
    d = os.path.join(t.tmp, "agent-dir")
    log = os.path.join(t.tmp, "exec.log")
    os.makedirs(os.path.join(d, "old", "deeper"))
    with open(os.path.join(d, "stray"), "w") as fh:
        fh.write("not mine")
    with open(os.path.join(d, "old", "deeper", "x"), "w") as fh:
        fh.write("old")

    t.case("the agent starts (through %s first): stray files removed, keys written" % f.name)
    leader.put(PREFIX + "a", "1")
    leader.put(PREFIX + "sub/b", "2")
    agent = Agent(t, c, f, d, log)
    agent.converge(leader, "the first list")

    t.case("puts, updates, deletes; unsafe names refused; other nodes ignored")
    leader.put(PREFIX + "deep/x/y", "3")
    leader.put(PREFIX + "a", "1b")
    leader.put(PREFIX + "empty", "")
    leader.put("/nodes/n2/other", "not mine")
    for u in UNSAFE:
        leader.put(PREFIX + u, "evil")
    leader.kv().DeleteRange(rpc.DeleteRangeRequest(key=(PREFIX + "sub/b").encode()), timeout=5)
    leader.put(PREFIX + "last", "z")
    agent.converge(leader, "after puts, updates and deletes")
    t.check(not os.path.exists(os.path.join(t.tmp, "evil")) and not os.path.exists(os.path.join(t.tmp, "evil2")),
            "a key with '..' was written outside the directory")
    err = agent.p.stderr_text()
    t.check("unsafe" in err, "the agent said nothing about unsafe names on stderr: %r" % err[-500:])

    t.case("a burst of 20 puts: the command runs coalesced, never two at once")
    n0 = len(exec_runs(log))
    for i in range(20):
        leader.put(PREFIX + "burst", str(i))
    agent.converge(leader, "after the burst")
    runs = exec_runs(log)[n0:]
    t.log("%d runs of the command for 20 changes: %s" % (len(runs), runs))
    t.check(len(runs) < 20, "the command ran once per change (%d runs): no coalescing" % len(runs))

    t.case("kill -9 %s (the member the agent is connected to); changes meanwhile" % f.name)
    c.kill9(f)
    live = [m for m in c.members if m is not f]
    leader = c.leader(members=live)
    leader.put(PREFIX + "during-member-down", "4")
    leader.kv().DeleteRange(rpc.DeleteRangeRequest(key=(PREFIX + "empty").encode()), timeout=5)
    agent.converge(leader, "with %s down" % f.name)
    c.start(f)
    t.wait_for(15, lambda: fresh_revision(f) > 1, "%s answers after its restart" % f.name)

    t.case("kill -9 the agent; keys change while it is down; a stray file; restart it")
    agent.p.kill9()
    leader.put(PREFIX + "while-agent-down", "5")
    leader.put(PREFIX + "a", "1c")
    leader.kv().DeleteRange(rpc.DeleteRangeRequest(key=(PREFIX + "deep/x/y").encode()), timeout=5)
    with open(os.path.join(d, "stray2"), "w") as fh:
        fh.write("x")
    n0 = len(exec_runs(log))
    agent.start()
    agent.converge(leader, "after the agent's restart")
    t.check(len(exec_runs(log)) > n0, "the command did not run after the agent's restart")

    t.case("SIGTERM the agent: exit 0")
    agent.p.stop()

    t.case("SIGTERM every member")
    c.stop_all()


main(test)
