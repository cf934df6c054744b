"""MQTT 5.0: CONNECT and CONNACK (properties the broker announces, reason
codes for refusals and bad CONNECTs), message properties carried to
subscribers, mixed 3.1.1/5 traffic, request/response, and real v5
clients (paho 1.6, mosquitto_pub/mosquitto_sub 2.0).

Raw sockets (mqtt5wire) wherever the exact bytes matter. Related files:
test_mqtt5_flow.py (acks, DISCONNECT, topic aliases, flow control, packet
sizes), test_mqtt5_session.py (session and message expiry, wills),
test_mqtt5_sub.py (subscription options and identifiers, shared
subscriptions, SUBACK/UNSUBACK), test_mqtt5_persist.py (5.0 state across
a restart), test_mqtt5_reload.py (CONNACK limits across SIGHUP)."""

import base64
import hashlib
import os
import queue
import subprocess

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

import mqttwire as w
import mqtt5wire as m5
from mqtt5wire import open5, refused5, sub5, pub5, recv_pub5, user
from test_clients import Paho, paho_made

# CONNACK properties a server without these limits leaves out, and what
# leaving them out means [MQTT-3.2.2.3]
ABSENT_BY_DEFAULT = [m5.MAXIMUM_QOS, m5.RETAIN_AVAILABLE,
                     m5.WILDCARD_SUB_AVAILABLE, m5.SUB_ID_AVAILABLE,
                     m5.SHARED_SUB_AVAILABLE, m5.SERVER_KEEP_ALIVE,
                     m5.ASSIGNED_CLIENT_ID, m5.SESSION_EXPIRY,
                     m5.AUTH_METHOD, m5.AUTH_DATA, m5.SERVER_REFERENCE,
                     m5.RESPONSE_INFO]


def passwd_line(user_name, password):
    """A mosquitto_passwd $6$ line: sha512(password + salt) [Mosquitto]."""
    salt = os.urandom(12)
    h = hashlib.sha512(password.encode() + salt).digest()
    return "%s:$6$%s$%s\n" % (user_name, base64.b64encode(salt).decode(),
                              base64.b64encode(h).decode())


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def auth_broker(broker, acl=None):
    """A broker with user alice (password 'secret'), anonymous refused,
    and acl text when given."""
    write(os.path.join(broker.dir, "passwd"), passwd_line("alice", "secret"))
    extra = ""
    if acl is not None:
        write(os.path.join(broker.dir, "acl"), acl)
        extra = "acl_file {dir}/acl\n"
    return broker(conf="listener {port} 127.0.0.1\nallow_anonymous false\n"
                       "password_file {dir}/passwd\n" + extra)


# ---- CONNECT / CONNACK ----------------------------------------------------

def test_connect_v5_accepted_with_default_properties(broker):
    # [MQTT-3.1.2-2] level 5 accepted; [MQTT-3.2.2-1] CONNACK; defaults:
    # Receive Maximum = max_inflight_messages (20), Topic Alias Maximum =
    # max_topic_alias (10), Maximum Packet Size always sent; everything at
    # its spec default left out
    b = broker()
    c = open5(b.port, "v5", present=False)
    p = c.connack
    assert p.props.get(m5.RECEIVE_MAXIMUM) == 20, p
    assert p.props.get(m5.TOPIC_ALIAS_MAXIMUM) == 10, p
    mps = p.props.get(m5.MAXIMUM_PACKET_SIZE)
    assert mps is not None and mps > 0, p
    for pid in ABSENT_BY_DEFAULT:
        assert pid not in p.props, "unexpected %s in %r" % (
            m5.PROPS[pid][0], p)
    assert c.is_open()
    b.wait_log("as v5 (p5, c1, k60).")


def test_connack_properties_follow_the_config(broker):
    b = broker("max_inflight_messages 5\nmax_packet_size 5000\n"
               "max_topic_alias 3\nretain_available false\n"
               "shared_subscriptions false\n")
    p = open5(b.port, "cfg").connack
    assert p.props.get(m5.RECEIVE_MAXIMUM) == 5, p
    assert p.props.get(m5.MAXIMUM_PACKET_SIZE) == 5000, p
    assert p.props.get(m5.TOPIC_ALIAS_MAXIMUM) == 3, p
    assert p.props.get(m5.RETAIN_AVAILABLE) == 0, p
    assert p.props.get(m5.SHARED_SUB_AVAILABLE) == 0, p
    assert m5.MAXIMUM_QOS not in p.props, p


def test_connack_unlimited_inflight_and_no_aliases_omitted(broker):
    # max_inflight_messages 0 = 65535, the default: Receive Maximum left
    # out; max_topic_alias 0: no Topic Alias Maximum (0 is the default)
    b = broker("max_inflight_messages 0\nmax_topic_alias 0\n")
    p = open5(b.port, "unl").connack
    assert m5.RECEIVE_MAXIMUM not in p.props, p
    assert p.props.get(m5.TOPIC_ALIAS_MAXIMUM, 0) == 0, p


@pytest.mark.parametrize("ka,want", [(60, 30), (0, 30), (30, None),
                                     (10, None)])
def test_server_keep_alive(broker, ka, want):
    # [MQTT-3.2.2-21] a keepalive above max_keepalive (or 0, "none") is
    # not refused for v5: CONNACK carries Server Keep Alive instead
    b = broker("max_keepalive 30\n")
    p = open5(b.port, "ka%d" % ka, keepalive=ka).connack
    assert p.props.get(m5.SERVER_KEEP_ALIVE) == want, p


def test_assigned_client_identifier(broker):
    # [MQTT-3.1.3-7] empty client id: the server assigns one and returns
    # it in Assigned Client Identifier; each is unique
    b = broker()
    c1 = open5(b.port, "")
    c2 = open5(b.port, "")
    a1 = c1.connack.props.get(m5.ASSIGNED_CLIENT_ID)
    a2 = c2.connack.props.get(m5.ASSIGNED_CLIENT_ID)
    assert a1 and a2 and a1 != a2, (c1.connack, c2.connack)
    assert c1.is_open() and c2.is_open()
    b.wait_log("as %s (p5" % a1)


def test_assigned_client_identifier_names_the_session(broker):
    # the assigned id is the session's id: a later CONNECT with it and
    # clean start 0 resumes the session
    b = broker()
    c = open5(b.port, "", clean=False,
              properties=[(m5.SESSION_EXPIRY, 60)])
    cid = c.connack.props.get(m5.ASSIGNED_CLIENT_ID)
    assert cid, c.connack
    assert sub5(c, 1, [("asg/t", 1)]) == [1]
    mark = b.mark()
    c.send(m5.disconnect())
    c.expect_closed()
    b.wait_log("Client %s disconnected" % cid, since=mark)
    c = open5(b.port, cid, clean=False, present=True,
              properties=[(m5.SESSION_EXPIRY, 60)])
    assert m5.ASSIGNED_CLIENT_ID not in c.connack.props
    p = open5(b.port, "p")
    pub5(p, "asg/t", b"to the assigned id", qos=1)
    assert recv_pub5(c).payload == b"to the assigned id"


@pytest.mark.parametrize("level", [6, 7, 255])
def test_unsupported_protocol_level(broker, level):
    # [MQTT-3.1.2-2] a level the server does not speak: CONNACK 0x84
    # (v5 form) or 0x01 (3.1.1 form: the client's version is unknown),
    # then close
    b = broker()
    c = w.Conn(b.port)
    c.send(w.connect("lvl", level=level))
    p = c.recv_packet()
    assert p.type == w.CONNACK, p
    assert p.raw == w.connack(0, 1) or (
        len(p.raw) >= 5 and p.raw[2:4] == b"\x00\x84"), p
    c.expect_closed()


def test_v311_client_unchanged(broker):
    # a 3.1.1 CONNECT still gets the 4-byte CONNACK without properties
    b = broker()
    c = w.Conn(b.port)
    c.send(w.connect("old", level=4))
    c.expect(w.connack(0, 0))
    assert c.is_open()


def test_bad_user_name_or_password(broker):
    # 0x86 bad user name or password, then close [MQTT-3.2.2-7]
    b = auth_broker(broker)
    refused5(b.port, 0x86, "wrong", username="alice", password="nope")
    refused5(b.port, 0x86, "unknown", username="mallory", password="x")
    c = open5(b.port, "right", username="alice", password="secret")
    assert c.is_open()


def test_anonymous_refused_not_authorized(broker):
    # allow_anonymous false: 0x87 not authorized
    b = auth_broker(broker)
    refused5(b.port, 0x87, "anon")


def test_will_topic_denied_by_acl(broker):
    # ACL denies the will topic: CONNACK 0x87
    b = auth_broker(broker, acl="user alice\ntopic readwrite ok/#\n")
    refused5(b.port, 0x87, "w", username="alice", password="secret",
             will=("forbidden/will", b"x", 0, False))
    c = open5(b.port, "w2", username="alice", password="secret",
              will=("ok/will", b"x", 0, False))
    assert c.is_open()


def test_server_unavailable_when_sessions_full(broker):
    # max_sessions full: 0x88 server unavailable
    b = broker("max_sessions 1\n")
    a = open5(b.port, "first")
    refused5(b.port, 0x88, "second")
    assert a.is_open()


def test_authentication_method_refused(broker):
    # no enhanced authentication: any Authentication Method gets 0x8C bad
    # authentication method [MQTT-4.12.0-1]
    b = broker()
    refused5(b.port, 0x8C, "scram",
             properties=[(m5.AUTH_METHOD, "SCRAM-SHA-1"),
                         (m5.AUTH_DATA, b"client-first")])
    refused5(b.port, 0x8C, "scram2",
             properties=[(m5.AUTH_METHOD, "SCRAM-SHA-1")])


def test_retained_will_refused_without_retain(broker):
    # retain_available false and a will with retain 1: 0x9A retain not
    # supported [MQTT-3.2.2-13]
    b = broker("retain_available false\n")
    refused5(b.port, 0x9A, "rw", will=("w/t", b"x", 1, True))
    c = open5(b.port, "nrw", will=("w/t", b"x", 1, False))
    assert c.is_open()


BAD_CONNECT_PROPS = [
    # (id, properties, acceptable CONNACK codes)
    ("dup-session-expiry", [(m5.SESSION_EXPIRY, 10), (m5.SESSION_EXPIRY, 20)],
     {0x82}),                                          # [MQTT-2.2.2-1]
    ("dup-receive-max", [(m5.RECEIVE_MAXIMUM, 10), (m5.RECEIVE_MAXIMUM, 10)],
     {0x82}),
    ("dup-max-packet", [(m5.MAXIMUM_PACKET_SIZE, 1000),
                        (m5.MAXIMUM_PACKET_SIZE, 1000)], {0x82}),
    ("dup-alias-max", [(m5.TOPIC_ALIAS_MAXIMUM, 1),
                       (m5.TOPIC_ALIAS_MAXIMUM, 1)], {0x82}),
    ("dup-problem-info", [(m5.REQUEST_PROBLEM_INFO, 1),
                          (m5.REQUEST_PROBLEM_INFO, 1)], {0x82}),
    ("receive-max-0", [(m5.RECEIVE_MAXIMUM, 0)], {0x82}),  # 3.1.2.11.3
    ("max-packet-0", [(m5.MAXIMUM_PACKET_SIZE, 0)], {0x82}),  # 3.1.2.11.4
    ("problem-info-2", [(m5.REQUEST_PROBLEM_INFO, 2)], {0x82}),
    ("response-info-2", [(m5.REQUEST_RESPONSE_INFO, 2)], {0x82}),
    ("topic-alias-in-connect", [(m5.TOPIC_ALIAS, 1)], {0x81, 0x82}),
    ("sub-id-in-connect", [(m5.SUBSCRIPTION_ID, 1)], {0x81, 0x82}),
    ("will-delay-in-connect", [(m5.WILL_DELAY, 1)], {0x81, 0x82}),
    ("server-keepalive-in-connect", [(m5.SERVER_KEEP_ALIVE, 1)],
     {0x81, 0x82}),
    ("unknown-id-0x7f", b"\x7f\x00", {0x81, 0x82}),
    ("truncated-u32", b"\x11\x00\x00", {0x81}),
    ("truncated-user-property", b"\x26\x00\x01k\x00\x05v", {0x81}),
    ("bad-utf8-user-property", b"\x26\x00\x01k\x00\x02\xc3\x28", {0x81}),
]


@pytest.mark.parametrize("name,properties,codes", BAD_CONNECT_PROPS,
                         ids=[x[0] for x in BAD_CONNECT_PROPS])
def test_bad_connect_properties(broker, name, properties, codes):
    # [MQTT-4.13.1-1] a malformed CONNECT or a protocol error in it:
    # CONNACK 0x81 / 0x82, then close
    b = broker()
    refused5(b.port, codes, "bad", properties=properties)
    assert open5(b.port, "good").is_open()


def test_bad_will_properties(broker):
    # will properties: only the PUBLISH-like ones and Will Delay Interval;
    # a duplicate is a protocol error [MQTT-3.1.3-10]
    b = broker()
    refused5(b.port, {0x82}, "wd",
             will=("w/t", b"x", 0, False,
                   [(m5.WILL_DELAY, 1), (m5.WILL_DELAY, 2)]))
    refused5(b.port, {0x81, 0x82}, "wa",
             will=("w/t", b"x", 0, False, [(m5.TOPIC_ALIAS, 1)]))
    refused5(b.port, {0x81, 0x82}, "ws",
             will=("w/t", b"x", 0, False, [(m5.SESSION_EXPIRY, 1)]))
    refused5(b.port, {0x81, 0x82}, "wr",                # [MQTT-3.3.2-14]
             will=("w/t", b"x", 0, False, [(m5.RESPONSE_TOPIC, "r/+")]))


def test_property_length_past_the_packet(broker):
    # a property length longer than what follows: malformed
    b = broker()
    body = w.s16("MQTT") + bytes([5, 0x02]) + w.u16(60) + b"\x20" + \
        w.s16("x")
    c = m5.Conn5(b.port)
    c.send(w.packet(0x10, body))
    try:
        p = c.recv5()
    except w.Closed:
        return  # closing without a CONNACK is allowed [MQTT-4.13.1-1]
    assert p.type == w.CONNACK and p.rc == 0x81, p
    c.expect_closed()


def test_invalid_client_id(broker):
    # ill-formed UTF-8 in the client id [MQTT-1.5.4-1]: refused with
    # CONNACK 0x81 malformed or 0x85 client identifier not valid, or
    # closed without a CONNACK [MQTT-4.13.1-1]; never accepted
    b = broker()
    c = m5.Conn5(b.port)
    c.send(m5.connect(b"\xc3\x28"))
    try:
        p = c.recv5()
    except w.Closed:
        return
    assert p.type == w.CONNACK and p.rc in (0x81, 0x85), p
    c.expect_closed()


def test_no_reason_string_on_connack_refusal_without_problem_info(broker):
    # Request Problem Information 0: this broker leaves the Reason String
    # off a refusing CONNACK too ([MQTT-3.1.2-29] would allow it there)
    b = auth_broker(broker)
    p = refused5(b.port, 0x86, "rp0", username="alice", password="no",
                 properties=[(m5.REQUEST_PROBLEM_INFO, 0)])
    assert m5.REASON_STRING not in p.props, p
    assert m5.USER_PROPERTY not in p.props, p


def test_no_reason_string_on_acks_without_problem_info(broker):
    # [MQTT-3.1.2-29] Request Problem Information 0: no Reason String nor
    # User Property on anything but PUBLISH, CONNACK and DISCONNECT; the
    # acks with failure codes are where one would go
    b = broker()
    c = open5(b.port, "rp0", properties=[(m5.REQUEST_PROBLEM_INFO, 0)])
    c.send(m5.publish("nobody/here", b"x", qos=1, pid=1))
    r = c.next5(w.PUBACK)
    assert r.rc == 0x10 and r.props.items == [], r
    c.send(m5.publish("nobody/here", b"x", qos=2, pid=2))
    r = c.next5(w.PUBREC)
    assert r.rc == 0x10 and r.props.items == [], r
    c.send(m5.pubrel(99))
    r = c.next5(w.PUBCOMP)
    assert r.rc == 0x92 and r.props.items == [], r
    c.send(m5.subscribe(3, [("bad/#/filter", 1)]))
    r = c.next5(w.SUBACK)
    assert r.codes == [0x8F] and r.props.items == [], r
    c.send(m5.unsubscribe(4, ["never/subscribed"]))
    r = c.next5(w.UNSUBACK)
    assert r.codes == [0x11] and r.props.items == [], r


def test_second_connect_is_protocol_error(broker):
    # [MQTT-3.1.0-2] a second CONNECT: DISCONNECT 0x82, then close
    b = broker()
    c = open5(b.port, "twice")
    c.send(m5.connect("twice"))
    m5.expect_disconnect(c, 0x82)


def test_session_present_v5(broker):
    # [MQTT-3.2.2-2] clean start 0 and a kept session: present 1;
    # [MQTT-3.2.2-3] clean start 1: present 0 and the session is new
    b = broker()
    se = [(m5.SESSION_EXPIRY, 60)]
    c = open5(b.port, "sp5", clean=False, properties=se, present=False)
    # Session Expiry Interval echoed only when the server changes it
    assert m5.SESSION_EXPIRY not in c.connack.props, c.connack
    c.send(m5.disconnect())
    c.expect_closed()
    c = open5(b.port, "sp5", clean=False, properties=se, present=True)
    c.send(m5.disconnect())
    c.expect_closed()
    c = open5(b.port, "sp5", clean=True, properties=se, present=False)
    assert c.is_open()


# ---- message properties ---------------------------------------------------

FULL_PROPS = [
    (m5.PAYLOAD_FORMAT, 1),
    (m5.CONTENT_TYPE, "text/plain; charset=utf-8"),
    (m5.RESPONSE_TOPIC, "reply/here"),
    (m5.CORRELATION_DATA, b"\x00\x01corr\xff"),
    (m5.USER_PROPERTY, ("k", "v1")),
    (m5.USER_PROPERTY, ("other", "")),
    (m5.USER_PROPERTY, ("k", "v2")),       # same key twice: both, in order
    (m5.USER_PROPERTY, ("ключ", "значение")),
]


def check_forwarded(m, sent, expiry=None):
    """m carries every property of sent (user properties in order);
    Message Expiry Interval is the remaining time: within 2 s of expiry."""
    for pid in (m5.PAYLOAD_FORMAT, m5.CONTENT_TYPE, m5.RESPONSE_TOPIC,
                m5.CORRELATION_DATA):
        want = [v for k, v in sent if k == pid]
        assert m.props.all(pid) == want, "%s: %r" % (m5.PROPS[pid][0], m)
    assert m.props.user == [v for k, v in sent if k == m5.USER_PROPERTY], m
    if expiry is None:
        assert m5.MESSAGE_EXPIRY not in m.props, m
    else:
        left = m.props.get(m5.MESSAGE_EXPIRY)
        assert left is not None and expiry - 2 <= left <= expiry, m


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_properties_forwarded(broker, qos):
    # [MQTT-3.3.2-4] Payload Format Indicator, [MQTT-3.3.2-20] Content
    # Type, [MQTT-3.3.2-15] Response Topic, [MQTT-3.3.2-16] Correlation
    # Data, [MQTT-3.3.2-17] [MQTT-3.3.2-18] User Properties unchanged and
    # in order, [MQTT-3.3.2-6] Message Expiry Interval = the time left
    b = broker()
    s = open5(b.port, "s")
    assert sub5(s, 1, [("pp/#", 2)]) == [2]
    p = open5(b.port, "p")
    sent = FULL_PROPS + [(m5.MESSAGE_EXPIRY, 100)]
    pub5(p, "pp/x", "héllo".encode(), qos=qos, properties=sent)
    m = recv_pub5(s)
    assert (m.topic, m.payload, m.qos) == ("pp/x", "héllo".encode(), qos)
    check_forwarded(m, sent, expiry=100)
    assert m5.TOPIC_ALIAS not in m.props  # we announced no aliases
    assert m5.SUBSCRIPTION_ID not in m.props


def test_publish_without_properties_arrives_without(broker):
    b = broker()
    s = open5(b.port, "s")
    sub5(s, 1, [("np", 1)])
    p = open5(b.port, "p")
    pub5(p, "np", b"plain", qos=1)
    m = recv_pub5(s)
    assert m.payload == b"plain" and m.props.items == [], m


def test_retained_message_keeps_its_properties(broker):
    # a retained message is delivered later with the properties it was
    # published with, the expiry counting down
    b = broker()
    p = open5(b.port, "p")
    sent = FULL_PROPS + [(m5.MESSAGE_EXPIRY, 300)]
    pub5(p, "rp/state", b"on", qos=1, retain=True, properties=sent)
    s = open5(b.port, "s")
    sub5(s, 1, [("rp/#", 1)])
    m = recv_pub5(s)
    assert m.retain and m.payload == b"on"
    check_forwarded(m, sent, expiry=300)


def test_v5_publisher_to_v311_subscriber(broker):
    # an MQTT 3.1.1 subscriber gets the message without properties: the
    # exact 3.1.1 PUBLISH
    b = broker()
    s = w.open_client(b.port, "old")
    w.sub(s, 1, [("mx/#", 1)])
    p = open5(b.port, "new")
    pub5(p, "mx/a", b"payload", qos=1,
         properties=FULL_PROPS + [(m5.MESSAGE_EXPIRY, 50)])
    m = w.recv_pub(s)
    assert m.raw == w.publish("mx/a", b"payload", qos=1, pid=m.pid), m
    pub5(p, "mx/r", b"kept", qos=1, retain=True, pid=2,
         properties=user(("a", "b")))
    m = w.recv_pub(s)
    assert m.raw == w.publish("mx/r", b"kept", qos=1, pid=m.pid), m
    s2 = w.open_client(b.port, "old2")
    w.sub(s2, 1, [("mx/r", 1)])
    m = w.recv_pub(s2)
    assert m.raw == w.publish("mx/r", b"kept", qos=1, retain=True,
                              pid=m.pid), m


def test_v311_publisher_to_v5_subscriber(broker):
    # a 3.1.1 message reaches a v5 subscriber with an empty property block
    b = broker()
    s = open5(b.port, "new")
    sub5(s, 1, [("mx/#", 2)])
    p = w.open_client(b.port, "old")
    w.pub(p, "mx/b", b"from 3.1.1", qos=2)
    m = recv_pub5(s)
    assert (m.topic, m.payload, m.qos) == ("mx/b", b"from 3.1.1", 2)
    assert m.props.items == [], m


def test_mixed_versions_share_a_topic(broker):
    # v5 and 3.1.1 publishers and subscribers on one topic: each subscriber
    # gets every message once, in order, in its own version's format
    b = broker()
    s5 = open5(b.port, "s5")
    sub5(s5, 1, [("mix", 1)])
    s4 = w.open_client(b.port, "s4")
    w.sub(s4, 1, [("mix", 1)])
    p5 = open5(b.port, "p5")
    p4 = w.open_client(b.port, "p4")
    for i in range(10):
        if i % 2:
            w.pub(p4, "mix", "m%d" % i, qos=1, pid=i + 1)
        else:
            pub5(p5, "mix", "m%d" % i, qos=1, pid=i + 1,
                 properties=user(("i", str(i))))
    got5 = [recv_pub5(s5) for _ in range(10)]
    got4 = [w.recv_pub(s4) for _ in range(10)]
    want = [("m%d" % i).encode() for i in range(10)]
    assert [m.payload for m in got5] == want
    assert [m.payload for m in got4] == want
    assert [m.user for m in got5] == [[("i", str(i))] if i % 2 == 0 else []
                                      for i in range(10)]


def test_session_resumed_by_other_version(broker):
    # the format follows the connection, not the session's first client:
    # a v5 session resumed by a 3.1.1 client gets 3.1.1 PUBLISHes (queued
    # and re-sent ones), and back again
    b = broker()
    c = open5(b.port, "sw", clean=False,
              properties=[(m5.SESSION_EXPIRY, 0xFFFFFFFF)])
    sub5(c, 1, [("sw", 1)], [(m5.SUBSCRIPTION_ID, 3)])
    p = open5(b.port, "p")
    pub5(p, "sw", b"inflight", qos=1, pid=1, properties=user(("k", "1")))
    assert recv_pub5(c, ack=False).payload == b"inflight"
    mark = b.mark()
    c.close()
    b.wait_log("Client sw closed its connection.", since=mark)
    pub5(p, "sw", b"queued", qos=1, pid=2, properties=user(("k", "2")))
    old = w.open_client(b.port, "sw", clean=False, present=True)
    m1, m2 = w.recv_pub(old, ack=False), w.recv_pub(old, ack=False)
    assert m1.raw == w.publish("sw", b"inflight", qos=1, dup=True,
                               pid=m1.pid), m1
    assert m2.raw == w.publish("sw", b"queued", qos=1, pid=m2.pid), m2
    w.ack_pub(old, m1)
    mark = b.mark()
    old.close()
    b.wait_log("Client sw closed its connection.", since=mark)
    pub5(p, "sw", b"again", qos=1, pid=3, properties=user(("k", "3")))
    c = open5(b.port, "sw", clean=False, present=True,
              properties=[(m5.SESSION_EXPIRY, 0xFFFFFFFF)])
    r1, r2 = recv_pub5(c), recv_pub5(c)
    assert (r1.payload, r1.dup) == (b"queued", True), r1
    assert (r2.payload, r2.user) == (b"again", [("k", "3")]), r2
    assert r2.props.all(m5.SUBSCRIPTION_ID) == [3], r2


def test_properties_accepted_on_every_client_packet(broker):
    # User Properties (and Reason Strings where allowed) on SUBSCRIBE,
    # UNSUBSCRIBE, PUBACK, PUBREC, PUBREL, PUBCOMP and DISCONNECT are read
    # and ignored, not refused
    b = broker()
    u = user(("trace", "t1"))
    every = [(m5.SESSION_EXPIRY, 0), (m5.RECEIVE_MAXIMUM, 100),
             (m5.MAXIMUM_PACKET_SIZE, 1 << 20), (m5.TOPIC_ALIAS_MAXIMUM, 0),
             (m5.REQUEST_RESPONSE_INFO, 1), (m5.REQUEST_PROBLEM_INFO, 1)]
    c = open5(b.port, "props", properties=every + u)
    assert sub5(c, 1, [("pa/#", 2)], u) == [2]
    p = open5(b.port, "p")
    pub5(p, "pa/1", b"1", qos=1)
    pub5(p, "pa/2", b"2", qos=2)
    m = recv_pub5(c, ack=False)
    c.send(m5.puback(m.pid, 0, u + [(m5.REASON_STRING, "fine")]))
    m = recv_pub5(c, ack=False)
    c.send(m5.pubrec(m.pid, 0, u))
    assert c.next5(w.PUBREL).pid == m.pid
    c.send(m5.pubcomp(m.pid, 0, u))
    c.send(m5.publish("pa/3", b"3", qos=2, pid=7))
    assert c.next5(w.PUBREC).pid == 7
    c.send(m5.pubrel(7, 0, u))
    assert c.next5(w.PUBCOMP).pid == 7
    assert recv_pub5(c).payload == b"3"
    c.send(m5.unsubscribe(2, ["pa/#"], u))
    assert c.next5(w.UNSUBACK).codes == [0]
    mark = b.mark()
    c.send(m5.disconnect(0, u + [(m5.REASON_STRING, "bye")]))
    c.expect_closed()
    b.wait_log("Client props disconnected", since=mark)


def test_large_and_many_properties_forwarded(broker):
    # property blocks longer than 127 bytes (multi-byte lengths), larger
    # than a read buffer, and hundreds of user properties, intact and in
    # order; empty strings and empty correlation data are valid too
    b = broker()
    s = open5(b.port, "s")
    sub5(s, 1, [("lp/#", 1)])
    p = open5(b.port, "p")
    big = [(m5.USER_PROPERTY, ("blob", "b" * 60000))]
    many = [(m5.USER_PROPERTY, ("n%d" % i, str(i))) for i in range(500)]
    empty = [(m5.CONTENT_TYPE, ""), (m5.CORRELATION_DATA, b""),
             (m5.USER_PROPERTY, ("", ""))]
    pub5(p, "lp/big", b"x", qos=1, pid=1, properties=big)
    pub5(p, "lp/many", b"y", qos=1, pid=2, properties=many)
    pub5(p, "lp/empty", b"", qos=1, pid=3, properties=empty)
    m = recv_pub5(s)
    assert m.user == [("blob", "b" * 60000)]
    m = recv_pub5(s)
    assert m.user == [v for _, v in many]
    m = recv_pub5(s)
    assert m.payload == b"" and m.props.items == empty, m


# ---- request / response ---------------------------------------------------

def test_request_response_raw(broker):
    # [MQTT-4.10] the responder gets Response Topic and Correlation Data
    # and answers on that topic with the same Correlation Data
    b = broker()
    req = open5(b.port, "requester")
    sub5(req, 1, [("resp/requester", 1)])
    srv = open5(b.port, "responder")
    sub5(srv, 1, [("svc/+", 1)])
    corr = os.urandom(16)
    pub5(req, "svc/time", b"what time is it", qos=1,
         properties=[(m5.RESPONSE_TOPIC, "resp/requester"),
                     (m5.CORRELATION_DATA, corr)])
    q = recv_pub5(srv)
    rt = q.props.get(m5.RESPONSE_TOPIC)
    cd = q.props.get(m5.CORRELATION_DATA)
    assert (rt, cd) == ("resp/requester", corr), q
    pub5(srv, rt, b"noon", qos=1, properties=[(m5.CORRELATION_DATA, cd)])
    r = recv_pub5(req)
    assert r.topic == "resp/requester" and r.payload == b"noon"
    assert r.props.get(m5.CORRELATION_DATA) == corr, r


class Paho5(Paho):
    """A paho 1.6 MQTT 5 client with a network thread (get and stop as
    test_clients.Paho)."""

    def __init__(self, port, cid, clean_start=True, properties=None):
        self.msgs = queue.Queue()
        self.acks = queue.Queue()
        self.connected = queue.Queue()
        self.c = mqtt.Client(client_id=cid, protocol=mqtt.MQTTv5)
        self.c.on_connect = lambda c, u, f, rc, pr=None: \
            self.connected.put((rc, pr))
        self.c.on_message = lambda c, u, m: self.msgs.put(m)
        self.c.on_subscribe = lambda c, u, mid, rcs, pr=None: \
            self.acks.put((mid, rcs))
        self.c.connect("127.0.0.1", port, 30, clean_start=clean_start,
                       properties=properties)
        self.c.loop_start()
        rc, self.connack_props = self.connected.get(timeout=5)
        assert rc == 0, "CONNACK %s" % rc

    def sub(self, topic, qos=1, **opts):
        rc, mid = self.c.subscribe(topic, options=SubscribeOptions(
            qos=qos, **opts))
        assert rc == 0
        got_mid, rcs = self.acks.get(timeout=5)
        assert got_mid == mid
        return [r.value for r in rcs]

    def pub(self, topic, payload, qos=1, retain=False, **props):
        pr = Properties(PacketTypes.PUBLISH)
        for k, v in props.items():
            if k == "UserProperty":
                for pair in v:
                    pr.UserProperty = pair
            else:
                setattr(pr, k, v)
        info = self.c.publish(topic, payload, qos, retain, properties=pr)
        info.wait_for_publish(timeout=5)
        assert info.is_published(), "no PUBACK/PUBCOMP within 5 s"


@pytest.fixture
def paho5():
    yield from paho_made(Paho5)


def test_paho_v5_request_response(broker, paho5):
    # a full round trip between two paho MQTT 5 clients, the responder
    # using only what the request carried
    b = broker()
    responder = paho5(b.port, "svc")
    assert responder.sub("rpc/add", 1) == [1]
    requester = paho5(b.port, "cli")
    assert requester.sub("rpc/reply/cli", 1) == [1]
    requester.pub("rpc/add", b"2+3", 1, ResponseTopic="rpc/reply/cli",
                  CorrelationData=b"req-42",
                  UserProperty=[("trace", "abc")])
    req = responder.get()
    assert req.properties.ResponseTopic == "rpc/reply/cli"
    assert req.properties.CorrelationData == b"req-42"
    assert req.properties.UserProperty == [("trace", "abc")]
    a, bb = req.payload.split(b"+")
    responder.pub(req.properties.ResponseTopic, str(int(a) + int(bb)), 1,
                  CorrelationData=req.properties.CorrelationData)
    rep = requester.get()
    assert rep.topic == "rpc/reply/cli" and rep.payload == b"5"
    assert rep.properties.CorrelationData == b"req-42"
    responder.stop()
    requester.stop()


def test_paho_v5_connack_and_qos(broker, paho5):
    b = broker()
    s = paho5(b.port, "ps")
    assert s.connack_props.ReceiveMaximum == 20
    assert s.sub("pq/#", 2) == [2]
    p = paho5(b.port, "pp")
    for q in (0, 1, 2):
        p.pub("pq/%d" % q, "qos %d" % q, q, ContentType="text/plain")
        m = s.get()
        assert (m.topic, m.payload, m.qos) == ("pq/%d" % q,
                                               ("qos %d" % q).encode(), q)
        assert m.properties.ContentType == "text/plain"


def test_paho_v5_to_v311(broker, paho5):
    # paho v5 publisher with user properties, paho 3.1.1 subscriber
    import test_clients
    b = broker()
    old = test_clients.Paho(b.port, "p311")
    try:
        old.sub("pv/#", 1)
        new = paho5(b.port, "p5")
        new.pub("pv/a", b"hello", 1, UserProperty=[("a", "1"), ("b", "2")])
        m = old.get()
        assert (m.topic, m.payload) == ("pv/a", b"hello")
    finally:
        old.stop()


# ---- mosquitto_pub / mosquitto_sub -V 5 -----------------------------------

def run(cmd, timeout=10):
    return subprocess.run(cmd, capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def mosq_sub(b, cid, topics, fmt, count=1, extra=()):
    """mosquitto_sub -V 5 waiting for count messages; returns the Popen
    once the broker has logged the subscription."""
    mark = b.mark()
    cmd = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(b.port), "-V", "5",
           "-i", cid, "-q", "1", "-C", str(count), "-W", "10", "-F", fmt]
    for t in topics:
        cmd += ["-t", t]
    p = subprocess.Popen(cmd + list(extra), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        b.wait_count("%s 1 " % cid, len(topics), since=mark)
    except AssertionError:
        p.kill()
        p.wait()
        raise
    return p


def finish(p):
    try:
        out, err = p.communicate(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, (p.returncode, out, err)
    return out.decode()


def mosq_pub(b, topic, msg, *args):
    r = run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(b.port), "-V",
             "5", "-t", topic, "-m", msg, "-q", "1"] + list(args))
    assert r.returncode == 0, r.stderr


def test_mosquitto_user_properties(broker):
    b = broker()
    s = mosq_sub(b, "msu", ["mq/u"], "%t|%P|%p")
    mosq_pub(b, "mq/u", "with props", "-D", "publish", "user-property",
             "color", "blue", "-D", "publish", "user-property", "size", "L")
    assert finish(s) == "mq/u|color:blue size:L|with props\n"


def test_mosquitto_user_properties_to_raw_v5(broker):
    # what mosquitto_pub sends arrives on the wire as User Properties
    b = broker()
    s = open5(b.port, "raw")
    sub5(s, 1, [("mq/raw", 1)])
    mosq_pub(b, "mq/raw", "x", "-D", "publish", "user-property", "k", "v",
             "-D", "publish", "content-type", "text/x")
    m = recv_pub5(s)
    assert m.user == [("k", "v")] and \
        m.props.get(m5.CONTENT_TYPE) == "text/x", m


def test_mosquitto_message_expiry_live_and_retained(broker):
    # %E prints the Message Expiry Interval the subscriber received
    b = broker()
    s = mosq_sub(b, "mse", ["mq/e"], "%p %E")
    mosq_pub(b, "mq/e", "live", "-D", "publish", "message-expiry-interval",
             "60")
    out = finish(s).split()
    assert out[0] == "live" and 58 <= int(out[1]) <= 60, out
    mosq_pub(b, "mq/er", "kept", "-r", "-D", "publish",
             "message-expiry-interval", "60")
    r = run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(b.port), "-V",
             "5", "-t", "mq/er", "-C", "1", "-W", "5", "-F", "%p %r %E"])
    out = r.stdout.decode().split()
    assert r.returncode == 0 and out[:2] == ["kept", "1"] and \
        58 <= int(out[2]) <= 60, r


@pytest.mark.slow
def test_mosquitto_message_expiry_retained_expires(broker):
    import time
    b = broker()
    mosq_pub(b, "mq/x/gone", "short", "-r", "-D", "publish",
             "message-expiry-interval", "1")
    mosq_pub(b, "mq/x/kept", "long", "-r", "-D", "publish",
             "message-expiry-interval", "60")
    time.sleep(2.2)  # the expiry is the point
    r = run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(b.port), "-V",
             "5", "-t", "mq/x/#", "-C", "1", "-W", "5", "-F", "%t %p"])
    assert r.returncode == 0 and r.stdout == b"mq/x/kept long\n", r


@pytest.mark.slow
def test_mosquitto_message_expiry_offline_queue(broker):
    # a persistent v5 session (-c -x 60): queued messages that expired
    # while it was away are not delivered
    import time
    b = broker()
    r = run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(b.port), "-V",
             "5", "-i", "mqoff", "-c", "-x", "60", "-q", "1", "-t", "mq/q",
             "-E"])
    assert r.returncode == 0, r.stderr
    b.wait_log("Client mqoff disconnected")
    mosq_pub(b, "mq/q", "expires", "-D", "publish",
             "message-expiry-interval", "1")
    mosq_pub(b, "mq/q", "stays", "-D", "publish",
             "message-expiry-interval", "60")
    time.sleep(2.2)  # the expiry is the point
    r = run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(b.port), "-V",
             "5", "-i", "mqoff", "-c", "-x", "60", "-q", "1", "-t", "mq/q",
             "-C", "1", "-W", "5", "-F", "%p %E"])
    out = r.stdout.decode().split()
    assert r.returncode == 0 and out[0] == "stays" and \
        55 <= int(out[1]) <= 59, r
