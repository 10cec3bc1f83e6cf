//  wsr_topic — a session worker's topic table: topic key → member sessions

#ifndef WSR_TOPIC_H_INCLUDED
#define WSR_TOPIC_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _wsr_topic_t wsr_topic_t;
typedef struct _wsr_topic_member_t wsr_topic_member_t;

//  Write the topic key for kind (WSR_TOPIC_USER or WSR_TOPIC_CHANNEL) and id
//  into buf, NUL-terminated. Returns the key length including the NUL (the
//  size of the ZeroMQ frame / subscription), or -1 if it does not fit.
int
    wsr_topic_key (char *buf, size_t size, const char *kind, const char *id);

//  Create an empty table that holds at most max_topics topics.
wsr_topic_t *
    wsr_topic_new (size_t max_topics);

//  Destroy the table and every membership still in it.
void
    wsr_topic_destroy (wsr_topic_t **self_p);

//  Add owner to topic. Returns the membership (owned by the table; give it
//  back with wsr_topic_leave) or NULL if the table is full. *first is set
//  true if this is the topic's first member: the caller subscribes.
wsr_topic_member_t *
    wsr_topic_join (wsr_topic_t *self, const char *topic, void *owner, bool *first);

//  Remove a membership and null the caller's reference. Returns true if it
//  was the topic's last member: the caller unsubscribes.
bool
    wsr_topic_leave (wsr_topic_t *self, wsr_topic_member_t **member_p);

//  First member of topic, or NULL. Members must not leave during a walk.
wsr_topic_member_t *
    wsr_topic_first (wsr_topic_t *self, const char *topic);

//  Next member of the same topic, or NULL.
wsr_topic_member_t *
    wsr_topic_next (wsr_topic_member_t *member);

//  The owner given to wsr_topic_join.
void *
    wsr_topic_owner (wsr_topic_member_t *member);

//  The membership's topic key; borrowed, valid until the membership leaves.
const char *
    wsr_topic_member_key (wsr_topic_member_t *member);

//  Record what was last delivered on the member's topic (handover mark:
//  kind WSR_HANDOVER_MARK_*, value); the topic forgets it with its last member.
void
    wsr_topic_set_mark (wsr_topic_member_t *member, int kind, uint64_t value);

//  The member's topic's mark (0 and kind 0 when nothing was recorded).
uint64_t
    wsr_topic_mark (wsr_topic_member_t *member, int *kind_p);

//  Walk every topic with its member count (the console's census) a step at
//  a time: each call visits at most budget topics (fn gets each key,
//  borrowed, and count). The table may change between calls: topics added
//  meanwhile may be missed, those gone are not visited. Returns true when
//  the walk is complete; the next call starts a new one.
typedef void (wsr_topic_walk_fn) (const char *key, size_t members, void *arg);
bool
    wsr_topic_walk (wsr_topic_t *self, size_t budget, wsr_topic_walk_fn *fn, void *arg);

//  Number of topics with at least one member.
size_t
    wsr_topic_size (wsr_topic_t *self);

//  Iterate over the topic keys: first, then next until NULL. The table must
//  not change during the walk. Keys are borrowed.
const char *
    wsr_topic_first_key (wsr_topic_t *self);
const char *
    wsr_topic_next_key (wsr_topic_t *self);

//  Self test
void
    wsr_topic_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
