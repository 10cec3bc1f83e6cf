//  wsr_v1sess — one wsrouter.v1 session's opening: hello, recovery, welcome
//
//  A v1 session says hello first; the server answers welcome, then, for
//  each topic the client asked to recover, the publications it missed, then
//  live ones, with no gap and no duplicate across the switch
//  (docs/PROTOCOL.md). This object runs that opening for one session, then
//  goes away (the worker frees it once wsr_v1sess_live): a live v1 session
//  costs nothing more than a raw one.
//
//  Order of events: the session's topics are already subscribed (at adopt);
//  publications that arrive before the hello are held here, in order. The
//  hello makes one wsr_recovery per topic (the client's position, or none),
//  hands it what was held, and asks the bridge for each topic's history
//  (after the client's offset) or just its position (max 0). Publications
//  arriving meanwhile go to their topic's recovery, which buffers them.
//  When every read is in, the welcome is queued with each topic's position
//  and, for the asked ones, whether the recovery is provably complete; then
//  each recovery is flushed (history, then the live messages newer than it,
//  duplicates dropped) and the session is live.

#include "wsr_classes.h"

typedef struct {
    char key [WSR_TOPIC_MAX];       //  topic key
    wsr_recovery_t *recovery;       //  after the hello (owned)
    int asked;                      //  the client gave a position: 1, else 0
    bool read_done;                 //  its history read is in
    struct _wsr_v1sess_t *owner;    //  for the emit callback
} s_topic_t;

typedef struct _s_held_t s_held_t;
struct _s_held_t {
    size_t topic;                   //  index in topics
    uint64_t offset, prev;
    char epoch [WSR_HISTORY_EPOCH_MAX + 1];
    size_t size;
    s_held_t *next;
    uint8_t data [];
};

struct _wsr_v1sess_t {
    uint64_t session;               //  session id (welcome)
    char *node;                     //  node id (owned)
    int64_t expires;                //  token expiry, 0 none
    s_topic_t *topics;              //  the session's topics (owned array)
    size_t count;
    wsr_v1sess_io_t io;             //  what the worker does
    void *arg;
    s_held_t *held, *held_tail;     //  publications before the hello (owned)
    size_t held_bytes;
    bool overflow;                  //  some were dropped: not recoverable
    bool greeted;                   //  the hello was taken
    size_t reads_left;              //  history reads not yet in
    bool live;                      //  welcome and held output queued
};

//  --------------------------------------------------------------------------
//  Create.
wsr_v1sess_t *
wsr_v1sess_new (uint64_t session, const char *node, const char *const *topics, size_t count,
                int64_t expires, const wsr_v1sess_io_t *io, void *arg)
{
    assert (node && io && io->queue && io->read && (topics || count == 0));
    wsr_v1sess_t *self = (wsr_v1sess_t *) zmalloc (sizeof (wsr_v1sess_t));
    self->session = session;
    self->node = strdup (node);
    self->expires = expires;
    self->io = *io;
    self->arg = arg;
    self->count = count;
    self->topics = (s_topic_t *) zmalloc ((count? count: 1) * sizeof (s_topic_t));
    for (size_t i = 0; i < count; i++) {
        snprintf (self->topics [i].key, sizeof self->topics [i].key, "%s", topics [i]);
        self->topics [i].owner = self;
    }
    return self;
}

//  --------------------------------------------------------------------------
//  Destroy.
void
wsr_v1sess_destroy (wsr_v1sess_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        wsr_v1sess_t *self = *self_p;
        for (size_t i = 0; i < self->count; i++)
            wsr_recovery_destroy (&self->topics [i].recovery);
        while (self->held) {
            s_held_t *next = self->held->next;
            free (self->held);
            self->held = next;
        }
        free (self->topics);
        free (self->node);
        free (self);
        *self_p = NULL;
    }
}

static ssize_t
s_find (wsr_v1sess_t *self, const char *topic)
{
    for (size_t i = 0; i < self->count; i++)
        if (streq (self->topics [i].key, topic))
            return (ssize_t) i;
    return -1;
}

static void
s_queue_text (wsr_v1sess_t *self, char *text, size_t len)
{
    wsr_outframe_t *frame = wsr_outframe_new (WSR_KIND_TEXT, (const uint8_t *) text, len, NULL);
    free (text);
    self->io.queue (self->arg, &frame);
}

//  A recovery's output: one pub, encoded for this session.
static void
s_emit (void *arg, uint64_t offset, const char *epoch, const uint8_t *data, size_t size)
{
    s_topic_t *topic = (s_topic_t *) arg;
    int kind = wsr_util_utf8_valid (data, size)? WSR_KIND_TEXT: WSR_KIND_BINARY;
    size_t len = 0;
    char *text = wsr_v1_pub (topic->key, offset, epoch, kind, data, size, &len);
    s_queue_text (topic->owner, text, len);
}

//  Every read is in: the welcome, then what each recovery holds.
static void
s_welcome (wsr_v1sess_t *self)
{
    wsr_v1_position_t *positions = (wsr_v1_position_t *) zmalloc (
        (self->count? self->count: 1) * sizeof (wsr_v1_position_t));
    for (size_t i = 0; i < self->count; i++) {
        s_topic_t *topic = &self->topics [i];
        wsr_v1_position_t *p = &positions [i];
        snprintf (p->topic, sizeof p->topic, "%s", topic->key);
        snprintf (p->epoch, sizeof p->epoch, "%s", wsr_recovery_epoch (topic->recovery));
        p->offset = wsr_recovery_offset (topic->recovery);
        p->recovered = topic->asked
                     ? (wsr_recovery_recovered (topic->recovery) && !self->overflow)
                     : -1;
    }
    size_t len = 0;
    char *text = wsr_v1_welcome (self->session, self->node, self->expires, positions,
                                 self->count, &len);
    free (positions);
    s_queue_text (self, text, len);
    for (size_t i = 0; i < self->count; i++)
        wsr_recovery_flush (self->topics [i].recovery);
    self->live = true;
}

//  One topic's read is in (or taken as failed).
static void
s_read_done (wsr_v1sess_t *self, s_topic_t *topic, const wsr_history_result_t *result)
{
    if (topic->read_done)
        return;
    if (!result || wsr_recovery_history (topic->recovery, result)) {
        //  The store failed: no position to prove anything with
        wsr_history_result_t none = { 0, "", 0, false, NULL, 0 };
        int rc = wsr_recovery_history (topic->recovery, &none);
        assert (rc == 0);
    }
    topic->read_done = true;
    if (--self->reads_left == 0)
        s_welcome (self);
}

//  --------------------------------------------------------------------------
//  The hello.
void
wsr_v1sess_hello (wsr_v1sess_t *self, const wsr_v1_position_t *recover, size_t count)
{
    assert (self && !self->greeted);
    self->greeted = true;
    for (size_t i = 0; i < self->count; i++) {
        s_topic_t *topic = &self->topics [i];
        const wsr_v1_position_t *asked = NULL;
        for (size_t j = 0; j < count && !asked; j++)
            if (streq (recover [j].topic, topic->key))
                asked = &recover [j];
        topic->asked = asked != NULL;
        topic->recovery = wsr_recovery_new (asked && *asked->epoch? asked->epoch: NULL,
                                            asked? asked->offset: 0, 0, 0, s_emit, topic);
        assert (topic->recovery);   //  epochs are checked by the parser
    }
    //  What came before the hello, in order
    while (self->held) {
        s_held_t *held = self->held;
        self->held = held->next;
        wsr_recovery_live (self->topics [held->topic].recovery, held->offset, held->prev,
                           held->epoch, held->data, held->size);
        free (held);
    }
    self->held_tail = NULL;
    self->held_bytes = 0;
    self->reads_left = self->count;
    if (self->count == 0) {
        s_welcome (self);
        return;
    }
    //  Collected first: a failed ask completes a read at once
    for (size_t i = 0; i < self->count; i++) {
        s_topic_t *topic = &self->topics [i];
        const char *epoch = wsr_recovery_epoch (topic->recovery);
        size_t max = topic->asked? WSR_HISTORY_MAX_READ: 0;
        if (self->io.read (self->arg, topic->key, epoch, wsr_recovery_offset (topic->recovery),
                           max))
            s_read_done (self, topic, NULL);
    }
}

//  --------------------------------------------------------------------------
//  Hello taken?
bool
wsr_v1sess_greeted (wsr_v1sess_t *self)
{
    assert (self);
    return self->greeted;
}

//  --------------------------------------------------------------------------
//  A publication before live.
void
wsr_v1sess_deliver (wsr_v1sess_t *self, const char *topic_key, uint64_t offset, uint64_t prev,
                    const char *epoch, int kind, const uint8_t *data, size_t size,
                    wsr_outframe_t *shared)
{
    assert (self && topic_key);
    (void) kind;
    (void) shared;
    ssize_t index = s_find (self, topic_key);
    if (index < 0 || self->live)
        return;
    if (self->greeted) {
        wsr_recovery_live (self->topics [index].recovery, offset, prev, epoch, data, size);
        return;
    }
    if (self->held_bytes + size > WSR_V1SESS_MAX_PENDING) {
        self->overflow = true;      //  lost before the hello: never "recovered"
        return;
    }
    s_held_t *held = (s_held_t *) malloc (sizeof (s_held_t) + size);
    assert (held);
    held->topic = (size_t) index;
    held->offset = offset;
    held->prev = prev;
    snprintf (held->epoch, sizeof held->epoch, "%s", epoch? epoch: "");
    held->size = size;
    if (size)
        memcpy (held->data, data, size);
    held->next = NULL;
    if (self->held_tail)
        self->held_tail->next = held;
    else
        self->held = held;
    self->held_tail = held;
    self->held_bytes += size;
}

//  --------------------------------------------------------------------------
//  A read is in.
void
wsr_v1sess_history (wsr_v1sess_t *self, const char *topic_key,
                    const wsr_history_result_t *result)
{
    assert (self && topic_key && result);
    ssize_t index = s_find (self, topic_key);
    if (index >= 0 && self->greeted && !self->live)
        s_read_done (self, &self->topics [index], result);
}

//  --------------------------------------------------------------------------
//  Reads late: failed.
void
wsr_v1sess_give_up (wsr_v1sess_t *self)
{
    assert (self);
    for (size_t i = 0; i < self->count && self->greeted && !self->live; i++)
        s_read_done (self, &self->topics [i], NULL);
}

//  --------------------------------------------------------------------------
//  Refreshed before the welcome.
void
wsr_v1sess_set_expires (wsr_v1sess_t *self, int64_t expires)
{
    assert (self);
    self->expires = expires;
}

//  --------------------------------------------------------------------------
//  Live?
bool
wsr_v1sess_live (wsr_v1sess_t *self)
{
    assert (self);
    return self->live;
}

//  --------------------------------------------------------------------------
//  Selftest: the io records what is queued and asked.

typedef struct {
    zlistx_t *out;                  //  queued texts
    zlistx_t *reads;                //  "topic epoch since max"
    bool fail_reads;
} s_io_t;

static void
s_test_queue (void *arg, wsr_outframe_t **frame_p)
{
    s_io_t *io = (s_io_t *) arg;
    struct iovec iov [2];
    int n = wsr_outframe_iov (*frame_p, 0, iov);
    assert (n == 1);
    //  Skip the WebSocket header: 2 or 4 bytes for these sizes
    const uint8_t *bytes = (const uint8_t *) iov [0].iov_base;
    size_t header = (bytes [1] & 0x7f) == 126? 4: 2;
    zlistx_add_end (io->out, zsys_sprintf ("%.*s", (int) (iov [0].iov_len - header),
                                           bytes + header));
    wsr_outframe_unlink (frame_p);
}

static int
s_test_read (void *arg, const char *topic, const char *epoch, uint64_t since, size_t max)
{
    s_io_t *io = (s_io_t *) arg;
    zlistx_add_end (io->reads, zsys_sprintf ("%s %s %" PRIu64 " %zu", topic,
                                             epoch? epoch: "-", since, max));
    return io->fail_reads? -1: 0;
}

static char *
s_next (s_io_t *io)
{
    return (char *) zlistx_detach (io->out, NULL);
}

void
wsr_v1sess_test (bool verbose)
{
    (void) verbose;
    s_io_t io = { zlistx_new (), zlistx_new (), false };
    zlistx_set_destructor (io.out, (czmq_destructor *) zstr_free);
    zlistx_set_destructor (io.reads, (czmq_destructor *) zstr_free);
    wsr_v1sess_io_t calls = { s_test_queue, s_test_read };
    const char *topics [] = { "user:u1", "channel:lobby" };
    wsr_v1sess_t *sess = wsr_v1sess_new (42, "node-a", topics, 2, 1767225600, &calls, &io);

    //  Before the hello: held, nothing out
    wsr_v1sess_deliver (sess, "user:u1", 18, 17, "E", WSR_KIND_TEXT,
                        (const uint8_t *) "m18", 3, NULL);
    wsr_v1sess_deliver (sess, "channel:lobby", 0, 0, NULL, WSR_KIND_TEXT,
                        (const uint8_t *) "plain", 5, NULL);
    assert (zlistx_size (io.out) == 0 && !wsr_v1sess_greeted (sess));

    //  Hello: u1 from 15 in epoch E, lobby without a position
    wsr_v1_position_t recover [1] = { { "user:u1", "E", 15, -1 } };
    wsr_v1sess_hello (sess, recover, 1);
    assert (zlistx_size (io.reads) == 2);
    char *read = (char *) zlistx_first (io.reads);
    assert (streq (read, "user:u1 E 15 1000"));
    read = (char *) zlistx_next (io.reads);
    assert (streq (read, "channel:lobby - 0 0"));
    //  A live message while reading, then the histories: 16, 17 (and 18
    //  again, a duplicate of the held live one)
    wsr_v1sess_deliver (sess, "user:u1", 19, 18, "E", WSR_KIND_TEXT,
                        (const uint8_t *) "m19", 3, NULL);
    wsr_history_entry_t entries [3] = {
        { 16, (const uint8_t *) "m16", 3, 0 }, { 17, (const uint8_t *) "m17", 3, 0 },
        { 18, (const uint8_t *) "m18", 3, 0 }
    };
    wsr_history_result_t u1 = { 0, "E", 18, true, entries, 3 };
    wsr_v1sess_history (sess, "user:u1", &u1);
    assert (zlistx_size (io.out) == 0 && !wsr_v1sess_live (sess));  //  lobby still reading
    wsr_history_result_t lobby = { 0, "F", 7, true, NULL, 0 };
    wsr_v1sess_history (sess, "channel:lobby", &lobby);
    assert (wsr_v1sess_live (sess));
    char *text = s_next (&io);
    assert (strstr (text, "\"type\":\"welcome\"") && strstr (text, "\"session\":\"42\""));
    assert (strstr (text, "\"user:u1\":{\"epoch\":\"E\",\"offset\":19,\"recovered\":true}"));
    assert (strstr (text, "\"channel:lobby\":{\"epoch\":\"F\",\"offset\":7}"));
    zstr_free (&text);
    const char *expect [] = { "16", "17", "18", "19" };
    for (int i = 0; i < 4; i++) {
        text = s_next (&io);
        char want [64];
        snprintf (want, sizeof want, "\"offset\":%s,\"data\":\"m%s\"", expect [i], expect [i]);
        assert (text && strstr (text, "\"topic\":\"user:u1\"") && strstr (text, want));
        zstr_free (&text);
    }
    text = s_next (&io);            //  the plain publication on lobby, no position
    assert (text && strstr (text, "\"topic\":\"channel:lobby\"") && !strstr (text, "offset")
         && strstr (text, "\"data\":\"plain\""));
    zstr_free (&text);
    assert (zlistx_size (io.out) == 0);
    wsr_v1sess_destroy (&sess);

    //  Another epoch, and a store that cannot be asked: recovered false
    zlistx_purge (io.reads);
    sess = wsr_v1sess_new (43, "node-a", topics, 1, 0, &calls, &io);
    wsr_v1_position_t old [1] = { { "user:u1", "OLD", 3, -1 } };
    wsr_v1sess_hello (sess, old, 1);
    wsr_history_result_t fresh = { 0, "NEW", 2, true, entries, 2 };
    wsr_v1sess_history (sess, "user:u1", &fresh);
    text = s_next (&io);
    assert (strstr (text, "\"recovered\":false") && strstr (text, "\"expires\":null"));
    zstr_free (&text);
    wsr_v1sess_destroy (&sess);
    zlistx_purge (io.out);
    io.fail_reads = true;
    sess = wsr_v1sess_new (44, "node-a", topics, 1, 0, &calls, &io);
    wsr_v1sess_hello (sess, recover, 1);
    assert (wsr_v1sess_live (sess));
    text = s_next (&io);
    assert (strstr (text, "\"recovered\":false"));
    zstr_free (&text);
    wsr_v1sess_destroy (&sess);
    //  Reads that never come: given up
    io.fail_reads = false;
    sess = wsr_v1sess_new (45, "node-a", topics, 2, 0, &calls, &io);
    wsr_v1sess_hello (sess, NULL, 0);
    assert (!wsr_v1sess_live (sess));
    wsr_v1sess_give_up (sess);
    assert (wsr_v1sess_live (sess));
    wsr_v1sess_destroy (&sess);
    zlistx_destroy (&io.out);
    zlistx_destroy (&io.reads);
}
