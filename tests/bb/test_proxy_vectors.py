"""Every vector of the PROXY spec's proxy-vectors.json against the running
broker over loopback (spec part (c); rules R13-R34, R40-R43, R51-R57).

One broker, one listener per distinct listener configuration of the
vectors (plus proxy_protocol_timeout 1 for the vectors that end in
silence). Each vector's reads are sent as separate writes (TCP_NODELAY, a
few ms apart), then FIN when the vector says so, and the outcome is
checked on the wire and in the log:

- header reject: closed without a byte written (R22), NOTICE line with
  the spec model's reason text and hint (R55, R54);
- accept: CONNACK 0 (or 4 when the CN cannot be the username, R43), and
  the proxied client address in `New client connected from ...` (R46);
  header-time policy refusals (R40, R41) close without a byte; a header
  followed by FIN is a health check, logged at DEBUG only (R33, R34);
- need-more + FIN: closed, `closed during header (<k> bytes)` (R21);
- need-more + silence: closed after proxy_protocol_timeout (R20).

Each connection binds its own 127.0.1.x source so that the per-source
rate limit of R52 never hides the line a vector expects. The JSON is read
from ../shared/spec beside the repository (CI's read-only copy), or from
$MQX_PROXY_VECTORS.
"""

import json
import os
import re
import time

import pytest

import mqttwire as w
from conftest import ROOT, BrokerFactory, free_port, run_mqttpx
from mqttwire import (Conn, connack, connect, open_client, pp2_ssl, proxy_v2,
                      recv_pub, sub, pub)


def _vectors_path():
    for p in (os.environ.get("MQX_PROXY_VECTORS"),
              os.path.join(ROOT, "..", "shared", "spec", "proxy-vectors.json"),
              "/work/shared/spec/proxy-vectors.json"):
        if p and os.path.exists(p):
            return p
    return None


VECTORS_PATH = _vectors_path()
if VECTORS_PATH is None:
    pytest.skip("proxy-vectors.json not found (../shared/spec or "
                "$MQX_PROXY_VECTORS)", allow_module_level=True)
with open(VECTORS_PATH) as _f:
    VECTORS = json.load(_f)

CONNECT_C1 = bytes.fromhex("100e00044d5154540402003c00026331")
V2_LOCAL = bytes.fromhex("0d0a0d0a000d0a515549540a20000000")   # V2-06
V2_LOCAL_SSL0 = bytes.fromhex(                                 # V2-07
    "0d0a0d0a000d0a515549540a200000082000050000000000")

OPTS = ("proxy_protocol_v2_require_tls", "require_certificate",
        "use_identity_as_username")


def silent(v):
    return v["expect"]["header"] == "need-more" and not v["eof_after_reads"]


def lkey(v):
    """Which listener a vector runs on."""
    lst = v["listener"]
    return (lst["enable_proxy_protocol"],) + tuple(
        bool(lst.get(k)) for k in OPTS) + (silent(v), False)


# extra listeners for the tests below the vectors
K_FULL = (2, True, True, True, False, False)
K_TLS = (2, True, False, False, False, False)
K_V2 = (2, False, False, False, False, False)
K_V2_T1 = (2, False, False, False, True, False)  # proxy_protocol_timeout 1
K_LOCAL_CLOSE = (2, False, False, False, False, True)


def listener_lines(key, port):
    mode, tls, cert, ident, timeout1, local_close = key
    out = ["listener %d 127.0.0.1" % port, "enable_proxy_protocol %d" % mode]
    for on, name in zip((tls, cert, ident), OPTS):
        if on:
            out.append("%s true" % name)
    if timeout1:
        out.append("proxy_protocol_timeout 1")
    if local_close:
        out.append("proxy_protocol_local close")
    return out


class Run:
    """The module's broker, its listener ports, source addresses handed
    out, and what the $SYS counters should say (R57)."""

    def __init__(self, b, fac, ports):
        self.b, self.fac, self.ports = b, fac, ports
        self.next_src = 1
        self.count = {"accepted": 0, "rejected": 0, "timeout": 0, "local": 0}
        self.verdict_logged = set()  # R52: hosts with a policy line

    def source(self):
        assert self.next_src < 255
        s = "127.0.1.%d" % self.next_src
        self.next_src += 1
        return s


@pytest.fixture(scope="module")
def run(request):
    keys = sorted({lkey(v) for v in VECTORS} |
                  {K_FULL, K_TLS, K_V2, K_V2_T1, K_LOCAL_CLOSE})
    ports = {k: free_port() for k in keys}
    lines = ["allow_anonymous true", "sys_interval 1",
             "listener {port} 127.0.0.1"]
    for k in keys:
        lines += listener_lines(k, ports[k])
    fac = BrokerFactory(request)
    r = Run(None, fac, ports)
    try:
        r.b = fac(conf="\n".join(lines) + "\n", name="vectors")
    except Exception:
        fac.teardown()
        raise
    yield r
    problems = fac.teardown()
    assert not problems, problems


@pytest.fixture(autouse=True)
def _attach_log(request, run):
    request.node._mqx_brokers = run.fac  # the log goes into failure reports


def addr_re(text):
    """The client address the log must show: exact, or host and any port
    for the captured vectors' '<ephemeral>'."""
    if "<ephemeral>" in text:
        return re.escape(text.split("<ephemeral>")[0]) + r"\d+"
    return re.escape(text)


def open_conn(run, key):
    return Conn(run.ports[key], source=run.source(), nodelay=True)


@pytest.mark.parametrize("v", VECTORS, ids=[v["id"] for v in VECTORS])
def test_vector(run, v):
    b, e = run.b, v["expect"]
    key = lkey(v)
    port = run.ports[key]
    reads = [bytes.fromhex(r) for r in v["reads"]]
    mark = b.mark()
    c = open_conn(run, key)
    peer = c.local_addr
    t0 = time.monotonic()
    sent = c.send_reads(reads)
    if v["eof_after_reads"]:
        c.shutdown_write()
    kind = e["header"]

    if kind == "reject":  # R22: nothing written; R55 reason + R54 hint
        c.expect_closed()
        run.count["rejected"] += 1
        b.wait_log("PROXY: connection from %s on port %d rejected: %s"
                   % (peer, port, v["reference_reason"]), since=mark)
        assert not b.find("New connection from", since=mark)
        return

    assert sent == len(reads), "closed after %d of %d reads" % (
        sent, len(reads))
    if kind == "need-more":
        if v["eof_after_reads"]:  # R21
            c.expect_closed()
            b.wait_log("PROXY: connection from %s on port %d closed during "
                       "header (%d bytes)"
                       % (peer, port, sum(map(len, reads))), since=mark)
        else:  # R20, with proxy_protocol_timeout 1
            c.expect_closed(timeout=4)
            took = time.monotonic() - t0
            assert 0.9 <= took <= 3.0, "closed after %.2f s, want ~1 s" % took
            run.count["timeout"] += 1
            b.wait_log("PROXY: header from %s on port %d not received "
                       "within 1 s" % (peer, port), since=mark)
        return

    # accept
    assert kind == "accept"
    client = peer if e["client"] == "real peer" else e["client"]
    cre = addr_re(client)
    policy = e["policy"]
    if policy.startswith("reject:"):  # R40, R41: at header time, no bytes
        c.expect_closed()
        run.count["rejected"] += 1
        host = client.rsplit(":", 1)[0]
        pat = re.compile(r"PROXY: connection from %s via %s on port %d "
                         r"rejected, %s\." % (cre, re.escape(peer), port,
                                              re.escape(policy[7:])))
        if host not in run.verdict_logged:  # R52: first line per source
            b.wait_log(pat, since=mark)
            run.verdict_logged.add(host)
        return
    run.count["accepted"] += 1
    if policy == "defer":
        run.count["local"] += 1
    if v["eof_after_reads"]:  # a health check: DEBUG only (R33, R34)
        c.expect_closed()
        b.wait_log(re.compile(r"PROXY: health check from %s via %s on port "
                              r"%d \(PROXY v%d.*\) closed without MQTT"
                              % (cre, re.escape(peer), port,
                                 v["listener"]["enable_proxy_protocol"])),
                   since=mark)
        assert not b.find("New connection from", since=mark)
        return
    if not e["bytes_left_for_mqtt"]:
        # the header alone: the broker must wait for MQTT (R14, R17)
        c.send(CONNECT_C1)
    if e["username"] is None:  # R43: no usable CN
        c.expect(connack(0, 4))
        c.expect_closed()
        b.wait_log(re.compile(r"Client c1 from %s refused: no usable "
                              r"certificate CN" % cre), since=mark)
        assert not b.find("New client connected", since=mark)
        return
    c.expect(connack(0, 0))
    conn_line = b.wait_log(
        re.compile(r"New connection from %s via %s on port %d \(PROXY v%d"
                   % (cre, re.escape(peer), port,
                      v["listener"]["enable_proxy_protocol"])), since=mark)
    if policy == "defer":
        assert "(PROXY v2 LOCAL" in conn_line, conn_line
    if e["client"] == "real peer" and v["listener"][
            "enable_proxy_protocol"] == 1:
        assert "(PROXY v1 UNKNOWN" in conn_line, conn_line
    user = e["username"]
    tail = r"\(p2, c1, k60, u'%s'\)\." % re.escape(user) \
        if user != "n/a" else r"\(p2, c1, k60\)\."
    b.wait_log(re.compile(r"New client connected from %s as c1 %s"
                          % (cre, tail)), since=mark)
    c.send(w.DISCONNECT_BYTES)
    c.expect_closed()


# ---- beyond the vectors ------------------------------------------------

@pytest.mark.parametrize("key,header", [
    (K_FULL, V2_LOCAL_SSL0),   # V2-07's health check, then a CONNECT
    (K_TLS, V2_LOCAL),         # V2-06's bare LOCAL, then a CONNECT
], ids=["full-ssl-client0", "require-tls-bare"])
def test_local_connect_fails_tls_requirements(run, key, header):
    # R33: TLS requirements are not applied to LOCAL at header time; a
    # CONNECT after it is refused with CONNACK 5 (not authorised)
    b = run.b
    mark = b.mark()
    c = open_conn(run, key)
    c.send_reads([header, CONNECT_C1])
    c.expect(connack(0, 5))
    c.expect_closed()
    run.count["accepted"] += 1
    run.count["local"] += 1
    b.wait_log("Client c1 from %s refused: the LOCAL PROXY header does not "
               "meet the listener's TLS requirements." % c.local_addr,
               since=mark)
    assert not b.find("New client connected", since=mark)


def test_local_with_verified_certificate_uses_cn(run):
    # R33 + R43: a LOCAL header whose SSL TLV shows a verified certificate
    # passes the TLS checks at CONNECT, and its CN is the username
    b = run.b
    mark = b.mark()
    c = open_conn(run, K_FULL)
    hdr = proxy_v2(local=True, tlvs=pp2_ssl(0x07, 0, "TLSv1.3", "device-42"))
    c.send_reads([hdr, connect("local-cn", username="ignored",
                               password="pw")])
    c.expect(connack(0, 0))
    run.count["accepted"] += 1
    run.count["local"] += 1
    b.wait_log("New client connected from %s as local-cn (p2, c1, k60, "
               "u'device-42')." % c.local_addr, since=mark)
    c.send(w.DISCONNECT_BYTES)
    c.expect_closed()


def test_header_then_several_packets_in_one_segment(run):
    # R17: everything after the header in the same read reaches MQTT
    c = open_conn(run, K_V2)
    hdr = proxy_v2("198.51.100.9", "192.0.2.1", 50000, 1883)
    c.send(hdr + connect("burst") + w.subscribe(1, [("burst/#", 1)])
           + w.publish("burst/x", b"one", qos=1, pid=2) + w.PINGREQ_BYTES)
    c.expect(connack(0, 0))
    run.count["accepted"] += 1
    got = [c.recv_packet() for _ in range(4)]
    types = sorted(p.type for p in got)
    assert types == [w.PUBLISH, w.PUBACK, w.SUBACK, w.PINGRESP], got
    run.b.wait_log("New client connected from 198.51.100.9:50000 as burst ")
    c.send(w.DISCONNECT_BYTES)
    c.expect_closed()


def test_header_then_connect_split(run):
    # R17 + R15: the header and the first bytes of CONNECT in one read,
    # the rest of CONNECT later
    c = open_conn(run, K_V2)
    hdr = proxy_v2("2001:db8::77", "2001:db8::1", 40001, 1883)
    pkt = connect("split-after-header")
    c.send_reads([hdr + pkt[:5], pkt[5:9], pkt[9:]])
    c.expect(connack(0, 0))
    run.count["accepted"] += 1
    run.b.wait_log("New client connected from 2001:db8::77:40001 as "
                   "split-after-header ")
    c.send(w.DISCONNECT_BYTES)
    c.expect_closed()


def test_eof_before_any_byte_is_debug(run):
    # R21: a port probe (connect, close) is a DEBUG line, nothing louder
    b = run.b
    mark = b.mark()
    c = open_conn(run, K_V2)
    peer = c.local_addr
    c.shutdown_write()
    c.expect_closed()
    b.wait_log("PROXY: connection from %s on port %d closed before any byte"
               % (peer, run.ports[K_V2]), since=mark)
    lines = b.find(peer, since=mark)
    assert len(lines) == 2 and "waiting for the PROXY header" in lines[0], \
        lines


def test_local_close_option(run):
    # R8: proxy_protocol_local close reproduces Mosquitto 2.1 (V2-08)
    b = run.b
    mark = b.mark()
    c = open_conn(run, K_LOCAL_CLOSE)
    c.send(V2_LOCAL + CONNECT_C1)
    c.expect_closed()
    run.count["accepted"] += 1
    run.count["local"] += 1
    b.wait_log("PROXY: LOCAL connection from %s closed (proxy_protocol_local "
               "close)" % c.local_addr, since=mark)


def test_header_timeout_default_is_not_one_second(run):
    # R7: 5 s by default; the vector listeners without the option must
    # still hold a silent connection after the 1 s ones have closed
    c = open_conn(run, K_V2)
    c.send(V2_LOCAL[:10])
    c2 = open_conn(run, K_V2_T1)
    c2.send(V2_LOCAL[:10])
    c2.expect_closed(timeout=4)
    c.send(V2_LOCAL[10:] + CONNECT_C1)
    c.expect(connack(0, 0))
    run.count["accepted"] += 1
    run.count["local"] += 1
    run.count["timeout"] += 1
    c.send(w.DISCONNECT_BYTES)
    c.expect_closed()


@pytest.mark.parametrize("data,tail", [
    (bytes.fromhex("0d0a0d0a000d0a515549540b2111000cc0000205c63364011883075b"),
     "rejected: bad v2 signature"),                               # V2-13
    (CONNECT_C1, "rejected: bad v2 signature (looks like MQTT CONNECT "
     "without PROXY header); is the port reachable directly, or is "
     "send-proxy missing on the HAProxy server line?"),           # V2-43
], ids=["reason", "reason-hint-advice"])
def test_reject_line_ends_with_reason(run, data, tail):
    # R55: the reason (and R54 hint) end the line: log tooling (fail2ban
    # filters anchored with $) must not meet trailing blanks
    b = run.b
    mark = b.mark()
    c = open_conn(run, K_V2)
    c.send(data)
    c.expect_closed()
    run.count["rejected"] += 1
    line = b.wait_log("PROXY: connection from %s on port %d rejected: "
                      % (c.local_addr, run.ports[K_V2]), since=mark)
    assert line.endswith(tail), "line ends %r, want %r" % (
        line[-len(tail) - 3:], tail)


def test_cn_user_with_password_and_acl_files(broker):
    # R44: a client admitted by its certificate (R41 + R43) needs no
    # password even with a password file; the ACL applies with %u = CN.
    # (Its own broker: does not touch the module's counters.)
    d = broker.dir
    r = run_mqttpx(["passwd", "-c", "-b", d + "/passwd", "alice", "s3cret"])
    assert r.returncode == 0, r.out
    with open(d + "/acl", "w") as f:
        f.write("pattern readwrite dev/%u/#\n")
    b = broker(conf="allow_anonymous false\npassword_file {dir}/passwd\n"
               "acl_file {dir}/acl\nlistener {port} 127.0.0.1\n"
               "enable_proxy_protocol 2\nrequire_certificate true\n"
               "use_identity_as_username true\n")
    hdr = proxy_v2("203.0.113.7", "192.0.2.1", 51234, 8883,
                   tlvs=pp2_ssl(0x07, 0, "TLSv1.3", "device-42"))
    c = Conn(b.port)
    # the CONNECT's own credentials are discarded, a wrong password too
    c.send(hdr + connect("cn-acl", username="alice", password="wrong"))
    c.expect(connack(0, 0))
    b.wait_log("New client connected from 203.0.113.7:51234 as cn-acl (p2, "
               "c1, k60, u'device-42').")
    assert sub(c, 1, [("dev/device-42/#", 1), ("dev/alice/#", 1)]) == \
        [1, 0x80]
    pub(c, "dev/device-42/t", b"mine", qos=1, pid=2)
    assert recv_pub(c).payload == b"mine"
    c.send(w.DISCONNECT_BYTES)
    c.expect_closed()
    # without a verified certificate the same header is refused (R41)
    c = Conn(b.port)
    c.send(proxy_v2("203.0.113.8", "192.0.2.1", 51235, 8883,
                    tlvs=pp2_ssl(0x07, 18, "TLSv1.3", "alice"))
           + connect("cn-bad", username="alice", password="s3cret"))
    c.expect_closed()


def test_sys_counters(run):
    # R57: $SYS/broker/proxy/* agree with what the tests above did
    # (runs last in this module; works for any -k selection)
    want = dict(run.count)
    s = open_client(run.b.port, "sys-watch")
    sub(s, 1, [("$SYS/broker/proxy/#", 0)])
    topics = {"$SYS/broker/proxy/headers/accepted": "accepted",
              "$SYS/broker/proxy/headers/rejected": "rejected",
              "$SYS/broker/proxy/headers/timeout": "timeout",
              "$SYS/broker/proxy/local": "local",
              "$SYS/broker/proxy/untrusted": None}
    got = {}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        m = recv_pub(s, timeout=3)
        name = topics.get(m.topic, "?")
        got[name] = int(m.payload)
        if all(got.get(k) == n for k, n in want.items()) and \
                got.get(None) == 0:
            break
    assert {k: got.get(k) for k in want} == want and got.get(None) == 0, \
        "want %r (untrusted 0), $SYS says %r" % (want, got)
