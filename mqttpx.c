/* ==== [0] mqttpx: an MQTT broker for routers behind HAProxy ==== */
/*
 * One compilation unit: listeners, the PROXY header, MQTT 3.1/3.1.1 routing,
 * sessions, retained messages and $SYS, all in one poll() loop with no
 * threads. Every pool is sized from the config at start-up; after
 * arena_seal() the broker's paths do not call malloc (tests/bb/test_memory.py
 * proves it with an LD_PRELOAD counter).
 *
 * Supported: MQTT 3.1 (MQIsdp, level 3), 3.1.1 (level 4) and 5.0 (level 5):
 * QoS 0/1/2 both ways, retained messages, wills, persistent sessions,
 * keepalive, $SYS; 5.0 properties, reason codes, expiry, aliases, shared
 * subscriptions. Native TLS through mbedTLS [11].
 *
 * Map (grep -n '^/\* ====' mqttpx.c):
 *   [1] platform, ceilings, data model    [9]  auth and ACL
 *   [2] helpers                           [10] sessions, queues, routing
 *   [3] logging                           [11] crypto glue (mbedTLS)
 *   [4] memory: arena, pools, store       [13] connections
 *   [5] config                            [14] protocol handlers
 *   [6] PROXY v1/v2 parser (pure)         [15] poll loop, listeners, signals
 *   [7] MQTT codec (pure)                 [16] main
 *   [8] messages, topics, tree, retained
 *
 * Build: cc -std=c11 -O2 mqttpx.c -o mqttpx -lmbedtls -lmbedx509 -lmbedcrypto
 *        (make TLS=0: -DMQX_TLS=0 ... -lmbedcrypto)
 */

/* ==== [1] Platform, ceilings, the data model ==== */
/* Includes, compile-time ceilings and every stateful struct, ending with the
 * one global `g`. Sections below own the fields named after them. */

#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE

#include "mqttpx.h"

#include <arpa/inet.h>
#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#ifndef MQX_TLS
#define MQX_TLS 1 /* 0: build without TLS listeners (mbedcrypto only) */
#endif

#ifndef MQX_MAX_LISTENERS
#define MQX_MAX_LISTENERS 16 /* listener lines in one config */
#endif
#if MQX_MAX_LISTENERS < 1 || MQX_MAX_LISTENERS > 64
#error "MQX_MAX_LISTENERS must be 1..64"
#endif

#ifndef MQX_MAX_LSOCKS
#define MQX_MAX_LSOCKS 32 /* listening sockets (a listener may bind two) */
#endif
#if MQX_MAX_LSOCKS < MQX_MAX_LISTENERS || MQX_MAX_LSOCKS > 128
#error "MQX_MAX_LSOCKS must be MQX_MAX_LISTENERS..128"
#endif

#ifndef MQX_MAX_TOPIC_LEVELS
#define MQX_MAX_TOPIC_LEVELS 255 /* bounds tree depth and match recursion */
#endif
#if MQX_MAX_TOPIC_LEVELS < 1 || MQX_MAX_TOPIC_LEVELS > 255
#error "MQX_MAX_TOPIC_LEVELS must be 1..255"
#endif

#ifndef MQX_MAX_CONNECTIONS
#define MQX_MAX_CONNECTIONS 65535 /* ceiling of the connection pool */
#endif

#ifndef MQX_MAX_TRUSTED
#define MQX_MAX_TRUSTED 16 /* proxy_protocol_trusted_sources per listener */
#endif
#if MQX_MAX_TRUSTED < 1 || MQX_MAX_TRUSTED > 255
#error "MQX_MAX_TRUSTED must be 1..255"
#endif

#ifndef MQX_CFG_DEPTH
#define MQX_CFG_DEPTH 4 /* include_dir nesting */
#endif

#define MQX_SCRATCH      65536 /* shared read buffer: one read per wake-up */
#define MQX_TX_BATCH     16384 /* stop filling a client's output past this */
#define MQX_STORE_MIN    64    /* smallest store block (bytes) */
#define MQX_ADDR_LEN     64    /* "[v6addr]:port" or a unix path, printable */
#define MQX_ID_MAX       65535 /* client id bytes (UTF-8 string limit) */
#define MQX_PATH_MAX     256
#define MQX_CIPHERS_LEN  1024 /* a ciphers or ciphers_tls1.3 line */
#define MQX_SCAN_MS      250  /* deadline scan period */
#define MQX_FULL_POLL_MS 50   /* all slots polled this often, +1 ms per 200 */
#define MQX_HOT_MS       250  /* a quiet connection leaves the hot set */
#define MQX_LOG_LINE     1024
#define MQX_LOG_EVERY_MS 10000 /* rate limit window for repeated lines */

#define NIL         UINT32_MAX
#define MQX_STR_(x) #x
#define MQX_STR(x)  MQX_STR_(x)

/* Log types: Mosquitto's log_type names. */
enum {
    LOG_T_ERR = 1,
    LOG_T_WARN = 2,
    LOG_T_NOTICE = 4,
    LOG_T_INFO = 8,
    LOG_T_DEBUG = 16,
    LOG_T_SUB = 32,
    LOG_T_UNSUB = 64,
    LOG_T_ALL = 127,
};

enum { LOG_D_STDERR = 1, LOG_D_STDOUT = 2, LOG_D_SYSLOG = 4, LOG_D_FILE = 8 };

/* Who may connect: global, or per listener with per_listener_settings. */
struct authcfg {
    int64_t allow_anonymous; /* -1 until cfg_load() settles it */
    char password_file[MQX_PATH_MAX];
    char acl_file[MQX_PATH_MAX];
};

struct listener {
    struct authcfg auth;     /* with per_listener_settings */
    char bind[MQX_PATH_MAX]; /* address, or socket path when port is 0 */
    uint16_t port;
    uint8_t is_unix;
    int64_t max_connections; /* -1: only the global pool limits it */
    uint32_t n_conns;        /* open connections on this listener */
    const char *file;        /* where it was declared, for errors */
    int line;
    /* PROXY protocol (R1-R8), all per listener */
    uint8_t proxy; /* enable_proxy_protocol: 0, 1 or 2 */
    uint8_t proxy_require_tls;
    uint8_t require_certificate;
    uint8_t use_identity; /* use_identity_as_username */
    uint8_t proxy_local_close;
    uint8_t n_trusted;
    int64_t proxy_timeout;                                         /* seconds */
    int line_tls, line_cert, line_ident, line_timeout, line_local; /* R5 */
    struct mqx_cidr trusted[MQX_MAX_TRUSTED];
    /* native TLS [11]: a listener with certfile and keyfile */
    uint8_t tls;         /* certfile and keyfile given */
    uint8_t use_subject; /* use_subject_as_username */
    uint8_t tls_min;     /* tls_version: 0 (1.2 and 1.3), 12 or 13 */
    char certfile[MQX_PATH_MAX], keyfile[MQX_PATH_MAX], cafile[MQX_PATH_MAX];
    char capath[MQX_PATH_MAX], crlfile[MQX_PATH_MAX];
    char ciphers[MQX_CIPHERS_LEN], ciphers13[MQX_CIPHERS_LEN];
    int line_certfile, line_keyfile, line_cafile, line_capath, line_crlfile;
    int line_ciphers, line_ciphers13, line_tlsver, line_subject;
};

/* Every option's value. Numbers are int64_t so one table parses them. */
struct cfg {
    struct listener lsn[MQX_MAX_LISTENERS];
    uint32_t n_lsn;
    int64_t max_connections;
    struct authcfg auth;
    int64_t per_listener_settings;
    int64_t max_packet_size;
    int64_t message_size_limit;
    int64_t max_inflight_messages;
    int64_t max_queued_messages;
    int64_t max_queued_bytes;
    int64_t queue_qos0_messages;
    int64_t retain_available;
    int64_t max_keepalive;
    int64_t persistent_client_expiration; /* seconds, 0: never */
    int64_t sys_interval;
    int64_t connection_messages;
    int64_t log_timestamp;
    int64_t log_facility;
    int64_t memory_limit;
    int64_t connect_timeout;
    int64_t max_sessions;
    int64_t max_subscriptions;
    int64_t max_topic_nodes;
    int64_t max_topic_levels;
    int64_t max_retained_messages;
    int64_t max_retained_bytes;
    int64_t message_store_bytes;
    int64_t max_queued_total;
    int64_t max_tls_connections; /* -1 until cfg_finish() settles it */
    int64_t max_topic_alias;
    int64_t shared_subscriptions;
    int64_t persistence;
    int64_t autosave_interval;
    int64_t autosave_on_changes;
    int64_t persistence_journal;
    char persistence_location[MQX_PATH_MAX];
    char persistence_file[MQX_PATH_MAX];
    unsigned log_dest;
    unsigned log_type;
    int log_type_set; /* first log_type line replaces the default */
    int log_dest_set;
    char log_file[MQX_PATH_MAX];
    char pid_file[MQX_PATH_MAX];
    char user[64];
    char err[4096]; /* the error of a failed parse */
};

/* A buffered writer of store records [12]: snapshot and journal. */
struct sw {
    int fd, err; /* err: errno of the first failure */
    uint8_t *buf;
    size_t n, cap;
    uint32_t crc, count;
    uint64_t bytes;
};

/* Where the configuration comes from, kept for SIGHUP. */
struct cfg_src {
    const char *path;     /* -c FILE, or NULL */
    const char *ports[8]; /* -p PORT */
    int n_ports;
    int verbose; /* -v: log_type all, over the file's log_type */
};

/* A pool of fixed slots: index free list plus a generation per slot, so a
 * handle {idx, gen} kept across iterations goes stale when the slot is
 * freed. */
struct pool {
    uint32_t *next; /* free-list link of each slot */
    uint32_t *gen;  /* bumped when a slot is returned */
    uint32_t head;  /* first free slot, NIL when full */
    uint32_t cap, used, peak;
    uint64_t full; /* takes refused */
    const char *name;
    size_t slot; /* bytes of one slot, for the budget line */
    void *base;  /* the slot array, for debug fills */
};

/* A buddy allocator over one region: every variable-sized byte (payloads,
 * client ids, partial packets, output) lives here. */
#define STORE_ORDERS 32
struct store {
    uint8_t *base;
    size_t size;                 /* whole region, multiple of the top block */
    uint8_t *tag;                /* per 64-byte unit: order, 0x80 = free */
    uint32_t free[STORE_ORDERS]; /* free list heads (unit index) */
    unsigned top;                /* order of the largest block */
    size_t used, peak;
    uint64_t fails;
};

/* A message: topic, MQTT 5 properties and payload, stored once, shared
 * by every queue. */
struct msg {
    uint32_t data; /* store unit: topic, properties, payload bytes */
    uint32_t payload_len;
    uint32_t props_len; /* properties that travel with it (5.0), encoded */
    uint32_t expire;    /* Unix second it expires at (5.0); 0: never */
    uint32_t refs;      /* queue entries + retained slot + will owner */
    uint16_t topic_len;
    uint8_t qos;    /* as published */
    uint8_t retain; /* as published */
};

/* One delivery: an entry in a session's queue or inflight list. */
enum {
    QE_QUEUED = 0,   /* waiting for the window */
    QE_PUBACK = 1,   /* sent QoS 1, waiting for PUBACK */
    QE_PUBREC = 2,   /* sent QoS 2, waiting for PUBREC */
    QE_PUBCOMP = 3,  /* PUBREL sent, waiting for PUBCOMP */
    QE_RECEIVED = 4, /* incoming QoS 2 id, waiting for PUBREL */
};
enum {
    QF_RETAIN = 1, /* deliver with the retain flag */
    QF_SHARED = 2, /* came through a shared subscription */
};
struct qent {
    uint32_t next;
    uint32_t msg; /* NIL once the payload is no longer needed */
    uint16_t pid;
    uint8_t qos;
    uint8_t state;
    uint8_t retain; /* QF_* bits */
};

/* Subscription options of 5.0 [MQTT-3.8.3.1], as sub.opts keeps them */
enum {
    SO_NO_LOCAL = 1,
    SO_RAP = 2,      /* retain as published */
    SO_RH_NEW = 4,   /* retain handling 1: retained only if new */
    SO_RH_NEVER = 8, /* retain handling 2: never */
};
struct sub {
    uint32_t node; /* tree node of the filter */
    uint32_t sess;
    uint32_t node_next, node_prev; /* subscribers of one node */
    uint32_t sess_next;            /* subscriptions of one session */
    uint32_t sub_id;               /* 5.0 subscription identifier, 0: none */
    uint32_t share; /* store unit of the $share group name, NIL: none */
    uint32_t last;  /* shared: g.share_seq of its last delivery */
    uint16_t share_len;
    uint8_t qos;
    uint8_t opts; /* SO_* */
};

/* A topic tree node: one level of a filter or a retained topic. */
struct node {
    uint32_t parent, child, sibling, prev_sibling;
    uint32_t subs;     /* first struct sub */
    uint32_t retained; /* msg, or NIL */
    uint32_t name;     /* store unit of the level bytes, NIL when empty */
    uint16_t name_len;
    uint8_t depth;
};

struct sess {
    uint32_t id; /* store unit of the client id */
    uint16_t id_len;
    uint8_t clean;
    uint8_t proto;
    uint32_t conn; /* connection, or NIL when offline */
    uint32_t hash_next;
    uint32_t subs;                    /* first struct sub of this session */
    uint32_t q_head, q_tail, q_count; /* queued, not yet sent */
    uint64_t q_bytes;
    uint32_t f_head, f_tail, f_count; /* inflight out, in send order */
    uint32_t r_head, r_count;         /* QoS 2 ids received, PUBREL due */
    uint16_t next_pid;
    uint32_t stamp; /* routing pass that last matched this session */
    uint8_t match_qos;
    uint8_t match_rap; /* a matching subscription has retain as published */
    uint32_t expiry;   /* 5.0 session expiry interval, seconds */
    uint32_t will;     /* 5.0 delayed will, NIL: none */
    int64_t will_ms;   /* when to publish it */
    int64_t expire_ms; /* offline persistent session: drop after this */
    uint64_t dropped;  /* messages dropped for this session */
    uint32_t user;     /* store unit of the user name, NIL: anonymous */
    uint16_t user_len;
    uint8_t lsn; /* listener of its last connection: the auth domain */
};

/* PROXY: waiting for the header; TLS: handshaking; NEW: waiting for
 * CONNECT; ONLINE: CONNECTed; CLOSING: to be reaped */
enum {
    CONN_FREE = 0,
    CONN_PROXY,
    CONN_TLS,
    CONN_NEW,
    CONN_ONLINE,
    CONN_CLOSING
};
/* What the PROXY header said, kept per connection (R45) */
enum {
    PP_VIA = 1,   /* a header was accepted: addr is the proxied client */
    PP_LOCAL = 2, /* LOCAL or UNKNOWN: addr is the real peer (R31, R24) */
    PP_DENY = 4,  /* LOCAL whose TLS facts fail the listener: CONNACK 5 */
    PP_NO_CN = 8, /* identity required, no usable CN: CONNACK 4 (R43) */
    PP_MQTT = 16, /* an MQTT byte followed: the summary line is logged */
    PP_TLS = 32,  /* native TLS: the first byte was a handshake record */
};
enum {
    CF_DIRTY = 1,       /* in g.dirty: output to fill or flush */
    CF_THROTTLED = 2,   /* not reading: the store is nearly full */
    CF_WILL = 4,        /* publish the will when reaped */
    CF_POLLOUT = 8,     /* a write was short: wait for POLLOUT */
    CF_QUIET = 16,      /* no "closed its connection" line */
    CF_FLUSHCLOSE = 32, /* write what is queued, then close */
    CF_TLSMORE = 64     /* mbedTLS holds bytes not yet read: read again */
};

struct conn {
    int fd;
    uint8_t state;
    uint8_t flags;
    uint8_t proto; /* 3 or 4 once CONNECTed */
    uint8_t lsn;   /* listener index */
    uint16_t keepalive;
    uint32_t sess;      /* NIL until CONNECT */
    uint32_t will;      /* msg, NIL without will */
    uint32_t resend;    /* next inflight entry to resend after resume */
    uint32_t active_ms; /* low 32 bits of g.now at its last activity */
    uint32_t hot_pos;   /* index in g.hot, NIL when not hot */
    uint32_t tls;       /* TLS session slot [11], NIL: plain TCP */
    int64_t deadline_ms;
    uint8_t *rx; /* partial packet (store block), NULL when none */
    uint32_t rx_len, rx_cap;
    uint8_t *tx; /* pending output (store block), NULL when none */
    uint32_t tx_len, tx_off, tx_cap;
    char addr[MQX_ADDR_LEN]; /* client address, as logs show it */
    uint8_t pp;              /* PP_* bits */
    uint8_t *pp_info;        /* store block: "via\0summary\0CN" (PROXY), or
                                "\0\0identity" (TLS certificate user name) */
    uint16_t pp_cn_len;      /* CN bytes at the end of pp_info */
    /* MQTT 5 */
    uint8_t problem;        /* Request Problem Information: reason strings */
    uint16_t recv_max;      /* the client's Receive Maximum, 0: none */
    uint16_t alias_out_max; /* aliases we may give it (its maximum, ours) */
    uint16_t n_alias_out;
    uint16_t alias_in_max; /* our Topic Alias Maximum told in its CONNACK */
    uint16_t recv_max_in;  /* our Receive Maximum told in its CONNACK */
    uint16_t q2_in;        /* QoS 2 PUBLISHes of this connection, no PUBREL */
    uint8_t keepalive_set; /* 5.0: Server Keep Alive replaced the client's */
    uint32_t max_out;      /* the client's Maximum Packet Size, 0: none */
    uint32_t will_delay;   /* seconds */
    uint32_t *alias_in;    /* store block: topic block unit per alias, NIL */
    uint32_t *alias_out;   /* store block: topic block unit per alias given */
};

struct tls_slot; /* one mbedTLS session, defined in [11] */

struct lsock {
    int fd;
    uint8_t lsn;
};

struct broker {
    struct cfg cfg;
    struct cfg_src src;
    /* [4] memory */
    uint8_t *arena;
    size_t arena_size, arena_off;
    struct store st;
    struct pool p_conn, p_sess, p_sub, p_node, p_msg, p_qent, p_tls;
    struct conn *conns;
    struct sess *sess;
    struct sub *subs;
    struct node *nodes;
    struct msg *msgs;
    struct qent *qents;
    struct tls_slot *tls; /* TLS sessions, max_tls_connections */
    uint32_t *node_ht;    /* (parent, name) -> node, open addressing */
    uint32_t *sess_ht;    /* client id -> session, chained */
    uint32_t *match;      /* sessions matched by one routing pass */
    uint32_t *spick;      /* shared subscriptions picked by one pass */
    uint32_t *dirty;      /* connections with output to fill or flush */
    uint32_t *hot;        /* connections active lately: polled every time */
    struct pollfd *hpfd;  /* the compact pollfd array of a hot poll */
    uint8_t *scratch;     /* the shared read buffer */
    struct pollfd *pfd;   /* listeners first, then one per connection slot */
    uint32_t node_ht_mask, sess_ht_mask;
    uint32_t n_match, stamp, n_dirty, n_hot, n_spick;
    uint32_t route_from; /* publishing session of a routing pass (No Local) */
    uint32_t share_seq;  /* spreads shared subscriptions' deliveries */
    /* [8] retained, [9] subscriptions */
    uint32_t n_retained, n_subs;
    uint64_t retained_bytes;
    /* [13] connections */
    size_t rx_bytes; /* store bytes held by partial packets */
    struct lsock ls[MQX_MAX_LSOCKS];
    uint32_t n_pfd, n_ls;
    uint32_t conn_hwm; /* slots below this may be in use */
    uint32_t n_online, peak_online;
    int throttled; /* some connections are not read: the store is full */
    uint64_t id_counter;
    /* [3] logging, [15] loop */
    int log_fd;    /* log_dest file, -1 */
    int syslog_fd; /* /dev/log datagram socket, -1 */
    int wake[2];   /* self-pipe: signals wake poll() */
    volatile sig_atomic_t sig_quit, sig_hup, sig_save;
    int64_t now, start_ms, next_sys_ms, next_scan_ms, next_full_ms;
    int64_t next_prune_ms;
    int spare_fd; /* given up to accept() and close when out of fds */
    /* $SYS counters */
    uint64_t msgs_rx, msgs_tx, bytes_rx, bytes_tx, pub_dropped;
    uint64_t conns_refused, conns_total;
    /* R57 */
    uint64_t pp_accepted, pp_rejected, pp_timeout, pp_local, pp_untrusted;
    /* [11] TLS */
    uint64_t tls_failed, tls_refused;
    int tls_more; /* some connection has CF_TLSMORE */
    /* [12] persistence */
    uint8_t *pmark; /* one bit per message: written in this snapshot */
    uint8_t *jmark; /* one bit per message: in the journal's epoch */
    uint8_t *jbuf;  /* journal buffer */
    struct sw jw;   /* the journal writer (fd -1: no journal) */
    int jfd;        /* journal file, -1 unless persistence_journal */
    int journal;    /* 1: changes go to the journal */
    uint32_t epoch; /* of the last snapshot: the journal's must match */
    uint64_t jr_records, jr_syncs;
    uint64_t changes; /* since the last snapshot */
    int64_t next_save_ms;
    uint64_t store_saves, store_fails, store_bytes;
};

static struct broker g;

/* ==== [2] Helpers: byte order, read cursor, clock ==== */
/* Pure: wire fields through a bounds-checked cursor, read with shifts (big
 * endian MIPS faults on unaligned loads). */

struct rd {
    const uint8_t *p, *end;
    int bad; /* sticky: a read ran past end */
};

static size_t
rd_left(const struct rd *r)
{
    return (size_t)(r->end - r->p);
}

static uint8_t
rd_u8(struct rd *r)
{
    if (r->bad || r->p >= r->end) {
        r->bad = 1;
        return 0;
    }
    return *r->p++;
}

static uint16_t
rd_u16(struct rd *r)
{
    uint16_t v;

    if (r->bad || rd_left(r) < 2) {
        r->bad = 1;
        return 0;
    }
    v = (uint16_t)((unsigned)r->p[0] << 8 | r->p[1]);
    r->p += 2;
    return v;
}

static uint32_t
rd_u32(struct rd *r)
{
    uint32_t hi = rd_u16(r);

    return hi << 16 | rd_u16(r);
}

/* A two-byte length then that many bytes [MQTT-1.5.3]. */
static struct mqx_str
rd_str(struct rd *r)
{
    struct mqx_str s = {NULL, 0};
    uint16_t n = rd_u16(r);

    if (r->bad || rd_left(r) < n) {
        r->bad = 1;
        return s;
    }
    s.p = r->p;
    s.len = n;
    r->p += n;
    return s;
}

static void
wr_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

/* An MQTT 5 string property: identifier, length, bytes; returns 3 + n. */
static size_t
wr_prop_str(uint8_t *p, uint8_t id, const void *s, size_t n)
{
    p[0] = id;
    wr_u16(p + 1, (uint16_t)n);
    if (n) memcpy(p + 3, s, n);
    return 3 + n;
}

static int64_t
now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Copies a C string, cut to fit cap (cap > 0). */
static void
str_set(char *dst, size_t cap, const char *src)
{
    size_t n = strlen(src);

    if (n >= cap) n = cap - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static int
str_eq(struct mqx_str s, const char *lit)
{
    size_t n = strlen(lit);

    return s.len == n && (n == 0 || memcmp(s.p, lit, n) == 0);
}

/* ==== [3] Logging ==== */
/* One line per event in Mosquitto's words, formatted into a stack buffer and
 * written with write(2): no stdio buffers, no allocation. Uses g.cfg. */

static const char *
log_level_name(unsigned type)
{
    switch (type) {
    case LOG_T_ERR:
        return "Error: ";
    case LOG_T_WARN:
        return "Warning: ";
    default:
        return "";
    }
}

static int
log_syslog_pri(unsigned type)
{
    switch (type) {
    case LOG_T_ERR:
        return 3;
    case LOG_T_WARN:
        return 4;
    case LOG_T_NOTICE:
        return 5;
    case LOG_T_DEBUG:
        return 7;
    default:
        return 6;
    }
}

static void
log_write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return;
        p += w;
        n -= (size_t)w;
    }
}

/* Sends one record to the syslog socket: "<PRI>Mmm dd hh:mm:ss mqttpx[pid]:".
 * Our own sender, because glibc's syslog() allocates. */
static void
log_syslog(unsigned type, const char *msg, size_t n)
{
    char rec[MQX_LOG_LINE + 64];
    char ts[32];
    struct tm tm;
    time_t t = time(NULL);
    int k;

    localtime_r(&t, &tm);
    strftime(ts, sizeof ts, "%b %e %H:%M:%S", &tm);
    k = snprintf(rec, sizeof rec, "<%d>%s mqttpx[%ld]: %.*s",
                 (g.cfg.log_facility < 0 ? 3 * 8 /* daemon */
                                         : (16 + (int)g.cfg.log_facility) * 8) +
                     log_syslog_pri(type),
                 ts, (long)getpid(), (int)n, msg);
    if (k < 0) return;
    if ((size_t)k >= sizeof rec) k = (int)sizeof rec - 1;
    (void)send(g.syslog_fd, rec, (size_t)k, MSG_NOSIGNAL | MSG_DONTWAIT);
}

static void log_at(unsigned type, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
log_at(unsigned type, const char *fmt, ...)
{
    char line[MQX_LOG_LINE];
    size_t off = 0, body;
    va_list ap;
    int k;
    unsigned dest = g.cfg.log_dest;

    if (!(g.cfg.log_type & type) && type != LOG_T_ERR) return;
    if (g.cfg.log_timestamp) {
        k = snprintf(line, sizeof line, "%lld: ", (long long)time(NULL));
        if (k > 0) off = (size_t)k;
    }
    body = off;
    k = snprintf(line + off, sizeof line - off, "%s", log_level_name(type));
    if (k > 0) off += (size_t)k;
    va_start(ap, fmt);
    k = vsnprintf(line + off, sizeof line - off - 1, fmt, ap);
    va_end(ap);
    if (k > 0) off += (size_t)k;
    if (off > sizeof line - 2) off = sizeof line - 2;
    line[off++] = '\n';
    if (dest & LOG_D_STDERR) log_write_all(2, line, off);
    if (dest & LOG_D_STDOUT) log_write_all(1, line, off);
    if ((dest & LOG_D_FILE) && g.log_fd >= 0)
        log_write_all(g.log_fd, line, off);
    if ((dest & LOG_D_SYSLOG) && g.syslog_fd >= 0)
        log_syslog(type, line + body, off - body - 1);
}

/* log_at() plus strerror(errno), errno kept. */
static void log_sys(unsigned type, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
log_sys(unsigned type, const char *fmt, ...)
{
    char msg[512];
    int e = errno;
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    log_at(type, "%s: %s", msg, strerror(e));
    errno = e;
}

/* Opens the log file and the syslog socket that g.cfg names, closing the
 * old ones (start-up and SIGHUP). -1 when the log file cannot be opened. */
static int
log_open(void)
{
    if (g.log_fd >= 0) close(g.log_fd);
    if (g.syslog_fd >= 0) close(g.syslog_fd);
    g.log_fd = g.syslog_fd = -1;
    if (g.cfg.log_dest & LOG_D_FILE) {
        g.log_fd = open(g.cfg.log_file,
                        O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
        if (g.log_fd < 0) return -1;
    }
    if (g.cfg.log_dest & LOG_D_SYSLOG) {
        struct sockaddr_un sun;
        memset(&sun, 0, sizeof sun);
        sun.sun_family = AF_UNIX;
        str_set(sun.sun_path, sizeof sun.sun_path, "/dev/log");
        g.syslog_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (g.syslog_fd >= 0 &&
            connect(g.syslog_fd, (struct sockaddr *)&sun, sizeof sun) < 0) {
            close(g.syslog_fd);
            g.syslog_fd = -1;
        }
    }
    return 0;
}

/* Rate limit for repeated events: returns how many were suppressed before
 * this one (>= 0) when a line may be logged now, or -1 to stay quiet. */
static int64_t
log_limit(int64_t *last_ms, uint32_t *suppressed)
{
    int64_t n;

    if (*last_ms != 0 && g.now - *last_ms < MQX_LOG_EVERY_MS) {
        (*suppressed)++;
        return -1;
    }
    n = *suppressed;
    *suppressed = 0;
    *last_ms = g.now ? g.now : 1;
    return n;
}

/* The tail of a rate-limited line: "" or " (N similar suppressed)". */
static const char *
log_suppressed(int64_t k)
{
    static char buf[48];

    buf[0] = '\0';
    if (k > 0)
        snprintf(buf, sizeof buf, " (%lld similar suppressed)", (long long)k);
    return buf;
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2)))
__attribute__((noreturn));

/* Start-up failure: message to stderr (and the log), exit 1. Only before
 * the loop runs. */
static void
die(const char *fmt, ...)
{
    static char msg[8192]; /* a cipher error lists every suite */
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "Error: %s\n", msg);
    if (g.cfg.log_dest & ~(unsigned)LOG_D_STDERR) log_at(LOG_T_ERR, "%s", msg);
    exit(1);
}

/* ==== [4] Memory: arena, pools, store ==== */
/* arena_init() sums every pool and the store from the config, allocates once
 * and arena_seal() forbids more. Pools hand out fixed slots; the store is a
 * buddy allocator for variable bytes. Debug builds fill taken slots with
 * 0xAA and returned ones with 0x55. */

#ifndef NDEBUG
#define MQX_DEBUG_FILL 1
#else
#define MQX_DEBUG_FILL 0
#endif

static size_t
align_up(size_t n, size_t a)
{
    return (n + a - 1) / a * a;
}

/* Carves n bytes (16-aligned) from the arena; NULL past its end. */
static void *
arena_take(size_t n)
{
    void *p;

    n = align_up(n, 16);
    if (g.arena_size - g.arena_off < n) return NULL;
    p = g.arena + g.arena_off;
    g.arena_off += n;
    return p;
}

static void
pool_init(struct pool *pl, const char *name, void *base, size_t slot,
          uint32_t cap)
{
    uint32_t i;

    pl->name = name;
    pl->cap = cap;
    pl->slot = slot;
    pl->base = base;
    pl->used = pl->peak = 0;
    pl->full = 0;
    pl->next = arena_take(sizeof(uint32_t) * (cap ? cap : 1));
    pl->gen = arena_take(sizeof(uint32_t) * (cap ? cap : 1));
    for (i = 0; i < cap; i++) {
        pl->next[i] = i + 1 < cap ? i + 1 : NIL;
        pl->gen[i] = 1;
    }
    pl->head = cap ? 0 : NIL;
}

#define POOL_USED (NIL - 1) /* next[] of a taken slot */

/* Is slot i taken? (free slots link the free list, ending with NIL) */
static int
pool_used(const struct pool *pl, uint32_t i)
{
    return pl->next[i] == POOL_USED;
}

/* Takes a slot; NIL when the pool is full (the caller applies the pool's
 * written policy and the refusal is counted here). */
static uint32_t
pool_take(struct pool *pl)
{
    uint32_t i = pl->head;

    if (i == NIL) {
        pl->full++;
        return NIL;
    }
    pl->head = pl->next[i];
    pl->next[i] = POOL_USED;
    if (++pl->used > pl->peak) pl->peak = pl->used;
    if (MQX_DEBUG_FILL)
        memset((uint8_t *)pl->base + (size_t)i * pl->slot, 0xAA, pl->slot);
    return i;
}

static void
pool_give(struct pool *pl, uint32_t i)
{
    assert(i < pl->cap && pl->used > 0 && pool_used(pl, i));
    if (MQX_DEBUG_FILL)
        memset((uint8_t *)pl->base + (size_t)i * pl->slot, 0x55, pl->slot);
    pl->gen[i]++;
    pl->next[i] = pl->head;
    pl->head = i;
    pl->used--;
}

/* --- the store: binary buddy blocks of 64 << order bytes --- */

#define ST_FREE 0x80
#define ST_UNIT(p)                                                             \
    ((uint32_t)(((const uint8_t *)(p)-g.st.base) / MQX_STORE_MIN))

static uint8_t *
st_ptr(uint32_t unit)
{
    return g.st.base + (size_t)unit * MQX_STORE_MIN;
}

/* Free blocks keep their list links in their first 8 bytes. */
static uint32_t
st_link(uint32_t unit, int which)
{
    uint32_t v;

    memcpy(&v, st_ptr(unit) + (size_t)4 * (size_t)which, 4);
    return v;
}

static void
st_set_link(uint32_t unit, int which, uint32_t v)
{
    memcpy(st_ptr(unit) + (size_t)4 * (size_t)which, &v, 4);
}

static void
st_push(uint32_t unit, unsigned order)
{
    uint32_t head = g.st.free[order];

    st_set_link(unit, 0, head);
    st_set_link(unit, 1, NIL);
    if (head != NIL) st_set_link(head, 1, unit);
    g.st.free[order] = unit;
    g.st.tag[unit] = (uint8_t)(ST_FREE | order);
}

static void
st_unlink(uint32_t unit, unsigned order)
{
    uint32_t next = st_link(unit, 0), prev = st_link(unit, 1);

    if (prev != NIL)
        st_set_link(prev, 0, next);
    else
        g.st.free[order] = next;
    if (next != NIL) st_set_link(next, 1, prev);
    g.st.tag[unit] = (uint8_t)order;
}

static unsigned
st_order(size_t n)
{
    unsigned k = 0;

    while (((size_t)MQX_STORE_MIN << k) < n)
        k++;
    return k;
}

static size_t
st_block_size(const void *p)
{
    return (size_t)MQX_STORE_MIN << (g.st.tag[ST_UNIT(p)] & 0x7f);
}

/* Sets up the store over `size` bytes whose largest block holds `top`. */
static void
st_init(uint8_t *base, size_t size, size_t top)
{
    uint32_t u, units;
    unsigned k;

    g.st.base = base;
    g.st.top = st_order(top);
    g.st.size = size;
    units = (uint32_t)(size / MQX_STORE_MIN);
    g.st.tag = arena_take(units);
    for (k = 0; k < STORE_ORDERS; k++)
        g.st.free[k] = NIL;
    /* push in reverse so the lowest addresses are handed out first */
    for (u = units; u > 0;) {
        u -= 1u << g.st.top;
        st_push(u, g.st.top);
    }
}

/* Returns a block of at least n bytes, or NULL when the store cannot give
 * one (counted; the caller applies its policy). */
static void *
st_alloc(size_t n)
{
    unsigned k = st_order(n ? n : 1), j;
    uint32_t u;

    if (k > g.st.top) {
        g.st.fails++;
        return NULL;
    }
    for (j = k; j <= g.st.top && g.st.free[j] == NIL; j++)
        ;
    if (j > g.st.top) {
        g.st.fails++;
        return NULL;
    }
    u = g.st.free[j];
    st_unlink(u, j);
    while (j > k) { /* split, keep the lower half */
        j--;
        st_push(u + (1u << j), j);
    }
    g.st.tag[u] = (uint8_t)k;
    g.st.used += (size_t)MQX_STORE_MIN << k;
    if (g.st.used > g.st.peak) g.st.peak = g.st.used;
    if (MQX_DEBUG_FILL) memset(st_ptr(u), 0xAA, (size_t)MQX_STORE_MIN << k);
    return st_ptr(u);
}

static void
st_free(void *p)
{
    uint32_t u, b;
    unsigned k;

    if (p == NULL) return;
    u = ST_UNIT(p);
    k = g.st.tag[u];
    assert(!(k & ST_FREE));
    g.st.used -= (size_t)MQX_STORE_MIN << k;
    if (MQX_DEBUG_FILL) memset(p, 0x55, (size_t)MQX_STORE_MIN << k);
    while (k < g.st.top) {
        b = u ^ (1u << k);
        if (g.st.tag[b] != (ST_FREE | k)) break;
        st_unlink(b, k);
        g.st.tag[b] = 0;
        if (b < u) {
            g.st.tag[u] = 0;
            u = b;
        }
        k++;
    }
    st_push(u, k);
}

/* Copies n bytes into a new block; NULL when the store is full. */
static uint8_t *
st_dup(const uint8_t *p, size_t n)
{
    uint8_t *b = st_alloc(n);

    if (b && n) memcpy(b, p, n);
    return b;
}

/* ==== [5] Config model and parser ==== */
/* One table of keys drives parsing, defaults and the reference in the
 * README; lines come from cfg_parse_text() (no I/O but include_dir).
 * Errors read "FILE:LINE: key: what" in c->err. */

enum {
    CT_BOOL,    /* true | false */
    CT_INT,     /* decimal integer in [min, max] */
    CT_BYTES,   /* integer with optional k/M/G suffix (1024-based) */
    CT_SECS,    /* duration: N[s|m|h|d|w|y] (Mosquitto: h d w m y) */
    CT_STR,     /* a string up to the field's size */
    CT_SPECIAL, /* parsed by cfg_special() */
};

struct cfg_key {
    const char *name;
    uint8_t type;
    size_t off; /* into struct cfg */
    size_t len; /* CT_STR: field size */
    int64_t min, max, def;
    const char *help;
};

#define CK_INT(n, t, mn, mx, d, h)                                             \
    {                                                                          \
#n, t, offsetof(struct cfg, n), 0, mn, mx, d, h                        \
    }
#define CK_STR(n, h)                                                           \
    {                                                                          \
#n, CT_STR, offsetof(struct cfg, n), sizeof(((struct cfg *)0)->n), 0,  \
            0, 0, h                                                            \
    }
#define CK_SPECIAL(n, h)                                                       \
    {                                                                          \
        n, CT_SPECIAL, 0, 0, 0, 0, 0, h                                        \
    }

static const struct cfg_key cfg_keys[] = {
    CK_SPECIAL("listener", "listener PORT [BIND_ADDRESS|SOCKET_PATH]: a "
                           "listening socket; port 0 with a path: unix socket"),
    CK_SPECIAL("max_connections",
               "after a listener: limit for that listener (-1 none); before "
               "any listener: size of the connection pool (-1: 1024)"),
    CK_SPECIAL("allow_anonymous",
               "clients without a username may connect (default false, true "
               "when no listener is configured)"),
    CK_SPECIAL("password_file",
               "mosquitto_passwd file ($6$ and $7$ hashes); without it, "
               "user names are not checked"),
    CK_SPECIAL("acl_file", "Mosquitto ACL file: topic, user, pattern lines"),
    CK_INT(per_listener_settings, CT_BOOL, 0, 1, 0,
           "allow_anonymous, password_file and acl_file apply to the "
           "listener they follow"),
    CK_INT(max_packet_size, CT_BYTES, 0, 268435455, 0,
           "largest packet accepted, bytes; 0: a quarter of "
           "message_store_bytes"),
    CK_INT(message_size_limit, CT_BYTES, 0, 268435455, 0,
           "largest PUBLISH payload; larger ones are acknowledged and "
           "dropped; 0: no limit beyond max_packet_size"),
    CK_INT(max_inflight_messages, CT_INT, 0, 65535, 20,
           "unacknowledged QoS 1/2 messages per client; 0: no limit"),
    CK_INT(max_queued_messages, CT_INT, 0, 100000000, 1000,
           "messages queued per client beyond the inflight window; 0: no "
           "limit"),
    CK_INT(max_queued_bytes, CT_BYTES, 0, INT64_C(1) << 40, 0,
           "bytes queued per client; 0: no limit"),
    CK_INT(queue_qos0_messages, CT_BOOL, 0, 1, 0,
           "queue QoS 0 messages for offline persistent sessions"),
    CK_INT(retain_available, CT_BOOL, 0, 1, 1,
           "false: a retained PUBLISH closes the connection"),
    CK_INT(max_keepalive, CT_INT, 10, 65535, 65535,
           "largest keepalive a client may ask for, seconds (5.0 clients "
           "asking for more get it as Server Keep Alive)"),
    CK_INT(max_topic_alias, CT_INT, 0, 65535, 10,
           "MQTT 5 topic aliases per client, both ways; 0: none"),
    CK_INT(shared_subscriptions, CT_BOOL, 0, 1, 1,
           "$share/GROUP/FILTER subscriptions; false: SUBACK 0x9E"),
    CK_INT(persistent_client_expiration, CT_SECS, 0, INT64_C(1) << 40, 0,
           "drop persistent sessions offline this long (1h, 2d, 3w, 1m, "
           "1y); default never"),
    CK_INT(sys_interval, CT_INT, 0, 65535, 10,
           "seconds between $SYS updates; 0: off"),
    CK_SPECIAL("enable_proxy_protocol",
               "after a listener: 1 or 2, every connection starts with a "
               "PROXY v1 or v2 header (R1)"),
    CK_SPECIAL("proxy_protocol_v2_require_tls",
               "PROXY v2 listener: refuse clients that did not use TLS to the "
               "proxy (R2, R40)"),
    CK_SPECIAL("require_certificate",
               "TLS listener: clients must present a certificate that "
               "cafile/capath verify; PROXY v2 listener: refuse clients "
               "without a verified certificate at the proxy (R3, R41)"),
    CK_SPECIAL("use_identity_as_username",
               "TLS or PROXY v2 listener: the certificate CN is the username "
               "(R4, R43), no password check; needs require_certificate"),
    CK_SPECIAL("use_subject_as_username",
               "TLS listener: the certificate subject (RFC 2253, e.g. "
               "CN=a,O=b,C=GB) is the username; needs require_certificate"),
    CK_SPECIAL("certfile", "TLS listener: server certificate chain (PEM); "
                           "with keyfile, the listener speaks TLS"),
    CK_SPECIAL("keyfile", "TLS listener: private key of certfile (PEM, not "
                          "password protected)"),
    CK_SPECIAL("cafile", "TLS listener: CA certificates that verify client "
                         "certificates (PEM)"),
    CK_SPECIAL("capath", "TLS listener: a folder of CA certificates (PEM "
                         "files)"),
    CK_SPECIAL("crlfile", "TLS listener: revoked client certificates (PEM "
                          "CRL)"),
    CK_SPECIAL("tls_version", "TLS listener: lowest version accepted, "
                              "tlsv1.2 (default) or tlsv1.3"),
    CK_SPECIAL("ciphers", "TLS listener: TLS 1.2 suites allowed, "
                          "colon-separated mbedTLS or IANA names"),
    CK_SPECIAL("ciphers_tls1.3", "TLS listener: TLS 1.3 suites allowed, "
                                 "e.g. TLS_AES_128_GCM_SHA256"),
    CK_INT(max_tls_connections, CT_INT, -1, MQX_MAX_CONNECTIONS, -1,
           "TLS sessions at once (mbedTLS memory, about 40 KB each); -1: 32 "
           "when a TLS listener exists, else 0; when full: refused"),
    CK_SPECIAL("proxy_protocol_trusted_sources",
               "PROXY listener: CIDRs allowed to connect (R6, R10); "
               "repeatable"),
    CK_SPECIAL("proxy_protocol_timeout",
               "PROXY listener: seconds for the header, 1-300, default 5 "
               "(R7, R20)"),
    CK_SPECIAL("proxy_protocol_local",
               "PROXY listener: accept | close LOCAL connections (R8), "
               "default accept"),
    CK_SPECIAL("log_dest", "stderr | stdout | syslog | file PATH | none; "
                           "several lines add up; default stderr"),
    CK_SPECIAL("log_type", "error | warning | notice | information | "
                           "subscribe | unsubscribe | debug | all | none; "
                           "default error, warning, notice, information"),
    CK_INT(log_facility, CT_INT, 0, 7, -1,
           "syslog facility local0..local7 (0-7); default daemon"),
    CK_INT(connection_messages, CT_BOOL, 0, 1, 1,
           "log connects and disconnects"),
    CK_INT(log_timestamp, CT_BOOL, 0, 1, 1,
           "prefix log lines with the Unix time"),
    CK_STR(pid_file, "write the process id here"),
    CK_STR(user, "when started as root, run as this user (default mqttpx; "
                 "root: stay root)"),
    CK_SPECIAL("include_dir", "read DIR/*.conf in sorted order"),
    CK_INT(memory_limit, CT_BYTES, 0, INT64_C(1) << 40, 0,
           "refuse to start when the memory budget is larger; 0: no limit"),
    CK_INT(connect_timeout, CT_INT, 1, 3600, 10,
           "seconds a new connection has to send CONNECT"),
    CK_INT(max_sessions, CT_INT, 1, 10000000, 2048,
           "client sessions kept, online and offline; when full: CONNACK "
           "server unavailable"),
    CK_INT(max_subscriptions, CT_INT, 1, 100000000, 16384,
           "subscriptions of all clients; when full: SUBACK failure"),
    CK_INT(max_topic_nodes, CT_INT, 16, 100000000, 32768,
           "topic tree levels of all filters and retained topics"),
    CK_INT(max_topic_levels, CT_INT, 1, MQX_MAX_TOPIC_LEVELS, 32,
           "levels in a subscription filter or retained topic"),
    CK_INT(max_retained_messages, CT_INT, 0, 10000000, 4096,
           "retained messages kept; past it new retained topics are not "
           "stored (counted)"),
    CK_INT(max_retained_bytes, CT_BYTES, 0, INT64_C(1) << 40, 2097152,
           "retained payload bytes kept"),
    CK_INT(message_store_bytes, CT_BYTES, 65536, INT64_C(1) << 40, 8388608,
           "bytes for messages, client ids, partial packets and output"),
    CK_INT(persistence, CT_BOOL, 0, 1, 0,
           "keep retained messages and persistent sessions across restarts"),
    CK_STR(persistence_location, "folder of the persistence file"),
    CK_STR(persistence_file, "file name (default mqttpx.db)"),
    CK_INT(autosave_interval, CT_INT, 0, INT64_C(1) << 31, 1800,
           "seconds between snapshots (only when something changed); 0: only "
           "at shutdown"),
    CK_INT(autosave_on_changes, CT_BOOL, 0, 1, 0,
           "autosave_interval counts changes instead of seconds"),
    CK_INT(persistence_journal, CT_BOOL, 0, 1, 0,
           "journal every change, fsync once per loop iteration before "
           "acknowledging: a crash loses nothing acknowledged"),
    CK_INT(max_queued_total, CT_INT, 16, 100000000, 65536,
           "queued and inflight deliveries of all clients; when full: "
           "QoS 0 dropped, a QoS 1/2 subscriber disconnected"),
};

#define CFG_N_KEYS (sizeof cfg_keys / sizeof cfg_keys[0])

static void cfg_err(struct cfg *c, const char *file, int line, const char *fmt,
                    ...) __attribute__((format(printf, 4, 5)));

static void
cfg_err(struct cfg *c, const char *file, int line, const char *fmt, ...)
{
    int k;
    va_list ap;

    k = snprintf(c->err, sizeof c->err, "%s:%d: ", file, line);
    if (k < 0 || (size_t)k >= sizeof c->err) return;
    va_start(ap, fmt);
    vsnprintf(c->err + k, sizeof c->err - (size_t)k, fmt, ap);
    va_end(ap);
}

static void
cfg_defaults(struct cfg *c)
{
    size_t i;

    memset(c, 0, sizeof *c);
    for (i = 0; i < CFG_N_KEYS; i++)
        if (cfg_keys[i].type != CT_SPECIAL && cfg_keys[i].type != CT_STR)
            memcpy((char *)c + cfg_keys[i].off, &cfg_keys[i].def,
                   sizeof(int64_t));
    c->max_connections = -1;
    c->auth.allow_anonymous = -1;
    c->log_dest = LOG_D_STDERR;
    c->log_type = LOG_T_ERR | LOG_T_WARN | LOG_T_NOTICE | LOG_T_INFO;
    str_set(c->user, sizeof c->user, "mqttpx");
    str_set(c->persistence_file, sizeof c->persistence_file, "mqttpx.db");
}

/* Parses a decimal integer with an optional suffix; 0 on success. */
static int
cfg_number(const char *s, int type, int64_t *out)
{
    char *end;
    long long v;
    int64_t mul = 1;

    if (*s == '\0') return -1;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno || end == s) return -1;
    if (type == CT_BYTES && *end) {
        if ((*end == 'k' || *end == 'K') && end[1] == '\0')
            mul = 1024;
        else if (*end == 'M' && end[1] == '\0')
            mul = INT64_C(1) << 20;
        else if (*end == 'G' && end[1] == '\0')
            mul = INT64_C(1) << 30;
        else
            return -1;
    } else if (type == CT_SECS && *end) {
        switch (*end) {
        case 's':
            mul = 1;
            break;
        case 'h':
            mul = INT64_C(3600);
            break;
        case 'd':
            mul = INT64_C(86400);
            break;
        case 'w':
            mul = INT64_C(7) * 86400;
            break;
        case 'm':
            mul = INT64_C(30) * 86400;
            break;
        case 'y':
            mul = INT64_C(365) * 86400;
            break;
        default:
            return -1;
        }
        if (end[1] != '\0') return -1;
    } else if (*end) {
        return -1;
    }
    if (v < 0 && mul != 1) return -1;
    if (v > INT64_MAX / mul) return -1;
    *out = (int64_t)v * mul;
    return 0;
}

static int cfg_parse_file(struct cfg *c, const char *path, int depth);

static int
cfg_log_type(struct cfg *c, const char *file, int line, const char *v)
{
    static const struct {
        const char *name;
        unsigned bits;
    } types[] = {
        {"error", LOG_T_ERR},
        {"warning", LOG_T_WARN},
        {"notice", LOG_T_NOTICE},
        {"information", LOG_T_INFO},
        {"debug", LOG_T_DEBUG},
        {"subscribe", LOG_T_SUB},
        {"unsubscribe", LOG_T_UNSUB},
        {"all", LOG_T_ALL},
        {"none", 0},
        {"websockets", 0},
    };
    size_t i;

    if (!c->log_type_set) c->log_type = 0;
    c->log_type_set = 1;
    for (i = 0; i < sizeof types / sizeof types[0]; i++)
        if (strcmp(v, types[i].name) == 0) {
            c->log_type |= types[i].bits;
            return 0;
        }
    cfg_err(c, file, line, "log_type: unknown type '%s'", v);
    return -1;
}

static int
cfg_log_dest(struct cfg *c, const char *file, int line, const char *v,
             const char *arg)
{
    if (!c->log_dest_set) c->log_dest = 0;
    c->log_dest_set = 1;
    if (strcmp(v, "stderr") == 0)
        c->log_dest |= LOG_D_STDERR;
    else if (strcmp(v, "stdout") == 0)
        c->log_dest |= LOG_D_STDOUT;
    else if (strcmp(v, "syslog") == 0)
        c->log_dest |= LOG_D_SYSLOG;
    else if (strcmp(v, "none") == 0)
        c->log_dest = 0;
    else if (strcmp(v, "file") == 0) {
        if (!arg || !*arg) {
            cfg_err(c, file, line, "log_dest: file needs a path");
            return -1;
        }
        if (strlen(arg) >= sizeof c->log_file) {
            cfg_err(c, file, line, "log_dest: path too long");
            return -1;
        }
        str_set(c->log_file, sizeof c->log_file, arg);
        c->log_dest |= LOG_D_FILE;
    } else {
        cfg_err(c, file, line, "log_dest: unknown destination '%s'", v);
        return -1;
    }
    return 0;
}

static int
cfg_listener(struct cfg *c, const char *file, int line, const char *port,
             const char *bind)
{
    struct listener *l;
    int64_t p;

    if (c->n_lsn >= MQX_MAX_LISTENERS) {
        cfg_err(c, file, line, "listener: more than %d listeners",
                MQX_MAX_LISTENERS);
        return -1;
    }
    if (!port || cfg_number(port, CT_INT, &p) || p < 0 || p > 65535) {
        cfg_err(c, file, line, "listener: invalid port '%s'", port ? port : "");
        return -1;
    }
    if (p == 0 && (!bind || bind[0] != '/')) {
        cfg_err(c, file, line,
                "listener: port 0 needs a unix socket path (absolute)");
        return -1;
    }
    l = &c->lsn[c->n_lsn];
    memset(l, 0, sizeof *l);
    if (bind) {
        size_t cap = p == 0 ? sizeof(((struct sockaddr_un *)0)->sun_path)
                            : sizeof l->bind;
        if (strlen(bind) >= cap) {
            cfg_err(c, file, line, "listener: '%s' is too long", bind);
            return -1;
        }
        str_set(l->bind, sizeof l->bind, bind);
    }
    l->port = (uint16_t)p;
    l->is_unix = p == 0;
    l->max_connections = -1;
    l->auth.allow_anonymous = -1;
    l->proxy_timeout = 5; /* R7 */
    l->file = file;
    l->line = line;
    c->n_lsn++;
    return 0;
}

static int
cfg_include_dir(struct cfg *c, const char *file, int line, const char *dir,
                int depth)
{
    DIR *d;
    struct dirent *e;
    char **names = NULL;
    size_t n = 0, cap = 0, i;
    int rc = 0;

    if (depth >= MQX_CFG_DEPTH) {
        cfg_err(c, file, line, "include_dir: nested too deep");
        return -1;
    }
    d = opendir(dir);
    if (!d) {
        cfg_err(c, file, line, "include_dir: %s: %s", dir, strerror(errno));
        return -1;
    }
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        if (len < 6 || strcmp(e->d_name + len - 5, ".conf") != 0) continue;
        if (n == cap) {
            char **nn;
            cap = cap ? cap * 2 : 16;
            nn = realloc(names, cap * sizeof *names);
            if (!nn) break;
            names = nn;
        }
        names[n] = malloc(strlen(dir) + len + 2);
        if (!names[n]) break;
        sprintf(names[n], "%s/%s", dir, e->d_name);
        n++;
    }
    closedir(d);
    /* sorted, as Mosquitto reads them */
    for (i = 1; i < n; i++) {
        char *t = names[i];
        size_t j = i;
        while (j > 0 && strcmp(names[j - 1], t) > 0) {
            names[j] = names[j - 1];
            j--;
        }
        names[j] = t;
    }
    for (i = 0; i < n && rc == 0; i++)
        rc = cfg_parse_file(c, names[i], depth + 1);
    for (i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return rc;
}

/* Keys whose names are interned for error messages and listener records:
 * file names live as long as the config. */
static const char *
cfg_intern(const char *s)
{
    static char *kept[64];
    static size_t n_kept;
    size_t i;

    for (i = 0; i < n_kept; i++)
        if (strcmp(kept[i], s) == 0) return kept[i];
    if (n_kept < sizeof kept / sizeof kept[0]) {
        kept[n_kept] = strdup(s);
        if (kept[n_kept]) return kept[n_kept++];
    }
    return "(config)";
}

static int
cfg_bool(const char *v, uint8_t *out)
{
    if (strcmp(v, "true") == 0)
        *out = 1;
    else if (strcmp(v, "false") == 0)
        *out = 0;
    else
        return -1;
    return 0;
}

/* The listener options of the PROXY protocol (R1-R8). */
static int
cfg_proxy(struct cfg *c, const char *file, int line, const char *key,
          char **arg, int n_arg)
{
    struct listener *l;
    int i;

    if (c->n_lsn == 0) {
        cfg_err(c, file, line, "%s must follow a listener line", key);
        return -1;
    }
    l = &c->lsn[c->n_lsn - 1];
    if (strcmp(key, "proxy_protocol_trusted_sources") == 0) {
        if (n_arg < 1) {
            cfg_err(c, file, line, "%s: expected one or more CIDRs", key);
            return -1;
        }
        for (i = 0; i < n_arg; i++) {
            struct mqx_cidr *cd = &l->trusted[l->n_trusted];
            if (l->n_trusted >= MQX_MAX_TRUSTED) {
                cfg_err(c, file, line, "%s: more than %d entries", key,
                        MQX_MAX_TRUSTED);
                return -1;
            }
            if (mqx_proxy_cidr_parse(arg[i], strlen(arg[i]), cd) != MQX_DONE) {
                cfg_err(c, file, line, "%s: invalid address or CIDR '%s'", key,
                        arg[i]);
                return -1;
            }
            l->n_trusted++;
        }
        return 0;
    }
    if (n_arg != 1) {
        cfg_err(c, file, line, "%s: expected one value", key);
        return -1;
    }
    if (strcmp(key, "enable_proxy_protocol") == 0) {
        if (strcmp(arg[0], "1") != 0 && strcmp(arg[0], "2") != 0) {
            cfg_err(c, file, line, "enable_proxy_protocol must be 1 or 2.");
            return -1;
        }
        l->proxy = (uint8_t)(arg[0][0] - '0');
        return 0;
    }
    if (strcmp(key, "proxy_protocol_timeout") == 0) {
        int64_t v;
        if (cfg_number(arg[0], CT_INT, &v) || v < 1 || v > 300) {
            cfg_err(c, file, line, "%s: expected 1..300 seconds, not '%s'", key,
                    arg[0]);
            return -1;
        }
        l->proxy_timeout = v;
        l->line_timeout = line;
        return 0;
    }
    if (strcmp(key, "proxy_protocol_local") == 0) {
        if (strcmp(arg[0], "accept") != 0 && strcmp(arg[0], "close") != 0) {
            cfg_err(c, file, line, "%s: expected accept or close", key);
            return -1;
        }
        l->proxy_local_close = arg[0][0] == 'c';
        l->line_local = line;
        return 0;
    }
    {
        uint8_t *field = strcmp(key, "require_certificate") == 0
                             ? &l->require_certificate
                         : strcmp(key, "use_identity_as_username") == 0
                             ? &l->use_identity
                             : &l->proxy_require_tls;
        int *where = field == &l->require_certificate ? &l->line_cert
                     : field == &l->use_identity      ? &l->line_ident
                                                      : &l->line_tls;
        if (field == &l->proxy_require_tls &&
            strcmp(key, "proxy_protocol_v2_require_tls") != 0) {
            cfg_err(c, file, line, "unknown option '%s'", key);
            return -1;
        }
        if (cfg_bool(arg[0], field)) {
            cfg_err(c, file, line, "%s: expected true or false, not '%s'", key,
                    arg[0]);
            return -1;
        }
        *where = line;
    }
    return 0;
}

/* The TLS options of a listener (Mosquitto's names). Files are read by
 * tls_load() [11] once the whole configuration is known. */
static int
cfg_tls(struct cfg *c, const char *file, int line, const char *key, char **arg,
        int n_arg)
{
    struct listener *l;
    static const struct {
        const char *key;
        size_t off, len, line;
    } paths[] = {
#define TLS_PATH(k, f, ln)                                                     \
    {k, offsetof(struct listener, f), sizeof(((struct listener *)0)->f),       \
     offsetof(struct listener, ln)}
        TLS_PATH("certfile", certfile, line_certfile),
        TLS_PATH("keyfile", keyfile, line_keyfile),
        TLS_PATH("cafile", cafile, line_cafile),
        TLS_PATH("capath", capath, line_capath),
        TLS_PATH("crlfile", crlfile, line_crlfile),
        TLS_PATH("ciphers", ciphers, line_ciphers),
        TLS_PATH("ciphers_tls1.3", ciphers13, line_ciphers13),
#undef TLS_PATH
    };
    size_t i;

    if (c->n_lsn == 0) {
        cfg_err(c, file, line, "%s must follow a listener line", key);
        return -1;
    }
    if (!MQX_TLS) {
        cfg_err(c, file, line,
                "%s: this mqttpx was built without TLS (make TLS=0); rebuild "
                "with TLS=1, or terminate TLS in HAProxy",
                key);
        return -1;
    }
    l = &c->lsn[c->n_lsn - 1];
    if (n_arg != 1) {
        cfg_err(c, file, line, "%s: expected one value", key);
        return -1;
    }
    for (i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        if (strcmp(key, paths[i].key) != 0) continue;
        if (strlen(arg[0]) >= paths[i].len) {
            cfg_err(c, file, line, "%s: value too long", key);
            return -1;
        }
        str_set((char *)l + paths[i].off, paths[i].len, arg[0]);
        *(int *)(void *)((char *)l + paths[i].line) = line;
        return 0;
    }
    if (strcmp(key, "tls_version") == 0) {
        if (strcmp(arg[0], "tlsv1.2") == 0)
            l->tls_min = 12;
        else if (strcmp(arg[0], "tlsv1.3") == 0)
            l->tls_min = 13;
        else {
            cfg_err(c, file, line,
                    "tls_version: '%s' is not supported; use tlsv1.2 or "
                    "tlsv1.3 (the lowest version accepted)",
                    arg[0]);
            return -1;
        }
        l->line_tlsver = line;
        return 0;
    }
    /* use_subject_as_username */
    if (cfg_bool(arg[0], &l->use_subject)) {
        cfg_err(c, file, line, "%s: expected true or false, not '%s'", key,
                arg[0]);
        return -1;
    }
    l->line_subject = line;
    return 0;
}

static int
cfg_special(struct cfg *c, const char *file, int line, const char *key,
            char **arg, int n_arg, int depth)
{
    int i;

    if (strcmp(key, "listener") == 0) {
        if (n_arg < 1 || n_arg > 2) {
            cfg_err(c, file, line, "listener: expected PORT [ADDRESS]");
            return -1;
        }
        return cfg_listener(c, file, line, arg[0], n_arg > 1 ? arg[1] : NULL);
    }
    if (strcmp(key, "max_connections") == 0) {
        int64_t v;
        if (n_arg != 1 || cfg_number(arg[0], CT_INT, &v)) {
            cfg_err(c, file, line, "max_connections: expected a number");
            return -1;
        }
        if (v < -1 || v > MQX_MAX_CONNECTIONS) {
            cfg_err(c, file, line, "max_connections: %lld %s", (long long)v,
                    v < -1 ? "< -1" : "> " MQX_STR(MQX_MAX_CONNECTIONS));
            return -1;
        }
        if (c->n_lsn)
            c->lsn[c->n_lsn - 1].max_connections = v;
        else
            c->max_connections = v;
        return 0;
    }
    if (strcmp(key, "certfile") == 0 || strcmp(key, "keyfile") == 0 ||
        strcmp(key, "cafile") == 0 || strcmp(key, "capath") == 0 ||
        strcmp(key, "crlfile") == 0 || strcmp(key, "tls_version") == 0 ||
        strcmp(key, "ciphers") == 0 || strcmp(key, "ciphers_tls1.3") == 0 ||
        strcmp(key, "use_subject_as_username") == 0)
        return cfg_tls(c, file, line, key, arg, n_arg);
    if (strncmp(key, "proxy_protocol", 14) == 0 ||
        strcmp(key, "enable_proxy_protocol") == 0 ||
        strcmp(key, "require_certificate") == 0 ||
        strcmp(key, "use_identity_as_username") == 0)
        return cfg_proxy(c, file, line, key, arg, n_arg);
    if (strcmp(key, "allow_anonymous") == 0 ||
        strcmp(key, "password_file") == 0 || strcmp(key, "acl_file") == 0) {
        struct authcfg *ac = c->per_listener_settings && c->n_lsn
                                 ? &c->lsn[c->n_lsn - 1].auth
                                 : &c->auth;
        uint8_t b;
        if (n_arg != 1) {
            cfg_err(c, file, line, "%s: expected one value", key);
            return -1;
        }
        if (key[0] == 'a' && key[1] == 'l') {
            if (cfg_bool(arg[0], &b)) {
                cfg_err(c, file, line, "%s: expected true or false, not '%s'",
                        key, arg[0]);
                return -1;
            }
            ac->allow_anonymous = b;
            return 0;
        }
        if (strlen(arg[0]) >= MQX_PATH_MAX) {
            cfg_err(c, file, line, "%s: path too long", key);
            return -1;
        }
        str_set(key[0] == 'p' ? ac->password_file : ac->acl_file, MQX_PATH_MAX,
                arg[0]);
        return 0;
    }
    if (strcmp(key, "log_type") == 0) {
        for (i = 0; i < n_arg; i++)
            if (cfg_log_type(c, file, line, arg[i])) return -1;
        if (n_arg == 0) {
            cfg_err(c, file, line, "log_type: missing value");
            return -1;
        }
        return 0;
    }
    if (strcmp(key, "log_dest") == 0) {
        if (n_arg < 1) {
            cfg_err(c, file, line, "log_dest: missing value");
            return -1;
        }
        return cfg_log_dest(c, file, line, arg[0], n_arg > 1 ? arg[1] : NULL);
    }
    if (strcmp(key, "include_dir") == 0) {
        if (n_arg != 1) {
            cfg_err(c, file, line, "include_dir: expected one directory");
            return -1;
        }
        return cfg_include_dir(c, file, line, arg[0], depth);
    }
    cfg_err(c, file, line, "%s: not handled", key);
    return -1;
}

/* One line: "key value..." split on blanks; a value may keep its spaces
 * for CT_STR (paths). Returns 0 or -1 with c->err set. */
static int
cfg_line(struct cfg *c, const char *file, int line, char *s, int depth)
{
    char *arg[8];
    char *key, *rest;
    int n_arg = 0;
    size_t i;

    while (*s == ' ' || *s == '\t')
        s++;
    if (*s == '#' || *s == '\0') return 0;
    key = s;
    while (*s && *s != ' ' && *s != '\t')
        s++;
    if (*s) *s++ = '\0';
    while (*s == ' ' || *s == '\t')
        s++;
    rest = s;
    /* trailing blanks of the value */
    for (i = strlen(rest); i > 0 && (rest[i - 1] == ' ' || rest[i - 1] == '\t');
         i--)
        rest[i - 1] = '\0';
    for (i = 0; i < CFG_N_KEYS; i++)
        if (strcmp(cfg_keys[i].name, key) == 0) break;
    if (i == CFG_N_KEYS) {
        cfg_err(c, file, line, "unknown option '%s'", key);
        return -1;
    }
    if (cfg_keys[i].type == CT_STR) {
        if (*rest == '\0') {
            cfg_err(c, file, line, "%s: missing value", key);
            return -1;
        }
        if (strlen(rest) >= cfg_keys[i].len) {
            cfg_err(c, file, line, "%s: value too long", key);
            return -1;
        }
        str_set((char *)c + cfg_keys[i].off, cfg_keys[i].len, rest);
        return 0;
    }
    while (*rest && n_arg < (int)(sizeof arg / sizeof arg[0])) {
        arg[n_arg++] = rest;
        while (*rest && *rest != ' ' && *rest != '\t')
            rest++;
        if (*rest) *rest++ = '\0';
        while (*rest == ' ' || *rest == '\t')
            rest++;
    }
    if (*rest) {
        cfg_err(c, file, line, "%s: too many values", key);
        return -1;
    }
    if (cfg_keys[i].type == CT_SPECIAL)
        return cfg_special(c, file, line, key, arg, n_arg, depth);
    if (n_arg != 1) {
        cfg_err(c, file, line, "%s: expected one value", key);
        return -1;
    }
    {
        const struct cfg_key *k = &cfg_keys[i];
        int64_t v;
        if (k->type == CT_BOOL) {
            if (strcmp(arg[0], "true") == 0)
                v = 1;
            else if (strcmp(arg[0], "false") == 0)
                v = 0;
            else {
                cfg_err(c, file, line, "%s: expected true or false, not '%s'",
                        key, arg[0]);
                return -1;
            }
        } else if (cfg_number(arg[0], k->type, &v)) {
            cfg_err(c, file, line, "%s: invalid number '%s'", key, arg[0]);
            return -1;
        }
        if (v < k->min) {
            cfg_err(c, file, line, "%s: %lld < %lld", key, (long long)v,
                    (long long)k->min);
            return -1;
        }
        if (v > k->max) {
            cfg_err(c, file, line, "%s: %lld > %lld", key, (long long)v,
                    (long long)k->max);
            return -1;
        }
        memcpy((char *)c + k->off, &v, sizeof v);
    }
    return 0;
}

/* Parses a whole config text in place (lines are cut). */
static int
cfg_parse_text(struct cfg *c, const char *file, char *text, int depth)
{
    int line = 0;
    char *s = text, *nl;

    file = cfg_intern(file);
    while (s && *s) {
        line++;
        nl = strchr(s, '\n');
        if (nl) *nl = '\0';
        if (nl && nl > s && nl[-1] == '\r') nl[-1] = '\0';
        if (cfg_line(c, file, line, s, depth)) return -1;
        s = nl ? nl + 1 : NULL;
    }
    return 0;
}

static int
cfg_parse_file(struct cfg *c, const char *path, int depth)
{
    FILE *f = fopen(path, "rb");
    char *text;
    long n;
    int rc;

    if (!f) {
        snprintf(c->err, sizeof c->err, "%s: %s", path, strerror(errno));
        return -1;
    }
    if (fseek(f, 0, SEEK_END) || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET)) {
        snprintf(c->err, sizeof c->err, "%s: cannot read", path);
        fclose(f);
        return -1;
    }
    text = malloc((size_t)n + 1);
    if (!text || fread(text, 1, (size_t)n, f) != (size_t)n) {
        snprintf(c->err, sizeof c->err, "%s: cannot read", path);
        free(text);
        fclose(f);
        return -1;
    }
    fclose(f);
    text[n] = '\0';
    rc = cfg_parse_text(c, path, text, depth);
    free(text);
    return rc;
}

/* The TLS and PROXY options of one listener: only where they mean
 * something (R5). 0, or -1 with c->err. */
static int
cfg_finish_tls(struct cfg *c, struct listener *l)
{
    int pv = l->proxy, line;
    const char *what;

    l->tls = l->certfile[0] || l->keyfile[0];
    if (l->tls && pv) { /* R5, Mosquitto's text */
        cfg_err(c, l->file,
                l->line_certfile ? l->line_certfile : l->line_keyfile,
                "certfile and keyfile cannot be used with "
                "`enable_proxy_protocol %d`.",
                pv);
        return -1;
    }
    if (l->use_subject && pv) { /* R5 */
        cfg_err(c, l->file, l->line_subject,
                "use_subject_as_username cannot be used with "
                "`enable_proxy_protocol %d`.",
                pv);
        return -1;
    }
    if (l->tls && (!l->certfile[0] || !l->keyfile[0])) {
        cfg_err(c, l->file, l->certfile[0] ? l->line_certfile : l->line_keyfile,
                "listener %u: %s needs %s too", l->port,
                l->certfile[0] ? "certfile" : "keyfile",
                l->certfile[0] ? "keyfile" : "certfile");
        return -1;
    }
    line = l->line_cafile      ? l->line_cafile
           : l->line_capath    ? l->line_capath
           : l->line_crlfile   ? l->line_crlfile
           : l->line_tlsver    ? l->line_tlsver
           : l->line_ciphers   ? l->line_ciphers
           : l->line_ciphers13 ? l->line_ciphers13
           : l->use_subject    ? l->line_subject
                               : 0;
    if (line && !l->tls) {
        cfg_err(c, l->file, line,
                "listener %u: TLS options need certfile and keyfile (a TLS "
                "listener)",
                l->port);
        return -1;
    }
    line = l->line_tls && l->proxy_require_tls      ? l->line_tls
           : l->line_cert && l->require_certificate ? l->line_cert
           : l->line_ident && l->use_identity       ? l->line_ident
                                                    : 0;
    what = line == l->line_tls && l->line_tls ? "proxy_protocol_v2_require_tls"
           : line == l->line_cert && l->line_cert ? "require_certificate"
                                                  : "use_identity_as_username";
    if (line && pv != 2 && (pv == 1 || !l->tls || l->line_tls == line)) {
        cfg_err(c, l->file, line, "listener %u: %s needs %s", l->port, what,
                pv == 1 ? "enable_proxy_protocol 2 (PROXY v1 carries no TLS "
                          "facts)"
                : l->line_tls == line
                    ? "enable_proxy_protocol 2"
                    : "certfile and keyfile (a TLS listener) or "
                      "enable_proxy_protocol 2");
        return -1;
    }
    if (l->use_subject && !l->require_certificate) {
        cfg_err(c, l->file, l->line_subject,
                "listener %u: use_subject_as_username needs "
                "require_certificate true",
                l->port);
        return -1;
    }
    if (l->use_subject && l->use_identity) {
        cfg_err(c, l->file, l->line_subject,
                "listener %u: use_subject_as_username and "
                "use_identity_as_username exclude each other",
                l->port);
        return -1;
    }
    if (l->tls && l->require_certificate && !l->cafile[0] && !l->capath[0]) {
        cfg_err(c, l->file, l->line_cert,
                "listener %u: require_certificate true needs cafile or "
                "capath to verify client certificates",
                l->port);
        return -1;
    }
    return 0;
}

/* The listener rules; the number of TLS listeners, or -1 with c->err. */
static int
cfg_finish_listeners(struct cfg *c)
{
    int n_tls = 0;

    for (uint32_t i = 0; i < c->n_lsn; i++) {
        struct listener *l = &c->lsn[i];
        if (cfg_finish_tls(c, l)) return -1;
        if (l->tls) n_tls++;
        if (l->use_identity && !l->require_certificate) { /* R5 */
            cfg_err(c, l->file, l->line_ident,
                    "listener %u: use_identity_as_username needs "
                    "require_certificate true",
                    l->port);
            return -1;
        }
        if (!l->proxy && (l->n_trusted || l->line_timeout || l->line_local)) {
            cfg_err(c, l->file, l->line,
                    "listener %u: proxy_protocol options without "
                    "enable_proxy_protocol",
                    l->port);
            return -1;
        }
    }
    return n_tls;
}

/* Fills in what depends on several options; -1 with c->err when the
 * combination cannot work. */
static int
cfg_finish(struct cfg *c)
{
    int n_tls;

    if (c->max_connections < 0) c->max_connections = 1024;
    if (c->max_connections == 0) {
        snprintf(c->err, sizeof c->err,
                 "max_connections: 0 leaves no room for any client");
        return -1;
    }
    if (c->max_packet_size == 0)
        c->max_packet_size = c->message_store_bytes / 4;
    if (c->max_packet_size > c->message_store_bytes / 2) {
        snprintf(c->err, sizeof c->err,
                 "max_packet_size: %lld is more than half of "
                 "message_store_bytes (%lld)",
                 (long long)c->max_packet_size,
                 (long long)c->message_store_bytes);
        return -1;
    }
    if (c->max_packet_size < 128) c->max_packet_size = 128;
    if (c->persistence_journal && !c->persistence) {
        snprintf(c->err, sizeof c->err,
                 "persistence_journal true needs persistence true");
        return -1;
    }
    n_tls = cfg_finish_listeners(c);
    if (n_tls < 0) return -1;
    if (c->max_tls_connections < 0) c->max_tls_connections = n_tls ? 32 : 0;
    if (c->max_tls_connections > c->max_connections)
        c->max_tls_connections = c->max_connections;
    if (n_tls && c->max_tls_connections == 0) {
        snprintf(c->err, sizeof c->err,
                 "max_tls_connections: 0 leaves no room for the clients of "
                 "the TLS listeners");
        return -1;
    }
    return 0;
}

/* The whole configuration: the file, then -p listeners, then Mosquitto's
 * defaults that depend on what was given. 0, or -1 with c->err. */
static int
cfg_load(struct cfg *c, const struct cfg_src *src)
{
    int i;

    cfg_defaults(c);
    if (src->path && cfg_parse_file(c, src->path, 0)) return -1;
    for (i = 0; i < src->n_ports; i++)
        if (cfg_listener(c, "-p", 0, src->ports[i],
                         src->path ? NULL : "127.0.0.1"))
            return -1;
    if (c->n_lsn == 0) { /* Mosquitto's local-only mode */
        cfg_listener(c, "(default)", 0, "1883", "127.0.0.1");
        if (c->auth.allow_anonymous < 0) c->auth.allow_anonymous = 1;
        c->lsn[0].auth.allow_anonymous = c->auth.allow_anonymous;
    }
    if (!src->path && c->auth.allow_anonymous < 0) c->auth.allow_anonymous = 1;
    if (c->auth.allow_anonymous < 0) c->auth.allow_anonymous = 0;
    for (i = 0; i < (int)c->n_lsn; i++)
        if (c->lsn[i].auth.allow_anonymous < 0)
            c->lsn[i].auth.allow_anonymous = 0; /* Mosquitto 2 */
    if (src->verbose) c->log_type = LOG_T_ALL;
    return cfg_finish(c);
}

/* Options a reload cannot change: they size the pools or the process. */
static int
cfg_restart_only(const char *name)
{
    static const char *const keys[] = {
        "max_sessions",
        "max_subscriptions",
        "max_topic_nodes",
        "message_store_bytes",
        "max_queued_total",
        "max_packet_size",
        "memory_limit",
        "user",
        "pid_file",
        "per_listener_settings",
        "persistence",
        "persistence_location",
        "persistence_file",
        "persistence_journal",
        "max_tls_connections",
    };
    size_t i;

    for (i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (strcmp(keys[i], name) == 0) return 1;
    return 0;
}

/* Listeners are compared field by field (not their counters). */
static int
cfg_listener_same(const struct listener *a, const struct listener *b)
{
    return a->port == b->port && strcmp(a->bind, b->bind) == 0 &&
           a->proxy == b->proxy &&
           a->proxy_require_tls == b->proxy_require_tls &&
           a->require_certificate == b->require_certificate &&
           a->use_identity == b->use_identity &&
           a->proxy_local_close == b->proxy_local_close &&
           a->proxy_timeout == b->proxy_timeout &&
           a->max_connections == b->max_connections &&
           a->n_trusted == b->n_trusted &&
           memcmp(a->trusted, b->trusted,
                  a->n_trusted * sizeof a->trusted[0]) == 0 &&
           a->use_subject == b->use_subject && a->tls_min == b->tls_min &&
           strcmp(a->certfile, b->certfile) == 0 &&
           strcmp(a->keyfile, b->keyfile) == 0 &&
           strcmp(a->cafile, b->cafile) == 0 &&
           strcmp(a->capath, b->capath) == 0 &&
           strcmp(a->crlfile, b->crlfile) == 0 &&
           strcmp(a->ciphers, b->ciphers) == 0 &&
           strcmp(a->ciphers13, b->ciphers13) == 0;
}

/* ==== [6] PROXY v1/v2 parser ==== */
/* Decodes one PROXY header from the bytes received so far (R13-R31), checks
 * CRC32C, and answers the TLS, username, address-text and trusted-source
 * questions of R6, R10, R30, R40-R43. Pure; uses <string.h> only. */

static const uint8_t pp_sig[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                   0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};
static const uint8_t pp_v1_prefix[6] = {'P', 'R', 'O', 'X', 'Y', ' '};
static const uint16_t pp_addr_len[4] = {0, 12, 36, 216}; /* R27 by family */

/* R55: the reference model's texts (proxy-ref.py), index enum mqx_proxy_err */
static const char *const pp_reasons[] = {
    NULL,
    "bad listener mode",
    "bad v1 signature",
    "v2 signature on a v1 listener",
    "bare LF in v1 line",
    "CR not followed by LF in v1 line",
    "v1 line longer than 107 bytes",
    "non-ASCII v1 line",
    "malformed v1 line",
    "bad address in v1 line",
    "bad port in v1 line",
    "bad v2 signature",
    "v1 header on a v2 listener",
    "bad v2 version",
    "bad v2 command",
    "invalid address family/transport",
    "unsupported family for PROXY command",
    "address block shorter than family requires",
    "v2 header too large",
    "truncated TLV header",
    "TLV overruns header",
    "duplicate TLV",
    "CRC32C TLV length != 4",
    "AUTHORITY too long",
    "UNIQUE_ID longer than 128",
    "SSL TLV shorter than 5 bytes",
    "truncated SSL sub-TLV header",
    "SSL sub-TLV overruns SSL TLV",
    "duplicate SSL sub-TLV",
    "CRC32C mismatch",
};
_Static_assert(sizeof pp_reasons / sizeof pp_reasons[0] ==
                   MQX_PROXY_E_CRC_MISMATCH + 1,
               "pp_reasons must follow enum mqx_proxy_err");

static uint16_t
pp_be16(const uint8_t *p)
{
    return (uint16_t)((unsigned)p[0] << 8 | p[1]);
}

static uint32_t
pp_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
           p[3];
}

/* CRC-32C (Castagnoli, reflected 0x82F63B78), chainable like zlib's crc32:
 * mqx_crc32c(0, "123456789", 9) == 0xE3069283. Nibble table: 64 bytes. */
uint32_t
mqx_crc32c(uint32_t crc, const uint8_t *p, size_t n)
{
    static const uint32_t t[16] = {
        0x00000000, 0x105ec76f, 0x20bd8ede, 0x30e349b1, 0x417b1dbc, 0x5125dad3,
        0x61c69362, 0x7198540d, 0x82f63b78, 0x92a8fc17, 0xa24bb5a6, 0xb21572c9,
        0xc38d26c4, 0xd3d3e1ab, 0xe330a81a, 0xf36e6f75,
    };
    size_t i;

    crc = ~crc;
    for (i = 0; i < n; i++) {
        crc ^= p[i];
        crc = (crc >> 4) ^ t[crc & 15];
        crc = (crc >> 4) ^ t[crc & 15];
    }
    return ~crc;
}

static enum mqx_rc
pp_fail(struct mqx_proxy *out, enum mqx_proxy_err err)
{
    out->err = (uint8_t)err;
    out->reason = pp_reasons[err];
    return MQX_BAD;
}

/* R54: guess what a header-less client sent, from its first bytes. */
static uint8_t
pp_hint(const uint8_t *buf, size_t len)
{
    if (buf[0] == 0x10) return MQX_PROXY_HINT_MQTT;
    if (buf[0] == 0x16) return MQX_PROXY_HINT_TLS;
    if (len >= 4 && memcmp(buf, "GET ", 4) == 0) return MQX_PROXY_HINT_HTTP;
    return MQX_PROXY_HINT_NONE;
}

/* Texts appended to a signature error (proxy-ref.py _hint()); "" for the
 * version mismatches, whose reason already says it. */
const char *
mqx_proxy_hint_str(int hint)
{
    switch (hint) {
    case MQX_PROXY_HINT_MQTT:
        return " (looks like MQTT CONNECT without PROXY header)";
    case MQX_PROXY_HINT_TLS:
        return " (looks like a TLS ClientHello: TLS must be terminated by "
               "the proxy)";
    case MQX_PROXY_HINT_HTTP:
        return " (looks like HTTP without PROXY header)";
    default:
        return "";
    }
}

/* Dotted quad with glibc inet_pton() rules: exactly four decimal octets,
 * 0..255, no leading zeros. 0 ok, -1 bad. */
static int
pp_pton4(const uint8_t *s, size_t n, uint8_t *dst)
{
    uint8_t tmp[4] = {0, 0, 0, 0};
    unsigned val = 0, octets = 0;
    int saw = 0;
    size_t i;

    for (i = 0; i < n; i++) {
        if (s[i] >= '0' && s[i] <= '9') {
            if (saw && val == 0) return -1; /* leading zero */
            val = val * 10 + (unsigned)(s[i] - '0');
            if (val > 255) return -1;
            if (!saw) {
                if (++octets > 4) return -1;
                saw = 1;
            }
        } else if (s[i] == '.' && saw) {
            if (octets == 4) return -1;
            tmp[octets - 1] = (uint8_t)val;
            val = 0;
            saw = 0;
        } else {
            return -1;
        }
    }
    if (octets < 4) return -1;
    tmp[3] = (uint8_t)val;
    memcpy(dst, tmp, 4);
    return 0;
}

static int
pp_hexval(uint8_t c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* IPv6 text with glibc inet_pton() rules (also what proxy-ref.py gets from
 * Python), so v1 acceptance does not depend on the libc. 0 ok, -1 bad. */
static int
pp_pton6(const uint8_t *s, size_t n, uint8_t *dst)
{
    uint8_t tmp[16];
    size_t i = 0, tp = 0, curtok, xd = 0, colon = SIZE_MAX;
    unsigned val = 0;

    memset(tmp, 0, sizeof tmp);
    if (n == 0) return -1;
    if (s[0] == ':') { /* a leading ':' must be "::" */
        if (n < 2 || s[1] != ':') return -1;
        i = 1;
    }
    curtok = i;
    while (i < n) {
        uint8_t c = s[i++];
        int d = pp_hexval(c);

        if (d >= 0) {
            if (xd == 4) return -1;
            val = val << 4 | (unsigned)d;
            xd++;
            continue;
        }
        if (c == ':') {
            curtok = i;
            if (xd == 0) {
                if (colon != SIZE_MAX) return -1; /* second "::" */
                colon = tp;
                continue;
            }
            if (i == n || tp + 2 > 16)
                return -1; /* trailing ':' or too many groups */
            tmp[tp++] = (uint8_t)(val >> 8);
            tmp[tp++] = (uint8_t)val;
            xd = 0;
            val = 0;
            continue;
        }
        if (c == '.' && tp + 4 <= 16 &&
            pp_pton4(s + curtok, n - curtok, tmp + tp) == 0) {
            tp += 4; /* embedded dotted quad ends the text */
            xd = 0;
            break;
        }
        return -1;
    }
    if (xd > 0) {
        if (tp + 2 > 16) return -1;
        tmp[tp++] = (uint8_t)(val >> 8);
        tmp[tp++] = (uint8_t)val;
    }
    if (colon != SIZE_MAX) {
        size_t k = tp - colon;

        if (tp == 16) return -1; /* "::" would stand for no group */
        memmove(tmp + 16 - k, tmp + colon, k);
        memset(tmp + colon, 0, 16 - k - colon);
        tp = 16;
    }
    if (tp != 16) return -1;
    memcpy(dst, tmp, 16);
    return 0;
}

/* R25: decimal, no sign, no leading zero, 1..65535. 0 ok, -1 bad. */
static int
pp_port(const uint8_t *s, size_t n, uint16_t *port)
{
    uint32_t v = 0;
    size_t i;

    if (n == 0 || n > 5 || (n > 1 && s[0] == '0')) return -1;
    for (i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (uint32_t)(s[i] - '0');
    }
    if (v < 1 || v > 65535) return -1;
    *port = (uint16_t)v;
    return 0;
}

/* R23-R26: the complete line buf[0..end) (CRLF excluded), which starts with
 * "PROXY ". Fields split on single spaces, so "a  b" has an empty field. */
static enum mqx_rc
pp_v1_line(const uint8_t *buf, size_t end, struct mqx_proxy *out)
{
    size_t fs[7] = {0}, fe[7] = {0}, nf = 0, start = 0, i;
    int fam;

    for (i = 0; i < end; i++)
        if (buf[i] & 0x80) return pp_fail(out, MQX_PROXY_E_V1_ASCII);
    for (i = 0; i <= end; i++) {
        if (i == end || buf[i] == ' ') {
            if (nf < 7) {
                fs[nf] = start;
                fe[nf] = i;
            }
            nf++;
            start = i + 1;
        }
    }
    /* nf >= 2: the line starts with "PROXY " */
    if (fe[1] - fs[1] == 7 && memcmp(buf + fs[1], "UNKNOWN", 7) == 0) {
        out->command = MQX_PROXY_CMD_UNKNOWN; /* R24: rest ignored */
        return MQX_DONE;
    }
    if (nf != 6 || fe[1] - fs[1] != 4 || memcmp(buf + fs[1], "TCP", 3) != 0)
        return pp_fail(out, MQX_PROXY_E_V1_MALFORMED); /* R25 [V1-16] */
    if (buf[fs[1] + 3] == '4')
        fam = MQX_PROXY_AF_INET;
    else if (buf[fs[1] + 3] == '6')
        fam = MQX_PROXY_AF_INET6;
    else
        return pp_fail(out, MQX_PROXY_E_V1_MALFORMED); /* [V1-10] */
    if (fam == MQX_PROXY_AF_INET) {
        if (pp_pton4(buf + fs[2], fe[2] - fs[2], out->src_addr) < 0 ||
            pp_pton4(buf + fs[3], fe[3] - fs[3], out->dst_addr) < 0)
            return pp_fail(out, MQX_PROXY_E_V1_ADDR); /* [V1-15] */
    } else {
        if (pp_pton6(buf + fs[2], fe[2] - fs[2], out->src_addr) < 0 ||
            pp_pton6(buf + fs[3], fe[3] - fs[3], out->dst_addr) < 0)
            return pp_fail(out, MQX_PROXY_E_V1_ADDR);
    }
    if (pp_port(buf + fs[4], fe[4] - fs[4], &out->src_port) < 0 ||
        pp_port(buf + fs[5], fe[5] - fs[5], &out->dst_port) < 0)
        return pp_fail(out, MQX_PROXY_E_V1_PORT); /* [V1-12..14] */
    out->command = MQX_PROXY_CMD_PROXY;
    out->family = (uint8_t)fam;
    return MQX_DONE;
}

/* v1: the signature is checked byte by byte (R16), the 107-byte limit at
 * once (R18); the fields only when CRLF has arrived [V1-07]. */
static enum mqx_rc
pp_v1(const uint8_t *buf, size_t len, struct mqx_proxy *out, size_t *used)
{
    size_t n = len < 6 ? len : 6, lim, i;
    enum mqx_rc rc;

    if (memcmp(buf, pp_v1_prefix, n) != 0) {
        if (memcmp(buf, pp_sig, len < 12 ? len : 12) == 0) { /* R13 */
            out->hint = MQX_PROXY_HINT_V2_ON_V1;
            return pp_fail(out, MQX_PROXY_E_V2_ON_V1);
        }
        out->hint = pp_hint(buf, len); /* R54 */
        return pp_fail(out, MQX_PROXY_E_V1_SIG);
    }
    if (len < 6) return MQX_MORE;
    lim = len < MQX_PROXY_V1_MAX ? len : MQX_PROXY_V1_MAX;
    for (i = 6; i < lim; i++) {
        if (buf[i] == '\n')
            return pp_fail(out, MQX_PROXY_E_V1_BARE_LF); /* R23 [V1-09] */
        if (buf[i] == '\r') break;
    }
    if (i == lim) /* no CR yet */
        return len >= MQX_PROXY_V1_MAX ? pp_fail(out, MQX_PROXY_E_V1_LONG)
                                       : MQX_MORE;
    if (i + 1 >= MQX_PROXY_V1_MAX)
        return pp_fail(out, MQX_PROXY_E_V1_LONG); /* LF would be byte 108 */
    if (i + 1 >= len) return MQX_MORE;
    if (buf[i + 1] != '\n') return pp_fail(out, MQX_PROXY_E_V1_CR); /* R23 */
    rc = pp_v1_line(buf, i, out);
    if (rc == MQX_DONE) *used = i + 2; /* R17 */
    return rc;
}

static enum mqx_rc
pp_dup(struct mqx_proxy *out, enum mqx_proxy_err err, uint8_t type)
{
    static const char *const tlv[] = {
        "duplicate TLV 0x02", "duplicate TLV 0x03", "duplicate TLV 0x05",
        "duplicate TLV 0x20"};
    static const char *const sub[] = {
        "duplicate SSL sub-TLV 0x21", "duplicate SSL sub-TLV 0x22",
        "duplicate SSL sub-TLV 0x23", "duplicate SSL sub-TLV 0x24",
        "duplicate SSL sub-TLV 0x25", "duplicate SSL sub-TLV 0x26",
        "duplicate SSL sub-TLV 0x27"};

    pp_fail(out, err);
    if (err == MQX_PROXY_E_SSL_SUB_DUP)
        out->reason = sub[type - MQX_PP2_SUBTYPE_SSL_VERSION];
    else
        out->reason = tlv[type == 0x02   ? 0
                          : type == 0x03 ? 1
                          : type == 0x05 ? 2
                                         : 3];
    return MQX_BAD;
}

/* R29: the SSL TLV value v[0..n), n >= 5; sub-TLVs must fit inside it. */
static enum mqx_rc
pp_ssl(const uint8_t *v, size_t n, struct mqx_proxy *out)
{
    struct mqx_proxy_tls *tls = &out->tls;
    size_t pos = 5;

    tls->present = 1;
    tls->client = v[0];
    tls->verify = pp_be32(v + 1);
    while (pos < n) {
        struct mqx_str *slot = NULL;
        uint8_t t;
        size_t vl;

        if (n - pos < 3) return pp_fail(out, MQX_PROXY_E_SSL_SUB_TRUNC);
        t = v[pos];
        vl = pp_be16(v + pos + 1);
        if (vl > n - pos - 3)
            return pp_fail(out, MQX_PROXY_E_SSL_SUB_OVERRUN); /* [V2-24] */
        switch (t) {
        case MQX_PP2_SUBTYPE_SSL_VERSION:
            slot = &tls->version;
            break;
        case MQX_PP2_SUBTYPE_SSL_CN:
            slot = &tls->cn;
            break;
        case MQX_PP2_SUBTYPE_SSL_CIPHER:
            slot = &tls->cipher;
            break;
        case MQX_PP2_SUBTYPE_SSL_SIG_ALG:
            slot = &tls->sig_alg;
            break;
        case MQX_PP2_SUBTYPE_SSL_KEY_ALG:
            slot = &tls->key_alg;
            break;
        case MQX_PP2_SUBTYPE_SSL_GROUP:
            slot = &tls->group;
            break;
        case MQX_PP2_SUBTYPE_SSL_SIG_SCHEME:
            slot = &tls->sig_scheme;
            break;
        case MQX_PP2_SUBTYPE_SSL_CLIENT_CERT: /* skipped, length kept */
            tls->has_client_cert = 1;
            tls->client_cert_len = (uint32_t)vl;
            break;
        default: /* unknown sub-types are skipped */
            break;
        }
        if (slot != NULL) {
            if (slot->p != NULL) return pp_dup(out, MQX_PROXY_E_SSL_SUB_DUP, t);
            slot->p = v + pos + 3;
            slot->len = (uint32_t)vl;
        }
        pos += 3 + vl;
    }
    return MQX_DONE;
}

/* R28: walk the TLVs in buf[pos..end) as far as buf[0..avail) allows, so a
 * bad TLV is refused as soon as it has arrived (R16); MQX_MORE if the
 * walk is fine so far. A CRC32C value position goes to *crc_at. */
static enum mqx_rc
pp_tlvs(const uint8_t *buf, size_t pos, size_t avail, size_t end,
        struct mqx_proxy *out, size_t *crc_at)
{
    unsigned seen = 0; /* R28: one bit per type that must not repeat */

    while (pos < end) {
        uint8_t t;
        size_t vl, vs;
        unsigned bit;
        struct mqx_str v;

        if (end - pos < 3)
            return pp_fail(out, MQX_PROXY_E_TLV_TRUNC); /* [V2-21] */
        if (avail - pos < 3) return MQX_MORE;
        t = buf[pos];
        vl = pp_be16(buf + pos + 1);
        vs = pos + 3;
        if (vl > end - vs)
            return pp_fail(out, MQX_PROXY_E_TLV_OVERRUN); /* [V2-20, 22] */
        bit = t == MQX_PP2_TYPE_AUTHORITY   ? 1u
              : t == MQX_PP2_TYPE_CRC32C    ? 2u
              : t == MQX_PP2_TYPE_UNIQUE_ID ? 4u
              : t == MQX_PP2_TYPE_SSL       ? 8u
                                            : 0u;
        if (seen & bit)
            return pp_dup(out, MQX_PROXY_E_TLV_DUP, t); /* [V2-25] */
        seen |= bit;
        if (t == MQX_PP2_TYPE_CRC32C && vl != 4)
            return pp_fail(out, MQX_PROXY_E_CRC_LEN); /* [V2-35] */
        if (t == MQX_PP2_TYPE_AUTHORITY && vl > MQX_PP2_AUTHORITY_MAX)
            return pp_fail(out, MQX_PROXY_E_AUTHORITY_LONG);
        if (t == MQX_PP2_TYPE_UNIQUE_ID && vl > MQX_PP2_UNIQUE_ID_MAX)
            return pp_fail(out, MQX_PROXY_E_UNIQUE_ID_LONG);
        if (t == MQX_PP2_TYPE_SSL && vl < 5)
            return pp_fail(out, MQX_PROXY_E_SSL_SHORT); /* [V2-23] */
        if (avail - vs < vl) return MQX_MORE;
        v.p = buf + vs;
        v.len = (uint32_t)vl;
        switch (t) {
        case MQX_PP2_TYPE_ALPN: /* may repeat: the last one is kept */
            out->alpn = v;
            break;
        case MQX_PP2_TYPE_AUTHORITY:
            out->authority = v;
            break;
        case MQX_PP2_TYPE_CRC32C:
            *crc_at = vs;
            break;
        case MQX_PP2_TYPE_UNIQUE_ID:
            out->unique_id = v;
            break;
        case MQX_PP2_TYPE_SSL:
            if (pp_ssl(v.p, vl, out) != MQX_DONE) return MQX_BAD;
            break;
        default: /* NOOP, NETNS, 0xE0-0xFF, unassigned: skipped [V2-36] */
            break;
        }
        pos = vs + vl;
    }
    return MQX_DONE;
}

/* v2 (R27-R31): fixed part checked as bytes 1-16 arrive (R16), then the
 * body; TLVs are validated for LOCAL too (R31). */
static enum mqx_rc
pp_v2(const uint8_t *buf, size_t len, struct mqx_proxy *out, size_t *used)
{
    static const uint8_t zero4[4] = {0, 0, 0, 0};
    size_t total, avail, alen, crc_at = 0;
    unsigned cmd, fam;
    enum mqx_rc rc;

    if (memcmp(buf, pp_sig, len < 12 ? len : 12) != 0) {
        if (memcmp(buf, pp_v1_prefix, len < 6 ? len : 6) == 0) { /* R13 */
            out->hint = MQX_PROXY_HINT_V1_ON_V2;
            return pp_fail(out, MQX_PROXY_E_V1_ON_V2);
        }
        out->hint = pp_hint(buf, len); /* R54 */
        return pp_fail(out, MQX_PROXY_E_V2_SIG);
    }
    if (len < 13) return MQX_MORE;
    if (buf[12] >> 4 != 2)
        return pp_fail(out, MQX_PROXY_E_V2_VERSION); /* [V2-14] */
    cmd = buf[12] & 15u;
    if (cmd > 1) return pp_fail(out, MQX_PROXY_E_V2_COMMAND); /* [V2-15] */
    if (len < 14) return MQX_MORE;
    fam = (unsigned)buf[13] >> 4;
    if (fam > 3 || (buf[13] & 15) > 2)
        return pp_fail(out, MQX_PROXY_E_V2_FAMILY); /* [V2-12] */
    /* R27 [V2-10, V2-11]: known at byte 14, so refused here (R16) */
    if (cmd == MQX_PROXY_CMD_PROXY && (fam == 0 || (buf[13] & 15) != 1))
        return pp_fail(out, MQX_PROXY_E_V2_PROXY_FAMILY);
    if (len < 16) return MQX_MORE;
    total = 16 + (size_t)pp_be16(buf + 14);
    if (total > MQX_PROXY_V2_MAX) { /* R19 [V2-18]: before any body byte */
        pp_fail(out, MQX_PROXY_E_V2_TOO_LARGE);
        return MQX_BIG;
    }
    alen = pp_addr_len[fam];
    if (total - 16 < alen)
        return pp_fail(out, MQX_PROXY_E_V2_ADDR_SHORT); /* [V2-05,16,17] */
    avail = len < total ? len : total;
    if (avail < 16 + alen) return MQX_MORE;
    rc = pp_tlvs(buf, 16 + alen, avail, total, out, &crc_at);
    if (rc != MQX_DONE) return rc;
    if (crc_at != 0) { /* R28: CRC over the header, its value as zeros */
        uint32_t crc = mqx_crc32c(0, buf, crc_at);

        crc = mqx_crc32c(crc, zero4, 4);
        crc = mqx_crc32c(crc, buf + crc_at + 4, total - crc_at - 4);
        if (crc != pp_be32(buf + crc_at))
            return pp_fail(out, MQX_PROXY_E_CRC_MISMATCH); /* [V2-32, 33] */
        out->crc_verified = 1;
    }
    out->command = (uint8_t)cmd;
    out->fam_byte = buf[13];
    if (cmd == MQX_PROXY_CMD_PROXY) { /* R30; LOCAL skips the block (R31) */
        const uint8_t *a = buf + 16;
        const uint8_t *z;

        out->family = (uint8_t)fam;
        if (fam == MQX_PROXY_AF_INET) {
            memcpy(out->src_addr, a, 4);
            memcpy(out->dst_addr, a + 4, 4);
            out->src_port = pp_be16(a + 8);
            out->dst_port = pp_be16(a + 10);
        } else if (fam == MQX_PROXY_AF_INET6) {
            memcpy(out->src_addr, a, 16);
            memcpy(out->dst_addr, a + 16, 16);
            out->src_port = pp_be16(a + 32);
            out->dst_port = pp_be16(a + 34);
        } else { /* UNIX: two 108-byte paths, each up to its first NUL */
            z = memchr(a, 0, 108);
            out->src_path.p = a;
            out->src_path.len = (uint32_t)(z != NULL ? z - a : 108);
            z = memchr(a + 108, 0, 108);
            out->dst_path.p = a + 108;
            out->dst_path.len = (uint32_t)(z != NULL ? z - (a + 108) : 108);
        }
    }
    *used = total; /* R17 */
    return MQX_DONE;
}

/* Decodes a PROXY header of the given version (the listener's
 * enable_proxy_protocol) from buf[0..len), the whole prefix received so
 * far (R15). MQX_DONE: *used = header length, buf + *used goes to MQTT
 * untouched (R17). MQX_MORE: may still become valid. MQX_BAD / MQX_BIG
 * (over MQX_PROXY_V2_MAX): close; out->reason and out->hint say why. Reads
 * nothing at or past buf[len]. */
enum mqx_rc
mqx_proxy_parse(const uint8_t *buf, size_t len, int version,
                struct mqx_proxy *out, size_t *used)
{
    memset(out, 0, sizeof *out);
    *used = 0;
    out->version = (uint8_t)version;
    if (version != 1 && version != 2) return pp_fail(out, MQX_PROXY_E_MODE);
    if (len == 0) return MQX_MORE;
    return version == 1 ? pp_v1(buf, len, out, used)
                        : pp_v2(buf, len, out, used);
}

/* R40: an SSL TLV is present and its client byte has PP2_CLIENT_SSL. */
int
mqx_proxy_tls_used(const struct mqx_proxy *pp)
{
    return pp->tls.present && (pp->tls.client & MQX_PP2_CLIENT_SSL) != 0;
}

/* R41: TLS used, a certificate on this connection or its resumed session
 * [V2-29], and verify == 0 [V2-27, V2-28]. */
int
mqx_proxy_cert_ok(const struct mqx_proxy *pp)
{
    return mqx_proxy_tls_used(pp) &&
           (pp->tls.client &
            (MQX_PP2_CLIENT_CERT_CONN | MQX_PP2_CLIENT_CERT_SESS)) != 0 &&
           pp->tls.verify == 0;
}

/* R40-R42 whatever the command: what the broker runs at header time for
 * PROXY and at CONNECT time for LOCAL (R33). */
enum mqx_proxy_verdict
mqx_proxy_tls_check(const struct mqx_proxy *pp, int require_tls,
                    int require_cert)
{
    if (require_tls && !mqx_proxy_tls_used(pp))
        return MQX_PROXY_NO_TLS; /* [V2-30] */
    if (require_cert && !mqx_proxy_cert_ok(pp))
        return MQX_PROXY_NO_CERT; /* R42: implies TLS used */
    return MQX_PROXY_ACCEPT;
}

/* Header-time decision: LOCAL is deferred to CONNECT (R33) [V2-07]. */
enum mqx_proxy_verdict
mqx_proxy_policy(const struct mqx_proxy *pp, int require_tls, int require_cert)
{
    if (pp->command == MQX_PROXY_CMD_LOCAL) return MQX_PROXY_DEFER;
    return mqx_proxy_tls_check(pp, require_tls, require_cert);
}

/* Texts of the vectors' policy column; NO_TLS keeps Mosquitto's words. */
const char *
mqx_proxy_verdict_str(enum mqx_proxy_verdict v)
{
    switch (v) {
    case MQX_PROXY_ACCEPT:
        return "accept";
    case MQX_PROXY_DEFER:
        return "defer";
    case MQX_PROXY_NO_TLS:
        return "client did not connect using TLS";
    case MQX_PROXY_NO_CERT:
        return "client did not provide a valid certificate";
    }
    return "?";
}

/* Strict UTF-8 (RFC 3629: no overlong forms, surrogates or > U+10FFFF)
 * without U+0000, as MQTT strings require [MQTT-1.5.4-1, 1.5.4-2]. */
static int
pp_utf8_ok(const uint8_t *s, size_t n)
{
    size_t i = 0;

    while (i < n) {
        uint8_t c = s[i];
        size_t k, j;

        if (c < 0x80) {
            if (c == 0) return 0;
            i++;
            continue;
        }
        if (c < 0xc2 || c > 0xf4) return 0;
        k = c < 0xe0 ? 1 : c < 0xf0 ? 2 : 3;
        if (n - i <= k) return 0;
        for (j = 1; j <= k; j++)
            if ((s[i + j] & 0xc0) != 0x80) return 0;
        if ((c == 0xe0 && s[i + 1] < 0xa0) || (c == 0xed && s[i + 1] > 0x9f) ||
            (c == 0xf0 && s[i + 1] < 0x90) || (c == 0xf4 && s[i + 1] > 0x8f))
            return 0;
        i += k + 1;
    }
    return 1;
}

/* R43: the username for use_identity_as_username: the CN when the
 * certificate is OK and the CN is a non-empty MQTT string (at most 65535
 * bytes by its 16-bit length). 1: *user set; 0: CONNACK 0x86 / 4. */
int
mqx_proxy_cn_username(const struct mqx_proxy *pp, struct mqx_str *user)
{
    const struct mqx_str *cn = &pp->tls.cn;

    if (!mqx_proxy_cert_ok(pp) || cn->p == NULL || cn->len == 0 ||
        !pp_utf8_ok(cn->p, cn->len))
        return 0; /* [V2-28, V2-37, V2-38] */
    *user = *cn;
    return 1;
}

/* Bounded text writer: an overflow makes the whole result "". */
struct pp_w {
    char *p;
    size_t cap, n;
    int over;
};

static void
pp_putc(struct pp_w *w, char c)
{
    if (w->n + 1 < w->cap)
        w->p[w->n++] = c;
    else
        w->over = 1;
}

static void
pp_putu(struct pp_w *w, unsigned v, unsigned base)
{
    char d[8];
    size_t k = 0;

    do {
        d[k++] = "0123456789abcdef"[v % base];
        v /= base;
    } while (v != 0 && k < sizeof d);
    while (k > 0)
        pp_putc(w, d[--k]);
}

static size_t
pp_end(struct pp_w *w)
{
    if (w->cap == 0) return 0;
    if (w->over) w->n = 0;
    w->p[w->n] = '\0';
    return w->n;
}

static int
pp_v4mapped(const uint8_t *a)
{
    static const uint8_t pfx[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

    return memcmp(a, pfx, 12) == 0;
}

static void
pp_put4(struct pp_w *w, const uint8_t *a)
{
    int i;

    for (i = 0; i < 4; i++) {
        if (i > 0) pp_putc(w, '.');
        pp_putu(w, a[i], 10);
    }
}

/* RFC 5952 text (as Python's ipaddress): lower case, the first longest
 * run of two or more zero groups as "::". */
static void
pp_put6(struct pp_w *w, const uint8_t *a)
{
    unsigned grp[8];
    size_t i, best = 8, best_n = 1, run = 0, run_n = 0; /* best 8: none */

    for (i = 0; i < 8; i++) {
        grp[i] = (unsigned)a[2 * i] << 8 | a[2 * i + 1];
        if (grp[i] != 0) {
            run_n = 0;
            continue;
        }
        if (run_n++ == 0) run = i;
        if (run_n > best_n) {
            best = run;
            best_n = run_n;
        }
    }
    for (i = 0; i < 8; i++) {
        if (i == best) {
            pp_putc(w, ':');
            pp_putc(w, ':');
            i += best_n - 1;
            continue;
        }
        if (i > 0 && i != best + best_n) pp_putc(w, ':');
        pp_putu(w, grp[i], 16);
    }
}

/* "192.0.2.5:6275" or "2001:db8::5:6275" (no brackets: the vectors' and
 * Mosquitto's log form); IPv4-mapped IPv6 as IPv4 (R30) [V2-03]. Returns
 * the length written to dst (NUL-terminated), 0 if it does not fit or the
 * family is not INET/INET6. MQX_PROXY_ADDRSTRLEN is always enough. */
size_t
mqx_proxy_fmt_addr(char *dst, size_t cap, int family, const uint8_t *addr,
                   uint16_t port)
{
    struct pp_w w = {dst, cap, 0, 0};

    if (family == MQX_PROXY_AF_INET)
        pp_put4(&w, addr);
    else if (family == MQX_PROXY_AF_INET6 && pp_v4mapped(addr))
        pp_put4(&w, addr + 12);
    else if (family == MQX_PROXY_AF_INET6)
        pp_put6(&w, addr);
    else
        w.over = 1;
    pp_putc(&w, ':');
    pp_putu(&w, port, 10);
    return pp_end(&w);
}

/* R56: bytes outside 0x20..0x7e and '\' as \xHH, whole units only: on
 * overflow w->over is set and the text stops before the unit. */
static void
pp_put_esc(struct pp_w *w, const uint8_t *p, size_t n)
{
    size_t i;

    for (i = 0; i < n && !w->over; i++) {
        uint8_t c = p[i];

        if (c >= 0x20 && c <= 0x7e && c != '\\') {
            pp_putc(w, (char)c);
        } else if (w->n + 4 < w->cap) {
            pp_putc(w, '\\');
            pp_putc(w, 'x');
            pp_putc(w, "0123456789abcdef"[c >> 4]);
            pp_putc(w, "0123456789abcdef"[c & 15]);
        } else {
            w->over = 1;
        }
    }
}

/* R51, R56: a TLV value (SNI, ALPN, CN, cipher...) as printable text for a
 * log line, cut at a whole unit if dst is short. Returns the length. */
size_t
mqx_proxy_escape(char *dst, size_t cap, struct mqx_str s)
{
    struct pp_w w = {dst, cap, 0, 0};

    if (s.p != NULL) pp_put_esc(&w, s.p, s.len);
    w.over = 0; /* keep the cut text */
    return pp_end(&w);
}

/* One endpoint of a PROXY header; UNIX paths as "<path>:0" (R30),
 * escaped (R56). */
static size_t
pp_fmt_end(char *dst, size_t cap, const struct mqx_proxy *pp, int src)
{
    struct pp_w w = {dst, cap, 0, 0};
    const struct mqx_str *path = src ? &pp->src_path : &pp->dst_path;

    if (pp->command != MQX_PROXY_CMD_PROXY) {
        pp_end(&w);
        return 0; /* LOCAL, UNKNOWN: the caller uses the real peer */
    }
    if (pp->family != MQX_PROXY_AF_UNIX)
        return mqx_proxy_fmt_addr(dst, cap, pp->family,
                                  src ? pp->src_addr : pp->dst_addr,
                                  src ? pp->src_port : pp->dst_port);
    pp_put_esc(&w, path->p, path->len);
    pp_putc(&w, ':');
    pp_putc(&w, '0');
    return pp_end(&w);
}

/* R26, R30: the client address text after MQX_DONE; 0 (and "") for LOCAL
 * and UNKNOWN, whose client is the real peer (R24, R31). */
size_t
mqx_proxy_fmt_client(char *dst, size_t cap, const struct mqx_proxy *pp)
{
    return pp_fmt_end(dst, cap, pp, 1);
}

/* R26, R46: the header's destination, for DEBUG logs only. */
size_t
mqx_proxy_fmt_dest(char *dst, size_t cap, const struct mqx_proxy *pp)
{
    return pp_fmt_end(dst, cap, pp, 0);
}

/* R6: "a.b.c.d[/n]" or "ipv6[/n]" from s[0..len) (not NUL-terminated);
 * a bare address is /32 or /128. ::ffff:0:0/96 and longer become IPv4
 * (R10). Host bits are cleared and flagged in out->loose so the config
 * can warn. MQX_DONE or MQX_BAD. */
enum mqx_rc
mqx_proxy_cidr_parse(const char *s, size_t len, struct mqx_cidr *out)
{
    const uint8_t *u = (const uint8_t *)s;
    size_t alen = 0, i;
    unsigned bits = 0, max;
    int v6 = 0;

    memset(out, 0, sizeof *out);
    while (alen < len && u[alen] != '/') {
        if (u[alen] == ':') v6 = 1;
        alen++;
    }
    if (v6 ? pp_pton6(u, alen, out->addr) < 0
           : pp_pton4(u, alen, out->addr) < 0)
        return MQX_BAD;
    max = v6 ? 128 : 32;
    if (alen == len) {
        bits = max;
    } else { /* decimal, no sign, no leading zero */
        size_t n = len - alen - 1;

        if (n == 0 || n > 3 || (n > 1 && u[alen + 1] == '0')) return MQX_BAD;
        for (i = alen + 1; i < len; i++) {
            if (u[i] < '0' || u[i] > '9') return MQX_BAD;
            bits = bits * 10 + (unsigned)(u[i] - '0');
        }
        if (bits > max) return MQX_BAD;
    }
    if (v6 && bits >= 96 && pp_v4mapped(out->addr)) {
        memmove(out->addr, out->addr + 12, 4);
        memset(out->addr + 4, 0, 12);
        bits -= 96;
        v6 = 0;
    }
    out->family = v6 ? MQX_PROXY_AF_INET6 : MQX_PROXY_AF_INET;
    out->bits = (uint8_t)bits;
    for (i = 0; i < 16; i++) {
        unsigned keep = bits >= 8 * (i + 1) ? 8
                        : bits > 8 * i      ? bits - 8 * (unsigned)i
                                            : 0;
        uint8_t mask = (uint8_t)(0xff00u >> keep);

        if (out->addr[i] & (uint8_t)~mask) out->loose = 1;
        out->addr[i] &= mask;
    }
    return MQX_DONE;
}

/* R30, R10: the family of addr (4 or 16 bytes) with IPv4-mapped IPv6
 * folded to IPv4; *sig points at its 4 or 16 significant bytes. Key
 * per-IP state (bans, limits) on this, as the text form does [V2-03]. */
int
mqx_proxy_addr_norm(int family, const uint8_t *addr, const uint8_t **sig)
{
    *sig = addr;
    if (family == MQX_PROXY_AF_INET6 && pp_v4mapped(addr)) {
        *sig = addr + 12;
        return MQX_PROXY_AF_INET;
    }
    return family;
}

/* R10: does addr (4 or 16 bytes of the given family) fall in c? An
 * IPv4-mapped IPv6 address is matched as IPv4. */
int
mqx_cidr_match(const struct mqx_cidr *c, int family, const uint8_t *addr)
{
    unsigned full = c->bits / 8u, rest = c->bits % 8u;

    family = mqx_proxy_addr_norm(family, addr, &addr);
    if (family != c->family) return 0;
    if (memcmp(addr, c->addr, full) != 0) return 0;
    if (rest == 0) return 1;
    return ((addr[full] ^ c->addr[full]) & (uint8_t)(0xff00u >> rest)) == 0;
}

/* R10: 1 if addr is in any of v[0..n). */
int
mqx_cidr_match_list(const struct mqx_cidr *v, size_t n, int family,
                    const uint8_t *addr)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (mqx_cidr_match(&v[i], family, addr)) return 1;
    return 0;
}

/* ==== [7] MQTT codec: decode and encode, no I/O ==== */
/* Pure functions over (buf, len) for MQTT 3.1 and 3.1.1. Decoders return
 * enum mqx_rc and slices into buf; encoders fill the caller's buffer and
 * return the length. */

/* Fixed header: type byte, then Remaining Length as a 1..4 byte varint
 * [MQTT-2.2.3]. Reads nothing at or past buf[len]. */
enum mqx_rc
mqx_mqtt_header(const uint8_t *buf, size_t len, size_t *used, uint32_t *rl)
{
    uint32_t v = 0;
    size_t i;

    for (i = 1; i < len && i <= 4; i++) {
        v |= (uint32_t)(buf[i] & 0x7f) << (7 * (i - 1));
        if ((buf[i] & 0x80) == 0) {
            *used = i + 1;
            *rl = v;
            return MQX_DONE;
        }
    }
    return i > 4 ? MQX_BAD : MQX_MORE;
}

/* One whole packet: MQX_BIG at once when the header announces more than
 * max bytes in all, before the body arrives. */
enum mqx_rc
mqx_mqtt_frame(const uint8_t *buf, size_t len, uint32_t max,
               struct mqx_packet *pk, size_t *used)
{
    size_t hl;
    uint32_t rl;
    enum mqx_rc rc;

    if (len == 0) return MQX_MORE;
    if ((buf[0] >> 4) == 0) return MQX_BAD; /* 15: 5.0's AUTH */
    if ((buf[0] >> 4) != MQX_PUBLISH) {     /* [MQTT-2.2.2-1], [MQTT-2.2.2-2] */
        unsigned t = buf[0] >> 4;
        unsigned want =
            t == MQX_PUBREL || t == MQX_SUBSCRIBE || t == MQX_UNSUBSCRIBE ? 2
                                                                          : 0;
        if ((buf[0] & 0x0fu) != want) return MQX_BAD;
    }
    rc = mqx_mqtt_header(buf, len, &hl, &rl);
    if (rc != MQX_DONE) return rc;
    if ((uint64_t)hl + rl > max) return MQX_BIG;
    if (len - hl < rl) return MQX_MORE;
    pk->type = (uint8_t)(buf[0] >> 4);
    pk->flags = (uint8_t)(buf[0] & 0x0f);
    pk->body = buf + hl;
    pk->len = rl;
    *used = hl + rl;
    return MQX_DONE;
}

/* UTF-8 as MQTT requires [MQTT-1.5.3-1..3]: well formed, no surrogates,
 * no U+0000. Returns 1 when valid. */
int
mqx_utf8_valid(const uint8_t *p, size_t n)
{
    size_t i = 0;

    while (i < n) {
        uint8_t b = p[i];
        uint32_t cp;
        size_t k, j;
        if (b == 0) return 0;
        if (b < 0x80) {
            i++;
            continue;
        }
        if (b >= 0xc2 && b <= 0xdf) {
            k = 1;
            cp = b & 0x1fu;
        } else if (b >= 0xe0 && b <= 0xef) {
            k = 2;
            cp = b & 0x0fu;
        } else if (b >= 0xf0 && b <= 0xf4) {
            k = 3;
            cp = b & 0x07u;
        } else {
            return 0;
        }
        if (n - i - 1 < k) return 0;
        for (j = 1; j <= k; j++) {
            if ((p[i + j] & 0xc0) != 0x80) return 0;
            cp = cp << 6 | (p[i + j] & 0x3fu);
        }
        if ((k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) ||
            cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += k + 1;
    }
    return 1;
}

/* A topic name: not empty, no wildcards [MQTT-4.7.1-1], valid UTF-8. */
int
mqx_topic_valid(const uint8_t *p, size_t n)
{
    size_t i;

    if (n == 0) return 0;
    for (i = 0; i < n; i++)
        if (p[i] == '+' || p[i] == '#') return 0;
    return mqx_utf8_valid(p, n);
}

/* A filter: not empty; '#' alone in the last level [MQTT-4.7.1-2]; '+'
 * alone in its level [MQTT-4.7.1-3]; valid UTF-8. */
int
mqx_filter_valid(const uint8_t *p, size_t n)
{
    size_t i;

    if (n == 0) return 0;
    for (i = 0; i < n; i++) {
        int first = i == 0 || p[i - 1] == '/';
        int last = i + 1 == n || p[i + 1] == '/';
        if (p[i] == '+' && !(first && last)) return 0;
        if (p[i] == '#' && !(first && i + 1 == n)) return 0;
    }
    return mqx_utf8_valid(p, n);
}

unsigned
mqx_topic_levels(const uint8_t *p, size_t n)
{
    unsigned k = 1;
    size_t i;

    for (i = 0; i < n; i++)
        if (p[i] == '/') k++;
    return k;
}

/* Does filter f match topic t? Topics starting with '$' are not matched by
 * a first level '+' or '#' [MQTT-4.7.2-1]. */
int
mqx_topic_match(const uint8_t *f, size_t fn, const uint8_t *t, size_t tn)
{
    size_t fi = 0, ti = 0;

    if (tn > 0 && t[0] == '$' && fn > 0 && (f[0] == '+' || f[0] == '#'))
        return 0;
    for (;;) {
        size_t fe = fi, te = ti;
        while (fe < fn && f[fe] != '/')
            fe++;
        while (te < tn && t[te] != '/')
            te++;
        if (fe - fi == 1 && f[fi] == '#') return 1; /* also the parent */
        if (!(fe - fi == 1 && f[fi] == '+') &&
            !(fe - fi == te - ti && memcmp(f + fi, t + ti, fe - fi) == 0))
            return 0;
        if (fe >= fn) return te >= tn;
        fi = fe + 1;
        if (te >= tn) /* topic ended: only a last "/#" still matches */
            return fn - fi == 1 && f[fi] == '#';
        ti = te + 1;
    }
}

/* ---- MQTT 5 properties [MQTT-2.2.2] ---- */

/* A Variable Byte Integer [MQTT-1.5.5]: at most 4 bytes, minimal or not. */
static uint32_t
rd_varint(struct rd *r)
{
    uint32_t v = 0;
    int i;

    for (i = 0; i < 4; i++) {
        uint8_t b = rd_u8(r);
        v |= (uint32_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80)) return v;
    }
    r->bad = 1;
    return 0;
}

size_t
mqx_varint_size(uint32_t v)
{
    return mqx_mqtt_rl_size(v);
}

size_t
mqx_enc_varint(uint8_t *p, uint32_t v)
{
    return mqx_mqtt_enc_rl(p, v);
}

#define PB(id) ((uint64_t)1 << (id))
/* The properties each place may hold [MQTT-2.2.2.2], table 2-4. */
static const uint64_t prop_allowed[] = {
    [MQX_PW_CONNECT] = PB(MQX_P_SESSION_EXPIRY) | PB(MQX_P_RECEIVE_MAX) |
                       PB(MQX_P_MAX_PACKET) | PB(MQX_P_ALIAS_MAX) |
                       PB(MQX_P_REQ_RESPONSE) | PB(MQX_P_REQ_PROBLEM) |
                       PB(MQX_P_USER) | PB(MQX_P_AUTH_METHOD) |
                       PB(MQX_P_AUTH_DATA),
    [MQX_PW_WILL] = PB(MQX_P_WILL_DELAY) | PB(MQX_P_PAYLOAD_FORMAT) |
                    PB(MQX_P_MESSAGE_EXPIRY) | PB(MQX_P_CONTENT_TYPE) |
                    PB(MQX_P_RESPONSE_TOPIC) | PB(MQX_P_CORRELATION) |
                    PB(MQX_P_USER),
    [MQX_PW_PUBLISH] = PB(MQX_P_PAYLOAD_FORMAT) | PB(MQX_P_MESSAGE_EXPIRY) |
                       PB(MQX_P_ALIAS) | PB(MQX_P_RESPONSE_TOPIC) |
                       PB(MQX_P_CORRELATION) | PB(MQX_P_USER) |
                       PB(MQX_P_SUB_ID) | PB(MQX_P_CONTENT_TYPE),
    [MQX_PW_ACK] = PB(MQX_P_REASON) | PB(MQX_P_USER),
    [MQX_PW_SUBSCRIBE] = PB(MQX_P_SUB_ID) | PB(MQX_P_USER),
    [MQX_PW_UNSUBSCRIBE] = PB(MQX_P_USER),
    [MQX_PW_DISCONNECT] = PB(MQX_P_SESSION_EXPIRY) | PB(MQX_P_REASON) |
                          PB(MQX_P_USER) | PB(MQX_P_SERVER_REF),
    [MQX_PW_AUTH] = PB(MQX_P_AUTH_METHOD) | PB(MQX_P_AUTH_DATA) |
                    PB(MQX_P_REASON) | PB(MQX_P_USER),
    [MQX_PW_CONNACK] =
        PB(MQX_P_SESSION_EXPIRY) | PB(MQX_P_ASSIGNED_ID) |
        PB(MQX_P_SERVER_KEEPALIVE) | PB(MQX_P_AUTH_METHOD) |
        PB(MQX_P_AUTH_DATA) | PB(MQX_P_RESPONSE_INFO) | PB(MQX_P_SERVER_REF) |
        PB(MQX_P_REASON) | PB(MQX_P_RECEIVE_MAX) | PB(MQX_P_ALIAS_MAX) |
        PB(MQX_P_MAX_QOS) | PB(MQX_P_RETAIN_AVAILABLE) | PB(MQX_P_USER) |
        PB(MQX_P_MAX_PACKET) | PB(MQX_P_WILDCARD_AVAILABLE) |
        PB(MQX_P_SUB_ID_AVAILABLE) | PB(MQX_P_SHARED_AVAILABLE),
    [MQX_PW_SUBACK] = PB(MQX_P_REASON) | PB(MQX_P_USER),
};
/* what travels with a message to its subscribers [MQTT-3.3.2-4..20] */
#define PROP_FWD                                                               \
    (PB(MQX_P_PAYLOAD_FORMAT) | PB(MQX_P_CONTENT_TYPE) |                       \
     PB(MQX_P_RESPONSE_TOPIC) | PB(MQX_P_CORRELATION) | PB(MQX_P_USER))

/* The type of each property's value [MQTT-2.2.2.2]: 1, 2, 4 bytes, a
 * Variable Byte Integer, a string (UTF-8 or binary), a string pair. */
enum { PT_BAD, PT_U8, PT_U16, PT_U32, PT_VAR, PT_STR, PT_PAIR };
static uint8_t
prop_type(uint32_t id)
{
    switch (id) {
    case MQX_P_PAYLOAD_FORMAT:
    case MQX_P_REQ_PROBLEM:
    case MQX_P_REQ_RESPONSE:
    case MQX_P_MAX_QOS:
    case MQX_P_RETAIN_AVAILABLE:
    case MQX_P_WILDCARD_AVAILABLE:
    case MQX_P_SUB_ID_AVAILABLE:
    case MQX_P_SHARED_AVAILABLE:
        return PT_U8;
    case MQX_P_SERVER_KEEPALIVE:
    case MQX_P_RECEIVE_MAX:
    case MQX_P_ALIAS_MAX:
    case MQX_P_ALIAS:
        return PT_U16;
    case MQX_P_MESSAGE_EXPIRY:
    case MQX_P_SESSION_EXPIRY:
    case MQX_P_WILL_DELAY:
    case MQX_P_MAX_PACKET:
        return PT_U32;
    case MQX_P_SUB_ID:
        return PT_VAR;
    case MQX_P_USER:
        return PT_PAIR;
    default:
        return id < 64 && (prop_allowed[MQX_PW_CONNACK] & PB(id)) ? PT_STR
               : id == MQX_P_CONTENT_TYPE || id == MQX_P_RESPONSE_TOPIC ||
                       id == MQX_P_CORRELATION
                   ? PT_STR
                   : PT_BAD;
    }
}

/* A UTF-8 string property: valid MQTT UTF-8, else the block is bad. */
static struct mqx_str
rd_utf8(struct rd *r)
{
    struct mqx_str s = rd_str(r);

    if (!r->bad && !mqx_utf8_valid(s.p, s.len)) r->bad = 1;
    return s;
}

/* One property block (its length already read): every property known,
 * allowed at `where`, not repeated (but User Property, and Subscription
 * Identifier in a PUBLISH to a client), values in range. */
enum mqx_rc
mqx_props_decode(const uint8_t *p, size_t n, unsigned where,
                 struct mqx_props *o)
{
    struct rd r = {p, p + n, 0};

    memset(o, 0, sizeof *o);
    o->raw = p;
    o->raw_len = (uint32_t)n;
    if (where > MQX_PW_SUBACK) return MQX_BAD;
    while (rd_left(&r) > 0 && !r.bad) {
        const uint8_t *start = r.p;
        uint32_t id = rd_varint(&r), v;
        struct mqx_str str;
        if (r.bad || id >= 64 || !(prop_allowed[where] & PB(id)))
            return MQX_BAD;
        if ((o->has & PB(id)) && id != MQX_P_USER &&
            !(id == MQX_P_SUB_ID && where == MQX_PW_PUBLISH))
            return MQX_PROTO; /* [MQTT-2.2.2-2] */
        o->has |= PB(id);
        v = 0;
        str.p = NULL;
        str.len = 0;
        switch (prop_type(id)) { /* the value, by its type */
        case PT_U8:
            v = rd_u8(&r);
            if (v > 1 && !r.bad) return MQX_PROTO; /* all are 0 or 1 */
            break;
        case PT_U16:
            v = rd_u16(&r);
            break;
        case PT_U32:
            v = rd_u32(&r);
            break;
        case PT_VAR:
            v = rd_varint(&r);
            break;
        case PT_PAIR:
            (void)rd_utf8(&r);
            (void)rd_utf8(&r);
            o->n_user++;
            break;
        default: /* binary data, or a UTF-8 string */
            str = id == MQX_P_CORRELATION || id == MQX_P_AUTH_DATA
                      ? rd_str(&r)
                      : rd_utf8(&r);
            break;
        }
        if (r.bad) break;
        switch (id) { /* where it goes, and what it may not be */
        case MQX_P_PAYLOAD_FORMAT:
            o->payload_format = (uint8_t)v;
            break;
        case MQX_P_REQ_PROBLEM:
            o->req_problem = (uint8_t)v;
            break;
        case MQX_P_REQ_RESPONSE:
            o->req_response = (uint8_t)v;
            break;
        case MQX_P_MAX_QOS:
            o->max_qos = (uint8_t)v;
            break;
        case MQX_P_SERVER_KEEPALIVE:
            o->server_keepalive = (uint16_t)v;
            break;
        case MQX_P_RECEIVE_MAX:
            o->receive_max = (uint16_t)v;
            if (v == 0) return MQX_PROTO; /* [MQTT-3.1.2.11.3] */
            break;
        case MQX_P_ALIAS_MAX:
            o->alias_max = (uint16_t)v;
            break;
        case MQX_P_ALIAS: /* 0 is the handler's to refuse (0x94) */
            o->alias = (uint16_t)v;
            break;
        case MQX_P_MESSAGE_EXPIRY:
            o->message_expiry = v;
            break;
        case MQX_P_SESSION_EXPIRY:
            o->session_expiry = v;
            break;
        case MQX_P_WILL_DELAY:
            o->will_delay = v;
            break;
        case MQX_P_MAX_PACKET:
            o->max_packet = v;
            if (v == 0) return MQX_PROTO; /* [MQTT-3.1.2.11.4] */
            break;
        case MQX_P_SUB_ID:
            o->sub_id = v;
            if (v == 0) return MQX_PROTO; /* [MQTT-3.8.2.1.2] */
            break;
        case MQX_P_CONTENT_TYPE:
            o->content_type = str;
            break;
        case MQX_P_RESPONSE_TOPIC:
            o->response_topic = str;
            if (!mqx_topic_valid(str.p, str.len))
                return MQX_PROTO; /* [MQTT-3.3.2-14] */
            break;
        case MQX_P_CORRELATION:
            o->correlation = str;
            break;
        case MQX_P_AUTH_METHOD:
            o->auth_method = str;
            break;
        case MQX_P_AUTH_DATA:
            o->auth_data = str;
            break;
        case MQX_P_REASON:
            o->reason = str;
            break;
        default: /* RETAIN_AVAILABLE ...: values a client never sends */
            break;
        }
        if (!r.bad && (PROP_FWD & PB(id)))
            o->fwd_len += (uint32_t)(r.p - start);
    }
    return r.bad ? MQX_BAD : MQX_DONE;
}

/* A property block with its length in front; *used: the bytes of both. */
enum mqx_rc
mqx_props_read(const uint8_t *b, size_t n, unsigned where,
               struct mqx_props *out, size_t *used)
{
    struct rd r = {b, b + n, 0};
    uint32_t len = rd_varint(&r);
    size_t hl = (size_t)(r.p - b);

    memset(out, 0, sizeof *out);
    if (r.bad || rd_left(&r) < len) return MQX_BAD;
    *used = hl + len;
    return mqx_props_decode(b + hl, len, where, out);
}

/* Copies the properties that travel with a message, in their order;
 * returns pr->fwd_len. The block was decoded: every value is whole. */
size_t
mqx_props_copy_fwd(const struct mqx_props *pr, uint8_t *out)
{
    struct rd r = {pr->raw, pr->raw + pr->raw_len, 0};
    size_t o = 0;

    while (rd_left(&r) > 0 && o < pr->fwd_len && !r.bad) {
        const uint8_t *start = r.p;
        uint32_t id = rd_varint(&r);
        switch (prop_type(id)) {
        case PT_U8:
            (void)rd_u8(&r);
            break;
        case PT_U16:
            (void)rd_u16(&r);
            break;
        case PT_U32:
            (void)rd_u32(&r);
            break;
        case PT_VAR:
            (void)rd_varint(&r);
            break;
        case PT_PAIR:
            (void)rd_str(&r);
            /* fall through */
        case PT_STR:
            (void)rd_str(&r);
            break;
        default:
            r.bad = 1;
            break;
        }
        if (!r.bad && id < 64 && (PROP_FWD & PB(id))) {
            memcpy(out + o, start, (size_t)(r.p - start));
            o += (size_t)(r.p - start);
        }
    }
    return o;
}

/* CONNECT [MQTT-3.1], [MQTT-3.1] of 5.0. MQX_BAD with c->connack set
 * means: send that CONNACK code (a 5.0 reason code at level 5), then
 * close; with 0: close at once. */
enum mqx_rc
mqx_mqtt_connect(const uint8_t *b, size_t n, struct mqx_connect *c)
{
    struct rd r = {b, b + n, 0};
    struct mqx_str name;
    uint8_t flags;

    memset(c, 0, sizeof *c);
    name = rd_str(&r);
    c->level = rd_u8(&r);
    flags = rd_u8(&r);
    c->keepalive = rd_u16(&r);
    if (r.bad) return MQX_BAD;
    if (str_eq(name, "MQTT")) {
        if (c->level != 4 && c->level != 5) {
            c->connack = MQX_CONNACK_PROTOCOL; /* [MQTT-3.1.2-2] */
            return MQX_BAD;
        }
    } else if (str_eq(name, "MQIsdp")) {
        if (c->level != 3) {
            c->connack = MQX_CONNACK_PROTOCOL;
            return MQX_BAD;
        }
    } else {
        return MQX_BAD; /* [MQTT-3.1.2-1] not MQTT at all */
    }
    if (c->level >= 4 && (flags & 0x01)) return MQX_BAD; /* [MQTT-3.1.2-3] */
    c->clean = (flags >> 1) & 1;
    c->will = (flags >> 2) & 1;
    c->will_qos = (flags >> 3) & 3;
    c->will_retain = (flags >> 5) & 1;
    c->has_pass = (flags >> 6) & 1;
    c->has_user = (flags >> 7) & 1;
    if (c->will_qos == 3) return MQX_BAD; /* [MQTT-3.1.2-14] */
    if (!c->will && (c->will_qos || c->will_retain))
        return MQX_BAD; /* [MQTT-3.1.2-13], [MQTT-3.1.2-15] */
    if (c->level == 4 && c->has_pass && !c->has_user)
        return MQX_BAD; /* [MQTT-3.1.2-22]; 5.0 allows it */
    if (c->level == 5) {
        size_t used = 0;
        enum mqx_rc prc =
            mqx_props_read(r.p, rd_left(&r), MQX_PW_CONNECT, &c->props, &used);
        if (prc != MQX_DONE) {
            c->connack = prc == MQX_PROTO ? MQX_RC_PROTOCOL : MQX_RC_MALFORMED;
            return MQX_BAD;
        }
        r.p += used;
    }
    c->client_id = rd_str(&r);
    if (c->will) {
        if (c->level == 5) {
            size_t used = 0;
            enum mqx_rc prc = mqx_props_read(r.p, rd_left(&r), MQX_PW_WILL,
                                             &c->will_props, &used);
            if (prc != MQX_DONE) {
                c->connack =
                    prc == MQX_PROTO ? MQX_RC_PROTOCOL : MQX_RC_MALFORMED;
                return MQX_BAD;
            }
            r.p += used;
        }
        c->will_topic = rd_str(&r);
        c->will_payload = rd_str(&r);
    }
    if (c->has_user) c->username = rd_str(&r);
    if (c->has_pass) c->password = rd_str(&r);
    if (r.bad || rd_left(&r) != 0) return MQX_BAD;
    if (!mqx_utf8_valid(c->client_id.p, c->client_id.len)) {
        if (c->level == 5) c->connack = MQX_RC_ID_INVALID;
        return MQX_BAD; /* [MQTT-3.1.3-4] */
    }
    if (c->will && !mqx_topic_valid(c->will_topic.p, c->will_topic.len))
        return MQX_BAD;
    if (c->has_user && !mqx_utf8_valid(c->username.p, c->username.len))
        return MQX_BAD; /* [MQTT-3.1.3-11] */
    if (c->level == 5 && c->will && c->will_props.payload_format &&
        !mqx_utf8_valid(c->will_payload.p, c->will_payload.len)) {
        c->connack = MQX_RC_PAYLOAD_FORMAT; /* [MQTT-3.1.3-11] */
        return MQX_BAD;
    }
    if (c->client_id.len == 0 &&
        (c->level == 3 || (c->level == 4 && !c->clean))) {
        c->connack = MQX_CONNACK_ID; /* [MQTT-3.1.3-8]; 5.0 assigns one */
        return MQX_BAD;
    }
    if (c->level == 3 && !c->has_user) c->has_pass = 0;
    return MQX_DONE;
}

/* PUBLISH [MQTT-3.3]: flags are the low nibble of the first byte. */
enum mqx_rc
mqx_mqtt_publish(uint8_t flags, const uint8_t *b, size_t n, uint8_t level,
                 struct mqx_publish *p)
{
    struct rd r = {b, b + n, 0};

    memset(p, 0, sizeof *p);
    p->retain = flags & 1;
    p->qos = (flags >> 1) & 3;
    p->dup = (flags >> 3) & 1;
    if (p->qos == 3) return MQX_BAD;           /* [MQTT-3.3.1-4] */
    if (p->qos == 0 && p->dup) return MQX_BAD; /* [MQTT-3.3.1-2] */
    p->topic = rd_str(&r);
    if (p->qos) p->pid = rd_u16(&r);
    if (r.bad) return MQX_BAD;
    if (p->qos && p->pid == 0) return MQX_BAD; /* [MQTT-2.3.1-1] */
    if (level == 5) {
        size_t used = 0;
        enum mqx_rc prc =
            mqx_props_read(r.p, rd_left(&r), MQX_PW_PUBLISH, &p->props, &used);
        if (prc != MQX_DONE) return prc;
        r.p += used;
        /* an empty topic stands for a Topic Alias: the handler's */
        if (p->topic.len == 0 && !(p->props.has & PB(MQX_P_ALIAS)))
            return MQX_PROTO; /* [MQTT-3.3.2-8] */
        if (p->topic.len && !mqx_topic_valid(p->topic.p, p->topic.len))
            return mqx_utf8_valid(p->topic.p, p->topic.len) ? MQX_PROTO
                                                            : MQX_BAD;
    } else if (!mqx_topic_valid(p->topic.p, p->topic.len)) {
        return MQX_BAD; /* [MQTT-3.3.2-1], [MQTT-3.3.2-2] */
    }
    p->payload.p = r.p;
    p->payload.len = (uint32_t)rd_left(&r);
    return MQX_DONE;
}

/* SUBSCRIBE [MQTT-3.8] or UNSUBSCRIBE [MQTT-3.10]: checks every entry so
 * the handler may act on them one by one. */
enum mqx_rc
mqx_mqtt_subscribe(const struct mqx_packet *pk, uint8_t level,
                   struct mqx_subscribe *s)
{
    struct rd r = {pk->body, pk->body + pk->len, 0};
    int rh3 = 0;

    memset(s, 0, sizeof *s);
    if (pk->flags != 2) return MQX_BAD; /* [MQTT-3.8.1-1], [MQTT-3.10.1-1] */
    s->with_opts = pk->type == MQX_SUBSCRIBE;
    s->pid = rd_u16(&r);
    if (r.bad || s->pid == 0) return MQX_BAD;
    if (level == 5) {
        size_t used = 0;
        enum mqx_rc prc =
            mqx_props_read(r.p, rd_left(&r),
                           s->with_opts ? MQX_PW_SUBSCRIBE : MQX_PW_UNSUBSCRIBE,
                           &s->props, &used);
        if (prc != MQX_DONE) return prc;
        r.p += used;
    }
    s->list = r.p;
    s->list_len = (uint32_t)rd_left(&r);
    while (rd_left(&r) > 0) {
        struct mqx_str f = rd_str(&r);
        if (s->with_opts) {
            uint8_t o = rd_u8(&r);
            if ((o & 3) == 3) return MQX_BAD; /* [MQTT-3.8.3-4] */
            if (level <= 4 && (o & 0xfc)) return MQX_BAD;
            if (o & 0xc0) return MQX_BAD;    /* [MQTT-3.8.3-5] */
            if ((o & 0x30) == 0x30) rh3 = 1; /* retain handling 3 */
        }
        if (r.bad) return MQX_BAD;
        if (level == 5) { /* a bad filter gets its own reason code */
            if (!mqx_utf8_valid(f.p, f.len)) return MQX_BAD;
        } else if (!mqx_filter_valid(f.p, f.len)) {
            return MQX_BAD; /* [MQTT-4.7.3-1] */
        }
        s->count++;
    }
    if (s->count == 0) return MQX_BAD; /* [MQTT-3.8.3-3], [MQTT-3.10.3-2] */
    return rh3 ? MQX_PROTO : MQX_DONE;
}

/* Walks a validated (UN)SUBSCRIBE; returns 0 at the end. */
int
mqx_mqtt_sub_next(const struct mqx_subscribe *s, size_t *off,
                  struct mqx_str *filter, uint8_t *opts)
{
    struct rd r = {s->list + *off, s->list + s->list_len, 0};

    if (*off >= s->list_len) return 0;
    *filter = rd_str(&r);
    *opts = s->with_opts ? rd_u8(&r) : 0;
    if (r.bad) return 0;
    *off = (size_t)(r.p - s->list);
    return 1;
}

/* PUBACK, PUBREC, PUBREL, PUBCOMP: a packet id; at level 5 optionally a
 * reason code and properties. PUBREL's flags are 0010 [MQTT-3.6.1-1], the
 * others 0000. */
enum mqx_rc
mqx_mqtt_ack(const struct mqx_packet *pk, uint8_t level, struct mqx_ack *a)
{
    struct rd r = {pk->body, pk->body + pk->len, 0};

    memset(a, 0, sizeof *a);
    if (pk->flags != (pk->type == MQX_PUBREL ? 2 : 0)) return MQX_BAD;
    if (pk->len != 2 && (level != 5 || pk->len < 2)) return MQX_BAD;
    a->pid = rd_u16(&r);
    if (a->pid == 0) return MQX_BAD;
    if (rd_left(&r) > 0) a->reason = rd_u8(&r);
    if (rd_left(&r) > 0) {
        size_t used = 0;
        if (mqx_props_read(r.p, rd_left(&r), MQX_PW_ACK, &a->props, &used) !=
                MQX_DONE ||
            used != rd_left(&r))
            return MQX_BAD;
    }
    return MQX_DONE;
}

/* DISCONNECT: empty before level 5; then an optional reason code and
 * properties [MQTT-3.14.2]. */
enum mqx_rc
mqx_mqtt_disconnect(const struct mqx_packet *pk, uint8_t level,
                    struct mqx_ack *a)
{
    struct rd r = {pk->body, pk->body + pk->len, 0};

    memset(a, 0, sizeof *a);
    if (pk->flags) return MQX_BAD; /* [MQTT-3.14.1-1] */
    if (level != 5) return pk->len ? MQX_BAD : MQX_DONE;
    if (rd_left(&r) > 0) a->reason = rd_u8(&r);
    if (rd_left(&r) > 0) {
        size_t used = 0;
        if (mqx_props_read(r.p, rd_left(&r), MQX_PW_DISCONNECT, &a->props,
                           &used) != MQX_DONE ||
            used != rd_left(&r))
            return MQX_BAD;
    }
    return MQX_DONE;
}

size_t
mqx_mqtt_rl_size(uint32_t rl)
{
    return rl < 128 ? 1 : rl < 16384 ? 2 : rl < 2097152 ? 3 : 4;
}

size_t
mqx_mqtt_enc_rl(uint8_t *p, uint32_t rl)
{
    size_t i = 0;

    do {
        uint8_t b = (uint8_t)(rl & 0x7f);
        rl >>= 7;
        p[i++] = (uint8_t)(b | (rl ? 0x80 : 0));
    } while (rl);
    return i;
}

size_t
mqx_mqtt_enc_connack(uint8_t *p, uint8_t session_present, uint8_t rc)
{
    p[0] = MQX_CONNACK << 4;
    p[1] = 2;
    p[2] = session_present & 1;
    p[3] = rc;
    return 4;
}

/* PUBACK/PUBREC/PUBREL/PUBCOMP/UNSUBACK: type, length 2, packet id. */
size_t
mqx_mqtt_enc_ack(uint8_t *p, uint8_t type, uint16_t pid)
{
    p[0] = (uint8_t)(type << 4 | (type == MQX_PUBREL ? 2 : 0));
    p[1] = 2;
    wr_u16(p + 2, pid);
    return 4;
}

/* A 5.0 acknowledgement (PUBACK..PUBCOMP, or UNSUBACK-free types) with a
 * reason code and an optional reason string: the short form when both are
 * absent [MQTT-3.4.2.1]. At most 8 + strlen(why) bytes. */
size_t
mqx_mqtt_enc_ack5(uint8_t *p, uint8_t type, uint16_t pid, uint8_t reason,
                  const char *why)
{
    size_t wl = why ? strlen(why) : 0, pl = wl ? 3 + wl : 0, rl, i;

    if (reason == 0 && !wl) return mqx_mqtt_enc_ack(p, type, pid);
    rl = 2 + 1 + (pl ? mqx_varint_size((uint32_t)pl) + pl : 0);
    p[0] = (uint8_t)(type << 4 | (type == MQX_PUBREL ? 2 : 0));
    i = 1 + mqx_mqtt_enc_rl(p + 1, (uint32_t)rl);
    wr_u16(p + i, pid);
    p[i + 2] = reason;
    i += 3;
    if (pl) {
        i += mqx_enc_varint(p + i, (uint32_t)pl);
        i += wr_prop_str(p + i, MQX_P_REASON, why, wl);
    }
    return i;
}

size_t
mqx_mqtt_publish_size(size_t topic_len, size_t payload_len, uint8_t qos)
{
    size_t rl = 2 + topic_len + (qos ? 2 : 0) + payload_len;

    return 1 + mqx_mqtt_rl_size((uint32_t)rl) + rl;
}

size_t
mqx_mqtt_enc_publish(uint8_t *p, const uint8_t *topic, size_t topic_len,
                     const uint8_t *payload, size_t payload_len, uint8_t qos,
                     uint8_t retain, uint8_t dup, uint16_t pid)
{
    size_t rl = 2 + topic_len + (qos ? 2 : 0) + payload_len, i;

    p[0] = (uint8_t)(MQX_PUBLISH << 4 | (dup ? 8 : 0) | qos << 1 |
                     (retain ? 1 : 0));
    i = 1 + mqx_mqtt_enc_rl(p + 1, (uint32_t)rl);
    wr_u16(p + i, (uint16_t)topic_len);
    memcpy(p + i + 2, topic, topic_len);
    i += 2 + topic_len;
    if (qos) {
        wr_u16(p + i, pid);
        i += 2;
    }
    if (payload_len) memcpy(p + i, payload, payload_len);
    return i + payload_len;
}

/* A 5.0 PUBLISH: properties are `pre` (the broker's: alias, expiry,
 * subscription ids) then `fwd` (the publisher's, as stored). */
size_t
mqx_mqtt_publish5_size(size_t topic_len, size_t payload_len, uint8_t qos,
                       size_t props_len)
{
    size_t rl = 2 + topic_len + (qos ? 2 : 0) +
                mqx_varint_size((uint32_t)props_len) + props_len + payload_len;

    return 1 + mqx_mqtt_rl_size((uint32_t)rl) + rl;
}

size_t
mqx_mqtt_enc_publish5(uint8_t *p, const uint8_t *topic, size_t topic_len,
                      const uint8_t *payload, size_t payload_len, uint8_t qos,
                      uint8_t retain, uint8_t dup, uint16_t pid,
                      const uint8_t *pre, size_t pre_len, const uint8_t *fwd,
                      size_t fwd_len)
{
    size_t pl = pre_len + fwd_len, i;
    size_t rl = 2 + topic_len + (qos ? 2 : 0) + mqx_varint_size((uint32_t)pl) +
                pl + payload_len;

    p[0] = (uint8_t)(MQX_PUBLISH << 4 | (dup ? 8 : 0) | qos << 1 |
                     (retain ? 1 : 0));
    i = 1 + mqx_mqtt_enc_rl(p + 1, (uint32_t)rl);
    wr_u16(p + i, (uint16_t)topic_len);
    if (topic_len) memcpy(p + i + 2, topic, topic_len);
    i += 2 + topic_len;
    if (qos) {
        wr_u16(p + i, pid);
        i += 2;
    }
    i += mqx_enc_varint(p + i, (uint32_t)pl);
    if (pre_len) memcpy(p + i, pre, pre_len);
    i += pre_len;
    if (fwd_len) memcpy(p + i, fwd, fwd_len);
    i += fwd_len;
    if (payload_len) memcpy(p + i, payload, payload_len);
    return i + payload_len;
}

/* ==== [8] Messages, topic tree, retained store ==== */
/* Owns g.msgs and g.nodes. A message is stored once and reference counted;
 * the tree holds one node per level of every filter and retained topic,
 * found through a hash of (parent, name). Matching recurses once per level,
 * so its depth is bounded by max_topic_levels. */

static uint8_t *
st_at(uint32_t unit)
{
    return unit == NIL ? NULL : st_ptr(unit);
}

/* The tree and the sessions report their changes to the journal [12],
 * which writes their state: a real cycle. */
static void jr_retain(uint32_t m, const uint8_t *t, size_t n);
static void jr_sid(unsigned type, uint32_t sid);
static void jr_pid(unsigned type, uint32_t sid, uint16_t pid);
static void jr_sub(unsigned type, uint32_t sid, uint8_t qos, const uint8_t *f,
                   size_t n, uint32_t sub_id);
static void jr_queue(uint32_t sid, uint32_t m, uint8_t qos, uint8_t retain);
static void jr_sess(uint32_t sid);

static const uint8_t *
msg_topic(const struct msg *m)
{
    return st_ptr(m->data);
}

static const uint8_t *
msg_props(const struct msg *m)
{
    return st_ptr(m->data) + m->topic_len;
}

static const uint8_t *
msg_payload(const struct msg *m)
{
    return st_ptr(m->data) + m->topic_len + m->props_len;
}

/* Has a 5.0 message's Message Expiry Interval run out? */
static int
msg_expired(const struct msg *m)
{
    return m->expire && (uint32_t)time(NULL) >= m->expire;
}

/* Messages may fill the store up to 7/8: the last eighth is kept for
 * output blocks and partial packets, so that acknowledgements and
 * deliveries, which free messages, still flow when it is "full". */
static int
msg_room(size_t n)
{
    return g.st.used + n <= g.st.size / 8 * 7;
}

/* A new message with refs 0; NIL when the message pool or the store is
 * full (the caller's policy: drop QoS 0, keep QoS 1/2 unread). */
static uint32_t
msg_new5(const uint8_t *topic, size_t tl, const uint8_t *fw, size_t fl,
         const uint8_t *payload, size_t pl, uint8_t qos, uint8_t retain,
         uint32_t expire)
{
    uint32_t i;
    uint8_t *b;
    struct msg *m;

    if (!msg_room(tl + fl + pl)) {
        g.st.fails++;
        return NIL;
    }
    i = pool_take(&g.p_msg);
    if (i == NIL) return NIL;
    b = st_alloc(tl + fl + pl);
    if (!b) {
        pool_give(&g.p_msg, i);
        return NIL;
    }
    memcpy(b, topic, tl);
    if (fl && fw) memcpy(b + tl, fw, fl);
    if (pl) memcpy(b + tl + fl, payload, pl);
    g.jmark[i / 8] = (uint8_t)(g.jmark[i / 8] & ~(1u << (i % 8)));
    m = &g.msgs[i];
    m->data = ST_UNIT(b);
    m->topic_len = (uint16_t)tl;
    m->payload_len = (uint32_t)pl;
    m->props_len = (uint32_t)fl;
    m->expire = expire;
    m->refs = 0;
    m->qos = qos;
    m->retain = retain;
    return i;
}

/* A message without 5.0 properties ($SYS, 3.1.1 publishers). */
static uint32_t
msg_new(const uint8_t *topic, size_t tl, const uint8_t *payload, size_t pl,
        uint8_t qos, uint8_t retain)
{
    return msg_new5(topic, tl, NULL, 0, payload, pl, qos, retain, 0);
}

static void
msg_ref(uint32_t i)
{
    g.msgs[i].refs++;
}

static void
msg_unref(uint32_t i)
{
    struct msg *m;

    if (i == NIL) return;
    m = &g.msgs[i];
    assert(m->refs > 0);
    if (--m->refs == 0) {
        st_free(st_ptr(m->data));
        pool_give(&g.p_msg, i);
    }
}

/* A message nobody took (refs still 0) is returned at once. */
static void
msg_drop_if_unused(uint32_t i)
{
    if (i != NIL && g.msgs[i].refs == 0) {
        g.msgs[i].refs = 1;
        msg_unref(i);
    }
}

/* --- the tree --- */

static uint32_t
node_hash(uint32_t parent, const uint8_t *name, size_t n)
{
    uint32_t h = 2166136261u ^ parent * 0x9e3779b1u;
    size_t i;

    for (i = 0; i < n; i++)
        h = (h ^ name[i]) * 16777619u;
    return h ^ (h >> 15);
}

static int
node_is(uint32_t nd, uint32_t parent, const uint8_t *name, size_t n)
{
    const struct node *x = &g.nodes[nd];

    return x->parent == parent && x->name_len == n &&
           (n == 0 || memcmp(st_ptr(x->name), name, n) == 0);
}

static uint32_t
node_find(uint32_t parent, const uint8_t *name, size_t n)
{
    uint32_t h = node_hash(parent, name, n) & g.node_ht_mask, nd;

    while ((nd = g.node_ht[h]) != NIL) {
        if (node_is(nd, parent, name, n)) return nd;
        h = (h + 1) & g.node_ht_mask;
    }
    return NIL;
}

/* Finds or creates the child; NIL when the node pool or store is full. */
static uint32_t
node_get(uint32_t parent, const uint8_t *name, size_t n)
{
    uint32_t nd = node_find(parent, name, n), h;
    struct node *x, *p;

    if (nd != NIL) return nd;
    nd = pool_take(&g.p_node);
    if (nd == NIL) return NIL;
    x = &g.nodes[nd];
    memset(x, 0, sizeof *x);
    x->name = NIL;
    if (n) {
        uint8_t *b = st_dup(name, n);
        if (!b) {
            pool_give(&g.p_node, nd);
            return NIL;
        }
        x->name = ST_UNIT(b);
    }
    p = &g.nodes[parent];
    x->name_len = (uint16_t)n;
    x->parent = parent;
    x->depth = (uint8_t)(p->depth + 1);
    x->child = x->prev_sibling = NIL;
    x->subs = x->retained = NIL;
    x->sibling = p->child;
    if (p->child != NIL) g.nodes[p->child].prev_sibling = nd;
    p->child = nd;
    h = node_hash(parent, name, n) & g.node_ht_mask;
    while (g.node_ht[h] != NIL)
        h = (h + 1) & g.node_ht_mask;
    g.node_ht[h] = nd;
    return nd;
}

/* Removes a node's hash entry, shifting later entries of its run back. */
static void
node_ht_remove(uint32_t nd)
{
    uint32_t m = g.node_ht_mask, i, j, k;
    const struct node *x = &g.nodes[nd];

    i = node_hash(x->parent, st_at(x->name), x->name_len) & m;
    while (g.node_ht[i] != nd)
        i = (i + 1) & m;
    j = i;
    for (;;) {
        j = (j + 1) & m;
        if (g.node_ht[j] == NIL) break;
        {
            const struct node *y = &g.nodes[g.node_ht[j]];
            k = node_hash(y->parent, st_at(y->name), y->name_len) & m;
        }
        /* move j back to i unless its home k lies cyclically in (i, j] */
        if (i <= j ? (i < k && k <= j) : (i < k || k <= j)) continue;
        g.node_ht[i] = g.node_ht[j];
        i = j;
    }
    g.node_ht[i] = NIL;
}

/* Frees empty nodes from nd up towards the root. */
static void
node_prune(uint32_t nd)
{
    while (nd != 0 && nd != NIL) {
        struct node *x = &g.nodes[nd];
        uint32_t parent = x->parent;
        if (x->child != NIL || x->subs != NIL || x->retained != NIL) return;
        node_ht_remove(nd);
        if (x->prev_sibling != NIL)
            g.nodes[x->prev_sibling].sibling = x->sibling;
        else
            g.nodes[parent].child = x->sibling;
        if (x->sibling != NIL)
            g.nodes[x->sibling].prev_sibling = x->prev_sibling;
        st_free(st_at(x->name));
        pool_give(&g.p_node, nd);
        nd = parent;
    }
}

/* The node of a topic or filter, created level by level when `create`;
 * NIL when absent or a pool is full (what was created is pruned). */
static uint32_t
tree_path(const uint8_t *t, size_t n, int create)
{
    uint32_t nd = 0, next;
    size_t i = 0, e;

    for (;;) {
        e = i;
        while (e < n && t[e] != '/')
            e++;
        next =
            create ? node_get(nd, t + i, e - i) : node_find(nd, t + i, e - i);
        if (next == NIL) {
            if (create) node_prune(nd);
            return NIL;
        }
        nd = next;
        if (e >= n) return nd;
        i = e + 1;
    }
}

/* --- matching a published topic against the filters --- */

static int acl_allows(uint32_t s, const uint8_t *t, size_t n, unsigned access);

/* Is subscription a in the $share group `name` (len bytes), or unshared
 * like it when name is NULL? */
static int
sub_same_share(const struct sub *a, const uint8_t *name, uint16_t len)
{
    if (a->share == NIL || !name) return a->share == NIL && !name;
    return a->share_len == len && memcmp(st_ptr(a->share), name, len) == 0;
}

/* A shared subscription matched at node nd: one member of its group gets
 * the message [MQTT-4.8.2-3]. The group is handled at its first member in
 * the node's list; the member picked is online if one is, the one whose
 * last delivery is oldest (round robin), and allowed to read the topic. */
static void
share_pick(uint32_t nd, uint32_t first, const uint8_t *t, size_t n)
{
    const struct sub *f = &g.subs[first];
    const uint8_t *name = st_ptr(f->share);
    uint32_t si, best = NIL;
    int best_on = 0;

    for (si = g.nodes[nd].subs; si != first; si = g.subs[si].node_next)
        if (sub_same_share(&g.subs[si], name, f->share_len))
            return; /* done at an earlier member */
    for (si = first; si != NIL; si = g.subs[si].node_next) {
        const struct sub *sb = &g.subs[si];
        const struct sess *s = &g.sess[sb->sess];
        int on = s->conn != NIL && g.conns[s->conn].state == CONN_ONLINE;
        if (!sub_same_share(sb, name, f->share_len)) continue;
        if (!acl_allows(sb->sess, t, n, MQX_ACL_READ)) continue;
        if (best == NIL || on > best_on ||
            (on == best_on && sb->last < g.subs[best].last)) {
            best = si;
            best_on = on;
        }
    }
    if (best == NIL) return;
    g.subs[best].last = ++g.share_seq;
    g.spick[g.n_spick++] = best;
}

/* Adds every subscriber of a node to g.match, one entry per session at
 * the highest QoS of its matching subscriptions; shared subscriptions
 * pick one member per group into g.spick. */
static void
tree_collect(uint32_t nd, const uint8_t *t, size_t n)
{
    uint32_t si;

    for (si = g.nodes[nd].subs; si != NIL; si = g.subs[si].node_next) {
        struct sub *sb = &g.subs[si];
        struct sess *s = &g.sess[sb->sess];
        if (sb->share != NIL) {
            share_pick(nd, si, t, n);
            continue;
        }
        if ((sb->opts & SO_NO_LOCAL) && sb->sess == g.route_from)
            continue; /* [MQTT-3.8.3-3] */
        if (s->stamp != g.stamp) {
            s->stamp = g.stamp;
            s->match_qos = sb->qos;
            s->match_rap = sb->opts & SO_RAP;
            g.match[g.n_match++] = sb->sess;
        } else {
            if (sb->qos > s->match_qos) s->match_qos = sb->qos;
            s->match_rap |= sb->opts & SO_RAP;
        }
    }
}

/* Does the filter of node nd match topic t? (5.0 subscription ids are
 * found again when a message is sent.) */
static int
node_matches(uint32_t nd, const uint8_t *t, size_t n)
{
    uint32_t path[MQX_MAX_TOPIC_LEVELS + 1] = {0};
    size_t k = 0, i, pos = 0, e;
    int dollar = n > 0 && t[0] == '$';

    while (nd != 0 && nd != NIL && k <= MQX_MAX_TOPIC_LEVELS) {
        path[k++] = nd;
        nd = g.nodes[nd].parent;
    }
    for (i = k; i-- > 0;) {
        const struct node *x = &g.nodes[path[i]];
        const uint8_t *nm = x->name_len ? st_ptr(x->name) : NULL;
        int wild = x->name_len == 1 && (nm[0] == '#' || nm[0] == '+');
        if (wild && dollar && i == k - 1) return 0; /* [MQTT-4.7.2-1] */
        if (wild && nm[0] == '#') return 1;
        if (pos > n) return 0; /* the topic has no level left */
        for (e = pos; e < n && t[e] != '/'; e++)
            ;
        if (!wild && (x->name_len != e - pos ||
                      (x->name_len && memcmp(nm, t + pos, e - pos) != 0)))
            return 0;
        pos = e + 1;
    }
    return pos == n + 1;
}

/* At node nd (levels before `pos` matched): match the level at t[pos..]. */
static void
tree_match(uint32_t nd, const uint8_t *t, size_t n, size_t pos)
{
    int dollar = nd == 0 && n > 0 && t[0] == '$'; /* [MQTT-4.7.2-1] */
    size_t e = pos;
    uint32_t c;

    while (e < n && t[e] != '/')
        e++;
    if (!dollar) {
        c = node_find(nd, (const uint8_t *)"#", 1);
        if (c != NIL) tree_collect(c, t, n);
    }
    for (int wild = 0; wild < 2; wild++) {
        if (wild && dollar) break;
        c = wild ? node_find(nd, (const uint8_t *)"+", 1)
                 : node_find(nd, t + pos, e - pos);
        if (c == NIL) continue;
        if (e >= n) {
            uint32_t h = node_find(c, (const uint8_t *)"#", 1);
            tree_collect(c, t, n);
            if (h != NIL) tree_collect(h, t, n); /* "a/#" matches "a" */
        } else {
            tree_match(c, t, n, e + 1);
        }
    }
}

/* Starts a routing pass: g.match holds the matched sessions after it. */
static void
tree_route(const uint8_t *t, size_t n)
{
    if (++g.stamp == 0) { /* wrapped: forget old stamps */
        uint32_t i;
        for (i = 0; i < g.p_sess.cap; i++)
            g.sess[i].stamp = 0;
        g.stamp = 1;
    }
    g.n_match = 0;
    g.n_spick = 0;
    tree_match(0, t, n, 0);
}

/* --- retained messages --- */

/* Stores m as the retained message of its topic (m == NIL clears it).
 * Past max_retained_messages/bytes a new topic is not stored (counted). */
static void
ret_set(uint32_t m, const uint8_t *t, size_t n)
{
    uint32_t nd, old;
    uint64_t bytes = m == NIL ? 0 : g.msgs[m].payload_len;

    if (m == NIL) {
        nd = tree_path(t, n, 0);
        if (nd == NIL || g.nodes[nd].retained == NIL) return;
    } else {
        if (mqx_topic_levels(t, n) > (unsigned)g.cfg.max_topic_levels) return;
        nd = tree_path(t, n, 1);
        if (nd == NIL) return;
    }
    old = g.nodes[nd].retained;
    if (old != NIL) {
        g.n_retained--;
        g.retained_bytes -= g.msgs[old].payload_len;
    }
    if (m != NIL &&
        (g.n_retained >= (uint64_t)g.cfg.max_retained_messages ||
         g.retained_bytes + bytes > (uint64_t)g.cfg.max_retained_bytes)) {
        static int64_t last;
        static uint32_t quiet;
        int64_t k = log_limit(&last, &quiet);
        if (k >= 0)
            log_at(LOG_T_WARN,
                   "retained store full (%u messages, %llu bytes): not "
                   "retained%s",
                   g.n_retained, (unsigned long long)g.retained_bytes,
                   log_suppressed(k));
        g.pub_dropped++;
        m = NIL;
    }
    g.nodes[nd].retained = m;
    g.changes++;
    jr_retain(m, t, n);
    if (m != NIL) {
        msg_ref(m);
        g.n_retained++;
        g.retained_bytes += bytes;
    }
    msg_unref(old);
    if (m == NIL) node_prune(nd);
}

/* ==== [9] Auth and ACL ==== */
/* Mosquitto's password and ACL files: pure line parsers (mqx_pw_line,
 * mqx_acl_line), the loaded databases (malloc'd at start-up and at SIGHUP
 * only: the named exception of config reload), and rule evaluation. A
 * client's auth domain is its listener's with per_listener_settings, else
 * the global one. Hashing is in [11]. */

static const char b64_chars[] = /* [64] is the padding */
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=";

static int
b64_val(char c)
{
    const char *p = c ? strchr(b64_chars, c) : NULL;

    return p && p - b64_chars < 64 ? (int)(p - b64_chars) : -1;
}

/* Standard base64 with padding; returns the decoded length, or (size_t)-1
 * when the text is not base64 or does not fit in cap. */
size_t
mqx_b64_decode(const char *s, size_t n, uint8_t *out, size_t cap)
{
    size_t i, o = 0;
    uint32_t acc = 0;
    int bits = 0, pad = 0;

    if (n % 4) return (size_t)-1;
    for (i = 0; i < n; i++) {
        int v;
        if (s[i] == '=') {
            if (i + 2 < n || (i + 1 < n && s[i + 1] != '=')) return (size_t)-1;
            pad++;
            continue;
        }
        if (pad) return (size_t)-1;
        v = b64_val(s[i]);
        if (v < 0) return (size_t)-1;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o >= cap) return (size_t)-1;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    return o;
}

/* Returns the text length (NUL-terminated), or 0 when cap is short. */
size_t
mqx_b64_encode(const uint8_t *p, size_t n, char *out, size_t cap)
{
    size_t i, o = 0;

    if ((n + 2) / 3 * 4 + 1 > cap) return 0;
    for (i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < n) v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n) v |= p[i + 2];
        out[o++] = b64_chars[v >> 18 & 63];
        out[o++] = b64_chars[v >> 12 & 63];
        out[o++] = b64_chars[i + 1 < n ? v >> 6 & 63 : 64];
        out[o++] = b64_chars[i + 2 < n ? v & 63 : 64];
    }
    out[o] = '\0';
    return o;
}

/* Splits "a$b$c" style fields: the next field of s[*i..n) up to `sep`. */
static struct mqx_str
auth_field(const char *s, size_t n, size_t *i, char sep)
{
    struct mqx_str f;
    size_t j = *i;

    while (j < n && s[j] != sep)
        j++;
    f.p = (const uint8_t *)s + *i;
    f.len = (uint32_t)(j - *i);
    *i = j < n ? j + 1 : j;
    return f;
}

/* A password file line (no newline). MQX_MORE: blank or comment, skip. */
enum mqx_rc
mqx_pw_line(const char *s, size_t n, struct mqx_pwline *out)
{
    size_t i = 0;
    struct mqx_str kind, a, b, c;
    char num[16];

    memset(out, 0, sizeof *out);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
        n--;
    if (n == 0 || s[0] == '#') return MQX_MORE;
    out->user = auth_field(s, n, &i, ':');
    out->err = "expected user:hash";
    if (i >= n || out->user.len == 0 || s[i - 1] != ':') return MQX_BAD;
    if (!mqx_utf8_valid(out->user.p, out->user.len)) {
        out->err = "user name is not valid UTF-8";
        return MQX_BAD;
    }
    if (s[i] != '$') {
        out->err = "password is not hashed (hash the file with "
                   "mqttpx passwd -U)";
        return MQX_BAD;
    }
    i++;
    kind = auth_field(s, n, &i, '$');
    if (str_eq(kind, "argon2id") || str_eq(kind, "argon2i")) {
        out->err = "argon2 hashes cannot be verified by mbedTLS; regenerate "
                   "the password with mosquitto_passwd -H sha512-pbkdf2 (or "
                   "mqttpx passwd)";
        return MQX_BAD;
    }
    a = auth_field(s, n, &i, '$');
    b = auth_field(s, n, &i, '$');
    if (str_eq(kind, "6")) {
        out->kind = 6;
        c = b;
        b = a;
        if (i < n) return MQX_BAD;
    } else if (str_eq(kind, "7")) {
        char *end;
        unsigned long it;
        out->kind = 7;
        c = auth_field(s, n, &i, '$');
        if (i < n || a.len == 0 || a.len >= sizeof num) return MQX_BAD;
        memcpy(num, a.p, a.len);
        num[a.len] = '\0';
        errno = 0;
        it = strtoul(num, &end, 10);
        if (errno || *end || it == 0 || it > 100000000) {
            out->err = "bad iteration count";
            return MQX_BAD;
        }
        out->iter = (uint32_t)it;
    } else {
        out->err = "unknown hash type (mqttpx knows $6$ and $7$)";
        return MQX_BAD;
    }
    {
        size_t sl = mqx_b64_decode((const char *)b.p, b.len, out->salt,
                                   sizeof out->salt),
               hl = mqx_b64_decode((const char *)c.p, c.len, out->hash,
                                   sizeof out->hash);
        if (sl == (size_t)-1 || sl == 0 || hl != 64) {
            out->err = "bad salt or hash";
            return MQX_BAD;
        }
        out->salt_len = (uint8_t)sl;
    }
    out->err = NULL;
    return MQX_DONE;
}

/* An ACL file line: "user NAME", "topic [read|write|readwrite|deny] T",
 * "pattern [read|write|readwrite|deny] T". MQX_MORE: blank or comment. */
enum mqx_rc
mqx_acl_line(const char *s, size_t n, struct mqx_aclline *out)
{
    size_t i = 0, k;
    static const struct {
        const char *w;
        uint8_t a;
    } acc[] = {{"read", MQX_ACL_READ},
               {"write", MQX_ACL_WRITE},
               {"readwrite", MQX_ACL_READ | MQX_ACL_WRITE},
               {"deny", MQX_ACL_DENY}};

    memset(out, 0, sizeof *out);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
        n--;
    while (i < n && (s[i] == ' ' || s[i] == '\t'))
        i++;
    if (i == n || s[i] == '#') return MQX_MORE;
    out->err = "expected user, topic or pattern";
    if (n - i > 5 && memcmp(s + i, "user", 4) == 0 && s[i + 4] == ' ')
        out->kind = 1, i += 5;
    else if (n - i > 6 && memcmp(s + i, "topic", 5) == 0 && s[i + 5] == ' ')
        out->kind = 2, i += 6;
    else if (n - i > 8 && memcmp(s + i, "pattern", 7) == 0 && s[i + 7] == ' ')
        out->kind = 3, i += 8;
    else
        return MQX_BAD;
    while (i < n && s[i] == ' ')
        i++;
    if (out->kind != 1) {
        out->access = MQX_ACL_READ | MQX_ACL_WRITE; /* Mosquitto's default */
        for (k = 0; k < sizeof acc / sizeof acc[0]; k++) {
            size_t wl = strlen(acc[k].w);
            if (n - i > wl && memcmp(s + i, acc[k].w, wl) == 0 &&
                s[i + wl] == ' ') {
                out->access = acc[k].a;
                i += wl;
                while (i < n && s[i] == ' ')
                    i++;
                break;
            }
        }
    }
    out->arg.p = (const uint8_t *)s + i;
    out->arg.len = (uint32_t)(n - i);
    if (out->arg.len == 0) {
        out->err = "missing argument";
        return MQX_BAD;
    }
    if (!mqx_utf8_valid(out->arg.p, out->arg.len)) {
        out->err = "not valid UTF-8";
        return MQX_BAD;
    }
    if (out->kind != 1 && !mqx_filter_valid(out->arg.p, out->arg.len)) {
        out->err = "not a valid topic filter";
        return MQX_BAD;
    }
    out->err = NULL;
    return MQX_DONE;
}

/* A pattern with %c and %u replaced. -1 when it does not apply: no user
 * name for %u, a value with '+', '#' or '/' (it would widen the rule), or
 * no room. */
int
mqx_acl_subst(const uint8_t *pat, size_t n, struct mqx_str user,
              struct mqx_str id, uint8_t *out, size_t cap, size_t *len)
{
    size_t i, o = 0, k;

    for (i = 0; i < n; i++) {
        const struct mqx_str *v = NULL;
        if (pat[i] == '%' && i + 1 < n && pat[i + 1] == 'c') v = &id;
        if (pat[i] == '%' && i + 1 < n && pat[i + 1] == 'u') v = &user;
        if (!v) {
            if (o >= cap) return -1;
            out[o++] = pat[i];
            continue;
        }
        if (v->p == NULL || v->len == 0 || cap - o < v->len) return -1;
        for (k = 0; k < v->len; k++)
            if (v->p[k] == '+' || v->p[k] == '#' || v->p[k] == '/') return -1;
        memcpy(out + o, v->p, v->len);
        o += v->len;
        i++;
    }
    *len = o;
    return 0;
}

/* --- the loaded files --- */

struct pwent {
    const uint8_t *user; /* into pwdb.text */
    uint16_t user_len;
    uint8_t kind, salt_len;
    uint32_t iter;
    uint8_t salt[48];
    uint8_t hash[64];
};

struct pwdb {
    struct pwent *e;
    uint32_t n;
    char *text;
};

struct aclrule {
    const uint8_t *topic; /* into acldb.text */
    uint16_t len;
    uint8_t access, pattern;
};

struct acluser {
    const uint8_t *name;
    uint16_t len;
    uint32_t first, n; /* its rules */
};

struct acldb {
    struct aclrule *rules; /* anonymous, then users', then patterns */
    uint32_t n_anon, pat_first, n_pat;
    struct acluser *users;
    uint32_t n_users;
    char *text;
};

/* The auth state of one domain: what its files said when last loaded. */
struct authdb {
    int has_pw, has_acl;
    struct pwdb pw;
    struct acldb acl;
};

static struct authdb auth_dbs[MQX_MAX_LISTENERS + 1]; /* 0: global */

static const struct authcfg *
auth_cfg(uint8_t lsn)
{
    return g.cfg.per_listener_settings ? &g.cfg.lsn[lsn].auth : &g.cfg.auth;
}

static struct authdb *
auth_db(uint8_t lsn)
{
    return &auth_dbs[g.cfg.per_listener_settings ? 1 + lsn : 0];
}

/* Reads a whole file into a malloc'd NUL-terminated buffer. */
static char *
auth_read(const char *path, char *err, size_t cap)
{
    FILE *f = fopen(path, "rb");
    char *t = NULL;
    long n;

    if (!f) {
        snprintf(err, cap, "%s: %s", path, strerror(errno));
        return NULL;
    }
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 &&
        fseek(f, 0, SEEK_SET) == 0 && (t = malloc((size_t)n + 1)) != NULL &&
        fread(t, 1, (size_t)n, f) == (size_t)n) {
        t[n] = '\0';
    } else {
        free(t);
        t = NULL;
        snprintf(err, cap, "%s: cannot read", path);
    }
    fclose(f);
    return t;
}

/* Calls fn for each line of text; stops at the first error (-1). */
static int
auth_lines(char *text, int (*fn)(void *, const char *, size_t, int), void *arg)
{
    char *s = text;
    int line = 0;

    while (*s) {
        char *nl = strchr(s, '\n');
        size_t n = nl ? (size_t)(nl - s) : strlen(s);
        if (fn(arg, s, n, ++line)) return -1;
        if (!nl) break;
        s = nl + 1;
    }
    return 0;
}

struct pw_load {
    struct pwdb *db;
    const char *path;
    char *err;
    size_t cap;
};

static int
pw_load_line(void *arg, const char *s, size_t n, int line)
{
    struct pw_load *ld = arg;
    struct mqx_pwline pl;
    enum mqx_rc rc = mqx_pw_line(s, n, &pl);
    struct pwent *e;

    if (rc == MQX_MORE) return 0;
    if (rc != MQX_DONE) {
        snprintf(ld->err, ld->cap, "%s:%d: %s", ld->path, line, pl.err);
        return -1;
    }
    if (ld->db->e) {
        e = &ld->db->e[ld->db->n];
        e->user = pl.user.p;
        e->user_len = (uint16_t)pl.user.len;
        e->kind = pl.kind;
        e->iter = pl.iter;
        e->salt_len = pl.salt_len;
        memcpy(e->salt, pl.salt, sizeof e->salt);
        memcpy(e->hash, pl.hash, sizeof e->hash);
    }
    ld->db->n++;
    return 0;
}

static void
pw_free(struct pwdb *db)
{
    free(db->e);
    free(db->text);
    memset(db, 0, sizeof *db);
}

/* Loads a password file: 0, or -1 with err (and db untouched). */
static int
pw_load(struct pwdb *db, const char *path, char *err, size_t cap)
{
    struct pwdb n = {NULL, 0, NULL};
    struct pw_load ld = {&n, path, err, cap};

    n.text = auth_read(path, err, cap);
    if (!n.text) return -1;
    if (auth_lines(n.text, pw_load_line, &ld)) { /* count */
        free(n.text);
        return -1;
    }
    n.e = calloc(n.n ? n.n : 1, sizeof *n.e);
    if (!n.e) {
        free(n.text);
        snprintf(err, cap, "%s: out of memory", path);
        return -1;
    }
    n.n = 0;
    auth_lines(n.text, pw_load_line, &ld); /* fill */
    pw_free(db);
    *db = n;
    return 0;
}

struct acl_load {
    struct acldb *db;
    const char *path;
    char *err;
    size_t cap;
    uint32_t n_topic, n_pat, n_users; /* counts, then fill positions */
    int fill;
};

static int
acl_load_line(void *arg, const char *s, size_t n, int line)
{
    struct acl_load *ld = arg;
    struct acldb *db = ld->db;
    struct mqx_aclline al;
    enum mqx_rc rc = mqx_acl_line(s, n, &al);

    if (rc == MQX_MORE) return 0;
    if (rc != MQX_DONE) {
        snprintf(ld->err, ld->cap, "%s:%d: %s", ld->path, line, al.err);
        return -1;
    }
    if (al.arg.len > 65535) {
        snprintf(ld->err, ld->cap, "%s:%d: too long", ld->path, line);
        return -1;
    }
    if (!ld->fill) {
        if (al.kind == 1) ld->n_users++;
        if (al.kind == 2) ld->n_topic++;
        if (al.kind == 3) ld->n_pat++;
        return 0;
    }
    if (al.kind == 1) {
        struct acluser *u = &db->users[db->n_users++];
        u->name = al.arg.p;
        u->len = (uint16_t)al.arg.len;
        u->first = ld->n_topic;
        u->n = 0;
        return 0;
    }
    {
        struct aclrule *r = al.kind == 3
                                ? &db->rules[db->pat_first + db->n_pat++]
                                : &db->rules[ld->n_topic++];
        r->topic = al.arg.p;
        r->len = (uint16_t)al.arg.len;
        r->access = al.access;
        r->pattern = al.kind == 3;
        if (al.kind == 2) {
            if (db->n_users)
                db->users[db->n_users - 1].n++;
            else
                db->n_anon++;
        }
    }
    return 0;
}

static void
acl_free(struct acldb *db)
{
    free(db->rules);
    free(db->users);
    free(db->text);
    memset(db, 0, sizeof *db);
}

/* Loads an ACL file: 0, or -1 with err (and db untouched). */
static int
acl_load(struct acldb *db, const char *path, char *err, size_t cap)
{
    struct acldb n;
    struct acl_load ld;

    memset(&n, 0, sizeof n);
    memset(&ld, 0, sizeof ld);
    ld.db = &n;
    ld.path = path;
    ld.err = err;
    ld.cap = cap;
    n.text = auth_read(path, err, cap);
    if (!n.text) return -1;
    if (auth_lines(n.text, acl_load_line, &ld)) {
        free(n.text);
        return -1;
    }
    n.rules = calloc(ld.n_topic + ld.n_pat + 1, sizeof *n.rules);
    n.users = calloc(ld.n_users + 1, sizeof *n.users);
    if (!n.rules || !n.users) {
        acl_free(&n);
        snprintf(err, cap, "%s: out of memory", path);
        return -1;
    }
    n.pat_first = ld.n_topic;
    ld.fill = 1;
    ld.n_topic = 0;
    auth_lines(n.text, acl_load_line, &ld);
    acl_free(db);
    *db = n;
    return 0;
}

/* Loads the files of one domain; a failure keeps what was loaded before
 * and returns -1 with err. */
static int
auth_load(struct authdb *db, const struct authcfg *ac, char *err, size_t cap)
{
    struct pwdb pw = {NULL, 0, NULL};
    struct acldb acl;

    memset(&acl, 0, sizeof acl);
    if (ac->password_file[0] && pw_load(&pw, ac->password_file, err, cap))
        return -1;
    if (ac->acl_file[0] && acl_load(&acl, ac->acl_file, err, cap)) {
        pw_free(&pw);
        return -1;
    }
    pw_free(&db->pw);
    acl_free(&db->acl);
    db->pw = pw;
    db->acl = acl;
    db->has_pw = ac->password_file[0] != '\0';
    db->has_acl = ac->acl_file[0] != '\0';
    return 0;
}

static const struct pwent *
pw_find(const struct pwdb *db, struct mqx_str user)
{
    uint32_t i;

    for (i = 0; i < db->n; i++)
        if (db->e[i].user_len == user.len &&
            memcmp(db->e[i].user, user.p, user.len) == 0)
            return &db->e[i];
    return NULL;
}

static const struct acluser *
acl_user(const struct acldb *db, struct mqx_str user)
{
    uint32_t i;

    for (i = 0; i < db->n_users; i++)
        if (db->users[i].len == user.len &&
            memcmp(db->users[i].name, user.p, user.len) == 0)
            return &db->users[i];
    return NULL;
}

static int
acl_rule_match(const struct aclrule *r, struct mqx_str user, struct mqx_str id,
               const uint8_t *t, size_t tn)
{
    uint8_t buf[1024];
    size_t n;

    if (!r->pattern) return mqx_topic_match(r->topic, r->len, t, tn);
    if (mqx_acl_subst(r->topic, r->len, user, id, buf, sizeof buf, &n))
        return 0;
    return mqx_topic_match(buf, n, t, tn);
}

/* Is `access` (MQX_ACL_READ or _WRITE) to topic t allowed? A user's own
 * rules (or, without a user name, the rules before the first user line)
 * and the patterns apply; a deny rule wins; otherwise some rule must grant
 * the access. For a SUBSCRIBE, t is the filter, its wildcards taken as
 * plain characters (Mosquitto's check). */
static int
acl_check(const struct acldb *db, struct mqx_str user, struct mqx_str id,
          const uint8_t *t, size_t tn, unsigned access)
{
    const struct acluser *u = user.p ? acl_user(db, user) : NULL;
    uint32_t first = u ? u->first : 0, n = u ? u->n : user.p ? 0 : db->n_anon;
    uint32_t i;
    int pass;

    for (pass = 0; pass < 2; pass++) {
        unsigned want = pass == 0 ? MQX_ACL_DENY : access;
        for (i = first; i < first + n; i++)
            if ((db->rules[i].access & want) &&
                acl_rule_match(&db->rules[i], user, id, t, tn))
                return pass;
        for (i = db->pat_first; i < db->pat_first + db->n_pat; i++)
            if ((db->rules[i].access & want) &&
                acl_rule_match(&db->rules[i], user, id, t, tn))
                return pass;
    }
    return 0;
}

/* The ACL decision for a session (allowed when its domain has no
 * acl_file). */
static int
acl_allows(uint32_t si, const uint8_t *t, size_t tn, unsigned access)
{
    const struct sess *s = &g.sess[si];
    const struct authdb *db = auth_db(s->lsn);
    struct mqx_str user = {NULL, 0}, id;

    if (!db->has_acl) return 1;
    if (s->user != NIL) {
        user.p = st_ptr(s->user);
        user.len = s->user_len;
    }
    id.p = st_ptr(s->id);
    id.len = s->id_len;
    return acl_check(&db->acl, user, id, t, tn, access);
}

/* Loads the files of every domain the config names (start-up, SIGHUP).
 * A domain whose file fails keeps its previous rules; -1 with err then. */
static int
auth_load_all(char *err, size_t cap)
{
    uint32_t i;
    int rc = 0;

    if (!g.cfg.per_listener_settings)
        return auth_load(&auth_dbs[0], &g.cfg.auth, err, cap);
    for (i = 0; i < g.cfg.n_lsn; i++)
        if (auth_load(&auth_dbs[1 + i], &g.cfg.lsn[i].auth, err, cap)) rc = -1;
    return rc;
}

/* ==== [10] Sessions, queues, routing ==== */
/* Owns g.sess, g.subs and g.qents. A session outlives its connection when
 * clean session is 0. Each session has a queue (not yet sent), an inflight
 * list (sent, waiting for an ack, in send order) and the QoS 2 ids it
 * received and has not seen PUBREL for. route() hands a message to every
 * matching session. Uses [8]; marks connections of [13] (a real cycle:
 * routing wakes connections, closing one routes its will). */

static void conn_dirty(struct conn *c);
static void conn_close(struct conn *c, unsigned flags);
static void conn_disconnect(struct conn *c, uint8_t reason, const char *why);

#define ID_FMT "%.*s"

static const char *
sess_id(uint32_t s, int *len)
{
    if (s == NIL) {
        *len = 9;
        return "<unknown>";
    }
    *len = g.sess[s].id_len;
    return (const char *)st_ptr(g.sess[s].id);
}

static uint32_t
sess_hash(const uint8_t *id, size_t n)
{
    return node_hash(0, id, n) & g.sess_ht_mask;
}

static uint32_t
sess_find(const uint8_t *id, size_t n)
{
    uint32_t s;

    for (s = g.sess_ht[sess_hash(id, n)]; s != NIL; s = g.sess[s].hash_next)
        if (g.sess[s].id_len == n && memcmp(st_ptr(g.sess[s].id), id, n) == 0)
            return s;
    return NIL;
}

/* NIL when the session pool or the store is full: CONNACK 3. */
static uint32_t
sess_new(const uint8_t *id, size_t n)
{
    uint32_t s = pool_take(&g.p_sess), h;
    struct sess *x;
    uint8_t *b;

    if (s == NIL) return NIL;
    b = st_dup(id, n ? n : 1);
    if (!b) {
        pool_give(&g.p_sess, s);
        return NIL;
    }
    x = &g.sess[s];
    memset(x, 0, sizeof *x);
    x->id = ST_UNIT(b);
    x->id_len = (uint16_t)n;
    x->conn = NIL;
    x->subs = NIL;
    x->q_head = x->q_tail = x->f_head = x->f_tail = x->r_head = NIL;
    x->next_pid = 1;
    x->user = NIL;
    x->will = NIL;
    h = sess_hash(id, n);
    x->hash_next = g.sess_ht[h];
    g.sess_ht[h] = s;
    return s;
}

static uint32_t
qe_new(uint32_t m, uint8_t qos, uint8_t state)
{
    uint32_t q = pool_take(&g.p_qent);

    if (q == NIL) return NIL;
    g.qents[q].next = NIL;
    g.qents[q].msg = m;
    g.qents[q].pid = 0;
    g.qents[q].qos = qos;
    g.qents[q].state = state;
    g.qents[q].retain = 0;
    if (m != NIL) msg_ref(m);
    return q;
}

static void
qe_free(uint32_t q)
{
    msg_unref(g.qents[q].msg);
    pool_give(&g.p_qent, q);
}

static void
qe_free_list(uint32_t q)
{
    while (q != NIL) {
        uint32_t next = g.qents[q].next;
        qe_free(q);
        q = next;
    }
}

/* Removes the first entry of a singly linked list whose pid and state
 * match (state 0xff: any sent state); returns it or NIL. */
static uint32_t
qe_unlink(uint32_t *head, uint32_t *tail, uint16_t pid, uint8_t state)
{
    uint32_t q = *head, prev = NIL;

    while (q != NIL) {
        struct qent *e = &g.qents[q];
        if (e->pid == pid && (e->state == state || state == 0xff)) {
            if (prev == NIL)
                *head = e->next;
            else
                g.qents[prev].next = e->next;
            if (tail && *tail == q) *tail = prev;
            e->next = NIL;
            return q;
        }
        prev = q;
        q = e->next;
    }
    return NIL;
}

static uint64_t
qe_bytes(uint32_t q)
{
    const struct msg *m = &g.msgs[g.qents[q].msg];

    return (uint64_t)m->payload_len + m->topic_len;
}

/* Appends a delivery to a session's queue (queued) or inflight list. */
static void
sess_append(struct sess *s, uint32_t q, int inflight)
{
    uint32_t *head = inflight ? &s->f_head : &s->q_head;
    uint32_t *tail = inflight ? &s->f_tail : &s->q_tail;

    g.qents[q].next = NIL;
    if (*tail == NIL)
        *head = q;
    else
        g.qents[*tail].next = q;
    *tail = q;
    if (inflight) {
        s->f_count++;
    } else {
        s->q_count++;
        s->q_bytes += qe_bytes(q);
    }
}

/* Takes the first queued delivery off a session's queue. */
static uint32_t
sess_pop(struct sess *s)
{
    uint32_t q = s->q_head;

    s->q_head = g.qents[q].next;
    if (s->q_head == NIL) s->q_tail = NIL;
    s->q_count--;
    s->q_bytes -= qe_bytes(q);
    g.qents[q].next = NIL;
    return q;
}

static uint32_t
qe_find(uint32_t head, uint16_t pid)
{
    while (head != NIL && g.qents[head].pid != pid)
        head = g.qents[head].next;
    return head;
}

static void
sub_unlink(uint32_t si)
{
    struct sub *sb = &g.subs[si];
    struct node *nd = &g.nodes[sb->node];

    if (sb->node_prev != NIL)
        g.subs[sb->node_prev].node_next = sb->node_next;
    else
        nd->subs = sb->node_next;
    if (sb->node_next != NIL) g.subs[sb->node_next].node_prev = sb->node_prev;
    g.n_subs--;
    if (sb->share != NIL) st_free(st_ptr(sb->share));
    pool_give(&g.p_sub, si);
}

/* "$share/GROUP/FILTER" [MQTT-4.8.2]: 1 with the group and the filter,
 * 0 for an ordinary filter, -1 when the group or filter is invalid. */
static int
share_split(const uint8_t *f, size_t n, struct mqx_str *group,
            struct mqx_str *filter)
{
    size_t i;

    filter->p = f;
    filter->len = (uint32_t)n;
    if (n < 7 || memcmp(f, "$share/", 7) != 0) return 0;
    for (i = 7; i < n && f[i] != '/'; i++)
        if (f[i] == '+' || f[i] == '#') return -1; /* [MQTT-4.8.2-2] */
    if (i == 7 || i + 1 >= n) return -1;           /* [MQTT-4.8.2-1] */
    group->p = f + 7;
    group->len = (uint32_t)(i - 7);
    filter->p = f + i + 1;
    filter->len = (uint32_t)(n - i - 1);
    return mqx_filter_valid(filter->p, filter->len) ? 1 : -1;
}

/* Subscribes session s to filter f (a "$share/GROUP/" prefix makes it a
 * shared subscription); returns the granted QoS, or 0x80 when the filter
 * is too deep or a pool is full. *node gets the filter's node, *existed
 * whether the subscription was there (it is replaced [MQTT-3.8.4-3]). */
static uint8_t
sub_add(uint32_t s, const uint8_t *f, size_t n, uint8_t qos, uint8_t opts,
        uint32_t sub_id, uint32_t *node, int *existed)
{
    uint32_t nd, si;
    struct sub *sb;
    struct mqx_str grp = {NULL, 0}, flt;
    uint8_t *gb = NULL;

    *existed = 0;
    if (share_split(f, n, &grp, &flt) < 0) return 0x80;
    if (mqx_topic_levels(flt.p, flt.len) > (unsigned)g.cfg.max_topic_levels)
        return 0x80;
    nd = tree_path(flt.p, flt.len, 1);
    if (nd == NIL) return 0x80;
    *node = nd;
    for (si = g.sess[s].subs; si != NIL; si = g.subs[si].sess_next)
        if (g.subs[si].node == nd &&
            sub_same_share(&g.subs[si], grp.p, (uint16_t)grp.len)) {
            g.subs[si].qos = qos;
            g.subs[si].opts = opts;
            g.subs[si].sub_id = sub_id;
            jr_sub(MQX_JR_SUB, s, (uint8_t)(qos | opts << 2), f, n, sub_id);
            *existed = 1;
            return qos;
        }
    si = pool_take(&g.p_sub);
    if (si != NIL && grp.p && !(gb = st_dup(grp.p, grp.len))) {
        pool_give(&g.p_sub, si);
        si = NIL;
    }
    if (si == NIL) {
        node_prune(nd);
        return 0x80;
    }
    sb = &g.subs[si];
    sb->node = nd;
    sb->sess = s;
    sb->qos = qos;
    sb->opts = opts;
    sb->sub_id = sub_id;
    sb->share = gb ? ST_UNIT(gb) : NIL;
    sb->share_len = (uint16_t)grp.len;
    sb->last = 0;
    sb->node_prev = NIL;
    sb->node_next = g.nodes[nd].subs;
    if (sb->node_next != NIL) g.subs[sb->node_next].node_prev = si;
    g.nodes[nd].subs = si;
    sb->sess_next = g.sess[s].subs;
    g.sess[s].subs = si;
    g.n_subs++;
    g.changes++;
    jr_sub(MQX_JR_SUB, s, (uint8_t)(qos | opts << 2), f, n, sub_id);
    return qos;
}

/* Returns 1 when the session had this filter. */
static int
sub_remove(uint32_t s, const uint8_t *f, size_t n)
{
    struct mqx_str grp = {NULL, 0}, flt;
    uint32_t nd, si, prev = NIL;

    if (share_split(f, n, &grp, &flt) < 0) return 0;
    nd = tree_path(flt.p, flt.len, 0);
    if (nd == NIL) return 0;
    for (si = g.sess[s].subs; si != NIL; prev = si, si = g.subs[si].sess_next)
        if (g.subs[si].node == nd &&
            sub_same_share(&g.subs[si], grp.p, (uint16_t)grp.len)) {
            if (prev == NIL)
                g.sess[s].subs = g.subs[si].sess_next;
            else
                g.subs[prev].sess_next = g.subs[si].sess_next;
            sub_unlink(si);
            node_prune(nd);
            g.changes++;
            jr_sub(MQX_JR_UNSUB, s, 0, f, n, 0);
            return 1;
        }
    return 0;
}

/* Forgets a session: subscriptions, queues, id. Its connection, if any,
 * has already let go of it. */
static void
sess_free(uint32_t s)
{
    struct sess *x = &g.sess[s];

    jr_sid(MQX_JR_SESS_DEL, s);
    uint32_t *pp = &g.sess_ht[sess_hash(st_ptr(x->id), x->id_len)];

    while (x->subs != NIL) {
        uint32_t si = x->subs, nd = g.subs[si].node;
        x->subs = g.subs[si].sess_next;
        sub_unlink(si);
        node_prune(nd);
    }
    qe_free_list(x->q_head);
    qe_free_list(x->f_head);
    qe_free_list(x->r_head);
    msg_unref(x->will);
    while (*pp != s)
        pp = &g.sess[*pp].hash_next;
    *pp = x->hash_next;
    st_free(st_ptr(x->id));
    if (x->user != NIL) st_free(st_ptr(x->user));
    pool_give(&g.p_sess, s);
}

static void
sess_dropped(struct sess *s)
{
    s->dropped++;
    g.pub_dropped++;
}

/* Queues message m for session si at `qos`. Policy when full: an online
 * client whose queue passed max_queued_messages/bytes (or when the entry
 * pool is full, for QoS 1/2) is disconnected; otherwise the message is
 * dropped for this session and counted. */
static void
sess_enqueue(uint32_t si, uint32_t m, uint8_t qos, uint8_t retain)
{
    struct sess *s = &g.sess[si];
    struct conn *c = s->conn == NIL ? NULL : &g.conns[s->conn];
    uint64_t bytes = g.msgs[m].payload_len + g.msgs[m].topic_len;
    uint32_t q;
    int full;

    if (c && c->state == CONN_CLOSING) c = NULL;
    if (!c && qos == 0 && !g.cfg.queue_qos0_messages) return;
    full = (g.cfg.max_queued_messages &&
            s->q_count >= (uint64_t)g.cfg.max_queued_messages) ||
           (g.cfg.max_queued_bytes &&
            s->q_bytes + bytes > (uint64_t)g.cfg.max_queued_bytes);
    q = full ? NIL : qe_new(m, qos, QE_QUEUED);
    if (q == NIL) {
        sess_dropped(s);
        if (c && (full || qos > 0)) {
            int n;
            const char *id = sess_id(si, &n);
            log_at(LOG_T_NOTICE,
                   "Client " ID_FMT " disconnected: outgoing queue full "
                   "(%u messages).",
                   n, id, s->q_count);
            conn_disconnect(c, MQX_RC_QUOTA, "outgoing queue full");
        }
        return;
    }
    g.qents[q].retain = retain;
    sess_append(s, q, 0);
    if (!s->clean) g.changes++;
    jr_queue(si, m, qos, retain);
    if (c) conn_dirty(c);
}

/* Delivers a message to every matching session and updates the retained
 * store; `from` is the publishing session (No Local), NIL for the broker's
 * own. The message must have refs 0 on entry; it is freed if nobody took
 * it. Returns the number of deliveries queued (PUBACK 0x10 when 0). */
static uint32_t
route(uint32_t m, uint32_t from)
{
    struct msg *x = &g.msgs[m];
    uint32_t i, n = 0;

    msg_ref(m); /* held while routing */
    if (x->retain)
        ret_set(x->payload_len ? m : NIL, msg_topic(x), x->topic_len);
    g.route_from = from;
    tree_route(msg_topic(x), x->topic_len);
    for (i = 0; i < g.n_match; i++) {
        uint32_t s = g.match[i];
        uint8_t qos =
            g.sess[s].match_qos < x->qos ? g.sess[s].match_qos : x->qos;
        if (!acl_allows(s, msg_topic(x), x->topic_len, MQX_ACL_READ))
            continue; /* a wide subscription delivers only what it may read */
        /* [MQTT-3.3.1-9] retain flag 0, unless Retain As Published */
        sess_enqueue(s, m, qos,
                     g.sess[s].match_rap && x->retain ? QF_RETAIN : 0);
        n++;
    }
    for (i = 0; i < g.n_spick; i++) {
        const struct sub *sb = &g.subs[g.spick[i]];
        uint8_t f = QF_SHARED;
        if ((sb->opts & SO_RAP) && x->retain) f |= QF_RETAIN;
        sess_enqueue(sb->sess, m, sb->qos < x->qos ? sb->qos : x->qos, f);
        n++;
    }
    msg_unref(m);
    return n;
}

/* Publishes a will. Its Message Expiry Interval counts from now
 * [MQTT-3.1.3.2.4]: until then msg.expire holds the interval itself. */
static void
will_publish(uint32_t m)
{
    struct msg *x = &g.msgs[m];

    if (x->expire) x->expire += (uint32_t)time(NULL);
    (void)route(m, NIL);
}

/* When an offline session ends (0: never): a 5.0 session by its Session
 * Expiry Interval (0xFFFFFFFF: never, but persistent_client_expiration
 * still applies), a 3.1.1 one by persistent_client_expiration. */
static int64_t
sess_expiry_ms(const struct sess *s)
{
    if (s->proto == 5 && s->expiry != UINT32_MAX)
        return g.now + (int64_t)s->expiry * 1000 + (s->expiry ? 0 : 1);
    return g.cfg.persistent_client_expiration
               ? g.now + g.cfg.persistent_client_expiration * 1000
               : 0;
}

/* Another member of a shared subscription's group for a message the
 * member `from` will not receive: online first, then round robin. */
static uint32_t
share_other(uint32_t from)
{
    const struct sub *f = &g.subs[from];
    const uint8_t *name = st_ptr(f->share);
    uint32_t si, best = NIL;

    for (si = g.nodes[f->node].subs; si != NIL; si = g.subs[si].node_next) {
        const struct sub *sb = &g.subs[si];
        const struct sess *s = &g.sess[sb->sess];
        if (sb->sess == f->sess || !sub_same_share(sb, name, f->share_len))
            continue;
        if (s->conn == NIL || g.conns[s->conn].state != CONN_ONLINE) continue;
        if (best == NIL || sb->last < g.subs[best].last) best = si;
    }
    return best;
}

/* A member of shared subscriptions leaves with its session: what it was
 * given through them and has not acknowledged (queued, or sent without a
 * PUBACK/PUBREC) goes to another online member of the group, so the group
 * still gets each QoS 1/2 message at least once. (MQTT 5.0 [MQTT-4.8.2-5]
 * would drop them; see README.) */
static void
share_redeliver(uint32_t si)
{
    struct sess *s = &g.sess[si];
    uint32_t *lists[2] = {&s->q_head, &s->f_head}, l;

    for (l = 0; l < 2; l++) {
        uint32_t q;
        for (q = *lists[l]; q != NIL; q = g.qents[q].next) {
            struct qent *e = &g.qents[q];
            const struct msg *m;
            uint32_t sb, to = NIL;
            if (!(e->retain & QF_SHARED) || e->msg == NIL || e->qos == 0 ||
                e->state == QE_PUBCOMP)
                continue;
            m = &g.msgs[e->msg];
            for (sb = s->subs; sb != NIL && to == NIL;
                 sb = g.subs[sb].sess_next)
                if (g.subs[sb].share != NIL &&
                    node_matches(g.subs[sb].node, msg_topic(m), m->topic_len))
                    to = share_other(sb);
            if (to == NIL) continue;
            g.subs[to].last = ++g.share_seq;
            sess_enqueue(g.subs[to].sess, e->msg,
                         g.subs[to].qos < e->qos ? g.subs[to].qos : e->qos,
                         QF_SHARED);
        }
    }
}

/* Publishes a message made by the broker itself ($SYS, wills are routed by
 * the reaper). Dropped and counted when the store is full. */
static void
route_new(const char *topic, const uint8_t *payload, size_t pl, uint8_t qos,
          uint8_t retain)
{
    uint32_t m = msg_new((const uint8_t *)topic, strlen(topic), payload, pl,
                         qos, retain);

    if (m == NIL) {
        g.pub_dropped++;
        return;
    }
    (void)route(m, NIL);
}

/* Queues the retained messages matching a new subscription: at filter
 * level f[pos..] below node nd. */
static void ret_deliver(uint32_t s, uint32_t nd, uint8_t qos);

static void
ret_all_below(uint32_t s, uint32_t nd, uint8_t qos, int skip_dollar)
{
    uint32_t c;

    for (c = g.nodes[nd].child; c != NIL; c = g.nodes[c].sibling) {
        if (skip_dollar && g.nodes[c].name_len > 0 &&
            *st_ptr(g.nodes[c].name) == '$')
            continue;
        ret_deliver(s, c, qos);
        ret_all_below(s, c, qos, 0);
    }
}

static void
ret_deliver(uint32_t s, uint32_t nd, uint8_t qos)
{
    uint32_t m = g.nodes[nd].retained;

    if (m == NIL || msg_expired(&g.msgs[m])) return;
    if (!acl_allows(s, msg_topic(&g.msgs[m]), g.msgs[m].topic_len,
                    MQX_ACL_READ))
        return;
    sess_enqueue(s, m, g.msgs[m].qos < qos ? g.msgs[m].qos : qos, QF_RETAIN);
}

static void
ret_match(uint32_t s, uint32_t nd, const uint8_t *f, size_t n, size_t pos,
          uint8_t qos)
{
    int root = nd == 0;
    size_t e = pos;
    uint32_t c;

    while (e < n && f[e] != '/')
        e++;
    if (e - pos == 1 && f[pos] == '#') {
        if (!root) ret_deliver(s, nd, qos); /* "a/#" matches "a" */
        ret_all_below(s, nd, qos, root);
        return;
    }
    if (e - pos == 1 && f[pos] == '+') {
        for (c = g.nodes[nd].child; c != NIL; c = g.nodes[c].sibling) {
            if (root && g.nodes[c].name_len && *st_ptr(g.nodes[c].name) == '$')
                continue;
            if (e >= n)
                ret_deliver(s, c, qos);
            else
                ret_match(s, c, f, n, e + 1, qos);
        }
        return;
    }
    c = node_find(nd, f + pos, e - pos);
    if (c == NIL) return;
    if (e >= n)
        ret_deliver(s, c, qos);
    else
        ret_match(s, c, f, n, e + 1, qos);
}

/* ==== [11] Crypto glue: the only place mbedtls_* appears ==== */
/* Password hashing (SHA-512 and PBKDF2-HMAC-SHA512, Mosquitto's $6$ and
 * $7$) through mbedTLS's crypto library, present in every build (TLS=0
 * too), then native TLS (TLS=1). Shims cover mbedTLS 2.28 (Debian) and
 * 3.6 (OpenWrt). */

#include <mbedtls/md.h>
#include <mbedtls/pkcs5.h>
#include <mbedtls/version.h>

#if MBEDTLS_VERSION_NUMBER >= 0x03030000
/* 3.3+: the md-type API; the context one is deprecated */
static int
hash_pbkdf2_sha512(const uint8_t *pw, size_t pl, const uint8_t *salt, size_t sl,
                   uint32_t iter, uint8_t out[64])
{
    return mbedtls_pkcs5_pbkdf2_hmac_ext(MBEDTLS_MD_SHA512, pw, pl, salt, sl,
                                         iter, 64, out);
}
#else
static int
hash_pbkdf2_sha512(const uint8_t *pw, size_t pl, const uint8_t *salt, size_t sl,
                   uint32_t iter, uint8_t out[64])
{
    mbedtls_md_context_t ctx;
    int rc;

    mbedtls_md_init(&ctx);
    rc =
        mbedtls_md_setup(&ctx, mbedtls_md_info_from_type(MBEDTLS_MD_SHA512), 1);
    if (rc == 0)
        rc = mbedtls_pkcs5_pbkdf2_hmac(&ctx, pw, pl, salt, sl, iter, 64, out);
    mbedtls_md_free(&ctx);
    return rc;
}
#endif

/* SHA-512 of the password, then the salt: Mosquitto's $6$. */
static int
hash_sha512_salted(const uint8_t *pw, size_t pl, const uint8_t *salt, size_t sl,
                   uint8_t out[64])
{
    mbedtls_md_context_t ctx;
    int rc;

    mbedtls_md_init(&ctx);
    rc =
        mbedtls_md_setup(&ctx, mbedtls_md_info_from_type(MBEDTLS_MD_SHA512), 0);
    if (rc == 0) rc = mbedtls_md_starts(&ctx);
    if (rc == 0) rc = mbedtls_md_update(&ctx, pw, pl);
    if (rc == 0) rc = mbedtls_md_update(&ctx, salt, sl);
    if (rc == 0) rc = mbedtls_md_finish(&ctx, out);
    mbedtls_md_free(&ctx);
    return rc;
}

/* The hash of a password as a password file line of `kind` stores it. */
static int
hash_password(uint8_t kind, const uint8_t *pw, size_t pl, const uint8_t *salt,
              size_t sl, uint32_t iter, uint8_t out[64])
{
    return kind == 7 ? hash_pbkdf2_sha512(pw, pl, salt, sl, iter, out)
                     : hash_sha512_salted(pw, pl, salt, sl, out);
}

/* Random bytes from the kernel (salts). */
static int
hash_random(uint8_t *p, size_t n)
{
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    size_t got = 0;

    if (fd < 0) return -1;
    while (got < n) {
        ssize_t k = read(fd, p + got, n - got);
        if (k <= 0) break;
        got += (size_t)k;
    }
    close(fd);
    return got == n ? 0 : -1;
}

/* Constant-time comparison of two 64-byte hashes. */
static int
hash_equal(const uint8_t *a, const uint8_t *b)
{
    unsigned d = 0;
    int i;

    for (i = 0; i < 64; i++)
        d |= (unsigned)(a[i] ^ b[i]);
    return d == 0;
}

/* Does the password match the user's line of the password file? */
static int
auth_password_ok(const struct pwent *e, struct mqx_str pass)
{
    uint8_t h[64];

    if (hash_password(e->kind, pass.p ? pass.p : (const uint8_t *)"", pass.len,
                      e->salt, e->salt_len, e->iter, h))
        return 0;
    return hash_equal(h, e->hash);
}

/* -- Native TLS: listeners with certfile and keyfile -------------------- */
/* One mbedtls_ssl_config per TLS listener, loaded at start-up (tls_load);
 * one session per TLS connection from a pool of max_tls_connections
 * slots. mbedTLS sets a session's buffers up at accept and frees them at
 * close (its own allocator: Debian's and OpenWrt's builds have no
 * MBEDTLS_PLATFORM_MEMORY), so the heap it uses is bounded by the pool;
 * after the handshake a session's reads and writes do not allocate. The
 * socket I/O goes through tls_bio_*: non-blocking, WANT_READ/WANT_WRITE
 * map to poll() events. Builds with mbedTLS 2.28 and 3.x; needs none of
 * MBEDTLS_VERSION_C, MBEDTLS_DEBUG_C, static-RSA or DHE key exchange. */

#if MQX_TLS
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/oid.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crl.h>
#include <mbedtls/x509_crt.h>
#if defined(MBEDTLS_ERROR_C)
#include <mbedtls/error.h>
#endif
#if MBEDTLS_VERSION_NUMBER >= 0x03000000
#include <psa/crypto.h>
#define TLS_V3 1
#else
#define TLS_V3 0
#endif
#ifndef MBEDTLS_PRIVATE /* 2.x: every field is public */
#define MBEDTLS_PRIVATE(m) m
#endif
#if TLS_V3 && defined(MBEDTLS_SSL_PROTO_TLS1_3)
#define TLS_HAVE_13 1
#else
#define TLS_HAVE_13 0
#endif
#define TLS_SUITES 256 /* ciphersuite ids of one listener */

struct tls_slot {
    mbedtls_ssl_context ssl;
    uint32_t wlen; /* a write mbedTLS wants repeated with this length */
    int end;       /* a read's end (0 or -1) held back behind its data */
    uint8_t done;  /* handshake over */
};

static struct tls_lsn {
    mbedtls_ssl_config conf;
    mbedtls_x509_crt cert, ca;
    mbedtls_x509_crl crl;
    mbedtls_pk_context key;
    int suites[TLS_SUITES + 1];
} tls_l[MQX_MAX_LISTENERS];
static mbedtls_entropy_context tls_entropy;
static mbedtls_ctr_drbg_context tls_drbg;

static const char *
tls_strerror(int rc, char *buf, size_t cap)
{
#if defined(MBEDTLS_ERROR_C)
    mbedtls_strerror(rc, buf, cap);
#else
    snprintf(buf, cap, "mbedTLS error -0x%04x", (unsigned)-rc);
#endif
    return buf;
}

/* "mbedTLS 2.28.3 (TLS 1.2)": for -t, the budget line and errors */
static const char *
tls_lib(void)
{
    return "mbedTLS " MBEDTLS_VERSION_STRING
#if TLS_HAVE_13
           " (TLS 1.2, 1.3)";
#else
           " (TLS 1.2)";
#endif
}

/* Bytes one session holds at most between handshakes: the context, both
 * record buffers (MBEDTLS_SSL_IN/OUT_CONTENT_LEN of the mbedTLS build)
 * with their record overhead, the session and the peer certificate. */
static size_t
tls_session_bytes(void)
{
    return sizeof(struct tls_slot) + MBEDTLS_SSL_IN_CONTENT_LEN +
           MBEDTLS_SSL_OUT_CONTENT_LEN + (size_t)2 * 512 + 4096;
}

/* Why a file cannot be used: errno's words when it cannot be read. */
static const char *
tls_file_err(const char *path, int rc, char *buf, size_t cap)
{
    FILE *f = fopen(path, "rb");

    if (!f) {
        snprintf(buf, cap, "%s", strerror(errno));
        return buf;
    }
    fclose(f);
    return tls_strerror(rc, buf, cap);
}

/* A file option must name a regular file: mbedTLS would take a folder's
 * size as 2^63 and fail with "memory allocation failed". */
static int
tls_regular(struct cfg *c, const struct listener *l, int line, const char *what,
            const char *path)
{
    struct stat st;

    if (stat(path, &st) != 0) {
        cfg_err(c, l->file, line, "%s %s: %s", what, path, strerror(errno));
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        cfg_err(c, l->file, line, "%s %s: not a regular file%s", what, path,
                S_ISDIR(st.st_mode) && strcmp(what, "cafile") == 0
                    ? " (use capath for a folder)"
                    : "");
        return -1;
    }
    return 0;
}

/* A suite name as mbedTLS spells it: IANA's underscores become dashes,
 * and TLS 1.3 names get mbedTLS's "TLS1-3-" prefix. 0: unknown. */
static int
tls_suite_id(const char *name, size_t n, int v13)
{
    char b[96];
    size_t i, o = 0;
    int id;

    if (n + 8 >= sizeof b) return 0;
    if (v13 && n > 4 && memcmp(name, "TLS_", 4) == 0) {
        memcpy(b, "TLS1-3-", 7);
        o = 7;
        name += 4;
        n -= 4;
    }
    for (i = 0; i < n; i++) {
        b[o++] = name[i];
        if (name[i] == '_') b[o - 1] = '-';
    }
    b[o] = '\0';
    id = mbedtls_ssl_get_ciphersuite_id(b);
    if (!id || (strncmp(b, "TLS1-3-", 7) == 0) != v13) return 0;
    for (const int *s = mbedtls_ssl_list_ciphersuites(); *s; s++)
        if (*s == id) return id;
    return 0;
}

/* Appends the suites of one version: the listener's list, or every suite
 * of the build for that version when the option is not set. */
static int
tls_suites_add(struct cfg *c, const struct listener *l, int v13, int *out,
               size_t *n)
{
    const char *list = v13 ? l->ciphers13 : l->ciphers, *p = list;
    const char *key = v13 ? "ciphers_tls1.3" : "ciphers";

    if (!list[0]) {
        for (const int *s = mbedtls_ssl_list_ciphersuites(); *s; s++) {
            const char *nm = mbedtls_ssl_get_ciphersuite_name(*s);
            if ((strncmp(nm, "TLS1-3-", 7) == 0) == v13 && *n < TLS_SUITES)
                out[(*n)++] = *s;
        }
        return 0;
    }
    while (*p) {
        size_t len = strcspn(p, ": ,");
        int id = len ? tls_suite_id(p, len, v13) : 0;
        if (len && !id) {
            size_t off;
            cfg_err(c, l->file, v13 ? l->line_ciphers13 : l->line_ciphers,
                    "%s: '%.*s' is not a %s suite of %s; supported:", key,
                    (int)len, p, v13 ? "TLS 1.3" : "TLS 1.2", tls_lib());
            off = strlen(c->err);
            for (const int *s = mbedtls_ssl_list_ciphersuites(); *s; s++) {
                const char *nm = mbedtls_ssl_get_ciphersuite_name(*s);
                int k;
                if ((strncmp(nm, "TLS1-3-", 7) == 0) != v13) continue;
                k = snprintf(c->err + off, sizeof c->err - off, " %s", nm);
                if (k < 0 || (size_t)k >= sizeof c->err - off) break;
                off += (size_t)k;
            }
            return -1;
        }
        if (id && *n < TLS_SUITES) out[(*n)++] = id;
        p += len;
        if (*p) p++;
    }
    return 0;
}

/* Loads one TLS listener's files and settings into tls_l[li]. */
static int
tls_load_lsn(struct cfg *c, uint32_t li)
{
    const struct listener *l = &c->lsn[li];
    struct tls_lsn *t = &tls_l[li];
    char e[512];
    int rc;
    size_t n = 0;

    mbedtls_ssl_config_init(&t->conf);
    mbedtls_x509_crt_init(&t->cert);
    mbedtls_x509_crt_init(&t->ca);
    mbedtls_x509_crl_init(&t->crl);
    mbedtls_pk_init(&t->key);
    if (tls_regular(c, l, l->line_certfile, "certfile", l->certfile) ||
        tls_regular(c, l, l->line_keyfile, "keyfile", l->keyfile) ||
        (l->cafile[0] &&
         tls_regular(c, l, l->line_cafile, "cafile", l->cafile)) ||
        (l->crlfile[0] &&
         tls_regular(c, l, l->line_crlfile, "crlfile", l->crlfile)))
        return -1;
    rc = mbedtls_x509_crt_parse_file(&t->cert, l->certfile);
    if (rc) {
        cfg_err(c, l->file, l->line_certfile, "certfile %s: %s", l->certfile,
                tls_file_err(l->certfile, rc, e, sizeof e));
        return -1;
    }
#if TLS_V3
    rc = mbedtls_pk_parse_keyfile(&t->key, l->keyfile, NULL,
                                  mbedtls_ctr_drbg_random, &tls_drbg);
#else
    rc = mbedtls_pk_parse_keyfile(&t->key, l->keyfile, NULL);
#endif
    if (rc == MBEDTLS_ERR_PK_PASSWORD_REQUIRED ||
        rc == MBEDTLS_ERR_PK_PASSWORD_MISMATCH) {
        cfg_err(c, l->file, l->line_keyfile,
                "keyfile %s is protected by a password, and mqttpx does not "
                "ask for one: store it decrypted (openssl pkey -in KEY -out "
                "NEW), readable only by the broker",
                l->keyfile);
        return -1;
    }
    if (rc) {
        cfg_err(c, l->file, l->line_keyfile, "keyfile %s: %s", l->keyfile,
                tls_file_err(l->keyfile, rc, e, sizeof e));
        return -1;
    }
#if TLS_V3
    rc = mbedtls_pk_check_pair(&t->cert.pk, &t->key, mbedtls_ctr_drbg_random,
                               &tls_drbg);
#else
    rc = mbedtls_pk_check_pair(&t->cert.pk, &t->key);
#endif
    if (rc) {
        cfg_err(c, l->file, l->line_keyfile,
                "keyfile %s does not match the certificate of certfile %s",
                l->keyfile, l->certfile);
        return -1;
    }
    if (l->cafile[0] && (rc = mbedtls_x509_crt_parse_file(&t->ca, l->cafile))) {
        cfg_err(c, l->file, l->line_cafile, "cafile %s: %s", l->cafile,
                rc > 0 ? "some certificates in it could not be parsed"
                       : tls_file_err(l->cafile, rc, e, sizeof e));
        return -1;
    }
    if (l->capath[0]) {
        int had = t->ca.version != 0;
        rc = mbedtls_x509_crt_parse_path(&t->ca, l->capath);
        if (rc < 0 || (!had && t->ca.version == 0)) {
            cfg_err(c, l->file, l->line_capath, "capath %s: %s", l->capath,
                    rc < 0 ? tls_file_err(l->capath, rc, e, sizeof e)
                           : "no certificate found");
            return -1;
        }
    }
    if (l->crlfile[0] &&
        (rc = mbedtls_x509_crl_parse_file(&t->crl, l->crlfile))) {
        cfg_err(c, l->file, l->line_crlfile, "crlfile %s: %s", l->crlfile,
                tls_file_err(l->crlfile, rc, e, sizeof e));
        return -1;
    }
    if (l->tls_min == 13 && !TLS_HAVE_13) {
        cfg_err(c, l->file, l->line_tlsver,
                "tls_version tlsv1.3: this build's %s has no TLS 1.3",
                tls_lib());
        return -1;
    }
#if !defined(MBEDTLS_SSL_KEEP_PEER_CERTIFICATE)
    if (l->use_identity || l->use_subject) {
        cfg_err(c, l->file, l->use_identity ? l->line_ident : l->line_subject,
                "%s: this mbedTLS build does not keep the peer certificate "
                "(MBEDTLS_SSL_KEEP_PEER_CERTIFICATE)",
                l->use_identity ? "use_identity_as_username"
                                : "use_subject_as_username");
        return -1;
    }
#endif
    rc = mbedtls_ssl_config_defaults(&t->conf, MBEDTLS_SSL_IS_SERVER,
                                     MBEDTLS_SSL_TRANSPORT_STREAM,
                                     MBEDTLS_SSL_PRESET_DEFAULT);
    if (rc == 0) {
        mbedtls_ssl_conf_rng(&t->conf, mbedtls_ctr_drbg_random, &tls_drbg);
        rc = mbedtls_ssl_conf_own_cert(&t->conf, &t->cert, &t->key);
    }
    if (rc) {
        cfg_err(c, l->file, l->line_certfile, "certfile %s: %s", l->certfile,
                tls_strerror(rc, e, sizeof e));
        return -1;
    }
    if (l->require_certificate) {
        mbedtls_ssl_conf_ca_chain(&t->conf, &t->ca,
                                  l->crlfile[0] ? &t->crl : NULL);
        mbedtls_ssl_conf_authmode(&t->conf, MBEDTLS_SSL_VERIFY_REQUIRED);
    } else {
        mbedtls_ssl_conf_authmode(&t->conf, MBEDTLS_SSL_VERIFY_NONE);
    }
#if TLS_V3
    mbedtls_ssl_conf_min_tls_version(
        &t->conf, l->tls_min == 13 ? MBEDTLS_SSL_VERSION_TLS1_3
                                   : MBEDTLS_SSL_VERSION_TLS1_2);
#else
    mbedtls_ssl_conf_min_version(&t->conf, MBEDTLS_SSL_MAJOR_VERSION_3,
                                 MBEDTLS_SSL_MINOR_VERSION_3);
#endif
    if (l->ciphers[0] || l->ciphers13[0]) {
        if (tls_suites_add(c, l, 0, t->suites, &n) ||
            tls_suites_add(c, l, 1, t->suites, &n))
            return -1;
        t->suites[n] = 0;
        mbedtls_ssl_conf_ciphersuites(&t->conf, t->suites);
    }
    return 0;
}

/* Start-up: the random generator and every TLS listener. 0, or -1 with
 * c->err naming the file and line of the option at fault. */
static int
tls_load(struct cfg *c)
{
    static int seeded;
    uint32_t i;
    int rc;

    for (i = 0; i < c->n_lsn && !c->lsn[i].tls; i++)
        ;
    if (i == c->n_lsn) return 0;
    if (!seeded) {
#if TLS_V3 && defined(MBEDTLS_PSA_CRYPTO_C)
        if (psa_crypto_init() != PSA_SUCCESS) {
            snprintf(c->err, sizeof c->err, "TLS: psa_crypto_init failed");
            return -1;
        }
#endif
        mbedtls_entropy_init(&tls_entropy);
        mbedtls_ctr_drbg_init(&tls_drbg);
        rc =
            mbedtls_ctr_drbg_seed(&tls_drbg, mbedtls_entropy_func, &tls_entropy,
                                  (const unsigned char *)"mqttpx", 6);
        if (rc) {
            char e[256];
            snprintf(c->err, sizeof c->err, "TLS: random generator: %s",
                     tls_strerror(rc, e, sizeof e));
            return -1;
        }
        seeded = 1;
    }
    for (i = 0; i < c->n_lsn; i++)
        if (c->lsn[i].tls && tls_load_lsn(c, i)) return -1;
    return 0;
}

static int
tls_bio_send(void *ctx, const unsigned char *buf, size_t len)
{
    const struct conn *c = ctx;

    for (;;) {
        ssize_t n = send(c->fd, buf, len, MSG_NOSIGNAL);
        if (n >= 0) return (int)n;
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return MBEDTLS_ERR_SSL_WANT_WRITE;
        return MBEDTLS_ERR_NET_SEND_FAILED;
    }
}

static int
tls_bio_recv(void *ctx, unsigned char *buf, size_t len)
{
    const struct conn *c = ctx;

    for (;;) {
        ssize_t n = recv(c->fd, buf, len, 0);
        if (n >= 0) return (int)n;
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return MBEDTLS_ERR_SSL_WANT_READ;
        return MBEDTLS_ERR_NET_RECV_FAILED;
    }
}

/* A session for a new connection of a TLS listener: 0, -1 when the pool
 * is full, -2 when mbedTLS cannot allocate its buffers. */
static int
tls_open(struct conn *c)
{
    uint32_t i = pool_take(&g.p_tls);
    struct tls_slot *t;

    if (i == NIL) return -1;
    t = &g.tls[i];
    mbedtls_ssl_init(&t->ssl);
    t->wlen = 0;
    t->end = 1;
    t->done = 0;
    if (mbedtls_ssl_setup(&t->ssl, &tls_l[c->lsn].conf)) {
        mbedtls_ssl_free(&t->ssl);
        pool_give(&g.p_tls, i);
        return -2;
    }
    mbedtls_ssl_set_bio(&t->ssl, c, tls_bio_send, tls_bio_recv, NULL);
    c->tls = i;
    return 0;
}

/* Ends a session: close_notify when the handshake was over (best effort,
 * the socket is closed next), then the slot goes back to the pool. */
static void
tls_close(struct conn *c)
{
    struct tls_slot *t;

    if (c->tls == NIL) return;
    t = &g.tls[c->tls];
    if (t->done) (void)mbedtls_ssl_close_notify(&t->ssl);
    mbedtls_ssl_free(&t->ssl);
    pool_give(&g.p_tls, c->tls);
    c->tls = NIL;
}

enum { TLS_DONE, TLS_WANT_READ, TLS_WANT_WRITE, TLS_FAIL };

/* One step of the handshake; on TLS_FAIL, why holds mbedTLS's reason and,
 * when a client certificate was refused, the verification's. */
static int
tls_handshake(struct conn *c, char *why, size_t cap)
{
    struct tls_slot *t = &g.tls[c->tls];
    int rc = mbedtls_ssl_handshake(&t->ssl);
    uint32_t flags;
    size_t off;

    if (rc == 0) {
        t->done = 1;
        return TLS_DONE;
    }
    if (rc == MBEDTLS_ERR_SSL_WANT_READ) return TLS_WANT_READ;
    if (rc == MBEDTLS_ERR_SSL_WANT_WRITE) return TLS_WANT_WRITE;
    tls_strerror(rc, why, cap);
    flags = mbedtls_ssl_get_verify_result(&t->ssl);
    off = strlen(why);
    if (flags && flags != (uint32_t)-1 && off + 8 < cap) {
        char v[512], *p;
        if (mbedtls_x509_crt_verify_info(v, sizeof v, "", flags) > 0) {
            for (p = v; *p; p++)
                if (*p == '\n') *p = ';';
            if (p > v && p[-1] == ';') p[-1] = '\0';
            snprintf(why + off, cap - off, " (%s)", v);
        }
    }
    return TLS_FAIL;
}

/* Reads decrypted bytes: as many records as fit in buf. Like recv():
 * > 0 bytes, 0 at the end of the stream, -1 with errno (EAGAIN: nothing
 * yet). An end that follows data is held back for the next call. */
static ssize_t
tls_recv(struct conn *c, uint8_t *buf, size_t cap)
{
    struct tls_slot *t = &g.tls[c->tls];
    size_t got = 0;

    if (t->end <= 0) {
        ssize_t e = t->end;
        t->end = 1;
        if (e < 0) errno = EIO;
        return e;
    }
    while (got < cap) {
        int rc = mbedtls_ssl_read(&t->ssl, buf + got, cap - got);
        if (rc > 0) {
            got += (size_t)rc;
            continue;
        }
        if (rc == MBEDTLS_ERR_SSL_WANT_READ ||
            rc == MBEDTLS_ERR_SSL_WANT_WRITE) {
            if (got) break;
            errno = EAGAIN;
            return -1;
        }
        /* 0 or close_notify: the end; anything else: an error */
        t->end = rc == 0 || rc == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY ? 0 : -1;
        if (got) break;
        return tls_recv(c, buf, cap);
    }
    return (ssize_t)got;
}

/* Does mbedTLS hold bytes (or an end) that poll() will not announce? */
static int
tls_pending(const struct conn *c)
{
    const struct tls_slot *t = &g.tls[c->tls];

    return t->end <= 0 || mbedtls_ssl_get_bytes_avail(&t->ssl) > 0 ||
           mbedtls_ssl_check_pending(&t->ssl);
}

/* Encrypts and sends; like send(): bytes taken, or -1 with errno (EAGAIN:
 * the socket is full; mbedTLS then wants the same call again, so the
 * length is kept and repeated). */
static ssize_t
tls_send(struct conn *c, const uint8_t *p, size_t n)
{
    struct tls_slot *t = &g.tls[c->tls];
    int rc;

    if (t->wlen && t->wlen <= n) n = t->wlen;
    rc = mbedtls_ssl_write(&t->ssl, p, n);
    if (rc >= 0) {
        t->wlen = 0;
        return rc;
    }
    if (rc == MBEDTLS_ERR_SSL_WANT_WRITE || rc == MBEDTLS_ERR_SSL_WANT_READ) {
        t->wlen = (uint32_t)n;
        errno = EAGAIN;
        return -1;
    }
    errno = EIO;
    return -1;
}

/* RFC 2253 escaping of one attribute value, as OpenSSL's XN_FLAG_RFC2253
 * (Mosquitto's use_subject_as_username): specials with a backslash,
 * control and non-ASCII bytes as \XX. */
static size_t
tls_dn_value(char *out, size_t cap, size_t off, const uint8_t *v, size_t n)
{
    size_t i;

    for (i = 0; i < n && off + 4 < cap; i++) {
        uint8_t ch = v[i];
        if (ch < 0x20 || ch >= 0x7f)
            off += (size_t)snprintf(out + off, cap - off, "\\%02X", ch);
        else {
            if (strchr(",+\"\\<>;", ch) ||
                (i == 0 && (ch == '#' || ch == ' ')) ||
                (i + 1 == n && ch == ' '))
                out[off++] = '\\';
            out[off++] = (char)ch;
        }
    }
    return i < n ? cap : off;
}

/* Attribute names mbedTLS 2.28 does not know by name, as OpenSSL prints
 * them: userId (0.9.2342.19200300.100.1.1). */
static const char *
tls_dn_name(const mbedtls_asn1_buf *oid)
{
    static const uint8_t uid[] = {0x09, 0x92, 0x26, 0x89, 0x93,
                                  0xf2, 0x2c, 0x64, 0x01, 0x01};
    const char *nm = NULL;

    if (mbedtls_oid_get_attr_short_name(oid, &nm) == 0)
        return strcmp(nm, "uid") == 0 ? "UID" : nm;
    if (oid->len == sizeof uid && memcmp(oid->p, uid, sizeof uid) == 0)
        return "UID";
    return NULL;
}

/* The subject in RFC 2253 form as OpenSSL's XN_FLAG_RFC2253 prints it
 * (Mosquitto's use_subject_as_username): every attribute from the last to
 * the first, "+" between those of one multi-valued RDN, "," between RDNs;
 * unknown attributes as OID=#DER. Returns the length, or 0 when it does
 * not fit. */
static size_t
tls_dn_rfc2253(const mbedtls_x509_name *dn, char *out, size_t cap)
{
    const mbedtls_x509_name *at[64];
    size_t n = 0, off = 0, i;

    for (; dn && n < 64; dn = dn->next)
        if (dn->oid.p) at[n++] = dn;
    if (dn) return 0;
    for (i = n; i-- > 0;) {
        const char *nm = tls_dn_name(&at[i]->oid);
        char oid[64];
        if (off + 2 >= cap) return 0;
        if (i + 1 < n) /* the entry before it merges into this one's RDN */
            out[off++] = at[i]->MBEDTLS_PRIVATE(next_merged) ? '+' : ',';
        if (!nm &&
            mbedtls_oid_get_numeric_string(oid, sizeof oid, &at[i]->oid) < 0)
            return 0;
        off += (size_t)snprintf(out + off, cap - off, "%s=", nm ? nm : oid);
        if (off >= cap) return 0;
        if (nm && (at[i]->val.tag == MBEDTLS_ASN1_UTF8_STRING ||
                   at[i]->val.tag == MBEDTLS_ASN1_PRINTABLE_STRING ||
                   at[i]->val.tag == MBEDTLS_ASN1_IA5_STRING ||
                   at[i]->val.tag == MBEDTLS_ASN1_T61_STRING)) {
            off = tls_dn_value(out, cap, off, at[i]->val.p, at[i]->val.len);
        } else { /* #, then the DER: tag, length, bytes */
            size_t k, len = at[i]->val.len;
            if (len > 127 || off + 6 + 2 * len >= cap) return 0;
            off += (size_t)snprintf(out + off, cap - off, "#%02X%02X",
                                    (unsigned)at[i]->val.tag, (unsigned)len);
            for (k = 0; k < len; k++)
                off += (size_t)snprintf(out + off, cap - off, "%02X",
                                        at[i]->val.p[k]);
        }
        if (off >= cap) return 0;
    }
    out[off] = '\0';
    return off;
}

/* The client certificate's identity: the first CN, or (subject) the whole
 * subject in RFC 2253 form. Returns its length; 0 when there is none. */
static size_t
tls_identity(const struct conn *c, int subject, char *out, size_t cap)
{
    const mbedtls_x509_crt *crt = NULL;
    const mbedtls_x509_name *dn;

#if defined(MBEDTLS_SSL_KEEP_PEER_CERTIFICATE)
    crt = mbedtls_ssl_get_peer_cert(&g.tls[c->tls].ssl);
#endif
    if (!crt) return 0;
    if (subject) return tls_dn_rfc2253(&crt->subject, out, cap);
    for (dn = &crt->subject; dn; dn = dn->next)
        if (dn->oid.p && MBEDTLS_OID_CMP(MBEDTLS_OID_AT_CN, &dn->oid) == 0) {
            if (dn->val.len >= cap) return 0;
            memcpy(out, dn->val.p, dn->val.len);
            out[dn->val.len] = '\0';
            return dn->val.len;
        }
    return 0;
}

/* "TLSv1.3 TLS1-3-AES-256-GCM-SHA384": what the handshake agreed on */
static void
tls_describe(const struct conn *c, char *out, size_t cap)
{
    const mbedtls_ssl_context *s = &g.tls[c->tls].ssl;

    snprintf(out, cap, "%s %s", mbedtls_ssl_get_version(s),
             mbedtls_ssl_get_ciphersuite(s));
}

#else /* MQX_TLS == 0: cfg_tls() refuses every TLS option, so no               \
         connection ever has a session and these are never reached */
struct tls_slot {
    int unused;
};
enum { TLS_DONE, TLS_WANT_READ, TLS_WANT_WRITE, TLS_FAIL };
static const char *
tls_lib(void)
{
    return "no TLS (built with TLS=0)";
}
static size_t
tls_session_bytes(void)
{
    return sizeof(struct tls_slot);
}
static int
tls_load(struct cfg *c)
{
    (void)c;
    return 0;
}
static int
tls_open(struct conn *c)
{
    (void)c;
    return -2;
}
static void
tls_close(struct conn *c)
{
    c->tls = NIL;
}
static int
tls_handshake(struct conn *c, char *why, size_t cap)
{
    (void)c;
    snprintf(why, cap, "no TLS in this build");
    return TLS_FAIL;
}
static ssize_t
tls_recv(struct conn *c, uint8_t *buf, size_t cap)
{
    (void)c, (void)buf, (void)cap;
    errno = EIO;
    return -1;
}
static int
tls_pending(const struct conn *c)
{
    (void)c;
    return 0;
}
static ssize_t
tls_send(struct conn *c, const uint8_t *p, size_t n)
{
    (void)c, (void)p, (void)n;
    errno = EIO;
    return -1;
}
static size_t
tls_identity(const struct conn *c, int subject, char *out, size_t cap)
{
    (void)c, (void)subject, (void)out, (void)cap;
    return 0;
}
static void
tls_describe(const struct conn *c, char *out, size_t cap)
{
    (void)c;
    snprintf(out, cap, "plain");
}
#endif

/* ==== [12] Persistence: snapshot writer, pure loader ==== */
/* `persistence true`: retained messages and persistent sessions (with
 * subscriptions, queued and inflight messages and next packet ids) are
 * written to persistence_location/persistence_file at autosave_interval
 * (only when something changed) and at shutdown, and read at start-up.
 * The file goes to FILE.tmp, is fsynced, renamed over FILE, and the folder
 * fsynced: a crash leaves the old or the new file, never a mix. A file
 * that fails its checks stops the start and is left as it is. */

/* The fixed part: magic, version, save time. MQX_MORE: too short. */
enum mqx_rc
mqx_store_header(const uint8_t *buf, size_t len, uint16_t *version,
                 uint32_t *saved, const char **err)
{
    if (len < MQX_STORE_HDR) {
        *err = "truncated: no complete header";
        return MQX_MORE;
    }
    if (memcmp(buf, "MQXSTORE", 8) != 0) {
        *err = "not an mqttpx persistence file";
        return MQX_BAD;
    }
    *version = (uint16_t)(buf[8] << 8 | buf[9]);
    *saved = (uint32_t)buf[12] << 24 | (uint32_t)buf[13] << 16 |
             (uint32_t)buf[14] << 8 | buf[15];
    if (*version == 0 || *version > MQX_STORE_VERSION) {
        *err = "written by a newer mqttpx (unknown format version)";
        return MQX_BAD;
    }
    return MQX_DONE;
}

/* The record at *off, its checksum verified. MQX_MORE: the file ends
 * inside it (truncated). */
enum mqx_rc
mqx_store_next(const uint8_t *buf, size_t len, size_t *off,
               struct mqx_store_rec *r, const char **err)
{
    const uint8_t *p = buf + *off;
    size_t left = len - *off;
    uint32_t n, crc;

    if (left < 5) {
        *err = "truncated: a record is cut short";
        return MQX_MORE;
    }
    n = (uint32_t)p[1] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 8 |
        p[4];
    if (left - 5 < (size_t)n + 4) {
        *err = "truncated: a record is cut short";
        return MQX_MORE;
    }
    crc = (uint32_t)p[5 + n] << 24 | (uint32_t)p[6 + n] << 16 |
          (uint32_t)p[7 + n] << 8 | p[8 + n];
    if (mqx_crc32c(0, p, 5 + (size_t)n) != crc) {
        *err = "checksum mismatch (the file is damaged)";
        return MQX_BAD;
    }
    r->type = p[0];
    r->body = p + 5;
    r->len = n;
    *off += 9 + (size_t)n;
    return MQX_DONE;
}

/* --- writing --- */

static void
sw_flush(struct sw *w)
{
    size_t off = 0;

    while (off < w->n && !w->err) {
        ssize_t k = write(w->fd, w->buf + off, w->n - off);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            w->err = k < 0 ? errno : EIO;
            break;
        }
        off += (size_t)k;
    }
    w->bytes += w->n;
    w->n = 0;
}

static void
sw_raw(struct sw *w, const void *p, size_t n)
{
    const uint8_t *b = p;

    while (n > 0) {
        size_t k = w->cap - w->n < n ? w->cap - w->n : n;
        memcpy(w->buf + w->n, b, k);
        w->n += k;
        b += k;
        n -= k;
        if (w->n == w->cap) sw_flush(w);
    }
}

static void
sw_put(struct sw *w, const void *p, size_t n)
{
    w->crc = mqx_crc32c(w->crc, p, n);
    sw_raw(w, p, n);
}

static void
sw_u8(struct sw *w, unsigned v)
{
    uint8_t b = (uint8_t)v;

    sw_put(w, &b, 1);
}

static void
sw_u16(struct sw *w, unsigned v)
{
    uint8_t b[2] = {(uint8_t)(v >> 8), (uint8_t)v};

    sw_put(w, b, 2);
}

static void
sw_u32(struct sw *w, uint32_t v)
{
    uint8_t b[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8),
                    (uint8_t)v};

    sw_put(w, b, 4);
}

static void
sw_str(struct sw *w, const uint8_t *p, size_t n)
{
    sw_u16(w, (unsigned)n);
    if (n) sw_put(w, p, n);
}

static void
sw_begin(struct sw *w, unsigned type, size_t len)
{
    w->crc = 0;
    sw_u8(w, type);
    sw_u32(w, (uint32_t)len);
}

static void
sw_end(struct sw *w)
{
    uint32_t c = w->crc;
    uint8_t b[4] = {(uint8_t)(c >> 24), (uint8_t)(c >> 16), (uint8_t)(c >> 8),
                    (uint8_t)c};

    sw_raw(w, b, 4);
    w->count++;
}

/* The text of a tree node's path: the node indexes root first into
 * path[], returning the depth and *len the filter's length. */
static unsigned
store_node_path(uint32_t nd, uint32_t *path, size_t *len)
{
    unsigned d = 0, i;
    size_t n = 0;

    for (; nd != 0 && d < MQX_MAX_TOPIC_LEVELS; nd = g.nodes[nd].parent)
        path[d++] = nd;
    for (i = 0; i < d / 2; i++) { /* root first */
        uint32_t t = path[i];
        path[i] = path[d - 1 - i];
        path[d - 1 - i] = t;
    }
    for (i = 0; i < d; i++)
        n += g.nodes[path[i]].name_len + (i ? 1u : 0u);
    *len = n;
    return d;
}

static void
store_put_path(struct sw *w, const uint32_t *path, unsigned d)
{
    unsigned i;

    for (i = 0; i < d; i++) {
        const struct node *x = &g.nodes[path[i]];
        if (i) sw_put(w, "/", 1);
        if (x->name_len) sw_put(w, st_ptr(x->name), x->name_len);
    }
}

static void
store_mark(uint32_t m)
{
    if (m != NIL) g.pmark[m / 8] = (uint8_t)(g.pmark[m / 8] | 1u << (m % 8));
}

static int
store_marked(uint32_t m)
{
    return (g.pmark[m / 8] >> (m % 8)) & 1;
}

/* One session's own record (snapshot or journal `type`). */
static void
store_sess_rec(struct sw *w, uint32_t si, unsigned type)
{
    const struct sess *s = &g.sess[si];
    size_t ul = s->user == NIL ? 0 : s->user_len;
    int64_t left =
        s->conn == NIL && s->expire_ms ? (s->expire_ms - g.now) / 1000 + 1 : 0;
    uint32_t expire = left > 0 ? (uint32_t)(time(NULL) + left) : 0;

    sw_begin(w, type, (size_t)16 + s->id_len + ul + (s->proto == 5 ? 4 : 0));
    sw_u32(w, si);
    sw_u16(w, s->next_pid);
    sw_u8(w, s->lsn);
    sw_u8(w, s->user != NIL);
    sw_u32(w, expire);
    sw_str(w, st_ptr(s->id), s->id_len);
    sw_str(w, s->user == NIL ? NULL : st_ptr(s->user), ul);
    if (s->proto == 5) sw_u32(w, s->expiry); /* 5.0: its expiry interval */
    sw_end(w);
}

/* A queued delivery: session, message, QoS, QF_* flags (snapshot and
 * journal write the same record). */
static void
store_queue_rec(struct sw *w, unsigned type, uint32_t sid, uint32_t m,
                uint8_t qos, uint8_t flags)
{
    sw_begin(w, type, 10);
    sw_u32(w, sid);
    sw_u32(w, m);
    sw_u8(w, qos);
    sw_u8(w, flags);
    sw_end(w);
}

/* A message record: id, QoS, retain (bit 1: 5.0 fields follow the topic:
 * expiry time, properties), topic, payload. */
static void
store_msg_rec(struct sw *w, unsigned type, uint32_t i)
{
    const struct msg *m = &g.msgs[i];
    int v5 = m->props_len || m->expire;

    sw_begin(w, type,
             4 + 1 + 1 + 2 + (size_t)m->topic_len + m->payload_len +
                 (v5 ? 8 + (size_t)m->props_len : 0));
    sw_u32(w, i);
    sw_u8(w, m->qos);
    sw_u8(w, (unsigned)(m->retain | (v5 ? 2 : 0)));
    sw_str(w, msg_topic(m), m->topic_len);
    if (v5) {
        sw_u32(w, m->expire);
        sw_u32(w, m->props_len);
        sw_put(w, msg_props(m), m->props_len);
    }
    sw_put(w, msg_payload(m), m->payload_len);
    sw_end(w);
}

/* A subscription record: session, QoS | options << 2, the filter ("$share/
 * GROUP/" in front for a shared one), and its 5.0 identifier if any. */
static void
store_sub_rec(struct sw *w, unsigned type, uint32_t si, uint32_t sb)
{
    const struct sub *x = &g.subs[sb];
    uint32_t path[MQX_MAX_TOPIC_LEVELS];
    size_t fl, pre = x->share != NIL ? 8 + (size_t)x->share_len : 0;
    unsigned d = store_node_path(x->node, path, &fl);

    sw_begin(w, type, 4 + 1 + 2 + pre + fl + (x->sub_id ? 4 : 0));
    sw_u32(w, si);
    sw_u8(w, (unsigned)(x->qos | x->opts << 2));
    sw_u16(w, (unsigned)(pre + fl));
    if (pre) {
        sw_put(w, "$share/", 7);
        sw_put(w, st_ptr(x->share), x->share_len);
        sw_put(w, "/", 1);
    }
    store_put_path(w, path, d);
    if (x->sub_id) sw_u32(w, x->sub_id);
    sw_end(w);
}

/* The session records: the session, its subscriptions, queue, inflight
 * messages and QoS 2 ids waiting for PUBREL. */
static void
store_put_sess(struct sw *w, uint32_t si)
{
    const struct sess *s = &g.sess[si];
    uint32_t q, sb;

    store_sess_rec(w, si, MQX_SR_SESS);
    for (sb = s->subs; sb != NIL; sb = g.subs[sb].sess_next)
        store_sub_rec(w, MQX_SR_SUB, si, sb);
    for (q = s->q_head; q != NIL; q = g.qents[q].next)
        store_queue_rec(w, MQX_SR_QUEUE, si, g.qents[q].msg, g.qents[q].qos,
                        g.qents[q].retain);
    for (q = s->f_head; q != NIL; q = g.qents[q].next) {
        sw_begin(w, MQX_SR_INFLIGHT, 12);
        sw_u32(w, si);
        sw_u32(w, g.qents[q].msg);
        sw_u16(w, g.qents[q].pid);
        sw_u8(w, g.qents[q].qos);
        sw_u8(w, g.qents[q].state);
        sw_end(w);
    }
    for (q = s->r_head; q != NIL; q = g.qents[q].next) {
        sw_begin(w, MQX_SR_RECEIVED, 6);
        sw_u32(w, si);
        sw_u16(w, g.qents[q].pid);
        sw_end(w);
    }
}

/* --- the journal (persistence_journal true) --- */

/* Appends one record to the journal buffer; the loop writes and fsyncs it
 * once per iteration (jr_commit), before any output goes out. */
static struct sw *
jr_begin(unsigned type, size_t len)
{
    struct sw *w = &g.jw;

    sw_begin(w, type, len);
    return w;
}

static void
jr_done(void)
{
    sw_end(&g.jw);
    g.jr_records++;
}

static int
jr_marked(uint32_t m)
{
    return (g.jmark[m / 8] >> (m % 8)) & 1;
}

/* A message goes into the journal once per epoch, before what uses it. */
static void
jr_msg(uint32_t m)
{
    if (!g.journal || jr_marked(m)) return;
    g.jmark[m / 8] = (uint8_t)(g.jmark[m / 8] | 1u << (m % 8));
    store_msg_rec(&g.jw, MQX_JR_MSG, m);
    g.jr_records++;
}

static void
jr_sid(unsigned type, uint32_t sid)
{
    if (!g.journal || g.sess[sid].clean) return;
    sw_u32(jr_begin(type, 4), sid);
    jr_done();
}

static void
jr_pid(unsigned type, uint32_t sid, uint16_t pid)
{
    struct sw *w;

    if (!g.journal || g.sess[sid].clean) return;
    w = jr_begin(type, 6);
    sw_u32(w, sid);
    sw_u16(w, pid);
    jr_done();
}

static void
jr_retain(uint32_t m, const uint8_t *t, size_t n)
{
    if (!g.journal) return;
    if (m != NIL) {
        jr_msg(m);
        sw_u32(jr_begin(MQX_JR_RETAIN, 4), m);
    } else {
        sw_str(jr_begin(MQX_JR_UNRETAIN, 2 + n), t, n);
    }
    jr_done();
}

static void
jr_sub(unsigned type, uint32_t sid, uint8_t qos, const uint8_t *f, size_t n,
       uint32_t sub_id)
{
    struct sw *w;

    if (!g.journal || g.sess[sid].clean) return;
    w = jr_begin(type, (type == MQX_JR_SUB ? 7 : 6) + n + (sub_id ? 4 : 0));
    sw_u32(w, sid);
    if (type == MQX_JR_SUB) sw_u8(w, qos);
    sw_str(w, f, n);
    if (sub_id) sw_u32(w, sub_id);
    jr_done();
}

static void
jr_queue(uint32_t sid, uint32_t m, uint8_t qos, uint8_t retain)
{
    if (!g.journal || g.sess[sid].clean) return;
    jr_msg(m);
    store_queue_rec(&g.jw, MQX_JR_QUEUE, sid, m, qos, retain);
    g.jr_records++;
}

static void
jr_sess(uint32_t sid)
{
    if (!g.journal || g.sess[sid].clean) return;
    store_sess_rec(&g.jw, sid, MQX_JR_SESS);
    g.jr_records++;
}

/* Group commit: what this iteration journaled reaches the disk before any
 * of its acknowledgements leave (conn_flush_all calls it between filling
 * and writing). A failure is logged; durability is then lost. */
static void
jr_commit(void)
{
    if (!g.journal || (g.jw.n == 0 && !g.jw.err)) return;
    sw_flush(&g.jw);
    if (!g.jw.err && fdatasync(g.jfd) < 0) g.jw.err = errno;
    g.jr_syncs++;
    if (g.jw.err) {
        static int64_t last;
        static uint32_t quiet;
        int64_t k = log_limit(&last, &quiet);
        errno = g.jw.err;
        if (k >= 0)
            log_sys(LOG_T_ERR, "Error writing the persistence journal%s",
                    log_suppressed(k));
        g.jw.err = 0;
        g.store_fails++;
    }
}

/* Starts an empty journal for the epoch of the snapshot just written. */
static void
jr_reset(void)
{
    uint8_t hdr[MQX_STORE_HDR] = {'M', 'Q', 'X', 'J', 'O', 'U', 'R', 'N'};

    if (!g.journal) return;
    g.jw.n = 0; /* the snapshot holds what was buffered */
    g.jw.err = 0;
    g.jw.bytes = 0;
    memset(g.jmark, 0, (g.p_msg.cap + 7) / 8);
    hdr[8] = (uint8_t)(g.epoch >> 24);
    hdr[9] = (uint8_t)(g.epoch >> 16);
    hdr[10] = (uint8_t)(g.epoch >> 8);
    hdr[11] = (uint8_t)g.epoch;
    if (ftruncate(g.jfd, 0) < 0 || lseek(g.jfd, 0, SEEK_SET) < 0 ||
        write(g.jfd, hdr, sizeof hdr) != (ssize_t)sizeof hdr ||
        fdatasync(g.jfd) < 0) {
        log_sys(LOG_T_ERR, "Error resetting the persistence journal");
        g.store_fails++;
    }
}

static void
store_path(char *out, size_t cap, const char *suffix)
{
    const char *dir = g.cfg.persistence_location;
    size_t dl = strlen(dir);

    snprintf(out, cap, "%s%s%s%s", dir, dl && dir[dl - 1] != '/' ? "/" : "",
             g.cfg.persistence_file, suffix);
}

/* Writes the snapshot: FILE.tmp, fsync, rename, fsync of the folder. On
 * any failure the previous file stays and the error is logged; -1. */
static __attribute__((noinline)) int
store_save(void)
{
    char path[2 * MQX_PATH_MAX + 8], tmp[2 * MQX_PATH_MAX + 8];
    struct sw w;
    uint8_t hdr[MQX_STORE_HDR] = {'M', 'Q', 'X', 'S', 'T', 'O', 'R', 'E'};
    uint32_t i, now = (uint32_t)time(NULL);
    int dfd;

    store_path(path, sizeof path, "");
    store_path(tmp, sizeof tmp, ".tmp");
    memset(&w, 0, sizeof w);
    w.buf = g.scratch;
    w.cap = MQX_SCRATCH;
    w.fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (w.fd < 0) {
        log_sys(LOG_T_ERR, "Error saving in-memory database: %s", tmp);
        return -1;
    }
    hdr[9] = MQX_STORE_VERSION;
    hdr[12] = (uint8_t)(now >> 24);
    hdr[13] = (uint8_t)(now >> 16);
    hdr[14] = (uint8_t)(now >> 8);
    hdr[15] = (uint8_t)now;
    sw_raw(&w, hdr, sizeof hdr);
    if (g.journal) { /* the journal after this snapshot has a new epoch */
        sw_begin(&w, MQX_SR_EPOCH, 4);
        sw_u32(&w, g.epoch + 1);
        sw_end(&w);
    }
    memset(g.pmark, 0, (g.p_msg.cap + 7) / 8);
    for (i = 0; i < g.p_node.cap; i++)
        if (pool_used(&g.p_node, i)) store_mark(g.nodes[i].retained);
    for (i = 0; i < g.p_sess.cap; i++) {
        uint32_t q;
        if (!pool_used(&g.p_sess, i) || g.sess[i].clean) continue;
        for (q = g.sess[i].q_head; q != NIL; q = g.qents[q].next)
            store_mark(g.qents[q].msg);
        for (q = g.sess[i].f_head; q != NIL; q = g.qents[q].next)
            store_mark(g.qents[q].msg);
    }
    for (i = 0; i < g.p_msg.cap; i++)
        if (store_marked(i)) store_msg_rec(&w, MQX_SR_MSG, i);
    for (i = 0; i < g.p_node.cap; i++)
        if (pool_used(&g.p_node, i) && g.nodes[i].retained != NIL) {
            sw_begin(&w, MQX_SR_RETAIN, 4);
            sw_u32(&w, g.nodes[i].retained);
            sw_end(&w);
        }
    for (i = 0; i < g.p_sess.cap; i++) {
        const struct sess *x = &g.sess[i];
        if (!pool_used(&g.p_sess, i) || x->clean) continue;
        if (x->conn == NIL && x->expire_ms && x->expire_ms <= g.now)
            continue; /* expired, not yet swept: not worth keeping */
        store_put_sess(&w, i);
    }
    {
        uint32_t n = w.count;
        sw_begin(&w, MQX_SR_END, 4);
        sw_u32(&w, n);
        sw_end(&w);
    }
    sw_flush(&w);
    if (!w.err && fsync(w.fd) < 0) w.err = errno;
    if (close(w.fd) < 0 && !w.err) w.err = errno;
    if (!w.err && rename(tmp, path) < 0) w.err = errno;
    if (w.err) {
        errno = w.err;
        log_sys(LOG_T_ERR,
                "Error saving in-memory database to %s (the previous file "
                "is kept)",
                path);
        (void)unlink(tmp);
        g.store_fails++;
        return -1;
    }
    dfd = open(g.cfg.persistence_location[0] ? g.cfg.persistence_location : ".",
               O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd); /* the rename itself */
        close(dfd);
    }
    g.changes = 0;
    g.store_saves++;
    if (g.journal) {
        g.epoch++;
        jr_reset();
    }
    g.store_bytes += w.bytes;
    log_at(LOG_T_INFO,
           "Saving in-memory database to %s (%u records, %llu bytes).", path,
           w.count, (unsigned long long)w.bytes);
    return 0;
}

/* --- loading, at start-up only (it may allocate) --- */

struct store_ld {
    const char *path;
    uint32_t *mid; /* file message id -> message */
    uint32_t n_mid;
    uint32_t *sid; /* file session id -> session */
    uint32_t n_sid;
    uint32_t n_ret, n_sess;
    uint32_t epoch; /* of the snapshot (MQX_SR_EPOCH) */
};

/* Records that name a session first. */
static int
store_has_sid(unsigned type)
{
    return (type >= MQX_SR_SESS && type <= MQX_SR_RECEIVED) ||
           (type >= MQX_JR_SESS && type <= MQX_JR_REL);
}

/* Applies one record; a message of what went wrong, or NULL. */
static const char *
store_apply(struct store_ld *ld, const struct mqx_store_rec *rec, int count)
{
    struct rd r = {rec->body, rec->body + rec->len, 0};
    uint32_t id, x = NIL, q;
    struct sess *s = NULL;

    if (rec->type == MQX_JR_UNRETAIN) {
        struct mqx_str t = rd_str(&r);
        if (r.bad) return "bad record";
        if (!count) ret_set(NIL, t.p, t.len);
        return NULL;
    }
    id = rd_u32(&r);
    if (count) { /* first pass: the largest ids */
        /* ids are pool indexes of the broker that wrote the file: a far
         * larger one is damage, and would size the maps absurdly */
        uint32_t lim = (rec->type == MQX_SR_MSG || rec->type == MQX_JR_MSG)
                           ? g.p_msg.cap
                           : g.p_sess.cap;
        if (store_has_sid(rec->type) || rec->type == MQX_SR_MSG ||
            rec->type == MQX_JR_MSG)
            if (id >= (lim > (1u << 20) ? lim : 1u << 20) * 4u)
                return "an id out of range";
        if ((rec->type == MQX_SR_MSG || rec->type == MQX_JR_MSG) &&
            id >= ld->n_mid)
            ld->n_mid = id + 1;
        if ((rec->type == MQX_SR_SESS || rec->type == MQX_JR_SESS) &&
            id >= ld->n_sid)
            ld->n_sid = id + 1;
        return r.bad && rec->type != MQX_SR_END ? "short record" : NULL;
    }
    if (store_has_sid(rec->type)) {
        if (id >= ld->n_sid) return "unknown session";
        x = ld->sid[id];
        if (x == NIL && rec->type != MQX_SR_SESS && rec->type != MQX_JR_SESS)
            return NULL; /* expired, or deleted */
        if (x != NIL) s = &g.sess[x];
    }
    switch (rec->type) {
    case MQX_SR_EPOCH:
        ld->epoch = id;
        return NULL;
    case MQX_JR_MSG: /* a freed message's id may come back */
        if (id < ld->n_mid && ld->mid[id] != NIL) {
            msg_unref(ld->mid[id]);
            ld->mid[id] = NIL;
        }
        /* fall through */
    case MQX_SR_MSG: {
        uint8_t qos = rd_u8(&r), retain = rd_u8(&r);
        struct mqx_str t = rd_str(&r), pr = {NULL, 0};
        uint32_t expire = 0;
        if (retain & 2) { /* 5.0: expiry time and properties */
            expire = rd_u32(&r);
            pr.len = rd_u32(&r);
            pr.p = r.p;
            if (rd_left(&r) < pr.len) r.bad = 1;
            if (!r.bad) r.p += pr.len;
        }
        if (r.bad || qos > 2 || retain > 3 || t.len == 0)
            return "bad message record";
        if (id >= ld->n_mid) return "unknown message";
        if (ld->mid[id] != NIL) return "a message id twice";
        ld->mid[id] = msg_new5(t.p, t.len, pr.p, pr.len, r.p, rd_left(&r), qos,
                               retain & 1, expire);
        if (ld->mid[id] == NIL)
            return "more messages than message_store_bytes holds";
        msg_ref(ld->mid[id]); /* held until the end of the load */
        return NULL;
    }
    case MQX_SR_RETAIN:
    case MQX_JR_RETAIN:
        if (id >= ld->n_mid || ld->mid[id] == NIL) return "unknown message";
        ret_set(ld->mid[id], msg_topic(&g.msgs[ld->mid[id]]),
                g.msgs[ld->mid[id]].topic_len);
        ld->n_ret++;
        return NULL;
    case MQX_SR_SESS:
    case MQX_JR_SESS: {
        uint16_t pid = rd_u16(&r);
        uint8_t lsn = rd_u8(&r), has_user = rd_u8(&r);
        uint32_t expire = rd_u32(&r), now = (uint32_t)time(NULL);
        struct mqx_str cid = rd_str(&r), user = rd_str(&r);
        uint32_t interval = 0;
        int v5 = rd_left(&r) >= 4;
        if (v5) interval = rd_u32(&r);
        if (r.bad || (x != NIL && rec->type == MQX_SR_SESS))
            return "bad session record";
        if (expire && now >= expire) return NULL; /* expired while down */
        if (x == NIL) {
            x = sess_new(cid.p, cid.len);
            if (x == NIL) return "more sessions than max_sessions";
            ld->sid[id] = x;
            ld->n_sess++;
        }
        s = &g.sess[x];
        s->clean = 0;
        s->proto = v5 ? 5 : 4;
        s->expiry = interval;
        s->next_pid = pid ? pid : 1;
        s->lsn = lsn < g.cfg.n_lsn ? lsn : 0;
        if (s->user != NIL) {
            st_free(st_ptr(s->user));
            s->user = NIL;
        }
        if (has_user) {
            uint8_t *b = st_dup(user.p, user.len ? user.len : 1);
            if (!b) return "no room for a user name";
            s->user = ST_UNIT(b);
            s->user_len = (uint16_t)user.len;
        }
        s->expire_ms = expire ? g.now + (int64_t)(expire - now) * 1000
                       : v5   ? sess_expiry_ms(s)
                       : g.cfg.persistent_client_expiration
                           ? g.now + g.cfg.persistent_client_expiration * 1000
                           : 0;
        return NULL;
    }
    case MQX_JR_SESS_DEL:
        sess_free(x);
        ld->sid[id] = NIL;
        ld->n_sess--;
        return NULL;
    case MQX_JR_UNSUB: {
        struct mqx_str f = rd_str(&r);
        if (r.bad) return "bad record";
        sub_remove(x, f.p, f.len);
        return NULL;
    }
    case MQX_JR_POP:
    case MQX_JR_SEND: {
        uint16_t pid = rec->type == MQX_JR_SEND ? rd_u16(&r) : 0;
        if (r.bad || s->q_head == NIL) return "a send from an empty queue";
        q = sess_pop(s);
        if (rec->type == MQX_JR_POP || g.qents[q].qos == 0) {
            qe_free(q);
            return NULL;
        }
        g.qents[q].pid = pid;
        g.qents[q].state = g.qents[q].qos == 1 ? QE_PUBACK : QE_PUBREC;
        sess_append(s, q, 1);
        s->next_pid = (uint16_t)(pid == 65535 ? 1 : pid + 1);
        return NULL;
    }
    case MQX_JR_ACK:
    case MQX_JR_REC:
    case MQX_JR_RCVD:
    case MQX_JR_REL: {
        uint16_t pid = rd_u16(&r);
        if (r.bad) return "bad record";
        if (rec->type == MQX_JR_ACK) {
            q = qe_unlink(&s->f_head, &s->f_tail, pid, 0xff);
            if (q != NIL) {
                s->f_count--;
                qe_free(q);
            }
        } else if (rec->type == MQX_JR_REC) {
            q = qe_find(s->f_head, pid);
            if (q != NIL && g.qents[q].state == QE_PUBREC) {
                g.qents[q].state = QE_PUBCOMP;
                msg_unref(g.qents[q].msg);
                g.qents[q].msg = NIL;
            }
        } else if (rec->type == MQX_JR_REL) {
            q = qe_unlink(&s->r_head, NULL, pid, QE_RECEIVED);
            if (q != NIL) {
                s->r_count--;
                qe_free(q);
            }
        } else {
            q = qe_new(NIL, 2, QE_RECEIVED);
            if (q == NIL) return "more queued messages than max_queued_total";
            g.qents[q].pid = pid;
            g.qents[q].next = s->r_head;
            s->r_head = q;
            s->r_count++;
        }
        return NULL;
    }
    case MQX_SR_SUB:
    case MQX_JR_SUB: {
        uint8_t qos = rd_u8(&r);
        struct mqx_str f = rd_str(&r);
        uint32_t nd, sub_id = rd_left(&r) >= 4 ? rd_u32(&r) : 0;
        int existed;
        if (r.bad || (qos & 3) > 2 || !mqx_filter_valid(f.p, f.len))
            return "bad subscription record";
        if (sub_add(x, f.p, f.len, qos & 3, (uint8_t)(qos >> 2), sub_id, &nd,
                    &existed) == 0x80)
            return "more subscriptions or topic levels than configured";
        return NULL;
    }
    case MQX_SR_QUEUE:
    case MQX_JR_QUEUE:
    case MQX_SR_INFLIGHT: {
        uint32_t m = rd_u32(&r);
        uint16_t pid = rec->type == MQX_SR_INFLIGHT ? rd_u16(&r) : 0;
        uint8_t qos = rd_u8(&r), st = rd_u8(&r);
        if (r.bad || qos > 2) return "bad queue record";
        if (m != NIL && (m >= ld->n_mid || ld->mid[m] == NIL))
            return "unknown message";
        if (rec->type == MQX_SR_INFLIGHT &&
            (st < QE_PUBACK || st > QE_PUBCOMP ||
             (m == NIL) != (st == QE_PUBCOMP)))
            return "bad inflight record";
        if (rec->type != MQX_SR_INFLIGHT && m == NIL) return "bad queue record";
        q = qe_new(m == NIL ? NIL : ld->mid[m], qos,
                   rec->type != MQX_SR_INFLIGHT ? QE_QUEUED : st);
        if (q == NIL) return "more queued messages than max_queued_total";
        if (rec->type != MQX_SR_INFLIGHT)
            g.qents[q].retain = st;
        else
            g.qents[q].pid = pid;
        sess_append(s, q, rec->type == MQX_SR_INFLIGHT);
        return NULL;
    }
    case MQX_SR_RECEIVED: {
        uint16_t pid = rd_u16(&r);
        if (r.bad || pid == 0) return "bad received record";
        q = qe_new(NIL, 2, QE_RECEIVED);
        if (q == NIL) return "more queued messages than max_queued_total";
        g.qents[q].pid = pid;
        g.qents[q].next = s->r_head;
        s->r_head = q;
        s->r_count++;
        return NULL;
    }
    default:
        return NULL; /* END; unknown types of a later minor change */
    }
}

/* Walks the records of a snapshot: with count set, checks them and sizes
 * the maps; else applies them. NULL, or what is wrong. */
static const char *
store_walk(struct store_ld *ld, const uint8_t *buf, size_t len, int count)
{
    size_t off = MQX_STORE_HDR;
    uint32_t n = 0;
    const char *err = NULL;

    for (;;) {
        struct mqx_store_rec rec;
        enum mqx_rc rc = mqx_store_next(buf, len, &off, &rec, &err);
        if (rc != MQX_DONE) return err;
        if (rec.type == MQX_SR_END) {
            struct rd r = {rec.body, rec.body + rec.len, 0};
            if (rd_u32(&r) != n || r.bad) return "record count mismatch";
            return off == len ? NULL : "bytes after the end record";
        }
        err = store_apply(ld, &rec, count);
        if (err) return err;
        n++;
    }
}

/* Walks the journal after its header: records up to the first one a crash
 * cut short (never acknowledged: the ack waits for the fsync). */
static const char *
jr_walk(struct store_ld *ld, const uint8_t *buf, size_t len, int count,
        size_t *end)
{
    size_t off = MQX_STORE_HDR;
    const char *err = NULL;

    for (;;) {
        struct mqx_store_rec rec;
        size_t at = off;
        if (off == len) break;
        if (mqx_store_next(buf, len, &off, &rec, &err) != MQX_DONE) {
            *end = at;
            return NULL;
        }
        err = store_apply(ld, &rec, count);
        if (err) return err;
    }
    *end = len;
    return NULL;
}

/* A whole file into a malloc'd buffer; NULL when it does not exist. */
static uint8_t *
store_read(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf = NULL;

    *len = 0;
    if (!f) {
        if (errno != ENOENT)
            die("persistence file %s: %s", path, strerror(errno));
        return NULL;
    }
    for (;;) {
        uint8_t *nb = realloc(buf, *len + 65536);
        size_t k;
        if (!nb) die("persistence file %s: out of memory", path);
        buf = nb;
        k = fread(buf + *len, 1, 65536, f);
        *len += k;
        if (k < 65536) break;
    }
    fclose(f);
    return buf;
}

/* Reads the snapshot at start-up; a missing file is an empty start. A
 * damaged one stops the broker: die() names the file and the problem. */
static __attribute__((noinline)) void
store_load(void)
{
    char path[2 * MQX_PATH_MAX + 8], jpath[2 * MQX_PATH_MAX + 16];
    struct store_ld ld;
    uint8_t *buf, *jbuf = NULL;
    size_t len, jlen = 0, jend = 0;
    uint16_t version;
    uint32_t saved = 0, i, jepoch = 0;
    const char *err = NULL;
    int use_journal = 0;

    store_path(path, sizeof path, "");
    store_path(jpath, sizeof jpath, ".journal");
    memset(&ld, 0, sizeof ld);
    ld.path = path;
    buf = store_read(path, &len);
    if (buf &&
        (mqx_store_header(buf, len, &version, &saved, &err) != MQX_DONE ||
         (err = store_walk(&ld, buf, len, 1)) != NULL))
        die("persistence file %s: %s. The file is left as it is; move it "
            "away to start without it.",
            path, err);
    if (g.cfg.persistence_journal) jbuf = store_read(jpath, &jlen);
    if (jbuf && jlen >= MQX_STORE_HDR && memcmp(jbuf, "MQXJOURN", 8) == 0) {
        jepoch = (uint32_t)jbuf[8] << 24 | (uint32_t)jbuf[9] << 16 |
                 (uint32_t)jbuf[10] << 8 | jbuf[11];
        use_journal = 1;
        err = jr_walk(&ld, jbuf, jlen, 1, &jend);
        if (err) die("persistence journal %s: %s", jpath, err);
    } else if (jbuf && jlen) {
        die("persistence journal %s: not an mqttpx journal. The file is "
            "left as it is; move it away to start without it.",
            jpath);
    }
    ld.mid = malloc(sizeof(uint32_t) * (ld.n_mid + 1));
    ld.sid = malloc(sizeof(uint32_t) * (ld.n_sid + 1));
    if (!ld.mid || !ld.sid) die("persistence file %s: out of memory", path);
    memset(ld.mid, 0xff, sizeof(uint32_t) * (ld.n_mid + 1));
    memset(ld.sid, 0xff, sizeof(uint32_t) * (ld.n_sid + 1));
    if (buf && (err = store_walk(&ld, buf, len, 0)) != NULL)
        die("persistence file %s: %s. The file is left as it is.", path, err);
    g.epoch = ld.epoch;
    if (use_journal && jepoch != ld.epoch) { /* older than the snapshot */
        log_at(LOG_T_INFO,
               "Persistence journal %s is older than the snapshot: ignored.",
               jpath);
        use_journal = 0;
    }
    if (use_journal) {
        err = jr_walk(&ld, jbuf, jlen, 0, &jend);
        if (err) die("persistence journal %s: %s", jpath, err);
        if (jend < jlen)
            log_at(LOG_T_WARN,
                   "Persistence journal %s ends with a record cut short at "
                   "byte %zu (never acknowledged): ignored.",
                   jpath, jend);
        log_at(LOG_T_NOTICE, "Replayed %zu bytes of journal from %s.", jend,
               jpath);
    }
    for (i = 0; i < ld.n_mid; i++)
        msg_unref(ld.mid[i]);
    if (buf || use_journal)
        log_at(LOG_T_NOTICE,
               "Loaded %u retained messages and %u sessions from %s (saved "
               "%lld s ago).",
               g.n_retained, ld.n_sess, path,
               (long long)(time(NULL) - (time_t)saved));
    else
        log_at(LOG_T_INFO, "No persistence file %s: starting empty.", path);
    free(ld.mid);
    free(ld.sid);
    free(buf);
    free(jbuf);
}

/* Journal mode at start-up: after the load, a snapshot compacts what the
 * journal held, and an empty journal of its epoch starts. */
static __attribute__((noinline)) void
jr_open(void)
{
    char jpath[2 * MQX_PATH_MAX + 16];

    store_path(jpath, sizeof jpath, ".journal");
    g.jfd = open(jpath, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (g.jfd < 0) die("persistence journal %s: %s", jpath, strerror(errno));
    memset(&g.jw, 0, sizeof g.jw);
    g.jw.fd = g.jfd;
    g.jw.buf = g.jbuf;
    g.jw.cap = MQX_SCRATCH;
    g.journal = 1;
    if (store_save()) die("cannot write the persistence file");
}

/* Autosave: every autosave_interval seconds when something changed, or
 * (autosave_on_changes) after that many changes. */
static void
store_tick(void)
{
    /* a journal longer than twice the message store is compacted: it
     * holds more history than state */
    if (g.journal && g.jw.bytes > (uint64_t)g.st.size * 2) {
        store_save();
        return;
    }
    if (!g.cfg.persistence || !g.cfg.autosave_interval || !g.changes) return;
    if (g.cfg.autosave_on_changes
            ? g.changes >= (uint64_t)g.cfg.autosave_interval
            : g.now >= g.next_save_ms) {
        store_save();
        g.next_save_ms = g.now + g.cfg.autosave_interval * 1000;
    }
}

/* ==== [13] Connections: output, fill, close, reap, deadlines ==== */
/* Owns g.conns and their pollfd slots (pfd[n_ls + i]). Output is encoded
 * into a store block held only while bytes are pending, then written with
 * one send() per client per iteration. conn_close() only marks; conn_reap()
 * is the only place that publishes wills, closes fds and frees slots. */

static uint32_t
conn_idx(const struct conn *c)
{
    return (uint32_t)(c - g.conns);
}

static struct pollfd *
conn_pfd(const struct conn *c)
{
    return &g.pfd[g.n_ls + conn_idx(c)];
}

static void
conn_dirty(struct conn *c)
{
    if (c->flags & CF_DIRTY) return;
    c->flags |= CF_DIRTY;
    g.dirty[g.n_dirty++] = conn_idx(c);
}

/* Marks activity: the connection joins the hot set, which every wake-up
 * polls; the others are polled at least every MQX_FULL_POLL_MS. */
static void
conn_touch(struct conn *c)
{
    c->active_ms = (uint32_t)g.now;
    if (c->hot_pos != NIL) return;
    c->hot_pos = g.n_hot;
    g.hot[g.n_hot++] = conn_idx(c);
}

static void
conn_unhot(struct conn *c)
{
    uint32_t last;

    if (c->hot_pos == NIL) return;
    last = g.hot[--g.n_hot];
    g.hot[c->hot_pos] = last;
    g.conns[last].hot_pos = c->hot_pos;
    c->hot_pos = NIL;
}

static const char *
conn_id(const struct conn *c, int *len)
{
    return sess_id(c->sess, len);
}

/* Marks a connection closed; flags: CF_WILL publishes its will, CF_QUIET
 * skips the "closed its connection" line, CF_FLUSHCLOSE writes what is
 * queued first (a CONNACK refusal). */
static void
conn_close(struct conn *c, unsigned flags)
{
    if (c->state == CONN_CLOSING || c->state == CONN_FREE) return;
    c->state = CONN_CLOSING;
    c->flags = (uint8_t)(c->flags | flags);
    conn_dirty(c);
}

/* Reserves n bytes at the end of the output block, growing it; NULL when
 * the store cannot give the room (the caller closes the connection). */
static uint8_t *
conn_out(struct conn *c, size_t n)
{
    uint8_t *p;

    if (c->tx && c->tx_off > 0 && c->tx_len + n > c->tx_cap) {
        memmove(c->tx, c->tx + c->tx_off, c->tx_len - c->tx_off);
        c->tx_len -= c->tx_off;
        c->tx_off = 0;
    }
    if (!c->tx || c->tx_len + n > c->tx_cap) {
        size_t want = c->tx_len + n < 1024 ? 1024 : c->tx_len + n;
        uint8_t *b = st_alloc(want);
        if (!b) return NULL;
        if (c->tx) {
            memcpy(b, c->tx + c->tx_off, c->tx_len - c->tx_off);
            c->tx_len -= c->tx_off;
            c->tx_off = 0;
            st_free(c->tx);
        }
        c->tx = b;
        c->tx_cap = (uint32_t)st_block_size(b);
    }
    p = c->tx + c->tx_len;
    c->tx_len += (uint32_t)n;
    conn_dirty(c);
    return p;
}

/* Policy when the store cannot hold what a connection needs now: close
 * it, counted and logged (rate-limited). `what` names the need. */
static void
conn_oom(struct conn *c, const char *what)
{
    static int64_t last;
    static uint32_t quiet;
    int64_t k = log_limit(&last, &quiet);
    int n;
    const char *id = conn_id(c, &n);

    if (k >= 0)
        log_at(LOG_T_WARN,
               "Client " ID_FMT " disconnected: message store full, no room "
               "for %s%s.",
               n, id, what, log_suppressed(k));
    conn_close(c, CF_WILL | CF_QUIET);
}

/* Policy of the message store: stop reading this client until the store
 * drains below 3/4 (loop_unthrottle). */
static void
conn_throttle(struct conn *c)
{
    static int64_t last;
    static uint32_t quiet;
    int64_t k;
    int n;
    const char *id = conn_id(c, &n);

    if (c->flags & CF_THROTTLED) return;
    k = log_limit(&last, &quiet);
    if (k >= 0)
        log_at(LOG_T_NOTICE,
               "Message store %zu%% full: not reading client " ID_FMT
               " until it drains%s.",
               g.st.used * 100 / g.st.size, n, id, log_suppressed(k));
    c->flags |= CF_THROTTLED;
    conn_pfd(c)->events &= (short)~POLLIN;
    g.throttled = 1;
}

/* Queues an acknowledgement, with a 5.0 reason code (and its reason
 * string when the client wants problem information); closes the
 * connection when it can't. */
static void
conn_ack5(struct conn *c, uint8_t type, uint16_t pid, uint8_t reason,
          const char *why)
{
    size_t wl = why && c->problem ? strlen(why) : 0;
    uint8_t *p;

    if (c->max_out && 8 + wl > c->max_out) wl = 0; /* [MQTT-3.4.2-2] */
    p = conn_out(c, c->proto == 5 ? 8 + wl : 4);

    if (!p) {
        conn_oom(c, "an acknowledgement");
        return;
    }
    if (c->proto == 5)
        c->tx_len -= (uint32_t)(8 + wl -
                                mqx_mqtt_enc_ack5(p, type, pid, reason,
                                                  wl ? why : NULL));
    else
        mqx_mqtt_enc_ack(p, type, pid);
}

static void
conn_ack(struct conn *c, uint8_t type, uint16_t pid)
{
    conn_ack5(c, type, pid, 0, NULL);
}

/* Ends a connection from the broker's side: a 5.0 client first gets a
 * DISCONNECT with the reason [MQTT-3.14.2.1]; the will is published. */
static void
conn_disconnect(struct conn *c, uint8_t reason, const char *why)
{
    if (c->proto == 5 && c->state == CONN_ONLINE) {
        size_t wl = why && c->problem ? strlen(why) : 0;
        uint8_t *p;
        if (c->max_out && 8 + wl > c->max_out) wl = 0; /* [MQTT-3.14.2-3] */
        p = conn_out(c, 8 + wl);
        if (p) {
            size_t pl = wl ? 3 + wl : 0, i;
            p[0] = MQX_DISCONNECT << 4;
            i = 1 + mqx_mqtt_enc_rl(p + 1, (uint32_t)(1 + (pl ? 1 + pl : 0)));
            p[i++] = reason;
            if (pl) {
                p[i++] = (uint8_t)pl;
                i += wr_prop_str(p + i, MQX_P_REASON, why, wl);
            }
            c->tx_len -= (uint32_t)(8 + wl - i);
        }
        conn_close(c, CF_WILL | CF_QUIET | CF_FLUSHCLOSE);
        return;
    }
    conn_close(c, CF_WILL | CF_QUIET);
}

/* Writes pending output; 0 when all or part was written or the socket is
 * full, -1 on a socket error. */
/* send() for a plain connection, the TLS session's writer for the
 * others: bytes taken, or -1 with errno. */
static ssize_t
conn_send(struct conn *c, const uint8_t *p, size_t n)
{
    if (c->tls != NIL) return tls_send(c, p, n);
    return send(c->fd, p, n, MSG_NOSIGNAL);
}

static int
conn_write(struct conn *c)
{
    while (c->tx && c->tx_off < c->tx_len) {
        ssize_t n = conn_send(c, c->tx + c->tx_off, c->tx_len - c->tx_off);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                c->flags |= CF_POLLOUT;
                conn_pfd(c)->events |= POLLOUT;
                return 0;
            }
            return -1;
        }
        g.bytes_tx += (uint64_t)n;
        c->tx_off += (uint32_t)n;
    }
    if (c->tx) {
        st_free(c->tx);
        c->tx = NULL;
        c->tx_len = c->tx_off = c->tx_cap = 0;
    }
    if (c->flags & CF_POLLOUT) {
        c->flags &= (uint8_t)~CF_POLLOUT;
        conn_pfd(c)->events &= (short)~POLLOUT;
    }
    return 0;
}

static uint16_t
sess_next_pid(struct sess *s)
{
    for (;;) {
        uint16_t pid = s->next_pid;
        s->next_pid = (uint16_t)(pid == 65535 ? 1 : pid + 1);
        if (qe_find(s->f_head, pid) == NIL) return pid;
    }
}

/* The alias of a topic given to this client earlier, or 0. */
static uint16_t
alias_out_find(const struct conn *c, const uint8_t *t, size_t n)
{
    uint16_t i;

    for (i = 0; i < c->n_alias_out; i++) {
        const uint8_t *b = st_ptr(c->alias_out[i]);
        if ((size_t)(b[0] << 8 | b[1]) == n && memcmp(b + 2, t, n) == 0)
            return (uint16_t)(i + 1);
    }
    return 0;
}

/* Gives the next alias to topic t (after the PUBLISH that carries both is
 * queued); 0 when none is left or the store is full. */
static uint16_t
alias_out_add(struct conn *c, const uint8_t *t, size_t n)
{
    uint8_t *b;

    if (c->n_alias_out >= c->alias_out_max) return 0;
    if (!c->alias_out) {
        c->alias_out = (uint32_t *)(void *)st_alloc((size_t)c->alias_out_max *
                                                    sizeof(uint32_t));
        if (!c->alias_out) return 0;
    }
    b = st_alloc(2 + n);
    if (!b) return 0;
    wr_u16(b, (uint16_t)n);
    memcpy(b + 2, t, n);
    c->alias_out[c->n_alias_out++] = ST_UNIT(b);
    return c->n_alias_out;
}

/* A 5.0 PUBLISH to this client: the message's properties, the remaining
 * expiry, the identifiers of the subscriptions it matches, a topic alias
 * within the client's Topic Alias Maximum. 1 when the packet would pass
 * the client's Maximum Packet Size: it is not sent [MQTT-3.1.2-25]. */
static int
conn_put_publish5(struct conn *c, const struct qent *e, uint8_t dup)
{
    const struct msg *m = &g.msgs[e->msg];
    const struct sess *s = &g.sess[c->sess];
    uint8_t pre[5 + 4 + 5 * 16], *p;
    size_t pl = 0, n, tl = m->topic_len;
    uint16_t alias = 0, fresh = 0;
    uint32_t si;
    int ids = 0;

    if (c->alias_out_max) {
        alias = alias_out_find(c, msg_topic(m), m->topic_len);
        if (alias)
            tl = 0; /* the client knows it */
        else if (c->n_alias_out < c->alias_out_max)
            fresh = (uint16_t)(c->n_alias_out + 1);
        if (alias || fresh) {
            pre[pl++] = MQX_P_ALIAS;
            wr_u16(pre + pl, alias ? alias : fresh);
            pl += 2;
        }
    }
    if (m->expire) { /* [MQTT-3.3.2-6] the time left */
        uint32_t now = (uint32_t)time(NULL);
        uint32_t left = m->expire > now ? m->expire - now : 1;
        pre[pl++] = MQX_P_MESSAGE_EXPIRY;
        pre[pl++] = (uint8_t)(left >> 24);
        pre[pl++] = (uint8_t)(left >> 16);
        pre[pl++] = (uint8_t)(left >> 8);
        pre[pl++] = (uint8_t)left;
    }
    for (si = s->subs; si != NIL && ids < 16; si = g.subs[si].sess_next) {
        const struct sub *sb = &g.subs[si];
        if (!sb->sub_id || (sb->share != NIL) != !!(e->retain & QF_SHARED))
            continue;
        if (!node_matches(sb->node, msg_topic(m), m->topic_len)) continue;
        pre[pl++] = MQX_P_SUB_ID; /* [MQTT-3.3.4-3] one per subscription */
        pl += mqx_enc_varint(pre + pl, sb->sub_id);
        ids++;
    }
    n = mqx_mqtt_publish5_size(tl, m->payload_len, e->qos, pl + m->props_len);
    if (c->max_out && n > c->max_out) return 1;
    p = conn_out(c, n);
    if (!p) return -1;
    mqx_mqtt_enc_publish5(p, msg_topic(m), tl, msg_payload(m), m->payload_len,
                          e->qos, (e->retain & QF_RETAIN) != 0, dup, e->pid,
                          pre, pl, msg_props(m), m->props_len);
    if (fresh && alias_out_add(c, msg_topic(m), m->topic_len) != fresh) {
        /* no room to remember it: the alias we sent must not be used
         * again for another topic, so stop giving aliases */
        c->alias_out_max = c->n_alias_out;
    }
    g.msgs_tx++;
    return 0;
}

/* Encodes one delivery; 0, or -1 when the output block can't grow. */
static int
conn_put_publish(struct conn *c, const struct qent *e, uint8_t dup)
{
    const struct msg *m = &g.msgs[e->msg];
    uint8_t retain = (e->retain & QF_RETAIN) != 0;
    size_t n;
    uint8_t *p;

    if (c->proto == 5) return conn_put_publish5(c, e, dup);
    n = mqx_mqtt_publish_size(m->topic_len, m->payload_len, e->qos);
    p = conn_out(c, n);
    if (!p) return -1;
    mqx_mqtt_enc_publish(p, msg_topic(m), m->topic_len, msg_payload(m),
                         m->payload_len, e->qos, retain, dup, e->pid);
    g.msgs_tx++;
    return 0;
}

/* Moves deliveries into the output block: first what must be resent after
 * a session resumed, then the queue, within the inflight window
 * (max_inflight_messages) and up to MQX_TX_BATCH bytes. */
static void
conn_fill(struct conn *c)
{
    struct sess *s;
    int64_t window = g.cfg.max_inflight_messages;
    int has_acl, rc;
    uint32_t r;
    int64_t before = 0;

    if (c->state != CONN_ONLINE || c->sess == NIL) return;
    if (c->recv_max && (window == 0 || c->recv_max < window))
        window = c->recv_max; /* [MQTT-3.3.4-9] the client's Receive Max */
    s = &g.sess[c->sess];
    has_acl = auth_db(s->lsn)->has_acl;
    if (c->resend != NIL && window > 0) /* resent, not yet acknowledged */
        for (r = s->f_head; r != NIL && r != c->resend; r = g.qents[r].next)
            before++;
    while (c->resend != NIL && c->tx_len < MQX_TX_BATCH &&
           (window == 0 || before < window)) {
        struct qent *e = &g.qents[c->resend];
        if (e->state == QE_PUBCOMP) {
            uint8_t *p = conn_out(c, 4);
            if (!p) break;
            mqx_mqtt_enc_ack(p, MQX_PUBREL, e->pid);
        } else if (conn_put_publish(c, e, 1) < 0) { /* [MQTT-4.4.0-1] DUP */
            break;
        }
        c->resend = e->next;
        before++;
    }
    if (c->resend != NIL) goto out;
    while (s->q_head != NIL && c->tx_len - c->tx_off < MQX_TX_BATCH) {
        uint32_t q = s->q_head;
        struct qent *e = &g.qents[q];
        if (e->qos > 0 && window > 0 && s->f_count >= (uint64_t)window) break;
        if ((has_acl && !acl_allows(c->sess, msg_topic(&g.msgs[e->msg]),
                                    g.msgs[e->msg].topic_len, MQX_ACL_READ)) ||
            msg_expired(&g.msgs[e->msg])) {
            /* queued for a user who may read it; the session was resumed
             * by one who may not (client ids are not owned by users); or
             * its 5.0 Message Expiry Interval ran out [MQTT-3.3.2-5] */
            jr_sid(MQX_JR_POP, c->sess);
            qe_free(sess_pop(s));
            continue;
        }
        if (e->qos > 0) e->pid = sess_next_pid(s);
        rc = conn_put_publish(c, e, 0);
        if (rc < 0) break;
        sess_pop(s);
        if (e->qos == 0 || rc > 0) { /* rc 1: too large for the client */
            if (rc > 0) sess_dropped(s);
            jr_sid(MQX_JR_POP, c->sess);
            qe_free(q);
            continue;
        }
        jr_pid(MQX_JR_SEND, c->sess, e->pid);
        e->state = e->qos == 1 ? QE_PUBACK : QE_PUBREC;
        sess_append(s, q, 1);
    }
out:
    if (!c->tx && ((c->resend != NIL && (window == 0 || before < window)) ||
                   (c->resend == NIL && s->q_head != NIL &&
                    (window == 0 || s->f_count < (uint64_t)window))))
        conn_oom(c,
                 "output"); /* nothing pending and still no room: store full */
}

/* Forgets the topic aliases of a 5.0 connection, both ways. */
static void
alias_free(struct conn *c)
{
    uint32_t i;

    if (c->alias_in) {
        for (i = 0; i < c->alias_in_max; i++)
            if (c->alias_in[i] != NIL) st_free(st_ptr(c->alias_in[i]));
        st_free((uint8_t *)c->alias_in);
    }
    if (c->alias_out) {
        for (i = 0; i < c->n_alias_out; i++)
            st_free(st_ptr(c->alias_out[i]));
        st_free((uint8_t *)c->alias_out);
    }
    c->alias_in = c->alias_out = NULL;
    c->n_alias_out = 0;
}

/* Frees a slot: the only place that closes client sockets. */
static void
conn_reap(struct conn *c)
{
    struct pollfd *pf = conn_pfd(c);
    uint32_t ci = conn_idx(c);

    int mine = c->sess != NIL && g.sess[c->sess].conn == ci;
    struct sess *s = mine ? &g.sess[c->sess] : NULL;

    if ((c->flags & CF_WILL) && c->will != NIL) {
        if (c->will_delay && s && !s->clean) { /* [MQTT-3.1.3-9] */
            msg_unref(s->will);
            s->will = c->will; /* its reference moves to the session */
            s->will_ms = g.now + (int64_t)c->will_delay * 1000;
            c->will = NIL;
        } else {
            will_publish(c->will);
        }
    }
    msg_unref(c->will);
    c->will = NIL;
    if (s) {
        s->conn = NIL;
        if (s->clean) {
            share_redeliver(c->sess);
            sess_free(c->sess);
        } else {
            s->expire_ms = sess_expiry_ms(s);
        }
    }
    alias_free(c);
    if (c->tx && c->tx_off < c->tx_len && (c->flags & CF_FLUSHCLOSE))
        (void)conn_send(c, c->tx + c->tx_off, c->tx_len - c->tx_off);
    tls_close(c);
    st_free(c->tx);
    if (c->rx) g.rx_bytes -= c->rx_cap;
    st_free(c->rx);
    st_free(c->pp_info);
    c->tx = c->rx = c->pp_info = NULL;
    if (c->proto) {
        g.n_online--;
    }
    g.cfg.lsn[c->lsn].n_conns--;
    close(c->fd);
    pf->fd = -1;
    pf->events = 0;
    pf->revents = 0;
    c->fd = -1;
    c->state = CONN_FREE;
    conn_unhot(c);
    pool_give(&g.p_conn, ci);
}

/* End of an iteration: reaps closed connections, fills and writes the rest.
 * Reaping may route wills, which appends to g.dirty while we walk it. */
static void
conn_flush_all(void)
{
    uint32_t i, n1;

    /* fill every dirty client (reaping may route wills and add more) */
    for (i = 0; i < g.n_dirty; i++) {
        struct conn *c = &g.conns[g.dirty[i]];
        if (c->state == CONN_CLOSING) {
            c->flags &= (uint8_t)~CF_DIRTY;
            conn_reap(c);
        } else if (c->state == CONN_ONLINE) {
            conn_fill(c);
        }
    }
    jr_commit(); /* what is acknowledged or sent is on disk before it goes */
    n1 = g.n_dirty;
    for (i = 0; i < n1; i++) {
        struct conn *c = &g.conns[g.dirty[i]];
        int round;
        c->flags &= (uint8_t)~CF_DIRTY;
        if (c->state == CONN_CLOSING) {
            conn_reap(c);
            continue;
        }
        for (round = 0; round < 4 && c->state == CONN_ONLINE; round++) {
            const struct sess *s = &g.sess[c->sess];
            if (round > 0) conn_fill(c); /* no journal: nothing to sync */
            if (!c->tx || (c->flags & CF_POLLOUT)) break;
            conn_touch(c); /* a reply is likely: poll it closely */
            if (conn_write(c)) {
                int n;
                const char *id = conn_id(c, &n);
                if (g.cfg.connection_messages)
                    log_at(LOG_T_NOTICE,
                           "Socket error on client " ID_FMT ", disconnecting.",
                           n, id);
                conn_close(c, CF_WILL);
                break;
            }
            if (c->flags & CF_POLLOUT) break;
            if (g.journal) { /* the rest after the next commit */
                if (c->resend != NIL ||
                    (s->q_head != NIL &&
                     (g.qents[s->q_head].qos == 0 ||
                      !g.cfg.max_inflight_messages ||
                      s->f_count < (uint64_t)g.cfg.max_inflight_messages)))
                    conn_dirty(c);
                break;
            }
            if (s->q_head == NIL && c->resend == NIL) break;
            if (round == 3) conn_dirty(c); /* more next time */
        }
    }
    /* what this pass made dirty (closes, wills) is handled next iteration,
     * after its own commit */
    memmove(g.dirty, g.dirty + n1, (g.n_dirty - n1) * sizeof *g.dirty);
    g.n_dirty -= n1;
}

/* Per-source rate limit of PROXY header failure lines (R52): one line per
 * 10 s per source address, then a count of what was suppressed. */
static int64_t
log_limit_src(const char *addr)
{
    static struct {
        int64_t last;
        uint32_t h, quiet;
    } t[32];
    const char *colon = strrchr(addr, ':');
    size_t n = colon ? (size_t)(colon - addr) : strlen(addr);
    uint32_t h = node_hash(0, (const uint8_t *)addr, n) | 1;

    if (t[h % 32].h != h) {
        t[h % 32].h = h;
        t[h % 32].last = 0;
        t[h % 32].quiet = 0;
    }
    return log_limit(&t[h % 32].last, &t[h % 32].quiet);
}

/* R54: advice after the parser's hint. */
static const char *
conn_pp_advice(int hint)
{
    switch (hint) {
    case MQX_PROXY_HINT_MQTT:
        return "; is the port reachable directly, or is send-proxy missing on "
               "the HAProxy server line?";
    case MQX_PROXY_HINT_TLS:
        return "; terminate TLS on the proxy";
    default:
        return "";
    }
}

/* Keeps what the connection needs of an accepted header: the proxy's own
 * address ("via"), a summary for the connection line, and the CN when it
 * is the username. The header's slices die after this. */
static __attribute__((noinline)) int
conn_pp_keep(struct conn *c, const struct mqx_proxy *pp, const char *via)
{
    char sum[512], esc[192];
    size_t off, vl = strlen(via), cn_len = 0;
    struct mqx_str cn;
    const struct listener *l = &g.cfg.lsn[c->lsn];
    int k;

    k = snprintf(sum, sizeof sum, "(PROXY v%u%s", pp->version,
                 pp->command == MQX_PROXY_CMD_LOCAL     ? " LOCAL"
                 : pp->command == MQX_PROXY_CMD_UNKNOWN ? " UNKNOWN"
                                                        : "");
    off = k > 0 ? (size_t)k : 0;
    if (mqx_proxy_tls_used(pp)) {
        mqx_proxy_escape(esc, sizeof esc, pp->tls.version);
        k = snprintf(sum + off, sizeof sum - off, ", %s", esc[0] ? esc : "TLS");
        if (k > 0) off += (size_t)k;
        if (pp->tls.cipher.p) {
            mqx_proxy_escape(esc, sizeof esc, pp->tls.cipher);
            k = snprintf(sum + off, sizeof sum - off, " %s", esc);
            if (k > 0 && off + (size_t)k < sizeof sum) off += (size_t)k;
        }
    }
    if (pp->authority.p && off < sizeof sum) {
        mqx_proxy_escape(esc, sizeof esc, pp->authority);
        k = snprintf(sum + off, sizeof sum - off, ", SNI %s", esc);
        if (k > 0 && off + (size_t)k < sizeof sum) off += (size_t)k;
    }
    if (pp->alpn.p && off < sizeof sum) {
        mqx_proxy_escape(esc, sizeof esc, pp->alpn);
        k = snprintf(sum + off, sizeof sum - off, ", ALPN %s", esc);
        if (k > 0 && off + (size_t)k < sizeof sum) off += (size_t)k;
    }
    if (pp->tls.cn.p && mqx_proxy_cert_ok(pp) && off < sizeof sum) {
        mqx_proxy_escape(esc, sizeof esc, pp->tls.cn);
        k = snprintf(sum + off, sizeof sum - off, ", CN %s", esc);
        if (k > 0 && off + (size_t)k < sizeof sum) off += (size_t)k;
    }
    if (off + 2 > sizeof sum) off = sizeof sum - 2;
    sum[off++] = ')';
    sum[off] = '\0';
    if (l->use_identity) {
        if (mqx_proxy_cn_username(pp, &cn))
            cn_len = cn.len;
        else
            c->pp |= PP_NO_CN;
    }
    c->pp_info = st_alloc(vl + 1 + off + 1 + cn_len);
    if (!c->pp_info) return -1;
    memcpy(c->pp_info, via, vl + 1);
    memcpy(c->pp_info + vl + 1, sum, off + 1);
    if (cn_len) memcpy(c->pp_info + vl + 1 + off + 1, cn.p, cn_len);
    c->pp_cn_len = (uint16_t)cn_len;
    return 0;
}

static const char *
conn_pp_via(const struct conn *c)
{
    return (const char *)c->pp_info;
}

static const char *
conn_pp_summary(const struct conn *c)
{
    return (const char *)c->pp_info + strlen(conn_pp_via(c)) + 1;
}

static const uint8_t *
conn_pp_cn(const struct conn *c)
{
    const char *sum = conn_pp_summary(c);

    return (const uint8_t *)sum + strlen(sum) + 1;
}

/* ==== [14] Protocol handlers, one per packet type ==== */
/* Each takes a framed packet of a connection and acts on [9] and [13].
 * They copy what they keep: the packet's bytes die after the call. MQTT 5
 * adds properties, reason codes and the broker's DISCONNECT. */

static void handle_violation(struct conn *c, uint8_t reason, const char *why);
static void handle_connack(struct conn *c, uint8_t present, uint8_t rc,
                           const struct mqx_str *assigned, const char *why);
static uint8_t pb_ack_type(uint8_t flags);
static int handle_alias(struct conn *c, struct mqx_publish *pb);

static void
handle_protocol_error(struct conn *c)
{
    handle_violation(c, MQX_RC_MALFORMED, "malformed packet");
}

/* A decoder's refusal: MQX_PROTO is a 5.0 protocol error (0x82), the
 * rest malformed packets (0x81) [MQTT-4.13]. */
static void
handle_bad(struct conn *c, enum mqx_rc rc)
{
    if (rc == MQX_PROTO)
        handle_violation(c, MQX_RC_PROTOCOL, "protocol error");
    else
        handle_protocol_error(c);
}

/* A 5.0 client that breaks the rules gets DISCONNECT with the reason
 * [MQTT-4.13]; a 3.1.1 one is closed. */
static void
handle_violation(struct conn *c, uint8_t reason, const char *why)
{
    int n;
    const char *id = conn_id(c, &n);

    if (g.cfg.connection_messages)
        log_at(LOG_T_NOTICE,
               "Client " ID_FMT " disconnected due to protocol error%s%s.", n,
               id, c->proto == 5 ? ": " : "", c->proto == 5 ? why : "");
    conn_disconnect(c, reason, why);
}

/* Refuses a CONNECT with a CONNACK code, then closes. */
static void
handle_refuse(struct conn *c, uint8_t rc)
{
    static const uint8_t v5[] = {0,
                                 MQX_RC_UNSUPPORTED_VERSION,
                                 MQX_RC_ID_INVALID,
                                 MQX_RC_UNAVAILABLE,
                                 MQX_RC_BAD_AUTH,
                                 MQX_RC_NOT_AUTHORIZED};

    if (c->proto == 5 && rc < sizeof v5) rc = v5[rc];
    handle_connack(c, 0, rc, NULL, NULL);
    conn_close(c, CF_QUIET | CF_FLUSHCLOSE);
}

/* CONNACK: 3.1.1's four bytes, or 5.0's with the broker's limits as
 * properties [MQTT-3.2.2.3] on success, and a reason string on refusal
 * when the client wants problem information. */
static void
handle_connack(struct conn *c, uint8_t present, uint8_t rc,
               const struct mqx_str *assigned, const char *why)
{
    uint8_t pr[64 + 2 * 256], *p;
    size_t n = 0, wl = why && c->problem ? strlen(why) : 0, i;
    const struct cfg *k = &g.cfg;

    if (c->proto != 5) {
        p = conn_out(c, 4);
        if (p)
            mqx_mqtt_enc_connack(p, present, rc);
        else
            conn_oom(c, "the CONNACK");
        return;
    }
    if (rc == MQX_RC_SUCCESS) {
        if (k->max_inflight_messages && k->max_inflight_messages < 65535) {
            pr[n++] = MQX_P_RECEIVE_MAX;
            wr_u16(pr + n, (uint16_t)k->max_inflight_messages);
            n += 2;
        }
        pr[n++] = MQX_P_MAX_PACKET;
        pr[n++] = (uint8_t)(k->max_packet_size >> 24);
        pr[n++] = (uint8_t)(k->max_packet_size >> 16);
        pr[n++] = (uint8_t)(k->max_packet_size >> 8);
        pr[n++] = (uint8_t)k->max_packet_size;
        if (k->max_topic_alias) {
            pr[n++] = MQX_P_ALIAS_MAX;
            wr_u16(pr + n, (uint16_t)k->max_topic_alias);
            n += 2;
        }
        if (!k->retain_available) {
            pr[n++] = MQX_P_RETAIN_AVAILABLE;
            pr[n++] = 0;
        }
        if (!k->shared_subscriptions) {
            pr[n++] = MQX_P_SHARED_AVAILABLE;
            pr[n++] = 0;
        }
        if (c->keepalive_set) { /* [MQTT-3.2.2-21] */
            pr[n++] = MQX_P_SERVER_KEEPALIVE;
            wr_u16(pr + n, c->keepalive);
            n += 2;
        }
        if (assigned && assigned->len < 200)
            n += wr_prop_str(pr + n, MQX_P_ASSIGNED_ID, assigned->p,
                             assigned->len);
    }
    if (wl && wl < 200) n += wr_prop_str(pr + n, MQX_P_REASON, why, wl);
    i = 2 + mqx_varint_size((uint32_t)n) + n; /* flags, code, properties */
    p = conn_out(c, 1 + mqx_mqtt_rl_size((uint32_t)i) + i);
    if (!p) {
        conn_oom(c, "the CONNACK");
        return;
    }
    p[0] = MQX_CONNACK << 4;
    p += 1 + mqx_mqtt_enc_rl(p + 1, (uint32_t)i);
    p[0] = present & 1;
    p[1] = rc;
    p += 2 + mqx_enc_varint(p + 2, (uint32_t)n);
    memcpy(p, pr, n);
}

/* A client id for a client that sent none [MQTT-3.1.3-6]. */
static size_t
handle_assign_id(char *buf, size_t cap)
{
    uint64_t v = ++g.id_counter * 0x9e3779b97f4a7c15ull ^ (uint64_t)g.now;
    int k = snprintf(buf, cap, "auto-%016llx", (unsigned long long)v);

    return k > 0 ? (size_t)k : 0;
}

/* Admission [9]: user name and password against the password file, or
 * the certificate CN (R44: no password then); allow_anonymous for clients
 * without a name; the will topic against the ACL. A refusal is logged
 * with the client's real address (after PROXY), rate-limited per source,
 * for fail2ban-style tools; the CONNACK code is returned. */
static uint8_t
handle_auth(struct conn *c, const struct mqx_connect *ck, const uint8_t *id,
            size_t id_len)
{
    const struct authcfg *ac = auth_cfg(c->lsn);
    const struct authdb *db = auth_db(c->lsn);
    int by_cert =
        g.cfg.lsn[c->lsn].use_identity || g.cfg.lsn[c->lsn].use_subject;
    const char *why = NULL;
    uint8_t rc = MQX_CONNACK_OK;
    int64_t k;

    if (!ck->has_user) {
        if (!ac->allow_anonymous) {
            rc = MQX_CONNACK_NOT_AUTH;
            why = "not authorised";
        }
    } else if (db->has_pw && !by_cert) {
        const struct pwent *e = pw_find(&db->pw, ck->username);
        if (!e || !ck->has_pass || !auth_password_ok(e, ck->password)) {
            rc = MQX_CONNACK_BAD_AUTH;
            why = "bad user name or password";
        }
    }
    if (rc == MQX_CONNACK_OK && ck->will && db->has_acl) {
        struct mqx_str user = {NULL, 0}, cid;
        cid.p = id;
        cid.len = (uint32_t)id_len;
        if (ck->has_user) user = ck->username;
        if (!acl_check(&db->acl, user, cid, ck->will_topic.p,
                       ck->will_topic.len, MQX_ACL_WRITE)) {
            rc = MQX_CONNACK_NOT_AUTH;
            why = "not authorised to publish its will";
        }
    }
    if (rc == MQX_CONNACK_OK) return rc;
    k = log_limit_src(c->addr);
    if (k >= 0 && g.cfg.connection_messages) {
        if (ck->has_user)
            log_at(LOG_T_NOTICE,
                   "Client %.*s disconnected, %s. (from %s, u'%.*s')%s",
                   (int)id_len, (const char *)id, why, c->addr,
                   (int)ck->username.len, (const char *)ck->username.p,
                   log_suppressed(k));
        else
            log_at(LOG_T_NOTICE, "Client %.*s disconnected, %s. (from %s)%s",
                   (int)id_len, (const char *)id, why, c->addr,
                   log_suppressed(k));
    }
    return rc;
}

/* Keeps the user name of a session (ACL %u, delivery checks). */
static int
handle_set_user(uint32_t s, const struct mqx_connect *ck, uint8_t lsn)
{
    struct sess *x = &g.sess[s];
    uint8_t *b = NULL;

    if (ck->has_user) {
        b = st_dup(ck->username.p, ck->username.len ? ck->username.len : 1);
        if (!b) return -1;
    }
    if (x->user != NIL) st_free(st_ptr(x->user));
    x->user = b ? ST_UNIT(b) : NIL;
    x->user_len = (uint16_t)ck->username.len;
    x->lsn = lsn;
    return 0;
}

static void
handle_connect(struct conn *c, const struct mqx_packet *pk)
{
    struct mqx_connect ck;
    char idbuf[32];
    const uint8_t *id;
    size_t id_len;
    uint32_t s, will = NIL, ci = conn_idx(c);
    uint8_t rc, present = 0;
    struct mqx_str assigned = {NULL, 0};

    if (c->state != CONN_NEW) { /* [MQTT-3.1.0-2] second CONNECT */
        handle_violation(c, MQX_RC_PROTOCOL, "second CONNECT");
        return;
    }
    if (mqx_mqtt_connect(pk->body, pk->len, &ck) != MQX_DONE) {
        if (ck.level == 5) c->proto = 5;
        if (ck.connack) {
            if (g.cfg.connection_messages)
                log_at(LOG_T_NOTICE, "Client <unknown> from %s refused: %s.",
                       c->addr,
                       ck.connack == MQX_CONNACK_PROTOCOL
                           ? "unsupported protocol version"
                       : ck.connack == MQX_CONNACK_ID ? "identifier rejected"
                                                      : "malformed CONNECT");
            handle_refuse(c, ck.connack);
        } else {
            handle_protocol_error(c);
        }
        return;
    }
    c->proto = ck.level;
    c->problem = ck.level == 5 && (!(ck.props.has & PB(MQX_P_REQ_PROBLEM)) ||
                                   ck.props.req_problem);
    id = ck.client_id.p;
    id_len = ck.client_id.len;
    if (id_len == 0) {
        id_len = handle_assign_id(idbuf, sizeof idbuf);
        id = (const uint8_t *)idbuf;
        assigned.p = id; /* [MQTT-3.2.2-16] */
        assigned.len = (uint32_t)id_len;
    }
    if (ck.level == 5 && (ck.props.has & PB(MQX_P_AUTH_METHOD))) {
        if (g.cfg.connection_messages)
            log_at(LOG_T_NOTICE,
                   "Client %.*s from %s refused: authentication method "
                   "'%.*s' (enhanced authentication is not supported).",
                   (int)id_len, (const char *)id, c->addr,
                   (int)ck.props.auth_method.len,
                   (const char *)ck.props.auth_method.p);
        handle_connack(c, 0, MQX_RC_BAD_AUTH_METHOD, NULL,
                       "enhanced authentication is not supported");
        conn_close(c, CF_QUIET | CF_FLUSHCLOSE);
        return;
    }
    if (ck.level == 5 && (ck.keepalive > g.cfg.max_keepalive ||
                          (ck.keepalive == 0 && g.cfg.max_keepalive < 65535))) {
        ck.keepalive = (uint16_t)g.cfg.max_keepalive; /* Server Keep Alive */
        c->keepalive_set = 1;
    }
    if (ck.keepalive > g.cfg.max_keepalive) {
        if (g.cfg.connection_messages)
            log_at(LOG_T_NOTICE,
                   "Client %.*s from %s refused: keepalive %u > "
                   "max_keepalive %lld.",
                   (int)id_len, (const char *)id, c->addr, ck.keepalive,
                   (long long)g.cfg.max_keepalive);
        handle_refuse(c, MQX_CONNACK_ID);
        return;
    }
    if (c->pp & PP_DENY) { /* R33 */
        log_at(LOG_T_NOTICE,
               "Client %.*s from %s refused: the LOCAL PROXY header does not "
               "meet the listener's TLS requirements.",
               (int)id_len, (const char *)id, c->addr);
        handle_refuse(c, MQX_CONNACK_NOT_AUTH);
        return;
    }
    if (g.cfg.lsn[c->lsn].use_identity || g.cfg.lsn[c->lsn].use_subject) {
        if (c->pp & PP_NO_CN) { /* R43 */
            log_at(LOG_T_NOTICE,
                   "Client %.*s from %s refused: no usable certificate %s.",
                   (int)id_len, (const char *)id, c->addr,
                   g.cfg.lsn[c->lsn].use_subject
                       ? "subject for use_subject_as_username"
                       : "CN for use_identity_as_username");
            handle_refuse(c, MQX_CONNACK_BAD_AUTH);
            return;
        }
        ck.has_user = 1; /* R44: authenticated by the certificate */
        ck.has_pass = 0;
        ck.username.p = conn_pp_cn(c);
        ck.username.len = c->pp_cn_len;
    }
    rc = handle_auth(c, &ck, id, id_len);
    if (rc != MQX_CONNACK_OK) {
        handle_refuse(c, rc);
        return;
    }
    if (ck.will && ck.will_retain && !g.cfg.retain_available && ck.level == 5) {
        handle_connack(c, 0, MQX_RC_RETAIN_UNSUPPORTED, NULL,
                       "retain is not available");
        conn_close(c, CF_QUIET | CF_FLUSHCLOSE);
        return;
    }
    if (ck.will) {
        const struct mqx_props *wp = &ck.will_props;
        /* a will's expiry counts from its publication: the interval
         * waits in msg.expire until will_publish() */
        will = msg_new5(ck.will_topic.p, ck.will_topic.len, NULL, wp->fwd_len,
                        ck.will_payload.p, ck.will_payload.len, ck.will_qos,
                        ck.will_retain, wp->message_expiry);
        if (will == NIL) {
            log_at(LOG_T_WARN, "Client %.*s refused: message store full.",
                   (int)id_len, (const char *)id);
            handle_refuse(c, MQX_CONNACK_UNAVAIL);
            return;
        }
        mqx_props_copy_fwd(wp, st_ptr(g.msgs[will].data) + ck.will_topic.len);
        msg_ref(will);
    }
    s = sess_find(id, id_len);
    if (s != NIL && g.sess[s].conn != NIL) { /* [MQTT-3.1.4-2] takeover */
        struct conn *old = &g.conns[g.sess[s].conn];
        if (g.cfg.connection_messages)
            log_at(LOG_T_NOTICE,
                   "Client %.*s already connected, closing old connection.",
                   (int)id_len, (const char *)id);
        old->sess = NIL;
        g.sess[s].conn = NIL;
        conn_disconnect(old, MQX_RC_TAKEN_OVER, "session taken over");
    }
    if (s != NIL && g.sess[s].will != NIL) { /* [MQTT-3.1.3-9] resumed in
                                                time: no delayed will */
        msg_unref(g.sess[s].will);
        g.sess[s].will = NIL;
    }
    if (s != NIL && ck.clean) { /* [MQTT-3.1.2-6], Clean Start */
        sess_free(s);
        s = NIL;
    }
    if (s == NIL) {
        s = sess_new(id, id_len);
        if (s == NIL) {
            static int64_t last;
            static uint32_t quiet;
            int64_t k = log_limit(&last, &quiet);
            if (k >= 0)
                log_at(LOG_T_WARN,
                       "Client %.*s refused: session pool full (max_sessions "
                       "%lld)%s.",
                       (int)id_len, (const char *)id,
                       (long long)g.cfg.max_sessions, log_suppressed(k));
            msg_unref(will);
            handle_refuse(c, MQX_CONNACK_UNAVAIL);
            return;
        }
    } else {
        present = 1; /* [MQTT-3.2.2-2] */
    }
    if (handle_set_user(s, &ck, c->lsn)) {
        msg_unref(will);
        if (!present) sess_free(s);
        conn_oom(c, "the CONNACK");
        return;
    }
    c->keepalive = ck.keepalive;
    handle_connack(c, present, MQX_CONNACK_OK, assigned.p ? &assigned : NULL,
                   NULL);
    if (c->state == CONN_CLOSING) { /* no room for the CONNACK */
        msg_unref(will);
        if (!present) sess_free(s);
        return;
    }
    g.sess[s].conn = ci;
    if (ck.level == 5) { /* [MQTT-3.1.2-23] */
        uint32_t ex = ck.props.session_expiry;
        if (!ck.clean || ex || !g.sess[s].clean) g.changes++;
        g.sess[s].clean = ex == 0;
        g.sess[s].expiry = ex;
        c->recv_max = ck.props.receive_max;
        c->max_out = ck.props.max_packet;
        c->alias_in_max = (uint16_t)g.cfg.max_topic_alias;
        c->recv_max_in = g.cfg.max_inflight_messages < 65535
                             ? (uint16_t)g.cfg.max_inflight_messages
                             : 0;
        c->alias_out_max = ck.props.alias_max < g.cfg.max_topic_alias
                               ? ck.props.alias_max
                               : (uint16_t)g.cfg.max_topic_alias;
        c->will_delay = ck.will ? ck.will_props.will_delay : 0;
    } else {
        if (!ck.clean || !g.sess[s].clean) g.changes++;
        g.sess[s].clean = ck.clean;
    }
    g.sess[s].proto = ck.level;
    g.sess[s].expire_ms = 0;
    jr_sess(s);
    c->sess = s;
    c->will = will;
    c->state = CONN_ONLINE;
    c->resend = g.sess[s].f_head;
    c->deadline_ms = c->keepalive ? g.now + (int64_t)c->keepalive * 1500 : 0;
    g.n_online++;
    if (g.n_online > g.peak_online) g.peak_online = g.n_online;
    if (g.cfg.connection_messages) {
        int pv = ck.level == 5 ? 5 : ck.level == 4 ? 2 : 1;
        if (ck.has_user)
            log_at(LOG_T_NOTICE,
                   "New client connected from %s as %.*s (p%d, c%d, k%u, "
                   "u'%.*s').",
                   c->addr, (int)id_len, (const char *)id, pv, ck.clean,
                   c->keepalive, (int)ck.username.len,
                   (const char *)ck.username.p);
        else
            log_at(LOG_T_NOTICE,
                   "New client connected from %s as %.*s (p%d, c%d, k%u).",
                   c->addr, (int)id_len, (const char *)id, pv, ck.clean,
                   c->keepalive);
    }
}

/* Returns 1 when the packet was not taken and must be parsed again once
 * the store has room. */
static int
handle_publish(struct conn *c, const struct mqx_packet *pk)
{
    struct mqx_publish pb;
    struct sess *s = &g.sess[c->sess];
    uint8_t ack = pb_ack_type(pk->flags);
    uint32_t m, n;
    enum mqx_rc drc =
        mqx_mqtt_publish(pk->flags, pk->body, pk->len, c->proto, &pb);

    if (drc != MQX_DONE) {
        handle_bad(c, drc);
        return 0;
    }
    if (c->proto == 5 && handle_alias(c, &pb)) return 0;
    if (pb.props.has & PB(MQX_P_SUB_ID)) { /* [MQTT-3.3.4-6] */
        handle_violation(c, MQX_RC_PROTOCOL, "subscription identifier");
        return 0;
    }
    if (pb.retain && !g.cfg.retain_available) {
        handle_violation(c, MQX_RC_RETAIN_UNSUPPORTED,
                         "retain is not available");
        return 0;
    }
    g.msgs_rx++;
    if (pb.qos == 2 && qe_find(s->r_head, pb.pid) != NIL) {
        conn_ack(c, MQX_PUBREC, pb.pid); /* [MQTT-4.3.3-2] not again */
        return 0;
    }
    if (pb.qos == 2 && c->proto == 5 && c->recv_max_in &&
        c->q2_in >= c->recv_max_in) { /* this connection's quota [4.9] */
        handle_violation(c, MQX_RC_RECEIVE_MAX, /* [MQTT-3.3.4-8] */
                         "receive maximum exceeded");
        return 0;
    }
    if (g.cfg.message_size_limit &&
        pb.payload.len > (uint64_t)g.cfg.message_size_limit) {
        static int64_t last;
        static uint32_t quiet;
        int64_t k = log_limit(&last, &quiet);
        int nl;
        const char *id = conn_id(c, &nl);
        if (k >= 0)
            log_at(LOG_T_NOTICE,
                   "Dropped too large PUBLISH from " ID_FMT
                   " (%u bytes > message_size_limit).",
                   nl, id, pb.payload.len);
        g.pub_dropped++;
        if (ack) conn_ack5(c, ack, pb.pid, MQX_RC_QUOTA, "message_size_limit");
        return 0;
    }
    if (pb.props.payload_format &&
        !mqx_utf8_valid(pb.payload.p, pb.payload.len)) { /* [MQTT-3.3.2-4] */
        g.pub_dropped++;
        if (ack)
            conn_ack5(c, ack, pb.pid, MQX_RC_PAYLOAD_FORMAT,
                      "payload is not UTF-8");
        return 0;
    }
    if (!acl_allows(c->sess, pb.topic.p, pb.topic.len, MQX_ACL_WRITE)) {
        int nl;
        const char *id = conn_id(c, &nl);
        log_at(LOG_T_DEBUG, "Denied PUBLISH from " ID_FMT " (q%d, r%d, '%.*s')",
               nl, id, pb.qos, pb.retain, (int)pb.topic.len,
               (const char *)pb.topic.p);
        /* 3.1.1 has no refusal: acknowledged and dropped, as Mosquitto */
        if (ack)
            conn_ack5(c, ack, pb.pid, MQX_RC_NOT_AUTHORIZED, "not authorized");
        return 0;
    }
    m = msg_new5(pb.topic.p, pb.topic.len, NULL, pb.props.fwd_len, pb.payload.p,
                 pb.payload.len, pb.qos, pb.retain,
                 pb.props.message_expiry
                     ? (uint32_t)time(NULL) + pb.props.message_expiry
                     : 0);
    if (m == NIL) {
        if (pb.qos == 0) { /* policy: QoS 0 dropped and counted */
            g.pub_dropped++;
            return 0;
        }
        g.msgs_rx--;
        conn_throttle(c); /* QoS 1/2: kept unread until the store drains */
        return 1;
    }
    if (pb.props.fwd_len)
        mqx_props_copy_fwd(&pb.props, st_ptr(g.msgs[m].data) + pb.topic.len);
    if (pb.qos == 2) {
        uint32_t q = qe_new(NIL, 2, QE_RECEIVED);
        if (q == NIL) {
            msg_drop_if_unused(m);
            conn_oom(c, "a QoS 2 id");
            return 0;
        }
        g.qents[q].pid = pb.pid;
        g.qents[q].next = s->r_head;
        s->r_head = q;
        s->r_count++;
        c->q2_in++;
        jr_pid(MQX_JR_RCVD, c->sess, pb.pid);
    }
    n = route(m, c->sess);
    if (ack) /* 5.0: 0x10 when nobody subscribes [MQTT-3.4.2.1] */
        conn_ack5(c, ack, pb.pid, n ? 0 : MQX_RC_NO_SUBSCRIBERS, NULL);
    /* policy: near the messages' limit, stop reading publishers */
    if (g.st.used > g.st.size / 16 * 13) conn_throttle(c);
    return 0;
}

/* The acknowledgement a PUBLISH gets from its flags: PUBACK, PUBREC or
 * none (QoS 0). */
static uint8_t
pb_ack_type(uint8_t flags)
{
    unsigned q = (flags >> 1) & 3;

    return q == 1 ? MQX_PUBACK : q == 2 ? MQX_PUBREC : 0;
}

/* 5.0 Topic Alias from the client [MQTT-3.3.2.3.4]: sets the alias when
 * the PUBLISH has a topic, resolves it when the topic is empty. 1 when
 * the connection was closed (0x94 or the store is full). */
static int
handle_alias(struct conn *c, struct mqx_publish *pb)
{
    uint16_t a = pb->props.alias;
    uint8_t *b;

    if (!(pb->props.has & PB(MQX_P_ALIAS))) return 0;
    if (a == 0 || a > c->alias_in_max) { /* the CONNACK's, not a reload's */
        handle_violation(c, MQX_RC_ALIAS_INVALID, "topic alias invalid");
        return 1;
    }
    if (!c->alias_in) {
        uint32_t i;
        c->alias_in = (uint32_t *)(void *)st_alloc((size_t)c->alias_in_max *
                                                   sizeof(uint32_t));
        if (!c->alias_in) {
            conn_oom(c, "topic aliases");
            return 1;
        }
        for (i = 0; i < c->alias_in_max; i++)
            c->alias_in[i] = NIL;
    }
    if (pb->topic.len == 0) {
        if (c->alias_in[a - 1] == NIL) {
            handle_violation(c, MQX_RC_ALIAS_INVALID, "topic alias not set");
            return 1;
        }
        b = st_ptr(c->alias_in[a - 1]);
        pb->topic.p = b + 2;
        pb->topic.len = (uint32_t)(b[0] << 8 | b[1]);
        return 0;
    }
    b = st_alloc(2 + pb->topic.len);
    if (!b) {
        conn_oom(c, "a topic alias");
        return 1;
    }
    wr_u16(b, (uint16_t)pb->topic.len);
    memcpy(b + 2, pb->topic.p, pb->topic.len);
    if (c->alias_in[a - 1] != NIL) st_free(st_ptr(c->alias_in[a - 1]));
    c->alias_in[a - 1] = ST_UNIT(b);
    return 0;
}

static void
handle_subscribe(struct conn *c, const struct mqx_packet *pk)
{
    struct mqx_subscribe sb;
    struct mqx_str f;
    size_t off = 0, i = 0, rl;
    uint8_t opts, *p;
    uint32_t s = c->sess;
    int v5 = c->proto == 5;
    enum mqx_rc drc = mqx_mqtt_subscribe(pk, c->proto, &sb);

    if (drc != MQX_DONE) {
        handle_bad(c, drc);
        return;
    }
    while (mqx_mqtt_sub_next(&sb, &off, &f, &opts)) { /* [MQTT-3.8.3-4] */
        struct mqx_str grp, flt;
        if ((opts & 4) && share_split(f.p, f.len, &grp, &flt) == 1) {
            handle_violation(c, MQX_RC_PROTOCOL,
                             "no local on a shared subscription");
            return;
        }
    }
    off = 0;
    rl = 2 + (v5 ? 1u : 0u) + sb.count;
    p = conn_out(c, 1 + mqx_mqtt_rl_size((uint32_t)rl) + rl);
    if (!p) {
        conn_oom(c, "the SUBACK");
        return;
    }
    p[0] = MQX_SUBACK << 4;
    p += 1 + mqx_mqtt_enc_rl(p + 1, (uint32_t)rl);
    wr_u16(p, sb.pid);
    p += 2;
    if (v5) *p++ = 0; /* no properties */
    while (mqx_mqtt_sub_next(&sb, &off, &f, &opts)) {
        uint32_t nd = NIL;
        struct mqx_str grp = {NULL, 0}, flt;
        int sh = share_split(f.p, f.len, &grp, &flt), existed = 0, nl;
        uint8_t granted, o = (uint8_t)((opts >> 2 & 1 ? SO_NO_LOCAL : 0) |
                                       (opts >> 3 & 1 ? SO_RAP : 0) |
                                       ((opts >> 4 & 3) == 1   ? SO_RH_NEW
                                        : (opts >> 4 & 3) == 2 ? SO_RH_NEVER
                                                               : 0));
        const char *id = conn_id(c, &nl);
        if (sh < 0 || (sh == 0 && !mqx_filter_valid(f.p, f.len)))
            granted = MQX_RC_FILTER_INVALID; /* only 5.0 gets this far */
        else if (sh == 1 && !g.cfg.shared_subscriptions)
            granted = v5 ? MQX_RC_SHARED_UNSUPPORTED : 0x80;
        else if (!acl_allows(s, flt.p, flt.len, MQX_ACL_READ))
            granted = v5 ? MQX_RC_NOT_AUTHORIZED : 0x80;
        else {
            granted = sub_add(s, f.p, f.len, opts & 3, o, sb.props.sub_id, &nd,
                              &existed);
            if (granted == 0x80 && v5) granted = MQX_RC_QUOTA;
        }
        p[i++] = granted;
        log_at(LOG_T_SUB, ID_FMT " %d %.*s", nl, id, granted, (int)f.len,
               (const char *)f.p);
        /* retained messages [MQTT-3.3.1-9..11]: not for a shared one */
        if (granted <= 2 && sh == 0 && !(o & SO_RH_NEVER) &&
            !((o & SO_RH_NEW) && existed))
            ret_match(s, 0, f.p, f.len, 0, granted);
    }
}

static void
handle_unsubscribe(struct conn *c, const struct mqx_packet *pk)
{
    struct mqx_subscribe sb;
    struct mqx_str f;
    size_t off = 0, i = 0, rl;
    uint8_t opts, *p = NULL;
    int v5 = c->proto == 5;
    enum mqx_rc drc = mqx_mqtt_subscribe(pk, c->proto, &sb);

    if (drc != MQX_DONE) {
        handle_bad(c, drc);
        return;
    }
    if (v5) { /* UNSUBACK with a reason code per filter [MQTT-3.11.3] */
        rl = 2 + 1 + sb.count;
        p = conn_out(c, 1 + mqx_mqtt_rl_size((uint32_t)rl) + rl);
        if (!p) {
            conn_oom(c, "the UNSUBACK");
            return;
        }
        p[0] = MQX_UNSUBACK << 4;
        p += 1 + mqx_mqtt_enc_rl(p + 1, (uint32_t)rl);
        wr_u16(p, sb.pid);
        p[2] = 0;
        p += 3;
    }
    while (mqx_mqtt_sub_next(&sb, &off, &f, &opts)) {
        int n, had;
        struct mqx_str grp, flt;
        const char *id = conn_id(c, &n);
        int sh = share_split(f.p, f.len, &grp, &flt);
        if (sh < 0 || (sh == 0 && !mqx_filter_valid(f.p, f.len))) {
            if (p) p[i++] = MQX_RC_FILTER_INVALID;
            continue;
        }
        had = sub_remove(c->sess, f.p, f.len);
        if (p) p[i++] = had ? MQX_RC_SUCCESS : MQX_RC_NO_SUBSCRIPTION;
        log_at(LOG_T_UNSUB, ID_FMT " %.*s", n, id, (int)f.len,
               (const char *)f.p);
    }
    if (!v5) conn_ack(c, MQX_UNSUBACK, sb.pid);
}

/* PUBACK, PUBREC, PUBREL, PUBCOMP. */
static void
handle_ack(struct conn *c, const struct mqx_packet *pk)
{
    struct sess *s = &g.sess[c->sess];
    struct mqx_ack a;
    uint16_t pid;
    uint32_t q;

    if (mqx_mqtt_ack(pk, c->proto, &a) != MQX_DONE) {
        handle_protocol_error(c);
        return;
    }
    pid = a.pid;
    switch (pk->type) {
    case MQX_PUBACK:
        q = qe_unlink(&s->f_head, &s->f_tail, pid, QE_PUBACK);
        break;
    case MQX_PUBCOMP:
        q = qe_unlink(&s->f_head, &s->f_tail, pid, QE_PUBCOMP);
        break;
    case MQX_PUBREC:
        q = qe_find(s->f_head, pid);
        if (q != NIL && g.qents[q].state == QE_PUBREC && a.reason >= 0x80) {
            /* 5.0: the client refused it; the flow ends [MQTT-4.3.3] */
            q = qe_unlink(&s->f_head, &s->f_tail, pid, QE_PUBREC);
            break;
        }
        if (q != NIL && g.qents[q].state == QE_PUBREC) {
            jr_pid(MQX_JR_REC, c->sess, pid);
            g.qents[q].state = QE_PUBCOMP; /* the payload is delivered */
            msg_unref(g.qents[q].msg);
            g.qents[q].msg = NIL;
        }
        conn_ack5(c, MQX_PUBREL, pid, /* [MQTT-4.3.3-1] */
                  q == NIL ? MQX_RC_PID_NOT_FOUND : 0, NULL);
        return;
    default: /* PUBREL */
        q = qe_unlink(&s->r_head, NULL, pid, QE_RECEIVED);
        if (q != NIL) {
            jr_pid(MQX_JR_REL, c->sess, pid);
            s->r_count--;
            if (c->q2_in) c->q2_in--;
            qe_free(q);
        }
        conn_ack5(c, MQX_PUBCOMP, pid, /* [MQTT-4.3.3-3] */
                  q == NIL ? MQX_RC_PID_NOT_FOUND : 0, NULL);
        return;
    }
    if (q == NIL) return; /* unknown id: ignore */
    if (!s->clean) g.changes++;
    jr_pid(MQX_JR_ACK, c->sess, pid);
    if (c->resend == q) c->resend = g.qents[q].next;
    s->f_count--;
    qe_free(q);
    conn_dirty(c); /* the window opened */
}

/* DISCONNECT from the client: no will, unless a 5.0 client asks for it
 * (0x04); a 5.0 client may change its Session Expiry Interval, but not
 * from 0 [MQTT-3.14.2-2]. */
static void
handle_disconnect(struct conn *c, const struct mqx_packet *pk)
{
    struct mqx_ack a;
    struct sess *s = &g.sess[c->sess];
    int n;
    const char *id = conn_id(c, &n);

    if (mqx_mqtt_disconnect(pk, c->proto, &a) != MQX_DONE) {
        handle_protocol_error(c);
        return;
    }
    if (a.props.has & PB(MQX_P_SERVER_REF)) {
        handle_violation(c, MQX_RC_PROTOCOL, "server reference");
        return;
    }
    if (a.props.has & PB(MQX_P_SESSION_EXPIRY)) {
        if (s->expiry == 0 && a.props.session_expiry != 0) {
            handle_violation(c, MQX_RC_PROTOCOL,
                             "session expiry changed from 0");
            return;
        }
        s->expiry = a.props.session_expiry;
        if (s->clean != (s->expiry == 0)) {
            if (s->expiry == 0) jr_sid(MQX_JR_SESS_DEL, c->sess);
            s->clean = s->expiry == 0;
        }
        jr_sess(c->sess);
    }
    if (g.cfg.connection_messages)
        log_at(LOG_T_NOTICE, "Client " ID_FMT " disconnected.", n, id);
    /* [MQTT-3.14.4-3] no will, but 0x04 asks for it */
    conn_close(c, a.reason == MQX_RC_DISCONNECT_WILL ? CF_WILL | CF_QUIET
                                                     : CF_QUIET);
}

/* Returns 1 when the packet must be parsed again later (store full). */
static int
handle_packet(struct conn *c, const struct mqx_packet *pk)
{
    if (c->state == CONN_NEW && pk->type != MQX_CONNECT) {
        if (g.cfg.connection_messages)
            log_at(LOG_T_NOTICE,
                   "Client <unknown> from %s disconnected: packet type %u "
                   "before CONNECT.",
                   c->addr, pk->type);
        conn_close(c, CF_QUIET); /* [MQTT-3.1.0-1] */
        return 0;
    }
    switch (pk->type) {
    case MQX_CONNECT:
        handle_connect(c, pk);
        break;
    case MQX_PUBLISH:
        return handle_publish(c, pk);
    case MQX_PUBACK:
    case MQX_PUBREC:
    case MQX_PUBREL:
    case MQX_PUBCOMP:
        handle_ack(c, pk);
        break;
    case MQX_SUBSCRIBE:
        handle_subscribe(c, pk);
        break;
    case MQX_UNSUBSCRIBE:
        handle_unsubscribe(c, pk);
        break;
    case MQX_PINGREQ:
        if (pk->flags || pk->len) {
            handle_protocol_error(c);
        } else {
            uint8_t *p = conn_out(c, 2);
            if (!p) {
                conn_oom(c, "the PINGRESP");
                break;
            }
            p[0] = MQX_PINGRESP << 4;
            p[1] = 0;
        }
        break;
    case MQX_DISCONNECT:
        handle_disconnect(c, pk);
        break;
    case MQX_AUTH: /* 5.0: no enhanced authentication was agreed at
                      CONNECT (those get 0x8C), so AUTH has no place */
        if (c->proto == 5)
            handle_violation(c, MQX_RC_PROTOCOL,
                             "enhanced authentication is not supported");
        else
            handle_protocol_error(c);
        break;
    default:
        handle_protocol_error(c);
        break;
    }
    return 0;
}

/* ==== [15] Poll loop: read, decode, dispatch; listeners; signals ==== */
/* loop_run() polls listeners (pfd[0 .. n_ls-1]) and connection slots,
 * reads each ready socket once (into the shared scratch, or straight into
 * a partial packet's block when that packet is large), decodes every
 * complete packet, then flushes every dirty client once. */

/* The header phase of a PROXY listener (R14-R34): parses what has arrived
 * (the whole prefix each time, R15), and on a complete header switches the
 * connection to MQTT. Returns the bytes consumed: 0 while more is needed,
 * the header's length when it is accepted (R17), all when it is refused
 * (the connection is then closing, nothing is written, R22). */
static __attribute__((noinline)) size_t
loop_proxy(struct conn *c, const uint8_t *buf, size_t len)
{
    const struct listener *l = &g.cfg.lsn[c->lsn];
    struct mqx_proxy pp;
    size_t used = 0;
    enum mqx_rc rc = mqx_proxy_parse(buf, len, l->proxy, &pp, &used);
    enum mqx_proxy_verdict v;
    char who[MQX_PROXY_ADDRSTRLEN], via[MQX_ADDR_LEN];
    int64_t k;

    if (rc == MQX_MORE) return 0;
    if (rc != MQX_DONE) {
        g.pp_rejected++;
        k = log_limit_src(c->addr);
        if (k >= 0)
            log_at(LOG_T_NOTICE,
                   "PROXY: connection from %s on port %u rejected: %s%s%s%s",
                   c->addr, l->port, pp.reason, mqx_proxy_hint_str(pp.hint),
                   conn_pp_advice(pp.hint), log_suppressed(k));
        conn_close(c, CF_QUIET);
        return len;
    }
    v = mqx_proxy_policy(&pp, l->proxy_require_tls, l->require_certificate);
    if (!mqx_proxy_fmt_client(who, sizeof who, &pp)) /* LOCAL, UNKNOWN */
        str_set(who, sizeof who, c->addr);
    if (v == MQX_PROXY_NO_TLS || v == MQX_PROXY_NO_CERT) { /* R40, R41 */
        g.pp_rejected++;
        k = log_limit_src(who);
        if (k >= 0)
            log_at(LOG_T_NOTICE,
                   "PROXY: connection from %s via %s on port %u rejected, "
                   "%s.%s",
                   who, c->addr, l->port, mqx_proxy_verdict_str(v),
                   log_suppressed(k));
        conn_close(c, CF_QUIET);
        return len;
    }
    g.pp_accepted++;
    if (pp.command != MQX_PROXY_CMD_PROXY) {
        c->pp |= PP_LOCAL;
        if (pp.command == MQX_PROXY_CMD_LOCAL) {
            g.pp_local++;
            if (l->proxy_local_close) { /* R8: as Mosquitto 2.1 */
                log_at(LOG_T_DEBUG,
                       "PROXY: LOCAL connection from %s closed "
                       "(proxy_protocol_local close)",
                       c->addr);
                conn_close(c, CF_QUIET);
                return len;
            }
            if (mqx_proxy_tls_check(&pp, l->proxy_require_tls,
                                    l->require_certificate) != MQX_PROXY_ACCEPT)
                c->pp |= PP_DENY; /* R33: refused if it sends CONNECT */
        }
    }
    str_set(via, sizeof via, c->addr);
    if (conn_pp_keep(c, &pp, via)) {
        conn_oom(c, "the PROXY header");
        return len;
    }
    str_set(c->addr, sizeof c->addr, who); /* R46 */
    c->pp |= PP_VIA;
    c->state = CONN_NEW;
    c->deadline_ms = g.now + g.cfg.connect_timeout * 1000; /* R48 */
    return used;
}

/* The connection line of a proxied client, once its first MQTT byte
 * arrives: health checks that close after the header stay quiet (R34). */
static void
pp_log_connection(struct conn *c)
{
    c->pp |= PP_MQTT;
    if (g.cfg.connection_messages)
        log_at(LOG_T_NOTICE, "New connection from %s via %s on port %u %s.",
               c->addr, conn_pp_via(c), g.cfg.lsn[c->lsn].port,
               conn_pp_summary(c));
}

/* Decodes every complete packet in buf; returns the bytes consumed. */
static size_t
loop_parse(struct conn *c, const uint8_t *buf, size_t len)
{
    size_t off = 0, used = 0;
    struct mqx_packet pk = {0, 0, NULL, 0};

    while (off < len && c->state != CONN_CLOSING) {
        enum mqx_rc rc = mqx_mqtt_frame(
            buf + off, len - off, (uint32_t)g.cfg.max_packet_size, &pk, &used);
        if (rc == MQX_MORE) break;
        if (rc == MQX_BIG) {
            int n;
            const char *id = conn_id(c, &n);
            if (g.cfg.connection_messages)
                log_at(LOG_T_NOTICE,
                       "Client " ID_FMT " from %s disconnected: packet larger "
                       "than max_packet_size (%lld).",
                       n, id, c->addr, (long long)g.cfg.max_packet_size);
            conn_disconnect(c, MQX_RC_TOO_LARGE, "packet too large");
            break;
        }
        if (rc == MQX_BAD) {
            handle_protocol_error(c);
            break;
        }
        if (handle_packet(c, &pk)) break; /* kept for later */
        off += used;
        if (c->keepalive && c->state == CONN_ONLINE) /* [MQTT-3.1.2-24] */
            c->deadline_ms = g.now + (int64_t)c->keepalive * 1500;
    }
    return off;
}

/* Bytes a partial packet will need in all, when its header is known. */
static size_t
loop_need(const uint8_t *p, size_t n)
{
    size_t hl;
    uint32_t rl;

    if (mqx_mqtt_header(p, n, &hl, &rl) == MQX_DONE) return hl + rl;
    return 0;
}

/* Keeps an unfinished tail in the connection's own block. */
static void
loop_keep(struct conn *c, const uint8_t *p, size_t n)
{
    /* the block grows with what arrived (doubling), never to what a
     * header merely announces: a client that announces a large packet and
     * sends a few bytes holds a few bytes */
    size_t need = loop_need(p, n), cap = n, old = c->rx ? c->rx_cap : 0;
    uint8_t *b;

    if (n == 0) {
        g.rx_bytes -= old;
        st_free(c->rx);
        c->rx = NULL;
        c->rx_len = c->rx_cap = 0;
        return;
    }
    if (need > n) cap = need < 2 * n ? need : 2 * n;
    if (c->rx && c->rx_cap >= cap) {
        memmove(c->rx, p, n);
        c->rx_len = (uint32_t)n;
        return;
    }
    if (cap < MQX_STORE_MIN) cap = MQX_STORE_MIN;
    /* policy: partial packets of all clients take at most a quarter of
     * the store; past it, the client that wants more is disconnected */
    if (g.rx_bytes - old + ((size_t)MQX_STORE_MIN << st_order(cap)) >
        g.st.size / 4) {
        conn_oom(c, "a partial packet (partial packets may use a quarter of "
                    "the store)");
        return;
    }
    b = st_alloc(cap);
    if (!b) {
        conn_oom(c, "a partial packet");
        return;
    }
    assert(p != NULL);
    memcpy(b, p, n);
    st_free(c->rx);
    c->rx = b;
    c->rx_len = (uint32_t)n;
    c->rx_cap = (uint32_t)st_block_size(b);
    g.rx_bytes += c->rx_cap - old;
}

/* Parses what a throttled connection kept unread, now that the store has
 * room again (poll() will not report those bytes). */
static void
loop_tail(struct conn *c)
{
    size_t used = loop_parse(c, c->rx, c->rx_len);

    if (c->state != CONN_CLOSING) loop_keep(c, c->rx + used, c->rx_len - used);
}

static void
loop_read(struct conn *c)
{
    size_t have = c->rx_len, need = c->rx ? loop_need(c->rx, have) : 0;
    int big = need > MQX_SCRATCH / 2;
    uint8_t *buf = big ? c->rx : g.scratch;
    size_t cap = big ? c->rx_cap : MQX_SCRATCH, used;
    ssize_t n;

    conn_touch(c); /* activity: it joins the hot set */
    if (!big) {
        /* read no more than the store's free part can keep as a tail if
         * the packets in it cannot be stored; at least 1 KiB, so that
         * acknowledgements, which free the store, still flow */
        size_t room = (g.st.size - g.st.used) / 4;
        if (room < 1024) room = 1024;
        if (cap > have + room) cap = have + room;
        if (have && c->rx) memcpy(g.scratch, c->rx, have);
    }
    n = c->tls != NIL ? tls_recv(c, buf + have, cap - have)
                      : recv(c->fd, buf + have, cap - have, 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n <= 0) {
        int k;
        const char *id = conn_id(c, &k);
        if (c->state == CONN_PROXY) { /* R21 */
            if (have)
                log_at(LOG_T_NOTICE,
                       "PROXY: connection from %s on port %u closed during "
                       "header (%zu bytes)",
                       c->addr, g.cfg.lsn[c->lsn].port, have);
            else
                log_at(LOG_T_DEBUG,
                       "PROXY: connection from %s on port %u closed before "
                       "any byte",
                       c->addr, g.cfg.lsn[c->lsn].port);
        } else if ((c->pp & (PP_VIA | PP_MQTT)) == PP_VIA) { /* R33, R34 */
            log_at(LOG_T_DEBUG,
                   "PROXY: health check from %s via %s on port %u %s closed "
                   "without MQTT",
                   c->addr, conn_pp_via(c), g.cfg.lsn[c->lsn].port,
                   conn_pp_summary(c));
        }
        if (g.cfg.connection_messages && c->state == CONN_ONLINE) {
            if (n == 0)
                log_at(LOG_T_NOTICE, "Client " ID_FMT " closed its connection.",
                       k, id);
            else
                log_at(LOG_T_NOTICE,
                       "Socket error on client " ID_FMT ", disconnecting.", k,
                       id);
        }
        conn_close(c, CF_WILL | CF_QUIET);
        return;
    }
    g.bytes_rx += (uint64_t)n;
    have += (size_t)n;
    used = c->state == CONN_PROXY ? loop_proxy(c, buf, have) : 0;
    if (c->state == CONN_CLOSING) return;
    if ((c->pp & (PP_VIA | PP_MQTT)) == PP_VIA && used < have)
        pp_log_connection(c);
    if (c->state != CONN_PROXY) used += loop_parse(c, buf + used, have - used);
    if (c->state == CONN_CLOSING) return;
    if (big) {
        loop_keep(c, c->rx + used, have - used);
    } else {
        loop_keep(c, g.scratch + used, have - used);
    }
    if (c->tls != NIL && c->state != CONN_CLOSING && tls_pending(c)) {
        c->flags |= CF_TLSMORE; /* read again before the next poll() */
        g.tls_more = 1;
    }
}

/* The handshake of a TLS listener's connection, one step per poll event.
 * A first byte that is not a TLS handshake record (plain MQTT, a PROXY
 * header) closes at once; the deadline is connect_timeout (loop_expire).
 * Application data that came with the client's last flight is read now:
 * mbedTLS holds it and poll() would not say so. */
static void
loop_tls(struct conn *c)
{
    const struct listener *l = &g.cfg.lsn[c->lsn];
    struct pollfd *pf = conn_pfd(c);
    char why[768], id[1024];
    int rc;
    int64_t k;

    conn_touch(c);
    if (!(c->pp & PP_TLS)) {
        uint8_t b = 0;
        ssize_t n = recv(c->fd, &b, 1, MSG_PEEK);
        if (n < 0 &&
            (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        if (n <= 0) {
            log_at(LOG_T_DEBUG,
                   "TLS: connection from %s on port %u closed before the "
                   "handshake.",
                   c->addr, l->port);
            conn_close(c, CF_QUIET);
            return;
        }
        if (b != 0x16) {
            g.tls_failed++;
            k = log_limit_src(c->addr);
            if (k >= 0)
                log_at(LOG_T_NOTICE,
                       "TLS: connection from %s on port %u closed: not a TLS "
                       "handshake (first byte 0x%02x%s)%s",
                       c->addr, l->port, b,
                       b == 0x10  ? ", an MQTT CONNECT: the client does not "
                                    "use TLS on a TLS port"
                       : b == 'P' ? ", a PROXY header? this listener has "
                                    "no enable_proxy_protocol"
                                  : "",
                       log_suppressed(k));
            conn_close(c, CF_QUIET);
            return;
        }
        c->pp |= PP_TLS;
    }
    rc = tls_handshake(c, why, sizeof why);
    if (rc == TLS_WANT_WRITE) {
        c->flags |= CF_POLLOUT;
        pf->events |= POLLOUT;
        return;
    }
    c->flags &= (uint8_t)~CF_POLLOUT;
    pf->events &= (short)~POLLOUT;
    if (rc == TLS_WANT_READ) return;
    if (rc == TLS_FAIL) {
        g.tls_failed++;
        k = log_limit_src(c->addr);
        if (k >= 0)
            log_at(LOG_T_NOTICE,
                   "TLS: handshake with %s on port %u failed: %s%s", c->addr,
                   l->port, why, log_suppressed(k));
        conn_close(c, CF_QUIET);
        return;
    }
    tls_describe(c, why, sizeof why);
    {
        size_t cn = tls_identity(c, 0, id, sizeof id);
        log_at(LOG_T_DEBUG, "TLS: %s on port %u: %s%s%.*s", c->addr, l->port,
               why, cn ? ", certificate CN=" : "", (int)cn, id);
    }
    if (l->use_identity || l->use_subject) { /* kept as pp_info's "CN" */
        size_t n = tls_identity(c, l->use_subject, id, sizeof id);
        if (!n || n > UINT16_MAX || memchr(id, 0, n) ||
            !mqx_utf8_valid((const uint8_t *)id, n)) {
            c->pp |= PP_NO_CN;
            n = 0;
        }
        c->pp_info = st_alloc(2 + n);
        if (!c->pp_info) {
            conn_oom(c, "the certificate identity");
            return;
        }
        c->pp_info[0] = c->pp_info[1] = 0; /* no via, no summary */
        memcpy(c->pp_info + 2, id, n);
        c->pp_cn_len = (uint16_t)n;
    }
    c->state = CONN_NEW;
    c->deadline_ms = g.now + g.cfg.connect_timeout * 1000;
    if (tls_pending(c)) loop_read(c);
}

/* Formats a socket address as logs show it: "a.b.c.d:port", "v6:port"
 * (Mosquitto's form, no brackets), "unix:/path" for unix sockets. */
static void
loop_addr(const struct sockaddr_storage *sa, char *out, size_t cap,
          const char *unix_path)
{
    char ip[INET6_ADDRSTRLEN];

    if (sa->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof ip);
        snprintf(out, cap, "%s:%u", ip, ntohs(a->sin_port));
    } else if (sa->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof ip);
        snprintf(out, cap, "%s:%u", ip, ntohs(a->sin6_port));
    } else { /* R31, R50 */
        snprintf(out, cap, "unix:%s", unix_path);
    }
}

static void
lsn_refuse_log(const char *addr, const char *why)
{
    static int64_t last;
    static uint32_t quiet;
    int64_t k = log_limit(&last, &quiet);

    g.conns_refused++;
    if (k >= 0)
        log_at(LOG_T_NOTICE, "Connection from %s refused: %s%s.", addr, why,
               log_suppressed(k));
}

static int
lsn_trusted(const struct listener *l, const struct sockaddr_storage *sa)
{
    if (sa->ss_family == AF_INET)
        return mqx_cidr_match_list(
            l->trusted, l->n_trusted, MQX_PROXY_AF_INET,
            (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr);
    if (sa->ss_family == AF_INET6)
        return mqx_cidr_match_list(
            l->trusted, l->n_trusted, MQX_PROXY_AF_INET6,
            (const uint8_t *)&((const struct sockaddr_in6 *)sa)->sin6_addr);
    return 1; /* R11: unix sockets trust file permissions */
}

/* Accepts what a listening socket holds. A connection beyond the pool or
 * the listener's max_connections is accepted and closed at once, counted,
 * with a rate-limited line: the client fails fast. */
static void
lsn_accept(struct lsock *ls)
{
    struct listener *l = &g.cfg.lsn[ls->lsn];
    int burst;

    for (burst = 0; burst < 64; burst++) {
        struct sockaddr_storage sa;
        socklen_t sl = sizeof sa;
        int fd = accept(ls->fd, (struct sockaddr *)&sa, &sl), one = 1;
        uint32_t ci;
        struct conn *c;
        char addr[MQX_ADDR_LEN];

        if (fd < 0 && (errno == EMFILE || errno == ENFILE) && g.spare_fd >= 0) {
            /* out of descriptors: the spare one lets us take the client
             * and close it at once, instead of polling it forever */
            close(g.spare_fd);
            fd = accept(ls->fd, (struct sockaddr *)&sa, &sl);
            if (fd >= 0) {
                loop_addr(&sa, addr, sizeof addr, l->bind);
                close(fd);
                lsn_refuse_log(addr, "out of file descriptors");
            }
            g.spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
            continue;
        }
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
                errno != ECONNABORTED)
                log_sys(LOG_T_WARN, "accept on port %u", l->port);
            return;
        }
        loop_addr(&sa, addr, sizeof addr, l->bind);
        if (l->n_trusted && !lsn_trusted(l, &sa)) { /* R10 */
            int64_t k = log_limit_src(addr);
            close(fd);
            g.pp_untrusted++;
            if (k >= 0)
                log_at(LOG_T_NOTICE,
                       "PROXY: connection from %s on port %u rejected: not a "
                       "trusted proxy source%s",
                       addr, l->port, log_suppressed(k));
            continue;
        }
        if (l->max_connections >= 0 &&
            l->n_conns >= (uint64_t)l->max_connections) {
            close(fd);
            lsn_refuse_log(addr, "max_connections of the listener reached");
            continue;
        }
        if (l->tls && g.p_tls.used >= g.p_tls.cap) {
            close(fd);
            g.tls_refused++;
            lsn_refuse_log(addr, "max_tls_connections reached");
            continue;
        }
        ci = pool_take(&g.p_conn);
        if (ci == NIL) {
            close(fd);
            lsn_refuse_log(addr, "max_connections reached");
            continue;
        }
        if (fcntl(fd, F_SETFL, O_NONBLOCK) < 0 ||
            fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
            close(fd);
            pool_give(&g.p_conn, ci);
            continue;
        }
        if (!l->is_unix)
            (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        c = &g.conns[ci];
        memset(c, 0, sizeof *c);
        c->fd = fd;
        c->state = CONN_NEW;
        c->lsn = ls->lsn;
        c->sess = c->will = c->resend = c->hot_pos = c->tls = NIL;
        c->deadline_ms = g.now + g.cfg.connect_timeout * 1000;
        memcpy(c->addr, addr, sizeof addr);
        if (l->proxy) {
            c->state = CONN_PROXY;                            /* R14 */
            c->deadline_ms = g.now + l->proxy_timeout * 1000; /* R20 */
        }
        if (l->tls) c->state = CONN_TLS;
        g.pfd[g.n_ls + ci].fd = fd;
        g.pfd[g.n_ls + ci].events = POLLIN;
        g.pfd[g.n_ls + ci].revents = 0;
        if (ci + 1 > g.conn_hwm) {
            g.conn_hwm = ci + 1;
            g.n_pfd = g.n_ls + g.conn_hwm;
        }
        l->n_conns++;
        g.conns_total++;
        conn_touch(c);
        if (l->proxy) /* M5: the line comes with the header (R51) */
            log_at(LOG_T_DEBUG,
                   "Connection from %s on port %u: waiting for "
                   "the PROXY header.",
                   addr, l->port);
        else if (g.cfg.connection_messages)
            log_at(LOG_T_NOTICE, "New connection from %s on port %u.", addr,
                   l->port);
        if (l->tls && tls_open(c)) {
            log_at(LOG_T_WARN,
                   "TLS: no memory for a session with %s; connection closed.",
                   addr);
            conn_close(c, CF_QUIET);
        }
    }
}

/* Closes connections past a deadline: CONNECT not in time, or no packet
 * for 1.5 x keepalive. Also drops expired offline sessions. */
static void
loop_expire(void)
{
    uint32_t i;

    for (i = 0; i < g.conn_hwm; i++) {
        struct conn *c = &g.conns[i];
        int n;
        const char *id;
        if (c->state == CONN_FREE || c->state == CONN_CLOSING) continue;
        if (!c->deadline_ms || g.now < c->deadline_ms) continue;
        if (c->flags & CF_THROTTLED) continue; /* we stopped reading it */
        id = conn_id(c, &n);
        if (c->state == CONN_PROXY) { /* R20 */
            g.pp_timeout++;
            log_at(LOG_T_NOTICE,
                   "PROXY: header from %s on port %u not received within "
                   "%lld s",
                   c->addr, g.cfg.lsn[c->lsn].port,
                   (long long)g.cfg.lsn[c->lsn].proxy_timeout);
        } else if (c->state == CONN_TLS) {
            int64_t k = log_limit_src(c->addr);
            g.tls_failed++;
            if (k >= 0)
                log_at(LOG_T_NOTICE,
                       "TLS: handshake with %s on port %u not finished "
                       "within %lld s (connect_timeout)%s",
                       c->addr, g.cfg.lsn[c->lsn].port,
                       (long long)g.cfg.connect_timeout, log_suppressed(k));
        } else if (g.cfg.connection_messages) {
            if (c->state == CONN_NEW)
                log_at(LOG_T_NOTICE,
                       "Client <unknown> from %s disconnected: no CONNECT in "
                       "%lld s.",
                       c->addr, (long long)g.cfg.connect_timeout);
            else
                log_at(LOG_T_NOTICE,
                       "Client " ID_FMT " has exceeded timeout, "
                       "disconnecting.",
                       n, id);
        }
        if (c->state == CONN_ONLINE)
            conn_disconnect(c, MQX_RC_KEEPALIVE_TIMEOUT, "keep alive timeout");
        else
            conn_close(c, CF_WILL | CF_QUIET);
    }
    for (i = 0; i < g.p_sess.cap; i++) {
        struct sess *s = &g.sess[i];
        if (!pool_used(&g.p_sess, i) || s->conn != NIL) continue;
        if (s->will != NIL &&
            (g.now >= s->will_ms || (s->expire_ms && g.now >= s->expire_ms))) {
            uint32_t w = s->will; /* [MQTT-3.1.3-9] delay over, or the
                                     session ends first */
            s->will = NIL;
            will_publish(w);
            msg_unref(w);
        }
        if (s->expire_ms && g.now >= s->expire_ms) {
            int n;
            const char *id = sess_id(i, &n);
            log_at(LOG_T_NOTICE, "Expiring client " ID_FMT " due to timeout%s.",
                   n, id,
                   s->proto == 5 ? " (session expiry interval)"
                                 : " (persistent_client_expiration)");
            sess_free(i);
        }
    }
}

static void
loop_unthrottle(void)
{
    uint32_t i;

    if (!g.throttled || g.st.used > g.st.size / 4 * 3) return;
    g.throttled = 0;
    for (i = 0; i < g.conn_hwm; i++) {
        struct conn *c = &g.conns[i];
        if (!(c->flags & CF_THROTTLED)) continue;
        c->flags &= (uint8_t)~CF_THROTTLED;
        g.pfd[g.n_ls + i].events |= POLLIN;
        if (c->rx_len && c->state != CONN_CLOSING) loop_tail(c);
        if (c->tls != NIL && c->state != CONN_CLOSING && tls_pending(c)) {
            c->flags |= CF_TLSMORE;
            g.tls_more = 1;
            conn_touch(c);
        }
    }
}

static void sys_pub(const char *topic, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
sys_pub(const char *topic, const char *fmt, ...)
{
    char v[64];
    va_list ap;
    int k;

    va_start(ap, fmt);
    k = vsnprintf(v, sizeof v, fmt, ap);
    va_end(ap);
    if (k < 0) return;
    route_new(topic, (const uint8_t *)v, strlen(v), 0, 1);
}

/* $SYS/broker/...: Mosquitto's topics, retained, every sys_interval. */
static void
sys_publish(void)
{
    unsigned long long up = (unsigned long long)(g.now - g.start_ms) / 1000;

    sys_pub("$SYS/broker/version", "mqttpx version %s", MQX_VERSION);
    sys_pub("$SYS/broker/uptime", "%llu seconds", up);
    sys_pub("$SYS/broker/clients/connected", "%u", g.n_online);
    sys_pub("$SYS/broker/clients/active", "%u", g.n_online);
    sys_pub("$SYS/broker/clients/total", "%u", g.p_sess.used);
    sys_pub("$SYS/broker/clients/disconnected", "%u",
            g.p_sess.used - g.n_online);
    sys_pub("$SYS/broker/clients/maximum", "%u", g.peak_online);
    sys_pub("$SYS/broker/messages/received", "%llu",
            (unsigned long long)g.msgs_rx);
    sys_pub("$SYS/broker/messages/sent", "%llu", (unsigned long long)g.msgs_tx);
    sys_pub("$SYS/broker/publish/messages/dropped", "%llu",
            (unsigned long long)g.pub_dropped);
    sys_pub("$SYS/broker/bytes/received", "%llu",
            (unsigned long long)g.bytes_rx);
    sys_pub("$SYS/broker/bytes/sent", "%llu", (unsigned long long)g.bytes_tx);
    sys_pub("$SYS/broker/retained messages/count", "%u", g.n_retained);
    sys_pub("$SYS/broker/subscriptions/count", "%u", g.n_subs);
    sys_pub("$SYS/broker/connections/refused", "%llu",
            (unsigned long long)g.conns_refused);
    sys_pub("$SYS/broker/proxy/headers/accepted", "%llu",
            (unsigned long long)g.pp_accepted);
    sys_pub("$SYS/broker/proxy/headers/rejected", "%llu",
            (unsigned long long)g.pp_rejected);
    sys_pub("$SYS/broker/proxy/headers/timeout", "%llu",
            (unsigned long long)g.pp_timeout);
    sys_pub("$SYS/broker/proxy/local", "%llu", (unsigned long long)g.pp_local);
    sys_pub("$SYS/broker/proxy/untrusted", "%llu",
            (unsigned long long)g.pp_untrusted);
    sys_pub("$SYS/broker/tls/connections", "%u", g.p_tls.used);
    sys_pub("$SYS/broker/tls/max", "%u", g.p_tls.cap);
    sys_pub("$SYS/broker/tls/handshake_failures", "%llu",
            (unsigned long long)g.tls_failed);
    sys_pub("$SYS/broker/tls/refused", "%llu",
            (unsigned long long)g.tls_refused);
    sys_pub("$SYS/broker/persistence/saves", "%llu",
            (unsigned long long)g.store_saves);
    sys_pub("$SYS/broker/persistence/failures", "%llu",
            (unsigned long long)g.store_fails);
    sys_pub("$SYS/broker/persistence/bytes", "%llu",
            (unsigned long long)g.store_bytes);
    sys_pub("$SYS/broker/memory/budget", "%zu", g.arena_size);
    sys_pub("$SYS/broker/memory/store/used", "%zu", g.st.used);
    sys_pub("$SYS/broker/memory/store/size", "%zu", g.st.size);
    sys_pub("$SYS/broker/heap/current", "%zu", g.arena_off);
}

/* SIGHUP: reads the configuration again into a temporary (freed after),
 * applies what can change in a running broker, and says in the log what
 * needs a restart. A bad file keeps the running configuration. */
static __attribute__((noinline)) void
loop_reload(void)
{
    struct cfg *n = malloc(sizeof *n);
    size_t i;
    uint32_t li;
    int restart = 0;

    if (!n) {
        log_at(LOG_T_ERR, "Reload: out of memory; configuration unchanged.");
        return;
    }
    log_at(LOG_T_NOTICE, "Reloading config.");
    if (cfg_load(n, &g.src)) {
        log_at(LOG_T_ERR,
               "Reload failed: %s; keeping the running configuration.", n->err);
        free(n);
        return;
    }
    for (i = 0; i < CFG_N_KEYS; i++) {
        const struct cfg_key *k = &cfg_keys[i];
        char *was = (char *)&g.cfg + k->off, *now = (char *)n + k->off;
        if (k->type == CT_SPECIAL) continue;
        if (k->type == CT_STR ? strcmp(was, now) == 0
                              : memcmp(was, now, sizeof(int64_t)) == 0)
            continue;
        if (cfg_restart_only(k->name)) {
            log_at(LOG_T_WARN, "Reload: %s changed, but it needs a restart.",
                   k->name);
            restart = 1;
            continue;
        }
        if (k->type == CT_STR) {
            str_set(was, k->len, now);
            log_at(LOG_T_NOTICE, "Reload: %s %s", k->name, now);
        } else {
            int64_t v;
            memcpy(was, now, sizeof v);
            memcpy(&v, now, sizeof v);
            log_at(LOG_T_NOTICE, "Reload: %s %lld", k->name, (long long)v);
        }
    }
    if (n->per_listener_settings == g.cfg.per_listener_settings &&
        n->n_lsn == g.cfg.n_lsn) {
        char err[512];
        if (n->auth.allow_anonymous != g.cfg.auth.allow_anonymous)
            log_at(LOG_T_NOTICE, "Reload: allow_anonymous %lld",
                   (long long)n->auth.allow_anonymous);
        g.cfg.auth = n->auth;
        for (li = 0; li < n->n_lsn; li++)
            g.cfg.lsn[li].auth = n->lsn[li].auth;
        if (auth_load_all(err, sizeof err))
            log_at(LOG_T_ERR,
                   "Reload: %s; keeping the previous password and ACL rules.",
                   err);
    } else {
        restart = 1;
    }
    if (n->max_connections != g.cfg.max_connections) {
        log_at(LOG_T_WARN, "Reload: max_connections (the connection pool) "
                           "changed, but it needs a restart.");
        restart = 1;
    }
    if (n->n_lsn != g.cfg.n_lsn) {
        restart = 1;
    } else {
        for (li = 0; li < n->n_lsn; li++)
            if (!cfg_listener_same(&n->lsn[li], &g.cfg.lsn[li])) restart = 1;
    }
    if (restart)
        log_at(LOG_T_WARN, "Reload: listeners and pool sizes stay as they "
                           "were started; restart mqttpx to change them.");
    if (n->log_dest != g.cfg.log_dest || n->log_type != g.cfg.log_type ||
        strcmp(n->log_file, g.cfg.log_file) != 0) {
        g.cfg.log_dest = n->log_dest;
        g.cfg.log_type = n->log_type;
        str_set(g.cfg.log_file, sizeof g.cfg.log_file, n->log_file);
        if (log_open()) {
            g.cfg.log_dest = LOG_D_STDERR;
            log_sys(LOG_T_ERR, "Reload: log_dest file %s", g.cfg.log_file);
        }
    }
    free(n);
}

static void
loop_signal(int sig)
{
    int e = errno;
    char b = 0;

    if (sig == SIGHUP)
        g.sig_hup = 1;
    else if (sig == SIGUSR1)
        g.sig_save = 1; /* Mosquitto: write the database now */
    else
        g.sig_quit = 1;
    (void)write(g.wake[1], &b, 1);
    errno = e;
}

static int
loop_timeout(void)
{
    int64_t t = g.next_scan_ms - g.now;

    if (g.cfg.sys_interval && g.next_sys_ms - g.now < t)
        t = g.next_sys_ms - g.now;
    if (g.n_dirty || g.tls_more) t = 0;
    if (t < 0) t = 0;
    if (t > 1000) t = 1000;
    return (int)t;
}

/* The wake pipe sits after the listeners: pfd[n_ls - 1] is the pipe. */
/* One connection's poll events. */
static void
loop_events(struct conn *c, short re)
{
    if (c->state == CONN_CLOSING || c->state == CONN_FREE) return;
    if (c->state == CONN_TLS) {
        loop_tls(c);
        return;
    }
    if (re & POLLOUT) {
        if (conn_write(c)) {
            conn_close(c, CF_WILL | CF_QUIET);
            return;
        }
        if (!(c->flags & CF_POLLOUT)) conn_dirty(c);
    }
    if (re & (POLLIN | POLLHUP | POLLERR)) loop_read(c);
}

static void
loop_listeners(const struct pollfd *pfd)
{
    uint32_t i;

    for (i = 0; i < g.n_ls; i++) {
        if (!pfd[i].revents) continue;
        if (g.ls[i].fd == g.wake[0]) {
            char b[64];
            while (read(g.wake[0], b, sizeof b) > 0)
                ;
        } else {
            lsn_accept(&g.ls[i]);
        }
    }
}

/* Reads what mbedTLS still holds after a full read buffer (CF_TLSMORE):
 * once per iteration, so that one busy client does not starve others. */
static void
loop_tls_more(void)
{
    uint32_t i;

    g.tls_more = 0;
    for (i = 0; i < g.n_hot; i++) {
        struct conn *c = &g.conns[g.hot[i]];
        if (!(c->flags & CF_TLSMORE)) continue;
        c->flags &= (uint8_t)~CF_TLSMORE;
        if (c->state != CONN_CLOSING && !(c->flags & CF_THROTTLED))
            loop_read(c);
    }
}

/* Quiet connections leave the hot set (those waiting to write stay). */
static void
loop_hot_prune(void)
{
    uint32_t i = 0;

    while (i < g.n_hot) {
        struct conn *c = &g.conns[g.hot[i]];
        if (!(c->flags & CF_POLLOUT) &&
            (uint32_t)g.now - c->active_ms > MQX_HOT_MS)
            conn_unhot(c); /* the last entry moves to i */
        else
            i++;
    }
}

/* The compact array of a hot poll: listeners, then the hot connections in
 * g.hot's order. Returns its length. */
static uint32_t
loop_hot_set(void)
{
    uint32_t i, n = g.n_ls;

    memcpy(g.hpfd, g.pfd, g.n_ls * sizeof *g.pfd);
    for (i = 0; i < g.n_hot; i++) {
        g.hpfd[n] = g.pfd[g.n_ls + g.hot[i]];
        g.hpfd[n++].revents = 0;
    }
    return n;
}

/* Each wake-up polls either every slot (at least every MQX_FULL_POLL_MS,
 * and when most connections are active), or only the listeners and the
 * connections active in the last MQX_HOT_MS: the kernel's poll() costs
 * per descriptor, and thousands of idle clients must not slow the busy
 * ones. An idle client's first packet waits at most MQX_FULL_POLL_MS. */
static __attribute__((noinline)) void
loop_run(void)
{
    while (!g.sig_quit) {
        uint32_t i, nh = 0;
        int full, timeout = loop_timeout(), n;

        if (g.now >= g.next_prune_ms) {
            loop_hot_prune();
            g.next_prune_ms = g.now + MQX_FULL_POLL_MS;
        }
        full = g.now >= g.next_full_ms || g.n_hot * 2 >= g.conn_hwm;

        if (full) {
            n = poll(g.pfd, g.n_pfd, timeout);
        } else {
            int64_t left = g.next_full_ms - g.now;
            nh = loop_hot_set();
            n = poll(g.hpfd, nh, timeout < left ? timeout : (int)left);
        }
        if (n < 0 && errno != EINTR) {
            log_sys(LOG_T_ERR, "poll");
            break;
        }
        g.now = now_ms();
        if (full) /* a full poll costs per slot: space them out with size */
            g.next_full_ms = g.now + MQX_FULL_POLL_MS + g.n_pfd / 200;
        if (g.sig_hup) {
            g.sig_hup = 0;
            loop_reload();
        }
        if (g.sig_save) {
            g.sig_save = 0;
            if (g.cfg.persistence) store_save();
        }
        if (n > 0 && full) {
            loop_listeners(g.pfd);
            for (i = 0; i < g.conn_hwm; i++) {
                struct pollfd *pf = &g.pfd[g.n_ls + i];
                short re = pf->revents;
                if (!re || pf->fd < 0) continue;
                pf->revents = 0;
                loop_events(&g.conns[i], re);
            }
        } else if (n > 0) {
            loop_listeners(g.hpfd);
            for (i = g.n_ls; i < nh; i++) {
                short re = g.hpfd[i].revents;
                if (!re) continue;
                /* the slot of this fd: hot entries keep their order */
                loop_events(&g.conns[g.hot[i - g.n_ls]], re);
            }
        }
        if (g.tls_more) loop_tls_more();
        if (g.now >= g.next_scan_ms) {
            loop_expire();
            g.next_scan_ms = g.now + MQX_SCAN_MS;
        }
        if (g.cfg.sys_interval && g.now >= g.next_sys_ms) {
            sys_publish();
            g.next_sys_ms = g.now + g.cfg.sys_interval * 1000;
        }
        store_tick();
        conn_flush_all();
        loop_unthrottle();
    }
}

/* Opens the sockets of one listener; dies on failure (start-up only). */
static void
lsn_open(uint8_t li)
{
    struct listener *l = &g.cfg.lsn[li];
    struct addrinfo hints, *res, *ai;
    char port[8];
    int rc, opened = 0;

    if (l->is_unix) {
        struct sockaddr_un sun;
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (fd < 0) die("socket: %s", strerror(errno));
        memset(&sun, 0, sizeof sun);
        sun.sun_family = AF_UNIX;
        memcpy(sun.sun_path, l->bind, strlen(l->bind));
        (void)unlink(l->bind);
        if (bind(fd, (struct sockaddr *)&sun, sizeof sun) < 0 ||
            listen(fd, 128) < 0)
            die("%s:%d: listener %s: %s", l->file, l->line, l->bind,
                strerror(errno));
        if (g.n_ls >= MQX_MAX_LSOCKS) die("too many listening sockets");
        (void)fcntl(fd, F_SETFL, O_NONBLOCK);
        (void)fcntl(fd, F_SETFD, FD_CLOEXEC);
        g.ls[g.n_ls].fd = fd;
        g.ls[g.n_ls++].lsn = li;
        log_at(LOG_T_NOTICE, "Opening unix listen socket on %s.", l->bind);
        if (l->n_trusted) /* R11 */
            log_at(LOG_T_WARN,
                   "listener %s: proxy_protocol_trusted_sources does not "
                   "apply to unix sockets; the socket's permissions decide "
                   "who may connect",
                   l->bind);
        return;
    }
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    snprintf(port, sizeof port, "%u", l->port);
    rc = getaddrinfo(l->bind[0] ? l->bind : NULL, port, &hints, &res);
    if (rc)
        die("%s:%d: listener %u %s: %s", l->file, l->line, l->port, l->bind,
            gai_strerror(rc));
    for (ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype, 0), one = 1;
        if (fd < 0) {
            if (ai->ai_family == AF_INET6 && !l->bind[0]) continue;
            die("socket: %s", strerror(errno));
        }
        (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (ai->ai_family == AF_INET6)
            (void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 128) < 0) {
            if (ai->ai_family == AF_INET6 && !l->bind[0]) {
                close(fd); /* no IPv6 here: IPv4 alone will do */
                continue;
            }
            die("%s:%d: listener %u %s: %s", l->file, l->line, l->port, l->bind,
                strerror(errno));
        }
        if (g.n_ls >= MQX_MAX_LSOCKS) die("too many listening sockets");
        (void)fcntl(fd, F_SETFL, O_NONBLOCK);
        (void)fcntl(fd, F_SETFD, FD_CLOEXEC);
        g.ls[g.n_ls].fd = fd;
        g.ls[g.n_ls++].lsn = li;
        opened++;
        log_at(LOG_T_NOTICE, "Opening %s listen socket on port %u.",
               ai->ai_family == AF_INET6 ? "ipv6" : "ipv4", l->port);
    }
    freeaddrinfo(res);
    if (l->proxy && !l->n_trusted) /* R6 */
        log_at(LOG_T_WARN,
               "listener %u: PROXY protocol enabled without "
               "proxy_protocol_trusted_sources; any host that can reach this "
               "port can forge client addresses and TLS identity",
               l->port);
    for (uint32_t t = 0; t < l->n_trusted; t++)
        if (l->trusted[t].loose) /* as nginx: say so, use the network */
            log_at(LOG_T_WARN,
                   "listener %u: proxy_protocol_trusted_sources entry %u has "
                   "host bits set; they are ignored",
                   l->port, t + 1);
    if (l->proxy && l->proxy_timeout < 3) /* R7 */
        log_at(LOG_T_WARN,
               "listener %u: proxy_protocol_timeout %lld s is below 3 s, "
               "one TCP retransmission may not fit",
               l->port, (long long)l->proxy_timeout);
    if (!opened)
        die("%s:%d: listener %u: no address to bind", l->file, l->line,
            l->port);
}

/* ==== [16] main(): options, config, privileges, run ==== */

/* Sizes every pool from the config; with `take` set, allocates the arena
 * and lays the pools out. Returns the budget in bytes. */
static size_t
arena_plan(int take, char *line, size_t cap)
{
    const struct cfg *c = &g.cfg;
    uint64_t conns = (uint64_t)c->max_connections;
    uint64_t sess = (uint64_t)c->max_sessions;
    uint64_t subs = (uint64_t)c->max_subscriptions;
    uint64_t nodes = (uint64_t)c->max_topic_nodes;
    uint64_t qents = (uint64_t)c->max_queued_total;
    uint64_t msgs = qents + (uint64_t)c->max_retained_messages + conns + 64;
    uint64_t store = (uint64_t)c->message_store_bytes, top = 65536, ht = 1,
             sht = 1;
    uint64_t per_conn = sizeof(struct conn) + sizeof(struct pollfd) + 8;
    uint64_t tls = (uint64_t)c->max_tls_connections;
    size_t total = 0;
    int k;

    while (top < (uint64_t)c->max_packet_size + 64)
        top <<= 1;
    store = (store + top - 1) / top * top;
    if (msgs > store / MQX_STORE_MIN) msgs = store / MQX_STORE_MIN;
    while (ht < nodes * 2)
        ht <<= 1;
    while (sht < sess)
        sht <<= 1;
#define PLAN(n, sz) (total += align_up((size_t)((n) * (sz)), 16))
    PLAN(conns, sizeof(struct conn) + 8);
    PLAN(MQX_MAX_LSOCKS + conns, sizeof(struct pollfd));
    PLAN(conns, sizeof(uint32_t));                       /* dirty list */
    PLAN(conns, sizeof(uint32_t));                       /* hot list */
    PLAN(MQX_MAX_LSOCKS + conns, sizeof(struct pollfd)); /* hot poll */
    PLAN(sess, sizeof(struct sess) + 8);
    PLAN(sess, sizeof(uint32_t)); /* match list */
    PLAN(subs, sizeof(uint32_t)); /* shared picks */
    PLAN(subs, sizeof(struct sub) + 8);
    PLAN(nodes, sizeof(struct node) + 8);
    PLAN(msgs, sizeof(struct msg) + 8);
    PLAN(qents, sizeof(struct qent) + 8);
    PLAN(ht, sizeof(uint32_t));
    PLAN(sht, sizeof(uint32_t));
    PLAN(1, MQX_SCRATCH);
    PLAN((msgs + 7) / 8, 2); /* snapshot and journal marks */
    PLAN(1, MQX_SCRATCH);    /* journal buffer */
    PLAN(store / MQX_STORE_MIN, 1);
    PLAN(store, 1);
    PLAN(tls, sizeof(struct tls_slot) + 8);
    total += (size_t)16 * 16; /* alignment slack of the pools */
#undef PLAN
    if (line) {
        k = snprintf(
            line, cap,
            "memory: %.1f MiB (%llu connections x %llu B, %llu sessions "
            "x %zu B, %llu subscriptions x %zu B, %llu topic nodes x "
            "%zu B, %llu messages x %zu B, %llu deliveries x %zu B, "
            "message store %.1f MiB)",
            (double)(total + tls * tls_session_bytes()) / 1048576,
            (unsigned long long)conns, (unsigned long long)per_conn,
            (unsigned long long)sess, sizeof(struct sess) + 12,
            (unsigned long long)subs, sizeof(struct sub) + 8,
            (unsigned long long)nodes, sizeof(struct node) + 16,
            (unsigned long long)msgs, sizeof(struct msg) + 8,
            (unsigned long long)qents, sizeof(struct qent) + 8,
            (double)store / 1048576);
        if (tls && k > 0 && (size_t)k < cap)
            snprintf(line + k - 1, cap - (size_t)k + 1,
                     ", %llu TLS sessions x %zu B in %s)",
                     (unsigned long long)tls, tls_session_bytes(), tls_lib());
    }
    if (!take) /* with what mbedTLS allocates for the sessions */
        return total +
               (size_t)(tls * (tls_session_bytes() - sizeof(struct tls_slot)));
    g.arena = calloc(1, total);
    if (!g.arena) die("cannot allocate %zu bytes", total);
    g.arena_size = total;
    g.conns = arena_take((size_t)conns * sizeof(struct conn));
    pool_init(&g.p_conn, "connections", g.conns, sizeof(struct conn),
              (uint32_t)conns);
    g.pfd =
        arena_take((size_t)(MQX_MAX_LSOCKS + conns) * sizeof(struct pollfd));
    g.dirty = arena_take((size_t)conns * sizeof(uint32_t));
    g.hot = arena_take((size_t)conns * sizeof(uint32_t));
    g.hpfd =
        arena_take((size_t)(MQX_MAX_LSOCKS + conns) * sizeof(struct pollfd));
    g.sess = arena_take((size_t)sess * sizeof(struct sess));
    pool_init(&g.p_sess, "sessions", g.sess, sizeof(struct sess),
              (uint32_t)sess);
    g.match = arena_take((size_t)sess * sizeof(uint32_t));
    g.spick = arena_take((size_t)subs * sizeof(uint32_t));
    g.subs = arena_take((size_t)subs * sizeof(struct sub));
    pool_init(&g.p_sub, "subscriptions", g.subs, sizeof(struct sub),
              (uint32_t)subs);
    g.nodes = arena_take((size_t)nodes * sizeof(struct node));
    pool_init(&g.p_node, "topic nodes", g.nodes, sizeof(struct node),
              (uint32_t)nodes);
    g.msgs = arena_take((size_t)msgs * sizeof(struct msg));
    pool_init(&g.p_msg, "messages", g.msgs, sizeof(struct msg), (uint32_t)msgs);
    g.qents = arena_take((size_t)qents * sizeof(struct qent));
    pool_init(&g.p_qent, "deliveries", g.qents, sizeof(struct qent),
              (uint32_t)qents);
    g.node_ht = arena_take((size_t)ht * sizeof(uint32_t));
    g.node_ht_mask = (uint32_t)ht - 1;
    memset(g.node_ht, 0xff, (size_t)ht * sizeof(uint32_t));
    g.sess_ht = arena_take((size_t)sht * sizeof(uint32_t));
    g.sess_ht_mask = (uint32_t)sht - 1;
    memset(g.sess_ht, 0xff, (size_t)sht * sizeof(uint32_t));
    g.tls = arena_take((size_t)tls * sizeof(struct tls_slot));
    pool_init(&g.p_tls, "TLS sessions", g.tls, sizeof(struct tls_slot),
              (uint32_t)tls);
    g.scratch = arena_take(MQX_SCRATCH);
    g.pmark = arena_take((size_t)(msgs + 7) / 8);
    g.jmark = arena_take((size_t)(msgs + 7) / 8);
    g.jbuf = arena_take(MQX_SCRATCH);
    {
        uint8_t *base;
        /* the tag array is taken inside st_init, the region here */
        base = g.arena + g.arena_off +
               align_up((size_t)(store / MQX_STORE_MIN), 16);
        base = (uint8_t *)align_up((size_t)base, 64);
        st_init(base, (size_t)store, (size_t)top);
        g.arena_off = (size_t)(base - g.arena) + (size_t)store;
        if (g.arena_off > g.arena_size) die("arena plan is short");
    }
    return total;
}

/* The root of the topic tree is node 0 and never pruned. */
static void
tree_init(void)
{
    uint32_t r = pool_take(&g.p_node);
    struct node *x = &g.nodes[r];

    assert(r == 0);
    memset(x, 0, sizeof *x);
    x->parent = x->child = x->sibling = x->prev_sibling = NIL;
    x->subs = x->retained = NIL;
    x->name = NIL;
}

static void
usage(void)
{
    printf("mqttpx version %s: an MQTT 3.1/3.1.1 broker\n\n"
           "Usage: mqttpx [-c config_file] [-d] [-h] [-p port] [-t] [-v]\n\n"
           " -c : read the config from a file (Mosquitto's format).\n"
           " -d : run in the background.\n"
           " -h : show this help.\n"
           " -p : listen on this port (without -c: on 127.0.0.1 only).\n"
           " -t : test the config, print the memory budget, exit.\n"
           " -v : verbose: log_type all.\n",
           MQX_VERSION);
}

static void
drop_privileges(void)
{
    struct passwd *pw;

    if (geteuid() != 0 || strcmp(g.cfg.user, "root") == 0) return;
    pw = getpwnam(g.cfg.user);
    if (!pw) {
        log_at(LOG_T_WARN, "user '%s' does not exist: staying root.",
               g.cfg.user);
        return;
    }
    if (initgroups(pw->pw_name, pw->pw_gid) || setgid(pw->pw_gid) ||
        setuid(pw->pw_uid))
        die("cannot drop privileges to '%s': %s", g.cfg.user, strerror(errno));
}

/* `mqttpx passwd`: mosquitto_passwd's flags, to manage a password file on
 * a router without Mosquitto. A tool mode: it allocates freely. */

static void
passwd_usage(void)
{
    fprintf(stderr,
            "Usage: mqttpx passwd [-H sha512 | -H sha512-pbkdf2] [-c | -D] "
            "passwordfile username\n"
            "       mqttpx passwd [-H sha512 | -H sha512-pbkdf2] [-c] -b "
            "passwordfile username password\n"
            "       mqttpx passwd -U passwordfile\n"
            " -b : batch mode: the password on the command line.\n"
            " -c : create a new password file (overwrites it).\n"
            " -D : delete the user.\n"
            " -H : hash: sha512-pbkdf2 (default, $7$, 101 iterations as "
            "Mosquitto) or sha512 ($6$).\n"
            " -U : hash the plain user:password lines of a file.\n");
}

/* "user:$7$101$SALT$HASH" into out; 0 or -1. */
static int
passwd_line(char *out, size_t cap, const char *user, size_t ulen,
            const char *pw, int kind)
{
    uint8_t salt[12], h[64];
    char s64[24], h64[96];

    if (hash_random(salt, sizeof salt) ||
        hash_password((uint8_t)kind, (const uint8_t *)pw, strlen(pw), salt,
                      sizeof salt, 101, h))
        return -1;
    mqx_b64_encode(salt, sizeof salt, s64, sizeof s64);
    mqx_b64_encode(h, sizeof h, h64, sizeof h64);
    if (kind == 7)
        snprintf(out, cap, "%.*s:$7$101$%s$%s\n", (int)ulen, user, s64, h64);
    else
        snprintf(out, cap, "%.*s:$6$%s$%s\n", (int)ulen, user, s64, h64);
    return 0;
}

/* Reads a password: from the terminal without echo, twice; else one line
 * of standard input. */
static int
passwd_prompt(char *buf, size_t cap)
{
    char again[256];
    FILE *in = stdin;
    int tty = isatty(0);
    size_t n;

    struct termios old, quiet;
    int echo_off = 0;

    if (tty && tcgetattr(0, &old) == 0) {
        quiet = old;
        quiet.c_lflag &= (tcflag_t)~ECHO;
        echo_off = tcsetattr(0, TCSAFLUSH, &quiet) == 0;
    }
    if (tty) fprintf(stderr, "Password: ");
    if (!fgets(buf, (int)cap, in)) buf[0] = '\0', tty = -1;
    n = strcspn(buf, "\r\n");
    buf[n] = '\0';
    if (tty == 1) {
        fprintf(stderr, "\nReenter password: ");
        if (!fgets(again, sizeof again, in)) again[0] = '\1';
        again[strcspn(again, "\r\n")] = '\0';
        fprintf(stderr, "\n");
    }
    if (echo_off) (void)tcsetattr(0, TCSAFLUSH, &old);
    if (tty < 0) return -1;
    if (!tty) return 0;
    if (strcmp(buf, again) != 0) {
        fprintf(stderr, "Error: Passwords do not match.\n");
        return -1;
    }
    return 0;
}

static __attribute__((noinline)) int
passwd_main(int argc, char **argv)
{
    int i, create = 0, del = 0, batch = 0, update = 0, kind = 7, found = 0;
    const char *file, *user = NULL, *pw = NULL;
    char pwbuf[256], line[512], tmp[MQX_PATH_MAX + 8];
    char *text = NULL, *s;
    FILE *out;

    for (i = 1; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "-c") == 0)
            create = 1;
        else if (strcmp(argv[i], "-D") == 0)
            del = 1;
        else if (strcmp(argv[i], "-b") == 0)
            batch = 1;
        else if (strcmp(argv[i], "-U") == 0)
            update = 1;
        else if (strcmp(argv[i], "-H") == 0 && i + 1 < argc) {
            i++;
            if (strcmp(argv[i], "sha512") == 0)
                kind = 6;
            else if (strcmp(argv[i], "sha512-pbkdf2") == 0)
                kind = 7;
            else {
                fprintf(stderr, "Error: Unknown hash type '%s'.\n", argv[i]);
                return 1;
            }
        } else {
            passwd_usage();
            return 1;
        }
    }
    if (i >= argc || (create && del) || (update && (create || del || batch))) {
        passwd_usage();
        return 1;
    }
    file = argv[i++];
    if (!update) {
        if (i >= argc) {
            passwd_usage();
            return 1;
        }
        user = argv[i++];
        if (strchr(user, ':') ||
            !mqx_utf8_valid((const uint8_t *)user, strlen(user))) {
            fprintf(stderr, "Error: Invalid username.\n");
            return 1;
        }
        if (batch) {
            if (i >= argc) {
                passwd_usage();
                return 1;
            }
            pw = argv[i++];
        } else if (!del) {
            if (passwd_prompt(pwbuf, sizeof pwbuf)) return 1;
            pw = pwbuf;
        }
    }
    if (i != argc || strlen(file) >= MQX_PATH_MAX) {
        passwd_usage();
        return 1;
    }
    if (!create) {
        char err[512];
        text = auth_read(file, err, sizeof err);
        if (!text) {
            fprintf(stderr, "Error: %s\n", err);
            return 1;
        }
    }
    snprintf(tmp, sizeof tmp, "%s.tmp", file);
    out = fopen(tmp, "w");
    if (!out) {
        fprintf(stderr, "Error: %s: %s\n", tmp, strerror(errno));
        free(text);
        return 1;
    }
    (void)fchmod(fileno(out), 0600);
    for (s = text; s && *s;) { /* keep, replace, drop or hash each line */
        char *nl = strchr(s, '\n');
        size_t n = nl ? (size_t)(nl - s) : strlen(s);
        char *colon = memchr(s, ':', n);
        size_t ulen = colon ? (size_t)(colon - s) : n;
        if (update && colon && colon[1] != '$' && s[0] != '#') {
            char plain[256];
            size_t pl = n - ulen - 1;
            if (pl && s[n - 1] == '\r') pl--;
            if (pl >= sizeof plain || passwd_line(line, sizeof line, s, ulen,
                                                  (memcpy(plain, colon + 1, pl),
                                                   plain[pl] = '\0', plain),
                                                  kind)) {
                fprintf(stderr, "Error: cannot hash the password of %.*s.\n",
                        (int)ulen, s);
                fclose(out);
                free(text);
                return 1;
            }
            fputs(line, out);
        } else if (user && colon && ulen == strlen(user) &&
                   memcmp(s, user, ulen) == 0) {
            found = 1;
            if (!del &&
                passwd_line(line, sizeof line, user, ulen, pw, kind) == 0)
                fputs(line, out);
        } else if (n > 0) {
            fprintf(out, "%.*s\n", (int)n, s);
        }
        s = nl ? nl + 1 : NULL;
    }
    if (user && !del && !found) {
        if (passwd_line(line, sizeof line, user, strlen(user), pw, kind)) {
            fprintf(stderr, "Error: cannot hash the password.\n");
            fclose(out);
            free(text);
            return 1;
        }
        fputs(line, out);
    }
    free(text);
    if (del && !found) fprintf(stderr, "Warning: User %s not found.\n", user);
    if (fflush(out) || fsync(fileno(out)) || fclose(out) || rename(tmp, file)) {
        fprintf(stderr, "Error: %s: %s\n", file, strerror(errno));
        return 1;
    }
    return 0;
}

int
main(int argc, char **argv)
{
    char budget[512];
    int test = 0, daemonize = 0, i;
    uint32_t li;
    struct sigaction sa;

    if (argc > 1 && strcmp(argv[1], "passwd") == 0)
        return passwd_main(argc - 1, argv + 1);
    cfg_defaults(&g.cfg);
    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-c") == 0 && i + 1 < argc)
            g.src.path = argv[++i];
        else if (strcmp(argv[i], "-p") == 0 && i + 1 < argc &&
                 g.src.n_ports <
                     (int)(sizeof g.src.ports / sizeof g.src.ports[0]))
            g.src.ports[g.src.n_ports++] = argv[++i];
        else if (strcmp(argv[i], "-v") == 0 ||
                 strcmp(argv[i], "--verbose") == 0)
            g.src.verbose = 1;
        else if (strcmp(argv[i], "-d") == 0 || strcmp(argv[i], "--daemon") == 0)
            daemonize = 1;
        else if (strcmp(argv[i], "-t") == 0 ||
                 strcmp(argv[i], "--test-config") == 0)
            test = 1;
        else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage();
            return 0;
        } else {
            fprintf(stderr, "Error: unknown option '%s'.\n", argv[i]);
            usage();
            return 1;
        }
    }
    if (cfg_load(&g.cfg, &g.src)) die("%s", g.cfg.err);
    {
        char err[512];
        if (auth_load_all(err, sizeof err)) die("%s", err);
    }
    if (tls_load(&g.cfg)) die("%s", g.cfg.err);
    g.arena_size = arena_plan(0, budget, sizeof budget);
    if (g.cfg.memory_limit && g.arena_size > (uint64_t)g.cfg.memory_limit)
        die("memory budget %zu bytes exceeds memory_limit %lld", g.arena_size,
            (long long)g.cfg.memory_limit);
    if (test) {
        printf("%s\nconfiguration OK\n", budget);
        return 0;
    }
    g.log_fd = g.syslog_fd = -1;
    if (log_open())
        die("log_dest file %s: %s", g.cfg.log_file, strerror(errno));
    tzset();
    g.now = g.start_ms = now_ms();
    log_at(LOG_T_NOTICE, "mqttpx version %s starting", MQX_VERSION);
    arena_plan(1, budget, sizeof budget);
    tree_init();
    log_at(LOG_T_INFO, "%s", budget);
    if (g.cfg.persistence) store_load();
    if (g.cfg.persistence_journal) jr_open();
    for (li = 0; li < g.cfg.n_lsn; li++)
        lsn_open((uint8_t)li);
    if (pipe(g.wake) < 0) die("pipe: %s", strerror(errno));
    g.spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    (void)fcntl(g.wake[0], F_SETFL, O_NONBLOCK);
    (void)fcntl(g.wake[1], F_SETFL, O_NONBLOCK);
    g.ls[g.n_ls].fd = g.wake[0];
    g.ls[g.n_ls++].lsn = 0;
    for (li = 0; li < g.n_ls; li++) {
        g.pfd[li].fd = g.ls[li].fd;
        g.pfd[li].events = POLLIN;
    }
    for (li = 0; li < g.p_conn.cap; li++) {
        g.pfd[g.n_ls + li].fd = -1;
        g.conns[li].fd = -1;
    }
    g.n_pfd = g.n_ls;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = loop_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    drop_privileges();
    if (daemonize && daemon(0, 0) < 0) die("daemon: %s", strerror(errno));
    if (g.cfg.pid_file[0]) {
        FILE *f = fopen(g.cfg.pid_file, "w");
        if (!f) die("pid_file %s: %s", g.cfg.pid_file, strerror(errno));
        fprintf(f, "%ld\n", (long)getpid());
        fclose(f);
    }
    g.next_scan_ms = g.now + MQX_SCAN_MS;
    g.next_sys_ms = g.now;
    g.next_save_ms = g.now + g.cfg.autosave_interval * 1000;
    {
        char where[512];
        size_t off = 0;
        for (li = 0; li < g.cfg.n_lsn && off < sizeof where - 80; li++) {
            const struct listener *l = &g.cfg.lsn[li];
            int k =
                l->is_unix
                    ? snprintf(where + off, sizeof where - off, "%s%s",
                               li ? ", " : "", l->bind)
                    : snprintf(where + off, sizeof where - off, "%s%s%s%s:%u",
                               li ? ", " : "", strchr(l->bind, ':') ? "[" : "",
                               l->bind[0] ? l->bind : "*",
                               strchr(l->bind, ':') ? "]" : "", l->port);
            if (k > 0) off += (size_t)k;
        }
        where[off] = '\0';
        log_at(LOG_T_NOTICE, "mqttpx version %s running, listening on %s",
               MQX_VERSION, where);
    }
    loop_run();
    g.now = now_ms();
    for (li = 0; li < g.conn_hwm; li++) { /* [MQTT-3.14.2.1] 0x8B */
        struct conn *c = &g.conns[li];
        static const uint8_t bye[] = {MQX_DISCONNECT << 4, 1,
                                      MQX_RC_SHUTTING_DOWN};
        if (c->state == CONN_ONLINE && c->proto == 5 && !c->tx)
            (void)conn_send(c, bye, sizeof bye);
    }
    if (g.cfg.persistence) store_save(); /* a clean stop loses nothing */
    log_at(LOG_T_NOTICE, "mqttpx version %s terminating", MQX_VERSION);
    for (li = 0; li < g.cfg.n_lsn; li++)
        if (g.cfg.lsn[li].is_unix) (void)unlink(g.cfg.lsn[li].bind);
    if (g.cfg.pid_file[0]) (void)unlink(g.cfg.pid_file);
    return 0;
}
