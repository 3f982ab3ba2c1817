#!/usr/bin/python3
"""tests/unit/wire_client.py: the client half of test_wire_grpc.

test_wire_grpc starts a gRPC server with a small echo service and runs this
script against it with python3-grpcio (a real gRPC implementation, the one
python3-etcd3 uses). Each check raises on failure; the exit status tells the
C test. Usage: wire_client.py MODE PORT [PORT2 CERTDIR]
  plain  gRPC over h2c, HTTP/1.1 and garbage on the same port
  tls    gRPC over TLS with client-cert-auth on PORT, without on PORT2
"""
import http.client
import os
import socket
import ssl
import subprocess
import sys
import time

import grpc

MIB = 1024 * 1024


def ident(b):
    return b


def unary(ch, path):
    return ch.unary_unary(path, request_serializer=ident, response_deserializer=ident)


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print("    ok:", what, flush=True)


def expect_error(fn, code, details=None):
    try:
        fn()
    except grpc.RpcError as e:
        if e.code() != code or (details is not None and e.details() != details):
            raise AssertionError("wanted %s %r, got %s %r" % (code, details, e.code(), e.details()))
        return e
    raise AssertionError("wanted %s, the call succeeded" % code)


def stats(ch):
    text = unary(ch, "/test.Echo/Say")(b"stats", timeout=10).decode()
    return dict(kv.split("=") for kv in text.split())


def wait_stat(ch, name, at_least, what):
    for _ in range(100):
        if int(stats(ch)[name]) >= at_least:
            check(True, what)
            return
        time.sleep(0.05)
    raise AssertionError("%s: %s stayed below %d: %r" % (what, name, at_least, stats(ch)))


def read_until_eof(sock, timeout=5.0):
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk


def grpc_checks(ch, port):
    say = unary(ch, "/test.Echo/Say")
    check(say(b"hello", timeout=10) == b"hello", "unary echo")
    check(say(b"", timeout=10) == b"", "empty message")

    big = os.urandom(MIB)
    check(say(big, timeout=30) == big, "1 MiB request echoed")
    check(len(say(b"big:%d" % MIB, timeout=30)) == MIB, "1 MiB response")

    futures = [say.future(b"m%d" % i, timeout=30) for i in range(200)]
    check(all(f.result() == b"m%d" % i for i, f in enumerate(futures)), "200 concurrent calls")

    chat = ch.stream_stream("/test.Echo/Chat", request_serializer=ident,
                            response_deserializer=ident)
    msgs = [b"chat %d" % i for i in range(2000)]
    check(list(chat(iter(msgs), timeout=60)) == msgs, "2000 messages each way on one bidi stream")
    mixed = [os.urandom(n) for n in (0, 1, 5, 16384, 70000, 300000)]
    check(list(chat(iter(mixed), timeout=60)) == mixed, "bidi messages across frame sizes")

    count = ch.unary_stream("/test.Echo/Count", request_serializer=ident,
                            response_deserializer=ident)
    total, n = 0, 0
    for m in count(b"160 65536", timeout=60):
        total += len(m)
        n += 1
    check(n == 160 and total == 10 * MIB, "10 MiB server stream (flow control, send queue bound)")

    text = "caf\u00e9 100% sure\r\nline two \u2603"
    e = expect_error(lambda: say(b"fail:9:" + text.encode(), timeout=10),
                     grpc.StatusCode.FAILED_PRECONDITION, text)
    check(e.details() == text, "trailers-only error, percent-encoded message decoded by grpcio")
    expect_error(lambda: say(b"send-then-fail:10:aborted after a message", timeout=10),
                 grpc.StatusCode.ABORTED, "aborted after a message")
    check(True, "error trailers after a message")

    expect_error(lambda: unary(ch, "/nosuch.Svc/X")(b"", timeout=10),
                 grpc.StatusCode.UNIMPLEMENTED, "unknown service nosuch.Svc")
    check(True, "unknown service text")
    expect_error(lambda: unary(ch, "/etcdserverpb.KV/Nope")(b"", timeout=10),
                 grpc.StatusCode.UNIMPLEMENTED, "unknown method Nope for service etcdserverpb.KV")
    check(True, "unknown method text")

    expect_error(lambda: say(b"x" * (2 * MIB), timeout=30), grpc.StatusCode.RESOURCE_EXHAUSTED,
                 "grpc: received message larger than max (2097152 vs. 1572864)")
    check(True, "oversized request: RESOURCE_EXHAUSTED with grpc-go's text")
    check(say(b"after", timeout=10) == b"after", "the channel still works")

    expect_error(lambda: say(b"sleep:3000", timeout=0.3), grpc.StatusCode.DEADLINE_EXCEEDED)
    check(True, "deadline exceeded")

    before = int(stats(ch)["count_closes"])
    it = count(b"forever 1024", timeout=60)
    for _ in range(5):
        next(it)
    it.cancel()
    wait_stat(ch, "count_closes", before + 1, "client cancel reaches on_close")

    before = int(stats(ch)["chat_closes"])
    it = chat(iter([b"a"] * 3), timeout=60)
    next(it)
    it.cancel()
    wait_stat(ch, "chat_closes", before + 1, "bidi cancel reaches on_close")


def http_checks(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/health")
    r = conn.getresponse()
    body = r.read()
    check(r.status == 200 and body == b'{"health":"true"}', "HTTP/1.1 GET /health")
    check(r.getheader("Content-Type") == "application/json", "content type")
    conn.request("POST", "/echo", body=b"abc" * 1000, headers={"X-Token": "t0k"})
    r = conn.getresponse()
    check(r.status == 200 and r.read() == b"POST /echo 3000 t0k", "keep-alive POST with a body")
    conn.request("GET", "/later")
    r = conn.getresponse()
    check(r.status == 202 and r.read() == b"later", "an answer given after the callback")
    conn.request("GET", "/nothing")
    r = conn.getresponse()
    check(r.status == 404 and r.read() == b"no such page", "handler's 404")
    conn.close()

    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n"
              b"Connection: close\r\n\r\n")
    data, eof = read_until_eof(s)
    check(data.count(b"HTTP/1.1 200 OK") == 2 and eof, "two pipelined requests, then close")
    s.close()

    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.1\r\n" + b"X-Big: " + b"a" * 20000 + b"\r\n\r\n")
    data, eof = read_until_eof(s)
    check(data.startswith(b"HTTP/1.1 431") and eof, "oversized head: 431 and close")
    s.close()


def garbage_checks(ch, port):
    for junk in (b"\x00\xff\xfe garbage \x01\x02\r\n\r\n",
                 b"GET\r\n\r\n",
                 b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff" * 200,
                 b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\x04\x00\x00\x00\x00\x00"
                 b"\x00\x10\x00\x01\x00\x00\x00\x01" + os.urandom(4000)):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(junk)
        _, eof = read_until_eof(s)
        check(eof, "garbage %r...: connection closed" % junk[:12])
        s.close()
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(os.urandom(100))
        s.close()
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n")  # vanishes mid-preface
    s.close()
    check(unary(ch, "/test.Echo/Say")(b"alive", timeout=10) == b"alive",
          "server still serving after garbage and vanished clients")


def vanish_checks(ch, port):
    before = int(stats(ch)["count_closes"])
    code = ("import grpc, os\n"
            "ch = grpc.insecure_channel('127.0.0.1:%d')\n"
            "it = ch.unary_stream('/test.Echo/Count', request_serializer=lambda b: b,\n"
            "                     response_deserializer=lambda b: b)(b'forever 65536')\n"
            "next(it)\n"
            "os._exit(0)\n" % port)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    wait_stat(ch, "count_closes", before + 1, "a client process dying mid-stream: on_close")

    # A raw HTTP/2 client that asks for a stream, never reads, and vanishes.
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    s.close()


def plain(port):
    with grpc.insecure_channel("127.0.0.1:%d" % port) as ch:
        grpc_checks(ch, port)
        http_checks(port)
        garbage_checks(ch, port)
        vanish_checks(ch, port)
        st = stats(ch)
        print("    server stats:", st, flush=True)


def tls(port, port2, certdir):
    def rd(name):
        with open(os.path.join(certdir, name), "rb") as f:
            return f.read()

    ca, ckey, ccert = rd("ca.crt"), rd("client.key"), rd("client.crt")
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=ckey,
                                         certificate_chain=ccert)
    with grpc.secure_channel("localhost:%d" % port, creds) as ch:
        say = unary(ch, "/test.Echo/Say")
        check(say(b"over tls", timeout=10) == b"over tls", "TLS with a client certificate (ALPN h2)")
        big = os.urandom(MIB)
        check(say(big, timeout=30) == big, "1 MiB over TLS")
        count = ch.unary_stream("/test.Echo/Count", request_serializer=ident,
                                response_deserializer=ident)
        check(sum(len(m) for m in count(b"160 65536", timeout=60)) == 10 * MIB,
              "10 MiB stream over TLS")

    nocert = grpc.ssl_channel_credentials(root_certificates=ca)
    with grpc.secure_channel("localhost:%d" % port, nocert) as ch:
        expect_error(lambda: unary(ch, "/test.Echo/Say")(b"x", timeout=10),
                     grpc.StatusCode.UNAVAILABLE)
        check(True, "client-cert-auth refuses a client without a certificate")

    with grpc.secure_channel("localhost:%d" % port2, nocert) as ch:
        check(unary(ch, "/test.Echo/Say")(b"no cert", timeout=10) == b"no cert",
              "TLS without client-cert-auth")

    ctx = ssl.create_default_context(cadata=ca.decode())
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", port2)) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            check(s.selected_alpn_protocol() == "h2", "ALPN picks h2 when offered")

    ctx = ssl.create_default_context(cadata=ca.decode())
    ctx.set_alpn_protocols(["http/1.1"])
    conn = http.client.HTTPSConnection("localhost", port2, context=ctx, timeout=10)
    conn.request("GET", "/health")
    r = conn.getresponse()
    check(r.status == 200 and r.read() == b'{"health":"true"}', "HTTPS GET with ALPN http/1.1")
    conn.close()

    ctx = ssl.create_default_context(cadata=ca.decode())
    conn = http.client.HTTPSConnection("localhost", port2, context=ctx, timeout=10)
    conn.request("GET", "/health")
    r = conn.getresponse()
    check(r.status == 200 and r.read() == b'{"health":"true"}', "HTTPS GET without ALPN")
    conn.close()

    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"\x16\x03\x01\x00\x05hello" + os.urandom(300))
        _, eof = read_until_eof(s)
        check(eof, "garbage on the TLS port: connection closed")
    with grpc.secure_channel("localhost:%d" % port2, nocert) as ch:
        check(unary(ch, "/test.Echo/Say")(b"still", timeout=10) == b"still",
              "TLS port still serving")


def main():
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "plain":
        plain(port)
    elif mode == "tls":
        tls(port, int(sys.argv[3]), sys.argv[4])
    else:
        raise SystemExit("unknown mode " + mode)
    print("wire_client %s: all passed" % mode, flush=True)


if __name__ == "__main__":
    main()
