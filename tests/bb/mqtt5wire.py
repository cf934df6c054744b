"""Raw MQTT 5.0 packets over plain sockets, for wire-level tests.

Builds on mqttwire (framing, Conn, timeouts). Properties are lists of
(identifier, value) pairs, kept in order, so a test can send duplicates
or properties a packet must not carry, and see exactly what the server
sent [MQTT-2.2.2]. Conn5 decodes every packet it reads; it resolves the
server's topic aliases and fails at once when the server breaks a rule
the client declared in its CONNECT (alias above our Topic Alias Maximum,
an alias never set, a packet above our Maximum Packet Size). Nothing here
sleeps: every wait is a socket timeout.
"""

import time

import mqttwire as w
from mqttwire import (CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP,
                      SUBACK, UNSUBACK, DISCONNECT, b, hexs, packet, s16, u16,
                      varint)

AUTH = 15
NAMES = dict(w.NAMES)
NAMES[AUTH] = "AUTH"

# ---- properties [MQTT-2.2.2.2] ------------------------------------------

PAYLOAD_FORMAT = 0x01
MESSAGE_EXPIRY = 0x02
CONTENT_TYPE = 0x03
RESPONSE_TOPIC = 0x08
CORRELATION_DATA = 0x09
SUBSCRIPTION_ID = 0x0B
SESSION_EXPIRY = 0x11
ASSIGNED_CLIENT_ID = 0x12
SERVER_KEEP_ALIVE = 0x13
AUTH_METHOD = 0x15
AUTH_DATA = 0x16
REQUEST_PROBLEM_INFO = 0x17
WILL_DELAY = 0x18
REQUEST_RESPONSE_INFO = 0x19
RESPONSE_INFO = 0x1A
SERVER_REFERENCE = 0x1C
REASON_STRING = 0x1F
RECEIVE_MAXIMUM = 0x21
TOPIC_ALIAS_MAXIMUM = 0x22
TOPIC_ALIAS = 0x23
MAXIMUM_QOS = 0x24
RETAIN_AVAILABLE = 0x25
USER_PROPERTY = 0x26
MAXIMUM_PACKET_SIZE = 0x27
WILDCARD_SUB_AVAILABLE = 0x28
SUB_ID_AVAILABLE = 0x29
SHARED_SUB_AVAILABLE = 0x2A

# identifier: (name, type); types: byte, u16, u32, varint, str, bin, pair
PROPS = {
    0x01: ("Payload Format Indicator", "byte"),
    0x02: ("Message Expiry Interval", "u32"),
    0x03: ("Content Type", "str"),
    0x08: ("Response Topic", "str"),
    0x09: ("Correlation Data", "bin"),
    0x0B: ("Subscription Identifier", "varint"),
    0x11: ("Session Expiry Interval", "u32"),
    0x12: ("Assigned Client Identifier", "str"),
    0x13: ("Server Keep Alive", "u16"),
    0x15: ("Authentication Method", "str"),
    0x16: ("Authentication Data", "bin"),
    0x17: ("Request Problem Information", "byte"),
    0x18: ("Will Delay Interval", "u32"),
    0x19: ("Request Response Information", "byte"),
    0x1A: ("Response Information", "str"),
    0x1C: ("Server Reference", "str"),
    0x1F: ("Reason String", "str"),
    0x21: ("Receive Maximum", "u16"),
    0x22: ("Topic Alias Maximum", "u16"),
    0x23: ("Topic Alias", "u16"),
    0x24: ("Maximum QoS", "byte"),
    0x25: ("Retain Available", "byte"),
    0x26: ("User Property", "pair"),
    0x27: ("Maximum Packet Size", "u32"),
    0x28: ("Wildcard Subscription Available", "byte"),
    0x29: ("Subscription Identifier Available", "byte"),
    0x2A: ("Shared Subscription Available", "byte"),
}

# properties each server-sent packet type may carry [MQTT-2.2.2-2]
ALLOWED_FROM_SERVER = {
    CONNACK: {0x11, 0x12, 0x13, 0x15, 0x16, 0x1A, 0x1C, 0x1F, 0x21, 0x22,
              0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2A},
    PUBLISH: {0x01, 0x02, 0x03, 0x08, 0x09, 0x0B, 0x23, 0x26},
    PUBACK: {0x1F, 0x26}, PUBREC: {0x1F, 0x26}, PUBREL: {0x1F, 0x26},
    PUBCOMP: {0x1F, 0x26}, SUBACK: {0x1F, 0x26}, UNSUBACK: {0x1F, 0x26},
    DISCONNECT: {0x11, 0x1C, 0x1F, 0x26},
    AUTH: {0x15, 0x16, 0x1F, 0x26},
}
# properties that may appear more than once [MQTT-2.2.2-1]
REPEATABLE = {USER_PROPERTY, SUBSCRIPTION_ID}


def prop(pid, value):
    """One property, encoded by its type; pid may be any byte (for
    unknown identifiers pass value as raw bytes)."""
    kind = PROPS.get(pid, (None, "raw"))[1]
    if kind == "byte":
        v = bytes([value])
    elif kind == "u16":
        v = u16(value)
    elif kind == "u32":
        v = value.to_bytes(4, "big")
    elif kind == "varint":
        v = varint(value)
    elif kind in ("str", "bin"):
        v = s16(value)
    elif kind == "pair":
        v = s16(value[0]) + s16(value[1])
    else:
        v = b(value)
    return varint(pid) + v


def props(items=()):
    """A property block: length, then the properties in the given order.
    items: [(identifier, value)] or raw bytes (sent as given)."""
    if isinstance(items, (bytes, bytearray)):
        body = bytes(items)
    else:
        body = b"".join(prop(k, v) for k, v in items)
    return varint(len(body)) + body


def user(*pairs):
    """[(USER_PROPERTY, (k, v)), ...] for user(('k', 'v'), ...)."""
    return [(USER_PROPERTY, p) for p in pairs]


class Props:
    """Decoded properties, in wire order."""

    def __init__(self, items):
        self.items = items              # [(identifier, value)]

    def get(self, pid, default=None):
        for k, v in self.items:
            if k == pid:
                return v
        return default

    def all(self, pid):
        return [v for k, v in self.items if k == pid]

    def ids(self):
        return [k for k, _ in self.items]

    def __contains__(self, pid):
        return any(k == pid for k, _ in self.items)

    @property
    def user(self):
        return self.all(USER_PROPERTY)

    def __eq__(self, other):
        return self.items == getattr(other, "items", other)

    def __repr__(self):
        return "{%s}" % ", ".join(
            "%s=%r" % (PROPS.get(k, ("0x%02x" % k,))[0], v)
            for k, v in self.items)


def _u(data, i, n):
    if i + n > len(data):
        raise ValueError("property value runs past the block")
    return int.from_bytes(data[i:i + n], "big"), i + n


def _varint_at(data, i):
    v, mult = 0, 1
    for k in range(4):
        if i >= len(data):
            raise ValueError("truncated variable byte integer")
        c = data[i]
        i += 1
        v += (c & 0x7F) * mult
        mult *= 128
        if not c & 0x80:
            return v, i
    raise ValueError("variable byte integer longer than 4 bytes")


def _str_at(data, i):
    n, i = _u(data, i, 2)
    if i + n > len(data):
        raise ValueError("string runs past the block")
    return bytes(data[i:i + n]), i + n


def decode_props(data, i):
    """Parse a property block at data[i:]; returns (Props, next index).
    Raises ValueError for anything malformed."""
    n, i = _varint_at(data, i)
    end = i + n
    if end > len(data):
        raise ValueError("property length %d runs past the packet" % n)
    items = []
    block = data[:end]
    while i < end:
        pid, i = _varint_at(block, i)
        if pid not in PROPS:
            raise ValueError("unknown property 0x%02x" % pid)
        kind = PROPS[pid][1]
        if kind == "byte":
            v, i = _u(block, i, 1)
        elif kind == "u16":
            v, i = _u(block, i, 2)
        elif kind == "u32":
            v, i = _u(block, i, 4)
        elif kind == "varint":
            v, i = _varint_at(block, i)
        elif kind == "str":
            raw, i = _str_at(block, i)
            v = raw.decode("utf-8")  # strict: ill-formed UTF-8 is an error
        elif kind == "bin":
            v, i = _str_at(block, i)
        else:
            k, i = _str_at(block, i)
            val, i = _str_at(block, i)
            v = (k.decode("utf-8"), val.decode("utf-8"))
        items.append((pid, v))
    return Props(items), end


# ---- builders -----------------------------------------------------------

def connect(client_id="", clean=True, keepalive=60, properties=(), will=None,
            username=None, password=None, level=5, flags=None,
            proto="MQTT"):
    """CONNECT, version 5 by default. will = (topic, payload, qos, retain)
    or (topic, payload, qos, retain, will_properties). properties and
    will properties: [(identifier, value)] or raw bytes."""
    f = 0x02 if clean else 0
    if will is not None:
        f |= 0x04 | (will[2] << 3) | (0x20 if will[3] else 0)
    if password is not None:
        f |= 0x40
    if username is not None:
        f |= 0x80
    if flags is not None:
        f = flags
    body = s16(proto) + bytes([level, f]) + u16(keepalive)
    if level == 5:
        body += props(properties)
    body += s16(client_id)
    if will is not None:
        if level == 5:
            body += props(will[4] if len(will) > 4 else ())
        body += s16(will[0]) + s16(will[1])
    if username is not None:
        body += s16(username)
    if password is not None:
        body += s16(password)
    return packet(0x10, body)


def publish(topic, payload=b"", qos=0, retain=False, dup=False, pid=None,
            properties=()):
    first = 0x30 | (qos << 1) | (0x08 if dup else 0) | (1 if retain else 0)
    body = s16(topic)
    if qos:
        body += u16(pid if pid is not None else 1)
    return packet(first, body + props(properties) + b(payload))


def ack(ptype, pid, rc=None, properties=None):
    """PUBACK/PUBREC/PUBREL/PUBCOMP. rc None: the short 2-byte form
    (success, no properties) [MQTT-3.4.2.1]."""
    first = (ptype << 4) | (2 if ptype == PUBREL else 0)
    body = u16(pid)
    if rc is not None or properties is not None:
        body += bytes([rc or 0])
    if properties is not None:
        body += props(properties)
    return packet(first, body)


def puback(pid, rc=None, properties=None):
    return ack(PUBACK, pid, rc, properties)


def pubrec(pid, rc=None, properties=None):
    return ack(PUBREC, pid, rc, properties)


def pubrel(pid, rc=None, properties=None):
    return ack(PUBREL, pid, rc, properties)


def pubcomp(pid, rc=None, properties=None):
    return ack(PUBCOMP, pid, rc, properties)


def sub_opts(qos=0, no_local=False, rap=False, rh=0):
    """Subscription Options byte [MQTT-3.8.3.1]."""
    return qos | (4 if no_local else 0) | (8 if rap else 0) | (rh << 4)


def subscribe(pid, filters, properties=(), first=0x82):
    """filters: [(filter, options byte)]."""
    body = u16(pid) + props(properties)
    for flt, o in filters:
        body += s16(flt) + bytes([o])
    return packet(first, body)


def unsubscribe(pid, filters, properties=()):
    body = u16(pid) + props(properties)
    for flt in filters:
        body += s16(flt)
    return packet(0xA2, body)


def disconnect(rc=None, properties=None):
    """DISCONNECT; rc None and no properties: the 2-byte form (0x00)."""
    if rc is None and properties is None:
        return b"\xe0\x00"
    body = bytes([rc or 0])
    if properties is not None:
        body += props(properties)
    return packet(0xE0, body)


def auth(rc=0x18, properties=()):
    return packet(0xF0, bytes([rc]) + props(properties))


# ---- decoded packets ----------------------------------------------------

class P5:
    """A packet from the server, decoded as MQTT 5. Fields by type:
    CONNACK sp, rc; PUBLISH topic (alias resolved), wire_topic, alias,
    qos, dup, retain, pid, payload; PUBACK..PUBCOMP pid, rc; SUBACK and
    UNSUBACK pid, codes; DISCONNECT, AUTH rc. All: props, raw, type."""

    def __init__(self, pk):
        self.raw = pk.raw
        self.first = pk.first
        self.type = pk.type
        self.flags = pk.flags
        self.props = Props([])
        body = pk.body
        t = self.type
        try:
            if t == CONNACK:
                if len(body) < 3:
                    raise ValueError("CONNACK too short for MQTT 5")
                self.sp, self.rc = body[0], body[1]
                if body[0] & 0xFE:
                    raise ValueError("reserved CONNACK flags set")
                self.props, i = decode_props(body, 2)
                self._end(body, i)
            elif t == PUBLISH:
                self.qos = (self.flags >> 1) & 3
                self.dup = bool(self.flags & 8)
                self.retain = bool(self.flags & 1)
                raw, i = _str_at(body, 0)
                self.wire_topic = raw.decode("utf-8")
                self.topic = self.wire_topic
                self.pid = None
                if self.qos:
                    self.pid, i = _u(body, i, 2)
                self.props, i = decode_props(body, i)
                self.payload = bytes(body[i:])
                self.alias = self.props.get(TOPIC_ALIAS)
            elif t in (PUBACK, PUBREC, PUBREL, PUBCOMP):
                self.pid, i = _u(body, 0, 2)
                self.rc = body[2] if len(body) > 2 else 0
                if len(body) > 3:
                    self.props, i = decode_props(body, 3)
                    self._end(body, i)
            elif t in (SUBACK, UNSUBACK):
                self.pid, i = _u(body, 0, 2)
                self.props, i = decode_props(body, i)
                self.codes = list(body[i:])
            elif t in (DISCONNECT, AUTH):
                self.rc = body[0] if body else 0
                if len(body) > 1:
                    self.props, i = decode_props(body, 1)
                    self._end(body, i)
        except (ValueError, UnicodeDecodeError) as e:
            raise AssertionError("server sent a malformed %s (%s): %s" % (
                NAMES.get(t, t), e, hexs(self.raw)))
        bad = [k for k in self.props.ids()
               if k not in ALLOWED_FROM_SERVER.get(t, set())]
        if bad:
            raise AssertionError("server sent %s with properties %s not "
                                 "allowed there: %s" % (
                                     NAMES.get(t, t),
                                     ["0x%02x" % k for k in bad],
                                     hexs(self.raw)))
        ids = self.props.ids()
        dups = {k for k in ids if ids.count(k) > 1 and k not in REPEATABLE}
        if dups:
            raise AssertionError("server sent %s with duplicate properties "
                                 "%s: %s" % (NAMES.get(t, t), sorted(dups),
                                             hexs(self.raw)))

    def _end(self, body, i):
        if i != len(body):
            raise ValueError("%d trailing bytes" % (len(body) - i))

    @property
    def user(self):
        return self.props.user

    def __repr__(self):
        name = NAMES.get(self.type, "type%d" % self.type)
        if self.type == PUBLISH:
            return "PUBLISH(topic=%r wire=%r q%d dup=%d r=%d pid=%s " \
                "payload=%r %r)" % (self.topic, self.wire_topic, self.qos,
                                    self.dup, self.retain, self.pid,
                                    self.payload[:40], self.props)
        extra = ""
        for f in ("sp", "rc", "pid", "codes"):
            if hasattr(self, f):
                extra += " %s=%s" % (f, ("0x%02x" % getattr(self, f))
                                     if f == "rc" else getattr(self, f))
        return "%s(%s %r)" % (name, extra.strip(), self.props)


class Conn5(w.Conn):
    """A raw connection that decodes MQTT 5 packets (recv5) and checks the
    limits this client announced: Topic Alias Maximum (aliases resolved
    in .topic), Maximum Packet Size."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.alias_max = 0              # our Topic Alias Maximum
        self.max_packet = None          # our Maximum Packet Size
        self.aliases = {}               # server-to-client alias -> topic
        self.connack = None

    def announce(self, properties):
        """Note the limits of the CONNECT properties we send."""
        if isinstance(properties, (bytes, bytearray)):
            return
        for k, v in properties:
            if k == TOPIC_ALIAS_MAXIMUM:
                self.alias_max = v
            elif k == MAXIMUM_PACKET_SIZE and v > 0:  # 0 is invalid
                self.max_packet = v

    def recv5(self, timeout=5.0):
        """The next packet, decoded (from pending first)."""
        if self.pending:
            return self.pending.pop(0)
        p = P5(self.recv_packet(timeout))
        if self.max_packet is not None and len(p.raw) > self.max_packet:
            raise AssertionError(
                "server sent a %d-byte %s above our Maximum Packet Size %d"
                % (len(p.raw), NAMES.get(p.type), self.max_packet))
        if p.type == PUBLISH:
            self._resolve(p)
        return p

    def _resolve(self, p):
        a = p.alias
        if a is None:
            if p.wire_topic == "":
                raise AssertionError("PUBLISH with empty topic and no alias: "
                                     "%s" % hexs(p.raw))
            return
        if not 1 <= a <= self.alias_max:
            raise AssertionError(
                "server used topic alias %d; our Topic Alias Maximum is %d "
                "[MQTT-3.3.2-9]: %s" % (a, self.alias_max, hexs(p.raw)))
        if p.wire_topic:
            self.aliases[a] = p.wire_topic
        elif a in self.aliases:
            p.topic = self.aliases[a]
        else:
            raise AssertionError("server used topic alias %d before setting "
                                 "it [MQTT-3.3.2-10]: %s" % (a, hexs(p.raw)))

    def next5(self, ptype, timeout=5.0):
        """Read until a packet of ptype; others are kept in order."""
        skipped = []
        deadline = time.monotonic() + timeout
        try:
            while True:
                p = self.recv5(max(0.01, deadline - time.monotonic()))
                if p.type == ptype:
                    return p
                skipped.append(p)
        finally:
            self.pending[:0] = skipped

    def expect_silence(self, timeout=0.3):
        assert not self.pending, "unexpected packets %r" % self.pending
        try:
            p = self.recv5(timeout)
        except w.Timeout:
            return
        except w.Closed as e:
            raise AssertionError("connection closed unexpectedly (%s)" % e)
        raise AssertionError("expected nothing, got %r" % p)

    def is_open(self, timeout=2.0):
        """PINGREQ round trip (decoded packets kept in pending)."""
        held, self.pending = self.pending, []
        try:
            self.send(w.PINGREQ_BYTES)
            while True:
                p = self.recv5(timeout)
                if p.raw == w.PINGRESP_BYTES:
                    return True
                held.append(p)
        except (w.Closed, OSError, w.Timeout):
            return False
        finally:
            self.pending = held + self.pending


# ---- session helpers ----------------------------------------------------

def connack(port, client_id="", properties=(), conn_kw=None, **kw):
    """Send a version 5 CONNECT; returns (decoded CONNACK, Conn5)."""
    c = Conn5(port, **(conn_kw or {}))
    c.announce(properties)
    c.send(connect(client_id, properties=properties, **kw))
    p = c.recv5()
    assert p.type == CONNACK, "expected CONNACK, got %r" % p
    c.connack = p
    c.session_present = p.sp
    return p, c


def open5(port, client_id, present=None, **kw):
    """Connect with MQTT 5 and expect CONNACK 0x00; check session present
    when present is not None. Returns the Conn5 (.connack is the CONNACK)."""
    p, c = connack(port, client_id, **kw)
    assert p.rc == 0, "CONNECT %r: expected CONNACK 0x00, got %r" % (
        client_id, p)
    if present is not None:
        assert p.sp == (1 if present else 0), \
            "session present: expected %d, got %r" % (present, p)
    return c


def refused5(port, rc, client_id="bad", **kw):
    """Expect CONNACK with reason code rc (an int or a set of acceptable
    ones), then a close. Returns the CONNACK."""
    p, c = connack(port, client_id, **kw)
    ok = rc if isinstance(rc, (set, frozenset, tuple, list)) else {rc}
    assert p.rc in ok, "expected CONNACK %s, got %r" % (
        "/".join("0x%02x" % x for x in sorted(ok)), p)
    assert p.sp == 0, "session present with a refusal [MQTT-3.2.2-6]"
    c.expect_closed()
    return p


def sub5(c, pid, filters, properties=(), timeout=5.0):
    """SUBSCRIBE; returns the SUBACK's reason codes. filters: [(filter,
    options byte)] or [(filter, qos)] (qos is an options byte too)."""
    c.send(subscribe(pid, filters, properties))
    p = c.next5(SUBACK, timeout)
    assert p.pid == pid, "SUBACK id %d != %d" % (p.pid, pid)
    return p.codes


def unsub5(c, pid, filters, timeout=5.0):
    c.send(unsubscribe(pid, filters))
    p = c.next5(UNSUBACK, timeout)
    assert p.pid == pid, "UNSUBACK id %d != %d" % (p.pid, pid)
    return p.codes


def pub5(c, topic, payload=b"", qos=0, retain=False, pid=1, properties=(),
         rc=None, timeout=5.0):
    """PUBLISH and finish the flow as the sender. Returns the PUBACK or
    PUBREC reason code (None for QoS 0); checks it when rc is given."""
    c.send(publish(topic, payload, qos, retain, pid=pid,
                   properties=properties))
    if qos == 0:
        return None
    p = c.next5(PUBACK if qos == 1 else PUBREC, timeout)
    assert p.pid == pid, "expected ack for %d, got %r" % (pid, p)
    if rc is not None:
        assert p.rc == rc, "expected reason code 0x%02x, got %r" % (rc, p)
    if qos == 2 and p.rc < 0x80:
        c.send(pubrel(pid))
        q = c.next5(PUBCOMP, timeout)
        assert q.pid == pid and q.rc == 0, "expected PUBCOMP %d, got %r" % (
            pid, q)
    return p.rc


def ack5(c, p, timeout=5.0):
    """Acknowledge a received PUBLISH as a receiver."""
    if p.qos == 1:
        c.send(puback(p.pid))
    elif p.qos == 2:
        c.send(pubrec(p.pid))
        r = c.next5(PUBREL, timeout)
        assert r.pid == p.pid and r.rc == 0, "expected PUBREL %d, got %r" % (
            p.pid, r)
        c.send(pubcomp(p.pid))


def recv_pub5(c, timeout=5.0, ack=True):
    """Next packet, which must be a PUBLISH; acknowledged when ack."""
    p = c.recv5(timeout)
    assert p.type == PUBLISH, "expected PUBLISH, got %r" % p
    if ack:
        ack5(c, p, timeout)
    return p


def collect_until5(c, topic, payload=None, timeout=5.0, ack=True):
    """PUBLISHes received before the first one on topic (with payload,
    if given): a fence, as mqttwire.collect_until."""
    got = []
    while True:
        p = recv_pub5(c, timeout, ack)
        if p.topic == topic and (payload is None or p.payload == b(payload)):
            return got
        got.append(p)


def expect_disconnect(c, rc, timeout=5.0):
    """The server sends DISCONNECT with reason code rc (an int or a set),
    then closes [MQTT-4.13.1]; PUBLISHes before it are skipped. Returns the
    DISCONNECT."""
    ok = rc if isinstance(rc, (set, frozenset, tuple, list)) else {rc}
    seen = []
    while True:
        try:
            p = c.recv5(timeout)
        except w.Closed as e:
            raise AssertionError(
                "closed without DISCONNECT 0x%02x (%s); before it: %r"
                % (min(ok), e, seen))
        if p.type == DISCONNECT:
            break
        seen.append(p)
        assert p.type == PUBLISH, "expected DISCONNECT, got %r" % p
    assert p.rc in ok, "expected DISCONNECT %s, got %r" % (
        "/".join("0x%02x" % x for x in sorted(ok)), p)
    c.expect_closed()
    return p


def publish_size(topic, payload, qos=0, properties=()):
    """Size in bytes of the PUBLISH packet publish() would build."""
    return len(publish(topic, payload, qos, pid=1, properties=properties))


def payload_for(total, topic, qos=0, properties=(), fill=b"x"):
    """A payload that makes publish(topic, payload, qos, ...) exactly total
    bytes long (the Remaining Length's own size included)."""
    n = max(0, total - publish_size(topic, b"", qos, properties))
    while n > 0 and publish_size(topic, fill * n, qos, properties) > total:
        n -= 1
    assert publish_size(topic, fill * n, qos, properties) == total, \
        "no payload gives a %d-byte PUBLISH" % total
    return fill * n
