#!/usr/bin/python3
"""Persistence cost of mqttpx: journal CPU/bytes per message, snapshot volume.

  /usr/bin/python3 tests/bench/persist.py      (~4-5 min on 2 cores)

Every run starts a fresh ./mqttpx (BENCH_MQTTPX=PATH to change) on a free
loopback port with its persistence directory in a fresh temporary directory
(on the disk that holds $TMPDIR; tmpfs would make fdatasync free).

Part 1, cost per message, three modes: persistence off, snapshot mode
(autosave_interval 3600: no snapshot during the run), journal mode.
  retained-q1: a raw-socket QoS 1 publisher written here (standard library),
      PERSIST_N (20000) retained messages, 64-byte payloads, round-robin over
      100 topics t/0..t/99, 20 in flight; no subscribers. Every message is a
      retained change, so the journal records each one. Broker CPU from
      /proc/PID/stat (utime+stime), file writes from /proc/PID/io.
  bench-fanin-q1: mqttpx-bench fanin -q 1 (8 publishers -> 1 subscriber,
      clean sessions, nothing retained): traffic that is no persistent
      state, so the journal should cost nothing.
Part 2, steady load for PERSIST_STEADY_S (20) seconds after a 3 s warm-up:
  200 retained QoS 1 msg/s over 100 topics (64-byte payloads), 20 offline
  persistent sessions (clean session 0, subscribed to t/# at QoS 1) whose
  queues are full (max_queued_messages 100). Snapshot mode with
  autosave_interval 2 and journal mode (autosave_interval 1800, so no
  compaction during the run). $SYS/broker/persistence/saves and /bytes
  (sys_interval 1) and wchar from /proc/PID/io.

Each figure is the median [min-max] of PERSIST_RUNS (3) runs. The table
goes to stdout and to tests/bench/results/persist.md.
Exit status 1 when a run lost acknowledgements, the broker crashed or did
not stop cleanly, or its log had errors/warnings.
"""
import datetime
import os
import platform
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import cpu_model, free_port, say  # noqa: E402  (the bench's own)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TOOL = os.path.join(HERE, "mqttpx-bench")
RESULTS = os.path.join(HERE, "results")
MQTTPX = os.environ.get("BENCH_MQTTPX", os.path.join(ROOT, "mqttpx"))
RUNS = int(os.environ.get("PERSIST_RUNS", "3"))
N_MSG = int(os.environ.get("PERSIST_N", "20000"))
STEADY_S = float(os.environ.get("PERSIST_STEADY_S", "20"))
STEADY_RATE = 200
TOPICS = 100
WINDOW = 20
PAYLOAD = 64
OFFLINE_SESSIONS = 20
CLK = os.sysconf("SC_CLK_TCK")

CONF = """\
max_inflight_messages 20
max_queued_messages {maxq}
sys_interval {sys}
log_type error
log_type warning
connection_messages false
allow_anonymous true
user root
listener {port} 127.0.0.1
"""
MODES = {
    "off": "persistence false\n",
    "snapshot": "persistence true\npersistence_location {dir}\n"
                "persistence_file mqttpx.db\nautosave_interval {auto}\n",
    "journal": "persistence true\npersistence_location {dir}\n"
               "persistence_file mqttpx.db\nautosave_interval {auto}\n"
               "persistence_journal true\n",
}

problems = []


# ---- /proc -------------------------------------------------------------

def proc_cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        st = f.read()
    fields = st[st.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK  # utime, stime


def proc_io(pid):
    d = {}
    with open("/proc/%d/io" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            d[k.strip()] = int(v)
    return d


# ---- broker ------------------------------------------------------------

class Broker:
    def __init__(self, mode, auto=3600, sysi=0, maxq=1000):
        self.tmp = tempfile.mkdtemp(prefix="mqttpx-persist-")
        self.dir = os.path.join(self.tmp, "db")
        os.mkdir(self.dir)
        self.port = free_port()
        conf = os.path.join(self.tmp, "mqttpx.conf")
        with open(conf, "w") as f:
            f.write(CONF.format(port=self.port, sys=sysi, maxq=maxq))
            f.write(MODES[mode].format(dir=self.dir, auto=auto))
        self.log = os.path.join(self.tmp, "mqttpx.log")
        self.proc = subprocess.Popen([MQTTPX, "-c", conf], cwd=ROOT,
                                     stdin=subprocess.DEVNULL,
                                     stdout=open(self.log, "w"),
                                     stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        end = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("mqttpx exited at start:\n" + self.logtext())
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                break
            except OSError:
                if time.monotonic() > end:
                    raise RuntimeError("mqttpx: port not open")
                time.sleep(0.02)

    def logtext(self):
        try:
            with open(self.log) as f:
                return f.read()
        except OSError:
            return ""

    def file_size(self, suffix=""):
        try:
            return os.path.getsize(os.path.join(self.dir, "mqttpx.db" + suffix))
        except OSError:
            return 0

    def stop(self, what):
        alive = self.proc.poll() is None
        if alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        if not alive:
            problems.append("%s: mqttpx died during the run (exit %s)"
                            % (what, rc))
        elif rc not in (0, -signal.SIGTERM):
            problems.append("%s: mqttpx stop status %s" % (what, rc))
        log = [l for l in self.logtext().splitlines() if l.strip()]
        if log:
            problems.append("%s: mqttpx log: %s" % (what, " | ".join(log[:5])))
        shutil.rmtree(self.tmp, ignore_errors=True)


# ---- minimal MQTT 3.1.1 client -----------------------------------------

def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def packet(first, body):
    return bytes([first]) + varint(len(body)) + body


def publish_pkt(topic, payload, pid, qos=1, retain=True):
    body = mstr(topic) + (struct.pack("!H", pid) if qos else b"") + payload
    return packet(0x30 | (qos << 1) | (1 if retain else 0), body)


class Client:
    def __init__(self, port, cid, clean=True, keepalive=0):
        self.s = socket.create_connection(("127.0.0.1", port), 5)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.pending = []
        flags = 0x02 if clean else 0
        self.s.sendall(packet(0x10, mstr("MQTT") + bytes([4, flags]) +
                              struct.pack("!H", keepalive) + mstr(cid)))
        t, body = self.read_one(5)
        if t != 0x20 or body[1] != 0:
            raise RuntimeError("CONNACK refused: %r" % body)

    def packets(self):
        """Parses complete packets from the buffer: [(first byte, body)]."""
        out, b, i = [], self.buf, 0
        while True:
            if len(b) - i < 2:
                break
            n, mult, j = 0, 1, i + 1
            while j < len(b):
                n += (b[j] & 0x7F) * mult
                mult *= 128
                j += 1
                if not b[j - 1] & 0x80:
                    break
            else:
                break
            if b[j - 1] & 0x80 or len(b) - j < n:
                break
            out.append((b[i], bytes(b[j:j + n])))
            i = j + n
        del b[:i]
        return out

    def fill(self, timeout):
        r, _, _ = select.select([self.s], [], [], timeout)
        if not r:
            return False
        d = self.s.recv(65536)
        if not d:
            raise RuntimeError("broker closed the connection")
        self.buf += d
        return True

    def read_one(self, timeout, want=None):
        """The first packet (of type want); others stay in self.pending."""
        end = time.monotonic() + timeout
        while True:
            for i, (t, body) in enumerate(self.pending):
                if want is None or t & 0xF0 == want:
                    del self.pending[i]
                    return t, body
            self.pending += self.packets()
            if any(want is None or t & 0xF0 == want for t, _ in self.pending):
                continue
            if not self.fill(max(0, end - time.monotonic())):
                raise RuntimeError("timeout waiting for a packet")

    def subscribe(self, topic, qos=1):
        self.s.sendall(packet(0x82, struct.pack("!H", 1) + mstr(topic) +
                              bytes([qos])))
        t, body = self.read_one(5, 0x90)
        if t != 0x90 or body[2] == 0x80:
            raise RuntimeError("SUBACK failed")

    def close(self):
        try:
            self.s.sendall(b"\xe0\x00")
        except OSError:
            pass
        self.s.close()


def payload(seq):
    return struct.pack("!Q", seq).ljust(PAYLOAD, b"p")


def make_offline_sessions(port):
    for i in range(OFFLINE_SESSIONS):
        c = Client(port, "persist-off-%d" % i, clean=False, keepalive=0)
        c.subscribe("t/#", 1)
        c.close()


class Publisher:
    """QoS 1 retained publisher, at most WINDOW messages unacknowledged."""

    def __init__(self, port, cid="persist-pub"):
        self.c = Client(port, cid, clean=True)
        self.inflight = {}
        self.next_pid = 1
        self.sent = self.acked = self.bad_acks = 0

    def send_batch(self, seqs):
        out = []
        for seq in seqs:
            pid = self.next_pid
            self.next_pid = pid % 65535 + 1
            if pid in self.inflight:
                raise RuntimeError("packet id %d still in flight" % pid)
            self.inflight[pid] = seq
            out.append(publish_pkt("t/%d" % (seq % TOPICS), payload(seq), pid))
        self.c.s.sendall(b"".join(out))
        self.sent += len(seqs)

    def poll(self, timeout):
        if not self.c.fill(timeout):
            return
        for t, body in self.c.packets():
            if t == 0x40:
                pid = struct.unpack("!H", body[:2])[0]
                if self.inflight.pop(pid, None) is None:
                    self.bad_acks += 1
                else:
                    self.acked += 1

    def drain(self, stall=10):
        last = (time.monotonic(), self.acked)
        while self.inflight:
            self.poll(0.5)
            if self.acked != last[1]:
                last = (time.monotonic(), self.acked)
            elif time.monotonic() - last[0] > stall:
                break

    def burst(self, n):
        seq = 0
        last = (time.monotonic(), 0)
        while self.acked < n:
            room = min(WINDOW - len(self.inflight), n - seq)
            if room > 0:
                self.send_batch(range(seq, seq + room))
                seq += room
            self.poll(1.0)
            if self.acked != last[1]:
                last = (time.monotonic(), self.acked)
            elif time.monotonic() - last[0] > 10:
                break  # acknowledgements stopped coming

    def paced(self, rate, seconds, seq0=0):
        t0 = time.monotonic()
        seq = 0
        n = int(rate * seconds)
        while seq < n:
            now = time.monotonic()
            due = min(n, int((now - t0) * rate) + 1)
            room = min(WINDOW - len(self.inflight), due - seq)
            if room > 0:
                self.send_batch(range(seq0 + seq, seq0 + seq + room))
                seq += room
            wait = t0 + seq / rate - time.monotonic()
            self.poll(max(0, wait))
        return seq


class SysWatch:
    """Follows $SYS/broker/persistence/# (sys_interval 1)."""

    def __init__(self, port):
        self.c = Client(port, "persist-sys", clean=True)
        self.c.subscribe("$SYS/broker/persistence/#", 0)
        self.v = {}
        self.stamp = 0.0

    def pump(self, timeout=0.0):
        while self.c.fill(timeout):
            timeout = 0
            got, self.c.pending = self.c.pending + self.c.packets(), []
            for t, body in got:
                if t >> 4 != 3:
                    continue
                tl = struct.unpack("!H", body[:2])[0]
                topic = body[2:2 + tl].decode()
                off = 2 + tl + (2 if (t >> 1) & 3 else 0)
                try:
                    self.v[topic.rsplit("/", 1)[1]] = int(body[off:])
                except ValueError:
                    pass
                self.stamp = time.monotonic()

    def fresh(self, limit=5):
        """Values published after now."""
        t = time.monotonic()
        end = t + limit
        while self.stamp <= t + 0.01 and time.monotonic() < end:
            self.pump(0.2)
        time.sleep(0.1)
        self.pump(0)
        return dict(self.v)


# ---- part 1 ------------------------------------------------------------

def run_retained(mode):
    b = Broker(mode, auto=3600)
    what = "retained-q1 %s" % mode
    r = {}
    try:
        pub = Publisher(b.port)
        pub.burst(200)  # warm-up: every topic retained once, file opened
        cpu0, io0, t0 = proc_cpu_s(b.pid), proc_io(b.pid), time.monotonic()
        j0 = b.file_size(".journal")
        pub.acked = 0
        pub.burst(N_MSG)
        t1, cpu1, io1 = time.monotonic(), proc_cpu_s(b.pid), proc_io(b.pid)
        j1 = b.file_size(".journal")
        if pub.acked != N_MSG or pub.bad_acks or pub.inflight:
            problems.append("%s: %d of %d PUBACKs, %d unexpected" % (
                what, pub.acked, N_MSG, pub.bad_acks))
        n = max(1, pub.acked)
        r = dict(cpu_us=(cpu1 - cpu0) * 1e6 / n, rate=n / (t1 - t0),
                 wchar=(io1["wchar"] - io0["wchar"]) / n,
                 wbytes=(io1["write_bytes"] - io0["write_bytes"]) / n,
                 syscw=(io1["syscw"] - io0["syscw"]) / n,
                 jgrow=(j1 - j0) / n)
        pub.c.close()
    finally:
        b.stop(what)
    return r


def run_fanin(mode):
    b = Broker(mode, auto=3600)
    what = "bench-fanin-q1 %s" % mode
    r = {}
    try:
        io0 = proc_io(b.pid)
        p = subprocess.run([TOOL, "fanin", "-q", "1", "-n", str(N_MSG),
                            "-p", str(b.port), "--pid", str(b.pid),
                            "-t", "120"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=180)
        io1 = proc_io(b.pid)
        d = {}
        for line in p.stdout.splitlines():
            if line.startswith("scenario="):
                d = dict(kv.partition("=")[::2] for kv in line.split())
        if d.get("status") != "ok":
            problems.append("%s: bench status %s: %s" % (
                what, d.get("status"), p.stdout.strip()[-300:]))
        n = N_MSG
        r = dict(cpu_us=float(d.get("broker_cpu_us_per_delivery", "nan")),
                 rate=float(d.get("deliveries_per_s", "nan")),
                 wchar=(io1["wchar"] - io0["wchar"]) / n,
                 wbytes=(io1["write_bytes"] - io0["write_bytes"]) / n,
                 syscw=(io1["syscw"] - io0["syscw"]) / n)
    finally:
        b.stop(what)
    return r


# ---- part 2 ------------------------------------------------------------

def run_steady(mode):
    auto = 2 if mode == "snapshot" else 1800
    b = Broker(mode, auto=auto, sysi=1, maxq=100)
    what = "steady %s" % mode
    r = {}
    try:
        make_offline_sessions(b.port)
        sysw = SysWatch(b.port)
        pub = Publisher(b.port)
        pub.paced(STEADY_RATE, 3.0)  # warm-up: queues full, topics retained
        # $SYS values and wchar are read together, so both cover the same
        # window: from one $SYS publication to the one after the load.
        # Per-hour figures divide by the load's STEADY_S: every write in
        # the window comes from changes the load made (idle: no saves).
        s0 = sysw.fresh()
        io0, t0 = proc_io(b.pid), sysw.stamp
        j0 = b.file_size(".journal")
        pub.acked = 0
        n = pub.paced(STEADY_RATE, STEADY_S, seq0=10 ** 6)
        pub.drain()
        j1 = b.file_size(".journal")
        s1 = sysw.fresh()
        io1, t1 = proc_io(b.pid), sysw.stamp
        if pub.acked != n or pub.bad_acks or pub.inflight:
            problems.append("%s: %d of %d PUBACKs, %d unexpected" % (
                what, pub.acked, n, pub.bad_acks))
        dt = t1 - t0
        saves = s1.get("saves", 0) - s0.get("saves", 0)
        sbytes = s1.get("bytes", 0) - s0.get("bytes", 0)
        if s1.get("failures", 0):
            problems.append("%s: persistence/failures %d" % (
                what, s1["failures"]))
        wchar = io1["wchar"] - io0["wchar"]
        r = dict(saves=saves, sys_bytes=sbytes, wchar=wchar, dt=dt,
                 file=b.file_size(), jgrow=j1 - j0,
                 wchar_h=wchar / STEADY_S * 3600, rate=pub.acked / STEADY_S,
                 acked=pub.acked)
        if saves:
            r["per_save"] = sbytes / saves
        pub.c.close()
        sysw.c.close()
    finally:
        b.stop(what)
    return r


# ---- report ------------------------------------------------------------

def agg(vals, fmt):
    vals = [v for v in vals if v is not None and v == v]
    if not vals:
        return "n/a"
    m = statistics.median(vals)
    if len(vals) == 1:
        return fmt(m)
    return "%s [%s–%s]" % (fmt(m), fmt(min(vals)), fmt(max(vals)))


def f0(x):
    return "%.0f" % x


def f1(x):
    return "%.1f" % x


def f2(x):
    return "%.2f" % x


def fb(x):
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(x) >= div:
            return "%.2f %s" % (x / div, unit)
    return "%.0f B" % x


def main():
    if not os.path.exists(MQTTPX):
        sys.exit("no %s: run make mqttpx" % MQTTPX)
    if not os.path.exists(TOOL):
        subprocess.check_call(["cc", "-O2", "-std=c11", "-Wall", "-Wextra",
                               "-o", TOOL, TOOL + ".c"])
    modes = ("off", "snapshot", "journal")
    res = {}
    # Interleave modes within each round so background load hits all alike.
    for i in range(RUNS):
        for m in modes:
            say("run %d/%d retained-q1 %s" % (i + 1, RUNS, m))
            res.setdefault(("ret", m), []).append(run_retained(m))
        for m in modes:
            say("run %d/%d bench-fanin-q1 %s" % (i + 1, RUNS, m))
            res.setdefault(("fan", m), []).append(run_fanin(m))
        for m in ("snapshot", "journal"):
            say("run %d/%d steady %s" % (i + 1, RUNS, m))
            res.setdefault(("st", m), []).append(run_steady(m))

    def col(key, field):
        return [r.get(field) for r in res[key]]

    out = []
    w = out.append
    w("# mqttpx persistence cost")
    w("")
    w("- date: %s" % datetime.datetime.now().strftime("%Y-%m-%d %H:%M %Z").strip())
    w("- machine: %s, %s, %d CPUs; load average at end %s" % (
        platform.machine(), cpu_model(), os.cpu_count(),
        " ".join("%.2f" % x for x in os.getloadavg())))
    w("- broker: %s; persistence directory on %s (%s)" % (
        os.path.relpath(MQTTPX, ROOT), tempfile.gettempdir(),
        fs_type(tempfile.gettempdir())))
    w("- every figure: median [min–max] of %d runs, each against a fresh "
      "broker (a noisy machine: read the spread)" % RUNS)
    w("")
    w("## 1. Cost per message (%d QoS 1 messages, 20 in flight)" % N_MSG)
    w("")
    w("| load | mode | broker CPU µs/msg | msg/s | wchar B/msg | "
      "journal growth B/msg | write() calls/msg (journal: ≈ fdatasync/msg) |")
    w("| --- | --- | --- | --- | --- | --- | --- |")
    for m in modes:
        k = ("ret", m)
        w("| retained-q1 | %s | %s | %s | %s | %s | %s |" % (
            m, agg(col(k, "cpu_us"), f1), agg(col(k, "rate"), f0),
            agg(col(k, "wchar"), f1), agg(col(k, "jgrow"), f1),
            agg(col(k, "syscw"), f2)))
    for m in modes:
        k = ("fan", m)
        w("| bench-fanin-q1 | %s | %s | %s | %s | – | %s |" % (
            m, agg(col(k, "cpu_us"), f1), agg(col(k, "rate"), f0),
            agg(col(k, "wchar"), f1), agg(col(k, "syscw"), f2)))
    w("")
    w("## 2. Steady load: %d retained QoS 1 msg/s over %d topics, %d-byte "
      "payloads, %d offline persistent sessions (queues full at 100), "
      "%.0f s" % (STEADY_RATE, TOPICS, PAYLOAD, OFFLINE_SESSIONS, STEADY_S))
    w("")
    sn, jn = res[("st", "snapshot")], res[("st", "journal")]
    per = [r.get("per_save") for r in sn]
    w("| figure | value |")
    w("| --- | --- |")
    w("| snapshot mode (autosave_interval 2): saves in the run | %s |"
      % agg([r["saves"] for r in sn], f0))
    w("| snapshot mode: bytes per snapshot ($SYS bytes / saves) | %s |"
      % agg(per, fb))
    w("| snapshot mode: mqttpx.db size at the end | %s |"
      % agg([r["file"] for r in sn], fb))
    w("| snapshot mode: wchar in the run / $SYS bytes | %s |"
      % agg([r["wchar"] / r["sys_bytes"] if r["sys_bytes"] else None
             for r in sn], f2))
    w("| snapshot mode, per hour at autosave_interval 2 (wchar / load s × 3600) | %s |"
      % agg([r["wchar_h"] for r in sn], fb))
    w("| snapshot mode, per hour at autosave_interval 1800 (2 snapshots) | %s |"
      % agg([p * 2 if p else None for p in per], fb))
    w("| snapshot mode, per hour at autosave_interval 300 (12 snapshots) | %s |"
      % agg([p * 12 if p else None for p in per], fb))
    w("| journal mode: msg/s acknowledged | %s |"
      % agg([r["rate"] for r in jn], f1))
    w("| journal mode: journal bytes/s (wchar) | %s |"
      % agg([r["wchar"] / STEADY_S for r in jn], f0))
    w("| journal mode: journal file growth B/msg | %s |"
      % agg([r["jgrow"] / max(1, r["acked"]) for r in jn], f1))
    w("| journal mode, per hour: journal only (wchar/s × 3600) | %s |"
      % agg([r["wchar_h"] for r in jn], fb))
    mp = statistics.median([p for p in per if p]) if any(per) else 0
    w("| journal mode, per hour + 2 compaction snapshots (autosave 1800) | %s |"
      % agg([r["wchar_h"] + 2 * mp for r in jn], fb))
    w("| journal mode, per hour + 12 compaction snapshots (autosave 300) | %s |"
      % agg([r["wchar_h"] + 12 * mp for r in jn], fb))
    w("")
    w("Compaction snapshots in journal mode are counted at the median "
      "snapshot-mode size (%s): the same state." % fb(mp))
    w("")
    w("## Problems seen")
    w("")
    if problems:
        for p in problems:
            w("- " + p)
    else:
        w("- none: every PUBACK came back, no crash, clean stops, empty logs")
    text = "\n".join(out) + "\n"
    print(text, end="")
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "persist.md"), "w") as f:
        f.write(text)
    return 1 if problems else 0


def fs_type(path):
    try:
        best, typ = "", "?"
        with open("/proc/mounts") as f:
            for line in f:
                p = line.split()
                if path.startswith(p[1]) and len(p[1]) >= len(best):
                    best, typ = p[1], p[2]
        return typ
    except OSError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
