//  wsr_history — a topic's history on Redis: append through publish.lua, read since an offset
//
//  A topic's history lives in two Redis keys hash-tagged with its channel C
//  (so that they share C's cluster slot): the stream {C}:s (entry id
//  "OFFSET-0", field d = payload) and the hash {C}:m (e = epoch, o = last
//  offset). scripts/redis/publish.lua appends and publishes atomically;
//  scripts/redis/read.lua reads the epoch, last offset and the entries after
//  an offset atomically. Both are compiled in from those files (CMake
//  generates wsr_scripts.h with their bytes and SHA1).
//
//  Requests go through the Redis link's publish connection (wsr_redis_command):
//  EVALSHA, with SCRIPT LOAD of both scripts sent first whenever the link
//  has connected again since the last load, so a restarted Redis never
//  answers NOSCRIPT to a command we sent after reconnecting. If it does
//  anyway (SCRIPT FLUSH by an operator), that request is sent again as EVAL
//  with the script's body. Appends of one store are executed in the order
//  they were made, except those in flight across such a flush.
//
//  The published message is framed so that the bridge can tell it from a
//  backend's plain PUBLISH (which keeps working, without offset):
//
//      0xFF 'W' 'S' 'R' 0x01  OFFSET ':' EPOCH ':'  payload
//
//  OFFSET is 1..20 decimal digits without leading zero, EPOCH 1..40 bytes
//  of [0-9A-Za-z-]. 0xFF never occurs in UTF-8, so no text payload is ever
//  taken for a frame; a binary payload published plainly that starts with
//  exactly these bytes and a well-formed header would be.

#include "wsr_classes.h"
#include <hiredis/hiredis.h>
#include "wsr_scripts.h"

#define S_MAGIC         "\xffWSR\x01"
#define S_MAGIC_LEN     5
#define S_NONCE_LEN     12          //  base62 characters of epoch nonce

typedef enum { S_APPEND, S_READ } s_kind_t;

typedef struct _s_request_t s_request_t;
struct _s_request_t {
    wsr_history_t *owner;           //  NULL once the store is gone
    s_request_t *prev, *next;       //  in the owner's in-flight list
    s_kind_t kind;
    bool retried;                   //  sent again as EVAL after NOSCRIPT
    void *cb;                       //  wsr_history_append_fn or _read_fn, or NULL
    void *arg;
    char *channel;                  //  kept for a retry
    uint8_t *data;                  //  append: payload copy for a retry
    size_t size;
    uint64_t since;                 //  read: entries after this offset
    size_t max;                     //  read: at most this many
    bool any_epoch;                 //  read: no epoch asked
    char epoch [WSR_HISTORY_EPOCH_MAX + 1];     //  read: the epoch asked
};

struct _wsr_history_t {
    wsr_redis_t *redis;             //  the link (borrowed)
    char size_text [24];            //  ARGV of publish.lua: history size
    char ttl_text [24];             //  TTL seconds
    char meta_ttl_text [24];        //  TTL of epoch and offset
    const char *command;            //  PUBLISH or SPUBLISH
    char nonce [S_NONCE_LEN + 1];   //  this store's epoch nonce (random)
    uint64_t loaded;                //  link generation the scripts were loaded on
    s_request_t *inflight;          //  requests waiting for replies (list head)
    size_t inflight_count;          //  bounded by WSR_HISTORY_MAX_INFLIGHT
    uint64_t noscript;              //  NOSCRIPT replies seen (for tests and logs)
};

//  --------------------------------------------------------------------------
//  Frame header.
int
wsr_history_frame_header (uint64_t offset, const char *epoch, uint8_t *out, size_t size)
{
    assert (epoch && out);
    size_t epoch_len = strlen (epoch);
    if (offset == 0 || epoch_len == 0 || epoch_len > WSR_HISTORY_EPOCH_MAX
    ||  strspn (epoch, "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-")
        != epoch_len)
        return -1;
    char digits [24];
    int digits_len = snprintf (digits, sizeof digits, "%" PRIu64, offset);
    size_t len = S_MAGIC_LEN + (size_t) digits_len + 1 + epoch_len + 1;
    if (len > size)
        return -1;
    uint8_t *p = out;
    memcpy (p, S_MAGIC, S_MAGIC_LEN);
    p += S_MAGIC_LEN;
    memcpy (p, digits, (size_t) digits_len);
    p += digits_len;
    *p++ = ':';
    memcpy (p, epoch, epoch_len);
    p += epoch_len;
    *p++ = ':';
    return (int) len;
}

static bool
s_epoch_char (uint8_t c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
        || c == '-';
}

//  --------------------------------------------------------------------------
//  Frame decoder.
int
wsr_history_frame_decode (const uint8_t *data, size_t size, uint64_t *offset,
                          char *epoch, const uint8_t **payload, size_t *payload_size)
{
    assert (offset && epoch && payload && payload_size);
    if (!data || size < S_MAGIC_LEN + 4 || memcmp (data, S_MAGIC, S_MAGIC_LEN))
        return -1;
    size_t i = S_MAGIC_LEN;
    uint64_t value = 0;
    size_t digits = 0;
    while (i < size && data [i] >= '0' && data [i] <= '9') {
        unsigned d = (unsigned) (data [i] - '0');
        if ((digits == 0 && d == 0) || value > (UINT64_MAX - d) / 10)
            return -1;                      //  leading zero or overflow
        value = value * 10 + d;
        digits++;
        i++;
    }
    if (digits == 0 || i >= size || data [i] != ':')
        return -1;
    size_t epoch_start = ++i;
    while (i < size && s_epoch_char (data [i]) && i - epoch_start < WSR_HISTORY_EPOCH_MAX)
        i++;
    size_t epoch_len = i - epoch_start;
    if (epoch_len == 0 || i >= size || data [i] != ':')
        return -1;
    memcpy (epoch, data + epoch_start, epoch_len);
    epoch [epoch_len] = 0;
    *offset = value;
    *payload = data + i + 1;
    *payload_size = size - i - 1;
    return 0;
}

//  --------------------------------------------------------------------------
//  Create a store.
wsr_history_t *
wsr_history_new (wsr_redis_t *redis, size_t size, int ttl_s, bool sharded)
{
    assert (redis);
    if (size < 1 || size > 1000000 || ttl_s < 1 || ttl_s > 2592000)
        return NULL;
    wsr_history_t *self = (wsr_history_t *) zmalloc (sizeof (wsr_history_t));
    self->redis = redis;
    snprintf (self->size_text, sizeof self->size_text, "%zu", size);
    snprintf (self->ttl_text, sizeof self->ttl_text, "%d", ttl_s);
    snprintf (self->meta_ttl_text, sizeof self->meta_ttl_text, "%d",
              ttl_s > WSR_HISTORY_META_TTL_S? ttl_s: WSR_HISTORY_META_TTL_S);
    self->command = sharded? "SPUBLISH": "PUBLISH";
    //  Epochs are TIME in µs plus this nonce: unique even if Redis' clock
    //  goes back or two bridges make one at the same microsecond
    static const char alphabet [] =
        "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    for (int i = 0; i < S_NONCE_LEN; i++)
        self->nonce [i] = alphabet [randombytes_uniform (sizeof alphabet - 1)];
    self->loaded = UINT64_MAX;
    return self;
}

//  --------------------------------------------------------------------------
//  Destroy the store: what is in flight stays with the link, orphaned.
void
wsr_history_destroy (wsr_history_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        wsr_history_t *self = *self_p;
        for (s_request_t *request = self->inflight; request; request = request->next)
            request->owner = NULL;
        free (self);
        *self_p = NULL;
    }
}

static void
s_request_free (s_request_t *request)
{
    wsr_history_t *self = request->owner;
    if (self) {
        if (request->prev)
            request->prev->next = request->next;
        else
            self->inflight = request->next;
        if (request->next)
            request->next->prev = request->prev;
        self->inflight_count--;
    }
    free (request->channel);
    free (request->data);
    free (request);
}

static void s_on_reply (void *arg, redisReply *reply);

//  Send a request's command: EVALSHA, or EVAL with the body after NOSCRIPT.
static int
s_send (wsr_history_t *self, s_request_t *request)
{
    const char *argv [10];
    size_t lens [10];
    int argc = 0;
    bool eval = request->retried;
    bool append = request->kind == S_APPEND;
    const char *body = append? wsr_publish_lua: wsr_read_lua;
    argv [argc] = eval? "EVAL": "EVALSHA";
    lens [argc] = strlen (argv [argc]);
    argc++;
    argv [argc] = eval? body: (append? WSR_PUBLISH_LUA_SHA: WSR_READ_LUA_SHA);
    lens [argc] = eval? (append? sizeof wsr_publish_lua: sizeof wsr_read_lua) - 1: 40;
    argc++;
    argv [argc] = "1";
    lens [argc++] = 1;
    argv [argc] = request->channel;
    lens [argc] = strlen (request->channel);
    argc++;
    char since [24], max [24];
    if (append) {
        argv [argc] = (const char *) request->data;
        lens [argc++] = request->size;
        argv [argc] = self->size_text;
        lens [argc] = strlen (self->size_text);
        argc++;
        argv [argc] = self->ttl_text;
        lens [argc] = strlen (self->ttl_text);
        argc++;
        argv [argc] = self->command;
        lens [argc] = strlen (self->command);
        argc++;
        argv [argc] = self->nonce;
        lens [argc++] = S_NONCE_LEN;
        argv [argc] = self->meta_ttl_text;
        lens [argc] = strlen (self->meta_ttl_text);
        argc++;
    }
    else {
        argv [argc] = since;
        lens [argc++] = (size_t) snprintf (since, sizeof since, "%" PRIu64, request->since);
        argv [argc] = max;
        lens [argc++] = (size_t) snprintf (max, sizeof max, "%zu", request->max);
        argv [argc] = self->meta_ttl_text;
        lens [argc] = strlen (self->meta_ttl_text);
        argc++;
        argv [argc] = self->nonce;
        lens [argc++] = S_NONCE_LEN;
    }
    return wsr_redis_command (self->redis, argc, argv, lens, s_on_reply, request);
}

static void
s_on_loaded (void *arg, redisReply *reply)
{
    const char *sha = (const char *) arg;
    if (reply && (reply->type != REDIS_REPLY_STRING || strcmp (reply->str, sha)))
        zsys_error ("history: SCRIPT LOAD did not give %s: %s", sha,
                    reply->type == REDIS_REPLY_ERROR? reply->str: "unexpected reply");
}

//  Load both scripts if the link has a new connection since we last did.
static void
s_load (wsr_history_t *self)
{
    uint64_t generation = wsr_redis_generation (self->redis);
    if (generation == self->loaded)
        return;
    const char *argv [3] = { "SCRIPT", "LOAD", wsr_publish_lua };
    size_t lens [3] = { 6, 4, sizeof wsr_publish_lua - 1 };
    if (wsr_redis_command (self->redis, 3, argv, lens, s_on_loaded,
                           (void *) WSR_PUBLISH_LUA_SHA))
        return;
    argv [2] = wsr_read_lua;
    lens [2] = sizeof wsr_read_lua - 1;
    if (wsr_redis_command (self->redis, 3, argv, lens, s_on_loaded, (void *) WSR_READ_LUA_SHA))
        return;
    self->loaded = generation;
}

static s_request_t *
s_request_new (wsr_history_t *self, s_kind_t kind, const char *channel, void *cb, void *arg)
{
    s_request_t *request = (s_request_t *) zmalloc (sizeof (s_request_t));
    request->owner = self;
    request->kind = kind;
    request->cb = cb;
    request->arg = arg;
    request->channel = strdup (channel);
    request->next = self->inflight;
    if (self->inflight)
        self->inflight->prev = request;
    self->inflight = request;
    self->inflight_count++;
    return request;
}

//  Start a request; on failure it is freed and no callback is made.
static int
s_start (wsr_history_t *self, s_request_t *request)
{
    s_load (self);
    if (s_send (self, request)) {
        s_request_free (request);
        return -1;
    }
    return 0;
}

//  --------------------------------------------------------------------------
//  Append and publish.
int
wsr_history_append (wsr_history_t *self, const char *channel, const uint8_t *data,
                    size_t size, wsr_history_append_fn *cb, void *arg)
{
    assert (self && channel && (data || size == 0));
    if (self->inflight_count >= WSR_HISTORY_MAX_INFLIGHT || !wsr_redis_connected (self->redis))
        return -1;
    s_request_t *request = s_request_new (self, S_APPEND, channel, (void *) cb, arg);
    request->data = (uint8_t *) malloc (size? size: 1);
    assert (request->data);
    if (size)
        memcpy (request->data, data, size);
    request->size = size;
    return s_start (self, request);
}

//  --------------------------------------------------------------------------
//  Read since an offset.
int
wsr_history_read (wsr_history_t *self, const char *channel, uint64_t since,
                  const char *epoch, size_t max, wsr_history_read_fn *cb, void *arg)
{
    assert (self && channel && cb);
    assert (max <= WSR_HISTORY_MAX_READ);
    if (epoch && strlen (epoch) > WSR_HISTORY_EPOCH_MAX)
        epoch = "-";                        //  cannot be an epoch: never complete
    if (self->inflight_count >= WSR_HISTORY_MAX_INFLIGHT || !wsr_redis_connected (self->redis))
        return -1;
    s_request_t *request = s_request_new (self, S_READ, channel, (void *) cb, arg);
    request->since = since;
    request->max = max;
    request->any_epoch = epoch == NULL;
    if (epoch)
        snprintf (request->epoch, sizeof request->epoch, "%s", epoch);
    return s_start (self, request);
}

//  --------------------------------------------------------------------------
//  In flight.
size_t
wsr_history_inflight (wsr_history_t *self)
{
    assert (self);
    return self->inflight_count;
}

static void
s_append_done (s_request_t *request, redisReply *reply)
{
    wsr_history_append_fn *cb = (wsr_history_append_fn *) request->cb;
    if (!cb)
        return;
    if (reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 3
    &&  reply->element [0]->type == REDIS_REPLY_INTEGER && reply->element [0]->integer > 0
    &&  reply->element [1]->type == REDIS_REPLY_STRING)
        cb (request->arg, 0, (uint64_t) reply->element [0]->integer, reply->element [1]->str);
    else
        cb (request->arg, -1, 0, "");
}

//  Parse read.lua's reply and judge completeness.
static void
s_read_done (s_request_t *request, redisReply *reply)
{
    wsr_history_read_fn *cb = (wsr_history_read_fn *) request->cb;
    wsr_history_result_t result = { .status = -1, .epoch = "" };
    wsr_history_entry_t *entries = NULL;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements < 2
    ||  reply->elements % 2
    ||  reply->element [0]->type != REDIS_REPLY_STRING
    ||  reply->element [0]->len > WSR_HISTORY_EPOCH_MAX
    ||  reply->element [1]->type != REDIS_REPLY_INTEGER || reply->element [1]->integer < 0) {
        if (reply && reply->type == REDIS_REPLY_ERROR)
            zsys_warning ("history: read of %s: %s", request->channel, reply->str);
        cb (request->arg, &result);
        return;
    }
    result.status = 0;
    result.epoch = reply->element [0]->str;
    result.last = (uint64_t) reply->element [1]->integer;
    size_t count = (reply->elements - 2) / 2;
    if (count > request->max)
        count = 0;                          //  not what we asked for: report nothing
    if (count) {
        entries = (wsr_history_entry_t *) malloc (count * sizeof (wsr_history_entry_t));
        assert (entries);
    }
    uint64_t previous = request->since;
    bool ordered = true;
    for (size_t i = 0; i < count; i++) {
        redisReply *offset = reply->element [2 + 2 * i];
        redisReply *data = reply->element [3 + 2 * i];
        if (offset->type != REDIS_REPLY_INTEGER || data->type != REDIS_REPLY_STRING
        ||  offset->integer <= 0 || (uint64_t) offset->integer <= previous
        ||  (uint64_t) offset->integer > result.last) {
            ordered = false;
            count = i;
            break;
        }
        previous = (uint64_t) offset->integer;
        entries [i] = (wsr_history_entry_t) {
            previous, (const uint8_t *) data->str, data->len, 0 };
    }
    result.entries = entries;
    result.count = count;
    //  Offsets are consecutive in an epoch, so the range is complete when
    //  there are exactly last - since entries after since
    bool same_epoch = request->any_epoch || streq (request->epoch, result.epoch);
    result.complete = ordered && same_epoch && request->since <= result.last
                   && count == result.last - request->since;
    cb (request->arg, &result);
    free (entries);
}

static void
s_on_reply (void *arg, redisReply *reply)
{
    s_request_t *request = (s_request_t *) arg;
    wsr_history_t *self = request->owner;
    if (self && reply && reply->type == REDIS_REPLY_ERROR && !request->retried
    &&  strncmp (reply->str, "NOSCRIPT", 8) == 0) {
        //  Scripts flushed under us: this one goes again with its body
        self->noscript++;
        self->loaded = UINT64_MAX;
        request->retried = true;
        if (s_send (self, request) == 0)
            return;
        reply = NULL;
    }
    if (self) {
        if (request->kind == S_APPEND)
            s_append_done (request, reply);
        else
            s_read_done (request, reply);
    }
    s_request_free (request);
}

//  --------------------------------------------------------------------------
//  Selftest

static void
s_test_frames (void)
{
    uint8_t header [WSR_HISTORY_HEADER_MAX];
    char epoch [WSR_HISTORY_EPOCH_MAX + 1];
    uint64_t offset;
    const uint8_t *payload;
    size_t payload_size;
    int len = wsr_history_frame_header (17, "6b14390-abc", header, sizeof header);
    assert (len == 5 + 2 + 1 + 11 + 1);
    assert (memcmp (header, "\xffWSR\x01" "17:6b14390-abc:", (size_t) len) == 0);
    uint8_t frame [128];
    memcpy (frame, header, (size_t) len);
    memcpy (frame + len, "hi", 2);
    assert (wsr_history_frame_decode (frame, (size_t) len + 2, &offset, epoch, &payload,
                                      &payload_size) == 0);
    assert (offset == 17 && streq (epoch, "6b14390-abc"));
    assert (payload_size == 2 && memcmp (payload, "hi", 2) == 0);
    //  Empty payload
    assert (wsr_history_frame_decode (frame, (size_t) len, &offset, epoch, &payload,
                                      &payload_size) == 0);
    assert (payload_size == 0);
    //  Largest offset and epoch
    char long_epoch [WSR_HISTORY_EPOCH_MAX + 2];
    memset (long_epoch, 'z', sizeof long_epoch);
    long_epoch [WSR_HISTORY_EPOCH_MAX] = 0;
    len = wsr_history_frame_header (UINT64_MAX, long_epoch, header, sizeof header);
    assert (len == WSR_HISTORY_HEADER_MAX);
    assert (wsr_history_frame_decode (header, (size_t) len, &offset, epoch, &payload,
                                      &payload_size) == 0);
    assert (offset == UINT64_MAX && streq (epoch, long_epoch) && payload_size == 0);
    long_epoch [WSR_HISTORY_EPOCH_MAX] = 'z';
    long_epoch [WSR_HISTORY_EPOCH_MAX + 1] = 0;
    assert (wsr_history_frame_header (1, long_epoch, header, sizeof header) == -1);
    assert (wsr_history_frame_header (0, "e", header, sizeof header) == -1);
    assert (wsr_history_frame_header (1, "", header, sizeof header) == -1);
    assert (wsr_history_frame_header (1, "a:b", header, sizeof header) == -1);
    assert (wsr_history_frame_header (1, "e", header, 8) == -1);
    //  Plain messages, and frames whose header is broken, are plain
    const char *plain [] = {
        "hello", "", "\xffWSR", "\xffWSR\x02" "1:e:x", "\xfeWSR\x01" "1:e:x",
        "\xffWSR\x01" ":e:x", "\xffWSR\x01" "01:e:x", "\xffWSR\x01" "1::x",
        "\xffWSR\x01" "1:e", "\xffWSR\x01" "1e:x", "\xffWSR\x01" "1:e!:x",
        "\xffWSR\x01" "18446744073709551616:e:x",
        "\xffWSR\x01" "1:zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz:x",     //  41-byte epoch
        NULL };
    for (int i = 0; plain [i]; i++)
        assert (wsr_history_frame_decode ((const uint8_t *) plain [i], strlen (plain [i]),
                                          &offset, epoch, &payload, &payload_size) == -1);
    //  No valid UTF-8 text is ever a frame: its first byte is never 0xFF
    assert (!wsr_util_utf8_valid ((const uint8_t *) "\xff", 1));
}

//  Test support: a redis-server on a free port; exit 77 (skip) without one

static pid_t
s_redis_start (int port)
{
    char port_text [16];
    snprintf (port_text, sizeof port_text, "%d", port);
    const char *argv [] = { "redis-server", "--port", port_text, "--bind", "127.0.0.1",
                            "--save", "", "--appendonly", "no", NULL };
    return wsr_util_spawn (argv);
}

//  A synchronous connection, retried until the server is up (5 s at most).
static redisContext *
s_sync (int port)
{
    int64_t deadline = wsr_util_mono_ms () + 5000;
    while (true) {
        redisContext *c = redisConnectWithTimeout ("127.0.0.1", port,
                                                   (struct timeval) { 1, 0 });
        if (c && !c->err) {
            redisSetTimeout (c, (struct timeval) { 5, 0 });
            return c;
        }
        if (c)
            redisFree (c);
        assert (wsr_util_mono_ms () < deadline);
        zclock_sleep (20);
    }
}

static redisReply *
s_cmd (redisContext *c, int argc, const char **argv, const size_t *lens)
{
    redisReply *reply = (redisReply *) redisCommandArgv (c, argc, argv, lens);
    assert (reply);
    return reply;
}

//  EVAL publish.lua as redis-cli --eval does. Returns the reply.
static redisReply *
s_publish (redisContext *c, const char *channel, const char *payload, const char *size,
           const char *ttl, const char *command)
{
    const char *argv [] = { "EVAL", wsr_publish_lua, "1", channel, payload, size, ttl,
                            command };
    return s_cmd (c, 8, argv, NULL);
}

static long long
s_integer (redisContext *c, const char *a, const char *b)
{
    const char *argv [] = { a, b };
    redisReply *reply = s_cmd (c, b? 2: 1, argv, NULL);
    assert (reply->type == REDIS_REPLY_INTEGER);
    long long value = reply->integer;
    freeReplyObject (reply);
    return value;
}

//  The Lua script on its own, through synchronous connections.
static void
s_test_script (int port)
{
    redisContext *c = s_sync (port);
    redisContext *sub = s_sync (port);
    redisReply *reply = (redisReply *) redisCommand (sub, "SUBSCRIBE ws:t1");
    assert (reply && reply->type == REDIS_REPLY_ARRAY);
    freeReplyObject (reply);

    //  Offsets 1..N in one epoch, each published framed
    char epoch [WSR_HISTORY_EPOCH_MAX + 1] = "";
    for (int i = 1; i <= 30; i++) {
        char payload [16];
        snprintf (payload, sizeof payload, "m%d", i);
        reply = s_publish (c, "ws:t1", payload, "10", "60", "");
        assert (reply->type == REDIS_REPLY_ARRAY && reply->elements == 3);
        assert (reply->element [0]->integer == i);
        if (i == 1)
            snprintf (epoch, sizeof epoch, "%s", reply->element [1]->str);
        assert (streq (reply->element [1]->str, epoch));
        assert (reply->element [2]->integer == 1);          //  one subscriber
        freeReplyObject (reply);
        //  The subscriber gets exactly what wsr_history_frame_header makes
        redisReply *message;
        assert (redisGetReply (sub, (void **) &message) == REDIS_OK);
        assert (message->type == REDIS_REPLY_ARRAY && message->elements == 3);
        redisReply *data = message->element [2];
        uint8_t header [WSR_HISTORY_HEADER_MAX];
        int len = wsr_history_frame_header ((uint64_t) i, epoch, header, sizeof header);
        assert (len > 0 && data->len == (size_t) len + strlen (payload));
        assert (memcmp (data->str, header, (size_t) len) == 0);
        uint64_t offset;
        char got_epoch [WSR_HISTORY_EPOCH_MAX + 1];
        const uint8_t *got;
        size_t got_size;
        assert (wsr_history_frame_decode ((const uint8_t *) data->str, data->len, &offset,
                                          got_epoch, &got, &got_size) == 0);
        assert (offset == (uint64_t) i && streq (got_epoch, epoch));
        assert (got_size == strlen (payload) && memcmp (got, payload, got_size) == 0);
        freeReplyObject (message);
    }
    //  Epoch: TIME in hex, then the nonce if one was given
    assert (strlen (epoch) >= 13 && !strchr (epoch, '-'));
    //  TTL on every key of the topic, nothing else created; epoch and offset
    //  outlive the entries (a day at least)
    assert (s_integer (c, "TTL", "{ws:t1}:s") > 0 && s_integer (c, "TTL", "{ws:t1}:s") <= 60);
    assert (s_integer (c, "TTL", "{ws:t1}:m") > 86000);
    assert (s_integer (c, "TTL", "{ws:t1}:m") <= WSR_HISTORY_META_TTL_S);
    assert (s_integer (c, "DBSIZE", NULL) == 2);
    //  MAXLEN ~ 10 keeps at least 10; with 30 entries nothing could go yet
    //  (a stream node holds 100): push on to see trimming
    for (int i = 31; i <= 350; i++)
        freeReplyObject (s_publish (c, "ws:t1", "x", "10", "60", ""));
    long long length = s_integer (c, "XLEN", "{ws:t1}:s");
    assert (length >= 10 && length <= 10 + 100);
    reply = (redisReply *) redisCommand (c, "XRANGE {ws:t1}:s - + COUNT 1");
    assert (reply->type == REDIS_REPLY_ARRAY && reply->elements == 1);
    assert (atoll (reply->element [0]->element [0]->str) == 350 - length + 1);
    freeReplyObject (reply);
    for (int i = 31; i <= 350; i++) {
        redisReply *message;
        assert (redisGetReply (sub, (void **) &message) == REDIS_OK);
        freeReplyObject (message);
    }

    //  A plain PUBLISH stays plain
    reply = (redisReply *) redisCommand (c, "PUBLISH ws:t1 %b", "\xffWSR", (size_t) 4);
    freeReplyObject (reply);
    redisReply *message;
    assert (redisGetReply (sub, (void **) &message) == REDIS_OK);
    assert (message->element [2]->len == 4);
    uint64_t offset;
    char got_epoch [WSR_HISTORY_EPOCH_MAX + 1];
    const uint8_t *got;
    size_t got_size;
    assert (wsr_history_frame_decode ((const uint8_t *) message->element [2]->str, 4, &offset,
                                      got_epoch, &got, &got_size) == -1);
    freeReplyObject (message);

    //  The entries expired (forced here), not the epoch: offsets go on
    freeReplyObject (redisCommand (c, "PEXPIRE {ws:t1}:s 1"));
    int64_t deadline = wsr_util_mono_ms () + 3000;
    while (s_integer (c, "EXISTS", "{ws:t1}:s") && wsr_util_mono_ms () < deadline)
        zclock_sleep (2);
    reply = s_publish (c, "ws:t1", "on", "10", "60", "");
    assert (reply->element [0]->integer == 351 && streq (reply->element [1]->str, epoch));
    freeReplyObject (reply);
    assert (s_integer (c, "XLEN", "{ws:t1}:s") == 1);
    assert (redisGetReply (sub, (void **) &message) == REDIS_OK);
    freeReplyObject (message);
    //  An explicit TTL for epoch and offset
    const char *meta_args [] = { "EVAL", wsr_publish_lua, "1", "ws:t1", "m", "", "", "", "",
                                 "500" };
    freeReplyObject (s_cmd (c, 10, meta_args, NULL));
    assert (s_integer (c, "TTL", "{ws:t1}:m") <= 500);
    assert (redisGetReply (sub, (void **) &message) == REDIS_OK);
    freeReplyObject (message);

    //  Keys expired (forced here): a new epoch, offsets from 1 again
    freeReplyObject (redisCommand (c, "PEXPIRE {ws:t1}:s 1"));
    freeReplyObject (redisCommand (c, "PEXPIRE {ws:t1}:m 1"));
    deadline = wsr_util_mono_ms () + 3000;
    while (s_integer (c, "EXISTS", "{ws:t1}:m") && wsr_util_mono_ms () < deadline)
        zclock_sleep (2);
    reply = s_publish (c, "ws:t1", "after", "", "", "");
    assert (reply->element [0]->integer == 1 && !streq (reply->element [1]->str, epoch));
    snprintf (epoch, sizeof epoch, "%s", reply->element [1]->str);
    freeReplyObject (reply);
    assert (s_integer (c, "TTL", "{ws:t1}:s") > 60);           //  the default, 300
    //  FLUSHALL: new epoch again
    freeReplyObject (redisCommand (c, "FLUSHALL"));
    reply = s_publish (c, "ws:t1", "x", "", "", "");
    assert (reply->element [0]->integer == 1 && !streq (reply->element [1]->str, epoch));
    snprintf (epoch, sizeof epoch, "%s", reply->element [1]->str);
    freeReplyObject (reply);
    //  Only the hash lost (evicted, deleted): the stream left over is
    //  dropped with it, the epoch is new
    freeReplyObject (s_publish (c, "ws:t1", "y", "", "", ""));
    freeReplyObject (redisCommand (c, "DEL {ws:t1}:m"));
    const char *argv [] = { "EVAL", wsr_publish_lua, "1", "ws:t1", "z", "", "", "",
                            "nonce42" };
    reply = s_cmd (c, 9, argv, NULL);
    assert (reply->element [0]->integer == 1 && !streq (reply->element [1]->str, epoch));
    size_t epoch_len = strlen (reply->element [1]->str);
    assert (epoch_len > 8 && streq (reply->element [1]->str + epoch_len - 8, "-nonce42"));
    freeReplyObject (reply);
    assert (s_integer (c, "XLEN", "{ws:t1}:s") == 1);
    //  Bad arguments are refused, nothing is published
    const char *bad [][4] = { { "0", "", "", "" }, { "10", "0", "", "" },
                              { "x", "", "", "" }, { "", "", "BROADCAST", "" },
                              { "", "", "", "no:colons" } };
    for (int i = 0; i < 5; i++) {
        const char *args [] = { "EVAL", wsr_publish_lua, "1", "ws:t1", "p", bad [i][0],
                                bad [i][1], bad [i][2], bad [i][3] };
        reply = s_cmd (c, 9, args, NULL);
        assert (reply->type == REDIS_REPLY_ERROR && strstr (reply->str, "wsr publish"));
        freeReplyObject (reply);
    }
    //  SPUBLISH reaches sharded subscribers
    redisContext *ssub = s_sync (port);
    freeReplyObject (redisCommand (ssub, "SSUBSCRIBE ws:t2"));
    reply = s_publish (c, "ws:t2", "sharded", "", "", "spublish");
    assert (reply->type == REDIS_REPLY_ARRAY && reply->element [2]->integer == 1);
    freeReplyObject (reply);
    assert (redisGetReply (ssub, (void **) &message) == REDIS_OK);
    assert (message->elements == 3 && streq (message->element [0]->str, "smessage"));
    assert (wsr_history_frame_decode ((const uint8_t *) message->element [2]->str,
                                      message->element [2]->len, &offset, got_epoch, &got,
                                      &got_size) == 0);
    assert (offset == 1 && got_size == 7);
    freeReplyObject (message);
    //  read.lua: epoch, last, entries after since
    reply = (redisReply *) redisCommand (c, "EVAL %s 1 ws:t1 0 10", wsr_read_lua);
    assert (reply->type == REDIS_REPLY_ARRAY && reply->elements == 4);
    assert (reply->element [1]->integer == 1 && reply->element [2]->integer == 1);
    assert (streq (reply->element [3]->str, "z"));
    freeReplyObject (reply);
    reply = (redisReply *) redisCommand (c, "EVAL %s 1 ws:none 0 10", wsr_read_lua);
    assert (reply->elements == 2 && streq (reply->element [0]->str, ""));
    assert (reply->element [1]->integer == 0);
    freeReplyObject (reply);
    assert (s_integer (c, "EXISTS", "{ws:none}:m") == 0);      //  nothing written
    //  ... unless given a TTL for the epoch: then a topic has one at offset
    //  0 before its first message, and the first message continues it
    reply = (redisReply *) redisCommand (c, "EVAL %s 1 ws:new 0 10 100 n0nce", wsr_read_lua);
    assert (reply->elements == 2 && reply->element [1]->integer == 0);
    size_t new_len = reply->element [0]->len;
    assert (new_len > 6 && streq (reply->element [0]->str + new_len - 6, "-n0nce"));
    snprintf (epoch, sizeof epoch, "%s", reply->element [0]->str);
    freeReplyObject (reply);
    assert (s_integer (c, "TTL", "{ws:new}:m") > 0 && s_integer (c, "TTL", "{ws:new}:m") <= 100);
    reply = s_publish (c, "ws:new", "first", "", "", "");
    assert (reply->element [0]->integer == 1 && streq (reply->element [1]->str, epoch));
    freeReplyObject (reply);
    reply = (redisReply *) redisCommand (c, "EVAL %s 1 ws:new 0 10 x", wsr_read_lua);
    assert (reply->type == REDIS_REPLY_ERROR);
    freeReplyObject (reply);
    redisFree (ssub);
    redisFree (sub);
    redisFree (c);
}

//  Drive a Redis link for up to ms, or until *done becomes true.
static void
s_drive (wsr_redis_t *redis, int ms, const bool *done)
{
    int64_t end = wsr_util_mono_ms () + ms;
    while (wsr_util_mono_ms () < end && !(done && *done)) {
        zmq_pollitem_t items [4];
        int n = wsr_redis_pollitems (redis, items, 4);
        long timeout = wsr_redis_timeout (redis);
        zmq_poll (items, n, timeout > 10? 10: timeout);
        wsr_redis_process (redis, items, n);
    }
}

static void
s_ignore (void *arg, const char *pattern, const char *channel, size_t channel_len,
          const uint8_t *data, size_t size)
{
    (void) arg, (void) pattern, (void) channel, (void) channel_len, (void) data, (void) size;
}

typedef struct {
    int calls;                              //  callbacks so far
    int status;                             //  of the last one
    uint64_t offset;
    char epoch [WSR_HISTORY_EPOCH_MAX + 1];
    bool done;                              //  calls reached want
    int want;
} s_appended_t;

static void
s_on_appended (void *arg, int status, uint64_t offset, const char *epoch)
{
    s_appended_t *appended = (s_appended_t *) arg;
    appended->calls++;
    appended->status = status;
    appended->offset = offset;
    snprintf (appended->epoch, sizeof appended->epoch, "%s", epoch);
    appended->done = appended->calls >= appended->want;
}

typedef struct {
    bool done;
    int status;
    char epoch [WSR_HISTORY_EPOCH_MAX + 1];
    uint64_t last;
    bool complete;
    size_t count;
    uint64_t offsets [64];
    char data [64][8];
} s_got_t;

static void
s_on_read (void *arg, const wsr_history_result_t *result)
{
    s_got_t *got = (s_got_t *) arg;
    assert (!got->done);
    got->done = true;
    got->status = result->status;
    snprintf (got->epoch, sizeof got->epoch, "%s", result->epoch);
    got->last = result->last;
    got->complete = result->complete;
    got->count = result->count;
    for (size_t i = 0; i < result->count && i < 64; i++) {
        got->offsets [i] = result->entries [i].offset;
        snprintf (got->data [i], sizeof got->data [i], "%.*s", (int) result->entries [i].size,
                  (const char *) result->entries [i].data);
    }
}

//  Read and wait for the answer.
static s_got_t
s_read (wsr_redis_t *redis, wsr_history_t *history, const char *channel, uint64_t since,
        const char *epoch, size_t max)
{
    s_got_t got = { 0 };
    assert (wsr_history_read (history, channel, since, epoch, max, s_on_read, &got) == 0);
    s_drive (redis, 5000, &got.done);
    assert (got.done);
    return got;
}

//  Append count messages "0".."count-1" and wait for all.
static s_appended_t
s_append (wsr_redis_t *redis, wsr_history_t *history, const char *channel, int count)
{
    s_appended_t appended = { .want = count };
    for (int i = 0; i < count; i++) {
        char payload [8];
        snprintf (payload, sizeof payload, "%d", i);
        assert (wsr_history_append (history, channel, (const uint8_t *) payload,
                                    strlen (payload), s_on_appended, &appended) == 0);
    }
    s_drive (redis, 5000, &appended.done);
    assert (appended.done && appended.status == 0);
    return appended;
}

//  The store through the async link.
static void
s_test_store (int *port, pid_t *server)
{
    char url [64];
    snprintf (url, sizeof url, "redis://127.0.0.1:%d", *port);
    wsr_redis_t *redis = wsr_redis_new (url, s_ignore, NULL);
    assert (redis);
    assert (wsr_history_new (redis, 0, 1, false) == NULL);
    assert (wsr_history_new (redis, 1, 0, false) == NULL);
    wsr_history_t *history = wsr_history_new (redis, 10, 60, false);
    assert (history);
    assert (wsr_history_append (history, "ws:a", (const uint8_t *) "x", 1, NULL, NULL) == -1);
    int64_t deadline = wsr_util_mono_ms () + 5000;
    while (!wsr_redis_connected (redis) && wsr_util_mono_ms () < deadline)
        s_drive (redis, 10, NULL);
    //  Appends get offsets 1..5 in order, in one epoch
    s_appended_t appended = s_append (redis, history, "ws:a", 5);
    assert (appended.offset == 5 && strlen (appended.epoch) > 13);
    char epoch [WSR_HISTORY_EPOCH_MAX + 1];
    snprintf (epoch, sizeof epoch, "%s", appended.epoch);
    assert (wsr_history_inflight (history) == 0);
    //  Reads since an offset
    s_got_t got = s_read (redis, history, "ws:a", 2, epoch, 100);
    assert (got.status == 0 && got.complete && got.last == 5 && streq (got.epoch, epoch));
    assert (got.count == 3 && got.offsets [0] == 3 && got.offsets [2] == 5);
    assert (streq (got.data [0], "2") && streq (got.data [2], "4"));
    got = s_read (redis, history, "ws:a", 0, epoch, 100);
    assert (got.complete && got.count == 5 && got.offsets [0] == 1);
    got = s_read (redis, history, "ws:a", 5, epoch, 100);
    assert (got.complete && got.count == 0 && got.last == 5);
    got = s_read (redis, history, "ws:a", 0, NULL, 0);          //  position only
    assert (got.complete == false && got.count == 0 && got.last == 5);
    got = s_read (redis, history, "ws:a", 5, NULL, 0);
    assert (got.complete && streq (got.epoch, epoch));
    //  More than max: not complete
    got = s_read (redis, history, "ws:a", 0, epoch, 3);
    assert (!got.complete && got.count == 3);
    //  Epoch mismatch, client ahead, unknown topic
    got = s_read (redis, history, "ws:a", 2, "otherepoch", 100);
    assert (got.status == 0 && !got.complete && got.count == 3);
    got = s_read (redis, history, "ws:a", 9, epoch, 100);
    assert (!got.complete && got.count == 0);
    got = s_read (redis, history, "ws:none", 0, NULL, 100);     //  an epoch is made
    assert (got.status == 0 && got.complete && strlen (got.epoch) > 13 && got.last == 0);
    assert (!streq (got.epoch, epoch));
    char none_epoch [WSR_HISTORY_EPOCH_MAX + 1];
    snprintf (none_epoch, sizeof none_epoch, "%s", got.epoch);
    got = s_read (redis, history, "ws:none", 0, none_epoch, 100);
    assert (got.complete && got.count == 0);
    got = s_read (redis, history, "ws:none", 4, epoch, 100);
    assert (!got.complete);
    got = s_read (redis, history, "ws:none", 0, "", 100);       //  no epoch is never complete
    assert (!got.complete);
    //  Beyond retention (size 10, trimmed by whole stream nodes of 100)
    s_append (redis, history, "ws:a", 300);
    got = s_read (redis, history, "ws:a", 5, epoch, 1000);
    assert (got.status == 0 && got.last == 305 && !got.complete);
    got = s_read (redis, history, "ws:a", 300, epoch, 1000);
    assert (got.complete && got.count == 5 && got.offsets [0] == 301);

    //  Scripts flushed under the store: NOSCRIPT, sent again with the body
    redisContext *c = s_sync (*port);
    freeReplyObject (redisCommand (c, "SCRIPT FLUSH"));
    appended = s_append (redis, history, "ws:a", 1);
    assert (appended.offset == 306 && history->noscript == 1);
    got = s_read (redis, history, "ws:a", 305, epoch, 10);      //  read.lua loaded again
    assert (got.complete && got.count == 1);
    //  Redis restarted without persistence: scripts loaded again first, a
    //  new epoch, the old one is not complete any more
    redisFree (c);
    wsr_util_reap (*server);
    deadline = wsr_util_mono_ms () + 5000;
    while (wsr_redis_connected (redis) && wsr_util_mono_ms () < deadline)
        s_drive (redis, 10, NULL);
    assert (!wsr_redis_connected (redis));
    *server = s_redis_start (*port);
    while (wsr_history_append (history, "ws:a", (const uint8_t *) "r", 1, NULL, NULL)) {
        assert (wsr_util_mono_ms () < deadline + 5000);
        s_drive (redis, 10, NULL);
    }
    appended = s_append (redis, history, "ws:a", 1);
    assert (appended.offset == 2 && !streq (appended.epoch, epoch));
    assert (history->noscript == 1);
    got = s_read (redis, history, "ws:a", 300, epoch, 10);
    assert (!got.complete && got.last == 2 && streq (got.epoch, appended.epoch));

    //  In-flight requests are bounded
    int sent = 0;
    while (wsr_history_append (history, "ws:b", (const uint8_t *) "f", 1, NULL, NULL) == 0)
        sent++;
    assert (sent == WSR_HISTORY_MAX_INFLIGHT);
    assert (wsr_history_read (history, "ws:b", 0, NULL, 1, s_on_read, &got) == -1);
    deadline = wsr_util_mono_ms () + 5000;
    while (wsr_history_inflight (history) && wsr_util_mono_ms () < deadline)
        s_drive (redis, 10, NULL);
    assert (wsr_history_inflight (history) == 0);
    got = s_read (redis, history, "ws:b", 0, NULL, 0);
    assert (got.last == WSR_HISTORY_MAX_INFLIGHT);
    //  Destroying the store with requests in flight: their callbacks are
    //  never made; destroying the link with requests in flight fails them
    appended = (s_appended_t) { .want = 1 };
    assert (wsr_history_append (history, "ws:b", (const uint8_t *) "g", 1, s_on_appended,
                                &appended) == 0);
    wsr_history_destroy (&history);
    s_drive (redis, 200, NULL);
    assert (appended.calls == 0);
    history = wsr_history_new (redis, 10, 60, false);
    assert (wsr_history_append (history, "ws:b", (const uint8_t *) "g", 1, s_on_appended,
                                &appended) == 0);
    wsr_redis_destroy (&redis);
    assert (appended.calls == 1 && appended.status == -1);
    wsr_history_destroy (&history);
}

static void
s_count (void *arg, redisReply *reply)
{
    assert (reply && reply->type == REDIS_REPLY_INTEGER);
    (*(size_t *) arg)++;
}

//  redis-server's CPU seconds (user + sys) from INFO cpu.
static double
s_server_cpu (redisContext *c)
{
    redisReply *reply = (redisReply *) redisCommand (c, "INFO cpu");
    assert (reply && reply->type == REDIS_REPLY_STRING);
    const char *user = strstr (reply->str, "used_cpu_user:");
    const char *sys = strstr (reply->str, "used_cpu_sys:");
    assert (user && sys);
    double cpu = atof (user + 14) + atof (sys + 13);
    freeReplyObject (reply);
    return cpu;
}

//  VERBOSE only: redis-server CPU per append (EVALSHA publish.lua) and per
//  plain PUBLISH, same payload, one subscriber, 256 in flight, one run.
static void
s_measure (int port)
{
    char url [64];
    snprintf (url, sizeof url, "redis://127.0.0.1:%d", port);
    wsr_redis_t *redis = wsr_redis_new (url, s_ignore, NULL);
    wsr_history_t *history = wsr_history_new (redis, 100, 300, false);
    int64_t deadline = wsr_util_mono_ms () + 5000;
    while (!wsr_redis_connected (redis) && wsr_util_mono_ms () < deadline)
        s_drive (redis, 10, NULL);
    redisContext *c = s_sync (port);
    redisContext *sub = s_sync (port);
    freeReplyObject (redisCommand (sub, "PSUBSCRIBE ws:m*"));
    const int count = 50000;
    uint8_t payload [100];
    memset (payload, 'x', sizeof payload);
    for (int round = 0; round < 2; round++) {
        for (int kind = 0; kind < 2; kind++) {
            double cpu = s_server_cpu (c);
            size_t sent = 0, replied = 0;
            int64_t start = zclock_usecs ();
            for (int i = 0; i < count; i++) {
                char channel [16];
                snprintf (channel, sizeof channel, "ws:m%d", i % 1000);
                while (wsr_history_inflight (history) >= 256)
                    s_drive (redis, 1, NULL);
                if (kind == 0)
                    assert (wsr_history_append (history, channel, payload, sizeof payload,
                                                NULL, NULL) == 0);
                else {
                    while (sent - replied >= 256)
                        s_drive (redis, 1, NULL);
                    const char *argv [] = { "PUBLISH", channel, (const char *) payload };
                    size_t lens [] = { 7, strlen (channel), sizeof payload };
                    assert (wsr_redis_command (redis, 3, argv, lens, s_count, &replied) == 0);
                    sent++;
                }
            }
            while (wsr_history_inflight (history) || replied < sent)
                s_drive (redis, 1, NULL);
            freeReplyObject (redisCommand (c, "PING"));
            double used = s_server_cpu (c) - cpu;
            printf ("\n  %-8s %d: redis-server %.2f us CPU each, %.0f/s", kind? "PUBLISH": "append",
                    count, used * 1e6 / count, count * 1e6 / (double) (zclock_usecs () - start));
        }
    }
    printf ("\n");
    redisFree (sub);
    redisFree (c);
    wsr_history_destroy (&history);
    wsr_redis_destroy (&redis);
}

void
wsr_history_test (bool verbose)
{
    (void) verbose;
    s_test_frames ();
    if (system ("command -v redis-server >/dev/null 2>&1") != 0) {
        printf ("SKIP (redis-server not installed)\n");
        exit (77);
    }
    int port = wsr_util_free_port ();
    pid_t server = s_redis_start (port);
    assert (server > 0);
    s_test_script (port);
    s_test_store (&port, &server);
    if (verbose)
        s_measure (port);
    wsr_util_reap (server);
}
