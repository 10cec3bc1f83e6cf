//  wsr_router — the node's router actor: what is node-wide (API publishes, backplane health)
//
//  Session workers talk to the bridge directly (each has its own wsr_link),
//  so no thread relays deliveries or client messages. The router keeps only
//  what belongs to the whole node:
//  - API publishes: the listener's PUBLISH [topic][envelope] goes to the
//    bridge as PUB, which publishes it on Redis/NATS or, without a
//    backplane, fans it out to the workers that want the topic;
//  - health: its link hears the bridge's heartbeats; the backplane_up gauge
//    (and so /readyz) is 1 while they arrive and say every configured
//    backplane is up.
//
//  Sockets (owned):
//    pipe                        PAIR    commands: START, $TERM
//    inproc://wsr-pub-NAME       PULL    bind; PUBLISH from the listener(s)
//    the bridge's endpoint       DEALER  (wsr_link, role router) connect

#include "wsr_classes.h"

#define S_TICK_MS           250     //  readiness check period

struct _wsr_router_t {
    zactor_t *actor;                //  the router thread
};

typedef struct {
    char *name;                     //  node instance name
    char *bridge;                   //  bridge endpoint
    char *curve_secret;             //  our certificate or NULL
    char *curve_server;             //  the bridge's certificate or NULL
    wsr_metrics_t *metrics;         //  shared counters (not owned)
} s_args_t;

typedef struct {
    zsock_t *pipe;                  //  actor pipe (not owned)
    zsock_t *pub_in;                //  PULL from the listener(s)
    wsr_link_t *link;               //  to the bridge
    bool ready;                     //  as last reported
    wsr_metrics_t *metrics;         //  shared counters
    int status;                     //  init result for START
} s_router_t;

static void
s_set_ready (s_router_t *self, bool ready)
{
    int64_t now = wsr_metrics_get (self->metrics, WSR_M_BACKPLANE_UP);
    wsr_metrics_add (self->metrics, WSR_M_BACKPLANE_UP, (ready? 1: 0) - now);
    if (ready != self->ready)
        zsys_info ("router: backplane %s", ready? "reachable": "NOT reachable");
    self->ready = ready;
}

//  Readiness from the last heartbeat: the bridge alive, and each configured
//  backplane up.
static void
s_check_ready (s_router_t *self)
{
    int redis = 0, nats = 0;
    bool alive = wsr_link_bridge_up (self->link, &redis, &nats);
    s_set_ready (self, alive && redis != 0 && nats != 0);
}

static void
s_handle_publish (s_router_t *self)
{
    char *verb = NULL;
    zframe_t *topic = NULL, *body = NULL;
    if (zsock_recv (self->pub_in, WSR_PIC_PUBLISH, &verb, &topic, &body) == -1)
        return;
    assert (streq (verb, WSR_MSG_PUBLISH) && topic && body);
    zstr_free (&verb);
    wsr_metrics_add (self->metrics, WSR_M_PUBLISHED, 1);
    if (wsr_link_publish (self->link, &topic, &body))
        wsr_metrics_add (self->metrics, WSR_M_BRIDGE_PUBLISH_LOST, 1);
}

static void
s_router_actor (zsock_t *pipe, void *args)
{
    s_args_t *a = (s_args_t *) args;
    s_router_t self = { 0 };
    self.pipe = pipe;
    self.metrics = a->metrics;
    pthread_setname_np (pthread_self (), "wsr-router");
    self.pub_in = zsock_new (ZMQ_PULL);
    assert (self.pub_in);
    zsock_set_rcvhwm (self.pub_in, WSR_HWM);
    if (zsock_bind (self.pub_in, WSR_EP_PUB, a->name) == -1) {
        zsys_error ("router: cannot bind " WSR_EP_PUB ": %s", a->name,
                    zmq_strerror (zmq_errno ()));
        self.status = -1;
    }
    wsr_link_opts_t link_opts = {
        .endpoint = a->bridge, .node = a->name, .role = WSR_ROLE_ROUTER, .index = 0,
        .curve_secret = a->curve_secret, .curve_server = a->curve_server
    };
    self.link = self.status == 0? wsr_link_new (&link_opts, NULL, NULL): NULL;
    if (!self.link)
        self.status = -1;
    wsr_metrics_add (self.metrics, WSR_M_BACKPLANE_UP,
                     -wsr_metrics_get (self.metrics, WSR_M_BACKPLANE_UP));
    zsock_signal (pipe, 0);

    zpoller_t *poller = zpoller_new (pipe, NULL);
    if (self.status == 0) {
        zpoller_add (poller, self.pub_in);
        zpoller_add (poller, wsr_link_socket (self.link));
    }
    zpoller_set_nonstop (poller, true);
    while (true) {
        zsock_t *which = (zsock_t *) zpoller_wait (poller, S_TICK_MS);
        if (which == pipe) {
            char *command = zstr_recv (pipe);
            if (!command)
                break;
            bool term = streq (command, "$TERM");
            if (streq (command, WSR_CMD_START)) {
                int sent = zsock_send (pipe, "i", self.status);
                assert (sent == 0);
            }
            else
                assert (term);
            zstr_free (&command);
            if (term)
                break;
        }
        if (self.status)
            continue;
        for (int budget = WSR_WORKER_BUDGET;
             budget > 0 && (zsock_events (self.pub_in) & ZMQ_POLLIN); budget--)
            s_handle_publish (&self);
        wsr_link_msg_t msg;
        while (wsr_link_recv (self.link, &msg) == 0)
            wsr_link_msg_reset (&msg);          //  heartbeats: handled by the link
        wsr_link_flush (self.link);
        s_check_ready (&self);
    }
    zpoller_destroy (&poller);
    zsock_destroy (&self.pub_in);
    wsr_link_destroy (&self.link);
}

//  --------------------------------------------------------------------------
//  Start the router.
wsr_router_t *
wsr_router_new (const char *name, const char *bridge, const char *curve_secret,
                const char *curve_server, wsr_metrics_t *metrics)
{
    assert (name && bridge && metrics);
    s_args_t args = { (char *) name, (char *) bridge, (char *) curve_secret,
                      (char *) curve_server, metrics };
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
//  Selftest: the test plays the listener (PUSH PUBLISH) and the bridge (a
//  ROUTER): a publish arrives as PUB; heartbeats drive readiness.

static zmsg_t *
s_bridge_expect (zsock_t *bridge, const char *command)
{
    zpoller_t *poller = zpoller_new (bridge, NULL);
    zmsg_t *found = NULL;
    int64_t end = zclock_mono () + 2000;
    while (!found && zclock_mono () < end && zpoller_wait (poller, 100)) {
        zmsg_t *msg = zmsg_recv (bridge);
        zmsg_first (msg);                               //  the routing id
        zframe_t *command_frame = zmsg_next (msg);
        if (!command_frame || !zframe_streq (command_frame, command))
            zmsg_destroy (&msg);
        else
            found = msg;
    }
    zpoller_destroy (&poller);
    return found;
}

void
wsr_router_test (bool verbose)
{
    (void) verbose;
    wsr_metrics_t *metrics = wsr_metrics_new ();
    zsock_t *bridge = zsock_new_router ("inproc://wsr-router-test-bridge");
    wsr_router_t *router = wsr_router_new ("rtest", "inproc://wsr-router-test-bridge",
                                           NULL, NULL, metrics);
    assert (router);
    //  A second router with the same name cannot bind
    assert (wsr_router_new ("rtest", "inproc://wsr-router-test-bridge", NULL, NULL,
                            metrics) == NULL);
    zmsg_t *hello = s_bridge_expect (bridge, WSR_PROTO_HELLO);
    assert (hello);
    zframe_t *rid = zmsg_pop (hello);
    zmsg_destroy (&hello);
    assert (wsr_metrics_get (metrics, WSR_M_BACKPLANE_UP) == 0);

    //  The listener's publish reaches the bridge as PUB [topic][envelope]
    zsock_t *api = zsock_new_push ("inproc://wsr-pub-rtest");
    zframe_t *topic = zframe_new ("user:u1", 8);
    zframe_t *env = wsr_envelope_encode_down ((const uint8_t *) "hello", 5, 0, 0);
    assert (zsock_send (api, WSR_PIC_PUBLISH, WSR_MSG_PUBLISH, topic, env) == 0);
    zframe_destroy (&topic);        //  zsock_send copied them
    zframe_destroy (&env);
    zmsg_t *pub = s_bridge_expect (bridge, WSR_PROTO_PUB);
    assert (pub && zmsg_size (pub) == 4);
    zmsg_first (pub);
    zframe_t *frame = zmsg_next (pub);
    frame = zmsg_next (pub);
    assert (zframe_size (frame) == 8 && !memcmp (zframe_data (frame), "user:u1", 8));
    wsr_envelope_t decoded;
    frame = zmsg_next (pub);
    assert (wsr_envelope_decode (zframe_data (frame), zframe_size (frame), &decoded) == 0);
    assert (decoded.size == 5 && !memcmp (decoded.data, "hello", 5));
    zmsg_destroy (&pub);
    assert (wsr_metrics_get (metrics, WSR_M_PUBLISHED) == 1);

    //  Heartbeats: ready while they say the backplanes are up
    uint8_t epoch [8];
    wsr_msgs_put_u64 (epoch, 1);
    zframe_t *beat = wsr_envelope_encode_heartbeat (1, -1);
    zsock_send (bridge, "fsbf", rid, WSR_PROTO_HB, epoch, (size_t) 8, beat);
    for (int i = 0; i < 200 && wsr_metrics_get (metrics, WSR_M_BACKPLANE_UP) != 1; i++)
        zclock_sleep (5);
    assert (wsr_metrics_get (metrics, WSR_M_BACKPLANE_UP) == 1);
    zframe_destroy (&beat);
    beat = wsr_envelope_encode_heartbeat (0, -1);       //  Redis down
    zsock_send (bridge, "fsbf", rid, WSR_PROTO_HB, epoch, (size_t) 8, beat);
    for (int i = 0; i < 200 && wsr_metrics_get (metrics, WSR_M_BACKPLANE_UP) != 0; i++)
        zclock_sleep (5);
    assert (wsr_metrics_get (metrics, WSR_M_BACKPLANE_UP) == 0);
    zframe_destroy (&beat);
    beat = wsr_envelope_encode_heartbeat (1, 1);
    zsock_send (bridge, "fsbf", rid, WSR_PROTO_HB, epoch, (size_t) 8, beat);
    for (int i = 0; i < 200 && wsr_metrics_get (metrics, WSR_M_BACKPLANE_UP) != 1; i++)
        zclock_sleep (5);
    assert (wsr_metrics_get (metrics, WSR_M_BACKPLANE_UP) == 1);
    //  ... and not once they stop (bridge gone)
    int64_t start = zclock_mono ();
    while (wsr_metrics_get (metrics, WSR_M_BACKPLANE_UP) == 1 && zclock_mono () - start < 5000)
        zclock_sleep (20);
    assert (wsr_metrics_get (metrics, WSR_M_BACKPLANE_UP) == 0);
    assert (zclock_mono () - start >= WSR_PROTO_HB_DEAD_MS - 100);

    zframe_destroy (&beat);
    zframe_destroy (&rid);
    zsock_destroy (&api);
    wsr_router_destroy (&router);
    zsock_destroy (&bridge);
    wsr_metrics_destroy (&metrics);
}
