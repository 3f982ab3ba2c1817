#!/usr/bin/python3
"""Bad and unusual input on the client port (test_http.sh).

  wire_probe.py HOST:PORT SEED CASE...

Each case throws something at the port, then checks that the server still
answers (a gRPC Range and GET /health on fresh connections). Cases that
expect a specific answer check it. Prints one line per case; the first
failure prints what went wrong and exits 1.
"""

import os
import random
import socket
import struct
import subprocess
import sys
import time
import urllib.request

import grpc

import etcd3.etcdrpc as etcdrpc

ENDPOINT = sys.argv[1]
HOST, PORT = ENDPOINT.rsplit(":", 1)
PORT = int(PORT)
SEED = int(sys.argv[2])
rng = random.Random(SEED)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Failure(Exception):
    pass


def eq(expected, actual, what):
    if expected != actual:
        raise Failure("%s: expected %r, got %r" % (what, expected, actual))


def check(cond, what):
    if not cond:
        raise Failure(what)


def channel():
    return grpc.insecure_channel(ENDPOINT, options=[("grpc.max_send_message_length", 64 << 20),
                                                   ("grpc.enable_http_proxy", 0)])


def alive(what):
    """The server answers a Range and /health on new connections."""
    ch = channel()
    try:
        resp = etcdrpc.KVStub(ch).Range(etcdrpc.RangeRequest(key=b"probe"), timeout=5)
        check(resp.header.revision > 0, "Range after %s: no revision" % what)
    except grpc.RpcError as e:
        raise Failure("the server does not answer a Range after %s: %s %s" % (what, e.code(), e.details()))
    finally:
        ch.close()
    try:
        with urllib.request.urlopen("http://%s/health" % ENDPOINT, timeout=5) as r:
            eq(200, r.status, "/health after %s" % what)
    except OSError as e:
        raise Failure("GET /health fails after %s: %r" % (what, e))


def connect():
    s = socket.create_connection((HOST, PORT), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def drain(s, timeout=2.0, limit=1 << 20):
    """Reads until the peer closes, `timeout` passes, or `limit` bytes came."""
    s.settimeout(timeout)
    data = b""
    end = time.monotonic() + timeout
    try:
        while len(data) < limit and time.monotonic() < end:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    return data


def send_quietly(s, data):
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may close on us mid-way: that is fine


# ---------------------------------------------------------------- HTTP/2 by hand


def frame(ftype, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


def hpack_literal(name, value):
    """A literal header field without indexing, new name, no Huffman coding
    (every string shorter than 127 bytes)."""
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def grpc_headers(path):
    block = b"".join(hpack_literal(n, v) for n, v in [
        (b":method", b"POST"), (b":scheme", b"http"), (b":path", path),
        (b":authority", ENDPOINT.encode()), (b"content-type", b"application/grpc"), (b"te", b"trailers")])
    return frame(HEADERS, END_HEADERS, 1, block)


def read_frames(s, timeout=5.0):
    """Frames from the server until stream 1 ends, a GOAWAY, or EOF/timeout.
    Returns (frames, closed); answers SETTINGS and PING as a client must."""
    s.settimeout(timeout)
    buf = b""
    frames = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        while len(buf) >= 9:
            n = struct.unpack(">I", b"\0" + buf[:3])[0]
            if len(buf) < 9 + n:
                break
            ftype, flags = buf[3], buf[4]
            stream = struct.unpack(">I", buf[5:9])[0] & 0x7FFFFFFF
            payload = buf[9:9 + n]
            buf = buf[9 + n:]
            frames.append((ftype, flags, stream, payload))
            if ftype == SETTINGS and not flags & ACK:
                send_quietly(s, frame(SETTINGS, ACK, 0, b""))
            if ftype == PING and not flags & ACK:
                send_quietly(s, frame(PING, ACK, 0, payload))
            if ftype == GOAWAY or (stream == 1 and (flags & END_STREAM or ftype == RST_STREAM)):
                return frames, False
        try:
            chunk = s.recv(65536)
        except (socket.timeout, ConnectionResetError):
            return frames, True
        if not chunk:
            return frames, True
        buf += chunk
    return frames, True


def stream_data(frames):
    return b"".join(p for t, _, st, p in frames if t == DATA and st == 1)


def grpc_message(msg, compressed=False):
    return bytes([1 if compressed else 0]) + struct.pack(">I", len(msg)) + msg


# ---------------------------------------------------------------- cases


def case_random_bytes():
    for size in (1, 23, 24, 100, 65536):
        s = connect()
        send_quietly(s, bytes(rng.getrandbits(8) for _ in range(size)))
        drain(s, 0.3)
        s.close()
    alive("random bytes")


def case_preface_then_garbage():
    for size in (1, 9, 4096):
        s = connect()
        send_quietly(s, PREFACE + bytes(rng.getrandbits(8) for _ in range(size)))
        drain(s, 0.3)
        s.close()
    alive("the HTTP/2 preface then random bytes")


def case_bad_frames():
    bad = [
        frame(SETTINGS, 0, 0, b"\x00\x01\x00"),                 # SETTINGS length not a multiple of 6
        frame(SETTINGS, 0, 1, b""),                             # SETTINGS on a stream
        frame(DATA, 0, 1, b"abc"),                              # DATA on an idle stream
        frame(HEADERS, END_HEADERS, 1, b"\xff\xff\xff\xff"),    # undecodable HPACK
        frame(HEADERS, END_HEADERS, 2, hpack_literal(b":path", b"/")),  # even stream ID from a client
        frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x00\x00"),        # zero window increment
        frame(PING, 0, 0, b"short"),                            # PING not 8 bytes
        frame(0x42, 0, 0, b"unknown frame type"),               # unknown types must be ignored
        b"\x00\x00\x00",                                        # truncated frame header
        b"\xff\xff\xff" + bytes([DATA, 0]) + b"\x00\x00\x00\x01",  # a 16 MiB frame announced, never sent
    ]
    for i, f in enumerate(bad):
        s = connect()
        send_quietly(s, PREFACE + frame(SETTINGS, 0, 0, b"") + f)
        drain(s, 0.3)
        s.close()
    alive("malformed HTTP/2 frames")


def case_http1_garbage():
    reqs = [
        b"GARBAGE\r\n\r\n",
        b"GET /health HTTP/9.9\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n",
        b"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n{",
        b"GET /health HTTP/1.1\r\nHost:",
        b"GET /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ]
    for r in reqs:
        s = connect()
        send_quietly(s, r)
        drain(s, 0.3)
        s.close()
    alive("malformed HTTP/1.1")


def case_http1_refused_at_once():
    """What can never become a request is answered 400 and closed at once,
    not held open until a blank line that never comes."""
    payloads = [
        ("a TLS ClientHello on the plain port", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"
         + bytes(rng.getrandbits(8) for _ in range(160))),
        ("NUL bytes", b"\x00" * 5000),
        ("random bytes after a non-token byte", b"\xff" + bytes(rng.getrandbits(8) for _ in range(4000))),
        ("a method too long", b"A" * 40),
        ("a request line without a version, then nothing", b"hello there\n"),
    ]
    for what, data in payloads:
        s = connect()
        send_quietly(s, data)
        t0 = time.monotonic()
        got = drain(s, 5.0)
        took = time.monotonic() - t0
        s.close()
        check(got.startswith(b"HTTP/1.1 400 "), "%s: no 400 (got %r)" % (what, got[:40]))
        check(took < 4.0, "%s: the connection stayed open %.1f s" % (what, took))
    alive("input that can never become a request")


def case_idle_and_half_open_connections():
    held = []
    for i in range(50):
        s = connect()
        send_quietly(s, [b"", b"P", PREFACE[:10], PREFACE, b"GET /health HTTP/1.1\r\n"][i % 5])
        held.append(s)
    t0 = time.monotonic()
    alive("50 idle or half-sent connections held open")
    check(time.monotonic() - t0 < 5, "answering took %.1f s with 50 stalled connections" % (time.monotonic() - t0))
    for s in held:
        s.close()
    for _ in range(200):
        s = connect()
        s.close()
    alive("200 connections opened and closed at once")


def case_grpc_by_hand():
    """A valid Range split into 1-byte DATA frames works; broken framing gets
    an error (never an OK response) and leaves the server up."""
    req = etcdrpc.RangeRequest(key=b"probe").SerializeToString()
    msg = grpc_message(req)
    s = connect()
    out = PREFACE + frame(SETTINGS, 0, 0, b"") + grpc_headers(b"/etcdserverpb.KV/Range")
    for i, b in enumerate(msg):
        out += frame(DATA, END_STREAM if i == len(msg) - 1 else 0, 1, bytes([b]))
    s.sendall(out)
    frames, _ = read_frames(s)
    s.close()
    data = stream_data(frames)
    check(len(data) >= 5, "no response message to a Range sent one byte per DATA frame (frames: %r)"
          % [(t, f, st) for t, f, st, _ in frames])
    n = struct.unpack(">I", data[1:5])[0]
    resp = etcdrpc.RangeResponse.FromString(data[5:5 + n])
    check(resp.header.revision > 0, "the Range response has a header")

    broken = [
        ("compressed flag without grpc-encoding", grpc_message(req, compressed=True)),
        ("length prefix longer than the data", b"\x00\x00\x00\x01\x00" + req),
        ("truncated length prefix", b"\x00\x00"),
    ]
    for what, body in broken:
        s = connect()
        s.sendall(PREFACE + frame(SETTINGS, 0, 0, b"") + grpc_headers(b"/etcdserverpb.KV/Range")
                  + frame(DATA, END_STREAM, 1, body))
        frames, _ = read_frames(s)
        s.close()
        data = stream_data(frames)
        check(not data, "%s: the server sent a response message %r" % (what, data[:40]))
    # No expectation on the answer, only that the server survives: etcd
    # (grpc-go) answers the first of two messages on a unary call.
    for body in (msg + msg, msg + b"\x00"):
        s = connect()
        s.sendall(PREFACE + frame(SETTINGS, 0, 0, b"") + grpc_headers(b"/etcdserverpb.KV/Range")
                  + frame(DATA, END_STREAM, 1, body))
        read_frames(s, 2.0)
        s.close()
    s = connect()
    s.sendall(PREFACE + frame(SETTINGS, 0, 0, b"") + grpc_headers(b"/etcdserverpb.KV/Range")
              + frame(RST_STREAM, 0, 1, b"\x00\x00\x00\x08"))
    drain(s, 0.3)
    s.close()
    alive("hand-made gRPC requests")


def case_grpc_errors():
    ch = channel()

    def call(path, body):
        try:
            ch.unary_unary(path)(body, timeout=10)
        except grpc.RpcError as e:
            return e.code(), e.details()
        return grpc.StatusCode.OK, None

    eq((grpc.StatusCode.UNIMPLEMENTED, "unknown method Nope for service etcdserverpb.KV"),
       call("/etcdserverpb.KV/Nope", b""), "unknown method")
    eq((grpc.StatusCode.UNIMPLEMENTED, "unknown service nosuch.Svc"),
       call("/nosuch.Svc/Range", b""), "unknown service")
    code, details = call("/etcdserverpb.KV/Range", b"\xff\xff\xff")
    eq(grpc.StatusCode.INTERNAL, code, "undecodable request: code")
    check(details.startswith("grpc: error unmarshalling request"), "undecodable request: message %r" % details)
    eq((grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key is not provided"),
       call("/etcdserverpb.KV/Put", b""), "an empty PutRequest")

    def put(n):
        return etcdrpc.PutRequest(key=b"big", value=b"x" * n).SerializeToString()

    eq((grpc.StatusCode.OK, None), call("/etcdserverpb.KV/Put", put(1400 * 1024)), "a 1.4 MiB put")
    eq((grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: request is too large"),
       call("/etcdserverpb.KV/Put", put(1600 * 1024)), "a 1.6 MiB put")
    eq((grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: request is too large"),
       call("/etcdserverpb.KV/Put", put(1536 * 1024)), "a put of exactly 1.5 MiB of value")
    txn = etcdrpc.TxnRequest(success=[
        etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=b"big%d" % i, value=b"y" * (600 * 1024)))
        for i in range(3)]).SerializeToString()
    eq((grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: request is too large"),
       call("/etcdserverpb.KV/Txn", txn), "a txn of 3 x 600 KiB")
    body = put(3 << 20)
    eq((grpc.StatusCode.RESOURCE_EXHAUSTED,
        "grpc: received message larger than max (%d vs. %d)" % (len(body), 2 * 1024 * 1024)),
       call("/etcdserverpb.KV/Put", body), "a 3 MiB message")
    ch.close()
    alive("gRPC errors")


def case_abandoned_streams():
    """A client with open Watch and LeaseKeepAlive streams and a call in
    flight dies (no RST_STREAM, no GOAWAY): the server cleans up."""
    code = r'''
import os, sys, threading, time, grpc, queue
import etcd3.etcdrpc as r
ch = grpc.insecure_channel(sys.argv[1])
def reqs(first):
    yield first
    time.sleep(3600)
w = r.WatchStub(ch).Watch(reqs(r.WatchRequest(create_request=r.WatchCreateRequest(key=b"a", range_end=b"\0"))))
next(w)
lease = r.LeaseStub(ch).LeaseGrant(r.LeaseGrantRequest(TTL=60), timeout=5)
k = r.LeaseStub(ch).LeaseKeepAlive(reqs(r.LeaseKeepAliveRequest(ID=lease.ID)))
next(k)
print("streams open", flush=True)
os._exit(0)
'''
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", code, ENDPOINT], capture_output=True, timeout=30)
        eq(b"streams open\n", out.stdout, "the helper opened its streams (stderr: %r)" % out.stderr[-300:])
    alive("clients that died with streams open")


def main():
    names = sys.argv[3:] or [n[5:] for n in globals() if n.startswith("case_")]
    for name in names:
        t0 = time.monotonic()
        try:
            globals()["case_" + name]()
        except Exception as e:
            print("FAIL: wire_probe %s (seed %d): %s" % (name, SEED, e), flush=True)
            import traceback
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)
        print("   %s: ok (%d ms)" % (name, (time.monotonic() - t0) * 1000), flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
