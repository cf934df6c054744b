"""Black-box test fixtures: start ./mqttpx on a free port, read its log.

Run from the repository root:  /usr/bin/python3 -m pytest tests/bb -q
MQTTPX=/path/to/binary overrides ./mqttpx (e.g. a sanitizer build).
Every test has a hard timeout (pytest-timeout when installed, else
SIGALRM); every broker a test starts is killed at teardown, and its log
is attached to the report when the test fails.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CONF_DIR = os.path.join(ROOT, "tests", "conf")
BINARY = os.environ.get("MQTTPX", os.path.join(ROOT, "mqttpx"))
TEST_TIMEOUT = 30       # seconds, per test, unless marked otherwise
READY = "listening on"  # the line logged once every listener is open


def version():
    """MQX_VERSION from mqttpx.h."""
    with open(os.path.join(ROOT, "mqttpx.h")) as f:
        m = re.search(r'#define\s+MQX_VERSION\s+"([^"]+)"', f.read())
    return m.group(1) if m else None


def free_port(family=socket.AF_INET, host="127.0.0.1"):
    """A port nobody listens on now: bind to 0, read it, close."""
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.bind((host, 0))
        return s.getsockname()[1]
    finally:
        s.close()


def have_ipv6():
    try:
        free_port(socket.AF_INET6, "::1")
        return True
    except OSError:
        return False


_TMPDIRS = []


def short_tmpdir():
    """A short directory path (unix socket paths are limited to 107);
    removed at the end of the session."""
    d = tempfile.mkdtemp(prefix="mqx", dir="/tmp")
    _TMPDIRS.append(d)
    return d


class Broker:
    """One ./mqttpx process and its log (stderr and stdout lines, in order
    of arrival; log_dest file is read from the file)."""

    def __init__(self, conf_text, workdir, port, args=None, logfile=None,
                 name="broker"):
        self.port = port
        self.workdir = workdir
        self.name = name
        self.conf_path = os.path.join(workdir, name + ".conf")
        with open(self.conf_path, "w") as f:
            f.write(conf_text)
        self.conf_text = conf_text
        self.logfile = logfile
        self.lines = []             # (stream, text)
        self.cond = threading.Condition()
        self.returncode = None
        self.stopped_by_us = False
        self.expect_exit = False    # a test that expects it to exit itself
        cmd = [BINARY, "-c", self.conf_path, "-v"] if args is None else \
            [BINARY] + list(args)
        self.cmd = cmd
        self.proc = None
        self.threads = []

    def start(self, ready=READY):
        """Spawn it; wait for the ready line (10 s) unless ready is None."""
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT,
                                     stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.threads = [
            threading.Thread(target=self._reader, args=(stream, name),
                             daemon=True)
            for stream, name in ((self.proc.stderr, "stderr"),
                                 (self.proc.stdout, "stdout"))]
        for t in self.threads:
            t.start()
        if ready:
            self.wait_log(ready, timeout=10)

    def _reader(self, stream, name):
        for raw in iter(stream.readline, b""):
            with self.cond:
                self.lines.append((name, raw.decode("utf-8", "replace")
                                   .rstrip("\n")))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def _file_lines(self):
        if not self.logfile:
            return []
        try:
            with open(self.logfile, "rb") as f:
                return [("file", ln.decode("utf-8", "replace"))
                        for ln in f.read().splitlines()]
        except FileNotFoundError:
            return []

    def all_lines(self):
        with self.cond:
            return list(self.lines) + self._file_lines()

    def log(self):
        """The whole log so far, as text."""
        return "\n".join(t for _, t in self.all_lines())

    def mark(self):
        """A position in the log; pass it as since= to wait_log."""
        return len(self.all_lines())

    def find(self, sub, since=0):
        """Lines from since on that contain sub (str) or match (regex)."""
        out = []
        for _, t in self.all_lines()[since:]:
            if (sub.search(t) if hasattr(sub, "search") else sub in t):
                out.append(t)
        return out

    def wait_log(self, sub, timeout=5.0, since=0):
        """Wait for a log line containing sub (or matching a compiled
        regex), from position since on. Returns the line."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.find(sub, since)
            if found:
                return found[0]
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("%s: no log line %r within %.1fs" % (
                    self.name, getattr(sub, "pattern", sub), timeout))
            if self.proc.poll() is not None and not self.logfile:
                # drain the readers, then one last look
                for t in self.threads:
                    t.join(1)
                found = self.find(sub, since)
                if found:
                    return found[0]
                raise AssertionError(
                    "%s exited with %s before logging %r"
                    % (self.name, self.proc.returncode,
                       getattr(sub, "pattern", sub)))
            with self.cond:
                # a log file is polled; pipes wake us up
                self.cond.wait(min(left, 0.05 if self.logfile else 0.5))

    def wait_count(self, sub, n, timeout=5.0, since=0):
        """Wait until n lines from since on contain sub (or match it);
        returns them."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.find(sub, since)
            if len(found) >= n:
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("%s: %d of %d log lines %r within %.1fs"
                                     % (self.name, len(found), n,
                                        getattr(sub, "pattern", sub),
                                        timeout))
            if self.proc.poll() is not None and not self.logfile:
                for t in self.threads:
                    t.join(1)
                if len(self.find(sub, since)) < n:
                    raise AssertionError("%s exited with %s" % (
                        self.name, self.proc.returncode))
            with self.cond:
                self.cond.wait(min(left, 0.05 if self.logfile else 0.5))

    def alive(self):
        return self.proc.poll() is None

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=5.0):
        """Stop it; returns the exit status (a negative signal number if it
        was killed)."""
        if self.proc.poll() is None:
            self.stopped_by_us = True
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                self.returncode = "hung on signal %d, killed" % sig
                return self.returncode
        for t in self.threads:
            t.join(2)
        if not any(t.is_alive() for t in self.threads):
            # the test item keeps this object for the whole session: its
            # pipes must not pile up (paho's select() fails past fd 1023)
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream:
                    stream.close()
        if self.returncode is None:
            self.returncode = self.proc.returncode
        return self.returncode


class BrokerFactory:
    """broker(extra) / broker(conf=...) returns a started Broker.

    extra: config lines appended to 'listener {port} 127.0.0.1' and
    'allow_anonymous true'. conf: a whole config text; '{port}' and
    '{dir}' (a per-test directory) are substituted. args: a full command
    line instead of '-c CONF -v' (then ready may be None)."""

    def __init__(self, request):
        self.request = request
        self.brokers = []
        self.dir = short_tmpdir()

    def __call__(self, extra="", conf=None, port=None, args=None,
                 logfile=None, ready=READY, name=None):
        port = port or free_port()
        if conf is None:
            conf = "listener {port} 127.0.0.1\nallow_anonymous true\n" + extra
        text = conf.replace("{port}", str(port)).replace("{dir}", self.dir)
        if args is not None:
            args = [a.replace("{port}", str(port)).replace("{dir}", self.dir)
                    for a in args]
        name = name or "broker%d" % len(self.brokers)
        b = Broker(text, self.dir, port, args=args, logfile=logfile,
                   name=name)
        self.brokers.append(b)  # registered before start: logged on failure
        b.start(ready)
        return b

    def teardown(self):
        problems = []
        for b in self.brokers:
            if b.proc is None:
                continue
            died = b.proc.poll() is not None and not b.stopped_by_us
            rc = b.stop()
            if b.expect_exit:
                continue
            if died:
                problems.append("%s died during the test (exit %s)"
                                % (b.name, b.proc.returncode))
            elif rc != 0:
                problems.append("%s: exit status %s after SIGTERM, want 0"
                                % (b.name, rc))
        return problems


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    fac = getattr(item, "_mqx_brokers", None)
    if rep.failed and fac is not None:
        for b in fac.brokers:
            rep.sections.append(("%s config (%s)" % (b.name, rep.when),
                                 b.conf_text))
            rep.sections.append(("%s log (%s)" % (b.name, rep.when),
                                 b.log() or "(empty)"))
    # other processes a test started (haproxy...): [(title, text_fn)]
    for title, fn in getattr(item, "_mqx_logs", []) if rep.failed else []:
        rep.sections.append(("%s (%s)" % (title, rep.when), fn() or "(empty)"))


@pytest.fixture
def broker(request):
    fac = BrokerFactory(request)
    request.node._mqx_brokers = fac
    yield fac
    problems = fac.teardown()
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


def run_mqttpx(args, timeout=10):
    """Run ./mqttpx to completion (-t, -h, bad configs): CompletedProcess
    with .out = stdout + stderr as text."""
    r = subprocess.run([BINARY] + list(args), cwd=ROOT, capture_output=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    r.out = (r.stdout + r.stderr).decode("utf-8", "replace")
    return r


# ---- hard timeouts ----------------------------------------------------

def pytest_configure(config):
    config.addinivalue_line("markers", "timeout(seconds): per-test limit")
    config.addinivalue_line("markers", "slow: takes several seconds")


def pytest_collection_modifyitems(config, items):
    if config.pluginmanager.hasplugin("timeout"):
        for item in items:
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(TEST_TIMEOUT))


@pytest.fixture(autouse=True)
def _alarm(request):
    """SIGALRM fallback when pytest-timeout is not installed."""
    if request.config.pluginmanager.hasplugin("timeout"):
        yield
        return
    m = request.node.get_closest_marker("timeout")
    limit = m.args[0] if m else TEST_TIMEOUT

    def fire(signum, frame):
        pytest.fail("test exceeded its %ds hard timeout" % limit)

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="session", autouse=True)
def _binary():
    if not os.path.exists(BINARY):
        pytest.exit("%s not found: run make first" % BINARY, returncode=2)
    yield
    for d in _TMPDIRS:
        shutil.rmtree(d, ignore_errors=True)
