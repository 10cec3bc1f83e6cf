//  wsr_redis — a Redis pub/sub backplane link on hiredis async, driven by the owner's poll loop
//
//  Two connections: `sub` in subscribe mode (SUBSCRIBE / PSUBSCRIBE, receives
//  messages) and `pub` for PUBLISH and a liveness PING every second. Both are
//  hiredis async contexts whose event hooks only record what hiredis wants
//  (read / write); the owner's zmq_poll watches the fds (wsr_redis_pollitems)
//  and hands back the results (wsr_redis_process). No thread, no event library.
//
//  Every connection starts with a hello before anything else: AUTH (with the
//  URL's user and password, Redis 6 ACL style, or the password alone) or,
//  without a password, a PING. Only its answer makes the connection UP, so a
//  wrong password, a missing one (NOAUTH) or a refused ACL is a connection
//  that never becomes ready: it is logged (never the password; one line per
//  minute while it lasts), counted, and retried with the usual backoff.
//
//  The link remembers what is wanted, not what was sent: after any reconnect
//  every wanted channel and pattern is subscribed again, in batches. A
//  connection that fails, drops, or misses its PING replies for 3 s is freed
//  and reconnected with backoff (100 ms doubling to 1 s), so delivery resumes
//  within about a second of Redis being back.
//
//  With a redis+cluster:// URL the link is a facade over wsr_rcluster
//  (sharded Pub/Sub on a Redis Cluster): SUBSCRIBE becomes SSUBSCRIBE at the
//  channel's shard, PUBLISH becomes SPUBLISH routed to the owner, commands
//  go to the master owning their key (EVAL / EVALSHA: the first key; other
//  commands: the first argument; SCRIPT LOAD: any master, NOSCRIPT elsewhere
//  is answered by the callers' EVAL retry). Patterns have no sharded form
//  and are refused. Callers (bridge, history, presence) are the same code
//  for both.
//
//  hiredis frees a context after its disconnect callback; every callback
//  checks that the context is still the link's current one, so a context we
//  freed ourselves can call back harmlessly.

#include "wsr_classes.h"
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#define S_BACKOFF_MIN_MS    100
#define S_BACKOFF_MAX_MS    1000
#define S_CONNECT_TIMEOUT   2000    //  TCP connect must complete by then
#define S_HELLO_TIMEOUT     10000   //  ... and AUTH / PING be answered (a busy Redis is slow)
#define S_PING_EVERY_MS     1000
#define S_PING_DEAD_MS      3000    //  no PONG for this long: reconnect
#define S_BATCH             512     //  channels per SUBSCRIBE
#define S_HOLD_MAX          256     //  hold channel name bytes
#define S_REFUSAL_LOG_MS    60000   //  one refusal report per minute at most
#define S_REPLY_SHOWN       200     //  bytes of a Redis error reply logged
#define S_DB_MAX            999999  //  largest database number accepted

//  DOWN → CONNECTING (TCP) → HELLO (AUTH or PING sent) → UP
typedef enum { S_DOWN, S_CONNECTING, S_HELLO, S_UP } s_state_t;

typedef struct {
    struct _wsr_redis_t *owner;     //  the link
    redisAsyncContext *ac;          //  current context or NULL
    s_state_t state;
    bool want_read;                 //  hiredis asked for read events
    bool want_write;                //  hiredis asked for write events
    int64_t next_attempt;           //  mono ms, when DOWN
    int64_t started;                //  mono ms, connect start
    int64_t last_read;              //  mono ms, bytes last read: Redis is alive
    int backoff;                    //  current backoff ms
    bool subscriber;                //  the sub connection
} s_conn_t;

struct _wsr_redis_t {
    char *host;                     //  from the URL
    int port;                       //  from the URL, 6379 by default
    char *user;                     //  ACL user (percent-decoded) or NULL
    char *password;                 //  percent-decoded, or NULL: never logged
    int db;                         //  SELECTed on the publish connection
    s_conn_t sub;                   //  subscribe-mode connection
    s_conn_t pub;                   //  publish + ping connection
    zhashx_t *channels;             //  wanted channels (key → NULL)
    zhashx_t *unsubscribing;        //  channel → UNSUBSCRIBEs in flight (as a count)
    char hold [S_HOLD_MAX];         //  channel held by the subscriber connection
    zhashx_t *patterns;             //  wanted patterns
    int64_t last_ping;              //  mono ms
    int64_t ping_waiting;           //  mono ms the oldest unanswered PING left, 0 = none
    wsr_redis_message_fn *on_message;
    void *arg;
    uint64_t lost;                  //  connections lost since last taken
    uint64_t refused;               //  hellos / commands refused since last taken
    uint64_t refused_unlogged;      //  refusals since the last report
    int64_t refusal_logged_at;      //  mono ms of the last report, 0 = none yet
    uint64_t generation;            //  publish connection's connects so far
    wsr_redis_subscribed_fn *on_subscribed;     //  SUBSCRIBE confirmations, or NULL
    void *subscribed_arg;
    wsr_rcluster_t *cluster;        //  redis+cluster://: the cluster link, else NULL
};

#define S_CLUSTER_SCHEME    "redis+cluster://"


//  --------------------------------------------------------------------------
//  Event hooks: just remember what hiredis wants

static void s_add_read (void *data)  { ((s_conn_t *) data)->want_read = true; }
static void s_del_read (void *data)  { ((s_conn_t *) data)->want_read = false; }
static void s_add_write (void *data) { ((s_conn_t *) data)->want_write = true; }
static void s_del_write (void *data) { ((s_conn_t *) data)->want_write = false; }
static void
s_cleanup (void *data)
{
    s_conn_t *conn = (s_conn_t *) data;
    conn->want_read = conn->want_write = false;
}

static void
s_schedule (s_conn_t *conn)
{
    conn->ac = NULL;
    conn->state = S_DOWN;
    conn->want_read = conn->want_write = false;
    conn->next_attempt = wsr_util_mono_ms () + conn->backoff;
    conn->backoff = conn->backoff * 2 > S_BACKOFF_MAX_MS? S_BACKOFF_MAX_MS: conn->backoff * 2;
}

//  Free our context on purpose (timeouts, dead ping): callbacks that run
//  during the free see a context that is no longer current and do nothing.
static void
s_reset (s_conn_t *conn)
{
    redisAsyncContext *ac = conn->ac;
    s_schedule (conn);
    if (ac)
        redisAsyncFree (ac);
}

//  --------------------------------------------------------------------------
//  Replies

//  The hold channel's subscription: nothing to do with its messages.
static void
s_on_hold (redisAsyncContext *ac, void *reply_p, void *privdata)
{
    (void) ac;
    (void) reply_p;
    (void) privdata;
}

static void
s_on_sub_reply (redisAsyncContext *ac, void *reply_p, void *privdata)
{
    wsr_redis_t *self = (wsr_redis_t *) privdata;
    redisReply *reply = (redisReply *) reply_p;
    if (ac != self->sub.ac || !reply || reply->type != REDIS_REPLY_ARRAY || reply->elements < 3)
        return;
    redisReply **e = reply->element;
    if (e [0]->type != REDIS_REPLY_STRING)
        return;
    if (streq (e [0]->str, "message") && e [1]->type == REDIS_REPLY_STRING
    &&  e [2]->type == REDIS_REPLY_STRING)
        self->on_message (self->arg, NULL, e [1]->str, e [1]->len,
                          (const uint8_t *) e [2]->str, e [2]->len);
    else
    if (streq (e [0]->str, "pmessage") && reply->elements == 4
    &&  e [1]->type == REDIS_REPLY_STRING
    &&  e [2]->type == REDIS_REPLY_STRING && e [3]->type == REDIS_REPLY_STRING)
        self->on_message (self->arg, e [1]->str, e [2]->str, e [2]->len,
                          (const uint8_t *) e [3]->str, e [3]->len);
    else
    if (streq (e [0]->str, "subscribe") && e [1]->type == REDIS_REPLY_STRING
    &&  self->on_subscribed)
        self->on_subscribed (self->subscribed_arg, e [1]->str, e [1]->len);
    else
    if (streq (e [0]->str, "unsubscribe") && e [1]->type == REDIS_REPLY_STRING) {
        //  hiredis has just forgotten the channel's callback: a SUBSCRIBE
        //  sent before this reply came would have lost its callback with it
        //  (and every message after), so a channel wanted again meanwhile is
        //  subscribed only now
        char *channel = e [1]->str;
        uintptr_t pending = (uintptr_t) zhashx_lookup (self->unsubscribing, channel);
        if (pending > 1)
            zhashx_update (self->unsubscribing, channel, (void *) (pending - 1));
        else {
            zhashx_delete (self->unsubscribing, channel);
            if (zhashx_lookup (self->channels, channel) && self->sub.state == S_UP)
                redisAsyncCommand (self->sub.ac, s_on_sub_reply, self, "SUBSCRIBE %s", channel);
        }
    }
}

static void
s_on_pong (redisAsyncContext *ac, void *reply_p, void *privdata)
{
    wsr_redis_t *self = (wsr_redis_t *) privdata;
    redisReply *reply = (redisReply *) reply_p;
    if (ac == self->pub.ac && reply && reply->type != REDIS_REPLY_ERROR)
        self->ping_waiting = 0;
}

//  Count a refusal (wrong password, NOAUTH, NOPERM...) and report it at most
//  once per S_REFUSAL_LOG_MS. The reply is Redis' error text; it is withheld
//  if it ever quotes the password.
static void
s_refusal (wsr_redis_t *self, const char *what, const char *reply, bool retrying)
{
    self->refused++;
    self->refused_unlogged++;
    int64_t now = wsr_util_mono_ms ();
    if (self->refusal_logged_at && now - self->refusal_logged_at < S_REFUSAL_LOG_MS)
        return;
    if (!reply)
        reply = "";
    if (self->password && strstr (reply, self->password))
        reply = "(Redis' reply withheld: it quotes the password)";
    zsys_error ("redis: %s:%d refused %s%s%s: %.*s (%" PRIu64 " refusal(s) since the last "
                "report%s)", self->host, self->port, what,
                self->user? " for user ": "", self->user? self->user: "",
                S_REPLY_SHOWN, reply, self->refused_unlogged,
                retrying? "; reconnecting with backoff": "");
    self->refusal_logged_at = now;
    self->refused_unlogged = 0;
}

static void
s_on_select (redisAsyncContext *ac, void *reply_p, void *privdata)
{
    wsr_redis_t *self = (wsr_redis_t *) privdata;
    redisReply *reply = (redisReply *) reply_p;
    if (ac == self->pub.ac && reply && reply->type == REDIS_REPLY_ERROR)
        s_refusal (self, "SELECT", reply->str, false);
}

//  A PUBLISH that Redis refused (an ACL without the channel: NOPERM)
static void
s_on_published (redisAsyncContext *ac, void *reply_p, void *privdata)
{
    (void) ac;
    wsr_redis_t *self = (wsr_redis_t *) privdata;
    redisReply *reply = (redisReply *) reply_p;
    if (reply && reply->type == REDIS_REPLY_ERROR)
        s_refusal (self, "PUBLISH", reply->str, false);
}

//  Send (P)SUBSCRIBE for every entry of a table, in batches.
static void
s_subscribe_all (wsr_redis_t *self, zhashx_t *table, const char *command)
{
    const char *argv [S_BATCH + 1];
    int argc = 0;
    argv [argc++] = command;
    for (void *item = zhashx_first (table); item; item = zhashx_next (table)) {
        argv [argc++] = (const char *) zhashx_cursor (table);
        if (argc == S_BATCH + 1) {
            redisAsyncCommandArgv (self->sub.ac, s_on_sub_reply, self, argc, argv, NULL);
            argc = 1;
        }
    }
    if (argc > 1)
        redisAsyncCommandArgv (self->sub.ac, s_on_sub_reply, self, argc, argv, NULL);
}

//  --------------------------------------------------------------------------
//  Connection lifecycle

static s_conn_t *
s_conn_of (const redisAsyncContext *ac)
{
    return (s_conn_t *) ac->ev.data;
}

//  The hello was answered: the connection is usable.
static void
s_ready (s_conn_t *conn)
{
    wsr_redis_t *self = conn->owner;
    conn->state = S_UP;
    conn->backoff = S_BACKOFF_MIN_MS;
    self->refusal_logged_at = 0;    //  a new refusal is reported at once
    zsys_info ("redis: %s connection to %s:%d up%s%s", conn->subscriber? "subscribe": "publish",
               self->host, self->port, self->user? " as user ": "", self->user? self->user: "");
    if (conn->subscriber) {
        zhashx_purge (self->unsubscribing);     //  a new connection: none in flight
        redisAsyncCommand (conn->ac, s_on_hold, self, "SUBSCRIBE %s", self->hold);
        s_subscribe_all (self, self->channels, "SUBSCRIBE");
        s_subscribe_all (self, self->patterns, "PSUBSCRIBE");
    }
    else {
        if (self->db)
            redisAsyncCommand (conn->ac, s_on_select, self, "SELECT %d", self->db);
        self->generation++;         //  commands before this connection are gone
        self->last_ping = wsr_util_mono_ms ();
        self->ping_waiting = 0;
    }
}

//  Reply to the hello (AUTH or PING). Anything but success: count, report,
//  and start this connection over with backoff.
static void
s_on_hello (redisAsyncContext *ac, void *reply_p, void *privdata)
{
    s_conn_t *conn = (s_conn_t *) privdata;
    redisReply *reply = (redisReply *) reply_p;
    if (conn->ac != ac || conn->state != S_HELLO || !reply)
        return;                     //  an old context, or one being freed
    if (reply->type == REDIS_REPLY_ERROR) {
        s_refusal (conn->owner, conn->owner->password? "AUTH": "PING (no password in the URL)",
                   reply->str, true);
        s_reset (conn);             //  inside a reply callback: hiredis frees it after
    }
    else
        s_ready (conn);
}

static void
s_on_connect (const redisAsyncContext *ac, int status)
{
    s_conn_t *conn = s_conn_of (ac);
    if (conn->ac != ac)
        return;
    wsr_redis_t *self = conn->owner;
    if (status != REDIS_OK) {
        wsr_debug ("redis: connect to %s:%d failed: %s", self->host, self->port, ac->errstr);
        s_schedule (conn);          //  hiredis frees ac after this callback
        return;
    }
    //  The hello goes before anything else on this connection
    conn->state = S_HELLO;
    int rc;
    if (self->password) {
        const char *argv [3] = { "AUTH", self->user, self->password };
        int argc = self->user? 3: 2;
        if (!self->user)
            argv [1] = self->password;
        rc = redisAsyncCommandArgv (conn->ac, s_on_hello, conn, argc, argv, NULL);
    }
    else
        rc = redisAsyncCommand (conn->ac, s_on_hello, conn, "PING");
    if (rc != REDIS_OK)
        wsr_debug ("redis: %s:%d: hello not queued", self->host, self->port);
}

static void
s_on_disconnect (const redisAsyncContext *ac, int status)
{
    (void) status;
    s_conn_t *conn = s_conn_of (ac);
    if (conn->ac != ac)
        return;
    //  A refused SUBSCRIBE (NOPERM: an ACL without the channel) makes hiredis
    //  drop the connection with Redis' error as errstr
    if (strncmp (ac->errstr, "NOPERM", 6) == 0 || strncmp (ac->errstr, "NOAUTH", 6) == 0)
        s_refusal (conn->owner, "SUBSCRIBE", ac->errstr, true);
    else
        zsys_warning ("redis: %s connection to %s:%d lost%s%s",
                      conn->subscriber? "subscribe": "publish", conn->owner->host,
                      conn->owner->port, ac->errstr [0]? ": ": "", ac->errstr);
    conn->owner->lost++;
    s_schedule (conn);              //  hiredis frees ac after this callback
}

static void
s_connect (wsr_redis_t *self, s_conn_t *conn)
{
    redisAsyncContext *ac = redisAsyncConnect (self->host, self->port);
    if (!ac) {
        s_schedule (conn);
        return;
    }
    if (ac->err) {
        wsr_debug ("redis: connect to %s:%d: %s", self->host, self->port, ac->errstr);
        redisAsyncFree (ac);
        s_schedule (conn);
        return;
    }
    conn->ac = ac;
    conn->state = S_CONNECTING;
    conn->started = wsr_util_mono_ms ();
    ac->ev.data = conn;
    ac->ev.addRead = s_add_read;
    ac->ev.delRead = s_del_read;
    ac->ev.addWrite = s_add_write;
    ac->ev.delWrite = s_del_write;
    ac->ev.cleanup = s_cleanup;
    //  A non-blocking connect completes on the first write event
    conn->want_write = true;
    redisAsyncSetConnectCallback (ac, s_on_connect);
    redisAsyncSetDisconnectCallback (ac, s_on_disconnect);
}

//  --------------------------------------------------------------------------
//  Parse redis://[[user]:password@]host[:port][/db]. Returns 0, or -1 with
//  *error set to a reason that never quotes the URL.
static int
s_parse_url (wsr_redis_t *self, const char *text, const char **error)
{
    wsr_url_t url;
    if (wsr_util_url_parse (text, strlen (text), &url, error))
        return -1;
    int rc = -1;
    const char *db = url.path [0] == '/'? url.path + 1: url.path;
    size_t db_len = strlen (db);
    if (streq (url.scheme, "rediss"))
        *error = "rediss:// (TLS) is not supported by hiredis 0.14; "
                 "use a local TLS tunnel such as stunnel (see the README)";
    else
    if (!streq (url.scheme, "redis"))
        *error = "the scheme is not redis://";
    else
    if (url.has_userinfo && !url.has_password)
        *error = "credentials need a ':' (redis://:PASSWORD@HOST or "
                 "redis://USER:PASSWORD@HOST)";
    else
    if (url.has_password && url.password [0] == 0)
        *error = "the password is empty";
    else
    if (db_len > 6 || strspn (db, "0123456789") != db_len || atoi (db) > S_DB_MAX)
        *error = "the path is not /DB (a database number)";
    else {
        self->host = strdup (url.host);
        self->port = url.port? url.port: 6379;
        self->db = atoi (db);
        if (url.user [0])
            self->user = strdup (url.user);
        if (url.has_password)
            self->password = strdup (url.password);
        rc = 0;
    }
    wsr_util_url_clear (&url);
    return rc;
}

//  --------------------------------------------------------------------------
//  Create a link.
wsr_redis_t *
wsr_redis_new (const char *url, wsr_redis_message_fn *on_message, void *arg)
{
    assert (url && on_message);
    wsr_redis_t *self = (wsr_redis_t *) zmalloc (sizeof (wsr_redis_t));
    self->on_message = on_message;
    self->arg = arg;
    snprintf (self->hold, sizeof self->hold, "__wsrouter:hold");
    self->channels = zhashx_new ();
    self->unsubscribing = zhashx_new ();
    self->patterns = zhashx_new ();
    self->sub.owner = self->pub.owner = self;
    self->sub.subscriber = true;
    self->sub.backoff = self->pub.backoff = S_BACKOFF_MIN_MS;
    if (strncmp (url, S_CLUSTER_SCHEME, strlen (S_CLUSTER_SCHEME)) == 0) {
        self->cluster = wsr_rcluster_new (url + strlen (S_CLUSTER_SCHEME), on_message, arg);
        if (!self->cluster) {
            char shown [WSR_URL_MAX];
            zsys_error ("redis: bad cluster URL %s",
                        wsr_util_redact_url (url, shown, sizeof shown));
            wsr_redis_destroy (&self);
        }
        return self;
    }
    const char *error = NULL;
    if (s_parse_url (self, url, &error)) {
        char shown [WSR_URL_MAX];
        zsys_error ("redis: bad URL %s: %s", wsr_util_redact_url (url, shown, sizeof shown),
                    error);
        wsr_redis_destroy (&self);
    }
    return self;
}

//  --------------------------------------------------------------------------
//  Destroy the link.
void
wsr_redis_destroy (wsr_redis_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        wsr_redis_t *self = *self_p;
        wsr_rcluster_destroy (&self->cluster);
        s_reset (&self->sub);
        s_reset (&self->pub);
        zhashx_destroy (&self->channels);
        zhashx_destroy (&self->unsubscribing);
        zhashx_destroy (&self->patterns);
        free (self->host);
        free (self->user);
        if (self->password) {
            sodium_memzero (self->password, strlen (self->password));
            free (self->password);
        }
        free (self);
        *self_p = NULL;
    }
}

//  --------------------------------------------------------------------------
//  Want a channel.
void
wsr_redis_subscribe (wsr_redis_t *self, const char *channel)
{
    assert (self && channel);
    if (self->cluster) {
        wsr_rcluster_subscribe (self->cluster, channel);
        return;
    }
    if (zhashx_lookup (self->channels, channel))
        return;
    zhashx_insert (self->channels, channel, (void *) 1);
    if (self->sub.state == S_UP && !zhashx_lookup (self->unsubscribing, channel))
        redisAsyncCommand (self->sub.ac, s_on_sub_reply, self, "SUBSCRIBE %s", channel);
}

//  --------------------------------------------------------------------------
//  Stop wanting a channel.
void
wsr_redis_unsubscribe (wsr_redis_t *self, const char *channel)
{
    assert (self && channel);
    if (self->cluster) {
        wsr_rcluster_unsubscribe (self->cluster, channel);
        return;
    }
    if (!zhashx_lookup (self->channels, channel))
        return;
    zhashx_delete (self->channels, channel);
    if (self->sub.state == S_UP) {
        uintptr_t pending = (uintptr_t) zhashx_lookup (self->unsubscribing, channel);
        zhashx_update (self->unsubscribing, channel, (void *) (pending + 1));
        redisAsyncCommand (self->sub.ac, NULL, NULL, "UNSUBSCRIBE %s", channel);
    }
}

//  --------------------------------------------------------------------------
//  Want a pattern.
void
wsr_redis_psubscribe (wsr_redis_t *self, const char *pattern)
{
    assert (self && pattern);
    if (self->cluster) {
        zsys_error ("redis: a cluster has no sharded pattern subscription; %s ignored",
                    pattern);
        return;
    }
    if (zhashx_lookup (self->patterns, pattern))
        return;
    zhashx_insert (self->patterns, pattern, (void *) 1);
    if (self->sub.state == S_UP)
        redisAsyncCommand (self->sub.ac, s_on_sub_reply, self, "PSUBSCRIBE %s", pattern);
}

//  --------------------------------------------------------------------------
//  Publish.
int
wsr_redis_publish (wsr_redis_t *self, const char *channel, const uint8_t *data, size_t size)
{
    assert (self && channel);
    if (self->cluster)
        return wsr_rcluster_publish (self->cluster, channel, data, size);
    if (self->pub.state != S_UP)
        return -1;
    const char *argv [3] = { "PUBLISH", channel, (const char *) data };
    size_t lens [3] = { 7, strlen (channel), size };
    return redisAsyncCommandArgv (self->pub.ac, s_on_published, self, 3, argv, lens)
           == REDIS_OK? 0: -1;
}

//  --------------------------------------------------------------------------
//  Both connections up.
bool
wsr_redis_connected (wsr_redis_t *self)
{
    assert (self);
    if (self->cluster)
        return wsr_rcluster_mapped (self->cluster);
    return self->sub.state == S_UP && self->pub.state == S_UP;
}

//  --------------------------------------------------------------------------
//  Connections lost since the last call.
uint64_t
wsr_redis_take_reconnects (wsr_redis_t *self)
{
    assert (self);
    if (self->cluster)
        return wsr_rcluster_take_reconnects (self->cluster)
             + wsr_rcluster_take_resets (self->cluster);
    uint64_t lost = self->lost;
    self->lost = 0;
    return lost;
}

//  --------------------------------------------------------------------------
//  Refusals since the last call.
uint64_t
wsr_redis_take_refusals (wsr_redis_t *self)
{
    assert (self);
    if (self->cluster)
        return wsr_rcluster_take_failed (self->cluster);
    uint64_t refused = self->refused;
    self->refused = 0;
    return refused;
}

//  --------------------------------------------------------------------------
//  Wanted subscriptions.
size_t
wsr_redis_wanted (wsr_redis_t *self)
{
    assert (self);
    if (self->cluster)
        return wsr_rcluster_wanted (self->cluster);
    return zhashx_size (self->channels) + zhashx_size (self->patterns);
}

static int
s_item (s_conn_t *conn, zmq_pollitem_t *item)
{
    if (!conn->ac || !(conn->want_read || conn->want_write))
        return 0;
    item->socket = NULL;
    item->fd = conn->ac->c.fd;
    item->events = (short) ((conn->want_read? ZMQ_POLLIN: 0)
                          | (conn->want_write? ZMQ_POLLOUT: 0));
    item->revents = 0;
    return 1;
}

//  --------------------------------------------------------------------------
//  Poll items.
int
wsr_redis_pollitems (wsr_redis_t *self, zmq_pollitem_t *items, int max)
{
    assert (self);
    if (self->cluster)
        return wsr_rcluster_pollitems (self->cluster, items, max);
    int count = 0;
    if (count < max)
        count += s_item (&self->sub, items + count);
    if (count < max)
        count += s_item (&self->pub, items + count);
    return count;
}

//  --------------------------------------------------------------------------
//  Next timer.
long
wsr_redis_timeout (wsr_redis_t *self)
{
    assert (self);
    if (self->cluster)
        return wsr_rcluster_timeout (self->cluster);
    int64_t now = wsr_util_mono_ms ();
    long timeout = 500;
    s_conn_t *conns [2] = { &self->sub, &self->pub };
    for (int i = 0; i < 2; i++)
        if (conns [i]->state == S_DOWN) {
            long wait = (long) (conns [i]->next_attempt - now);
            if (wait < timeout)
                timeout = wait < 0? 0: wait;
        }
    return timeout;
}

static void
s_handle (s_conn_t *conn, zmq_pollitem_t *items, int count)
{
    for (int i = 0; i < count; i++) {
        if (!conn->ac || items [i].socket || items [i].fd != conn->ac->c.fd)
            continue;
        redisAsyncContext *ac = conn->ac;
        if (items [i].revents & ZMQ_POLLIN)
            conn->last_read = wsr_util_mono_ms ();
        if (items [i].revents & (ZMQ_POLLIN | ZMQ_POLLERR))
            redisAsyncHandleRead (ac);
        if (conn->ac == ac && (items [i].revents & ZMQ_POLLOUT))
            redisAsyncHandleWrite (ac);
        items [i].revents = 0;      //  fd numbers can be reused by a reconnect
    }
}

//  --------------------------------------------------------------------------
//  I/O and timers.
void
wsr_redis_process (wsr_redis_t *self, zmq_pollitem_t *items, int count)
{
    assert (self);
    if (self->cluster) {
        wsr_rcluster_process (self->cluster, items, count);
        return;
    }
    s_handle (&self->sub, items, count);
    s_handle (&self->pub, items, count);
    int64_t now = wsr_util_mono_ms ();
    s_conn_t *conns [2] = { &self->sub, &self->pub };
    for (int i = 0; i < 2; i++) {
        s_conn_t *conn = conns [i];
        if (conn->state == S_DOWN && now >= conn->next_attempt)
            s_connect (self, conn);
        else
        if ((conn->state == S_CONNECTING && now - conn->started > S_CONNECT_TIMEOUT)
        ||  (conn->state == S_HELLO && now - conn->started > S_HELLO_TIMEOUT)) {
            zsys_warning ("redis: connect to %s:%d timed out%s", self->host, self->port,
                          conn->state == S_HELLO? " (no answer to AUTH / PING)": "");
            s_reset (conn);
        }
    }
    if (self->pub.state == S_UP) {
        //  Dead only if a PING actually written long ago is still unanswered:
        //  a stall of our own thread (replies wait unread) is not Redis' fault;
        //  nor is a PONG queued behind a long backlog while Redis still sends
        //  (e.g. thousands of SUBSCRIBE confirmations after a restart): taking
        //  that for death would reconnect and subscribe everything again
        int64_t heard = self->pub.last_read > self->sub.last_read
                      ? self->pub.last_read: self->sub.last_read;
        if (self->ping_waiting && now - self->ping_waiting > S_PING_DEAD_MS
        &&  now - heard > S_PING_DEAD_MS) {
            //  Redis stopped answering: start both connections over
            zsys_warning ("redis: %s:%d not answering PING; reconnecting", self->host,
                          self->port);
            self->lost++;
            s_reset (&self->pub);
            s_reset (&self->sub);
        }
        else
        if (now - self->last_ping >= S_PING_EVERY_MS) {
            self->last_ping = now;
            if (!self->ping_waiting)
                self->ping_waiting = now;
            redisAsyncCommand (self->pub.ac, s_on_pong, self, "PING");
        }
    }
}

//  --------------------------------------------------------------------------
//  Generic commands: a small trampoline carries the caller's callback

typedef struct {
    wsr_redis_reply_fn *cb;
    void *arg;
} s_command_t;

static void
s_on_command_reply (redisAsyncContext *ac, void *reply, void *privdata)
{
    (void) ac;
    s_command_t *command = (s_command_t *) privdata;
    command->cb (command->arg, (redisReply *) reply);
    free (command);
}

static void
s_on_cluster_reply (void *arg, const redisReply *reply)
{
    s_command_t *command = (s_command_t *) arg;
    command->cb (command->arg, (redisReply *) reply);
    free (command);
}

//  The key a command is routed by on a cluster (see the header comment).
static const char *
s_cluster_key (int argc, const char **argv, const size_t *argvlen, char *buf, size_t size)
{
    size_t len0 = argvlen? argvlen [0]: strlen (argv [0]);
    bool eval = (len0 == 4 && strncasecmp (argv [0], "EVAL", 4) == 0)
             || (len0 == 7 && strncasecmp (argv [0], "EVALSHA", 7) == 0);
    int at = eval? 3: 1;
    if (eval && (argc < 4 || argv [2][0] == '0'))
        return "";
    if ((len0 == 6 && strncasecmp (argv [0], "SCRIPT", 6) == 0) || argc <= at)
        return "";
    size_t len = argvlen? argvlen [at]: strlen (argv [at]);
    if (len >= size)
        return NULL;
    memcpy (buf, argv [at], len);
    buf [len] = 0;
    return buf;
}

//  --------------------------------------------------------------------------
//  Send a command on the publish connection.
int
wsr_redis_command (wsr_redis_t *self, int argc, const char **argv, const size_t *argvlen,
                   wsr_redis_reply_fn *cb, void *arg)
{
    assert (self && argc > 0 && argv && cb);
    if (self->cluster) {
        char buf [1024];
        const char *key = s_cluster_key (argc, argv, argvlen, buf, sizeof buf);
        if (!key)
            return -1;
        s_command_t *command = (s_command_t *) zmalloc (sizeof (s_command_t));
        command->cb = cb;
        command->arg = arg;
        if (wsr_rcluster_command (self->cluster, key, argc, argv, argvlen, s_on_cluster_reply,
                                  command)) {
            free (command);
            return -1;
        }
        return 0;
    }
    if (self->pub.state != S_UP)
        return -1;
    s_command_t *command = (s_command_t *) zmalloc (sizeof (s_command_t));
    command->cb = cb;
    command->arg = arg;
    if (redisAsyncCommandArgv (self->pub.ac, s_on_command_reply, command, argc, argv,
                               argvlen) != REDIS_OK) {
        free (command);
        return -1;
    }
    return 0;
}

//  --------------------------------------------------------------------------
//  The channel the subscriber connection holds.
void
wsr_redis_set_hold (wsr_redis_t *self, const char *channel)
{
    assert (self && channel && strlen (channel) < S_HOLD_MAX);
    snprintf (self->hold, sizeof self->hold, "%s", channel);
}

//  --------------------------------------------------------------------------
//  Publish connection generation.
uint64_t
wsr_redis_generation (wsr_redis_t *self)
{
    assert (self);
    return self->cluster? 1: self->generation;
}

//  --------------------------------------------------------------------------
//  Sharded Pub/Sub (a cluster).
bool
wsr_redis_sharded (wsr_redis_t *self)
{
    assert (self);
    return self->cluster != NULL;
}

//  --------------------------------------------------------------------------
//  Subscription confirmations.
void
wsr_redis_set_subscribed_fn (wsr_redis_t *self, wsr_redis_subscribed_fn *fn, void *arg)
{
    assert (self);
    self->on_subscribed = fn;
    self->subscribed_arg = arg;
    if (self->cluster)
        wsr_rcluster_set_subscribed_fn (self->cluster, fn, arg);
}

//  --------------------------------------------------------------------------
//  Selftest: against a real redis-server on a free loopback port, restarted
//  mid-test. Skipped (wsr_util_test_skip) if redis-server is not installed.

typedef struct {
    int count;                  //  messages received
    char last [64];             //  last payload
    char channel [64];          //  last channel
} s_sink_t;

static void
s_sink (void *arg, const char *pattern, const char *channel, size_t channel_len,
        const uint8_t *data, size_t size)
{
    (void) pattern;
    s_sink_t *sink = (s_sink_t *) arg;
    sink->count++;
    snprintf (sink->last, sizeof sink->last, "%.*s", (int) size, (const char *) data);
    snprintf (sink->channel, sizeof sink->channel, "%.*s", (int) channel_len, channel);
}

static void
s_run (wsr_redis_t *redis, int ms)
{
    int64_t end = wsr_util_mono_ms () + ms;
    while (wsr_util_mono_ms () < end) {
        zmq_pollitem_t items [4];
        int n = wsr_redis_pollitems (redis, items, 4);
        long timeout = wsr_redis_timeout (redis);
        zmq_poll (items, n, timeout > 20? 20: timeout);
        wsr_redis_process (redis, items, n);
    }
}

//  Run until cond holds or ms pass.
#define S_RUN_UNTIL(redis, cond, ms) do { \
    int64_t end_ = wsr_util_mono_ms () + (ms); \
    while (!(cond) && wsr_util_mono_ms () < end_) s_run (redis, 10); } while (0)

//  Start redis-server on port, with requirepass if password is not NULL.
static pid_t
s_start_redis (int port, const char *password)
{
    char port_text [16];
    snprintf (port_text, sizeof port_text, "%d", port);
    const char *argv [] = { "redis-server", "--port", port_text, "--bind", "127.0.0.1",
                            "--save", "", "--appendonly", "no",
                            password? "--requirepass": NULL, password, NULL };
    return wsr_util_spawn (argv);
}

//  Run one command on a blocking connection (test set-up: ACL SETUSER).
//  Returns true if Redis answered without an error.
static bool
s_admin (int port, const char *password, int argc, const char **argv)
{
    struct timeval timeout = { 2, 0 };
    redisContext *c = redisConnectWithTimeout ("127.0.0.1", port, timeout);
    bool ok = c && !c->err;
    if (ok && password) {
        redisReply *reply = (redisReply *) redisCommand (c, "AUTH %s", password);
        ok = reply && reply->type != REDIS_REPLY_ERROR;
        freeReplyObject (reply);
    }
    if (ok) {
        redisReply *reply = (redisReply *) redisCommandArgv (c, argc, argv, NULL);
        ok = reply && reply->type != REDIS_REPLY_ERROR;
        freeReplyObject (reply);
    }
    redisFree (c);
    return ok;
}

//  Wait (bounded) until redis-server answers a connection.
static void
s_wait_redis (int port)
{
    int64_t deadline = wsr_util_mono_ms () + 5000;
    struct timeval timeout = { 0, 200000 };
    while (wsr_util_mono_ms () < deadline) {
        redisContext *c = redisConnectWithTimeout ("127.0.0.1", port, timeout);
        bool up = c && !c->err;
        redisFree (c);
        if (up)
            return;
        zclock_sleep (20);
    }
    assert (false);
}

void
wsr_redis_test (bool verbose)
{
    (void) verbose;
    //  URLs: percent-decoded credentials, defaults, strict refusals
    wsr_redis_t *parsed = wsr_redis_new ("redis://alice:p%40ss%20w@127.0.0.1:6380/3", s_sink,
                                         NULL);
    assert (parsed && streq (parsed->user, "alice") && streq (parsed->password, "p@ss w"));
    assert (streq (parsed->host, "127.0.0.1") && parsed->port == 6380 && parsed->db == 3);
    wsr_redis_destroy (&parsed);
    parsed = wsr_redis_new ("redis://:only-pw@redis.local", s_sink, NULL);
    assert (parsed && parsed->user == NULL && streq (parsed->password, "only-pw"));
    assert (parsed->port == 6379 && parsed->db == 0);
    wsr_redis_destroy (&parsed);
    parsed = wsr_redis_new ("redis://[::1]:7000/", s_sink, NULL);
    assert (parsed && streq (parsed->host, "::1") && parsed->port == 7000 && !parsed->password);
    wsr_redis_destroy (&parsed);
    const char *bad [] = {
        "http://x", "redis://", "rediss://:pw@host", "redis://pw@host", "redis://user:@host",
        "redis://:@host", "redis://host/x", "redis://host/1234567", "redis://host:99999",
        "redis://:pw@", "redis://host/0?timeout=1", "redis://:p%zz@host", NULL
    };
    for (int i = 0; bad [i]; i++)
        assert (wsr_redis_new (bad [i], s_sink, NULL) == NULL);

    //  A test whose server is missing is skipped, never passed (ctest's
    //  SKIP_RETURN_CODE 77)
    if (system ("command -v redis-server >/dev/null 2>&1") != 0) {
        wsr_util_test_skip ("redis-server not installed");
        return;
    }
    //  Plain Redis: the hello is a PING
    int port = wsr_util_free_port ();
    pid_t server = s_start_redis (port, NULL);
    s_wait_redis (port);
    char url [128];
    snprintf (url, sizeof url, "redis://127.0.0.1:%d/1", port);
    s_sink_t sink = { 0 };
    wsr_redis_t *redis = wsr_redis_new (url, s_sink, &sink);
    wsr_redis_subscribe (redis, "ws:plain");
    S_RUN_UNTIL (redis, sink.count > 0
                 || (wsr_redis_publish (redis, "ws:plain", (const uint8_t *) "p", 1), false),
                 5000);
    assert (sink.count > 0 && streq (sink.channel, "ws:plain"));
    assert (wsr_redis_take_refusals (redis) == 0);
    //  Churn: unsubscribed and wanted again before Redis answered the
    //  UNSUBSCRIBE; hiredis would drop the channel's callback with that
    //  answer, and every message after: the link subscribes again only then
    for (int round = 0; round < 3; round++) {
        wsr_redis_unsubscribe (redis, "ws:plain");
        wsr_redis_subscribe (redis, "ws:plain");
    }
    int seen = sink.count;
    S_RUN_UNTIL (redis, sink.count > seen
                 || (wsr_redis_publish (redis, "ws:plain", (const uint8_t *) "q", 1), false),
                 3000);
    assert (sink.count > seen);
    //  ... and it stays: messages keep arriving after the churn settled
    seen = sink.count;
    int64_t settle = wsr_util_mono_ms () + 300;
    S_RUN_UNTIL (redis, wsr_util_mono_ms () > settle, 1000);
    seen = sink.count;
    wsr_redis_publish (redis, "ws:plain", (const uint8_t *) "r", 1);
    S_RUN_UNTIL (redis, sink.count > seen, 2000);
    assert (sink.count > seen);
    wsr_redis_destroy (&redis);
    wsr_util_reap (server);

    //  From here on Redis wants a password (requirepass): every connection,
    //  and every reconnect after the restart below, AUTHs first
    const char *password = "p@ss word";
    port = wsr_util_free_port ();
    server = s_start_redis (port, password);
    s_wait_redis (port);
    snprintf (url, sizeof url, "redis://:p%%40ss%%20word@127.0.0.1:%d/0", port);
    memset (&sink, 0, sizeof sink);
    redis = wsr_redis_new (url, s_sink, &sink);
    assert (redis);
    wsr_redis_subscribe (redis, "ws:u1");
    wsr_redis_subscribe (redis, "ws:u1");           //  idempotent
    wsr_redis_psubscribe (redis, "ws:channel:*");
    assert (wsr_redis_wanted (redis) == 2);
    S_RUN_UNTIL (redis, wsr_redis_connected (redis), 5000);
    assert (wsr_redis_connected (redis));
    //  Our own publish comes back through the subscription (retry until the
    //  SUBSCRIBE has been processed)
    S_RUN_UNTIL (redis, sink.count > 0
                 || (wsr_redis_publish (redis, "ws:u1", (const uint8_t *) "m1", 2), false), 3000);
    assert (sink.count > 0 && streq (sink.last, "m1") && streq (sink.channel, "ws:u1"));
    int before = sink.count;
    wsr_redis_publish (redis, "ws:channel:room", (const uint8_t *) "c1", 2);
    S_RUN_UNTIL (redis, sink.count > before, 2000);
    assert (streq (sink.last, "c1") && streq (sink.channel, "ws:channel:room"));
    //  Unsubscribed channel: nothing arrives
    wsr_redis_unsubscribe (redis, "ws:u1");
    s_run (redis, 100);
    before = sink.count;
    wsr_redis_publish (redis, "ws:u1", (const uint8_t *) "gone", 4);
    s_run (redis, 200);
    assert (sink.count == before);

    //  Redis restarted: the link reconnects, AUTHs and subscribes again by itself
    wsr_redis_subscribe (redis, "ws:u2");
    wsr_util_reap (server);
    S_RUN_UNTIL (redis, !wsr_redis_connected (redis), 3000);
    assert (!wsr_redis_connected (redis));
    assert (wsr_redis_publish (redis, "ws:u2", (const uint8_t *) "lost", 4) == -1);
    server = s_start_redis (port, password);
    int64_t back = wsr_util_mono_ms ();
    S_RUN_UNTIL (redis, wsr_redis_connected (redis), 5000);
    assert (wsr_redis_connected (redis));
    assert (wsr_redis_take_reconnects (redis) >= 2);    //  both connections were lost
    assert (wsr_redis_take_reconnects (redis) == 0);
    before = sink.count;
    S_RUN_UNTIL (redis, sink.count > before
                 || (wsr_redis_publish (redis, "ws:u2", (const uint8_t *) "again", 5), false),
                 3000);
    assert (sink.count > before && streq (sink.last, "again"));
    if (verbose)
        printf ("resubscribed %" PRId64 " ms after restart\n", wsr_util_mono_ms () - back);
    assert (wsr_redis_take_refusals (redis) == 0);
    wsr_redis_destroy (&redis);

    //  A wrong password and no password: never ready, refusals counted, and
    //  the link keeps trying (more refusals after the backoff)
    const char *wrong_urls [2] = { "redis://:wrong@127.0.0.1:%d", "redis://127.0.0.1:%d" };
    for (int i = 0; i < 2; i++) {
        snprintf (url, sizeof url, wrong_urls [i], port);
        wsr_redis_t *wrong = wsr_redis_new (url, s_sink, &sink);
        assert (wrong);
        wsr_redis_subscribe (wrong, "ws:u1");
        uint64_t refused = 0;
        int64_t deadline = wsr_util_mono_ms () + 5000;
        while (refused < 3 && wsr_util_mono_ms () < deadline) {
            s_run (wrong, 50);
            assert (!wsr_redis_connected (wrong));
            refused += wsr_redis_take_refusals (wrong);
        }
        assert (refused >= 3);
        assert (wsr_redis_publish (wrong, "ws:u1", (const uint8_t *) "x", 1) == -1);
        wsr_redis_destroy (&wrong);
    }

    //  A Redis 6 ACL user limited to ws:* channels: AUTH user password
    const char *acl [] = { "ACL", "SETUSER", "wsr", "on", ">s3cr:et/", "resetchannels",
                           "&ws:*", "-@all", "+@pubsub", "+ping", "+select", NULL };
    assert (s_admin (port, password, 11, acl));
    snprintf (url, sizeof url, "redis://wsr:s3cr%%3Aet%%2F@127.0.0.1:%d", port);
    //  (the hold channel must be one the ACL allows: see wsr_redis_set_hold)
    memset (&sink, 0, sizeof sink);
    redis = wsr_redis_new (url, s_sink, &sink);
    assert (redis);
    wsr_redis_set_hold (redis, "ws:.hold");
    wsr_redis_subscribe (redis, "ws:acl");
    S_RUN_UNTIL (redis, sink.count > 0
                 || (wsr_redis_publish (redis, "ws:acl", (const uint8_t *) "a1", 2), false),
                 5000);
    assert (sink.count > 0 && streq (sink.last, "a1") && streq (sink.channel, "ws:acl"));
    assert (wsr_redis_take_refusals (redis) == 0);
    //  Outside its channels Redis refuses (NOPERM): counted, the link stays up
    assert (wsr_redis_publish (redis, "other:x", (const uint8_t *) "n", 1) == 0);
    uint64_t refused = 0;
    S_RUN_UNTIL (redis, (refused += wsr_redis_take_refusals (redis)) > 0, 2000);
    assert (refused == 1 && wsr_redis_connected (redis));
    wsr_redis_destroy (&redis);
    wsr_util_reap (server);
}
