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
//    backplane is up;
//  - presence queries: the listener hands over the HTTP connection of a
//    GET /api/presence with the question (QUERY); the router asks the
//    bridge (PRESENCE), writes the answer (PRESENCER) or a 504 after
//    S_QUERY_TIMEOUT_MS, and closes the connection.
//
//  Sockets (owned):
//    pipe                        PAIR    commands: START, $TERM
//    inproc://wsr-pub-NAME       PULL    bind; PUBLISH, QUERY from the listener(s)
//    the bridge's endpoint       DEALER  (wsr_link, role router) connect
//  Descriptors (owned): connections of queries waiting for their answer.

#include "wsr_classes.h"
#include <poll.h>
#include <sys/socket.h>

#define S_TICK_MS           250     //  readiness check period
#define S_QUERY_TIMEOUT_MS  2000    //  a presence answer is due
#define S_QUERY_MAX         1024    //  queries waiting at once (more: 503)
#define S_WRITE_WAIT_MS     200     //  for a client slow to take an answer

//  A presence query waiting for the bridge.
typedef struct {
    int fd;                         //  the HTTP connection (owned)
    int64_t deadline;               //  mono ms
} s_query_t;

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
    zhashx_t *queries;              //  request id → s_query_t (owned)
    uint64_t next_query;            //  request ids
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

static void
s_gauge_set (wsr_metrics_t *metrics, wsr_metric_t which, int64_t value)
{
    wsr_metrics_add (metrics, which, value - wsr_metrics_get (metrics, which));
}

//  Readiness from the last heartbeat: the bridge alive, and each configured
//  backplane up.
static void
s_check_ready (s_router_t *self)
{
    int redis = 0, nats = 0;
    bool alive = wsr_link_bridge_up (self->link, &redis, &nats);
    //  What the console shows: the bridge and each backplane, as heard
    s_gauge_set (self->metrics, WSR_M_LINK_BRIDGE_UP, alive? 1: 0);
    s_gauge_set (self->metrics, WSR_M_LINK_REDIS_UP, alive && redis == 1);
    s_gauge_set (self->metrics, WSR_M_LINK_NATS_UP, alive && nats == 1);
    if (alive) {
        s_gauge_set (self->metrics, WSR_M_LINK_REDIS_CONFIGURED, redis != -1);
        s_gauge_set (self->metrics, WSR_M_LINK_NATS_CONFIGURED, nats != -1);
    }
    s_set_ready (self, alive && redis != 0 && nats != 0);
}

//  Write a whole HTTP answer and close the connection. The socket is
//  non-blocking; a client that does not take a small answer within
//  S_WRITE_WAIT_MS loses it.
static void
s_answer (int fd, int status, const char *body, size_t body_len)
{
    const char *text = status == 200? "OK": status == 400? "Bad Request":
                       status == 404? "Not Found": status == 503? "Service Unavailable":
                       status == 504? "Gateway Timeout": "Error";
    char head [256];
    int n = snprintf (head, sizeof head,
                      "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                      "Content-Length: %zu\r\nConnection: close\r\n"
                      "Cache-Control: no-store\r\n\r\n", status, text, body_len);
    struct iovec iov [2] = { { head, (size_t) n }, { (void *) body, body_len } };
    size_t left = (size_t) n + body_len;
    int64_t until = wsr_util_mono_ms () + S_WRITE_WAIT_MS;
    while (left > 0) {
        struct msghdr msg = { .msg_iov = iov, .msg_iovlen = 2 };
        ssize_t sent = sendmsg (fd, &msg, MSG_NOSIGNAL);
        if (sent > 0) {
            left -= (size_t) sent;
            for (int i = 0; i < 2 && sent > 0; i++) {
                size_t take = (size_t) sent < iov [i].iov_len? (size_t) sent: iov [i].iov_len;
                iov [i].iov_base = (char *) iov [i].iov_base + take;
                iov [i].iov_len -= take;
                sent -= (ssize_t) take;
            }
            continue;
        }
        int64_t wait = until - wsr_util_mono_ms ();
        if (sent == -1 && errno == EINTR)
            continue;
        if (sent == 0 || (errno != EAGAIN && errno != EWOULDBLOCK) || wait <= 0)
            break;
        struct pollfd pfd = { .fd = fd, .events = POLLOUT };
        poll (&pfd, 1, (int) wait);
    }
    shutdown (fd, SHUT_WR);
    close (fd);
}

static void
s_answer_text (int fd, int status, const char *json)
{
    s_answer (fd, status, json, strlen (json));
}

static void
s_query_free (void **item_p)
{
    s_query_t *query = (s_query_t *) *item_p;
    if (query) {
        if (query->fd >= 0)
            close (query->fd);
        free (query);
        *item_p = NULL;
    }
}

//  QUERY from the listener: ask the bridge, keep the connection until the
//  answer or the deadline.
static void
s_handle_query (s_router_t *self, zmsg_t *msg)
{
    char *verb = zmsg_popstr (msg), *fd_text = zmsg_popstr (msg), *kind = zmsg_popstr (msg),
         *id = zmsg_popstr (msg), *limit = zmsg_popstr (msg);
    //  Internal message: its shape is a contract, not input
    assert (verb && fd_text && kind && id && limit && streq (verb, WSR_MSG_QUERY));
    int fd = atoi (fd_text);
    assert (fd >= 0);
    wsr_metrics_add (self->metrics, WSR_M_PRESENCE_QUERIES, 1);
    if (zhashx_size (self->queries) >= S_QUERY_MAX)
        s_answer_text (fd, 503, "{\"error\":\"too many presence queries\"}");
    else {
        uint64_t request = ++self->next_query;
        if (wsr_link_presence (self->link, request, kind, id, (uint64_t) atoi (limit)) == 0) {
            s_query_t *query = (s_query_t *) zmalloc (sizeof (s_query_t));
            query->fd = fd;
            query->deadline = wsr_util_mono_ms () + S_QUERY_TIMEOUT_MS;
            zhashx_insert (self->queries, (void *) (uintptr_t) request, query);
        }
        else
            s_answer_text (fd, 503, "{\"error\":\"bridge unavailable\"}");
    }
    zstr_free (&verb);
    zstr_free (&fd_text);
    zstr_free (&kind);
    zstr_free (&id);
    zstr_free (&limit);
}

//  PRESENCER from the bridge: the answer goes to its connection.
static void
s_handle_presence (s_router_t *self, wsr_link_msg_t *msg)
{
    s_query_t *query = (s_query_t *) zhashx_lookup (self->queries,
                                                    (void *) (uintptr_t) msg->request);
    if (!query)
        return;                         //  answered already (timed out)
    size_t size = msg->body? zframe_size (msg->body): 0;
    s_answer (query->fd, msg->status, msg->body? (const char *) zframe_data (msg->body): "",
              size);
    query->fd = -1;
    zhashx_delete (self->queries, (void *) (uintptr_t) msg->request);
}

//  Queries past their deadline get 504.
static void
s_queries_expire (s_router_t *self)
{
    if (zhashx_size (self->queries) == 0)
        return;
    int64_t now = wsr_util_mono_ms ();
    zlistx_t *keys = zhashx_keys (self->queries);
    for (void *key = zlistx_first (keys); key; key = zlistx_next (keys)) {
        s_query_t *query = (s_query_t *) zhashx_lookup (self->queries, key);
        if (query && now >= query->deadline) {
            wsr_metrics_add (self->metrics, WSR_M_PRESENCE_TIMEOUTS, 1);
            s_answer_text (query->fd, 504, "{\"error\":\"presence answer late\"}");
            query->fd = -1;
            zhashx_delete (self->queries, key);
        }
    }
    zlistx_destroy (&keys);
}

static void
s_handle_input (s_router_t *self)
{
    zmsg_t *msg = zmsg_recv (self->pub_in);
    if (!msg)
        return;
    zframe_t *verb = zmsg_first (msg);
    if (zframe_streq (verb, WSR_MSG_QUERY)) {
        s_handle_query (self, msg);
        zmsg_destroy (&msg);
        return;
    }
    assert (zframe_streq (verb, WSR_MSG_PUBLISH) && zmsg_size (msg) == 3);
    zframe_t *frame = zmsg_pop (msg);
    zframe_destroy (&frame);
    zframe_t *topic = zmsg_pop (msg), *body = zmsg_pop (msg);
    zmsg_destroy (&msg);
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
    self.queries = zhashx_new ();
    zhashx_set_key_hasher (self.queries, wsr_util_id_hash);
    zhashx_set_key_comparator (self.queries, wsr_util_id_compare);
    zhashx_set_key_destructor (self.queries, NULL);
    zhashx_set_key_duplicator (self.queries, NULL);
    zhashx_set_destructor (self.queries, s_query_free);
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
            s_handle_input (&self);
        wsr_link_msg_t msg;
        while (wsr_link_recv (self.link, &msg) == 0) {
            if (msg.kind == WSR_LINK_PRESENCE)
                s_handle_presence (&self, &msg);
            wsr_link_msg_reset (&msg);          //  heartbeats: handled by the link
        }
        s_queries_expire (&self);
        wsr_link_flush (self.link);
        s_check_ready (&self);
    }
    zpoller_destroy (&poller);
    zhashx_destroy (&self.queries);             //  closes waiting connections
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

    //  Presence: the connection is handed over with the question; the
    //  bridge's answer is written to it whole and it is closed; a question
    //  left unanswered gets 504 after 2 s
    int pair [2];
    assert (socketpair (AF_UNIX, SOCK_STREAM, 0, pair) == 0);
    assert (zsock_send (api, WSR_PIC_QUERY, WSR_MSG_QUERY, pair [1], "channel", "hall", 5) == 0);
    zmsg_t *ask = s_bridge_expect (bridge, WSR_PROTO_PRESENCE);
    assert (ask && zmsg_size (ask) == 6);
    zmsg_first (ask);
    zmsg_next (ask);
    zframe_t *request = zframe_dup (zmsg_next (ask));
    assert (zframe_streq (zmsg_next (ask), "channel") && zframe_streq (zmsg_next (ask), "hall"));
    assert (wsr_msgs_get_u64 (zframe_data (zmsg_next (ask))) == 5);
    zmsg_destroy (&ask);
    uint8_t status [8];
    wsr_msgs_put_u64 (status, 200);
    const char *answer = "{\"channel\":\"hall\",\"count\":0,\"members\":[]}";
    zsock_send (bridge, "fsfbs", rid, WSR_PROTO_PRESENCER, request, status, (size_t) 8, answer);
    zframe_destroy (&request);
    char reply [512];
    size_t got = 0;
    ssize_t n;
    while ((n = read (pair [0], reply + got, sizeof reply - 1 - got)) > 0)
        got += (size_t) n;                      //  until the router closes its end
    reply [got] = 0;
    assert (strncmp (reply, "HTTP/1.1 200 OK\r\n", 17) == 0);
    assert (strstr (reply, "\r\n\r\n") && streq (strstr (reply, "\r\n\r\n") + 4, answer));
    close (pair [0]);
    assert (socketpair (AF_UNIX, SOCK_STREAM, 0, pair) == 0);
    assert (zsock_send (api, WSR_PIC_QUERY, WSR_MSG_QUERY, pair [1], "user", "u9", 1) == 0);
    ask = s_bridge_expect (bridge, WSR_PROTO_PRESENCE);
    zmsg_destroy (&ask);
    int64_t asked = zclock_mono ();
    got = 0;
    while ((n = read (pair [0], reply + got, sizeof reply - 1 - got)) > 0)
        got += (size_t) n;
    reply [got] = 0;
    assert (strncmp (reply, "HTTP/1.1 504", 12) == 0);
    assert (zclock_mono () - asked >= S_QUERY_TIMEOUT_MS - 100);
    assert (wsr_metrics_get (metrics, WSR_M_PRESENCE_QUERIES) == 2);
    assert (wsr_metrics_get (metrics, WSR_M_PRESENCE_TIMEOUTS) == 1);
    close (pair [0]);

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
    //  The console's gauges: the bridge heard, Redis down, NATS not configured
    assert (wsr_metrics_get (metrics, WSR_M_LINK_BRIDGE_UP) == 1);
    assert (wsr_metrics_get (metrics, WSR_M_LINK_REDIS_UP) == 0);
    assert (wsr_metrics_get (metrics, WSR_M_LINK_REDIS_CONFIGURED) == 1);
    assert (wsr_metrics_get (metrics, WSR_M_LINK_NATS_UP) == 0);
    assert (wsr_metrics_get (metrics, WSR_M_LINK_NATS_CONFIGURED) == 0);
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
    assert (wsr_metrics_get (metrics, WSR_M_LINK_BRIDGE_UP) == 0);

    zframe_destroy (&beat);
    zframe_destroy (&rid);
    zsock_destroy (&api);
    wsr_router_destroy (&router);
    zsock_destroy (&bridge);
    wsr_metrics_destroy (&metrics);
}
