"""CONNECT / CONNACK on the wire: exact bytes in, exact bytes (or a close)
out, plus the Mosquitto-worded log lines for each outcome."""

import re

import pytest

import mqttwire as w
from mqttwire import Conn, connect, connack


def raw(broker, data):
    c = Conn(broker.port)
    c.send(data)
    return c


def test_connect_311_ok(broker):
    # [MQTT-3.2.0-1] first packet from the server is CONNACK
    # [MQTT-3.2.2-1] clean session 1: session present 0
    b = broker()
    c = raw(b, connect("c311", clean=True))
    c.expect(connack(0, 0))
    assert c.is_open()


def test_connect_mqisdp_31_ok(broker):
    # MQTT 3.1: protocol name "MQIsdp", level 3
    b = broker()
    c = raw(b, connect("c31", proto="MQIsdp", level=3))
    c.expect(connack(0, 0))
    assert c.is_open()
    b.wait_log("as c31 (p1, c1, k60).")


def test_connect_log_lines(broker):
    # Mosquitto's words: New connection / New client connected (p2 = 3.1.1)
    b = broker()
    c = raw(b, connect("sensor-4", keepalive=60))
    c.expect(connack(0, 0))
    sp = c.local_port
    b.wait_log("New connection from 127.0.0.1:%d on port %d." % (sp, b.port))
    b.wait_log("New client connected from 127.0.0.1:%d as sensor-4 "
               "(p2, c1, k60)." % sp)
    c.send(w.DISCONNECT_BYTES)
    c.expect_closed()
    b.wait_log("Client sensor-4 disconnected.")


def test_connect_log_username(broker):
    b = broker()
    c = raw(b, connect("sensor-5", clean=False, keepalive=30,
                       username="alice", password="pw"))
    c.expect(connack(0, 0))
    b.wait_log("New client connected from 127.0.0.1:%d as sensor-5 "
               "(p2, c0, k30, u'alice')." % c.local_port)
    c.close()
    b.wait_log("Client sensor-5 closed its connection.")


def test_log_timestamp_prefix(broker):
    # log_timestamp true (default): "<unix time>: " starts each line
    b = broker()
    for t in b.log().splitlines():
        assert re.match(r"^\d{9,}: ", t), "no timestamp: %r" % t


def test_reserved_flag_closes(broker):
    # [MQTT-3.1.2-3] reserved Connect Flags bit 0 must be 0
    b = broker()
    c = raw(b, connect("r", flags=0x03))
    c.expect_closed()


@pytest.mark.parametrize("proto,level", [("MQTT", 3), ("MQTT", 6),
                                         ("MQIsdp", 4)])
def test_unsupported_level_connack_1(broker, proto, level):
    # [MQTT-3.1.2-2] unsupported protocol level: CONNACK 0x01, then close
    b = broker()
    c = raw(b, connect("lvl", proto=proto, level=level))
    c.expect(connack(0, 1))
    c.expect_closed()


@pytest.mark.parametrize("proto", ["MQTX", "mqtt", "MQIsdP", ""])
def test_wrong_protocol_name_closes(broker, proto):
    # [MQTT-3.1.2-1] a protocol name that is not MQTT: close, no CONNACK
    b = broker()
    c = raw(b, connect("pn", proto=proto, level=4))
    c.expect_closed()


def test_empty_client_id_clean_1(broker):
    # [MQTT-3.1.3-6] [MQTT-3.1.3-7] zero-length id with clean session 1:
    # the server assigns one
    b = broker()
    c = raw(b, connect("", clean=True))
    c.expect(connack(0, 0))
    assert c.is_open()
    c2 = raw(b, connect("", clean=True))  # ids are unique: no takeover
    c2.expect(connack(0, 0))
    assert c.is_open() and c2.is_open()


def test_empty_client_id_clean_0(broker):
    # [MQTT-3.1.3-8] zero-length id with clean session 0: CONNACK 0x02
    b = broker()
    c = raw(b, connect("", clean=False))
    c.expect(connack(0, 2))
    c.expect_closed()


@pytest.mark.parametrize("flags", [0x0A, 0x12, 0x22, 0x3A])
def test_will_flag_0_with_will_bits_closes(broker, flags):
    # [MQTT-3.1.2-11] [MQTT-3.1.2-13] will flag 0: will QoS must be 0
    # [MQTT-3.1.2-15] will flag 0: will retain must be 0
    b = broker()
    c = raw(b, connect("wf", flags=flags))
    c.expect_closed()


def test_will_qos_3_closes(broker):
    # [MQTT-3.1.2-14] will QoS 3 is malformed
    b = broker()
    c = raw(b, connect("wq3", will=("w/t", b"x", 3, False)))
    c.expect_closed()


def test_password_without_username_closes(broker):
    # [MQTT-3.1.2-22] password flag set, username flag clear (3.1.1)
    b = broker()
    body = (w.s16("MQTT") + bytes([4, 0x42]) + w.u16(60) + w.s16("pw1")
            + w.s16("secret"))
    c = raw(b, w.packet(0x10, body))
    c.expect_closed()


def test_anonymous_refused(broker):
    # allow_anonymous false and no username: CONNACK 0x05, close
    # [MQTT-3.2.2-4] refused: session present 0
    b = broker(conf="listener {port} 127.0.0.1\nallow_anonymous false\n")
    c = raw(b, connect("anon", clean=False))
    c.expect(connack(0, 5))
    c.expect_closed()
    b.wait_log("Client anon disconnected, not authorised.")


def test_anonymous_refused_is_default(broker):
    # Mosquitto 2: allow_anonymous defaults to false once a listener is set
    b = broker(conf="listener {port} 127.0.0.1\n")
    c = raw(b, connect("anon2"))
    c.expect(connack(0, 5))
    c.expect_closed()


@pytest.mark.parametrize("first", [w.PINGREQ_BYTES,
                                   w.publish("a/b", b"x"),
                                   w.subscribe(1, [("a", 0)]),
                                   w.DISCONNECT_BYTES])
def test_packet_before_connect_closes(broker, first):
    # [MQTT-3.1.0-1] the first packet must be CONNECT
    b = broker()
    c = raw(b, first)
    c.expect_closed()


def test_second_connect_closes(broker):
    # [MQTT-3.1.0-2] a second CONNECT is a protocol violation
    b = broker()
    c = raw(b, connect("twice"))
    c.expect(connack(0, 0))
    c.send(connect("twice"))
    c.expect_closed()
    b.wait_log("Client twice disconnected due to protocol error.")


@pytest.mark.parametrize("cid", [b"a\xc0\x80", b"a\xed\xa0\x80", b"a\x00b",
                                 b"\xff", b"a\xe2\x82"])
def test_bad_utf8_client_id_closes(broker, cid):
    # [MQTT-1.5.3-1] ill-formed UTF-8 (overlong, surrogate, invalid byte,
    # truncated), [MQTT-1.5.3-2] U+0000: close without CONNACK
    b = broker()
    c = raw(b, connect(cid))
    c.expect_closed()


def test_bad_utf8_username_closes(broker):
    # [MQTT-1.5.3-1] [MQTT-3.1.3-11] user name is UTF-8
    b = broker()
    c = raw(b, connect("u8", username=b"al\xc0\x80ice"))
    c.expect_closed()


def test_bad_utf8_will_topic_closes(broker):
    # [MQTT-1.5.3-1] [MQTT-3.1.3-10] will topic is UTF-8
    b = broker()
    c = raw(b, connect("wu8", will=(b"w/\xed\xa0\x80", b"x", 0, False)))
    c.expect_closed()


@pytest.mark.parametrize("topic", ["", "w/#", "w/+/x"])
def test_bad_will_topic_closes(broker, topic):
    # [MQTT-3.1.3-10] the will topic is a topic name: not empty
    # [MQTT-4.7.3-1], no wildcards [MQTT-3.3.2-2]
    b = broker()
    c = raw(b, connect("wt", will=(topic, b"x", 0, False)))
    c.expect_closed()


def test_connect_trailing_bytes_closes(broker):
    # bytes after the last field the flags announce: malformed
    b = broker()
    body = w.connect("tb")[2:] + b"\x00\x01z"
    c = raw(b, w.packet(0x10, body))
    c.expect_closed()


def test_truncated_connect_closes(broker):
    # Remaining Length shorter than the fields it announces: malformed
    b = broker()
    body = w.s16("MQTT") + bytes([4, 2]) + w.u16(60) + b"\x00\x10ab"
    c = raw(b, w.packet(0x10, body))
    c.expect_closed()


def test_connect_flags_nonzero_closes(broker):
    # [MQTT-2.2.2-2] CONNECT fixed header flags are reserved 0
    b = broker()
    data = bytearray(connect("fl"))
    data[0] = 0x11
    c = raw(b, bytes(data))
    c.expect_closed()


def test_client_id_23_bytes_and_longer(broker):
    # [MQTT-3.1.3-5] 1..23 bytes of 0-9a-zA-Z must be accepted; longer ids
    # may be accepted (Mosquitto does)
    b = broker()
    c = raw(b, connect("A" * 23))
    c.expect(connack(0, 0))
    c2 = raw(b, connect("x" * 200))
    c2.expect(connack(0, 0))


@pytest.mark.slow
@pytest.mark.timeout(30)
def test_no_connect_times_out(broker):
    # a TCP connection that never sends CONNECT is closed (Mosquitto: about
    # 10 s, from its default keepalive of the unconnected state)
    b = broker()
    c = Conn(b.port)
    c.expect_closed(timeout=20)


@pytest.mark.slow
def test_connect_timeout_option(broker):
    # mqttpx's connect_timeout (seconds to send CONNECT, default 10)
    import time
    b = broker("connect_timeout 1\n")
    t0 = time.monotonic()
    c = Conn(b.port)
    c.send(w.connect("late")[:5])  # a partial CONNECT does not count
    c.expect_closed(timeout=4)
    dt = time.monotonic() - t0
    assert 0.5 <= dt <= 3, "closed after %.2fs" % dt


def test_takeover_log(broker):
    # [MQTT-3.1.4-2] same client id: the old connection is closed
    b = broker()
    old = raw(b, connect("dup-id"))
    old.expect(connack(0, 0))
    new = raw(b, connect("dup-id"))
    new.expect(connack(0, 0))
    old.expect_closed()
    b.wait_log("Client dup-id already connected, closing old connection.")
    assert new.is_open()
