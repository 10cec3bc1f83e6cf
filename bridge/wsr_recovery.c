//  wsr_recovery — one topic's switch from history to live: buffer, read, merge by offset
//
//  Pure logic, no I/O: the owner subscribes, feeds live messages, reads the
//  history and hands over the result; this class decides what the client
//  gets, in which order, and whether that is a complete recovery.
//
//  The order that makes the switch lossless: (1) create the recovery, (2)
//  subscribe and wait until the subscription is confirmed (skip if it is
//  already), buffering every live message, (3) read the history since the
//  client's offset, (4) merge: the history entries, then the buffered live
//  messages newer than the history's last offset, dropping duplicates,
//  (5) pass live messages through. Any message published after (2) is
//  live; any message published before (3) is in the history; so together
//  they cover everything, and offsets remove the overlap.
//
//  Each message with history carries its offset and prev, the offset of
//  the topic's message before it: offset - 1 on Redis, whose offsets are
//  per topic; Nats-Last-Sequence on NATS, whose stream sequences are shared
//  by all subjects. So "prev > the offset we are at" is a gap on both, and
//  "offset <= the offset we are at" a duplicate. A message without history
//  (offset 0, a plain PUBLISH) is passed on in arrival order.
//
//  recovered is false when completeness cannot be proved: no position
//  given, another epoch, history not complete (trimmed or expired), a gap
//  or epoch change among the live messages before the flush, or a buffered
//  live message evicted (buffer full) that the history does not cover.
//
//  Epochs among buffered live messages: the topic's epochs follow each
//  other in time, so buffered messages of another epoch than the history's
//  that arrived before the first one of the history's epoch are older
//  (dropped); any other epoch is newer (the output switches to it).
//
//  In pass-through, a gap (a message lost on the live path, e.g. while the
//  subscriber reconnected) or a new epoch that does not start at its first
//  message sends the recovery back to WAITING: the caller reads the
//  history since the last offset and merges again (WSR_RECOVERY_READ).

#include "wsr_classes.h"

typedef struct _s_item_t s_item_t;
struct _s_item_t {
    s_item_t *next;                 //  FIFO
    uint64_t offset;                //  0: no history
    uint64_t prev;                  //  offset of the topic's message before
    char epoch [WSR_HISTORY_EPOCH_MAX + 1];     //  "" = the current one; once held,
                                                //  the epoch it is emitted with
    size_t size;
    uint8_t data [];                //  payload copy
};

struct _wsr_recovery_t {
    wsr_recovery_state_t state;
    wsr_recovery_emit_fn *emit;     //  output
    void *arg;
    bool asked;                     //  the client gave a position
    char asked_epoch [WSR_HISTORY_EPOCH_MAX + 1];   //  its epoch
    uint64_t since;                 //  its offset
    char epoch [WSR_HISTORY_EPOCH_MAX + 1];     //  current epoch (READY / LIVE)
    uint64_t last;                  //  offset of the last message emitted or held
    bool recovered;                 //  see the header
    s_item_t *head;                 //  WAITING: live buffer; READY: output held
    s_item_t *tail;
    size_t count;                   //  live items in the list
    size_t bytes;                   //  their payload bytes
    size_t max_messages;            //  bounds of count and bytes
    size_t max_bytes;
    bool evicted;                   //  a message with offset was evicted (WAITING)
    bool evicted_mixed;             //  ... of more than one epoch
    char evicted_epoch [WSR_HISTORY_EPOCH_MAX + 1];
    uint64_t evicted_max;           //  highest offset evicted
    uint64_t duplicates;            //  dropped as duplicates
};

//  --------------------------------------------------------------------------
//  Create.
wsr_recovery_t *
wsr_recovery_new (const char *epoch, uint64_t since, size_t max_messages, size_t max_bytes,
                  wsr_recovery_emit_fn *emit, void *arg)
{
    assert (emit);
    if (epoch && strlen (epoch) > WSR_HISTORY_EPOCH_MAX)
        return NULL;
    wsr_recovery_t *self = (wsr_recovery_t *) zmalloc (sizeof (wsr_recovery_t));
    self->emit = emit;
    self->arg = arg;
    self->asked = epoch != NULL;
    if (epoch)
        snprintf (self->asked_epoch, sizeof self->asked_epoch, "%s", epoch);
    self->since = epoch? since: 0;
    self->max_messages = max_messages? max_messages: WSR_RECOVERY_MAX_BUFFER;
    self->max_bytes = max_bytes? max_bytes: WSR_RECOVERY_MAX_BYTES;
    return self;
}

static void
s_clear (wsr_recovery_t *self)
{
    while (self->head) {
        s_item_t *item = self->head;
        self->head = item->next;
        free (item);
    }
    self->tail = NULL;
    self->count = 0;
    self->bytes = 0;
}

//  --------------------------------------------------------------------------
//  Destroy.
void
wsr_recovery_destroy (wsr_recovery_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        wsr_recovery_t *self = *self_p;
        s_clear (self);
        free (self);
        *self_p = NULL;
    }
}

static s_item_t *
s_item_new (uint64_t offset, uint64_t prev, const char *epoch, const uint8_t *data, size_t size)
{
    s_item_t *item = (s_item_t *) malloc (sizeof (s_item_t) + size);
    assert (item);
    item->next = NULL;
    item->offset = offset;
    item->prev = prev;
    snprintf (item->epoch, sizeof item->epoch, "%s", epoch? epoch: "");
    item->size = size;
    if (size)
        memcpy (item->data, data, size);
    return item;
}

static void
s_append (wsr_recovery_t *self, s_item_t *item, bool counted)
{
    if (self->tail)
        self->tail->next = item;
    else
        self->head = item;
    self->tail = item;
    if (counted) {
        self->count++;
        self->bytes += item->size;
    }
}

//  WAITING: the buffer is full; drop its oldest message, remembering what
//  offsets were lost so that the history can tell whether it covers them.
static void
s_evict (wsr_recovery_t *self)
{
    s_item_t *item = self->head;
    self->head = item->next;
    if (!self->head)
        self->tail = NULL;
    self->count--;
    self->bytes -= item->size;
    if (item->offset) {
        if (self->evicted && strcmp (self->evicted_epoch, item->epoch))
            self->evicted_mixed = true;
        if (!self->evicted)
            snprintf (self->evicted_epoch, sizeof self->evicted_epoch, "%s", item->epoch);
        self->evicted = true;
        if (item->offset > self->evicted_max)
            self->evicted_max = item->offset;
    }
    free (item);
}

//  Go back to WAITING to repair a gap from (epoch, since).
static void
s_wait (wsr_recovery_t *self, const char *epoch, uint64_t since)
{
    s_clear (self);
    self->state = WSR_RECOVERY_WAITING;
    self->asked = true;
    snprintf (self->asked_epoch, sizeof self->asked_epoch, "%s", epoch);
    self->since = since;
    self->recovered = false;
    self->evicted = self->evicted_mixed = false;
    self->evicted_max = 0;
}

//  READY: place one message after the history, into the held output.
//  Takes ownership of item. older: it belongs to an epoch before the
//  history's (then dropped).
static void
s_merge (wsr_recovery_t *self, s_item_t *item, bool older)
{
    if (item->offset == 0) {
        snprintf (item->epoch, sizeof item->epoch, "%s", self->epoch);
        s_append (self, item, true);
        return;
    }
    if (older) {
        self->recovered = false;
        free (item);
        return;
    }
    if (*item->epoch && strcmp (item->epoch, self->epoch)) {
        //  A newer epoch: the client cannot be told it missed nothing
        self->recovered = false;
        snprintf (self->epoch, sizeof self->epoch, "%s", item->epoch);
        self->last = 0;
    }
    if (item->offset <= self->last) {
        self->duplicates++;
        free (item);
        return;
    }
    if (item->prev > self->last)
        self->recovered = false;        //  a message between is missing
    self->last = item->offset;
    snprintf (item->epoch, sizeof item->epoch, "%s", self->epoch);
    s_append (self, item, true);
}

//  --------------------------------------------------------------------------
//  A live message.
wsr_recovery_rc_t
wsr_recovery_live (wsr_recovery_t *self, uint64_t offset, uint64_t prev, const char *epoch,
                   const uint8_t *data, size_t size)
{
    assert (self && (data || size == 0));
    if (epoch && strlen (epoch) > WSR_HISTORY_EPOCH_MAX)
        return WSR_RECOVERY_OK;         //  not from us: cannot be an epoch
    if (self->state == WSR_RECOVERY_WAITING) {
        s_append (self, s_item_new (offset, prev, epoch, data, size), true);
        while (self->count > self->max_messages || self->bytes > self->max_bytes)
            s_evict (self);
        return WSR_RECOVERY_OK;
    }
    if (self->state == WSR_RECOVERY_READY) {
        if (self->count >= self->max_messages || self->bytes + size > self->max_bytes) {
            self->recovered = false;    //  the client will miss this one
            return WSR_RECOVERY_OK;
        }
        s_merge (self, s_item_new (offset, prev, epoch, data, size), false);
        return WSR_RECOVERY_OK;
    }
    //  Pass-through
    if (offset == 0) {
        self->emit (self->arg, 0, self->epoch, data, size);
        return WSR_RECOVERY_OK;
    }
    if (epoch && *epoch && strcmp (epoch, self->epoch)) {
        if (prev == 0) {
            //  The first message of a new epoch: nothing of it was missed
            snprintf (self->epoch, sizeof self->epoch, "%s", epoch);
            self->last = offset;
            self->emit (self->arg, offset, self->epoch, data, size);
            return WSR_RECOVERY_OK;
        }
        s_wait (self, epoch, 0);
    }
    else
    if (offset <= self->last) {
        self->duplicates++;
        return WSR_RECOVERY_OK;
    }
    else
    if (prev <= self->last) {
        self->last = offset;
        self->emit (self->arg, offset, self->epoch, data, size);
        return WSR_RECOVERY_OK;
    }
    else
        s_wait (self, self->epoch, self->last);
    s_append (self, s_item_new (offset, prev, epoch, data, size), true);
    return WSR_RECOVERY_READ;
}

//  --------------------------------------------------------------------------
//  The history is in: merge.
int
wsr_recovery_history (wsr_recovery_t *self, const wsr_history_result_t *result)
{
    assert (self && result);
    assert (self->state == WSR_RECOVERY_WAITING);
    if (result->status != 0 || !result->epoch || strlen (result->epoch) > WSR_HISTORY_EPOCH_MAX)
        return -1;
    const char *history_epoch = result->epoch;
    s_item_t *buffer = self->head;
    self->head = self->tail = NULL;
    self->count = self->bytes = 0;
    self->state = WSR_RECOVERY_READY;
    snprintf (self->epoch, sizeof self->epoch, "%s", history_epoch);
    self->last = result->last;
    self->recovered = self->asked && result->complete
                   && streq (self->asked_epoch, history_epoch) && self->since <= result->last;
    if (self->recovered) {
        //  Trust, but check that the entries are what was asked for
        uint64_t previous = self->since;
        for (size_t i = 0; i < result->count && self->recovered; i++) {
            const wsr_history_entry_t *entry = &result->entries [i];
            if (entry->offset <= previous || entry->offset > result->last)
                self->recovered = false;
            else
                s_append (self, s_item_new (entry->offset, previous, history_epoch,
                                            entry->data, entry->size), false);
            previous = entry->offset;
        }
        if (!self->recovered)
            s_clear (self);
    }
    //  Buffered live messages: those of an epoch other than the history's
    //  that came before its first one are older
    s_item_t *first_same = NULL;
    for (s_item_t *item = buffer; item && !first_same; item = item->next)
        if (item->offset && (!*item->epoch || streq (item->epoch, history_epoch)))
            first_same = item;
    bool before_first = first_same != NULL;
    while (buffer) {
        s_item_t *item = buffer;
        buffer = item->next;
        item->next = NULL;
        if (item == first_same)
            before_first = false;
        bool other = item->offset && *item->epoch && strcmp (item->epoch, history_epoch);
        s_merge (self, item, other && before_first);
    }
    if (self->evicted
    && (self->evicted_mixed || self->evicted_max > result->last
        || (*self->evicted_epoch && strcmp (self->evicted_epoch, history_epoch))))
        self->recovered = false;
    return 0;
}

//  --------------------------------------------------------------------------
//  Emit what is held, then pass through.
void
wsr_recovery_flush (wsr_recovery_t *self)
{
    assert (self);
    assert (self->state == WSR_RECOVERY_READY);
    self->state = WSR_RECOVERY_LIVE;
    s_item_t *item = self->head;
    self->head = self->tail = NULL;
    self->count = self->bytes = 0;
    while (item) {
        s_item_t *next = item->next;
        self->emit (self->arg, item->offset, item->epoch, item->data, item->size);
        free (item);
        item = next;
    }
}

//  --------------------------------------------------------------------------
//  Accessors.
wsr_recovery_state_t
wsr_recovery_state (wsr_recovery_t *self)
{
    assert (self);
    return self->state;
}

bool
wsr_recovery_recovered (wsr_recovery_t *self)
{
    assert (self);
    return self->state != WSR_RECOVERY_WAITING && self->recovered;
}

const char *
wsr_recovery_epoch (wsr_recovery_t *self)
{
    assert (self);
    if (self->state == WSR_RECOVERY_WAITING)
        return self->asked? self->asked_epoch: NULL;
    return self->epoch;
}

uint64_t
wsr_recovery_offset (wsr_recovery_t *self)
{
    assert (self);
    return self->state == WSR_RECOVERY_WAITING? self->since: self->last;
}

uint64_t
wsr_recovery_duplicates (wsr_recovery_t *self)
{
    assert (self);
    return self->duplicates;
}

//  --------------------------------------------------------------------------
//  Selftest

#define S_SINK_MAX  16384

typedef struct {
    size_t count;
    uint64_t offsets [S_SINK_MAX];
    char epochs [S_SINK_MAX][WSR_HISTORY_EPOCH_MAX + 1];
    char data [S_SINK_MAX][16];
} s_sink_t;

static void
s_sink (void *arg, uint64_t offset, const char *epoch, const uint8_t *data, size_t size)
{
    s_sink_t *sink = (s_sink_t *) arg;
    assert (sink->count < S_SINK_MAX);
    sink->offsets [sink->count] = offset;
    snprintf (sink->epochs [sink->count], sizeof sink->epochs [0], "%s", epoch);
    snprintf (sink->data [sink->count], sizeof sink->data [0], "%.*s", (int) size,
              (const char *) data);
    sink->count++;
}

//  Feed a Redis-style live message (prev = offset - 1; payload "o<offset>").
static wsr_recovery_rc_t
s_live (wsr_recovery_t *self, uint64_t offset, const char *epoch)
{
    char data [16];
    snprintf (data, sizeof data, "o%" PRIu64, offset);
    return wsr_recovery_live (self, offset, offset? offset - 1: 0, epoch,
                              (const uint8_t *) data, strlen (data));
}

//  A history result with entries first..last ("o<offset>") of epoch.
static void
s_history (wsr_recovery_t *self, const char *epoch, uint64_t first, uint64_t last,
           bool complete)
{
    wsr_history_entry_t entries [64];
    char data [64][16];
    size_t count = 0;
    for (uint64_t offset = first; first && offset <= last; offset++) {
        snprintf (data [count], sizeof data [0], "o%" PRIu64, offset);
        entries [count] = (wsr_history_entry_t) { offset, (const uint8_t *) data [count],
                                                  strlen (data [count]), 0 };
        count++;
    }
    wsr_history_result_t result = { 0, epoch, last, complete, entries, count };
    assert (wsr_recovery_history (self, &result) == 0);
}

//  The sink holds exactly offsets first..last (plus nothing else), in order.
static void
s_expect (s_sink_t *sink, uint64_t first, uint64_t last, const char *epoch)
{
    assert (sink->count == last - first + 1);
    for (size_t i = 0; i < sink->count; i++) {
        assert (sink->offsets [i] == first + i);
        char data [16];
        snprintf (data, sizeof data, "o%" PRIu64, first + i);
        assert (streq (sink->data [i], data));
        assert (streq (sink->epochs [i], epoch));
    }
    sink->count = 0;
}

static void
s_test_logic (void)
{
    s_sink_t *sink = (s_sink_t *) zmalloc (sizeof (s_sink_t));
    assert (wsr_recovery_new ("0123456789012345678901234567890123456789x", 0, 0, 0, s_sink,
                              sink) == NULL);

    //  No position: the output starts after the last offset read; plain
    //  messages pass in arrival order; duplicates drop
    wsr_recovery_t *r = wsr_recovery_new (NULL, 0, 0, 0, s_sink, sink);
    assert (wsr_recovery_state (r) == WSR_RECOVERY_WAITING);
    assert (wsr_recovery_epoch (r) == NULL && wsr_recovery_offset (r) == 0);
    s_live (r, 3, "E");
    s_live (r, 4, "E");
    wsr_recovery_live (r, 0, 0, NULL, (const uint8_t *) "plain", 5);
    s_live (r, 5, "E");
    s_history (r, "E", 0, 4, false);
    assert (wsr_recovery_state (r) == WSR_RECOVERY_READY);
    assert (!wsr_recovery_recovered (r));
    assert (streq (wsr_recovery_epoch (r), "E") && wsr_recovery_offset (r) == 5);
    assert (sink->count == 0);
    s_live (r, 6, "E");                             //  held too
    wsr_recovery_flush (r);
    assert (sink->count == 3 && sink->offsets [0] == 0 && streq (sink->data [0], "plain"));
    assert (streq (sink->epochs [0], "E"));
    sink->count = 0;
    assert (wsr_recovery_duplicates (r) == 2);
    assert (s_live (r, 7, "E") == WSR_RECOVERY_OK);
    assert (s_live (r, 7, "E") == WSR_RECOVERY_OK);     //  duplicate
    s_expect (sink, 7, 7, "E");
    //  A gap on the live path: back to WAITING to read since 7
    assert (s_live (r, 10, "E") == WSR_RECOVERY_READ);
    assert (wsr_recovery_state (r) == WSR_RECOVERY_WAITING);
    assert (streq (wsr_recovery_epoch (r), "E") && wsr_recovery_offset (r) == 7);
    s_live (r, 11, "E");
    s_history (r, "E", 8, 10, true);
    assert (wsr_recovery_recovered (r));
    wsr_recovery_flush (r);
    s_expect (sink, 8, 11, "E");
    //  A new epoch from its first message: followed; from a later one: read
    assert (s_live (r, 1, "N") == WSR_RECOVERY_OK);
    s_expect (sink, 1, 1, "N");
    assert (s_live (r, 3, "M") == WSR_RECOVERY_READ);
    assert (streq (wsr_recovery_epoch (r), "M") && wsr_recovery_offset (r) == 0);
    s_history (r, "M", 1, 3, true);
    wsr_recovery_flush (r);
    s_expect (sink, 1, 3, "M");
    //  A read that failed changes nothing
    assert (s_live (r, 5, "M") == WSR_RECOVERY_READ);
    wsr_history_result_t failed = { .status = -1, .epoch = "" };
    assert (wsr_recovery_history (r, &failed) == -1);
    assert (wsr_recovery_state (r) == WSR_RECOVERY_WAITING);
    wsr_recovery_destroy (&r);
    assert (r == NULL);

    //  Recovery from E:2 with live messages racing the read
    r = wsr_recovery_new ("E", 2, 0, 0, s_sink, sink);
    assert (streq (wsr_recovery_epoch (r), "E") && wsr_recovery_offset (r) == 2);
    s_live (r, 4, "E");
    s_live (r, 5, "E");
    s_live (r, 6, "E");
    s_history (r, "E", 3, 5, true);
    assert (wsr_recovery_recovered (r));
    wsr_recovery_flush (r);
    s_expect (sink, 3, 6, "E");
    wsr_recovery_destroy (&r);

    //  Another epoch, or history not complete: not recovered, no history
    //  sent, live messages continue after the last offset
    r = wsr_recovery_new ("X", 2, 0, 0, s_sink, sink);
    s_live (r, 6, "E");
    s_history (r, "E", 3, 5, true);
    assert (!wsr_recovery_recovered (r));
    wsr_recovery_flush (r);
    s_expect (sink, 6, 6, "E");
    wsr_recovery_destroy (&r);
    r = wsr_recovery_new ("E", 2, 0, 0, s_sink, sink);
    s_history (r, "E", 40, 50, false);
    assert (!wsr_recovery_recovered (r));
    wsr_recovery_flush (r);
    assert (sink->count == 0);
    wsr_recovery_destroy (&r);
    //  Entries that are not what was asked for are not trusted
    r = wsr_recovery_new ("E", 2, 0, 0, s_sink, sink);
    s_history (r, "E", 2, 5, true);
    assert (!wsr_recovery_recovered (r));
    wsr_recovery_flush (r);
    assert (sink->count == 0);
    wsr_recovery_destroy (&r);

    //  Buffered messages of an older epoch (before the history's first one)
    //  are dropped; of a newer one, followed
    r = wsr_recovery_new ("E", 0, 0, 0, s_sink, sink);
    s_live (r, 7, "O");
    s_live (r, 8, "O");
    s_live (r, 1, "E");
    s_live (r, 2, "E");
    s_history (r, "E", 1, 1, true);
    assert (!wsr_recovery_recovered (r));
    wsr_recovery_flush (r);
    s_expect (sink, 1, 2, "E");
    wsr_recovery_destroy (&r);
    r = wsr_recovery_new ("E", 3, 0, 0, s_sink, sink);
    s_live (r, 5, "E");
    s_live (r, 1, "N");
    s_live (r, 2, "N");
    s_history (r, "E", 4, 5, true);
    assert (!wsr_recovery_recovered (r));
    assert (streq (wsr_recovery_epoch (r), "N") && wsr_recovery_offset (r) == 2);
    wsr_recovery_flush (r);
    assert (sink->count == 4);
    assert (sink->offsets [1] == 5 && streq (sink->epochs [1], "E"));
    assert (sink->offsets [2] == 1 && streq (sink->epochs [2], "N"));
    sink->count = 0;
    wsr_recovery_destroy (&r);
    //  ... and a newer epoch arriving after the read, before the flush
    r = wsr_recovery_new ("E", 3, 0, 0, s_sink, sink);
    s_history (r, "E", 4, 5, true);
    assert (wsr_recovery_recovered (r));
    s_live (r, 1, "N");
    assert (!wsr_recovery_recovered (r));
    wsr_recovery_destroy (&r);

    //  Buffer overflow: harmless when the history covers what was evicted
    r = wsr_recovery_new ("E", 0, 2, 0, s_sink, sink);
    for (uint64_t offset = 1; offset <= 5; offset++)
        s_live (r, offset, "E");
    s_history (r, "E", 1, 5, true);
    assert (wsr_recovery_recovered (r));
    wsr_recovery_flush (r);
    s_expect (sink, 1, 5, "E");
    wsr_recovery_destroy (&r);
    //  ... harmful when it does not
    r = wsr_recovery_new ("E", 3, 2, 0, s_sink, sink);
    for (uint64_t offset = 4; offset <= 8; offset++)
        s_live (r, offset, "E");
    s_history (r, "E", 4, 5, true);
    assert (!wsr_recovery_recovered (r));
    wsr_recovery_flush (r);
    assert (sink->count == 4 && sink->offsets [2] == 7);        //  4 5 | 7 8
    sink->count = 0;
    wsr_recovery_destroy (&r);
    //  Bytes are bounded too; held output while READY as well
    r = wsr_recovery_new ("E", 0, 0, 4, s_sink, sink);
    s_live (r, 1, "E");
    s_live (r, 2, "E");                             //  "o1" + "o2" = 4 bytes: fits
    s_live (r, 3, "E");                             //  evicts 1
    s_history (r, "E", 1, 1, true);
    assert (wsr_recovery_recovered (r));            //  1 evicted, but read
    s_live (r, 4, "E");                             //  2 and 3 held: no room, lost
    assert (!wsr_recovery_recovered (r));
    wsr_recovery_flush (r);
    s_expect (sink, 1, 3, "E");
    wsr_recovery_destroy (&r);

    //  NATS: stream sequences shared by subjects, prev from
    //  Nats-Last-Sequence, no epoch on live messages
    r = wsr_recovery_new ("C", 10, 0, 0, s_sink, sink);
    wsr_recovery_live (r, 25, 12, NULL, (const uint8_t *) "b", 1);
    wsr_recovery_live (r, 30, 25, NULL, (const uint8_t *) "c", 1);
    wsr_history_entry_t entries [2] = { { 12, (const uint8_t *) "a", 1, 0 },
                                        { 25, (const uint8_t *) "b", 1, 0 } };
    wsr_history_result_t result = { 0, "C", 27, true, entries, 2 };
    assert (wsr_recovery_history (r, &result) == 0);
    assert (wsr_recovery_recovered (r) && wsr_recovery_offset (r) == 30);
    wsr_recovery_flush (r);
    assert (sink->count == 3 && sink->offsets [0] == 12 && sink->offsets [1] == 25);
    assert (sink->offsets [2] == 30 && streq (sink->data [2], "c"));
    assert (streq (sink->epochs [2], "C"));
    sink->count = 0;
    assert (wsr_recovery_live (r, 35, 30, NULL, (const uint8_t *) "d", 1) == WSR_RECOVERY_OK);
    assert (wsr_recovery_live (r, 50, 40, NULL, (const uint8_t *) "f", 1) == WSR_RECOVERY_READ);
    assert (wsr_recovery_offset (r) == 35);
    wsr_recovery_destroy (&r);
    //  A predecessor that has expired from the stream is not a gap
    r = wsr_recovery_new (NULL, 0, 0, 0, s_sink, sink);
    result = (wsr_history_result_t) { 0, "C", 100, false, NULL, 0 };
    assert (wsr_recovery_history (r, &result) == 0);
    wsr_recovery_flush (r);
    sink->count = 0;
    assert (wsr_recovery_live (r, 900, 0, NULL, (const uint8_t *) "g", 1) == WSR_RECOVERY_OK);
    assert (sink->count == 1);
    wsr_recovery_destroy (&r);
    free (sink);
}

//  The race: a publisher thread appends through publish.lua at full speed
//  on S_CHANNELS topics while the main thread recovers them from random
//  positions, again and again, over a second Redis connection.

#define S_CHANNELS      6           //  ws:r0 .. ws:r5
#define S_SHORT         4           //  ws:r4 and up keep only 20 entries
#define S_PIPELINE      256         //  appends in flight in the publisher
#define S_LIVE_AFTER    30          //  live messages checked after each flush

typedef struct {
    int port;
    atomic_bool stop;               //  set by the main thread
    atomic_uint_fast64_t published; //  appends acknowledged
} s_publisher_t;

static void
s_ignore (void *arg, const char *pattern, const char *channel, size_t channel_len,
          const uint8_t *data, size_t size)
{
    (void) arg, (void) pattern, (void) channel, (void) channel_len, (void) data, (void) size;
}

static void
s_on_published (void *arg, int status, uint64_t offset, const char *epoch)
{
    (void) offset, (void) epoch;
    s_publisher_t *publisher = (s_publisher_t *) arg;
    assert (status == 0 || atomic_load (&publisher->stop));     //  link destroyed at the end
    if (status == 0)
        atomic_fetch_add (&publisher->published, 1);
}

static void
s_drive (wsr_redis_t *redis, long max_wait)
{
    zmq_pollitem_t items [4];
    int n = wsr_redis_pollitems (redis, items, 4);
    long timeout = wsr_redis_timeout (redis);
    zmq_poll (items, n, timeout > max_wait? max_wait: timeout);
    wsr_redis_process (redis, items, n);
}

//  Each topic's payloads are "o<offset>": one publisher on one connection,
//  so the n-th append to a topic gets offset n (a fresh Redis, one epoch).
static void *
s_publisher (void *args)
{
    s_publisher_t *publisher = (s_publisher_t *) args;
    char url [64];
    snprintf (url, sizeof url, "redis://127.0.0.1:%d", publisher->port);
    wsr_redis_t *redis = wsr_redis_new (url, s_ignore, NULL);
    wsr_history_t *longer = wsr_history_new (redis, 100000, 120, false);
    wsr_history_t *shorter = wsr_history_new (redis, 20, 120, false);
    uint64_t next [S_CHANNELS] = { 0 };
    int channel = 0;
    while (!atomic_load (&publisher->stop)) {
        bool room = wsr_redis_connected (redis)
                 && wsr_history_inflight (longer) + wsr_history_inflight (shorter) < S_PIPELINE;
        for (int i = 0; room && i < 16; i++) {
            char name [16], payload [24];
            snprintf (name, sizeof name, "ws:r%d", channel);
            snprintf (payload, sizeof payload, "o%" PRIu64, next [channel] + 1);
            wsr_history_t *history = channel >= S_SHORT? shorter: longer;
            if (wsr_history_append (history, name, (const uint8_t *) payload, strlen (payload),
                                    s_on_published, publisher) == 0)
                next [channel]++;
            channel = (channel + 1) % S_CHANNELS;
        }
        s_drive (redis, room? 0: 10);
    }
    wsr_redis_destroy (&redis);                     //  fails what is in flight
    wsr_history_destroy (&longer);
    wsr_history_destroy (&shorter);
    return NULL;
}

typedef struct {
    wsr_recovery_t *recovery;       //  the current round's, or NULL
    int channel;                    //  its topic
    bool subscribed [S_CHANNELS];   //  SUBSCRIBE sent
    bool confirmed [S_CHANNELS];    //  ... and confirmed
    bool drop_one;                  //  lose the next live message (a gap)
    bool read_needed;               //  the recovery asked for a read
    bool read_done;                 //  a read callback came
    int read_status;
    uint64_t read_last;             //  its last offset
    char read_epoch [WSR_HISTORY_EPOCH_MAX + 1];
    s_sink_t *sink;                 //  the recovery's output
    uint64_t plain;                 //  live messages that were not framed
} s_race_t;

static int
s_channel_index (const char *channel, size_t channel_len)
{
    if (channel_len != 5 || memcmp (channel, "ws:r", 4) || channel [4] < '0'
    ||  channel [4] >= '0' + S_CHANNELS)
        return -1;
    return channel [4] - '0';
}

static void
s_on_race_message (void *arg, const char *pattern, const char *channel, size_t channel_len,
                   const uint8_t *data, size_t size)
{
    (void) pattern;
    s_race_t *race = (s_race_t *) arg;
    int index = s_channel_index (channel, channel_len);
    if (!race->recovery || index != race->channel)
        return;                     //  nobody recovering that topic now
    uint64_t offset;
    char epoch [WSR_HISTORY_EPOCH_MAX + 1];
    const uint8_t *payload;
    size_t payload_size;
    if (wsr_history_frame_decode (data, size, &offset, epoch, &payload, &payload_size)) {
        race->plain++;
        return;
    }
    if (race->drop_one && wsr_recovery_state (race->recovery) == WSR_RECOVERY_LIVE
    &&  offset > wsr_recovery_offset (race->recovery)) {
        //  Lose one that would have been emitted (not a late duplicate)
        race->drop_one = false;
        return;
    }
    if (wsr_recovery_live (race->recovery, offset, offset - 1, epoch, payload, payload_size)
        == WSR_RECOVERY_READ)
        race->read_needed = true;
}

static void
s_on_race_subscribed (void *arg, const char *channel, size_t channel_len)
{
    s_race_t *race = (s_race_t *) arg;
    int index = s_channel_index (channel, channel_len);
    if (index >= 0)
        race->confirmed [index] = true;
}

static void
s_on_race_read (void *arg, const wsr_history_result_t *result)
{
    s_race_t *race = (s_race_t *) arg;
    race->read_done = true;
    race->read_status = result->status;
    race->read_last = result->last;
    snprintf (race->read_epoch, sizeof race->read_epoch, "%s", result->epoch);
    if (race->recovery && result->status == 0)
        assert (wsr_recovery_history (race->recovery, result) == 0);
}

//  Read for the current recovery and wait for the answer.
static void
s_race_read (s_race_t *race, wsr_redis_t *redis, wsr_history_t *history, size_t max)
{
    char name [16];
    snprintf (name, sizeof name, "ws:r%d", race->channel);
    race->read_done = false;
    assert (wsr_history_read (history, name, wsr_recovery_offset (race->recovery),
                              wsr_recovery_epoch (race->recovery), max, s_on_race_read,
                              race) == 0);
    int64_t deadline = wsr_util_mono_ms () + 5000;
    while (!race->read_done && wsr_util_mono_ms () < deadline)
        s_drive (redis, 10);
    assert (race->read_done && race->read_status == 0);
}

static void
s_test_race (int port, bool verbose)
{
    s_publisher_t publisher = { .port = port };
    pthread_t thread;
    assert (pthread_create (&thread, NULL, s_publisher, &publisher) == 0);
    s_race_t race = { .sink = (s_sink_t *) zmalloc (sizeof (s_sink_t)) };
    char url [64];
    snprintf (url, sizeof url, "redis://127.0.0.1:%d", port);
    wsr_redis_t *redis = wsr_redis_new (url, s_on_race_message, &race);
    wsr_redis_set_subscribed_fn (redis, s_on_race_subscribed, &race);
    wsr_history_t *history = wsr_history_new (redis, 100000, 120, false);
    int64_t deadline = wsr_util_mono_ms () + 5000;
    while (!wsr_redis_connected (redis) && wsr_util_mono_ms () < deadline)
        s_drive (redis, 10);
    assert (wsr_redis_connected (redis));

    int rounds = 0, recovered = 0, unrecovered = 0, gaps = 0, fresh = 0;
    uint64_t replayed = 0;
    int64_t end = wsr_util_mono_ms () + 15000;
    while (rounds < 300 && wsr_util_mono_ms () < end) {
        int channel = (int) randombytes_uniform (S_CHANNELS);
        char name [16];
        snprintf (name, sizeof name, "ws:r%d", channel);
        int mode = (int) randombytes_uniform (10);      //  0-5 near, 6 wrong epoch, 7-9 gap
        bool first = !race.subscribed [channel];
        //  Where the topic is now, to start from a random point behind it
        char epoch [WSR_HISTORY_EPOCH_MAX + 1] = "";
        uint64_t since = 0;
        if (!first) {
            race.channel = channel;
            race.recovery = wsr_recovery_new (NULL, 0, 0, 0, s_sink, race.sink);
            s_race_read (&race, redis, history, 0);
            wsr_recovery_destroy (&race.recovery);
            snprintf (epoch, sizeof epoch, "%s", mode == 6? "wrong": race.read_epoch);
            uint64_t back = randombytes_uniform (61);
            since = race.read_last > back? race.read_last - back: 0;
        }
        race.channel = channel;
        race.sink->count = 0;
        race.read_needed = false;
        race.drop_one = mode >= 7 && channel < S_SHORT;     //  repaired from history
        race.recovery = wsr_recovery_new (first? NULL: epoch, since, 0, 0, s_sink, race.sink);
        //  Subscribe first (once per topic: the link keeps it)
        if (first) {
            race.subscribed [channel] = true;
            wsr_redis_subscribe (redis, name);
            deadline = wsr_util_mono_ms () + 5000;
            while (!race.confirmed [channel] && wsr_util_mono_ms () < deadline)
                s_drive (redis, 10);
            assert (race.confirmed [channel]);
        }
        //  Let live messages pile up for a random while, then read
        int64_t pause = wsr_util_mono_ms () + randombytes_uniform (4);
        while (wsr_util_mono_ms () < pause)
            s_drive (redis, 1);
        s_race_read (&race, redis, history, first? 0: WSR_HISTORY_MAX_READ);
        uint64_t last = race.read_last;
        bool was_recovered = wsr_recovery_recovered (race.recovery);
        if (!first && mode != 6 && channel < S_SHORT)
            assert (was_recovered);                 //  20..60 behind, all kept
        if (mode == 6)
            assert (!was_recovered);
        wsr_recovery_flush (race.recovery);
        uint64_t start = was_recovered? since + 1: last + 1;
        //  Live messages continue, through a gap repair when one was made
        deadline = wsr_util_mono_ms () + 5000;
        while ((race.sink->count < (size_t) (last + 1 - start + S_LIVE_AFTER) || race.drop_one
                || wsr_recovery_state (race.recovery) != WSR_RECOVERY_LIVE)
           &&  wsr_util_mono_ms () < deadline) {
            s_drive (redis, 10);
            if (race.read_needed) {
                race.read_needed = false;
                gaps++;
                s_race_read (&race, redis, history, WSR_HISTORY_MAX_READ);
                assert (wsr_recovery_recovered (race.recovery));
                wsr_recovery_flush (race.recovery);
            }
        }
        //  Exactly start, start + 1, ...: no gap, no duplicate, right payloads
        assert (race.sink->count >= last + 1 - start + S_LIVE_AFTER);
        for (size_t i = 0; i < race.sink->count; i++) {
            assert (race.sink->offsets [i] == start + i);
            char data [24];
            snprintf (data, sizeof data, "o%" PRIu64, start + i);
            assert (streq (race.sink->data [i], data));
            //  One epoch (a topic read before its first append has none yet)
            assert (streq (race.sink->epochs [i], race.sink->epochs [0]));
            assert (streq (race.sink->epochs [i], race.read_epoch) || last == 0);
        }
        assert (!race.drop_one);                    //  the gap did happen
        replayed += was_recovered? last - since: 0;
        if (first)
            fresh++;
        else
        if (was_recovered)
            recovered++;
        else
            unrecovered++;
        wsr_recovery_destroy (&race.recovery);
        rounds++;
    }
    atomic_store (&publisher.stop, true);
    pthread_join (thread, NULL);
    assert (rounds >= 50 && race.plain == 0);
    assert (recovered > 0 && unrecovered > 0 && gaps > 0);
    if (verbose)
        printf ("\n  %d rounds: %d fresh, %d recovered (%" PRIu64 " entries replayed), %d not, "
                "%d gaps repaired; %" PRIu64 " appends\n", rounds, fresh, recovered, replayed,
                unrecovered, gaps, (uint64_t) atomic_load (&publisher.published));
    wsr_history_destroy (&history);
    wsr_redis_destroy (&redis);
    free (race.sink);
}

void
wsr_recovery_test (bool verbose)
{
    s_test_logic ();
    if (system ("command -v redis-server >/dev/null 2>&1") != 0) {
        printf ("SKIP (redis-server not installed)\n");
        exit (77);
    }
    int port = wsr_util_free_port ();
    char port_text [16];
    snprintf (port_text, sizeof port_text, "%d", port);
    const char *argv [] = { "redis-server", "--port", port_text, "--bind", "127.0.0.1",
                            "--save", "", "--appendonly", "no", NULL };
    pid_t server = wsr_util_spawn (argv);
    assert (server > 0);
    s_test_race (port, verbose);
    wsr_util_reap (server);
}
