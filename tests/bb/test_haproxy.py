"""HAProxy in front of mqttpx, one test per deployment of the HAProxy guide
(tests/conf/haproxy/NN-*.cfg for haproxy, NN-*.conf for mqttpx, with
common.cfg shared; the {placeholders} are filled in here).

Every deployment carries a real client (mosquitto_pub/mosquitto_sub, or
paho) that publishes and receives through HAProxy. The client binds
127.0.0.5, so on PROXY deployments the broker must log 127.0.0.5 although
its TCP peer is HAProxy at 127.0.0.1 (R46); an IPv6 client through [::1]
must show as ::1. HAProxy's health checks (inter 200ms) must keep the
server UP and leave only DEBUG lines in the broker log (R33, R34). Each
restrictive deployment refuses what it must: plaintext into a require-TLS
listener (R40), missing or rogue certificates (R41), a direct connection
without header (R12), a valid header from an untrusted source (R10).
Placeholders: {fe_addr} {fe6_addr} {fe_port} {fe2_port} (HAProxy's
frontends), {be_port} {be2_port} (mqttpx's listeners), {dir} (mqttpx's
unix socket), {hdir} (HAProxy's sockets), {certs}, {inter} (check
interval). HAProxy runs as `haproxy -db` on loopback ports; the
certificates (a CA, server CN localhost, client CN device-42, a rogue
self-signed CN rogue) come from a session fixture using the openssl CLI.
"""

import csv
import os
import queue
import random
import re
import shutil
import socket
import ssl
import subprocess
import uuid

import pytest

import mqttwire as w
from conftest import (CONF_DIR, Broker, free_port, have_ipv6, run_mqttpx,
                      short_tmpdir)
from mqttwire import Conn, connack, connect, proxy_v1, proxy_v2

HAPROXY = shutil.which("haproxy")
MOSQ_PUB = shutil.which("mosquitto_pub")
MOSQ_SUB = shutil.which("mosquitto_sub")
OPENSSL = shutil.which("openssl")
HAVE_TOOLS = HAPROXY and MOSQ_PUB and MOSQ_SUB and OPENSSL
# paho 1.6's tls_set() uses ssl.PROTOCOL_TLS
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

HDIR = os.path.join(CONF_DIR, "haproxy")
IPV6 = have_ipv6()
CLIENT = "127.0.0.5"        # the real client's source address
PLACEHOLDER = re.compile(r"\{[a-z0-9_]+\}")


# ---- certificates ------------------------------------------------------

@pytest.fixture(scope="session")
def certs():
    if not OPENSSL:
        pytest.skip("needs openssl")
    """A CA, server.pem (CN localhost, SAN localhost/127.0.0.1/::1),
    client.crt/.key (O=Acme, CN device-42, signed by the CA) and a
    self-signed rogue.crt/.key (CN rogue). EC keys: fast."""
    d = short_tmpdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
          "-nodes"]

    def ossl(*args):
        r = subprocess.run([OPENSSL] + list(args), cwd=d, timeout=30,
                           capture_output=True, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr.decode()

    def write(name, text):
        with open(os.path.join(d, name), "w") as f:
            f.write(text)

    ossl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt",
         "-days", "2", "-subj", "/O=mqttpx tests/CN=mqttpx test CA")
    write("server.ext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\n"
          "extendedKeyUsage=serverAuth\n")
    write("client.ext", "extendedKeyUsage=clientAuth\n")
    for name, subj in (("server", "/CN=localhost"),
                       ("client", "/O=Acme/CN=device-42")):
        ossl("req", *ec, "-keyout", name + ".key", "-out", name + ".csr",
             "-subj", subj)
        ossl("x509", "-req", "-in", name + ".csr", "-CA", "ca.crt",
             "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
             "-out", name + ".crt", "-extfile", name + ".ext")
    ossl("req", "-x509", *ec, "-keyout", "rogue.key", "-out", "rogue.crt",
         "-days", "2", "-subj", "/CN=rogue")
    with open(os.path.join(d, "server.pem"), "w") as f:
        for part in ("server.crt", "server.key"):
            with open(os.path.join(d, part)) as g:
                f.write(g.read())
    return d


# ---- haproxy -----------------------------------------------------------

class HAProxy(Broker):
    """haproxy -db -f common.cfg -f deployment.cfg; its log (stdout) and
    warnings (stderr) are read like the broker's."""

    def __init__(self, common, cfg, workdir, name="haproxy"):
        Broker.__init__(self, cfg, workdir, 0, name=name)
        self.common_path = os.path.join(workdir, name + "-common.cfg")
        with open(self.common_path, "w") as f:
            f.write(common)
        self.cmd = [HAPROXY, "-db", "-f", self.common_path,
                    "-f", self.conf_path]
        self.stats_path = os.path.join(workdir, "haproxy.sock")

    def stat(self, backend, server="s1"):
        """The 'show stat' row of a server, from the stats socket."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect(self.stats_path)
            s.sendall(b"show stat\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        finally:
            s.close()
        text = data.decode().lstrip("# ")
        for row in csv.DictReader(text.splitlines()):
            if row["pxname"] == backend and row["svname"] == server:
                return row
        raise AssertionError("no server %s/%s in %r" % (backend, server,
                                                        text[:500]))


def _port_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = map(int, f.read().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def listen_port(taken):
    """A free port below the ephemeral range (on 127.0.0.1 and ::1): a
    port from bind(0) could be handed to an outgoing connection (HAProxy's
    checks, the clients) before HAProxy binds it."""
    lo, _ = _port_range()
    rnd = random.Random()
    for _ in range(200):
        port = rnd.randrange(10000, max(lo, 10001))
        if port in taken:
            continue
        try:
            for fam, host in ((socket.AF_INET, "127.0.0.1"),) + (
                    ((socket.AF_INET6, "::1"),) if IPV6 else ()):
                s = socket.socket(fam, socket.SOCK_STREAM)
                try:
                    s.bind((host, port))
                finally:
                    s.close()
        except OSError:
            continue
        taken.add(port)
        return port
    return free_port()


def fill(text, vals):
    """The file with its {placeholders} replaced; [::1] binds dropped
    when this host has no IPv6 loopback."""
    if not IPV6:
        text = "\n".join(ln for ln in text.split("\n")
                         if "{fe6_addr}" not in ln)
    for k, v in vals.items():
        text = text.replace("{%s}" % k, str(v))
    left = PLACEHOLDER.findall(text)
    assert not left, "unfilled placeholders %r" % left
    return text


def read(name):
    with open(os.path.join(HDIR, name)) as f:
        return f.read()


class Deployment:
    def __init__(self, name, b, h, vals, backends):
        self.name, self.b, self.h, self.v = name, b, h, vals
        self.backends = backends

    @property
    def port(self):
        return self.v["be_port"]


@pytest.fixture
def deploy(request, broker, certs):
    """deploy("04-passthrough-proxy-v2") starts mqttpx on the .conf and
    haproxy on common.cfg + the .cfg, and waits until every backend's
    first health check has passed (HAProxy logs it)."""
    if not HAVE_TOOLS:
        pytest.skip("needs haproxy, mosquitto-clients and openssl (make deps)")
    started = []
    request.node._mqx_logs = []

    def make(name):
        taken = set()
        vals = {"fe_addr": "127.0.0.1", "fe6_addr": "::1",
                "fe_port": listen_port(taken), "fe2_port": listen_port(taken),
                "be_port": listen_port(taken), "be2_port": listen_port(taken),
                "dir": broker.dir, "hdir": broker.dir, "certs": certs,
                "inter": "200ms"}
        b = broker(conf=fill(read(name + ".conf"), vals),
                   port=vals["be_port"], name="mqttpx")
        cfg = fill(read(name + ".cfg"), vals)
        h = HAProxy(fill(read("common.cfg"), vals), cfg, broker.dir)
        started.append(h)
        request.node._mqx_logs += [("haproxy config", lambda: cfg),
                                   ("haproxy log", h.log)]
        h.start(ready=None)
        backends = re.findall(r"^backend\s+(\S+)", cfg, re.M)
        for be in backends:
            h.wait_log("Health check for server %s/s1 succeeded" % be,
                       timeout=10)
        return Deployment(name, b, h, vals, backends)

    yield make
    for h in started:
        h.stop()


# ---- clients -----------------------------------------------------------

def tls_args(certs, tls):
    """mosquitto_* options: tls None, "server" (CA only), "client"
    (device-42) or "rogue"."""
    if tls is None:
        return []
    out = ["--cafile", os.path.join(certs, "ca.crt")]
    if tls in ("client", "rogue"):
        out += ["--cert", os.path.join(certs, tls + ".crt"),
                "--key", os.path.join(certs, tls + ".key")]
    return out


def target(d, fe, unix):
    if unix:
        return ["--unix", os.path.join(d.v["hdir"], unix)]
    return ["-h", "127.0.0.1", "-p", str(d.v[fe])]


def mosq_pubsub(d, certs, tls=None, fe="fe_port", sub_unix=None,
                pub_unix=None, user=None):
    """mosquitto_sub waits for one QoS 1 message, mosquitto_pub sends it,
    both from CLIENT through HAProxy. Returns (sub_line, pub_line): the
    broker's 'New client connected' lines for each."""
    tag = uuid.uuid4().hex[:8]
    topic, payload = "hx/" + tag, "hello " + tag
    sub_id, pub_id = "sub-" + tag, "pub-" + tag
    common = tls_args(certs, tls) + (["-u", user, "-P", "pw"] if user else [])
    src = [] if sub_unix else ["-A", CLIENT]
    mark = d.b.mark()
    sub = subprocess.Popen(
        [MOSQ_SUB] + target(d, fe, sub_unix) + src + common +
        ["-i", sub_id, "-t", topic, "-q", "1", "-C", "1", "-W", "10"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL)
    try:
        sub_line = d.b.wait_log(re.compile(
            r"New client connected from \S+ as %s " % sub_id), since=mark)
        d.b.wait_log("%s 1 %s" % (sub_id, topic), since=mark)  # SUBACK'd
        src = [] if pub_unix else ["-A", CLIENT]
        r = subprocess.run(
            [MOSQ_PUB] + target(d, fe, pub_unix) + src + common +
            ["-i", pub_id, "-t", topic, "-q", "1", "-m", payload],
            capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr.decode()
        out, err = sub.communicate(timeout=10)
        assert sub.returncode == 0, err.decode()
        assert out.decode().strip() == payload
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait(5)
    pub_line = d.b.wait_log(re.compile(
        r"New client connected from \S+ as %s " % pub_id), since=mark)
    for cid in (sub_id, pub_id):  # both gone before the test goes on
        d.b.wait_log("Client %s disconnected." % cid, since=mark)
    return sub_line, pub_line


def mosq_refused(d, certs, tls, fe="fe_port", source=CLIENT):
    """mosquitto_pub that must fail; returns its client id."""
    cid = "refused-" + uuid.uuid4().hex[:8]
    r = subprocess.run(
        [MOSQ_PUB] + target(d, fe, None) + ["-A", source] +
        tls_args(certs, tls) + ["-i", cid, "-t", "hx/x", "-m", "x", "-q", "1"],
        capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
    assert r.returncode != 0, "mosquitto_pub %s succeeded" % cid
    return cid


def paho_roundtrip(d, certs, tls=None, host="::1", bind="::1"):
    """A paho client (IPv6 by default) subscribes, publishes, receives its
    own message. Returns its address as the broker should log it."""
    import paho.mqtt.client as mqtt
    q = queue.Queue()
    tag = uuid.uuid4().hex[:8]
    c = mqtt.Client(client_id="paho-" + tag, protocol=mqtt.MQTTv311)
    if tls:
        kw = {}
        if tls == "client":
            kw = {"certfile": os.path.join(certs, "client.crt"),
                  "keyfile": os.path.join(certs, "client.key")}
        c.tls_set(ca_certs=os.path.join(certs, "ca.crt"), **kw)
    c.on_connect = lambda cl, ud, fl, rc: q.put(("connack", rc))
    c.on_subscribe = lambda cl, ud, mid, granted: q.put(("suback", granted))
    c.on_message = lambda cl, ud, m: q.put(("msg", m.payload))
    c.connect(host, d.v["fe_port"], keepalive=30, bind_address=bind)
    c.loop_start()
    try:
        assert q.get(timeout=10) == ("connack", 0)
        local = c.socket().getsockname()
        c.subscribe("hx6/" + tag, qos=1)
        assert q.get(timeout=10) == ("suback", (1,))
        c.publish("hx6/" + tag, b"v6 " + tag.encode(), qos=1)
        assert q.get(timeout=10) == ("msg", b"v6 " + tag.encode())
        c.disconnect()
    finally:
        c.loop_stop()
    d.b.wait_log("Client paho-%s disconnected." % tag)
    return "%s:%d" % (local[0], local[1]), "paho-" + tag


def tls_ctx(certs, cert=None):
    ctx = ssl.create_default_context(cafile=os.path.join(certs, "ca.crt"))
    if cert:
        ctx.load_cert_chain(os.path.join(certs, cert + ".crt"),
                            os.path.join(certs, cert + ".key"))
    ctx.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    return ctx


def refused_at_broker(d, fe, source, ctx=None):
    """A client through HAProxy whose CONNECT the broker refuses at header
    time: no CONNACK, the connection just closes (R22)."""
    c = Conn(d.v[fe], source=source)
    if ctx is not None:
        c.start_tls(ctx, "127.0.0.1")
    c.send(connect("refused-" + uuid.uuid4().hex[:8]))
    c.expect_closed(timeout=5)
    return c


# ---- shared checks -------------------------------------------------------

def checks_quiet(d, per_listener=3, listeners=1, since=0):
    """HAProxy's checks reach the broker (DEBUG 'health check' lines),
    keep every server UP, and log no NOTICE line per check (R33, R34).
    since: a log position after which only checks ran."""
    d.b.wait_count("PROXY: health check from", per_listener * listeners,
                   timeout=5, since=since)
    noisy = [ln for ln in d.b.find(re.compile(
        r"New connection from|rejected|closed during header|"
        r"not received within|Client <unknown>"), since=since)]
    assert not noisy, "NOTICE lines for health checks: %r" % noisy[:5]
    for be in d.backends:
        st = d.h.stat(be)
        assert st["status"] == "UP", st
        # "* L4OK": a check is running now, the last one passed
        assert st["check_status"].lstrip("* ") == "L4OK", st
        assert st["chkfail"] == "0", st
    assert not d.h.find("DOWN")


def proxied(d, line, addr_re, summary, port=None):
    """line is 'New client connected from <addr> ...' with addr matching
    addr_re; the matching 'New connection ... via 127.0.0.1:<p> on port
    <N> (<summary>' line is logged too (R46, R51)."""
    m = re.match(r".*New client connected from (\S+) as ", line)
    assert m and re.fullmatch(addr_re, m.group(1)), line
    d.b.wait_log(re.compile(r"New connection from %s via (127\.0\.0\.1:\d+|"
                            r"\S+) on port %d \(%s"
                            % (re.escape(m.group(1)),
                               d.port if port is None else port,
                               re.escape(summary))))
    return m.group(1)


def direct_without_header(d):
    # R12: the PROXY listener never guesses; plain MQTT is refused
    mark = d.b.mark()
    c = Conn(d.port)
    c.send(connect("direct"))
    c.expect_closed()
    d.b.wait_log("PROXY: connection from %s on port %d rejected: bad v%d "
                 "signature (looks like MQTT CONNECT without PROXY header)"
                 % (c.local_addr, d.port, 1 if "v1" in d.name else 2),
                 since=mark)


def untrusted_source(d, version=2):
    # R10: a valid header, but from 127.0.0.5, not 127.0.0.1/32
    mark = d.b.mark()
    c = Conn(d.port, source=CLIENT)
    hdr = (proxy_v1 if version == 1 else proxy_v2)(
        "203.0.113.7", "127.0.0.1", 40000, d.port)
    c.send(hdr + connect("spoofer"))
    c.expect_closed()
    d.b.wait_log("PROXY: connection from %s on port %d rejected: not a "
                 "trusted proxy source" % (c.local_addr, d.port), since=mark)
    assert not d.b.find("203.0.113.7", since=mark)


CLIENT_RE = re.escape(CLIENT) + r":\d+"


# ---- deployments ---------------------------------------------------------

def test_01_passthrough(deploy, certs):
    # without PROXY the broker only ever sees HAProxy
    d = deploy("01-passthrough")
    s, p = mosq_pubsub(d, certs)
    for line in (s, p):
        assert "New client connected from 127.0.0.1:" in line, line


def test_02_tls_termination(deploy, certs):
    d = deploy("02-tls")
    s, p = mosq_pubsub(d, certs, tls="server")
    assert "New client connected from 127.0.0.1:" in s, s
    # plaintext MQTT into the TLS frontend never reaches the broker
    mark = d.b.mark()
    cid = mosq_refused(d, certs, None)
    assert not d.b.find(cid, since=mark)


def test_03_mutual_tls(deploy, certs):
    d = deploy("03-mtls")
    s, p = mosq_pubsub(d, certs, tls="client")
    assert "New client connected from 127.0.0.1:" in s, s
    mark = d.b.mark()
    for tls in ("server", "rogue"):  # no certificate, rogue certificate
        cid = mosq_refused(d, certs, tls)
        assert not d.b.find(cid, since=mark)


def test_04_passthrough_proxy_v2(deploy, certs):
    d = deploy("04-passthrough-proxy-v2")
    checks_quiet(d)
    for line in mosq_pubsub(d, certs):
        proxied(d, line, CLIENT_RE, "PROXY v2).")
    if IPV6:
        addr, cid = paho_roundtrip(d, certs)
        assert addr.startswith("::1:")
        d.b.wait_log("New client connected from %s as %s " % (addr, cid))
    direct_without_header(d)
    untrusted_source(d)
    checks_quiet(d, since=d.b.mark())


def test_05_passthrough_proxy_v1(deploy, certs):
    d = deploy("05-passthrough-proxy-v1")
    checks_quiet(d)
    for line in mosq_pubsub(d, certs):
        proxied(d, line, CLIENT_RE, "PROXY v1).")
    if IPV6:
        addr, cid = paho_roundtrip(d, certs)
        d.b.wait_log("New client connected from %s as %s " % (addr, cid))
    direct_without_header(d)
    untrusted_source(d, version=1)
    checks_quiet(d, since=d.b.mark())


def test_06_tls_proxy_v2_ssl_require_tls(deploy, certs):
    d = deploy("06-tls-proxy-v2-ssl")
    checks_quiet(d)  # LOCAL checks with a client=0 SSL TLV pass (R33)
    for line in mosq_pubsub(d, certs, tls="server"):
        proxied(d, line, CLIENT_RE, "PROXY v2, TLSv1.3).")
    if IPV6:
        addr, cid = paho_roundtrip(d, certs, tls="server")
        d.b.wait_log("New client connected from %s as %s " % (addr, cid))
    # R40: plaintext through the second frontend: SSL TLV with client=0
    mark = d.b.mark()
    c = refused_at_broker(d, "fe2_port", "127.0.0.6")
    d.b.wait_log(re.compile(
        r"PROXY: connection from %s via 127\.0\.0\.1:\d+ on port %d "
        r"rejected, client did not connect using TLS\."
        % (re.escape(c.local_addr), d.port)), since=mark)
    mosq_refused(d, certs, None, fe="fe2_port", source="127.0.0.7")
    direct_without_header(d)
    untrusted_source(d)
    checks_quiet(d, since=d.b.mark())


def cert_refusals(d, certs):
    # R41 through the 'verify optional' frontend: no certificate, then the
    # rogue one (each from its own source: R52 limits lines per source)
    for source, cert in (("127.0.0.6", None), ("127.0.0.7", "rogue")):
        mark = d.b.mark()
        c = refused_at_broker(d, "fe2_port", source, tls_ctx(certs, cert))
        d.b.wait_log(re.compile(
            r"PROXY: connection from %s via 127\.0\.0\.1:\d+ on port %d "
            r"rejected, client did not provide a valid certificate\."
            % (re.escape(c.local_addr), d.port)), since=mark)
    assert not d.b.find("u'rogue'")


def test_07_mtls_proxy_v2_ssl_require_certificate(deploy, certs):
    d = deploy("07-mtls-proxy-v2-ssl")
    checks_quiet(d)
    for line in mosq_pubsub(d, certs, tls="client"):
        proxied(d, line, CLIENT_RE, "PROXY v2, TLSv1.3).")
    if IPV6:
        addr, cid = paho_roundtrip(d, certs, tls="client")
        d.b.wait_log("New client connected from %s as %s " % (addr, cid))
    cert_refusals(d, certs)
    # the same client with its valid certificate passes that frontend too
    c = Conn(d.v["fe2_port"], source=CLIENT).start_tls(
        tls_ctx(certs, "client"), "127.0.0.1")
    c.send(connect("optional-ok"))
    c.expect(connack(0, 0))
    c.send(w.DISCONNECT_BYTES)
    direct_without_header(d)
    untrusted_source(d)
    checks_quiet(d, since=d.b.mark())


def test_08_mtls_proxy_v2_ssl_cn_username(deploy, certs):
    d = deploy("08-mtls-proxy-v2-ssl-cn")
    checks_quiet(d)
    # R43, R44: the CONNECT's user name is replaced by the CN, and the
    # certificate authenticates (allow_anonymous false in this config)
    for line in mosq_pubsub(d, certs, tls="client", user="mallory"):
        proxied(d, line, CLIENT_RE, "PROXY v2, TLSv1.3, CN device-42).")
        assert line.endswith(", u'device-42').")
    assert not d.b.find("mallory")
    if IPV6:
        addr, cid = paho_roundtrip(d, certs, tls="client")
        line = d.b.wait_log("New client connected from %s as %s " % (addr,
                                                                   cid))
        assert "u'device-42'" in line
    cert_refusals(d, certs)
    direct_without_header(d)
    untrusted_source(d)
    checks_quiet(d, since=d.b.mark())


def test_09_unix_socket_frontends(deploy, certs):
    # HAProxy 2.6 sends LOCAL (send-proxy-v2) and "PROXY UNKNOWN"
    # (send-proxy) for unix-socket clients; both must work (R24, R32)
    d = deploy("09-unix-frontend")
    checks_quiet(d, listeners=2)
    s, p = mosq_pubsub(d, certs, sub_unix="fe-v2.sock", pub_unix="fe-v1.sock")
    proxied(d, s, r"127\.0\.0\.1:\d+", "PROXY v2 LOCAL).")
    m = re.match(r".*New client connected from (\S+) as ", p)
    assert m and re.fullmatch(r"127\.0\.0\.1:\d+", m.group(1)), p
    d.b.wait_log(re.compile(r"New connection from %s via %s on port %d "
                            r"\(PROXY v1 UNKNOWN\)\." % (
                                re.escape(m.group(1)), re.escape(m.group(1)),
                                d.v["be2_port"])))
    assert not d.h.find("DOWN")


def test_10_unix_socket_backend(deploy, certs):
    d = deploy("10-unix-backend")
    sock = os.path.join(d.v["dir"], "mqttpx.sock")
    checks_quiet(d)
    for line in mosq_pubsub(d, certs):
        proxied(d, line, CLIENT_RE, "PROXY v2).", port=0)
    if IPV6:
        addr, cid = paho_roundtrip(d, certs)
        d.b.wait_log("New client connected from %s as %s " % (addr, cid))
    # no header, straight into the socket: refused (R12)
    mark = d.b.mark()
    c = Conn(path=sock)
    c.send(connect("direct"))
    c.expect_closed()
    d.b.wait_log("rejected: bad v2 signature (looks like MQTT CONNECT "
                 "without PROXY header)", since=mark)
    # a unix-socket frontend into the unix listener: LOCAL, so the client
    # address is the listener's own, written unix:<path> (R31, R50)
    c = Conn(path=os.path.join(d.v["hdir"], "fe.sock"))
    c.send(connect("unix-local"))
    c.expect(connack(0, 0))
    d.b.wait_log("New client connected from unix:%s as unix-local " % sock)
    c.send(w.DISCONNECT_BYTES)
    c.expect_closed()
    assert not d.h.find("DOWN")


def test_configs_are_valid():
    # every mqttpx config of this directory passes mqttpx -t once filled
    # in with typical values (the README shows them so)
    vals = {"be_port": 1884, "be2_port": 1885, "dir": "/run/mqttpx"}
    names = sorted(n for n in os.listdir(HDIR) if n.endswith(".conf"))
    assert len(names) == 10
    for n in names:
        path = os.path.join(short_tmpdir(), n)
        with open(path, "w") as f:
            f.write(fill(read(n), vals))
        r = run_mqttpx(["-t", "-c", path])
        assert r.returncode == 0 and "configuration OK" in r.out, (n, r.out)
        assert os.path.exists(os.path.join(HDIR, n[:-5] + ".cfg")), n


def cfg_error(text):
    d = short_tmpdir()
    path = os.path.join(d, "r5.conf")
    with open(path, "w") as f:
        f.write(text)
    r = run_mqttpx(["-t", "-c", path])
    assert r.returncode != 0 and "configuration OK" not in r.out, r.out
    return r.out.replace(path, "FILE")


L = "listener 1884 127.0.0.1\n"


@pytest.mark.parametrize("text,want", [
    # R1
    (L + "enable_proxy_protocol 3\n",
     "Error: FILE:2: enable_proxy_protocol must be 1 or 2."),
    ("enable_proxy_protocol 2\n" + L, "Error: FILE:1: "),
    # R5: TLS facts need v2; the CN needs a verified certificate
    (L + "enable_proxy_protocol 1\nproxy_protocol_v2_require_tls true\n",
     "Error: FILE:3: listener 1884: proxy_protocol_v2_require_tls needs "
     "enable_proxy_protocol 2"),
    (L + "enable_proxy_protocol 1\nrequire_certificate true\n",
     "Error: FILE:3: listener 1884: require_certificate needs "
     "enable_proxy_protocol 2"),
    (L + "enable_proxy_protocol 2\nuse_identity_as_username true\n",
     "Error: FILE:3: listener 1884: use_identity_as_username needs "
     "require_certificate true"),
    (L + "enable_proxy_protocol 2\nuse_subject_as_username true\n",
     "Error: FILE:3: "),
    (L + "enable_proxy_protocol 2\ncertfile /x.crt\nkeyfile /x.key\n",
     "Error: FILE:3: "),
    # R6-R8 options on a listener without enable_proxy_protocol
    (L + "proxy_protocol_trusted_sources 127.0.0.1/32\n",
     "listener 1884: proxy_protocol options without enable_proxy_protocol"),
    (L + "proxy_protocol_timeout 3\n",
     "listener 1884: proxy_protocol options without enable_proxy_protocol"),
    (L + "proxy_protocol_local close\n",
     "listener 1884: proxy_protocol options without enable_proxy_protocol"),
    # ranges
    (L + "enable_proxy_protocol 2\nproxy_protocol_timeout 0\n",
     "Error: FILE:3: proxy_protocol_timeout: expected 1..300 seconds"),
    (L + "enable_proxy_protocol 2\nproxy_protocol_timeout 301\n",
     "Error: FILE:3: proxy_protocol_timeout: expected 1..300 seconds"),
    (L + "enable_proxy_protocol 2\nproxy_protocol_trusted_sources "
     "10.0.0.0/33\n", "Error: FILE:3: proxy_protocol_trusted_sources: "),
    (L + "enable_proxy_protocol 2\nproxy_protocol_local maybe\n",
     "Error: FILE:3: proxy_protocol_local: expected accept or close"),
], ids=["enable-3", "before-listener", "v1-require-tls", "v1-require-cert",
        "identity-without-cert", "subject-as-username", "certfile",
        "trusted-without-proxy", "timeout-without-proxy",
        "local-without-proxy", "timeout-0", "timeout-301", "bad-cidr",
        "local-maybe"])
def test_config_errors(text, want):
    # R1, R5-R8: refused at load time, exit status non-zero
    out = cfg_error(text)
    assert want in out, out
