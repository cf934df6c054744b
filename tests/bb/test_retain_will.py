"""Retained messages and will messages."""

import socket
import struct

import pytest

import mqttwire as w
from mqttwire import open_client, sub, pub, recv_pub, collect_until


# ---- retained ---------------------------------------------------------

@pytest.mark.parametrize("pq,sq", [(0, 2), (1, 2), (2, 2), (2, 1), (2, 0),
                                   (1, 0)])
def test_retained_delivered_on_subscribe(broker, pq, sq):
    # [MQTT-3.3.1-5] stored; [MQTT-3.3.1-6] sent to new subscribers with
    # RETAIN 1; QoS min(publish QoS, granted QoS) [MQTT-3.8.4-6];
    # [MQTT-3.3.1-7] a QoS 0 retained message is kept too
    b = broker()
    p = open_client(b.port, "p")
    pub(p, "r/t", b"state", qos=pq, retain=True)
    s = open_client(b.port, "s")
    assert sub(s, 1, [("r/t", sq)]) == [sq]
    m = recv_pub(s)
    assert (m.topic, m.payload, m.retain, m.qos) == ("r/t", b"state", True,
                                                     min(pq, sq))


def test_retained_live_delivery_has_retain_0(broker):
    # [MQTT-3.3.1-9] matching an established subscription: RETAIN 0
    b = broker()
    s = open_client(b.port, "s")
    sub(s, 1, [("r/live", 1)])
    p = open_client(b.port, "p")
    pub(p, "r/live", b"v", qos=1, retain=True)
    m = recv_pub(s)
    assert m.payload == b"v" and not m.retain


def test_retained_replaced_and_per_topic(broker):
    # [MQTT-3.3.1-5] a new retained message replaces the old one; one per
    # topic; a wildcard subscription gets all of them
    b = broker()
    p = open_client(b.port, "p")
    pub(p, "rt/a", b"a1", retain=True)
    pub(p, "rt/a", b"a2", qos=1, retain=True)
    pub(p, "rt/b", b"b1", qos=1, retain=True)
    pub(p, "rt/b/c", b"c1", qos=1, retain=True)
    s = open_client(b.port, "s")
    sub(s, 1, [("rt/+", 1), ("fence", 0)])
    pub(p, "fence", b"fence")
    got = {m.topic: m.payload for m in collect_until(s, "fence")}
    assert got == {"rt/a": b"a2", "rt/b": b"b1"}


def test_retained_cleared_by_empty_payload(broker):
    # [MQTT-3.3.1-10] empty retained payload removes it; [MQTT-3.3.1-11]
    # it is not stored; [MQTT-3.3.1-12] current subscribers still get it
    b = broker()
    p = open_client(b.port, "p")
    pub(p, "rc", b"x", qos=1, retain=True)
    s1 = open_client(b.port, "s1")
    sub(s1, 1, [("rc", 1)])
    assert recv_pub(s1).payload == b"x"
    pub(p, "rc", b"", qos=1, retain=True)
    m = recv_pub(s1)
    assert m.payload == b"" and not m.retain
    s2 = open_client(b.port, "s2")
    sub(s2, 1, [("rc", 1), ("fence", 0)])
    pub(p, "fence", b"fence")
    assert collect_until(s2, "fence") == []


def test_non_retained_does_not_touch_retained(broker):
    # [MQTT-3.3.1-8] RETAIN 0: not stored, the retained one stays
    b = broker()
    p = open_client(b.port, "p")
    pub(p, "nr", b"kept", qos=1, retain=True)
    pub(p, "nr", b"passing", qos=1)
    pub(p, "nr2", b"passing", qos=1)
    s = open_client(b.port, "s")
    sub(s, 1, [("nr", 1), ("nr2", 1), ("fence", 0)])
    pub(p, "fence", b"fence")
    got = collect_until(s, "fence")
    assert [(m.topic, m.payload) for m in got] == [("nr", b"kept")]


def test_retained_not_matched_by_hash_for_dollar(broker):
    # [MQTT-4.7.2-1] '#' does not match retained '$' topics either
    b = broker()
    p = open_client(b.port, "p")
    pub(p, "$app/x", b"hidden", qos=1, retain=True)
    pub(p, "vis", b"seen", qos=1, retain=True)
    s = open_client(b.port, "s")
    sub(s, 1, [("#", 0)])
    pub(p, "fence", b"fence")
    got = [m.topic for m in collect_until(s, "fence")]
    assert got == ["vis"]
    sub(s, 2, [("$app/#", 0)])
    assert recv_pub(s).payload == b"hidden"


def test_retain_available_false(broker):
    # Mosquitto: retain_available false disconnects a client that sends a
    # retained PUBLISH; plain publishes work
    b = broker("retain_available false\n")
    p = open_client(b.port, "p")
    pub(p, "ra", b"fine", qos=1)
    p.send(w.publish("ra", b"kept?", qos=1, retain=True, pid=2))
    p.expect_closed()


# ---- will -------------------------------------------------------------

def will_setup(b, wq=1, wr=False, keepalive=60, sq=2, cid="dying"):
    s = open_client(b.port, "watcher")
    sub(s, 1, [("will/#", sq)])
    d = open_client(b.port, cid, keepalive=keepalive,
                    will=("will/" + cid, b"gone", wq, wr))
    return s, d


@pytest.mark.parametrize("wq", [0, 1, 2])
def test_will_on_socket_close(broker, wq):
    # [MQTT-3.1.2-8] connection closed without DISCONNECT: will published,
    # with its QoS [MQTT-3.1.2-16..]
    b = broker()
    s, d = will_setup(b, wq=wq)
    d.close()
    m = recv_pub(s)
    assert (m.topic, m.payload, m.qos, m.retain) == ("will/dying", b"gone",
                                                     wq, False)


def test_will_on_reset(broker):
    # RST instead of FIN
    b = broker()
    s, d = will_setup(b)
    d.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                      struct.pack("ii", 1, 0))
    d.close()
    assert recv_pub(s).payload == b"gone"


def test_no_will_on_disconnect(broker):
    # [MQTT-3.1.2-10] [MQTT-3.14.4-3] DISCONNECT discards the will
    b = broker()
    s, d = will_setup(b)
    d.send(w.DISCONNECT_BYTES)
    d.expect_closed()
    b.wait_log("Client dying disconnected.")
    p = open_client(b.port, "p")
    pub(p, "will/fence", b"fence")
    assert collect_until(s, "will/fence") == []


def test_will_on_protocol_error(broker):
    # will published when the server closes for a protocol error
    b = broker()
    s, d = will_setup(b)
    d.send(w.publish("a/#", b"bad"))
    d.expect_closed()
    assert recv_pub(s).payload == b"gone"


@pytest.mark.slow
def test_will_on_keepalive_timeout(broker):
    # [MQTT-3.1.2-24] no packet within 1.5 x keepalive: close, send will
    b = broker()
    s, d = will_setup(b, keepalive=1)
    d.expect_closed(timeout=4)
    b.wait_log("Client dying has exceeded timeout, disconnecting.")
    assert recv_pub(s).payload == b"gone"


def test_will_on_takeover(broker):
    # takeover closes the old network connection without DISCONNECT: its
    # will is published (Mosquitto does the same)
    b = broker()
    s, d = will_setup(b)
    d2 = open_client(b.port, "dying")
    d.expect_closed()
    m = recv_pub(s)
    assert m.payload == b"gone"
    assert d2.is_open()


def test_will_retained(broker):
    # [MQTT-3.1.2-17] will retain 1: published as a retained message
    b = broker()
    s, d = will_setup(b, wq=1, wr=True)
    d.close()
    m = recv_pub(s)
    assert m.payload == b"gone" and not m.retain  # live delivery
    s2 = open_client(b.port, "late")
    sub(s2, 1, [("will/dying", 2)])
    m = recv_pub(s2)
    assert (m.payload, m.retain, m.qos) == (b"gone", True, 1)


def test_will_not_retained(broker):
    # [MQTT-3.1.2-16] will retain 0: not retained
    b = broker()
    s, d = will_setup(b, wq=1, wr=False)
    d.close()
    assert recv_pub(s).payload == b"gone"
    s2 = open_client(b.port, "late")
    sub(s2, 1, [("will/dying", 2), ("fence", 0)])
    p = open_client(b.port, "p")
    pub(p, "fence", b"fence")
    assert collect_until(s2, "fence") == []


def test_will_empty_payload(broker):
    b = broker()
    s = open_client(b.port, "watcher")
    sub(s, 1, [("will/#", 1)])
    d = open_client(b.port, "e", will=("will/e", b"", 1, False))
    d.close()
    m = recv_pub(s)
    assert m.topic == "will/e" and m.payload == b""


def test_will_only_once(broker):
    # the will is published once, then discarded [MQTT-3.1.2-10]
    b = broker()
    s, d = will_setup(b, cid="once")
    d.send(w.publish("a/+", b"bad"))  # protocol error, then the close
    d.expect_closed()
    assert recv_pub(s).payload == b"gone"
    p = open_client(b.port, "p")
    pub(p, "will/fence", b"fence")
    assert collect_until(s, "will/fence") == []


def test_max_retained_messages(broker):
    # retained pool full: a new topic is not stored; existing topics can
    # still be replaced or cleared, which frees a slot
    b = broker("max_retained_messages 2\nsys_interval 0\n")
    p = open_client(b.port, "p")
    for t in ("m/1", "m/2", "m/3"):
        pub(p, t, t, qos=1, retain=True)
    pub(p, "m/1", b"m/1 again", qos=1, retain=True)

    def retained():
        s = open_client(b.port, "s")
        sub(s, 1, [("m/#", 0), ("fence", 0)])
        pub(p, "fence", b"fence")
        got = {m.topic: m.payload for m in collect_until(s, "fence")}
        s.close()
        return got

    assert retained() == {"m/1": b"m/1 again", "m/2": b"m/2"}
    pub(p, "m/2", b"", qos=1, retain=True)
    pub(p, "m/3", b"m/3", qos=1, retain=True)
    assert retained() == {"m/1": b"m/1 again", "m/3": b"m/3"}
