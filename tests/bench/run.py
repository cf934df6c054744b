#!/usr/bin/python3
"""make bench: mqttpx against Mosquitto with tests/bench/mqttpx-bench.

Each scenario runs against a fresh broker process (a free loopback port,
the bench configs below), both brokers in turn with the first one
alternating, BENCH_RUNS times (default 3). The load generator reads the
broker's CPU time and RSS from /proc/PID around the measured phase; this
script prints medians with the min-max spread as a Markdown table and
writes it to tests/bench/results/latest.md (raw lines: latest.txt).

  tests/bench/run.py               full run (~5-7 min on 2 cores)
  BENCH_QUICK=1 tests/bench/run.py smoke run, one pass, small counts (~30 s)
  tests/bench/run.py --callgrind   fan-in QoS 1 with mqttpx under callgrind:
                                   instructions per message, top functions

Environment: BENCH_RUNS=N, BENCH_QUICK=1, BENCH_ONLY=REGEX (scenario ids),
BENCH_MQTTPX=PATH (default ./mqttpx), BENCH_MOSQUITTO=PATH (default
/usr/sbin/mosquitto; missing: mqttpx runs alone, and the table says so).
"""
import datetime
import os
import platform
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TOOL = os.path.join(HERE, "mqttpx-bench")
TOOL_SRC = TOOL + ".c"
RESULTS = os.path.join(HERE, "results")
MQTTPX = os.environ.get("BENCH_MQTTPX", os.path.join(ROOT, "mqttpx"))
MOSQUITTO = os.environ.get("BENCH_MOSQUITTO", "/usr/sbin/mosquitto")
QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
RUNS = int(os.environ.get("BENCH_RUNS", "1" if QUICK else "3"))
ONLY = os.environ.get("BENCH_ONLY", "")

# Pools first: max_connections before any listener line sizes the pool.
MQTTPX_CONF = """\
max_connections 12000
max_sessions 12000
max_subscriptions 20000
max_queued_total 262144
max_inflight_messages 20
max_queued_messages 10000
sys_interval 0
log_type error
connection_messages false
allow_anonymous true
listener {port} 127.0.0.1
"""
MQTTPX_PROXY = "listener {port} 127.0.0.1\nenable_proxy_protocol 2\n"

# max_queued_messages 0 (no limit) where mqttpx has 10000: Debian's
# 2.0.11-1.2+deb12u2 drops QoS 1/2 messages for a subscriber with only
# ~160 queued when the limit is 10000 ("Outgoing messages are being
# dropped"), which stalls fan-in; the bench's windows keep every queue
# below 200 messages anyway, so the limit is never the one that acts.
MOSQUITTO_CONF = """\
listener {port} 127.0.0.1
allow_anonymous true
max_inflight_messages 20
max_queued_messages 0
sys_interval 0
log_type error
log_dest stderr
connection_messages false
set_tcp_nodelay true
persistence false
"""

# Scenario table: id, tool arguments (full, quick), kind, mqttpx only.
# Message counts: fanin/pairs N messages; fanout N messages x 100
# subscribers = deliveries; latency N at 1000 msg/s.
S = []


def scen(sid, full, quick, kind, px_only=False):
    S.append(dict(id=sid, full=full, quick=quick, kind=kind,
                  px_only=px_only))


for q, n, nq in ((0, 200000, 40000), (1, 100000, 20000), (2, 50000, 10000)):
    scen("fanin-q%d" % q, ["fanin", "-q", str(q), "-n", str(n)],
         ["fanin", "-q", str(q), "-n", str(nq)], "thr")
for q, n, nq in ((0, 200000, 40000), (1, 100000, 20000), (2, 50000, 10000)):
    scen("fanout-q%d" % q, ["fanout", "-q", str(q), "-n", str(n // 100)],
         ["fanout", "-q", str(q), "-n", str(nq // 100)], "thr")
for q, n, nq in ((0, 200000, 40000), (1, 100000, 20000), (2, 50000, 10000)):
    scen("pairs-q%d" % q, ["pairs", "-q", str(q), "-n", str(n)],
         ["pairs", "-q", str(q), "-n", str(nq)], "thr")
for q in (0, 1, 2):
    scen("latency-q%d" % q, ["latency", "-q", str(q), "-n", "5000"],
         ["latency", "-q", str(q), "-n", "1000"], "lat")
scen("connect", ["connect", "-C", "2000"], ["connect", "-C", "500"], "conn")
scen("connect-proxy-v2", ["connect", "-C", "2000", "--proxy-v2"],
     ["connect", "-C", "500", "--proxy-v2"], "conn", px_only=True)
scen("idle-10000", ["idle", "-C", "10000", "-x", "20000"],
     ["idle", "-C", "10000", "-x", "3000"], "idle")
scen("idle-100", ["idle", "-C", "100", "-x", "20000"],
     ["idle", "-C", "100", "-x", "3000"], "idle")

# Rows of the table per kind: (label, key, lower is better).
ROWS = {
    "thr": [("CPU µs/delivery", "broker_cpu_us_per_delivery", True),
            ("deliveries/s", "deliveries_per_s", False)],
    "lat": [("p50 µs", "p50_us", True), ("p90 µs", "p90_us", True),
            ("p99 µs", "p99_us", True), ("max µs", "max_us", True),
            ("CPU µs/delivery", "broker_cpu_us_per_delivery", True)],
    "conn": [("CPU µs/connection", "broker_cpu_us_per_conn", True),
             ("connections/s", "conn_per_s", False)],
    "idle": [("RSS bytes/idle conn", "rss_per_conn_b", True),
             ("setup CPU µs/conn", "broker_setup_cpu_us_per_conn", True),
             ("QoS 1 pair msg/s", "x_msg_per_s", False),
             ("pair CPU µs/msg", "x_broker_cpu_us_per_delivery", True)],
}
CHECK_KEYS = ("lost", "dup", "ooo", "stray", "disconnects", "proto_err",
              "conn_fail", "sub_fail", "x_lost", "x_dup", "x_ooo",
              "x_disconnects")


def say(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Broker:
    """A fresh broker process on free loopback ports."""

    def __init__(self, name, tmp, wrap=None):
        self.name, self.tmp = name, tmp
        self.port, self.proxy_port = free_port(), free_port()
        conf = os.path.join(tmp, name + ".conf")
        with open(conf, "w") as f:
            if name == "mqttpx":
                f.write(MQTTPX_CONF.format(port=self.port))
                f.write(MQTTPX_PROXY.format(port=self.proxy_port))
                argv = [MQTTPX, "-c", conf]
            else:
                f.write(MOSQUITTO_CONF.format(port=self.port))
                argv = [MOSQUITTO, "-c", conf]
        self.log = os.path.join(tmp, name + ".log")
        self.proc = subprocess.Popen((wrap or []) + argv, cwd=ROOT,
                                     stdin=subprocess.DEVNULL,
                                     stdout=open(self.log, "w"),
                                     stderr=subprocess.STDOUT,
                                     preexec_fn=raise_nofile)
        self.wait_ready(60 if wrap else 10)

    def wait_ready(self, limit):
        end = time.monotonic() + limit
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited at start (%s):\n%s" % (
                    self.name, self.proc.returncode, self.log_tail()))
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError("%s: port %d not open after %d s" % (
            self.name, self.port, limit))

    def log_tail(self):
        try:
            with open(self.log) as f:
                return "".join(f.readlines()[-10:])
        except OSError:
            return ""

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        """SIGTERM, then SIGKILL after 30 s; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def parse_line(out):
    for line in reversed(out.splitlines()):
        if line.startswith("scenario="):
            d = {}
            for kv in line.split():
                k, _, v = kv.partition("=")
                d[k] = v
            return d, line
    return None, None


def run_one(sc, name, tmp, raw):
    """One scenario against one fresh broker; returns the parsed line plus
    'crash' when the broker died."""
    args = sc["quick"] if QUICK else sc["full"]
    try:
        b = Broker(name, tmp)
    except RuntimeError as e:
        say("  " + str(e))
        raw.write("%s scenario=%s broker=%s status=start_failed\n" % (
            sc["id"], sc["id"], name))
        return {"status": "start_failed"}
    port = b.proxy_port if "--proxy-v2" in args else b.port
    cmd = [TOOL] + args + ["-p", str(port), "--pid", str(b.proc.pid),
                           "--tag", name, "-t", "240"]
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=300)
        out, err, rc = p.stdout, p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        out, err, rc = e.stdout or "", "bench timed out", -1
        out = out.decode() if isinstance(out, bytes) else out
    alive = b.alive()
    status = b.stop()
    d, line = parse_line(out)
    if d is None:
        d = {"status": "no_output"}
        line = "scenario=%s broker=%s status=no_output rc=%s" % (
            sc["id"], name, rc)
    if not alive:
        d["crash"] = "exit %s" % status
        d["status"] = "crash"
        say("  %s crashed during %s (exit %s):\n%s" % (
            name, sc["id"], status, b.log_tail()))
    elif status not in (0, -signal.SIGTERM):
        d["crash"] = "stop %s" % status
    errs = [l for l in err.splitlines() if "ready:" not in l]
    if errs:
        say("  " + "\n  ".join(errs[:5]))
    blog = b.log_tail().strip()
    if blog:  # log_type error: any line is worth a look
        say("  %s log:\n  %s" % (name, blog.replace("\n", "\n  ")))
    raw.write("%s %s\n" % (sc["id"], line))
    raw.flush()
    return d


def fnum(v):
    if v is None:
        return "-"
    a = abs(v)
    if a >= 100000:
        return "%.0fk" % (v / 1000)
    if a >= 1000:
        return "%.0f" % v
    if a >= 100:
        return "%.0f" % v
    if a >= 10:
        return "%.1f" % v
    return "%.2f" % v


def cell(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-", None
    m = statistics.median(vals)
    if len(vals) == 1:
        return fnum(m), m
    return "%s [%s–%s]" % (fnum(m), fnum(min(vals)), fnum(max(vals))), m


def checks(results):
    """'ok', or what went wrong summed over the runs."""
    tot, bad = {}, {}
    for d in results:
        for k in CHECK_KEYS:
            try:
                v = int(d.get(k, "0"))
            except ValueError:
                v = 0
            if v:
                tot[k] = tot.get(k, 0) + v
        st = d.get("status", "?")
        if st != "ok":
            bad[st] = bad.get(st, 0) + 1
        if "crash" in d:
            bad[d["crash"]] = bad.get(d["crash"], 0) + 1
    if not tot and not bad:
        return "ok"
    parts = ["%s %d" % (k, v) for k, v in tot.items()]
    parts += ["%d× %s" % (v, k) for k, v in bad.items()]
    return ", ".join(parts)


def getf(d, k):
    try:
        v = float(d[k])
        return None if v < 0 and "rss" not in k else v
    except (KeyError, ValueError):
        return None


def version(argv):
    try:
        p = subprocess.run(argv, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=10)
        return p.stdout.splitlines()[0].strip()
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def header(brokers):
    """The table's preamble, taken before the runs; {took} is filled in at
    the end."""
    cpu = cpu_model()
    git = subprocess.run(["git", "-C", ROOT, "describe", "--always",
                          "--dirty"], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True).stdout.strip()
    stale = ""
    src = os.path.join(ROOT, "mqttpx.c")
    if os.path.exists(src) and os.path.getmtime(MQTTPX) < os.path.getmtime(
            src):
        stale = " (binary older than mqttpx.c)"
    lines = [
        "# mqttpx benchmark (%s)" % ("BENCH_QUICK smoke run" if QUICK
                                     else "full run"),
        "",
        "- date: %s" % datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "- machine: %s, %s, %d CPUs" % (platform.machine(), cpu,
                                        os.cpu_count()),
        "- mqttpx: %s, git %s%s" % (version([MQTTPX, "-h"]).split(":")[0],
                                    git, stale),
    ]
    if "mosquitto" in brokers:
        lines.append("- mosquitto: %s" % version([MOSQUITTO, "-h"]))
    else:
        lines.append("- mosquitto: not found at %s: mqttpx ran alone"
                     % MOSQUITTO)
    lines += [
        "- %d run(s) per scenario, a fresh broker each, first broker "
        "alternating; cells: median [min–max]; took {took} s" % RUNS,
        "",
    ]
    return lines


def table(brokers, res):
    both = "mosquitto" in brokers
    cols = ["scenario", "metric", "mqttpx"]
    if both:
        cols += ["mosquitto", "mqttpx/mosq"]
    cols += ["checks"]
    out = ["| " + " | ".join(cols) + " |",
           "|" + "|".join("---" for _ in cols) + "|"]
    for sc in S:
        if sc["id"] not in res:
            continue
        r = res[sc["id"]]
        first = True
        for label, key, _ in ROWS[sc["kind"]]:
            px, pm = cell([getf(d, key) for d in r.get("mqttpx", [])])
            row = [sc["id"] if first else "", label, px]
            if both:
                if "mosquitto" in r:
                    mo, mm = cell([getf(d, key) for d in r["mosquitto"]])
                    ratio = ("%.2f" % (pm / mm)) if pm is not None and mm \
                        else "-"
                else:
                    mo, ratio = "n/a", "-"
                row += [mo, ratio]
            if first:
                chk = "mqttpx: " + checks(r.get("mqttpx", []))
                if both and "mosquitto" in r:
                    chk += "; mosq: " + checks(r["mosquitto"])
            else:
                chk = ""
            row.append(chk)
            out.append("| " + " | ".join(row) + " |")
            first = False
    return out


def scale_lines(brokers, res):
    """The issue's scale test: pair throughput with 10000 idle connections
    over the same with 100, per run, median."""
    if "idle-10000" not in res or "idle-100" not in res:
        return []
    out = ["", "Scale test: QoS 1 pair throughput with 10000 idle "
           "subscribed connections / with 100 (goal ≥ 0.80):", ""]
    for name in brokers:
        a = res["idle-10000"].get(name, [])
        b = res["idle-100"].get(name, [])
        ratios = []
        for x, y in zip(a, b):
            fx, fy = getf(x, "x_msg_per_s"), getf(y, "x_msg_per_s")
            if fx and fy:
                ratios.append(fx / fy)
        if ratios:
            m = statistics.median(ratios)
            out.append("- %s: %.3f [%.3f–%.3f] %s" % (
                name, m, min(ratios), max(ratios),
                "PASS" if m >= 0.8 else "FAIL"))
    return out


def build_tool():
    if os.path.exists(TOOL) and os.path.getmtime(TOOL) >= os.path.getmtime(
            TOOL_SRC):
        return
    cc = os.environ.get("CC", "cc")
    subprocess.run([cc, "-O2", "-std=c11", "-Wall", "-Wextra", "-o", TOOL,
                    TOOL_SRC], check=True)


def callgrind():
    """Fan-in QoS 1 with mqttpx under callgrind: counters zeroed after
    start-up, dumped after the run; instructions per message."""
    n = 5000 if QUICK else 20000
    with tempfile.TemporaryDirectory(prefix="mqttpx-bench-") as tmp:
        out = os.path.join(tmp, "callgrind.out")
        b = Broker("mqttpx", tmp, wrap=[
            "valgrind", "--tool=callgrind", "--callgrind-out-file=" + out])
        pid = str(b.proc.pid)
        subprocess.run(["callgrind_control", "-z", pid], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        p = subprocess.run([TOOL, "fanin", "-q", "1", "-n", str(n), "-p",
                            str(b.port), "-t", "600"], text=True,
                           stdout=subprocess.PIPE)
        subprocess.run(["callgrind_control", "-d", pid], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        b.stop()
        d, line = parse_line(p.stdout)
        print(line)
        dumps = sorted(f for f in os.listdir(tmp)
                       if f.startswith("callgrind.out.") and
                       f != "callgrind.out")
        if not dumps or not d:
            print("callgrind: no dump")
            return 1
        dump = os.path.join(tmp, dumps[0])
        ir = 0
        with open(dump) as f:
            for l in f:
                if l.startswith("summary:") or l.startswith("totals:"):
                    ir = int(l.split()[1])
        msgs = int(d.get("deliveries", "0")) or 1
        print("mqttpx fan-in QoS 1, %d messages from 8 publishers: %d "
              "instructions in all, %.0f per message (connection set-up "
              "included)" % (msgs, ir, ir / msgs))
        ann = subprocess.run(["callgrind_annotate", "--inclusive=no",
                              "--threshold=100", dump],
                             stdout=subprocess.PIPE, text=True).stdout
        # the callers of main show at 100 %: skip them
        top = [l for l in ann.splitlines()
               if re.match(r"\s*[\d,]+ \(", l) and "(100.0%)" not in l]
        print("top functions (self instructions, of %s in the dump %s):"
              % (format(ir, ","), dump.replace(tmp, "TMP")))
        print("\n".join(top[:20]))
        return 0


def main():
    if "-h" in sys.argv or "--help" in sys.argv:
        print(__doc__)
        return 0
    build_tool()
    if not os.path.exists(MQTTPX):
        say("no mqttpx binary at %s: run make mqttpx" % MQTTPX)
        return 2
    if "--callgrind" in sys.argv:
        return callgrind()
    brokers = ["mqttpx"]
    if os.path.exists(MOSQUITTO):
        brokers.append("mosquitto")
    else:
        say("mosquitto not found at %s: running mqttpx alone" % MOSQUITTO)
    os.makedirs(RESULTS, exist_ok=True)
    t0 = time.monotonic()
    head = header(brokers)
    res = {}
    todo = [sc for sc in S if not ONLY or re.search(ONLY, sc["id"])]
    with tempfile.TemporaryDirectory(prefix="mqttpx-bench-") as tmp, \
            open(os.path.join(RESULTS, "latest.txt"), "w") as raw:
        for r in range(RUNS):
            for i, sc in enumerate(todo):
                names = [n for n in brokers
                         if n == "mqttpx" or not sc["px_only"]]
                if (r + i) % 2:
                    names.reverse()
                for name in names:
                    say("[run %d/%d, %.0f s] %s %s" % (
                        r + 1, RUNS, time.monotonic() - t0, sc["id"], name))
                    d = run_one(sc, name, tmp, raw)
                    res.setdefault(sc["id"], {}).setdefault(
                        name, []).append(d)
    took = "%.0f" % (time.monotonic() - t0)
    lines = [l.replace("{took}", took) for l in head] + \
        table(brokers, res) + scale_lines(brokers, res)
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(RESULTS, "latest.md"), "w") as f:
        f.write(text)
    # correctness fails the target (a crash, loss at QoS 1/2, duplicates,
    # disconnects); slowness does not
    failed = any(d.get("status") != "ok" or "crash" in d
                 for r in res.values() for d in r.get("mqttpx", []))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
