//  wsr_naming — maps topic keys to backplane channel / subject names and back
//
//  A template is a prefix, one placeholder, a suffix. Mapping back checks
//  prefix and suffix and validates the id between them with the same rules as
//  tokens (wsr_util_id_valid), so a name like "ws:channel:x" never passes as
//  user "channel:x" (':' is not an id character) and a crafted channel name
//  can never address another user.
//
//  Templates must not overlap either: with ws.{user_id} and
//  ws.channel.{channel}, user "channel.lobby" would be sent the lobby
//  channel. wsr_naming_overlap decides it exactly. If prefix_a x suffix_a
//  equals prefix_b y suffix_b, the length of x fixes the length of y and
//  every byte of the name is either fixed by a template or free (inside
//  both ids). A free byte can always be a letter, which never breaks an id
//  rule (the rules only forbid bytes and dots at the ends or doubled), so
//  for each of the WSR_MAX_ID_LEN lengths of x one candidate name settles it.

#include "wsr_classes.h"

typedef struct {
    char *text;                 //  the whole template, for messages
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
    tpl->text = strdup (text);
    tpl->prefix_len = (size_t) (at - text);
    tpl->prefix = strndup (text, tpl->prefix_len);
    tpl->suffix = strdup (at + strlen (placeholder));
    tpl->suffix_len = strlen (tpl->suffix);
    return 0;
}

static void
s_tpl_free (s_tpl_t *tpl)
{
    free (tpl->text);
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

//  Split a template at its {user_id} or {channel} placeholder.
static int
s_tpl_split (const char *text, s_tpl_t *tpl)
{
    memset (tpl, 0, sizeof *tpl);
    const char *placeholder = strstr (text, "{user_id}")? "{user_id}": "{channel}";
    const char *at = strstr (text, placeholder);
    if (!at)
        return -1;
    tpl->prefix = (char *) text;
    tpl->prefix_len = (size_t) (at - text);
    tpl->suffix = (char *) at + strlen (placeholder);
    tpl->suffix_len = strlen (tpl->suffix);
    return 0;
}

//  The fixed byte of tpl at position i of a name whose id is id_len bytes,
//  or -1 if position i is inside the id.
static int
s_tpl_byte (const s_tpl_t *tpl, size_t id_len, size_t i)
{
    if (i < tpl->prefix_len)
        return (unsigned char) tpl->prefix [i];
    if (i < tpl->prefix_len + id_len)
        return -1;
    return (unsigned char) tpl->suffix [i - tpl->prefix_len - id_len];
}

//  --------------------------------------------------------------------------
//  Can two templates produce the same name?
bool
wsr_naming_overlap (const char *tpl_a, const char *tpl_b, char *example, size_t size)
{
    assert (tpl_a && tpl_b);
    s_tpl_t a, b;
    if (s_tpl_split (tpl_a, &a) || s_tpl_split (tpl_b, &b))
        return false;
    //  len_b = len_a + fixed_a - fixed_b, both in 1..WSR_MAX_ID_LEN
    long fixed_a = (long) (a.prefix_len + a.suffix_len);
    long fixed_b = (long) (b.prefix_len + b.suffix_len);
    char *name = (char *) malloc ((size_t) fixed_a + WSR_MAX_ID_LEN + 1);
    assert (name);
    bool overlap = false;
    for (long len_a = 1; len_a <= WSR_MAX_ID_LEN && !overlap; len_a++) {
        long len_b = len_a + fixed_a - fixed_b;
        if (len_b < 1 || len_b > WSR_MAX_ID_LEN)
            continue;
        size_t total = (size_t) (fixed_a + len_a);
        bool fits = true;
        for (size_t i = 0; i < total && fits; i++) {
            int byte_a = s_tpl_byte (&a, (size_t) len_a, i);
            int byte_b = s_tpl_byte (&b, (size_t) len_b, i);
            if (byte_a >= 0 && byte_b >= 0 && byte_a != byte_b)
                fits = false;
            name [i] = (char) (byte_a >= 0? byte_a: byte_b >= 0? byte_b: 'a');
        }
        name [total] = 0;
        overlap = fits
               && wsr_util_id_valid (name + a.prefix_len, (size_t) len_a)
               && wsr_util_id_valid (name + b.prefix_len, (size_t) len_b);
        if (overlap && example && size > 0)
            snprintf (example, size, "%s", name);
    }
    free (name);
    return overlap;
}

//  --------------------------------------------------------------------------
//  Check the templates pairwise.
int
wsr_naming_check (wsr_naming_t *self, char *error, size_t size)
{
    assert (self && error);
    struct { const char *what; const char *id; s_tpl_t *tpl; } all [3] = {
        { "user", "user", &self->user }, { "channel", "channel", &self->channel },
        { "actions", "user", &self->actions }
    };
    for (int i = 0; i < 3; i++)
        for (int j = i + 1; j < 3; j++) {
            s_tpl_t *a = all [i].tpl, *b = all [j].tpl;
            char *name = (char *) malloc (strlen (a->text) + WSR_MAX_ID_LEN + 1);
            assert (name);
            bool overlap = wsr_naming_overlap (a->text, b->text, name,
                                               strlen (a->text) + WSR_MAX_ID_LEN + 1);
            if (overlap) {
                //  The two ids inside the example name, for the message
                int len = (int) strlen (name);
                snprintf (error, size, "the %s template '%s' and the %s template '%s' overlap: "
                          "%s '%.*s' and %s '%.*s' both give '%s'", all [i].what, a->text,
                          all [j].what, b->text, all [i].id,
                          len - (int) (a->prefix_len + a->suffix_len), name + a->prefix_len,
                          all [j].id,
                          len - (int) (b->prefix_len + b->suffix_len), name + b->prefix_len,
                          name);
            }
            free (name);
            if (overlap)
                return -1;
        }
    return 0;
}

//  --------------------------------------------------------------------------
//  Selftest

//  Brute force for the cross-check: does some id x of at most max_len bytes
//  over "ab." make prefix_a x suffix_a a name of template b?
static bool
s_brute_overlap (const char *tpl_a, const char *tpl_b, int max_len)
{
    s_tpl_t a, b;
    if (s_tpl_split (tpl_a, &a) || s_tpl_split (tpl_b, &b))
        return false;
    const char alphabet [] = "ab.";
    for (int len = 1; len <= max_len; len++) {
        int combos = 1;
        for (int i = 0; i < len; i++)
            combos *= 3;
        for (int code = 0; code < combos; code++) {
            char id [16];
            for (int i = 0, rest = code; i < len; i++, rest /= 3)
                id [i] = alphabet [rest % 3];
            if (!wsr_util_id_valid (id, (size_t) len))
                continue;
            char name [64];
            int n = snprintf (name, sizeof name, "%.*s%.*s%s", (int) a.prefix_len, a.prefix,
                              len, id, a.suffix);
            size_t name_len = (size_t) n;
            if (name_len > b.prefix_len + b.suffix_len
            &&  memcmp (name, b.prefix, b.prefix_len) == 0
            &&  memcmp (name + name_len - b.suffix_len, b.suffix, b.suffix_len) == 0
            &&  wsr_util_id_valid (name + b.prefix_len,
                                   name_len - b.prefix_len - b.suffix_len))
                return true;
        }
    }
    return false;
}

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

    //  Overlap: the example, found with a witness
    char name [512];
    assert (wsr_naming_overlap ("ws.{user_id}", "ws.channel.{channel}", name, sizeof name));
    assert (streq (name, "ws.channel.a"));          //  user "channel.a" = channel "a"
    assert (wsr_naming_overlap ("ws.channel.{channel}", "ws.{user_id}", NULL, 0));
    //  The defaults never overlap
    const char *defaults [2][3] = {
        { "ws:{user_id}", "ws:channel:{channel}", "ws:actions:{user_id}" },
        { "world.updates.user.{user_id}", "world.updates.channel.{channel}",
          "client.actions.{user_id}" }
    };
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 3; j++)
                assert (i == j || !wsr_naming_overlap (defaults [k][i], defaults [k][j],
                                                       NULL, 0));
        wsr_naming_t *naming = wsr_naming_new (defaults [k][0], defaults [k][1],
                                               defaults [k][2]);
        assert (wsr_naming_check (naming, name, sizeof name) == 0);
        wsr_naming_destroy (&naming);
    }
    //  ':' is no id byte, '.' is: the same shapes differ by separator
    assert (!wsr_naming_overlap ("ws:{user_id}", "ws:actions:{user_id}", NULL, 0));
    assert (wsr_naming_overlap ("ws.{user_id}", "ws.actions.{user_id}", NULL, 0));
    //  Suffixes: different last bytes never meet; a prefix against a suffix does
    assert (!wsr_naming_overlap ("{user_id}.u", "{channel}.c", NULL, 0));
    assert (wsr_naming_overlap ("u.{user_id}", "{channel}.c", name, sizeof name));
    assert (streq (name, "u.c"));              //  user "c", channel "u"
    assert (wsr_naming_overlap ("{user_id}", "c-{channel}", name, sizeof name));
    //  Exact about dots: an id never starts or ends with one, nor doubles it
    assert (!wsr_naming_overlap ("a.{user_id}", "a{channel}", NULL, 0));
    assert (!wsr_naming_overlap ("x{user_id}.", "x{channel}", NULL, 0));
    assert (!wsr_naming_overlap ("a.{user_id}", "a.{channel}.", NULL, 0));
    assert (!wsr_naming_overlap ("p.{user_id}", "p{channel}.", NULL, 0));
    assert (!wsr_naming_overlap ("ws.{user_id}", "ws..{channel}", NULL, 0));
    assert (!wsr_naming_overlap ("q{user_id}", "q:{channel}", NULL, 0));
    //  Exact about length: ids are at most WSR_MAX_ID_LEN bytes
    char long_tpl [WSR_MAX_ID_LEN + 32];
    snprintf (long_tpl, sizeof long_tpl, "a%0*d{channel}", WSR_MAX_ID_LEN - 1, 0);
    assert (wsr_naming_overlap ("a{user_id}", long_tpl, NULL, 0));
    snprintf (long_tpl, sizeof long_tpl, "a%0*d{channel}", WSR_MAX_ID_LEN, 0);
    assert (!wsr_naming_overlap ("a{user_id}", long_tpl, NULL, 0));
    //  Cross-check against brute force on random short templates over
    //  "ab.:" (fixed parts of at most 4 bytes: any overlap has a witness id
    //  of at most 9 bytes, so the brute force up to 9 is complete)
    uint32_t seed = 12345;
    int overlaps = 0;
    for (int round = 0; round < 300; round++) {
        char tpl [2][32];
        for (int t = 0; t < 2; t++) {
            char part [2][4];
            for (int k = 0; k < 2; k++) {
                seed = seed * 1103515245 + 12345;
                int len = (int) ((seed >> 16) % 3);
                for (int i = 0; i < len; i++) {
                    seed = seed * 1103515245 + 12345;
                    part [k][i] = "ab.:" [(seed >> 16) % 4];
                }
                part [k][len] = 0;
            }
            snprintf (tpl [t], sizeof tpl [t], "%s%s%s", part [0],
                      t? "{channel}": "{user_id}", part [1]);
        }
        bool fast = wsr_naming_overlap (tpl [0], tpl [1], NULL, 0);
        bool slow = s_brute_overlap (tpl [0], tpl [1], 9);
        if (fast != slow)
            printf ("overlap '%s' '%s': exact %d, brute force %d\n", tpl [0], tpl [1],
                    fast, slow);
        assert (fast == slow);
        overlaps += fast;
    }
    assert (overlaps > 30 && overlaps < 270);       //  both answers were exercised
    if (verbose)
        printf ("%d of 300 random pairs overlap\n", overlaps);

    //  The whole-naming check names both templates
    wsr_naming_t *clash = wsr_naming_new ("ws.{user_id}", "ws.channel.{channel}",
                                          "client.actions.{user_id}");
    assert (clash);
    assert (wsr_naming_check (clash, name, sizeof name) == -1);
    assert (strstr (name, "'ws.{user_id}'") && strstr (name, "'ws.channel.{channel}'"));
    assert (strstr (name, "user 'channel.a' and channel 'a' both give 'ws.channel.a'"));
    wsr_naming_destroy (&clash);
    clash = wsr_naming_new ("u.{user_id}", "c.{channel}", "u.actions.{user_id}");
    assert (wsr_naming_check (clash, name, sizeof name) == -1);
    assert (strstr (name, "'u.{user_id}'") && strstr (name, "'u.actions.{user_id}'"));
    wsr_naming_destroy (&clash);

    //  Templates need their placeholder
    assert (wsr_naming_new ("ws:", "c:{channel}", "a:{user_id}") == NULL);
    assert (wsr_naming_new ("ws:{user_id}", "c:{user_id}", "a:{user_id}") == NULL);
    wsr_naming_t *odd = wsr_naming_new ("u[{user_id}]", "c:{channel}", "a:{user_id}");
    assert (wsr_naming_pattern (odd, WSR_TOPIC_USER, false, out, sizeof out) > 0);
    assert (streq (out, "u\\[*]"));
    wsr_naming_destroy (&odd);
}
