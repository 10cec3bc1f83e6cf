//  wsr_upstream_http — non-blocking HTTP POSTs to the upstream backend (libcurl multi)
//
//  The bridge actor turns client actions into HTTP calls to the backend
//  (WEBSOCKET_UPSTREAM_URL) and sends each response body back to the one
//  session that asked. This class is the HTTP part. It never blocks the
//  bridge's loop: libcurl's multi interface runs inside the actor's own
//  zmq_poll. CURLMOPT_SOCKETFUNCTION tells us which fds curl wants watched,
//  CURLMOPT_TIMERFUNCTION when it wants to be woken, and
//  curl_multi_socket_action does the work. One turn of the bridge's loop:
//
//      n = wsr_upstream_http_pollitems (http, items + mine, slots);
//      timeout = min (my timeout, wsr_upstream_http_timeout (http));
//      zmq_poll (items, mine + n, timeout);
//      ... handle my own sockets ...
//      wsr_upstream_http_process (http, items + mine, n);
//
//  Every accepted request ends in exactly one call of done (from process),
//  unless the client is destroyed first. Limits: max_inflight transfers at
//  once, max_queued more waiting in a FIFO, timeout_ms per transfer (from its
//  start, not from submit), max_response bytes of response body. curl's
//  connection cache lives in the multi handle, so keep-alive connections are
//  reused from one request to the next. Redirects are not followed. Bodies
//  are never logged.
//
//  Owns: the multi handle; every request (easy handle, header list, body
//  copy, response buffer) until done has returned; the table of watched
//  sockets (bounded by curl's own connections: about two per transfer).

#include "wsr_classes.h"
#include "wsr_upstream_http.h"
#include <curl/curl.h>
#include <pthread.h>
#include <poll.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/socket.h>

typedef struct _s_request_t s_request_t;

//  One POST, queued or running.
struct _s_request_t {
    s_request_t *prev;              //  active list: previous (unused in the queue)
    s_request_t *next;              //  active list or queue: next
    wsr_upstream_http_t *owner;     //  the client (limits for the write callback)
    CURL *easy;                     //  transfer, NULL while queued
    struct curl_slist *headers;     //  Content-Type, and no Expect
    uint64_t tag;                   //  caller's tag
    char *reply_to;                 //  caller's string, or NULL
    uint8_t *body;                  //  request body copy, NULL if empty
    size_t body_size;               //  request body bytes
    uint8_t *resp;                  //  response body so far
    size_t resp_size;               //  bytes in resp (<= max_response)
    size_t resp_alloc;              //  bytes allocated for resp
    bool too_large;                 //  aborted: response over max_response
};

//  A socket curl wants watched.
typedef struct {
    curl_socket_t fd;               //  the socket
    int what;                       //  CURL_POLL_IN, _OUT or _INOUT
} s_watch_t;

struct _wsr_upstream_http_t {
    char *url;                      //  backend URL
    int max_inflight;               //  transfers at once
    size_t max_queued;              //  waiting requests at most
    int timeout_ms;                 //  per transfer
    size_t max_response;            //  response body bytes at most
    wsr_upstream_http_done_fn *done;    //  result callback
    void *arg;                      //  its argument (not owned)
    CURLM *multi;                   //  multi handle, holds the connection cache
    s_request_t *active;            //  running transfers, doubly linked
    size_t inflight;                //  entries in active
    s_request_t *queue_head;        //  oldest waiting request
    s_request_t *queue_tail;        //  newest waiting request
    size_t queued;                  //  entries in the queue
    s_watch_t *watches;             //  sockets curl wants watched
    size_t watch_count;             //  entries in use
    size_t watch_alloc;             //  entries allocated
    size_t watch_rotate;            //  first watch to report when slots are short
    bool truncated;                 //  last pollitems could not report them all
    int64_t deadline;               //  curl's timer (monotonic ms), or -1
    wsr_upstream_http_stats_t stats;    //  counters
};

//  curl_global_init is not thread-safe in every build; the lead's main may
//  call it too, which is fine (it is reference counted).
static pthread_once_t s_curl_once = PTHREAD_ONCE_INIT;
static CURLcode s_curl_status = CURLE_FAILED_INIT;

static void
s_curl_init (void)
{
    s_curl_status = curl_global_init (CURL_GLOBAL_DEFAULT);
}

//  --------------------------------------------------------------------------
//  Index of fd in the watch table, or watch_count if absent. The table holds
//  a few sockets per transfer, so a scan is cheap.
static size_t
s_watch_find (wsr_upstream_http_t *self, curl_socket_t fd)
{
    size_t index;
    for (index = 0; index < self->watch_count; index++)
        if (self->watches [index].fd == fd)
            break;
    return index;
}

//  --------------------------------------------------------------------------
//  CURLMOPT_SOCKETFUNCTION: curl starts, changes or stops watching a socket.
//  Runs inside curl calls, so it only updates the table.
static int
s_socket_cb (CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    (void) easy;
    (void) socketp;
    wsr_upstream_http_t *self = (wsr_upstream_http_t *) userp;
    size_t index = s_watch_find (self, fd);
    if (what == CURL_POLL_REMOVE) {
        if (index < self->watch_count)
            self->watches [index] = self->watches [--self->watch_count];
    }
    else {
        if (index == self->watch_count) {
            if (self->watch_count == self->watch_alloc) {
                self->watch_alloc = self->watch_alloc? self->watch_alloc * 2: 8;
                self->watches = (s_watch_t *) realloc (self->watches,
                                                       self->watch_alloc * sizeof (s_watch_t));
                assert (self->watches);
            }
            self->watches [index].fd = fd;
            self->watch_count++;
        }
        self->watches [index].what = what;
    }
    return 0;
}

//  --------------------------------------------------------------------------
//  Deadline in monotonic ms for a curl timeout. One ms extra because our
//  clock truncates: waking up early would make curl find nothing due, and
//  it would not tell us the (unchanged) timeout again.
static int64_t
s_deadline (long timeout_ms)
{
    return wsr_util_mono_ms () + timeout_ms + (timeout_ms > 0? 1: 0);
}

//  --------------------------------------------------------------------------
//  CURLMOPT_TIMERFUNCTION: curl wants socket_action (CURL_SOCKET_TIMEOUT)
//  after timeout_ms (-1: cancel).
static int
s_timer_cb (CURLM *multi, long timeout_ms, void *userp)
{
    (void) multi;
    wsr_upstream_http_t *self = (wsr_upstream_http_t *) userp;
    self->deadline = timeout_ms < 0? -1: s_deadline (timeout_ms);
    return 0;
}

//  --------------------------------------------------------------------------
//  CURLOPT_WRITEFUNCTION: collect the response body, up to max_response.
//  Returning less than we were given makes curl abort with CURLE_WRITE_ERROR.
static size_t
s_write_cb (char *data, size_t size, size_t nmemb, void *userp)
{
    s_request_t *req = (s_request_t *) userp;
    size_t max_response = req->owner->max_response;
    size_t bytes = size * nmemb;
    if (bytes > max_response - req->resp_size) {
        req->too_large = true;
        return 0;
    }
    if (bytes > req->resp_alloc - req->resp_size) {
        size_t alloc = req->resp_alloc? req->resp_alloc: WSR_UPSTREAM_HTTP_FIRST_BUFFER;
        while (alloc < req->resp_size + bytes && alloc < max_response)
            alloc *= 2;
        if (alloc > max_response)
            alloc = max_response;
        req->resp = (uint8_t *) realloc (req->resp, alloc);
        assert (req->resp);
        req->resp_alloc = alloc;
    }
    memcpy (req->resp + req->resp_size, data, bytes);
    req->resp_size += bytes;
    return bytes;
}

//  --------------------------------------------------------------------------
//  A request with copies of everything the caller gave.
static s_request_t *
s_request_new (wsr_upstream_http_t *self, uint64_t tag, const char *reply_to,
               const char *content_type, const uint8_t *body, size_t size)
{
    s_request_t *req = (s_request_t *) zmalloc (sizeof (s_request_t));
    assert (req);
    req->owner = self;
    req->tag = tag;
    if (reply_to) {
        req->reply_to = strdup (reply_to);
        assert (req->reply_to);
    }
    if (size) {
        req->body = (uint8_t *) malloc (size);
        assert (req->body);
        memcpy (req->body, body, size);
    }
    req->body_size = size;
    char *line = zsys_sprintf ("Content-Type: %s", content_type);
    assert (line);
    req->headers = curl_slist_append (NULL, line);
    zstr_free (&line);
    assert (req->headers);
    //  No "Expect: 100-continue" round trip before larger bodies
    req->headers = curl_slist_append (req->headers, "Expect:");
    assert (req->headers);
    return req;
}

//  --------------------------------------------------------------------------
//  Free a request; its easy handle must no longer be in the multi handle.
static void
s_request_destroy (s_request_t **req_p)
{
    s_request_t *req = *req_p;
    if (req) {
        if (req->easy)
            curl_easy_cleanup (req->easy);
        curl_slist_free_all (req->headers);
        free (req->reply_to);
        free (req->body);
        free (req->resp);
        free (req);
        *req_p = NULL;
    }
}

//  --------------------------------------------------------------------------
//  Start a transfer for req and add it to the active list.
static void
s_start (wsr_upstream_http_t *self, s_request_t *req)
{
    CURL *easy = curl_easy_init ();
    assert (easy);                  //  out of memory
    req->easy = easy;
    //  A failing setopt here is a programming error or out of memory
    int rc = CURLE_OK;
    rc |= curl_easy_setopt (easy, CURLOPT_URL, self->url);
    rc |= curl_easy_setopt (easy, CURLOPT_PRIVATE, (char *) req);
    rc |= curl_easy_setopt (easy, CURLOPT_NOSIGNAL, 1L);
    rc |= curl_easy_setopt (easy, CURLOPT_TIMEOUT_MS, (long) self->timeout_ms);
    rc |= curl_easy_setopt (easy, CURLOPT_USERAGENT, WSR_UPSTREAM_HTTP_USER_AGENT);
    rc |= curl_easy_setopt (easy, CURLOPT_FOLLOWLOCATION, 0L);
    rc |= curl_easy_setopt (easy, CURLOPT_PROTOCOLS_STR, "http,https");
    rc |= curl_easy_setopt (easy, CURLOPT_POST, 1L);
    rc |= curl_easy_setopt (easy, CURLOPT_POSTFIELDS, req->body? (char *) req->body: "");
    rc |= curl_easy_setopt (easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) req->body_size);
    rc |= curl_easy_setopt (easy, CURLOPT_HTTPHEADER, req->headers);
    rc |= curl_easy_setopt (easy, CURLOPT_WRITEFUNCTION, s_write_cb);
    rc |= curl_easy_setopt (easy, CURLOPT_WRITEDATA, req);
    //  Refuses early when Content-Length says too much (0 would mean no limit)
    if (self->max_response > 0)
        rc |= curl_easy_setopt (easy, CURLOPT_MAXFILESIZE_LARGE,
                                (curl_off_t) self->max_response);
    assert (rc == CURLE_OK);
    CURLMcode mrc = curl_multi_add_handle (self->multi, easy);
    assert (mrc == CURLM_OK);       //  only fails when called from a curl callback
    req->prev = NULL;
    req->next = self->active;
    if (self->active)
        self->active->prev = req;
    self->active = req;
    self->inflight++;
}

//  --------------------------------------------------------------------------
//  Take req out of the multi handle and the active list.
static void
s_stop (wsr_upstream_http_t *self, s_request_t *req)
{
    CURLMcode rc = curl_multi_remove_handle (self->multi, req->easy);
    if (rc != CURLM_OK)
        zsys_warning ("upstream-http: curl_multi_remove_handle: %s", curl_multi_strerror (rc));
    if (req->prev)
        req->prev->next = req->next;
    else
        self->active = req->next;
    if (req->next)
        req->next->prev = req->prev;
    req->prev = req->next = NULL;
    self->inflight--;
}

//  --------------------------------------------------------------------------
//  Start waiting requests while there are free transfer slots.
static void
s_start_queued (wsr_upstream_http_t *self)
{
    while (self->queue_head && self->inflight < (size_t) self->max_inflight) {
        s_request_t *req = self->queue_head;
        self->queue_head = req->next;
        if (!self->queue_head)
            self->queue_tail = NULL;
        self->queued--;
        req->next = NULL;
        s_start (self, req);
    }
}

//  --------------------------------------------------------------------------
//  Let curl work on one socket, or on its timers (CURL_SOCKET_TIMEOUT).
static void
s_action (wsr_upstream_http_t *self, curl_socket_t fd, int mask)
{
    int running = 0;
    CURLMcode rc = curl_multi_socket_action (self->multi, fd, mask, &running);
    if (rc != CURLM_OK)
        zsys_warning ("upstream-http: curl_multi_socket_action: %s", curl_multi_strerror (rc));
}

//  --------------------------------------------------------------------------
//  The stable error text for a failed transfer, counting it.
static const char *
s_error (wsr_upstream_http_t *self, s_request_t *req, CURLcode result)
{
    if (result == CURLE_OPERATION_TIMEDOUT) {
        self->stats.timeouts++;
        return "timeout";
    }
    else
    if (result == CURLE_COULDNT_CONNECT
    ||  result == CURLE_COULDNT_RESOLVE_HOST
    ||  result == CURLE_COULDNT_RESOLVE_PROXY) {
        self->stats.unreachable++;
        return "backend unreachable";
    }
    else
    if (result == CURLE_FILESIZE_EXCEEDED
    || (result == CURLE_WRITE_ERROR && req->too_large)) {
        self->stats.too_large++;
        return "response too large";
    }
    else
        return "backend error";
}

//  --------------------------------------------------------------------------
//  Hand every finished transfer to done. Waiting requests start before done
//  runs, so a submit from inside done cannot overtake the queue.
static void
s_reap (wsr_upstream_http_t *self)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read (self->multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        //  msg is invalid once the handle is removed: copy what we need
        CURL *easy = msg->easy_handle;
        CURLcode result = msg->data.result;
        char *priv = NULL;
        CURLcode rc = curl_easy_getinfo (easy, CURLINFO_PRIVATE, &priv);
        assert (rc == CURLE_OK && priv);
        s_request_t *req = (s_request_t *) priv;
        assert (req->easy == easy);
        long code = 0;
        if (result == CURLE_OK
        &&  curl_easy_getinfo (easy, CURLINFO_RESPONSE_CODE, &code) != CURLE_OK)
            code = 0;
        s_stop (self, req);
        s_start_queued (self);

        int status = 0;
        const char *error = NULL;
        if (result == CURLE_OK && code >= 100 && code <= 999) {
            status = (int) code;
            self->stats.completed++;
        }
        else {
            error = s_error (self, req, result);
            self->stats.failed++;
            wsr_debug ("upstream-http: request %" PRIu64 " failed: %s (%s)",
                       req->tag, error, curl_easy_strerror (result));
        }
        self->done (self->arg, req->tag, req->reply_to, status, error,
                    status && req->resp_size? req->resp: NULL,
                    status? req->resp_size: 0);
        s_request_destroy (&req);
    }
}

//  --------------------------------------------------------------------------
//  Create a client for url. Invalid configuration is reported, not asserted.
wsr_upstream_http_t *
wsr_upstream_http_new (const char *url, int max_inflight, size_t max_queued,
                       int timeout_ms, size_t max_response,
                       wsr_upstream_http_done_fn *done, void *arg)
{
    assert (done);
    if (!url
    || (strncasecmp (url, "http://", 7) && strncasecmp (url, "https://", 8))) {
        zsys_error ("upstream-http: URL must start with http:// or https://");
        return NULL;
    }
    if (max_inflight < 1 || timeout_ms < 1) {
        zsys_error ("upstream-http: max_inflight and timeout_ms must be at least 1");
        return NULL;
    }
    pthread_once (&s_curl_once, s_curl_init);
    if (s_curl_status != CURLE_OK) {
        zsys_error ("upstream-http: curl_global_init: %s", curl_easy_strerror (s_curl_status));
        return NULL;
    }
    wsr_upstream_http_t *self = (wsr_upstream_http_t *) zmalloc (sizeof (wsr_upstream_http_t));
    assert (self);
    self->url = strdup (url);
    assert (self->url);
    self->max_inflight = max_inflight;
    self->max_queued = max_queued;
    self->timeout_ms = timeout_ms;
    self->max_response = max_response;
    self->done = done;
    self->arg = arg;
    self->deadline = -1;
    self->multi = curl_multi_init ();
    if (!self->multi) {
        zsys_error ("upstream-http: curl_multi_init failed");
        wsr_upstream_http_destroy (&self);
        return NULL;
    }
    int rc = CURLM_OK;
    rc |= curl_multi_setopt (self->multi, CURLMOPT_SOCKETFUNCTION, s_socket_cb);
    rc |= curl_multi_setopt (self->multi, CURLMOPT_SOCKETDATA, self);
    rc |= curl_multi_setopt (self->multi, CURLMOPT_TIMERFUNCTION, s_timer_cb);
    rc |= curl_multi_setopt (self->multi, CURLMOPT_TIMERDATA, self);
    //  Keep as many idle connections as we can have busy ones
    rc |= curl_multi_setopt (self->multi, CURLMOPT_MAXCONNECTS, (long) max_inflight);
    assert (rc == CURLM_OK);
    return self;
}

//  --------------------------------------------------------------------------
//  Destroy the client. Running and waiting requests are dropped silently:
//  whoever destroys the client is not interested in their results.
void
wsr_upstream_http_destroy (wsr_upstream_http_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        wsr_upstream_http_t *self = *self_p;
        while (self->active) {
            s_request_t *req = self->active;
            s_stop (self, req);
            s_request_destroy (&req);
            self->stats.aborted++;
        }
        while (self->queue_head) {
            s_request_t *req = self->queue_head;
            self->queue_head = req->next;
            s_request_destroy (&req);
            self->stats.aborted++;
        }
        //  Closing cached connections still calls s_socket_cb
        if (self->multi)
            curl_multi_cleanup (self->multi);
        if (self->stats.aborted)
            wsr_debug ("upstream-http: %" PRIu64 " requests dropped at exit",
                       self->stats.aborted);
        free (self->watches);
        free (self->url);
        free (self);
        *self_p = NULL;
    }
}

//  --------------------------------------------------------------------------
//  Accept a request, bounded: start it, queue it, or refuse it.
int
wsr_upstream_http_submit (wsr_upstream_http_t *self, uint64_t tag, const char *reply_to,
                          const char *content_type, const uint8_t *body, size_t size)
{
    assert (self);
    assert (content_type);
    assert (!strchr (content_type, '\r') && !strchr (content_type, '\n'));
    assert (body || size == 0);
    //  Waiting requests exist only while all slots are busy (s_reap refills
    //  them first); the queue test keeps FIFO order should that ever change
    bool start = self->inflight < (size_t) self->max_inflight && !self->queue_head;
    if (!start && self->queued >= self->max_queued) {
        self->stats.rejected++;
        return -1;
    }
    s_request_t *req = s_request_new (self, tag, reply_to, content_type, body, size);
    self->stats.submitted++;
    if (start)
        s_start (self, req);
    else {
        if (self->queue_tail)
            self->queue_tail->next = req;
        else
            self->queue_head = req;
        self->queue_tail = req;
        self->queued++;
    }
    return 0;
}

//  --------------------------------------------------------------------------
//  Report the sockets curl watches. If there are more than slots, report a
//  different window each time so that every socket gets polled.
int
wsr_upstream_http_pollitems (wsr_upstream_http_t *self, zmq_pollitem_t *items, int max)
{
    assert (self);
    assert (max >= 0);
    assert (items || max == 0);
    size_t count = self->watch_count;
    size_t slots = (size_t) max < count? (size_t) max: count;
    size_t first = 0;
    self->truncated = slots < count;
    if (self->truncated) {
        first = self->watch_rotate % count;
        self->watch_rotate = first + slots;
    }
    for (size_t index = 0; index < slots; index++) {
        s_watch_t *watch = &self->watches [(first + index) % count];
        items [index].socket = NULL;
        items [index].fd = watch->fd;
        items [index].events = 0;
        if (watch->what == CURL_POLL_IN || watch->what == CURL_POLL_INOUT)
            items [index].events |= ZMQ_POLLIN;
        if (watch->what == CURL_POLL_OUT || watch->what == CURL_POLL_INOUT)
            items [index].events |= ZMQ_POLLOUT;
        items [index].revents = 0;
    }
    return (int) slots;
}

//  --------------------------------------------------------------------------
//  Time until curl wants a timeout action; capped while sockets take turns.
long
wsr_upstream_http_timeout (wsr_upstream_http_t *self)
{
    assert (self);
    long timeout = -1;
    if (self->deadline >= 0) {
        int64_t left = self->deadline - wsr_util_mono_ms ();
        timeout = left > 0? (long) left: 0;
    }
    if (self->truncated && (timeout < 0 || timeout > WSR_UPSTREAM_HTTP_TRUNCATED_MS))
        timeout = WSR_UPSTREAM_HTTP_TRUNCATED_MS;
    return timeout;
}

//  --------------------------------------------------------------------------
//  Feed poll results and due timers to curl, then report finished requests.
void
wsr_upstream_http_process (wsr_upstream_http_t *self, zmq_pollitem_t *items, int count)
{
    assert (self);
    assert (items || count == 0);
    for (int index = 0; index < count; index++) {
        zmq_pollitem_t *item = &items [index];
        if (item->socket || !item->revents)
            continue;
        //  An earlier action may have closed this socket (and a new
        //  connection may even have reused the number): skip unknown ones
        if (s_watch_find (self, item->fd) == self->watch_count)
            continue;
        int mask = 0;
        if (item->revents & ZMQ_POLLIN)
            mask |= CURL_CSELECT_IN;
        if (item->revents & ZMQ_POLLOUT)
            mask |= CURL_CSELECT_OUT;
        if (item->revents & ZMQ_POLLERR)
            mask |= CURL_CSELECT_ERR;
        s_action (self, item->fd, mask);
    }
    if (self->deadline >= 0 && wsr_util_mono_ms () >= self->deadline) {
        self->deadline = -1;
        s_action (self, CURL_SOCKET_TIMEOUT, 0);
    }
    s_reap (self);
    //  Belt and braces: transfers running but no timer means a timer update
    //  was lost; ask curl directly (allowed outside its callbacks)
    if (self->deadline < 0 && self->inflight > 0) {
        long timeout = -1;
        if (curl_multi_timeout (self->multi, &timeout) == CURLM_OK && timeout >= 0)
            self->deadline = s_deadline (timeout);
    }
}

//  --------------------------------------------------------------------------
//  Transfers running now.
size_t
wsr_upstream_http_inflight (wsr_upstream_http_t *self)
{
    assert (self);
    return self->inflight;
}

//  --------------------------------------------------------------------------
//  Requests waiting for a slot.
size_t
wsr_upstream_http_queued (wsr_upstream_http_t *self)
{
    assert (self);
    return self->queued;
}

//  --------------------------------------------------------------------------
//  Snapshot of the counters.
void
wsr_upstream_http_stats (wsr_upstream_http_t *self, wsr_upstream_http_stats_t *stats)
{
    assert (self);
    assert (stats);
    *stats = self->stats;
}


//  --------------------------------------------------------------------------
//  Selftest: a small blocking HTTP server on 127.0.0.1 (one thread per
//  connection, Connection: close) with canned answers by path, driven by a
//  zmq_poll loop exactly like the bridge's.

#define S_TEST_MAX_CONNS        128         //  connections the server serves in all
#define S_TEST_MAX_REQUEST      (2 * 1024 * 1024)   //  request bytes the server reads
#define S_TEST_EXPECT_BODY      (1536 * 1024)   //  over curl's Expect: 100-continue threshold
#define S_TEST_BIG              (2 * 1024 * 1024)   //  /big and /bigstream bytes
#define S_TEST_SLOW_MS          2000        //  /slow answers after this
#define S_TEST_SLOWISH_MS       200         //  /slowish answers after this...
#define S_TEST_WAIT_MS          1000        //  ...or this if the body starts with 'W'
#define S_TEST_MAX_CALLS        16          //  results a test context records
#define S_TEST_SLOTS            16          //  pollitem slots the test loop offers
#define S_TEST_LIMIT_MS         8000        //  a test step fails after this
#define S_TEST_MAX_RESPONSE     (64 * 1024)

typedef struct {
    int listen_fd;                  //  listening socket
    int stop [2];                   //  pipe: readable once the test ends
    int port;                       //  bound port
    pthread_t thread;               //  accept thread
    pthread_t conns [S_TEST_MAX_CONNS]; //  connection threads, joined at stop
    int conn_count;                 //  entries in conns (accept thread only)
    pthread_mutex_t lock;           //  guards the fields below
    int requests;                   //  requests read completely
    int slowish_now;                //  /slowish requests being worked on
    int slowish_max;                //  highest slowish_now seen
    char order [S_TEST_MAX_CONNS];  //  first byte of /slowish bodies, in arrival order
    int order_count;                //  entries in order
} s_server_t;

typedef struct {
    s_server_t *server;             //  the server
    int fd;                         //  the connection (owned)
} s_conn_t;

//  Wait until fd (ignored if -1) is readable: 1, the stop pipe is: -1, or
//  timeout_ms passed: 0.
static int
s_wait (int fd, int stop, int timeout_ms)
{
    struct pollfd fds [2] = { { stop, POLLIN, 0 }, { fd, POLLIN, 0 } };
    while (true) {
        int rc = poll (fds, 2, timeout_ms);
        if (rc < 0 && errno == EINTR)
            continue;
        assert (rc >= 0);
        if (fds [0].revents)
            return -1;
        return rc > 0? 1: 0;
    }
}

static int
s_send_all (int fd, const void *data, size_t size)
{
    const char *next = (const char *) data;
    while (size) {
        ssize_t rc = send (fd, next, size, MSG_NOSIGNAL);
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc <= 0)
            return -1;          //  the client gave up: fine
        next += rc;
        size -= (size_t) rc;
    }
    return 0;
}

//  Send a response; with_length false delimits the body by closing.
static void
s_respond (int fd, int status, const char *extra, const void *body, size_t size,
           bool with_length)
{
    char length [64] = "";
    if (with_length)
        snprintf (length, sizeof length, "Content-Length: %zu\r\n", size);
    char *head = zsys_sprintf ("HTTP/1.1 %d Canned\r\nConnection: close\r\n"
                               "Content-Type: application/octet-stream\r\n%s%s\r\n",
                               status, length, extra? extra: "");
    assert (head);
    if (s_send_all (fd, head, strlen (head)) == 0 && size)
        s_send_all (fd, body, size);
    zstr_free (&head);
}

//  Copy header name's value (case-insensitive name) into value, or "-".
static void
s_header (const char *head, size_t head_size, const char *name, char *value, size_t max)
{
    snprintf (value, max, "-");
    size_t name_len = strlen (name);
    const char *line = (const char *) memmem (head, head_size, "\r\n", 2);
    while (line && line + 2 < head + head_size) {
        line += 2;
        const char *eol = (const char *) memmem (line, head + head_size - line, "\r\n", 2);
        if (!eol)
            break;
        if ((size_t) (eol - line) > name_len && line [name_len] == ':'
        &&  strncasecmp (line, name, name_len) == 0) {
            const char *start = line + name_len + 1;
            while (*start == ' ')
                start++;
            snprintf (value, max, "%.*s", (int) (eol - start), start);
            return;
        }
        line = eol;
    }
}

static void *
s_conn_thread (void *args)
{
    s_conn_t *conn = (s_conn_t *) args;
    s_server_t *server = conn->server;
    int fd = conn->fd;
    free (conn);
    char *buf = (char *) malloc (S_TEST_MAX_REQUEST + 1);  //  + NUL for sscanf
    assert (buf);
    size_t size = 0;
    size_t head_size = 0;           //  request line and headers incl. blank line
    size_t need = 0;                //  head_size + Content-Length
    while (!head_size || size < need) {
        if (size == S_TEST_MAX_REQUEST || s_wait (fd, server->stop [0], -1) != 1)
            goto done;
        ssize_t rc = recv (fd, buf + size, S_TEST_MAX_REQUEST - size, 0);
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc <= 0)
            goto done;
        size += (size_t) rc;
        buf [size] = 0;
        char *end = head_size? NULL: (char *) memmem (buf, size, "\r\n\r\n", 4);
        if (end) {
            head_size = (size_t) (end - buf) + 4;
            char length [32];
            s_header (buf, head_size, "Content-Length", length, sizeof length);
            need = head_size + (size_t) atol (length);
        }
    }
    char path [64] = "";
    sscanf (buf, "%*s %63s", path);
    const char *body = buf + head_size;
    size_t body_size = need - head_size;
    pthread_mutex_lock (&server->lock);
    server->requests++;
    pthread_mutex_unlock (&server->lock);

    if (streq (path, "/echo"))
        s_respond (fd, 200, NULL, body, body_size, true);
    else
    if (streq (path, "/info")) {
        char ctype [64], agent [64], expect [64], answer [256];
        s_header (buf, head_size, "Content-Type", ctype, sizeof ctype);
        s_header (buf, head_size, "User-Agent", agent, sizeof agent);
        s_header (buf, head_size, "Expect", expect, sizeof expect);
        snprintf (answer, sizeof answer, "%.4s|%s|%s|%s|%zu",
                  buf, ctype, agent, expect, body_size);
        s_respond (fd, 200, NULL, answer, strlen (answer), true);
    }
    else
    if (streq (path, "/slow")) {
        if (s_wait (-1, server->stop [0], S_TEST_SLOW_MS) == 0)
            s_respond (fd, 200, NULL, "late", 4, true);
    }
    else
    if (streq (path, "/slowish")) {
        pthread_mutex_lock (&server->lock);
        server->slowish_now++;
        if (server->slowish_max < server->slowish_now)
            server->slowish_max = server->slowish_now;
        if (server->order_count < S_TEST_MAX_CONNS && body_size)
            server->order [server->order_count++] = body [0];
        pthread_mutex_unlock (&server->lock);
        int delay = body_size && body [0] == 'W'? S_TEST_WAIT_MS: S_TEST_SLOWISH_MS;
        int rc = s_wait (-1, server->stop [0], delay);
        pthread_mutex_lock (&server->lock);
        server->slowish_now--;
        pthread_mutex_unlock (&server->lock);
        if (rc == 0)
            s_respond (fd, 200, NULL, body, body_size, true);
    }
    else
    if (streq (path, "/big") || streq (path, "/bigstream")) {
        char *big = (char *) malloc (S_TEST_BIG);
        assert (big);
        memset (big, 'x', S_TEST_BIG);
        s_respond (fd, 200, NULL, big, S_TEST_BIG, streq (path, "/big"));
        free (big);
    }
    else
    if (streq (path, "/500"))
        s_respond (fd, 500, NULL, "oops", 4, true);
    else
    if (streq (path, "/redirect"))
        s_respond (fd, 302, "Location: /echo\r\n", "moved", 5, true);
    else
        s_respond (fd, 404, NULL, "", 0, true);
done:
    free (buf);
    close (fd);
    return NULL;
}

static void *
s_server_thread (void *args)
{
    s_server_t *server = (s_server_t *) args;
    while (s_wait (server->listen_fd, server->stop [0], -1) == 1) {
        int fd = accept (server->listen_fd, NULL, NULL);
        if (fd < 0)
            continue;
        s_conn_t *conn = (s_conn_t *) malloc (sizeof (s_conn_t));
        assert (conn);
        conn->server = server;
        conn->fd = fd;
        if (server->conn_count == S_TEST_MAX_CONNS
        ||  pthread_create (&server->conns [server->conn_count], NULL, s_conn_thread, conn)) {
            close (fd);
            free (conn);
        }
        else
            server->conn_count++;
    }
    for (int index = 0; index < server->conn_count; index++)
        pthread_join (server->conns [index], NULL);
    return NULL;
}

static s_server_t *
s_server_start (void)
{
    s_server_t *server = (s_server_t *) zmalloc (sizeof (s_server_t));
    assert (server);
    pthread_mutex_init (&server->lock, NULL);
    assert (pipe (server->stop) == 0);
    server->listen_fd = socket (AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert (server->listen_fd >= 0);
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = 0 };
    addr.sin_addr.s_addr = htonl (INADDR_LOOPBACK);
    assert (bind (server->listen_fd, (struct sockaddr *) &addr, sizeof addr) == 0);
    assert (listen (server->listen_fd, 64) == 0);
    socklen_t addr_len = sizeof addr;
    assert (getsockname (server->listen_fd, (struct sockaddr *) &addr, &addr_len) == 0);
    server->port = ntohs (addr.sin_port);
    assert (pthread_create (&server->thread, NULL, s_server_thread, server) == 0);
    return server;
}

static void
s_server_stop (s_server_t **server_p)
{
    s_server_t *server = *server_p;
    assert (write (server->stop [1], "x", 1) == 1);
    pthread_join (server->thread, NULL);
    close (server->listen_fd);
    close (server->stop [0]);
    close (server->stop [1]);
    pthread_mutex_destroy (&server->lock);
    free (server);
    *server_p = NULL;
}

static int
s_server_requests (s_server_t *server)
{
    pthread_mutex_lock (&server->lock);
    int requests = server->requests;
    pthread_mutex_unlock (&server->lock);
    return requests;
}

//  What done saw.
typedef struct {
    wsr_upstream_http_t *client;    //  checked from inside done, or NULL
    size_t max_inflight;            //  done asserts inflight stays within it
    uint64_t resubmit_tag;          //  done submits tag + 1 on this tag (0: never)
    int calls;                      //  done calls so far
    uint64_t tag [S_TEST_MAX_CALLS];
    char reply_to [S_TEST_MAX_CALLS][32];
    int status [S_TEST_MAX_CALLS];
    char error [S_TEST_MAX_CALLS][32];
    uint8_t *body [S_TEST_MAX_CALLS];   //  copies, freed by s_ctx_reset
    size_t body_size [S_TEST_MAX_CALLS];
} s_ctx_t;

static void
s_ctx_reset (s_ctx_t *ctx)
{
    for (int index = 0; index < ctx->calls; index++)
        free (ctx->body [index]);
    memset (ctx, 0, sizeof (s_ctx_t));
}

static void
s_test_done (void *arg, uint64_t tag, const char *reply_to, int status, const char *error,
             const uint8_t *body, size_t body_size)
{
    s_ctx_t *ctx = (s_ctx_t *) arg;
    assert (ctx->calls < S_TEST_MAX_CALLS);
    //  Exactly one of status and error
    assert ((status == 0) == (error != NULL));
    assert (body || body_size == 0);
    if (ctx->client)
        assert (wsr_upstream_http_inflight (ctx->client) <= ctx->max_inflight);
    int index = ctx->calls++;
    ctx->tag [index] = tag;
    snprintf (ctx->reply_to [index], sizeof ctx->reply_to [index], "%s",
              reply_to? reply_to: "(null)");
    ctx->status [index] = status;
    snprintf (ctx->error [index], sizeof ctx->error [index], "%s", error? error: "");
    ctx->body [index] = (uint8_t *) malloc (body_size + 1);
    assert (ctx->body [index]);
    if (body_size)
        memcpy (ctx->body [index], body, body_size);
    ctx->body [index][body_size] = 0;
    ctx->body_size [index] = body_size;
    if (ctx->client && ctx->resubmit_tag && tag == ctx->resubmit_tag)
        assert (wsr_upstream_http_submit (ctx->client, tag + 1, "again", "text/plain",
                                          (const uint8_t *) "again", 5) == 0);
}

//  The bridge's loop: pollitems, zmq_poll with the client's timeout, process.
//  Runs until done was called want_calls times and the server has read
//  want_requests requests; fails after S_TEST_LIMIT_MS.
static void
s_drive (wsr_upstream_http_t *client, s_ctx_t *ctx, int want_calls,
         s_server_t *server, int want_requests, int slots, size_t max_inflight)
{
    int64_t limit = wsr_util_mono_ms () + S_TEST_LIMIT_MS;
    zmq_pollitem_t items [S_TEST_SLOTS];
    assert (slots <= S_TEST_SLOTS);
    while (ctx->calls < want_calls
       || (server && s_server_requests (server) < want_requests)) {
        int count = wsr_upstream_http_pollitems (client, items, slots);
        assert (count >= 0 && count <= slots);
        long timeout = wsr_upstream_http_timeout (client);
        int64_t left = limit - wsr_util_mono_ms ();
        assert (left > 0);
        if (timeout < 0 || timeout > left)
            timeout = (long) left;
        int rc = zmq_poll (items, count, timeout);
        assert (rc >= 0 || errno == EINTR);
        wsr_upstream_http_process (client, items, rc > 0? count: 0);
        assert (wsr_upstream_http_inflight (client) <= max_inflight);
    }
}

//  One request to base + path through a fresh client; returns the elapsed
//  time, result in ctx (reset first), counters in stats.
static int64_t
s_call (const char *base, const char *path, int timeout_ms, size_t max_response,
        const char *content_type, const uint8_t *body, size_t size,
        s_ctx_t *ctx, wsr_upstream_http_stats_t *stats)
{
    s_ctx_reset (ctx);
    char *url = zsys_sprintf ("%s%s", base, path);
    wsr_upstream_http_t *client = wsr_upstream_http_new (url, 1, 1, timeout_ms, max_response,
                                                         s_test_done, ctx);
    assert (client);
    zstr_free (&url);
    ctx->client = client;
    ctx->max_inflight = 1;
    int64_t start = wsr_util_mono_ms ();
    assert (wsr_upstream_http_submit (client, 7, "sess-1", content_type, body, size) == 0);
    assert (wsr_upstream_http_inflight (client) == 1);
    s_drive (client, ctx, 1, NULL, 0, S_TEST_SLOTS, 1);
    int64_t elapsed = wsr_util_mono_ms () - start;
    assert (ctx->calls == 1);
    assert (ctx->tag [0] == 7);
    assert (streq (ctx->reply_to [0], "sess-1"));
    assert (wsr_upstream_http_inflight (client) == 0);
    assert (wsr_upstream_http_queued (client) == 0);
    wsr_upstream_http_stats (client, stats);
    assert (stats->submitted == 1);
    assert (stats->completed + stats->failed == 1);
    ctx->client = NULL;
    wsr_upstream_http_destroy (&client);
    assert (client == NULL);
    return elapsed;
}

void
wsr_upstream_http_test (bool verbose)
{
    if (verbose)
        zsys_info (" * wsr_upstream_http: ");
    s_ctx_t ctx;
    memset (&ctx, 0, sizeof ctx);
    wsr_upstream_http_stats_t stats;

    //  Invalid configuration is refused, not asserted
    assert (!wsr_upstream_http_new (NULL, 1, 1, 100, 100, s_test_done, &ctx));
    assert (!wsr_upstream_http_new ("ftp://127.0.0.1/", 1, 1, 100, 100, s_test_done, &ctx));
    assert (!wsr_upstream_http_new ("http://127.0.0.1/", 0, 1, 100, 100, s_test_done, &ctx));
    assert (!wsr_upstream_http_new ("http://127.0.0.1/", 1, 1, 0, 100, s_test_done, &ctx));

    //  An idle client watches nothing and wants no timeout
    wsr_upstream_http_t *client = wsr_upstream_http_new ("http://127.0.0.1:1/", 1, 0, 100,
                                                         100, s_test_done, &ctx);
    assert (client);
    zmq_pollitem_t items [S_TEST_SLOTS];
    assert (wsr_upstream_http_pollitems (client, items, S_TEST_SLOTS) == 0);
    assert (wsr_upstream_http_timeout (client) == -1);
    wsr_upstream_http_process (client, NULL, 0);
    assert (ctx.calls == 0);
    wsr_upstream_http_destroy (&client);
    wsr_upstream_http_destroy (&client);        //  safe on NULL

    s_server_t *server = s_server_start ();
    char base [64];
    snprintf (base, sizeof base, "http://127.0.0.1:%d", server->port);
    const char *binary = "application/octet-stream";

    //  Echo: status, body, tag and reply_to come back
    s_call (base, "/echo", 2000, S_TEST_MAX_RESPONSE, "application/json",
            (const uint8_t *) "{\"a\":1}", 7, &ctx, &stats);
    assert (ctx.status [0] == 200 && streq (ctx.error [0], ""));
    assert (ctx.body_size [0] == 7 && memcmp (ctx.body [0], "{\"a\":1}", 7) == 0);
    assert (stats.completed == 1 && stats.failed == 0);

    //  Empty request body, empty response body
    s_call (base, "/echo", 2000, S_TEST_MAX_RESPONSE, binary, NULL, 0, &ctx, &stats);
    assert (ctx.status [0] == 200 && ctx.body_size [0] == 0);

    //  Binary body (NULs included), exactly max_response bytes: accepted
    uint8_t *blob = (uint8_t *) malloc (S_TEST_MAX_RESPONSE + 1);
    assert (blob);
    for (size_t index = 0; index <= S_TEST_MAX_RESPONSE; index++)
        blob [index] = (uint8_t) (index * 7);
    s_call (base, "/echo", 2000, S_TEST_MAX_RESPONSE, binary, blob, S_TEST_MAX_RESPONSE,
            &ctx, &stats);
    assert (ctx.status [0] == 200 && ctx.body_size [0] == S_TEST_MAX_RESPONSE);
    assert (memcmp (ctx.body [0], blob, S_TEST_MAX_RESPONSE) == 0);
    //  One byte more (announced by Content-Length): refused
    s_call (base, "/echo", 2000, S_TEST_MAX_RESPONSE, binary, blob, S_TEST_MAX_RESPONSE + 1,
            &ctx, &stats);
    assert (ctx.status [0] == 0 && streq (ctx.error [0], "response too large"));
    assert (ctx.body_size [0] == 0);
    assert (stats.too_large == 1 && stats.failed == 1);

    free (blob);

    //  The request as the backend sees it: POST, our Content-Type and
    //  User-Agent, no Expect header even for a body past curl's threshold
    blob = (uint8_t *) zmalloc (S_TEST_EXPECT_BODY);
    assert (blob);
    s_call (base, "/info", 5000, S_TEST_MAX_RESPONSE, "application/json", blob,
            S_TEST_EXPECT_BODY, &ctx, &stats);
    assert (ctx.status [0] == 200);
    if (verbose)
        zsys_info ("upstream-http test: /info says %s", (char *) ctx.body [0]);
    char *expected = zsys_sprintf ("POST|application/json|wsrouter|-|%d", S_TEST_EXPECT_BODY);
    assert (streq ((char *) ctx.body [0], expected));
    zstr_free (&expected);
    free (blob);

    //  Error statuses come back with their body
    s_call (base, "/500", 2000, S_TEST_MAX_RESPONSE, binary, NULL, 0, &ctx, &stats);
    assert (ctx.status [0] == 500 && streq ((char *) ctx.body [0], "oops"));
    assert (stats.completed == 1);

    //  Redirects are not followed
    s_call (base, "/redirect", 2000, S_TEST_MAX_RESPONSE, binary, NULL, 0, &ctx, &stats);
    assert (ctx.status [0] == 302 && streq ((char *) ctx.body [0], "moved"));

    //  Per-request timeout: the backend answers after 2 s, we give up at 300 ms
    int64_t elapsed = s_call (base, "/slow", 300, S_TEST_MAX_RESPONSE, binary, NULL, 0,
                              &ctx, &stats);
    assert (ctx.status [0] == 0 && streq (ctx.error [0], "timeout"));
    assert (ctx.body_size [0] == 0);
    assert (stats.timeouts == 1 && stats.failed == 1);
    assert (elapsed >= 250 && elapsed < S_TEST_SLOW_MS - 500);

    //  Oversized response with Content-Length, and without (write callback)
    s_call (base, "/big", 5000, S_TEST_MAX_RESPONSE, binary, NULL, 0, &ctx, &stats);
    assert (ctx.status [0] == 0 && streq (ctx.error [0], "response too large"));
    assert (stats.too_large == 1);
    s_call (base, "/bigstream", 5000, S_TEST_MAX_RESPONSE, binary, NULL, 0, &ctx, &stats);
    assert (ctx.status [0] == 0 && streq (ctx.error [0], "response too large"));
    assert (stats.too_large == 1);

    //  A closed port: backend unreachable
    int probe = socket (AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert (probe >= 0);
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = 0 };
    addr.sin_addr.s_addr = htonl (INADDR_LOOPBACK);
    assert (bind (probe, (struct sockaddr *) &addr, sizeof addr) == 0);
    socklen_t addr_len = sizeof addr;
    assert (getsockname (probe, (struct sockaddr *) &addr, &addr_len) == 0);
    close (probe);
    char closed [64];
    snprintf (closed, sizeof closed, "http://127.0.0.1:%d", ntohs (addr.sin_port));
    s_call (closed, "/echo", 2000, S_TEST_MAX_RESPONSE, binary, NULL, 0, &ctx, &stats);
    assert (ctx.status [0] == 0 && streq (ctx.error [0], "backend unreachable"));
    assert (stats.unreachable == 1);

    //  Bounded concurrency: 2 running, 3 waiting, the 6th refused; the 5
    //  accepted finish once each, FIFO, never more than 2 at a time
    s_ctx_reset (&ctx);
    char *url = zsys_sprintf ("%s/slowish", base);
    client = wsr_upstream_http_new (url, 2, 3, 5000, S_TEST_MAX_RESPONSE, s_test_done, &ctx);
    assert (client);
    ctx.client = client;
    ctx.max_inflight = 2;
    for (int tag = 1; tag <= 6; tag++) {
        char body = (char) ('0' + tag);
        int rc = wsr_upstream_http_submit (client, (uint64_t) tag, "sess-2", binary,
                                           (const uint8_t *) &body, 1);
        assert (rc == (tag <= 5? 0: -1));
    }
    assert (wsr_upstream_http_inflight (client) == 2);
    assert (wsr_upstream_http_queued (client) == 3);
    s_drive (client, &ctx, 5, NULL, 0, S_TEST_SLOTS, 2);
    assert (ctx.calls == 5);
    int seen [7] = { 0 };
    for (int index = 0; index < ctx.calls; index++) {
        assert (ctx.tag [index] >= 1 && ctx.tag [index] <= 5);
        seen [ctx.tag [index]]++;
        assert (ctx.status [index] == 200);
        assert (ctx.body_size [index] == 1 && ctx.body [index][0] == '0' + ctx.tag [index]);
        assert (streq (ctx.reply_to [index], "sess-2"));
    }
    for (int tag = 1; tag <= 5; tag++)
        assert (seen [tag] == 1);
    assert (ctx.tag [0] == 1 || ctx.tag [0] == 2);
    assert (wsr_upstream_http_inflight (client) == 0);
    assert (wsr_upstream_http_queued (client) == 0);
    wsr_upstream_http_stats (client, &stats);
    assert (stats.submitted == 5 && stats.rejected == 1 && stats.completed == 5);
    pthread_mutex_lock (&server->lock);
    assert (server->slowish_max == 2);
    assert (server->order_count == 5);
    assert (server->order [0] + server->order [1] == '1' + '2');
    assert (server->order [2] + server->order [3] == '3' + '4');
    assert (server->order [4] == '5');
    server->slowish_max = server->order_count = 0;
    pthread_mutex_unlock (&server->lock);

    //  A submit from inside done joins the same loop (slots free again now)
    ctx.resubmit_tag = 10;
    assert (wsr_upstream_http_submit (client, 10, "sess-3", binary,
                                      (const uint8_t *) "A", 1) == 0);
    s_drive (client, &ctx, 7, NULL, 0, S_TEST_SLOTS, 2);
    assert (ctx.tag [5] == 10 && ctx.tag [6] == 11);
    assert (streq (ctx.reply_to [6], "again") && ctx.status [6] == 200);
    ctx.resubmit_tag = 0;

    //  Fewer pollitem slots than sockets: they take turns, nothing starves.
    //  Tag 20 is answered after 1 s, tag 21 after 200 ms; if only the first
    //  socket were ever polled, 21 would have to wait for 20
    assert (wsr_upstream_http_submit (client, 20, NULL, binary, (const uint8_t *) "W", 1) == 0);
    assert (wsr_upstream_http_submit (client, 21, NULL, binary, (const uint8_t *) "C", 1) == 0);
    s_drive (client, &ctx, 9, NULL, 0, 1, 2);
    assert (ctx.tag [7] == 21 && ctx.status [7] == 200);
    assert (ctx.tag [8] == 20 && ctx.status [8] == 200);
    assert (streq (ctx.reply_to [7], "(null)"));
    ctx.client = NULL;
    wsr_upstream_http_destroy (&client);
    zstr_free (&url);
    assert (ctx.calls == 9);

    //  Destroy with one request running and one waiting: done is not called
    s_ctx_reset (&ctx);
    url = zsys_sprintf ("%s/slow", base);
    client = wsr_upstream_http_new (url, 1, 4, 5000, S_TEST_MAX_RESPONSE, s_test_done, &ctx);
    assert (client);
    zstr_free (&url);
    assert (wsr_upstream_http_submit (client, 1, "sess-4", binary, NULL, 0) == 0);
    assert (wsr_upstream_http_submit (client, 2, "sess-4", binary, NULL, 0) == 0);
    assert (wsr_upstream_http_queued (client) == 1);
    //  Until the backend holds the first request
    s_drive (client, &ctx, 0, server, s_server_requests (server) + 1, S_TEST_SLOTS, 1);
    assert (wsr_upstream_http_inflight (client) == 1);
    wsr_upstream_http_destroy (&client);
    assert (ctx.calls == 0);

    s_server_stop (&server);
    s_ctx_reset (&ctx);
    if (verbose)
        zsys_info ("upstream-http test: OK");
}
