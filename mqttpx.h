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
    MQX_DONE = 0, /* one item decoded; *used bytes consumed */
    MQX_MORE = 1, /* a valid prefix: call again with more bytes */
    MQX_BAD = -1, /* can never become valid: close the connection */
    MQX_BIG = -2, /* well formed but over a configured limit */
};

/* A slice into the caller's buffer: not NUL-terminated. */
struct mqx_str {
    const uint8_t *p;
    uint32_t len;
};

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
    uint8_t level; /* 3 (MQIsdp) or 4 */
    uint8_t clean, will, will_qos, will_retain, has_user, has_pass;
    uint16_t keepalive;
    struct mqx_str client_id, will_topic, will_payload, username, password;
    uint8_t connack; /* on MQX_BAD: CONNACK code to send first, 0 = none */
};

struct mqx_publish {
    uint8_t qos, retain, dup;
    uint16_t pid;
    struct mqx_str topic, payload;
};

/* SUBSCRIBE or UNSUBSCRIBE: validated, walked with mqx_mqtt_sub_next(). */
struct mqx_subscribe {
    uint16_t pid;
    uint32_t count;
    const uint8_t *list; /* the entries after the packet id */
    uint32_t list_len;
    uint8_t with_opts; /* SUBSCRIBE: an options byte follows each filter */
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
enum mqx_rc mqx_mqtt_ack(const struct mqx_packet *pk, uint16_t *pid);
size_t mqx_mqtt_rl_size(uint32_t rl);
size_t mqx_mqtt_enc_rl(uint8_t *p, uint32_t rl);
size_t mqx_mqtt_enc_connack(uint8_t *p, uint8_t session_present, uint8_t rc);
size_t mqx_mqtt_enc_ack(uint8_t *p, uint8_t type, uint16_t pid);
size_t mqx_mqtt_publish_size(size_t topic_len, size_t payload_len, uint8_t qos);
size_t mqx_mqtt_enc_publish(uint8_t *p, const uint8_t *topic, size_t topic_len,
                            const uint8_t *payload, size_t payload_len,
                            uint8_t qos, uint8_t retain, uint8_t dup,
                            uint16_t pid);

/* ---- topics [8] ---- */
int mqx_utf8_valid(const uint8_t *p, size_t n);
int mqx_topic_valid(const uint8_t *p, size_t n);
int mqx_filter_valid(const uint8_t *p, size_t n);
unsigned mqx_topic_levels(const uint8_t *p, size_t n);
int mqx_topic_match(const uint8_t *f, size_t fn, const uint8_t *t, size_t tn);

#endif
