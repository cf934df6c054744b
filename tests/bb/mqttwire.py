"""Raw MQTT 3.1/3.1.1 packets over plain sockets, for wire-level tests.

Builders return exact bytes; Conn reads whole packets with timeouts and
tells a clean close from silence. Nothing here sleeps: every wait is a
socket timeout.
"""

import errno
import socket
import time

# Packet types (high nibble of the first byte) [MQTT-2.2.1].
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = range(1, 8)
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = range(8, 12)
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14
NAMES = {1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC",
         6: "PUBREL", 7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK",
         10: "UNSUBSCRIBE", 11: "UNSUBACK", 12: "PINGREQ", 13: "PINGRESP",
         14: "DISCONNECT"}


class Closed(Exception):
    """The peer closed the connection (EOF or reset)."""


class Timeout(AssertionError):
    """Nothing (or not enough) arrived in time."""


# ---- encoders ---------------------------------------------------------

def varint(n):
    """Remaining Length encoding [MQTT-2.2.3]."""
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        if n:
            b |= 0x80
        out.append(b)
        if not n:
            return bytes(out)


def b(s):
    return s.encode() if isinstance(s, str) else bytes(s)


def s16(s):
    """Length-prefixed string or binary field [MQTT-1.5.3]."""
    s = b(s)
    return len(s).to_bytes(2, "big") + s


def u16(n):
    return n.to_bytes(2, "big")


def packet(first, body):
    return bytes([first]) + varint(len(body)) + bytes(body)


def connect(client_id="", clean=True, keepalive=60, will=None, username=None,
            password=None, proto="MQTT", level=4, flags=None):
    """CONNECT. will = (topic, payload, qos, retain). flags overrides the
    computed Connect Flags byte (fields are still added from arguments)."""
    f = 0x02 if clean else 0
    if will is not None:
        wt, wp, wq, wr = will
        f |= 0x04 | (wq << 3) | (0x20 if wr else 0)
    if password is not None:
        f |= 0x40
    if username is not None:
        f |= 0x80
    if flags is not None:
        f = flags
    body = s16(proto) + bytes([level, f]) + u16(keepalive) + s16(client_id)
    if will is not None:
        body += s16(will[0]) + s16(will[1])
    if username is not None:
        body += s16(username)
    if password is not None:
        body += s16(password)
    return packet(0x10, body)


def publish(topic, payload=b"", qos=0, retain=False, dup=False, pid=None):
    first = 0x30 | (qos << 1) | (0x08 if dup else 0) | (1 if retain else 0)
    body = s16(topic)
    if qos:
        body += u16(pid if pid is not None else 1)
    return packet(first, body + b(payload))


def puback(pid):
    return bytes([0x40, 2]) + u16(pid)


def pubrec(pid):
    return bytes([0x50, 2]) + u16(pid)


def pubrel(pid):
    return bytes([0x62, 2]) + u16(pid)


def pubcomp(pid):
    return bytes([0x70, 2]) + u16(pid)


def subscribe(pid, filters, first=0x82):
    """filters: [(filter, qos_byte), ...]."""
    body = u16(pid)
    for flt, q in filters:
        body += s16(flt) + bytes([q])
    return packet(first, body)


def unsubscribe(pid, filters, first=0xA2):
    body = u16(pid)
    for flt in filters:
        body += s16(flt)
    return packet(first, body)


PINGREQ_BYTES = b"\xc0\x00"
PINGRESP_BYTES = b"\xd0\x00"
DISCONNECT_BYTES = b"\xe0\x00"


def connack(sp, rc):
    return bytes([0x20, 2, sp, rc])


def hexs(data):
    return data.hex(" ") if data else "(nothing)"


# ---- decoded packets --------------------------------------------------

class Packet:
    def __init__(self, raw, first, body):
        self.raw = raw                  # the whole packet as received
        self.first = first              # type and flags byte
        self.type = first >> 4
        self.flags = first & 0x0F
        self.body = body

    # PUBLISH fields [MQTT-3.3]
    @property
    def qos(self):
        return (self.flags >> 1) & 3

    @property
    def dup(self):
        return bool(self.flags & 8)

    @property
    def retain(self):
        return bool(self.flags & 1)

    @property
    def topic(self):
        n = int.from_bytes(self.body[:2], "big")
        return self.body[2:2 + n].decode("utf-8", "replace")

    @property
    def pid(self):
        if self.type == PUBLISH:
            n = int.from_bytes(self.body[:2], "big")
            if self.qos == 0:
                return None
            return int.from_bytes(self.body[2 + n:4 + n], "big")
        return int.from_bytes(self.body[:2], "big")

    @property
    def payload(self):
        n = int.from_bytes(self.body[:2], "big")
        return self.body[2 + n + (2 if self.qos else 0):]

    def __repr__(self):
        s = "%s(%s)" % (NAMES.get(self.type, "type%d" % self.type),
                        hexs(self.raw[:40]))
        if self.type == PUBLISH:
            s += " topic=%r q%d dup=%d r=%d pid=%s payload=%r" % (
                self.topic, self.qos, self.dup, self.retain, self.pid,
                self.payload[:40])
        return s


# ---- a raw connection -------------------------------------------------

class Conn:
    """A client socket that reads whole MQTT packets with timeouts."""

    def __init__(self, port=None, host="127.0.0.1", path=None,
                 family=socket.AF_INET, timeout=5.0, rcvbuf=None,
                 source=None, nodelay=False):
        """source: local address to bind before connecting (e.g.
        "127.0.0.5", to look like another host); nodelay: TCP_NODELAY,
        so that each send() leaves as its own segment."""
        if path is not None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            addr = path
        else:
            self.sock = socket.socket(family, socket.SOCK_STREAM)
            addr = (host, port)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source is not None:
            self.sock.bind((source, 0))
        if nodelay and path is None:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(timeout)
        self.sock.connect(addr)
        self.buf = b""
        self.pending = []      # packets read while waiting for another one
        self.session_present = None
        self.closed = False

    @property
    def local_port(self):
        return self.sock.getsockname()[1]

    @property
    def local_addr(self):
        """"ip:port" of our end, as the broker logs a peer."""
        a = self.sock.getsockname()
        return "%s:%d" % (a[0], a[1])

    def send(self, data):
        self.sock.sendall(data)

    def send_reads(self, reads, gap=0.005):
        """Send each chunk as its own write, gap seconds apart (with
        nodelay, separate segments and usually separate reads at the
        peer). Returns how many were written before the peer closed."""
        for i, r in enumerate(reads):
            if i:
                time.sleep(gap)  # pacing, not waiting for readiness
            try:
                self.sock.sendall(r)
            except OSError as e:
                if e.errno in (errno.EPIPE, errno.ECONNRESET):
                    return i
                raise
        return len(reads)

    def start_tls(self, ctx, server_hostname="localhost"):
        """TLS handshake on the connected socket (ssl.SSLContext ctx); the
        packet helpers then run over TLS."""
        self.sock = ctx.wrap_socket(self.sock,
                                    server_hostname=server_hostname)
        return self

    def shutdown_write(self):
        """Send FIN (EOF for the peer), keep reading."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            if e.errno != errno.ENOTCONN:
                raise

    def _fill(self, deadline):
        """Read more bytes into self.buf; raise Closed or Timeout."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise Timeout("timed out; buffered %s" % hexs(self.buf))
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise Timeout("timed out; buffered %s" % hexs(self.buf))
        except OSError as e:
            if e.errno in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED):
                self.closed = True
                raise Closed("reset; buffered %s" % hexs(self.buf))
            raise
        if not data:
            self.closed = True
            raise Closed("EOF; buffered %s" % hexs(self.buf))
        self.buf += data

    def recv_packet(self, timeout=5.0):
        """Return the next whole packet, from pending first."""
        if self.pending:
            return self.pending.pop(0)
        deadline = time.monotonic() + timeout
        while True:
            p = self._parse()
            if p is not None:
                return p
            self._fill(deadline)

    def _parse(self):
        buf = self.buf
        if len(buf) < 2:
            return None
        rl, mult, i = 0, 1, 1
        while True:
            if i >= len(buf):
                return None
            rl += (buf[i] & 0x7F) * mult
            mult *= 128
            i += 1
            if not buf[i - 1] & 0x80:
                break
            if i > 4:
                raise AssertionError("server sent bad Remaining Length: %s"
                                     % hexs(buf[:8]))
        if len(buf) < i + rl:
            return None
        raw = buf[:i + rl]
        self.buf = buf[i + rl:]
        return Packet(raw, raw[0], raw[i:])

    def recv_bytes(self, n, timeout=5.0):
        """Exactly n raw bytes (pending packets are not consulted)."""
        deadline = time.monotonic() + timeout
        while len(self.buf) < n:
            self._fill(deadline)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def expect(self, data, timeout=5.0):
        """The next bytes on the wire are exactly data."""
        try:
            got = self.recv_bytes(len(data), timeout)
        except Closed as e:
            raise AssertionError("expected %s, connection closed (%s)"
                                 % (hexs(data), e))
        except Timeout:
            raise Timeout("expected %s, got only %s in %.1fs"
                          % (hexs(data), hexs(self.buf), timeout))
        assert got == data, "expected %s, got %s" % (hexs(data), hexs(got))

    def expect_closed(self, timeout=3.0):
        """The server closes without sending anything (more)."""
        assert not self.pending, "unexpected packets %r" % self.pending
        if self.buf:
            raise AssertionError("expected close, got %s" % hexs(self.buf))
        deadline = time.monotonic() + timeout
        try:
            self._fill(deadline)
        except Closed:
            return
        except Timeout:
            raise Timeout("expected the server to close within %.1fs; it "
                          "stayed open" % timeout)
        # _fill returned: bytes arrived
        try:
            while time.monotonic() < deadline:
                self._fill(min(deadline, time.monotonic() + 0.2))
        except (Closed, Timeout):
            pass
        raise AssertionError("expected close without data, got %s"
                             % hexs(self.buf))

    def expect_silence(self, timeout=0.3):
        """Nothing arrives for timeout seconds (a negative check)."""
        assert not self.pending, "unexpected packets %r" % self.pending
        try:
            p = self.recv_packet(timeout)
        except Timeout:
            return
        except Closed as e:
            raise AssertionError("connection closed unexpectedly (%s)" % e)
        raise AssertionError("expected nothing, got %r" % p)

    def is_open(self, timeout=2.0):
        """PINGREQ round trip: True if PINGRESP came back."""
        held, self.pending = self.pending, []
        try:
            self.send(PINGREQ_BYTES)
            while True:
                p = self.recv_packet(timeout)
                if p.raw == PINGRESP_BYTES:
                    return True
                held.append(p)
        except (Closed, OSError, Timeout):
            return False
        finally:
            self.pending = held + self.pending

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


# ---- PROXY protocol headers (what HAProxy sends) ----------------------

PP2_SIG = bytes.fromhex("0d0a0d0a000d0a515549540a")


def proxy_v1(src, dst, sport, dport):
    """A PROXY v1 line, TCP4 or TCP6 by the address."""
    fam = "TCP6" if ":" in src else "TCP4"
    line = "PROXY %s %s %s %d %d\r\n" % (fam, src, dst, sport, dport)
    return line.encode()


def proxy_v2(src=None, dst=None, sport=0, dport=0, tlvs=b"", local=False):
    """A PROXY v2 header: PROXY TCP over IPv4/IPv6 by the address, or LOCAL
    (no address block) when local; tlvs are appended as given."""
    if local:
        vc, fam, block = 0x20, 0x00, b""
    elif ":" in src:
        vc, fam = 0x21, 0x21
        block = (socket.inet_pton(socket.AF_INET6, src)
                 + socket.inet_pton(socket.AF_INET6, dst)
                 + u16(sport) + u16(dport))
    else:
        vc, fam = 0x21, 0x11
        block = (socket.inet_aton(src) + socket.inet_aton(dst)
                 + u16(sport) + u16(dport))
    body = block + tlvs
    return PP2_SIG + bytes([vc, fam]) + u16(len(body)) + body


def pp2_tlv(t, value):
    value = b(value)
    return bytes([t]) + u16(len(value)) + value


def pp2_ssl(client, verify=0, version=None, cn=None):
    """SSL TLV (0x20): client bits, verify, VERSION and CN sub-TLVs."""
    sub_ = b""
    if version is not None:
        sub_ += pp2_tlv(0x21, version)
    if cn is not None:
        sub_ += pp2_tlv(0x22, cn)
    return pp2_tlv(0x20, bytes([client]) + verify.to_bytes(4, "big") + sub_)


# ---- session helpers --------------------------------------------------

def open_client(port, client_id, clean=True, keepalive=60, present=None,
                conn_kw=None, **kw):
    """Connect and expect CONNACK 0; check the session present flag when
    present is not None. Returns the Conn."""
    c = Conn(port, **(conn_kw or {}))
    c.send(connect(client_id, clean=clean, keepalive=keepalive, **kw))
    p = c.recv_packet()
    assert p.type == CONNACK and len(p.raw) == 4 and p.raw[3] == 0, \
        "CONNECT %r: expected CONNACK 0, got %r" % (client_id, p)
    c.session_present = p.raw[2]
    if present is not None:
        assert p.raw[2] == (1 if present else 0), \
            "session present: expected %d, got %r" % (present, p)
    return c


def next_of(c, ptype, timeout=5.0):
    """Read until a packet of ptype; others go to c.pending (in order)."""
    skipped = []
    try:
        while True:
            if c.pending:
                p = c.pending.pop(0)
            else:
                p = c.recv_packet(timeout)
            if p.type == ptype:
                return p
            skipped.append(p)
    finally:
        c.pending[:0] = skipped


def sub(c, pid, filters, timeout=5.0):
    """SUBSCRIBE and return the SUBACK return codes [MQTT-3.8.4]."""
    c.send(subscribe(pid, filters))
    p = next_of(c, SUBACK, timeout)
    assert p.pid == pid, "SUBACK id %d != %d" % (p.pid, pid)
    return list(p.body[2:])


def unsub(c, pid, filters, timeout=5.0):
    c.send(unsubscribe(pid, filters))
    p = next_of(c, UNSUBACK, timeout)
    assert p.raw == bytes([0xB0, 2]) + u16(pid), "bad UNSUBACK %r" % p


def pub(c, topic, payload=b"", qos=0, retain=False, pid=1, timeout=5.0):
    """PUBLISH and finish the QoS flow as the sender."""
    c.send(publish(topic, payload, qos, retain, pid=pid))
    if qos == 1:
        p = next_of(c, PUBACK, timeout)
        assert p.raw == puback(pid), "expected PUBACK %d, got %r" % (pid, p)
    elif qos == 2:
        p = next_of(c, PUBREC, timeout)
        assert p.raw == pubrec(pid), "expected PUBREC %d, got %r" % (pid, p)
        c.send(pubrel(pid))
        p = next_of(c, PUBCOMP, timeout)
        assert p.raw == pubcomp(pid), "expected PUBCOMP %d, got %r" % (pid, p)


def recv_pub(c, timeout=5.0, ack=True):
    """Next PUBLISH (other packets are an error); acknowledge it as a
    receiver when ack (QoS 2: PUBREC, wait PUBREL, PUBCOMP)."""
    p = c.recv_packet(timeout)
    assert p.type == PUBLISH, "expected PUBLISH, got %r" % p
    if ack:
        ack_pub(c, p, timeout)
    return p


def ack_pub(c, p, timeout=5.0):
    if p.qos == 1:
        c.send(puback(p.pid))
    elif p.qos == 2:
        c.send(pubrec(p.pid))
        r = next_of(c, PUBREL, timeout)
        assert r.raw == pubrel(p.pid), "expected PUBREL %d, got %r" % (
            p.pid, r)
        c.send(pubcomp(p.pid))


def collect_until(c, topic, payload=None, timeout=5.0, ack=True):
    """PUBLISHes received before the first one on topic (with payload, if
    given): the fence. Per-topic ordering makes this a deterministic
    'nothing else arrived' check without sleeping."""
    got = []
    while True:
        p = recv_pub(c, timeout, ack)
        if p.topic == topic and (payload is None or p.payload == b(payload)):
            return got
        got.append(p)
