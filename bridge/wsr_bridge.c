//  wsr_bridge — the backplane bridge actor: Redis / NATS / HTTP ⇄ wsrouter nodes over ZeroMQ
//
//  Every node actor that needs the backplane (each session worker, each
//  node's router) holds a DEALER connected to this actor's ROUTER and speaks
//  WBP/1 (wsr_msgs.h): the bridge knows each peer by its routing id and
//  keeps, in wsr_peers, which peer wants which topic. The same actor runs
//  inside a node (inproc, always: without Redis or NATS it is the node's
//  fan-out point) or as its own process (`wsrouter bridge`, tcp with CURVE:
//  only nodes whose public certificates are in the clients directory get in,
//  see wsr_zap), and the nodes do not know which.
//
//  Downstream: a message from Redis/NATS (or an API publish when there is no
//  backplane) for topic T is encoded once and sent as [D][T][envelope] to
//  each peer that wants T, sharing the envelope's bytes. The ROUTER is
//  ROUTER_MANDATORY with a zero send timeout: a peer whose queue is full (a
//  stalled node) loses that message alone, counted; nobody else waits.
//  The first peer wanting a topic makes the bridge SUBSCRIBE it on Redis and
//  NATS (per-topic mode), the last one leaving unsubscribes; in firehose mode
//  one pattern per kind takes everything and the peers table filters.
//
//  Peers are validated, not trusted blindly: topics must be user: or
//  channel: with a valid id (no wildcard ever reaches Redis or NATS), a node
//  holds at most max_topics topics (REFUSED beyond, counted), envelopes must
//  decode, a peer silent for WSR_PROTO_PEER_TTL_MS is forgotten with its
//  topics. A peer the bridge does not know (it restarted, or forgot it) is
//  sent RESYNC and says HELLO and SUB again; its messages are served anyway.
//
//  Upstream: UP [upstream envelope] is published on Redis ws:actions:USER
//  and NATS client.actions.USER, POSTed to WEBSOCKET_UPSTREAM_URL (the 2xx
//  body goes back to that session as REPLY, to the peer that sent it), and
//  published on the optional upstream PUB endpoint as [up:USER][envelope].
//  Every 500 ms each peer gets a heartbeat HB [epoch][{v, r, n}]: the epoch
//  is random per bridge start, so a peer sees a restarted bridge. A peer's
//  BYE is answered with BYE: nothing for its old session follows it.
//
//  Sockets (owned):
//    pipe                          PAIR    START, RELOAD, PEERS, $TERM
//    nodes' endpoint               ROUTER  bind; WBP/1
//    upstream endpoint (optional)  PUB     bind; client messages for observers
//    inproc://wsr-bridge-nats-ID   PULL    bind; messages from libnats threads
//    inproc://wsr-bridge-mon-ID    PAIR    bind; handshake failures (CURVE)
//  Links (owned): wsr_redis, wsr_nats, wsr_upstream_http, wsr_zap, wsr_peers.

#include "wsr_classes.h"
#include "wsr_upstream_http.h"
#include <jansson.h>

#define S_MAX_ITEMS         (8 + 2 + 256)
#define S_NODES_BUDGET      1024    //  messages from peers per turn

struct _wsr_bridge_t {
    zactor_t *actor;                //  the bridge thread
};

typedef struct {
    wsr_bridge_opts_t opts;         //  settings (strings borrowed until START)
    wsr_metrics_t *metrics;         //  shared counters (not owned)
} s_args_t;

//  Deliveries for one peer gathered during a turn (DS), sent at its end.
typedef struct {
    wsr_peer_t *peer;               //  not owned; batches go before any peer can
    uint8_t *data;                  //  records (owned; handed to libzmq on send)
    size_t size;
    size_t records;
} s_batch_t;

//  A barrier a peer asked for (SYNC): answered with SYNCED once every
//  backplane connection has answered a round trip started after it.
#define S_SYNC_PREFIX       "user:~wsr-sync-"   //  its topic: no session has this id
#define S_SYNC_TTL_MS       10000               //  forgotten after this long
typedef struct {
    uint8_t rid [256];              //  the peer's routing id
    size_t rid_size;
    uint64_t token;                 //  given back in SYNCED
    char redis_name [WSR_TOPIC_MAX + 256];  //  channel subscribed as the barrier, or ""
    char nats_name [WSR_TOPIC_MAX + 256];   //  subject subscribed and published, or ""
    int64_t deadline;               //  mono ms
} s_sync_t;

typedef struct {
    zsock_t *pipe;                  //  actor pipe (not owned)
    zsock_t *nodes;                 //  ROUTER to the peers
    zlistx_t *syncs;                //  s_sync_t barriers under way (owned)
    uint64_t sync_count;            //  barriers made (their topic names)
    s_batch_t *batches;             //  peers with deliveries waiting this turn
    size_t batch_count, batch_cap;
    zsock_t *observer;              //  PUB for client messages, or NULL
    zsock_t *nats_in;               //  PULL from libnats threads
    zsock_t *monitor;               //  PAIR: handshake failures, or NULL
    wsr_zap_t *zap;                 //  CURVE admission, or NULL (plaintext)
    wsr_peers_t *peers;             //  peers and their topics
    zlistx_t *deferred;             //  API publishes waiting for the end of the batch
    wsr_redis_t *redis;             //  Redis link or NULL
    wsr_nats_t *nats;               //  NATS link or NULL
    wsr_upstream_http_t *http;      //  HTTP backend or NULL
    wsr_history_t *history;         //  Redis history or NULL
    wsr_jetstream_t *jetstream;     //  NATS JetStream history or NULL
    zsock_t *js_live;               //  PULL: the history stream's messages, or NULL
    void *js_conn;                  //  the NATS connection jetstream was made on
    uint64_t js_connects;           //  wsr_nats_connects when jetstream was made
    wsr_jetstream_config_t js_config;   //  to make it again (strings in js_names)
    char js_names [3][512];         //  stream name, user and channel subjects
    char js_endpoint [64];          //  inproc endpoint of js_live
    wsr_jsmerge_t *jsmerge;         //  core and stream copies of NATS messages, or NULL
    char js_epoch [WSR_HISTORY_EPOCH_MAX + 1];  //  epoch of the stream copies seen
    uint64_t js_last [2];           //  last stream sequence seen: users, channels
    wsr_hreads_t *hreads;           //  history reads for peers
    wsr_presence_t *presence;       //  presence in Redis, or NULL
    bool events;                    //  publish lifecycle events
    char *redis_events;             //  events channel template (owned)
    char *nats_events;              //  events subject template (owned)
    int64_t next_beat;              //  mono ms: presence beat due
    bool redis_was_up;              //  to notice subscriptions lost
    wsr_naming_t *redis_names;      //  topic ⇄ Redis channel
    wsr_naming_t *nats_names;       //  topic ⇄ NATS subject
    char redis_channel_pattern [512];   //  firehose: the channel pattern
    bool firehose;                  //  pattern mode
    size_t max_message;             //  payload limit
    bool readiness;                 //  owns the backplane_up gauge
    uint64_t epoch;                 //  random per start, in heartbeats
    int64_t next_heartbeat;         //  mono ms
    wsr_metrics_t *metrics;         //  shared counters
    bool terminated;
    int status;                     //  init result
} s_bridge_t;

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
    opts->redis_events = "ws:events:{user_id}";
    opts->nats_events = "client.events.{user_id}";
    opts->events = true;
    opts->upstream_timeout_ms = 5000;
    opts->upstream_concurrency = 64;
    opts->upstream_queue = 10000;
    opts->max_message = WSR_DEFAULT_MAX_MESSAGE;
    opts->max_topics = WSR_DEFAULT_BRIDGE_MAX_TOPICS;
    opts->history_ttl_s = WSR_HISTORY_DEFAULT_TTL_S;
    opts->nats_history_replicas = 1;
}

//  --------------------------------------------------------------------------
//  Sending to peers

//  Send [rid][command] to one peer, more frames to follow if more; never
//  waits. A full queue drops the message for that peer only (counted).
static bool
s_send_head (s_bridge_t *self, wsr_peer_t *peer, const char *command, bool more)
{
    size_t rid_size = 0;
    const uint8_t *rid = wsr_peer_rid (peer, &rid_size);
    void *sock = zsock_resolve (self->nodes);
    if (zmq_send (sock, rid, rid_size, ZMQ_SNDMORE | ZMQ_DONTWAIT) == -1) {
        //  EAGAIN: its queue is full; EHOSTUNREACH: it disconnected (it
        //  will expire). Either way the message is lost for it alone.
        wsr_metrics_add (self->metrics, WSR_M_BRIDGE_DELIVER_DROPS, 1);
        uint64_t dropped = wsr_peer_dropped (peer);
        if ((dropped & (dropped - 1)) == 0)     //  1, 2, 4, 8...: not per message
            zsys_warning ("bridge: node %s %s: %" PRIu64 " messages dropped for it",
                          wsr_peer_node (peer)? wsr_peer_node (peer): "?",
                          zmq_errno () == EAGAIN? "is not reading": "is gone", dropped);
        return false;
    }
    int rc = zmq_send (sock, command, strlen (command), more? ZMQ_SNDMORE: 0);
    assert (rc >= 0);               //  after the first frame, the rest always go
    return true;
}

//  A frame to the peer whose head was sent; reuse keeps our reference.
static void
s_send_frame (s_bridge_t *self, zframe_t *frame, bool more)
{
    int flags = ZFRAME_REUSE | (more? ZFRAME_MORE: 0);
    int rc = zframe_send (&frame, self->nodes, flags);
    assert (rc == 0);
}

static void
s_send_resync (s_bridge_t *self, wsr_peer_t *peer)
{
    s_send_head (self, peer, WSR_PROTO_RESYNC, false);
}

static void
s_batch_free (void *data, void *hint)
{
    (void) hint;
    free (data);
}

//  Send one peer's gathered deliveries as one DS message.
static void
s_batch_send (s_bridge_t *self, s_batch_t *batch)
{
    if (!batch->records)
        return;
    if (s_send_head (self, batch->peer, WSR_PROTO_DELIVERS, true)) {
        zmq_msg_t frame;
        int rc = zmq_msg_init_data (&frame, batch->data, batch->size, s_batch_free, NULL);
        assert (rc == 0);
        rc = zmq_msg_send (&frame, zsock_resolve (self->nodes), 0);
        assert (rc >= 0);
        batch->data = NULL;         //  libzmq frees it
    }
    else
        //  The head counted one drop; the batch held more deliveries
        wsr_metrics_add (self->metrics, WSR_M_BRIDGE_DELIVER_DROPS,
                         (int64_t) batch->records - 1);
    free (batch->data);
    batch->data = NULL;
    batch->size = batch->records = 0;
}

//  End of a turn's deliveries: every gathered batch leaves.
static void
s_batches_flush (s_bridge_t *self)
{
    for (size_t i = 0; i < self->batch_count; i++)
        s_batch_send (self, &self->batches [i]);
    self->batch_count = 0;
}

//  The batch of a peer, made on first use this turn.
static s_batch_t *
s_batch_of (s_bridge_t *self, wsr_peer_t *peer)
{
    for (size_t i = 0; i < self->batch_count; i++)
        if (self->batches [i].peer == peer)
            return &self->batches [i];
    if (self->batch_count == self->batch_cap) {
        self->batch_cap = self->batch_cap? self->batch_cap * 2: 16;
        self->batches = (s_batch_t *) realloc (self->batches,
                                               self->batch_cap * sizeof (s_batch_t));
        assert (self->batches);
    }
    s_batch_t *batch = &self->batches [self->batch_count++];
    *batch = (s_batch_t) { .peer = peer };
    return batch;
}

//  Deliveries to every peer that wants the topic. Small envelopes are
//  gathered per peer and leave once per turn (DS), so a Redis read of many
//  messages costs one ZeroMQ message and one wake-up per peer; a large one
//  goes alone (D), after what was gathered for that peer, sharing its bytes.
//  Returns how many peers it was given to.
static size_t
s_fan_out_to (s_bridge_t *self, wsr_peer_t **peers, size_t count, const char *key,
              size_t key_size, zframe_t *envelope)
{
    size_t env_size = zframe_size (envelope);
    if (env_size <= WSR_PROTO_BATCH_ENVELOPE && key_size <= UINT16_MAX) {
        size_t record = 2 + key_size + 4 + env_size;
        for (size_t i = 0; i < count; i++) {
            s_batch_t *batch = s_batch_of (self, peers [i]);
            if (batch->size + record > WSR_PROTO_BATCH_BYTES
            ||  batch->records == WSR_PROTO_BATCH_RECORDS)
                s_batch_send (self, batch);
            if (!batch->data) {
                batch->data = (uint8_t *) malloc (WSR_PROTO_BATCH_BYTES);
                assert (batch->data);
            }
            uint8_t *at = batch->data + batch->size;
            at [0] = (uint8_t) (key_size >> 8);
            at [1] = (uint8_t) key_size;
            memcpy (at + 2, key, key_size);
            at += 2 + key_size;
            for (int b = 0; b < 4; b++)
                at [b] = (uint8_t) (env_size >> (24 - 8 * b));
            memcpy (at + 4, zframe_data (envelope), env_size);
            batch->size += record;
            batch->records++;
        }
        return count;
    }
    zframe_t *topic = count? zframe_new (key, key_size): NULL;
    size_t sent = 0;
    for (size_t i = 0; i < count; i++) {
        s_batch_send (self, s_batch_of (self, peers [i]));     //  order kept
        if (s_send_head (self, peers [i], WSR_PROTO_DELIVER, true)) {
            s_send_frame (self, topic, true);
            s_send_frame (self, envelope, false);
            sent++;
        }
    }
    zframe_destroy (&topic);
    return sent;
}

static size_t
s_fan_out (s_bridge_t *self, const char *key, size_t key_size, zframe_t *envelope)
{
    wsr_peer_t **peers = NULL;
    size_t count = wsr_peers_recipients (self->peers, key, &peers);
    return s_fan_out_to (self, peers, count, key, key_size, envelope);
}

//  A message for one session: REPLY [session][envelope] to the peer (by
//  routing id in hex) that sent the client message.
static void
s_reply_to_peer (s_bridge_t *self, const char *peer_hex, uint64_t session, const uint8_t *data,
                 size_t size)
{
    uint8_t rid [256];
    size_t rid_size = 0;
    if (sodium_hex2bin (rid, sizeof rid, peer_hex, strlen (peer_hex), NULL, &rid_size, NULL))
        return;
    wsr_peer_t *peer = wsr_peers_lookup (self->peers, rid, rid_size, false, NULL);
    if (!peer)
        return;                     //  its node left meanwhile
    zframe_t *envelope = wsr_envelope_encode_down (data, size, 0, wsr_util_now_us ());
    if (s_send_head (self, peer, WSR_PROTO_REPLY, true)) {
        uint8_t number [8];
        wsr_msgs_put_u64 (number, session);
        zmq_send (zsock_resolve (self->nodes), number, sizeof number, ZMQ_SNDMORE);
        s_send_frame (self, envelope, false);
    }
    zframe_destroy (&envelope);
}

//  --------------------------------------------------------------------------
//  Downstream: a backplane message on `name` goes to the peers of its topic.

//  kind: the topic kind a firehose pattern stands for, or NULL for a plain
//  subscription. Overlapping patterns (ws:* also matches ws:channel:x and
//  ws:actions:x) each deliver the message once, only under their own kind.
static void
s_deliver_at (s_bridge_t *self, wsr_naming_t *names, const char *kind, const char *name,
              size_t name_len, const uint8_t *data, size_t size, uint64_t offset,
              uint64_t prev, const char *epoch)
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
    wsr_peer_t **peers = NULL;
    size_t count = wsr_peers_recipients (self->peers, key, &peers);
    if (count == 0) {
        wsr_metrics_add (self->metrics, WSR_M_BRIDGE_UNMATCHED, 1);
        return;                 //  firehose, or a topic just left: nobody wants it
    }
    //  Encoded once (the text/binary decision included) for every recipient
    zframe_t *envelope = offset
        ? wsr_envelope_encode_pub (data, size, 0, wsr_util_now_us (), offset, prev, epoch)
        : wsr_envelope_encode_down (data, size, 0, wsr_util_now_us ());
    s_fan_out_to (self, peers, count, key, (size_t) key_size, envelope);
    zframe_destroy (&envelope);
}

static void
s_deliver (s_bridge_t *self, wsr_naming_t *names, const char *kind, const char *name,
           size_t name_len, const uint8_t *data, size_t size)
{
    s_deliver_at (self, names, kind, name, name_len, data, size, 0, 0, NULL);
}

static void
s_on_redis (void *arg, const char *pattern, const char *channel, size_t channel_len,
            const uint8_t *data, size_t size)
{
    s_bridge_t *self = (s_bridge_t *) arg;
    const char *kind = NULL;
    if (pattern)
        kind = streq (pattern, self->redis_channel_pattern)? WSR_TOPIC_CHANNEL: WSR_TOPIC_USER;
    //  Published through the history (publish.lua): offset, epoch, payload.
    //  Decoded whether or not this bridge keeps history, so clients never
    //  see the frame; offsets within a topic follow each other (prev).
    uint64_t offset = 0;
    char epoch [WSR_HISTORY_EPOCH_MAX + 1];
    const uint8_t *payload = data;
    size_t payload_size = size;
    if (size && data [0] == 0xFF
    &&  wsr_history_frame_decode (data, size, &offset, epoch, &payload, &payload_size) == 0)
        s_deliver_at (self, self->redis_names, kind, channel, channel_len, payload,
                      payload_size, offset, offset - 1, epoch);
    else
        s_deliver (self, self->redis_names, kind, channel, channel_len, data, size);
}

//  A Redis SUBSCRIBE confirmed: history reads of that channel may go.
static void s_syncs_check (s_bridge_t *self, const char *redis_name, const char *nats_name);

static void
s_on_redis_subscribed (void *arg, const char *channel, size_t channel_len)
{
    s_bridge_t *self = (s_bridge_t *) arg;
    if (zlistx_size (self->syncs))
        s_syncs_check (self, channel, NULL);
    if (self->hreads)
        wsr_hreads_confirmed (self->hreads, channel, channel_len);
}

//  Some peer wants the topic.
static bool
s_wanted (s_bridge_t *self, const char *key)
{
    wsr_peer_t **peers;
    return wsr_peers_recipients (self->peers, key, &peers) > 0;
}

//  The history stream's messages: [subject][payload][sequence][epoch]. The
//  stream sequence is the offset; the previous one of the same subject is
//  not known here (0).
//
//  Each message also comes from the core subscription of its subject (when
//  a peer wants it); wsr_jsmerge delivers one of the two copies. A stream
//  copy already seen (the live consumers made again from the last sequence
//  seen after a reconnect) is dropped.
static void
s_handle_js_live (s_bridge_t *self)
{
    zmsg_t *msg = zmsg_recv (self->js_live);
    if (!msg)
        return;
    zframe_t *subject = zmsg_first (msg);
    zframe_t *data = zmsg_next (msg);
    zframe_t *seq = zmsg_next (msg);
    zframe_t *epoch = zmsg_next (msg);
    char epoch_text [WSR_HISTORY_EPOCH_MAX + 1];
    char key [WSR_TOPIC_MAX];
    uint64_t offset = seq && zframe_size (seq) == 8? wsr_msgs_get_u64 (zframe_data (seq)): 0;
    int key_size = subject? wsr_naming_to_topic (self->nats_names,
                                                 (const char *) zframe_data (subject),
                                                 zframe_size (subject), key, sizeof key): -1;
    if (offset && data && key_size > 0 && epoch
    &&  zframe_size (epoch) > 0 && zframe_size (epoch) <= WSR_HISTORY_EPOCH_MAX) {
        memcpy (epoch_text, zframe_data (epoch), zframe_size (epoch));
        epoch_text [zframe_size (epoch)] = 0;
        int kind = strncmp (key, WSR_TOPIC_USER, strlen (WSR_TOPIC_USER)) == 0? 0: 1;
        if (strcmp (epoch_text, self->js_epoch)) {
            snprintf (self->js_epoch, sizeof self->js_epoch, "%s", epoch_text);
            self->js_last [0] = self->js_last [1] = 0;
        }
        bool deliver = offset > self->js_last [kind];
        if (deliver)
            self->js_last [kind] = offset;
        if (deliver && self->jsmerge && s_wanted (self, key)
        &&  wsr_jsmerge_stream (self->jsmerge, (const char *) zframe_data (subject),
                                zframe_size (subject), zframe_data (data), zframe_size (data),
                                wsr_util_mono_ms ()) == WSR_JSMERGE_DROP) {
            wsr_metrics_add (self->metrics, WSR_M_BRIDGE_JS_DUPLICATES, 1);
            deliver = false;
        }
        if (deliver)
            s_deliver_at (self, self->nats_names, NULL, (const char *) zframe_data (subject),
                          zframe_size (subject), zframe_data (data), zframe_size (data),
                          offset, 0, epoch_text);
    }
    zmsg_destroy (&msg);
}

//  A held core copy whose stream copy did not come: delivered without offset.
static void
s_on_merge_due (void *arg, const char *subject, size_t subject_len, const uint8_t *data,
                size_t size)
{
    s_bridge_t *self = (s_bridge_t *) arg;
    wsr_metrics_add (self->metrics, WSR_M_BRIDGE_JS_CORE, 1);
    s_deliver (self, self->nats_names, NULL, subject, subject_len, data, size);
}

static void
s_handle_nats (s_bridge_t *self)
{
    zmsg_t *msg = zmsg_recv (self->nats_in);
    if (!msg)
        return;
    zframe_t *subject = zmsg_first (msg);
    zframe_t *data = zmsg_next (msg);
    if (subject && data && zlistx_size (self->syncs)) {
        char name [WSR_TOPIC_MAX + 256];
        size_t size = zframe_size (subject) < sizeof name - 1? zframe_size (subject)
                                                              : sizeof name - 1;
        memcpy (name, zframe_data (subject), size);
        name [size] = 0;
        if (strstr (name, &S_SYNC_PREFIX [strlen (WSR_TOPIC_USER)])) {
            s_syncs_check (self, NULL, name);
            zmsg_destroy (&msg);
            return;
        }
    }
    //  NATS firehose patterns do not overlap: one delivery per message.
    //  With a history stream the copy from the stream is usually the one
    //  delivered (s_handle_js_live)
    if (subject && data) {
        wsr_jsmerge_verdict_t verdict = WSR_JSMERGE_DELIVER;
        char key [WSR_TOPIC_MAX];
        if (self->jsmerge
        &&  wsr_naming_to_topic (self->nats_names, (const char *) zframe_data (subject),
                                 zframe_size (subject), key, sizeof key) > 0
        &&  s_wanted (self, key)) {
            verdict = wsr_jsmerge_core (self->jsmerge, (const char *) zframe_data (subject),
                                        zframe_size (subject), zframe_data (data),
                                        zframe_size (data), wsr_util_mono_ms ());
            if (verdict == WSR_JSMERGE_DELIVER)
                wsr_metrics_add (self->metrics, WSR_M_BRIDGE_JS_CORE, 1);
            else
            if (verdict == WSR_JSMERGE_DROP)
                wsr_metrics_add (self->metrics, WSR_M_BRIDGE_JS_DUPLICATES, 1);
        }
        if (verdict == WSR_JSMERGE_DELIVER)
            s_deliver (self, self->nats_names, NULL, (const char *) zframe_data (subject),
                       zframe_size (subject), zframe_data (data), zframe_size (data));
    }
    zmsg_destroy (&msg);
}

//  --------------------------------------------------------------------------
//  Barriers (SYNC → SYNCED). The round trip is one that a backplane answers
//  in order with what it sends us: on Redis the reply to a SUBSCRIBE of a
//  channel no one publishes on (it follows every message Redis pushed to
//  this connection before, and every SUBSCRIBE we sent before is in force);
//  on NATS a message we publish on a subject we have just subscribed
//  (libnats delivers in order: one delivery thread, its default pool size,
//  never raised here). Once each backplane has answered, the deliveries
//  gathered this turn leave, then SYNCED: the peer has received everything
//  the backplane sent us before the barrier started.

static void
s_sync_destroy (void **item_p)
{
    free (*item_p);
    *item_p = NULL;
}

//  Send SYNCED to the barrier's peer (if it is still there).
static void
s_sync_answer (s_bridge_t *self, s_sync_t *sync)
{
    s_batches_flush (self);
    wsr_peer_t *peer = wsr_peers_lookup (self->peers, sync->rid, sync->rid_size, false, NULL);
    if (peer && s_send_head (self, peer, WSR_PROTO_SYNCED, true)) {
        uint8_t number [8];
        wsr_msgs_put_u64 (number, sync->token);
        zmq_send (zsock_resolve (self->nodes), number, 8, 0);
    }
}

//  A barrier channel confirmed (Redis) or a barrier message back (NATS).
static void
s_syncs_check (s_bridge_t *self, const char *redis_name, const char *nats_name)
{
    s_sync_t *sync = (s_sync_t *) zlistx_first (self->syncs);
    while (sync) {
        if (redis_name && streq (sync->redis_name, redis_name)) {
            wsr_redis_unsubscribe (self->redis, sync->redis_name);
            sync->redis_name [0] = 0;
        }
        if (nats_name && streq (sync->nats_name, nats_name)) {
            wsr_nats_unsubscribe (self->nats, sync->nats_name);
            sync->nats_name [0] = 0;
        }
        if (!sync->redis_name [0] && !sync->nats_name [0]) {
            s_sync_answer (self, sync);
            zlistx_delete (self->syncs, zlistx_cursor (self->syncs));
            sync = (s_sync_t *) zlistx_first (self->syncs);     //  from the start again
        }
        else
            sync = (s_sync_t *) zlistx_next (self->syncs);
    }
}

//  Barriers never answered (a backplane down): forgotten; the peer gives up.
static void
s_syncs_expire (s_bridge_t *self)
{
    int64_t now = wsr_util_mono_ms ();
    s_sync_t *sync = (s_sync_t *) zlistx_first (self->syncs);
    while (sync) {
        if (now >= sync->deadline) {
            if (sync->redis_name [0])
                wsr_redis_unsubscribe (self->redis, sync->redis_name);
            if (sync->nats_name [0])
                wsr_nats_unsubscribe (self->nats, sync->nats_name);
            zlistx_delete (self->syncs, zlistx_cursor (self->syncs));
            sync = (s_sync_t *) zlistx_first (self->syncs);
        }
        else
            sync = (s_sync_t *) zlistx_next (self->syncs);
    }
}

//  SYNC [token] from a peer.
static void
s_handle_sync (s_bridge_t *self, wsr_peer_t *peer, zframe_t *token)
{
    if (zframe_size (token) != 8) {
        wsr_metrics_add (self->metrics, WSR_M_BRIDGE_INVALID, 1);
        return;
    }
    s_sync_t *sync = (s_sync_t *) zmalloc (sizeof (s_sync_t));
    const uint8_t *rid = wsr_peer_rid (peer, &sync->rid_size);
    if (sync->rid_size > sizeof sync->rid)
        sync->rid_size = sizeof sync->rid;
    memcpy (sync->rid, rid, sync->rid_size);
    sync->token = wsr_msgs_get_u64 (zframe_data (token));
    sync->deadline = wsr_util_mono_ms () + S_SYNC_TTL_MS;
    char key [WSR_TOPIC_MAX];
    snprintf (key, sizeof key, S_SYNC_PREFIX "%016" PRIx64 "-%" PRIu64, self->epoch,
              ++self->sync_count);
    if (self->redis
    &&  wsr_naming_to_backplane (self->redis_names, key, sync->redis_name,
                                 sizeof sync->redis_name) <= 0)
        sync->redis_name [0] = 0;
    if (self->nats
    &&  wsr_naming_to_backplane (self->nats_names, key, sync->nats_name,
                                 sizeof sync->nats_name) <= 0)
        sync->nats_name [0] = 0;
    if (!sync->redis_name [0] && !sync->nats_name [0]) {
        //  No backplane: everything this bridge delivers came through it
        s_sync_answer (self, sync);
        free (sync);
        return;
    }
    zlistx_add_end (self->syncs, sync);
    if (sync->redis_name [0])
        wsr_redis_subscribe (self->redis, sync->redis_name);
    if (sync->nats_name [0]) {
        wsr_nats_subscribe (self->nats, sync->nats_name);
        wsr_nats_publish (self->nats, sync->nats_name, (const uint8_t *) "", 0);
    }
}

//  --------------------------------------------------------------------------
//  Subscriptions from peers

static void
s_backplane_subscribe (s_bridge_t *self, const char *topic, bool on)
{
    if (self->firehose)
        return;
    char name [WSR_TOPIC_MAX + 256];
    if (self->redis && wsr_naming_to_backplane (self->redis_names, topic, name, sizeof name) > 0) {
        if (on)
            wsr_redis_subscribe (self->redis, name);
        else {
            wsr_redis_unsubscribe (self->redis, name);
            if (self->hreads)
                wsr_hreads_unconfirmed (self->hreads, name);
        }
    }
    //  With a JetStream history stream too: its copy of a message usually
    //  comes second and is the one delivered, the core copy is there for
    //  when the stream stops (wsr_jsmerge)
    if (self->nats
    &&  wsr_naming_to_backplane (self->nats_names, topic, name, sizeof name) > 0) {
        if (on)
            wsr_nats_subscribe (self->nats, name);
        else
            wsr_nats_unsubscribe (self->nats, name);
    }
}

//  A topic lost its last peer.
static void
s_forget_last (void *arg, const char *topic)
{
    s_backplane_subscribe ((s_bridge_t *) arg, topic, false);
}

//  A topic key frame from a peer: "user:" or "channel:", a valid id, its NUL.
//  Returns the key (in the frame) or NULL.
static const char *
s_topic_valid (zframe_t *frame)
{
    size_t size = frame? zframe_size (frame): 0;
    const char *key = frame? (const char *) zframe_data (frame): NULL;
    if (size < 2 || size > WSR_TOPIC_MAX || key [size - 1] != 0 || strlen (key) != size - 1)
        return NULL;
    const char *id = NULL;
    if (strncmp (key, WSR_TOPIC_USER, strlen (WSR_TOPIC_USER)) == 0)
        id = key + strlen (WSR_TOPIC_USER);
    else
    if (strncmp (key, WSR_TOPIC_CHANNEL, strlen (WSR_TOPIC_CHANNEL)) == 0)
        id = key + strlen (WSR_TOPIC_CHANNEL);
    return id && wsr_util_id_valid (id, strlen (id))? key: NULL;
}

static void
s_refuse (s_bridge_t *self, wsr_peer_t *peer, zframe_t *topic, const char *reason)
{
    wsr_metrics_add (self->metrics, WSR_M_BRIDGE_SUB_REFUSED, 1);
    if (s_send_head (self, peer, WSR_PROTO_REFUSED, true)) {
        s_send_frame (self, topic, true);
        zmq_send (zsock_resolve (self->nodes), reason, strlen (reason), 0);
    }
}

//  SUB / UNSUB: every frame after the command is a topic key.
static void
s_handle_sub (s_bridge_t *self, wsr_peer_t *peer, zmsg_t *msg, bool on)
{
    if (zmsg_size (msg) < 1 || zmsg_size (msg) > WSR_PROTO_MAX_TOPICS) {
        wsr_metrics_add (self->metrics, WSR_M_BRIDGE_INVALID, 1);
        return;
    }
    for (zframe_t *frame = zmsg_first (msg); frame; frame = zmsg_next (msg)) {
        const char *key = s_topic_valid (frame);
        if (!key) {
            wsr_metrics_add (self->metrics, WSR_M_BRIDGE_INVALID, 1);
            if (on)
                s_refuse (self, peer, frame, "invalid topic");
            continue;
        }
        if (on) {
            bool first = false;
            wsr_peers_result_t result = wsr_peers_subscribe (self->peers, peer, key, &first);
            if (result == WSR_PEERS_REFUSED)
                s_refuse (self, peer, frame, "too many topics for this node");
            else
            if (first)
                s_backplane_subscribe (self, key, true);
        }
        else
        if (wsr_peers_unsubscribe (self->peers, peer, key))
            s_backplane_subscribe (self, key, false);
    }
}

//  --------------------------------------------------------------------------
//  From peers: client messages and API publishes

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

//  Where an HTTP reply goes: the sending peer's routing id in hex travels
//  with the request as its reply_to, the session id as its tag (a number
//  all the way).
static void
s_reply_address (wsr_peer_t *peer, char *out, size_t size)
{
    size_t rid_size = 0;
    const uint8_t *rid = wsr_peer_rid (peer, &rid_size);
    assert (size >= 2 * rid_size + 1);
    sodium_bin2hex (out, size, rid, rid_size);
}

static void
s_reply_error (s_bridge_t *self, const char *reply_to, uint64_t session, const char *error,
               int status)
{
    char text [256];
    int n = snprintf (text, sizeof text,
                      "{\"type\":\"error\",\"error\":\"upstream: %s\",\"status\":%d}",
                      error, status);
    s_reply_to_peer (self, reply_to, session, (const uint8_t *) text, (size_t) n);
    wsr_metrics_add (self->metrics, WSR_M_BRIDGE_HTTP_ERRORS, 1);
}

static void
s_on_http_done (void *arg, uint64_t session, const char *reply_to, int status,
                const char *error, const uint8_t *body, size_t body_size)
{
    s_bridge_t *self = (s_bridge_t *) arg;
    if (!reply_to || !*reply_to) {
        //  A lifecycle event's POST: no session waits for its answer, and it
        //  is not a client message's reply or error
        if (status < 200 || status >= 300)
            wsr_metrics_add (self->metrics, WSR_M_BRIDGE_EVENTS_LOST, 1);
        return;
    }
    if (status >= 200 && status < 300) {
        if (body_size > 0) {
            s_reply_to_peer (self, reply_to, session, body, body_size);
            wsr_metrics_add (self->metrics, WSR_M_BRIDGE_REPLIES, 1);
        }
    }
    else
        s_reply_error (self, reply_to, session, error? error: "backend error", status);
}

//  UP [upstream envelope]: a client message to every upstream there is.
static void
s_handle_up (s_bridge_t *self, wsr_peer_t *peer, zframe_t *body)
{
    wsr_envelope_t env;
    char user [WSR_MAX_ID_LEN + 1];
    if (!body || wsr_envelope_decode (zframe_data (body), zframe_size (body), &env)
    ||  !env.user || !env.node || env.user_len > WSR_MAX_ID_LEN
    ||  !wsr_util_id_valid (env.user, env.user_len) || env.size > self->max_message) {
        wsr_metrics_add (self->metrics, WSR_M_BRIDGE_INVALID, 1);
        return;
    }
    memcpy (user, env.user, env.user_len);
    user [env.user_len] = 0;
    if (self->observer) {
        //  Observers (best effort, PUB): [up:USER\0][envelope]
        char key [WSR_TOPIC_MAX];
        int key_size = wsr_topic_key (key, sizeof key, WSR_TOPIC_UPSTREAM, user);
        assert (key_size > 0);
        zmq_send (zsock_resolve (self->observer), key, (size_t) key_size, ZMQ_SNDMORE);
        zframe_send (&body, self->observer, ZFRAME_REUSE);
    }
    char name [WSR_TOPIC_MAX + 256];
    bool sent = self->observer != NULL, lost = false;
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
    char reply_to [2 * 255 + 1];
    s_reply_address (peer, reply_to, sizeof reply_to);
    if (self->http) {
        char *json = s_http_body (&env);
        if (wsr_upstream_http_submit (self->http, env.session, reply_to,
                                      "application/json", (const uint8_t *) json,
                                      strlen (json)) == 0)
            sent = true;
        else {
            lost = true;
            s_reply_error (self, reply_to, env.session, "busy, message dropped", 503);
        }
        free (json);
    }
    if (sent)
        wsr_metrics_add (self->metrics, WSR_M_BRIDGE_UPSTREAM_SENT, 1);
    if (lost)
        wsr_metrics_add (self->metrics, WSR_M_BRIDGE_UPSTREAM_LOST, 1);
    if (lost && !sent && !self->http)
        //  Nowhere to go: the client hears about it
        s_reply_to_peer (self, reply_to, env.session,
                         (const uint8_t *) WSR_ERROR_BACKPLANE_DOWN,
                         strlen (WSR_ERROR_BACKPLANE_DOWN));
}

//  A history append Redis did not confirm: the message may be lost.
static void
s_on_appended (void *arg, int status, uint64_t offset, const char *epoch)
{
    (void) offset;
    (void) epoch;
    if (status)
        wsr_metrics_add (((s_bridge_t *) arg)->metrics, WSR_M_BRIDGE_PUBLISH_LOST, 1);
}

//  PUB [topic][downstream envelope], deferred to the end of the batch so a
//  subscription that arrived in the same batch is in place first.
static void
s_handle_publish (s_bridge_t *self, zmsg_t *msg)
{
    zframe_t *topic = zmsg_first (msg);
    zframe_t *body = zmsg_next (msg);
    const char *key = s_topic_valid (topic);
    wsr_envelope_t env;
    if (!key || !body || wsr_envelope_decode (zframe_data (body), zframe_size (body), &env)
    ||  env.size > self->max_message) {
        wsr_metrics_add (self->metrics, WSR_M_BRIDGE_INVALID, 1);
        return;
    }
    char name [WSR_TOPIC_MAX + 256];
    int rc = 0;
    if (self->history && wsr_naming_to_backplane (self->redis_names, key, name, sizeof name) > 0)
        //  Through the history: stored with an offset, then published framed
        rc = wsr_history_append (self->history, name, env.data, env.size, s_on_appended,
                                 self);
    else
    if (self->redis && wsr_naming_to_backplane (self->redis_names, key, name, sizeof name) > 0)
        rc = wsr_redis_publish (self->redis, name, env.data, env.size);
    else
    if (self->nats && wsr_naming_to_backplane (self->nats_names, key, name, sizeof name) > 0)
        rc = wsr_nats_publish (self->nats, name, env.data, env.size);
    else
        //  No backplane: the bridge is the fan-out point for all its nodes
        s_fan_out (self, key, zframe_size (topic), body);
    if (rc)
        wsr_metrics_add (self->metrics, WSR_M_BRIDGE_PUBLISH_LOST, 1);
}

//  --------------------------------------------------------------------------
//  Session lifecycle: events published, presence kept

//  A template's {user_id} replaced by user (a valid id).
static void
s_user_name (const char *template, const char *user, char *out, size_t size)
{
    const char *place = strstr (template, "{user_id}");
    if (!place)
        snprintf (out, size, "%s", template);
    else
        snprintf (out, size, "%.*s%s%s", (int) (place - template), template, user,
                  place + strlen ("{user_id}"));
}

//  The event's JSON, published on Redis ws:events:USER, NATS
//  client.events.USER and POSTed to the HTTP backend.
static void
s_publish_event (s_bridge_t *self, const char *type, const char *node, uint64_t session,
                 const char *user, const char *channels, int64_t since_ms, int code,
                 const char *reason, int64_t duration_ms)
{
    if (!self->redis && !self->nats && !self->http) {
        //  No backplane to tell: counted as lost, without building the JSON
        wsr_metrics_add (self->metrics, WSR_M_BRIDGE_EVENTS_LOST, 1);
        return;
    }
    json_t *event = json_object ();
    json_object_set_new (event, "type", json_string (type));
    json_object_set_new (event, "user", json_string (user));
    char id [24];
    snprintf (id, sizeof id, "%" PRIu64, session);
    json_object_set_new (event, "session", json_string (id));
    json_object_set_new (event, "node", json_string (node));
    json_t *list = json_array ();
    char copy [WSR_MAX_CHANNELS * (WSR_MAX_ID_LEN + 1) + 1];
    snprintf (copy, sizeof copy, "%s", channels);
    char *saveptr = NULL;
    for (char *c = strtok_r (copy, ",", &saveptr); c; c = strtok_r (NULL, ",", &saveptr))
        json_array_append_new (list, json_string (c));
    json_object_set_new (event, "channels", list);
    json_object_set_new (event, "since", json_integer (since_ms));
    json_object_set_new (event, "ts", json_integer (wsr_util_now_us () / 1000));
    if (streq (type, "disconnect")) {
        json_object_set_new (event, "code", json_integer (code));
        json_object_set_new (event, "reason", json_string (reason));
        json_object_set_new (event, "duration_ms", json_integer (duration_ms));
    }
    char *text = json_dumps (event, JSON_COMPACT);
    json_decref (event);
    char name [WSR_TOPIC_MAX + 256];
    bool sent = false;
    if (self->redis) {
        s_user_name (self->redis_events, user, name, sizeof name);
        sent |= wsr_redis_publish (self->redis, name, (const uint8_t *) text, strlen (text)) == 0;
    }
    if (self->nats) {
        s_user_name (self->nats_events, user, name, sizeof name);
        sent |= wsr_nats_publish (self->nats, name, (const uint8_t *) text, strlen (text)) == 0;
    }
    if (self->http) {
        //  POSTed like client messages, told apart by "event"; the answer
        //  goes nowhere (tag 0, no peer)
        json_t *body = json_loads (text, 0, NULL);
        json_object_set (body, "event", json_object_get (body, "type"));
        json_object_del (body, "type");
        char *post = json_dumps (body, JSON_COMPACT);
        json_decref (body);
        sent |= wsr_upstream_http_submit (self->http, 0, "", "application/json",
                                          (const uint8_t *) post, strlen (post)) == 0;
        free (post);
    }
    wsr_metrics_add (self->metrics, sent? WSR_M_BRIDGE_EVENTS: WSR_M_BRIDGE_EVENTS_LOST, 1);
    free (text);
}

//  EVENT from a worker.
static void
s_handle_event (s_bridge_t *self, wsr_peer_t *peer, zmsg_t *msg)
{
    char *type = zmsg_popstr (msg);
    zframe_t *session = zmsg_pop (msg);
    char *user = zmsg_popstr (msg);
    char *channels = zmsg_popstr (msg);
    zframe_t *since = zmsg_pop (msg);
    zframe_t *code = zmsg_pop (msg);
    char *reason = zmsg_popstr (msg);
    zframe_t *duration = zmsg_pop (msg);
    const char *node = wsr_peer_node (peer);
    bool connect = type && streq (type, "connect");
    if (!node || !type || (!connect && !streq (type, "disconnect"))
    ||  !user || !wsr_util_id_valid (user, strlen (user)) || !channels || !reason
    ||  strlen (channels) > WSR_MAX_CHANNELS * (WSR_MAX_ID_LEN + 1) || strchr (channels, ' ')
    ||  zframe_size (session) != 8 || zframe_size (since) != 8 || zframe_size (code) != 8
    ||  zframe_size (duration) != 8)
        wsr_metrics_add (self->metrics, WSR_M_BRIDGE_INVALID, 1);
    else
    if (self->events) {
        uint64_t id = wsr_msgs_get_u64 (zframe_data (session));
        int64_t since_ms = (int64_t) wsr_msgs_get_u64 (zframe_data (since));
        if (self->presence) {
            int rc;
            if (connect) {
                char info [1024];
                snprintf (info, sizeof info, "{\"session\":\"%" PRIu64 "\",\"user\":\"%s\","
                          "\"node\":\"%s\",\"since\":%" PRId64 ",\"channels\":\"%s\"}",
                          id, user, node, since_ms, channels);
                rc = wsr_presence_connect (self->presence, node, id, user, channels, since_ms,
                                           info);
            }
            else
                rc = wsr_presence_disconnect (self->presence, node, id, user, channels,
                                              since_ms);
            if (rc)
                wsr_metrics_add (self->metrics, WSR_M_BRIDGE_PRESENCE_LOST, 1);
        }
        s_publish_event (self, type, node, id, user, channels, since_ms,
                         (int) wsr_msgs_get_u64 (zframe_data (code)), reason,
                         (int64_t) wsr_msgs_get_u64 (zframe_data (duration)));
    }
    zstr_free (&type);
    zstr_free (&user);
    zstr_free (&channels);
    zstr_free (&reason);
    zframe_destroy (&session);
    zframe_destroy (&since);
    zframe_destroy (&code);
    zframe_destroy (&duration);
}

//  A session of a node that stopped without a word: its disconnect event.
static void
s_on_lost (void *arg, const char *node, uint64_t session, const char *user, const char *channels,
           int64_t since_ms)
{
    s_bridge_t *self = (s_bridge_t *) arg;
    int64_t now = wsr_util_now_us () / 1000;
    s_publish_event (self, "disconnect", node, session, user, channels, since_ms, 1006,
                     "node lost", now - since_ms);
}

typedef struct {
    s_bridge_t *bridge;
    uint8_t rid [255];
    size_t rid_size;
    uint64_t request;
    bool channel;
    char id [WSR_MAX_ID_LEN + 1];
} s_query_t;

//  PRESENCER [request][status][JSON] back to the peer that asked.
static void
s_presence_answer (s_bridge_t *self, const uint8_t *rid, size_t rid_size, uint64_t request,
                   int status, const char *json)
{
    wsr_peer_t *peer = wsr_peers_lookup (self->peers, rid, rid_size, false, NULL);
    if (peer && s_send_head (self, peer, WSR_PROTO_PRESENCER, true)) {
        uint8_t number [8];
        wsr_msgs_put_u64 (number, request);
        zmq_send (zsock_resolve (self->nodes), number, 8, ZMQ_SNDMORE);
        wsr_msgs_put_u64 (number, (uint64_t) status);
        zmq_send (zsock_resolve (self->nodes), number, 8, ZMQ_SNDMORE);
        zmq_send (zsock_resolve (self->nodes), json, strlen (json), 0);
    }
}

static void
s_on_query (void *arg, int status, size_t total, const char *const *infos, size_t count)
{
    s_query_t *query = (s_query_t *) arg;
    if (status) {
        s_presence_answer (query->bridge, query->rid, query->rid_size, query->request, 503,
                           "{\"error\":\"presence store unavailable\"}");
        free (query);
        return;
    }
    json_t *answer = json_object ();
    json_object_set_new (answer, query->channel? "channel": "user", json_string (query->id));
    json_t *list = json_array ();
    for (size_t i = 0; i < count; i++) {
        json_t *info = json_loads (infos [i], 0, NULL);
        if (info) {
            //  Stored as text: the channels back into an array
            const char *csv = json_string_value (json_object_get (info, "channels"));
            json_t *channels = json_array ();
            if (csv) {
                char copy [WSR_MAX_CHANNELS * (WSR_MAX_ID_LEN + 1) + 1];
                snprintf (copy, sizeof copy, "%s", csv);
                char *saveptr = NULL;
                for (char *c = strtok_r (copy, ",", &saveptr); c;
                     c = strtok_r (NULL, ",", &saveptr))
                    json_array_append_new (channels, json_string (c));
            }
            json_object_set_new (info, "channels", channels);
            json_array_append_new (list, info);
        }
    }
    if (query->channel) {
        json_object_set_new (answer, "count", json_integer ((json_int_t) total));
        json_object_set_new (answer, "members", list);
    }
    else
        json_object_set_new (answer, "sessions", list);
    char *text = json_dumps (answer, JSON_COMPACT);
    json_decref (answer);
    s_presence_answer (query->bridge, query->rid, query->rid_size, query->request, 200, text);
    free (text);
    free (query);
}

//  PRESENCE [request][kind][id][limit] from a node.
static void
s_handle_presence (s_bridge_t *self, wsr_peer_t *peer, zmsg_t *msg)
{
    zframe_t *request = zmsg_pop (msg);
    char *kind = zmsg_popstr (msg);
    char *id = zmsg_popstr (msg);
    zframe_t *limit = zmsg_pop (msg);
    size_t rid_size = 0;
    const uint8_t *rid = wsr_peer_rid (peer, &rid_size);
    if (zframe_size (request) != 8 || zframe_size (limit) != 8 || !kind || !id
    ||  !wsr_util_id_valid (id, strlen (id))
    ||  (!streq (kind, "user") && !streq (kind, "channel")))
        wsr_metrics_add (self->metrics, WSR_M_BRIDGE_INVALID, 1);
    else {
        uint64_t number = wsr_msgs_get_u64 (zframe_data (request));
        s_query_t *query = (s_query_t *) zmalloc (sizeof (s_query_t));
        query->bridge = self;
        memcpy (query->rid, rid, rid_size);
        query->rid_size = rid_size;
        query->request = number;
        query->channel = streq (kind, "channel");
        snprintf (query->id, sizeof query->id, "%s", id);
        uint64_t max = wsr_msgs_get_u64 (zframe_data (limit));
        int rc = !self->presence? -1
               : query->channel
               ? wsr_presence_channel (self->presence, id, max > 10000? 10000: (size_t) max,
                                       s_on_query, query)
               : wsr_presence_user (self->presence, id, s_on_query, query);
        if (rc) {
            s_presence_answer (self, rid, rid_size, number, 503, self->presence
                ? "{\"error\":\"presence store unavailable\"}"
                : "{\"error\":\"presence needs Redis (WEBSOCKET_REDIS_URL)\"}");
            free (query);
        }
    }
    zframe_destroy (&request);
    zstr_free (&kind);
    zstr_free (&id);
    zframe_destroy (&limit);
}

//  Every WSR_PRESENCE_BEAT_MS: the nodes heard from lately are alive.
static void
s_presence_beat (s_bridge_t *self)
{
    const char *nodes [256];
    size_t count = 0;
    int64_t now = wsr_util_mono_ms ();
    for (wsr_peer_t *peer = wsr_peers_first (self->peers); peer && count < 256;
         peer = wsr_peers_next (self->peers)) {
        const char *node = wsr_peer_node (peer);
        if (!node || now - wsr_peer_last_seen (peer) > 2 * WSR_PROTO_PING_MS)
            continue;
        bool known = false;
        for (size_t i = 0; i < count && !known; i++)
            known = streq (nodes [i], node);
        if (!known)
            nodes [count++] = node;
    }
    wsr_presence_beat (self->presence, nodes, count);
    wsr_presence_reap (self->presence, s_on_lost, self);
}

static void s_beat (s_bridge_t *self, wsr_peer_t *peer);

//  HISTR to the peer that asked.
static void
s_on_hist_result (void *arg, const uint8_t *rid, size_t rid_size, uint64_t request,
                  zframe_t **result_p)
{
    s_bridge_t *self = (s_bridge_t *) arg;
    wsr_peer_t *peer = wsr_peers_lookup (self->peers, rid, rid_size, false, NULL);
    if (peer && s_send_head (self, peer, WSR_PROTO_HISTR, true)) {
        uint8_t number [8];
        wsr_msgs_put_u64 (number, request);
        zmq_send (zsock_resolve (self->nodes), number, sizeof number, ZMQ_SNDMORE);
        s_send_frame (self, *result_p, false);
    }
}

//  HIST [request][topic][epoch][since][max]: a read of a topic's history.
static void
s_handle_hist (s_bridge_t *self, wsr_peer_t *peer, zmsg_t *msg)
{
    zframe_t *request = zmsg_first (msg);
    zframe_t *topic = zmsg_next (msg);
    zframe_t *epoch = zmsg_next (msg);
    zframe_t *since = zmsg_next (msg);
    zframe_t *max = zmsg_next (msg);
    const char *key = s_topic_valid (topic);
    char epoch_text [WSR_HISTORY_EPOCH_MAX + 1];
    size_t rid_size = 0;
    const uint8_t *rid = wsr_peer_rid (peer, &rid_size);
    if (!key || zframe_size (request) != 8 || zframe_size (since) != 8
    ||  zframe_size (max) != 8 || zframe_size (epoch) > WSR_HISTORY_EPOCH_MAX) {
        wsr_metrics_add (self->metrics, WSR_M_BRIDGE_INVALID, 1);
        return;
    }
    memcpy (epoch_text, zframe_data (epoch), zframe_size (epoch));
    epoch_text [zframe_size (epoch)] = 0;
    uint64_t id = wsr_msgs_get_u64 (zframe_data (request));
    uint64_t count = wsr_msgs_get_u64 (zframe_data (max));
    if (wsr_hreads_request (self->hreads, rid, rid_size, id, key, epoch_text,
                            wsr_msgs_get_u64 (zframe_data (since)),
                            count > WSR_HISTORY_MAX_READ? WSR_HISTORY_MAX_READ: (size_t) count)) {
        //  Too many reads waiting: a failed result, so the session does not wait
        wsr_history_result_t failed = { -1, "", 0, false, NULL, 0 };
        zframe_t *frame = wsr_envelope_encode_history (&failed);
        s_on_hist_result (self, rid, rid_size, id, &frame);
        zframe_destroy (&frame);
        wsr_metrics_add (self->metrics, WSR_M_BRIDGE_HISTORY_REFUSED, 1);
    }
}

//  One message from a peer: [rid][command][frames...].
static void
s_handle_peer (s_bridge_t *self)
{
    zmsg_t *msg = zmsg_recv (self->nodes);
    if (!msg)
        return;
    zframe_t *rid = zmsg_pop (msg);
    char *command = zmsg_popstr (msg);
    bool created = false;
    wsr_peer_t *peer = rid && command?
        wsr_peers_lookup (self->peers, zframe_data (rid), zframe_size (rid), true, &created):
        NULL;
    if (!peer) {
        //  Malformed, or the table is full: nothing is kept for it
        wsr_metrics_add (self->metrics, WSR_M_BRIDGE_INVALID, 1);
        goto done;
    }
    wsr_peers_touch (peer, wsr_util_mono_ms ());
    if (streq (command, WSR_PROTO_HELLO)) {
        char *version = zmsg_popstr (msg), *node = zmsg_popstr (msg),
             *role = zmsg_popstr (msg), *index = zmsg_popstr (msg);
        if (index && streq (version, WSR_PROTO_VERSION)
        &&  wsr_util_id_valid (node, strlen (node))
        &&  (streq (role, WSR_ROLE_WORKER) || streq (role, WSR_ROLE_ROUTER))) {
            wsr_peers_hello (self->peers, peer, node, role, atoi (index));
            s_beat (self, peer);
        }
        else {
            zsys_warning ("bridge: a peer said a HELLO we do not understand (version %s)",
                          version? version: "?");
            wsr_metrics_add (self->metrics, WSR_M_BRIDGE_INVALID, 1);
        }
        zstr_free (&version);
        zstr_free (&node);
        zstr_free (&role);
        zstr_free (&index);
        created = false;            //  no RESYNC: it is saying who it is
    }
    else
    if (streq (command, WSR_PROTO_SUB))
        s_handle_sub (self, peer, msg, true);
    else
    if (streq (command, WSR_PROTO_UNSUB))
        s_handle_sub (self, peer, msg, false);
    else
    if (streq (command, WSR_PROTO_UP) && zmsg_size (msg) == 1)
        s_handle_up (self, peer, zmsg_first (msg));
    else
    if (streq (command, WSR_PROTO_PUB) && zmsg_size (msg) == 2) {
        zlistx_add_end (self->deferred, msg);
        msg = NULL;
    }
    else
    if (streq (command, WSR_PROTO_HIST) && zmsg_size (msg) == 5)
        s_handle_hist (self, peer, msg);
    else
    if (streq (command, WSR_PROTO_EVENT) && zmsg_size (msg) == 8)
        s_handle_event (self, peer, msg);
    else
    if (streq (command, WSR_PROTO_PRESENCE) && zmsg_size (msg) == 4)
        s_handle_presence (self, peer, msg);
    else
    if (streq (command, WSR_PROTO_SYNC) && zmsg_size (msg) == 1)
        s_handle_sync (self, peer, zmsg_first (msg));
    else
    if (streq (command, WSR_PROTO_PING))
        ;
    else
    if (streq (command, WSR_PROTO_BYE)) {
        wsr_peers_remove (self->peers, &peer, s_forget_last, self);
        created = false;
        //  Answered, so a link that comes back to us after a silence knows
        //  where our deliveries for its old session end (a peer that left
        //  is gone: the send fails, nothing to count)
        void *sock = zsock_resolve (self->nodes);
        if (zmq_send (sock, zframe_data (rid), zframe_size (rid),
                      ZMQ_SNDMORE | ZMQ_DONTWAIT) != -1)
            zmq_send (sock, WSR_PROTO_BYE, strlen (WSR_PROTO_BYE), 0);
    }
    else
        wsr_metrics_add (self->metrics, WSR_M_BRIDGE_INVALID, 1);
    if (created)
        s_send_resync (self, peer);
done:
    zframe_destroy (&rid);
    zstr_free (&command);
    zmsg_destroy (&msg);
}

//  --------------------------------------------------------------------------
//  NATS history

//  The NATS history stream over the user and channel subjects; its live
//  consumer feeds js_live. Set up once; made again on the link's current
//  connection when libnats had to start over (s_jetstream_follow).
static void
s_jetstream_start (s_bridge_t *self, const wsr_bridge_opts_t *opts, int instance)
{
    snprintf (self->js_endpoint, sizeof self->js_endpoint, "inproc://wsr-bridge-js-%d",
              instance);
    self->js_live = zsock_new_pull (self->js_endpoint);
    snprintf (self->js_names [0], sizeof self->js_names [0], "%s", opts->nats_history_stream);
    wsr_naming_pattern (self->nats_names, WSR_TOPIC_USER, true, self->js_names [1],
                        sizeof self->js_names [1]);
    wsr_naming_pattern (self->nats_names, WSR_TOPIC_CHANNEL, true, self->js_names [2],
                        sizeof self->js_names [2]);
    self->js_config = (wsr_jetstream_config_t) {
        .stream = self->js_names [0],
        .subjects = { self->js_names [1], self->js_names [2], NULL },
        .create = true,
        .size = (int64_t) (opts->history_size? opts->history_size: WSR_HISTORY_DEFAULT_SIZE),
        .ttl_s = opts->history_ttl_s > 0? opts->history_ttl_s: WSR_HISTORY_DEFAULT_TTL_S,
        .replicas = opts->nats_history_replicas > 0? opts->nats_history_replicas: 1
    };
    self->jsmerge = wsr_jsmerge_new (0);
    if (!self->js_live || !self->jsmerge) {
        zsys_error ("bridge: cannot bind %s", self->js_endpoint);
        self->status = -1;
    }
}

//  Make the stream object on the link's current connection (none yet, or a
//  new one after libnats started over); reads in flight on the old one fail.
static void
s_jetstream_follow (s_bridge_t *self)
{
    void *conn = wsr_nats_connection (self->nats);
    //  A reconnect (in a cluster: maybe to another server, the live
    //  consumers lost with the old one) makes them again too: libnats'
    //  ordered consumers may take long to notice, or never
    uint64_t connects = wsr_nats_connects (self->nats);
    bool moved = self->jetstream && connects != self->js_connects;
    if (conn == self->js_conn && !moved)
        return;
    if (moved)
        zsys_info ("bridge: NATS reconnected: JetStream live consumers made again");
    self->js_connects = connects;
    if (self->hreads)
        wsr_hreads_set_stores (self->hreads, self->history, NULL);
    wsr_jetstream_destroy (&self->jetstream);
    self->js_conn = conn;
    if (conn) {
        //  After what this bridge saw (config.subjects: users, then channels)
        self->js_config.resume [0] = self->js_last [0];
        self->js_config.resume [1] = self->js_last [1];
        snprintf (self->js_config.resume_epoch, sizeof self->js_config.resume_epoch, "%s",
                  self->js_epoch);
        self->jetstream = wsr_jetstream_new ((natsConnection *) conn, &self->js_config,
                                             self->js_endpoint);
        if (!self->jetstream)
            zsys_error ("bridge: the NATS history stream '%s' cannot be set up",
                        self->js_config.stream);
    }
    if (self->hreads)
        wsr_hreads_set_stores (self->hreads, self->history, self->jetstream);
}

//  --------------------------------------------------------------------------
//  Health

static int
s_state (bool configured, bool up)
{
    return !configured? -1: up? 1: 0;
}

static void
s_gauge (wsr_metrics_t *m, wsr_metric_t which, int64_t value)
{
    wsr_metrics_add (m, which, value - wsr_metrics_get (m, which));
}

//  HB [epoch][{v, r, n}] to one peer: every WSR_PROTO_HB_MS, and at once
//  after its HELLO so a new node is ready without waiting.
static void
s_beat (s_bridge_t *self, wsr_peer_t *peer)
{
    bool redis_up = self->redis && wsr_redis_connected (self->redis);
    bool nats_up = self->nats && wsr_nats_connected (self->nats);
    if (s_send_head (self, peer, WSR_PROTO_HB, true)) {
        uint8_t epoch [8];
        wsr_msgs_put_u64 (epoch, self->epoch);
        zmq_send (zsock_resolve (self->nodes), epoch, sizeof epoch, ZMQ_SNDMORE);
        zframe_t *beat = wsr_envelope_encode_heartbeat (s_state (self->redis, redis_up),
                                                        s_state (self->nats, nats_up));
        s_send_frame (self, beat, false);
        zframe_destroy (&beat);
    }
}

//  Every WSR_PROTO_HB_MS: a heartbeat to every peer, forget the silent
//  ones, refresh the gauges.
static void
s_heartbeat (s_bridge_t *self)
{
    if (self->js_live)
        s_jetstream_follow (self);
    if (self->hreads) {
        bool redis_up = self->redis && wsr_redis_connected (self->redis);
        if (self->redis_was_up && !redis_up)
            wsr_hreads_unconfirmed (self->hreads, NULL);    //  resubscribed on reconnect
        self->redis_was_up = redis_up;
        wsr_hreads_tick (self->hreads);
    }
    wsr_peers_expire (self->peers, wsr_util_mono_ms (), WSR_PROTO_PEER_TTL_MS, s_forget_last,
                      self);
    s_syncs_expire (self);
    bool redis_up = self->redis && wsr_redis_connected (self->redis);
    bool nats_up = self->nats && wsr_nats_connected (self->nats);
    wsr_metrics_t *m = self->metrics;
    s_gauge (m, WSR_M_REDIS_UP, redis_up? 1: 0);
    s_gauge (m, WSR_M_NATS_UP, nats_up? 1: 0);
    s_gauge (m, WSR_M_BRIDGE_TOPICS, (int64_t) wsr_peers_topics (self->peers));
    s_gauge (m, WSR_M_BRIDGE_PEERS, (int64_t) wsr_peers_size (self->peers));
    if (self->nats) {
        uint64_t dropped = 0, slow = 0;
        wsr_nats_take_drops (self->nats, &dropped, &slow);
        wsr_metrics_add (m, WSR_M_BRIDGE_NATS_DROPS, (int64_t) dropped);
        wsr_metrics_add (m, WSR_M_BRIDGE_NATS_SLOW, (int64_t) slow);
        wsr_nats_process (self->nats);
        wsr_metrics_add (m, WSR_M_BRIDGE_NATS_REFUSED,
                         (int64_t) wsr_nats_take_refusals (self->nats));
    }
    if (self->redis) {
        wsr_metrics_add (m, WSR_M_BRIDGE_REDIS_RECONNECTS,
                         (int64_t) wsr_redis_take_reconnects (self->redis));
        wsr_metrics_add (m, WSR_M_BRIDGE_REDIS_REFUSED,
                         (int64_t) wsr_redis_take_refusals (self->redis));
    }
    if (self->readiness)
        s_gauge (m, WSR_M_BACKPLANE_UP,
                 (!self->redis || redis_up) && (!self->nats || nats_up)? 1: 0);
    for (wsr_peer_t *peer = wsr_peers_first (self->peers); peer;
         peer = wsr_peers_next (self->peers))
        s_beat (self, peer);
}

//  A failed CURVE handshake on the nodes' socket: a plaintext peer, or one
//  whose key was refused (then wsr_zap has counted and logged it already).
static void
s_handle_monitor (s_bridge_t *self)
{
    zmsg_t *event = zmsg_recv (self->monitor);
    if (!event)
        return;
    zframe_t *head = zmsg_first (event);
    zframe_t *address = zmsg_next (event);
    if (head && zframe_size (head) >= 2 && address) {
        uint16_t kind = *(uint16_t *) zframe_data (head);
        if (kind != ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) {
            char text [256];
            snprintf (text, sizeof text, "%.*s", (int) zframe_size (address),
                      (const char *) zframe_data (address));
            wsr_zap_deny (self->zap, text, "CURVE handshake failed (plaintext peer?)");
        }
    }
    zmsg_destroy (&event);
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
    if (streq (command, WSR_CMD_START)) {
        int sent = zsock_send (self->pipe, "i", self->status);
        assert (sent == 0);
    }
    else
    if (streq (command, WSR_CMD_RELOAD)) {
        int sent = zsock_send (self->pipe, "i", self->zap? wsr_zap_reload (self->zap): 0);
        assert (sent == 0);
    }
    else
    if (streq (command, WSR_CMD_PEERS)) {
        int sent = zsock_send (self->pipe, "88", (uint64_t) wsr_peers_size (self->peers),
                               (uint64_t) wsr_peers_topics (self->peers));
        assert (sent == 0);
    }
    else
        assert (false);
    zstr_free (&command);
}

static zsock_t *
s_bind (s_bridge_t *self, int type, const char *endpoint, const wsr_bridge_opts_t *opts)
{
    zsock_t *sock = zsock_new (type);
    assert (sock);
    zsock_set_sndhwm (sock, opts->peer_hwm > 0? opts->peer_hwm: WSR_PROTO_PEER_QUEUE);
    zsock_set_rcvhwm (sock, WSR_HWM);
    zsock_set_sndtimeo (sock, 0);
    zsock_set_linger (sock, 0);
    if (type == ZMQ_ROUTER)
        //  A send to a full or vanished peer fails (and is counted) instead
        //  of vanishing silently or blocking the others
        zsock_set_router_mandatory (sock, 1);
    //  Find dead connections quickly
    zsock_set_heartbeat_ivl (sock, 1000);
    zsock_set_heartbeat_timeout (sock, 3000);
    bool keyed = opts->cert != NULL;
    if (wsr_curve_check ("bridge", endpoint, keyed, opts->insecure_plaintext)
    ||  (keyed && wsr_curve_server (sock, opts->cert))) {
        self->status = -1;
        return sock;
    }
    if (zsock_bind (sock, "%s", endpoint) == -1) {
        zsys_error ("bridge: cannot bind %s: %s", endpoint, zmq_strerror (zmq_errno ()));
        self->status = -1;
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
    self->peers = wsr_peers_new (WSR_BRIDGE_MAX_PEERS, opts->max_topics);
    self->deferred = zlistx_new ();
    zlistx_set_destructor (self->deferred, (czmq_destructor *) zmsg_destroy);
    self->syncs = zlistx_new ();
    zlistx_set_destructor (self->syncs, s_sync_destroy);
    randombytes_buf (&self->epoch, sizeof self->epoch);
    pthread_setname_np (pthread_self (), "wsr-bridge");

    static _Atomic int instances = 0;       //  unique inproc names per bridge in this process
    int instance = atomic_fetch_add (&instances, 1);
    if (opts->cert) {
        if (!opts->clients) {
            zsys_error ("bridge: a certificate needs a clients directory (--clients)");
            self->status = -1;
        }
        else
        if (!(self->zap = wsr_zap_new (opts->clients, self->metrics)))
            self->status = -1;
    }
    if (self->status == 0)
        self->nodes = s_bind (self, ZMQ_ROUTER, opts->endpoint, opts);
    if (self->status == 0 && self->zap) {
        char monitor [64];
        snprintf (monitor, sizeof monitor, "inproc://wsr-bridge-mon-%d", instance);
        int rc = zmq_socket_monitor (zsock_resolve (self->nodes), monitor,
                                     ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL
                                     | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL
                                     | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH);
        self->monitor = rc == 0? zsock_new_pair (monitor): NULL;
        if (!self->monitor)
            self->status = -1;
    }
    if (self->status == 0 && opts->upstream_endpoint)
        self->observer = s_bind (self, ZMQ_PUB, opts->upstream_endpoint, opts);
    char nats_in [64];
    snprintf (nats_in, sizeof nats_in, "inproc://wsr-bridge-nats-%d", instance);
    self->nats_in = zsock_new_pull (nats_in);
    if (!self->nats_in)
        self->status = -1;
    self->redis_names = wsr_naming_new (opts->redis_user, opts->redis_channel,
                                        opts->redis_actions);
    self->nats_names = wsr_naming_new (opts->nats_user, opts->nats_channel, opts->nats_actions);
    if (!self->redis_names || !self->nats_names) {
        zsys_error ("bridge: a channel or subject template lacks its placeholder");
        self->status = -1;
    }
    //  No valid id may turn one template's name into another's (user
    //  "channel.lobby" receiving the lobby channel): checked per backplane used
    char overlap [1024];
    if (self->status == 0 && opts->redis_url
    &&  wsr_naming_check (self->redis_names, overlap, sizeof overlap)) {
        zsys_error ("bridge: Redis channel names: %s", overlap);
        self->status = -1;
    }
    if (self->status == 0 && opts->nats_url
    &&  wsr_naming_check (self->nats_names, overlap, sizeof overlap)) {
        zsys_error ("bridge: NATS subjects: %s", overlap);
        self->status = -1;
    }
    //  Lifecycle events must not land on a name a client subscribes or
    //  publishes to (a user "events.bob" reading bob's connects)
    const char *templates [2][4] = {
        { opts->redis_events, opts->redis_user, opts->redis_channel, opts->redis_actions },
        { opts->nats_events, opts->nats_user, opts->nats_channel, opts->nats_actions }
    };
    for (int k = 0; k < 2 && self->status == 0 && opts->events; k++) {
        if (!(k == 0? opts->redis_url: opts->nats_url))
            continue;
        if (!strstr (templates [k][0], "{user_id}")) {
            zsys_error ("bridge: the events name %s lacks {user_id}", templates [k][0]);
            self->status = -1;
        }
        for (int i = 1; i < 4 && self->status == 0; i++)
            if (wsr_naming_overlap (templates [k][0], templates [k][i], overlap,
                                    sizeof overlap)) {
                zsys_error ("bridge: the events name %s overlaps %s (e.g. %s)",
                            templates [k][0], templates [k][i], overlap);
                self->status = -1;
            }
    }
    char redis_shown [WSR_URL_MAX], nats_shown [WSR_URL_MAX], http_shown [WSR_URL_MAX];
    wsr_util_redact_url (opts->redis_url? opts->redis_url: "off", redis_shown,
                         sizeof redis_shown);
    wsr_util_redact_url (opts->nats_url? opts->nats_url: "off", nats_shown, sizeof nats_shown);
    wsr_util_redact_url (opts->upstream_url? opts->upstream_url: "off", http_shown,
                         sizeof http_shown);
    if (self->status == 0 && opts->redis_url) {
        self->redis = wsr_redis_new (opts->redis_url, s_on_redis, self);
        if (!self->redis) {
            zsys_error ("bridge: bad Redis URL %s", redis_shown);
            self->status = -1;
        }
    }
    if (self->status == 0 && self->redis && self->firehose && wsr_redis_sharded (self->redis)) {
        zsys_error ("bridge: firehose mode needs pattern subscriptions, which a Redis "
                    "Cluster's sharded Pub/Sub does not have: use per-topic mode");
        self->status = -1;
    }
    if (self->status == 0 && opts->nats_url) {
        wsr_nats_opts_t nats_opts = {
            .url = opts->nats_url, .creds = opts->nats_creds, .nkey_seed = opts->nats_nkey_seed,
            .ca_file = opts->nats_ca_file, .cert_file = opts->nats_cert_file,
            .key_file = opts->nats_key_file
        };
        self->nats = wsr_nats_new (&nats_opts, nats_in);
        if (!self->nats)
            self->status = -1;
    }
    if (self->status == 0 && self->redis) {
        //  The subscriber connection's held channel: under the user
        //  template's prefix (so ACLs on it allow it), never a user's
        char hold [512];
        const char *place = strstr (opts->redis_user, "{user_id}");
        snprintf (hold, sizeof hold, "%.*s.wsrouter-hold%s",
                  (int) (place? place - opts->redis_user: 0), opts->redis_user,
                  place? place + strlen ("{user_id}"): "");
        wsr_redis_set_hold (self->redis, hold);
        wsr_redis_set_subscribed_fn (self->redis, s_on_redis_subscribed, self);
        if (opts->history_size > 0)
            self->history = wsr_history_new (self->redis, opts->history_size,
                                             opts->history_ttl_s,
                                             wsr_redis_sharded (self->redis));
    }
    if (self->status == 0 && self->nats && opts->nats_history_stream)
        s_jetstream_start (self, opts, instance);
    self->events = opts->events;
    self->redis_events = strdup (opts->redis_events);
    self->nats_events = strdup (opts->nats_events);
    if (self->status == 0 && self->redis && self->events)
        self->presence = wsr_presence_new (self->redis);
    if (self->status == 0)
        self->hreads = wsr_hreads_new (self->history, self->redis_names, !self->firehose,
                                       self->jetstream, self->nats_names, s_on_hist_result,
                                       self);
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
        zsys_info ("bridge: nodes on %s (%s); redis %s, nats %s, http %s, %s mode",
                   opts->endpoint, self->zap? "CURVE": "plaintext", redis_shown, nats_shown,
                   http_shown, self->firehose? "firehose": "per-topic");
    zsock_signal (pipe, 0);

    zmq_pollitem_t items [S_MAX_ITEMS];
    while (!self->terminated) {
        int count = 0;
        items [count++] = (zmq_pollitem_t) { zsock_resolve (pipe), 0, ZMQ_POLLIN, 0 };
        if (self->status == 0) {
            items [count++] = (zmq_pollitem_t) { zsock_resolve (self->nodes), 0, ZMQ_POLLIN, 0 };
            items [count++] = (zmq_pollitem_t) { zsock_resolve (self->nats_in), 0, ZMQ_POLLIN, 0 };
            if (self->zap)
                items [count++] = (zmq_pollitem_t) {
                    zsock_resolve (wsr_zap_socket (self->zap)), 0, ZMQ_POLLIN, 0 };
            if (self->monitor)
                items [count++] = (zmq_pollitem_t) {
                    zsock_resolve (self->monitor), 0, ZMQ_POLLIN, 0 };
        }
        if (self->js_live)
            items [count++] = (zmq_pollitem_t) { zsock_resolve (self->js_live), 0, ZMQ_POLLIN, 0 };
        if (self->jetstream)
            items [count++] = (zmq_pollitem_t) {
                zsock_resolve (wsr_jetstream_socket (self->jetstream)), 0, ZMQ_POLLIN, 0 };
        int redis_at = count;
        if (self->redis)
            count += wsr_redis_pollitems (self->redis, items + count, S_MAX_ITEMS - count);
        int http_at = count;
        if (self->http)
            count += wsr_upstream_http_pollitems (self->http, items + count, S_MAX_ITEMS - count);
        int64_t now = wsr_util_mono_ms ();
        long timeout = self->next_heartbeat > now? (long) (self->next_heartbeat - now): 0;
        if (self->presence && self->next_beat - now < timeout)
            timeout = self->next_beat > now? (long) (self->next_beat - now): 0;
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
        if (self->jsmerge && wsr_jsmerge_due (self->jsmerge) < INT64_MAX) {
            int64_t due = wsr_jsmerge_due (self->jsmerge) - now;
            if (due < timeout)
                timeout = due > 0? (long) due: 0;
        }
        if (self->jetstream && wsr_jetstream_timeout (self->jetstream) < timeout)
            timeout = wsr_jetstream_timeout (self->jetstream);
        if (zmq_poll (items, count, timeout) == -1 && zmq_errno () != EINTR)
            break;
        if (items [0].revents & ZMQ_POLLIN)
            s_handle_pipe (self);
        if (self->terminated || self->status != 0)
            continue;
        //  ZAP first: a connecting node waits on it
        while (self->zap && (zsock_events (wsr_zap_socket (self->zap)) & ZMQ_POLLIN))
            wsr_zap_handle (self->zap);
        while (self->monitor && (zsock_events (self->monitor) & ZMQ_POLLIN))
            s_handle_monitor (self);
        for (int budget = S_NODES_BUDGET; budget > 0
             && (zsock_events (self->nodes) & ZMQ_POLLIN); budget--)
            s_handle_peer (self);
        //  (peers come and go only above and in the heartbeat below, never
        //  while deliveries are gathered: batches are flushed in between)
        //  Publishes after the batch's subscriptions
        zmsg_t *deferred;
        while ((deferred = (zmsg_t *) zlistx_detach (self->deferred, NULL))) {
            s_handle_publish (self, deferred);
            zmsg_destroy (&deferred);
        }
        for (int budget = WSR_WORKER_BUDGET; budget > 0
             && (zsock_events (self->nats_in) & ZMQ_POLLIN); budget--)
            s_handle_nats (self);
        for (int budget = WSR_WORKER_BUDGET; self->js_live && budget > 0
             && (zsock_events (self->js_live) & ZMQ_POLLIN); budget--)
            s_handle_js_live (self);
        if (self->jsmerge)
            wsr_jsmerge_expire (self->jsmerge, wsr_util_mono_ms (), s_on_merge_due, self);
        if (self->jetstream)
            wsr_jetstream_process (self->jetstream);
        if (self->redis)
            wsr_redis_process (self->redis, items + redis_at, http_at - redis_at);
        if (self->http)
            wsr_upstream_http_process (self->http, items + http_at, count - http_at);
        s_batches_flush (self);
        now = wsr_util_mono_ms ();
        if (self->presence && now >= self->next_beat) {
            s_presence_beat (self);
            self->next_beat = now + WSR_PRESENCE_BEAT_MS;
        }
        if (now >= self->next_heartbeat) {
            s_heartbeat (self);
            self->next_heartbeat = now + WSR_PROTO_HB_MS;
        }
    }
    for (size_t i = 0; i < self->batch_count; i++)
        free (self->batches [i].data);
    free (self->batches);
    wsr_upstream_http_destroy (&self->http);
    //  The stores before the reads they serve (no callback after that)
    wsr_history_destroy (&self->history);
    wsr_jetstream_destroy (&self->jetstream);
    zsock_destroy (&self->js_live);
    wsr_jsmerge_destroy (&self->jsmerge);
    wsr_hreads_destroy (&self->hreads);
    wsr_presence_destroy (&self->presence);
    free (self->redis_events);
    free (self->nats_events);
    if (self->nats) {
        wsr_nats_destroy (&self->nats);
        //  libnats keeps an error stack per thread that used it; this thread
        //  is about to end and nats_CloseAndWait only frees the caller's
        wsr_nats_release_thread ();
    }
    wsr_redis_destroy (&self->redis);
    wsr_naming_destroy (&self->redis_names);
    wsr_naming_destroy (&self->nats_names);
    if (self->monitor)
        zmq_socket_monitor (zsock_resolve (self->nodes), NULL, 0);
    zsock_destroy (&self->monitor);
    zsock_destroy (&self->nodes);
    zsock_destroy (&self->observer);
    zsock_destroy (&self->nats_in);
    wsr_zap_destroy (&self->zap);
    zlistx_destroy (&self->deferred);
    zlistx_destroy (&self->syncs);
    wsr_peers_destroy (&self->peers);
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
//  Read the clients directory again (SIGHUP).
int
wsr_bridge_reload (wsr_bridge_t *self)
{
    assert (self);
    int rc = -1;
    int sent = zsock_send (self->actor, "s", WSR_CMD_RELOAD);
    assert (sent == 0);          //  a pipe is in-process: only ETERM fails
    zsock_recv (self->actor, "i", &rc);
    return rc;
}

//  --------------------------------------------------------------------------
//  Peers and topics held.
void
wsr_bridge_peers (wsr_bridge_t *self, size_t *peers, size_t *topics)
{
    assert (self && peers && topics);
    uint64_t p = 0, t = 0;
    int sent = zsock_send (self->actor, "s", WSR_CMD_PEERS);
    assert (sent == 0);          //  a pipe is in-process: only ETERM fails
    zsock_recv (self->actor, "88", &p, &t);
    *peers = (size_t) p;
    *topics = (size_t) t;
}

//  --------------------------------------------------------------------------
//  Selftest: the test plays the nodes, with wsr_link (as workers and routers
//  do) and with raw DEALER sockets (as a buggy or hostile peer would).

//  Wait for a message of kind on a link; heartbeats and RESYNC are handled.
static int
s_link_wait (wsr_link_t *link, wsr_link_msg_t *msg, wsr_link_kind_t kind, int ms)
{
    int64_t end = zclock_mono () + ms;
    zpoller_t *poller = zpoller_new (wsr_link_socket (link), NULL);
    int rc = -1;
    while (rc == -1 && zclock_mono () < end) {
        zpoller_wait (poller, 10);
        while (wsr_link_recv (link, msg) == 0) {
            if (msg->kind == kind) {
                rc = 0;
                break;
            }
            wsr_link_msg_reset (msg);
        }
        wsr_link_flush (link);
    }
    zpoller_destroy (&poller);
    return rc;
}

//  Publish text on topic through a router link.
static void
s_link_publish (wsr_link_t *link, const char *topic, const char *text)
{
    zframe_t *key = zframe_new (topic, strlen (topic) + 1);
    zframe_t *env = wsr_envelope_encode_down ((const uint8_t *) text, strlen (text), 0, 0);
    assert (wsr_link_publish (link, &key, &env) == 0);
}

//  Expect the next delivery on link to be text on topic.
static void
s_expect_delivery (wsr_link_t *link, const char *topic, const char *text)
{
    wsr_link_msg_t msg;
    assert (s_link_wait (link, &msg, WSR_LINK_DELIVER, 2000) == 0);
    assert (streq (msg.key, topic));
    wsr_envelope_t env;
    assert (wsr_envelope_decode (msg.data, msg.size, &env) == 0);
    assert (env.size == strlen (text) && !memcmp (env.data, text, env.size));
    wsr_link_msg_reset (&msg);
}

static wsr_link_t *
s_link (const char *endpoint, const char *role, int index, const char *secret,
        const char *server)
{
    wsr_link_opts_t opts = {
        .endpoint = endpoint, .node = "tnode", .role = role, .index = index,
        .curve_secret = secret, .curve_server = server
    };
    wsr_link_t *link = wsr_link_new (&opts, NULL, NULL);
    assert (link);
    return link;
}

//  Wait until the bridge holds this many topics.
static void
s_wait_topics (wsr_bridge_t *bridge, size_t want)
{
    size_t peers = 0, topics = 0;
    for (int i = 0; i < 400; i++) {
        wsr_bridge_peers (bridge, &peers, &topics);
        if (topics == want)
            return;
        zclock_sleep (5);
    }
    fprintf (stderr, "bridge holds %zu topics, want %zu\n", topics, want);
    assert (false);
}

//  A raw DEALER peer; messages built by hand.
static void
s_raw_send (zsock_t *dealer, const char *command, const void *frame, size_t size)
{
    zmsg_t *msg = zmsg_new ();
    zmsg_addstr (msg, command);
    if (frame)
        zmsg_addmem (msg, frame, size);
    assert (zmsg_send (&msg, dealer) == 0);
}

static zmsg_t *
s_raw_expect (zsock_t *dealer, const char *command, int ms)
{
    zpoller_t *poller = zpoller_new (dealer, NULL);
    int64_t end = zclock_mono () + ms;
    zmsg_t *found = NULL;
    while (!found && zclock_mono () < end && zpoller_wait (poller, 50)) {
        zmsg_t *msg = zmsg_recv (dealer);
        if (msg && zframe_streq (zmsg_first (msg), command))
            found = msg;
        else
            zmsg_destroy (&msg);
    }
    zpoller_destroy (&poller);
    return found;
}

void
wsr_bridge_test (bool verbose)
{
    (void) verbose;
    wsr_metrics_t *metrics = wsr_metrics_new ();
    wsr_bridge_opts_t opts;
    wsr_bridge_opts_defaults (&opts);

    //  No backplane: publishes fan out through the bridge to the peers that
    //  want them, heartbeats flow, a client message reaches observers
    opts.endpoint = "inproc://wsr-bridge-test";
    opts.upstream_endpoint = "inproc://wsr-bridge-test-observer";
    opts.max_topics = 4;                //  subscriptions per node, over its peers
    opts.peer_hwm = 20;
    wsr_bridge_t *bridge = wsr_bridge_new (&opts, metrics);
    assert (bridge);
    zsock_t *observer = zsock_new_sub (opts.upstream_endpoint, "up:");
    wsr_link_t *w0 = s_link (opts.endpoint, WSR_ROLE_WORKER, 0, NULL, NULL);
    wsr_link_t *w1 = s_link (opts.endpoint, WSR_ROLE_WORKER, 1, NULL, NULL);
    wsr_link_t *router = s_link (opts.endpoint, WSR_ROLE_ROUTER, 0, NULL, NULL);
    wsr_link_subscribe (w0, "user:u1", 8, true);
    wsr_link_subscribe (w0, "channel:c", 10, true);
    wsr_link_subscribe (w1, "channel:c", 10, true);
    wsr_link_flush (w0);
    wsr_link_flush (w1);
    s_wait_topics (bridge, 2);
    s_link_publish (router, "user:u10", "not-for-u1");
    s_link_publish (router, "user:u1", "for-u1");
    s_link_publish (router, "channel:c", "for-c");
    s_expect_delivery (w0, "user:u1", "for-u1");
    s_expect_delivery (w0, "channel:c", "for-c");
    s_expect_delivery (w1, "channel:c", "for-c");
    wsr_link_msg_t msg;
    assert (s_link_wait (w1, &msg, WSR_LINK_DELIVER, 200) == -1);  //  only one for w1
    int redis = 0, nats = 0;
    assert (s_link_wait (router, &msg, WSR_LINK_REPLY, 100) == -1);    //  takes the HBs
    assert (wsr_link_bridge_up (router, &redis, &nats) && redis == -1 && nats == -1);
    //  A client message goes to observers as [up:u1][envelope]
    zmsg_t *seen = NULL;
    zpoller_t *poller = zpoller_new (observer, NULL);
    for (int i = 0; i < 100 && !seen; i++) {
        zframe_t *up = wsr_envelope_encode_up ("u1", 5, "tnode", 0, WSR_KIND_TEXT,
                                               (const uint8_t *) "hi", 2);
        assert (wsr_link_send_up (w0, &up) == 0);
        if (zpoller_wait (poller, 20))
            seen = zmsg_recv (observer);
    }
    zpoller_destroy (&poller);
    assert (seen && zmsg_size (seen) == 2 && zframe_size (zmsg_first (seen)) == 6
            && !memcmp (zframe_data (zmsg_first (seen)), "up:u1", 6));
    zmsg_destroy (&seen);

    //  Hostile or broken peers: wildcards, junk and foreign prefixes are
    //  refused and counted, nothing is kept; the node's topic cap holds
    zsock_t *raw = zsock_new_dealer (opts.endpoint);
    s_raw_send (raw, WSR_PROTO_PING, NULL, 0);
    zmsg_t *reply = s_raw_expect (raw, WSR_PROTO_RESYNC, 2000);      //  unknown: resync
    assert (reply);
    zmsg_destroy (&reply);
    const char *bad [] = { "user:>", "user:*", "channel:a.*", "sess:n:1", "", "user:",
                           "up:u1", "user:a b" };
    int64_t invalid = wsr_metrics_get (metrics, WSR_M_BRIDGE_INVALID);
    for (size_t i = 0; i < sizeof bad / sizeof bad [0]; i++) {
        s_raw_send (raw, WSR_PROTO_SUB, bad [i], strlen (bad [i]) + 1);
        reply = s_raw_expect (raw, WSR_PROTO_REFUSED, 2000);
        assert (reply && zmsg_size (reply) == 3);
        zmsg_destroy (&reply);
    }
    s_raw_send (raw, WSR_PROTO_SUB, "user:x", 6);       //  no NUL
    reply = s_raw_expect (raw, WSR_PROTO_REFUSED, 2000);
    assert (reply);
    zmsg_destroy (&reply);
    assert (wsr_metrics_get (metrics, WSR_M_BRIDGE_INVALID) == invalid + 9);
    //  A barrier without a backplane: SYNCED at once, with the token
    uint8_t token [8];
    wsr_msgs_put_u64 (token, 0x5EC5);
    s_raw_send (raw, WSR_PROTO_SYNC, token, 8);
    reply = s_raw_expect (raw, WSR_PROTO_SYNCED, 2000);
    assert (reply && zmsg_size (reply) == 2);
    assert (wsr_msgs_get_u64 (zframe_data (zmsg_last (reply))) == 0x5EC5);
    zmsg_destroy (&reply);
    s_raw_send (raw, WSR_PROTO_SYNC, token, 7);         //  malformed: counted
    assert (s_raw_expect (raw, WSR_PROTO_SYNCED, 300) == NULL);
    assert (wsr_metrics_get (metrics, WSR_M_BRIDGE_INVALID) == invalid + 10);
    s_wait_topics (bridge, 2);
    //  A node's subscriptions are capped (4 here; tnode holds 3 across w0 and w1)
    wsr_link_subscribe (w1, "user:u2", 8, true);
    wsr_link_subscribe (w1, "user:u3", 8, true);
    wsr_link_flush (w1);
    assert (s_link_wait (w1, &msg, WSR_LINK_REFUSED, 2000) == 0);
    assert (!memcmp (zframe_data (msg.topic), "user:u3", 8));
    wsr_link_msg_reset (&msg);
    s_wait_topics (bridge, 3);
    assert (wsr_metrics_get (metrics, WSR_M_BRIDGE_SUB_REFUSED) >= 10);
    //  An undecodable publish is dropped and counted
    invalid = wsr_metrics_get (metrics, WSR_M_BRIDGE_INVALID);
    zmsg_t *junk = zmsg_new ();
    zmsg_addstr (junk, WSR_PROTO_PUB);
    zmsg_addmem (junk, "user:u1", 8);
    zmsg_addstr (junk, "not msgpack");
    assert (zmsg_send (&junk, raw) == 0);
    for (int i = 0; i < 200 && wsr_metrics_get (metrics, WSR_M_BRIDGE_INVALID) == invalid; i++)
        zclock_sleep (5);
    assert (wsr_metrics_get (metrics, WSR_M_BRIDGE_INVALID) == invalid + 1);

    //  A peer that stops reading loses its own messages, counted; the others
    //  lose nothing and are not held up
    zsock_t *stalled = zsock_new (ZMQ_DEALER);
    zsock_set_rcvhwm (stalled, 10);
    assert (zsock_connect (stalled, "%s", opts.endpoint) == 0);
    s_raw_send (stalled, WSR_PROTO_SUB, "channel:c", 10);
    s_wait_topics (bridge, 3);
    size_t peers = 0, topics = 0;
    for (int i = 0; i < 400 && peers < 5; i++) {
        wsr_bridge_peers (bridge, &peers, &topics);
        zclock_sleep (5);
    }
    assert (peers == 5);
    int64_t drops = wsr_metrics_get (metrics, WSR_M_BRIDGE_DELIVER_DROPS);
    for (int i = 0; i < 1000; i++) {
        char text [16];
        snprintf (text, sizeof text, "m%d", i);
        s_link_publish (router, "channel:c", text);
        if (i % 50 == 49)
            for (int j = i - 49; j <= i; j++) {
                snprintf (text, sizeof text, "m%d", j);
                s_expect_delivery (w0, "channel:c", text);
                s_expect_delivery (w1, "channel:c", text);
            }
    }
    //  Its queue holds 20 + 10 messages of at most 16 deliveries: the rest
    //  of the 1,000 are dropped for it, one by one
    assert (wsr_metrics_get (metrics, WSR_M_BRIDGE_DELIVER_DROPS) - drops >= 1000 - 30 * 16);
    zsock_destroy (&stalled);

    //  BYE: the peer's topics go at once (u1 was w0's alone)
    wsr_link_destroy (&w0);
    s_wait_topics (bridge, 2);
    wsr_link_destroy (&w1);
    wsr_link_destroy (&router);
    zsock_destroy (&raw);
    zsock_destroy (&observer);
    wsr_bridge_destroy (&bridge);
    opts.upstream_endpoint = NULL;
    opts.max_topics = WSR_DEFAULT_BRIDGE_MAX_TOPICS;
    opts.peer_hwm = 0;

    //  Plaintext on a non-loopback address is refused unless asked for
    opts.endpoint = "tcp://0.0.0.0:*";
    assert (wsr_bridge_new (&opts, metrics) == NULL);
    opts.insecure_plaintext = true;
    bridge = wsr_bridge_new (&opts, metrics);
    assert (bridge);
    wsr_bridge_destroy (&bridge);
    opts.insecure_plaintext = false;

    //  CURVE: a node whose certificate is in the clients directory gets in;
    //  one with another key, and a plaintext one, get nothing (no heartbeat,
    //  no delivery, no subscription kept) and are counted; after a reload
    //  the second key gets in
    char dir [] = "/tmp/wsr-bridge-test-XXXXXX";
    assert (mkdtemp (dir));
    char path [3 * PATH_MAX], good [PATH_MAX], other [PATH_MAX], server [PATH_MAX],
         clients [PATH_MAX], cert [PATH_MAX];
    snprintf (server, sizeof server, "%s/bridge", dir);
    snprintf (cert, sizeof cert, "%s/bridge_secret", dir);
    snprintf (clients, sizeof clients, "%s/clients", dir);
    snprintf (good, sizeof good, "%s/clients/good", dir);
    snprintf (other, sizeof other, "%s/other", dir);
    assert (mkdir (clients, 0700) == 0);
    assert (wsr_curve_keygen (server) == 0 && wsr_curve_keygen (good) == 0
         && wsr_curve_keygen (other) == 0);
    char good_secret [PATH_MAX + 8], other_secret [PATH_MAX + 8];
    snprintf (good_secret, sizeof good_secret, "%s_secret", good);
    snprintf (other_secret, sizeof other_secret, "%s_secret", other);
    int port = wsr_util_free_port ();
    char endpoint [64];
    snprintf (endpoint, sizeof endpoint, "tcp://127.0.0.1:%d", port);
    opts.endpoint = endpoint;
    opts.cert = cert;
    opts.clients = clients;
    bridge = wsr_bridge_new (&opts, metrics);
    assert (bridge);
    int64_t denied = wsr_metrics_get (metrics, WSR_M_BRIDGE_PEERS_DENIED);
    wsr_link_t *keyed = s_link (endpoint, WSR_ROLE_WORKER, 0, good_secret, server);
    wsr_link_t *stranger = s_link (endpoint, WSR_ROLE_WORKER, 1, other_secret, server);
    wsr_link_t *plain = s_link (endpoint, WSR_ROLE_ROUTER, 0, NULL, NULL);
    wsr_link_subscribe (keyed, "user:k", 7, true);
    wsr_link_subscribe (stranger, "user:s", 7, true);
    wsr_link_subscribe (plain, "user:p", 7, true);
    wsr_link_flush (keyed);
    wsr_link_flush (stranger);
    wsr_link_flush (plain);
    s_wait_topics (bridge, 1);
    wsr_link_t *keyed_router = s_link (endpoint, WSR_ROLE_ROUTER, 0, good_secret, server);
    for (int i = 0; i < 400 && !wsr_link_bridge_up (keyed_router, NULL, NULL); i++)
        assert (s_link_wait (keyed_router, &msg, WSR_LINK_REPLY, 10) == -1);
    s_link_publish (keyed_router, "user:k", "secret-k");
    s_link_publish (keyed_router, "user:s", "secret-s");
    s_link_publish (keyed_router, "user:p", "secret-p");
    s_expect_delivery (keyed, "user:k", "secret-k");
    assert (s_link_wait (stranger, &msg, WSR_LINK_DELIVER, 300) == -1);
    assert (s_link_wait (plain, &msg, WSR_LINK_DELIVER, 300) == -1);
    assert (!wsr_link_bridge_up (stranger, NULL, NULL) && !wsr_link_bridge_up (plain, NULL, NULL));
    wsr_bridge_peers (bridge, &peers, &topics);
    assert (peers == 2 && topics == 1);
    assert (wsr_metrics_get (metrics, WSR_M_BRIDGE_PEERS_DENIED) >= denied + 2);
    //  Reload with the other key added: it gets in (ZeroMQ retries by itself)
    snprintf (path, sizeof path, "cp '%s' '%s/'", other, clients);
    assert (system (path) == 0);
    assert (wsr_bridge_reload (bridge) == 2);
    //  (a refused link stays refused until it connects afresh: at most
    //  WSR_PROTO_RECONNECT_MS without heartbeats)
    for (int i = 0; i < 1000 && !wsr_link_bridge_up (stranger, NULL, NULL); i++)
        assert (s_link_wait (stranger, &msg, WSR_LINK_REPLY, 10) == -1);
    assert (wsr_link_bridge_up (stranger, NULL, NULL));
    wsr_link_destroy (&keyed);
    wsr_link_destroy (&stranger);
    wsr_link_destroy (&plain);
    wsr_link_destroy (&keyed_router);
    wsr_bridge_destroy (&bridge);
    snprintf (path, sizeof path, "rm -rf '%s'", dir);
    assert (system (path) == 0);
    opts.cert = opts.clients = NULL;

    //  Redis configured but down: a client message is dropped, counted, and
    //  its session gets an error as a REPLY
    opts.endpoint = "inproc://wsr-bridge-test3";
    opts.redis_url = "redis://127.0.0.1:1";
    bridge = wsr_bridge_new (&opts, metrics);
    assert (bridge);
    w0 = s_link (opts.endpoint, WSR_ROLE_WORKER, 0, NULL, NULL);
    int64_t lost_before = wsr_metrics_get (metrics, WSR_M_BRIDGE_UPSTREAM_LOST);
    zframe_t *up = wsr_envelope_encode_up ("u1", 5, "tnode", 0, WSR_KIND_TEXT,
                                           (const uint8_t *) "hi", 2);
    assert (wsr_link_send_up (w0, &up) == 0);
    assert (s_link_wait (w0, &msg, WSR_LINK_REPLY, 2000) == 0 && msg.session == 5);
    wsr_envelope_t env;
    assert (wsr_envelope_decode (msg.data, msg.size, &env) == 0);
    assert (env.size == strlen (WSR_ERROR_BACKPLANE_DOWN)
         && memcmp (env.data, WSR_ERROR_BACKPLANE_DOWN, env.size) == 0);
    wsr_link_msg_reset (&msg);
    assert (wsr_metrics_get (metrics, WSR_M_BRIDGE_UPSTREAM_LOST) > lost_before);
    wsr_link_destroy (&w0);
    wsr_bridge_destroy (&bridge);
    opts.redis_url = NULL;

    if (system ("command -v redis-server >/dev/null 2>&1") != 0) {
        wsr_util_test_skip ("redis-server not installed: the Redis part did not run");
        wsr_metrics_destroy (&metrics);
        return;
    }
    //  With Redis: a subscription becomes a SUBSCRIBE; an API publish goes
    //  through Redis and comes back to the peer that wants it
    port = wsr_util_free_port ();
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
    w0 = s_link (opts.endpoint, WSR_ROLE_WORKER, 0, NULL, NULL);
    router = s_link (opts.endpoint, WSR_ROLE_ROUTER, 0, NULL, NULL);
    wsr_link_subscribe (w0, "user:u1", 8, true);
    wsr_link_flush (w0);
    redis = 0;
    for (int i = 0; i < 400 && redis != 1; i++) {
        assert (s_link_wait (router, &msg, WSR_LINK_REPLY, 10) == -1);
        wsr_link_bridge_up (router, &redis, &nats);
    }
    assert (redis == 1 && nats == -1);
    bool got = false;
    for (int i = 0; i < 40 && !got; i++) {
        s_link_publish (router, "user:u1", "via-redis");
        got = s_link_wait (w0, &msg, WSR_LINK_DELIVER, 100) == 0;
    }
    assert (got);
    assert (wsr_envelope_decode (msg.data, msg.size, &env) == 0);
    assert (env.size == 9 && memcmp (env.data, "via-redis", 9) == 0);
    wsr_link_msg_reset (&msg);
    for (int i = 0; i < 200 && wsr_metrics_get (metrics, WSR_M_BRIDGE_TOPICS) != 1; i++)
        zclock_sleep (5);
    assert (wsr_metrics_get (metrics, WSR_M_BRIDGE_TOPICS) == 1);
    wsr_util_reap (pid);
    wsr_link_destroy (&w0);
    wsr_link_destroy (&router);
    wsr_bridge_destroy (&bridge);
    wsr_metrics_destroy (&metrics);
}
