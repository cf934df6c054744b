"""Configuration file, command line, listeners, logging options."""

import os
import re
import signal
import socket

import pytest

import mqttwire as w
from conftest import CONF_DIR, free_port, have_ipv6, run_mqttpx, short_tmpdir
from mqttwire import open_client, sub, pub, recv_pub


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def check(text, tmp=None):
    """mqttpx -t -c on a config text; returns (CompletedProcess, path)."""
    d = tmp or short_tmpdir()
    path = write(os.path.join(d, "x.conf"), text)
    return run_mqttpx(["-t", "-c", path]), path


def start_error(text):
    """mqttpx -c on a bad config: must exit non-zero, not serve."""
    d = short_tmpdir()
    path = write(os.path.join(d, "x.conf"), text)
    r = run_mqttpx(["-c", path, "-v"], timeout=10)
    return r, path


# ---- -t, -h -------------------------------------------------------------

def test_check_ok():
    r, _ = check("listener %d 127.0.0.1\nallow_anonymous true\n" % free_port())
    assert r.returncode == 0, r.out
    assert "configuration OK" in r.out, r.out
    assert re.search(r"^memory:", r.out, re.M), r.out


def test_check_example_configs():
    # every config shipped in tests/conf passes -t
    for name in sorted(os.listdir(CONF_DIR)):
        if name.endswith(".conf"):
            r = run_mqttpx(["-t", "-c", os.path.join(CONF_DIR, name)])
            assert r.returncode == 0, "%s: %s" % (name, r.out)
            assert "configuration OK" in r.out


def test_help():
    r = run_mqttpx(["-h"])
    assert r.returncode == 0, r.out
    assert "-c" in r.out and "-p" in r.out and "-t" in r.out, r.out


def test_unknown_command_line_option():
    r = run_mqttpx(["--frobnicate"])
    assert r.returncode != 0


@pytest.mark.skipif(not have_ipv6(), reason="no IPv6 loopback")
def test_all_options_accepted():
    # every option the broker documents, Mosquitto spellings
    d = short_tmpdir()
    os.mkdir(os.path.join(d, "conf.d"))
    text = """# comment line
   # indented comment

listener %d 127.0.0.1
listener %d ::1
listener 0 %s/mqttpx.sock
allow_anonymous true
max_connections 100
max_packet_size 65536
message_size_limit 1000
max_inflight_messages 10
max_queued_messages 100
max_queued_bytes 1000000
queue_qos0_messages true
retain_available true
max_keepalive 600
persistent_client_expiration 2d
sys_interval 10
log_dest stderr
log_type error
log_type warning
log_type notice
log_type information
log_type subscribe
log_type unsubscribe
log_type debug
log_type all
connection_messages true
log_timestamp true
pid_file %s/mqttpx.pid
include_dir %s/conf.d
memory_limit 67108864
max_sessions 100
max_subscriptions 1000
max_topic_nodes 1000
max_retained_messages 100
max_retained_bytes 100000
message_store_bytes 1000000
""" % (free_port(), free_port(socket.AF_INET6, "::1"), d, d, d)
    r, _ = check(text, d)
    assert r.returncode == 0, r.out
    assert "configuration OK" in r.out


@pytest.mark.parametrize("line", [
    # Mosquitto units: h d w m(onth) y
    "persistent_client_expiration 1h", "persistent_client_expiration 1w",
    "persistent_client_expiration 1m", "persistent_client_expiration 1y",
    "log_type none", "log_dest stdout", "log_dest syslog",
    "allow_anonymous false", "queue_qos0_messages false",
    "connection_messages false", "log_timestamp false", "user nobody",
    "retain_available false",
    # Mosquitto's documented default line: -1 = no limit
    "max_connections -1",
])
def test_option_values_accepted(line):
    r, _ = check("listener %d 127.0.0.1\n%s\n" % (free_port(), line))
    assert r.returncode == 0, "%s: %s" % (line, r.out)


BAD = [
    ("frobnicate 1", "frobnicate"),
    ("max_connections 70000000", "max_connections: 70000000 > "),
    ("max_connections lots", "max_connections"),
    ("allow_anonymous maybe", "allow_anonymous"),
    ("listener", "listener"),
    ("listener 70000", "listener"),
    ("persistent_client_expiration 3x", "persistent_client_expiration"),
    ("log_type loud", "log_type"),
    ("log_dest nowhere", "log_dest"),
    ("max_inflight_messages 10 extra", "max_inflight_messages"),
    ("sys_interval", "sys_interval"),
    ("max_packet_size 12x", "max_packet_size"),
]


@pytest.mark.parametrize("line,word", BAD, ids=[x[0] for x in BAD])
def test_bad_line_reports_file_and_line(line, word):
    # 'Error: /path/x.conf:LINE: ...' naming the option, exit non-zero,
    # both with -t and when starting
    text = "# one\nlistener %d 127.0.0.1\n\n%s\n" % (free_port(), line)
    r, path = check(text)
    assert r.returncode != 0, r.out
    assert "configuration OK" not in r.out
    assert re.search(r"Error: %s:4: .*%s" % (re.escape(path), word), r.out), \
        r.out
    r, path = start_error(text)
    assert r.returncode != 0, r.out
    assert "%s:4:" % path in r.out, r.out


def test_missing_config_file():
    r = run_mqttpx(["-t", "-c", "/nonexistent/mqttpx.conf"])
    assert r.returncode != 0
    assert "/nonexistent/mqttpx.conf" in r.out, r.out


# ---- include_dir ------------------------------------------------------------

@pytest.mark.parametrize("first,second", [("false", "true"),
                                          ("true", "false")])
def test_include_dir_sorted_and_only_conf(broker, first, second):
    # DIR/*.conf load in sorted name order (the later line wins), whatever
    # the order they were created in; other names are ignored; a listener
    # in an included file works
    d = short_tmpdir()
    inc = os.path.join(d, "inc")
    os.mkdir(inc)
    port2 = free_port()
    write(os.path.join(inc, "README"), "not a config\n")
    write(os.path.join(inc, "30-c.conf.disabled"), "frobnicate yes\n")
    files = [("20-b.conf", "retain_available %s\n" % second),
             ("10-a.conf", "retain_available %s\nlistener %d 127.0.0.1\n"
              % (first, port2))]
    if first == "true":
        files.reverse()
    for name, text in files:
        write(os.path.join(inc, name), text)
    b = broker(conf="listener {port} 127.0.0.1\nallow_anonymous true\n"
               "include_dir %s\n" % inc)
    c = open_client(port2, "c")
    c.send(w.publish("inc", b"r", qos=1, retain=True, pid=1))
    if second == "true":
        c.expect(w.puback(1))
    else:
        c.expect_closed()


def test_include_dir_error_names_included_file():
    d = short_tmpdir()
    inc = os.path.join(d, "inc")
    os.mkdir(inc)
    write(os.path.join(inc, "a.conf"), "# ok\nmax_connections 5\n")
    bad = write(os.path.join(inc, "b.conf"), "\n\nfrobnicate 1\n")
    r, _ = check("listener %d 127.0.0.1\ninclude_dir %s\n" % (free_port(),
                                                              inc), d)
    assert r.returncode != 0
    assert "%s:3:" % bad in r.out and "frobnicate" in r.out, r.out


# ---- listeners --------------------------------------------------------------

def test_dash_p_without_config(broker):
    # -p PORT: 127.0.0.1:PORT, anonymous allowed (Mosquitto 2 local mode)
    b = broker(args=["-p", "{port}", "-v"])
    c = open_client(b.port, "pp")
    assert c.is_open()
    assert "127.0.0.1:%d" % b.port in b.find("listening on")[0]


def test_dash_p_is_local_only(broker):
    # not reachable on another address of the host
    b = broker(args=["-p", "{port}", "-v"])
    s = socket.socket()
    s.settimeout(2)
    try:
        with pytest.raises(OSError):
            s.connect(("127.0.0.2", b.port))
    finally:
        s.close()


def test_two_listeners_share_topics(broker):
    port2 = free_port()
    b = broker("listener %d 127.0.0.1\n" % port2)
    s = open_client(port2, "s")
    sub(s, 1, [("x", 1)])
    p = open_client(b.port, "p")
    pub(p, "x", b"across", qos=1)
    assert recv_pub(s).payload == b"across"
    b.wait_log("New connection from 127.0.0.1:%d on port %d."
               % (s.local_port, port2))


@pytest.mark.skipif(not have_ipv6(), reason="no IPv6 loopback")
def test_ipv6_listener(broker):
    port6 = free_port(socket.AF_INET6, "::1")
    b = broker("listener %d ::1\n" % port6)
    c = open_client(port6, "v6", conn_kw={"host": "::1",
                                          "family": socket.AF_INET6})
    assert c.is_open()
    p = open_client(b.port, "v4")
    sub(c, 1, [("six", 0)])
    pub(p, "six", b"hi")
    assert recv_pub(c).payload == b"hi"


def test_unix_socket_listener(broker):
    d = short_tmpdir()
    path = os.path.join(d, "mqttpx.sock")
    b = broker("listener 0 %s\n" % path)
    c = open_client(None, "unix", conn_kw={"path": path})
    sub(c, 1, [("u", 1)])
    p = open_client(b.port, "tcp")
    pub(p, "u", b"via unix", qos=1)
    assert recv_pub(c).payload == b"via unix"


def test_listener_port_in_use():
    # the broker cannot bind: exits non-zero with an error
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    try:
        d = short_tmpdir()
        path = write(os.path.join(d, "x.conf"),
                     "listener %d 127.0.0.1\n" % s.getsockname()[1])
        r = run_mqttpx(["-c", path])
        assert r.returncode != 0, r.out
    finally:
        s.close()


# ---- process ----------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly(broker, sig):
    b = broker()
    c = open_client(b.port, "c")
    assert b.stop(sig) == 0


def test_pid_file(broker):
    d = short_tmpdir()
    pidf = os.path.join(d, "mqttpx.pid")
    b = broker("pid_file %s\n" % pidf)
    with open(pidf) as f:
        assert int(f.read().strip()) == b.proc.pid


def test_pid_file_removed_on_exit(broker):
    # as Mosquitto: the pid file goes away on a clean stop
    d = short_tmpdir()
    pidf = os.path.join(d, "mqttpx.pid")
    b = broker("pid_file %s\n" % pidf)
    assert os.path.exists(pidf)
    assert b.stop() == 0
    assert not os.path.exists(pidf)


def test_unix_socket_stale_file(broker):
    # a socket file left by a crash does not stop the next start
    d = short_tmpdir()
    path = os.path.join(d, "stale.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()
    b = broker("listener 0 %s\n" % path)
    c = open_client(None, "unix2", conn_kw={"path": path})
    assert c.is_open()


def test_max_connections(broker):
    # beyond max_connections: accepted and closed at once, no CONNACK;
    # logged; a slot frees when a client leaves
    b = broker("max_connections 2\n")
    a = open_client(b.port, "a")
    c = open_client(b.port, "b")
    x = w.Conn(b.port)
    x.expect_closed(timeout=3)  # closed before it even sends CONNECT
    b.wait_log("max_connections")
    assert a.is_open() and c.is_open()
    m = b.mark()
    a.send(w.DISCONNECT_BYTES)
    a.expect_closed()
    b.wait_log("Client a disconnected.", since=m)
    d = open_client(b.port, "d")
    assert d.is_open()


# ---- logging ----------------------------------------------------------------

def test_log_dest_file(broker):
    d = short_tmpdir()
    logf = os.path.join(d, "mqttpx.log")
    b = broker("log_dest file %s\n" % logf, logfile=logf)
    c = open_client(b.port, "filelog")
    b.wait_log("as filelog (p2, c1, k60).")
    assert not [t for s, t in b.lines if "as filelog" in t], \
        "log_dest file only: nothing about clients on stderr"


def test_log_dest_stdout(broker):
    b = broker("log_dest stdout\n")
    c = open_client(b.port, "outlog")
    b.wait_log("as outlog (p2")
    assert [s for s, t in b.lines if "as outlog" in t] == ["stdout"]


def test_log_timestamp_false(broker):
    b = broker("log_timestamp false\n")
    line = b.find("listening on")[0]
    assert not re.match(r"^\d+: ", line), line


def test_connection_messages_false(broker):
    b = broker("connection_messages false\n")
    c = open_client(b.port, "quiet")
    sub(c, 1, [("q", 0)])  # a later event, to know the CONNECT was handled
    c.send(w.DISCONNECT_BYTES)
    c.expect_closed()
    assert not b.find("New connection from"), b.log()
    assert not b.find("New client connected"), b.log()


def test_subscribe_log_type(broker):
    # Mosquitto logs subscriptions at log_type subscribe: 'cid 1 filter'
    b = broker()
    c = open_client(b.port, "subber")
    sub(c, 1, [("watch/#", 1)])
    b.wait_log("subber 1 watch/#")
