//  wsr_peers — the bridge's table of peers (node actors) and who wants which topic

#ifndef WSR_PEERS_H_INCLUDED
#define WSR_PEERS_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _wsr_peers_t wsr_peers_t;
typedef struct _wsr_peer_t wsr_peer_t;

//  Result of wsr_peers_subscribe
typedef enum {
    WSR_PEERS_ADDED,            //  the peer now has the topic
    WSR_PEERS_KNOWN,            //  it had it already: nothing changed
    WSR_PEERS_REFUSED           //  its node is at its topic cap
} wsr_peers_result_t;

//  Called for each topic that lost its last peer (the caller unsubscribes
//  it from the backplanes). topic is borrowed for the call.
typedef void (wsr_peers_last_fn) (void *arg, const char *topic);

//  Create a table: at most max_peers peers, and max_topics topics per node
//  (summed over the node's peers; a peer that has not said HELLO counts as
//  a node of its own).
wsr_peers_t *
    wsr_peers_new (size_t max_peers, size_t max_topics);

//  Destroy the table.
void
    wsr_peers_destroy (wsr_peers_t **self_p);

//  The peer with this routing id; created if absent and create is true
//  (*created tells). NULL if absent and not created, or the table is full.
wsr_peer_t *
    wsr_peers_lookup (wsr_peers_t *self, const uint8_t *rid, size_t rid_size, bool create,
                      bool *created);

//  Record what the peer said in HELLO (strings copied; node ids are checked
//  by the caller). The peer's topics move to its node's count.
void
    wsr_peers_hello (wsr_peers_t *self, wsr_peer_t *peer, const char *node, const char *role,
                     int index);

//  The peer wants topic (a valid topic key, NUL-terminated). *first is set
//  when the topic had no peer before: the caller subscribes the backplanes.
wsr_peers_result_t
    wsr_peers_subscribe (wsr_peers_t *self, wsr_peer_t *peer, const char *topic, bool *first);

//  The peer no longer wants topic; true if the topic lost its last peer.
bool
    wsr_peers_unsubscribe (wsr_peers_t *self, wsr_peer_t *peer, const char *topic);

//  Forget a peer and its topics (BYE, unreachable, expired); last is called
//  for every topic left without peers. The reference is nulled.
void
    wsr_peers_remove (wsr_peers_t *self, wsr_peer_t **peer_p, wsr_peers_last_fn *last,
                      void *arg);

//  Forget every peer not heard of since now - ttl_ms. Returns how many.
size_t
    wsr_peers_expire (wsr_peers_t *self, int64_t now, int64_t ttl_ms, wsr_peers_last_fn *last,
                      void *arg);

//  The peer was heard of at now (mono ms).
void
    wsr_peers_touch (wsr_peer_t *peer, int64_t now);

//  The peers that want topic: *peers points at an array owned by the table,
//  valid until the table changes. Returns its length (0 if nobody).
size_t
    wsr_peers_recipients (wsr_peers_t *self, const char *topic, wsr_peer_t ***peers);

//  Iterate over every peer (first/next); the table must not change meanwhile.
wsr_peer_t *
    wsr_peers_first (wsr_peers_t *self);
wsr_peer_t *
    wsr_peers_next (wsr_peers_t *self);

//  Counts.
size_t
    wsr_peers_size (wsr_peers_t *self);
size_t
    wsr_peers_topics (wsr_peers_t *self);

//  A peer's routing id (borrowed) and its size.
const uint8_t *
    wsr_peer_rid (wsr_peer_t *peer, size_t *size);

//  Its node id from HELLO, or NULL before HELLO.
const char *
    wsr_peer_node (wsr_peer_t *peer);

//  Its role from HELLO, or NULL.
const char *
    wsr_peer_role (wsr_peer_t *peer);

//  Topics it holds.
size_t
    wsr_peer_topics (wsr_peer_t *peer);

//  When it was last heard of (mono ms).
int64_t
    wsr_peer_last_seen (wsr_peer_t *peer);

//  Count one message dropped for this peer (its queue was full); returns
//  the new total.
uint64_t
    wsr_peer_dropped (wsr_peer_t *peer);

//  Self test
void
    wsr_peers_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
