//  wsr_history — a topic's history on Redis: append through publish.lua, read since an offset

#ifndef WSR_HISTORY_H_INCLUDED
#define WSR_HISTORY_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

#define WSR_HISTORY_EPOCH_MAX       40      //  epoch id bytes (Redis uses 13..30)
#define WSR_HISTORY_HEADER_MAX      (5 + 20 + 1 + WSR_HISTORY_EPOCH_MAX + 1)
#define WSR_HISTORY_DEFAULT_SIZE    100     //  WEBSOCKET_HISTORY_SIZE default
#define WSR_HISTORY_DEFAULT_TTL_S   300     //  WEBSOCKET_HISTORY_TTL default
#define WSR_HISTORY_META_TTL_S      86400   //  epoch + offset kept at least this long
#define WSR_HISTORY_MAX_READ        1000    //  entries per read, at most
#define WSR_HISTORY_MAX_INFLIGHT    4096    //  appends + reads waiting for Redis

typedef struct _wsr_history_t wsr_history_t;

//  One message of a topic's history. Borrowed: valid during the callback.
typedef struct {
    uint64_t offset;                    //  position in the topic (Redis) or stream (NATS)
    const uint8_t *data;                //  payload
    size_t size;
    int kind;                           //  WSR_KIND_TEXT / _BINARY, 0 = not judged yet
} wsr_history_entry_t;

//  What a read found. Borrowed: valid during the callback.
typedef struct {
    int status;                         //  0, or -1 if the store failed (down, error)
    const char *epoch;                  //  the topic's epoch now; "" if it has no history
    uint64_t last;                      //  its last offset now (0 if none)
    bool complete;                      //  entries are every message after since, up to
                                        //  last, of the epoch asked for
    const wsr_history_entry_t *entries; //  count entries in offset order, each > since
    size_t count;
} wsr_history_result_t;

//  Read callback, from inside wsr_redis_process (or during wsr_redis_destroy,
//  with status -1). Called exactly once per accepted read.
typedef void (wsr_history_read_fn) (void *arg, const wsr_history_result_t *result);

//  Append callback: status 0 with the offset and epoch the message got, or
//  -1 (offset 0, epoch "") if it may not have been appended.
typedef void (wsr_history_append_fn) (void *arg, int status, uint64_t offset, const char *epoch);

//  Write the frame header that publish.lua puts before a payload it
//  publishes: 0xFF "WSR" 0x01, the offset in decimal, ':', the epoch, ':'.
//  out needs WSR_HISTORY_HEADER_MAX bytes. Returns the header length, or -1
//  if offset is 0 or the epoch is not 1..WSR_HISTORY_EPOCH_MAX of
//  [0-9A-Za-z-].
int
    wsr_history_frame_header (uint64_t offset, const char *epoch, uint8_t *out, size_t size);

//  Split a message received on a topic's channel. Returns 0 if it is framed
//  (offset, epoch as a C string in a WSR_HISTORY_EPOCH_MAX + 1 buffer, and
//  the payload inside data), -1 if it is a plain PUBLISH (anything else,
//  including bytes that start like a frame but whose header is malformed).
int
    wsr_history_frame_decode (const uint8_t *data, size_t size, uint64_t *offset,
                              char *epoch, const uint8_t **payload, size_t *payload_size);

//  Create a store on a Redis link (borrowed; it must outlive the store, or
//  be destroyed first, which fails what is in flight). size entries per
//  topic (1..1000000), kept ttl_s seconds after the last append; a topic's
//  epoch and offset are kept longer (the larger of ttl_s and
//  WSR_HISTORY_META_TTL_S, renewed by appends and reads), and a read makes
//  them if missing, so that every topic read has an epoch; sharded
//  publishes with SPUBLISH instead of PUBLISH.
wsr_history_t *
    wsr_history_new (wsr_redis_t *redis, size_t size, int ttl_s, bool sharded);

//  Destroy the store. Callbacks of requests still in flight are not called.
void
    wsr_history_destroy (wsr_history_t **self_p);

//  Append payload to the topic whose Redis channel is channel and publish
//  it framed (EVALSHA publish.lua). Returns 0 if sent (cb, if not NULL,
//  follows), -1 if Redis is down or too many requests are in flight.
int
    wsr_history_append (wsr_history_t *self, const char *channel, const uint8_t *data,
                        size_t size, wsr_history_append_fn *cb, void *arg);

//  Read the entries of channel after since (at most max, 0..WSR_HISTORY_MAX_READ),
//  with the current epoch and last offset (made now if the topic has none:
//  then a new epoch at 0); complete is judged against epoch (NULL: whatever
//  the current one is). Returns 0 if sent (cb
//  follows), -1 if Redis is down or too many requests are in flight.
int
    wsr_history_read (wsr_history_t *self, const char *channel, uint64_t since,
                      const char *epoch, size_t max, wsr_history_read_fn *cb, void *arg);

//  Requests waiting for Redis.
size_t
    wsr_history_inflight (wsr_history_t *self);

//  Self test
void
    wsr_history_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
