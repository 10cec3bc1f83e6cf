//  wsr_census — the node's busiest topics, counted by the session workers for the console
//
//  Topic tables belong to the session workers and are never read by another
//  thread. When the console asks (GET /api/topics, wsr_census_want), each
//  worker walks its own table (wsr_topic_walk) WSR_CENSUS_STEP topics per
//  turn of its loop, so no turn is held up for long, and keeps its N
//  largest topics in a bounded min-heap (O(topics · log N), no allocation);
//  commit publishes the list under a mutex. A new count is due
//  WSR_CENSUS_PERIOD_MS after the last, or 1 ms per WSR_CENSUS_TOPICS_PER_MS
//  topics held if that is longer (a million topics: every 20 s), which keeps
//  the walks' share of a worker small. Nobody asking: the workers do
//  nothing but read one atomic.
//  The answer sums each worker's top N by key: exact while each worker holds
//  at most N topics, a lower bound for a topic that falls out of some
//  worker's top N otherwise.
//
//  Shared state (like wsr_metrics): owned by the node, outlives every actor.

#include "wsr_classes.h"
#include <jansson.h>

typedef struct {
    char key [WSR_TOPIC_MAX];       //  topic key, NUL-terminated
    size_t count;                   //  members in this worker
} s_item_t;

typedef struct {
    s_item_t *heap;                 //  while counting: min-heap by count (worker's own)
    size_t heap_size;
    s_item_t *list;                 //  last count, largest first (under the mutex)
    size_t list_size;
    size_t topics;                  //  topics the worker held at its last count
    int64_t counted;                //  mono ms of its last count, 0 = never
} s_worker_t;

struct _wsr_census_t {
    int workers;                    //  number of workers
    size_t top;                     //  N kept per worker
    s_worker_t *worker;             //  one per worker (owned)
    atomic_int_fast64_t wanted_until;   //  mono ms: count until then
    pthread_mutex_t lock;           //  guards each worker's list, list_size, topics, counted
};

//  --------------------------------------------------------------------------
//  Create the census.
wsr_census_t *
wsr_census_new (int workers, size_t top)
{
    assert (workers > 0 && top > 0);
    wsr_census_t *self = (wsr_census_t *) zmalloc (sizeof (wsr_census_t));
    self->workers = workers;
    self->top = top;
    self->worker = (s_worker_t *) zmalloc (sizeof (s_worker_t) * (size_t) workers);
    for (int i = 0; i < workers; i++) {
        self->worker [i].heap = (s_item_t *) zmalloc (sizeof (s_item_t) * top);
        self->worker [i].list = (s_item_t *) zmalloc (sizeof (s_item_t) * top);
    }
    atomic_init (&self->wanted_until, 0);
    pthread_mutex_init (&self->lock, NULL);
    return self;
}

//  --------------------------------------------------------------------------
//  Destroy the census.
void
wsr_census_destroy (wsr_census_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        wsr_census_t *self = *self_p;
        for (int i = 0; i < self->workers; i++) {
            free (self->worker [i].heap);
            free (self->worker [i].list);
        }
        free (self->worker);
        pthread_mutex_destroy (&self->lock);
        free (self);
        *self_p = NULL;
    }
}

//  --------------------------------------------------------------------------
//  The console looks: count for a while.
void
wsr_census_want (wsr_census_t *self)
{
    assert (self);
    atomic_store_explicit (&self->wanted_until, wsr_util_mono_ms () + WSR_CENSUS_WANTED_MS,
                           memory_order_relaxed);
}

//  --------------------------------------------------------------------------
//  Should this worker count now?
bool
wsr_census_due (wsr_census_t *self, int worker, int64_t now_ms)
{
    assert (self && worker >= 0 && worker < self->workers);
    if (now_ms >= atomic_load_explicit (&self->wanted_until, memory_order_relaxed))
        return false;
    //  Only this worker writes its `counted` and `topics`: no lock to read them
    s_worker_t *w = &self->worker [worker];
    int64_t period = (int64_t) (w->topics / WSR_CENSUS_TOPICS_PER_MS);
    if (period < WSR_CENSUS_PERIOD_MS)
        period = WSR_CENSUS_PERIOD_MS;
    return w->counted == 0 || now_ms - w->counted >= period;
}

//  --------------------------------------------------------------------------
//  Start a count.
void
wsr_census_begin (wsr_census_t *self, int worker)
{
    assert (self && worker >= 0 && worker < self->workers);
    self->worker [worker].heap_size = 0;
}

static void
s_swap (s_item_t *a, s_item_t *b)
{
    s_item_t tmp = *a;
    *a = *b;
    *b = tmp;
}

//  Restore the min-heap from index i down.
static void
s_sift_down (s_item_t *heap, size_t size, size_t i)
{
    while (true) {
        size_t least = i, left = 2 * i + 1, right = left + 1;
        if (left < size && heap [left].count < heap [least].count)
            least = left;
        if (right < size && heap [right].count < heap [least].count)
            least = right;
        if (least == i)
            return;
        s_swap (&heap [i], &heap [least]);
        i = least;
    }
}

//  --------------------------------------------------------------------------
//  Offer one topic: kept if the heap has room or it beats the smallest.
void
wsr_census_add (wsr_census_t *self, int worker, const char *key, size_t members)
{
    assert (self && worker >= 0 && worker < self->workers && key);
    s_worker_t *w = &self->worker [worker];
    if (w->heap_size < self->top) {
        size_t i = w->heap_size++;
        snprintf (w->heap [i].key, sizeof w->heap [i].key, "%s", key);
        w->heap [i].count = members;
        while (i > 0 && w->heap [(i - 1) / 2].count > w->heap [i].count) {
            s_swap (&w->heap [(i - 1) / 2], &w->heap [i]);
            i = (i - 1) / 2;
        }
    }
    else
    if (members > w->heap [0].count) {
        snprintf (w->heap [0].key, sizeof w->heap [0].key, "%s", key);
        w->heap [0].count = members;
        s_sift_down (w->heap, w->heap_size, 0);
    }
}

//  Largest count first; equal counts by key, so answers are stable.
static int
s_compare (const void *a, const void *b)
{
    const s_item_t *x = (const s_item_t *) a, *y = (const s_item_t *) b;
    if (x->count != y->count)
        return x->count > y->count? -1: 1;
    return strcmp (x->key, y->key);
}

//  --------------------------------------------------------------------------
//  Publish the count.
void
wsr_census_commit (wsr_census_t *self, int worker, size_t topics, int64_t now_ms)
{
    assert (self && worker >= 0 && worker < self->workers);
    s_worker_t *w = &self->worker [worker];
    qsort (w->heap, w->heap_size, sizeof (s_item_t), s_compare);
    pthread_mutex_lock (&self->lock);
    s_item_t *list = w->list;
    w->list = w->heap;
    w->list_size = w->heap_size;
    w->topics = topics;
    w->counted = now_ms > 0? now_ms: 1;
    pthread_mutex_unlock (&self->lock);
    w->heap = list;
    w->heap_size = 0;
}

//  --------------------------------------------------------------------------
//  The merged answer.
char *
wsr_census_json (wsr_census_t *self, size_t limit)
{
    assert (self);
    size_t capacity = self->top * (size_t) self->workers, size = 0, worker_topics = 0;
    s_item_t *all = (s_item_t *) malloc (sizeof (s_item_t) * capacity);
    assert (all);
    zhashx_t *index = zhashx_new ();            //  key → position + 1 in all
    zhashx_set_destructor (index, NULL);
    zhashx_set_duplicator (index, NULL);
    int64_t oldest = 0;
    pthread_mutex_lock (&self->lock);
    for (int i = 0; i < self->workers; i++) {
        s_worker_t *w = &self->worker [i];
        worker_topics += w->topics;
        if (w->counted && (!oldest || w->counted < oldest))
            oldest = w->counted;
        for (size_t j = 0; j < w->list_size; j++) {
            size_t at = (size_t) (uintptr_t) zhashx_lookup (index, w->list [j].key);
            if (at)
                all [at - 1].count += w->list [j].count;
            else {
                all [size] = w->list [j];
                zhashx_insert (index, all [size].key, (void *) (uintptr_t) (size + 1));
                size++;
            }
        }
    }
    pthread_mutex_unlock (&self->lock);
    zhashx_destroy (&index);
    qsort (all, size, sizeof (s_item_t), s_compare);
    json_t *topics = json_array ();
    for (size_t i = 0; i < size && i < limit; i++)
        json_array_append_new (topics, json_pack ("{s:s,s:I}", "topic", all [i].key,
                                                  "subscribers", (json_int_t) all [i].count));
    free (all);
    json_t *root = json_pack ("{s:o,s:I,s:I}", "topics", topics,
                              "worker_topics", (json_int_t) worker_topics,
                              "age_ms", (json_int_t) (oldest? wsr_util_mono_ms () - oldest: -1));
    char *text = json_dumps (root, JSON_COMPACT);
    json_decref (root);
    return text;
}

//  --------------------------------------------------------------------------
//  Self test
void
wsr_census_test (bool verbose)
{
    printf (" * wsr_census: ");
    if (verbose)
        printf ("\n");
    wsr_census_t *census = wsr_census_new (2, 3);
    int64_t now = wsr_util_mono_ms ();
    //  Nobody asked: nothing is due, and the answer is empty
    assert (!wsr_census_due (census, 0, now));
    char *text = wsr_census_json (census, 10);
    assert (streq (text, "{\"topics\": [], \"worker_topics\": 0, \"age_ms\": -1}")
        ||  streq (text, "{\"topics\":[],\"worker_topics\":0,\"age_ms\":-1}"));
    free (text);
    wsr_census_want (census);
    assert (wsr_census_due (census, 0, now) && wsr_census_due (census, 1, now));

    //  Worker 0 holds five topics; only its three largest are kept
    wsr_census_begin (census, 0);
    wsr_census_add (census, 0, "channel:a", 1);
    wsr_census_add (census, 0, "channel:b", 5);
    wsr_census_add (census, 0, "user:u1", 2);
    wsr_census_add (census, 0, "channel:c", 7);
    wsr_census_add (census, 0, "channel:d", 3);
    wsr_census_commit (census, 0, 5, now);
    assert (!wsr_census_due (census, 0, now + 1));
    assert (wsr_census_due (census, 0, now + WSR_CENSUS_PERIOD_MS));
    //  Worker 1: channel:b again (summed), and one of its own
    wsr_census_begin (census, 1);
    wsr_census_add (census, 1, "channel:b", 4);
    wsr_census_add (census, 1, "channel:z", 3);
    wsr_census_commit (census, 1, 2, now);
    //  A large table is counted less often
    wsr_census_begin (census, 1);
    wsr_census_commit (census, 1, 200000, now);
    assert (!wsr_census_due (census, 1, now + WSR_CENSUS_PERIOD_MS));
    assert (wsr_census_due (census, 1, now + 200000 / WSR_CENSUS_TOPICS_PER_MS));
    wsr_census_begin (census, 1);
    wsr_census_add (census, 1, "channel:b", 4);
    wsr_census_add (census, 1, "channel:z", 3);
    wsr_census_commit (census, 1, 2, now);

    text = wsr_census_json (census, 10);
    json_t *root = json_loads (text, 0, NULL);
    assert (root);
    json_t *topics = json_object_get (root, "topics");
    assert (json_array_size (topics) == 4);
    //  Largest first; equal counts by key
    const char *order [] = { "channel:b", "channel:c", "channel:d", "channel:z" };
    json_int_t counts [] = { 9, 7, 3, 3 };
    for (size_t i = 0; i < 4; i++) {
        json_t *item = json_array_get (topics, i);
        assert (streq (json_string_value (json_object_get (item, "topic")), order [i]));
        assert (json_integer_value (json_object_get (item, "subscribers")) == counts [i]);
    }
    assert (json_integer_value (json_object_get (root, "worker_topics")) == 7);
    assert (json_integer_value (json_object_get (root, "age_ms")) >= 0);
    json_decref (root);
    free (text);
    //  The limit bounds the answer
    text = wsr_census_json (census, 1);
    root = json_loads (text, 0, NULL);
    assert (json_array_size (json_object_get (root, "topics")) == 1);
    json_decref (root);
    free (text);
    //  A new count replaces the old one
    wsr_census_begin (census, 1);
    wsr_census_commit (census, 1, 0, now + 1);
    text = wsr_census_json (census, 10);
    root = json_loads (text, 0, NULL);
    assert (json_integer_value (json_object_get (json_array_get (
        json_object_get (root, "topics"), 0), "subscribers")) == 7);
    json_decref (root);
    free (text);
    wsr_census_destroy (&census);
    wsr_census_destroy (&census);
    printf ("OK\n");
}
