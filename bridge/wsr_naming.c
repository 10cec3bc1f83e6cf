//  wsr_naming — maps topic keys to backplane channel / subject names and back
//
//  A template is a prefix, one placeholder, a suffix. Mapping back checks
//  prefix and suffix and validates the id between them with the same rules as
//  tokens (wsr_util_id_valid), so a name like "ws:channel:x" never passes as
//  user "channel:x" (':' is not an id character) and a crafted channel name
//  can never address another user.

#include "wsr_classes.h"

typedef struct {
    char *prefix;               //  text before the placeholder
    char *suffix;               //  text after it
    size_t prefix_len;
    size_t suffix_len;
} s_tpl_t;

struct _wsr_naming_t {
    s_tpl_t user;               //  downstream user template
    s_tpl_t channel;            //  downstream channel template
    s_tpl_t actions;            //  upstream actions template
};

static int
s_tpl_parse (s_tpl_t *tpl, const char *text, const char *placeholder)
{
    const char *at = text? strstr (text, placeholder): NULL;
    if (!at || strstr (at + 1, "{"))
        return -1;
    tpl->prefix_len = (size_t) (at - text);
    tpl->prefix = strndup (text, tpl->prefix_len);
    tpl->suffix = strdup (at + strlen (placeholder));
    tpl->suffix_len = strlen (tpl->suffix);
    return 0;
}

static void
s_tpl_free (s_tpl_t *tpl)
{
    free (tpl->prefix);
    free (tpl->suffix);
}

static int
s_tpl_format (s_tpl_t *tpl, const char *id, char *out, size_t size)
{
    int n = snprintf (out, size, "%s%s%s", tpl->prefix, id, tpl->suffix);
    return n < 0 || (size_t) n >= size? -1: n;
}

//  The id inside name if it matches tpl, else NULL (*id_len set).
static const char *
s_tpl_match (s_tpl_t *tpl, const char *name, size_t len, size_t *id_len)
{
    if (len <= tpl->prefix_len + tpl->suffix_len
    ||  memcmp (name, tpl->prefix, tpl->prefix_len)
    ||  memcmp (name + len - tpl->suffix_len, tpl->suffix, tpl->suffix_len))
        return NULL;
    *id_len = len - tpl->prefix_len - tpl->suffix_len;
    const char *id = name + tpl->prefix_len;
    return wsr_util_id_valid (id, *id_len)? id: NULL;
}

//  --------------------------------------------------------------------------
//  Create from templates.
wsr_naming_t *
wsr_naming_new (const char *user_tpl, const char *channel_tpl, const char *actions_tpl)
{
    wsr_naming_t *self = (wsr_naming_t *) zmalloc (sizeof (wsr_naming_t));
    if (s_tpl_parse (&self->user, user_tpl, "{user_id}")
    ||  s_tpl_parse (&self->channel, channel_tpl, "{channel}")
    ||  s_tpl_parse (&self->actions, actions_tpl, "{user_id}"))
        wsr_naming_destroy (&self);
    return self;
}

//  --------------------------------------------------------------------------
//  Destroy.
void
wsr_naming_destroy (wsr_naming_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        wsr_naming_t *self = *self_p;
        s_tpl_free (&self->user);
        s_tpl_free (&self->channel);
        s_tpl_free (&self->actions);
        free (self);
        *self_p = NULL;
    }
}

//  --------------------------------------------------------------------------
//  Topic key → backplane name.
int
wsr_naming_to_backplane (wsr_naming_t *self, const char *topic, char *out, size_t size)
{
    assert (self && topic && out);
    size_t user_len = strlen (WSR_TOPIC_USER), channel_len = strlen (WSR_TOPIC_CHANNEL);
    if (strncmp (topic, WSR_TOPIC_USER, user_len) == 0)
        return s_tpl_format (&self->user, topic + user_len, out, size);
    if (strncmp (topic, WSR_TOPIC_CHANNEL, channel_len) == 0)
        return s_tpl_format (&self->channel, topic + channel_len, out, size);
    return -1;
}

//  --------------------------------------------------------------------------
//  Backplane name → topic key (with NUL).
int
wsr_naming_to_topic (wsr_naming_t *self, const char *name, size_t len, char *out, size_t size)
{
    assert (self && name && out);
    size_t id_len = 0;
    const char *kind = WSR_TOPIC_CHANNEL;
    const char *id = s_tpl_match (&self->channel, name, len, &id_len);
    if (!id) {
        kind = WSR_TOPIC_USER;
        id = s_tpl_match (&self->user, name, len, &id_len);
    }
    if (!id || strlen (kind) + id_len + 1 > size)
        return -1;
    memcpy (out, kind, strlen (kind));
    memcpy (out + strlen (kind), id, id_len);
    out [strlen (kind) + id_len] = 0;
    return (int) (strlen (kind) + id_len + 1);
}

//  --------------------------------------------------------------------------
//  Upstream actions name.
int
wsr_naming_actions (wsr_naming_t *self, const char *user, char *out, size_t size)
{
    assert (self && user && out);
    return s_tpl_format (&self->actions, user, out, size);
}

//  --------------------------------------------------------------------------
//  Actions name?
bool
wsr_naming_is_actions (wsr_naming_t *self, const char *name, size_t len)
{
    assert (self && name);
    size_t id_len;
    return s_tpl_match (&self->actions, name, len, &id_len) != NULL;
}

//  --------------------------------------------------------------------------
//  Firehose pattern.
int
wsr_naming_pattern (wsr_naming_t *self, const char *kind, bool nats, char *out, size_t size)
{
    assert (self && kind && out);
    s_tpl_t *tpl = streq (kind, WSR_TOPIC_USER)? &self->user: &self->channel;
    size_t used = 0;
    for (size_t i = 0; i < tpl->prefix_len; i++) {
        char c = tpl->prefix [i];
        if (!nats && strchr ("*?[]\\", c)) {
            if (used + 1 >= size)
                return -1;
            out [used++] = '\\';
        }
        if (used + 1 >= size)
            return -1;
        out [used++] = c;
    }
    //  NATS: '>' takes ids with dots (several tokens) when nothing follows
    const char *wildcard = nats && tpl->suffix_len == 0? ">": "*";
    int n = snprintf (out + used, size - used, "%s%s", wildcard, tpl->suffix);
    return n < 0 || (size_t) n >= size - used? -1: (int) used + n;
}

//  --------------------------------------------------------------------------
//  Selftest
void
wsr_naming_test (bool verbose)
{
    (void) verbose;
    wsr_naming_t *redis = wsr_naming_new ("ws:{user_id}", "ws:channel:{channel}",
                                          "ws:actions:{user_id}");
    assert (redis);
    char out [256];
    assert (wsr_naming_to_backplane (redis, "user:u1", out, sizeof out) == 5);
    assert (streq (out, "ws:u1"));
    assert (wsr_naming_to_backplane (redis, "channel:room.7", out, sizeof out) > 0);
    assert (streq (out, "ws:channel:room.7"));
    assert (wsr_naming_to_backplane (redis, "up:u1", out, sizeof out) == -1);
    assert (wsr_naming_to_backplane (redis, "user:u1", out, 4) == -1);

    assert (wsr_naming_to_topic (redis, "ws:u1", 5, out, sizeof out) == 8);
    assert (streq (out, "user:u1"));
    assert (wsr_naming_to_topic (redis, "ws:channel:room.7", 17, out, sizeof out) > 0);
    assert (streq (out, "channel:room.7"));
    //  Actions and other names never become delivery topics
    assert (wsr_naming_to_topic (redis, "ws:actions:u1", 13, out, sizeof out) == -1);
    assert (wsr_naming_to_topic (redis, "ws:", 3, out, sizeof out) == -1);
    assert (wsr_naming_to_topic (redis, "wx:u1", 5, out, sizeof out) == -1);
    assert (wsr_naming_to_topic (redis, "ws:u 1", 6, out, sizeof out) == -1);
    assert (wsr_naming_to_topic (redis, "ws:u*", 5, out, sizeof out) == -1);
    assert (wsr_naming_actions (redis, "u1", out, sizeof out) > 0);
    assert (streq (out, "ws:actions:u1"));
    assert (wsr_naming_is_actions (redis, "ws:actions:u1", 13));
    assert (!wsr_naming_is_actions (redis, "ws:u1", 5));
    assert (wsr_naming_pattern (redis, WSR_TOPIC_USER, false, out, sizeof out) > 0);
    assert (streq (out, "ws:*"));
    wsr_naming_destroy (&redis);

    wsr_naming_t *nats = wsr_naming_new ("world.updates.user.{user_id}",
                                         "world.updates.channel.{channel}",
                                         "client.actions.{user_id}");
    assert (nats);
    assert (wsr_naming_to_backplane (nats, "user:a.b", out, sizeof out) > 0);
    assert (streq (out, "world.updates.user.a.b"));
    const char *subject = "world.updates.user.a.b";
    assert (wsr_naming_to_topic (nats, subject, strlen (subject), out, sizeof out) > 0);
    assert (streq (out, "user:a.b"));
    assert (wsr_naming_pattern (nats, WSR_TOPIC_CHANNEL, true, out, sizeof out) > 0);
    assert (streq (out, "world.updates.channel.>"));
    wsr_naming_destroy (&nats);

    //  Templates need their placeholder
    assert (wsr_naming_new ("ws:", "c:{channel}", "a:{user_id}") == NULL);
    assert (wsr_naming_new ("ws:{user_id}", "c:{user_id}", "a:{user_id}") == NULL);
    wsr_naming_t *odd = wsr_naming_new ("u[{user_id}]", "c:{channel}", "a:{user_id}");
    assert (wsr_naming_pattern (odd, WSR_TOPIC_USER, false, out, sizeof out) > 0);
    assert (streq (out, "u\\[*]"));
    wsr_naming_destroy (&odd);
}
