/* mqttpx.h: the pure API of mqttpx (parsers, encoders, topic matching,
 * limit defaults). Tests and fuzz targets include mqttpx.c directly; this
 * header declares what they call. It includes no socket or mbedTLS header. */
#ifndef MQTTPX_H
#define MQTTPX_H

#include <stddef.h>
#include <stdint.h>

#define MQX_VERSION "0.1.0"

/* Result of every pure parser. */
enum mqx_rc {
    MQX_DONE = 0,   /* one item decoded; *used bytes consumed */
    MQX_MORE = 1,   /* a valid prefix: call again with more bytes */
    MQX_BAD = -1,   /* can never become valid: close the connection */
    MQX_BIG = -2,   /* well formed but over a configured limit */
    MQX_PROTO = -3, /* well formed, but MQTT 5 forbids it: 0x82, not 0x81 */
};

/* A slice into the caller's buffer: not NUL-terminated. */
struct mqx_str {
    const uint8_t *p;
    uint32_t len;
};

/* ---- PROXY v1/v2 parser [6] ---- */

#ifndef MQX_PROXY_V2_MAX
#define MQX_PROXY_V2_MAX 4096 /* R19: 16 + len; nginx uses the same cap */
#endif
#if MQX_PROXY_V2_MAX < 232 || MQX_PROXY_V2_MAX > 65551
#error "MQX_PROXY_V2_MAX must be 232..65551 (16 + 216-byte UNIX block)"
#endif
#define MQX_PROXY_V1_MAX     107 /* R18: v1 line incl. CRLF, fixed by the spec */
#define MQX_PROXY_ADDRSTRLEN 436 /* "<path>:0" with every path byte \xHH */

/* v2 TLV types (R28) and SSL sub-TLV types (R29), PROXY spec section 2.2 */
#define MQX_PP2_TYPE_ALPN               0x01
#define MQX_PP2_TYPE_AUTHORITY          0x02
#define MQX_PP2_TYPE_CRC32C             0x03
#define MQX_PP2_TYPE_NOOP               0x04
#define MQX_PP2_TYPE_UNIQUE_ID          0x05
#define MQX_PP2_TYPE_SSL                0x20
#define MQX_PP2_SUBTYPE_SSL_VERSION     0x21
#define MQX_PP2_SUBTYPE_SSL_CN          0x22
#define MQX_PP2_SUBTYPE_SSL_CIPHER      0x23
#define MQX_PP2_SUBTYPE_SSL_SIG_ALG     0x24
#define MQX_PP2_SUBTYPE_SSL_KEY_ALG     0x25
#define MQX_PP2_SUBTYPE_SSL_GROUP       0x26
#define MQX_PP2_SUBTYPE_SSL_SIG_SCHEME  0x27
#define MQX_PP2_SUBTYPE_SSL_CLIENT_CERT 0x28
#define MQX_PP2_TYPE_NETNS              0x30
#define MQX_PP2_AUTHORITY_MAX           255 /* R28: HAProxy's own limit */
#define MQX_PP2_UNIQUE_ID_MAX           128 /* R28: spec limit */

/* SSL TLV client bits (R40, R41) */
#define MQX_PP2_CLIENT_SSL       0x01
#define MQX_PP2_CLIENT_CERT_CONN 0x02
#define MQX_PP2_CLIENT_CERT_SESS 0x04

enum mqx_proxy_cmd {
    MQX_PROXY_CMD_LOCAL = 0,   /* v2 LOCAL: use the real peer (R31) */
    MQX_PROXY_CMD_PROXY = 1,   /* addresses come from the header */
    MQX_PROXY_CMD_UNKNOWN = 2, /* v1 UNKNOWN: use the real peer (R24) */
};

/* Values equal the v2 family nibble. */
enum mqx_proxy_af {
    MQX_PROXY_AF_UNSPEC = 0,
    MQX_PROXY_AF_INET = 1,
    MQX_PROXY_AF_INET6 = 2,
    MQX_PROXY_AF_UNIX = 3,
};

/* Why a header was refused; out->reason holds the R55 text. */
enum mqx_proxy_err {
    MQX_PROXY_OK = 0,
    MQX_PROXY_E_MODE,            /* version argument not 1 or 2 */
    MQX_PROXY_E_V1_SIG,          /* bad v1 signature */
    MQX_PROXY_E_V2_ON_V1,        /* v2 signature on a v1 listener (R13) */
    MQX_PROXY_E_V1_BARE_LF,      /* R23 */
    MQX_PROXY_E_V1_CR,           /* CR not followed by LF (R23) */
    MQX_PROXY_E_V1_LONG,         /* R18 */
    MQX_PROXY_E_V1_ASCII,        /* non-ASCII byte in the line */
    MQX_PROXY_E_V1_MALFORMED,    /* R23, R25 */
    MQX_PROXY_E_V1_ADDR,         /* R25 */
    MQX_PROXY_E_V1_PORT,         /* R25 */
    MQX_PROXY_E_V2_SIG,          /* R27 */
    MQX_PROXY_E_V1_ON_V2,        /* v1 header on a v2 listener (R13) */
    MQX_PROXY_E_V2_VERSION,      /* R27 */
    MQX_PROXY_E_V2_COMMAND,      /* R27 */
    MQX_PROXY_E_V2_FAMILY,       /* R27: nibble out of range */
    MQX_PROXY_E_V2_PROXY_FAMILY, /* R27: PROXY needs 0x11, 0x21, 0x31 */
    MQX_PROXY_E_V2_ADDR_SHORT,   /* R27 */
    MQX_PROXY_E_V2_TOO_LARGE,    /* R19, returned as MQX_BIG */
    MQX_PROXY_E_TLV_TRUNC,       /* R28 */
    MQX_PROXY_E_TLV_OVERRUN,     /* R28 */
    MQX_PROXY_E_TLV_DUP,         /* R28: 0x02, 0x03, 0x05, 0x20 twice */
    MQX_PROXY_E_CRC_LEN,         /* R28 */
    MQX_PROXY_E_AUTHORITY_LONG,  /* R28 */
    MQX_PROXY_E_UNIQUE_ID_LONG,  /* R28 */
    MQX_PROXY_E_SSL_SHORT,       /* R29 */
    MQX_PROXY_E_SSL_SUB_TRUNC,   /* R29 */
    MQX_PROXY_E_SSL_SUB_OVERRUN, /* R29 */
    MQX_PROXY_E_SSL_SUB_DUP,     /* R29 */
    MQX_PROXY_E_CRC_MISMATCH,    /* R28 */
};

/* R54: what the first bytes of a refused connection look like. */
enum mqx_proxy_hint {
    MQX_PROXY_HINT_NONE = 0,
    MQX_PROXY_HINT_MQTT,     /* 0x10: CONNECT without a header */
    MQX_PROXY_HINT_TLS,      /* 0x16: TLS ClientHello */
    MQX_PROXY_HINT_HTTP,     /* "GET " without a header */
    MQX_PROXY_HINT_V1_ON_V2, /* PROXY v1 header on a v2 listener */
    MQX_PROXY_HINT_V2_ON_V1, /* PROXY v2 header on a v1 listener */
};

/* Header-time decision (R40-R42, R33). */
enum mqx_proxy_verdict {
    MQX_PROXY_ACCEPT = 0,
    MQX_PROXY_DEFER,   /* LOCAL: TLS checks run at CONNECT (R33) */
    MQX_PROXY_NO_TLS,  /* R40 */
    MQX_PROXY_NO_CERT, /* R41, R42 */
};

/* Facts from the SSL TLV (R29). Slices: p == NULL means absent. */
struct mqx_proxy_tls {
    uint8_t present;           /* an SSL TLV was seen */
    uint8_t client;            /* MQX_PP2_CLIENT_* bits */
    uint8_t has_client_cert;   /* CLIENT_CERT sub-TLV seen (not kept) */
    uint32_t verify;           /* 0: certificate verified (if any) */
    uint32_t client_cert_len;  /* DER length of CLIENT_CERT */
    struct mqx_str version;    /* "TLSv1.3" */
    struct mqx_str cn;         /* raw: may hold NUL, check before use */
    struct mqx_str cipher;     /* "TLS_AES_256_GCM_SHA384" */
    struct mqx_str sig_alg;    /* "RSA-SHA256" */
    struct mqx_str key_alg;    /* "RSA2048" */
    struct mqx_str group;      /* "X25519" */
    struct mqx_str sig_scheme; /* "rsa_pss_rsae_sha256" */
};

/* A decoded header. Valid after MQX_DONE; after MQX_BAD/MQX_BIG only
 * err, reason and hint are. Slices point into the parsed buffer and die
 * with it: copy what the connection keeps (R45). */
struct mqx_proxy {
    uint8_t version;          /* 1 or 2 */
    uint8_t command;          /* enum mqx_proxy_cmd */
    uint8_t family;           /* enum mqx_proxy_af; UNSPEC unless PROXY */
    uint8_t fam_byte;         /* v2 family/transport byte, for DEBUG */
    uint8_t src_addr[16];     /* INET: 4 bytes, INET6: 16, network order */
    uint8_t dst_addr[16];     /* same for the destination */
    uint16_t src_port;        /* 0 for UNIX */
    uint16_t dst_port;        /* kept for DEBUG logs (R26, R46) */
    struct mqx_str src_path;  /* UNIX: path up to its first NUL (R30) */
    struct mqx_str dst_path;  /* UNIX: same for the destination */
    struct mqx_str alpn;      /* R28, raw bytes, escape before logging */
    struct mqx_str authority; /* R28 SNI, <= 255 bytes, raw */
    struct mqx_str unique_id; /* R28, <= 128 bytes, binary: log as hex */
    uint8_t crc_verified;     /* a CRC32C TLV was present and matched */
    struct mqx_proxy_tls tls; /* tls.present == 0 without SSL TLV */
    uint8_t err;              /* enum mqx_proxy_err */
    uint8_t hint;             /* enum mqx_proxy_hint */
    const char *reason;       /* R55 text, static; NULL when ok */
};

/* CIDR of proxy_protocol_trusted_sources (R6, R10). */
struct mqx_cidr {
    uint8_t family;   /* MQX_PROXY_AF_INET or MQX_PROXY_AF_INET6 */
    uint8_t bits;     /* prefix length: 0..32 or 0..128 */
    uint8_t loose;    /* host bits were set and have been cleared */
    uint8_t addr[16]; /* network order, host bits zero */
};

uint32_t mqx_crc32c(uint32_t crc, const uint8_t *p, size_t n);
enum mqx_rc mqx_proxy_parse(const uint8_t *buf, size_t len, int version,
                            struct mqx_proxy *out, size_t *used);
const char *mqx_proxy_hint_str(int hint);
int mqx_proxy_tls_used(const struct mqx_proxy *pp);
int mqx_proxy_cert_ok(const struct mqx_proxy *pp);
enum mqx_proxy_verdict mqx_proxy_tls_check(const struct mqx_proxy *pp,
                                           int require_tls, int require_cert);
enum mqx_proxy_verdict mqx_proxy_policy(const struct mqx_proxy *pp,
                                        int require_tls, int require_cert);
const char *mqx_proxy_verdict_str(enum mqx_proxy_verdict v);
int mqx_proxy_cn_username(const struct mqx_proxy *pp, struct mqx_str *user);
size_t mqx_proxy_fmt_addr(char *dst, size_t cap, int family,
                          const uint8_t *addr, uint16_t port);
size_t mqx_proxy_fmt_client(char *dst, size_t cap, const struct mqx_proxy *pp);
size_t mqx_proxy_fmt_dest(char *dst, size_t cap, const struct mqx_proxy *pp);
size_t mqx_proxy_escape(char *dst, size_t cap, struct mqx_str s);
int mqx_proxy_addr_norm(int family, const uint8_t *addr, const uint8_t **sig);
enum mqx_rc mqx_proxy_cidr_parse(const char *s, size_t len,
                                 struct mqx_cidr *out);
int mqx_cidr_match(const struct mqx_cidr *c, int family, const uint8_t *addr);
int mqx_cidr_match_list(const struct mqx_cidr *v, size_t n, int family,
                        const uint8_t *addr);

/* ---- MQTT codec [7] ---- */
enum mqx_ptype {
    MQX_CONNECT = 1,
    MQX_CONNACK = 2,
    MQX_PUBLISH = 3,
    MQX_PUBACK = 4,
    MQX_PUBREC = 5,
    MQX_PUBREL = 6,
    MQX_PUBCOMP = 7,
    MQX_SUBSCRIBE = 8,
    MQX_SUBACK = 9,
    MQX_UNSUBSCRIBE = 10,
    MQX_UNSUBACK = 11,
    MQX_PINGREQ = 12,
    MQX_PINGRESP = 13,
    MQX_DISCONNECT = 14,
    MQX_AUTH = 15, /* MQTT 5 */
};

/* MQTT 5 reason codes the broker sends [MQTT-2.4] */
enum mqx_reason {
    MQX_RC_SUCCESS = 0x00,
    MQX_RC_DISCONNECT_WILL = 0x04, /* from the client: send the will */
    MQX_RC_NO_SUBSCRIBERS = 0x10,
    MQX_RC_NO_SUBSCRIPTION = 0x11,
    MQX_RC_UNSPECIFIED = 0x80,
    MQX_RC_MALFORMED = 0x81,
    MQX_RC_PROTOCOL = 0x82,
    MQX_RC_UNSUPPORTED_VERSION = 0x84,
    MQX_RC_ID_INVALID = 0x85,
    MQX_RC_BAD_AUTH = 0x86,
    MQX_RC_NOT_AUTHORIZED = 0x87,
    MQX_RC_UNAVAILABLE = 0x88,
    MQX_RC_SHUTTING_DOWN = 0x8B,
    MQX_RC_BAD_AUTH_METHOD = 0x8C,
    MQX_RC_KEEPALIVE_TIMEOUT = 0x8D,
    MQX_RC_TAKEN_OVER = 0x8E,
    MQX_RC_FILTER_INVALID = 0x8F,
    MQX_RC_TOPIC_INVALID = 0x90,
    MQX_RC_PID_NOT_FOUND = 0x92,
    MQX_RC_RECEIVE_MAX = 0x93,
    MQX_RC_ALIAS_INVALID = 0x94,
    MQX_RC_TOO_LARGE = 0x95,
    MQX_RC_QUOTA = 0x97,
    MQX_RC_PAYLOAD_FORMAT = 0x99,
    MQX_RC_RETAIN_UNSUPPORTED = 0x9A,
    MQX_RC_SHARED_UNSUPPORTED = 0x9E,
};

/* MQTT 5 property identifiers [MQTT-2.2.2.2] */
enum mqx_prop_id {
    MQX_P_PAYLOAD_FORMAT = 0x01,
    MQX_P_MESSAGE_EXPIRY = 0x02,
    MQX_P_CONTENT_TYPE = 0x03,
    MQX_P_RESPONSE_TOPIC = 0x08,
    MQX_P_CORRELATION = 0x09,
    MQX_P_SUB_ID = 0x0B,
    MQX_P_SESSION_EXPIRY = 0x11,
    MQX_P_ASSIGNED_ID = 0x12,
    MQX_P_SERVER_KEEPALIVE = 0x13,
    MQX_P_AUTH_METHOD = 0x15,
    MQX_P_AUTH_DATA = 0x16,
    MQX_P_REQ_PROBLEM = 0x17,
    MQX_P_WILL_DELAY = 0x18,
    MQX_P_REQ_RESPONSE = 0x19,
    MQX_P_RESPONSE_INFO = 0x1A,
    MQX_P_SERVER_REF = 0x1C,
    MQX_P_REASON = 0x1F,
    MQX_P_RECEIVE_MAX = 0x21,
    MQX_P_ALIAS_MAX = 0x22,
    MQX_P_ALIAS = 0x23,
    MQX_P_MAX_QOS = 0x24,
    MQX_P_RETAIN_AVAILABLE = 0x25,
    MQX_P_USER = 0x26,
    MQX_P_MAX_PACKET = 0x27,
    MQX_P_WILDCARD_AVAILABLE = 0x28,
    MQX_P_SUB_ID_AVAILABLE = 0x29,
    MQX_P_SHARED_AVAILABLE = 0x2A,
};

/* Where a property block stands: which properties it may hold. */
enum mqx_prop_where {
    MQX_PW_CONNECT,
    MQX_PW_WILL,
    MQX_PW_PUBLISH,
    MQX_PW_ACK, /* PUBACK, PUBREC, PUBREL, PUBCOMP */
    MQX_PW_SUBSCRIBE,
    MQX_PW_UNSUBSCRIBE,
    MQX_PW_DISCONNECT,
    MQX_PW_AUTH,
    MQX_PW_CONNACK,
    MQX_PW_SUBACK,
};

/* A decoded MQTT 5 property block: a view into the packet. `has` has bit
 * (1 << id) for each property present (ids are < 64). */
struct mqx_props {
    uint64_t has;
    uint8_t payload_format, req_problem, req_response, max_qos;
    uint16_t receive_max, alias_max, alias, server_keepalive;
    uint32_t message_expiry, session_expiry, will_delay, max_packet, sub_id;
    uint32_t n_user;  /* user properties, in order in raw */
    uint32_t fwd_len; /* bytes mqx_props_copy_fwd() writes */
    struct mqx_str content_type, response_topic, correlation, auth_method,
        auth_data, reason;
    const uint8_t *raw; /* the properties, after the length */
    uint32_t raw_len;
};

/* CONNACK return codes of MQTT 3.1 and 3.1.1 */
enum mqx_connack {
    MQX_CONNACK_OK = 0,
    MQX_CONNACK_PROTOCOL = 1, /* unacceptable protocol version */
    MQX_CONNACK_ID = 2,       /* identifier rejected */
    MQX_CONNACK_UNAVAIL = 3,  /* server unavailable */
    MQX_CONNACK_BAD_AUTH = 4, /* bad user name or password */
    MQX_CONNACK_NOT_AUTH = 5, /* not authorised */
};

/* One framed packet: body is a slice of the caller's buffer. */
struct mqx_packet {
    uint8_t type;  /* enum mqx_ptype */
    uint8_t flags; /* low nibble of the first byte */
    const uint8_t *body;
    uint32_t len;
};

struct mqx_connect {
    uint8_t level; /* 3 (MQIsdp), 4 or 5 */
    uint8_t clean, will, will_qos, will_retain, has_user, has_pass;
    uint16_t keepalive;
    struct mqx_str client_id, will_topic, will_payload, username, password;
    struct mqx_props props, will_props; /* level 5 */
    uint8_t connack; /* on MQX_BAD: CONNACK code to send first, 0 = none */
};

struct mqx_publish {
    uint8_t qos, retain, dup;
    uint16_t pid;
    struct mqx_str topic, payload;
    struct mqx_props props; /* level 5 */
};

/* PUBACK, PUBREC, PUBREL, PUBCOMP; DISCONNECT (no pid) */
struct mqx_ack {
    uint16_t pid;
    uint8_t reason; /* 0 when absent */
    struct mqx_props props;
};

/* SUBSCRIBE or UNSUBSCRIBE: validated, walked with mqx_mqtt_sub_next(). */
struct mqx_subscribe {
    uint16_t pid;
    uint32_t count;
    const uint8_t *list; /* the entries after the packet id */
    uint32_t list_len;
    uint8_t with_opts;      /* SUBSCRIBE: an options byte follows each filter */
    struct mqx_props props; /* level 5 */
};

enum mqx_rc mqx_mqtt_header(const uint8_t *buf, size_t len, size_t *used,
                            uint32_t *rl);
enum mqx_rc mqx_mqtt_frame(const uint8_t *buf, size_t len, uint32_t max,
                           struct mqx_packet *pk, size_t *used);
enum mqx_rc mqx_mqtt_connect(const uint8_t *b, size_t n, struct mqx_connect *c);
enum mqx_rc mqx_mqtt_publish(uint8_t flags, const uint8_t *b, size_t n,
                             uint8_t level, struct mqx_publish *p);
enum mqx_rc mqx_mqtt_subscribe(const struct mqx_packet *pk, uint8_t level,
                               struct mqx_subscribe *s);
int mqx_mqtt_sub_next(const struct mqx_subscribe *s, size_t *off,
                      struct mqx_str *filter, uint8_t *opts);
enum mqx_rc mqx_mqtt_ack(const struct mqx_packet *pk, uint8_t level,
                         struct mqx_ack *a);
enum mqx_rc mqx_mqtt_disconnect(const struct mqx_packet *pk, uint8_t level,
                                struct mqx_ack *a);
enum mqx_rc mqx_props_decode(const uint8_t *p, size_t n, unsigned where,
                             struct mqx_props *out);
enum mqx_rc mqx_props_read(const uint8_t *b, size_t n, unsigned where,
                           struct mqx_props *out, size_t *used);
size_t mqx_props_copy_fwd(const struct mqx_props *pr, uint8_t *out);
size_t mqx_varint_size(uint32_t v);
size_t mqx_enc_varint(uint8_t *p, uint32_t v);
size_t mqx_mqtt_rl_size(uint32_t rl);
size_t mqx_mqtt_enc_rl(uint8_t *p, uint32_t rl);
size_t mqx_mqtt_enc_connack(uint8_t *p, uint8_t session_present, uint8_t rc);
size_t mqx_mqtt_enc_ack(uint8_t *p, uint8_t type, uint16_t pid);
size_t mqx_mqtt_enc_ack5(uint8_t *p, uint8_t type, uint16_t pid, uint8_t reason,
                         const char *why);
size_t mqx_mqtt_publish_size(size_t topic_len, size_t payload_len, uint8_t qos);
size_t mqx_mqtt_publish5_size(size_t topic_len, size_t payload_len, uint8_t qos,
                              size_t props_len);
size_t mqx_mqtt_enc_publish5(uint8_t *p, const uint8_t *topic, size_t topic_len,
                             const uint8_t *payload, size_t payload_len,
                             uint8_t qos, uint8_t retain, uint8_t dup,
                             uint16_t pid, const uint8_t *pre, size_t pre_len,
                             const uint8_t *fwd, size_t fwd_len);
size_t mqx_mqtt_enc_publish(uint8_t *p, const uint8_t *topic, size_t topic_len,
                            const uint8_t *payload, size_t payload_len,
                            uint8_t qos, uint8_t retain, uint8_t dup,
                            uint16_t pid);

/* ---- auth [10] ---- */
/* One line of a mosquitto_passwd file: "user:$6$SALT$HASH" (SHA-512 of
 * password then salt) or "user:$7$ITER$SALT$HASH" (PBKDF2-HMAC-SHA512). */
struct mqx_pwline {
    struct mqx_str user;
    uint8_t kind; /* 6 or 7 */
    uint32_t iter;
    uint8_t salt[48];
    uint8_t salt_len;
    uint8_t hash[64];
    const char *err; /* on MQX_BAD: why */
};

enum {
    MQX_ACL_READ = 1,
    MQX_ACL_WRITE = 2,
    MQX_ACL_DENY = 4,
};

/* One line of a Mosquitto ACL file. */
struct mqx_aclline {
    uint8_t kind;       /* 0: blank or comment, 1: user, 2: topic, 3: pattern */
    uint8_t access;     /* MQX_ACL_* */
    struct mqx_str arg; /* user name, or the topic filter */
    const char *err;    /* on MQX_BAD: why */
};

size_t mqx_b64_decode(const char *s, size_t n, uint8_t *out, size_t cap);
size_t mqx_b64_encode(const uint8_t *p, size_t n, char *out, size_t cap);
enum mqx_rc mqx_pw_line(const char *s, size_t n, struct mqx_pwline *out);
enum mqx_rc mqx_acl_line(const char *s, size_t n, struct mqx_aclline *out);
int mqx_acl_subst(const uint8_t *pat, size_t n, struct mqx_str user,
                  struct mqx_str id, uint8_t *out, size_t cap, size_t *len);

/* ---- persistence [12] ---- */
/* A snapshot: "MQXSTORE", version (u16), flags (u16), save time (u32,
 * Unix seconds), then records: type (u8), length (u32), body, CRC32C
 * (u32) of type, length and body; the last record is MQX_SR_END. All
 * integers big endian: files move between byte orders. */
#define MQX_STORE_VERSION 1
#define MQX_STORE_HDR     16

enum mqx_store_type {
    MQX_SR_MSG = 1,      /* mid, qos, retain, topic (str16), payload */
    MQX_SR_RETAIN = 2,   /* mid */
    MQX_SR_SESS = 3,     /* sid, next pid, flags, expiry, id, user */
    MQX_SR_SUB = 4,      /* sid, qos, filter (str16) */
    MQX_SR_QUEUE = 5,    /* sid, mid, qos, retain */
    MQX_SR_INFLIGHT = 6, /* sid, mid (or none), pid, qos, state */
    MQX_SR_RECEIVED = 7, /* sid, pid */
    MQX_SR_EPOCH = 8,    /* journal epoch this snapshot starts */
    /* journal records (persistence_journal): changes after a snapshot */
    MQX_JR_MSG = 16,      /* as MQX_SR_MSG */
    MQX_JR_RETAIN = 17,   /* mid */
    MQX_JR_UNRETAIN = 18, /* topic (str16) */
    MQX_JR_SESS = 19,     /* as MQX_SR_SESS: created or resumed */
    MQX_JR_SESS_DEL = 20, /* sid */
    MQX_JR_SUB = 21,      /* as MQX_SR_SUB */
    MQX_JR_UNSUB = 22,    /* sid, filter (str16) */
    MQX_JR_QUEUE = 23,    /* as MQX_SR_QUEUE */
    MQX_JR_POP = 24,      /* sid: the queue's head was sent (QoS 0) */
    MQX_JR_SEND = 25,     /* sid, pid: the queue's head went inflight */
    MQX_JR_ACK = 26,      /* sid, pid: PUBACK or PUBCOMP */
    MQX_JR_REC = 27,      /* sid, pid: PUBREC */
    MQX_JR_RCVD = 28,     /* sid, pid: a QoS 2 PUBLISH came in */
    MQX_JR_REL = 29,      /* sid, pid: its PUBREL */
    MQX_SR_END = 255,     /* number of records before it */
};

struct mqx_store_rec {
    uint8_t type;
    const uint8_t *body;
    uint32_t len;
};

enum mqx_rc mqx_store_header(const uint8_t *buf, size_t len, uint16_t *version,
                             uint32_t *saved, const char **err);
enum mqx_rc mqx_store_next(const uint8_t *buf, size_t len, size_t *off,
                           struct mqx_store_rec *r, const char **err);

/* ---- topics [8] ---- */
int mqx_utf8_valid(const uint8_t *p, size_t n);
int mqx_topic_valid(const uint8_t *p, size_t n);
int mqx_filter_valid(const uint8_t *p, size_t n);
unsigned mqx_topic_levels(const uint8_t *p, size_t n);
int mqx_topic_match(const uint8_t *f, size_t fn, const uint8_t *t, size_t tn);

#endif
