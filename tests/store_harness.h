/* tests/store_harness.h: what the persistence fuzz targets share
 * (tests/fuzz_store.c, tests/fuzz_journal.c): a tiny broker set up afresh
 * per load, the check that a load left nothing behind, and the repair of
 * record checksums that lets mutations reach store_apply(). Included
 * after ../mqttpx.c. */
#ifndef MQX_STORE_HARNESS_H
#define MQX_STORE_HARNESS_H

#define FZ_MAP_MAX (1u << 22) /* bytes of one id map; larger: not loaded */

/* A tiny broker, as tests/unit.c sets it up. */
static void
fz_setup(void)
{
    memset(&g, 0, sizeof g);
    cfg_defaults(&g.cfg);
    g.cfg.max_connections = 2;
    g.cfg.max_sessions = 4;
    g.cfg.max_subscriptions = 8;
    g.cfg.max_topic_nodes = 32;
    g.cfg.max_topic_levels = 4;
    g.cfg.max_retained_messages = 4;
    g.cfg.max_queued_total = 16;
    g.cfg.max_queued_messages = 4;
    g.cfg.message_store_bytes = 65536;
    g.cfg.log_dest = 0;
    assert(cfg_finish(&g.cfg) == 0);
    g.log_fd = g.syslog_fd = -1;
    arena_plan(1, NULL, 0);
    tree_init();
}

/* Frees every session and retained message; all pools must be empty. */
static void
fz_empty(size_t st_base)
{
    uint32_t i;

    for (i = 0; i < g.p_sess.cap; i++)
        if (pool_used(&g.p_sess, i)) sess_free(i);
    for (i = 0; i < g.p_node.cap; i++) {
        uint32_t m;
        static uint8_t t[65536]; /* a topic: frame limit */
        uint16_t tl;

        if (!pool_used(&g.p_node, i) || g.nodes[i].retained == NIL) continue;
        m = g.nodes[i].retained;
        tl = g.msgs[m].topic_len;
        memcpy(t, msg_topic(&g.msgs[m]), tl);
        ret_set(NIL, t, tl);
        assert(!pool_used(&g.p_node, i) || g.nodes[i].retained == NIL);
    }
    assert(g.p_sess.used == 0 && g.p_sub.used == 0 && g.p_qent.used == 0);
    assert(g.p_msg.used == 0 && g.p_node.used == 1);
    assert(g.n_retained == 0 && g.retained_bytes == 0);
    assert(g.st.used == st_base);
}

/* Recomputes the CRC32C of each whole record from off on; with is_snap
 * the END count is set too and *len cut after the END record. */
static void
fz_crcs(uint8_t *b, size_t size, size_t *len, int is_snap)
{
    size_t off = MQX_STORE_HDR;
    uint32_t n = 0;

    while (size - off >= 9) {
        uint8_t *p = b + off;
        uint32_t rl = (uint32_t)p[1] << 24 | (uint32_t)p[2] << 16 |
                      (uint32_t)p[3] << 8 | p[4],
                 crc;

        if (size - off - 9 < rl) break;
        if (is_snap && p[0] == MQX_SR_END && rl >= 4) {
            p[5] = (uint8_t)(n >> 24);
            p[6] = (uint8_t)(n >> 16);
            p[7] = (uint8_t)(n >> 8);
            p[8] = (uint8_t)n;
        }
        crc = mqx_crc32c(0, p, 5 + (size_t)rl);
        p[5 + rl] = (uint8_t)(crc >> 24);
        p[6 + rl] = (uint8_t)(crc >> 16);
        p[7 + rl] = (uint8_t)(crc >> 8);
        p[8 + rl] = (uint8_t)crc;
        off += 9 + (size_t)rl;
        if (is_snap && p[0] == MQX_SR_END) {
            *len = off;
            break;
        }
        n++;
    }
}

#endif
