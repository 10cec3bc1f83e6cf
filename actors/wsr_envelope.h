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
    uint64_t offset;            //  downstream: position in the topic's history, 0 = none
    uint64_t prev;              //  the offset of the topic's message before it (0: unknown)
    const char *epoch;          //  the history's epoch (not NUL-terminated), with offset
    size_t epoch_len;
} wsr_envelope_t;

//  Encode a downstream envelope {v, k, ts, d}. kind 0 means "decide": text if
//  the payload is valid UTF-8, binary otherwise. Returns a new frame (caller owns).
zframe_t *
    wsr_envelope_encode_down (const uint8_t *data, size_t size, int kind, int64_t ts_us);

//  Encode a downstream envelope that carries its history position {v, k,
//  ts, o, p, e, d}: offset (> 0), prev (the topic's offset before it, 0 if
//  unknown) and epoch (a C string). kind 0 decides as above. Caller owns it.
zframe_t *
    wsr_envelope_encode_pub (const uint8_t *data, size_t size, int kind, int64_t ts_us,
                             uint64_t offset, uint64_t prev, const char *epoch);

//  Encode an upstream envelope {v, u, s, n, ts, k, d}. Caller owns the frame.
zframe_t *
    wsr_envelope_encode_up (const char *user, uint64_t session, const char *node,
                            int64_t ts_us, int kind, const uint8_t *data, size_t size);

//  Decode either kind of envelope without copying the payload. Returns 0, or
//  -1 if the frame is not a valid envelope of a known version.
int
    wsr_envelope_decode (const uint8_t *buf, size_t len, wsr_envelope_t *env);

//  Encode a history read's result {v, x: status, e: epoch, l: last,
//  c: complete, m: [[offset, kind, data], ...]}, judging each entry's kind
//  (the one UTF-8 scan of its bytes). Caller owns the frame.
zframe_t *
    wsr_envelope_encode_history (const wsr_history_result_t *result);

//  Decode a history result without copying payloads: result->entries points
//  at entries (the caller's array of max), their data into buf; the epoch is
//  copied into epoch (WSR_HISTORY_EPOCH_MAX + 1 bytes). Returns 0, or -1 if
//  the frame is not such a result or has more than max entries.
int
    wsr_envelope_decode_history (const uint8_t *buf, size_t len, wsr_history_result_t *result,
                                 wsr_history_entry_t *entries, size_t max, char *epoch);

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
