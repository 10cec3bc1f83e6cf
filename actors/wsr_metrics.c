//  wsr_metrics — process-wide counters, rendered in Prometheus text format
//
//  The one piece of state shared by every actor of a node: an array of
//  relaxed atomic counters. Writers add per event or per batch (a delivery to
//  N sessions is one add of N), so contention stays at one atomic per message
//  per worker. Only the listener reads, to answer GET /metrics.

#include "wsr_classes.h"

struct _wsr_metrics_t {
    _Atomic int64_t value [WSR_M_COUNT];    //  one slot per wsr_metric_t
};

typedef struct {
    const char *name;           //  Prometheus metric name
    const char *labels;         //  label set or NULL
    const char *type;           //  counter or gauge
    const char *help;           //  HELP text
} s_metric_info_t;

static const s_metric_info_t
s_info [WSR_M_COUNT] = {
    [WSR_M_SESSIONS_OPEN] = { "wsrouter_sessions_open", NULL, "gauge", "Open WebSocket sessions" },
    [WSR_M_CONNECTIONS_OPEN] =
        { "wsrouter_connections_open", NULL, "gauge", "Open TCP connections incl. handshakes" },
    [WSR_M_HANDSHAKES_OK] =
        { "wsrouter_handshakes_total", "result=\"ok\"", "counter", "WebSocket handshakes" },
    [WSR_M_HS_FAIL_HTTP] =
        { "wsrouter_handshakes_total", "result=\"bad_request\"", "counter", NULL },
    [WSR_M_HS_FAIL_TOKEN_MISSING] =
        { "wsrouter_handshakes_total", "result=\"token_missing\"", "counter", NULL },
    [WSR_M_HS_FAIL_TOKEN_INVALID] =
        { "wsrouter_handshakes_total", "result=\"token_invalid\"", "counter", NULL },
    [WSR_M_HS_FAIL_TOKEN_EXPIRED] =
        { "wsrouter_handshakes_total", "result=\"token_expired\"", "counter", NULL },
    [WSR_M_HS_FAIL_CLAIMS] =
        { "wsrouter_handshakes_total", "result=\"claims_invalid\"", "counter", NULL },
    [WSR_M_HS_FAIL_TIMEOUT] =
        { "wsrouter_handshakes_total", "result=\"timeout\"", "counter", NULL },
    [WSR_M_HS_FAIL_CAPACITY] =
        { "wsrouter_handshakes_total", "result=\"capacity\"", "counter", NULL },
    [WSR_M_MESSAGES_IN] =
        { "wsrouter_messages_in_total", NULL, "counter", "Messages received from clients" },
    [WSR_M_BYTES_IN] =
        { "wsrouter_bytes_in_total", NULL, "counter", "Payload bytes received from clients" },
    [WSR_M_MESSAGES_OUT] =
        { "wsrouter_messages_out_total", NULL, "counter", "Messages queued to clients" },
    [WSR_M_BYTES_OUT] =
        { "wsrouter_bytes_out_total", NULL, "counter", "Payload bytes queued to clients" },
    [WSR_M_PUBLISHED] =
        { "wsrouter_published_total", NULL, "counter", "Messages published into the node" },
    [WSR_M_PUBLISH_REJECTED] =
        { "wsrouter_publish_rejected_total", NULL, "counter", "Publish API requests refused" },
    [WSR_M_DELIVER_NO_SESSION] =
        { "wsrouter_deliver_unmatched_total", NULL, "counter",
          "Downstream messages with no local session" },
    [WSR_M_QUEUE_DROPS] =
        { "wsrouter_queue_drops_total", NULL, "counter",
          "Sessions closed because their output queue overflowed" },
    [WSR_M_UPSTREAM_DROPS] =
        { "wsrouter_upstream_drops_total", NULL, "counter",
          "Client messages dropped because upstream was full" },
    [WSR_M_UPSTREAM_SENT] =
        { "wsrouter_upstream_sent_total", NULL, "counter", "Client messages sent upstream" },
    [WSR_M_ACCEPT_ERRORS] =
        { "wsrouter_accept_errors_total", NULL, "counter", "accept() failures" },
    [WSR_M_HTTP_REQUESTS] =
        { "wsrouter_http_requests_total", NULL, "counter", "HTTP requests parsed" },
    [WSR_M_CLOSED_PROTOCOL] =
        { "wsrouter_closed_protocol_total", NULL, "counter",
          "Sessions closed for protocol violations" },
    [WSR_M_BACKPLANE_UP] =
        { "wsrouter_backplane_up", NULL, "gauge",
          "1 while the backplane (bridge, Redis, NATS) is reachable" },
    [WSR_M_BRIDGE_TOPICS] =
        { "wsrouter_bridge_topics", NULL, "gauge", "Topics subscribed on Redis / NATS" },
    [WSR_M_BRIDGE_RECEIVED] =
        { "wsrouter_bridge_received_total", NULL, "counter", "Messages received from backplanes" },
    [WSR_M_BRIDGE_INVALID] =
        { "wsrouter_bridge_invalid_total", NULL, "counter",
          "Backplane messages on names that map to no valid topic" },
    [WSR_M_BRIDGE_UPSTREAM_SENT] =
        { "wsrouter_bridge_upstream_sent_total", NULL, "counter",
          "Client messages published to backends" },
    [WSR_M_BRIDGE_UPSTREAM_LOST] =
        { "wsrouter_bridge_upstream_lost_total", NULL, "counter",
          "Client messages lost because a backend was down or full" },
    [WSR_M_BRIDGE_PUBLISH_LOST] =
        { "wsrouter_bridge_publish_lost_total", NULL, "counter",
          "API publishes lost because the backplane was down" },
    [WSR_M_BRIDGE_REPLIES] =
        { "wsrouter_bridge_replies_total", NULL, "counter",
          "HTTP backend replies sent to sessions" },
    [WSR_M_BRIDGE_HTTP_ERRORS] =
        { "wsrouter_bridge_http_errors_total", NULL, "counter",
          "HTTP backend failures (timeout, error status, queue full)" },
    [WSR_M_REDIS_UP] =
        { "wsrouter_bridge_redis_up", NULL, "gauge", "1 while the bridge's Redis link is up" },
    [WSR_M_NATS_UP] =
        { "wsrouter_bridge_nats_up", NULL, "gauge", "1 while the bridge's NATS link is up" },
    [WSR_M_RATE_LIMITED] =
        { "wsrouter_rate_limited_total", NULL, "counter",
          "Sessions closed for exceeding the inbound rate limit" },
    [WSR_M_PING_TIMEOUTS] =
        { "wsrouter_ping_timeouts_total", NULL, "counter",
          "Sessions closed for not answering pings" },
    [WSR_M_IP_REFUSED] =
        { "wsrouter_refused_total", "reason=\"per_ip\"", "counter",
          "Connections refused before the handshake" },
    [WSR_M_HS_RATE_REFUSED] =
        { "wsrouter_refused_total", "reason=\"handshake_rate\"", "counter", NULL },
    [WSR_M_ORIGIN_REFUSED] = { "wsrouter_refused_total", "reason=\"origin\"", "counter", NULL },
    [WSR_M_DELIVER_DROPS] =
        { "wsrouter_deliver_drops_total", NULL, "counter",
          "Messages dropped because the session workers' queue was full" },
    [WSR_M_BRIDGE_DELIVER_DROPS] =
        { "wsrouter_bridge_deliver_drops_total", NULL, "counter",
          "Messages dropped because a node's queue from the bridge was full" },
    [WSR_M_BRIDGE_NATS_DROPS] =
        { "wsrouter_bridge_nats_drops_total", NULL, "counter",
          "NATS messages dropped because the bridge's intake queue was full" },
    [WSR_M_BRIDGE_NATS_SLOW] =
        { "wsrouter_bridge_nats_slow_consumer_total", NULL, "counter",
          "libnats slow-consumer events (messages dropped inside libnats)" },
    [WSR_M_BRIDGE_REDIS_RECONNECTS] =
        { "wsrouter_bridge_redis_reconnects_total", NULL, "counter",
          "Redis connections lost and re-made (e.g. output buffer limit)" },
    [WSR_M_BRIDGE_PEERS] =
        { "wsrouter_bridge_peers", NULL, "gauge", "Node actors connected to the bridge" },
    [WSR_M_BRIDGE_PEERS_DENIED] =
        { "wsrouter_bridge_peers_denied_total", NULL, "counter",
          "Connections to the bridge refused (CURVE handshake or key not allowed)" },
    [WSR_M_BRIDGE_SUB_REFUSED] =
        { "wsrouter_bridge_subscriptions_refused_total", NULL, "counter",
          "Subscriptions refused by the bridge (invalid topic, node over its cap)" },
    [WSR_M_BRIDGE_HISTORY_REFUSED] =
        { "wsrouter_bridge_history_refused_total", NULL, "counter",
          "History reads refused by the bridge (too many waiting)" },
    [WSR_M_V1_ERRORS] =
        { "wsrouter_v1_errors_total", NULL, "counter",
          "wsrouter.v1 client messages answered with an error (malformed, unknown, early)" },
    [WSR_M_BRIDGE_EVENTS] =
        { "wsrouter_bridge_events_total", NULL, "counter",
          "Session connect / disconnect events published" },
    [WSR_M_BRIDGE_EVENTS_LOST] =
        { "wsrouter_bridge_events_lost_total", NULL, "counter",
          "Session events not published: no backplane up" },
    [WSR_M_BRIDGE_PRESENCE_LOST] =
        { "wsrouter_bridge_presence_lost_total", NULL, "counter",
          "Presence updates not written (Redis down or too busy)" },
    [WSR_M_PRESENCE_QUERIES] =
        { "wsrouter_presence_queries_total", NULL, "counter",
          "GET /api/presence queries asked of the bridge" },
    [WSR_M_PRESENCE_TIMEOUTS] =
        { "wsrouter_presence_timeouts_total", NULL, "counter",
          "Presence queries answered 504: the bridge did not answer within 2 s" },
    [WSR_M_V1_REFRESHED] =
        { "wsrouter_v1_refreshed_total", NULL, "counter",
          "wsrouter.v1 token refreshes taken (the session's expiry moved)" },
    [WSR_M_V1_REFRESH_REFUSED] =
        { "wsrouter_v1_refresh_refused_total", NULL, "counter",
          "wsrouter.v1 refreshes refused (bad token, another sub): closed with 1008" },
    [WSR_M_TOKEN_EXPIRED] =
        { "wsrouter_token_expired_total", NULL, "counter",
          "Sessions closed with 1008 when their token ran out" },
    [WSR_M_BRIDGE_UNMATCHED] =
        { "wsrouter_bridge_unmatched_total", NULL, "counter",
          "Backplane messages that no node wanted" },
    [WSR_M_BRIDGE_REDIS_REFUSED] =
        { "wsrouter_bridge_redis_refused_total", NULL, "counter",
          "Commands Redis refused: AUTH (wrong password), NOAUTH, NOPERM (ACL), SELECT" },
    [WSR_M_BRIDGE_NATS_REFUSED] =
        { "wsrouter_bridge_nats_refused_total", NULL, "counter",
          "NATS login or permission refusals, and connections libnats gave up on" },
    [WSR_M_PENDING_REFUSED_PER_IP] =
        { "wsrouter_pending_refused_total", "reason=\"per_ip\"", "counter",
          "Connections refused at once because their address holds its share of pending ones" },
    [WSR_M_PENDING_CONNECTIONS] =
        { "wsrouter_pending_connections", NULL, "gauge",
          "Connections in their handshake, idle in HTTP keep-alive, or closing" },
    [WSR_M_KEEPALIVE_CLOSED] =
        { "wsrouter_keepalive_closed_total", NULL, "counter",
          "Keep-alive connections ended by their lifetime or request cap (Connection: close)" },
    [WSR_M_HANDOVERS] =
        { "wsrouter_handovers_total", NULL, "counter",
          "Upgrades (SIGUSR2) that handed every session to a new process" },
    [WSR_M_HANDOVER_FAILURES] =
        { "wsrouter_handover_failures_total", NULL, "counter",
          "Upgrades that failed: the new process crashed, refused or timed out; "
          "this one kept its sessions" },
    [WSR_M_HANDOVER_SESSIONS] =
        { "wsrouter_handover_sessions_total", NULL, "counter",
          "Sessions handed over to a new process (with their descriptors and state)" },
    [WSR_M_HANDOVER_REPLAYED] =
        { "wsrouter_handover_replayed_total", NULL, "counter",
          "Messages an arriving session got from its worker's handover ring (published "
          "while it moved)" },
    [WSR_M_HANDOVER_RING_DROPPED] =
        { "wsrouter_handover_ring_dropped_total", NULL, "counter",
          "Messages a handover ring could not hold (over its count or byte bound)" },
    [WSR_M_HANDOVER_GAPS] =
        { "wsrouter_handover_gaps_total", NULL, "counter",
          "Session topics whose last message fell out of an overflowed handover ring "
          "(messages may be lost for them)" },
    [WSR_M_LINK_MOVES] =
        { "wsrouter_link_topic_moves_total", NULL, "counter",
          "Topics a worker moved to another bridge (a bridge died or came back)" },
    [WSR_M_LINK_STALE] =
        { "wsrouter_link_stale_deliveries_total", NULL, "counter",
          "Deliveries dropped because they came from a bridge that no longer owns the topic" },
    [WSR_M_TLS_HANDSHAKES] =
        { "wsrouter_tls_handshakes_total", NULL, "counter", "TLS handshakes completed" },
    [WSR_M_TLS_HANDSHAKE_FAILED] =
        { "wsrouter_tls_handshake_failures_total", NULL, "counter",
          "TLS handshakes that failed (not TLS, protocol below 1.2, no shared cipher)" },
    [WSR_M_TLS_RELOADS] =
        { "wsrouter_tls_reloads_total", NULL, "counter",
          "Certificate reloads (SIGHUP) that succeeded" },
    [WSR_M_TLS_OPENSSL] =
        { "wsrouter_tls_openssl_sessions_total", NULL, "counter",
          "TLS sessions that kept OpenSSL after the handshake (TLS 1.2, or TLS 1.3 that "
          "could not move to the node's record layer)" },
    [WSR_M_DEFLATE_SESSIONS] =
        { "wsrouter_deflate_sessions_total", NULL, "counter",
          "Sessions that negotiated permessage-deflate" },
    [WSR_M_DEFLATE_COMPRESSED] =
        { "wsrouter_deflate_messages_total", NULL, "counter",
          "Messages compressed (once per message per worker, shared by its recipients)" },
    [WSR_M_DEFLATE_BYTES_IN] =
        { "wsrouter_deflate_bytes_total", "stage=\"in\"", "counter",
          "Payload bytes before and after compression" },
    [WSR_M_DEFLATE_BYTES_OUT] =
        { "wsrouter_deflate_bytes_total", "stage=\"out\"", "counter", NULL },
    [WSR_M_BRIDGE_JS_CORE] =
        { "wsrouter_bridge_jetstream_core_total", NULL, "counter",
          "NATS messages delivered from the core subscription (no offset): the history "
          "stream was silent or late" },
    [WSR_M_BRIDGE_JS_DUPLICATES] =
        { "wsrouter_bridge_jetstream_duplicates_total", NULL, "counter",
          "Second copies dropped (core or stream): the other copy was delivered" },
    [WSR_M_LINK_BRIDGE_UP] =
        { "wsrouter_link_bridge_up", NULL, "gauge",
          "1 while the node's router hears the bridge's heartbeats" },
    [WSR_M_LINK_REDIS_UP] =
        { "wsrouter_link_backplane_up", "backplane=\"redis\"", "gauge",
          "1 while the bridge's heartbeats say this backplane is up" },
    [WSR_M_LINK_NATS_UP] =
        { "wsrouter_link_backplane_up", "backplane=\"nats\"", "gauge", NULL },
    [WSR_M_LINK_REDIS_CONFIGURED] =
        { "wsrouter_link_backplane_configured", "backplane=\"redis\"", "gauge",
          "1 if the bridge has this backplane, as its last heartbeat said" },
    [WSR_M_LINK_NATS_CONFIGURED] =
        { "wsrouter_link_backplane_configured", "backplane=\"nats\"", "gauge", NULL },
    [WSR_M_CONSOLE_REFUSED] =
        { "wsrouter_console_refused_total", NULL, "counter",
          "Console data requests (/api/stats, /api/topics, /api/token) with a missing or "
          "wrong key" },
};

//  --------------------------------------------------------------------------
//  Create a zeroed set of counters.
wsr_metrics_t *
wsr_metrics_new (void)
{
    wsr_metrics_t *self = (wsr_metrics_t *) zmalloc (sizeof (wsr_metrics_t));
    return self;
}

//  --------------------------------------------------------------------------
//  Destroy the counters.
void
wsr_metrics_destroy (wsr_metrics_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        free (*self_p);
        *self_p = NULL;
    }
}

//  --------------------------------------------------------------------------
//  Relaxed: counters need atomicity, not ordering.
void
wsr_metrics_add (wsr_metrics_t *self, wsr_metric_t which, int64_t delta)
{
    assert (self);
    assert (which < WSR_M_COUNT);
    atomic_fetch_add_explicit (&self->value [which], delta, memory_order_relaxed);
}

//  --------------------------------------------------------------------------
//  Add and return the previous value (for caps shared between threads).
int64_t
wsr_metrics_add_fetch (wsr_metrics_t *self, wsr_metric_t which, int64_t delta)
{
    assert (self);
    assert (which < WSR_M_COUNT);
    return atomic_fetch_add_explicit (&self->value [which], delta, memory_order_relaxed);
}

//  --------------------------------------------------------------------------
//  Read one counter.
int64_t
wsr_metrics_get (wsr_metrics_t *self, wsr_metric_t which)
{
    assert (self);
    assert (which < WSR_M_COUNT);
    return atomic_load_explicit (&self->value [which], memory_order_relaxed);
}

//  --------------------------------------------------------------------------
//  Render in Prometheus text exposition format 0.0.4; HELP/TYPE once per name.
char *
wsr_metrics_render (wsr_metrics_t *self)
{
    assert (self);
    size_t cap = 8192, used = 0;
    char *text = (char *) zmalloc (cap);
    const char *last_name = "";
    for (int i = 0; i < WSR_M_COUNT; i++) {
        const s_metric_info_t *info = &s_info [i];
        assert (info->name);            //  every wsr_metric_t has its table row
        char line [512];
        int n = 0;
        if (strcmp (info->name, last_name)) {
            n = snprintf (line, sizeof line, "# HELP %s %s\n# TYPE %s %s\n",
                          info->name, info->help? info->help: "", info->name, info->type);
            last_name = info->name;
        }
        n += snprintf (line + n, sizeof line - n, "%s%s%s%s %" PRId64 "\n",
                       info->name, info->labels? "{": "", info->labels? info->labels: "",
                       info->labels? "}": "", wsr_metrics_get (self, (wsr_metric_t) i));
        if (used + n + 1 > cap) {
            cap *= 2;
            text = (char *) realloc (text, cap);
            assert (text);
        }
        memcpy (text + used, line, n);
        used += n;
        text [used] = 0;
    }
    return text;
}

//  --------------------------------------------------------------------------
//  Selftest
void
wsr_metrics_test (bool verbose)
{
    wsr_metrics_t *metrics = wsr_metrics_new ();
    assert (metrics);
    wsr_metrics_add (metrics, WSR_M_SESSIONS_OPEN, 3);
    wsr_metrics_add (metrics, WSR_M_SESSIONS_OPEN, -1);
    wsr_metrics_add (metrics, WSR_M_HS_FAIL_TOKEN_EXPIRED, 7);
    assert (wsr_metrics_get (metrics, WSR_M_SESSIONS_OPEN) == 2);
    assert (wsr_metrics_add_fetch (metrics, WSR_M_SESSIONS_OPEN, 1) == 2);
    wsr_metrics_add (metrics, WSR_M_SESSIONS_OPEN, -1);
    char *text = wsr_metrics_render (metrics);
    if (verbose)
        printf ("\n%s", text);
    //  Rendered as a whole line, after its HELP and TYPE lines
    assert (!strncmp (text, "# HELP wsrouter_sessions_open ", 30));
    assert (strstr (text, "\n# TYPE wsrouter_sessions_open gauge\nwsrouter_sessions_open 2\n"));
    assert (strstr (text, "wsrouter_handshakes_total{result=\"token_expired\"} 7\n"));
    //  One TYPE line per metric name, even with several label sets
    char *first = strstr (text, "# TYPE wsrouter_handshakes_total");
    assert (first && !strstr (first + 1, "# TYPE wsrouter_handshakes_total"));
    free (text);
    wsr_metrics_destroy (&metrics);
    assert (metrics == NULL);
}
