//  wsr_bridge — the backplane bridge actor: Redis / NATS / HTTP ⇄ wsrouter nodes over ZeroMQ
//
//  Nodes connect to two endpoints derived from one value (see
//  wsr_bridge_endpoints): an XPUB the bridge publishes downstream messages on,
//  and a PULL nodes push client messages and API publishes into. The same
//  actor runs inside a node (inproc) or as its own process (`wsrouter
//  bridge`, tcp); nodes and their session workers do not know which.
//
//  What to subscribe to comes from the nodes: their routers forward their
//  topics' first subscription and last unsubscription through an XSUB, and
//  this XPUB (non-verbose) does the same across nodes, so the bridge sees a
//  topic once when the first session anywhere wants it and once when the last
//  one leaves, or its node dies (ZeroMQ drops a dead peer's subscriptions).
//  After a bridge restart the nodes' XSUB sockets send every subscription
//  again on reconnect. In per-topic mode (default) each topic becomes one
//  Redis SUBSCRIBE / NATS subscription; in firehose mode the bridge takes
//  everything with one pattern per kind and lets the XPUB filter.
//
//  Downstream frames: [topic key][downstream envelope]; every 500 ms a
//  heartbeat [$hb][{v, r, n}] tells nodes whether Redis and NATS are up; HTTP
//  backend replies go to [sess:NODE:SID][envelope], which only that node
//  subscribes to (a prefix subscription per node).
//  From nodes: [up:USER][upstream envelope] = client message → published on
//  Redis ws:actions:USER and NATS client.actions.USER (msgpack envelope), and
//  POSTed to WEBSOCKET_UPSTREAM_URL (JSON); [user:U|channel:C][envelope] = API
//  publish → the backplane (so every node gets it the same way) or, with no
//  backplane, straight back out.
//
//  Sockets (owned):
//    pipe                      PAIR   START, $TERM
//    nodes' down endpoint      XPUB   bind
//    nodes' up endpoint        PULL   bind
//    inproc://wsr-bridge-nats-ID PULL bind; messages from libnats threads
//  Links (owned): wsr_redis, wsr_nats, wsr_upstream_http.

#include "wsr_classes.h"
#include "wsr_upstream_http.h"
#include <jansson.h>

#define S_HEARTBEAT_MS      500
#define S_MAX_ITEMS         (4 + 2 + 256)

struct _wsr_bridge_t {
    zactor_t *actor;                //  the bridge thread
};

typedef struct {
    wsr_bridge_opts_t opts;         //  settings (strings borrowed until START)
    wsr_metrics_t *metrics;         //  shared counters (not owned)
} s_args_t;

typedef struct {
    zsock_t *pipe;                  //  actor pipe (not owned)
    zsock_t *down;                  //  XPUB to nodes
    zsock_t *up;                    //  PULL from nodes
    zsock_t *nats_in;               //  PULL from libnats threads
    wsr_redis_t *redis;             //  Redis link or NULL
    wsr_nats_t *nats;               //  NATS link or NULL
    wsr_upstream_http_t *http;      //  HTTP backend or NULL
    wsr_naming_t *redis_names;      //  topic ⇄ Redis channel
    wsr_naming_t *nats_names;       //  topic ⇄ NATS subject
    char redis_channel_pattern [512];   //  firehose: the channel pattern
    zhashx_t *topics;               //  topics some node wants
    bool firehose;                  //  pattern mode
    size_t max_message;             //  payload limit
    bool readiness;                 //  owns the backplane_up gauge
    int64_t next_heartbeat;         //  mono ms
    uint64_t http_tag;              //  request counter
    wsr_metrics_t *metrics;         //  shared counters
    bool terminated;
    int status;                     //  init result
} s_bridge_t;

//  --------------------------------------------------------------------------
//  Derive both endpoints.
int
wsr_bridge_endpoints (const char *endpoint, char *down, char *up, size_t size)
{
    assert (endpoint && down && up);
    if (strncmp (endpoint, "inproc://", 9) == 0) {
        snprintf (down, size, "%s", endpoint);
        snprintf (up, size, "%s-up", endpoint);
        return 0;
    }
    if (strncmp (endpoint, "tcp://", 6))
        return -1;
    const char *colon = strrchr (endpoint, ':');
    char *end = NULL;
    long port = colon? strtol (colon + 1, &end, 10): 0;
    if (!colon || colon < endpoint + 6 || !end || *end || port < 1 || port > 65534)
        return -1;
    snprintf (down, size, "%s", endpoint);
    snprintf (up, size, "%.*s:%ld", (int) (colon - endpoint), endpoint, port + 1);
    return 0;
}

//  --------------------------------------------------------------------------
//  Defaults from the seeds.
void
wsr_bridge_opts_defaults (wsr_bridge_opts_t *opts)
{
    assert (opts);
    memset (opts, 0, sizeof *opts);
    opts->redis_user = "ws:{user_id}";
    opts->redis_channel = "ws:channel:{channel}";
    opts->redis_actions = "ws:actions:{user_id}";
    opts->nats_user = "world.updates.user.{user_id}";
    opts->nats_channel = "world.updates.channel.{channel}";
    opts->nats_actions = "client.actions.{user_id}";
    opts->upstream_timeout_ms = 5000;
    opts->upstream_concurrency = 64;
    opts->upstream_queue = 10000;
    opts->max_message = WSR_DEFAULT_MAX_MESSAGE;
}

//  --------------------------------------------------------------------------
//  Downstream: a backplane message on `name` becomes [topic][envelope].

//  kind: the topic kind a firehose pattern stands for, or NULL for a plain
//  subscription. Overlapping patterns (ws:* also matches ws:channel:x and
//  ws:actions:x) each deliver the message once, only under their own kind.
static void
s_deliver (s_bridge_t *self, wsr_naming_t *names, const char *kind, const char *name,
           size_t name_len, const uint8_t *data, size_t size)
{
    char key [WSR_TOPIC_MAX];
    int key_size = wsr_naming_to_topic (names, name, name_len, key, sizeof key);
    if (kind && (key_size < 0 || strncmp (key, kind, strlen (kind)))) {
        if (key_size > 0 || wsr_naming_is_actions (names, name, name_len))
            return;             //  the other pattern's message, or our own upstream
    }
    wsr_metrics_add (self->metrics, WSR_M_BRIDGE_RECEIVED, 1);
    if (key_size < 0 || size > self->max_message) {
        wsr_metrics_add (self->metrics, WSR_M_BRIDGE_INVALID, 1);
        return;
    }
    zmsg_t *msg = zmsg_new ();
    zmsg_addmem (msg, key, (size_t) key_size);
    zframe_t *env = wsr_envelope_encode_down (data, size, 0, wsr_util_now_us ());
    zmsg_append (msg, &env);
    if (zmsg_send (&msg, self->down)) {
        zmsg_destroy (&msg);
        wsr_metrics_add (self->metrics, WSR_M_BRIDGE_DELIVER_DROPS, 1);
    }
}

static void
s_on_redis (void *arg, const char *pattern, const char *channel, size_t channel_len,
            const uint8_t *data, size_t size)
{
    s_bridge_t *self = (s_bridge_t *) arg;
    const char *kind = NULL;
    if (pattern)
        kind = streq (pattern, self->redis_channel_pattern)? WSR_TOPIC_CHANNEL: WSR_TOPIC_USER;
    s_deliver (self, self->redis_names, kind, channel, channel_len, data, size);
}

static void
s_handle_nats (s_bridge_t *self)
{
    zmsg_t *msg = zmsg_recv (self->nats_in);
    if (!msg)
        return;
    zframe_t *subject = zmsg_first (msg);
    zframe_t *data = zmsg_next (msg);
    //  NATS firehose patterns do not overlap: one delivery per message
    if (subject && data)
        s_deliver (self, self->nats_names, NULL, (const char *) zframe_data (subject),
                   zframe_size (subject), zframe_data (data), zframe_size (data));
    zmsg_destroy (&msg);
}

//  --------------------------------------------------------------------------
//  Subscriptions from nodes

static void
s_backplane_subscribe (s_bridge_t *self, const char *topic, bool on)
{
    char name [WSR_TOPIC_MAX + 256];
    if (self->redis && wsr_naming_to_backplane (self->redis_names, topic, name, sizeof name) > 0) {
        if (on)
            wsr_redis_subscribe (self->redis, name);
        else
            wsr_redis_unsubscribe (self->redis, name);
    }
    if (self->nats && wsr_naming_to_backplane (self->nats_names, topic, name, sizeof name) > 0) {
        if (on)
            wsr_nats_subscribe (self->nats, name);
        else
            wsr_nats_unsubscribe (self->nats, name);
    }
}

static void
s_handle_subscription (s_bridge_t *self)
{
    zframe_t *frame = zframe_recv (self->down);
    if (!frame)
        return;
    const char *data = (const char *) zframe_data (frame);
    size_t size = zframe_size (frame);
    //  Only topic keys matter; heartbeat and reply subscriptions are served
    //  by the XPUB itself
    if (size >= 2 && size <= WSR_TOPIC_MAX + 1 && data [size - 1] == 0
    &&  (data [0] == 0 || data [0] == 1)
    &&  (strncmp (data + 1, WSR_TOPIC_USER, strlen (WSR_TOPIC_USER)) == 0
      || strncmp (data + 1, WSR_TOPIC_CHANNEL, strlen (WSR_TOPIC_CHANNEL)) == 0)) {
        const char *topic = data + 1;
        bool on = data [0] == 1;
        bool known = zhashx_lookup (self->topics, topic) != NULL;
        if (on && !known) {
            zhashx_insert (self->topics, topic, (void *) 1);
            if (!self->firehose)
                s_backplane_subscribe (self, topic, true);
        }
        else
        if (!on && known) {
            zhashx_delete (self->topics, topic);
            if (!self->firehose)
                s_backplane_subscribe (self, topic, false);
        }
    }
    zframe_destroy (&frame);
}

//  --------------------------------------------------------------------------
//  From nodes: client messages and API publishes

//  JSON body for the HTTP backend; caller frees.
static char *
s_http_body (const wsr_envelope_t *env)
{
    json_t *body = json_object ();
    json_object_set_new (body, "user", json_stringn (env->user, env->user_len));
    json_object_set_new (body, "session", json_integer ((json_int_t) env->session));
    json_object_set_new (body, "node", json_stringn (env->node, env->node_len));
    json_object_set_new (body, "ts", json_integer (env->ts_us));
    if (env->kind == WSR_KIND_TEXT) {
        json_object_set_new (body, "kind", json_string ("text"));
        json_object_set_new (body, "data", json_stringn ((const char *) env->data, env->size));
    }
    else {
        size_t len = sodium_base64_ENCODED_LEN (env->size, sodium_base64_VARIANT_ORIGINAL);
        char *b64 = (char *) malloc (len);
        sodium_bin2base64 (b64, len, env->data, env->size, sodium_base64_VARIANT_ORIGINAL);
        json_object_set_new (body, "kind", json_string ("binary"));
        json_object_set_new (body, "data_base64", json_string (b64));
        free (b64);
    }
    char *text = json_dumps (body, JSON_COMPACT);
    json_decref (body);
    return text;
}

//  A reply or an error for one session: [sess:NODE:SID][envelope].
static void
s_reply (s_bridge_t *self, const char *reply_to, const uint8_t *data, size_t size)
{
    zmsg_t *msg = zmsg_new ();
    zmsg_addmem (msg, reply_to, strlen (reply_to) + 1);
    zframe_t *env = wsr_envelope_encode_down (data, size, 0, wsr_util_now_us ());
    zmsg_append (msg, &env);
    if (zmsg_send (&msg, self->down))
        zmsg_destroy (&msg);
}

static void
s_reply_error (s_bridge_t *self, const char *reply_to, const char *error, int status)
{
    char text [256];
    int n = snprintf (text, sizeof text,
                      "{\"type\":\"error\",\"error\":\"upstream: %s\",\"status\":%d}",
                      error, status);
    s_reply (self, reply_to, (const uint8_t *) text, (size_t) n);
    wsr_metrics_add (self->metrics, WSR_M_BRIDGE_HTTP_ERRORS, 1);
}

static void
s_on_http_done (void *arg, uint64_t tag, const char *reply_to, int status, const char *error,
                const uint8_t *body, size_t body_size)
{
    (void) tag;
    s_bridge_t *self = (s_bridge_t *) arg;
    if (status >= 200 && status < 300) {
        if (body_size > 0) {
            s_reply (self, reply_to, body, body_size);
            wsr_metrics_add (self->metrics, WSR_M_BRIDGE_REPLIES, 1);
        }
    }
    else
        s_reply_error (self, reply_to, error? error: "backend error", status);
}

static void
s_handle_client_message (s_bridge_t *self, const char *user, zframe_t *body)
{
    wsr_envelope_t env;
    if (wsr_envelope_decode (zframe_data (body), zframe_size (body), &env) || !env.user
    ||  !env.node) {
        wsr_metrics_add (self->metrics, WSR_M_BRIDGE_INVALID, 1);
        return;
    }
    char name [WSR_TOPIC_MAX + 256];
    bool sent = false, lost = false;
    if (self->redis && wsr_naming_actions (self->redis_names, user, name, sizeof name) > 0) {
        if (wsr_redis_publish (self->redis, name, zframe_data (body), zframe_size (body)) == 0)
            sent = true;
        else
            lost = true;
    }
    if (self->nats && wsr_naming_actions (self->nats_names, user, name, sizeof name) > 0) {
        if (wsr_nats_publish (self->nats, name, zframe_data (body), zframe_size (body)) == 0)
            sent = true;
        else
            lost = true;
    }
    if (self->http) {
        char reply_to [WSR_TOPIC_MAX + 64];
        snprintf (reply_to, sizeof reply_to, "sess:%.*s:%" PRIu64, (int) env.node_len,
                  env.node, env.session);
        char *json = s_http_body (&env);
        if (wsr_upstream_http_submit (self->http, ++self->http_tag, reply_to,
                                      "application/json", (const uint8_t *) json,
                                      strlen (json)) == 0)
            sent = true;
        else {
            lost = true;
            s_reply_error (self, reply_to, "busy, message dropped", 503);
        }
        free (json);
    }
    if (sent)
        wsr_metrics_add (self->metrics, WSR_M_BRIDGE_UPSTREAM_SENT, 1);
    if (lost)
        wsr_metrics_add (self->metrics, WSR_M_BRIDGE_UPSTREAM_LOST, 1);
    if (lost && !sent && !self->http) {
        //  Nowhere to go: the client hears about it
        char reply_to [WSR_TOPIC_MAX + 64];
        snprintf (reply_to, sizeof reply_to, "sess:%.*s:%" PRIu64, (int) env.node_len,
                  env.node, env.session);
        s_reply (self, reply_to, (const uint8_t *) WSR_ERROR_BACKPLANE_DOWN,
                 strlen (WSR_ERROR_BACKPLANE_DOWN));
    }
}

static void
s_handle_publish (s_bridge_t *self, zframe_t *topic, zframe_t *body)
{
    wsr_envelope_t env;
    const char *key = (const char *) zframe_data (topic);
    if (wsr_envelope_decode (zframe_data (body), zframe_size (body), &env)) {
        wsr_metrics_add (self->metrics, WSR_M_BRIDGE_INVALID, 1);
        return;
    }
    char name [WSR_TOPIC_MAX + 256];
    int rc = 0;
    if (self->redis && wsr_naming_to_backplane (self->redis_names, key, name, sizeof name) > 0)
        rc = wsr_redis_publish (self->redis, name, env.data, env.size);
    else
    if (self->nats && wsr_naming_to_backplane (self->nats_names, key, name, sizeof name) > 0)
        rc = wsr_nats_publish (self->nats, name, env.data, env.size);
    else {
        //  No backplane: the bridge is the fan-out point for all nodes
        zmsg_t *msg = zmsg_new ();
        zframe_t *dup = zframe_dup (topic);
        zmsg_append (msg, &dup);
        dup = zframe_dup (body);
        zmsg_append (msg, &dup);
        if (zmsg_send (&msg, self->down))
            zmsg_destroy (&msg);
    }
    if (rc)
        wsr_metrics_add (self->metrics, WSR_M_BRIDGE_PUBLISH_LOST, 1);
}

static void
s_handle_up (s_bridge_t *self)
{
    zmsg_t *msg = zmsg_recv (self->up);
    if (!msg)
        return;
    zframe_t *topic = zmsg_first (msg);
    zframe_t *body = zmsg_next (msg);
    const char *key = topic? (const char *) zframe_data (topic): NULL;
    size_t size = topic? zframe_size (topic): 0;
    //  Input from the network: validate the topic frame before using it
    if (!body || size < 2 || size > WSR_TOPIC_MAX + 1 || key [size - 1] != 0
    ||  strlen (key) != size - 1)
        wsr_metrics_add (self->metrics, WSR_M_BRIDGE_INVALID, 1);
    else
    if (strncmp (key, WSR_TOPIC_UPSTREAM, strlen (WSR_TOPIC_UPSTREAM)) == 0) {
        const char *user = key + strlen (WSR_TOPIC_UPSTREAM);
        if (wsr_util_id_valid (user, strlen (user)))
            s_handle_client_message (self, user, body);
        else
            wsr_metrics_add (self->metrics, WSR_M_BRIDGE_INVALID, 1);
    }
    else
    if (strncmp (key, WSR_TOPIC_USER, strlen (WSR_TOPIC_USER)) == 0
    ||  strncmp (key, WSR_TOPIC_CHANNEL, strlen (WSR_TOPIC_CHANNEL)) == 0)
        s_handle_publish (self, topic, body);
    else
        wsr_metrics_add (self->metrics, WSR_M_BRIDGE_INVALID, 1);
    zmsg_destroy (&msg);
}

//  --------------------------------------------------------------------------
//  Health

static int
s_state (bool configured, bool up)
{
    return !configured? -1: up? 1: 0;
}

static void
s_heartbeat (s_bridge_t *self)
{
    bool redis_up = self->redis && wsr_redis_connected (self->redis);
    bool nats_up = self->nats && wsr_nats_connected (self->nats);
    wsr_metrics_t *m = self->metrics;
    wsr_metrics_add (m, WSR_M_REDIS_UP, (redis_up? 1: 0) - wsr_metrics_get (m, WSR_M_REDIS_UP));
    wsr_metrics_add (m, WSR_M_NATS_UP, (nats_up? 1: 0) - wsr_metrics_get (m, WSR_M_NATS_UP));
    wsr_metrics_add (m, WSR_M_BRIDGE_TOPICS, (int64_t) zhashx_size (self->topics)
                     - wsr_metrics_get (m, WSR_M_BRIDGE_TOPICS));
    if (self->nats) {
        uint64_t dropped = 0, slow = 0;
        wsr_nats_take_drops (self->nats, &dropped, &slow);
        wsr_metrics_add (m, WSR_M_BRIDGE_NATS_DROPS, (int64_t) dropped);
        wsr_metrics_add (m, WSR_M_BRIDGE_NATS_SLOW, (int64_t) slow);
    }
    if (self->redis)
        wsr_metrics_add (m, WSR_M_BRIDGE_REDIS_RECONNECTS,
                         (int64_t) wsr_redis_take_reconnects (self->redis));
    if (self->readiness) {
        bool ready = (!self->redis || redis_up) && (!self->nats || nats_up);
        wsr_metrics_add (m, WSR_M_BACKPLANE_UP,
                         (ready? 1: 0) - wsr_metrics_get (m, WSR_M_BACKPLANE_UP));
    }
    zmsg_t *msg = zmsg_new ();
    zmsg_addmem (msg, "$hb", 4);
    zframe_t *beat = wsr_envelope_encode_heartbeat (s_state (self->redis, redis_up),
                                                    s_state (self->nats, nats_up));
    zmsg_append (msg, &beat);
    if (zmsg_send (&msg, self->down))
        zmsg_destroy (&msg);
}

static void
s_handle_pipe (s_bridge_t *self)
{
    char *command = zstr_recv (self->pipe);
    if (!command) {
        self->terminated = true;
        return;
    }
    if (streq (command, "$TERM"))
        self->terminated = true;
    else
    if (streq (command, WSR_CMD_START))
        zsock_send (self->pipe, "i", self->status);
    else
        assert (false);
    zstr_free (&command);
}

static zsock_t *
s_bind (int type, const char *endpoint, int *status)
{
    zsock_t *sock = zsock_new (type);
    assert (sock);
    zsock_set_sndhwm (sock, WSR_HWM);
    zsock_set_rcvhwm (sock, WSR_HWM);
    zsock_set_sndtimeo (sock, 0);
    zsock_set_linger (sock, 0);
    //  Refuse rather than silently drop when a node falls behind: the
    //  failed send is counted (wsrouter_bridge_deliver_drops_total)
    if (type == ZMQ_XPUB)
        zsock_set_xpub_nodrop (sock, 1);
    //  Find dead nodes quickly so their subscriptions are dropped
    zsock_set_heartbeat_ivl (sock, 1000);
    zsock_set_heartbeat_timeout (sock, 3000);
    if (zsock_bind (sock, "%s", endpoint) == -1) {
        zsys_error ("bridge: cannot bind %s: %s", endpoint, zmq_strerror (zmq_errno ()));
        *status = -1;
    }
    return sock;
}

static void
s_bridge_actor (zsock_t *pipe, void *args)
{
    s_args_t *a = (s_args_t *) args;
    wsr_bridge_opts_t *opts = &a->opts;
    s_bridge_t self_data = { 0 };
    s_bridge_t *self = &self_data;
    self->pipe = pipe;
    self->metrics = a->metrics;
    self->firehose = opts->firehose;
    self->max_message = opts->max_message;
    self->readiness = opts->readiness;
    self->topics = zhashx_new ();
    pthread_setname_np (pthread_self (), "wsr-bridge");

    char down [256], up [256];
    if (wsr_bridge_endpoints (opts->endpoint, down, up, sizeof down)) {
        zsys_error ("bridge: bad endpoint '%s' (want tcp://HOST:PORT or inproc://NAME)",
                    opts->endpoint);
        self->status = -1;
    }
    else {
        self->down = s_bind (ZMQ_XPUB, down, &self->status);
        self->up = s_bind (ZMQ_PULL, up, &self->status);
    }
    char nats_in [128];
    static _Atomic int instances = 0;       //  unique per bridge in this process
    snprintf (nats_in, sizeof nats_in, "inproc://wsr-bridge-nats-%d",
              atomic_fetch_add (&instances, 1));
    self->nats_in = s_bind (ZMQ_PULL, nats_in, &self->status);
    self->redis_names = wsr_naming_new (opts->redis_user, opts->redis_channel,
                                        opts->redis_actions);
    self->nats_names = wsr_naming_new (opts->nats_user, opts->nats_channel, opts->nats_actions);
    if (!self->redis_names || !self->nats_names) {
        zsys_error ("bridge: a channel or subject template lacks its placeholder");
        self->status = -1;
    }
    if (self->status == 0 && opts->redis_url) {
        self->redis = wsr_redis_new (opts->redis_url, s_on_redis, self);
        if (!self->redis) {
            zsys_error ("bridge: bad Redis URL '%s'", opts->redis_url);
            self->status = -1;
        }
    }
    if (self->status == 0 && opts->nats_url) {
        self->nats = wsr_nats_new (opts->nats_url, nats_in);
        if (!self->nats)
            self->status = -1;
    }
    if (self->status == 0 && self->firehose) {
        char pattern [512];
        if (self->redis) {
            wsr_naming_pattern (self->redis_names, WSR_TOPIC_USER, false, pattern, sizeof pattern);
            wsr_redis_psubscribe (self->redis, pattern);
            wsr_naming_pattern (self->redis_names, WSR_TOPIC_CHANNEL, false,
                                self->redis_channel_pattern,
                                sizeof self->redis_channel_pattern);
            wsr_redis_psubscribe (self->redis, self->redis_channel_pattern);
        }
        if (self->nats) {
            wsr_naming_pattern (self->nats_names, WSR_TOPIC_USER, true, pattern, sizeof pattern);
            wsr_nats_subscribe (self->nats, pattern);
            wsr_naming_pattern (self->nats_names, WSR_TOPIC_CHANNEL, true, pattern,
                                sizeof pattern);
            wsr_nats_subscribe (self->nats, pattern);
        }
    }
    if (self->status == 0 && opts->upstream_url) {
        self->http = wsr_upstream_http_new (opts->upstream_url, opts->upstream_concurrency,
                                            opts->upstream_queue, opts->upstream_timeout_ms,
                                            opts->max_message, s_on_http_done, self);
        if (!self->http)
            self->status = -1;
    }
    if (self->status == 0)
        zsys_info ("bridge: nodes on %s and %s; redis %s, nats %s, http %s, %s mode", down, up,
                   opts->redis_url? opts->redis_url: "off", opts->nats_url? opts->nats_url: "off",
                   opts->upstream_url? opts->upstream_url: "off",
                   self->firehose? "firehose": "per-topic");
    zsock_signal (pipe, 0);

    zmq_pollitem_t items [S_MAX_ITEMS];
    while (!self->terminated) {
        int count = 0;
        items [count++] = (zmq_pollitem_t) { zsock_resolve (pipe), 0, ZMQ_POLLIN, 0 };
        int fixed = 1;
        if (self->status == 0) {
            items [count++] = (zmq_pollitem_t) { zsock_resolve (self->down), 0, ZMQ_POLLIN, 0 };
            items [count++] = (zmq_pollitem_t) { zsock_resolve (self->up), 0, ZMQ_POLLIN, 0 };
            items [count++] = (zmq_pollitem_t) { zsock_resolve (self->nats_in), 0, ZMQ_POLLIN, 0 };
            fixed = 4;
        }
        int redis_at = count;
        if (self->redis)
            count += wsr_redis_pollitems (self->redis, items + count, S_MAX_ITEMS - count);
        int http_at = count;
        if (self->http)
            count += wsr_upstream_http_pollitems (self->http, items + count, S_MAX_ITEMS - count);
        int64_t now = wsr_util_mono_ms ();
        long timeout = self->next_heartbeat > now? (long) (self->next_heartbeat - now): 0;
        if (self->redis) {
            long redis_timeout = wsr_redis_timeout (self->redis);
            if (redis_timeout < timeout)
                timeout = redis_timeout;
        }
        if (self->http) {
            long http_timeout = wsr_upstream_http_timeout (self->http);
            if (http_timeout >= 0 && http_timeout < timeout)
                timeout = http_timeout;
        }
        if (zmq_poll (items, count, timeout) == -1 && zmq_errno () != EINTR)
            break;
        if (items [0].revents & ZMQ_POLLIN)
            s_handle_pipe (self);
        if (self->terminated || self->status != 0)
            continue;
        for (int budget = WSR_WORKER_BUDGET; budget > 0
             && (zsock_events (self->down) & ZMQ_POLLIN); budget--)
            s_handle_subscription (self);
        for (int budget = WSR_WORKER_BUDGET; budget > 0
             && (zsock_events (self->up) & ZMQ_POLLIN); budget--)
            s_handle_up (self);
        for (int budget = WSR_WORKER_BUDGET; budget > 0
             && (zsock_events (self->nats_in) & ZMQ_POLLIN); budget--)
            s_handle_nats (self);
        (void) fixed;
        if (self->redis)
            wsr_redis_process (self->redis, items + redis_at, http_at - redis_at);
        if (self->http)
            wsr_upstream_http_process (self->http, items + http_at, count - http_at);
        now = wsr_util_mono_ms ();
        if (now >= self->next_heartbeat) {
            s_heartbeat (self);
            self->next_heartbeat = now + S_HEARTBEAT_MS;
        }
    }
    wsr_upstream_http_destroy (&self->http);
    wsr_nats_destroy (&self->nats);
    wsr_redis_destroy (&self->redis);
    wsr_naming_destroy (&self->redis_names);
    wsr_naming_destroy (&self->nats_names);
    zsock_destroy (&self->down);
    zsock_destroy (&self->up);
    zsock_destroy (&self->nats_in);
    zhashx_destroy (&self->topics);
}

//  --------------------------------------------------------------------------
//  Start a bridge.
wsr_bridge_t *
wsr_bridge_new (const wsr_bridge_opts_t *opts, wsr_metrics_t *metrics)
{
    assert (opts && opts->endpoint && metrics);
    s_args_t args = { *opts, metrics };
    wsr_bridge_t *self = (wsr_bridge_t *) zmalloc (sizeof (wsr_bridge_t));
    self->actor = wsr_util_actor_start (s_bridge_actor, &args);
    if (!self->actor)
        wsr_bridge_destroy (&self);
    return self;
}

//  --------------------------------------------------------------------------
//  Stop the bridge.
void
wsr_bridge_destroy (wsr_bridge_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        wsr_bridge_t *self = *self_p;
        zactor_destroy (&self->actor);
        free (self);
        *self_p = NULL;
    }
}

//  --------------------------------------------------------------------------
//  Selftest: the test plays a node (XSUB + PUSH) against a bridge with a real
//  redis-server when installed; without one, the pure ZeroMQ fan-out.

static zmsg_t *
s_recv_topic (zsock_t *sock, const char *topic, int ms)
{
    int64_t end = zclock_mono () + ms;
    zpoller_t *poller = zpoller_new (sock, NULL);
    zmsg_t *found = NULL;
    while (!found && zclock_mono () < end) {
        if (!zpoller_wait (poller, 50))
            continue;
        zmsg_t *msg = zmsg_recv (sock);
        zframe_t *key = zmsg_first (msg);
        if (key && zframe_size (key) == strlen (topic) + 1
        &&  memcmp (zframe_data (key), topic, zframe_size (key)) == 0)
            found = msg;
        else
            zmsg_destroy (&msg);
    }
    zpoller_destroy (&poller);
    return found;
}

static void
s_subscribe (zsock_t *xsub, const char *topic, bool on)
{
    size_t len = strlen (topic) + 1;
    uint8_t frame [WSR_TOPIC_MAX + 2];
    frame [0] = on? 1: 0;
    memcpy (frame + 1, topic, len);
    zsock_send (xsub, "b", frame, len + 1);
}

static void
s_push_publish (zsock_t *push, const char *topic, const char *text)
{
    zframe_t *key = zframe_new (topic, strlen (topic) + 1);
    zframe_t *env = wsr_envelope_encode_down ((const uint8_t *) text, strlen (text), 0, 0);
    zsock_send (push, "ff", key, env);
    zframe_destroy (&key);
    zframe_destroy (&env);
}

void
wsr_bridge_test (bool verbose)
{
    (void) verbose;
    char down [256], up [256];
    assert (wsr_bridge_endpoints ("tcp://10.0.0.1:7000", down, up, sizeof down) == 0);
    assert (streq (down, "tcp://10.0.0.1:7000") && streq (up, "tcp://10.0.0.1:7001"));
    assert (wsr_bridge_endpoints ("inproc://b", down, up, sizeof down) == 0);
    assert (streq (up, "inproc://b-up"));
    assert (wsr_bridge_endpoints ("tcp://host", down, up, sizeof down) == -1);
    assert (wsr_bridge_endpoints ("tcp://host:65535", down, up, sizeof down) == -1);
    assert (wsr_bridge_endpoints ("ipc://x", down, up, sizeof down) == -1);

    wsr_metrics_t *metrics = wsr_metrics_new ();
    //  No backplane: publishes fan out through the bridge, heartbeats flow
    wsr_bridge_opts_t opts;
    wsr_bridge_opts_defaults (&opts);
    opts.endpoint = "inproc://wsr-bridge-test";
    wsr_bridge_t *bridge = wsr_bridge_new (&opts, metrics);
    assert (bridge);
    zsock_t *xsub = zsock_new (ZMQ_XSUB);
    zsock_connect (xsub, "inproc://wsr-bridge-test");
    zsock_t *push = zsock_new_push ("inproc://wsr-bridge-test-up");
    s_subscribe (xsub, "$hb", true);
    s_subscribe (xsub, "user:u1", true);
    zmsg_t *msg = s_recv_topic (xsub, "$hb", 2000);
    assert (msg);
    int redis = 9, nats = 9;
    zframe_t *beat = zmsg_last (msg);
    assert (wsr_envelope_decode_heartbeat (zframe_data (beat), zframe_size (beat),
                                           &redis, &nats) == 0);
    assert (redis == -1 && nats == -1);
    zmsg_destroy (&msg);
    s_push_publish (push, "user:u10", "not-mine");
    s_push_publish (push, "user:u1", "mine");
    msg = s_recv_topic (xsub, "user:u1", 2000);
    assert (msg);
    wsr_envelope_t env;
    zframe_t *body = zmsg_last (msg);
    assert (wsr_envelope_decode (zframe_data (body), zframe_size (body), &env) == 0);
    assert (env.size == 4 && memcmp (env.data, "mine", 4) == 0);
    zmsg_destroy (&msg);
    zsock_destroy (&xsub);
    zsock_destroy (&push);
    wsr_bridge_destroy (&bridge);

    //  Redis configured but down: a client message is dropped, counted, and
    //  its session gets an error through the node's reply prefix
    opts.endpoint = "inproc://wsr-bridge-test3";
    opts.redis_url = "redis://127.0.0.1:1";
    bridge = wsr_bridge_new (&opts, metrics);
    assert (bridge);
    xsub = zsock_new (ZMQ_XSUB);
    zsock_connect (xsub, "inproc://wsr-bridge-test3");
    push = zsock_new_push ("inproc://wsr-bridge-test3-up");
    uint8_t prefix [] = "\x01sess:n1:";
    zsock_send (xsub, "b", prefix, sizeof prefix - 1);
    int64_t lost_before = wsr_metrics_get (metrics, WSR_M_BRIDGE_UPSTREAM_LOST);
    msg = NULL;
    for (int i = 0; i < 40 && !msg; i++) {
        zframe_t *key = zframe_new ("up:u1", 6);
        zframe_t *up_env = wsr_envelope_encode_up ("u1", 5, "n1", 0, WSR_KIND_TEXT,
                                                   (const uint8_t *) "hi", 2);
        zsock_send (push, "ff", key, up_env);
        zframe_destroy (&key);
        zframe_destroy (&up_env);
        msg = s_recv_topic (xsub, "sess:n1:5", 100);
    }
    assert (msg);
    body = zmsg_last (msg);
    assert (wsr_envelope_decode (zframe_data (body), zframe_size (body), &env) == 0);
    assert (env.size == strlen (WSR_ERROR_BACKPLANE_DOWN)
         && memcmp (env.data, WSR_ERROR_BACKPLANE_DOWN, env.size) == 0);
    zmsg_destroy (&msg);
    assert (wsr_metrics_get (metrics, WSR_M_BRIDGE_UPSTREAM_LOST) > lost_before);
    zsock_destroy (&xsub);
    zsock_destroy (&push);
    wsr_bridge_destroy (&bridge);
    opts.redis_url = NULL;

    if (system ("command -v redis-server >/dev/null 2>&1") != 0) {
        printf ("SKIP redis part (redis-server not installed) ");
        wsr_metrics_destroy (&metrics);
        return;
    }
    //  With Redis: subscriptions from the node become SUBSCRIBEs; a message
    //  published on ws:u1 reaches the node; a client message lands on
    //  ws:actions:u1
    int port = wsr_util_free_port ();
    char port_text [16];
    snprintf (port_text, sizeof port_text, "%d", port);
    const char *argv [] = { "redis-server", "--port", port_text, "--bind", "127.0.0.1",
                            "--save", "", "--appendonly", "no", NULL };
    pid_t pid = wsr_util_spawn (argv);
    char url [64];
    snprintf (url, sizeof url, "redis://127.0.0.1:%d", port);
    opts.endpoint = "inproc://wsr-bridge-test2";
    opts.redis_url = url;
    bridge = wsr_bridge_new (&opts, metrics);
    assert (bridge);
    xsub = zsock_new (ZMQ_XSUB);
    zsock_connect (xsub, "inproc://wsr-bridge-test2");
    push = zsock_new_push ("inproc://wsr-bridge-test2-up");
    s_subscribe (xsub, "$hb", true);
    s_subscribe (xsub, "user:u1", true);
    //  Wait for a heartbeat that says Redis is up
    redis = 0;
    for (int i = 0; i < 20 && redis != 1; i++) {
        msg = s_recv_topic (xsub, "$hb", 1000);
        if (msg) {
            beat = zmsg_last (msg);
            wsr_envelope_decode_heartbeat (zframe_data (beat), zframe_size (beat), &redis, &nats);
            zmsg_destroy (&msg);
        }
    }
    assert (redis == 1 && nats == -1);
    //  An API publish goes through Redis and comes back (retry until the
    //  SUBSCRIBE is live)
    msg = NULL;
    for (int i = 0; i < 40 && !msg; i++) {
        s_push_publish (push, "user:u1", "via-redis");
        msg = s_recv_topic (xsub, "user:u1", 100);
    }
    assert (msg);
    body = zmsg_last (msg);
    assert (wsr_envelope_decode (zframe_data (body), zframe_size (body), &env) == 0);
    assert (env.size == 9 && memcmp (env.data, "via-redis", 9) == 0);
    zmsg_destroy (&msg);
    assert (wsr_metrics_get (metrics, WSR_M_BRIDGE_TOPICS) == 1);
    wsr_util_reap (pid);
    zsock_destroy (&xsub);
    zsock_destroy (&push);
    wsr_bridge_destroy (&bridge);
    wsr_metrics_destroy (&metrics);
}
