//  wsr_link — a node actor's link to its bridges: one ROUTER speaking WBP/1 to each
//
//  Session workers (role "worker") and the node's router (role "router") each
//  own one link. The link is the node's half of the node ⇄ bridge protocol
//  (wsr_msgs.h): it says HELLO when created, batches SUB/UNSUB so a burst of
//  new sessions costs one message per WSR_PROTO_MAX_TOPICS topics, sends
//  client messages (UP) and API publishes (PUB), PINGs when it has been
//  silent, and watches the bridges' heartbeats. When a bridge has lost our
//  subscriptions (RESYNC: it restarted, or forgot us after a silence; or its
//  heartbeat carries a new epoch), the link says HELLO again and asks its
//  owner, through a callback, to subscribe every topic again: topics are
//  stored once, in the owner's table.
//
//  Several bridges (endpoint "tcp://b1:7000,tcp://b2:7000", at most
//  WSR_LINK_MAX_BRIDGES). Topics are partitioned over the live bridges by
//  rendezvous hashing: a topic's owner is the live bridge whose endpoint
//  (as written, so every node must list the same endpoints) hashes highest
//  with the topic key. Each topic is subscribed at its owner only, so each
//  bridge's Redis / NATS subscriptions are its share. A bridge is live while
//  its heartbeats arrive (one within WSR_LINK_OWNER_DEAD_MS; at start every
//  bridge counts as live for that long). When the live set changes, the
//  owner's topics are enumerated once: those whose owner changed are
//  UNSUBscribed at the old owner (if it is still live) and SUBscribed at the
//  new one; a bridge coming back is first told BYE (forget what you held
//  for us) and HELLO, then gets its whole share. A delivery (D) from a bridge
//  that is not the topic's current owner is dropped (counted in
//  wsr_link_stale), so a move never doubles a message; so is one from a
//  bridge back in the live set that has not yet answered our BYE with its
//  own (a bridge that stalled past WSR_LINK_OWNER_DEAD_MS sends the backlog
//  of its old session first: the other bridge delivered part of it
//  meanwhile). What is published during a move can be lost (counted as
//  moves; history recovery fills it).
//  UP, PUB, EVENT and PRESENCE go to the first live bridge (one bridge, so
//  a session's messages stay in order), HIST to the topic's owner.
//  With one bridge all of this reduces to the single-bridge protocol.
//
//  Socket (owned): one ROUTER connected to every bridge's ROUTER (inproc, or
//  tcp with CURVE when certificates are given), each connection named with
//  ZMQ_CONNECT_ROUTING_ID ("b<index>.<generation>", new on every reconnect)
//  so the link addresses a bridge and knows which one spoke. The pipe exists
//  from connect on, so messages queue before the handshake as on a DEALER.
//  Sends never block: a full queue or an unreachable bridge makes the send
//  fail, and it is counted.

#include "wsr_classes.h"

#define S_ALIAS_MAX     24
#define S_RECV_FRAMES_MAX   9       //  routing id + frames of the longest bridge → peer
                                    //  message, with room

typedef enum {
    S_OP_NONE,
    S_OP_SUB,
    S_OP_UNSUB
} s_op_t;

typedef enum {
    S_MODE_NORMAL,                  //  owner's own (un)subscriptions
    S_MODE_RESYNC,                  //  enumerating for one bridge's resync
    S_MODE_MOVE                     //  enumerating after the live set changed
} s_mode_t;

//  One bridge.
typedef struct {
    char *endpoint;                 //  as configured (owned; also the hash seed)
    char *server_key;               //  its public certificate file, or NULL (owned)
    char alias [S_ALIAS_MAX];       //  routing id of our connection to it
    int generation;                 //  reconnects so far (part of the alias)
    zmsg_t *batch;                  //  SUB or UNSUB being filled, or NULL
    s_op_t batch_op;                //  which
    uint64_t epoch;                 //  bridge epoch from the last heartbeat
    int64_t last_hb;                //  mono ms of the last heartbeat, 0 = none
    int redis, nats;                //  backplane states from the last heartbeat
    int64_t last_send;              //  mono ms of our last message to it
    int64_t connected;              //  mono ms of the last (re)connect
    bool silent;                    //  reconnecting for lack of heartbeats (logged)
    bool fenced;                    //  back in the live set, our BYE not yet answered:
                                    //  its deliveries are the old session's
    int fence_beats;                //  heartbeats from it since (fallback: 2 lift it)
    int64_t dropped;                //  mono ms its connection last dropped, 0 = never
} s_bridge_t;

struct _wsr_link_t {
    zsock_t *sock;                  //  ROUTER to the bridges (owned)
    zsock_t *monitor;               //  PAIR: sock's disconnections (several bridges), or NULL
    char *node;                     //  node id (owned)
    char *role;                     //  WSR_ROLE_* (owned)
    int index;                      //  worker index
    char *curve_secret;             //  our secret certificate file, or NULL (owned)
    wsr_link_topics_fn *topics;     //  owner's topic enumerator, or NULL
    void *arg;                      //  its argument
    s_bridge_t bridges [WSR_LINK_MAX_BRIDGES];
    int count;                      //  bridges configured
    uint32_t live;                  //  bit i: bridge i owns its share now
    int64_t started;                //  mono ms the link was made
    s_mode_t mode;                  //  what wsr_link_subscribe is called for
    int resync_bridge;              //  S_MODE_RESYNC: which
    uint32_t old_live, revived;     //  S_MODE_MOVE: the live set before; bridges resynced
    uint64_t drops;                 //  messages that could not be sent
    uint64_t sent;                  //  messages sent (any bridge)
    zlist_t *events;                //  EVENTs of this turn, sent at flush (zmsg_t *, owned)
    uint64_t moves;                 //  topics moved to another bridge
    uint64_t stale;                 //  deliveries dropped: not from the topic's owner
    wsr_metrics_t *metrics;         //  shared counters, or NULL (not owned)
    zframe_t *deliveries;           //  DS being handed out one by one, or NULL
    size_t delivery_at;             //  offset of its next record
    int delivery_from;              //  the bridge that sent it
};

//  FNV-1a over the endpoint then the key: the rendezvous weight.
static uint64_t
s_weight (const char *endpoint, const char *key, size_t key_size)
{
    uint64_t hash = 14695981039346656037ULL;
    for (const char *p = endpoint; *p; p++)
        hash = (hash ^ (uint8_t) *p) * 1099511628211ULL;
    hash = (hash ^ 0xff) * 1099511628211ULL;
    for (size_t i = 0; i < key_size; i++)
        hash = (hash ^ (uint8_t) key [i]) * 1099511628211ULL;
    //  Finalize (splitmix64) so endpoints differing in one byte spread well
    hash ^= hash >> 30;
    hash *= 0xbf58476d1ce4e5b9ULL;
    hash ^= hash >> 27;
    hash *= 0x94d049bb133111ebULL;
    return hash ^ (hash >> 31);
}

//  The owner of a topic among the bridges of mask (all if mask is empty).
static int
s_owner (wsr_link_t *self, const char *key, size_t key_size, uint32_t mask)
{
    if (self->count == 1)
        return 0;
    if (!mask)
        mask = (1u << self->count) - 1;
    int best = 0;
    uint64_t best_weight = 0;
    bool found = false;
    for (int i = 0; i < self->count; i++)
        if (mask & (1u << i)) {
            uint64_t weight = s_weight (self->bridges [i].endpoint, key, key_size);
            if (!found || weight > best_weight) {
                best = i;
                best_weight = weight;
                found = true;
            }
        }
    return best;
}

//  A delivery from a bridge that no longer owns its topic: dropped, counted.
static void
s_stale (wsr_link_t *self)
{
    self->stale++;                      //  a move's overlap: the new owner delivers
    if (self->metrics)
        wsr_metrics_add (self->metrics, WSR_M_LINK_STALE, 1);
}

//  The next delivery of the DS being handed out into msg (key, data and
//  size borrowed from it until the next wsr_link_recv). Returns 0, or -1 at
//  its end (or at a malformed record: the rest is dropped).
static int
s_next_delivery (wsr_link_t *self, wsr_link_msg_t *msg)
{
    const uint8_t *data = zframe_data (self->deliveries);
    size_t size = zframe_size (self->deliveries);
    size_t at = self->delivery_at;
    if (at == size)
        return -1;
    if (size - at < 2)
        goto malformed;
    size_t key_size = (size_t) data [at] << 8 | data [at + 1];
    at += 2;
    if (key_size == 0 || size - at < key_size + 4 || data [at + key_size - 1] != 0)
        goto malformed;
    const char *key = (const char *) data + at;
    at += key_size;
    size_t env_size = (size_t) data [at] << 24 | (size_t) data [at + 1] << 16
                    | (size_t) data [at + 2] << 8 | data [at + 3];
    at += 4;
    if (size - at < env_size)
        goto malformed;
    self->delivery_at = at + env_size;
    if (self->count > 1 && (self->bridges [self->delivery_from].fenced
                        ||  s_owner (self, key, key_size, self->live) != self->delivery_from)) {
        s_stale (self);
        return s_next_delivery (self, msg);
    }
    msg->kind = WSR_LINK_DELIVER;
    msg->key = key;
    msg->data = data + at;
    msg->size = env_size;
    return 0;
malformed:
    zsys_warning ("link: malformed deliveries from the bridge dropped");
    self->delivery_at = size;
    return -1;
}

//  The first live bridge: client messages, publishes, events, queries.
static int
s_primary (wsr_link_t *self)
{
    for (int i = 0; i < self->count; i++)
        if (self->live & (1u << i))
            return i;
    return 0;
}

//  Send a message to bridge b; never blocks. Returns 0, or -1 (destroyed, counted).
static int
s_send (wsr_link_t *self, int b, zmsg_t **msg_p)
{
    s_bridge_t *bridge = &self->bridges [b];
    zmsg_pushstr (*msg_p, bridge->alias);
    if (zmsg_send (msg_p, self->sock)) {
        zmsg_destroy (msg_p);
        self->drops++;
        return -1;
    }
    bridge->last_send = wsr_util_mono_ms ();
    self->sent++;
    return 0;
}

static void
s_hello (wsr_link_t *self, int b)
{
    zmsg_t *msg = zmsg_new ();
    zmsg_addstr (msg, WSR_PROTO_HELLO);
    zmsg_addstr (msg, WSR_PROTO_VERSION);
    zmsg_addstr (msg, self->node);
    zmsg_addstr (msg, self->role);
    zmsg_addstrf (msg, "%d", self->index);
    s_send (self, b, &msg);
}

static void
s_bye (wsr_link_t *self, int b)
{
    zmsg_t *msg = zmsg_new ();
    zmsg_addstr (msg, WSR_PROTO_BYE);
    s_send (self, b, &msg);
}

static void
s_batch_send (wsr_link_t *self, int b)
{
    s_bridge_t *bridge = &self->bridges [b];
    if (bridge->batch)
        s_send (self, b, &bridge->batch);
    bridge->batch_op = S_OP_NONE;
}

static void
s_batch_send_all (wsr_link_t *self)
{
    for (int b = 0; b < self->count; b++)
        s_batch_send (self, b);
}

//  The lifecycle events gathered: after the (UN)SUB batches, so that a
//  connect follows its session's SUBs; before anything else we send, so
//  that they keep their place among the session's messages.
static void
s_events_send (wsr_link_t *self)
{
    if (!zlist_size (self->events))
        return;
    s_batch_send_all (self);
    zmsg_t *msg;
    while ((msg = (zmsg_t *) zlist_pop (self->events)))
        s_send (self, s_primary (self), &msg);
}

//  Add a topic to bridge b's batch.
static void
s_batch_add (wsr_link_t *self, int b, const char *key, size_t key_size, bool on)
{
    s_bridge_t *bridge = &self->bridges [b];
    s_op_t op = on? S_OP_SUB: S_OP_UNSUB;
    if (bridge->batch && (bridge->batch_op != op
                       || zmsg_size (bridge->batch) == 1 + WSR_PROTO_MAX_TOPICS))
        s_batch_send (self, b);
    if (!bridge->batch) {
        bridge->batch = zmsg_new ();
        zmsg_addstr (bridge->batch, on? WSR_PROTO_SUB: WSR_PROTO_UNSUB);
        bridge->batch_op = op;
    }
    zmsg_addmem (bridge->batch, key, key_size);
}

//  Bridge b lost our state: tell it again who we are and its share.
static void
s_resync (wsr_link_t *self, int b)
{
    s_bridge_t *bridge = &self->bridges [b];
    zmsg_destroy (&bridge->batch);      //  superseded by the full list
    bridge->batch_op = S_OP_NONE;
    s_hello (self, b);
    if (self->topics) {
        self->mode = S_MODE_RESYNC;
        self->resync_bridge = b;
        self->topics (self->arg, self);
        self->mode = S_MODE_NORMAL;
    }
    s_batch_send (self, b);
}

//  (Re)connect to bridge b under a new routing id, with its certificate.
static int
s_connect (wsr_link_t *self, int b)
{
    s_bridge_t *bridge = &self->bridges [b];
    snprintf (bridge->alias, sizeof bridge->alias, "b%d.%d", b, bridge->generation++);
    if (wsr_curve_client (self->sock, self->curve_secret, bridge->server_key))
        return -1;
    zmq_setsockopt (zsock_resolve (self->sock), ZMQ_CONNECT_ROUTING_ID, bridge->alias,
                    strlen (bridge->alias));
    if (zsock_connect (self->sock, "%s", bridge->endpoint) == -1) {
        zsys_error ("link: cannot connect to the bridge at %s: %s", bridge->endpoint,
                    zmq_strerror (zmq_errno ()));
        return -1;
    }
    bridge->connected = wsr_util_mono_ms ();
    return 0;
}

//  Split a comma-separated list into at most max owned strings; returns the count.
static int
s_split (const char *list, char **out, int max)
{
    int count = 0;
    const char *p = list;
    while (p && *p && count < max) {
        const char *comma = strchr (p, ',');
        size_t len = comma? (size_t) (comma - p): strlen (p);
        if (len)
            out [count++] = strndup (p, len);
        p = comma? comma + 1: NULL;
    }
    return p && *p? -1: count;
}

//  --------------------------------------------------------------------------
//  Connect and say HELLO.
wsr_link_t *
wsr_link_new (const wsr_link_opts_t *opts, wsr_link_topics_fn *topics, void *arg)
{
    assert (opts && opts->endpoint && opts->node && opts->role);
    wsr_link_t *self = (wsr_link_t *) zmalloc (sizeof (wsr_link_t));
    self->node = strdup (opts->node);
    self->role = strdup (opts->role);
    self->index = opts->index;
    self->topics = topics;
    self->arg = arg;
    self->curve_secret = opts->curve_secret? strdup (opts->curve_secret): NULL;
    self->metrics = opts->metrics;
    self->started = wsr_util_mono_ms ();
    self->events = zlist_new ();
    char *endpoints [WSR_LINK_MAX_BRIDGES] = { NULL };
    char *keys [WSR_LINK_MAX_BRIDGES] = { NULL };
    self->count = s_split (opts->endpoint, endpoints, WSR_LINK_MAX_BRIDGES);
    int key_count = opts->curve_server? s_split (opts->curve_server, keys,
                                                 WSR_LINK_MAX_BRIDGES): 0;
    bool ok = self->count > 0 && key_count >= 0
           && (key_count <= 1 || key_count == self->count);
    if (!ok)
        zsys_error ("link: give 1..%d bridge endpoints, and one bridge certificate or one "
                    "per endpoint", WSR_LINK_MAX_BRIDGES);
    for (int b = 0; b < WSR_LINK_MAX_BRIDGES; b++) {
        s_bridge_t *bridge = &self->bridges [b];
        bridge->endpoint = endpoints [b];
        const char *key = key_count > 1? keys [b]: key_count == 1? keys [0]: NULL;
        bridge->server_key = key && b < self->count? strdup (key): NULL;
        bridge->redis = bridge->nats = -1;
    }
    for (int b = 0; b < WSR_LINK_MAX_BRIDGES; b++)
        free (keys [b]);
    if (!ok) {
        if (self->count < 0)
            self->count = 0;
        wsr_link_destroy (&self);
        return NULL;
    }
    self->live = (1u << self->count) - 1;
    self->sock = zsock_new (ZMQ_ROUTER);
    assert (self->sock);
    zsock_set_router_mandatory (self->sock, 1);
    zsock_set_sndhwm (self->sock, WSR_HWM);
    zsock_set_rcvhwm (self->sock, WSR_HWM);
    zsock_set_sndtimeo (self->sock, 0);
    zsock_set_rcvtimeo (self->sock, 0);     //  receives never wait
    zsock_set_linger (self->sock, 0);
    //  Notice a dead bridge within seconds; reconnect quickly
    zsock_set_heartbeat_ivl (self->sock, 1000);
    zsock_set_heartbeat_timeout (self->sock, 3000);
    zsock_set_reconnect_ivl (self->sock, 100);
    zsock_set_reconnect_ivl_max (self->sock, 1000);
    //  Several bridges: a bridge whose connection drops (its process died,
    //  its host answered with a reset) loses its topics at once, not after
    //  WSR_LINK_OWNER_DEAD_MS of silence (which still covers a hung bridge)
    if (self->count > 1) {
        static _Atomic uint64_t monitors;
        char endpoint [64];
        snprintf (endpoint, sizeof endpoint, "inproc://wsr-link-monitor-%" PRIu64, ++monitors);
        if (zmq_socket_monitor (zsock_resolve (self->sock), endpoint,
                                ZMQ_EVENT_DISCONNECTED) == 0) {
            self->monitor = zsock_new (ZMQ_PAIR);
            assert (self->monitor);
            zsock_set_rcvtimeo (self->monitor, 0);
            if (zsock_connect (self->monitor, "%s", endpoint))
                zsock_destroy (&self->monitor);
        }
    }
    for (int b = 0; b < self->count; b++)
        if (s_connect (self, b)) {
            wsr_link_destroy (&self);
            return NULL;
        }
    for (int b = 0; b < self->count; b++)
        s_hello (self, b);
    return self;
}

//  --------------------------------------------------------------------------
//  Say BYE and close.
void
wsr_link_destroy (wsr_link_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        wsr_link_t *self = *self_p;
        if (self->sock)
            s_events_send (self);       //  a session's last words
        zmsg_t *left;
        while ((left = (zmsg_t *) zlist_pop (self->events)))
            zmsg_destroy (&left);
        zlist_destroy (&self->events);
        for (int b = 0; b < WSR_LINK_MAX_BRIDGES; b++)
            zmsg_destroy (&self->bridges [b].batch);
        zframe_destroy (&self->deliveries);
        if (self->sock) {
            for (int b = 0; b < self->count; b++)
                s_bye (self, b);
            if (self->monitor)
                zmq_socket_monitor (zsock_resolve (self->sock), NULL, 0);
            zsock_destroy (&self->monitor);
            zsock_destroy (&self->sock);
        }
        for (int b = 0; b < WSR_LINK_MAX_BRIDGES; b++) {
            free (self->bridges [b].endpoint);
            free (self->bridges [b].server_key);
        }
        free (self->node);
        free (self->role);
        free (self->curve_secret);
        free (self);
        *self_p = NULL;
    }
}

//  --------------------------------------------------------------------------
//  The socket to poll.
zsock_t *
wsr_link_socket (wsr_link_t *self)
{
    assert (self);
    return self->sock;
}

//  --------------------------------------------------------------------------
//  Batch a subscription change at the topic's owner; runs of the same
//  operation share a message, and the order of operations is kept. During an
//  enumeration (resync, move) only what changes is sent.
void
wsr_link_subscribe (wsr_link_t *self, const char *key, size_t key_size, bool on)
{
    assert (self && key && key_size > 0 && key [key_size - 1] == 0);
    int owner = s_owner (self, key, key_size, self->live);
    if (self->mode == S_MODE_NORMAL)
        s_batch_add (self, owner, key, key_size, on);
    else
    if (self->mode == S_MODE_RESYNC) {
        if (on && owner == self->resync_bridge)
            s_batch_add (self, owner, key, key_size, true);
    }
    else
    if (on) {
        int before = s_owner (self, key, key_size, self->old_live);
        bool revived = self->revived & (1u << owner);
        if (before != owner) {
            self->moves++;
            if (self->metrics)
                wsr_metrics_add (self->metrics, WSR_M_LINK_MOVES, 1);
            //  Still live and not told BYE: it holds the topic for us
            if ((self->live & (1u << before)) && !(self->revived & (1u << before)))
                s_batch_add (self, before, key, key_size, false);
        }
        if (before != owner || revived)
            s_batch_add (self, owner, key, key_size, true);
    }
}

//  --------------------------------------------------------------------------
//  A client message up.
int
wsr_link_send_up (wsr_link_t *self, zframe_t **envelope_p)
{
    assert (self && envelope_p && *envelope_p);
    s_events_send (self);               //  a session's connect before its messages
    int b = s_primary (self);
    s_batch_send (self, b);             //  a subscription sent first stays first
    zmsg_t *msg = zmsg_new ();
    zmsg_addstr (msg, WSR_PROTO_UP);
    zmsg_append (msg, envelope_p);
    return s_send (self, b, &msg);
}

//  --------------------------------------------------------------------------
//  An API publish.
int
wsr_link_publish (wsr_link_t *self, zframe_t **topic_p, zframe_t **envelope_p)
{
    assert (self && topic_p && *topic_p && envelope_p && *envelope_p);
    s_events_send (self);
    zmsg_t *msg = zmsg_new ();
    zmsg_addstr (msg, WSR_PROTO_PUB);
    zmsg_append (msg, topic_p);
    zmsg_append (msg, envelope_p);
    return s_send (self, s_primary (self), &msg);
}

//  --------------------------------------------------------------------------
//  A history read, at the topic's owner.
int
wsr_link_read (wsr_link_t *self, uint64_t request, const char *topic, const char *epoch,
               uint64_t since, uint64_t max)
{
    assert (self && topic);
    s_events_send (self);
    int b = s_owner (self, topic, strlen (topic) + 1, self->live);
    s_batch_send (self, b);             //  its SUB goes first
    uint8_t number [8];
    zmsg_t *msg = zmsg_new ();
    zmsg_addstr (msg, WSR_PROTO_HIST);
    wsr_msgs_put_u64 (number, request);
    zmsg_addmem (msg, number, 8);
    zmsg_addmem (msg, topic, strlen (topic) + 1);
    zmsg_addstr (msg, epoch? epoch: "");
    wsr_msgs_put_u64 (number, since);
    zmsg_addmem (msg, number, 8);
    wsr_msgs_put_u64 (number, max);
    zmsg_addmem (msg, number, 8);
    return s_send (self, b, &msg);
}

//  --------------------------------------------------------------------------
//  A barrier at every bridge.
int
wsr_link_sync (wsr_link_t *self, uint64_t token)
{
    assert (self);
    int asked = 0;
    uint8_t number [8];
    wsr_msgs_put_u64 (number, token);
    for (int b = 0; b < self->count; b++) {
        s_batch_send (self, b);             //  its SUBs go first
        zmsg_t *msg = zmsg_new ();
        zmsg_addstr (msg, WSR_PROTO_SYNC);
        zmsg_addmem (msg, number, 8);
        if (s_send (self, b, &msg) == 0)
            asked++;
    }
    return asked;
}

//  --------------------------------------------------------------------------
//  A lifecycle event.
int
wsr_link_event (wsr_link_t *self, const wsr_link_event_t *event)
{
    assert (self && event && event->user && event->channels && event->reason);
    uint8_t number [8];
    zmsg_t *msg = zmsg_new ();
    zmsg_addstr (msg, WSR_PROTO_EVENT);
    zmsg_addstr (msg, event->connect? "connect": "disconnect");
    wsr_msgs_put_u64 (number, event->session);
    zmsg_addmem (msg, number, 8);
    zmsg_addstr (msg, event->user);
    zmsg_addstr (msg, event->channels);
    wsr_msgs_put_u64 (number, (uint64_t) event->since_ms);
    zmsg_addmem (msg, number, 8);
    wsr_msgs_put_u64 (number, (uint64_t) event->code);
    zmsg_addmem (msg, number, 8);
    zmsg_addstr (msg, event->reason);
    wsr_msgs_put_u64 (number, (uint64_t) event->duration_ms);
    zmsg_addmem (msg, number, 8);
    //  Sent with the turn's batches (wsr_link_flush), or before the next
    //  message that goes at once: a burst of handshakes wakes the bridge
    //  once per turn, not twice per session
    if (zlist_size (self->events) >= WSR_PROTO_MAX_TOPICS)
        s_events_send (self);
    zlist_append (self->events, msg);
    return 0;
}

//  --------------------------------------------------------------------------
//  A presence query.
int
wsr_link_presence (wsr_link_t *self, uint64_t request, const char *kind, const char *id,
                   uint64_t limit)
{
    assert (self && kind && id);
    s_events_send (self);
    uint8_t number [8];
    zmsg_t *msg = zmsg_new ();
    zmsg_addstr (msg, WSR_PROTO_PRESENCE);
    wsr_msgs_put_u64 (number, request);
    zmsg_addmem (msg, number, 8);
    zmsg_addstr (msg, kind);
    zmsg_addstr (msg, id);
    wsr_msgs_put_u64 (number, limit);
    zmsg_addmem (msg, number, 8);
    return s_send (self, s_primary (self), &msg);
}

//  Which bridge a routing id names ("b<index>.<generation>", current only).
static int
s_bridge_of (wsr_link_t *self, zframe_t *alias)
{
    for (int b = 0; b < self->count; b++)
        if (zframe_streq (alias, self->bridges [b].alias))
            return b;
    return -1;
}

//  --------------------------------------------------------------------------
//  One message from a bridge. The bridge is trusted (authenticated), but
//  a malformed message is still dropped, not asserted on: versions can differ.
int
wsr_link_recv (wsr_link_t *self, wsr_link_msg_t *msg)
{
    assert (self && msg);
    memset (msg, 0, sizeof *msg);
    if (self->deliveries) {
        if (s_next_delivery (self, msg) == 0)
            return 0;
        zframe_destroy (&self->deliveries);
    }
    //  Frames straight into an array: no zmsg and list per message on the
    //  hot path. Non-blocking (receive timeout 0); a message's frames arrive
    //  together, so only the first receive can find nothing.
    zframe_t *f [S_RECV_FRAMES_MAX] = { NULL };
    size_t size = 0;
    bool more = true;
    while (more) {
        zframe_t *frame = zframe_recv (self->sock);
        if (!frame)
            break;
        more = zframe_more (frame);
        if (size < S_RECV_FRAMES_MAX)
            f [size++] = frame;
        else {
            zframe_destroy (&frame);        //  too many frames: malformed
            size = S_RECV_FRAMES_MAX + 1;
        }
    }
    if (size == 0)
        return -1;
    //  The routing id names the bridge (current connection only)
    int b = size <= S_RECV_FRAMES_MAX? s_bridge_of (self, f [0]): -1;
    zframe_destroy (&f [0]);
    if (b < 0) {
        for (size_t i = 1; i < size && i < S_RECV_FRAMES_MAX; i++)
            zframe_destroy (&f [i]);
        return 0;                           //  an old connection's leftovers, or too long
    }
    memmove (f, f + 1, (size - 1) * sizeof f [0]);
    f [--size] = NULL;
    if (size == 0)
        return 0;
    s_bridge_t *bridge = &self->bridges [b];
    zframe_t *command = f [0];
    if (size > S_RECV_FRAMES_MAX)
        zsys_warning ("link: malformed message from the bridge dropped");
    else
    if (zframe_streq (command, WSR_PROTO_DELIVER) && size == 3) {
        msg->topic = f [1];
        msg->body = f [2];
        f [1] = f [2] = NULL;
        msg->kind = WSR_LINK_DELIVER;
        msg->key = (const char *) zframe_data (msg->topic);
        msg->data = zframe_data (msg->body);
        msg->size = zframe_size (msg->body);
        if (self->count > 1 && zframe_size (msg->topic) > 0
        &&  (bridge->fenced
          || s_owner (self, msg->key, zframe_size (msg->topic), self->live) != b)) {
            s_stale (self);
            wsr_link_msg_reset (msg);
        }
    }
    else
    if (zframe_streq (command, WSR_PROTO_DELIVERS) && size == 2) {
        self->deliveries = f [1];
        self->delivery_at = 0;
        self->delivery_from = b;
        f [1] = NULL;
        if (s_next_delivery (self, msg))
            zframe_destroy (&self->deliveries);      //  empty or malformed: nothing
    }
    else
    if (zframe_streq (command, WSR_PROTO_REPLY) && size == 3) {
        if (zframe_size (f [1]) == 8) {
            msg->session = wsr_msgs_get_u64 (zframe_data (f [1]));
            msg->body = f [2];
            f [2] = NULL;
            msg->kind = WSR_LINK_REPLY;
        }
    }
    else
    if (zframe_streq (command, WSR_PROTO_HB) && size == 3) {
        zframe_t *epoch = f [1];
        zframe_t *beat = f [2];
        int redis = -1, nats = -1;
        if (zframe_size (epoch) == 8
        &&  wsr_envelope_decode_heartbeat (zframe_data (beat), zframe_size (beat),
                                           &redis, &nats) == 0) {
            uint64_t value = wsr_msgs_get_u64 (zframe_data (epoch));
            bool restarted = bridge->last_hb && value != bridge->epoch;
            if (bridge->silent)
                zsys_info ("link: the bridge at %s answers again", bridge->endpoint);
            bridge->silent = false;
            bridge->epoch = value;
            bridge->last_hb = wsr_util_mono_ms ();
            bridge->redis = redis;
            bridge->nats = nats;
            //  A bridge that does not answer BYE (older): its second
            //  heartbeat after ours, which followed its HELLO reply
            if (bridge->fenced && ++bridge->fence_beats >= 2)
                bridge->fenced = false;
            //  A bridge out of the live set gets its share back in flush
            if (restarted && (self->live & (1u << b)))
                s_resync (self, b);
        }
    }
    else
    if (zframe_streq (command, WSR_PROTO_HISTR) && size == 3) {
        if (zframe_size (f [1]) == 8) {
            msg->request = wsr_msgs_get_u64 (zframe_data (f [1]));
            msg->body = f [2];
            f [2] = NULL;
            msg->kind = WSR_LINK_HISTORY;
        }
    }
    else
    if (zframe_streq (command, WSR_PROTO_PRESENCER) && size == 4) {
        if (zframe_size (f [1]) == 8 && zframe_size (f [2]) == 8) {
            msg->request = wsr_msgs_get_u64 (zframe_data (f [1]));
            msg->status = (int) wsr_msgs_get_u64 (zframe_data (f [2]));
            msg->body = f [3];
            f [3] = NULL;
            msg->kind = WSR_LINK_PRESENCE;
        }
    }
    else
    if (zframe_streq (command, WSR_PROTO_SYNCED) && size == 2) {
        if (zframe_size (f [1]) == 8) {
            msg->request = wsr_msgs_get_u64 (zframe_data (f [1]));
            msg->kind = WSR_LINK_SYNCED;
        }
    }
    else
    if (zframe_streq (command, WSR_PROTO_BYE) && size == 1)
        bridge->fenced = false;         //  it forgot the old session: what follows is new
    else
    if (zframe_streq (command, WSR_PROTO_RESYNC) && size == 1) {
        if (self->live & (1u << b))
            s_resync (self, b);
    }
    else
    if (zframe_streq (command, WSR_PROTO_REFUSED) && size == 3) {
        msg->topic = f [1];
        f [1] = NULL;
        msg->kind = WSR_LINK_REFUSED;
    }
    else
        zsys_warning ("link: malformed message from the bridge dropped");
    for (size_t i = 0; i < size && i < S_RECV_FRAMES_MAX; i++)
        zframe_destroy (&f [i]);
    if (msg->body && !msg->data) {
        msg->data = zframe_data (msg->body);
        msg->size = zframe_size (msg->body);
    }
    if (msg->topic && (zframe_size (msg->topic) == 0
                    || zframe_data (msg->topic) [zframe_size (msg->topic) - 1] != 0))
        wsr_link_msg_reset (msg);       //  a key always ends with its NUL
    return 0;
}

//  --------------------------------------------------------------------------
//  Free a message's frames.
void
wsr_link_msg_reset (wsr_link_msg_t *msg)
{
    assert (msg);
    zframe_destroy (&msg->topic);
    zframe_destroy (&msg->body);
    memset (msg, 0, sizeof *msg);
}

//  Connections that dropped since the last turn (monitor events: [event
//  id, value][endpoint as connected]).
static void
s_read_monitor (wsr_link_t *self, int64_t now)
{
    while (self->monitor && (zsock_events (self->monitor) & ZMQ_POLLIN)) {
        zmsg_t *event = zmsg_recv (self->monitor);
        if (!event)
            break;
        zframe_t *head = zmsg_first (event);
        zframe_t *address = zmsg_next (event);
        if (head && zframe_size (head) >= 2 && address) {
            uint16_t id;
            memcpy (&id, zframe_data (head), sizeof id);
            for (int b = 0; b < self->count && id == ZMQ_EVENT_DISCONNECTED; b++)
                if (zframe_size (address) == strlen (self->bridges [b].endpoint)
                &&  memcmp (zframe_data (address), self->bridges [b].endpoint,
                            zframe_size (address)) == 0)
                    self->bridges [b].dropped = now;
        }
        zmsg_destroy (&event);
    }
}

//  Several bridges: recompute the live set; when it changed, move the topics
//  whose owner changed, and give bridges that came back their share. A
//  bridge is live while it sends heartbeats, and not since its connection
//  dropped until it sends one again.
static void
s_follow_live (wsr_link_t *self, int64_t now)
{
    s_read_monitor (self, now);
    uint32_t live = 0;
    for (int b = 0; b < self->count; b++) {
        int64_t seen = self->bridges [b].last_hb? self->bridges [b].last_hb: self->started;
        if (now - seen <= WSR_LINK_OWNER_DEAD_MS && self->bridges [b].dropped < seen)
            live |= 1u << b;
    }
    if (live == 0 || live == self->live)
        return;                         //  none live: keep the shares where they are
    for (int b = 0; b < self->count; b++)
        if ((live ^ self->live) & (1u << b))
            zsys_info ("link: the bridge at %s %s", self->bridges [b].endpoint,
                       (live & (1u << b))? "is back: it takes its topics again"
                                        : "is silent: its topics move");
    s_batch_send_all (self);            //  what was batched goes where it was meant
    self->old_live = self->live;
    self->revived = live & ~self->live;
    self->live = live;
    for (int b = 0; b < self->count; b++)
        if (self->revived & (1u << b)) {
            s_bye (self, b);            //  whatever it still holds for us is stale
            s_hello (self, b);
            //  ... and so is whatever it sent before it read our BYE (a
            //  bridge that stalled sends its backlog now): not listened to
            //  until it answers BYE, so what the other bridge delivered
            //  meanwhile is not delivered again, nor out of order
            self->bridges [b].fenced = true;
            self->bridges [b].fence_beats = 0;
        }
    if (self->topics) {
        self->mode = S_MODE_MOVE;
        self->topics (self->arg, self);
        self->mode = S_MODE_NORMAL;
    }
    self->revived = 0;
    s_batch_send_all (self);
}

//  --------------------------------------------------------------------------
//  End of the owner's turn.
void
wsr_link_flush (wsr_link_t *self)
{
    assert (self);
    int64_t now = wsr_util_mono_ms ();
    if (self->count > 1)
        s_follow_live (self, now);
    for (int b = 0; b < self->count; b++) {
        s_bridge_t *bridge = &self->bridges [b];
        //  No heartbeat for long: the connection may be dead for good (ZeroMQ
        //  does not retry after a refused CURVE handshake, e.g. before our
        //  certificate was added to the bridge's directory): connect afresh,
        //  under a new routing id. The socket (and its ZMQ_FD) stays. Not
        //  for an in-process bridge: nothing between us can fail, a late
        //  heartbeat means its thread is busy, and a reconnect would only
        //  add work (every topic subscribed again, the old peer's expired)
        if (strncmp (bridge->endpoint, "inproc://", 9)
        &&  now - bridge->connected >= WSR_PROTO_RECONNECT_MS
        &&  (!bridge->last_hb || now - bridge->last_hb >= WSR_PROTO_RECONNECT_MS)) {
            if (!bridge->silent)
                zsys_warning ("link: no heartbeat from the bridge at %s for %d s; "
                              "reconnecting", bridge->endpoint, WSR_PROTO_RECONNECT_MS / 1000);
            bridge->silent = true;
            zsock_disconnect (self->sock, "%s", bridge->endpoint);
            if (s_connect (self, b) == 0 && (self->live & (1u << b)))
                s_resync (self, b);
            bridge->connected = now;
        }
        s_batch_send (self, b);
        if (b == self->count - 1)
            s_events_send (self);       //  after every batch, before a PING
        if (now - bridge->last_send >= WSR_PROTO_PING_MS) {
            zmsg_t *ping = zmsg_new ();
            zmsg_addstr (ping, WSR_PROTO_PING);
            s_send (self, b, &ping);
        }
    }
}

//  --------------------------------------------------------------------------
//  Bridge liveness from heartbeats: any bridge; states from the first live.
bool
wsr_link_bridge_up (wsr_link_t *self, int *redis, int *nats)
{
    assert (self);
    int64_t now = wsr_util_mono_ms ();
    int up = -1;
    for (int b = 0; b < self->count && up < 0; b++)
        if (self->bridges [b].last_hb
        &&  now - self->bridges [b].last_hb <= WSR_PROTO_HB_DEAD_MS)
            up = b;
    s_bridge_t *bridge = &self->bridges [up < 0? 0: up];
    if (redis)
        *redis = bridge->redis;
    if (nats)
        *nats = bridge->nats;
    return up >= 0;
}

//  --------------------------------------------------------------------------
//  Messages not sent.
uint64_t
wsr_link_sent (wsr_link_t *self)
{
    assert (self);
    return self->sent;
}

//  --------------------------------------------------------------------------
//  Messages not sent.
uint64_t
wsr_link_drops (wsr_link_t *self)
{
    assert (self);
    return self->drops;
}

//  --------------------------------------------------------------------------
//  Topics moved between bridges.
uint64_t
wsr_link_moves (wsr_link_t *self)
{
    assert (self);
    return self->moves;
}

//  --------------------------------------------------------------------------
//  Deliveries dropped because another bridge owns the topic now.
uint64_t
wsr_link_stale (wsr_link_t *self)
{
    assert (self);
    return self->stale;
}

//  --------------------------------------------------------------------------
//  The bridge owning a topic now (index in the endpoint list).
int
wsr_link_owner (wsr_link_t *self, const char *key, size_t key_size)
{
    assert (self && key);
    return s_owner (self, key, key_size, self->live);
}

//  --------------------------------------------------------------------------
//  Selftest: the test plays the bridge (a ROUTER).

static zmsg_t *
s_bridge_recv (zsock_t *router)
{
    zpoller_t *poller = zpoller_new (router, NULL);
    zmsg_t *msg = zpoller_wait (poller, 2000) == router? zmsg_recv (router): NULL;
    zpoller_destroy (&poller);
    assert (msg);
    return msg;
}

//  Expect [rid][command][frames...]; returns the message for more checks.
static zmsg_t *
s_expect (zsock_t *router, const char *command, size_t frames)
{
    zmsg_t *msg = s_bridge_recv (router);
    zmsg_first (msg);                   //  the routing id
    if (zmsg_size (msg) != frames + 2 || !zframe_streq (zmsg_next (msg), command)) {
        zmsg_print (msg);
        assert (false);
    }
    return msg;
}

static void
s_topics (void *arg, wsr_link_t *link)
{
    int *calls = (int *) arg;
    (*calls)++;
    wsr_link_subscribe (link, "user:a", 7, true);
    wsr_link_subscribe (link, "user:b", 7, true);
}

//  Wait for one message kind on the link, handling the others.
static int
s_link_wait (wsr_link_t *link, wsr_link_msg_t *msg, wsr_link_kind_t kind, int ms)
{
    int64_t end = zclock_mono () + ms;
    while (zclock_mono () < end) {
        if (wsr_link_recv (link, msg) == 0 && msg->kind == kind)
            return 0;
        wsr_link_msg_reset (msg);
        zclock_sleep (1);
    }
    return -1;
}

//  Several bridges: the owner's topics for the enumerator.
#define S_TEST_TOPICS 20

static void
s_topics_many (void *arg, wsr_link_t *link)
{
    (void) arg;
    for (int i = 0; i < S_TEST_TOPICS; i++) {
        char key [16];
        int n = snprintf (key, sizeof key, "user:t%d", i);
        wsr_link_subscribe (link, key, (size_t) n + 1, true);
    }
}

//  Drain what a test bridge received: SUB topics set in subs (1), UNSUB
//  topics in unsubs, HELLO / BYE counted. Returns messages read.
static int
s_drain (zsock_t *router, bool subs [], bool unsubs [], int *hellos, int *byes, zframe_t **rid)
{
    int count = 0;
    zpoller_t *poller = zpoller_new (router, NULL);
    while (zpoller_wait (poller, 100) == router) {
        zmsg_t *msg = zmsg_recv (router);
        zframe_t *id = zmsg_pop (msg);
        if (rid) {
            zframe_destroy (rid);
            *rid = id;
        }
        else
            zframe_destroy (&id);
        char *command = zmsg_popstr (msg);
        bool sub = streq (command, WSR_PROTO_SUB), unsub = streq (command, WSR_PROTO_UNSUB);
        if (streq (command, WSR_PROTO_HELLO) && hellos)
            (*hellos)++;
        if (streq (command, WSR_PROTO_BYE) && byes)
            (*byes)++;
        for (zframe_t *f = zmsg_first (msg); f && (sub || unsub); f = zmsg_next (msg)) {
            int i = atoi ((const char *) zframe_data (f) + 6);
            assert (i >= 0 && i < S_TEST_TOPICS);
            if (sub)
                subs [i] = true;
            else
                unsubs [i] = true;
        }
        zstr_free (&command);
        zmsg_destroy (&msg);
        count++;
    }
    zpoller_destroy (&poller);
    return count;
}

static void
s_beat (zsock_t *router, zframe_t *rid, uint64_t epoch)
{
    uint8_t number [8];
    wsr_msgs_put_u64 (number, epoch);
    zframe_t *beat = wsr_envelope_encode_heartbeat (1, -1);
    zsock_send (router, "fsbf", rid, WSR_PROTO_HB, number, (size_t) 8, beat);
    zframe_destroy (&beat);
}

//  A delivery [rid][D][key][body] from a test bridge.
static void
s_deliver (zsock_t *router, zframe_t *rid, const char *key, size_t key_size, zframe_t *body)
{
    zmsg_t *deliver = zmsg_new ();
    zframe_t *copy = zframe_dup (rid);
    zmsg_append (deliver, &copy);
    zmsg_addstr (deliver, WSR_PROTO_DELIVER);
    zmsg_addmem (deliver, key, key_size);
    copy = zframe_dup (body);
    zmsg_append (deliver, &copy);
    zmsg_send (&deliver, router);
}

//  Beat A only until B leaves the live set; then drain what A got.
static void
s_silence_b (wsr_link_t *link, zsock_t *a, zframe_t *rid_a, bool sub_a [], bool unsub_a [])
{
    int64_t until = wsr_util_mono_ms () + WSR_LINK_OWNER_DEAD_MS + 300;
    wsr_link_msg_t in;
    while (wsr_util_mono_ms () < until) {
        s_beat (a, rid_a, 1);
        zclock_sleep (100);
        while (wsr_link_recv (link, &in) == 0)
            wsr_link_msg_reset (&in);
        wsr_link_flush (link);
    }
    s_drain (a, sub_a, unsub_a, NULL, NULL, NULL);
}

//  B beats (and A): B is live again, fenced; returns HELLOs and BYEs B got.
static void
s_revive_b (wsr_link_t *link, zsock_t *a, zframe_t *rid_a, zsock_t *b, zframe_t *rid_b,
            bool sub_a [], bool unsub_a [], bool sub_b [], bool unsub_b [], int *hellos,
            int *byes)
{
    wsr_link_msg_t in;
    s_beat (b, rid_b, 2);
    s_beat (a, rid_a, 1);
    zclock_sleep (50);
    while (wsr_link_recv (link, &in) == 0)
        wsr_link_msg_reset (&in);
    wsr_link_flush (link);
    s_drain (b, sub_b, unsub_b, hellos, byes, NULL);
    s_drain (a, sub_a, unsub_a, NULL, NULL, NULL);
}

static void
s_test_many (void)
{
    zsock_t *a = zsock_new_router ("inproc://wsr-link-test-a");
    zsock_t *b = zsock_new_router ("inproc://wsr-link-test-b");
    assert (a && b);
    wsr_link_opts_t opts = {
        .endpoint = "inproc://wsr-link-test-a,inproc://wsr-link-test-b", .node = "n2",
        .role = WSR_ROLE_WORKER
    };
    wsr_link_t *link = wsr_link_new (&opts, s_topics_many, NULL);
    assert (link);
    s_topics_many (NULL, link);
    wsr_link_flush (link);
    //  Each topic at exactly one bridge, both have a share
    bool sub_a [S_TEST_TOPICS] = { false }, sub_b [S_TEST_TOPICS] = { false };
    bool unsub_a [S_TEST_TOPICS] = { false }, unsub_b [S_TEST_TOPICS] = { false };
    int hellos = 0, byes = 0;
    zframe_t *rid_a = NULL, *rid_b = NULL;
    s_drain (a, sub_a, unsub_a, &hellos, NULL, &rid_a);
    s_drain (b, sub_b, unsub_b, &hellos, NULL, &rid_b);
    assert (hellos == 2 && rid_a && rid_b);
    int share_a = 0, share_b = 0;
    for (int i = 0; i < S_TEST_TOPICS; i++) {
        assert (sub_a [i] != sub_b [i]);
        share_a += sub_a [i];
        share_b += sub_b [i];
        char key [16];
        int n = snprintf (key, sizeof key, "user:t%d", i);
        assert (wsr_link_owner (link, key, (size_t) n + 1) == (sub_a [i]? 0: 1));
    }
    assert (share_a > 0 && share_b > 0);
    //  Only A beats: after WSR_LINK_OWNER_DEAD_MS, B's topics move to A
    memset (sub_a, 0, sizeof sub_a);
    wsr_link_msg_t in;
    s_silence_b (link, a, rid_a, sub_a, unsub_a);
    for (int i = 0; i < S_TEST_TOPICS; i++)
        assert (sub_a [i] == sub_b [i]);        //  exactly B's share moved
    assert (wsr_link_moves (link) == (uint64_t) share_b);
    //  A delivery from B (no longer owner) is dropped
    int moved = 0;
    while (!sub_b [moved])
        moved++;
    char key [16];
    int n = snprintf (key, sizeof key, "user:t%d", moved);
    zframe_t *body = wsr_envelope_encode_down ((const uint8_t *) "x", 1, 0, 0);
    s_deliver (b, rid_b, key, (size_t) n + 1, body);
    assert (s_link_wait (link, &in, WSR_LINK_DELIVER, 300) == -1);
    assert (wsr_link_stale (link) == 1);
    //  B beats again: BYE, HELLO and its share; A lets go of it
    memset (sub_b, 0, sizeof sub_b);
    memset (unsub_a, 0, sizeof unsub_a);
    hellos = 0;
    s_revive_b (link, a, rid_a, b, rid_b, sub_a, unsub_a, sub_b, unsub_b, &hellos, &byes);
    assert (hellos == 1 && byes == 1);
    for (int i = 0; i < S_TEST_TOPICS; i++)
        assert (sub_b [i] == unsub_a [i]);
    int back = 0;
    for (int i = 0; i < S_TEST_TOPICS; i++)
        back += sub_b [i];
    assert (back == share_b);
    //  What B sent before it read our BYE (a stalled bridge's backlog) is
    //  not delivered, although B owns the topic again; after B's BYE, it is
    s_deliver (b, rid_b, key, (size_t) n + 1, body);
    assert (s_link_wait (link, &in, WSR_LINK_DELIVER, 300) == -1);
    assert (wsr_link_stale (link) == 2);
    zsock_send (b, "fs", rid_b, WSR_PROTO_BYE);
    s_deliver (b, rid_b, key, (size_t) n + 1, body);
    assert (s_link_wait (link, &in, WSR_LINK_DELIVER, 1000) == 0);
    wsr_link_msg_reset (&in);
    assert (wsr_link_stale (link) == 2);
    //  A bridge that does not answer BYE (older): two heartbeats lift the fence
    s_silence_b (link, a, rid_a, sub_a, unsub_a);
    s_revive_b (link, a, rid_a, b, rid_b, sub_a, unsub_a, sub_b, unsub_b, &hellos, &byes);
    assert (hellos == 2 && byes == 2);
    s_deliver (b, rid_b, key, (size_t) n + 1, body);
    assert (s_link_wait (link, &in, WSR_LINK_DELIVER, 300) == -1);
    assert (wsr_link_stale (link) == 3);
    s_beat (b, rid_b, 2);
    s_beat (b, rid_b, 2);
    s_deliver (b, rid_b, key, (size_t) n + 1, body);
    assert (s_link_wait (link, &in, WSR_LINK_DELIVER, 1000) == 0);
    wsr_link_msg_reset (&in);
    wsr_link_destroy (&link);
    zframe_destroy (&body);
    zframe_destroy (&rid_a);
    zframe_destroy (&rid_b);
    zsock_destroy (&a);
    zsock_destroy (&b);
}

//  Several bridges over tcp: one whose connection drops (its process died)
//  loses its topics at once, well before WSR_LINK_OWNER_DEAD_MS of silence.
static void
s_test_dropped (void)
{
    zsock_t *a = zsock_new (ZMQ_ROUTER);
    zsock_t *b = zsock_new (ZMQ_ROUTER);
    assert (a && b);
    int port_a = zsock_bind (a, "tcp://127.0.0.1:*");
    int port_b = zsock_bind (b, "tcp://127.0.0.1:*");
    assert (port_a > 0 && port_b > 0);
    char endpoints [128];
    snprintf (endpoints, sizeof endpoints, "tcp://127.0.0.1:%d,tcp://127.0.0.1:%d", port_a,
              port_b);
    wsr_link_opts_t opts = { .endpoint = endpoints, .node = "n3", .role = WSR_ROLE_WORKER };
    wsr_link_t *link = wsr_link_new (&opts, s_topics_many, NULL);
    assert (link);
    s_topics_many (NULL, link);
    wsr_link_flush (link);
    bool sub_a [S_TEST_TOPICS] = { false }, sub_b [S_TEST_TOPICS] = { false };
    bool unsub [S_TEST_TOPICS] = { false };
    zframe_t *rid_a = NULL, *rid_b = NULL;
    s_drain (a, sub_a, unsub, NULL, NULL, &rid_a);
    s_drain (b, sub_b, unsub, NULL, NULL, &rid_b);
    assert (rid_a && rid_b);
    wsr_link_msg_t in;
    s_beat (a, rid_a, 1);
    s_beat (b, rid_b, 1);
    zclock_sleep (50);
    while (wsr_link_recv (link, &in) == 0)
        wsr_link_msg_reset (&in);
    wsr_link_flush (link);
    //  B's process "dies": its connection drops; A goes on beating
    zsock_destroy (&b);
    int64_t t_drop = wsr_util_mono_ms ();
    memset (sub_a, 0, sizeof sub_a);
    while (wsr_link_moves (link) == 0 && wsr_util_mono_ms () - t_drop < 3000) {
        s_beat (a, rid_a, 1);
        zclock_sleep (20);
        while (wsr_link_recv (link, &in) == 0)
            wsr_link_msg_reset (&in);
        wsr_link_flush (link);
    }
    int64_t took = wsr_util_mono_ms () - t_drop;
    assert (wsr_link_moves (link) > 0);
    assert (took < WSR_LINK_OWNER_DEAD_MS / 2);
    s_drain (a, sub_a, unsub, NULL, NULL, NULL);
    for (int i = 0; i < S_TEST_TOPICS; i++)
        assert (sub_a [i] == sub_b [i]);        //  exactly B's share moved
    wsr_link_destroy (&link);
    zframe_destroy (&rid_a);
    zframe_destroy (&rid_b);
    zsock_destroy (&a);
}

void
wsr_link_test (bool verbose)
{
    (void) verbose;
    zsock_t *router = zsock_new_router ("inproc://wsr-link-test");
    assert (router);
    int calls = 0;
    wsr_link_opts_t opts = {
        .endpoint = "inproc://wsr-link-test", .node = "n1", .role = WSR_ROLE_WORKER,
        .index = 3
    };
    wsr_link_t *link = wsr_link_new (&opts, s_topics, &calls);
    assert (link);
    //  HELLO first, with who we are
    zmsg_t *msg = s_expect (router, WSR_PROTO_HELLO, 4);
    zframe_t *rid = zmsg_pop (msg);
    zframe_t *frame = zmsg_pop (msg);
    zframe_destroy (&frame);
    char *version = zmsg_popstr (msg), *node = zmsg_popstr (msg), *role = zmsg_popstr (msg),
         *index = zmsg_popstr (msg);
    assert (streq (version, "1") && streq (node, "n1") && streq (role, "worker")
            && streq (index, "3"));
    zstr_free (&version);
    zstr_free (&node);
    zstr_free (&role);
    zstr_free (&index);
    zmsg_destroy (&msg);

    //  Subscriptions are batched by run, in order
    wsr_link_subscribe (link, "user:u1", 8, true);
    wsr_link_subscribe (link, "user:u2", 8, true);
    wsr_link_subscribe (link, "user:u1", 8, false);
    wsr_link_subscribe (link, "user:u3", 8, true);
    wsr_link_flush (link);
    msg = s_expect (router, WSR_PROTO_SUB, 2);
    assert (zframe_streq (zmsg_last (msg), "user:u2") == false);    //  the NUL is sent
    assert (zframe_size (zmsg_last (msg)) == 8 && !memcmp (zframe_data (zmsg_last (msg)),
                                                          "user:u2", 8));
    zmsg_destroy (&msg);
    msg = s_expect (router, WSR_PROTO_UNSUB, 1);
    zmsg_destroy (&msg);
    msg = s_expect (router, WSR_PROTO_SUB, 1);
    zmsg_destroy (&msg);
    //  More than a batch's worth splits
    for (int i = 0; i < WSR_PROTO_MAX_TOPICS + 5; i++) {
        char key [32];
        int n = snprintf (key, sizeof key, "channel:c%d", i);
        wsr_link_subscribe (link, key, (size_t) n + 1, true);
    }
    wsr_link_flush (link);
    msg = s_expect (router, WSR_PROTO_SUB, WSR_PROTO_MAX_TOPICS);
    zmsg_destroy (&msg);
    msg = s_expect (router, WSR_PROTO_SUB, 5);
    zmsg_destroy (&msg);

    //  A barrier (handover): the batched SUB leaves first, then SYNC with
    //  its token; the bridge's SYNCED comes back typed, after a delivery
    //  it sent before
    wsr_link_subscribe (link, "user:s1", 8, true);
    assert (wsr_link_sync (link, 42) == 1);
    msg = s_expect (router, WSR_PROTO_SUB, 1);
    zmsg_destroy (&msg);
    msg = s_expect (router, WSR_PROTO_SYNC, 1);
    assert (zframe_size (zmsg_last (msg)) == 8
         && wsr_msgs_get_u64 (zframe_data (zmsg_last (msg))) == 42);
    zmsg_destroy (&msg);
    {
        zframe_t *down = wsr_envelope_encode_down ((const uint8_t *) "s", 1, 0, 0);
        zmsg_t *ahead = zmsg_new ();
        zframe_t *to = zframe_dup (rid);
        zmsg_append (ahead, &to);
        zmsg_addstr (ahead, WSR_PROTO_DELIVER);
        zmsg_addmem (ahead, "user:s1", 8);
        zmsg_append (ahead, &down);
        zmsg_send (&ahead, router);
        uint8_t token [8];
        wsr_msgs_put_u64 (token, 42);
        zsock_send (router, "fsb", rid, WSR_PROTO_SYNCED, token, (size_t) 8);
        wsr_link_msg_t got;
        assert (s_link_wait (link, &got, WSR_LINK_DELIVER, 2000) == 0);
        assert (streq (got.key, "user:s1"));
        wsr_link_msg_reset (&got);
        assert (s_link_wait (link, &got, WSR_LINK_SYNCED, 2000) == 0 && got.request == 42);
        wsr_link_msg_reset (&got);
    }

    //  A client message goes up whole
    zframe_t *env = wsr_envelope_encode_up ("u1", 9, "n1", 0, WSR_KIND_TEXT,
                                            (const uint8_t *) "hi", 2);
    assert (wsr_link_send_up (link, &env) == 0 && env == NULL);
    msg = s_expect (router, WSR_PROTO_UP, 1);
    wsr_envelope_t decoded;
    assert (wsr_envelope_decode (zframe_data (zmsg_last (msg)), zframe_size (zmsg_last (msg)),
                                 &decoded) == 0 && decoded.session == 9);
    zmsg_destroy (&msg);

    //  Deliveries and replies come back as typed messages
    zframe_t *body = wsr_envelope_encode_down ((const uint8_t *) "x", 1, 0, 0);
    zsock_send (router, "fssf", rid, WSR_PROTO_DELIVER, "user:u2", body);
    //  (a picture "s" frame has no NUL: the link refuses a key without one)
    zmsg_t *deliver = zmsg_new ();
    zframe_t *copy = zframe_dup (rid);
    zmsg_append (deliver, &copy);
    zmsg_addstr (deliver, WSR_PROTO_DELIVER);
    zmsg_addmem (deliver, "user:u2", 8);
    copy = zframe_dup (body);
    zmsg_append (deliver, &copy);
    zmsg_send (&deliver, router);
    uint8_t number [8];
    wsr_msgs_put_u64 (number, 77);
    zsock_send (router, "fsbf", rid, WSR_PROTO_REPLY, number, (size_t) 8, body);
    wsr_link_msg_t in;
    assert (s_link_wait (link, &in, WSR_LINK_DELIVER, 2000) == 0);
    assert (zframe_size (in.topic) == 8 && !memcmp (zframe_data (in.topic), "user:u2", 8));
    assert (streq (in.key, "user:u2") && in.data == zframe_data (in.body));
    assert (wsr_envelope_decode (in.data, in.size, &decoded) == 0);
    wsr_link_msg_reset (&in);
    assert (s_link_wait (link, &in, WSR_LINK_REPLY, 2000) == 0 && in.session == 77 && in.body);
    wsr_link_msg_reset (&in);

    //  Heartbeats make the bridge "up"; a new epoch means a restarted bridge:
    //  HELLO again and every topic the owner holds
    assert (!wsr_link_bridge_up (link, NULL, NULL));
    zframe_t *beat = wsr_envelope_encode_heartbeat (1, -1);
    wsr_msgs_put_u64 (number, 1111);
    zsock_send (router, "fsbf", rid, WSR_PROTO_HB, number, (size_t) 8, beat);
    assert (s_link_wait (link, &in, WSR_LINK_DELIVER, 200) == -1);      //  drains the HB
    int redis = 0, nats = 0;
    assert (wsr_link_bridge_up (link, &redis, &nats) && redis == 1 && nats == -1);
    assert (calls == 0);
    wsr_msgs_put_u64 (number, 2222);
    zsock_send (router, "fsbf", rid, WSR_PROTO_HB, number, (size_t) 8, beat);
    assert (s_link_wait (link, &in, WSR_LINK_DELIVER, 200) == -1);
    assert (calls == 1);
    msg = s_expect (router, WSR_PROTO_HELLO, 4);
    zmsg_destroy (&msg);
    msg = s_expect (router, WSR_PROTO_SUB, 2);
    zmsg_destroy (&msg);
    //  RESYNC does the same
    zsock_send (router, "fs", rid, WSR_PROTO_RESYNC);
    assert (s_link_wait (link, &in, WSR_LINK_DELIVER, 200) == -1);
    assert (calls == 2);
    msg = s_expect (router, WSR_PROTO_HELLO, 4);
    zmsg_destroy (&msg);
    msg = s_expect (router, WSR_PROTO_SUB, 2);
    zmsg_destroy (&msg);
    //  Refusals reach the owner; garbage does not
    zsock_send (router, "fsbs", rid, WSR_PROTO_REFUSED, "user:zz", (size_t) 8, "too many");
    assert (s_link_wait (link, &in, WSR_LINK_REFUSED, 2000) == 0);
    assert (zframe_size (in.topic) == 8);
    wsr_link_msg_reset (&in);
    zsock_send (router, "fss", rid, "BOGUS", "x");
    assert (s_link_wait (link, &in, WSR_LINK_REFUSED, 200) == -1);
    //  A batch of deliveries is handed out one by one, in order, with keys
    //  and envelopes borrowed from it; a malformed record ends the batch
    uint8_t batch [256];
    size_t used = 0;
    const char *keys [3] = { "user:b1", "channel:b2", "user:b3" };
    for (int i = 0; i < 3; i++) {
        size_t key_size = strlen (keys [i]) + 1;
        batch [used++] = 0;
        batch [used++] = (uint8_t) key_size;
        memcpy (batch + used, keys [i], key_size);
        used += key_size;
        uint8_t env_size [4] = { 0, 0, 0, (uint8_t) (i + 1) };
        memcpy (batch + used, env_size, 4);
        used += 4;
        memset (batch + used, 'a' + i, (size_t) i + 1);
        used += (size_t) i + 1;
    }
    batch [used++] = 0;                 //  a record cut short
    zsock_send (router, "fsb", rid, WSR_PROTO_DELIVERS, batch, used);
    for (int i = 0; i < 3; i++) {
        assert (s_link_wait (link, &in, WSR_LINK_DELIVER, 2000) == 0);
        assert (streq (in.key, keys [i]) && in.size == (size_t) i + 1 && in.body == NULL);
        assert (in.data [0] == 'a' + i);
        wsr_link_msg_reset (&in);
    }
    assert (s_link_wait (link, &in, WSR_LINK_DELIVER, 200) == -1);

    //  A message with more frames than any command has is dropped whole,
    //  and the next one is read from its first frame
    zsock_send (router, "fssssssssss", rid, WSR_PROTO_REFUSED, "1", "2", "3", "4", "5", "6",
                "7", "8", "9");
    zsock_send (router, "fsbs", rid, WSR_PROTO_REFUSED, "user:yy", (size_t) 8, "too many");
    assert (s_link_wait (link, &in, WSR_LINK_REFUSED, 2000) == 0);
    assert (zframe_size (in.topic) == 8 && !memcmp (zframe_data (in.topic), "user:yy", 8));
    wsr_link_msg_reset (&in);


    //  Lifecycle events go up with every field, with the turn's batches
    //  (flush); a pending SUB goes first
    wsr_link_subscribe (link, "user:ev", 8, true);
    wsr_link_event_t event = {
        .connect = false, .session = 42, .user = "ev", .channels = "a,b",
        .since_ms = 1700000000123, .code = 1001, .reason = "going away", .duration_ms = 4567
    };
    uint64_t sent_before = wsr_link_sent (link);
    assert (wsr_link_event (link, &event) == 0);
    assert (wsr_link_sent (link) == sent_before);   //  gathered, not sent yet
    wsr_link_flush (link);
    assert (wsr_link_sent (link) == sent_before + 2);
    msg = s_expect (router, WSR_PROTO_SUB, 1);
    zmsg_destroy (&msg);
    msg = s_expect (router, WSR_PROTO_EVENT, 8);
    zmsg_first (msg);
    zmsg_next (msg);
    assert (zframe_streq (zmsg_next (msg), "disconnect"));
    assert (wsr_msgs_get_u64 (zframe_data (zmsg_next (msg))) == 42);
    assert (zframe_streq (zmsg_next (msg), "ev"));
    assert (zframe_streq (zmsg_next (msg), "a,b"));
    assert (wsr_msgs_get_u64 (zframe_data (zmsg_next (msg))) == 1700000000123);
    assert (wsr_msgs_get_u64 (zframe_data (zmsg_next (msg))) == 1001);
    assert (zframe_streq (zmsg_next (msg), "going away"));
    assert (wsr_msgs_get_u64 (zframe_data (zmsg_next (msg))) == 4567);
    zmsg_destroy (&msg);
    //  A message that goes at once takes the gathered events before it
    event.connect = true;
    assert (wsr_link_event (link, &event) == 0);
    zframe_t *up = zframe_new ("u", 1);
    assert (wsr_link_send_up (link, &up) == 0);
    msg = s_expect (router, WSR_PROTO_EVENT, 8);
    zmsg_destroy (&msg);
    msg = s_expect (router, WSR_PROTO_UP, 1);
    zmsg_destroy (&msg);

    //  Presence queries go up; answers come back with request and status;
    //  an answer with a short number frame is dropped
    uint64_t sent = wsr_link_sent (link);
    assert (wsr_link_presence (link, 9, "channel", "lobby", 100) == 0);
    assert (wsr_link_sent (link) == sent + 1);
    msg = s_expect (router, WSR_PROTO_PRESENCE, 4);
    zmsg_first (msg);
    zmsg_next (msg);
    assert (wsr_msgs_get_u64 (zframe_data (zmsg_next (msg))) == 9);
    assert (zframe_streq (zmsg_next (msg), "channel"));
    assert (zframe_streq (zmsg_next (msg), "lobby"));
    assert (wsr_msgs_get_u64 (zframe_data (zmsg_next (msg))) == 100);
    zmsg_destroy (&msg);
    uint8_t status [8];
    wsr_msgs_put_u64 (number, 9);
    wsr_msgs_put_u64 (status, 200);
    zsock_send (router, "fsbbs", rid, WSR_PROTO_PRESENCER, number, (size_t) 4, status,
                (size_t) 8, "{}");
    zsock_send (router, "fsbbs", rid, WSR_PROTO_PRESENCER, number, (size_t) 8, status,
                (size_t) 8, "{\"sessions\":[]}");
    assert (s_link_wait (link, &in, WSR_LINK_PRESENCE, 2000) == 0);
    assert (in.request == 9 && in.status == 200 && zframe_streq (in.body, "{\"sessions\":[]}"));
    wsr_link_msg_reset (&in);

    //  Destroy says BYE
    wsr_link_destroy (&link);
    assert (link == NULL);
    msg = s_expect (router, WSR_PROTO_BYE, 0);
    zmsg_destroy (&msg);
    zframe_destroy (&beat);
    zframe_destroy (&body);
    zframe_destroy (&rid);
    zsock_destroy (&router);

    //  Several bridges: shares, a move, a stale delivery, a return
    s_test_many ();
    s_test_dropped ();
}
