//  wsr_listener — the listener actor: accepts TCP, parses HTTP, routes requests
//
//  Owns the listening socket and every connection until its HTTP request is
//  complete (libhttp-parser via wsr_http; size and time limits). Then:
//    GET /ws (or /ws/...)  checks the upgrade (RFC 6455 §4.2.1), computes the
//                          accept key, and hands the descriptor with the token
//                          and any early frame bytes to the auth actor (AUTH);
//    GET /healthz, /readyz, /metrics, POST /api/publish answer here and close.
//    GET /console[/FILE]   the web console, compiled in from console/ (no key);
//    GET /api/stats, /api/topics, POST /api/token: the console's data (API
//                          key or console key; 403 with neither configured);
//    GET /api/stats/stream the same figures every second as server-sent
//                          events: the connection stays here on a third list
//                          (streams, at most WSR_CONSOLE_STREAMS), written on
//                          the loop's tick, ended when a write does not go
//                          whole or the client goes.
//  A publish becomes PUBLISH [topic key][downstream envelope] to the router.
//  Topics come from the workers' census (wsr_census, shared state read under
//  its lock, bounded to WSR_CENSUS_TOP per worker), never from a message to
//  a worker.
//
//  Requests are judged from their headers (wsr_http stop-at-headers mode):
//  a publish with a wrong or missing API key gets 401 (API disabled: 403)
//  before any body byte is buffered; any other request with a body is
//  answered from its headers and closed. HEAD gets GET's headers, no body.
//
//  Overload: every connection the listener holds (in its handshake, idle in
//  keep-alive, or closing) is "pending". Per client address at most
//  max_pending_per_ip (checked first, so an address at its cap takes nothing
//  from the others: 429 at once); node-wide at most max_pending; then the
//  handshake-rate bucket. Keep-alive connections have a lifetime and a
//  request cap. The per-address cap on sessions (ipcount) is taken only when
//  an upgrade is handed over. Accept errors (EMFILE, ENFILE) close a spare
//  descriptor to shed the connection and pause accepting for a moment
//  instead of spinning; handshakes have a deadline (FIFO list; 408 and
//  closed at once). After any other last answer a connection lingers (write side shut, input read and dropped
//  until EOF, 2 s or S_LINGER_BYTES) so the client gets the answer, not a RST.
//
//  Sockets (owned):
//    pipe                          PAIR  commands: START, PORT, DRAIN, $TERM
//    inproc://wsr-auth-NAME        PUSH  connect; AUTH
//    inproc://wsr-pub-NAME         PUSH  connect; PUBLISH
//  Descriptors (owned): listening socket, epoll set, spare fd, connections in
//  handshake.
//
//  TLS (wsr_tls): on the main port, or on a second port beside the plain one.
//  The TLS handshake runs here, non-blocking, under the request's deadline;
//  the request is then read through the TLS session (wsr_tlsconn_t: our own
//  record layer after a TLS 1.3 handshake), which goes to auth with the
//  descriptor (AUTH 'p' frame) and belongs to whoever owns the fd.

#include "wsr_classes.h"
#include "wsr_console_files.h"
#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#define S_TAG_LISTEN        1
#define S_TAG_PIPE          2
#define S_TAG_LISTEN_TLS    3
#define S_TAG_MAX           16
#define S_MAX_EVENTS        256
#define S_ACCEPT_BATCH      64      //  accepts per wake-up
#define S_ACCEPT_PAUSE_MS   100     //  after EMFILE / ENFILE
#define S_READ_CHUNK        16384
#define S_LINGER_MS         2000    //  after a last answer, wait this long for EOF
#define S_LINGER_BYTES      16384   //  ... and drop at most this much input
#define S_ADOPT_BATCH       64      //  upgrades judged and handed over per turn, at most
#define S_KEY_ERROR         "{\"error\":\"missing or wrong api key\"}"
#define S_STREAM_PERIOD_MS  1000    //  live figures: one event a second
#define S_STREAM_SNDBUF     (256 * 1024)    //  console answers go out in one write
#define S_TOPICS_LIMIT_MAX  WSR_CENSUS_TOP  //  GET /api/topics?limit=
//  The console's pages: scripts and styles from this node only, no frames
#define S_CONSOLE_HEADERS \
    "Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; " \
    "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; " \
    "frame-ancestors 'none'\r\nX-Frame-Options: DENY\r\nX-Content-Type-Options: nosniff\r\n" \
    "Referrer-Policy: no-referrer\r\n"
//  Who a request's key says it is
#define S_KEY_NONE          0       //  missing or wrong (or no key configured)
#define S_KEY_API           1       //  WEBSOCKET_API_KEY: everything
#define S_KEY_CONSOLE       2       //  WEBSOCKET_CONSOLE_KEY: the console's endpoints

typedef struct _s_hs_t s_hs_t;
struct _s_hs_t {
    int fd;                         //  client socket (owned until handed over)
    uint64_t id;                    //  connection id, becomes the session id
    wsr_http_t *http;               //  request parser (owned)
    int64_t deadline;               //  mono ms
    int ip_slot;                    //  per-IP counter slot, -1 if none
    bool keep_alive;                //  answer the current request and keep going
    bool broken;                    //  a response could not be written whole
    bool served;                    //  answered at least one request
    bool lingering;                 //  last answer sent, write side shut, draining input
    bool head;                      //  current request is HEAD: headers only
    int pending_slot;               //  per-IP pending counter slot, -1 if none
    int64_t born;                   //  mono ms of accept (keep-alive lifetime)
    size_t requests;                //  requests answered on this connection
    size_t dropped;                 //  input bytes dropped while lingering
    char peer [INET6_ADDRSTRLEN + 8];   //  "addr:port" for logs
    struct sockaddr_storage addr;   //  client address (per-IP counters)
    s_hs_t *prev, *next;            //  pending list, oldest first
    wsr_tlsconn_t *ssl;             //  TLS session (owned with fd), NULL on plain TCP
    bool tls_ready;                 //  its handshake is complete
    uint32_t events;                //  epoll mask registered (TLS handshake may want OUT)
    bool streaming;                 //  a console live-figure stream (SSE), on the stream list
    int stream_key;                 //  ... opened with this key (S_KEY_API, S_KEY_CONSOLE)
};

//  An upgrade whose token is judged at the end of the turn (HS256 here).
typedef struct {
    uint64_t id;
    int fd;
    int ip_slot;
    int flags;
    char accept [WSR_HTTP_ACCEPT_SIZE];
    char peer [INET6_ADDRSTRLEN + 8];
    zframe_t *token;
    zframe_t *early;
    wsr_tlsconn_t *ssl;
} s_adopt_t;

struct _wsr_listener_t {
    zactor_t *actor;                //  the listener thread
};

typedef struct {
    char *name;                     //  node instance name
    wsr_listener_opts_t opts;       //  settings (strings borrowed for START)
    wsr_metrics_t *metrics;         //  shared counters (not owned)
} s_args_t;

typedef struct {
    zsock_t *pipe;                  //  actor pipe (not owned)
    zsock_t *auth;                  //  PUSH AUTH
    zsock_t *publish;               //  PUSH PUBLISH
    wsr_jwt_t *verifier;            //  HS256 verifier (owned), NULL: auth verifies
    zsock_t *adopt [WSR_MAX_WORKERS];   //  PUSH ADOPT per worker, with verifier
    int workers;                    //  entries in adopt
    s_adopt_t batch [S_ADOPT_BATCH];    //  upgrades of this turn, handed over at its end
    size_t batch_size;
    int listen_fd;                  //  listening socket, -1 when draining
    int epoll_fd;                   //  epoll set
    int spare_fd;                   //  reserve descriptor for EMFILE shedding
    bool accept_paused;             //  listen fd out of epoll for a moment
    int64_t accept_resume;          //  when to put it back (mono ms)
    int port;                       //  bound port
    bool ready;                     //  /readyz answer
    uint64_t next_id;               //  connection ids
    s_hs_t *head, *tail;            //  pending handshakes, FIFO by deadline
    s_hs_t *linger_head, *linger_tail;  //  lingering connections, FIFO by deadline
    size_t pending;                 //  length of both lists
    wsr_ipcount_t *pending_ips;     //  pending connections per address (owned) or NULL
    bool draining;                  //  DRAIN seen
    wsr_listener_opts_t opts;       //  settings; strings owned below
    char *api_key;                  //  publish API key (owned) or NULL
    uint8_t api_key_hash [crypto_generichash_BYTES];    //  for constant-time compare
    wsr_metrics_t *metrics;         //  shared counters
    char **origins;                 //  allowed Origin values (owned), NULL = any
    size_t origin_count;
    double hs_tokens;               //  handshake-rate bucket
    int64_t hs_refill;              //  mono ms of the last refill
    bool terminated;                //  $TERM seen
    int status;                     //  init result
    wsr_tls_t *tls;                 //  TLS certificate and context, NULL = plain only
    int tls_fd;                     //  second (TLS) listening socket, -1 if none
    int tls_port;                   //  its bound port (or the main port if that is TLS)
    char *console_key;              //  console key (owned) or NULL
    uint8_t console_key_hash [crypto_generichash_BYTES];
    uint8_t *jwt_secret;            //  HS256 secret for dev tokens (owned) or NULL
    size_t jwt_secret_len;
    char *node_name;                //  shown by the console (owned) or NULL
    s_hs_t *stream_head, *stream_tail;  //  live-figure streams (SSE), in the pending count
    size_t streams;                 //  their number
    int64_t stream_next;            //  mono ms of the next event
} s_listener_t;

//  --------------------------------------------------------------------------
//  Pending handshakes

static void
s_hs_unlink (s_listener_t *self, s_hs_t *hs)
{
    s_hs_t **head = hs->streaming? &self->stream_head:
                    hs->lingering? &self->linger_head: &self->head;
    s_hs_t **tail = hs->streaming? &self->stream_tail:
                    hs->lingering? &self->linger_tail: &self->tail;
    if (hs->streaming)
        self->streams--;
    if (hs->prev)
        hs->prev->next = hs->next;
    else
        *head = hs->next;
    if (hs->next)
        hs->next->prev = hs->prev;
    else
        *tail = hs->prev;
    self->pending--;
}

//  Append to its list (pending or lingering) with a fresh deadline; the
//  delay is the same for every entry of a list, so each list stays sorted.
//  Streams have no deadline: they end when the client goes or a write fails.
static void
s_hs_append (s_listener_t *self, s_hs_t *hs)
{
    s_hs_t **head = hs->streaming? &self->stream_head:
                    hs->lingering? &self->linger_head: &self->head;
    s_hs_t **tail = hs->streaming? &self->stream_tail:
                    hs->lingering? &self->linger_tail: &self->tail;
    if (hs->streaming)
        self->streams++;
    hs->deadline = hs->streaming? INT64_MAX: wsr_util_mono_ms ()
                 + (hs->lingering? S_LINGER_MS: self->opts.handshake_timeout_ms);
    hs->prev = *tail;
    hs->next = NULL;
    if (*tail)
        (*tail)->next = hs;
    else
        *head = hs;
    *tail = hs;
    self->pending++;
}

//  Forget a handshake; close its socket unless it was handed over.
static void
s_hs_end (s_listener_t *self, s_hs_t *hs, bool close_fd)
{
    s_hs_unlink (self, hs);
    if (hs->events)                 //  in the epoll set (not when handled at accept)
        epoll_ctl (self->epoll_fd, EPOLL_CTL_DEL, hs->fd, NULL);
    if (close_fd) {
        wsr_tls_free (&hs->ssl);
        close (hs->fd);
        wsr_metrics_add (self->metrics, WSR_M_CONNECTIONS_OPEN, -1);
        if (hs->ip_slot >= 0)
            wsr_ipcount_release (self->opts.ipcount, hs->ip_slot);
    }
    if (hs->pending_slot >= 0)
        wsr_ipcount_release (self->pending_ips, hs->pending_slot);
    wsr_metrics_add (self->metrics, WSR_M_PENDING_CONNECTIONS, -1);
    wsr_http_destroy (&hs->http);
    free (hs);
}

//  The last answer is out: linger instead of closing, so that input the
//  client still sends (a body we did not want, a pipelined request) does not
//  make the kernel answer with a RST that destroys the answer in flight.
static bool
s_hs_finish (s_listener_t *self, s_hs_t *hs)
{
    if (hs->broken || hs->lingering) {
        s_hs_end (self, hs, true);
        return false;
    }
    shutdown (hs->fd, SHUT_WR);
    s_hs_unlink (self, hs);
    hs->lingering = true;
    s_hs_append (self, hs);
    return true;
}

//  Best-effort response on a non-blocking socket; the connection closes next.
static void
s_respond (s_hs_t *hs, int status, const char *content_type, const char *extra,
           const char *body, size_t body_len)
{
    const char *text = status == 200? "OK": status == 202? "Accepted":
                       status == 400? "Bad Request": status == 401? "Unauthorized":
                       status == 403? "Forbidden": status == 404? "Not Found":
                       status == 405? "Method Not Allowed": status == 408? "Request Timeout":
                       status == 413? "Payload Too Large": status == 414? "URI Too Long":
                       status == 426? "Upgrade Required": status == 429? "Too Many Requests":
                       status == 431? "Request Header Fields Too Large":
                       status == 501? "Not Implemented":
                       status == 503? "Service Unavailable":
                       status == 505? "HTTP Version Not Supported": "Error";
    char head [1024];
    int n = snprintf (head, sizeof head,
                      "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                      "Connection: %s\r\nCache-Control: no-store\r\n%s\r\n",
                      status, text, content_type, body_len,
                      hs->keep_alive? "keep-alive": "close", extra? extra: "");
    //  HEAD: the same headers, Content-Length included, and no body
    if (hs->head)
        body_len = 0;
    struct iovec iov [2] = {
        { head, (size_t) n }, { (void *) body, body_len }
    };
    struct msghdr msg = { .msg_iov = iov, .msg_iovlen = body_len? 2: 1 };
    ssize_t sent = 0;
    if (hs->ssl) {
        //  Record by record; one that does not go at once breaks the answer
        uint32_t retry = 0;
        ssize_t more;
        while ((size_t) sent < (size_t) n + body_len
           &&  (more = wsr_tls_writev (hs->ssl, iov, 2, &retry)) > 0) {
            sent += more;
            for (int i = 0; i < 2; i++) {
                size_t step = (size_t) more < iov [i].iov_len? (size_t) more: iov [i].iov_len;
                iov [i].iov_base = (char *) iov [i].iov_base + step;
                iov [i].iov_len -= step;
                more -= (ssize_t) step;
            }
        }
    }
    else
        sent = sendmsg (hs->fd, &msg, MSG_NOSIGNAL);
    if (sent < (ssize_t) ((size_t) n + body_len)) {
        //  Responses are small; a client that does not read them is not kept
        wsr_debug ("listener: conn %" PRIu64 ": response not sent whole", hs->id);
        hs->broken = true;
    }
    if ((!hs->keep_alive || hs->broken) && hs->ssl)
        wsr_tls_free (&hs->ssl);        //  close_notify before the FIN
    if (!hs->keep_alive || hs->broken)
        shutdown (hs->fd, SHUT_WR);     //  the client reads it all before the FIN
    hs->requests++;
}

static void
s_respond_json (s_hs_t *hs, int status, const char *json)
{
    s_respond (hs, status, "application/json", NULL, json, strlen (json));
}

//  --------------------------------------------------------------------------
//  Routes

//  Which key an Authorization header ("apikey KEY") carries: S_KEY_API,
//  S_KEY_CONSOLE or S_KEY_NONE. Hashes on both sides keep the comparisons
//  constant-time whatever the lengths; both are always made. Keys are never
//  logged.
static int
s_key_kind (s_listener_t *self, const char *header)
{
    if (!header || strncasecmp (header, "apikey ", 7))
        return S_KEY_NONE;
    const char *key = header + 7;
    while (*key == ' ')
        key++;
    uint8_t hash [crypto_generichash_BYTES];
    crypto_generichash (hash, sizeof hash, (const uint8_t *) key, strlen (key), NULL, 0);
    bool api = sodium_memcmp (hash, self->api_key_hash, sizeof hash) == 0;
    bool console = sodium_memcmp (hash, self->console_key_hash, sizeof hash) == 0;
    return api && self->api_key? S_KEY_API: console && self->console_key? S_KEY_CONSOLE
                                                                        : S_KEY_NONE;
}

//  The publish API wants the API key itself: the console key cannot publish.
static bool
s_api_key_ok (s_listener_t *self, const char *header)
{
    return s_key_kind (self, header) == S_KEY_API;
}

//  POST /api/publish {"user"|"channel": id, "data": json | "data_base64": b64}
static void
s_route_publish (s_listener_t *self, s_hs_t *hs)
{
    if (!self->api_key) {
        s_respond_json (hs, 403, "{\"error\":\"publish API disabled: set WEBSOCKET_API_KEY\"}");
        return;
    }
    if (!s_api_key_ok (self, wsr_http_header (hs->http, "authorization"))) {
        wsr_metrics_add (self->metrics, WSR_M_PUBLISH_REJECTED, 1);
        s_respond (hs, 401, "application/json", "WWW-Authenticate: apikey\r\n",
                   S_KEY_ERROR, sizeof S_KEY_ERROR - 1);
        return;
    }
    size_t size = 0;
    const uint8_t *body = wsr_http_body (hs->http, &size);
    json_error_t error;
    json_t *root = body? json_loadb ((const char *) body, size, JSON_REJECT_DUPLICATES, &error)
                       : NULL;
    const char *problem = NULL;
    json_t *user = NULL, *channel = NULL, *data = NULL, *data64 = NULL;
    if (!json_is_object (root))
        problem = "body must be a JSON object";
    else {
        user = json_object_get (root, "user");
        channel = json_object_get (root, "channel");
        data = json_object_get (root, "data");
        data64 = json_object_get (root, "data_base64");
        if (!user == !channel)
            problem = "give exactly one of user, channel";
        else
        if (!data == !data64)
            problem = "give exactly one of data, data_base64";
        else
        if (!json_is_string (user? user: channel))
            problem = "user / channel must be a string";
        else {
            json_t *id = user? user: channel;
            const char *text = json_string_value (id);
            if (!wsr_util_id_valid (text, json_string_length (id))
            ||  strlen (text) != json_string_length (id))
                problem = "invalid user / channel id";
            else
            if (data64 && !json_is_string (data64))
                problem = "data_base64 must be a string";
        }
    }
    if (problem) {
        wsr_metrics_add (self->metrics, WSR_M_PUBLISH_REJECTED, 1);
        char reply [160];
        snprintf (reply, sizeof reply, "{\"error\":\"%s\"}", problem);
        s_respond_json (hs, 400, reply);
        json_decref (root);
        return;
    }
    //  The payload: a JSON string's contents, any other value's serialization,
    //  or the decoded base64 bytes
    char *owned = NULL;
    const uint8_t *payload;
    size_t payload_size;
    int kind = 0;
    if (data && json_is_string (data)) {
        payload = (const uint8_t *) json_string_value (data);
        payload_size = json_string_length (data);
        kind = WSR_KIND_TEXT;
    }
    else
    if (data) {
        owned = json_dumps (data, JSON_COMPACT | JSON_ENCODE_ANY);
        payload = (const uint8_t *) owned;
        payload_size = owned? strlen (owned): 0;
        kind = WSR_KIND_TEXT;
    }
    else {
        const char *b64 = json_string_value (data64);
        size_t b64_len = json_string_length (data64);
        owned = (char *) malloc (b64_len / 4 * 3 + 3);
        if (sodium_base642bin ((uint8_t *) owned, b64_len / 4 * 3 + 3, b64, b64_len,
                               "\n\r ", &payload_size, NULL,
                               sodium_base64_VARIANT_ORIGINAL)) {
            free (owned);
            json_decref (root);
            wsr_metrics_add (self->metrics, WSR_M_PUBLISH_REJECTED, 1);
            s_respond_json (hs, 400, "{\"error\":\"data_base64 is not valid base64\"}");
            return;
        }
        payload = (const uint8_t *) owned;
    }
    if (payload_size > self->opts.max_message) {
        free (owned);
        json_decref (root);
        wsr_metrics_add (self->metrics, WSR_M_PUBLISH_REJECTED, 1);
        s_respond_json (hs, 413, "{\"error\":\"message larger than the maximum\"}");
        return;
    }
    char key [WSR_TOPIC_MAX];
    int key_size = wsr_topic_key (key, sizeof key, user? WSR_TOPIC_USER: WSR_TOPIC_CHANNEL,
                                  json_string_value (user? user: channel));
    assert (key_size > 0);
    zframe_t *topic = zframe_new (key, (size_t) key_size);
    zframe_t *env = wsr_envelope_encode_down (payload, payload_size, kind, wsr_util_now_us ());
    free (owned);
    json_decref (root);
    int rc = zsock_send (self->publish, WSR_PIC_PUBLISH, WSR_MSG_PUBLISH, topic, env);
    zframe_destroy (&topic);
    zframe_destroy (&env);
    if (rc == -1) {
        wsr_metrics_add (self->metrics, WSR_M_PUBLISH_REJECTED, 1);
        s_respond_json (hs, 503, "{\"error\":\"router queue full, retry\"}");
        return;
    }
    char reply [WSR_TOPIC_MAX + 48];
    snprintf (reply, sizeof reply, "{\"status\":\"accepted\",\"topic\":\"%s\"}", key);
    s_respond_json (hs, 202, reply);
}

//  GET /api/presence?user=U | ?channel=C [&limit=N]: checked here, handed
//  to the router with the connection (QUERY), which answers and closes it.
//  Returns true if handed over.
#define S_PRESENCE_LIMIT_DEFAULT    100
#define S_PRESENCE_LIMIT_MAX        1000
static bool
s_route_presence (s_listener_t *self, s_hs_t *hs)
{
    if (!self->api_key && !self->console_key) {
        s_respond_json (hs, 403, "{\"error\":\"API disabled: set WEBSOCKET_API_KEY\"}");
        return false;
    }
    //  A read: the console key opens it too
    if (s_key_kind (self, wsr_http_header (hs->http, "authorization")) == S_KEY_NONE) {
        wsr_metrics_add (self->metrics, WSR_M_PUBLISH_REJECTED, 1);
        s_respond (hs, 401, "application/json", "WWW-Authenticate: apikey\r\n",
                   S_KEY_ERROR, sizeof S_KEY_ERROR - 1);
        return false;
    }
    char *user = wsr_http_query (hs->http, "user");
    char *channel = wsr_http_query (hs->http, "channel");
    char *limit_text = wsr_http_query (hs->http, "limit");
    const char *problem = NULL;
    long limit = S_PRESENCE_LIMIT_DEFAULT;
    const char *id = user? user: channel;
    if (!user == !channel)
        problem = "give exactly one of user, channel";
    else
    if (!wsr_util_id_valid (id, strlen (id)))
        problem = "invalid user / channel id";
    else
    if (limit_text) {
        char *end = NULL;
        limit = strtol (limit_text, &end, 10);
        if (!*limit_text || *end || limit < 1 || limit > S_PRESENCE_LIMIT_MAX)
            problem = "limit must be 1..1000";
    }
    bool handed = false;
    if (problem) {
        char body [128];
        snprintf (body, sizeof body, "{\"error\":\"%s\"}", problem);
        s_respond_json (hs, 400, body);
    }
    else
    if (zsock_send (self->publish, WSR_PIC_QUERY, WSR_MSG_QUERY, hs->fd, user? "user": "channel",
                    id, (int) limit) == 0)
        handed = true;
    else
        s_respond_json (hs, 503, "{\"error\":\"overloaded\"}");
    free (user);
    free (channel);
    free (limit_text);
    if (handed) {
        //  The router owns the connection now; it is no longer counted here
        wsr_metrics_add (self->metrics, WSR_M_CONNECTIONS_OPEN, -1);
        if (hs->ip_slot >= 0)
            wsr_ipcount_release (self->opts.ipcount, hs->ip_slot);
        hs->ip_slot = -1;
    }
    return handed;
}

static void s_refuse (int fd, const char *response);

//  Judge the upgrades gathered this turn and send each ADOPT to its worker
//  (one after the other: a worker asleep wakes once for all of its share).
//  A worker whose queue is full sheds the connection as auth would: 503 on
//  plain TCP, closed on TLS; its per-address slot is given back.
static void
s_adopt_flush (s_listener_t *self)
{
    for (size_t i = 0; i < self->batch_size; i++) {
        s_adopt_t *adopt = &self->batch [i];
        zsock_t *out = self->adopt [wsr_msgs_worker_for (adopt->id, self->workers)];
        if (wsr_auth_judge (self->verifier, self->metrics, out, adopt->id, adopt->fd,
                            adopt->ip_slot, adopt->flags, adopt->accept, adopt->peer,
                            (const char *) zframe_data (adopt->token), zframe_size (adopt->token),
                            adopt->early, (void *) adopt->ssl) == -1) {
            wsr_metrics_add (self->metrics, WSR_M_HS_FAIL_CAPACITY, 1);
            wsr_metrics_add (self->metrics, WSR_M_CONNECTIONS_OPEN, -1);
            if (adopt->ip_slot >= 0)
                wsr_ipcount_release (self->opts.ipcount, adopt->ip_slot);
            if (adopt->ssl) {
                wsr_tls_free (&adopt->ssl);
                close (adopt->fd);
            }
            else
                s_refuse (adopt->fd, "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n"
                                     "Content-Length: 0\r\nConnection: close\r\n\r\n");
        }
        if (zframe_size (adopt->token))
            sodium_memzero (zframe_data (adopt->token), zframe_size (adopt->token));
        zframe_destroy (&adopt->token);
        zframe_destroy (&adopt->early);
    }
    self->batch_size = 0;
}

//  --------------------------------------------------------------------------
//  The web console: /console (the page, embedded), and its data endpoints
//  /api/stats, /api/stats/stream (SSE), /api/topics, /api/token. Data needs
//  the API key or the console key; with neither configured it is off (403).

//  Judge a console data request. Returns the key's kind, or S_KEY_NONE
//  having answered 403 (no key configured) or 401.
static int
s_console_auth (s_listener_t *self, s_hs_t *hs)
{
    if (!self->api_key && !self->console_key) {
        s_respond_json (hs, 403, "{\"error\":\"console disabled: set WEBSOCKET_API_KEY "
                                 "or WEBSOCKET_CONSOLE_KEY\"}");
        return S_KEY_NONE;
    }
    int kind = s_key_kind (self, wsr_http_header (hs->http, "authorization"));
    if (kind == S_KEY_NONE) {
        wsr_metrics_add (self->metrics, WSR_M_CONSOLE_REFUSED, 1);
        s_respond (hs, 401, "application/json", "WWW-Authenticate: apikey\r\n",
                   S_KEY_ERROR, sizeof S_KEY_ERROR - 1);
    }
    return kind;
}

//  Why the console cannot mint a dev token, or NULL if it can: only with an
//  HS256 secret, and only in --dev or with a console key configured.
static const char *
s_mint_refusal (s_listener_t *self)
{
    if (!self->jwt_secret)
        return "cannot mint: this node verifies tokens with a public key (no HS256 secret)";
    if (!self->opts.dev && !self->console_key)
        return "cannot mint: needs --dev or WEBSOCKET_CONSOLE_KEY";
    return NULL;
}

//  A backplane as the console shows it: 1 up, 0 down, -1 not configured.
static int
s_backplane_state (wsr_metrics_t *m, wsr_metric_t configured, wsr_metric_t up)
{
    return wsr_metrics_get (m, configured) != 1? -1: wsr_metrics_get (m, up) == 1? 1: 0;
}

//  The node's figures now, as JSON (counters: the page takes differences).
//  Caller owns the string.
static char *
s_stats_json (s_listener_t *self, int kind)
{
    wsr_metrics_t *m = self->metrics;
    const wsr_metric_t fails [] = {
        WSR_M_HS_FAIL_HTTP, WSR_M_HS_FAIL_TOKEN_MISSING, WSR_M_HS_FAIL_TOKEN_INVALID,
        WSR_M_HS_FAIL_TOKEN_EXPIRED, WSR_M_HS_FAIL_CLAIMS, WSR_M_HS_FAIL_TIMEOUT,
        WSR_M_HS_FAIL_CAPACITY
    };
    //  Messages lost on their way: slow consumers closed, full queues, a
    //  backplane or backend down
    const wsr_metric_t drops [] = {
        WSR_M_QUEUE_DROPS, WSR_M_UPSTREAM_DROPS, WSR_M_DELIVER_DROPS,
        WSR_M_BRIDGE_DELIVER_DROPS, WSR_M_BRIDGE_NATS_DROPS, WSR_M_BRIDGE_PUBLISH_LOST,
        WSR_M_BRIDGE_UPSTREAM_LOST, WSR_M_LINK_STALE
    };
    int64_t failed = 0, dropped = 0;
    for (size_t i = 0; i < sizeof fails / sizeof fails [0]; i++)
        failed += wsr_metrics_get (m, fails [i]);
    for (size_t i = 0; i < sizeof drops / sizeof drops [0]; i++)
        dropped += wsr_metrics_get (m, drops [i]);
    const char *refusal = s_mint_refusal (self);
    json_t *root = json_pack (
        "{s:I,s:s,s:s,s:s,s:I,s:b,s:b,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:b,s:b,s:I,s:I,"
        "s:b,s:b,s:b,s:b,s:s?}",
        "ts", (json_int_t) (wsr_util_now_us () / 1000),
        "key", kind == S_KEY_API? "api": "console",
        "node", self->node_name? self->node_name: "",
        "build", wsr_util_build_id (),
        "started", (json_int_t) wsr_util_start_ms (),
        "ready", self->ready && !self->draining,
        "draining", self->draining,
        "sessions_open", (json_int_t) wsr_metrics_get (m, WSR_M_SESSIONS_OPEN),
        "connections_open", (json_int_t) wsr_metrics_get (m, WSR_M_CONNECTIONS_OPEN),
        "handshakes", (json_int_t) wsr_metrics_get (m, WSR_M_HANDSHAKES_OK),
        "handshake_failures", (json_int_t) failed,
        "messages_in", (json_int_t) wsr_metrics_get (m, WSR_M_MESSAGES_IN),
        "messages_out", (json_int_t) wsr_metrics_get (m, WSR_M_MESSAGES_OUT),
        "published", (json_int_t) wsr_metrics_get (m, WSR_M_PUBLISHED),
        "drops", (json_int_t) dropped,
        "bridge_up", wsr_metrics_get (m, WSR_M_LINK_BRIDGE_UP) == 1,
        "backplane_up", wsr_metrics_get (m, WSR_M_BACKPLANE_UP) == 1,
        "redis", (json_int_t) s_backplane_state (m, WSR_M_LINK_REDIS_CONFIGURED,
                                                 WSR_M_LINK_REDIS_UP),
        "nats", (json_int_t) s_backplane_state (m, WSR_M_LINK_NATS_CONFIGURED,
                                                WSR_M_LINK_NATS_UP),
        "tls", self->tls != NULL,
        "deflate", self->opts.deflate,
        "can_publish", kind == S_KEY_API,
        "can_mint", refusal == NULL,
        "mint_refusal", refusal);
    assert (root);
    char *text = json_dumps (root, JSON_COMPACT);
    json_decref (root);
    return text;
}

//  The whole of data, at once, or false. Console answers are small and
//  their socket's buffer was made large enough (S_STREAM_SNDBUF).
static bool
s_send_all (s_hs_t *hs, const char *data, size_t size)
{
    struct iovec iov = { (void *) data, size };
    size_t sent = 0;
    if (hs->ssl) {
        uint32_t retry = 0;
        ssize_t more;
        while (sent < size && (more = wsr_tls_writev (hs->ssl, &iov, 1, &retry)) > 0) {
            sent += (size_t) more;
            iov.iov_base = (char *) iov.iov_base + more;
            iov.iov_len -= (size_t) more;
        }
    }
    else {
        ssize_t more = send (hs->fd, data, size, MSG_NOSIGNAL);
        sent = more > 0? (size_t) more: 0;
    }
    return sent == size;
}

static void
s_console_sndbuf (s_hs_t *hs)
{
    int size = S_STREAM_SNDBUF;
    if (setsockopt (hs->fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size))
        wsr_debug ("listener: conn %" PRIu64 ": SO_SNDBUF: %s", hs->id, strerror (errno));
}

//  GET /console, /console/FILE: the embedded page. No key: it shows only
//  the key prompt until one is accepted.
static void
s_route_console_file (s_hs_t *hs, const char *path)
{
    const char *want = streq (path, "/console") || streq (path, "/console/")?
                       "/console/index.html": path;
    for (size_t i = 0; i < sizeof wsr_console_files / sizeof wsr_console_files [0]; i++)
        if (streq (want, wsr_console_files [i].path)) {
            s_console_sndbuf (hs);
            s_respond (hs, 200, wsr_console_files [i].type, S_CONSOLE_HEADERS,
                       wsr_console_files [i].body, wsr_console_files [i].size);
            return;
        }
    s_respond (hs, 404, "text/plain", S_CONSOLE_HEADERS, "not found\n", 10);
}

//  GET /api/stats: the figures once.
static void
s_route_stats (s_listener_t *self, s_hs_t *hs)
{
    int kind = s_console_auth (self, hs);
    if (kind == S_KEY_NONE)
        return;
    char *json = s_stats_json (self, kind);
    s_respond_json (hs, 200, json);
    free (json);
}

//  GET /api/stats/stream: the figures every second as server-sent events,
//  until the client goes or cannot keep up. The connection moves to the
//  stream list (hs->streaming); at most WSR_CONSOLE_STREAMS at once.
static void
s_route_stream (s_listener_t *self, s_hs_t *hs)
{
    int kind = s_console_auth (self, hs);
    if (kind == S_KEY_NONE)
        return;
    if (self->streams >= WSR_CONSOLE_STREAMS) {
        s_respond_json (hs, 503, "{\"error\":\"too many console streams\"}");
        return;
    }
    char *json = s_stats_json (self, kind);
    char *text = zsys_sprintf ("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                               "Cache-Control: no-store\r\nConnection: close\r\n"
                               "X-Accel-Buffering: no\r\n\r\nretry: 2000\ndata: %s\n\n", json);
    free (json);
    s_console_sndbuf (hs);
    bool sent = s_send_all (hs, text, strlen (text));
    zstr_free (&text);
    hs->keep_alive = false;
    if (!sent) {
        hs->broken = true;
        return;
    }
    hs->requests++;
    s_hs_unlink (self, hs);
    hs->streaming = true;
    hs->stream_key = kind;
    s_hs_append (self, hs);
}

//  One event to every stream; a stream that cannot take it whole ends.
static void
s_streams_tick (s_listener_t *self)
{
    char *event [2] = { NULL, NULL };          //  per key kind: console, api
    s_hs_t *hs = self->stream_head;
    while (hs) {
        s_hs_t *next = hs->next;
        int which = hs->stream_key == S_KEY_API? 1: 0;
        if (!event [which]) {
            char *json = s_stats_json (self, which? S_KEY_API: S_KEY_CONSOLE);
            event [which] = zsys_sprintf ("data: %s\n\n", json);
            free (json);
        }
        if (!s_send_all (hs, event [which], strlen (event [which])))
            s_hs_end (self, hs, true);
        hs = next;
    }
    zstr_free (&event [0]);
    zstr_free (&event [1]);
}

//  A stream's client said something, or went: anything it sends is dropped.
//  Returns false if the stream ended.
static bool
s_stream_read (s_listener_t *self, s_hs_t *hs)
{
    char buf [512];
    ssize_t n;
    do
        n = hs->ssl? wsr_tls_recv (hs->ssl, buf, sizeof buf): recv (hs->fd, buf, sizeof buf, 0);
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return true;
    if (n <= 0) {
        s_hs_end (self, hs, true);
        return false;
    }
    return true;
}

//  GET /api/topics[?limit=N]: the busiest topics, from the workers' census
//  (asking starts it: the first answers may be empty, "age_ms": -1).
static void
s_route_topics (s_listener_t *self, s_hs_t *hs)
{
    if (s_console_auth (self, hs) == S_KEY_NONE)
        return;
    char *limit_text = wsr_http_query (hs->http, "limit");
    long limit = S_TOPICS_LIMIT_MAX;
    if (limit_text) {
        char *end = NULL;
        limit = strtol (limit_text, &end, 10);
        if (!*limit_text || *end || limit < 1 || limit > S_TOPICS_LIMIT_MAX)
            limit = 0;
    }
    free (limit_text);
    if (limit == 0)
        s_respond_json (hs, 400, "{\"error\":\"limit must be 1..100\"}");
    else
    if (!self->opts.census)
        s_respond_json (hs, 200, "{\"topics\":[],\"worker_topics\":0,\"age_ms\":-1}");
    else {
        wsr_census_want (self->opts.census);
        char *json = wsr_census_json (self->opts.census, (size_t) limit);
        s_respond_json (hs, 200, json);
        free (json);
    }
}

//  POST /api/token?user=U[&channels=a,b]: a short-lived HS256 token for the
//  console's test client.
static void
s_route_token (s_listener_t *self, s_hs_t *hs)
{
    int kind = s_console_auth (self, hs);
    if (kind == S_KEY_NONE)
        return;
    const char *refusal = s_mint_refusal (self);
    if (refusal) {
        json_t *body = json_pack ("{s:s}", "error", refusal);
        char *text = json_dumps (body, JSON_COMPACT);
        s_respond_json (hs, 403, text);
        free (text);
        json_decref (body);
        return;
    }
    char *user = wsr_http_query (hs->http, "user");
    char *channels = wsr_http_query (hs->http, "channels");
    int64_t now = (int64_t) time (NULL);
    char *token = user && wsr_util_id_valid (user, strlen (user))?
        wsr_jwt_mint_hs256 (self->jwt_secret, self->jwt_secret_len, user, now,
                            now + WSR_CONSOLE_TOKEN_TTL_S, channels): NULL;
    if (!token)
        s_respond_json (hs, 400, "{\"error\":\"give a valid user (and channels)\"}");
    else {
        zsys_info ("listener: console minted a dev token for user %s (%s key)", user,
                   kind == S_KEY_API? "API": "console");
        json_t *body = json_pack ("{s:s,s:s,s:I}", "token", token, "user", user,
                                  "exp", (json_int_t) (now + WSR_CONSOLE_TOKEN_TTL_S));
        char *text = json_dumps (body, JSON_COMPACT);
        s_respond_json (hs, 200, text);
        sodium_memzero (text, strlen (text));
        sodium_memzero (token, strlen (token));
        free (text);
        free (token);
        json_decref (body);
    }
    free (user);
    free (channels);
}

//  True if a Sec-WebSocket-Protocol value (a comma-separated list, headers
//  already joined by the parser) names wsrouter.v1. Tokens are compared
//  exactly: subprotocol names are case-sensitive (RFC 6455 §4.1).
static bool
s_offers_v1 (const char *offer)
{
    const char *want = WSR_V1_SUBPROTOCOL;
    size_t want_len = strlen (want);
    while (offer && *offer) {
        while (*offer == ' ' || *offer == '\t' || *offer == ',')
            offer++;
        const char *end = offer;
        while (*end && *end != ',')
            end++;
        const char *last = end;
        while (last > offer && (last [-1] == ' ' || last [-1] == '\t'))
            last--;
        if ((size_t) (last - offer) == want_len && memcmp (offer, want, want_len) == 0)
            return true;
        offer = end;
    }
    return false;
}

//  GET /ws: hand the connection to auth. Returns true if handed over.
static bool
s_route_upgrade (s_listener_t *self, s_hs_t *hs, const char *early, size_t early_size)
{
    const char *reason = NULL;
    int status = wsr_http_ws_check (hs->http, &reason);
    if (status) {
        wsr_metrics_add (self->metrics, WSR_M_HS_FAIL_HTTP, 1);
        char body [128];
        int n = snprintf (body, sizeof body, "%s\n", reason? reason: "bad upgrade request");
        s_respond (hs, status, "text/plain", status == 426? "Sec-WebSocket-Version: 13\r\n": NULL,
                   body, (size_t) n);
        return false;
    }
    const char *origin = wsr_http_header (hs->http, "origin");
    if (self->origins && origin) {
        //  Browsers always send Origin; other clients may not and are let in
        bool allowed = false;
        for (size_t i = 0; i < self->origin_count && !allowed; i++)
            allowed = streq (self->origins [i], "*") || strcasecmp (self->origins [i], origin) == 0;
        if (!allowed) {
            wsr_metrics_add (self->metrics, WSR_M_ORIGIN_REFUSED, 1);
            s_respond (hs, 403, "text/plain", NULL, "origin not allowed\n", 19);
            return false;
        }
    }
    if (self->draining) {
        wsr_metrics_add (self->metrics, WSR_M_HS_FAIL_CAPACITY, 1);
        s_respond (hs, 503, "text/plain", "Retry-After: 1\r\n", "draining\n", 9);
        return false;
    }
    //  The per-address cap on sessions: counted from here until the session
    //  ends (the worker releases the slot)
    if (self->opts.ipcount && hs->ip_slot < 0) {
        hs->ip_slot = wsr_ipcount_acquire (self->opts.ipcount, (struct sockaddr *) &hs->addr);
        if (hs->ip_slot < 0
        && (hs->addr.ss_family == AF_INET || hs->addr.ss_family == AF_INET6)) {
            wsr_metrics_add (self->metrics, WSR_M_IP_REFUSED, 1);
            s_respond (hs, 429, "text/plain", "Retry-After: 1\r\n",
                       "too many sessions from this address\n",
                       strlen ("too many sessions from this address\n"));
            return false;
        }
    }
    char accept [WSR_HTTP_ACCEPT_SIZE];
    wsr_http_ws_accept (wsr_http_header (hs->http, "sec-websocket-key"), accept);
    //  Token: ?token= (the documented way), or Authorization: Bearer
    char *token = wsr_http_query (hs->http, "token");
    const char *authz = wsr_http_header (hs->http, "authorization");
    if (!token && authz && strncasecmp (authz, "Bearer ", 7) == 0)
        token = strdup (authz + 7);
    zframe_t *token_frame = zframe_new (token, token? strnlen (token, WSR_MAX_TOKEN_LEN + 1): 0);
    if (token)
        sodium_memzero (token, strlen (token));
    free (token);
    zframe_t *early_frame = zframe_new (early, early_size);
    int flags = s_offers_v1 (wsr_http_header (hs->http, "sec-websocket-protocol"))?
                WSR_ADOPT_V1: 0;
    if (self->opts.deflate
    &&  wsr_deflate_accepts (wsr_http_header (hs->http, "sec-websocket-extensions")))
        flags |= WSR_ADOPT_DEFLATE;
    if (self->verifier) {
        //  HS256: an HMAC costs less than a hop to the auth thread. Judged
        //  and handed over at the end of the turn, together: a worker then
        //  wakes once for the turn's upgrades, not once for each
        if (self->batch_size == S_ADOPT_BATCH)
            s_adopt_flush (self);
        s_adopt_t *adopt = &self->batch [self->batch_size++];
        adopt->id = hs->id;
        adopt->fd = hs->fd;
        adopt->ip_slot = hs->ip_slot;
        adopt->flags = flags;
        memcpy (adopt->accept, accept, sizeof adopt->accept);
        memcpy (adopt->peer, hs->peer, sizeof adopt->peer);
        adopt->token = token_frame;
        adopt->early = early_frame;
        adopt->ssl = hs->ssl;
        hs->ssl = NULL;             //  the batch owns it now, with the fd
        return true;
    }
    int rc = zsock_send (self->auth, WSR_PIC_AUTH, WSR_MSG_AUTH, hs->id, hs->fd, hs->ip_slot,
                         flags, accept, hs->peer, token_frame, early_frame, (void *) hs->ssl);
    zframe_destroy (&token_frame);
    zframe_destroy (&early_frame);
    if (rc == 0)
        hs->ssl = NULL;             //  auth owns it now, with the fd
    if (rc == -1) {
        wsr_metrics_add (self->metrics, WSR_M_HS_FAIL_CAPACITY, 1);
        s_respond (hs, 503, "text/plain", "Retry-After: 1\r\n", "overloaded\n", 11);
        return false;
    }
    return true;
}

static bool
s_path_is (const char *path, const char *want)
{
    return path && streq (path, want);
}

//  A complete request: answer it or hand it over. Returns true if handed over.
static bool
s_route (s_listener_t *self, s_hs_t *hs, const char *rest, size_t rest_size)
{
    wsr_metrics_add (self->metrics, WSR_M_HTTP_REQUESTS, 1);
    const char *method = wsr_http_method (hs->http);
    const char *path = wsr_http_path (hs->http);
    hs->head = streq (method, "HEAD");
    bool get = streq (method, "GET") || hs->head;
    if (!self->opts.status_only && path && (streq (path, "/ws") || strncmp (path, "/ws/", 4) == 0))
        return s_route_upgrade (self, hs, rest, rest_size);
    if (s_path_is (path, "/healthz") && get) {
        //  A deploy checks which binary answers and since when
        char body [160];
        int len = snprintf (body, sizeof body, "ok\nbuild %s\nstarted %" PRId64 "\npid %d\n",
                            wsr_util_build_id (), wsr_util_start_ms (), (int) getpid ());
        s_respond (hs, 200, "text/plain", NULL, body, (size_t) len);
    }
    else
    if (s_path_is (path, "/readyz") && get) {
        //  Ready: accepting, and the backplane (bridge, Redis, NATS) reachable
        if (self->ready && wsr_metrics_get (self->metrics, WSR_M_BACKPLANE_UP) == 1)
            s_respond (hs, 200, "text/plain", NULL, "ready\n", 6);
        else
            s_respond (hs, 503, "text/plain", NULL,
                       self->ready? "backplane down\n": "draining\n", self->ready? 15: 9);
    }
    else
    if (s_path_is (path, "/metrics") && get) {
        char *text = wsr_metrics_render (self->metrics);
        s_respond (hs, 200, "text/plain; version=0.0.4", NULL, text, strlen (text));
        free (text);
    }
    else
    if (!self->opts.status_only && s_path_is (path, "/api/publish") && streq (method, "POST"))
        s_route_publish (self, hs);
    else
    if (!self->opts.status_only && s_path_is (path, "/api/presence") && streq (method, "GET"))
        return s_route_presence (self, hs);
    else
    if (!self->opts.status_only && get && path
    &&  (streq (path, "/console") || strncmp (path, "/console/", 9) == 0))
        s_route_console_file (hs, path);
    else
    if (!self->opts.status_only && s_path_is (path, "/api/stats") && get)
        s_route_stats (self, hs);
    else
    if (!self->opts.status_only && s_path_is (path, "/api/stats/stream") && streq (method, "GET"))
        s_route_stream (self, hs);
    else
    if (!self->opts.status_only && s_path_is (path, "/api/topics") && get)
        s_route_topics (self, hs);
    else
    if (!self->opts.status_only && s_path_is (path, "/api/token") && streq (method, "POST"))
        s_route_token (self, hs);
    else
    if (s_path_is (path, "/healthz") || s_path_is (path, "/readyz")
    ||  s_path_is (path, "/metrics") || s_path_is (path, "/api/publish")
    ||  s_path_is (path, "/api/presence") || s_path_is (path, "/api/stats")
    ||  s_path_is (path, "/api/stats/stream") || s_path_is (path, "/api/topics")
    ||  s_path_is (path, "/api/token"))
        s_respond (hs, 405, "text/plain", NULL, "method not allowed\n", 19);
    else
        s_respond (hs, 404, "text/plain", NULL, "not found\n", 10);
    return false;
}

//  --------------------------------------------------------------------------
//  I/O

//  Ask epoll for what the connection waits for, if that changed (the first
//  time: add it to the set). Returns false if epoll refused.
static bool
s_hs_want (s_listener_t *self, s_hs_t *hs, uint32_t events)
{
    if (events != hs->events) {
        struct epoll_event event = { .events = events };
        event.data.ptr = hs;
        if (epoll_ctl (self->epoll_fd, hs->events? EPOLL_CTL_MOD: EPOLL_CTL_ADD, hs->fd, &event))
            return false;
        hs->events = events;
    }
    return true;
}

//  TLS connection: drive the handshake. Returns 1 once it is complete, 0
//  while it goes on, -1 if it failed (the connection is gone).
static int
s_hs_tls (s_listener_t *self, s_hs_t *hs)
{
    bool want_write = false;
    int rc = wsr_tls_handshake (hs->ssl, &want_write);
    if (rc == 0) {
        s_hs_want (self, hs, want_write? EPOLLOUT: EPOLLIN);
        return 0;
    }
    if (rc < 0) {
        wsr_metrics_add (self->metrics, WSR_M_TLS_HANDSHAKE_FAILED, 1);
        wsr_debug ("listener: conn %" PRIu64 " from %s: TLS handshake failed", hs->id, hs->peer);
        s_hs_end (self, hs, true);
        return -1;
    }
    wsr_metrics_add (self->metrics, WSR_M_TLS_HANDSHAKES, 1);
    if (!wsr_tls_offloaded (hs->ssl))
        wsr_metrics_add (self->metrics, WSR_M_TLS_OPENSSL, 1);
    hs->tls_ready = true;
    s_hs_want (self, hs, EPOLLIN);
    return 1;
}

//  Whether the connection may carry another request after this answer:
//  the client's wish, no upgrade, not draining, and the keep-alive caps.
static bool
s_keep_alive (s_listener_t *self, s_hs_t *hs)
{
    if (!wsr_http_keep_alive (hs->http) || wsr_http_is_upgrade (hs->http) || self->draining)
        return false;
    bool spent = self->opts.keepalive_requests
              && hs->requests + 1 >= self->opts.keepalive_requests;
    bool old = self->opts.keepalive_lifetime_ms
            && wsr_util_mono_ms () - hs->born >= self->opts.keepalive_lifetime_ms;
    if (spent || old) {
        wsr_metrics_add (self->metrics, WSR_M_KEEPALIVE_CLOSED, 1);
        return false;
    }
    return true;
}

//  The header section is complete, no body byte taken yet. Returns true if
//  the request was answered from its headers (the connection then closes):
//  a publish without the right key, or any other request with a body.
static bool
s_judge_headers (s_listener_t *self, s_hs_t *hs)
{
    const char *method = wsr_http_method (hs->http);
    const char *path = wsr_http_path (hs->http);
    if (!self->opts.status_only && s_path_is (path, "/api/publish") && streq (method, "POST")) {
        if (!self->api_key) {
            wsr_metrics_add (self->metrics, WSR_M_HTTP_REQUESTS, 1);
            hs->keep_alive = false;
            s_respond_json (hs, 403,
                            "{\"error\":\"publish API disabled: set WEBSOCKET_API_KEY\"}");
            return true;
        }
        if (!s_api_key_ok (self, wsr_http_header (hs->http, "authorization"))) {
            wsr_metrics_add (self->metrics, WSR_M_HTTP_REQUESTS, 1);
            wsr_metrics_add (self->metrics, WSR_M_PUBLISH_REJECTED, 1);
            hs->keep_alive = false;
            s_respond (hs, 401, "application/json", "WWW-Authenticate: apikey\r\n",
                       S_KEY_ERROR, sizeof S_KEY_ERROR - 1);
            return true;
        }
        return false;               //  authorised: the body is wanted
    }
    if (!wsr_http_has_body (hs->http))
        return false;               //  judged when complete, as usual
    //  A body nobody reads: answer from the headers and close
    hs->keep_alive = false;
    //  Routes that hand the connection on never take a body
    if (!self->opts.status_only && path && (streq (path, "/ws") || strncmp (path, "/ws/", 4) == 0
                                        ||  streq (path, "/api/presence")
                                        ||  streq (path, "/api/stats/stream"))) {
        wsr_metrics_add (self->metrics, WSR_M_HTTP_REQUESTS, 1);
        wsr_metrics_add (self->metrics, WSR_M_HS_FAIL_HTTP, 1);
        s_respond (hs, 400, "text/plain", NULL, "body not allowed\n", 17);
    }
    else {
        bool handed = s_route (self, hs, NULL, 0);
        assert (!handed);
    }
    return true;
}

//  Lingering after the last answer: read and drop until EOF or the budget.
static bool
s_hs_drop (s_listener_t *self, s_hs_t *hs)
{
    char buf [S_READ_CHUNK];
    ssize_t n;
    do
        n = recv (hs->fd, buf, sizeof buf, 0);
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return true;
    if (n > 0)
        hs->dropped += (size_t) n;
    if (n <= 0 || hs->dropped >= S_LINGER_BYTES) {
        s_hs_end (self, hs, true);
        return false;
    }
    return true;
}

//  Read what the connection sent and act on it. Returns false if the
//  connection is gone (closed or handed over), true if we still hold it.
static bool
s_hs_read (s_listener_t *self, s_hs_t *hs)
{
    if (hs->streaming)
        return s_stream_read (self, hs);
    if (hs->lingering)
        return s_hs_drop (self, hs);
    if (hs->ssl && !hs->tls_ready) {
        int rc = s_hs_tls (self, hs);
        if (rc <= 0)
            return rc == 0;
    }
    char buf [S_READ_CHUNK];
    ssize_t n;
again:
    do
        n = hs->ssl? wsr_tls_recv (hs->ssl, buf, sizeof buf): recv (hs->fd, buf, sizeof buf, 0);
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return true;
    if (n <= 0) {
        s_hs_end (self, hs, true);
        return false;
    }
    //  Keep-alive: answer each complete request in turn (pipelining too);
    //  an upgrade ends the loop by handing the connection over
    size_t offset = 0;
    while (offset < (size_t) n) {
        size_t consumed = 0;
        int rc = wsr_http_feed (hs->http, buf + offset, (size_t) n - offset, &consumed);
        offset += consumed;
        if (rc == WSR_HTTP_MORE)
            break;
        if (rc == WSR_HTTP_ERROR) {
            wsr_metrics_add (self->metrics, WSR_M_HS_FAIL_HTTP, 1);
            char body [128];
            int len = snprintf (body, sizeof body, "%s\n", wsr_http_error (hs->http));
            hs->keep_alive = false;
            s_respond (hs, wsr_http_status (hs->http), "text/plain", NULL, body, (size_t) len);
            hs->dropped = (size_t) n - offset;
            return s_hs_finish (self, hs);
        }
        if (rc == WSR_HTTP_HEADERS) {
            if (s_judge_headers (self, hs)) {
                hs->dropped = (size_t) n - offset;
                return s_hs_finish (self, hs);
            }
            continue;
        }
        hs->keep_alive = s_keep_alive (self, hs);
        if (s_route (self, hs, buf + offset, (size_t) n - offset)) {
            s_hs_end (self, hs, false);
            return false;
        }
        if (hs->streaming)
            return true;            //  a console stream now: on the stream list
        if (!hs->keep_alive || hs->broken) {
            hs->dropped = (size_t) n - offset;
            return s_hs_finish (self, hs);
        }
        hs->served = true;
        //  Next request: a fresh parser state and a fresh idle deadline
        wsr_http_reset (hs->http);
        s_hs_unlink (self, hs);
        s_hs_append (self, hs);
    }
    //  TLS input the session holds already (the socket may stay quiet)
    if (wsr_tls_pending (hs->ssl))
        goto again;
    return true;
}

//  Refuse a fresh connection with a canned answer and close it.
static void
s_refuse (int fd, const char *response)
{
    if (send (fd, response, strlen (response), MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
        wsr_debug ("listener: refusal not sent: %s", strerror (errno));
    close (fd);
}

static void s_accept_pause (s_listener_t *self, bool paused);

//  Accept on the plain port (tls false) or on the TLS one; the main port
//  speaks TLS when there is TLS but no second port.
static void
s_accept (s_listener_t *self, bool tls)
{
    int listen_fd = tls && self->tls_fd >= 0? self->tls_fd: self->listen_fd;
    if (self->tls && self->tls_fd < 0)
        tls = true;
    for (int i = 0; i < S_ACCEPT_BATCH && self->listen_fd >= 0; i++) {
        struct sockaddr_storage addr;
        socklen_t addr_len = sizeof addr;
        int fd = accept4 (listen_fd, (struct sockaddr *) &addr, &addr_len,
                          SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            wsr_metrics_add (self->metrics, WSR_M_ACCEPT_ERRORS, 1);
            if (errno == EMFILE || errno == ENFILE) {
                //  Shed the waiting connection with the spare descriptor, then
                //  stop polling the socket for a moment instead of spinning
                if (self->spare_fd >= 0) {
                    close (self->spare_fd);
                    int victim = accept4 (listen_fd, NULL, NULL, SOCK_CLOEXEC);
                    if (victim >= 0)
                        close (victim);
                    self->spare_fd = open ("/dev/null", O_RDONLY | O_CLOEXEC);
                }
                zsys_warning ("listener: accept: %s; pausing accepts", strerror (errno));
            }
            else
                zsys_warning ("listener: accept: %s", strerror (errno));
            s_accept_pause (self, true);
            return;
        }
        wsr_metrics_add (self->metrics, WSR_M_CONNECTIONS_OPEN, 1);
        //  Per address first: an address at its cap takes nothing from the
        //  others, neither a place in the node-wide table nor a rate token
        int pending_slot = -1;
        if (self->pending_ips) {
            pending_slot = wsr_ipcount_acquire (self->pending_ips, (struct sockaddr *) &addr);
            if (pending_slot < 0 && (addr.ss_family == AF_INET || addr.ss_family == AF_INET6)) {
                wsr_metrics_add (self->metrics, WSR_M_PENDING_REFUSED_PER_IP, 1);
                wsr_metrics_add (self->metrics, WSR_M_CONNECTIONS_OPEN, -1);
                s_refuse (fd, "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\n"
                              "Content-Length: 0\r\nConnection: close\r\n\r\n");
                continue;
            }
        }
        if (self->pending >= self->opts.max_pending) {
            if (pending_slot >= 0)
                wsr_ipcount_release (self->pending_ips, pending_slot);
            wsr_metrics_add (self->metrics, WSR_M_HS_FAIL_CAPACITY, 1);
            wsr_metrics_add (self->metrics, WSR_M_CONNECTIONS_OPEN, -1);
            close (fd);
            continue;
        }
        if (self->opts.handshake_rate) {
            //  Token bucket: one second's worth of burst
            int64_t now = wsr_util_mono_ms ();
            double cap = (double) self->opts.handshake_rate;
            self->hs_tokens += (double) (now - self->hs_refill) * cap / 1000.0;
            self->hs_refill = now;
            if (self->hs_tokens > cap)
                self->hs_tokens = cap;
            if (self->hs_tokens < 1.0) {
                if (pending_slot >= 0)
                    wsr_ipcount_release (self->pending_ips, pending_slot);
                wsr_metrics_add (self->metrics, WSR_M_HS_RATE_REFUSED, 1);
                wsr_metrics_add (self->metrics, WSR_M_CONNECTIONS_OPEN, -1);
                s_refuse (fd, "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n"
                              "Content-Length: 0\r\nConnection: close\r\n\r\n");
                continue;
            }
            self->hs_tokens -= 1.0;
        }
        int one = 1;
        setsockopt (fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        s_hs_t *hs = (s_hs_t *) zmalloc (sizeof (s_hs_t));
        hs->fd = fd;
        hs->ip_slot = -1;
        hs->pending_slot = pending_slot;
        hs->addr = addr;
        hs->born = wsr_util_mono_ms ();
        hs->id = ++self->next_id;
        wsr_metrics_add (self->metrics, WSR_M_PENDING_CONNECTIONS, 1);
        //  The API body is JSON: escapes can make a payload up to 6 times
        //  longer (\uXXXX); the decoded payload is checked against the limit
        hs->http = wsr_http_new (WSR_MAX_HEADER_BYTES, self->opts.max_message * 6 + 65536);
        wsr_http_set_stop_at_headers (hs->http, true);
        char host [INET6_ADDRSTRLEN] = "?";
        int port = 0;
        if (addr.ss_family == AF_INET) {
            struct sockaddr_in *in = (struct sockaddr_in *) &addr;
            inet_ntop (AF_INET, &in->sin_addr, host, sizeof host);
            port = ntohs (in->sin_port);
        }
        else
        if (addr.ss_family == AF_INET6) {
            struct sockaddr_in6 *in6 = (struct sockaddr_in6 *) &addr;
            if (IN6_IS_ADDR_V4MAPPED (&in6->sin6_addr))
                inet_ntop (AF_INET, in6->sin6_addr.s6_addr + 12, host, sizeof host);
            else
                inet_ntop (AF_INET6, &in6->sin6_addr, host, sizeof host);
            port = ntohs (in6->sin6_port);
        }
        snprintf (hs->peer, sizeof hs->peer, "%s:%d", host, port);
        s_hs_append (self, hs);
        if (tls && !(hs->ssl = wsr_tls_session (self->tls, fd))) {
            s_hs_end (self, hs, true);  //  out of memory in OpenSSL
            continue;
        }
        //  A plain client has usually sent its request by the time we accept
        //  it: read it now, and the connection is often handed over without
        //  ever entering the epoll set (two epoll_ctl saved per handshake)
        if (!tls && !s_hs_read (self, hs))
            continue;
        if (!s_hs_want (self, hs, EPOLLIN))
            s_hs_end (self, hs, true);
    }
}

//  Take the listening sockets out of epoll for a moment (EMFILE), or back.
static void
s_accept_pause (s_listener_t *self, bool paused)
{
    int fds [2] = { self->listen_fd, self->tls_fd };
    uint64_t tags [2] = { S_TAG_LISTEN, S_TAG_LISTEN_TLS };
    for (int i = 0; i < 2; i++)
        if (fds [i] >= 0) {
            struct epoll_event event = { .events = EPOLLIN };
            event.data.u64 = tags [i];
            epoll_ctl (self->epoll_fd, paused? EPOLL_CTL_DEL: EPOLL_CTL_ADD, fds [i], &event);
        }
    self->accept_paused = paused;
    self->accept_resume = wsr_util_mono_ms () + S_ACCEPT_PAUSE_MS;
}

//  Bind a listening socket, or take the inherited one (> 0: handed over by
//  the process this one replaces); returns the fd or -1, and the bound port.
static int
s_listen (s_listener_t *self, const char *bind_addr, int port, int inherit_fd, int *bound_port)
{
    struct sockaddr_storage addr = { 0 };
    socklen_t addr_len;
    struct sockaddr_in *in = (struct sockaddr_in *) &addr;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *) &addr;
    if (inet_pton (AF_INET, bind_addr, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
        in->sin_port = htons ((uint16_t) port);
        addr_len = sizeof *in;
    }
    else
    if (inet_pton (AF_INET6, bind_addr, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons ((uint16_t) port);
        addr_len = sizeof *in6;
    }
    else {
        zsys_error ("listener: bad bind address '%s'", bind_addr);
        return -1;
    }
    int fd = inherit_fd;
    if (fd > 0) {
        //  Handed over by the process this one replaces: bound and listening
        int flags = fcntl (fd, F_GETFL);
        if (flags < 0 || fcntl (fd, F_SETFL, flags | O_NONBLOCK)
        ||  fcntl (fd, F_SETFD, FD_CLOEXEC))
            return -1;
        goto bound;
    }
    fd = socket (addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt (fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (self->opts.reuseport)
        setsockopt (fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (addr.ss_family == AF_INET6) {
        //  Dual stack on purpose, whatever net.ipv6.bindv6only says: "::"
        //  takes IPv4 clients too, as ::ffff:a.b.c.d, which the per-address
        //  counters read as the IPv4 address
        int zero = 0;
        if (setsockopt (fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero))
            zsys_warning ("listener: IPV6_V6ONLY=0: %s", strerror (errno));
    }
    if (bind (fd, (struct sockaddr *) &addr, addr_len) || listen (fd, 4096)) {
        zsys_error ("listener: cannot listen on %s:%d: %s", bind_addr, port, strerror (errno));
        close (fd);
        return -1;
    }
bound:;
    struct sockaddr_storage bound;
    socklen_t bound_len = sizeof bound;
    getsockname (fd, (struct sockaddr *) &bound, &bound_len);
    *bound_port = ntohs (bound.ss_family == AF_INET
                        ? ((struct sockaddr_in *) &bound)->sin_port
                        : ((struct sockaddr_in6 *) &bound)->sin6_port);
    return fd;
}

static void
s_stop_accepting (s_listener_t *self)
{
    if (self->listen_fd >= 0) {
        epoll_ctl (self->epoll_fd, EPOLL_CTL_DEL, self->listen_fd, NULL);
        close (self->listen_fd);
        self->listen_fd = -1;
    }
    if (self->tls_fd >= 0) {
        epoll_ctl (self->epoll_fd, EPOLL_CTL_DEL, self->tls_fd, NULL);
        close (self->tls_fd);
        self->tls_fd = -1;
    }
    self->ready = false;
}

static void
s_handle_pipe (s_listener_t *self)
{
    char *command = zstr_recv (self->pipe);
    if (!command) {
        self->terminated = true;
        return;
    }
    if (streq (command, "$TERM"))
        self->terminated = true;
    else
    if (streq (command, WSR_CMD_START))
        zsock_send (self->pipe, "i", self->status);
    else
    if (streq (command, WSR_CMD_PORT))
        zsock_send (self->pipe, "i", self->port);
    else
    if (streq (command, WSR_CMD_TLS_PORT))
        zsock_send (self->pipe, "i", self->tls? self->tls_port: -1);
    else
    if (streq (command, WSR_CMD_RELOAD)) {
        int rc = self->tls? wsr_tls_reload (self->tls): -1;
        if (rc == 0)
            wsr_metrics_add (self->metrics, WSR_M_TLS_RELOADS, 1);
        zsys_info ("listener: TLS certificate %s", rc == 0? "reloaded": "not reloaded");
        zsock_send (self->pipe, "i", rc);
    }
    else
    if (streq (command, WSR_CMD_DRAIN)) {
        s_stop_accepting (self);
        self->draining = true;
        zsock_send (self->pipe, "i", 0);
    }
    else
    if (streq (command, WSR_CMD_PAUSE)) {
        //  Handover: the new process accepts from now on; ours stays open
        //  in case it fails
        int fd = self->listen_fd >= 0? fcntl (self->listen_fd, F_DUPFD_CLOEXEC, 0): -1;
        if (self->listen_fd >= 0 && !self->accept_paused)
            epoll_ctl (self->epoll_fd, EPOLL_CTL_DEL, self->listen_fd, NULL);
        self->accept_paused = true;
        self->accept_resume = INT64_MAX;
        zsock_send (self->pipe, "i", fd);
    }
    else
    if (streq (command, WSR_CMD_RESUME)) {
        if (self->listen_fd >= 0 && self->accept_paused) {
            struct epoll_event event = { .events = EPOLLIN };
            event.data.u64 = S_TAG_LISTEN;
            epoll_ctl (self->epoll_fd, EPOLL_CTL_ADD, self->listen_fd, &event);
        }
        self->accept_paused = false;
        zsock_send (self->pipe, "i", 0);
    }
    else
        assert (false);
    zstr_free (&command);
}

static void
s_listener_actor (zsock_t *pipe, void *args)
{
    s_args_t *a = (s_args_t *) args;
    s_listener_t self_data = { 0 };
    s_listener_t *self = &self_data;
    self->pipe = pipe;
    self->opts = a->opts;
    self->metrics = a->metrics;
    self->listen_fd = -1;
    self->tls_fd = -1;
    self->tls_port = -1;
    self->spare_fd = open ("/dev/null", O_RDONLY | O_CLOEXEC);
    if (a->opts.api_key && *a->opts.api_key) {
        self->api_key = strdup (a->opts.api_key);
        crypto_generichash (self->api_key_hash, sizeof self->api_key_hash,
                            (const uint8_t *) self->api_key, strlen (self->api_key), NULL, 0);
    }
    if (a->opts.console_key && *a->opts.console_key) {
        self->console_key = strdup (a->opts.console_key);
        crypto_generichash (self->console_key_hash, sizeof self->console_key_hash,
                            (const uint8_t *) self->console_key, strlen (self->console_key),
                            NULL, 0);
    }
    if (a->opts.jwt_secret && a->opts.jwt_secret_len) {
        self->jwt_secret = (uint8_t *) malloc (a->opts.jwt_secret_len);
        memcpy (self->jwt_secret, a->opts.jwt_secret, a->opts.jwt_secret_len);
        self->jwt_secret_len = a->opts.jwt_secret_len;
    }
    self->node_name = a->opts.node_name? strdup (a->opts.node_name): NULL;
    self->stream_next = wsr_util_mono_ms () + S_STREAM_PERIOD_MS;
    pthread_setname_np (pthread_self (), "wsr-listener");
    if (a->opts.allowed_origins && *a->opts.allowed_origins) {
        char *list = strdup (a->opts.allowed_origins);
        char *saveptr = NULL;
        for (char *item = strtok_r (list, ", ", &saveptr); item;
             item = strtok_r (NULL, ", ", &saveptr)) {
            self->origins = (char **) realloc (self->origins,
                                               (self->origin_count + 1) * sizeof (char *));
            self->origins [self->origin_count++] = strdup (item);
        }
        free (list);
    }
    self->hs_tokens = (double) a->opts.handshake_rate;
    if (a->opts.max_pending_per_ip)
        self->pending_ips = wsr_ipcount_new ((uint32_t) a->opts.max_pending_per_ip);
    self->hs_refill = wsr_util_mono_ms ();

    self->auth = zsock_new (ZMQ_PUSH);
    self->publish = zsock_new (ZMQ_PUSH);
    assert (self->auth && self->publish);
    zsock_set_sndhwm (self->auth, WSR_HWM);
    zsock_set_sndhwm (self->publish, WSR_HWM);
    zsock_set_sndtimeo (self->auth, 0);
    zsock_set_sndtimeo (self->publish, 0);
    zsock_set_linger (self->auth, 0);
    zsock_set_linger (self->publish, 0);
    self->status = 0;
    if (zsock_connect (self->auth, WSR_EP_AUTH, a->name) == -1
    ||  zsock_connect (self->publish, WSR_EP_PUB, a->name) == -1)
        self->status = -1;
    //  Verified here when the node says where ADOPT goes (workers); with
    //  no workers the secret only signs the console's dev tokens
    if (a->opts.jwt_secret && a->opts.jwt_secret_len && a->opts.workers > 0) {
        assert (a->opts.workers <= WSR_MAX_WORKERS);
        self->verifier = wsr_jwt_new_hs256 (a->opts.jwt_secret, a->opts.jwt_secret_len);
        assert (self->verifier);
        wsr_jwt_set_leeway (self->verifier, a->opts.jwt_leeway >= 0? a->opts.jwt_leeway: 0);
        wsr_jwt_set_require_exp (self->verifier, a->opts.require_exp);
        self->workers = a->opts.workers;
        for (int i = 0; i < self->workers; i++) {
            self->adopt [i] = zsock_new (ZMQ_PUSH);
            assert (self->adopt [i]);
            zsock_set_sndhwm (self->adopt [i], WSR_HWM);
            zsock_set_sndtimeo (self->adopt [i], 0);
            zsock_set_linger (self->adopt [i], 0);
            if (zsock_connect (self->adopt [i], WSR_EP_ADOPT, a->name, i) == -1)
                self->status = -1;
        }
    }
    self->opts.jwt_secret = NULL;   //  borrowed until we signal: not kept
    self->epoll_fd = epoll_create1 (EPOLL_CLOEXEC);
    self->listen_fd = s_listen (self, a->opts.bind, a->opts.port, a->opts.inherit_fd,
                                &self->port);
    struct epoll_event event = { .events = EPOLLIN };
    event.data.u64 = S_TAG_LISTEN;
    if (self->listen_fd < 0 || self->epoll_fd < 0
    ||  epoll_ctl (self->epoll_fd, EPOLL_CTL_ADD, self->listen_fd, &event))
        self->status = -1;
    if (a->opts.tls_cert) {
        //  The paths are copied; the key's contents are never logged
        self->tls = wsr_tls_new (a->opts.tls_cert, a->opts.tls_key? a->opts.tls_key: "");
        self->tls_port = self->port;
        if (!self->tls)
            self->status = -1;
        else
        if (a->opts.tls_port) {
            //  Not handed over by an upgrade: while the old process holds
            //  it the new one cannot bind it, and the upgrade rolls back
            //  (README, Upgrades)
            self->tls_fd = s_listen (self, a->opts.bind,
                                     a->opts.tls_port < 0? 0: a->opts.tls_port, 0,
                                     &self->tls_port);
            event.data.u64 = S_TAG_LISTEN_TLS;
            if (self->tls_fd < 0 || epoll_ctl (self->epoll_fd, EPOLL_CTL_ADD, self->tls_fd, &event))
                self->status = -1;
        }
    }
    event.data.u64 = S_TAG_PIPE;
    if (self->epoll_fd >= 0)
        epoll_ctl (self->epoll_fd, EPOLL_CTL_ADD, zsock_fd (pipe), &event);
    self->ready = self->status == 0;
    zsock_signal (pipe, 0);

    struct epoll_event events [S_MAX_EVENTS];
    bool again = true;
    while (!self->terminated) {
        int timeout = again? 0: self->accept_paused? S_ACCEPT_PAUSE_MS: 250;
        int n = epoll_wait (self->epoll_fd, events, S_MAX_EVENTS, timeout);
        if (n < 0 && errno != EINTR)
            break;
        again = false;
        for (int i = 0; i < n; i++) {
            uint64_t tag = events [i].data.u64;
            if (tag == S_TAG_LISTEN || tag == S_TAG_LISTEN_TLS)
                s_accept (self, tag == S_TAG_LISTEN_TLS);
            else
            if (tag >= S_TAG_MAX)
                s_hs_read (self, (s_hs_t *) events [i].data.ptr);
        }
        if (self->batch_size)
            s_adopt_flush (self);
        //  Edge-triggered ZMQ_FD: check the pipe every turn
        while (!self->terminated && (zsock_events (pipe) & ZMQ_POLLIN))
            s_handle_pipe (self);
        int64_t now = wsr_util_mono_ms ();
        while (self->head && self->head->deadline <= now) {
            s_hs_t *hs = self->head;
            if (!hs->served) {
                //  Never finished a request (slowloris or silent): 408
                wsr_metrics_add (self->metrics, WSR_M_HS_FAIL_TIMEOUT, 1);
                hs->keep_alive = false;
                s_respond (hs, 408, "text/plain", NULL, "request timeout\n", 16);
            }
            //  No lingering here: the client had its whole deadline, and a
            //  slow one must not hold its place two seconds longer
            s_hs_end (self, hs, true);
        }
        while (self->linger_head && self->linger_head->deadline <= now)
            s_hs_end (self, self->linger_head, true);
        if (self->accept_paused && now >= self->accept_resume && self->listen_fd >= 0)
            s_accept_pause (self, false);
        if (now >= self->stream_next) {
            if (self->stream_head)
                s_streams_tick (self);
            self->stream_next = now + S_STREAM_PERIOD_MS;
        }
    }
    if (self->batch_size)
        s_adopt_flush (self);
    while (self->stream_head)
        s_hs_end (self, self->stream_head, true);
    while (self->head)
        s_hs_end (self, self->head, true);
    while (self->linger_head)
        s_hs_end (self, self->linger_head, true);
    wsr_ipcount_destroy (&self->pending_ips);
    s_stop_accepting (self);
    if (self->spare_fd >= 0)
        close (self->spare_fd);
    if (self->epoll_fd >= 0)
        close (self->epoll_fd);
    zsock_destroy (&self->auth);
    zsock_destroy (&self->publish);
    for (int i = 0; i < self->workers; i++)
        zsock_destroy (&self->adopt [i]);
    wsr_jwt_destroy (&self->verifier);
    wsr_tls_destroy (&self->tls);
    free (self->api_key);
    free (self->console_key);
    if (self->jwt_secret)
        sodium_memzero (self->jwt_secret, self->jwt_secret_len);
    free (self->jwt_secret);
    free (self->node_name);
    for (size_t i = 0; i < self->origin_count; i++)
        free (self->origins [i]);
    free (self->origins);
}

//  --------------------------------------------------------------------------
//  Start the listener.
wsr_listener_t *
wsr_listener_new (const char *name, const wsr_listener_opts_t *opts, wsr_metrics_t *metrics)
{
    assert (name && opts && opts->bind && metrics);
    //  The actor copies what it keeps before it signals, so borrowing is safe
    s_args_t args = { (char *) name, *opts, metrics };
    wsr_listener_t *self = (wsr_listener_t *) zmalloc (sizeof (wsr_listener_t));
    self->actor = wsr_util_actor_start (s_listener_actor, &args);
    if (!self->actor)
        wsr_listener_destroy (&self);
    return self;
}

//  --------------------------------------------------------------------------
//  Stop the listener.
void
wsr_listener_destroy (wsr_listener_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        wsr_listener_t *self = *self_p;
        zactor_destroy (&self->actor);
        free (self);
        *self_p = NULL;
    }
}

//  A command whose answer is one number (-1 if none came).
static int
s_ask (wsr_listener_t *self, const char *command)
{
    int value = -1;
    zsock_send (self->actor, "s", command);
    zsock_recv (self->actor, "i", &value);
    return value;
}

//  --------------------------------------------------------------------------
//  Bound port.
int
wsr_listener_port (wsr_listener_t *self)
{
    assert (self);
    return s_ask (self, WSR_CMD_PORT);
}

//  --------------------------------------------------------------------------
//  Bound TLS port.
int
wsr_listener_tls_port (wsr_listener_t *self)
{
    assert (self);
    return s_ask (self, WSR_CMD_TLS_PORT);
}

//  --------------------------------------------------------------------------
//  Reload the TLS certificate.
int
wsr_listener_reload (wsr_listener_t *self)
{
    assert (self);
    return s_ask (self, WSR_CMD_RELOAD);
}

//  --------------------------------------------------------------------------
//  Stop accepting; readiness off.
void
wsr_listener_drain (wsr_listener_t *self)
{
    assert (self);
    int rc;
    zsock_send (self->actor, "s", WSR_CMD_DRAIN);
    zsock_recv (self->actor, "i", &rc);
}

//  --------------------------------------------------------------------------
//  Handover: stop accepting, get a duplicate of the listening socket.
int
wsr_listener_pause (wsr_listener_t *self)
{
    assert (self);
    int fd = -1;
    if (zsock_send (self->actor, "s", WSR_CMD_PAUSE) || zsock_recv (self->actor, "i", &fd))
        return -1;
    return fd;
}

//  Handover failed: accept again.
void
wsr_listener_resume (wsr_listener_t *self)
{
    assert (self);
    int rc;
    if (zsock_send (self->actor, "s", WSR_CMD_RESUME) == 0)
        zsock_recv (self->actor, "i", &rc);
}

//  --------------------------------------------------------------------------
//  Selftest: the test plays auth (PULL AUTH) and router (PULL PUBLISH) and
//  talks HTTP to the port over real TCP.

//  Connect from a given loopback source address (host order, 0 = any).
static int
s_connect_from (int port, uint32_t source)
{
    int fd = socket (AF_INET, SOCK_STREAM, 0);
    if (source) {
        struct sockaddr_in from = { .sin_family = AF_INET };
        from.sin_addr.s_addr = htonl (source);
        assert (bind (fd, (struct sockaddr *) &from, sizeof from) == 0);
    }
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons ((uint16_t) port) };
    addr.sin_addr.s_addr = htonl (INADDR_LOOPBACK);
    assert (connect (fd, (struct sockaddr *) &addr, sizeof addr) == 0);
    struct timeval tv = { 2, 0 };
    setsockopt (fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

static int
s_connect (int port)
{
    return s_connect_from (port, 0);
}

//  Send a request on an open connection and read one response whole (by
//  Content-Length; a HEAD answer ends with its headers). Caller frees.
static char *
s_exchange (int fd, const char *request, bool head)
{
    assert (send (fd, request, strlen (request), MSG_NOSIGNAL) == (ssize_t) strlen (request));
    char *buf = (char *) zmalloc (65536);
    size_t got = 0;
    ssize_t n;
    while (got < 65535 && (n = recv (fd, buf + got, 1, 0)) > 0) {
        got += (size_t) n;
        char *end = strstr (buf, "\r\n\r\n");
        char *length = strstr (buf, "Content-Length: ");
        if (end && length && length < end
        &&  got >= (size_t) (end + 4 - buf) + (head? 0: strtoul (length + 16, NULL, 10)))
            break;
    }
    return buf;
}

//  Wait (bounded) until a gauge reaches a value.
static bool
s_gauge_reaches (wsr_metrics_t *metrics, wsr_metric_t metric, int64_t want)
{
    int64_t deadline = zclock_mono () + 3000;
    while ((int64_t) wsr_metrics_get (metrics, metric) != want && zclock_mono () < deadline)
        zclock_sleep (5);
    return (int64_t) wsr_metrics_get (metrics, metric) == want;
}

//  Send a request, read one whole response (by Content-Length, or until the
//  server closes); caller frees.
static char *
s_http (int port, const char *request)
{
    int fd = s_connect (port);
    assert (send (fd, request, strlen (request), 0) == (ssize_t) strlen (request));
    char *buf = (char *) zmalloc (65536);
    size_t got = 0;
    ssize_t n;
    while (got < 65535 && (n = recv (fd, buf + got, 65535 - got, 0)) > 0) {
        got += (size_t) n;
        char *end = strstr (buf, "\r\n\r\n");
        char *length = strstr (buf, "Content-Length: ");
        if (end && length && length < end
        &&  got >= (size_t) (end + 4 - buf) + strtoul (length + 16, NULL, 10))
            break;
    }
    close (fd);
    return buf;
}

static char *
s_post (int port, const char *key, const char *body)
{
    char request [4096];
    snprintf (request, sizeof request,
              "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: apikey %s\r\n"
              "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
              key, strlen (body), body);
    return s_http (port, request);
}

//  Read from a stream connection until `want` SSE events (blank-line ends
//  after the header block) arrived, or 3 s. Caller owns the text.
static char *
s_read_events (int fd, int want)
{
    char *buf = (char *) zmalloc (65536);
    size_t got = 0;
    int64_t until = wsr_util_mono_ms () + 3000;
    while (got < 65535 && wsr_util_mono_ms () < until) {
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        if (poll (&pfd, 1, 100) <= 0)
            continue;
        ssize_t n = recv (fd, buf + got, 65535 - got, 0);
        if (n <= 0)
            break;
        got += (size_t) n;
        int events = 0;
        for (char *at = strstr (buf, "\r\n\r\n"); at && (at = strstr (at + 1, "\n\n")); )
            events++;
        if (events >= want)
            break;
    }
    return buf;
}

//  The console: the page without a key and with its security headers; data
//  with the API key or the console key, 401 without, 403 with neither
//  configured; the console key cannot publish; dev tokens verify with the
//  node's secret; topics from the census; the live stream.
static void
s_console_test (wsr_metrics_t *metrics)
{
    wsr_census_t *census = wsr_census_new (1, WSR_CENSUS_TOP);
    const char secret [] = "console-selftest-secret-0123456789abcdef";
    wsr_listener_opts_t opts = {
        .bind = "127.0.0.1", .port = 0, .api_key = "sekrit", .console_key = "peek",
        .max_pending = 100, .handshake_timeout_ms = 2000, .max_message = 1024,
        .jwt_secret = (const uint8_t *) secret, .jwt_secret_len = strlen (secret),
        .census = census, .node_name = "lconsole"
    };
    wsr_listener_t *listener = wsr_listener_new ("lconsole", &opts, metrics);
    assert (listener);
    int port = wsr_listener_port (listener);

    char *reply = s_http (port, "GET /console HTTP/1.1\r\nHost: x\r\n\r\n");
    assert (strncmp (reply, "HTTP/1.1 200", 12) == 0);
    assert (strstr (reply, "Content-Type: text/html"));
    assert (strstr (reply, "Content-Security-Policy: default-src 'none'; script-src 'self';"));
    assert (strstr (reply, "frame-ancestors 'none'") && strstr (reply, "X-Frame-Options: DENY"));
    assert (strstr (reply, "id=\"sessions-open\""));
    free (reply);
    reply = s_http (port, "GET /console/console.js HTTP/1.1\r\nHost: x\r\n\r\n");
    assert (strncmp (reply, "HTTP/1.1 200", 12) == 0 && strstr (reply, "sessionStorage"));
    free (reply);
    reply = s_http (port, "GET /console/../healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert (strncmp (reply, "HTTP/1.1 404", 12) == 0);
    free (reply);

    //  Keys: none or wrong 401; the console key reads, cannot publish
    int64_t refused = wsr_metrics_get (metrics, WSR_M_CONSOLE_REFUSED);
    reply = s_http (port, "GET /api/stats HTTP/1.1\r\nHost: x\r\n\r\n");
    assert (strncmp (reply, "HTTP/1.1 401", 12) == 0);
    free (reply);
    reply = s_http (port, "GET /api/topics HTTP/1.1\r\nAuthorization: apikey peek2\r\n\r\n");
    assert (strncmp (reply, "HTTP/1.1 401", 12) == 0);
    free (reply);
    assert (wsr_metrics_get (metrics, WSR_M_CONSOLE_REFUSED) == refused + 2);
    reply = s_http (port, "GET /api/stats HTTP/1.1\r\nAuthorization: apikey peek\r\n\r\n");
    assert (strncmp (reply, "HTTP/1.1 200", 12) == 0 && strstr (reply, "Cache-Control: no-store"));
    assert (strstr (reply, "\"key\":\"console\"") && strstr (reply, "\"can_publish\":false"));
    assert (strstr (reply, "\"can_mint\":true") && strstr (reply, "\"node\":\"lconsole\""));
    free (reply);
    reply = s_http (port, "GET /api/stats HTTP/1.1\r\nAuthorization: apikey sekrit\r\n\r\n");
    assert (strstr (reply, "\"key\":\"api\"") && strstr (reply, "\"can_publish\":true"));
    free (reply);
    reply = s_post (port, "peek", "{\"user\":\"u1\",\"data\":\"x\"}");
    assert (strncmp (reply, "HTTP/1.1 401", 12) == 0);
    free (reply);

    //  A dev token for the user asked, signed with the node's secret
    reply = s_http (port, "POST /api/token?user=alice&channels=lobby HTTP/1.1\r\n"
                          "Authorization: apikey peek\r\n\r\n");
    assert (strncmp (reply, "HTTP/1.1 200", 12) == 0);
    json_t *body = json_loads (strstr (reply, "\r\n\r\n") + 4, 0, NULL);
    const char *token = json_string_value (json_object_get (body, "token"));
    assert (token);
    wsr_jwt_t *verifier = wsr_jwt_new_hs256 ((const uint8_t *) secret, strlen (secret));
    wsr_claims_t claims;
    const char *reason = NULL;
    int64_t now = (int64_t) time (NULL);
    assert (wsr_jwt_verify (verifier, token, strlen (token), now, &claims, &reason) == 0);
    assert (streq (claims.sub, "alice") && claims.channels_count == 1);
    assert (claims.exp > now && claims.exp <= now + WSR_CONSOLE_TOKEN_TTL_S);
    wsr_jwt_destroy (&verifier);
    json_decref (body);
    free (reply);
    reply = s_http (port, "POST /api/token?user=a%20b HTTP/1.1\r\n"
                          "Authorization: apikey peek\r\n\r\n");
    assert (strncmp (reply, "HTTP/1.1 400", 12) == 0);
    free (reply);

    //  Topics: asking starts the census; a worker's count shows next time
    reply = s_http (port, "GET /api/topics HTTP/1.1\r\nAuthorization: apikey peek\r\n\r\n");
    assert (strncmp (reply, "HTTP/1.1 200", 12) == 0 && strstr (reply, "\"age_ms\":-1"));
    free (reply);
    assert (wsr_census_due (census, 0, wsr_util_mono_ms ()));
    wsr_census_begin (census, 0);
    wsr_census_add (census, 0, "channel:hall", 3);
    wsr_census_add (census, 0, "user:u1", 1);
    wsr_census_commit (census, 0, 2, wsr_util_mono_ms ());
    reply = s_http (port, "GET /api/topics?limit=1 HTTP/1.1\r\n"
                          "Authorization: apikey sekrit\r\n\r\n");
    assert (strstr (reply, "{\"topic\":\"channel:hall\",\"subscribers\":3}]"));
    free (reply);
    reply = s_http (port, "GET /api/topics?limit=0 HTTP/1.1\r\n"
                          "Authorization: apikey sekrit\r\n\r\n");
    assert (strncmp (reply, "HTTP/1.1 400", 12) == 0);
    free (reply);

    //  The live stream: an event at once, one a second after; it ends
    //  when the client goes
    assert (s_gauge_reaches (metrics, WSR_M_PENDING_CONNECTIONS, 0));
    int fd = s_connect (port);
    const char *ask = "GET /api/stats/stream HTTP/1.1\r\nAuthorization: apikey peek\r\n\r\n";
    assert (send (fd, ask, strlen (ask), 0) == (ssize_t) strlen (ask));
    reply = s_read_events (fd, 2);
    assert (strncmp (reply, "HTTP/1.1 200", 12) == 0);
    assert (strstr (reply, "Content-Type: text/event-stream\r\n"));
    char *first = strstr (reply, "data: {");
    assert (first && strstr (first + 1, "data: {"));
    free (reply);
    assert (wsr_metrics_get (metrics, WSR_M_PENDING_CONNECTIONS) == 1);
    close (fd);
    assert (s_gauge_reaches (metrics, WSR_M_PENDING_CONNECTIONS, 0));
    wsr_listener_destroy (&listener);

    //  No key configured: the data endpoints are off, the page still loads;
    //  no secret: no tokens
    opts.api_key = NULL;
    opts.console_key = NULL;
    listener = wsr_listener_new ("lconsole", &opts, metrics);
    port = wsr_listener_port (listener);
    const char *off [] = { "GET /api/stats", "GET /api/stats/stream", "GET /api/topics",
                           "POST /api/token?user=x" };
    for (size_t i = 0; i < sizeof off / sizeof off [0]; i++) {
        char request [256];
        snprintf (request, sizeof request, "%s HTTP/1.1\r\nAuthorization: apikey x\r\n\r\n",
                  off [i]);
        reply = s_http (port, request);
        assert (strncmp (reply, "HTTP/1.1 403", 12) == 0);
        free (reply);
    }
    reply = s_http (port, "GET /console/ HTTP/1.1\r\nHost: x\r\n\r\n");
    assert (strncmp (reply, "HTTP/1.1 200", 12) == 0);
    free (reply);
    wsr_listener_destroy (&listener);
    opts.console_key = "peek";
    opts.jwt_secret = NULL;
    opts.jwt_secret_len = 0;
    listener = wsr_listener_new ("lconsole", &opts, metrics);
    port = wsr_listener_port (listener);
    reply = s_http (port, "POST /api/token?user=x HTTP/1.1\r\nAuthorization: apikey peek\r\n\r\n");
    assert (strncmp (reply, "HTTP/1.1 403", 12) == 0 && strstr (reply, "public key"));
    free (reply);
    wsr_listener_destroy (&listener);
    wsr_census_destroy (&census);
}

void
wsr_listener_test (bool verbose)
{
    (void) verbose;
    wsr_metrics_t *metrics = wsr_metrics_new ();
    zsock_t *auth = zsock_new_pull ("inproc://wsr-auth-ltest");
    zsock_t *router = zsock_new_pull ("inproc://wsr-pub-ltest");
    wsr_ipcount_t *ipcount = wsr_ipcount_new (50);
    wsr_listener_opts_t opts = {
        .bind = "127.0.0.1", .port = 0, .api_key = "sekrit", .max_pending = 100,
        .handshake_timeout_ms = 300, .max_message = 1024 * 1024,
        .allowed_origins = "https://game.example, https://admin.example", .ipcount = ipcount
    };
    wsr_listener_t *listener = wsr_listener_new ("ltest", &opts, metrics);
    assert (listener);
    int port = wsr_listener_port (listener);
    assert (port > 0);

    char *reply = s_http (port, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert (strncmp (reply, "HTTP/1.1 200 OK\r\n", 17) == 0);
    free (reply);
    //  Ready only while the backplane is up
    reply = s_http (port, "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert (strncmp (reply, "HTTP/1.1 503", 12) == 0 && strstr (reply, "backplane down"));
    free (reply);
    wsr_metrics_add (metrics, WSR_M_BACKPLANE_UP, 1);
    reply = s_http (port, "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert (strncmp (reply, "HTTP/1.1 200", 12) == 0);
    free (reply);
    reply = s_http (port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert (strstr (reply, "wsrouter_http_requests_total"));
    free (reply);
    //  Keep-alive with pipelining: two requests in one packet, two answers
    reply = s_http (port, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                          "GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert (strstr (reply, "Connection: keep-alive\r\n"));
    char *second = strstr (reply + 1, "HTTP/1.1 404");
    if (!second) {
        //  The first answer may arrive alone: read on the same connection
        free (reply);
        int both = s_connect (port);
        const char *two = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                          "GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        assert (send (both, two, strlen (two), 0) == (ssize_t) strlen (two));
        char all [2048] = "";
        size_t got = 0;
        ssize_t r;
        while (got < sizeof all - 1 && (r = recv (both, all + got, sizeof all - 1 - got, 0)) > 0)
            got += (size_t) r;
        close (both);
        assert (strstr (all, "HTTP/1.1 200") && strstr (all, "HTTP/1.1 404"));
        assert (strstr (all, "Connection: close\r\n"));
        reply = strdup (all);
    }
    free (reply);
    reply = s_http (port, "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
    assert (strncmp (reply, "HTTP/1.1 404", 12) == 0);
    free (reply);
    reply = s_http (port, "garbage\r\n\r\n");
    assert (strncmp (reply, "HTTP/1.1 400", 12) == 0);
    free (reply);

    //  Publish: wrong key, bad body, good user and channel
    reply = s_post (port, "wrong", "{\"user\":\"u1\",\"data\":\"x\"}");
    assert (strncmp (reply, "HTTP/1.1 401", 12) == 0);
    free (reply);
    reply = s_post (port, "sekrit", "{\"user\":\"u 1\",\"data\":\"x\"}");
    assert (strncmp (reply, "HTTP/1.1 400", 12) == 0);
    free (reply);
    reply = s_post (port, "sekrit", "{\"user\":\"u1\",\"data\":{\"a\":[1,2]}}");
    assert (strncmp (reply, "HTTP/1.1 202", 12) == 0);
    free (reply);
    zframe_t *topic, *env;
    char *verb;
    assert (zsock_recv (router, WSR_PIC_PUBLISH, &verb, &topic, &env) == 0);
    assert (streq (verb, WSR_MSG_PUBLISH));
    assert (zframe_size (topic) == 8 && !memcmp (zframe_data (topic), "user:u1", 8));
    wsr_envelope_t decoded;
    assert (wsr_envelope_decode (zframe_data (env), zframe_size (env), &decoded) == 0);
    assert (decoded.size == 11 && memcmp (decoded.data, "{\"a\":[1,2]}", 11) == 0);
    assert (decoded.kind == WSR_KIND_TEXT);
    zstr_free (&verb);
    zframe_destroy (&topic);
    zframe_destroy (&env);
    reply = s_post (port, "sekrit", "{\"channel\":\"room.7\",\"data_base64\":\"/wD+\"}");
    assert (strncmp (reply, "HTTP/1.1 202", 12) == 0);
    free (reply);
    assert (zsock_recv (router, WSR_PIC_PUBLISH, &verb, &topic, &env) == 0);
    assert (!memcmp (zframe_data (topic), "channel:room.7", 15));
    assert (wsr_envelope_decode (zframe_data (env), zframe_size (env), &decoded) == 0);
    assert (decoded.size == 3 && decoded.kind == WSR_KIND_BINARY);
    zstr_free (&verb);
    zframe_destroy (&topic);
    zframe_destroy (&env);

    //  Upgrade with a token and a pipelined frame: AUTH carries both and the fd
    int fd = s_connect (port);
    const char *upgrade = "GET /ws?token=abc.def.ghi HTTP/1.1\r\nHost: x\r\n"
                          "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                          "Sec-WebSocket-Version: 13\r\n\r\n\x81\x80" "abcd";
    assert (send (fd, upgrade, strlen (upgrade), 0) > 0);
    char *accept, *peer;
    uint64_t id;
    int handed_fd;
    zframe_t *token, *early;
    int slot, flags;
    void *tls = NULL;
    assert (zsock_recv (auth, WSR_PIC_AUTH, &verb, &id, &handed_fd, &slot, &flags, &accept,
                        &peer, &token, &early, &tls) == 0);
    wsr_ipcount_release (ipcount, slot);
    assert (flags == 0);            //  no subprotocol offered
    assert (streq (accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    assert (zframe_size (token) == 11 && !memcmp (zframe_data (token), "abc.def.ghi", 11));
    assert (zframe_size (early) == 6);
    assert (handed_fd >= 0 && strncmp (peer, "127.0.0.1:", 10) == 0);
    close (handed_fd);
    close (fd);
    zstr_free (&verb);
    zstr_free (&accept);
    zstr_free (&peer);
    zframe_destroy (&token);
    zframe_destroy (&early);

    //  Subprotocol offers: wsrouter.v1 anywhere in the list sets the flag,
    //  names are compared exactly (case and prefixes do not match)
    const char *offers [][2] = {
        { "wsrouter.v1", "1" }, { "chat, wsrouter.v1", "1" }, { "a,wsrouter.v1 ,b", "1" },
        { "WSROUTER.V1", "0" }, { "wsrouter.v10", "0" }, { "wsrouter", "0" }, { ",,", "0" }
    };
    for (size_t i = 0; i < sizeof offers / sizeof offers [0]; i++) {
        fd = s_connect (port);
        char request [512];
        snprintf (request, sizeof request,
                  "GET /ws?token=t HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Protocol: %s\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n", offers [i][0]);
        assert (send (fd, request, strlen (request), 0) > 0);
        assert (zsock_recv (auth, WSR_PIC_AUTH, &verb, &id, &handed_fd, &slot, &flags, &accept,
                            &peer, &token, &early, &tls) == 0);
        assert (flags == (offers [i][1][0] == '1'? WSR_ADOPT_V1: 0));
        wsr_ipcount_release (ipcount, slot);
        close (handed_fd);
        close (fd);
        zstr_free (&verb);
        zstr_free (&accept);
        zstr_free (&peer);
        zframe_destroy (&token);
        zframe_destroy (&early);
    }

    //  Version 8 → 426 with the supported version
    reply = s_http (port, "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                          "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                          "Sec-WebSocket-Version: 8\r\n\r\n");
    assert (strncmp (reply, "HTTP/1.1 426", 12) == 0);
    assert (strstr (reply, "Sec-WebSocket-Version: 13\r\n"));
    free (reply);

    //  Slowloris: an incomplete request is closed at the deadline (300 ms)
    fd = s_connect (port);
    assert (send (fd, "GET /ws HTTP/1.1\r\nHost:", 23, 0) == 23);
    char buf [256];
    int64_t start = zclock_mono ();
    ssize_t n = recv (fd, buf, sizeof buf, 0);
    assert (n > 0 && strncmp (buf, "HTTP/1.1 408", 12) == 0);
    assert (zclock_mono () - start < 1900);
    close (fd);
    assert (wsr_metrics_get (metrics, WSR_M_HS_FAIL_TIMEOUT) == 1);

    //  Origin allow-list: listed → handed over; other → 403
    fd = s_connect (port);
    const char *good_origin = "GET /ws?token=t HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                              "Connection: Upgrade\r\nOrigin: https://game.example\r\n"
                              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                              "Sec-WebSocket-Version: 13\r\n\r\n";
    assert (send (fd, good_origin, strlen (good_origin), 0) > 0);
    int ip_slot;
    assert (zsock_recv (auth, WSR_PIC_AUTH, &verb, &id, &handed_fd, &ip_slot, &flags, &accept,
                        &peer, &token, &early, &tls) == 0);
    assert (ip_slot >= 0);
    wsr_ipcount_release (ipcount, ip_slot);     //  as the session would
    close (handed_fd);
    close (fd);
    zstr_free (&verb);
    zstr_free (&accept);
    zstr_free (&peer);
    zframe_destroy (&token);
    zframe_destroy (&early);
    reply = s_http (port, "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                          "Connection: Upgrade\r\nOrigin: https://evil.example\r\n"
                          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                          "Sec-WebSocket-Version: 13\r\n\r\n");
    assert (strncmp (reply, "HTTP/1.1 403", 12) == 0);
    free (reply);
    assert (wsr_metrics_get (metrics, WSR_M_ORIGIN_REFUSED) == 1);

    //  HEAD: GET's headers, Content-Length included, no body
    fd = s_connect (port);
    reply = s_exchange (fd, "HEAD /nope HTTP/1.1\r\nHost: x\r\n\r\n", true);
    assert (strncmp (reply, "HTTP/1.1 404", 12) == 0 && strstr (reply, "Content-Length: 10\r\n"));
    free (reply);
    //  Nothing follows the headers: the next answer starts right away
    reply = s_exchange (fd, "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", false);
    assert (strncmp (reply, "HTTP/1.1 404", 12) == 0);
    free (reply);
    close (fd);

    //  Judged from the headers: a wrong key gets 401 before any body byte is
    //  sent (a 6 MiB body is announced, none sent), and the connection ends
    int64_t rejected = wsr_metrics_get (metrics, WSR_M_PUBLISH_REJECTED);
    fd = s_connect (port);
    reply = s_exchange (fd, "POST /api/publish HTTP/1.1\r\nHost: x\r\n"
                            "Authorization: apikey wrong\r\nContent-Length: 6291456\r\n\r\n",
                        false);
    assert (strncmp (reply, "HTTP/1.1 401", 12) == 0 && strstr (reply, "Connection: close"));
    free (reply);
    assert (wsr_metrics_get (metrics, WSR_M_PUBLISH_REJECTED) == rejected + 1);
    //  Lingering: body bytes sent after the answer are read and dropped,
    //  then the server closes (EOF, no RST while under the budget)
    char junk [4096];
    memset (junk, 'j', sizeof junk);
    assert (send (fd, junk, sizeof junk, MSG_NOSIGNAL) == (ssize_t) sizeof junk);
    shutdown (fd, SHUT_WR);
    char tail [64];
    assert (recv (fd, tail, sizeof tail, 0) == 0);
    close (fd);
    //  Any other request with a body: answered from its headers, closed
    fd = s_connect (port);
    reply = s_exchange (fd, "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n",
                        false);
    assert (strncmp (reply, "HTTP/1.1 200", 12) == 0 && strstr (reply, "Connection: close"));
    free (reply);
    close (fd);
    fd = s_connect (port);
    reply = s_exchange (fd, "POST /ws HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
                        false);
    assert (strncmp (reply, "HTTP/1.1 400", 12) == 0);
    free (reply);
    close (fd);
    //  A last answer followed by more input: the answer arrives whole (the
    //  client's unread pipelined bytes would otherwise turn the close into RST)
    fd = s_connect (port);
    char burst [24576];
    int head_len = snprintf (burst, sizeof burst,
                             "GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    memset (burst + head_len, 'x', sizeof burst - (size_t) head_len);
    assert (send (fd, burst, sizeof burst, MSG_NOSIGNAL) == (ssize_t) sizeof burst);
    zclock_sleep (100);             //  let the server answer before we read
    char answer [256] = "";
    assert (recv (fd, answer, sizeof answer - 1, 0) > 12);
    assert (strncmp (answer, "HTTP/1.1 404", 12) == 0);
    close (fd);

    //  Drain with keep-alive connections open: /readyz says draining and
    //  closes, an upgrade gets 503, the port is closed
    int idle_a = s_connect (port);
    int idle_b = s_connect (port);
    reply = s_exchange (idle_a, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", false);
    assert (strstr (reply, "Connection: keep-alive"));
    free (reply);
    reply = s_exchange (idle_b, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", false);
    free (reply);
    wsr_listener_drain (listener);
    reply = s_exchange (idle_a, "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n", false);
    assert (strncmp (reply, "HTTP/1.1 503", 12) == 0 && strstr (reply, "draining"));
    assert (strstr (reply, "Connection: close"));
    free (reply);
    reply = s_exchange (idle_b, "GET /ws?token=t HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                                "Connection: Upgrade\r\n"
                                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                "Sec-WebSocket-Version: 13\r\n\r\n", false);
    assert (strncmp (reply, "HTTP/1.1 503", 12) == 0);
    free (reply);
    close (idle_a);
    close (idle_b);
    int probe = socket (AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons ((uint16_t) port) };
    addr.sin_addr.s_addr = htonl (INADDR_LOOPBACK);
    assert (connect (probe, (struct sockaddr *) &addr, sizeof addr) == -1);
    close (probe);
    wsr_listener_destroy (&listener);
    assert (wsr_metrics_get (metrics, WSR_M_PENDING_CONNECTIONS) == 0);

    //  Per-address pending cap (50), on a listener with a long handshake
    //  deadline, keep-alive caps and the publish API disabled
    wsr_ipcount_t *capped = wsr_ipcount_new (1);
    opts.ipcount = capped;
    opts.handshake_timeout_ms = 10000;
    opts.max_pending_per_ip = 50;
    opts.keepalive_requests = 3;
    opts.keepalive_lifetime_ms = 300;
    opts.api_key = NULL;
    listener = wsr_listener_new ("ltest", &opts, metrics);
    assert (listener);
    port = wsr_listener_port (listener);
    //  API disabled: 403 from the headers
    fd = s_connect (port);
    reply = s_exchange (fd, "POST /api/publish HTTP/1.1\r\nHost: x\r\n"
                            "Content-Length: 6291456\r\n\r\n", false);
    assert (strncmp (reply, "HTTP/1.1 403", 12) == 0);
    free (reply);
    close (fd);
    //  Request cap: the third answer on one connection says close
    int64_t ka_closed = wsr_metrics_get (metrics, WSR_M_KEEPALIVE_CLOSED);
    fd = s_connect (port);
    for (int i = 0; i < 3; i++) {
        reply = s_exchange (fd, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", false);
        assert (strncmp (reply, "HTTP/1.1 200", 12) == 0);
        assert (strstr (reply, i < 2? "Connection: keep-alive": "Connection: close"));
        free (reply);
    }
    assert (recv (fd, tail, sizeof tail, 0) == 0);
    close (fd);
    assert (wsr_metrics_get (metrics, WSR_M_KEEPALIVE_CLOSED) == ka_closed + 1);
    //  Lifetime (300 ms): an answer after it says close
    fd = s_connect (port);
    reply = s_exchange (fd, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", false);
    assert (strstr (reply, "Connection: keep-alive"));
    free (reply);
    zclock_sleep (350);             //  the connection ages past its lifetime
    reply = s_exchange (fd, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", false);
    assert (strstr (reply, "Connection: close"));
    free (reply);
    close (fd);
    assert (wsr_metrics_get (metrics, WSR_M_KEEPALIVE_CLOSED) == ka_closed + 2);
    assert (s_gauge_reaches (metrics, WSR_M_PENDING_CONNECTIONS, 0));

    //  Session cap per address (1): the first upgrade is handed over and
    //  holds the slot, the second gets 429
    int up1 = s_connect (port);
    const char *upgrade_t = "GET /ws?token=t HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                            "Connection: Upgrade\r\n"
                            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                            "Sec-WebSocket-Version: 13\r\n\r\n";
    assert (send (up1, upgrade_t, strlen (upgrade_t), 0) > 0);
    assert (zsock_recv (auth, WSR_PIC_AUTH, &verb, &id, &handed_fd, &slot, &flags, &accept,
                        &peer, &token, &early, &tls) == 0);
    assert (slot >= 0);
    int up2 = s_connect (port);
    reply = s_exchange (up2, upgrade_t, false);
    assert (strncmp (reply, "HTTP/1.1 429", 12) == 0);
    free (reply);
    close (up2);
    assert (wsr_metrics_get (metrics, WSR_M_IP_REFUSED) == 1);
    wsr_ipcount_release (capped, slot);     //  as the session would
    close (handed_fd);
    close (up1);
    zstr_free (&verb);
    zstr_free (&accept);
    zstr_free (&peer);
    zframe_destroy (&token);
    zframe_destroy (&early);

    //  Hold 50 silent connections: the 51st from that address is refused at
    //  once with 429 and Retry-After, another address still gets in
    assert (s_gauge_reaches (metrics, WSR_M_PENDING_CONNECTIONS, 0));
    int held [50];
    for (int i = 0; i < 50; i++)
        held [i] = s_connect (port);
    assert (s_gauge_reaches (metrics, WSR_M_PENDING_CONNECTIONS, 50));
    reply = s_http (port, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert (strncmp (reply, "HTTP/1.1 429", 12) == 0 && strstr (reply, "Retry-After: 1\r\n"));
    free (reply);
    assert (wsr_metrics_get (metrics, WSR_M_PENDING_REFUSED_PER_IP) == 1);
    fd = s_connect_from (port, 0x7f000002);
    reply = s_exchange (fd, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", false);
    assert (strncmp (reply, "HTTP/1.1 200", 12) == 0);
    free (reply);
    close (fd);
    for (int i = 0; i < 50; i++)
        close (held [i]);
    wsr_listener_destroy (&listener);
    wsr_ipcount_destroy (&capped);

    //  HS256 verified here: ADOPT goes straight to the workers (the test
    //  plays two), round robin by id, with the verdict; nothing to auth
    const char *secret = "listener-test-secret-0123456789abcdef";
    zsock_t *workers [2] = { zsock_new_pull ("inproc://wsr-adopt-ltest3-0"),
                             zsock_new_pull ("inproc://wsr-adopt-ltest3-1") };
    zsock_t *auth3 = zsock_new_pull ("inproc://wsr-auth-ltest3");
    zsock_t *router3 = zsock_new_pull ("inproc://wsr-pub-ltest3");
    wsr_listener_opts_t inline_opts = {
        .bind = "127.0.0.1", .port = 0, .max_pending = 100, .handshake_timeout_ms = 2000,
        .max_message = 65536, .jwt_secret = (const uint8_t *) secret,
        .jwt_secret_len = strlen (secret), .jwt_leeway = 30, .workers = 2
    };
    listener = wsr_listener_new ("ltest3", &inline_opts, metrics);
    assert (listener);
    port = wsr_listener_port (listener);
    int64_t now_s = (int64_t) time (NULL);
    char *good = wsr_jwt_mint_hs256 ((const uint8_t *) secret, strlen (secret), "alice",
                                     now_s, now_s + 3600, "lobby");
    char *forged = wsr_jwt_mint_hs256 ((const uint8_t *) "another-secret-0123456789abcdef",
                                       31, "alice", now_s, 0, NULL);
    int64_t bad_before = wsr_metrics_get (metrics, WSR_M_HS_FAIL_TOKEN_INVALID);
    const char *tokens [3] = { good, forged, good };
    for (int i = 0; i < 3; i++) {
        int client = s_connect (port);
        char request [1024];
        snprintf (request, sizeof request, "GET /ws?token=%s HTTP/1.1\r\nHost: x\r\n"
                  "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Protocol: wsrouter.v1\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n", tokens [i]);
        assert (send (client, request, strlen (request), 0) > 0);
        zpoller_t *poller = zpoller_new (workers [0], workers [1], NULL);
        zsock_t *which = (zsock_t *) zpoller_wait (poller, 5000);
        zpoller_destroy (&poller);
        assert (which);
        char *a_verb, *a_reason, *a_user, *a_channels, *a_response;
        uint64_t a_id, a_expiry;
        int a_fd, a_code, a_slot, a_flags;
        zframe_t *a_early;
        void *a_tls;
        assert (zsock_recv (which, WSR_PIC_ADOPT, &a_verb, &a_id, &a_fd, &a_code, &a_slot,
                            &a_expiry, &a_flags, &a_reason, &a_user, &a_channels,
                            &a_response, &a_early, &a_tls) == 0);
        assert (streq (a_verb, WSR_MSG_ADOPT) && a_fd >= 0 && !a_tls);
        assert (which == workers [wsr_msgs_worker_for (a_id, 2)]);
        assert (a_flags == WSR_ADOPT_V1);
        assert (strstr (a_response, "HTTP/1.1 101 Switching Protocols\r\n")
                && strstr (a_response, "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n")
                && strstr (a_response, "Sec-WebSocket-Protocol: wsrouter.v1\r\n"));
        if (tokens [i] == good) {
            assert (a_code == 0 && streq (a_user, "alice") && streq (a_channels, "lobby"));
            assert (a_expiry == (uint64_t) (now_s + 3600 + 30));
        }
        else
            assert (a_code == 1008 && streq (a_reason, "bad signature") && !*a_user);
        close (a_fd);
        close (client);
        zstr_free (&a_verb);
        zstr_free (&a_reason);
        zstr_free (&a_user);
        zstr_free (&a_channels);
        zstr_free (&a_response);
        zframe_destroy (&a_early);
    }
    assert (wsr_metrics_get (metrics, WSR_M_HS_FAIL_TOKEN_INVALID) == bad_before + 1);
    //  Nothing went to the auth actor
    zsock_set_rcvtimeo (auth3, 100);
    zmsg_t *none = zmsg_recv (auth3);
    assert (!none);
    wsr_listener_destroy (&listener);
    free (good);
    free (forged);
    zsock_destroy (&workers [0]);
    zsock_destroy (&workers [1]);
    zsock_destroy (&auth3);
    zsock_destroy (&router3);

    s_console_test (metrics);
    zsock_destroy (&auth);
    zsock_destroy (&router);
    wsr_ipcount_destroy (&ipcount);
    wsr_metrics_destroy (&metrics);
}
