"""MQTT 5.0 state across a restart (persistence true, SIGTERM then a new
broker on the same port and files): message properties and expiry of
queued, in-flight and retained messages, session expiry intervals,
subscription options, identifiers and shared groups."""

import time

import pytest

import mqtt5wire as m5
from mqtt5wire import (open5, sub5, pub5, recv_pub5, collect_until5,
                       sub_opts, user)

BASE = ("listener {port} 127.0.0.1\nallow_anonymous true\nsys_interval 0\n"
        "persistence true\npersistence_location {dir}/\n")

PROPS = [(m5.PAYLOAD_FORMAT, 1), (m5.CONTENT_TYPE, "text/plain"),
         (m5.RESPONSE_TOPIC, "re/ply"), (m5.CORRELATION_DATA, b"\x00c\xff"),
         (m5.USER_PROPERTY, ("k", "1")), (m5.USER_PROPERTY, ("k", "2"))]


def se(seconds):
    return [(m5.SESSION_EXPIRY, seconds)]


def restart(broker, b):
    assert b.stop() == 0
    return broker(conf=BASE, port=b.port, name=b.name + "r")


def leave(b, c, cid):
    mark = b.mark()
    c.send(m5.disconnect())
    c.expect_closed()
    b.wait_log("Client %s disconnected" % cid, since=mark)


def same_props(m, sent):
    """m carries sent's properties (Message Expiry aside), in order."""
    got = [(k, v) for k, v in m.props.items
           if k not in (m5.MESSAGE_EXPIRY, m5.SUBSCRIPTION_ID)]
    assert got == sent, m


def test_queued_message_properties_survive(broker):
    b = broker(conf=BASE)
    c = open5(b.port, "q", clean=False, properties=se(600))
    sub5(c, 1, [("pq", 1)], [(m5.SUBSCRIPTION_ID, 12)])
    leave(b, c, "q")
    p = open5(b.port, "p")
    pub5(p, "pq", b"with props", qos=1, pid=1,
         properties=PROPS + [(m5.MESSAGE_EXPIRY, 300)])
    pub5(p, "pq", b"plain", qos=1, pid=2)
    b = restart(broker, b)
    c = open5(b.port, "q", clean=False, properties=se(600), present=True)
    m1, m2 = recv_pub5(c), recv_pub5(c)
    assert (m1.payload, m2.payload) == (b"with props", b"plain")
    same_props(m1, PROPS)
    left = m1.props.get(m5.MESSAGE_EXPIRY)
    assert left is not None and 295 <= left <= 300, m1
    assert m1.props.all(m5.SUBSCRIPTION_ID) == [12], m1
    same_props(m2, [])
    assert m2.props.all(m5.SUBSCRIPTION_ID) == [12], m2


def test_inflight_message_properties_survive(broker):
    # an unacknowledged delivery is re-sent after the restart with DUP,
    # its packet id and its properties
    b = broker(conf=BASE)
    c = open5(b.port, "inf", clean=False, properties=se(600))
    sub5(c, 1, [("pi", 2)])
    p = open5(b.port, "p")
    pub5(p, "pi", b"x", qos=2, pid=1, properties=PROPS)
    m = recv_pub5(c, ack=False)
    same_props(m, PROPS)
    c.close()
    b = restart(broker, b)
    c = open5(b.port, "inf", clean=False, properties=se(600), present=True)
    m2 = recv_pub5(c)
    assert (m2.payload, m2.pid, m2.dup) == (b"x", m.pid, True)
    same_props(m2, PROPS)


def test_retained_message_properties_survive(broker):
    b = broker(conf=BASE)
    p = open5(b.port, "p")
    pub5(p, "pr/state", b"on", qos=1, retain=True,
         properties=PROPS + [(m5.MESSAGE_EXPIRY, 300)])
    b = restart(broker, b)
    s = open5(b.port, "s")
    sub5(s, 1, [("pr/#", 1)])
    m = recv_pub5(s)
    assert m.retain and m.payload == b"on"
    same_props(m, PROPS)
    left = m.props.get(m5.MESSAGE_EXPIRY)
    assert left is not None and 295 <= left <= 300, m


@pytest.mark.slow
def test_message_expiry_still_applies_after_restart(broker):
    b = broker(conf=BASE)
    c = open5(b.port, "mx", clean=False, properties=se(600))
    sub5(c, 1, [("mx", 1), ("fence", 0)])
    leave(b, c, "mx")
    p = open5(b.port, "p")
    pub5(p, "mx", b"short", qos=1, pid=1,
         properties=[(m5.MESSAGE_EXPIRY, 2)])
    pub5(p, "mx/r", b"short retained", qos=1, pid=2, retain=True,
         properties=[(m5.MESSAGE_EXPIRY, 2)])
    b = restart(broker, b)
    time.sleep(2.5)  # the expiry is the point
    c = open5(b.port, "mx", clean=False, properties=se(600), present=True)
    sub5(c, 2, [("mx/r", 1)])
    p = open5(b.port, "p")
    pub5(p, "fence", b"fence")
    assert collect_until5(c, "fence") == []


def test_session_expiry_interval_survives(broker):
    # a session kept N seconds is still there after a restart within N,
    # with its subscription options
    b = broker(conf=BASE)
    p = open5(b.port, "p")
    pub5(p, "rh", b"kept", qos=1, retain=True)
    c = open5(b.port, "opts", clean=False, properties=se(600))
    sub5(c, 1, [("nl", sub_opts(1, no_local=True)),
                ("rap", sub_opts(1, rap=True)),
                ("rh", sub_opts(1, rh=1)),
                ("fence", 0)])
    assert recv_pub5(c).payload == b"kept"  # a new subscription
    leave(b, c, "opts")
    b = restart(broker, b)
    p = open5(b.port, "p")
    c = open5(b.port, "opts", clean=False, properties=se(600), present=True)
    # No Local: its own message does not come back
    pub5(c, "nl", b"mine", qos=1, pid=1)
    # Retain As Published: RETAIN stays 1 on live delivery
    pub5(p, "rap", b"r", qos=1, retain=True)
    # Retain Handling 1: the subscription exists, so no retained message
    sub5(c, 2, [("rh", sub_opts(1, rh=1))])
    pub5(p, "fence", b"fence")
    got = collect_until5(c, "fence")
    assert [(m.topic, m.payload, m.retain) for m in got] == [
        ("rap", b"r", True)], got


@pytest.mark.slow
def test_session_expiry_counts_across_restart(broker):
    # the time left is saved: a 1 s session is not written as never
    # expiring, and a 5 s one is still there 1.5 s later (the file keeps
    # whole seconds: a second either way is tolerated)
    b = broker(conf=BASE)
    for cid, secs in (("short", 1), ("longer", 5)):
        c = open5(b.port, cid, clean=False, properties=se(secs))
        sub5(c, 1, [("sh", 1)])
        leave(b, c, cid)
    t0 = time.monotonic()
    b = restart(broker, b)
    time.sleep(max(0.0, 1.5 - (time.monotonic() - t0)))
    open5(b.port, "longer", clean=False, properties=se(60), present=True)
    time.sleep(max(0.0, 3.5 - (time.monotonic() - t0)))  # the expiry
    open5(b.port, "short", clean=False, properties=se(60), present=False)


def test_session_expiry_0_not_kept(broker):
    b = broker(conf=BASE)
    c = open5(b.port, "zero", clean=False)
    sub5(c, 1, [("z", 1)])
    leave(b, c, "zero")
    b = restart(broker, b)
    open5(b.port, "zero", clean=False, properties=se(60), present=False)


def test_shared_group_survives(broker):
    # a persistent member's shared subscription (and its identifier) is
    # restored: it still gets the group's messages
    b = broker(conf=BASE)
    c = open5(b.port, "mem", clean=False, properties=se(600))
    sub5(c, 1, [("$share/g/sg/#", 1)], [(m5.SUBSCRIPTION_ID, 5)])
    leave(b, c, "mem")
    b = restart(broker, b)
    c = open5(b.port, "mem", clean=False, properties=se(600), present=True)
    p = open5(b.port, "p")
    for i in range(3):
        pub5(p, "sg/x", str(i), qos=1, pid=i + 1,
             properties=user(("i", str(i))))
    got = [recv_pub5(c) for _ in range(3)]
    assert [(m.payload, m.user) for m in got] == [
        (str(i).encode(), [("i", str(i))]) for i in range(3)]
    assert all(m.props.all(m5.SUBSCRIPTION_ID) == [5] for m in got), got
