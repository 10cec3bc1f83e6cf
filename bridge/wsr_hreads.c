//  wsr_hreads — the bridge's history reads for peers: HIST in, HISTR out
//
//  A session worker recovering a client (or repairing a gap) asks the
//  bridge for a topic's history after an offset (WBP/1 HIST). The read goes
//  to Redis (wsr_history: the stream of the topic's channel) or to NATS
//  JetStream (wsr_jetstream: the topic's subject in the history stream),
//  and the result goes back to that peer (HISTR), encoded once.
//
//  A read on Redis is held until Redis has confirmed the SUBSCRIBE of the
//  topic's channel: subscribe first, then read, so that nothing published
//  between the read and the subscription is missed by both (the worker
//  merges what it reads with what it buffered meanwhile, wsr_recovery). A
//  read held for WSR_HREADS_HOLD_MS goes anyway (Redis slow or down: the
//  merge still detects a gap later, by offsets). JetStream's live consumer
//  covers the whole stream, so its reads are never held.
//
//  Owns the requests (held or in flight), bounded by WSR_HREADS_MAX.

#include "wsr_classes.h"

#define S_RID_MAX           255

typedef struct _s_req_t s_req_t;
struct _s_req_t {
    wsr_hreads_t *owner;            //  not owned
    uint8_t rid [S_RID_MAX];        //  the peer's routing id
    size_t rid_size;
    uint64_t id;                    //  the peer's request id
    char name [WSR_TOPIC_MAX + 256];    //  Redis channel or NATS subject
    char epoch [WSR_HISTORY_EPOCH_MAX + 1];
    bool has_epoch;
    uint64_t since;
    size_t max;
    int64_t held_at;                //  mono ms it was held, 0 = not held
    void *handle;                   //  its item in owner->requests
};

struct _wsr_hreads_t {
    wsr_history_t *history;         //  Redis store or NULL (not owned)
    wsr_naming_t *redis_names;      //  (not owned)
    bool gate;                      //  hold Redis reads until subscribed
    wsr_jetstream_t *jetstream;     //  NATS store or NULL (not owned)
    wsr_naming_t *nats_names;       //  (not owned)
    wsr_hreads_reply_fn *reply;     //  where results go
    void *arg;
    zlistx_t *requests;             //  s_req_t, held or in flight (owned)
    zhashx_t *confirmed;            //  Redis channels confirmed subscribed
};

static void
s_req_free (void **item_p)
{
    free (*item_p);
    *item_p = NULL;
}

//  --------------------------------------------------------------------------
//  Create.
wsr_hreads_t *
wsr_hreads_new (wsr_history_t *history, wsr_naming_t *redis_names, bool gate,
                wsr_jetstream_t *jetstream, wsr_naming_t *nats_names,
                wsr_hreads_reply_fn *reply, void *arg)
{
    assert (reply);
    assert (!history || redis_names);
    assert (!jetstream || nats_names);
    wsr_hreads_t *self = (wsr_hreads_t *) zmalloc (sizeof (wsr_hreads_t));
    self->history = history;
    self->redis_names = redis_names;
    self->gate = gate;
    self->jetstream = jetstream;
    self->nats_names = nats_names;
    self->reply = reply;
    self->arg = arg;
    self->requests = zlistx_new ();
    zlistx_set_destructor (self->requests, s_req_free);
    self->confirmed = zhashx_new ();
    return self;
}

//  --------------------------------------------------------------------------
//  Destroy.
void
wsr_hreads_destroy (wsr_hreads_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        wsr_hreads_t *self = *self_p;
        zlistx_destroy (&self->requests);
        zhashx_destroy (&self->confirmed);
        free (self);
        *self_p = NULL;
    }
}

//  The result for one request; the request is done.
static void
s_answer (s_req_t *req, const wsr_history_result_t *result)
{
    wsr_hreads_t *self = req->owner;
    zframe_t *frame = wsr_envelope_encode_history (result);
    self->reply (self->arg, req->rid, req->rid_size, req->id, &frame);
    zframe_destroy (&frame);
    zlistx_delete (self->requests, req->handle);
}

static void
s_on_read (void *arg, const wsr_history_result_t *result)
{
    s_answer ((s_req_t *) arg, result);
}

static void
s_fail (s_req_t *req)
{
    wsr_history_result_t failed = { -1, "", 0, false, NULL, 0 };
    s_answer (req, &failed);
}

//  Send the read to its store.
static void
s_start (s_req_t *req)
{
    wsr_hreads_t *self = req->owner;
    req->held_at = 0;
    int rc = -1;
    const char *epoch = req->has_epoch? req->epoch: NULL;
    if (self->history)
        rc = wsr_history_read (self->history, req->name, req->since, epoch, req->max,
                               s_on_read, req);
    else
    if (self->jetstream)
        rc = wsr_jetstream_read (self->jetstream, req->name, req->since, epoch, req->max,
                                 s_on_read, req);
    if (rc)
        s_fail (req);
}

//  --------------------------------------------------------------------------
//  A peer's read.
int
wsr_hreads_request (wsr_hreads_t *self, const uint8_t *rid, size_t rid_size, uint64_t request,
                    const char *topic, const char *epoch, uint64_t since, size_t max)
{
    assert (self && rid && topic);
    if (rid_size == 0 || rid_size > S_RID_MAX || zlistx_size (self->requests) >= WSR_HREADS_MAX
    ||  (epoch && strlen (epoch) > WSR_HISTORY_EPOCH_MAX))
        return -1;
    s_req_t *req = (s_req_t *) zmalloc (sizeof (s_req_t));
    req->owner = self;
    memcpy (req->rid, rid, rid_size);
    req->rid_size = rid_size;
    req->id = request;
    req->has_epoch = epoch && *epoch;
    snprintf (req->epoch, sizeof req->epoch, "%s", epoch? epoch: "");
    req->since = since;
    req->max = max > WSR_HISTORY_MAX_READ? WSR_HISTORY_MAX_READ: max;
    wsr_naming_t *names = self->history? self->redis_names: self->nats_names;
    if (names && wsr_naming_to_backplane (names, topic, req->name, sizeof req->name) < 0) {
        free (req);
        return -1;
    }
    req->handle = zlistx_add_end (self->requests, req);
    if (!self->history && !self->jetstream) {
        //  No history kept: an empty result, never "recovered"
        wsr_history_result_t none = { 0, "", 0, false, NULL, 0 };
        s_answer (req, &none);
    }
    else
    if (self->history && self->gate && !zhashx_lookup (self->confirmed, req->name))
        req->held_at = wsr_util_mono_ms ();
    else
        s_start (req);
    return 0;
}

//  --------------------------------------------------------------------------
//  A channel confirmed.
void
wsr_hreads_confirmed (wsr_hreads_t *self, const char *channel, size_t channel_len)
{
    assert (self && channel);
    char name [WSR_TOPIC_MAX + 256];
    if (channel_len >= sizeof name)
        return;
    memcpy (name, channel, channel_len);
    name [channel_len] = 0;
    zhashx_update (self->confirmed, name, (void *) 1);
    //  Start the held reads of it (collected first: a start may finish one)
    zlistx_t *ready = zlistx_new ();
    for (s_req_t *req = (s_req_t *) zlistx_first (self->requests); req;
         req = (s_req_t *) zlistx_next (self->requests))
        if (req->held_at && streq (req->name, name))
            zlistx_add_end (ready, req);
    for (s_req_t *req = (s_req_t *) zlistx_first (ready); req;
         req = (s_req_t *) zlistx_next (ready))
        s_start (req);
    zlistx_destroy (&ready);
}

//  --------------------------------------------------------------------------
//  Subscriptions gone.
void
wsr_hreads_unconfirmed (wsr_hreads_t *self, const char *channel)
{
    assert (self);
    if (channel)
        zhashx_delete (self->confirmed, channel);
    else
        zhashx_purge (self->confirmed);
}

//  --------------------------------------------------------------------------
//  Stores replaced: reads in flight there will never answer.
void
wsr_hreads_set_stores (wsr_hreads_t *self, wsr_history_t *history, wsr_jetstream_t *jetstream)
{
    assert (self);
    zlistx_t *lost = zlistx_new ();
    for (s_req_t *req = (s_req_t *) zlistx_first (self->requests); req;
         req = (s_req_t *) zlistx_next (self->requests))
        if (!req->held_at)
            zlistx_add_end (lost, req);
    for (s_req_t *req = (s_req_t *) zlistx_first (lost); req;
         req = (s_req_t *) zlistx_next (lost))
        s_fail (req);
    zlistx_destroy (&lost);
    self->history = history;
    self->jetstream = jetstream;
}

//  --------------------------------------------------------------------------
//  Held too long: go anyway.
void
wsr_hreads_tick (wsr_hreads_t *self)
{
    assert (self);
    int64_t now = wsr_util_mono_ms ();
    zlistx_t *late = zlistx_new ();
    for (s_req_t *req = (s_req_t *) zlistx_first (self->requests); req;
         req = (s_req_t *) zlistx_next (self->requests))
        if (req->held_at && now - req->held_at >= WSR_HREADS_HOLD_MS)
            zlistx_add_end (late, req);
    for (s_req_t *req = (s_req_t *) zlistx_first (late); req;
         req = (s_req_t *) zlistx_next (late))
        s_start (req);
    zlistx_destroy (&late);
}

//  --------------------------------------------------------------------------
//  Pending.
size_t
wsr_hreads_pending (wsr_hreads_t *self)
{
    assert (self);
    return zlistx_size (self->requests);
}

//  --------------------------------------------------------------------------
//  Selftest: without a store (no history), and on a real Redis with the
//  read held until the subscription is confirmed.

typedef struct {
    int replies;
    uint64_t request;
    wsr_history_result_t result;
    wsr_history_entry_t entries [8];
    char epoch [WSR_HISTORY_EPOCH_MAX + 1];
} s_sink_t;

static void
s_sink (void *arg, const uint8_t *rid, size_t rid_size, uint64_t request, zframe_t **result_p)
{
    s_sink_t *sink = (s_sink_t *) arg;
    assert (rid_size == 2 && !memcmp (rid, "R1", 2));
    sink->replies++;
    sink->request = request;
    zframe_t *frame = *result_p;
    assert (wsr_envelope_decode_history (zframe_data (frame), zframe_size (frame),
                                         &sink->result, sink->entries, 8, sink->epoch) == 0);
}

static void
s_noop (void *arg, const char *pattern, const char *channel, size_t channel_len,
        const uint8_t *data, size_t size)
{
    (void) arg, (void) pattern, (void) channel, (void) channel_len, (void) data, (void) size;
}

static void
s_confirm (void *arg, const char *channel, size_t channel_len)
{
    wsr_hreads_confirmed ((wsr_hreads_t *) arg, channel, channel_len);
}

//  Run the Redis link until cond or the deadline.
#define S_RUN(redis, cond, ms) do { \
    int64_t s_end = zclock_mono () + (ms); \
    while (!(cond) && zclock_mono () < s_end) { \
        zmq_pollitem_t s_items [8]; \
        int s_count = wsr_redis_pollitems ((redis), s_items, 8); \
        zmq_poll (s_items, s_count, 20); \
        wsr_redis_process ((redis), s_items, s_count); \
    } \
} while (0)

void
wsr_hreads_test (bool verbose)
{
    (void) verbose;
    wsr_naming_t *names = wsr_naming_new ("ws:{user_id}", "ws:channel:{channel}",
                                          "ws:actions:{user_id}");
    //  No store: an answer at once, "no history"
    s_sink_t sink = { 0 };
    wsr_hreads_t *reads = wsr_hreads_new (NULL, NULL, false, NULL, NULL, s_sink, &sink);
    assert (wsr_hreads_request (reads, (const uint8_t *) "R1", 2, 7, "user:u1", "E", 3, 10) == 0);
    assert (sink.replies == 1 && sink.request == 7 && sink.result.status == 0
         && !sink.result.complete && sink.result.count == 0 && streq (sink.epoch, ""));
    assert (wsr_hreads_pending (reads) == 0);
    wsr_hreads_destroy (&reads);

    if (system ("command -v redis-server >/dev/null 2>&1") != 0) {
        wsr_naming_destroy (&names);
        wsr_util_test_skip ("redis-server not installed");
        return;
    }
    int port = wsr_util_free_port ();
    char port_text [16], url [64];
    snprintf (port_text, sizeof port_text, "%d", port);
    snprintf (url, sizeof url, "redis://127.0.0.1:%d", port);
    const char *argv [] = { "redis-server", "--port", port_text, "--bind", "127.0.0.1",
                            "--save", "", "--appendonly", "no", NULL };
    pid_t pid = wsr_util_spawn (argv);
    wsr_redis_t *redis = wsr_redis_new (url, s_noop, NULL);
    wsr_history_t *history = wsr_history_new (redis, 100, 60, false);
    memset (&sink, 0, sizeof sink);
    reads = wsr_hreads_new (history, names, true, NULL, NULL, s_sink, &sink);
    wsr_redis_set_subscribed_fn (redis, s_confirm, reads);
    S_RUN (redis, wsr_redis_connected (redis), 5000);
    assert (wsr_redis_connected (redis));
    //  Two appends, then a read held until ws:u1 is subscribed
    for (int i = 0; i < 2; i++)
        while (wsr_history_append (history, "ws:u1", (const uint8_t *) "m", 1, NULL, NULL))
            S_RUN (redis, false, 20);
    S_RUN (redis, wsr_history_inflight (history) == 0, 2000);
    assert (wsr_hreads_request (reads, (const uint8_t *) "R1", 2, 9, "user:u1", NULL, 0,
                                10) == 0);
    S_RUN (redis, sink.replies > 0, 300);
    assert (sink.replies == 0 && wsr_hreads_pending (reads) == 1);     //  held
    wsr_redis_subscribe (redis, "ws:u1");
    S_RUN (redis, sink.replies > 0, 2000);
    assert (sink.replies == 1 && sink.request == 9 && sink.result.status == 0);
    assert (sink.result.count == 2 && sink.entries [0].offset == 1 && sink.entries [1].offset == 2);
    assert (sink.result.last == 2 && strlen (sink.epoch) > 0);
    //  Confirmed now: the next read goes at once; unconfirmed again: held,
    //  then sent anyway after the hold time
    assert (wsr_hreads_request (reads, (const uint8_t *) "R1", 2, 10, "user:u1", sink.epoch, 1,
                                10) == 0);
    S_RUN (redis, sink.replies > 1, 2000);
    assert (sink.replies == 2 && sink.result.complete && sink.result.count == 1);
    wsr_hreads_unconfirmed (reads, NULL);
    assert (wsr_hreads_request (reads, (const uint8_t *) "R1", 2, 11, "channel:c", NULL, 0,
                                10) == 0);
    int64_t start = zclock_mono ();
    while (sink.replies < 3 && zclock_mono () - start < 5000) {
        wsr_hreads_tick (reads);
        S_RUN (redis, sink.replies > 2, 50);
    }
    assert (sink.replies == 3 && sink.request == 11);
    assert (zclock_mono () - start >= WSR_HREADS_HOLD_MS - 50);
    //  A topic that is not one is refused
    assert (wsr_hreads_request (reads, (const uint8_t *) "R1", 2, 12, "sess:x", NULL, 0,
                                10) == -1);
    wsr_history_destroy (&history);
    wsr_hreads_destroy (&reads);
    wsr_redis_destroy (&redis);
    wsr_naming_destroy (&names);
    wsr_util_reap (pid);
}
