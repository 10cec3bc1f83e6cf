//  wsr_bench_pub — the bench's publisher: HTTP API, Redis or NATS, pipelined, acknowledged
//
//  Exactly one process of a run publishes. Transports:
//  - http://: POST /api/publish on one keep-alive connection, up to
//    --pipeline requests unanswered; answers are matched in order.
//  - redis://: PUBLISH on a non-blocking hiredis context driven by the run's
//    epoll set, up to --pipeline commands unanswered (AUTH first if the URL
//    has a password).
//  - nats://: libnats publishes (its own threads flush); accepted means
//    handed to libnats, and the end waits for one bounded flush round trip.
//  A ring remembers the kind of each request in flight, so that answers are
//  counted per kind. A lost connection counts what was in flight as lost
//  and reconnects after WSR_BENCH_RETRY_NS; a publisher that can hand over
//  nothing for WSR_BENCH_PUB_STALL_NS gives up (so every run ends).
//
//  Owns: its socket or hiredis context or libnats connection, its buffers.

#include "wsr_bench_classes.h"
#include <hiredis/hiredis.h>
#include <nats/nats.h>
#include <poll.h>
#include <sys/epoll.h>

#define S_HTTP_HEAD_MAX     1024                        //  request head bytes
#define S_HTTP_BODY_HEAD    (WSR_MAX_ID_LEN + 64)       //  {"user":"...","data":"
#define S_ANSWERS_MAX       (16 * 1024 * 1024)          //  unparsed answer bytes

struct _wsr_bench_pub_t {
    const wsr_bench_opts_t *opts;   //  settings (not owned)
    wsr_bench_ident_t *ident;       //  users (not owned)
    int epoll_fd;                   //  the run's epoll set (not owned)
    int fd;                         //  HTTP socket or Redis fd in epoll, -1 if none
    bool want_write;                //  EPOLLOUT requested
    wsr_bench_buf_t *out;           //  HTTP requests not yet written (owned)
    wsr_bench_buf_t *in;            //  HTTP answers not yet parsed (owned)
    redisContext *redis;            //  non-blocking hiredis context (owned)
    natsConnection *nats;           //  libnats connection (owned)
    uint32_t inflight;              //  requests / commands not yet answered
    uint8_t *ring;                  //  kind of each one, oldest at ring_head (owned)
    uint32_t ring_head;
    uint32_t auth_pending;          //  Redis AUTH replies still to come
    int64_t retry_at;               //  no reconnect before this (mono ns)
    int64_t blocked_since;          //  could not take a message since (mono ns), 0 = can
    bool stalled;                   //  blocked too long: publishing given up
    char *payload;                  //  message being built (--size bytes + NUL, owned)
    uint64_t sent;                  //  messages handed to the transport, all kinds
    uint64_t accepted [WSR_BENCH_KINDS];    //  acknowledged, by kind
    uint64_t errors [WSR_BENCH_KINDS];      //  refused or lost in flight, by kind
    uint64_t lost_inflight;         //  connection lost before the answer (all kinds)
    uint64_t no_receiver;           //  Redis PUBLISH answered 0 subscribers
    uint64_t connects;              //  connections made
    uint64_t status [WSR_BENCH_STATUS_SLOTS];   //  HTTP answers by status
    bool flushed;                   //  NATS final flush done
};

//  --------------------------------------------------------------------------
//  Create the publisher; nothing is connected yet.
wsr_bench_pub_t *
wsr_bench_pub_new (const wsr_bench_opts_t *opts, wsr_bench_ident_t *ident, int epoll_fd)
{
    assert (opts && ident);
    assert (opts->pipeline > 0);
    wsr_bench_pub_t *self = (wsr_bench_pub_t *) zmalloc (sizeof (wsr_bench_pub_t));
    assert (self);
    self->opts = opts;
    self->ident = ident;
    self->epoll_fd = epoll_fd;
    self->fd = -1;
    //  At most --pipeline requests are ever queued
    self->out = wsr_bench_buf_new ((size_t) opts->pipeline
                                   * (S_HTTP_HEAD_MAX + S_HTTP_BODY_HEAD + opts->size + 2));
    self->in = wsr_bench_buf_new (S_ANSWERS_MAX);
    self->payload = (char *) malloc (opts->size + 1);
    assert (self->payload);
    memset (self->payload, 'x', opts->size);
    self->payload [opts->size] = 0;
    self->ring = (uint8_t *) zmalloc (opts->pipeline);
    assert (self->ring);
    return self;
}

//  --------------------------------------------------------------------------
//  Close the connection and free the publisher.
void
wsr_bench_pub_destroy (wsr_bench_pub_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        wsr_bench_pub_t *self = *self_p;
        if (self->redis)
            redisFree (self->redis);            //  closes the fd
        else
        if (self->fd >= 0)
            close (self->fd);
        if (self->nats)
            natsConnection_Destroy (self->nats);
        wsr_bench_buf_destroy (&self->out);
        wsr_bench_buf_destroy (&self->in);
        free (self->payload);
        free (self->ring);
        free (self);
        *self_p = NULL;
    }
}

static void
s_want_write (wsr_bench_pub_t *self, bool want)
{
    if (self->fd >= 0 && want != self->want_write) {
        self->want_write = want;
        wsr_bench_epoll_set (self->epoll_fd, EPOLL_CTL_MOD, self->fd,
                             EPOLLIN | (want? EPOLLOUT: 0), WSR_BENCH_TAG_PUB, 0);
    }
}

//  The oldest request in flight was answered (ok or not).
static void
s_answered (wsr_bench_pub_t *self, bool ok)
{
    if (!self->inflight)
        return;
    int kind = self->ring [self->ring_head];
    self->ring_head = (self->ring_head + 1) % self->opts->pipeline;
    self->inflight--;
    if (ok)
        self->accepted [kind]++;
    else
        self->errors [kind]++;
}

//  A request is on its way; its answer will be the last one.
static void
s_pending (wsr_bench_pub_t *self, char kind)
{
    assert (self->inflight < self->opts->pipeline);
    self->ring [(self->ring_head + self->inflight) % self->opts->pipeline] =
        (uint8_t) wsr_bench_payload_kind_index (kind);
    self->inflight++;
}

//  Connection lost: what was in flight is lost; reconnect later.
static void
s_lost (wsr_bench_pub_t *self, const char *why)
{
    if (self->inflight)
        zsys_warning ("bench: publisher connection lost (%s), %u in flight", why,
                      self->inflight);
    self->lost_inflight += self->inflight;
    while (self->inflight)
        s_answered (self, false);
    self->auth_pending = 0;
    if (self->fd >= 0)
        wsr_bench_epoll_set (self->epoll_fd, EPOLL_CTL_DEL, self->fd, 0, WSR_BENCH_TAG_PUB, 0);
    if (self->redis)
        redisFree (self->redis);            //  closes the fd
    else
    if (self->fd >= 0)
        close (self->fd);
    self->redis = NULL;
    self->fd = -1;
    self->want_write = false;
    wsr_bench_buf_reset (self->out);
    wsr_bench_buf_reset (self->in);
    self->retry_at = wsr_bench_now () + WSR_BENCH_RETRY_NS;
}

//  Make sure there is a connection; returns false if there is none now.
static bool
s_connect (wsr_bench_pub_t *self)
{
    const wsr_bench_opts_t *opts = self->opts;
    if (opts->pub_kind == WSR_BENCH_PUB_NONE)
        return false;
    if (opts->pub_kind == WSR_BENCH_PUB_NATS)
        return self->nats != NULL;
    if (self->fd >= 0)
        return true;
    int64_t now = wsr_bench_now ();
    if (now < self->retry_at)
        return false;
    if (opts->pub_kind == WSR_BENCH_PUB_HTTP) {
        self->fd = wsr_bench_tcp_connect (&opts->pub_addr);
        if (self->fd < 0) {
            self->retry_at = now + WSR_BENCH_RETRY_NS;
            return false;
        }
    }
    else {
        char ip [INET_ADDRSTRLEN];
        inet_ntop (AF_INET, &opts->pub_addr.sin_addr, ip, sizeof ip);
        self->redis = redisConnectNonBlock (ip, opts->pub_port);
        if (!self->redis || self->redis->err) {
            if (self->redis)
                redisFree (self->redis);
            self->redis = NULL;
            self->retry_at = now + WSR_BENCH_RETRY_NS;
            return false;
        }
        self->fd = self->redis->fd;
        if (*opts->redis_password) {
            int rc = *opts->redis_user
                   ? redisAppendCommand (self->redis, "AUTH %s %s", opts->redis_user,
                                         opts->redis_password)
                   : redisAppendCommand (self->redis, "AUTH %s", opts->redis_password);
            assert (rc == REDIS_OK);        //  only fails out of memory
            self->auth_pending = 1;
        }
    }
    self->connects++;
    self->want_write = true;
    wsr_bench_epoll_set (self->epoll_fd, EPOLL_CTL_ADD, self->fd, EPOLLIN | EPOLLOUT,
                         WSR_BENCH_TAG_PUB, 0);
    return true;
}

//  The URL without credentials, for messages
static void
s_safe_url (wsr_bench_pub_t *self, char *out, size_t size)
{
    const char *scheme = self->opts->pub_kind == WSR_BENCH_PUB_HTTP? "http"
                       : self->opts->pub_kind == WSR_BENCH_PUB_REDIS? "redis": "nats";
    snprintf (out, size, "%s://%s", scheme, self->opts->pub_host);
}

//  --------------------------------------------------------------------------
//  Connect at the start, bounded.
int
wsr_bench_pub_start (wsr_bench_pub_t *self)
{
    assert (self);
    const wsr_bench_opts_t *opts = self->opts;
    if (opts->pub_kind == WSR_BENCH_PUB_NONE)
        return 0;
    char url [300];
    s_safe_url (self, url, sizeof url);
    if (opts->pub_kind == WSR_BENCH_PUB_NATS) {
        //  At a set rate every message goes out at once, so that the latency
        //  measured is the server's; at max rate libnats' flusher batches
        natsOptions *nats_opts = NULL;
        natsStatus status = natsOptions_Create (&nats_opts);
        if (status == NATS_OK)
            status = natsOptions_SetURL (nats_opts, opts->pub_url);
        if (status == NATS_OK)
            status = natsOptions_SetSendAsap (nats_opts, opts->rate > 0);
        if (status == NATS_OK)
            status = natsConnection_Connect (&self->nats, nats_opts);
        natsOptions_Destroy (nats_opts);
        if (status != NATS_OK) {
            fprintf (stderr, "wsrouter bench: cannot connect to %s: %s\n", url,
                     natsStatus_GetText (status));
            return -1;
        }
        self->connects++;
        return 0;
    }
    if (!s_connect (self)) {
        fprintf (stderr, "wsrouter bench: cannot connect to %s\n", url);
        return -1;
    }
    if (self->redis) {
        //  hiredis connects without waiting: wait here once, bounded
        struct pollfd item = { .fd = self->fd, .events = POLLOUT };
        int error = 0;
        socklen_t len = sizeof error;
        if (poll (&item, 1, WSR_BENCH_CONNECT_TIMEOUT_MS) != 1
        ||  getsockopt (self->fd, SOL_SOCKET, SO_ERROR, &error, &len) || error) {
            fprintf (stderr, "wsrouter bench: cannot connect to %s: %s\n", url,
                     error? strerror (error): "timeout");
            return -1;
        }
        wsr_bench_pub_flush (self);
    }
    return 0;
}

//  --------------------------------------------------------------------------
//  One more message now?
bool
wsr_bench_pub_ready (wsr_bench_pub_t *self)
{
    assert (self);
    bool ready = s_connect (self);
    if (ready && self->opts->pub_kind == WSR_BENCH_PUB_NATS)
        ready = natsConnection_Buffered (self->nats) < WSR_BENCH_NATS_MAX_BUFFERED;
    else
    if (ready)
        ready = self->inflight < self->opts->pipeline;
    if (ready)
        self->blocked_since = 0;
    else
    if (!self->blocked_since)
        self->blocked_since = wsr_bench_now ();
    return ready && !self->stalled;
}

//  --------------------------------------------------------------------------
//  One message: an HTTP request queued, a PUBLISH appended, or a NATS publish.
void
wsr_bench_pub_send (wsr_bench_pub_t *self, char kind, uint32_t seq, uint32_t target)
{
    assert (self);
    const wsr_bench_opts_t *opts = self->opts;
    assert (opts->pub_kind != WSR_BENCH_PUB_NONE);
    const char *id = opts->channel_mode? opts->channel
                                       : wsr_bench_ident_user (self->ident, target);
    wsr_bench_payload_write (self->payload, kind, seq, (uint64_t) wsr_bench_now (), target);
    self->sent++;
    if (opts->pub_kind == WSR_BENCH_PUB_HTTP) {
        char head [S_HTTP_HEAD_MAX], body [S_HTTP_BODY_HEAD];
        int body_len = snprintf (body, sizeof body, "{\"%s\":\"%s\",\"data\":\"",
                                 opts->channel_mode? "channel": "user", id);
        int head_len = snprintf (head, sizeof head,
                                 "POST /api/publish HTTP/1.1\r\nHost: %s\r\n"
                                 "Authorization: apikey %s\r\n"
                                 "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                                 opts->pub_host, opts->api_key,
                                 (size_t) body_len + opts->size + 2);
        assert (head_len > 0 && (size_t) head_len < sizeof head);
        assert (body_len > 0 && (size_t) body_len < sizeof body);
        //  Room for --pipeline requests: these cannot fail
        int rc = wsr_bench_buf_append (self->out, head, (size_t) head_len);
        rc |= wsr_bench_buf_append (self->out, body, (size_t) body_len);
        rc |= wsr_bench_buf_append (self->out, self->payload, opts->size);
        rc |= wsr_bench_buf_append (self->out, "\"}", 2);
        assert (rc == 0);
        s_pending (self, kind);
    }
    else
    if (opts->pub_kind == WSR_BENCH_PUB_REDIS) {
        char channel [512];
        wsr_bench_subst (channel, sizeof channel,
                         opts->channel_mode? opts->redis_channel_tpl: opts->redis_user_tpl, id);
        int rc = redisAppendCommand (self->redis, "PUBLISH %b %b", channel, strlen (channel),
                                     self->payload, opts->size);
        assert (rc == REDIS_OK);            //  only fails out of memory
        s_pending (self, kind);
    }
    else {
        char subject [512];
        wsr_bench_subst (subject, sizeof subject,
                         opts->channel_mode? opts->nats_channel_tpl: opts->nats_user_tpl, id);
        natsStatus status = natsConnection_Publish (self->nats, subject, self->payload,
                                                    (int) opts->size);
        if (status == NATS_OK)
            self->accepted [wsr_bench_payload_kind_index (kind)]++;
        else
            self->errors [wsr_bench_payload_kind_index (kind)]++;
    }
}

//  --------------------------------------------------------------------------
//  Write what is queued (HTTP bytes, hiredis' output buffer).
void
wsr_bench_pub_flush (wsr_bench_pub_t *self)
{
    assert (self);
    if (self->fd < 0)
        return;
    if (self->redis) {
        int done = 0;
        if (redisBufferWrite (self->redis, &done) != REDIS_OK) {
            s_lost (self, self->redis->errstr);
            return;
        }
        s_want_write (self, !done);
        return;
    }
    while (wsr_bench_buf_size (self->out)) {
        ssize_t n = send (self->fd, wsr_bench_buf_data (self->out),
                          wsr_bench_buf_size (self->out), MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        if (n < 0) {
            s_lost (self, strerror (errno));
            return;
        }
        wsr_bench_buf_consume (self->out, (size_t) n);
    }
    s_want_write (self, wsr_bench_buf_size (self->out) > 0);
}

//  Parse HTTP answers: one per request, in order (pipelining).
static void
s_http_answers (wsr_bench_pub_t *self)
{
    while (wsr_bench_buf_size (self->in)) {
        char *start = wsr_bench_buf_data (self->in);
        size_t avail = wsr_bench_buf_size (self->in);
        char *end = memmem (start, avail, "\r\n\r\n", 4);
        if (!end)
            return;
        size_t head_len = (size_t) (end + 4 - start);
        size_t len = 0;
        const char *length = wsr_bench_header_find (start, head_len, "content-length", &len);
        size_t body = length? (size_t) strtoul (length, NULL, 10): 0;
        if (avail < head_len + body)
            return;
        int status = strncmp (start, "HTTP/1.", 7) == 0? atoi (start + 9): 0;
        const char *connection = wsr_bench_header_find (start, head_len, "connection", &len);
        bool closing = connection && wsr_bench_list_has (connection, len, "close");
        wsr_bench_buf_consume (self->in, head_len + body);
        if (status >= WSR_BENCH_STATUS_BASE
        &&  status < WSR_BENCH_STATUS_BASE + WSR_BENCH_STATUS_SLOTS)
            self->status [status - WSR_BENCH_STATUS_BASE]++;
        s_answered (self, status >= 200 && status < 300);
        if (closing) {
            s_lost (self, "server closes");
            return;
        }
    }
}

//  Redis replies: AUTH first, then one per PUBLISH.
static void
s_redis_replies (wsr_bench_pub_t *self)
{
    if (redisBufferRead (self->redis) != REDIS_OK) {
        s_lost (self, self->redis->errstr);
        return;
    }
    void *reply = NULL;
    while (redisGetReply (self->redis, &reply) == REDIS_OK && reply) {
        redisReply *r = (redisReply *) reply;
        if (self->auth_pending) {
            self->auth_pending--;
            if (r->type == REDIS_REPLY_ERROR)
                zsys_error ("bench: Redis AUTH: %s", r->str);
        }
        else {
            s_answered (self, r->type == REDIS_REPLY_INTEGER);
            if (r->type == REDIS_REPLY_INTEGER && r->integer == 0)
                self->no_receiver++;
        }
        freeReplyObject (reply);
        reply = NULL;
    }
    if (self->redis->err)
        s_lost (self, self->redis->errstr);
}

//  --------------------------------------------------------------------------
//  Readable: answers; writable: more requests.
void
wsr_bench_pub_event (wsr_bench_pub_t *self, uint32_t events)
{
    assert (self);
    if (self->fd < 0)
        return;
    if (self->redis) {
        if (events & (EPOLLIN | EPOLLERR | EPOLLHUP))
            s_redis_replies (self);
        if (self->fd >= 0 && (events & EPOLLOUT))
            wsr_bench_pub_flush (self);
        return;
    }
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        char buf [WSR_BENCH_HTTP_READ];
        ssize_t n;
        while ((n = recv (self->fd, buf, sizeof buf, 0)) > 0) {
            if (wsr_bench_buf_append (self->in, buf, (size_t) n)) {
                s_lost (self, "answers too large");
                return;
            }
            if (n < (ssize_t) sizeof buf)
                break;
        }
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            const char *why = n == 0? "closed": strerror (errno);
            s_http_answers (self);
            if (self->fd >= 0)
                s_lost (self, why);
            return;
        }
        s_http_answers (self);
    }
    if (self->fd >= 0 && (events & EPOLLOUT))
        wsr_bench_pub_flush (self);
}

//  --------------------------------------------------------------------------
//  Everything answered?
bool
wsr_bench_pub_idle (wsr_bench_pub_t *self)
{
    assert (self);
    if (self->opts->pub_kind == WSR_BENCH_PUB_NATS) {
        if (self->nats && !self->flushed) {
            //  One bounded round trip: everything buffered has reached the server
            if (natsConnection_FlushTimeout (self->nats, WSR_BENCH_NATS_FLUSH_MS) != NATS_OK)
                zsys_warning ("bench: NATS flush did not complete");
            self->flushed = true;
        }
        return true;
    }
    return self->inflight == 0;
}

//  --------------------------------------------------------------------------
//  Waiting for the socket?
bool
wsr_bench_pub_writing (wsr_bench_pub_t *self)
{
    assert (self);
    return self->want_write;
}

//  --------------------------------------------------------------------------
//  A backplane that takes nothing for this long ends publishing (the
//  receivers still count what is missing).
void
wsr_bench_pub_watch (wsr_bench_pub_t *self, int64_t now)
{
    assert (self);
    if (!self->stalled && self->blocked_since
    &&  now - self->blocked_since > WSR_BENCH_PUB_STALL_NS) {
        zsys_warning ("bench: publisher blocked for %d s (%s): publishing stopped",
                      (int) (WSR_BENCH_PUB_STALL_NS / WSR_BENCH_SEC),
                      self->fd < 0 && !self->nats? "no connection": "no answers");
        self->stalled = true;
    }
}

//  --------------------------------------------------------------------------
//  Publishing given up?
bool
wsr_bench_pub_stalled (wsr_bench_pub_t *self)
{
    assert (self);
    return self->stalled;
}

//  --------------------------------------------------------------------------
//  Acknowledged messages of kind.
uint64_t
wsr_bench_pub_accepted (wsr_bench_pub_t *self, char kind)
{
    assert (self);
    return self->accepted [wsr_bench_payload_kind_index (kind)];
}

//  --------------------------------------------------------------------------
//  Refused or lost messages of kind.
uint64_t
wsr_bench_pub_errors (wsr_bench_pub_t *self, char kind)
{
    assert (self);
    return self->errors [wsr_bench_payload_kind_index (kind)];
}

//  --------------------------------------------------------------------------
//  The report's "publisher" object.
json_t *
wsr_bench_pub_report (wsr_bench_pub_t *self)
{
    assert (self);
    json_t *publisher = json_object ();
    json_object_set_new (publisher, "sent_all_kinds", json_integer ((json_int_t) self->sent));
    const char *names [WSR_BENCH_KINDS] = { NULL, "warmup", "final" };
    for (int k = 1; k < WSR_BENCH_KINDS; k++) {
        char key [32];
        snprintf (key, sizeof key, "%s_accepted", names [k]);
        json_object_set_new (publisher, key, json_integer ((json_int_t) self->accepted [k]));
        snprintf (key, sizeof key, "%s_errors", names [k]);
        json_object_set_new (publisher, key, json_integer ((json_int_t) self->errors [k]));
    }
    json_object_set_new (publisher, "lost_in_flight",
                         json_integer ((json_int_t) self->lost_inflight));
    json_object_set_new (publisher, "connects", json_integer ((json_int_t) self->connects));
    json_object_set_new (publisher, "stalled", json_boolean (self->stalled));
    if (self->opts->pub_kind == WSR_BENCH_PUB_HTTP)
        json_object_set_new (publisher, "http_status",
                             wsr_bench_codes_to_json (self->status, WSR_BENCH_STATUS_SLOTS,
                                                      WSR_BENCH_STATUS_BASE, -1));
    if (self->opts->pub_kind == WSR_BENCH_PUB_REDIS)
        json_object_set_new (publisher, "redis_no_subscriber",
                             json_integer ((json_int_t) self->no_receiver));
    return publisher;
}

//  --------------------------------------------------------------------------
//  Selftest

//  Run the publisher's events for ms.
static void
s_pump (wsr_bench_pub_t *self, int epoll_fd, int ms)
{
    struct epoll_event events [4];
    int n = epoll_wait (epoll_fd, events, 4, ms);
    for (int i = 0; i < n; i++) {
        assert ((uint32_t) (events [i].data.u64 >> 32) == WSR_BENCH_TAG_PUB);
        wsr_bench_pub_event (self, events [i].events);
    }
}

//  Read from the scripted server until count whole requests are in text;
//  returns the bytes read.
static size_t
s_read_requests (wsr_bench_pub_t *self, int epoll_fd, int peer, char *text, size_t size,
                 int count)
{
    size_t len = 0;
    int64_t deadline = wsr_bench_now () + 5 * WSR_BENCH_SEC;
    while (wsr_bench_now () < deadline) {
        s_pump (self, epoll_fd, 5);
        ssize_t n = recv (peer, text + len, size - 1 - len, MSG_DONTWAIT);
        if (n > 0)
            len += (size_t) n;
        text [len] = 0;
        //  Whole: as many bodies as heads, the last one complete
        int heads = 0;
        const char *last_body = NULL;
        for (const char *p = text; (p = strstr (p, "\r\n\r\n")); p += 4) {
            heads++;
            last_body = p + 4;
        }
        if (heads == count && last_body && strstr (last_body, "\"}"))
            break;
    }
    return len;
}

void
wsr_bench_pub_test (bool verbose)
{
    (void) verbose;
    assert (sodium_init () >= 0);
    int listener = socket (AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert (listener >= 0);
    struct sockaddr_in addr = { .sin_family = AF_INET };
    addr.sin_addr.s_addr = htonl (INADDR_LOOPBACK);
    socklen_t addr_len = sizeof addr;
    assert (bind (listener, (struct sockaddr *) &addr, sizeof addr) == 0);
    assert (getsockname (listener, (struct sockaddr *) &addr, &addr_len) == 0);
    assert (listen (listener, 4) == 0);

    wsr_bench_opts_t opts;
    wsr_bench_opts_defaults (&opts);
    opts.sessions = 2;
    opts.jwt_secret = "pub-test";
    opts.user_prefix = "u";
    opts.pub_kind = WSR_BENCH_PUB_HTTP;
    opts.pub_addr = addr;
    snprintf (opts.pub_host, sizeof opts.pub_host, "127.0.0.1:%d", ntohs (addr.sin_port));
    opts.api_key = "pub-key";
    opts.pipeline = 4;
    opts.size = 64;
    wsr_bench_ident_t *ident = wsr_bench_ident_new (&opts);
    assert (ident);
    int epoll_fd = epoll_create1 (EPOLL_CLOEXEC);
    assert (epoll_fd >= 0);
    wsr_bench_pub_t *self = wsr_bench_pub_new (&opts, ident, epoll_fd);
    assert (wsr_bench_pub_start (self) == 0);
    int peer = accept (listener, NULL, NULL);
    assert (peer >= 0);

    //  Four requests fill the pipeline
    assert (wsr_bench_pub_ready (self));
    wsr_bench_pub_send (self, WSR_BENCH_KIND_WARMUP, 0, 0);
    wsr_bench_pub_send (self, WSR_BENCH_KIND_MEASURED, 1, 1);
    wsr_bench_pub_send (self, WSR_BENCH_KIND_FINAL, 0, 0);
    assert (wsr_bench_pub_ready (self));
    wsr_bench_pub_send (self, WSR_BENCH_KIND_MEASURED, 2, 0);
    assert (!wsr_bench_pub_ready (self));
    wsr_bench_pub_flush (self);
    char text [8192];
    size_t len = s_read_requests (self, epoll_fd, peer, text, sizeof text, 4);
    assert (len > 0);
    //  The first one, whole: head, then a JSON body with the payload
    assert (strncmp (text, "POST /api/publish HTTP/1.1\r\n", 28) == 0);
    assert (strstr (text, "\r\nAuthorization: apikey pub-key\r\n"));
    const char *body = strstr (text, "\r\n\r\n") + 4;
    size_t length = 0;
    const char *value = wsr_bench_header_find (text, (size_t) (body - text), "content-length",
                                               &length);
    assert (value);
    size_t body_len = (size_t) atoi (value);
    json_t *json = json_loadb (body, body_len, 0, NULL);
    assert (json && streq (json_string_value (json_object_get (json, "user")), "u0"));
    const char *data = json_string_value (json_object_get (json, "data"));
    assert (data && strlen (data) == 64);
    char kind;
    uint32_t seq, target;
    uint64_t ts;
    assert (wsr_bench_payload_read ((const uint8_t *) data, &kind, &seq, &ts, &target));
    assert (kind == 'W' && seq == 0 && target == 0);
    json_decref (json);
    assert (strstr (body + body_len, "{\"user\":\"u1\",\"data\":\"#M:0000000001:"));

    //  Answers in order, the last one split and closing the connection
    const char *answers = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                          "HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n"
                          "HTTP/1.1 204 No Content\r\n\r\n"
                          "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Len";
    assert (send (peer, answers, strlen (answers), 0) == (ssize_t) strlen (answers));
    int64_t deadline = wsr_bench_now () + 5 * WSR_BENCH_SEC;
    while (wsr_bench_pub_accepted (self, 'F') == 0 && wsr_bench_now () < deadline)
        s_pump (self, epoll_fd, 5);
    assert (!wsr_bench_pub_idle (self));                //  the fourth is unanswered
    const char *rest = "gth: 0\r\n\r\n";
    assert (send (peer, rest, strlen (rest), 0) == (ssize_t) strlen (rest));
    while (!wsr_bench_pub_idle (self) && wsr_bench_now () < deadline)
        s_pump (self, epoll_fd, 5);
    assert (wsr_bench_pub_idle (self));
    assert (wsr_bench_pub_accepted (self, 'W') == 1 && wsr_bench_pub_accepted (self, 'F') == 1);
    assert (wsr_bench_pub_accepted (self, 'M') == 1 && wsr_bench_pub_errors (self, 'M') == 1);
    close (peer);

    //  Closed by the server: a new connection after the back-off; one more
    //  request, lost with its connection
    assert (!wsr_bench_pub_ready (self));
    deadline = wsr_bench_now () + 5 * WSR_BENCH_SEC;
    while (!wsr_bench_pub_ready (self) && wsr_bench_now () < deadline)
        usleep (10000);
    wsr_bench_pub_send (self, WSR_BENCH_KIND_MEASURED, 3, 1);
    wsr_bench_pub_flush (self);
    peer = accept (listener, NULL, NULL);
    assert (peer >= 0);
    len = s_read_requests (self, epoll_fd, peer, text, sizeof text, 1);
    assert (strstr (text, "#M:0000000003:"));
    close (peer);
    while (!wsr_bench_pub_idle (self) && wsr_bench_now () < deadline)
        s_pump (self, epoll_fd, 5);
    assert (wsr_bench_pub_errors (self, 'M') == 2);

    //  Nothing taken for too long: stalled, never ready again
    close (listener);
    assert (!wsr_bench_pub_ready (self));
    assert (!wsr_bench_pub_stalled (self));
    wsr_bench_pub_watch (self, wsr_bench_now () + WSR_BENCH_PUB_STALL_NS + WSR_BENCH_SEC);
    assert (wsr_bench_pub_stalled (self) && !wsr_bench_pub_ready (self));

    json_t *report = wsr_bench_pub_report (self);
    json_t *status = json_object_get (report, "http_status");
    assert (json_integer_value (json_object_get (status, "200")) == 2);
    assert (json_integer_value (json_object_get (status, "503")) == 1);
    assert (json_integer_value (json_object_get (status, "204")) == 1);
    assert (json_integer_value (json_object_get (report, "sent_all_kinds")) == 5);
    assert (json_integer_value (json_object_get (report, "lost_in_flight")) == 1);
    assert (json_integer_value (json_object_get (report, "connects")) == 2);
    assert (json_integer_value (json_object_get (report, "warmup_accepted")) == 1);
    assert (json_integer_value (json_object_get (report, "final_errors")) == 0);
    assert (json_is_true (json_object_get (report, "stalled")));
    assert (!json_object_get (report, "redis_no_subscriber"));
    json_decref (report);
    wsr_bench_pub_destroy (&self);
    assert (!self);
    close (epoll_fd);
    wsr_bench_ident_destroy (&ident);
}
