//  wsr_rcluster — Redis Cluster link for sharded Pub/Sub: slot routing on the owner's poll loop

#ifndef WSR_RCLUSTER_H_INCLUDED
#define WSR_RCLUSTER_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _wsr_rcluster_t wsr_rcluster_t;
typedef struct _wsr_rcluster_fixture_t wsr_rcluster_fixture_t;
struct redisReply;

//  Connections the link may open: at most two per cluster node (subscriber,
//  commands), nodes at most WSR_RCLUSTER_MAX_NODES. Pollitems never writes more.
#define WSR_RCLUSTER_MAX_NODES      64
#define WSR_RCLUSTER_MAX_POLLITEMS  (2 * WSR_RCLUSTER_MAX_NODES)
#define WSR_RCLUSTER_MAX_CHANNELS   1000000             //  channels wanted at once
#define WSR_RCLUSTER_MAX_OUTPUT     (64 * 1024 * 1024)  //  bytes queued per connection
#define WSR_RCLUSTER_MAX_INPUT      (64 * 1024 * 1024)  //  bytes of one unfinished reply

//  Called for each smessage on a wanted channel, from inside
//  wsr_rcluster_process. pattern is always NULL (same shape as
//  wsr_redis_message_fn). Arguments are borrowed for the call.
typedef void (wsr_rcluster_message_fn) (void *arg, const char *pattern, const char *channel,
                                        size_t channel_len, const uint8_t *data, size_t size);

//  Called once per wsr_rcluster_command that was queued: with the final reply
//  (borrowed for the call; may be an error reply such as -CLUSTERDOWN), or
//  with NULL if it could not be delivered or answered (connection lost, no
//  reply in time, too many redirections, link destroyed). It may queue
//  further commands; it must not destroy the link.
typedef void (wsr_rcluster_reply_fn) (void *arg, const struct redisReply *reply);

//  Create a link for seeds, the part after redis+cluster://:
//  [user:pass@ | :pass@ | pass@]host:port[,host:port...] (IPv6 as [addr]:port,
//  default port 6379). Seeds may come in any order and some may be down; the
//  slot map is read from the first that answers. Connecting starts on the
//  first wsr_rcluster_process call. Returns NULL if seeds is malformed.
wsr_rcluster_t *
    wsr_rcluster_new (const char *seeds, wsr_rcluster_message_fn *on_message, void *arg);

//  Close every connection, fail pending commands (callbacks get NULL), free.
void
    wsr_rcluster_destroy (wsr_rcluster_t **self_p);

//  Want messages of channel: SSUBSCRIBE on the master owning its slot, kept
//  there across reshards and failovers. Idempotent. Returns -1 if the channel
//  table is full (WSR_RCLUSTER_MAX_CHANNELS; counted in take_failed).
int
    wsr_rcluster_subscribe (wsr_rcluster_t *self, const char *channel);

//  Stop wanting channel. Idempotent.
void
    wsr_rcluster_unsubscribe (wsr_rcluster_t *self, const char *channel);

//  SPUBLISH data to channel at its slot's master, following MOVED and ASK.
//  Returns 0 if queued, -1 if not (slot map unknown, node down, output limit):
//  the caller counts the loss. A queued message that fails later is counted
//  in wsr_rcluster_take_failed.
int
    wsr_rcluster_publish (wsr_rcluster_t *self, const char *channel, const uint8_t *data,
                          size_t size);

//  Send any keyed command to the master owning key's slot (hash tags apply),
//  following MOVED (map updated, command sent again) and ASK (ASKING, then the
//  command at that node), at most 3 redirections. argvlen may be NULL for
//  NUL-terminated arguments. callback may be NULL. Returns 0 if queued (the
//  callback will be called exactly once), -1 if not (the callback is not called).
int
    wsr_rcluster_command (wsr_rcluster_t *self, const char *key, int argc, const char **argv,
                          const size_t *argvlen, wsr_rcluster_reply_fn *callback, void *arg);

//  True while the slot map is known and every wanted channel is confirmed
//  subscribed at its slot's current master.
bool
    wsr_rcluster_connected (wsr_rcluster_t *self);

//  True while the slot map is known and fewer than 3 reads in a row failed: keyed
//  commands and publishes can be routed (subscriptions may still be moving).
bool
    wsr_rcluster_mapped (wsr_rcluster_t *self);

//  Called when a master confirms an SSUBSCRIBE of channel (channel_len
//  bytes), including re-subscriptions after a reshard or failover.
typedef void (wsr_rcluster_subscribed_fn) (void *arg, const char *channel, size_t channel_len);

//  Set (or clear, with NULL) the subscription confirmation callback.
void
    wsr_rcluster_set_subscribed_fn (wsr_rcluster_t *self, wsr_rcluster_subscribed_fn *fn,
                                    void *arg);

//  Established connections lost since the last call (each is re-made).
uint64_t
    wsr_rcluster_take_reconnects (wsr_rcluster_t *self);

//  Connections reset since the last call because their output (queued or
//  awaiting a reply) passed WSR_RCLUSTER_MAX_OUTPUT bytes, or their input
//  passed WSR_RCLUSTER_MAX_INPUT bytes.
uint64_t
    wsr_rcluster_take_resets (wsr_rcluster_t *self);

//  Publishes that were queued and then lost, and subscriptions refused
//  because the channel table was full, since the last call.
uint64_t
    wsr_rcluster_take_failed (wsr_rcluster_t *self);

//  Channels wanted.
size_t
    wsr_rcluster_wanted (wsr_rcluster_t *self);

//  Masters owning slots in the current map (0 until the map is known).
size_t
    wsr_rcluster_shards (wsr_rcluster_t *self);

//  The slot (0..16383) of a key or channel: CRC16-XMODEM of the key, or of
//  its first non-empty {hash tag}, modulo 16384.
uint16_t
    wsr_rcluster_slot (const char *key, size_t len);

//  Poll integration: write up to max items (WSR_RCLUSTER_MAX_POLLITEMS is
//  always enough) for the sockets the link wants watched; returns the count.
int
    wsr_rcluster_pollitems (wsr_rcluster_t *self, zmq_pollitem_t *items, int max);

//  Milliseconds until the link needs wsr_rcluster_process without I/O
//  (reconnects, pings, map refresh), never more than 500.
long
    wsr_rcluster_timeout (wsr_rcluster_t *self);

//  After zmq_poll: give back the items (with revents) from pollitems; does
//  I/O, delivers messages, follows topology changes, runs timers.
void
    wsr_rcluster_process (wsr_rcluster_t *self, zmq_pollitem_t *items, int count);

//  Self test (needs redis-server and redis-cli: exits 77 without them).
void
    wsr_rcluster_test (bool verbose);

//  For selftests: a throwaway local Redis Cluster of masters x (1 + replicas)
//  redis-server processes (cluster-node-timeout 1000 ms) on loopback ports
//  whose bus ports (+10000) are free too, each in a temporary directory, made
//  with redis-cli --cluster create, with requirepass/masterauth if password is
//  not NULL. Returns once cluster_state is ok on every node and every replica
//  is in sync; NULL if that failed. Children get SIGKILL if the creating
//  thread dies, and on abort().
wsr_rcluster_fixture_t *
    wsr_rcluster_fixture_new (int masters, int replicas, const char *password);

//  For selftests: stop every node (by PID), remove the directories.
void
    wsr_rcluster_fixture_destroy (wsr_rcluster_fixture_t **self_p);

//  For selftests: node count and the port of node index (0..count-1).
int
    wsr_rcluster_fixture_size (wsr_rcluster_fixture_t *self);
int
    wsr_rcluster_fixture_port (wsr_rcluster_fixture_t *self, int index);

//  For selftests: SIGKILL node index and reap it (its port stays listed).
void
    wsr_rcluster_fixture_kill (wsr_rcluster_fixture_t *self, int index);

//  For selftests: true if node index is alive.
bool
    wsr_rcluster_fixture_alive (wsr_rcluster_fixture_t *self, int index);

//  For selftests: wait up to timeout_ms for cluster_state:ok on every live node.
bool
    wsr_rcluster_fixture_wait_ok (wsr_rcluster_fixture_t *self, int timeout_ms);

#ifdef __cplusplus
}
#endif
#endif
