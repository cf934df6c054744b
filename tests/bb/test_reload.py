"""SIGHUP reloads what a running broker can change (issue: operations):
allow_anonymous, queue limits, log settings; pool sizes, listeners and
the user need a restart and the log says so; a bad file keeps the
running configuration."""

import os
import signal

import mqttwire as w


def _rewrite(b, text):
    with open(b.conf_path, "w") as f:
        f.write(text.replace("{port}", str(b.port)))


def test_sighup_applies_and_reports(broker, tmp_path):
    base = "listener {port} 127.0.0.1\nallow_anonymous true\n"
    b = broker(conf=base + "max_queued_messages 5\n")
    w.open_client(b.port, "before").close()
    logfile = tmp_path / "after.log"
    _rewrite(b, "listener {port} 127.0.0.1\nallow_anonymous false\n"
             "max_queued_messages 7\nmax_sessions 10\n"
             "log_dest stderr\nlog_dest file %s\n" % logfile)
    mark = b.mark()
    b.send_signal(signal.SIGHUP)
    b.wait_log("Reload: allow_anonymous 0", since=mark)
    b.wait_log("Reload: max_queued_messages 7", since=mark)
    b.wait_log("Reload: max_sessions changed, but it needs a restart.",
               since=mark)
    b.wait_log("restart mqttpx to change them", since=mark)
    # now anonymous clients are refused [MQTT-3.2.2-5], named ones not
    c = w.Conn(b.port)
    c.send(w.connect("anon"))
    c.expect(w.connack(0, 5))
    c.expect_closed()
    w.open_client(b.port, "named", username="u").close()
    # the log now also goes to the file
    b.wait_log("New client connected from", since=mark)
    assert "as named" in logfile.read_text()


def test_sighup_bad_file_keeps_running_config(broker):
    b = broker()
    _rewrite(b, "listener {port} 127.0.0.1\nallow_anonymous false\n"
             "no_such_option 1\n")
    mark = b.mark()
    b.send_signal(signal.SIGHUP)
    line = b.wait_log("Reload failed:", since=mark)
    assert "%s:3: unknown option 'no_such_option'" % b.conf_path in line
    assert "keeping the running configuration" in line
    # allow_anonymous is still true
    w.open_client(b.port, "still-anon").close()
    assert b.alive()


def test_sighup_listener_change_needs_restart(broker):
    b = broker()
    _rewrite(b, "listener {port} 127.0.0.1\nlistener %d 127.0.0.1\n"
             "allow_anonymous true\n" % (b.port + 1 if b.port < 65535 else 1))
    mark = b.mark()
    b.send_signal(signal.SIGHUP)
    b.wait_log("restart mqttpx to change them", since=mark)
    assert os.path.exists(b.conf_path)
    w.open_client(b.port, "x").close()
