//  wsr_link — a node actor's link to the bridge: one DEALER speaking WBP/1
//
//  Session workers (role "worker") and the node's router (role "router") each
//  own one link. The link is the node's half of the node ⇄ bridge protocol
//  (wsr_msgs.h): it says HELLO when created, batches SUB/UNSUB so a burst of
//  new sessions costs one message per WSR_PROTO_MAX_TOPICS topics, sends
//  client messages (UP) and API publishes (PUB), PINGs when it has been
//  silent, and watches the bridge's heartbeats. When the bridge has lost our
//  subscriptions (RESYNC: it restarted, or forgot us after a silence; or its
//  heartbeat carries a new epoch), the link says HELLO again and asks its
//  owner, through a callback, to subscribe every topic again: topics are
//  stored once, in the owner's table.
//
//  Socket (owned): DEALER connected to the bridge's ROUTER (inproc, or tcp
//  with CURVE when certificates are given). Sends never block: a full queue
//  or an unreachable bridge makes the send fail, and it is counted.

#include "wsr_classes.h"

#define S_RECV_FRAMES_MAX   8       //  frames of the longest bridge → peer message, with room

typedef enum {
    S_OP_NONE,
    S_OP_SUB,
    S_OP_UNSUB
} s_op_t;

struct _wsr_link_t {
    zsock_t *sock;                  //  DEALER to the bridge (owned)
    char *node;                     //  node id (owned)
    char *role;                     //  WSR_ROLE_* (owned)
    int index;                      //  worker index
    wsr_link_topics_fn *topics;     //  owner's topic enumerator, or NULL
    void *arg;                      //  its argument
    zmsg_t *batch;                  //  SUB or UNSUB being filled, or NULL
    s_op_t batch_op;                //  which
    uint64_t epoch;                 //  bridge epoch from the last heartbeat
    int64_t last_hb;                //  mono ms of the last heartbeat, 0 = none
    int redis, nats;                //  backplane states from the last heartbeat
    int64_t last_send;              //  mono ms of our last message
    char *endpoint;                 //  the bridge's endpoint (owned)
    int64_t connected;              //  mono ms of the last (re)connect
    bool silent;                    //  reconnecting for lack of heartbeats (logged)
    uint64_t drops;                 //  messages that could not be sent
    zframe_t *deliveries;           //  DS being handed out one by one, or NULL
    size_t delivery_at;             //  offset of its next record
};

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
    msg->kind = WSR_LINK_DELIVER;
    msg->key = key;
    msg->data = data + at;
    msg->size = env_size;
    self->delivery_at = at + env_size;
    return 0;
malformed:
    zsys_warning ("link: malformed deliveries from the bridge dropped");
    self->delivery_at = size;
    return -1;
}

//  Send a message; never blocks. Returns 0, or -1 (destroyed, counted).
static int
s_send (wsr_link_t *self, zmsg_t **msg_p)
{
    if (zmsg_send (msg_p, self->sock)) {
        zmsg_destroy (msg_p);
        self->drops++;
        return -1;
    }
    self->last_send = wsr_util_mono_ms ();
    return 0;
}

static void
s_hello (wsr_link_t *self)
{
    zmsg_t *msg = zmsg_new ();
    zmsg_addstr (msg, WSR_PROTO_HELLO);
    zmsg_addstr (msg, WSR_PROTO_VERSION);
    zmsg_addstr (msg, self->node);
    zmsg_addstr (msg, self->role);
    zmsg_addstrf (msg, "%d", self->index);
    s_send (self, &msg);
}

static void
s_batch_send (wsr_link_t *self)
{
    if (self->batch)
        s_send (self, &self->batch);
    self->batch_op = S_OP_NONE;
}

//  The bridge lost our state: tell it again who we are and what we want.
static void
s_resync (wsr_link_t *self)
{
    zmsg_destroy (&self->batch);        //  superseded by the full list
    self->batch_op = S_OP_NONE;
    s_hello (self);
    if (self->topics)
        self->topics (self->arg, self);
    s_batch_send (self);
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
    self->redis = self->nats = -1;
    self->sock = zsock_new (ZMQ_DEALER);
    assert (self->sock);
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
    if (wsr_curve_client (self->sock, opts->curve_secret, opts->curve_server)
    ||  zsock_connect (self->sock, "%s", opts->endpoint) == -1) {
        zsys_error ("link: cannot connect to the bridge at %s: %s", opts->endpoint,
                    zmq_strerror (zmq_errno ()));
        wsr_link_destroy (&self);
        return NULL;
    }
    self->endpoint = strdup (opts->endpoint);
    self->connected = wsr_util_mono_ms ();
    s_hello (self);
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
        zmsg_destroy (&self->batch);
        zframe_destroy (&self->deliveries);
        if (self->sock) {
            zmsg_t *bye = zmsg_new ();
            zmsg_addstr (bye, WSR_PROTO_BYE);
            if (zmsg_send (&bye, self->sock))
                zmsg_destroy (&bye);
            zsock_destroy (&self->sock);
        }
        free (self->node);
        free (self->role);
        free (self->endpoint);
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
//  Batch a subscription change; runs of the same operation share a message,
//  and the order of operations is kept.
void
wsr_link_subscribe (wsr_link_t *self, const char *key, size_t key_size, bool on)
{
    assert (self && key && key_size > 0 && key [key_size - 1] == 0);
    s_op_t op = on? S_OP_SUB: S_OP_UNSUB;
    if (self->batch && (self->batch_op != op
                     || zmsg_size (self->batch) == 1 + WSR_PROTO_MAX_TOPICS))
        s_batch_send (self);
    if (!self->batch) {
        self->batch = zmsg_new ();
        zmsg_addstr (self->batch, on? WSR_PROTO_SUB: WSR_PROTO_UNSUB);
        self->batch_op = op;
    }
    zmsg_addmem (self->batch, key, key_size);
}

//  --------------------------------------------------------------------------
//  A client message up.
int
wsr_link_send_up (wsr_link_t *self, zframe_t **envelope_p)
{
    assert (self && envelope_p && *envelope_p);
    s_batch_send (self);                //  a subscription sent first stays first
    zmsg_t *msg = zmsg_new ();
    zmsg_addstr (msg, WSR_PROTO_UP);
    zmsg_append (msg, envelope_p);
    return s_send (self, &msg);
}

//  --------------------------------------------------------------------------
//  An API publish.
int
wsr_link_publish (wsr_link_t *self, zframe_t **topic_p, zframe_t **envelope_p)
{
    assert (self && topic_p && *topic_p && envelope_p && *envelope_p);
    zmsg_t *msg = zmsg_new ();
    zmsg_addstr (msg, WSR_PROTO_PUB);
    zmsg_append (msg, topic_p);
    zmsg_append (msg, envelope_p);
    return s_send (self, &msg);
}

//  --------------------------------------------------------------------------
//  A history read.
int
wsr_link_read (wsr_link_t *self, uint64_t request, const char *topic, const char *epoch,
               uint64_t since, uint64_t max)
{
    assert (self && topic);
    s_batch_send (self);                //  its SUB goes first
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
    return s_send (self, &msg);
}

//  --------------------------------------------------------------------------
//  A lifecycle event.
int
wsr_link_event (wsr_link_t *self, const wsr_link_event_t *event)
{
    assert (self && event && event->user && event->channels && event->reason);
    s_batch_send (self);                //  a connect follows the session's SUBs
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
    return s_send (self, &msg);
}

//  --------------------------------------------------------------------------
//  A presence query.
int
wsr_link_presence (wsr_link_t *self, uint64_t request, const char *kind, const char *id,
                   uint64_t limit)
{
    assert (self && kind && id);
    uint8_t number [8];
    zmsg_t *msg = zmsg_new ();
    zmsg_addstr (msg, WSR_PROTO_PRESENCE);
    wsr_msgs_put_u64 (number, request);
    zmsg_addmem (msg, number, 8);
    zmsg_addstr (msg, kind);
    zmsg_addstr (msg, id);
    wsr_msgs_put_u64 (number, limit);
    zmsg_addmem (msg, number, 8);
    return s_send (self, &msg);
}

//  --------------------------------------------------------------------------
//  One message from the bridge. The bridge is trusted (authenticated), but
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
    }
    else
    if (zframe_streq (command, WSR_PROTO_DELIVERS) && size == 2) {
        self->deliveries = f [1];
        self->delivery_at = 0;
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
            bool restarted = self->last_hb && value != self->epoch;
            if (self->silent)
                zsys_info ("link: the bridge at %s answers again", self->endpoint);
            self->silent = false;
            self->epoch = value;
            self->last_hb = wsr_util_mono_ms ();
            self->redis = redis;
            self->nats = nats;
            if (restarted)
                s_resync (self);
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
    if (zframe_streq (command, WSR_PROTO_RESYNC) && size == 1)
        s_resync (self);
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

//  --------------------------------------------------------------------------
//  End of the owner's turn.
void
wsr_link_flush (wsr_link_t *self)
{
    assert (self);
    //  No heartbeat for long: the connection may be dead for good (ZeroMQ
    //  does not retry after a refused CURVE handshake, e.g. before our
    //  certificate was added to the bridge's directory): connect afresh.
    //  The socket (and so its ZMQ_FD in the owner's poll set) stays.
    int64_t now = wsr_util_mono_ms ();
    if (now - self->connected >= WSR_PROTO_RECONNECT_MS
    &&  (!self->last_hb || now - self->last_hb >= WSR_PROTO_RECONNECT_MS)) {
        if (!self->silent)
            zsys_warning ("link: no heartbeat from the bridge at %s for %d s; reconnecting",
                          self->endpoint, WSR_PROTO_RECONNECT_MS / 1000);
        self->silent = true;
        zsock_disconnect (self->sock, "%s", self->endpoint);
        if (zsock_connect (self->sock, "%s", self->endpoint) == 0)
            s_resync (self);
        self->connected = now;
    }
    s_batch_send (self);
    if (wsr_util_mono_ms () - self->last_send >= WSR_PROTO_PING_MS) {
        zmsg_t *ping = zmsg_new ();
        zmsg_addstr (ping, WSR_PROTO_PING);
        s_send (self, &ping);
    }
}

//  --------------------------------------------------------------------------
//  Bridge liveness from heartbeats.
bool
wsr_link_bridge_up (wsr_link_t *self, int *redis, int *nats)
{
    assert (self);
    if (redis)
        *redis = self->redis;
    if (nats)
        *nats = self->nats;
    return self->last_hb && wsr_util_mono_ms () - self->last_hb <= WSR_PROTO_HB_DEAD_MS;
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

    //  Lifecycle events go up with every field; a pending SUB goes first
    wsr_link_subscribe (link, "user:ev", 8, true);
    wsr_link_event_t event = {
        .connect = false, .session = 42, .user = "ev", .channels = "a,b",
        .since_ms = 1700000000123, .code = 1001, .reason = "going away", .duration_ms = 4567
    };
    assert (wsr_link_event (link, &event) == 0);
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

    //  Presence queries go up; answers come back with request and status;
    //  an answer with a short number frame is dropped
    assert (wsr_link_presence (link, 9, "channel", "lobby", 100) == 0);
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
}
