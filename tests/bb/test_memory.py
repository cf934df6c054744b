"""No heap allocation once the loop runs: the broker runs under the
LD_PRELOAD counter tests/tools/mallocount.so, which arms itself at the
first poll() and reports every malloc/calloc/realloc after that.

The traffic touches every path that takes memory: connects and
disconnects, QoS 0/1/2 both ways, retained set and cleared, subscribe and
unsubscribe, wills, takeover, persistent sessions with queued messages,
a packet larger than the read buffer, keepalive expiry, refused
connections, $SYS; and MQTT 5: properties, topic aliases both ways,
subscription identifiers, shared subscriptions, message expiry, a delayed
will, reason codes and the broker's DISCONNECT."""

import os
import socket
import time

import pytest

import mqtt5wire as m5
import mqttwire as w
from conftest import ROOT

SHIM = os.path.join(ROOT, "tests", "tools", "mallocount.so")


@pytest.fixture
def counted(broker):
    if not os.path.exists(SHIM):
        pytest.fail("%s missing: make tests/tools/mallocount.so" % SHIM)
    os.environ["LD_PRELOAD"] = SHIM
    try:
        b = broker("sys_interval 1\nmax_connections 6\n"
                   "max_queued_messages 5\n")
    finally:
        del os.environ["LD_PRELOAD"]
    b.wait_log("mallocount: armed")
    return b


def test_no_malloc_after_start(counted):
    b = counted
    port = b.port
    sub = w.open_client(port, "sub", clean=False)
    assert w.sub(sub, 1, [("a/#", 2), ("$SYS/broker/uptime", 0)]) == [2, 0]
    pubc = w.open_client(port, "pub")
    for q in (0, 1, 2):
        w.pub(pubc, "a/q%d" % q, b"x" * 10, qos=q, pid=10 + q)
    big = b"B" * 200000  # larger than the 64 KiB read buffer
    w.pub(pubc, "a/big", big, qos=1, pid=20)
    seen = {}
    while len(seen) < 4:
        p = w.recv_pub(sub, timeout=5)
        if p.topic.startswith("a/"):
            seen[p.topic] = p.payload
    assert seen["a/big"] == big
    # retained set, delivered, cleared
    w.pub(pubc, "r/1", b"kept", qos=1, retain=True, pid=21)
    r = w.open_client(port, "ret")
    w.sub(r, 1, [("r/#", 1)])
    p = w.recv_pub(r)
    assert p.retain and p.payload == b"kept"
    w.unsub(r, 2, ["r/#"])
    w.pub(pubc, "r/1", b"", retain=True)
    r.close()
    # a will on a dropped connection, and a takeover
    willy = w.open_client(port, "willy", will=("a/will", b"bye", 1, False))
    willy.close()
    p = w.recv_pub(sub)
    while p.topic != "a/will":
        p = w.recv_pub(sub)
    t1 = w.open_client(port, "twin")
    t2 = w.open_client(port, "twin")
    t1.expect_closed()
    t2.close()
    # persistent session: messages queue while offline, beyond its limit
    sub.close()
    for i in range(8):
        w.pub(pubc, "a/off", str(i).encode(), qos=1, pid=30 + i)
    sub = w.open_client(port, "sub", clean=False, present=True)
    got = [w.recv_pub(sub).payload for _ in range(5)]
    assert got == [b"0", b"1", b"2", b"3", b"4"]
    # refused connections past max_connections (6)
    extra = [socket.create_connection(("127.0.0.1", port)) for _ in range(6)]
    b.wait_log("refused")
    for s in extra:
        s.close()
    # keepalive expiry (the closed extras free their slots when reaped)
    deadline = time.monotonic() + 5
    while True:
        try:
            k = w.open_client(port, "sleepy", keepalive=1)
            break
        except (w.Closed, AssertionError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    k.expect_closed(timeout=4)
    mqtt5_traffic(port)
    # $SYS ticks (sys_interval 1) while all this ran
    p = w.recv_pub(sub, timeout=3)
    while not p.topic.startswith("$SYS"):
        p = w.recv_pub(sub, timeout=3)
    sub.send(w.packet(0xE0, b""))
    pubc.close()
    assert b.stop() == 0
    bad = b.find("mallocount: ") 
    bad = [ln for ln in bad if "armed" not in ln]
    assert not bad, "allocations after the loop started:\n" + "\n".join(bad)


def mqtt5_traffic(port):
    """The MQTT 5 paths that take store memory: aliases, properties,
    shared and identified subscriptions, delayed wills, expiry."""
    sub = m5.open5(port, "s5", clean=True, properties=[
        (m5.TOPIC_ALIAS_MAXIMUM, 4), (m5.SESSION_EXPIRY, 30)])
    assert m5.sub5(sub, 1, [("v/#", 1)],
                   properties=[(m5.SUBSCRIPTION_ID, 9)]) == [1]
    assert m5.sub5(sub, 2, [("$share/g/v/+", 1)]) == [1]
    pub = m5.open5(port, "p5", properties=[(m5.TOPIC_ALIAS_MAXIMUM, 4)])
    props = [(m5.USER_PROPERTY, ("k", "v")), (m5.CONTENT_TYPE, "t"),
             (m5.MESSAGE_EXPIRY, 60), (m5.TOPIC_ALIAS, 1)]
    m5.pub5(pub, "v/1", b"one", qos=1, pid=1, properties=props)
    m5.pub5(pub, "", b"two", qos=1, pid=2, properties=[(m5.TOPIC_ALIAS, 1)])
    got = [m5.recv_pub5(sub).payload for _ in range(4)]
    assert sorted(got) == [b"one", b"one", b"two", b"two"]
    # a delayed will, cancelled by the return within the delay
    wl = m5.open5(port, "w5", clean=False, properties=[
        (m5.SESSION_EXPIRY, 30)],
        will=("v/will", b"late", 0, False, [(m5.WILL_DELAY, 30)]))
    wl.close()
    wl = m5.open5(port, "w5", clean=False, present=True, properties=[
        (m5.SESSION_EXPIRY, 0)])
    wl.send(m5.disconnect(0))
    # a protocol error: the broker's DISCONNECT
    bad = m5.open5(port, "bad5")
    bad.send(m5.publish("", b"x", properties=[(m5.TOPIC_ALIAS, 3)]))
    m5.expect_disconnect(bad, 0x94)
    sub.send(m5.disconnect(0))
    pub.send(m5.disconnect(0))
