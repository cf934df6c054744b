"""Malformed and forbidden packets after a good CONNECT: the server closes
the connection without answering, and other clients are unaffected."""

import socket

import pytest

import mqttwire as w
from mqttwire import open_client


def bad_after_connect(b, data, cid="bad"):
    """Send data after CONNECT; expect a close without any reply."""
    c = open_client(b.port, cid)
    c.send(data)
    c.expect_closed()
    return c


def test_pingreq_pingresp(broker):
    # [MQTT-3.12.4-1] PINGREQ gets PINGRESP D0 00
    b = broker()
    c = open_client(b.port, "ping")
    c.send(w.PINGREQ_BYTES)
    c.expect(b"\xd0\x00")
    c.send(w.PINGREQ_BYTES + w.PINGREQ_BYTES)
    c.expect(b"\xd0\x00\xd0\x00")


def test_packets_split_and_coalesced(broker):
    # byte-at-a-time CONNECT, then several packets in one segment
    b = broker()
    c = w.Conn(b.port)
    for byte in w.connect("slow"):
        c.send(bytes([byte]))
    c.expect(w.connack(0, 0))
    c.send(w.subscribe(1, [("x", 0)]) + w.PINGREQ_BYTES + w.publish("x", "y"))
    c.expect(b"\x90\x03\x00\x01\x00" + b"\xd0\x00" +
             w.publish("x", "y"))


def test_remaining_length_over_max_packet_size(broker):
    # max_packet_size: a Remaining Length above it closes at once, before
    # the body arrives
    b = broker("max_packet_size 1024\n")
    c = open_client(b.port, "big")
    c.send(b"\x30" + w.varint(4000) + b"\x00\x01a")
    c.expect_closed()
    other = open_client(b.port, "small")
    w.pub(other, "t", b"x" * 900, qos=1)  # under the limit: fine


def test_connect_over_max_packet_size(broker):
    b = broker("max_packet_size 200\n")
    c = w.Conn(b.port)
    c.send(w.connect("p" * 300))
    c.expect_closed()


@pytest.mark.parametrize("rl", [b"\xff\xff\xff\xff\x7f",
                                b"\x80\x80\x80\x80\x01"])
def test_remaining_length_5_bytes(broker, rl):
    # [MQTT-2.2.3] Remaining Length is at most 4 bytes
    b = broker()
    bad_after_connect(b, b"\x30" + rl + b"\x00\x01a")


@pytest.mark.parametrize("topic", [b"a\xc0\x80", b"a/\xed\xa0\x80", b"a\x00b",
                                   b"\xfe", b"\xf8\x88\x80\x80\x80"])
def test_publish_bad_utf8_topic(broker, topic):
    # [MQTT-1.5.3-1] ill-formed UTF-8, [MQTT-1.5.3-2] U+0000
    b = broker()
    bad_after_connect(b, w.publish(topic, b"x"))


def test_publish_qos_3(broker):
    # [MQTT-3.3.1-4] QoS bits 11
    b = broker()
    bad_after_connect(b, w.packet(0x36, w.s16("a") + b"\x00\x01x"))


@pytest.mark.parametrize("topic", ["a/+", "a/#", "#", "+", "a+b", "a/b#"])
def test_publish_wildcard_topic(broker, topic):
    # [MQTT-3.3.2-2] topic name must not contain wildcards
    b = broker()
    bad_after_connect(b, w.publish(topic, b"x"))


def test_publish_empty_topic(broker):
    # [MQTT-4.7.3-1] topic names are at least one character
    b = broker()
    bad_after_connect(b, w.publish("", b"x"))


def test_publish_qos1_truncated(broker):
    # QoS 1 PUBLISH without room for the packet identifier
    b = broker()
    bad_after_connect(b, w.packet(0x32, w.s16("abc") + b"\x00"))


def test_publish_qos1_packet_id_0(broker):
    # [MQTT-2.3.1-1] QoS > 0 packets need a non-zero packet identifier
    b = broker()
    bad_after_connect(b, w.publish("a", b"x", qos=1, pid=0))


def test_publish_topic_length_past_end(broker):
    # topic length field larger than the packet
    b = broker()
    bad_after_connect(b, w.packet(0x30, b"\x00\x09abc"))


@pytest.mark.parametrize("first", [0x80, 0x83, 0x8A, 0x8F])
def test_subscribe_bad_flags(broker, first):
    # [MQTT-3.8.1-1] SUBSCRIBE fixed header must be 0x82
    b = broker()
    bad_after_connect(b, w.subscribe(1, [("a", 0)], first=first))


def test_subscribe_no_filter(broker):
    # [MQTT-3.8.3-3] at least one topic filter
    b = broker()
    bad_after_connect(b, w.subscribe(1, []))


@pytest.mark.parametrize("qos", [3, 0x04, 0x80, 0x41])
def test_subscribe_bad_requested_qos(broker, qos):
    # [MQTT-3-8.3-4] QoS 3 or reserved bits set: malformed
    b = broker()
    bad_after_connect(b, w.subscribe(1, [("a", qos)]))


@pytest.mark.parametrize("flt", ["a/#/b", "a+", "#a", "a/b#", "+a/b",
                                 "a/+b", "##", "a/++"])
def test_subscribe_invalid_filter(broker, flt):
    # [MQTT-4.7.1-2] '#' last and alone in its level,
    # [MQTT-4.7.1-3] '+' alone in its level
    b = broker()
    bad_after_connect(b, w.subscribe(1, [("ok/1", 0), (flt, 0)]))


def test_subscribe_empty_filter(broker):
    # [MQTT-4.7.3-1] filters are at least one character
    b = broker()
    bad_after_connect(b, w.subscribe(1, [("", 0)]))


def test_subscribe_bad_utf8_filter(broker):
    # [MQTT-1.5.3-1]
    b = broker()
    bad_after_connect(b, w.subscribe(1, [(b"a/\xc0\x80", 0)]))


def test_subscribe_packet_id_0(broker):
    # [MQTT-2.3.1-1] SUBSCRIBE needs a non-zero packet identifier
    b = broker()
    bad_after_connect(b, w.subscribe(0, [("a", 0)]))


@pytest.mark.parametrize("first", [0xA0, 0xA3, 0xAA])
def test_unsubscribe_bad_flags(broker, first):
    # [MQTT-3.10.1-1] UNSUBSCRIBE fixed header must be 0xA2
    b = broker()
    bad_after_connect(b, w.unsubscribe(1, ["a"], first=first))


@pytest.mark.parametrize("flt", ["a/#/b", "a+", "", b"\xc0\x80"])
def test_unsubscribe_invalid_filter(broker, flt):
    # [MQTT-3.10.3-1] UNSUBSCRIBE filters are UTF-8 topic filters
    b = broker()
    bad_after_connect(b, w.unsubscribe(1, [flt]))


@pytest.mark.parametrize("body", [b"\x00\x01\x00\x05ab",   # past end
                                  b"\x00\x01\x00\x01a",     # no QoS byte
                                  b"\x00"])                  # half an id
def test_subscribe_truncated(broker, body):
    b = broker()
    bad_after_connect(b, w.packet(0x82, body))


@pytest.mark.parametrize("data", [b"\x40\x03\x00\x01\x00", b"\x40\x01\x00",
                                  b"\x62\x03\x00\x01\x00", b"\x50\x00"])
def test_ack_wrong_length(broker, data):
    # PUBACK/PUBREC/PUBREL/PUBCOMP carry exactly a 2-byte packet id (3.1.1)
    b = broker()
    bad_after_connect(b, data)


def test_unsubscribe_no_filter(broker):
    # [MQTT-3.10.3-2] at least one topic filter
    b = broker()
    bad_after_connect(b, w.unsubscribe(1, []))


@pytest.mark.parametrize("first", [0x60, 0x61, 0x63, 0x6A])
def test_pubrel_bad_flags(broker, first):
    # [MQTT-3.6.1-1] PUBREL fixed header must be 0x62
    b = broker()
    bad_after_connect(b, bytes([first, 2, 0, 1]))


@pytest.mark.parametrize("data", [b"\xc1\x00", b"\xc0\x01\x00", b"\xe2\x00",
                                  b"\x41\x02\x00\x01", b"\x72\x02\x00\x01"])
def test_bad_fixed_header_flags(broker, data):
    # [MQTT-2.2.2-2] reserved flag bits must be as specified; PINGREQ and
    # DISCONNECT have no body [MQTT-3.12], [MQTT-3.14]
    b = broker()
    bad_after_connect(b, data)


@pytest.mark.parametrize("data", [b"\x00\x00", b"\xf0\x00",
                                  b"\x20\x02\x00\x00", b"\x90\x03\x00\x01\x00",
                                  b"\xb0\x02\x00\x01", b"\xd0\x00"])
def test_reserved_or_server_only_type(broker, data):
    # [MQTT-2.2.1] types 0 and 15 are reserved in 3.1.1; CONNACK, SUBACK,
    # UNSUBACK and PINGRESP only go from server to client
    b = broker()
    bad_after_connect(b, data)


def test_protocol_error_does_not_hurt_others(broker):
    b = broker()
    good = open_client(b.port, "good")
    assert w.sub(good, 1, [("t", 0)]) == [0]
    bad_after_connect(b, b"\x30\xff\xff\xff\xff\x7f")
    pub = open_client(b.port, "pub")
    w.pub(pub, "t", b"still here")
    assert w.recv_pub(good).payload == b"still here"


def test_publish_in_chunks(broker):
    # a 100 KB PUBLISH arriving in 1000-byte writes, each flushed
    b = broker()
    s = open_client(b.port, "s")
    w.sub(s, 1, [("ch", 1)])
    p = open_client(b.port, "p")
    p.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    data = w.publish("ch", bytes(range(200)) * 500, qos=1, pid=9)
    for i in range(0, len(data), 1000):
        p.send(data[i:i + 1000])
    p.expect(w.puback(9))
    assert w.recv_pub(s).payload == bytes(range(200)) * 500


def test_deep_and_long_topics(broker):
    # a 100-level topic and a 60000-byte topic are valid topic names
    # [MQTT-4.7.3-3]; a '#' subscriber receives both
    b = broker()
    s = open_client(b.port, "s")
    w.sub(s, 1, [("#", 0)])
    p = open_client(b.port, "p")
    deep = "/".join("l%d" % i for i in range(100))
    long_ = "x" * 60000
    w.pub(p, deep, b"deep", qos=1)
    w.pub(p, long_, b"long", qos=1, pid=2)
    assert w.recv_pub(s).topic == deep
    assert w.recv_pub(s).topic == long_


def test_many_filters_in_one_subscribe(broker):
    # [MQTT-3.8.4-5] one return code per filter, 500 filters
    b = broker()
    c = open_client(b.port, "many")
    codes = w.sub(c, 7, [("m/%d" % i, i % 3) for i in range(500)])
    assert codes == [i % 3 for i in range(500)]


def test_disconnect_then_nothing(broker):
    # [MQTT-3.14.4-1] after DISCONNECT the server closes the connection;
    # bytes after it are not processed
    b = broker()
    c = open_client(b.port, "dc")
    c.send(w.DISCONNECT_BYTES + w.PINGREQ_BYTES)
    c.expect_closed()
