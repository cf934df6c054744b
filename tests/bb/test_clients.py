"""Real clients: paho-mqtt 1.6 (both protocol versions), mosquitto_pub and
mosquitto_sub, and many clients at once."""

import queue
import subprocess
import threading

import paho.mqtt.client as mqtt
import pytest

import mqttwire as w
from mqttwire import open_client, sub, pub, recv_pub


class Paho:
    """A paho client with a network thread; every wait has a timeout."""

    def __init__(self, port, cid, clean=True, protocol=mqtt.MQTTv311,
                 keepalive=30, will=None):
        self.msgs = queue.Queue()
        self.acks = queue.Queue()
        self.connected = queue.Queue()
        self.c = mqtt.Client(client_id=cid, clean_session=clean,
                             protocol=protocol)
        if will:
            self.c.will_set(*will)
        self.c.on_connect = lambda c, u, f, rc: self.connected.put(
            (f.get("session present"), rc))
        self.c.on_message = lambda c, u, m: self.msgs.put(m)
        self.c.on_subscribe = lambda c, u, mid, q: self.acks.put((mid, q))
        self.c.connect("127.0.0.1", port, keepalive)
        self.c.loop_start()
        self.session_present, rc = self.connected.get(timeout=5)
        assert rc == 0, "CONNACK %d" % rc

    def sub(self, topic, qos=0):
        rc, mid = self.c.subscribe(topic, qos)
        assert rc == 0
        got_mid, granted = self.acks.get(timeout=5)
        assert got_mid == mid
        return granted

    def pub(self, topic, payload, qos=0, retain=False):
        info = self.c.publish(topic, payload, qos, retain)
        info.wait_for_publish(timeout=5)
        assert info.is_published(), "no PUBACK/PUBCOMP within 5 s"

    def get(self, timeout=5):
        return self.msgs.get(timeout=timeout)

    def stop(self):
        self.c.disconnect()
        self.c.loop_stop()


def paho_made(cls):
    """For a fixture: yields a maker of cls clients, then stops them all."""
    made = []

    def make(*a, **kw):
        p = cls(*a, **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        try:
            p.c.loop_stop()
            p.c.socket() and p.c.socket().close()
        except Exception:
            pass


@pytest.fixture
def paho_clients():
    yield from paho_made(Paho)


@pytest.mark.parametrize("proto", [mqtt.MQTTv31, mqtt.MQTTv311],
                         ids=["3.1", "3.1.1"])
def test_paho_qos_all(broker, paho_clients, proto):
    b = broker()
    s = paho_clients(b.port, "psub", protocol=proto)
    assert s.sub("pq/#", 2) == (2,)
    p = paho_clients(b.port, "ppub", protocol=proto)
    for q in (0, 1, 2):
        p.pub("pq/%d" % q, "qos %d" % q, q)
        m = s.get()
        assert (m.topic, m.payload, m.qos) == ("pq/%d" % q,
                                               ("qos %d" % q).encode(), q)


def test_paho_persistent_session(broker, paho_clients):
    b = broker()
    s = paho_clients(b.port, "persist", clean=False)
    assert s.session_present == 0
    s.sub("ps", 1)
    m = b.mark()
    s.stop()
    b.wait_log("Client persist disconnected.", since=m)
    p = paho_clients(b.port, "ppub")
    p.pub("ps", "while away", 1)
    s = paho_clients(b.port, "persist", clean=False)
    assert s.session_present == 1
    assert s.get().payload == b"while away"


def test_paho_retained_and_will(broker, paho_clients):
    b = broker()
    p = paho_clients(b.port, "ret")
    p.pub("pr/state", "on", 1, retain=True)
    watcher = paho_clients(b.port, "watch")
    watcher.sub("pr/#", 1)
    m = watcher.get()
    assert (m.topic, m.payload, m.retain) == ("pr/state", b"on", 1)
    raw = open_client(b.port, "dev", will=("pr/dev", b"offline", 1, False))
    raw.close()
    m = watcher.get()
    assert (m.topic, m.payload) == ("pr/dev", b"offline")


def run(cmd, timeout=10):
    return subprocess.run(cmd, capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_mosquitto_pub_sub(broker):
    b = broker()
    port = str(b.port)
    r = run(["mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-t", "a/ready",
             "-m", "ready", "-r", "-q", "1"])
    assert r.returncode == 0, r.stderr
    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", port,
                            "-t", "#", "-v", "-C", "4", "-q", "2",
                            "-W", "15"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           stdin=subprocess.DEVNULL)
    try:
        # the retained message proves the subscription is in place
        assert sub.stdout.readline() == b"a/ready ready\n"
        for q in ("0", "1", "2"):
            r = run(["mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-t",
                     "a/b", "-m", "hi " + q, "-q", q])
            assert r.returncode == 0, r.stderr
        out, err = sub.communicate(timeout=10)
        assert sub.returncode == 0, err
        assert out == b"a/b hi 0\na/b hi 1\na/b hi 2\n"
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()


def test_mosquitto_pub_v31_and_username(broker):
    b = broker()
    s = open_client(b.port, "s")
    sub(s, 1, [("v31", 1)])
    r = run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(b.port), "-V",
             "mqttv31", "-i", "pub31", "-u", "bob", "-P", "pw", "-t", "v31",
             "-m", "old", "-q", "1"])
    assert r.returncode == 0, r.stderr
    assert recv_pub(s).payload == b"old"
    b.wait_log("as pub31 (p1, c1, k60, u'bob').")


def test_many_clients(broker):
    # 200 connections, each subscribed to its own topic
    b = broker("max_connections 300\n")
    n = 200
    subs = [open_client(b.port, "c%d" % i) for i in range(n)]
    for i, c in enumerate(subs):
        c.send(w.subscribe(1, [("own/%d" % i, 1)]))
    for c in subs:
        c.expect(b"\x90\x03\x00\x01\x01")
    p = open_client(b.port, "p")
    for i in range(n):
        p.send(w.publish("own/%d" % i, str(i), qos=0))
    pub(p, "own/0", b"end", qos=1)
    for i, c in enumerate(subs):
        m = recv_pub(c)
        assert m.payload == str(i).encode()
    assert recv_pub(subs[0]).payload == b"end"


def test_fan_out(broker):
    # one message to many subscribers, QoS 1 each
    b = broker()
    subs = [open_client(b.port, "f%d" % i) for i in range(50)]
    for c in subs:
        sub(c, 1, [("fan", 1)])
    p = open_client(b.port, "p")
    pub(p, "fan", b"all", qos=1)
    for c in subs:
        m = recv_pub(c)
        assert (m.payload, m.qos) == (b"all", 1)


def test_concurrent_publishers(broker):
    # several publishers in threads; the subscriber gets every message,
    # each publisher's in order [MQTT-4.6.0-6]
    b = broker()
    s = open_client(b.port, "s")
    sub(s, 1, [("cp/+", 1)])
    errors = []

    def worker(k):
        try:
            c = open_client(b.port, "pub%d" % k)
            for i in range(100):
                pub(c, "cp/%d" % k, str(i), qos=1, pid=i + 1)
            c.close()
        except Exception as e:  # reported below
            errors.append(e)

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    got = {k: [] for k in range(4)}
    for _ in range(400):
        m = recv_pub(s, timeout=10)
        got[int(m.topic.split("/")[1])].append(int(m.payload))
    for t in ts:
        t.join(10)
    assert not errors, errors
    for k in range(4):
        assert got[k] == list(range(100))
