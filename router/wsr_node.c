//  wsr_node — one wsrouter node: metrics, bridge, router, session workers, auth, listener
//
//  Starts the actors in dependency order (the in-process bridge, unless the
//  node uses a bridge process; the router; workers, which link to the bridge
//  and bind what auth (or the listener) connects to; auth only for EdDSA, as
//  the listener verifies HS256 tokens itself; the listener last so no client
//  arrives before the node can serve it) and stops them in reverse.
//  Owns the shared metrics and the topic census, which outlive every actor.

#include "wsr_classes.h"

struct _wsr_node_t {
    wsr_metrics_t *metrics;                     //  shared counters
    wsr_ipcount_t *ipcount;                     //  per-IP connection counters
    wsr_census_t *census;                       //  the workers' topic counts (console)
    wsr_bridge_t *bridge;                       //  in-process bridge or NULL
    wsr_router_t *router;                       //  router actor
    wsr_session_t *workers [WSR_MAX_WORKERS];   //  session workers
    int worker_count;
    wsr_auth_t *auth;                           //  auth actor
    wsr_listener_t *listener;                   //  listener actor
};

//  --------------------------------------------------------------------------
//  Defaults, as documented in README.
void
wsr_node_opts_defaults (wsr_node_opts_t *opts)
{
    assert (opts);
    memset (opts, 0, sizeof *opts);
    opts->name = "node";
    opts->bind = "0.0.0.0";
    opts->port = WSR_DEFAULT_PORT;
    opts->jwt_alg = "HS256";
    long cores = sysconf (_SC_NPROCESSORS_ONLN);
    opts->workers = cores < 1? 1: cores > WSR_MAX_WORKERS? WSR_MAX_WORKERS: (int) cores;
    opts->max_message = WSR_DEFAULT_MAX_MESSAGE;
    opts->max_queue = WSR_DEFAULT_MAX_QUEUE;
    opts->max_connections = 1000000;
    opts->max_per_ip = WSR_DEFAULT_MAX_PER_IP;
    opts->ping_interval_ms = WSR_DEFAULT_PING_INTERVAL_MS;
    opts->ping_timeout_ms = WSR_DEFAULT_PING_TIMEOUT_MS;
    opts->rate_messages = WSR_DEFAULT_RATE_MESSAGES;
    opts->rate_bytes = WSR_DEFAULT_RATE_BYTES;
    opts->handshake_rate = WSR_DEFAULT_HANDSHAKE_RATE;
    opts->handshake_timeout_ms = WSR_HANDSHAKE_TIMEOUT_MS;
    opts->deflate = true;
    opts->deflate_level = WSR_DEFAULT_DEFLATE_LEVEL;
    opts->deflate_threshold = WSR_DEFAULT_DEFLATE_THRESHOLD;
    wsr_bridge_opts_defaults (&opts->backplane);
    opts->max_pending_per_ip = WSR_DEFAULT_MAX_PENDING_PER_IP;
    opts->keepalive_lifetime_ms = WSR_DEFAULT_KEEPALIVE_MS;
    opts->keepalive_requests = WSR_DEFAULT_KEEPALIVE_REQUESTS;
    opts->jwt_leeway = WSR_JWT_LEEWAY_S;
    opts->require_exp = true;
}

//  --------------------------------------------------------------------------
//  Start a node.
wsr_node_t *
wsr_node_new (const wsr_node_opts_t *opts)
{
    assert (opts && opts->name);
    if (opts->workers < 1 || opts->workers > WSR_MAX_WORKERS) {
        zsys_error ("node: workers must be 1..%d", WSR_MAX_WORKERS);
        return NULL;
    }
    wsr_jwt_t *verifier = NULL;
    if (streq (opts->jwt_alg, "HS256") && opts->jwt_secret && opts->jwt_secret_len)
        verifier = wsr_jwt_new_hs256 (opts->jwt_secret, opts->jwt_secret_len);
    else
    if (streq (opts->jwt_alg, "EdDSA") && opts->jwt_public_key)
        verifier = wsr_jwt_new_eddsa (opts->jwt_public_key);
    if (!verifier) {
        zsys_error ("node: no usable JWT key for algorithm '%s'", opts->jwt_alg);
        return NULL;
    }
    wsr_jwt_set_leeway (verifier, opts->jwt_leeway >= 0? opts->jwt_leeway: 0);
    wsr_jwt_set_require_exp (verifier, opts->require_exp);
    wsr_node_t *self = (wsr_node_t *) zmalloc (sizeof (wsr_node_t));
    self->metrics = wsr_metrics_new ();
    //  A bridge always: in-process (inproc) unless the node uses a bridge
    //  process; without Redis or NATS the in-process one is the fan-out point
    const char *bridge = opts->bridge;
    char local [128];
    if (bridge) {
        if (opts->upstream) {
            zsys_error ("node: --upstream-endpoint belongs to the bridge process when "
                        "--bridge is used");
            goto failed;
        }
        //  Several bridges: comma-separated, each judged
        char one [256];
        for (const char *p = bridge; p && *p; ) {
            const char *comma = strchr (p, ',');
            size_t len = comma? (size_t) (comma - p): strlen (p);
            snprintf (one, sizeof one, "%.*s", (int) (len < sizeof one? len: sizeof one - 1), p);
            if (wsr_curve_check ("node", one, opts->cert || opts->bridge_key,
                                 opts->insecure_plaintext))
                goto failed;
            p = comma? comma + 1: NULL;
        }
    }
    else {
        snprintf (local, sizeof local, WSR_EP_BRIDGE, opts->name);
        wsr_bridge_opts_t bridge_opts = opts->backplane;
        bridge_opts.endpoint = local;
        bridge_opts.upstream_endpoint = opts->upstream;
        bridge_opts.max_message = opts->max_message;
        bridge_opts.insecure_plaintext = opts->insecure_plaintext;
        self->bridge = wsr_bridge_new (&bridge_opts, self->metrics);
        if (!self->bridge)
            goto failed;
        bridge = local;
    }
    const char *cert = opts->bridge? opts->cert: NULL;
    const char *bridge_key = opts->bridge? opts->bridge_key: NULL;
    self->router = wsr_router_new (opts->name, bridge, cert, bridge_key, self->metrics);
    if (!self->router)
        goto failed;
    wsr_session_opts_t session_opts = {
        .max_message = opts->max_message, .max_queue = opts->max_queue,
        .max_sessions = opts->max_connections,
        .close_timeout_ms = WSR_CLOSE_TIMEOUT_MS,
        .ping_interval_ms = opts->ping_interval_ms, .ping_timeout_ms = opts->ping_timeout_ms,
        .rate_messages = opts->rate_messages, .rate_bytes = opts->rate_bytes,
        .write_delay_ms = opts->write_delay_ms, .events = opts->backplane.events,
        .hello_timeout_ms = opts->hello_timeout_ms,
        .jwt_alg = opts->jwt_alg,
        .jwt_key = streq (opts->jwt_alg, "EdDSA")? opts->jwt_public_key: opts->jwt_secret,
        .jwt_key_len = streq (opts->jwt_alg, "EdDSA")? 32: opts->jwt_secret_len,
        .jwt_leeway = opts->jwt_leeway, .require_exp = opts->require_exp,
        .bridge = bridge, .curve_secret = cert, .curve_server = bridge_key,
        .deflate_level = opts->deflate_level, .deflate_threshold = opts->deflate_threshold
    };
    self->census = wsr_census_new (opts->workers, WSR_CENSUS_TOP);
    session_opts.census = self->census;
    self->ipcount = wsr_ipcount_new (opts->max_per_ip);
    for (int i = 0; i < opts->workers; i++) {
        self->workers [i] = wsr_session_new (opts->name, i, &session_opts, self->metrics,
                                             self->ipcount);
        if (!self->workers [i])
            goto failed;
        self->worker_count++;
    }
    //  HS256: the listener verifies tokens itself, no auth thread
    if (streq (opts->jwt_alg, "HS256"))
        wsr_jwt_destroy (&verifier);
    else {
        self->auth = wsr_auth_new (opts->name, opts->workers, &verifier, self->metrics,
                                   self->ipcount);
        if (!self->auth)
            goto failed;
    }
    wsr_listener_opts_t listener_opts = {
        .bind = opts->bind, .port = opts->port, .api_key = opts->api_key,
        .reuseport = opts->reuseport, .max_pending = WSR_MAX_PENDING_HANDSHAKES,
        .handshake_timeout_ms = opts->handshake_timeout_ms, .max_message = opts->max_message,
        .allowed_origins = opts->allowed_origins, .handshake_rate = opts->handshake_rate,
        .ipcount = self->ipcount, .max_pending_per_ip = opts->max_pending_per_ip,
        .keepalive_lifetime_ms = opts->keepalive_lifetime_ms,
        .keepalive_requests = opts->keepalive_requests, .inherit_fd = opts->inherit_fd,
        .tls_cert = opts->tls_cert, .tls_key = opts->tls_key,
        .tls_port = opts->tls_port, .deflate = opts->deflate,
        //  HS256: the listener verifies and hands over itself (the auth
        //  thread stays for EdDSA, whose check would hold up accepting); the
        //  same secret signs the console's dev tokens
        .jwt_secret = streq (opts->jwt_alg, "HS256")? opts->jwt_secret: NULL,
        .jwt_secret_len = streq (opts->jwt_alg, "HS256")? opts->jwt_secret_len: 0,
        .jwt_leeway = opts->jwt_leeway,
        .require_exp = opts->require_exp, .workers = opts->workers,
        .console_key = opts->console_key, .dev = opts->dev, .census = self->census,
        .node_name = opts->name
    };
    self->listener = wsr_listener_new (opts->name, &listener_opts, self->metrics);
    if (!self->listener)
        goto failed;
    return self;
failed:
    wsr_jwt_destroy (&verifier);
    wsr_node_destroy (&self);
    return NULL;
}

//  --------------------------------------------------------------------------
//  Stop everything in reverse order.
void
wsr_node_destroy (wsr_node_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        wsr_node_t *self = *self_p;
        wsr_listener_destroy (&self->listener);
        wsr_auth_destroy (&self->auth);
        for (int i = self->worker_count - 1; i >= 0; i--)
            wsr_session_destroy (&self->workers [i]);
        wsr_router_destroy (&self->router);
        wsr_bridge_destroy (&self->bridge);
        wsr_ipcount_destroy (&self->ipcount);
        wsr_census_destroy (&self->census);
        wsr_metrics_destroy (&self->metrics);
        free (self);
        *self_p = NULL;
    }
}

//  --------------------------------------------------------------------------
//  Listening port.
int
wsr_node_port (wsr_node_t *self)
{
    assert (self);
    return wsr_listener_port (self->listener);
}

//  --------------------------------------------------------------------------
//  TLS port.
int
wsr_node_tls_port (wsr_node_t *self)
{
    assert (self);
    return wsr_listener_tls_port (self->listener);
}

//  --------------------------------------------------------------------------
//  Reload the TLS certificate.
int
wsr_node_reload (wsr_node_t *self)
{
    assert (self);
    return wsr_listener_reload (self->listener);
}

//  --------------------------------------------------------------------------
//  Counters.
wsr_metrics_t *
wsr_node_metrics (wsr_node_t *self)
{
    assert (self);
    return self->metrics;
}

//  --------------------------------------------------------------------------
//  Handover: the listener.
int
wsr_node_pause (wsr_node_t *self)
{
    assert (self);
    return wsr_listener_pause (self->listener);
}

void
wsr_node_resume (wsr_node_t *self)
{
    assert (self);
    wsr_listener_resume (self->listener);
}

//  Handover: sessions out of every worker, up to max in all.
zmsg_t *
wsr_node_export (wsr_node_t *self, int max, uint64_t *open_p)
{
    assert (self && open_p);
    zmsg_t *all = zmsg_new ();
    *open_p = 0;
    for (int i = 0; i < self->worker_count; i++) {
        uint64_t open = 0;
        int left = max - (int) zmsg_size (all) / 2;
        zmsg_t *some = wsr_session_export (self->workers [i], left > 0? left: 0, &open);
        *open_p += open;
        if (!some)
            continue;
        zframe_t *frame;
        while ((frame = zmsg_pop (some)))
            zmsg_append (all, &frame);
        zmsg_destroy (&some);
    }
    return all;
}

//  Handover: sessions in, each to the worker its id maps to.
int
wsr_node_import (wsr_node_t *self, zmsg_t **msg_p)
{
    assert (self && msg_p && *msg_p);
    zmsg_t *msg = *msg_p;
    *msg_p = NULL;
    zmsg_t *per [WSR_MAX_WORKERS] = { NULL };
    zframe_t *record;
    while ((record = zmsg_pop (msg))) {
        zframe_t *fd = zmsg_pop (msg);
        assert (fd && zframe_size (record) >= WSR_HANDOVER_HEADER + 8);
        uint64_t id = 0;
        for (int i = 0; i < 8; i++)
            id = id << 8 | zframe_data (record) [WSR_HANDOVER_HEADER + i];
        int index = wsr_msgs_worker_for (id, self->worker_count);
        if (!per [index])
            per [index] = zmsg_new ();
        zmsg_append (per [index], &record);
        zmsg_append (per [index], &fd);
    }
    zmsg_destroy (&msg);
    int taken = 0;
    for (int i = 0; i < self->worker_count; i++)
        if (per [i])
            taken += wsr_session_import (self->workers [i], &per [i]);
    return taken;
}

//  Handover: the topic keys of worker index (NULL past the last worker).
zmsg_t *
wsr_node_topics (wsr_node_t *self, int index)
{
    assert (self);
    if (index < 0 || index >= self->worker_count)
        return NULL;
    return wsr_session_topics (self->workers [index]);
}

int
wsr_node_workers (wsr_node_t *self)
{
    assert (self);
    return self->worker_count;
}

//  Handover: subscribe the old workers' topics (lists [i]: old worker i's
//  keys, count old workers) with rings, and wait until in force. Sessions
//  go to the worker their id maps to, as in the old process: with as many
//  workers, worker i takes old worker i's topics; else every worker takes
//  all of them. Returns 0, or -1 if a barrier was not answered.
int
wsr_node_presub (wsr_node_t *self, zlistx_t **lists, int count)
{
    assert (self && (lists || count == 0));
    for (int i = 0; i < self->worker_count; i++) {
        zmsg_t *keys = zmsg_new ();
        for (int j = 0; j < count; j++) {
            if (count == self->worker_count && j != i)
                continue;
            for (char *key = (char *) zlistx_first (lists [j]); key;
                 key = (char *) zlistx_next (lists [j]))
                zmsg_addstr (keys, key);
        }
        wsr_session_presub (self->workers [i], &keys);
    }
    int rc = 0;
    for (int i = 0; i < self->worker_count; i++)
        if (wsr_session_synced (self->workers [i]))
            rc = -1;
    return rc;
}

//  Handover: a barrier in every worker (see wsr_session_sync).
int
wsr_node_sync (wsr_node_t *self)
{
    assert (self);
    int rc = 0;
    for (int i = 0; i < self->worker_count; i++)
        wsr_session_sync (self->workers [i]);
    for (int i = 0; i < self->worker_count; i++)
        if (wsr_session_synced (self->workers [i]))
            rc = -1;
    return rc;
}

//  Handover over: the rings go.
void
wsr_node_presub_end (wsr_node_t *self)
{
    assert (self);
    for (int i = 0; i < self->worker_count; i++)
        wsr_session_presub_end (self->workers [i]);
}

//  Handover: what could not go is closed with 1012.
int
wsr_node_restart (wsr_node_t *self)
{
    assert (self);
    int closed = 0;
    for (int i = 0; i < self->worker_count; i++) {
        int n = wsr_session_restart (self->workers [i]);
        closed += n > 0? n: 0;
    }
    return closed;
}

//  --------------------------------------------------------------------------
//  Graceful drain.
int64_t
wsr_node_drain (wsr_node_t *self, int timeout_ms)
{
    assert (self);
    wsr_listener_drain (self->listener);
    for (int i = 0; i < self->worker_count; i++)
        wsr_session_drain (self->workers [i]);
    int64_t deadline = zclock_mono () + timeout_ms;
    int64_t left = 0;
    do {
        left = 0;
        for (int i = 0; i < self->worker_count; i++)
            left += wsr_session_count (self->workers [i]);
        if (left == 0)
            break;
        zclock_sleep (20);
    } while (zclock_mono () < deadline);
    return left;
}

//  --------------------------------------------------------------------------
//  Selftest: a whole node in-process, a raw TCP WebSocket client, publish
//  over the HTTP API.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

static int
s_connect (int port)
{
    int fd = socket (AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons ((uint16_t) port) };
    addr.sin_addr.s_addr = htonl (INADDR_LOOPBACK);
    assert (connect (fd, (struct sockaddr *) &addr, sizeof addr) == 0);
    struct timeval tv = { 3, 0 };
    setsockopt (fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

static size_t
s_recv_all (int fd, uint8_t *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = recv (fd, buf + got, len - got, 0);
        if (n <= 0)
            break;
        got += (size_t) n;
    }
    return got;
}

//  Open a WebSocket with token; consume the 101 response.
static int
s_ws_open (int port, const char *token)
{
    int fd = s_connect (port);
    char request [2048];
    int n = snprintf (request, sizeof request,
                      "GET /ws?token=%s HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n", token);
    assert (send (fd, request, (size_t) n, 0) == n);
    char response [512] = "";
    size_t got = 0;
    while (got < sizeof response - 1 && !strstr (response, "\r\n\r\n")) {
        ssize_t r = recv (fd, response + got, 1, 0);
        assert (r == 1);
        got++;
    }
    assert (strncmp (response, "HTTP/1.1 101", 12) == 0);
    return fd;
}

static void
s_publish (int port, const char *body)
{
    int fd = s_connect (port);
    char request [1024];
    int n = snprintf (request, sizeof request,
                      "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: apikey k\r\n"
                      "Content-Length: %zu\r\n\r\n%s", strlen (body), body);
    assert (send (fd, request, (size_t) n, 0) == n);
    char reply [512];
    ssize_t r = recv (fd, reply, sizeof reply, 0);
    assert (r > 12 && strncmp (reply, "HTTP/1.1 202", 12) == 0);
    close (fd);
}

void
wsr_node_test (bool verbose)
{
    (void) verbose;
    const char *secret = "node-test-secret";
    wsr_node_opts_t opts;
    wsr_node_opts_defaults (&opts);
    opts.name = "ntest";
    opts.bind = "127.0.0.1";
    opts.port = 0;
    opts.api_key = "k";
    opts.jwt_secret = (const uint8_t *) secret;
    opts.jwt_secret_len = strlen (secret);
    opts.workers = 2;
    wsr_node_t *node = wsr_node_new (&opts);
    assert (node);
    int port = wsr_node_port (node);

    int64_t now = (int64_t) time (NULL);
    char *t1 = wsr_jwt_mint_hs256 ((const uint8_t *) secret, strlen (secret), "u1",
                                   now, now + 60, NULL);
    char *t10 = wsr_jwt_mint_hs256 ((const uint8_t *) secret, strlen (secret), "u10",
                                    now, now + 60, NULL);
    int c1 = s_ws_open (port, t1);
    int c10 = s_ws_open (port, t10);
    //  Sessions are live once the gauge says so (ADOPT is asynchronous)
    int64_t deadline = zclock_mono () + 3000;
    while (wsr_metrics_get (wsr_node_metrics (node), WSR_M_SESSIONS_OPEN) < 2
       &&  zclock_mono () < deadline)
        zclock_sleep (5);
    assert (wsr_metrics_get (wsr_node_metrics (node), WSR_M_SESSIONS_OPEN) == 2);
    //  Subscription reaches the router's XPUB asynchronously too; resend until seen
    uint8_t frame [64];
    bool seen = false;
    for (int i = 0; i < 50 && !seen; i++) {
        s_publish (port, "{\"user\":\"u10\",\"data\":\"for-u10\"}");
        struct timeval tv = { 0, 100000 };
        setsockopt (c10, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        seen = s_recv_all (c10, frame, 9) == 9;
    }
    assert (seen && frame [0] == 0x81 && frame [1] == 7 && !memcmp (frame + 2, "for-u10", 7));
    s_publish (port, "{\"user\":\"u1\",\"data\":\"for-u1\"}");
    struct timeval tv = { 3, 0 };
    setsockopt (c1, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    //  u1's first frame is its own message, never u10's
    assert (s_recv_all (c1, frame, 8) == 8);
    assert (frame [0] == 0x81 && frame [1] == 6 && !memcmp (frame + 2, "for-u1", 6));

    //  Drain closes both with 1001
    wsr_node_drain (node, 50);
    assert (s_recv_all (c1, frame, 4) == 4);
    assert (frame [0] == 0x88 && (frame [2] << 8 | frame [3]) == 1001);
    close (c1);
    close (c10);
    free (t1);
    free (t10);
    wsr_node_destroy (&node);
    assert (node == NULL);
}
