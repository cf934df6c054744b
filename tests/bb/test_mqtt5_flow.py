"""MQTT 5.0 on the wire: reason codes on PUBACK, PUBREC, PUBREL and
PUBCOMP; DISCONNECT from the server with its reason code; topic aliases
in both directions; Receive Maximum in both directions; Maximum Packet
Size in both directions.

'Nothing else arrived' is checked with a fence message, as in
test_qos.py; the server's topic aliases are resolved (and checked against
the Topic Alias Maximum we announced) by mqtt5wire.Conn5."""

import signal
import time

import pytest

import mqttwire as w
import mqtt5wire as m5
from mqtt5wire import (open5, sub5, pub5, recv_pub5, collect_until5,
                       expect_disconnect, user)
from test_mqtt5 import auth_broker


# ---- PUBACK / PUBREC / PUBREL / PUBCOMP reason codes ---------------------

@pytest.mark.parametrize("qos", [1, 2], ids=["puback", "pubrec"])
def test_ack_success_and_no_matching_subscribers(broker, qos):
    # PUBACK/PUBREC 0x00 when someone gets it, 0x10 no matching
    # subscribers otherwise [MQTT-3.4.2.1]; either way the message is
    # accepted, and 0x10 is below 0x80: a QoS 2 flow goes on with
    # PUBREL/PUBCOMP
    b = broker()
    s = open5(b.port, "s")
    sub5(s, 1, [("ack%d/yes" % qos, qos)])
    p = open5(b.port, "p")
    assert pub5(p, "ack%d/yes" % qos, b"1", qos=qos, pid=1) == 0x00
    assert pub5(p, "ack%d/no" % qos, b"2", qos=qos, pid=2) == 0x10
    assert recv_pub5(s).payload == b"1"


def test_short_ack_forms_accepted(broker):
    # [MQTT-3.4.2.1] success without properties may be the 2-byte form;
    # the server reads all three forms from the client
    b = broker()
    s = open5(b.port, "s", properties=[(m5.RECEIVE_MAXIMUM, 1)])
    sub5(s, 1, [("sf", 2)])
    p = open5(b.port, "p")
    for i in range(3):
        pub5(p, "sf", str(i), qos=1, pid=i + 1)
    forms = [lambda pid: m5.puback(pid), lambda pid: m5.puback(pid, 0),
             lambda pid: m5.puback(pid, 0, [])]
    for i in range(3):
        m = recv_pub5(s, ack=False)
        assert m.payload == str(i).encode()
        s.send(forms[i](m.pid))
    pub5(p, "sf", b"q2", qos=2, pid=9)
    m = recv_pub5(s, ack=False)
    s.send(m5.pubrec(m.pid, 0, user(("k", "v"))))
    r = s.next5(w.PUBREL)
    assert r.pid == m.pid and r.rc == 0, r
    s.send(m5.pubcomp(m.pid, 0, []))
    pub5(p, "sf", b"fence", qos=1, pid=10)
    assert collect_until5(s, "sf", b"fence") == []


def test_publish_denied_by_acl(broker):
    # ACL denies the publish: PUBACK / PUBREC 0x87 not authorized and the
    # message is dropped; PUBREC >= 0x80 ends the QoS 2 flow [MQTT-4.3.3]
    b = auth_broker(broker, acl="user alice\ntopic write ok/#\n"
                                "topic read #\n")
    s = open5(b.port, "s", username="alice", password="secret")
    sub5(s, 1, [("#", 2)])
    p = open5(b.port, "p", username="alice", password="secret")
    assert pub5(p, "no/1", b"denied", qos=1, pid=1) == 0x87
    assert pub5(p, "no/2", b"denied", qos=2, pid=2) == 0x87
    # no PUBREL owed: the same id starts a new flow at once
    assert pub5(p, "ok/2", b"allowed", qos=2, pid=2) == 0x00
    pub5(p, "ok/fence", b"fence", qos=1, pid=3)
    got = collect_until5(s, "ok/fence")
    assert [(m.topic, m.payload) for m in got] == [("ok/2", b"allowed")]


def test_publish_above_message_size_limit(broker):
    # message_size_limit: PUBACK / PUBREC 0x97 quota exceeded, the message
    # is dropped, the client stays
    b = broker("message_size_limit 100\n")
    s = open5(b.port, "s")
    sub5(s, 1, [("ms", 2)])
    p = open5(b.port, "p")
    assert pub5(p, "ms", b"x" * 101, qos=1, pid=1) == 0x97
    assert pub5(p, "ms", b"x" * 101, qos=2, pid=2) == 0x97  # flow ends
    assert pub5(p, "ms", b"y" * 100, qos=2, pid=2) == 0x00
    assert recv_pub5(s).payload == b"y" * 100


def test_payload_format_invalid(broker):
    # Payload Format Indicator 1 with a payload that is not UTF-8:
    # PUBACK / PUBREC 0x99 payload format invalid, the message is dropped
    b = broker()
    s = open5(b.port, "s")
    sub5(s, 1, [("pf", 2)])
    p = open5(b.port, "p")
    utf8 = [(m5.PAYLOAD_FORMAT, 1)]
    assert pub5(p, "pf", b"\xc3\x28", qos=1, pid=1, properties=utf8) == 0x99
    assert pub5(p, "pf", b"\xff", qos=2, pid=2, properties=utf8) == 0x99
    assert pub5(p, "pf", b"\xff", qos=1, pid=3,
                properties=[(m5.PAYLOAD_FORMAT, 0)]) == 0x00
    assert pub5(p, "pf", "ünïcode".encode(), qos=1, pid=4,
                properties=utf8) == 0x00
    got = [recv_pub5(s).payload for _ in range(2)]
    assert got == [b"\xff", "ünïcode".encode()]


def test_pubrel_unknown_packet_id(broker):
    # PUBREL for an id the server does not know: PUBCOMP 0x92 packet
    # identifier not found (the flow can still finish)
    b = broker()
    c = open5(b.port, "u")
    c.send(m5.pubrel(0x4242))
    r = c.next5(w.PUBCOMP)
    assert (r.pid, r.rc) == (0x4242, 0x92), r
    assert c.is_open()


def test_pubrec_unknown_packet_id(broker):
    # PUBREC for an id the server never sent: PUBREL 0x92
    b = broker()
    c = open5(b.port, "u")
    c.send(m5.pubrec(0x0707))
    r = c.next5(w.PUBREL)
    assert (r.pid, r.rc) == (0x0707, 0x92), r
    assert c.is_open()


def test_puback_unknown_packet_id_ignored(broker):
    b = broker()
    c = open5(b.port, "u")
    c.send(m5.puback(9) + m5.pubcomp(11))
    assert c.is_open()


def test_client_puback_error_code_ends_the_flow(broker):
    # a PUBACK with an error reason code (and a Reason String) still
    # acknowledges the message: not re-sent, its slot is free
    b = broker()
    s = open5(b.port, "s", properties=[(m5.RECEIVE_MAXIMUM, 1)])
    sub5(s, 1, [("pe", 1)])
    p = open5(b.port, "p")
    pub5(p, "pe", b"1", qos=1, pid=1)
    pub5(p, "pe", b"2", qos=1, pid=2)
    m = recv_pub5(s, ack=False)
    assert m.payload == b"1"
    s.send(m5.puback(m.pid, 0x80, [(m5.REASON_STRING, "cannot handle")]))
    m = recv_pub5(s)
    assert m.payload == b"2" and not m.dup


def test_client_pubrec_error_code_ends_the_flow(broker):
    # [MQTT-4.3.3] PUBREC with a reason code >= 0x80: no PUBREL, the
    # message is done and the Receive Maximum slot is free
    b = broker()
    s = open5(b.port, "s", properties=[(m5.RECEIVE_MAXIMUM, 1)])
    sub5(s, 1, [("pr", 2)])
    p = open5(b.port, "p")
    pub5(p, "pr", b"1", qos=2, pid=1)
    pub5(p, "pr", b"2", qos=2, pid=2)
    m = recv_pub5(s, ack=False)
    assert m.payload == b"1"
    s.send(m5.pubrec(m.pid, 0x83))
    m2 = recv_pub5(s, ack=False)  # a PUBREL here would fail this
    assert m2.payload == b"2" and not m2.dup
    m5.ack5(s, m2)
    assert s.is_open()


# ---- DISCONNECT from the server ------------------------------------------

@pytest.mark.parametrize("new_level", [5, 4])
def test_session_taken_over(broker, new_level):
    # [MQTT-3.1.4-3] the old v5 connection gets DISCONNECT 0x8E session
    # taken over, then the close; the new one is connected
    b = broker()
    old = open5(b.port, "tk")
    if new_level == 5:
        new = open5(b.port, "tk")
    else:
        new = w.open_client(b.port, "tk")
    expect_disconnect(old, 0x8E)
    assert new.is_open()


def test_takeover_of_v311_connection_sends_no_disconnect(broker):
    # a 3.1.1 connection has no DISCONNECT from the server: plain close
    b = broker()
    old = w.open_client(b.port, "tk4")
    open5(b.port, "tk4")
    old.expect_closed()


@pytest.mark.slow
def test_keep_alive_timeout(broker):
    # [MQTT-3.1.2-22] no packet within 1.5 x keepalive: DISCONNECT 0x8D
    b = broker()
    t0 = time.monotonic()
    c = open5(b.port, "ka", keepalive=1)
    expect_disconnect(c, 0x8D, timeout=5)
    dt = time.monotonic() - t0
    assert 1.0 <= dt <= 3.5, "closed after %.2fs" % dt


def test_packet_too_large(broker):
    # [MQTT-3.2.2.3.6] the Maximum Packet Size is the whole packet: one of
    # exactly max_packet_size bytes is taken, one byte more gets
    # DISCONNECT 0x95 packet too large
    b = broker("max_packet_size 1000\n")
    c = open5(b.port, "big")
    assert c.connack.props.get(m5.MAXIMUM_PACKET_SIZE) == 1000
    ok = m5.publish("pt", m5.payload_for(1000, "pt", 1), qos=1, pid=1)
    assert len(ok) == 1000
    c.send(ok)
    assert c.next5(w.PUBACK).pid == 1
    big = m5.publish("pt", m5.payload_for(1001, "pt", 1), qos=1, pid=2)
    c.send(big)
    expect_disconnect(c, 0x95)


def test_packet_too_large_far_above(broker):
    # the Remaining Length alone tells: DISCONNECT 0x95 before the body
    b = broker("max_packet_size 1000\n")
    c = open5(b.port, "huge")
    pk = m5.publish("pt", b"y" * 100000, qos=0)
    c.send(pk[:2000])  # the header and a little: the rest never comes
    expect_disconnect(c, 0x95)


def test_receive_maximum_exceeded(broker):
    # our Receive Maximum (max_inflight_messages) counts QoS 2 PUBLISHes
    # not yet released: one more gets DISCONNECT 0x93 [MQTT-3.3.4-7]
    b = broker("max_inflight_messages 2\n")
    c = open5(b.port, "rm")
    assert c.connack.props.get(m5.RECEIVE_MAXIMUM) == 2
    for pid in (1, 2):
        c.send(m5.publish("rm", b"x", qos=2, pid=pid))
        r = c.next5(w.PUBREC)
        assert r.pid == pid and r.rc < 0x80, r
    c.send(m5.publish("rm", b"x", qos=2, pid=3))
    expect_disconnect(c, 0x93)


def test_receive_maximum_freed_by_pubrel(broker):
    # released QoS 2 flows do not count; QoS 1 is acknowledged at once
    b = broker("max_inflight_messages 2\n")
    c = open5(b.port, "rmf")
    for round_ in range(3):
        for k in (1, 2):
            pid = round_ * 2 + k
            c.send(m5.publish("rm", b"x", qos=2, pid=pid))
            assert c.next5(w.PUBREC).pid == pid
        for k in (1, 2):
            pid = round_ * 2 + k
            c.send(m5.pubrel(pid))
            assert c.next5(w.PUBCOMP).pid == pid
    for pid in range(10, 20):
        pub5(c, "rm", b"q1", qos=1, pid=pid)
    assert c.is_open()


def test_receive_maximum_resent_publish_not_counted_twice(broker):
    # a QoS 2 PUBLISH sent again (DUP, same id) before PUBREL is the same
    # message: it does not use up a second slot
    b = broker("max_inflight_messages 2\n")
    c = open5(b.port, "dup")
    for pid in (1, 2):
        c.send(m5.publish("rd", b"x", qos=2, pid=pid))
        assert c.next5(w.PUBREC).pid == pid
    for _ in range(3):
        c.send(m5.publish("rd", b"x", qos=2, pid=2, dup=True))
        r = c.next5(w.PUBREC)
        assert (r.pid, r.rc) == (2, 0), r
    for pid in (1, 2):
        c.send(m5.pubrel(pid))
        assert c.next5(w.PUBCOMP).pid == pid


def test_receive_maximum_quota_starts_again_on_reconnect(broker):
    # the send quota is not part of the session [MQTT-4.9]: after a
    # reconnect the client may send Receive Maximum new QoS 2 messages
    # even while older ones still wait for their PUBREL
    b = broker("max_inflight_messages 2\n")
    se = [(m5.SESSION_EXPIRY, 60)]
    c = open5(b.port, "rq", clean=False, properties=se)
    for pid in (1, 2):
        c.send(m5.publish("rq", b"old", qos=2, pid=pid))
        assert c.next5(w.PUBREC).pid == pid
    mark = b.mark()
    c.close()
    b.wait_log("Client rq closed its connection.", since=mark)
    c = open5(b.port, "rq", clean=False, properties=se, present=True)
    for pid in (3, 4):
        c.send(m5.publish("rq", b"new", qos=2, pid=pid))
        r = c.next5(w.PUBREC)
        assert r.pid == pid and r.rc < 0x80, r
    for pid in (1, 2, 3, 4):
        c.send(m5.pubrel(pid))
        r = c.next5(w.PUBCOMP)
        assert (r.pid, r.rc) == (pid, 0), r


def test_retain_not_supported(broker):
    # retain_available false: a retained PUBLISH gets DISCONNECT 0x9A
    # [MQTT-3.3.1-14]
    b = broker("retain_available false\n")
    c = open5(b.port, "rn")
    assert c.connack.props.get(m5.RETAIN_AVAILABLE) == 0
    pub5(c, "rn", b"fine", qos=1)
    c.send(m5.publish("rn", b"kept?", qos=1, retain=True, pid=2))
    expect_disconnect(c, 0x9A)


def test_quota_exceeded_queue_full(broker):
    # an online subscriber whose queue passes max_queued_messages is
    # disconnected with 0x97 quota exceeded; others carry on
    b = broker("max_queued_messages 3\n")
    slow = open5(b.port, "slow", properties=[(m5.RECEIVE_MAXIMUM, 1)])
    sub5(slow, 1, [("qf", 1)])
    good = open5(b.port, "good")
    sub5(good, 1, [("qf", 1)])
    p = open5(b.port, "p")
    for i in range(10):
        pub5(p, "qf", str(i), qos=1, pid=i + 1)
        assert recv_pub5(good).payload == str(i).encode()
    expect_disconnect(slow, 0x97)


def test_server_shutting_down(broker):
    # SIGTERM: every v5 client gets DISCONNECT 0x8B server shutting down;
    # 3.1.1 clients are just closed
    b = broker()
    c1 = open5(b.port, "a")
    c2 = open5(b.port, "b")
    old = w.open_client(b.port, "c")
    b.stopped_by_us = True  # the exit status is checked below
    b.send_signal(signal.SIGTERM)
    expect_disconnect(c1, 0x8B)
    expect_disconnect(c2, 0x8B)
    old.expect_closed()
    assert b.proc.wait(5) == 0


PROTOCOL_ERRORS = [
    # (id, bytes after CONNECT, acceptable DISCONNECT codes)
    ("subscription-id-in-publish",
     m5.publish("pe", b"x", properties=[(m5.SUBSCRIPTION_ID, 1)]),
     {0x82}),                                       # [MQTT-3.3.4-6]
    ("duplicate-content-type",
     m5.publish("pe", b"x", properties=[(m5.CONTENT_TYPE, "a"),
                                        (m5.CONTENT_TYPE, "b")]), {0x82}),
    ("duplicate-topic-alias",
     m5.publish("pe", b"x", properties=[(m5.TOPIC_ALIAS, 1),
                                        (m5.TOPIC_ALIAS, 1)]), {0x82}),
    ("payload-format-2",
     m5.publish("pe", b"x", properties=[(m5.PAYLOAD_FORMAT, 2)]),
     {0x81, 0x82}),
    ("empty-topic-no-alias", m5.publish("", b"x"), {0x82}),
    ("response-topic-wildcard",
     m5.publish("pe", b"x", properties=[(m5.RESPONSE_TOPIC, "re/#")]),
     {0x81, 0x82}),                                 # [MQTT-3.3.2-14]
    ("session-expiry-in-publish",
     m5.publish("pe", b"x", properties=[(m5.SESSION_EXPIRY, 1)]),
     {0x81, 0x82}),
    ("retain-handling-3", m5.subscribe(1, [("pe", 0x30)]), {0x82}),
    ("no-local-on-shared", m5.subscribe(1, [("$share/g/pe", 0x04)]),
     {0x82}),                                       # [MQTT-3.8.3-4]
    ("subscription-id-0",
     m5.subscribe(1, [("pe", 0)], [(m5.SUBSCRIPTION_ID, 0)]), {0x82}),
    ("two-subscription-ids",
     m5.subscribe(1, [("pe", 0)], [(m5.SUBSCRIPTION_ID, 1),
                                   (m5.SUBSCRIPTION_ID, 2)]), {0x82}),
    ("subscribe-no-filters", m5.subscribe(1, []), {0x81, 0x82}),
    ("unsubscribe-no-filters", m5.unsubscribe(1, []), {0x81, 0x82}),
    ("auth-without-method", m5.auth(0x18), {0x81, 0x82}),
    ("second-connect", m5.connect("again"), {0x82}),  # [MQTT-3.1.0-2]
]

MALFORMED = [
    ("publish-qos-3", b"\x36\x06\x00\x02pe\x00\x01", {0x81}),
    ("property-length-past-end", b"\x30\x06\x00\x02pe\x09\x01", {0x81}),
    ("truncated-property", b"\x30\x07\x00\x02pe\x02\x02\x00", {0x81}),
    ("unknown-property", m5.publish("pe", b"x", properties=b"\x7f\x00"),
     {0x81, 0x82}),
    ("subscribe-reserved-option-bits", m5.subscribe(1, [("pe", 0xC0)]),
     {0x81}),                                       # [MQTT-3.8.3-5]
    ("bad-utf8-user-property",
     m5.publish("pe", b"x", properties=b"\x26\x00\x01k\x00\x02\xc3\x28"),
     {0x81}),
    ("subscribe-bad-flags", m5.subscribe(1, [("pe", 0)], first=0x80),
     {0x81}),
    ("five-byte-subscription-id",
     m5.subscribe(1, [("pe", 0)], b"\x0b\x80\x80\x80\x80\x01"), {0x81}),
    ("nul-in-user-property",                        # [MQTT-1.5.4-2]
     m5.publish("pe", b"x", properties=b"\x26\x00\x01k\x00\x01\x00"),
     {0x81}),
    ("nul-in-content-type",
     m5.publish("pe", b"x", properties=[(m5.CONTENT_TYPE, "a\x00b")]),
     {0x81}),
    ("surrogate-in-response-topic",                 # [MQTT-1.5.4-1]
     m5.publish("pe", b"x",
                properties=b"\x08\x00\x03\xed\xa0\x80"), {0x81}),
]


@pytest.mark.parametrize("name,data,codes", PROTOCOL_ERRORS + MALFORMED,
                         ids=[x[0] for x in PROTOCOL_ERRORS + MALFORMED])
def test_disconnect_for_bad_packets(broker, name, data, codes):
    # [MQTT-4.13.1-1] protocol error 0x82 / malformed packet 0x81: a
    # DISCONNECT with that code, then the close; other clients unaffected
    b = broker()
    other = open5(b.port, "other")
    c = open5(b.port, "bad")
    c.send(data)
    expect_disconnect(c, codes)
    assert other.is_open()


def test_disconnect_session_expiry_from_zero_is_protocol_error(broker):
    # [MQTT-3.14.2-2] Session Expiry 0 at CONNECT, non-zero in DISCONNECT:
    # protocol error; the server answers with DISCONNECT 0x82
    b = broker()
    c = open5(b.port, "se0")
    c.send(m5.disconnect(0, [(m5.SESSION_EXPIRY, 60)]))
    expect_disconnect(c, 0x82)
    c = open5(b.port, "se0", clean=False, present=False)


def test_reason_string_with_errors(broker):
    # Request Problem Information absent (1): an error DISCONNECT comes
    # with a Reason String (human-readable, UTF-8)
    b = broker()
    c = open5(b.port, "rs")
    c.send(m5.publish("", b"x", properties=[(m5.TOPIC_ALIAS, 9)]))
    d = expect_disconnect(c, 0x94)
    assert d.props.get(m5.REASON_STRING), d


def test_reason_string_dropped_above_client_maximum_packet_size(broker):
    # [MQTT-3.1.2-24] an ack or a DISCONNECT stays within
    # the client's Maximum Packet Size: the Reason String goes, the packet
    # stays (Conn5 checks every packet's size)
    b = broker()
    c = open5(b.port, "tiny", properties=[(m5.MAXIMUM_PACKET_SIZE, 20)])
    c.send(m5.subscribe(1, [("a/#/b", 0)]))
    r = c.next5(w.SUBACK)
    assert r.codes == [0x8F], r
    c.send(m5.publish("", b"x", properties=[(m5.TOPIC_ALIAS, 9)]))
    d = expect_disconnect(c, 0x94)
    assert len(d.raw) <= 20, d


# ---- topic aliases, client to server -------------------------------------

def test_topic_alias_from_client(broker):
    # [MQTT-3.3.2-12] alias set with a topic, used with an empty topic;
    # a new topic on the same alias replaces the mapping
    b = broker()
    s = open5(b.port, "s")
    sub5(s, 1, [("ta/#", 2)])
    p = open5(b.port, "p")
    alias = [(m5.TOPIC_ALIAS, 1)]
    pub5(p, "ta/x", b"1", qos=1, pid=1, properties=alias)
    pub5(p, "", b"2", qos=2, pid=2, properties=alias)
    pub5(p, "", b"3", qos=0, properties=alias)
    pub5(p, "ta/y", b"4", qos=1, pid=3, properties=alias)
    pub5(p, "", b"5", qos=1, pid=4, properties=alias)
    pub5(p, "ta/z", b"6", qos=1, pid=5)  # no alias: mapping unchanged
    pub5(p, "", b"7", qos=1, pid=6, properties=alias)
    got = [recv_pub5(s) for _ in range(7)]
    assert [(m.topic, m.payload) for m in got] == [
        ("ta/x", b"1"), ("ta/x", b"2"), ("ta/x", b"3"), ("ta/y", b"4"),
        ("ta/y", b"5"), ("ta/z", b"6"), ("ta/y", b"7")]
    assert all(m5.TOPIC_ALIAS not in m.props for m in got)


def test_topic_alias_at_the_maximum(broker):
    b = broker("max_topic_alias 3\n")
    s = open5(b.port, "s")
    sub5(s, 1, [("tm/#", 1)])
    p = open5(b.port, "p")
    assert p.connack.props.get(m5.TOPIC_ALIAS_MAXIMUM) == 3
    for a in (1, 2, 3):
        pub5(p, "tm/%d" % a, b"set", qos=1, pid=a,
             properties=[(m5.TOPIC_ALIAS, a)])
    for a in (3, 2, 1):
        pub5(p, "", b"use", qos=1, pid=10 + a,
             properties=[(m5.TOPIC_ALIAS, a)])
    got = [(m.topic, m.payload) for m in (recv_pub5(s) for _ in range(6))]
    assert got == [("tm/1", b"set"), ("tm/2", b"set"), ("tm/3", b"set"),
                   ("tm/3", b"use"), ("tm/2", b"use"), ("tm/1", b"use")]


def test_topic_alias_retained_stored_under_topic(broker):
    # a retained message sent through an alias is stored under its topic
    b = broker()
    p = open5(b.port, "p")
    pub5(p, "tr/state", b"a", qos=1, pid=1, properties=[(m5.TOPIC_ALIAS, 2)])
    pub5(p, "", b"b", qos=1, pid=2, retain=True,
         properties=[(m5.TOPIC_ALIAS, 2)])
    s = open5(b.port, "s")
    sub5(s, 1, [("tr/#", 1)])
    m = recv_pub5(s)
    assert (m.topic, m.payload, m.retain) == ("tr/state", b"b", True)


ALIAS_ERRORS = [
    # (id, config, packets, why)
    ("alias-0", "", [m5.publish("te", b"x", properties=[(m5.TOPIC_ALIAS,
                                                         0)])]),
    ("above-default-10", "", [m5.publish("te", b"x",
                                         properties=[(m5.TOPIC_ALIAS, 11)])]),
    ("above-configured-3", "max_topic_alias 3\n",
     [m5.publish("te", b"x", properties=[(m5.TOPIC_ALIAS, 4)])]),
    ("aliases-disabled", "max_topic_alias 0\n",
     [m5.publish("te", b"x", properties=[(m5.TOPIC_ALIAS, 1)])]),
    ("never-set", "", [m5.publish("", b"x",
                                  properties=[(m5.TOPIC_ALIAS, 5)])]),
    ("never-set-qos1", "", [m5.publish("", b"x", qos=1, pid=1,
                                       properties=[(m5.TOPIC_ALIAS, 1)])]),
]


@pytest.mark.parametrize("name,conf,packets", ALIAS_ERRORS,
                         ids=[x[0] for x in ALIAS_ERRORS])
def test_topic_alias_invalid(broker, name, conf, packets):
    # [MQTT-3.3.2-8] [MQTT-3.3.2-9] alias 0, above our Topic Alias
    # Maximum, or never set: DISCONNECT 0x94 topic alias invalid
    b = broker(conf)
    c = open5(b.port, "ta")
    for pk in packets:
        c.send(pk)
    expect_disconnect(c, 0x94)


def test_topic_aliases_are_per_connection(broker):
    # [MQTT-3.3.2-7] aliases live as long as the network connection: a
    # new connection (even of the same session) starts with none
    b = broker()
    se = [(m5.SESSION_EXPIRY, 60)]
    p = open5(b.port, "tp", clean=False, properties=se)
    pub5(p, "tp/x", b"1", qos=1, pid=1, properties=[(m5.TOPIC_ALIAS, 1)])
    other = open5(b.port, "other")
    other.send(m5.publish("", b"x", properties=[(m5.TOPIC_ALIAS, 1)]))
    expect_disconnect(other, 0x94)
    p.send(m5.disconnect())
    p.expect_closed()
    p = open5(b.port, "tp", clean=False, properties=se, present=True)
    p.send(m5.publish("", b"x", qos=1, pid=2,
                      properties=[(m5.TOPIC_ALIAS, 1)]))
    expect_disconnect(p, 0x94)


# ---- topic aliases, server to client -------------------------------------

def test_server_assigns_topic_aliases(broker):
    # client Topic Alias Maximum 2: a topic's first delivery carries the
    # topic and an alias, later ones the alias and an empty topic; never
    # above 2 [MQTT-3.1.2-26] (Conn5 resolves and checks every alias)
    b = broker()
    s = open5(b.port, "s", properties=[(m5.TOPIC_ALIAS_MAXIMUM, 2)])
    sub5(s, 1, [("sa/#", 1)])
    p = open5(b.port, "p")
    order = ["sa/a", "sa/a", "sa/b", "sa/b", "sa/a", "sa/c", "sa/c", "sa/b",
             "sa/a"]
    for i, t in enumerate(order):
        pub5(p, t, str(i), qos=1, pid=i + 1)
    got = [recv_pub5(s) for _ in order]
    assert [(m.topic, m.payload) for m in got] == \
        [(t, str(i).encode()) for i, t in enumerate(order)]
    a1, a2, b1, b2 = got[0], got[1], got[2], got[3]
    assert a1.wire_topic == "sa/a" and a1.alias in (1, 2), a1
    assert a2.wire_topic == "" and a2.alias == a1.alias, a2
    assert b1.wire_topic == "sa/b" and b1.alias in (1, 2) and \
        b1.alias != a1.alias, b1
    assert b2.wire_topic == "" and b2.alias == b1.alias, b2


def test_server_aliases_capped_by_max_topic_alias(broker):
    # the broker gives at most max_topic_alias aliases, however many the
    # client allows
    b = broker("max_topic_alias 2\n")
    s = open5(b.port, "s", properties=[(m5.TOPIC_ALIAS_MAXIMUM, 100)])
    sub5(s, 1, [("cap/+", 0)])
    p = open5(b.port, "p")
    topics = ["cap/%d" % (i % 5) for i in range(15)]
    for t in topics:
        pub5(p, t, t)
    got = [recv_pub5(s) for _ in topics]
    assert [m.topic for m in got] == topics
    used = {m.alias for m in got if m.alias is not None}
    assert used and used <= {1, 2}, used


def test_server_aliases_long_topic_saves_bytes(broker):
    # the point of aliases: repeated deliveries of a long topic are short
    b = broker()
    s = open5(b.port, "s", properties=[(m5.TOPIC_ALIAS_MAXIMUM, 10)])
    topic = "factory/line-7/station-42/sensor/temperature/celsius"
    sub5(s, 1, [(topic, 0)])
    p = open5(b.port, "p")
    for i in range(5):
        pub5(p, topic, b"21.5")
    got = [recv_pub5(s) for _ in range(5)]
    assert all(m.topic == topic for m in got)
    assert all(m.wire_topic == "" for m in got[1:]), got
    assert len(got[1].raw) < len(got[0].raw) - len(topic) + 1


def test_no_server_aliases_without_client_maximum(broker):
    # [MQTT-3.1.2-27] no Topic Alias Maximum (or 0) in CONNECT: the server
    # sends no Topic Alias
    b = broker()
    s0 = open5(b.port, "s0", properties=[(m5.TOPIC_ALIAS_MAXIMUM, 0)])
    sn = open5(b.port, "sn")
    sub5(s0, 1, [("na", 1)])
    sub5(sn, 1, [("na", 1)])
    p = open5(b.port, "p")
    for i in range(3):
        pub5(p, "na", str(i), qos=1, pid=i + 1)
    for s in (s0, sn):
        for i in range(3):
            m = recv_pub5(s)
            assert m.wire_topic == "na" and m5.TOPIC_ALIAS not in m.props


def test_server_aliases_reset_on_reconnect(broker):
    # aliases end with the connection: after a session resume the first
    # delivery of a topic carries the topic again (Conn5 fails otherwise)
    b = broker()
    props = [(m5.TOPIC_ALIAS_MAXIMUM, 5), (m5.SESSION_EXPIRY, 60)]
    s = open5(b.port, "sr", clean=False, properties=props)
    sub5(s, 1, [("rr", 1)])
    p = open5(b.port, "p")
    pub5(p, "rr", b"1", qos=1, pid=1)
    pub5(p, "rr", b"2", qos=1, pid=2)
    assert [recv_pub5(s).payload for _ in range(2)] == [b"1", b"2"]
    s.send(m5.disconnect())
    s.expect_closed()
    pub5(p, "rr", b"queued", qos=1, pid=3)
    s = open5(b.port, "sr", clean=False, present=True, properties=props)
    m = recv_pub5(s)
    assert m.payload == b"queued" and m.wire_topic == "rr", m
    pub5(p, "rr", b"live", qos=1, pid=4)
    assert recv_pub5(s).payload == b"live"


def test_server_aliases_per_subscriber(broker):
    # each connection has its own alias space: two subscribers with
    # different maximums both resolve every message correctly
    b = broker()
    s1 = open5(b.port, "s1", properties=[(m5.TOPIC_ALIAS_MAXIMUM, 1)])
    s3 = open5(b.port, "s3", properties=[(m5.TOPIC_ALIAS_MAXIMUM, 3)])
    sub5(s1, 1, [("ps/+", 1)])
    sub5(s3, 1, [("ps/+", 1)])
    p = open5(b.port, "p")
    topics = ["ps/a", "ps/b", "ps/c", "ps/a", "ps/b", "ps/c", "ps/b"]
    for i, t in enumerate(topics):
        pub5(p, t, str(i), qos=1, pid=i + 1)
    for s in (s1, s3):
        got = [(m.topic, m.payload) for m in (recv_pub5(s) for _ in topics)]
        assert got == [(t, str(i).encode()) for i, t in enumerate(topics)]


def test_server_aliases_on_retained_at_subscribe(broker):
    b = broker()
    p = open5(b.port, "p")
    for t in ("rz/a", "rz/b"):
        pub5(p, t, t, qos=1, retain=True)
    s = open5(b.port, "s", properties=[(m5.TOPIC_ALIAS_MAXIMUM, 1)])
    sub5(s, 1, [("rz/+", 1)])
    got = sorted((m.topic, m.payload) for m in (recv_pub5(s)
                                                for _ in range(2)))
    assert got == [("rz/a", b"rz/a"), ("rz/b", b"rz/b")]
    pub5(p, "rz/a", b"live", qos=1)
    pub5(p, "rz/a", b"live2", qos=1)
    got = [(m.topic, m.payload) for m in (recv_pub5(s) for _ in range(2))]
    assert got == [("rz/a", b"live"), ("rz/a", b"live2")]


def test_server_aliases_not_used_on_resend(broker):
    # an unacknowledged message re-sent on a new connection carries its
    # topic: the old connection's aliases are gone (Conn5 checks)
    b = broker()
    props = [(m5.TOPIC_ALIAS_MAXIMUM, 5), (m5.SESSION_EXPIRY, 60)]
    s = open5(b.port, "ar", clean=False, properties=props)
    sub5(s, 1, [("ar", 1)])
    p = open5(b.port, "p")
    pub5(p, "ar", b"1", qos=1, pid=1)
    pub5(p, "ar", b"2", qos=1, pid=2)
    recv_pub5(s, ack=False)
    m2 = recv_pub5(s, ack=False)
    assert m2.wire_topic == "", m2
    mark = b.mark()
    s.close()
    b.wait_log("Client ar closed its connection.", since=mark)
    s = open5(b.port, "ar", clean=False, present=True, properties=props)
    r1, r2 = recv_pub5(s), recv_pub5(s)
    assert [(r.payload, r.dup) for r in (r1, r2)] == [(b"1", True),
                                                      (b"2", True)]
    assert r1.wire_topic == "ar", r1


# ---- Receive Maximum: the client's ---------------------------------------

def test_client_receive_maximum_qos1(broker):
    # [MQTT-3.3.4-9] never more unacknowledged QoS 1/2 PUBLISHes than the
    # client's Receive Maximum; the rest follow as PUBACKs arrive
    b = broker()
    s = open5(b.port, "s", properties=[(m5.RECEIVE_MAXIMUM, 2)])
    sub5(s, 1, [("rx", 1)])
    p = open5(b.port, "p")
    for i in range(6):
        pub5(p, "rx", str(i), qos=1, pid=i + 1)
    m0 = recv_pub5(s, ack=False)
    m1 = recv_pub5(s, ack=False)
    assert [m0.payload, m1.payload] == [b"0", b"1"]
    s.expect_silence(0.5)
    s.send(m5.puback(m0.pid))
    m2 = recv_pub5(s, ack=False)
    assert m2.payload == b"2"
    s.expect_silence(0.3)
    s.send(m5.puback(m1.pid) + m5.puback(m2.pid))
    rest = [recv_pub5(s).payload for _ in range(3)]
    assert rest == [b"3", b"4", b"5"]


def test_client_receive_maximum_qos2_until_pubcomp(broker):
    # a QoS 2 delivery holds its slot until PUBCOMP, not PUBREC
    b = broker()
    s = open5(b.port, "s", properties=[(m5.RECEIVE_MAXIMUM, 1)])
    sub5(s, 1, [("rx2", 2)])
    p = open5(b.port, "p")
    for i in range(3):
        pub5(p, "rx2", str(i), qos=2, pid=i + 1)
    m = recv_pub5(s, ack=False)
    assert m.payload == b"0"
    s.send(m5.pubrec(m.pid))
    r = s.next5(w.PUBREL)
    assert r.pid == m.pid
    s.expect_silence(0.5)
    s.send(m5.pubcomp(m.pid))
    got = [recv_pub5(s).payload for _ in range(2)]
    assert got == [b"1", b"2"]


def test_client_receive_maximum_1_in_order(broker):
    # with Receive Maximum 1, 30 messages arrive one by one, in order
    b = broker()
    s = open5(b.port, "s", properties=[(m5.RECEIVE_MAXIMUM, 1)])
    sub5(s, 1, [("r1", 1)])
    p = open5(b.port, "p")
    for i in range(30):
        p.send(m5.publish("r1", str(i), qos=1, pid=i + 1))
    for i in range(30):
        assert p.next5(w.PUBACK).pid == i + 1
    got = []
    for _ in range(30):
        m = recv_pub5(s, ack=False)
        got.append(int(m.payload))
        try:
            extra = s.recv5(0.02)
            pytest.fail("second unacknowledged PUBLISH %r" % extra)
        except w.Timeout:
            pass
        s.send(m5.puback(m.pid))
    assert got == list(range(30))


def test_client_receive_maximum_larger_than_queue(broker):
    # Receive Maximum 65535 (the default): everything at once
    b = broker()
    s = open5(b.port, "s", properties=[(m5.RECEIVE_MAXIMUM, 65535)])
    sub5(s, 1, [("rb", 1)])
    p = open5(b.port, "p")
    for i in range(15):
        pub5(p, "rb", str(i), qos=1, pid=i + 1)
    got = [recv_pub5(s, ack=False) for _ in range(15)]
    assert [int(m.payload) for m in got] == list(range(15))


def test_client_receive_maximum_applies_to_resend(broker):
    # [MQTT-4.9.0-1] the send quota starts again at the new connection's
    # Receive Maximum, re-sent messages included
    b = broker()
    s = open5(b.port, "rr", clean=False,
              properties=[(m5.RECEIVE_MAXIMUM, 5), (m5.SESSION_EXPIRY, 60)])
    sub5(s, 1, [("rs", 1)])
    p = open5(b.port, "p")
    for i in range(3):
        pub5(p, "rs", str(i), qos=1, pid=i + 1)
    assert [recv_pub5(s, ack=False).payload for _ in range(3)] == \
        [b"0", b"1", b"2"]
    mark = b.mark()
    s.close()
    b.wait_log("Client rr closed its connection.", since=mark)
    s = open5(b.port, "rr", clean=False, present=True,
              properties=[(m5.RECEIVE_MAXIMUM, 1), (m5.SESSION_EXPIRY, 60)])
    got = []
    for i in range(3):
        m = recv_pub5(s, ack=False)
        got.append((m.payload, m.dup))
        s.expect_silence(0.3)
        s.send(m5.puback(m.pid))
    assert got == [(b"0", True), (b"1", True), (b"2", True)]


# ---- Maximum Packet Size: the client's -----------------------------------

def test_client_maximum_packet_size_drops_larger(broker):
    # [MQTT-3.1.2-24] nothing larger than the client's Maximum Packet
    # Size is sent to it; [MQTT-3.1.2-25] dropped as if sent; smaller
    # messages still arrive
    b = broker()
    s = open5(b.port, "s", properties=[(m5.MAXIMUM_PACKET_SIZE, 200)])
    sub5(s, 1, [("mp", 1)])
    p = open5(b.port, "p")
    pub5(p, "mp", b"a" * 500, qos=1, pid=1)
    pub5(p, "mp", b"b" * 500, qos=0)
    pub5(p, "mp", b"small", qos=1, pid=2)
    m = recv_pub5(s)
    assert m.payload == b"small"
    assert s.is_open()


def test_client_maximum_packet_size_boundary(broker):
    # the limit is on the whole PUBLISH as sent to this client
    b = broker()
    s = open5(b.port, "s", properties=[(m5.MAXIMUM_PACKET_SIZE, 300)])
    sub5(s, 1, [("mb", 1)])
    p = open5(b.port, "p")
    pub5(p, "mb", m5.payload_for(301, "mb", 1, fill=b"x"), qos=1, pid=1)
    fits = m5.payload_for(300, "mb", 1, fill=b"y")
    pub5(p, "mb", fits, qos=1, pid=2)
    m = recv_pub5(s)
    assert m.payload == fits and len(m.raw) == 300


def test_client_maximum_packet_size_counts_properties(broker):
    # a small payload with large user properties is too large as well
    b = broker()
    s = open5(b.port, "s", properties=[(m5.MAXIMUM_PACKET_SIZE, 256)])
    sub5(s, 1, [("mprop", 1)])
    p = open5(b.port, "p")
    pub5(p, "mprop", b"tiny", qos=1, pid=1,
         properties=user(("big", "v" * 300)))
    pub5(p, "mprop", b"fits", qos=1, pid=2, properties=user(("k", "v")))
    m = recv_pub5(s)
    assert m.payload == b"fits" and m.user == [("k", "v")]


def test_client_maximum_packet_size_with_topic_alias(broker):
    # the size that counts is the PUBLISH as sent: with a Topic Alias
    # property (3 bytes) or with the topic left out (Conn5 checks each)
    b = broker()
    s = open5(b.port, "s", properties=[(m5.MAXIMUM_PACKET_SIZE, 100),
                                       (m5.TOPIC_ALIAS_MAXIMUM, 5)])
    sub5(s, 1, [("mpa/+", 0)])
    p = open5(b.port, "p")
    for size in (97, 98, 99, 100, 101, 102, 103):
        pub5(p, "mpa/%d" % size, m5.payload_for(size, "mpa/%d" % size, 0))
        pub5(p, "mpa/%d" % size, m5.payload_for(size, "mpa/%d" % size, 0))
    pub5(p, "mpa/end", b"end")
    got = collect_until5(s, "mpa/end", b"end")
    sizes = [int(m.topic.split("/")[1]) for m in got]
    # 97 bytes plus an alias property is 100: fits whatever the form
    assert sizes.count(97) == 2, got


def test_client_maximum_packet_size_does_not_block_window(broker):
    # a dropped QoS 1 message does not hold a Receive Maximum slot
    b = broker()
    s = open5(b.port, "s", properties=[(m5.MAXIMUM_PACKET_SIZE, 200),
                                       (m5.RECEIVE_MAXIMUM, 1)])
    sub5(s, 1, [("mw", 1)])
    p = open5(b.port, "p")
    for i in range(3):
        pub5(p, "mw", b"z" * 1000, qos=1, pid=i + 1)
    pub5(p, "mw", b"after", qos=1, pid=10)
    assert recv_pub5(s).payload == b"after"


def test_client_maximum_packet_size_retained(broker):
    # a retained message too large for the subscriber is not sent at
    # SUBSCRIBE; the others are
    b = broker()
    p = open5(b.port, "p")
    pub5(p, "mr/big", b"B" * 1000, qos=1, retain=True, pid=1)
    pub5(p, "mr/small", b"s", qos=1, retain=True, pid=2)
    s = open5(b.port, "s", properties=[(m5.MAXIMUM_PACKET_SIZE, 128)])
    sub5(s, 1, [("mr/+", 1), ("mr-fence", 0)])
    pub5(p, "mr-fence", b"fence")
    got = collect_until5(s, "mr-fence")
    assert [(m.topic, m.payload) for m in got] == [("mr/small", b"s")]


def test_client_maximum_packet_size_others_unaffected(broker):
    # a subscriber with a larger limit gets the large message
    b = broker()
    small = open5(b.port, "small", properties=[(m5.MAXIMUM_PACKET_SIZE, 100)])
    large = open5(b.port, "large")
    old = w.open_client(b.port, "old")
    for c in (small, large):
        sub5(c, 1, [("mo", 1)])
    w.sub(old, 1, [("mo", 1)])
    p = open5(b.port, "p")
    pub5(p, "mo", b"L" * 5000, qos=1, pid=1)
    pub5(p, "mo", b"fence", qos=1, pid=2)
    assert recv_pub5(large).payload == b"L" * 5000
    assert w.recv_pub(old).payload == b"L" * 5000
    assert collect_until5(small, "mo", b"fence") == []


def test_auth_packet_without_enhanced_authentication(broker):
    # no Authentication Method was agreed at CONNECT (the broker refuses
    # them with 0x8C), so an AUTH packet is a protocol error [MQTT-4.12.0-6];
    # a 3.1.1 client sending type 15 is simply closed
    b = broker()
    c = open5(b.port, "au")
    c.send(m5.auth(0x18, [(m5.AUTH_METHOD, "SCRAM-SHA-1")]))
    m5.expect_disconnect(c, 0x82)
    v3 = w.open_client(b.port, "au3")
    v3.send(w.packet(0xF0, b""))
    v3.expect_closed()
