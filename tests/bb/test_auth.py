"""Authentication and authorisation (issue "Authentication, authorisation"),
with Mosquitto's names and meanings:

- password_file in mosquitto_passwd's format ($6$ salted SHA-512, $7$
  PBKDF2-SHA512), files from Debian's mosquitto_passwd used unchanged;
  argon2id and plaintext lines refused at load with a hint;
- `mqttpx passwd` with mosquitto_passwd's flags (-c -b -D -U -H), its files
  read by both brokers;
- acl_file: anonymous rules before the first `user` line, `user` sections,
  `topic`/`pattern` with %c and %u, deny wins, everything else denied;
  checked on PUBLISH (acknowledged and dropped), SUBSCRIBE (the filter
  taken literally; SUBACK 0x80), delivery (retained too) and the will;
- per_listener_settings; SIGHUP reload of both files (a broken file keeps
  the old rules);
- failed logins logged with Mosquitto's sentence and the real address
  (PROXY v2 too), rate-limited per source address.

Failure log lines are rate-limited per source address (10 s), so tests
that check several of them connect from different loopback addresses
(127.0.0.N, which Linux routes to the broker's 127.0.0.1)."""

import os
import pty
import select
import shutil
import signal
import subprocess
import time

import pytest

import mqttwire as w
from conftest import BINARY, ROOT, Broker, free_port, run_mqttpx

MOSQ_PASSWD = shutil.which("mosquitto_passwd")
MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)

ARGON2 = "user:$argon2id$v=19$m=65536,t=3,p=1$c2FsdA$aGFzaA"

need_mosq_passwd = pytest.mark.skipif(
    MOSQ_PASSWD is None, reason="mosquitto_passwd (Debian: mosquitto) missing")


# ---- helpers ------------------------------------------------------------

def mosq_passwd(*args):
    """Debian's mosquitto_passwd (batch or -U/-D, never a prompt)."""
    r = subprocess.run([MOSQ_PASSWD] + list(args), capture_output=True,
                       stdin=subprocess.DEVNULL, timeout=10)
    assert r.returncode == 0, "mosquitto_passwd %s: %r" % (args, r)
    return r


def mqx_passwd(*args, input=None, check=True):
    """./mqttpx passwd ARGS; input: bytes for a non-tty stdin."""
    r = subprocess.run([BINARY, "passwd"] + list(args), cwd=ROOT,
                       input=input, capture_output=True, timeout=10,
                       **({} if input is not None
                          else {"stdin": subprocess.DEVNULL}))
    r.out = (r.stdout + r.stderr).decode("utf-8", "replace")
    if check:
        assert r.returncode == 0, "mqttpx passwd %s: rc %d: %s" % (
            args, r.returncode, r.out)
    return r


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def lines_of(path):
    with open(path) as f:
        return [ln for ln in f.read().splitlines() if ln.strip()]


def connack_rc(port, user=None, password=None, cid="c", source=None,
               **kw):
    """CONNECT; returns (CONNACK return code, Conn)."""
    c = w.Conn(port, source=source)
    c.send(w.connect(cid, username=user, password=password, **kw))
    p = c.recv_packet()
    assert p.type == w.CONNACK and len(p.raw) == 4, \
        "expected CONNACK, got %r" % p
    return p.raw[3], c


def login(port, user, password, cid="c", **kw):
    """Expect CONNACK 0; returns the open Conn."""
    rc, c = connack_rc(port, user, password, cid, **kw)
    assert rc == 0, "user %r password %r: CONNACK %d, want 0" % (
        user, password, rc)
    return c


def refused(port, user, password, rc, cid="bad", source=None, **kw):
    """Expect exactly CONNACK rc then a close; returns the Conn (for its
    local address)."""
    c = w.Conn(port, source=source)
    c.send(w.connect(cid, username=user, password=password, **kw))
    c.expect(w.connack(0, rc))
    c.expect_closed()
    return c  # left to the garbage collector: local_port still works


def mosquitto(broker, conf):
    """Debian's mosquitto broker on conf ({port}, {dir} substituted), run
    under the fixture (killed at teardown, log attached on failure)."""
    port = free_port()
    if os.geteuid() == 0:
        conf = "user root\n" + conf  # else it drops to 'mosquitto' and
        # cannot read the 0600 root-owned password file
    text = conf.replace("{port}", str(port)).replace("{dir}", broker.dir)
    b = Broker(text, broker.dir, port, args=[], name="mosquitto")
    b.cmd = [MOSQUITTO, "-c", b.conf_path, "-v"]
    broker.brokers.append(b)
    b.start(ready=" running")
    return b


# ---- password_file -----------------------------------------------------

@need_mosq_passwd
def test_debian_mosquitto_passwd_files_work_unchanged(broker):
    # Both of mosquitto_passwd's hashes: -H sha512 ($6$) and the default
    # sha512-pbkdf2 ($7$, 101 iterations).
    pw = os.path.join(broker.dir, "passwd")
    mosq_passwd("-c", "-H", "sha512", "-b", pw, "alice", "alice-pw")
    mosq_passwd("-b", pw, "bob", "b0b pw:with colon")
    text = open(pw).read()
    assert "alice:$6$" in text and "bob:$7$101$" in text, text
    b = broker(conf="listener {port} 127.0.0.1\nallow_anonymous false\n"
                    "password_file {dir}/passwd\n")
    login(b.port, "alice", "alice-pw", "ca").close()
    login(b.port, "bob", "b0b pw:with colon", "cb").close()
    b.wait_log("New client connected from 127.0.0.1:")
    assert b.find("as ca (p2, c1, k60, u'alice').")
    # wrong password, unknown user, no password: 4 (bad user name or
    # password) then close; no user name with allow_anonymous false: 5.
    # Each from its own source address (the log is limited per source).
    c1 = refused(b.port, "alice", "wrong", 4, cid="c1")
    c2 = refused(b.port, "mallory", "alice-pw", 4, cid="c2",
                 source="127.0.0.2")
    c3 = refused(b.port, "bob", None, 4, cid="c3", source="127.0.0.3")
    c4 = refused(b.port, None, None, 5, cid="c4", source="127.0.0.4")
    # the password of another user does not open this one
    refused(b.port, "alice", "b0b pw:with colon", 4, cid="c5",
            source="127.0.0.5")
    b.wait_log("Client c1 disconnected, bad user name or password. "
               "(from 127.0.0.1:%d, u'alice')" % c1.local_port)
    b.wait_log("Client c2 disconnected, bad user name or password. "
               "(from 127.0.0.2:%d, u'mallory')" % c2.local_port)
    b.wait_log("Client c3 disconnected, bad user name or password. "
               "(from 127.0.0.3:%d, u'bob')" % c3.local_port)
    b.wait_log("Client c4 disconnected, not authorised. "
               "(from 127.0.0.4:%d)" % c4.local_port)
    # the user names are case-sensitive, like Mosquitto's
    refused(b.port, "Alice", "alice-pw", 4, cid="c6", source="127.0.0.6")
    assert b.alive()


def test_without_password_file_user_names_are_not_checked(broker):
    b = broker(conf="listener {port} 127.0.0.1\nallow_anonymous false\n")
    login(b.port, "anyone", "anything", "u1").close()
    login(b.port, "someone", None, "u2").close()
    c = refused(b.port, None, None, 5, cid="anon")
    b.wait_log("Client anon disconnected, not authorised. "
               "(from 127.0.0.1:%d)" % c.local_port)


@pytest.mark.parametrize("bad,hint", [
    (ARGON2, "mosquitto_passwd -H sha512-pbkdf2"),
    ("user:pass", "mqttpx passwd -U"),
], ids=["argon2id", "plaintext"])
def test_unusable_password_line_refused_at_load(broker, bad, hint):
    # line 1 is good, line 2 is not: the broker refuses to start and names
    # the file, the line and what to do
    pw = os.path.join(broker.dir, "passwd")
    mqx_passwd("-c", "-b", pw, "good", "pw")
    with open(pw, "a") as f:
        f.write(bad + "\n")
    conf = write(os.path.join(broker.dir, "bad.conf"),
                 "listener %d 127.0.0.1\nallow_anonymous false\n"
                 "password_file %s\n" % (free_port(), pw))
    for args in (["-c", conf, "-v"], ["-t", "-c", conf]):
        r = run_mqttpx(args)
        assert r.returncode != 0, r.out
        assert "Error: %s:2: " % pw in r.out, r.out
        assert hint in r.out, r.out
        assert "listening on" not in r.out


def test_failed_logins_rate_limited_per_source(broker):
    pw = os.path.join(broker.dir, "passwd")
    mqx_passwd("-c", "-b", pw, "alice", "right")
    b = broker(conf="listener {port} 127.0.0.1\nallow_anonymous false\n"
                    "password_file {dir}/passwd\n")
    t0 = time.monotonic()
    for i in range(20):
        refused(b.port, "alice", "wrong%d" % i, 4, cid="brute%d" % i)
    # all 20 were refused within a second or two: far fewer lines
    b.wait_log("Client brute0 disconnected, bad user name or password.")
    assert time.monotonic() - t0 < 9, "too slow to test the window"
    # another source address is not silenced by the first one
    other = refused(b.port, "alice", "x", 4, cid="other",
                    source="127.0.0.9")
    b.wait_log("Client other disconnected, bad user name or password. "
               "(from 127.0.0.9:%d, u'alice')" % other.local_port)
    lines = b.find("disconnected, bad user name or password.")
    from_lo = [ln for ln in lines if "(from 127.0.0.1:" in ln]
    assert len(from_lo) <= 2, "20 failures from one address gave %d " \
        "lines:\n%s" % (len(from_lo), "\n".join(from_lo))
    # a good login still works from the flooded address
    login(b.port, "alice", "right", "fine").close()


@pytest.mark.timeout(40)
def test_failed_logins_suppressed_count_on_next_line(broker):
    pw = os.path.join(broker.dir, "passwd")
    mqx_passwd("-c", "-b", pw, "alice", "right")
    b = broker(conf="listener {port} 127.0.0.1\nallow_anonymous false\n"
                    "password_file {dir}/passwd\n")
    t0 = time.monotonic()
    refused(b.port, "alice", "w", 4, cid="first")
    b.wait_log("Client first disconnected, bad user name or password.")
    for i in range(5):
        refused(b.port, "alice", "w", 4, cid="quiet%d" % i)
    refused(b.port, None, None, 5, cid="quietanon")  # same source: counted
    assert not b.find("Client quiet")
    # one line per 10 s per source: pace past the window (not a readiness
    # wait), then the next failure carries the count
    time.sleep(max(0.0, 10.3 - (time.monotonic() - t0)))
    c = refused(b.port, "alice", "w", 4, cid="later")
    line = b.wait_log("Client later disconnected, bad user name or "
                      "password.")
    assert line.endswith("(from 127.0.0.1:%d, u'alice') (6 similar "
                         "suppressed)" % c.local_port), line


def test_failed_login_leaves_the_session_alone(broker):
    # a wrong password with a connected client's id must not take it over
    # [MQTT-3.1.4-2 applies to accepted CONNECTs only], nor end its
    # persistent session
    pw = os.path.join(broker.dir, "passwd")
    mqx_passwd("-c", "-b", pw, "alice", "a-pw")
    b = broker(conf="listener {port} 127.0.0.1\nallow_anonymous false\n"
                    "password_file {dir}/passwd\n")
    c = login(b.port, "alice", "a-pw", "sensor", clean=False)
    assert w.sub(c, 1, [("s/#", 1)]) == [1]
    refused(b.port, "alice", "guess", 4, cid="sensor", clean=False)
    refused(b.port, None, None, 5, cid="sensor", source="127.0.0.2")
    assert c.is_open()
    assert not b.find("already connected")
    c.close()
    b.wait_log("Client sensor closed its connection.")
    refused(b.port, "alice", "guess", 4, cid="sensor", clean=True,
            source="127.0.0.3")
    c = w.Conn(b.port)  # the session is still there (and so is s/#)
    c.send(w.connect("sensor", clean=False, username="alice",
                     password="a-pw"))
    c.expect(w.connack(1, 0))
    c.close()


# ---- mqttpx passwd -----------------------------------------------------

def test_mqttpx_passwd_create_batch_stdin_and_broker_accepts(broker):
    pw = os.path.join(broker.dir, "passwd")
    mqx_passwd("-c", "-b", pw, "alice", "a-pw")            # default: $7$
    mqx_passwd("-H", "sha512", "-b", pw, "bob", "b-pw")     # $6$
    mqx_passwd("-H", "sha512-pbkdf2", pw, "carol", input=b"c pw\n")  # stdin
    lines = lines_of(pw)
    assert [ln.split(":")[0] for ln in lines] == ["alice", "bob", "carol"]
    assert lines[0].startswith("alice:$7$101$"), lines
    assert lines[1].startswith("bob:$6$"), lines
    assert lines[2].startswith("carol:$7$101$"), lines
    assert os.stat(pw).st_mode & 0o077 == 0, oct(os.stat(pw).st_mode)
    # -b again for an existing user replaces its line (one line per user)
    mqx_passwd("-b", pw, "alice", "a-pw2")
    assert [ln.split(":")[0] for ln in lines_of(pw)] == \
        ["alice", "bob", "carol"]
    # -c overwrites
    pw2 = os.path.join(broker.dir, "passwd2")
    mqx_passwd("-c", "-b", pw2, "x", "1")
    mqx_passwd("-c", "-b", pw2, "y", "2")
    assert [ln.split(":")[0] for ln in lines_of(pw2)] == ["y"]
    b = broker(conf="listener {port} 127.0.0.1\nallow_anonymous false\n"
                    "password_file {dir}/passwd\n")
    login(b.port, "alice", "a-pw2", "ca").close()
    login(b.port, "bob", "b-pw", "cb").close()
    login(b.port, "carol", "c pw", "cc").close()
    refused(b.port, "alice", "a-pw", 4)


@need_mosq_passwd
def test_mosquitto_passwd_adds_to_mqttpx_file(broker):
    pw = os.path.join(broker.dir, "passwd")
    mqx_passwd("-c", "-b", pw, "alice", "a-pw")
    mqx_passwd("-H", "sha512", "-b", pw, "bob", "b-pw")
    mosq_passwd("-b", pw, "dave", "d-pw")
    mosq_passwd("-H", "sha512", "-b", pw, "erin", "e-pw")
    # and mqttpx passwd edits what mosquitto_passwd wrote
    mqx_passwd("-b", pw, "frank", "f-pw")
    assert [ln.split(":")[0] for ln in lines_of(pw)] == \
        ["alice", "bob", "dave", "erin", "frank"]
    b = broker(conf="listener {port} 127.0.0.1\nallow_anonymous false\n"
                    "password_file {dir}/passwd\n")
    for user in ("alice", "bob", "dave", "erin", "frank"):
        login(b.port, user, user[0] + "-pw", "c-" + user).close()


@pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto broker missing")
def test_mosquitto_broker_accepts_mqttpx_passwd_file(broker):
    pw = os.path.join(broker.dir, "passwd")
    mqx_passwd("-c", "-b", pw, "alice", "a-pw")
    mqx_passwd("-H", "sha512", "-b", pw, "bob", "b-pw")
    m = mosquitto(broker, "listener {port} 127.0.0.1\n"
                          "allow_anonymous false\n"
                          "password_file {dir}/passwd\n")
    login(m.port, "alice", "a-pw", "ma").close()
    login(m.port, "bob", "b-pw", "mb").close()
    rc, c = connack_rc(m.port, "alice", "wrong", "mc")
    c.close()
    assert rc != 0  # Mosquitto 2.0 says 5


def test_mqttpx_passwd_delete(broker):
    pw = os.path.join(broker.dir, "passwd")
    mqx_passwd("-c", "-b", pw, "alice", "a-pw")
    mqx_passwd("-b", pw, "bob", "b-pw")
    mqx_passwd("-D", pw, "alice")
    assert [ln.split(":")[0] for ln in lines_of(pw)] == ["bob"]
    r = mqx_passwd("-D", pw, "nobody", check=False)
    assert "nobody" in r.out  # a warning, the file unchanged
    assert [ln.split(":")[0] for ln in lines_of(pw)] == ["bob"]
    b = broker(conf="listener {port} 127.0.0.1\nallow_anonymous false\n"
                    "password_file {dir}/passwd\n")
    refused(b.port, "alice", "a-pw", 4)
    login(b.port, "bob", "b-pw").close()


def test_mqttpx_passwd_update_plaintext(broker):
    pw = os.path.join(broker.dir, "passwd")
    mqx_passwd("-c", "-b", pw, "kept", "k-pw")
    kept = lines_of(pw)[0]
    with open(pw, "a") as f:
        f.write("# a comment\nplain:p-pw\ncolon:a:b:c\n")
    mqx_passwd("-U", pw)
    lines = lines_of(pw)
    assert kept in lines, "-U rehashed an already hashed line"
    users = {ln.split(":")[0]: ln for ln in lines if not ln.startswith("#")}
    assert set(users) == {"kept", "plain", "colon"}, lines
    for u in ("plain", "colon"):
        assert users[u].startswith(u + ":$7$101$"), users[u]
    if MOSQ_PASSWD:  # Debian's -U output too
        mosq = os.path.join(broker.dir, "mosq")
        write(mosq, "mplain:m-pw\n")
        mosq_passwd("-U", mosq)
        with open(pw, "a") as f:
            f.write(open(mosq).read())
    b = broker(conf="listener {port} 127.0.0.1\nallow_anonymous false\n"
                    "password_file {dir}/passwd\n")
    login(b.port, "kept", "k-pw", "c1").close()
    login(b.port, "plain", "p-pw", "c2").close()
    login(b.port, "colon", "a:b:c", "c3").close()
    if MOSQ_PASSWD:
        login(b.port, "mplain", "m-pw", "c4").close()
    refused(b.port, "plain", "plain:p-pw", 4)


def _pty_passwd(args, answers, timeout=8.0):
    """Runs ./mqttpx passwd on a pseudo-terminal; answers each prompt
    ("Password:", "Reenter password:") with the next of answers. Returns
    (exit status, everything the terminal showed)."""
    master, slave = pty.openpty()
    p = subprocess.Popen([BINARY, "passwd"] + args, cwd=ROOT, stdin=slave,
                         stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    shown = b""
    prompts = [b"Password:", b"Reenter password:"]
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if answers and prompts and prompts[0] in shown:
                prompts.pop(0)
                os.write(master, answers.pop(0))
            r, _, _ = select.select([master], [], [], 0.2)
            if r:
                try:
                    data = os.read(master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                shown += data
            elif p.poll() is not None:
                break
        rc = p.wait(timeout=max(0.1, deadline - time.monotonic()))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)
    return rc, shown.decode("utf-8", "replace")


def test_mqttpx_passwd_tty_asks_twice_without_echo(broker):
    pw = os.path.join(broker.dir, "passwd")
    rc, shown = _pty_passwd(["-c", pw, "alice"],
                            [b"s3cret-tty\n", b"s3cret-tty\n"])
    assert rc == 0, shown
    assert "Reenter password:" in shown, shown
    assert "s3cret-tty" not in shown, \
        "the password was echoed on the terminal: %r" % shown
    # different answers: refused, no file
    pw2 = os.path.join(broker.dir, "passwd2")
    rc, shown = _pty_passwd(["-c", pw2, "bob"], [b"one\n", b"two\n"])
    assert rc != 0 and "do not match" in shown, shown
    assert not os.path.exists(pw2)
    b = broker(conf="listener {port} 127.0.0.1\nallow_anonymous false\n"
                    "password_file {dir}/passwd\n")
    login(b.port, "alice", "s3cret-tty").close()


def test_mqttpx_passwd_bad_usage(broker):
    pw = os.path.join(broker.dir, "passwd")
    for args in (["-H", "argon2id", "-c", "-b", pw, "u", "p"],
                 ["-c", "-b", pw, "u:x", "p"],     # ':' in a user name
                 ["-c", "-D", pw, "u"],
                 ["-b", pw, "u"],                  # -b without password
                 [pw],
                 ["-U"],
                 ["-b", os.path.join(broker.dir, "missing"), "u", "p"]):
        r = mqx_passwd(*args, check=False)
        assert r.returncode != 0, "mqttpx passwd %s: %s" % (args, r.out)
    assert not os.path.exists(pw)


# ---- acl_file ----------------------------------------------------------

ACL = """\
# anonymous clients: the lines before the first user line
topic read public/#
topic readwrite anon/#
topic write anonw/#

user alice
topic readwrite a/#
topic deny a/secret/#
topic read r/#
topic write w/#
topic rw/#

user bob
topic read #
topic deny secret/#

user pubber
topic write #

user watch
topic read #

user sysreader
topic read $SYS/#

user denyfirst
topic deny d/x
topic readwrite d/#

pattern readwrite dev/%c/#
pattern read users/%u/#
"""


@pytest.fixture
def acl(broker):
    """A broker with ACL above (no password file: names not checked) and
    a watcher that may read everything (but $SYS)."""
    write(os.path.join(broker.dir, "acl"), ACL)
    b = broker(conf="listener {port} 127.0.0.1\nallow_anonymous true\n"
                    "acl_file {dir}/acl\nsys_interval 1\n")
    b.watch = login(b.port, "watch", None, "watcher")
    assert w.sub(b.watch, 1, [("#", 1)]) == [1]
    return b


def client(b, cid, user=None):
    return login(b.port, user, None, cid)


def fence(b, pubc, topic, pid=99):
    """Publishes a fence on topic from pubc; returns what the watcher
    received before it (messages from one publisher arrive in order, so
    everything pubc published earlier is in the list or was dropped)."""
    w.pub(pubc, topic, b"fence", qos=1, pid=pid)
    return [(p.topic, p.payload) for p in
            w.collect_until(b.watch, topic, b"fence")]


def test_acl_publish_denied_is_acknowledged_and_dropped(acl):
    b = acl
    alice = client(b, "alice-c", "alice")
    # denied (not granted, denied, read-only) QoS 0/1/2: the QoS flow
    # completes as usual (3.1.1 has no refusal), the message is dropped
    for q, topic in enumerate(("x/y", "a/secret/z", "r/1")):
        for qq in range(3):
            w.pub(alice, topic, b"no", qos=qq, pid=10 * q + qq + 1)
    # granted ones go through: readwrite, write-only, no access word
    w.pub(alice, "a/1", b"yes", qos=1, pid=40)
    w.pub(alice, "w/1", b"yes", qos=2, pid=41)
    w.pub(alice, "rw/1", b"yes", qos=0)
    got = fence(b, alice, "a/fence")
    assert got == [("a/1", b"yes"), ("w/1", b"yes"), ("rw/1", b"yes")], got
    assert alice.is_open()


def test_acl_subscribe_checks_the_filter_literally(acl):
    b = acl
    alice = client(b, "alice-c", "alice")
    codes = w.sub(alice, 1, [
        ("a/#", 1),         # = rule a/#
        ("a/b", 0),         # under a/#
        ("#", 1),           # wider than any grant: no
        ("r/+/x", 2),       # "r/+/x" taken literally is under r/#
        ("w/x", 0),         # write-only: no read
        ("+/b", 0),         # "+/b" is not under a/#
        ("a/secret/#", 1),  # under the deny rule
        ("a/secret", 0),    # the deny rule's parent level (# matches it)
        ("rw/#", 1),        # no access word = readwrite
        ("a/+", 2),
    ])
    assert codes == [1, 0, 0x80, 2, 0x80, 0x80, 0x80, 0x80, 1, 2], codes
    assert alice.is_open()


def test_acl_delivery_and_retained_filtered(acl):
    b = acl
    pubber = client(b, "pubber-c", "pubber")
    w.pub(pubber, "secret/r", b"hidden", qos=1, retain=True, pid=1)
    w.pub(pubber, "open/r", b"shown", qos=1, retain=True, pid=2)
    bob = client(b, "bob-c", "bob")
    # "#" itself is granted (read #; the deny secret/# does not match the
    # string "#"); a filter under the deny rule is not
    assert w.sub(bob, 1, [("#", 1), ("secret/#", 1), ("secret/+", 1),
                          ("+/x", 1)]) == [1, 0x80, 0x80, 1]
    w.pub(pubber, "secret/x", b"hidden", qos=1, pid=3)
    w.pub(pubber, "open/x", b"shown", qos=1, pid=4)
    w.pub(pubber, "open/fence", b"f", qos=1, pid=5)
    got = []
    for p in w.collect_until(bob, "open/fence", b"f"):
        got.append((p.topic, p.retain))
    assert sorted(got) == [("open/r", True), ("open/x", False)], got
    # the same for alice, subscribed to a/# with a deny under it
    alice = client(b, "alice-c", "alice")
    assert w.sub(alice, 1, [("a/#", 0)]) == [0]
    w.pub(pubber, "a/secret/1", b"hidden", qos=1, pid=6)
    w.pub(pubber, "a/secret", b"hidden", qos=1, pid=7)
    w.pub(pubber, "a/1", b"f", qos=1, pid=8)
    assert [p.topic for p in w.collect_until(alice, "a/1", b"f")] == []


def test_acl_will_topic_checked_at_connect(acl):
    b = acl
    # alice may not write x/will (no rule) or a/secret/w (deny): CONNACK 5
    c = refused(b.port, "alice", None, 5, cid="will1",
                will=("x/will", b"bye", 0, False))
    b.wait_log("Client will1 disconnected, not authorised")
    assert "(from 127.0.0.1:%d, u'alice')" % c.local_port in \
        b.find("Client will1 disconnected")[0]
    refused(b.port, "alice", None, 5, cid="will2",
            will=("a/secret/w", b"bye", 1, False), source="127.0.0.2")
    # anonymous: public/ is read-only for them
    refused(b.port, None, None, 5, cid="will3",
            will=("public/w", b"bye", 0, False), source="127.0.0.3")
    # a will it may write is accepted and published on a dropped connection
    ok = login(b.port, "alice", None, "will4",
               will=("a/will", b"bye", 1, False))
    ok.close()
    p = w.recv_pub(b.watch)
    assert (p.topic, p.payload) == ("a/will", b"bye")
    anon = login(b.port, None, None, "will5",
                 will=("anonw/x", b"gone", 0, False))
    anon.close()
    p = w.recv_pub(b.watch)
    assert (p.topic, p.payload) == ("anonw/x", b"gone")


def test_acl_anonymous_rules_and_default_deny(acl):
    b = acl
    anon = client(b, "anon-c")
    assert w.sub(anon, 1, [("public/#", 1), ("anon/#", 0), ("a/#", 0),
                           ("anonw/#", 0)]) == [1, 0, 0x80, 0x80]
    w.pub(anon, "public/1", b"no", qos=1, pid=1)  # read-only
    w.pub(anon, "a/1", b"no", qos=1, pid=2)       # alice's, not theirs
    w.pub(anon, "anonw/1", b"yes", qos=1, pid=3)  # write-only
    got = fence(b, anon, "anon/fence")
    assert got == [("anonw/1", b"yes")], got
    # a user without a section gets neither the anonymous rules nor any
    # other: only patterns (none match here)
    nobody = client(b, "nobody-c", "nobody")
    assert w.sub(nobody, 1, [("public/#", 0), ("anon/#", 0), ("#", 0)]) \
        == [0x80, 0x80, 0x80]
    w.pub(nobody, "anon/2", b"no", qos=1, pid=4)
    w.pub(nobody, "dev/nobody-c/f", b"f", qos=1, pid=5)  # the %c pattern
    assert [p.topic for p in w.collect_until(
        b.watch, "dev/nobody-c/f", b"f")] == []


def test_acl_pattern_client_id(acl):
    b = acl
    pubber = client(b, "pubber-c", "pubber")
    d1 = client(b, "d1")  # anonymous: %c applies to everyone
    assert w.sub(d1, 1, [("dev/d1/#", 1), ("dev/d2/#", 1), ("dev/+/x", 1)]) \
        == [1, 0x80, 0x80]
    w.pub(pubber, "dev/d2/cmd", b"not for d1", qos=1, pid=1)
    w.pub(pubber, "dev/d1/cmd", b"for d1", qos=1, pid=2)
    p = w.recv_pub(d1)
    assert (p.topic, p.payload) == ("dev/d1/cmd", b"for d1")
    w.pub(d1, "dev/d2/x", b"no", qos=1, pid=3)
    w.pub(d1, "dev/d1/x", b"yes", qos=1, pid=4)
    w.pub(d1, "dev/d1/fence", b"fence", qos=1, pid=5)
    got = [(p.topic, p.payload) for p in
           w.collect_until(b.watch, "dev/d1/fence", b"fence")]
    # (the watcher also saw pubber's dev/d2/cmd: pubber may write #)
    assert ("dev/d1/x", b"yes") in got and ("dev/d2/x", b"no") not in got, \
        got
    # a user with a section gets the patterns too
    alice = client(b, "alice-dev", "alice")
    assert w.sub(alice, 1, [("dev/alice-dev/#", 0)]) == [0]


@pytest.mark.parametrize("cid", ["+", "#", "a/b", "x/#"])
def test_acl_pattern_ignores_client_id_with_wildcards(acl, cid):
    # substituted, these ids would widen dev/%c/# to other devices'
    # topics (dev/+/# matches dev/zz/x, dev/#/# everything under dev/,
    # dev/a/b/# is under dev/a/)
    b = acl
    rc, c = connack_rc(b.port, None, None, cid)
    if rc != 0:  # refusing such an id [MQTT-3.1.3-5] is allowed too
        assert rc == 2, "client id %r: CONNACK %d" % (cid, rc)
        return
    codes = w.sub(c, 1, [("dev/+/x", 0), ("dev/zz/x", 0),
                         ("dev/a/b/x", 0), ("dev/#", 0)])
    assert codes == [0x80] * 4, codes
    for i, t in enumerate(("dev/zz/x", "dev/a/b/x", "dev/a/x")):
        w.pub(c, t, b"no", qos=1, pid=i + 1)
    w.pub(c, "anon/fence", b"fence", qos=1, pid=9)
    got = [(p.topic, p.payload) for p in
           w.collect_until(b.watch, "anon/fence", b"fence")]
    assert got == [], "client id %r published %r" % (cid, got)


def test_acl_pattern_user_name(acl):
    b = acl
    alice = client(b, "alice-c", "alice")
    assert w.sub(alice, 1, [("users/alice/#", 1), ("users/bob/#", 1),
                            ("users/+/x", 1)]) == [1, 0x80, 0x80]
    # %u never applies to anonymous clients (not even as "")
    anon = client(b, "anon-u")
    assert w.sub(anon, 1, [("users//x", 0), ("users/#", 0),
                           ("users/%u/x", 0)]) == [0x80, 0x80, 0x80]
    # user names with wildcards or '/' do not match patterns
    for i, user in enumerate(("+", "u/x", "#", "u+")):
        c = client(b, "wild%d" % i, user)
        codes = w.sub(c, 1, [("users/+/1", 0), ("users/zz/1", 0),
                             ("users/u/x/1", 0)])
        assert codes == [0x80, 0x80, 0x80], "user %r: %r" % (user, codes)
        c.close()


def test_acl_sys_needs_an_explicit_rule(acl):
    b = acl
    # "#" read does not grant $SYS/# (a first-level wildcard does not
    # match $ topics [MQTT-4.7.2-1]); the watcher's "#" gets none of it
    watch2 = client(b, "watch2", "watch")
    assert w.sub(watch2, 1, [("$SYS/#", 0), ("$SYS/broker/uptime", 0)]) \
        == [0x80, 0x80]
    sysr = client(b, "sys-c", "sysreader")
    assert w.sub(sysr, 1, [("$SYS/#", 0)]) == [0]
    p = w.recv_pub(sysr, timeout=4)  # sys_interval 1
    assert p.topic.startswith("$SYS/broker/"), p
    pubber = client(b, "pubber-c", "pubber")
    w.pub(pubber, "z/fence", b"fence", qos=1, pid=1)
    got = [p.topic for p in w.collect_until(b.watch, "z/fence", b"fence")]
    assert not [t for t in got if t.startswith("$")], got


def test_acl_rechecked_when_another_user_resumes_a_session(acl):
    # client ids are not owned by a user: when "nobody" resumes alice's
    # persistent session, what was queued for alice and alice's
    # subscriptions deliver only what nobody may read
    b = acl
    pubber = client(b, "pubber-c", "pubber")
    alice = login(b.port, "alice", None, "shared", clean=False)
    assert w.sub(alice, 1, [("a/#", 1)]) == [1]
    alice.send(w.DISCONNECT_BYTES)
    alice.expect_closed()
    w.pub(pubber, "a/queued", b"for alice", qos=1, pid=1)
    p = w.Conn(b.port)
    p.send(w.connect("shared", clean=False, username="nobody"))
    p.expect(w.connack(1, 0))
    w.pub(pubber, "a/live", b"for alice", qos=1, pid=2)
    assert w.sub(p, 2, [("dev/shared/#", 1)]) == [1]   # the %c pattern
    w.pub(pubber, "dev/shared/f", b"fence", qos=1, pid=3)
    got = [(q.topic, q.payload) for q in
           w.collect_until(p, "dev/shared/f", b"fence")]
    assert got == [], "nobody received alice's messages: %r" % got


def test_acl_deny_wins_in_any_order(acl):
    b = acl
    for user, denied, granted in (("denyfirst", "d/x", "d/y"),
                                  ("alice", "a/secret/x", "a/y")):
        c = client(b, user + "-c", user)
        assert w.sub(c, 1, [(denied, 0), (granted, 0)]) == [0x80, 0]
        w.pub(c, denied, b"no", qos=1, pid=1)
        w.pub(c, granted, b"yes", qos=1, pid=2)
        got = [(p.topic, p.payload) for p in
               w.collect_until(b.watch, granted, b"yes")]
        assert got == [], "%s: %r" % (user, got)
        c.close()


def test_acl_file_errors_refused_at_load(broker):
    acl = os.path.join(broker.dir, "acl")
    for text, line in (("topic read a/#\ntopik read b\n", 2),
                       ("user x\ntopic read a/#/b\n", 2),
                       ("topic\n", 1)):
        write(acl, text)
        conf = write(os.path.join(broker.dir, "c.conf"),
                     "listener %d 127.0.0.1\nacl_file %s\n"
                     % (free_port(), acl))
        r = run_mqttpx(["-t", "-c", conf])
        assert r.returncode != 0 and "Error: %s:%d: " % (acl, line) in \
            r.out, (text, r.out)


# ---- per_listener_settings ---------------------------------------------

def test_per_listener_settings(broker):
    d = broker.dir
    mqx_passwd("-c", "-b", os.path.join(d, "passwd"), "alice", "a-pw")
    write(os.path.join(d, "acl1"), "topic readwrite open/#\n")
    write(os.path.join(d, "acl2"), "user alice\ntopic readwrite #\n")
    p2 = free_port()
    b = broker(conf="per_listener_settings true\n"
                    "listener {port} 127.0.0.1\n"
                    "allow_anonymous true\n"
                    "acl_file {dir}/acl1\n"
                    "listener %d 127.0.0.1\n"
                    "allow_anonymous false\n"
                    "password_file {dir}/passwd\n"
                    "acl_file {dir}/acl2\n" % p2)
    # listener 1: anonymous ok, user names not checked
    a1 = login(b.port, None, None, "anon1")
    login(b.port, "alice", "not-her-password", "l1alice").close()
    # listener 2: password only
    refused(p2, None, None, 5, cid="anon2")
    refused(p2, "alice", "nope", 4, cid="bad2", source="127.0.0.2")
    a2 = login(p2, "alice", "a-pw", "l2alice")
    # each listener's ACL
    assert w.sub(a1, 1, [("open/#", 1), ("x/#", 1)]) == [1, 0x80]
    assert w.sub(a2, 1, [("#", 1)]) == [1]
    w.pub(a1, "open/1", b"hi", qos=1, pid=1)
    w.pub(a1, "x/1", b"no", qos=1, pid=2)       # denied on listener 1
    w.pub(a1, "open/2", b"f", qos=1, pid=3)
    got = [(p.topic, p.payload) for p in w.collect_until(a2, "open/2")]
    assert got == [("open/1", b"hi")], got
    # and the other way
    w.pub(a2, "open/3", b"f", qos=1, pid=5)
    assert [p.topic for p in w.collect_until(a1, "open/3")] == \
        ["open/1", "open/2"]


# ---- SIGHUP ------------------------------------------------------------

def _hup(b):
    """SIGHUP; returns once the broker has begun the reload (it finishes
    before it reads any socket again)."""
    mark = b.mark()
    b.send_signal(signal.SIGHUP)
    b.wait_log("Reloading config.", since=mark)
    return mark


def test_sighup_reloads_password_file(broker):
    pw = os.path.join(broker.dir, "passwd")
    mqx_passwd("-c", "-b", pw, "alice", "a-pw")
    b = broker(conf="listener {port} 127.0.0.1\nallow_anonymous false\n"
                    "password_file {dir}/passwd\n")
    refused(b.port, "carol", "c-pw", 4)
    mqx_passwd("-b", pw, "carol", "c-pw")
    mqx_passwd("-D", pw, "alice")
    refused(b.port, "carol", "c-pw", 4, source="127.0.0.2")  # not yet
    _hup(b)
    login(b.port, "carol", "c-pw").close()
    refused(b.port, "alice", "a-pw", 4, source="127.0.0.3")
    assert b.alive()


def test_sighup_reloads_acl(broker):
    acl = os.path.join(broker.dir, "acl")
    write(acl, "user bob\ntopic read t/#\nuser pubber\ntopic write #\n")
    b = broker(conf="listener {port} 127.0.0.1\nallow_anonymous true\n"
                    "acl_file {dir}/acl\n")
    bob = client(b, "bob-c", "bob")
    pubber = client(b, "pub-c", "pubber")
    assert w.sub(bob, 1, [("t/#", 1), ("u/#", 1)]) == [1, 0x80]
    write(acl, "user bob\ntopic read t/#\ntopic deny t/x\ntopic read u/#\n"
               "user pubber\ntopic write #\n")
    _hup(b)
    # the subscription made before stays; its deliveries are checked anew
    w.pub(pubber, "t/x", b"no", qos=1, pid=1)
    w.pub(pubber, "t/y", b"yes", qos=1, pid=2)
    assert w.collect_until(bob, "t/y", b"yes") == []
    assert w.sub(bob, 2, [("t/x", 1), ("u/#", 1)]) == [0x80, 1]
    w.pub(pubber, "u/1", b"yes", qos=1, pid=3)
    p = w.recv_pub(bob)
    assert p.topic == "u/1"


@pytest.mark.parametrize("which", ["passwd", "acl"])
def test_sighup_broken_file_keeps_previous_rules(broker, which):
    d = broker.dir
    pw = os.path.join(d, "passwd")
    acl = os.path.join(d, "acl")
    mqx_passwd("-c", "-b", pw, "alice", "a-pw")
    write(acl, "user alice\ntopic readwrite a/#\n")
    b = broker(conf="listener {port} 127.0.0.1\nallow_anonymous false\n"
                    "password_file {dir}/passwd\nacl_file {dir}/acl\n")
    # the new files: one of them broken at line 2
    mqx_passwd("-b", pw, "carol", "c-pw")
    if which == "passwd":
        with open(pw, "a") as f:
            f.write("plain:text\n")
        bad, line = pw, 3
        write(acl, "user alice\ntopic readwrite b/#\n")
    else:
        write(acl, "user alice\ntopic readwrite b/#\nbogus line\n")
        bad, line = acl, 3
    mark = _hup(b)
    msg = b.wait_log("keeping the previous password and ACL rules.",
                     since=mark)
    assert "Reload: %s:%d: " % (bad, line) in msg, msg
    assert b.alive()
    # the old rules, both files: carol unknown, alice on a/# not b/#
    refused(b.port, "carol", "c-pw", 4)
    alice = login(b.port, "alice", "a-pw", "al")
    assert w.sub(alice, 1, [("a/#", 0), ("b/#", 0)]) == [0, 0x80]
    # fixed and reloaded: the new rules
    if which == "passwd":
        mqx_passwd("-U", pw)
    else:
        write(acl, "user alice\ntopic readwrite b/#\n")
    mark = _hup(b)
    login(b.port, "carol", "c-pw", "ca").close()
    alice2 = login(b.port, "alice", "a-pw", "al2")
    assert w.sub(alice2, 1, [("a/#", 0), ("b/#", 0)]) == [0x80, 0]
    assert not b.find("keeping the previous", since=mark)


# ---- behind PROXY ------------------------------------------------------

PP2 = bytes.fromhex("0d0a0d0a000d0a515549540a" "2111000c" "c0000205"
                    "c6336401" "1883" "075b")


def test_failed_login_shows_proxied_address(broker):
    assert PP2 == w.proxy_v2("192.0.2.5", "198.51.100.1", 6275, 1883)
    pw = os.path.join(broker.dir, "passwd")
    mqx_passwd("-c", "-b", pw, "alice", "a-pw")
    b = broker(conf="listener {port} 127.0.0.1\nenable_proxy_protocol 2\n"
                    "allow_anonymous false\npassword_file {dir}/passwd\n")
    c = w.Conn(b.port)
    c.send(PP2 + w.connect("pp1", username="alice", password="wrong"))
    c.expect(w.connack(0, 4))
    c.expect_closed()
    line = b.wait_log("Client pp1 disconnected, bad user name or password.")
    assert "(from 192.0.2.5:6275, u'alice')" in line, line
    # anonymous, from another proxied address
    c = w.Conn(b.port)
    c.send(w.proxy_v2("192.0.2.6", "198.51.100.1", 40000, 1883)
           + w.connect("pp2"))
    c.expect(w.connack(0, 5))
    c.expect_closed()
    line = b.wait_log("Client pp2 disconnected, not authorised.")
    assert line.endswith("(from 192.0.2.6:40000)"), line
    # and the right password gets in
    c = w.Conn(b.port)
    c.send(PP2 + w.connect("pp3", username="alice", password="a-pw"))
    c.expect(w.connack(0, 0))
    b.wait_log("as pp3 (p2, c1, k60, u'alice').")
