"""MQTT 5.0 sessions and time: Session Expiry Interval (0, N seconds,
never; changed at DISCONNECT), Clean Start, Message Expiry Interval on
queued and retained messages, and wills (will properties, Will Delay
Interval, DISCONNECT 0x04).

Tests whose point is a spec time use intervals of 1-2 s and sleep past
them; everything else waits on packets or log lines."""

import time

import pytest

import mqttwire as w
import mqtt5wire as m5
from mqtt5wire import (open5, sub5, pub5, recv_pub5, collect_until5,
                       expect_disconnect, user)


def se(seconds):
    return [(m5.SESSION_EXPIRY, seconds)]


def leave(b, c, cid, rc=None, properties=None):
    """DISCONNECT (reason rc, properties) and wait until the broker
    noticed."""
    mark = b.mark()
    c.send(m5.disconnect(rc, properties))
    c.expect_closed()
    b.wait_log("Client %s disconnected" % cid, since=mark)


def drop(b, c, cid):
    """Close the socket without DISCONNECT; wait until the broker
    noticed."""
    mark = b.mark()
    c.close()
    b.wait_log("Client %s closed its connection." % cid, since=mark)


def fence(b, s, topic="fence"):
    """Everything s received before a fresh message on topic (which s must
    be subscribed to)."""
    p = open5(b.port, "fencer")
    pub5(p, topic, b"fence")
    got = collect_until5(s, topic, b"fence")
    p.send(m5.disconnect())
    p.close()
    return got


# ---- Session Expiry Interval ----------------------------------------------

def test_session_expiry_0_ends_with_connection(broker):
    # [MQTT-3.1.2-23] absent / 0: the session ends when the connection
    # closes, even with clean start 0
    b = broker()
    c = open5(b.port, "e0", clean=False)
    sub5(c, 1, [("e0/t", 1)])
    leave(b, c, "e0")
    p = open5(b.port, "p")
    pub5(p, "e0/t", b"lost", qos=1)
    c = open5(b.port, "e0", clean=False, present=False)
    sub5(c, 1, [("fence", 0)])
    assert fence(b, c) == []


def test_session_kept_within_expiry(broker):
    # [MQTT-3.1.2-23] N seconds: a reconnect within N with clean start 0
    # gets session present 1, its subscriptions and queued messages
    b = broker()
    c = open5(b.port, "e2", clean=False, properties=se(60))
    sub5(c, 1, [("e2/t", 2)])
    leave(b, c, "e2")
    p = open5(b.port, "p")
    pub5(p, "e2/t", b"q1", qos=1, pid=1)
    pub5(p, "e2/t", b"q2", qos=2, pid=2)
    c = open5(b.port, "e2", clean=False, properties=se(60), present=True)
    got = [recv_pub5(c) for _ in range(2)]
    assert [(m.payload, m.qos) for m in got] == [(b"q1", 1), (b"q2", 2)]
    pub5(p, "e2/t", b"fence", qos=1, pid=3)
    assert collect_until5(c, "e2/t", b"fence") == []


def test_session_kept_after_network_drop(broker):
    # the session outlives a connection lost without DISCONNECT as well
    b = broker()
    c = open5(b.port, "nd", clean=False, properties=se(60))
    sub5(c, 1, [("nd", 1)])
    drop(b, c, "nd")
    p = open5(b.port, "p")
    pub5(p, "nd", b"while away", qos=1)
    c = open5(b.port, "nd", clean=False, properties=se(60), present=True)
    assert recv_pub5(c).payload == b"while away"


@pytest.mark.slow
def test_session_expires(broker):
    # [MQTT-3.1.2-23] after N seconds the session and its queue are gone
    b = broker()
    c = open5(b.port, "ex", clean=False, properties=se(1))
    sub5(c, 1, [("ex/t", 1)])
    leave(b, c, "ex")
    p = open5(b.port, "p")
    pub5(p, "ex/t", b"queued", qos=1)
    time.sleep(2.5)  # the expiry is the point
    c = open5(b.port, "ex", clean=False, properties=se(60), present=False)
    sub5(c, 1, [("fence", 0)])
    assert fence(b, c) == []


@pytest.mark.slow
def test_session_expiry_never(broker):
    # 0xFFFFFFFF: the session does not expire
    b = broker()
    c = open5(b.port, "nev", clean=False, properties=se(0xFFFFFFFF))
    sub5(c, 1, [("nev", 1)])
    leave(b, c, "nev")
    p = open5(b.port, "p")
    pub5(p, "nev", b"kept", qos=1)
    time.sleep(2.5)  # longer than the short expiries that do end
    c = open5(b.port, "nev", clean=False, properties=se(0xFFFFFFFF),
              present=True)
    assert recv_pub5(c).payload == b"kept"


def test_clean_start_discards_session(broker):
    # [MQTT-3.1.2-4] Clean Start 1 discards an existing session
    b = broker()
    c = open5(b.port, "cs", clean=False, properties=se(60))
    sub5(c, 1, [("cs/t", 1)])
    leave(b, c, "cs")
    p = open5(b.port, "p")
    pub5(p, "cs/t", b"old", qos=1)
    c = open5(b.port, "cs", clean=True, properties=se(60), present=False)
    sub5(c, 1, [("fence", 0)])
    assert fence(b, c) == []
    pub5(p, "cs/t", b"old sub gone", qos=1)
    assert fence(b, c) == []


def test_disconnect_sets_session_expiry_0(broker):
    # [MQTT-3.1.2-23] the DISCONNECT's Session Expiry Interval replaces the
    # CONNECT's: 60 -> 0 ends the session at once
    b = broker()
    c = open5(b.port, "d0", clean=False, properties=se(60))
    sub5(c, 1, [("d0", 1)])
    leave(b, c, "d0", 0, se(0))
    p = open5(b.port, "p")
    pub5(p, "d0", b"lost", qos=1)
    c = open5(b.port, "d0", clean=False, properties=se(60), present=False)
    sub5(c, 1, [("fence", 0)])
    assert fence(b, c) == []


@pytest.mark.slow
def test_disconnect_shortens_session_expiry(broker):
    # 60 -> 1 at DISCONNECT: gone after a second
    b = broker()
    c = open5(b.port, "d1", clean=False, properties=se(60))
    sub5(c, 1, [("d1", 1)])
    leave(b, c, "d1", 0, se(1))
    time.sleep(2.5)  # the expiry is the point
    open5(b.port, "d1", clean=False, properties=se(60), present=False)


def test_disconnect_lengthens_session_expiry(broker):
    # 1 -> 60 at DISCONNECT (non-zero to non-zero is allowed): still there
    # after the original second
    b = broker()
    c = open5(b.port, "dl", clean=False, properties=se(1))
    sub5(c, 1, [("dl", 1)])
    leave(b, c, "dl", 0, se(60))
    time.sleep(2.5)  # past the CONNECT's interval
    open5(b.port, "dl", clean=False, properties=se(60), present=True)


def test_disconnect_session_expiry_0_to_nonzero_refused(broker):
    # [MQTT-3.14.2-2] 0 at CONNECT, non-zero at DISCONNECT: protocol
    # error (DISCONNECT 0x82); the session still ends
    b = broker()
    c = open5(b.port, "zn", clean=False)
    sub5(c, 1, [("zn", 1)])
    c.send(m5.disconnect(0, se(60)))
    expect_disconnect(c, 0x82)
    open5(b.port, "zn", clean=False, present=False)


def test_takeover_v5_keeps_session(broker):
    # a takeover with clean start 0 resumes the session (present 1) and
    # moves unacknowledged messages, re-sent with DUP
    b = broker()
    old = open5(b.port, "tk", clean=False, properties=se(60))
    sub5(old, 1, [("tk", 1)])
    p = open5(b.port, "p")
    pub5(p, "tk", b"pending", qos=1)
    m = recv_pub5(old, ack=False)
    new = open5(b.port, "tk", clean=False, properties=se(60), present=True)
    expect_disconnect(old, 0x8E)
    m2 = recv_pub5(new)
    assert (m2.payload, m2.pid, m2.dup) == (b"pending", m.pid, True)


# ---- Message Expiry Interval ----------------------------------------------

@pytest.mark.slow
def test_message_expiry_offline_queue(broker):
    # [MQTT-3.3.2-5] a queued message past its expiry is not delivered;
    # [MQTT-3.3.2-6] the others carry the time left
    b = broker()
    c = open5(b.port, "mq", clean=False, properties=se(60))
    sub5(c, 1, [("mq/t", 1)])
    leave(b, c, "mq")
    p = open5(b.port, "p")
    pub5(p, "mq/t", b"short", qos=1, pid=1,
         properties=[(m5.MESSAGE_EXPIRY, 1)])
    pub5(p, "mq/t", b"long", qos=1, pid=2,
         properties=[(m5.MESSAGE_EXPIRY, 60)])
    pub5(p, "mq/t", b"forever", qos=1, pid=3)
    time.sleep(2.5)  # the expiry is the point
    c = open5(b.port, "mq", clean=False, properties=se(60), present=True)
    got = [recv_pub5(c) for _ in range(2)]
    assert [m.payload for m in got] == [b"long", b"forever"]
    left = got[0].props.get(m5.MESSAGE_EXPIRY)
    assert left is not None and 55 <= left <= 58, got[0]
    assert m5.MESSAGE_EXPIRY not in got[1].props
    pub5(p, "mq/t", b"fence", qos=1, pid=4)
    assert collect_until5(c, "mq/t", b"fence") == []


@pytest.mark.slow
def test_message_expiry_offline_queue_v311_subscriber(broker):
    # expiry applies whatever the subscriber's version: a 3.1.1 session
    # does not get an expired message either
    b = broker()
    c = w.open_client(b.port, "old", clean=False)
    w.sub(c, 1, [("mq4", 1)])
    mark = b.mark()
    c.send(w.DISCONNECT_BYTES)
    c.expect_closed()
    b.wait_log("Client old disconnected.", since=mark)
    p = open5(b.port, "p")
    pub5(p, "mq4", b"short", qos=1, pid=1,
         properties=[(m5.MESSAGE_EXPIRY, 1)])
    pub5(p, "mq4", b"stays", qos=1, pid=2)
    time.sleep(2.5)  # the expiry is the point
    c = w.open_client(b.port, "old", clean=False, present=True)
    m = w.recv_pub(c)
    assert m.raw == w.publish("mq4", b"stays", qos=1, pid=m.pid), m


@pytest.mark.slow
def test_message_expiry_retained(broker):
    # a retained message past its expiry is no longer sent to new
    # subscribers; before that it carries the time left
    b = broker()
    p = open5(b.port, "p")
    pub5(p, "mr/short", b"s", qos=1, retain=True, pid=1,
         properties=[(m5.MESSAGE_EXPIRY, 1)])
    pub5(p, "mr/long", b"l", qos=1, retain=True, pid=2,
         properties=[(m5.MESSAGE_EXPIRY, 60)])
    s = open5(b.port, "s1")
    sub5(s, 1, [("mr/short", 1)])
    m = recv_pub5(s)
    assert m.retain and m.props.get(m5.MESSAGE_EXPIRY) in (0, 1), m
    time.sleep(2.5)  # the expiry is the point
    s = open5(b.port, "s2")
    sub5(s, 1, [("mr/+", 1), ("fence", 0)])
    got = fence(b, s)
    assert [(m.topic, m.payload) for m in got] == [("mr/long", b"l")]
    left = got[0].props.get(m5.MESSAGE_EXPIRY)
    assert left is not None and 55 <= left <= 58, got[0]


@pytest.mark.slow
def test_message_expiry_counts_down_on_resend(broker):
    # [MQTT-3.3.2-6] a message in flight, re-sent after a reconnect, carries
    # the time left then, not the time left at its first sending
    b = broker()
    c = open5(b.port, "mi", clean=False, properties=se(60))
    sub5(c, 1, [("mi", 1)])
    p = open5(b.port, "p")
    pub5(p, "mi", b"x", qos=1, properties=[(m5.MESSAGE_EXPIRY, 30)])
    m = recv_pub5(c, ack=False)
    first = m.props.get(m5.MESSAGE_EXPIRY)
    assert first is not None and 29 <= first <= 30, m
    drop(b, c, "mi")
    time.sleep(1.1)
    c = open5(b.port, "mi", clean=False, properties=se(60), present=True)
    m2 = recv_pub5(c)
    assert m2.dup and m2.payload == b"x"
    again = m2.props.get(m5.MESSAGE_EXPIRY)
    assert again is not None and again < first, (m, m2)


@pytest.mark.slow
def test_message_expiry_does_not_cancel_started_delivery(broker):
    # [MQTT-3.3.2-5] only messages whose onward delivery has not started
    # are deleted at expiry; one in flight is re-sent on reconnect
    # [MQTT-4.4.0-1], expired or not
    b = broker()
    c = open5(b.port, "ms", clean=False, properties=se(60))
    sub5(c, 1, [("ms", 1)])
    p = open5(b.port, "p")
    pub5(p, "ms", b"started", qos=1, properties=[(m5.MESSAGE_EXPIRY, 1)])
    m = recv_pub5(c, ack=False)
    drop(b, c, "ms")
    time.sleep(2.5)  # past the expiry
    c = open5(b.port, "ms", clean=False, properties=se(60), present=True)
    m2 = recv_pub5(c)
    assert (m2.payload, m2.pid, m2.dup) == (b"started", m.pid, True)


# ---- wills ------------------------------------------------------------------

def watcher(b, topic="will/#", cid="watcher"):
    s = open5(b.port, cid)
    assert sub5(s, 1, [(topic, 2), ("fence", 0)]) == [2, 0]
    return s


WILL_PROPS = [
    (m5.PAYLOAD_FORMAT, 1),
    (m5.MESSAGE_EXPIRY, 120),
    (m5.CONTENT_TYPE, "application/json"),
    (m5.RESPONSE_TOPIC, "will/replies"),
    (m5.CORRELATION_DATA, b"\x01\x02"),
    (m5.USER_PROPERTY, ("a", "1")),
    (m5.USER_PROPERTY, ("b", "2")),
    (m5.USER_PROPERTY, ("a", "3")),
]


def test_will_properties_travel_with_will(broker):
    # [MQTT-3.1.3.2] the will properties are sent with the will message;
    # Message Expiry Interval counts from the publication
    b = broker()
    s = watcher(b)
    d = open5(b.port, "dev", will=("will/dev", b'{"up":false}', 1, False,
                                   WILL_PROPS))
    drop(b, d, "dev")
    m = recv_pub5(s)
    assert (m.topic, m.payload, m.qos) == ("will/dev", b'{"up":false}', 1)
    for pid in (m5.PAYLOAD_FORMAT, m5.CONTENT_TYPE, m5.RESPONSE_TOPIC,
                m5.CORRELATION_DATA):
        assert m.props.all(pid) == [v for k, v in WILL_PROPS if k == pid], m
    assert m.user == [("a", "1"), ("b", "2"), ("a", "3")], m
    left = m.props.get(m5.MESSAGE_EXPIRY)
    assert left is not None and 118 <= left <= 120, m
    assert m5.WILL_DELAY not in m.props


def test_will_to_v311_subscriber_without_properties(broker):
    b = broker()
    s = w.open_client(b.port, "old")
    w.sub(s, 1, [("will/#", 1)])
    d = open5(b.port, "dev", will=("will/dev", b"gone", 1, False,
                                   WILL_PROPS))
    drop(b, d, "dev")
    m = w.recv_pub(s)
    assert m.raw == w.publish("will/dev", b"gone", qos=1, pid=m.pid), m


def test_will_retained_keeps_properties(broker):
    b = broker()
    d = open5(b.port, "dev", will=("will/r", b"gone", 1, True,
                                   user(("k", "v"))))
    drop(b, d, "dev")
    s = open5(b.port, "late")
    sub5(s, 1, [("will/r", 1)])
    m = recv_pub5(s)
    assert m.retain and m.payload == b"gone" and m.user == [("k", "v")], m


def test_no_will_on_normal_disconnect(broker):
    # [MQTT-3.1.2-10] DISCONNECT 0x00: the will is discarded
    b = broker()
    s = watcher(b)
    d = open5(b.port, "nd", will=("will/nd", b"gone", 1, False))
    leave(b, d, "nd", 0x00)
    assert fence(b, s) == []


def test_will_on_disconnect_with_will_message(broker):
    # DISCONNECT 0x04 disconnect with will message: the will is published
    b = broker()
    s = watcher(b)
    d = open5(b.port, "dw", will=("will/dw", b"bye", 1, False,
                                  user(("why", "0x04"))))
    leave(b, d, "dw", 0x04)
    m = recv_pub5(s)
    assert (m.topic, m.payload) == ("will/dw", b"bye")
    assert m.user == [("why", "0x04")]


def test_will_on_network_drop(broker):
    b = broker()
    s = watcher(b)
    d = open5(b.port, "dr", will=("will/dr", b"lost", 2, False))
    drop(b, d, "dr")
    m = recv_pub5(s)
    assert (m.topic, m.payload, m.qos) == ("will/dr", b"lost", 2)


def test_will_on_protocol_error(broker):
    # the server closing for a protocol error publishes the will
    b = broker()
    s = watcher(b)
    d = open5(b.port, "pe", will=("will/pe", b"bad", 1, False))
    d.send(m5.publish("a/#", b"wildcard in a topic name"))
    expect_disconnect(d, {0x81, 0x82, 0x90})
    assert recv_pub5(s).payload == b"bad"


@pytest.mark.slow
def test_will_delay(broker):
    # [MQTT-3.1.3-9] Will Delay Interval 2 s: the will is published after
    # the delay, not at the close
    b = broker()
    s = watcher(b)
    d = open5(b.port, "wd", properties=se(60),
              will=("will/wd", b"late", 1, False, [(m5.WILL_DELAY, 2)]))
    t0 = time.monotonic()
    drop(b, d, "wd")
    m = recv_pub5(s, timeout=6)
    dt = time.monotonic() - t0
    assert m.payload == b"late"
    assert 1.7 <= dt <= 4.0, "will after %.2fs, want ~2 s" % dt


@pytest.mark.slow
def test_will_delay_cancelled_by_reconnect(broker):
    # [MQTT-3.1.3-9] a new connection to the session within the delay: the
    # will is not sent
    b = broker()
    s = watcher(b)
    d = open5(b.port, "wc", clean=False, properties=se(60),
              will=("will/wc", b"never", 1, False, [(m5.WILL_DELAY, 2)]))
    drop(b, d, "wc")
    d = open5(b.port, "wc", clean=False, properties=se(60), present=True)
    time.sleep(2.5)  # past the delay: the will would have gone by now
    assert fence(b, s) == []
    assert d.is_open()


@pytest.mark.slow
def test_will_sent_at_session_end_if_sooner(broker):
    # the will goes when the session ends, if that comes before the
    # delay: Session Expiry 1 s, Will Delay 10 s
    b = broker()
    s = watcher(b)
    d = open5(b.port, "ws", properties=se(1),
              will=("will/ws", b"session over", 1, False,
                    [(m5.WILL_DELAY, 10)]))
    t0 = time.monotonic()
    drop(b, d, "ws")
    m = recv_pub5(s, timeout=6)
    dt = time.monotonic() - t0
    assert m.payload == b"session over"
    assert 0.7 <= dt <= 3.0, "will after %.2fs, want ~1 s" % dt


def test_will_delay_with_session_expiry_0_is_immediate(broker):
    # Session Expiry 0: the session ends with the connection, and with it
    # the delay: the will goes at once (well before its 30 s delay)
    b = broker()
    s = watcher(b)
    d = open5(b.port, "w0", will=("will/w0", b"now", 1, False,
                                  [(m5.WILL_DELAY, 30)]))
    drop(b, d, "w0")
    assert recv_pub5(s, timeout=3).payload == b"now"


def test_will_delay_and_disconnect_0x04(broker):
    # DISCONNECT 0x04 with a will delay: published once the delay (or
    # here, the session: expiry 0) ends
    b = broker()
    s = watcher(b)
    d = open5(b.port, "w4", will=("will/w4", b"both", 1, False,
                                  [(m5.WILL_DELAY, 30)]))
    leave(b, d, "w4", 0x04)
    assert recv_pub5(s, timeout=3).payload == b"both"


@pytest.mark.slow
def test_will_delay_after_disconnect_0x04(broker):
    # DISCONNECT 0x04 with a kept session: the will waits for its delay
    b = broker()
    s = watcher(b)
    d = open5(b.port, "wd4", properties=se(60),
              will=("will/wd4", b"delayed", 1, False, [(m5.WILL_DELAY, 1)]))
    t0 = time.monotonic()
    leave(b, d, "wd4", 0x04)
    m = recv_pub5(s, timeout=5)
    dt = time.monotonic() - t0
    assert m.payload == b"delayed"
    assert 0.8 <= dt <= 3.0, "will after %.2fs, want ~1 s" % dt


def test_will_on_takeover(broker):
    # a takeover closes the old connection: its will (no delay) is
    # published, as for 3.1.1
    b = broker()
    s = watcher(b)
    old = open5(b.port, "tw", will=("will/tw", b"replaced", 1, False))
    open5(b.port, "tw")
    expect_disconnect(old, 0x8E)
    assert recv_pub5(s).payload == b"replaced"
