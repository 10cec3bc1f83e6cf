//  wsr_presence — who is connected where: presence kept in Redis by the bridges
//
//  Every bridge records its nodes' sessions as they connect and disconnect
//  (the workers send EVENT), beats every WSR_PRESENCE_BEAT_MS for the nodes
//  it hears from, and reaps nodes nobody has beaten for
//  WSR_PRESENCE_STALE_MS: their sessions are removed and reported once (so
//  that the bridge publishes their disconnect events: a node killed with -9
//  says nothing itself). Queries (GET /api/presence) keep only entries of
//  nodes beaten within WSR_PRESENCE_ALIVE_MS, so a dead node's sessions
//  vanish from answers within about a second of its last word, before the
//  reap. Time is Redis' own clock (TIME in the script): bridges on several
//  hosts need not agree on theirs.
//
//  One script, scripts/redis/presence.lua (compiled in), run with EVALSHA;
//  loaded again on each new connection, and sent whole once if Redis says
//  NOSCRIPT. Every key carries the hash tag {wsp}: one cluster slot.
//  Commands in flight are bounded; each request owns its arguments.

#include "wsr_classes.h"
#include <hiredis/hiredis.h>
#include "wsr_scripts.h"

typedef enum { S_WRITE, S_REAP, S_USER, S_CHANNEL } s_kind_t;

typedef struct _s_request_t s_request_t;
struct _s_request_t {
    wsr_presence_t *owner;          //  NULL once the owner is gone
    s_kind_t kind;
    void *cb;                       //  lost or query callback
    void *arg;
    char **argv;                    //  script arguments after the key (owned)
    size_t *lens;
    int argc;
    bool retried;                   //  sent again as EVAL
    void *handle;                   //  in owner->inflight
};

struct _wsr_presence_t {
    wsr_redis_t *redis;             //  not owned
    uint64_t loaded;                //  link generation the script was loaded on
    zlistx_t *inflight;             //  s_request_t
};

static void
s_request_free (s_request_t **request_p)
{
    s_request_t *request = *request_p;
    for (int i = 0; i < request->argc; i++)
        free (request->argv [i]);
    free (request->argv);
    free (request->lens);
    free (request);
    *request_p = NULL;
}

//  --------------------------------------------------------------------------
//  Create.
wsr_presence_t *
wsr_presence_new (wsr_redis_t *redis)
{
    assert (redis);
    wsr_presence_t *self = (wsr_presence_t *) zmalloc (sizeof (wsr_presence_t));
    self->redis = redis;
    self->inflight = zlistx_new ();
    return self;
}

//  --------------------------------------------------------------------------
//  Destroy: requests in flight become orphans, freed when Redis answers.
void
wsr_presence_destroy (wsr_presence_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        wsr_presence_t *self = *self_p;
        for (s_request_t *request = (s_request_t *) zlistx_first (self->inflight); request;
             request = (s_request_t *) zlistx_next (self->inflight))
            request->owner = NULL;
        zlistx_destroy (&self->inflight);
        free (self);
        *self_p = NULL;
    }
}

static void s_on_reply (void *arg, redisReply *reply);

static int
s_send (wsr_presence_t *self, s_request_t *request)
{
    const char *argv [request->argc + 4];
    size_t lens [request->argc + 4];
    bool eval = request->retried;
    argv [0] = eval? "EVAL": "EVALSHA";
    lens [0] = strlen (argv [0]);
    argv [1] = eval? wsr_presence_lua: WSR_PRESENCE_LUA_SHA;
    lens [1] = eval? sizeof wsr_presence_lua - 1: 40;
    argv [2] = "1";
    lens [2] = 1;
    argv [3] = WSR_PRESENCE_PREFIX;
    lens [3] = strlen (WSR_PRESENCE_PREFIX);
    for (int i = 0; i < request->argc; i++) {
        argv [4 + i] = request->argv [i];
        lens [4 + i] = request->lens [i];
    }
    return wsr_redis_command (self->redis, request->argc + 4, argv, lens, s_on_reply, request);
}

static void
s_on_loaded (void *arg, redisReply *reply)
{
    (void) arg;
    if (reply && (reply->type != REDIS_REPLY_STRING || strcmp (reply->str, WSR_PRESENCE_LUA_SHA)))
        zsys_error ("presence: SCRIPT LOAD did not give the expected digest");
}

//  Start a request (arguments given as a NULL-terminated list of strings).
static int
s_request (wsr_presence_t *self, s_kind_t kind, void *cb, void *arg, const char *const *args,
           int argc)
{
    if (!wsr_redis_connected (self->redis)
    ||  zlistx_size (self->inflight) >= WSR_PRESENCE_MAX_INFLIGHT)
        return -1;
    uint64_t generation = wsr_redis_generation (self->redis);
    if (generation != self->loaded) {
        const char *load [3] = { "SCRIPT", "LOAD", wsr_presence_lua };
        size_t lens [3] = { 6, 4, sizeof wsr_presence_lua - 1 };
        if (wsr_redis_command (self->redis, 3, load, lens, s_on_loaded, NULL) == 0)
            self->loaded = generation;
    }
    s_request_t *request = (s_request_t *) zmalloc (sizeof (s_request_t));
    request->owner = self;
    request->kind = kind;
    request->cb = cb;
    request->arg = arg;
    request->argc = argc;
    request->argv = (char **) zmalloc (argc * sizeof (char *));
    request->lens = (size_t *) zmalloc (argc * sizeof (size_t));
    for (int i = 0; i < argc; i++) {
        request->argv [i] = strdup (args [i]);
        request->lens [i] = strlen (args [i]);
    }
    if (s_send (self, request)) {
        s_request_free (&request);
        return -1;
    }
    request->handle = zlistx_add_end (self->inflight, request);
    return 0;
}

static void
s_on_reply (void *arg, redisReply *reply)
{
    s_request_t *request = (s_request_t *) arg;
    wsr_presence_t *self = request->owner;
    if (!self) {
        s_request_free (&request);          //  an orphan
        return;
    }
    if (reply && reply->type == REDIS_REPLY_ERROR && !request->retried
    &&  strncmp (reply->str, "NOSCRIPT", 8) == 0) {
        request->retried = true;
        if (s_send (self, request) == 0)
            return;                         //  answered later, as EVAL
        reply = NULL;
    }
    zlistx_detach (self->inflight, request->handle);
    bool ok = reply && reply->type == REDIS_REPLY_ARRAY;
    if (reply && reply->type == REDIS_REPLY_ERROR)
        zsys_warning ("presence: Redis refused a command: %s", reply->str);
    if (request->kind == S_REAP && ok && request->cb) {
        wsr_presence_lost_fn *lost = (wsr_presence_lost_fn *) request->cb;
        for (size_t i = 0; i + 1 < reply->elements; i += 2) {
            redisReply *node = reply->element [i], *member = reply->element [i + 1];
            if (node->type != REDIS_REPLY_STRING || member->type != REDIS_REPLY_STRING)
                continue;
            //  "SESSION USER CHANNELS SINCE" (ids have no spaces; channels may be empty)
            char session [24] = "", user [WSR_MAX_ID_LEN + 1] = "",
                 channels [WSR_MAX_CHANNELS * (WSR_MAX_ID_LEN + 1) + 1] = "";
            long long since = 0;
            const char *text = member->str;
            const char *a = strchr (text, ' ');
            const char *b = a? strchr (a + 1, ' '): NULL;
            const char *c = b? strchr (b + 1, ' '): NULL;
            if (!c || a - text >= (ptrdiff_t) sizeof session
            ||  b - a - 1 > WSR_MAX_ID_LEN || c - b - 1 >= (ptrdiff_t) sizeof channels)
                continue;
            memcpy (session, text, (size_t) (a - text));
            memcpy (user, a + 1, (size_t) (b - a - 1));
            memcpy (channels, b + 1, (size_t) (c - b - 1));
            since = atoll (c + 1);
            lost (request->arg, node->str, strtoull (session, NULL, 10), user, channels, since);
        }
    }
    else
    if ((request->kind == S_USER || request->kind == S_CHANNEL) && request->cb) {
        wsr_presence_query_fn *cb = (wsr_presence_query_fn *) request->cb;
        size_t first = request->kind == S_CHANNEL? 1: 0;
        if (!ok || reply->elements < first
        ||  (first && reply->element [0]->type != REDIS_REPLY_INTEGER))
            cb (request->arg, -1, 0, NULL, 0);
        else {
            size_t count = (reply->elements - first) / 2;
            const char **infos = (const char **) zmalloc ((count? count: 1) * sizeof (char *));
            size_t n = 0;
            for (size_t i = 0; i < count; i++) {
                redisReply *info = reply->element [first + 2 * i + 1];
                if (info->type == REDIS_REPLY_STRING)
                    infos [n++] = info->str;
            }
            size_t total = first? (size_t) reply->element [0]->integer: n;
            cb (request->arg, 0, total, infos, n);
            free (infos);
        }
    }
    s_request_free (&request);
}

//  --------------------------------------------------------------------------
//  Writes.
int
wsr_presence_connect (wsr_presence_t *self, const char *node, uint64_t session,
                      const char *user, const char *channels, int64_t since_ms, const char *info)
{
    assert (self && node && user && channels && info);
    char id [24], since [24];
    snprintf (id, sizeof id, "%" PRIu64, session);
    snprintf (since, sizeof since, "%" PRId64, since_ms);
    const char *args [] = { "connect", node, id, user, channels, since, info };
    return s_request (self, S_WRITE, NULL, NULL, args, 7);
}

int
wsr_presence_disconnect (wsr_presence_t *self, const char *node, uint64_t session,
                         const char *user, const char *channels, int64_t since_ms)
{
    assert (self && node && user && channels);
    char id [24], since [24];
    snprintf (id, sizeof id, "%" PRIu64, session);
    snprintf (since, sizeof since, "%" PRId64, since_ms);
    const char *args [] = { "disconnect", node, id, user, channels, since };
    return s_request (self, S_WRITE, NULL, NULL, args, 6);
}

int
wsr_presence_beat (wsr_presence_t *self, const char *const *nodes, size_t count)
{
    assert (self && (nodes || count == 0));
    if (count == 0)
        return 0;
    const char **args = (const char **) zmalloc ((count + 1) * sizeof (char *));
    args [0] = "beat";
    for (size_t i = 0; i < count; i++)
        args [i + 1] = nodes [i];
    int rc = s_request (self, S_WRITE, NULL, NULL, args, (int) count + 1);
    free (args);
    return rc;
}

int
wsr_presence_reap (wsr_presence_t *self, wsr_presence_lost_fn *lost, void *arg)
{
    assert (self);
    char stale [24];
    snprintf (stale, sizeof stale, "%d", WSR_PRESENCE_STALE_MS);
    const char *args [] = { "reap", stale };
    return s_request (self, S_REAP, (void *) lost, arg, args, 2);
}

//  --------------------------------------------------------------------------
//  Queries.
int
wsr_presence_user (wsr_presence_t *self, const char *user, wsr_presence_query_fn *cb,
                   void *arg)
{
    assert (self && user && cb);
    char alive [24];
    snprintf (alive, sizeof alive, "%d", WSR_PRESENCE_ALIVE_MS);
    const char *args [] = { "user", user, alive };
    return s_request (self, S_USER, (void *) cb, arg, args, 3);
}

int
wsr_presence_channel (wsr_presence_t *self, const char *channel, size_t limit,
                      wsr_presence_query_fn *cb, void *arg)
{
    assert (self && channel && cb);
    char alive [24], max [24];
    snprintf (alive, sizeof alive, "%d", WSR_PRESENCE_ALIVE_MS);
    snprintf (max, sizeof max, "%zu", limit);
    const char *args [] = { "channel", channel, alive, max };
    return s_request (self, S_CHANNEL, (void *) cb, arg, args, 4);
}

//  --------------------------------------------------------------------------
//  Selftest on a real Redis.

static void
s_noop (void *arg, const char *pattern, const char *channel, size_t channel_len,
        const uint8_t *data, size_t size)
{
    (void) arg, (void) pattern, (void) channel, (void) channel_len, (void) data, (void) size;
}

typedef struct {
    int answers;
    int status;
    size_t total, count;
    char first [512];
    int lost;
    char lost_user [64];
    uint64_t lost_session;
} s_seen_t;

static void
s_query (void *arg, int status, size_t total, const char *const *infos, size_t count)
{
    s_seen_t *seen = (s_seen_t *) arg;
    seen->answers++;
    seen->status = status;
    seen->total = total;
    seen->count = count;
    snprintf (seen->first, sizeof seen->first, "%s", count? infos [0]: "");
}

static void
s_lost (void *arg, const char *node, uint64_t session, const char *user, const char *channels,
        int64_t since_ms)
{
    (void) node, (void) channels, (void) since_ms;
    s_seen_t *seen = (s_seen_t *) arg;
    seen->lost++;
    snprintf (seen->lost_user, sizeof seen->lost_user, "%s", user);
    seen->lost_session = session;
}

#define S_RUN(redis, cond, ms) do { \
    int64_t s_end = zclock_mono () + (ms); \
    while (!(cond) && zclock_mono () < s_end) { \
        zmq_pollitem_t s_items [8]; \
        int s_count = wsr_redis_pollitems ((redis), s_items, 8); \
        zmq_poll (s_items, s_count, 20); \
        wsr_redis_process ((redis), s_items, s_count); \
    } \
} while (0)

void
wsr_presence_test (bool verbose)
{
    (void) verbose;
    if (system ("command -v redis-server >/dev/null 2>&1") != 0) {
        wsr_util_test_skip ("redis-server not installed");
        return;
    }
    int port = wsr_util_free_port ();
    char port_text [16], url [64];
    snprintf (port_text, sizeof port_text, "%d", port);
    snprintf (url, sizeof url, "redis://127.0.0.1:%d", port);
    const char *argv [] = { "redis-server", "--port", port_text, "--bind", "127.0.0.1",
                            "--save", "", "--appendonly", "no", NULL };
    pid_t pid = wsr_util_spawn (argv);
    wsr_redis_t *redis = wsr_redis_new (url, s_noop, NULL);
    wsr_presence_t *presence = wsr_presence_new (redis);
    assert (wsr_presence_user (presence, "u1", s_query, NULL) == -1);      //  not connected
    S_RUN (redis, wsr_redis_connected (redis), 5000);
    assert (wsr_redis_connected (redis));

    //  Two sessions of u1 on two nodes, one in channel lobby
    const char *nodes [] = { "na", "nb" };
    assert (wsr_presence_beat (presence, nodes, 2) == 0);
    assert (wsr_presence_connect (presence, "na", 11, "u1", "lobby", 1000,
                                  "{\"session\":\"11\",\"node\":\"na\"}") == 0);
    assert (wsr_presence_connect (presence, "nb", 12, "u1", "", 2000,
                                  "{\"session\":\"12\",\"node\":\"nb\"}") == 0);
    s_seen_t seen = { 0 };
    assert (wsr_presence_user (presence, "u1", s_query, &seen) == 0);
    S_RUN (redis, seen.answers == 1, 2000);
    assert (seen.status == 0 && seen.total == 2 && seen.count == 2);
    assert (wsr_presence_channel (presence, "lobby", 10, s_query, &seen) == 0);
    S_RUN (redis, seen.answers == 2, 2000);
    assert (seen.total == 1 && strstr (seen.first, "\"node\":\"na\""));
    //  A disconnect goes at once
    assert (wsr_presence_disconnect (presence, "nb", 12, "u1", "", 2000) == 0);
    assert (wsr_presence_user (presence, "u1", s_query, &seen) == 0);
    S_RUN (redis, seen.answers == 3, 2000);
    assert (seen.total == 1 && strstr (seen.first, "\"session\":\"11\""));
    //  Node na stops beating: gone from answers past ALIVE, reaped past STALE
    //  (its session reported once)
    int64_t start = zclock_mono ();
    while (zclock_mono () - start < WSR_PRESENCE_ALIVE_MS + 200) {
        const char *alive [] = { "nb" };
        wsr_presence_beat (presence, alive, 1);
        S_RUN (redis, false, 100);
    }
    assert (wsr_presence_user (presence, "u1", s_query, &seen) == 0);
    S_RUN (redis, seen.answers == 4, 2000);
    assert (seen.total == 0);
    while (zclock_mono () - start < WSR_PRESENCE_STALE_MS + 200)
        S_RUN (redis, false, 100);
    assert (wsr_presence_reap (presence, s_lost, &seen) == 0);
    assert (wsr_presence_reap (presence, s_lost, &seen) == 0);         //  nothing twice
    S_RUN (redis, seen.lost > 0, 2000);
    S_RUN (redis, false, 200);              //  the second reap has answered by now
    assert (seen.lost == 1 && streq (seen.lost_user, "u1") && seen.lost_session == 11);
    assert (wsr_presence_channel (presence, "lobby", 10, s_query, &seen) == 0);
    S_RUN (redis, seen.answers == 5, 2000);
    assert (seen.total == 0);
    //  Scripts flushed: sent whole once, then by digest again
    redisContext *admin = redisConnect ("127.0.0.1", port);
    freeReplyObject (redisCommand (admin, "SCRIPT FLUSH"));
    redisFree (admin);
    assert (wsr_presence_user (presence, "u1", s_query, &seen) == 0);
    S_RUN (redis, seen.answers == 6, 2000);
    assert (seen.status == 0);
    //  Destroyed with a command in flight: the answer is dropped, no leak
    assert (wsr_presence_user (presence, "u1", s_query, &seen) == 0);
    wsr_presence_destroy (&presence);
    S_RUN (redis, false, 200);
    assert (seen.answers == 6);
    wsr_redis_destroy (&redis);
    wsr_util_reap (pid);
}
