/* tests/fuzz_cfg.c: libFuzzer target for the config parser (section [5]).
 * The input is a config text (a NUL byte ends a line, like '\n'), parsed
 * by cfg_parse_text() as "fuzz.conf" at depth MQX_CFG_DEPTH so that
 * include_dir is refused and no file is read; when it parses,
 * cfg_finish() settles it. Asserts: an error is a NUL-terminated message
 * naming fuzz.conf (or one of cfg_finish()'s keys); every string field
 * stays NUL-terminated; the listener and CIDR counts stay in their
 * arrays; listener fields are in range; parsing is deterministic (a
 * second copy gives the same struct byte for byte).
 * Seeds: tests/corpus/cfg/. Build like tests/fuzz_proxy.c. */
#ifdef NDEBUG
#error "fuzz targets check their invariants with assert()"
#endif
int mqttpx_main(int argc, char **argv); /* for -Wmissing-prototypes */
#define main mqttpx_main
#include "../mqttpx.c"
#undef main

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A NUL-terminated heap copy of exactly size + 1 bytes, NUL -> '\n'. */
static char *
fz_text(const uint8_t *data, size_t size)
{
    char *t = malloc(size + 1);
    size_t i;

    assert(t != NULL);
    for (i = 0; i < size; i++)
        t[i] = data[i] ? (char)data[i] : '\n';
    t[size] = '\0';
    return t;
}

static void
fz_cstr(const char *s, size_t cap)
{
    assert(memchr(s, '\0', cap) != NULL);
}

static void
fz_check_auth(const struct authcfg *a)
{
    assert(a->allow_anonymous >= -1 && a->allow_anonymous <= 1);
    fz_cstr(a->password_file, sizeof a->password_file);
    fz_cstr(a->acl_file, sizeof a->acl_file);
}

/* What holds after any parse, good or bad. */
static void
fz_check_cfg(const struct cfg *c)
{
    uint32_t i;

    fz_cstr(c->err, sizeof c->err);
    assert(c->n_lsn <= MQX_MAX_LISTENERS);
    fz_check_auth(&c->auth);
    fz_cstr(c->persistence_location, sizeof c->persistence_location);
    fz_cstr(c->persistence_file, sizeof c->persistence_file);
    fz_cstr(c->log_file, sizeof c->log_file);
    fz_cstr(c->pid_file, sizeof c->pid_file);
    fz_cstr(c->user, sizeof c->user);
    assert(c->max_connections >= -1 &&
           c->max_connections <= MQX_MAX_CONNECTIONS);
    for (i = 0; i < c->n_lsn; i++) {
        const struct listener *l = &c->lsn[i];
        fz_check_auth(&l->auth);
        fz_cstr(l->bind, sizeof l->bind);
        assert(l->is_unix == (l->port == 0));
        if (l->is_unix) assert(l->bind[0] == '/');
        assert(l->proxy <= 2);
        assert(l->n_trusted <= MQX_MAX_TRUSTED);
        assert(l->proxy_timeout >= 1 && l->proxy_timeout <= 300);
        assert(l->max_connections >= -1 &&
               l->max_connections <= MQX_MAX_CONNECTIONS);
        assert(l->file != NULL && strcmp(l->file, "fuzz.conf") == 0);
        assert(l->line >= 1);
    }
}

/* One parse of a fresh copy; the struct is returned for the caller. */
static struct cfg *
fz_parse(const uint8_t *data, size_t size, int *rc)
{
    struct cfg *c = calloc(1, sizeof *c);
    char *t = fz_text(data, size);

    assert(c != NULL);
    cfg_defaults(c);
    *rc = cfg_parse_text(c, "fuzz.conf", t, MQX_CFG_DEPTH);
    assert(*rc == 0 || *rc == -1);
    free(t); /* nothing may point into the text after the parse */
    return c;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int rc, rc2;
    struct cfg *c = fz_parse(data, size, &rc);
    struct cfg *d = fz_parse(data, size, &rc2);

    assert(rc == rc2 && memcmp(c, d, sizeof *c) == 0);
    fz_check_cfg(c);
    if (rc) {
        assert(strncmp(c->err, "fuzz.conf:", 10) == 0);
        assert(strlen(c->err) > 10);
    } else {
        assert(c->err[0] == '\0');
        if (cfg_finish(c)) {
            assert(strncmp(c->err, "fuzz.conf:", 10) == 0 ||
                   strncmp(c->err, "max_connections: ", 17) == 0 ||
                   strncmp(c->err, "max_packet_size: ", 17) == 0);
        } else {
            assert(c->max_connections >= 1);
            assert(c->max_packet_size >= 128 &&
                   c->max_packet_size <= c->message_store_bytes / 2);
        }
        fz_check_cfg(c);
    }
    free(c);
    free(d);
    return 0;
}
