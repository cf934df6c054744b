"""Native TLS listeners (Mosquitto's option names): a listener with
`certfile` and `keyfile` speaks TLS, the broker itself does the handshake
with mbedTLS.

Covered, against certificates made here with the openssl CLI (tlscerts.py:
a CA, EC and RSA server certificates for localhost/127.0.0.1, client
certificates with CN, O and C, a second CA with its own client, a revoked
client and its CRL, encrypted keys):

- server authentication with mosquitto_pub/mosquitto_sub (--cafile),
  python ssl and paho; mutual TLS (--cert/--key); refusals of a missing
  client certificate, one from another CA and a revoked one (crlfile);
  capath instead of cafile;
- use_identity_as_username and use_subject_as_username: the CN or the
  RFC 2253 subject (escapes as OpenSSL prints them) is the user name, the
  password is not checked, the acl_file's `user` sections and `%u`
  patterns apply to it;
- TLS 1.2 and 1.3 (tls_version is the minimum), ciphers and
  ciphers_tls1.3 as the client sees them;
- plaintext MQTT into a TLS port (closed at once), handshakes that stall
  (closed at connect_timeout while other clients go on), many handshakes
  at once beside a QoS 1 flow, max_tls_connections (refusal, $SYS
  counters, slot reuse, no slot lost to failed handshakes), 200 KB
  messages both ways, a subscriber too slow to take what TLS writes;
- configuration errors (`Error: FILE:LINE: ...`);
- no malloc during TLS traffic once the clients are connected;
- HAProxy passing TLS through to a TLS listener (deployment 1, encrypted).

MQTTPX_TLS13=1 says the broker's mbedTLS has TLS 1.3 (the 3.6 build):
then TLS 1.3 must work; without it (Debian's 2.28) a TLS 1.3-only client is
refused and `tls_version tlsv1.3` is a start error.

Log lines (NOTICE unless noted) for an address ADDR (ip:port) on port N:
`New connection from ADDR on port N.`; `TLS: connection from ADDR on port N
closed: not a TLS handshake`; `TLS: handshake with ADDR on port N failed:
REASON`; `TLS: handshake with ADDR on port N not finished within S s`;
`Connection from ADDR refused: max_tls_connections reached.`; DEBUG
`TLS: ADDR on port N: VERSION SUITE[, certificate CN=...]`. Refusals
that log come from distinct source addresses (127.0.0.N), in case the
broker rate-limits such lines per source.
"""

import hashlib
import os
import queue
import re
import shutil
import ssl
import subprocess
import threading
import time
import uuid

import pytest

import mqttwire as w
import tlscerts
from conftest import (BINARY, CONF_DIR, ROOT, free_port, run_mqttpx,
                      short_tmpdir)

TLS13 = os.environ.get("MQTTPX_TLS13") == "1"
MOSQ_PUB = shutil.which("mosquitto_pub")
MOSQ_SUB = shutil.which("mosquitto_sub")
HAPROXY = shutil.which("haproxy")
TLS_CONF = os.path.join(CONF_DIR, "tls")
SHIM_SRC = os.path.join(ROOT, "tests", "tools", "mallocount.c")

# paho 1.6's tls_set() uses ssl.PROTOCOL_TLS
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
need_mosq = pytest.mark.skipif(not (MOSQ_PUB and MOSQ_SUB),
                               reason="needs mosquitto-clients")


# ---- certificates and brokers --------------------------------------------

@pytest.fixture(scope="session")
def certs():
    if not tlscerts.OPENSSL:
        pytest.skip("needs openssl")
    return tlscerts.make(short_tmpdir())


def pem(certs, name):
    return os.path.join(certs, name)


def tls_broker(broker, certs, lsn="", glob="", server="server",
               plain=False, anon=True):
    """A broker with a TLS listener on b.port (certfile/keyfile of server,
    then the listener lines lsn) and, with plain, a plaintext listener on
    b.plain. glob: lines before the first listener."""
    plain_port = free_port() if plain else None
    text = (glob + "allow_anonymous %s\n" % ("true" if anon else "false") +
            "listener {port} 127.0.0.1\n"
            "certfile %s\nkeyfile %s\n" % (pem(certs, server + ".crt"),
                                           pem(certs, server + ".key")) +
            lsn)
    if plain:
        text += "listener %d 127.0.0.1\n" % plain_port
    b = broker(conf=text)
    b.plain = plain_port
    return b


def mtls(certs, extra=""):
    """Listener lines for mutual TLS against ca.crt."""
    return ("cafile %s\nrequire_certificate true\n" % pem(certs, "ca.crt") +
            extra)


# ---- TLS clients ---------------------------------------------------------

def ctx(certs, cert=None, ca="ca", minv=None, maxv=None, ciphers=None):
    """A client SSLContext that verifies the server against ca.crt (host
    name localhost); cert: present NAME.crt/NAME.key."""
    c = ssl.create_default_context(cafile=pem(certs, ca + ".crt"))
    if cert:
        c.load_cert_chain(pem(certs, cert + ".crt"), pem(certs, cert + ".key"))
    if minv:
        c.minimum_version = minv
    if maxv:
        c.maximum_version = maxv
    if ciphers:
        c.set_ciphers(ciphers)
    c.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    return c


TLS12_ONLY = {"maxv": ssl.TLSVersion.TLSv1_2}
TLS13_ONLY = {"minv": ssl.TLSVersion.TLSv1_3}


def tls_conn(port, context, source=None):
    """A Conn after a completed TLS handshake."""
    return w.Conn(port, source=source).start_tls(context, "localhost")


def tls_client(port, cid, context, source=None, **kw):
    """TLS, CONNECT, CONNACK 0; returns the Conn."""
    c = tls_conn(port, context, source)
    c.send(w.connect(cid, **kw))
    p = c.recv_packet()
    assert p.type == w.CONNACK and p.raw[3] == 0, \
        "%s: expected CONNACK 0, got %r" % (cid, p)
    return c


def refused(b, context, source=None, port=None):
    """A TLS client the broker must refuse during the handshake: no CONNACK
    ever comes (with TLS 1.3 the client may finish its side first and see
    the alert on its first read). Returns the broker's failure line."""
    port = port or b.port
    c = w.Conn(port, source=source)
    addr = c.local_addr
    try:
        c.start_tls(context, "localhost")
        c.send(w.connect("refused-" + uuid.uuid4().hex[:6]))
        p = c.recv_packet()
    except (ssl.SSLError, OSError, w.Closed):
        pass
    else:
        raise AssertionError("the broker accepted the handshake: %r" % p)
    finally:
        c.close()
    return b.wait_log("TLS: handshake with %s on port %d failed: " % (
        addr, port))


def handshake_line(b, addr, port):
    """The DEBUG line of a completed handshake: (version, suite, CN)."""
    line = b.wait_log("TLS: %s on port %d: " % (addr, port))
    m = re.search(r"TLS: \S+ on port \d+: (TLSv1\.[23]) ([^\s,]+)"
                  r"(?:, certificate CN=(.*))?$", line)
    assert m, "unexpected handshake line: %r" % line
    return m.groups()


def norm(suite):
    """IANA's and mbedTLS's spellings of a suite made alike:
    TLS_AES_128_GCM_SHA256 and TLS1-3-AES-128-GCM-SHA256 both give
    TLS-AES-128-GCM-SHA256."""
    return suite.upper().replace("_", "-").replace("TLS1-3-", "TLS-")


# TLS 1.2 suites by OpenSSL's names (what python reports), and their
# IANA names as norm() spells them
AES128 = "ECDHE-ECDSA-AES128-GCM-SHA256"
AES256 = "ECDHE-ECDSA-AES256-GCM-SHA384"
CHACHA = "ECDHE-ECDSA-CHACHA20-POLY1305"
IANA = {AES128: "TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256",
        AES256: "TLS-ECDHE-ECDSA-WITH-AES-256-GCM-SHA384"}


def client_hello(context):
    """The bytes of a real ClientHello from context."""
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = context.wrap_bio(inc, out, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def read_until_closed(c, timeout=3.0):
    """Everything the peer sends until it closes; fails if it stays
    open for timeout seconds."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            c._fill(deadline)
    except w.Closed:
        return c.buf


def sha(data):
    return hashlib.sha256(data).hexdigest()[:16]


def sys_wait(c, topic, want, timeout=5.0):
    """Read $SYS PUBLISHes on c until topic carries want (a string, or a
    predicate on the string); returns the value."""
    pred = want if callable(want) else (lambda v: v == want)
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        left = deadline - time.monotonic()
        try:
            p = w.recv_pub(c, timeout=max(left, 0.01))
        except w.Timeout:
            raise AssertionError("%s: want %r, saw %r" % (topic, want, seen))
        if p.topic == topic:
            v = p.payload.decode()
            seen.append(v)
            if pred(v):
                return v


def sys_monitor(b):
    """A plaintext client (b.plain) subscribed to $SYS/broker/tls/#."""
    mon = w.open_client(b.plain, "mon-" + uuid.uuid4().hex[:6])
    assert w.sub(mon, 1, [("$SYS/broker/tls/#", 0)]) == [0]
    return mon


def roundtrip(c, topic, payload=b"ping", pid=1):
    """c is subscribed to topic: a QoS 1 message to itself comes back."""
    w.pub(c, topic, payload, qos=1, pid=pid)
    p = w.recv_pub(c)
    assert (p.topic, p.payload) == (topic, payload), p


def roundtrip_client(b, context, cid=None):
    """A new TLS client connects, gets its own QoS 1 message back and
    disconnects; returns its client id."""
    cid = cid or "ok-" + uuid.uuid4().hex[:6]
    c = tls_client(b.port, cid, context)
    assert w.sub(c, 1, [("ok/" + cid, 1)]) == [1]
    roundtrip(c, "ok/" + cid)
    c.send(w.DISCONNECT_BYTES)
    c.expect_closed()
    return cid


# ---- mosquitto_pub / mosquitto_sub ---------------------------------------

def mosq_tls(certs, cert=None, ca="ca"):
    out = ["--cafile", pem(certs, ca + ".crt")]
    if cert:
        out += ["--cert", pem(certs, cert + ".crt"),
                "--key", pem(certs, cert + ".key")]
    return out


def mosq_pubsub(b, tls_args, port=None):
    """mosquitto_sub waits for one QoS 1 message that mosquitto_pub sends,
    both over TLS to 127.0.0.1 (the client checks the IP SAN). Returns
    their client ids."""
    port = port or b.port
    tag = uuid.uuid4().hex[:8]
    topic, payload = "tls/" + tag, "hello " + tag
    sub_id, pub_id = "sub-" + tag, "pub-" + tag
    target = ["-h", "127.0.0.1", "-p", str(port)] + tls_args
    mark = b.mark()
    sub = subprocess.Popen(
        [MOSQ_SUB] + target + ["-i", sub_id, "-t", topic, "-q", "1",
                               "-C", "1", "-W", "10"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL)
    try:
        b.wait_log("%s 1 %s" % (sub_id, topic), since=mark)  # SUBACK'd
        r = subprocess.run(
            [MOSQ_PUB] + target + ["-i", pub_id, "-t", topic, "-q", "1",
                                   "-m", payload],
            capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr.decode()
        out, err = sub.communicate(timeout=10)
        assert sub.returncode == 0, err.decode()
        assert out.decode().strip() == payload
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait(5)
    for cid in (sub_id, pub_id):
        b.wait_log("Client %s disconnected." % cid, since=mark)
    return sub_id, pub_id


def mosq_pub_fails(port, tls_args, source):
    r = subprocess.run(
        [MOSQ_PUB, "-h", "127.0.0.1", "-p", str(port), "-A", source] +
        tls_args + ["-t", "x", "-m", "x", "-q", "1"],
        capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
    assert r.returncode != 0, "mosquitto_pub %r succeeded" % tls_args


def paho_roundtrip(port, certs, cert=None):
    """paho with tls_set(): CONNACK 0, subscribe, publish QoS 1, receive
    it. Returns the client id."""
    import paho.mqtt.client as mqtt
    q = queue.Queue()
    cid = "paho-" + uuid.uuid4().hex[:8]
    c = mqtt.Client(client_id=cid, protocol=mqtt.MQTTv311)
    kw = {}
    if cert:
        kw = {"certfile": pem(certs, cert + ".crt"),
              "keyfile": pem(certs, cert + ".key")}
    c.tls_set(ca_certs=pem(certs, "ca.crt"), **kw)
    c.on_connect = lambda cl, ud, fl, rc: q.put(("connack", rc))
    c.on_subscribe = lambda cl, ud, mid, granted: q.put(("suback", granted))
    c.on_message = lambda cl, ud, m: q.put(("msg", m.topic, m.payload))
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    try:
        assert q.get(timeout=10) == ("connack", 0)
        c.subscribe("paho/" + cid, qos=1)
        assert q.get(timeout=10) == ("suback", (1,))
        c.publish("paho/" + cid, b"over tls", qos=1)
        assert q.get(timeout=10) == ("msg", "paho/" + cid, b"over tls")
        c.disconnect()
    finally:
        c.loop_stop()
    return cid


# ---- server authentication, mutual TLS, refusals -------------------------

@need_mosq
def test_server_auth_mosquitto_clients(broker, certs):
    b = tls_broker(broker, certs, glob="sys_interval 1\n", plain=True)
    sub_id, pub_id = mosq_pubsub(b, mosq_tls(certs))
    line = b.wait_log(re.compile(r"New client connected from (\S+) as %s "
                                 % sub_id))
    addr = re.search(r"from (\S+) as", line).group(1)
    assert b.find("New connection from %s on port %d." % (addr, b.port))
    cn = handshake_line(b, addr, b.port)[2]
    assert cn is None, "no client certificate was sent: %r" % cn
    # a client trusting another CA refuses this server's certificate
    mosq_pub_fails(b.port, mosq_tls(certs, ca="ca2"), "127.0.0.2")
    b.wait_log(re.compile(r"TLS: handshake with 127\.0\.0\.2:\d+ on port %d "
                          r"failed: " % b.port))
    # the pool exists with its default size
    mon = sys_monitor(b)
    sys_wait(mon, "$SYS/broker/tls/max", "32")


@pytest.mark.parametrize("server", ["server", "server-rsa"],
                         ids=["ec", "rsa"])
def test_server_auth_python_and_paho(broker, certs, server):
    # the certificate the client verifies is the configured one, EC or RSA
    b = tls_broker(broker, certs, server=server)
    c = tls_client(b.port, "py", ctx(certs))
    assert c.sock.getpeercert(binary_form=True) == tlscerts.der(certs,
                                                                 server)
    if c.sock.version() == "TLSv1.2":  # 1.3 suites do not name the key
        want = "ECDHE-RSA-" if server == "server-rsa" else "ECDHE-ECDSA-"
        assert c.sock.cipher()[0].startswith(want), c.sock.cipher()
    assert w.sub(c, 1, [("py/t", 1)]) == [1]
    roundtrip(c, "py/t")
    cid = paho_roundtrip(b.port, certs)
    b.wait_log("Client %s disconnected." % cid)


@need_mosq
def test_mutual_tls(broker, certs):
    b = tls_broker(broker, certs, lsn=mtls(certs))
    sub_id, _ = mosq_pubsub(b, mosq_tls(certs, "client1"))
    line = b.wait_log(re.compile(r"New client connected from (\S+) as %s "
                                 % sub_id))
    addr = re.search(r"from (\S+) as", line).group(1)
    assert handshake_line(b, addr, b.port)[2] == "client1"
    # no use_identity_as_username: the CONNECT's user name stays
    c = tls_client(b.port, "py-mtls", ctx(certs, "client2"), username="bob")
    b.wait_log("as py-mtls (p2, c1, k60, u'bob').")
    assert handshake_line(b, c.local_addr, b.port)[2] == "client2"
    cid = paho_roundtrip(b.port, certs, "client1")
    b.wait_log("Client %s disconnected." % cid)


def test_missing_client_certificate_refused(broker, certs):
    b = tls_broker(broker, certs, lsn=mtls(certs), glob="sys_interval 1\n",
                   plain=True)
    line = refused(b, ctx(certs), source="127.0.0.2")
    assert re.search(r"(?i)certific", line), line
    if MOSQ_PUB:
        mosq_pub_fails(b.port, mosq_tls(certs), "127.0.0.3")
        b.wait_log(re.compile(r"TLS: handshake with 127\.0\.0\.3:\d+ on port "
                              r"%d failed: " % b.port))
    assert not b.find("New client connected")
    mon = sys_monitor(b)
    sys_wait(mon, "$SYS/broker/tls/handshake_failures",
             "2" if MOSQ_PUB else "1")
    # a client with its certificate is still welcome
    roundtrip_client(b, ctx(certs, "client1"))


def test_certificate_from_another_ca_refused(broker, certs):
    b = tls_broker(broker, certs, lsn=mtls(certs))
    line = refused(b, ctx(certs, "intruder"), source="127.0.0.2")
    assert re.search(r"(?i)certific|verif", line), line
    assert not b.find("New client connected")
    roundtrip_client(b, ctx(certs, "client1"))


def test_revoked_certificate_refused(broker, certs):
    b = tls_broker(broker, certs, lsn=mtls(certs, "crlfile %s\n" % pem(
        certs, "crl.pem")))
    line = refused(b, ctx(certs, "revoked"), source="127.0.0.2")
    assert re.search(r"(?i)revoked|crl", line), line
    # the CRL lists only that one: the other certificates still pass
    roundtrip_client(b, ctx(certs, "client1"))
    roundtrip_client(b, ctx(certs, "client2"))


def test_capath(broker, certs):
    b = tls_broker(broker, certs, lsn="capath %s\nrequire_certificate true\n"
                   % pem(certs, "capath"))
    roundtrip_client(b, ctx(certs, "client1"))
    refused(b, ctx(certs, "intruder"), source="127.0.0.2")


# ---- certificate identity as user name, with the ACL ---------------------

def identity_broker(broker, certs, option, user_line):
    """allow_anonymous false, a password file that knows only alice, an
    ACL with a `user` section and a %u pattern; a plaintext listener with
    the same rules."""
    d = broker.dir
    r = subprocess.run([BINARY, "passwd", "-c", "-b", os.path.join(d,
                        "passwd"), "alice", "alice-pw"], cwd=ROOT,
                       capture_output=True, timeout=10,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r
    with open(os.path.join(d, "acl"), "w") as f:
        f.write("user %s\ntopic readwrite own/client1/#\n"
                "pattern readwrite users/%%u/#\n" % user_line)
    return tls_broker(
        broker, certs, anon=False, plain=True,
        glob="password_file %s/passwd\nacl_file %s/acl\n" % (d, d),
        lsn=mtls(certs, "%s true\n" % option))


def acl_checks(b, c1, c2, u1, u2):
    """c1, c2: clients whose user names are u1, u2 (client1 has the user
    section). What each may read and write follows the ACL."""
    assert w.sub(c1, 1, [("own/client1/#", 1), ("users/%s/#" % u1, 1),
                         ("users/%s/#" % u2, 1), ("secret/#", 1)]) == \
        [1, 1, 0x80, 0x80]
    assert w.sub(c2, 1, [("own/client1/#", 1), ("users/%s/#" % u2, 1),
                         ("users/%s/#" % u1, 1)]) == [0x80, 1, 0x80]
    # client2 may not write into client1's tree: acknowledged, dropped
    w.pub(c2, "users/%s/x" % u1, b"not yours", qos=1, pid=2)
    w.pub(c2, "own/client1/x", b"not yours either", qos=1, pid=3)
    w.pub(c1, "own/client1/fence", b"fence", qos=1, pid=4)
    assert w.collect_until(c1, "own/client1/fence") == []
    w.pub(c1, "users/%s/x" % u1, b"mine", qos=1, pid=5)
    p = w.recv_pub(c1)
    assert (p.topic, p.payload) == ("users/%s/x" % u1, b"mine"), p
    w.pub(c2, "users/%s/y" % u2, b"theirs", qos=1, pid=6)
    p = w.recv_pub(c2)
    assert (p.topic, p.payload) == ("users/%s/y" % u2, b"theirs"), p


def test_identity_as_username_acl(broker, certs):
    b = identity_broker(broker, certs, "use_identity_as_username",
                        "client1")
    # the CONNECT's user name and password are ignored: a wrong password,
    # an unknown user, no user at all (allow_anonymous false) all pass
    c1 = tls_client(b.port, "id1", ctx(certs, "client1"), username="alice",
                    password="wrong")
    c2 = tls_client(b.port, "id2", ctx(certs, "client2"))
    c3 = tls_client(b.port, "id3", ctx(certs, "client1"),
                    username="mallory", password="x")
    b.wait_log("as id1 (p2, c1, k60, u'client1').")
    b.wait_log("as id2 (p2, c1, k60, u'client2').")
    b.wait_log("as id3 (p2, c1, k60, u'client1').")
    assert not b.find("u'alice'") and not b.find("u'mallory'")
    c3.close()
    acl_checks(b, c1, c2, "client1", "client2")
    # the same password check still applies where there is no certificate
    p = w.Conn(b.plain)
    p.send(w.connect("plain", username="alice", password="wrong"))
    p.expect(w.connack(0, 4))


def test_subject_as_username_acl(broker, certs):
    dn1 = tlscerts.CLIENT1_DN
    dn2 = "CN=client2,O=Other Org,C=DE"
    b = identity_broker(broker, certs, "use_subject_as_username", dn1)
    c1 = tls_client(b.port, "dn1", ctx(certs, "client1"), username="alice",
                    password="wrong")
    c2 = tls_client(b.port, "dn2", ctx(certs, "client2"))
    b.wait_log("as dn1 (p2, c1, k60, u'%s')." % dn1)
    b.wait_log("as dn2 (p2, c1, k60, u'%s')." % dn2)
    acl_checks(b, c1, c2, dn1, dn2)
    # the CN alone is not the user name here
    assert w.sub(c1, 7, [("users/client1/#", 1)]) == [0x80]


def test_subject_as_username_is_openssl_rfc2253(broker, certs):
    # subjects that need escaping come out as OpenSSL's XN_FLAG_RFC2253
    # prints them (Mosquitto's user names): \, \" \+ \# leading and
    # trailing spaces, UTF-8 as \XX, DC/UID/emailAddress, multi-valued RDNs
    b = tls_broker(broker, certs,
                   lsn=mtls(certs, "use_subject_as_username true\n"))
    for name in tlscerts.ODD:
        want = tlscerts.subject_rfc2253(certs, name)
        c = tls_client(b.port, name, ctx(certs, name))
        b.wait_log("as %s (p2, c1, k60, u'%s')." % (name, want))
        c.close()


def test_identity_is_the_cn_as_it_is(broker, certs):
    # use_identity_as_username takes the CN's bytes unescaped (Mosquitto:
    # the ASN.1 string's data), also from a multi-valued RDN
    b = tls_broker(broker, certs,
                   lsn=mtls(certs, "use_identity_as_username true\n"))
    for name, cn in (("odd-escapes", 'sensor "3"'), ("odd-utf8", "caf\u00e9"),
                     ("odd-multi", "multi"),
                     ("odd-spaces", " lead and trail ")):
        c = tls_client(b.port, name, ctx(certs, name))
        b.wait_log("as %s (p2, c1, k60, u'%s')." % (name, cn))
        c.close()


# ---- versions and cipher suites ------------------------------------------

def test_tls12(broker, certs):
    b = tls_broker(broker, certs)
    c = tls_client(b.port, "v12", ctx(certs, **TLS12_ONLY))
    assert c.sock.version() == "TLSv1.2"
    assert handshake_line(b, c.local_addr, b.port)[0] == "TLSv1.2"


def test_default_version(broker, certs):
    # without tls_version both are allowed: the best one the build has
    b = tls_broker(broker, certs)
    c = tls_client(b.port, "vdef", ctx(certs))
    want = "TLSv1.3" if TLS13 else "TLSv1.2"
    assert c.sock.version() == want
    assert handshake_line(b, c.local_addr, b.port)[0] == want


def test_tls13_client(broker, certs):
    b = tls_broker(broker, certs)
    if not TLS13:
        refused(b, ctx(certs, **TLS13_ONLY))
        return
    c = tls_client(b.port, "v13", ctx(certs, "client1", **TLS13_ONLY))
    assert c.sock.version() == "TLSv1.3"
    assert handshake_line(b, c.local_addr, b.port)[0] == "TLSv1.3"


def test_tls_version_is_a_minimum(broker, certs):
    b = tls_broker(broker, certs, lsn="tls_version tlsv1.2\n")
    c = tls_client(b.port, "min12", ctx(certs, **TLS12_ONLY))
    assert c.sock.version() == "TLSv1.2"
    if TLS13:
        c = tls_client(b.port, "min12-13", ctx(certs, **TLS13_ONLY))
        assert c.sock.version() == "TLSv1.3"


@pytest.mark.skipif(not TLS13, reason="TLS 1.3 build only (MQTTPX_TLS13=1)")
def test_tls_version_tlsv13_refuses_tls12(broker, certs):
    b = tls_broker(broker, certs, lsn="tls_version tlsv1.3\n")
    c = tls_client(b.port, "only13", ctx(certs))
    assert c.sock.version() == "TLSv1.3"
    refused(b, ctx(certs, **TLS12_ONLY), source="127.0.0.2")


@pytest.mark.parametrize("conf,offer,want,other", [
    # mbedTLS's spelling; the client offers all it has
    ("TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256", None, AES128, AES256),
    # IANA's spelling
    ("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", None, AES256, AES128),
    # a list, both spellings mixed; the client offers one of them
    ("TLS-ECDHE-ECDSA-WITH-AES-256-GCM-SHA384:"
     "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", AES128, AES128, CHACHA),
], ids=["mbedtls-name", "iana-name", "list"])
def test_ciphers(broker, certs, conf, offer, want, other):
    # TLS 1.2: the suite is the configured one, and a client that offers
    # only another suite is refused
    b = tls_broker(broker, certs, lsn="ciphers %s\n" % conf)
    c = tls_client(b.port, "cs", ctx(certs, ciphers=offer, **TLS12_ONLY))
    assert c.sock.cipher()[0] == want, c.sock.cipher()
    suite = handshake_line(b, c.local_addr, b.port)[1]
    assert norm(suite).endswith(IANA[want]), suite
    refused(b, ctx(certs, ciphers=other, **TLS12_ONLY), source="127.0.0.2")
    if TLS13:  # `ciphers` is about TLS 1.2: TLS 1.3 is untouched
        c = tls_client(b.port, "cs13", ctx(certs))
        assert c.sock.version() == "TLSv1.3"


@pytest.mark.skipif(not TLS13, reason="TLS 1.3 build only (MQTTPX_TLS13=1)")
@pytest.mark.parametrize("name", ["TLS_AES_128_GCM_SHA256",
                                  "TLS1-3-AES-128-GCM-SHA256"])
def test_ciphers_tls13(broker, certs, name):
    # OpenSSL's client lists TLS_AES_256_GCM_SHA384 first: without the
    # option the broker would take that one
    b = tls_broker(broker, certs, lsn="ciphers_tls1.3 %s\n" % name)
    c = tls_client(b.port, "cs13", ctx(certs, **TLS13_ONLY))
    assert c.sock.cipher()[0] == "TLS_AES_128_GCM_SHA256", c.sock.cipher()
    suite = handshake_line(b, c.local_addr, b.port)[1]
    assert "AES-128-GCM-SHA256" in norm(suite), suite


# ---- what is not a good TLS client ---------------------------------------

def test_plaintext_mqtt_to_tls_port_closed_at_once(broker, certs):
    b = tls_broker(broker, certs, glob="connect_timeout 10\n")
    c = w.Conn(b.port)
    c.send(w.connect("plain"))
    data = read_until_closed(c, timeout=3)  # well before connect_timeout
    assert not data.startswith(b"\x20"), "a CONNACK: %s" % w.hexs(data)
    b.wait_log("TLS: connection from %s on port %d closed: not a TLS "
               "handshake" % (c.local_addr, b.port))
    assert not b.find("as plain ")
    if MOSQ_PUB:  # mosquitto_pub without --cafile gives up too
        mosq_pub_fails(b.port, [], "127.0.0.2")
    roundtrip_client(b, ctx(certs))


def test_stalled_handshakes_closed_at_deadline(broker, certs):
    b = tls_broker(broker, certs, glob="connect_timeout 1\n")
    worker = tls_client(b.port, "worker", ctx(certs))
    assert w.sub(worker, 1, [("work", 1)]) == [1]
    t0 = time.monotonic()
    silent = w.Conn(b.port, source="127.0.0.2")     # connects, says nothing
    half = w.Conn(b.port, source="127.0.0.3")       # half a ClientHello
    hello = client_hello(ctx(certs))
    half.send(hello[:len(hello) // 2])
    # meanwhile a new client handshakes and works, and the old one too:
    # the stalled ones do not hold the loop until their deadline
    late = roundtrip_client(b, ctx(certs))
    roundtrip(worker, "work", b"during", pid=2)
    assert not b.find("not finished within"), \
        "a good client had to wait for the stalled handshakes' deadline"
    for c in (silent, half):
        b.wait_log("TLS: handshake with %s on port %d not finished within "
                   "1 s" % (c.local_addr, b.port), timeout=5)
        read_until_closed(c, timeout=3)
    assert time.monotonic() - t0 >= 0.95, "closed before connect_timeout"
    assert b.find("as %s " % late)
    roundtrip(worker, "work", b"after", pid=3)


@pytest.mark.timeout(40)
def test_many_handshakes_while_qos1_flows(broker, certs):
    n = 45
    b = tls_broker(broker, certs, lsn=mtls(certs),
                   glob="max_tls_connections 64\n")
    sub = tls_client(b.port, "flow-sub", ctx(certs, "client1"))
    assert w.sub(sub, 1, [("flow", 1)]) == [1]
    pub = tls_client(b.port, "flow-pub", ctx(certs, "client2"))
    storm = threading.Event()   # set while the handshakes run
    done = threading.Event()
    got, during, errors = [], [], []

    def flow():
        i = 0
        try:
            while not done.is_set() or i < 50:
                i += 1
                w.pub(pub, "flow", b"%d" % i, qos=1, pid=i % 60000 + 1)
                p = w.recv_pub(sub)
                got.append(int(p.payload))
                if storm.is_set():
                    during.append(i)
        except Exception as e:  # reported by the main thread
            errors.append(e)

    clients, failures = [None] * n, []
    gate = threading.Barrier(n + 1)

    def one(i):
        gate.wait()
        try:
            clients[i] = tls_client(b.port, "storm-%d" % i,
                                    ctx(certs, "client1"), keepalive=30)
        except Exception as e:
            failures.append("storm-%d: %r" % (i, e))

    flower = threading.Thread(target=flow, daemon=True)
    flower.start()
    threads = [threading.Thread(target=one, args=(i,), daemon=True)
               for i in range(n)]
    for t in threads:
        t.start()
    storm.set()
    gate.wait()     # all of them at once
    for t in threads:
        t.join(20)
    storm.clear()
    done.set()
    flower.join(20)
    assert not failures, failures
    assert not errors, errors
    assert not flower.is_alive(), "the QoS 1 flow stalled"
    assert got == list(range(1, len(got) + 1)), "lost or reordered"
    assert during, "no message went through while the clients handshook"
    b.wait_count(re.compile(r"New client connected from \S+ as storm-"), n)
    for c in clients:
        assert c.is_open()


def test_max_tls_connections(broker, certs):
    b = tls_broker(broker, certs, glob="max_tls_connections 2\n"
                   "sys_interval 1\n", plain=True)
    mon = sys_monitor(b)
    sys_wait(mon, "$SYS/broker/tls/max", "2")
    a = tls_client(b.port, "a", ctx(certs))
    c2 = tls_client(b.port, "b", ctx(certs))
    sys_wait(mon, "$SYS/broker/tls/connections", "2")
    # the third TLS client is refused at once, counted and logged
    x = w.Conn(b.port, source="127.0.0.2")
    addr = x.local_addr
    with pytest.raises((ssl.SSLError, OSError, w.Closed)):
        x.start_tls(ctx(certs), "localhost")
        x.send(w.connect("third"))
        x.recv_packet()
    b.wait_log("Connection from %s refused: max_tls_connections reached."
               % addr)
    sys_wait(mon, "$SYS/broker/tls/refused", "1")
    assert a.is_open() and c2.is_open()
    # plaintext listeners are not limited by it
    w.open_client(b.plain, "plain-too").close()
    # a slot comes back when a client leaves
    a.send(w.DISCONNECT_BYTES)
    a.expect_closed()
    b.wait_log("Client a disconnected.")
    sys_wait(mon, "$SYS/broker/tls/connections", "1")
    roundtrip_client(b, ctx(certs), cid="d")
    d = tls_client(b.port, "e", ctx(certs))
    sys_wait(mon, "$SYS/broker/tls/connections", "2")
    assert d.is_open()
    refusals = b.find("refused: max_tls_connections")
    assert len(refusals) == 1 and addr in refusals[0], refusals


def test_large_messages_both_ways(broker, certs):
    b = tls_broker(broker, certs, plain=True)
    tsub = tls_client(b.port, "tsub", ctx(certs))
    psub = w.open_client(b.plain, "psub")
    for c in (tsub, psub):
        assert w.sub(c, 1, [("big/#", 1)]) == [1]
    tpub = tls_client(b.port, "tpub", ctx(certs))
    ppub = w.open_client(b.plain, "ppub")
    for pubc, topic in ((tpub, "big/from-tls"), (ppub, "big/from-plain")):
        payload = os.urandom(200 * 1024 + 7)  # many TLS records
        w.pub(pubc, topic, payload, qos=1, pid=9, timeout=10)
        for c in (tsub, psub):
            p = w.recv_pub(c, timeout=10)
            assert p.topic == topic
            assert (len(p.payload), sha(p.payload)) == (
                len(payload), sha(payload))


def test_slow_tls_reader_gets_everything(broker, certs):
    # a subscriber with a tiny receive buffer that does not read for a
    # while: the broker's TLS writes hit EAGAIN mid-record and must go on
    # with the same bytes later; nothing lost, duplicated or reordered
    b = tls_broker(broker, certs)
    slow = w.Conn(b.port, rcvbuf=4096).start_tls(ctx(certs), "localhost")
    slow.send(w.connect("slow"))
    assert slow.recv_packet().raw == w.connack(0, 0)
    assert w.sub(slow, 1, [("slow/#", 1)]) == [1]
    pub = tls_client(b.port, "fast", ctx(certs))
    sent = []
    for i in range(40):
        payload = os.urandom(50 * 1024)
        w.pub(pub, "slow/%d" % i, payload, qos=1, pid=i + 1)
        sent.append(("slow/%d" % i, sha(payload)))
    got = []
    while len(got) < len(sent):
        p = w.recv_pub(slow, timeout=10)
        got.append((p.topic, sha(p.payload)))
    assert got == sent
    assert slow.is_open()


def test_failed_handshakes_give_their_slot_back(broker, certs):
    # every way a TLS connection can end before MQTT returns its session
    # to the pool: afterwards both slots of max_tls_connections 2 work
    b = tls_broker(broker, certs, lsn=mtls(certs), plain=True,
                   glob="max_tls_connections 2\nconnect_timeout 1\n"
                        "sys_interval 1\n")
    for i in range(3):
        refused(b, ctx(certs), source="127.0.0.%d" % (10 + i))
        refused(b, ctx(certs, "intruder"), source="127.0.0.%d" % (20 + i))
        p = w.Conn(b.port, source="127.0.0.%d" % (30 + i))
        p.send(w.connect("plain"))
        read_until_closed(p)
    stalled = w.Conn(b.port, source="127.0.0.40")
    hello = client_hello(ctx(certs, "client1"))
    stalled.send(hello[:20])
    b.wait_log("TLS: handshake with %s on port %d not finished within 1 s"
               % (stalled.local_addr, b.port))
    read_until_closed(stalled)
    gone = w.Conn(b.port, source="127.0.0.41")  # closes mid-handshake
    gone.send(hello[:20])
    gone.close()
    # the pool is empty again
    mon = sys_monitor(b)
    sys_wait(mon, "$SYS/broker/tls/connections", "0")
    a = tls_client(b.port, "a", ctx(certs, "client1"))
    z = tls_client(b.port, "z", ctx(certs, "client2"))
    assert w.sub(a, 1, [("x", 1)]) == [1]
    w.pub(z, "x", b"both slots", qos=1)
    assert w.recv_pub(a).payload == b"both slots"
    sys_wait(mon, "$SYS/broker/tls/connections", "2")
    assert not b.find("max_tls_connections reached")


# ---- configuration errors ------------------------------------------------

def cfg_error(certs, lines, line_no):
    """Write lines ({p}: a port, {c}: the certificates), run mqttpx on it
    (-t, then a real start); both must fail with Error: FILE:LINE: where
    LINE is line_no or one of them. Returns the error text, FILE
    replaced."""
    d = short_tmpdir()
    path = os.path.join(d, "tls.conf")
    with open(path, "w") as f:
        f.write("\n".join(lines).replace("{p}", str(free_port())).replace(
            "{c}", certs) + "\n")
    nos = line_no if isinstance(line_no, tuple) else (line_no,)
    outs = []
    for a in (["-t", "-c", path], ["-c", path, "-v"]):
        r = run_mqttpx(a)
        out = r.out.replace(path, "FILE")
        assert r.returncode != 0, out
        assert "configuration OK" not in out and "listening on" not in out
        assert "unknown option" not in out, out
        assert re.search(r"Error: FILE:(%s): " % "|".join(map(str, nos)),
                         out), "want Error: FILE:%s: in %r" % (line_no, out)
        outs.append(out)
    return outs[0].replace(certs, "{c}")


BASE = ["listener {p} 127.0.0.1", "certfile {c}/server.crt",
        "keyfile {c}/server.key"]
MTLS = BASE + ["cafile {c}/ca.crt", "require_certificate true"]


@pytest.mark.parametrize("lines,line_no,want", [
    (["listener {p} 127.0.0.1", "certfile {c}/nope.crt",
      "keyfile {c}/server.key"], 2, "{c}/nope.crt"),
    (["listener {p} 127.0.0.1", "certfile {c}/server.crt",
      "keyfile {c}/nope.key"], 3, "{c}/nope.key"),
    (BASE + ["cafile {c}/nope-ca.crt"], 4, "{c}/nope-ca.crt"),
    (MTLS + ["crlfile {c}/nope-crl.pem"], 6, "{c}/nope-crl.pem"),
    (["listener {p} 127.0.0.1", "certfile {c}/ca.cnf",
      "keyfile {c}/server.key"], 2, "{c}/ca.cnf"),
    (["listener {p} 127.0.0.1", "certfile {c}/server.crt",
      "keyfile {c}/capath"], 3, "{c}/capath"),
    (["listener {p} 127.0.0.1", "certfile {c}/server.crt",
      "keyfile {c}/client1.key"], (2, 3), "does not match"),
    (["listener {p} 127.0.0.1", "certfile {c}/server.crt",
      "keyfile {c}/server-pkcs8-enc.key"], 3, "password"),
    (["listener {p} 127.0.0.1", "certfile {c}/server.crt",
      "keyfile {c}/server-trad-enc.key"], 3, "password"),
    (BASE + ["ciphers TLS-ECDHE-ECDSA-WITH-NOTHING"], 4, "supported"),
    (BASE + ["tls_version tlsv1.1"], 4, "tlsv1.1"),
    (BASE + ["tls_version banana"], 4, "banana"),
    (BASE + ["require_certificate true"], 4, re.compile(r"cafile|capath")),
    (BASE + ["use_identity_as_username true"], 4, "require_certificate"),
    (BASE + ["require_certificate false", "cafile {c}/ca.crt",
             "use_subject_as_username true"], 6, "require_certificate"),
    (["listener {p} 127.0.0.1", "certfile {c}/server.crt"], 2, "keyfile"),
    (["listener {p} 127.0.0.1", "keyfile {c}/server.key",
      "allow_anonymous true"], 2, "certfile"),
    (["listener {p} 127.0.0.1", "enable_proxy_protocol 2",
      "certfile {c}/server.crt", "keyfile {c}/server.key"], (2, 3, 4),
     "certfile and keyfile cannot be used with `enable_proxy_protocol 2`."),
    (["listener {p} 127.0.0.1", "certfile {c}/server.crt",
      "keyfile {c}/server.key", "enable_proxy_protocol 2"], (2, 3, 4),
     "certfile and keyfile cannot be used with `enable_proxy_protocol 2`."),
    (["listener {p} 127.0.0.1", "enable_proxy_protocol 2",
      "require_certificate true", "use_subject_as_username true"], 4,
     "enable_proxy_protocol"),
], ids=["certfile-missing", "keyfile-missing", "cafile-missing",
        "crlfile-missing", "certfile-not-pem", "keyfile-directory",
        "key-mismatch", "key-pkcs8-password", "key-pem-password",
        "unknown-cipher", "tls-version-1.1", "tls-version-garbage",
        "require-cert-without-ca", "identity-without-require",
        "subject-without-require", "certfile-without-keyfile",
        "keyfile-without-certfile", "proxy-then-certfile",
        "certfile-then-proxy", "subject-with-proxy"])
def test_config_errors(certs, lines, line_no, want):
    # refused at load, naming the file, the option's line and the problem
    out = cfg_error(certs, lines, line_no)
    if hasattr(want, "search"):
        assert want.search(out), out
    else:
        assert want in out, out


def test_unknown_cipher_names_the_supported_ones(certs):
    out = cfg_error(certs, BASE + ["ciphers TLS-ECDHE-ECDSA-WITH-NOTHING"], 4)
    assert "TLS-ECDHE-ECDSA-WITH-NOTHING" in out, out
    assert re.search(r"(?i)AES-128-GCM|AES_128_GCM", out), out


@pytest.mark.skipif(TLS13, reason="build without TLS 1.3 only")
def test_tls_version_tlsv13_without_tls13_is_an_error(certs):
    out = cfg_error(certs, BASE + ["tls_version tlsv1.3"], 4)
    assert "TLS 1.3" in out, out


@pytest.mark.skipif(not TLS13, reason="TLS 1.3 build only (MQTTPX_TLS13=1)")
def test_unknown_tls13_cipher(certs):
    out = cfg_error(certs, BASE + ["ciphers_tls1.3 TLS_NOPE_SHA256"], 4)
    assert "supported" in out, out


def test_good_tls_config_passes_check(certs):
    # the baseline of the errors above: every option at once is fine
    path = os.path.join(short_tmpdir(), "ok.conf")
    with open(path, "w") as f:
        f.write("max_tls_connections 8\nlistener %d 127.0.0.1\n"
                "certfile %s/server.crt\nkeyfile %s/server.key\n"
                "cafile %s/ca.crt\ncapath %s/capath\ncrlfile %s/crl.pem\n"
                "require_certificate true\nuse_identity_as_username true\n"
                "tls_version tlsv1.2\n"
                "ciphers TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256\n"
                % ((free_port(),) + (certs,) * 5))
    r = run_mqttpx(["-t", "-c", path])
    assert r.returncode == 0 and "configuration OK" in r.out, r.out


# ---- memory --------------------------------------------------------------

@pytest.fixture(scope="session")
def shim():
    """tests/tools/mallocount.c built without its cap of 50 reports: the
    handshakes before the window use that many up, and a silent shim would
    prove nothing about the window."""
    with open(SHIM_SRC) as f:
        src = f.read()
    assert src.count("reports > 50") == 1, \
        "mallocount.c changed: update the shim fixture of test_tls.py"
    d = short_tmpdir()
    with open(os.path.join(d, "mallocount.c"), "w") as f:
        f.write(src.replace("reports > 50", "reports > 1000000"))
    r = subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-o",
                        os.path.join(d, "mallocount.so"),
                        os.path.join(d, "mallocount.c"), "-ldl"],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    return os.path.join(d, "mallocount.so")


def dynamic_without_asan():
    r = subprocess.run(["ldd", BINARY], capture_output=True, timeout=10)
    out = r.stdout.decode() + r.stderr.decode()
    return r.returncode == 0 and "libasan" not in out and \
        "not a dynamic" not in out


def fence(b, cid, port):
    """A plaintext client connects: its log line comes after everything the
    broker wrote before (one process, one stderr). Returns the index of
    that line in the log."""
    c = w.open_client(port, cid)
    c.send(w.DISCONNECT_BYTES)
    c.expect_closed()
    b.wait_log(" as %s " % cid)
    for i, (_, t) in enumerate(b.all_lines()):
        if " as %s " % cid in t:
            return i
    raise AssertionError("lost the line of %s" % cid)


def traffic(a, z, big, n=20):
    """Both ways between a and z (each subscribed to to-<its id>/#): QoS 0,
    1 and 2, a large message, PINGREQ."""
    for src, dst, name in ((a, z, "z"), (z, a, "a")):
        for i in range(n):
            w.pub(src, "to-%s/%d" % (name, i), b"m%d" % i, qos=i % 3,
                  pid=i + 1)
        for i in range(n):
            p = w.recv_pub(dst)
            assert p.payload == b"m%d" % i, p
        w.pub(src, "to-%s/big" % name, big, qos=1, pid=100, timeout=10)
        p = w.recv_pub(dst, timeout=10)
        assert sha(p.payload) == sha(big)
        assert src.is_open()


def test_no_malloc_during_tls_traffic(broker, certs, shim):
    if not dynamic_without_asan():
        pytest.skip("the LD_PRELOAD shim needs a dynamic build without "
                    "ASan (%s)" % BINARY)
    os.environ["LD_PRELOAD"] = shim
    try:
        b = tls_broker(broker, certs, lsn=mtls(certs), plain=True)
    finally:
        del os.environ["LD_PRELOAD"]
    b.wait_log("mallocount: armed")
    big = os.urandom(100 * 1024)
    a = tls_client(b.port, "a", ctx(certs, "client1"))
    z = tls_client(b.port, "z", ctx(certs, "client2"))
    assert w.sub(a, 1, [("to-a/#", 2)]) == [2]
    assert w.sub(z, 1, [("to-z/#", 2)]) == [2]
    traffic(a, z, big, n=3)     # first use of every path, outside the window
    start = fence(b, "fence-1", b.plain)
    traffic(a, z, big)
    end = fence(b, "fence-2", b.plain)
    lines = [t for _, t in b.all_lines()[start:end]
             if "mallocount:" in t and "armed" not in t]
    before = [t for _, t in b.all_lines()[:start]
              if "mallocount:" in t and "armed" not in t]
    assert not lines, "allocations during TLS traffic (%d during the " \
        "handshakes):\n%s" % (len(before), "\n".join(lines[:30]))


# ---- HAProxy in front, TLS passed through --------------------------------

@pytest.fixture
def passthrough(request, broker, certs):
    """Deployment 1 of the HAProxy guide, encrypted: haproxy -db on
    tests/conf/haproxy/common.cfg + 01-passthrough-tls.cfg (mode tcp, no
    certificate), mqttpx on tests/conf/tls/01-passthrough-tls.conf."""
    if not (HAPROXY and MOSQ_PUB and MOSQ_SUB):
        pytest.skip("needs haproxy and mosquitto-clients")
    from test_haproxy import (HAProxy, Deployment, fill, listen_port,
                              read)
    taken = set()
    vals = {"fe_addr": "127.0.0.1", "fe_port": listen_port(taken),
            "be_port": listen_port(taken), "hdir": broker.dir,
            "certs": certs, "inter": "200ms"}
    with open(os.path.join(TLS_CONF, "01-passthrough-tls.conf")) as f:
        b = broker(conf=fill(f.read(), vals), port=vals["be_port"],
                   name="mqttpx")
    cfg = fill(read("01-passthrough-tls.cfg"), vals)
    h = HAProxy(fill(read("common.cfg"), vals), cfg, broker.dir)
    request.node._mqx_logs = [("haproxy config", lambda: cfg),
                              ("haproxy log", h.log)]
    h.start(ready=None)
    try:
        h.wait_log("Health check for server mqttpx/s1 succeeded", timeout=10)
        yield Deployment("01-passthrough-tls", b, h, vals, ["mqttpx"])
    finally:
        h.stop()


def test_haproxy_tls_passthrough(passthrough, certs):
    d = passthrough
    fe, be = d.v["fe_port"], d.v["be_port"]
    # mosquitto clients verify the broker's certificate through HAProxy
    sub_id, pub_id = mosq_pubsub(d.b, mosq_tls(certs), port=fe)
    for cid in (sub_id, pub_id):
        line = d.b.wait_log(re.compile(r"New client connected from \S+ as %s "
                                       % cid))
        assert "from 127.0.0.1:" in line, line  # HAProxy's address
        addr = re.search(r"from (\S+) as", line).group(1)
        handshake_line(d.b, addr, be)
    # the certificate is the broker's: HAProxy holds none
    c = tls_client(fe, "py-through", ctx(certs))
    assert c.sock.getpeercert(binary_form=True) == tlscerts.der(certs,
                                                                 "server")
    assert w.sub(c, 1, [("thru", 1)]) == [1]
    roundtrip(c, "thru")
    # plaintext through HAProxy reaches the TLS listener and is closed
    mark = d.b.mark()
    p = w.Conn(fe)
    p.send(w.connect("plain-through"))
    read_until_closed(p, timeout=3)
    d.b.wait_log(re.compile(r"TLS: connection from 127\.0\.0\.1:\d+ on port "
                            r"%d closed: not a TLS handshake" % be),
                 since=mark)
    assert not d.h.find("DOWN")
