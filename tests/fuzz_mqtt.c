/* tests/fuzz_mqtt.c: libFuzzer target for the MQTT codec (section [7]).
 * The input is a byte stream as a client would send it: every packet is
 * framed with mqx_mqtt_frame() and its body given to every decoder
 * (mqx_mqtt_connect, _publish, _subscribe + _sub_next, _ack) at MQTT
 * levels 3, 4 and 5. Asserts the decoders' promises (used <= size, slices
 * inside the body, fields valid when DONE) and round trips: a decoded
 * PUBLISH re-encoded with mqx_mqtt_enc_publish() frames and decodes to the
 * same fields and the same bytes; a decoded CONNECT re-encoded here, and an
 * ack re-encoded with mqx_mqtt_enc_ack(), decode to the same fields.
 * Seeds: tests/corpus/mqtt/. Build like tests/fuzz_proxy.c. */
#ifdef NDEBUG
#error "fuzz targets check their invariants with assert()"
#endif
int mqttpx_main(int argc, char **argv); /* for -Wmissing-prototypes */
#define main mqttpx_main
#include "../mqttpx.c"
#undef main

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FZ_MAX (1u << 20) /* max_packet_size for framing */

/* A slice is absent (empty) or lies inside b[0..n). */
static void
fz_inside(struct mqx_str s, const uint8_t *b, size_t n)
{
    if (s.len == 0) return;
    assert(s.p != NULL && s.p >= b && s.len <= n &&
           (size_t)(s.p - b) <= n - s.len);
}

static int
fz_str_same(struct mqx_str a, struct mqx_str b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.p, b.p, a.len) == 0);
}

/* An exact-size heap copy, so ASan sees any read past the end. */
static uint8_t *
fz_copy(const uint8_t *p, size_t n)
{
    uint8_t *b = malloc(n ? n : 1);

    assert(b != NULL);
    if (n) memcpy(b, p, n);
    return b;
}

static size_t
fz_put_str(uint8_t *p, struct mqx_str s)
{
    p[0] = (uint8_t)(s.len >> 8);
    p[1] = (uint8_t)s.len;
    if (s.len) memcpy(p + 2, s.p, s.len);
    return 2 + (size_t)s.len;
}

/* CONNECT body from decoded fields (the codec has no CONNECT encoder: the
 * broker never sends one); must decode to the same fields. */
static void
fz_connect_roundtrip(const struct mqx_connect *c)
{
    size_t cap = 12 + 5 * 2 + c->client_id.len + c->will_topic.len +
                 c->will_payload.len + c->username.len + c->password.len;
    uint8_t *b = malloc(cap), flags;
    size_t n = 0;
    struct mqx_connect d;
    struct mqx_str name;

    assert(b != NULL);
    name.p = (const uint8_t *)(c->level == 4 ? "MQTT" : "MQIsdp");
    name.len = c->level == 4 ? 4 : 6;
    n += fz_put_str(b + n, name);
    b[n++] = c->level;
    flags =
        (uint8_t)(c->clean << 1 | c->will << 2 | c->will_qos << 3 |
                  c->will_retain << 5 | c->has_pass << 6 | c->has_user << 7);
    b[n++] = flags;
    b[n++] = (uint8_t)(c->keepalive >> 8);
    b[n++] = (uint8_t)c->keepalive;
    n += fz_put_str(b + n, c->client_id);
    if (c->will) {
        n += fz_put_str(b + n, c->will_topic);
        n += fz_put_str(b + n, c->will_payload);
    }
    if (c->has_user) n += fz_put_str(b + n, c->username);
    if (c->has_pass) n += fz_put_str(b + n, c->password);
    assert(n <= cap);
    assert(mqx_mqtt_connect(b, n, &d) == MQX_DONE);
    assert(d.level == c->level && d.clean == c->clean && d.will == c->will &&
           d.will_qos == c->will_qos && d.will_retain == c->will_retain &&
           d.has_user == c->has_user && d.has_pass == c->has_pass &&
           d.keepalive == c->keepalive && d.connack == 0);
    assert(fz_str_same(d.client_id, c->client_id));
    assert(fz_str_same(d.will_topic, c->will_topic));
    assert(fz_str_same(d.will_payload, c->will_payload));
    assert(fz_str_same(d.username, c->username));
    if (c->has_pass) /* MQTT 3.1 drops a password without user name */
        assert(fz_str_same(d.password, c->password));
    free(b);
}

static void
fz_connect(const struct mqx_packet *pk)
{
    struct mqx_connect c;
    enum mqx_rc rc = mqx_mqtt_connect(pk->body, pk->len, &c);

    assert(rc == MQX_DONE || rc == MQX_BAD || rc == MQX_PROTO);
    if (rc == MQX_BAD) {
        assert(c.connack == 0 || c.connack == MQX_CONNACK_PROTOCOL ||
               c.connack == MQX_CONNACK_ID ||
               (c.level == 5 && (c.connack == MQX_RC_MALFORMED ||
                                 c.connack == MQX_RC_PROTOCOL ||
                                 c.connack == MQX_RC_ID_INVALID ||
                                 c.connack == MQX_RC_PAYLOAD_FORMAT)));
        return;
    }
    assert(c.connack == 0);
    assert(c.level == 3 || c.level == 4 || c.level == 5);
    if (c.level == 5) { /* properties inside the body, no round trip */
        assert(c.props.raw >= pk->body &&
               c.props.raw + c.props.raw_len <= pk->body + pk->len);
        assert(c.props.fwd_len == 0); /* none travel from CONNECT */
        if (c.will) assert(c.will_props.fwd_len <= c.will_props.raw_len);
        if (c.will) assert(mqx_topic_valid(c.will_topic.p, c.will_topic.len));
        return;
    }
    assert(c.will_qos <= 2);
    assert(c.will || (c.will_qos == 0 && c.will_retain == 0));
    assert(!(c.level == 4 && c.has_pass && !c.has_user)); /* [MQTT-3.1.2-22] */
    assert(c.client_id.len > 0 || (c.level == 4 && c.clean));
    fz_inside(c.client_id, pk->body, pk->len);
    fz_inside(c.will_topic, pk->body, pk->len);
    fz_inside(c.will_payload, pk->body, pk->len);
    fz_inside(c.username, pk->body, pk->len);
    fz_inside(c.password, pk->body, pk->len);
    assert(mqx_utf8_valid(c.client_id.p, c.client_id.len));
    if (c.will) assert(mqx_topic_valid(c.will_topic.p, c.will_topic.len));
    if (c.has_user) assert(mqx_utf8_valid(c.username.p, c.username.len));
    if (!c.has_user) assert(c.username.len == 0);
    fz_connect_roundtrip(&c);
}

/* A 5.0 PUBLISH: the forwarded properties decode alone; a round trip
 * through the 5.0 encoder gives the same packet back. */
static int
fz_publish5(const struct mqx_packet *pk, const struct mqx_publish *p,
            struct mqx_str *topic)
{
    struct mqx_publish q;
    struct mqx_props x;
    struct mqx_packet pk2;
    uint8_t *fw, *e;
    size_t size, n, used;

    assert(p->topic.len ? mqx_topic_valid(p->topic.p, p->topic.len)
                        : (p->props.has & ((uint64_t)1 << MQX_P_ALIAS)) != 0);
    assert(p->props.fwd_len <= p->props.raw_len);
    fw = malloc(p->props.fwd_len + 1);
    assert(fw != NULL);
    assert(mqx_props_copy_fwd(&p->props, fw) == p->props.fwd_len);
    assert(mqx_props_decode(fw, p->props.fwd_len, MQX_PW_PUBLISH, &x) ==
               MQX_DONE &&
           x.fwd_len == p->props.fwd_len && x.n_user == p->props.n_user);
    free(fw);
    size = mqx_mqtt_publish5_size(p->topic.len, p->payload.len, p->qos,
                                  p->props.raw_len);
    e = malloc(size);
    assert(e != NULL);
    n = mqx_mqtt_enc_publish5(e, p->topic.p, p->topic.len, p->payload.p,
                              p->payload.len, p->qos, p->retain, p->dup, p->pid,
                              NULL, 0, p->props.raw, p->props.raw_len);
    assert(n == size);
    assert(mqx_mqtt_frame(e, n, (uint32_t)n, &pk2, &used) == MQX_DONE);
    assert(mqx_mqtt_publish(pk2.flags, pk2.body, pk2.len, 5, &q) == MQX_DONE);
    assert(q.qos == p->qos && q.pid == p->pid && q.props.has == p->props.has);
    assert(fz_str_same(q.topic, p->topic) &&
           fz_str_same(q.payload, p->payload));
    (void)pk;
    free(e);
    if (p->topic.len) *topic = p->topic;
    return p->topic.len != 0;
}

/* PUBLISH at one level; returns 1 (and the topic) when DONE. */
static int
fz_publish(const struct mqx_packet *pk, const uint8_t *raw, uint8_t level,
           struct mqx_str *topic)
{
    struct mqx_publish p, q;
    struct mqx_packet pk2;
    enum mqx_rc rc;
    size_t size, n, used;
    uint8_t *e;

    rc = mqx_mqtt_publish(pk->flags, pk->body, pk->len, level, &p);
    assert(rc == MQX_DONE || rc == MQX_BAD || rc == MQX_PROTO);
    if (rc != MQX_DONE) return 0;
    if (level == 5) return fz_publish5(pk, &p, topic);
    assert(p.qos <= 2 && !(p.qos == 0 && p.dup));
    assert(p.qos == 0 ? p.pid == 0 : p.pid != 0);
    assert(mqx_topic_valid(p.topic.p, p.topic.len));
    fz_inside(p.topic, pk->body, pk->len);
    fz_inside(p.payload, pk->body, pk->len);
    assert(2u + p.topic.len + (p.qos ? 2u : 0u) + p.payload.len == pk->len);
    if (p.payload.len)
        assert(p.payload.p + p.payload.len == pk->body + pk->len);

    /* round trip through the encoder */
    size = mqx_mqtt_publish_size(p.topic.len, p.payload.len, p.qos);
    e = malloc(size);
    assert(e != NULL);
    n = mqx_mqtt_enc_publish(e, p.topic.p, p.topic.len, p.payload.p,
                             p.payload.len, p.qos, p.retain, p.dup, p.pid);
    assert(n == size);
    assert(mqx_mqtt_frame(e, n, (uint32_t)n, &pk2, &used) == MQX_DONE);
    assert(used == n && pk2.type == MQX_PUBLISH && pk2.len == pk->len);
    if (pk->type == MQX_PUBLISH) { /* same first byte and body bytes */
        assert(e[0] == raw[0]);
        assert(memcmp(pk2.body, pk->body, pk->len) == 0);
    }
    assert(mqx_mqtt_publish(pk2.flags, pk2.body, pk2.len, level, &q) ==
           MQX_DONE);
    assert(q.qos == p.qos && q.retain == p.retain && q.dup == p.dup &&
           q.pid == p.pid);
    assert(fz_str_same(q.topic, p.topic) && fz_str_same(q.payload, p.payload));
    free(e);
    *topic = p.topic;
    return 1;
}

/* (UN)SUBSCRIBE at one level: the walk must visit exactly count valid
 * filters and end at list_len. Matches each against the last topic. */
static void
fz_subscribe(const struct mqx_packet *pk, uint8_t level, struct mqx_str topic)
{
    struct mqx_subscribe s;
    struct mqx_str f;
    size_t off = 0, prev;
    uint32_t k = 0;
    uint8_t o;
    enum mqx_rc rc = mqx_mqtt_subscribe(pk, level, &s);

    assert(rc == MQX_DONE || rc == MQX_BAD || rc == MQX_PROTO);
    if (rc != MQX_DONE) return;
    assert(pk->flags == 2 && s.pid != 0 && s.count > 0);
    assert(s.with_opts == (pk->type == MQX_SUBSCRIBE));
    assert(s.list >= pk->body && s.list + s.list_len == pk->body + pk->len);
    for (;;) {
        prev = off;
        if (!mqx_mqtt_sub_next(&s, &off, &f, &o)) break;
        assert(off > prev && off <= s.list_len);
        if (level <= 4) assert(mqx_filter_valid(f.p, f.len));
        fz_inside(f, s.list, s.list_len);
        assert(s.with_opts ? (o & 3) != 3 : o == 0);
        if (level <= 4) assert((o & 0xfc) == 0);
        assert((o & 0xc0) == 0 && (o & 0x30) != 0x30);
        if (topic.len) {
            int m = mqx_topic_match(f.p, f.len, topic.p, topic.len);
            if (!memchr(f.p, '+', f.len) && !memchr(f.p, '#', f.len))
                assert(m == fz_str_same(f, topic)); /* no wildcard */
            if (f.len == 1 && f.p[0] == '#')
                assert(m == (topic.p[0] != '$')); /* [MQTT-4.7.2-1] */
        }
        k++;
    }
    assert(k == s.count && off == s.list_len);
}

static void
fz_ack(const struct mqx_packet *pk, const uint8_t *raw)
{
    struct mqx_ack a;
    uint16_t pid;
    uint8_t e[4];
    enum mqx_rc rc = mqx_mqtt_ack(pk, 4, &a);

    assert(rc == MQX_DONE || rc == MQX_BAD || rc == MQX_PROTO);
    (void)mqx_mqtt_ack(pk, 5, &a); /* 5.0: reason code, properties */
    if (rc != MQX_DONE) return;
    pid = a.pid;
    assert(pk->len == 2 && pid != 0);
    assert(pk->flags == (pk->type == MQX_PUBREL ? 2 : 0));
    if (pk->type >= MQX_PUBACK && pk->type <= MQX_PUBCOMP) {
        assert(mqx_mqtt_enc_ack(e, pk->type, pid) == 4);
        assert(e[0] == raw[0] && memcmp(e + 2, pk->body, 2) == 0);
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *b = fz_copy(data, size);
    size_t off = 0;
    struct mqx_str topic = {NULL, 0};

    while (off < size) {
        struct mqx_packet pk;
        size_t used = 0, hl = 0, left = size - off;
        uint32_t rl = 0;
        enum mqx_rc rc = mqx_mqtt_frame(b + off, left, FZ_MAX, &pk, &used);
        enum mqx_rc hr = mqx_mqtt_header(b + off, left, &hl, &rl);
        uint8_t lv;

        assert(rc == MQX_DONE || rc == MQX_MORE || rc == MQX_BAD ||
               rc == MQX_BIG);
        if (rc == MQX_BIG) assert(hr == MQX_DONE && hl + rl > FZ_MAX);
        if (rc == MQX_MORE)
            assert(hr == MQX_MORE || (hr == MQX_DONE && left - hl < rl));
        if (rc != MQX_DONE) break;
        /* a whole packet: its own bytes, nothing more */
        assert(hr == MQX_DONE && hl >= 2 && hl <= 5 && used == hl + rl);
        assert(used <= left && pk.len == rl && pk.body == b + off + hl);
        assert(pk.type >= MQX_CONNECT && pk.type <= MQX_AUTH);
        assert(hl - 1 >= mqx_mqtt_rl_size(rl)); /* never shorter than minimal */
        {
            uint8_t *x = fz_copy(b + off, used); /* exact size */
            struct mqx_packet p2;
            size_t u2;

            assert(mqx_mqtt_frame(x, used - 1, FZ_MAX, &p2, &u2) == MQX_MORE);
            assert(mqx_mqtt_frame(x, used, (uint32_t)used - 1, &p2, &u2) ==
                   MQX_BIG); /* decided on the header alone */
            assert(mqx_mqtt_frame(x, used, (uint32_t)used, &p2, &u2) ==
                       MQX_DONE &&
                   u2 == used);
            free(x);
        }
        /* every decoder on every body: they must all stay inside it */
        fz_connect(&pk);
        for (lv = 3; lv <= 5; lv++) {
            struct mqx_str t;
            if (fz_publish(&pk, b + off, lv, &t) && pk.type == MQX_PUBLISH)
                topic = t;
            fz_subscribe(&pk, lv, topic);
        }
        fz_ack(&pk, b + off);
        off += used;
    }
    free(b);
    return 0;
}
