/* tests/fuzz_proxy.c: libFuzzer target for the PROXY v1/v2 parser
 * (section [6]). Feeds the input to mqx_proxy_parse() as a v1 and as a v2
 * listener and asserts the parser's laws (used <= size, MORE only below
 * the limits, the prefix law of R15/R16, DONE stable when bytes follow,
 * every slice inside the header, formatters NUL-terminated); also fuzzes
 * mqx_proxy_cidr_parse(). Seeds: tests/corpus/proxy/ (one per vector).
 * libFuzzer: clang -fsanitize=fuzzer,address,undefined tests/fuzz_proxy.c
 * Replay:    cc $(SAN) tests/fuzz_replay.c tests/fuzz_proxy.c (make test) */
#ifdef NDEBUG
#error "fuzz targets check their invariants with assert()"
#endif
int mqttpx_main(int argc, char **argv); /* for -Wmissing-prototypes */
#define main mqttpx_main
#include "../mqttpx.c"
#undef main

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A slice is absent or lies inside buf[0..used). */
static void
in_header(const struct mqx_str *s, const uint8_t *buf, size_t used)
{
    if (s->p == NULL) return;
    assert(s->p >= buf && s->len <= used &&
           (size_t)(s->p - buf) <= used - s->len);
}

/* Everything a DONE result promises. */
static void
check_done(const struct mqx_proxy *pp, const uint8_t *buf, size_t used,
           int mode)
{
    char a[MQX_PROXY_ADDRSTRLEN], small[8];
    size_t n;
    struct mqx_str user = {NULL, 0};
    const struct mqx_str *s[] = {
        &pp->src_path,    &pp->dst_path,    &pp->alpn,      &pp->authority,
        &pp->unique_id,   &pp->tls.version, &pp->tls.cn,    &pp->tls.cipher,
        &pp->tls.sig_alg, &pp->tls.key_alg, &pp->tls.group, &pp->tls.sig_scheme,
    };
    size_t i;

    assert(pp->err == MQX_PROXY_OK && pp->reason == NULL);
    assert(pp->version == mode);
    if (mode == 1)
        assert(used >= 15 && used <= MQX_PROXY_V1_MAX); /* "PROXY UNKNOWN" */
    else
        assert(used >= 16 && used <= MQX_PROXY_V2_MAX);
    for (i = 0; i < sizeof s / sizeof s[0]; i++) {
        in_header(s[i], buf, used);
        n = mqx_proxy_escape(a, sizeof a, *s[i]);
        assert(n == strlen(a) && n < sizeof a);
        n = mqx_proxy_escape(small, sizeof small, *s[i]);
        assert(n == strlen(small) && n < sizeof small);
    }
    if (pp->command == MQX_PROXY_CMD_PROXY && pp->family != MQX_PROXY_AF_UNIX) {
        const uint8_t *sig;
        int f = mqx_proxy_addr_norm(pp->family, pp->src_addr, &sig);

        assert(f == MQX_PROXY_AF_INET || f == MQX_PROXY_AF_INET6);
        assert(sig == pp->src_addr || sig == pp->src_addr + 12);
    }
    assert(pp->command <= MQX_PROXY_CMD_UNKNOWN);
    if (pp->command == MQX_PROXY_CMD_PROXY)
        assert(pp->family >= MQX_PROXY_AF_INET &&
               pp->family <= MQX_PROXY_AF_UNIX);
    else
        assert(pp->family == MQX_PROXY_AF_UNSPEC);
    assert(pp->authority.len <= MQX_PP2_AUTHORITY_MAX);
    assert(pp->unique_id.len <= MQX_PP2_UNIQUE_ID_MAX);
    n = mqx_proxy_fmt_client(a, sizeof a, pp);
    assert(n == strlen(a) && n < sizeof a);
    assert((n > 0) == (pp->command == MQX_PROXY_CMD_PROXY));
    n = mqx_proxy_fmt_dest(a, sizeof a, pp);
    assert(n == strlen(a));
    n = mqx_proxy_fmt_client(small, sizeof small, pp);
    assert(n == strlen(small) && n < sizeof small);
    if (mqx_proxy_cn_username(pp, &user)) {
        assert(mqx_proxy_cert_ok(pp) && user.len > 0);
        assert(memchr(user.p, 0, user.len) == NULL);
        in_header(&user, buf, used);
    }
    if (mqx_proxy_cert_ok(pp)) assert(mqx_proxy_tls_used(pp));
    assert(mqx_proxy_tls_check(pp, 0, 0) == MQX_PROXY_ACCEPT);
    assert(mqx_proxy_policy(pp, 1, 1) != MQX_PROXY_ACCEPT ||
           mqx_proxy_cert_ok(pp));
}

static enum mqx_rc
parse_copy(const uint8_t *data, size_t n, int mode, struct mqx_proxy *pp,
           size_t *used, uint8_t **keep)
{
    uint8_t *b = malloc(n ? n : 1); /* exact size: ASan sees over-reads */

    assert(b != NULL);
    if (n) memcpy(b, data, n);
    *keep = b;
    return mqx_proxy_parse(b, n, mode, pp, used);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int mode;

    for (mode = 1; mode <= 2; mode++) {
        struct mqx_proxy pp, pq;
        size_t used, used2;
        enum mqx_rc rc, rc2;
        uint8_t *b, *b2;

        rc = parse_copy(data, size, mode, &pp, &used, &b);
        assert(rc == MQX_DONE || rc == MQX_MORE || rc == MQX_BAD ||
               rc == MQX_BIG);
        assert(used <= size);
        if (rc != MQX_DONE) assert(used == 0);
        if (rc == MQX_BAD || rc == MQX_BIG) {
            assert(pp.err != MQX_PROXY_OK && pp.reason != NULL);
            assert(strlen(pp.reason) > 0);
            assert((rc == MQX_BIG) == (pp.err == MQX_PROXY_E_V2_TOO_LARGE));
        } else {
            assert(pp.err == MQX_PROXY_OK && pp.reason == NULL);
        }
        /* R18/R19: MORE only below the limits */
        if (rc == MQX_MORE)
            assert(size < (mode == 1 ? MQX_PROXY_V1_MAX : MQX_PROXY_V2_MAX));
        if (rc == MQX_DONE) {
            check_done(&pp, b, used, mode);
            /* exactly the header is DONE with the same length (R17) */
            rc2 = parse_copy(data, used, mode, &pq, &used2, &b2);
            assert(rc2 == MQX_DONE && used2 == used);
            assert(memcmp(pq.src_addr, pp.src_addr, 16) == 0 &&
                   pq.src_port == pp.src_port && pq.command == pp.command);
            free(b2);
            /* one byte less is a valid prefix */
            rc2 = parse_copy(data, used - 1, mode, &pq, &used2, &b2);
            assert(rc2 == MQX_MORE);
            free(b2);
        }
        /* Prefix law (R15, R16): if the input minus its last byte is DONE
         * or refused, the whole input gives the same. */
        if (size > 0) {
            rc2 = parse_copy(data, size - 1, mode, &pq, &used2, &b2);
            if (rc2 == MQX_DONE) assert(rc == MQX_DONE && used == used2);
            if (rc2 == MQX_BAD || rc2 == MQX_BIG) assert(rc == rc2);
            if (rc == MQX_MORE) assert(rc2 == MQX_MORE);
            free(b2);
        }
        /* DONE is stable when more bytes arrive */
        if (rc == MQX_DONE) {
            uint8_t *x = malloc(size + 3);

            assert(x != NULL);
            memcpy(x, data, size);
            memcpy(x + size, "\x10\x00\xff", 3);
            rc2 = mqx_proxy_parse(x, size + 3, mode, &pq, &used2);
            assert(rc2 == MQX_DONE && used2 == used);
            free(x);
        }
        free(b);
    }
    {
        struct mqx_cidr c;
        uint8_t a[16];

        if (mqx_proxy_cidr_parse((const char *)data, size, &c) == MQX_DONE) {
            assert(c.family == MQX_PROXY_AF_INET ||
                   c.family == MQX_PROXY_AF_INET6);
            assert(c.bits <= (c.family == MQX_PROXY_AF_INET ? 32 : 128));
            memcpy(a, c.addr, 16); /* the network address matches itself */
            assert(mqx_cidr_match(&c, c.family, a));
        }
    }
    return 0;
}
