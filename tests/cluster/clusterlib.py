"""tests/cluster/clusterlib.py: real multi-member clusters on 127.0.0.1.

Every tests/cluster/test_*.py is run by ctest as
    /usr/bin/python3 tests/cluster/test_<name>.py <build-dir>
and starts with
    from clusterlib import *
    def test(t): ...
    main(test)

The server is picked as in tests/integration/lib.sh, by CAIRN_TEST_SERVER:
    cairn (default)  <build-dir>/cairn (copied to the test's temp dir first, so
                     that a rebuild during the test does not break a restart)
    etcd             /usr/bin/etcd 3.4, the reference: every expectation in
                     these tests must hold against it
Both get etcd's flag names; etcd also gets --logger=zap.

What the harness guarantees:
- Ports: each test takes a block of PORT_BLOCK ports in [PORT_LO, PORT_HI),
  below the kernel's ephemeral range (so no client socket and no other test
  that binds port 0 can take them), locked with flock on
  /tmp/cairn-cluster-ports/<base>.lock for the test's lifetime (so two cluster
  tests from two build dirs never share a port), and each port is checked
  free before use.
- Processes: every server and etcdctl runs in its own session with
  PR_SET_PDEATHSIG=SIGKILL (dies with the test, even if the test is
  SIGKILLed by ctest's timeout); on any exit of the test, every process still
  running gets SIGCONT then SIGKILL. Start processes from the main thread only
  (PDEATHSIG follows the thread that forked).
- Time: each test has a budget (default 110 s) enforced with SIGALRM (a
  failure naming the case) and a watchdog that hard-exits 15 s later.
- Failures: t.fail(msg) (or any exception) prints the test, the server, the
  case, the message, and the last LOG_TAIL lines of every member's log, keeps
  the temp dir (/tmp/cairn-cl-<test>.*), and exits 1. CAIRN_TEST_KEEP=1 keeps
  it on success too.
"""

import ctypes
import fcntl
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import grpc

import etcd3.etcdrpc as rpc

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.environ.get("CAIRN_TEST_SERVER", "cairn")
ETCD_BIN = os.environ.get("CAIRN_TEST_ETCD", "/usr/bin/etcd")
ETCDCTL = os.environ.get("CAIRN_TEST_ETCDCTL", "/usr/bin/etcdctl")

PORT_LO, PORT_HI, PORT_BLOCK = 20000, 32000, 20
LOG_TAIL = 25
BUDGET_S = 110

# Timing of the clusters under test: short enough for fast failovers, long
# enough not to flap on a loaded 2-core machine.
HEARTBEAT_MS = 100
ELECTION_MS = 1000

# Channels reconnect fast after a member restarts (gRPC's default backoff
# grows to minutes).
# A channel whose first connection is refused (a member not listening yet,
# right after its start) waits for grpc's DNS re-resolution cooldown, 10-15 s
# whatever the reconnect backoff, before it tries again, even for an IP
# address: hence the short cooldown.
CHANNEL_OPTIONS = [
    ("grpc.dns_min_time_between_resolutions_ms", 100),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1
_PROCS = []  # every Popen started by the harness, for the final cleanup
_PROCS_LOCK = threading.Lock()

for _v in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "grpc_proxy", "all_proxy", "ALL_PROXY",
           "no_grpc_proxy"):
    os.environ.pop(_v, None)
os.environ["ETCDCTL_API"] = "3"


_SETPRIV = shutil.which("setpriv")  # util-linux: always on Debian
# A test that restarts members while grpc clients retry (test_kill_all) sets
# this: see popen().
SPAWN_WITHOUT_FORK_HANDLERS = False


def _child_setup():
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def popen(args, **kw):
    """subprocess.Popen in a new session that dies with the test."""
    assert threading.current_thread() is threading.main_thread(), "start processes from the main thread"
    if SPAWN_WITHOUT_FORK_HANDLERS and _SETPRIV:
        # No Python code in the child: subprocess can vfork, and grpc's fork
        # handler (which waits for grpc's thread pool to be idle, forever
        # while clients retry a cluster that is down) never runs. Not the
        # default: members started this way were slower to take the test's
        # first connections (about 8 s more at bootstrap; not understood).
        p = subprocess.Popen([_SETPRIV, "--pdeathsig", "KILL", "--"] + list(args),
                             start_new_session=True, **kw)
    else:
        p = subprocess.Popen(args, start_new_session=True, preexec_fn=_child_setup, **kw)
    with _PROCS_LOCK:
        _PROCS.append(p)
    return p


def _kill_all():
    with _PROCS_LOCK:
        procs = list(_PROCS)
    for p in procs:
        if p.poll() is None:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.killpg(p.pid, sig)
                except OSError:
                    try:
                        os.kill(p.pid, sig)
                    except OSError:
                        pass
    for p in procs:
        try:
            p.wait(timeout=5)
        except Exception:
            pass


class TestFailure(Exception):
    pass


class Test:
    """The running test: temp dir, ports, current case, failure reporting."""

    def __init__(self, build_dir):
        self.name = os.path.splitext(os.path.basename(sys.argv[0]))[0]
        self.build = os.path.abspath(build_dir)
        self.t0 = time.monotonic()
        self.t0_ns = time.monotonic_ns()
        self.case_name = "(setup)"
        self.case_t0 = None
        self.ncases = 0
        self.clusters = []
        self.tmp = tempfile.mkdtemp(prefix="cairn-cl-%s." % self.name, dir=os.environ.get("TMPDIR", "/tmp"))
        self.seed = int(os.environ.get("CAIRN_TEST_SEED") or random.randrange(1 << 30))
        self.rng = random.Random(self.seed)
        self._ports = []
        self._port_lock = None
        if SERVER == "cairn":
            src = os.path.join(self.build, "cairn")
            if not os.access(src, os.X_OK):
                raise TestFailure("no cairn binary at %s (build the daemon first, or run against the"
                                  " reference with CAIRN_TEST_SERVER=etcd)" % src)
            self.server_bin = os.path.join(self.tmp, "cairn")
            shutil.copy2(src, self.server_bin)
            if os.path.getsize(self.server_bin) == 0:
                raise TestFailure("%s is empty (being rebuilt?)" % src)
        elif SERVER == "etcd":
            self.server_bin = ETCD_BIN
            if not os.access(ETCD_BIN, os.X_OK):
                raise TestFailure("CAIRN_TEST_SERVER=etcd but %s is missing (apt-get install etcd-server)"
                                  % ETCD_BIN)
        else:
            raise TestFailure("CAIRN_TEST_SERVER must be cairn or etcd, not %r" % SERVER)
        if not os.access(ETCDCTL, os.X_OK):
            raise TestFailure("%s is missing (apt-get install etcd-client)" % ETCDCTL)

    # ------------------------------------------------------------ ports

    def port(self):
        """A free port of this test's locked block."""
        if not self._ports:
            self._lock_block()
        while self._ports:
            p = self._ports.pop(0)
            if _port_free(p):
                return p
        raise TestFailure("no free port left in this test's block of %d ports" % PORT_BLOCK)

    def _lock_block(self):
        d = "/tmp/cairn-cluster-ports"
        os.makedirs(d, exist_ok=True)
        bases = list(range(PORT_LO, PORT_HI, PORT_BLOCK))
        random.Random(os.getpid() ^ time.monotonic_ns()).shuffle(bases)
        for base in bases:
            fd = os.open(os.path.join(d, "%d.lock" % base), os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            ports = [p for p in range(base, base + PORT_BLOCK) if _port_free(p)]
            if len(ports) < PORT_BLOCK // 2:
                os.close(fd)
                continue
            if self._port_lock is not None:
                os.close(self._port_lock)
            self._port_lock = fd
            self._ports = ports
            return
        raise TestFailure("no free block of %d ports in [%d, %d)" % (PORT_BLOCK, PORT_LO, PORT_HI))

    # ------------------------------------------------------------ cases and failures

    def case(self, name):
        now = time.monotonic()
        if self.case_t0 is not None:
            print("   (%d ms)" % ((now - self.case_t0) * 1000), flush=True)
        self.case_t0 = now
        self.case_name = name
        self.ncases += 1
        print("-- " + name, flush=True)

    def log(self, msg):
        print("   " + msg, flush=True)

    def fail(self, msg):
        raise TestFailure(msg)

    def check(self, cond, msg):
        if not cond:
            raise TestFailure(msg)

    def eq(self, expected, actual, what):
        if expected != actual:
            raise TestFailure("%s: expected %r, got %r" % (what, expected, actual))

    def elapsed(self):
        return time.monotonic() - self.t0

    def wait_for(self, timeout, pred, what, interval=0.1):
        """Polls pred() until it returns a true value (returned) or timeout
        seconds pass (a failure naming what)."""
        end = time.monotonic() + timeout
        last_exc = None
        while True:
            self.check_alive()
            try:
                v = pred()
                if v:
                    return v
            except (grpc.RpcError, TestFailure) as e:
                last_exc = e
            if time.monotonic() > end:
                raise TestFailure("%s: not true after %.1f s%s" % (
                    what, timeout, (" (last error: %s)" % _err(last_exc)) if last_exc else ""))
            time.sleep(interval)

    def check_alive(self):
        """Fails at once if a member the test did not stop has exited."""
        for c in self.clusters:
            for m in c.all_members:
                if m.expect_running and m.proc is not None and m.proc.poll() is not None:
                    m.expect_running = False
                    raise TestFailure("%s exited unexpectedly with code %d" % (m.name, m.proc.returncode))

    def cluster(self, n=3, **kw):
        c = Cluster(self, n, **kw)  # its members see len(self.clusters) before the append
        self.clusters.append(c)
        return c

    def report_logs(self):
        out = []
        for c in self.clusters:
            for m in c.all_members:
                if os.path.exists(m.log):
                    with open(m.log, "rb") as f:
                        lines = f.read().decode("utf-8", "replace").splitlines()
                    state = m.state()
                    out.append("--- %s (%s, %s), last %d lines of %s:" % (m.name, m.endpoint, state, LOG_TAIL, m.log))
                    out.extend(lines[-LOG_TAIL:])
        return "\n".join(out)


def _port_free(port):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _err(e):
    if isinstance(e, grpc.RpcError):
        try:
            return "%s %s" % (e.code().name, e.details())
        except Exception:
            return repr(e)
    return str(e)


def grpc_error_text(e):
    return _err(e)


# ------------------------------------------------------------------ members and clusters


class Member:
    def __init__(self, cluster, name):
        t = cluster.t
        self.cluster = cluster
        self.name = name
        self.client_port = t.port()
        self.peer_port = t.port()
        self.endpoint = "127.0.0.1:%d" % self.client_port
        self.url = "http://" + self.endpoint
        self.peer_url = "http://127.0.0.1:%d" % self.peer_port
        # A second cluster in one test gets its own files (c2-m1.data...).
        tag = "" if len(t.clusters) == 0 else "c%d-" % (len(t.clusters) + 1)
        self.data = os.path.join(t.tmp, tag + name + ".data")
        self.log = os.path.join(t.tmp, tag + name + ".log")
        self.proc = None
        self.stopped = False   # SIGSTOP'd
        self.removed = False   # removed from the cluster by a test
        self.expect_running = False  # started, and not stopped or removed by the test
        self.id = None         # member ID, once known
        self.initial_cluster = None
        self.cluster_state = "new"
        self.extra = []
        self._chan = None

    def __repr__(self):
        return self.name

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def state(self):
        if self.proc is None:
            return "not started"
        rc = self.proc.poll()
        if rc is not None:
            return "exited with code %d" % rc
        return "SIGSTOPped" if self.stopped else "running, pid %d" % self.proc.pid

    def chan(self):
        if self._chan is None:
            self._chan = grpc.insecure_channel(self.endpoint, options=CHANNEL_OPTIONS)
        return self._chan

    def kv(self):
        return rpc.KVStub(self.chan())

    def maint(self):
        return rpc.MaintenanceStub(self.chan())

    def cluster_stub(self):
        return rpc.ClusterStub(self.chan())

    def watch_stub(self):
        return rpc.WatchStub(self.chan())

    def status(self, timeout=2):
        return self.maint().Status(rpc.StatusRequest(), timeout=timeout)

    def revision(self, timeout=2, serializable=True):
        """The member's own current revision (serializable: no quorum)."""
        return self.kv().Range(rpc.RangeRequest(key=b"cluster-revision-probe", serializable=serializable),
                               timeout=timeout).header.revision

    def get(self, key, timeout=5, serializable=False, revision=0):
        """(value or None, kv or None, header)."""
        r = self.kv().Range(rpc.RangeRequest(key=_b(key), serializable=serializable, revision=revision),
                            timeout=timeout)
        if not r.kvs:
            return None, None, r.header
        return r.kvs[0].value, r.kvs[0], r.header

    def put(self, key, value, timeout=5):
        return self.kv().Put(rpc.PutRequest(key=_b(key), value=_b(value)), timeout=timeout)


def _b(x):
    return x if isinstance(x, bytes) else str(x).encode()


class Cluster:
    """n members named m1..mn on this test's ports (not started: call
    start_all). snapshot_count, heartbeat_ms, election_ms go to every
    member; extra: more flags for every member."""

    def __init__(self, t, n=3, snapshot_count=None, heartbeat_ms=HEARTBEAT_MS, election_ms=ELECTION_MS,
                 extra=()):
        self.t = t
        self.token = "cairn-cl-%s-%d" % (t.name, os.getpid())
        self.snapshot_count = snapshot_count
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.extra = list(extra)
        self.all_members = []
        self.members = []  # the members of the cluster now (not the removed ones)
        for _ in range(n):
            self.members.append(self.new_member())

    def new_member(self):
        m = Member(self, "m%d" % (len(self.all_members) + 1))
        self.all_members.append(m)
        return m

    def initial_cluster(self, members=None):
        return ",".join("%s=%s" % (m.name, m.peer_url) for m in (members or self.members))

    def endpoints(self, members=None):
        return ",".join(m.endpoint for m in (members or self.members))

    def live(self):
        return [m for m in self.members if m.running() and not m.stopped]

    # ------------------------------------------------------------ processes

    def start(self, m, state=None, initial_cluster=None):
        """Starts m (on its data dir, new or existing). The first start fixes
        its --initial-cluster and --initial-cluster-state; restarts reuse them
        (both servers ignore them once the data dir exists)."""
        t = self.t
        if m.running():
            t.fail("start %s: it is already running" % m.name)
        if state is not None:
            m.cluster_state = state
        if initial_cluster is not None:
            m.initial_cluster = initial_cluster
        if m.initial_cluster is None:
            m.initial_cluster = self.initial_cluster()
        args = [t.server_bin,
                "--name=" + m.name,
                "--data-dir=" + m.data,
                "--listen-client-urls=" + m.url,
                "--advertise-client-urls=" + m.url,
                "--listen-peer-urls=" + m.peer_url,
                "--initial-advertise-peer-urls=" + m.peer_url,
                "--initial-cluster=" + m.initial_cluster,
                "--initial-cluster-state=" + m.cluster_state,
                "--initial-cluster-token=" + self.token,
                "--heartbeat-interval=%d" % self.heartbeat_ms,
                "--election-timeout=%d" % self.election_ms,
                "--log-level=info"]
        if self.snapshot_count is not None:
            args.append("--snapshot-count=%d" % self.snapshot_count)
        if SERVER == "etcd":
            args.append("--logger=zap")
        args += self.extra + m.extra
        with open(m.log, "ab") as f:
            f.write(("=== %.3f start %s\n" % (t.elapsed(), " ".join(args))).encode())
            m.proc = popen(args, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        m.stopped = False
        m.expect_running = True

    def start_all(self, wait=True):
        for m in self.members:
            self.start(m)
        if wait:
            self.wait_ready()

    def _mark(self, m, what):
        with open(m.log, "ab") as f:
            f.write(("=== %.3f %s\n" % (self.t.elapsed(), what)).encode())

    def kill9(self, m):
        if not m.running():
            self.t.fail("kill -9 %s: it is not running (%s)" % (m.name, m.state()))
        self._mark(m, "kill -9")
        m.expect_running = False
        os.killpg(m.proc.pid, signal.SIGKILL)
        m.proc.wait(timeout=10)
        m.stopped = False
        m._chan = None  # a fresh channel after the restart

    def sigstop(self, m, wait=True):
        """SIGSTOP to m's process group; with wait, returns once the kernel
        shows the member stopped (state T), so that a time taken after it is
        after the stop, not merely after the signal was sent."""
        self._mark(m, "SIGSTOP")
        os.killpg(m.proc.pid, signal.SIGSTOP)
        m.stopped = True
        deadline = time.monotonic() + 5
        while wait and time.monotonic() < deadline:
            try:
                with open("/proc/%d/stat" % m.proc.pid) as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                return
            if state in ("T", "t"):
                return
            time.sleep(0.001)

    def sigcont(self, m):
        self._mark(m, "SIGCONT")
        os.killpg(m.proc.pid, signal.SIGCONT)
        m.stopped = False

    def terminate(self, m, timeout=10):
        """SIGTERM; the member must exit within timeout seconds with code 0,
        or 143 (etcd re-raises SIGTERM after its shutdown). Returns the
        seconds it took."""
        t = self.t
        if not m.running():
            t.fail("SIGTERM %s: it is not running (%s)" % (m.name, m.state()))
        if m.stopped:
            self.sigcont(m)
        self._mark(m, "SIGTERM")
        m.expect_running = False
        t0 = time.monotonic()
        m.proc.send_signal(signal.SIGTERM)
        try:
            rc = m.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(m.proc.pid, signal.SIGKILL)
            m.proc.wait()
            t.fail("%s did not exit within %d s of SIGTERM (killed)" % (m.name, timeout))
        took = time.monotonic() - t0
        if rc not in (0, -15, 143):
            t.fail("%s exited with code %d after SIGTERM" % (m.name, rc))
        self.check_log(m)
        m._chan = None
        return took

    def stop_all(self, timeout=10, together=False, only=None):
        """SIGTERM to every running member; each must exit cleanly within
        timeout seconds. By default the followers together, then the leader
        (so that no leader hands over to a member that is stopping); with
        together, all at once (etcd's leader then spends up to ~7 s trying
        to hand its leadership to followers that are shutting down too).
        Returns {member name: seconds it took}."""
        ms = [m for m in self.all_members if m.running()]
        if not together:
            lead = None
            try:
                lid = {m.status(timeout=1).leader for m in ms if not m.stopped}
                lead = self.by_id(lid.pop()) if len(lid) == 1 else None
            except grpc.RpcError:
                pass
            took = self.stop_all(timeout, together=True, only=[m for m in ms if m is not lead])
            if lead is not None and lead.running():
                took[lead.name] = self.terminate(lead, timeout)
            return took
        if only is not None:
            ms = only
        for m in ms:
            if m.stopped:
                self.sigcont(m)
            self._mark(m, "SIGTERM")
            m.expect_running = False
            m.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        took = {}
        for m in ms:
            left = max(0.1, timeout - (time.monotonic() - t0))
            try:
                rc = m.proc.wait(timeout=left)
            except subprocess.TimeoutExpired:
                self.t.fail("%s did not exit within %d s of SIGTERM" % (m.name, timeout))
            took[m.name] = time.monotonic() - t0
            if rc not in (0, -15, 143):
                self.t.fail("%s exited with code %d after SIGTERM" % (m.name, rc))
            self.check_log(m)
        return took

    def check_log(self, m):
        pat = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error: ", ": assertion failed: ")
        with open(m.log, "rb") as f:
            text = f.read().decode("utf-8", "replace")
        for p in pat:
            if p in text:
                line = [x for x in text.splitlines() if p in x][0]
                self.t.fail("%s's log has a sanitizer or assertion report: %s" % (m.name, line))

    def restart(self, m):
        self.start(m)
        self.wait_ready([m])

    # ------------------------------------------------------------ readiness, leader

    def wait_ready(self, members=None, timeout=30):
        """Each member answers a linearizable Range (so it has a leader and
        has caught up with the commit index of the read)."""
        t = self.t
        for m in (members or self.members):
            end = time.monotonic() + timeout
            last = None
            while True:
                if not m.running():
                    t.fail("%s exited (%s) before it was ready" % (m.name, m.state()))
                try:
                    m.kv().Range(rpc.RangeRequest(key=b"cluster-ready-probe"), timeout=1)
                    break
                except grpc.RpcError as e:
                    last = e
                if time.monotonic() > end:
                    t.fail("%s was not ready after %d s (last error: %s)" % (m.name, timeout, _err(last)))
                time.sleep(0.1)
        self.learn_ids()

    def learn_ids(self):
        """Fills in each member's ID from MemberList (by name)."""
        for m in self.live():
            try:
                r = m.cluster_stub().MemberList(rpc.MemberListRequest(), timeout=3)
            except grpc.RpcError:
                continue
            byname = {x.name: x.ID for x in r.members}
            bypeer = {tuple(x.peerURLs): x.ID for x in r.members}
            for mm in self.all_members:
                if mm.name in byname and byname[mm.name]:
                    mm.id = byname[mm.name]
                elif (mm.peer_url,) in bypeer:
                    mm.id = bypeer[(mm.peer_url,)]
            return r
        return None

    def by_id(self, mid):
        for m in self.all_members:
            if m.id == mid:
                return m
        return None

    def leader(self, members=None, timeout=15):
        """Waits until every given member (default: the live ones) reports
        the same non-zero leader, which is one of them; returns it."""
        t = self.t
        ms = members or self.live()
        last = {}

        def agree():
            last.clear()
            for m in ms:
                try:
                    st = m.status(timeout=1)
                    last[m.name] = st.leader
                    if m.id is None and st.header.member_id:
                        m.id = st.header.member_id
                except grpc.RpcError as e:
                    last[m.name] = _err(e)
            vals = set(last.values())
            if len(vals) == 1:
                lid = vals.pop()
                if isinstance(lid, int) and lid != 0:
                    return lid
            return None

        end = time.monotonic() + timeout
        while True:
            t.check_alive()
            lid = agree()
            if lid:
                m = self.by_id(lid)
                if m is None:
                    self.learn_ids()
                    m = self.by_id(lid)
                if m is not None and m in ms:
                    return m
            if time.monotonic() > end:
                t.fail("the members did not agree on one leader among %s within %d s; Status.leader per member:"
                       " %s (IDs: %s)" % ([m.name for m in ms], timeout,
                                          {k: ("%x" % v if isinstance(v, int) else v) for k, v in last.items()},
                                          {m.name: ("%x" % m.id if m.id else None) for m in self.all_members}))
            time.sleep(0.1)

    def followers(self, leader=None):
        leader = leader or self.leader()
        return [m for m in self.live() if m is not leader]

    # ------------------------------------------------------------ etcdctl

    def ctl(self, *args, members=None, timeout=20, check=True, cmd_timeout="10s"):
        """etcdctl against the given members (default: all current ones);
        returns (stdout, stderr, rc). With check, a non-zero exit fails the
        test with the command and its output."""
        cmd = [ETCDCTL, "--endpoints=" + self.endpoints(members), "--dial-timeout=3s",
               "--command-timeout=" + cmd_timeout] + list(args)
        p = popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
            self.t.fail("etcdctl did not finish within %d s: %s\n--- stdout:\n%s--- stderr:\n%s"
                        % (timeout, " ".join(cmd[1:]), out.decode(errors="replace"),
                           err.decode(errors="replace")))
        out, err = out.decode(errors="replace"), err.decode(errors="replace")
        if check and p.returncode != 0:
            self.t.fail("etcdctl exited with %d: %s\n--- stdout:\n%s--- stderr:\n%s"
                        % (p.returncode, " ".join(cmd[1:]), out, err))
        return out, err, p.returncode

    def member_list(self, through):
        """MemberList through one member, as etcdctl's JSON: a list of
        {"ID", "name", "peerURLs", "clientURLs", "isLearner"?}."""
        return self.ctl_json("member", "list", members=[through])["members"]

    def member_add(self, learner=False, through=None):
        """etcdctl member add [--learner] of a new member (retried while etcd
        says "unhealthy cluster": it wants every member connected for 5 s);
        then starts it with --initial-cluster-state existing. Returns it, not
        waited for."""
        m = self.new_member()
        args = ["member", "add", m.name, "--peer-urls=" + m.peer_url] + (["--learner"] if learner else [])
        out, _, _, n = self.ctl_retry(*(args + ["-w", "json"]), retry_on=("unhealthy cluster",),
                                      members=through)
        d = json.loads(out)
        m.id = d["member"]["ID"]
        if bool(d["member"].get("isLearner", False)) != learner:
            self.t.fail("member add%s answered isLearner=%r: %s" % (" --learner" if learner else "",
                                                                   d["member"].get("isLearner"), out))
        self.t.log("member add %s%s: ID %x (%d attempts)" % (m.name, " --learner" if learner else "", m.id, n))
        self.members.append(m)
        self.start(m, state="existing", initial_cluster=self.initial_cluster())
        return m

    def ctl_retry(self, *args, retry_on=(), timeout=20, **kw):
        """etcdctl, retried every 0.5 s while it fails with an error whose text
        holds one of retry_on (e.g. etcd's "unhealthy cluster" while the
        members have not all been connected for 5 s) for up to timeout
        seconds; any other failure, or the same one at the end, fails the
        test. Returns (stdout, stderr, rc, attempts)."""
        end = time.monotonic() + timeout
        n = 0
        while True:
            n += 1
            out, err, rc = self.ctl(*args, check=False, **kw)
            if rc == 0:
                return out, err, rc, n
            if not any(r in err for r in retry_on) or time.monotonic() > end:
                self.t.fail("etcdctl exited with %d (attempt %d): %s\n--- stdout:\n%s--- stderr:\n%s"
                            % (rc, n, " ".join(args), out, err))
            time.sleep(0.5)

    def ctl_json(self, *args, **kw):
        out, _, _ = self.ctl(*(list(args) + ["-w", "json"]), **kw)
        try:
            return json.loads(out)
        except ValueError:
            self.t.fail("etcdctl %s: not JSON: %r" % (" ".join(args), out[:500]))


# ------------------------------------------------------------------ main


def main(fn, budget_s=BUDGET_S):
    """Runs fn(t) as the test and exits: 0 on success, 1 on failure."""
    if len(sys.argv) < 2:
        print("usage: %s <build-dir>" % sys.argv[0], file=sys.stderr)
        sys.exit(2)
    t = None
    rc = 1
    done = threading.Event()

    def on_alarm(signum, frame):
        raise TestFailure("the test ran past its budget of %d s" % budget_s)

    def on_term(signum, frame):
        raise TestFailure("interrupted by signal %d" % signum)

    def watchdog():
        if not done.wait(budget_s + 15):
            print("FAIL: %s [%s]: still running %d s after its budget; killing every process"
                  % (os.path.basename(sys.argv[0]), SERVER, 15), file=sys.stderr, flush=True)
            _kill_all()
            os._exit(1)

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    threading.Thread(target=watchdog, daemon=True).start()
    signal.alarm(budget_s)
    try:
        t = Test(sys.argv[1])
        print("%s [%s] seed %d (CAIRN_TEST_SEED=%d repeats its random choices), files in %s"
              % (t.name, SERVER, t.seed, t.seed, t.tmp), flush=True)
        fn(t)
        signal.alarm(0)
        t.case("done")
        print("PASS: %s [%s] %d cases in %.1f s" % (t.name, SERVER, t.ncases - 1, t.elapsed()), flush=True)
        rc = 0
    except BaseException as e:
        signal.alarm(0)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        name = t.name if t else os.path.basename(sys.argv[0])
        case = t.case_name if t else "(setup)"
        if isinstance(e, TestFailure):
            msg = str(e)
        elif isinstance(e, grpc.RpcError):
            msg = "unexpected gRPC error %s\n%s" % (_err(e), traceback.format_exc())
        else:
            msg = "unexpected exception\n" + traceback.format_exc()
        print("FAIL: %s [%s] case '%s' (at %.1f s): %s" % (name, SERVER, case, t.elapsed() if t else 0, msg),
              file=sys.stderr, flush=True)
        if t:
            print(t.report_logs(), file=sys.stderr, flush=True)
    finally:
        _kill_all()
        done.set()
        if t:
            if rc == 0 and not os.environ.get("CAIRN_TEST_KEEP"):
                shutil.rmtree(t.tmp, ignore_errors=True)
            else:
                print("(test files kept in %s)" % t.tmp, file=sys.stderr, flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    # grpc's threads can keep a normal exit waiting: leave at once.
    os._exit(rc)
