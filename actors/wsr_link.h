//  wsr_link — a node actor's link to its bridges: one ROUTER speaking WBP/1 to each

#ifndef WSR_LINK_H_INCLUDED
#define WSR_LINK_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _wsr_link_t wsr_link_t;

#define WSR_LINK_MAX_BRIDGES    8       //  bridges a node connects to
#define WSR_LINK_OWNER_DEAD_MS  1500    //  a bridge silent this long loses its topics

//  What wsr_link_recv hands to the owner.
typedef enum {
    WSR_LINK_NOTHING,           //  nothing for the owner (none waiting, or handled inside)
    WSR_LINK_DELIVER,           //  topic, body: a message for a topic's sessions
    WSR_LINK_REPLY,             //  session, body: a message for one session
    WSR_LINK_REFUSED,           //  topic: the bridge did not take this subscription
    WSR_LINK_HISTORY,           //  request, body: a history read's result
    WSR_LINK_PRESENCE,          //  request, status, body: a presence query's JSON answer
    WSR_LINK_SYNCED             //  request: the token of a wsr_link_sync, from one bridge
} wsr_link_kind_t;

//  One received message. Frames are owned by the struct until the owner
//  takes them (sets the pointer to NULL) or calls wsr_link_msg_reset.
typedef struct {
    wsr_link_kind_t kind;
    zframe_t *topic;            //  D (a large DELIVER), REFUSED: topic key with its NUL
    zframe_t *body;             //  D, REPLY, HISTORY, PRESENCE: the envelope / body
    const char *key;            //  DELIVER: the topic key (NUL-terminated) and
    const uint8_t *data;        //  the envelope (any kind: body's bytes), borrowed until the next
    size_t size;                //  wsr_link_recv (from topic/body, or from a
                                //  batch of deliveries the link hands out; body is
                                //  then NULL)
    uint64_t session;           //  REPLY: session id
    uint64_t request;           //  HISTORY, PRESENCE: the request id given
    int status;                 //  PRESENCE: HTTP status of the answer
} wsr_link_msg_t;

//  A session's lifecycle event (strings borrowed).
typedef struct {
    bool connect;               //  true: connect, false: disconnect
    uint64_t session;           //  session id
    const char *user;           //  the token's sub
    const char *channels;       //  comma-joined channels ("" none)
    int64_t since_ms;           //  wall-clock ms when the session opened
    int code;                   //  disconnect: close code (1006 when none was exchanged)
    const char *reason;         //  disconnect: close reason ("" none)
    int64_t duration_ms;        //  disconnect: how long the session lived
} wsr_link_event_t;

//  How a link is set up (strings borrowed for wsr_link_new).
typedef struct {
    const char *endpoint;       //  the bridge: inproc://NAME or tcp://HOST:PORT, or
                                //  several, comma-separated (topics shared out)
    const char *node;           //  this node's id (HELLO)
    const char *role;           //  WSR_ROLE_WORKER or WSR_ROLE_ROUTER
    int index;                  //  worker index (0 for the router)
    const char *curve_secret;   //  our secret certificate file, NULL = plaintext
    const char *curve_server;   //  the bridge's public certificate file (one for all
                                //  bridges, or one per endpoint, comma-separated)
    wsr_metrics_t *metrics;     //  moves and stale deliveries counted here, or NULL
} wsr_link_opts_t;

//  The owner's topics, asked for when the bridge has to learn them again
//  (a restarted bridge, or one that had forgotten us): call
//  wsr_link_subscribe (link, key, true) for each.
typedef void (wsr_link_topics_fn) (void *arg, wsr_link_t *link);

//  Connect to the bridge and say HELLO. Returns NULL if the endpoint or the
//  certificates are refused (logged). topics may be NULL (no subscriptions).
wsr_link_t *
    wsr_link_new (const wsr_link_opts_t *opts, wsr_link_topics_fn *topics, void *arg);

//  Say BYE and close; safe on NULL.
void
    wsr_link_destroy (wsr_link_t **self_p);

//  The socket to poll for input (its ZMQ_FD; drain with wsr_link_recv while
//  zsock_events reports ZMQ_POLLIN). Borrowed.
zsock_t *
    wsr_link_socket (wsr_link_t *self);

//  Want (on) or no longer want a topic (key with its NUL, key_size counting
//  it). Batched: sent by wsr_link_flush, in order.
void
    wsr_link_subscribe (wsr_link_t *self, const char *key, size_t key_size, bool on);

//  Send a client message (upstream envelope) to the bridge. Takes the frame
//  on every path. Returns 0, or -1 if it cannot leave now (bridge queue full
//  or bridge unreachable for long): the caller tells the client.
int
    wsr_link_send_up (wsr_link_t *self, zframe_t **envelope_p);

//  Send an API publish [topic key][downstream envelope]. Takes both frames
//  on every path. Returns 0 or -1 as wsr_link_send_up.
int
    wsr_link_publish (wsr_link_t *self, zframe_t **topic_p, zframe_t **envelope_p);

//  Report a session's connect or disconnect (presence and lifecycle events).
//  Gathered and sent with the turn's batches (wsr_link_flush), after the
//  pending SUB/UNSUB batches, or earlier before any message that goes at once
//  (UP, PUB, HIST, PRESENCE), so the order seen by the bridge is kept.
//  Returns 0 (one that cannot be sent then is counted in wsr_link_drops).
int
    wsr_link_event (wsr_link_t *self, const wsr_link_event_t *event);

//  Ask who is present: kind "user" or "channel", id, at most limit sessions;
//  the answer comes back as a PRESENCE message with this request id.
//  Returns 0 or -1 (not sent).
int
    wsr_link_presence (wsr_link_t *self, uint64_t request, const char *kind, const char *id,
                       uint64_t limit);

//  Ask the bridge for topic's history (key with its NUL) after since, in
//  epoch (NULL or "": none known), at most max entries; the result comes
//  back as a HISTORY message with this request id. Returns 0 or -1 (not sent).
int
    wsr_link_read (wsr_link_t *self, uint64_t request, const char *topic, const char *epoch,
                   uint64_t since, uint64_t max);

//  A barrier (handover): the subscriptions batched so far leave, then SYNC
//  with token goes to every bridge. Each answers SYNCED (kind
//  WSR_LINK_SYNCED, request = token) once its backplane connections have
//  answered a round trip started after it: the subscriptions before it are
//  in force, and every message the backplane sent before is delivered
//  ahead of the SYNCED. Returns how many bridges were asked.
int
    wsr_link_sync (wsr_link_t *self, uint64_t token);

//  Read one message if one is waiting. Heartbeats and RESYNC are handled
//  here (kind NOTHING). Returns 0 with msg filled, or -1 if none was waiting.
int
    wsr_link_recv (wsr_link_t *self, wsr_link_msg_t *msg);

//  Free what the message still owns and zero it.
void
    wsr_link_msg_reset (wsr_link_msg_t *msg);

//  Send what is batched (subscriptions) and a PING if we have been silent
//  for WSR_PROTO_PING_MS. Call after every turn of the owner's loop.
void
    wsr_link_flush (wsr_link_t *self);

//  True while heartbeats arrive (one within WSR_PROTO_HB_DEAD_MS); *redis
//  and *nats get the last one's states (1 up, 0 down, -1 not configured).
bool
    wsr_link_bridge_up (wsr_link_t *self, int *redis, int *nats);

//  Messages this link could not send since it was created (queue full or
//  Messages sent since the link was created (to see whether a turn sent any).
uint64_t
    wsr_link_sent (wsr_link_t *self);

//  bridge unreachable): subscriptions, client messages, publishes.
uint64_t
    wsr_link_drops (wsr_link_t *self);

//  Topics moved from one bridge to another since the link was created.
uint64_t
    wsr_link_moves (wsr_link_t *self);

//  Deliveries dropped because they came from a bridge that no longer owns
//  the topic (a move's overlap).
uint64_t
    wsr_link_stale (wsr_link_t *self);

//  The bridge owning topic key (with its NUL) now: its index in the list.
int
    wsr_link_owner (wsr_link_t *self, const char *key, size_t key_size);

//  Self test
void
    wsr_link_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
