//  wsr_hring — a new session worker's handover rings
//
//  During a handover the new process subscribes every topic of the old one
//  before the first session moves (ARCHITECTURE.md, "Zero-disconnect
//  upgrade"). Until a topic's sessions arrive, what is delivered for it is
//  held here, per topic, oldest first, with the mark the old process would
//  give it (a payload hash, or the history offset). A session arrives with
//  the mark of the last message its old worker queued on each topic; it
//  gets what the ring holds after that mark. The rings live until the
//  handover ends (sessions of one topic can arrive in several batches).

#include "wsr_classes.h"

typedef struct _s_item_t s_item_t;
struct _s_item_t {
    s_item_t *next;
    wsr_handover_mark_t mark;
    size_t size;
    uint8_t data [];
};

typedef struct {
    s_item_t *head, *tail;
    size_t count;
    uint64_t dropped;               //  taken off the head (or never kept) so far
} s_ring_t;

struct _wsr_hring_t {
    zhashx_t *rings;                //  key → s_ring_t (owned)
    size_t max_count;
    size_t max_bytes;
    size_t bytes;                   //  envelope bytes held
    uint64_t dropped;
};

static void
s_ring_destroy (void **item_p)
{
    s_ring_t *ring = (s_ring_t *) *item_p;
    if (!ring)
        return;
    while (ring->head) {
        s_item_t *next = ring->head->next;
        free (ring->head);
        ring->head = next;
    }
    free (ring);
    *item_p = NULL;
}

wsr_hring_t *
wsr_hring_new (size_t max_count, size_t max_bytes)
{
    wsr_hring_t *self = (wsr_hring_t *) zmalloc (sizeof (wsr_hring_t));
    self->rings = zhashx_new ();
    zhashx_set_destructor (self->rings, s_ring_destroy);
    self->max_count = max_count? max_count: 1;
    self->max_bytes = max_bytes;
    return self;
}

void
wsr_hring_destroy (wsr_hring_t **self_p)
{
    assert (self_p);
    wsr_hring_t *self = *self_p;
    if (!self)
        return;
    zhashx_destroy (&self->rings);
    free (self);
    *self_p = NULL;
}

bool
wsr_hring_watch (wsr_hring_t *self, const char *key)
{
    assert (self && key);
    if (zhashx_lookup (self->rings, key))
        return false;
    zhashx_insert (self->rings, key, zmalloc (sizeof (s_ring_t)));
    return true;
}

bool
wsr_hring_watched (wsr_hring_t *self, const char *key)
{
    assert (self && key);
    return zhashx_lookup (self->rings, key) != NULL;
}

//  Take the oldest delivery of a ring off.
static void
s_drop_head (wsr_hring_t *self, s_ring_t *ring)
{
    s_item_t *item = ring->head;
    ring->head = item->next;
    if (!ring->head)
        ring->tail = NULL;
    ring->count--;
    ring->dropped++;
    self->dropped++;
    self->bytes -= item->size;
    free (item);
}

bool
wsr_hring_add (wsr_hring_t *self, const char *key, const wsr_handover_mark_t *mark,
               const uint8_t *envelope, size_t size)
{
    assert (self && key && mark);
    s_ring_t *ring = (s_ring_t *) zhashx_lookup (self->rings, key);
    if (!ring)
        return false;
    while (ring->head && (ring->count >= self->max_count
                       || self->bytes + size > self->max_bytes))
        s_drop_head (self, ring);
    if (self->bytes + size > self->max_bytes) {
        //  Alone over the bound: not kept, and what came before is gone too
        ring->dropped++;
        self->dropped++;
        return false;
    }
    s_item_t *item = (s_item_t *) malloc (sizeof (s_item_t) + size);
    assert (item);
    item->next = NULL;
    item->mark = *mark;
    item->size = size;
    if (size)
        memcpy (item->data, envelope, size);
    if (ring->tail)
        ring->tail->next = item;
    else
        ring->head = item;
    ring->tail = item;
    ring->count++;
    self->bytes += size;
    return true;
}

size_t
wsr_hring_replay (wsr_hring_t *self, const char *key, const wsr_handover_mark_t *mark,
                  wsr_hring_fn *fn, void *arg, bool *gap_p)
{
    assert (self && key && mark && fn);
    if (gap_p)
        *gap_p = false;
    s_ring_t *ring = (s_ring_t *) zhashx_lookup (self->rings, key);
    if (!ring)
        return 0;
    //  Where the old worker stopped: the first item after its mark
    s_item_t *from = ring->head;
    bool found = mark->kind == WSR_HANDOVER_MARK_NONE;
    if (mark->kind == WSR_HANDOVER_MARK_OFFSET) {
        for (s_item_t *item = ring->head; item; item = item->next)
            if (item->mark.kind == WSR_HANDOVER_MARK_OFFSET && item->mark.value <= mark->value) {
                from = item->next;
                found = true;
            }
        //  The ring starts right after it: nothing between was dropped
        if (!found && ring->head && ring->head->mark.kind == WSR_HANDOVER_MARK_OFFSET
        &&  ring->head->mark.value == mark->value + 1)
            found = true;
    }
    else
    if (mark->kind == WSR_HANDOVER_MARK_HASH) {
        for (s_item_t *item = ring->head; item; item = item->next)
            if (item->mark.kind == WSR_HANDOVER_MARK_HASH && item->mark.value == mark->value) {
                from = item->next;
                found = true;
                break;
            }
    }
    if (!found && ring->dropped && gap_p)
        *gap_p = true;
    size_t count = 0;
    for (s_item_t *item = from; item; item = item->next) {
        fn (arg, item->data, item->size);
        count++;
    }
    return count;
}

const char *
wsr_hring_first (wsr_hring_t *self)
{
    assert (self);
    return zhashx_first (self->rings)? (const char *) zhashx_cursor (self->rings): NULL;
}

const char *
wsr_hring_next (wsr_hring_t *self)
{
    assert (self);
    return zhashx_next (self->rings)? (const char *) zhashx_cursor (self->rings): NULL;
}

uint64_t
wsr_hring_dropped (wsr_hring_t *self)
{
    assert (self);
    return self->dropped;
}

size_t
wsr_hring_bytes (wsr_hring_t *self)
{
    assert (self);
    return self->bytes;
}

//  --------------------------------------------------------------------------
//  Self test: the matching rules on their own. A topic's messages are
//  "m1".."mN"; the old worker queued up to some mK, the new one's ring
//  holds from its subscription on. The session must get exactly m(K+1)..

typedef struct {
    char got [64][16];
    size_t count;
} s_sink_t;

static void
s_sink (void *arg, const uint8_t *envelope, size_t size)
{
    s_sink_t *sink = (s_sink_t *) arg;
    assert (sink->count < 64 && size < 16);
    memcpy (sink->got [sink->count], envelope, size);
    sink->got [sink->count++][size] = 0;
}

static wsr_handover_mark_t
s_hash_mark (const char *text)
{
    wsr_handover_mark_t mark = {
        WSR_HANDOVER_MARK_HASH, wsr_handover_hash (1, (const uint8_t *) text, strlen (text))
    };
    return mark;
}

static void
s_add (wsr_hring_t *self, const char *key, const char *text, uint64_t offset)
{
    wsr_handover_mark_t mark = offset? (wsr_handover_mark_t) { WSR_HANDOVER_MARK_OFFSET, offset }
                                     : s_hash_mark (text);
    wsr_hring_add (self, key, &mark, (const uint8_t *) text, strlen (text));
}

//  Replay into a fresh sink; check the names in order.
static void
s_expect (wsr_hring_t *self, const char *key, wsr_handover_mark_t mark, bool gap_want,
          const char *want)
{
    s_sink_t sink = { .count = 0 };
    bool gap = !gap_want;
    size_t n = wsr_hring_replay (self, key, &mark, s_sink, &sink, &gap);
    char line [512] = "";
    for (size_t i = 0; i < sink.count; i++) {
        strcat (line, i? " ": "");
        strcat (line, sink.got [i]);
    }
    if (!streq (line, want) || gap != gap_want || n != sink.count) {
        printf ("replay of %s: got \"%s\" gap %d, want \"%s\" gap %d\n", key, line, gap,
                want, gap_want);
        assert (false);
    }
}

void
wsr_hring_test (bool verbose)
{
    printf (" * wsr_hring: ");
    if (verbose)
        printf ("\n");
    wsr_hring_t *self = wsr_hring_new (8, 1024);
    const wsr_handover_mark_t none = { WSR_HANDOVER_MARK_NONE, 0 };

    //  Unwatched: nothing kept
    s_add (self, "user:a", "m1", 0);
    assert (wsr_hring_bytes (self) == 0);
    s_expect (self, "user:a", none, false, "");
    assert (wsr_hring_watch (self, "user:a") && !wsr_hring_watch (self, "user:a"));
    assert (wsr_hring_watched (self, "user:a") && !wsr_hring_watched (self, "user:b"));

    //  The ring holds m3..m6 (published after the new subscription)
    for (int i = 3; i <= 6; i++) {
        char text [8];
        snprintf (text, sizeof text, "m%d", i);
        s_add (self, "user:a", text, 0);
    }
    assert (wsr_hring_bytes (self) == 8);
    //  Overlap: the old worker queued up to m4 → m5 m6
    s_expect (self, "user:a", s_hash_mark ("m4"), false, "m5 m6");
    //  It queued everything the ring has → nothing
    s_expect (self, "user:a", s_hash_mark ("m6"), false, "");
    //  Its last came before the ring (m2) → all of it, no gap (nothing dropped)
    s_expect (self, "user:a", s_hash_mark ("m2"), false, "m3 m4 m5 m6");
    //  It had queued nothing on the topic → all of it
    s_expect (self, "user:a", none, false, "m3 m4 m5 m6");
    //  Replays do not consume: another session of the topic gets its own
    s_expect (self, "user:a", s_hash_mark ("m3"), false, "m4 m5 m6");

    //  Identical payloads: after the first one (the rule documented)
    wsr_hring_watch (self, "user:same");
    s_add (self, "user:same", "x", 0);
    s_add (self, "user:same", "y", 0);
    s_add (self, "user:same", "x", 0);
    s_expect (self, "user:same", s_hash_mark ("x"), false, "y x");

    //  Offsets (history): after the last entry at or below the mark
    wsr_hring_watch (self, "channel:h");
    s_add (self, "channel:h", "o10", 10);
    s_add (self, "channel:h", "o11", 11);
    s_add (self, "channel:h", "o12", 12);
    wsr_handover_mark_t offset = { WSR_HANDOVER_MARK_OFFSET, 10 };
    s_expect (self, "channel:h", offset, false, "o11 o12");
    offset.value = 12;
    s_expect (self, "channel:h", offset, false, "");
    offset.value = 4;
    s_expect (self, "channel:h", offset, false, "o10 o11 o12");

    //  Overflow by count (8 per topic): m3..m6 + m7..m12 → m5..m12 kept
    for (int i = 7; i <= 12; i++) {
        char text [8];
        snprintf (text, sizeof text, "m%d", i);
        s_add (self, "user:a", text, 0);
    }
    assert (wsr_hring_dropped (self) == 2);
    //  Found: exact, no gap
    s_expect (self, "user:a", s_hash_mark ("m10"), false, "m11 m12");
    //  Not found after a drop: everything kept, and a gap reported
    s_expect (self, "user:a", s_hash_mark ("m3"), true, "m5 m6 m7 m8 m9 m10 m11 m12");
    s_expect (self, "user:a", none, false, "m5 m6 m7 m8 m9 m10 m11 m12");
    //  Offsets after a drop: a mark right before the head is no gap
    for (int i = 13; i <= 18; i++) {
        char text [8];
        snprintf (text, sizeof text, "o%d", i);
        s_add (self, "channel:h", text, (uint64_t) i);
    }
    offset.value = 10;
    s_expect (self, "channel:h", offset, false, "o11 o12 o13 o14 o15 o16 o17 o18");
    offset.value = 9;
    s_expect (self, "channel:h", offset, true, "o11 o12 o13 o14 o15 o16 o17 o18");

    //  Overflow by bytes: 1024 in all; one large delivery makes room by
    //  dropping its own topic's oldest, one over the whole bound is not kept
    uint64_t dropped = wsr_hring_dropped (self);
    wsr_hring_watch (self, "user:big");
    uint8_t big [1024];
    memset (big, 'b', sizeof big);
    wsr_handover_mark_t big_mark = { WSR_HANDOVER_MARK_HASH, 77 };
    assert (!wsr_hring_add (self, "user:big", &big_mark, big, sizeof big));
    assert (wsr_hring_dropped (self) == dropped + 1);
    assert (wsr_hring_bytes (self) <= 1024);
    size_t before = wsr_hring_bytes (self);
    assert (wsr_hring_add (self, "user:big", &big_mark, big, 1000 - before));
    assert (!wsr_hring_add (self, "user:big", &big_mark, big, 100)
         || wsr_hring_bytes (self) <= 1024);
    assert (wsr_hring_bytes (self) <= 1024);

    //  Iteration over the watched keys
    size_t keys = 0;
    for (const char *key = wsr_hring_first (self); key; key = wsr_hring_next (self))
        keys++;
    assert (keys == 4);
    wsr_hring_destroy (&self);
    wsr_hring_destroy (&self);
    printf ("OK\n");
}
