/* tests/fuzz_store.c: libFuzzer target for the persistence loader
 * (section [12]). The input is a snapshot file. The pure parts:
 * mqx_store_header() and mqx_store_next() walk it (the offset only grows,
 * never past the end; every record lies inside the input). Then the
 * loader of store_load() on a tiny broker set up afresh for each input
 * (store_load() itself reads a file and calls die(), so its steps are
 * repeated here): store_walk() counting, the id maps, store_walk()
 * applying, the held messages released. The input is loaded as it is and
 * once more with its checksums and end count repaired (magic and version
 * set, each record's CRC32C recomputed, the END count set, bytes after it
 * cut), so that mutations reach store_apply(). After a load every session
 * and retained message is freed and every pool must be back to empty (the
 * topic root excepted) and the message store to its start.
 * Seeds: tests/corpus/store/. Build like tests/fuzz_proxy.c. */
#ifdef NDEBUG
#error "fuzz targets check their invariants with assert()"
#endif
int mqttpx_main(int argc, char **argv); /* for -Wmissing-prototypes */
#define main mqttpx_main
#include "../mqttpx.c"
#undef main

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#include "store_harness.h"

/* The header and the records as a reader sees them. */
static void
fz_walk(const uint8_t *buf, size_t len)
{
    uint16_t version = 0;
    uint32_t saved = 0;
    const char *err = NULL;
    size_t off = MQX_STORE_HDR;
    enum mqx_rc rc = mqx_store_header(buf, len, &version, &saved, &err);

    assert(rc == MQX_DONE || rc == MQX_MORE || rc == MQX_BAD);
    if (rc != MQX_DONE) {
        assert(err != NULL);
        assert((rc == MQX_MORE) == (len < MQX_STORE_HDR));
        return;
    }
    assert(len >= MQX_STORE_HDR && version >= 1 &&
           version <= MQX_STORE_VERSION);
    for (;;) {
        struct mqx_store_rec r;
        size_t was = off;

        err = NULL;
        rc = mqx_store_next(buf, len, &off, &r, &err);
        assert(rc == MQX_DONE || rc == MQX_MORE || rc == MQX_BAD);
        if (rc != MQX_DONE) {
            assert(err != NULL && off == was);
            break;
        }
        assert(off > was && off <= len && off - was == 9 + (size_t)r.len);
        assert(r.body == buf + was + 5 && r.type == buf[was]);
        if (r.type == MQX_SR_END) break;
    }
}

/* store_load() from its header check on, without die(). */
static void
fz_load(const uint8_t *buf, size_t len)
{
    struct store_ld ld;
    uint16_t version;
    uint32_t saved, i;
    const char *err = NULL;
    size_t base, mb, sb;

    fz_setup();
    base = g.st.used;
    memset(&ld, 0, sizeof ld);
    ld.path = "fuzz.db";
    if (mqx_store_header(buf, len, &version, &saved, &err) != MQX_DONE ||
        store_walk(&ld, buf, len, 1) != NULL)
        goto out;
    mb = sizeof(uint32_t) * (ld.n_mid + 1); /* as store_load() sizes them */
    sb = sizeof(uint32_t) * (ld.n_sid + 1);
    if (mb > FZ_MAP_MAX || sb > FZ_MAP_MAX) goto out; /* a broker mallocs */
    ld.mid = malloc(mb ? mb : 1);
    ld.sid = malloc(sb ? sb : 1);
    assert(ld.mid && ld.sid);
    memset(ld.mid, 0xff, mb);
    memset(ld.sid, 0xff, sb);
    (void)store_walk(&ld, buf, len, 0); /* on error the broker dies */
    for (i = 0; i < ld.n_mid; i++)
        msg_unref(ld.mid[i]);
    free(ld.mid);
    free(ld.sid);
out:
    fz_empty(base);
    free(g.arena);
    g.arena = NULL;
}

/* A copy with the header, checksums and end count made right. */
static uint8_t *
fz_repair(const uint8_t *data, size_t size, size_t *len)
{
    uint8_t *b = calloc(1, size ? size : 1);

    assert(b != NULL);
    if (size) memcpy(b, data, size);
    *len = size;
    if (size < MQX_STORE_HDR) return b;
    memcpy(b, "MQXSTORE\0\1", 10);
    fz_crcs(b, size, len, 1);
    return b;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t len;
    uint8_t *b = calloc(1, size ? size : 1); /* exact: ASan sees over-reads */

    assert(b != NULL);
    if (size) memcpy(b, data, size);
    fz_walk(b, size);
    fz_load(b, size);
    free(b);
    b = fz_repair(data, size, &len);
    if (len != size || memcmp(b, data, size) != 0) {
        uint8_t *c = calloc(1, len ? len : 1);

        assert(c != NULL);
        memcpy(c, b, len);
        fz_walk(c, len);
        fz_load(c, len);
        free(c);
    }
    free(b);
    return 0;
}
