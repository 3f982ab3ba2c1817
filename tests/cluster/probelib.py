"""tests/cluster/probelib.py: the libcairn programs the client tests drive.

Probe(t, "client_watch_probe", args) starts <build-dir>/client_watch_probe
(tests/client/*.c; cairn-node-agent the same way) through clusterlib.popen,
so it dies with the test. A thread collects its stdout lines (also copied to
<tmp>/<name>.<n>.out with the seconds since the test began; stderr goes to <tmp>/<name>.<n>.err). The line formats
are in each probe's source; keys and values there are %-escaped, "-" for an
empty string: unq() decodes them.
"""

import os
import signal
import subprocess
import threading
import time
import urllib.parse

import grpc

import etcd3.etcdrpc as rpc
from clusterlib import CHANNEL_OPTIONS, popen

_COUNT = [0]


def unq(s):
    """A key or value as a probe prints it, back to bytes."""
    return b"" if s == "-" else urllib.parse.unquote_to_bytes(s)


def fresh_channel(m):
    """A channel to member m of its own (close it after use): after a
    restart, the member's shared channel (Member.chan(), and grpc's global
    subchannel pool) may stay in reconnect backoff for ~15 s."""
    return grpc.insecure_channel(m.endpoint, options=CHANNEL_OPTIONS + [("grpc.use_local_subchannel_pool", 1)])


def fresh_revision(m):
    """m's own revision (serializable), through a fresh channel."""
    ch = fresh_channel(m)
    try:
        return rpc.KVStub(ch).Range(rpc.RangeRequest(key=b"x", serializable=True), timeout=1).header.revision
    finally:
        ch.close()


class Probe:
    def __init__(self, t, name, args, stdin=False):
        self.t = t
        self.name = name
        path = os.path.join(t.build, name)
        if not os.access(path, os.X_OK):
            t.fail("no %s in %s (build libcairn and tests/client first)" % (name, t.build))
        _COUNT[0] += 1
        base = os.path.join(t.tmp, "%s.%d" % (name, _COUNT[0]))
        self.out_path, self.err_path = base + ".out", base + ".err"
        self.args = [path] + list(args)
        self.lines = []
        self.times = []  # time.monotonic() of each line's arrival
        self.cv = threading.Condition()
        self.eof = False
        with open(self.err_path, "wb") as err:
            self.proc = popen(self.args, stdout=subprocess.PIPE, stderr=err,
                              stdin=subprocess.PIPE if stdin else subprocess.DEVNULL)
        self.th = threading.Thread(target=self._read, daemon=True)
        self.th.start()

    def _read(self):
        with open(self.out_path, "w") as copy:
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                now = time.monotonic()
                copy.write("%.3f %s\n" % (now - self.t.t0, line))
                copy.flush()
                with self.cv:
                    self.times.append(now)
                    self.lines.append(line)
                    self.cv.notify_all()
        with self.cv:
            self.eof = True
            self.cv.notify_all()

    # ------------------------------------------------------------ reading

    def snapshot(self):
        with self.cv:
            return list(self.lines)

    def tail(self, n=15):
        err = ""
        try:
            with open(self.err_path, "rb") as f:
                err = f.read().decode("utf-8", "replace")
        except OSError:
            pass
        out = self.snapshot()[-n:]
        return ("\n--- %s: last %d stdout lines:\n%s\n--- stderr (last 2000 bytes):\n%s"
                % (self.name, len(out), "\n".join(out), err[-2000:]))

    def wait(self, pred, timeout, what, start=0):
        """Waits until some line from index start on satisfies pred (returns
        (index, line)); fails naming what, with the probe's output."""
        end = time.monotonic() + timeout
        i = start
        with self.cv:
            while True:
                while i < len(self.lines):
                    if pred(self.lines[i]):
                        return i, self.lines[i]
                    i += 1
                left = end - time.monotonic()
                if left <= 0 or self.eof:
                    break
                self.cv.wait(min(left, 0.2))
        self.t.fail("%s: %s within %.1f s%s%s" % (self.name, what, timeout,
                                                   " (the probe exited)" if self.eof else "", self.tail()))

    def stderr_text(self):
        with open(self.err_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    # ------------------------------------------------------------ control

    def send(self, text):
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def signal(self, sig):
        os.killpg(self.proc.pid, sig)

    def exit_code(self, timeout):
        """Waits for the probe to exit by itself; fails after timeout."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.t.fail("%s did not exit within %.1f s%s" % (self.name, timeout, self.tail()))

    def stop(self, timeout=5):
        """SIGTERM; the probe must exit with 0 within timeout seconds."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        rc = self.exit_code(timeout)
        self.th.join(timeout=2)
        if rc != 0:
            self.t.fail("%s exited with %d after SIGTERM%s" % (self.name, rc, self.tail()))
        return rc

    def kill9(self):
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=5)
        self.th.join(timeout=2)


def dump(probe, after_rev=0, timeout=10):
    """Asks an informer probe for its map ("dump" on stdin) until it stands
    at a revision >= after_rev; returns (revision, {key: (value, mod, create,
    version, lease)})."""
    end = time.monotonic() + timeout
    while True:
        start = len(probe.snapshot())
        probe.send("dump\n")
        i, line = probe.wait(lambda x: x.startswith("DUMP "), timeout, "a DUMP after 'dump'", start)
        rev, n = int(line.split()[1]), int(line.split()[2])
        j, _ = probe.wait(lambda x: x.startswith("DUMPEND "), timeout, "the DUMPEND", i)
        lines = probe.snapshot()[i + 1:j]
        m = {}
        for x in lines:
            f = x.split(" ")
            if f[0] != "KV" or len(f) != 7:
                probe.t.fail("%s: a bad line inside a dump: %r" % (probe.name, x))
            m[unq(f[1])] = (unq(f[6]), int(f[2]), int(f[3]), int(f[4]), int(f[5]))
        if len(m) != n:
            probe.t.fail("%s: DUMP announced %d keys and printed %d" % (probe.name, n, len(m)))
        if rev >= after_rev:
            return rev, m
        if time.monotonic() > end:
            probe.t.fail("%s: the informer stayed at revision %d, below %d, for %d s%s"
                         % (probe.name, rev, after_rev, timeout, probe.tail()))
        time.sleep(0.1)
