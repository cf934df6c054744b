/* tests/fuzz_journal.c: libFuzzer target for the persistence journal
 * replay (section [12], persistence_journal). The input holds a snapshot
 * and a journal: 4 bytes, big endian, the snapshot's length n (cut to
 * what follows), then n bytes of snapshot, then the rest: the journal
 * ("MQXJOURN", the epoch as u32 at byte 8, 16 bytes in all, then records
 * framed as the snapshot's). Seeds in tests/corpus/journal/ are real
 * pairs: mqttpx.db and mqttpx.db.journal of a broker killed with -9.
 * The steps of store_load() (which reads files and calls die()) are
 * repeated on a tiny broker set up afresh for each load: the snapshot's
 * header check and store_walk() counting (a snapshot that fails them is
 * left out, as if there were none), jr_walk() counting on the journal
 * (left out unless its magic is right and its records count), the id
 * maps, store_walk() applying, then jr_walk() applying when the
 * journal's epoch is the snapshot's; a journal of another epoch is
 * loaded once more with the check skipped (the epoch is a field of the
 * file: any pair is a journal of the right epoch with that field set).
 * The held messages are released as store_load() does, then every
 * session and retained message is freed and every pool must be back to
 * empty (the topic root excepted) and the message store to its start.
 * The input is loaded as it is and once more with both parts repaired
 * (magics and version set, each record's CRC32C recomputed, the
 * snapshot's END count set and bytes after it cut), so that mutations
 * reach store_apply(). Build like tests/fuzz_store.c. */
#ifdef NDEBUG
#error "fuzz targets check their invariants with assert()"
#endif
int mqttpx_main(int argc, char **argv); /* for -Wmissing-prototypes */
#define main mqttpx_main
#include "../mqttpx.c"
#undef main

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#include "store_harness.h"

/* store_load() from its header checks on, without die() or files. With
 * force set the journal is applied whatever its epoch. Returns 1 when a
 * journal was left out for its epoch alone. */
static int
fz_load(const uint8_t *sb, size_t sl, const uint8_t *jb, size_t jl, int force)
{
    struct store_ld ld;
    uint16_t version;
    uint32_t saved, i, jepoch = 0, n_mid, n_sid;
    const char *err = NULL;
    size_t base, mb, ib, jend = 0, jend2 = 0;
    int use_snap = 1, use_jr = 0, skipped = 0;

    fz_setup();
    base = g.st.used;
    memset(&ld, 0, sizeof ld);
    ld.path = "fuzz.db";
    if (mqx_store_header(sb, sl, &version, &saved, &err) != MQX_DONE ||
        store_walk(&ld, sb, sl, 1) != NULL) {
        memset(&ld, 0, sizeof ld); /* as if there were no snapshot */
        ld.path = "fuzz.db";
        use_snap = 0;
    }
    if (jl >= MQX_STORE_HDR && memcmp(jb, "MQXJOURN", 8) == 0) {
        jepoch = (uint32_t)jb[8] << 24 | (uint32_t)jb[9] << 16 |
                 (uint32_t)jb[10] << 8 | jb[11];
        n_mid = ld.n_mid;
        n_sid = ld.n_sid;
        if (jr_walk(&ld, jb, jl, 1, &jend) == NULL) {
            assert(jend >= MQX_STORE_HDR && jend <= jl);
            use_jr = 1;
        } else { /* the broker dies: as if there were no journal */
            ld.n_mid = n_mid;
            ld.n_sid = n_sid;
        }
    }
    mb = sizeof(uint32_t) * ((size_t)ld.n_mid + 1); /* as store_load() */
    ib = sizeof(uint32_t) * ((size_t)ld.n_sid + 1);
    if (mb > FZ_MAP_MAX || ib > FZ_MAP_MAX) goto out; /* a broker mallocs */
    ld.mid = malloc(mb);
    ld.sid = malloc(ib);
    assert(ld.mid && ld.sid);
    memset(ld.mid, 0xff, mb);
    memset(ld.sid, 0xff, ib);
    if (use_snap && store_walk(&ld, sb, sl, 0) != NULL)
        use_jr = 0; /* the broker dies before the journal */
    if (use_jr && jepoch != ld.epoch && !force) {
        use_jr = 0;
        skipped = 1;
    }
    if (use_jr && jr_walk(&ld, jb, jl, 0, &jend2) == NULL)
        assert(jend2 == jend); /* both passes stop at the same record */
    for (i = 0; i < ld.n_mid; i++)
        msg_unref(ld.mid[i]);
    free(ld.mid);
    free(ld.sid);
out:
    fz_empty(base);
    free(g.arena);
    g.arena = NULL;
    return skipped;
}

/* A copy of one part, of exactly its size: ASan sees over-reads. With
 * magic set, the header and checksums are made right. */
static uint8_t *
fz_part(const uint8_t *data, size_t size, size_t *len, const char *magic)
{
    uint8_t *b = calloc(1, size ? size : 1), *c;

    assert(b != NULL);
    if (size) memcpy(b, data, size);
    *len = size;
    if (magic && size >= MQX_STORE_HDR) {
        int is_snap = magic[3] == 'S';

        memcpy(b, magic, 8);
        if (is_snap) memcpy(b + 8, "\0\1", 2);
        fz_crcs(b, size, len, is_snap);
    }
    if (*len == size) return b;
    c = calloc(1, *len ? *len : 1);
    assert(c != NULL);
    memcpy(c, b, *len);
    free(b);
    return c;
}

/* The snapshot and journal of one input, loaded as fz_load() says;
 * repaired, only when the repair changes something. */
static void
fz_pair(const uint8_t *data, size_t size, size_t n0, int repair)
{
    size_t sl, jl;
    uint8_t *s = fz_part(data, n0, &sl, repair ? "MQXSTORE" : NULL);
    uint8_t *j = fz_part(data + n0, size - n0, &jl, repair ? "MQXJOURN" : NULL);

    if (!repair || sl != n0 || jl != size - n0 || memcmp(s, data, sl) != 0 ||
        memcmp(j, data + n0, jl) != 0)
        if (fz_load(s, sl, j, jl, 0)) fz_load(s, sl, j, jl, 1);
    free(s);
    free(j);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t n0;

    if (size < 4) return 0;
    n0 = (size_t)data[0] << 24 | (size_t)data[1] << 16 | (size_t)data[2] << 8 |
         data[3];
    if (n0 > size - 4) n0 = size - 4;
    fz_pair(data + 4, size - 4, n0, 0);
    fz_pair(data + 4, size - 4, n0, 1);
    return 0;
}
