"""MQTT 5.0 and SIGHUP: what a CONNACK told a client (Topic Alias Maximum,
Receive Maximum) holds for that connection until it ends; a reload
applies to later connections. A client that keeps to what it was told is
never disconnected for it, and one that goes beyond it is."""

import signal

import mqttwire as w
import mqtt5wire as m5
from mqtt5wire import open5, sub5, pub5, recv_pub5, expect_disconnect

BASE = "listener {port} 127.0.0.1\nallow_anonymous true\n"


def reload(b, extra, expect):
    """Rewrite the config to BASE + extra, SIGHUP, wait for the log line
    expect."""
    with open(b.conf_path, "w") as f:
        f.write((BASE + extra).replace("{port}", str(b.port)))
    mark = b.mark()
    b.send_signal(signal.SIGHUP)
    b.wait_log(expect, since=mark)


def alias(a, topic="", payload=b"x", qos=1, pid=1):
    return m5.publish(topic, payload, qos=qos, pid=pid,
                      properties=[(m5.TOPIC_ALIAS, a)])


def test_client_with_aliases_leaves_after_reload(broker):
    # a client that set an alias before a reload raising max_topic_alias
    # leaves normally, and the broker carries on
    b = broker("max_topic_alias 2\n")
    c = open5(b.port, "c")
    pub5(c, "la", b"x", qos=1, properties=[(m5.TOPIC_ALIAS, 1)])
    reload(b, "max_topic_alias 10\n", "Reload: max_topic_alias 10")
    mark = b.mark()
    c.send(m5.disconnect())
    c.expect_closed()
    b.wait_log("Client c disconnected", since=mark)
    assert open5(b.port, "after").is_open()


def test_topic_alias_maximum_raised_by_reload(broker):
    # told 2: alias 5 stays invalid on this connection (0x94), whatever a
    # reload says; a new connection is told 10 and may use it
    b = broker("max_topic_alias 2\n")
    s = open5(b.port, "s")
    sub5(s, 1, [("ra/#", 1)])
    old = open5(b.port, "old")
    assert old.connack.props.get(m5.TOPIC_ALIAS_MAXIMUM) == 2
    pub5(old, "ra/1", b"1", qos=1, pid=1, properties=[(m5.TOPIC_ALIAS, 1)])
    reload(b, "max_topic_alias 10\n", "Reload: max_topic_alias 10")
    new = open5(b.port, "new")
    assert new.connack.props.get(m5.TOPIC_ALIAS_MAXIMUM) == 10
    new.send(alias(5, "ra/5", b"new", pid=1))
    assert new.next5(w.PUBACK).rc == 0
    new.send(alias(5, "", b"new again", pid=2))
    assert new.next5(w.PUBACK).rc == 0
    old.send(alias(5, "ra/old5", b"beyond what it was told"))
    expect_disconnect(old, 0x94)
    got = [(m.topic, m.payload) for m in (recv_pub5(s) for _ in range(3))]
    assert got == [("ra/1", b"1"), ("ra/5", b"new"), ("ra/5", b"new again")]


def test_topic_alias_maximum_lowered_by_reload(broker):
    # told 10: aliases up to 10 keep working on this connection after a
    # reload to 2, those set before and new ones
    b = broker()
    s = open5(b.port, "s")
    sub5(s, 1, [("rl/#", 1)])
    old = open5(b.port, "old")
    assert old.connack.props.get(m5.TOPIC_ALIAS_MAXIMUM) == 10
    for a in range(1, 11):
        pub5(old, "rl/%d" % a, b"set", qos=1, pid=a,
             properties=[(m5.TOPIC_ALIAS, a)])
    reload(b, "max_topic_alias 2\n", "Reload: max_topic_alias 2")
    new = open5(b.port, "new")
    assert new.connack.props.get(m5.TOPIC_ALIAS_MAXIMUM) == 2
    pub5(old, "", b"used", qos=1, pid=20, properties=[(m5.TOPIC_ALIAS, 9)])
    pub5(old, "rl/x", b"reset", qos=1, pid=21,
         properties=[(m5.TOPIC_ALIAS, 7)])
    pub5(old, "", b"used", qos=1, pid=22, properties=[(m5.TOPIC_ALIAS, 7)])
    got = [(m.topic, m.payload) for m in (recv_pub5(s) for _ in range(13))]
    assert got[10:] == [("rl/9", b"used"), ("rl/x", b"reset"),
                        ("rl/x", b"used")], got
    new.send(alias(3, "rl/new3"))
    expect_disconnect(new, 0x94)
    assert old.is_open()


def test_topic_aliases_after_reload_to_zero(broker):
    # max_topic_alias 0 by reload: a connection told 10 may still use its
    # aliases; new connections are told none
    b = broker()
    s = open5(b.port, "s")
    sub5(s, 1, [("rz", 1)])
    old = open5(b.port, "old")
    pub5(old, "rz", b"1", qos=1, pid=1, properties=[(m5.TOPIC_ALIAS, 3)])
    reload(b, "max_topic_alias 0\n", "Reload: max_topic_alias 0")
    pub5(old, "", b"2", qos=1, pid=2, properties=[(m5.TOPIC_ALIAS, 3)])
    assert [recv_pub5(s).payload for _ in range(2)] == [b"1", b"2"]
    new = open5(b.port, "new")
    assert new.connack.props.get(m5.TOPIC_ALIAS_MAXIMUM, 0) == 0
    old.send(m5.disconnect())
    old.expect_closed()


def test_receive_maximum_lowered_by_reload(broker):
    # told Receive Maximum 4: four QoS 2 messages in flight stay allowed on
    # this connection after a reload to 2
    b = broker("max_inflight_messages 4\n")
    c = open5(b.port, "rm")
    assert c.connack.props.get(m5.RECEIVE_MAXIMUM) == 4
    reload(b, "max_inflight_messages 2\n", "Reload: max_inflight_messages 2")
    for pid in range(1, 5):
        c.send(m5.publish("rm", b"x", qos=2, pid=pid))
        r = c.next5(w.PUBREC)
        assert r.pid == pid and r.rc < 0x80, r
    for pid in range(1, 5):
        c.send(m5.pubrel(pid))
        assert c.next5(w.PUBCOMP).pid == pid
    new = open5(b.port, "new")
    assert new.connack.props.get(m5.RECEIVE_MAXIMUM) == 2
