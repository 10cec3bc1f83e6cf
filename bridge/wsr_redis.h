//  wsr_redis — a Redis pub/sub backplane link on hiredis async, driven by the owner's poll loop

#ifndef WSR_REDIS_H_INCLUDED
#define WSR_REDIS_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _wsr_redis_t wsr_redis_t;

//  Called for each message received on a subscribed channel or pattern, from
//  inside wsr_redis_process. pattern is the matching pattern for a pattern
//  subscription, NULL otherwise. Arguments are borrowed for the call.
typedef void (wsr_redis_message_fn) (void *arg, const char *pattern, const char *channel,
                                     size_t channel_len, const uint8_t *data, size_t size);

//  Create a link for redis://[[user]:password@]host[:port][/db] (user and
//  password percent-decoded; with a user, Redis 6 ACL "AUTH user password").
//  Connecting starts on the first wsr_redis_process call and is retried with
//  backoff forever. Returns NULL if the URL is invalid (logged with the
//  reason, the password hidden).
wsr_redis_t *
    wsr_redis_new (const char *url, wsr_redis_message_fn *on_message, void *arg);

//  Close both connections and free the link.
void
    wsr_redis_destroy (wsr_redis_t **self_p);

//  Want messages of channel (SUBSCRIBE now if connected, and again after
//  every reconnect). Idempotent.
void
    wsr_redis_subscribe (wsr_redis_t *self, const char *channel);

//  Stop wanting channel. Idempotent.
void
    wsr_redis_unsubscribe (wsr_redis_t *self, const char *channel);

//  Want messages of a glob pattern (PSUBSCRIBE, kept across reconnects).
void
    wsr_redis_psubscribe (wsr_redis_t *self, const char *pattern);

//  PUBLISH data to channel. Returns 0 if queued on a live connection, -1 if
//  Redis is down (the caller counts the loss).
int
    wsr_redis_publish (wsr_redis_t *self, const char *channel, const uint8_t *data,
                       size_t size);

//  True while both connections are up.
bool
    wsr_redis_connected (wsr_redis_t *self);

//  Connections lost since the last call (each is re-made with backoff).
uint64_t
    wsr_redis_take_reconnects (wsr_redis_t *self);

//  Commands Redis refused since the last call: AUTH (wrong password), any
//  command without one (NOAUTH), SUBSCRIBE or PUBLISH outside an ACL
//  (NOPERM), SELECT. Each refused AUTH is retried with backoff.
uint64_t
    wsr_redis_take_refusals (wsr_redis_t *self);

//  Channels and patterns wanted.
size_t
    wsr_redis_wanted (wsr_redis_t *self);

//  Poll integration: write up to max items for the sockets hiredis wants
//  watched; returns the count.
int
    wsr_redis_pollitems (wsr_redis_t *self, zmq_pollitem_t *items, int max);

//  Milliseconds until the link needs wsr_redis_process without I/O
//  (reconnect, ping), never more than 500.
long
    wsr_redis_timeout (wsr_redis_t *self);

//  After zmq_poll: give back the items (with revents) from pollitems; does
//  I/O, delivers messages, reconnects when due.
void
    wsr_redis_process (wsr_redis_t *self, zmq_pollitem_t *items, int count);

//  Self test
void
    wsr_redis_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
