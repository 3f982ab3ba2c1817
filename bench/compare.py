#!/usr/bin/python3
"""Cairn beside etcd: the same workloads against each, and the ratios.

`make bench` runs this through scripts/bench. For every workload it starts a
fresh etcd (/usr/bin/etcd) and a fresh Cairn (<build>/cairn), one after the
other, with the same flags (heartbeat 100 ms, election 1000 ms, the default
snapshot count, the same quota), data under one temporary directory on one
filesystem, and drives each with <build>/cairn-bench. Around every step it
measures the servers: peak RSS (VmHWM after a reset through clear_refs, and
VmRSS sampled every 100 ms as a cross-check), CPU seconds (utime+stime) and
bytes on disk of the data directories. It prints a table of Cairn/etcd
ratios against the goals of issue 6, writes bench/results/<UTC time>.json and
latest.json, and charts them with gnuplot (bench/results/latest.png; with
--scale, bench/results/scale.png). The method is in docs/performance.md.

Modes: default (about 10-12 minutes on 2 cores), --smoke (one member, two
tiny workloads, for tests/integration/test_bench_compare.sh), --scale (the
growth experiments: watchers, keys, store size; longer).

Python 3 standard library only.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PORT_LO, PORT_HI = 36500, 36699  # the only ports this script listens on
SLOT = 6  # ports per cluster: a client and a peer port for up to 3 members
MiB = 1024 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def log(msg):
    sys.stderr.write("[compare %s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


# ---------------------------------------------------------------- /proc


def read_status(pid):
    """VmHWM, VmRSS, RssAnon, RssFile, RssShmem of pid in bytes (None if it is gone)."""
    out = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(("VmHWM:", "VmRSS:", "RssAnon:", "RssFile:", "RssShmem:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0]) * 1024
    except OSError:
        return None
    return out


def reset_hwm(pid):
    """Resets the peak RSS (VmHWM) of pid to its current RSS."""
    try:
        with open("/proc/%d/clear_refs" % pid, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_seconds(pid):
    """utime+stime of pid in seconds (None if it is gone)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            s = f.read()
    except OSError:
        return None
    fields = s[s.rindex(")") + 2:].split()
    # fields[0] is field 3 (state): utime is field 14, stime field 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def disk_usage(path):
    """(allocated bytes as du counts them, apparent bytes) under path."""
    alloc = apparent = 0
    seen = set()
    for dirpath, dirnames, filenames in os.walk(path):
        for name in filenames + dirnames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            alloc += st.st_blocks * 512
            if not os.path.isdir(os.path.join(dirpath, name)):
                apparent += st.st_size
    return alloc, apparent


class RssSampler(threading.Thread):
    """Samples VmRSS, RssAnon, RssFile and RssShmem of some processes every
    100 ms; keeps the maxima of each."""

    def __init__(self, pids, interval=0.1):
        super().__init__(daemon=True)
        self.pids = list(pids)
        self.interval = interval
        self.max = {p: 0 for p in self.pids}
        self.anon = {p: 0 for p in self.pids}
        self.file = {p: 0 for p in self.pids}
        self.shmem = {p: 0 for p in self.pids}
        self.samples = 0
        self.stop_ev = threading.Event()

    def run(self):
        while not self.stop_ev.is_set():
            for p in self.pids:
                st = read_status(p)
                if st:
                    self.max[p] = max(self.max[p], st.get("VmRSS", 0))
                    self.anon[p] = max(self.anon[p], st.get("RssAnon", 0))
                    self.file[p] = max(self.file[p], st.get("RssFile", 0))
                    self.shmem[p] = max(self.shmem[p], st.get("RssShmem", 0))
            self.samples += 1
            self.stop_ev.wait(self.interval)

    def stop(self):
        self.stop_ev.set()
        self.join()


class MemCgroup:
    """A memory cgroup (v1) of its own for one server process, so that its
    page cache is measured with its heap: memory.max_usage_in_bytes counts
    the anonymous memory and the file pages charged to the group (the pages
    the server brought into the page cache: written or read files, mapped or
    not). RSS counts file pages only while they are mapped, so it leaves out
    what a server wrote with write() and never mapped. None where the memory
    controller cannot be used (no v1 hierarchy, no permission)."""

    root = None  # our own memory cgroup directory, found once

    @classmethod
    def base(cls):
        if cls.root is None:
            cls.root = ""
            try:
                with open("/proc/self/cgroup") as f:
                    for line in f:
                        parts = line.rstrip("\n").split(":", 2)
                        if len(parts) == 3 and "memory" in parts[1].split(","):
                            d = "/sys/fs/cgroup/memory" + parts[2]
                            if os.access(d, os.W_OK):
                                cls.root = d
            except OSError:
                pass
        return cls.root or None

    def __init__(self, pid):
        self.dir = None
        base = MemCgroup.base()
        if base is None:
            return
        d = os.path.join(base, "cairn-compare-%d-%d" % (os.getpid(), pid))
        try:
            os.mkdir(d)
            with open(os.path.join(d, "cgroup.procs"), "w") as f:
                f.write(str(pid))
            self.dir = d
        except OSError:
            try:
                os.rmdir(d)
            except OSError:
                pass

    def _rw(self, name, value=None):
        if self.dir is None:
            return None
        try:
            if value is not None:
                with open(os.path.join(self.dir, name), "w") as f:
                    f.write(value)
                return None
            with open(os.path.join(self.dir, name)) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError):
            return None

    def reset_peak(self):
        self._rw("memory.max_usage_in_bytes", "0")

    def peak(self):
        return self._rw("memory.max_usage_in_bytes")

    def remove(self):
        """After the process exited: its pages are charged to the parent."""
        if self.dir is not None:
            try:
                os.rmdir(self.dir)
            except OSError:
                pass
            self.dir = None


# ---------------------------------------------------------------- ports


class Ports:
    """Hands out blocks of SLOT ports in [PORT_LO, PORT_HI], round robin, so
    that a new cluster never reuses the ports of the one just stopped."""

    def __init__(self):
        self.next = 0
        self.nslots = (PORT_HI - PORT_LO + 1) // SLOT

    @staticmethod
    def free(port):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False
        finally:
            s.close()

    def take(self):
        for _ in range(self.nslots):
            base = PORT_LO + (self.next % self.nslots) * SLOT
            self.next += 1
            if all(self.free(p) for p in range(base, base + SLOT)):
                return base
        raise RuntimeError("no free block of %d ports in %d-%d" % (SLOT, PORT_LO, PORT_HI))


# ---------------------------------------------------------------- servers


class Cluster:
    """members of one kind (etcd or cairn) started with etcd's flags."""

    def __init__(self, kind, binary, members, base_port, datadir, settings, etcdctl):
        self.kind = kind
        self.binary = binary
        self.n = members
        self.datadir = datadir
        self.settings = settings
        self.etcdctl = etcdctl
        self.client_ports = [base_port + 2 * i for i in range(members)]
        self.peer_ports = [base_port + 2 * i + 1 for i in range(members)]
        self.procs = []
        self.cgroups = []
        self.logs = []

    @property
    def endpoints(self):
        return ["127.0.0.1:%d" % p for p in self.client_ports]

    def member_dirs(self):
        return [os.path.join(self.datadir, "m%d" % i) for i in range(self.n)]

    def start(self, env):
        os.makedirs(self.datadir, exist_ok=True)
        token = "bench-%s-%d" % (self.kind, os.getpid())
        cluster = ",".join("m%d=http://127.0.0.1:%d" % (i, self.peer_ports[i]) for i in range(self.n))
        for i in range(self.n):
            c = "http://127.0.0.1:%d" % self.client_ports[i]
            p = "http://127.0.0.1:%d" % self.peer_ports[i]
            args = [self.binary,
                    "--name", "m%d" % i,
                    "--data-dir", self.member_dirs()[i],
                    "--listen-client-urls", c, "--advertise-client-urls", c,
                    "--listen-peer-urls", p, "--initial-advertise-peer-urls", p,
                    "--initial-cluster", cluster,
                    "--initial-cluster-token", token,
                    "--initial-cluster-state", "new",
                    "--heartbeat-interval", str(self.settings["heartbeat_ms"]),
                    "--election-timeout", str(self.settings["election_ms"]),
                    "--quota-backend-bytes", str(self.settings["quota_bytes"]),
                    "--log-level", "warn"]
            if self.kind == "etcd":
                args += ["--logger", "zap"]  # only silences its deprecation warning
            logpath = os.path.join(self.datadir, "m%d.log" % i)
            lf = open(logpath, "wb")
            self.logs.append(logpath)
            self.procs.append(subprocess.Popen(args, stdout=lf, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL, env=env,
                                               start_new_session=True))
            self.cgroups.append(MemCgroup(self.procs[-1].pid))
            lf.close()

    def pids(self):
        return [p.pid for p in self.procs]

    def alive(self):
        return all(p.poll() is None for p in self.procs)

    def wait_ready(self, env, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not self.alive():
                raise RuntimeError("%s exited during startup:\n%s" % (self.kind, self.log_tail()))
            r = subprocess.run([self.etcdctl, "--endpoints", ",".join(self.endpoints),
                                "--command-timeout", "2s", "--dial-timeout", "1s",
                                "endpoint", "health"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
            if r.returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError("%s not healthy after %d s:\n%s" % (self.kind, timeout, self.log_tail()))

    def log_tail(self, lines=15):
        out = []
        for path in self.logs:
            try:
                with open(path, "rb") as f:
                    tail = f.read().decode(errors="replace").splitlines()[-lines:]
            except OSError:
                tail = []
            out.append("--- %s\n%s" % (path, "\n".join(tail)))
        return "\n".join(out)

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except OSError:
                    pass
        deadline = time.time() + 10
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except OSError:
                    pass
                p.wait()
        for g in self.cgroups:
            g.remove()


# ---------------------------------------------------------------- plan

# A workload is run as a list of steps against one fresh cluster; each step is
# one cairn-bench invocation. Steps with "measure": False (fills) are timed
# and measured like the others but not compared.


def wl(name, members, steps, info=None):
    return {"name": name, "members": members, "steps": steps, "info": info or {}}


def step(name, bench_args, measure=True, timeout=None):
    return {"name": name, "args": bench_args, "measure": measure, "timeout": timeout}


def default_plan(a):
    d = ["--duration", str(a.duration)]
    c1 = ["--clients", str(a.clients), "--conns", str(a.conns)]
    c3 = ["--clients", str(a.clients), "--conns", "3"]
    p = [
        wl("put", 1, [step("put", ["put"] + c1 + d)]),
        wl("range-l", 1, [step("range-l", ["range", "--consistency", "l"] + c1 + d)]),
        wl("range-s", 1, [step("range-s", ["range", "--consistency", "s"] + c1 + d)]),
        wl("txn", 1, [step("txn", ["txn"] + c1 + d)]),
        wl("delete", 1, [step("delete", ["delete"] + c1 + d)]),
        wl("mixed", 1, [step("mixed", ["mixed", "--consistency", "l", "--read-ratio", "0.9"] + c1 + d)]),
        wl("watch", 1, [step("watch", ["watch", "--watchers", "1000", "--watch-streams", "100",
                                       "--put-rate", "0"] + c1 + d)]),
        wl("watch-paced", 1, [step("watch-paced", ["watch", "--watchers", "1000", "--watch-streams",
                                                   "100", "--put-rate", "100"] + c1 + d)]),
        wl("lease", 1, [step("lease", ["lease"] + c1 + d)]),
        wl("put", 3, [step("put", ["put"] + c3 + d)]),
        wl("range-l", 3, [step("range-l", ["range", "--consistency", "l"] + c3 + d)]),
    ]
    return p


def smoke_plan(a):
    d = ["--duration", str(a.duration)]
    c = ["--clients", "4", "--conns", "1"]
    return [
        wl("put", 1, [step("put", ["put"] + c + d)]),
        wl("range-s", 1, [step("range-s", ["range", "--consistency", "s", "--key-space", "500"] + c + d)]),
    ]


def scale_plan(a):
    d = ["--duration", str(a.duration)]
    c = ["--clients", str(a.clients), "--conns", str(a.conns)]
    p = []
    # Watchers: the same 200k events/s offered whatever their number.
    for w in (1000, 10000, 100000):
        rate = max(1, 200000 // w)
        streams = min(1000, max(100, w // 100))
        p.append(wl("watchers-%dk" % (w // 1000), 1,
                    [step("watch", ["watch", "--watchers", str(w), "--watch-streams", str(streams),
                                    "--put-rate", str(rate)] + c + d, timeout=900)],
                    {"series": "watchers", "x": w}))
    # Keys: point reads over 100k and 1M keys (preloaded by cairn-bench, unmeasured).
    for k in (100000, 1000000):
        p.append(wl("keys-%dk" % (k // 1000), 1,
                    [step("range-l", ["range", "--consistency", "l", "--key-space", str(k),
                                      "--clients", "64", "--conns", str(a.conns)] + d, timeout=1800)],
                    {"series": "keys", "x": k}))
    # Store size: fill with 16 KiB values up to the size, then measure puts and reads.
    for size_mib in (128, 512, 1024):
        n = size_mib * MiB // 16384
        fill = ["put", "--prefix", "fill/", "--key-size", "16", "--val-size", "16384",
                "--key-space", str(n), "--sequential", "--total", str(n),
                "--clients", "64", "--conns", str(a.conns)]
        p.append(wl("store-%dMiB" % size_mib, 1, [
            step("fill", fill, measure=False, timeout=1800),
            step("put", ["put"] + c + d),
            step("range-l", ["range", "--consistency", "l", "--no-preload", "--prefix", "fill/",
                             "--key-size", "16", "--key-space", str(n)] + c + d),
        ], {"series": "store", "x": size_mib * MiB}))
    return p


# ---------------------------------------------------------------- runner


def default_snapshot_count(binary):
    """The --snapshot-count default a server's --help shows (etcd's and
    Cairn's both print it as --snapshot-count 'N')."""
    try:
        out = subprocess.run([binary, "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             timeout=10).stdout.decode(errors="replace")
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    m = re.search(r"--snapshot-count '?(\d+)", out)
    return m.group(1) if m else "?"


class Runner:
    def __init__(self, a, tmp):
        self.a = a
        self.tmp = tmp
        self.repeat = 0  # which pass of --repeat is running
        self.ports = Ports()
        self.live = []
        self.env = dict(os.environ)
        for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "grpc_proxy",
                  "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
            self.env.pop(k, None)
        self.env["ETCDCTL_API"] = "3"
        # Copies: a rebuild during the run must not swap the binaries under it.
        bindir = os.path.join(tmp, "bin")
        os.makedirs(bindir)
        self.bins = {"etcd": a.etcd}
        for name, src in (("cairn", a.cairn), ("cairn-bench", a.bench)):
            dst = os.path.join(bindir, name)
            shutil.copy2(src, dst)
            self.bins[name] = dst
        self.settings = {"heartbeat_ms": 100, "election_ms": 1000, "quota_bytes": a.quota,
                         "snapshot_count": "not passed: each server's default (etcd %s, cairn %s)" % (
                             default_snapshot_count(a.etcd), default_snapshot_count(a.cairn))}
        self.seq = 0

    def run_bench(self, cluster, st, outdir):
        jpath = os.path.join(outdir, "%s.json" % st["name"])
        args = [self.bins["cairn-bench"], "--endpoints", ",".join(cluster.endpoints),
                "--json", jpath, "--quiet", "--seed", "1"] + st["args"]
        timeout = st["timeout"] or (self.a.duration * 4 + 300)
        t0 = time.time()
        try:
            r = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               stdin=subprocess.DEVNULL, env=self.env, timeout=timeout)
            rc, err = r.returncode, r.stderr.decode(errors="replace")
        except subprocess.TimeoutExpired:
            rc, err = -1, "cairn-bench timed out after %d s" % timeout
        wall = time.time() - t0
        res = None
        try:
            with open(jpath) as f:
                res = json.load(f)
            res.pop("params", None)  # bench_args has the command line
        except (OSError, ValueError) as e:
            err += "\n(no JSON: %s)" % e
        return args, rc, err.strip()[-2000:], wall, res

    def run_workload(self, w, kind):
        self.seq += 1
        d = os.path.join(self.tmp, "%02d-%s-%dm-%s" % (self.seq, w["name"], w["members"], kind))
        binary = self.bins[kind]
        cl = Cluster(kind, binary, w["members"], self.ports.take(), d, self.settings, self.a.etcdctl)
        self.live.append(cl)
        rec = {"workload": w["name"], "members": w["members"], "server": kind,
               "repeat": self.repeat, "endpoints": cl.endpoints, "steps": [], "error": None}
        try:
            t0 = time.time()
            cl.start(self.env)
            cl.wait_ready(self.env)
            rec["startup_s"] = round(time.time() - t0, 3)
            for st in w["steps"]:
                pids = cl.pids()
                for p in pids:
                    reset_hwm(p)
                for g in cl.cgroups:
                    g.reset_peak()
                cpu0 = [cpu_seconds(p) or 0.0 for p in pids]
                sampler = RssSampler(pids)
                sampler.start()
                args, rc, err, wall, res = self.run_bench(cl, st, d)
                sampler.stop()
                status = [read_status(p) or {} for p in pids]
                hwm = [x.get("VmHWM") for x in status]
                cgpeak = [g.peak() for g in cl.cgroups]
                cpu1 = [cpu_seconds(p) for p in pids]
                disk = [disk_usage(m) for m in cl.member_dirs()]
                s = {"step": st["name"], "measure": st["measure"],
                     "bench_args": [os.path.basename(args[0])] + args[1:],
                     "rc": rc, "wall_s": round(wall, 3),
                     "peak_rss_bytes_members": hwm,
                     "peak_rss_bytes": max([h for h in hwm if h] or [0]),
                     "peak_cgroup_bytes_members": cgpeak,
                     "peak_cgroup_bytes": (max(cgpeak) if cgpeak and None not in cgpeak else None),
                     "sampled_rss_max_bytes_members": [sampler.max[p] for p in pids],
                     "sampled_anon_max_bytes_members": [sampler.anon[p] for p in pids],
                     "sampled_anon_max_bytes": max([sampler.anon[p] for p in pids] or [0]),
                     "sampled_file_max_bytes_members": [sampler.file[p] for p in pids],
                     "sampled_shmem_max_bytes_members": [sampler.shmem[p] for p in pids],
                     "end_rss_anon_bytes_members": [x.get("RssAnon") for x in status],
                     "end_rss_file_bytes_members": [x.get("RssFile") for x in status],
                     "rss_samples": sampler.samples,
                     "server_cpu_s_members": [round(b - a_, 3) if b is not None else None
                                              for a_, b in zip(cpu0, cpu1)],
                     "disk_bytes_members": [x[0] for x in disk],
                     "disk_apparent_bytes_members": [x[1] for x in disk],
                     "disk_bytes": sum(x[0] for x in disk),
                     "disk_apparent_bytes": sum(x[1] for x in disk),
                     "servers_alive": cl.alive(),
                     "bench": res}
                s["server_cpu_s"] = round(sum(x for x in s["server_cpu_s_members"] if x is not None), 3)
                if rc != 0 or res is None:
                    s["stderr"] = err
                    log("%s %s/%dm step %s: cairn-bench rc=%s: %s" % (
                        kind, w["name"], w["members"], st["name"], rc, err.splitlines()[-1:] or ""))
                if not cl.alive():
                    s["server_log"] = cl.log_tail()
                rec["steps"].append(s)
                if res:
                    cg = s["peak_cgroup_bytes"]
                    log("%-5s %-14s %dm %-8s %10.0f/s p99 %8.0f us rss %6.1f MiB%s disk %7.1f MiB" % (
                        kind, w["name"], w["members"], st["name"], primary_rate(res) or 0,
                        primary_p99(res) or 0, s["peak_rss_bytes"] / MiB,
                        "" if cg is None else " with cache %6.1f MiB" % (cg / MiB), s["disk_bytes"] / MiB))
                if not cl.alive():
                    rec["error"] = "a server exited during %s" % st["name"]
                    break
        except Exception as e:  # noqa: BLE001 - recorded, the run goes on
            rec["error"] = str(e)
            log("%s %s/%dm: %s" % (kind, w["name"], w["members"], e))
        finally:
            cl.stop()
            self.live.remove(cl)
            if not self.a.keep:
                shutil.rmtree(d, ignore_errors=True)
        return rec

    def stop_all(self):
        for cl in list(self.live):
            cl.stop()


# ---------------------------------------------------------------- metrics


def extra(res, name):
    """A workload's extra field: top level in cairn-bench's JSON (also
    accepted under a "watch" or "lease" object)."""
    if name in res:
        return res[name]
    for k in ("watch", "lease"):
        if isinstance(res.get(k), dict) and name in res[k]:
            return res[k][name]
    return None


def primary_rate(res):
    if res is None:
        return None
    if res.get("workload") == "watch":
        return extra(res, "events_per_s")
    return res.get("throughput_rps")


def primary_p99(res):
    if res is None:
        return None
    if res.get("workload") == "watch":
        return (extra(res, "delivery_latency_us") or {}).get("p99")
    return (res.get("latency_us") or {}).get("p99")


def step_ok(s):
    r = s.get("bench")
    return (s["rc"] == 0 and r is not None and not r.get("errors") and not extra(r, "missing")
            and s["servers_alive"])


# Goals of issue 6: (workload, members, metric) -> (op, factor)
GOALS = {
    ("put", 1, "throughput"): (">=", 2.0),
    ("put", 1, "p99"): ("<=", 0.5),
    ("range-l", 1, "throughput"): (">=", 2.0),
    ("range-l", 1, "p99"): ("<=", 0.5),
    ("range-s", 1, "throughput"): (">=", 2.0),
    ("range-s", 1, "p99"): ("<=", 0.5),
    ("watch", 1, "throughput"): (">=", 2.0),
    ("watch", 1, "p99"): ("<=", 0.5),
    ("put", 3, "throughput"): (">=", 1.5),
}
RSS_GOAL = ("<=", 1.0 / 3.0)


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    if n == 0:
        return None
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2.0


def compare(runs):
    """Rows of (workload, members, step, metric, etcd, cairn, ratio, goal,
    pass). With several passes (--repeat), each pass pairs the two servers'
    runs of a workload (back to back); a row's etcd and cairn figures are
    the medians over the passes, its ratio the median of the passes' ratios,
    with their minimum and maximum."""
    by = {}
    for r in runs:
        for s in r["steps"]:
            if s["measure"]:
                key = (r["workload"], r["members"], s["step"])
                by.setdefault(key, {}).setdefault(r.get("repeat", 0), {})[r["server"]] = (r, s)
    rows = []
    for (wname, members, sname), passes in by.items():
        prows = [compare_pass(wname, members, sname, sides) for _, sides in sorted(passes.items())
                 if "etcd" in sides and "cairn" in sides]
        if not prows:
            continue
        if len(prows) == 1:
            rows += prows[0]
            continue
        for r in prows[0]:
            same = [x for p in prows for x in p if x["key"] == r["key"]]
            ratios = [x["ratio"] for x in same if x["ratio"] is not None]
            row = dict(r)
            row["etcd"] = median([x["etcd"] for x in same if x["etcd"] is not None])
            row["cairn"] = median([x["cairn"] for x in same if x["cairn"] is not None])
            row["ratio"] = median(ratios)
            row["ratio_min"] = min(ratios) if ratios else None
            row["ratio_max"] = max(ratios) if ratios else None
            row["ratios"] = [x["ratio"] for x in same]
            row["valid"] = all(x["valid"] for x in same)
            row["notes"] = "; ".join(x["notes"] for x in same if x["notes"]) or None
            goal = GOALS.get((wname, members, r["key"])) or (RSS_GOAL if r["key"] == "rss" else None)
            row["pass"] = None
            if goal and row["ratio"] is not None and row["valid"]:
                row["pass"] = row["ratio"] >= goal[1] if goal[0] == ">=" else row["ratio"] <= goal[1]
            rows.append(row)
    return rows


def mib_or_none(v):
    return v / MiB if v is not None else None


def compare_pass(wname, members, sname, sides):
    """The rows of one pass: etcd's and Cairn's run of one step."""
    rows = []
    (_, es), (_, cs) = sides["etcd"], sides["cairn"]
    eb, cb = es.get("bench"), cs.get("bench")
    valid = step_ok(es) and step_ok(cs)
    notes = []
    for side, s in (("etcd", es), ("cairn", cs)):
        if not step_ok(s):
            b = s.get("bench") or {}
            notes.append("%s: rc=%s errors=%s%s%s" % (
                side, s["rc"], b.get("errors"),
                " missing=%s" % extra(b, "missing") if extra(b, "missing") else "",
                "" if s["servers_alive"] else " server died"))
    watch = (eb or cb or {}).get("workload") == "watch"
    metrics = [
        ("events/s" if watch else "throughput", "throughput", primary_rate(eb), primary_rate(cb), "/s"),
        ("delivery p99" if watch else "p99", "p99", primary_p99(eb), primary_p99(cb), "us"),
    ]
    if eb and cb and eb.get("workload") == "lease":
        ek = (extra(eb, "keepalive") or {}).get("latency_us") or {}
        ck = (extra(cb, "keepalive") or {}).get("latency_us") or {}
        metrics.append(("keepalive p99", "ka_p99", ek.get("p99"), ck.get("p99"), "us"))
    metrics += [
        ("peak RSS", "rss", es["peak_rss_bytes"] / MiB, cs["peak_rss_bytes"] / MiB, "MiB"),
        ("peak anon RSS", "anon", es["sampled_anon_max_bytes"] / MiB, cs["sampled_anon_max_bytes"] / MiB,
         "MiB"),
        ("peak memory with page cache", "cgroup", mib_or_none(es.get("peak_cgroup_bytes")),
         mib_or_none(cs.get("peak_cgroup_bytes")), "MiB"),
        ("disk", "disk", es["disk_bytes"] / MiB, cs["disk_bytes"] / MiB, "MiB"),
        ("server CPU", "cpu", es["server_cpu_s"], cs["server_cpu_s"], "s"),
    ]
    for label, key, ev, cv, unit in metrics:
        ratio = (cv / ev) if (ev and cv is not None) else None
        goal = GOALS.get((wname, members, key))
        if key == "rss":
            goal = RSS_GOAL
        passed = None
        if goal and ratio is not None and valid:
            passed = ratio >= goal[1] if goal[0] == ">=" else ratio <= goal[1]
        rows.append({"workload": wname, "members": members, "step": sname, "metric": label,
                     "key": key, "unit": unit, "etcd": ev, "cairn": cv, "ratio": ratio,
                     "goal": ("%s %.2fx" % goal) if goal else None, "pass": passed,
                     "valid": valid, "notes": "; ".join(notes) or None})
    return rows


def fmt(v, unit):
    if v is None:
        return "-"
    if unit in ("MiB", "s"):
        return "%.1f" % v
    return "%.0f" % v


def ratio_text(r):
    """The ratio, with the range over the passes when there were several."""
    if r["ratio"] is None:
        return "-"
    if r.get("ratio_min") is not None and r.get("ratios") and len(r["ratios"]) > 1:
        return "%.2f (%.2f-%.2f)" % (r["ratio"], r["ratio_min"], r["ratio_max"])
    return "%.2f" % r["ratio"]


def print_table(rows, out=sys.stdout):
    hdr = ("workload", "metric", "etcd", "cairn", "ratio", "goal", "pass")
    lines = []
    for r in rows:
        wname = "%s (%dm)" % (r["workload"] if r["step"] == r["workload"] else
                              "%s/%s" % (r["workload"], r["step"]), r["members"])
        lines.append((wname, "%s [%s]" % (r["metric"], r["unit"]), fmt(r["etcd"], r["unit"]),
                      fmt(r["cairn"], r["unit"]),
                      ratio_text(r),
                      r["goal"] or "", "" if r["goal"] is None else
                      ("n/a" if r["pass"] is None else ("PASS" if r["pass"] else "FAIL"))))
    w = [max(len(str(x[i])) for x in lines + [hdr]) for i in range(len(hdr))]
    out.write("  ".join(h.ljust(w[i]) for i, h in enumerate(hdr)).rstrip() + "\n")
    out.write("  ".join("-" * w[i] for i in range(len(hdr))) + "\n")
    for x in lines:
        out.write("  ".join(str(v).ljust(w[i]) if i < 2 else str(v).rjust(w[i]) if i < 5
                            else str(v).ljust(w[i]) for i, v in enumerate(x)).rstrip() + "\n")
    notes = sorted({"%s (%dm): %s" % (r["workload"], r["members"], r["notes"]) for r in rows if r["notes"]})
    for n in notes:
        out.write("note: %s\n" % n)


def markdown(rows, goals, srows, doc):
    """The tables of docs/performance.md, in Markdown: one line per workload
    (the figures compared), then the goals."""
    passes = doc.get("settings", {}).get("repeat", 1)
    out = ["Run of %s, Cairn %s, %s, %d CPUs, %.0f s in all%s.\n" % (
        doc["started_utc"], doc["cairn_commit"], doc["etcd_version"], doc["host"]["cpus"], doc["elapsed_s"],
        "" if passes == 1 else "; %d passes: figures are medians, ratios the median of the passes' "
        "ratios (their range in parentheses)" % passes),
        "| workload | etcd /s | Cairn /s | ratio | etcd p99 ms | Cairn p99 ms | ratio | "
        "etcd peak RSS MiB | Cairn peak RSS MiB | ratio | anon RSS ratio | with page cache ratio | "
        "disk ratio | CPU ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    by = {}
    for r in rows:
        wname = r["workload"] if r["step"] == r["workload"] else "%s/%s" % (r["workload"], r["step"])
        by.setdefault("%s (%dm)" % (wname, r["members"]), {})[r["key"]] = r

    def cell(m, key, field, scale=1.0, digits=0):
        r = m.get(key)
        v = r and r.get(field)
        if v is None:
            return "-"
        if field == "ratio":
            mark = "" if r["pass"] is None else " ✓" if r["pass"] else " ✗"
            if r.get("ratios") and len(r["ratios"]) > 1 and r.get("ratio_min") is not None:
                return "%.2f%s (%.2f–%.2f)" % (v, mark, r["ratio_min"], r["ratio_max"])
            return "%.2f%s" % (v, mark)
        return "%.*f" % (digits, v / scale)
    for name, m in by.items():
        out.append("| %s |" % name + "|".join(" %s " % c for c in (
            cell(m, "throughput", "etcd"), cell(m, "throughput", "cairn"), cell(m, "throughput", "ratio"),
            cell(m, "p99", "etcd", 1000.0, 2), cell(m, "p99", "cairn", 1000.0, 2), cell(m, "p99", "ratio"),
            cell(m, "rss", "etcd", 1.0, 1), cell(m, "rss", "cairn", 1.0, 1), cell(m, "rss", "ratio"),
            cell(m, "anon", "ratio"), cell(m, "cgroup", "ratio"), cell(m, "disk", "ratio"),
            cell(m, "cpu", "ratio"))) + "|")
    notes = sorted({"%s (%dm): %s" % (r["workload"], r["members"], r["notes"]) for r in rows if r["notes"]})
    for n in notes:
        out.append("\nNote: %s" % n)
    if goals:
        out += ["", "| goal | Cairn/etcd | pass |", "|---|---:|---|"]
        for g in goals:
            out.append("| %s | %s | %s |" % (g["goal"], "-" if g["ratio"] is None else "%.2fx" % g["ratio"],
                                             "n/a" if g["pass"] is None else "PASS" if g["pass"] else "FAIL"))
    if srows:
        out += ["", "| experiment | step | etcd p99 (us) | Cairn p99 (us) | etcd peak RSS (MiB) | "
                "Cairn peak RSS (MiB) | etcd /s | Cairn /s | etcd disk (MiB) | Cairn disk (MiB) |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in srows:
            def f(v, k=1.0):
                return "-" if v is None else "%.0f" % (v / k)
            out.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                r["workload"], r["step"], f(r["p99_etcd"]), f(r["p99_cairn"]), f(r["rss_etcd"], MiB),
                f(r["rss_cairn"], MiB), f(r["rate_etcd"]), f(r["rate_cairn"]), f(r["disk_etcd"], MiB),
                f(r["disk_cairn"], MiB)))
    return "\n".join(out) + "\n"


def goal_summary(rows):
    out = []
    for r in rows:
        if r["goal"] and r["key"] != "rss":
            out.append({"goal": "%s (%dm) %s %s" % (r["workload"], r["members"], r["metric"], r["goal"]),
                        "ratio": r["ratio"], "pass": r["pass"]})
    rss = [r for r in rows if r["key"] == "rss"]
    if rss:
        worst = max((r["ratio"] for r in rss if r["ratio"] is not None), default=None)
        out.append({"goal": "peak RSS <= 0.33x on every workload", "ratio": worst,
                    "pass": None if any(r["pass"] is None for r in rss) else all(r["pass"] for r in rss)})
    return out


# ---------------------------------------------------------------- charts


def gnuplot(script, cwd):
    gp = shutil.which("gnuplot")
    if not gp:
        log("gnuplot not found: no chart (scripts/deps bench installs gnuplot-nox)")
        return False
    r = subprocess.run([gp], input=script.encode(), cwd=cwd, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    if r.returncode != 0:
        log("gnuplot failed: %s" % r.stderr.decode(errors="replace")[-500:])
        return False
    return True


def chart_ratios(rows, png, tmp, title):
    """Three panels: throughput ratio, p99 ratio, peak RSS (MiB, both)."""
    dat = os.path.join(tmp, "ratios.dat")
    labels = []
    with open(dat, "w") as f:
        f.write("# label thr_ratio p99_ratio rss_etcd rss_cairn\n")
        keyed = {}
        for r in rows:
            label = "%s/%dm" % (r["workload"] if r["step"] == r["workload"] else
                                r["workload"] + ":" + r["step"], r["members"])
            keyed.setdefault(label, {})[r["key"]] = r
        for label, m in keyed.items():
            def g(k, field):
                v = m.get(k, {}).get(field)
                return "NaN" if v is None else "%.4f" % v
            f.write('"%s" %s %s %s %s\n' % (label, g("throughput", "ratio"), g("p99", "ratio"),
                                            g("rss", "etcd"), g("rss", "cairn")))
            labels.append(label)
    if not labels:
        return False
    script = """
set terminal pngcairo size 900,1000 font "sans,9"
set output "%(png)s"
set multiplot layout 3,1 title "%(title)s"
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set boxwidth 0.8
set grid ytics
set xtics rotate by -30
set key top right
set yrange [0:*]
set title "Throughput (events/s for watch), Cairn/etcd: higher is better"
plot "ratios.dat" using 2:xtic(1) title "Cairn/etcd" lc rgb "#3070b0", 1 with lines dt 2 lc rgb "black" title "1x", 2 with lines dt 3 lc rgb "#208020" title "goals: 2x (1m put, range, watch), 1.5x (3m put)"
set title "p99 latency (delivery for watch), Cairn/etcd: lower is better"
plot "ratios.dat" using 3:xtic(1) title "Cairn/etcd" lc rgb "#c06020", 1 with lines dt 2 lc rgb "black" title "1x", 0.5 with lines dt 3 lc rgb "#208020" title "goal 0.5x"
set title "Peak RSS per member (MiB): lower is better; goal Cairn <= etcd/3"
plot "ratios.dat" using 4:xtic(1) title "etcd" lc rgb "#909090", "" using 5 title "Cairn" lc rgb "#3070b0"
unset multiplot
""" % {"png": png, "title": title}
    return gnuplot(script, tmp)


def chart_scale(rows, png, tmp, title):
    """Growth curves: for each series (watchers, keys, store), p99 and peak RSS."""
    series = {}
    for r in rows:
        if r.get("series") is None:
            continue
        series.setdefault((r["series"], r["step"]), []).append(r)
    if not series:
        return False
    files = {}
    for (name, st), rs in series.items():
        fn = "scale-%s-%s.dat" % (name, st)
        rs.sort(key=lambda r: r["x"])
        with open(os.path.join(tmp, fn), "w") as f:
            f.write("# x p99_etcd_ms p99_cairn_ms rss_etcd_mib rss_cairn_mib\n")
            for r in rs:
                def v(x, k):
                    return "NaN" if x is None else "%.4f" % (x / k)
                f.write("%d %s %s %s %s\n" % (r["x"], v(r["p99_etcd"], 1000.0), v(r["p99_cairn"], 1000.0),
                                              v(r["rss_etcd"], MiB), v(r["rss_cairn"], MiB)))
        files[(name, st)] = fn
    panels = []
    xl = {"watchers": "watchers", "keys": "keys", "store": "store size (MiB)"}
    for (name, st), fn in sorted(files.items()):
        xs = "($1/1048576)" if name == "store" else "1"
        lat = "delivery p99" if name == "watchers" else "%s p99" % st
        panels.append("""
set title "%(name)s: %(lat)s (ms)"
set xlabel "%(xl)s"
plot "%(fn)s" using %(xs)s:2 with linespoints title "etcd" lc rgb "#909090" pt 7, "" using %(xs)s:3 with linespoints title "Cairn" lc rgb "#3070b0" pt 7
set title "%(name)s (%(st)s): peak RSS (MiB)"
plot "%(fn)s" using %(xs)s:4 with linespoints title "etcd" lc rgb "#909090" pt 7, "" using %(xs)s:5 with linespoints title "Cairn" lc rgb "#3070b0" pt 7
""" % {"name": name, "lat": lat, "xl": xl[name], "fn": fn, "xs": xs, "st": st})
    n = len(panels)
    script = """
set terminal pngcairo size 1000,%(h)d font "sans,9"
set output "%(png)s"
set multiplot layout %(n)d,2 title "%(title)s"
set grid
set logscale x
set autoscale xfix
set offsets graph 0.05, graph 0.05, 0, 0
set key top left
set yrange [0:*]
%(body)s
unset multiplot
""" % {"h": 300 * n, "png": png, "n": n, "title": title, "body": "".join(panels)}
    return gnuplot(script, tmp)


def scale_rows(runs, plan):
    info = {(w["name"], w["members"]): w["info"] for w in plan}
    by = {}
    for r in runs:
        for s in r["steps"]:
            if s["measure"]:
                by.setdefault((r["workload"], r["members"], s["step"]), {})[r["server"]] = s
    rows = []
    for (wname, members, sname), sides in by.items():
        i = info.get((wname, members), {})
        e, c = sides.get("etcd"), sides.get("cairn")
        row = {"workload": wname, "step": sname, "series": i.get("series"), "x": i.get("x")}
        for side, s in (("etcd", e), ("cairn", c)):
            b = s.get("bench") if s else None
            row["p99_" + side] = primary_p99(b) if s and step_ok(s) else None
            row["rate_" + side] = primary_rate(b) if s and step_ok(s) else None
            row["rss_" + side] = s["peak_rss_bytes"] if s else None
            row["disk_" + side] = s["disk_bytes"] if s else None
            row["ok_" + side] = bool(s and step_ok(s))
        rows.append(row)
    return rows


def print_scale(rows, out=sys.stdout):
    out.write("%-16s %-8s %12s %12s %10s %10s %10s %10s\n" % (
        "experiment", "step", "etcd p99us", "cairn p99us", "etcd MiB", "cairn MiB", "etcd /s", "cairn /s"))
    for r in rows:
        def f(v, k=1.0):
            return "-" if v is None else "%.0f" % (v / k)
        out.write("%-16s %-8s %12s %12s %10s %10s %10s %10s\n" % (
            r["workload"], r["step"], f(r["p99_etcd"]), f(r["p99_cairn"]), f(r["rss_etcd"], MiB),
            f(r["rss_cairn"], MiB), f(r["rate_etcd"]), f(r["rate_cairn"])))


# ---------------------------------------------------------------- main


def git_commit():
    try:
        return subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL).stdout.decode().strip() or None
    except OSError:
        return None


def tool_version(argv):
    try:
        return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=10).stdout.decode(errors="replace").splitlines()[0].strip()
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return None


def dump_doc(doc):
    """The results as JSON, one line per top-level key and per list item: small
    enough to commit, still readable and diffable."""
    out = []
    for k, v in doc.items():
        if isinstance(v, list) and v:
            out.append("%s: [\n  %s\n ]" % (json.dumps(k), ",\n  ".join(json.dumps(x) for x in v)))
        else:
            out.append("%s: %s" % (json.dumps(k), json.dumps(v)))
    return "{\n " + ",\n ".join(out) + "\n}\n"


def emit(doc, a, tmp):
    """Charts, Markdown and the printed tables of a results document."""
    rows, srows = doc["comparisons"], doc.get("scale")
    pngs = []
    if not a.no_chart:
        title = "Cairn/etcd %s, %s (%s, %s CPUs)" % (doc["cairn_commit"] or "", doc["started_utc"],
                                                    doc["etcd_version"] or "etcd", doc["host"]["cpus"])
        prefix = "smoke-" if doc["mode"] == "smoke" else ""
        if doc["mode"] == "scale":
            png = os.path.join(a.out, "scale.png")
            if chart_scale(srows, png, tmp, title):
                pngs.append(png)
        else:
            png = os.path.join(a.out, "%slatest.png" % prefix)
            if chart_ratios(rows, png, tmp, title):
                pngs.append(png)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(markdown(rows, doc["goals"], srows, doc))
    sys.stdout.write("\nCairn/etcd, %s, %s, %s\n\n" % (doc["mode"], doc["started_utc"], doc["etcd_version"]))
    if rows:
        print_table(rows)
    if srows:
        sys.stdout.write("\n")
        print_scale(srows)
    sys.stdout.write("\nGoals:\n")
    for g in doc["goals"]:
        sys.stdout.write("  %-4s %-52s %s\n" % ("n/a" if g["pass"] is None else "PASS" if g["pass"] else "FAIL",
                                               g["goal"], "-" if g["ratio"] is None else "%.2fx" % g["ratio"]))
    return pngs


def main():
    ap = argparse.ArgumentParser(description="Cairn beside etcd: same workloads, ratios Cairn/etcd "
                                             "(docs/performance.md).")
    ap.add_argument("--build", default=os.path.join(ROOT, "build"),
                    help="build directory with cairn and cairn-bench (default build)")
    ap.add_argument("--cairn", help="the cairn binary (default <build>/cairn)")
    ap.add_argument("--bench", help="the cairn-bench binary (default <build>/cairn-bench)")
    ap.add_argument("--etcd", default="/usr/bin/etcd")
    ap.add_argument("--etcdctl", default="/usr/bin/etcdctl")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true", help="one member, two tiny workloads (the test)")
    mode.add_argument("--scale", action="store_true",
                      help="the growth experiments (watchers, keys, store size up to 1 GiB)")
    ap.add_argument("--only", help="comma-separated workload names to run (e.g. put,range-l)")
    ap.add_argument("--members", help="1, 3 or 1,3: which cluster sizes to run (default both)")
    ap.add_argument("--duration", type=float, help="seconds per measured step (default 12, smoke 2, scale 10)")
    ap.add_argument("--clients", type=int, default=32, help="requests in flight (default 32)")
    ap.add_argument("--conns", type=int, default=2, help="HTTP/2 connections, one member (default 2)")
    ap.add_argument("--quota", type=int, help="--quota-backend-bytes for both (default 2 GiB, scale 8 GiB)")
    ap.add_argument("--tmp", default="/var/tmp", help="parent of the data directories (default /var/tmp)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results"),
                    help="where the JSON and PNG go (default bench/results)")
    ap.add_argument("--no-chart", action="store_true")
    ap.add_argument("--markdown", help="also write the tables in Markdown to this file")
    ap.add_argument("--keep", action="store_true", help="keep the data directories and logs")
    ap.add_argument("--repeat", type=int, default=1,
                    help="passes over the workloads (default 1): figures are the medians of the "
                         "passes, ratios the median of the passes' ratios with their range")
    ap.add_argument("--report", metavar="JSON",
                    help="run nothing: print the tables of a results file again (and its chart into --out "
                         "unless --no-chart, its Markdown with --markdown)")
    a = ap.parse_args()
    if a.report:
        with open(a.report) as f:
            doc = json.load(f)
        tmp = tempfile.mkdtemp(prefix="cairn-compare.")
        try:
            emit(doc, a, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return 0
    a.cairn = a.cairn or os.path.join(a.build, "cairn")
    a.bench = a.bench or os.path.join(a.build, "cairn-bench")
    if a.duration is None:
        a.duration = 2 if a.smoke else 10 if a.scale else 12
    if a.quota is None:
        a.quota = (8 << 30) if a.scale else (2 << 30)
    for what, path in (("cairn", a.cairn), ("cairn-bench", a.bench), ("etcd", a.etcd),
                       ("etcdctl", a.etcdctl)):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            sys.stderr.write("compare.py: %s not found at %s%s\n" % (
                what, path, " (build it: make build)" if what.startswith("cairn") else
                " (apt-get install etcd-server etcd-client)"))
            return 2

    if a.repeat < 1 or (a.scale and a.repeat > 1):
        sys.stderr.write("compare.py: --repeat must be at least 1, and 1 with --scale\n")
        return 2
    mode_name = "smoke" if a.smoke else "scale" if a.scale else "default"
    plan = smoke_plan(a) if a.smoke else scale_plan(a) if a.scale else default_plan(a)
    if a.only:
        names = set(a.only.split(","))
        plan = [w for w in plan if w["name"] in names]
    if a.members:
        ms = {int(x) for x in a.members.split(",")}
        plan = [w for w in plan if w["members"] in ms]
    if not plan:
        sys.stderr.write("compare.py: nothing to run\n")
        return 2

    os.makedirs(a.out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="cairn-compare.", dir=a.tmp)
    started = datetime.datetime.now(datetime.timezone.utc)
    runner = Runner(a, tmp)

    def on_signal(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)
    runs = []
    rc = 0
    try:
        log("mode %s: %d workloads x 2 servers%s, %g s each, data under %s" % (
            mode_name, len(plan), " x %d passes" % a.repeat if a.repeat > 1 else "", a.duration, tmp))
        # etcd, cairn, etcd, cairn...: both sides of a workload back to back,
        # so that slow drift of the machine hits both alike; which goes first
        # alternates by workload and by pass.
        for rep in range(a.repeat):
            runner.repeat = rep
            for i, w in enumerate(plan):
                order = ("etcd", "cairn") if (i + rep) % 2 == 0 else ("cairn", "etcd")
                for kind in order:
                    runs.append(runner.run_workload(w, kind))
    except KeyboardInterrupt:
        log("interrupted: stopping the servers")
        runner.stop_all()
        rc = 130
    finished = datetime.datetime.now(datetime.timezone.utc)

    rows = compare(runs)
    srows = scale_rows(runs, plan) if a.scale else None
    try:
        meminfo = open("/proc/meminfo").readline().split()[1]
        mem_bytes = int(meminfo) * 1024
    except (OSError, IndexError, ValueError):
        mem_bytes = None
    doc = {
        "tool": "cairn-compare",
        "mode": mode_name,
        "started_utc": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "finished_utc": finished.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "elapsed_s": round((finished - started).total_seconds(), 1),
        "host": {"cpus": os.cpu_count(), "mem_bytes": mem_bytes, "kernel": platform.release(),
                 "data_parent": os.path.realpath(a.tmp)},
        "cairn_commit": git_commit(),
        "etcd_version": tool_version([a.etcd, "--version"]),
        "settings": dict(runner.settings, duration_s=a.duration, clients=a.clients, conns=a.conns,
                         fresh_servers="per workload", order="alternating etcd/cairn per workload",
                         repeat=a.repeat),
        "goals": goal_summary(rows),
        "comparisons": rows,
        "scale": srows,
        "runs": runs,
    }
    if rc == 0 and not rows and not srows:
        rc = 1
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    prefix = "scale-" if a.scale else "smoke-" if a.smoke else ""
    jpath = os.path.join(a.out, "%s%s.json" % (prefix, stamp))
    with open(jpath, "w") as f:
        f.write(dump_doc(doc))
    latest = os.path.join(a.out, "%slatest.json" % prefix)
    shutil.copyfile(jpath, latest)
    pngs = emit(doc, a, tmp)
    sys.stdout.write("\nresults: %s, %s%s\n" % (jpath, latest, "".join(", " + p for p in pngs)))
    if a.keep:
        sys.stdout.write("data and logs kept in %s\n" % tmp)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
