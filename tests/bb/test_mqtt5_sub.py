"""MQTT 5.0 subscriptions: SUBACK and UNSUBACK reason codes, subscription
identifiers, the subscription options (No Local, Retain As Published,
Retain Handling) and shared subscriptions ($share/GROUP/FILTER:
distribution, redelivery to another member, no retained messages).

'Nothing else arrived' is a fence: every subscriber also subscribes to
'fence', and the fence message must be the next one it receives."""

import select
import time

import pytest

import mqttwire as w
import mqtt5wire as m5
from mqtt5wire import (open5, sub5, unsub5, pub5, recv_pub5, collect_until5,
                       sub_opts)
from test_mqtt5 import auth_broker


def fence(b, *subs):
    """Publish on 'fence' and return, per subscriber, what it received
    before the fence."""
    p = open5(b.port, "fencer")
    pub5(p, "fence", b"fence", qos=1)
    got = [collect_until5(s, "fence", b"fence") for s in subs]
    p.close()
    return got if len(subs) > 1 else got[0]


def sid(pid):
    return [(m5.SUBSCRIPTION_ID, pid)]


def sub_ids(m):
    return sorted(m.props.all(m5.SUBSCRIPTION_ID))


# ---- SUBACK / UNSUBACK reason codes -------------------------------------

def test_suback_granted_qos(broker):
    # [MQTT-3.9.3] one code per filter, in order: the granted QoS
    b = broker()
    c = open5(b.port, "g")
    assert sub5(c, 1, [("g/0", 0), ("g/1", 1), ("g/2", 2),
                       ("g/+", sub_opts(1, rap=True, rh=2))]) == [0, 1, 2, 1]


def test_suback_topic_filter_invalid(broker):
    # 0x8F topic filter invalid, per filter; the valid ones are in place
    # and the connection stays open
    b = broker()
    c = open5(b.port, "inv")
    codes = sub5(c, 1, [("ok/a", 1), ("a/#/b", 1), ("a+/b", 1), ("#x", 0),
                        ("ok/b", 2), ("x/+y", 0)])
    assert codes == [1, 0x8F, 0x8F, 0x8F, 2, 0x8F]
    p = open5(b.port, "p")
    pub5(p, "ok/b", b"works", qos=1)
    assert recv_pub5(c).payload == b"works"


def test_suback_shared_filter_invalid(broker):
    # [MQTT-4.8.2-1] [MQTT-4.8.2-2] a share name of at least one character
    # without / + #, then / and a topic filter
    b = broker()
    c = open5(b.port, "sinv")
    codes = sub5(c, 1, [("$share/g", 1), ("$share//t", 1),
                        ("$share/g+/t", 1), ("$share/g#/t", 1),
                        ("$share/g/", 1), ("$share/g/t", 1)])
    # "$share/g/": the topic filter after the share name is empty, and a
    # filter is at least one character [MQTT-4.7.3-1]
    assert codes == [0x8F] * 5 + [1], codes


def test_suback_not_authorized(broker):
    # 0x87 not authorized where the ACL denies the filter
    b = auth_broker(broker, acl="user alice\ntopic read r/#\n"
                                "topic readwrite fence\n")
    c = open5(b.port, "a", username="alice", password="secret")
    assert sub5(c, 1, [("r/x", 1), ("secret/x", 1), ("r/#", 2),
                       ("#", 0)]) == [1, 0x87, 2, 0x87]


def test_suback_shared_subscriptions_not_supported(broker):
    # shared_subscriptions false: 0x9E for $share filters, others granted
    b = broker("shared_subscriptions false\n")
    c = open5(b.port, "ns")
    assert c.connack.props.get(m5.SHARED_SUB_AVAILABLE) == 0
    assert sub5(c, 1, [("$share/g/t", 1), ("t", 1)]) == [0x9E, 1]


def test_suback_quota_exceeded(broker):
    # max_subscriptions full: 0x97 quota exceeded for what does not fit
    b = broker("max_subscriptions 2\n")
    c = open5(b.port, "q")
    assert sub5(c, 1, [("q/1", 1), ("q/2", 1), ("q/3", 1)]) == [1, 1, 0x97]
    assert unsub5(c, 2, ["q/1"]) == [0x00]
    assert sub5(c, 3, [("q/3", 1)]) == [1]


def test_unsuback_reason_codes(broker):
    # 0x00 success, 0x11 no subscription existed, 0x8F topic filter invalid
    b = broker()
    c = open5(b.port, "u")
    sub5(c, 1, [("u/a", 1), ("u/+", 0), ("fence", 0)])
    assert unsub5(c, 2, ["u/a", "u/never", "u/#/bad", "u/+"]) == \
        [0x00, 0x11, 0x8F, 0x00]
    assert unsub5(c, 3, ["u/a"]) == [0x11]
    p = open5(b.port, "p")
    pub5(p, "u/a", b"after unsubscribe", qos=1)
    assert fence(b, c) == []


def test_unsubscribe_shared(broker):
    b = broker()
    c = open5(b.port, "us")
    sub5(c, 1, [("$share/g/us", 1)])
    assert unsub5(c, 2, ["$share/g/us", "$share/other/us", "us"]) == \
        [0x00, 0x11, 0x11]


# ---- subscription identifiers -------------------------------------------

def test_subscription_identifier_delivered(broker):
    # [MQTT-3.3.4-3] the identifier of the matching subscription is sent
    # with the message
    b = broker()
    c = open5(b.port, "si")
    sub5(c, 1, [("si/a", 1)], sid(5))
    sub5(c, 2, [("si/b", 1)], sid(268435455))  # the largest (4 bytes)
    sub5(c, 3, [("si/c", 1)])
    p = open5(b.port, "p")
    for t in ("si/a", "si/b", "si/c"):
        pub5(p, t, t, qos=1)
    got = {m.topic: sub_ids(m) for m in (recv_pub5(c) for _ in range(3))}
    assert got == {"si/a": [5], "si/b": [268435455], "si/c": []}


def test_subscription_identifiers_of_overlapping_subscriptions(broker):
    # [MQTT-3.3.4-4] several subscriptions of the client match: the
    # message is delivered once, with every identifier (in any order)
    b = broker()
    c = open5(b.port, "ov")
    sub5(c, 1, [("ov/#", 1)], sid(1))
    sub5(c, 2, [("ov/+/x", 2)], sid(2))
    sub5(c, 3, [("ov/a/x", 0)], sid(3))
    sub5(c, 4, [("ov/a/+", 0)])                # no identifier
    sub5(c, 5, [("fence", 0)])
    p = open5(b.port, "p")
    pub5(p, "ov/a/x", b"all", qos=2)
    pub5(p, "ov/b/x", b"two", qos=2)
    pub5(p, "ov/a/y", b"one+none", qos=2)
    got = fence(b, c)
    assert [(m.topic, sub_ids(m)) for m in got] == [
        ("ov/a/x", [1, 2, 3]), ("ov/b/x", [1, 2]), ("ov/a/y", [1])], got
    assert [m.qos for m in got] == [2, 2, 1]  # the highest granted QoS


def test_subscription_identifier_replaced_on_resubscribe(broker):
    # subscribing to the same filter again replaces its identifier; without
    # one, the identifier is removed
    b = broker()
    c = open5(b.port, "rs")
    sub5(c, 1, [("rs", 1)], sid(7))
    p = open5(b.port, "p")
    pub5(p, "rs", b"1", qos=1)
    assert sub_ids(recv_pub5(c)) == [7]
    sub5(c, 2, [("rs", 1)], sid(8))
    pub5(p, "rs", b"2", qos=1)
    assert sub_ids(recv_pub5(c)) == [8]
    sub5(c, 3, [("rs", 1)])
    pub5(p, "rs", b"3", qos=1)
    assert sub_ids(recv_pub5(c)) == []


def test_subscription_identifier_on_retained_at_subscribe(broker):
    b = broker()
    p = open5(b.port, "p")
    pub5(p, "sr/t", b"kept", qos=1, retain=True)
    c = open5(b.port, "c")
    sub5(c, 1, [("sr/#", 1)], sid(42))
    m = recv_pub5(c)
    assert m.retain and sub_ids(m) == [42]


def test_subscription_identifier_on_queued_message(broker):
    # kept with the session: a message queued while offline carries it
    b = broker()
    se = [(m5.SESSION_EXPIRY, 60)]
    c = open5(b.port, "sq", clean=False, properties=se)
    sub5(c, 1, [("sq", 1)], sid(99))
    c.send(m5.disconnect())
    c.expect_closed()
    b.wait_log("Client sq disconnected")
    p = open5(b.port, "p")
    pub5(p, "sq", b"queued", qos=1)
    c = open5(b.port, "sq", clean=False, properties=se, present=True)
    m = recv_pub5(c)
    assert m.payload == b"queued" and sub_ids(m) == [99]


def test_subscription_identifier_not_to_others(broker):
    # identifiers belong to the subscriber: another subscriber (and the
    # publisher's own properties) are unaffected
    b = broker()
    c1 = open5(b.port, "c1")
    c2 = open5(b.port, "c2")
    sub5(c1, 1, [("so", 1)], sid(11))
    sub5(c2, 1, [("so", 1)], sid(22))
    c3 = w.open_client(b.port, "c3")
    w.sub(c3, 1, [("so", 1)])
    p = open5(b.port, "p")
    pub5(p, "so", b"x", qos=1)
    assert sub_ids(recv_pub5(c1)) == [11]
    assert sub_ids(recv_pub5(c2)) == [22]
    m = w.recv_pub(c3)
    assert m.raw == w.publish("so", b"x", qos=1, pid=m.pid)


# ---- No Local, Retain As Published, Retain Handling ----------------------

def test_no_local(broker):
    # [MQTT-3.8.3-3] No Local: the client's own messages are not sent to
    # it; other publishers' are
    b = broker()
    c = open5(b.port, "nl")
    sub5(c, 1, [("nl", sub_opts(1, no_local=True)), ("fence", 0)])
    pub5(c, "nl", b"mine", qos=1, pid=1)
    p = open5(b.port, "p")
    pub5(p, "nl", b"theirs", qos=1)
    got = fence(b, c)
    assert [m.payload for m in got] == [b"theirs"]


def test_no_local_other_subscription_still_matches(broker):
    # No Local applies per subscription: an overlapping subscription
    # without it still delivers the client's own message
    b = broker()
    c = open5(b.port, "nl2")
    sub5(c, 1, [("nl2/x", sub_opts(1, no_local=True)), ("nl2/+", 1)])
    pub5(c, "nl2/x", b"mine", qos=1, pid=1)
    m = c.next5(w.PUBLISH)
    assert m.payload == b"mine"


def test_without_no_local_own_messages_arrive(broker):
    b = broker()
    c = open5(b.port, "self")
    sub5(c, 1, [("self", 1)])
    pub5(c, "self", b"echo", qos=1, pid=1)
    m = c.next5(w.PUBLISH)
    assert m.payload == b"echo"


@pytest.mark.parametrize("rap", [False, True])
def test_retain_as_published(broker, rap):
    # [MQTT-3.3.1-12] [MQTT-3.3.1-13] live delivery of a retained PUBLISH:
    # RETAIN as published with Retain As Published 1, else 0
    b = broker()
    c = open5(b.port, "rap")
    sub5(c, 1, [("rap/#", sub_opts(1, rap=rap))])
    p = open5(b.port, "p")
    pub5(p, "rap/r", b"kept", qos=1, retain=True)
    pub5(p, "rap/n", b"passing", qos=1)
    m1, m2 = recv_pub5(c), recv_pub5(c)
    assert (m1.payload, m1.retain) == (b"kept", rap)
    assert (m2.payload, m2.retain) == (b"passing", False)


def test_retained_at_subscribe_always_retain_1(broker):
    # retained messages sent at SUBSCRIBE have RETAIN 1, whatever Retain
    # As Published says
    b = broker()
    p = open5(b.port, "p")
    pub5(p, "ra/t", b"kept", qos=1, retain=True)
    for rap in (False, True):
        c = open5(b.port, "c%d" % rap)
        sub5(c, 1, [("ra/t", sub_opts(1, rap=rap))])
        assert recv_pub5(c).retain


def test_retain_handling_0(broker):
    # [MQTT-3.3.1-9] Retain Handling 0: retained messages at every
    # SUBSCRIBE, a repeated one included
    b = broker()
    p = open5(b.port, "p")
    pub5(p, "rh0", b"kept", qos=1, retain=True)
    c = open5(b.port, "c")
    sub5(c, 1, [("rh0", sub_opts(1, rh=0)), ("fence", 0)])
    assert recv_pub5(c).payload == b"kept"
    sub5(c, 2, [("rh0", sub_opts(1, rh=0))])
    assert recv_pub5(c).payload == b"kept"
    assert fence(b, c) == []


def test_retain_handling_1(broker):
    # [MQTT-3.3.1-10] Retain Handling 1: only when the subscription did not
    # exist; again after an unsubscribe
    b = broker()
    p = open5(b.port, "p")
    pub5(p, "rh1", b"kept", qos=1, retain=True)
    c = open5(b.port, "c")
    sub5(c, 1, [("rh1", sub_opts(1, rh=1)), ("fence", 0)])
    assert recv_pub5(c).payload == b"kept"
    sub5(c, 2, [("rh1", sub_opts(2, rh=1))])
    assert fence(b, c) == []
    unsub5(c, 3, ["rh1"])
    sub5(c, 4, [("rh1", sub_opts(1, rh=1))])
    assert recv_pub5(c).payload == b"kept"


def test_retain_handling_2(broker):
    # [MQTT-3.3.1-11] Retain Handling 2: never at SUBSCRIBE; live messages
    # still arrive
    b = broker()
    p = open5(b.port, "p")
    pub5(p, "rh2/a", b"kept", qos=1, retain=True)
    c = open5(b.port, "c")
    sub5(c, 1, [("rh2/#", sub_opts(1, rh=2)), ("fence", 0)])
    assert fence(b, c) == []
    pub5(p, "rh2/a", b"live", qos=1)
    assert recv_pub5(c).payload == b"live"


# ---- shared subscriptions -------------------------------------------------

def recv_any(conns, timeout=5.0):
    """(conn, PUBLISH) from whichever of conns has one first; acknowledged
    by the caller."""
    deadline = time.monotonic() + timeout
    while True:
        for c in conns:
            if c.pending or c.buf:
                try:
                    return c, recv_pub5(c, timeout=0.2, ack=False)
                except w.Timeout:
                    pass
        left = deadline - time.monotonic()
        if left <= 0:
            raise w.Timeout("no PUBLISH on any of %d connections" %
                            len(conns))
        r, _, _ = select.select([c.sock for c in conns], [], [], left)
        for c in conns:
            if c.sock in r:
                return c, recv_pub5(c, timeout=1.0, ack=False)


def test_shared_subscription_distribution(broker):
    # [MQTT-4.8.2] each message goes to one member of the group, spread
    # across members; a plain subscriber and another group get all of them
    b = broker()
    m1 = open5(b.port, "m1")
    m2 = open5(b.port, "m2")
    for m in (m1, m2):
        assert sub5(m, 1, [("$share/g/sh/+", 1), ("fence", 0)]) == [1, 0]
    other = open5(b.port, "other")
    sub5(other, 1, [("$share/h/sh/#", 1), ("fence", 0)])
    plain = open5(b.port, "plain")
    sub5(plain, 1, [("sh/+", 1), ("fence", 0)])
    p = open5(b.port, "p")
    n = 20
    for i in range(n):
        pub5(p, "sh/t", str(i), qos=1, pid=i + 1)
    per = {m1: [], m2: []}
    for _ in range(n):
        c, m = recv_any([m1, m2])
        m5.ack5(c, m)
        per[c].append(int(m.payload))
    assert per[m1] and per[m2], "one member got everything: %r" % per
    assert sorted(per[m1] + per[m2]) == list(range(n))
    for c in (m1, m2):
        assert per[c] == sorted(per[c]), "out of order: %r" % per
    got = fence(b, m1, m2, other, plain)
    assert got[0] == [] and got[1] == [], "extra copies: %r" % got[:2]
    assert [int(m.payload) for m in got[2]] == list(range(n))
    assert [int(m.payload) for m in got[3]] == list(range(n))


def test_shared_subscription_identifier(broker):
    # a shared subscription's identifier comes with its messages
    b = broker()
    c = open5(b.port, "ssi")
    sub5(c, 1, [("$share/g/ssi", 1)], sid(77))
    p = open5(b.port, "p")
    pub5(p, "ssi", b"x", qos=1)
    assert sub_ids(recv_pub5(c)) == [77]


def test_shared_subscription_single_member_gets_all(broker):
    b = broker()
    c = open5(b.port, "solo")
    sub5(c, 1, [("$share/solo/one", 2)])
    p = open5(b.port, "p")
    for i in range(5):
        pub5(p, "one", str(i), qos=i % 3, pid=i + 1)
    got = [recv_pub5(c) for _ in range(5)]
    assert [m.payload for m in got] == [str(i).encode() for i in range(5)]
    assert [m.qos for m in got] == [i % 3 for i in range(5)]


def test_shared_subscription_redelivered_to_other_member(broker):
    # a QoS 1 message sent to a member that goes away without PUBACK is
    # delivered to another member of the group
    b = broker()
    a = open5(b.port, "a")
    c = open5(b.port, "c")
    for x in (a, c):
        sub5(x, 1, [("$share/g/rd", 1)])
    p = open5(b.port, "p")
    pub5(p, "rd", b"important", qos=1)
    first, m = recv_any([a, c])
    assert m.payload == b"important"
    second = c if first is a else a
    mark = b.mark()
    first.close()  # no PUBACK, session expiry 0
    b.wait_log("closed its connection.", since=mark)
    m2 = recv_pub5(second)
    assert m2.payload == b"important"


def test_shared_subscription_persistent_member_keeps_its_messages(broker):
    # a member whose session outlives the connection keeps what it was
    # given: re-sent to it on its return [MQTT-4.8.2-4], not to the others
    b = broker()
    se = [(m5.SESSION_EXPIRY, 60)]
    a = open5(b.port, "pa", clean=False, properties=se)
    c = open5(b.port, "pc")
    for x in (a, c):
        sub5(x, 1, [("$share/g/pk", 1), ("fence", 0)])
    p = open5(b.port, "p")
    n = 0
    while True:  # until one lands at the persistent member
        n += 1
        pub5(p, "pk", str(n), qos=1, pid=n)
        who, m = recv_any([a, c])
        if who is a:
            break
        m5.ack5(c, m)
        assert n < 10, "the persistent member never got one"
    mark = b.mark()
    a.close()
    b.wait_log("Client pa closed its connection.", since=mark)
    assert fence(b, c) == []
    a = open5(b.port, "pa", clean=False, properties=se, present=True)
    m2 = recv_pub5(a)
    assert (m2.payload, m2.pid, m2.dup) == (m.payload, m.pid, True)


def test_shared_subscription_member_leaving(broker):
    # after a member unsubscribes, the rest of the group gets everything
    b = broker()
    a = open5(b.port, "a")
    c = open5(b.port, "c")
    for x in (a, c):
        sub5(x, 1, [("$share/g/ml", 1), ("fence", 0)])
    assert unsub5(a, 2, ["$share/g/ml"]) == [0]
    p = open5(b.port, "p")
    for i in range(6):
        pub5(p, "ml", str(i), qos=1, pid=i + 1)
    got = fence(b, a, c)
    assert got[0] == []
    assert [m.payload for m in got[1]] == [str(i).encode() for i in range(6)]


def test_shared_subscription_no_retained(broker):
    # [MQTT-3.8.4] retained messages are not sent when a shared
    # subscription is made
    b = broker()
    p = open5(b.port, "p")
    pub5(p, "sr/a", b"kept", qos=1, retain=True)
    c = open5(b.port, "c")
    sub5(c, 1, [("$share/g/sr/#", 1), ("fence", 0)])
    assert fence(b, c) == []
    pub5(p, "sr/a", b"live", qos=1, retain=True)
    m = recv_pub5(c)
    assert m.payload == b"live"


def test_shared_subscription_with_plain_one_same_client(broker):
    # [MQTT-4.8.2] a client with a plain and a shared subscription on one
    # topic gets the plain copy every time, and the group's copy too (it
    # is the only member): two copies, or one carrying both identifiers
    b = broker()
    c = open5(b.port, "both")
    sub5(c, 1, [("bt", 1)], sid(1))
    sub5(c, 2, [("$share/g/bt", 1)], sid(2))
    sub5(c, 3, [("fence", 0)])
    p = open5(b.port, "p")
    for i in range(4):
        pub5(p, "bt", str(i), qos=1, pid=i + 1)
    got = fence(b, c)
    ids = {}
    for m in got:
        ids.setdefault(m.payload, []).extend(sub_ids(m))
    assert {k: sorted(v) for k, v in ids.items()} == {
        str(i).encode(): [1, 2] for i in range(4)}, got
    plain = [m.payload for m in got if 1 in sub_ids(m)]
    assert plain == [str(i).encode() for i in range(4)], got


def test_shared_subscription_v311_member(broker):
    # 3.1.1 clients may be members too; the group shares the messages
    b = broker()
    new = open5(b.port, "new")
    sub5(new, 1, [("$share/mix/mx", 1), ("fence", 0)])
    old = w.open_client(b.port, "old")
    assert w.sub(old, 1, [("$share/mix/mx", 1), ("fence", 0)]) == [1, 0]
    p = open5(b.port, "p")
    for i in range(10):
        pub5(p, "mx", str(i), qos=1, pid=i + 1)
    got_new = [int(m.payload) for m in fence(b, new)]
    got_old = [int(m.payload) for m in w.collect_until(old, "fence")]
    assert got_new and got_old, (got_new, got_old)
    assert sorted(got_new + got_old) == list(range(10)), (got_new, got_old)
