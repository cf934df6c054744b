"""$SYS topics (Mosquitto's names), published retained every sys_interval."""

import re

import mqttwire as w
from conftest import version
from mqttwire import open_client, sub, pub, recv_pub, collect_until


def sys_value(c, topic, pred=lambda v: True, timeout=5.0):
    """Read PUBLISHes until one on topic whose payload satisfies pred."""
    seen = []
    while True:
        m = recv_pub(c, timeout=timeout)
        if m.topic == topic:
            v = m.payload.decode()
            seen.append(v)
            if pred(v):
                return m, v
        assert len(seen) < 20, "%s: never satisfied, saw %r" % (topic, seen)


def test_sys_version(broker):
    b = broker("sys_interval 1\n")
    c = open_client(b.port, "s")
    sub(c, 1, [("$SYS/broker/version", 0)])
    m, v = sys_value(c, "$SYS/broker/version")
    assert version() in v and "mqttpx" in v, v
    assert m.retain  # first delivery after SUBSCRIBE: the retained copy


def test_sys_uptime_and_clients(broker):
    b = broker("sys_interval 1\n")
    c = open_client(b.port, "s1")
    sub(c, 1, [("$SYS/broker/uptime", 0)])
    m, v = sys_value(c, "$SYS/broker/uptime")
    assert re.fullmatch(r"\d+ seconds", v), v
    c2 = open_client(b.port, "s2")
    sub(c2, 1, [("$SYS/broker/clients/connected", 0)])
    sys_value(c2, "$SYS/broker/clients/connected", lambda v: v == "2")
    c.send(w.DISCONNECT_BYTES)
    sys_value(c2, "$SYS/broker/clients/connected", lambda v: v == "1")


def test_sys_messages_received(broker):
    b = broker("sys_interval 1\n")
    c = open_client(b.port, "s")
    sub(c, 1, [("$SYS/broker/messages/received", 0)])
    m, v = sys_value(c, "$SYS/broker/messages/received")
    before = int(v)
    p = open_client(b.port, "p")
    for i in range(10):
        pub(p, "x", b"y", qos=1, pid=i + 1)
    sys_value(c, "$SYS/broker/messages/received",
              lambda v: int(v) >= before + 10)


def test_sys_not_matched_by_wildcards(broker):
    # [MQTT-4.7.2-1] '#' and '+/...' do not match $SYS topics
    b = broker("sys_interval 1\n")
    probe = open_client(b.port, "probe")
    sub(probe, 1, [("$SYS/broker/uptime", 0)])
    sys_value(probe, "$SYS/broker/uptime")  # the retained $SYS tree exists
    c = open_client(b.port, "all")
    sub(c, 1, [("#", 0), ("+/broker/#", 0), ("+/+/uptime", 0)])
    # two intervals pass: nothing from $SYS
    sys_value(probe, "$SYS/broker/uptime")
    sys_value(probe, "$SYS/broker/uptime")
    p = open_client(b.port, "p")
    pub(p, "fence", b"fence")
    got = [m.topic for m in collect_until(c, "fence")]
    assert got == []


def test_sys_hash_subscription(broker):
    b = broker("sys_interval 1\n")
    c = open_client(b.port, "s")
    sub(c, 1, [("$SYS/#", 0)])
    topics = set()
    while not {"$SYS/broker/version", "$SYS/broker/uptime",
               "$SYS/broker/clients/connected",
               "$SYS/broker/messages/received"} <= topics:
        topics.add(recv_pub(c, timeout=5).topic)
