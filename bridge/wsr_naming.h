//  wsr_naming — maps topic keys to backplane channel / subject names and back

#ifndef WSR_NAMING_H_INCLUDED
#define WSR_NAMING_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _wsr_naming_t wsr_naming_t;

//  Create a mapping from three templates, each with exactly one placeholder:
//  user_tpl with {user_id} (e.g. "ws:{user_id}"), channel_tpl with {channel}
//  ("ws:channel:{channel}"), actions_tpl with {user_id} ("ws:actions:{user_id}").
//  Returns NULL if a template is malformed.
wsr_naming_t *
    wsr_naming_new (const char *user_tpl, const char *channel_tpl, const char *actions_tpl);

//  Destroy the mapping.
void
    wsr_naming_destroy (wsr_naming_t **self_p);

//  Topic key ("user:u1" / "channel:c") → backplane name, NUL-terminated in
//  out. Returns its length, or -1 if the key is not a user/channel key or
//  does not fit.
int
    wsr_naming_to_backplane (wsr_naming_t *self, const char *topic, char *out, size_t size);

//  Backplane name (len bytes) → topic key with NUL, in out. Returns the key
//  size including the NUL, or -1 if the name matches no template or the id
//  in it is not a valid id.
int
    wsr_naming_to_topic (wsr_naming_t *self, const char *name, size_t len,
                         char *out, size_t size);

//  Name for a user's client actions (upstream). Returns length or -1.
int
    wsr_naming_actions (wsr_naming_t *self, const char *user, char *out, size_t size);

//  True if name (len bytes) is a client-actions name (upstream traffic that a
//  firehose pattern may catch; never a delivery).
bool
    wsr_naming_is_actions (wsr_naming_t *self, const char *name, size_t len);

//  Firehose pattern for users (kind WSR_TOPIC_USER) or channels: the
//  template with its placeholder replaced by wildcard ("*" for Redis glob,
//  ">" or "*" for NATS; with "redis" style the prefix is glob-escaped).
//  Returns length or -1.
int
    wsr_naming_pattern (wsr_naming_t *self, const char *kind, bool nats, char *out,
                        size_t size);

//  True if a valid id (wsr_util_id_valid) in tpl_a and a valid id in tpl_b
//  can give the same name. Each template holds one {user_id} or {channel}
//  placeholder; a template without one never overlaps. Exact, not a
//  heuristic. On overlap, example (if not NULL) gets one such name.
bool
    wsr_naming_overlap (const char *tpl_a, const char *tpl_b, char *example, size_t size);

//  Check the user, channel and actions templates against each other.
//  Returns 0, or -1 with a message in error that names both templates of
//  the first overlapping pair and a name both can produce.
int
    wsr_naming_check (wsr_naming_t *self, char *error, size_t size);

//  Self test
void
    wsr_naming_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
