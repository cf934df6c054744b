"""Hostile input (issue "hostile input"): garbage and mutated packets,
oversized headers, slowloris, connection and subscription floods, a
subscriber that never reads, deep topics, huge client ids, packets at the
size limit.

Every test runs a good client beside the attack (class Good): it publishes
QoS 1 messages to itself one after another and must get each one back
(PUBACK and the PUBLISH, in order, within a few seconds), during the attack
and after it. The broker must stay alive, and its resident memory must stay
within the budget it logged at start-up (`memory: X MiB`) plus 4 MiB for
the process itself (code, libc, stacks): the peak (VmHWM) is checked at the
end, and VmRSS is sampled after every round trip."""

import errno
import os
import random
import re
import resource
import select
import socket
import threading
import time

import pytest

import mqttwire as w

SLACK_KB = 4 * 1024     # process overhead beside the budget
PATIENCE = 5.0          # seconds the good client waits for one round trip


# ---- the good client and the checks ------------------------------------

def proc_status(pid, field):
    """A kB field of /proc/PID/status (VmRSS, VmHWM)."""
    with open("/proc/%d/status" % pid) as f:
        for ln in f:
            if ln.startswith(field + ":"):
                return int(ln.split()[1])
    raise AssertionError("no %s in /proc/%d/status" % (field, pid))


def cpu_seconds(pid):
    """User + system CPU time of a process so far."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sanitized(pid):
    """A sanitizer build (make bb-san): its shadow memory is not ours to
    count, so the memory budget check does not apply."""
    with open("/proc/%d/maps" % pid) as f:
        return "libasan" in f.read()


def budget_kb(b):
    line = b.wait_log("memory: ")
    m = re.search(r"memory: ([\d.]+) MiB", line)
    assert m, line
    return float(m.group(1)) * 1024


class Good:
    """The client beside the attack (see the module docstring)."""

    def __init__(self, b, cid="good-client-7f3a"):
        self.b = b
        self.budget = budget_kb(b)
        self.topic = "good/" + cid
        self.c = w.open_client(b.port, cid, keepalive=60)
        assert w.sub(self.c, 1, [(self.topic, 1)]) == [1]
        self.sent = self.got = 0
        self.errors = []
        self.max_rss = 0
        self.cond = threading.Condition()
        self.stop_ev = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _round_trip(self, i):
        pid = (i - 1) % 65535 + 1
        payload = b"good %d" % i
        self.c.send(w.publish(self.topic, payload, qos=1, pid=pid))
        self.sent += 1
        acked = echoed = False
        deadline = time.monotonic() + PATIENCE
        while not (acked and echoed):
            left = deadline - time.monotonic()
            try:
                p = self.c.recv_packet(max(0.01, left))
            except w.Timeout:
                raise AssertionError(
                    "message %d: %s within %.0f s" % (
                        i, "no PUBACK" if not acked else "not delivered",
                        PATIENCE))
            if p.type == w.PUBACK and p.pid == pid:
                acked = True
            elif p.type == w.PUBLISH:
                if p.qos:
                    self.c.send(w.puback(p.pid))
                if p.topic != self.topic or p.payload != payload:
                    raise AssertionError("message %d: got %r" % (i, p))
                echoed = True
            else:
                raise AssertionError("message %d: unexpected %r" % (i, p))

    def _run(self):
        i = 0
        try:
            while not self.stop_ev.is_set():
                i += 1
                self._round_trip(i)
                with self.cond:
                    self.got += 1
                    self.cond.notify_all()
                self.max_rss = max(self.max_rss,
                                   proc_status(self.b.proc.pid, "VmRSS"))
                self.stop_ev.wait(0.005)  # pacing: leave the CPU to the attack
        except Exception as e:  # noqa: BLE001 - reported by finish()
            self.errors.append("%s: %s" % (type(e).__name__, e))
        finally:
            with self.cond:
                self.cond.notify_all()

    def finish(self, after=5, min_total=5):
        """After the attack: `after` more round trips, then stop and check
        everything (no loss, broker alive, memory within budget)."""
        start = self.got
        with self.cond:
            self.cond.wait_for(lambda: self.got >= start + after
                               or self.errors or not self.t.is_alive(),
                               timeout=PATIENCE * 2)
        self.stop_ev.set()
        self.t.join(PATIENCE + 2)
        assert self.b.alive(), "the broker died (exit %s)" % \
            self.b.proc.returncode
        assert not self.errors, "good client: %s (%d sent, %d back)" % (
            self.errors[0], self.sent, self.got)
        assert self.got >= start + after, \
            "good client stalled after the attack (%d round trips)" % self.got
        assert self.got == self.sent and self.got >= min_total, \
            "good client: %d sent, %d back" % (self.sent, self.got)
        assert self.c.is_open()
        self.check_memory()

    def check_memory(self):
        if sanitized(self.b.proc.pid):
            return
        hwm = proc_status(self.b.proc.pid, "VmHWM")
        peak = max(hwm, self.max_rss)
        print("good client: %d round trips; RSS peak %d kB, budget %.0f kB"
              % (self.got, peak, self.budget))
        assert peak <= self.budget + SLACK_KB, \
            "RSS peak %d kB > budget %.0f kB + %d kB" % (
                peak, self.budget, SLACK_KB)


@pytest.fixture
def guarded(broker):
    """guarded(extra=..., conf=...) -> (broker, Good)."""
    goods = []

    def start(extra="", **kw):
        b = broker(extra, **kw)
        g = Good(b)
        goods.append(g)
        return b, g

    yield start
    for g in goods:
        g.stop_ev.set()


def wait_closed(socks, timeout):
    """Waits until the broker closed each socket (EOF or reset; bytes it
    sends first, like a CONNACK, are read and ignored). Returns the indexes
    still open at timeout."""
    left = dict(enumerate(socks))
    poller = select.poll()
    byfd = {}
    for i, s in left.items():
        poller.register(s.fileno(), select.POLLIN | select.POLLHUP)
        byfd[s.fileno()] = i
    deadline = time.monotonic() + timeout
    while left:
        ms = int((deadline - time.monotonic()) * 1000)
        if ms <= 0:
            break
        for fd, _ in poller.poll(ms):
            i = byfd[fd]
            try:
                data = left[i].recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                poller.unregister(fd)
                del left[i]
    return sorted(left)


def close_all(socks):
    for s in socks:
        try:
            s.close()
        except OSError:
            pass


# ---- garbage -----------------------------------------------------------

def _valid_stream(rng, i):
    """A plausible client session: CONNECT then a few packets. Its topics
    stay under fz/ so that nothing can reach the good client."""
    cid = "fz%d" % i
    will = None
    if rng.random() < 0.3:
        will = ("fz/will/%d" % i, b"w" * rng.randrange(20), rng.randrange(3),
                rng.random() < 0.3)
    user = "u%d" % i if rng.random() < 0.3 else None
    out = [w.connect(cid, clean=rng.random() < 0.8,
                     keepalive=rng.choice([0, 5, 60]), will=will,
                     username=user,
                     password=b"p" if user and rng.random() < 0.5 else None,
                     **({"proto": "MQIsdp", "level": 3}
                        if rng.random() < 0.2 else {}))]
    for k in range(rng.randrange(1, 7)):
        pid = rng.randrange(1, 65536)
        kind = rng.randrange(9)
        if kind == 0:
            out.append(w.subscribe(pid, [("fz/%d/#" % i, rng.randrange(3)),
                                         ("fz/+/x", rng.randrange(3))]))
        elif kind == 1:
            out.append(w.unsubscribe(pid, ["fz/%d/#" % i]))
        elif kind in (2, 3):
            q = rng.randrange(3)
            out.append(w.publish("fz/%d/t%d" % (i, k),
                                 bytes(rng.randrange(256) for _ in
                                       range(rng.randrange(3000))),
                                 qos=q, retain=rng.random() < 0.2,
                                 pid=pid if q else None))
        elif kind == 4:
            out.append(rng.choice([w.puback, w.pubrec, w.pubrel,
                                   w.pubcomp])(pid))
        elif kind == 5:
            out.append(w.PINGREQ_BYTES)
        elif kind == 6:
            out.append(w.publish("fz/%d/r" % i, b"", retain=True))
        elif kind == 7:
            out.append(w.connect(cid))  # a second CONNECT
        else:
            out.append(w.DISCONNECT_BYTES)
    return b"".join(out)


def _mutate(rng, data):
    data = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(7)
        n = len(data)
        if n == 0:
            data = bytearray(rng.randrange(256) for _ in range(8))
            continue
        a = rng.randrange(n)
        bnd = min(n, a + rng.randrange(1, 64))
        if op == 0:      # flip bits
            for _ in range(rng.randrange(1, 8)):
                data[rng.randrange(n)] ^= 1 << rng.randrange(8)
        elif op == 1:    # truncate
            del data[a:]
        elif op == 2:    # insert random bytes
            data[a:a] = bytes(rng.randrange(256) for _ in
                              range(rng.randrange(1, 32)))
        elif op == 3:    # delete a range
            del data[a:bnd]
        elif op == 4:    # duplicate a range
            data[a:a] = data[a:bnd]
        elif op == 5:    # boundary values
            data[a] = rng.choice([0x00, 0x7f, 0x80, 0xff])
        else:            # a length field gone wild
            data[a:a + 1] = rng.choice([b"\xff\xff\xff\x7f", b"\x80\x80",
                                        b"\xff\xff", b"\x00\x00"])
    return bytes(data)


def _garbage(rng, i):
    r = rng.random()
    if r < 0.25:         # pure random bytes
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1,
                                                                     4000)))
    if r < 0.35:         # a valid stream, untouched
        return _valid_stream(rng, i)
    return _mutate(rng, _valid_stream(rng, i))


@pytest.mark.timeout(60)
def test_random_bytes_and_mutated_packets(guarded):
    b, good = guarded()
    rng = random.Random(20240611)
    n, batch = 600, 25
    lingering = []
    for start in range(0, n, batch):
        socks = []
        for i in range(start, start + batch):
            s = socket.create_connection(("127.0.0.1", b.port), timeout=5)
            data = _garbage(rng, i)
            cut = rng.randrange(len(data) + 1)
            try:
                s.sendall(data[:cut])   # in two writes
                s.sendall(data[cut:])
            except OSError as e:        # the broker already closed it
                assert e.errno in (errno.EPIPE, errno.ECONNRESET), e
            socks.append(s)
        # half of them say EOF; the broker must close all of them: on EOF,
        # on garbage, or after DISCONNECT; the others we close ourselves
        for k, s in enumerate(socks):
            s.setblocking(False)
            if k % 2 == 0:
                try:
                    s.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
        still = wait_closed(socks[0::2], timeout=5)
        lingering += [start + 2 * k for k in still]
        close_all(socks)
        assert b.alive(), "the broker died on batch %d" % start
    assert not lingering, "connections the broker kept after EOF: %s" % (
        lingering[:20])
    good.finish()


# ---- oversized headers -------------------------------------------------

def test_header_announcing_256mb_closed_at_once(guarded):
    b, good = guarded()
    cases = [
        ("PUBLISH of 256 MB before CONNECT", b"", b"\x30\xff\xff\xff\x7f"),
        ("CONNECT of 256 MB", b"", b"\x10\xff\xff\xff\x7f"),
        ("PUBLISH of 256 MB after CONNECT", w.connect("big1"),
         b"\x30\xff\xff\xff\x7f"),
        ("PUBLISH of 256 MB with bytes after", w.connect("big2"),
         b"\x30\xff\xff\xff\x7f" + b"\x00\x03a/b" + b"x" * 60000),
        ("SUBSCRIBE of 256 MB", w.connect("big3"), b"\x82\xff\xff\xff\x7f"),
        ("a five-byte Remaining Length", w.connect("big4"),
         b"\x30\xff\xff\xff\xff\x01"),
    ]
    for what, first, attack in cases:
        c = w.Conn(b.port)
        if first:
            c.send(first)
            c.expect(w.connack(0, 0))
        t0 = time.monotonic()
        try:
            c.send(attack)
        except OSError:
            pass
        try:
            c.expect_closed(timeout=2)
        except AssertionError as e:
            raise AssertionError("%s: %s" % (what, e))
        took = time.monotonic() - t0
        assert took < 1.0, "%s: closed after %.1f s" % (what, took)
        c.close()
    b.wait_log("packet larger than max_packet_size")
    # a hundred at once
    socks = []
    for i in range(100):
        s = socket.create_connection(("127.0.0.1", b.port), timeout=5)
        s.sendall(w.connect("many%d" % i) + b"\x30\xff\xff\xff\x7f")
        socks.append(s)
    assert wait_closed(socks, timeout=3) == []
    close_all(socks)
    good.finish()


# ---- slowloris ---------------------------------------------------------

def trickle(socks, datas, timeout):
    """Sends datas[i] on socks[i] one byte a second until the broker closes
    it or timeout; returns {i: seconds until it was closed} and how many
    bytes each got to send."""
    n = len(socks)
    pos = [0] * n
    closed = {}
    start = time.monotonic()
    next_send = start
    deadline = start + timeout
    for s in socks:
        s.setblocking(False)
    while len(closed) < n:
        now = time.monotonic()
        if now >= deadline:
            break
        if now >= next_send:
            for i, s in enumerate(socks):
                if i in closed or pos[i] >= len(datas[i]):
                    continue
                try:
                    s.send(datas[i][pos[i]:pos[i] + 1])
                    pos[i] += 1
                except OSError:
                    closed[i] = now - start
            next_send += 1.0  # pacing of the attack, not a readiness wait
        live = [s for i, s in enumerate(socks) if i not in closed]
        r, _, _ = select.select(live, [], [],
                                max(0, min(next_send, deadline)
                                    - time.monotonic()))
        for s in r:
            i = socks.index(s)
            try:
                data = s.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                closed[i] = time.monotonic() - start
    return closed, pos


@pytest.mark.timeout(40)
def test_slowloris_before_connect(guarded):
    b, good = guarded("connect_timeout 2\n")
    mark = b.mark()
    n = 30
    socks = [socket.create_connection(("127.0.0.1", b.port), timeout=5)
             for _ in range(n)]
    # a valid CONNECT (and one that announces 64 KiB), a byte a second
    datas = [w.connect("slow%d" % i) if i % 2 else
             b"\x10\xff\xff\x03" + w.connect("slow%d" % i)[2:]
             for i in range(n)]
    closed, sent = trickle(socks, datas, timeout=8)
    close_all(socks)
    late = {i: t for i, t in closed.items() if t > 3.5}
    assert len(closed) == n and not late, \
        "connect_timeout 2: %d of %d closed, late: %r" % (
            len(closed), n, late)
    assert max(sent) <= 4
    b.wait_count("no CONNECT in 2 s", n, since=mark)
    good.finish()


@pytest.mark.timeout(40)
def test_slowloris_mid_packet_after_connect(guarded):
    # [MQTT-3.1.2-24]: no Control Packet within 1.5 x keepalive: closed.
    # Bytes of a packet that never completes are not a Control Packet.
    b, good = guarded("connect_timeout 2\n")
    n = 20
    socks, datas = [], []
    for i in range(n):
        c = w.Conn(b.port)
        c.send(w.connect("mid%d" % i, keepalive=2))
        c.expect(w.connack(0, 0))
        socks.append(c.sock)
        datas.append(w.publish("mid/%d" % i, b"p" * 300, qos=i % 2,
                               pid=1 if i % 2 else None))
    mark = b.mark()
    closed, sent = trickle(socks, datas, timeout=9)
    close_all(socks)
    late = {i: round(t, 1) for i, t in closed.items() if t > 4.5}
    assert len(closed) == n and not late, (
        "keepalive 2 (limit 3 s): %d of %d closed within 9 s (late: %r); "
        "the others were still trickling (%d bytes sent of %d)" % (
            len(closed), n, late, min(sent), len(datas[0])))
    b.wait_log("has exceeded timeout", since=mark)
    good.finish()


@pytest.mark.timeout(40)
@pytest.mark.parametrize("when", ["before_connect", "after_connect"])
def test_announced_large_packets_do_not_starve_the_store(guarded, when):
    # Connections announce packets below max_packet_size (2 MiB with the
    # defaults used here) and send only their first bytes; together they
    # announce more than the whole message store (8 MiB). Before CONNECT:
    # 160 unauthenticated connections announce a 64 KiB CONNECT (held
    # until connect_timeout, 10 s). After CONNECT: 40 clients (keepalive
    # 0, so no timeout applies) announce PUBLISHes of 1000000 bytes down
    # to 30000 (sizes that fill a power-of-two allocator's holes too).
    # Whatever the broker sets aside for bytes that have not arrived, the
    # good client's QoS 1 round trips must go on. Connections the broker
    # closes are opened again (at most 4 x as many in all).
    b, good = guarded()
    sizes = [1000000, 500000, 250000, 120000, 60000, 30000]
    if when == "before_connect":
        count = 160
    else:
        count = 40
    socks = []
    t_end = time.monotonic() + 7
    opened = 0
    while time.monotonic() < t_end and not good.errors:
        while len(socks) < count and opened < 4 * count:
            s = socket.create_connection(("127.0.0.1", b.port), timeout=5)
            try:
                if when == "after_connect":
                    s.sendall(w.connect("big%d" % opened, keepalive=0))
                    assert s.recv(4) == w.connack(0, 0)
                    s.sendall(b"\x30" + w.varint(sizes[opened % 6] - 5)
                              + b"\x00\x03a/b")
                else:
                    s.sendall(b"\x10" + w.varint(64 * 1024)
                              + b"\x00\x04MQTT\x04\x02")
            except OSError:
                pass
            socks.append(s)
            opened += 1
        r, _, _ = select.select(socks, [], [],
                                max(0, min(0.5, t_end - time.monotonic())))
        for s in r:  # closed by the broker
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data:
                socks.remove(s)
                s.close()
    close_all(socks)
    assert opened >= count
    good.finish()


# ---- connection floods -------------------------------------------------

@pytest.fixture
def nofile():
    """Raises RLIMIT_NOFILE of the test process (and so of the brokers it
    starts) to at least want, as far as the hard limit goes; restored
    after the test."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)

    def want(n):
        soft, hard = old
        new = min(hard, max(soft, n))
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        return new

    yield want
    resource.setrlimit(resource.RLIMIT_NOFILE, old)


@pytest.mark.timeout(60)
def test_thousands_of_connections_without_connect(guarded, nofile):
    limit = nofile(8192)  # the broker inherits it
    n = min(2500, limit - 300)  # each side has `limit` descriptors
    b, good = guarded(conf="max_connections 3000\nmax_sessions 3000\n"
                           "connect_timeout 2\n"
                           "listener {port} 127.0.0.1\n"
                           "allow_anonymous true\n")
    mark = b.mark()
    t0 = time.monotonic()
    socks = [socket.create_connection(("127.0.0.1", b.port), timeout=10)
             for _ in range(n)]
    opened = time.monotonic() - t0
    still = wait_closed(socks, timeout=opened + 2 + 4)
    close_all(socks)
    assert not still, "%d of %d idle connections still open %.1f s after " \
        "connect_timeout 2" % (len(still), n, opened + 6)
    b.wait_count("no CONNECT in 2 s", n, since=mark, timeout=5)
    # the pool is usable again: as many real clients, every one accepted
    conns = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", b.port), timeout=10)
        s.sendall(w.connect("again%d" % i))
        conns.append(s)
    for i, s in enumerate(conns):
        got = b""
        while len(got) < 4:
            d = s.recv(4 - len(got))
            assert d, "client again%d: closed (%r)" % (i, got)
            got += d
        assert got == w.connack(0, 0), "client again%d: %r" % (i, got)
    close_all(conns)
    good.finish()


def test_connect_flood_past_max_connections(guarded):
    b, good = guarded(conf="max_connections 50\nlistener {port} 127.0.0.1\n"
                           "allow_anonymous true\n")
    mark = b.mark()
    conns = []
    for i in range(200):
        s = socket.create_connection(("127.0.0.1", b.port), timeout=5)
        try:
            s.sendall(w.connect("flood%d" % i))
        except OSError:
            pass
        conns.append(s)
    accepted, refused = [], []
    for i, s in enumerate(conns):
        s.settimeout(3)
        try:
            got = s.recv(4)
        except OSError:
            got = b""
        (accepted if got == w.connack(0, 0) else refused).append(i)
        if got not in (b"", w.connack(0, 0)):
            raise AssertionError("flood%d: %r" % (i, got))
    # the good client holds one of the 50 slots
    assert len(accepted) == 49, "accepted %d, want 49" % len(accepted)
    assert accepted == list(range(49)), accepted
    lines = b.find("refused: max_connections reached", since=mark)
    assert 1 <= len(lines) <= 2, "%d refusal lines for 151 refusals:\n%s" % (
        len(lines), "\n".join(lines[:5]))
    mark = b.mark()
    close_all(conns)
    b.wait_count("closed its connection.", 49, since=mark)
    # the slots come back
    again = [w.open_client(b.port, "back%d" % i) for i in range(49)]
    for c in again:
        c.close()
    good.finish()


@pytest.mark.timeout(40)
def test_fd_limit_reached_no_busy_loop(guarded):
    # The broker's descriptor limit is below max_connections (a router's
    # default 1024 with max_connections 1024 does this): past it accept()
    # fails with EMFILE. The broker must go on serving its clients, without
    # spinning on the listening socket or logging every failed accept.
    b, good = guarded("connect_timeout 3\n")

    def cpu_for(rounds):
        """Broker CPU share while the good client does `rounds` trips."""
        cpu0, t0 = cpu_seconds(b.proc.pid), time.monotonic()
        with good.cond:
            start = good.got
            good.cond.wait_for(lambda: good.got >= start + rounds
                               or good.errors, timeout=2 * PATIENCE)
        return (cpu_seconds(b.proc.pid) - cpu0) / (time.monotonic() - t0)

    base = cpu_for(20)
    soft, hard = resource.prlimit(b.proc.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(b.proc.pid, resource.RLIMIT_NOFILE, (64, hard))
    mark = b.mark()
    socks = [socket.create_connection(("127.0.0.1", b.port), timeout=5)
             for _ in range(120)]
    used = cpu_for(20)  # while the backlog holds what it cannot accept
    close_all(socks)
    lines = [ln for ln in b.all_lines()[mark:]
             if "accept" in ln[1].lower() or "open files" in ln[1].lower()]
    resource.prlimit(b.proc.pid, resource.RLIMIT_NOFILE, (soft, hard))
    assert len(lines) <= 5, "%d accept failure lines, e.g. %r" % (
        len(lines), lines[0][1])
    assert used < base + 0.3, "broker CPU %.0f%% while accept() fails " \
        "(%.0f%% before)" % (used * 100, base * 100)
    good.finish()


# ---- subscriptions -----------------------------------------------------

def test_thousands_of_subscriptions(guarded):
    b, good = guarded("max_subscriptions 2000\n")
    c = w.open_client(b.port, "subflood")
    codes = []
    for start in range(0, 5000, 250):
        codes += w.sub(c, start // 250 + 1,
                       [("sf/%d/x" % i, 1) for i in range(start,
                                                          start + 250)])
    granted = [i for i, r in enumerate(codes) if r != 0x80]
    # the good client holds one subscription of the 2000
    assert granted == list(range(1999)), "granted %d: %s..." % (
        len(granted), granted[-3:])
    # subscribing a granted filter again replaces it: no new slot needed
    assert w.sub(c, 100, [("sf/5/x", 0)]) == [0]
    assert w.sub(c, 101, [("sf/4999/x", 0)]) == [0x80]
    # a subscribed filter delivers
    p2 = w.open_client(b.port, "sfpub")
    w.pub(p2, "sf/7/x", b"hit", qos=1)
    p = w.recv_pub(c)
    assert (p.topic, p.payload) == ("sf/7/x", b"hit")
    # all released at once (clean session): the pool is whole again
    c.send(w.DISCONNECT_BYTES)
    c.expect_closed()
    c = w.open_client(b.port, "subflood2")
    codes = w.sub(c, 1, [("sg/%d" % i, 0) for i in range(2000)])
    assert codes.count(0) == 1999 and codes[-1] == 0x80, codes[-3:]
    good.finish()


def test_subscriber_that_never_reads_is_cut_off(guarded):
    b, good = guarded("max_queued_messages 200\n")
    mark = b.mark()
    stuck = w.Conn(b.port, rcvbuf=4096)
    stuck.send(w.connect("stuck"))
    stuck.expect(w.connack(0, 0))
    stuck.send(w.subscribe(1, [("flood/#", 1)]))
    stuck.expect(bytes([0x90, 3, 0, 1, 1]))
    reader = w.open_client(b.port, "reader")
    assert w.sub(reader, 1, [("flood/#", 1)]) == [1]
    pubc = w.open_client(b.port, "flooder")
    n = 2000
    got = []
    done = threading.Event()

    def drain():
        try:
            while len(got) < n:
                got.append(w.recv_pub(reader, timeout=10).payload)
        finally:
            done.set()

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    for i in range(n):
        w.pub(pubc, "flood/x", b"%d:" % i + b"f" * 1000, qos=1,
              pid=i % 60000 + 1)
    done.wait(20)
    assert len(got) == n, "reader got %d of %d" % (len(got), n)
    assert got == [b"%d:" % i + b"f" * 1000 for i in range(n)]
    b.wait_log("Client stuck disconnected: outgoing queue full", since=mark)
    # the stuck one, read at last: what was in its socket buffers, then EOF
    try:
        while True:
            stuck.recv_packet(timeout=3)
    except w.Closed:
        pass
    good.finish()


# ---- deep topics -------------------------------------------------------

def test_deep_topic_levels(guarded):
    b, good = guarded()
    deep_sub = w.open_client(b.port, "deepsub")
    assert w.sub(deep_sub, 1, [("deep/#", 1)]) == [1]
    pubc = w.open_client(b.port, "deeppub")
    # a PUBLISH to a topic of 1000 levels: routed like any other
    t1000 = "deep/" + "/".join("l%d" % i for i in range(999))
    w.pub(pubc, t1000, b"1000 levels", qos=1, pid=1)
    p = w.recv_pub(deep_sub)
    assert (p.topic, p.payload) == (t1000, b"1000 levels")
    # empty levels
    tempty = "deep" + "/" * 999
    w.pub(pubc, tempty, b"empty", qos=1, pid=2)
    p = w.recv_pub(deep_sub)
    assert p.topic == tempty
    # SUBSCRIBE: 300 levels refused, the limit (32) granted, 33 refused,
    # in one packet with a good filter
    f300 = "/".join(["d"] * 300)
    f32 = "/".join(["d"] * 31) + "/#"
    f33 = "/".join(["d"] * 33)
    c = w.open_client(b.port, "deepfilters")
    assert w.sub(c, 1, [(f300, 0), ("ok/x", 1), (f32, 1), (f33, 0),
                        ("/".join(["+"] * 300), 0)]) == [0x80, 1, 1, 0x80,
                                                         0x80]
    # a retained message on a 100-level topic is delivered, not stored
    t100 = "deep/" + "/".join("r%d" % i for i in range(99))
    w.pub(pubc, t100, b"deep retained", qos=1, retain=True, pid=3)
    p = w.recv_pub(deep_sub)
    assert (p.topic, p.payload) == (t100, b"deep retained")
    w.pub(pubc, "deep/shallow", b"kept", qos=1, retain=True, pid=4)
    w.recv_pub(deep_sub)
    late = w.open_client(b.port, "deeplate")
    assert w.sub(late, 1, [("deep/#", 1)]) == [1]
    p = w.recv_pub(late)
    assert (p.topic, p.payload, p.retain) == ("deep/shallow", b"kept", True)
    late.expect_silence(0.3)
    # and every client is still there
    for x in (deep_sub, pubc, c, late):
        assert x.is_open()
    good.finish()


# ---- huge client ids and the packet size limit -------------------------

def test_huge_client_ids(guarded):
    # [MQTT-3.1.3-5]: a server may accept long ids; if it does not, it
    # refuses with CONNACK 2 [MQTT-3.1.3-9]; either way cleanly
    b, good = guarded()
    cid = "H" * 65535
    outcomes = []
    for k in range(20):
        c = w.Conn(b.port)
        c.send(w.connect(cid[:-2] + "%02d" % k))
        try:
            p = c.recv_packet(timeout=3)
        except w.Closed:
            outcomes.append(("closed", c))
            continue
        assert p.type == w.CONNACK and p.raw[:3] == b"\x20\x02\x00", p
        if p.raw[3] == 0:
            outcomes.append(("accepted", c))
            assert c.is_open()
            if k == 0:  # it works like any client
                assert w.sub(c, 1, [("huge/id", 1)]) == [1]
                w.pub(c, "huge/id", b"x", qos=1, pid=2)
                assert w.recv_pub(c).payload == b"x"
        else:
            assert p.raw[3] == 2, "CONNACK %r (want 0 or 2)" % p.raw
            c.expect_closed()
            outcomes.append(("refused", c))
    # the same huge id again: a takeover, as for any id
    if outcomes[0][0] == "accepted":
        c2 = w.Conn(b.port)
        c2.send(w.connect(cid[:-2] + "00"))
        c2.expect(w.connack(0, 0))
        outcomes[0][1].expect_closed()
        c2.close()
    print("65535-byte client ids:", [o for o, _ in outcomes])
    for _, c in outcomes:
        c.close()
    good.finish()


def test_packet_at_max_packet_size_and_one_over(guarded):
    b, good = guarded("max_packet_size 10000\n")
    sub = w.open_client(b.port, "sizesub")
    assert w.sub(sub, 1, [("size/#", 1)]) == [1]
    pubc = w.open_client(b.port, "sizepub")
    # payload size for a whole packet of exactly 10000 bytes
    pay = next(k for k in range(9900, 10000)
               if len(w.publish("size/x", b"e" * k, qos=1, pid=1)) == 10000)
    w.pub(pubc, "size/x", b"e" * pay, qos=1, pid=1)
    p = w.recv_pub(sub)
    assert len(p.raw) == 10000 and p.payload == b"e" * pay
    over = w.publish("size/x", b"o" * (pay + 1), qos=1, pid=2)
    assert len(over) == 10001
    mark = b.mark()
    pubc.send(over)
    pubc.expect_closed(timeout=2)
    b.wait_log("packet larger than max_packet_size (10000)", since=mark)
    sub.expect_silence(0.3)
    # the limit is on the whole packet, for every type
    c = w.open_client(b.port, "sizesub2")
    big_sub = w.subscribe(1, [("s/" + "z" * 9991, 0)])
    assert len(big_sub) > 10000
    c.send(big_sub)
    c.expect_closed(timeout=2)
    good.finish()
