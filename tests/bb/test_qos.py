"""QoS 0/1/2 flows, subscriptions, matching and the inflight window, on the
wire. 'Nothing else arrived' is checked with a fence: a last message that
must be the next one received (per-topic ordering, no sleeping)."""

import pytest

import mqttwire as w
from mqttwire import open_client, sub, pub, recv_pub, collect_until


def test_qos1_flow_publisher_side(broker):
    # [MQTT-4.3.2-2] PUBACK with the same packet identifier
    b = broker()
    c = open_client(b.port, "p1")
    c.send(w.publish("q/1", b"m", qos=1, pid=0x1234))
    c.expect(b"\x40\x02\x12\x34")


def test_qos2_flow_publisher_side(broker):
    # [MQTT-4.3.3-2] PUBREC, then PUBCOMP for PUBREL, same identifier
    b = broker()
    c = open_client(b.port, "p2")
    c.send(w.publish("q/2", b"m", qos=2, pid=0xBEEF))
    c.expect(b"\x50\x02\xbe\xef")
    c.send(w.pubrel(0xBEEF))
    c.expect(b"\x70\x02\xbe\xef")


def test_pubrel_unknown_id_gets_pubcomp(broker):
    # [MQTT-4.3.3-2] a PUBREL is answered by PUBCOMP even when the id is
    # no longer (or never was) known: the flow must be able to finish
    b = broker()
    c = open_client(b.port, "p3")
    c.send(w.pubrel(77))
    c.expect(w.pubcomp(77))


def test_puback_unknown_id_ignored(broker):
    b = broker()
    c = open_client(b.port, "p4")
    c.send(w.puback(9) + w.pubrec(10) + w.pubcomp(11))
    assert c.is_open()


@pytest.mark.parametrize("pq", [0, 1, 2])
@pytest.mark.parametrize("sq", [0, 1, 2])
def test_delivery_qos_is_min(broker, pq, sq):
    # [MQTT-3.8.4-6] delivered at min(publish QoS, granted QoS);
    # [MQTT-3.3.1-9] retain 0 for live delivery; [MQTT-4.3.2-1] QoS > 0
    # gets an unused non-zero packet id; [MQTT-3.3.1-3] DUP 0 first time
    b = broker()
    s = open_client(b.port, "s")
    assert sub(s, 1, [("qos/+", sq)]) == [sq]
    p = open_client(b.port, "p")
    pub(p, "qos/x", b"payload", qos=pq, retain=False, pid=5)
    m = recv_pub(s, ack=False)
    assert m.topic == "qos/x" and m.payload == b"payload"
    assert m.qos == min(pq, sq) and not m.retain and not m.dup
    if m.qos:
        assert m.pid != 0
    w.ack_pub(s, m)
    pub(p, "qos/x", b"fence", qos=0)
    assert collect_until(s, "qos/x", b"fence") == []


def test_subscriber_qos2_flow_bytes(broker):
    # server as QoS 2 sender: PUBLISH, PUBREC -> PUBREL 62 02, PUBCOMP
    b = broker()
    s = open_client(b.port, "s2")
    sub(s, 1, [("z", 2)])
    p = open_client(b.port, "p2")
    pub(p, "z", b"two", qos=2)
    m = recv_pub(s, ack=False)
    assert m.qos == 2
    s.send(w.pubrec(m.pid))
    s.expect(w.pubrel(m.pid))
    s.send(w.pubcomp(m.pid))
    assert s.is_open()


def test_qos2_resent_publish_delivered_once(broker):
    # [MQTT-4.3.3-2] a re-sent QoS 2 PUBLISH (same id, DUP) before PUBREL
    # is not delivered again; each is answered with PUBREC
    b = broker()
    s = open_client(b.port, "s")
    sub(s, 1, [("once", 2)])
    p = open_client(b.port, "p")
    p.send(w.publish("once", b"1", qos=2, pid=42))
    p.expect(w.pubrec(42))
    p.send(w.publish("once", b"1", qos=2, pid=42, dup=True))
    p.expect(w.pubrec(42))
    p.send(w.publish("once", b"1", qos=2, pid=42, dup=True))
    p.expect(w.pubrec(42))
    p.send(w.pubrel(42))
    p.expect(w.pubcomp(42))
    # the same id after PUBCOMP is a new message
    pub(p, "once", b"2", qos=2, pid=42)
    pub(p, "once", b"fence", qos=2, pid=43)
    got = collect_until(s, "once", b"fence")
    assert [m.payload for m in got] == [b"1", b"2"]


def test_qos2_delivered_once_across_publisher_reconnect(broker):
    # [MQTT-4.4.0-1] PUBREL flow continues after the publisher reconnects
    # with clean session 0
    b = broker()
    s = open_client(b.port, "s")
    sub(s, 1, [("x2", 2)])
    p = open_client(b.port, "pubx", clean=False)
    p.send(w.publish("x2", b"only", qos=2, pid=7))
    p.expect(w.pubrec(7))
    p.close()
    b.wait_log("Client pubx closed its connection.")
    p = open_client(b.port, "pubx", clean=False, present=True)
    p.send(w.publish("x2", b"only", qos=2, pid=7, dup=True))
    p.expect(w.pubrec(7))
    p.send(w.pubrel(7))
    p.expect(w.pubcomp(7))
    pub(p, "x2", b"fence", qos=2, pid=8)
    got = collect_until(s, "x2", b"fence")
    assert [m.payload for m in got] == [b"only"]


def test_subscribe_several_filters(broker):
    # [MQTT-3.8.4-1] SUBACK, [MQTT-3.8.4-2] same id, [MQTT-3.8.4-5] one
    # return code per filter, in order
    b = broker()
    c = open_client(b.port, "multi")
    c.send(w.subscribe(0x0102, [("a/0", 0), ("a/1", 1), ("a/2", 2),
                                ("a/#", 1)]))
    c.expect(b"\x90\x06\x01\x02\x00\x01\x02\x01")


def test_resubscribe_replaces_qos(broker):
    # [MQTT-3.8.4-3] same filter again: the new QoS replaces the old one,
    # and retained messages are re-sent
    b = broker()
    p = open_client(b.port, "p")
    pub(p, "rs", b"kept", qos=1, retain=True)
    s = open_client(b.port, "s")
    assert sub(s, 1, [("rs", 1)]) == [1]
    m = recv_pub(s)
    assert m.retain and m.qos == 1
    assert sub(s, 2, [("rs", 0)]) == [0]
    m = recv_pub(s)
    assert m.retain and m.qos == 0 and m.payload == b"kept"
    pub(p, "rs", b"live", qos=1)
    m = recv_pub(s)
    assert m.qos == 0 and m.payload == b"live"
    pub(p, "rs", b"fence")
    assert collect_until(s, "rs", b"fence") == []


MATCHES = [
    # filter, [topics that match], [topics that do not]   [MQTT-4.7]
    ("sport/tennis/player1/#", ["sport/tennis/player1",
                                "sport/tennis/player1/ranking",
                                "sport/tennis/player1/score/wimbledon"],
     ["sport/tennis/player2", "sport/tennis"]),
    ("sport/#", ["sport", "sport/", "sport/x/y"], ["sports", "Sport"]),
    ("sport/tennis/+", ["sport/tennis/player1", "sport/tennis/"],
     ["sport/tennis/player1/ranking", "sport/tennis"]),
    ("sport/+", ["sport/"], ["sport"]),
    ("+/+", ["/finance", "a/b"], ["a", "a/b/c"]),
    ("/+", ["/finance"], ["finance", "/a/b"]),
    ("+", ["a", "finance"], ["/finance", "a/b"]),
    ("#", ["a", "/", "a/b/c", "/x"], ["$x", "$x/y"]),
    ("+/x", ["a/x", "/x"], ["$foo/x", "a/b/x"]),
    ("a/+/b", ["a//b", "a/x/b"], ["a/b", "a/x/y/b"]),
    ("$foo/#", ["$foo/bar", "$foo"], ["foo/bar"]),
    ("+/+/+", ["a/b/c", "//"], ["a/b", "a/b/c/d"]),
    ("a/b", ["a/b"], ["a/b/", "A/b", "a/b/c", "/a/b"]),
    ("é/日本", ["é/日本"], ["e/日本"]),
]


@pytest.mark.parametrize("flt,yes,no", MATCHES, ids=[m[0] for m in MATCHES])
def test_matching(broker, flt, yes, no):
    # [MQTT-4.7.1-1] wildcards, [MQTT-4.7.2-1] '$' topics are not matched
    # by a leading wildcard, [MQTT-4.7.3-4] case sensitive, no normalising
    b = broker()
    s = open_client(b.port, "s")
    assert sub(s, 1, [(flt, 0), ("fence/z", 0)]) == [0, 0]
    p = open_client(b.port, "p")
    for t in no + yes:
        pub(p, t, t)
    pub(p, "fence/z", b"fence")
    got = [m.topic for m in collect_until(s, "fence/z", b"fence")]
    assert sorted(got) == sorted(yes)


def test_overlapping_subscriptions_one_copy(broker):
    # [MQTT-3.3.5-1] one copy, at the highest QoS of the matching subs
    b = broker()
    s = open_client(b.port, "s")
    assert sub(s, 1, [("ov/#", 0), ("ov/+", 2), ("ov/a", 1)]) == [0, 2, 1]
    p = open_client(b.port, "p")
    pub(p, "ov/a", b"m", qos=2)
    m = recv_pub(s)
    assert m.qos == 2 and m.payload == b"m"
    pub(p, "ov/a", b"fence", qos=2)
    got = collect_until(s, "ov/a", b"fence")
    assert got == [], "extra copies: %r" % got


def test_unsubscribe_stops_delivery(broker):
    # [MQTT-3.10.4-1] [MQTT-3.10.4-2] after UNSUBACK no new messages;
    # [MQTT-3.10.4-4] UNSUBACK with the same id; [MQTT-3.10.4-5] also for
    # filters it never had; [MQTT-3.10.4-6] several filters, one UNSUBACK
    b = broker()
    s = open_client(b.port, "s")
    sub(s, 1, [("u/+", 1), ("keep", 0)])
    p = open_client(b.port, "p")
    pub(p, "u/a", b"before", qos=1)
    assert recv_pub(s).payload == b"before"
    s.send(w.unsubscribe(0x0A0B, ["u/+", "never/subscribed"]))
    s.expect(b"\xb0\x02\x0a\x0b")
    pub(p, "u/a", b"after", qos=1)
    pub(p, "keep", b"fence")
    assert collect_until(s, "keep", b"fence") == []


def test_same_filter_twice_in_one_subscribe(broker):
    # [MQTT-3.8.4-3] the second entry replaces the first: one subscription
    b = broker()
    c = open_client(b.port, "twice")
    assert sub(c, 1, [("d", 0), ("d", 1)]) == [0, 1]
    p = open_client(b.port, "p")
    pub(p, "d", b"one", qos=1)
    m = recv_pub(c)
    assert (m.payload, m.qos) == (b"one", 1)
    pub(p, "d", b"fence")
    assert collect_until(c, "d", b"fence") == []


def test_unsubscribe_completes_inflight(broker):
    # [MQTT-3.10.4-3] a QoS 1 message in flight when the client
    # unsubscribes can still be acknowledged
    b = broker()
    c = open_client(b.port, "ui")
    sub(c, 1, [("ui", 1)])
    p = open_client(b.port, "p")
    pub(p, "ui", b"in flight", qos=1)
    m = recv_pub(c, ack=False)
    w.unsub(c, 2, ["ui"])
    c.send(w.puback(m.pid))
    assert c.is_open()


def test_unsubscribe_exact_filter_only(broker):
    # unsubscribe compares filters character by character
    b = broker()
    s = open_client(b.port, "s")
    sub(s, 1, [("e/#", 0)])
    w.unsub(s, 2, ["e/+"])
    p = open_client(b.port, "p")
    pub(p, "e/x", b"still")
    assert recv_pub(s).payload == b"still"


def test_order_preserved_qos1(broker):
    # [MQTT-4.6.0-6] ordered topic: same order as published
    b = broker()
    s = open_client(b.port, "s")
    sub(s, 1, [("ord", 1)])
    p = open_client(b.port, "p")
    for i in range(50):
        p.send(w.publish("ord", str(i), qos=1, pid=i + 1))
    for i in range(50):
        assert w.next_of(p, w.PUBACK).pid == i + 1
    got = [int(recv_pub(s).payload) for _ in range(50)]
    assert got == list(range(50))


def test_max_inflight_messages(broker):
    # max_inflight_messages bounds unacknowledged outgoing QoS 1 messages
    b = broker("max_inflight_messages 2\n")
    s = open_client(b.port, "s")
    sub(s, 1, [("inf", 1)])
    p = open_client(b.port, "p")
    for i in range(6):
        pub(p, "inf", str(i), qos=1, pid=i + 1)
    m0 = recv_pub(s, ack=False)
    m1 = recv_pub(s, ack=False)
    assert [m0.payload, m1.payload] == [b"0", b"1"]
    s.expect_silence(0.5)
    s.send(w.puback(m0.pid))
    m2 = recv_pub(s, ack=False)
    assert m2.payload == b"2"
    s.expect_silence(0.3)
    s.send(w.puback(m1.pid) + w.puback(m2.pid))
    rest = [recv_pub(s).payload for _ in range(3)]
    assert rest == [b"3", b"4", b"5"]


def test_publish_to_self(broker):
    # 3.1.1 has no 'no local': a client receives its own publications
    b = broker()
    c = open_client(b.port, "self")
    sub(c, 1, [("me", 1)])
    c.send(w.publish("me", b"echo", qos=1, pid=3))
    got = [c.recv_packet(), c.recv_packet()]
    types = sorted(x.type for x in got)
    assert types == [w.PUBLISH, w.PUBACK]


def test_large_payload(broker):
    # a payload larger than any single read buffer, exactly
    b = broker()
    s = open_client(b.port, "s")
    sub(s, 1, [("big", 1)])
    p = open_client(b.port, "p")
    data = bytes(range(256)) * 1024  # 256 KiB
    pub(p, "big", data, qos=1)
    m = recv_pub(s, timeout=10)
    assert m.payload == data


def test_message_size_limit(broker):
    # message_size_limit (Mosquitto): larger payloads are dropped (QoS 1
    # still gets PUBACK in 3.1.1), the client stays connected
    b = broker("message_size_limit 100\n")
    s = open_client(b.port, "s")
    sub(s, 1, [("ms", 1)])
    p = open_client(b.port, "p")
    pub(p, "ms", b"x" * 101, qos=1)
    pub(p, "ms", b"y" * 100, qos=1)
    assert p.is_open()
    m = recv_pub(s)
    assert m.payload == b"y" * 100
