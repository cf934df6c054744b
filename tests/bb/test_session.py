"""Sessions: clean session 0/1, session present, offline queues, resend
with DUP after reconnect, takeover, queue limits, slow subscribers."""

import socket
import time

import pytest

import mqttwire as w
from mqttwire import open_client, sub, pub, recv_pub, collect_until


def offline(b, c, cid):
    """Close c without DISCONNECT and wait until the broker noticed."""
    m = b.mark()
    c.close()
    b.wait_log("Client %s closed its connection." % cid, since=m)


def gone(b, c, cid):
    """DISCONNECT c and wait until the broker noticed."""
    m = b.mark()
    c.send(w.DISCONNECT_BYTES)
    c.expect_closed()
    b.wait_log("Client %s disconnected." % cid, since=m)


def test_session_present_flag(broker):
    # [MQTT-3.2.2-3] new session: 0; [MQTT-3.2.2-2] resumed: 1;
    # [MQTT-3.2.2-1] clean session 1: 0 and the old session is discarded
    # [MQTT-3.1.2-6]
    b = broker()
    c = open_client(b.port, "sp", clean=False, present=False)
    gone(b, c, "sp")
    c = open_client(b.port, "sp", clean=False, present=True)
    gone(b, c, "sp")
    c = open_client(b.port, "sp", clean=True, present=False)
    gone(b, c, "sp")
    c = open_client(b.port, "sp", clean=False, present=False)
    c.close()


def test_connack_bytes_session_present(broker):
    b = broker()
    c = open_client(b.port, "spb", clean=False)
    gone(b, c, "spb")
    c = w.Conn(b.port)
    c.send(w.connect("spb", clean=False))
    c.expect(b"\x20\x02\x01\x00")


def test_subscriptions_survive(broker):
    # [MQTT-3.1.2-4] clean session 0: subscriptions kept after disconnect
    b = broker()
    c = open_client(b.port, "keep", clean=False)
    sub(c, 1, [("ks/#", 1)])
    gone(b, c, "keep")
    c = open_client(b.port, "keep", clean=False, present=True)
    p = open_client(b.port, "p")
    pub(p, "ks/1", b"hello", qos=1)
    assert recv_pub(c).payload == b"hello"


def test_clean_session_discards(broker):
    # [MQTT-3.1.2-6] clean session 1 discards the previous session
    b = broker()
    c = open_client(b.port, "cs", clean=False)
    sub(c, 1, [("cs/#", 1), ("fence", 0)])
    gone(b, c, "cs")
    c = open_client(b.port, "cs", clean=True, present=False)
    sub(c, 1, [("fence", 0)])
    p = open_client(b.port, "p")
    pub(p, "cs/x", b"old sub", qos=1)
    pub(p, "fence", b"fence")
    assert collect_until(c, "fence") == []


def test_clean_session_1_not_kept(broker):
    # [MQTT-3.1.2-6] a clean session ends with the connection
    b = broker()
    c = open_client(b.port, "tmp", clean=True)
    sub(c, 1, [("tmp/#", 1)])
    gone(b, c, "tmp")
    p = open_client(b.port, "p")
    pub(p, "tmp/x", b"lost", qos=1)
    c = open_client(b.port, "tmp", clean=False, present=False)
    sub(c, 1, [("fence", 0)])
    pub(p, "fence", b"fence")
    assert collect_until(c, "fence") == []


def test_offline_queue_qos12_not_qos0(broker):
    # [MQTT-3.1.2-5] QoS 1 and 2 stored for a disconnected session, QoS 0
    # only with queue_qos0_messages true (default false)
    b = broker()
    c = open_client(b.port, "q", clean=False)
    sub(c, 1, [("oq", 2)])
    gone(b, c, "q")
    p = open_client(b.port, "p")
    for i, q in enumerate([0, 1, 2, 0, 1, 2]):
        pub(p, "oq", "m%d q%d" % (i, q), qos=q, pid=i + 1)
    c = open_client(b.port, "q", clean=False, present=True)
    got = [recv_pub(c) for _ in range(4)]
    assert [m.payload for m in got] == [b"m1 q1", b"m2 q2", b"m4 q1",
                                        b"m5 q2"]
    assert [m.qos for m in got] == [1, 2, 1, 2]
    pub(p, "oq", b"fence")
    assert collect_until(c, "oq", b"fence") == []


def test_offline_queue_qos0_when_enabled(broker):
    # queue_qos0_messages true: QoS 0 queued for offline sessions too
    b = broker("queue_qos0_messages true\n")
    c = open_client(b.port, "q0", clean=False)
    sub(c, 1, [("oq0", 1)])
    gone(b, c, "q0")
    p = open_client(b.port, "p")
    pub(p, "oq0", b"zero", qos=0)
    pub(p, "oq0", b"one", qos=1)
    c = open_client(b.port, "q0", clean=False, present=True)
    got = [recv_pub(c) for _ in range(2)]
    assert [(m.payload, m.qos) for m in got] == [(b"zero", 0), (b"one", 1)]


def test_unacked_resent_with_dup_in_order(broker):
    # [MQTT-4.4.0-1] unacknowledged PUBLISH re-sent on reconnect with the
    # same packet ids, DUP 1 [MQTT-3.3.1-1], original order [MQTT-4.6.0-1]
    b = broker()
    c = open_client(b.port, "rs", clean=False)
    sub(c, 1, [("rs", 2)])
    p = open_client(b.port, "p")
    for i in range(3):
        pub(p, "rs", "m%d" % i, qos=1 + i % 2, pid=i + 1)
    first = [recv_pub(c, ack=False) for _ in range(3)]
    assert [m.dup for m in first] == [False] * 3
    offline(b, c, "rs")
    c = open_client(b.port, "rs", clean=False, present=True)
    again = [recv_pub(c, ack=False) for _ in range(3)]
    assert [(m.payload, m.pid, m.qos) for m in again] == \
        [(m.payload, m.pid, m.qos) for m in first]
    assert [m.dup for m in again] == [True] * 3
    for m in again:
        w.ack_pub(c, m)
    pub(p, "rs", b"fence")
    assert collect_until(c, "rs", b"fence") == []


def test_pubrel_resent_after_reconnect(broker):
    # [MQTT-4.4.0-1] a QoS 2 message already PUBREC'd: the server re-sends
    # PUBREL (not the PUBLISH) after reconnect; PUBCOMP finishes it
    b = broker()
    c = open_client(b.port, "rel", clean=False)
    sub(c, 1, [("rel", 2)])
    p = open_client(b.port, "p")
    pub(p, "rel", b"two", qos=2)
    m = recv_pub(c, ack=False)
    c.send(w.pubrec(m.pid))
    c.expect(w.pubrel(m.pid))
    offline(b, c, "rel")
    c = open_client(b.port, "rel", clean=False, present=True)
    c.expect(w.pubrel(m.pid))
    c.send(w.pubcomp(m.pid))
    pub(p, "rel", b"fence")
    assert collect_until(c, "rel", b"fence") == []


def test_queued_then_inflight_resend_order(broker):
    # messages queued while offline come after the re-sent inflight ones
    b = broker()
    c = open_client(b.port, "ord", clean=False)
    sub(c, 1, [("o", 1)])
    p = open_client(b.port, "p")
    pub(p, "o", b"a", qos=1)
    assert recv_pub(c, ack=False).payload == b"a"
    offline(b, c, "ord")
    pub(p, "o", b"b", qos=1)
    pub(p, "o", b"c", qos=1)
    c = open_client(b.port, "ord", clean=False, present=True)
    got = [recv_pub(c) for _ in range(3)]
    assert [(m.payload, m.dup) for m in got] == [(b"a", True), (b"b", False),
                                                 (b"c", False)]


def test_max_queued_messages(broker):
    # max_queued_messages caps what an offline session keeps; the oldest
    # are kept (Mosquitto drops new messages when full)
    b = broker("max_queued_messages 3\n")
    c = open_client(b.port, "mq", clean=False)
    sub(c, 1, [("mq", 1)])
    gone(b, c, "mq")
    p = open_client(b.port, "p")
    for i in range(8):
        pub(p, "mq", str(i), qos=1, pid=i + 1)
    c = open_client(b.port, "mq", clean=False, present=True)
    sub(c, 2, [("fence", 0)])
    pub(p, "fence", b"fence")
    got = [m.payload for m in collect_until(c, "fence")]
    assert got == [b"0", b"1", b"2"]


def test_takeover_keeps_session(broker):
    # [MQTT-3.1.4-2] takeover closes the old connection; with clean session
    # 0 the new one resumes the session (present 1) and its subscriptions
    b = broker()
    old = open_client(b.port, "tk", clean=False)
    sub(old, 1, [("tk", 1)])
    new = open_client(b.port, "tk", clean=False, present=True)
    old.expect_closed()
    b.wait_log("Client tk already connected, closing old connection.")
    p = open_client(b.port, "p")
    pub(p, "tk", b"to new", qos=1)
    assert recv_pub(new).payload == b"to new"


def test_takeover_inflight_moves(broker):
    # an unacknowledged message of the old connection is re-sent on the new
    b = broker()
    old = open_client(b.port, "tm", clean=False)
    sub(old, 1, [("tm", 1)])
    p = open_client(b.port, "p")
    pub(p, "tm", b"pending", qos=1)
    m = recv_pub(old, ack=False)
    new = open_client(b.port, "tm", clean=False, present=True)
    old.expect_closed()
    m2 = recv_pub(new)
    assert (m2.payload, m2.pid, m2.dup) == (b"pending", m.pid, True)


def test_takeover_clean_session_1(broker):
    b = broker()
    old = open_client(b.port, "tc", clean=False)
    sub(old, 1, [("tc", 1)])
    new = open_client(b.port, "tc", clean=True, present=False)
    old.expect_closed()
    sub(new, 1, [("fence", 0)])
    p = open_client(b.port, "p")
    pub(p, "tc", b"old sub", qos=1)
    pub(p, "fence", b"fence")
    assert collect_until(new, "fence") == []


def test_many_takeovers(broker):
    # flapping client: every takeover closes the previous connection
    b = broker()
    conns = [open_client(b.port, "flap", clean=False) for _ in range(10)]
    for c in conns[:-1]:
        c.expect_closed()
    assert conns[-1].is_open()


@pytest.mark.slow
def test_keepalive_timeout(broker):
    # [MQTT-3.1.2-24] 1.5 x keepalive without a packet: closed
    b = broker()
    t0 = time.monotonic()
    c = open_client(b.port, "ka", keepalive=1)
    c.expect_closed(timeout=5)
    dt = time.monotonic() - t0
    assert 1.0 <= dt <= 3.5, "closed after %.2fs, want ~1.5s" % dt
    b.wait_log("Client ka has exceeded timeout, disconnecting.")


@pytest.mark.slow
def test_keepalive_pings_keep_alive(broker):
    # any packet (here PINGREQ every 0.5 s) resets the keepalive timer
    b = broker()
    c = open_client(b.port, "kp", keepalive=1)
    end = time.monotonic() + 3.2
    while time.monotonic() < end:
        time.sleep(0.5)  # a client's ping period, not a readiness wait
        assert c.is_open(), "closed despite PINGREQ every 0.5 s"


def test_slow_subscriber_qos1_disconnected(broker):
    # a subscriber that never acknowledges: past max_inflight its messages
    # queue; past max_queued_messages it is disconnected, while the
    # publisher and other subscribers carry on
    b = broker("max_inflight_messages 2\nmax_queued_messages 5\n")
    slow = open_client(b.port, "slow")
    sub(slow, 1, [("fl", 1)])
    good = open_client(b.port, "good")
    sub(good, 1, [("fl", 1)])
    p = open_client(b.port, "p")
    for i in range(20):
        pub(p, "fl", str(i), qos=1, pid=i + 1)
        assert int(recv_pub(good).payload) == i
    got = []
    try:
        while True:
            got.append(recv_pub(slow, ack=False, timeout=3))
    except w.Closed:
        pass
    except w.Timeout:
        pytest.fail("slow subscriber still connected after %d messages"
                    % len(got))
    assert len(got) <= 2 + 5, "slow got %d, then was closed" % len(got)


@pytest.mark.slow
def test_slow_subscriber_not_reading_disconnected(broker):
    # a subscriber that stops reading (TCP window full) while a publisher
    # floods QoS 0: disconnected once its queue passes max_queued_messages;
    # others continue
    b = broker("max_queued_messages 10\n")
    slow = open_client(b.port, "stuck", conn_kw={"rcvbuf": 4096})
    sub(slow, 1, [("flood", 0)])
    good = open_client(b.port, "reader")
    sub(good, 1, [("flood/end", 1)])
    p = open_client(b.port, "p")
    chunk = b"z" * 2048
    for i in range(4000):  # 8 MB: more than the kernel buffers hold
        p.send(w.publish("flood", chunk))
    pub(p, "flood/end", b"done", qos=1)
    assert recv_pub(good, timeout=10).payload == b"done"
    # now read what the stuck client has: it must end in a close
    deadline = time.monotonic() + 10
    n = 0
    try:
        while time.monotonic() < deadline:
            slow.recv_packet(timeout=2)
            n += 1
    except w.Closed:
        return
    except w.Timeout:
        pass
    pytest.fail("stuck subscriber not disconnected (read %d packets, then "
                "silence)" % n)


def test_max_queued_bytes(broker):
    # max_queued_bytes caps an offline session's queue by size too
    b = broker("max_queued_bytes 250\n")
    c = open_client(b.port, "qb", clean=False)
    sub(c, 1, [("qb", 1)])
    gone(b, c, "qb")
    p = open_client(b.port, "p")
    for i in range(5):
        pub(p, "qb", str(i) * 100, qos=1, pid=i + 1)
    c = open_client(b.port, "qb", clean=False, present=True)
    sub(c, 2, [("fence", 0)])
    pub(p, "fence", b"fence")
    got = [m.payload[:1] for m in collect_until(c, "fence")]
    assert got in ([b"0", b"1"], [b"0", b"1", b"2"]), got


# ---- mqttpx pool limits (each full pool has a documented policy) ----------

def test_max_sessions_connack_3(broker):
    # session pool full: CONNACK 0x03 server unavailable, then close;
    # known sessions still connect; a freed slot is reused
    b = broker("max_sessions 2\n")
    a = open_client(b.port, "a", clean=False)
    c2 = open_client(b.port, "b")
    x = w.Conn(b.port)
    x.send(w.connect("c"))
    x.expect(w.connack(0, 3))
    x.expect_closed()
    b.wait_log("max_sessions")
    a2 = open_client(b.port, "a", clean=False, present=True)  # takeover
    a.expect_closed()
    gone(b, c2, "b")  # clean session: its slot is freed
    c = open_client(b.port, "c")
    assert a2.is_open() and c.is_open()


def test_max_subscriptions_suback_failure(broker):
    # subscription pool full: SUBACK 0x80 for the filters that do not fit
    # [MQTT-3.8.4-5]; the others work
    b = broker("max_subscriptions 2\n")
    c = open_client(b.port, "s")
    assert sub(c, 1, [("s/1", 1), ("s/2", 1), ("s/3", 1)]) == [1, 1, 0x80]
    p = open_client(b.port, "p")
    pub(p, "s/3", b"no sub", qos=1)
    pub(p, "s/2", b"yes", qos=1)
    assert recv_pub(c).payload == b"yes"
    w.unsub(c, 2, ["s/1"])
    assert sub(c, 3, [("s/3", 1)]) == [1]
