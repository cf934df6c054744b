/* tests/fuzz_auth.c: libFuzzer target for the password and ACL file line
 * parsers (section [9]). Every line of the input (split at '\n', each an
 * exact-size heap copy) goes to mqx_pw_line(), mqx_acl_line() and, as a
 * pattern, to mqx_acl_subst() with fixed and with absent user names;
 * the whole input goes to mqx_b64_decode() and mqx_b64_encode().
 * Asserts: DONE means err NULL and every slice inside the line, a pw line
 * is $6$/$7$ with 1..48 salt bytes and a valid UTF-8 user without ':', an
 * ACL line is user/topic/pattern with a valid UTF-8 argument (a valid
 * filter for topic/pattern); BAD has a reason; a substitution fits its
 * buffer and equals the pattern when there is nothing to replace; base64
 * decodes to at most 3/4 of its length and round trips.
 * Seeds: tests/corpus/auth/. Build like tests/fuzz_proxy.c. */
#ifdef NDEBUG
#error "fuzz targets check their invariants with assert()"
#endif
int mqttpx_main(int argc, char **argv); /* for -Wmissing-prototypes */
#define main mqttpx_main
#include "../mqttpx.c"
#undef main

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A slice lies inside b[0..n). */
static void
fz_inside(struct mqx_str s, const char *b, size_t n)
{
    const uint8_t *p = (const uint8_t *)b;

    assert(s.p != NULL && s.p >= p && s.len <= n &&
           (size_t)(s.p - p) <= n - s.len);
}

static void
fz_pw(const char *s, size_t n)
{
    struct mqx_pwline pl;
    enum mqx_rc rc = mqx_pw_line(s, n, &pl);

    assert(rc == MQX_DONE || rc == MQX_MORE || rc == MQX_BAD);
    if (rc == MQX_MORE) {
        assert(pl.err == NULL && pl.kind == 0);
        return;
    }
    if (rc == MQX_BAD) {
        assert(pl.err != NULL && strlen(pl.err) > 0);
        return;
    }
    assert(pl.err == NULL);
    assert(pl.kind == 6 || pl.kind == 7);
    assert(pl.salt_len >= 1 && pl.salt_len <= sizeof pl.salt);
    if (pl.kind == 7)
        assert(pl.iter >= 1 && pl.iter <= 100000000);
    else
        assert(pl.iter == 0);
    fz_inside(pl.user, s, n);
    assert(pl.user.len > 0 && pl.user.p == (const uint8_t *)s);
    assert(memchr(pl.user.p, ':', pl.user.len) == NULL);
    assert(mqx_utf8_valid(pl.user.p, pl.user.len));
    assert(s[pl.user.len] == ':' && s[pl.user.len + 1] == '$');
}

static void
fz_acl(const char *s, size_t n)
{
    struct mqx_aclline al;
    enum mqx_rc rc = mqx_acl_line(s, n, &al);

    assert(rc == MQX_DONE || rc == MQX_MORE || rc == MQX_BAD);
    if (rc == MQX_MORE) {
        assert(al.err == NULL && al.kind == 0);
        return;
    }
    if (rc == MQX_BAD) {
        assert(al.err != NULL && strlen(al.err) > 0);
        return;
    }
    assert(al.err == NULL);
    assert(al.kind >= 1 && al.kind <= 3);
    fz_inside(al.arg, s, n);
    assert(al.arg.len > 0);
    assert(mqx_utf8_valid(al.arg.p, al.arg.len));
    if (al.kind == 1) {
        assert(al.access == 0);
    } else {
        assert(al.access == MQX_ACL_READ || al.access == MQX_ACL_WRITE ||
               al.access == (MQX_ACL_READ | MQX_ACL_WRITE) ||
               al.access == MQX_ACL_DENY);
        assert(mqx_filter_valid(al.arg.p, al.arg.len));
    }
}

/* Substitution of %c and %u into the line as a pattern: it succeeds
 * exactly when the values may be used and the result fits, and has the
 * length the pattern predicts. */
static void
fz_subst(const char *s, size_t n)
{
    static const struct mqx_str users[] = {
        {(const uint8_t *)"alice", 5},
        {NULL, 0},
        {(const uint8_t *)"a/b", 3},
    };
    const struct mqx_str id = {(const uint8_t *)"cli-1", 5};
    const size_t caps[] = {0, 1, 8, 64, 4096};
    uint8_t *out = malloc(4096);
    size_t n_u = 0, n_c = 0, i, u, k;

    assert(out != NULL);
    for (i = 0; i + 1 < n; i++)
        if (s[i] == '%' && (s[i + 1] == 'u' || s[i + 1] == 'c')) {
            if (s[i + 1] == 'u')
                n_u++;
            else
                n_c++;
            i++;
        }
    for (u = 0; u < sizeof users / sizeof users[0]; u++)
        for (k = 0; k < sizeof caps / sizeof caps[0]; k++) {
            size_t len = (size_t)-1;
            size_t want = n - 2 * (n_u + n_c) + n_u * users[u].len + n_c * 5;
            int ok = !n_u || (users[u].p != NULL && u != 2);
            int rc = mqx_acl_subst((const uint8_t *)s, n, users[u], id, out,
                                   caps[k], &len);

            assert(rc == 0 || rc == -1);
            assert((rc == 0) == (ok && want <= caps[k]));
            if (rc) continue;
            assert(len == want && len <= caps[k]);
            if (!n_u && !n_c) assert(!memcmp(out, s, n));
        }
    free(out);
}

static void
fz_b64(const uint8_t *data, size_t size)
{
    size_t cap = size / 4 * 3 + 3, n, m, e;
    uint8_t *out = malloc(cap), *again = malloc(cap);
    char *txt = malloc((size / 3 + 1) * 4 + 1);

    assert(out && again && txt);
    n = mqx_b64_decode((const char *)data, size, out, cap);
    if (n != (size_t)-1) {
        assert(size % 4 == 0 && n <= size / 4 * 3);
        assert(n + 2 >= size / 4 * 3 || size == 0);
        e = mqx_b64_encode(out, n, txt, (size / 3 + 1) * 4 + 1);
        assert(e == size && strlen(txt) == e);
        m = mqx_b64_decode(txt, e, again, cap);
        assert(m == n && (n == 0 || !memcmp(out, again, n)));
        /* one byte short of room is refused */
        if (n > 0)
            assert(mqx_b64_decode((const char *)data, size, out, n - 1) ==
                   (size_t)-1);
    }
    free(out);
    free(again);
    free(txt);
    /* any bytes encode and decode back */
    {
        size_t tl = (size + 2) / 3 * 4;
        char *t = malloc(tl + 1);
        uint8_t *b = malloc(size ? size : 1);

        assert(t && b);
        e = mqx_b64_encode(data, size, t, tl + 1);
        assert(e == tl && t[e] == '\0');
        assert(mqx_b64_encode(data, size, t, tl) == 0); /* no room for NUL */
        m = mqx_b64_decode(t, tl, b, size);
        assert(m == size && (size == 0 || !memcmp(b, data, size)));
        free(t);
        free(b);
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t i = 0;

    while (i <= size) {
        const uint8_t *nl = i < size ? memchr(data + i, '\n', size - i) : NULL;
        size_t n = nl ? (size_t)(nl - data) - i : size - i;
        char *line = malloc(n ? n : 1); /* exact size: ASan sees over-reads */

        assert(line != NULL);
        if (n) memcpy(line, data + i, n);
        fz_pw(line, n);
        fz_acl(line, n);
        fz_subst(line, n);
        free(line);
        i += n + 1;
    }
    fz_b64(data, size);
    return 0;
}
