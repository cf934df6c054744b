/* tests/unit.c: unit tests of mqttpx's pure functions and pools.
 * mqttpx.c comes first: it sets the feature-test macros. Built with ASan
 * and UBSan by `make unit`; ends with "N passed, N failed". */
int mqttpx_main(int argc, char **argv); /* for -Wmissing-prototypes */
#define main mqttpx_main
#include "../mqttpx.c"
#undef main

#include <sys/mman.h>

static int n_pass, n_fail;
#define CHECK(x)                                                               \
    ((void)((x) ? n_pass++                                                     \
                : (n_fail++, printf("%s:%d: %s\n", __FILE__, __LINE__, #x))))

/* Copies bytes so they end right before a PROT_NONE page: an overread
 * faults even without ASan. */
static uint8_t *guard_page;
static size_t guard_size;

static const uint8_t *
guard(const uint8_t *p, size_t n)
{
    uint8_t *dst;

    if (!guard_page) {
        long pg = sysconf(_SC_PAGESIZE);
        guard_size = (size_t)pg * 64;
        guard_page = mmap(NULL, guard_size + (size_t)pg, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (guard_page == MAP_FAILED) abort();
        if (mprotect(guard_page + guard_size, (size_t)pg, PROT_NONE)) abort();
    }
    if (n > guard_size) abort();
    dst = guard_page + guard_size - n;
    if (n) memcpy(dst, p, n);
    return dst;
}

static size_t
unhex(const char *h, uint8_t *out)
{
    size_t n = 0;

    while (h[0] && h[1]) {
        unsigned v;
        if (h[0] == ' ') {
            h++;
            continue;
        }
        sscanf(h, "%2x", &v); /* test code only */
        out[n++] = (uint8_t)v;
        h += 2;
    }
    return n;
}

/* ---- framing ---- */

static void
test_frame(void)
{
    static const struct {
        const char *hex;
        int rc;
        uint8_t type;
        uint32_t len;
    } cases[] = {
        {"c000", MQX_DONE, MQX_PINGREQ, 0},
        {"e000", MQX_DONE, MQX_DISCONNECT, 0},
        {"30 05 0001 61 6869", MQX_DONE, MQX_PUBLISH, 5},
        {"30 80 01", MQX_MORE, 0, 0},      /* needs 128 bytes */
        {"30 ff ff ff ff", MQX_BAD, 0, 0}, /* 5-byte length [MQTT-2.2.3] */
        {"30 ff ff ff 7f", MQX_BIG, 0, 0}, /* 256 MB announced */
        {"00 00", MQX_BAD, 0, 0},          /* type 0 reserved */
        {"f0 00", MQX_DONE, MQX_AUTH, 0},  /* 5.0 AUTH: the handler's */
        {"f1 00", MQX_BAD, 0, 0},          /* AUTH flags are 0000 */
        {"11 00", MQX_BAD, 0, 0},          /* [MQTT-2.2.2-2] flags */
        {"80 00", MQX_BAD, 0, 0},          /* SUBSCRIBE needs 0010 */
        {"62 02 0001", MQX_DONE, MQX_PUBREL, 2},
        {"c1 00", MQX_BAD, 0, 0},
    };
    uint8_t b[64];
    size_t i, k, n, used;
    struct mqx_packet pk;

    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        n = unhex(cases[i].hex, b);
        CHECK(mqx_mqtt_frame(guard(b, n), n, 4096, &pk, &used) == cases[i].rc);
        if (cases[i].rc == MQX_DONE) {
            CHECK(pk.type == cases[i].type && pk.len == cases[i].len);
            CHECK(used == n);
            for (k = 0; k < n; k++) /* every prefix asks for more */
                CHECK(mqx_mqtt_frame(guard(b, k), k, 4096, &pk, &used) ==
                      MQX_MORE);
        }
    }
    /* the announced size is refused before the body arrives */
    n = unhex("30 ff 7f", b);
    CHECK(mqx_mqtt_frame(guard(b, n), n, 1000, &pk, &used) == MQX_BIG);
    /* remaining length encodings round trip */
    {
        static const uint32_t v[] = {0,     127,     128,     16383,
                                     16384, 2097151, 2097152, 268435455};
        for (i = 0; i < sizeof v / sizeof v[0]; i++) {
            uint32_t rl = 0;
            b[0] = 0x30;
            k = mqx_mqtt_enc_rl(b + 1, v[i]);
            CHECK(k == mqx_mqtt_rl_size(v[i]));
            CHECK(mqx_mqtt_header(guard(b, k + 1), k + 1, &used, &rl) ==
                  MQX_DONE);
            CHECK(rl == v[i] && used == k + 1);
        }
    }
}

/* ---- CONNECT ---- */

static int
connect_rc(const char *hex, struct mqx_connect *ck)
{
    uint8_t b[512];
    size_t n = unhex(hex, b);

    return mqx_mqtt_connect(guard(b, n), n, ck);
}

static void
test_connect(void)
{
    struct mqx_connect ck;

    /* 3.1.1, clean, keepalive 60, id "c1" */
    CHECK(connect_rc("00044d515454 04 02 003c 0002 6331", &ck) == MQX_DONE);
    CHECK(ck.level == 4 && ck.clean && ck.keepalive == 60);
    CHECK(ck.client_id.len == 2 && memcmp(ck.client_id.p, "c1", 2) == 0);
    /* 3.1 MQIsdp level 3 */
    CHECK(connect_rc("00064d5149736470 03 02 003c 0002 6331", &ck) == MQX_DONE);
    CHECK(ck.level == 3);
    /* level 6 with name MQTT: CONNACK 1 [MQTT-3.1.2-2] */
    CHECK(connect_rc("00044d515454 06 02 003c 0002 6331", &ck) == MQX_BAD);
    CHECK(ck.connack == MQX_CONNACK_PROTOCOL);
    /* 5.0: properties after the keepalive (session expiry 60, receive
     * maximum 5), an empty id is allowed without clean start */
    CHECK(connect_rc("00044d515454 05 00 003c 08 110000003c 210005 0000",
                     &ck) == MQX_DONE);
    CHECK(ck.level == 5 && ck.props.session_expiry == 60 &&
          ck.props.receive_max == 5 && ck.client_id.len == 0);
    /* a property twice, a property CONNECT may not have: malformed */
    CHECK(connect_rc("00044d515454 05 02 003c 04 21000521 0005 0002 6331",
                     &ck) == MQX_BAD);
    CHECK(connect_rc("00044d515454 05 02 003c 06 210005210005 0002 6331",
                     &ck) == MQX_BAD &&
          ck.connack == MQX_RC_PROTOCOL); /* twice: a protocol error */
    CHECK(connect_rc("00044d515454 05 02 003c 03 230001 0002 6331", &ck) ==
              MQX_BAD &&
          ck.connack == MQX_RC_MALFORMED);
    /* will properties: delay 5, user property k=v */
    CHECK(connect_rc("00044d515454 05 06 003c 00 0002 6331 0c 1800000005 "
                     "260001 6b 0001 76 0001 74 0001 70",
                     &ck) == MQX_DONE);
    CHECK(ck.will && ck.will_props.will_delay == 5 &&
          ck.will_props.n_user == 1 && ck.will_props.fwd_len == 7);
    CHECK(connect_rc("00044d515454 03 02 003c 0002 6331", &ck) == MQX_BAD);
    CHECK(ck.connack == MQX_CONNACK_PROTOCOL);
    /* wrong protocol name: close without CONNACK */
    CHECK(connect_rc("00044d515459 04 02 003c 0002 6331", &ck) == MQX_BAD);
    CHECK(ck.connack == 0);
    /* [MQTT-3.1.2-3] reserved flag */
    CHECK(connect_rc("00044d515454 04 03 003c 0002 6331", &ck) == MQX_BAD);
    CHECK(ck.connack == 0);
    /* empty id: clean ok, persistent CONNACK 2 [MQTT-3.1.3-8] */
    CHECK(connect_rc("00044d515454 04 02 003c 0000", &ck) == MQX_DONE);
    CHECK(connect_rc("00044d515454 04 00 003c 0000", &ck) == MQX_BAD);
    CHECK(ck.connack == MQX_CONNACK_ID);
    CHECK(connect_rc("00064d5149736470 03 02 003c 0000", &ck) == MQX_BAD);
    CHECK(ck.connack == MQX_CONNACK_ID);
    /* will flags [MQTT-3.1.2-13..15] */
    CHECK(connect_rc("00044d515454 04 0a 003c 0002 6331", &ck) == MQX_BAD);
    CHECK(connect_rc("00044d515454 04 22 003c 0002 6331", &ck) == MQX_BAD);
    CHECK(connect_rc("00044d515454 04 1e 003c 0002 6331 0001 74 0000", &ck) ==
          MQX_BAD); /* will QoS 3 */
    CHECK(connect_rc("00044d515454 04 2e 003c 0002 6331 0001 74 0002 6869",
                     &ck) == MQX_DONE);
    CHECK(ck.will && ck.will_qos == 1 && ck.will_retain &&
          ck.will_payload.len == 2);
    /* will topic with a wildcard */
    CHECK(connect_rc("00044d515454 04 06 003c 0002 6331 0001 23 0000", &ck) ==
          MQX_BAD);
    /* password without username [MQTT-3.1.2-22] */
    CHECK(connect_rc("00044d515454 04 42 003c 0002 6331 0002 7077", &ck) ==
          MQX_BAD);
    /* username and password */
    CHECK(connect_rc("00044d515454 04 c2 003c 0002 6331 0001 75 0002 7077",
                     &ck) == MQX_DONE);
    CHECK(ck.has_user && ck.has_pass && ck.username.len == 1);
    /* trailing bytes, truncated strings */
    CHECK(connect_rc("00044d515454 04 02 003c 0002 6331 00", &ck) == MQX_BAD);
    CHECK(connect_rc("00044d515454 04 02 003c 0003 6331", &ck) == MQX_BAD);
    CHECK(connect_rc("00044d5154", &ck) == MQX_BAD);
    /* invalid UTF-8 client id [MQTT-3.1.3-4] */
    CHECK(connect_rc("00044d515454 04 02 003c 0002 c080", &ck) == MQX_BAD);
    CHECK(connect_rc("00044d515454 04 02 003c 0002 6300", &ck) == MQX_BAD);
}

/* ---- PUBLISH, SUBSCRIBE, acks ---- */

static void
test_publish(void)
{
    uint8_t b[256], e[256];
    struct mqx_publish p;
    size_t n, k;

    n = unhex("0003 612f62 0007 6869", b);
    CHECK(mqx_mqtt_publish(0x2, guard(b, n), n, 4, &p) == MQX_DONE);
    CHECK(p.qos == 1 && p.pid == 7 && p.payload.len == 2);
    CHECK(p.topic.len == 3);
    CHECK(mqx_mqtt_publish(0x6, guard(b, n), n, 4, &p) == MQX_BAD); /* qos 3 */
    CHECK(mqx_mqtt_publish(0x8, guard(b, n), n, 4, &p) == MQX_BAD); /* dup q0 */
    n = unhex("0003 612f62 0000", b);
    CHECK(mqx_mqtt_publish(0x2, guard(b, n), n, 4, &p) == MQX_BAD); /* pid 0 */
    n = unhex("0003 612f23", b);
    CHECK(mqx_mqtt_publish(0x0, guard(b, n), n, 4, &p) == MQX_BAD); /* # */
    n = unhex("0000", b);
    CHECK(mqx_mqtt_publish(0x0, guard(b, n), n, 4, &p) == MQX_BAD); /* empty */
    n = unhex("0002 eda0", b);
    CHECK(mqx_mqtt_publish(0x0, guard(b, n), n, 4, &p) == MQX_BAD);
    n = unhex("0005 612f", b);
    CHECK(mqx_mqtt_publish(0x0, guard(b, n), n, 4, &p) == MQX_BAD); /* short */
    /* encode then decode */
    k = mqx_mqtt_enc_publish(e, (const uint8_t *)"x/y", 3,
                             (const uint8_t *)"payload", 7, 2, 1, 1, 513);
    CHECK(k == mqx_mqtt_publish_size(3, 7, 2));
    {
        struct mqx_packet pk;
        size_t used;
        CHECK(mqx_mqtt_frame(guard(e, k), k, 4096, &pk, &used) == MQX_DONE);
        CHECK(pk.type == MQX_PUBLISH && pk.flags == 0xd);
        CHECK(mqx_mqtt_publish(pk.flags, pk.body, pk.len, 4, &p) == MQX_DONE);
        CHECK(p.qos == 2 && p.retain && p.dup && p.pid == 513);
        CHECK(p.payload.len == 7 && memcmp(p.payload.p, "payload", 7) == 0);
    }
}

static int
sub_rc(uint8_t type, uint8_t flags, const char *hex, struct mqx_subscribe *s)
{
    static uint8_t b[256];
    struct mqx_packet pk;
    size_t n = unhex(hex, b);

    pk.type = type;
    pk.flags = flags;
    pk.body = guard(b, n);
    pk.len = (uint32_t)n;
    return mqx_mqtt_subscribe(&pk, 4, s);
}

static void
test_subscribe(void)
{
    struct mqx_subscribe s;
    struct mqx_str f;
    uint8_t o;
    size_t off = 0;

    CHECK(sub_rc(MQX_SUBSCRIBE, 2, "000a 0003 612f23 01 0001 2b 02", &s) ==
          MQX_DONE);
    CHECK(s.pid == 10 && s.count == 2);
    CHECK(mqx_mqtt_sub_next(&s, &off, &f, &o) && f.len == 3 && o == 1);
    CHECK(mqx_mqtt_sub_next(&s, &off, &f, &o) && f.len == 1 && o == 2);
    CHECK(!mqx_mqtt_sub_next(&s, &off, &f, &o));
    CHECK(sub_rc(MQX_SUBSCRIBE, 0, "000a 0001 61 00", &s) == MQX_BAD);
    CHECK(sub_rc(MQX_SUBSCRIBE, 2, "000a", &s) == MQX_BAD); /* no filter */
    CHECK(sub_rc(MQX_SUBSCRIBE, 2, "000a 0001 61 03", &s) == MQX_BAD);
    CHECK(sub_rc(MQX_SUBSCRIBE, 2, "000a 0001 61 04", &s) == MQX_BAD);
    CHECK(sub_rc(MQX_SUBSCRIBE, 2, "000a 0001 61", &s) == MQX_BAD);
    CHECK(sub_rc(MQX_SUBSCRIBE, 2, "000a 0005 612f232f62 00", &s) == MQX_BAD);
    CHECK(sub_rc(MQX_SUBSCRIBE, 2, "0000 0001 61 00", &s) == MQX_BAD);
    CHECK(sub_rc(MQX_UNSUBSCRIBE, 2, "0003 0001 61 0001 62", &s) == MQX_DONE);
    CHECK(s.count == 2);
    CHECK(sub_rc(MQX_UNSUBSCRIBE, 0, "0003 0001 61", &s) == MQX_BAD);
    CHECK(sub_rc(MQX_UNSUBSCRIBE, 2, "0003", &s) == MQX_BAD);
}

static void
test_ack(void)
{
    uint8_t b[8];
    struct mqx_packet pk;
    struct mqx_ack a;

    pk.body = b;
    b[0] = 0x12;
    b[1] = 0x34;
    pk.len = 2;
    pk.type = MQX_PUBACK;
    pk.flags = 0;
    CHECK(mqx_mqtt_ack(&pk, 4, &a) == MQX_DONE && a.pid == 0x1234);
    pk.type = MQX_PUBREL;
    CHECK(mqx_mqtt_ack(&pk, 4, &a) == MQX_BAD); /* [MQTT-3.6.1-1] */
    pk.flags = 2;
    CHECK(mqx_mqtt_ack(&pk, 4, &a) == MQX_DONE);
    pk.len = 3;
    CHECK(mqx_mqtt_ack(&pk, 4, &a) == MQX_BAD);
    b[2] = 0x92; /* 5.0: a reason code, then (optional) properties */
    CHECK(mqx_mqtt_ack(&pk, 5, &a) == MQX_DONE && a.reason == 0x92);
    b[3] = 0;
    pk.len = 4;
    CHECK(mqx_mqtt_ack(&pk, 5, &a) == MQX_DONE && a.props.has == 0);
    b[3] = 3; /* a property block longer than the packet */
    CHECK(mqx_mqtt_ack(&pk, 5, &a) == MQX_BAD);
    CHECK(mqx_mqtt_enc_ack(b, MQX_PUBREL, 9) == 4 && b[0] == 0x62 && b[3] == 9);
    CHECK(mqx_mqtt_enc_connack(b, 1, 5) == 4 && b[0] == 0x20 && b[2] == 1 &&
          b[3] == 5);
}

/* ---- topics ---- */

static int
tm(const char *f, const char *t)
{
    return mqx_topic_match((const uint8_t *)f, strlen(f), (const uint8_t *)t,
                           strlen(t));
}

static int
fv(const char *f)
{
    return mqx_filter_valid((const uint8_t *)f, strlen(f));
}

static void
test_topics(void)
{
    CHECK(tm("a/b", "a/b"));
    CHECK(!tm("a/b", "a/c"));
    CHECK(tm("a/+", "a/b"));
    CHECK(!tm("a/+", "a/b/c"));
    CHECK(tm("a/#", "a/b/c"));
    CHECK(tm("a/#", "a")); /* [MQTT-4.7.1-2] parent */
    CHECK(tm("#", "a/b"));
    CHECK(tm("+/+", "/b"));
    CHECK(tm("a/+", "a/"));
    CHECK(!tm("a", "a/b"));
    CHECK(!tm("a/b/c", "a/b"));
    CHECK(tm("+", ""));
    CHECK(!tm("#", "$SYS/x")); /* [MQTT-4.7.2-1] */
    CHECK(!tm("+/x", "$SYS/x"));
    CHECK(tm("$SYS/#", "$SYS/x"));
    CHECK(tm("a/+/c", "a//c"));
    CHECK(fv("#") && fv("+") && fv("a/+/b") && fv("a/#") && fv("/"));
    CHECK(fv("//") && fv("+/+"));
    CHECK(!fv("a/#/b") && !fv("a+") && !fv("#a") && !fv("a/b#") && !fv(""));
    CHECK(mqx_topic_valid((const uint8_t *)"a/b", 3));
    CHECK(!mqx_topic_valid((const uint8_t *)"a/+", 3));
    CHECK(mqx_topic_levels((const uint8_t *)"a/b/c", 5) == 3);
    CHECK(mqx_topic_levels((const uint8_t *)"/", 1) == 2);
    {
        static const struct {
            const char *hex;
            int ok;
        } u[] = {
            {"61", 1},     {"c3a9", 1},   {"e282ac", 1},   {"f09f9880", 1},
            {"00", 0},     {"c080", 0},   {"c1bf", 0},     {"e080af", 0},
            {"eda080", 0}, {"edbfbf", 0}, {"f4908080", 0}, {"80", 0},
            {"c3", 0},     {"e282", 0},   {"f5808080", 0}, {"efbfbf", 1},
        };
        size_t i, n;
        uint8_t b[8];
        for (i = 0; i < sizeof u / sizeof u[0]; i++) {
            n = unhex(u[i].hex, b);
            CHECK(mqx_utf8_valid(guard(b, n), n) == u[i].ok);
        }
    }
}

/* ---- config ---- */

static int
cfg_try(const char *text, struct cfg *c)
{
    char buf[2048];

    cfg_defaults(c);
    snprintf(buf, sizeof buf, "%s", text);
    return cfg_parse_text(c, "t.conf", buf, 0);
}

static void
test_config(void)
{
    static struct cfg c;

    CHECK(cfg_try("# comment\n\nlistener 1883 127.0.0.1\nallow_anonymous "
                  "true\nmax_connections 10\nlistener 1884\n"
                  "max_connections 5\n",
                  &c) == 0);
    CHECK(c.n_lsn == 2 && c.lsn[0].port == 1883 && c.auth.allow_anonymous == 1);
    CHECK(c.lsn[0].max_connections == 10 && c.lsn[1].max_connections == 5);
    CHECK(c.max_connections == -1);
    CHECK(cfg_try("max_connections 100\nlistener 1883\n", &c) == 0);
    CHECK(c.max_connections == 100);
    CHECK(cfg_try("listener 0 /tmp/x.sock\n", &c) == 0 && c.lsn[0].is_unix);
    CHECK(cfg_try("listener 0\n", &c) == -1);
    CHECK(cfg_try("listener 70000\n", &c) == -1);
    CHECK(cfg_try("frobnicate 1\n", &c) == -1);
    CHECK(strcmp(c.err, "t.conf:1: unknown option 'frobnicate'") == 0);
    CHECK(cfg_try("\nmax_inflight_messages 70000\n", &c) == -1);
    CHECK(strcmp(c.err, "t.conf:2: max_inflight_messages: 70000 > 65535") == 0);
    CHECK(cfg_try("allow_anonymous yes\n", &c) == -1);
    CHECK(strstr(c.err, "t.conf:1: allow_anonymous") != NULL);
    CHECK(cfg_try("max_queued_messages 12x\n", &c) == -1);
    CHECK(cfg_try("max_queued_messages\n", &c) == -1);
    CHECK(cfg_try("max_queued_messages 1 2\n", &c) == -1);
    CHECK(cfg_try("message_store_bytes 16M\n", &c) == 0 &&
          c.message_store_bytes == 16 * 1048576);
    CHECK(cfg_try("persistent_client_expiration 2d\n", &c) == 0 &&
          c.persistent_client_expiration == 2 * 86400);
    CHECK(cfg_try("persistent_client_expiration 2x\n", &c) == -1);
    CHECK(cfg_try("log_type error\nlog_type subscribe\n", &c) == 0 &&
          c.log_type == (LOG_T_ERR | LOG_T_SUB));
    CHECK(cfg_try("log_dest file /tmp/x.log\nlog_dest stdout\n", &c) == 0 &&
          c.log_dest == (LOG_D_FILE | LOG_D_STDOUT) &&
          strcmp(c.log_file, "/tmp/x.log") == 0);
    CHECK(cfg_try("log_dest carrier-pigeon\n", &c) == -1);
    CHECK(cfg_try("pid_file /run/my dir/x.pid\n", &c) == 0 &&
          strcmp(c.pid_file, "/run/my dir/x.pid") == 0);
    CHECK(cfg_try("sys_interval 10 \r\n", &c) == 0 && c.sys_interval == 10);
    CHECK(cfg_try("include_dir /nonexistent-dir\n", &c) == -1);
    /* cross checks */
    CHECK(cfg_try("message_store_bytes 65536\nmax_packet_size 60000\n", &c) ==
          0);
    CHECK(cfg_finish(&c) == -1);
    CHECK(cfg_try("", &c) == 0 && cfg_finish(&c) == 0);
    CHECK(c.max_connections == 1024 &&
          c.max_packet_size == c.message_store_bytes / 4);
}

/* ---- the store and the pools, on a tiny broker ---- */

static void
broker_setup(void)
{
    memset(&g, 0, sizeof g);
    cfg_defaults(&g.cfg);
    g.cfg.max_connections = 2;
    g.cfg.max_sessions = 3;
    g.cfg.max_subscriptions = 4;
    g.cfg.max_topic_nodes = 16;
    g.cfg.max_topic_levels = 3;
    g.cfg.max_retained_messages = 2;
    g.cfg.max_queued_total = 8;
    g.cfg.max_queued_messages = 3;
    g.cfg.message_store_bytes = 65536;
    g.cfg.log_dest = 0;
    CHECK(cfg_finish(&g.cfg) == 0);
    g.log_fd = g.syslog_fd = -1;
    arena_plan(1, NULL, 0);
    tree_init();
}

static void
broker_teardown(void)
{
    free(g.arena);
    g.arena = NULL;
}

static void
test_store(void)
{
    void *a, *b, *c, *big;
    size_t base;

    broker_setup();
    base = g.st.used;
    a = st_alloc(10);
    b = st_alloc(64);
    c = st_alloc(65);
    CHECK(a && b && c && a != b);
    CHECK(st_block_size(a) == 64 && st_block_size(c) == 128);
    CHECK(((uintptr_t)c - (uintptr_t)g.st.base) % 128 == 0);
    st_free(a);
    st_free(b);
    st_free(c);
    CHECK(g.st.used == base);
    /* after coalescing, the whole top block is available again */
    big = st_alloc((size_t)MQX_STORE_MIN << g.st.top);
    CHECK(big != NULL);
    CHECK(st_alloc((size_t)MQX_STORE_MIN << g.st.top) != NULL ||
          g.st.size == (size_t)MQX_STORE_MIN << g.st.top);
    st_free(big);
    /* exhaustion: NULL, counted, then usable again */
    {
        static void *v[4096];
        size_t n = 0;
        uint64_t fails = g.st.fails;
        while (n < 4096 && (v[n] = st_alloc(200)) != NULL)
            n++;
        CHECK(n > 0 && n < 4096);
        CHECK(g.st.fails == fails + 1);
        while (n)
            st_free(v[--n]);
        CHECK(g.st.used == 0);
    }
    CHECK(st_alloc(g.st.size * 2) == NULL);
    broker_teardown();
}

static void
test_pool(void)
{
    uint32_t a, b, c, gen;

    broker_setup();
    a = pool_take(&g.p_conn);
    b = pool_take(&g.p_conn);
    c = pool_take(&g.p_conn);
    CHECK(a != NIL && b != NIL && c == NIL); /* 2 connections */
    CHECK(g.p_conn.full == 1);
    CHECK(pool_used(&g.p_conn, a) && pool_used(&g.p_conn, b));
    pool_give(&g.p_conn, b); /* b is now the whole free list: next NIL */
    CHECK(!pool_used(&g.p_conn, b) && g.p_conn.next[b] == NIL);
    CHECK(pool_take(&g.p_conn) == b);
    gen = g.p_conn.gen[a];
    pool_give(&g.p_conn, a);
    CHECK(g.p_conn.gen[a] == gen + 1); /* stale handles are detected */
    CHECK(pool_take(&g.p_conn) == a);
    pool_give(&g.p_conn, a);
    pool_give(&g.p_conn, b);
    CHECK(g.p_conn.used == 0);
    broker_teardown();
}

/* Routing on a tiny broker: sessions without connections (persistent, so
 * QoS 1 messages queue). */
static uint32_t
mk_sess(const char *id)
{
    uint32_t s = sess_new((const uint8_t *)id, strlen(id));

    if (s != NIL) g.sess[s].clean = 0;
    return s;
}

static uint8_t
sub(uint32_t s, const char *f, uint8_t qos)
{
    uint32_t nd;
    int existed;

    return sub_add(s, (const uint8_t *)f, strlen(f), qos, 0, 0, &nd, &existed);
}

static void
pub(const char *t, const char *payload, uint8_t qos, uint8_t retain)
{
    uint32_t m =
        msg_new((const uint8_t *)t, strlen(t), (const uint8_t *)payload,
                strlen(payload), qos, retain);

    CHECK(m != NIL);
    if (m != NIL) (void)route(m, NIL);
}

static void
test_route(void)
{
    uint32_t s1, s2, s3;

    broker_setup();
    s1 = mk_sess("one");
    s2 = mk_sess("two");
    s3 = mk_sess("three");
    CHECK(s1 != NIL && s2 != NIL && s3 != NIL);
    CHECK(mk_sess("four") == NIL); /* pool full: CONNACK 3 */
    CHECK(sess_find((const uint8_t *)"two", 3) == s2);
    CHECK(sub(s1, "a/+", 1) == 1);
    CHECK(sub(s1, "a/#", 2) == 2); /* overlapping: one copy, QoS 2 */
    CHECK(sub(s2, "#", 1) == 1);
    CHECK(sub(s3, "a/b/c/d", 1) == 0x80); /* deeper than 3 levels */
    CHECK(sub(s3, "x", 0) == 0);
    CHECK(sub(s3, "y", 0) == 0x80); /* 4 subscriptions: pool full */
    pub("a/b", "hi", 2, 0);
    CHECK(g.sess[s1].q_count == 1 && g.qents[g.sess[s1].q_head].qos == 2);
    CHECK(g.sess[s2].q_count == 1 && g.qents[g.sess[s2].q_head].qos == 1);
    CHECK(g.sess[s3].q_count == 0);
    pub("$SYS/x", "v", 1, 0); /* [MQTT-4.7.2-1] "#" does not match */
    CHECK(g.sess[s2].q_count == 1);
    /* queue limit 3: further messages are dropped and counted */
    pub("a", "1", 1, 0);
    pub("a", "2", 1, 0);
    pub("a", "3", 1, 0);
    CHECK(g.sess[s1].q_count == 3 && g.sess[s1].dropped == 1);
    /* retained: stored, replaced, delivered on subscribe at min QoS */
    sess_free(s2);
    sess_free(s1);
    CHECK(g.p_qent.used == 0 && g.p_msg.used == 0);
    pub("r/1", "old", 1, 1);
    pub("r/1", "new", 1, 1);
    CHECK(g.n_retained == 1);
    pub("r/2", "two", 0, 1);
    pub("r/3", "three", 0, 1); /* max_retained_messages 2 */
    CHECK(g.n_retained == 2);
    s1 = mk_sess("one");
    CHECK(sub(s1, "r/+", 1) == 1);
    ret_match(s1, 0, (const uint8_t *)"r/+", 3, 0, 1);
    CHECK(g.sess[s1].q_count == 1); /* r/2 is QoS 0: not queued offline */
    {
        const struct qent *e = &g.qents[g.sess[s1].q_head];
        const struct msg *m = &g.msgs[e->msg];
        CHECK(e->retain && e->qos == 1 && m->payload_len == 3 &&
              memcmp(msg_payload(m), "new", 3) == 0);
    }
    pub("r/1", "", 0, 1); /* an empty retained message clears */
    CHECK(g.n_retained == 1);
    sess_free(s1);
    sess_free(s3);
    pub("r/2", "", 0, 1);
    CHECK(g.n_retained == 0);
    /* everything returned: pools empty, the tree back to its root */
    CHECK(g.p_sess.used == 0 && g.p_sub.used == 0 && g.p_qent.used == 0);
    CHECK(g.p_msg.used == 0 && g.p_node.used == 1 && g.st.used == 0);
    CHECK(g.n_subs == 0);
    broker_teardown();
}

/* The node hash survives deletions in any order (backward shift). */
static void
test_tree_churn(void)
{
    char t[32];
    uint32_t s, i, k;

    broker_setup();
    g.cfg.max_subscriptions = 4;
    s = mk_sess("x");
    for (k = 0; k < 50; k++) {
        uint32_t nd[4];
        for (i = 0; i < 4; i++) {
            snprintf(t, sizeof t, "%u/%u", (k * 7 + i) % 13, i);
            int ex;
            CHECK(sub_add(s, (const uint8_t *)t, strlen(t), 0, 0, 0, &nd[i],
                          &ex) == 0);
        }
        for (i = 0; i < 4; i++) {
            snprintf(t, sizeof t, "%u/%u", (k * 7 + (i * 3) % 4) % 13,
                     (i * 3) % 4);
            CHECK(tree_path((const uint8_t *)t, strlen(t), 0) != NIL);
            CHECK(sub_remove(s, (const uint8_t *)t, strlen(t)) == 1);
        }
        CHECK(g.p_node.used == 1);
    }
    sess_free(s);
    CHECK(g.p_sess.used == 0 && g.st.used == 0);
    broker_teardown();
}

/* Every option of the table is documented in config.example. */
static void
test_config_example(void)
{
    FILE *f = fopen("config.example", "r");
    static char text[65536];
    size_t n, i;

    CHECK(f != NULL);
    if (!f) return;
    n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    for (i = 0; i < CFG_N_KEYS; i++) {
        char pat[80];
        int found;
        snprintf(pat, sizeof pat, "\n%s ", cfg_keys[i].name);
        found = strstr(text, pat) != NULL;
        snprintf(pat, sizeof pat, "\n#%s ", cfg_keys[i].name);
        found = found || strstr(text, pat) != NULL;
        if (!found) printf("config.example lacks %s\n", cfg_keys[i].name);
        CHECK(found);
    }
}

/* ---- auth: Mosquitto's password and ACL files ---- */

static void
test_b64(void)
{
    static const char *v[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *e[] = {"",         "Zg==",     "Zm8=",    "Zm9v",
                              "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    char t[32];
    uint8_t d[32];
    size_t i;

    for (i = 0; i < sizeof v / sizeof v[0]; i++) {
        mqx_b64_encode((const uint8_t *)v[i], strlen(v[i]), t, sizeof t);
        CHECK(strcmp(t, e[i]) == 0);
        CHECK(mqx_b64_decode(e[i], strlen(e[i]), d, sizeof d) == strlen(v[i]) &&
              memcmp(d, v[i], strlen(v[i])) == 0);
    }
    CHECK(mqx_b64_decode("Zm9", 3, d, sizeof d) == (size_t)-1);
    CHECK(mqx_b64_decode("Zm=v", 4, d, sizeof d) == (size_t)-1);
    CHECK(mqx_b64_decode("Z!9v", 4, d, sizeof d) == (size_t)-1);
    CHECK(mqx_b64_decode("Zm9vYmFy", 8, d, 5) == (size_t)-1);
    CHECK(mqx_b64_encode((const uint8_t *)"foobar", 6, t, 8) == 0);
}

/* Lines made by Debian's mosquitto_passwd 2.0.11. */
static const char pw_alice[] =
    "alice:$7$101$WVmaW/pXH8EGZLDN$mLcsA00eHSj5MLqdM41KuQUa87uLG+O8yO5/PfLCK5"
    "489Mzv7+GUY2W2qveaBejhKEhlcM+fhLkKY/yS5f9QtA==";
static const char pw_bob[] =
    "bob:$6$eXJqV3jWwkHZ1zMT$J2pc4XQ3q68FpnVTJyd7XsITKnkesLysPuOzoTDN/Xsmx4Zf"
    "w4OA+rKXuiK6iYvbfqp4jm18bmDDZ4gLRfnz7g==";

static int
pw_ok(const char *line, const char *password)
{
    struct mqx_pwline pl;
    struct pwent e;
    struct mqx_str pw;

    if (mqx_pw_line(line, strlen(line), &pl) != MQX_DONE) return -1;
    memset(&e, 0, sizeof e);
    e.kind = pl.kind;
    e.iter = pl.iter;
    e.salt_len = pl.salt_len;
    memcpy(e.salt, pl.salt, sizeof e.salt);
    memcpy(e.hash, pl.hash, sizeof e.hash);
    pw.p = (const uint8_t *)password;
    pw.len = (uint32_t)strlen(password);
    return auth_password_ok(&e, pw);
}

static void
test_password_lines(void)
{
    struct mqx_pwline pl;
    const char *l;

    CHECK(mqx_pw_line(pw_alice, strlen(pw_alice), &pl) == MQX_DONE);
    CHECK(pl.kind == 7 && pl.iter == 101 && pl.salt_len == 12 &&
          pl.user.len == 5);
    CHECK(pw_ok(pw_alice, "secret") == 1);
    CHECK(pw_ok(pw_alice, "Secret") == 0);
    CHECK(pw_ok(pw_alice, "") == 0);
    CHECK(pw_ok(pw_bob, "hunter2") == 1);
    CHECK(pw_ok(pw_bob, "hunter3") == 0);
    CHECK(mqx_pw_line("", 0, &pl) == MQX_MORE);
    CHECK(mqx_pw_line("# c", 3, &pl) == MQX_MORE);
    l = "carol:plaintext";
    CHECK(mqx_pw_line(l, strlen(l), &pl) == MQX_BAD);
    CHECK(strstr(pl.err, "not hashed") != NULL);
    l = "dan:$argon2id$v=19$m=65536,t=3,p=1$c2FsdA$aGFzaA";
    CHECK(mqx_pw_line(l, strlen(l), &pl) == MQX_BAD);
    CHECK(strstr(pl.err, "mosquitto_passwd -H sha512-pbkdf2") != NULL);
    l = "eve:$7$0$WVmaW/pXH8EGZLDN$mLcs";
    CHECK(mqx_pw_line(l, strlen(l), &pl) == MQX_BAD);
    l = "eve:$5$abc$def";
    CHECK(mqx_pw_line(l, strlen(l), &pl) == MQX_BAD);
    l = ":$6$eXJqV3jWwkHZ1zMT$J2pc";
    CHECK(mqx_pw_line(l, strlen(l), &pl) == MQX_BAD);
    l = "eve";
    CHECK(mqx_pw_line(l, strlen(l), &pl) == MQX_BAD);
}

static int
acl_rc(const char *l, struct mqx_aclline *al)
{
    return mqx_acl_line(l, strlen(l), al);
}

static void
test_acl_lines(void)
{
    struct mqx_aclline al;
    uint8_t out[64];
    size_t n;
    struct mqx_str u = {(const uint8_t *)"ann", 3};
    struct mqx_str id = {(const uint8_t *)"dev-1", 5};
    struct mqx_str none = {NULL, 0};
    struct mqx_str bad = {(const uint8_t *)"a/b", 3};

    CHECK(acl_rc("topic read a/#", &al) == MQX_DONE && al.kind == 2 &&
          al.access == MQX_ACL_READ && al.arg.len == 3);
    CHECK(acl_rc("  topic a/b c", &al) == MQX_DONE &&
          al.access == (MQX_ACL_READ | MQX_ACL_WRITE) && al.arg.len == 5);
    CHECK(acl_rc("topic deny secret/#", &al) == MQX_DONE &&
          al.access == MQX_ACL_DENY);
    CHECK(acl_rc("pattern write dev/%c/out", &al) == MQX_DONE && al.kind == 3 &&
          al.access == MQX_ACL_WRITE);
    CHECK(acl_rc("user bob smith", &al) == MQX_DONE && al.kind == 1 &&
          al.arg.len == 9);
    CHECK(acl_rc("# comment", &al) == MQX_MORE);
    CHECK(acl_rc("", &al) == MQX_MORE);
    CHECK(acl_rc("topic read a/#/b", &al) == MQX_BAD);
    CHECK(acl_rc("topic read ", &al) == MQX_DONE && al.arg.len == 4);
    CHECK(acl_rc("topic", &al) == MQX_BAD);
    CHECK(acl_rc("topics read a", &al) == MQX_BAD);
    CHECK(mqx_acl_subst((const uint8_t *)"d/%c/%u", 7, u, id, out, sizeof out,
                        &n) == 0 &&
          n == 11 && memcmp(out, "d/dev-1/ann", 11) == 0);
    CHECK(mqx_acl_subst((const uint8_t *)"d/%u", 4, none, id, out, sizeof out,
                        &n) == -1);
    CHECK(mqx_acl_subst((const uint8_t *)"d/%u", 4, bad, id, out, sizeof out,
                        &n) == -1);
    CHECK(mqx_acl_subst((const uint8_t *)"d/%c", 4, u, id, out, 4, &n) == -1);
}

static void
test_acl_rules(void)
{
    static char text[] = "topic read pub/#\n"
                         "topic read $SYS/#\n"
                         "user ann\n"
                         "topic readwrite home/#\n"
                         "topic deny home/secret\n"
                         "topic read #\n"
                         "user bob\n"
                         "topic write bob/out\n"
                         "pattern readwrite dev/%c/#\n"
                         "pattern read user/%u/in\n";
    char path[] = "/tmp/mqx-unit-aclXXXXXX";
    int fd = mkstemp(path);
    struct acldb db;
    char err[256];
    struct mqx_str ann = {(const uint8_t *)"ann", 3};
    struct mqx_str bob = {(const uint8_t *)"bob", 3};
    struct mqx_str anon = {NULL, 0};
    struct mqx_str id = {(const uint8_t *)"d1", 2};
#define ACL(u, t, a) acl_check(&db, u, id, (const uint8_t *)(t), strlen(t), a)

    memset(&db, 0, sizeof db);
    CHECK(fd >= 0 && write(fd, text, strlen(text)) == (ssize_t)strlen(text));
    close(fd);
    CHECK(acl_load(&db, path, err, sizeof err) == 0);
    CHECK(db.n_anon == 2 && db.n_users == 2 && db.n_pat == 2);
    /* anonymous: the rules before the first user line, and patterns */
    CHECK(ACL(anon, "pub/x", MQX_ACL_READ));
    CHECK(!ACL(anon, "pub/x", MQX_ACL_WRITE));
    CHECK(!ACL(anon, "home/a", MQX_ACL_READ));
    CHECK(ACL(anon, "dev/d1/x", MQX_ACL_WRITE)); /* %c */
    CHECK(!ACL(anon, "user//in", MQX_ACL_READ)); /* no %u without a name */
    /* a user: its own rules and the patterns, not the anonymous ones */
    CHECK(ACL(ann, "home/a", MQX_ACL_WRITE));
    CHECK(!ACL(ann, "home/secret", MQX_ACL_READ)); /* deny wins */
    CHECK(ACL(ann, "other/x", MQX_ACL_READ));      /* "#" */
    CHECK(!ACL(ann, "$SYS/x", MQX_ACL_READ));      /* "#" misses $ */
    CHECK(ACL(ann, "user/ann/in", MQX_ACL_READ));
    CHECK(!ACL(bob, "user/ann/in", MQX_ACL_READ));
    CHECK(ACL(bob, "user/bob/in", MQX_ACL_READ));
    CHECK(ACL(bob, "bob/out", MQX_ACL_WRITE));
    CHECK(!ACL(bob, "bob/out", MQX_ACL_READ));
    CHECK(!ACL(bob, "pub/x", MQX_ACL_READ));
    /* SUBSCRIBE: the filter's wildcards are plain characters */
    CHECK(ACL(ann, "home/#", MQX_ACL_READ));
    CHECK(ACL(ann, "#", MQX_ACL_READ));
    CHECK(!ACL(bob, "#", MQX_ACL_READ));
    CHECK(ACL(anon, "$SYS/#", MQX_ACL_READ));
    /* a broken file is refused and the loaded rules stay */
    fd = open(path, O_WRONLY | O_TRUNC);
    CHECK(write(fd, "topic read a/#/b\n", 17) == 17);
    close(fd);
    CHECK(acl_load(&db, path, err, sizeof err) == -1);
    CHECK(strstr(err, ":1: ") != NULL);
    CHECK(ACL(ann, "home/a", MQX_ACL_WRITE));
    acl_free(&db);
    unlink(path);
#undef ACL
}

/* ---- persistence: a golden snapshot, the same bytes on every byte
 * order (this runner also runs on big-endian MIPS in `make cross`) ---- */

static char store_dir[] = "/tmp/mqx-unit-storeXXXXXX";

static void
store_setup(void)
{
    broker_setup();
    g.cfg.persistence = 1;
    str_set(g.cfg.persistence_location, sizeof g.cfg.persistence_location,
            store_dir);
}

static void
store_state(void)
{
    uint32_t s = mk_sess("s1"), q, m, nd;
    int ex;
    struct mqx_connect ck;

    memset(&ck, 0, sizeof ck);
    ck.has_user = 1;
    ck.username.p = (const uint8_t *)"u";
    ck.username.len = 1;
    CHECK(handle_set_user(s, &ck, 0) == 0);
    g.sess[s].next_pid = 6;
    CHECK(sub_add(s, (const uint8_t *)"a/+", 3, 1, 0, 0, &nd, &ex) == 1);
    pub("a/b", "hello", 1, 0); /* queued for s1 */
    pub("r/1", "kept", 0, 1);  /* retained */
    m = msg_new((const uint8_t *)"a/c", 3, (const uint8_t *)"sent", 4, 1, 0);
    q = qe_new(m, 1, QE_PUBACK);
    g.qents[q].pid = 5;
    g.sess[s].f_head = g.sess[s].f_tail = q;
    g.sess[s].f_count = 1;
    q = qe_new(NIL, 2, QE_RECEIVED);
    g.qents[q].pid = 9;
    g.sess[s].r_head = q;
    g.sess[s].r_count = 1;
}

/* Golden bytes after the 16-byte header, written on x86-64. */
static const char store_golden[] =
    "01000000100000000001000003612f6268656c6c6fb84e9097010000000f0000"
    "000100010003722f316b657074ce6dff29010000000f0000000201000003612f"
    "6373656e74f9e9e516020000000400000001445a8f7103000000130000000000"
    "0600010000000000027331000175242d01a9040000000a00000000010003612f"
    "2b605c6dd3050000000a000000000000000001003bc4cf2c060000000c000000"
    "000000000200050101f51abadf07000000060000000000094de4ad21ff000000"
    "0400000009b4b7b955";

static void
test_store_golden(void)
{
    static char path[256], hex[4096];
    static uint8_t buf[2048], want[2048];
    size_t n, wn, i;
    FILE *f;
    uint32_t s;

    CHECK(mkdtemp(store_dir) != NULL);
    snprintf(path, sizeof path, "%s/mqttpx.db", store_dir);
    store_setup();
    store_state();
    CHECK(store_save() == 0);
    f = fopen(path, "rb");
    CHECK(f != NULL);
    if (!f) return;
    n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    for (i = MQX_STORE_HDR; i < n && 2 * (i - MQX_STORE_HDR) + 2 < sizeof hex;
         i++)
        snprintf(hex + 2 * (i - MQX_STORE_HDR), 3, "%02x", buf[i]);
    wn = unhex(store_golden, want);
    CHECK(n == wn + MQX_STORE_HDR &&
          memcmp(buf + MQX_STORE_HDR, want, wn) == 0);
    if (n != wn + MQX_STORE_HDR) printf("snapshot now: %s\n", hex);
    broker_teardown();
    /* the golden bytes load into an empty broker */
    store_setup();
    f = fopen(path, "wb");
    CHECK(f != NULL);
    if (!f) return;
    fwrite(buf, 1, MQX_STORE_HDR, f);
    fwrite(want, 1, wn, f);
    fclose(f);
    store_load();
    s = sess_find((const uint8_t *)"s1", 2);
    CHECK(s != NIL);
    if (s != NIL) {
        CHECK(!g.sess[s].clean && g.sess[s].next_pid == 6);
        CHECK(g.sess[s].user != NIL && g.sess[s].user_len == 1);
        CHECK(g.sess[s].q_count == 1 && g.sess[s].f_count == 1 &&
              g.sess[s].r_count == 1);
        CHECK(g.qents[g.sess[s].f_head].pid == 5 &&
              g.qents[g.sess[s].f_head].state == QE_PUBACK);
        CHECK(g.qents[g.sess[s].r_head].pid == 9);
        CHECK(g.n_subs == 1 && g.n_retained == 1);
        CHECK(tree_path((const uint8_t *)"a/+", 3, 0) != NIL);
    }
    broker_teardown();
    unlink(path);
    rmdir(store_dir);
}

static void
test_store_records(void)
{
    uint8_t b[64];
    size_t off = MQX_STORE_HDR, n;
    struct mqx_store_rec r;
    const char *err = NULL;
    uint16_t v;
    uint32_t saved;

    n = unhex("4d515853544f5245 0001 0000 00000000", b);
    CHECK(mqx_store_header(guard(b, n), n, &v, &saved, &err) == MQX_DONE &&
          v == 1);
    CHECK(mqx_store_header(guard(b, 10), 10, &v, &saved, &err) == MQX_MORE);
    b[9] = 2;
    CHECK(mqx_store_header(guard(b, n), n, &v, &saved, &err) == MQX_BAD);
    b[9] = 1;
    b[0] = 'X';
    CHECK(mqx_store_header(guard(b, n), n, &v, &saved, &err) == MQX_BAD);
    /* END record with count 0 and its CRC, after a header */
    n = unhex("4d515853544f5245 0001 0000 00000000 ff 00000004 00000000", b);
    {
        uint32_t c = mqx_crc32c(0, b + 16, 9);
        b[n++] = (uint8_t)(c >> 24);
        b[n++] = (uint8_t)(c >> 16);
        b[n++] = (uint8_t)(c >> 8);
        b[n++] = (uint8_t)c;
    }
    CHECK(mqx_store_next(guard(b, n), n, &off, &r, &err) == MQX_DONE &&
          r.type == MQX_SR_END && r.len == 4 && off == n);
    off = MQX_STORE_HDR;
    CHECK(mqx_store_next(guard(b, n - 1), n - 1, &off, &r, &err) == MQX_MORE);
    b[22] ^= 1; /* a body byte */
    off = MQX_STORE_HDR;
    CHECK(mqx_store_next(guard(b, n), n, &off, &r, &err) == MQX_BAD);
}

/* Crashers found by tests/fuzz_store.c (tests/corpus/store/crash-*):
 * ids that wrapped the map size, and a message id given twice. */
static void
test_store_crashers(void)
{
    static const char *bad[] = {
        /* message id 0xffffffff */
        "4d515853544f52450001000000000000010000000affffffff00000001617862adf9"
        "f7ff00000004000000013e6ee19a",
        /* message id 0xfffffffe */
        "4d515853544f52450001000000000000010000000afffffffe0000000161780aaed5"
        "3fff00000004000000013e6ee19a",
        /* session id 0xfffffffe */
        "4d515853544f524500010000000000000300000011fffffffe000100000000000000"
        "016300007e99a904ff00000004000000013e6ee19a",
        /* the same message id twice */
        "4d515853544f52450001000000000000010000000a000000000000000161787e8ff6"
        "63010000000a000000000000000161787e8ff663ff00000004000000022d3e126e",
    };
    static uint8_t b[256];
    size_t i, n;

    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct store_ld ld;
        const char *err;
        broker_setup();
        memset(&ld, 0, sizeof ld);
        n = unhex(bad[i], b);
        err = store_walk(&ld, b, n, 1);
        if (!err) { /* counted fine: the apply pass must refuse it */
            ld.mid = calloc(ld.n_mid + 1, sizeof(uint32_t));
            ld.sid = calloc(ld.n_sid + 1, sizeof(uint32_t));
            memset(ld.mid, 0xff, (ld.n_mid + 1) * sizeof(uint32_t));
            memset(ld.sid, 0xff, (ld.n_sid + 1) * sizeof(uint32_t));
            err = store_walk(&ld, b, n, 0);
            for (uint32_t k = 0; k < ld.n_mid; k++)
                msg_unref(ld.mid[k]);
            free(ld.mid);
            free(ld.sid);
        }
        CHECK(err != NULL);
        CHECK(g.p_msg.used == 0 && g.p_sess.used == 0);
        broker_teardown();
    }
}

/* A session whose expiry (persistent_client_expiration) passed while the
 * broker was down is dropped at load; one still valid is kept. */
static void
test_store_expiry(void)
{
    static char path[256];
    static uint8_t buf[4096];
    size_t n, off = MQX_STORE_HDR;
    uint32_t s1, s2;
    FILE *f;
    struct mqx_store_rec rec;
    const char *err;

    memcpy(store_dir + strlen(store_dir) - 6, "XXXXXX", 6); /* a new one */
    CHECK(mkdtemp(store_dir) != NULL);
    snprintf(path, sizeof path, "%s/mqttpx.db", store_dir);
    store_setup();
    s1 = mk_sess("gone");
    s2 = mk_sess("kept");
    g.sess[s1].expire_ms = g.now + 60000; /* offline, a minute left */
    g.sess[s2].expire_ms = g.now + 60000;
    CHECK(store_save() == 0);
    broker_teardown();
    f = fopen(path, "rb");
    CHECK(f != NULL);
    if (!f) return;
    n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    /* move the first session's expiry into the past, fix its CRC */
    while (mqx_store_next(buf, n, &off, &rec, &err) == MQX_DONE) {
        if (rec.type == MQX_SR_SESS && rec.body[14] == 'g') {
            uint8_t *p = (uint8_t *)(uintptr_t)rec.body;
            uint32_t c;
            p[8] = p[9] = p[10] = 0;
            p[11] = 1; /* 1970 */
            c = mqx_crc32c(0, p - 5, 5 + (size_t)rec.len);
            p[rec.len] = (uint8_t)(c >> 24);
            p[rec.len + 1] = (uint8_t)(c >> 16);
            p[rec.len + 2] = (uint8_t)(c >> 8);
            p[rec.len + 3] = (uint8_t)c;
        }
    }
    f = fopen(path, "wb");
    CHECK(f != NULL && fwrite(buf, 1, n, f) == n);
    if (f) fclose(f);
    store_setup();
    store_load();
    CHECK(sess_find((const uint8_t *)"gone", 4) == NIL);
    CHECK(sess_find((const uint8_t *)"kept", 4) != NIL);
    broker_teardown();
    unlink(path);
    rmdir(store_dir);
}

/* ---- TLS listener options and certificate identities ---- */

static void
test_tls_config(void)
{
    static struct cfg c;

    if (!MQX_TLS) { /* a TLS=0 build refuses every TLS option */
        CHECK(cfg_try("listener 8883\ncertfile /a.crt\n", &c) == -1);
        CHECK(strstr(c.err, "t.conf:2: certfile: this mqttpx was built "
                            "without TLS") == c.err);
        return;
    }

    CHECK(cfg_try("listener 8883\ncertfile /a.crt\nkeyfile /a.key\n"
                  "cafile /ca.crt\nrequire_certificate true\n"
                  "use_subject_as_username true\ntls_version tlsv1.2\n",
                  &c) == 0);
    CHECK(cfg_finish(&c) == 0 && c.lsn[0].tls && c.lsn[0].use_subject &&
          c.lsn[0].tls_min == 12 && c.max_tls_connections == 32);
    CHECK(cfg_try("listener 8883\ncertfile /a.crt\n", &c) == 0);
    CHECK(cfg_finish(&c) == -1);
    CHECK(strcmp(c.err,
                 "t.conf:2: listener 8883: certfile needs keyfile too") == 0);
    CHECK(cfg_try("listener 1883\ncafile /ca.crt\n", &c) == 0);
    CHECK(cfg_finish(&c) == -1 && strstr(c.err, "t.conf:2: ") == c.err);
    CHECK(cfg_try("listener 8883\ncertfile /a\nkeyfile /b\n"
                  "require_certificate true\n",
                  &c) == 0);
    CHECK(cfg_finish(&c) == -1 && strstr(c.err, "t.conf:4: ") == c.err &&
          strstr(c.err, "cafile or capath"));
    CHECK(cfg_try("listener 8883\ncertfile /a\nkeyfile /b\ncafile /c\n"
                  "use_identity_as_username true\n",
                  &c) == 0);
    CHECK(cfg_finish(&c) == -1 && strstr(c.err, "t.conf:5: ") == c.err);
    CHECK(cfg_try("listener 1883\nenable_proxy_protocol 2\ncertfile /a\n"
                  "keyfile /b\n",
                  &c) == 0);
    CHECK(cfg_finish(&c) == -1);
    CHECK(strcmp(c.err, "t.conf:3: certfile and keyfile cannot be used with "
                        "`enable_proxy_protocol 2`.") == 0);
    CHECK(cfg_try("listener 1883\ntls_version tlsv1.1\n", &c) == -1 &&
          strstr(c.err, "t.conf:2: tls_version"));
    CHECK(cfg_try("certfile /a\n", &c) == -1);
    CHECK(cfg_try("listener 8883\ncertfile /a\nkeyfile /b\n"
                  "max_tls_connections 0\n",
                  &c) == 0);
    CHECK(cfg_finish(&c) == -1 && strstr(c.err, "max_tls_connections"));
}

#if MQX_TLS
/* A certificate made with
 * openssl req -x509 -multivalue-rdn -utf8 -subj $'/C=GB/ST=Caf\xc3\xa9 Land
 *   /O=Example, Inc./OU=dev+UID=42/CN=#client 1 /emailAddress=a@b.c'
 * whose subject `openssl x509 -nameopt RFC2253` prints as
 * emailAddress=a@b.c,CN=\#client 1\ ,UID=42+OU=dev,O=Example\, Inc.,
 * ST=Caf\C3\A9 Land,C=GB. */
static const char tls_dn_pem[] =
    "-----BEGIN CERTIFICATE-----\n"
    "MIICYzCCAgmgAwIBAgIUfVMwI1yhX2ZViAeFPOOjo34qsP8wCgYIKoZIzj0EAwIw\n"
    "gYUxCzAJBgNVBAYTAkdCMRMwEQYDVQQIDApDYWbDqSBMYW5kMRYwFAYDVQQKDA1F\n"
    "eGFtcGxlLCBJbmMuMR4wCgYDVQQLDANkZXYwEAYKCZImiZPyLGQBAQwCNDIxEzAR\n"
    "BgNVBAMMCiNjbGllbnQgMSAxFDASBgkqhkiG9w0BCQEWBWFAYi5jMCAXDTI2MTEy\n"
    "ODExNDEyMloYDzIxMjYxMTA0MTE0MTIyWjCBhTELMAkGA1UEBhMCR0IxEzARBgNV\n"
    "BAgMCkNhZsOpIExhbmQxFjAUBgNVBAoMDUV4YW1wbGUsIEluYy4xHjAKBgNVBAsM\n"
    "A2RldjAQBgoJkiaJk/IsZAEBDAI0MjETMBEGA1UEAwwKI2NsaWVudCAxIDEUMBIG\n"
    "CSqGSIb3DQEJARYFYUBiLmMwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAASn/K7S\n"
    "DCmQbyLdZwuy+j1jhBJbG552UqnBJCRIrlbnuQXk8A1s6yd9EF+BWPDMH5HPoeXp\n"
    "GeIiryIbb+K8/pqYo1MwUTAdBgNVHQ4EFgQU1N0TZNSgjFi46wDWuYgXsJTI8+sw\n"
    "HwYDVR0jBBgwFoAU1N0TZNSgjFi46wDWuYgXsJTI8+swDwYDVR0TAQH/BAUwAwEB\n"
    "/zAKBggqhkjOPQQDAgNIADBFAiEA3nDN0NpQ0+Efu6xoIYExsNydDEc0fdcdGcMQ\n"
    "ho2dSrUCIBI/KjKWkPWO3Ux2tRlCCbDI31VAaUiwFb79AynRfr6A\n"
    "-----END CERTIFICATE-----\n";

static void
test_tls_identity(void)
{
    mbedtls_x509_crt crt;
    const mbedtls_x509_name *dn;
    char out[512];
    size_t n;

    mbedtls_x509_crt_init(&crt);
    CHECK(mbedtls_x509_crt_parse(&crt, (const unsigned char *)tls_dn_pem,
                                 sizeof tls_dn_pem) == 0);
    n = tls_dn_rfc2253(&crt.subject, out, sizeof out);
    CHECK(n == strlen(out));
    CHECK(strcmp(out, "emailAddress=a@b.c,CN=\\#client 1\\ ,UID=42+OU=dev,"
                      "O=Example\\, Inc.,ST=Caf\\C3\\A9 Land,C=GB") == 0);
    CHECK(tls_dn_rfc2253(&crt.subject, out, 40) == 0); /* does not fit */
    for (dn = &crt.subject; dn && MBEDTLS_OID_CMP(MBEDTLS_OID_AT_CN, &dn->oid);
         dn = dn->next)
        ;
    CHECK(dn && dn->val.len == 10 && memcmp(dn->val.p, "#client 1 ", 10) == 0);
    mbedtls_x509_crt_free(&crt);
    /* suite names: mbedTLS's and IANA's, per version */
    CHECK(tls_suite_id("TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256", 39, 0) ==
          MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256);
    CHECK(tls_suite_id("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", 39, 0) ==
          MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256);
    CHECK(tls_suite_id("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", 39, 1) == 0);
    CHECK(tls_suite_id("ECDHE-ECDSA-AES128-GCM-SHA256", 29, 0) == 0);
    CHECK(tls_suite_id("TLS_AES_128_GCM_SHA256", 22, 0) == 0);
#if TLS_HAVE_13
    CHECK(tls_suite_id("TLS_AES_128_GCM_SHA256", 22, 1) ==
          MBEDTLS_TLS1_3_AES_128_GCM_SHA256);
    CHECK(tls_suite_id("TLS1-3-AES-128-GCM-SHA256", 25, 1) ==
          MBEDTLS_TLS1_3_AES_128_GCM_SHA256);
#endif
}
#endif

/* MQTT 5 state survives a snapshot: the session's expiry interval, a
 * shared subscription with options and an identifier, a retained message
 * with properties and an expiry time. */
static void
test_store_v5(void)
{
    static char path[256];
    static const uint8_t props[] = {0x03, 0x00, 0x04, 't', 'e',  'x',  't',
                                    0x26, 0x00, 0x01, 'k', 0x00, 0x01, 'v'};
    uint32_t s, m, nd, si;
    uint32_t expire = (uint32_t)time(NULL) + 3600;
    int ex;

    memcpy(store_dir + strlen(store_dir) - 6, "XXXXXX", 6); /* a new one */
    CHECK(mkdtemp(store_dir) != NULL);
    snprintf(path, sizeof path, "%s/mqttpx.db", store_dir);
    store_setup();
    s = mk_sess("v5");
    g.sess[s].proto = 5;
    g.sess[s].expiry = 120;
    CHECK(sub_add(s, (const uint8_t *)"$share/g/a/#", 12, 1, SO_RAP, 7, &nd,
                  &ex) == 1);
    m = msg_new5((const uint8_t *)"r/5", 3, props, sizeof props,
                 (const uint8_t *)"pay", 3, 1, 1, expire);
    CHECK(m != NIL);
    (void)route(m, NIL);
    CHECK(g.n_retained == 1);
    CHECK(store_save() == 0);
    broker_teardown();
    store_setup();
    store_load();
    s = sess_find((const uint8_t *)"v5", 2);
    CHECK(s != NIL);
    if (s != NIL) {
        CHECK(g.sess[s].proto == 5 && g.sess[s].expiry == 120 &&
              !g.sess[s].clean);
        CHECK(g.sess[s].expire_ms > g.now); /* offline: counts from start */
        si = g.sess[s].subs;
        CHECK(si != NIL);
        if (si != NIL) {
            CHECK(g.subs[si].share != NIL && g.subs[si].share_len == 1 &&
                  *st_ptr(g.subs[si].share) == 'g');
            CHECK(g.subs[si].sub_id == 7 && g.subs[si].opts == SO_RAP &&
                  g.subs[si].qos == 1);
        }
    }
    nd = tree_path((const uint8_t *)"r/5", 3, 0);
    CHECK(nd != NIL);
    if (nd != NIL && g.nodes[nd].retained != NIL) {
        const struct msg *x = &g.msgs[g.nodes[nd].retained];
        CHECK(x->expire == expire && x->props_len == sizeof props &&
              memcmp(msg_props(x), props, sizeof props) == 0 &&
              x->payload_len == 3 && memcmp(msg_payload(x), "pay", 3) == 0);
    }
    broker_teardown();
    unlink(path);
    rmdir(store_dir);
}

/* Property blocks: every type, where each may stand, twice, bad values. */
static void
test_props(void)
{
    uint8_t b[128], fw[128];
    struct mqx_props p;
    size_t n, used;

    /* PUBLISH: format 1, expiry 10, content type, response topic,
     * correlation, two user properties, alias 3, subscription id 300 */
    n = unhex("0101 020000000a 030002 6a73 080003 722f31 090002 0102 "
              "260001 61 0001 62 260001 63 0001 64 230003 0bac02",
              b);
    CHECK(mqx_props_decode(guard(b, n), n, MQX_PW_PUBLISH, &p) == MQX_DONE);
    CHECK(p.payload_format == 1 && p.message_expiry == 10 &&
          p.content_type.len == 2 && p.response_topic.len == 3 &&
          p.correlation.len == 2 && p.n_user == 2 && p.alias == 3 &&
          p.sub_id == 300);
    /* what travels on: all but expiry, alias and subscription id */
    CHECK(p.fwd_len == 2 + 5 + 6 + 5 + 7 + 7);
    CHECK(mqx_props_copy_fwd(&p, fw) == p.fwd_len);
    CHECK(fw[0] == 0x01 && fw[2] == 0x03 && fw[p.fwd_len - 7] == 0x26);
    /* a CONNECT may not hold a PUBLISH property: malformed */
    CHECK(mqx_props_decode(guard(b, 2), 2, MQX_PW_CONNECT, &p) == MQX_BAD);
    /* twice, or out of range: protocol errors */
    n = unhex("0101 0100", b);
    CHECK(mqx_props_decode(guard(b, n), n, MQX_PW_PUBLISH, &p) == MQX_PROTO);
    n = unhex("0102", b);
    CHECK(mqx_props_decode(guard(b, n), n, MQX_PW_PUBLISH, &p) == MQX_PROTO);
    n = unhex("210000", b);
    CHECK(mqx_props_decode(guard(b, n), n, MQX_PW_CONNECT, &p) == MQX_PROTO);
    n = unhex("2700000000", b);
    CHECK(mqx_props_decode(guard(b, n), n, MQX_PW_CONNECT, &p) == MQX_PROTO);
    n = unhex("0b00", b);
    CHECK(mqx_props_decode(guard(b, n), n, MQX_PW_SUBSCRIBE, &p) == MQX_PROTO);
    n = unhex("080003 612f2b", b); /* response topic with a wildcard */
    CHECK(mqx_props_decode(guard(b, n), n, MQX_PW_PUBLISH, &p) == MQX_PROTO);
    /* user property twice is fine; subscription id twice only in PUBLISH */
    n = unhex("0b01 0b02", b);
    CHECK(mqx_props_decode(guard(b, n), n, MQX_PW_PUBLISH, &p) == MQX_DONE);
    CHECK(mqx_props_decode(guard(b, n), n, MQX_PW_SUBSCRIBE, &p) == MQX_PROTO);
    /* truncated values, an unknown id, a bad UTF-8 string: malformed */
    n = unhex("0200", b);
    CHECK(mqx_props_decode(guard(b, n), n, MQX_PW_PUBLISH, &p) == MQX_BAD);
    n = unhex("0500", b);
    CHECK(mqx_props_decode(guard(b, n), n, MQX_PW_PUBLISH, &p) == MQX_BAD);
    n = unhex("030001 ff", b);
    CHECK(mqx_props_decode(guard(b, n), n, MQX_PW_PUBLISH, &p) == MQX_BAD);
    n = unhex("0bffffffff7f", b); /* a varint of five bytes */
    CHECK(mqx_props_decode(guard(b, n), n, MQX_PW_PUBLISH, &p) == MQX_BAD);
    /* length in front: DISCONNECT with session expiry and reason */
    n = unhex("0a 1100000078 1f0002 6f6b", b);
    CHECK(mqx_props_read(guard(b, n), n, MQX_PW_DISCONNECT, &p, &used) ==
              MQX_DONE &&
          used == n && p.session_expiry == 120 && p.reason.len == 2);
    CHECK(mqx_props_read(guard(b, n - 1), n - 1, MQX_PW_DISCONNECT, &p,
                         &used) == MQX_BAD);
    /* encoders: a 5.0 ack with reason string, the short form without */
    CHECK(mqx_mqtt_enc_ack5(b, MQX_PUBACK, 7, 0, NULL) == 4);
    n = mqx_mqtt_enc_ack5(b, MQX_PUBACK, 7, 0x87, "no");
    CHECK(n == 11 && b[1] == 9 && b[4] == 0x87 && b[5] == 5 && b[6] == 0x1f);
    n = mqx_mqtt_enc_publish5(b, (const uint8_t *)"t", 1, (const uint8_t *)"x",
                              1, 1, 0, 0, 2, (const uint8_t *)"\x23\x00\x01", 3,
                              fw, 2);
    CHECK(n == mqx_mqtt_publish5_size(1, 1, 1, 5) && b[0] == 0x32 &&
          b[7] == 5 && b[8] == 0x23);
}

int
main(void)
{
    test_frame();
    test_connect();
    test_publish();
    test_subscribe();
    test_ack();
    test_topics();
    test_config();
    test_store();
    test_pool();
    test_route();
    test_tree_churn();
    test_config_example();
    test_b64();
    test_password_lines();
    test_acl_lines();
    test_acl_rules();
    test_store_records();
    test_store_golden();
    test_store_crashers();
    test_store_expiry();
    test_store_v5();
    test_props();
    test_tls_config();
#if MQX_TLS
    test_tls_identity();
#endif
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
