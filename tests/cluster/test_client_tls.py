#!/usr/bin/python3
"""libcairn over TLS with client certificates, and its errors on bad input:
one member serving https with --client-cert-auth (certificates made with
openssl as in tests/integration/test_tls.sh):
- the watch, lease and informer probes connect with --cacert/--cert/--key
  and work (an event, a renewal, a synced map);
- a wrong CA, no client certificate, plain http to the TLS port: the lease
  probe ends within its request timeout (+2 s) with an error, no hang;
- invalid endpoints and unreadable TLS files: refused at once with a reason
  on stderr; a refused port: an error within the request timeout.

    /usr/bin/python3 tests/cluster/test_client_tls.py <build-dir>
    CAIRN_TEST_SERVER=etcd /usr/bin/python3 tests/cluster/test_client_tls.py <build-dir>
"""

import os
import socket
import subprocess
import sys
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clusterlib import CHANNEL_OPTIONS, main  # noqa: E402
from probelib import Probe  # noqa: E402
import etcd3.etcdrpc as rpc  # noqa: E402


def openssl(t, pki, *args):
    p = subprocess.run(["openssl"] + list(args), cwd=pki, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        t.fail("openssl %s: %s" % (" ".join(args), p.stdout.decode(errors="replace")[-500:]))


def make_pki(t, pki):
    os.makedirs(pki)
    for ca in ("ca", "other-ca"):
        openssl(t, pki, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=cairn-" + ca,
                "-keyout", ca + ".key", "-out", ca + ".crt")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
                      ("client", "extendedKeyUsage=clientAuth\n")):
        with open(os.path.join(pki, name + ".ext"), "w") as f:
            f.write(ext)
        openssl(t, pki, "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=" + name, "-keyout", name + ".key",
                "-out", name + ".csr")
        openssl(t, pki, "x509", "-req", "-in", name + ".csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", name + ".ext", "-out", name + ".crt")


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def failing_probe(t, args, within, what):
    """The lease probe with args must end by itself within `within` seconds
    with a non-zero status and an END line that is not a success."""
    t0 = time.monotonic()
    p = Probe(t, "client_lease_probe", args + ["--ttl", "5"])
    rc = p.exit_code(within)
    took = time.monotonic() - t0
    lines = p.snapshot()
    end = [x for x in lines if x.startswith("END ")]
    t.check(rc != 0 and end and not any(x.startswith("GRANTED") for x in lines),
            "%s: exit %d, output %s%s" % (what, rc, lines, p.tail()))
    err = p.stderr_text().strip().splitlines()
    t.log("%s: exit %d after %.1f s: %s%s" % (what, rc, took, end[0], (" | stderr: " + err[-1]) if err else ""))
    return end[0], p.stderr_text()


def test(t):
    t.case("certificates: a CA, another CA, the server (127.0.0.1), a client")
    pki = os.path.join(t.tmp, "pki")
    make_pki(t, pki)
    P = lambda n: os.path.join(pki, n)  # noqa: E731

    t.case("one member with https and --client-cert-auth")
    c = t.cluster(1, extra=["--cert-file=" + P("server.crt"), "--key-file=" + P("server.key"),
                            "--trusted-ca-file=" + P("ca.crt"), "--client-cert-auth"])
    m = c.members[0]
    m.url = "https://" + m.endpoint
    c.start(m)
    # grpc's first connect to a port not yet bound backs off for seconds:
    # open the channel once the port accepts.
    t.wait_for(20, lambda: port_open(m.client_port), "the TLS member's port accepts connections", interval=0.05)
    creds = grpc.ssl_channel_credentials(root_certificates=open(P("ca.crt"), "rb").read(),
                                         private_key=open(P("client.key"), "rb").read(),
                                         certificate_chain=open(P("client.crt"), "rb").read())
    ch = grpc.secure_channel(m.endpoint, creds, options=CHANNEL_OPTIONS)
    kv = rpc.KVStub(ch)
    t.wait_for(20, lambda: kv.Range(rpc.RangeRequest(key=b"ready"), timeout=1) is not None,
               "the TLS member answers")
    tls = ["--endpoints", m.endpoint, "--cacert", P("ca.crt"), "--cert", P("client.crt"), "--key", P("client.key")]

    t.case("the probes over TLS with a client certificate")
    rev = kv.Range(rpc.RangeRequest(key=b"x"), timeout=5).header.revision
    w = Probe(t, "client_watch_probe", tls + ["--prefix", "tls/", "--start-rev", str(rev + 1)])
    inf = Probe(t, "client_informer_probe", tls + ["--prefix", "tls/"], stdin=True)
    lease = Probe(t, "client_lease_probe", tls + ["--ttl", "3", "--put", "tls/leased=1"])
    kv.Put(rpc.PutRequest(key=b"tls/a", value=b"over tls"), timeout=5)
    w.wait(lambda x: x == "EV %d PUT tls/a over%%20tls" % (rev + 1) or x.startswith("EV ") and "tls/a" in x, 10,
           "the event of tls/a")
    lease.wait(lambda x: x.startswith("RENEWED "), 10, "a renewal over TLS")
    inf.wait(lambda x: x.startswith("SYNCED ") and int(x.split()[-1]) == 2, 10, "a map of the two keys")
    for p in (w, inf, lease):
        p.stop()

    t.case("errors without a hang: wrong CA, no client certificate, plain http to the TLS port")
    short = ["--request-timeout-ms", "3000", "--dial-timeout-ms", "1000"]
    failing_probe(t, ["--endpoints", m.endpoint, "--cacert", P("other-ca.crt"), "--cert", P("client.crt"),
                      "--key", P("client.key")] + short, 6, "wrong CA")
    failing_probe(t, ["--endpoints", m.endpoint, "--cacert", P("ca.crt")] + short, 6, "no client certificate")
    failing_probe(t, ["--endpoints", "http://" + m.endpoint] + short, 6, "plain http to the TLS port")

    t.case("bad input: invalid endpoints and TLS files are refused at once, with a reason")
    for args, what in (([], "no endpoint"),
                       (["--endpoints", "ftp://127.0.0.1:1"], "an unknown scheme"),
                       (["--endpoints", "127.0.0.1"], "no port"),
                       (["--endpoints", "127.0.0.1:99999"], "a port out of range"),
                       (["--endpoints", "http://" + m.endpoint, "--cacert", P("ca.crt")],
                        "TLS files with an http:// endpoint"),
                       (["--endpoints", m.endpoint, "--cacert", P("missing.crt")], "an unreadable CA file")):
        t0 = time.monotonic()
        p = Probe(t, "client_lease_probe", args + ["--ttl", "5"])
        rc = p.exit_code(3)
        err = p.stderr_text().strip()
        t.check(rc != 0 and err, "%s: exit %d, stderr %r" % (what, rc, err))
        t.log("%s: exit %d in %.2f s: %s" % (what, rc, time.monotonic() - t0, err.splitlines()[0][:160]))

    t.case("a refused port: an error within the request timeout")
    failing_probe(t, ["--endpoints", "127.0.0.1:1"] + short, 6, "a refused port")

    t.case("SIGTERM the member")
    ch.close()
    c.stop_all()


main(test)
