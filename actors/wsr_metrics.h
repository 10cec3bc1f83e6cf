//  wsr_metrics — process-wide counters, rendered in Prometheus text format

#ifndef WSR_METRICS_H_INCLUDED
#define WSR_METRICS_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

//  Every counter and gauge the node exports. Names and help text live in the
//  table in wsr_metrics.c, in this order.
typedef enum {
    WSR_M_SESSIONS_OPEN,            //  gauge
    WSR_M_CONNECTIONS_OPEN,         //  gauge: TCP connections incl. handshakes
    WSR_M_HANDSHAKES_OK,
    WSR_M_HS_FAIL_HTTP,             //  malformed or refused upgrade request
    WSR_M_HS_FAIL_TOKEN_MISSING,
    WSR_M_HS_FAIL_TOKEN_INVALID,    //  malformed, bad signature, wrong alg
    WSR_M_HS_FAIL_TOKEN_EXPIRED,    //  exp / nbf / iat out of range
    WSR_M_HS_FAIL_CLAIMS,           //  sub or channels invalid
    WSR_M_HS_FAIL_TIMEOUT,          //  request not complete in time
    WSR_M_HS_FAIL_CAPACITY,         //  node full or auth queue full
    WSR_M_MESSAGES_IN,              //  client → server messages
    WSR_M_BYTES_IN,
    WSR_M_MESSAGES_OUT,             //  server → client, per recipient
    WSR_M_BYTES_OUT,
    WSR_M_PUBLISHED,                //  messages entering the node's router
    WSR_M_PUBLISH_REJECTED,         //  API publish refused (auth, body, full)
    WSR_M_DELIVER_NO_SESSION,       //  downstream message with no local session
    WSR_M_QUEUE_DROPS,              //  session closed as a slow consumer
    WSR_M_UPSTREAM_DROPS,           //  client message dropped: upstream full
    WSR_M_UPSTREAM_SENT,            //  client message handed to upstream
    WSR_M_ACCEPT_ERRORS,            //  accept failed (EMFILE, ENFILE, ...)
    WSR_M_HTTP_REQUESTS,
    WSR_M_CLOSED_PROTOCOL,          //  sessions closed for protocol errors
    WSR_M_BACKPLANE_UP,             //  gauge: 1 while the backplane is reachable
    WSR_M_BRIDGE_TOPICS,            //  gauge: topics subscribed on Redis/NATS
    WSR_M_BRIDGE_RECEIVED,          //  messages received from Redis/NATS
    WSR_M_BRIDGE_INVALID,           //  backplane messages on no valid topic
    WSR_M_BRIDGE_UPSTREAM_SENT,     //  client messages published to backends
    WSR_M_BRIDGE_UPSTREAM_LOST,     //  client messages lost: backend down/full
    WSR_M_BRIDGE_PUBLISH_LOST,      //  API publishes lost: backplane down
    WSR_M_BRIDGE_REPLIES,           //  HTTP backend replies sent to sessions
    WSR_M_BRIDGE_HTTP_ERRORS,       //  HTTP backend failures (timeout, 5xx, full)
    WSR_M_REDIS_UP,                 //  gauge: bridge's Redis link up
    WSR_M_NATS_UP,                  //  gauge: bridge's NATS link up
    WSR_M_RATE_LIMITED,             //  sessions closed for exceeding the rate limit
    WSR_M_PING_TIMEOUTS,            //  sessions closed for not answering pings
    WSR_M_IP_REFUSED,               //  connections refused by the per-IP cap
    WSR_M_HS_RATE_REFUSED,          //  connections refused by the handshake rate cap
    WSR_M_ORIGIN_REFUSED,           //  upgrades refused by the Origin allow-list
    WSR_M_DELIVER_DROPS,            //  router → workers queue full: message dropped
    WSR_M_BRIDGE_DELIVER_DROPS,     //  bridge → nodes queue full: message dropped
    WSR_M_BRIDGE_NATS_DROPS,        //  NATS messages dropped (forward queue full)
    WSR_M_BRIDGE_NATS_SLOW,         //  libnats slow-consumer events (its own drops)
    WSR_M_BRIDGE_REDIS_RECONNECTS,  //  Redis connections lost and re-made
    WSR_M_BRIDGE_PEERS,             //  gauge: node actors connected to the bridge
    WSR_M_BRIDGE_PEERS_DENIED,      //  connections refused by CURVE / ZAP
    WSR_M_BRIDGE_SUB_REFUSED,       //  subscriptions refused (invalid, over the cap)
    WSR_M_BRIDGE_UNMATCHED,         //  backplane messages no peer wanted
    WSR_M_TOKEN_EXPIRED,            //  sessions closed when their token ran out
    WSR_M_BRIDGE_REDIS_REFUSED,     //  Redis refused AUTH / a command (WRONGPASS, NOPERM)
    WSR_M_BRIDGE_NATS_REFUSED,      //  NATS refused login / permission, or libnats gave up
    WSR_M_BRIDGE_HISTORY_REFUSED,   //  history reads refused: too many waiting
    WSR_M_V1_ERRORS,                //  v1 client messages answered with an error
    WSR_M_BRIDGE_EVENTS,            //  lifecycle events published
    WSR_M_BRIDGE_EVENTS_LOST,       //  ... that found no backplane up
    WSR_M_BRIDGE_PRESENCE_LOST,     //  presence updates not sent (Redis down, full)
    WSR_M_PRESENCE_QUERIES,         //  GET /api/presence handed to the router
    WSR_M_PRESENCE_TIMEOUTS,        //  ... answered 504: no answer from the bridge in time
    WSR_M_V1_REFRESHED,             //  v1 token refreshes taken
    WSR_M_V1_REFRESH_REFUSED,       //  ... refused (bad token, other sub): 1008
    WSR_M_PENDING_REFUSED_PER_IP,   //  connections refused: address at its pending cap
    WSR_M_PENDING_CONNECTIONS,      //  gauge: connections in handshake, keep-alive or closing
    WSR_M_KEEPALIVE_CLOSED,         //  keep-alive ended by its lifetime or request cap
    WSR_M_HANDOVERS,                //  upgrades this process handed its sessions over in
    WSR_M_HANDOVER_FAILURES,        //  ... that failed (the process kept its sessions)
    WSR_M_HANDOVER_SESSIONS,        //  sessions handed over to a new process
    WSR_M_HANDOVER_REPLAYED,        //  deliveries queued to arriving sessions from the rings
    WSR_M_HANDOVER_RING_DROPPED,    //  deliveries a handover ring could not hold (bounds)
    WSR_M_HANDOVER_GAPS,            //  session topics whose position fell out of its ring
    WSR_M_LINK_MOVES,               //  topics moved to another bridge (several bridges)
    WSR_M_LINK_STALE,               //  deliveries dropped: from a bridge no longer owner
    WSR_M_TLS_HANDSHAKES,           //  TLS handshakes completed
    WSR_M_TLS_HANDSHAKE_FAILED,     //  TLS handshakes failed (bad client, old protocol)
    WSR_M_TLS_RELOADS,              //  certificate reloads that succeeded (SIGHUP)
    WSR_M_TLS_OPENSSL,              //  TLS sessions that kept OpenSSL after the handshake
    WSR_M_DEFLATE_SESSIONS,         //  sessions that negotiated permessage-deflate
    WSR_M_DEFLATE_COMPRESSED,       //  messages compressed (once per worker, not per recipient)
    WSR_M_DEFLATE_BYTES_IN,         //  payload bytes before compression
    WSR_M_DEFLATE_BYTES_OUT,        //  ... and after
    WSR_M_BRIDGE_JS_CORE,           //  NATS messages delivered from core: JetStream silent
    WSR_M_BRIDGE_JS_DUPLICATES,     //  ... copies dropped: the other one was delivered
    WSR_M_LINK_BRIDGE_UP,           //  gauge: 1 while the router hears the bridge's heartbeats
    WSR_M_LINK_REDIS_UP,            //  gauge: 1 while the heartbeats say Redis is up
    WSR_M_LINK_NATS_UP,             //  gauge: ... NATS
    WSR_M_LINK_REDIS_CONFIGURED,    //  gauge: 1 if the bridge has Redis (as last heard)
    WSR_M_LINK_NATS_CONFIGURED,     //  gauge: ... NATS
    WSR_M_CONSOLE_REFUSED,          //  console data requests with a missing or wrong key
    WSR_M_COUNT
} wsr_metric_t;

typedef struct _wsr_metrics_t wsr_metrics_t;

//  Create a zeroed set of counters. Caller owns it; it must outlive every
//  actor that was given it.
wsr_metrics_t *
    wsr_metrics_new (void);

//  Destroy the counters.
void
    wsr_metrics_destroy (wsr_metrics_t **self_p);

//  Add delta to a counter (negative for gauges going down). Thread-safe.
void
    wsr_metrics_add (wsr_metrics_t *self, wsr_metric_t which, int64_t delta);

//  Add delta and return the value before the addition. Thread-safe.
int64_t
    wsr_metrics_add_fetch (wsr_metrics_t *self, wsr_metric_t which, int64_t delta);

//  Read a counter. Thread-safe.
int64_t
    wsr_metrics_get (wsr_metrics_t *self, wsr_metric_t which);

//  Render all counters in Prometheus text format. Caller owns the string.
char *
    wsr_metrics_render (wsr_metrics_t *self);

//  Self test
void
    wsr_metrics_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
