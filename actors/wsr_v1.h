//  wsr_v1 — the wsrouter.v1 client protocol: server messages built, client messages parsed

#ifndef WSR_V1_H_INCLUDED
#define WSR_V1_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

#define WSR_V1_SUBPROTOCOL      "wsrouter.v1"
#define WSR_V1_HELLO_MS         10000   //  the client's hello must come this soon
#define WSR_V1_MAX_RECOVER      (WSR_MAX_CHANNELS + 1)  //  positions in one hello
#define WSR_V1_MAX_READS        100000  //  history reads a worker waits for at once

//  A topic's position, as in welcome and hello.
typedef struct {
    char topic [WSR_TOPIC_MAX];                 //  "user:U" / "channel:C"
    char epoch [WSR_HISTORY_EPOCH_MAX + 1];     //  "" when the topic has no history
    uint64_t offset;
    int recovered;                              //  welcome: 1, 0, or -1 (not asked)
} wsr_v1_position_t;

//  What a client sent.
typedef enum {
    WSR_V1_INVALID,             //  malformed, unknown type: answer with error
    WSR_V1_HELLO,
    WSR_V1_SEND,
    WSR_V1_REFRESH
} wsr_v1_type_t;

//  A parsed client message. Owns data and token (wsr_v1_msg_reset frees).
typedef struct {
    wsr_v1_type_t type;
    const char *error;                          //  INVALID: why (static text)
    wsr_v1_position_t recover [WSR_V1_MAX_RECOVER];     //  HELLO
    size_t recover_count;
    int kind;                                   //  SEND: WSR_KIND_TEXT / _BINARY
    uint8_t *data;                              //  SEND: payload
    size_t size;
    char *token;                                //  REFRESH
} wsr_v1_msg_t;

//  Parse a client's text message (at most max_size payload bytes in a
//  send). Returns 0, or -1 with msg->type WSR_V1_INVALID and msg->error.
int
    wsr_v1_parse (const uint8_t *text, size_t len, size_t max_size, wsr_v1_msg_t *msg);

//  Free what a parsed message owns and zero it.
void
    wsr_v1_msg_reset (wsr_v1_msg_t *msg);

//  Server messages: each returns a new JSON text (caller frees) and its
//  length in *len.

//  {"type":"pub","topic":…,"epoch":…,"offset":…,"data"|"data_base64":…};
//  epoch and offset only when offset > 0. kind says whether data is text
//  (valid UTF-8, as judged by the bridge) or bytes (base64).
char *
    wsr_v1_pub (const char *topic, uint64_t offset, const char *epoch, int kind,
                const uint8_t *data, size_t size, size_t *len);

//  {"type":"reply","data"|"data_base64":…}: an HTTP backend's answer.
char *
    wsr_v1_reply (int kind, const uint8_t *data, size_t size, size_t *len);

//  {"type":"error","error":text}
char *
    wsr_v1_error (const char *text, size_t *len);

//  {"type":"refreshed","expires":…|null}
char *
    wsr_v1_refreshed (int64_t expires, size_t *len);

//  {"type":"welcome","session":"…","node":…,"expires":…|null,"topics":{…}}
char *
    wsr_v1_welcome (uint64_t session, const char *node, int64_t expires,
                    const wsr_v1_position_t *topics, size_t count, size_t *len);

//  Self test
void
    wsr_v1_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
