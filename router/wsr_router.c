//  wsr_router — the node's router actor: backplane ⇄ session workers
//
//  Downstream: messages for a topic go out on an XPUB socket as [topic
//  key][envelope]; every session worker holds one SUB socket on it, subscribed
//  to the topics of its own sessions, so ZeroMQ delivers a message only to the
//  workers that want it, once per worker, sharing the payload buffer. XPUB
//  passes on only a topic's first subscription and last unsubscription, so
//  the router's topic set is exactly "what some session of this node needs".
//
//  Embedded mode (no bridge): PUBLISH from the HTTP API goes straight out on
//  the XPUB. Bridged mode: the router is a proxy to a bridge (in-process or in
//  another process, same code): an XSUB connected to the bridge's XPUB
//  carries the node's subscriptions up and messages down, a PUSH carries API
//  publishes and client messages up. The XSUB also subscribes to the bridge's
//  heartbeat ($hb: drives /readyz through the backplane_up gauge) and to this
//  node's reply prefix (sess:NODE:), whose messages go to the worker that owns
//  the session (REPLY). On reconnect ZeroMQ's XSUB sends every subscription
//  again, so a restarted bridge learns what this node needs by itself.
//
//  Upstream: session workers PUSH [up:user][envelope]; the router publishes it
//  on a PUB socket (inproc, plus an optional TCP endpoint that backends or
//  tests subscribe to); bridged, it pushes it to the bridge instead, and to
//  the PUB only when an endpoint was configured.
//
//  Sockets (owned):
//    pipe                        PAIR   commands: START, TOPICS, $TERM
//    inproc://wsr-down-NAME      XPUB   bind; DELIVER to workers, subs back
//    inproc://wsr-pub-NAME       PULL   bind; PUBLISH from the listener
//    inproc://wsr-up-NAME        PULL   bind; upstream from workers
//    upstream                    PUB    bind; upstream to local observers
//    bridge down endpoint        XSUB   connect (bridged mode)
//    bridge up endpoint          PUSH   connect (bridged mode)
//    inproc://wsr-reply-NAME-i   PUSH   connect, per worker; REPLY

#include "wsr_classes.h"

#define S_HEARTBEAT_DEAD_MS     2000    //  bridge silent this long: not ready
#define S_TICK_MS               250

struct _wsr_router_t {
    zactor_t *actor;                //  the router thread
};

typedef struct {
    char *name;                     //  node instance name
    char *upstream;                 //  optional upstream PUB endpoint
    char *bridge;                   //  bridge endpoint or NULL (embedded)
    int workers;                    //  session workers (for REPLY)
    wsr_metrics_t *metrics;         //  shared counters (not owned)
} s_args_t;

typedef struct {
    zsock_t *pipe;                  //  actor pipe (not owned)
    zsock_t *down;                  //  XPUB to workers
    zsock_t *pub_in;                //  PULL from the HTTP API
    zsock_t *up_in;                 //  PULL from workers
    zsock_t *up_out;                //  PUB to backends
    bool upstream_observed;         //  up_out is a configured endpoint
    zsock_t *bridge_sub;            //  XSUB from the bridge, or NULL
    zsock_t *bridge_push;           //  PUSH to the bridge, or NULL
    zsock_t *replies [WSR_MAX_WORKERS];     //  PUSH REPLY per worker
    int workers;
    char *reply_prefix;             //  "sess:NODE:"
    zhashx_t *topics;               //  topics with subscribers (key → NULL)
    int64_t last_heartbeat;         //  mono ms of the last good heartbeat
    bool backplane_ok;              //  as last reported
    wsr_metrics_t *metrics;         //  shared counters
    int status;                     //  init result for START
} s_router_t;

static void
s_set_ready (s_router_t *self, bool ok)
{
    int64_t now = wsr_metrics_get (self->metrics, WSR_M_BACKPLANE_UP);
    wsr_metrics_add (self->metrics, WSR_M_BACKPLANE_UP, (ok? 1: 0) - now);
    if (ok != self->backplane_ok)
        zsys_info ("router: backplane %s", ok? "reachable": "NOT reachable");
    self->backplane_ok = ok;
}

static zsock_t *
s_socket (int type)
{
    zsock_t *sock = zsock_new (type);
    assert (sock);
    zsock_set_sndhwm (sock, WSR_HWM);
    zsock_set_rcvhwm (sock, WSR_HWM);
    zsock_set_sndtimeo (sock, 0);
    zsock_set_linger (sock, 0);
    return sock;
}

static zsock_t *
s_bind (int type, const char *fmt, const char *name)
{
    zsock_t *sock = s_socket (type);
    if (zsock_bind (sock, fmt, name) == -1) {
        char endpoint [256];
        snprintf (endpoint, sizeof endpoint, fmt, name);
        zsys_error ("router: cannot bind %s: %s", endpoint, zmq_strerror (zmq_errno ()));
        zsock_destroy (&sock);
    }
    return sock;
}

//  Subscribe / unsubscribe through the XSUB (frame 0x01/0x00 + bytes).
static void
s_xsub_send (zsock_t *xsub, bool on, const char *data, size_t size)
{
    zframe_t *frame = zframe_new (NULL, size + 1);
    zframe_data (frame) [0] = on? 1: 0;
    memcpy (zframe_data (frame) + 1, data, size);
    if (zframe_send (&frame, xsub, 0))
        zframe_destroy (&frame);
}

//  Subscription messages from the XPUB: 0x01 topic = first subscriber on this
//  node, 0x00 topic = last one gone. Bridged, they go on to the bridge.
static void
s_handle_subscription (s_router_t *self)
{
    zframe_t *frame = zframe_recv (self->down);
    if (!frame)
        return;
    size_t size = zframe_size (frame);
    const char *data = (const char *) zframe_data (frame);
    if (size >= 2 && size <= WSR_TOPIC_MAX + 1 && data [size - 1] == 0) {
        if (data [0] == 1)
            zhashx_insert (self->topics, data + 1, NULL);
        else
        if (data [0] == 0)
            zhashx_delete (self->topics, data + 1);
        if (self->bridge_sub && zframe_send (&frame, self->bridge_sub, 0))
            zframe_destroy (&frame);
    }
    zframe_destroy (&frame);
}

//  Forward a 2-frame message to one or two sockets without copying.
static void
s_forward (zmsg_t **msg_p, zsock_t *to, zsock_t *also, wsr_metrics_t *metrics,
           wsr_metric_t drop_metric)
{
    zmsg_t *msg = *msg_p;
    *msg_p = NULL;
    if (also) {
        zmsg_t *copy = zmsg_dup (msg);
        if (zmsg_send (&copy, also)) {
            zmsg_destroy (&copy);
            wsr_metrics_add (metrics, drop_metric, 1);
        }
    }
    if (zmsg_send (&msg, to)) {
        zmsg_destroy (&msg);
        wsr_metrics_add (metrics, drop_metric, 1);
    }
}

static void
s_handle_publish (s_router_t *self)
{
    zmsg_t *msg = zmsg_recv (self->pub_in);
    if (!msg)
        return;
    char *verb = zmsg_popstr (msg);
    assert (verb && streq (verb, WSR_MSG_PUBLISH) && zmsg_size (msg) == 2);
    zstr_free (&verb);
    wsr_metrics_add (self->metrics, WSR_M_PUBLISHED, 1);
    if (self->bridge_push)
        s_forward (&msg, self->bridge_push, NULL, self->metrics, WSR_M_BRIDGE_PUBLISH_LOST);
    else {
        //  ZMQ_EVENTS makes the XPUB take in subscriptions already sent, so
        //  a session subscribed before this publish got here receives it
        zsock_events (self->down);
        s_forward (&msg, self->down, NULL, self->metrics, WSR_M_DELIVER_DROPS);
    }
}

static void
s_handle_upstream (s_router_t *self)
{
    zmsg_t *msg = zmsg_recv (self->up_in);
    if (!msg)
        return;
    assert (zmsg_size (msg) == 2);
    if (!self->bridge_push) {
        s_forward (&msg, self->up_out, NULL, self->metrics, WSR_M_UPSTREAM_DROPS);
        wsr_metrics_add (self->metrics, WSR_M_UPSTREAM_SENT, 1);
        return;
    }
    if (self->upstream_observed) {
        //  A configured upstream endpoint gets its copy too (PUB, best effort);
        //  the default inproc one is not worth a copy per client message
        zmsg_t *copy = zmsg_dup (msg);
        if (zmsg_send (&copy, self->up_out))
            zmsg_destroy (&copy);
    }
    //  Bridge unreachable long enough to fill the queue: drop and tell the
    //  client through its worker, never wait
    wsr_envelope_t env;
    zframe_t *body = zmsg_last (msg);
    if (zmsg_send (&msg, self->bridge_push) == 0)
        wsr_metrics_add (self->metrics, WSR_M_UPSTREAM_SENT, 1);
    else {
        wsr_metrics_add (self->metrics, WSR_M_UPSTREAM_DROPS, 1);
        if (self->workers > 0
        &&  wsr_envelope_decode (zframe_data (body), zframe_size (body), &env) == 0) {
            zframe_t *error = wsr_envelope_encode_down (
                (const uint8_t *) WSR_ERROR_UPSTREAM_BUSY, strlen (WSR_ERROR_UPSTREAM_BUSY),
                WSR_KIND_TEXT, wsr_util_now_us ());
            zsock_send (self->replies [wsr_msgs_worker_for (env.session, self->workers)], WSR_PIC_REPLY,
                        WSR_MSG_REPLY, env.session, error);
            zframe_destroy (&error);
        }
        zmsg_destroy (&msg);
    }
}

//  From the bridge: heartbeat, a reply for one session, or a delivery.
static void
s_handle_bridge (s_router_t *self)
{
    zmsg_t *msg = zmsg_recv (self->bridge_sub);
    if (!msg)
        return;
    zframe_t *key = zmsg_first (msg);
    zframe_t *body = zmsg_next (msg);
    size_t size = key? zframe_size (key): 0;
    const char *data = key? (const char *) zframe_data (key): NULL;
    if (!body || zmsg_size (msg) != 2 || size == 0 || data [size - 1] != 0) {
        zmsg_destroy (&msg);
        return;
    }
    if (streq (data, "$hb")) {
        int redis = 0, nats = 0;
        if (wsr_envelope_decode_heartbeat (zframe_data (body), zframe_size (body),
                                           &redis, &nats) == 0) {
            self->last_heartbeat = wsr_util_mono_ms ();
            s_set_ready (self, redis != 0 && nats != 0);
        }
        zmsg_destroy (&msg);
    }
    else
    if (strncmp (data, self->reply_prefix, strlen (self->reply_prefix)) == 0) {
        char *end = NULL;
        uint64_t session = strtoull (data + strlen (self->reply_prefix), &end, 10);
        if (end && *end == 0 && self->workers > 0) {
            zsock_t *worker = self->replies [wsr_msgs_worker_for (session, self->workers)];
            zframe_t *env = zmsg_last (msg);
            if (zsock_send (worker, WSR_PIC_REPLY, WSR_MSG_REPLY, session, env) == -1)
                wsr_metrics_add (self->metrics, WSR_M_UPSTREAM_DROPS, 1);
        }
        zmsg_destroy (&msg);
    }
    else
        s_forward (&msg, self->down, NULL, self->metrics, WSR_M_DELIVER_DROPS);
}

static void
s_router_actor (zsock_t *pipe, void *args)
{
    s_args_t *a = (s_args_t *) args;
    s_router_t self = { 0 };
    self.pipe = pipe;
    self.metrics = a->metrics;
    self.workers = a->workers;
    self.topics = zhashx_new ();
    zhashx_set_destructor (self.topics, NULL);
    zhashx_set_duplicator (self.topics, NULL);
    self.reply_prefix = zsys_sprintf ("sess:%s:", a->name);
    self.upstream_observed = a->upstream != NULL;
    pthread_setname_np (pthread_self (), "wsr-router");

    self.down = s_bind (ZMQ_XPUB, WSR_EP_DOWN, a->name);
    self.pub_in = s_bind (ZMQ_PULL, WSR_EP_PUB, a->name);
    self.up_in = s_bind (ZMQ_PULL, WSR_EP_UP, a->name);
    //  Without a configured endpoint an inproc one keeps the path the same
    char *upstream = a->upstream? strdup (a->upstream)
                                : zsys_sprintf ("inproc://wsr-upstream-%s", a->name);
    self.up_out = s_bind (ZMQ_PUB, "%s", upstream);
    zstr_free (&upstream);
    if (self.down) {
        //  Refuse rather than silently drop when a worker falls behind
        zsock_set_xpub_nodrop (self.down, 1);
    }
    self.status = (self.down && self.pub_in && self.up_in && self.up_out)? 0: -1;
    if (a->bridge && self.status == 0) {
        char down [256], up [256];
        if (wsr_bridge_endpoints (a->bridge, down, up, sizeof down)) {
            zsys_error ("router: bad bridge endpoint '%s'", a->bridge);
            self.status = -1;
        }
        else {
            self.bridge_sub = s_socket (ZMQ_XSUB);
            self.bridge_push = s_socket (ZMQ_PUSH);
            zsock_t *remote [2] = { self.bridge_sub, self.bridge_push };
            for (int i = 0; i < 2; i++) {
                //  Notice a dead bridge within seconds, reconnect quickly
                zsock_set_heartbeat_ivl (remote [i], 1000);
                zsock_set_heartbeat_timeout (remote [i], 3000);
                zsock_set_reconnect_ivl (remote [i], 100);
                zsock_set_reconnect_ivl_max (remote [i], 1000);
            }
            if (zsock_connect (self.bridge_sub, "%s", down) == -1
            ||  zsock_connect (self.bridge_push, "%s", up) == -1) {
                zsys_error ("router: cannot connect to bridge %s", a->bridge);
                self.status = -1;
            }
            s_xsub_send (self.bridge_sub, true, "$hb", 4);
            s_xsub_send (self.bridge_sub, true, self.reply_prefix, strlen (self.reply_prefix));
        }
        for (int i = 0; i < self.workers; i++) {
            self.replies [i] = s_socket (ZMQ_PUSH);
            zsock_connect (self.replies [i], WSR_EP_REPLY, a->name, i);
        }
    }
    self.backplane_ok = !a->bridge;
    wsr_metrics_add (self.metrics, WSR_M_BACKPLANE_UP, a->bridge? 0: 1);
    zsock_signal (pipe, 0);

    zpoller_t *poller = zpoller_new (pipe, NULL);
    if (self.status == 0) {
        zpoller_add (poller, self.down);
        zpoller_add (poller, self.pub_in);
        zpoller_add (poller, self.up_in);
        if (self.bridge_sub)
            zpoller_add (poller, self.bridge_sub);
    }
    zpoller_set_nonstop (poller, true);
    int64_t next_tick = wsr_util_mono_ms () + S_TICK_MS;
    while (true) {
        zsock_t *which = (zsock_t *) zpoller_wait (poller, S_TICK_MS);
        if (which == pipe) {
            zmsg_t *msg = zmsg_recv (pipe);
            if (!msg)
                break;
            char *command = zmsg_popstr (msg);
            bool term = streq (command, "$TERM");
            if (streq (command, WSR_CMD_START))
                zsock_send (pipe, "i", self.status);
            else
            if (streq (command, "TOPICS"))
                zsock_send (pipe, "8", (uint64_t) zhashx_size (self.topics));
            else
                assert (term);
            zstr_free (&command);
            zmsg_destroy (&msg);
            if (term)
                break;
        }
        else
        if (which == self.down)
            s_handle_subscription (&self);
        else
        if (which == self.pub_in)
            s_handle_publish (&self);
        else
        if (which == self.up_in)
            s_handle_upstream (&self);
        else
        if (which && which == self.bridge_sub)
            s_handle_bridge (&self);
        int64_t now = wsr_util_mono_ms ();
        if (now >= next_tick) {
            next_tick = now + S_TICK_MS;
            if (self.bridge_sub && self.backplane_ok
            &&  now - self.last_heartbeat > S_HEARTBEAT_DEAD_MS)
                s_set_ready (&self, false);
        }
    }
    zpoller_destroy (&poller);
    zsock_destroy (&self.down);
    zsock_destroy (&self.pub_in);
    zsock_destroy (&self.up_in);
    zsock_destroy (&self.up_out);
    zsock_destroy (&self.bridge_sub);
    zsock_destroy (&self.bridge_push);
    for (int i = 0; i < self.workers; i++)
        zsock_destroy (&self.replies [i]);
    zstr_free (&self.reply_prefix);
    zhashx_destroy (&self.topics);
}

//  --------------------------------------------------------------------------
//  Start the router; NULL if its sockets cannot be bound.
wsr_router_t *
wsr_router_new (const char *name, const char *upstream, const char *bridge, int workers,
                wsr_metrics_t *metrics)
{
    assert (name && metrics);
    assert (workers >= 0 && workers <= WSR_MAX_WORKERS);
    s_args_t args = { (char *) name, (char *) upstream, (char *) bridge, workers, metrics };
    wsr_router_t *self = (wsr_router_t *) zmalloc (sizeof (wsr_router_t));
    self->actor = wsr_util_actor_start (s_router_actor, &args);
    if (!self->actor)
        wsr_router_destroy (&self);
    return self;
}

//  --------------------------------------------------------------------------
//  Stop the router.
void
wsr_router_destroy (wsr_router_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        wsr_router_t *self = *self_p;
        zactor_destroy (&self->actor);
        free (self);
        *self_p = NULL;
    }
}

//  --------------------------------------------------------------------------
//  Distinct topics subscribed by this node's workers.
int64_t
wsr_router_topics (wsr_router_t *self)
{
    assert (self);
    uint64_t topics = 0;
    zsock_send (self->actor, "s", "TOPICS");
    zsock_recv (self->actor, "8", &topics);
    return (int64_t) topics;
}

//  --------------------------------------------------------------------------
//  The actor.
zactor_t *
wsr_router_actor (wsr_router_t *self)
{
    assert (self);
    return self->actor;
}

//  --------------------------------------------------------------------------
//  Selftest: drive the router only through its sockets.
static zmsg_t *
s_recv_timeout (zsock_t *sock, int ms)
{
    zpoller_t *poller = zpoller_new (sock, NULL);
    zmsg_t *msg = zpoller_wait (poller, ms)? zmsg_recv (sock): NULL;
    zpoller_destroy (&poller);
    return msg;
}

void
wsr_router_test (bool verbose)
{
    (void) verbose;
    wsr_metrics_t *metrics = wsr_metrics_new ();
    wsr_router_t *router = wsr_router_new ("rtest", "tcp://127.0.0.1:*", NULL, 0, metrics);
    assert (router);
    //  A second router with the same name cannot bind
    wsr_router_t *clash = wsr_router_new ("rtest", NULL, NULL, 0, metrics);
    assert (clash == NULL);

    //  A worker's SUB socket; exact topic matching thanks to the NUL
    zsock_t *sub = zsock_new_sub ("inproc://wsr-down-rtest", NULL);
    zmq_setsockopt (zsock_resolve (sub), ZMQ_SUBSCRIBE, "user:u1", 8);
    //  Wait until the router saw the subscription
    for (int i = 0; i < 200 && wsr_router_topics (router) < 1; i++)
        zclock_sleep (5);
    assert (wsr_router_topics (router) == 1);

    zsock_t *api = zsock_new_push ("inproc://wsr-pub-rtest");
    const char *topics [] = { "user:u10", "user:u1x", "user:u1" };
    for (int i = 0; i < 3; i++) {
        zframe_t *topic = zframe_new (topics [i], strlen (topics [i]) + 1);
        zframe_t *env = wsr_envelope_encode_down ((const uint8_t *) topics [i],
                                                  strlen (topics [i]), 0, 0);
        zsock_send (api, WSR_PIC_PUBLISH, WSR_MSG_PUBLISH, topic, env);
        zframe_destroy (&topic);
        zframe_destroy (&env);
    }
    zmsg_t *msg = s_recv_timeout (sub, 2000);
    assert (msg && zmsg_size (msg) == 2);
    zframe_t *topic = zmsg_first (msg);
    assert (zframe_size (topic) == 8 && memcmp (zframe_data (topic), "user:u1", 8) == 0);
    wsr_envelope_t env;
    zframe_t *body = zmsg_next (msg);
    assert (wsr_envelope_decode (zframe_data (body), zframe_size (body), &env) == 0);
    assert (env.size == 7 && memcmp (env.data, "user:u1", 7) == 0);
    zmsg_destroy (&msg);
    //  Nothing else arrives: u10 and u1x were not for us
    assert (s_recv_timeout (sub, 100) == NULL);
    assert (wsr_metrics_get (metrics, WSR_M_PUBLISHED) == 3);

    zsock_destroy (&api);
    zmq_setsockopt (zsock_resolve (sub), ZMQ_UNSUBSCRIBE, "user:u1", 8);
    for (int i = 0; i < 200 && wsr_router_topics (router) > 0; i++)
        zclock_sleep (5);
    assert (wsr_router_topics (router) == 0);
    zsock_destroy (&sub);
    wsr_router_destroy (&router);

    //  Inproc upstream: what workers push, observers receive
    router = wsr_router_new ("rtest2", NULL, NULL, 0, metrics);
    assert (router);
    zsock_t *observer = zsock_new_sub ("inproc://wsr-upstream-rtest2", "up:");
    zsock_t *up = zsock_new_push ("inproc://wsr-up-rtest2");
    //  PUB/SUB joins asynchronously: retry until the first message arrives
    zmsg_t *seen = NULL;
    for (int i = 0; i < 100 && !seen; i++) {
        zframe_t *env2 = wsr_envelope_encode_up ("u1", 5, "n", 0, WSR_KIND_TEXT,
                                                 (const uint8_t *) "x", 1);
        zframe_t *key = zframe_new ("up:u1", 6);
        zsock_send (up, "ff", key, env2);
        zframe_destroy (&key);
        zframe_destroy (&env2);
        seen = s_recv_timeout (observer, 20);
    }
    assert (seen && zmsg_size (seen) == 2);
    zframe_t *key = zmsg_first (seen);
    assert (zframe_size (key) == 6 && memcmp (zframe_data (key), "up:u1", 6) == 0);
    zmsg_destroy (&seen);
    zsock_destroy (&up);
    zsock_destroy (&observer);
    wsr_router_destroy (&router);
    wsr_metrics_destroy (&metrics);
}
