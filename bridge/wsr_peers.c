//  wsr_peers — the bridge's table of peers (node actors) and who wants which topic
//
//  A peer is one DEALER of a node (a session worker or a router), known by
//  the routing id the bridge's ROUTER gave its connection. A topic is wanted
//  by a small set of peers: a user's sessions live on one worker of each
//  node they are connected to, a channel on up to every worker of every
//  node. Delivery reads that set (an array); subscribing and leaving are
//  O(1) plus a walk of one topic's peers; forgetting a peer walks only its
//  own topics. Topics are capped per node so no node can make the bridge
//  (and Redis/NATS) hold an unbounded set.

#include "wsr_classes.h"

#define S_MAX_RID           255     //  ZeroMQ routing ids are 1..255 bytes

typedef struct _s_topic_t s_topic_t;

typedef struct {
    char *name;                     //  node id (owned; also the hash key)
    size_t topics;                  //  topics held by all its peers
    size_t peers;                   //  peers that said HELLO with this id
} s_node_t;

struct _wsr_peer_t {
    uint8_t rid [S_MAX_RID];        //  routing id
    size_t rid_size;
    char key [2 * S_MAX_RID + 1];   //  routing id in hex: the hash key
    s_node_t *node;                 //  after HELLO, else NULL (not owned)
    char *role;                     //  after HELLO (owned)
    int index;                      //  after HELLO
    int64_t last_seen;              //  mono ms
    s_topic_t **topics;             //  topics it holds (owned array)
    size_t count, cap;
    uint64_t dropped;               //  messages dropped: its queue was full
};

struct _s_topic_t {
    char *key;                      //  topic key (owned; also the hash key)
    wsr_peer_t **peers;             //  peers that want it (owned array)
    size_t *slots;                  //  index of this topic in each peer's array
    size_t count, cap;
};

struct _wsr_peers_t {
    zhashx_t *peers;                //  hex routing id → wsr_peer_t (owned)
    zhashx_t *topics;               //  key → s_topic_t (owned)
    zhashx_t *nodes;                //  node id → s_node_t (owned)
    size_t max_peers;               //  table bound
    size_t max_topics;              //  per node
};

static void
s_topic_free (void **item_p)
{
    s_topic_t *topic = (s_topic_t *) *item_p;
    free (topic->peers);
    free (topic->slots);
    free (topic->key);
    free (topic);
    *item_p = NULL;
}

static void
s_peer_free (void **item_p)
{
    wsr_peer_t *peer = (wsr_peer_t *) *item_p;
    free (peer->topics);
    free (peer->role);
    free (peer);
    *item_p = NULL;
}

static void
s_node_free (void **item_p)
{
    s_node_t *node = (s_node_t *) *item_p;
    free (node->name);
    free (node);
    *item_p = NULL;
}

//  Keys are owned by the items: the hashes neither copy nor free them.
static zhashx_t *
s_hash (czmq_destructor *destructor)
{
    zhashx_t *hash = zhashx_new ();
    assert (hash);
    zhashx_set_key_duplicator (hash, NULL);
    zhashx_set_key_destructor (hash, NULL);
    zhashx_set_destructor (hash, destructor);
    return hash;
}

//  --------------------------------------------------------------------------
//  Create a table.
wsr_peers_t *
wsr_peers_new (size_t max_peers, size_t max_topics)
{
    wsr_peers_t *self = (wsr_peers_t *) zmalloc (sizeof (wsr_peers_t));
    self->peers = s_hash (s_peer_free);
    self->topics = s_hash (s_topic_free);
    self->nodes = s_hash (s_node_free);
    self->max_peers = max_peers;
    self->max_topics = max_topics;
    return self;
}

//  --------------------------------------------------------------------------
//  Destroy the table.
void
wsr_peers_destroy (wsr_peers_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        wsr_peers_t *self = *self_p;
        zhashx_destroy (&self->topics);
        zhashx_destroy (&self->peers);
        zhashx_destroy (&self->nodes);
        free (self);
        *self_p = NULL;
    }
}

//  --------------------------------------------------------------------------
//  Find or create a peer.
wsr_peer_t *
wsr_peers_lookup (wsr_peers_t *self, const uint8_t *rid, size_t rid_size, bool create,
                  bool *created)
{
    assert (self && rid);
    if (created)
        *created = false;
    if (rid_size == 0 || rid_size > S_MAX_RID)
        return NULL;
    char key [2 * S_MAX_RID + 1];
    sodium_bin2hex (key, sizeof key, rid, rid_size);
    wsr_peer_t *peer = (wsr_peer_t *) zhashx_lookup (self->peers, key);
    if (peer || !create || zhashx_size (self->peers) >= self->max_peers)
        return peer;
    peer = (wsr_peer_t *) zmalloc (sizeof (wsr_peer_t));
    memcpy (peer->rid, rid, rid_size);
    peer->rid_size = rid_size;
    memcpy (peer->key, key, strlen (key) + 1);
    peer->last_seen = wsr_util_mono_ms ();
    zhashx_insert (self->peers, peer->key, peer);
    if (created)
        *created = true;
    return peer;
}

//  Topics counted against the peer's cap: its node's, or its own before HELLO.
static size_t *
s_counter (wsr_peer_t *peer)
{
    return peer->node? &peer->node->topics: &peer->count;
}

//  --------------------------------------------------------------------------
//  HELLO: who the peer is.
void
wsr_peers_hello (wsr_peers_t *self, wsr_peer_t *peer, const char *node, const char *role,
                 int index)
{
    assert (self && peer && node && role);
    if (peer->node && streq (peer->node->name, node)) {
        free (peer->role);
        peer->role = strdup (role);
        peer->index = index;
        return;
    }
    if (peer->node) {
        //  A peer changing its node id: move its count
        peer->node->topics -= peer->count;
        peer->node->peers--;
    }
    s_node_t *entry = (s_node_t *) zhashx_lookup (self->nodes, node);
    if (!entry) {
        entry = (s_node_t *) zmalloc (sizeof (s_node_t));
        entry->name = strdup (node);
        zhashx_insert (self->nodes, entry->name, entry);
    }
    entry->peers++;
    entry->topics += peer->count;
    peer->node = entry;
    free (peer->role);
    peer->role = strdup (role);
    peer->index = index;
}

//  --------------------------------------------------------------------------
//  The peer wants a topic.
wsr_peers_result_t
wsr_peers_subscribe (wsr_peers_t *self, wsr_peer_t *peer, const char *key, bool *first)
{
    assert (self && peer && key && first);
    *first = false;
    s_topic_t *topic = (s_topic_t *) zhashx_lookup (self->topics, key);
    if (topic)
        for (size_t i = 0; i < topic->count; i++)
            if (topic->peers [i] == peer)
                return WSR_PEERS_KNOWN;
    if (*s_counter (peer) >= self->max_topics)
        return WSR_PEERS_REFUSED;
    if (!topic) {
        topic = (s_topic_t *) zmalloc (sizeof (s_topic_t));
        topic->key = strdup (key);
        zhashx_insert (self->topics, topic->key, topic);
        *first = true;
    }
    if (topic->count == topic->cap) {
        topic->cap = topic->cap? topic->cap * 2: 1;
        topic->peers = (wsr_peer_t **) realloc (topic->peers, topic->cap * sizeof (void *));
        topic->slots = (size_t *) realloc (topic->slots, topic->cap * sizeof (size_t));
        assert (topic->peers && topic->slots);
    }
    if (peer->count == peer->cap) {
        peer->cap = peer->cap? peer->cap * 2: 4;
        peer->topics = (s_topic_t **) realloc (peer->topics, peer->cap * sizeof (void *));
        assert (peer->topics);
    }
    topic->peers [topic->count] = peer;
    topic->slots [topic->count] = peer->count;
    topic->count++;
    peer->topics [peer->count++] = topic;
    if (peer->node)
        peer->node->topics++;
    return WSR_PEERS_ADDED;
}

//  Remove entry i of topic (the peer's slot), keeping both arrays dense.
//  Returns true if the topic is now empty (and freed).
static bool
s_detach (wsr_peers_t *self, s_topic_t *topic, size_t i)
{
    wsr_peer_t *peer = topic->peers [i];
    size_t slot = topic->slots [i];
    //  Out of the peer's array: the peer's last topic takes the slot
    s_topic_t *moved = peer->topics [--peer->count];
    peer->topics [slot] = moved;
    if (moved != topic)
        for (size_t j = 0; j < moved->count; j++)
            if (moved->peers [j] == peer) {
                moved->slots [j] = slot;
                break;
            }
    if (peer->node)
        peer->node->topics--;
    //  Out of the topic's array
    topic->count--;
    topic->peers [i] = topic->peers [topic->count];
    topic->slots [i] = topic->slots [topic->count];
    if (topic->count > 0)
        return false;
    zhashx_delete (self->topics, topic->key);
    return true;
}

//  --------------------------------------------------------------------------
//  The peer no longer wants a topic.
bool
wsr_peers_unsubscribe (wsr_peers_t *self, wsr_peer_t *peer, const char *key)
{
    assert (self && peer && key);
    s_topic_t *topic = (s_topic_t *) zhashx_lookup (self->topics, key);
    if (topic)
        for (size_t i = 0; i < topic->count; i++)
            if (topic->peers [i] == peer)
                return s_detach (self, topic, i);
    return false;
}

//  --------------------------------------------------------------------------
//  Forget a peer.
void
wsr_peers_remove (wsr_peers_t *self, wsr_peer_t **peer_p, wsr_peers_last_fn *last, void *arg)
{
    assert (self && peer_p);
    wsr_peer_t *peer = *peer_p;
    if (!peer)
        return;
    while (peer->count > 0) {
        s_topic_t *topic = peer->topics [peer->count - 1];
        for (size_t i = 0; i < topic->count; i++)
            if (topic->peers [i] == peer) {
                char key [WSR_TOPIC_MAX + 1];
                snprintf (key, sizeof key, "%s", topic->key);
                if (s_detach (self, topic, i) && last)
                    last (arg, key);
                break;
            }
    }
    if (peer->node && --peer->node->peers == 0)
        zhashx_delete (self->nodes, peer->node->name);
    zhashx_delete (self->peers, peer->key);
    *peer_p = NULL;
}

//  --------------------------------------------------------------------------
//  Forget silent peers.
size_t
wsr_peers_expire (wsr_peers_t *self, int64_t now, int64_t ttl_ms, wsr_peers_last_fn *last,
                  void *arg)
{
    assert (self);
    //  Collect first: removing while iterating the hash is not allowed
    zlistx_t *silent = zlistx_new ();
    for (wsr_peer_t *peer = (wsr_peer_t *) zhashx_first (self->peers); peer;
         peer = (wsr_peer_t *) zhashx_next (self->peers))
        if (now - peer->last_seen > ttl_ms)
            zlistx_add_end (silent, peer);
    size_t count = zlistx_size (silent);
    for (wsr_peer_t *peer = (wsr_peer_t *) zlistx_first (silent); peer;
         peer = (wsr_peer_t *) zlistx_next (silent))
        wsr_peers_remove (self, &peer, last, arg);
    zlistx_destroy (&silent);
    return count;
}

//  --------------------------------------------------------------------------
//  Heard of.
void
wsr_peers_touch (wsr_peer_t *peer, int64_t now)
{
    assert (peer);
    peer->last_seen = now;
}

//  --------------------------------------------------------------------------
//  Who wants a topic.
size_t
wsr_peers_recipients (wsr_peers_t *self, const char *key, wsr_peer_t ***peers)
{
    assert (self && key && peers);
    s_topic_t *topic = (s_topic_t *) zhashx_lookup (self->topics, key);
    *peers = topic? topic->peers: NULL;
    return topic? topic->count: 0;
}

//  --------------------------------------------------------------------------
//  Iteration.
wsr_peer_t *
wsr_peers_first (wsr_peers_t *self)
{
    assert (self);
    return (wsr_peer_t *) zhashx_first (self->peers);
}

wsr_peer_t *
wsr_peers_next (wsr_peers_t *self)
{
    assert (self);
    return (wsr_peer_t *) zhashx_next (self->peers);
}

//  --------------------------------------------------------------------------
//  Counts and accessors.
size_t
wsr_peers_size (wsr_peers_t *self)
{
    assert (self);
    return zhashx_size (self->peers);
}

size_t
wsr_peers_topics (wsr_peers_t *self)
{
    assert (self);
    return zhashx_size (self->topics);
}

const uint8_t *
wsr_peer_rid (wsr_peer_t *peer, size_t *size)
{
    assert (peer && size);
    *size = peer->rid_size;
    return peer->rid;
}

const char *
wsr_peer_node (wsr_peer_t *peer)
{
    assert (peer);
    return peer->node? peer->node->name: NULL;
}

const char *
wsr_peer_role (wsr_peer_t *peer)
{
    assert (peer);
    return peer->role;
}

size_t
wsr_peer_topics (wsr_peer_t *peer)
{
    assert (peer);
    return peer->count;
}

int64_t
wsr_peer_last_seen (wsr_peer_t *peer)
{
    assert (peer);
    return peer->last_seen;
}

uint64_t
wsr_peer_dropped (wsr_peer_t *peer)
{
    assert (peer);
    return ++peer->dropped;
}

//  --------------------------------------------------------------------------
//  Selftest

static void
s_collect (void *arg, const char *topic)
{
    zlistx_add_end ((zlistx_t *) arg, strdup (topic));
}

void
wsr_peers_test (bool verbose)
{
    (void) verbose;
    wsr_peers_t *peers = wsr_peers_new (3, 4);
    bool created = false, first = false;
    wsr_peer_t *a = wsr_peers_lookup (peers, (const uint8_t *) "\0AAAA", 5, true, &created);
    assert (a && created);
    assert (wsr_peers_lookup (peers, (const uint8_t *) "\0AAAA", 5, true, &created) == a);
    assert (!created);
    wsr_peer_t *b = wsr_peers_lookup (peers, (const uint8_t *) "\0BBBB", 5, true, NULL);
    wsr_peer_t *c = wsr_peers_lookup (peers, (const uint8_t *) "\0CCCC", 5, true, NULL);
    assert (b && c && b != a);
    //  Table bound
    assert (!wsr_peers_lookup (peers, (const uint8_t *) "\0DDDD", 5, true, NULL));
    assert (!wsr_peers_lookup (peers, (const uint8_t *) "\0AAAA", 4, false, NULL));
    wsr_peers_hello (peers, a, "n1", WSR_ROLE_WORKER, 0);
    wsr_peers_hello (peers, b, "n1", WSR_ROLE_WORKER, 1);
    assert (streq (wsr_peer_node (a), "n1") && wsr_peer_node (c) == NULL);

    //  Subscriptions: first and last are reported
    assert (wsr_peers_subscribe (peers, a, "user:u1", &first) == WSR_PEERS_ADDED && first);
    assert (wsr_peers_subscribe (peers, a, "user:u1", &first) == WSR_PEERS_KNOWN && !first);
    assert (wsr_peers_subscribe (peers, b, "user:u1", &first) == WSR_PEERS_ADDED && !first);
    assert (wsr_peers_subscribe (peers, a, "channel:x", &first) == WSR_PEERS_ADDED && first);
    assert (wsr_peers_subscribe (peers, c, "channel:x", &first) == WSR_PEERS_ADDED && !first);
    wsr_peer_t **who = NULL;
    assert (wsr_peers_recipients (peers, "user:u1", &who) == 2);
    assert ((who [0] == a && who [1] == b) || (who [0] == b && who [1] == a));
    assert (wsr_peers_recipients (peers, "user:u10", &who) == 0);
    assert (wsr_peers_topics (peers) == 2);

    //  The cap is per node: a and b share n1's four topics
    assert (wsr_peers_subscribe (peers, b, "user:u2", &first) == WSR_PEERS_ADDED);
    assert (wsr_peers_subscribe (peers, b, "user:u3", &first) == WSR_PEERS_REFUSED);
    assert (wsr_peers_subscribe (peers, a, "user:u3", &first) == WSR_PEERS_REFUSED);
    //  c (no HELLO) has its own count
    assert (wsr_peers_subscribe (peers, c, "user:u3", &first) == WSR_PEERS_ADDED);

    //  Leaving: the last one out is told
    assert (!wsr_peers_unsubscribe (peers, a, "user:u1"));
    assert (wsr_peers_recipients (peers, "user:u1", &who) == 1 && who [0] == b);
    assert (!wsr_peers_unsubscribe (peers, a, "user:u1"));         //  not held: no-op
    assert (wsr_peers_unsubscribe (peers, b, "user:u1"));
    assert (wsr_peers_recipients (peers, "user:u1", &who) == 0);
    //  n1 has room again
    assert (wsr_peers_subscribe (peers, a, "user:u3", &first) == WSR_PEERS_ADDED && !first);

    //  Removing a peer reports the topics only it held
    zlistx_t *gone = zlistx_new ();
    zlistx_set_destructor (gone, (czmq_destructor *) zstr_free);
    wsr_peers_remove (peers, &c, s_collect, gone);
    assert (c == NULL && zlistx_size (gone) == 0);      //  a holds channel:x and user:u3
    assert (wsr_peers_recipients (peers, "channel:x", &who) == 1 && who [0] == a);
    //  Expiry: only the silent peer goes; its own topics are reported
    wsr_peers_touch (b, 1000);
    wsr_peers_touch (a, 5000);
    assert (wsr_peers_expire (peers, 6000, 2000, s_collect, gone) == 1);
    assert (zlistx_size (gone) == 1 && streq ((char *) zlistx_first (gone), "user:u2"));
    assert (wsr_peers_size (peers) == 1);
    zlistx_purge (gone);
    wsr_peers_remove (peers, &a, s_collect, gone);
    assert (zlistx_size (gone) == 2 && wsr_peers_topics (peers) == 0);
    zlistx_destroy (&gone);

    //  Many topics on a peer, removed in any order: slots stay consistent
    wsr_peers_t *big = wsr_peers_new (2, 100000);
    wsr_peer_t *p = wsr_peers_lookup (big, (const uint8_t *) "p", 1, true, NULL);
    wsr_peer_t *q = wsr_peers_lookup (big, (const uint8_t *) "q", 1, true, NULL);
    char key [32];
    for (int i = 0; i < 1000; i++) {
        snprintf (key, sizeof key, "user:%d", i);
        assert (wsr_peers_subscribe (big, p, key, &first) == WSR_PEERS_ADDED);
        if (i % 3 == 0)
            assert (wsr_peers_subscribe (big, q, key, &first) == WSR_PEERS_ADDED);
    }
    for (int i = 0; i < 1000; i += 2) {
        snprintf (key, sizeof key, "user:%d", (i * 7) % 1000);
        wsr_peers_unsubscribe (big, p, key);
    }
    for (int i = 0; i < 1000; i++) {
        snprintf (key, sizeof key, "user:%d", i);
        //  p gave up every even key (14k mod 1000 runs over the even residues)
        size_t n = wsr_peers_recipients (big, key, &who);
        assert (n == (size_t) (i % 2) + (i % 3 == 0));
        for (size_t j = 0; j < n; j++)
            assert ((who [j] == p && i % 2) || (who [j] == q && i % 3 == 0));
    }
    size_t held = wsr_peer_topics (p);
    assert (held == 500);
    wsr_peers_remove (big, &p, NULL, NULL);
    assert (wsr_peers_topics (big) == 334);
    wsr_peers_remove (big, &q, NULL, NULL);
    assert (wsr_peers_topics (big) == 0);
    wsr_peers_destroy (&big);
    wsr_peers_destroy (&peers);
    assert (peers == NULL);
}
