"""persistence true: retained messages and persistent sessions survive a
restart (SIGTERM: nothing lost) and a crash (kill -9: the state of the last
snapshot); damaged files stop the start and are left as they are; a
failed save keeps the previous file."""

import os
import signal

import pytest

import mqttwire as w
from conftest import run_mqttpx

BASE = ("listener {port} 127.0.0.1\nallow_anonymous true\nsys_interval 0\n"
        "persistence true\npersistence_location {dir}/\n")


def _sync(c):
    """PINGREQ/PINGRESP: everything sent before is processed."""
    c.send(w.packet(0xC0, b""))
    assert w.next_of(c, w.PINGRESP).raw == bytes([0xD0, 0])


def _restart(broker, b, extra=""):
    assert b.stop() == 0
    return broker(conf=BASE + extra, port=b.port, name=b.name + "r")


def _db(broker):
    return os.path.join(broker.dir, "mqttpx.db")


def test_restart_keeps_retained_sessions_and_queues(broker):
    b = broker(conf=BASE)
    s = w.open_client(b.port, "keeper", clean=False)
    assert w.sub(s, 1, [("q/#", 2), ("other", 1)]) == [2, 1]
    s.send(w.packet(0xE0, b""))
    s.expect_closed()
    p = w.open_client(b.port, "pub")
    w.pub(p, "r/1", b"kept", qos=1, retain=True, pid=1)
    for i, q in enumerate((1, 2, 1, 2)):
        w.pub(p, "q/%d" % i, b"m%d" % i, qos=q, pid=10 + i)
    p.close()
    b = _restart(broker, b)
    b.wait_log("Loaded 1 retained messages and 1 sessions")
    s = w.open_client(b.port, "keeper", clean=False, present=True)
    got = [w.recv_pub(s) for _ in range(4)]
    assert [(x.topic, x.payload, x.qos) for x in got] == [
        ("q/0", b"m0", 1), ("q/1", b"m1", 2), ("q/2", b"m2", 1),
        ("q/3", b"m3", 2)]
    s.expect_silence(0.3)
    # the subscriptions came back too, and the retained message
    r = w.open_client(b.port, "r")
    w.sub(r, 1, [("r/#", 1)])
    m = w.recv_pub(r)
    assert m.retain and m.payload == b"kept"
    p = w.open_client(b.port, "pub2")
    w.pub(p, "other", b"x", qos=1)
    assert w.recv_pub(s).topic == "other"


def test_inflight_keeps_packet_ids_and_pubrel(broker):
    # [MQTT-4.4.0-1] after the restart, unacknowledged PUBLISH is sent
    # again with DUP and its packet id, and PUBREL for a PUBREC'd one
    b = broker(conf=BASE)
    s = w.open_client(b.port, "inf", clean=False)
    w.sub(s, 1, [("a", 1), ("b", 2)])
    p = w.open_client(b.port, "pub")
    w.pub(p, "a", b"one", qos=1, pid=1)
    w.pub(p, "b", b"two", qos=2, pid=2)
    m1 = w.recv_pub(s, ack=False)
    m2 = w.recv_pub(s, ack=False)
    assert (m1.topic, m2.topic) == ("a", "b")
    s.send(w.pubrec(m2.pid))
    rel = w.next_of(s, w.PUBREL)
    assert rel.pid == m2.pid
    s.close()
    b = _restart(broker, b)
    s = w.open_client(b.port, "inf", clean=False, present=True)
    again = s.recv_packet()
    assert again.type == w.PUBLISH and again.dup and again.pid == m1.pid
    assert again.payload == b"one"
    rel = s.recv_packet()
    assert rel.raw == w.pubrel(m2.pid)
    s.send(w.puback(m1.pid) + w.pubcomp(m2.pid))
    s.expect_silence(0.3)


def test_qos2_received_id_survives_exactly_once(broker):
    # a QoS 2 PUBLISH acknowledged with PUBREC before the restart is not
    # delivered again when its sender repeats it afterwards [MQTT-4.3.3-2]
    b = broker(conf=BASE)
    sub = w.open_client(b.port, "sub", clean=False)
    w.sub(sub, 1, [("x", 2)])
    p = w.open_client(b.port, "pubq2", clean=False)
    p.send(w.publish("x", b"once", qos=2, pid=7))
    assert w.next_of(p, w.PUBREC).raw == w.pubrec(7)
    got = w.recv_pub(sub)
    assert got.payload == b"once"
    _sync(sub)
    sub.close()
    p.close()
    b = _restart(broker, b)
    p = w.open_client(b.port, "pubq2", clean=False, present=True)
    p.send(w.publish("x", b"once", qos=2, pid=7, dup=True))
    assert w.next_of(p, w.PUBREC).raw == w.pubrec(7)
    p.send(w.pubrel(7))
    assert w.next_of(p, w.PUBCOMP).raw == w.pubcomp(7)
    w.pub(p, "x", b"fence", qos=2, pid=8)
    sub = w.open_client(b.port, "sub", clean=False, present=True)
    assert w.collect_until(sub, "x", b"fence") == []


def test_kill9_restores_last_snapshot(broker):
    # a crash loses what came after the last snapshot (snapshot mode), keeps
    # what came before, and what a subscriber had acknowledged before the
    # snapshot is not delivered again; SIGUSR1 writes one now (Mosquitto)
    b = broker(conf=BASE + "autosave_interval 3600\n")
    s = w.open_client(b.port, "acker", clean=False)
    w.sub(s, 1, [("k/#", 1)])
    p = w.open_client(b.port, "pub")
    for i in range(3):
        w.pub(p, "k/%d" % i, b"v%d" % i, qos=1, retain=True, pid=1 + i)
        assert w.recv_pub(s).payload == b"v%d" % i  # acknowledged
    _sync(s)
    s.close()
    mark = b.mark()
    b.send_signal(signal.SIGUSR1)
    b.wait_log("Saving in-memory database", since=mark)
    w.pub(p, "k/9", b"after", qos=1, retain=True, pid=9)  # not saved
    b.proc.send_signal(signal.SIGKILL)
    b.proc.wait(5)
    b.expect_exit = True
    b2 = broker(conf=BASE, port=b.port, name="after-kill")
    b2.wait_log("Loaded 3 retained messages and 1 sessions")
    s = w.open_client(b2.port, "acker", clean=False, present=True)
    s.expect_silence(0.3)  # nothing it had acknowledged comes back
    r = w.open_client(b2.port, "r")
    w.sub(r, 1, [("k/#", 0)])
    assert sorted(w.recv_pub(r).payload for _ in range(3)) == \
        [b"v0", b"v1", b"v2"]
    r.expect_silence(0.3)


def test_autosave_on_changes(broker):
    b = broker(conf=BASE + "autosave_on_changes true\nautosave_interval 3\n")
    p = w.open_client(b.port, "pub")
    mark = b.mark()
    for i in range(3):
        w.pub(p, "c/%d" % i, b"x", qos=1, retain=True, pid=1 + i)
    b.wait_log("Saving in-memory database", since=mark)
    assert os.path.exists(_db(broker))


def test_autosave_interval_only_when_changed(broker):
    b = broker(conf=BASE + "autosave_interval 1\n")
    p = w.open_client(b.port, "pub")
    mark = b.mark()
    w.pub(p, "t/1", b"x", qos=1, retain=True)
    b.wait_log("Saving in-memory database", since=mark, timeout=4)
    mark = b.mark()
    w.pub(p, "t/2", b"no retain, no session", qos=0)
    with pytest.raises(AssertionError):  # nothing changed: no write
        b.wait_log("Saving in-memory database", since=mark, timeout=2.5)


def _damaged(broker, mutate):
    b = broker(conf=BASE)
    p = w.open_client(b.port, "pub")
    w.pub(p, "r/1", b"kept", qos=1, retain=True)
    p.close()
    assert b.stop() == 0
    path = _db(broker)
    data = open(path, "rb").read()
    bad = mutate(data)
    with open(path, "wb") as f:
        f.write(bad)
    conf = os.path.join(broker.dir, "damaged.conf")
    with open(conf, "w") as f:
        f.write(BASE.replace("{port}", str(b.port)).replace("{dir}",
                                                            broker.dir))
    r = run_mqttpx(["-c", conf])
    assert r.returncode != 0
    assert open(path, "rb").read() == bad  # left as it is
    return r.out


@pytest.mark.parametrize("name,mutate,why", [
    ("truncated", lambda d: d[:-10], "truncated"),
    ("bitflip", lambda d: d[:40] + bytes([d[40] ^ 0x10]) + d[41:],
     "checksum mismatch"),
    ("empty", lambda d: b"", "truncated: no complete header"),
    ("future", lambda d: d[:8] + b"\x00\x63" + d[10:], "newer mqttpx"),
    ("garbage", lambda d: b"not a snapshot at all", "not an mqttpx"),
])
def test_damaged_file_refused(broker, name, mutate, why):
    out = _damaged(broker, mutate)
    assert "Error: persistence file %s: " % _db(broker) in out
    assert why in out
    assert "left as it is" in out


def test_full_disk_keeps_previous_file(broker):
    b = broker(conf=BASE)
    p = w.open_client(b.port, "pub")
    w.pub(p, "r/1", b"first", qos=1, retain=True)
    p.close()
    b = _restart(broker, b)  # the first snapshot is on disk
    good = open(_db(broker), "rb").read()
    os.symlink("/dev/full", _db(broker) + ".tmp")  # every write: ENOSPC
    p = w.open_client(b.port, "pub")
    w.pub(p, "r/1", b"second", qos=1, retain=True)
    mark = b.mark()
    assert b.stop() == 0
    line = b.find("Error saving in-memory database", since=mark)
    assert line and "the previous file is kept" in line[0]
    assert "No space left on device" in line[0]
    assert open(_db(broker), "rb").read() == good
    b = broker(conf=BASE, port=b.port, name="after-full")
    r = w.open_client(b.port, "r")
    w.sub(r, 1, [("r/1", 0)])
    assert w.recv_pub(r).payload == b"first"


def test_persistence_off_writes_nothing(broker):
    b = broker()
    p = w.open_client(b.port, "pub")
    w.pub(p, "r/1", b"x", qos=1, retain=True)
    assert b.stop() == 0
    assert not os.path.exists(os.path.join(broker.dir, "mqttpx.db"))


def test_clean_shutdown_sends_no_will_and_keeps_it_out(broker):
    # a clean stop is not a client failure: the will of a connected client
    # is not published, neither then nor after the restart
    b = broker(conf=BASE)
    s = w.open_client(b.port, "watcher", clean=False)
    w.sub(s, 1, [("wills/#", 1)])
    s.send(w.packet(0xE0, b""))
    s.expect_closed()
    willy = w.open_client(b.port, "willy",
                          will=("wills/willy", b"gone", 1, False))
    b = _restart(broker, b)
    willy.close()
    s = w.open_client(b.port, "watcher", clean=False, present=True)
    p = w.open_client(b.port, "fence")
    w.pub(p, "wills/fence", b"f", qos=1)
    assert w.collect_until(s, "wills/fence") == []


JOURNAL = BASE + "persistence_journal true\nautosave_interval 3600\n"


def _kill(b):
    b.proc.send_signal(signal.SIGKILL)
    b.proc.wait(5)
    b.expect_exit = True


def test_journal_kill9_right_after_puback_loses_nothing(broker):
    # journal mode: a PUBACK leaves only after the fsync of what it
    # acknowledges, so kill -9 right after it loses nothing
    b = broker(conf=JOURNAL)
    s = w.open_client(b.port, "jsub", clean=False)
    w.sub(s, 1, [("j/#", 2)])
    s.send(w.packet(0xE0, b""))
    s.expect_closed()
    p = w.open_client(b.port, "jpub")
    w.pub(p, "j/1", b"q1", qos=1, pid=1)
    w.pub(p, "j/2", b"q2", qos=2, pid=2)
    w.pub(p, "j/r", b"kept", qos=1, retain=True, pid=3)
    _kill(b)  # no snapshot since start: all of it is in the journal
    b2 = broker(conf=JOURNAL, port=b.port, name="after-kill")
    b2.wait_log("Replayed")
    s = w.open_client(b2.port, "jsub", clean=False, present=True)
    got = [(m.topic, m.payload) for m in (w.recv_pub(s) for _ in range(3))]
    assert got == [("j/1", b"q1"), ("j/2", b"q2"), ("j/r", b"kept")]
    s.expect_silence(0.3)


def test_journal_qos2_exactly_once_across_kill9(broker):
    # a QoS 2 PUBLISH acknowledged with PUBREC is not delivered twice when
    # the sender repeats it after a crash; the subscriber's inflight state
    # (PUBREL due) comes back too
    b = broker(conf=JOURNAL)
    sub = w.open_client(b.port, "js", clean=False)
    w.sub(sub, 1, [("x", 2)])
    p = w.open_client(b.port, "jp", clean=False)
    p.send(w.publish("x", b"once", qos=2, pid=7))
    assert w.next_of(p, w.PUBREC).raw == w.pubrec(7)
    m = w.recv_pub(sub, ack=False)
    sub.send(w.pubrec(m.pid))
    assert w.next_of(sub, w.PUBREL).pid == m.pid
    _kill(b)
    b2 = broker(conf=JOURNAL, port=b.port, name="after-kill")
    p = w.open_client(b2.port, "jp", clean=False, present=True)
    p.send(w.publish("x", b"once", qos=2, pid=7, dup=True))
    assert w.next_of(p, w.PUBREC).raw == w.pubrec(7)
    p.send(w.pubrel(7))
    assert w.next_of(p, w.PUBCOMP).raw == w.pubcomp(7)
    sub = w.open_client(b2.port, "js", clean=False, present=True)
    assert sub.recv_packet().raw == w.pubrel(m.pid)  # resumed where it was
    sub.send(w.pubcomp(m.pid))
    w.pub(p, "x", b"fence", qos=2, pid=8)
    assert w.collect_until(sub, "x", b"fence") == []


def test_journal_is_compacted_and_survives_restarts(broker):
    b = broker(conf=JOURNAL)
    p = w.open_client(b.port, "jpub")
    for i in range(20):
        w.pub(p, "c/%d" % i, b"v%d" % i, qos=1, retain=True, pid=1 + i)
    for i in range(0, 20, 2):
        w.pub(p, "c/%d" % i, b"", qos=1, retain=True, pid=30 + i)  # clear
    _kill(b)
    b = broker(conf=JOURNAL, port=b.port, name="second")
    b.wait_log("Loaded 10 retained messages")
    journal = os.path.join(broker.dir, "mqttpx.db.journal")
    assert os.path.getsize(journal) == 16  # compacted into the snapshot
    assert b.stop() == 0
    b = broker(conf=JOURNAL, port=b.port, name="third")
    b.wait_log("Loaded 10 retained messages")
    r = w.open_client(b.port, "r")
    w.sub(r, 1, [("c/#", 0)])
    assert sorted(m.payload for m in (w.recv_pub(r) for _ in range(10))) \
        == sorted(b"v%d" % i for i in range(1, 20, 2))


def test_journal_torn_tail_is_ignored(broker):
    # a record cut short by a crash was never acknowledged: it is ignored,
    # with a warning, and everything before it is replayed
    b = broker(conf=JOURNAL)
    p = w.open_client(b.port, "jpub")
    w.pub(p, "t/1", b"whole", qos=1, retain=True, pid=1)
    _kill(b)
    with open(os.path.join(broker.dir, "mqttpx.db.journal"), "ab") as f:
        f.write(b"\x11\x00\x00\x00\x40\x00\x00")  # a record header, cut
    b = broker(conf=JOURNAL, port=b.port, name="after")
    b.wait_log("ends with a record cut short")
    r = w.open_client(b.port, "r")
    w.sub(r, 1, [("t/1", 0)])
    assert w.recv_pub(r).payload == b"whole"


def test_journal_compacts_when_long(broker):
    # with autosave_interval 0 only a long journal triggers a snapshot:
    # past twice message_store_bytes (64 KiB here) it is compacted
    b = broker(conf=BASE + "persistence_journal true\nautosave_interval 0\n"
               "message_store_bytes 65536\nmax_packet_size 16384\n")
    p = w.open_client(b.port, "jpub")
    mark = b.mark()
    for i in range(200):
        w.pub(p, "big/%d" % (i % 5), bytes([i % 256]) * 1000, qos=1,
              retain=True, pid=1 + i)
    b.wait_log("Saving in-memory database", since=mark)
    journal = os.path.join(broker.dir, "mqttpx.db.journal")
    assert os.path.getsize(journal) < 3 * 65536
