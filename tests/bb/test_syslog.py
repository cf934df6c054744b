"""log_dest syslog: records go to /dev/log with the facility of
log_facility (Mosquitto: 0-7 = local0-local7, default daemon) and the
level of each event. Needs root and a free /dev/log (CI has neither
syslog daemon nor /dev/log); skipped otherwise."""

import os
import re
import socket

import pytest

import mqttwire as w

PATH = "/dev/log"


@pytest.fixture
def devlog():
    if os.geteuid() != 0 or os.path.exists(PATH):
        pytest.skip("needs root and no syslog daemon on /dev/log")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(PATH)
    s.settimeout(5)
    yield s
    s.close()
    os.unlink(PATH)


def _records(sock, want, timeout=5):
    got = []
    sock.settimeout(timeout)
    while not any(want in r for r in got):
        got.append(sock.recv(4096).decode("utf-8", "replace"))
    return got


@pytest.mark.parametrize("facility,base", [(None, 3 * 8), ("2", (16 + 2) * 8)])
def test_syslog_facility_and_levels(broker, devlog, facility, base):
    extra = "log_dest syslog\n"
    if facility is not None:
        extra += "log_facility %s\n" % facility
    b = broker(extra, ready=None)
    recs = _records(devlog, "listening on")
    c = w.open_client(b.port, "sl")
    c.close()
    recs += _records(devlog, "closed its connection")
    pri = {}
    for r in recs:
        m = re.match(r"<(\d+)>\w{3} [ \d]\d \d\d:\d\d:\d\d mqttpx\[\d+\]: (.*)", r)
        assert m, r
        pri[m.group(2)] = int(m.group(1))
    notice = [p for t, p in pri.items() if t.startswith("New client connected")]
    assert notice == [base + 5]  # notice
    warn = [p for t, p in pri.items() if t.startswith("Warning:")]
    assert all(p == base + 4 for p in warn)
    info = [p for t, p in pri.items() if t.startswith("memory:")]
    assert info == [base + 6]  # information
