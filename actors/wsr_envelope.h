//  wsr_envelope — msgpack envelopes for messages that can cross processes

#ifndef WSR_ENVELOPE_H_INCLUDED
#define WSR_ENVELOPE_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

//  A decoded envelope: pointers borrow from the frame that was decoded and
//  stay valid while that frame lives.
typedef struct {
    int version;                //  WSR_ENVELOPE_VERSION
    int kind;                   //  WSR_KIND_TEXT or WSR_KIND_BINARY
    const uint8_t *data;        //  payload
    size_t size;                //  payload bytes
    const char *user;           //  upstream only: user id (not NUL-terminated)
    size_t user_len;
    const char *node;           //  upstream only: node id (not NUL-terminated)
    size_t node_len;
    uint64_t session;           //  upstream only: session id
    int64_t ts_us;              //  publish / receive time, µs since epoch (0 if absent)
} wsr_envelope_t;

//  Encode a downstream envelope {v, k, ts, d}. kind 0 means "decide": text if
//  the payload is valid UTF-8, binary otherwise. Returns a new frame (caller owns).
zframe_t *
    wsr_envelope_encode_down (const uint8_t *data, size_t size, int kind, int64_t ts_us);

//  Encode an upstream envelope {v, u, s, n, ts, k, d}. Caller owns the frame.
zframe_t *
    wsr_envelope_encode_up (const char *user, uint64_t session, const char *node,
                            int64_t ts_us, int kind, const uint8_t *data, size_t size);

//  Decode either kind of envelope without copying the payload. Returns 0, or
//  -1 if the frame is not a valid envelope of a known version.
int
    wsr_envelope_decode (const uint8_t *buf, size_t len, wsr_envelope_t *env);

//  Encode a bridge heartbeat {v, r, n}: state of Redis and NATS as seen by
//  the bridge (1 up, 0 down, -1 not configured). Caller owns the frame.
zframe_t *
    wsr_envelope_encode_heartbeat (int redis, int nats);

//  Decode a heartbeat. Returns 0, or -1 if it is not one.
int
    wsr_envelope_decode_heartbeat (const uint8_t *buf, size_t len, int *redis, int *nats);

//  Self test
void
    wsr_envelope_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
