#!/usr/bin/python3
"""Writers whose acknowledged writes must survive kill -9 (test_restart.sh).

  restart_writer.py write HOST:PORT ACKLOG ROUND THREADS SEED
      THREADS threads write until the server stops answering (or 60 s pass).
      Every write the server acknowledged is appended to ACKLOG, one line
      per key, flushed at once:  put|txn|del KEY VALUE REVISION
      Exit 0 once every thread has stopped; prints how many writes were acked.

  restart_writer.py verify HOST:PORT ACKLOG...
      Checks every acknowledged write against the restarted server:
      - a put of a unique key: the key holds that value, created and last
        modified at the acked revision (nothing overwrote it);
      - a txn's two puts share one revision; reading the key at that revision
        gives the acked value (history survived);
      - the hot keys hold a value at least as new as the last acked one (a
        write that was applied but never acknowledged may be there too);
      - a deleted key is absent;
      - the store revision is at least the highest acked revision.
      Prints the highest acked revision.
"""

import random
import sys
import threading
import time

import grpc

import etcd3
import etcd3.etcdrpc as etcdrpc


def connect(endpoint):
    host, port = endpoint.rsplit(":", 1)
    return etcd3.client(host=host, port=int(port), timeout=5)


def write(endpoint, acklog, rnd, nthreads, seed):
    client = connect(endpoint)
    lock = threading.Lock()
    out = open(acklog, "a", buffering=1)
    acked = [0]
    failures = []
    deadline = time.monotonic() + 60

    def record(lines):
        with lock:
            for line in lines:
                out.write(line + "\n")
            out.flush()
            acked[0] += 1

    def worker(t):
        rng = random.Random(seed * 1000 + t)
        base = "crash/r%s/t%d" % (rnd, t)
        n = 0
        try:
            while time.monotonic() < deadline:
                n += 1
                op = rng.random()
                if op < 0.6:
                    key = "%s/k%06d" % (base, n)
                    rev = client.put(key, "v%d" % n).header.revision
                    record(["put %s v%d %d" % (key, n, rev)])
                elif op < 0.85:
                    a, b = base + "/hot", base + "/hot2"
                    v = ("%d" % n).encode()
                    resp = client.kvstub.Txn(etcdrpc.TxnRequest(success=[
                        etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=a.encode(), value=v)),
                        etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=b.encode(), value=v))]), 5)
                    if not resp.succeeded:
                        raise RuntimeError("a txn without compares failed")
                    rev = resp.header.revision
                    record(["txn %s %d %d" % (a, n, rev), "txn %s %d %d" % (b, n, rev)])
                else:
                    key = "%s/del%06d" % (base, n)
                    client.put(key, "x")
                    resp = client.delete(key, return_response=True)
                    if resp.deleted != 1:
                        raise RuntimeError("delete of %s deleted %d" % (key, resp.deleted))
                    record(["del %s - %d" % (key, resp.header.revision)])
        except (grpc.RpcError, etcd3.exceptions.Etcd3Exception):
            return  # the server went away: stop; unacked writes are not recorded
        except Exception as e:  # a wrong answer from a live server
            failures.append("thread %d: %r" % (t, e))

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(nthreads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    out.close()
    print("round %s: %d acknowledged operations" % (rnd, acked[0]), flush=True)
    if failures:
        print("writer failures: %s" % failures, flush=True)
        sys.stdout.flush()
        import os
        os._exit(1)


def verify(endpoint, acklogs):
    client = connect(endpoint)
    puts, txns, dels = [], [], []
    for path in acklogs:
        with open(path) as f:
            for line in f:
                kind, key, value, rev = line.split()
                rec = (key.encode(), value.encode(), int(rev))
                {"put": puts, "txn": txns, "del": dels}[kind].append(rec)
    max_rev = max([r for _, _, r in puts + txns + dels], default=0)
    errors = []

    def err(msg):
        errors.append(msg)
        if len(errors) >= 20:
            report(errors)

    for key, value, rev in puts:
        resp = client.kvstub.Range(etcdrpc.RangeRequest(key=key), 10)
        if len(resp.kvs) != 1:
            err("acked put %s=%s at %d: key missing" % (key, value, rev))
            continue
        kv = resp.kvs[0]
        if (kv.value, kv.create_revision, kv.mod_revision, kv.version) != (value, rev, rev, 1):
            err("acked put %s=%s at %d: found value %r create %d mod %d version %d"
                % (key, value, rev, kv.value, kv.create_revision, kv.mod_revision, kv.version))

    last_hot = {}
    by_rev = {}
    for key, value, rev in txns:
        by_rev.setdefault(rev, []).append(key)
        last_hot[key] = max(last_hot.get(key, 0), int(value))
        resp = client.kvstub.Range(etcdrpc.RangeRequest(key=key, revision=rev), 10)
        if len(resp.kvs) != 1 or (resp.kvs[0].value, resp.kvs[0].mod_revision) != (value, rev):
            err("acked txn put %s=%s at %d: at that revision found %r" % (key, value, rev, list(resp.kvs)))
    for rev, keys in by_rev.items():
        if len(keys) != 2:
            err("revision %d holds %d txn puts, expected 2 (one txn): %r" % (rev, len(keys), keys))
    for key, n in last_hot.items():
        value, _ = client.get(key)
        if value is None or int(value) < n:
            err("hot key %s: last acked value %d, found %r" % (key, n, value))

    for key, _, rev in dels:
        resp = client.kvstub.Range(etcdrpc.RangeRequest(key=key), 10)
        if resp.kvs:
            err("acked delete of %s at %d: key still there" % (key, rev))

    current = client.get_response("crash-probe").header.revision
    if current < max_rev:
        err("store revision %d is below the highest acked revision %d" % (current, max_rev))
    if errors:
        report(errors)
    print("verified %d puts, %d txn puts, %d deletes; highest acked revision %d, store revision %d"
          % (len(puts), len(txns), len(dels), max_rev, current), flush=True)
    print("MAXREV %d" % max_rev)


def report(errors):
    for e in errors:
        print("LOST: " + e, flush=True)
    sys.exit(1)


def main():
    cmd = sys.argv[1]
    if cmd == "write":
        write(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
    elif cmd == "verify":
        verify(sys.argv[2], sys.argv[3:])
    else:
        sys.exit("usage: restart_writer.py write|verify ...")
    sys.stdout.flush()
    import os
    os._exit(0)


if __name__ == "__main__":
    main()
