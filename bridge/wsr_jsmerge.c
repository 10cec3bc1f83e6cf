//  wsr_jsmerge — one delivery per NATS message that arrives twice: from the core
//  subscription and from the JetStream history stream's live consumer
//
//  With a JetStream history stream, a backend's plain NATS publish reaches
//  the bridge twice: at once through the core subscription of its subject,
//  and a little later through the stream's live consumer, stored and with
//  its offset. The stream copy is the one to deliver (clients get offsets),
//  but the stream can stop while core NATS goes on: when a server dies, a
//  stream whose leader it was stores nothing until its replicas elect
//  another one (4–9 s on nats-server), and a consumer on a lost server is
//  silent until it is made again. Without the core copy, every message of
//  that time would be lost for live sessions.
//
//  So a core copy is held until its stream copy arrives (then the stream
//  copy is delivered and the core copy dropped), for at most wait_ms while
//  the stream is silent: the stream is then taken to be down, the held
//  copies are delivered in arrival order (without offsets), and so is every
//  later core copy at once, until a stream copy arrives again. A stream
//  copy whose core copy was delivered is dropped; a stream copy that comes
//  first is delivered and its core copy dropped when it comes. While the
//  stream delivers but lags, a core copy waits at most
//  WSR_JSMERGE_HOLD_MAX_MS.
//
//  Copies are matched by a keyed 64-bit fingerprint (SipHash) of subject
//  and payload, counted as a multiset: the same payload published twice on
//  a subject is two messages. Three FIFO rings (held core copies, delivered
//  core copies, delivered stream copies) remember arrival order and age;
//  entries matched out of order are skipped lazily when they reach a ring's
//  head (entries with one fingerprint are interchangeable). Everything is
//  bounded: held copies (count and bytes), remembered copies (count, age).

#include "wsr_classes.h"
#include <sodium.h>

typedef struct {
    uint64_t fp;                    //  fingerprint
    int64_t at;                     //  mono ms it arrived
    void *held;                     //  held rings: the s_held_t, else NULL
} s_entry_t;

typedef struct {
    s_entry_t *entries;             //  circular
    size_t cap;                     //  capacity (fixed at creation)
    size_t head;                    //  oldest
    size_t size;                    //  entries in use
} s_ring_t;

typedef struct {
    size_t subject_len;
    size_t size;
    uint8_t bytes [];               //  subject, then payload
} s_held_t;

//  A fingerprint's counts: per ring, the live entries and those matched but
//  still in the ring (skipped when they reach its head)
typedef enum { S_HELD, S_CORE, S_STREAM, S_RINGS } s_which_t;

typedef struct {
    uint64_t fp;                    //  the key (zhashx keys point here)
    uint32_t live [S_RINGS];
    uint32_t skip [S_RINGS];
} s_count_t;

struct _wsr_jsmerge_t {
    int wait_ms;                    //  silence that makes the stream down
    uint8_t key [crypto_shorthash_KEYBYTES];    //  fingerprint key, random
    s_ring_t rings [S_RINGS];       //  held core copies, delivered core, delivered stream
    zhashx_t *counts;               //  fingerprint → s_count_t
    size_t held_bytes;              //  payload and subject bytes held
    int64_t last_stream;            //  mono ms of the last stream copy (0: none)
    bool degraded;                  //  the stream is taken to be down
};

//  --------------------------------------------------------------------------
//  Fingerprints and counts

static uint64_t
s_fingerprint (wsr_jsmerge_t *self, const char *subject, size_t subject_len,
               const uint8_t *data, size_t size)
{
    //  The payload hashed under a key derived from the subject's hash: two
    //  messages match only if both are equal
    uint8_t first [crypto_shorthash_BYTES];
    crypto_shorthash (first, (const uint8_t *) subject, subject_len, self->key);
    uint8_t key [crypto_shorthash_KEYBYTES];
    memcpy (key, self->key, sizeof key);
    for (size_t i = 0; i < sizeof first; i++)
        key [i] ^= first [i];
    uint8_t out [crypto_shorthash_BYTES];
    crypto_shorthash (out, data, size, key);
    uint64_t fp;
    memcpy (&fp, out, sizeof fp);
    return fp;
}

static size_t
s_key_hash (const void *key)
{
    return (size_t) *(const uint64_t *) key;
}

static int
s_key_compare (const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
    return x < y? -1: x > y? 1: 0;
}

static void
s_count_free (void **item)
{
    free (*item);
    *item = NULL;
}

static s_count_t *
s_count (wsr_jsmerge_t *self, uint64_t fp, bool create)
{
    s_count_t *count = (s_count_t *) zhashx_lookup (self->counts, &fp);
    if (!count && create) {
        count = (s_count_t *) zmalloc (sizeof (s_count_t));
        assert (count);
        count->fp = fp;
        zhashx_insert (self->counts, &count->fp, count);
    }
    return count;
}

//  Forget a fingerprint with nothing left on any ring.
static void
s_count_tidy (wsr_jsmerge_t *self, s_count_t *count)
{
    for (int i = 0; i < S_RINGS; i++)
        if (count->live [i] || count->skip [i])
            return;
    uint64_t fp = count->fp;
    zhashx_delete (self->counts, &fp);
}

//  --------------------------------------------------------------------------
//  Rings

static s_entry_t *
s_ring_head (s_ring_t *ring)
{
    return ring->size? &ring->entries [ring->head]: NULL;
}

//  Remove the head; returns whether it was live (not matched before). The
//  held copy, if any, is returned in *held_p (caller frees) or freed.
static bool
s_ring_pop (wsr_jsmerge_t *self, s_which_t which, s_held_t **held_p)
{
    s_ring_t *ring = &self->rings [which];
    assert (ring->size);
    s_entry_t entry = ring->entries [ring->head];
    ring->head = (ring->head + 1) % ring->cap;
    ring->size--;
    s_held_t *held = (s_held_t *) entry.held;
    if (held)
        self->held_bytes -= held->subject_len + held->size;
    s_count_t *count = s_count (self, entry.fp, false);
    assert (count);
    bool live = count->skip [which] == 0;
    if (live)
        count->live [which]--;
    else
        count->skip [which]--;
    s_count_tidy (self, count);
    if (held_p && live)
        *held_p = held;
    else
        free (held);
    return live;
}

static void
s_ring_push (wsr_jsmerge_t *self, s_which_t which, uint64_t fp, int64_t now, s_held_t *held)
{
    s_ring_t *ring = &self->rings [which];
    if (ring->size == ring->cap)
        s_ring_pop (self, which, NULL);     //  the oldest is forgotten (rings of copies
                                            //  delivered; the held ring never fills here)
    ring->entries [(ring->head + ring->size) % ring->cap] = (s_entry_t) { fp, now, held };
    ring->size++;
    if (held)
        self->held_bytes += held->subject_len + held->size;
    s_count (self, fp, true)->live [which]++;
}

//  A live entry of which on fp is matched: it stays in its ring, skipped.
static bool
s_match (wsr_jsmerge_t *self, s_which_t which, uint64_t fp)
{
    s_count_t *count = s_count (self, fp, false);
    if (!count || count->live [which] == 0)
        return false;
    count->live [which]--;
    count->skip [which]++;
    return true;
}

//  --------------------------------------------------------------------------
//  Create.
wsr_jsmerge_t *
wsr_jsmerge_new (int wait_ms)
{
    wsr_jsmerge_t *self = (wsr_jsmerge_t *) zmalloc (sizeof (wsr_jsmerge_t));
    if (!self)
        return NULL;
    self->wait_ms = wait_ms > 0? wait_ms: WSR_JSMERGE_WAIT_MS;
    randombytes_buf (self->key, sizeof self->key);
    size_t caps [S_RINGS] = { WSR_JSMERGE_HELD_MAX, WSR_JSMERGE_SEEN_MAX, WSR_JSMERGE_SEEN_MAX };
    bool ok = true;
    for (int i = 0; i < S_RINGS; i++) {
        self->rings [i].cap = caps [i];
        self->rings [i].entries = (s_entry_t *) calloc (caps [i], sizeof (s_entry_t));
        ok = ok && self->rings [i].entries;
    }
    self->counts = zhashx_new ();
    if (!ok || !self->counts) {
        wsr_jsmerge_destroy (&self);
        return NULL;
    }
    zhashx_set_key_hasher (self->counts, s_key_hash);
    zhashx_set_key_comparator (self->counts, s_key_compare);
    zhashx_set_key_duplicator (self->counts, NULL);
    zhashx_set_key_destructor (self->counts, NULL);
    zhashx_set_destructor (self->counts, s_count_free);
    return self;
}

//  Destroy.
void
wsr_jsmerge_destroy (wsr_jsmerge_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        wsr_jsmerge_t *self = *self_p;
        s_ring_t *held = &self->rings [S_HELD];
        for (size_t i = 0; held->entries && i < held->size; i++)
            free (held->entries [(held->head + i) % held->cap].held);
        for (int i = 0; i < S_RINGS; i++)
            free (self->rings [i].entries);
        zhashx_destroy (&self->counts);
        free (self);
        *self_p = NULL;
    }
}

//  --------------------------------------------------------------------------
//  A core copy.
wsr_jsmerge_verdict_t
wsr_jsmerge_core (wsr_jsmerge_t *self, const char *subject, size_t subject_len,
                  const uint8_t *data, size_t size, int64_t now)
{
    assert (self);
    uint64_t fp = s_fingerprint (self, subject, subject_len, data, size);
    if (s_match (self, S_STREAM, fp))
        return WSR_JSMERGE_DROP;            //  its stream copy came first
    s_ring_t *held_ring = &self->rings [S_HELD];
    if (self->degraded || held_ring->size == held_ring->cap
    ||  self->held_bytes + subject_len + size > WSR_JSMERGE_HELD_BYTES) {
        s_ring_push (self, S_CORE, fp, now, NULL);
        return WSR_JSMERGE_DELIVER;
    }
    s_held_t *held = (s_held_t *) malloc (sizeof (s_held_t) + subject_len + size);
    if (!held) {
        s_ring_push (self, S_CORE, fp, now, NULL);
        return WSR_JSMERGE_DELIVER;
    }
    held->subject_len = subject_len;
    held->size = size;
    memcpy (held->bytes, subject, subject_len);
    if (size)
        memcpy (held->bytes + subject_len, data, size);
    s_ring_push (self, S_HELD, fp, now, held);
    return WSR_JSMERGE_HOLD;
}

//  --------------------------------------------------------------------------
//  A stream copy.
wsr_jsmerge_verdict_t
wsr_jsmerge_stream (wsr_jsmerge_t *self, const char *subject, size_t subject_len,
                    const uint8_t *data, size_t size, int64_t now)
{
    assert (self);
    self->last_stream = now;
    self->degraded = false;
    uint64_t fp = s_fingerprint (self, subject, subject_len, data, size);
    if (s_match (self, S_HELD, fp))
        return WSR_JSMERGE_DELIVER;         //  instead of the held core copy
    if (s_match (self, S_CORE, fp))
        return WSR_JSMERGE_DROP;            //  delivered from core while the stream was down
    s_ring_push (self, S_STREAM, fp, now, NULL);
    return WSR_JSMERGE_DELIVER;
}

//  --------------------------------------------------------------------------
//  Held copies due, in arrival order; remembered copies aged out.
size_t
wsr_jsmerge_expire (wsr_jsmerge_t *self, int64_t now, wsr_jsmerge_fn *fn, void *arg)
{
    assert (self);
    size_t given = 0;
    s_entry_t *head;
    while ((head = s_ring_head (&self->rings [S_HELD]))) {
        s_count_t *count = s_count (self, head->fp, false);
        bool matched = count && count->skip [S_HELD] > 0;
        bool silent = now - self->last_stream >= self->wait_ms;
        bool due = now - head->at >= WSR_JSMERGE_HOLD_MAX_MS
                || (now - head->at >= self->wait_ms && silent);
        if (!matched && !due)
            break;
        if (!matched && silent)
            self->degraded = true;          //  and everything held goes now
        uint64_t fp = head->fp;
        s_held_t *held = NULL;
        if (s_ring_pop (self, S_HELD, &held) && held) {
            fn (arg, (const char *) held->bytes, held->subject_len,
                held->bytes + held->subject_len, held->size);
            free (held);
            s_ring_push (self, S_CORE, fp, now, NULL);
            given++;
        }
        if (self->degraded) {
            while (self->rings [S_HELD].size) {
                fp = s_ring_head (&self->rings [S_HELD])->fp;
                held = NULL;
                if (s_ring_pop (self, S_HELD, &held) && held) {
                    fn (arg, (const char *) held->bytes, held->subject_len,
                        held->bytes + held->subject_len, held->size);
                    free (held);
                    s_ring_push (self, S_CORE, fp, now, NULL);
                    given++;
                }
            }
        }
    }
    for (int which = S_CORE; which <= S_STREAM; which++)
        while ((head = s_ring_head (&self->rings [which]))
           &&  now - head->at >= WSR_JSMERGE_SEEN_MS)
            s_ring_pop (self, (s_which_t) which, NULL);
    return given;
}

//  --------------------------------------------------------------------------
//  When expire() has work next.
int64_t
wsr_jsmerge_due (wsr_jsmerge_t *self)
{
    assert (self);
    int64_t due = INT64_MAX;
    s_entry_t *head = s_ring_head (&self->rings [S_HELD]);
    if (head) {
        int64_t silent_at = self->last_stream + self->wait_ms;
        int64_t hold_max = head->at + WSR_JSMERGE_HOLD_MAX_MS;
        int64_t wait = head->at + self->wait_ms;
        due = silent_at < hold_max? silent_at: hold_max;
        if (due < wait)
            due = wait;
    }
    for (int which = S_CORE; which <= S_STREAM; which++) {
        head = s_ring_head (&self->rings [which]);
        if (head && head->at + WSR_JSMERGE_SEEN_MS < due)
            due = head->at + WSR_JSMERGE_SEEN_MS;
    }
    return due;
}

bool
wsr_jsmerge_degraded (wsr_jsmerge_t *self)
{
    assert (self);
    return self->degraded;
}

size_t
wsr_jsmerge_held (wsr_jsmerge_t *self)
{
    assert (self);
    return self->rings [S_HELD].size;
}

//  --------------------------------------------------------------------------
//  Self test

typedef struct {
    char got [64][32];
    int count;
} s_sink_t;

static void
s_sink (void *arg, const char *subject, size_t subject_len, const uint8_t *data, size_t size)
{
    s_sink_t *sink = (s_sink_t *) arg;
    assert (sink->count < 64);
    snprintf (sink->got [sink->count++], 32, "%.*s/%.*s", (int) subject_len, subject,
              (int) size, (const char *) data);
}

#define S_CORE_(m, s, d, t) wsr_jsmerge_core (m, s, strlen (s), (const uint8_t *) d, strlen (d), t)
#define S_STREAM_(m, s, d, t) \
    wsr_jsmerge_stream (m, s, strlen (s), (const uint8_t *) d, strlen (d), t)

void
wsr_jsmerge_test (bool verbose)
{
    printf (" * wsr_jsmerge: ");
    (void) verbose;
    s_sink_t sink = { .count = 0 };

    //  Stream alive: the core copy is held, the stream copy delivered, both once
    wsr_jsmerge_t *m = wsr_jsmerge_new (500);
    assert (m);
    assert (S_STREAM_ (m, "u.z", "warm", 1000) == WSR_JSMERGE_DELIVER);
    assert (S_CORE_ (m, "u.a", "1", 1000) == WSR_JSMERGE_HOLD);
    assert (S_CORE_ (m, "u.a", "2", 1001) == WSR_JSMERGE_HOLD);
    assert (wsr_jsmerge_held (m) == 2);
    assert (wsr_jsmerge_due (m) >= 1500);
    assert (S_STREAM_ (m, "u.a", "1", 1010) == WSR_JSMERGE_DELIVER);
    assert (S_STREAM_ (m, "u.a", "2", 1011) == WSR_JSMERGE_DELIVER);
    assert (wsr_jsmerge_expire (m, 1012, s_sink, &sink) == 0 && sink.count == 0);
    assert (wsr_jsmerge_held (m) == 0);
    //  Same payload, other subject: another message
    assert (S_CORE_ (m, "u.b", "1", 1020) == WSR_JSMERGE_HOLD);
    //  The same payload twice on a subject: two messages
    assert (S_CORE_ (m, "u.a", "x", 1020) == WSR_JSMERGE_HOLD);
    assert (S_CORE_ (m, "u.a", "x", 1021) == WSR_JSMERGE_HOLD);
    assert (S_STREAM_ (m, "u.b", "1", 1030) == WSR_JSMERGE_DELIVER);
    assert (S_STREAM_ (m, "u.a", "x", 1030) == WSR_JSMERGE_DELIVER);
    assert (S_STREAM_ (m, "u.a", "x", 1031) == WSR_JSMERGE_DELIVER);
    assert (wsr_jsmerge_expire (m, 1032, s_sink, &sink) == 0 && wsr_jsmerge_held (m) == 0);

    //  Stream copy first: delivered, the late core copy dropped
    assert (S_STREAM_ (m, "u.a", "3", 1100) == WSR_JSMERGE_DELIVER);
    assert (S_CORE_ (m, "u.a", "3", 1101) == WSR_JSMERGE_DROP);

    //  The stream lags but delivers: nothing given before the hold maximum
    assert (S_CORE_ (m, "u.a", "4", 2000) == WSR_JSMERGE_HOLD);
    for (int64_t t = 2100; t < 2000 + WSR_JSMERGE_HOLD_MAX_MS; t += 100) {
        assert (S_STREAM_ (m, "u.other", "y", t) == WSR_JSMERGE_DELIVER);
        assert (wsr_jsmerge_expire (m, t, s_sink, &sink) == 0);
    }
    assert (!wsr_jsmerge_degraded (m));
    assert (wsr_jsmerge_expire (m, 2000 + WSR_JSMERGE_HOLD_MAX_MS, s_sink, &sink) == 1);
    assert (sink.count == 1 && streq (sink.got [0], "u.a/4"));
    //  ... and its stream copy, when it comes, is dropped
    assert (S_STREAM_ (m, "u.a", "4", 4100) == WSR_JSMERGE_DROP);

    //  The stream stops: after wait_ms of silence the held copies go in
    //  order, later core copies at once; when it comes back, the copies it
    //  brings of what went from core are dropped, new ones delivered
    sink.count = 0;
    assert (S_CORE_ (m, "u.a", "5", 5000) == WSR_JSMERGE_HOLD);
    assert (S_CORE_ (m, "u.c", "6", 5200) == WSR_JSMERGE_HOLD);
    assert (wsr_jsmerge_due (m) == 5500);
    assert (wsr_jsmerge_expire (m, 5499, s_sink, &sink) == 0);
    assert (wsr_jsmerge_expire (m, 5500, s_sink, &sink) == 2);
    assert (wsr_jsmerge_degraded (m));
    assert (streq (sink.got [0], "u.a/5") && streq (sink.got [1], "u.c/6"));
    assert (S_CORE_ (m, "u.a", "7", 5600) == WSR_JSMERGE_DELIVER);
    assert (S_STREAM_ (m, "u.a", "5", 9000) == WSR_JSMERGE_DROP);
    assert (!wsr_jsmerge_degraded (m));
    assert (S_STREAM_ (m, "u.a", "7", 9001) == WSR_JSMERGE_DROP);
    assert (S_CORE_ (m, "u.a", "8", 9002) == WSR_JSMERGE_HOLD);
    assert (S_STREAM_ (m, "u.a", "8", 9003) == WSR_JSMERGE_DELIVER);
    //  "6" never came from the stream (published while it had no leader)
    //  and is forgotten after WSR_JSMERGE_SEEN_MS, like everything else
    assert (wsr_jsmerge_expire (m, 9004, s_sink, &sink) == 0);
    assert (wsr_jsmerge_held (m) == 0);
    assert (wsr_jsmerge_due (m) > 9004 && wsr_jsmerge_due (m) < INT64_MAX);
    wsr_jsmerge_expire (m, 9004 + WSR_JSMERGE_SEEN_MS, s_sink, &sink);
    assert (wsr_jsmerge_due (m) == INT64_MAX);
    assert (zhashx_size (m->counts) == 0);

    //  A stream never seen: the first core copy waits wait_ms, then all flow
    wsr_jsmerge_destroy (&m);
    m = wsr_jsmerge_new (0);
    sink.count = 0;
    assert (S_CORE_ (m, "u.a", "1", 100000) == WSR_JSMERGE_HOLD);
    assert (wsr_jsmerge_expire (m, 100000 + WSR_JSMERGE_WAIT_MS, s_sink, &sink) == 1);
    assert (S_CORE_ (m, "u.a", "2", 100001 + WSR_JSMERGE_WAIT_MS) == WSR_JSMERGE_DELIVER);

    //  Bounded: held copies over the cap are delivered at once; remembered
    //  copies over theirs forget the oldest
    wsr_jsmerge_destroy (&m);
    m = wsr_jsmerge_new (500);
    assert (S_STREAM_ (m, "u.z", "warm", 1) == WSR_JSMERGE_DELIVER);
    char data [32];
    for (int i = 0; i < WSR_JSMERGE_HELD_MAX; i++) {
        snprintf (data, sizeof data, "%d", i);
        assert (S_CORE_ (m, "u.a", data, 2) == WSR_JSMERGE_HOLD);
    }
    assert (S_CORE_ (m, "u.a", "over", 2) == WSR_JSMERGE_DELIVER);
    wsr_jsmerge_destroy (&m);
    m = wsr_jsmerge_new (500);
    for (int i = 0; i < WSR_JSMERGE_SEEN_MAX + 10; i++) {
        snprintf (data, sizeof data, "s%d", i);
        assert (S_STREAM_ (m, "u.b", data, 3) == WSR_JSMERGE_DELIVER);
    }
    assert (m->rings [S_STREAM].size == WSR_JSMERGE_SEEN_MAX);
    assert (S_CORE_ (m, "u.b", "s0", 4) == WSR_JSMERGE_HOLD);       //  forgotten
    assert (S_CORE_ (m, "u.b", "s10", 4) == WSR_JSMERGE_DROP);      //  remembered
    wsr_jsmerge_destroy (&m);
    assert (m == NULL);
    printf ("OK\n");
}
