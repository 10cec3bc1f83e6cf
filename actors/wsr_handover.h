//  wsr_handover — the handover wire format: frames one process upgrading
//  into another sends over a Unix socket (descriptors ride beside them)

#ifndef WSR_HANDOVER_H_INCLUDED
#define WSR_HANDOVER_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

//  Every frame: "WSRH", version (u16), type (u8), body length (u32), body;
//  integers big-endian. A reader refuses another version or a body longer
//  than WSR_HANDOVER_MAX_BODY.
#define WSR_HANDOVER_VERSION        2   //  2: TOPICS, SYNCED, marks in SESSION
#define WSR_HANDOVER_HEADER         11
#define WSR_HANDOVER_MAX_BODY       (64 * 1024 * 1024)
#define WSR_HANDOVER_MAX_CHANNELS   64

typedef enum {
    WSR_HANDOVER_HELLO = 1,         //  new → old: build id, pid; ready to take over
    WSR_HANDOVER_LISTENER = 2,      //  old → new: one listening socket (fd attached)
    WSR_HANDOVER_SESSION = 3,       //  old → new: one session (fd attached)
    WSR_HANDOVER_DONE = 4,          //  old → new: no more sessions
    WSR_HANDOVER_ACK = 5,           //  new → old: sessions taken (count)
    WSR_HANDOVER_REFUSE = 6,        //  either way: give up (reason)
    WSR_HANDOVER_TOPICS = 7         //  old → new: one old worker's topic keys, before
                                    //  the first session (wsr_handover_topics_encode)
} wsr_handover_type_t;

//  What an old worker last queued on a topic (a session's position there)
#define WSR_HANDOVER_MARK_NONE      0   //  nothing delivered on the topic yet
#define WSR_HANDOVER_MARK_HASH      1   //  value: wsr_handover_hash of the last payload
#define WSR_HANDOVER_MARK_OFFSET    2   //  value: history offset of the last message

typedef struct {
    uint8_t kind;                   //  WSR_HANDOVER_MARK_*
    uint64_t value;
} wsr_handover_mark_t;

//  Session flags
#define WSR_HANDOVER_V1             1   //  speaks wsrouter.v1
#define WSR_HANDOVER_HS_PENDING     2   //  output starts with (part of) the 101
#define WSR_HANDOVER_DEFLATE        4   //  permessage-deflate negotiated (no context
                                        //  takeover either way: nothing else to carry)

//  Which timer a session is on
#define WSR_HANDOVER_TIMER_ACTIVE   0   //  ping due at timer_ms
#define WSR_HANDOVER_TIMER_PINGED   1   //  pong due at timer_ms

//  One session's state, as it leaves the old process. Clocks are relative
//  (ms from the moment it was written) except expiry (Unix s) and since_ms
//  (Unix ms). Strings and buffers are owned by the record once decoded.
typedef struct {
    uint64_t id;                    //  session id
    uint32_t flags;                 //  WSR_HANDOVER_V1 | _HS_PENDING | _DEFLATE
    int64_t expiry;                 //  token expiry, Unix s, 0 never
    int64_t since_ms;               //  opened at, Unix ms
    uint8_t timer;                  //  WSR_HANDOVER_TIMER_*
    int64_t timer_ms;               //  ms until that timer acts (may be < 0)
    float msg_tokens;               //  rate-limit buckets
    float byte_tokens;
    int64_t rate_age_ms;            //  ms since the buckets were refilled
    char *user;                     //  user id
    char *channels [WSR_HANDOVER_MAX_CHANNELS];
    size_t channel_count;
    wsr_handover_mark_t marks [1 + WSR_HANDOVER_MAX_CHANNELS];
                                    //  [0] the user topic, [1 + i] channel i
    uint8_t *output;                //  wire bytes queued, not yet written
    size_t output_size;
    uint8_t *input;                 //  bytes read, not yet processed (a
    size_t input_size;              //  half-received frame or message)
} wsr_handover_session_t;

//  Free what a decoded record owns and zero it; safe on a zeroed record.
void
    wsr_handover_session_clear (wsr_handover_session_t *self);

//  Encode one session as a whole frame. Returns a malloc'd buffer the
//  caller owns (size in *size_p), or NULL if a field is over its limit.
uint8_t *
    wsr_handover_session_encode (const wsr_handover_session_t *self, size_t *size_p);

//  Decode a SESSION frame's body (after the header) into *self, which the
//  caller then owns and clears. Returns 0, or -1 if the body is malformed or
//  truncated (then *self is left cleared).
int
    wsr_handover_session_decode (const uint8_t *body, size_t size,
                                 wsr_handover_session_t *self);

//  Encode a frame of any type with the body given (may be empty). Returns a
//  malloc'd buffer the caller owns, or NULL if the body is too long.
uint8_t *
    wsr_handover_frame (wsr_handover_type_t type, const void *body, size_t size,
                        size_t *size_p);

//  Check a frame header. Returns the body length and sets *type_p, or -1
//  for a bad magic, -2 for another version, -3 for a body over the limit.
int64_t
    wsr_handover_header (const uint8_t *header, wsr_handover_type_t *type_p);

//  Read one whole frame from a Unix stream socket (through wsr_passfd):
//  its type, body (malloc'd, caller frees; NULL when empty) and an attached
//  fd (-1 if none; the caller owns it). Waits up to timeout_ms in total.
//  Returns 0, or -1 with errno ETIMEDOUT, ECONNRESET (EOF), EPROTO (bad
//  magic or length) or EPROTONOSUPPORT (another version).
int
    wsr_handover_read (int sock, wsr_handover_type_t *type_p, uint8_t **body_p,
                       size_t *size_p, int *fd_p, int timeout_ms);

//  The fingerprint of a delivered payload (kind 1 text, 2 binary): a keyed
//  64-bit hash (SipHash-2-4, fixed key: both processes agree), never 0.
uint64_t
    wsr_handover_hash (int kind, const uint8_t *data, size_t size);

//  Encode a TOPICS frame: old worker index of count workers, and its topic
//  keys (without their NUL). Returns a malloc'd whole frame (caller frees,
//  size in *size_p), or NULL if a key is empty or over WSR_TOPIC_MAX.
uint8_t *
    wsr_handover_topics_encode (int index, int count, const char *const *keys, size_t n,
                                size_t *size_p);

//  Decode a TOPICS body: index, count, and the keys appended to list (as
//  strings the list owns; the list should have zstr_free as destructor).
//  Returns 0, or -1 if malformed (the list may hold some keys then).
int
    wsr_handover_topics_decode (const uint8_t *body, size_t size, int *index_p, int *count_p,
                                zlistx_t *list);

//  Self test of this class.
void
    wsr_handover_test (bool verbose);

#ifdef __cplusplus
}
#endif

#endif
