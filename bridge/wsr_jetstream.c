//  wsr_jetstream — a topic's history on NATS JetStream: stream, reads since a sequence, live
//
//  A JetStream stream over the downstream subjects keeps the history:
//  backends keep publishing plain NATS messages, the stream stores them.
//  The offset of a message is its stream sequence (shared by all subjects
//  of the stream); the epoch is the stream's creation time, new whenever
//  the stream is deleted and made again.
//
//  Everything here is asynchronous, on the JetStream API's request/reply
//  subjects: requests are published with a reply subject under one inbox
//  of ours; a libnats thread forwards each reply as [id][status][sequence]
//  [data] into a PUSH socket (under a mutex) and the owner's process()
//  reads them from the PULL end and does the rest. No state is touched on
//  libnats threads.
//
//  A read of subject since S: (1) STREAM.INFO (epoch, first and last
//  sequence, per-subject limit); (2) DIRECT.GET (or STREAM.MSG.GET when the
//  stream does not allow direct gets) with next_by_subj, from S + 1, one
//  message per request, up to the last sequence of (1); (3) when as many
//  messages as the per-subject limit came back, the subject's first
//  message, to see whether one at or before S is left; (4) STREAM.INFO
//  again: a different creation time means the stream was made again during
//  the read. The range is complete when the epoch is the one asked for and
//  unchanged, S ≤ last, nothing after S can have been removed by age or the
//  stream's global limits (S ≥ first - 1: those remove the oldest messages
//  of the stream first), nor by the per-subject limit (fewer messages than
//  the limit after S, or one at or before S still there: it too removes
//  oldest first), and max was not reached. Messages deleted one by one or
//  purged by subject are not detected.
//
//  Live: an ordered push consumer over the whole stream (libnats makes it
//  gap-free and in order; it recreates itself after a gap) delivers every
//  stored message with its stream sequence. RePublish would give the
//  per-subject previous sequence too, but costs ~300 µs of server CPU per
//  message on nats-server 2.9 (see ARCHITECTURE.md).
//
//  Every WSR_JETSTREAM_CHECK_MS the stream is looked up again: created if
//  missing (when configured), its epoch followed. On a new epoch the live
//  consumer is made again from the new stream's first message.

#include "wsr_classes.h"
#include <nats/nats.h>
#include <jansson.h>

#define S_SWEEP_MS          100     //  timeout sweep period
#define S_CONTROL           WSR_JETSTREAM_MAX_READS     //  slot of control requests
#define S_SLOTS             (WSR_JETSTREAM_MAX_READS + 1)
#define S_SLOT_BITS         11      //  2^11 > S_SLOTS

typedef enum {
    S_IDLE,                         //  slot free / no control request
    S_INFO_FIRST,                   //  read: stream info before
    S_GET,                          //  read: next message of the subject
    S_FIRST,                        //  read: the subject's first message
    S_INFO_LAST,                    //  read: stream info after
    S_CHECK,                        //  control: stream info
    S_CREATE                        //  control: stream create
} s_step_t;

typedef struct {
    s_step_t step;                  //  S_IDLE: free
    uint64_t id;                    //  id of the request outstanding
    int64_t deadline;               //  mono ms it times out
    wsr_history_read_fn *cb;        //  result callback
    void *arg;
    char *subject;                  //  subject read
    uint64_t since;                 //  entries after this sequence
    size_t max;                     //  at most this many
    bool any_epoch;                 //  no epoch asked
    char asked [WSR_HISTORY_EPOCH_MAX + 1];     //  the epoch asked
    char epoch [WSR_HISTORY_EPOCH_MAX + 1];     //  from the first info
    uint64_t first_seq;             //  stream's first and last sequence then
    uint64_t last_seq;
    int64_t per_subject;            //  max_msgs_per_subject (≤ 0: none)
    bool direct;                    //  DIRECT.GET allowed
    uint64_t cursor;                //  next get starts at this sequence
    bool truncated;                 //  more than max messages
    bool trimmed;                   //  per-subject limit may have removed some
    bool changed;                   //  the epoch changed during the read
    wsr_history_entry_t *entries;   //  max entries, data owned (malloc)
    size_t count;
} s_read_t;

//  What the libnats callbacks touch, under its lock. It lives until the
//  owner let go of it and every subscription made on it said it completed
//  (its last message callback is over), so closing a subscription never
//  waits for libnats, nor for the JetStream API (a lost server, a stream
//  without a leader): the owner's thread does not block.
typedef struct {
    pthread_mutex_t lock;
    int refs;                       //  the owner, and each subscription not completed
    bool closed;                    //  no more forwarding
    zsock_t *push;                  //  API replies to the owner (PUSH; NULL once closed)
    zsock_t *live_push;             //  live messages to the owner, or NULL
    char live_epoch [WSR_HISTORY_EPOCH_MAX + 1];    //  epoch live messages carry
} s_shared_t;

struct _wsr_jetstream_t {
    natsConnection *conn;           //  borrowed
    wsr_jetstream_config_t config;  //  strings below are our copies
    char *strings [WSR_JETSTREAM_MAX_SUBJECTS + 1];     //  stream name, subjects
    natsInbox *inbox;               //  replies come to INBOX.<id>
    natsSubscription *replies;      //  on INBOX.*
    char pull_endpoint [64];
    zsock_t *pull;                  //  owner side of the reply queue
    s_shared_t *shared;             //  what libnats' threads use (outlives us)
    s_read_t reads [S_SLOTS];       //  reads; the last slot is for control requests
    size_t inflight;                //  reads in flight
    uint64_t counter;               //  request ids
    int64_t next_sweep;             //  mono ms
    int64_t next_check;             //  mono ms of the next stream check
    bool ready;                     //  stream found
    bool direct;                    //  it allows direct gets
    char epoch [WSR_HISTORY_EPOCH_MAX + 1];
    bool warned;                    //  stream problem logged since last success
    char *live_endpoint;            //  where live messages go, or NULL
    jsCtx *js;                      //  for the live consumers
    char *subjects [WSR_JETSTREAM_MAX_SUBJECTS];    //  the stream's subjects (from its info)
    natsSubscription *live [WSR_JETSTREAM_MAX_SUBJECTS];    //  ordered consumer per subject
    bool live_started;              //  consumers made (maybe not all could be)
    char live_for [WSR_HISTORY_EPOCH_MAX + 1];      //  epoch they were made for
};

//  --------------------------------------------------------------------------
//  libnats threads: forward, touch nothing else

static void
s_on_reply (natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void) nc, (void) sub;
    s_shared_t *self = (s_shared_t *) closure;
    const char *subject = natsMsg_GetSubject (msg);
    const char *dot = strrchr (subject, '.');
    uint64_t id = dot? strtoull (dot + 1, NULL, 10): 0;
    const char *status = "", *sequence = "";
    if (natsMsgHeader_Get (msg, "Status", &status) != NATS_OK)
        status = "";
    if (natsMsgHeader_Get (msg, "Nats-Sequence", &sequence) != NATS_OK)
        sequence = "";
    pthread_mutex_lock (&self->lock);
    if (!self->closed && id) {
        zmsg_t *out = zmsg_new ();
        zmsg_addmem (out, &id, sizeof id);
        zmsg_addstr (out, status);
        zmsg_addstr (out, sequence);
        zmsg_addmem (out, natsMsg_GetData (msg), (size_t) natsMsg_GetDataLength (msg));
        if (zmsg_send (&out, self->push))
            zmsg_destroy (&out);    //  owner saturated: the request times out
    }
    pthread_mutex_unlock (&self->lock);
    natsMsg_Destroy (msg);
}

static void
s_on_live (natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void) nc, (void) sub;
    s_shared_t *self = (s_shared_t *) closure;
    jsMsgMetaData *meta = NULL;
    if (natsMsg_GetMetaData (&meta, msg) == NATS_OK) {
        uint8_t sequence [8];
        uint64_t value = meta->Sequence.Stream;
        for (int i = 7; i >= 0; i--, value >>= 8)
            sequence [i] = (uint8_t) value;
        const char *subject = natsMsg_GetSubject (msg);
        pthread_mutex_lock (&self->lock);
        if (!self->closed && self->live_push) {
            zmsg_t *out = zmsg_new ();
            zmsg_addmem (out, subject, strlen (subject));
            zmsg_addmem (out, natsMsg_GetData (msg), (size_t) natsMsg_GetDataLength (msg));
            zmsg_addmem (out, sequence, sizeof sequence);
            zmsg_addstr (out, self->live_epoch);
            if (zmsg_send (&out, self->live_push))
                zmsg_destroy (&out);    //  like the NATS link: at most once, the reader
                                        //  sees the gap in sequences
        }
        pthread_mutex_unlock (&self->lock);
        jsMsgMetaData_Destroy (meta);
    }
    natsMsg_Destroy (msg);
}

//  Drop a reference to the shared part; the last one frees it.
static void
s_shared_release (s_shared_t *shared)
{
    pthread_mutex_lock (&shared->lock);
    bool last = --shared->refs == 0;
    pthread_mutex_unlock (&shared->lock);
    if (last) {
        pthread_mutex_destroy (&shared->lock);
        free (shared);
    }
}

//  A subscription is over: libnats calls nothing of it any more.
static void
s_on_complete (void *closure)
{
    s_shared_release ((s_shared_t *) closure);
}

//  Hold the shared part for a new subscription until it completes.
//  Without a completion callback (libnats refused it) the reference is
//  never given back: the shared part then leaks rather than being used
//  after it was freed.
static void
s_shared_hold (wsr_jetstream_t *self, natsSubscription *sub)
{
    pthread_mutex_lock (&self->shared->lock);
    self->shared->refs++;
    pthread_mutex_unlock (&self->shared->lock);
    if (natsSubscription_SetOnCompleteCB (sub, s_on_complete, self->shared) != NATS_OK)
        zsys_warning ("jetstream: subscription without completion callback");
}

//  Close a subscription without waiting: no UNSUB-and-delete-consumer round
//  trip (natsSubscription_Destroy only sends UNSUB; the server removes an
//  ephemeral consumer without interest by itself).
static void
s_close_subscription (natsSubscription **sub_p)
{
    natsSubscription_Destroy (*sub_p);
    *sub_p = NULL;
}

//  --------------------------------------------------------------------------
//  Create.
wsr_jetstream_t *
wsr_jetstream_new (natsConnection *conn, const wsr_jetstream_config_t *config,
                   const char *live)
{
    assert (conn && config);
    if (!config->stream || !*config->stream || strpbrk (config->stream, ".*> \t")
    ||  config->size < 1 || config->ttl_s < 1 || config->replicas < 1
    ||  (config->create && !config->subjects [0]))
        return NULL;
    wsr_jetstream_t *self = (wsr_jetstream_t *) zmalloc (sizeof (wsr_jetstream_t));
    self->conn = conn;
    self->config = *config;
    self->config.stream = self->strings [0] = strdup (config->stream);
    for (int i = 0; i < WSR_JETSTREAM_MAX_SUBJECTS && config->subjects [i]; i++)
        self->config.subjects [i] = self->strings [i + 1] = strdup (config->subjects [i]);
    self->shared = (s_shared_t *) zmalloc (sizeof (s_shared_t));
    assert (self->shared);
    pthread_mutex_init (&self->shared->lock, NULL);
    self->shared->refs = 1;
    snprintf (self->pull_endpoint, sizeof self->pull_endpoint, "inproc://wsr-jetstream-%p",
              (void *) self);
    self->pull = zsock_new (ZMQ_PULL);
    zsock_t *push = self->shared->push = zsock_new (ZMQ_PUSH);
    assert (self->pull && push);
    zsock_set_rcvhwm (self->pull, WSR_HWM);
    zsock_set_sndhwm (push, WSR_HWM);
    zsock_set_sndtimeo (push, 0);
    zsock_set_linger (push, 0);
    int rc = zsock_bind (self->pull, "%s", self->pull_endpoint);
    if (rc == 0)
        rc = zsock_connect (push, "%s", self->pull_endpoint);
    if (rc == 0 && live) {
        self->live_endpoint = strdup (live);
        zsock_t *live_push = self->shared->live_push = zsock_new (ZMQ_PUSH);
        assert (live_push);
        zsock_set_sndhwm (live_push, WSR_HWM);
        zsock_set_sndtimeo (live_push, 0);
        zsock_set_linger (live_push, 0);
        rc = zsock_connect (live_push, "%s", live);
    }
    char wildcard [128];
    if (rc == 0 && natsInbox_Create (&self->inbox) == NATS_OK) {
        snprintf (wildcard, sizeof wildcard, "%s.*", self->inbox);
        rc = natsConnection_Subscribe (&self->replies, conn, wildcard, s_on_reply,
                                       self->shared) == NATS_OK? 0: -1;
        if (rc == 0) {
            natsSubscription_SetPendingLimits (self->replies, WSR_HWM, 256 * 1024 * 1024);
            s_shared_hold (self, self->replies);
        }
    }
    else
        rc = -1;
    if (rc) {
        zsys_error ("jetstream: cannot set up for stream %s", config->stream);
        wsr_jetstream_destroy (&self);
    }
    return self;
}

static void
s_read_free (s_read_t *read)
{
    for (size_t i = 0; i < read->count; i++)
        free ((void *) read->entries [i].data);
    free (read->entries);
    free (read->subject);
    memset (read, 0, sizeof *read);
}

//  --------------------------------------------------------------------------
//  Destroy.
void
wsr_jetstream_destroy (wsr_jetstream_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        wsr_jetstream_t *self = *self_p;
        //  Nothing is forwarded from now on; the sockets go in this thread
        pthread_mutex_lock (&self->shared->lock);
        self->shared->closed = true;
        zsock_destroy (&self->shared->push);
        zsock_destroy (&self->shared->live_push);
        pthread_mutex_unlock (&self->shared->lock);
        for (int i = 0; i < WSR_JETSTREAM_MAX_SUBJECTS; i++) {
            s_close_subscription (&self->live [i]);
            free (self->subjects [i]);
        }
        s_close_subscription (&self->replies);
        s_shared_release (self->shared);
        jsCtx_Destroy (self->js);
        zsock_destroy (&self->pull);
        for (int i = 0; i < S_SLOTS; i++)
            s_read_free (&self->reads [i]);
        natsInbox_Destroy (self->inbox);
        for (int i = 0; i <= WSR_JETSTREAM_MAX_SUBJECTS; i++)
            free (self->strings [i]);
        free (self->live_endpoint);
        free (self);
        *self_p = NULL;
    }
}

//  --------------------------------------------------------------------------
//  Requests

//  Publish a JetStream API request for slot; its reply will carry a new id.
static int
s_request (wsr_jetstream_t *self, int slot, const char *api, const char *body)
{
    s_read_t *read = &self->reads [slot];
    read->id = (++self->counter << S_SLOT_BITS) | (uint64_t) slot;
    read->deadline = wsr_util_mono_ms () + WSR_JETSTREAM_TIMEOUT_MS;
    char subject [256], reply [128];
    snprintf (subject, sizeof subject, "$JS.API.%s.%s", api, self->config.stream);
    snprintf (reply, sizeof reply, "%s.%" PRIu64, self->inbox, read->id);
    natsStatus rc = natsConnection_PublishRequestString (self->conn, subject, reply, body);
    return rc == NATS_OK? 0: -1;
}

static int
s_get (wsr_jetstream_t *self, int slot, uint64_t from)
{
    s_read_t *read = &self->reads [slot];
    json_t *body = json_pack ("{sIss}", "seq", (json_int_t) from, "next_by_subj",
                              read->subject);
    char *text = json_dumps (body, JSON_COMPACT);
    json_decref (body);
    int rc = s_request (self, slot, read->direct? "DIRECT.GET": "STREAM.MSG.GET", text);
    free (text);
    return rc;
}

//  Parse a stream info (or create) response. Returns 0, 1 if the stream does
//  not exist, -1 on any other error.
static int
s_parse_info (const uint8_t *data, size_t size, char *epoch, uint64_t *first,
              uint64_t *last, int64_t *per_subject, bool *direct)
{
    json_error_t error;
    json_t *root = json_loadb ((const char *) data, size, 0, &error);
    if (!root)
        return -1;
    int rc = -1;
    json_t *fault = json_object_get (root, "error");
    json_t *config = json_object_get (root, "config");
    json_t *state = json_object_get (root, "state");
    const char *created = json_string_value (json_object_get (root, "created"));
    if (fault)
        rc = json_integer_value (json_object_get (fault, "err_code")) == 10059? 1: -1;
    else
    if (config && state && created) {
        //  "2026-12-05T16:25:20.863383386Z" → "20261205T162520863383386Z"
        size_t len = 0;
        for (const char *c = created; *c && len < WSR_HISTORY_EPOCH_MAX; c++)
            if (isalnum ((unsigned char) *c))
                epoch [len++] = *c;
        epoch [len] = 0;
        *first = (uint64_t) json_integer_value (json_object_get (state, "first_seq"));
        *last = (uint64_t) json_integer_value (json_object_get (state, "last_seq"));
        json_t *limit = json_object_get (config, "max_msgs_per_subject");
        *per_subject = limit? json_integer_value (limit): -1;
        *direct = json_is_true (json_object_get (config, "allow_direct"));
        rc = len? 0: -1;
    }
    json_decref (root);
    return rc;
}

//  Keep the subjects of a stream info response.
static void
s_parse_subjects (wsr_jetstream_t *self, const uint8_t *data, size_t size)
{
    json_error_t error;
    json_t *root = json_loadb ((const char *) data, size, 0, &error);
    json_t *subjects = json_object_get (json_object_get (root, "config"), "subjects");
    for (size_t i = 0; i < WSR_JETSTREAM_MAX_SUBJECTS; i++) {
        const char *subject = json_string_value (json_array_get (subjects, i));
        if (subject && (!self->subjects [i] || strcmp (subject, self->subjects [i]))) {
            free (self->subjects [i]);
            self->subjects [i] = strdup (subject);
        }
        else
        if (!subject) {
            free (self->subjects [i]);
            self->subjects [i] = NULL;
        }
    }
    json_decref (root);
}

//  Parse a get response: 0 and the message (data points into data, or
//  into *decoded, which the caller frees), 1 if there is no such message,
//  -1 on errors.
static int
s_parse_get (bool direct, const char *status, const char *sequence, const uint8_t *data,
             size_t size, uint64_t *seq, const uint8_t **payload, size_t *payload_size,
             uint8_t **decoded)
{
    *decoded = NULL;
    if (direct) {
        if (streq (status, "404"))
            return 1;
        if (*status || !*sequence)
            return -1;
        *seq = strtoull (sequence, NULL, 10);
        *payload = data;
        *payload_size = size;
        return *seq? 0: -1;
    }
    json_error_t error;
    json_t *root = json_loadb ((const char *) data, size, 0, &error);
    if (!root)
        return -1;
    int rc = -1;
    json_t *fault = json_object_get (root, "error");
    json_t *message = json_object_get (root, "message");
    if (fault)
        rc = json_integer_value (json_object_get (fault, "code")) == 404? 1: -1;
    else
    if (message) {
        *seq = (uint64_t) json_integer_value (json_object_get (message, "seq"));
        const char *text = json_string_value (json_object_get (message, "data"));
        size_t text_len = text? strlen (text): 0;
        *decoded = (uint8_t *) malloc (text_len + 1);
        assert (*decoded);
        if (text && *seq && sodium_base642bin (*decoded, text_len + 1, text, text_len, NULL,
                                               payload_size, NULL,
                                               sodium_base64_VARIANT_ORIGINAL) == 0) {
            *payload = *decoded;
            rc = 0;
        }
        else
        if (!text && *seq) {
            *payload = *decoded;        //  no data: empty payload
            *payload_size = 0;
            rc = 0;
        }
    }
    json_decref (root);
    return rc;
}

//  End a read: free the slot, call back (which may start another read).
static void
s_finish (wsr_jetstream_t *self, int slot, int status)
{
    s_read_t read = self->reads [slot];
    memset (&self->reads [slot], 0, sizeof read);
    self->inflight--;
    wsr_history_result_t result = { .status = status, .epoch = "" };
    if (status == 0) {
        bool same = read.any_epoch || streq (read.asked, read.epoch);
        result.epoch = read.epoch;
        result.last = read.last_seq;
        result.entries = read.entries;
        result.count = read.changed? 0: read.count;
        result.complete = same && !read.changed && !read.truncated && !read.trimmed
                       && read.since <= read.last_seq && read.since + 1 >= read.first_seq;
        if (read.max == 0)
            result.complete = result.complete && read.since == read.last_seq;
    }
    read.cb (read.arg, &result);
    s_read_free (&read);
}

//  After the gets: the per-subject check if needed, then the last info.
static void
s_after_gets (wsr_jetstream_t *self, int slot)
{
    s_read_t *read = &self->reads [slot];
    if (!read->truncated && read->per_subject > 0 && read->count >= (size_t) read->per_subject
    &&  read->since > 0) {
        read->step = S_FIRST;
        if (s_get (self, slot, read->first_seq? read->first_seq: 1))
            s_finish (self, slot, -1);
        return;
    }
    read->trimmed = read->trimmed
                 || (read->per_subject > 0 && read->count >= (size_t) read->per_subject);
    read->step = S_INFO_LAST;
    if (s_request (self, slot, "STREAM.INFO", ""))
        s_finish (self, slot, -1);
}

//  A reply for a read.
static void
s_read_reply (wsr_jetstream_t *self, int slot, const char *status, const char *sequence,
              const uint8_t *data, size_t size)
{
    s_read_t *read = &self->reads [slot];
    if (read->step == S_INFO_FIRST || read->step == S_INFO_LAST) {
        char epoch [WSR_HISTORY_EPOCH_MAX + 1];
        uint64_t first, last;
        int64_t per_subject;
        bool direct;
        if (s_parse_info (data, size, epoch, &first, &last, &per_subject, &direct)) {
            s_finish (self, slot, -1);
            return;
        }
        if (read->step == S_INFO_LAST) {
            if (strcmp (epoch, read->epoch)) {
                read->changed = true;
                snprintf (read->epoch, sizeof read->epoch, "%s", epoch);
                read->last_seq = last;
            }
            s_finish (self, slot, 0);
            return;
        }
        snprintf (read->epoch, sizeof read->epoch, "%s", epoch);
        read->first_seq = first;
        read->last_seq = last;
        read->per_subject = per_subject;
        read->direct = direct;
        read->cursor = read->since + 1;
        if (read->max == 0 || read->since >= read->last_seq)
            s_finish (self, slot, 0);           //  nothing to get
        else {
            read->step = S_GET;
            if (s_get (self, slot, read->cursor))
                s_finish (self, slot, -1);
        }
        return;
    }
    uint64_t seq = 0;
    const uint8_t *payload = NULL;
    size_t payload_size = 0;
    uint8_t *decoded = NULL;
    int rc = s_parse_get (read->direct, status, sequence, data, size, &seq, &payload,
                          &payload_size, &decoded);
    if (rc < 0) {
        free (decoded);
        s_finish (self, slot, -1);
        return;
    }
    if (read->step == S_FIRST) {
        read->trimmed = rc == 1 || seq > read->since;
        free (decoded);
        read->step = S_INFO_LAST;
        if (s_request (self, slot, "STREAM.INFO", ""))
            s_finish (self, slot, -1);
        return;
    }
    //  S_GET
    if (rc == 1 || seq > read->last_seq || seq < read->cursor) {
        free (decoded);
        s_after_gets (self, slot);
        return;
    }
    if (read->count == read->max) {
        read->truncated = true;
        free (decoded);
        s_after_gets (self, slot);
        return;
    }
    uint8_t *copy = (uint8_t *) malloc (payload_size? payload_size: 1);
    assert (copy);
    if (payload_size)
        memcpy (copy, payload, payload_size);
    free (decoded);
    read->entries [read->count++] = (wsr_history_entry_t) { seq, copy, payload_size, 0 };
    read->cursor = seq + 1;
    if (read->cursor > read->last_seq)
        s_after_gets (self, slot);
    else
    if (s_get (self, slot, read->cursor))
        s_finish (self, slot, -1);
}

//  --------------------------------------------------------------------------
//  Read since a sequence.
int
wsr_jetstream_read (wsr_jetstream_t *self, const char *subject, uint64_t since,
                    const char *epoch, size_t max, wsr_history_read_fn *cb, void *arg)
{
    assert (self && subject && cb);
    assert (max <= WSR_HISTORY_MAX_READ);
    if (self->inflight >= WSR_JETSTREAM_MAX_READS)
        return -1;
    int slot = 0;
    while (self->reads [slot].step != S_IDLE)
        slot++;
    assert (slot < WSR_JETSTREAM_MAX_READS);
    s_read_t *read = &self->reads [slot];
    read->step = S_INFO_FIRST;
    read->cb = cb;
    read->arg = arg;
    read->subject = strdup (subject);
    read->since = since;
    read->max = max;
    read->any_epoch = epoch == NULL;
    snprintf (read->asked, sizeof read->asked, "%s", epoch? epoch: "");
    if (epoch && strlen (epoch) > WSR_HISTORY_EPOCH_MAX)
        snprintf (read->asked, sizeof read->asked, "-");        //  never matches
    read->entries = (wsr_history_entry_t *) malloc ((max? max: 1) * sizeof (wsr_history_entry_t));
    assert (read->entries);
    self->inflight++;
    if (s_request (self, slot, "STREAM.INFO", "")) {
        //  Not even queued (connection closed): fail it from process()
        read->deadline = 0;
    }
    return 0;
}

//  --------------------------------------------------------------------------
//  Reads in flight.
size_t
wsr_jetstream_inflight (wsr_jetstream_t *self)
{
    assert (self);
    return self->inflight;
}

//  --------------------------------------------------------------------------
//  Socket, timeout.
zsock_t *
wsr_jetstream_socket (wsr_jetstream_t *self)
{
    assert (self);
    return self->pull;
}

long
wsr_jetstream_timeout (wsr_jetstream_t *self)
{
    assert (self);
    int64_t now = wsr_util_mono_ms ();
    int64_t due = self->next_check < self->next_sweep? self->next_check: self->next_sweep;
    return due <= now? 0: (due - now > 100? 100: (long) (due - now));
}

//  --------------------------------------------------------------------------
//  Ready, epoch.
bool
wsr_jetstream_ready (wsr_jetstream_t *self)
{
    assert (self);
    return self->ready;
}

const char *
wsr_jetstream_epoch (wsr_jetstream_t *self)
{
    assert (self);
    return self->epoch;
}

//  --------------------------------------------------------------------------
//  Stream control: look up, create, follow the epoch, the live consumer

static void
s_create (wsr_jetstream_t *self)
{
    json_t *subjects = json_array ();
    for (int i = 0; i < WSR_JETSTREAM_MAX_SUBJECTS && self->config.subjects [i]; i++)
        json_array_append_new (subjects, json_string (self->config.subjects [i]));
    json_t *body = json_pack ("{sssosIsIsIsssssbss}",
        "name", self->config.stream, "subjects", subjects,
        "max_msgs_per_subject", (json_int_t) self->config.size,
        "max_age", (json_int_t) self->config.ttl_s * 1000000000,
        "num_replicas", (json_int_t) self->config.replicas,
        "storage", self->config.memory? "memory": "file",
        "retention", "limits", "allow_direct", true, "discard", "old");
    char *text = json_dumps (body, JSON_COMPACT);
    json_decref (body);
    self->reads [S_CONTROL].step = S_CREATE;
    if (s_request (self, S_CONTROL, "STREAM.CREATE", text))
        self->reads [S_CONTROL].step = S_IDLE;
    free (text);
}

//  Where the live consumer of subject resumes: after the sequence the
//  owner saw last, if the stream is the one it was seen in (else 0).
static uint64_t
s_resume_point (wsr_jetstream_t *self, const char *subject)
{
    if (!*self->config.resume_epoch || strcmp (self->config.resume_epoch, self->epoch))
        return 0;
    for (int i = 0; i < WSR_JETSTREAM_MAX_SUBJECTS && self->config.subjects [i]; i++)
        if (streq (self->config.subjects [i], subject))
            return self->config.resume [i];
    return 0;
}

//  (Re)make the live consumers, one ordered consumer per subject of the
//  stream (a consumer filters on one subject): from new messages the first
//  time, from the first message of a new stream after the epoch changed.
//  Blocks for one request per subject.
static void
s_live_start (wsr_jetstream_t *self, bool from_start)
{
    for (int i = 0; i < WSR_JETSTREAM_MAX_SUBJECTS; i++)
        s_close_subscription (&self->live [i]);
    self->live_started = true;
    snprintf (self->live_for, sizeof self->live_for, "%s", self->epoch);
    if (!self->js) {
        jsOptions options;
        jsOptions_Init (&options);
        options.Wait = WSR_JETSTREAM_CONSUMER_WAIT_MS;
        if (natsConnection_JetStream (&self->js, self->conn, &options) != NATS_OK)
            return;
    }
    for (int i = 0; i < WSR_JETSTREAM_MAX_SUBJECTS && self->subjects [i]; i++) {
        jsSubOptions options;
        jsSubOptions_Init (&options);
        options.Stream = self->config.stream;
        options.Ordered = true;
        options.Config.DeliverPolicy = from_start? js_DeliverAll: js_DeliverNew;
        //  Missed heartbeats make libnats remake the consumer (a lost
        //  server): 1 s, not its 5 s default, so it notices in 2 s
        options.Config.Heartbeat = (int64_t) WSR_JETSTREAM_HEARTBEAT_MS * 1000000;
        uint64_t resume = s_resume_point (self, self->subjects [i]);
        if (!from_start && resume) {
            options.Config.DeliverPolicy = js_DeliverByStartSequence;
            options.Config.OptStartSeq = resume + 1;
        }
        jsErrCode code = 0;
        natsStatus rc = js_Subscribe (&self->live [i], self->js, self->subjects [i], s_on_live,
                                      self->shared, NULL, &options, &code);
        if (rc == NATS_OK) {
            natsSubscription_SetPendingLimits (self->live [i], WSR_HWM, 256 * 1024 * 1024);
            s_shared_hold (self, self->live [i]);
        }
        else {
            self->live [i] = NULL;
            self->live_started = false;         //  try again at the next check
            zsys_warning ("jetstream: live consumer on %s %s: %s (%d)", self->config.stream,
                          self->subjects [i], natsStatus_GetText (rc), (int) code);
        }
    }
    if (self->live_started)
        zsys_info ("jetstream: live consumers on stream %s (epoch %s)", self->config.stream,
                   self->epoch);
}

static void
s_control_reply (wsr_jetstream_t *self, const uint8_t *data, size_t size)
{
    s_read_t *control = &self->reads [S_CONTROL];
    s_step_t step = control->step;
    control->step = S_IDLE;
    char epoch [WSR_HISTORY_EPOCH_MAX + 1];
    uint64_t first, last;
    int64_t per_subject;
    bool direct;
    int rc = s_parse_info (data, size, epoch, &first, &last, &per_subject, &direct);
    if (rc == 0)
        s_parse_subjects (self, data, size);
    if (rc == 1 && step == S_CHECK && self->config.create) {
        s_create (self);
        return;
    }
    if (rc) {
        if (!self->warned)
            zsys_warning ("jetstream: stream %s %s: %.*s", self->config.stream,
                          rc == 1? "not found": "refused", (int) (size > 200? 200: size),
                          (const char *) data);
        self->warned = true;
        return;
    }
    self->warned = false;
    if (!self->ready || strcmp (epoch, self->epoch))
        zsys_info ("jetstream: stream %s %s, epoch %s", self->config.stream,
                   step == S_CREATE? "created": "found", epoch);
    self->ready = true;
    self->direct = direct;
    snprintf (self->epoch, sizeof self->epoch, "%s", epoch);
    pthread_mutex_lock (&self->shared->lock);
    snprintf (self->shared->live_epoch, sizeof self->shared->live_epoch, "%s", epoch);
    pthread_mutex_unlock (&self->shared->lock);
    if (self->live_endpoint && (!self->live_started || strcmp (self->live_for, epoch)))
        s_live_start (self, *self->live_for && strcmp (self->live_for, epoch));
}

//  --------------------------------------------------------------------------
//  Process replies and timers.
void
wsr_jetstream_process (wsr_jetstream_t *self)
{
    assert (self);
    for (int budget = WSR_WORKER_BUDGET;
         budget && (zsock_events (self->pull) & ZMQ_POLLIN); budget--) {
        zmsg_t *msg = zmsg_recv (self->pull);
        if (!msg)
            break;
        zframe_t *id_frame = zmsg_first (msg);
        zframe_t *status = zmsg_next (msg);
        zframe_t *sequence = zmsg_next (msg);
        zframe_t *data = zmsg_next (msg);
        uint64_t id = 0;
        if (data && zframe_size (id_frame) == sizeof id)
            memcpy (&id, zframe_data (id_frame), sizeof id);
        int slot = (int) (id & ((1u << S_SLOT_BITS) - 1));
        if (id && slot < S_SLOTS && self->reads [slot].step != S_IDLE
        &&  self->reads [slot].id == id) {
            char *status_text = zframe_strdup (status);
            char *sequence_text = zframe_strdup (sequence);
            if (slot == S_CONTROL)
                s_control_reply (self, zframe_data (data), zframe_size (data));
            else
                s_read_reply (self, slot, status_text, sequence_text, zframe_data (data),
                              zframe_size (data));
            free (status_text);
            free (sequence_text);
        }
        zmsg_destroy (&msg);
    }
    int64_t now = wsr_util_mono_ms ();
    if (now >= self->next_sweep) {
        self->next_sweep = now + S_SWEEP_MS;
        for (int slot = 0; slot < WSR_JETSTREAM_MAX_READS; slot++)
            if (self->reads [slot].step != S_IDLE && now >= self->reads [slot].deadline)
                s_finish (self, slot, -1);
        if (self->reads [S_CONTROL].step != S_IDLE && now >= self->reads [S_CONTROL].deadline)
            self->reads [S_CONTROL].step = S_IDLE;
    }
    if (now >= self->next_check && self->reads [S_CONTROL].step == S_IDLE
    &&  natsConnection_Status (self->conn) == NATS_CONN_STATUS_CONNECTED) {
        self->next_check = now + WSR_JETSTREAM_CHECK_MS;
        self->reads [S_CONTROL].step = S_CHECK;
        if (s_request (self, S_CONTROL, "STREAM.INFO", ""))
            self->reads [S_CONTROL].step = S_IDLE;
    }
}

//  --------------------------------------------------------------------------
//  Selftest

static const char *
s_nats_server (void)
{
    if (access ("/usr/sbin/nats-server", X_OK) == 0)
        return "/usr/sbin/nats-server";
    if (access ("/usr/bin/nats-server", X_OK) == 0)
        return "/usr/bin/nats-server";
    return NULL;
}

static pid_t
s_start_nats (int port, const char *store)
{
    char port_text [16];
    snprintf (port_text, sizeof port_text, "%d", port);
    const char *argv [] = { s_nats_server (), "-js", "-sd", store, "-a", "127.0.0.1",
                            "-p", port_text, NULL };
    return wsr_util_spawn (argv);
}

//  Run process() until *flag or ms pass.
static void
s_run (wsr_jetstream_t *self, int ms, const bool *flag)
{
    int64_t end = wsr_util_mono_ms () + ms;
    while (wsr_util_mono_ms () < end && !(flag && *flag)) {
        zmq_pollitem_t item = { zsock_resolve (wsr_jetstream_socket (self)), 0, ZMQ_POLLIN, 0 };
        long timeout = wsr_jetstream_timeout (self);
        zmq_poll (&item, 1, timeout > 10? 10: timeout);
        wsr_jetstream_process (self);
    }
}

typedef struct {
    bool done;
    int status;
    char epoch [WSR_HISTORY_EPOCH_MAX + 1];
    uint64_t last;
    bool complete;
    size_t count;
    uint64_t offsets [64];
    char data [64][16];
} s_got_t;

static void
s_on_read (void *arg, const wsr_history_result_t *result)
{
    s_got_t *got = (s_got_t *) arg;
    assert (!got->done);
    got->done = true;
    got->status = result->status;
    snprintf (got->epoch, sizeof got->epoch, "%s", result->epoch);
    got->last = result->last;
    got->complete = result->complete;
    got->count = result->count;
    for (size_t i = 0; i < result->count && i < 64; i++) {
        got->offsets [i] = result->entries [i].offset;
        snprintf (got->data [i], sizeof got->data [i], "%.*s", (int) result->entries [i].size,
                  (const char *) result->entries [i].data);
    }
}

static s_got_t
s_read (wsr_jetstream_t *self, const char *subject, uint64_t since, const char *epoch,
        size_t max)
{
    s_got_t got = { 0 };
    assert (wsr_jetstream_read (self, subject, since, epoch, max, s_on_read, &got) == 0);
    s_run (self, 5000, &got.done);
    assert (got.done && wsr_jetstream_inflight (self) == 0);
    return got;
}

//  Publish plain messages and wait until the server has them.
static void
s_publish (natsConnection *nc, const char *subject, const char *data)
{
    assert (natsConnection_PublishString (nc, subject, data) == NATS_OK);
    assert (natsConnection_Flush (nc) == NATS_OK);
}

//  Next live message: its subject, data, sequence, epoch.
static bool
s_live (zsock_t *pull, char *subject, char *data, uint64_t *seq, char *epoch, int ms)
{
    zpoller_t *poller = zpoller_new (pull, NULL);
    bool got = zpoller_wait (poller, ms) != NULL;
    zpoller_destroy (&poller);
    if (!got)
        return false;
    zmsg_t *msg = zmsg_recv (pull);
    assert (msg && zmsg_size (msg) == 4);
    char *s = zmsg_popstr (msg);
    char *d = zmsg_popstr (msg);
    zframe_t *sequence = zmsg_pop (msg);
    char *e = zmsg_popstr (msg);
    assert (zframe_size (sequence) == 8);
    *seq = 0;
    for (int i = 0; i < 8; i++)
        *seq = (*seq << 8) | zframe_data (sequence) [i];
    strcpy (subject, s);
    strcpy (data, d);
    strcpy (epoch, e);
    zstr_free (&s);
    zstr_free (&d);
    zstr_free (&e);
    zframe_destroy (&sequence);
    zmsg_destroy (&msg);
    return true;
}

//  The race on NATS: a thread publishes plain messages (~15k/s) on
//  S_SUBJECTS subjects, payload = the subject's counter 1, 2, ...; the
//  main thread recovers subjects from random stream sequences, merging the
//  read with the live consumer's messages (wsr_recovery), and checks that
//  the counters come out with no gap and no duplicate.

#define S_SUBJECTS      4
#define S_RACE_MAX      800000      //  messages published at most (40 s at the pace)
#define S_RACE_ROUNDS   100
#define S_SHADOW        (S_RACE_MAX / S_SUBJECTS + 1)   //  messages of one subject

typedef struct {
    int port;
    atomic_bool stop;
    atomic_long published;
} s_racer_t;

static void *
s_racer (void *args)
{
    s_racer_t *racer = (s_racer_t *) args;
    char url [64];
    snprintf (url, sizeof url, "nats://127.0.0.1:%d", racer->port);
    natsConnection *nc = NULL;
    assert (natsConnection_ConnectTo (&nc, url) == NATS_OK);
    long counters [S_SUBJECTS] = { 0 };
    for (long i = 0; i < S_RACE_MAX && !atomic_load (&racer->stop); i++) {
        char subject [32], data [32];
        int k = (int) (i % S_SUBJECTS);
        snprintf (subject, sizeof subject, "race.s%d", k);
        snprintf (data, sizeof data, "%ld", ++counters [k]);
        assert (natsConnection_PublishString (nc, subject, data) == NATS_OK);
        if (i % 500 == 499)
            assert (natsConnection_Flush (nc) == NATS_OK);
        if (i % 20 == 19)
            zclock_sleep (1);           //  ~10-20k/s: what the live consumer keeps up with
                                        //  here (at full speed it lags by seconds)
        atomic_store (&racer->published, i + 1);
    }
    natsConnection_FlushTimeout (nc, 2000);
    natsConnection_Destroy (nc);
    return NULL;
}

typedef struct {
    uint64_t *seqs;                 //  per subject: every sequence seen live, in order
    long *counters;                 //  ... and its payload counter
    size_t count;
} s_shadow_t;

typedef struct {
    uint64_t seqs [S_SHADOW];       //  emitted, in order
    long counters [S_SHADOW];
    size_t count;
} s_emitted_t;

static void
s_emit (void *arg, uint64_t offset, const char *epoch, const uint8_t *data, size_t size)
{
    (void) epoch;
    s_emitted_t *emitted = (s_emitted_t *) arg;
    assert (offset && emitted->count < S_SHADOW);
    char text [32];
    snprintf (text, sizeof text, "%.*s", (int) size, (const char *) data);
    emitted->seqs [emitted->count] = offset;
    emitted->counters [emitted->count++] = atol (text);
}

static void
s_race_read_done (void *arg, const wsr_history_result_t *result)
{
    wsr_recovery_t *recovery = (wsr_recovery_t *) arg;
    assert (result->status == 0 && result->complete);
    assert (wsr_recovery_history (recovery, result) == 0);
}

//  Take the live messages waiting: remember them, feed those of subject k
//  to recovery (if not NULL).
static void
s_drain (zsock_t *live, s_shadow_t *shadow, uint64_t *seen, wsr_recovery_t *recovery, int k)
{
    while (zsock_events (live) & ZMQ_POLLIN) {
        zmsg_t *msg = zmsg_recv (live);
        char *name = zmsg_popstr (msg);
        zframe_t *data = zmsg_pop (msg);
        zframe_t *sequence = zmsg_pop (msg);
        char *epoch = zmsg_popstr (msg);
        uint64_t seq = 0;
        for (int i = 0; i < 8; i++)
            seq = (seq << 8) | zframe_data (sequence) [i];
        assert (seq > *seen);
        *seen = seq;
        int j = name [6] - '0';
        char text [32];
        snprintf (text, sizeof text, "%.*s", (int) zframe_size (data),
                  (const char *) zframe_data (data));
        s_shadow_t *sh = &shadow [j];
        assert (sh->count < S_SHADOW);
        sh->seqs [sh->count] = seq;
        sh->counters [sh->count++] = atol (text);
        if (j == k && recovery)
            assert (wsr_recovery_live (recovery, seq, 0, epoch, zframe_data (data),
                                       zframe_size (data)) == WSR_RECOVERY_OK);
        zstr_free (&name);
        zstr_free (&epoch);
        zframe_destroy (&data);
        zframe_destroy (&sequence);
        zmsg_destroy (&msg);
    }
}

static void
s_test_race (natsConnection *nc, int port, bool verbose)
{
    (void) nc;
    //  Under ASan (scripts/sanitize sets WSR_SANITIZER) the live consumer
    //  lags the 20k/s publisher by seconds and a round's read cannot close
    //  the gap in time: this race runs in the plain build only (the rest of
    //  the selftest still runs here). Seen 2026-12-06, left to look into:
    //  with longer deadlines a round under ASan ended recovered:false.
    if (getenv ("WSR_SANITIZER")) {
        printf ("\n  nats race: not under a sanitizer (timing-bound)\n");
        return;
    }
    wsr_jetstream_config_t config = {
        .stream = "WSR_RACE", .create = true, .size = 100000, .ttl_s = 60, .replicas = 1,
        .memory = true, .subjects = { "race.*" } };
    zsock_t *live = zsock_new_pull ("inproc://wsr-jetstream-race");
    wsr_jetstream_t *js = wsr_jetstream_new (nc, &config, "inproc://wsr-jetstream-race");
    s_run (js, 5000, &js->live_started);
    assert (js->live_started && js->live [0]);
    s_racer_t racer = { .port = port };
    pthread_t thread;
    assert (pthread_create (&thread, NULL, s_racer, &racer) == 0);
    s_shadow_t shadow [S_SUBJECTS];
    for (int k = 0; k < S_SUBJECTS; k++) {
        shadow [k].seqs = (uint64_t *) malloc (S_SHADOW * sizeof (uint64_t));
        shadow [k].counters = (long *) malloc (S_SHADOW * sizeof (long));
        shadow [k].count = 0;
    }
    s_emitted_t *emitted = (s_emitted_t *) zmalloc (sizeof (s_emitted_t));
    uint64_t seen = 0;                  //  highest sequence seen live
    int64_t read_ms = 0;                //  total time reads took
    int64_t deadline = wsr_util_mono_ms () + 5000;
    while (seen < 2000 && wsr_util_mono_ms () < deadline) {
        zpoller_t *poller = zpoller_new (live, NULL);
        zpoller_wait (poller, 10);
        zpoller_destroy (&poller);
        s_drain (live, shadow, &seen, NULL, 0);
    }
    int rounds = 0;
    int64_t end = wsr_util_mono_ms () + 40000;      //  slow when the machine is busy
    while (rounds < S_RACE_ROUNDS && wsr_util_mono_ms () < end) {
        int k = (int) randombytes_uniform (S_SUBJECTS);
        char subject [32];
        snprintf (subject, sizeof subject, "race.s%d", k);
        uint64_t back = randombytes_uniform (240);             //  about 60 of the subject
        uint64_t since = seen > back? seen - back: 0;
        emitted->count = 0;
        wsr_recovery_t *recovery = wsr_recovery_new (wsr_jetstream_epoch (js), since, 0, 0,
                                                     s_emit, emitted);
        bool asked = false;
        int64_t asked_at = 0;
        int64_t round_end = wsr_util_mono_ms () + 3000;
        while (wsr_util_mono_ms () < round_end
           &&  (wsr_recovery_state (recovery) != WSR_RECOVERY_LIVE || emitted->count < 20)) {
            zmq_pollitem_t items [2] = {
                { zsock_resolve (wsr_jetstream_socket (js)), 0, ZMQ_POLLIN, 0 },
                { zsock_resolve (live), 0, ZMQ_POLLIN, 0 } };
            zmq_poll (items, 2, 5);
            wsr_jetstream_process (js);
            s_drain (live, shadow, &seen, recovery, k);
            //  Read after a random while of buffering
            if (!asked && randombytes_uniform (3) == 0) {
                asked = true;
                asked_at = wsr_util_mono_ms ();
                assert (wsr_jetstream_read (js, subject, since, wsr_jetstream_epoch (js),
                                            WSR_HISTORY_MAX_READ, s_race_read_done,
                                            recovery) == 0);
            }
            if (wsr_recovery_state (recovery) == WSR_RECOVERY_READY) {
                read_ms += wsr_util_mono_ms () - asked_at;
                assert (wsr_recovery_recovered (recovery));
                wsr_recovery_flush (recovery);
            }
            if (atomic_load (&racer.published) >= S_RACE_MAX && !asked)
                break;
        }
        if (wsr_recovery_state (recovery) != WSR_RECOVERY_LIVE) {
            wsr_recovery_destroy (&recovery);
            break;                          //  the publisher is done
        }
        //  The subject's messages after since, exactly, in order
        s_shadow_t *sh = &shadow [k];
        size_t first = 0;
        while (first < sh->count && sh->seqs [first] <= since)
            first++;
        assert (emitted->count >= 20 && first + emitted->count <= sh->count);
        for (size_t i = 0; i < emitted->count; i++) {
            assert (emitted->seqs [i] == sh->seqs [first + i]);
            assert (emitted->counters [i] == sh->counters [first + i]);
            assert (emitted->counters [i] == sh->counters [first] + (long) i);
        }
        wsr_recovery_destroy (&recovery);
        rounds++;
    }
    atomic_store (&racer.stop, true);
    pthread_join (thread, NULL);
    assert (rounds >= 10);
    if (verbose)
        printf ("\n  nats race: %d rounds, %ld published, reads took %" PRId64 " ms on "
                "average\n", rounds, (long) atomic_load (&racer.published),
                rounds? read_ms / rounds: 0);
    for (int k = 0; k < S_SUBJECTS; k++) {
        free (shadow [k].seqs);
        free (shadow [k].counters);
    }
    free (emitted);
    wsr_jetstream_destroy (&js);
    zsock_destroy (&live);
}

void
wsr_jetstream_test (bool verbose)
{
    wsr_jetstream_config_t config = {
        .stream = "WSR_TEST", .create = true, .size = 5, .ttl_s = 60, .replicas = 1,
        .memory = true,
        .subjects = { "world.updates.user.*", "world.updates.channel.*" } };
    wsr_jetstream_config_t bad = config;
    bad.stream = "a.b";
    assert (wsr_jetstream_new ((natsConnection *) &bad, &bad, NULL) == NULL);
    bad = config;
    bad.size = 0;
    assert (wsr_jetstream_new ((natsConnection *) &bad, &bad, NULL) == NULL);
    if (!s_nats_server ()) {
        printf ("SKIP (nats-server not installed)\n");
        exit (77);
    }
    char store [] = "/tmp/wsr-jetstream-XXXXXX";
    assert (mkdtemp (store));
    int port = wsr_util_free_port ();
    pid_t server = s_start_nats (port, store);
    assert (server > 0);
    char url [64];
    snprintf (url, sizeof url, "nats://127.0.0.1:%d", port);
    natsConnection *nc = NULL;
    int64_t deadline = wsr_util_mono_ms () + 5000;
    while (natsConnection_ConnectTo (&nc, url) != NATS_OK) {
        assert (wsr_util_mono_ms () < deadline);
        zclock_sleep (20);
    }
    zsock_t *live = zsock_new_pull ("inproc://wsr-jetstream-test-live");
    assert (live);

    //  Created when missing; the live consumer starts with it
    wsr_jetstream_t *js = wsr_jetstream_new (nc, &config, "inproc://wsr-jetstream-test-live");
    assert (js && !wsr_jetstream_ready (js) && streq (wsr_jetstream_epoch (js), ""));
    s_run (js, 5000, &js->ready);
    assert (wsr_jetstream_ready (js));
    char epoch [WSR_HISTORY_EPOCH_MAX + 1];
    snprintf (epoch, sizeof epoch, "%s", wsr_jetstream_epoch (js));
    assert (strlen (epoch) > 14 && strspn (epoch, "0123456789TZ") == strlen (epoch));
    //  Sequences 1..5 across two subjects; live messages carry them
    const char *order [] = { "u1", "u2", "u1", "u2", "u1" };
    for (int i = 0; i < 5; i++) {
        char subject [64], data [16];
        snprintf (subject, sizeof subject, "world.updates.user.%s", order [i]);
        snprintf (data, sizeof data, "m%d", i + 1);
        s_publish (nc, subject, data);
    }
    for (int i = 0; i < 5; i++) {
        char subject [64], data [16], live_epoch [64];
        uint64_t seq;
        assert (s_live (live, subject, data, &seq, live_epoch, 2000));
        assert (seq == (uint64_t) i + 1 && streq (live_epoch, epoch));
        assert (streq (subject + strlen ("world.updates.user."), order [i]));
    }
    //  Reads from a sequence: the subject's messages, up to the last
    s_got_t got = s_read (js, "world.updates.user.u1", 0, epoch, 100);
    assert (got.status == 0 && got.complete && got.last == 5 && streq (got.epoch, epoch));
    assert (got.count == 3 && got.offsets [0] == 1 && got.offsets [1] == 3);
    assert (got.offsets [2] == 5 && streq (got.data [2], "m5"));
    got = s_read (js, "world.updates.user.u1", 1, epoch, 100);
    assert (got.complete && got.count == 2 && got.offsets [0] == 3);
    if (verbose) {
        //  Latency of a small read on a quiet server: 2 infos + 3 gets
        int64_t start = zclock_usecs ();
        for (int i = 0; i < 100; i++)
            s_read (js, "world.updates.user.u1", 0, epoch, 100);
        printf ("\n  read of 3 entries: %" PRId64 " us\n", (zclock_usecs () - start) / 100);
    }
    got = s_read (js, "world.updates.user.u2", 4, epoch, 100);
    assert (got.complete && got.count == 0 && got.last == 5);
    got = s_read (js, "world.updates.user.u1", 0, epoch, 2);        //  max reached
    assert (!got.complete && got.count == 2);
    got = s_read (js, "world.updates.user.u1", 0, "otherepoch", 100);
    assert (got.status == 0 && !got.complete);
    got = s_read (js, "world.updates.user.u1", 9, epoch, 100);      //  ahead of the stream
    assert (!got.complete && got.count == 0);
    got = s_read (js, "world.updates.user.u1", 0, NULL, 0);         //  position only
    assert (got.status == 0 && got.last == 5 && got.count == 0 && !got.complete);
    got = s_read (js, "world.updates.user.u1", 5, NULL, 0);
    assert (got.complete);
    //  The per-subject limit (5): u1 gets 7 more, seqs 6..12, keeps 8..12
    for (int i = 6; i <= 12; i++) {
        char data [16];
        snprintf (data, sizeof data, "m%d", i);
        s_publish (nc, "world.updates.user.u1", data);
    }
    got = s_read (js, "world.updates.user.u1", 8, epoch, 100);
    assert (got.complete && got.count == 4 && got.offsets [0] == 9);
    got = s_read (js, "world.updates.user.u1", 5, epoch, 100);      //  6 and 7 are gone
    assert (!got.complete && got.count == 5 && got.offsets [0] == 8);
    got = s_read (js, "world.updates.user.u2", 2, epoch, 100);      //  others untouched
    assert (got.complete && got.count == 1 && got.offsets [0] == 4 && got.last == 12);
    //  A purge removes from the start of the stream: not complete any more
    jsCtx *ctx = NULL;
    assert (natsConnection_JetStream (&ctx, nc, NULL) == NATS_OK);
    jsErrCode code = 0;
    assert (js_PurgeStream (ctx, "WSR_TEST", NULL, &code) == NATS_OK);
    got = s_read (js, "world.updates.user.u2", 2, epoch, 100);
    assert (got.status == 0 && !got.complete && got.count == 0);
    got = s_read (js, "world.updates.user.u2", 12, epoch, 100);
    assert (got.complete);

    //  An existing stream is used as it is, also without direct gets
    jsStreamConfig plain;
    jsStreamConfig_Init (&plain);
    const char *subjects [] = { "other.>" };
    plain.Name = "WSR_PLAIN";
    plain.Subjects = subjects;
    plain.SubjectsLen = 1;
    plain.Storage = js_MemoryStorage;
    assert (js_AddStream (NULL, ctx, &plain, NULL, &code) == NATS_OK);
    s_publish (nc, "other.a", "p1");
    s_publish (nc, "other.b", "p2");
    s_publish (nc, "other.a", "");
    wsr_jetstream_config_t existing = { .stream = "WSR_PLAIN", .size = 1, .ttl_s = 1,
                                        .replicas = 1 };
    wsr_jetstream_t *js2 = wsr_jetstream_new (nc, &existing, NULL);
    assert (js2);
    s_run (js2, 5000, &js2->ready);
    assert (wsr_jetstream_ready (js2) && !js2->direct);
    got = s_read (js2, "other.a", 0, wsr_jetstream_epoch (js2), 100);
    assert (got.complete && got.count == 2 && got.offsets [1] == 3);
    assert (streq (got.data [0], "p1") && streq (got.data [1], ""));
    wsr_jetstream_destroy (&js2);
    //  A missing stream that we may not create: never ready, reads fail
    existing.stream = "WSR_NONE";
    js2 = wsr_jetstream_new (nc, &existing, NULL);
    s_run (js2, 300, NULL);
    assert (!wsr_jetstream_ready (js2));
    got = s_read (js2, "other.a", 0, NULL, 100);
    assert (got.status == -1);
    wsr_jetstream_destroy (&js2);

    //  The stream made again: a new epoch, followed by the live consumer
    //  from the new stream's first message
    assert (js_DeleteStream (ctx, "WSR_TEST", NULL, &code) == NATS_OK);
    deadline = wsr_util_mono_ms () + 5000;
    while (streq (wsr_jetstream_epoch (js), epoch) && wsr_util_mono_ms () < deadline)
        s_run (js, 50, NULL);
    assert (!streq (wsr_jetstream_epoch (js), epoch));
    s_publish (nc, "world.updates.channel.c1", "new");
    char subject [64], data [16] = "", live_epoch [64];
    uint64_t seq;
    //  (after the 7 live messages of u1 that were not read above)
    for (int i = 0; i < 8 && !streq (data, "new"); i++)
        assert (s_live (live, subject, data, &seq, live_epoch, 2000));
    assert (seq == 1 && streq (data, "new") && streq (live_epoch, wsr_jetstream_epoch (js)));
    got = s_read (js, "world.updates.channel.c1", 0, epoch, 100);   //  the old epoch
    assert (got.status == 0 && !got.complete && got.last == 1);
    got = s_read (js, "world.updates.channel.c1", 0, wsr_jetstream_epoch (js), 100);
    assert (got.complete && got.count == 1);

    //  Recoveries racing a publisher
    s_test_race (nc, port, verbose);

    //  Reads in flight are bounded; the server gone, they time out
    wsr_jetstream_destroy (&js);
    config.create = false;
    js = wsr_jetstream_new (nc, &config, NULL);
    s_run (js, 5000, &js->ready);
    int sent = 0;
    s_got_t *many = (s_got_t *) zmalloc (sizeof (s_got_t) * (WSR_JETSTREAM_MAX_READS + 1));
    wsr_util_reap (server);
    server = -1;
    while (wsr_jetstream_read (js, "world.updates.user.u1", 0, NULL, 1, s_on_read,
                               &many [sent]) == 0)
        sent++;
    assert (sent == WSR_JETSTREAM_MAX_READS);
    deadline = wsr_util_mono_ms () + WSR_JETSTREAM_TIMEOUT_MS + 3000;
    while (wsr_jetstream_inflight (js) && wsr_util_mono_ms () < deadline)
        s_run (js, 50, NULL);
    assert (wsr_jetstream_inflight (js) == 0);
    for (int i = 0; i < sent; i++)
        assert (many [i].done && many [i].status == -1);
    free (many);
    wsr_jetstream_destroy (&js);
    jsCtx_Destroy (ctx);
    natsConnection_Destroy (nc);
    zsock_destroy (&live);
    char command [128];
    snprintf (command, sizeof command, "rm -rf %s", store);
    assert (system (command) == 0);
}
