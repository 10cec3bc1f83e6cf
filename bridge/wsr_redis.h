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
//  password percent-decoded; with a user, Redis 6 ACL "AUTH user password"),
//  or for redis+cluster://[user:pass@]host:port[,host:port...]: a Redis
//  Cluster with sharded Pub/Sub (wsr_rcluster; see wsr_redis.c).
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
//  (NOPERM), SELECT. Each refused AUTH is retried with backoff. On a cluster:
//  publishes lost after they were queued (node lost, no owner, redirections).
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

//  Reply to a command sent with wsr_redis_command: reply (hiredis', borrowed
//  for the call), or NULL if the connection was lost before it came (also
//  during wsr_redis_destroy). Called exactly once per command accepted.
struct redisReply;
typedef void (wsr_redis_reply_fn) (void *arg, struct redisReply *reply);

//  Send any command on the publish connection (replies come in order, from
//  inside wsr_redis_process). Returns 0 if queued, -1 if that connection is
//  not up (then cb is never called).
int
    wsr_redis_command (wsr_redis_t *self, int argc, const char **argv, const size_t *argvlen,
                       wsr_redis_reply_fn *cb, void *arg);

//  The subscriber connection always holds one subscription (by default
//  "__wsrouter:hold", whose messages are ignored) so that its count never
//  drops to 0: hiredis 0.14 leaves its subscribed mode then, and aborts on a
//  reply to an (UN)SUBSCRIBE still on the way. Give a name Redis ACLs allow
//  and no topic maps to (e.g. the user template's prefix + ".hold": ids
//  never start with a dot). Call before the first wsr_redis_process.
void
    wsr_redis_set_hold (wsr_redis_t *self, const char *channel);

//  Counts the publish connection's successful connects: a command sent
//  when it differs from a remembered value goes on a new connection (e.g.
//  scripts must be loaded again).
uint64_t
    wsr_redis_generation (wsr_redis_t *self);

//  True for a redis+cluster:// link (SSUBSCRIBE / SPUBLISH at the owner).
bool
    wsr_redis_sharded (wsr_redis_t *self);

//  Called when Redis confirms a SUBSCRIBE of channel (channel_len bytes),
//  including the re-subscriptions after a reconnect: from then on every
//  message published on it reaches on_message.
typedef void (wsr_redis_subscribed_fn) (void *arg, const char *channel, size_t channel_len);

//  Set (or clear, with NULL) the subscription confirmation callback.
void
    wsr_redis_set_subscribed_fn (wsr_redis_t *self, wsr_redis_subscribed_fn *fn, void *arg);

//  Self test
void
    wsr_redis_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
