/* tests/unit_proxy.c: unit tests of the PROXY v1/v2 parser (section [6]
 * of mqttpx.c) against every vector of the spec's proxy-vectors.json
 * (tests/proxy_vectors.h, made by tests/gen_proxy_vectors.py), each fed
 * as its reads, in one read, split at every point and byte by byte, plus
 * edge cases beyond the vectors. Ends with "N passed, N failed".
 * mqttpx.c comes first: it sets the feature-test macros. */
int mqttpx_main(int argc, char **argv); /* for -Wmissing-prototypes */
#define main mqttpx_main
#include "../mqttpx.c"
#undef main

#include <arpa/inet.h>
#include <sys/mman.h>

#include "proxy_vectors.h"

static int n_pass, n_fail;
#define CHECK(x)                                                               \
    ((void)((x) ? n_pass++                                                     \
                : (n_fail++, printf("%s:%d: %s\n", __FILE__, __LINE__, #x))))
/* CHECKV: a check about vector v, failure names it and the feeding */
#define CHECKV(x)                                                              \
    ((void)((x) ? n_pass++                                                     \
                : (n_fail++, printf("%s [%s]: %s:%d: %s\n", v->id, how,        \
                                    __FILE__, __LINE__, #x))))

/* Inputs end just before a PROT_NONE page, so an over-read faults even
 * without ASan (STYLE.md section 8). */
static uint8_t *guard_end;
static size_t page;

static void
guard_init(void)
{
    uint8_t *base;

    page = (size_t)sysconf(_SC_PAGESIZE);
    base = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED || mprotect(base + page, page, PROT_NONE) != 0) {
        perror("mmap");
        exit(2);
    }
    guard_end = base + page;
}

static const uint8_t *
guarded(const uint8_t *p, size_t n)
{
    if (n > page) abort();
    if (n > 0) memcpy(guard_end - n, p, n);
    return guard_end - n;
}

static enum mqx_rc
parse_at(const uint8_t *data, size_t n, int mode, struct mqx_proxy *out,
         size_t *used)
{
    return mqx_proxy_parse(guarded(data, n), n, mode, out, used);
}

static int
vstr_eq(const struct vstr *want, const struct mqx_str *got)
{
    if (want->p == NULL) return got->p == NULL;
    return got->p != NULL && got->len == (uint32_t)want->len &&
           memcmp(got->p, want->p, got->len) == 0;
}

static int
hex_eq(const char *want, const struct mqx_str *got)
{
    char h[2 * MQX_PP2_UNIQUE_ID_MAX + 1];
    uint32_t i;

    if (want == NULL) return got->p == NULL;
    if (got->p == NULL || got->len > MQX_PP2_UNIQUE_ID_MAX) return 0;
    for (i = 0; i < got->len; i++) {
        h[2 * i] = "0123456789abcdef"[got->p[i] >> 4];
        h[2 * i + 1] = "0123456789abcdef"[got->p[i] & 15];
    }
    h[2 * i] = '\0';
    return strcmp(h, want) == 0;
}

/* Every expectation of vector v on one parse result. */
static void
check_result(const struct vec *v, const char *how, enum mqx_rc rc,
             const struct mqx_proxy *pp, size_t used)
{
    char a[MQX_PROXY_ADDRSTRLEN], full[256];
    struct mqx_str user = {NULL, 0};

    if (v->header == VEC_NEED) {
        CHECKV(rc == MQX_MORE);
        return;
    }
    if (v->header == VEC_REJECT) {
        CHECKV(rc == MQX_BAD || rc == MQX_BIG);
        CHECKV(pp->reason != NULL && pp->err != MQX_PROXY_OK);
        if (pp->reason != NULL && v->reason != NULL) {
            snprintf(full, sizeof full, "%s%s", pp->reason,
                     mqx_proxy_hint_str(pp->hint));
            CHECKV(strcmp(full, v->reason) == 0);
            if (strcmp(full, v->reason) != 0)
                printf("  got '%s' want '%s'\n", full, v->reason);
        }
        return;
    }
    CHECKV(rc == MQX_DONE);
    if (rc != MQX_DONE) return;
    CHECKV(pp->reason == NULL && pp->err == MQX_PROXY_OK);
    CHECKV(v->consumed < 0 || used == (size_t)v->consumed);
    CHECKV(v->len - used == v->left_len &&
           (v->left_len == 0 ||
            memcmp(v->data + used, v->left, v->left_len) == 0)); /* R17 */
    CHECKV(pp->version == v->mode);
    CHECKV(v->command < 0 || pp->command == v->command);
    if (v->client == NULL) { /* real peer */
        CHECKV(mqx_proxy_fmt_client(a, sizeof a, pp) == 0 && a[0] == '\0');
        CHECKV(pp->command != MQX_PROXY_CMD_PROXY);
    } else {
        CHECKV(mqx_proxy_fmt_client(a, sizeof a, pp) == strlen(v->client));
        CHECKV(strcmp(a, v->client) == 0);
        if (strcmp(a, v->client) != 0)
            printf("  got '%s' want '%s'\n", a, v->client);
    }
    if (v->dest != NULL) {
        mqx_proxy_fmt_dest(a, sizeof a, pp);
        CHECKV(strcmp(a, v->dest) == 0);
    }
    if (v->policy != NULL)
        CHECKV(strcmp(mqx_proxy_verdict_str(
                          mqx_proxy_policy(pp, v->req_tls, v->req_cert)),
                      v->policy) == 0);
    if (v->user_kind == 1) CHECKV(mqx_proxy_cn_username(pp, &user) == 0);
    if (v->user_kind == 2) {
        CHECKV(mqx_proxy_cn_username(pp, &user) == 1);
        CHECKV(user.len == strlen(v->user) &&
               memcmp(user.p, v->user, user.len) == 0);
    }
    if (v->mode == 2) { /* reference_info TLS facts and TLVs */
        CHECKV(pp->tls.present == v->tls_present);
        CHECKV(pp->tls.client == v->tls_client);
        CHECKV(pp->tls.verify == (uint32_t)v->tls_verify);
        CHECKV(vstr_eq(&v->version, &pp->tls.version));
        CHECKV(vstr_eq(&v->cn, &pp->tls.cn));
        CHECKV(vstr_eq(&v->cipher, &pp->tls.cipher));
        CHECKV(vstr_eq(&v->key_alg, &pp->tls.key_alg));
        CHECKV(vstr_eq(&v->sig_alg, &pp->tls.sig_alg));
        CHECKV(vstr_eq(&v->alpn, &pp->alpn));
        CHECKV(vstr_eq(&v->authority, &pp->authority));
        CHECKV(hex_eq(v->unique_id_hex, &pp->unique_id));
        CHECKV(pp->crc_verified == v->crc_verified);
    }
}

/* Feeds v->data in chunks, calling the parser on the whole prefix after
 * each (R15), and checks the first result that is not MQX_MORE. */
static void
feed(const struct vec *v, const char *how, const size_t *chunk, int n)
{
    struct mqx_proxy pp;
    enum mqx_rc rc = MQX_MORE;
    size_t fed = 0, used = 0;
    int i;

    for (i = 0; i < n && rc == MQX_MORE; i++) {
        fed += chunk[i];
        rc = parse_at(v->data, fed, v->mode, &pp, &used);
        CHECKV(used <= fed);
    }
    CHECKV(fed <= v->len);
    check_result(v, how, rc, &pp, used);
}

static int
run_vector(const struct vec *v)
{
    int fail0 = n_fail;
    size_t chunk[2], k, used_all = 0, first_bad = 0;
    size_t *ones = malloc(v->len * sizeof *ones);
    struct mqx_proxy pp, pp_full;
    enum mqx_rc rc, rc_full;
    const char *how = "prefixes";
    char label[32];

    feed(v, "reads", v->reads, v->n_reads);
    chunk[0] = v->len;
    feed(v, "one read", chunk, 1);
    for (k = 1; k < v->len; k++) { /* every split point */
        chunk[0] = k;
        chunk[1] = v->len - k;
        snprintf(label, sizeof label, "split@%zu", k);
        feed(v, label, chunk, 2);
    }
    for (k = 0; k < v->len; k++)
        ones[k] = 1;
    feed(v, "byte by byte", ones, (int)v->len);
    free(ones);

    /* Prefix laws: a valid header's strict prefixes are MQX_MORE and every
     * longer input gives the same DONE; a refusal (R16) stays one, with the
     * same reason, however many more bytes come. */
    rc_full = parse_at(v->data, v->len, v->mode, &pp_full, &used_all);
    for (k = 0; k <= v->len; k++) {
        size_t used;

        rc = parse_at(v->data, k, v->mode, &pp, &used);
        if (rc_full == MQX_DONE && k < used_all) CHECKV(rc == MQX_MORE);
        if (rc_full == MQX_DONE && k >= used_all)
            CHECKV(rc == MQX_DONE && used == used_all);
        if (rc_full == MQX_MORE) CHECKV(rc == MQX_MORE);
        if (rc_full == MQX_BAD || rc_full == MQX_BIG) {
            if (first_bad == 0 && rc != MQX_MORE) first_bad = k;
            if (first_bad != 0)
                CHECKV(rc == rc_full && pp.reason == pp_full.reason &&
                       pp.hint == pp_full.hint);
        }
    }
    if (v->header == VEC_REJECT) /* report how early it was refused */
        printf("  %-6s refused at byte %4zu of %4zu: %s%s\n", v->id, first_bad,
               v->len, pp_full.reason, mqx_proxy_hint_str(pp_full.hint));
    return n_fail == fail0;
}

/* ---- edge cases beyond the vectors ---- */

static enum mqx_rc
parse_str(const char *s, int mode, struct mqx_proxy *pp, size_t *used)
{
    return parse_at((const uint8_t *)s, strlen(s), mode, pp, used);
}

static void
test_crc32c(void)
{
    const uint8_t *s = (const uint8_t *)"123456789";

    CHECK(mqx_crc32c(0, s, 9) == 0xE3069283u); /* the standard check value */
    CHECK(mqx_crc32c(mqx_crc32c(0, s, 4), s + 4, 5) == 0xE3069283u);
    CHECK(mqx_crc32c(0, s, 0) == 0);
}

static void
test_v1_edges(void)
{
    struct mqx_proxy pp;
    size_t used;
    char a[MQX_PROXY_ADDRSTRLEN];

    CHECK(parse_str("", 1, &pp, &used) == MQX_MORE);
    CHECK(parse_str("", 2, &pp, &used) == MQX_MORE);
    CHECK(parse_str("PROXY UNKNOWN\r\n", 3, &pp, &used) == MQX_BAD &&
          pp.err == MQX_PROXY_E_MODE);
    CHECK(parse_str("PROXY UNKNOWN\r\n", 1, &pp, &used) == MQX_DONE &&
          used == 15 && pp.command == MQX_PROXY_CMD_UNKNOWN &&
          pp.family == MQX_PROXY_AF_UNSPEC);
    CHECK(parse_str("PROXY UNKNOWN \r\n", 1, &pp, &used) == MQX_DONE); /* R24 */
    CHECK(parse_str("PROXY UNKNOWN garbage\tx\r\n", 1, &pp, &used) == MQX_DONE);
    CHECK(parse_str("PROXY UNKNOWNX\r\n", 1, &pp, &used) == MQX_BAD &&
          pp.err == MQX_PROXY_E_V1_MALFORMED);
    CHECK(parse_str("PROXY \r\n", 1, &pp, &used) == MQX_BAD &&
          pp.err == MQX_PROXY_E_V1_MALFORMED);
    CHECK(parse_str("PROXY UNKNOWN \xc3\xa9\r\n", 1, &pp, &used) == MQX_BAD &&
          pp.err == MQX_PROXY_E_V1_ASCII);
    CHECK(parse_str("PROXY UNKNOWN\rX", 1, &pp, &used) == MQX_BAD &&
          pp.err == MQX_PROXY_E_V1_CR);
    CHECK(parse_str("PROXY UNKNOWN\r", 1, &pp, &used) == MQX_MORE);
    CHECK(parse_str("PROXY TCP4 1.2.3.4 5.6.7.8 1 65535\r\n", 1, &pp, &used) ==
          MQX_DONE);
    CHECK(parse_str("PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", 1, &pp, &used) ==
              MQX_BAD &&
          pp.err == MQX_PROXY_E_V1_PORT);
    CHECK(parse_str("PROXY TCP4 1.2.3.4 5.6.7.8 1 123456\r\n", 1, &pp, &used) ==
              MQX_BAD &&
          pp.err == MQX_PROXY_E_V1_PORT);
    CHECK(parse_str("PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n", 1, &pp, &used) ==
              MQX_BAD &&
          pp.err == MQX_PROXY_E_V1_ADDR);
    CHECK(parse_str("PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", 1, &pp, &used) ==
              MQX_BAD &&
          pp.err == MQX_PROXY_E_V1_ADDR);
    CHECK(parse_str("PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", 1, &pp, &used) ==
              MQX_BAD &&
          pp.err == MQX_PROXY_E_V1_ADDR);
    CHECK(parse_str("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", 1, &pp, &used) ==
              MQX_BAD &&
          pp.err == MQX_PROXY_E_V1_MALFORMED);
    CHECK(parse_str("PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", 1, &pp, &used) ==
              MQX_BAD &&
          pp.err == MQX_PROXY_E_V1_MALFORMED);
    /* R30 for v1 too: a mapped TCP6 source is shown as IPv4 */
    CHECK(parse_str("PROXY TCP6 ::ffff:192.0.2.5 ::1 6275 1883\r\n", 1, &pp,
                    &used) == MQX_DONE);
    mqx_proxy_fmt_client(a, sizeof a, &pp);
    CHECK(strcmp(a, "192.0.2.5:6275") == 0);
    /* R54 hints and R13 mismatches, decided on the first bytes */
    CHECK(parse_str("GET / HTTP/1.1\r\n", 1, &pp, &used) == MQX_BAD &&
          pp.hint == MQX_PROXY_HINT_HTTP);
    CHECK(strcmp(mqx_proxy_hint_str(pp.hint),
                 " (looks like HTTP without PROXY header)") == 0);
    CHECK(strcmp(mqx_proxy_hint_str(MQX_PROXY_HINT_V1_ON_V2), "") == 0);
    CHECK(parse_str("GET / HTTP/1.1\r\n", 2, &pp, &used) == MQX_BAD &&
          pp.hint == MQX_PROXY_HINT_HTTP &&
          strcmp(pp.reason, "bad v2 signature") == 0);
    CHECK(parse_str("\x16\x03\x01", 1, &pp, &used) == MQX_BAD &&
          pp.hint == MQX_PROXY_HINT_TLS);
    CHECK(parse_str("\r", 1, &pp, &used) == MQX_BAD &&
          pp.err == MQX_PROXY_E_V2_ON_V1);
    CHECK(parse_str("P", 2, &pp, &used) == MQX_BAD &&
          pp.err == MQX_PROXY_E_V1_ON_V2);
    CHECK(parse_str("PROXX", 1, &pp, &used) == MQX_BAD &&
          pp.err == MQX_PROXY_E_V1_SIG && pp.hint == MQX_PROXY_HINT_NONE);
}

/* A v2 header: signature, ver/cmd, fam, body (len from n). */
static size_t
v2hdr(uint8_t *dst, uint8_t vc, uint8_t fam, const uint8_t *body, size_t n)
{
    memcpy(dst, pp_sig, 12);
    dst[12] = vc;
    dst[13] = fam;
    dst[14] = (uint8_t)(n >> 8);
    dst[15] = (uint8_t)n;
    if (n > 0) memcpy(dst + 16, body, n);
    return 16 + n;
}

static void
test_v2_edges(void)
{
    static uint8_t b[MQX_PROXY_V2_MAX + 64], body[MQX_PROXY_V2_MAX];
    struct mqx_proxy pp;
    struct mqx_str user;
    size_t used, n;
    char a[MQX_PROXY_ADDRSTRLEN];

    /* R16: PROXY + bad family is refused at byte 14, size at byte 16 */
    n = v2hdr(b, 0x21, 0x12, NULL, 0);
    CHECK(parse_at(b, 14, 2, &pp, &used) == MQX_BAD &&
          pp.err == MQX_PROXY_E_V2_PROXY_FAMILY);
    n = v2hdr(b, 0x21, 0x11, NULL, 0);
    b[14] = 0x0f;
    b[15] = 0xf1; /* 16 + 4081 = 4097 */
    CHECK(parse_at(b, 16, 2, &pp, &used) == MQX_BIG &&
          pp.err == MQX_PROXY_E_V2_TOO_LARGE);
    b[15] = 0xf0; /* exactly 4096: allowed, waits for the body */
    CHECK(parse_at(b, 16, 2, &pp, &used) == MQX_MORE);
    /* a 4096-byte header of one big custom TLV is accepted */
    memset(body, 0, sizeof body);
    body[12] = 0xe0;
    body[13] = (uint8_t)((4080 - 15) >> 8);
    body[14] = (uint8_t)(4080 - 15);
    n = v2hdr(b, 0x21, 0x11, body, 4080);
    CHECK(n == MQX_PROXY_V2_MAX);
    CHECK(parse_at(b, n, 2, &pp, &used) == MQX_DONE && used == n);
    /* R28 early: an overrunning TLV is refused once its header arrived */
    memset(body, 0, sizeof body);
    body[12] = 0x61;
    body[13] = 0x61;
    body[14] = 0x61;
    n = v2hdr(b, 0x21, 0x11, body, 501);
    CHECK(parse_at(b, 16 + 12 + 2, 2, &pp, &used) == MQX_MORE);
    CHECK(parse_at(b, 16 + 12 + 3, 2, &pp, &used) == MQX_BAD &&
          pp.err == MQX_PROXY_E_TLV_OVERRUN);
    /* AUTHORITY and UNIQUE_ID limits, CRC length, SSL sub-TLV duplicate */
    memset(body, 0, sizeof body);
    body[12] = MQX_PP2_TYPE_AUTHORITY;
    body[13] = 1;
    body[14] = 0; /* 256 bytes */
    n = v2hdr(b, 0x21, 0x11, body, 12 + 3 + 256);
    CHECK(parse_at(b, n, 2, &pp, &used) == MQX_BAD &&
          strcmp(pp.reason, "AUTHORITY too long") == 0);
    body[13] = 0;
    body[14] = 255;
    n = v2hdr(b, 0x21, 0x11, body, 12 + 3 + 255);
    CHECK(parse_at(b, n, 2, &pp, &used) == MQX_DONE && pp.authority.len == 255);
    body[12] = MQX_PP2_TYPE_UNIQUE_ID;
    body[14] = 129;
    n = v2hdr(b, 0x21, 0x11, body, 12 + 3 + 129);
    CHECK(parse_at(b, n, 2, &pp, &used) == MQX_BAD &&
          strcmp(pp.reason, "UNIQUE_ID longer than 128") == 0);
    {
        static const uint8_t ssl[] = {0x20, 0,    11, 7, 0,    0, 0,
                                      0,    0x22, 0,  0, 0x22, 0, 0};
        memset(body, 0, 12);
        memcpy(body + 12, ssl, sizeof ssl);
        n = v2hdr(b, 0x21, 0x11, body, 12 + sizeof ssl);
        CHECK(parse_at(b, n, 2, &pp, &used) == MQX_BAD &&
              strcmp(pp.reason, "duplicate SSL sub-TLV 0x22") == 0);
        n = v2hdr(b, 0x21, 0x11, body, 12 + sizeof ssl - 3);
        b[16 + 12 + 2] = 8;
        CHECK(parse_at(b, n, 2, &pp, &used) == MQX_DONE &&
              pp.tls.cn.p != NULL && pp.tls.cn.len == 0 &&
              !mqx_proxy_cn_username(&pp, &(struct mqx_str){NULL, 0}));
    }
    /* every SSL sub-TLV kind; CLIENT_CERT is skipped but measured */
    {
        static const uint8_t ssl[] = {
            0x20, 0,    29,   0x05, 0,   0,   0,    0, 0x26, 0,  2,
            'g',  'x',  0x27, 0,    1,   's', 0x28, 0, 3,    1,  2,
            3,    0x7f, 0,    2,    'u', 'k', 0x22, 0, 1,    'c'};
        memset(body, 0, 12);
        memcpy(body + 12, ssl, sizeof ssl);
        n = v2hdr(b, 0x21, 0x11, body, 12 + sizeof ssl);
        CHECK(parse_at(b, n, 2, &pp, &used) == MQX_DONE);
        CHECK(pp.tls.group.len == 2 && pp.tls.sig_scheme.len == 1 &&
              pp.tls.has_client_cert && pp.tls.client_cert_len == 3 &&
              pp.tls.cn.len == 1 && pp.tls.version.p == NULL);
        CHECK(mqx_proxy_cert_ok(&pp) && mqx_proxy_cn_username(&pp, &user) &&
              user.len == 1 && user.p[0] == 'c');
    }
    /* R31: TLVs of a LOCAL header are validated too (CRC here) */
    {
        static const uint8_t crc[] = {0x03, 0, 4, 0, 0, 0, 0};
        uint32_t c;

        n = v2hdr(b, 0x20, 0x00, crc, sizeof crc);
        CHECK(parse_at(b, n, 2, &pp, &used) == MQX_BAD &&
              pp.err == MQX_PROXY_E_CRC_MISMATCH);
        c = mqx_crc32c(0, b, n);
        b[19] = (uint8_t)(c >> 24);
        b[20] = (uint8_t)(c >> 16);
        b[21] = (uint8_t)(c >> 8);
        b[22] = (uint8_t)c;
        CHECK(parse_at(b, n, 2, &pp, &used) == MQX_DONE && pp.crc_verified &&
              pp.command == MQX_PROXY_CMD_LOCAL);
    }
    /* ALPN may repeat (last kept); AUTHORITY may not */
    {
        static const uint8_t t[] = {1,   0, 1, 'a', 1, 0, 1,
                                    'b', 2, 0, 0,   2, 0, 0};
        memset(body, 0, 12);
        memcpy(body + 12, t, sizeof t);
        n = v2hdr(b, 0x21, 0x11, body, 12 + 8);
        CHECK(parse_at(b, n, 2, &pp, &used) == MQX_DONE && pp.alpn.len == 1 &&
              pp.alpn.p[0] == 'b');
        n = v2hdr(b, 0x21, 0x11, body, 12 + sizeof t);
        CHECK(parse_at(b, n, 2, &pp, &used) == MQX_BAD &&
              strcmp(pp.reason, "duplicate TLV 0x02") == 0);
    }
    /* LOCAL with a UDP/IPv6 block: accepted, block skipped (R31) */
    memset(body, 0, sizeof body);
    n = v2hdr(b, 0x20, 0x22, body, 36);
    CHECK(parse_at(b, n, 2, &pp, &used) == MQX_DONE &&
          pp.command == MQX_PROXY_CMD_LOCAL &&
          pp.family == MQX_PROXY_AF_UNSPEC && pp.fam_byte == 0x22);
    CHECK(mqx_proxy_fmt_client(a, sizeof a, &pp) == 0);
    /* UNIX: a path of 108 bytes without NUL; non-printables escaped (R56) */
    memset(body, 'p', 216);
    body[1] = '\n';
    body[2] = '\\';
    n = v2hdr(b, 0x21, 0x31, body, 216);
    CHECK(parse_at(b, n, 2, &pp, &used) == MQX_DONE && pp.src_path.len == 108 &&
          pp.dst_path.len == 108);
    CHECK(mqx_proxy_fmt_client(a, sizeof a, &pp) == 108 + 6 + 2);
    CHECK(strncmp(a, "p\\x0a\\x5cppp", 11) == 0);
    CHECK(mqx_proxy_fmt_client(a, 20, &pp) == 0 && a[0] == '\0');
    /* the LOCAL health check of V2-07 fails require_tls at CONNECT (R33) */
    {
        static const uint8_t v207[] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                       0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
                                       0x20, 0x00, 0x00, 0x08, 0x20, 0x00,
                                       0x05, 0x00, 0x00, 0x00, 0x00, 0x00};
        CHECK(parse_at(v207, sizeof v207, 2, &pp, &used) == MQX_DONE);
        CHECK(mqx_proxy_policy(&pp, 1, 1) == MQX_PROXY_DEFER);
        CHECK(mqx_proxy_tls_check(&pp, 1, 1) == MQX_PROXY_NO_TLS);
        CHECK(mqx_proxy_tls_check(&pp, 0, 1) == MQX_PROXY_NO_CERT); /* R42 */
        CHECK(mqx_proxy_tls_check(&pp, 0, 0) == MQX_PROXY_ACCEPT);
    }
}

static void
test_fmt(void)
{
    static const struct {
        const char *in, *out;
    } t[] = {
        {"2001:db8::1", "2001:db8::1:7"},
        {"::", ":::7"},
        {"::1", "::1:7"},
        {"1::", "1:::7"},
        {"2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1:7"}, /* no "::" */
        {"2001:0:0:1:0:0:0:1", "2001:0:0:1::1:7"},          /* longest */
        {"2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1:7"},    /* first */
        {"::ffff:192.0.2.5", "192.0.2.5:7"},                /* R30 */
        {"::192.0.2.5", "::c000:205:7"},                    /* not mapped */
        {"::ffff:0:192.0.2.5", "::ffff:0:c000:205:7"},      /* SIIT */
        {"FFFF:0:0:0:0:0:0:0", "ffff:::7"},
    };
    uint8_t ip[16];
    char a[MQX_PROXY_ADDRSTRLEN];
    size_t i;

    for (i = 0; i < sizeof t / sizeof t[0]; i++) {
        CHECK(inet_pton(AF_INET6, t[i].in, ip) == 1);
        mqx_proxy_fmt_addr(a, sizeof a, MQX_PROXY_AF_INET6, ip, 7);
        CHECK(strcmp(a, t[i].out) == 0);
        if (strcmp(a, t[i].out) != 0)
            printf("  fmt %s: got %s want %s\n", t[i].in, a, t[i].out);
    }
    {
        static const uint8_t raw[] = {'a', 'b', 0, 'c', '\\', 0xc3};
        struct mqx_str r = {raw, sizeof raw};
        const uint8_t *sig;

        CHECK(mqx_proxy_escape(a, sizeof a, r) == 15 &&
              strcmp(a, "ab\\x00c\\x5c\\xc3") == 0);
        CHECK(mqx_proxy_escape(a, 7, r) == 6 && strcmp(a, "ab\\x00") == 0);
        CHECK(mqx_proxy_escape(a, 6, r) == 2 && strcmp(a, "ab") == 0);
        CHECK(mqx_proxy_escape(a, 1, r) == 0 && a[0] == '\0');
        r.p = NULL;
        CHECK(mqx_proxy_escape(a, sizeof a, r) == 0 && a[0] == '\0');
        CHECK(inet_pton(AF_INET6, "::ffff:192.0.2.5", ip) == 1);
        CHECK(mqx_proxy_addr_norm(MQX_PROXY_AF_INET6, ip, &sig) ==
                  MQX_PROXY_AF_INET &&
              sig == ip + 12 && sig[0] == 192);
        CHECK(inet_pton(AF_INET6, "::192.0.2.5", ip) == 1);
        CHECK(mqx_proxy_addr_norm(MQX_PROXY_AF_INET6, ip, &sig) ==
                  MQX_PROXY_AF_INET6 &&
              sig == ip);
        CHECK(mqx_proxy_addr_norm(MQX_PROXY_AF_INET, ip, &sig) ==
                  MQX_PROXY_AF_INET &&
              sig == ip);
    }
    memset(ip, 0xff, 16);
    CHECK(mqx_proxy_fmt_addr(a, sizeof a, MQX_PROXY_AF_INET6, ip, 65535) == 45);
    CHECK(mqx_proxy_fmt_addr(a, 46, MQX_PROXY_AF_INET6, ip, 65535) == 45);
    CHECK(mqx_proxy_fmt_addr(a, 45, MQX_PROXY_AF_INET6, ip, 65535) == 0 &&
          a[0] == '\0');
    CHECK(mqx_proxy_fmt_addr(a, 0, MQX_PROXY_AF_INET, ip, 1) == 0);
    CHECK(mqx_proxy_fmt_addr(a, sizeof a, MQX_PROXY_AF_UNIX, ip, 1) == 0);
    CHECK(mqx_proxy_fmt_addr(a, sizeof a, MQX_PROXY_AF_INET, ip, 0) == 17 &&
          strcmp(a, "255.255.255.255:0") == 0);
}

/* pp_pton4/6 must agree with glibc's inet_pton (what proxy-ref.py uses):
 * fixed tricky strings plus random ones from a small alphabet. */
static void
test_pton_vs_libc(void)
{
    static const char *const fixed[] = {
        "",
        ":",
        "::",
        ":::",
        "1::",
        "::1",
        "1:2:3:4:5:6:7:8",
        "1:2:3:4:5:6:7::",
        "::2:3:4:5:6:7:8",
        "1:2:3:4:5:6:7:8:9",
        "1::2::3",
        "12345::",
        "::ffff:1.2.3.4",
        "::1.2.3.4",
        "1:2:3:4:5:6:1.2.3.4",
        "1.2.3.4",
        "1:2:3:4:5:6:7:1.2.3.4",
        "::1.2.3",
        "::1.2.3.4.5",
        ":1::",
        "1:",
        "0.0.0.0",
        "255.255.255.255",
        "256.1.1.1",
        "01.1.1.1",
        "1..1.1",
        "1.1.1.1.",
        ".1.1.1",
        "1.1.1",
        "0x1.1.1.1",
        " 1.1.1.1",
        "::ffff:01.2.3.4",
        "fe80::1%eth0",
        "::FFFF:1.2.3.4",
        "a:b:c:d:e:f:0:1",
        "abcd:",
    };
    const char alpha[] = "0123456789abcdefF:.:.:x ";
    char s[48];
    uint8_t x[16], y[16];
    size_t i, k;
    int bad4 = 0, bad6 = 0;
    unsigned seed = 12345;

    for (i = 0; i < 400000 + sizeof fixed / sizeof fixed[0]; i++) {
        size_t n;
        int a, b;

        if (i < sizeof fixed / sizeof fixed[0]) {
            snprintf(s, sizeof s, "%s", fixed[i]);
        } else {
            seed = seed * 1103515245u + 12345u;
            n = (seed >> 16) % 42;
            for (k = 0; k < n; k++) {
                seed = seed * 1103515245u + 12345u;
                s[k] = alpha[(seed >> 16) % (sizeof alpha - 1)];
            }
            s[n] = '\0';
        }
        n = strlen(s);
        a = inet_pton(AF_INET, s, x) == 1;
        b = pp_pton4((const uint8_t *)s, n, y) == 0;
        if (a != b || (a && memcmp(x, y, 4) != 0)) {
            if (bad4++ < 5) printf("  pton4 differs on '%s'\n", s);
        }
        a = inet_pton(AF_INET6, s, x) == 1;
        b = pp_pton6((const uint8_t *)s, n, y) == 0;
        if (a != b || (a && memcmp(x, y, 16) != 0)) {
            if (bad6++ < 5) printf("  pton6 differs on '%s'\n", s);
        }
    }
    CHECK(bad4 == 0);
    CHECK(bad6 == 0);
}

static void
test_cidr(void)
{
    struct mqx_cidr c, list[2];
    uint8_t a4[4] = {10, 1, 2, 3}, b4[4] = {11, 0, 0, 0};
    uint8_t m6[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 9, 9, 9};
    uint8_t v6[16] = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0,
                      0,    0,    0,    0,    0, 0, 0, 5};
    uint8_t w6[16] = {0x20, 0x01, 0x0d, 0xb9};

#define CP(s) mqx_proxy_cidr_parse(s, strlen(s), &c)
    CHECK(CP("10.0.0.0/8") == MQX_DONE && c.family == MQX_PROXY_AF_INET &&
          c.bits == 8 && !c.loose);
    CHECK(mqx_cidr_match(&c, MQX_PROXY_AF_INET, a4));
    CHECK(!mqx_cidr_match(&c, MQX_PROXY_AF_INET, b4));
    CHECK(mqx_cidr_match(&c, MQX_PROXY_AF_INET6, m6)); /* R10 mapped peer */
    CHECK(!mqx_cidr_match(&c, MQX_PROXY_AF_INET6, v6));
    CHECK(CP("10.1.2.3") == MQX_DONE && c.bits == 32 &&
          mqx_cidr_match(&c, MQX_PROXY_AF_INET, a4));
    CHECK(CP("10.1.2.2/31") == MQX_DONE &&
          mqx_cidr_match(&c, MQX_PROXY_AF_INET, a4));
    CHECK(CP("10.1.2.4/31") == MQX_DONE &&
          !mqx_cidr_match(&c, MQX_PROXY_AF_INET, a4));
    CHECK(CP("10.0.0.1/8") == MQX_DONE && c.loose && c.addr[3] == 0);
    CHECK(CP("0.0.0.0/0") == MQX_DONE &&
          mqx_cidr_match(&c, MQX_PROXY_AF_INET, b4) &&
          !mqx_cidr_match(&c, MQX_PROXY_AF_INET6, v6));
    CHECK(CP("2001:db8::/32") == MQX_DONE && c.family == MQX_PROXY_AF_INET6 &&
          mqx_cidr_match(&c, MQX_PROXY_AF_INET6, v6) &&
          !mqx_cidr_match(&c, MQX_PROXY_AF_INET6, w6));
    CHECK(CP("2001:db8::5") == MQX_DONE && c.bits == 128 &&
          mqx_cidr_match(&c, MQX_PROXY_AF_INET6, v6));
    CHECK(CP("2001:db8::/33") == MQX_DONE && c.bits == 33 &&
          mqx_cidr_match(&c, MQX_PROXY_AF_INET6, v6));
    CHECK(CP("::ffff:10.0.0.0/104") == MQX_DONE &&
          c.family == MQX_PROXY_AF_INET && c.bits == 8 &&
          mqx_cidr_match(&c, MQX_PROXY_AF_INET, a4));
    CHECK(CP("10.0.0.0/33") == MQX_BAD);
    CHECK(CP("10.0.0.0/") == MQX_BAD);
    CHECK(CP("10.0.0.0/08") == MQX_BAD);
    CHECK(CP("10.0.0.0/-1") == MQX_BAD);
    CHECK(CP("/8") == MQX_BAD);
    CHECK(CP("::/129") == MQX_BAD);
    CHECK(CP("10.0.0/8") == MQX_BAD);
    CHECK(CP("") == MQX_BAD);
    CHECK(mqx_proxy_cidr_parse("10.0.0.0/8", 4, &c) == MQX_BAD); /* len */
    CHECK(mqx_proxy_cidr_parse("192.0.2.0/24", 12, &list[0]) == MQX_DONE);
    CHECK(mqx_proxy_cidr_parse("10.0.0.0/8 junk", 10, &list[1]) == MQX_DONE);
    CHECK(mqx_cidr_match_list(list, 2, MQX_PROXY_AF_INET, a4));
    CHECK(!mqx_cidr_match_list(list, 2, MQX_PROXY_AF_INET, b4));
    CHECK(!mqx_cidr_match_list(list, 0, MQX_PROXY_AF_INET, a4));
#undef CP
}

static void
test_utf8(void)
{
    static const struct {
        const char *s;
        int ok;
    } t[] = {
        {"device-42", 1},
        {"\xc3\xa9", 1},
        {"\xe2\x82\xac", 1},
        {"\xf0\x9f\x98\x80", 1},
        {"\xc0\x80", 0},
        {"\xc1\xbf", 0},
        {"\xe0\x9f\xbf", 0},
        {"\xed\xa0\x80", 0},
        {"\xf4\x90\x80\x80", 0},
        {"\xf5\x80\x80\x80", 0},
        {"\xc3", 0},
        {"\xe2\x82", 0},
        {"\x80", 0},
        {"\xef\xbf\xbf", 1},
        {"\xf4\x8f\xbf\xbf", 1},
    };
    size_t i;

    for (i = 0; i < sizeof t / sizeof t[0]; i++)
        CHECK(pp_utf8_ok((const uint8_t *)t[i].s, strlen(t[i].s)) == t[i].ok);
    CHECK(!pp_utf8_ok((const uint8_t *)"a\0b", 3));
}

int
main(void)
{
    size_t i;
    int vpass = 0, vfail = 0;

    guard_init();
    for (i = 0; i < N_VECS; i++) {
        if (run_vector(&vecs[i]))
            vpass++;
        else
            vfail++;
    }
    test_crc32c();
    test_v1_edges();
    test_v2_edges();
    test_fmt();
    test_pton_vs_libc();
    test_cidr();
    test_utf8();
    printf("vectors: %d passed, %d failed\n", vpass, vfail);
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail != 0 || vfail != 0;
}
