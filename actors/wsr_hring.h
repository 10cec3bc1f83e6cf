//  wsr_hring — a new session worker's handover rings: the deliveries of each
//  topic the old process named, held while its sessions are on their way

#ifndef WSR_HRING_H_INCLUDED
#define WSR_HRING_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _wsr_hring_t wsr_hring_t;

//  Default bounds, per worker: deliveries per topic and bytes in all
#define WSR_HRING_MAX_COUNT     1024
#define WSR_HRING_MAX_BYTES     (32 * 1024 * 1024)

//  Called by wsr_hring_replay for each delivery a session still needs, in
//  the order they arrived (envelope borrowed for the call).
typedef void (wsr_hring_fn) (void *arg, const uint8_t *envelope, size_t size);

//  A set of rings: at most max_count deliveries per topic and max_bytes of
//  envelopes in all; the oldest of a topic make room (counted as dropped).
wsr_hring_t *
    wsr_hring_new (size_t max_count, size_t max_bytes);

//  Free every ring; safe on NULL.
void
    wsr_hring_destroy (wsr_hring_t **self_p);

//  Hold what arrives for this topic key (no NUL needed) from now on.
//  Returns true if it was not watched yet.
bool
    wsr_hring_watch (wsr_hring_t *self, const char *key);

//  True if the key is watched.
bool
    wsr_hring_watched (wsr_hring_t *self, const char *key);

//  A delivery for key, with its mark (what the old process would record
//  for it: hash or offset). Kept (copied) if the key is watched; returns
//  true if kept.
bool
    wsr_hring_add (wsr_hring_t *self, const char *key, const wsr_handover_mark_t *mark,
                   const uint8_t *envelope, size_t size);

//  A session arrives whose old worker last queued mark on key: fn gets
//  every held delivery after that one, or all of them if it is not held
//  (NONE: nothing queued there yet; a hash or offset the ring does not
//  hold: the old worker's last message came before the ring's first).
//  Offsets: after the last entry with an offset at or below mark's. Hashes:
//  after the first entry with that hash. *gap_p (may be NULL) is set true
//  when the mark is not held and the ring has dropped deliveries: some the
//  session needed may be gone. Returns how many fn got.
size_t
    wsr_hring_replay (wsr_hring_t *self, const char *key, const wsr_handover_mark_t *mark,
                      wsr_hring_fn *fn, void *arg, bool *gap_p);

//  Iterate over the watched keys (borrowed; the set must not change).
const char *
    wsr_hring_first (wsr_hring_t *self);
const char *
    wsr_hring_next (wsr_hring_t *self);

//  Deliveries dropped so far (over a bound), and bytes held now.
uint64_t
    wsr_hring_dropped (wsr_hring_t *self);
size_t
    wsr_hring_bytes (wsr_hring_t *self);

//  Self test
void
    wsr_hring_test (bool verbose);

#ifdef __cplusplus
}
#endif

#endif
