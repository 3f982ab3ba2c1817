#!/usr/bin/env bash
# tests/integration/test_watch.sh: the Watch service (etcd-wire.md section 4)
# with etcdctl 3.4 and Python (grpcio, python3-etcd3) against one member.
#
#   etcdctl: watch --prefix, --rev in the past, --prev-kv, -w json, a
#     compacted start revision, a start at exactly the compacted revision;
#   python3-etcd3: many watchers on one stream;
#   raw gRPC (hand-encoded messages: python3-etcd3's bundled protos predate
#     watch_id, fragment and progress_request): client-chosen and duplicate
#     watch ids, empty ranges, cancel, progress requests, filters, prev_kv,
#     compacted cancels, progress_notify, fragments, "hasleader" metadata;
#   a slow reader: a stream that reads nothing while 10000 puts happen (from
#     8 writers), then gets every event in revision order with no gap, while
#     the server reports it as a slow watcher and keeps answering.
#
#   bash tests/integration/test_watch.sh <build-dir> [PYTHON-CASE...]
#   CAIRN_TEST_SERVER=etcd bash tests/integration/test_watch.sh <build-dir>
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh" "$@"
shift

# progress_notify every 300 ms: etcd's flag, Cairn's environment variable.
PROGRESS_MS=300
extra=()
if [[ "$IT_SERVER" == etcd ]]; then
  extra=(--experimental-watch-progress-notify-interval="${PROGRESS_MS}ms")
else
  export CAIRN_WATCH_PROGRESS_INTERVAL_MS=$PROGRESS_MS
fi

it_case "start a fresh single-member server"
it_server_up "${extra[@]}"

# A background `etcdctl watch ARGS...` writing to $IT_TMP/NAME; sets WPID.
watch_bg() {
  local name=$1
  shift
  IT_BG_OUT="$IT_TMP/$name" it_bg "$IT_ETCDCTL" --endpoints="$IT_ENDPOINT" --dial-timeout=3s \
    watch "$@"
  WPID=$IT_BG_PID
}

# Waits until $IT_TMP/NAME has N lines (10 s), then stops its watcher and
# makes it the "last command's stdout" for assert_out.
watch_collect() {
  local name=$1 n=$2
  IT_LAST_CMD="etcdctl watch ($name)"
  if ! it_wait_for 10 "[[ \$(wc -l <'$IT_TMP/$name') -ge $n ]]"; then
    cp "$IT_TMP/$name" "$IT_TMP/out"
    cp "$IT_TMP/$name.err" "$IT_TMP/err"
    it_fail "the watcher printed $(wc -l <"$IT_TMP/$name") lines within 10 s, expected $n"
  fi
  sleep 0.3 # anything more that would come (and must not)
  it_stop_pid "$WPID" 5 || true
  cp "$IT_TMP/$name" "$IT_TMP/out"
  cp "$IT_TMP/$name.err" "$IT_TMP/err"
  IT_RC=0
}

it_case "etcdctl watch --prefix: puts and deletes of the prefix, in order"
r0=$(it_revision)
watch_bg w1.out --prefix w1/ --rev=$((r0 + 1))
for cmd in "put w1/a 1" "put w1/b 2" "put other x" "del w1/a" "put w1/a 3"; do
  # shellcheck disable=SC2086
  it_run ctl $cmd
  assert_rc 0
done
watch_collect w1.out 12
assert_out <<'EOF'
PUT
w1/a
1
PUT
w1/b
2
DELETE
w1/a

PUT
w1/a
3
EOF

it_case "etcdctl watch --rev in the past replays the history"
watch_bg w2.out --prefix w1/ --rev=$((r0 + 1))
watch_collect w2.out 12
assert_out <<'EOF'
PUT
w1/a
1
PUT
w1/b
2
DELETE
w1/a

PUT
w1/a
3
EOF

it_case "etcdctl watch --prev-kv"
watch_bg w3.out --prev-kv w1/a --rev=$((r0 + 1))
watch_collect w3.out 11
assert_out <<'EOF'
PUT
w1/a
1
DELETE
w1/a
1
w1/a

PUT
w1/a
3
EOF

it_case "etcdctl watch -w json: header, event, flags"
watch_bg w4.out -w json w1/b --rev=$((r0 + 1))
watch_collect w4.out 1
assert_json "{\"Header\":{\"cluster_id\":\"<CID>\",\"member_id\":\"<MID>\",\"revision\":$((r0 + 5)),\"raft_term\":\"<TERM>\"},\"Events\":[{\"kv\":{\"key\":\"$(b64 w1/b)\",\"create_revision\":$((r0 + 2)),\"mod_revision\":$((r0 + 2)),\"version\":1,\"value\":\"$(b64 2)\"}}],\"CompactRevision\":0,\"Canceled\":false,\"Created\":false}"

it_case "etcdctl watch from a compacted revision: canceled with the compacted error"
it_run ctl compact $((r0 + 4))
assert_rc 0
assert_out <<EOF
compacted revision $((r0 + 4))
EOF
it_run timeout 10 "$IT_ETCDCTL" --endpoints="$IT_ENDPOINT" watch --rev=$((r0 + 1)) w1/a
assert_rc 5
assert_out_empty
assert_err_has '^watch was canceled \(etcdserver: mvcc: required revision has been compacted\)$'
assert_err_last "Error: watch is canceled by the server"

it_case "etcdctl watch from exactly the compacted revision (as etcd: its deletes are gone)"
watch_bg w5.out --prefix w1/ --rev=$((r0 + 4))
watch_collect w5.out 3
assert_out <<'EOF'
PUT
w1/a
3
EOF

# ---------------------------------------------------------------- Python

cat >"$IT_TMP/watch_cases.py" <<'PY'
"""Watch cases over python3-etcd3 and raw gRPC. Args: HOST:PORT PROGRESS_MS CASE."""
import queue
import sys
import threading
import time
import urllib.request

import grpc

import etcd3

ENDPOINT = sys.argv[1]
PROGRESS_MS = int(sys.argv[2])
HOST, PORT = ENDPOINT.rsplit(":", 1)
OPTS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20),
        ("grpc.enable_http_proxy", 0)]
client = etcd3.client(host=HOST, port=int(PORT), timeout=30)
DUPLICATE = "mvcc: duplicate watch ID provided on the WatchStream"
EMPTY_RANGE = "mvcc: watcher range is empty"


class Failure(Exception):
    pass


def eq(expected, actual, what):
    if expected != actual:
        raise Failure("%s: expected %r, got %r" % (what, expected, actual))


def check(cond, what):
    if not cond:
        raise Failure(what)


def revision():
    return client.get_response("watch-revision-probe").header.revision


# ---- protobuf by hand: WatchRequest out, WatchResponse in ----

def varint(v):
    if v < 0:
        v += 1 << 64
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num, wt, payload):
    tag = varint(num << 3 | wt)
    if wt == 0:
        return tag + varint(payload)
    return tag + varint(len(payload)) + payload


def create_req(key, range_end=b"", start=0, watch_id=0, prev_kv=False, filters=(), fragment=False,
               progress_notify=False):
    c = b""
    if key:
        c += field(1, 2, key)
    if range_end:
        c += field(2, 2, range_end)
    if start:
        c += field(3, 0, start)
    if progress_notify:
        c += field(4, 0, 1)
    if filters:
        c += field(5, 2, b"".join(varint(f) for f in filters))
    if prev_kv:
        c += field(6, 0, 1)
    if watch_id:
        c += field(7, 0, watch_id)
    if fragment:
        c += field(8, 0, 1)
    return field(1, 2, c)


def cancel_req(watch_id):
    return field(2, 2, field(1, 0, watch_id) if watch_id else b"")


def progress_req():
    return field(3, 2, b"")


def parse(buf):
    """Fields of a message: {num: [values]}; varints as ints, the rest as bytes."""
    out, i = {}, 0
    while i < len(buf):
        key, i = read_varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = read_varint(buf, i)
        elif wt == 2:
            n, i = read_varint(buf, i)
            v, i = buf[i:i + n], i + n
        elif wt == 1:
            v, i = buf[i:i + 8], i + 8
        elif wt == 5:
            v, i = buf[i:i + 4], i + 4
        else:
            raise Failure("bad wire type %d" % wt)
        out.setdefault(num, []).append(v)
    return out


def read_varint(buf, i):
    v = shift = 0
    while True:
        b = buf[i]
        i += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return v, i


def signed(v):
    return v - (1 << 64) if v >= 1 << 63 else v


class KV:
    def __init__(self, b):
        f = parse(b)
        self.key = f.get(1, [b""])[0]
        self.create = f.get(2, [0])[0]
        self.mod = f.get(3, [0])[0]
        self.version = f.get(4, [0])[0]
        self.value = f.get(5, [b""])[0]
        self.lease = f.get(6, [0])[0]


class Event:
    def __init__(self, b):
        f = parse(b)
        self.type = "DELETE" if f.get(1, [0])[0] == 1 else "PUT"
        self.kv = KV(f[2][0])
        self.prev = KV(f[3][0]) if 3 in f else None


class Resp:
    def __init__(self, b):
        f = parse(b)
        if 1 not in f:
            raise Failure("a WatchResponse without a header")
        h = parse(f[1][0])
        self.cluster_id = h.get(1, [0])[0]
        self.revision = h.get(3, [0])[0]
        self.watch_id = signed(f.get(2, [0])[0])
        self.created = bool(f.get(3, [0])[0])
        self.canceled = bool(f.get(4, [0])[0])
        self.compact_revision = f.get(5, [0])[0]
        self.reason = f.get(6, [b""])[0].decode()
        self.fragment = bool(f.get(7, [0])[0])
        self.events = [Event(e) for e in f.get(11, [])]

    def __repr__(self):
        return "Resp(id=%d rev=%d created=%s canceled=%s compact=%d reason=%r fragment=%s events=%s)" % (
            self.watch_id, self.revision, self.created, self.canceled, self.compact_revision,
            self.reason, self.fragment, [(e.type, e.kv.key, e.kv.mod) for e in self.events])


class Stream:
    """A raw Watch stream: requests in, responses read by a thread once start() is called."""

    def __init__(self, metadata=None, read=True):
        self.ch = grpc.insecure_channel(ENDPOINT, options=OPTS)
        call = self.ch.stream_stream("/etcdserverpb.Watch/Watch", request_serializer=lambda b: b,
                                     response_deserializer=lambda b: b)
        self.reqs = queue.Queue()
        self.resps = queue.Queue()

        def gen():
            while True:
                r = self.reqs.get()
                if r is None:
                    return
                yield r

        self.it = call(gen(), metadata=metadata)
        if read:
            self.start()

    def start(self):
        def run():
            try:
                for r in self.it:
                    self.resps.put(Resp(r))
            except grpc.RpcError as e:
                self.resps.put(e)
            except Exception as e:  # a decoding failure shows as such
                self.resps.put(e)

        threading.Thread(target=run, daemon=True).start()

    def send(self, req):
        self.reqs.put(req)

    def next(self, timeout=10):
        try:
            r = self.resps.get(timeout=timeout)
        except queue.Empty:
            raise Failure("no watch response within %s s" % timeout)
        if isinstance(r, Exception):
            raise Failure("watch stream failed: %r" % r)
        return r

    def none(self, secs):
        try:
            r = self.resps.get(timeout=secs)
        except queue.Empty:
            return
        raise Failure("unexpected watch response %r" % r)

    def create(self, *args, **kw):
        self.send(create_req(*args, **kw))
        r = self.next()
        check(r.created, "a created reply, got %r" % r)
        return r

    def close(self):
        self.it.cancel()
        self.ch.close()


# ---- cases ----

def case_many_watchers_one_stream():
    """python3-etcd3 multiplexes every watch of a client on one stream."""
    got, lock = {}, threading.Lock()

    def collector(name):
        def cb(resp):
            with lock:
                if isinstance(resp, Exception):
                    got[name].append(("error", repr(resp)))
                else:
                    for e in resp.events:
                        got[name].append((type(e).__name__, e.key, e.value, e.mod_revision))
        return cb

    ids = []
    for i in range(60):
        name = "k%02d" % (i % 30)
        got["key%d" % i] = []
        ids.append(client.add_watch_callback("mw/" + name, collector("key%d" % i)))
    for j in range(10):
        got["prefix%d" % j] = []
        ids.append(client.add_watch_prefix_callback("mw/", collector("prefix%d" % j)))
    eq(70, len(set(ids)), "distinct watch IDs")
    expect_key = {i: [] for i in range(30)}
    expect_all = []
    for round_ in range(3):
        for i in range(30):
            r = client.put("mw/k%02d" % i, "v%d.%d" % (round_, i))
            ev = ("PutEvent", ("mw/k%02d" % i).encode(), ("v%d.%d" % (round_, i)).encode(),
                  r.header.revision)
            expect_key[i].append(ev)
            expect_all.append(ev)
        dr = client.delete("mw/k%02d" % round_, return_response=True)
        ev = ("DeleteEvent", ("mw/k%02d" % round_).encode(), b"", dr.header.revision)
        expect_key[round_].append(ev)
        expect_all.append(ev)
    deadline = time.time() + 20
    while time.time() < deadline:
        with lock:
            if all(len(got["key%d" % i]) >= len(expect_key[i % 30]) for i in range(60)) and \
                    all(len(got["prefix%d" % j]) >= len(expect_all) for j in range(10)):
                break
        time.sleep(0.05)
    time.sleep(0.3)
    with lock:
        for i in range(60):
            eq(expect_key[i % 30], got["key%d" % i], "events of watcher key%d" % i)
        for j in range(10):
            eq(expect_all, got["prefix%d" % j], "events of watcher prefix%d" % j)
    for wid in ids:
        client.cancel_watch(wid)


def case_requests():
    s = Stream()
    cur = revision()
    r = s.create(b"rq/a")
    eq((0, cur, False), (r.watch_id, r.revision, r.canceled), "auto id 0, header revision")
    eq(7, s.create(b"rq/a", watch_id=7).watch_id, "client-chosen id")
    r = s.create(b"rq/a", watch_id=7)
    eq((-1, True, DUPLICATE), (r.watch_id, r.canceled, r.reason), "duplicate id")
    r = s.create(b"rq/b", range_end=b"rq/a")
    eq((-1, True, EMPTY_RANGE), (r.watch_id, r.canceled, r.reason), "key >= range_end")
    eq(1, s.create(b"rq/a", prev_kv=True).watch_id, "the next auto id")
    s.send(progress_req())
    r = s.next()
    eq((-1, cur, False, False, []), (r.watch_id, r.revision, r.created, r.canceled, r.events),
       "progress reply")
    rev = client.put("rq/a", "x").header.revision
    seen = {}
    for _ in range(3):
        r = s.next()
        eq(1, len(r.events), "one event per response")
        eq(rev, r.revision, "header revision of a live event")
        seen[r.watch_id] = r.events[0]
    eq([0, 1, 7], sorted(seen), "every watcher of rq/a")
    check(seen[1].prev is None and seen[0].prev is None, "no prev_kv on a create")
    rev2 = client.put("rq/a", "y").header.revision
    for _ in range(3):
        r = s.next()
        if r.watch_id == 1:
            eq(b"x", r.events[0].prev.value, "prev_kv")
            eq(rev, r.events[0].prev.mod, "prev_kv mod_revision")
        else:
            check(r.events[0].prev is None, "prev_kv only when asked")
        eq(rev2, r.events[0].kv.mod, "mod_revision")
    s.send(cancel_req(7))
    r = s.next()
    eq((7, True, 0), (r.watch_id, r.canceled, r.compact_revision), "cancel reply")
    s.send(cancel_req(99))  # unknown: no reply
    s.send(progress_req())
    r = s.next()
    eq((-1, rev2), (r.watch_id, r.revision), "the progress reply comes next (no reply to cancel 99)")
    # filters: NOPUT = 0, NODELETE = 1
    a = s.create(b"rq/f", filters=[0]).watch_id
    b = s.create(b"rq/f", filters=[1]).watch_id
    client.put("rq/f", "1")
    client.delete("rq/f")
    got = {}
    for _ in range(2):
        r = s.next()
        got[r.watch_id] = [e.type for e in r.events]
    eq({a: ["DELETE"], b: ["PUT"]}, got, "filters")
    s.none(0.3)
    s.close()


def case_history_and_compaction():
    s = Stream()
    r0 = revision()
    revs = [client.put("hc/k", "v%d" % i).header.revision for i in range(5)]
    wid = s.create(b"hc/", range_end=b"hc0", start=revs[1]).watch_id
    r = s.next()
    eq([revs[1], revs[2], revs[3], revs[4]], [e.kv.mod for e in r.events], "replayed revisions")
    eq([b"v1", b"v2", b"v3", b"v4"], [e.kv.value for e in r.events], "replayed values")
    check(r.revision >= revs[4], "header revision covers the events")
    client.compact(revs[3])
    c = s.create(b"hc/", range_end=b"hc0", start=revs[2])
    check(c.watch_id >= 0 and not c.canceled, "created first")
    r = s.next()
    eq((c.watch_id, True, revs[3], []), (r.watch_id, r.canceled, r.compact_revision, r.events),
       "then canceled with compact_revision")
    c = s.create(b"hc/", range_end=b"hc0", start=revs[3])
    r = s.next()
    eq((c.watch_id, [revs[3], revs[4]]), (r.watch_id, [e.kv.mod for e in r.events]),
       "a start at exactly the compacted revision")
    s.close()
    del wid, r0


def case_progress_notify():
    s = Stream()
    quiet = s.create(b"pn/quiet").watch_id
    w = s.create(b"pn/k", progress_notify=True).watch_id
    cur = revision()
    r = s.next(timeout=5 * PROGRESS_MS / 1000 + 5)
    eq((w, [], cur, False), (r.watch_id, r.events, r.revision, r.canceled), "progress notification")
    check(quiet != w, "two watchers")
    # later ticks: notifications only for the watcher that asked
    for _ in range(3):
        r = s.next(timeout=5 * PROGRESS_MS / 1000 + 5)
        eq(w, r.watch_id, "only the progress_notify watcher is notified")
    s.close()


def case_fragment():
    big = "z" * 1000000
    for i in range(3):
        client.put("fr/%d" % i, big)
    s = Stream()
    f = s.create(b"fr/", range_end=b"fr0", prev_kv=True, fragment=True).watch_id
    n = s.create(b"fr/", range_end=b"fr0", prev_kv=True).watch_id
    client.delete_prefix("fr/")
    parts, whole = [], []
    while not whole or not parts or parts[-1].fragment:
        r = s.next(timeout=20)
        (parts if r.watch_id == f else whole).append(r)
    eq(1, len(whole), "without fragment: one response")
    eq(3, len(whole[0].events), "its events")
    check(len(parts) >= 2, "with fragment: several responses, got %d" % len(parts))
    eq([True] * (len(parts) - 1) + [False], [p.fragment for p in parts], "fragment flags")
    evs = [e for p in parts for e in p.events]
    eq([b"fr/0", b"fr/1", b"fr/2"], [e.kv.key for e in evs], "the events, in order")
    eq([big.encode()] * 3, [e.prev.value for e in evs], "prev_kv values")
    check(all(len(p.events) >= 1 for p in parts), "no empty part")
    s.close()
    del n


def case_hasleader():
    s = Stream(metadata=(("hasleader", "true"),))
    s.create(b"hl/k")
    rev = client.put("hl/k", "1").header.revision
    eq(rev, s.next().events[0].kv.mod, "a stream that requires a leader works while there is one")
    s.close()


def slow_watchers():
    with urllib.request.urlopen("http://%s/metrics" % ENDPOINT, timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("etcd_debugging_mvcc_slow_watcher_total "):
                return float(line.split()[1])
    raise Failure("/metrics has no etcd_debugging_mvcc_slow_watcher_total")


def case_slow_reader():
    N, WRITERS, VLEN = 10000, 8, 1500
    s = Stream(read=False)
    start = revision() + 1
    s.send(create_req(b"slow/", range_end=b"slow0", start=start))
    time.sleep(0.5)
    written, lock = {}, threading.Lock()
    errors = []

    def writer(w):
        c = etcd3.client(host=HOST, port=int(PORT), timeout=30)
        try:
            for i in range(w, N, WRITERS):
                key = "slow/%05d" % i
                val = ("%05d" % i) * (VLEN // 5)
                rev = c.put(key, val).header.revision
                with lock:
                    written[rev] = (key.encode(), val.encode())
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check(not errors, "writers failed: %r" % errors[:3])
    eq(N, len(written), "distinct revisions of the puts")
    # The server still answers, and counts the stream's watcher as slow.
    t1 = time.time()
    client.get("slow/00000")
    check(time.time() - t1 < 2, "a get took %.1f s while a watcher lagged" % (time.time() - t1))
    check(slow_watchers() >= 1, "no slow watcher reported while the stream does not read")
    print("   %d puts in %.1f s; now reading" % (N, time.time() - t0))
    s.start()
    r = s.next()
    check(r.created and r.watch_id == 0, "created first, got %r" % r)
    evs = []
    deadline = time.time() + 120
    while len(evs) < N:
        r = s.next(timeout=max(1, deadline - time.time()))
        check(not r.canceled, "canceled: %r" % r)
        check(r.events, "a response without events: %r" % r)
        check(r.revision >= r.events[-1].kv.mod, "header revision below its events")
        evs.extend(r.events)
    revs = [e.kv.mod for e in evs]
    check(all(a < b for a, b in zip(revs, revs[1:])), "events out of order or repeated")
    eq(sorted(written), revs, "every put, once, in revision order")
    for e in evs:
        eq(written[e.kv.mod], (e.kv.key, e.kv.value), "key and value at revision %d" % e.kv.mod)
    s.none(0.5)
    # live again: the next put comes at once
    rev = client.put("slow/after", "1").header.revision
    eq(rev, s.next(timeout=5).events[0].kv.mod, "a put after catching up")
    deadline = time.time() + 10
    while slow_watchers() != 0 and time.time() < deadline:
        time.sleep(0.1)
    eq(0, slow_watchers(), "slow watchers once the reader caught up")
    s.close()


CASES = {k[5:]: v for k, v in globals().items() if k.startswith("case_")}

if __name__ == "__main__":
    name = sys.argv[3]
    try:
        CASES[name]()
    except Exception:
        import traceback
        traceback.print_exc()
        sys.exit(1)
PY

py_cases=(many_watchers_one_stream requests history_and_compaction progress_notify fragment
  hasleader slow_reader)
if [[ $# -gt 0 ]]; then
  py_cases=("$@")
fi
for c in "${py_cases[@]}"; do
  it_case "python: $c"
  IT_LAST_CMD="watch_cases.py $c"
  timeout 300 "$IT_PYTHON" "$IT_TMP/watch_cases.py" "$IT_ENDPOINT" "$PROGRESS_MS" "$c" \
    >"$IT_TMP/out" 2>"$IT_TMP/err"
  IT_RC=$?
  cat "$IT_TMP/out"
  if [[ $IT_RC -ne 0 ]]; then
    it_fail "the case failed"
  fi
  assert_server_alive
done

it_case "SIGTERM stops the server"
it_server_stop

it_done
