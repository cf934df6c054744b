"""What happens when each pool is full (README: Memory). Tests of
max_sessions, max_subscriptions, max_retained_messages, max_connections
and per-client queue limits live beside their features; these cover the
message store, the delivery pool and the topic tree."""

import os
import socket
import struct
import subprocess
import threading
import time

import mqttwire as w
from conftest import BINARY, ROOT, free_port


def _payload(i, size):
    return struct.pack(">I", i) * (size // 4)


def _pipeline(c, n, size, topic="t/x"):
    """Sends n QoS 1 PUBLISHes from a thread (the broker may stop reading
    them, so a plain sendall would block the test)."""
    data = b"".join(w.publish(topic, _payload(i, size), qos=1, pid=i + 1)
                    for i in range(n))
    # a second socket object on the same connection: its own timeout, so
    # the reads of the test do not cut the writes short
    out = socket.socket(fileno=os.dup(c.sock.fileno()))
    out.settimeout(60)
    t = threading.Thread(target=out.sendall, args=(data,), daemon=True)
    t.start()
    return t


def _count_acks(c, want, timeout):
    """PUBACK ids received until `want` of them or silence for timeout."""
    got = set()
    while len(got) < want:
        try:
            p = c.recv_packet(timeout)
        except w.Timeout:
            break
        if p.type == w.PUBACK:
            got.add(p.pid)
    return got


def test_store_full_stops_reading_publisher_nothing_lost(broker):
    # A subscriber that never reads holds the store; past 7/8 of it the
    # broker stops reading the publisher (no PUBACK for what it did not
    # take). When the stuck subscriber goes, reading resumes, and every
    # acknowledged message reaches the reading subscriber exactly once.
    b = broker("message_store_bytes 262144\nmax_packet_size 65536\n"
               "max_queued_messages 0\nmax_inflight_messages 0\n")
    stuck = w.Conn(b.port, rcvbuf=4096)
    stuck.send(w.connect("stuck"))
    assert stuck.recv_packet().type == w.CONNACK
    stuck.send(w.subscribe(1, [("t/#", 1)]))
    assert stuck.recv_packet().type == w.SUBACK
    reader = w.open_client(b.port, "reader")
    assert w.sub(reader, 1, [("t/#", 1)]) == [1]
    pub = w.open_client(b.port, "pub")
    n, size = 1200, 8000  # ~9.6 MB: far past the socket buffers and store
    sender = _pipeline(pub, n, size)
    got = {}

    def drain():
        deadline = time.monotonic() + 40
        while len(got) < n and time.monotonic() < deadline:
            try:
                p = w.recv_pub(reader, timeout=1)
            except w.Timeout:
                continue
            i = struct.unpack(">I", p.payload[:4])[0]
            assert p.payload == _payload(i, size)
            got[i] = got.get(i, 0) + 1

    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    acked = _count_acks(pub, n, timeout=1.5)
    assert len(acked) < n, "publisher was never throttled"
    b.wait_log("not reading client pub")
    stuck.close()
    acked |= _count_acks(pub, n - len(acked), timeout=10)
    sender.join(10)
    drainer.join(30)
    assert len(acked) == n
    assert sorted(got) == list(range(n))
    assert set(got.values()) == {1}


def test_delivery_pool_full_drops_for_offline_sessions(broker):
    # max_queued_total 16: an offline session keeps 16, the rest are
    # dropped and counted in $SYS/broker/publish/messages/dropped.
    b = broker("max_queued_total 16\nmax_queued_messages 0\nsys_interval 1\n")
    c = w.open_client(b.port, "off", clean=False)
    w.sub(c, 1, [("q/#", 1)])
    c.send(w.packet(0xE0, b""))
    c.expect_closed()
    p = w.open_client(b.port, "p")
    for i in range(20):
        w.pub(p, "q/%d" % i, b"m%d" % i, qos=1, pid=i + 1)
    c = w.open_client(b.port, "off", clean=False, present=True)
    got = [w.recv_pub(c).payload for _ in range(16)]
    assert got == [b"m%d" % i for i in range(16)]
    c.expect_silence(0.3)
    s = w.open_client(b.port, "sys")
    w.sub(s, 1, [("$SYS/broker/publish/messages/dropped", 0)])
    m = w.recv_pub(s, timeout=3)
    while int(m.payload) < 4:  # the retained value may predate the drops
        m = w.recv_pub(s, timeout=3)


def test_topic_node_pool_full_suback_failure(broker):
    # max_topic_nodes 16 (one is the root): deep filters run out of nodes.
    b = broker("max_topic_nodes 16\nsys_interval 0\n")
    c = w.open_client(b.port, "deep")
    codes = w.sub(c, 1, [("a/b/c/d/e", 0), ("f/g/h/i/j", 0), ("k/l/m/n/o", 0),
                         ("p/q/r/s/t", 0)])
    assert codes[:3] == [0, 0, 0] and codes[3] == 0x80
    # the failed filter left no half-built path: a short one still fits
    w.unsub(c, 2, ["a/b/c/d/e"])
    assert w.sub(c, 3, [("p/q/r/s/t", 0)]) == [0]


def test_daemonize_and_pid_file(tmp_path):
    port = free_port()
    pid_file = tmp_path / "m.pid"
    log = tmp_path / "m.log"
    conf = tmp_path / "d.conf"
    conf.write_text("listener %d 127.0.0.1\nallow_anonymous true\n"
                    "pid_file %s\nlog_dest file %s\n" % (port, pid_file, log))
    r = subprocess.run([BINARY, "-c", str(conf), "-d"], cwd=ROOT, timeout=10,
                       capture_output=True)
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "listening on" not in (
            log.read_text() if log.exists() else ""):
        time.sleep(0.05)
    pid = int(pid_file.read_text())
    try:
        c = w.open_client(port, "d")
        c.close()
        assert os.getppid() != pid
    finally:
        os.kill(pid, 15)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and pid_file.exists():
        time.sleep(0.05)
    assert not pid_file.exists()
    assert "terminating" in log.read_text()
