/* mqttpx-bench: an MQTT 3.1.1 load generator for mqttpx and Mosquitto.
 *
 * libc only: raw non-blocking sockets in one poll() loop, its own tiny
 * encoder and decoder, TCP_NODELAY, and many packets per write(). Every
 * payload carries (publisher, sequence, CLOCK_MONOTONIC ns), so every
 * scenario counts lost, duplicated and out-of-order messages per stream.
 * With --pid it reads the broker's CPU (utime+stime, /proc/PID/stat) and
 * RSS (VmRSS, /proc/PID/status) exactly around the measured phase.
 *
 * Build: cc -O2 -std=c11 -Wall -Wextra -o tests/bench/mqttpx-bench \
 *            tests/bench/mqttpx-bench.c
 * Usage: mqttpx-bench SCENARIO [options]; prints one key=value line.
 *        Scenarios: fanin fanout pairs latency connect idle (see -h). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ==== Data model ==== */

#define RBUF_SIZE   (512 * 1024) /* one recv() at most; > 4 x max payload */
#define PAYLOAD_MIN 20           /* u32 publisher, u64 sequence, u64 ns */
#define PAYLOAD_MAX (64 * 1024)
#define NS          1000000000LL

enum sc { SC_FANIN, SC_FANOUT, SC_PAIRS, SC_LATENCY, SC_CONNECT, SC_IDLE };
static const char *const sc_names[] = {"fanin",   "fanout",  "pairs",
                                       "latency", "connect", "idle"};

enum st { ST_NEW, ST_TCP, ST_CONNACK, ST_SUBACK, ST_READY, ST_DONE, ST_DEAD };
enum role { R_PUB = 1, R_SUB = 2, R_IDLE = 4, R_PROBE = 8 };

struct trk {           /* one stream: what one subscriber got from one pub */
    uint8_t *seen;     /* bitmap over sequence numbers [0, quota) */
    uint64_t quota;    /* messages the publisher will send */
    uint64_t got;      /* distinct sequence numbers received */
    uint64_t hi;       /* highest sequence received + 1 */
    uint64_t dup, ooo; /* duplicates; arrivals below hi */
};

struct conn {
    int fd;
    int state;      /* enum st */
    int role;       /* enum role bits */
    int pub, sub;   /* index in g.pubs / g.subs, or -1 */
    int qos;        /* SUBSCRIBE QoS for R_SUB / R_IDLE */
    int num;        /* connection number: client id, PROXY source */
    uint16_t pid;   /* last packet identifier used */
    char id[24];    /* client id (<= 23 bytes, [MQTT-3.1.3-5]) */
    char topic[80]; /* publish topic or subscription filter */
    uint8_t *rx;    /* unfinished tail of the last read */
    size_t rx_len, rx_cap;
    uint8_t *tx; /* queued output, flushed with one send() */
    size_t tx_off, tx_len, tx_cap;
    int64_t t_open_ns; /* connect() time */
    int64_t t_tx_ns;   /* last send, for keepalive pings */
};

struct pub {
    struct conn *c;
    uint64_t quota, sent, acked;
    uint32_t unacked; /* QoS 1/2 packets without PUBACK/PUBCOMP */
    int n_trk;
    struct trk **trk; /* streams of the subscribers that match */
    uint64_t floor;   /* cached min over trk of hi: end-to-end window */
    int64_t next_ns;  /* latency: next send time */
};

struct sub {
    struct conn *c;
    struct trk **by_pub; /* [n_pubs]: NULL where no stream is expected */
};

static struct {
    /* options */
    int sc;
    const char *host;
    int port, qos, P, S, K, W, size, C, conc, proxy, keepalive, pid;
    int setup_conc;
    uint64_t n, exchange;
    double rate, hold_s, timeout_s, drain_s, stall_s;
    const char *tag;
    int quiet;
    /* state */
    struct sockaddr_in addr;
    char prefix[32];   /* topic prefix: bench/<our pid> */
    struct conn **all; /* every conn struct, freed at exit */
    int n_all, cap_all;
    struct conn **act; /* polled every iteration */
    int n_act, cap_act;
    struct conn **idl; /* ready idle connections, polled every 100 ms */
    int n_idl, cap_idl;
    struct conn **todo; /* waiting to be opened, in order */
    int n_todo, todo_next;
    int n_opening; /* between connect() and CONNACK/SUBACK */
    int n_ready, n_closed;
    struct pub *pubs;
    int n_pubs;
    struct sub *subs;
    int n_subs;
    struct pollfd *pfd;
    int cap_pfd;
    struct conn **snap;
    uint8_t *rbuf;
    uint8_t *tmpl; /* payload template */
    int lat_on;
    int64_t *lat; /* latency samples, ns */
    size_t n_lat, cap_lat;
    /* counters */
    uint64_t deliveries, stray, proto_err, disconnects, conn_fail, sub_fail;
    uint64_t pings;
    int lost_logs;
    int64_t t_progress, t_last, t_idle_poll;
    volatile sig_atomic_t stop;
} g;

/* ==== Helpers ==== */

static int64_t
now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS + ts.tv_nsec;
}

static void *
xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p) {
        fprintf(stderr, "mqttpx-bench: out of memory\n");
        exit(2);
    }
    return p;
}

static void *
xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n ? n : 1, sz ? sz : 1);
    if (!p) {
        fprintf(stderr, "mqttpx-bench: out of memory\n");
        exit(2);
    }
    return p;
}

#define GROW(arr, n, cap)                                                      \
    do {                                                                       \
        if ((n) >= (cap)) {                                                    \
            (cap) = (cap) ? (cap)*2 : 64;                                      \
            (arr) = xrealloc((arr), (size_t)(cap) * sizeof *(arr));            \
        }                                                                      \
    } while (0)

/* Broker CPU seconds, utime+stime from /proc/PID/stat (whole process, in
 * clock ticks: 10 ms); -1 without --pid. */
static double
proc_stat_cpu_s(void)
{
    char path[64], buf[1024];
    unsigned long long ut = 0, stt = 0;
    if (g.pid <= 0) return -1;
    snprintf(path, sizeof path, "/proc/%d/stat", g.pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* comm may hold spaces */
    if (!p) return -1;
    p++;
    /* after ')': field 3 (state) ... field 14 utime, 15 stime */
    for (int field = 3; field <= 15; field++) {
        while (*p == ' ')
            p++;
        char *end;
        unsigned long long v = strtoull(p, &end, 10);
        if (field == 14) ut = v;
        if (field == 15) stt = v;
        while (*end && *end != ' ')
            end++;
        p = end;
    }
    return (double)(ut + stt) / (double)sysconf(_SC_CLK_TCK);
}

/* The same CPU time in ns: the first field of /proc/PID/task/TID/schedstat
 * summed over the threads (both brokers have one); -1 when the kernel has
 * no schedstat. Ticks are too coarse for a 0.2 s run. */
static double
proc_cpu_s(void)
{
    char path[64], line[128];
    double sum = 0;
    int found = 0;
    if (g.pid <= 0) return -1;
    snprintf(path, sizeof path, "/proc/%d/task", g.pid);
    DIR *d = opendir(path);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "/proc/%d/task/%.16s/schedstat", g.pid,
                 e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        if (fgets(line, sizeof line, f)) {
            sum += (double)strtoull(line, NULL, 10) / 1e9;
            found = 1;
        }
        fclose(f);
    }
    if (d) closedir(d);
    return found ? sum : proc_stat_cpu_s();
}

/* Broker VmRSS in kB, or -1. */
static long
proc_rss_kb(void)
{
    char path[64], line[256];
    long kb = -1;
    if (g.pid <= 0) return -1;
    snprintf(path, sizeof path, "/proc/%d/status", g.pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kb = strtol(line + 6, NULL, 10);
            break;
        }
    fclose(f);
    return kb;
}

static double
self_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void
on_signal(int sig)
{
    (void)sig;
    g.stop = 1;
}

static void
lst_add(struct conn ***arr, int *n, int *cap, struct conn *c)
{
    GROW(*arr, *n, *cap);
    (*arr)[(*n)++] = c;
}

static void
lst_del(struct conn **arr, int *n, struct conn *c)
{
    for (int i = 0; i < *n; i++)
        if (arr[i] == c) {
            arr[i] = arr[--*n];
            return;
        }
}

/* ==== MQTT encoder: appends packets to a connection's tx queue ==== */

static uint8_t *
tx_room(struct conn *c, size_t n)
{
    if (c->tx_off == c->tx_len) c->tx_off = c->tx_len = 0;
    if (c->tx_len + n > c->tx_cap) {
        if (c->tx_off > 0) {
            memmove(c->tx, c->tx + c->tx_off, c->tx_len - c->tx_off);
            c->tx_len -= c->tx_off;
            c->tx_off = 0;
        }
        if (c->tx_len + n > c->tx_cap) {
            size_t cap = c->tx_cap ? c->tx_cap : 256;
            while (cap < c->tx_len + n)
                cap *= 2;
            c->tx = xrealloc(c->tx, cap);
            c->tx_cap = cap;
        }
    }
    return c->tx + c->tx_len;
}

/* Fixed header: type byte and Remaining Length varint; returns its size. */
static size_t
enc_hdr(uint8_t *p, uint8_t type, size_t rl)
{
    size_t i = 1;
    p[0] = type;
    do {
        uint8_t b = (uint8_t)(rl & 0x7f);
        rl >>= 7;
        p[i++] = (uint8_t)(b | (rl ? 0x80 : 0));
    } while (rl);
    return i;
}

static uint8_t *
enc_str(uint8_t *p, const char *s, size_t n)
{
    p[0] = (uint8_t)(n >> 8);
    p[1] = (uint8_t)n;
    memcpy(p + 2, s, n);
    return p + 2 + n;
}

static uint16_t
next_pid(struct conn *c)
{
    if (++c->pid == 0) c->pid = 1;
    return c->pid;
}

static void
q_connect(struct conn *c)
{
    size_t idl = strlen(c->id), rl = 10 + 2 + idl;
    uint8_t *p = tx_room(c, 5 + rl), *q = p + enc_hdr(p, 0x10, rl);
    q = enc_str(q, "MQTT", 4);
    *q++ = 4;    /* protocol level 3.1.1 */
    *q++ = 0x02; /* clean session */
    *q++ = (uint8_t)(g.keepalive >> 8);
    *q++ = (uint8_t)g.keepalive;
    q = enc_str(q, c->id, idl);
    c->tx_len += (size_t)(q - p);
}

static void
q_subscribe(struct conn *c)
{
    size_t tl = strlen(c->topic), rl = 2 + 2 + tl + 1;
    uint8_t *p = tx_room(c, 5 + rl), *q = p + enc_hdr(p, 0x82, rl);
    uint16_t id = next_pid(c);
    *q++ = (uint8_t)(id >> 8);
    *q++ = (uint8_t)id;
    q = enc_str(q, c->topic, tl);
    *q++ = (uint8_t)c->qos;
    c->tx_len += (size_t)(q - p);
}

/* PUBACK, PUBREC, PUBREL (0x62), PUBCOMP: type, 2, packet id. */
static void
q_ack(struct conn *c, uint8_t type, uint16_t id)
{
    uint8_t *p = tx_room(c, 4);
    p[0] = type;
    p[1] = 2;
    p[2] = (uint8_t)(id >> 8);
    p[3] = (uint8_t)id;
    c->tx_len += 4;
}

/* DISCONNECT (0xe0) or PINGREQ (0xc0). */
static void
q_two(struct conn *c, uint8_t type)
{
    uint8_t *p = tx_room(c, 2);
    p[0] = type;
    p[1] = 0;
    c->tx_len += 2;
}

/* PROXY v2, PROXY command, TCP over IPv4 from 192.0.2.X: 16 + 12 bytes. */
static void
q_proxy_v2(struct conn *c)
{
    static const uint8_t sig[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                    0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};
    uint8_t *p = tx_room(c, 28);
    uint16_t sport = (uint16_t)(1024 + c->num % 60000);
    memcpy(p, sig, 12);
    p[12] = 0x21; /* version 2, PROXY */
    p[13] = 0x11; /* AF_INET, STREAM */
    p[14] = 0;
    p[15] = 12;
    p[16] = 192; /* source 192.0.2.X (TEST-NET-1) */
    p[17] = 0;
    p[18] = 2;
    p[19] = (uint8_t)(1 + c->num % 254);
    memcpy(p + 20, &g.addr.sin_addr, 4); /* destination: the listener */
    p[24] = (uint8_t)(sport >> 8);
    p[25] = (uint8_t)sport;
    memcpy(p + 26, &g.addr.sin_port, 2);
    c->tx_len += 28;
}

/* One PUBLISH from p with the next sequence number and time stamp. */
static void
q_publish(struct pub *p, int64_t ts)
{
    struct conn *c = p->c;
    size_t tl = strlen(c->topic), sz = (size_t)g.size;
    size_t rl = 2 + tl + (g.qos ? 2 : 0) + sz;
    uint8_t *b = tx_room(c, 5 + rl);
    uint8_t *q = b + enc_hdr(b, (uint8_t)(0x30 | g.qos << 1), rl);
    uint32_t who = (uint32_t)(p - g.pubs);
    uint64_t seq = p->sent, t = (uint64_t)ts;

    q = enc_str(q, c->topic, tl);
    if (g.qos) {
        uint16_t id = next_pid(c);
        *q++ = (uint8_t)(id >> 8);
        *q++ = (uint8_t)id;
    }
    memcpy(q, g.tmpl, sz);
    memcpy(q, &who, 4);
    memcpy(q + 4, &seq, 8);
    memcpy(q + 12, &t, 8);
    q += sz;
    c->tx_len += (size_t)(q - b);
    p->sent++;
    if (g.qos) p->unacked++;
}

/* ==== Connections ==== */

static struct conn *
conn_new(int role, int num, int qos)
{
    struct conn *c = xcalloc(1, sizeof *c);
    c->fd = -1;
    c->role = role;
    c->pub = c->sub = -1;
    c->num = num;
    c->qos = qos;
    snprintf(c->id, sizeof c->id, "b%d%c%d", (int)getpid() % 100000,
             role & R_PUB    ? 'p'
             : role & R_SUB  ? 's'
             : role & R_IDLE ? 'i'
                             : 'c',
             num);
    lst_add(&g.all, &g.n_all, &g.cap_all, c);
    return c;
}

/* Closes the socket; a connection the broker dropped after it was ready is
 * counted in disconnects and logged (first 5). */
static void
conn_drop(struct conn *c, const char *why)
{
    if (c->state == ST_DEAD || c->state == ST_DONE) return;
    if (why) {
        if (c->state == ST_READY)
            g.disconnects++;
        else if (c->state == ST_SUBACK)
            g.sub_fail++;
        else
            g.conn_fail++;
        if (g.lost_logs++ < 5 && !g.quiet)
            fprintf(stderr, "mqttpx-bench: %s (%s): %s\n", c->id,
                    c->state == ST_READY ? "ready" : "setting up", why);
    }
    if (c->state >= ST_TCP && c->state <= ST_SUBACK) g.n_opening--;
    if (c->state == ST_READY) g.n_ready--;
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    c->state = why ? ST_DEAD : ST_DONE;
    g.n_closed++;
    lst_del(g.act, &g.n_act, c);
    lst_del(g.idl, &g.n_idl, c);
    free(c->rx);
    free(c->tx);
    c->rx = c->tx = NULL;
    c->rx_len = c->rx_cap = c->tx_off = c->tx_len = c->tx_cap = 0;
}

static void
conn_open(struct conn *c)
{
    int one = 1;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    c->t_open_ns = now_ns();
    c->state = ST_TCP;
    g.n_opening++;
    lst_add(&g.act, &g.n_act, &g.cap_act, c);
    if (c->fd < 0) {
        conn_drop(c, strerror(errno));
        return;
    }
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&g.addr, sizeof g.addr) < 0 &&
        errno != EINPROGRESS)
        conn_drop(c, strerror(errno));
}

/* Opens queued connections while fewer than the concurrency are opening. */
static void
open_more(int conc)
{
    while (g.todo_next < g.n_todo && g.n_opening < conc && !g.stop)
        conn_open(g.todo[g.todo_next++]);
}

/* Sends what is queued; 0, or -1 when the connection was dropped. */
static int
conn_flush(struct conn *c)
{
    while (c->tx_off < c->tx_len) {
        ssize_t n =
            send(c->fd, c->tx + c->tx_off, c->tx_len - c->tx_off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            if (errno == EINTR) continue;
            conn_drop(c, strerror(errno));
            return -1;
        }
        c->tx_off += (size_t)n;
        c->t_tx_ns = now_ns();
    }
    c->tx_off = c->tx_len = 0;
    return 0;
}

/* TCP connect finished: send the PROXY header if asked, then CONNECT. */
static void
conn_connected(struct conn *c)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
    if (err) {
        conn_drop(c, strerror(err));
        return;
    }
    if (g.proxy) q_proxy_v2(c);
    q_connect(c);
    c->state = ST_CONNACK;
}

static void
conn_ready(struct conn *c)
{
    c->state = ST_READY;
    g.n_opening--;
    g.n_ready++;
    g.t_progress = now_ns();
    if (c->role & R_IDLE) { /* leaves the hot poll set */
        lst_del(g.act, &g.n_act, c);
        lst_add(&g.idl, &g.n_idl, &g.cap_idl, c);
    }
}

/* ==== Receiving ==== */

static void
lat_add(int64_t ns)
{
    GROW(g.lat, g.n_lat, g.cap_lat);
    g.lat[g.n_lat++] = ns;
}

/* A PUBLISH payload reached subscriber connection c. */
static void
on_message(struct conn *c, const uint8_t *pl, size_t n, int64_t now)
{
    uint32_t who;
    uint64_t seq, ts;
    struct trk *t;

    g.deliveries++;
    g.t_progress = g.t_last = now;
    if (c->sub < 0 || n < PAYLOAD_MIN) {
        g.stray++;
        return;
    }
    memcpy(&who, pl, 4);
    memcpy(&seq, pl + 4, 8);
    memcpy(&ts, pl + 12, 8);
    if (who >= (uint32_t)g.n_pubs || !(t = g.subs[c->sub].by_pub[who]) ||
        seq >= t->quota) {
        g.stray++;
        return;
    }
    if (t->seen[seq >> 3] & (1u << (seq & 7))) {
        t->dup++;
        return;
    }
    t->seen[seq >> 3] |= (uint8_t)(1u << (seq & 7));
    t->got++;
    if (seq < t->hi)
        t->ooo++;
    else
        t->hi = seq + 1;
    if (g.lat_on) lat_add(now - (int64_t)ts);
}

static void
on_ack(struct conn *c, int64_t now)
{
    if (c->pub < 0 || g.pubs[c->pub].unacked == 0) {
        g.proto_err++;
        return;
    }
    g.pubs[c->pub].unacked--;
    g.pubs[c->pub].acked++;
    g.t_progress = g.t_last = now;
}

static void
on_connack(struct conn *c, const uint8_t *b, uint32_t rl, int64_t now)
{
    if (c->state != ST_CONNACK || rl != 2 || b[1] != 0) {
        char why[48];
        snprintf(why, sizeof why, "CONNACK refused (rc %d)",
                 rl == 2 ? b[1] : -1);
        conn_drop(c, why);
        return;
    }
    if (c->role & R_PROBE) { /* connect scenario: done, say goodbye */
        lat_add(now - c->t_open_ns);
        q_two(c, 0xe0);
        if (conn_flush(c) == 0) conn_drop(c, NULL);
        return;
    }
    if (c->role & (R_SUB | R_IDLE)) {
        q_subscribe(c);
        c->state = ST_SUBACK;
        return;
    }
    conn_ready(c);
}

/* One complete packet: type byte b0, body b of rl bytes. */
static void
on_packet(struct conn *c, uint8_t b0, const uint8_t *b, uint32_t rl,
          int64_t now)
{
    uint16_t id = rl >= 2 ? (uint16_t)(b[0] << 8 | b[1]) : 0;

    switch (b0 >> 4) {
    case 2: /* CONNACK */
        on_connack(c, b, rl, now);
        return;
    case 9: /* SUBACK */
        if (c->state != ST_SUBACK || rl != 3 || b[2] == 0x80) {
            conn_drop(c, "SUBACK failure");
            return;
        }
        conn_ready(c);
        return;
    case 3: { /* PUBLISH */
        int qos = (b0 >> 1) & 3;
        if (rl < 2) break;
        size_t tl = (size_t)(b[0] << 8 | b[1]), off = 2 + tl;
        if (qos) off += 2;
        if (qos == 3 || off > rl) break;
        if (qos) id = (uint16_t)(b[2 + tl] << 8 | b[3 + tl]);
        on_message(c, b + off, rl - off, now);
        if (qos == 1) q_ack(c, 0x40, id);
        if (qos == 2) q_ack(c, 0x50, id);
        return;
    }
    case 4: /* PUBACK */
    case 7: /* PUBCOMP */
        if (rl != 2) break;
        on_ack(c, now);
        return;
    case 5: /* PUBREC -> PUBREL */
        if (rl != 2) break;
        q_ack(c, 0x62, id);
        g.t_progress = now;
        return;
    case 6: /* PUBREL -> PUBCOMP */
        if (rl != 2) break;
        q_ack(c, 0x70, id);
        return;
    case 13: /* PINGRESP */
        return;
    }
    g.proto_err++;
    conn_drop(c, "unexpected packet");
}

/* Decodes every complete packet in b; returns the bytes consumed. */
static size_t
parse(struct conn *c, const uint8_t *b, size_t len, int64_t now)
{
    size_t off = 0;
    while (len - off >= 2) {
        uint32_t rl = 0;
        size_t i;
        int whole = 0;
        for (i = 1; i <= 4 && off + i < len; i++) {
            rl |= (uint32_t)(b[off + i] & 0x7f) << (7 * (i - 1));
            if (!(b[off + i] & 0x80)) {
                whole = 1;
                break;
            }
        }
        if (!whole) {
            if (i > 4) {
                g.proto_err++;
                conn_drop(c, "bad remaining length");
                return len;
            }
            break;
        }
        if (len - off < i + 1 + rl) break;
        on_packet(c, b[off], b + off + i + 1, rl, now);
        if (c->state == ST_DEAD || c->state == ST_DONE) return len;
        off += i + 1 + rl;
    }
    return off;
}

/* One recv() into the shared buffer after the kept tail; parse; keep the
 * new tail. */
static void
conn_read(struct conn *c)
{
    size_t have = c->rx_len;
    if (have) memcpy(g.rbuf, c->rx, have);
    ssize_t n = recv(c->fd, g.rbuf + have, RBUF_SIZE - have, 0);
    if (n == 0) {
        conn_drop(c, "closed by broker");
        return;
    }
    if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            conn_drop(c, strerror(errno));
        return;
    }
    size_t len = have + (size_t)n;
    size_t used = parse(c, g.rbuf, len, now_ns());
    if (c->state == ST_DEAD || c->state == ST_DONE) return;
    c->rx_len = len - used;
    if (c->rx_len > c->rx_cap) {
        c->rx_cap = c->rx_len;
        c->rx = xrealloc(c->rx, c->rx_cap);
    }
    if (c->rx_len) memcpy(c->rx, g.rbuf + used, c->rx_len);
}

/* ==== The loop ==== */

/* Idle connections: read, ping at keepalive / 2; called every 100 ms. */
static void
idle_poll(int64_t now)
{
    if (g.n_idl == 0 || now - g.t_idle_poll < NS / 10) return;
    g.t_idle_poll = now;
    if (g.cap_pfd < g.n_idl + 1) {
        g.cap_pfd = g.n_idl + 1;
        g.pfd = xrealloc(g.pfd, (size_t)g.cap_pfd * sizeof *g.pfd);
        g.snap = xrealloc(g.snap, (size_t)g.cap_pfd * sizeof *g.snap);
    }
    int n = g.n_idl;
    for (int i = 0; i < n; i++) {
        struct conn *c = g.idl[i];
        if (g.keepalive > 0 &&
            now - c->t_tx_ns > (int64_t)g.keepalive * NS / 2) {
            q_two(c, 0xc0);
            g.pings++;
        }
        g.snap[i] = c;
        g.pfd[i].fd = c->fd;
        g.pfd[i].events = (short)(POLLIN | (c->tx_len ? POLLOUT : 0));
        g.pfd[i].revents = 0;
    }
    if (poll(g.pfd, (nfds_t)n, 0) <= 0) return;
    for (int i = 0; i < n; i++) {
        struct conn *c = g.snap[i];
        if (g.pfd[i].revents & (POLLIN | POLLERR | POLLHUP)) conn_read(c);
        if (c->state == ST_READY && c->tx_len) conn_flush(c);
    }
}

/* One poll() over the active connections with a timeout in ns; handles
 * connects, reads and writes. */
static void
loop_once(int64_t timeout_ns)
{
    int n = g.n_act;
    if (g.cap_pfd < n + 1) {
        g.cap_pfd = n + 64;
        g.pfd = xrealloc(g.pfd, (size_t)g.cap_pfd * sizeof *g.pfd);
        g.snap = xrealloc(g.snap, (size_t)g.cap_pfd * sizeof *g.snap);
    }
    for (int i = 0; i < n; i++) {
        struct conn *c = g.act[i];
        g.snap[i] = c;
        g.pfd[i].fd = c->fd;
        g.pfd[i].events = (short)(c->state == ST_TCP      ? POLLOUT
                                  : c->tx_len > c->tx_off ? POLLIN | POLLOUT
                                                          : POLLIN);
        g.pfd[i].revents = 0;
    }
    if (timeout_ns < 0) timeout_ns = 0;
    if (g.n_idl && timeout_ns > NS / 10) timeout_ns = NS / 10;
    struct timespec ts = {(time_t)(timeout_ns / NS), (long)(timeout_ns % NS)};
    int r = ppoll(g.pfd, (nfds_t)n, &ts, NULL);
    if (r < 0 && errno != EINTR) {
        perror("mqttpx-bench: poll");
        exit(2);
    }
    for (int i = 0; r > 0 && i < n; i++) {
        struct conn *c = g.snap[i];
        short ev = g.pfd[i].revents;
        if (!ev || c->state == ST_DEAD || c->state == ST_DONE) continue;
        if (c->state == ST_TCP) {
            conn_connected(c);
            continue;
        }
        if (ev & (POLLIN | POLLERR | POLLHUP)) conn_read(c);
    }
    idle_poll(now_ns());
}

/* Flushes every active connection with queued output. */
static void
flush_all(void)
{
    for (int i = 0; i < g.n_act; i++) {
        struct conn *c = g.act[i];
        if (c->tx_len > c->tx_off && c->state >= ST_CONNACK &&
            c->state <= ST_READY)
            if (conn_flush(c) < 0) i--; /* dropped: swapped out of act */
    }
}

/* Opens the queued connections (conc at a time) until each is ready or
 * failed; 0 when all are ready. */
static int
setup(int conc, double limit_s)
{
    int64_t end = now_ns() + (int64_t)(limit_s * 1e9);
    g.t_progress = now_ns();
    for (;;) {
        open_more(conc);
        flush_all();
        if (g.todo_next == g.n_todo && g.n_opening == 0) break;
        if (g.stop || now_ns() > end) {
            fprintf(stderr, "mqttpx-bench: setup %s: %d of %d ready\n",
                    g.stop ? "interrupted" : "timed out", g.n_ready, g.n_todo);
            return -1;
        }
        loop_once(NS / 10);
    }
    g.n_todo = g.todo_next = 0;
    return g.conn_fail || g.sub_fail ? -1 : 0;
}

static void
todo_add(struct conn *c)
{
    static int cap;
    GROW(g.todo, g.n_todo, cap);
    g.todo[g.n_todo++] = c;
}

/* Sends DISCONNECT on every open connection and closes it. */
static void
teardown(void)
{
    for (int i = 0; i < g.n_all; i++) {
        struct conn *c = g.all[i];
        if (c->state == ST_DEAD || c->state == ST_DONE || c->fd < 0) continue;
        if (c->state == ST_READY) {
            q_two(c, 0xe0);
            (void)conn_flush(c);
        }
        if (c->state != ST_DEAD) conn_drop(c, NULL);
    }
}

/* ==== Traffic: publishers, subscribers, streams ==== */

static int
pub_add(const char *topic, uint64_t quota)
{
    g.pubs = xrealloc(g.pubs, (size_t)(g.n_pubs + 1) * sizeof *g.pubs);
    struct pub *p = &g.pubs[g.n_pubs];
    memset(p, 0, sizeof *p);
    p->c = conn_new(R_PUB, g.n_pubs, 0);
    p->c->pub = g.n_pubs;
    snprintf(p->c->topic, sizeof p->c->topic, "%s", topic);
    p->quota = quota;
    return g.n_pubs++;
}

static int
sub_add(const char *filter)
{
    g.subs = xrealloc(g.subs, (size_t)(g.n_subs + 1) * sizeof *g.subs);
    struct sub *s = &g.subs[g.n_subs];
    s->c = conn_new(R_SUB, g.n_subs, g.qos);
    s->c->sub = g.n_subs;
    s->by_pub = NULL;
    snprintf(s->c->topic, sizeof s->c->topic, "%s", filter);
    return g.n_subs++;
}

/* Subscriber si expects every message of publisher pi. */
static void
link_stream(int si, int pi)
{
    struct sub *s = &g.subs[si];
    struct pub *p = &g.pubs[pi];
    struct trk *t = xcalloc(1, sizeof *t);
    if (!s->by_pub) s->by_pub = xcalloc((size_t)g.n_pubs, sizeof *s->by_pub);
    t->quota = p->quota;
    t->seen = xcalloc((size_t)(p->quota / 8 + 1), 1);
    s->by_pub[pi] = t;
    p->trk = xrealloc(p->trk, (size_t)(p->n_trk + 1) * sizeof *p->trk);
    p->trk[p->n_trk++] = t;
}

/* May p send another message? QoS 1/2: fewer than W unacknowledged; all
 * QoS: fewer than W sent beyond what its slowest subscriber has seen (the
 * end-to-end window that paces QoS 0 and keeps every broker queue short). */
static int
pub_may_send(struct pub *p)
{
    if (p->sent >= p->quota || p->c->state != ST_READY) return 0;
    if (g.qos && p->unacked >= (uint32_t)g.W) return 0;
    if (p->sent - p->floor < (uint64_t)g.W) return 1;
    uint64_t lo = UINT64_MAX;
    for (int i = 0; i < p->n_trk; i++)
        if (p->trk[i]->hi < lo) lo = p->trk[i]->hi;
    p->floor = p->n_trk ? lo : p->sent;
    return p->sent - p->floor < (uint64_t)g.W;
}

/* Queues what the windows (or, for latency, the clock) allow; returns the
 * ns until the next scheduled send (latency), else a poll timeout. */
static int64_t
pump(int64_t now)
{
    int64_t wait = NS / 10;
    for (int i = 0; i < g.n_pubs; i++) {
        struct pub *p = &g.pubs[i];
        if (g.sc == SC_LATENCY) {
            if (p->c->state != ST_READY) continue;
            while (p->sent < p->quota && now >= p->next_ns) {
                q_publish(p, now_ns());
                p->next_ns += (int64_t)(1e9 / g.rate);
            }
            if (p->sent < p->quota && p->next_ns - now < wait)
                wait = p->next_ns - now;
            continue;
        }
        while (pub_may_send(p))
            q_publish(p, now);
    }
    return wait;
}

static int
traffic_done(void)
{
    for (int i = 0; i < g.n_pubs; i++) {
        struct pub *p = &g.pubs[i];
        if (p->c->state != ST_READY) continue; /* dropped: counted */
        if (p->sent < p->quota || p->unacked) return 0;
    }
    for (int i = 0; i < g.n_pubs; i++)
        for (int j = 0; j < g.pubs[i].n_trk; j++)
            if (g.pubs[i].trk[j]->got < g.pubs[i].sent) return 0;
    return 1;
}

struct result {
    const char *status;
    uint64_t sent, expected, unique, lost, dup, ooo;
    double elapsed_s, cpu_s, stat_s, self_s;
};

/* Runs the publishers until every stream is complete, nothing moved for
 * --drain (after the last send) or --stall seconds, or --timeout. */
static void
traffic_run(struct result *r)
{
    double cpu0 = proc_cpu_s(), stat0 = proc_stat_cpu_s();
    double self0 = self_cpu_s();
    int64_t t0 = now_ns(), end = t0 + (int64_t)(g.timeout_s * 1e9);
    g.t_progress = g.t_last = t0;
    for (int i = 0; i < g.n_pubs; i++)
        g.pubs[i].next_ns = t0;
    r->status = "ok";
    for (;;) {
        int64_t now = now_ns();
        int64_t wait = pump(now);
        flush_all();
        if (traffic_done()) break;
        int all_sent = 1;
        for (int i = 0; i < g.n_pubs; i++)
            if (g.pubs[i].c->state == ST_READY &&
                g.pubs[i].sent < g.pubs[i].quota)
                all_sent = 0;
        if (all_sent && now - g.t_progress > (int64_t)(g.drain_s * 1e9)) {
            r->status = "incomplete";
            break;
        }
        if (now - g.t_progress > (int64_t)(g.stall_s * 1e9)) {
            r->status = "stalled";
            break;
        }
        if (now > end) {
            r->status = "timeout";
            break;
        }
        if (g.stop) {
            r->status = "interrupted";
            break;
        }
        loop_once(wait);
    }
    double cpu1 = proc_cpu_s(), stat1 = proc_stat_cpu_s();
    r->self_s = self_cpu_s() - self0;
    r->cpu_s = cpu0 >= 0 && cpu1 >= 0 ? cpu1 - cpu0 : -1;
    r->stat_s = stat0 >= 0 && stat1 >= 0 ? stat1 - stat0 : -1;
    r->elapsed_s = (double)(g.t_last - t0) / 1e9;
    r->sent = r->expected = r->unique = r->lost = r->dup = r->ooo = 0;
    for (int i = 0; i < g.n_pubs; i++) {
        struct pub *p = &g.pubs[i];
        r->sent += p->sent;
        for (int j = 0; j < p->n_trk; j++) {
            struct trk *t = p->trk[j];
            r->expected += p->sent;
            r->unique += t->got;
            r->lost += p->sent - t->got;
            r->dup += t->dup;
            r->ooo += t->ooo;
        }
    }
    if (strcmp(r->status, "incomplete") == 0 && g.qos == 0)
        r->status = "ok"; /* QoS 0 may be lost: counted in lost= */
    if (strcmp(r->status, "ok") == 0 &&
        (g.disconnects || g.proto_err || g.stray || r->dup || r->ooo ||
         (g.qos && r->lost)))
        r->status = "error";
}

/* ==== Output ==== */

static int
cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double
pct_us(double q)
{
    if (!g.n_lat) return -1;
    size_t i = (size_t)(q * (double)(g.n_lat - 1) + 0.5);
    return (double)g.lat[i] / 1e3;
}

static void
out_common(void)
{
    printf("scenario=%s", sc_names[g.sc]);
    if (g.tag) printf(" broker=%s", g.tag);
}

static void
out_lat(void)
{
    if (!g.n_lat) return;
    qsort(g.lat, g.n_lat, sizeof *g.lat, cmp_i64);
    printf(" samples=%zu p50_us=%.1f p90_us=%.1f p99_us=%.1f max_us=%.1f",
           g.n_lat, pct_us(0.50), pct_us(0.90), pct_us(0.99), pct_us(1.0));
}

/* The traffic keys, each prefixed with x (idle: "x_" for the exchange). */
static void
out_traffic(const char *x, const struct result *r)
{
    double el = r->elapsed_s > 0 ? r->elapsed_s : 1e-9;
    printf(" %sqos=%d %spubs=%d %ssubs=%d %swindow=%d %ssize=%d", x, g.qos, x,
           g.n_pubs, x, g.n_subs, x, g.W, x, g.size);
    printf(" %smessages=%" PRIu64 " %sexpected=%" PRIu64
           " %sdeliveries=%" PRIu64 " %sunique=%" PRIu64,
           x, r->sent, x, r->expected, x, g.deliveries, x, r->unique);
    printf(" %slost=%" PRIu64 " %sdup=%" PRIu64 " %sooo=%" PRIu64
           " %sstray=%" PRIu64 " %sdisconnects=%" PRIu64
           " %sproto_err=%" PRIu64,
           x, r->lost, x, r->dup, x, r->ooo, x, g.stray, x, g.disconnects, x,
           g.proto_err);
    printf(" %selapsed_s=%.3f %smsg_per_s=%.0f %sdeliveries_per_s=%.0f", x,
           r->elapsed_s, x, (double)r->sent / el, x, (double)g.deliveries / el);
    if (r->cpu_s >= 0)
        printf(" %sbroker_cpu_s=%.4f %sbroker_cpu_stat_s=%.2f"
               " %sbroker_cpu_us_per_delivery=%.3f %sbroker_rss_kb=%ld",
               x, r->cpu_s, x, r->stat_s, x,
               g.deliveries ? r->cpu_s * 1e6 / (double)g.deliveries : -1.0, x,
               proc_rss_kb());
    printf(" %sbench_cpu_s=%.3f", x, r->self_s);
    out_lat();
}

/* ==== Scenarios ==== */

static void
topo_fanin(void)
{
    char t[80];
    for (int i = 0; i < g.P; i++) {
        snprintf(t, sizeof t, "%s/fanin/%d", g.prefix, i);
        pub_add(t, g.n / (uint64_t)g.P + ((uint64_t)i < g.n % (uint64_t)g.P));
    }
    snprintf(t, sizeof t, "%s/fanin/+", g.prefix);
    sub_add(t);
    for (int i = 0; i < g.P; i++)
        link_stream(0, i);
}

static void
topo_fanout(void)
{
    char t[80];
    snprintf(t, sizeof t, "%s/fanout", g.prefix);
    pub_add(t, g.n);
    for (int i = 0; i < g.S; i++) {
        sub_add(t);
        link_stream(i, 0);
    }
}

static void
topo_pairs(int k, const char *kind)
{
    char t[80];
    for (int i = 0; i < k; i++) {
        snprintf(t, sizeof t, "%s/%s/%d", g.prefix, kind, i);
        pub_add(t, g.n / (uint64_t)k + ((uint64_t)i < g.n % (uint64_t)k));
    }
    for (int i = 0; i < k; i++) {
        snprintf(t, sizeof t, "%s/%s/%d", g.prefix, kind, i);
        sub_add(t);
        link_stream(i, i);
    }
}

/* Subscribers first (ready before anything is sent), then publishers. */
static int
traffic_setup(void)
{
    for (int i = 0; i < g.n_subs; i++)
        todo_add(g.subs[i].c);
    if (setup(g.setup_conc, 60) < 0) return -1;
    for (int i = 0; i < g.n_pubs; i++)
        todo_add(g.pubs[i].c);
    return setup(g.setup_conc, 60);
}

static int
run_traffic(void)
{
    struct result r;
    if (g.sc == SC_FANIN)
        topo_fanin();
    else if (g.sc == SC_FANOUT)
        topo_fanout();
    else if (g.sc == SC_PAIRS)
        topo_pairs(g.K, "pair");
    else {
        topo_pairs(1, "lat");
        g.lat_on = 1;
    }
    if (traffic_setup() < 0) {
        out_common();
        printf(" status=setup_failed conn_fail=%" PRIu64 " sub_fail=%" PRIu64
               "\n",
               g.conn_fail, g.sub_fail);
        return 1;
    }
    traffic_run(&r);
    out_common();
    out_traffic("", &r);
    if (g.sc == SC_LATENCY) printf(" rate=%.0f", g.rate);
    printf(" status=%s\n", r.status);
    return strcmp(r.status, "ok") != 0;
}

/* connect: C connections, conc at a time: TCP, [PROXY v2], CONNECT,
 * CONNACK, DISCONNECT, close. */
static int
run_connect(void)
{
    for (int i = 0; i < g.C; i++)
        todo_add(conn_new(R_PROBE, i, 0));
    double cpu0 = proc_cpu_s(), self0 = self_cpu_s();
    int64_t t0 = now_ns(), end = t0 + (int64_t)(g.timeout_s * 1e9);
    const char *status = "ok";
    for (;;) {
        open_more(g.conc);
        flush_all();
        if (g.todo_next == g.n_todo && g.n_opening == 0) break;
        if (g.stop) {
            status = "interrupted";
            break;
        }
        if (now_ns() > end) {
            status = "timeout";
            break;
        }
        loop_once(NS / 10);
    }
    double el = (double)(now_ns() - t0) / 1e9, cpu1 = proc_cpu_s();
    uint64_t ok = g.n_lat;
    if (g.conn_fail && strcmp(status, "ok") == 0) status = "error";
    out_common();
    printf(" proxy_v2=%d connections=%d concurrency=%d ok=%" PRIu64
           " conn_fail=%" PRIu64 " elapsed_s=%.3f conn_per_s=%.0f",
           g.proxy, g.C, g.conc, ok, g.conn_fail, el, (double)ok / el);
    if (cpu0 >= 0 && cpu1 >= 0)
        printf(" broker_cpu_s=%.3f broker_cpu_us_per_conn=%.3f "
               "broker_rss_kb=%ld",
               cpu1 - cpu0, ok ? (cpu1 - cpu0) * 1e6 / (double)ok : -1.0,
               proc_rss_kb());
    printf(" bench_cpu_s=%.3f", self_cpu_s() - self0);
    out_lat(); /* connect() to CONNACK */
    printf(" status=%s\n", status);
    return strcmp(status, "ok") != 0;
}

/* Keeps the loop (and the idle connections) turning for s seconds, or
 * until a signal when s < 0. */
static void
idle_hold(double s)
{
    int64_t end = now_ns() + (int64_t)(s * 1e9);
    while (!g.stop && (s < 0 || now_ns() < end)) {
        flush_all();
        loop_once(NS / 10);
    }
}

/* idle: C connections, each CONNECT with its own id and one SUBSCRIBE to
 * its own topic; broker RSS before and after; then an optional QoS pair
 * exchange of --exchange messages, and --hold. */
static int
run_idle(void)
{
    long rss0 = proc_rss_kb();
    double cpu0 = proc_cpu_s();
    for (int i = 0; i < g.C; i++) {
        struct conn *c = conn_new(R_IDLE, i, 0);
        snprintf(c->topic, sizeof c->topic, "%s/idle/%d", g.prefix, i);
        todo_add(c);
    }
    int64_t t0 = now_ns();
    int rc = setup(g.conc, 120);
    double setup_s = (double)(now_ns() - t0) / 1e9;
    idle_hold(0.5); /* let the broker settle before reading its RSS */
    long rss1 = proc_rss_kb();
    double cpu1 = proc_cpu_s();
    int ready = g.n_idl;
    fprintf(stderr, "mqttpx-bench: ready: %d idle connections in %.2f s\n",
            ready, setup_s);
    struct result r;
    memset(&r, 0, sizeof r);
    r.status = rc < 0 ? "setup_failed" : "ok";
    if (rc == 0 && g.exchange > 0) {
        g.n = g.exchange;
        topo_pairs(1, "x");
        if (traffic_setup() < 0)
            r.status = "setup_failed";
        else
            traffic_run(&r);
    }
    if (g.hold_s != 0 && !g.stop) idle_hold(g.hold_s);
    int still = g.n_idl;
    out_common();
    printf(" connections=%d ready=%d still_open=%d conn_fail=%" PRIu64
           " sub_fail=%" PRIu64 " setup_s=%.3f",
           g.C, ready, still, g.conn_fail, g.sub_fail, setup_s);
    if (rss0 >= 0 && rss1 >= 0)
        printf(" rss_before_kb=%ld rss_after_kb=%ld rss_per_conn_b=%.0f "
               "broker_setup_cpu_us_per_conn=%.1f",
               rss0, rss1,
               ready ? (double)(rss1 - rss0) * 1024.0 / ready : -1.0,
               ready ? (cpu1 - cpu0) * 1e6 / ready : -1.0);
    if (g.exchange > 0 && strcmp(r.status, "setup_failed") != 0) {
        out_traffic("x_", &r);
    }
    if (strcmp(r.status, "ok") == 0 && still != g.C) r.status = "error";
    printf(" pings=%" PRIu64 " status=%s\n", g.pings, r.status);
    return strcmp(r.status, "ok") != 0;
}

/* ==== main ==== */

static void
usage(FILE *f)
{
    fprintf(
        f,
        "usage: mqttpx-bench SCENARIO [options]\n"
        "scenarios:\n"
        "  fanin    P publishers -> 1 subscriber on a '+' filter\n"
        "  fanout   1 publisher -> S subscribers (counts deliveries)\n"
        "  pairs    K publishers, each to its own subscriber and topic\n"
        "  latency  1 publisher at --rate msg/s -> 1 subscriber; p50..max\n"
        "  connect  C x (TCP, [PROXY v2], CONNECT, CONNACK, DISCONNECT)\n"
        "  idle     C idle clients with one subscription each; broker RSS\n"
        "options:\n"
        "  -H, --host ADDR      broker IPv4 address (127.0.0.1)\n"
        "  -p, --port PORT      broker port (1883)\n"
        "  -q, --qos 0|1|2      publish and subscription QoS (0; idle: 1)\n"
        "  -n, --messages N     messages published in all (QoS 0: 200000,\n"
        "                       1: 100000, 2: 50000; fanout: that / S;\n"
        "                       latency: 5 s worth)\n"
        "  -P, --publishers N   fanin publishers (8)\n"
        "  -S, --subscribers N  fanout subscribers (100)\n"
        "  -K, --pairs N        pairs (50)\n"
        "  -W, --window N       messages in flight per publisher (20): QoS\n"
        "                       1/2 unacknowledged, and for every QoS sent\n"
        "                       minus received by its slowest subscriber\n"
        "  -s, --size BYTES     payload size (64; >= 20)\n"
        "  -r, --rate N         latency: messages per second (1000)\n"
        "  -C, --connections N  connect: 2000; idle: 10000\n"
        "  -c, --concurrency N  connections opening at once (connect: 16,\n"
        "                       idle: 64)\n"
        "      --proxy-v2       connect: send a PROXY v2 header first\n"
        "  -x, --exchange N     idle: also run a pair exchange of N messages\n"
        "      --hold SECONDS   idle: keep the connections open (-1: until\n"
        "                       SIGINT/SIGTERM)\n"
        "  -k, --keepalive S    CONNECT keepalive; idle clients ping (60)\n"
        "      --pid PID        broker process: CPU and RSS from /proc\n"
        "      --tag NAME       adds broker=NAME to the output\n"
        "  -t, --timeout S      give up after S seconds (300)\n"
        "      --drain S        QoS 0: end S s after the last arrival (2)\n"
        "      --stall S        end when nothing moved for S s (10)\n"
        "output: one line of key=value; exit 0 when status=ok\n");
}

static int
opt_int(const char *s, long lo, long hi, const char *name)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "mqttpx-bench: %s: expected %ld..%ld, got '%s'\n", name,
                lo, hi, s);
        exit(2);
    }
    return (int)v;
}

static double
opt_dbl(const char *s, const char *name)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end) {
        fprintf(stderr, "mqttpx-bench: %s: expected a number, got '%s'\n", name,
                s);
        exit(2);
    }
    return v;
}

int
main(int argc, char **argv)
{
    static const struct option lo[] = {
        {"host", 1, 0, 'H'},        {"port", 1, 0, 'p'},
        {"qos", 1, 0, 'q'},         {"messages", 1, 0, 'n'},
        {"publishers", 1, 0, 'P'},  {"subscribers", 1, 0, 'S'},
        {"pairs", 1, 0, 'K'},       {"window", 1, 0, 'W'},
        {"size", 1, 0, 's'},        {"rate", 1, 0, 'r'},
        {"connections", 1, 0, 'C'}, {"concurrency", 1, 0, 'c'},
        {"proxy-v2", 0, 0, 1},      {"exchange", 1, 0, 'x'},
        {"hold", 1, 0, 2},          {"keepalive", 1, 0, 'k'},
        {"pid", 1, 0, 3},           {"tag", 1, 0, 4},
        {"timeout", 1, 0, 't'},     {"drain", 1, 0, 5},
        {"stall", 1, 0, 6},         {"quiet", 0, 0, 7},
        {"help", 0, 0, 'h'},        {0, 0, 0, 0}};
    long n = -1;
    int qos = -1, opt;

    if (argc < 2 || argv[1][0] == '-') {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    g.sc = -1;
    for (int i = 0; i < 6; i++)
        if (strcmp(argv[1], sc_names[i]) == 0) g.sc = i;
    if (g.sc < 0) {
        fprintf(stderr, "mqttpx-bench: unknown scenario '%s'\n", argv[1]);
        usage(stderr);
        return 2;
    }
    g.host = "127.0.0.1";
    g.port = 1883;
    g.P = 8;
    g.S = 100;
    g.K = 50;
    g.W = 20;
    g.size = 64;
    g.rate = 1000;
    g.C = g.sc == SC_IDLE ? 10000 : 2000;
    g.conc = g.sc == SC_IDLE ? 64 : 16;
    g.setup_conc = 64;
    g.keepalive = 60;
    g.timeout_s = 300;
    g.drain_s = 2;
    g.stall_s = 10;
    optind = 2;
    while ((opt = getopt_long(argc, argv, "H:p:q:n:P:S:K:W:s:r:C:c:x:k:t:h", lo,
                              NULL)) != -1) {
        switch (opt) {
        case 'H':
            g.host = optarg;
            break;
        case 'p':
            g.port = opt_int(optarg, 1, 65535, "port");
            break;
        case 'q':
            qos = opt_int(optarg, 0, 2, "qos");
            break;
        case 'n':
            n = opt_int(optarg, 1, 2000000000, "messages");
            break;
        case 'P':
            g.P = opt_int(optarg, 1, 100000, "publishers");
            break;
        case 'S':
            g.S = opt_int(optarg, 1, 100000, "subscribers");
            break;
        case 'K':
            g.K = opt_int(optarg, 1, 100000, "pairs");
            break;
        case 'W':
            g.W = opt_int(optarg, 1, 65000, "window");
            break;
        case 's':
            g.size = opt_int(optarg, PAYLOAD_MIN, PAYLOAD_MAX, "size");
            break;
        case 'r':
            g.rate = opt_dbl(optarg, "rate");
            break;
        case 'C':
            g.C = opt_int(optarg, 1, 1000000, "connections");
            break;
        case 'c':
            g.conc = opt_int(optarg, 1, 100000, "concurrency");
            break;
        case 1:
            g.proxy = 1;
            break;
        case 'x':
            g.exchange = (uint64_t)opt_int(optarg, 0, 2000000000, "exchange");
            break;
        case 2:
            g.hold_s = opt_dbl(optarg, "hold");
            break;
        case 'k':
            g.keepalive = opt_int(optarg, 0, 65535, "keepalive");
            break;
        case 3:
            g.pid = opt_int(optarg, 1, 1 << 30, "pid");
            break;
        case 4:
            g.tag = optarg;
            break;
        case 't':
            g.timeout_s = opt_dbl(optarg, "timeout");
            break;
        case 5:
            g.drain_s = opt_dbl(optarg, "drain");
            break;
        case 6:
            g.stall_s = opt_dbl(optarg, "stall");
            break;
        case 7:
            g.quiet = 1;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc || g.rate <= 0) {
        usage(stderr);
        return 2;
    }
    g.qos = qos >= 0 ? qos : g.sc == SC_IDLE ? 1 : 0;
    if (n > 0)
        g.n = (uint64_t)n;
    else if (g.sc == SC_LATENCY)
        g.n = (uint64_t)(g.rate * 5);
    else {
        g.n = g.qos == 0 ? 200000 : g.qos == 1 ? 100000 : 50000;
        if (g.sc == SC_FANOUT) g.n = g.n / (uint64_t)g.S + 1;
    }
    if (g.pid && proc_cpu_s() < 0) {
        fprintf(stderr, "mqttpx-bench: cannot read /proc/%d/stat\n", g.pid);
        return 2;
    }

    g.addr.sin_family = AF_INET;
    g.addr.sin_port = htons((uint16_t)g.port);
    if (inet_pton(AF_INET, g.host, &g.addr.sin_addr) != 1) {
        fprintf(stderr, "mqttpx-bench: --host needs an IPv4 address\n");
        return 2;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max; /* idle: 10000 sockets */
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    snprintf(g.prefix, sizeof g.prefix, "bench/%d", (int)getpid());
    g.rbuf = xcalloc(RBUF_SIZE, 1);
    g.tmpl = xcalloc(PAYLOAD_MAX, 1);
    memset(g.tmpl, 'x', PAYLOAD_MAX);

    int rc;
    if (g.sc == SC_CONNECT)
        rc = run_connect();
    else if (g.sc == SC_IDLE)
        rc = run_idle();
    else
        rc = run_traffic();
    fflush(stdout);
    teardown();
    return rc;
}
